"""A run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from priorclip.training.loop import train
from priorclip.training.recipe import recipe_from_dict

from training_helpers import base_recipe, read_log, write_recipe


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_dataset, tmp_path):
    # A fixed vocabulary: tokenizers' WordPiece trainer breaks ties differently in each process, so
    # two runs that each train their own vocabulary differ (a resumed run reuses its saved vocab.txt).
    import priorclip.models as pm
    from priorclip.data.karpathy import KarpathyCaptions

    vocab = pm.train_wordpiece(KarpathyCaptions(tiny_dataset).all_captions, vocab_size=200).save(tmp_path / "vocab.txt")
    # augmentation on: the per-sample augmentation RNG must also line up after the resume
    recipe = base_recipe(tiny_dataset, epochs=2, save_every_steps=1, grad_clip=0.5, warmup_steps=2, vocab=str(vocab),
                         data={"path": str(tiny_dataset), "labels": "prefix", "augment": True})
    reference = train(recipe_from_dict(recipe), out_dir=tmp_path / "reference")
    total = read_log(reference)[-1]["step"]
    assert total == 6

    cfg = write_recipe(tmp_path / "r.yaml", recipe)
    run = tmp_path / "killed"
    state = run / "checkpoints" / "last" / "train_state.pt"
    proc = subprocess.Popen([sys.executable, "-m", "priorclip.cli.main", "train", str(cfg), "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not state.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(run / "checkpoints" / "last" / "train_state.pt", weights_only=False)["step"]
    assert 1 <= killed_at < total  # really interrupted mid-training

    train(resume=run)
    final = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    expected = load_file(str(reference / "checkpoints" / "last" / "model.safetensors"))
    assert final.keys() == expected.keys()
    for k in expected:
        assert torch.allclose(final[k], expected[k], rtol=0, atol=1e-6), k
    events = [r["event"] for r in read_log(run)]
    assert "resume" in events and events[-1] == "end"


def test_a_run_directory_reruns_with_one_command(tiny_dataset, tmp_path):
    """`priorclip train RUN/config.yaml --out NEW` (the saved, resolved recipe) repeats the run:
    the same weights and the same test report, with augmentation and 2 DataLoader workers on."""
    import json

    import priorclip.models as pm
    from priorclip.data.karpathy import KarpathyCaptions

    vocab = pm.train_wordpiece(KarpathyCaptions(tiny_dataset).all_captions, vocab_size=200).save(tmp_path / "vocab.txt")
    recipe = base_recipe(tiny_dataset, epochs=1, vocab=str(vocab), workers=2,
                         data={"path": str(tiny_dataset), "labels": "prefix", "augment": True})
    first = train(recipe_from_dict(recipe), out_dir=tmp_path / "first")
    again = tmp_path / "again"
    proc = subprocess.run([sys.executable, "-m", "priorclip.cli.main", "train", str(first / "config.yaml"),
                           "--out", str(again)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = load_file(str(first / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(again / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    report_a = json.loads((first / "test_last.json").read_text())["expected"]
    report_b = json.loads((again / "test_last.json").read_text())["expected"]
    assert report_a == report_b
    losses = [[r["loss_total"] for r in read_log(run) if r["event"] == "train"] for run in (first, again)]
    assert len(losses[0]) == 3 and losses[0] == losses[1]  # bit for bit
