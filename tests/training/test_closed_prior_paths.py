"""Closed stage, frozen prior: it runs outside the autograd graph, once per image when the images
never change (data.augment false), and once per evaluation image per run; results stay the same."""
from __future__ import annotations

import json

import pytest
import torch

import priorclip.models as pm
from priorclip.evaluation.encode import evaluate_model
from priorclip.training.loop import Trainer
from priorclip.training.prior import frozen_prior
from priorclip.training.recipe import recipe_from_dict

from training_helpers import TINY_CLOSED, base_recipe, read_log


class _Counting(Trainer):
    """Records (epoch, batch size, evaluating?) of every forward of the prior tower."""

    def build(self):
        super().build()
        self.prior_calls, self.evaluating = [], False
        self.model.prior.register_forward_hook(
            lambda mod, args, out: self.prior_calls.append((self.epoch, len(args[0]), self.evaluating)))

    def evaluate(self, model, dataset):
        self.evaluating = True
        try:
            return super().evaluate(model, dataset)
        finally:
            self.evaluating = False


def _run(tiny_dataset, tmp_path, name, **kw):
    recipe = recipe_from_dict(base_recipe(tiny_dataset, model="priorclip-closed-small", model_overrides=TINY_CLOSED,
                                          epochs=2, lr=1e-3, warmup_steps=0, **kw))
    trainer = _Counting(recipe, tmp_path / name)
    (tmp_path / name).mkdir()
    trainer.fit()
    return trainer


def test_frozen_closed_prior_outside_the_graph_gives_the_same_embeddings():
    torch.manual_seed(0)
    model = pm.create_model("priorclip-closed-small", **TINY_CLOSED).eval()
    prior = frozen_prior(model)
    assert prior is not None and frozen_prior(pm.create_model("priorclip-closed-baseline-small")) is None
    images = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        features = prior(images)
    assert features.shape == (5, model.prior.width)
    assert torch.allclose(model.embed_image_tokens(model.visual(images), features), model.encode_image(images),
                          rtol=0, atol=1e-6)
    model.prior.set_frozen(False)
    assert frozen_prior(model) is None  # a trained prior changes every step: never cached


def test_closed_prior_cache_runs_the_prior_once_per_image_and_changes_nothing(tiny_dataset, tmp_path):
    cached = _run(tiny_dataset, tmp_path, "cached")
    # the same vocabulary (the WordPiece trainer may break ties differently) and seed: the same run
    plain = _run(tiny_dataset, tmp_path, "plain", cache_prior=False, vocab=str(tmp_path / "cached" / "vocab.txt"))
    n_train, n_val = cached.train_ds.num_images, cached.val_ds.num_images  # 12 train, 3 val images
    train_calls = [(e, n) for e, n, ev in cached.prior_calls if not ev]
    assert sum(n for e, n in train_calls if e == 0) == n_train and all(e == 0 for e, _ in train_calls)
    steps = 2 * len([r for r in read_log(tmp_path / "plain") if r["event"] == "train" and r["epoch"] == 0])
    assert sum(n for _, n, ev in plain.prior_calls if not ev) == steps * 8  # every batch, every epoch
    notes = [r for r in read_log(tmp_path / "cached") if r["event"] == "note"]
    assert notes and notes[0]["prior_cache"] is True
    la = [r["loss_total"] for r in read_log(tmp_path / "cached") if r["event"] == "train"]
    lb = [r["loss_total"] for r in read_log(tmp_path / "plain") if r["event"] == "train"]
    assert len(la) == steps and la == pytest.approx(lb, abs=1e-5)
    for run in (cached, plain):
        # two validations and two test reports (last, best), but each evaluation image through the
        # prior once: val at the first validation, test at the first test report
        eval_calls = [n for _, n, ev in run.prior_calls if ev]
        assert sum(eval_calls) == n_val + run.test_ds.num_images
        assert len([r for r in read_log(run.run_dir) if r["event"] == "epoch" and "val_score" in r]) == 2


def test_reused_evaluation_prior_gives_evaluate_models_numbers(tiny_dataset, tmp_path):
    trainer = _run(tiny_dataset, tmp_path, "run", data={"path": str(tiny_dataset), "labels": "prefix", "augment": True})
    notes = [r for r in read_log(tmp_path / "run") if r["event"] == "note"]
    assert notes and notes[0]["prior_cache"] is False  # augmentation: the training cache is off...
    assert sum(n for _, n, ev in trainer.prior_calls if ev) == trainer.val_ds.num_images + trainer.test_ds.num_images
    for name in ("last", "best"):  # ...but the evaluation images still go through the prior once
        model = pm.load_checkpoint(tmp_path / "run" / "checkpoints" / name)
        fresh = evaluate_model(model, trainer.test_ds, batch_size=16)
        saved = json.loads((tmp_path / "run" / f"test_{name}.json").read_text())
        for rule in ("expected", "optimistic", "pessimistic"):
            assert saved[rule] == pytest.approx(fresh[rule], abs=1e-6), (name, rule)
