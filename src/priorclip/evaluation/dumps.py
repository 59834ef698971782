"""Per-query retrieval dumps for error analysis: for every query, what came back and where the
first correct item landed.

Recall tables say how often a model fails; these records say on which queries and against which
items (often a near-identical caption of another image, or a wrong image of the same scene class).
`priorclip evaluate --dump PATH.jsonl` writes one record per line.

Ordering is the `index` tie rule of `priorclip.evaluation.metrics` (higher score first, equal
scores by lower item index), so `rank` agrees with the "index" recall: a query is a hit at K
exactly when `rank <= K`. `tie_group` says whether that rank was decided by a tie: it counts the
items (correct or not) scored exactly like the first correct one, so `tie_group > 1` with a wrong
item among them means another tie rule can give a different rank.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from priorclip.errors import ConfigError
from priorclip.evaluation.metrics import MetricInputError, _as_scores, _as_text_to_image, _direction

__all__ = ["retrieval_dumps"]


def _top_k(row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best items of `row`: score descending, equal scores by lower index."""
    if k < len(row):
        # keep every item scoring at least the k-th best, so index order decides at the boundary
        kth = np.partition(row, len(row) - k)[len(row) - k]
        cand = np.flatnonzero(row >= kth)
    else:
        cand = np.arange(len(row))
    order = np.lexsort((cand, -row[cand].astype(np.float64)))
    return cand[order[:k]]


def retrieval_dumps(
    similarity,
    text_to_image,
    captions: Sequence[str],
    filenames: Sequence[str],
    k: int = 10,
) -> Iterator[dict[str, Any]]:
    """Yield one dict per query: every image query ("i2t", in image order), then every caption
    query ("t2i", in caption order).

    similarity: images x texts scores (numpy or torch); text_to_image[j]: the image of caption j;
    captions / filenames: the caption text of every column and the file name of every row.

    Keys: direction, query_index, query (filename for i2t, caption for t2i), ground_truth (caption
    ids for i2t, [image id] for t2i), top (the K best items: id, score, text or filename,
    correct), rank (1-based position of the best-ranked correct item under the index rule) and
    tie_group (items scored exactly like it, itself included).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"dump top-k must be a positive integer, got {k!r}")
    scores = _as_scores(similarity)
    n_images, n_texts = scores.shape
    t2i = _as_text_to_image(text_to_image, n_images, n_texts)
    captions, filenames = list(captions), list(filenames)
    if len(captions) != n_texts:
        raise MetricInputError(f"captions has {len(captions)} entries but similarity has {n_texts} texts (columns)")
    if len(filenames) != n_images:
        raise MetricInputError(f"filenames has {len(filenames)} entries but similarity has {n_images} images (rows)")
    positive = np.zeros((n_images, n_texts), dtype=bool)
    positive[t2i, np.arange(n_texts)] = True
    image_to_texts = [np.flatnonzero(t2i == i).tolist() for i in range(n_images)]

    sides = (
        ("i2t", scores, positive, filenames, captions, "text"),
        ("t2i", scores.T, positive.T, captions, filenames, "filename"),
    )
    for direction, s, pos, query_names, item_names, item_key in sides:
        counts = _direction(s, pos)
        for q in range(s.shape[0]):
            row = s[q]
            top = _top_k(row, int(k))
            yield {
                "direction": direction,
                "query_index": q,
                "query": query_names[q],
                "ground_truth": image_to_texts[q] if direction == "i2t" else [int(t2i[q])],
                "top": [
                    {"id": int(j), "score": float(row[j]), item_key: item_names[j], "correct": bool(pos[q, j])}
                    for j in top
                ],
                "rank": int(counts.above[q] + counts.neg_before[q]) + 1,
                "tie_group": int(counts.tied_pos[q] + counts.tied_neg[q]),
            }
