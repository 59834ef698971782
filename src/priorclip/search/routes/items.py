"""One indexed item: metadata, similar items, thumbnail."""
from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response

from priorclip.search.query import THUMB_SIZES
from priorclip.search.routes.common import JPEG, MAX_ID, Context, Item, Results, errors, fail, with_bbox
from priorclip.search.spatial import BBOX_HELP, BBOX_PATTERN


def router(ctx: Context) -> APIRouter:
    r = APIRouter(prefix="/api/items", tags=["items"])
    idx = ctx.index

    def item_id_param():
        return Path(ge=0, le=MAX_ID, description="an item id from a search result")

    @r.get("/{item_id}", summary="One item's metadata", responses={200: {"model": Item}, **errors(404)})
    def get_item(item_id: int = item_id_param()):
        item = idx.item(item_id)
        if item is None:
            raise HTTPException(404, "no such item")
        return ctx.hit(item)

    @r.get("/{item_id}/similar", summary="Items similar to a stored one",
           responses={200: {"model": Results}, **errors(400, 404)})
    def similar(item_id: int = item_id_param(), k: int = Query(10, ge=1, le=ctx.limits.max_k),
                bbox: str | None = Query(None, pattern=BBOX_PATTERN, description=BBOX_HELP)):
        hits = ctx.searched(idx.search_similar, item_id, k, bbox)
        return ctx.results(with_bbox({"item": item_id, "k": k}, bbox), hits)

    @r.get("/{item_id}/thumbnail", summary="JPEG thumbnail of an item", response_class=Response,
           responses={200: JPEG, **errors(403, 404, 410)})
    def thumbnail(item_id: int = item_id_param(),
                  size: int = Query(256, json_schema_extra={"enum": list(THUMB_SIZES)},
                                    description="longest side in pixels")):
        if size not in THUMB_SIZES:
            raise HTTPException(422, f"size must be one of {list(THUMB_SIZES)}")
        try:
            data = idx.thumbnail(item_id, size)
        except Exception as exc:
            fail(exc, reading_item=True)
        # no-cache: revalidated on every view, so a replaced or removed file is never shown stale
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-cache"})

    return r
