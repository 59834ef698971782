"""Pluggable scene-label sources: where an image's scene class comes from, if anywhere.

Retrieval benchmarks have no labels of their own, but the scene class is useful for zero-shot
classification, per-class error analysis and class-balanced sampling. Datasets name it in three
ways: a filename prefix (RSITMD `boat_0.tif`), a side table (UCM `labels.csv`), or a parent folder
(`AID/Airport/airport_1.jpg`). A source maps filenames to scene names or None (no label);
datasets turn names into integer ids over `classes` (-1 = no label).

`make_labels(spec)` accepts a source object or a string: "prefix", "csv:PATH", "folder", "none".
"""
from __future__ import annotations

import csv
import os
from pathlib import Path, PurePath
from typing import Sequence

from priorclip.errors import ConfigError, DataError, DatasetNotFoundError


class LabelSource:
    """Base class. `name_of(filename)` -> scene name or None; `classes(filenames)` -> sorted names."""

    def name_of(self, filename: str) -> str | None:
        raise NotImplementedError

    def classes(self, filenames: Sequence[str]) -> list[str]:
        """Class list for a dataset made of `filenames`: sorted unique names (overridden by fixed lists)."""
        return sorted({n for n in (self.name_of(f) for f in filenames) if n is not None})

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoLabels(LabelSource):
    """Every image is unlabelled (-1)."""

    def name_of(self, filename: str) -> str | None:
        return None

    def classes(self, filenames) -> list[str]:
        return []


class PrefixLabels(LabelSource):
    """Scene = file-name part before the first underscore: `boat_0.tif` -> "boat".

    Names without an underscore (`00001.jpg`) or with an all-digit prefix (`2019_06_01.tif`) have
    no label. Pass `classes=[...]` to fix the class list (so train and test splits agree on ids even
    if one lacks a class); names outside it then get no label.
    """

    def __init__(self, classes: Sequence[str] | None = None, lower: bool = True):
        self.fixed = list(classes) if classes is not None else None
        self.lower = lower

    def name_of(self, filename: str) -> str | None:
        stem = PurePath(str(filename).replace("\\", "/")).name
        if "_" not in stem:
            return None
        prefix = stem.split("_", 1)[0].strip()
        if not prefix or prefix.isdigit():
            return None
        prefix = prefix.lower() if self.lower else prefix
        if self.fixed is not None and prefix not in self.fixed:
            return None
        return prefix

    def classes(self, filenames) -> list[str]:
        return list(self.fixed) if self.fixed is not None else super().classes(filenames)

    def __repr__(self) -> str:
        return "PrefixLabels()" if self.fixed is None else f"PrefixLabels(classes={self.fixed!r})"


class CsvLabels(LabelSource):
    """Labels from a `filename,scene` CSV (header row required; e.g. UCM `labels.csv`).

    Files are matched by full relative name first, then by base name, then by stem (so a table
    written for `12.tif` also labels the re-encoded `12.jpg`). `classes` are all scenes in the
    table, so every split of a dataset gets the same ids.
    """

    def __init__(self, path: str | os.PathLike, filename_column: str = "filename", label_column: str = "scene"):
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetNotFoundError(f"{self.path}: label CSV not found (expected a '{filename_column},{label_column}' table)")
        self._by_name: dict[str, str] = {}
        self._by_base: dict[str, str] = {}
        self._by_stem: dict[str, str] = {}
        with open(self.path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            if filename_column not in cols or label_column not in cols:
                raise DataError(
                    f"{self.path}: label CSV needs columns '{filename_column}' and '{label_column}', found {cols}"
                )
            for row in reader:
                name, scene = (row[filename_column] or "").strip(), (row[label_column] or "").strip()
                if not name or not scene:
                    continue
                p = PurePath(name.replace("\\", "/"))
                self._by_name[str(p)] = scene
                self._by_base.setdefault(p.name, scene)
                self._by_stem.setdefault(p.stem, scene)
        if not self._by_name:
            raise DataError(f"{self.path}: label CSV has no rows")
        self._classes = sorted(set(self._by_name.values()))

    def name_of(self, filename: str) -> str | None:
        p = PurePath(str(filename).replace("\\", "/"))
        return self._by_name.get(str(p)) or self._by_base.get(p.name) or self._by_stem.get(p.stem)

    def classes(self, filenames) -> list[str]:
        return list(self._classes)

    def __repr__(self) -> str:
        return f"CsvLabels({str(self.path)!r})"


class FolderLabels(LabelSource):
    """Scene = name of the folder holding the file (`Airport/a_1.jpg` -> "Airport"); top-level files: none."""

    def name_of(self, filename: str) -> str | None:
        parent = PurePath(str(filename).replace("\\", "/")).parent.name
        return parent or None


def make_labels(spec: "LabelSource | str | None") -> LabelSource:
    """Label source from an object or a string spec: "prefix", "csv:PATH", "folder", "none" (or None)."""
    if spec is None:
        return NoLabels()
    if isinstance(spec, LabelSource):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"labels: expected a label source or a string, got {type(spec).__name__}")
    s = spec.strip()
    key = s.lower()
    if key in ("none", ""):
        return NoLabels()
    if key == "prefix":
        return PrefixLabels()
    if key == "folder":
        return FolderLabels()
    if key.startswith("csv:"):
        return CsvLabels(s[4:])
    raise ConfigError(f"labels: unknown label source {spec!r}; use 'prefix', 'csv:PATH', 'folder' or 'none'")
