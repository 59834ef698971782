"""benchmarks/ucm_from_scratch/open_clip_subject.py: open_clip's own trainer as a subject, on a tiny
synthetic dataset and a tiny CLIP (one real open_clip_train run of two epochs, one failing run)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import load_script

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "head_width": 16, "layers": 1},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
BATCH = 8


@pytest.fixture(scope="module")
def subject():
    return load_script("benchmarks/ucm_from_scratch/open_clip_subject.py", "priorclip_open_clip_subject")


@pytest.fixture(scope="module")
def finished(subject, tiny_ucm, tmp_path_factory):
    out = tmp_path_factory.mktemp("subject")
    result = subject.run_open_clip_train(tiny_ucm, out, {**TINY, "architecture": "open-baseline"}, seed=0, epochs=2,
                                         batch_size=BATCH, lr=1e-3, warmup=2, workers=0)
    return out, result


def test_trains_scores_every_epoch_and_writes_result(finished, tiny_ucm):
    from priorclip.data.karpathy import KarpathyCaptions

    out, result = finished
    assert json.loads((out / "result.json").read_text()) == json.loads(json.dumps(result))
    train = KarpathyCaptions(tiny_ucm / "dataset.json", split="train")
    rows = (out / "train.tsv").read_text().splitlines()
    assert rows[0] == "filepath\ttitle" and len(rows) - 1 == train.num_captions == result["rows"] == 60
    assert all(Path(r.split("\t")[0]).is_absolute() for r in rows[1:])
    assert result["pairs_seen"] == 2 * (60 // BATCH) * BATCH == 112
    # pairs/s over the loop's own logged time (ours counts the same), not the subprocess's wall time
    assert 0 < result["loop_s"] < result["train_s"]
    assert result["pairs_per_s"] == pytest.approx(112 / result["loop_s"], abs=0.01)
    assert len(result["val_scores"]) == 2
    assert result["best_epoch"] == result["val_scores"].index(max(result["val_scores"])) + 1
    test = result["test"]
    assert test["split"] == "test" and test["model"] == "priorclip-open-baseline-small"
    assert {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mr"} <= set(test["expected"])
    assert result["subject"] == "open_clip_train" and result["open_clip_version"] == "3.3.0"
    argv = result["argv"]
    assert argv[argv.index("--model") + 1] == "priorclip-bench-subject"
    assert argv[argv.index("--dataset-type") + 1] == "csv" and argv[argv.index("--device") + 1] == "cpu"
    # the config open_clip trained is ours without our own keys
    assert json.loads((out / "open_clip_model" / "priorclip-bench-subject.json").read_text()) == TINY
    # only the best epoch's checkpoint is kept
    kept = sorted(p.name for p in (out / "logs" / "run" / "checkpoints").iterdir())
    assert kept == [f"epoch_{result['best_epoch']}.pt"]


def test_params_match_open_clip_model(finished):
    import open_clip

    model = open_clip.CLIP(**TINY)
    assert finished[1]["params_trainable"] == sum(p.numel() for p in model.parameters())


def test_second_call_returns_cached_result_without_training(subject, finished, tiny_ucm, monkeypatch):
    out, result = finished
    log = out / "open_clip_train.log"
    before = log.stat().st_mtime_ns
    monkeypatch.setattr(subject.subprocess, "run", lambda *a, **k: pytest.fail("trainer started again"))
    again = subject.run_open_clip_train(tiny_ucm, out, {**TINY, "architecture": "open-baseline"}, seed=0, epochs=2,
                                        batch_size=BATCH, lr=1e-3, warmup=2, workers=0)
    assert again == json.loads(json.dumps(result)) and log.stat().st_mtime_ns == before
    with pytest.raises(subject.ConfigError, match="other settings.*epochs"):
        subject.run_open_clip_train(tiny_ucm, out, TINY, seed=0, epochs=3, batch_size=BATCH, lr=1e-3, warmup=2,
                                    workers=0)


def test_failing_trainer_names_its_log(subject, tiny_ucm, tmp_path):
    # a negative learning rate passes our checks; torch's AdamW in the trainer rejects it
    with pytest.raises(subject.SubjectError) as err:
        subject.run_open_clip_train(tiny_ucm, tmp_path, TINY, seed=0, epochs=1, batch_size=BATCH, lr=-1.0,
                                    warmup=2, workers=0)
    log = tmp_path / "open_clip_train.log"
    assert str(log) in str(err.value) and "Invalid learning rate" in str(err.value)
    assert not (tmp_path / "result.json").exists()


def test_config_our_model_cannot_score_is_refused_before_training(subject, tiny_ucm, tmp_path):
    with pytest.raises(subject.ConfigError, match="custom_text"):
        subject.run_open_clip_train(tiny_ucm, tmp_path, {**TINY, "custom_text": True}, seed=0, epochs=1,
                                    batch_size=BATCH, lr=1e-3, warmup=2, workers=0)
    assert not (tmp_path / "open_clip_train.log").exists()


def test_loop_seconds_adds_the_logged_windows(subject, tmp_path):
    """Each progress line gives the mean step time since the previous one: windows of 1, 100 and
    30 steps of batch 64 in epoch 0, then 1 and 130 in epoch 1."""
    log = tmp_path / "open_clip_train.log"
    line = ("2026-12-03,21:00:00 | INFO | Train Epoch: {e} [{n:>5}/8384 (1%)] Data (t): 0.010 Batch (t): {t:.3f}, "
            "128.0/s, 128.0/s/gpu LR: 0.000500 Logit Scale: 14.286 Contrastive_loss: 4.1589 (4.1589)")
    log.write_text("\n".join([line.format(e=0, n=64, t=2.0), line.format(e=0, n=6464, t=0.5), "other output",
                               line.format(e=0, n=8384, t=0.4), line.format(e=1, n=64, t=1.0),
                               line.format(e=1, n=8384, t=0.5)]) + "\n")
    assert subject.loop_seconds(log, 64) == pytest.approx(2.0 + 100 * 0.5 + 30 * 0.4 + 1.0 + 130 * 0.5)
    log.write_text("no progress lines\n")
    assert subject.loop_seconds(log, 64) is None
    assert subject.loop_seconds(tmp_path / "missing.log", 64) is None
