"""`priorclip evaluate` and `encode_dataset` on a hand-made Karpathy dataset with a tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import priorclip.models as pm
from priorclip.cli.main import main
from priorclip.data.karpathy import KarpathyCaptions
from priorclip.evaluation.encode import encode_dataset, evaluate_model
from priorclip.evaluation.metrics import recall_report, similarity_matrix

TINY = {"embed_dim": 32, "pae_cfg": {"filter_size": 4, "heads": 4},
        "vision_cfg": {"image_size": 64, "backbone_kwargs": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}},
        "text_cfg": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}}


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory):
    """5 test images (solid colours) with 2 captions each, one caption repeated across images."""
    root = tmp_path_factory.mktemp("kp")
    (root / "images").mkdir()
    colours = ["red", "green", "blue", "white", "black"]
    rgb = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (240, 240, 240), (10, 10, 10)]
    images = []
    for i, (name, c) in enumerate(zip(colours, rgb)):
        Image.new("RGB", (40, 40), c).save(root / "images" / f"{name}_{i}.png")
        images.append({"filename": f"{name}_{i}.png", "split": "test",
                       "sentences": [{"raw": f"a {name} square"}, {"raw": "an aerial image"}]})
    images.append({"filename": "red_0.png", "split": "train", "sentences": [{"raw": "x"}]})
    (root / "dataset.json").write_text(json.dumps({"images": images}))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = pm.create_model("priorclip-closed-small", **TINY)
    return pm.save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "m")


def test_encode_dataset_shapes_and_ties(karpathy, checkpoint):
    model = pm.load_checkpoint(checkpoint)
    model.train()
    ds = KarpathyCaptions(karpathy, split="test")  # "pairs" mode: encode uses its images view
    img, txt, t2i = encode_dataset(model, ds, batch_size=2, workers=0)
    assert img.shape == (5, 32) and txt.shape == (10, 32) and img.dtype == torch.float32
    assert t2i.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert torch.allclose(img.norm(dim=1), torch.ones(5), atol=1e-5)
    # the repeated caption is encoded once: bit-identical rows
    assert all(torch.equal(txt[1], txt[j]) for j in (3, 5, 7, 9))
    assert model.training  # mode restored
    # images are the real encodings, in image-id order
    model.eval()
    with torch.inference_mode():
        x = model.image_transform()(Image.open(karpathy / "images" / "blue_2.png").convert("RGB"))[None]
        assert torch.allclose(model.encode_image(x)[0], img[2], atol=1e-5)


def test_evaluate_cli_prints_table_and_writes_report(karpathy, checkpoint, tmp_path, capsys):
    out = tmp_path / "r" / "report.json"
    rc = main(["evaluate", "--model", str(checkpoint), "--data", str(karpathy), "--split", "test",
               "--workers", "0", "--batch-size", "3", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| i2t R@1 |" in printed and "mR" in printed
    report = json.loads(out.read_text())
    assert set(report) >= {"expected", "optimistic", "pessimistic", "index", "released", "ties"}
    # same numbers as computing them directly from the embeddings
    model = pm.load_checkpoint(checkpoint)
    img, txt, t2i = encode_dataset(model, KarpathyCaptions(karpathy, split="test"), batch_size=5)
    direct = recall_report(similarity_matrix(img, txt), t2i, captions=KarpathyCaptions(karpathy, "test").all_captions)
    for rule in ("expected", "optimistic", "pessimistic"):
        assert report[rule] == pytest.approx(direct[rule])
    # with 5 images every image is within the top 5 texts' images: t2i R@5 is 100
    assert report["expected"]["t2i_r5"] == pytest.approx(100.0)
    assert report["ties"]["n_images"] == 5 and report["ties"]["n_texts"] == 10


def test_evaluate_model_perfect_model_scores_100(karpathy):
    """A model whose embeddings identify each image and its own caption gets R@1 = 100."""
    rgb = torch.tensor([(200, 30, 30), (30, 200, 30), (30, 30, 200), (240, 240, 240), (10, 10, 10)], dtype=torch.float32)
    names = ["red", "green", "blue", "white", "black"]

    class Oracle(torch.nn.Module):
        embed_dim, model_name = 8, "oracle"

        def image_transform(self, train=False):  # image -> its mean colour
            return lambda im: torch.tensor(np.asarray(im, dtype=np.float32).mean(axis=(0, 1)))

        def encode_image(self, x, normalize=True):  # one-hot of the nearest known colour
            return torch.nn.functional.one_hot(torch.cdist(x, rgb).argmin(1), 8).float()

        def tokenize(self, texts):  # colour named in the caption, else 7
            return torch.tensor([next((i for i, n in enumerate(names) if n in t), 7) for t in texts])

        def encode_text(self, tokens, normalize=True):
            return torch.nn.functional.one_hot(tokens, 8).float() + 0.01

    oracle = Oracle()
    report = evaluate_model(oracle, KarpathyCaptions(karpathy, split="test"), batch_size=2)
    assert report["expected"]["i2t_r1"] == pytest.approx(100.0)
    # the shared caption "an aerial image" ties across all 5 images: expected t2i R@1 = (5 x 100 + 5 x 20) / 10
    assert report["expected"]["t2i_r1"] == pytest.approx(60.0)
    assert report["pessimistic"]["t2i_r1"] == pytest.approx(50.0)


def test_evaluate_cli_errors_are_one_line(karpathy, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--data", str(karpathy)]) == 2
    assert "neither a checkpoint directory nor a registered model name" in capsys.readouterr().err
    assert main(["evaluate", "--model", "priorclip-closed-small", "--data", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
