"""The prior stage feeds the closed stage; a tiny closed run learns and leaves a complete run dir."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import priorclip.models as pm
from priorclip.errors import ConfigError
from priorclip.training.checkpointing import load_prior_into
from priorclip.training.loop import train
from priorclip.training.recipe import recipe_from_dict

from training_helpers import TINY_CLOSED, base_recipe, read_log


@pytest.fixture(scope="module")
def prior_run(tiny_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "prior"
    r = recipe_from_dict(base_recipe(tiny_dataset, stage="prior", model="priorclip-closed-small",
                                     model_overrides=TINY_CLOSED, epochs=1, batch_size=6, lr=1e-3))
    return train(r, out_dir=run)


def test_prior_stage_writes_prior_checkpoint(prior_run):
    for name in ("last", "best"):
        d = prior_run / "checkpoints" / name
        meta = json.loads((d / "prior.json").read_text())
        assert meta["classes"] == ["airport", "beach", "farmland"]
        assert meta["prior_cfg"]["backbone"] == "resnet10t"
        assert any(k.startswith("model.") for k in load_file(str(d / "prior.safetensors")))
    assert (prior_run / "checkpoints" / "last" / "train_state.pt").is_file()
    report = json.loads((prior_run / "test_best.json").read_text())
    assert report["n_labelled"] == 3 and 0 <= report["accuracy"] <= 100


def test_closed_stage_loads_frozen_prior_and_learns(prior_run, tiny_dataset, tmp_path):
    run = tmp_path / "closed"
    r = recipe_from_dict(base_recipe(tiny_dataset, model="priorclip-closed-small", model_overrides=TINY_CLOSED,
                                     prior_checkpoint=str(prior_run), epochs=3, lr=3e-4, warmup_steps=0,
                                     schedule="constant", save_every_steps=2))
    train(r, out_dir=run)
    prior = load_file(str(prior_run / "checkpoints" / "best" / "prior.safetensors"))
    # the prior stayed frozen through training: the saved closed model holds it unchanged
    for ckpt in ("last", "best"):
        weights = load_file(str(run / "checkpoints" / ckpt / "model.safetensors"))
        for k, v in prior.items():
            assert torch.equal(weights["prior." + k], v), k
    model = pm.load_checkpoint(run / "checkpoints" / "best")
    assert model.model_config["prior_cfg"]["frozen"] is True
    epochs = [rec for rec in read_log(run) if rec["event"] == "epoch"]
    assert len(epochs) == 3
    assert epochs[-1]["mean_loss"] < epochs[0]["mean_loss"]
    train_recs = [rec for rec in read_log(run) if rec["event"] == "train"]
    assert {"loss_contrastive", "loss_affiliation", "lr", "samples_per_s"} <= set(train_recs[0])
    assert all("val_score" in rec for rec in epochs)
    for name in ("config.yaml", "run.json", "vocab.txt", "metrics.json", "test_best.json", "test_best.md",
                 "test_last.json", "test_last.md"):
        assert (run / name).is_file(), name
    assert "| i2t R@1 |" in (run / "test_best.md").read_text()
    env = json.loads((run / "run.json").read_text())
    assert env["torch"] == torch.__version__ and "python" in env
    # best was selected on val: its recorded score is the maximum of the epochs' val scores
    best_meta = json.loads((run / "checkpoints" / "best" / "config.json").read_text())
    assert best_meta["val_score"] == max(rec["val_score"] for rec in epochs)
    assert best_meta["selected_on"] == "val"


def test_load_prior_into_freezes_and_checks_backbone(prior_run):
    model = pm.create_model("priorclip-closed-small", **TINY_CLOSED)
    model.prior.set_frozen(False)
    load_prior_into(model, prior_run)
    prior = load_file(str(prior_run / "checkpoints" / "best" / "prior.safetensors"))
    assert all(torch.equal(model.prior.state_dict()[k], v) for k, v in prior.items())
    assert not any(p.requires_grad for p in model.prior.parameters())
    baseline = pm.create_model("priorclip-closed-baseline-small")
    from priorclip.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no prior tower"):
        load_prior_into(baseline, prior_run)


def test_existing_run_dir_needs_resume(prior_run, tiny_dataset):
    r = recipe_from_dict(base_recipe(tiny_dataset, stage="prior", model="priorclip-closed-small"))
    with pytest.raises(ConfigError, match="--resume"):
        train(r, out_dir=prior_run)


def test_precise_bn_recomputes_running_statistics_from_current_weights():
    from priorclip.training.prior import recalibrate_batchnorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2))
    for bn in (net[1], net[4]):  # stale statistics, as after a few steps of an exponential average
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)
    net.eval()
    batches = [torch.randn(8, 3, 10, 10) * (1 + k) for k in range(3)]
    norms = recalibrate_batchnorm(net, iter(batches))
    assert norms == [net[1], net[4]] and not net.training  # the mode is restored
    conv = net[0](torch.cat(batches))  # equal batch sizes: the average of batch means is the mean
    assert torch.allclose(net[1].running_mean, conv.mean((0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack([net[0](b).var((0, 2, 3), unbiased=True) for b in batches])
    assert torch.allclose(net[1].running_var, per_batch_var.mean(0), rtol=1e-4)
    assert net[1].momentum == 0.1 and int(net[1].num_batches_tracked) == 3
    assert recalibrate_batchnorm(torch.nn.Linear(2, 2), iter([torch.zeros(1, 2)])) == []
