"""Image-text retrieval recall (R@K, mR) with exact, declared handling of tied scores.

Protocol of the remote-sensing retrieval papers (AMFMN, GaLR, SWAN, PriorCLIP): an image query
(i2t) is a hit at K when ANY of its ground-truth captions is among the top K texts; a text query
(t2i) is a hit when its image is among the top K images. mR is the mean of the six recalls (never
rSum). Every caption is a separate query and a separate item, duplicates included, as in the
published numbers.

Why tie rules: identical caption strings (UCM, Sydney and RSICD repeat many) give identical
embeddings, hence exactly equal scores, and where a wrong caption ties with the best correct one
the rank depends only on the order in which items happen to be listed. Each rule says what happens
then (see docs/EVALUATION.md, "Tie rules"):

- "expected" (default): the exact expectation of R@K under a uniformly random order of tied items,
  in closed form. The number no longer depends on caption-file order or sort implementation;
  "optimistic" / "pessimistic" give the bounds to show beside it.
- "optimistic" / "pessimistic": ties counted for / against the ground truth.
- "index": ties broken by lower item index first (deterministic; like a stable sort).
- "released": the authors' evaluation code, `np.argsort(scores)[::-1]` per query with numpy's
  default (unstable) sort; reproduces published tables but depends on the numpy version.

Ties are detected on the scores exactly as given (float equality, no upcast, no tolerance): that
is what any sort sees. Only rows where a wrong item ties with the best positive are ambiguous, so
every rule is computed from three counts per query (items strictly above the best positive, and
positives / wrong items at its score level) without sorting; "released" sorts only the ambiguous
rows that can change a hit, with exactly the call the released code makes.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from priorclip.errors import ConfigError, DataError

__all__ = [
    "MetricInputError",
    "TIE_RULES",
    "POSITIVE_RULES",
    "normalize_caption",
    "similarity_matrix",
    "recall_metrics",
    "recall_report",
    "tie_statistics",
    "format_recall_table",
]

TIE_RULES = ("expected", "optimistic", "pessimistic", "index", "released")
POSITIVE_RULES = ("index", "caption-text")

# Rows per chunk are chosen so a chunk holds about this many scores (bounded temporary memory).
_CHUNK_ELEMENTS = 1 << 21


class MetricInputError(DataError, ValueError):
    """Scores or caption assignments that cannot be evaluated (shape, range, NaN, missing caption)."""


# ----------------------------------------------------------------------------------------------
# input handling


def _as_scores(similarity: Any) -> np.ndarray:
    """Scores as a numpy array without recomputing them (bfloat16 -> float32 is exact)."""
    torch = sys.modules.get("torch")  # a tensor implies torch is imported; don't import it (slow)
    if torch is not None and isinstance(similarity, torch.Tensor):
        t = similarity.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16; the widening keeps every value
            t = t.float()
        arr = t.numpy()
    else:
        arr = np.asarray(similarity)
    if arr.ndim != 2:
        raise MetricInputError(
            f"similarity must be a 2-D matrix images x texts, got shape {tuple(arr.shape)}"
        )
    if arr.dtype.kind not in "fiu":
        raise MetricInputError(f"similarity must hold real numbers, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise MetricInputError(f"similarity is empty (shape {tuple(arr.shape)}): nothing to rank")
    if arr.dtype.kind == "f":
        nan = np.isnan(arr)
        if nan.any():
            i, j = np.argwhere(nan)[0]
            raise MetricInputError(
                f"similarity contains {int(nan.sum())} NaN score(s) (first at image {i}, text {j}); "
                "NaN has no rank: check the embeddings (e.g. a zero vector that was normalised)"
            )
    return arr


def _as_text_to_image(text_to_image: Any, n_images: int, n_texts: int) -> np.ndarray:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(text_to_image, torch.Tensor):
        text_to_image = text_to_image.detach().cpu().numpy()
    t2i = np.asarray(text_to_image)
    if t2i.ndim != 1:
        raise MetricInputError(
            f"text_to_image must be 1-D (one image index per text), got shape {tuple(t2i.shape)}"
        )
    if len(t2i) != n_texts:
        raise MetricInputError(
            f"text_to_image has {len(t2i)} entries but similarity has {n_texts} texts (columns); "
            "similarity must be images x texts"
        )
    if t2i.dtype.kind == "f" and np.all(np.isfinite(t2i)) and np.all(t2i == np.round(t2i)):
        t2i = t2i.astype(np.int64)
    if t2i.dtype.kind not in "iu":
        raise MetricInputError(f"text_to_image must hold integer image indices, got dtype {t2i.dtype}")
    t2i = t2i.astype(np.int64, copy=False)
    bad = np.flatnonzero((t2i < 0) | (t2i >= n_images))
    if len(bad):
        raise MetricInputError(
            f"text_to_image[{bad[0]}] = {t2i[bad[0]]} is out of range: similarity has {n_images} "
            f"images (valid 0..{n_images - 1}); {len(bad)} text(s) out of range"
        )
    counts = np.bincount(t2i, minlength=n_images)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        shown = ", ".join(str(i) for i in empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise MetricInputError(
            f"{len(empty)} image(s) have no caption in text_to_image (image index {shown}); "
            "an image query without a ground-truth caption cannot be scored: drop the image row"
        )
    return t2i


def _as_ks(ks: Sequence[int]) -> tuple[int, ...]:
    if isinstance(ks, (int, np.integer)):
        ks = (int(ks),)
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"ks must be positive integers, got {list(ks)!r}")
        if int(k) not in out:
            out.append(int(k))
    if not out:
        raise ConfigError("ks is empty: give at least one K, e.g. ks=(1, 5, 10)")
    return tuple(out)


_SPACE = re.compile(r"\s+")
_TRAILING_PERIOD = re.compile(r"\s*\.\s*$")


def normalize_caption(text: str) -> str:
    """Lower-case, collapse whitespace, drop a trailing period: "A  plane ." == "a plane"."""
    text = _SPACE.sub(" ", str(text).strip().lower())
    return _TRAILING_PERIOD.sub("", text).strip()


def _caption_ids(captions: Sequence[str] | None, n_texts: int) -> np.ndarray:
    if captions is None:
        raise ConfigError('positives="caption-text" needs captions (one string per text)')
    captions = list(captions)
    if len(captions) != n_texts:
        raise MetricInputError(
            f"captions has {len(captions)} entries but similarity has {n_texts} texts (columns)"
        )
    ids: dict[str, int] = {}
    return np.fromiter(
        (ids.setdefault(normalize_caption(c), len(ids)) for c in captions), dtype=np.int64, count=n_texts
    )


def _positive_matrix(t2i: np.ndarray, n_images: int, caption_ids: np.ndarray | None) -> np.ndarray:
    """Boolean images x texts: is text j a correct answer for image i."""
    n_texts = len(t2i)
    if caption_ids is None:
        pos = np.zeros((n_images, n_texts), dtype=bool)
        pos[t2i, np.arange(n_texts)] = True
        return pos
    has_text = np.zeros((n_images, int(caption_ids.max()) + 1), dtype=bool)
    has_text[t2i, caption_ids] = True
    return has_text[:, caption_ids]


# ----------------------------------------------------------------------------------------------
# core: three counts per query


@dataclass
class _Direction:
    """Per-query counts around the best-scoring positive of one retrieval direction."""

    scores: np.ndarray  # queries x items, C-contiguous
    positive: np.ndarray  # queries x items, bool
    above: np.ndarray  # items strictly above the best positive score (all wrong)
    tied_pos: np.ndarray  # positives at the best positive score (>= 1)
    tied_neg: np.ndarray  # wrong items at that score
    neg_before: np.ndarray  # wrong items at that score with a lower index than the first positive there
    released_rank: np.ndarray | None = None  # 0-based rank under the released order (cache)
    released_max_k: int = 0  # ranks are exact where they are below this

    @property
    def n(self) -> int:
        return len(self.above)


def _direction(scores: np.ndarray, positive: np.ndarray) -> _Direction:
    scores = np.ascontiguousarray(scores)
    positive = np.ascontiguousarray(positive)
    n_q, n_items = scores.shape
    above = np.empty(n_q, dtype=np.int64)
    tied_pos = np.empty(n_q, dtype=np.int64)
    tied_neg = np.empty(n_q, dtype=np.int64)
    neg_before = np.empty(n_q, dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // n_items)
    cols = np.arange(n_items)
    # -inf never beats a real score; a positive scored -inf still gets the right counts.
    floor = np.array(-np.inf if scores.dtype.kind == "f" else np.iinfo(scores.dtype).min, scores.dtype)
    for a in range(0, n_q, step):
        s, p = scores[a : a + step], positive[a : a + step]
        top = np.where(p, s, floor).max(axis=1, keepdims=True)
        above[a : a + step] = np.count_nonzero(s > top, axis=1)
        eq = s == top
        eq_pos = eq & p
        n_eq = np.count_nonzero(eq, axis=1)
        tied_pos[a : a + step] = np.count_nonzero(eq_pos, axis=1)
        tied_neg[a : a + step] = n_eq - tied_pos[a : a + step]
        first_pos = eq_pos.argmax(axis=1)
        neg_before[a : a + step] = np.count_nonzero(eq & (cols < first_pos[:, None]), axis=1)
    return _Direction(scores, positive, above, tied_pos, tied_neg, neg_before)


def _released_ranks(d: _Direction, max_k: int) -> np.ndarray:
    """0-based rank of the first positive in `np.argsort(row)[::-1]` (the authors' code).

    Without a wrong item tied at the best positive's level every correct sort puts it right after
    the `above` items; elsewhere the unstable sort's order of the whole row decides, so those rows
    (only the ones that can still be a hit at max_k) get exactly the released call.
    """
    if d.released_rank is not None and d.released_max_k >= max_k:
        return d.released_rank
    rank = d.above.copy()
    need = np.flatnonzero((d.tied_neg > 0) & (d.above < max_k))
    for q in need:
        inds = np.argsort(d.scores[q])[::-1]
        rank[q] = np.flatnonzero(d.positive[q][inds])[0]
    d.released_rank, d.released_max_k = rank, max_k
    return rank


def _expected_hit(d: _Direction, k: int) -> np.ndarray:
    """P(best positive within top k) under a uniform random order of tied items, exactly.

    The first positive of the tied level (m positives, w wrong items, uniformly shuffled) lies
    within its first j = k - above places unless all j are wrong: 1 - C(w, j) / C(m + w, j),
    with the ratio as the product of (w - i) / (m + w - i), i < j (each factor in [0, 1]).
    """
    j = k - d.above
    m, w = d.tied_pos, d.tied_neg
    ratio = np.ones(d.n, dtype=np.float64)
    # the factor at i = w is 0, so rows with j > w reach probability 1 after w + 1 steps
    steps = min(k, int(w.max()) + 1) if d.n else 0
    for i in range(steps):
        factor = np.maximum(w - i, 0) / np.maximum(m + w - i, 1)
        ratio = np.where(i < j, ratio * factor, ratio)
    return np.where(j <= 0, 0.0, 1.0 - ratio)


def _hits(d: _Direction, rule: str, k: int, max_k: int) -> np.ndarray:
    if rule == "expected":
        return _expected_hit(d, k)
    if rule == "optimistic":
        return d.above < k
    if rule == "pessimistic":
        return d.above + d.tied_neg < k
    if rule == "index":
        return d.above + d.neg_before < k
    if rule == "released":
        return _released_ranks(d, max_k) < k
    raise ConfigError(f"unknown tie rule {rule!r}; choose one of {', '.join(TIE_RULES)}")


def _metrics(i2t: _Direction, t2i: _Direction, rule: str, ks: tuple[int, ...]) -> dict[str, float]:
    max_k = max(ks)
    out: dict[str, float] = {}
    for name, d in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * float(np.mean(_hits(d, rule, k, max_k)))
    out["mr"] = float(np.mean(list(out.values())))
    return out


def _prepare(similarity, text_to_image, positives, captions):
    if positives not in POSITIVE_RULES:
        raise ConfigError(f"unknown positives rule {positives!r}; choose one of {', '.join(POSITIVE_RULES)}")
    scores = _as_scores(similarity)
    n_images, n_texts = scores.shape
    t2i = _as_text_to_image(text_to_image, n_images, n_texts)
    caption_ids = _caption_ids(captions, n_texts) if positives == "caption-text" else None
    pos = _positive_matrix(t2i, n_images, caption_ids)
    return scores, t2i, pos


def _directions(scores: np.ndarray, pos: np.ndarray) -> tuple[_Direction, _Direction]:
    return _direction(scores, pos), _direction(scores.T, pos.T)


# ----------------------------------------------------------------------------------------------
# public API


def _row_ids(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row index of each distinct row, id of every row), by exact bytes (-0.0 as 0.0)."""
    rows = np.ascontiguousarray(rows) + np.zeros((), rows.dtype)
    seen: dict[bytes, int] = {}
    ids = np.fromiter((seen.setdefault(r.tobytes(), len(seen)) for r in rows), dtype=np.int64, count=len(rows))
    first = np.zeros(len(seen), dtype=np.int64)
    first[ids[::-1]] = np.arange(len(rows) - 1, -1, -1)
    return first, ids


def similarity_matrix(image_embeddings, text_embeddings):
    """images x texts dot products in which identical embeddings get bit-identical scores.

    A plain matmul does not guarantee that: BLAS kernels round a column differently depending on
    where it sits (blocking, tails), so two copies of one caption embedding can differ in the
    last bit and turn an exact tie into an arbitrary order. Each distinct row is multiplied once
    and the result gathered. numpy in -> numpy out; torch in -> torch out (same device). Encode
    each distinct caption string once as well: batch composition can also change embeddings.
    """
    torch = sys.modules.get("torch")
    is_torch = torch is not None and isinstance(image_embeddings, torch.Tensor)
    if is_torch != (torch is not None and isinstance(text_embeddings, torch.Tensor)):
        raise MetricInputError("image_embeddings and text_embeddings must both be numpy arrays or both torch tensors")
    if image_embeddings.ndim != 2 or text_embeddings.ndim != 2 or image_embeddings.shape[1] != text_embeddings.shape[1]:
        raise MetricInputError(
            f"embeddings must be 2-D with the same width, got images {tuple(image_embeddings.shape)} "
            f"and texts {tuple(text_embeddings.shape)}"
        )
    if is_torch:
        img_np = image_embeddings.detach().float().cpu().numpy()
        txt_np = text_embeddings.detach().float().cpu().numpy()
    else:
        img_np, txt_np = np.asarray(image_embeddings), np.asarray(text_embeddings)
    img_first, img_ids = _row_ids(img_np)
    txt_first, txt_ids = _row_ids(txt_np)
    if is_torch:
        dev = image_embeddings.device
        img_first_t, txt_first_t = torch.from_numpy(img_first).to(dev), torch.from_numpy(txt_first).to(dev)
        scores = image_embeddings[img_first_t] @ text_embeddings[txt_first_t].T
        return scores[torch.from_numpy(img_ids).to(dev)][:, torch.from_numpy(txt_ids).to(dev)]
    scores = img_np[img_first] @ txt_np[txt_first].T
    return scores[img_ids][:, txt_ids]



def recall_metrics(
    similarity,
    text_to_image,
    ks: Sequence[int] = (1, 5, 10),
    ties: str = "expected",
    positives: str = "index",
    captions: Sequence[str] | None = None,
) -> dict[str, float]:
    """R@K for both directions and mR, in percent: keys i2t_r{k}..., t2i_r{k}..., mr.

    similarity: images x texts scores (numpy array or torch tensor); text_to_image: the image
    index of every text. ties: how equal scores are ordered (see module doc); the default
    "expected" is the exact mean over all orders of tied items, so a number does not change when
    the caption file is reordered; report "optimistic"/"pessimistic" beside it (recall_report).
    positives="caption-text" (with captions) also counts a caption as correct for every image
    that has a caption with the same normalised text, and every such image as correct for it.
    """
    if ties not in TIE_RULES:
        raise ConfigError(f"unknown tie rule {ties!r}; choose one of {', '.join(TIE_RULES)}")
    ks = _as_ks(ks)
    scores, _, pos = _prepare(similarity, text_to_image, positives, captions)
    i2t, t2i = _directions(scores, pos)
    return _metrics(i2t, t2i, ties, ks)


def _duplicate_lines(m: np.ndarray) -> np.ndarray:
    """Rows of `m` that equal (float ==) another row exactly. Grouped by a few columns, then checked."""
    n, width = m.shape
    dup = np.zeros(n, dtype=bool)
    if n < 2:
        return dup
    key_cols = np.linspace(0, width - 1, num=min(width, 4)).astype(np.int64)
    key = m[:, key_cols] + np.zeros((), m.dtype)  # -0.0 -> 0.0 so the byte-wise grouping sees them equal
    _, group, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    cand = np.flatnonzero(counts[group] > 1)
    order = cand[np.argsort(group[cand], kind="stable")]
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    for members in np.split(order, bounds):
        while len(members) > 1:
            same = np.all(m[members] == m[members[0]], axis=1)
            if same.sum() > 1:
                dup[members[same]] = True
            members = members[~same]
    return dup


def _tie_stats(scores, t2i, i2t_d: _Direction, t2i_d: _Direction, captions) -> dict[str, Any]:
    n_images, n_texts = scores.shape
    stats: dict[str, Any] = {
        "n_images": n_images,
        "n_texts": n_texts,
        # texts / images the model cannot tell apart (identical score column / row)
        "tied_caption_pct": 100.0 * float(np.mean(_duplicate_lines(t2i_d.scores))),
        "tied_image_pct": 100.0 * float(np.mean(_duplicate_lines(i2t_d.scores))),
        # queries whose rank of the best correct item depends on how ties are ordered
        "i2t_ambiguous_query_pct": 100.0 * float(np.mean(i2t_d.tied_neg > 0)),
        "t2i_ambiguous_query_pct": 100.0 * float(np.mean(t2i_d.tied_neg > 0)),
    }
    if captions is not None:
        captions = list(captions)
        if len(captions) != n_texts:
            raise MetricInputError(
                f"captions has {len(captions)} entries but similarity has {n_texts} texts (columns)"
            )
        ids = _caption_ids(captions, n_texts)
        counts = np.bincount(ids)
        n_owner = np.zeros(len(counts), dtype=np.int64)
        pairs = np.unique(np.stack([ids, t2i]), axis=1)
        np.add.at(n_owner, pairs[0], 1)
        stats["duplicate_caption_pct"] = 100.0 * float(np.mean(counts[ids] > 1))
        stats["shared_caption_pct"] = 100.0 * float(np.mean(n_owner[ids] > 1))
    return stats


def tie_statistics(similarity, text_to_image, captions: Sequence[str] | None = None) -> dict[str, Any]:
    """How much ties matter for these scores (all shares in percent).

    tied_caption_pct: captions whose score column equals another caption's exactly (the model
    cannot tell them apart, usually identical text); tied_image_pct: the same for images;
    {i2t,t2i}_ambiguous_query_pct: queries where a wrong item ties with the best correct one, so
    the tie rule decides their rank. With captions also duplicate_caption_pct (normalised text
    occurs more than once) and shared_caption_pct (text also belongs to another image).
    """
    scores, t2i, pos = _prepare(similarity, text_to_image, "index", None)
    i2t_d, t2i_d = _directions(scores, pos)
    return _tie_stats(scores, t2i, i2t_d, t2i_d, captions)


def recall_report(
    similarity,
    text_to_image,
    captions: Sequence[str] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    positives: str = "index",
) -> dict[str, Any]:
    """Every tie rule at once, plus tie statistics and the numpy version (and the SIMD level its
    argsort dispatches to) behind "released"."""
    ks = _as_ks(ks)
    scores, t2i, pos = _prepare(similarity, text_to_image, positives, captions)
    i2t_d, t2i_d = _directions(scores, pos)
    report: dict[str, Any] = {rule: _metrics(i2t_d, t2i_d, rule, ks) for rule in TIE_RULES}
    if positives == "index":
        stats_i2t, stats_t2i = i2t_d, t2i_d
    else:  # ambiguity statistics always refer to the standard (index) relevance
        pos_index = _positive_matrix(t2i, scores.shape[0], None)
        stats_i2t, stats_t2i = _directions(scores, pos_index)
    report["ties"] = _tie_stats(scores, t2i, stats_i2t, stats_t2i, captions)
    report["positives"] = positives
    report["numpy_version"] = np.__version__
    report["numpy_sort_simd"] = _numpy_sort_simd()
    return report


def _numpy_sort_simd() -> str:
    """Instruction set numpy's argsort can use here: since numpy 2.0 it dispatches to
    x86-simd-sort (AVX-512 or AVX2), whose tie order differs from the scalar introsort."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # pragma: no cover - private numpy module moved
        return "unknown"
    for name in ("AVX512_SKX", "AVX2"):
        if features.get(name):
            return name
    return "baseline"


def format_recall_table(report: dict[str, Any], rule: str = "expected") -> str:
    """Markdown table in the papers' column order; [pessimistic–optimistic] where they differ."""
    if rule not in report:
        raise ConfigError(f"report has no rule {rule!r}; it has {', '.join(r for r in TIE_RULES if r in report)}")
    main = report[rule]
    lo, hi = report.get("pessimistic"), report.get("optimistic")
    ks = [int(key[len("i2t_r") :]) for key in main if key.startswith("i2t_r")]
    keys = [f"i2t_r{k}" for k in ks] + [f"t2i_r{k}" for k in ks] + ["mr"]
    header = [f"i2t R@{ks[0]}"] + [f"R@{k}" for k in ks[1:]] + [f"t2i R@{ks[0]}"] + [f"R@{k}" for k in ks[1:]] + ["mR"]
    cells = []
    for key in keys:
        cell = f"{main[key]:.2f}"
        if lo is not None and hi is not None and abs(hi[key] - lo[key]) > 0.05:
            cell += f" [{lo[key]:.2f}–{hi[key]:.2f}]"
        cells.append(cell)
    return "\n".join(
        [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---:" for _ in header) + "|",
            "| " + " | ".join(cells) + " |",
        ]
    )
