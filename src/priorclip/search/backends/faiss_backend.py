"""The embedded backend: a FAISS file beside items.sqlite (see `search.ann` for the index types)."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from priorclip.errors import DataError
from priorclip.search import ann
from priorclip.search.store import FAISS_NAME

_log = logging.getLogger(__name__)

# A bbox is ranked one of two ways. Exactly from its items' stored vectors: the cost grows with the
# items in the box (reading each one's vector and box). Or by filtering the ANN ranking, testing its
# hits against the box as they come: the cost grows with the depth needed, about k x archive /
# items in the box. Per item the two cost about the same (a trial on a 100k archive), so they cross
# near sqrt(k x archive) items, taken with margin as sqrt(30 x archive): 1,700 at 100k, 5,500 at
# 1 M, 17,000 at 10 M; the archive benchmark's bbox rows show the result (search_speed.py --archive).
EXACT_FILTER_FACTOR = 30
EXACT_FILTER_LIMIT: int | None = None  # a fixed limit instead (tests)


def exact_filter_limit(total: int) -> int:
    if EXACT_FILTER_LIMIT is not None:
        return EXACT_FILTER_LIMIT
    return max(1_000, int(math.sqrt(EXACT_FILTER_FACTOR * total)))


FILTER_FIRST_FETCH = 100  # hits of the ANN ranking tested first for a large box
FILTER_SAFETY = 1.5  # the next fetch expects this many times the hits still missing


class FaissBackend:
    kind = "faiss"

    def __init__(self, directory: Path, info: dict, store):
        faiss_file = Path(directory) / info.get("faiss", {}).get("file", FAISS_NAME)
        if not faiss_file.is_file():
            raise DataError(f"{faiss_file} not found: rebuild the index with `priorclip index`")
        self.params = info.get("faiss") or {}
        for key, what in (("min_candidates", "candidates an ivfpq search re-ranks"),
                          ("shortlist", "rows beyond k an ivfpq-sq8 search reads from disk")):
            value = self.params.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise DataError(f"{Path(directory) / 'index.json'}: faiss.{key} must be a whole number >= 1 "
                                f"({what}), not {value!r}; fix it or remove the key")
        self.ann = ann.load(faiss_file, self.params)
        self.rerank = ann.RerankFile.open(directory, self.params.get("rerank"), log=_log.warning)
        self.store = store
        self.dim = int(info["embed_dim"])

    def count(self) -> int:
        return int(self.ann.ntotal)

    def search(self, vector: np.ndarray, n: int, *, exclude: int | None = None, bbox=None) -> list[tuple[int, float]]:
        q = np.ascontiguousarray(np.asarray(vector, np.float32).reshape(1, self.dim))
        if bbox is None:
            return self._ranked(q, n, exclude)
        allowed = self.store.ids_in_bbox(bbox, limit=exact_filter_limit(self.count()))
        if allowed is not None:
            # a small area: score its items exactly from their stored vectors
            ids, vecs = self._vectors_of([i for i in allowed if i != exclude])
            scores, ids = ann.rerank(q[0], ids, vecs, n)
            return [(int(i), float(s)) for i, s in zip(ids, scores)]
        return self._ranked(q, n, exclude, lambda ids: self.store.meeting(bbox, ids))

    def _ranked(self, q: np.ndarray, n: int, exclude: int | None, keep=None):
        """The ANN ranking without `exclude` (and, with `keep`, only the ids it keeps), fetched as
        deep as needed: each deeper fetch is sized from the share of tested hits `keep` kept so
        far (a box holding 0.2 % of the archive needs ~5,000 ranked hits for 10 in it: two or
        three searches rather than seven doublings, each a full scan for flat16)."""
        total = max(self.count(), 1)
        fetch = min(n + (1 if exclude is not None else 0) if keep is None else max(FILTER_FIRST_FETCH, 4 * n), total)
        kept: set[int] = set()
        tested: set[int] = set()
        while True:
            scores, ids = self._search(q, fetch)
            hits = [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0 and i != exclude]
            if keep is not None:  # test only the hits a shallower fetch did not test
                new = [i for i, _ in hits if i not in tested]
                kept.update(keep(new))
                tested.update(new)
                hits = [h for h in hits if h[0] in kept]
            if len(hits) >= n or fetch >= total:
                return hits[:n]
            share = (len(kept) + 0.5) / max(len(tested), 1) if keep is not None else 1.0
            fetch = min(total, max(2 * fetch, math.ceil(FILTER_SAFETY * (n + 1) / share)))

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's top k; for `ivfpq`, refine x k compressed candidates re-ranked exactly with
        their stored float32 vectors."""
        candidates = ann.refine_count(self.params, k)
        if candidates is None:
            scores, ids = self.ann.search(q, k)
            return scores[0], ids[0]
        _, cand = self.ann.search(q, min(candidates, self.count()))
        ids, vecs = self._vectors_of(cand[0][cand[0] >= 0], q[0], ann.shortlist_count(self.params, k))
        return ann.rerank(q[0], ids, vecs, k)

    def _vectors_of(self, ids, query=None, keep=None) -> tuple[np.ndarray, np.ndarray]:
        """Stored float32 vectors of `ids`: from the re-rank file where the index has one (for
        `ivfpq-sq8` only the `keep` its 8-bit copies rank best against `query`), the rest (and
        every id of an index without one) from items.sqlite."""
        if self.rerank is None:
            return self.store.vectors_of(ids, self.dim)
        found, vecs, missing = self.rerank.vectors_of(ids, query, keep)
        if len(missing):
            more_ids, more = self.store.vectors_of(missing.tolist(), self.dim)
            found, vecs = np.concatenate([found, more_ids]), np.concatenate([vecs, more])
        return found, vecs
