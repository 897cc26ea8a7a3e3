"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data of studies, series, instances."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections import Counter
from typing import Any

import pydicom
from aiohttp import web
from pydicom.uid import UID

from ...archive import HELD_BACK_TAGS, Archive, Level, Resource
from ...imaging.render import frame_bytes, load, number_of_frames
from ...imaging.transcode import transcode
from .. import holdback
from ..classcache import CLASS_CACHE, ClassCache
from ..errors import BAD_REQUEST, PARAMETER_OUT_OF_RANGE, BadRequestBody, ItemNotFound, StoredFileUnreadable
from ..keys import ARCHIVE
from ..tagjson import stored_dataset
from .formatter import DICOM_JSON, base_url, dicom_json, multipart
from .negotiation import accepted_json, accepted_syntax, multipart_part
from .resolve import frame_list, one_instance, resolve_request

routes = web.RouteTableDef()
log = logging.getLogger("pipacs.dicomweb")

BULK_THRESHOLD = 1024
# frames one WADO-RS frames request may list (``.../frames/1,2,3``): more is a 400 naming the number, so
# a client cannot make the server decode thousands of frames for one answer (the viewer asks one at a time)
MAX_FRAMES_PER_REQUEST = 1024
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"


def _instances_syntax(request: web.Request) -> str | None:
    """The transfer syntax an instance retrieval asks for (None: as stored); 400 for an Accept
    that is not multipart/related of application/dicom, or names no transfer syntax (Orthanc's
    plugin: a bad request)."""
    ts = accepted_syntax(multipart_part(request, ["application/dicom"])[1])
    if ts is not None and not UID(ts).is_transfer_syntax:   # accepted_syntax: None for absent or *
        raise BadRequestBody(f"transfer-syntax={ts[:80]} is no transfer syntax", BAD_REQUEST)
    return ts


async def _instances_response(request: web.Request, resources: list[Resource], target: str | None
                              ) -> web.StreamResponse:
    archive: Archive = request.app[ARCHIVE]
    if resources:   # the URL names one study: all of them are in it
        await holdback.refuse_retrieve(request, Level.INSTANCE, resources[0].public_id)

    async def parts():
        for res in resources:
            data = await archive.read_file(res)
            if target is not None:
                data = await asyncio.to_thread(transcode, data, target)
            yield data, {"Content-Length": str(len(data))}
    return await multipart(request, parts(), "application/dicom")


@routes.get("/dicom-web/studies/{study}")
async def wado_study(request: web.Request) -> web.StreamResponse:
    target = _instances_syntax(request)
    return await _instances_response(request, await resolve_request(request), target)


@routes.get("/dicom-web/studies/{study}/series/{series}")
async def wado_series(request: web.Request) -> web.StreamResponse:
    target = _instances_syntax(request)
    return await _instances_response(request, await resolve_request(request), target)


@routes.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}")
async def wado_instance(request: web.Request) -> web.StreamResponse:
    target = _instances_syntax(request)
    return await _instances_response(request, await resolve_request(request), target)


# Values of these VRs are bytes: answered by address (BulkDataURI), whatever their size, as
# Orthanc's plugin answers them (PS3.18 F.2.7 lets the origin server choose)
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def metadata_json(data: bytes, instance_url: str, instance_id: str = "") -> dict:
    """DICOM JSON of one instance; binary values as BulkDataURI, each with its own address (in a
    sequence, ``bulk/{sequence}/{item}/{tag}``, items from 1, as Orthanc's plugin spells it: the path the bulk
    route serves), pixel data by its
    frames. StoredFileUnreadable for a file pydicom cannot read back."""
    ds = stored_dataset(data, instance_id or instance_url.rsplit("/", 1)[-1], stop_before_pixels=True)
    out = _dataset_json(ds, f"{instance_url}/bulk", instance_url)
    if "Rows" in ds:
        ts = ds.file_meta.get("TransferSyntaxUID")
        vr = "OB" if (ts is not None and ts.is_compressed) or int(ds.get("BitsAllocated", 16) or 16) <= 8 else "OW"
        out["7FE00010"] = {"vr": vr, "BulkDataURI": f"{instance_url}/frames/" +
                           ",".join(str(i + 1) for i in range(number_of_frames(ds)))}
    return out


def _dataset_json(ds: pydicom.Dataset, bulk_base: str, instance_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for elem in ds:
        key = f"{elem.tag:08X}"
        address = f"{bulk_base}/{elem.tag:08x}"
        try:
            if elem.VR == "SQ":
                out[key] = {"vr": "SQ", "Value": [_dataset_json(item, f"{address}/{i}", instance_url)
                                                  for i, item in enumerate(elem.value, 1)]}
            elif elem.VR in BINARY_VRS:
                out[key] = {"vr": elem.VR, "BulkDataURI": address} if elem.value else {"vr": elem.VR}
            else:
                out[key] = elem.to_json_dict(lambda e: "", 2**62)
        except Exception as e:   # noqa: BLE001 - pydicom raises many types for values it cannot convert
            # a value its VR cannot hold (an IS of "1A") is left out, not the whole answer refused;
            # values that merely break a rule (a UID component with a leading zero) are kept
            log.info("metadata: %s left out of %s: %s", elem.tag, instance_url.rsplit("/", 1)[-1],
                     str(e).splitlines()[0][:120])
    return out


# The base URL the cached metadata is written with: replaced by the caller's own base when sent, so one
# entry serves every Host a client may send (a key per Host would let any student make unlimited entries,
# each a full make, H2). The NUL characters cannot come from a URL; in JSON they are \u0000.
BASE_SENTINEL = "\x00pipacs-dicomweb-base\x00"
_SENTINEL_JSON = json.dumps(BASE_SENTINEL)[1:-1].encode()


def with_base(body: bytes, base: str) -> bytes:
    """Cached metadata JSON (written with BASE_SENTINEL) with the caller's base URL in its place."""
    return body.replace(_SENTINEL_JSON, json.dumps(base)[1:-1].encode())


async def _metadata(request: web.Request, resources: list[Resource]) -> web.Response:
    """The DICOM JSON of ``resources`` (already narrowed to what the caller may see), from the class
    cache: made once per content (the revision of exactly these instances, so a student's answer is
    shared only with those who see the same instances) and route, for thirty students, whatever Host
    each sends (the base URL is put in when sending). Its owners are the instances' files, so deleting
    one of them drops the entry, the patient's name in it included."""
    archive: Archive = request.app[ARCHIVE]
    base = base_url(request)
    held = await _held_back(request, resources)
    if len(resources) == 1:      # one instance: cheap, and not worth a place in the cache
        answer = await _metadata_list(archive, resources, base)
        return dicom_json(holdback.redact_dicom_json(answer) if held else answer)
    revision = await archive.content_revision(resources)
    key = f"wado-metadata|{request.match_info.route.resource.canonical}|{revision}"

    async def make() -> bytes:
        answer = await _metadata_list(archive, resources, BASE_SENTINEL)
        return await asyncio.to_thread(lambda: json.dumps(answer).encode())   # MBs for a big study: off the loop
    owners = await archive.content_files(resources)
    cache = request.app[CLASS_CACHE]
    if held:     # the full answer stays cached as it is; the student's is a redacted copy of it
        body = await holdback.redacted_cached(request, key, lambda: cache.get_or_make(key, make, owners=owners),
                                              holdback.redact_metadata_body, owners)
    else:
        body = await cache.get_or_make(key, make, owners=owners)
    body = await asyncio.to_thread(with_base, body, base)
    return web.Response(body=body, headers={"Content-Type": DICOM_JSON})


async def _held_back(request: web.Request, resources: list[Resource]) -> bool:
    """Whether these instances (of the one study the URL names) are held back for this student."""
    return bool(resources) and await holdback.instance_held(request, resources[0])


async def _metadata_list(archive: Archive, resources: list[Resource], base: str) -> list[dict]:
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
    return out


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
    accepted_json(request)
    return await _metadata(request, await resolve_request(request))


@routes.get("/dicom-web/studies/{study}/series/{series}/metadata")
async def metadata_series(request: web.Request) -> web.Response:
    accepted_json(request)
    return await _metadata(request, await resolve_request(request))


@routes.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/metadata")
async def metadata_instance(request: web.Request) -> web.Response:
    accepted_json(request)
    return await _metadata(request, await resolve_request(request))


@routes.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
async def wado_frames(request: web.Request) -> web.StreamResponse:
    # frames are served decoded, little endian: what Explicit VR Little Endian would hold
    ts = accepted_syntax(multipart_part(request, ["application/octet-stream"])[1])
    if ts not in (None, EXPLICIT_LITTLE, IMPLICIT_LITTLE):
        raise web.HTTPBadRequest(text=f"this route cannot answer the transfer syntax {ts[:80]} the Accept names: "
                                      f"frames are served decoded ({EXPLICIT_LITTLE})")
    frames = frame_list(request.match_info["frames"])
    if len(frames) > MAX_FRAMES_PER_REQUEST:
        raise BadRequestBody(f"this request lists {len(frames)} frames; at most {MAX_FRAMES_PER_REQUEST} may be "
                             "asked for at once", PARAMETER_OUT_OF_RANGE)
    t = await one_instance(request)
    data = await t.archive.read_file(t.instance)
    ds = await asyncio.to_thread(load, data)
    n = number_of_frames(ds)
    missing = [f for f in frames if f > n]
    if missing:
        raise ItemNotFound(f"frame {missing[0]} does not exist: this instance has {n} frame(s)")

    return await multipart(request, frame_parts(request.app[CLASS_CACHE], ds, frames),
                           f"application/octet-stream; transfer-syntax={EXPLICIT_LITTLE}")


# frames listed again later in a request are held until their last part, within this many bytes for the
# whole process (shared by every request: thirty clients cannot hold 30 x the budget); beyond, decoded again
HELD_FRAME_BYTES = 32 * 2**20
_held = {"bytes": 0}    # bytes held now by all requests; changed on the loop only


def held_frame_bytes() -> int:
    """Bytes of WADO-RS frames held for repeats across all requests now (tests check the bound)."""
    return _held["bytes"]


async def frame_parts(cache: ClassCache, ds: pydicom.Dataset, frames: list[int]):
    """The parts of a WADO-RS frames answer (frames numbered from 1): each distinct frame decoded once,
    ``1,1,1,...`` costs one decode (a frame asked for again is held until its last part, within the
    process-wide HELD_FRAME_BYTES), in the class cache's worker slots, so a flood of frame requests queues
    with the other decoding instead of filling the default thread pool."""
    left = Counter(frames)
    held: dict[int, bytes] = {}
    try:
        for f in frames:
            body = held.get(f)
            if body is None:
                body = await cache.run(frame_bytes, ds, f - 1)
            left[f] -= 1
            if left[f] == 0:
                _held["bytes"] -= len(held.pop(f, b""))
            elif f not in held and _held["bytes"] + len(body) <= HELD_FRAME_BYTES:
                held[f] = body
                _held["bytes"] += len(body)
            yield body, {}
    finally:        # a client gone mid-stream gives its share back
        _held["bytes"] -= sum(len(b) for b in held.values())


@routes.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/bulk/{tag:.+}")
async def wado_bulk(request: web.Request) -> web.StreamResponse:
    """A binary value by the address metadata gave it: ``{tag}``, or in a sequence
    ``{sequence}/{item}/{tag}`` (items from 1, as Orthanc's plugin numbers them), as deep as the
    sequences go."""
    multipart_part(request, ["application/octet-stream"])
    path = _bulk_path(request.match_info["tag"])
    t = await one_instance(request)
    if any(tag in HELD_BACK_TAGS for tag, _ in path) and await holdback.instance_held(request, t.instance):
        raise ItemNotFound(f"no element {path[-1][0]:08x} in this instance")   # as its metadata has none
    data = await t.archive.read_file(t.instance)
    ds = await asyncio.to_thread(load, data)
    await holdback.refuse_document(request, t.instance, ds)     # a report's values wait for the reveal
    for tag, item in path[:-1]:
        if tag not in ds or ds[tag].VR != "SQ" or item > len(ds[tag].value):
            raise ItemNotFound(f"no item {item} of sequence {tag:08x} in this instance")
        ds = ds[tag].value[item - 1]
    tag = path[-1][0]
    if tag not in ds:
        raise ItemNotFound(f"no element {tag:08x} in this instance")
    if ds[tag].VR == "SQ":
        raise web.HTTPBadRequest(text=f"{tag:08x} is a sequence, not bulk data: address the values of its items")
    value = ds[tag].value
    body = value if isinstance(value, (bytes, bytearray)) else str(value).encode()

    async def parts():
        yield bytes(body), {}
    return await multipart(request, parts(), "application/octet-stream")


def _bulk_path(text: str) -> list[tuple[int, int]]:
    """``0040a730/1/00431028`` -> [(0x0040a730, 1), (0x00431028, 0)]; 400 for anything else."""
    parts = text.strip("/").split("/")
    if len(parts) % 2 != 1:
        raise web.HTTPBadRequest(text="bulk data is addressed as {tag} or {sequence}/{item}/.../{tag}")
    out = []
    try:
        for i in range(0, len(parts), 2):
            if len(parts[i]) != 8:
                raise ValueError(parts[i])
            tag = int(parts[i], 16)
            item = int(parts[i + 1]) if i + 1 < len(parts) else 0
            if i + 1 < len(parts) and (item < 1 or not parts[i + 1].isdigit()):
                raise ValueError(parts[i + 1])
            out.append((tag, item))
    except ValueError:
        raise web.HTTPBadRequest(text="bulk data is addressed by tags in hexadecimal (8 digits) and item "
                                      "numbers from 1") from None
    return out
