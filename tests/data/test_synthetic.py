"""Tests for the synthetic aerial dataset behind `priorclip demo`.

The data is only useful if captions tell the truth about the pixels, so besides the file layout
these tests check counts against what was drawn and one geometric fact (which side the sea is on)
against the pixels themselves.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from priorclip.data.synthetic import (
    COUNT_NOUNS,
    NUMBER_WORDS,
    SCENE_CLASSES,
    generate_synthetic_dataset,
    render_scene,
    tokenize_caption,
)
from priorclip.errors import ConfigError

NUM = {w: i for i, w in enumerate(NUMBER_WORDS)}


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(out, n_per_class=7, image_size=64, seed=3)
    return out


def test_at_least_eight_classes_and_renderers():
    assert len(SCENE_CLASSES) >= 8
    assert len(set(SCENE_CLASSES)) == len(SCENE_CLASSES)
    assert all("_" not in c for c in SCENE_CLASSES)  # the filename prefix must be the class


def test_same_seed_gives_byte_identical_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_synthetic_dataset(a, n_per_class=2, image_size=64, seed=11)
    generate_synthetic_dataset(b, n_per_class=2, image_size=64, seed=11)
    generate_synthetic_dataset(c, n_per_class=2, image_size=64, seed=12)
    ha, hb, hc = _tree_hashes(a), _tree_hashes(b), _tree_hashes(c)
    assert len(ha) == 2 * len(SCENE_CLASSES) + 3
    assert ha == hb
    pngs = [k for k in ha if k.endswith(".png")]
    assert sum(ha[k] != hc[k] for k in pngs) == len(pngs)  # another seed changes every image


def test_class_subset_reproduces_the_same_images(tmp_path):
    full, sub = tmp_path / "full", tmp_path / "sub"
    generate_synthetic_dataset(full, n_per_class=2, image_size=64, seed=5, classes=["beach", "harbor"])
    generate_synthetic_dataset(sub, n_per_class=1, image_size=64, seed=5, classes=["harbor"])
    assert (full / "images/harbor_0.png").read_bytes() == (sub / "images/harbor_0.png").read_bytes()


def test_karpathy_layout(small_dataset):
    path = small_dataset / "dataset.json"
    data = json.loads(path.read_text())
    assert data["dataset"] == "synthetic-aerial" and data["synthetic"] is True
    images = data["images"]
    assert len(images) == 7 * len(SCENE_CLASSES)
    assert [im["imgid"] for im in images] == list(range(len(images)))
    sentids = []
    for im in images:
        assert {"filename", "imgid", "split", "sentences", "sentids", "label"} <= set(im)
        assert (small_dataset / "images" / im["filename"]).is_file()
        assert im["filename"].split("_")[0] == im["label"]
        assert im["label"] in SCENE_CLASSES
        assert im["split"] in ("train", "val", "test")
        assert len(im["sentences"]) == 5
        assert len({s["raw"] for s in im["sentences"]}) == 5  # five different captions
        for s in im["sentences"]:
            assert s["imgid"] == im["imgid"]
            assert s["tokens"] == tokenize_caption(s["raw"]) and len(s["tokens"]) >= 4
            assert s["raw"][0].isupper() and s["raw"].endswith(".")
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        sentids += im["sentids"]
    assert sentids == list(range(5 * len(images)))
    assert len({im["filename"] for im in images}) == len(images)

    with Image.open(small_dataset / "images" / images[0]["filename"]) as img:
        assert img.size == (64, 64) and img.mode == "RGB"

    rows = list(csv.DictReader(open(small_dataset / "labels.csv", newline="")))
    assert [(r["filename"], r["scene"]) for r in rows] == [(im["filename"], im["label"]) for im in images]
    readme = (small_dataset / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "seed      : 3" in readme


def test_splits_are_stratified_disjoint_and_balanced(small_dataset):
    images = json.loads((small_dataset / "dataset.json").read_text())["images"]
    per_class = Counter(im["label"] for im in images)
    assert set(per_class) == set(SCENE_CLASSES) and set(per_class.values()) == {7}
    by_split = {s: {im["filename"] for im in images if im["split"] == s} for s in ("train", "val", "test")}
    assert sum(len(v) for v in by_split.values()) == len(images)
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                or by_split["val"] & by_split["test"])
    # 7 images at 0.7/0.15/0.15 -> 5/1/1 in every class
    for cls in SCENE_CLASSES:
        got = Counter(im["split"] for im in images if im["label"] == cls)
        assert got == Counter(train=5, val=1, test=1), cls
    # which image lands in which split is shuffled per class, not always the first ones
    firsts = {im["filename"].split("_")[1] for im in images if im["split"] == "test"}
    assert len(firsts) > 1


def test_caption_counts_equal_drawn_counts():
    """Every number word in a caption names a counted noun whose drawn count it equals, and
    every counted object is stated at least once."""
    stated_any = Counter()
    for ci, cls in enumerate(SCENE_CLASSES):
        for i in range(12):
            _, captions, params = render_scene(cls, np.random.default_rng([99, ci, i]), 64)
            counts = params["counts"]
            assert params["label"] == cls
            assert all(isinstance(v, int) and v >= 1 for v in counts.values()), (cls, counts)
            stated = set()
            for cap in captions:
                toks = tokenize_caption(cap)
                for j, tok in enumerate(toks):
                    if tok not in NUM:
                        continue
                    noun = next((t for t in toks[j + 1:j + 7] if t in COUNT_NOUNS), None)
                    assert noun is not None, f"{cls}: number without a counted noun in {cap!r}"
                    key = COUNT_NOUNS[noun]
                    assert counts.get(key) == NUM[tok], f"{cls}: {cap!r} but drew {counts}"
                    stated.add(key)
            assert stated == set(counts), (cls, captions, counts)
            stated_any[cls] += bool(stated)
    # the classes built around countable objects state a count in every image
    for cls in ("airport", "parkinglot", "farmland", "residential", "storagetanks", "sportscourts", "harbor"):
        assert stated_any[cls] == 12, cls


def test_counts_and_colours_vary_within_a_class():
    counts, colours = Counter(), set()
    for i in range(20):
        _, caps, params = render_scene("airport", np.random.default_rng([7, i]), 64)
        counts[params["counts"]["plane"]] += 1
        colours.add(params["plane_color"])
        assert any(params["plane_color"] in c.lower() for c in caps)
    assert len(counts) >= 3 and len(colours) >= 2


def test_sea_side_in_captions_matches_pixels():
    """Captions say where the sea is; the sea half of the image must be the bluer one."""
    opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
    checked = 0
    for i in range(40):
        img, caps, params = render_scene("beach", np.random.default_rng([21, i]), 64)
        side = params["sea_side"]
        if side not in opposite:
            continue
        for c in caps:  # any stated sea side is the drawn one
            for said in re.findall(r"sea (?:is )?on the ((?:upper |lower )?(?:left|right|top|bottom))", c):
                assert said == side, (c, side)
        a = np.asarray(img, dtype=np.float32)
        blue = a[..., 2] - a[..., 0]
        halves = {"left": blue[:, :16], "right": blue[:, -16:], "top": blue[:16], "bottom": blue[-16:]}
        assert halves[side].mean() > halves[opposite[side]].mean() + 20, (i, side, caps)
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("size", [64, 128, 224])
def test_every_class_renders_at_common_sizes(size):
    for ci, cls in enumerate(SCENE_CLASSES):
        img, caps, _ = render_scene(cls, np.random.default_rng([size, ci]), size)
        assert img.size == (size, size) and img.mode == "RGB"
        a = np.asarray(img)
        assert a.std() > 8  # not a blank or flat image
        assert len(caps) == 5 and all(isinstance(c, str) and c for c in caps)


def test_render_is_deterministic_in_the_generator():
    a = render_scene("residential", np.random.default_rng(4), 96)
    b = render_scene("residential", np.random.default_rng(4), 96)
    assert a[1] == b[1] and a[2] == b[2]
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_bad_arguments_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="classes"):
        generate_synthetic_dataset(tmp_path, n_per_class=1, classes=["volcano"])
    with pytest.raises(ConfigError, match="splits"):
        generate_synthetic_dataset(tmp_path, n_per_class=1, splits=(0.5, 0.2, 0.2))
    with pytest.raises(ConfigError, match="n_per_class"):
        generate_synthetic_dataset(tmp_path, n_per_class=0)
    with pytest.raises(ConfigError, match="volcano"):
        render_scene("volcano", np.random.default_rng(0), 64)


def test_project_loader_reads_it_with_both_label_sources(small_dataset):
    """The point of the Karpathy layout: the benchmark loader reads it unchanged."""
    karpathy = pytest.importorskip("priorclip.data.karpathy")
    by_prefix = karpathy.KarpathyCaptions(small_dataset, split="test", mode="images", labels="prefix")
    by_csv = karpathy.KarpathyCaptions(small_dataset, split="test", mode="images",
                                       labels=f"csv:{small_dataset / 'labels.csv'}")
    assert len(by_prefix) == len(by_csv) == len(SCENE_CLASSES)  # one test image per class
    for a, b in zip(by_prefix, by_csv):
        assert a["filename"] == b["filename"] and a["label"] == b["label"]
        assert len(a["captions"]) == 5 and a["image"].size == (64, 64)
