"""GeoTIFF scenes: tile windows, lon/lat footprints, stretch of 16-bit data, GeoJSON output."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from priorclip.search.index import build_index
from priorclip.search.query import SearchIndex, to_geojson
from priorclip.search.sources import plan_file, read_item, tile_offsets

from search_support import STUB, make_geotiff


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


def test_index_scene_search_tile_and_geojson(tmp_path, stub_encoder, ucm_dir):
    root = tmp_path / "archive"
    root.mkdir()
    scene = make_geotiff(root / "scene.tif", 600, 400)
    shutil.copy(ucm_dir / "images" / "1.jpg", root / "photo.jpg")
    info = build_index([root], tmp_path / "idx", stub_encoder, model_spec=STUB, tile_size=256, tile_stride=128,
                       progress=False, log=lambda *_: None)
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
