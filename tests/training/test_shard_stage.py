"""Stage `pretrain` on webdataset shards: a resampled stream, seeded per (seed, epoch, rank, worker)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from priorclip.errors import ConfigError, DataError
from priorclip.training.data import resolve_shards
from priorclip.training.loop import Trainer, train
from priorclip.training.recipe import recipe_from_dict

from training_helpers import read_log

# 64 px open-domain baseline: 4x4 patches of 16 px, 1 layer, narrow towers
TINY_OPEN_BASELINE = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16},
                      "text_cfg": {"width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def shard_data(tmp_path_factory):
    """3 tar shards holding every image of a 20-image synthetic set (one caption each), + its dataset.json."""
    from priorclip.data.karpathy import KarpathyCaptions
    from priorclip.data.shards import dataset_samples, write_shards
    from priorclip.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("shard_src")
    generate_synthetic_dataset(root, n_per_class=2, image_size=64)
    samples = list(dataset_samples(KarpathyCaptions(root, split="train"), "image"))  # 2 per class: all in train
    paths = write_shards(samples, root / "shards", maxcount=7)
    assert len(paths) == 3 and len(samples) == 20
    return root


def _recipe(shard_data, data=None, **kw):
    r = {"stage": "pretrain", "model": "priorclip-open-baseline-small", "model_overrides": TINY_OPEN_BASELINE,
         "data": {"shards": str(shard_data / "shards" / "shard-{000000..000002}.tar"), "epoch_samples": 16,
                  "path": str(shard_data), "labels": "none", "val_split": "train", "test_split": None,
                  "augment": False, "shuffle_buffer": 8},
         "epochs": 2, "batch_size": 4, "lr": 5e-4, "warmup_steps": 0, "schedule": "constant", "workers": 0,
         "log_every": 1, "tensorboard": False, "eval_batch_size": 16, "seed": 1}
    r["data"].update(data or {})
    r.update(kw)
    return recipe_from_dict(r)


def test_resolve_shards_brace_glob_list_and_missing(shard_data):
    d = shard_data / "shards"
    want = [str(d / f"shard-00000{i}.tar") for i in range(3)]
    assert resolve_shards(str(d / "shard-{000000..000002}.tar")) == want
    assert resolve_shards(str(d / "shard-*.tar")) == want
    assert resolve_shards([want[0], str(d / "shard-00000[12].tar")]) == want
    with pytest.raises(DataError, match="data.shards.*shard-000003.tar"):
        resolve_shards(str(d / "shard-{000000..000003}.tar"))
    with pytest.raises(ConfigError, match="data.epoch_samples"):
        recipe_from_dict({"stage": "pretrain", "data": {"shards": want}})
    with pytest.raises(ConfigError, match="data.shards"):
        recipe_from_dict({"stage": "prior", "data": {"shards": want, "epoch_samples": 8, "labels": "prefix"}})


def test_shard_stream_is_a_function_of_seed_and_epoch(shard_data, tmp_path):
    trainer = Trainer(_recipe(shard_data), tmp_path / "probe")
    trainer.build()
    assert trainer.train_ds is None and len(trainer.shard_urls) == 3

    def stream(epoch, start=0):
        return [(b[0], b[1]) for b in trainer._shard_loader(epoch, start, 3)]

    a, b, c = stream(0), stream(0), stream(1)
    assert len(a) == 3 and a[0][0].shape == (4, 3, 64, 64) and all(isinstance(t, str) for t in a[0][1])
    assert len(b) == len(a) and all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))  # same stream
    assert [x[1] for x in a] != [x[1] for x in c]  # the next epoch draws again


def test_pretrain_on_shards_checkpoint_log_and_exact_resume_at_epoch_end(shard_data, tmp_path):
    run = train(_recipe(shard_data, workers=2), out_dir=tmp_path / "full")
    log = read_log(run)
    assert log[0]["event"] == "start" and log[0]["data"] == "shards" and log[0]["steps_per_epoch"] == 4
    steps = [r for r in log if r["event"] == "train"]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert all(r["loss_total"] > 0 for r in steps)
    epochs = [r for r in log if r["event"] == "epoch"]
    assert len(epochs) == 2 and all("val_score" in r for r in epochs)  # data.path still serves validation
    last = run / "checkpoints" / "last"
    state = torch.load(last / "train_state.pt", weights_only=False)
    assert (state["step"], state["epoch"], state["micro"]) == (8, 2, 0)
    assert json.loads((last / "config.json").read_text())["step"] == 8
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()

    # stopped after epoch 1 and resumed: the epoch-2 stream is re-seeded from (seed, epoch) -> identical
    # (no validation here: it runs under a forked RNG and cannot change the training stream)
    part = train(_recipe(shard_data, {"val_split": None}, workers=2, epochs=1), out_dir=tmp_path / "part")
    train(resume=part, sets=["epochs=2"])
    a, b = load_file(str(last / "model.safetensors")), load_file(str(part / "checkpoints" / "last" / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    assert [r["loss_total"] for r in read_log(part) if r["event"] == "train"] == pytest.approx(
        [r["loss_total"] for r in steps], abs=1e-6)


class _Stop(Exception):
    pass


def test_pretrain_on_shards_resumed_mid_epoch_matches_uninterrupted(shard_data, tmp_path, monkeypatch):
    """Stopped right after the step-2 checkpoint (mid-epoch 1 of 4 steps), with 2 workers and
    augmentation on: the resumed run sees the same remaining batches and ends with the same weights."""
    kw = dict(data={"val_split": None, "augment": True}, workers=2, save_every_steps=1)
    full = train(_recipe(shard_data, **kw), out_dir=tmp_path / "full")

    real_save = Trainer.save

    def save_then_stop(self, name, position, with_state=True):
        real_save(self, name, position, with_state)
        if self.step == 2:
            raise _Stop

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(_Stop):
        train(_recipe(shard_data, **kw), out_dir=tmp_path / "part")
    monkeypatch.setattr(Trainer, "save", real_save)
    part = tmp_path / "part"
    state = torch.load(part / "checkpoints" / "last" / "train_state.pt", weights_only=False)
    assert (state["step"], state["epoch"]) == (2, 0)  # really inside the first epoch
    train(resume=part)
    a = load_file(str(full / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "last" / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    losses = [r["loss_total"] for r in read_log(full) if r["event"] == "train"]
    assert [r["loss_total"] for r in read_log(part) if r["event"] == "train"][-6:] == pytest.approx(losses[-6:], abs=1e-6)
