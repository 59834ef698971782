"""`priorclip models`: list the named architectures and their sizes."""
from __future__ import annotations

import json

HELP = "list named model architectures (and build one to count its parameters)"
DESCRIPTION = """\
List the named model configs that `--model NAME` and `priorclip.create_model(NAME)` accept.

examples:
  priorclip models                              # names and architectures
  priorclip models --show priorclip-closed      # the full JSON config
  priorclip models --count priorclip-open-small # build it (random weights) and count parameters
"""


def add_arguments(parser) -> None:
    parser.add_argument("--show", metavar="NAME", help="print the JSON config of one model")
    parser.add_argument("--count", metavar="NAME", help="build the model and print its parameter counts")


def run(args) -> int:
    from priorclip.models import create_model, get_model_config, list_models

    if args.show:
        print(json.dumps(get_model_config(args.show), indent=2))
        return 0
    if args.count:
        model = create_model(args.count)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{args.count}: {total:,} parameters ({trainable:,} trainable), embed_dim {model.embed_dim}")
        return 0
    print(f"{'name':36s} {'architecture':16s} embed  image")
    for name in list_models():
        cfg = get_model_config(name)
        print(f"{name:36s} {cfg['architecture']:16s} {cfg['embed_dim']:5d}  {cfg['vision_cfg'].get('image_size', '?')}")
    return 0
