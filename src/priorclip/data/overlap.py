"""Train/test leakage check: exact and near-duplicate images across (or within) datasets.

Exact duplicates share the SHA-256 of their file bytes. Near duplicates (re-encoded, resized,
slightly recoloured copies) have perceptual hashes (`imagehash.phash`, 64 bits) within a Hamming
distance `threshold` (default 4 of 64).

Matching is not an all-pairs loop: by the pigeonhole principle two 64-bit hashes within distance t
agree exactly on at least one of t+1 disjoint bit chunks, so hashes are joined chunk by chunk
(sort + searchsorted, vectorised in numpy) and only those candidates get an exact distance
(multi-index hashing). Images are decoded at reduced scale (JPEG draft mode) since phash only
looks at a 32x32 version.

Inputs (`collect_images`) are image folders, a text file listing image paths, or caption files
(Karpathy JSON, precomp folder + split, open_clip CSV) resolved under `images_root`; append
`:SPLIT` to pick a split, e.g. `ucm-captions/dataset.json:train`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from priorclip.data.images import BadFileReport, load_image
from priorclip.errors import DataError, DatasetNotFoundError

log = logging.getLogger(__name__)

HASH_MAX_SIDE = 128  # decode size for hashing; phash itself works on 32x32
MAX_MULTI_INDEX_THRESHOLD = 7


# ---- inputs ------------------------------------------------------------------------------------


def _split_spec(spec: str) -> tuple[Path, str | None]:
    """`PATH[:SPLIT]` -> (path, split); a colon is a split marker only if PATH alone exists."""
    if ":" in spec:
        head, _, tail = spec.rpartition(":")
        if head and tail and "/" not in tail and "\\" not in tail and Path(head).exists():
            return Path(head), tail
    return Path(spec), None


def collect_images(spec: str | os.PathLike, images_root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """Resolve an input spec to `[(name, path), ...]` (see the module docstring for accepted specs)."""
    from priorclip.data.csv_captions import CsvCaptions
    from priorclip.data.folder import ImageFolder
    from priorclip.data.karpathy import KarpathyCaptions
    from priorclip.data.precomp import PrecompCaptions

    path, split = _split_spec(str(spec))
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: not found (expected an image folder, a .json/.csv caption file, a precomp folder:SPLIT or a .txt list)")
    kw = {"mode": "images", "labels": "none"}
    if images_root is not None:
        kw["images_root"] = images_root
    if path.is_dir():
        if split is None:
            ds = ImageFolder(path, labels="none")
        elif (path / f"{split}_filename.txt").exists():
            ds = PrecompCaptions(path, split, **kw)
        else:
            ds = KarpathyCaptions(path, split, **kw)
    elif path.suffix.lower() == ".json":
        ds = KarpathyCaptions(path, split or "all", **kw)
    elif path.suffix.lower() == ".csv":
        ds = CsvCaptions(path, split or "train", **kw)
    elif path.suffix.lower() == ".txt":
        base = Path(images_root) if images_root is not None else path.parent
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        out = [(n, str(Path(n) if Path(n).is_absolute() else base / n)) for n in names]
        missing = [p for _, p in out if not Path(p).is_file()]
        if missing:
            raise DatasetNotFoundError(f"{path}: {len(missing)} listed image(s) missing, e.g. {missing[:5]}")
        return out
    else:
        raise DataError(f"{path}: unsupported input; use an image folder, .json, .csv, .txt or a precomp folder:SPLIT")
    if ds.paths is None:
        raise DataError(f"{spec}: caption file without images; pass --images-root (images_root=) pointing at its images")
    return list(zip(ds.images, ds.paths))


# ---- hashing -----------------------------------------------------------------------------------


def _hash_one(path: str) -> tuple[str, int | None, str | None]:
    """(sha256 hex, phash as int or None, error or None)."""
    import imagehash

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return "", None, f"cannot read file ({exc.strerror or exc})"
    sha = hashlib.sha256(data).hexdigest()
    try:
        img = load_image(path, max_side=HASH_MAX_SIDE)
    except DataError as exc:
        msg = str(exc)
        return sha, None, msg[len(path) + 2:] if msg.startswith(path + ": ") else msg
    return sha, int(str(imagehash.phash(img)), 16), None


@dataclass
class HashedImages:
    names: list[str]
    paths: list[str]
    sha256: list[str]
    phash: np.ndarray  # uint64 [N]
    valid: np.ndarray  # bool [N]: phash available

    def __len__(self) -> int:
        return len(self.paths)


def hash_images(items: Sequence[tuple[str, str]], report: BadFileReport | None = None, workers: int = 1) -> HashedImages:
    """SHA-256 and phash of every image; unreadable images are reported and excluded from near matching."""
    paths = [p for _, p in items]
    if workers > 1 and len(paths) > 64:
        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(_hash_one, paths, chunksize=32))
    else:
        results = [_hash_one(p) for p in paths]
    ph = np.zeros(len(paths), dtype=np.uint64)
    valid = np.zeros(len(paths), dtype=bool)
    shas = []
    for k, (sha, h, err) in enumerate(results):
        shas.append(sha)
        if h is not None:
            ph[k], valid[k] = h, True
        elif report is not None:
            report.add(paths[k], err)
        else:
            log.warning("cannot hash %s: %s", paths[k], err)
    return HashedImages([n for n, _ in items], paths, shas, ph, valid)


# ---- matching ----------------------------------------------------------------------------------


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64))).astype(np.int64)


def _chunks(threshold: int) -> list[tuple[int, int]]:
    """t+1 disjoint (shift, width) bit chunks covering 64 bits."""
    m = threshold + 1
    widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def near_pairs(a: np.ndarray, b: np.ndarray | None, threshold: int) -> np.ndarray:
    """All (i, j, distance) with hamming(a[i], b[j]) <= threshold, as an int64 array [K,3].

    With `b=None`, pairs within `a` with i < j. Multi-index hashing for threshold <= 7 (chunks of
    at least 8 bits); beyond that chunks are too short to prune and a blocked brute-force
    XOR/popcount is faster.
    """
    if threshold < 0:
        raise DataError(f"threshold must be >= 0, got {threshold}")
    a = np.asarray(a, dtype=np.uint64)
    self_mode = b is None
    b = a if self_mode else np.asarray(b, dtype=np.uint64)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if threshold > MAX_MULTI_INDEX_THRESHOLD:
        found = []
        for s in range(0, len(a), 1024):
            d = hamming(a[s:s + 1024, None], b[None, :])
            i, j = np.nonzero(d <= threshold)
            found.append(np.stack([i + s, j, d[i, j]], axis=1))
        pairs = np.concatenate(found)
    else:
        cand = []
        for shift, width in _chunks(threshold):
            mask = np.uint64((1 << width) - 1)
            ka = (a >> np.uint64(shift)) & mask
            kb = (b >> np.uint64(shift)) & mask
            order = np.argsort(ka, kind="stable")
            ks = ka[order]
            lo = np.searchsorted(ks, kb, side="left")
            hi = np.searchsorted(ks, kb, side="right")
            counts = hi - lo
            if counts.sum() == 0:
                continue
            j = np.repeat(np.arange(len(b)), counts)
            starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            i = order[np.arange(counts.sum()) + starts]
            cand.append(i.astype(np.int64) * len(b) + j)
        if not cand:
            return np.zeros((0, 3), dtype=np.int64)
        flat = np.unique(np.concatenate(cand))
        ij = np.stack([flat // len(b), flat % len(b)], axis=1)
        d = hamming(a[ij[:, 0]], b[ij[:, 1]])
        keep = d <= threshold
        pairs = np.concatenate([ij[keep], d[keep, None]], axis=1)
    if self_mode:
        pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    return pairs.astype(np.int64)


@dataclass
class OverlapResult:
    train: HashedImages
    test: HashedImages | None
    threshold: int
    pairs: list[dict] = field(default_factory=list)  # {train, test, distance, kind}

    @property
    def duplicated_train(self) -> set[int]:
        """Train indices to drop: matched to a test image, or (self mode) later copies within train."""
        key = "train_index" if self.test is not None else "second_index"
        return {p[key] for p in self.pairs}

    def deduplicated_train(self) -> list[str]:
        drop = self.duplicated_train
        return [p for k, p in enumerate(self.train.paths) if k not in drop]

    def summary(self) -> dict:
        exact = sum(p["kind"] == "exact" for p in self.pairs)
        return {
            "train_images": len(self.train),
            "test_images": len(self.test) if self.test is not None else None,
            "threshold": self.threshold,
            "pairs": len(self.pairs),
            "exact_pairs": exact,
            "near_pairs": len(self.pairs) - exact,
            "train_images_dropped": len(self.duplicated_train),
        }

    def to_json(self) -> dict:
        return {"summary": self.summary(), "pairs": self.pairs}


def find_overlap(train: HashedImages, test: HashedImages | None = None, threshold: int = 4) -> OverlapResult:
    """Exact (same bytes) and near (phash distance <= threshold) pairs between train and test,
    or within train when `test` is None."""
    self_mode = test is None
    other = train if self_mode else test
    found: dict[tuple[int, int], tuple[int, str]] = {}
    # near duplicates on decodable images
    ia, ib = np.nonzero(train.valid)[0], np.nonzero(other.valid)[0]
    if self_mode:
        raw = near_pairs(train.phash[ia], None, threshold)
    else:
        raw = near_pairs(train.phash[ia], other.phash[ib], threshold)
    for i, j, d in raw:
        found[(int(ia[i]), int((ia if self_mode else ib)[j]))] = (int(d), "near")
    # exact duplicates by content hash (also catches files that failed to decode)
    by_sha: dict[str, list[int]] = {}
    for k, s in enumerate(other.sha256):
        if s:
            by_sha.setdefault(s, []).append(k)
    for i, s in enumerate(train.sha256):
        for j in by_sha.get(s, []) if s else []:
            if self_mode and j <= i:
                continue
            found[(i, j)] = (0, "exact")
    res = OverlapResult(train, test, threshold)
    for (i, j), (d, kind) in sorted(found.items()):
        if self_mode:
            res.pairs.append({"first": train.paths[i], "second": train.paths[j], "first_index": i,
                              "second_index": j, "distance": d, "kind": kind})
        else:
            res.pairs.append({"train": train.paths[i], "test": other.paths[j], "train_index": i,
                              "test_index": j, "distance": d, "kind": kind})
    return res


def write_list(paths: Sequence[str], out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(p + "\n" for p in paths), encoding="utf-8")
    return out


def write_json(obj, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return out
