"""benchmarks/embed_views.py on a tiny dataset: views as the index embeds tiles, captions beside
them, the same views again after an interruption."""
from __future__ import annotations

import numpy as np
import pytest

from scripts import load_script


@pytest.fixture(scope="module")
def ev():
    return load_script("benchmarks/embed_views.py", "priorclip_embed_views")


def test_views_are_seeded_windows_of_each_image(ev):
    boxes = ev.view_boxes(3, 4, seed=0)
    assert boxes.shape == (12, 5) and np.array_equal(boxes[:, 0], np.repeat(np.arange(3), 4))
    side = boxes[:, 3]
    assert ((side >= ev.MIN_SIDE) & (side <= ev.MAX_SIDE)).all()
    assert (boxes[:, 1] + side <= 1 + 1e-9).all() and (boxes[:, 2] + side <= 1 + 1e-9).all()
    assert np.array_equal(boxes, ev.view_boxes(3, 4, seed=0)) and not np.array_equal(boxes, ev.view_boxes(3, 4, seed=1))


@pytest.mark.slow
def test_embeds_views_and_captions_and_resumes(ev, tiny_ucm, tmp_path, monkeypatch):
    out = tmp_path / "views.npz"
    argv = ["--model", "priorclip-open-baseline-small", "--data", str(tiny_ucm), "--views", "3", "--workers", "0",
            "--batch-size", "16", "--out", str(out)]
    monkeypatch.setattr(ev, "CHUNK", 20)  # 18 images x 3 views: parts of 20, 20, 14
    ev.main(argv)
    d = np.load(out)
    dim = d["images"].shape[1]
    assert d["images"].shape == (18 * 3, dim) and d["texts"].shape == (18 * 5, dim)
    assert np.allclose(np.linalg.norm(d["images"], axis=1), 1, atol=1e-4)
    assert np.array_equal(d["image_of"], np.repeat(np.arange(18), 3)) and set(d["image_split"]) == {"train", "val", "test"}
    assert not list(tmp_path.glob("views.npz.parts-*"))  # parts are removed once the file holds them
    # an interrupted run: the parts written are kept and reused, the rest embedded again
    first = d["images"].copy()
    calls = []
    original = ev.Views.__getitem__
    monkeypatch.setattr(ev.Views, "__getitem__", lambda self, i: calls.append(i) or original(self, i))
    parts = tmp_path / "views.npz.parts-model-3-0"
    parts.mkdir()
    np.save(parts / "000000000.npy", first[:20])
    out.unlink()
    ev.main(argv)
    assert min(calls) == 20 and np.allclose(np.load(out)["images"], first, atol=1e-6)
