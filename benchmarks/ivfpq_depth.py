"""How deep must `ivfpq` re-rank? Where its recall goes on the archive of real embeddings.

The archive of `search_archive.py` (real UCM view embeddings, then derived near-duplicates up to
`--size`) indexed as `--index-type ivfpq` builds it. For image and text queries this measures
which share of the exact top 10 lies in the probed lists' PQ ranking down to depth 10, 300, 1,000
and 3,000 (nprobe 32/64/128: is the loss probing or ranking?), and the recall@10 when the PQ
candidates are re-ranked from an in-RAM scalar-quantised copy (8 and 4 bits a dimension) instead of
the float32 vectors on disk, and, for `ivfpq-sq8`, which share of the exact top 10 lies in the
8-bit ranking's top k + 50 / 100 / 200 (the rows it reads from disk and ranks exactly: its recall).
Recall only, no timings (search_speed.py --archive times the index).

    python benchmarks/ivfpq_depth.py --vectors runs/embeddings/ucm_views.npz --size 10000000 --work runs/diag

`--work` keeps the archive vectors and the trained index, so a re-run skips the two slow parts.
Writes benchmarks/results_ivfpq_depth.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEPTHS = (10, 300, 1_000, 3_000)
SHORTLISTS = (50, 100, 200)  # ivfpq-sq8: rows read exactly beyond k
NPROBES = (32, 64, 128)


def share_found(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def main(argv=None) -> int:
    import faiss

    import search_archive as sa
    from priorclip.search import ann

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", required=True, help="embed_views.py npz of real model embeddings")
    ap.add_argument("--size", type=int, default=10_000_000, help="archive size (derived vectors beyond the real ones)")
    ap.add_argument("--work", default="runs/ivfpq_depth", help="keeps the archive vectors and the trained index")
    ap.add_argument("--json", default=str(HERE / "results_ivfpq_depth.json"))
    args = ap.parse_args(argv)
    work, n = Path(args.work), args.size
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    data = sa.load_vectors(args.vectors, 256, rng)
    target = sa.nearest_cosine(data["base"], rng)
    path = work / f"vectors_{n}.npy"
    if path.exists():
        vectors = np.load(path, mmap_mode="r")
    else:
        vectors, _ = sa.archive_vectors(data["base"], n, rng, target, path)
    ids = np.arange(n, dtype=np.int64)
    queries = {"image": data["image_q"], "text": data["text_q"]}
    truth = {name: ann.exact_topk(q, vectors, ids, 10) for name, q in queries.items()}
    index_path = work / f"ivfpq_{n}.faiss"
    if index_path.exists():
        index, params = faiss.read_index(str(index_path)), json.loads(index_path.with_suffix(".json").read_text())
    else:
        t = time.perf_counter()
        index, params = ann.build(vectors, ids, "ivfpq")
        print(f"ivfpq built in {time.perf_counter() - t:.0f} s: {params}", flush=True)
        faiss.write_index(index, str(index_path))
        index_path.with_suffix(".json").write_text(json.dumps(params))
    res = {"size": n, "real": min(n, len(data["base"])), "source": data["source"], "target_cos": target,
           "index": params, "queries": {k: len(v) for k, v in queries.items()}, "pq_depth": [], "sq_rerank": []}
    candidates = {}
    for nprobe in NPROBES:
        faiss.extract_index_ivf(index).nprobe = nprobe
        for name, q in queries.items():
            _, cand = index.search(np.ascontiguousarray(q, np.float32), max(DEPTHS))
            candidates[(nprobe, name)] = cand
            row = {"nprobe": nprobe, "queries": name,
                   **{f"in_top_{d}": round(share_found(cand[:, :d], truth[name]), 4) for d in DEPTHS}}
            res["pq_depth"].append(row)
            print(row, flush=True)
    for qtype in ("QT_8bit", "QT_4bit"):
        sq = faiss.IndexScalarQuantizer(vectors.shape[1], getattr(faiss.ScalarQuantizer, qtype),
                                        faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(2).choice(n, min(n, 200_000), replace=False)  # same with or without --work
        sq.train(np.asarray(vectors[np.sort(sample)]))
        for start in range(0, n, 500_000):
            sq.add(np.ascontiguousarray(vectors[start:start + 500_000], np.float32))
        for name, q in queries.items():
            cand = candidates[(64, name)]
            for depth in DEPTHS[1:]:
                ranked = []
                for qi, ci in zip(q, cand[:, :depth]):
                    ci = ci[ci >= 0]  # ids are row numbers
                    ranked.append(ci[np.argsort(-(sq.reconstruct_batch(ci) @ qi), kind="stable")[:10 + max(SHORTLISTS)]])
                row = {"codes": qtype, "ram_mb": round(sq.sa_code_size() * n / 2 ** 20), "nprobe": 64,
                       "queries": name, "pq_depth": depth,
                       "recall_at_10": round(share_found([r[:10] for r in ranked], truth[name]), 4),
                       **{f"in_top_k+{m}": round(share_found([r[:10 + m] for r in ranked], truth[name]), 4)
                          for m in SHORTLISTS}}
                res["sq_rerank"].append(row)
                print(row, flush=True)
        del sq
    tmp = Path(args.json).with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
