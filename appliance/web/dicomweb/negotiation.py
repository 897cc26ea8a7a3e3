"""What the client asked for in its Accept header, read in one place for every service."""

from __future__ import annotations

import re

from aiohttp import web


def accepted_syntax(request: web.Request) -> str | None:
    """The transfer syntax asked for in Accept, None for 'as stored' (absent or *)."""
    accept = request.headers.get("Accept", "")
    m = re.search(r'transfer-syntax\s*=\s*"?([0-9.*]+)"?', accept)
    if not m or m.group(1) == "*":
        return None
    return m.group(1)


def accepted_image(request: web.Request) -> str:
    """The image format of a rendered answer: PNG when Accept names it, JPEG otherwise."""
    return "png" if "image/png" in request.headers.get("Accept", "") else "jpeg"
