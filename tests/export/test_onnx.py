"""ONNX export of the small open and closed models, checked by running the files with onnxruntime."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("onnx", reason="ONNX export needs the 'onnx' package (pip install onnx onnxruntime)")
pytest.importorskip("onnxruntime", reason="checking ONNX exports needs 'onnxruntime' (pip install onnxruntime)")

import priorclip.models as pm  # noqa: E402
from priorclip.errors import ConfigError, PriorCLIPError  # noqa: E402
from priorclip.export import export_onnx, onnx_session  # noqa: E402
from priorclip.export.onnx import _export  # noqa: E402


MODES_BEFORE: dict[str, dict[str, bool]] = {}  # model name -> each submodule's training flag before export


@pytest.fixture(scope="module", params=["priorclip-open-small", "priorclip-closed-small"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model = pm.create_model(request.param)
    model.train()  # export must not leave it in eval mode
    MODES_BEFORE[request.param] = {name: m.training for name, m in model.named_modules()}
    result = export_onnx(model, tmp_path_factory.mktemp(request.param))
    return model, result


def test_files_and_check(exported):
    model, result = exported
    assert result.image_path.is_file() and result.text_path.is_file()
    assert set(result.max_abs_diff) == {"image", "text"}
    assert all(d <= 1e-4 for d in result.max_abs_diff.values())
    config = json.loads(result.config_path.read_text())
    assert config["model_name"] == model.model_name
    assert config["embed_dim"] == model.embed_dim
    assert config["image_size"] == model.model_config["vision_cfg"]["image_size"]
    assert config["context_length"] == model.tokenize(["x"]).shape[1]
    assert config["mean"] == model.model_config["image_cfg"]["mean"]


def test_training_mode_restored(exported):
    model, _ = exported
    # every submodule as it was (export runs in eval mode; a frozen closed prior stays in eval on purpose)
    before = MODES_BEFORE[model.model_name]
    assert model.training and sum(before.values()) > 10
    assert {name: m.training for name, m in model.named_modules()} == before


def test_dynamic_batch_matches_pytorch(exported):
    """Traced at batch 2; batches 1 and 5 must give PyTorch's unit-length embeddings."""
    model, result = exported
    size = model.model_config["vision_cfg"]["image_size"]
    img_sess, txt_sess = onnx_session(result.image_path), onnx_session(result.text_path)
    model.eval()
    try:
        for batch in (1, 5):
            images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
            tokens = model.tokenize(["a dense residential area with many houses", "a pond"] * 3)[:batch]
            with torch.inference_mode():
                want_img = model.encode_image(images, normalize=True)
                want_txt = model.encode_text(tokens, normalize=True)
            (got_img,) = img_sess.run(None, {"images": images.numpy()})
            (got_txt,) = txt_sess.run(None, {"tokens": tokens.numpy()})
            assert got_img.shape == (batch, model.embed_dim) and got_txt.shape == (batch, model.embed_dim)
            torch.testing.assert_close(torch.from_numpy(got_img), want_img, atol=1e-4, rtol=0)
            torch.testing.assert_close(torch.from_numpy(got_txt), want_txt, atol=1e-4, rtol=0)
            norms = torch.from_numpy(got_img).norm(dim=-1)
            torch.testing.assert_close(norms, torch.ones(batch), atol=1e-5, rtol=0)  # what the index expects
    finally:
        model.train()


class _Ranker(nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=1, descending=True, stable=True).indices


def test_stable_sort_keeps_tie_order(tmp_path):
    """Belief ranking sorts stably; the exported TopK must break ties the same way."""
    path = tmp_path / "rank.onnx"
    _export(_Ranker().eval(), torch.randn(2, 6), path, "x", 17)
    x = torch.tensor([[1.0, 3.0, 3.0, 1.0, 3.0, 2.0], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5], [2.0, 1.0, 2.0, 1.0, 2.0, 1.0]])
    (got,) = onnx_session(path).run(None, {"x": x.numpy()})
    assert got.tolist() == _Ranker()(x).tolist() == [[1, 2, 4, 5, 0, 3], [0, 1, 2, 3, 4, 5], [0, 2, 4, 1, 3, 5]]


class _BatchBaked(nn.Module):
    """A stand-in encoder whose Python branch on the batch size is frozen by tracing."""

    model_config = {"vision_cfg": {"image_size": 8}}

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 8 * 8, 4)

    def encode_image(self, images, normalize=True):
        x = self.lin(images.flatten(1))
        if images.shape[0] == 2:  # traced at batch 2: the ONNX graph always takes this branch
            x = x + 10.0
        return F.normalize(x, dim=-1)

    def encode_text(self, tokens, normalize=True):
        return F.normalize(tokens.float(), dim=-1)

    def tokenize(self, texts):
        return torch.tensor([[len(t) % 7 + 1, len(t) % 5 + 1, 1] for t in texts])


def test_mismatch_is_reported(tmp_path):
    with pytest.raises(PriorCLIPError, match="image encoder .* differs from PyTorch"):
        export_onnx(_BatchBaked(), tmp_path)


def test_needs_image_size(tmp_path):
    model = _BatchBaked()
    model.model_config = {}
    with pytest.raises(ConfigError, match="image_size"):
        export_onnx(model, tmp_path)
    export_onnx(model, tmp_path, image_size=8, check=False)
    assert (tmp_path / "image_encoder.onnx").is_file()


def test_convert_verb_exports_onnx(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    from priorclip.cli.main import main
    from priorclip.models import create_model, save_checkpoint

    save_checkpoint(create_model("priorclip-open-baseline-small"), tmp_path / "ckpt")
    assert main(["convert", str(tmp_path / "ckpt"), "--onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx" / "image_encoder.onnx").is_file() and (tmp_path / "onnx" / "text_encoder.onnx").is_file()
    assert "max |onnx - torch|" in capsys.readouterr().out
