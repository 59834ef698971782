"""ONNX export of a PriorCLIP model's image and text encoders, checked with onnxruntime.

Each encoder becomes one file whose graph is the model's own `encode_image` / `encode_text` with
`normalize=True`, so the outputs are the unit-length embeddings retrieval compares. The batch axis
is dynamic; image size and text length are fixed at export (the model's `image_size` and the
tokenizer's context length), except for a tokenizer that pads to the batch's longest caption (the
released PIR preprocessing, `text_cfg.padding: longest`): its text length axis is dynamic too, and
the check runs a batch of another length. Tokenisation stays in Python (`model.tokenize`): it is
string work that ONNX does not express well.

The exporter tried first is TorchScript-based (`dynamo=False`): it needs only `onnx`, while the
dynamo exporter also needs `onnxscript`. The dynamo exporter is the fallback when the first fails.
Every export is then run by onnxruntime on a batch size different from the one traced (which
proves the batch axis really is dynamic) and compared with PyTorch.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, PriorCLIPError

_EXPORT_TEXTS = ["a runway next to a green field", "many buildings"]
_CHECK_TEXTS = ["an airport", "a river crosses the farmland with several bridges over it", "a baseball field"]


class ImageEncoder(nn.Module):
    """(B, 3, H, W) float images -> (B, D) unit-length embeddings."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, normalize=True)


class TextEncoder(nn.Module):
    """(B, L) int64 token ids -> (B, D) unit-length embeddings."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=True)


@dataclass
class OnnxExport:
    """What `export_onnx` wrote, and how closely onnxruntime reproduced PyTorch."""

    image_path: Path
    text_path: Path
    config_path: Path
    exporter: dict[str, str] = field(default_factory=dict)  # encoder -> "torchscript" or "dynamo"
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # encoder -> max |onnx - torch|; empty if unchecked


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for an exported encoder (`threads`: intra-op threads, default torch's)."""
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, out_dir: str | Path, image_size: int | None = None, opset: int = 17, *,
                check: bool = True, atol: float = 1e-4) -> OnnxExport:
    """Write `image_encoder.onnx`, `text_encoder.onnx` and `onnx_config.json` into `out_dir`.

    `image_size` defaults to the model's `vision_cfg.image_size`. With `check` (the default) each
    file is run by onnxruntime and must match PyTorch within `atol` (absolute, on unit-length
    embeddings), else PriorCLIPError. The model is exported in eval mode and its training mode is
    restored afterwards.
    """
    try:
        import onnx  # noqa: F401  (the TorchScript exporter needs it to write the file)
    except ImportError:
        raise PriorCLIPError("ONNX export needs the 'onnx' package: pip install onnx onnxruntime") from None
    if check:
        _import_onnxruntime()
    if image_size is None:
        image_size = (getattr(model, "model_config", {}) or {}).get("vision_cfg", {}).get("image_size")
        if image_size is None:
            raise ConfigError("export_onnx: the model config has no vision_cfg.image_size; pass image_size=")
    params = next(model.parameters(), None)
    dtype = params.dtype if params is not None else torch.float32
    if dtype != torch.float32:
        raise ConfigError(f"export_onnx exports float32 models; this one is {dtype}: call model.float() first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = OnnxExport(out / "image_encoder.onnx", out / "text_encoder.onnx", out / "onnx_config.json")

    was_training = model.training
    # Wrappers in eval mode: torch.onnx.export restores the wrapper's mode afterwards, which
    # would otherwise put the model (BatchNorm, dropout) into training mode for the check.
    image_encoder, text_encoder = ImageEncoder(model).eval(), TextEncoder(model).eval()
    try:
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(2, 3, image_size, image_size, generator=gen)
        tokens = model.tokenize(_EXPORT_TEXTS)
        result.exporter["image"] = _export(image_encoder, images, result.image_path, "images", opset)
        longest = getattr(getattr(model, "tokenizer", None), "padding", None) == "longest"
        result.exporter["text"] = _export(text_encoder, tokens, result.text_path, "tokens", opset, dynamic_length=longest)
        if check:
            check_images = torch.randn(3, 3, image_size, image_size, generator=gen)
            check_tokens = model.tokenize(_CHECK_TEXTS)
            result.max_abs_diff["image"] = _compare(image_encoder, check_images, result.image_path, "image", atol)
            result.max_abs_diff["text"] = _compare(text_encoder, check_tokens, result.text_path, "text", atol)
    finally:
        model.train(was_training)

    icfg = (getattr(model, "model_config", {}) or {}).get("image_cfg", {})
    config = {
        "model_name": getattr(model, "model_name", type(model).__name__),
        "embed_dim": getattr(model, "embed_dim", None),
        "image_size": image_size,
        "context_length": int(getattr(getattr(model, "tokenizer", None), "context_length", tokens.shape[1])),
        "padding": getattr(getattr(model, "tokenizer", None), "padding", "max_length"),
        "mean": icfg.get("mean"),
        "std": icfg.get("std"),
        "resize_mode": icfg.get("resize_mode", "shortest"),
        "preprocess": (getattr(model, "model_config", {}) or {}).get("preprocess", "ours"),
        "opset": opset,
        "inputs": {"image": "images float32 (batch, 3, image_size, image_size), normalised with mean/std",
                   "text": "tokens int64 (batch, context_length) from model.tokenize (padding 'longest': "
                           "(batch, length of the batch's longest caption, at most context_length))"},
        "outputs": "embeddings float32 (batch, embed_dim), unit length",
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items() if k != "config_path"},
    }
    result.config_path.write_text(json.dumps(config, indent=2) + "\n")
    return result


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise PriorCLIPError("checking an ONNX export needs 'onnxruntime': pip install onnxruntime "
                             "(or pass check=False to export unchecked)") from None
    return onnxruntime


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, opset: int,
            dynamic_length: bool = False) -> str:
    """Export with the TorchScript exporter, falling back to dynamo; returns which one worked.
    `dynamic_length`: axis 1 of the input (token positions) is dynamic as well as the batch."""
    errors = []
    axes = {0: "batch", 1: "length"} if dynamic_length else {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad(), _stable_sort_symbolic(opset), _no_mha_fastpath():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=["embeddings"],
                              dynamic_axes={input_name: axes, "embeddings": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        return "torchscript"
    except Exception as exc:  # noqa: BLE001 - any exporter failure means: try the other exporter
        errors.append(f"torchscript: {type(exc).__name__}: {exc}")
    try:
        shapes = {0: torch.export.Dim("batch", min=1)}
        if dynamic_length:
            shapes[1] = torch.export.Dim("length", min=2)
        with torch.no_grad(), _no_mha_fastpath():
            program = torch.onnx.export(module, (example,), input_names=[input_name], output_names=["embeddings"],
                                        dynamic_shapes=(shapes,), opset_version=opset, dynamo=True)
        program.save(str(path))
        return "dynamo"
    except Exception as exc:  # noqa: BLE001
        errors.append(f"dynamo: {type(exc).__name__}: {exc}")
    raise PriorCLIPError(f"could not export {type(module).__name__} to {path}: " + " | ".join(e[:300] for e in errors))


@contextlib.contextmanager
def _no_mha_fastpath():
    """nn.MultiheadAttention's inference fast path is one fused op no exporter knows; use the plain path."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


@contextlib.contextmanager
def _stable_sort_symbolic(opset: int):
    """Teach the TorchScript exporter `torch.sort(..., stable=True)` for the duration of one export.

    The belief ranking sorts stably (ties keep token order). The exporter's own `aten::sort`
    symbolic does not know the `stable` overload and fails on it. ONNX TopK with k = the full axis
    is a stable sort: its spec breaks ties by the lower index first, so it is exact here.
    """
    from torch.onnx import symbolic_helper

    def sort(g, self, *args):
        if len(args) == 3:  # sort.stable(self, *, stable, dim, descending)
            _, dim, descending = args
        else:  # sort(self, dim, descending)
            dim, descending = args[0], args[1]
        dim = symbolic_helper._get_const(dim, "i", "dim")
        descending = symbolic_helper._get_const(descending, "i", "descending")
        k = g.op("Gather", g.op("Shape", self), g.op("Constant", value_t=torch.tensor([dim], dtype=torch.int64)))
        return g.op("TopK", self, k, axis_i=dim, largest_i=int(descending), sorted_i=1, outputs=2)

    torch.onnx.register_custom_op_symbolic("aten::sort", sort, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::sort", opset)


def _compare(module: nn.Module, example: torch.Tensor, path: Path, what: str, atol: float) -> float:
    session = onnx_session(path)
    (got,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    with torch.inference_mode():
        want = module(example)
    if tuple(got.shape) != tuple(want.shape):
        raise PriorCLIPError(f"ONNX {what} encoder {path} returned shape {tuple(got.shape)} for batch "
                             f"{example.shape[0]}, PyTorch {tuple(want.shape)}: the batch axis is not dynamic")
    diff = float((torch.from_numpy(got) - want).abs().max())
    if not diff <= atol:
        raise PriorCLIPError(f"ONNX {what} encoder {path} differs from PyTorch by {diff:.2e} (> {atol:.0e}); "
                             f"try another opset or report the model name")
    return diff
