"""`priorclip train`: run or resume a training recipe (YAML under configs/)."""
from __future__ import annotations

import argparse

HELP = "train a model from a YAML recipe (stages prior, closed, pretrain, finetune); resume a run"
DESCRIPTION = """\
Train from a recipe (see configs/*.yaml and docs/TRAINING.md). `--set KEY=VALUE` overrides any
recipe key (dotted keys for nested ones; values are YAML). A run directory gets the resolved
recipe, environment, JSONL log, checkpoints/last (resumable) and checkpoints/best (selected on the
validation split), and test reports of both at the end.

examples:
  priorclip train configs/prior.yaml --set data.path=ucm-captions --out runs/ucm-prior
  priorclip train configs/closed.yaml --set data.path=ucm-captions --set prior_checkpoint=runs/ucm-prior \\
      --out runs/ucm-closed
  priorclip train --resume runs/ucm-closed          # continue an interrupted run exactly
  torchrun --nproc_per_node 4 -m priorclip.cli.main train configs/pretrain.yaml --out runs/pretrain
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default=None, help="recipe YAML (omit with --resume)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set lr=3e-4 --set data.labels=prefix (repeatable)")
    parser.add_argument("--out", default=None, help="run directory (default: the recipe's out_dir)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/last")


def run(args) -> int:
    import logging

    from priorclip.errors import ConfigError
    from priorclip.training.loop import train
    from priorclip.training.recipe import load_recipe

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.resume and args.config:
        raise ConfigError("give either a recipe CONFIG or --resume RUN_DIR (a resumed run uses its saved config.yaml)")
    if not args.resume and not args.config:
        raise ConfigError("a recipe CONFIG (e.g. configs/closed.yaml) or --resume RUN_DIR is required")
    if args.resume:
        run_dir = train(resume=args.resume, sets=args.sets)
    else:
        run_dir = train(load_recipe(args.config, args.sets), out_dir=args.out)
    print(f"run directory: {run_dir}")
    return 0
