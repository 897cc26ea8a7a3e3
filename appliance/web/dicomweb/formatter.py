"""The answers every DICOMweb service writes: DICOM JSON, multipart/related, and the URLs in them.

Written once, as Orthanc's DICOMweb plugin has one formatter for all its services.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ...archive import Level
from ..classcache import CLASS_CACHE

DICOM_JSON = "application/dicom+json"

# One part of a multipart answer: its body and its headers besides Content-Type.
Part = tuple[bytes, dict[str, str]]


def base_url(request: web.Request) -> str:
    """The DICOMweb root as the client reached it, for the URLs written into answers."""
    host = request.host
    if not host.endswith("]") and ":" not in host:  # a Host header without port: name ours explicitly
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if sockname and sockname[1] not in (80, 443):
            host = f"{host}:{sockname[1]}"
    return f"{request.scheme}://{host}/dicom-web"


def retrieve_url(base: str, values: dict[int, str], level: Level) -> str:
    """The WADO-RS URL of a study, series or instance, from its UIDs."""
    url = f"{base}/studies/{values.get(0x0020000D, '')}"
    if level >= Level.SERIES:
        url += f"/series/{values.get(0x0020000E, '')}"
    if level == Level.INSTANCE:
        url += f"/instances/{values.get(0x00080018, '')}"
    return url


def dicom_json(obj: Any, status: int = 200) -> web.Response:
    """A DICOM JSON answer (PS3.18 F.2)."""
    # no "; charset" parameter: JSON is UTF-8, and some clients (dicomweb-client) compare the type exactly
    return web.Response(body=json.dumps(obj).encode(), status=status, headers={"Content-Type": DICOM_JSON})


async def multipart(request: web.Request, parts: AsyncIterator[Part], part_type: str) -> web.StreamResponse:
    """Stream a multipart/related answer, one part at a time (memory stays flat).

    The first part is made before the status goes out, so that an instance that cannot be
    decoded or transcoded gets its 4xx answer; a later one can only cut the answer short. A client
    that goes away mid-answer stops the work: no part is made once its connection is closing (the
    count is in the class cache's stats, StreamsCut).
    """
    boundary = uuid.uuid4().hex

    def encoded(body: bytes, headers: dict[str, str]) -> bytes:
        head = f"--{boundary}\r\nContent-Type: {part_type}\r\n"
        for k, v in headers.items():
            head += f"{k}: {v}\r\n"
        return head.encode() + b"\r\n" + body + b"\r\n"

    first = await anext(parts, None)
    resp = web.StreamResponse(headers={
        "Content-Type": f'multipart/related; type="{part_type}"; boundary={boundary}'})
    await resp.prepare(request)
    tally = request.app.get(CLASS_CACHE)
    if first is not None:
        await resp.write(encoded(*first))
        if tally is not None:
            tally.parts_sent += 1
        while True:
            if request.transport is None or request.transport.is_closing():
                if tally is not None:
                    tally.streams_cut += 1
                await _close(parts)
                raise ConnectionResetError("the client went away before the last part")
            part = await anext(parts, None)
            if part is None:
                break
            try:
                await resp.write(encoded(*part))
                if tally is not None:
                    tally.parts_sent += 1
            except ConnectionError:
                if tally is not None:
                    tally.streams_cut += 1
                await _close(parts)
                raise
    await resp.write(f"--{boundary}--\r\n".encode())
    await resp.write_eof()
    return resp


async def _close(parts: AsyncIterator[Part]) -> None:
    """End a generator of parts early (its ``finally`` runs, nothing more is made)."""
    aclose = getattr(parts, "aclose", None)
    if aclose is not None:
        await aclose()
