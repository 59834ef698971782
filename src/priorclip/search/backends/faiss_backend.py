"""The embedded backend: a FAISS file beside items.sqlite (see `search.ann` for the index types)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from priorclip.errors import DataError
from priorclip.search import ann
from priorclip.search.store import FAISS_NAME

# A bbox holding at most this many items is ranked exactly from their stored vectors; a larger
# one filters the ANN ranking, looking as far down it as needed.
EXACT_FILTER_LIMIT = 50_000


class FaissBackend:
    kind = "faiss"

    def __init__(self, directory: Path, info: dict, store):
        faiss_file = Path(directory) / info.get("faiss", {}).get("file", FAISS_NAME)
        if not faiss_file.is_file():
            raise DataError(f"{faiss_file} not found: rebuild the index with `priorclip index`")
        self.params = info.get("faiss") or {}
        self.ann = ann.load(faiss_file, self.params)
        self.store = store
        self.dim = int(info["embed_dim"])

    def count(self) -> int:
        return int(self.ann.ntotal)

    def search(self, vector: np.ndarray, n: int, *, exclude: int | None = None, bbox=None) -> list[tuple[int, float]]:
        q = np.ascontiguousarray(np.asarray(vector, np.float32).reshape(1, self.dim))
        if bbox is None:
            return self._ranked(q, n, exclude)
        allowed = self.store.ids_in_bbox(bbox)
        if len(allowed) <= EXACT_FILTER_LIMIT:
            # a small area: score its items exactly from their stored vectors
            ids, vecs = self.store.vectors_of([i for i in allowed if i != exclude], self.dim)
            scores, ids = ann.rerank(q[0], ids, vecs, n)
            return [(int(i), float(s)) for i, s in zip(ids, scores)]
        return self._ranked(q, n, exclude, set(allowed))

    def _ranked(self, q: np.ndarray, n: int, exclude: int | None, allowed: set[int] | None = None):
        """The ANN ranking without `exclude` (and inside `allowed`), fetched as deep as needed."""
        total = max(self.count(), 1)
        want = n + (1 if exclude is not None else 0)
        if allowed is not None:  # expect the area's share of the ranking
            want = int(want * total / max(len(allowed), 1)) + 1
        fetch = min(want, total)
        while True:
            scores, ids = self._search(q, fetch)
            found = [(int(i), float(s)) for i, s in zip(ids, scores)
                     if i >= 0 and i != exclude and (allowed is None or int(i) in allowed)]
            if len(found) >= n or fetch >= total:
                return found[:n]
            fetch = min(total, 2 * fetch)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's top k; for `ivfpq`, refine x k compressed candidates re-ranked exactly with
        their stored float32 vectors."""
        candidates = ann.refine_count(self.params, k)
        if candidates is None:
            scores, ids = self.ann.search(q, k)
            return scores[0], ids[0]
        _, cand = self.ann.search(q, min(candidates, self.count()))
        ids, vecs = self.store.vectors_of([int(i) for i in cand[0] if i >= 0], self.dim)
        return ann.rerank(q[0], ids, vecs, k)
