"""Open domain: pretrain, then finetune with frozen prior and text tower (text embeddings cached)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from priorclip.training.loop import Trainer, train
from priorclip.training.recipe import recipe_from_dict

from training_helpers import TINY_OPEN, base_recipe, read_log



def test_pretrain_then_finetune_freezes_prior_and_text(tiny_dataset, tmp_path):
    data = {"path": str(tiny_dataset), "labels": "none", "augment": False, "test_split": None}
    pre = train(recipe_from_dict(base_recipe(tiny_dataset, stage="pretrain", model="priorclip-open-small",
                                             model_overrides=TINY_OPEN, epochs=1, data=data)), out_dir=tmp_path / "pre")
    init = pre / "checkpoints" / "last"
    ft_recipe = recipe_from_dict(base_recipe(tiny_dataset, stage="finetune", init_checkpoint=str(init), epochs=1,
                                             lr=1e-3, data=data))
    trainer = Trainer(ft_recipe, tmp_path / "probe")
    trainer.build()
    frozen = {n for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("res_visual.") for n in frozen) and "token_embedding.weight" in frozen
    assert not any(n.startswith("visual.") for n in frozen) and "logit_scale" not in frozen
    assert trainer.text_frozen
    cache = trainer._text_cache()
    assert cache.shape == (trainer.train_ds.num_captions, 32)
    assert torch.allclose(cache.norm(dim=1), torch.ones(len(cache)), atol=1e-5)

    ft = train(ft_recipe, out_dir=tmp_path / "ft")
    before, after = load_file(str(init / "model.safetensors")), load_file(str(ft / "checkpoints" / "last" / "model.safetensors"))
    for name in before:
        same = torch.equal(before[name], after[name])
        if name.startswith(("res_visual.", "token_embedding", "transformer.", "ln_final", "text_projection")):
            assert same, f"{name} changed although frozen"
    assert not torch.equal(before["visual.proj"], after["visual.proj"])  # the image tower trained
    assert read_log(ft)[-1]["event"] == "end"


def test_open_prior_stage_trains_res_visual_and_pretrain_loads_it_frozen(tiny_dataset, tmp_path):
    """Stage 0 of the open domain: the ModifiedResNet prior as a scene classifier, then loaded
    into `res_visual` for stage 1, frozen, unchanged by training."""
    import json

    import pytest

    import priorclip.models as pm
    from priorclip.errors import CheckpointError
    from priorclip.training.checkpointing import load_prior_into

    prior = train(recipe_from_dict(base_recipe(tiny_dataset, stage="prior", model="priorclip-open-small",
                                               model_overrides=TINY_OPEN, epochs=2, lr=3e-3)), out_dir=tmp_path / "prior")
    best = prior / "checkpoints" / "best"
    meta = json.loads((best / "prior.json").read_text())
    assert meta["prior_cfg"] == {"kind": "modified_resnet", "layers": [1, 1, 1, 1], "output_dim": 32, "heads": 16,
                                 "image_size": 32, "width": 8}
    assert meta["classes"] == ["airport", "beach", "farmland"]
    assert json.loads((prior / "test_best.json").read_text())["n_labelled"] == 3

    data = {"path": str(tiny_dataset), "labels": "prefix", "augment": False, "test_split": None}
    pre = train(recipe_from_dict(base_recipe(tiny_dataset, stage="pretrain", model="priorclip-open-small",
                                             model_overrides=TINY_OPEN, epochs=1, data=data,
                                             prior_checkpoint=str(prior))), out_dir=tmp_path / "pre")
    saved = load_file(str(best / "prior.safetensors"))
    after = load_file(str(pre / "checkpoints" / "last" / "model.safetensors"))
    for k, v in saved.items():
        assert torch.equal(after["res_visual." + k], v), k  # frozen through stage 1
    model = pm.load_checkpoint(pre / "checkpoints" / "last")
    assert model.prior_frozen and model.model_config["vision_cfg"]["prior_frozen"] is True
    assert not any(p.requires_grad for p in model.res_visual.parameters())
    assert any(r.get("prior_cache") for r in read_log(pre))  # frozen prior + no augmentation: run once per image

    # a prior trained for another shape is refused with both shapes named
    other = pm.create_model("priorclip-open-small", **{**TINY_OPEN, "vision_cfg": {**TINY_OPEN["vision_cfg"],
                                                                                     "prior_width": 16}})
    with pytest.raises(CheckpointError, match=r"width=8.*width=16"):
        load_prior_into(other, prior)
    closed = pm.create_model("priorclip-closed-small")
    with pytest.raises(CheckpointError, match="ModifiedResNet"):
        load_prior_into(closed, prior)


def test_prior_stage_refuses_a_model_without_prior(tiny_dataset, tmp_path):
    import pytest

    from priorclip.errors import ConfigError

    with pytest.raises(ConfigError, match="no prior tower"):
        train(recipe_from_dict(base_recipe(tiny_dataset, stage="prior", model="priorclip-open-baseline-small",
                                           model_overrides={})),
              out_dir=tmp_path / "p")


def test_finetune_adds_the_attribution_loss_with_scene_labels(tiny_dataset, tmp_path):
    """Stage 2 of the open domain trains with contrastive + Attribution loss when the data carry
    scene labels (paper Sec. 3.5); weight 0 turns it off; a fixed temperature replaces the learned one."""
    pre_data = {"path": str(tiny_dataset), "labels": "none", "augment": False, "test_split": None}
    pre = train(recipe_from_dict(base_recipe(tiny_dataset, stage="pretrain", model="priorclip-open-small",
                                             model_overrides=TINY_OPEN, epochs=1, data=pre_data)), out_dir=tmp_path / "pre")
    assert not any("loss_affiliation" in r for r in read_log(pre))  # no labels: contrastive only
    data = {**pre_data, "labels": "prefix"}
    runs = {}
    for name, extra in {"on": {}, "off": {"affiliation_weight": 0.0},
                        "fixed": {"affiliation_temperature": 0.5, "affiliation_weight": 2.0}}.items():
        runs[name] = read_log(train(recipe_from_dict(base_recipe(
            tiny_dataset, stage="finetune", init_checkpoint=str(pre / "checkpoints" / "last"), epochs=1, data=data,
            **extra)), out_dir=tmp_path / name))
    first = {k: [r for r in log if r["event"] == "train"][0] for k, log in runs.items()}
    assert first["on"]["loss_affiliation"] > 0
    assert first["on"]["loss_total"] == pytest.approx(first["on"]["loss_contrastive"] + first["on"]["loss_affiliation"],
                                                      rel=1e-5)
    assert "loss_affiliation" not in first["off"]
    assert first["off"]["loss_contrastive"] == pytest.approx(first["on"]["loss_contrastive"], rel=1e-6)
    # same weights at step 1, so the term differs only by weight and temperature: 2 x loss at t=0.5 < t=learned
    assert first["fixed"]["loss_affiliation"] != pytest.approx(2 * first["on"]["loss_affiliation"], rel=1e-3)
