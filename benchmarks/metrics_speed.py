"""Time the recall metrics on an RSICD-sized test set (1,093 images x 5,465 texts).

Scores are float32 cosine similarities of noisy random embeddings (R@1 around 10-20 %, like RSICD
results); 12 % of the caption columns are
copies of other columns, as identical captions give identical scores (RSICD: 11.7 % of test
captions are shared with another image). Prints the median wall time of every tie rule, of
recall_report (all rules + tie statistics), and of clip_benchmark's recall on the same matrix.

    .venv/bin/python benchmarks/metrics_speed.py [--repeats 7] [--cb-repeats 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from priorclip.evaluation.metrics import (TIE_RULES, format_recall_table, recall_metrics, recall_report,
                                          similarity_matrix)


def make_embeddings(seed: int = 0, n_images: int = 1093, per_image: int = 5, dim: int = 64, shared: float = 0.12):
    """Unit image and caption embeddings (captions = their image's + noise) and each caption's
    image; `shared` of the captions are copies of other captions, as identical captions get
    identical embeddings (and scores)."""
    rng = np.random.default_rng(seed)
    t2i = np.repeat(np.arange(n_images), per_image)
    img = rng.standard_normal((n_images, dim)).astype(np.float32)
    txt = img[t2i] + 4 * rng.standard_normal((len(t2i), dim)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    n_dup = int(shared * len(t2i))
    dst = rng.choice(len(t2i), n_dup, replace=False)
    txt[dst] = txt[rng.choice(len(t2i), n_dup)]
    return img, txt, t2i


def make_scores(seed: int = 0, n_images: int = 1093, per_image: int = 5, dim: int = 64, shared: float = 0.12):
    img, txt, t2i = make_embeddings(seed, n_images, per_image, dim, shared)
    return similarity_matrix(img, txt), t2i


def clip_benchmark_recall(scores: np.ndarray, t2i: np.ndarray, ks=(1, 5, 10), batch_size: int = 64) -> dict:
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    s = torch.from_numpy(scores).T.contiguous()
    positive = torch.zeros_like(s, dtype=torch.bool)
    positive[torch.arange(len(s)), torch.from_numpy(t2i)] = True
    out = {}
    for k in ks:
        out[f"t2i_r{k}"] = 100 * (batchify(recall_at_k, s, positive, batch_size, "cpu", k=k) > 0).float().mean().item()
        out[f"i2t_r{k}"] = 100 * (batchify(recall_at_k, s.T, positive.T, batch_size, "cpu", k=k) > 0).float().mean().item()
    return out


def median_time(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cb-repeats", type=int, default=1, help="clip_benchmark takes ~10 s a run on 2 cores")
    args = parser.parse_args()

    scores, t2i = make_scores()
    print(f"scores {scores.shape[0]} x {scores.shape[1]} {scores.dtype}; numpy {np.__version__} "
          f"(argsort SIMD: {recall_report(scores[:2, :10], np.array([0] * 5 + [1] * 5))['numpy_sort_simd']}), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} CPUs")
    for rule in TIE_RULES:
        t = median_time(lambda: recall_metrics(scores, t2i, ties=rule), args.repeats)
        print(f"recall_metrics(ties={rule!r:14}) {1000 * t:8.1f} ms")
    t_report = median_time(lambda: recall_report(scores, t2i), args.repeats)
    print(f"recall_report (all rules + ties)   {1000 * t_report:8.1f} ms")
    cb = {}
    t_cb = median_time(lambda: cb.update(clip_benchmark_recall(scores, t2i)), args.cb_repeats, warmup=False)
    print(f"clip_benchmark recall (R@1,5,10)   {1000 * t_cb:8.1f} ms  "
          f"(recall_report / clip_benchmark = {t_report / t_cb:.2f})")

    report = recall_report(scores, t2i)
    print("tie statistics:", {k: round(v, 2) if isinstance(v, float) else v for k, v in report["ties"].items()})
    print(format_recall_table(report))
    print("clip_benchmark:", {k: round(v, 2) for k, v in sorted(cb.items())})


if __name__ == "__main__":
    main()
