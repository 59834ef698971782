"""The Milvus backend (Milvus Lite, in-process on a file) gives the FAISS backend's answers: text,
image, similar and bbox searches on the same archive; a re-index touches only what changed."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the Milvus backend needs pymilvus + milvus-lite (pip install 'priorclip[milvus]')")

from priorclip.errors import ConfigError  # noqa: E402
from priorclip.search.backends.milvus_backend import milvus_spec, parse_index  # noqa: E402
from priorclip.search.index import build_index  # noqa: E402
from priorclip.search.query import SearchIndex  # noqa: E402
from priorclip.search.spatial import BBox  # noqa: E402

from search_support import STUB, backend_spec, make_geotiff  # noqa: E402


def _archive(root):
    from PIL import Image

    archive = root / "archive"
    archive.mkdir()
    make_geotiff(archive / "utm.tif", 600, 400, origin=(700000.0, 4500000.0), seed=1)
    make_geotiff(archive / "wgs84.tif", 500, 300, crs="EPSG:4326", origin=(15.2, 40.7), res=0.0001, seed=2)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(archive / f"photo{i}.png")
    return archive


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same archive indexed twice: FAISS (flat, exact) and Milvus Lite (FLAT, exact)."""
    from priorclip.search.encoders import ModelEncoder
    from search_support import StubModel

    root = tmp_path_factory.mktemp("milvus")
    archive = _archive(root)
    enc = ModelEncoder(StubModel())
    kw = dict(model_spec=STUB, tile_size=128, tile_stride=128, progress=False, log=lambda *_: None)
    build_index([archive], root / "faiss", enc, index_type="flat", **kw)
    info = build_index([archive], root / "milvus", enc, backend=backend_spec("milvus", root / "milvus"), **kw)
    return SearchIndex(root / "faiss", encoder=enc), SearchIndex(root / "milvus", encoder=enc), info, archive, root


def _ids(hits):
    return [h["id"] for h in hits]


def test_milvus_answers_like_faiss(both):
    faiss_idx, milvus_idx, info, _, _ = both
    assert info["backend"]["kind"] == "milvus" and "faiss" not in info
    assert not (milvus_idx.directory / "vectors.faiss").exists()
    assert len(milvus_idx) == len(faiss_idx) == info["counts"]["items"] > 20
    assert milvus_idx.summary()["backend"] == "milvus" and milvus_idx.summary()["index_type"] == "FLAT"
    for text in ("fields", "a road", "water"):
        f, m = faiss_idx.search_text(text, k=15), milvus_idx.search_text(text, k=15)
        assert _ids(f) == _ids(m)
        assert [h["score"] for h in f] == pytest.approx([h["score"] for h in m], abs=1e-5)
    tile = next(h for h in faiss_idx.search_text("fields", k=40) if h["kind"] == "tile")
    assert _ids(faiss_idx.search_similar(tile["id"], k=10)) == _ids(milvus_idx.search_similar(tile["id"], k=10))
    assert tile["id"] not in _ids(milvus_idx.search_similar(tile["id"], k=10))


def test_milvus_bbox_is_exact_like_faiss(both):
    faiss_idx, milvus_idx, *_ = both
    tiles = [h for h in faiss_idx.search_text("fields", k=200) if h["kind"] == "tile"]
    utm = [h for h in tiles if h["crs"] == "EPSG:32633"]
    uw, us = min(h["bounds"][0] for h in utm), min(h["bounds"][1] for h in utm)
    ue, un = max(h["bounds"][2] for h in utm), max(h["bounds"][3] for h in utm)
    top_left = next(h for h in utm if h["window"][:2] == [0, 0])
    boxes = [BBox(uw, us, (uw + ue) / 2, (us + un) / 2), BBox(15.21, 40.68, 15.23, 40.69),
             BBox(top_left["bounds"][0], top_left["bounds"][3] - 1e-5, top_left["bounds"][0] + 1e-5,
                  top_left["bounds"][3]),  # inside the tile's box, outside its turned footprint
             BBox(-180, -90, 180, 90), BBox(100, -10, 101, -9)]
    q = faiss_idx.encoder.embed_texts(["fields"])[0]
    for box in boxes:  # range filter + polygon test against FAISS's exact ranking of the area
        assert _ids(milvus_idx.search_vector(q, k=8, bbox=box)) == _ids(faiss_idx.search_vector(q, k=8, bbox=box)), box
    assert not milvus_idx.search_vector(q, k=5, bbox=boxes[2])
    assert len(milvus_idx.search_vector(q, k=200, bbox=boxes[3])) == len(tiles)


def test_reindex_touches_only_what_changed(both, tmp_path):
    from priorclip.search.encoders import ModelEncoder
    from search_support import StubModel
    from PIL import Image

    _, _, _, archive, root = both
    grown = tmp_path / "archive"
    shutil.copytree(archive, grown)
    enc = ModelEncoder(StubModel())
    kw = dict(model_spec=STUB, tile_size=128, tile_stride=128, progress=False, log=lambda *_: None)
    first = build_index([grown], tmp_path / "idx", enc, backend=backend_spec("milvus", tmp_path / "idx", "HNSW"), **kw)
    assert first["backend"]["last_sync"]["written"] == first["counts"]["items"]
    Image.new("RGB", (40, 40), (10, 200, 30)).save(grown / "new.png")
    (grown / "photo0.png").unlink()
    again = build_index([grown], tmp_path / "idx", enc, **kw)  # no backend named: the index keeps Milvus
    assert again["backend"]["kind"] == "milvus"
    sync = again["backend"]["last_sync"]
    assert (sync["written"], sync["deleted"], sync["count"]) == (1, 1, first["counts"]["items"])
    idx = SearchIndex(tmp_path / "idx", encoder=enc)
    names = {h["name"] for h in idx.search_text("green", k=100)}
    assert "new.png" in names and "photo0.png" not in names
    on_disk = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert on_disk["backend"]["index"]["type"] == "HNSW"


def test_milvus_settings_are_checked():
    with pytest.raises(ConfigError, match="--uri"):
        milvus_spec("", "idx")
    with pytest.raises(ConfigError, match="--milvus-index"):
        parse_index("BTREE", None)
    with pytest.raises(ConfigError, match="not JSON"):
        parse_index("HNSW", "{M: 16}")
    assert parse_index("ivf_pq", None)["params"] == {"nlist": 128, "m": 8}
    with pytest.raises(ConfigError, match="--collection"):
        milvus_spec("x.db", "idx", collection="9 bad")
    assert milvus_spec("x.db", "/tmp/my-index")["collection"] == "my_index"


def test_cli_and_server_on_a_milvus_index(both, stub_encoder, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from priorclip.cli.main import main
    from priorclip.search.server import create_app

    _, _, _, archive, _ = both
    out, lite = tmp_path / "cli-idx", tmp_path / "cli.milvus.db"
    rc = main(["index", str(archive), "--model", STUB, "--out", str(out), "--tile-size", "128", "--no-progress",
               "--backend", "milvus", "--uri", str(lite), "--milvus-index", "IVF_FLAT", "--milvus-params",
               '{"nlist": 8}'])
    assert rc == 0 and "Milvus" in capsys.readouterr().out
    info = json.loads((out / "index.json").read_text())
    assert info["backend"]["index"] == {"type": "IVF_FLAT", "params": {"nlist": 8}, "search_params": {"nprobe": 16}}
    assert main(["search", str(out), "fields", "-k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 3
    assert main(["index", str(archive), "--model", STUB, "--out", str(tmp_path / "x"), "--uri", "y.db"]) == 2
    assert "--backend milvus" in capsys.readouterr().err

    client = TestClient(create_app(SearchIndex(out, encoder=stub_encoder)))
    health = client.get("/api/health").json()
    assert health["backend"] == "milvus" and health["items"] == info["counts"]["items"]
    hits = client.get("/api/search", params={"q": "fields", "k": 5, "bbox": "15.21,40.68,15.23,40.69"}).json()["results"]
    assert hits and all(h["crs"] == "EPSG:4326" for h in hits)
    assert client.get(hits[0]["thumbnail"]).status_code == 200
