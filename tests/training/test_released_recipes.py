"""configs/closed-released.yaml and configs/finetune-released.yaml: the values issue #15 gives."""
from __future__ import annotations

from pathlib import Path

import yaml

from priorclip.models import create_model
from priorclip.models.preprocess import PREPROCESS_PRESETS
from priorclip.training.recipe import dump_recipe, load_recipe, recipe_from_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_closed_released_recipe():
    r = load_recipe(CONFIGS / "closed-released.yaml", ["data.path=/some/data"])
    assert (r.stage, r.model, r.model_overrides) == ("closed", "priorclip-closed", {"preprocess": "released"})
    assert (r.epochs, r.batch_size, r.lr, r.weight_decay, r.schedule) == (50, 128, 6e-5, 0.01, "linear")
    assert r.affiliation_centres == "local" and r.data.augment and r.data.captions == "all"
    assert recipe_from_dict(yaml.safe_load(dump_recipe(r))) == r
    # the trainer builds the model with these overrides: the released inputs
    model = create_model("priorclip-closed-small", **r.model_overrides)
    assert model.preprocess == "released" and model.text.attention_mask is False


def test_finetune_released_recipe_augments_as_open_clip():
    r = load_recipe(CONFIGS / "finetune-released.yaml", ["data.path=/some/data", "init_checkpoint=/ckpt"])
    assert r.stage == "finetune" and r.data.augment
    assert r.data.aug == PREPROCESS_PRESETS["open"]["released"]["image_cfg"]["aug"]
    assert recipe_from_dict(yaml.safe_load(dump_recipe(r))) == r
