"""Recall and false positives of the leakage check (`priorclip data overlap`) on UCM-captions.

Every test-split image gets altered copies (the table TRANSFORMS below: crops of 2-10 % per side,
off-centre crops, shifted windows, 90-degree rotations, rotation + crop, re-encoding, resizing);
the copies are saved as JPEG files and put in a "train" set beside the 1,680 real train + val
images, and `find_overlap` runs train against the 420 originals as a user would. Per threshold
and mode (whole-image hash only vs. the default crops + rotations):

  recall          copies matched to their own source image;
  false pairs     pairs (train image, test image) that are not (copy, its source);
  within UCM      pairs among the 2,100 distinct originals (one known exact duplicate pair;
                  others are near-identical neighbouring tiles or false matches).

    .venv/bin/python benchmarks/leakage.py [--data ../shared/data/ucm-captions] [--thresholds 4 5 6 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from priorclip.data.overlap import collect_images, find_overlap, hash_images

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # results_md


def _crop(img, left, top, right, bottom):
    """Cut the given shares of each side and resize back to the original size."""
    w, h = img.size
    box = (round(w * left), round(h * top), round(w * (1 - right)), round(h * (1 - bottom)))
    return img.crop(box).resize((w, h), Image.BICUBIC)


def _shift(img, share):
    """A 90 % window moved by `share` of the side against the 90 % window at 5 %: new content
    enters on two sides (the source is then the unshifted window, see `source_of`)."""
    return _crop(img, 0.05 + share, 0.05 + share, 0.05 - share, 0.05 - share)


# name -> (function of the source image, the source it must match: "image" | "window")
TRANSFORMS = {
    **{f"crop {c}% centred": (lambda im, c=c: _crop(im, c / 100, c / 100, c / 100, c / 100), "image")
       for c in (2, 4, 6, 8, 10)},
    **{f"crop {c}% top-left": (lambda im, c=c: _crop(im, c / 100, c / 100, 0, 0), "image") for c in (4, 8)},
    **{f"shift {s}%": (lambda im, s=s: _shift(im, s / 100), "window") for s in (2, 4)},
    **{f"rotate {a}": (lambda im, a=a: im.rotate(a, expand=True), "image") for a in (90, 180, 270)},
    "rotate 90 + crop 4%": (lambda im: _crop(im.rotate(90, expand=True), 0.04, 0.04, 0.04, 0.04), "image"),
    "JPEG quality 50": (lambda im: im, "image"),
    "resize to 60 %": (lambda im: im.resize((round(im.width * 0.6), round(im.height * 0.6)), Image.BICUBIC), "image"),
}


def make_copies(test_items, out: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[int, str]]]:
    """Altered copies of each test image -> (copies, sources, [(source index, transform)]).
    Sources are the originals, plus the 5 % window of each image that the shifted copies move."""
    copies, owners = [], []
    sources = list(test_items)
    window_of = {}
    for k, (name, path) in enumerate(test_items):
        img = Image.open(path).convert("RGB")
        window = out / f"window_{k}.png"
        _crop(img, 0.05, 0.05, 0.05, 0.05).save(window)
        window_of[k] = len(sources)
        sources.append((f"window of {name}", str(window)))
        for t, (fn, source) in enumerate(TRANSFORMS.values()):
            dest = out / f"copy_{k}_{t}.jpg"
            fn(img).save(dest, quality=50 if "quality 50" in list(TRANSFORMS)[t] else 90)
            copies.append((dest.name, str(dest)))
            owners.append((k if source == "image" else window_of[k], list(TRANSFORMS)[t]))
    return copies, sources, owners


def measure(data: Path, thresholds: list[int], limit: int | None = None) -> dict:
    """The table's figures; `limit` keeps the first test images only (the script's own test)."""
    t0 = time.perf_counter()
    all_items = collect_images(data / "dataset.json")
    test_items = collect_images(f"{data / 'dataset.json'}:test")[:limit]
    test_names = {n for n, _ in test_items}
    train_items = [it for it in all_items if it[0] not in test_names]
    with tempfile.TemporaryDirectory() as tmp:
        copies, sources, owners = make_copies(test_items, Path(tmp))
        train = hash_images(train_items + copies)
        test = hash_images(sources)
        originals = hash_images(all_items)
    hash_s = time.perf_counter() - t0
    n_real = len(train_items)
    rows = []
    for geometric in (False, True):
        for t in thresholds:
            res = find_overlap(train, test, t, geometric=geometric)
            matched = {(p["train_index"], p["test_index"]) for p in res.pairs}
            hit = [(n_real + c, owner) in matched for c, (owner, _) in enumerate(owners)]
            per = {name: 0 for name in TRANSFORMS}
            for (_, name), h in zip(owners, hit):
                per[name] += h
            truth = {(n_real + c, owner) for c, (owner, _) in enumerate(owners)}
            # a copy also matching its image's 5 % window (or the reverse) is the same image, not a false pair
            same_image = {(n_real + c, o) for c, (owner, _) in enumerate(owners)
                          for o in ((owner % len(test_items)), len(test_items) + owner % len(test_items))}
            false = [p for p in res.pairs if (p["train_index"], p["test_index"]) not in truth | same_image]
            within = find_overlap(originals, None, t, geometric=geometric)
            rows.append({"geometric": geometric, "threshold": t, "recall": float(np.mean(hit)),
                         "recall_by_transform": {k: v / len(test_items) for k, v in per.items()},
                         "false_pairs": len(false),
                         "false_pairs_real_train": sum(p["train_index"] < n_real for p in false),
                         "within_ucm_pairs": len(within.pairs)})
    return {"test_images": len(test_items), "copies": len(copies), "real_train_images": n_real,
            "hash_and_copy_s": round(hash_s, 1), "rows": rows}


def markdown(fig: dict) -> str:
    names = list(TRANSFORMS)
    lines = [f"Leakage check on UCM-captions: {fig['copies']:,} altered copies of the {fig['test_images']} test images "
             f"beside the {fig['real_train_images']:,} real train + val images, matched against the originals "
             "(`benchmarks/leakage.py`).", "",
             "| hashes | threshold | recall (all copies) | false pairs | pairs within UCM's 2,100 originals |",
             "|---|---:|---:|---:|---:|"]
    for r in fig["rows"]:
        mode = "crops + rotations (default)" if r["geometric"] else "whole image only"
        lines.append(f"| {mode} | {r['threshold']} | {100 * r['recall']:.1f} % | {r['false_pairs']} | "
                     f"{r['within_ucm_pairs']} |")
    lines += ["", "Recall by alteration (%):", "",
              "| hashes | threshold | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for r in fig["rows"]:
        mode = "crops + rotations" if r["geometric"] else "whole image"
        lines.append(f"| {mode} | {r['threshold']} | " +
                     " | ".join(f"{100 * r['recall_by_transform'][n]:.0f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    shared = os.environ.get("PRIORCLIP_SHARED_DIR", str(ROOT.parent / "shared"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=f"{shared}/data/ucm-captions")
    ap.add_argument("--thresholds", type=int, nargs="+", default=[4, 5, 6, 8])
    ap.add_argument("--limit", type=int, default=None, help="only the first N test images (a quick look)")
    ap.add_argument("--json", default="results_leakage.json")
    ap.add_argument("--results-md", default=None, help="RESULTS.md to update ('' : JSON only)")
    args = ap.parse_args(argv)
    if not (Path(args.data) / "dataset.json").is_file():
        sys.exit(f"{args.data}: no dataset.json (UCM-captions in Karpathy layout); pass --data")
    from results_md import save_results

    fig = measure(Path(args.data), args.thresholds, args.limit)
    text = markdown(fig)
    print(text)
    save_results(args.json, {"args": vars(args), **fig}, "## Leakage check (UCM-captions)", text,
                 "benchmarks/leakage.py", markdown=args.results_md)


if __name__ == "__main__":
    main()
