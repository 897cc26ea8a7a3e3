"""Key images as DICOM, over REST: a case's Key Object Selection document(s) and Grayscale Softcopy
Presentation States as downloads, and stored into the archive beside the case's study so that DICOM
workstations retrieve them (C-FIND/C-MOVE, DICOMweb) with the images.

The building is ``teaching.keyobjects``' (pure functions); here: reading the key images' headers
through the archive, off the loop, and the answers.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from datetime import datetime

from aiohttp import web
from pydicom.dataset import Dataset

from ..archive import Archive, Level, NotFound, read_dataset
from ..teaching.keyobjects import ExportError, build_export, dataset_bytes
from .access import is_student
from .errors import ItemNotFound
from .keys import ARCHIVE
from .resources import http_origin, json_response

routes = web.RouteTableDef()

__all__ = ["routes", "case_export"]


async def _case(request: web.Request) -> dict:
    """The case; a draft is not found for a student (its existence is not told)."""
    archive: Archive = request.app[ARCHIVE]
    case_id = request.match_info["id"]
    case = await archive.get_case(case_id)
    if is_student(request) and case.get("State") != "published":
        raise NotFound(f"no case {case_id}")
    return case


async def _headers(archive: Archive, case: dict) -> dict[str, Dataset]:
    """Instance ID -> header (no pixels) of each key image's instance, read through the archive."""
    out: dict[str, Dataset] = {}
    for im in case.get("KeyImages") or []:
        iid = im.get("Instance")
        if iid in out:
            continue
        try:
            res = await archive.get(Level.INSTANCE, iid)
            data = await archive.read_file(res)
        except NotFound:
            raise ItemNotFound(f"key image instance {iid} of case {case['ID']} is no longer stored") from None
        out[iid] = await asyncio.to_thread(read_dataset, data, True)
    return out


async def case_export(archive: Archive, case: dict) -> tuple[list[Dataset], list[Dataset]]:
    """(KOS per study, GSPS) of a case, as ``keyobjects.build_export`` makes them from the stored headers.
    ItemNotFound when the case has no key images or one is no longer stored."""
    headers = await _headers(archive, case)
    try:
        return await asyncio.to_thread(build_export, case, headers)
    except ExportError as e:
        raise ItemNotFound(f"case {case['ID']}: {e}") from None


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
    case = await _case(request)
    kos, _ = await case_export(request.app[ARCHIVE], case)
    files = await asyncio.to_thread(lambda: [(f"KO{n:03d}.dcm", dataset_bytes(d)) for n, d in enumerate(kos, 1)])
    if len(files) == 1:
        return _attachment(files[0][1], "application/dicom", f"{case['ID']}-key-object.dcm")
    return _attachment(await asyncio.to_thread(_zip, files, case), "application/zip", f"{case['ID']}-key-objects.zip")


@routes.get("/cases/{id}/presentation-states")
async def presentation_states(request: web.Request) -> web.Response:
    """A ZIP of the case's GSPS (PR001.dcm ...; empty when no key image has anything to present)."""
    case = await _case(request)
    _, states = await case_export(request.app[ARCHIVE], case)
    files = await asyncio.to_thread(lambda: [(f"PR{n:03d}.dcm", dataset_bytes(d)) for n, d in enumerate(states, 1)])
    return _attachment(await asyncio.to_thread(_zip, files, case), "application/zip",
                       f"{case['ID']}-presentation-states.zip")


@routes.post("/cases/{id}/store-key-objects")
async def store_key_objects(request: web.Request) -> web.Response:
    """Store the KOS and GSPS as new instances of the case's studies (a new series each), so that a
    workstation retrieves them with the images. The same case stored twice stores them once (same
    UIDs); the TCE receiver knows them as the board's own and makes no case of them."""
    archive: Archive = request.app[ARCHIVE]
    case = await _case(request)
    kos, states = await case_export(archive, case)
    origin = http_origin(request)
    answer: dict[str, list[str]] = {"KeyObjects": [], "PresentationStates": []}
    # the presentation states first: a KOS references them
    for key, datasets in (("PresentationStates", states), ("KeyObjects", kos)):
        for ds in datasets:
            data = await asyncio.to_thread(dataset_bytes, ds)
            # built from the stored (already de-identified, with AnonymizeOnIngest) headers: the
            # ingest transform would map their UIDs a second time, away from the study
            result = await archive.ingest_bytes(data, origin, already_deidentified=True)
            answer[key].append(result.ids[3])
    return json_response(answer)
