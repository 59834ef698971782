"""Datasets, image reading and scene labels.

Every dataset class has the shape `Dataset(root, split="train", transforms=None, *, mode="pairs"
| "images", images_root=None, labels=None, ...)` and yields dict samples (see `base`).
Names are imported lazily, so `from priorclip.data.images import load_image` does not pull in torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CaptionDataset": "base",
    "collate_skip_none": "base",
    "CsvCaptions": "csv_captions",
    "ImageFolder": "folder",
    "list_images": "folder",
    "BadFileReport": "images",
    "image_from_bytes": "images",
    "is_image_file": "images",
    "load_image": "images",
    "safe_load_image": "images",
    "KarpathyCaptions": "karpathy",
    "CsvLabels": "labels",
    "FolderLabels": "labels",
    "LabelSource": "labels",
    "NoLabels": "labels",
    "PrefixLabels": "labels",
    "make_labels": "labels",
    "PrecompCaptions": "precomp",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'priorclip.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"priorclip.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
