"""ONNX export of a model with the released PIR text preprocessing: captions padded to the batch's
longest, so the exported text encoder takes any length up to the context length."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs the 'onnx' package (pip install onnx onnxruntime)")
pytest.importorskip("onnxruntime", reason="checking ONNX exports needs 'onnxruntime' (pip install onnxruntime)")

import priorclip.models as pm  # noqa: E402
from priorclip.export import export_onnx, onnx_session  # noqa: E402


def test_released_closed_model_exports_with_a_dynamic_text_length(tmp_path):
    torch.manual_seed(0)
    model = pm.create_model("priorclip-closed-small", preprocess="released").eval()
    result = export_onnx(model, tmp_path)  # its check already runs a batch of another length
    assert all(d <= 1e-4 for d in result.max_abs_diff.values())
    config = json.loads(result.config_path.read_text())
    assert (config["padding"], config["context_length"], config["resize_mode"], config["preprocess"]) == \
        ("longest", 47, "squash", "released")
    session = onnx_session(result.text_path)
    for texts in (["a"], ["a plane parked near the runway", "b"]):
        tokens = model.tokenize(texts)
        got = session.run(None, {"tokens": tokens.numpy()})[0]
        with torch.no_grad():
            want = model.encode_text(tokens).numpy()
        assert abs(got - want).max() <= 1e-4
