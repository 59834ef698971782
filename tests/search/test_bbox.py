"""The spatial filter (`--bbox`, `bbox=`): hits are exactly the best items whose footprint meets
the box, with scenes in different CRSs, boxes that cut through tiles, across the antimeridian, and
both ranking paths (exact from stored vectors for a small area, the filtered ANN ranking for a
large one); on both vector stores, FAISS and Milvus Lite, except the tests of the SQLite R*Tree."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import shapely

from priorclip.errors import ConfigError
from priorclip.search.backends import faiss_backend
from priorclip.search.index import build_index
from priorclip.search.query import SearchIndex
from priorclip.search.spatial import BBox

from search_support import BACKENDS, STUB, backend_spec, make_geotiff


def _two_crs(tmp_path_factory, backend: str) -> SearchIndex:
    """A UTM 33N scene (near 17.4 E, 40.6 N), a WGS84 scene west of it, and a photo (no footprint)."""
    from PIL import Image

    from priorclip.search.encoders import ModelEncoder
    from search_support import StubModel

    root = tmp_path_factory.mktemp("bbox")
    archive = root / "archive"
    archive.mkdir()
    # 200 km east of the zone's central meridian: footprints are quadrilaterals turned by ~1.4 degrees
    make_geotiff(archive / "utm.tif", 600, 400, origin=(700000.0, 4500000.0), seed=1)
    make_geotiff(archive / "wgs84.tif", 500, 300, crs="EPSG:4326", origin=(15.2, 40.7), res=0.0001, seed=2)
    Image.new("RGB", (64, 64), (90, 120, 60)).save(archive / "photo.jpg")
    encoder = ModelEncoder(StubModel())
    build_index([archive], root / "idx", encoder, model_spec=STUB, tile_size=128, tile_stride=128,
                backend=backend_spec(backend, root / "idx"), progress=False, log=lambda *_: None)
    return SearchIndex(root / "idx", encoder=encoder)


@pytest.fixture(scope="module", params=BACKENDS)
def two_crs_index(tmp_path_factory, request):
    return _two_crs(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def faiss_two_crs_index(tmp_path_factory):
    """For the tests of the R*Tree in items.sqlite, which only the FAISS backend queries."""
    return _two_crs(tmp_path_factory, "faiss")


def _expected(idx: SearchIndex, box: BBox, query_vec: np.ndarray, k: int) -> list[int]:
    """Brute force: every embedded item's footprint against the box, then exact scores."""
    ids, vecs = idx.store.all_vectors(idx.dim)
    items = idx.store.items(ids.tolist())
    keep = []
    for n, i in enumerate(ids.tolist()):
        fp = items[i]["footprint"]
        if fp and any(shapely.intersects(shapely.Polygon(fp), shapely.box(*p)) for p in box.parts()):
            keep.append(n)
    scores = vecs[keep] @ query_vec
    order = np.lexsort((ids[keep], -scores))[:k]
    return [int(ids[keep][j]) for j in order]


def test_bbox_hits_are_exactly_the_best_items_meeting_the_box(two_crs_index, monkeypatch):
    idx = two_crs_index
    all_tiles = [h for h in idx.search_text("fields", k=200) if h["kind"] == "tile"]
    crs = {h["crs"] for h in all_tiles}
    assert crs == {"EPSG:32633", "EPSG:4326"}
    west, south = min(h["bounds"][0] for h in all_tiles), min(h["bounds"][1] for h in all_tiles)
    east, north = max(h["bounds"][2] for h in all_tiles), max(h["bounds"][3] for h in all_tiles)
    q = idx.encoder.embed_texts(["fields"])[0]
    utm = [h for h in all_tiles if h["crs"] == "EPSG:32633"]
    uw, us = min(h["bounds"][0] for h in utm), min(h["bounds"][1] for h in utm)
    ue, un = max(h["bounds"][2] for h in utm), max(h["bounds"][3] for h in utm)
    boxes = [BBox(west, south, east, north),                                    # everything georeferenced
             BBox(uw, us, (uw + ue) / 2, (us + un) / 2),                        # cuts through UTM tiles
             BBox(15.21, 40.68, 15.23, 40.69),                                   # inside the WGS84 scene only
             BBox(*all_tiles[0]["bounds"][:2], *all_tiles[0]["bounds"][:2]),    # one corner point: touching counts
             BBox(100.0, -10.0, 101.0, -9.0)]                                   # nowhere
    top_left = next(h for h in all_tiles if h["crs"] == "EPSG:32633" and h["window"][:2] == [0, 0])
    uw, un = top_left["bounds"][0], top_left["bounds"][3]
    corner = BBox(uw, un - 1e-5, uw + 1e-5, un)  # in the tile's lon/lat box, outside its turned footprint
    boxes.append(corner)
    # the corner tile's lon/lat box touches (the R*Tree or Milvus's range filter offers it); the polygon test drops it
    assert idx.store.conn.execute("SELECT COUNT(*) FROM items_rtree WHERE minlon <= ? AND maxlon >= ? AND "
                                  "minlat <= ? AND maxlat >= ?", (uw + 1e-5, uw, un, un - 1e-5)).fetchone()[0]
    assert not idx.search_vector(q, k=5, bbox=corner)
    for limit in (10 ** 9, 0):  # exact scoring, then the filtered ANN ranking
        monkeypatch.setattr(faiss_backend, "EXACT_FILTER_LIMIT", limit)
        for box in boxes:
            hits = idx.search_vector(q, k=7, bbox=box)
            assert [h["id"] for h in hits] == _expected(idx, box, q, 7), (limit, box)
            assert all(h["kind"] == "tile" for h in hits)
    # the photo (no georeference) is never inside a box; the whole-extent box holds every tile
    everything = idx.search_vector(q, k=200, bbox=boxes[0])
    assert len(everything) == len(all_tiles)
    part = idx.search_vector(q, k=200, bbox=boxes[1])
    assert 0 < len(part) < len(all_tiles) and not idx.search_vector(q, k=5, bbox=boxes[4])
    # text, image and similar searches take the same box
    assert idx.search_text("fields", k=3, bbox=boxes[2])[0]["crs"] == "EPSG:4326"
    similar = idx.search_similar(part[0]["id"], k=50, bbox=boxes[1])
    assert part[0]["id"] not in {h["id"] for h in similar} and {h["id"] for h in similar} <= {h["id"] for h in part}


def test_antimeridian_box_and_bad_boxes():
    box = BBox.parse("170,-10,-170,10")
    assert box.parts() == [(170.0, -10.0, 180.0, 10.0), (-180.0, -10.0, -170.0, 10.0)]
    assert BBox.parse([1, 2, 3, 4]).as_list() == [1.0, 2.0, 3.0, 4.0]
    for bad in ("1,2,3", "a,b,c,d", "0,10,1,5", "0,-91,1,0", "200,0,201,1", "nan,0,1,1"):
        with pytest.raises(ConfigError, match="bbox"):
            BBox.parse(bad)


def test_index_made_before_the_rtree_is_filtered_by_a_scan_then_upgraded(faiss_two_crs_index, tmp_path):
    import shutil

    two_crs_index = faiss_two_crs_index
    old = tmp_path / "old"
    shutil.copytree(two_crs_index.directory, old)
    con = sqlite3.connect(old / "items.sqlite")
    con.executescript("DROP TRIGGER items_rtree_insert; DROP TRIGGER items_rtree_delete; DROP TABLE items_rtree;")
    con.commit()
    con.close()
    box = BBox(15.21, 40.68, 15.23, 40.69)
    q = two_crs_index.encoder.embed_texts(["fields"])[0]
    want = [h["id"] for h in two_crs_index.search_vector(q, k=5, bbox=box)]
    reader = SearchIndex(old, encoder=two_crs_index.encoder)
    assert not reader.store._has_rtree and [h["id"] for h in reader.search_vector(q, k=5, bbox=box)] == want
    from priorclip.search.store import Store

    Store(old)  # a writer (the next `priorclip index`) adds the R*Tree and fills it
    rows = sqlite3.connect(old / "items.sqlite").execute("SELECT COUNT(*) FROM items_rtree").fetchone()[0]
    assert rows == sqlite3.connect(old / "items.sqlite").execute(
        "SELECT COUNT(*) FROM items WHERE bounds IS NOT NULL").fetchone()[0] > 0
    assert [h["id"] for h in SearchIndex(old, encoder=two_crs_index.encoder).search_vector(q, k=5, bbox=box)] == want


def test_bbox_in_the_api_and_the_cli(two_crs_index, stub_encoder, capsys):
    from fastapi.testclient import TestClient

    from priorclip.cli.main import main
    from priorclip.search.server import create_app

    idx = two_crs_index
    box = "15.21,40.68,15.23,40.69"
    want = [h["id"] for h in idx.search_text("fields", k=5, bbox=box)]
    client = TestClient(create_app(idx))
    r = client.get("/api/search", params={"q": "fields", "k": 5, "bbox": box})
    assert r.status_code == 200 and [h["id"] for h in r.json()["results"]] == want
    assert r.json()["query"]["bbox"] == [15.21, 40.68, 15.23, 40.69]
    r = client.post("/api/search", json={"text": "fields", "k": 5, "bbox": box})
    assert [h["id"] for h in r.json()["results"]] == want
    fc = client.get("/api/search.geojson", params={"q": "fields", "k": 5, "bbox": box}).json()
    assert [f["id"] for f in fc["features"]] == want and fc["query"]["bbox"][0] == 15.21
    similar = client.get(f"/api/items/{want[0]}/similar", params={"k": 50, "bbox": box}).json()["results"]
    assert similar and all(h["crs"] == "EPSG:4326" for h in similar)
    r = client.get("/api/search", params={"q": "fields", "bbox": "15,41,16,40"})  # south above north
    assert r.status_code == 400 and "minlat <= maxlat" in r.json()["detail"]
    assert client.get("/api/search", params={"q": "fields", "bbox": "15,40,16"}).status_code == 422

    assert main(["search", str(idx.directory), "fields", "-k", "5", "--bbox", box, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [h["id"] for h in out["results"]] == want and out["query"]["bbox"] == [15.21, 40.68, 15.23, 40.69]
    assert main(["search", str(idx.directory), "fields", "--bbox", "15,40,16"]) == 2
    assert "bbox" in capsys.readouterr().err


def test_bbox_candidates_come_from_the_rtree_not_a_scan(faiss_two_crs_index):
    """The R*Tree drives the query: SQLite's planner, left to itself, scanned every embedded item
    and probed the tree once per item (a full scan per bbox search on a big archive)."""
    idx = faiss_two_crs_index
    seen: list[str] = []
    idx.store.conn.set_trace_callback(seen.append)
    try:
        idx.store.ids_in_bbox(BBox(-180, -90, 180, 90))
    finally:
        idx.store.conn.set_trace_callback(None)
    sql = next(s for s in seen if "items_rtree" in s)
    plan = [r[3] for r in idx.store.conn.execute("EXPLAIN QUERY PLAN " + sql)]
    assert plan[0].startswith("SCAN items_rtree") and "items_state" not in " ".join(plan), plan


def test_deep_ivfpq_fetches_rerank_a_margin_not_a_multiple():
    """A filtered ranking goes deep into an `ivfpq` index: its re-ranked candidates grow by the
    margin of the first 100 hits, not by 30 x the depth (tests/benchmarks/test_search_archive.py
    checks the box's hits on such an index)."""
    from priorclip.search import ann

    assert ann.refine_count({"type": "ivfpq"}, 10) == 1_000
    assert ann.refine_count({"type": "ivfpq", "min_candidates": 300}, 10) == 300
    assert ann.refine_count({"type": "ivfpq"}, 100) == 3_000
    assert ann.refine_count({"type": "ivfpq"}, 5_000) == 5_000 + 29 * 100
    assert ann.refine_count({"type": "flat16"}, 10) is None


def test_filtered_ranking_sizes_its_next_fetch_from_the_share_kept():
    """A box with 0.2 % of the archive: the next fetch is sized from the share of tested hits the
    box kept, so 10 hits take at most three searches (doubling from 100 took seven), and they are
    the exact top 10 inside the box."""
    from priorclip.search import ann
    from priorclip.search.backends.faiss_backend import FaissBackend

    rng = np.random.default_rng(9)
    x = rng.standard_normal((20_000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(20_000, dtype=np.int64)
    index, _ = ann.build(x, ids, "flat")
    calls = []

    class Counting:
        ntotal = index.ntotal

        def search(self, q, k):
            calls.append(k)
            return index.search(q, k)

    class InBox:  # every 500th id lies in the box
        def ids_in_bbox(self, bbox, limit=None):
            return None  # more than the exact-scoring limit

        def meeting(self, bbox, some):
            return [i for i in some if i % 500 == 0]

    backend = object.__new__(FaissBackend)
    backend.ann, backend.params, backend.store, backend.dim = Counting(), {"type": "flat"}, InBox(), 16
    hits = backend.search(x[3], 10, bbox=object())
    inside = ids[ids % 500 == 0]
    truth = inside[np.argsort(-(x[inside] @ x[3]))[:10]]
    assert [i for i, _ in hits] == truth.tolist()
    assert len(calls) <= 3, calls
