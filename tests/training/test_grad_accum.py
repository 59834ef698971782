"""grad_accum=2 at batch B makes the same optimizer update as grad_accum=1 at batch 2B (prior stage).

The prior stage's loss is a mean cross-entropy over labelled images, so the mean of two equal
halves' means is the whole batch's mean. BatchNorm would break that (batch statistics of B vs
2B images), so the test runs the tower's BatchNorm on running statistics (timm's
freeze_batch_norm_2d): what remains is exactly the trainer's accumulation. The contrastive stages
are not equal by construction (each micro-batch is its own contrastive batch, with B-1 negatives
instead of 2B-1); docs/TRAINING.md says so.
"""
from __future__ import annotations

import pytest
import torch
from timm.layers import freeze_batch_norm_2d

from priorclip.training.loop import Trainer
from priorclip.training.recipe import recipe_from_dict

from training_helpers import TINY_CLOSED, base_recipe, read_log


class _NoBatchStats(Trainer):
    def build(self):
        super().build()
        self.model.prior.model = freeze_batch_norm_2d(self.model.prior.model)


def _trainer(tiny_dataset, run_dir, **kw):
    # eps=1 and no clipping: Adam's update then scales with the gradient (m / (sqrt(v) + 1)), so a
    # gradient summed instead of averaged over micro-batches would change the weights.
    recipe = recipe_from_dict(base_recipe(tiny_dataset, stage="prior", model="priorclip-closed-small",
                                          model_overrides=TINY_CLOSED, epochs=2, lr=1e-2, eps=1.0, grad_clip=None,
                                          warmup_steps=0, schedule="constant",
                                          data={"path": str(tiny_dataset), "labels": "prefix", "augment": False,
                                                "val_split": None, "test_split": None}, **kw))
    run_dir.mkdir()
    return _NoBatchStats(recipe, run_dir)


def _fit(tiny_dataset, run_dir, **kw):
    trainer = _trainer(tiny_dataset, run_dir, **kw)
    trainer.fit()
    return trainer


def test_two_micro_batches_of_b_equal_one_batch_of_2b(tiny_dataset, tmp_path):
    init = _trainer(tiny_dataset, tmp_path / "init", batch_size=6)
    init.build()  # the same seeded initialisation fit() starts from
    start = {k: v.clone() for k, v in init.model.state_dict().items()}
    small = _fit(tiny_dataset, tmp_path / "accum", batch_size=3, grad_accum=2)
    big = _fit(tiny_dataset, tmp_path / "big", batch_size=6, grad_accum=1)
    assert small.step == big.step == 4  # 12 labelled train images: 2 steps per epoch

    ls = [r["loss_total"] for r in read_log(tmp_path / "accum") if r["event"] == "train"]
    lb = [r["loss_total"] for r in read_log(tmp_path / "big") if r["event"] == "train"]
    assert ls == pytest.approx(lb, abs=1e-6)
    ws, wb = small.model.state_dict(), big.model.state_dict()
    moved = 0
    for k in wb:
        assert torch.allclose(ws[k], wb[k], rtol=0, atol=1e-6), k
        moved += not torch.allclose(wb[k].float(), start[k].float(), rtol=0, atol=1e-4)
    assert moved > 0  # training really changed the weights
