"""WADO-RS rendered resources (PS3.18 10.4.1.1.3): an instance or a frame as a consumer image,
and its thumbnail."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from aiohttp import web

from ...imaging.render import RenderRequest, encode_image, load, render
from ..images import cached_answer
from .negotiation import accepted_image
from .resolve import frame_list, one_instance

routes = web.RouteTableDef()


def _render_params(request: web.Request, frame: int, thumbnail: bool) -> RenderRequest:
    req = RenderRequest(frame=frame, mode="rendered")
    window = request.query.get("window")
    if window:
        parts = window.split(",")
        try:
            req.center, req.width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise web.HTTPBadRequest(text="window is center,width[,function]") from None
        if not (math.isfinite(req.center) and math.isfinite(req.width)):
            raise web.HTTPBadRequest(text="window is center,width[,function] with finite numbers")
    viewport = request.query.get("viewport")
    if viewport:
        try:
            w, h = (int(float(x)) for x in viewport.split(",")[:2])
        except (ValueError, OverflowError):    # OverflowError: int(float("inf"))
            raise web.HTTPBadRequest(text="viewport is width,height in pixels") from None
        req.out_width, req.out_height = max(1, w), max(1, h)
    elif thumbnail:
        req.out_width = req.out_height = 128
    return req


def _rendered(thumbnail: bool, with_frame: bool) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """One handler for the four routes: of the instance or of a frame; full size or thumbnail."""
    async def handler(request: web.Request) -> web.StreamResponse:
        fmt = accepted_image(request)
        t = await one_instance(request)
        frame = (frame_list(request.match_info["frame"])[0] - 1) if with_frame else 0
        req = _render_params(request, frame, thumbnail)
        key = ("dicomweb", thumbnail, frame, req.center, req.width, req.out_width, req.out_height, fmt)
        return await cached_answer(request, t, key, lambda data: encode_image(render(load(data), req), fmt),
                                   f"image/{fmt}")
    return handler


_INSTANCE = "/dicom-web/studies/{study}/series/{series}/instances/{instance}"
routes.get(f"{_INSTANCE}/rendered")(_rendered(False, False))
routes.get(f"{_INSTANCE}/thumbnail")(_rendered(True, False))
routes.get(f"{_INSTANCE}/frames/{{frame}}/rendered")(_rendered(False, True))
routes.get(f"{_INSTANCE}/frames/{{frame}}/thumbnail")(_rendered(True, True))
