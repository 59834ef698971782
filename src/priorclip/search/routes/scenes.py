"""One georeferenced scene: metadata and a downsampled overview."""
from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import Response

from priorclip.search.routes.common import JPEG, MAX_ID, Context, Scene, errors, fail

_SIZE_HEADERS = {"X-Scene-Width": {"schema": {"type": "integer"}, "description": "scene width in pixels"},
                 "X-Scene-Height": {"schema": {"type": "integer"}, "description": "scene height in pixels"}}


def router(ctx: Context) -> APIRouter:
    r = APIRouter(prefix="/api/scenes", tags=["scenes"])
    idx = ctx.index

    def scene_id_param():
        return Path(ge=0, le=MAX_ID, description="a scene id from an item")

    @r.get("/{scene_id}", summary="A scene's size and CRS", responses={200: {"model": Scene}, **errors(404)})
    def scene(scene_id: int = scene_id_param()):
        s = idx.scene(scene_id)
        if s is None:
            raise HTTPException(404, "no such scene")
        s["overview"] = f"/api/scenes/{scene_id}/overview"
        return s

    @r.get("/{scene_id}/overview", summary="Downsampled JPEG of a whole scene", response_class=Response,
           responses={200: {**JPEG, "headers": _SIZE_HEADERS}, **errors(403, 404, 410)})
    def overview(scene_id: int = scene_id_param()):
        try:
            data, (w, h) = idx.scene_overview(scene_id)
        except Exception as exc:
            fail(exc, reading_item=True)
        return Response(data, media_type="image/jpeg", headers={
            "Cache-Control": "private, no-cache", "X-Scene-Width": str(w), "X-Scene-Height": str(h)})

    return r
