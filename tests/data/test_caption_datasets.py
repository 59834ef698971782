"""Dataset classes on the real benchmark files (published sizes), labels, missing files, bad files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from priorclip.data import (
    BadFileReport, CsvCaptions, CsvLabels, FolderLabels, ImageFolder, KarpathyCaptions, NoLabels,
    PrecompCaptions, PrefixLabels, collate_skip_none, make_labels,
)
from priorclip.errors import ConfigError, DataError, DatasetNotFoundError
from priorclip.models.transforms import image_transform

# (images, captions) of the published test splits
TEST_SIZES = {"rsicd": (1093, 5465), "rsitmd": (452, 2260), "sydney": (58, 290), "ucm": (210, 1050)}


def _check_structure(ds, n_img, n_cap):
    assert ds.num_images == n_img and len(ds.images) == n_img
    assert ds.num_captions == n_cap and len(ds.all_captions) == n_cap
    assert ds.captions_per_image == [5] * n_img
    t2i = ds.text_to_image
    assert len(t2i) == n_cap and t2i == sorted(t2i) and t2i[0] == 0 and t2i[-1] == n_img - 1
    assert all(len(ix) == 5 for ix in ds.image_to_text)
    assert len(ds) == n_cap  # "pairs" mode: one item per caption
    assert all(c.strip() for c in ds.all_captions)


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(TEST_SIZES))
def test_precomp_test_splits(annotations_dir, name):
    ds = PrecompCaptions(annotations_dir / f"{name}_precomp", "test")
    _check_structure(ds, *TEST_SIZES[name])
    assert ds.paths is None  # no images shipped: annotation-only
    with pytest.raises(DataError, match="images_root"):
        ds[0]


@pytest.mark.shared
def test_precomp_train_one_name_per_image(annotations_dir):
    # train files list each image once with 5 caption lines per name
    ds = PrecompCaptions(annotations_dir / "rsitmd_precomp", "train", labels="prefix")
    assert ds.num_images == 4291 and ds.num_captions == 21455 and set(ds.captions_per_image) == {5}
    assert ds.classes and -1 not in ds.labels


@pytest.mark.shared
@pytest.mark.parametrize("name", ["rsicd", "rsitmd"])
def test_csv_test_files_match_precomp(annotations_dir, name):
    csv_ds = CsvCaptions(annotations_dir / "csv" / f"{name}_test.csv", "test")
    _check_structure(csv_ds, *TEST_SIZES[name])
    pre = PrecompCaptions(annotations_dir / f"{name}_precomp", "test")
    assert [Path(f).name for f in csv_ds.images] == pre.images
    assert csv_ds.images[0].startswith("data/")  # paths relative to someone's machine: resolved by base name


@pytest.mark.shared
def test_karpathy_sydney_and_ucm(annotations_dir, ucm_dir):
    syd = KarpathyCaptions(annotations_dir / "sydney_dataset_karpathy.json", "test")
    _check_structure(syd, *TEST_SIZES["sydney"])
    assert syd.paths is None
    ucm = KarpathyCaptions(ucm_dir, "test")
    _check_structure(ucm, *TEST_SIZES["ucm"])
    assert KarpathyCaptions(ucm_dir, "train").num_images == 1680
    assert KarpathyCaptions(ucm_dir, "all").num_images == 2100
    with pytest.raises(DataError, match="no split 'bogus'.*'test', 'train', 'val'"):
        KarpathyCaptions(ucm_dir, "bogus")


@pytest.mark.shared
def test_ucm_images_with_csv_labels(ucm_dir):
    tf = image_transform(64)
    ds = KarpathyCaptions(ucm_dir, "test", tf, mode="images", labels=f"csv:{ucm_dir / 'labels.csv'}")
    assert len(ds) == 210 and len(ds.classes) == 21
    assert ds.classes[0] == "agricultural" and ds.classes[-1] == "tenniscourt"
    for i in (0, 57, 209):
        s = ds[i]
        n = int(Path(s["filename"]).stem)
        assert s["label"] == (n - 1) // 100  # README: image N is class (N-1)//100
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
        assert s["image_id"] == i and s["caption"] == s["captions"][0] and len(s["captions"]) == 5
        assert s["caption_id"] == -1 and Path(s["path"]).is_file()
    pairs = KarpathyCaptions(ucm_dir, "test", mode="pairs")
    s = pairs[7]
    assert s["image_id"] == 1 and s["caption_id"] == 7 and s["caption"] == pairs.all_captions[7]
    assert isinstance(s["image"], Image.Image) and s["label"] == -1 and pairs.classes == []


@pytest.mark.shared
def test_ucm_precomp_resolves_tif_names_to_jpg(annotations_dir, ucm_dir):
    ds = PrecompCaptions(annotations_dir / "ucm_precomp", "test", images_root=ucm_dir / "images", mode="images")
    assert ds.images[0].endswith(".tif") and ds.paths[0].endswith(".jpg")
    assert ds[0]["image"].size[0] > 200
    # README: the precomp "test" split is the val split of dataset.json
    val = KarpathyCaptions(ucm_dir, "val")
    assert sorted(Path(f).stem for f in ds.images) == sorted(Path(f).stem for f in val.images)


@pytest.mark.shared
def test_prefix_labels_on_real_names(annotations_dir):
    rsitmd = PrecompCaptions(annotations_dir / "rsitmd_precomp", "test", labels="prefix")
    assert rsitmd.images[0] == "boat_0.tif" and rsitmd.classes[rsitmd.labels[0]] == "boat"
    assert -1 not in rsitmd.labels
    rsicd = PrecompCaptions(annotations_dir / "rsicd_precomp", "test", labels=PrefixLabels())
    numeric = [i for i, f in enumerate(rsicd.images) if f.split(".")[0].isdigit()]
    assert numeric and all(rsicd.labels[i] == -1 for i in numeric)
    assert all(rsicd.labels[i] >= 0 for i, f in enumerate(rsicd.images) if "_" in f)


def test_label_sources(tmp_path):
    assert PrefixLabels().name_of("boat_0.tif") == "boat"
    assert PrefixLabels().name_of("00001.jpg") is None
    assert PrefixLabels().name_of("2019_06.tif") is None
    assert PrefixLabels(classes=["boat"]).name_of("park_1.jpg") is None
    assert FolderLabels().name_of("Airport/a_1.jpg") == "Airport" and FolderLabels().name_of("a.jpg") is None
    (tmp_path / "l.csv").write_text("filename,scene\n12.tif,beach\nsub/3.jpg,farm\n")
    lab = CsvLabels(tmp_path / "l.csv")
    assert lab.name_of("12.jpg") == "beach" and lab.name_of("x/3.jpg") == "farm" and lab.name_of("4.jpg") is None
    assert lab.classes([]) == ["beach", "farm"]
    assert isinstance(make_labels("none"), NoLabels) and isinstance(make_labels(f"csv:{tmp_path / 'l.csv'}"), CsvLabels)
    with pytest.raises(ConfigError, match="unknown label source"):
        make_labels("colour")
    (tmp_path / "bad.csv").write_text("name,cls\n1.jpg,a\n")
    with pytest.raises(DataError, match="bad.csv.*'filename' and 'scene'"):
        CsvLabels(tmp_path / "bad.csv")


def test_missing_files_listed(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        PrecompCaptions(tmp_path, "val")
    msg = str(info.value)
    assert "2 file(s) missing" in msg and "val_caps.txt" in msg and "val_filename.txt" in msg
    (tmp_path / "val_caps.txt").write_text("a\nb\nc\nd\n")
    (tmp_path / "val_filename.txt").write_text("1.jpg\n1.jpg\n2.jpg\n3.jpg\n")
    img = tmp_path / "imgs"
    img.mkdir()
    Image.new("RGB", (8, 8)).save(img / "2.png")  # stem match: 2.jpg -> 2.png
    with pytest.raises(DatasetNotFoundError) as info:
        PrecompCaptions(tmp_path, "val", images_root=img)
    assert "2 file(s) missing" in str(info.value) and info.value.missing == [str(img / "1.jpg"), str(img / "3.jpg")]
    with pytest.raises(DatasetNotFoundError, match="nowhere.*images_root"):
        PrecompCaptions(tmp_path, "val", images_root=tmp_path / "nowhere")
    (tmp_path / "val_filename.txt").write_text("1.jpg\n2.jpg\n3.jpg\n")
    with pytest.raises(DataError, match="4 captions but .* 3 names"):
        PrecompCaptions(tmp_path, "val")


def _tiny_karpathy(tmp_path, n=6, bad=(2,)):
    img = tmp_path / "images"
    img.mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        p = img / f"scene_{i}.jpg"
        if i in bad:
            p.write_text("not really a jpeg")
        else:
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(p)
        entries.append({"filename": p.name, "split": "train",
                        "sentences": [{"raw": f"caption {i}.{k}"} for k in range(2)]})
    (tmp_path / "dataset.json").write_text(json.dumps({"images": entries}))
    return tmp_path


def test_corrupt_image_skipped_in_dataloader_with_workers(tmp_path):
    root = _tiny_karpathy(tmp_path)
    log = tmp_path / "bad.jsonl"
    ds = KarpathyCaptions(root, "train", image_transform(32, train=True), bad_files=log)
    assert len(ds) == 12 and ds.on_error == "skip"
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_skip_none)
    seen = []
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 32, 32)
        seen += batch["image_id"].tolist()
    assert len(seen) == 12 and 2 not in seen
    # the policy is deterministic: the bad image's captions are replaced by the next readable item
    assert seen.count(3) == 4
    report = BadFileReport.read(log)
    assert report.paths == [str(root / "images" / "scene_2.jpg")]
    assert "not a recognised image format" in report.entries[0].reason


def test_images_mode_returns_none_and_collate_drops(tmp_path):
    root = _tiny_karpathy(tmp_path, bad=(0, 4))
    ds = KarpathyCaptions(root, "train", image_transform(16), mode="images", labels="prefix")
    assert ds.on_error == "none" and ds.classes == ["scene"]
    assert ds[0] is None and ds[1]["label"] == 0
    batch = collate_skip_none([ds[i] for i in range(len(ds))])
    assert batch["image_id"].tolist() == [1, 2, 3, 5] and batch["image"].shape == (4, 3, 16, 16)
    assert batch["filename"] == ["scene_1.jpg", "scene_2.jpg", "scene_3.jpg", "scene_5.jpg"]
    assert sorted(Path(p).name for p in ds.bad_files.paths) == ["scene_0.jpg", "scene_4.jpg"]
    assert collate_skip_none([None, None]) is None
    strict = KarpathyCaptions(root, "train", mode="images", on_error="raise")
    with pytest.raises(DataError, match="scene_0.jpg"):
        strict[0]


def test_image_folder_labels_and_pairs_refused(tmp_path):
    for cls in ("beach", "airport"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (10, 10), (i * 50, 0, 0)).save(tmp_path / cls / f"{i}.png")
    Image.new("L", (10, 10)).save(tmp_path / "loose.tif")
    (tmp_path / "notes.txt").write_text("ignored")
    ds = ImageFolder(tmp_path)
    assert ds.images == ["airport/0.png", "airport/1.png", "beach/0.png", "beach/1.png", "loose.tif"]
    assert ds.classes == ["airport", "beach"] and ds.labels == [0, 0, 1, 1, -1]
    s = ds[4]
    assert s["caption"] == "" and s["captions"] == [] and s["image"].mode == "RGB"
    with pytest.raises(ConfigError, match="no captions"):
        ImageFolder(tmp_path, mode="pairs")
    with pytest.raises(DatasetNotFoundError):
        ImageFolder(tmp_path / "absent")


def test_cli_data_check_reports_bad_file(tmp_path, capsys):
    from priorclip.cli.main import main

    root = _tiny_karpathy(tmp_path, n=3, bad=(1,))
    rc = main(["data", "check", "karpathy", str(root), "--split", "train", "--labels", "prefix",
               "--bad-files", str(tmp_path / "bad.json")])
    err = capsys.readouterr().err
    assert rc == 1 and "1 input(s) skipped" in err and "scene_1.jpg" in err and str(tmp_path / "bad.json") in err
    assert json.loads((tmp_path / "bad.json").read_text())["count"] == 1
    (root / "images" / "scene_1.jpg").unlink()
    rc = main(["data", "check", "karpathy", str(root), "--split", "train"])
    assert rc == 2 and "1 file(s) missing" in capsys.readouterr().err


def test_every_problem_of_a_caption_file_in_one_error(tmp_path):
    """Issue #16.6: the file is read to the end; each bad entry is named with its file and line/entry."""
    from priorclip.errors import CaptionFileError

    kp = tmp_path / "dataset.json"
    kp.write_text(json.dumps({"images": [
        {"filename": "0.jpg", "split": "test", "sentences": [{"raw": "ok"}, {"raw": None}]},
        {"split": "test", "sentences": []},
        {"filename": "", "split": "train"},
        {"filename": "3.jpg", "split": "test", "sentences": "a road"},
        {"filename": "4.jpg", "split": "test", "sentences": [{"raw": "fine"}]},
    ]}))
    with pytest.raises(CaptionFileError) as info:
        KarpathyCaptions(kp, "test")
    assert [w for _, w, _ in info.value.problems] == [
        "images[0].sentences[1]", "images[1]", "images[2].filename", "images[3].sentences"]
    assert all(f == str(kp) for f, _, _ in info.value.problems)
    assert str(info.value).startswith(f"{kp}: 4 problems: images[0].sentences[1] needs a string 'raw' field")

    csv = tmp_path / "caps.csv"
    csv.write_text("filename,title\n0.jpg,a road\n1.jpg\n,no name\n3.jpg,fine\n4.jpg\n")
    with pytest.raises(CaptionFileError) as info:
        CsvCaptions(csv, "test")
    assert info.value.lines() == [
        f"{csv}: line 3 has fewer fields than the header (no 'title'); check the separator (sep=',') and quoting",
        f"{csv}: line 4 has an empty 'filename'",
        f"{csv}: line 6 has fewer fields than the header (no 'title'); check the separator (sep=',') and quoting"]

    pre = tmp_path / "precomp"
    pre.mkdir()
    (pre / "test_caps.txt").write_text("a\nb\nc\nd\n")
    (pre / "test_filename.txt").write_text("0.jpg\n\n2.jpg\n\n")  # the trailing blank line is no name
    with pytest.raises(CaptionFileError) as info:
        PrecompCaptions(pre, "test")
    assert [w for _, w, _ in info.value.problems] == ["line 2"]
    (pre / "test_filename.txt").write_text("\n0.jpg\n\n3.jpg\n")
    with pytest.raises(CaptionFileError, match=r"test_filename\.txt: 2 problems: line 1 is empty; line 3 is empty"):
        PrecompCaptions(pre, "test")


def test_cli_data_check_lists_every_caption_problem(tmp_path, capsys):
    from priorclip.cli.main import main

    entries = [{"filename": f"{i}.jpg", "split": "test", "sentences": [{"raw": "a"}, {"tokens": ["b"]}]} for i in range(8)]
    (tmp_path / "dataset.json").write_text(json.dumps({"images": entries}))
    bad = tmp_path / "bad.json"
    rc = main(["data", "check", "karpathy", str(tmp_path), "--split", "test", "--bad-files", str(bad)])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = out.splitlines()
    assert lines == [f"{tmp_path / 'dataset.json'}: images[{i}].sentences[1] needs a string 'raw' field, got "
                     "{'tokens': ['b']}" for i in range(8)]  # all 8, not the first 5
    assert "8 problem(s) in the caption file" in err and str(bad) in err
    problems = json.loads(bad.read_text())["caption_problems"]
    assert [p["where"] for p in problems] == [f"images[{i}].sentences[1]" for i in range(8)]
    # other verbs get the same error: the first five and where to see the rest
    with pytest.raises(DataError, match=r"8 problems: .*; \.\.\. and 3 more \(`priorclip data check` lists them all\)"):
        KarpathyCaptions(tmp_path, "test")
