"""`priorclip evaluate`, `encode_dataset`, format detection and per-query dumps on hand-made datasets
(Karpathy, precomp, CSV) with tiny models, and detection of the real benchmark caption files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import priorclip.models as pm
from priorclip.cli.evaluate import detect_format, open_dataset
from priorclip.cli.main import main
from priorclip.data.karpathy import KarpathyCaptions
from priorclip.errors import ConfigError, DatasetNotFoundError
from priorclip.evaluation.dumps import retrieval_dumps
from priorclip.evaluation.encode import encode_dataset, evaluate_model
from priorclip.evaluation.metrics import recall_metrics, recall_report, similarity_matrix

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
    assert main(["evaluate", "--model", "priorclip-closed-small", "--random-weights", "--data", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


# ---- data formats, image errors, per-query dumps ------------------------------------------------

CAPTIONS = {"1.tif": ["many buildings", "a dense residential area"],
            "2.tif": ["a river with a bridge", "many buildings"],
            "3.tif": ["green farmland", "square fields"],
            "4.tif": ["an airport with planes", "a runway"]}


@pytest.fixture(scope="module")
def three_layouts(tmp_path_factory):
    """The same 4-image test split as precomp, CSV and Karpathy files; images are noise PNGs
    (caption files say .tif, as RSITMD/UCM/Sydney ones do)."""
    root = tmp_path_factory.mktemp("layouts")
    images = root / "pngs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in CAPTIONS:
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(images / name.replace(".tif", ".png"))
    pre = root / "toy_precomp"
    pre.mkdir()
    pairs = [(n, c) for n, caps in CAPTIONS.items() for c in caps]
    (pre / "test_caps.txt").write_text("".join(c + "\n" for _, c in pairs))
    (pre / "test_filename.txt").write_text("".join(n + "\n" for n, _ in pairs))
    (pre / "train_caps.txt").write_text("x\n")
    (pre / "train_filename.txt").write_text("1.tif\n")
    csv_file = root / "toy_test.csv"
    csv_file.write_text("filename,title\n" + "".join(f"data/toy/{n},{c}\n" for n, c in pairs))
    kp = root / "kp"
    kp.mkdir()
    (kp / "dataset_toy.json").write_text(json.dumps({"images": [
        {"filename": n, "split": "test", "sentences": [{"raw": c} for c in caps]} for n, caps in CAPTIONS.items()]
        + [{"filename": "1.tif", "split": "train", "sentences": [{"raw": "x"}]}]}))
    return {"root": root, "images": images, "precomp": pre, "csv": csv_file, "karpathy": kp}


def test_detect_format_and_open_every_layout(three_layouts):
    t = three_layouts
    assert detect_format(t["precomp"]) == ("precomp", t["precomp"], "test")
    assert detect_format(t["precomp"], "train") == ("precomp", t["precomp"], "train")
    assert detect_format(t["precomp"] / "train_caps.txt") == ("precomp", t["precomp"], "train")
    assert detect_format(t["csv"]) == ("csv", t["csv"], "test")
    assert detect_format(t["karpathy"]) == ("karpathy", t["karpathy"], "test")
    assert detect_format(t["karpathy"] / "dataset_toy.json", "val")[0] == "karpathy"
    opened = [open_dataset(t[f], images_root=t["images"]) for f in ("precomp", "csv", "karpathy")]
    for ds, fmt in zip(opened, ("precomp", "csv", "karpathy")):
        assert ds.format == fmt and ds.mode == "images"
        assert ds.all_captions == [c for caps in CAPTIONS.values() for c in caps]
        assert ds.text_to_image == [0, 0, 1, 1, 2, 2, 3, 3]
        # 1.tif is found as 1.png
        assert [Path(p).name for p in ds.paths] == ["1.png", "2.png", "3.png", "4.png"]
    # explicit --format agrees with auto
    assert open_dataset(t["precomp"], "precomp", images_root=t["images"]).images == opened[0].images


def test_detect_format_errors(three_layouts, tmp_path):
    t = three_layouts
    with pytest.raises(DatasetNotFoundError, match="no such file"):
        detect_format(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="no val_caps.txt.*split\\(s\\) test, train"):
        detect_format(t["precomp"], "val")
    with pytest.raises(ConfigError, match="'train' split but --split is 'test'"):
        detect_format(t["precomp"] / "train_caps.txt", "test")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="--format"):
        detect_format(tmp_path / "notes.txt")
    with pytest.raises(DatasetNotFoundError, match="dataset folders kp, toy_precomp: pass one of them"):
        detect_format(t["root"])  # the folder above the dataset folders
    both = tmp_path / "both"
    both.mkdir()
    (both / "dataset.json").write_text("{}")
    (both / "test_caps.txt").write_text("a\n")
    with pytest.raises(ConfigError, match="several layouts \\(karpathy, precomp\\)"):
        detect_format(both)


def test_missing_images_name_files_and_flag(three_layouts, tmp_path):
    t = three_layouts
    # no images/ beside the caption file and no --images-root
    with pytest.raises(DatasetNotFoundError, match=r"image folder missing.*4 images \(1.tif, 2.tif, 3.tif ...\)"
                       r".*pass --images-root") as exc:
        open_dataset(t["precomp"])
    assert exc.value.missing == [str(t["precomp"] / "images")]
    # an image folder lacking one image
    partial = tmp_path / "partial"
    partial.mkdir()
    for n in ("1.png", "2.png", "4.png"):
        (partial / n).write_bytes((t["images"] / n).read_bytes())
    with pytest.raises(DatasetNotFoundError, match=r"1 image\(s\) not found under --images-root .*partial: 3.tif;"):
        open_dataset(t["csv"], images_root=partial)
    with pytest.raises(DatasetNotFoundError, match="--images-root .*nowhere: no such folder"):
        open_dataset(t["csv"], images_root=tmp_path / "nowhere")


REAL = {  # path under annotations/ -> (format, split, images, captions)
    "rsicd_precomp": ("precomp", "test", 1093, 5465),
    "rsitmd_precomp": ("precomp", "test", 452, 2260),
    "sydney_precomp": ("precomp", "test", 58, 290),
    "ucm_precomp": ("precomp", "test", 210, 1050),
    "csv/rsicd_test.csv": ("csv", "test", 1093, 5465),
    "csv/rsitmd_test.csv": ("csv", "test", 452, 2260),
    "sydney_dataset_karpathy.json": ("karpathy", "test", 58, 290),
}


def test_real_caption_files_detected_without_images(annotations_dir, capsys):
    for rel, (fmt, split, n_img, n_txt) in REAL.items():
        assert detect_format(annotations_dir / rel)[::2] == (fmt, split), rel
        ds = open_dataset(annotations_dir / rel, require_images=False)
        assert (ds.format, ds.num_images, ds.num_captions) == (fmt, n_img, n_txt), rel
        assert ds.paths is None
    # the CLI fails before building the model, naming the missing image folder and the flag
    rc = main(["evaluate", "--model", "priorclip-open-baseline-small", "--random-weights", "--data", str(annotations_dir / "rsitmd_precomp")])
    err = capsys.readouterr().err
    assert rc == 2 and "image folder missing" in err and "boat_0.tif" in err
    assert str(annotations_dir / "rsitmd_precomp" / "images") in err and "--images-root" in err


def test_real_ucm_precomp_is_the_karpathy_val_split(annotations_dir, ucm_dir):
    """UCM's AMFMN precomp "test" is dataset.json's val split; its .tif names find the .jpg files."""
    pre = open_dataset(annotations_dir / "ucm_precomp", images_root=ucm_dir / "images")
    val = open_dataset(ucm_dir, split="val")
    assert [Path(p).name for p in pre.paths] == [Path(p).name for p in val.paths]
    assert pre.paths[0].endswith("91.jpg") and pre.num_captions == val.num_captions == 1050


def test_retrieval_dumps_hand_matrix():
    s = np.array([[0.9, 0.1, 0.5, 0.9, 0.2],    # image 0 (texts 0, 1): a wrong text ties, listed after
                  [0.7, 0.3, 0.3, 0.2, 0.7],    # image 1 (texts 2, 3): two above, wrong text 1 ties before
                  [0.2, 0.2, 0.2, 0.2, 0.2]],   # image 2 (text 4): everything tied
                 dtype=np.float32)
    t2i = [0, 0, 1, 1, 2]
    caps = ["c0", "c1", "c2", "c3", "c4"]
    files = ["a.png", "b.png", "c.png"]
    recs = list(retrieval_dumps(s, t2i, caps, files, k=3))
    assert [r["direction"] for r in recs] == ["i2t"] * 3 + ["t2i"] * 5
    assert [r["query_index"] for r in recs] == [0, 1, 2, 0, 1, 2, 3, 4]
    i2t, t2i_recs = recs[:3], recs[3:]
    assert [r["query"] for r in i2t] == files and [r["query"] for r in t2i_recs] == caps
    assert [r["ground_truth"] for r in i2t] == [[0, 1], [2, 3], [4]]
    assert [r["ground_truth"] for r in t2i_recs] == [[0], [0], [1], [1], [2]]
    assert [[e["id"] for e in r["top"]] for r in i2t] == [[0, 3, 2], [0, 4, 1], [0, 1, 2]]
    assert [(r["rank"], r["tie_group"]) for r in i2t] == [(1, 2), (4, 2), (5, 5)]
    first = i2t[0]["top"]
    assert first[0] == {"id": 0, "score": pytest.approx(0.9), "text": "c0", "correct": True}
    assert [e["correct"] for e in first] == [True, False, False] and first[1]["text"] == "c3"
    assert [[e["id"] for e in r["top"]] for r in t2i_recs] == [[0, 1, 2], [1, 2, 0], [0, 1, 2], [0, 1, 2], [1, 0, 2]]
    assert [(r["rank"], r["tie_group"]) for r in t2i_recs] == [(1, 1), (3, 1), (2, 1), (2, 2), (3, 2)]
    assert t2i_recs[4]["top"][0] == {"id": 1, "score": pytest.approx(0.7), "filename": "b.png", "correct": False}
    # rank agrees with the index tie rule of the metrics, at every K
    for k in (1, 2, 3, 4, 5):
        m = recall_metrics(s, t2i, ks=(k,), ties="index")
        assert m[f"i2t_r{k}"] == pytest.approx(100 * np.mean([r["rank"] <= k for r in i2t]))
        assert m[f"t2i_r{k}"] == pytest.approx(100 * np.mean([r["rank"] <= k for r in t2i_recs]))
    # K above the number of items gives every item; bad inputs are named
    assert len(next(retrieval_dumps(s, t2i, caps, files, k=10))["top"]) == 5
    with pytest.raises(ConfigError):
        next(retrieval_dumps(s, t2i, caps, files, k=0))
    with pytest.raises(ValueError, match="filenames has 2 entries"):
        next(retrieval_dumps(s, t2i, caps, files[:2], k=3))


def test_evaluate_cli_precomp_with_dump(three_layouts, tmp_path, capsys):
    t = three_layouts
    out, dump = tmp_path / "report.json", tmp_path / "d" / "dump.jsonl"
    rc = main(["evaluate", "--model", "priorclip-open-baseline-small", "--random-weights", "--data", str(t["precomp"]),
               "--images-root", str(t["images"]), "--workers", "0", "--batch-size", "4",
               "--out", str(out), "--dump", str(dump), "--dump-topk", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "(precomp) [test]: 4 images, 8 captions" in printed and "| i2t R@1 |" in printed
    report = json.loads(out.read_text())
    assert report["format"] == "precomp" and report["ties"]["n_texts"] == 8
    lines = [json.loads(x) for x in dump.read_text().splitlines()]
    assert len(lines) == 4 + 8
    i2t = [r for r in lines if r["direction"] == "i2t"]
    t2i_recs = [r for r in lines if r["direction"] == "t2i"]
    assert [r["query"] for r in i2t] == list(CAPTIONS) and all(len(r["top"]) == 3 for r in lines)
    for r in lines:  # top items sorted by score; rank 1 exactly when the first item is correct
        scores = [e["score"] for e in r["top"]]
        assert scores == sorted(scores, reverse=True)
        assert (r["rank"] == 1) == r["top"][0]["correct"]
    for k in (1, 5):  # the dump's ranks reproduce the report's index-rule recalls
        assert report["index"][f"i2t_r{k}"] == pytest.approx(100 * np.mean([r["rank"] <= k for r in i2t]))
        assert report["index"][f"t2i_r{k}"] == pytest.approx(100 * np.mean([r["rank"] <= k for r in t2i_recs]))
    assert main(["evaluate", "--model", "priorclip-open-baseline-small", "--random-weights", "--data", str(t["precomp"]),
                 "--images-root", str(t["images"]), "--dump-topk", "3"]) == 2
    assert "--dump-topk needs --dump" in capsys.readouterr().err


@pytest.fixture
def karpathy_with_unreadable(karpathy, tmp_path):
    """The 5-image fixture with an unreadable image (2 captions) inserted as image 2."""
    import shutil

    root = tmp_path / "kp_bad"
    shutil.copytree(karpathy / "images", root / "images")
    (root / "images" / "broken_9.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    entries = json.loads((karpathy / "dataset.json").read_text())["images"]
    entries.insert(2, {"filename": "broken_9.png", "split": "test",
                       "sentences": [{"raw": "a broken square"}, {"raw": "an aerial image"}]})
    (root / "dataset.json").write_text(json.dumps({"images": entries}))
    return root


def test_evaluate_skips_unreadable_images_with_their_captions(karpathy, karpathy_with_unreadable, checkpoint,
                                                               tmp_path, capsys):
    """Issue #16.6: an unreadable image and its captions leave the evaluation, named in the report, exit 1."""
    from priorclip.errors import DataError

    model = pm.load_checkpoint(checkpoint)
    with pytest.raises(DataError, match="broken_9.png"):  # the library default is still to refuse
        evaluate_model(model, KarpathyCaptions(karpathy_with_unreadable, split="test"), batch_size=4)

    out, dump = tmp_path / "report.json", tmp_path / "dump.jsonl"
    argv = ["evaluate", "--model", str(checkpoint), "--data", str(karpathy_with_unreadable), "--workers", "0",
            "--batch-size", "4", "--out", str(out), "--dump", str(dump), "--dump-topk", "2"]
    assert main(argv) == 1
    printed, err = capsys.readouterr()
    assert "5 images, 10 captions (1 unreadable image(s) and their 2 caption(s) left out)" in printed
    assert "priorclip evaluate: 1 input(s) skipped:" in err and "broken_9.png: " in err and f"see skipped in {out}" in err
    report = json.loads(out.read_text())
    [entry] = report["skipped"]
    assert entry["image_id"] == 2 and entry["filename"] == "broken_9.png" and entry["captions"] == 2
    assert entry["path"].endswith("broken_9.png") and entry["reason"]
    assert "left out" in report["skipped_rule"]
    # the numbers are those of the same dataset without the unreadable image
    clean = evaluate_model(model, KarpathyCaptions(karpathy, split="test"), batch_size=4)
    for rule in ("expected", "optimistic", "pessimistic", "index"):
        assert report[rule] == pytest.approx(clean[rule])
    assert report["ties"]["n_images"] == 5 and report["ties"]["n_texts"] == 10
    lines = [json.loads(x) for x in dump.read_text().splitlines()]
    assert len(lines) == 5 + 10 and "broken_9.png" not in {r["query"] for r in lines}
    assert "a broken square" not in {e.get("text") for r in lines for e in r["top"]}

    # through DataLoader workers the reason comes back too
    rep = evaluate_model(model, KarpathyCaptions(karpathy_with_unreadable, split="test"), batch_size=2, workers=2,
                         skip_unreadable=True)
    assert [e["filename"] for e in rep["skipped"]] == ["broken_9.png"] and rep["skipped"][0]["reason"]
    assert rep["expected"] == pytest.approx(clean["expected"])
