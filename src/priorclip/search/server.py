"""HTTP API and web page over one index (FastAPI; run with `priorclip serve`).

Safety rules this module keeps:
  * no request names a file: items and scenes are addressed by integer id, and every file read
    goes through `SearchIndex.resolve_path` (inside the recorded roots, no symlinks);
  * request sizes are bounded: query text, k, and uploads (refused by Content-Length before any
    byte is read, and again while streaming for chunked uploads);
  * every error is a JSON body with a 4xx status; an unexpected failure is a JSON 500 without
    traceback (the traceback goes to the server log only);
  * the page is static files from this package, served with a Content-Security-Policy that
    allows nothing but this origin, so it works offline and cannot load third-party code.
"""
# No `from __future__ import annotations` here: FastAPI must see the real types of the request
# model defined inside create_app (string annotations to a local class cannot be resolved).
import logging
import os
from pathlib import Path

from fastapi import FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

import priorclip
from priorclip.errors import ConfigError, DataError
from priorclip.search.query import THUMB_SIZES, PathNotAllowed, SearchIndex, to_geojson

STATIC_DIR = Path(__file__).with_name("static")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_QUERY_CHARS = 1000
MAX_K = 100
MAX_ID = 2**62
log = logging.getLogger("priorclip.search.server")

_CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class _TooLarge(Exception):
    pass


def create_app(index: SearchIndex | str | Path, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_query_chars: int = MAX_QUERY_CHARS, max_k: int = MAX_K) -> FastAPI:
    """The app for one index (a `SearchIndex` or its directory)."""
    idx = index if isinstance(index, SearchIndex) else SearchIndex(index)
    app = FastAPI(title="PriorCLIP search", version=priorclip.__version__,
                  description="Search a remote sensing image archive by text or image. "
                              f"Limits: query text {max_query_chars} characters, k <= {max_k}, "
                              f"uploads {max_upload_bytes // (1024 * 1024)} MB.",
                  docs_url=None, redoc_url=None)  # the default /docs pulls Swagger UI from a CDN
    app.state.index = idx

    class TextQuery(BaseModel):
        text: str = Field(min_length=1, max_length=max_query_chars, description="what to look for")
        k: int = Field(10, ge=1, le=max_k, description="number of results")

    # ---- errors: JSON, 4xx, no tracebacks --------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "invalid"), "type": e.get("type")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error (see the server log)"}, status_code=500)

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    def _fail(exc: Exception, reading_item: bool = False):
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

    def _hit(h: dict) -> dict:
        out = dict(h)
        root = idx.roots.get(h.get("root_id"))
        out["path"] = os.path.relpath(h["path"], root) if root else h["name"]
        out["thumbnail"] = f"/api/items/{h['id']}/thumbnail"
        return out

    def _results(query: dict, hits: list[dict]) -> dict:
        return {"query": query, "count": len(hits), "results": [_hit(h) for h in hits]}

    def _searched(search, *args) -> list[dict]:
        """Run one index search, library errors mapped to HTTP by `_fail`."""
        try:
            return search(*args)
        except Exception as exc:
            _fail(exc)

    def _text(q: str, k: int) -> dict:
        return _results({"text": q, "k": k}, _searched(idx.search_text, q, k))

    # ---- API -------------------------------------------------------------------------------
    @app.get("/api/health", summary="Liveness and what is indexed")
    def health():
        return {"status": "ok", "version": priorclip.__version__, **idx.summary(),
                "limits": {"max_query_chars": max_query_chars, "max_k": max_k,
                           "max_upload_bytes": max_upload_bytes, "thumbnail_sizes": list(THUMB_SIZES)}}

    @app.get("/api/search", summary="Text to image search")
    def search_get(q: str = Query(min_length=1, max_length=max_query_chars, description="query text"),
                   k: int = Query(10, ge=1, le=max_k)):
        return _text(q, k)

    @app.post("/api/search", summary="Text to image search (JSON body)")
    def search_post(body: TextQuery):
        return _text(body.text, body.k)

    @app.get("/api/search.geojson", summary="Text search as a GeoJSON FeatureCollection (download)")
    def search_geojson(q: str = Query(min_length=1, max_length=max_query_chars), k: int = Query(10, ge=1, le=max_k)):
        fc = to_geojson([_hit(h) for h in _searched(idx.search_text, q, k)], {"text": q, "k": k})
        return JSONResponse(fc, media_type="application/geo+json",
                            headers={"Content-Disposition": 'attachment; filename="priorclip-search.geojson"'})

    @app.post("/api/search/image", summary="Image to image search (upload)", openapi_extra={
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": {"file": {"type": "string", "format": "binary"}}}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}}}}})
    async def search_image(request: Request, k: int = Query(10, ge=1, le=max_k)):
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HTTPException(400, "invalid Content-Length")
            if int(length) > max_upload_bytes:
                raise HTTPException(413, f"upload larger than {max_upload_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload_bytes:
                raise HTTPException(413, f"upload larger than {max_upload_bytes} bytes")
        if not body:
            raise HTTPException(400, "empty upload: send an image file as multipart field 'file' or as the body")
        data = bytes(body)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            async def receive():
                return {"type": "http.request", "body": data, "more_body": False}
            try:
                form = await Request(request.scope, receive).form(max_files=1, max_fields=5,
                                                                 max_part_size=max_upload_bytes)
            except Exception:
                raise HTTPException(400, "malformed multipart body") from None
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "multipart body has no file field named 'file'")
            data = await upload.read()
            await form.close()
            if not data:
                raise HTTPException(400, "uploaded file is empty")
        hits = await run_in_threadpool(_searched, idx.search_image, data, k)
        return _results({"image": True, "k": k}, hits)

    @app.get("/api/items/{item_id}", summary="One item's metadata")
    def get_item(item_id: int = PathParam(ge=0, le=MAX_ID)):
        item = idx.item(item_id)
        if item is None:
            raise HTTPException(404, "no such item")
        return _hit(item)

    @app.get("/api/items/{item_id}/similar", summary="Items similar to a stored one")
    def similar(item_id: int = PathParam(ge=0, le=MAX_ID), k: int = Query(10, ge=1, le=max_k)):
        return _results({"item": item_id, "k": k}, _searched(idx.search_similar, item_id, k))

    @app.get("/api/items/{item_id}/thumbnail", summary="JPEG thumbnail of an item",
             responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(item_id: int = PathParam(ge=0, le=MAX_ID), size: int = Query(256, description="64, 128, 256 or 512")):
        if size not in THUMB_SIZES:
            raise HTTPException(422, f"size must be one of {list(THUMB_SIZES)}")
        try:
            data = idx.thumbnail(item_id, size)
        except Exception as exc:
            _fail(exc, reading_item=True)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/scenes/{scene_id}", summary="A scene's size and CRS")
    def scene(scene_id: int = PathParam(ge=0, le=MAX_ID)):
        s = idx.scene(scene_id)
        if s is None:
            raise HTTPException(404, "no such scene")
        s["overview"] = f"/api/scenes/{scene_id}/overview"
        return s

    @app.get("/api/scenes/{scene_id}/overview", summary="Downsampled JPEG of a whole scene",
             responses={200: {"content": {"image/jpeg": {}}}})
    def overview(scene_id: int = PathParam(ge=0, le=MAX_ID)):
        try:
            data, (w, h) = idx.scene_overview(scene_id)
        except Exception as exc:
            _fail(exc, reading_item=True)
        return Response(data, media_type="image/jpeg", headers={
            "Cache-Control": "private, max-age=3600", "X-Scene-Width": str(w), "X-Scene-Height": str(h)})

    # ---- page and offline docs -------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
