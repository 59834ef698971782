"""Search by text (GET, POST, GeoJSON download) and by an uploaded image."""
# No `from __future__ import annotations`: FastAPI must see the real type of the request model
# defined inside `router` (a string annotation to a local class cannot be resolved).
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from priorclip.search.query import to_geojson
from priorclip.search.routes.common import Context, Results, errors, with_bbox
from priorclip.search.spatial import BBOX_HELP, BBOX_PATTERN

# A query must contain a non-space character: declared in the schema, so a blank query is a
# validation error (422) like any other invalid parameter rather than a 400 the schema hides.
# The class lists Python's whitespace (what the index strips) as literal characters, because
# `\s` means different sets in Python, in pydantic's Rust regex and in JSON Schema's ECMA regex.
NOT_BLANK = "[^" + "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + "]"

_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/tiff": {"schema": {"type": "string", "format": "binary"}}}}}
_GEOJSON = {"content": {"application/geo+json": {"schema": {
    "type": "object", "required": ["type", "features"],
    "properties": {"type": {"const": "FeatureCollection"}, "features": {"type": "array", "items": {"type": "object"}},
                   "query": {"type": "object"}}}}},
    "description": "RFC 7946 FeatureCollection, one Feature per hit (null geometry without georeference)"}


def router(ctx: Context) -> APIRouter:
    r = APIRouter(prefix="/api", tags=["search"])
    lim, idx = ctx.limits, ctx.index

    def query_text():
        return Query(min_length=1, max_length=lim.max_query_chars, pattern=NOT_BLANK, description="query text")

    def top_k():
        return Query(10, ge=1, le=lim.max_k, description="number of results")

    def area():
        return Query(None, pattern=BBOX_PATTERN, description=BBOX_HELP, examples=["12.2,41.7,12.7,42.0"])

    class TextQuery(BaseModel):
        text: str = Field(min_length=1, max_length=lim.max_query_chars, pattern=NOT_BLANK, description="what to look for")
        k: int = Field(10, ge=1, le=lim.max_k, description="number of results")
        bbox: str | None = Field(None, pattern=BBOX_PATTERN, description=BBOX_HELP)

    def text_search(q: str, k: int, bbox: str | None) -> dict:
        return ctx.results(with_bbox({"text": q, "k": k}, bbox), ctx.searched(idx.search_text, q, k, bbox))

    @r.get("/search", summary="Text to image search", responses={200: {"model": Results}, **errors(400)})
    def search_get(q: str = query_text(), k: int = top_k(), bbox: str | None = area()):
        return text_search(q, k, bbox)

    @r.post("/search", summary="Text to image search (JSON body)", responses={200: {"model": Results}, **errors(400)})
    def search_post(body: TextQuery):
        return text_search(body.text, body.k, body.bbox)

    @r.get("/search.geojson", summary="Text search as a GeoJSON FeatureCollection (download)",
           response_class=JSONResponse, responses={200: _GEOJSON, **errors(400)})
    def search_geojson(q: str = query_text(), k: int = top_k(), bbox: str | None = area()):
        hits = [ctx.hit(h) for h in ctx.searched(idx.search_text, q, k, bbox)]
        fc = to_geojson(hits, with_bbox({"text": q, "k": k}, bbox))
        return JSONResponse(fc, media_type="application/geo+json",
                            headers={"Content-Disposition": 'attachment; filename="priorclip-search.geojson"'})

    @r.post("/search/image", summary="Image to image search (upload)", openapi_extra=_UPLOAD_BODY,
            responses={200: {"model": Results}, **errors(400, 413)})
    async def search_image(request: Request, k: int = top_k(), bbox: str | None = area()):
        data = await _read_upload(request, lim.max_upload_bytes)
        hits = await run_in_threadpool(ctx.searched, idx.search_image, data, k, bbox)
        return ctx.results(with_bbox({"image": True, "k": k}, bbox), hits)

    return r


async def _read_upload(request: Request, max_bytes: int) -> bytes:
    """The uploaded image: the raw body, or the multipart field `file`; refused by Content-Length
    before any byte is read, and again while streaming (chunked uploads have no length)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HTTPException(400, "invalid Content-Length")
        if int(length) > max_bytes:
            raise HTTPException(413, f"upload larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HTTPException(413, f"upload larger than {max_bytes} bytes")
    if not body:
        raise HTTPException(400, "empty upload: send an image file as multipart field 'file' or as the body")
    data = bytes(body)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return data

    async def receive():
        return {"type": "http.request", "body": data, "more_body": False}
    try:
        form = await Request(request.scope, receive).form(max_files=1, max_fields=5, max_part_size=max_bytes)
    except Exception:
        raise HTTPException(400, "malformed multipart body") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(400, "multipart body has no file field named 'file'")
    data = await upload.read()
    await form.close()
    if not data:
        raise HTTPException(400, "uploaded file is empty")
    return data
