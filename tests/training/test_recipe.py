"""Recipe loading and validation: every shipped config loads; mistakes are named errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from priorclip.errors import ConfigError
from priorclip.training.recipe import dump_recipe, load_recipe, parse_set, recipe_from_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["prior", "closed", "closed-baseline", "pretrain", "finetune"])
def test_shipped_configs_load(name):
    extra = ["init_checkpoint=/ckpt"] if name == "finetune" else []
    r = load_recipe(CONFIGS / f"{name}.yaml", ["data.path=/some/data", *extra])
    assert r.data.path == "/some/data"
    # the dumped recipe re-loads to the same recipe (what a run directory stores for --resume)
    import yaml

    assert recipe_from_dict(yaml.safe_load(dump_recipe(r))) == r


def test_unknown_key_suggests_nearest(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data: {path: x}\nbatch_sise: 3\n")
    with pytest.raises(ConfigError, match=r"unknown recipe key 'batch_sise'.*did you mean 'batch_size'") as e:
        load_recipe(p)
    assert str(p) in str(e.value)
    with pytest.raises(ConfigError, match=r"'data.imges_root'.*did you mean 'data.images_root'"):
        load_recipe(None, ["data.path=x", "data.imges_root=y"])


@pytest.mark.parametrize("sets, match", [
    (["epochs=abc"], "'epochs' expects int"),
    (["epochs=0"], "'epochs'.*>= 1"),
    (["schedule=step"], "'schedule'.*cosine"),
    (["precision=fp8"], "'precision'"),
    (["stage=prior"], "data.labels"),
    (["stage=finetune"], "init_checkpoint"),
    (["data.path=null"], "data.path"),
    (["grad_clip=-1"], "grad_clip"),
    (["lr"], "KEY=VALUE"),
])
def test_bad_values_are_named(sets, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(None, ["data.path=/d", *sets])


def test_set_parses_yaml_values_and_dotted_keys():
    r = load_recipe(None, ["data.path=/d", "lr=3e-4", "grad_clip=null", "model_overrides.pae_cfg.filter_size=4",
                           "data.augment=false", "betas=[0.9, 0.95]"])
    assert r.lr == pytest.approx(3e-4) and isinstance(r.lr, float)
    assert r.grad_clip is None and r.data.augment is False and r.betas == (0.9, 0.95)
    assert r.model_overrides == {"pae_cfg": {"filter_size": 4}}
    assert parse_set(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_set_merges_into_file_mapping(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data: {path: x, labels: prefix}\nmodel_overrides: {embed_dim: 32}\n")
    r = load_recipe(p, ["data.images_root=/imgs", "model_overrides.pae_cfg.heads=2"])
    assert (r.data.path, r.data.labels, r.data.images_root) == ("x", "prefix", "/imgs")
    assert r.model_overrides == {"embed_dim": 32, "pae_cfg": {"heads": 2}}


def test_data_aug_sets_the_training_augmentation(tiny_dataset, tmp_path):
    """data.aug overrides the paper's augmentation options (here: open_clip_train's, RandomResizedCrop
    0.9-1 only); unknown options and attribution settings out of range are named errors."""
    from torchvision import transforms as T

    from priorclip.training.loop import Trainer

    from training_helpers import TINY_BASELINE, base_recipe

    def steps(aug):
        data = {"path": str(tiny_dataset), "labels": "prefix", "augment": True, "aug": aug}
        (tmp_path / "probe").mkdir(exist_ok=True)  # the closed model's vocabulary is written there
        trainer = Trainer(recipe_from_dict(base_recipe(tiny_dataset, model_overrides=TINY_BASELINE, data=data)),
                          tmp_path / "probe")
        trainer.build()
        return trainer.train_tf.transforms

    paper = steps({})
    assert {type(t) for t in paper} >= {T.RandomResizedCrop, T.RandomHorizontalFlip, T.RandAugment}
    light = steps({"scale": [0.9, 1.0], "hflip": 0, "randaug_num_ops": 0})
    crop = [t for t in light if isinstance(t, T.RandomResizedCrop)]
    assert crop and tuple(crop[0].scale) == (0.9, 1.0)
    assert not any(isinstance(t, (T.RandomHorizontalFlip, T.RandAugment)) for t in light)
    with pytest.raises(ConfigError, match=r"data.aug.*randaug_ops"):
        recipe_from_dict({"data": {"path": "x", "aug": {"randaug_ops": 1}}})
    with pytest.raises(ConfigError, match="affiliation_centres"):
        recipe_from_dict({"data": {"path": "x"}, "affiliation_centres": "per-gpu"})
    with pytest.raises(ConfigError, match="affiliation_temperature"):
        recipe_from_dict({"data": {"path": "x"}, "affiliation_temperature": 0})
