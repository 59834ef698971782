"""The page's static files, without a browser: the Leaflet copy ships inside the package (with its
licence), index.html loads it from this origin, and the wheel's package-data takes all of it."""
from __future__ import annotations

import glob
import re
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest

STATIC = Path(str(files("priorclip.search") / "static"))
LEAFLET = STATIC / "vendor" / "leaflet"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_leaflet_ships_with_its_licence_and_images():
    for name in ("leaflet.js", "leaflet.css", "LICENSE", "README.md"):
        assert (LEAFLET / name).is_file(), name
    assert "BSD 2-Clause" in (LEAFLET / "LICENSE").read_text()
    version = re.search(r"Leaflet (\d+\.\d+\.\d+)", (LEAFLET / "leaflet.js").read_text()[:300]).group(1)
    assert f"Leaflet {version}" in (LEAFLET / "README.md").read_text()
    # every image the stylesheet points at is there (a missing one is a 404 on the page)
    css = (LEAFLET / "leaflet.css").read_text()
    images = set(re.findall(r"url\((images/[^)]+)\)", css))
    assert images and all((LEAFLET / rel).is_file() for rel in images), images


def test_index_html_loads_only_files_of_this_package():
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    for want in ("/static/vendor/leaflet/leaflet.js", "/static/vendor/leaflet/leaflet.css", "/static/map.js"):
        assert want in refs
    for ref in refs:
        assert (STATIC / ref.removeprefix("/static/")).is_file(), ref
    # Leaflet, then the map, then the page that uses both (all deferred: run in this order)
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts == ["/static/vendor/leaflet/leaflet.js", "/static/map.js", "/static/app.js"]


def test_package_data_takes_every_static_file():
    if not PYPROJECT.is_file():
        pytest.skip("not a source checkout")
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["priorclip"]
    package = STATIC.parents[1]
    shipped = {p for pat in patterns for p in glob.glob(pat, root_dir=package, recursive=True)
               if (package / p).is_file()}
    present = {str(p.relative_to(package)) for p in STATIC.rglob("*") if p.is_file()}
    assert present - shipped == set()
