"""Two CPU processes with torchrun's environment (gloo) train one tiny epoch together."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from training_helpers import base_recipe, read_log, write_recipe


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
