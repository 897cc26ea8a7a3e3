"""DICOMweb (PS3.18) under /dicom-web: QIDO-RS, WADO-RS, STOW-RS; and WADO-URI at /wado.

Searches go through the archive's query engine (the same as C-FIND and /tools/find);
answers are DICOM JSON made by pydicom (``Dataset.to_json_dict``).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pydicom
from aiohttp import web
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from ..archive import (
    Archive,
    FindError,
    Level,
    NotFound,
    Origin,
    Resource,
    answer_dataset,
    answers,
    build_query,
    matchable_only,
    parse_tag,
)
from ..imaging.render import (
    RenderRequest,
    encode_image,
    frame_bytes,
    load,
    number_of_frames,
    render,
)
from ..imaging.transcode import transcode
from .filesend import instance_file_response
from .images import Target, cached_answer
from .keys import ARCHIVE, SETTINGS

routes = web.RouteTableDef()
log = logging.getLogger("pipacs.dicomweb")


DICOM_JSON = "application/dicom+json"
RETRIEVE_URL = 0x00081190
BULK_THRESHOLD = 1024

_STUDY_TAGS = ["SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
               "ModalitiesInStudy", "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
               "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription", "NumberOfStudyRelatedSeries",
               "NumberOfStudyRelatedInstances"]
_SERIES_TAGS = ["SpecificCharacterSet", "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                "NumberOfSeriesRelatedInstances", "StudyInstanceUID"]
_INSTANCE_TAGS = ["SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "InstanceNumber",
                  "Rows", "Columns", "BitsAllocated", "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID"]
DEFAULT_TAGS = {Level.STUDY: _STUDY_TAGS, Level.SERIES: _SERIES_TAGS, Level.INSTANCE: _INSTANCE_TAGS}
_RESERVED = {"limit", "offset", "includefield", "fuzzymatching", "orderby"}
_UID_KEYS = {Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID", Level.INSTANCE: "SOPInstanceUID"}


def base_url(request: web.Request) -> str:
    host = request.host
    if not host.endswith("]") and ":" not in host:  # a Host header without port: name ours explicitly
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if sockname and sockname[1] not in (80, 443):
            host = f"{host}:{sockname[1]}"
    return f"{request.scheme}://{host}/dicom-web"


def _dicom_json(obj: Any, status: int = 200) -> web.Response:
    # no "; charset" parameter: JSON is UTF-8, and some clients (dicomweb-client) compare the type exactly
    return web.Response(body=json.dumps(obj).encode(), status=status, headers={"Content-Type": DICOM_JSON})


def _retrieve_url(base: str, values: dict[int, str], level: Level) -> str:
    url = f"{base}/studies/{values.get(0x0020000D, '')}"
    if level >= Level.SERIES:
        url += f"/series/{values.get(0x0020000E, '')}"
    if level == Level.INSTANCE:
        url += f"/instances/{values.get(0x00080018, '')}"
    return url


def _int(request: web.Request, name: str) -> int:
    v = request.query.get(name, "")
    if not v:
        return 0
    if not v.isdigit():
        raise web.HTTPBadRequest(text=f"{name} must be a whole number >= 0, not {v!r}")
    return int(v)


async def qido(request: web.Request, level: Level, fixed: dict[str, str]) -> web.Response:
    archive: Archive = request.app[ARCHIVE]
    items = dict(fixed)
    include: list[int] = []
    all_fields = False
    for key, value in request.query.items():
        if key in _RESERVED:
            if key == "includefield":
                for part in value.split(","):
                    part = part.strip()
                    if part == "all":
                        all_fields = True
                    elif part:
                        include.append(parse_tag(part))
            continue
        items[key] = value
    query_tags = [parse_tag(k) for k in items]
    wanted: list[int] = []
    for t in [parse_tag(k) for k in DEFAULT_TAGS[level]] + include + query_tags:
        if t not in wanted and t != RETRIEVE_URL:
            wanted.append(t)
    if all_fields:
        from ..archive import INDEXED_TAGS
        for lvl in Level:
            if lvl <= level:
                wanted += [t for t, _ in INDEXED_TAGS[lvl] if t not in wanted]
    q, ignored = matchable_only(build_query(level, items, case_sensitive=True,
                                            pn_case_sensitive=request.app[SETTINGS]["CaseSensitivePN"]))
    limit = _int(request, "limit") or request.app[SETTINGS]["LimitFindResults"]
    found = await answers(archive, q, wanted, limit=limit, offset=_int(request, "offset"))
    base = base_url(request)
    with_vr = [(t, _vr(t)) for t in wanted if t != 0x00080005]
    out = []
    for values in found:
        ds = answer_dataset(None, with_vr, values, "ISO_IR 192", request.app[SETTINGS]["DicomAet"])
        ds.add_new(RETRIEVE_URL, "UR", _retrieve_url(base, values, level))
        out.append(ds.to_json_dict())
    resp = _dicom_json(out)
    # PS3.18 8.3.4: what the search could not honour is said in Warning headers, not refused
    if ignored:
        resp.headers.add("Warning", f"299 {base}: The following attributes are not supported for matching: "
                                    + ",".join(f"{t:08X}" for t in ignored))
    if request.query.get("fuzzymatching", "").lower() == "true":
        resp.headers.add("Warning", f"299 {base}: The fuzzymatching parameter is not supported. "
                                    "Only literal matching has been performed.")
    return resp


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


@routes.get("/dicom-web/studies")
async def qido_studies(request: web.Request) -> web.Response:
    return await qido(request, Level.STUDY, {})


@routes.get("/dicom-web/series")
async def qido_all_series(request: web.Request) -> web.Response:
    return await qido(request, Level.SERIES, {})


@routes.get("/dicom-web/instances")
async def qido_all_instances(request: web.Request) -> web.Response:
    return await qido(request, Level.INSTANCE, {})


@routes.get("/dicom-web/studies/{study}/series")
async def qido_series(request: web.Request) -> web.Response:
    return await qido(request, Level.SERIES, {"StudyInstanceUID": request.match_info["study"]})


@routes.get("/dicom-web/studies/{study}/instances")
async def qido_study_instances(request: web.Request) -> web.Response:
    return await qido(request, Level.INSTANCE, {"StudyInstanceUID": request.match_info["study"]})


@routes.get("/dicom-web/studies/{study}/series/{series}/instances")
async def qido_instances(request: web.Request) -> web.Response:
    return await qido(request, Level.INSTANCE, {"StudyInstanceUID": request.match_info["study"],
                                               "SeriesInstanceUID": request.match_info["series"]})


# ------------------------------------------------------------------------------------------------ WADO-RS

async def _resolve(archive: Archive, study: str, series: str | None = None, instance: str | None = None
                   ) -> list[Resource]:
    """The instances under the given UIDs (in index order); NotFound when nothing matches."""
    items = {"StudyInstanceUID": study}
    level = Level.STUDY
    if series:
        items["SeriesInstanceUID"] = series
        level = Level.SERIES
    if instance:
        items["SOPInstanceUID"] = instance
        level = Level.INSTANCE
    try:
        ids = await archive.find(build_query(level, items))
    except FindError as e:
        raise web.HTTPBadRequest(text=str(e)) from None
    if not ids:
        raise NotFound(f"no {level.title.lower()} with these UIDs")
    inst: list[int] = []
    for rid in ids:
        inst += await archive.index.descendant_instances(rid)
    return await archive.index.resources_by_ids(inst)


def _accepted_syntax(request: web.Request) -> str | None:
    """The transfer-syntax asked for in Accept, None for 'as stored' (absent or *)."""
    accept = request.headers.get("Accept", "")
    m = re.search(r'transfer-syntax\s*=\s*"?([0-9.*]+)"?', accept)
    if not m or m.group(1) == "*":
        return None
    return m.group(1)


async def _multipart(request: web.Request, parts: AsyncIterator, part_type: str) -> web.StreamResponse:
    """Stream a multipart/related answer, one part at a time (memory stays flat).

    The first part is made before the status goes out, so that an instance that cannot be
    decoded or transcoded gets its 4xx answer; a later one can only cut the answer short.
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
    if first is not None:
        await resp.write(encoded(*first))
        async for body, headers in parts:
            await resp.write(encoded(body, headers))
    await resp.write(f"--{boundary}--\r\n".encode())
    await resp.write_eof()
    return resp


async def _instances_response(request: web.Request, resources: list[Resource]) -> web.StreamResponse:
    archive: Archive = request.app[ARCHIVE]
    target = _accepted_syntax(request)

    async def parts():
        for res in resources:
            data = await archive.read_file(res)
            if target is not None:
                data = await asyncio.to_thread(transcode, data, target)
            yield data, {"Content-Length": str(len(data))}
    return await _multipart(request, parts(), "application/dicom")


@routes.get("/dicom-web/studies/{study}")
async def wado_study(request: web.Request) -> web.StreamResponse:
    return await _instances_response(request, await _resolve(request.app[ARCHIVE], request.match_info["study"]))


@routes.get("/dicom-web/studies/{study}/series/{series}")
async def wado_series(request: web.Request) -> web.StreamResponse:
    m = request.match_info
    return await _instances_response(request, await _resolve(request.app[ARCHIVE], m["study"], m["series"]))


@routes.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}")
async def wado_instance(request: web.Request) -> web.StreamResponse:
    m = request.match_info
    return await _instances_response(request, await _resolve(request.app[ARCHIVE], m["study"], m["series"],
                                                             m["instance"]))


def metadata_json(data: bytes, instance_url: str) -> dict:
    """DICOM JSON of one instance; large binary values as BulkDataURI, pixel data by URI too."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)

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
    for res in resources:
        data = await archive.read_file(res)
        ds_uids = await asyncio.to_thread(_uids, data)
        url = f"{base}/studies/{ds_uids[0]}/series/{ds_uids[1]}/instances/{ds_uids[2]}"
        out.append(await asyncio.to_thread(metadata_json, data, url))
    return _dicom_json(out)


def _uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True,
                         specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


@routes.get("/dicom-web/studies/{study}/metadata")
async def metadata_study(request: web.Request) -> web.Response:
    return await _metadata(request, await _resolve(request.app[ARCHIVE], request.match_info["study"]))


@routes.get("/dicom-web/studies/{study}/series/{series}/metadata")
async def metadata_series(request: web.Request) -> web.Response:
    m = request.match_info
    return await _metadata(request, await _resolve(request.app[ARCHIVE], m["study"], m["series"]))


@routes.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/metadata")
async def metadata_instance(request: web.Request) -> web.Response:
    m = request.match_info
    return await _metadata(request, await _resolve(request.app[ARCHIVE], m["study"], m["series"], m["instance"]))


async def _one_instance(request: web.Request) -> Target:
    m = request.match_info
    archive: Archive = request.app[ARCHIVE]
    res = (await _resolve(archive, m["study"], m["series"], m["instance"]))[0]
    f = (await archive.index.files([res.id]))[res.id]
    return Target(archive, res, f[0])


def _frame_list(text: str) -> list[int]:
    try:
        frames = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise web.HTTPBadRequest(text=f"frame list {text!r} must be numbers separated by commas") from None
    if not frames or min(frames) < 1:
        raise web.HTTPBadRequest(text="frames are numbered from 1")
    return frames


@routes.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
async def wado_frames(request: web.Request) -> web.StreamResponse:
    t = await _one_instance(request)
    frames = _frame_list(request.match_info["frames"])
    data = await t.archive.read_file(t.instance)
    ds = await asyncio.to_thread(load, data)
    n = number_of_frames(ds)
    missing = [f for f in frames if f > n]
    if missing:
        raise NotFound(f"frame {missing[0]} does not exist: this instance has {n} frame(s)")

    async def parts():
        for f in frames:
            yield await asyncio.to_thread(frame_bytes, ds, f - 1), {}
    return await _multipart(request, parts(), "application/octet-stream")


@routes.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/bulk/{tag}")
async def wado_bulk(request: web.Request) -> web.StreamResponse:
    t = await _one_instance(request)
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
    return await _multipart(request, parts(), "application/octet-stream")


def _render_params(request: web.Request, frame: int, thumbnail: bool) -> tuple[RenderRequest, str]:
    req = RenderRequest(frame=frame, mode="rendered")
    window = request.query.get("window")
    if window:
        parts = window.split(",")
        try:
            req.center, req.width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise web.HTTPBadRequest(text="window is center,width[,function]") from None
    viewport = request.query.get("viewport")
    if viewport:
        try:
            w, h = (int(float(x)) for x in viewport.split(",")[:2])
        except ValueError:
            raise web.HTTPBadRequest(text="viewport is width,height") from None
        req.out_width, req.out_height = max(1, w), max(1, h)
    elif thumbnail:
        req.out_width = req.out_height = 128
    fmt = "png" if "image/png" in request.headers.get("Accept", "") else "jpeg"
    return req, fmt


def _rendered(thumbnail: bool, with_frame: bool):
    async def handler(request: web.Request) -> web.StreamResponse:
        t = await _one_instance(request)
        frame = (_frame_list(request.match_info["frame"])[0] - 1) if with_frame else 0
        req, fmt = _render_params(request, frame, thumbnail)
        key = ("dicomweb", thumbnail, frame, req.center, req.width, req.out_width, req.out_height, fmt)
        return await cached_answer(request, t, key, lambda data: encode_image(render(load(data), req), fmt),
                                   f"image/{fmt}")
    return handler


_INSTANCE = "/dicom-web/studies/{study}/series/{series}/instances/{instance}"
routes.get(f"{_INSTANCE}/rendered")(_rendered(False, False))
routes.get(f"{_INSTANCE}/thumbnail")(_rendered(True, False))
routes.get(f"{_INSTANCE}/frames/{{frame}}/rendered")(_rendered(False, True))
routes.get(f"{_INSTANCE}/frames/{{frame}}/thumbnail")(_rendered(True, True))


# ------------------------------------------------------------------------------------------------ STOW-RS

FAILURE_PROCESSING = 0x0110
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_STUDY_MISMATCH = 0xA900


async def stow(request: web.Request) -> web.Response:
    from ..archive import InvalidDicom, StorageFull, StoreRefused

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
            header = await asyncio.to_thread(
                lambda: pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True))
            item.ReferencedSOPClassUID = str(header.get("SOPClassUID", ""))
            item.ReferencedSOPInstanceUID = str(header.get("SOPInstanceUID", ""))
        except Exception:
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
    return _dicom_json(answer.to_json_dict(), status)


routes.post("/dicom-web/studies")(stow)
routes.post("/dicom-web/studies/{study}")(stow)


# ------------------------------------------------------------------------------------------------ WADO-URI

@routes.get("/wado")
async def wado_uri(request: web.Request) -> web.StreamResponse:
    """WADO-URI (PS3.18 chapter 9), as the iPad viewers that do not speak C-MOVE use it."""
    q = request.query
    if q.get("requestType", "").upper() != "WADO":
        raise web.HTTPBadRequest(text="requestType=WADO is required")
    for key in ("studyUID", "seriesUID", "objectUID"):
        if not q.get(key):
            raise web.HTTPBadRequest(text=f"{key} is required")
    if q.get("anonymize", "").lower() == "yes":
        raise web.HTTPBadRequest(text="anonymize=yes is not offered over WADO; anonymize the study on the "
                                      "appliance (it keeps teaching files anonymized) and retrieve it")
    archive: Archive = request.app[ARCHIVE]
    res = (await _resolve(archive, q["studyUID"], q["seriesUID"], q["objectUID"]))[0]
    content_types = [c.strip().split(";")[0] for c in q.get("contentType", "image/jpeg").split(",")]
    content_type = next((c for c in content_types if c in ("application/dicom", "image/jpeg", "image/png")), None)
    if content_type is None:
        raise web.HTTPNotAcceptable(text="contentType must be application/dicom, image/jpeg or image/png")
    if content_type == "application/dicom":
        ts = q.get("transferSyntax")
        # a viewer asking for the syntax the file is already in (iPads ask for explicit little
        # endian by habit) gets the stored file as it is, without parsing it to find that out
        if not ts or ts == (await archive.index.metadata(res.id)).get("TransferSyntax"):
            return await instance_file_response(request, archive, res.public_id)
        data = await asyncio.to_thread(transcode, await archive.read_file(res), ts)
        return web.Response(body=data, content_type="application/dicom",
                            headers={"Content-Disposition": f'attachment; filename="{res.public_id}.dcm"'})
    f = (await archive.index.files([res.id]))[res.id]
    t = Target(archive, res, f[0])
    frame = int(q.get("frameNumber", "1") or 1) - 1
    if frame < 0:
        raise web.HTTPBadRequest(text="frameNumber starts at 1")
    req = RenderRequest(frame=frame, mode="rendered")
    try:
        if q.get("windowCenter") and q.get("windowWidth"):
            req.center, req.width = float(q["windowCenter"]), float(q["windowWidth"])
        if q.get("columns"):
            req.out_width = max(1, int(q["columns"]))
        if q.get("rows"):
            req.out_height = max(1, int(q["rows"]))
    except ValueError:
        raise web.HTTPBadRequest(text="windowCenter, windowWidth, rows and columns must be numbers") from None
    fmt = "png" if content_type == "image/png" else "jpeg"
    key = ("wado", frame, req.center, req.width, req.out_width, req.out_height, fmt)
    return await cached_answer(request, t, key, lambda data: encode_image(render(load(data), req), fmt),
                               content_type)
