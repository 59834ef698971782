"""Bad and unusual image files: through load_image, and through a dataset + 2-worker DataLoader."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from torch.utils.data import DataLoader

import inputs
from priorclip.data import ImageFolder, KarpathyCaptions, collate_skip_none, load_image
from priorclip.data.images import BadFileReport
from priorclip.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.mark.parametrize("kind", sorted(inputs.BAD_IMAGES))
def test_bad_image_raises_dataerror_naming_the_file(tmp_path, kind):
    path = inputs.write_bad(tmp_path, kind)
    with pytest.raises(DataError) as info:
        load_image(path)
    msg = str(info.value)
    assert msg.startswith(str(path) + ": ") and "\n" not in msg
    assert any(w in msg for w in ("truncated", "corrupt", "not a recognised", "empty file", "cannot read", "unreadable"))


@pytest.mark.parametrize("name", sorted(inputs.ODD_IMAGES))
def test_unusual_image_decodes_to_8bit_rgb(tmp_path, name):
    im = load_image(inputs.write_odd(tmp_path, name))
    assert im.mode == "RGB" and im.size == inputs.ODD_IMAGES[name][1]
    a = np.asarray(im)
    assert a.dtype == np.uint8 and a.shape == (im.size[1], im.size[0], 3)
    if name == "exif_rotated.jpg":  # the white left half is on top once the EXIF rotation is applied
        g = a.mean(axis=2)
        assert g[:20].mean() > 200 and g[20:].mean() < 50
    if name.endswith("band.tif"):  # uint16 bands are stretched: full 0..255 range used
        assert a.min() == 0 and a.max() == 255


def test_every_bad_and_odd_file_through_a_two_worker_dataloader(tmp_path):
    """One folder holding every generated input: the loader yields each good image once and the
    report (collected from both worker processes) lists each bad file with its reason."""
    for kind in inputs.BAD_IMAGES:
        inputs.write_bad(tmp_path, kind)
    for name in inputs.ODD_IMAGES:
        inputs.write_odd(tmp_path, name)
    log = tmp_path.parent / f"{tmp_path.name}-bad.jsonl"
    ds = ImageFolder(tmp_path, labels="none", transforms=lambda im: np.asarray(im.resize((8, 8))).sum(),
                     bad_files=log)
    dl = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_skip_none)
    seen = [name for batch in dl if batch is not None for name in batch["filename"]]
    assert sorted(seen) == sorted(inputs.ODD_IMAGES)
    report = BadFileReport.read(log)
    bad_names = {inputs.BAD_IMAGES[k][0] for k in inputs.BAD_IMAGES}
    assert {p.rsplit("/", 1)[-1] for p in (e.path for e in report)} == bad_names
    assert all(e.reason for e in report)


def test_huge_jpeg_refused_without_max_side_and_thumbnailed_in_bounded_memory(tmp_path):
    big = tmp_path / "scene_20000.jpg"
    big.write_bytes(inputs.solid_gray_jpeg(20000, 20000))
    with pytest.raises(DataError, match=r"scene_20000\.jpg: .*MAX_IMAGE_PIXELS.*max_side"):
        load_image(big)
    # Peak RSS of a fresh process: a full decode needs 400 MB (grey) / 1.2 GB (RGB); the draft
    # decode at 1/8 scale needs ~6 MB. tracemalloc cannot see PIL's C allocations, getrusage can.
    code = textwrap.dedent(f"""
        import resource, json
        from priorclip.data.images import load_image
        import numpy as np
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        im = load_image({str(big)!r}, max_side=256)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"size": im.size, "mean": float(np.asarray(im).mean()), "grew_kb": after - before}}))
    """)
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["size"] == [256, 256] and abs(out["mean"] - 128) < 2
    assert out["grew_kb"] < 100 * 1024, out  # < 100 MB, versus >= 400 MB for a full decode


def test_thousand_images_with_twenty_bad_ones_train_through(tmp_path):
    """~1,000 small images, 20 bad: a pairs-mode epoch over 2 workers yields every item (bad ones
    replaced by the next readable image), and the report lists exactly the 20 bad files."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    kinds = sorted(inputs.BAD_IMAGES)
    rng = np.random.default_rng(1)
    bad = set(rng.choice(1000, 20, replace=False).tolist())
    tiny = inputs.encoded("PNG", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    entries = []
    for i in range(1000):
        name = f"{i:04d}.png"
        if i in bad:
            (img_dir / name).write_bytes(inputs.BAD_IMAGES[kinds[i % len(kinds)]][1]())
        else:
            (img_dir / name).write_bytes(tiny)
        entries.append(inputs.entry(name, [f"scene {i} with a road"]))
    (tmp_path / "dataset.json").write_text(inputs.karpathy(entries))
    log = tmp_path / "bad.jsonl"
    ds = KarpathyCaptions(tmp_path, "train", transforms=lambda im: np.asarray(im).shape[0], bad_files=log)
    dl = DataLoader(ds, batch_size=50, num_workers=2, collate_fn=collate_skip_none)
    n_items, ids = 0, set()
    for batch in dl:
        n_items += len(batch["image_id"])
        ids.update(batch["image_id"].tolist())
    assert n_items == 1000  # the epoch ran to the end: every index gave a sample
    assert ids == set(range(1000)) - bad  # and never a bad image
    report = BadFileReport.read(log)
    assert len(report) == 20
    assert sorted(int(e.path.rsplit("/", 1)[-1][:4]) for e in report) == sorted(bad)
