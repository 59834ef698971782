"""Input presets: how images and captions become tensors, recorded in the model config.

A checkpoint must get the inputs it was trained with, or its retrieval quality silently drops.
The released checkpoints were trained with the authors' pipelines, ours with ours; a preset writes
one of them into the config's `image_cfg` / `text_cfg` as plain values, and `preprocess` names the
preset they came from. `model.image_transform` and `model.tokenize` read only those values, so
every verb (evaluate, zeroshot, index, search, train) follows the checkpoint with no flag.

* ``"ours"`` (also what a config without `preprocess` means): closed domain ImageNet mean/std,
  shorter side + centre crop, the paper's augmentation with torchvision's RandAugment; WordPiece
  padded to 32 tokens with an attention mask. Open domain: OpenAI mean/std, the same crops.
* ``"released"`` (issue #15, what the authors' code does):
  closed domain (PIR, on X-VLM's data pipeline) -- CLIP's mean/std; evaluation: bicubic resize of
  both sides to the image size, no crop; training: RandomResizedCrop(0.5-1) + flip + X-VLM's
  RandomAugment(2, 7) over 10 ops; captions cleaned (`tokenizers.clean_caption`, 30 words),
  BERT WordPiece truncated to 47 tokens, padded to the longest caption of the batch, BERT run
  without an attention mask (padding attended).
  Open domain (the PriorCLIP open_clip fork) -- open_clip's preprocessing: OpenAI mean/std,
  resize + centre crop for evaluation, RandomResizedCrop(0.9-1) alone for training.

`load_official_checkpoint` (and so `priorclip convert`) sets ``"released"``; `create_model(name,
preprocess="released")` or a recipe's `model_overrides: {preprocess: released}` asks for it.
"""
from __future__ import annotations

import copy

from ..errors import ConfigError
from .transforms import IMAGENET_MEAN, IMAGENET_STD, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

_OURS_TEXT = {"context_length": 32, "padding": "max_length", "caption_cleaning": None, "max_words": None,
              "attention_mask": True}

# architecture family -> preset -> values deep-merged into the config (lists, not tuples: JSON).
PREPROCESS_PRESETS: dict[str, dict[str, dict]] = {
    "closed": {
        "ours": {
            "image_cfg": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "resize_mode": "shortest", "aug": {}},
            "text_cfg": dict(_OURS_TEXT),
        },
        "released": {
            "image_cfg": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD), "resize_mode": "squash",
                          "aug": {"scale": [0.5, 1.0], "hflip": 0.5, "randaug": "xvlm", "randaug_num_ops": 2,
                                  "randaug_magnitude": 7}},
            "text_cfg": {"context_length": 47, "padding": "longest", "caption_cleaning": "xvlm", "max_words": 30,
                         "attention_mask": False},
        },
    },
    "open": {
        "ours": {
            "image_cfg": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD), "resize_mode": "shortest",
                          "aug": {}},
        },
        "released": {
            "image_cfg": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD), "resize_mode": "shortest",
                          "aug": {"scale": [0.9, 1.0], "hflip": 0, "randaug_num_ops": 0}},
        },
    },
}
PRESETS = ("ours", "released")


def _family(config: dict) -> str:
    arch = str(config.get("architecture", ""))
    for family in PREPROCESS_PRESETS:
        if arch.startswith(family):
            return family
    raise ConfigError(f"model config architecture {arch!r} has no preprocessing presets; expected closed* or open*")


def preprocess_of(config: dict) -> str:
    """The preset a config's inputs came from ("ours" when the config does not say)."""
    return config.get("preprocess") or "ours"


def apply_preprocess(config: dict, preset: str) -> dict:
    """A copy of `config` with `preset`'s image and text values written in and `preprocess` set.

    Only input keys change (`image_cfg`, tokenizer keys of `text_cfg`): the architecture, and so
    the weights a checkpoint holds, stay as they are.
    """
    if preset not in PRESETS:
        raise ConfigError(f"model config key 'preprocess' must be one of {PRESETS}, got {preset!r}")
    out = copy.deepcopy(config)
    for section, values in PREPROCESS_PRESETS[_family(config)][preset].items():
        out[section] = {**(out.get(section) or {}), **copy.deepcopy(values)}
    out["preprocess"] = preset
    return out
