"""GET /api/health: liveness and what is indexed."""
from fastapi import APIRouter

import priorclip
from priorclip.search.query import THUMB_SIZES
from priorclip.search.routes.common import Context, Health, errors


def router(ctx: Context) -> APIRouter:
    r = APIRouter(prefix="/api", tags=["health"])

    @r.get("/health", summary="Liveness and what is indexed", responses={200: {"model": Health}, **errors()})
    def health():
        lim = ctx.limits
        return {"status": "ok", "version": priorclip.__version__, **ctx.index.summary(),
                "limits": {"max_query_chars": lim.max_query_chars, "max_k": lim.max_k,
                           "max_upload_bytes": lim.max_upload_bytes, "thumbnail_sizes": list(THUMB_SIZES)}}

    return r
