"""Generators for the bad (and merely unusual) inputs of the robustness suite.

Every input is made here, in a temporary folder, so the suite needs no data files. Each `BAD_IMAGES`
entry writes one file that `load_image` must refuse with a `DataError` naming the path;
`ODD_IMAGES` entries are valid but unusual and must decode to 8-bit RGB.
"""
from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def _noise(h=48, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encoded(fmt: str, arr: np.ndarray | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise() if arr is None else arr).save(buf, fmt, **kw)
    return buf.getvalue()


def _corrupt(data: bytes, start: int = 40) -> bytes:
    """Flip every 7th byte after the first `start` bytes: header intact-ish, payload garbage."""
    b = bytearray(data)
    for i in range(start, len(b) - 4, 7):
        b[i] ^= 0xFF
    return bytes(b)


def write_tif(path: Path, chw: np.ndarray) -> Path:
    """A GeoTIFF-less TIFF of any band count / dtype through GDAL (what satellite products look like)."""
    import rasterio

    c, h, w = chw.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=chw.dtype.name) as dst:
        dst.write(chw)
    return path


# name -> (file name, bytes factory); every one must raise DataError naming the file
BAD_IMAGES = {
    "truncated_jpeg": ("trunc.jpg", lambda: encoded("JPEG")[: len(encoded("JPEG")) // 2]),
    "truncated_png": ("trunc.png", lambda: encoded("PNG")[: len(encoded("PNG")) // 2]),
    "truncated_tiff": ("trunc.tif", lambda: encoded("TIFF")[: len(encoded("TIFF")) // 2]),
    "corrupt_jpeg": ("corrupt.jpg", lambda: _corrupt(encoded("JPEG"))),
    "corrupt_png": ("corrupt.png", lambda: _corrupt(encoded("PNG"))),
    "corrupt_tiff": ("corrupt.tif", lambda: _corrupt(encoded("TIFF"), start=8)),
    "header_only_jpeg": ("head.jpg", lambda: encoded("JPEG")[:20]),
    "header_only_png": ("head.png", lambda: encoded("PNG")[:20]),
    "header_only_tiff": ("head.tif", lambda: encoded("TIFF")[:12]),
    "text_named_jpg": ("notes.jpg", lambda: b"field notes, not an image\n" * 3),
    "html_named_png": ("page.png", lambda: b"<html><body>404 Not Found</body></html>"),
    "zero_bytes_jpg": ("empty.jpg", lambda: b""),
    "zero_bytes_tif": ("empty.tif", lambda: b""),
}


def write_bad(folder: Path, kind: str) -> Path:
    name, make = BAD_IMAGES[kind]
    p = Path(folder) / name
    p.write_bytes(make())
    return p


def _exif_rotated(path: Path) -> Path:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white; orientation 6 = rotate 90 CW on display -> white on top
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path, exif=exif, quality=95)
    return path


def _tif16(path: Path) -> Path:
    x = np.tile(np.linspace(1000, 5000, 40), (30, 1)).astype(np.uint16)
    return write_tif(path, x[None])


def _bands(path: Path, n: int) -> Path:
    y, x = np.mgrid[0:24, 0:32]
    data = np.stack([(x + y + 10 * b) * 37 % 4000 for b in range(n)]).astype(np.uint16)
    return write_tif(path, data)


# name -> writer(path) for valid but unusual images, and the (width, height) to expect
ODD_IMAGES = {
    "one_pixel.png": (lambda p: Image.new("RGB", (1, 1), (10, 200, 30)).save(p), (1, 1)),
    "gray.png": (lambda p: Image.fromarray(_noise()[:, :, 0]).save(p), (64, 48)),
    "palette.png": (lambda p: Image.fromarray(_noise()).convert("P", palette=Image.Palette.ADAPTIVE).save(p), (64, 48)),
    "palette.gif": (lambda p: Image.fromarray(_noise()).convert("P").save(p), (64, 48)),
    "cmyk.jpg": (lambda p: Image.fromarray(_noise()).convert("CMYK").save(p), (64, 48)),
    "cmyk.tif": (lambda p: Image.fromarray(_noise()).convert("CMYK").save(p), (64, 48)),
    "rgba.png": (lambda p: Image.fromarray(_noise()).convert("RGBA").save(p), (64, 48)),
    "gray16.png": (lambda p: Image.fromarray((_noise()[:, :, 0].astype(np.uint16) * 200)).save(p), (64, 48)),
    "gray16.tif": (_tif16, (40, 30)),
    "rgbn_4band.tif": (lambda p: _bands(p, 4), (32, 24)),
    "sentinel2_13band.tif": (lambda p: _bands(p, 13), (32, 24)),
    "exif_rotated.jpg": (_exif_rotated, (20, 40)),
}


def write_odd(folder: Path, name: str) -> Path:
    p = Path(folder) / name
    ODD_IMAGES[name][0](p)
    return p


def solid_gray_jpeg(width: int, height: int) -> bytes:
    """A valid baseline grayscale JPEG of any size, mid-grey (128), built without a pixel buffer.

    With one-symbol Huffman tables (DC diff 0 -> '0', AC EOB -> '0') every 8x8 block costs 2 bits,
    so 20000x20000 is 1.5 MB written in milliseconds, where PIL would first allocate 400 MB of pixels.
    """
    def seg(marker: int, payload: bytes) -> bytes:
        return struct.pack(">HH", marker, len(payload) + 2) + payload

    blocks = math.ceil(width / 8) * math.ceil(height / 8)
    nbits = 2 * blocks
    scan = bytearray(math.ceil(nbits / 8))
    if nbits % 8:  # pad the last byte with 1-bits, as the standard asks
        scan[-1] = (1 << (8 - nbits % 8)) - 1
    one_code = bytes([1] + [0] * 15)  # one code of length 1
    return b"".join([
        b"\xff\xd8",
        seg(0xFFDB, b"\x00" + b"\x01" * 64),                           # quantisation table 0: all ones
        seg(0xFFC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"),  # SOF0, 1 component
        seg(0xFFC4, b"\x00" + one_code + b"\x00"),                     # DC table 0: symbol 0
        seg(0xFFC4, b"\x10" + one_code + b"\x00"),                     # AC table 0: symbol 0x00 (EOB)
        seg(0xFFDA, b"\x01\x01\x00\x00\x3f\x00"),                      # SOS
        bytes(scan),
        b"\xff\xd9",
    ])


def karpathy(images: list[dict]) -> str:
    return json.dumps({"images": images})


def entry(filename, sentences, split="train") -> dict:
    return {"filename": filename, "split": split,
            "sentences": [{"raw": s} if isinstance(s, str) else s for s in sentences]}
