"""Training recipes: YAML files validated into dataclasses, with `--set key=value` overrides.

A recipe is the whole description of a run (stage, model, data, optimisation, outputs); the
trainer writes the resolved recipe into the run directory, so a run can be re-created from it.
Unknown keys are errors with the nearest known key suggested (a typo must not silently fall
back to a default).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from priorclip.errors import ConfigError

STAGES = ("prior", "closed", "pretrain", "finetune")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class DataSpec:
    path: str | None = None  # Karpathy dataset JSON or a folder holding one dataset*.json
    images_root: str | None = None  # default: images/ beside the JSON
    labels: str = "none"  # scene labels: "prefix", "csv:PATH", "folder" or "none"
    train_split: str = "train"
    val_split: str | None = "val"  # model selection; null: no selection (best = last)
    test_split: str | None = "test"  # reported at the end, never used for selection
    augment: bool = True  # the paper's training augmentation (RandomResizedCrop, flip, RandAugment)
    aug: dict = field(default_factory=dict)  # overrides of its options (models/transforms.py DEFAULT_AUG), e.g.
    #                                          {scale: [0.9, 1], hflip: 0, randaug_num_ops: 0} = open_clip's
    captions: str = "all"  # "all": every (image, caption) pair each epoch (the released code); "one": each
    #                        image once per epoch with one of its captions drawn from (seed, epoch, index)
    shards: str | list | None = None  # webdataset tar shards for training (brace pattern, glob, '::' or a list);
    #                                   data.path then only serves val_split / test_split
    epoch_samples: int | None = None  # with shards: samples per epoch over all processes (the stream is resampled)
    shuffle_buffer: int = 1000  # with shards: samples in each worker's shuffle buffer
    shard_image_keys: list | None = None  # with shards: tar member keys holding the image (null: ours + RS5M's)
    shard_caption_keys: list | None = None  # ... and the caption (null: txt, caption)


@dataclass
class Recipe:
    stage: str = "closed"
    model: str = "priorclip-closed-small"
    model_overrides: dict = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    vocab: str | None = None  # WordPiece vocab.txt for closed models; null: trained on the train captions
    vocab_size: int = 8000  # size of the vocabulary trained when vocab is null
    prior_checkpoint: str | None = None  # closed: a `prior` stage run (or its checkpoint dir) to load and freeze
    init_checkpoint: str | None = None  # finetune (or any stage): model checkpoint dir to start from
    train_all: bool = False  # finetune: also train the prior and the text tower
    cache_prior: bool = True  # frozen prior (open or closed domain) + data.augment false: run it once per image
    epochs: int = 10
    batch_size: int = 32  # per process
    lr: float = 1e-4
    weight_decay: float = 0.2
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0  # final lr = lr * min_lr_ratio
    grad_accum: int = 1
    grad_clip: float | None = 1.0  # max global grad norm; null: no clipping
    # prior stage: recompute BatchNorm's running statistics on this many train batches with the
    # epoch's final weights before each validation ("precise BN"; 0: off). Few steps leave the
    # running average mixed with early weights' statistics, which eval mode and the frozen prior use.
    bn_recalibrate_batches: int = 0
    precision: str = "fp32"
    affiliation_weight: float = 1.0  # x the Attribution loss, in every contrastive stage whose data carry scene labels
    affiliation_temperature: float | None = None  # null: closed models' learned temp2, open models' contrastive temperature
    affiliation_centres: str = "global"  # class centres over the global batch (all processes) or each process's ("local")
    workers: int = 4
    seed: int = 0
    eval_every: int = 1  # epochs between validation runs (0: only at the end)
    eval_batch_size: int = 64
    save_every_steps: int = 0  # optimizer steps between checkpoints (0: only at epoch ends)
    log_every: int = 10  # optimizer steps between log lines
    out_dir: str = "runs/run"
    device: str = "auto"  # auto, cpu, cuda
    tensorboard: bool = True  # also log to TensorBoard when it is installed


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp, where: str):
    """Check/convert a YAML value against a dataclass field type (str | None, int, float, ...)."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"recipe key {where!r} must be a mapping, got {value!r}")
        return _build(tp, value, where + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"recipe key {where!r}: bad value {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return value
    elif tp is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    else:
        return value
    raise ConfigError(f"recipe key {where!r} expects {_type_name(tp)}, got {value!r}")


def _build(cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown recipe key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def validate(recipe: Recipe) -> Recipe:
    """Value checks beyond types; each message names the key."""
    def bad(key, msg):
        raise ConfigError(f"recipe key {key!r}: {msg}")

    if recipe.stage not in STAGES:
        bad("stage", f"{recipe.stage!r} is not one of {', '.join(STAGES)}")
    if recipe.data.captions not in ("all", "one"):
        bad("data.captions", f"{recipe.data.captions!r} is not one of all, one")
    if recipe.affiliation_centres not in ("global", "local"):
        bad("affiliation_centres", f"{recipe.affiliation_centres!r} is not one of global, local")
    if recipe.affiliation_temperature is not None and recipe.affiliation_temperature <= 0:
        bad("affiliation_temperature", f"must be > 0 or null, got {recipe.affiliation_temperature}")
    if recipe.affiliation_weight < 0:
        bad("affiliation_weight", f"must be >= 0, got {recipe.affiliation_weight}")
    if recipe.schedule not in SCHEDULES:
        bad("schedule", f"{recipe.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if recipe.precision not in PRECISIONS:
        bad("precision", f"{recipe.precision!r} is not one of {', '.join(PRECISIONS)}")
    for key in ("epochs", "batch_size", "grad_accum", "vocab_size", "eval_batch_size", "log_every"):
        if getattr(recipe, key) < 1:
            bad(key, f"must be >= 1, got {getattr(recipe, key)}")
    for key in ("warmup_steps", "workers", "eval_every", "save_every_steps", "seed"):
        if getattr(recipe, key) < 0:
            bad(key, f"must be >= 0, got {getattr(recipe, key)}")
    if recipe.lr <= 0:
        bad("lr", f"must be > 0, got {recipe.lr}")
    if recipe.weight_decay < 0:
        bad("weight_decay", f"must be >= 0, got {recipe.weight_decay}")
    if recipe.bn_recalibrate_batches < 0:
        bad("bn_recalibrate_batches", f"must be >= 0, got {recipe.bn_recalibrate_batches}")
    if recipe.grad_clip is not None and recipe.grad_clip <= 0:
        bad("grad_clip", f"must be > 0 or null, got {recipe.grad_clip}")
    if not 0 <= recipe.min_lr_ratio <= 1:
        bad("min_lr_ratio", f"must be in [0, 1], got {recipe.min_lr_ratio}")
    d = recipe.data
    if d.shards is not None:
        items = [d.shards] if isinstance(d.shards, str) else d.shards
        if not isinstance(items, list) or not items or not all(isinstance(u, str) and u.strip() for u in items):
            bad("data.shards", f"expects a shard pattern (e.g. /data/rs5m/{{000000..000099}}.tar), a glob or a "
                               f"non-empty list of paths, got {d.shards!r}")
        if d.epoch_samples is None or d.epoch_samples < 1:
            bad("data.epoch_samples", "is required with data.shards: the resampled stream has no end, so say how "
                                      f"many samples (over all processes) make an epoch; got {d.epoch_samples!r}")
        if recipe.stage == "prior":
            bad("data.shards", "the prior stage needs scene labels, which shards do not carry; use data.path")
        if recipe.stage == "closed" and recipe.vocab is None:
            bad("vocab", "a closed stage reading data.shards cannot train a vocabulary from them; set vocab to a "
                         "vocab.txt")
    elif d.path is None:
        bad("data.path", "is required (or data.shards for training): a Karpathy dataset JSON or the folder holding it")
    from priorclip.models.transforms import DEFAULT_AUG

    unknown = sorted(set(d.aug) - set(DEFAULT_AUG))
    if unknown:
        bad("data.aug", f"unknown option(s) {unknown}; known: {', '.join(DEFAULT_AUG)}")
    for key in ("shard_image_keys", "shard_caption_keys"):
        value = getattr(d, key)
        if value is not None and (not value or not all(isinstance(k, str) and k for k in value)):
            bad(f"data.{key}", f"expects a non-empty list of tar member keys (e.g. [jpg, png]), got {value!r}")
    if d.shuffle_buffer < 0:
        bad("data.shuffle_buffer", f"must be >= 0, got {d.shuffle_buffer}")
    if recipe.stage == "prior" and recipe.data.labels.strip().lower() in ("", "none"):
        bad("data.labels", "the prior stage trains a scene classifier and needs labels ('prefix' or 'csv:PATH')")
    if recipe.stage == "finetune" and recipe.init_checkpoint is None:
        bad("init_checkpoint", "finetune starts from a stage-1 (pretrain) checkpoint directory; set it")
    if recipe.device not in ("auto", "cpu") and not recipe.device.startswith("cuda"):
        bad("device", f"{recipe.device!r}: use auto, cpu or cuda")
    return recipe


def parse_set(items: list[str] | None) -> dict:
    """`["a.b=1", "lr=3e-4"]` -> nested dict with YAML-parsed values (so `null`, `true`, `[1,2]` work)."""
    out: dict = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (dotted keys for nested values, e.g. data.path=...)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set both as a value and as a mapping")
        node[parts[-1]] = value
    return out


def _yaml_number(value):
    """PyYAML reads `3e-4` as a string (YAML 1.1 needs a dot); accept it as a float."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in "e.") and value.strip()[0] in "+-.0123456789" else value
        except ValueError:
            return value
    return value


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        # model_overrides stay free-form but merge too, so --set model_overrides.x=1 keeps the file's others
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _fix_numbers(raw: dict, cls) -> dict:
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in raw.items():
        tp = hints.get(k)
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(v, dict):
            out[k] = _fix_numbers(v, tp)
        elif tp is not None and float in (typing.get_args(tp) or (tp,)):
            out[k] = _yaml_number(v)
        else:
            out[k] = v
    return out


def recipe_from_dict(raw: dict, overrides: dict | None = None) -> Recipe:
    raw = _deep_merge(raw or {}, overrides or {})
    return validate(_build(Recipe, _fix_numbers(raw, Recipe)))


def load_recipe(path: str | Path | None, sets: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or start from the defaults when `path` is None) and apply `--set`s."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe file {path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"recipe file {path} must hold a mapping of keys, got {type(raw).__name__}")
    try:
        return recipe_from_dict(raw, parse_set(sets))
    except ConfigError as exc:
        raise ConfigError(f"{path or 'recipe'}: {exc}") from None


def recipe_to_dict(recipe: Recipe) -> dict:
    d = dataclasses.asdict(recipe)
    d["betas"] = list(d["betas"])
    return d


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
