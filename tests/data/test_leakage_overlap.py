"""Leakage check: multi-index matching equals brute force; re-encoded copies found; real UCM numbers."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from priorclip.cli.main import main
from priorclip.data.overlap import collect_images, find_overlap, hamming, hash_images, near_pairs


def _brute(a, b, t):
    d = hamming(a[:, None], b[None, :])
    i, j = np.nonzero(d <= t)
    return {(int(x), int(y), int(d[x, y])) for x, y in zip(i, j)}


@pytest.mark.parametrize("threshold", [0, 3, 4, 7, 10])
def test_multi_index_equals_brute_force(threshold):
    rng = np.random.default_rng(threshold)
    a = rng.integers(0, 2**63, 3000, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 3000, dtype=np.uint64)
    b = rng.integers(0, 2**63, 500, dtype=np.uint64)
    for k in range(60):  # plant near copies at distances 0..threshold+2
        flips = rng.choice(64, size=k % (threshold + 3), replace=False)
        b[k] = a[k * 7] ^ np.uint64(sum(1 << int(f) for f in flips))
    got = {tuple(map(int, r)) for r in near_pairs(a, b, threshold)}
    assert got == _brute(a, b, threshold)
    assert len(got) >= 60 * (threshold + 1) // (threshold + 3) - 1
    self_got = {tuple(map(int, r)) for r in near_pairs(a[:800], None, threshold)}
    assert self_got == {p for p in _brute(a[:800], a[:800], threshold) if p[0] < p[1]}


def _photo(rng, h=128, w=128):
    # smooth random field (like a scene), not white noise, so phash is stable under re-encoding
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def test_reencoded_and_resized_copies_found(tmp_path):
    rng = np.random.default_rng(0)
    train, test = tmp_path / "train", tmp_path / "test"
    train.mkdir(), test.mkdir()
    for i in range(20):
        _photo(rng).save(train / f"t{i}.png")
    Image.open(train / "t3.png").save(test / "copy_jpeg.jpg", quality=70)  # re-encoded
    Image.open(train / "t7.png").resize((96, 96), Image.Resampling.LANCZOS).save(test / "copy_small.png")  # resized
    shutil.copy(train / "t11.png", test / "exact.png")  # byte copy
    for i in range(10):
        _photo(rng).save(test / f"other{i}.png")  # different images
    res = find_overlap(hash_images(collect_images(train)), hash_images(collect_images(test)), threshold=4)
    found = {(p["train"].split("/")[-1], p["test"].split("/")[-1], p["kind"]) for p in res.pairs}
    assert found == {("t3.png", "copy_jpeg.jpg", "near"), ("t7.png", "copy_small.png", "near"), ("t11.png", "exact.png", "exact")}
    kept = res.deduplicated_train()
    assert len(kept) == 17 and not any(k.endswith(("/t3.png", "/t7.png", "/t11.png")) for k in kept)


def _scene(rng, side=160):
    """A textured scene (blobs at several scales), so crops and shifts change what phash sees."""
    img = np.zeros((side, side), dtype=np.float64)
    for cells in (4, 8, 16):
        img += np.asarray(Image.fromarray(rng.integers(0, 255, (cells, cells), dtype=np.uint8)).resize(
            (side, side), Image.Resampling.BICUBIC), dtype=np.float64) / cells ** 0.5
    img = 255 * (img - img.min()) / np.ptp(img)
    return Image.fromarray(img.astype(np.uint8)).convert("RGB")


def _cut(img, left, top, right, bottom):
    w, h = img.size
    return img.crop((round(w * left), round(h * top), round(w * (1 - right)), round(h * (1 - bottom)))).resize(
        (w, h), Image.Resampling.BICUBIC)


def test_cropped_shifted_and_rotated_copies_found_only_with_geometric_hashes(tmp_path):
    rng = np.random.default_rng(1)
    train, test = tmp_path / "train", tmp_path / "test"
    train.mkdir(), test.mkdir()
    scenes = [_scene(rng) for _ in range(12)]
    for i, im in enumerate(scenes):
        im.save(test / f"s{i}.png")
    copies = {"crop6.jpg": (0, _cut(scenes[0], .06, .06, .06, .06)), "rot90.jpg": (1, scenes[1].rotate(90)),
              "rot270crop.jpg": (2, _cut(scenes[2].rotate(270), .03, .03, .03, .03)),
              # a window moved by 3 % against the 5 % window of the same scene: new content enters
              "shift3.jpg": (3, _cut(scenes[3], .08, .08, .02, .02))}
    _cut(scenes[3], .05, .05, .05, .05).save(test / "s3.png")
    for name, (_, im) in copies.items():
        im.save(train / name, quality=90)
    for i in range(8):
        _scene(rng).save(train / f"other{i}.png")  # unrelated scenes
    tr, te = hash_images(collect_images(train)), hash_images(collect_images(test))
    expected = {(name, f"s{k}.png") for name, (k, _) in copies.items()}
    res = find_overlap(tr, te, threshold=6)
    found = {(p["train"].split("/")[-1], p["test"].split("/")[-1]) for p in res.pairs}
    assert found == expected
    rotations = {p["train"].split("/")[-1]: p["match"]["rotation"] for p in res.pairs}
    assert rotations["rot90.jpg"] == 90 and rotations["rot270crop.jpg"] == 270
    assert {(p["train"].split("/")[-1]) for p in res.pairs if "shift" in p["match"]} >= {"shift3.jpg"}
    # whole-image hashes alone miss them, and hashes made without variants are never matched as if they had them
    assert not find_overlap(tr, te, threshold=6, geometric=False).pairs
    plain = hash_images(collect_images(train), geometric=False)
    assert not plain.geometric and not find_overlap(plain, te, threshold=6).pairs


@pytest.fixture(scope="module")
def ucm_hashes(ucm_dir):
    items = collect_images(ucm_dir / "dataset.json")  # all 2,100 images
    return items, hash_images(items)


@pytest.mark.shared
def test_ucm_train_vs_test_and_within(ucm_dir, ucm_hashes, tmp_path):
    items, h = ucm_hashes
    assert len(items) == 2100 and h.valid.all()
    splits = {s: {n for n, _ in collect_images(f"{ucm_dir / 'dataset.json'}:{s}")} for s in ("train", "test")}

    def subset(names):
        keep = [k for k, n in enumerate(h.names) if n in names]
        from priorclip.data.overlap import HashedImages
        return HashedImages([h.names[k] for k in keep], [h.paths[k] for k in keep], [h.sha256[k] for k in keep],
                            h.variants[keep], h.valid[keep])

    labels = dict(ln.split(",")[:2] for ln in (ucm_dir / "labels.csv").read_text().splitlines()[1:])
    base = lambda path: path.split("/")[-1]  # noqa: E731
    # measured: no copy of a test image in train at distance <= 4; aligned by crops, one look-alike
    # of the same class (which `--json` lists with its match for a look)
    assert not find_overlap(subset(splits["train"]), subset(splits["test"]), threshold=4, geometric=False).pairs
    cross = find_overlap(subset(splits["train"]), subset(splits["test"]), threshold=4).pairs
    assert len(cross) == 1 and labels[base(cross[0]["train"])] == labels[base(cross[0]["test"])]
    # measured: UCM contains one exact duplicate pair (102.jpg == 103.jpg, both 'airplane') ...
    plain = find_overlap(h, None, threshold=4, geometric=False)
    assert [(p["first"].split("/")[-1], p["second"].split("/")[-1], p["kind"]) for p in plain.pairs] == [
        ("102.jpg", "103.jpg", "exact")]
    # ... and, aligned by crops and shifts, 5 pairs of different images with the same layout (two
    # beaches, runways, residential blocks); all within one class, as are the 21 of distance 6
    within = find_overlap(h, None, threshold=4)
    names = {(p["first"].split("/")[-1], p["second"].split("/")[-1]) for p in within.pairs}
    assert len(names) == 6 and ("102.jpg", "103.jpg") in names and ("1752.jpg", "1753.jpg") in names
    assert all(labels[a] == labels[b] for a, b in names)
    assert len(find_overlap(h, None, threshold=6).pairs) == 22


@pytest.mark.shared
def test_cli_overlap_on_ucm(ucm_dir, tmp_path, capsys):
    j = str(ucm_dir / "dataset.json")
    rc = main(["data", "overlap", f"{j}:test", f"{j}:val", "--out", str(tmp_path / "dedup.txt"),
               "--json", str(tmp_path / "pairs.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "0 pair(s)" in out
    assert len((tmp_path / "dedup.txt").read_text().splitlines()) == 420
    d = json.loads((tmp_path / "pairs.json").read_text())
    assert d["summary"]["train_images"] == 420 and d["pairs"] == []
    rc = main(["data", "overlap", str(tmp_path / "nowhere")])
    assert rc == 2 and "not found" in capsys.readouterr().err
