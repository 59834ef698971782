"""FAISS structures over L2-normalised vectors (inner product = cosine similarity).

`flat16` (the default) compares the query with every stored vector, kept in float16: a search is
bound by memory bandwidth, so half the bytes is about half the time (and half the RAM), and the
scan is split over the cores, since FAISS runs one query on one thread. Rounding to float16 moves
a cosine by at most ~5e-4, which can only swap near-ties: its recall@10 against float32 is
measured at build time like the approximate indexes'. `flat` is the float32 brute force,
bit-exact and ~3x slower. `hnsw` and `ivf` trade recall for speed on millions of vectors; every
non-float32 index stores its recall@10 against the exact answer in index.json, so nobody has to
guess. `ivfpq` is for archives whose vectors do not fit in RAM: the FAISS file holds only
product-quantised codes (d/8 bytes a vector: 32 bytes for 256-d, a sixteenth of float32), and
the top `refine` x k candidates are re-ranked exactly with their float32 vectors read from
items.sqlite on disk, so the scores returned are exact and only the candidate list is approximate.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from priorclip.errors import ConfigError

INDEX_TYPES = ("flat16", "flat", "hnsw", "ivf", "ivfpq")
DEFAULT_INDEX_TYPE = "flat16"
INDEX_TYPE_HELP = ("flat16 = exhaustive over float16 vectors (default; recall@10 vs float32 reported); "
                   "flat = exhaustive float32, bit-exact; hnsw/ivf = approximate, recall@10 reported; "
                   "ivfpq = compressed codes in RAM (d/8 bytes a vector), exact re-ranking from disk")
IVFPQ_MIN_VECTORS = 10_000  # PQ's 256-centroid codebooks need about 39 x 256 training vectors
# candidates re-ranked exactly: refine x k for k <= IVFPQ_REFINE_DEPTH (at least
# IVFPQ_MIN_CANDIDATES); in a trial on clustered synthetic vectors 10 stayed below recall@10 0.95
# and 30 reached it (docs/SEARCH.md)
IVFPQ_REFINE = 30
IVFPQ_MIN_CANDIDATES = 300
# the factor applies to the first 100 hits; a deeper fetch (a bbox-filtered ranking going down
# the list) adds the same margin of candidates instead of multiplying its depth
IVFPQ_REFINE_DEPTH = 100
# k-means over nlist x 64 training vectors costs ~ nlist^2: 4,096 lists train in minutes where
# 4 sqrt(n) = 12,649 at 10 M would take about an hour on two cores (an estimate); a search probes IVFPQ_NPROBE of them
IVFPQ_MAX_NLIST = 4_096
IVFPQ_NPROBE = 64
PARALLEL_SCAN_MIN = 32_768  # below this a scan takes < 2 ms and threads cost more than they save
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128


def _faiss():
    import faiss

    return faiss


def ivf_nlist(n: int) -> int:
    """About 4*sqrt(n) lists, but at least 39 training points per list (FAISS's own minimum)."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39 or 1))


def build(vectors: np.ndarray, ids: np.ndarray, index_type: str = "flat", *, nlist: int | None = None,
          nprobe: int | None = None, ef_search: int = HNSW_EF_SEARCH, ef_construction: int = HNSW_EF_CONSTRUCTION,
          train_per_list: int = 64, seed: int = 0):
    """Build an index holding `vectors` under the 64-bit `ids`; returns (index, params)."""
    faiss = _faiss()
    if index_type not in INDEX_TYPES:
        raise ConfigError(f"--index-type {index_type!r}: choose one of {', '.join(INDEX_TYPES)}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, d = vectors.shape
    params: dict = {"type": index_type}
    if index_type == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    elif index_type == "flat16":
        index = faiss.IndexIDMap2(faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16,
                                                             faiss.METRIC_INNER_PRODUCT))
    elif index_type == "hnsw":
        inner = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = ef_construction
        inner.hnsw.efSearch = ef_search
        index = faiss.IndexIDMap2(inner)
        params.update(M=HNSW_M, efConstruction=ef_construction, efSearch=ef_search)
    else:
        nlist = nlist or (min(ivf_nlist(n), IVFPQ_MAX_NLIST) if index_type == "ivfpq" else ivf_nlist(n))
        quantizer = faiss.IndexFlatIP(d)
        if index_type == "ivfpq":
            if n < IVFPQ_MIN_VECTORS:
                raise ConfigError(f"--index-type ivfpq needs at least {IVFPQ_MIN_VECTORS:,} vectors to train its "
                                  f"codebooks (this index has {n:,}); flat16 is exact and fast at this size")
            m = _pq_bytes(d)
            # OPQ rotates the vectors so that the m sub-vectors carry equal information: the PQ
            # ranking of text queries (far from the image vectors) improves the most
            inner = faiss.IndexPreTransform(faiss.OPQMatrix(d, m),
                                            faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT))
            params.update(pq_bytes=m, opq=True, refine=IVFPQ_REFINE)
            train_per_list = max(train_per_list, -(-IVFPQ_MIN_VECTORS // nlist))
        else:
            inner = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        train = vectors
        if n > nlist * train_per_list:  # k-means on a sample: minutes instead of hours at 1M+
            rng = np.random.default_rng(seed)
            train = vectors[np.sort(rng.choice(n, nlist * train_per_list, replace=False))]
        if n:
            inner.train(train)
        default = IVFPQ_NPROBE if index_type == "ivfpq" else max(8, nlist // 16)
        ivf = faiss.extract_index_ivf(inner)
        ivf.nprobe = min(nlist, nprobe or default)
        index = inner
        params.update(nlist=nlist, nprobe=ivf.nprobe)
    if n:
        index.add_with_ids(vectors, ids)
    return index, params


def _pq_bytes(d: int) -> int:
    """Sub-quantisers of a PQ code: d/8 (32 for 256-d), rounded down to a divisor of d."""
    m = max(1, d // 8)
    while d % m:
        m -= 1
    return m


def refine_count(params: dict | None, k: int) -> int | None:
    """How many candidates an `ivfpq` search re-ranks for k hits (None: the index is not refined)."""
    if not params or params.get("type") != "ivfpq":
        return None
    refine = int(params.get("refine", IVFPQ_REFINE))
    return max(k + (refine - 1) * min(k, IVFPQ_REFINE_DEPTH), IVFPQ_MIN_CANDIDATES)


def rerank(q: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of the candidates `ids` (their float32 `vectors`), best k first."""
    scores = np.asarray(vectors, np.float32) @ np.asarray(q, np.float32).reshape(-1)
    order = np.lexsort((ids, -scores))[:k]
    return scores[order], np.asarray(ids)[order]


class ParallelScan:
    """An exhaustive float16 index split into one slice per thread (FAISS `IndexShards`).

    FAISS scans a single query on a single core; a user waits for exactly one query, so the
    slices are scanned at once and their top-k merged. Same codes, same scores as the whole
    index; ids are mapped back through the IndexIDMap2's table.
    """

    def __init__(self, index, parts: int):
        faiss = _faiss()
        inner = faiss.downcast_index(index.index)
        n, self.d = int(inner.ntotal), int(inner.d)
        codes = faiss.vector_to_array(inner.codes).reshape(n, inner.sa_code_size())
        self.labels = faiss.vector_to_array(index.id_map).astype(np.int64)
        self.shards = faiss.IndexShards(self.d, True, True)  # threaded, ids = position in the concatenation
        self._slices = []  # IndexShards does not own its shards
        for bounds in np.array_split(np.arange(n), parts):
            part = faiss.IndexScalarQuantizer(self.d, inner.sq.qtype, inner.metric_type)
            part.add_sa_codes(np.ascontiguousarray(codes[bounds[0]:bounds[-1] + 1]))
            self._slices.append(part)
            self.shards.add_shard(part)

    @property
    def ntotal(self) -> int:
        return int(self.shards.ntotal)

    def search(self, q: np.ndarray, k: int):
        scores, pos = self.shards.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return scores, np.where(pos >= 0, self.labels[np.clip(pos, 0, None)], -1)


def for_search(index, params: dict | None = None, threads: int | None = None):
    """The index as queries should use it: search-time settings re-applied and, for a large
    `flat16`, the scan split over `threads` (default: FAISS's OpenMP thread count)."""
    if params:
        apply_params(index, params)
    threads = threads or _faiss().omp_get_max_threads()
    if (params or {}).get("type") == "flat16" and threads > 1 and index.ntotal >= PARALLEL_SCAN_MIN:
        return ParallelScan(index, threads)
    return index


def apply_params(index, params: dict) -> None:
    """Re-apply search-time settings after loading (they are not all serialised by FAISS)."""
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if params.get("type") == "hnsw" and hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(params.get("efSearch", HNSW_EF_SEARCH))
    if params.get("type") in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = int(params.get("nprobe", 8))


def exact_topk(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Ground-truth ids by brute force, in chunks so 1M x 512 stays within memory."""
    faiss = _faiss()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, idx = flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return np.where(idx >= 0, ids[np.clip(idx, 0, None)], -1)


def recall_at_k(index, vectors: np.ndarray, ids: np.ndarray, k: int = 10, n_queries: int = 500,
                seed: int = 0, params: dict | None = None) -> float | None:
    """Mean fraction of the exact top-k that `index` returns, with a sample of the indexed
    vectors as queries (image-to-image search over the archive); an `ivfpq` index (`params`) is
    measured as it is searched, with its exact re-ranking."""
    n = len(ids)
    if n == 0:
        return None
    k = min(k, n)
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(n, min(n_queries, n), replace=False)]
    truth = exact_topk(q, vectors, ids, k)
    fetch = refine_count(params, k)
    if fetch is None:
        _, got = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
    else:
        row = {int(i): r for r, i in enumerate(ids)}
        _, cand = index.search(np.ascontiguousarray(q, dtype=np.float32), min(fetch, n))
        got = []
        for qi, c in zip(q, cand):
            c = c[c >= 0]
            got.append(rerank(qi, c, vectors[[row[int(i)] for i in c]], k)[1])
    hits = [len(set(t.tolist()) & set(g.tolist())) for t, g in zip(truth, got)]
    return float(np.mean(hits) / k)


def load(path: str | Path, params: dict | None = None, mmap: bool = False):
    faiss = _faiss()
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    index = faiss.read_index(str(path), flags)
    if mmap:  # a memory-mapped index is searched in place, not copied into slices
        if params:
            apply_params(index, params)
        return index
    return for_search(index, params)


def timed_search(index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    t = time.perf_counter()
    scores, ids = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
    return scores, ids, time.perf_counter() - t
