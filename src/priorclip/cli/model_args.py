"""`--model` and `--random-weights`, the same for every verb that builds a model from its argument
(index, evaluate, zeroshot); the rule is `priorclip.model_spec`'s."""
from __future__ import annotations

MODEL_HELP = ("checkpoint directory (written by `priorclip train` or `priorclip convert`); a model name only "
              "with --random-weights")
RANDOM_WEIGHTS_HELP = ("accept a model name (`priorclip models`) and build it with seeded random weights "
                       "(repeatable, chance-level: for trying the pipeline)")


def add_model_arguments(parser, required: bool = True) -> None:
    parser.add_argument("--model", required=required, help=MODEL_HELP)
    parser.add_argument("--random-weights", action="store_true", help=RANDOM_WEIGHTS_HELP)


def load_model_arg(args, purpose: str):
    """The model of `args.model` / `args.random_weights` on `args.device`."""
    from priorclip.model_spec import load_model_spec

    return load_model_spec(args.model, args.device, random_weights=args.random_weights, purpose=purpose)


def warn_random_index(verb: str, index) -> None:
    """Say on stderr that a `priorclip.search.query.SearchIndex` was built with --random-weights."""
    import sys

    model = index.info.get("model", {})
    if model.get("random_weights"):
        print(f"priorclip {verb}: warning: {index.directory} was built with --random-weights (model "
              f"{model.get('name')!r}): its rankings repeat but are chance-level; index with a trained "
              "checkpoint directory for real results", file=sys.stderr)
