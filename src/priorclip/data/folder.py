"""A plain folder of images (recursive, sorted by relative path), without captions.

For indexing an archive and for zero-shot classification. Files with image extensions are
included; `labels="folder"` (the default) takes each image's parent folder as its scene, so the
usual `root/<class>/<image>` layout gives class labels, and top-level files get -1.

    ImageFolder("/data/AID", labels="folder")          # root/<class>/*.jpg
    ImageFolder("/archive/tiles", labels="none", bands=(4, 3, 2))
"""
from __future__ import annotations

import os
from pathlib import Path

from priorclip.data.base import CaptionDataset
from priorclip.data.images import is_image_file
from priorclip.errors import DataError


def list_images(root, recursive: bool = True) -> list[str]:
    """Image files under `root` as sorted POSIX relative paths (hidden files and folders skipped)."""
    root = Path(root)
    out = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(root)
            out.extend((rel / f).as_posix() for f in filenames if not f.startswith(".") and is_image_file(f))
    else:
        out = [e.name for e in os.scandir(root) if e.is_file() and not e.name.startswith(".") and is_image_file(e.name)]
    return sorted(out)


class ImageFolder(CaptionDataset):
    default_mode = "images"

    def __init__(self, root, split=None, transforms=None, *, labels="folder", recursive=True, **kwargs):
        self.recursive = recursive
        kwargs.setdefault("images_root", root)
        super().__init__(root, split, transforms, labels=labels, **kwargs)

    def _required_files(self):
        return [self.root]

    def _load_records(self):
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder")
        files = list_images(self.root, self.recursive)
        if not files:
            raise DataError(f"{self.root}: no image files found (extensions: jpg, png, tif, ...)")
        return [(f, []) for f in files]
