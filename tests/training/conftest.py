"""Tiny synthetic dataset and tiny model recipes, so each training test runs in seconds on 2 cores."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """3 scene classes x 6 images of 64 px (train 4 / val 1 / test 1 per class), 2 captions each."""
    from priorclip.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_data")
    path = generate_synthetic_dataset(root, n_per_class=6, image_size=64, seed=0,
                                      classes=["airport", "farmland", "beach"])
    data = json.loads(path.read_text())
    for im in data["images"]:
        im["sentences"] = im["sentences"][:2]
    path.write_text(json.dumps(data))
    return root


