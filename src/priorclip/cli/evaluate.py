"""`priorclip evaluate`: retrieval recall of a model on a dataset split, in any of the caption-file
layouts the remote-sensing benchmarks are distributed in (Karpathy JSON, precomp, CSV)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from priorclip.cli.model_args import add_model_arguments, load_model_arg

HELP = "retrieval recall (R@1/5/10, mR) of a model on a dataset split"
DESCRIPTION = """\
Encode a dataset split with a model and print R@1/5/10 in both directions and mR (markdown
table, with [pessimistic-optimistic] bounds where tied scores make the rank ambiguous). The JSON
report holds every tie rule and the tie statistics.

--model is a checkpoint directory (written by `priorclip train` or `priorclip convert`); a
registered model name needs --random-weights (seeded random weights: a chance-level reference).

--data is detected (--format auto): a .json file or a folder with one dataset*.json is Karpathy
JSON; a folder with {split}_caps.txt (or that file itself) is the AMFMN/GaLR/SWAN precomp layout;
a .csv file (or a folder with {split}.csv) is open_clip's filename,title CSV. Images are looked up
under --images-root (default: images/ beside the caption file), by path, base name or stem, so
`91.tif` in a caption file finds `91.jpg`. See docs/EVALUATION.md for every benchmark's command.

--dump PATH.jsonl writes one line per query (both directions): its top --dump-topk items with
scores, and the rank of the first correct item (index tie rule) with its tie-group size.

An unreadable image is left out of the evaluation together with its captions (they would have no
correct image to find): the first few are named on stderr, all of them under `skipped` in the
--out report, the numbers are recall over the images that were read, and the exit status is 1.

examples:
  priorclip evaluate --model runs/closed/checkpoints/best --data ucm-captions --split test
  priorclip evaluate --model ckpt/ --data annotations/rsitmd_precomp --images-root rsitmd/images \\
      --out rsitmd_test.json --dump rsitmd_test.jsonl --dump-topk 10 --device cuda
  priorclip evaluate --model ckpt/ --data annotations/csv/rsicd_test.csv --images-root RSICD_images
"""

FORMATS = ("auto", "karpathy", "precomp", "csv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True,
                        help="caption file or folder: Karpathy .json, precomp folder (or its {split}_caps.txt), .csv")
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="caption-file layout (default auto: detected from --data)")
    parser.add_argument("--images-root", default=None,
                        help="folder holding the images (default: images/ beside the caption file)")
    parser.add_argument("--split", default=None,
                        help="split to evaluate (default test; a precomp {split}_caps.txt path names its own)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--ties", default="expected", help="tie rule of the printed table (default expected)")
    parser.add_argument("--positives", default="index", choices=["index", "caption-text"],
                        help="caption-text: a caption is also correct for every image with the same caption text")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--dump", default=None, metavar="PATH.jsonl",
                        help="write per-query results (top-K items, rank of the first correct one) as JSON lines")
    parser.add_argument("--dump-topk", type=int, default=None, metavar="K",
                        help="items per query in --dump (default 10)")


def detect_format(data: str | os.PathLike, split: str | None = None) -> tuple[str, Path, str]:
    """-> (format, dataset root, split) for `--data`, from the path alone (no file is parsed).

    A `{split}_caps.txt` / `{split}_filename.txt` path means its folder and that split; a folder
    must hold exactly one recognised layout, else the error says what was looked for and found.
    """
    from priorclip.errors import ConfigError, DatasetNotFoundError

    path = Path(data).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"--data {path}: no such file or folder")
    if path.is_file():
        name = path.name
        for suffix in ("_caps.txt", "_filename.txt"):
            if name.endswith(suffix):
                own = name[: -len(suffix)]
                if split is not None and split != own:
                    raise ConfigError(f"--data {path} is the {own!r} split but --split is {split!r}; "
                                      f"pass the folder {path.parent} to choose the split with --split")
                return "precomp", path.parent, own
        ext = path.suffix.lower()
        if ext == ".json":
            return "karpathy", path, split or "test"
        if ext in (".csv", ".tsv"):
            return "csv", path, split or "test"
        raise ConfigError(f"--data {path}: cannot tell the layout from the name (expected .json, .csv or "
                          "{split}_caps.txt); pass --format karpathy|precomp|csv")
    split = split or "test"
    found = []
    if list(path.glob("dataset*.json")):
        found.append("karpathy")
    if (path / f"{split}_caps.txt").is_file():
        found.append("precomp")
    if (path / f"{split}.csv").is_file():
        found.append("csv")
    if len(found) == 1:
        return found[0], path, split
    if found:
        raise ConfigError(f"--data {path} holds several layouts ({', '.join(found)}); pass --format")
    other = sorted(p.name[: -len("_caps.txt")] for p in path.glob("*_caps.txt"))
    if other:
        raise DatasetNotFoundError(f"--data {path}: no {split}_caps.txt; this precomp folder has split(s) "
                                   f"{', '.join(other)}: pass --split")
    subdirs = sorted(p.name for p in path.iterdir() if p.is_dir() and
                     (list(p.glob("*_caps.txt")) or list(p.glob("dataset*.json"))))
    hint = f"; it has dataset folders {', '.join(subdirs)}: pass one of them" if subdirs else ""
    raise DatasetNotFoundError(f"--data {path}: no caption file found (looked for dataset*.json, "
                               f"{split}_caps.txt, {split}.csv){hint}")


def open_dataset(data, fmt: str = "auto", split: str | None = None, images_root=None, require_images: bool = True):
    """The "images"-mode dataset `--data/--format/--split/--images-root` name, with its images
    resolved; a missing image folder or image file is one error naming them and the flag to pass
    (`require_images=False` accepts an annotation-only dataset instead)."""
    from priorclip.data import CsvCaptions, KarpathyCaptions, PrecompCaptions
    from priorclip.errors import DatasetNotFoundError

    if fmt == "auto":
        fmt, root, split = detect_format(data, split)
    else:
        root, split = Path(data).expanduser(), split or "test"
        if not root.exists():
            raise DatasetNotFoundError(f"--data {root}: no such file or folder")
        if fmt == "precomp" and root.is_file():
            fmt, root, split = detect_format(root, split)  # a {split}_caps.txt path
    if images_root is not None and not Path(images_root).is_dir():
        raise DatasetNotFoundError(f"--images-root {images_root}: no such folder; pass the folder holding "
                                   f"the images of {data}")
    cls = {"karpathy": KarpathyCaptions, "precomp": PrecompCaptions, "csv": CsvCaptions}[fmt]
    try:
        dataset = cls(root, split, mode="images", images_root=images_root)
    except DatasetNotFoundError as exc:
        missing = getattr(exc, "missing", [])
        if images_root is None or not missing or not all(str(m).startswith(str(Path(images_root))) for m in missing):
            raise
        shown = ", ".join(Path(m).name for m in missing[:10]) + (f" ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        err = DatasetNotFoundError(
            f"--data {data} [{split}]: {len(missing)} image(s) not found under --images-root {images_root}: "
            f"{shown}; pass --images-root pointing at the folder holding them (matched by path, base name, "
            "or stem with any image extension)")
        err.missing = missing
        raise err from None
    if dataset.paths is None and require_images:
        names = dataset.images
        shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
        base = root if root.is_dir() else root.parent
        err = DatasetNotFoundError(
            f"--data {data} [{split}]: image folder missing: the {len(names)} images ({shown}) are not "
            f"available (no {base / 'images'} folder); pass --images-root DIR, the folder holding them")
        err.missing = [str(base / "images")]
        raise err
    dataset.format = fmt
    return dataset


def write_dumps(path, records) -> int:
    """Write JSON lines atomically (a partial file never replaces a previous dump); -> line count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def run(args) -> int:
    from priorclip.cli.exit_status import report_skipped
    from priorclip.errors import ConfigError
    from priorclip.evaluation.encode import evaluate_model
    from priorclip.evaluation.metrics import TIE_RULES, format_recall_table

    if args.ties not in TIE_RULES:
        raise ConfigError(f"--ties {args.ties!r}: choose one of {', '.join(TIE_RULES)}")
    if args.dump_topk is not None and not args.dump:
        raise ConfigError("--dump-topk needs --dump PATH.jsonl (where to write the per-query results)")
    topk = 10 if args.dump_topk is None else args.dump_topk
    if topk < 1:
        raise ConfigError(f"--dump-topk must be at least 1, got {topk}")
    dataset = open_dataset(args.data, args.format, args.split, args.images_root)  # before the (slow) model
    model = load_model_arg(args, purpose="evaluating")
    report, scores = evaluate_model(model, dataset, batch_size=args.batch_size, device=args.device,
                                    workers=args.workers, positives=args.positives, return_scores=True,
                                    skip_unreadable=True)
    skipped = report["skipped"]
    report["checkpoint"] = str(args.model)
    report["random_weights"] = bool(args.random_weights)
    report["data"] = str(args.data)
    report["format"] = dataset.format
    left_out = ""
    if skipped:
        left_out = (f" ({len(skipped)} unreadable image(s) and their {sum(e['captions'] for e in skipped)} "
                    "caption(s) left out)")
    print(f"{report['model']} on {args.data} ({dataset.format}) [{dataset.split}]: "
          f"{dataset.num_images - len(skipped)} images, {report['ties']['n_texts']} captions{left_out}, "
          f"ties={args.ties}")
    print(format_recall_table(report, args.ties))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {out}")
    if args.dump:
        from priorclip.evaluation.dumps import retrieval_dumps
        from priorclip.evaluation.encode import readable_subset

        kept_images, kept_texts, text_to_image = readable_subset(dataset, [e["image_id"] for e in skipped])
        captions, images = dataset.all_captions, dataset.images
        n = write_dumps(args.dump, retrieval_dumps(scores, text_to_image, [captions[t] for t in kept_texts],
                                                   [images[i] for i in kept_images], topk))
        print(f"{n} per-query records (top {topk}) written to {args.dump}")
    where = f"see skipped in {args.out}" if args.out else "pass --out FILE to list them all"
    return report_skipped("evaluate", [(e["path"], e["reason"]) for e in skipped], where)
