"""Query latency of the search index over many stored vectors (not a test: prints numbers).

Stores N L2-normalised D-dim vectors (default 100k and 1M, D=512) and times single-query searches
(what one user of `priorclip serve` waits for) through the same code the index uses
(`priorclip.search.ann.build` + `ann.for_search`):

  flat    float32 brute force (IndexFlatIP): bit-exact, the ground truth for recall
  flat16  brute force over float16 codes, scan split over the cores: the default of `priorclip index`
  ivf     inverted lists (IndexIVFFlat), nlist lists, nprobe probed per query
  hnsw    graph search (IndexHNSWFlat, M=32); only with --hnsw-max N, its build is slow on two cores

Recall@10 is measured against float32 brute force for the same queries. Two data sets, both by
default: `random` (uniform on the sphere) is the worst case for approximate search, since it has no
cluster structure at all; `clustered` (a mixture of 256 Gaussians) is closer to image embeddings
of an archive, where scenes repeat. Targets (two cores): p50 < 10 ms exhaustive at 100k, p50 < 5 ms
approximate at 1M.

    .venv/bin/python benchmarks/search_speed.py                      # ~5 minutes, prints a table
    .venv/bin/python benchmarks/search_speed.py --markdown           # also results_search.json + RESULTS.md
    .venv/bin/python benchmarks/search_speed.py --sizes 100000 --data clustered --hnsw-max 100000

`--archive 1000000,10000000 --vectors runs/embeddings/ucm_views.npz` adds the archive table in the
same run: the index's backends (FAISS flat16 / ivfpq, Milvus Lite) over an items.sqlite catalogue
of tiles, queried by image and by text, with and without a bbox filter; see search_archive.py.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from priorclip.search import ann

HERE = Path(__file__).resolve().parent
SECTION = "## Search latency"


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


def measure(rows: list, n: int, data: str, name: str, index, q, k: int, truth, build_s: float) -> np.ndarray:
    ms, found = latencies(index, q, k)
    row = {"n": n, "data": data, "index": name, "build_s": round(build_s, 2),
           "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
           "recall_at_10": 1.0 if truth is None else round(recall(found, truth), 3)}
    rows.append(row)
    print(f"{n:>9} {data:<9} {name:<28} {row['build_s']:>8.1f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
          f"{row['recall_at_10']:>9.3f}", flush=True)
    return found


def run_size(args, n: int, data: str, rng, rows: list) -> None:
    import faiss

    centers = rng.standard_normal((256, args.dim), dtype=np.float32) if data == "clustered" else None
    x = make_vectors(n, args.dim, data, rng, centers)
    q = make_vectors(args.queries, args.dim, data, rng, centers)
    ids = np.arange(n, dtype=np.int64)

    t = time.perf_counter()
    flat, _ = ann.build(x, ids, "flat")
    truth = measure(rows, n, data, "flat (float32, exact)", flat, q, args.k, None, time.perf_counter() - t)
    del flat

    t = time.perf_counter()
    f16, params = ann.build(x, ids, "flat16")
    build_s = time.perf_counter() - t
    measure(rows, n, data, "flat16 (one thread)", f16, q, args.k, truth, build_s)
    split = ann.for_search(f16, params, threads=args.threads)
    if split is not f16:
        measure(rows, n, data, f"flat16 ({args.threads} threads, default)", split, q, args.k, truth, build_s)
    del f16, split

    if n <= args.hnsw_max:
        t = time.perf_counter()
        hnsw, _ = ann.build(x, ids, "hnsw", ef_construction=args.ef_construction)
        build_s = time.perf_counter() - t
        inner = faiss.downcast_index(hnsw.index)
        for ef in (int(v) for v in args.ef_search.split(",")):
            inner.hnsw.efSearch = ef
            measure(rows, n, data, f"hnsw efC={args.ef_construction} efS={ef}", hnsw, q, args.k, truth, build_s)
        del hnsw

    nlist = min(args.nlist, max(1, n // 39))
    t = time.perf_counter()
    ivf, _ = ann.build(x, ids, "ivf", nlist=nlist, train_per_list=48)
    build_s = time.perf_counter() - t
    for nprobe in (int(v) for v in args.nprobe.split(",")):
        ivf.nprobe = nprobe
        measure(rows, n, data, f"ivf nlist={nlist} nprobe={nprobe}", ivf, q, args.k, truth, build_s)
    del ivf, x


def markdown(res: dict) -> str:
    lines = [
        f"Machine: {res['machine']}, faiss {res['faiss']}, {res['threads']} threads, load average "
        f"{res['loadavg'][0]:.2f} at start; {res['date']}. {res['queries']} single-vector queries "
        f"(k={res['k']}) of dimension {res['dim']}; recall@10 against float32 brute force. "
        "Written by `benchmarks/search_speed.py --markdown`.",
        "",
        "| stored vectors | data | index | build s | p50 ms | p99 ms | recall@10 |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['n']:,} | {r['data']} | {r['index']} | {r['build_s']:.1f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['recall_at_10']:.3f} |")
    lines += ["", "Targets: p50 < 10 ms exhaustive at 100k, p50 < 5 ms approximate at 1M (two cores). A scan "
              "is bound by memory bandwidth: float16 halves the bytes and the split uses both cores, so "
              "`flat16` is the default of `priorclip index`; `flat` (float32) is there for bit-exact scores. "
              "Approximate recall depends on the data: uniform random vectors (no clusters) are the worst case; "
              "the clustered set is closer to an archive's embeddings, where scenes repeat."]
    return "\n".join(lines)


def archive_markdown(res: dict) -> str:
    a = res["archive"]
    done = ", ".join(f"{n:,}" for n in a.get("sizes_done", []))
    lines = [
        f"Machine: {a['machine']}, faiss {a['faiss']}, {a['threads']} threads, load average {a['loadavg'][0]:.2f} "
        f"at start; {a['date']}. Sizes done: {done} (of `--archive {a['sizes']}`)."
        + (" Timed with the machine's other jobs stopped (`--pause`: SIGSTOP while each row's queries ran); "
           "builds and catalogues shared the cores with them, so their seconds are a loaded machine's."
           if a.get("paused_pgids") else ""),
        "",
        f"Archive search through the index's backends (`FaissBackend`, `MilvusBackend` on Milvus Lite "
        f"{a.get('milvus_lite', '?')}), same run. Vectors: {a['source']}; beyond the real ones, derived vectors "
        f"(cosine {a['target_cos']:.3f} to a real view: the median cosine between a view and its nearest other "
        f"view). {a['queries']} image queries (held-out views of test images) and text queries (test captions); "
        f"bbox rows: a city box (~2,000 tiles, ranked exactly) or a region box (5 % of the archive, filtered "
        "ranking). Recall@10 against exact float32 search over the same items. RAM: FAISS, the structure "
        "it reads into memory (its file); Milvus Lite (in-process), the growth of the process's resident memory "
        "from opening the collection to having it filled and loaded. Disk: FAISS, the index directory (items.sqlite, "
        "and for ivfpq its re-rank file: the float32 vectors it re-ranks candidates with, memory-mapped, so "
        "read through the page cache, which holds it unless the row says cold cache: then it is dropped before "
        "every query); Milvus Lite, its database.",
        "",
        "| items (real) | backend, index | queries (timed) | bbox | build s | RAM MB | disk MB | p50 ms | p99 ms | recall@10 |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in a["rows"]:
        lines.append(f"| {r['n']:,} ({r['real']:,}) | {r['backend']} | {r['queries']} ({r['timed']}) | {r['bbox']} | {r['build_s']:.1f} | "
                     f"{r['ram_mb']:,} | {r['disk_mb']:,} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['recall_at_10']:.3f} |")
    return "\n".join(lines)


ARCHIVE_SECTION = "## Archive search at scale"


def _tag(value: str) -> str:
    if value and not all(c.isalnum() or c in "-_" for c in value):
        raise argparse.ArgumentTypeError(f"{value!r}: letters, digits, - and _ only (it names a file)")
    return value


def save_archive(args, res: dict) -> None:
    """The archive table as its own JSON and RESULTS.md section, written after every size."""
    if not args.markdown:
        return
    from results_md import save_results

    tag = args.archive_tag
    save_results(f"results_search_archive{'_' + tag if tag else ''}.json", res["archive"],
                 ARCHIVE_SECTION + (f": {tag}" if tag else ""), archive_markdown(res),
                 "benchmarks/search_speed.py --archive ... --markdown" + (f" --archive-tag {tag}" if tag else ""),
                 markdown=args.results)


def run_archive_sizes(args, res: dict) -> None:
    import search_archive as sa

    rng = np.random.default_rng(1)
    data = sa.load_vectors(args.vectors, args.dim, rng)
    data["target_cos"] = sa.nearest_cosine(data["base"], rng)
    try:
        from importlib.metadata import version

        lite = version("milvus-lite")
    except Exception:
        lite = None
    res["archive"] = {**{k: res[k] for k in ("date", "machine", "faiss", "threads", "loadavg", "k")},
                      "sizes": args.archive, "source": data["source"], "target_cos": data["target_cos"], "queries": len(data["image_q"]),
                      "milvus_lite": lite, "paused_pgids": args.pause, "rows": []}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"\narchive: {data['source']}; derived vectors at cosine {data['target_cos']:.3f} to a real one")
    print(f"{'N':>10} {'backend':<24} {'query':<6} {'bbox':<7} {'build s':>8} {'RAM MB':>7} {'disk MB':>8} "
          f"{'p50 ms':>7} {'p99 ms':>8} {'R@10':>6}")
    sizes = [int(v) for v in args.archive.split(",")]
    for i, n in enumerate(sizes):
        sa.run_archive(args, n, data, rng, res["archive"]["rows"], work)
        res["archive"]["sizes_done"] = sizes[:i + 1]
        save_archive(args, res)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated numbers of stored vectors")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="FAISS/OpenMP threads (default 2)")
    p.add_argument("--data", default="random,clustered", help="random, clustered or both (comma-separated)")
    p.add_argument("--hnsw-max", type=int, default=0,
                   help="build HNSW only up to this many vectors (default 0: skipped, since building it "
                        "over 100k random 512-d vectors took ~200 s on two busy cores; try 100000)")
    p.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    p.add_argument("--nprobe", default="8,32", help="IVF probes to time (comma-separated)")
    p.add_argument("--ef-search", default="64,256", help="HNSW efSearch values to time")
    p.add_argument("--ef-construction", type=int, default=40,
                   help="HNSW build effort (the indexer uses 80; 40 keeps this run short)")
    p.add_argument("--archive", default="", help="also the archive table at these sizes (comma-separated), "
                                                "e.g. 1000000,10000000 (search_archive.py)")
    p.add_argument("--vectors", default=None, help="archive vectors: an embed_views.py npz of real model embeddings "
                                                   "(default: clustered synthetic)")
    p.add_argument("--faiss-types", default="flat16,ivfpq,ivfpq-sq8", help="FAISS index types of the archive table")
    p.add_argument("--ivfpq-nprobe", default="32,64,128", help="ivfpq probes to time (comma-separated; one build)")
    p.add_argument("--ivfpq-candidates", default="1000",
                   help="ivfpq: least candidates re-ranked exactly, values to time (comma-separated; one build)")
    p.add_argument("--sq8-candidates", default="3000",
                   help="ivfpq-sq8: least PQ candidates ranked by the 8-bit copies, values to time (comma-separated)")
    p.add_argument("--sq8-shortlist", default="100",
                   help="ivfpq-sq8: of those, k + this many read from the re-rank file, values to time (comma-separated)")
    p.add_argument("--ivfpq-rerank", default="file",
                   help="ivfpq: where candidates' vectors are read: file (the re-rank file), sqlite (items.sqlite, "
                        "as an index made without it), or both: file,sqlite")
    p.add_argument("--ivfpq-cold", action="store_true",
                   help="also time ivfpq (re-rank file) with that file dropped from the page cache before each query")
    p.add_argument("--row-budget", type=float, default=60.0,
                   help="seconds of queries per archive row (at least 20 queries; slow rows stop early)")
    p.add_argument("--pause", type=lambda v: [int(g) for g in v.split(",") if g], default=[], metavar="PGID[,PGID]",
                   help="archive table: process groups to stop (SIGSTOP) while each row's queries are timed and "
                        "resume after (e.g. a training run's: ps -o pgid= PID), so the timings are an idle "
                        "machine's while the build phases share it; recorded in the JSON")
    p.add_argument("--flat-max", type=int, default=10_000_000, help="largest archive timed with flat16")
    p.add_argument("--milvus-max", type=int, default=1_000_000, help="largest archive put into Milvus Lite")
    p.add_argument("--milvus-types", default="IVF_FLAT", help="Milvus index types of the archive table")
    p.add_argument("--milvus-nlist", type=int, default=1024, help="nlist of a Milvus IVF index")
    p.add_argument("--milvus-nprobe", type=int, default=32, help="nprobe of a Milvus IVF index")
    p.add_argument("--work", default=str(HERE.parent / "runs" / "search_archive"),
                   help="where the archive indexes are written (10 M items: ~12 GB; removed after each size)")
    p.add_argument("--archive-tag", default="", type=_tag,
                   help="a follow-up archive run (e.g. one index type after a change): saved as "
                        "results_search_archive_TAG.json and its own RESULTS.md section, the main table kept")
    p.add_argument("--skip-ann", action="store_true", help="only the archive table")
    p.add_argument("--markdown", action="store_true",
                   help="write benchmarks/results_search.json and the RESULTS.md section")
    p.add_argument("--results", default=None, help="markdown file for the section (default benchmarks/RESULTS.md; "
                                                   "'' for the JSON only)")
    args = p.parse_args(argv)

    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "faiss": faiss.__version__, "threads": args.threads, "loadavg": list(os.getloadavg()),
           "queries": args.queries, "k": args.k, "dim": args.dim, "rows": []}
    print(f"faiss {faiss.__version__}, {args.threads} threads, dim {args.dim}, {args.queries} single queries, k={args.k}")
    print(f"{'N':>9} {'data':<9} {'index':<28} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>9}")
    if not args.skip_ann:
        for n in (int(s) for s in args.sizes.split(",")):
            for data in args.data.split(","):
                run_size(args, n, data, rng, res["rows"])
    if args.archive:
        sys.path.insert(0, str(HERE))
        run_archive_sizes(args, res)
    if args.markdown and res["rows"]:
        sys.path.insert(0, str(HERE))
        from results_md import save_results

        save_results("results_search.json", {k: v for k, v in res.items() if k != "archive"}, SECTION, markdown(res),
                     "benchmarks/search_speed.py --markdown",
                     markdown=args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
