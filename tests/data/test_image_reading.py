"""load_image on every file kind a user may have, generated in tmp_path; errors name the path."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import rasterio
from PIL import Image

from priorclip.data.images import BadFileReport, image_from_bytes, load_image, safe_load_image, stretch_to_uint8
from priorclip.errors import DataError, DatasetNotFoundError

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def _rgb_array(h=24, w=32):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 77)], axis=2).astype(np.uint8)


def _write_tif(path, arr_chw, dtype):
    c, h, w = arr_chw.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=dtype) as dst:
        dst.write(arr_chw.astype(dtype))
    return path


def test_jpeg_png_tiff_8bit_rgb(tmp_path):
    arr = _rgb_array()
    for ext, kw in [("png", {}), ("tif", {}), ("jpg", {"quality": 100}), ("bmp", {}), ("webp", {"lossless": True})]:
        p = tmp_path / f"a.{ext}"
        Image.fromarray(arr).save(p, **kw)
        im = load_image(p)
        assert im.mode == "RGB" and im.size == (32, 24)
        got = np.asarray(im).astype(int)
        tol = 6 if ext == "jpg" else 0  # 8-bit data is returned untouched (jpeg: lossy codec only)
        assert np.abs(got - arr).max() <= tol, ext


def test_grayscale_palette_cmyk_la_rgba(tmp_path):
    arr = _rgb_array()
    gray = Image.fromarray(arr[:, :, 0])
    gray.save(tmp_path / "g.png")
    im = load_image(tmp_path / "g.png")
    assert im.mode == "RGB"
    a = np.asarray(im)
    assert (a[:, :, 0] == arr[:, :, 0]).all() and (a[:, :, 1] == a[:, :, 0]).all() and (a[:, :, 2] == a[:, :, 0]).all()

    pal = Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    im = load_image(tmp_path / "p.png")
    assert im.mode == "RGB" and np.abs(np.asarray(im).astype(int) - np.asarray(pal.convert("RGB")).astype(int)).max() == 0

    Image.fromarray(arr).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    im = load_image(tmp_path / "c.jpg")
    assert im.mode == "RGB" and np.abs(np.asarray(im).astype(int) - arr).mean() < 8

    Image.fromarray(arr[:, :, 0]).convert("LA").save(tmp_path / "la.png")
    assert (np.asarray(load_image(tmp_path / "la.png"))[:, :, 2] == arr[:, :, 0]).all()

    rgba = np.dstack([arr, np.zeros(arr.shape[:2], np.uint8)])  # fully transparent: alpha dropped, colours kept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert (np.asarray(load_image(tmp_path / "rgba.png")) == arr).all()


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "r.jpg")
    assert out.size == (20, 40)
    a = np.asarray(out).mean(axis=2)
    assert a[:20].mean() > 200 and a[20:].mean() < 50  # former left half is now on top


def test_16bit_single_band_tiff_and_png_stretched(tmp_path):
    h, w = 20, 50
    x = np.tile(np.linspace(1000, 5000, w), (h, 1))
    _write_tif(tmp_path / "g16.tif", x[None], "uint16")
    im = load_image(tmp_path / "g16.tif")
    a = np.asarray(im)
    assert im.mode == "RGB" and im.size == (w, h)
    assert (a[:, :, 0] == a[:, :, 1]).all()
    assert a[0, 0, 0] == 0 and a[0, -1, 0] == 255  # below 2nd / above 98th percentile clip
    assert a[0, w // 2, 0] in range(120, 136)
    assert (np.diff(a[0, :, 0].astype(int)) >= 0).all()

    Image.fromarray(x.astype(np.uint16)).save(tmp_path / "g16.png")
    b = np.asarray(load_image(tmp_path / "g16.png"))
    assert np.abs(b.astype(int) - a.astype(int)).max() <= 1  # same policy whatever the container


def test_multiband_tiffs_default_and_chosen_bands(tmp_path):
    h, w = 16, 16
    y, x = np.mgrid[0:h, 0:w]
    # 4-band uint16 (RGBN): default = first three bands
    four = np.stack([x * 100, y * 100, np.full_like(x, 500), x * 0 + 7]).astype(np.uint16)
    a = np.asarray(load_image(_write_tif(tmp_path / "rgbn.tif", four, "uint16")))
    assert a[:, :, 0][0, -1] == 255 and a[:, :, 0][0, 0] == 0  # R follows x
    assert a[:, :, 1][-1, 0] == 255 and a[:, :, 1][0, 0] == 0  # G follows y
    assert (a[:, :, 2] == 0).all()  # constant band -> black

    # 13-band Sentinel-2-like: true colour is bands (4, 3, 2)
    bands = np.zeros((13, h, w), np.uint16)
    bands[3], bands[2], bands[1] = x * 10 + 1, y * 10 + 1, (x + y) * 10 + 1
    bands[0] = 999  # band 1 would give a flat image
    p = _write_tif(tmp_path / "s2.tif", bands, "uint16")
    a = np.asarray(load_image(p, bands=(4, 3, 2)))
    assert a.shape == (h, w, 3)
    assert a[0, -1, 0] == 255 and a[-1, 0, 1] == 255 and a[-1, -1, 2] == 255 and a[0, 0, 2] == 0
    with pytest.raises(DataError, match=r"s2\.tif.*band 14.*13 band"):
        load_image(p, bands=(14, 3, 2))
    with pytest.raises(DataError, match="three 1-based band numbers"):
        load_image(p, bands=(0, 1, 2))

    # 4-band uint8: untouched values of the first three bands
    u8 = np.stack([x * 10, y * 10, x + y, x * 0 + 255]).astype(np.uint8)
    a = np.asarray(load_image(_write_tif(tmp_path / "u8.tif", u8, "uint8")))
    assert (a == np.moveaxis(u8[:3], 0, -1)).all()

    # the same file from bytes (webdataset shards) goes through the same path
    a2 = np.asarray(image_from_bytes((tmp_path / "s2.tif").read_bytes(), "s2", bands=(4, 3, 2)))
    assert (a2 == np.asarray(load_image(p, bands=(4, 3, 2)))).all()


@pytest.mark.parametrize("writer", ["pil", "rasterio"])
def test_16bit_grey_tiff_from_bytes_equals_file(tmp_path, writer):
    """Issue #16.3: PIL opens a 16-bit grey TIFF, hands it to GDAL and closed the upload's stream."""
    grey = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 13)
    p = tmp_path / "gray16.tif"
    if writer == "pil":
        Image.fromarray(grey).save(p)
        assert Image.open(p).mode.startswith("I;16")
    else:
        _write_tif(p, grey[None], "uint16")
    from_file = np.asarray(load_image(p))
    from_bytes = np.asarray(image_from_bytes(p.read_bytes(), "gray16.tif"))
    assert from_file.shape == (48, 64, 3) and from_file.max() == 255
    assert np.array_equal(from_bytes, from_file)
    assert np.array_equal(np.asarray(image_from_bytes(p.read_bytes(), max_side=32)),
                          np.asarray(load_image(p, max_side=32)))


def test_float_tiff_with_nan(tmp_path):
    f = np.tile(np.linspace(-1, 1, 32, dtype=np.float32), (8, 1))
    f[0, 0] = np.nan
    a = np.asarray(load_image(_write_tif(tmp_path / "f.tif", np.stack([f, -f, f * 0]), "float32")))
    assert a[:, :, 0][1, -1] == 255 and a[:, :, 1][1, 0] == 255 and a[0, 0, 0] == 0


def test_stretch_percentiles():
    x = np.arange(10000, dtype=np.uint16).reshape(100, 100, 1)
    s = stretch_to_uint8(x)
    assert s.min() == 0 and s.max() == 255
    # 2% below the low cut (200 values) plus those that round down to 0 (half a grey level = 19 values)
    assert 200 <= (s == 0).sum() <= 220 and 200 <= (s == 255).sum() <= 220


@pytest.mark.parametrize("kind", ["zero", "text", "truncated", "tiff_garbage", "missing", "directory"])
def test_bad_files_raise_dataerror_naming_path(tmp_path, kind):
    p = tmp_path / f"bad_{kind}.jpg"
    if kind == "zero":
        p.write_bytes(b"")
        msg = "empty file"
    elif kind == "text":
        p.write_text("hello, I am not a picture\n")
        msg = "not a recognised image format"
    elif kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
        p.write_bytes(buf.getvalue()[:800])
        msg = "truncated"
    elif kind == "tiff_garbage":
        p = tmp_path / "bad.tif"
        p.write_bytes(b"II*\x00" + b"\x08\x00\x00\x00" + b"\xff" * 100)
        msg = "TIFF|corrupt|cannot"
    elif kind == "missing":
        msg = "not found"
    else:
        p.mkdir()
        msg = "directory"
    err = DatasetNotFoundError if kind == "missing" else DataError
    with pytest.raises(err, match=msg) as info:
        load_image(p)
    assert str(p) in str(info.value)
    # no chained PIL traceback: neither an explicit cause nor a shown implicit context
    assert info.value.__cause__ is None and (info.value.__suppress_context__ or info.value.__context__ is None)
    report = BadFileReport()
    assert safe_load_image(p, report) is None
    assert report.paths == [str(p)] and report.entries[0].reason


def test_decompression_bomb_guard_and_max_side(tmp_path, monkeypatch):
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (400, 600, 3), dtype=np.uint8)).save(tmp_path / "big.jpg")
    Image.fromarray(np.zeros((400, 600, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 600x400 > 2x the limit: refused
    for name in ("big.jpg", "big.png"):
        with pytest.raises(DataError, match=r"big\..*MAX_IMAGE_PIXELS"):
            load_image(tmp_path / name)
    im = load_image(tmp_path / "big.jpg", max_side=64)  # JPEG: decoded at 1/4 scale (150x100), under the limit
    assert max(im.size) == 64 and im.mode == "RGB"
    with pytest.raises(DataError, match="MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "big.png", max_side=64)  # PNG has no reduced decode
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    assert load_image(tmp_path / "big.png", max_side=100).size == (100, 67)


def test_bad_file_report_json_and_process_log(tmp_path):
    log = tmp_path / "bad.jsonl"
    r1, r2 = BadFileReport(log), BadFileReport(log)  # e.g. two DataLoader workers
    r1.add("/x/a.jpg", "empty file")
    r2.add("/x/b.jpg", "truncated")
    r2.add("/x/b.jpg", "truncated")
    merged = BadFileReport.read(log)
    assert sorted(merged.paths) == ["/x/a.jpg", "/x/b.jpg"]
    out = merged.write_json(tmp_path / "report.json")
    d = json.loads(out.read_text())
    assert d["count"] == 2 and {f["path"] for f in d["files"]} == {"/x/a.jpg", "/x/b.jpg"}
