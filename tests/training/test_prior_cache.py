"""Finetune with a frozen prior and no augmentation: the prior runs once per image, same result."""
from __future__ import annotations

import statistics

import pytest
import torch

import priorclip.models as pm
from priorclip.training.loop import Trainer
from priorclip.training.prior import frozen_prior
from priorclip.training.recipe import recipe_from_dict

from training_helpers import base_recipe, read_log

TINY_OPEN = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16,
                                             "prior_layers": [1, 1, 1, 1], "prior_width": 16},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1}}


class _Counting(Trainer):
    """Records the epoch and batch size of every call of the frozen prior (`prior_features`, which
    runs res_visual or its BatchNorm-folded inference copy)."""

    def build(self):
        super().build()
        self.prior_calls = []
        inner = self.model.prior_features

        def counted(images):
            self.prior_calls.append((self.epoch, len(images)))
            return inner(images)
        self.model.prior_features = counted
        self.prior_fn = frozen_prior(self.model)


def _run(tiny_dataset, tmp_path, init, name, **kw):
    data = {"path": str(tiny_dataset), "labels": "none", "augment": False, "val_split": None, "test_split": None}
    recipe = recipe_from_dict(base_recipe(tiny_dataset, stage="finetune", init_checkpoint=str(init), epochs=3,
                                          lr=1e-3, data=data, **kw))
    trainer = _Counting(recipe, tmp_path / name)
    (tmp_path / name).mkdir()
    trainer.fit()
    return trainer


def _step_seconds(run_dir):
    """Median wall time of one optimizer step after the first epoch (log_every=1)."""
    recs = [r for r in read_log(run_dir) if r["event"] == "train" and r["epoch"] >= 1]
    return statistics.median(b["time"] - a["time"] for a, b in zip(recs, recs[1:]) if a["epoch"] == b["epoch"])


def test_prior_cache_skips_the_prior_after_first_sight_and_changes_nothing(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    init = pm.save_checkpoint(pm.create_model("priorclip-open-small", **TINY_OPEN), tmp_path / "init")
    cached = _run(tiny_dataset, tmp_path, init, "cached")
    plain = _run(tiny_dataset, tmp_path, init, "plain", cache_prior=False)

    n_images, n_pairs = cached.train_ds.num_images, len(cached.train_ds)  # 12 images, 24 (image, caption) pairs
    assert n_pairs == 2 * n_images
    # cached: every image through the prior exactly once, all in epoch 0 (each epoch uses every pair)
    assert sum(n for e, n in cached.prior_calls if e == 0) == n_images
    assert [c for c in cached.prior_calls if c[0] > 0] == []
    # uncached: every pair's image, every epoch
    assert sum(n for _, n in plain.prior_calls) == 3 * n_pairs
    notes = [r for r in read_log(tmp_path / "cached") if r["event"] == "note"]
    assert notes and notes[0]["prior_cache"] is True

    la = [r["loss_total"] for r in read_log(tmp_path / "cached") if r["event"] == "train"]
    lb = [r["loss_total"] for r in read_log(tmp_path / "plain") if r["event"] == "train"]
    assert len(la) == 9 and la == pytest.approx(lb, abs=1e-6)
    wa, wb = cached.model.state_dict(), plain.model.state_dict()
    width = TINY_OPEN["vision_cfg"]["width"]
    for k in wa:
        a, b = wa[k], wb[k]
        if k.endswith("attn.in_proj_bias"):
            # The key bias has a zero gradient in exact arithmetic (softmax ignores a constant per
            # query), so Adam turns rounding noise (~1e-9) into lr-sized steps in *both* runs:
            # compare the query and value biases only.
            a, b = torch.cat([a[:width], a[2 * width:]]), torch.cat([b[:width], b[2 * width:]])
        assert torch.allclose(a, b, rtol=0, atol=1e-6), k
    start = pm.load_checkpoint(init).state_dict()
    # the prior's projection (not cached) trained, the prior itself did not
    assert not torch.equal(wa["vision_proj_res.weight"], start["vision_proj_res.weight"])
    assert all(torch.equal(wa[k], start[k]) for k in wa if k.startswith("res_visual."))

    ratio = _step_seconds(tmp_path / "cached") / _step_seconds(tmp_path / "plain")
    print(f"\nstep time cached/uncached (epochs 2-3, tiny model, CPU): {ratio:.2f}")


def test_augmentation_turns_the_prior_cache_off_with_one_log_line(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    init = pm.save_checkpoint(pm.create_model("priorclip-open-small", **TINY_OPEN), tmp_path / "init")
    data = {"path": str(tiny_dataset), "labels": "none", "augment": True, "val_split": None, "test_split": None}
    recipe = recipe_from_dict(base_recipe(tiny_dataset, stage="finetune", init_checkpoint=str(init), epochs=1,
                                          data=data))
    trainer = Trainer(recipe, tmp_path / "aug")
    trainer.build()
    from priorclip.training.logger import Logger

    (tmp_path / "aug").mkdir()
    logger = Logger(tmp_path / "aug", tensorboard=False)
    trainer.step = 0
    assert trainer._prior_cache(logger) is None
    logger.close()
    notes = [r for r in read_log(tmp_path / "aug") if r["event"] == "note"]
    assert len(notes) == 1 and notes[0]["prior_cache"] is False and "data.augment" in notes[0]["message"]
