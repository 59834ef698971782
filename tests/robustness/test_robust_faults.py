"""Injected faults: full disk while saving, kill -9 mid-save, a DataLoader sample that raises."""
from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import priorclip.models as pm
from priorclip.errors import CheckpointError, DataError
from priorclip.models import checkpoints as ck
from priorclip.models.tokenizers import WordPieceTokenizer, builtin_char_vocab


def _tagged(tag: int, extra_tokens: int):
    """A closed baseline whose every parameter equals `tag` and whose vocabulary has a tag-specific
    size: weights, config and vocab.txt from different saves cannot be combined unnoticed."""
    tok = WordPieceTokenizer(builtin_char_vocab() + [f"tok{tag}_{i}" for i in range(extra_tokens)])
    model = pm.create_model("priorclip-closed-baseline-small", tokenizer=tok)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(tag))
    return model


@pytest.fixture(scope="module")
def tagged_models():
    return [_tagged(1, 3), _tagged(2, 11)]


def _check_consistent(directory: Path) -> int:
    """Load the directory and return its tag, asserting weights, config and vocab agree on it."""
    model = pm.load_checkpoint(directory)
    meta = json.loads(ck._resolve_files(directory)["config.json"].read_text())  # as load_checkpoint sees it
    tag = meta["tag"]
    values = {float(v) for p in model.parameters() for v in p.detach().unique()}
    assert values == {float(tag)}, (tag, sorted(values)[:5])
    assert model.tokenizer.vocab_size == len(builtin_char_vocab()) + {1: 3, 2: 11}[tag]
    return tag


@pytest.mark.parametrize("where", ["weights", "vocab", "config", "commit"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, tagged_models, monkeypatch, where):
    d = tmp_path / "ck"
    pm.save_checkpoint(tagged_models[0], d, extra={"tag": 1})
    before = {f.name: f.read_bytes() for f in d.iterdir()}

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "weights":
        monkeypatch.setattr(ck, "save_file", enospc)
    else:
        target = {"vocab": "vocab.txt", "config": "config.json", "commit": ".commit"}[where]
        real_write = Path.write_text

        def write_text(self, *a, **k):
            if self.name == target or (target == ".commit" and self.name.startswith("..commit.")):
                enospc()
            return real_write(self, *a, **k)
        monkeypatch.setattr(Path, "write_text", write_text)
        if where == "vocab":
            monkeypatch.setattr(WordPieceTokenizer, "save", lambda self, path: Path(path).write_text("x"))
    with pytest.raises(CheckpointError, match=rf"cannot save checkpoint to {d}: No space left on device .*errno 28.*unchanged") as info:
        pm.save_checkpoint(tagged_models[1], d, extra={"tag": 2})
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    monkeypatch.undo()
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before  # byte-identical, no staging left
    assert _check_consistent(d) == 1


def test_crash_after_the_commit_point_loads_the_new_set_and_is_finished_by_the_next_save(tmp_path, tagged_models, monkeypatch):
    d = tmp_path / "ck"
    pm.save_checkpoint(tagged_models[0], d, extra={"tag": 1})
    real_replace, moves = os.replace, []

    def replace(src, dst):  # die after the commit record and the first file move
        if Path(dst).parent == d and Path(dst).name in ck.CHECKPOINT_FILES:
            if moves:
                raise KeyboardInterrupt("simulated crash")
            moves.append(dst)
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        pm.save_checkpoint(tagged_models[1], d, extra={"tag": 2})
    monkeypatch.undo()
    assert (d / ".commit").exists() and len(moves) == 1  # really interrupted between the file moves
    os.chmod(d, 0o555)  # the reader resolves the new set without writing
    try:
        assert _check_consistent(d) == 2
    finally:
        os.chmod(d, 0o755)
    pm.save_checkpoint(tagged_models[0], d, extra={"tag": 1})
    assert sorted(f.name for f in d.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    assert _check_consistent(d) == 1


def test_config_and_weights_of_different_saves_are_detected(tmp_path, tagged_models):
    a, b = tmp_path / "a", tmp_path / "b"
    pm.save_checkpoint(tagged_models[0], a, extra={"tag": 1})
    pm.save_checkpoint(tagged_models[0], b, extra={"tag": 1})
    (a / "config.json").write_bytes((b / "config.json").read_bytes())  # a hand-made mix
    with pytest.raises(CheckpointError, match="come from different saves"):
        pm.load_checkpoint(a)


def _save_loop(models, directory, counter):
    i = 0
    while True:
        pm.save_checkpoint(models[i % 2], directory, extra={"tag": i % 2 + 1})
        i += 1
        counter.value = i


def test_kill_9_during_repeated_saves_never_leaves_a_mix(tmp_path, tagged_models):
    """A forked child saves the two models alternately as fast as it can; it is SIGKILLed at a
    random moment 5 times (a new child each time, same directory). After every kill the directory
    loads, with weights, config and vocabulary from the same save."""
    d = tmp_path / "ck"
    ctx = mp.get_context("fork")
    rng = random.Random(0)
    tags, interrupted = [], 0
    for kill in range(5):
        counter = ctx.Value("i", 0)
        child = ctx.Process(target=_save_loop, args=(tagged_models, d, counter), daemon=True)
        child.start()
        deadline = time.monotonic() + 60
        while counter.value < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert counter.value >= 1, "child never completed a save"
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        interrupted += any(p.name.startswith((".staging-", ".commit", "..")) for p in d.iterdir())
        tags.append(_check_consistent(d))
    assert len(tags) == 5
    print(f"kill -9 x5: tags {tags}, {interrupted} kill(s) left a save in progress")


class _Poisoned(Dataset):
    """Item 13 raises as a corrupt file would; the data package's skip policy is used by the
    caption datasets (on_error='skip'), here reproduced through a real DataError."""

    def __len__(self):
        return 40

    def __getitem__(self, i):
        if i == 13:
            raise DataError(f"sample_{i}.jpg: corrupt or truncated image (poisoned)")
        return torch.tensor(i)


def test_poisoned_sample_does_not_kill_the_epoch(tmp_path):
    """A worker hitting an unreadable image in a CaptionDataset keeps going (skip policy)."""
    import numpy as np
    from PIL import Image

    from priorclip.data import KarpathyCaptions, collate_skip_none

    import inputs

    (tmp_path / "images").mkdir()
    for i in range(40):
        p = tmp_path / "images" / f"{i}.png"
        if i == 13:
            p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)  # poisoned
        else:
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(p)
    (tmp_path / "dataset.json").write_text(inputs.karpathy([inputs.entry(f"{i}.png", [f"c{i}"]) for i in range(40)]))
    ds = KarpathyCaptions(tmp_path, "train", transforms=lambda im: int(np.asarray(im)[0, 0, 0]),
                          bad_files=tmp_path / "bad.jsonl")
    got = [v for b in DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_skip_none) for v in b["image"]]
    assert len(got) == 40 and 13 not in got and got.count(14) == 2  # index 13 replaced by the next image
    # without the skipping mechanism the same fault ends the epoch in the worker
    with pytest.raises(DataError, match="sample_13.jpg"):
        list(DataLoader(_Poisoned(), batch_size=8, num_workers=2))
