"""The sample interface every dataset class shares (torchgeo style), and the bad-file policy.

Constructor shape: `Dataset(root, split="train", transforms=None, *, mode=..., images_root=...,
labels=..., ...)`. Construction verifies the files (`_verify`) and raises `DatasetNotFoundError`
listing exactly which are missing.

Two views of the same data (`mode`):

* `"pairs"`: one item per caption (flat caption order), for training.
* `"images"`: one item per image, for encoding the gallery at evaluation or indexing time.

`__getitem__` returns a dict:

=============  ==================================================================================
key            value
=============  ==================================================================================
`image`        `transforms(PIL image)` (usually a FloatTensor[3,H,W]); the RGB PIL image if
               `transforms` is None
`caption`      str: this item's caption ("pairs"), or the image's first caption ("images"); ""
               if the dataset has no captions
`captions`     list[str]: all captions of the image
`image_id`     int: index of the image within this dataset split
`caption_id`   int: index of the caption in `all_captions` (-1 in "images" mode)
`filename`     str: the image name as the annotation file writes it
`path`         str: the resolved image file ("" when the dataset has no `images_root`)
`label`        int: scene id into `classes`, or -1 if none
=============  ==================================================================================

Images are resolved under `images_root` (default: `root/images` if that folder exists): first the
annotated relative path, then its base name, then any image file with the same stem (caption files
often say `12.tif` for images distributed as `12.jpg`). Without any `images_root` the dataset is
annotation-only: captions, filenames and labels work, reading an image raises `DataError`.

Bad-file policy (`on_error`): a file that cannot be decoded at `__getitem__` time is logged and
added to `self.bad_files` (a `BadFileReport`; give `bad_files=PATH` to also collect entries from
DataLoader workers in a JSON-lines file). Then

* `"skip"` (default for "pairs"): return the next item in index order whose image reads
  (wrapping around), so an epoch never crashes and the choice is deterministic;
* `"none"` (default for "images"): return None; batch with `collate_skip_none`, which drops Nones,
  and use the batch's `image_id` to see which images were encoded;
* `"raise"`: raise the `DataError`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path, PurePath
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from priorclip.data.images import IMAGE_EXTENSIONS, BadFileReport, _reason, load_image
from priorclip.data.labels import LabelSource, make_labels
from priorclip.errors import ConfigError, DataError, DatasetNotFoundError

log = logging.getLogger(__name__)

MODES = ("pairs", "images")
ON_ERROR = ("skip", "none", "raise")
_MAX_LISTED = 20


def read_utf8(path: Path) -> str:
    """A caption file's text; non-UTF-8 bytes are a DataError naming the line (BOM tolerated)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text (byte {raw[exc.start]:#04x}); "
                        "re-save the file as UTF-8") from None


def _list_missing(what: str, missing: Sequence[str], hint: str = "") -> DatasetNotFoundError:
    """One-line error naming the missing files (all of them up to 20; the full list is `.missing`)."""
    shown = ", ".join(str(m) for m in missing[:_MAX_LISTED])
    more = f" ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    exc = DatasetNotFoundError(f"{what}: {len(missing)} file(s) missing: {shown}{more}" + (f". {hint}" if hint else ""))
    exc.missing = list(missing)
    return exc


class CaptionDataset(Dataset):
    """Base class: subclasses implement `_required_files()` and `_load_records()`.

    `_load_records()` returns `[(filename, [caption, ...]), ...]` in dataset order.
    """

    default_mode = "pairs"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transforms: Callable | None = None,
        *,
        mode: str | None = None,
        images_root: str | os.PathLike | None = None,
        labels: LabelSource | str | None = None,
        bands: Sequence[int] | None = None,
        max_side: int | None = None,
        on_error: str | None = None,
        bad_files: BadFileReport | str | os.PathLike | None = None,
    ):
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.mode = mode or self.default_mode
        if self.mode not in MODES:
            raise ConfigError(f"mode: expected one of {MODES}, got {self.mode!r}")
        self.on_error = on_error or ("skip" if self.mode == "pairs" else "none")
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"on_error: expected one of {ON_ERROR}, got {self.on_error!r}")
        self.bands = bands
        self.max_side = max_side
        self.label_source = make_labels(labels)
        if isinstance(bad_files, BadFileReport):
            self.bad_files = bad_files
        else:
            self.bad_files = BadFileReport(bad_files)
        self.images_root = Path(images_root) if images_root is not None else self._default_images_root()

        self._verify()
        records = self._load_records()
        self._filenames: list[str] = [f for f, _ in records]
        self._captions: list[list[str]] = [list(c) for _, c in records]
        self._text_to_image: list[int] = [i for i, caps in enumerate(self._captions) for _ in caps]
        self._flat: list[str] = [c for caps in self._captions for c in caps]
        self._warn_empty_captions()
        self._classes = self.label_source.classes(self._filenames)
        index = {c: i for i, c in enumerate(self._classes)}
        self._labels = [index.get(self.label_source.name_of(f), -1) for f in self._filenames]
        self._paths = self._resolve_images() if self.images_root is not None else None
        if self.mode == "pairs" and not self._flat:
            raise ConfigError(f"{self._describe()}: has no captions; use mode='images'")
        self._bad_images: set[int] = set()

    # ---- to implement -------------------------------------------------------------------------

    def _required_files(self) -> list[Path]:
        """Annotation files that must exist."""
        return []

    def _load_records(self) -> list[tuple[str, list[str]]]:
        raise NotImplementedError

    def _default_images_root(self) -> Path | None:
        base = self.root if self.root.is_dir() else self.root.parent
        cand = base / "images"
        return cand if cand.is_dir() else None

    def _warn_empty_captions(self) -> None:
        """Empty captions are kept (caption ids must match the published files: RSITMD's train split
        has 20) but named in one warning, since they train on nothing but [CLS] [SEP]."""
        empty = [(self._filenames[i], j) for i, caps in enumerate(self._captions) for j, c in enumerate(caps) if not c]
        self.empty_captions = empty
        if empty:
            shown = ", ".join(f"{f!r} caption {j + 1}" for f, j in empty[:5])
            more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
            log.warning("%s: %d empty caption(s): %s%s", self._describe(), len(empty), shown, more)

    # ---- verification -------------------------------------------------------------------------

    def _verify(self) -> None:
        """Raise DatasetNotFoundError listing each missing annotation file (and a missing images_root)."""
        missing = [str(p) for p in self._required_files() if not Path(p).exists()]
        if self.images_root is not None and not self.images_root.is_dir():
            missing.append(f"{self.images_root} (images_root folder)")
        if missing:
            raise _list_missing(self._describe(), missing)

    def _resolve_images(self) -> list[str]:
        root = self.images_root
        by_name: dict[str, str] | None = None
        by_stem: dict[str, list[str]] | None = None
        paths, missing = [], []
        for fn in self._filenames:
            rel = PurePath(fn.replace("\\", "/"))
            p = root / rel
            if p.is_file():
                paths.append(str(p))
                continue
            if by_name is None:  # list the folder once, only when direct lookups fail
                by_name, by_stem = {}, {}
                with os.scandir(root) as it:
                    for e in it:
                        if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS:
                            by_name[e.name] = e.path
                            by_stem.setdefault(Path(e.name).stem, []).append(e.path)
            hit = by_name.get(rel.name)
            if hit is None and len(by_stem.get(rel.stem, [])) == 1:
                hit = by_stem[rel.stem][0]
            if hit is None:
                missing.append(str(p))
            paths.append(hit or str(p))
        if missing:
            raise _list_missing(
                f"{self._describe()} images under {root}",
                missing,
                "Point images_root at the folder holding the images (names are matched by relative "
                "path, base name, or stem with any image extension).",
            )
        return paths

    def _describe(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, split={self.split!r})"

    # ---- the sample interface -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._flat) if self.mode == "pairs" else len(self._filenames)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        if self._paths is None:
            raise DataError(
                f"{self._describe()}: annotation-only dataset (no images_root); "
                "pass images_root= pointing at the image folder to read images"
            )
        for attempt in range(n):
            i = (index + attempt) % n
            img = self._text_to_image[i] if self.mode == "pairs" else i
            if img in self._bad_images and self.on_error == "skip":
                continue  # known bad in this process: skip without re-reading
            try:
                return self._sample(i, img)
            except DataError as exc:
                self._bad_images.add(img)
                self.bad_files.add(self._paths[img], _reason(exc, self._paths[img]))
                log.warning("unreadable image in %s: %s", self._describe(), exc)
                if self.on_error == "raise":
                    raise
                if self.on_error == "none":
                    return None
        raise DataError(f"{self._describe()}: no readable image at all ({len(self.bad_files)} bad file(s))")

    def _sample(self, i: int, img: int) -> dict[str, Any]:
        image = load_image(self._paths[img], bands=self.bands, max_side=self.max_side)
        if self.transforms is not None:
            image = self.transforms(image)
        caps = self._captions[img]
        if self.mode == "pairs":
            caption, cid = self._flat[i], i
        else:
            caption, cid = (caps[0] if caps else ""), -1
        return {
            "image": image,
            "caption": caption,
            "captions": list(caps),
            "image_id": img,
            "caption_id": cid,
            "filename": self._filenames[img],
            "path": self._paths[img],
            "label": self._labels[img],
        }

    # ---- whole-dataset views (for evaluation) -------------------------------------------------

    @property
    def images(self) -> list[str]:
        """Image filenames (as annotated), in image-id order."""
        return list(self._filenames)

    @property
    def paths(self) -> list[str] | None:
        """Resolved image files in image-id order (None for an annotation-only dataset)."""
        return None if self._paths is None else list(self._paths)

    @property
    def captions_per_image(self) -> list[int]:
        """Number of captions of each image (e.g. [5, 5, ...] for the standard benchmarks)."""
        return [len(c) for c in self._captions]

    @property
    def all_captions(self) -> list[str]:
        """All captions, flat, grouped by image in image-id order (the order of 'pairs' mode)."""
        return list(self._flat)

    @property
    def text_to_image(self) -> list[int]:
        """For each caption of `all_captions`, the id of its image (the retrieval ground truth)."""
        return list(self._text_to_image)

    @property
    def image_to_text(self) -> list[list[int]]:
        """For each image, the indices of its captions in `all_captions`."""
        out: list[list[int]] = [[] for _ in self._filenames]
        for t, i in enumerate(self._text_to_image):
            out[i].append(t)
        return out

    @property
    def image_captions(self) -> list[list[str]]:
        return [list(c) for c in self._captions]

    @property
    def labels(self) -> list[int]:
        """Scene id of each image (-1 = none)."""
        return list(self._labels)

    @property
    def classes(self) -> list[str]:
        """Scene names (index = label id); [] without a label source."""
        return list(self._classes)

    @property
    def num_images(self) -> int:
        return len(self._filenames)

    @property
    def num_captions(self) -> int:
        return len(self._flat)

    def __repr__(self) -> str:
        return (
            f"{self._describe()}: {self.num_images} images, {self.num_captions} captions, "
            f"mode={self.mode!r}, {len(self._classes)} classes, images_root={self.images_root}"
        )


def collate_skip_none(batch: list[dict | None]) -> dict[str, Any] | None:
    """Collate sample dicts, dropping None items (bad files): tensors are stacked, ints become a
    LongTensor, everything else (str, lists, PIL images) stays a list. Returns None if nothing is left.
    """
    items = [b for b in batch if b is not None]
    if not items:
        return None
    out: dict[str, Any] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], int) and not isinstance(vals[0], bool):
            out[key] = torch.tensor(vals, dtype=torch.long)
        else:
            out[key] = vals
    return out
