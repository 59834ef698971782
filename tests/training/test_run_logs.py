"""What a run directory records: the TensorBoard scalars agree with the JSONL log."""
from __future__ import annotations

import pytest

from priorclip.training.loop import train
from priorclip.training.recipe import recipe_from_dict

from training_helpers import base_recipe, read_log


def test_tensorboard_scalars_match_the_jsonl_log(tiny_dataset, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = train(recipe_from_dict(base_recipe(tiny_dataset, epochs=1, tensorboard=True)), out_dir=tmp_path / "run")
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = event_accumulator.EventAccumulator(str(events[0]))
    acc.Reload()
    logged = {r["step"]: r["loss_total"] for r in read_log(run) if r["event"] == "train"}
    assert len(logged) == 3  # 24 training pairs / batch 8
    scalars = {e.step: e.value for e in acc.Scalars("train/loss_total")}
    assert scalars.keys() == logged.keys()
    for step, loss in logged.items():
        assert scalars[step] == pytest.approx(loss, rel=1e-6)
    assert {"train/lr", "train/grad_norm", "epoch/val_score"} <= set(acc.Tags()["scalars"])
