"""GeoTIFF scenes: tile windows, lon/lat footprints, stretch of 16-bit data, GeoJSON output, band order
from the file or --bands, nodata / masks / alpha and --min-valid, indexes from before both."""
from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from priorclip.cli.main import main
from priorclip.data.bands import BandNotFoundError, RgbBands, parse_bands
from priorclip.errors import ConfigError
from priorclip.search.index import build_index
from priorclip.search.query import SearchIndex, to_geojson
from priorclip.search.sources import plan_file, read_item, read_tile, tile_offsets

from search_support import DIM, STUB, backend_spec, make_geotiff, write_raster


def test_tile_offsets_cover_the_axis_with_full_tiles():
    assert tile_offsets(600, 256, 256) == [0, 256, 344]
    assert tile_offsets(400, 256, 256) == [0, 144]
    assert tile_offsets(512, 256, 256) == [0, 256]
    assert tile_offsets(600, 256, 128) == [0, 128, 256, 344]
    assert tile_offsets(200, 256, 256) == [0]
    assert tile_offsets(1000, 300, 500) == [0, 500, 700]


def test_scene_tiles_windows_and_lonlat_bounds(tmp_path):
    path = make_geotiff(tmp_path / "scene.tif", 600, 400)
    plan = plan_file(str(path), 256, 256)
    assert plan.kind == "scene" and (plan.width, plan.height) == (600, 400)
    assert plan.crs == "EPSG:32633" and plan.dtype == "uint16"
    windows = [it["window"] for it in plan.items]
    assert windows == [[0, 0, 256, 256], [256, 0, 256, 256], [344, 0, 256, 256],
                       [0, 144, 256, 256], [256, 144, 256, 256], [344, 144, 256, 256]]
    with rasterio.open(path) as ds:
        for it in plan.items:
            c, r, w, h = it["window"]
            x0, y0 = ds.transform @ (c, r)
            x1, y1 = ds.transform @ (c + w, r + h)
            want = transform_bounds(ds.crs, "EPSG:4326", x0, y1, x1, y0, densify_pts=21)
            assert it["bounds"] == pytest.approx(want, abs=1e-9)
            ring = it["footprint"]
            assert len(ring) == 5 and ring[0] == ring[-1]
            lons, lats = zip(*ring)
            w_, s_, e_, n_ = it["bounds"]
            assert w_ - 1e-9 <= min(lons) and max(lons) <= e_ + 1e-9
            assert s_ - 1e-9 <= min(lats) and max(lats) <= n_ + 1e-9
            area2 = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring[:-1], ring[1:]))
            assert area2 > 0  # counter-clockwise exterior ring (RFC 7946)
    # UTM 33N easting 500000 is the 15 deg E central meridian; northing 4.5e6 m is about 40.6 deg N
    first = plan.items[0]["bounds"]
    assert first[0] == pytest.approx(15.0, abs=1e-6) and 40.6 < first[1] < first[3] < 40.7
    # one tile of 256 px at 10 m is 2.56 km: about 0.0302 deg of longitude at this latitude
    assert first[2] - first[0] == pytest.approx(2560 / (111320 * np.cos(np.radians(40.64))), rel=0.01)


def test_tile_pixels_come_from_a_windowed_read_with_scene_stretch(tmp_path):
    path = make_geotiff(tmp_path / "scene.tif", 600, 400)
    plan = plan_file(str(path), 256, 256)
    assert plan.stretch is not None and len(plan.stretch) == 3
    c, r, w, h = plan.items[4]["window"]
    img = read_item(str(path), plan.items[4]["window"], plan.stretch)
    assert img.size == (256, 256) and img.mode == "RGB"
    with rasterio.open(path) as ds:
        raw = ds.read(1, window=Window(c, r, w, h)).astype(np.float64)
    lo, hi = plan.stretch[0]
    want = np.clip((raw - lo) * 255.0 / (hi - lo) + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(img)[:, :, 0], want)
    arr = np.asarray(img)
    assert arr.min() == 0 and arr.max() == 255   # the stretch uses the full 8-bit range


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_non_georeferenced_and_small_rasters(tmp_path):
    big = make_geotiff(tmp_path / "plain.tif", 600, 300, count=1, dtype="uint8", crs=None)
    plan = plan_file(str(big), 256, 256)
    assert plan.kind == "scene" and plan.crs is None and len(plan.items) == 6
    assert all(it["bounds"] is None and it["footprint"] is None for it in plan.items)
    small_geo = make_geotiff(tmp_path / "small.tif", 100, 80, count=4)
    plan = plan_file(str(small_geo), 256, 256)
    assert plan.kind == "scene" and [it["window"] for it in plan.items] == [[0, 0, 100, 80]]
    assert plan.items[0]["bounds"] is not None
    small_plain = make_geotiff(tmp_path / "small_plain.tif", 100, 80, crs=None)
    plan = plan_file(str(small_plain), 256, 256)
    assert plan.kind == "image" and len(plan.items) == 1


def test_index_scene_search_tile_and_geojson(tmp_path, stub_encoder, ucm_dir, backend):
    root = tmp_path / "archive"
    root.mkdir()
    scene = make_geotiff(root / "scene.tif", 600, 400)
    shutil.copy(ucm_dir / "images" / "1.jpg", root / "photo.jpg")
    info = build_index([root], tmp_path / "idx", stub_encoder, model_spec=STUB, tile_size=256, tile_stride=128,
                       backend=backend_spec(backend, tmp_path / "idx"), progress=False, log=lambda *_: None)
    # stride 128: columns 0,128,256,344 x rows 0,128,144
    assert info["counts"] == {**info["counts"], "items": 13, "tiles": 12, "scenes": 1}
    assert info["tiling"]["tile_stride"] == 128
    idx = SearchIndex(tmp_path / "idx", encoder=stub_encoder)
    hits = idx.search_text("fields", k=20)
    tiles = [h for h in hits if h["kind"] == "tile"]
    target = next(h for h in tiles if h["window"] == [256, 128, 256, 256])
    same = idx.search_similar(target["id"], k=3)
    assert same[0]["kind"] == "tile" and same[0]["id"] != target["id"]
    # the tile's own pixels (windowed read with the scene stretch) find that tile first
    pixels = read_item(str(scene), target["window"], idx.store.item(target["id"])["stretch"])
    exact = idx.search_image(pixels, k=1)
    assert exact[0]["id"] == target["id"] and exact[0]["score"] == pytest.approx(1.0, abs=1e-4)

    fc = json.loads(json.dumps(to_geojson(hits, {"text": "fields"})))
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 13
    for f, h in zip(fc["features"], hits):
        assert f["type"] == "Feature" and f["id"] == h["id"] and f["properties"]["score"] == h["score"]
        if h["kind"] == "tile":
            ring = f["geometry"]["coordinates"][0]
            assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
            assert all(len(p) == 2 and -180 <= p[0] <= 180 and -90 <= p[1] <= 90 for p in ring)
            assert len(f["bbox"]) == 4
        else:
            assert f["geometry"] is None and "bbox" not in f
    scene_info = idx.scene(target["scene_id"])
    assert scene_info["width"] == 600 and scene_info["tiles"] == 12 and scene_info["crs"] == "EPSG:32633"
    data, size = idx.scene_overview(target["scene_id"])
    assert size == (600, 400) and data[:2] == b"\xff\xd8"


def test_scene_record_has_its_lonlat_box_for_the_map(tmp_path, stub_encoder):
    """The page's map lays a scene's overview over `scene()["bounds"]`: the whole scene's lon/lat
    box, holding every tile footprint; a scene without georeference has none."""
    root = tmp_path / "archive"
    root.mkdir()
    make_geotiff(root / "geo.tif", 600, 400)
    make_geotiff(root / "plain.tif", 600, 300, count=1, dtype="uint8", crs=None)
    _index(root, tmp_path / "idx", stub_encoder)
    idx = SearchIndex(tmp_path / "idx", encoder=stub_encoder)
    hits = idx.search_text("fields", k=20)
    scenes = {s["name"]: s for s in map(idx.scene, {h["scene_id"] for h in hits})}
    whole = transform_bounds("EPSG:32633", "EPSG:4326", 500000, 4500000 - 400 * 10, 500000 + 600 * 10, 4500000,
                             densify_pts=21)
    west, south, east, north = scenes["geo.tif"]["bounds"]
    assert [west, south, east, north] == pytest.approx(list(whole), abs=1e-7)
    eps = 1e-8  # footprints are stored rounded to 1e-9 degrees
    for h in hits:
        if h["footprint"]:
            assert all(west - eps <= lon <= east + eps and south - eps <= lat <= north + eps
                       for lon, lat in h["footprint"])
    assert scenes["plain.tif"]["bounds"] is None


# ---- band semantics (issue #16.1) ------------------------------------------------------------

# one flat value per band, so a swap shows: blue 30, green 120, red 220, NIR 250
_BGRN = np.stack([np.full((256, 512), v, np.uint8) for v in (30, 120, 220, 250)])


def _index(root, out, encoder, **kw):
    return build_index([root], out, encoder, model_spec=STUB, tile_size=256, progress=False,
                       log=lambda *_: None, **kw)


def _embedding(encoder, image) -> np.ndarray:
    return encoder.embed_images(encoder.transform(image).unsqueeze(0))[0]


def _tiles(idx):
    return sorted((h for h in idx.search_text("x", k=100) if h["kind"] == "tile"), key=lambda h: h["window"])


def test_band_order_follows_colorinterp_for_embedding_and_display(tmp_path, stub_encoder):
    """A Blue, Green, Red, NIR scene is embedded and shown red as red (it was read as 1, 2, 3)."""
    root = tmp_path / "archive"
    root.mkdir()
    write_raster(root / "bgrn.tif", _BGRN, colorinterp=["blue", "green", "red", "undefined"],
                 descriptions=[None, None, None, "NIR"])
    write_raster(root / "rgbn.tif", _BGRN[[2, 1, 0, 3]], colorinterp=["red", "green", "blue", "undefined"],
                 origin=(600000.0, 4500000.0))
    _index(root, tmp_path / "idx", stub_encoder)
    idx = SearchIndex(tmp_path / "idx", encoder=stub_encoder)
    hits = _tiles(idx)
    assert len(hits) == 4
    want = _embedding(stub_encoder, Image.new("RGB", (256, 256), (220, 120, 30)))
    for h in hits:
        assert h["rgb_bands_from"] == "colorinterp"
        assert h["rgb_bands"] == ([3, 2, 1] if h["name"] == "bgrn.tif" else [1, 2, 3])
        assert h["rgb_band_names"] == ["red", "green", "blue"]
        assert np.allclose(idx.store.vector(h["id"], DIM), want, atol=1e-5)   # what the model saw
        thumb = np.asarray(Image.open(io.BytesIO(idx.thumbnail(h["id"], 64)))).reshape(-1, 3).mean(0)
        assert np.abs(thumb - (220, 120, 30)).max() < 3                         # what the page shows
    overview = Image.open(io.BytesIO(idx.scene_overview(hits[0]["scene_id"])[0]))
    assert np.abs(np.asarray(overview).reshape(-1, 3).mean(0) - (220, 120, 30)).max() < 3
    assert idx.scene(hits[0]["scene_id"])["rgb_bands"] in ([3, 2, 1], [1, 2, 3])
    con = sqlite3.connect(tmp_path / "idx" / "items.sqlite")
    stored = {os.path.basename(p): json.loads(rgb) for p, rgb in con.execute("SELECT path, rgb FROM files")}
    assert stored["bgrn.tif"] == {"bands": [3, 2, 1], "names": ["red", "green", "blue"], "from": "colorinterp",
                                  "request": None}


def test_sentinel2_stacks_default_to_b4_b3_b2(tmp_path):
    h = w = 64
    l1c = np.stack([np.full((h, w), 10 * (i + 1), np.uint16) for i in range(13)])
    p = write_raster(tmp_path / "s2.tif", l1c)
    assert plan_file(str(p), 256, 256).rgb == RgbBands((4, 3, 2), ("B4", "B3", "B2"), "sentinel-2")
    # described in ESA's names, any order
    p = write_raster(tmp_path / "s2_10m.tif", l1c[:4], descriptions=["B08", "B04", "B03", "B02"])
    assert plan_file(str(p), 256, 256).rgb.indexes == (2, 3, 4)
    # L2A: 12 bands B1..B8, B8A, B9, B11, B12 described unpadded; B8A says Sentinel-2
    names = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12"]
    p = write_raster(tmp_path / "l2a.tif", l1c[:12], descriptions=names)
    assert plan_file(str(p), 256, 256).rgb.indexes == (4, 3, 2)
    # nothing says which band is which: 1, 2, 3 as before; one band: grey
    p = write_raster(tmp_path / "plain.tif", l1c[:4])
    assert plan_file(str(p), 256, 256).rgb == RgbBands((1, 2, 3), (None, None, None), "default")
    p = write_raster(tmp_path / "grey.tif", l1c[:1])
    assert plan_file(str(p), 256, 256).rgb.indexes == (1, 1, 1)


def test_bands_flag_by_name_and_number_and_a_name_the_file_lacks(tmp_path, stub_encoder, capsys):
    root = tmp_path / "archive"
    root.mkdir()
    write_raster(root / "bgrn.tif", _BGRN, colorinterp=["blue", "green", "red", "undefined"],
                 descriptions=[None, None, None, "NIR"])
    _index(root, tmp_path / "idx", stub_encoder, bands="nir,red,green")
    idx = SearchIndex(tmp_path / "idx", encoder=stub_encoder)
    hit = _tiles(idx)[0]
    assert hit["rgb_bands"] == [4, 3, 2] and hit["rgb_bands_from"] == "--bands"
    assert hit["rgb_band_names"] == ["NIR", "red", "green"]
    want = _embedding(stub_encoder, Image.new("RGB", (256, 256), (250, 220, 120)))
    assert np.allclose(idx.store.vector(hit["id"], DIM), want, atol=1e-5)

    # another --bands re-embeds the rasters with it (by number this time); unchanged otherwise
    info = _index(root, tmp_path / "idx", stub_encoder, bands="3,2,1")
    assert info["last_run"]["embedded"] == 2 and info["last_run"]["bands"] == "3,2,1"
    assert _index(root, tmp_path / "idx", stub_encoder, bands="3,2,1")["last_run"]["embedded"] == 0
    hit = _tiles(SearchIndex(tmp_path / "idx", encoder=stub_encoder))[0]
    assert hit["rgb_bands"] == [3, 2, 1] and hit["rgb_band_names"] == ["red", "green", "blue"]

    # a name the file does not have: the file is skipped with the bands it has (exit status 1)
    out = tmp_path / "idx2"
    rc = main(["index", str(root), "--model", STUB, "--out", str(out), "--bands", "swir,red,green",
               "--workers", "0", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "no band named 'swir'" in err and "1 blue, 2 green, 3 red, 4 NIR" in err
    with pytest.raises(BandNotFoundError, match=r"bgrn\.tif: asked for band 5 but the file has 4 band"):
        plan_file(str(root / "bgrn.tif"), 256, 256, parse_bands("5,3,2"))
    # a malformed --bands is a usage error before anything is written
    assert main(["index", str(root), "--model", STUB, "--out", str(tmp_path / "idx3"), "--bands", "red,green"]) == 2
    assert "three bands for red, green, blue" in capsys.readouterr().err and not (tmp_path / "idx3").exists()


# ---- nodata, masks, alpha (issue #16.2) ----------------------------------------------------

def _nodata_scene(path) -> Path:
    """768x256 uint16, nodata 0: tile 0 all nodata, tile 1 left half nodata, tile 2 all valid."""
    yy, xx = np.mgrid[0:256, 0:768]
    data = np.stack([1000 + 3 * xx + b * 200 + yy for b in range(3)]).astype(np.uint16)
    data[:, :, :384] = 0
    return write_raster(path, data, nodata=0)


def test_nodata_tiles_skipped_half_tile_records_its_valid_fraction(tmp_path, stub_encoder):
    root = tmp_path / "archive"
    root.mkdir()
    scene = _nodata_scene(root / "edge.tif")
    info = _index(root, tmp_path / "idx", stub_encoder)
    assert info["counts"]["items"] == 2 and info["counts"]["nodata_items"] == 1
    assert info["tiling"]["min_valid"] == 0.5 and info["last_run"]["below_min_valid"] == 1
    con = sqlite3.connect(tmp_path / "idx" / "items.sqlite")
    rows = con.execute("SELECT col, state, valid_fraction FROM items ORDER BY col").fetchall()
    assert rows == [(0, 2, 0.0), (256, 1, 0.5), (512, 1, 1.0)]

    idx = SearchIndex(tmp_path / "idx", encoder=stub_encoder)
    hits = _tiles(idx)
    assert [h["window"][0] for h in hits] == [256, 512]                 # the empty tile is no hit
    assert [h["valid_fraction"] for h in hits] == [0.5, 1.0]
    fc = to_geojson(hits)
    assert [f["properties"]["valid_fraction"] for f in fc["features"]] == [0.5, 1.0]
    # the stretch ignores nodata, and the nodata half is the valid half's mean colour, not black
    plan = plan_file(str(scene), 256, 256)
    assert min(lo for lo, _ in plan.stretch) > 1000
    half = np.asarray(read_item(str(scene), [256, 0, 256, 256], plan.stretch)).astype(int)
    for b in range(3):
        assert (half[:, :128, b] == round(half[:, 128:, b].mean())).all()
    assert np.allclose(idx.store.vector(hits[0]["id"], DIM),
                       _embedding(stub_encoder, Image.fromarray(half.astype(np.uint8))), atol=1e-5)

    # a new --min-valid re-sorts the measured tiles without decoding them
    info = _index(root, tmp_path / "idx", stub_encoder, min_valid=0.6)
    assert info["counts"]["items"] == 1 and info["last_run"]["embedded"] == 0
    info = _index(root, tmp_path / "idx", stub_encoder, min_valid=0.0)
    assert info["counts"]["items"] == 2 and info["last_run"]["embedded"] == 1   # 0 valid: never
    with pytest.raises(ConfigError, match="min-valid"):
        _index(root, tmp_path / "idx", stub_encoder, min_valid=1.5)


def test_alpha_band_and_internal_mask_mark_invalid_pixels(tmp_path):
    rgb = np.stack([np.full((256, 256), v, np.uint8) for v in (200, 100, 50)])
    alpha = np.full((1, 256, 256), 255, np.uint8)
    alpha[:, :64] = 0                                               # top quarter transparent
    p = write_raster(tmp_path / "alpha.tif", np.concatenate([rgb, alpha]),
                     colorinterp=["red", "green", "blue", "alpha"])
    read = read_tile(str(p), [0, 0, 256, 256], None)
    assert read.valid_fraction == 0.75 and np.asarray(read.image).reshape(-1, 3).min(0).tolist() == [200, 100, 50]

    mask = np.ones((256, 256), bool)
    mask[:, 192:] = False                                           # right quarter masked
    p = write_raster(tmp_path / "masked.tif", rgb, mask=mask)
    with rasterio.open(p) as ds:
        assert ds.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]   # an internal mask
    assert read_tile(str(p), [0, 0, 256, 256], None).valid_fraction == 0.75
    # a whole image (no tiling: no CRS, one tile) goes through load_image's reader with the same rules
    p = write_raster(tmp_path / "small.tif", rgb[:, :100, :100], crs=None, mask=mask[:100, :100] & (np.arange(100) < 50))
    assert plan_file(str(p), 256, 256).kind == "image"
    assert read_tile(str(p), None, None).valid_fraction == 0.5


def test_index_from_before_bands_and_validity_still_opens_and_upgrades(tmp_path, stub_encoder):
    """A format-1 items.sqlite (no rgb / valid_fraction columns) is served with them unknown, and
    the next `priorclip index` adds the columns and re-plans its rasters."""
    root = tmp_path / "archive"
    root.mkdir()
    write_raster(root / "bgrn.tif", _BGRN, colorinterp=["blue", "green", "red", "undefined"])
    _nodata_scene(root / "edge.tif")
    out = tmp_path / "idx"
    _index(root, out, stub_encoder, min_valid=0.0)
    con = sqlite3.connect(out / "items.sqlite")
    con.execute("ALTER TABLE files DROP COLUMN rgb")
    con.execute("ALTER TABLE items DROP COLUMN valid_fraction")
    con.execute("UPDATE meta SET value='1' WHERE key='format_version'")
    con.commit()
    con.close()

    old = SearchIndex(out, encoder=stub_encoder)
    hits = _tiles(old)
    assert hits and all(h["valid_fraction"] is None and h["rgb_bands"] is None for h in hits)
    assert old.thumbnail(hits[0]["id"], 64)[:2] == b"\xff\xd8"
    assert old.scene(hits[0]["scene_id"])["rgb_bands"] is None

    info = _index(root, out, stub_encoder)
    assert info["format_version"] == 2 and info["last_run"]["files_planned"] == 2
    con = sqlite3.connect(out / "items.sqlite")
    assert con.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()[0] == "2"
    hits = _tiles(SearchIndex(out, encoder=stub_encoder))
    assert all(h["valid_fraction"] is not None and h["rgb_bands"] for h in hits)
