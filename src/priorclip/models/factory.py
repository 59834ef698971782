"""One factory for every model: named JSON configs (open_clip style), `create_model(name, **overrides)`.

Architectures are data: each file in `configs/` is one named model. `add_model_config(path)` adds a
user's own file or folder. Overrides are deep-merged into the named config and checked: an unknown
key is an error that suggests the nearest known key.
"""
from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path

from ..errors import ConfigError

_CONFIG_DIRS = [Path(__file__).parent / "configs"]
_MODEL_CONFIGS: dict[str, dict] = {}

# Keys a config may hold at each level, with free-form dicts (backbone kwargs) left open.
_FREE_FORM = {"backbone_kwargs", "image_cfg", "train_cfg"}


def _rescan() -> None:
    _MODEL_CONFIGS.clear()
    for folder in _CONFIG_DIRS:
        files = [folder] if folder.is_file() else sorted(folder.glob("*.json"))
        for path in files:
            try:
                cfg = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"model config {path} is not valid JSON: {exc}") from None
            if "architecture" not in cfg or "embed_dim" not in cfg:
                raise ConfigError(f"model config {path} needs 'architecture' and 'embed_dim'")
            _MODEL_CONFIGS[path.stem] = cfg


def list_models() -> list[str]:
    """Names of every registered model config, sorted."""
    return sorted(_MODEL_CONFIGS)


def add_model_config(path: str | Path) -> None:
    """Register a JSON config file, or every *.json in a folder, under its file stem."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"model config path {path} does not exist")
    _CONFIG_DIRS.append(path)
    _rescan()


def get_model_config(name: str) -> dict:
    if name not in _MODEL_CONFIGS:
        close = difflib.get_close_matches(name, list_models(), n=3)
        hint = f"; did you mean {close}?" if close else f"; known models: {list_models()}"
        raise ConfigError(f"unknown model {name!r}{hint}")
    return {**copy.deepcopy(_MODEL_CONFIGS[name]), "name": name}


def merge_config(base: dict, overrides: dict, path: str = "") -> dict:
    """Deep-merge `overrides` into `base`, rejecting keys the base does not have.

    A top-level `preprocess` (a preset name, see `preprocess.py`) is applied first, so explicit
    `image_cfg` / `text_cfg` overrides beside it still win.
    """
    if not path and overrides.get("preprocess") is not None:
        from .preprocess import apply_preprocess

        base = apply_preprocess(base, overrides["preprocess"])
    if not path:
        overrides = {k: v for k, v in overrides.items() if k != "preprocess"}
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        where = f"{path}{key}"
        if key not in out and path.rstrip(".").split(".")[-1] not in _FREE_FORM and key not in ("name",):
            close = difflib.get_close_matches(key, list(out), n=1)
            hint = f" (did you mean '{path}{close[0]}'?)" if close else f" (known: {sorted(out)})"
            raise ConfigError(f"unknown model config key {where!r}{hint}")
        if key in _FREE_FORM and isinstance(value, dict):
            out[key] = copy.deepcopy(value)  # e.g. backbone kwargs belong to one backbone: replace, never merge
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value, where + ".")
        else:
            if key in out and out[key] is not None and value is not None and not isinstance(value, type(out[key])) \
                    and not (isinstance(out[key], float) and isinstance(value, int)):
                raise ConfigError(f"model config key {where!r} expects {type(out[key]).__name__}, got {value!r}")
            out[key] = value
    return out


# Sizes that must be positive integers wherever they appear (None = "use the default" where allowed).
_POSITIVE_INTS = {
    "embed_dim", "image_size", "width", "layers", "heads", "head_width", "patch_size", "prior_width",
    "context_length", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "max_position_embeddings", "instru_num", "cycle_num", "filter_size", "belief_tokens",
    "max_words",
}


def validate_config(config: dict) -> None:
    """Reject wrong types and impossible values with the key path named, before torch/timm/open_clip
    fail somewhere deep inside with an AssertionError or a negative-dimension RuntimeError."""
    def walk(node, path):
        for key, value in node.items():
            where = f"{path}{key}"
            if isinstance(value, dict):
                if key not in ("backbone_kwargs",):
                    walk(value, where + ".")
            elif key in _POSITIVE_INTS and value is not None:
                items = value if key == "image_size" and isinstance(value, (list, tuple)) else [value]
                if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
                    raise ConfigError(f"model config key {where!r} must be a positive integer, got {value!r}")
    walk(config, "")
    for key in ("temperature", "temperature_affiliation"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ConfigError(f"model config key {key!r} must be a positive number, got {value!r}")
    text, pae = config.get("text_cfg") or {}, config.get("pae_cfg") or {}
    pairs = [("text_cfg.width", text.get("width"), "text_cfg.heads", text.get("heads")),
             ("text_cfg.hidden_size", text.get("hidden_size"), "text_cfg.num_attention_heads", text.get("num_attention_heads")),
             ("embed_dim", config.get("embed_dim"), "pae_cfg.heads", pae.get("heads"))]
    for wname, width, hname, heads in pairs:
        if width is not None and heads is not None and width % heads:
            raise ConfigError(f"model config: {hname}={heads} does not divide {wname}={width}; "
                              f"choose a number of heads that divides {width}")
    ctx, max_pos = text.get("context_length"), text.get("max_position_embeddings")
    if ctx is not None and max_pos is not None and ctx > max_pos:
        raise ConfigError(f"model config: text_cfg.context_length={ctx} exceeds text_cfg.max_position_embeddings={max_pos}")
    dropout = pae.get("dropout")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1):
        raise ConfigError(f"model config key 'pae_cfg.dropout' must be in [0, 1), got {dropout!r}")
    for key in ("spatial", "temporal"):
        if key in pae and not isinstance(pae[key], bool):
            raise ConfigError(f"model config key 'pae_cfg.{key}' must be true or false, got {pae[key]!r}")
    if "belief" in pae and pae["belief"] not in ("hard", "soft"):
        raise ConfigError(f"model config key 'pae_cfg.belief' must be 'hard' or 'soft', got {pae['belief']!r}")
    _validate_inputs(config)


def _validate_inputs(config: dict) -> None:
    """The preprocessing keys (`preprocess`, `image_cfg`, the tokenizer keys of `text_cfg`)."""
    from .preprocess import PRESETS
    from .tokenizers import CAPTION_CLEANINGS, PADDINGS
    from .transforms import DEFAULT_AUG, RANDAUGS, RESIZE_MODES

    preset = config.get("preprocess")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"model config key 'preprocess' must be one of {PRESETS}, got {preset!r}")
    icfg, text = config.get("image_cfg") or {}, config.get("text_cfg") or {}
    if "resize_mode" in icfg and icfg["resize_mode"] not in RESIZE_MODES:
        raise ConfigError(f"model config key 'image_cfg.resize_mode' must be one of {RESIZE_MODES}, got {icfg['resize_mode']!r}")
    aug = icfg.get("aug") or {}
    if not isinstance(aug, dict):
        raise ConfigError(f"model config key 'image_cfg.aug' must be a mapping of augmentation options, got {aug!r}")
    unknown = sorted(set(aug) - set(DEFAULT_AUG))
    if unknown:
        raise ConfigError(f"model config key 'image_cfg.aug' has unknown option(s) {unknown}; known: {list(DEFAULT_AUG)}")
    if "randaug" in aug and aug["randaug"] not in RANDAUGS:
        raise ConfigError(f"model config key 'image_cfg.aug.randaug' must be one of {RANDAUGS}, got {aug['randaug']!r}")
    if text.get("padding") is not None and text["padding"] not in PADDINGS:
        raise ConfigError(f"model config key 'text_cfg.padding' must be one of {PADDINGS}, got {text['padding']!r}")
    if text.get("caption_cleaning") is not None and text["caption_cleaning"] not in CAPTION_CLEANINGS:
        raise ConfigError(f"model config key 'text_cfg.caption_cleaning' must be null or one of {CAPTION_CLEANINGS}, "
                          f"got {text['caption_cleaning']!r}")


def build_model(config: dict, tokenizer=None, build_backbones: bool = True):
    """Build a model from a complete config dict (as stored in a checkpoint's config.json)."""
    from .closed_domain import ClosedDualEncoder, ClosedPriorCLIP
    from .open_domain import OpenCLIPBaseline, OpenPriorCLIP

    arch = config.get("architecture")
    validate_config(config)
    if arch == "closed":
        return ClosedPriorCLIP(config, tokenizer=tokenizer, build_backbones=build_backbones)
    if arch == "closed-baseline":
        return ClosedDualEncoder(config, tokenizer=tokenizer, build_backbones=build_backbones)
    if arch == "open":
        return OpenPriorCLIP(config)
    if arch == "open-baseline":
        return OpenCLIPBaseline(config)
    raise ConfigError(f"unknown architecture {arch!r}; expected closed, closed-baseline, open or open-baseline")


def create_model(name: str | dict, *, vocab_file: str | Path | None = None, tokenizer=None, **overrides):
    """Build a named model with random weights (nothing is downloaded).

    `overrides` deep-merge into the config, e.g. `create_model("priorclip-closed-small",
    pae_cfg={"filter_size": 8})`; `preprocess="released"` switches the inputs to the authors'
    pipeline (`preprocess.py`). Closed-domain models take a WordPiece `vocab_file` (or a
    `tokenizer`, which brings only its vocabulary: `text_cfg` says how it tokenises); without one
    they use the built-in character vocabulary.
    """
    config = get_model_config(name) if isinstance(name, str) else copy.deepcopy(name)
    if overrides:
        config = merge_config(config, overrides)
    if vocab_file is not None or tokenizer is not None:
        if not config["architecture"].startswith("closed"):
            raise ConfigError("vocab_file/tokenizer apply to closed-domain (BERT) models only")
        if tokenizer is None:
            from .tokenizers import WordPieceTokenizer, tokenizer_options

            tokenizer = WordPieceTokenizer(vocab_file, **tokenizer_options(config["text_cfg"]))
    return build_model(config, tokenizer=tokenizer)


_rescan()
