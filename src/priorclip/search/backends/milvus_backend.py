"""The Milvus backend: one collection per index, each item's vector stored with its metadata.

The same code talks to Milvus Lite (the URI is a local file: in-process, for tests and small
setups) and to a Milvus standalone or cluster (`http://host:19530`). Vectors are L2-normalised
and compared by inner product (IP = cosine), like the FAISS backend. A bbox filter is a scalar
range pre-filter on the items' lon/lat boxes, made exact by testing the candidates' footprint
polygons (`spatial.footprints_intersecting`).
"""
from __future__ import annotations

import json
import re

import numpy as np

from priorclip.errors import ConfigError, DataError
from priorclip.search.spatial import footprints_intersecting, union_bounds

INDEX_TYPES = ("HNSW", "IVF_FLAT", "IVF_PQ", "IVF_SQ8", "FLAT", "AUTOINDEX", "GPU_CAGRA", "GPU_IVF_FLAT", "GPU_IVF_PQ")
DEFAULT_INDEX = {"type": "HNSW", "params": {"M": 32, "efConstruction": 200}, "search_params": {"ef": 128}}
# Searches per index type when none are given (HNSW's ef must be at least the number of hits asked for)
_SEARCH_DEFAULTS = {"HNSW": {"ef": 128}, "IVF_FLAT": {"nprobe": 16}, "IVF_PQ": {"nprobe": 16},
                    "IVF_SQ8": {"nprobe": 16}, "GPU_IVF_FLAT": {"nprobe": 16}, "GPU_IVF_PQ": {"nprobe": 16}}
MAX_TOPK = 16_384  # Milvus's limit on the hits of one search
# Item and file ids of shard r of a distributed run start at r * ID_RANGE, so every writer of a
# shared collection owns its own id range (and deletes only inside it).
ID_RANGE = 1 << 40
_BATCH = 2_000


def collection_name(text: str) -> str:
    """A valid Milvus collection name (letters, digits, _; a letter first) made from `text`."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_")
    return ("priorclip_" + name if not name[:1].isalpha() else name)[:255]


def milvus_spec(uri: str, out, collection: str | None = None, index_type: str | None = None,
                params: str | dict | None = None) -> dict:
    """The `backend` of `build_index` for a Milvus collection (default name: from the index
    directory's name)."""
    from pathlib import Path

    if not uri:
        raise ConfigError("--backend milvus needs --uri: a file for Milvus Lite (e.g. idx.milvus.db) "
                          "or http://HOST:19530 for a Milvus server")
    if "://" not in uri:
        uri = str(Path(uri).resolve())  # a Milvus Lite file: the same file from any working directory
    name = collection or collection_name(Path(out).resolve().name)
    if collection_name(name) != name:
        raise ConfigError(f"--collection {collection!r}: letters, digits and _ only, starting with a letter")
    return {"kind": "milvus", "uri": uri, "collection": name, "index": parse_index(index_type, params)}


def parse_index(type_: str | None, params: str | dict | None) -> dict:
    """The collection's index spec from the CLI (`--milvus-index HNSW --milvus-params '{"M": 16}'`)."""
    kind = (type_ or DEFAULT_INDEX["type"]).upper()
    if kind not in INDEX_TYPES:
        raise ConfigError(f"--milvus-index {type_!r}: choose one of {', '.join(INDEX_TYPES)}")
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--milvus-params {params!r}: not JSON ({exc.msg}); e.g. '{{\"M\": 16}}'") from None
    spec = {"type": kind, "params": dict(params or (DEFAULT_INDEX["params"] if kind == "HNSW" else {}))}
    spec["search_params"] = dict(_SEARCH_DEFAULTS.get(kind, {}))
    if kind == "IVF_PQ":
        spec["params"].setdefault("nlist", 128)
        spec["params"].setdefault("m", 8)
    elif kind.startswith("IVF"):
        spec["params"].setdefault("nlist", 128)
    return spec


def _client(uri: str):
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise ConfigError("the Milvus backend needs pymilvus (and milvus-lite for a file URI): "
                          "pip install 'priorclip[milvus]'") from None
    try:
        return MilvusClient(uri)
    except Exception as exc:  # connection refused, bad URI, unwritable file
        raise DataError(f"cannot connect to Milvus at {uri}: {exc}") from None


class MilvusBackend:
    kind = "milvus"

    def __init__(self, spec: dict, dim: int, store, client):
        self.spec, self.dim, self.store, self.client = spec, dim, store, client
        self.collection = spec["collection"]

    # ---- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, spec: dict, dim: int, store) -> "MilvusBackend":
        """An existing collection (for search)."""
        client = _client(spec["uri"])
        if not client.has_collection(spec["collection"]):
            raise DataError(f"Milvus at {spec['uri']} has no collection {spec['collection']!r}: "
                            "run `priorclip index ... --backend milvus` again")
        client.load_collection(spec["collection"])
        return cls(spec, dim, store, client)

    @classmethod
    def create_or_open(cls, spec: dict, dim: int, store) -> "MilvusBackend":
        """The index's collection, created with its schema and vector index if it is not there."""
        from pymilvus import DataType, MilvusClient

        client = _client(spec["uri"])
        name = spec["collection"]
        if client.has_collection(name):
            fields = {f["name"]: f for f in client.describe_collection(name)["fields"]}
            have = fields.get("vector", {}).get("params", {}).get("dim")
            if have is not None and int(have) != dim:
                raise ConfigError(f"Milvus collection {name!r} holds {have}-d vectors, this model makes {dim}-d: "
                                  "use another --collection")
        else:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            schema.add_field("path", DataType.VARCHAR, max_length=4096)
            schema.add_field("kind", DataType.VARCHAR, max_length=8)
            schema.add_field("scene_id", DataType.INT64, nullable=True)
            schema.add_field("window", DataType.JSON, nullable=True)
            schema.add_field("crs", DataType.VARCHAR, max_length=2048, nullable=True)
            for f in ("minlon", "minlat", "maxlon", "maxlat"):
                schema.add_field(f, DataType.DOUBLE, nullable=True)
            schema.add_field("footprint", DataType.VARCHAR, max_length=4096, nullable=True)
            schema.add_field("valid_fraction", DataType.FLOAT, nullable=True)
            schema.add_field("root", DataType.VARCHAR, max_length=4096)  # the indexed folder it lies in
            schema.add_field("extra", DataType.JSON)  # what reading it back needs: stretch, bands, scene size
            index = client.prepare_index_params()
            index.add_index("vector", index_type=spec["index"]["type"], metric_type="IP",
                            params=spec["index"]["params"])
            try:
                client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
            except Exception as exc:
                if not client.has_collection(name):  # not another worker creating it at the same moment
                    raise ConfigError(f"Milvus refused collection {name!r} with index {spec['index']}: {exc}") from None
        client.load_collection(name)
        return cls(spec, dim, store, client)

    # ---- writing -----------------------------------------------------------------------------
    def _ids(self) -> set[int]:
        """The ids of this writer's range (each shard of a distributed run owns one: `id_range`)."""
        lo, hi = self.spec.get("id_range", [0, ID_RANGE])
        it = self.client.query_iterator(self.collection, batch_size=16_384, output_fields=["id"],
                                        filter=f"id >= {int(lo)} and id < {int(hi)}")
        ids: set[int] = set()
        try:
            while True:
                page = it.next()
                if not page:
                    return ids
                ids.update(int(r["id"]) for r in page)
        finally:
            it.close()

    def write_batch(self, ids: list[int], vectors: np.ndarray) -> None:
        """Upsert a batch the indexer just committed to items.sqlite, so that the shared collection
        grows while the run goes on (idempotent: a rerun after a kill writes it again)."""
        if not len(ids):
            return
        items = self.store.items([int(i) for i in ids])
        roots = self.store.roots()
        rows = [_row(int(i), v, items[int(i)], roots) for i, v in zip(ids, vectors) if int(i) in items]
        if rows:
            self.client.upsert(self.collection, rows)

    def sync(self, log=print) -> dict:
        """Make the collection hold exactly the catalogue's embedded items: insert those it lacks,
        delete those the catalogue no longer has (removed or changed files). Unchanged items are
        not touched, so a re-index of a grown archive writes only what is new."""
        have = self._ids()
        seen: set[int] = set()
        inserted = 0
        roots = self.store.roots()
        for ids, vecs in self.store.iter_vectors(self.dim, chunk=_BATCH):
            seen.update(int(i) for i in ids)
            new = [k for k, i in enumerate(ids) if int(i) not in have]
            if not new:
                continue
            items = self.store.items([int(ids[k]) for k in new])
            rows = [_row(int(ids[k]), vecs[k], items[int(ids[k])], roots) for k in new if int(ids[k]) in items]
            self.client.insert(self.collection, rows)
            inserted += len(rows)
        gone = sorted(have - seen)
        for start in range(0, len(gone), _BATCH):
            self.client.delete(self.collection, ids=gone[start:start + _BATCH])
        self.client.flush(self.collection)
        log(f"[index] Milvus {self.spec['uri']} / {self.collection}: {inserted} inserted, {len(gone)} deleted, "
            f"{len(seen)} in the collection")
        return {"inserted": inserted, "deleted": len(gone), "count": len(seen)}

    # ---- reading back (items another writer of a shared collection indexed) -------------------
    def items(self, ids: list[int]) -> dict[int, dict]:
        """Item records (shaped as items.sqlite's) of the given ids, from the collection."""
        if not ids:
            return {}
        rows = self.client.query(self.collection, filter=f"id in {[int(i) for i in ids]}", output_fields=_META)
        return {int(r["id"]): _item(r) for r in rows}

    def vector(self, item_id: int) -> np.ndarray | None:
        rows = self.client.query(self.collection, filter=f"id == {int(item_id)}", output_fields=["vector"])
        return np.asarray(rows[0]["vector"], np.float32) if rows else None

    def scene(self, scene_id: int) -> dict | None:
        """A scene's record (as `Store.scene`) from its tiles' rows."""
        rows = self.client.query(self.collection, filter=f"scene_id == {int(scene_id)}", output_fields=_META,
                                 limit=16_384)
        if not rows:
            return None
        first, extra = _item(rows[0]), rows[0]["extra"]
        bounds = union_bounds([r["minlon"], r["minlat"], r["maxlon"], r["maxlat"]] for r in rows
                              if r.get("minlon") is not None)
        width, height = extra.get("scene_size") or (None, None)
        return {"scene_id": int(scene_id), "path": first["path"], "root_id": first["root_id"], "width": width,
                "height": height, "crs": first["crs"], "bands": extra.get("bands"), "dtype": extra.get("dtype"),
                "stretch": extra.get("stretch"), "rgb": extra.get("rgb"), "tiles": len(rows), "bounds": bounds}

    # ---- searching ---------------------------------------------------------------------------
    def count(self) -> int:
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def _search(self, vector: np.ndarray, limit: int, expr: str, fields: list[str] | None = None):
        res = self.client.search(self.collection, data=[np.asarray(vector, np.float32).tolist()],
                                 limit=min(limit, MAX_TOPK), filter=expr, output_fields=fields or [],
                                 search_params={"metric_type": "IP", "params": self.spec["index"]["search_params"]})
        return res[0]

    def search(self, vector: np.ndarray, n: int, *, exclude: int | None = None, bbox=None) -> list[tuple[int, float]]:
        not_excluded = f"id != {int(exclude)}" if exclude is not None else ""
        if bbox is None:
            return [(int(h["id"]), float(h["distance"])) for h in self._search(vector, n, not_excluded)]
        area = " or ".join(f"(minlon <= {float(e)!r} and maxlon >= {float(w)!r} and minlat <= {float(nn)!r} "
                           f"and maxlat >= {float(s)!r})"
                           for w, s, e, nn in bbox.parts())
        # the range pre-filter in the engine, the polygon test on the hits (an id list of the area's
        # items, tried first, was slower on Milvus Lite even for a city-sized area)
        expr = f"({area})" + (f" and {not_excluded}" if not_excluded else "")
        limit = 2 * n
        while True:
            hits = self._search(vector, limit, expr, ["footprint", "minlon", "minlat", "maxlon", "maxlat"])
            keep = set(footprints_intersecting(bbox, [_candidate({"id": h["id"], **h["entity"]}) for h in hits]))
            found = [(int(h["id"]), float(h["distance"])) for h in hits if int(h["id"]) in keep]
            if len(found) >= n or len(hits) < limit or limit >= MAX_TOPK:
                return found[:n]
            limit *= 4


def _candidate(r: dict) -> tuple[int, str | None, list]:
    return int(r["id"]), r.get("footprint"), [r["minlon"], r["minlat"], r["maxlon"], r["maxlat"]]


_META = ["id", "path", "kind", "scene_id", "window", "crs", "minlon", "minlat", "maxlon", "maxlat", "footprint",
         "valid_fraction", "root", "extra"]


def _row(item_id: int, vector: np.ndarray, item: dict, roots: dict[int, str]) -> dict:
    """One collection row: the vector and the item's metadata (as in items.sqlite)."""
    bounds = item.get("bounds") or [None] * 4
    extra = {"raster": item.get("raster"), "stretch": item.get("stretch"), "rgb": item.get("rgb"),
             "scene_size": item.get("scene_size"), "bands": item.get("bands"), "dtype": item.get("dtype")}
    return {"id": item_id, "vector": np.asarray(vector, np.float32).tolist(), "path": item["path"],
            "kind": item["kind"], "scene_id": item.get("scene_id"), "window": item.get("window"),
            "crs": item.get("crs"), "minlon": bounds[0], "minlat": bounds[1], "maxlon": bounds[2],
            "maxlat": bounds[3], "footprint": json.dumps(item["footprint"]) if item.get("footprint") else None,
            "valid_fraction": item.get("valid_fraction"), "root": roots.get(item.get("root_id"), ""), "extra": extra}


def _item(r: dict) -> dict:
    """A collection row back as an item record; its root is named by path (`root_id` is the
    folder itself), since another writer's root ids mean nothing here."""
    extra = r.get("extra") or {}
    bounds = [r["minlon"], r["minlat"], r["maxlon"], r["maxlat"]] if r.get("minlon") is not None else None
    return {"id": int(r["id"]), "kind": r["kind"], "path": r["path"], "root_id": r.get("root") or None,
            "window": r.get("window"), "bounds": bounds,
            "footprint": json.loads(r["footprint"]) if r.get("footprint") else None, "crs": r.get("crs"),
            "raster": bool(extra.get("raster")), "scene_id": r.get("scene_id"), "scene_size": extra.get("scene_size"),
            "stretch": extra.get("stretch"), "rgb": extra.get("rgb"), "valid_fraction": r.get("valid_fraction"),
            "embedded": True}
