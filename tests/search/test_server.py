"""HTTP API through FastAPI's TestClient: search, uploads, thumbnails, limits, path safety."""
from __future__ import annotations

import io
import os
import re
import shutil
import sqlite3
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from priorclip.data.images import load_image
from priorclip.search.index import build_index
from priorclip.search.query import SearchIndex
from priorclip.search.server import STATIC_DIR, create_app

from priorclip.search.encoders import ModelEncoder

from search_support import BACKENDS, STUB, StubModel, backend_spec, make_geotiff, write_raster

pytestmark = pytest.mark.shared


def _serve(root, ucm_images, backend="faiss"):
    archive = root / "archive"
    for i, f in enumerate(ucm_images):
        sub = archive / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, sub / f.name)
    make_geotiff(archive / "scene.tif", 600, 400)
    encoder = ModelEncoder(StubModel())
    out = root / "idx"
    build_index([archive], out, encoder, model_spec=STUB, batch_size=16, backend=backend_spec(backend, out),
                progress=False, log=lambda *_: None)
    idx = SearchIndex(out, encoder=encoder)
    app = create_app(idx, max_upload_bytes=200_000)
    return TestClient(app, raise_server_exceptions=False), idx, archive


# every test of this module runs on both vector backends (BACKENDS: FAISS and Milvus Lite)
@pytest.fixture(scope="module", params=BACKENDS)
def served(tmp_path_factory, ucm_images, request):
    """One index for the read-only tests of this module."""
    return _serve(tmp_path_factory.mktemp("served"), ucm_images, request.param)


@pytest.fixture(params=BACKENDS)
def fresh_served(tmp_path, ucm_images, request):
    """A private index for a test that tampers with the archive."""
    return _serve(tmp_path, ucm_images, request.param)


def _jpeg_bytes(path) -> bytes:
    return path.read_bytes()


def test_health_and_text_search(served):
    client, idx, _ = served
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["items"] == len(idx)
    assert r.json()["limits"]["max_upload_bytes"] == 200_000
    r = client.get("/api/search", params={"q": "dense residential houses", "k": 5})
    body = r.json()
    assert r.status_code == 200 and body["count"] == 5 and len(body["results"]) == 5
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    first = body["results"][0]
    assert first["thumbnail"] == f"/api/items/{first['id']}/thumbnail"
    assert not os.path.isabs(first["path"])            # the API shows paths relative to the archive
    r2 = client.post("/api/search", json={"text": "dense residential houses", "k": 5})
    assert r2.status_code == 200 and [h["id"] for h in r2.json()["results"]] == [h["id"] for h in body["results"]]


def test_image_upload_finds_the_same_image(served):
    client, _, archive = served
    query = sorted(archive.rglob("*.jpg"))[4]
    r = client.post("/api/search/image", params={"k": 3}, files={"file": ("q.jpg", _jpeg_bytes(query), "image/jpeg")})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["name"] == query.name and top["score"] == pytest.approx(1.0, abs=1e-4)
    raw = client.post("/api/search/image?k=2", content=_jpeg_bytes(query), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200 and raw.json()["results"][0]["name"] == query.name


def test_16bit_grey_tiff_upload_is_read_like_the_file(served, tmp_path):
    """Issue #16.3: a 16-bit grey TIFF upload gave 400 'I/O operation on closed file'."""
    client, idx, _ = served
    p = tmp_path / "gray16.tif"
    Image.fromarray((np.arange(96 * 128, dtype=np.uint16).reshape(96, 128) * 5)).save(p)
    expected = [(h["id"], h["score"]) for h in idx.search_image(load_image(p), k=5)]
    for kwargs in ({"files": {"file": ("gray16.tif", p.read_bytes(), "image/tiff")}},
                   {"content": p.read_bytes(), "headers": {"content-type": "image/tiff"}}):
        r = client.post("/api/search/image", params={"k": 5}, **kwargs)
        assert r.status_code == 200, r.text
        assert [(h["id"], h["score"]) for h in r.json()["results"]] == expected


def test_item_thumbnail_scene_and_geojson(served):
    client, idx, _ = served
    hits = client.get("/api/search", params={"q": "x", "k": 100}).json()["results"]
    tile = next(h for h in hits if h["kind"] == "tile")
    image = next(h for h in hits if h["kind"] == "image")
    item = client.get(f"/api/items/{tile['id']}").json()
    assert item["window"] == tile["window"] and item["scene_size"] == [600, 400] and len(item["bounds"]) == 4
    for h, size in ((tile, 128), (image, 64), (image, 256)):
        r = client.get(f"/api/items/{h['id']}/thumbnail", params={"size": size})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        im = Image.open(io.BytesIO(r.content))
        assert max(im.size) <= size and im.format == "JPEG"
    again = client.get(f"/api/items/{image['id']}/thumbnail", params={"size": 64})
    assert again.content == client.get(f"/api/items/{image['id']}/thumbnail?size=64").content
    scene = client.get(f"/api/scenes/{tile['scene_id']}").json()
    assert scene["width"] == 600 and scene["height"] == 400 and scene["tiles"] == 6
    ov = client.get(f"/api/scenes/{tile['scene_id']}/overview")
    assert ov.status_code == 200 and ov.headers["x-scene-width"] == "600"
    assert Image.open(io.BytesIO(ov.content)).size == (600, 400)
    assert client.get(f"/api/scenes/{image['id']}/overview").status_code == 404  # not a scene
    sim = client.get(f"/api/items/{image['id']}/similar?k=4").json()
    assert sim["count"] == 4 and image["id"] not in [h["id"] for h in sim["results"]]

    g = client.get("/api/search.geojson", params={"q": "fields", "k": 100})
    assert g.status_code == 200 and g.headers["content-type"].startswith("application/geo+json")
    assert "attachment" in g.headers["content-disposition"]
    fc = g.json()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == len(hits)
    polys = [f for f in fc["features"] if f["geometry"] is not None]
    assert len(polys) == 6 and all(f["geometry"]["type"] == "Polygon" for f in polys)
    # every hit says how much of it is valid and which bands it shows (a JPEG: its own RGB)
    assert tile["valid_fraction"] == 1.0 and tile["rgb_bands"] == [1, 2, 3] and tile["rgb_bands_from"] == "default"
    assert image["valid_fraction"] == 1.0 and image["rgb_bands"] is None
    assert scene["rgb_bands"] == [1, 2, 3]
    props = next(f["properties"] for f in polys)
    assert {"valid_fraction", "rgb_bands", "rgb_band_names", "rgb_bands_from"} <= set(props)


def test_nodata_and_band_order_in_the_api(tmp_path):
    """Issues #16.1-2 through HTTP: the all-nodata tile is no hit, the half-empty one says 0.5 in
    the hit JSON, the item, the GeoJSON; a BGR scene reports the bands it shows as RGB."""
    archive = tmp_path / "archive"
    archive.mkdir()
    yy, xx = np.mgrid[0:256, 0:768]
    edge = np.stack([1000 + 3 * xx + b * 200 + yy for b in (2, 1, 0)]).astype(np.uint16)
    edge[:, :, :384] = 0          # tile 0 all nodata, tile 1 half
    write_raster(archive / "edge.tif", edge, nodata=0, colorinterp=["blue", "green", "red"])
    encoder = ModelEncoder(StubModel())
    build_index([archive], tmp_path / "idx", encoder, model_spec=STUB, progress=False, log=lambda *_: None)
    client = TestClient(create_app(SearchIndex(tmp_path / "idx", encoder=encoder)), raise_server_exceptions=False)
    hits = client.get("/api/search", params={"q": "x", "k": 10}).json()["results"]
    assert sorted((h["window"][0], h["valid_fraction"]) for h in hits) == [(256, 0.5), (512, 1.0)]
    half = next(h for h in hits if h["window"][0] == 256)
    assert half["rgb_bands"] == [3, 2, 1] and half["rgb_band_names"] == ["red", "green", "blue"]
    assert client.get(f"/api/items/{half['id']}").json()["valid_fraction"] == 0.5
    fc = client.get("/api/search.geojson", params={"q": "x", "k": 10}).json()
    assert sorted(f["properties"]["valid_fraction"] for f in fc["features"]) == [0.5, 1.0]
    assert all(f["properties"]["rgb_bands"] == [3, 2, 1] for f in fc["features"])
    scene = client.get(f"/api/scenes/{half['scene_id']}").json()
    assert scene["rgb_bands"] == [3, 2, 1] and scene["rgb_bands_from"] == "colorinterp"


@pytest.mark.parametrize("method,url,kwargs,status", [
    ("get", "/api/search", {"params": {"q": ""}}, 422),
    ("get", "/api/search", {}, 422),
    ("get", "/api/search", {"params": {"q": "x" * 1001}}, 422),
    ("get", "/api/search", {"params": {"q": "river", "k": 0}}, 422),
    ("get", "/api/search", {"params": {"q": "river", "k": 101}}, 422),
    ("get", "/api/search", {"params": {"q": "river", "k": "ten"}}, 422),
    ("post", "/api/search", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
    ("post", "/api/search", {"json": {"text": "y" * 1001}}, 422),
    ("post", "/api/search", {"json": {"k": 3}}, 422),
    ("get", "/api/search.geojson", {"params": {"q": ""}}, 422),
    ("get", "/api/items/abc", {}, 422),
    ("get", "/api/items/-1", {}, 422),
    ("get", "/api/items/99999999999999999999999", {}, 422),
    ("get", "/api/items/987654", {}, 404),
    ("get", "/api/items/987654/thumbnail", {}, 404),
    ("get", "/api/items/1/thumbnail", {"params": {"size": 5000}}, 422),
    ("get", "/api/scenes/987654", {}, 404),
    ("post", "/api/search/image", {"content": b"", "headers": {"content-type": "image/jpeg"}}, 400),
    ("post", "/api/search/image", {"content": b"GIF89a-not-really", "headers": {"content-type": "image/gif"}}, 400),
    ("post", "/api/search/image", {"files": {"other": ("a.txt", b"hello", "text/plain")}}, 400),
    ("post", "/api/search/image", {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400),
    ("post", "/api/search/image", {"files": {"file": ("a.jpg", b"\xff\xd8\xff\xe0 truncated", "image/jpeg")}}, 400),
    ("get", "/api/../../etc/passwd", {}, 404),
    ("get", "/api/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd/thumbnail", {}, 404),
    ("delete", "/api/search", {}, 405),
])
def test_bad_requests_get_4xx_json(served, method, url, kwargs, status):
    client, _, _ = served
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert "detail" in body and "Traceback" not in r.text and "File \"" not in r.text
    assert len(r.content) < 5000  # errors do not echo the (possibly huge) input back


def test_oversize_upload_refused_by_length_and_while_streaming(served):
    client, _, _ = served
    big = b"\xff\xd8" + os.urandom(300_000)
    r = client.post("/api/search/image", content=big, headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    r = client.post("/api/search/image", files={"file": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413

    def chunks():  # no Content-Length: the server must count while it reads
        for _ in range(100):
            yield b"\0" * 10_000

    r = client.post("/api/search/image", content=chunks(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 413
    r = client.post("/api/search/image", content=b"x", headers={"content-type": "image/jpeg", "content-length": "abc"})
    assert r.status_code == 400


def test_server_never_reads_outside_the_archive(fresh_served, tmp_path):
    client, idx, archive = fresh_served
    hits = client.get("/api/search", params={"q": "x", "k": 100}).json()["results"]
    a, b, c = [h for h in hits if h["kind"] == "image"][:3]
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(secret)

    # 1. an indexed file replaced by a symlink to a file outside the archive
    victim = archive / a["path"]
    victim.unlink()
    victim.symlink_to(secret)
    r = client.get(f"/api/items/{a['id']}/thumbnail?size=128")
    assert r.status_code == 403 and "outside" in r.json()["detail"]

    # 2. a stored path rewritten to escape the root (`..`) or to an absolute path elsewhere
    con = sqlite3.connect(idx.directory / "items.sqlite")
    root = idx.roots[b["root_id"]]
    con.execute("UPDATE files SET path=? WHERE path=?", (os.path.join(root, "..", "secret.jpg"), os.path.join(root, b["path"])))
    con.execute("UPDATE files SET path=? WHERE path=?", ("/etc/passwd", os.path.join(root, c["path"])))
    con.commit()
    con.close()
    for item in (b, c):
        r = client.get(f"/api/items/{item['id']}/thumbnail?size=128")
        assert r.status_code == 403, r.text

    # 3. a folder on the way replaced by a symlink
    sub = archive / "a"
    moved = tmp_path / "moved"
    shutil.move(sub, moved)
    sub.symlink_to(moved)
    d = next(h for h in hits if h["path"].startswith("a" + os.sep) and h["id"] != a["id"])
    assert client.get(f"/api/items/{d['id']}/thumbnail?size=128").status_code == 403

    # a file that vanished is reported, not a 500
    e = next(h for h in hits if h["path"].startswith("b" + os.sep) and h["id"] not in (b["id"], c["id"]))
    (archive / e["path"]).unlink()
    assert client.get(f"/api/items/{e['id']}/thumbnail?size=128").status_code == 410


def test_cached_thumbnail_and_overview_are_rechecked_on_every_request(fresh_served, tmp_path):
    """Issue #16.4: a thumbnail cached before its file was swapped for a symlink was still served."""
    client, _, archive = fresh_served
    hits = client.get("/api/search", params={"q": "x", "k": 100}).json()["results"]
    a, b = [h for h in hits if h["kind"] == "image"][:2]
    tile = next(h for h in hits if h["kind"] == "tile")
    thumb = f"/api/items/{a['id']}/thumbnail?size=128"
    overview = f"/api/scenes/{tile['scene_id']}/overview"
    assert client.get(thumb).status_code == 200 and client.get(overview).status_code == 200  # now cached

    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(secret)
    (archive / a["path"]).unlink()
    (archive / a["path"]).symlink_to(secret)
    r = client.get(thumb)
    assert r.status_code == 403 and "outside" in r.json()["detail"]

    scene = archive / "scene.tif"
    shutil.move(scene, tmp_path / "scene.tif")
    scene.symlink_to(tmp_path / "scene.tif")
    assert client.get(overview).status_code == 403

    # a file rewritten in place is read again, not answered from the cache
    other = f"/api/items/{b['id']}/thumbnail?size=64"
    before = client.get(other).content
    Image.new("RGB", (64, 64), (0, 0, 255)).save(archive / b["path"], format="JPEG")
    after = client.get(other)
    assert after.status_code == 200 and after.content != before
    assert Image.open(io.BytesIO(after.content)).convert("RGB").getpixel((5, 5))[2] > 200


def test_unexpected_errors_are_json_500_without_traceback(served, monkeypatch):
    client, idx, _ = served

    def boom(*a, **k):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(idx, "search_text", boom)
    r = client.get("/api/search", params={"q": "river"})
    assert r.status_code == 500 and r.json() == {"detail": "internal error (see the server log)"}
    assert "secret" not in r.text


def test_concurrent_queries_give_the_serial_answers(served):
    client, _, _ = served
    queries = ["river", "forest", "airport", "beach", "harbor", "tennis court", "freeway", "desert"]
    want = {q: client.get("/api/search", params={"q": q, "k": 5}).json()["results"] for q in queries}
    got, errors = {}, []

    def worker(q):
        try:
            for _ in range(3):
                got[q] = client.get("/api/search", params={"q": q, "k": 5}).json()["results"]
        except Exception as exc:  # pragma: no cover - surfaces in the assert
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(q,)) for q in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == want


def test_page_docs_and_headers_are_offline(served):
    client, _, _ = served
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    docs = client.get("/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text
    spec = client.get("/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/items/{item_id}/thumbnail"} <= set(spec["paths"])
    for name in os.listdir(STATIC_DIR):
        if (STATIC_DIR / name).is_dir():  # vendor/: third-party copies, see test_static_files.py
            continue
        text = (STATIC_DIR / name).read_text().replace("http://www.w3.org/2000/svg", "")  # a name, not a fetch
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), f"external URL in {name}"
        if name.endswith(".js"):
            assert not re.search(r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\(", text)
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../server.py").status_code == 404
