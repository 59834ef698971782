"""Fixtures of the benchmark scripts' tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_ucm(tmp_path_factory) -> Path:
    """A UCM-shaped synthetic dataset: 3 scene classes x 6 images of 64 px (train 4 / val 1 / test 1
    per class), 5 captions each: 60 training pairs, so batch 8 leaves an incomplete last batch (4
    pairs) to drop; `labels.csv` beside `dataset.json`."""
    from priorclip.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_ucm")
    generate_synthetic_dataset(root, n_per_class=6, image_size=64, seed=0, classes=["airport", "farmland", "beach"])
    return root
