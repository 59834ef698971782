"""load_image takes band meaning and validity from the file (colour interpretation, descriptions,
nodata, masks), and band requests by name or number, like the search index (issue #16.1-2)."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from priorclip.data.bands import BandNotFoundError, choose_rgb_bands, parse_bands
from priorclip.data.images import image_from_bytes, load_image, read_image
from priorclip.errors import ConfigError, DataError

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def _write(path, data, colorinterp=None, descriptions=(), nodata=None):
    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=data.dtype.name,
                       nodata=nodata) as ds:
        ds.write(data)
        if colorinterp:
            ds.colorinterp = [ColorInterp[n] for n in colorinterp]
        for i, d in enumerate(descriptions, 1):
            if d:
                ds.set_band_description(i, d)
    return path


def _flat(values, dtype=np.uint8, size=8):
    return np.stack([np.full((size, size), v, dtype) for v in values])


def test_colorinterp_and_descriptions_decide_rgb(tmp_path):
    # 8-bit BGR: PIL would read it as RGB (photometric RGB) and ignore GDAL's labels
    p = _write(tmp_path / "bgr8.tif", _flat((30, 120, 220)), ["blue", "green", "red"])
    assert np.asarray(load_image(p))[0, 0].tolist() == [220, 120, 30]
    assert np.asarray(image_from_bytes(p.read_bytes(), "bgr8"))[0, 0].tolist() == [220, 120, 30]
    # 16-bit BGRN with descriptions only
    p = _write(tmp_path / "bgrn.tif", _flat((100, 200, 300, 400), np.uint16),
               descriptions=["Blue", "Green", "Red", "NIR"])
    read = read_image(p)
    assert read.bands.indexes == (3, 2, 1) and read.bands.source == "description"
    with rasterio.open(p) as ds:
        assert choose_rgb_bands(ds, parse_bands("nir,red,green")).indexes == (4, 3, 2)
        assert choose_rgb_bands(ds, parse_bands("NIR")).indexes == (4, 4, 4)       # one band: grey
        with pytest.raises(BandNotFoundError, match=r"no band named 'swir'; its bands are "
                                                    r"1 Blue, 2 Green, 3 Red, 4 NIR"):
            choose_rgb_bands(ds, parse_bands("swir,red,green"), "bgrn.tif")
    # names through load_image's bands= as through --bands
    assert np.array_equal(np.asarray(load_image(p, bands=("red", "green", "blue"))),
                          np.asarray(load_image(p, bands=(3, 2, 1))))
    with pytest.raises(DataError, match="no band named 'B8'"):
        load_image(p, bands=("B8", "red", "green"))


def test_sentinel2_13_bands_default_to_true_colour(tmp_path):
    p = _write(tmp_path / "s2.tif", _flat(range(10, 140, 10), np.uint16))
    read = read_image(p)
    assert read.bands.indexes == (4, 3, 2) and read.bands.names == ("B4", "B3", "B2")
    with rasterio.open(p) as ds:  # the L1C order gives its bands names a request can use
        assert choose_rgb_bands(ds, parse_bands("B8A,B04,red")).indexes == (9, 4, 4)


def test_nodata_is_filled_with_the_valid_mean_and_measured(tmp_path):
    data = np.zeros((3, 8, 8), np.uint16)
    data[:, :, 4:] = np.arange(4) * 100 + 1000        # left half nodata
    read = read_image(_write(tmp_path / "nd.tif", data, nodata=0))
    a = np.asarray(read.image).astype(int)
    assert read.valid_fraction == 0.5
    assert a[:, 4:].min() == 0 and a[:, 4:].max() == 255           # stretch from valid pixels only
    assert (a[:, :4] == round(a[:, 4:].mean())).all()               # not black


def test_parse_bands_refuses_malformed_requests():
    assert parse_bands("Red, green ,BLUE") == ("Red", "green", "BLUE")
    assert parse_bands("3,2,1") == (3, 2, 1) and parse_bands(None) is None
    for bad in ("red,green", "0,1,2", "red,,blue", ""):
        with pytest.raises(ConfigError, match="--bands"):
            parse_bands(bad)
