"""Checkpoints: our own (safetensors + JSON config), the authors' released files, open_clip export.

Our format is a directory: `model.safetensors`, `config.json` (the full model config) and, for
closed-domain models, `vocab.txt`. Saving over an existing checkpoint is all-or-nothing across
these files (a crash, kill -9 or full disk leaves the old set or the new set, never a mix):

1. every file is written and fsynced into a staging folder `DIR/.staging-<id>/`;
2. the commit point: `DIR/.commit` (naming the staging folder and the new file set) is written
   to a temporary name and `os.replace`d into place;
3. the files are moved from staging into `DIR` one `os.replace` at a time, then `.commit` and the
   staging folder are removed.

A reader that finds `.commit` takes each file from the staging folder while it is still there,
else from `DIR`, which is the complete new set at any point of step 3, without writing anything;
the next save finishes (or, before step 2, discards) an interrupted one. Both `config.json` and
the safetensors metadata carry the same `save_id`, so a mixed pair is detected, never loaded.
Other files in `DIR` (e.g. a trainer's state) are left alone.

Released files are pickles (`.pt`/`.pth`/`.bin`): loading one runs the unpickler, so they are
refused unless `allow_pickle=True`, and even then only read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..fileio import fsync_path
from .factory import build_model, get_model_config

WEIGHTS_NAME, CONFIG_NAME, VOCAB_NAME = "model.safetensors", "config.json", "vocab.txt"
CHECKPOINT_FILES = (WEIGHTS_NAME, VOCAB_NAME, CONFIG_NAME)
COMMIT_NAME, STAGING_PREFIX = ".commit", ".staging-"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".tar")


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_commit(directory: Path) -> dict | None:
    """The pending commit record of `directory`, or None (also for an unreadable one: see below)."""
    try:
        record = json.loads((directory / COMMIT_NAME).read_text())
        staging = directory / record["staging"]
        return {"staging": staging, "files": list(record["files"])}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{directory / COMMIT_NAME} is unreadable ({exc}); delete it and the "
                              f"{STAGING_PREFIX}* folders to fall back to the files in {directory}") from None


def _finish_pending(directory: Path) -> None:
    """Complete a save that crashed after its commit point; discard staging folders from before it."""
    record = _read_commit(directory)
    if record is not None:
        staging = record["staging"]
        for name in CHECKPOINT_FILES:
            if (staging / name).exists():
                os.replace(staging / name, directory / name)
            elif name not in record["files"]:
                (directory / name).unlink(missing_ok=True)
        fsync_path(directory)
        (directory / COMMIT_NAME).unlink()
        fsync_path(directory)
    for leftover in directory.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in directory.glob(f".{COMMIT_NAME}.*.tmp"):
        leftover.unlink(missing_ok=True)


def _resolve_files(directory: Path) -> dict[str, Path | None]:
    """Where each checkpoint file of the current complete set is (None: not part of it)."""
    record = _read_commit(directory)
    if record is None:
        return {n: (directory / n if (directory / n).is_file() else None) for n in CHECKPOINT_FILES}
    out = {}
    for name in CHECKPOINT_FILES:
        if name not in record["files"]:
            out[name] = None
        elif (record["staging"] / name).is_file():
            out[name] = record["staging"] / name
        else:
            out[name] = directory / name if (directory / name).is_file() else None
    return out


def save_checkpoint(model, directory: str | Path, extra: dict | None = None) -> Path:
    """Write `model` to `directory` (safetensors weights + JSON config), all files or none."""
    from .. import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _finish_pending(directory)
    save_id = uuid.uuid4().hex
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    staging = directory / f"{STAGING_PREFIX}{save_id}"
    staging.mkdir()
    try:
        save_file(state, str(staging / WEIGHTS_NAME), metadata={"format": "pt", "save_id": save_id})
        files = [WEIGHTS_NAME]
        tokenizer = getattr(model, "tokenizer", None)
        if hasattr(tokenizer, "save"):
            tokenizer.save(staging / VOCAB_NAME)
            files.append(VOCAB_NAME)
        meta = {"name": model.model_name, "config": model.model_config, "priorclip_version": __version__,
                **(extra or {}), "save_id": save_id}
        (staging / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        files.append(CONFIG_NAME)
        for name in files:
            fsync_path(staging / name)
        fsync_path(staging)
        _atomic_write(directory / COMMIT_NAME,
                      lambda tmp: Path(tmp).write_text(json.dumps({"staging": staging.name, "files": files})))
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)  # before the commit point: the old set stays
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot save checkpoint to {directory}: {exc.strerror or exc} "
                                  f"({type(exc).__name__}, errno {exc.errno}); the checkpoint previously there "
                                  "is unchanged. Free disk space or choose another directory.") from exc
        raise
    fsync_path(directory)
    _finish_pending(directory)
    return directory


def load_checkpoint(directory: str | Path, map_location: str = "cpu"):
    """Load a model saved by `save_checkpoint` (strict: every parameter must match)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a checkpoint directory (expected {CONFIG_NAME} and {WEIGHTS_NAME} inside)")
    config_id = weights_id = None
    for attempt in range(3):
        files = _resolve_files(directory)
        cfg_path, weights = files[CONFIG_NAME], files[WEIGHTS_NAME]
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if files[n] is None]
        if missing:
            raise CheckpointError(f"checkpoint {directory} is incomplete: missing {missing}")
        try:
            meta = json.loads(cfg_path.read_text())
            config = meta["config"]
            weights_id = _weights_save_id(weights)
        except FileNotFoundError:  # moved by a save running right now: resolve again
            time.sleep(0.05)
            continue
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{cfg_path} is not a PriorCLIP checkpoint config ({exc})") from None
        config_id = meta.get("save_id")
        if weights_id is None or config_id is None or weights_id == config_id:
            break
        time.sleep(0.05)  # a save in another process is between its file moves
    else:
        raise CheckpointError(f"checkpoint {directory}: {CONFIG_NAME} and {WEIGHTS_NAME} come from different saves "
                              f"(save_id {config_id} vs {weights_id}); "
                              "re-save the model or restore the directory from a backup")
    tokenizer = None
    vocab = files[VOCAB_NAME]
    if config.get("architecture", "").startswith("closed") and vocab is not None:
        from .tokenizers import WordPieceTokenizer, tokenizer_options

        tokenizer = WordPieceTokenizer(vocab, **tokenizer_options(config["text_cfg"]))
    model = build_model(config, tokenizer=tokenizer)
    load_weights_strict(model, read_state_dict(weights), source=str(directory / WEIGHTS_NAME))
    return model.to(map_location)


def _weights_save_id(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("save_id")
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); is it truncated?") from None


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict:
    """Read a state dict from safetensors, or (opt-in) from a pickle via weights_only loading."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if path.suffix == ".safetensors" or (len(head) == 8 and int.from_bytes(head, "little") < 100_000_000 and not head.startswith(b"PK")
                                         and not head.startswith(b"\x80")):
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); is it truncated?") from None
    if not allow_pickle:
        raise CheckpointError(f"{path} is a pickled checkpoint; pickles can execute code when loaded, so they are "
                              f"refused by default. If you trust the file, pass allow_pickle=True "
                              f"(CLI: --allow-pickle); it is then read with torch.load(weights_only=True).")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"could not read {path} as a weights-only pickle ({type(exc).__name__}: {exc})") from None
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict:
    """Find the tensor dict inside common wrappers ({'state_dict': ...}, {'model': ...}) and strip
    DistributedDataParallel's `module.` prefixes."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} holds no state dict of tensors")
    return {re.sub(r"^(module\.)+", "", k): v for k, v in obj.items()}


def load_weights_strict(model, state_dict: dict, source: str = "checkpoint", keys: set[str] | None = None) -> None:
    """Load with a readable report of missing/unexpected keys and shape mismatches.

    `keys` restricts strictness to a named subset of the model's parameters (e.g. the heads);
    the state dict must then hold exactly that subset.
    """
    own = model.state_dict()
    expected = set(own) if keys is None else keys
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(expected & set(state_dict)) if state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def head(items, n=8):
            return ", ".join(items[:n]) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {head(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {head(shapes, 4)}")
        raise CheckpointError(f"{source} does not match {getattr(model, 'model_name', type(model).__name__)} "
                              f"({model.__class__.__name__}): " + "; ".join(parts)
                              + ". Is it a checkpoint of another model or configuration?")
    model.load_state_dict(state_dict, strict=keys is None)


# ---- the authors' released checkpoints ------------------------------------------------------

_PAE_PREFIXES = {p: "spatial_pae." for p in ("img_sa.", "img_ca.", "mapping_img.", "head_img.")}
_PAE_PREFIXES.update({p: "temporal_pae." for p in ("txt_sa.", "txt_ca.", "mapping_txt.", "head_txt.")})
# The released prior is nn.Sequential(*resnet50.children()[:-1]): child index -> torchvision/timm name.
_RESNET_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
CLOSED_HEAD_PREFIXES = ("vision_proj.", "text_proj.", "conv_proj.", "spatial_pae.", "temporal_pae.", "temp", "temp2")


def closed_head_keys(model) -> set[str]:
    """Parameter names of the closed-domain parts downstream of the backbones."""
    return {k for k in model.state_dict() if not k.startswith(("visual.", "text.", "prior."))}


def map_released_closed(state_dict: dict, model=None) -> dict:
    """Rename PIR parameter names onto ours: heads, `vision_encoder` (Microsoft Swin layout,
    converted with timm's own filter), `text_encoder` (BERT, optional `bert.` level) and
    `conv_encoder` (a Sequential of ResNet-50 children)."""
    out, swin = {}, {}
    for key, value in state_dict.items():
        if key.startswith("vision_encoder."):
            swin[key[len("vision_encoder."):]] = value
            continue
        if key.startswith("text_encoder."):
            out["text.bert." + re.sub(r"^bert\.", "", key[len("text_encoder."):])] = value
            continue
        if key.startswith("conv_encoder."):
            child, _, rest = key[len("conv_encoder."):].partition(".")
            if child in _RESNET_CHILDREN:
                out[f"prior.model.{_RESNET_CHILDREN[child]}.{rest}"] = value
            continue  # relu/maxpool/avgpool have no parameters
        for prefix, ours in _PAE_PREFIXES.items():
            if key.startswith(prefix):
                key = ours + key
                break
        out[key] = value
    if swin:
        if model is None or not hasattr(model, "visual"):
            raise CheckpointError("mapping vision_encoder weights needs the model they load into")
        from timm.models.swin_transformer import checkpoint_filter_fn

        swin = {k: v for k, v in swin.items() if "relative_position_index" not in k and "attn_mask" not in k}
        for k, v in checkpoint_filter_fn(swin, model.visual.model).items():
            if not k.startswith("head."):
                out["visual.model." + k] = v
    return out


def load_official_checkpoint(path, kind: str, *, model=None, config: str | dict | None = None,
                             parts: str = "all", allow_pickle: bool = False):
    """Load the authors' released weights into a PriorCLIP model.

    kind: "closed" (PIR layout) or "open" (PriorCLIP open_clip layout, possibly wrapped in
    `state_dict` with `module.` prefixes). `path` may also be an in-memory state dict.
    parts: "all" (strict over the whole model) or, for closed, "heads" (strict over the parts
    downstream of the backbones: what the conformance fixtures hold).
    Strict by default: a partial load is how a released prior silently stays random.
    The model's inputs are switched to the released preprocessing (`preprocess="released"`,
    see `preprocess.py`), which its saved config.json then records.
    """
    if kind not in ("closed", "open"):
        raise CheckpointError(f"kind must be 'closed' or 'open', got {kind!r}")
    if parts not in ("all", "heads"):
        raise CheckpointError(f"parts must be 'all' or 'heads', got {parts!r}")
    if parts == "heads" and kind != "closed":
        raise CheckpointError("parts='heads' applies to closed-domain checkpoints only")
    source = "state dict" if isinstance(path, dict) else str(path)
    state = unwrap_state_dict(path, source) if isinstance(path, dict) else read_state_dict(path, allow_pickle)
    if model is None:
        cfg = config if isinstance(config, dict) else get_model_config(config or f"priorclip-{kind}")
        model = build_model(cfg, build_backbones=parts == "all") if kind == "closed" else build_model(cfg)
    arch = model.model_config.get("architecture", "")
    if not arch.startswith(kind):
        raise CheckpointError(f"{source}: a {kind}-domain checkpoint cannot load into a {arch} model")
    if kind == "closed":
        state = map_released_closed(state, model if parts == "all" else None)
        keys = closed_head_keys(model) if parts == "heads" else None
        load_weights_strict(model, state, source=source, keys=keys)
    else:
        state = {k: v for k, v in state.items() if k != "attn_mask"}
        load_weights_strict(model, state, source=source)
    # Released weights expect the released inputs (issue #15): CLIP mean/std and squashed 224 px,
    # cleaned captions padded to the batch's longest, BERT unmasked (closed); open_clip's (open).
    model.set_preprocess("released")
    return model


def export_open_clip_state_dict(model) -> dict:
    """A plain open_clip-style state dict (released parameter names), loadable by open_clip's
    CLIP for baselines and by `load_official_checkpoint(kind="open")` for PriorCLIP."""
    arch = model.model_config.get("architecture", "")
    if not arch.startswith("open"):
        raise CheckpointError(f"only open-domain models export to open_clip state dicts (this is {arch})")
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_model(spec: str | Path, device: str = "cpu", purpose: str = "using"):
    """What every `--model` argument accepts: a checkpoint directory, else a registered model name
    (random weights: fine for trying the pipeline, useless for real retrieval, so it warns)."""
    import sys

    from .factory import create_model, list_models

    path = Path(spec).expanduser()
    if path.is_dir():
        return load_checkpoint(path, map_location=device)
    if str(spec) in list_models():
        print(f"warning: {spec!r} is a model name, not a checkpoint: {purpose} RANDOM weights "
              f"(pass a directory written by `priorclip train` or `priorclip convert`)", file=sys.stderr)
        return create_model(str(spec)).to(device)
    from ..errors import ConfigError

    raise ConfigError(f"--model {spec!r} is neither a checkpoint directory nor a registered model name "
                      f"(see `priorclip models`)")
