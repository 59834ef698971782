"""Two CPU processes with torchrun's environment (gloo) train one tiny epoch together."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from training_helpers import TINY_OPEN, base_recipe, read_log, write_recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_epoch(tiny_dataset, tmp_path):
    recipe = base_recipe(tiny_dataset, epochs=1, batch_size=4, device="cpu",
                         data={"path": str(tiny_dataset), "labels": "prefix", "augment": False, "test_split": None})
    cfg = write_recipe(tmp_path / "r.yaml", recipe)
    run = tmp_path / "ddp"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "priorclip.cli.main", "train", str(cfg), "--out", str(run)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=150)[0].decode(errors="replace"))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)

    log = read_log(run)
    start = [r for r in log if r["event"] == "start"]
    assert len(start) == 1  # only rank 0 writes
    # 24 training pairs split over 2 ranks -> 12 each -> 3 batches of 4 per rank
    assert start[0]["steps_per_epoch"] == 3 and log[-1]["event"] == "end" and log[-1]["step"] == 3
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    weights = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()


def _vocab_worker(rank, port, tiny_dataset, out):
    """One process of a two-process run whose ranks do not share storage (each its own run dir)
    and whose own training captions differ: the vocabulary must still be rank 0's."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch.distributed as dist

    from priorclip.training.loop import Trainer
    from priorclip.training.recipe import recipe_from_dict

    run_dir = out / f"rank{rank}"
    run_dir.mkdir()
    trainer = Trainer(recipe_from_dict(base_recipe(tiny_dataset, device="cpu")), run_dir)

    class Captions:  # what this rank would train a vocabulary on by itself
        all_captions = ["zebra crossing quokka"] * 5 if rank else ["planes parked at the airport"] * 5

    tok = trainer._tokenizer(Captions())
    torch.save(tok.vocab, out / f"vocab{rank}.pt")
    dist.destroy_process_group()


def test_every_rank_uses_rank_zeros_vocabulary(tiny_dataset, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_vocab_worker, args=(_free_port(), tiny_dataset, tmp_path), nprocs=2, join=True)
    v0, v1 = torch.load(tmp_path / "vocab0.pt"), torch.load(tmp_path / "vocab1.pt")
    assert v0 == v1 and "airport" in v0 and "quokka" not in v1
    assert (tmp_path / "rank0" / "vocab.txt").read_text().splitlines() == v0
    assert not (tmp_path / "rank1" / "vocab.txt").exists()  # only rank 0 writes the run's files


def test_two_process_finetune_with_attribution_loss(tiny_dataset, tmp_path):
    """Open-domain stage 2 under DDP (gloo, 2 processes) trains with contrastive + Attribution loss
    (class centres per process: affiliation_centres local, the released behaviour)."""
    from priorclip.training.loop import train
    from priorclip.training.recipe import recipe_from_dict


    data = {"path": str(tiny_dataset), "labels": "prefix", "augment": False, "test_split": None}
    pre = train(recipe_from_dict(base_recipe(tiny_dataset, stage="pretrain", model="priorclip-open-small",
                                             model_overrides=TINY_OPEN, epochs=1, data={**data, "labels": "none"})),
                out_dir=tmp_path / "pre")
    cfg = write_recipe(tmp_path / "ft.yaml", base_recipe(tiny_dataset, stage="finetune", epochs=1, batch_size=4,
                                                         device="cpu", data=data, affiliation_centres="local",
                                                         init_checkpoint=str(pre / "checkpoints" / "last")))
    run, port, procs = tmp_path / "ddp-ft", _free_port(), []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "priorclip.cli.main", "train", str(cfg), "--out", str(run)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=150)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    steps = [r for r in read_log(run) if r["event"] == "train"]
    assert steps and all(r["loss_affiliation"] > 0 for r in steps)
    assert all(r["loss_total"] == pytest.approx(r["loss_contrastive"] + r["loss_affiliation"], rel=1e-5) for r in steps)
