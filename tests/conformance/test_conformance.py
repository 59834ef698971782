"""Conformance with the authors' released code: every fixture in PRIORCLIP_CONFORMANCE_DIR.

Each `closed_*.json` / `open_*.json` fixture names its config; weights load through
`load_official_checkpoint`, outputs must match within 1e-5 (absolute). Everything is read from the
fixture's JSON and tensors, never from file names, so new fixtures with other shapes just work.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from priorclip.models import (affiliation_loss, build_model, closed_config_from_released, contrastive_loss,
                              load_official_checkpoint, open_config_from_released, triplet_loss)

from shared_paths import conformance_dir, require_shared

ATOL = 1e-5


def _fixtures() -> list[Path]:
    root = conformance_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*.json") if p.name.startswith(("closed_", "open_")))


FIXTURES = _fixtures()


def _strict() -> bool:
    return "PRIORCLIP_CONFORMANCE_DIR" in os.environ or require_shared()


def test_conformance_fixtures_present():
    """With the directory named (or CI's flag), an empty or missing directory is a failure."""
    if not FIXTURES:
        msg = f"no closed_*/open_* conformance fixtures in {conformance_dir()}"
        if _strict():
            pytest.fail(msg)
        pytest.skip(msg + " (set PRIORCLIP_CONFORMANCE_DIR)")
    kinds = {p.name.split("_")[0] for p in FIXTURES}
    assert kinds <= {"closed", "open"}


def _load(fixture: Path):
    meta = json.loads(fixture.read_text())
    stem = fixture.name[: -len(".json")]
    weights = fixture.with_name(stem + ".weights.safetensors")
    io = load_file(str(fixture.with_name(stem + ".io.safetensors")))
    return meta, weights, io


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str):
    actual, expected = actual.reshape(expected.shape), expected
    err = (actual - expected).abs().max().item()
    assert err <= ATOL, f"{what}: max abs error {err:.3g} > {ATOL}"


@pytest.mark.parametrize("fixture", [p for p in FIXTURES if p.name.startswith("closed_")], ids=lambda p: p.stem)
def test_conformance_closed(fixture):
    meta, weights, io = _load(fixture)
    cfg = meta["config"]
    config = closed_config_from_released(cfg)
    model = build_model(config, build_backbones=False)
    model = load_official_checkpoint(weights, "closed", model=model, parts="heads").eval()
    with torch.no_grad():
        image = model.embed_image_tokens(io["vision_tokens"], io["conv_feature"])
        text = model.embed_text_tokens(io["text_tokens"])
        _close(image, io["image_embedding"], "image_embedding")
        _close(text, io["text_embedding"], "text_embedding")
        # batch of one gives the same row as the batch (the released code squeezes it away)
        _close(model.embed_image_tokens(io["vision_tokens"][-1:], io["conv_feature"][-1:]), io["image_embedding"][-1:], "image_embedding[batch=1]")
        _close(model.embed_text_tokens(io["text_tokens"][-1:]), io["text_embedding"][-1:], "text_embedding[batch=1]")
    feats_i, feats_t = io["loss_image_features"], io["loss_text_features"]
    t1, t2 = cfg.get("temp1", 0.07), cfg.get("temp2", 0.07)
    losses = {
        "contrastive_loss_pairs": contrastive_loss(feats_i, feats_t, t1),
        "contrastive_loss_multi_positive": contrastive_loss(feats_i, feats_t, t1, image_ids=io["loss_image_ids"]),
        "affiliation_loss": affiliation_loss(feats_i, feats_t, io["loss_scene_labels"], t2),
        "triplet_loss_sum": triplet_loss(feats_i, feats_t, margin=cfg.get("margin", 0.2)),
        "triplet_loss_hardest": triplet_loss(feats_i, feats_t, margin=cfg.get("margin", 0.2), hardest=True),
    }
    for name, value in losses.items():
        _close(value, io[name], name)


@pytest.mark.parametrize("fixture", [p for p in FIXTURES if p.name.startswith("open_")], ids=lambda p: p.stem)
def test_conformance_open(fixture):
    meta, weights, io = _load(fixture)
    model = build_model(open_config_from_released(meta["config"]))
    model = load_official_checkpoint(weights, "open", model=model).eval()
    with torch.no_grad():
        image = model.encode_image(io["images"])
        text = model.encode_text(io["texts"])
        _close(image, io["image_features"], "image_features")
        _close(text, io["text_features"], "text_features")
        _close(model.encode_image(io["images"][-1:]), io["image_features"][-1:], "image_features[batch=1]")
        _close(model.encode_text(io["texts"][-1:]), io["text_features"][-1:], "text_features[batch=1]")
