"""STOW-RS (PS3.18 10.5): instances stored from a multipart/related request."""

from __future__ import annotations

import asyncio
import io

import pydicom
from aiohttp import web
from pydicom.dataset import Dataset

from ...archive import Archive, InvalidDicom, Origin, StorageFull, StoreRefused
from ...dicom import statuses
from ..keys import ARCHIVE
from .formatter import base_url, dicom_json

routes = web.RouteTableDef()

# FailureReason values (PS3.18 10.5.3.2, with the DIMSE codes of PS3.4)
FAILURE_PROCESSING = statuses.PROCESSING_FAILURE
FAILURE_CANNOT_UNDERSTAND = statuses.CANNOT_UNDERSTAND
FAILURE_OUT_OF_RESOURCES = statuses.OUT_OF_RESOURCES
FAILURE_STUDY_MISMATCH = statuses.IDENTIFIER_MISMATCH


async def stow(request: web.Request) -> web.Response:
    """Store every part; the answer lists what was stored and what failed, with PS3.18 reasons."""
    archive: Archive = request.app[ARCHIVE]
    if not request.content_type.startswith("multipart/"):
        raise web.HTTPUnsupportedMediaType(text='send multipart/related; type="application/dicom"')
    expected_study = request.match_info.get("study")
    origin = Origin(kind="RestApi", remote_ip=request.remote or "", http_username=request.get("user", ""))
    reader = await request.multipart()
    stored, failed = [], []
    base = base_url(request)
    study_uids = set()
    while True:
        try:
            part = await reader.next()
        except ValueError as e:   # no boundary, or none found in the body
            raise web.HTTPBadRequest(text=f"the body is not multipart/related as its Content-Type says: {e}") from None
        if part is None:
            break
        data = await part.read(decode=False)
        item = Dataset()
        try:
            header = await asyncio.to_thread(_header, data)
            item.ReferencedSOPClassUID = str(header.get("SOPClassUID", ""))
            item.ReferencedSOPInstanceUID = str(header.get("SOPInstanceUID", ""))
        except Exception:   # noqa: BLE001 - pydicom raises many types on what is not DICOM; the store says why
            header = None
        try:
            if expected_study and header is not None and str(header.get("StudyInstanceUID", "")) != expected_study:
                item.FailureReason = FAILURE_STUDY_MISMATCH
                failed.append(item)
                continue
            await archive.ingest_bytes(bytes(data), origin)
        except InvalidDicom:
            item.FailureReason = FAILURE_CANNOT_UNDERSTAND
            failed.append(item)
            continue
        except (StorageFull, StoreRefused):
            item.FailureReason = FAILURE_OUT_OF_RESOURCES
            failed.append(item)
            continue
        study_uids.add(str(header.StudyInstanceUID))
        item.RetrieveURL = f"{base}/studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}" \
                           f"/instances/{header.SOPInstanceUID}"
        stored.append(item)
    answer = Dataset()
    if len(study_uids) == 1:
        answer.RetrieveURL = f"{base}/studies/{next(iter(study_uids))}"
    answer.ReferencedSOPSequence = stored
    if failed:
        answer.FailedSOPSequence = failed
    status = 200 if not failed else (202 if stored else 409)
    return dicom_json(answer.to_json_dict(), status)


def _header(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)


routes.post("/dicom-web/studies")(stow)
routes.post("/dicom-web/studies/{study}")(stow)
