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

The API is one router per resource (`routes/`: health, search, items, scenes); every status and
media type a route returns is declared in the OpenAPI schema, which a schemathesis test holds it to.
"""
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import priorclip
from priorclip.search.query import SearchIndex
from priorclip.search.routes import health, items, scenes, search
from priorclip.search.routes.common import Context, Limits

STATIC_DIR = Path(__file__).with_name("static")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_QUERY_CHARS = 1000
MAX_K = 100
log = logging.getLogger("priorclip.search.server")

_CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def create_app(index: SearchIndex | str | Path, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_query_chars: int = MAX_QUERY_CHARS, max_k: int = MAX_K) -> FastAPI:
    """The app for one index (a `SearchIndex` or its directory): the API routers, JSON errors,
    security headers, the page and its offline docs."""
    idx = index if isinstance(index, SearchIndex) else SearchIndex(index)
    app = FastAPI(title="PriorCLIP search", version=priorclip.__version__,
                  description="Search a remote sensing image archive by text or image. "
                              f"Limits: query text {max_query_chars} characters, k <= {max_k}, "
                              f"uploads {max_upload_bytes // (1024 * 1024)} MB.",
                  docs_url=None, redoc_url=None)  # the default /docs pulls Swagger UI from a CDN
    app.state.index = idx
    ctx = Context(idx, Limits(max_upload_bytes, max_query_chars, max_k))
    for resource in (health, search, items, scenes):
        app.include_router(resource.router(ctx))
    _add_error_handlers(app)

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Errors are JSON with a 4xx status; an unexpected failure is a JSON 500 without traceback."""
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
