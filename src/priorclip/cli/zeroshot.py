"""`priorclip zeroshot`: zero-shot scene classification of a labelled image set with prompted class names."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from priorclip.cli.model_args import add_model_arguments, load_model_arg

HELP = "zero-shot scene classification (top-1/top-5, per-class accuracy, confusions)"
DESCRIPTION = """\
Classify images by cosine similarity to prompted class names: every class name goes through each
prompt template, the class embedding is the normalised mean of the normalised template
embeddings. Prints top-1/top-5, mean per-class accuracy, a per-class table and the most-confused
pairs; --out writes the full JSON report (confusion matrix, unreadable files). Unreadable images
are skipped: the first few are named on stderr and the exit status is 1 (0: every image scored).

--data is a folder of images (scene = parent folder, a labels.csv, or the file-name prefix) or a
Karpathy caption JSON (or a folder holding exactly one dataset*.json).
--split: last20 (default for image folders: the last 20 % of each class, files in natural sort
order, 2.jpg before 10.jpg; lastP for P %), all, or a Karpathy split such as test (default for
Karpathy JSON, so images of the train split a model was trained on are not scored).
--labels: csv:PATH (filename,scene table), prefix (boat_0.tif -> boat), folder (AID/Airport/x.jpg)
or auto (default: labels.csv beside the data, else folder if images sit in sub-folders, else prefix).
--classnames: JSON object mapping label -> prompt name, e.g. '{"storagetanks": "storage tanks"}'
(a file path or inline JSON); other labels are turned into words (underscores, camelCase).

examples:
  priorclip zeroshot --model runs/closed/checkpoints/best --data ucm-captions/images \\
      --labels csv:ucm-captions/labels.csv --classnames ucm_names.json --out ucm_zeroshot.json
  priorclip zeroshot --model ckpt/ --data /data/AID --split all --templates "a satellite photo of {}."
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="image folder, or Karpathy dataset JSON (or a folder holding one)")
    parser.add_argument("--images-root", default=None, help="image folder for a Karpathy JSON (default: images/ beside it)")
    parser.add_argument("--labels", default="auto", help="csv:PATH | prefix | folder | auto (default auto)")
    parser.add_argument("--split", default=None,
                        help="last20 (folders' default), lastP, all, or a Karpathy split (JSON default: test)")
    parser.add_argument("--templates", nargs="+", default=None, metavar="TEMPLATE",
                        help="prompt templates with {} for the class name (default: 4 remote-sensing prompts)")
    parser.add_argument("--templates-file", default=None, help="file with one template per line (# comments)")
    parser.add_argument("--classnames", default=None, help="JSON mapping label -> prompt name (file or inline)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--out", default=None, help="write the JSON report here")


def _karpathy_json(data: Path) -> bool:
    if data.is_file():
        return data.suffix.lower() == ".json"
    return data.is_dir() and len(list(data.glob("dataset*.json"))) == 1


def _auto_labels(data: Path, karpathy: bool) -> str:
    """labels.csv beside the data (a JSON's folder; an image folder, or its parent if named images/),
    else 'folder' when images sit in sub-folders, else 'prefix'."""
    base = data.parent if data.is_file() else data
    candidates = [base / "labels.csv"]
    if not karpathy and base.name == "images":
        candidates.append(base.parent / "labels.csv")
    for c in candidates:
        if c.is_file():
            return f"csv:{c}"
    if karpathy:
        return "prefix"
    from priorclip.data.folder import list_images

    return "folder" if any("/" in f for f in list_images(base)) else "prefix"


def _read_classnames(spec: str | None) -> dict:
    from priorclip.errors import ConfigError

    if spec is None:
        return {}
    text = spec if spec.lstrip().startswith("{") else None
    if text is None:
        p = Path(spec)
        if not p.is_file():
            raise ConfigError(f"--classnames {spec}: file not found (a JSON object label -> prompt name)")
        text = p.read_text(encoding="utf-8")
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--classnames {spec}: not valid JSON ({exc})") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"--classnames {spec}: expected a JSON object mapping label -> prompt name")
    return mapping


def _json_safe(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def run(args) -> int:
    from priorclip.cli.exit_status import report_skipped
    from priorclip.errors import ConfigError
    from priorclip.evaluation.zeroshot import (DEFAULT_TEMPLATES, check_templates, format_zeroshot_table,
                                               last_fraction_indices, parse_split, read_templates_file,
                                               resolve_classnames, zeroshot_classify)

    data = Path(args.data)
    karpathy = _karpathy_json(data)
    split = args.split or ("test" if karpathy else "last20")
    fraction = parse_split(split)
    labels = _auto_labels(data, karpathy) if args.labels == "auto" else args.labels

    templates = list(args.templates or [])
    if args.templates_file:
        templates += read_templates_file(args.templates_file)
    templates = check_templates(templates or DEFAULT_TEMPLATES)
    mapping = _read_classnames(args.classnames)

    if karpathy:
        from priorclip.data.karpathy import KarpathyCaptions

        dataset = KarpathyCaptions(data, split="all" if fraction else split, images_root=args.images_root,
                                   labels=labels, mode="images")
    else:
        from priorclip.data.folder import ImageFolder

        if args.images_root:
            raise ConfigError("--images-root applies to a Karpathy JSON; for a folder, give the folder as --data")
        if fraction is None and split != "all":
            raise ConfigError(f"--split {split!r}: an image folder has no named splits; use last20, lastP or all")
        dataset = ImageFolder(data, labels=labels)
    if not dataset.classes:
        raise ConfigError(f"{data}: no scene labels from --labels {labels!r}; "
                          "use csv:PATH (filename,scene), prefix or folder")
    indices = last_fraction_indices(dataset.images, dataset.labels, fraction) if fraction else None
    classnames = resolve_classnames(dataset.classes, mapping)

    model = load_model_arg(args, purpose="classifying with")
    result = zeroshot_classify(model, dataset, classnames=classnames, templates=templates, indices=indices,
                               batch_size=args.batch_size, workers=args.workers, device=args.device)
    result = {"checkpoint": str(args.model), "random_weights": bool(args.random_weights), "data": str(data),
              "split": split, "label_source": labels, "labels": dataset.classes, **result}
    print(f"{result['model']} on {data} [{split}, labels {labels}]: {result['n_classified']} images classified, "
          f"{len(classnames)} classes, {len(templates)} templates")
    print(format_zeroshot_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_json_safe(result), indent=2) + "\n")
        print(f"report written to {out}")
    where = f"see bad_files in {args.out}" if args.out else "pass --out FILE to list them all"
    return report_skipped("zeroshot", [(b["path"], b["reason"]) for b in result["bad_files"]], where)
