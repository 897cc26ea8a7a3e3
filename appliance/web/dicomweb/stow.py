"""STOW-RS (PS3.18 10.5): instances stored from a multipart/related request."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from pydicom.dataset import Dataset

from ...archive import Archive, InvalidDicom, Origin, OverBudget, StorageFull, StoreRefused
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
    """Store every part; the answer lists what was stored and what failed, with PS3.18 reasons.

    A part larger than MaximumInstanceSize, or a compressed body (Content-Encoding) that
    inflates past MaximumInflationRatio times its Content-Length beyond a first MB, is
    refused with 413 as soon as it is seen; the parts stored before it stay stored."""
    archive: Archive = request.app[ARCHIVE]
    if not request.content_type.startswith("multipart/") or "boundary=" not in request.headers.get("Content-Type", "").lower():
        # 415 for a body without the boundary its parts need too, as Orthanc's plugin answers it
        raise web.HTTPUnsupportedMediaType(text='send multipart/related; type="application/dicom"; boundary=...')
    expected_study = request.match_info.get("study")
    origin = Origin(kind="RestApi", remote_ip=request.remote or "", http_username=request.get("user", ""))
    reader = await request.multipart()
    stored, failed = [], []
    base = base_url(request)
    study_uids = set()
    body_budget = _body_budget(request, archive)
    received = 0
    while True:
        try:
            part = await reader.next()
        except ValueError as e:   # no boundary, or none found in the body
            raise web.HTTPBadRequest(text=f"the body is not multipart/related as its Content-Type says: {e}") from None
        if part is None:
            break
        try:
            data = await _read_part(part, archive.budget.max_instance_bytes, body_budget - received)
        except OverBudget as e:
            raise web.HTTPRequestEntityTooLarge(0, 0, text=str(e)) from None
        received += len(data)
        item = Dataset()
        part_type = part.headers.get("Content-Type", "application/dicom").split(";")[0].strip().lower()
        if part_type not in ("application/dicom", "application/octet-stream"):
            # DICOM JSON or XML with bulk data parts is not taken; said, not silently skipped
            item.FailureReason = FAILURE_CANNOT_UNDERSTAND
            failed.append(item)
            continue
        try:   # what the part names, checked within the budget (pydicom alone would inflate a bomb whole)
            header = await asyncio.to_thread(archive.check_instance, data)
        except InvalidDicom:
            item.FailureReason = FAILURE_CANNOT_UNDERSTAND
            failed.append(item)
            continue
        item.ReferencedSOPClassUID = header.sop_class_uid
        item.ReferencedSOPInstanceUID = header.sop_instance_uid
        if expected_study and header.study_uid != expected_study:
            item.FailureReason = FAILURE_STUDY_MISMATCH
            failed.append(item)
            continue
        try:
            await archive.ingest_bytes(bytes(data), origin)
        except InvalidDicom:
            item.FailureReason = FAILURE_CANNOT_UNDERSTAND
            failed.append(item)
            continue
        except (StorageFull, StoreRefused):
            item.FailureReason = FAILURE_OUT_OF_RESOURCES
            failed.append(item)
            continue
        study_uids.add(header.study_uid)
        item.RetrieveURL = f"{base}/studies/{header.study_uid}/series/{header.series_uid}" \
                           f"/instances/{header.sop_instance_uid}"
        stored.append(item)
    answer = Dataset()
    answer.SpecificCharacterSet = "ISO_IR 192"
    if len(study_uids) == 1:
        answer.RetrieveURL = f"{base}/studies/{next(iter(study_uids))}"
    # both sequences always, empty ones too (as Orthanc's plugin answers): a client may read either
    answer.ReferencedSOPSequence = stored
    answer.FailedSOPSequence = failed
    status = 200 if not failed else (202 if stored else 409)
    return dicom_json(without_empty_values(answer.to_json_dict()), status)


def without_empty_values(obj: Any) -> Any:
    """DICOM JSON with no ``"Value": []`` (PS3.18 F.2.2: an attribute without value has no Value,
    an empty sequence included)."""
    if isinstance(obj, dict):
        return {k: without_empty_values(v) for k, v in obj.items() if not (k == "Value" and v == [])}
    if isinstance(obj, list):
        return [without_empty_values(v) for v in obj]
    return obj


PART_CHUNK = 2**20


def _body_budget(request: web.Request, archive: Archive) -> int:
    """Most bytes the whole body may inflate to, when the client compressed it; else no bound
    here (each part has its own, and the disk its reserve)."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return 2**62
    if request.content_length is None:
        return archive.budget.max_instance_bytes
    return archive.budget.max_inflation_ratio * request.content_length + 2**20


async def _read_part(part, max_part: int, max_left: int) -> bytes:
    """A part's bytes, read a MB at a time, refused as soon as it passes a budget. One growing
    buffer (large: its own mapping, given back when freed), not a list of chunks that would
    stay in the heap after a bomb."""
    data = bytearray()
    while chunk := await part.read_chunk(PART_CHUNK):
        if len(data) + len(chunk) > max_part:
            raise OverBudget(f"a part is larger than the {max_part // 2**20} MB of MaximumInstanceSize")
        if len(data) + len(chunk) > max_left:
            raise OverBudget("the compressed request inflates to more than MaximumInflationRatio times its "
                             "Content-Length (beyond a first MB)")
        data += chunk
    return bytes(data)


routes.post("/dicom-web/studies")(stow)
routes.post("/dicom-web/studies/{study}")(stow)
