"""What every router of the search API shares: the index and limits of one app, the mapping of
library errors to HTTP, the shape of hits, and the documented response bodies.

The response models document the API (OpenAPI) and are checked by the schemathesis test; the
routes return plain dicts, so a model lists the fields clients rely on and allows more.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from priorclip.errors import ConfigError, DataError
from priorclip.search.query import PathNotAllowed, SearchIndex

log = logging.getLogger("priorclip.search.server")
MAX_ID = 2**62


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int
    max_query_chars: int
    max_k: int


@dataclass(frozen=True)
class Context:
    """One app's index and limits, handed to each router factory."""
    index: SearchIndex
    limits: Limits

    def hit(self, h: dict) -> dict:
        """A hit or item as the API shows it: path relative to its indexed folder, thumbnail URL."""
        out = dict(h)
        root = self.index.roots.get(h.get("root_id"))
        out["path"] = os.path.relpath(h["path"], root) if root else h["name"]
        out["thumbnail"] = f"/api/items/{h['id']}/thumbnail"
        return out

    def results(self, query: dict, hits: list[dict]) -> dict:
        return {"query": query, "count": len(hits), "results": [self.hit(h) for h in hits]}

    def searched(self, search, *args) -> list[dict]:
        """Run one index search, library errors mapped to HTTP by `fail`."""
        try:
            return search(*args)
        except Exception as exc:
            fail(exc)


def with_bbox(query: dict, bbox: str | None) -> dict:
    """The query a response echoes, with its box (as numbers) when there is one."""
    return {**query, "bbox": [float(v) for v in bbox.split(",")]} if bbox else query


def fail(exc: Exception, reading_item: bool = False):
    """Map library errors to HTTP. Messages about stored files never include their paths."""
    if isinstance(exc, PathNotAllowed):
        log.warning("refused file access: %s", exc)
        raise HTTPException(403, "this item's file is outside the indexed folders")
    if isinstance(exc, KeyError):
        raise HTTPException(404, "no such item")
    if isinstance(exc, FileNotFoundError):
        raise HTTPException(410, "this item's file is gone from the archive; re-index")
    if reading_item and isinstance(exc, (DataError, OSError)):
        log.warning("cannot read item file: %s", exc)
        raise HTTPException(422, "this item's file cannot be read; re-index")
    if isinstance(exc, (ConfigError, DataError)):
        raise HTTPException(400, str(exc))
    raise exc


# ---- documented bodies --------------------------------------------------------------------

class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ValidationIssue(_Open):
    loc: list[str | int]
    msg: str
    type: str | None = None


class Error(BaseModel):
    """Every 4xx/5xx body: a message, or the list of invalid request fields (422)."""
    detail: str | list[ValidationIssue]


class Item(_Open):
    id: int
    kind: str = Field(description="'image' (a photo or whole file) or 'tile' (a window of a scene)")
    path: str = Field(description="relative to its indexed folder")
    name: str
    thumbnail: str
    window: list[int] | None = Field(None, description="tile: col, row, width, height in scene pixels")
    crs: str | None = None
    bounds: list[float] | None = Field(None, description="lon/lat: minlon, minlat, maxlon, maxlat")
    footprint: list[list[float]] | None = Field(None, description="closed lon/lat ring, counter-clockwise")
    scene_id: int | None = None
    valid_fraction: float | None = Field(None, description="share of the tile's pixels marked valid")


class Hit(Item):
    rank: int
    score: float


class Results(_Open):
    query: dict
    count: int
    results: list[Hit]


class Scene(_Open):
    scene_id: int
    name: str
    path: str
    width: int
    height: int
    crs: str | None = None
    bands: int
    tiles: int
    bounds: list[float] | None = Field(None, description="lon/lat box of the whole scene: west, south, east, north")
    overview: str


class Health(_Open):
    status: str
    version: str
    items: int
    limits: dict


def errors(*codes: int) -> dict:
    """`responses=` of a route: the given error statuses with the JSON error body."""
    text = {400: "bad request (e.g. an unreadable upload)", 403: "the item's file is outside the indexed folders",
            404: "no such item or scene", 410: "the item's file is gone; re-index",
            413: "upload too large", 422: "invalid parameters, or the item's file cannot be read",
            500: "internal error (details in the server log)"}
    return {c: {"model": Error, "description": text[c]} for c in (*codes, 422, 500)}


JPEG = {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}
