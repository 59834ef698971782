"""Where an index's vectors live and are searched: a backend ranks item ids for a query vector.

Two implementations share one search interface (`search`, `count`); Milvus also writes (its
collection is filled batch by batch and `sync`ed at the end of an index run):

* `faiss` (the default, nothing to start): the FAISS file written beside items.sqlite, rebuilt
  from the stored vectors when the index is published;
* `milvus`: a Milvus collection, through pymilvus, holding each item's vector with its metadata
  (path, scene, pixel window, CRS, lon/lat box and footprint, valid fraction). The URI is a file
  for Milvus Lite (in-process) or `http://host:19530` for a Milvus standalone or cluster; a
  re-index inserts and deletes only the items that changed.

items.sqlite stays the index's catalogue in both cases (what was planned, embedded, failed; the
resumable part), and index.json records the backend so that `search` and `serve` open it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

BACKENDS = ("faiss", "milvus")


class Backend(Protocol):
    kind: str

    def count(self) -> int:
        """Vectors searchable now."""

    def search(self, vector: np.ndarray, n: int, *, exclude: int | None = None, bbox=None) -> list[tuple[int, float]]:
        """Up to n (item id, score) pairs, best first; `bbox` (a `spatial.BBox`) keeps items whose
        footprint meets it, exactly."""


def open_backend(directory: Path, info: dict, store, *, uri: str | None = None) -> Backend:
    """The backend index.json names (FAISS when it names none); `uri` points a Milvus index at
    another address of the same engine (e.g. the server's view of a cluster)."""
    spec = info.get("backend") or {"kind": "faiss"}
    if spec["kind"] == "milvus":
        from priorclip.search.backends.milvus_backend import MilvusBackend

        return MilvusBackend.open({**spec, **({"uri": uri} if uri else {})}, int(info["embed_dim"]), store)
    from priorclip.search.backends.faiss_backend import FaissBackend

    return FaissBackend(directory, info, store)
