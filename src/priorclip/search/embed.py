"""Batched embedding with parallel decoding.

A torch DataLoader decodes items in worker processes while the model runs in the main process.
A decoding error never stops the run: the worker returns the error text instead of a tensor and
the item is recorded as failed. An item whose valid fraction (the file's nodata, mask, alpha) is
below `min_valid`, or zero, is not transformed or embedded, only recorded with its fraction.
Each batch is committed to SQLite before the next one starts, so a killed run keeps everything
up to the last finished batch.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from priorclip.data.bands import RgbBands
from priorclip.search.sources import _short, open_raster, read_tile, strip_path


def keeps(valid_fraction: float, min_valid: float) -> bool:
    """Whether an item with this share of valid pixels is embedded: never with none at all."""
    return valid_fraction > 0 and valid_fraction >= min_valid


class ItemDataset(Dataset):
    """Pending items -> (id, tensor or None, error or None, valid fraction or None); a tensor and
    an error both None mean "below min_valid". Scenes stay open per worker so consecutive tiles
    of one scene do not reopen the file."""

    def __init__(self, items: list[dict], transform: Callable, min_valid: float = 0.0):
        self.items = items
        self.transform = transform
        self.min_valid = min_valid
        self._open: dict = {}
        self._pid = None

    def _raster(self, path: str):
        if self._pid != os.getpid():  # never reuse handles inherited through fork
            self._open, self._pid = {}, os.getpid()
        ds = self._open.get(path)
        if ds is None:
            for old in list(self._open.values()):
                old.close()
            self._open = {path: open_raster(path)}
            ds = self._open[path]
        return ds

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        it = self.items[i]
        try:
            ds = self._raster(it["path"]) if it["window"] is not None else None
            read = read_tile(it["path"], it["window"], it["stretch"], ds=ds,
                             bands=RgbBands.from_dict(it.get("rgb")))
            if not keeps(read.valid_fraction, self.min_valid):
                return it["id"], None, None, read.valid_fraction
            return it["id"], self.transform(read.image), None, read.valid_fraction
        except Exception as exc:  # reported per item, the run goes on
            return it["id"], None, strip_path(_short(exc), it["path"]), None


def _collate(batch):
    ok = [(i, t, v) for i, t, e, v in batch if t is not None]
    failed = [(i, e) for i, t, e, v in batch if e is not None]
    nodata = [(i, v) for i, t, e, v in batch if t is None and e is None]
    tensors = torch.stack([t for _, t, _ in ok]) if ok else None
    return [i for i, _, _ in ok], tensors, failed, [v for _, _, v in ok], nodata


def embed_items(encoder, items: list[dict], commit: Callable, *, batch_size: int = 64, workers: int = 0,
                progress: bool = True, desc: str = "embedding", min_valid: float = 0.0) -> dict:
    """Embed `items`, calling `commit(ids, vectors, failures, valid=, nodata=)` after every batch."""
    stats = {"embedded": 0, "failed": 0, "nodata": 0, "seconds": 0.0}
    if not items:
        return stats
    loader = DataLoader(ItemDataset(items, encoder.transform, min_valid), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="img", dynamic_ncols=True, smoothing=0.1)
    start = time.perf_counter()
    try:
        for ids, tensors, failed, valid, nodata in loader:
            vectors = encoder.embed_images(tensors) if tensors is not None else np.zeros((0, encoder.embed_dim), np.float32)
            commit(ids, vectors, failed, valid=valid, nodata=nodata)
            stats["embedded"] += len(ids)
            stats["failed"] += len(failed)
            stats["nodata"] += len(nodata)
            if bar is not None:
                bar.update(len(ids) + len(failed) + len(nodata))
                if failed:
                    bar.set_postfix(failed=stats["failed"])
    finally:
        if bar is not None:
            bar.close()
        stats["seconds"] = time.perf_counter() - start
    return stats
