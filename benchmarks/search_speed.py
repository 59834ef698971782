"""Query latency of the search index over many stored vectors (not a test: prints numbers).

Stores N random L2-normalised D-dim vectors (default 100k and 1M, D=512) and times single-query
searches (what one user of `priorclip serve` waits for), exact and approximate:

  flat  exact inner product (IndexFlatIP), the default of `priorclip index`
  hnsw  graph search (IndexHNSWFlat, M=32, efConstruction 40 here); only with --hnsw-max N, as
        its build is slow on two cores (~200 s for 100k random 512-d vectors; far more at 1M)
  ivf   inverted lists (IndexIVFFlat), nlist lists, nprobe probed per query

Recall@10 is measured against the exact answer for the same queries. Uniform random vectors are
the hardest case for approximate search (no cluster structure); `--data clustered` draws from a
mixture of Gaussians, closer to real image embeddings. Targets (two cores): p50 < 10 ms exact at
100k, p50 < 5 ms approximate at 1M.

    .venv/bin/python benchmarks/search_speed.py                 # default run, ~2-3 minutes
    .venv/bin/python benchmarks/search_speed.py --sizes 100000 --data clustered
    .venv/bin/python benchmarks/search_speed.py --sizes 100000 --hnsw-max 100000   # with HNSW (slow build)
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from priorclip.search import ann


def make_vectors(n: int, d: int, kind: str, rng, centers=None) -> np.ndarray:
    out = np.empty((n, d), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        if kind == "clustered":
            x = centers[rng.integers(0, len(centers), m)] + rng.standard_normal((m, d), dtype=np.float32) * 0.6
        else:
            x = rng.standard_normal((m, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:start + m] = x
    return out


def latencies(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    index.search(queries[:5], k)  # warm up
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = index.search(q[None], k)
        times.append(time.perf_counter() - t)
        found.append(ids[0])
    return np.array(times) * 1000, np.array(found)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated numbers of stored vectors")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="FAISS/OpenMP threads (default 2)")
    p.add_argument("--data", choices=["random", "clustered"], default="random")
    p.add_argument("--hnsw-max", type=int, default=0,
                   help="build HNSW only up to this many vectors (default 0: skipped, since building it "
                        "over 100k random 512-d vectors took ~200 s on two busy cores; try 100000)")
    p.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    p.add_argument("--nprobe", default="8,32", help="IVF probes to time (comma-separated)")
    p.add_argument("--ef-search", default="64,256", help="HNSW efSearch values to time")
    p.add_argument("--ef-construction", type=int, default=40,
                   help="HNSW build effort (the indexer uses 80; 40 keeps this run short)")
    args = p.parse_args(argv)

    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((256, args.dim), dtype=np.float32) if args.data == "clustered" else None
    print(f"faiss {faiss.__version__}, {args.threads} threads, dim {args.dim}, {args.data} unit vectors, "
          f"{args.queries} single queries, k={args.k}")
    print(f"{'N':>9} {'index':<26} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>9}")
    for n in (int(s) for s in args.sizes.split(",")):
        t = time.perf_counter()
        x = make_vectors(n, args.dim, args.data, rng, centers)
        q = make_vectors(args.queries, args.dim, args.data, rng, centers)
        ids = np.arange(n, dtype=np.int64)
        gen = time.perf_counter() - t

        t = time.perf_counter()
        flat, _ = ann.build(x, ids, "flat")
        build_s = time.perf_counter() - t
        ms, truth = latencies(flat, q, args.k)
        print(f"{n:>9} {'flat (exact)':<26} {build_s:>8.1f} {np.percentile(ms, 50):>8.2f} "
              f"{np.percentile(ms, 99):>8.2f} {1.0:>9.3f}   (data {gen:.1f} s)", flush=True)
        del flat

        if n <= args.hnsw_max:
            t = time.perf_counter()
            hnsw, _ = ann.build(x, ids, "hnsw", ef_construction=args.ef_construction)
            build_s = time.perf_counter() - t
            inner = faiss.downcast_index(hnsw.index)
            for ef in (int(v) for v in args.ef_search.split(",")):
                inner.hnsw.efSearch = ef
                ms, found = latencies(hnsw, q, args.k)
                print(f"{n:>9} {f'hnsw efC={args.ef_construction} efS={ef}':<26} {build_s:>8.1f} {np.percentile(ms, 50):>8.2f} "
                      f"{np.percentile(ms, 99):>8.2f} {recall(found, truth):>9.3f}", flush=True)
            del hnsw

        nlist = min(args.nlist, max(1, n // 39))
        t = time.perf_counter()
        ivf, _ = ann.build(x, ids, "ivf", nlist=nlist, train_per_list=48)
        build_s = time.perf_counter() - t
        for nprobe in (int(v) for v in args.nprobe.split(",")):
            ivf.nprobe = nprobe
            ms, found = latencies(ivf, q, args.k)
            print(f"{n:>9} {f'ivf nlist={nlist} nprobe={nprobe}':<26} {build_s:>8.1f} {np.percentile(ms, 50):>8.2f} "
                  f"{np.percentile(ms, 99):>8.2f} {recall(found, truth):>9.3f}", flush=True)
        del ivf, x
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
