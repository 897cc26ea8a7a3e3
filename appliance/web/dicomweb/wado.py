"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data of studies, series, instances."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import pydicom
from aiohttp import web

from ...archive import Archive, NotFound, Resource
from ...imaging.render import frame_bytes, load, number_of_frames
from ...imaging.transcode import transcode
from ..errors import StoredFileUnreadable
from ..keys import ARCHIVE
from ..tagjson import stored_dataset
from .formatter import base_url, dicom_json, multipart
from .negotiation import accepted_syntax
from .resolve import frame_list, one_instance, resolve_request

routes = web.RouteTableDef()
log = logging.getLogger("pipacs.dicomweb")

BULK_THRESHOLD = 1024


async def _instances_response(request: web.Request, resources: list[Resource]) -> web.StreamResponse:
    archive: Archive = request.app[ARCHIVE]
    target = accepted_syntax(request)

    async def parts():
        for res in resources:
            data = await archive.read_file(res)
            if target is not None:
                data = await asyncio.to_thread(transcode, data, target)
            yield data, {"Content-Length": str(len(data))}
    return await multipart(request, parts(), "application/dicom")


@routes.get("/dicom-web/studies/{study}")
async def wado_study(request: web.Request) -> web.StreamResponse:
    return await _instances_response(request, await resolve_request(request))


@routes.get("/dicom-web/studies/{study}/series/{series}")
async def wado_series(request: web.Request) -> web.StreamResponse:
    return await _instances_response(request, await resolve_request(request))


@routes.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}")
async def wado_instance(request: web.Request) -> web.StreamResponse:
    return await _instances_response(request, await resolve_request(request))


def metadata_json(data: bytes, instance_url: str, instance_id: str = "") -> dict:
    """DICOM JSON of one instance; large binary values as BulkDataURI, pixel data by URI too.
    StoredFileUnreadable for a file pydicom cannot read back."""
    ds = stored_dataset(data, instance_id or instance_url.rsplit("/", 1)[-1], stop_before_pixels=True)

    def bulk(elem) -> str:
        return f"{instance_url}/bulk/{elem.tag:08X}"
    out: dict[str, Any] = {}
    for elem in ds:
        try:
            out[f"{elem.tag:08X}"] = elem.to_json_dict(bulk, BULK_THRESHOLD)
        except Exception as e:   # noqa: BLE001 - pydicom raises many types for values it cannot convert
            # a value its VR cannot hold (an IS of "1A") is left out, not the whole answer refused;
            # values that merely break a rule (a UID component with a leading zero) are kept
            log.info("metadata: %s left out of %s: %s", elem.tag, instance_url.rsplit("/", 1)[-1],
                     str(e).splitlines()[0][:120])
    if "Rows" in ds:
        ts = ds.file_meta.get("TransferSyntaxUID")
        vr = "OB" if (ts is not None and ts.is_compressed) or int(ds.get("BitsAllocated", 16) or 16) <= 8 else "OW"
        out["7FE00010"] = {"vr": vr, "BulkDataURI": f"{instance_url}/frames/" +
                           ",".join(str(i + 1) for i in range(number_of_frames(ds)))}
    return out


async def _metadata(request: web.Request, resources: list[Resource]) -> web.Response:
    archive: Archive = request.app[ARCHIVE]
    base = base_url(request)
    out = []
    unreadable: StoredFileUnreadable | None = None
    for res in resources:
        data = await archive.read_file(res)
        try:
            out.append(await asyncio.to_thread(_instance_metadata, data, base, res.public_id))
        except StoredFileUnreadable as e:   # skipped (stored_dataset logged it): the others are answered
            unreadable = unreadable or e
    if unreadable is not None and not out:
        raise unreadable
    return dicom_json(out)


def _instance_metadata(data: bytes, base: str, instance_id: str) -> dict:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        uids = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    except Exception:  # noqa: BLE001 - its reason is logged by stored_dataset below
        uids = None
    if uids is None:
        stored_dataset(data, instance_id, stop_before_pixels=True)   # raises StoredFileUnreadable
        raise StoredFileUnreadable(instance_id)
    return metadata_json(data, f"{base}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}", instance_id)


@routes.get("/dicom-web/studies/{study}/metadata")
async def metadata_study(request: web.Request) -> web.Response:
    return await _metadata(request, await resolve_request(request))


@routes.get("/dicom-web/studies/{study}/series/{series}/metadata")
async def metadata_series(request: web.Request) -> web.Response:
    return await _metadata(request, await resolve_request(request))


@routes.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/metadata")
async def metadata_instance(request: web.Request) -> web.Response:
    return await _metadata(request, await resolve_request(request))


@routes.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
async def wado_frames(request: web.Request) -> web.StreamResponse:
    t = await one_instance(request)
    frames = frame_list(request.match_info["frames"])
    data = await t.archive.read_file(t.instance)
    ds = await asyncio.to_thread(load, data)
    n = number_of_frames(ds)
    missing = [f for f in frames if f > n]
    if missing:
        raise NotFound(f"frame {missing[0]} does not exist: this instance has {n} frame(s)")

    async def parts():
        for f in frames:
            yield await asyncio.to_thread(frame_bytes, ds, f - 1), {}
    return await multipart(request, parts(), "application/octet-stream")


@routes.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/bulk/{tag}")
async def wado_bulk(request: web.Request) -> web.StreamResponse:
    t = await one_instance(request)
    try:
        tag = int(request.match_info["tag"], 16)
    except ValueError:
        raise web.HTTPBadRequest(text="bulk data is addressed by its tag in hexadecimal") from None
    data = await t.archive.read_file(t.instance)
    ds = await asyncio.to_thread(load, data)
    if tag not in ds:
        raise NotFound(f"no element {tag:08X} in this instance")
    value = ds[tag].value
    body = value if isinstance(value, (bytes, bytearray)) else str(value).encode()

    async def parts():
        yield bytes(body), {}
    return await multipart(request, parts(), "application/octet-stream")
