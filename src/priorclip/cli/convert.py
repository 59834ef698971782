"""`priorclip convert`: turn the authors' released checkpoints into PriorCLIP checkpoints."""
from __future__ import annotations

from pathlib import Path

HELP = "convert a released PIR/PriorCLIP checkpoint (or export ours) to a PriorCLIP checkpoint directory"
DESCRIPTION = """\
Read a released checkpoint (the PIR closed-domain .pth, or the PriorCLIP open_clip-style .pt),
map its parameter names onto ours strictly, and write a PriorCLIP checkpoint directory
(model.safetensors + config.json) that every other verb accepts.

Released files are pickles: they are refused unless you pass --allow-pickle (then read with
torch.load(weights_only=True), which does not run arbitrary code).

examples:
  priorclip convert PriorCLIP_RET-3.pt --kind open --allow-pickle --out ckpt/priorclip-open
  priorclip convert pir_rsitmd.pth --kind closed --vocab bert-base-uncased/vocab.txt --allow-pickle --out ckpt/pir
  priorclip convert ckpt/priorclip-open --open-clip-state-dict --out priorclip-open.safetensors
  priorclip convert ckpt/priorclip-open --onnx --out onnx/priorclip-open   # image_encoder.onnx + text_encoder.onnx
"""


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="released checkpoint file, or our checkpoint directory with --open-clip-state-dict")
    parser.add_argument("--kind", choices=["closed", "open"], help="closed (PIR layout) or open (PriorCLIP open_clip layout)")
    parser.add_argument("--config", default=None, help="model name or JSON file (default: priorclip-KIND, the paper config)")
    parser.add_argument("--vocab", default=None, help="WordPiece vocab.txt for closed models (bert-base-uncased's for PIR)")
    parser.add_argument("--allow-pickle", action="store_true", help="accept a pickled .pt/.pth (read weights-only)")
    parser.add_argument("--open-clip-state-dict", action="store_true",
                        help="export OUR open-domain checkpoint as a plain open_clip-style safetensors state dict")
    parser.add_argument("--onnx", action="store_true",
                        help="export OUR checkpoint's image and text encoders to ONNX (checked against PyTorch with onnxruntime)")
    parser.add_argument("--out", required=True, help="output checkpoint directory (or .safetensors file for the export)")


def run(args) -> int:
    import json

    from safetensors.torch import save_file

    from priorclip.errors import ConfigError
    from priorclip.models import (create_model, export_open_clip_state_dict, load_checkpoint,
                                  load_official_checkpoint, save_checkpoint)

    if args.onnx:
        from priorclip.export import export_onnx

        result = export_onnx(load_checkpoint(args.checkpoint), args.out)
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in result.max_abs_diff.items())
        print(f"wrote {result.image_path}, {result.text_path} and {result.config_path} (max |onnx - torch|: {diffs})")
        return 0
    if args.open_clip_state_dict:
        model = load_checkpoint(args.checkpoint)
        state = {k: v.contiguous() for k, v in export_open_clip_state_dict(model).items()}
        save_file(state, args.out, metadata={"format": "pt", "priorclip_config": json.dumps(model.model_config)})
        print(f"wrote open_clip-style state dict ({len(state)} tensors) to {args.out}")
        return 0
    if args.kind is None:
        raise ConfigError("--kind closed|open is required to convert a released checkpoint")
    config = args.config
    if config and Path(config).is_file():
        config = json.loads(Path(config).read_text())
    name = config or f"priorclip-{args.kind}"
    model = create_model(name, vocab_file=args.vocab) if args.kind == "closed" else create_model(name)
    model = load_official_checkpoint(args.checkpoint, args.kind, model=model, allow_pickle=args.allow_pickle)
    save_checkpoint(model, args.out, extra={"converted_from": str(args.checkpoint)})
    print(f"converted {args.checkpoint} -> {args.out} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0
