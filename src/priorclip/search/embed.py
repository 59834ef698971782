"""Batched embedding with parallel decoding.

A torch DataLoader decodes items in worker processes while the model runs in the main process.
A decoding error never stops the run: the worker returns the error text instead of a tensor and
the item is recorded as failed. Each batch is committed to SQLite before the next one starts, so
a killed run keeps everything up to the last finished batch.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from priorclip.search.sources import _short, open_raster, read_item, strip_path


class ItemDataset(Dataset):
    """Pending items -> (id, tensor or None, error or None). Scenes stay open per worker so
    consecutive tiles of one scene do not reopen the file."""

    def __init__(self, items: list[dict], transform: Callable):
        self.items = items
        self.transform = transform
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
            image = read_item(it["path"], it["window"], it["stretch"], ds=ds)
            return it["id"], self.transform(image), None
        except Exception as exc:  # reported per item, the run goes on
            return it["id"], None, strip_path(_short(exc), it["path"])


def _collate(batch):
    ok = [(i, t) for i, t, e in batch if e is None]
    failed = [(i, e) for i, t, e in batch if e is not None]
    ids = [i for i, _ in ok]
    tensors = torch.stack([t for _, t in ok]) if ok else None
    return ids, tensors, failed


def embed_items(encoder, items: list[dict], commit: Callable, *, batch_size: int = 64, workers: int = 0,
                progress: bool = True, desc: str = "embedding") -> dict:
    """Embed `items`, calling `commit(ids, vectors, failures)` after every batch."""
    stats = {"embedded": 0, "failed": 0, "seconds": 0.0}
    if not items:
        return stats
    loader = DataLoader(ItemDataset(items, encoder.transform), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="img", dynamic_ncols=True, smoothing=0.1)
    start = time.perf_counter()
    try:
        for ids, tensors, failed in loader:
            vectors = encoder.embed_images(tensors) if tensors is not None else np.zeros((0, encoder.embed_dim), np.float32)
            commit(ids, vectors, failed)
            stats["embedded"] += len(ids)
            stats["failed"] += len(failed)
            if bar is not None:
                bar.update(len(ids) + len(failed))
                if failed:
                    bar.set_postfix(failed=stats["failed"])
    finally:
        if bar is not None:
            bar.close()
        stats["seconds"] = time.perf_counter() - start
    return stats
