"""Run-directory checkpoints: publishing a whole directory atomically, the prior checkpoint format.

A checkpoint is a directory (model files + `train_state.pt`). It is written under a temporary
name and swapped in with renames, so `checkpoints/last` is always one complete checkpoint: after a
crash between the two renames, `last.old` is the complete previous one and `find_checkpoint` uses it.
`train_state.pt` also holds the RNG states (`rng_state`), so a resumed run draws what an
uninterrupted one would.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from priorclip.errors import CheckpointError
from priorclip.fileio import fsync_path

PRIOR_WEIGHTS, PRIOR_HEAD, PRIOR_CONFIG = "prior.safetensors", "head.safetensors", "prior.json"
TRAIN_STATE = "train_state.pt"
MODIFIED_RESNET = "modified_resnet"  # prior_cfg kind of the open model's res_visual


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
    """A model's prior tower with a linear scene-classifier head.

    `prior_cfg` is `prior_spec(model_config)`: the closed model's timm ResNet trunk (`backbone`) or,
    with `kind: modified_resnet`, the open model's `res_visual` (open_clip ModifiedResNet with
    attention pooling; its output is the embedding the instruction token is projected from).
    """

    def __init__(self, prior_cfg: dict, num_classes: int):
        super().__init__()
        self.prior_cfg = dict(prior_cfg)
        if prior_cfg.get("kind") == MODIFIED_RESNET:
            from open_clip.modified_resnet import ModifiedResNet

            self.prior = ModifiedResNet(**{k: v for k, v in prior_cfg.items() if k != "kind"})
            width = prior_cfg["output_dim"]
        else:
            from priorclip.models.towers import PriorTower

            self.prior = PriorTower(prior_cfg["backbone"], frozen=False, **prior_cfg.get("backbone_kwargs", {}))
            width = self.prior.width
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.prior(images))


def prior_spec(config: dict) -> dict:
    """What the prior stage trains for a (merged) model config: the closed model's `prior_cfg`, or
    the open model's ModifiedResNet arguments under `kind: modified_resnet`."""
    if "prior_cfg" in config:
        return dict(config["prior_cfg"])
    if config.get("architecture") == "open":
        from priorclip.models.open_domain import prior_tower_kwargs

        return {"kind": MODIFIED_RESNET, **prior_tower_kwargs(config)}
    raise CheckpointError(f"model {config.get('name', config.get('architecture'))} has no prior tower to train "
                          f"(a baseline?); the prior stage needs priorclip-closed* or priorclip-open (not -baseline)")


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
    """Load a prior-stage checkpoint into a model's prior (the closed model's `prior` tower or the
    open model's `res_visual`) and freeze it."""
    directory = resolve_prior_dir(path)
    meta = json.loads((directory / PRIOR_CONFIG).read_text())
    have = meta["prior_cfg"]
    if hasattr(model, "res_visual"):
        target, want = model.res_visual, prior_spec(model.model_config)
        if have.get("kind") != MODIFIED_RESNET or have != want:
            raise CheckpointError(f"prior_checkpoint {directory} holds a prior {_describe(have)} but the model's "
                                  f"res_visual is {_describe(want)}; train the prior with the same model and "
                                  f"model_overrides (vision_cfg.prior_*, image_size, embed_dim)")
    elif hasattr(model, "prior"):
        target = model.prior
        want = model.model_config["prior_cfg"]["backbone"]
        if have.get("kind") == MODIFIED_RESNET or want != have.get("backbone"):
            raise CheckpointError(f"prior_checkpoint {directory} holds a prior {_describe(have)} but the model's "
                                  f"prior_cfg.backbone is {want}")
    else:
        raise CheckpointError(f"prior_checkpoint given but model {model.model_name} has no prior tower "
                              f"(a baseline?); remove prior_checkpoint from the recipe")
    state = load_file(str(directory / PRIOR_WEIGHTS))
    try:
        target.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"prior_checkpoint {directory} does not match the model's prior: {exc}") from None
    if freeze:
        if hasattr(model, "res_visual"):
            model.set_prior_frozen(True)
            model.model_config["vision_cfg"]["prior_frozen"] = True
        else:
            model.prior.set_frozen(True)
            model.model_config["prior_cfg"]["frozen"] = True
    return directory


def _describe(prior_cfg: dict) -> str:
    if prior_cfg.get("kind") == MODIFIED_RESNET:
        return "ModifiedResNet(" + ", ".join(f"{k}={v}" for k, v in prior_cfg.items() if k != "kind") + ")"
    return str(prior_cfg.get("backbone"))


# ---- RNG state (exact resume) ----------------------------------------------------------------

def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
