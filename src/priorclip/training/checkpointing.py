"""Run-directory checkpoints: publishing a whole directory atomically, the prior checkpoint format.

A checkpoint is a directory (model files + `train_state.pt`). It is written under a temporary
name and swapped in with renames, so `checkpoints/last` is always one complete checkpoint: after a
crash between the two renames, `last.old` is the complete previous one and `find_last` uses it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from priorclip.errors import CheckpointError
from priorclip.fileio import fsync_path

PRIOR_WEIGHTS, PRIOR_HEAD, PRIOR_CONFIG = "prior.safetensors", "head.safetensors", "prior.json"
TRAIN_STATE = "train_state.pt"


def publish_dir(tmp: Path, final: Path) -> None:
    """Replace directory `final` by the complete directory `tmp` (rename, rename, delete)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def staging_dir(final: Path) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def find_checkpoint(final: Path) -> Path | None:
    """`final` if complete, else the `.old` copy left by a crash mid-publish, else None."""
    for cand in (final, final.with_name(final.name + ".old")):
        if (cand / TRAIN_STATE).is_file() or (cand / "config.json").is_file() or (cand / PRIOR_CONFIG).is_file():
            return cand
    return None


# ---- the prior stage's checkpoint: the prior tower alone (+ its classifier head) -------------

class PriorClassifier(nn.Module):
    """The closed model's prior tower (a timm ResNet trunk) with a linear scene-classifier head."""

    def __init__(self, prior_cfg: dict, num_classes: int):
        super().__init__()
        from priorclip.models.towers import PriorTower

        self.prior_cfg = dict(prior_cfg)
        self.prior = PriorTower(prior_cfg["backbone"], frozen=False, **prior_cfg.get("backbone_kwargs", {}))
        self.head = nn.Linear(self.prior.width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.prior(images))


def save_prior(module: PriorClassifier, directory: Path, classes: list[str], extra: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.prior.state_dict().items()}
    save_file(state, str(directory / PRIOR_WEIGHTS), metadata={"format": "pt"})
    head = {k: v.detach().contiguous().cpu() for k, v in module.head.state_dict().items()}
    save_file(head, str(directory / PRIOR_HEAD), metadata={"format": "pt"})
    meta = {"kind": "priorclip-prior", "prior_cfg": module.prior_cfg, "classes": list(classes), **(extra or {})}
    (directory / PRIOR_CONFIG).write_text(json.dumps(meta, indent=2))
    return directory


def resolve_prior_dir(path: str | Path) -> Path:
    """A prior checkpoint directory, or a `prior` run directory (its best, else last, checkpoint)."""
    path = Path(path)
    for cand in (path, path / "checkpoints" / "best", path / "checkpoints" / "last"):
        if (cand / PRIOR_CONFIG).is_file() and (cand / PRIOR_WEIGHTS).is_file():
            return cand
    raise CheckpointError(f"prior_checkpoint {path}: no {PRIOR_CONFIG} + {PRIOR_WEIGHTS} there or under "
                          f"checkpoints/best|last; give the run directory of a `prior` stage run")


def load_prior_classifier(path: str | Path) -> tuple[PriorClassifier, list[str]]:
    directory = resolve_prior_dir(path)
    meta = json.loads((directory / PRIOR_CONFIG).read_text())
    module = PriorClassifier(meta["prior_cfg"], len(meta["classes"]))
    module.prior.load_state_dict(load_file(str(directory / PRIOR_WEIGHTS)))
    module.head.load_state_dict(load_file(str(directory / PRIOR_HEAD)))
    return module, meta["classes"]


def load_prior_into(model, path: str | Path, freeze: bool = True) -> Path:
    """Load a prior-stage checkpoint into a closed model's prior tower and freeze it."""
    directory = resolve_prior_dir(path)
    if not hasattr(model, "prior"):
        raise CheckpointError(f"prior_checkpoint given but model {model.model_name} has no prior tower "
                              f"(a baseline?); remove prior_checkpoint from the recipe")
    meta = json.loads((directory / PRIOR_CONFIG).read_text())
    want, have = model.model_config["prior_cfg"]["backbone"], meta["prior_cfg"]["backbone"]
    if want != have:
        raise CheckpointError(f"prior_checkpoint {directory} holds a {have} prior but the model's prior_cfg.backbone "
                              f"is {want}")
    state = load_file(str(directory / PRIOR_WEIGHTS))
    try:
        model.prior.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"prior_checkpoint {directory} does not match the model's prior: {exc}") from None
    if freeze:
        model.prior.set_frozen(True)
        model.model_config["prior_cfg"]["frozen"] = True
    return directory
