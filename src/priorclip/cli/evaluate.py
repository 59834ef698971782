"""`priorclip evaluate`: retrieval recall of a checkpoint on a Karpathy-layout dataset split."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "retrieval recall (R@1/5/10, mR) of a model on a dataset split"
DESCRIPTION = """\
Encode a dataset split with a model and print R@1/5/10 in both directions and mR (markdown
table, with [pessimistic-optimistic] bounds where tied scores make the rank ambiguous). The JSON
report holds every tie rule and the tie statistics.

--model is a checkpoint directory (written by `priorclip train` or `priorclip convert`) or a
registered model name (random weights: only useful as a chance-level reference).

examples:
  priorclip evaluate --model runs/closed/checkpoints/best --data ucm-captions --split test
  priorclip evaluate --model ckpt/ --data sydney_dataset_karpathy.json --images-root sydney/imgs \\
      --out sydney_test.json --device cuda
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory or registered model name")
    parser.add_argument("--data", required=True, help="Karpathy dataset JSON, or a folder holding one dataset*.json")
    parser.add_argument("--images-root", default=None, help="image folder (default: images/ beside the JSON)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--ties", default="expected", help="tie rule of the printed table (default expected)")
    parser.add_argument("--positives", default="index", choices=["index", "caption-text"],
                        help="caption-text: a caption is also correct for every image with the same caption text")
    parser.add_argument("--out", default=None, help="write the JSON report here")


def load_model_arg(spec: str, device: str = "cpu"):
    """A checkpoint directory, else a registered model name (random weights, with a warning)."""
    from priorclip.models import load_model

    return load_model(spec, device, purpose="evaluating")


def run(args) -> int:
    from priorclip.data.karpathy import KarpathyCaptions
    from priorclip.errors import ConfigError
    from priorclip.evaluation.encode import evaluate_model
    from priorclip.evaluation.metrics import TIE_RULES, format_recall_table

    if args.ties not in TIE_RULES:
        raise ConfigError(f"--ties {args.ties!r}: choose one of {', '.join(TIE_RULES)}")
    model = load_model_arg(args.model, args.device)
    dataset = KarpathyCaptions(args.data, split=args.split, images_root=args.images_root, mode="images")
    report = evaluate_model(model, dataset, batch_size=args.batch_size, device=args.device,
                            workers=args.workers, positives=args.positives)
    report["checkpoint"] = str(args.model)
    report["data"] = str(args.data)
    print(f"{report['model']} on {args.data} [{args.split}]: {dataset.num_images} images, "
          f"{dataset.num_captions} captions, ties={args.ties}")
    print(format_recall_table(report, args.ties))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {out}")
    return 0
