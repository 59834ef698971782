"""Datasets, image reading and scene labels.

Every dataset class has the shape `Dataset(root, split="train", transforms=None, *, mode="pairs"
| "images", images_root=None, labels=None, ...)` and yields dict samples (see `base`).
"""
from priorclip.data.base import CaptionDataset, collate_skip_none
from priorclip.data.csv_captions import CsvCaptions
from priorclip.data.folder import ImageFolder, list_images
from priorclip.data.images import BadFileReport, image_from_bytes, is_image_file, load_image, safe_load_image
from priorclip.data.karpathy import KarpathyCaptions
from priorclip.data.labels import CsvLabels, FolderLabels, LabelSource, NoLabels, PrefixLabels, make_labels
from priorclip.data.precomp import PrecompCaptions

__all__ = [
    "BadFileReport",
    "CaptionDataset",
    "CsvCaptions",
    "CsvLabels",
    "FolderLabels",
    "ImageFolder",
    "KarpathyCaptions",
    "LabelSource",
    "NoLabels",
    "PrecompCaptions",
    "PrefixLabels",
    "collate_skip_none",
    "image_from_bytes",
    "is_image_file",
    "list_images",
    "load_image",
    "make_labels",
    "safe_load_image",
]
