"""Query a finished index: text or image in, ranked items out (as dicts, tables or GeoJSON).

`SearchIndex` is safe to share between threads: the model call is serialised by the encoder's
lock, FAISS searches are read-only, SQLite connections are per thread, and the thumbnail cache
has its own lock. Files are only ever opened through `resolve_path`, which re-checks at every
use that an item's stored path still lies inside a root recorded at index time.
"""
from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from priorclip.data.bands import RgbBands
from priorclip.errors import ConfigError, DataError
from priorclip.search.backends import open_backend
from priorclip.search.encoders import Encoder, encoder_for_index
from priorclip.search.sources import open_raster, read_item, read_raster_window
from priorclip.search.spatial import BBox
from priorclip.search.store import Store, read_index_json

MAX_K = 1000
THUMB_SIZES = (64, 128, 256, 512)
OVERVIEW_SIDE = 1024


class PathNotAllowed(DataError):
    """A stored path resolves outside the roots recorded at index time (symlink, `..`)."""


class SearchIndex:
    def __init__(self, directory: str | Path, encoder: Encoder | None = None, device: str = "cpu",
                 cache_bytes: int = 64 << 20, backend_uri: str | None = None):
        """`backend_uri` reaches a Milvus-backed index's engine at another address than the one
        recorded at index time."""
        self.directory = Path(directory)
        self.info = read_index_json(self.directory)
        self.dim = int(self.info["embed_dim"])
        self.store = Store(self.directory, readonly=True)
        self.backend = open_backend(self.directory, self.info, self.store, uri=backend_uri)
        self.roots = {rid: os.path.normpath(p) for rid, p in self.store.roots().items()}
        self._device = device
        self._encoder = encoder_for_index(self.info["model"], encoder) if encoder is not None else None
        self._encoder_lock = threading.Lock()
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self._cache_lock = threading.Lock()

    # ---- model ----------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """Loaded on first query, so browsing items works even before the model is read."""
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    self._encoder = encoder_for_index(self.info["model"], None, self._device)
        return self._encoder

    def __len__(self) -> int:
        return self.backend.count()

    # ---- search ---------------------------------------------------------------------------
    def search_vector(self, vector: np.ndarray, k: int = 10, exclude: int | None = None, bbox=None) -> list[dict]:
        """The k best items for a query vector; `bbox` (a `BBox` or 'minlon,minlat,maxlon,maxlat')
        keeps only items whose footprint meets that lon/lat box."""
        if not 1 <= int(k) <= MAX_K:
            raise ConfigError(f"k={k}: must be between 1 and {MAX_K}")
        k, box = int(k), BBox.parse(bbox)
        vector = np.asarray(vector, np.float32).reshape(self.dim)
        n = k
        while True:
            found = self.backend.search(vector, n, exclude=exclude, bbox=box)
            meta = self._items([i for i, _ in found])
            # A vector whose item is gone: a re-index that removed or changed files was interrupted
            # before it published the new vectors (the old ones are still served). Skip it and
            # look further, so the caller still gets k live hits. (Counting the vectors is a call
            # to the engine for Milvus: only made on this rare path.)
            live = [(i, s) for i, s in found if i in meta]
            if len(live) >= k or len(found) < n or n >= len(self):
                break
            n = min(len(self), 2 * n + (len(found) - len(live)))
        return [{"rank": rank, "score": round(s, 6), **_public_item(meta[i])}
                for rank, (i, s) in enumerate(live[:k], 1)]

    def search_text(self, text: str, k: int = 10, bbox=None) -> list[dict]:
        text = (text or "").strip()
        if not text:
            raise ConfigError("query text is empty")
        return self.search_vector(self.encoder.embed_texts([text])[0], k, bbox=bbox)

    def embed_image(self, image: Image.Image) -> np.ndarray:
        tensor = self.encoder.transform(image.convert("RGB"))
        return self.encoder.embed_images(tensor.unsqueeze(0))[0]

    def search_image(self, image: Image.Image | str | Path | bytes, k: int = 10, bbox=None) -> list[dict]:
        return self.search_vector(self.embed_image(load_query_image(image)), k, bbox=bbox)

    def search_similar(self, item_id: int, k: int = 10, bbox=None) -> list[dict]:
        """Items like a stored one, from its stored vector (no decoding, no model call)."""
        vec = self.store.vector(item_id, self.dim)
        if vec is None and hasattr(self.backend, "vector"):
            vec = self.backend.vector(item_id)
        if vec is None:
            raise KeyError(item_id)
        return self.search_vector(vec, k, exclude=int(item_id), bbox=bbox)

    # ---- items ----------------------------------------------------------------------------
    def _items(self, ids: list[int]) -> dict[int, dict]:
        """Item records from items.sqlite, and, for a collection shared by several indexers
        (shards of a distributed run), the others' items from the backend; their folders become
        known roots under their own path."""
        meta = self.store.items(ids)
        missing = [i for i in ids if i not in meta]
        if missing and hasattr(self.backend, "items"):
            for i, item in self.backend.items(missing).items():
                if item["root_id"]:
                    self.roots.setdefault(item["root_id"], os.path.normpath(item["root_id"]))
                meta[i] = item
        return meta

    def _scene_record(self, scene_id: int) -> dict | None:
        s = self.store.scene(scene_id)
        if s is None and hasattr(self.backend, "scene"):
            s = self.backend.scene(scene_id)
            if s is not None and s["root_id"]:
                self.roots.setdefault(s["root_id"], os.path.normpath(s["root_id"]))
        return s

    def item(self, item_id: int) -> dict | None:
        item = self._items([int(item_id)]).get(int(item_id))
        return None if item is None or not item["embedded"] else _public_item(item)

    def resolve_path(self, item: dict) -> str:
        """The stored file of `item`, if it still resolves inside its recorded root."""
        root = self.roots.get(item.get("root_id"))
        stored = item.get("abspath") or item.get("path")
        if root is None or not stored:
            raise PathNotAllowed("item has no recorded root")
        rel = os.path.relpath(os.path.normpath(stored), root)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
            raise PathNotAllowed("stored path is outside the indexed folders")
        candidate = os.path.join(root, rel)
        real = os.path.realpath(candidate)
        if real != os.path.normpath(candidate) or os.path.realpath(root) != root:
            raise PathNotAllowed("a symlink appeared in the stored path after indexing")
        if not real.startswith(root.rstrip(os.sep) + os.sep):
            raise PathNotAllowed("stored path is outside the indexed folders")
        return real

    def thumbnail(self, item_id: int, size: int = 256) -> bytes:
        """JPEG of at most `size` px a side, decoded at reduced size (JPEG draft mode, GDAL
        decimated/overview reads) and kept in a bounded LRU cache.

        The path check runs before the cache is consulted, and the cache key holds the file's
        identity, so a file swapped for a symlink after it was cached is refused and a file
        replaced in place is read again (issue #16.4)."""
        if size not in THUMB_SIZES:
            raise ConfigError(f"size={size}: choose one of {', '.join(map(str, THUMB_SIZES))}")
        item = self._items([int(item_id)]).get(int(item_id))
        if item is None or not item["embedded"]:
            raise KeyError(item_id)
        path = self.resolve_path(item)
        key = ("thumb", int(item_id), size, _file_identity(path))
        cached = self._cache_get(key)
        if cached is not None:
            return cached
        window = item["window"] if item["kind"] == "tile" else None
        image = read_item(path, window, item["stretch"], max_side=size, bands=RgbBands.from_dict(item["rgb"]))
        data = _jpeg(image, size)
        self._cache_put(key, data)
        return data

    def scene(self, scene_id: int) -> dict | None:
        s = self._scene_record(scene_id)
        if s is None:
            return None
        return {"scene_id": s["scene_id"], "name": os.path.basename(s["path"]),
                "path": _relpath(s["path"], self.roots.get(s["root_id"])), "width": s["width"],
                "height": s["height"], "crs": s["crs"], "bands": s["bands"], "dtype": s["dtype"],
                **_rgb_fields(s["rgb"]), "tiles": s["tiles"], "bounds": s["bounds"]}

    def scene_overview(self, scene_id: int, side: int = OVERVIEW_SIDE) -> tuple[bytes, tuple[int, int]]:
        """Downsampled whole scene as JPEG, plus its (width, height) in pixels; path check and
        cache key as in `thumbnail`."""
        s = self._scene_record(scene_id)
        if s is None:
            raise KeyError(scene_id)
        path = self.resolve_path({"root_id": s["root_id"], "path": s["path"]})
        key = ("overview", int(scene_id), side, _file_identity(path))
        cached = self._cache_get(key)
        if cached is not None:
            return cached, (s["width"], s["height"])
        with open_raster(path) as ds:
            image = read_raster_window(ds, None, s["stretch"], out_side=side, bands=RgbBands.from_dict(s["rgb"]))
        data = _jpeg(image, side)
        self._cache_put(key, data)
        return data, (s["width"], s["height"])

    def _cache_get(self, key):
        with self._cache_lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
            return data

    def _cache_put(self, key, data: bytes) -> None:
        with self._cache_lock:
            if key in self._cache:
                return
            self._cache[key] = data
            self._cache_bytes += len(data)
            while self._cache_bytes > self._cache_limit and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= len(old)

    def summary(self) -> dict:
        return {"items": len(self), "model": self.info["model"].get("name"), "embed_dim": self.dim,
                "backend": self.backend.kind,
                "index_type": self.info.get("faiss", self.info.get("backend", {}).get("index", {})).get("type"),
                "counts": self.info.get("counts"),
                "created": self.info.get("created"), "updated": self.info.get("updated")}


def _public_item(item: dict) -> dict:
    """Item fields a client sees. `path` is absolute (for CLI/GeoJSON users on the same machine);
    the server replaces it with the path relative to its root. `valid_fraction` is the share of
    pixels the file marks valid (None: an index from before it was measured); the `rgb_*` fields
    say which bands are shown as red, green, blue (None for photos and older indexes)."""
    vf = item.get("valid_fraction")
    return {"id": item["id"], "kind": item["kind"], "path": item["path"],
            "name": os.path.basename(item["path"]), "root_id": item["root_id"],
            "window": item["window"], "crs": item["crs"], "bounds": item["bounds"],
            "footprint": item["footprint"], "scene_id": item["scene_id"], "scene_size": item["scene_size"],
            "valid_fraction": None if vf is None else round(float(vf), 4), **_rgb_fields(item.get("rgb"))}


def _rgb_fields(rgb: dict | None) -> dict:
    rgb = rgb or {}
    return {"rgb_bands": rgb.get("bands"), "rgb_band_names": rgb.get("names"), "rgb_bands_from": rgb.get("from")}


HIT_PROPERTIES = ("rank", "score", "id", "path", "name", "kind", "scene_id", "crs", "window", "valid_fraction",
                  "rgb_bands", "rgb_band_names", "rgb_bands_from")


def _file_identity(path: str) -> tuple[int, int, int, int]:
    """Device, inode, size and mtime: changes when the file is replaced or rewritten.
    A vanished file raises FileNotFoundError here, before a stale cache entry is served."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _relpath(path: str, root: str | None) -> str:
    return os.path.relpath(path, root) if root else os.path.basename(path)


def _jpeg(image: Image.Image, side: int) -> bytes:
    image = image.convert("RGB")
    if max(image.size) > side:
        image.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


QUERY_MAX_SIDE = 2048  # the encoder resizes to a few hundred pixels anyway


def load_query_image(source: Image.Image | str | Path | bytes) -> Image.Image:
    """A query image from a PIL image, a file path or encoded bytes, read by the shared
    `load_image` (decompression-bomb guard, 16-bit stretch, reduced decode)."""
    from priorclip.data.images import image_from_bytes, load_image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, (bytes, bytearray)):
        return image_from_bytes(bytes(source), "uploaded image", max_side=QUERY_MAX_SIDE)
    return load_image(source, max_side=QUERY_MAX_SIDE)


def to_geojson(hits: list[dict], query: dict | None = None) -> dict:
    """RFC 7946 FeatureCollection: one Feature per hit, the tile footprint as a lon/lat Polygon
    (null geometry for images without georeferencing)."""
    features = []
    for h in hits:
        geom = None
        if h.get("footprint"):
            geom = {"type": "Polygon", "coordinates": [h["footprint"]]}
        props = {k: h.get(k) for k in HIT_PROPERTIES}
        feat = {"type": "Feature", "id": h["id"], "geometry": geom, "properties": props}
        if h.get("bounds"):
            feat["bbox"] = h["bounds"]
        features.append(feat)
    fc = {"type": "FeatureCollection", "features": features}
    if query:
        fc["query"] = query
    return fc


def format_table(hits: list[dict]) -> str:
    """Readable ranking for a terminal."""
    if not hits:
        return "no results"
    rows = [("rank", "score", "id", "window / bounds (lon/lat)", "path")]
    for h in hits:
        where = ""
        if h["kind"] == "tile":
            c, r, w, hh = h["window"]
            where = f"px {c},{r} {w}x{hh}"
            if h.get("bounds"):
                b = h["bounds"]
                where += f"  [{b[0]:.5f}, {b[1]:.5f}, {b[2]:.5f}, {b[3]:.5f}]"
        rows.append((str(h["rank"]), f"{h['score']:.4f}", str(h["id"]), where, h["path"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].rjust(widths[i]) if i < 3 else r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4]
             for r in rows]
    lines.insert(1, "-" * min(120, len(lines[0])))
    return "\n".join(line.rstrip() for line in lines)
