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
the top `refine` x k candidates are re-ranked exactly with their float32 vectors, read from a
memory-mapped file beside it (`RerankFile`; items.sqlite for an index without one), so the scores
returned are exact and only the candidate list is approximate. `ivfpq-sq8` also keeps 8-bit
copies of the vectors in RAM (d bytes a vector): they rank a deeper PQ candidate list cheaply and
only their best ~100 are read from the file, so a query pays for 100 disk reads instead of 1,000
and the PQ ranking can be searched deeper for the same time.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from priorclip.errors import ConfigError
from priorclip.search.store import RERANK_IDS_NAME, RERANK_NAME, SQ8_NAME

INDEX_TYPES = ("flat16", "flat", "hnsw", "ivf", "ivfpq", "ivfpq-sq8")
IVFPQ_TYPES = ("ivfpq", "ivfpq-sq8")
DEFAULT_INDEX_TYPE = "flat16"
INDEX_TYPE_HELP = ("flat16 = exhaustive over float16 vectors (default; recall@10 vs float32 reported); "
                   "flat = exhaustive float32, bit-exact; hnsw/ivf = approximate, recall@10 reported; "
                   "ivfpq = compressed codes in RAM (d/8 bytes a vector), exact re-ranking from disk; "
                   "ivfpq-sq8 = the same + 8-bit vectors in RAM (d bytes a vector) so that far fewer rows are "
                   "read from disk")
IVFPQ_MIN_VECTORS = 10_000  # PQ's 256-centroid codebooks need about 39 x 256 training vectors
# candidates re-ranked exactly: refine x k for k <= IVFPQ_REFINE_DEPTH, at least
# IVFPQ_MIN_CANDIDATES (index.json's faiss.min_candidates overrides it). In a trial on clustered
# synthetic vectors a factor of 10 stayed below recall@10 0.95 and 30 reached it; on the 10 M
# archive of real embeddings the PQ ranking's top 300 held 0.875 of text queries' true top 10,
# its top 1,000 0.968 (benchmarks/ivfpq_depth.py): near-duplicate tiles differ by less than PQ's error
IVFPQ_REFINE = 30
IVFPQ_MIN_CANDIDATES = 1_000
# the factor applies to the first 100 hits; a deeper fetch (a bbox-filtered ranking going down
# the list) adds the same margin of candidates instead of multiplying its depth
IVFPQ_REFINE_DEPTH = 100
# ivfpq-sq8: the PQ ranking's top IVFPQ_SQ8_MIN_CANDIDATES (at least) are scored from the 8-bit
# copies in RAM, and the best k + IVFPQ_SQ8_SHORTLIST of those read from disk and ranked exactly.
# At 10 M real embeddings the PQ top 3,000 held 0.994-1.000 of the true top 10, the top 1,000
# 0.968-0.993 (benchmarks/results_ivfpq_depth.json); 8-bit scores alone put 0.90-0.93 of it in
# their own top 10, so a margin of 100 behind them is read exactly
IVFPQ_SQ8_MIN_CANDIDATES = 3_000
IVFPQ_SQ8_SHORTLIST = 100
IVFPQ_SQ8_TRAIN = 262_144  # vectors sampled to train the 8-bit ranges (min/max a dimension)
# k-means over nlist x 64 training vectors costs ~ nlist^2: 4,096 lists train in minutes where
# 4 sqrt(n) = 12,649 at 10 M would take about an hour on two cores (an estimate); a search probes IVFPQ_NPROBE of them
IVFPQ_MAX_NLIST = 4_096
IVFPQ_NPROBE = 64
IVF_PARALLEL_OVER_LISTS = 1  # FAISS IndexIVF.parallel_mode: threads share one query's lists
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
        nlist = nlist or (min(ivf_nlist(n), IVFPQ_MAX_NLIST) if index_type in IVFPQ_TYPES else ivf_nlist(n))
        quantizer = faiss.IndexFlatIP(d)
        if index_type in IVFPQ_TYPES:
            if n < IVFPQ_MIN_VECTORS:
                raise ConfigError(f"--index-type ivfpq needs at least {IVFPQ_MIN_VECTORS:,} vectors to train its "
                                  f"codebooks (this index has {n:,}); flat16 is exact and fast at this size")
            m = _pq_bytes(d)
            # OPQ rotates the vectors so that the m sub-vectors carry equal information: the PQ
            # ranking of text queries (far from the image vectors) improves the most
            inner = faiss.IndexPreTransform(faiss.OPQMatrix(d, m),
                                            faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT))
            params.update(pq_bytes=m, opq=True, refine=IVFPQ_REFINE)
            if index_type == "ivfpq-sq8":
                params.update(min_candidates=IVFPQ_SQ8_MIN_CANDIDATES, shortlist=IVFPQ_SQ8_SHORTLIST)
            train_per_list = max(train_per_list, -(-IVFPQ_MIN_VECTORS // nlist))
        else:
            inner = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        train = vectors
        if n > nlist * train_per_list:  # k-means on a sample: minutes instead of hours at 1M+
            rng = np.random.default_rng(seed)
            train = vectors[np.sort(rng.choice(n, nlist * train_per_list, replace=False))]
        if n:
            inner.train(train)
        default = IVFPQ_NPROBE if index_type in IVFPQ_TYPES else max(8, nlist // 16)
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
    """How many PQ candidates an `ivfpq` search ranks again for k hits (None: the index is not refined)."""
    if not params or params.get("type") not in IVFPQ_TYPES:
        return None
    refine = int(params.get("refine", IVFPQ_REFINE))
    least = int(params.get("min_candidates", IVFPQ_MIN_CANDIDATES))
    return max(k + (refine - 1) * min(k, IVFPQ_REFINE_DEPTH), least)


def shortlist_count(params: dict | None, k: int) -> int | None:
    """How many of those an `ivfpq-sq8` search reads from disk after ranking them by their 8-bit
    copies (None: every candidate is read)."""
    if not params or not params.get("shortlist"):
        return None
    return k + int(params["shortlist"])


def train_sq8(vectors: np.ndarray, seed: int = 0):
    """FAISS's 8-bit scalar quantiser (a min and a range a dimension) fitted to a sample of `vectors`."""
    faiss = _faiss()
    sq = faiss.ScalarQuantizer(vectors.shape[1], faiss.ScalarQuantizer.QT_8bit)
    rows = np.arange(len(vectors))
    if len(rows) > IVFPQ_SQ8_TRAIN:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), IVFPQ_SQ8_TRAIN, replace=False))
    sq.train(np.ascontiguousarray(vectors[rows], np.float32))
    return sq


def _sq8_from(trained: list, d: int):
    faiss = _faiss()
    sq = faiss.ScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit)
    faiss.copy_array_to_vector(np.asarray(trained, np.float32), sq.trained)
    return sq


def scores_of(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """`rows @ q` for one query's candidates, outside BLAS: a few thousand rows are too few for
    BLAS threads, whose busy-waiting then fights FAISS's OpenMP threads for the cores (a 10 M
    ivfpq-sq8 query took twice as long with both spinning on two cores)."""
    return np.einsum("ij,j->i", np.asarray(rows, np.float32), np.asarray(q, np.float32).reshape(-1))


def rerank(q: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of the candidates `ids` (their float32 `vectors`), best k first."""
    scores = scores_of(vectors, q)
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
    if params.get("type") in ("ivf", *IVFPQ_TYPES):
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = int(params.get("nprobe", 8))
        # Queries come one at a time (CLI, API): FAISS's default splits a batch over its queries,
        # so a single query scans its lists on one core; split over the probed lists instead.
        ivf.parallel_mode = IVF_PARALLEL_OVER_LISTS


def exact_topk(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int, rows: np.ndarray | None = None,
               chunk: int = 262_144) -> np.ndarray:
    """Ground-truth ids (`ids[row]`) of the exact float32 top k by brute force, over all rows of
    `vectors` or only `rows`. Streams `vectors` (an array or a memmap of any size) in chunks, so
    10 M x 256 needs a chunk's memory, not a 10 GB float32 copy."""
    queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, vectors.shape[1])
    ids = np.asarray(ids)
    nq, total = len(queries), len(vectors) if rows is None else len(rows)
    best_s = np.full((nq, k), -np.inf, np.float32)
    best_i = np.full((nq, k), -1, np.int64)
    for start in range(0, total, chunk):
        r = np.arange(start, min(total, start + chunk)) if rows is None else np.asarray(rows[start:start + chunk])
        block = np.asarray(vectors[start:start + chunk] if rows is None else vectors[r], np.float32)
        s = queries @ block.T
        if s.shape[1] > k:  # only each query's k best of the chunk can enter the top k
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            s, cand = np.take_along_axis(s, part, 1), ids[r[part]]
        else:
            cand = np.broadcast_to(ids[r], s.shape)
        all_s, all_i = np.concatenate([best_s, s], 1), np.concatenate([best_i, cand], 1)
        order = np.lexsort((np.where(all_i < 0, np.iinfo(np.int64).max, all_i), -all_s), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)
    return best_i


def recall_at_k(index, vectors: np.ndarray, ids: np.ndarray, k: int = 10, n_queries: int = 500,
                seed: int = 0, params: dict | None = None, rerank_file: "RerankFile | None" = None) -> float | None:
    """Mean fraction of the exact top-k that `index` returns, with a sample of the indexed
    vectors as queries (image-to-image search over the archive); an `ivfpq` index (`params`) is
    measured as it is searched, re-ranked through `rerank_file` (default: `vectors` in RAM)."""
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
        rerank_file = rerank_file or RerankFile.from_arrays(ids, vectors)
        _, cand = index.search(np.ascontiguousarray(q, dtype=np.float32), min(fetch, n))
        got = []
        for qi, c in zip(q, cand):
            found, vecs, _ = rerank_file.vectors_of(c[c >= 0], qi, shortlist_count(params, k))
            got.append(rerank(qi, found, vecs, k)[1])
    hits = [len(set(t.tolist()) & set(g.tolist())) for t, g in zip(truth, got)]
    return float(np.mean(hits) / k)


class RerankFile:
    """The float32 vectors an `ivfpq` search re-ranks, memory-mapped: a query reads its ~1,000
    candidates' rows through the OS page cache, where reading them from items.sqlite took 4-5 ms a
    query more at 1 M (the archive benchmark). Rows not in the page cache are asked for all
    at once (madvise WILLNEED) before they are read, so the disk serves them in parallel instead
    of one page fault after another: 1,000 cold rows took 16-18 ms instead of 0.7-1.0 s in a trial
    on this machine's disk, at ~1.3 ms of system calls when they are cached. With 8-bit copies
    (`codes`, `ivfpq-sq8`, held in RAM) only the candidates they rank best are read."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, codes: np.ndarray | None = None, sq=None):
        import mmap

        self.vectors, self.ids, self.codes, self.sq = vectors, ids, codes, sq
        self._id0, self._row_of = _row_table(ids)
        self._row_bytes = vectors.shape[1] * vectors.itemsize
        self._map = getattr(vectors, "_mmap", None)  # np.memmap's mapping (None: an array in RAM)
        if (self._map is not None and vectors.strides[0] == self._row_bytes
                and hasattr(mmap, "MADV_WILLNEED")):  # not on Windows: rows are then read as they come
            self._row0 = vectors.ctypes.data - np.frombuffer(self._map, np.uint8).ctypes.data  # in the mapping
        else:
            self._map = None

    @classmethod
    def from_arrays(cls, ids: np.ndarray, vectors: np.ndarray, sq=None) -> "RerankFile":
        """In RAM, rows put in id order (for `writers` and for measuring recall at build time);
        with `sq` (`train_sq8`) also the 8-bit codes."""
        ids = np.asarray(ids, np.int64)
        if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
            order = np.argsort(ids, kind="stable")
            ids, vectors = ids[order], np.asarray(vectors)[order]
        codes = None
        if sq is not None:
            codes = np.empty(vectors.shape, np.uint8)
            for start in range(0, len(ids), 262_144):  # in chunks: no float32 copy of the whole archive
                codes[start:start + 262_144] = sq.compute_codes(
                    np.ascontiguousarray(vectors[start:start + 262_144], np.float32))
        return cls(vectors, ids, codes, sq)

    def writers(self) -> tuple[dict, dict]:
        """The files (name -> writer of an open binary file, for `store.publish`) and their
        description for index.json: float32 rows in ascending id order, those ids, and for
        `ivfpq-sq8` the 8-bit codes (their quantiser's ranges kept in the description)."""
        vectors = self.vectors
        files = {RERANK_NAME: lambda fh: np.save(fh, np.asarray(vectors, np.float32)),
                 RERANK_IDS_NAME: lambda fh: np.save(fh, np.asarray(self.ids, np.int64))}
        spec = {"file": RERANK_NAME, "ids": RERANK_IDS_NAME, "count": int(len(self.ids))}
        if self.codes is not None:
            files[SQ8_NAME] = lambda fh: np.save(fh, self.codes)
            spec["sq8"] = {"file": SQ8_NAME, "trained": _faiss().vector_to_array(self.sq.trained).tolist()}
        return files, spec

    @classmethod
    def open(cls, directory: str | Path, spec: dict | None, log=None) -> "RerankFile | None":
        """The index's re-rank file, or None when index.json names none or the files on disk are
        not the ones it names (a run killed while publishing: items.sqlite serves instead). 8-bit
        codes that cannot be used (damaged, or more than the RAM left) are dropped alone: every
        candidate is then read from the file. `log` is told what was dropped and why."""
        if not spec:
            return None
        directory = Path(directory)
        say = log or (lambda _: None)
        try:
            vectors = np.load(directory / spec["file"], mmap_mode="r")
            ids = np.load(directory / spec["ids"], mmap_mode="r")
        except (OSError, ValueError, KeyError) as e:
            problem = f"cannot be read ({e})"
        else:
            problem = None
            if vectors.ndim != 2 or len(vectors) != len(ids) or len(ids) != int(spec.get("count", -1)):
                problem = (f"hold {len(ids):,} ids and {vectors.shape} vectors where index.json says "
                           f"{spec.get('count')}")
        if problem:
            say(f"[search] {directory / spec.get('file', RERANK_NAME)}: the re-rank files {problem}; "
                f"reading vectors from items.sqlite instead (slower): rebuild the index to restore them")
            return None
        codes = sq = None
        if spec.get("sq8"):
            path = directory / spec["sq8"].get("file", SQ8_NAME)
            try:
                codes = np.load(path)  # into RAM: every query ranks its candidates with them
                if codes.shape != vectors.shape or codes.dtype != np.uint8:
                    raise ValueError(f"8-bit codes of shape {codes.shape} ({codes.dtype}) for vectors {vectors.shape}")
                sq = _sq8_from(spec["sq8"]["trained"], vectors.shape[1])
            except (OSError, ValueError, KeyError, MemoryError) as e:
                say(f"[search] {path}: {type(e).__name__}: {e}; searching without the 8-bit copies (every "
                    f"candidate read from {spec['file']}, slower): rebuild the index, or choose --index-type "
                    f"ivfpq where RAM is short")
                codes = sq = None
        return cls(vectors, ids, codes, sq)

    def vectors_of(self, ids, query: np.ndarray | None = None,
                   keep: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids found, their vectors, ids not in the file), in file (= id) order; with 8-bit codes,
        a `query` and `keep`, only the `keep` found ids whose codes score best against `query`."""
        want = np.sort(np.asarray(ids, np.int64).reshape(-1))
        if not len(self.ids) or not len(want):
            return want[:0], np.zeros((0, self.vectors.shape[1]), np.float32), want
        rows, found = self._rows(want)
        rows, found_ids = rows[found], want[found]
        if self.codes is not None and query is not None and keep is not None and len(rows) > keep:
            scores = scores_of(self.sq.decode(self.codes[rows]), query)
            best = np.sort(np.argpartition(-scores, keep - 1)[:keep])  # rows stay ascending
            rows, found_ids = rows[best], found_ids[best]
        self._prefetch(rows)
        return found_ids, np.asarray(self.vectors[rows], np.float32), want[~found]

    def _rows(self, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows of the ascending ids `want`, and which of them the file holds."""
        if self._row_of is not None:
            pos = want - self._id0
            inside = (pos >= 0) & (pos < len(self._row_of))
            rows = np.full(len(want), -1, np.int64)
            rows[inside] = self._row_of[pos[inside]]
            return rows, rows >= 0
        rows = np.minimum(np.searchsorted(self.ids, want), len(self.ids) - 1)  # sorted keys: half the cache misses
        return rows, np.asarray(self.ids[rows]) == want

    def _prefetch(self, rows: np.ndarray) -> None:
        if self._map is None or not len(rows):
            return
        import mmap

        size = self._row_bytes
        for start in (self._row0 + rows * size).tolist():
            page = start - start % mmap.PAGESIZE
            self._map.madvise(mmap.MADV_WILLNEED, page, start + size - page)  # advice: never changes data


def _row_table(ids: np.ndarray) -> tuple[int, np.ndarray | None]:
    """(first id, a table of each id's row, -1 where absent) when the ids are dense enough for
    the table to be no larger than the id column (an archive's ids are consecutive until items
    are removed); otherwise (0, None) and rows are found by binary search. A binary search of a
    query's 3,000 candidates in the 76 MB id column of a 10 M archive missed the CPU caches at
    every step: 4.6 ms a query, against 0.07 ms for one table read each (a profile on this machine)."""
    n = len(ids)
    if not n:
        return 0, None
    first, span = int(ids[0]), int(ids[-1]) - int(ids[0]) + 1
    dtype = np.int32 if n < 2 ** 31 else np.int64
    if span > n * np.dtype(np.int64).itemsize // np.dtype(dtype).itemsize:
        return 0, None
    table = np.full(span, -1, dtype)
    for start in range(0, n, 1 << 22):  # in chunks: a memory-mapped id column is read once
        chunk = np.asarray(ids[start:start + (1 << 22)], np.int64)
        table[chunk - first] = np.arange(start, start + len(chunk), dtype=dtype)
    return first, table


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
