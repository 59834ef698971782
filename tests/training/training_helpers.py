"""Helpers shared by the training tests (tiny model overrides, recipe and log helpers)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

# Shrunk closed-domain models: 64 px Swin (2x2 final tokens + global = 5 tokens), 1-layer BERT.
TINY_VISION = {"image_size": 64, "backbone_kwargs": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}}
TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
TINY_CLOSED = {"embed_dim": 32, "vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT, "pae_cfg": {"filter_size": 4, "heads": 4}}
TINY_BASELINE = {"embed_dim": 32, "vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT}
# Shrunk open-domain PriorCLIP: 32 px ViT of one layer, ModifiedResNet prior of width 8.
TINY_OPEN = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                             "prior_layers": [1, 1, 1, 1], "prior_width": 8},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1}}


def base_recipe(data_dir: Path, **kw) -> dict:
    recipe = {
        "stage": "closed", "model": "priorclip-closed-baseline-small", "model_overrides": TINY_BASELINE,
        "data": {"path": str(data_dir), "labels": "prefix", "augment": False},
        "vocab_size": 200, "epochs": 2, "batch_size": 8, "lr": 5e-4, "warmup_steps": 1, "workers": 0,
        "log_every": 1, "tensorboard": False, "eval_batch_size": 16, "seed": 3,
    }
    recipe.update(kw)
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
