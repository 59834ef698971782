"""Zero-shot classification: prompt ensembling, the last-20 % split, bad files, CLI report."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from priorclip.data.folder import ImageFolder
from priorclip.data.karpathy import KarpathyCaptions
from priorclip.errors import ConfigError
from priorclip.evaluation.zeroshot import (
    DEFAULT_TEMPLATES,
    class_text_embeddings,
    classname_to_text,
    last_fraction_indices,
    natural_key,
    parse_split,
    resolve_classnames,
    zeroshot_classify,
)

COLOURS = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}


# ---- a stand-in encoder with known geometry ---------------------------------------------------


class ColourModel(torch.nn.Module):
    """Text "red"/"green"/"blue" in template t -> e_class + e_(3+t); image -> its dominant channel's
    class embedding, equal (up to scale) to the prompt-ensembled class embedding. `swap` maps
    image channels to other classes to make known mistakes."""

    model_name = "colour-stand-in"

    def __init__(self, templates, swap=None):
        super().__init__()
        self.classes = list(COLOURS)
        self.templates = list(templates)
        self.embed_dim = len(self.classes) + len(self.templates)
        self.swap = swap or {}
        self.calls = {"eval": 0}

    def train(self, mode=True):
        if not mode:
            self.calls["eval"] += 1
        return super().train(mode)

    def tokenize(self, texts):
        rows = []
        for text in texts:
            cls = [i for i, c in enumerate(self.classes) if c in text]
            tpl = [i for i, t in enumerate(self.templates) if t.replace("{}", self.classes[cls[0]]) == text]
            rows.append([cls[0], tpl[0]])
        return torch.tensor(rows, dtype=torch.long)

    def encode_text(self, tokens, normalize=False):
        out = F.one_hot(tokens[:, 0], self.embed_dim).float() + F.one_hot(tokens[:, 1] + 3, self.embed_dim).float()
        return F.normalize(out, dim=-1) * 7.0 if normalize else out * 7.0  # scale must not matter

    def image_transform(self, train=False):
        return lambda im: torch.from_numpy(np.asarray(im.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1) / 255

    def encode_image(self, images, normalize=False):
        cls = images.mean(dim=(2, 3)).argmax(dim=1)
        seen = torch.tensor([self.swap.get(int(c), int(c)) for c in cls], dtype=torch.long)
        emb = F.one_hot(seen, self.embed_dim).float()
        emb += 0.5 * F.one_hot(cls, self.embed_dim).float() * (seen != cls).float()[:, None]  # runner-up: truth
        emb[:, 3:] = 1.0 / len(self.templates)  # the mean template direction
        return emb * 3.0


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """root/<colour>/<colour>_<i>.png, 5 per class, plus one corrupt file in 'blue'."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir()
        for i in range(5):
            arr = np.clip(np.array(rgb) + rng.integers(-15, 15, size=(16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{name}_{i}.png")
    (root / "blue" / "blue_9.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


# ---- names, templates, split ------------------------------------------------------------------


def test_natural_key_orders_numbers_by_value():
    names = ["10.jpg", "2.jpg", "1.jpg", "img_10.png", "img_9.png", "B3.tif", "b20.tif"]
    assert sorted(names, key=natural_key) == ["1.jpg", "2.jpg", "10.jpg", "B3.tif", "b20.tif", "img_9.png", "img_10.png"]


def test_classname_to_text():
    assert classname_to_text("baseball_diamond") == "baseball diamond"
    assert classname_to_text("BaseballField") == "baseball field"
    assert classname_to_text("dense-residential") == "dense residential"
    assert classname_to_text("storagetanks") == "storagetanks"  # needs a mapping to split
    assert classname_to_text("UAVImage") == "UAV image"
    assert resolve_classnames(["storagetanks", "Airport"], {"storagetanks": "storage tanks", "x": "y"}) == [
        "storage tanks", "airport"]


def test_parse_split():
    assert parse_split("last20") == pytest.approx(0.2)
    assert parse_split("LAST5") == pytest.approx(0.05)
    assert parse_split("test") is None and parse_split("all") is None
    with pytest.raises(ConfigError):
        parse_split("last0")


def test_last_fraction_small_classes_and_unlabelled():
    names = [f"{i}.jpg" for i in range(1, 13)]
    labels = [0] * 10 + [1, -1]
    # class 0: 10 images -> last 2 by natural order (9, 10); class 1: 1 image -> itself; -1 never
    assert last_fraction_indices(names, labels, 0.2) == [8, 9, 10]


def test_last20_on_ucm_picks_last_20_by_natural_order(ucm_dir):
    ds = ImageFolder(ucm_dir / "images", labels=f"csv:{ucm_dir / 'labels.csv'}")
    idx = last_fraction_indices(ds.images, ds.labels, 0.2)
    assert len(ds.classes) == 21 and len(idx) == 420
    counts = np.bincount([ds.labels[i] for i in idx], minlength=21)
    assert counts.tolist() == [20] * 21
    # expected from the CSV itself: per scene, the 20 highest file numbers
    with open(ucm_dir / "labels.csv", newline="") as f:
        by_scene: dict[str, list[int]] = {}
        for row in csv.DictReader(f):
            by_scene.setdefault(row["scene"], []).append(int(Path(row["filename"]).stem))
    expected = {f"{n}.jpg" for nums in by_scene.values() for n in sorted(nums)[-20:]}
    picked = {ds.images[i] for i in idx}
    assert picked == expected
    # a plain string sort would pick different files ('99.jpg' after '100.jpg')
    lexical = {n for nums in by_scene.values() for n in sorted(f"{m}.jpg" for m in nums)[-20:]}
    assert lexical != expected


# ---- classification with the stand-in encoder -------------------------------------------------


def test_class_embedding_is_normalised_mean_of_normalised_prompts():
    templates = ["a {}", "b {}", "c {}"]
    model = ColourModel(templates)
    text = class_text_embeddings(model, list(COLOURS), templates)
    assert text.shape == (3, 6)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    expected = F.normalize(torch.tensor([1.0, 0, 0, 1 / 3, 1 / 3, 1 / 3]), dim=0)
    torch.testing.assert_close(text[0], expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_perfect_encoder_gives_100_and_reports_bad_file(colour_folder, workers):
    templates = list(DEFAULT_TEMPLATES)
    model = ColourModel(templates).train()
    ds = ImageFolder(colour_folder, labels="folder")
    assert ds.classes == ["blue", "green", "red"]
    res = zeroshot_classify(model, ds, templates=templates, batch_size=4, workers=workers)
    assert res["top1"] == 100.0 and res["top5"] == 100.0 and res["mean_per_class"] == 100.0
    assert res["n_images"] == 16 and res["n_classified"] == 15 and res["n_bad"] == 1
    assert [Path(b["path"]).name for b in res["bad_files"]] == ["blue_9.png"]
    assert res["confusions"] == []
    assert res["per_class"]["blue"] == {"n": 5, "correct": 5, "accuracy": 100.0}
    assert model.training  # mode restored


def test_known_mistakes_show_in_per_class_and_confusions(colour_folder):
    templates = ["a photo of {}.", "{} from above"]
    # channel order is r, g, b = classes red(0), green(1), blue(2) of the model; blue images -> green
    model = ColourModel(templates, swap={2: 1})
    paths = sorted(str(p) for p in colour_folder.glob("*/*_[0-4].png"))
    labels = [list(COLOURS).index(Path(p).parent.name) for p in paths]
    res = zeroshot_classify(model, paths, labels, list(COLOURS), templates, ks=(1, 2), workers=0)
    assert res["top1"] == pytest.approx(200 / 3)
    assert res["top2"] == 100.0  # the true class is each swapped image's runner-up
    assert res["per_class"]["blue"]["accuracy"] == 0.0 and res["per_class"]["red"]["accuracy"] == 100.0
    assert res["confusions"] == [{"true": "blue", "predicted": "green", "count": 5, "rate": 100.0}]
    assert res["confusion_matrix"][2] == [0, 5, 0]


def test_indices_subset_and_unlabelled_are_skipped(colour_folder, tmp_path):
    model = ColourModel(list(DEFAULT_TEMPLATES))
    ds = ImageFolder(colour_folder, labels="folder")
    res = zeroshot_classify(model, ds, indices=[0, 6, 11], workers=0)
    assert res["n_images"] == 3 and res["n_classified"] == 3 and res["top1"] == 100.0
    res = zeroshot_classify(model, [str(p) for p in ds.paths[:4]], [0, -1, -1, 0], ["blue", "green", "red"], workers=0)
    assert res["n_unlabelled"] == 2 and res["n_classified"] == 2


def test_template_without_placeholder_is_rejected(colour_folder):
    with pytest.raises(ConfigError, match="exactly one"):
        zeroshot_classify(ColourModel(["x"]), ImageFolder(colour_folder), templates=["an aerial image"])


# ---- a real (random-weight) model on the synthetic dataset ------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from priorclip.data.synthetic import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(out, n_per_class=5, image_size=64, seed=1,
                               classes=["airport", "river", "storagetanks", "harbor"])
    return out


@pytest.fixture(scope="module")
def small_model():
    import priorclip.models as pm

    return pm.create_model("priorclip-closed-small")


def test_random_model_on_synthetic_runs(synthetic, small_model):
    ds = KarpathyCaptions(synthetic / "dataset.json", split="all", labels=f"csv:{synthetic / 'labels.csv'}",
                          mode="images")
    res = zeroshot_classify(small_model, ds, batch_size=20, workers=0)
    assert res["n_classified"] == 20 and res["n_bad"] == 0
    assert 0.0 <= res["top1"] <= res["top5"] <= 100.0
    assert sum(pc["n"] for pc in res["per_class"].values()) == 20
    assert sum(map(sum, res["confusion_matrix"])) == 20
    # the same images given as paths classify identically
    res2 = zeroshot_classify(small_model, ds.paths, ds.labels, res["classes"], batch_size=16, workers=0)
    assert res2["confusion_matrix"] == res["confusion_matrix"]


def test_cli_writes_json_report(synthetic, tmp_path, capsys):
    from priorclip.cli.main import main

    out = tmp_path / "zs.json"
    rc = main(["zeroshot", "--model", "priorclip-closed-small", "--random-weights", "--data", str(synthetic / "images"),
               "--classnames", '{"storagetanks": "storage tanks"}', "--templates", "a satellite image of {}.",
               "--workers", "0", "--out", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["split"] == "last20" and rep["label_source"] == f"csv:{synthetic / 'labels.csv'}"
    assert rep["n_classified"] == 4  # 1 of 5 per class, 4 classes
    assert "storage tanks" in rep["classes"] and "storagetanks" in rep["labels"]
    assert rep["templates"] == ["a satellite image of {}."]
    assert 0.0 <= rep["top1"] <= rep["top5"] <= 100.0
    assert "top-1" in capsys.readouterr().out


def test_cli_exit_status_1_names_the_unreadable_image(colour_folder, tmp_path, capsys):
    """Issue #16.5: images skipped as unreadable are named on stderr and the exit status is 1."""
    from priorclip.cli.main import main

    argv = ["zeroshot", "--model", "priorclip-closed-small", "--random-weights", "--data", str(colour_folder), "--split", "all",
            "--labels", "folder", "--workers", "0", "--templates", "a photo of {}."]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "priorclip zeroshot: 1 input(s) skipped:" in err and "blue_9.png: " in err
    assert "pass --out FILE to list them all" in err
    assert main(argv + ["--out", str(tmp_path / "zs.json")]) == 1
    assert f"see bad_files in {tmp_path / 'zs.json'}" in capsys.readouterr().err


def test_cli_errors_are_one_line(synthetic, capsys):
    from priorclip.cli.main import main

    rc = main(["zeroshot", "--model", "priorclip-closed-small", "--random-weights", "--data", str(synthetic / "images"),
               "--templates", "no placeholder"])
    assert rc == 2
    assert "exactly one '{}'" in capsys.readouterr().err
    rc = main(["zeroshot", "--model", "priorclip-closed-small", "--random-weights", "--data", str(synthetic / "images"), "--split", "test"])
    assert rc == 2 and "no named splits" in capsys.readouterr().err
