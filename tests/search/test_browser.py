"""The search page in a real headless browser (Playwright driving Debian's chromium).

Needs /usr/bin/chromium and the `playwright` package (scripts/setup_browser.sh installs both);
skipped without them unless PRIORCLIP_REQUIRE_BROWSER=1, which turns the skip into a failure.
Set PRIORCLIP_SCREENSHOT_DIR to keep the screenshots.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from priorclip.search.encoders import ModelEncoder
from priorclip.search.index import build_index
from priorclip.search.query import SearchIndex
from priorclip.search.server import create_app

from search_support import STUB, StubModel, make_geotiff

CHROMIUM = Path(os.environ.get("PRIORCLIP_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EVIL = '<img src=x onerror="window.__pwned=1">.jpg'

pytestmark = pytest.mark.shared


def _need_browser():
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt package chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("python package playwright")
    if missing:
        msg = f"browser test needs {', '.join(missing)}: run scripts/setup_browser.sh"
        if os.environ.get("PRIORCLIP_REQUIRE_BROWSER", "") not in ("", "0", "false"):
            pytest.fail(msg + " (PRIORCLIP_REQUIRE_BROWSER=1 turns this skip into a failure)")
        pytest.skip(msg)


@pytest.fixture
def server(tmp_path, archive, ucm_dir):
    _need_browser()
    import uvicorn

    make_geotiff(archive / "scene.tif", 600, 400)
    shutil.copy(ucm_dir / "images" / "1500.jpg", archive / EVIL)   # a hostile file name
    encoder = ModelEncoder(StubModel())
    build_index([archive], tmp_path / "idx", encoder, model_spec=STUB, progress=False, log=lambda *_: None)
    app = create_app(SearchIndex(tmp_path / "idx", encoder=encoder))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    sock.close()


@contextlib.contextmanager
def _chromium_page(viewport=(1280, 800)):
    """A chromium page that collects console errors, page errors and dialogs (`problems`) and the
    URL of every request it makes (`requests`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            problems, requests = [], []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("dialog", lambda d: (problems.append("dialog: " + d.message), d.dismiss()))
            page.on("request", lambda r: requests.append(r.url))
            yield page, problems, requests
        finally:
            browser.close()


def _open_and_search(page, server: str, text: str, k: int = 50, before=None) -> None:
    """Load the page, wait for the index summary, then search `text` for k results (`before`
    runs once the page is up, before the search)."""
    from playwright.sync_api import expect

    page.goto(server + "/")
    expect(page.locator("#summary")).to_contain_text("items", timeout=15000)
    if before is not None:
        before()
    page.select_option("#k", str(k))
    page.fill("#q", text)
    page.click("#search-button")


def _wait_true(page, expression: str, timeout: float = 15.0) -> None:
    """Poll a JS expression with page.evaluate (wait_for_function evaluates strings with eval,
    which the page's Content-Security-Policy rightly forbids)."""
    deadline = time.time() + timeout
    while not page.evaluate(expression):
        assert time.time() < deadline, f"timed out waiting for: {expression}"
        time.sleep(0.1)


def _not_blank(png: bytes) -> float:
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    return float(arr.std())


def test_page_search_grid_and_detail_view(server, tmp_path):
    from playwright.sync_api import expect

    keep = os.environ.get("PRIORCLIP_SCREENSHOT_DIR")
    with _chromium_page((1280, 1000)) as (page, problems, requests):
        _open_and_search(page, server, "many planes parked near the terminal")
        cards = page.locator(".card")
        expect(page.locator("#status")).to_contain_text("results for", timeout=15000)
        n = cards.count()
        assert n == 30 + 1 + 6  # photos, the hostile name, the 6 tiles of the scene
        scores = page.locator(".card .score").all_inner_texts()
        assert len(scores) == n and all(s.replace(".", "", 1).replace("-", "", 1).isdigit() for s in scores)
        values = [float(s) for s in scores]
        assert values == sorted(values, reverse=True)
        # thumbnails in view are real decoded images
        _wait_true(page, "Array.from(document.querySelectorAll('.card img')).slice(0, 8)"
                         ".every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("#geojson-link").get_attribute("href").startswith("/api/search.geojson?")

        # the hostile file name is shown as text, never interpreted
        names = page.locator(".card .name").all_inner_texts()
        assert EVIL in names
        assert page.evaluate("window.__pwned === undefined")

        shot = page.screenshot(full_page=False)
        assert _not_blank(shot) > 20, "screenshot looks blank"

        # open a scene tile: detail view with its footprint on the scene overview
        page.locator('.card[title="scene.tif"]').first.click()
        expect(page.locator("#detail")).to_be_visible()
        expect(page.locator("#detail-title")).to_have_text("scene.tif")
        expect(page.locator("#scene-block")).to_be_visible()
        assert page.locator("#scene-svg rect").count() == 6
        assert page.locator("#scene-svg rect.current").count() == 1
        _wait_true(page, "document.getElementById('scene-image').naturalWidth > 0 && "
                         "document.getElementById('detail-image').naturalWidth > 0")
        meta = page.locator("#detail-meta").inner_text()
        assert "EPSG:32633" in meta and "lon" in meta
        detail_shot = page.screenshot(full_page=False)
        assert _not_blank(detail_shot) > 20
        scene_shot = page.locator("#scene-view").screenshot()
        assert _not_blank(scene_shot) > 20

        # a plain photo has no scene block; "more like this" searches again
        page.locator('.card[title^="a/"]').first.click()
        expect(page.locator("#scene-block")).to_be_hidden()
        page.click("#similar-button")
        expect(page.locator("#status")).to_contain_text("items like", timeout=15000)

        assert not problems, problems
        outside = [u for u in requests if not u.startswith(server) and not u.startswith("data:")]
        assert not outside, f"page requested other origins: {outside}"
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / "search_grid.png").write_bytes(shot)
            (Path(keep) / "search_detail.png").write_bytes(detail_shot)
            (Path(keep) / "search_scene.png").write_bytes(scene_shot)


def test_map_links_footprints_and_cards(server):
    """The result map: one footprint per georeferenced hit over its scene's overview, fitted to the
    hits, nothing requested beyond this origin; a card and its footprint light each other up;
    photos carry a "no georeference" badge and are counted off the map."""
    import re

    from playwright.sync_api import expect

    keep = os.environ.get("PRIORCLIP_SCREENSHOT_DIR")
    with _chromium_page((1280, 800)) as (page, problems, requests):
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)

        _open_and_search(page, server, "fields and roads", before=lambda: expect(page.locator("#map-panel")).to_be_hidden())
        expect(page.locator("#status")).to_contain_text("results for", timeout=15000)
        hits = page.evaluate("state.hits")
        geo = [h for h in hits if h["footprint"]]
        assert len(hits) == 37 and len(geo) == 6  # the scene's tiles; photos have no footprint

        the_map = page.locator("#map")
        expect(the_map).to_be_visible()
        assert the_map.get_attribute("aria-label")
        polygons = page.locator("#map path.footprint")
        expect(polygons).to_have_count(len(geo))
        assert sorted(polygons.evaluate_all("ps => ps.map(p => p.dataset.id)")) == sorted(str(h["id"]) for h in geo)
        expect(page.locator("#map-note")).to_have_text(
            "6 footprints over 1 scene; 31 results without georeference not on the map")

        # the scene overview is fetched from this origin and lies under the footprints,
        # which tile the whole scene: their union is the overview's box
        overview = page.locator("#map img.scene-overview")
        expect(overview).to_have_count(1)
        _wait_true(page, "document.querySelector('#map img.scene-overview').naturalWidth > 0")
        assert f"{server}/api/scenes/{geo[0]['scene_id']}/overview" in requests
        boxes = [b for b in (poly.bounding_box() for poly in polygons.all())]
        union = (min(b["x"] for b in boxes), min(b["y"] for b in boxes),
                 max(b["x"] + b["width"] for b in boxes), max(b["y"] + b["height"] for b in boxes))
        ob = overview.bounding_box()
        assert (ob["x"], ob["y"], ob["x"] + ob["width"], ob["y"] + ob["height"]) == pytest.approx(union, abs=3)
        mb = the_map.bounding_box()  # fitted: every footprint inside the map
        assert mb["x"] <= union[0] and union[2] <= mb["x"] + mb["width"]
        assert mb["y"] <= union[1] and union[3] <= mb["y"] + mb["height"]
        shot = the_map.screenshot()
        assert _not_blank(shot) > 10

        # photos: badge on the card, none on the scene's tiles
        expect(page.locator(".card .no-geo")).to_have_count(31)
        for h in geo:
            assert page.locator(f'.card[data-id="{h["id"]}"] .no-geo').count() == 0

        # card -> footprint, by mouse and by keyboard focus. The top-left tile's centre is
        # covered by no other tile, so hovering the polygon there reaches that polygon.
        target = next(h for h in geo if h["window"][:2] == [0, 0])
        card = page.locator(f'.card[data-id="{target["id"]}"]')
        poly = page.locator(f'#map path.footprint[data-id="{target["id"]}"]')
        lit = re.compile(r"\bhighlight\b")
        card.hover()
        expect(poly).to_have_class(lit)
        expect(page.locator("#map path.footprint.highlight")).to_have_count(1)
        page.mouse.move(1, 1)
        expect(poly).not_to_have_class(lit)
        card.focus()
        expect(poly).to_have_class(lit)
        card.blur()
        expect(poly).not_to_have_class(lit)

        # footprint -> card: hovering lights the card, a click brings it into view with focus
        page.evaluate("window.scrollTo(0, 0)")
        poly.hover()
        expect(card).to_have_class(re.compile(r"\blinked\b"))
        linked_shot = page.screenshot(full_page=True)
        page.mouse.move(1, 1)
        expect(card).not_to_have_class(re.compile(r"\blinked\b"))
        poly.click()
        expect(card).to_be_in_viewport()
        expect(card).to_be_focused()

        # the map follows the result list: only photos -> no map, a message instead
        page.evaluate("renderResults({count: 31, results: state.hits.filter(h => !h.footprint)}, 'photos')")
        expect(the_map).to_be_hidden()
        expect(page.locator("#map-note")).to_have_text("none of the 31 results has a georeference: nothing to map")
        # ... and a new search draws its own footprints
        page.select_option("#k", "10")
        page.click("#search-button")
        expect(page.locator("#status")).to_contain_text("10 results for", timeout=15000)
        now = [h for h in page.evaluate("state.hits") if h["footprint"]]
        if now:
            expect(polygons).to_have_count(len(now))
        else:
            expect(the_map).to_be_hidden()

        assert not problems, problems
        outside = [u for u in requests if not u.startswith(server + "/") and not u.startswith("data:")]
        assert not outside, f"page requested other origins: {outside}"
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / "search_map.png").write_bytes(shot)
            (Path(keep) / "search_map_linked.png").write_bytes(linked_shot)


def test_search_this_map_view_restricts_hits_to_the_visible_area(server):
    """Zoom into part of the scene, press "Search this map view": the same text search comes back
    with only hits whose footprint meets the visible box (drawn dashed), photos left out; the
    area chip clears it."""
    import shapely
    from playwright.sync_api import expect

    with _chromium_page((1280, 800)) as (page, problems, requests):
        _open_and_search(page, server, "fields and roads")
        expect(page.locator("#status")).to_contain_text("37 results for", timeout=15000)
        expect(page.locator("#area")).to_be_hidden()
        geo = [h for h in page.evaluate("state.hits") if h["footprint"]]
        corner = next(h for h in geo if h["window"][:2] == [0, 0])
        # zoom in on the scene's top-left corner: the view then holds only part of the scene
        poly = page.locator(f'#map path.footprint[data-id="{corner["id"]}"]').bounding_box()
        page.mouse.move(poly["x"] + 4, poly["y"] + 4)
        for _ in range(3):  # the wheel zooms about the pointer
            page.mouse.wheel(0, -300)
            page.wait_for_timeout(400)
        page.click("#search-view")
        expect(page.locator("#status")).to_contain_text("in the map area", timeout=15000)
        box = [float(v) for v in page.evaluate("state.bbox").split(",")]
        searches = [u for u in requests if "/api/search?" in u]
        assert "bbox=" in searches[-1]
        hits = page.evaluate("state.hits")
        area = shapely.box(*box)
        inside = [h["id"] for h in geo if shapely.intersects(shapely.Polygon(h["footprint"]), area)]
        assert 0 < len(hits) < len(geo) and sorted(h["id"] for h in hits) == sorted(inside)
        expect(page.locator("#map path.search-area")).to_have_count(1)
        expect(page.locator("#area")).to_be_visible()
        page.click("#area-clear")
        expect(page.locator("#status")).to_contain_text("37 results for", timeout=15000)
        searches = [u for u in requests if "/api/search?" in u]
        assert "bbox=" not in searches[-1]
        expect(page.locator("#area")).to_be_hidden()
        assert not problems, problems
