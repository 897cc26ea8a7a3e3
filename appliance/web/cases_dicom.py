"""Key images as DICOM, over REST: a case's Key Object Selection document(s) and Grayscale Softcopy
Presentation States as downloads, and stored into the archive beside the case's study so that DICOM
workstations retrieve them (C-FIND/C-MOVE, DICOMweb) with the images.

The building is ``teaching.keyobjects``' (pure functions), what a caller may read
``teaching.casereading``'s, the storing ``teaching.keystore``'s; here: the answers.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from datetime import datetime

from aiohttp import web

from ..archive import Archive
from ..teaching.casereading import case_export as readable_export
from ..teaching.casereading import readable_case
from ..teaching.keyobjects import ExportError, dataset_bytes
from ..teaching.keystore import store_key_objects as store_case_key_objects
from . import holdback
from .access import is_student
from .errors import ItemNotFound
from .keys import ARCHIVE
from .resources import http_origin, json_response

routes = web.RouteTableDef()

__all__ = ["routes"]


async def _export(request: web.Request) -> tuple[dict, list, list]:
    """(case, KOS per study, GSPS) of the case the route names, as the caller may read it
    (``teaching.casereading``); ItemNotFound when it has no key images (the caller may see)."""
    archive: Archive = request.app[ARCHIVE]
    student = is_student(request)
    case = await readable_case(archive, request.match_info["id"], student)
    holdback.refuse_case(request, [case], "key objects and presentation states")
    try:
        kos, states = await readable_export(archive, case, student)
    except ExportError as e:
        raise ItemNotFound(f"case {case['ID']}: {e}") from None
    return case, kos, states


def _zip(files: list[tuple[str, bytes]], case: dict) -> bytes:
    """The files as a ZIP dated by the case's Updated: the same case, the same bytes."""
    try:
        when = datetime.fromisoformat(str(case.get("Updated"))).timetuple()[:6]
    except ValueError:
        when = (1980, 1, 1, 0, 0, 0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=when)
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return buf.getvalue()


def _attachment(body: bytes, content_type: str, filename: str) -> web.Response:
    return web.Response(body=body, content_type=content_type,
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@routes.get("/cases/{id}/key-object")
async def key_object(request: web.Request) -> web.Response:
    """The case's KOS: one .dcm, or a ZIP of one per study when the key images are in several."""
    case, kos, _ = await _export(request)
    files = await asyncio.to_thread(lambda: [(f"KO{n:03d}.dcm", dataset_bytes(d)) for n, d in enumerate(kos, 1)])
    if len(files) == 1:
        return _attachment(files[0][1], "application/dicom", f"{case['ID']}-key-object.dcm")
    return _attachment(await asyncio.to_thread(_zip, files, case), "application/zip", f"{case['ID']}-key-objects.zip")


@routes.get("/cases/{id}/presentation-states")
async def presentation_states(request: web.Request) -> web.Response:
    """A ZIP of the case's GSPS (PR001.dcm ...; empty when no key image has anything to present)."""
    case, _, states = await _export(request)
    files = await asyncio.to_thread(lambda: [(f"PR{n:03d}.dcm", dataset_bytes(d)) for n, d in enumerate(states, 1)])
    return _attachment(await asyncio.to_thread(_zip, files, case), "application/zip",
                       f"{case['ID']}-presentation-states.zip")


@routes.post("/cases/{id}/store-key-objects")
async def store_key_objects(request: web.Request) -> web.Response:
    """Store the published case's KOS and GSPS as instances of its studies (``teaching.keystore``:
    409 for a draft; a new store replaces the previous one)."""
    archive: Archive = request.app[ARCHIVE]
    case = await readable_case(archive, request.match_info["id"], False)
    try:
        return json_response(await store_case_key_objects(archive, case, http_origin(request)))
    except ExportError as e:
        raise ItemNotFound(f"case {case['ID']}: {e}") from None
