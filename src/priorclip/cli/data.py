"""`priorclip data`: dataset utilities (leakage check, dataset check)."""
from __future__ import annotations

import argparse
import sys

HELP = "dataset utilities: train/test leakage check, dataset check"
DESCRIPTION = """\
Dataset utilities.

  overlap  exact (same bytes) and near-duplicate (perceptual hash) images between training
           and test data, or within one dataset; writes a deduplicated training list.
  check    load a dataset's annotations, verify every image exists and decodes; report bad files.

Unreadable images: the first few are named on stderr (all of them with --bad-files FILE) and the
exit status is 1; 0 means every image was read. `check` reads a caption file to the end and
prints every bad entry (file and line or entry, also in --bad-files), exit status 1; a file it
cannot parse at all (not JSON, not UTF-8, missing columns) is an error, exit status 2.

Inputs of `overlap` are image folders, .txt lists of image paths, or caption files resolved
under --images-root: Karpathy JSON (PATH.json[:SPLIT]), open_clip CSV (PATH.csv), or a precomp
folder with a split (DIR:SPLIT).

examples:
  priorclip data overlap ucm-captions/dataset.json:train --against ucm-captions/dataset.json:test \\
      --images-root ucm-captions/images --out train_dedup.txt --json pairs.json
  priorclip data overlap my_archive/                      # duplicates within one folder
  priorclip data check karpathy ucm-captions --split test --labels csv:ucm-captions/labels.csv
  priorclip data check precomp annotations/rsitmd_precomp --split test --images-root rsitmd/images
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("overlap", help="find duplicate images between training and test data",
                       description="Exact and near-duplicate images between TRAIN and --against TEST "
                       "(or within TRAIN when --against is omitted).")
    p.add_argument("train", nargs="+", metavar="TRAIN", help="training inputs (folder, .txt, .json[:split], .csv, precomp_dir:split)")
    p.add_argument("--against", nargs="+", metavar="TEST", default=None, help="test inputs; omit to search within TRAIN")
    p.add_argument("--images-root", default=None, help="folder holding the images named by caption files")
    p.add_argument("--threshold", type=int, default=4,
                   help="max phash Hamming distance (of 64 bits) for a near duplicate (default 4; 6 finds more "
                        "cropped and shifted copies and more look-alikes: docs/DATA.md has both measured)")
    p.add_argument("--no-geometric", dest="geometric", action="store_false",
                   help="compare whole-image hashes only: blind to crops, shifts and rotations, 3x faster hashing")
    p.add_argument("--out", default=None, help="write the training image paths without duplicates here, one per line")
    p.add_argument("--json", default=None, help="write all pairs and a summary as JSON here")
    p.add_argument("--bad-files", default=None, help="write unreadable files as JSON here")
    p.add_argument("--workers", type=int, default=1, help="processes for hashing (default 1)")
    p.add_argument("--max-print", type=int, default=50, help="print at most this many pairs (default 50)")

    c = sub.add_parser("check", help="verify a dataset's files and decode every image")
    c.add_argument("format", choices=["karpathy", "precomp", "csv", "folder"], help="dataset format")
    c.add_argument("root", help="annotation file or folder (folder of images for 'folder')")
    c.add_argument("--split", default="test")
    c.add_argument("--images-root", default=None)
    c.add_argument("--labels", default=None, help="label source: prefix, csv:PATH, folder, none")
    c.add_argument("--no-decode", action="store_true", help="only check that files exist")
    c.add_argument("--bad-files", default=None, help="write unreadable files as JSON here")


def run(args) -> int:
    if args.data_command == "overlap":
        return _overlap(args)
    return _check(args)


def _describe_match(match: dict | None) -> str:
    """How a near pair's second image was aligned to the first: '' when whole images matched."""
    if not match or (match["rotation"] == 0 and match["crops"] == [1.0, 1.0] and "shift" not in match):
        return ""
    parts = [f"rotated {match['rotation']}"] if match["rotation"] else []
    parts.append(f"crops {match['crops'][0]:.0%} / {match['crops'][1]:.0%}")
    if "shift" in match:
        parts.append(f"shifted {match['shift'][0]:+.0%}, {match['shift'][1]:+.0%}")
    return "  (" + ", ".join(parts) + ")"


def _overlap(args) -> int:
    from priorclip.data.images import BadFileReport
    from priorclip.data.overlap import collect_images, find_overlap, hash_images, write_json, write_list
    from priorclip.errors import ConfigError

    if not 0 <= args.threshold <= 64:
        raise ConfigError(f"--threshold must be between 0 and 64, got {args.threshold}")
    report = BadFileReport()
    train_items = [it for spec in args.train for it in collect_images(spec, args.images_root)]
    test_items = None
    if args.against:
        test_items = [it for spec in args.against for it in collect_images(spec, args.images_root)]
    print(f"hashing {len(train_items)} training image(s)" + (f" and {len(test_items)} test image(s)" if test_items else ""),
          file=sys.stderr)
    train = hash_images(train_items, report, workers=args.workers, progress=True, geometric=args.geometric)
    test = None
    if test_items is not None:
        test = hash_images(test_items, report, workers=args.workers, progress=True, geometric=args.geometric)
    res = find_overlap(train, test, args.threshold, geometric=args.geometric)
    a, b = ("train", "test") if test is not None else ("first", "second")
    for p in res.pairs[: args.max_print]:
        print(f"{p['kind']:5s} d={p['distance']:2d}  {p[a]}  {p[b]}{_describe_match(p.get('match'))}")
    if len(res.pairs) > args.max_print:
        print(f"... and {len(res.pairs) - args.max_print} more pairs (see --json)")
    s = res.summary()
    print(
        f"{s['pairs']} pair(s) (exact {s['exact_pairs']}, near {s['near_pairs']}, phash distance <= {args.threshold}); "
        f"{s['train_images_dropped']} of {s['train_images']} training image(s) would be dropped"
    )
    if len(report) and args.bad_files:
        report.write_json(args.bad_files)
    if args.out:
        kept = res.deduplicated_train()
        write_list(kept, args.out)
        print(f"wrote {len(kept)} deduplicated training image path(s) to {args.out}")
    if args.json:
        write_json(res.to_json(), args.json)
        print(f"wrote pairs to {args.json}")
    return _skipped(report, args.bad_files)


def _check(args) -> int:
    from priorclip.data import CsvCaptions, ImageFolder, KarpathyCaptions, PrecompCaptions
    from priorclip.data.images import BadFileReport, safe_load_image
    from priorclip.errors import CaptionFileError

    cls = {"karpathy": KarpathyCaptions, "precomp": PrecompCaptions, "csv": CsvCaptions, "folder": ImageFolder}[args.format]
    kw = {"mode": "images", "labels": args.labels}
    if args.images_root:
        kw["images_root"] = args.images_root
    try:
        if args.format == "folder":
            ds = cls(args.root, None, labels=args.labels or "folder", images_root=args.images_root or args.root)
        else:
            ds = cls(args.root, args.split, **kw)
    except CaptionFileError as exc:
        return _caption_problems(exc, args.bad_files)
    print(repr(ds))
    if ds.classes:
        unl = ds.labels.count(-1)
        print(f"{len(ds.classes)} classes; {unl} unlabelled image(s)")
    if ds.paths is None:
        print("annotation-only (no images_root): images not checked")
        return 0
    print(f"all {ds.num_images} image file(s) present")
    if args.no_decode:
        return 0
    report = BadFileReport()
    for p in ds.paths:
        safe_load_image(p, report)
    if not len(report):
        print(f"all {ds.num_images} image(s) decode")
    if args.bad_files:
        report.write_json(args.bad_files)
        print(f"wrote {args.bad_files}")
    return _skipped(report, args.bad_files)


def _skipped(report, bad_files) -> int:
    """Exit status 1 with the first unreadable files named, or 0 (see cli/exit_status.py)."""
    from priorclip.cli.exit_status import report_skipped

    where = f"see {bad_files}" if bad_files else "pass --bad-files FILE to list them all"
    return report_skipped("data", [(e.path, e.reason) for e in report], where)


def _caption_problems(exc, bad_files) -> int:
    """Every problem of the caption file on stdout (and in --bad-files), exit status 1: the check
    is done, and what it found is the answer (images are checked once the captions load)."""
    import json
    import os
    from pathlib import Path

    from priorclip.cli.exit_status import SKIPPED

    for line in exc.lines():
        print(line)
    if bad_files:
        path = Path(bad_files)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"count": 0, "files": [], "caption_problems": [
            {"file": f, "where": w, "problem": p} for f, w, p in exc.problems]}, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    where = f"; also in {bad_files}" if bad_files else ""
    print(f"priorclip data: {len(exc.problems)} problem(s) in the caption file, listed above{where}; "
          "fix them and run the check again (images are not checked until the captions load)", file=sys.stderr)
    return SKIPPED
