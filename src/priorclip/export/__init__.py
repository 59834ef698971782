"""Export PriorCLIP encoders to deployment formats (ONNX), each export checked against PyTorch.

    from priorclip.export import export_onnx
    paths = export_onnx(model, "exported/")   # image_encoder.onnx, text_encoder.onnx, onnx_config.json

`onnx` is needed to export and `onnxruntime` to check the export; both are imported lazily, so
`import priorclip.export` works without them.
"""
from .onnx import ImageEncoder, OnnxExport, TextEncoder, export_onnx, onnx_session

__all__ = ["ImageEncoder", "OnnxExport", "TextEncoder", "export_onnx", "onnx_session"]
