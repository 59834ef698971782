"""`priorclip` command line: one verb per module in this package, each a thin layer over library code.

A verb module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, the exit
status of the convention in `exit_status` (0 clean, 1 inputs skipped, 2 error). Verbs are
imported lazily so `priorclip --help` stays fast and one broken optional dependency cannot take
down every verb.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from priorclip.cli import exit_status
from priorclip.cli.invocation import priorclip_command

# verb -> module; order is the order shown by --help (the pipeline order a user follows).
VERBS = {
    "demo": "priorclip.cli.demo",
    "models": "priorclip.cli.models",
    "train": "priorclip.cli.train",
    "evaluate": "priorclip.cli.evaluate",
    "zeroshot": "priorclip.cli.zeroshot",
    "data": "priorclip.cli.data",
    "index": "priorclip.cli.index",
    "search": "priorclip.cli.search",
    "serve": "priorclip.cli.serve",
    "convert": "priorclip.cli.convert",
}


def _load_verbs():
    loaded = {}
    for verb, module_name in VERBS.items():
        try:
            loaded[verb] = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # verb not implemented in this build
                continue
            raise
    return loaded


def build_parser(verbs=None) -> argparse.ArgumentParser:
    verbs = _load_verbs() if verbs is None else verbs
    parser = argparse.ArgumentParser(
        prog="priorclip",
        description="PriorCLIP: remote sensing image-text retrieval. Train and evaluate models,\n"
        "index an image archive and search it by text or image.",
        epilog=f"Run `{priorclip_command()} VERB --help` for each verb's options and examples.\n\n"
        + exit_status.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, module in verbs.items():
        p = sub.add_parser(
            verb,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    from priorclip.errors import PriorCLIPError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return exit_status.ERROR
    try:
        return int(args._run(args) or exit_status.OK)
    except PriorCLIPError as exc:
        print(f"priorclip {args.verb}: error: {exc}", file=sys.stderr)
        return exit_status.ERROR
    except KeyboardInterrupt:
        print(f"priorclip {args.verb}: interrupted", file=sys.stderr)
        return exit_status.INTERRUPTED
    except OSError as exc:  # e.g. a full disk while writing --out: the message names the file
        print(f"priorclip {args.verb}: error: {exc}", file=sys.stderr)
        return exit_status.ERROR
    except Exception:  # a bug: keep the traceback, but do not exit 1 (that means "inputs skipped")
        traceback.print_exc()
        print(f"priorclip {args.verb}: error: unexpected failure (a bug; please report it with the "
              "traceback above)", file=sys.stderr)
        return exit_status.ERROR


if __name__ == "__main__":
    sys.exit(main())
