"""Train/test leakage check: exact and near-duplicate images across (or within) datasets.

Exact duplicates share the SHA-256 of their file bytes. Near duplicates (re-encoded, resized,
slightly recoloured copies) have perceptual hashes (`imagehash.phash`, 64 bits) within a Hamming
distance `threshold` (default 4 of 64). A phash of the whole image changes completely when a copy
is cropped by a few percent or rotated, so each image is also hashed as centre crops (90 % and
80 % of each side) and, on the test side, in its four 90-degree rotations: a pair's distance is
the smallest over the (train crop, test crop and rotation) combinations, and the pair records
which one matched. A crop of a few percent (centred or not) or a small shift brings one of the
crops of one image close to a crop of the other; docs/DATA.md has the recall and false positives
measured on UCM (benchmarks/leakage/run.py).

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
CROP_SCALES = (1.0, 0.9, 0.8)  # centre crops hashed per image (share of each side kept)
ROTATIONS = (0, 90, 180, 270)  # degrees counter-clockwise; the test side is matched in all four
# The test side is also hashed as windows of SHIFT_SCALE of each side moved by these shares, which
# meet a copy whose window was shifted or cropped off-centre by a few percent.
SHIFT_SCALE = 0.8
SHIFTS = (-0.06, -0.03, 0.0, 0.03, 0.06)
SHIFT_OFFSETS = [(sx, sy) for sy in SHIFTS for sx in SHIFTS if sx or sy]  # (x, y) of each shifted window
N_SHIFTED = len(SHIFT_OFFSETS)
N_ROTATED = len(ROTATIONS) * len(CROP_SCALES)
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


def _window_boxes(w: int, h: int) -> list[tuple[int, int, int, int]]:
    """Crop boxes of `variant_hashes` for an image of w x h: the centre crops, then the shifted
    windows (SHIFT_SCALE of each side, centre moved by each of SHIFT_OFFSETS)."""
    boxes = []
    for scale in CROP_SCALES:
        dw, dh = w * (1 - scale) / 2, h * (1 - scale) / 2
        boxes.append((dw, dh, w - dw, h - dh))
    dw, dh = w * (1 - SHIFT_SCALE) / 2, h * (1 - SHIFT_SCALE) / 2
    for sx, sy in SHIFT_OFFSETS:
        boxes.append((dw + sx * w, dh + sy * h, w - dw + sx * w, h - dh + sy * h))
    return [tuple(round(v) for v in b) for b in boxes]


def _phash(img) -> int:
    import imagehash

    return int(str(imagehash.phash(img)), 16)


def variant_hashes(img) -> np.ndarray:
    """phash of each variant of a PIL image, uint64 [N_VARIANTS]: for each rotation the centre
    crops (index `r * len(CROP_SCALES) + c`; entry 0 is the plain phash of the whole image), then,
    unrotated, the shifted windows."""
    img = img.convert("L")
    out = []
    for angle in ROTATIONS:
        rotated = img.rotate(angle, expand=True) if angle else img
        out += [_phash(rotated.crop(box)) for box in _window_boxes(*rotated.size)[:len(CROP_SCALES)]]
    out += [_phash(img.crop(box)) for box in _window_boxes(*img.size)[len(CROP_SCALES):]]
    return np.array(out, dtype=np.uint64)


def _hash_one(path: str, geometric: bool = True) -> tuple[str, np.ndarray | None, str | None]:
    """(sha256 hex, variant phashes or None, error or None); without `geometric` only entry 0
    (the whole image) is computed, the rest left 0 and unused."""
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
    if geometric:
        return sha, variant_hashes(img), None
    whole = np.zeros(N_ROTATED + N_SHIFTED, dtype=np.uint64)
    whole[0] = _phash(img.convert("L"))
    return sha, whole, None


@dataclass
class HashedImages:
    names: list[str]
    paths: list[str]
    sha256: list[str]
    variants: np.ndarray  # uint64 [N, V]: `variant_hashes` of each image
    valid: np.ndarray  # bool [N]: hashes available
    geometric: bool = True  # False: only the whole-image hash (variants[:, 0]) was computed

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def phash(self) -> np.ndarray:
        """The plain phash of each whole image (uint64 [N])."""
        return self.variants[:, 0]


def hash_images(items: Sequence[tuple[str, str]], report: BadFileReport | None = None, workers: int = 1,
                 progress: bool = False, geometric: bool = True) -> HashedImages:
    """SHA-256 and variant phashes of every image (`geometric=False`: the whole-image phash only);
    unreadable images are reported and excluded from near matching."""
    from functools import partial

    from tqdm import tqdm

    paths = [p for _, p in items]
    one = partial(_hash_one, geometric=geometric)
    bar = dict(total=len(paths), desc="hashing", unit="img", disable=not progress, leave=False)
    if workers > 1 and len(paths) > 64:
        with ProcessPoolExecutor(workers) as ex:
            results = list(tqdm(ex.map(one, paths, chunksize=32), **bar))
    else:
        results = [one(p) for p in tqdm(paths, **bar)]
    ph = np.zeros((len(paths), N_ROTATED + N_SHIFTED), dtype=np.uint64)
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
    return HashedImages([n for n, _ in items], paths, shas, ph, valid, geometric)


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


def _near_variant_pairs(train: HashedImages, other: HashedImages, threshold: int, self_mode: bool,
                        geometric: bool) -> dict[tuple[int, int], tuple[int, dict]]:
    """{(i, j): (distance, match)} of near pairs, the distance being the smallest over the train
    image's centre crops against the other image's crops (and, `geometric`, its rotations)."""
    n_crop = len(CROP_SCALES)
    ia, ib = np.nonzero(train.valid)[0], np.nonzero(other.valid)[0]
    a = train.variants[ia][:, :n_crop] if geometric else train.variants[ia][:, :1]
    b = other.variants[ib] if geometric else other.variants[ib][:, :1]
    raw = near_pairs(a.reshape(-1), b.reshape(-1), threshold)
    best: dict[tuple[int, int], tuple[int, dict]] = {}
    for fa, fb, d in raw:
        i, u = int(ia[fa // a.shape[1]]), int(fa % a.shape[1])
        j, v = int(ib[fb // b.shape[1]]), int(fb % b.shape[1])
        if v < N_ROTATED:
            rotation, crops, shift = ROTATIONS[v // n_crop], [CROP_SCALES[u], CROP_SCALES[v % n_crop]], None
        else:
            rotation, crops = 0, [CROP_SCALES[u], SHIFT_SCALE]
            shift = SHIFT_OFFSETS[v - N_ROTATED]
        if self_mode:
            if i == j:
                continue
            if i > j:  # one entry per unordered pair, described from the first image's side
                i, j, rotation, crops = j, i, (360 - rotation) % 360, crops[::-1]
                shift = None if shift is None else (-shift[0], -shift[1])
        if (i, j) not in best or d < best[(i, j)][0]:
            match = {"rotation": rotation, "crops": crops}
            if shift is not None:
                match["shift"] = list(shift)
            best[(i, j)] = (int(d), match)
    return best


def find_overlap(train: HashedImages, test: HashedImages | None = None, threshold: int = 4,
                 geometric: bool = True) -> OverlapResult:
    """Exact (same bytes) and near (phash distance <= threshold) pairs between train and test,
    or within train when `test` is None. `geometric=False` compares whole-image hashes only
    (blind to crops and rotations, a little faster)."""
    self_mode = test is None
    other = train if self_mode else test
    geometric = geometric and train.geometric and other.geometric  # variants exist only if hashed
    found = {k: (d, "near", m) for k, (d, m) in
             _near_variant_pairs(train, other, threshold, self_mode, geometric).items()}
    # exact duplicates by content hash (also catches files that failed to decode)
    by_sha: dict[str, list[int]] = {}
    for k, s in enumerate(other.sha256):
        if s:
            by_sha.setdefault(s, []).append(k)
    for i, s in enumerate(train.sha256):
        for j in by_sha.get(s, []) if s else []:
            if self_mode and j <= i:
                continue
            found[(i, j)] = (0, "exact", None)
    res = OverlapResult(train, test, threshold)
    for (i, j), (d, kind, match) in sorted(found.items()):
        if self_mode:
            pair = {"first": train.paths[i], "second": train.paths[j], "first_index": i, "second_index": j}
        else:
            pair = {"train": train.paths[i], "test": other.paths[j], "train_index": i, "test_index": j}
        pair.update(distance=d, kind=kind)
        if match is not None:
            pair["match"] = match  # which rotation of the second image and which crops met
        res.pairs.append(pair)
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
