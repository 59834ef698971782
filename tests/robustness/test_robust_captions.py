"""Bad caption files (Karpathy JSON, precomp, CSV): a DataError naming the file and the entry/line."""
from __future__ import annotations

import logging

import pytest
from PIL import Image

import inputs
from priorclip.data import CsvCaptions, KarpathyCaptions, PrecompCaptions
from priorclip.errors import DataError, DatasetNotFoundError, PriorCLIPError


@pytest.fixture
def root(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "images" / f"{i}.jpg")
    return tmp_path


E = inputs.entry
KARPATHY_BAD = {
    "malformed_json": (b'{"images": [{"filename": "0.jpg", ', r"not valid JSON \(Expecting"),
    "empty_file": (b"", "not valid JSON"),
    "non_utf8": (b'{"images": [{"filename": "0.jpg", "split": "train", "sentences": [{"raw": "caf\xe9"}]}]}',
                 r"line 1 is not UTF-8 text \(byte 0xe9\)"),
    "no_images_list": ('{"imgs": []}', "top-level 'images' list"),
    "missing_filename": (inputs.karpathy([{"split": "train", "sentences": []}]), r"images\[0\] has no 'filename'"),
    "filename_not_string": (inputs.karpathy([E(7, ["a road"])]), r"images\[0\]\.filename must be a non-empty string"),
    "missing_raw": (inputs.karpathy([E("0.jpg", [{"tokens": ["a"]}])]), r"images\[0\]\.sentences\[0\] needs a string 'raw'"),
    "raw_null": (inputs.karpathy([E("0.jpg", ["a road", {"raw": None}])]), r"images\[0\]\.sentences\[1\] needs a string 'raw'"),
    "sentences_not_list": (inputs.karpathy([{"filename": "0.jpg", "split": "train", "sentences": "a road"}]),
                           r"images\[0\]\.sentences must be a list"),
    "empty_split": (inputs.karpathy([E("0.jpg", ["a road"], split="test")]), r"split 'train' is empty \(splits present: \['test'\]\)"),
    "unknown_split": (inputs.karpathy([E("0.jpg", ["a road"], split="test")]), "no split 'dev'"),
}


@pytest.mark.parametrize("case", sorted(KARPATHY_BAD))
def test_karpathy_bad_files(root, case):
    content, pattern = KARPATHY_BAD[case]
    path = root / "dataset.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    split = "dev" if case == "unknown_split" else "train"
    with pytest.raises(DataError, match=pattern) as info:
        KarpathyCaptions(root, split)
    assert str(info.value).startswith(str(path))


def test_karpathy_caption_pointing_to_missing_image_is_listed(root):
    (root / "dataset.json").write_text(inputs.karpathy([E("0.jpg", ["a"]), E("missing_99.jpg", ["b"]), E("gone.png", ["c"])]))
    with pytest.raises(DatasetNotFoundError, match=r"2 file\(s\) missing: .*missing_99\.jpg, .*gone\.png") as info:
        KarpathyCaptions(root, "train")
    assert len(info.value.missing) == 2


def test_karpathy_duplicate_image_entries_are_merged_with_a_warning(root, caplog):
    (root / "dataset.json").write_text(inputs.karpathy([E("0.jpg", ["a"]), E("1.jpg", ["b"]), E("0.jpg", ["c", "d"])]))
    with caplog.at_level(logging.WARNING):
        ds = KarpathyCaptions(root, "train")
    assert ds.images == ["0.jpg", "1.jpg"] and ds.image_captions == [["a", "c", "d"], ["b"]]
    assert ds.text_to_image == [0, 0, 0, 1]  # retrieval ground truth: all three captions are image 0's
    assert any("images[2] repeats image '0.jpg'" in r.getMessage() for r in caplog.records)


def test_empty_captions_are_kept_in_place_and_named(root, caplog):
    """Kept (caption ids must match the published files, RSITMD train has 20 empty ones) but warned."""
    (root / "dataset.json").write_text(inputs.karpathy([E("0.jpg", ["a road", "  "]), E("1.jpg", [""])]))
    with caplog.at_level(logging.WARNING):
        ds = KarpathyCaptions(root, "train")
    assert ds.all_captions == ["a road", "", ""] and ds.empty_captions == [("0.jpg", 1), ("1.jpg", 0)]
    assert any("2 empty caption(s): '0.jpg' caption 2, '1.jpg' caption 1" in r.getMessage() for r in caplog.records)


def _precomp(root, caps: bytes, names: str, split="train"):
    d = root / "precomp"
    d.mkdir(exist_ok=True)
    (d / f"{split}_caps.txt").write_bytes(caps)
    (d / f"{split}_filename.txt").write_text(names)
    return d


def test_precomp_bad_files(root):
    img = root / "images"
    d = _precomp(root, b"a\nb\nc\n", "0.jpg\n1.jpg\n")
    with pytest.raises(DataError, match=r"train_caps\.txt has 3 captions but .*train_filename\.txt has 2 names"):
        PrecompCaptions(d, "train", images_root=img)
    d = _precomp(root, b"", "")
    with pytest.raises(DataError, match=r"train_filename\.txt: no filenames"):
        PrecompCaptions(d, "train", images_root=img)
    d = _precomp(root, b"a\nb\n", "0.jpg\n\n1.jpg\n")
    with pytest.raises(DataError, match=r"train_filename\.txt: line 2 is empty"):
        PrecompCaptions(d, "train", images_root=img)
    d = _precomp(root, b"a\nb\n", "0.jpg\nlost.jpg\n")
    with pytest.raises(DatasetNotFoundError, match=r"1 file\(s\) missing: .*lost\.jpg"):
        PrecompCaptions(d, "train", images_root=img)
    with pytest.raises(DatasetNotFoundError, match=r"val_caps\.txt, .*val_filename\.txt"):
        PrecompCaptions(d, "val", images_root=img)


def test_precomp_non_utf8_is_read_as_latin1_and_empty_caption_named(root, caplog):
    d = _precomp(root, b"caf\xe9 by a road\n\n", "0.jpg\n1.jpg\n")  # trailing blank lines are dropped ...
    with pytest.raises(DataError, match="has 1 captions but"):
        PrecompCaptions(d, "train", images_root=root / "images")
    d = _precomp(root, b"caf\xe9 by a road\n\nthird\n", "0.jpg\n1.jpg\n2.jpg\n")  # ... inner ones are captions
    with caplog.at_level(logging.WARNING):
        ds = PrecompCaptions(d, "train", images_root=root / "images")
    assert ds.all_captions == ["café by a road", "", "third"] and ds.empty_captions == [("1.jpg", 0)]


CSV_BAD = {
    "wrong_columns": (b"file,caption\n0.jpg,a\n", r"needs columns 'filename' and 'title' \(found \['file', 'caption'\]\)"),
    "empty_file": (b"", r"needs columns 'filename' and 'title' \(found \[\]\)"),
    "header_only": (b"filename,title\n", "no caption rows"),
    "non_utf8": (b"filename,title\n0.jpg,a road\n1.jpg,caf\xe9\n", r"line 3 is not UTF-8 text \(byte 0xe9\)"),
    "short_row": (b"filename,title\n0.jpg,a road\n1.jpg\n", r"line 3 has fewer fields than the header \(no 'title'\)"),
    "semicolons": (b"filename;title\n0.jpg;a\n", "set image_key= / caption_key= / sep="),
    "empty_filename": (b"filename,title\n,a road\n", "line 2 has an empty 'filename'"),
}


@pytest.mark.parametrize("case", sorted(CSV_BAD))
def test_csv_bad_files(root, case):
    content, pattern = CSV_BAD[case]
    path = root / "train.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=pattern) as info:
        CsvCaptions(path, "train", images_root=root / "images")
    assert str(info.value).startswith(str(path))


def test_csv_missing_image_duplicates_and_empty_caption(root, caplog):
    path = root / "train.csv"
    path.write_text("filename,title\ndata/x/0.jpg,a\ndata/x/0.jpg,b\ndata/x/9.jpg,c\n")
    with pytest.raises(DatasetNotFoundError, match=r"9\.jpg"):
        CsvCaptions(path, "train", images_root=root / "images")
    path.write_text('filename,title\n0.jpg,a\n1.jpg,""\n0.jpg,"b, with a comma"\n')
    with caplog.at_level(logging.WARNING):
        ds = CsvCaptions(path, "train", images_root=root / "images")
    assert ds.image_captions == [["a", "b, with a comma"], [""]]
    assert any("1 empty caption(s): '1.jpg' caption 1" in r.getMessage() for r in caplog.records)


def test_every_error_is_a_priorclip_error(root):
    """The CLI prints PriorCLIPError as one line: nothing above may escape as another type."""
    assert issubclass(DataError, PriorCLIPError) and issubclass(DatasetNotFoundError, PriorCLIPError)
