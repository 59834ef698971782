"""One image reader for training, evaluation and indexing, so every stage sees the same pixels.

`load_image(path)` returns an 8-bit RGB `PIL.Image` for any file a remote-sensing user is likely
to have: JPEG/PNG/WebP/BMP/GIF, and TIFF including 16-bit, 32-bit float and multi-band (4-band
RGBN, 13-band Sentinel-2) rasters.

Policies (also in docs/DATA.md):

* Bands: a TIFF read through GDAL shows the bands its colour interpretation or descriptions call
  red, green, blue (a Blue, Green, Red, NIR file is not read as 1, 2, 3), Sentinel-2 stacks their
  B4, B3, B2, and a file that says nothing its first three bands (`priorclip.data.bands`).
  `bands=(r, g, b)` overrides: 1-based numbers like GDAL (`bands=(4, 3, 2)`) or names the file
  has (`bands=("red", "green", "blue")`, `("B4", "B3", "B2")`); one entry gives grey. One-band
  images are grey, replicated to RGB; two-band images use their first band as grey.
* Validity: a raster's nodata value, mask and alpha band mark invalid pixels, which are filled
  with the mean colour of the valid ones (`priorclip.data.rasters`); `read_image` also returns the
  valid fraction. Photos (JPEG, PNG...) are all valid: their alpha is dropped, not composited.
* Scaling: 8-bit data is returned untouched. 16-bit, 32-bit integer and float data is stretched
  per image and per band from its valid pixels' 2nd to 98th percentile to 0..255 (the "cumulative
  count cut" default of QGIS), ignoring NaN; a constant band becomes 0. This is a visual scaling, not a
  radiometric one: it makes a uint16 scene look like the 8-bit photos CLIP was trained on.
* Orientation: the EXIF orientation tag is applied.
* Errors: a missing, empty, truncated, corrupt or non-image file raises
  `priorclip.errors.DataError` naming the path and the problem (never a bare PIL traceback).
  Images above `PIL.Image.MAX_IMAGE_PIXELS` pixels are refused as possible decompression bombs;
  `max_side=` lets a JPEG be decoded at reduced scale (`draft()`) instead, so a thumbnail of a huge
  scene never decodes the full image.

`safe_load_image` and `BadFileReport` are the skip-and-report counterparts shared by the dataset
classes and the indexer.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from priorclip.data.bands import RgbBands, choose_rgb_bands
from priorclip.data.rasters import read_rgb
from priorclip.errors import DataError, DatasetNotFoundError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".jp2"}
)
STRETCH_PERCENTILES = (2.0, 98.0)

# PIL modes that are 8 bits per channel and convert to RGB without losing meaning.
_EIGHT_BIT_MODES = {"1", "L", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_bomb_lock = threading.Lock()


def is_image_file(path: str | os.PathLike) -> bool:
    """True if the file name has an image extension we read (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ImageRead:
    """What `read_image` returns: the picture, the share of its pixels the file marks valid, and
    the bands shown as R, G, B (None for images PIL decodes: photos are their own RGB)."""

    image: Image.Image
    valid_fraction: float = 1.0
    bands: RgbBands | None = None


def load_image(
    path: str | os.PathLike,
    *,
    bands: Sequence[int | str] | None = None,
    max_side: int | None = None,
) -> Image.Image:
    """Read `path` as an 8-bit RGB image (see the module docstring for band, scaling and error policy).

    `bands`: three band numbers (1-based) or names to use as R, G, B, or one for grey.
    `max_side`: if given, the returned image's longer side is at most this many pixels (JPEGs
    are decoded at reduced scale).
    """
    return read_image(path, bands=bands, max_side=max_side).image


def read_image(
    path: str | os.PathLike,
    *,
    bands: Sequence[int | str] | None = None,
    max_side: int | None = None,
) -> ImageRead:
    """`load_image` plus the valid fraction and the bands used, for the search index, which
    records both and skips images that are mostly nodata."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path}: image file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot access image file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not an image file")
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes), not an image")
    with open(path, "rb") as f:
        head = f.read(16)
    return _load(path, str(path), head, bands, max_side)


def image_from_bytes(
    data: bytes,
    name: str = "<bytes>",
    *,
    bands: Sequence[int | str] | None = None,
    max_side: int | None = None,
) -> Image.Image:
    """Same as `load_image` for in-memory bytes (webdataset shards, uploads); `name` is used in errors."""
    if not data:
        raise DataError(f"{name}: empty image data (0 bytes)")
    # Pass the bytes, not one BytesIO: PIL's close() closes the stream it was given, and a TIFF
    # PIL opens but hands on to GDAL (16-bit grey, ...) must still be readable afterwards.
    return _load(bytes(data), name, data[:16], bands, max_side).image


def safe_load_image(
    path: str | os.PathLike,
    report: "BadFileReport | None" = None,
    **kwargs,
) -> Image.Image | None:
    """`load_image`, but a bad file is logged (and added to `report`) and None is returned."""
    try:
        return load_image(path, **kwargs)
    except DataError as exc:
        log.warning("skipping unreadable image: %s", exc)
        if report is not None:
            report.add(path, _reason(exc, path))
        return None


def _reason(exc: Exception, path) -> str:
    """The error message without the leading 'path: ' (the report stores the path separately)."""
    msg = str(exc)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


# ----------------------------------------------------------------------------------------------
# decoding


def _load(src, name: str, head: bytes, bands, max_side) -> ImageRead:
    """`src` is a path or the encoded bytes; each reader opens its own stream on it."""
    if bands is not None:
        bands = _check_bands(bands, name)
    if max_side is not None and int(max_side) < 1:
        raise DataError(f"{name}: max_side must be a positive number of pixels, got {max_side!r}")
    is_tiff = head[:4] in _TIFF_MAGIC
    try:
        im = _pil_open(src, name, head, max_side)
    except _PilCannotRead as exc:
        if is_tiff:  # PIL cannot open many multi-band / float TIFFs: GDAL (rasterio) can
            return _load_raster(src, name, bands, max_side)
        raise DataError(f"{name}: {exc}") from None
    try:
        if is_tiff and (bands is not None or im.mode not in _EIGHT_BIT_MODES or _tiff_says_more(im)):
            # GDAL reads TIFFs whose band layout, sample type, nodata or masks PIL does not understand.
            im.close()
            return _load_raster(src, name, bands, max_side)
        if im.mode in _EIGHT_BIT_MODES and bands is None:
            return ImageRead(_finish(_pil_to_rgb(im), max_side))
        im.load()
        arr = np.asarray(im)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return ImageRead(_finish(Image.fromarray(_array_to_rgb(arr, bands, name)), max_side))
    except (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError) as exc:
        raise DataError(f"{name}: corrupt or truncated image ({_short(exc)})") from None


class _PilCannotRead(Exception):
    pass


def _tiff_says_more(im: Image.Image) -> bool:
    """A TIFF that carries GDAL's band labels or nodata (GDAL_METADATA, GDAL_NODATA), extra
    samples (alpha, NIR) or further images (internal masks): PIL would show bands 1, 2, 3 and
    every pixel, so GDAL reads it. Plain RGB, grey and palette TIFFs stay with PIL."""
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return False
    return 42112 in tags or 42113 in tags or 338 in tags or bool(getattr(tags, "next", 0))


def _pil_open(src, name: str, head: bytes, max_side):
    """Open (not decode) with PIL; bomb check applies to the size that will really be decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Corrupt EXIF data": we raise instead
            im = Image.open(_stream(src))
            if max_side is not None:
                im.draft("RGB", (int(max_side), int(max_side)))
            return im
    except Image.DecompressionBombError:
        if max_side is None or head[:2] != b"\xff\xd8":
            raise _bomb(name, None, max_side is not None) from None
    except UnidentifiedImageError:
        raise _PilCannotRead(f"not a recognised image format (starts with {head[:8]!r})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _PilCannotRead(f"cannot read image header ({_short(exc)})") from None
    # A huge JPEG with max_side: open without the bomb check, decode at reduced scale, re-check.
    with _bomb_lock:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(_stream(src))
        finally:
            Image.MAX_IMAGE_PIXELS = old
    full = im.size
    im.draft("RGB", (int(max_side), int(max_side)))
    if old is not None and im.size[0] * im.size[1] > old:
        raise _bomb(name, full, True)
    return im


def _stream(src):
    """A fresh stream over in-memory bytes (a path is opened by PIL itself)."""
    return io.BytesIO(src) if isinstance(src, bytes) else src


def _bomb(name, size, tried_draft) -> DataError:
    limit = Image.MAX_IMAGE_PIXELS
    what = f"{size[0]}x{size[1]} pixels" if size else "too many pixels"
    hint = (
        "even at the smallest JPEG draft scale"
        if tried_draft
        else "pass max_side= to decode a JPEG at reduced scale"
    )
    return DataError(
        f"{name}: image has {what}, above PIL.Image.MAX_IMAGE_PIXELS={limit} "
        f"(decompression-bomb guard); {hint}, or raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted"
    )


def _pil_to_rgb(im: Image.Image) -> Image.Image:
    im = ImageOps.exif_transpose(im)  # decodes the image; errors surface here
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids PIL's palette-transparency warning
    if im.mode in ("LA", "La", "PA"):
        im = im.convert("L")
    return im.convert("RGB")


def _finish(im: Image.Image, max_side) -> Image.Image:
    if max_side is not None and max(im.size) > max_side:
        im.thumbnail((int(max_side), int(max_side)), Image.Resampling.BICUBIC)
    return im


def _check_bands(bands, name) -> tuple:
    """Band numbers (int) and lower-case names, three of them (one for grey)."""
    what = "three 1-based band numbers like (4, 3, 2) or band names like ('red', 'green', 'blue')"
    if isinstance(bands, str):
        bands = bands.split(",")
    try:
        b = tuple(int(x) if isinstance(x, (int, np.integer)) or str(x).strip().isdigit() else str(x).strip()
                  for x in bands)
    except TypeError:
        raise DataError(f"{name}: bands must be {what}, got {bands!r}") from None
    if len(b) not in (1, 3) or any(x == "" or (isinstance(x, int) and x < 1) for x in b):
        raise DataError(f"{name}: bands must be {what}, got {bands!r}")
    return b


def _select(arr: np.ndarray, bands, name) -> np.ndarray:
    """[H,W,C] -> [H,W,3] following the band policy."""
    c = arr.shape[2]
    if bands is not None:
        if any(isinstance(b, str) for b in bands):
            raise DataError(f"{name}: band names ({', '.join(map(str, bands))}) need a raster GDAL can read "
                            "(GeoTIFF ...); this image has no band names: use band numbers")
        if len(bands) == 1:
            bands = bands * 3
        if max(bands) > c:
            raise DataError(f"{name}: bands={bands} asked for band {max(bands)} but the image has {c} band(s)")
        return arr[:, :, [b - 1 for b in bands]]
    if c <= 2:
        return np.repeat(arr[:, :, :1], 3, axis=2)
    return arr[:, :, :3]


def _array_to_rgb(arr: np.ndarray, bands, name) -> np.ndarray:
    arr = _select(arr, bands, name)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        return np.ascontiguousarray(arr.astype(np.uint8) * 255)
    return stretch_to_uint8(arr)


def stretch_to_uint8(arr: np.ndarray, percentiles=STRETCH_PERCENTILES) -> np.ndarray:
    """Per-band 2nd–98th percentile stretch of an [H,W,C] array to uint8 (NaN -> 0)."""
    x = arr.astype(np.float32, copy=False)
    out = np.zeros(x.shape, dtype=np.uint8)
    for i in range(x.shape[2]):
        band = x[:, :, i]
        finite = band[np.isfinite(band)]
        if finite.size == 0:
            continue
        lo, hi = np.percentile(finite, percentiles)
        if hi <= lo:
            continue  # constant band: leave it black rather than invent contrast
        scaled = (band - lo) * (255.0 / (hi - lo))
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
        out[:, :, i] = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
    return out


def _load_raster(src, name: str, bands, max_side) -> ImageRead:
    """Read a TIFF through GDAL: any band count or sample type, the file's band labels and masks
    (`priorclip.data.rasters`); reduced read when max_side is given."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    from rasterio.enums import Resampling

    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            if isinstance(src, bytes):
                mem = stack.enter_context(rasterio.MemoryFile(src))
                ds = stack.enter_context(mem.open())
            else:
                ds = stack.enter_context(rasterio.open(src))
            h, w = ds.height, ds.width
            rgb_bands = choose_rgb_bands(ds, bands, name)
            out_shape = None
            if max_side is not None and max(h, w) > max_side:
                s = max_side / max(h, w)
                out_shape = (max(1, round(h * s)), max(1, round(w * s)))
            else:
                limit = Image.MAX_IMAGE_PIXELS
                if limit is not None and h * w > 2 * limit:
                    raise _bomb(name, (w, h), False)
            read = read_rgb(ds, rgb_bands, out_shape=out_shape, resampling=Resampling.average)
    except DataError:
        raise
    except (RasterioIOError, OSError, ValueError) as exc:
        raise DataError(f"{name}: corrupt or unreadable TIFF ({_short(exc)})") from None
    return ImageRead(_finish(Image.fromarray(read.pixels), max_side), read.valid_fraction, rgb_bands)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


# ----------------------------------------------------------------------------------------------
# skip-and-report


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


class BadFileReport:
    """Collects unreadable files (path + reason) and writes them as JSON.

    With `log_path`, every entry is also appended at once as one JSON line to that file, so entries
    found inside DataLoader worker processes (which hold copies of this object) are not lost:
    `BadFileReport.read(log_path)` in the main process sees them all. Entries are unique by path.
    """

    def __init__(self, log_path: str | os.PathLike | None = None):
        self.log_path = Path(log_path) if log_path is not None else None
        self._entries: dict[str, BadFile] = {}

    def add(self, path, reason: str) -> None:
        key = str(path)
        if key in self._entries:
            return
        entry = BadFile(key, str(reason))
        self._entries[key] = entry
        if self.log_path is not None:
            line = json.dumps({"path": entry.path, "reason": entry.reason}) + "\n"
            # one write() with O_APPEND: lines from several processes do not interleave
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)

    def refresh(self) -> "BadFileReport":
        """Merge in entries other processes appended to `log_path`."""
        if self.log_path is not None and self.log_path.exists():
            for line in self.log_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    d = json.loads(line)
                    self._entries.setdefault(d["path"], BadFile(d["path"], d["reason"]))
        return self

    @classmethod
    def read(cls, log_path) -> "BadFileReport":
        return cls(log_path).refresh()

    @property
    def entries(self) -> list[BadFile]:
        return list(self._entries.values())

    @property
    def paths(self) -> list[str]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[BadFile]:
        return iter(self.entries)

    def __contains__(self, path) -> bool:
        return str(path) in self._entries

    def extend(self, entries: Iterable[BadFile]) -> None:
        for e in entries:
            self.add(e.path, e.reason)

    def to_dict(self) -> dict:
        return {"count": len(self), "files": [{"path": e.path, "reason": e.reason} for e in self]}

    def write_json(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def summary(self, limit: int = 5) -> str:
        if not self:
            return "no unreadable files"
        lines = [f"{len(self)} unreadable file(s):"] + [f"  {e.path}: {e.reason}" for e in self.entries[:limit]]
        if len(self) > limit:
            lines.append(f"  ... and {len(self) - limit} more")
        return "\n".join(lines)
