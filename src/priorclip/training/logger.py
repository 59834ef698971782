"""What a run directory records besides checkpoints: `run.json` (versions, device, git commit,
command line) and rank 0's JSON-lines log, mirrored to TensorBoard when it is installed."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from priorclip.training.distributed import DistInfo


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[3]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(info: DistInfo, device: torch.device) -> dict:
    from priorclip import __version__

    return {"priorclip": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "device": str(device),
            "cuda": torch.version.cuda if device.type == "cuda" else None, "world_size": info.world_size,
            "git_commit": _git_commit(), "argv": sys.argv}


class Logger:
    """JSON-lines log (+ TensorBoard when available); rank 0 only."""

    def __init__(self, run_dir: Path | None, tensorboard: bool):
        self.fh = open(run_dir / "log.jsonl", "a", encoding="utf-8") if run_dir else None
        self.tb = None
        if run_dir and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception as exc:  # noqa: BLE001 - tensorboard missing or broken: the JSONL log is the record
                print(f"priorclip train: TensorBoard logging off ({type(exc).__name__}: {exc}); "
                      f"metrics still go to {run_dir / 'log.jsonl'}", file=sys.stderr)
                self.tb = None

    def write(self, record: dict) -> None:
        if self.fh is None:
            return
        self.fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        self.fh.flush()
        if self.tb is not None and "step" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record.get('event', 'train')}/{k}", v, record["step"])

    def close(self) -> None:
        if self.fh:
            self.fh.close()
        if self.tb:
            self.tb.close()
