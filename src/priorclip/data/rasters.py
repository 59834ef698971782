"""Read the RGB picture of a GDAL raster and which of its pixels are valid.

Shared by `load_image` (training, evaluation, query images) and the search index (scene tiles,
thumbnails, overviews), so every stage sees the same pixels.

* Bands: `RgbBands` from `priorclip.data.bands` (the file's colour interpretation and descriptions).
* Validity comes from the file (issue #16.2): its nodata value, internal or external mask, or
  alpha band, as GDAL exposes them through `read_masks()`. A pixel is valid when all three bands
  shown are valid. NaN in a float file without a nodata value is not nodata (GDAL's reading too);
  it maps to 0 as before.
* Invalid pixels are filled, per band, with the mean of the valid pixels of the same read (after
  the 8-bit stretch). Black, the old result, is a strong feature for a CLIP image tower (water,
  shadow, night) and draws a hard edge along the footprint; the mean colour adds no new colour
  and the least contrast, so the valid part dominates the embedding. The alternative, the
  encoder's normalisation mean ("zero after normalisation"), depends on the model, which a reader
  does not know, and is a colour foreign to the tile.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from priorclip.data.bands import RgbBands

STRETCH_PERCENTILES = (2.0, 98.0)


@dataclass
class RgbRead:
    pixels: np.ndarray            # [H, W, 3] uint8
    valid: np.ndarray | None      # [H, W] bool; None: the file declares every pixel valid
    valid_fraction: float


def read_rgb(ds, bands: RgbBands, window=None, *, out_shape: tuple[int, int] | None = None,
             stretch: list | None = None, resampling=None) -> RgbRead:
    """The RGB pixels of `window` (a rasterio Window; None = whole raster) of the open dataset `ds`.

    `out_shape=(h, w)` lets GDAL decimate the read (overviews when the file has them). `stretch`
    is [[lo, hi] per RGB band] (a scene's shared stretch); without it, 8-bit data is used as is
    and other types are stretched from the valid pixels' 2nd-98th percentiles."""
    idx = list(bands.indexes)
    uniq = sorted(set(idx))
    kw = {"window": window}
    if out_shape is not None:
        kw["out_shape"] = (len(uniq), *out_shape)
    if resampling is not None:
        kw["resampling"] = resampling
    data = ds.read(uniq, **kw)
    valid = _valid_mask(ds, uniq, kw)
    if len(uniq) == 1 and data.dtype == np.uint8 and _is_palette(ds, uniq[0]):
        cmap = ds.colormap(uniq[0])
        lut = np.array([cmap.get(i, (0, 0, 0, 0))[:3] for i in range(256)], dtype=np.uint8)
        rgb = np.moveaxis(lut[data[0]], -1, 0)
    else:
        rgb = to_uint8(data[[uniq.index(b) for b in idx]], valid, stretch)
    rgb = fill_invalid(rgb, valid)
    fraction = 1.0 if valid is None else float(valid.mean()) if valid.size else 0.0
    return RgbRead(np.ascontiguousarray(rgb.transpose(1, 2, 0)), valid, fraction)


def _valid_mask(ds, bands: list[int], read_kw: dict) -> np.ndarray | None:
    """AND of the GDAL masks of `bands` (nodata, mask band, alpha), or None when all are 'all valid'."""
    from rasterio.enums import MaskFlags

    flags = ds.mask_flag_enums
    if all(flags[b - 1] == [MaskFlags.all_valid] for b in bands):
        return None
    kw = {k: v for k, v in read_kw.items() if k != "resampling"}
    masks = ds.read_masks(bands, **kw)
    return np.all(masks > 0, axis=0)


def _is_palette(ds, band: int) -> bool:
    try:
        return ds.colorinterp[band - 1].name == "palette"
    except ValueError:
        return False


def to_uint8(data: np.ndarray, valid: np.ndarray | None = None, stretch: list | None = None) -> np.ndarray:
    """[C,H,W] array of any dtype -> uint8. With `stretch` (per band lo/hi) a linear map; without,
    8-bit is returned untouched and other types use their valid pixels' percentiles (a constant
    band becomes 0). NaN maps to 0."""
    if data.dtype == np.uint8 and stretch is None:
        return data
    data = data.astype(np.float32)
    out = np.empty(data.shape, dtype=np.uint8)
    for i in range(data.shape[0]):
        if stretch is not None:
            lo, hi = stretch[min(i, len(stretch) - 1)]
        else:
            band = data[i] if valid is None else data[i][valid]
            band = band[np.isfinite(band)]
            lo, hi = np.percentile(band, STRETCH_PERCENTILES) if band.size else (0.0, 1.0)
            hi = hi if hi > lo else lo + 1
        scaled = (np.nan_to_num(data[i], nan=lo) - lo) * (255.0 / (hi - lo))
        out[i] = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
    return out


def fill_invalid(rgb: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """[3,H,W] uint8 with invalid pixels set to the band's mean over valid pixels (black when
    none is valid); see the module doc for why."""
    if valid is None or valid.all():
        return rgb
    rgb = rgb.copy()
    invalid = ~valid
    for i in range(rgb.shape[0]):
        rgb[i][invalid] = int(round(float(rgb[i][valid].mean()))) if valid.any() else 0
    return rgb
