"""Find the images of an archive and read them as RGB pictures for the encoder.

Two kinds of source:
  * an *image* (JPEG, PNG, small TIFF without CRS ...) becomes one item;
  * a *scene* (a TIFF with a coordinate reference system, or larger than one tile) is cut into
    tiles read by windowed reads, so a 10 GB scene is never decoded whole. Each tile remembers its
    pixel window and, when georeferenced, its footprint in longitude/latitude.

Pixel values: 8-bit data is used as is. Anything else (16-bit, float) is stretched per band from
its valid pixels' 2nd-98th percentile to 0-255; for scenes the percentiles come from a decimated
read of the whole scene, so neighbouring tiles share one stretch. Bands: those the file labels
red, green, blue, or `--bands` (`priorclip.data.bands`), chosen once per file and recorded.
Validity: the file's nodata, mask or alpha (`priorclip.data.rasters`); each item's valid fraction
is measured when it is read for embedding, where tiles below `--min-valid` are skipped.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from priorclip.data.bands import BandRequest, RgbBands, choose_rgb_bands, parse_bands
from priorclip.data.images import ImageRead, read_image
from priorclip.data.rasters import STRETCH_PERCENTILES, read_rgb
from priorclip.errors import DataError, DatasetNotFoundError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}
RASTER_EXTENSIONS = {".tif", ".tiff", ".jp2", ".img", ".vrt"}
ALL_EXTENSIONS = IMAGE_EXTENSIONS | RASTER_EXTENSIONS
_STATS_SIDE = 1024  # decimated read size used for a scene's stretch statistics


@dataclass
class FoundFile:
    path: str          # resolved absolute path
    root: str          # resolved root it was found under
    size: int
    mtime_ns: int


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class FilePlan:
    """What indexing a file means: its kind, raster facts and tile windows."""

    kind: str                      # "image" | "scene"
    width: int
    height: int
    bands: int = 3
    dtype: str = "uint8"
    crs: str | None = None
    stretch: list | None = None    # [[lo, hi] per RGB band] or None for 8-bit
    items: list[dict] = field(default_factory=list)
    rgb: RgbBands | None = None    # bands shown as R, G, B; None for photos (their own RGB)


def check_paths(paths: list[str | Path]) -> None:
    """Refuse a path that does not exist, before anything is written: a typo must not leave an
    empty index directory behind (issue #16.5)."""
    for p in paths:
        p = Path(p).expanduser()
        if not p.exists():
            raise DatasetNotFoundError(f"index path {p} does not exist; check the spelling, or that the "
                                       "archive is mounted")


def walk(paths: list[str | Path]) -> tuple[list[FoundFile], list[Skipped], list[str]]:
    """Every image file under `paths` (files or folders), sorted, with the roots they belong to.

    Symlinked files are followed only when their target stays inside a root; folders are not
    followed (no cycles, no escaping the archive).
    """
    found: dict[str, FoundFile] = {}
    skipped: list[Skipped] = []
    roots: list[str] = []
    check_paths(paths)
    for p in paths:
        p = Path(p).expanduser()
        real = Path(os.path.realpath(p))
        root = str(real if real.is_dir() else real.parent)
        if root not in roots:
            roots.append(root)
    for p in paths:
        p = Path(os.path.realpath(Path(p).expanduser()))
        if p.is_file():
            candidates = [p]
            root = str(p.parent)
        else:
            root = str(p)
            candidates = []
            for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                candidates.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
        for c in candidates:
            if c.suffix.lower() not in ALL_EXTENSIONS:
                continue
            real = os.path.realpath(c)
            if not any(_inside(real, r) for r in roots):
                skipped.append(Skipped(str(c), "symlink points outside the indexed folders"))
                continue
            try:
                st = os.stat(real)
            except OSError as exc:
                skipped.append(Skipped(str(c), f"cannot stat: {exc.strerror or exc}"))
                continue
            owner = next(r for r in roots if _inside(real, r))
            found.setdefault(real, FoundFile(real, owner, st.st_size, st.st_mtime_ns))
    return [found[k] for k in sorted(found)], skipped, roots


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def shard_of(path: str, root: str, world: int) -> int:
    """Stable shard number of a file (hash of its path relative to its root): every rank computes
    the same partition without talking to the others, and all tiles of a scene share a shard."""
    rel = os.path.relpath(path, root)
    return int.from_bytes(hashlib.sha1(rel.encode("utf-8")).digest()[:8], "big") % world


def tile_offsets(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one axis. Tiles are full size; the last one is shifted back to end at
    the edge so the whole scene is covered. A scene shorter than a tile gives one short tile."""
    if length <= tile:
        return [0]
    offs = list(range(0, length - tile + 1, stride))
    if offs[-1] + tile < length:
        offs.append(length - tile)
    return offs


def plan_file(path: str, tile_size: int, tile_stride: int, bands: BandRequest | None = None) -> FilePlan:
    """Open the header only and decide image vs scene (reading no pixels for plain images).

    `bands` (from `parse_bands`) applies to rasters; a band the file lacks raises
    BandNotFoundError naming the bands it has. Photos keep their own RGB."""
    ext = Path(path).suffix.lower()
    if ext in RASTER_EXTENSIONS:
        return _plan_raster(path, tile_size, tile_stride, bands)
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as im:
            width, height = im.size
            mode = im.mode
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image, or an unsupported format") from None
    except Exception as exc:
        raise DataError(f"{path}: not a readable image ({_short(exc)})") from exc
    plan = FilePlan("image", width, height, bands=len(mode), dtype="uint8")
    plan.items.append({"kind": "image", "window": [0, 0, width, height], "bounds": None, "footprint": None})
    return plan


def _plan_raster(path: str, tile_size: int, tile_stride: int, bands: BandRequest | None) -> FilePlan:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                width, height, count = ds.width, ds.height, ds.count
                dtype = ds.dtypes[0]
                crs = ds.crs
                transform = ds.transform
                georef = crs is not None and not transform.is_identity
                rgb = choose_rgb_bands(ds, bands, path)
                stretch = None if dtype == "uint8" else _scene_stretch(ds, rgb.indexes)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable raster ({_short(exc)})") from exc
    is_scene = georef or width > tile_size or height > tile_size
    plan = FilePlan("scene" if is_scene else "image", width, height, count, dtype,
                    crs.to_string() if georef else None, stretch, rgb=rgb)
    if not is_scene:
        plan.items.append({"kind": "image", "window": [0, 0, width, height], "bounds": None, "footprint": None})
        return plan
    for row in tile_offsets(height, tile_size, tile_stride):
        for col in tile_offsets(width, tile_size, tile_stride):
            w, h = min(tile_size, width - col), min(tile_size, height - row)
            bounds = footprint = None
            if georef:
                bounds, footprint = window_lonlat(crs, transform, col, row, w, h)
            plan.items.append({"kind": "tile", "window": [col, row, w, h], "bounds": bounds, "footprint": footprint})
    return plan


def window_lonlat(crs, transform, col: int, row: int, width: int, height: int):
    """Bounding box (west, south, east, north) and corner polygon of a pixel window in EPSG:4326.

    The polygon transforms the four corners, which keeps a rotated/skewed footprint honest; the
    box uses transform_bounds with edge densification, so it encloses curved projected edges.
    """
    from rasterio.warp import transform as warp_transform, transform_bounds

    corners = [transform @ (col, row), transform @ (col + width, row),
               transform @ (col + width, row + height), transform @ (col, row + height)]
    xs, ys = zip(*corners)
    lons, lats = warp_transform(crs, "EPSG:4326", list(xs), list(ys))
    ring = [[round(float(x), 9), round(float(y), 9)] for x, y in zip(lons, lats)]
    area2 = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:] + ring[:1]))
    if area2 < 0:  # RFC 7946: exterior rings counter-clockwise
        ring.reverse()
    ring.append(ring[0])
    left, right = min(xs), max(xs)
    bottom, top = min(ys), max(ys)
    w, s, e, n = transform_bounds(crs, "EPSG:4326", left, bottom, right, top, densify_pts=21)
    return [float(w), float(s), float(e), float(n)], ring


def _scene_stretch(ds, bands) -> list:
    """Per-band 2-98 percentile of the valid pixels of the RGB `bands`, from a decimated read
    (uses overviews when the file has them)."""
    scale = max(ds.width, ds.height) / _STATS_SIDE
    shape = (max(1, int(ds.height / max(scale, 1))), max(1, int(ds.width / max(scale, 1))))
    out = []
    for b in bands:
        data = ds.read(b, out_shape=shape, masked=True)
        vals = data.compressed() if np.ma.isMaskedArray(data) else data.ravel()
        vals = vals[np.isfinite(vals)] if vals.dtype.kind == "f" else vals
        if vals.size == 0:
            out.append([0.0, 1.0])
            continue
        lo, hi = np.percentile(vals, STRETCH_PERCENTILES)
        out.append([float(lo), float(hi if hi > lo else lo + 1)])
    return out


def read_raster_window(ds, window: list[int] | None, stretch: list | None,
                       out_side: int | None = None, *, bands: RgbBands | None = None) -> Image.Image:
    """Read the RGB bands of `window` (col, row, w, h; None = whole raster) as a PIL image."""
    return Image.fromarray(read_window(ds, window, stretch, out_side, bands=bands).pixels, "RGB")


def read_window(ds, window: list[int] | None, stretch: list | None, out_side: int | None = None, *,
                bands: RgbBands | None = None):
    """`window`'s pixels and validity (`priorclip.data.rasters.RgbRead`), invalid pixels filled.

    `bands` are the scene's recorded RGB bands; None (an index from before they were recorded)
    chooses them from the file now. With `out_side`, the read is decimated by GDAL to at most
    that many pixels per side (it uses overviews when present), which is how thumbnails and
    scene overviews avoid full decodes."""
    from rasterio.windows import Window

    win = Window(*window) if window is not None else Window(0, 0, ds.width, ds.height)
    out_shape = None
    if out_side is not None and max(win.width, win.height) > out_side:
        s = out_side / max(win.width, win.height)
        out_shape = (max(1, round(win.height * s)), max(1, round(win.width * s)))
    if bands is None:
        bands = choose_rgb_bands(ds, None, getattr(ds, "name", "raster"))
    return read_rgb(ds, bands, win, out_shape=out_shape, stretch=stretch)


def open_raster(path: str):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def read_item(path: str, window: list[int] | None, stretch: list | None, *,
              max_side: int | None = None, ds=None, bands: RgbBands | None = None) -> Image.Image:
    """Decode one item as RGB (see `read_tile`)."""
    return read_tile(path, window, stretch, max_side=max_side, ds=ds, bands=bands).image


def read_tile(path: str, window: list[int] | None, stretch: list | None, *,
              max_side: int | None = None, ds=None, bands: RgbBands | None = None) -> ImageRead:
    """Decode one item as RGB with its valid fraction: a scene tile (`window` given) by a
    windowed GDAL read with the scene's stretch and RGB `bands`, a whole image through the
    project's shared reader (`read_image`, as `load_image`), so search sees the same pixels as
    training and evaluation. A whole raster chose its bands by the same rules when planned; only
    a `--bands` choice has to be passed on."""
    if window is None:
        request = parse_bands(bands.request) if bands is not None and bands.request else None
        return read_image(path, bands=request, max_side=max_side)
    if ds is not None:
        read = read_window(ds, window, stretch, max_side, bands=bands)
    else:
        with open_raster(path) as opened:
            read = read_window(opened, window, stretch, max_side, bands=bands)
    return ImageRead(Image.fromarray(read.pixels, "RGB"), read.valid_fraction, bands)


def is_raster(path: str) -> bool:
    return Path(path).suffix.lower() in RASTER_EXTENSIONS


def iter_chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:300]


def strip_path(message: str, path: str) -> str:
    """An error message without its leading 'PATH: ' (reports keep the path in its own field)."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message
