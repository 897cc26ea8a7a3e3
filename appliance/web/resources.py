"""Orthanc-compatible routes of the resource hierarchy: /patients, /studies, /series, /instances."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

from aiohttp import BodyPartReader, web
from pydicom.dataset import Dataset

from ..archive import (
    MAIN_TAGS,
    ZIP_MAGIC,
    Archive,
    InvalidDicom,
    Level,
    NotFound,
    Origin,
    OverBudget,
    Resource,
    ingest_zip,
    orthanc_date,
    read_dataset,
)
from . import holdback
from .access import is_student
from .errors import BAD_FILE_FORMAT, BadArgument, BadRequestBody, ItemNotFound
from .filesend import instance_file_response
from .keys import ARCHIVE
from .tagjson import (
    ContentNotFound,
    content_at,
    dataset_to_json,
    dicom_json_inline,
    meta_to_json,
    parse_tag_name,
    stored_dataset,
)

log = logging.getLogger(__name__)

routes = web.RouteTableDef()
UPLOAD_STATE = web.AppKey("upload_state", dict)

_LEVELS = {lvl.plural: lvl for lvl in Level}
_KEYWORDS = {lvl: {f"{t >> 16:04x},{t & 0xFFFF:04x}": kw for t, kw in tags} for lvl, tags in MAIN_TAGS.items()}


_NO_DEFAULT = object()
# the metadata that names the source of a resource made by /anonymize or /modify; Orthanc shows it
DERIVED_FROM = ("AnonymizedFrom", "ModifiedFrom")


async def body_text(request: web.Request, max_bytes: int | None = None) -> str:
    """The request body as text: UTF-8 (as JSON is, RFC 8259), a 400 that says so otherwise
    (aiohttp's ``request.text()`` raises UnicodeDecodeError, a 500, on other bytes). ``max_bytes``:
    413 past it, read no further (the app's own limit is for uploads, 2**40)."""
    if max_bytes is None:
        raw = await request.read()
    else:
        if request.content_length is not None and request.content_length > max_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=request.content_length)
        buf = bytearray()
        while chunk := await request.content.read(2**16):
            buf += chunk
            if len(buf) > max_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=len(buf))
        raw = bytes(buf)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise web.HTTPBadRequest(text=f"the request body is not UTF-8 text (byte {e.start} cannot be "
                                      "decoded)") from None


_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string"}


async def json_body(request: web.Request, empty: Any = _NO_DEFAULT, want: type | tuple[type, ...] | None = None,
                    invalid_code: tuple[int, str] = BAD_FILE_FORMAT, max_bytes: int | None = None) -> Any:
    """The request body as JSON; ``empty`` stands for an empty body (without it, an empty body is
    invalid JSON). Invalid JSON, or JSON not of a ``want`` type, is a 400 with the reason and the
    Orthanc error code the route answers (``invalid_code`` for invalid JSON; a wrong type is
    Orthanc's "Bad file format"). ``max_bytes``: a 413 past it."""
    text = await body_text(request, max_bytes)
    if empty is not _NO_DEFAULT and not text.strip():
        return empty
    try:
        body = parse_json(text)
    except json.JSONDecodeError as e:
        raise BadRequestBody(f"the request body is not valid JSON: {e}", invalid_code) from None
    if want is not None and not isinstance(body, want):
        kinds = want if isinstance(want, tuple) else (want,)
        raise BadRequestBody("the request body must be a JSON " + " or ".join(_JSON_TYPE_NAMES.get(k, k.__name__)
                                                                           for k in kinds))
    return body


def _no_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)", name, 0)


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise json.JSONDecodeError(f"the number {text} is too large", text, 0)
    return x


# whole numbers in a body beyond 64 bits are refused when parsed: SQLite (limits, offsets, since)
# and DICOM's binary VRs hold no more, and Python's int() refuses more than 4300 digits anyway
MAX_JSON_INTEGER = 2**63 - 1


def _whole(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = MAX_JSON_INTEGER + 1
    if abs(n) > MAX_JSON_INTEGER:
        raise json.JSONDecodeError(f"the number {text[:30]} is beyond 64 bits", text[:30], 0)
    return n


def parse_json(text: str) -> Any:
    """Strict JSON (no NaN, Infinity, numbers beyond a double or 64 bits, lone surrogates); nesting too deep for
    the parser is a JSONDecodeError like any other invalid body, not a RecursionError."""
    try:
        obj = json.loads(text, parse_constant=_no_constant, parse_float=_finite, parse_int=_whole)
        if "\\u" in text:   # an escaped lone surrogate (\ud800) parses, then fails every encoder
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text[:20], 0) from None
    except UnicodeEncodeError:
        raise json.JSONDecodeError("a string holds a lone surrogate (\\ud800-\\udfff): not Unicode text",
                                   text[:20], 0) from None
    return obj


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(obj, indent=3, sort_keys=True, ensure_ascii=False),
                        content_type="application/json", status=status)


async def large_json_response(obj: Any) -> web.Response:
    """json_response for answers that can run to megabytes (every instance of a series): written off
    the event loop."""
    text = await asyncio.to_thread(json.dumps, obj, indent=3, sort_keys=True, ensure_ascii=False)
    return web.Response(text=text, content_type="application/json")


def flag(request: web.Request, name: str) -> bool:
    """Orthanc's boolean query arguments: present means true, unless it says false/0."""
    if name not in request.query:
        return False
    return request.query[name].strip().lower() not in ("false", "0", "no")


def int_arg(request: web.Request, name: str, default: int = 0) -> int:
    v = request.query.get(name)
    if v is None or v == "":
        return default
    if not (v.isascii() and v.strip().lstrip("+-").isdigit()):
        raise BadArgument(f"the argument {name!r} must be a whole number, not {v!r}")
    n = int(v)
    if n < 0:
        raise web.HTTPBadRequest(text=f"the argument {name!r} must not be negative")
    if n > MAX_JSON_INTEGER:   # Orthanc: not a number it can hold, so of the wrong type
        raise BadArgument(f"the argument {name!r} is too large (at most {MAX_JSON_INTEGER})")
    return n


def level_of(request: web.Request) -> Level:
    lvl = _LEVELS.get(request.match_info["level"])
    if lvl is None:
        raise web.HTTPNotFound(text=f"unknown resource collection {request.match_info['level']!r}")
    return lvl


def _tags_json(level: Level, tags: dict[str, str]) -> dict[str, str]:
    names = _KEYWORDS[level]
    return {names[k]: v for k, v in tags.items() if k in names}


async def expand(archive: Archive, resources: list[Resource], students: bool = False) -> list[dict[str, Any]]:
    """Orthanc's JSON description of resources, with few queries whatever their number.

    For ``students``, a patient lists only its published studies."""
    if not resources:
        return []
    index = archive.index
    ids = [r.id for r in resources]
    tags = await index.main_tags(ids)
    children = await index.children_public_ids([r.id for r in resources if r.level != Level.INSTANCE])
    patients = [r for r in resources if r.level == Level.PATIENT]
    if students and patients:
        for p in patients:
            children[p.id] = [s.public_id for s in await archive.narrowed_for_students([p])]
    parent_ids = list({r.parent_id for r in resources if r.parent_id is not None})
    parents = {p.id: p for p in await index.resources_by_ids(parent_ids)}
    files = {}
    index_in_series: dict[int, str] = {}
    if any(r.level == Level.INSTANCE for r in resources):
        inst = [r.id for r in resources if r.level == Level.INSTANCE]
        files = await index.files(inst)
        index_in_series = await index.metadata_values(inst, "IndexInSeries")

    labels = await index.labels_of(ids)
    derived = {name: await index.metadata_values(ids, name) for name in DERIVED_FROM}

    out = []
    for r in resources:
        d: dict[str, Any] = {
            "ID": r.public_id, "Type": r.level.title,
            "MainDicomTags": _tags_json(r.level, tags.get(r.id, {})),
            "Labels": labels.get(r.id, []),   # Orthanc 1.12
        }
        for name, sources in derived.items():   # made by /anonymize or /modify: from which resource
            if r.id in sources:
                d[name] = sources[r.id]
        parent = parents.get(r.parent_id) if r.parent_id is not None else None
        if r.level != Level.INSTANCE:
            d["IsStable"] = r.stable
            d["LastUpdate"] = orthanc_date(r.last_update)
        if r.level == Level.PATIENT:
            d["Studies"] = children.get(r.id, [])
        elif r.level == Level.STUDY:
            d["Series"] = children.get(r.id, [])
            d["ParentPatient"] = parent.public_id if parent else None
            # the study's own copy of its patient's tags (as Orthanc keeps them)
            d["PatientMainDicomTags"] = _tags_json(Level.PATIENT, tags.get(r.id, {}))
        elif r.level == Level.SERIES:
            inst = children.get(r.id, [])
            d["Instances"] = inst
            d["ParentStudy"] = parent.public_id if parent else None
            expected = _expected_instances(tags.get(r.id, {}))
            d["ExpectedNumberOfInstances"] = expected
            if expected is None:
                d["Status"] = "Unknown"
            elif len(inst) == expected:
                d["Status"] = "Complete"
            elif len(inst) < expected:
                d["Status"] = "Missing"
            else:
                d["Status"] = "Inconsistent"
        else:
            uuid, size = files.get(r.id, ("", 0))
            d["FileSize"] = size
            d["FileUuid"] = uuid
            d["ParentSeries"] = parent.public_id if parent else None
            iis = index_in_series.get(r.id)
            d["IndexInSeries"] = int(iis) if iis and iis.isascii() and iis.lstrip("-").isdigit() else None
        out.append(d)
    return out


async def expand_for(request: web.Request, resources: list[Resource]) -> list[dict[str, Any]]:
    """``expand`` as the caller may see it: a student's is narrowed to what is published and without
    the held-back DICOM text of unknown cases in a teaching session (``holdback``)."""
    out = await expand(request.app[ARCHIVE], resources, is_student(request))
    await holdback.redact_expanded(request, resources, out)
    return out


def _expected_instances(series_tags: dict[str, str]) -> int | None:
    # Orthanc's rule: ImagesInAcquisition, else CardiacNumberOfImages x ..., simplified to the usual tags
    for key in ("0020,1002", "0018,1090", "0054,0081"):
        v = series_tags.get(key, "").strip()
        if v.isascii() and v.isdigit() and int(v) > 0:
            return int(v)
    return None


async def _one(request: web.Request, level: Level | None = None) -> Resource:
    archive = request.app[ARCHIVE]
    return await archive.get(level if level is not None else level_of(request), request.match_info["id"])


@routes.get(r"/{level:patients|studies|series|instances}")
async def list_resources(request: web.Request) -> web.Response:
    archive = request.app[ARCHIVE]
    level = level_of(request)
    since, limit = int_arg(request, "since"), int_arg(request, "limit")
    if limit == 0 and request.query.get("limit", "") != "":
        return json_response([])    # Orthanc: limit=0 is no resource (0 elsewhere here means no limit)
    students = is_student(request)
    if students:
        ids = await archive.find_request(level, {}, since=since, limit=limit, students=True)
    else:
        ids = await archive.index.list_ids(level, since, limit)
    resources = await archive.index.resources_by_ids(ids)
    if flag(request, "expand"):
        return json_response(await expand_for(request, resources))
    return json_response([r.public_id for r in resources])


@routes.get(r"/{level:patients|studies|series|instances}/{id}")
async def get_resource(request: web.Request) -> web.Response:
    res = await _one(request)
    return json_response((await expand_for(request, [res]))[0])


@routes.delete(r"/{level:patients|studies|series|instances}/{id}")
async def delete_resource(request: web.Request) -> web.Response:
    """Orthanc's delete; a patient or study that teaching cases use, a series or instance that
    holds key images of cases, is refused (409 naming them) unless ``?force``, which takes the
    study, its key images (and the instances of it they await) out of those cases."""
    level = level_of(request)
    in_cases = "detach" if flag(request, "force") else "refuse"
    remaining = await request.app[ARCHIVE].delete(level, request.match_info["id"], in_cases)
    return json_response({"RemainingAncestor": remaining})


_RELATIVES = {"patient": Level.PATIENT, "study": Level.STUDY, "studies": Level.STUDY,
              "series": Level.SERIES, "instances": Level.INSTANCE}


@routes.get(r"/{level:patients|studies|series|instances}/{id}/{rel:patient|study|studies|series|instances}")
async def relatives(request: web.Request) -> web.Response:
    """Children (a list, expanded as Orthanc does) or the parent at a higher level (one object)."""
    archive = request.app[ARCHIVE]
    students = is_student(request)
    res = await _one(request)
    rel = request.match_info["rel"]
    target = _RELATIVES[rel]
    if target < res.level:
        if rel not in ("patient", "study", "series"):
            raise web.HTTPNotFound(text=f"/{rel} is not available for a {res.level.title.lower()}")
        node = res
        while node.level > target:
            node = await archive.index.resource_by_id(node.parent_id)
        return json_response((await expand_for(request, [node]))[0])
    if target == res.level or rel in ("patient", "study"):
        raise web.HTTPNotFound(text=f"/{rel} is not available for a {res.level.title.lower()}")
    nodes = await archive.narrowed_for_students([res]) if students else [res]
    while nodes and nodes[0].level < target:
        nxt: list[Resource] = []
        for n in nodes:
            nxt.extend(await archive.index.children(n.id))
        nodes = nxt
    if not flag(request, "expand") and "expand" in request.query:
        return json_response([n.public_id for n in nodes])
    return json_response(await expand_for(request, nodes))


@routes.get(r"/{level:patients|studies|series|instances}/{id}/statistics")
async def resource_statistics(request: web.Request) -> web.Response:
    archive = request.app[ARCHIVE]
    res = await _one(request)
    st = await archive.resource_statistics(res)
    size = str(st["size"])
    mb = st["size"] // 2**20
    out: dict[str, Any] = {
        "DiskSize": size, "DiskSizeMB": mb, "UncompressedSize": size, "UncompressedSizeMB": mb,
        "DicomDiskSize": size, "DicomDiskSizeMB": mb, "DicomUncompressedSize": size,
        "DicomUncompressedSizeMB": mb,
    }
    if res.level == Level.PATIENT:
        out.update(CountStudies=st["studies"], CountSeries=st["series"], CountInstances=st["instances"])
    elif res.level == Level.STUDY:
        out.update(CountSeries=st["series"], CountInstances=st["instances"])
    elif res.level == Level.SERIES:
        out.update(CountInstances=st["instances"])
    return json_response(out)


@routes.get("/instances/{id}/file")
async def instance_file(request: web.Request) -> web.StreamResponse:
    """The stored file; as DICOM JSON when asked for exactly that (Orthanc 1.10 answers it so for
    ``Accept: application/dicom+json`` alone, and the file for any other Accept)."""
    if request.headers.get("Accept", "").strip() == "application/dicom+json":
        # a JSON answer: redacted, and refused only for a document (its content) in a held-back study
        ds = await _dataset(request, stop_before_pixels=False, documents=False)
        text = await asyncio.to_thread(   # pixel data in base64 included: off the loop, made and written
            lambda: json.dumps(dicom_json_inline(ds, request.match_info["id"]), indent=3, sort_keys=True,
                               ensure_ascii=False))
        return web.Response(text=text, content_type="application/dicom+json")
    await holdback.refuse_retrieve(request, Level.INSTANCE, request.match_info["id"])
    return await instance_file_response(request, request.app[ARCHIVE], request.match_info["id"])


async def _dataset(request: web.Request, stop_before_pixels: bool = True, documents: bool = True):
    """The instance's data set, read for this answer (a student's without the held-back text of an
    unknown case in a teaching session). ``documents=False``: a route that would give a document's
    content (an SR's, an encapsulated PDF's) refuses it to a student while its study is held back."""
    archive = request.app[ARCHIVE]
    res = await _one(request, Level.INSTANCE)
    data = await archive.read_file(res)
    ds = await asyncio.to_thread(stored_dataset, data, res.public_id, stop_before_pixels)
    if not documents:
        await holdback.refuse_document(request, res, ds)
    return await holdback.redact_dataset_of(request, res, ds)


def _tags_mode(request: web.Request) -> str:
    if flag(request, "simplify"):
        return "simplify"
    if flag(request, "short"):
        return "short"
    return "full"


def ignore_length(request: web.Request) -> frozenset[int]:
    """Orthanc's ``?ignore-length=``: tags (``gggg-eeee``, ``ggggeeee`` or keywords, comma-separated)
    whose long values are shown all the same; a name that is no tag is a 400 naming it."""
    if "ignore-length" not in request.query:
        return frozenset()
    tags = set()
    for name in request.query["ignore-length"].split(","):
        tag = parse_tag_name(name.strip())
        if tag is None:
            raise web.HTTPBadRequest(text=f"ignore-length: {name.strip()!r} is not a tag (give gggg-eeee "
                                          "or a keyword such as ImageComments, comma-separated)")
        tags.add(tag)
    return frozenset(tags)


@routes.get("/instances/{id}/tags")
async def instance_tags(request: web.Request) -> web.Response:
    longer = ignore_length(request)
    ds = await _dataset(request, stop_before_pixels=False)
    return json_response(await asyncio.to_thread(dataset_to_json, ds, _tags_mode(request), longer))


@routes.get("/instances/{id}/simplified-tags")
async def instance_simplified_tags(request: web.Request) -> web.Response:
    longer = ignore_length(request)
    ds = await _dataset(request, stop_before_pixels=False)
    return json_response(await asyncio.to_thread(dataset_to_json, ds, "simplify", longer))


async def _instances_of(request: web.Request, res: Resource) -> list[Resource]:
    """The instances below a patient, study or series that the caller may see (a student: only
    those of published studies), in storage order."""
    archive = request.app[ARCHIVE]
    tops = await archive.narrowed_for_students([res]) if is_student(request) else [res]
    out: list[Resource] = []
    for top in tops:
        out += await archive.instances_below(top)
    return out


async def _instance_dataset(request: web.Request, inst: Resource) -> Dataset | None:
    """One instance's dataset; None when it was deleted meanwhile (left out, as Orthanc does)."""
    try:
        data = await request.app[ARCHIVE].read_file(inst)
    except NotFound:
        return None
    ds = await asyncio.to_thread(stored_dataset, data, inst.public_id, False)
    return await holdback.redact_dataset_of(request, inst, ds)


async def _instance_json(request: web.Request, inst: Resource, mode: str,
                         longer: frozenset[int] = frozenset()) -> dict[str, Any] | None:
    """One instance's /tags answer; None when it was deleted meanwhile."""
    ds = await _instance_dataset(request, inst)
    return None if ds is None else await asyncio.to_thread(dataset_to_json, ds, mode, longer)


def _shared(first: dict[str, Any] | None, tags: dict[str, Any]) -> dict[str, Any]:
    """The text values of ``tags`` (full form) that ``first`` also holds, with the same value."""
    texts = {k: v for k, v in tags.items() if v.get("Type") == "String"}
    if first is None:
        return texts
    return {k: v for k, v in first.items() if k in texts and texts[k]["Value"] == v["Value"]}


def _reshaped(tags: dict[str, Any], mode: str) -> dict[str, Any]:
    """Full-form tags in the answer's form (keys by keyword for ``simplify``, values only for ``short``)."""
    if mode == "full":
        return tags
    if mode == "short":
        return {k: v["Value"] for k, v in tags.items()}
    return dict(sorted((v["Name"], v["Value"]) for v in tags.values()))


@routes.get(r"/{level:patients|studies|series}/{id}/shared-tags")
async def shared_tags(request: web.Request) -> web.Response:
    """Orthanc's shared tags: the text values every instance below holds alike."""
    shared: dict[str, Any] | None = None
    for inst in await _instances_of(request, await _one(request)):
        tags = await _instance_json(request, inst, "full")
        if tags is not None:
            shared = _shared(shared, tags)
    return json_response(_reshaped(shared or {}, _tags_mode(request)))


@routes.get(r"/{level:patients|studies|series}/{id}/instances-tags")
async def instances_tags(request: web.Request) -> web.Response:
    """Every instance's tags, by its ID."""
    mode, longer = _tags_mode(request), ignore_length(request)
    out: dict[str, Any] = {}
    for inst in await _instances_of(request, await _one(request)):
        tags = await _instance_json(request, inst, mode, longer)
        if tags is not None:
            out[inst.public_id] = tags
    return await large_json_response(out)


# The attributes of each module Orthanc answers in /module (PS3.3's tables, as Orthanc 1.10 lists them).
PATIENT_MODULE = frozenset({
    0x00100010, 0x00100020, 0x00100021, 0x00100024, 0x00100030, 0x00100032, 0x00100040,  # name, IDs, birth, sex
    0x00081120,                                                  # Referenced Patient Sequence
    0x00101000, 0x00101001, 0x00101002,                          # other IDs and names
    0x00102160, 0x00104000,                                      # ethnic group, comments
    0x00102201, 0x00102202, 0x00102292, 0x00102293, 0x00102294,  # species and breed
    0x00102297, 0x00102298, 0x00102299,                          # responsible person and organization
    0x00120062, 0x00120063, 0x00120064,                          # de-identification
})
STUDY_MODULE = frozenset({
    0x0020000D, 0x00080020, 0x00080030, 0x00080090, 0x00080096, 0x00200010, 0x00080050, 0x00080051,
    0x00081030, 0x00081048, 0x00081049, 0x00081060, 0x00081062, 0x00321034, 0x00081110, 0x00081032,
    0x00401012,
})
SERIES_MODULE = frozenset({
    0x00080060, 0x0020000E, 0x00200011, 0x00200060, 0x00080021, 0x00080031, 0x00081050, 0x00081052,
    0x00181030, 0x0008103E, 0x0008103F, 0x00081070, 0x00081072, 0x00081111, 0x00081250, 0x00180015,
    0x00185100, 0x00280108, 0x00280109, 0x00400275, 0x00102210,
    0x00400253, 0x00400244, 0x00400245, 0x00400254, 0x00400260, 0x00400280,  # performed procedure step
})
INSTANCE_MODULE = frozenset({   # SOP Common, with the digital signatures macro
    0x00080016, 0x00080018, 0x00080005, 0x00080012, 0x00080013, 0x00080014, 0x0008001A, 0x0008001B,
    0x00080110, 0x00080201, 0x0018A001, 0x00200013, 0x01000410, 0x01000420, 0x01000424, 0x01000426,
    0x04000500, 0x04000561, 0x0040A390, 0x00280303, 0x4FFE0001, 0xFFFAFFFA,
})
_MODULE_OF_LEVEL = {Level.PATIENT: PATIENT_MODULE, Level.STUDY: STUDY_MODULE, Level.SERIES: SERIES_MODULE,
                    Level.INSTANCE: INSTANCE_MODULE}


async def _module(request: web.Request, level: Level, module: frozenset[int]) -> web.Response:
    """The module's attributes as one instance below holds them (the first one the caller may see)."""
    mode, longer = _tags_mode(request), ignore_length(request)
    res = await _one(request, level)
    instances = [res] if res.level == Level.INSTANCE else await _instances_of(request, res)
    for inst in instances:
        ds = await _instance_dataset(request, inst)
        if ds is not None:
            part = Dataset()
            for elem in ds:
                if int(elem.tag) in module:
                    part.add(elem)
            return json_response(await asyncio.to_thread(dataset_to_json, part, mode, longer))
    raise NotFound(f"no instance below {res.level.title.lower()} {res.public_id}")


@routes.get(r"/{level:patients|studies|series|instances}/{id}/module")
async def resource_module(request: web.Request) -> web.Response:
    level = level_of(request)
    return await _module(request, level, _MODULE_OF_LEVEL[level])


@routes.get("/studies/{id}/module-patient")
async def study_patient_module(request: web.Request) -> web.Response:
    """The patient module as a study's instances hold it (Orthanc's /module-patient)."""
    return await _module(request, Level.STUDY, PATIENT_MODULE)


@routes.get("/instances/{id}/header")
async def instance_header(request: web.Request) -> web.Response:
    """The file meta group only: answered even when an element of the data set cannot be read."""
    res = await _one(request, Level.INSTANCE)
    data = await request.app[ARCHIVE].read_file(res)
    ds = await asyncio.to_thread(read_dataset, data, True)
    return json_response(meta_to_json(ds, _tags_mode(request)))


@routes.get(r"/instances/{id}/content{path:(/.*)?}")
async def instance_content(request: web.Request) -> web.Response:
    ds = await _dataset(request, stop_before_pixels=False, documents=False)
    parts = [p for p in request.match_info["path"].split("/") if p]
    try:
        kind, value = content_at(ds, parts)
    except ContentNotFound as e:
        raise NotFound(f"no such content: {e}") from None
    if kind == "list":
        return json_response(value)
    return web.Response(body=value, content_type="application/octet-stream")


@routes.get(r"/{level:patients|studies|series|instances}/{id}/metadata")
async def list_metadata(request: web.Request) -> web.Response:
    res = await _one(request)
    meta = await request.app[ARCHIVE].metadata(res)
    if flag(request, "expand"):
        return json_response(meta)
    return json_response(sorted(meta))


@routes.get(r"/{level:patients|studies|series|instances}/{id}/metadata/{name}")
async def get_metadata(request: web.Request) -> web.Response:
    res = await _one(request)
    meta = await request.app[ARCHIVE].metadata(res)
    name = request.match_info["name"]
    if name not in meta:
        raise ItemNotFound(f"no metadata {name!r} for this {res.level.title.lower()}")
    return web.Response(text=meta[name], content_type="text/plain")


@routes.get("/patients/{id}/protected")
async def get_protected(request: web.Request) -> web.Response:
    res = await _one(request, Level.PATIENT)
    return web.Response(text="1" if res.protected else "0", content_type="text/plain")


@routes.put("/patients/{id}/protected")
async def put_protected(request: web.Request) -> web.Response:
    body = (await body_text(request)).strip()
    if body not in ("0", "1"):
        raise web.HTTPBadRequest(text="send 1 to protect the patient, 0 to unprotect")
    await request.app[ARCHIVE].set_protected(request.match_info["id"], body == "1")
    return web.Response(text="", content_type="text/plain")


def http_origin(request: web.Request) -> Origin:
    return Origin(kind="RestApi", remote_ip=request.remote or "", http_username=request.get("user", ""))


@routes.post("/instances")
async def upload_instances(request: web.Request) -> web.Response:
    """One DICOM file, a ZIP of them (Orthanc's POST /instances), or a browser's file form.

    Past a budget (the body's size, its inflation, a ZIP's members, an instance's elements)
    the answer is 413 with the reason, and nothing of the upload is stored (a form's parts are
    uploads of their own: ``upload_form``)."""
    archive = request.app[ARCHIVE]
    origin = http_origin(request)
    transform = await upload_anonymizer(request) if flag(request, "anonymize") else None
    if request.content_type == "multipart/form-data":
        return await upload_form(request, archive, origin, transform)
    try:
        spool = await archive.spool_request_body(request.content, request.content_length,
                                                 encoded=content_encoded(request))
        try:
            head = await asyncio.to_thread(spool.peek, 4)
            if head == ZIP_MAGIC:
                stored, not_stored = await ingest_zip(archive, spool.file, origin, transform)
                return with_not_stored(json_response(stored), not_stored)
            data = await asyncio.to_thread(spool.read_all)
        finally:
            await asyncio.to_thread(spool.close)
        if not data:
            raise web.HTTPBadRequest(text="the request body is empty: send a DICOM file or a ZIP of DICOM files")
        result = await archive.ingest_bytes(data, origin, transform=transform)
    except OverBudget as e:
        raise too_large(e) from None
    return json_response(result.orthanc_json())


FORM_UNREADABLE = ("the multipart/form-data body cannot be read: no boundary in its Content-Type, "
                   "or parts not delimited by it")
NOT_STORED_SHOWN = 50     # members or parts named in X-Pipacs-Not-Stored; the count says how many in all


def with_not_stored(response: web.Response, not_stored: list[dict[str, Any]]) -> web.Response:
    """What an upload did not store (ZIP members, form parts), beside Orthanc's answer rather
    than in it, so that a script counting Orthanc's array counts the same: the count in
    ``X-Pipacs-Not-Stored-Count``, the first ones (Filename, Status, Message) as ASCII JSON in
    ``X-Pipacs-Not-Stored``; the log has a line for each."""
    if not_stored:
        shown = [{"Filename": x["Filename"], "Status": x["Status"], "Message": x["Message"][:200]}
                 for x in not_stored[:NOT_STORED_SHOWN]]
        response.headers["X-Pipacs-Not-Stored-Count"] = str(len(not_stored))
        response.headers["X-Pipacs-Not-Stored"] = json.dumps(shown, ensure_ascii=True)
    return response


class _PartStream:
    """A form part read as the upload spool reads a request body."""

    def __init__(self, part: Any):
        self.part = part

    async def iter_chunked(self, n: int):
        while chunk := await self.part.read_chunk(n):
            yield chunk


async def upload_form(request: web.Request, archive: Archive, origin: Origin, transform: Any) -> web.Response:
    """``multipart/form-data`` (a browser's file form, one file or several, ZIPs among them;
    pipacs's answer where Orthanc 1.10 answers an empty 200): each part is an upload of its own,
    within its own budget (``form_part``), at most MaximumZipMembers parts. The answer is the
    array of instances stored, as for a ZIP; parts not stored are said beside it
    (``with_not_stored``). 400 (not DICOM) or 413 (past a budget) when no part was stored at all;
    past MaximumZipMembers parts, 413 and the parts before it stay stored."""
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError):   # no boundary, or a body that is not multipart
        raise web.HTTPBadRequest(text=FORM_UNREADABLE) from None
    stored: list[dict[str, Any]] = []
    not_stored: list[dict[str, Any]] = []
    parts = 0
    while True:
        try:
            part = await reader.next()
        except ValueError:
            raise web.HTTPBadRequest(text=FORM_UNREADABLE) from None
        if part is None:
            break
        parts += 1
        if parts > archive.max_zip_members:
            raise too_large(OverBudget(f"the form has more than the {archive.max_zip_members} parts of "
                                       f"MaximumZipMembers; the first {len(stored)} instances were stored"))
        name = getattr(part, "filename", None) or getattr(part, "name", None) or f"part {parts}"
        more, left = await form_part(archive, part, name, content_encoded(request), origin, transform)
        stored += more
        not_stored += left
    for x in not_stored[:NOT_STORED_SHOWN]:
        log.warning("form part %r not stored (%s): %s", x["Filename"], x["Status"], x["Message"])
    if not stored:
        if not not_stored:
            raise web.HTTPBadRequest(text="the form holds no file: send DICOM files or ZIPs of them")
        first = f"nothing was stored: {not_stored[0]['Filename']}: {not_stored[0]['Message']}"
        if any(x["Status"] == "Failure" for x in not_stored):
            raise too_large(OverBudget(first))
        raise InvalidDicom(first)
    return with_not_stored(json_response(stored), not_stored)


async def form_part(archive: Archive, part: Any, name: str, encoded: bool, origin: Origin,
                    transform: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One part of a form, as an upload of its own: (instances stored, what was not stored).
    MaximumInstanceSize for a part that is not a ZIP; a ZIP part's members as a ZIP upload's
    (a ZIP of more than MaximumZipMembers members is not opened). A part past its budget is
    read to its end and dropped, so the next parts are read."""
    def failed(status: str, message: str) -> tuple[list, list]:
        return [], [{"Filename": name, "Status": status, "Message": message}]

    if not isinstance(part, BodyPartReader):
        await part.release()
        return failed("Skipped", "a multipart inside a part is not opened")
    try:
        spool = await archive.spool_request_body(_PartStream(part), None, encoded=encoded)
    except OverBudget as e:
        await part.release()
        return failed("Failure", str(e))
    try:
        if await asyncio.to_thread(spool.peek, 4) == ZIP_MAGIC:
            stored, left = await ingest_zip(archive, spool.file, origin, transform)
            return stored, [x | {"Filename": f"{name}/{x['Filename']}"} for x in left]
        data = await asyncio.to_thread(spool.read_all)
        if not data:
            return failed("Skipped", "not DICOM: the part is empty")
        return [(await archive.ingest_bytes(data, origin, transform=transform)).orthanc_json()], []
    except OverBudget as e:
        return failed("Failure", str(e))
    except InvalidDicom as e:
        return failed("Skipped", f"not DICOM: {e}")
    finally:
        await asyncio.to_thread(spool.close)


def content_encoded(request: web.Request) -> bool:
    """The body came compressed (aiohttp inflates it on the way in)."""
    return request.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")


def too_large(e: OverBudget) -> web.HTTPRequestEntityTooLarge:
    """413, with the budget that was passed (the error middleware answers it as JSON). What
    the client still sends is read and dropped by aiohttp (inflated a chunk at a time, for at
    most its lingering time), never kept."""
    return web.HTTPRequestEntityTooLarge(0, 0, text=str(e))


async def upload_anonymizer(request: web.Request):
    """``POST /instances?anonymize=1`` (pipacs): de-identify on the way in, as AnonymizeOnIngest does."""
    from ..teaching.derive import default_options, ingest_anonymizer

    app = request.app
    if "anonymizer" not in app.get(UPLOAD_STATE, {}):
        archive = app[ARCHIVE]
        app[UPLOAD_STATE]["anonymizer"] = ingest_anonymizer(await archive.secret("anonymization"),
                                                            lambda: default_options(archive))
    return app[UPLOAD_STATE]["anonymizer"]
