"""Orthanc-compatible routes of pipacs as a DICOM client: /modalities and /queries."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections import OrderedDict
from typing import Any

from aiohttp import web
from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from ..archive import NotFound
from ..config import ConfigError, parse_modalities
from ..dicom import scu
from .errors import (
    BAD_FILE_FORMAT,
    NETWORK_PROTOCOL,
    PARAMETER_OUT_OF_RANGE,
    BadRequestBody,
    ItemNotFound,
    error_response,
)
from .keys import ARCHIVE, SETTINGS
from .resources import body_text, flag, json_body, json_response, parse_json
from .tagjson import dataset_to_json

routes = web.RouteTableDef()
log = logging.getLogger(__name__)

QUERIES = web.AppKey("queries", OrderedDict)
MAX_QUERIES = 100
_query_ids = itertools.count(1)

_ORTHANC_DEFAULTS = {"AllowEventReport": True, "AllowFindWorklist": True, "AllowNAction": True,
                     "AllowTranscoding": True, "LocalAet": "", "Manufacturer": "Generic", "Timeout": 0,
                     "UseDicomTls": False}
_OPERATIONS = ["configuration", "echo", "move", "query", "store"]


class RemoteError(Exception):
    """A remote node failed; answered 500 as Orthanc does, with the reason."""


def _modality(request: web.Request) -> tuple[str, dict]:
    name = request.match_info["name"]
    m = request.app[ARCHIVE].modalities().get(name)
    if m is None:
        raise ItemNotFound(f"no modality named {name!r}")
    return name, m


def _public(m: dict) -> dict:
    out = dict(_ORTHANC_DEFAULTS)
    out.update({k: v for k, v in m.items()})
    return out


def _timeout(request: web.Request) -> float:
    return float(request.app[SETTINGS]["DicomScuTimeout"])


async def _run(fn, *args):
    try:
        return await asyncio.to_thread(fn, *args)
    except scu.ScuError as e:
        raise RemoteError(str(e)) from None


def remote_error_response(request: web.Request, e: RemoteError) -> web.Response:
    """500 in Orthanc's shape (OrthancError "Error in the network protocol", OrthancStatus 9, the
    reason in Details as Orthanc gives it), and the reason in Message too: that is the line the
    explorer shows, and "Error in the network protocol" alone does not tell a teacher what to fix."""
    return error_response(request, 500, f"Error in the network protocol: {e}", details=str(e),
                          orthanc_code=NETWORK_PROTOCOL)


@web.middleware
async def remote_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except RemoteError as e:
        return remote_error_response(request, e)


def ae_title(value: Any, what: str) -> str:
    """An AE title from a request body: 1-16 printable ASCII characters, no backslash (PS3.5
    6.2, AE); a 400 that says so otherwise (pynetdicom would raise it as a ValueError)."""
    if not isinstance(value, str):
        raise web.HTTPBadRequest(text=f"{what} must be an AE title (a string), not {type(value).__name__}")
    text = value.strip()
    if not text or len(text) > 16 or "\\" in text or not all(" " <= c <= "~" for c in text):
        raise web.HTTPBadRequest(text=f"{what} {value!r} is not an AE title: 1 to 16 printable ASCII "
                                      "characters, no backslash")
    return text


async def _body_json(request: web.Request, default: Any = None) -> Any:
    text = (await body_text(request)).strip()
    if not text:
        return default
    try:
        return parse_json(text)
    except json.JSONDecodeError:
        return text  # Orthanc accepts a bare string in several bodies (e.g. a resource ID, a target AET)


@routes.get("/modalities")
async def list_modalities(request: web.Request) -> web.Response:
    mods = request.app[ARCHIVE].modalities()
    if flag(request, "expand"):
        return json_response({n: _public(m) for n, m in sorted(mods.items())})
    return json_response(sorted(mods))


@routes.get("/modalities/{name}")
async def modality_operations(request: web.Request) -> web.Response:
    _modality(request)
    return json_response(_OPERATIONS)


@routes.get("/modalities/{name}/configuration")
async def modality_configuration(request: web.Request) -> web.Response:
    return json_response(_public(_modality(request)[1]))


def _manufacturer_given(body: Any) -> Any:
    """The Manufacturer a modality body names ({"Manufacturer": ...} or the 4th of [AET, host, port, ...])."""
    if isinstance(body, dict):
        return body.get("Manufacturer")
    return body[3] if isinstance(body, list) and len(body) > 3 else None


@routes.put("/modalities/{name}")
async def put_modality(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await _body_json(request)
    try:
        config = parse_modalities("Modality", {name: body})[name]
    except ConfigError as e:
        # Orthanc: a body that is not a modality is a bad file format; an unknown manufacturer's
        # name, a parameter out of range
        unknown_name = e.key.endswith("Manufacturer") and isinstance(_manufacturer_given(body), str)
        raise BadRequestBody(str(e), PARAMETER_OUT_OF_RANGE if unknown_name else BAD_FILE_FORMAT) from None
    await request.app[ARCHIVE].put_modality(name, config)
    return web.Response(text="", content_type="text/plain")


@routes.delete("/modalities/{name}")
async def delete_modality(request: web.Request) -> web.Response:
    archive = request.app[ARCHIVE]
    name = request.match_info["name"]
    if archive.is_configured_modality(name):
        raise web.HTTPBadRequest(text=f"modality {name!r} is defined in the configuration file; remove it there")
    if not await archive.delete_modality(name):
        raise ItemNotFound(f"no modality named {name!r}")
    return web.Response(text="", content_type="text/plain")


@routes.post("/modalities/{name}/echo")
async def echo(request: web.Request) -> web.Response:
    await json_body(request, empty={})   # Orthanc's options; a body that is not JSON is refused
    _, m = _modality(request)
    await _run(scu.echo, request.app[SETTINGS]["DicomAet"], m, _timeout(request))
    return json_response({})


_ORTHANC_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}")


def _resource_ids(body: Any) -> list[str]:
    if isinstance(body, str):   # IDs as plain text: a body that is not one is refused, as Orthanc
        ids = [x for x in body.split() if x]
        if not all(_ORTHANC_ID.fullmatch(x) for x in ids):
            raise BadRequestBody("send a resource ID, a list of IDs, or {\"Resources\": [...]}")
        return ids
    if isinstance(body, list):
        return [str(x) for x in body]
    if isinstance(body, dict):
        res = body.get("Resources", [])
        return [str(x) for x in (res if isinstance(res, list) else [res])]
    raise BadRequestBody("send a resource ID, a list of IDs, or {\"Resources\": [...]}")


@routes.post("/modalities/{name}/store")
async def store(request: web.Request) -> web.Response:
    archive = request.app[ARCHIVE]
    s = request.app[SETTINGS]
    _name, m = _modality(request)
    ids = _resource_ids(await _body_json(request, []))
    if not ids:
        raise web.HTTPBadRequest(text="no resource to send")
    files, missing = await archive.files_of_resources(ids)
    if missing:
        raise NotFound(f"unknown resource(s): {', '.join(missing)}")
    report = await _run(scu.store, s["DicomAet"], m, files, archive.read_stored, _timeout(request))
    return json_response({"Description": "REST API", "FailedInstancesCount": report.failed,
                          "InstancesCount": report.sent + report.failed, "LocalAet": s["DicomAet"],
                          "ParentResources": ids, "RemoteAet": m["AET"]})


_QUERY_LEVELS = {"patient": "PATIENT", "study": "STUDY", "series": "SERIES", "instance": "IMAGE", "image": "IMAGE"}


_TAG = re.compile(r"\(?([0-9A-Fa-f]{4})[,-]?([0-9A-Fa-f]{4})\)?")
_NOT_QUERYABLE = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UN"}


def query_items(query: dict) -> dict[str, str]:
    """A remote query's keys as keywords (a tag such as 0010,0020 is named by its keyword), each
    with a string as value (as Orthanc 1.10 requires: a number is refused, not guessed at); a 400
    that says which key is wrong otherwise."""
    out: dict[str, str] = {}
    for key, value in query.items():
        m = _TAG.fullmatch(key.strip())
        keyword = keyword_for_tag((int(m.group(1), 16) << 16) | int(m.group(2), 16)) if m else key.strip()
        if not keyword or keyword_dict.get(keyword) is None:
            raise BadRequestBody(f"unknown DICOM keyword or tag {key!r} in the query")
        if set(dictionary_VR(keyword).split(" or ")) & _NOT_QUERYABLE:   # "OB or OW" for PixelData
            raise BadRequestBody(f"{keyword} ({dictionary_VR(keyword)}) cannot be a query key")
        if not isinstance(value, str):
            raise BadRequestBody(f"the value of {key!r} in the query must be a string, "
                                 f"not {json.dumps(value)}")
        out[keyword] = value
    return out


# What a normalised query (Orthanc's "Normalize", true unless false is given) may ask at each level:
# the attributes of the DICOM modules of that level and the levels above it (PS3.3: Patient;
# General Study; General Series; SOP Common), the counts of the level and Specific Character Set;
# other keys are left out of the C-FIND, as Orthanc leaves them out (it logs each).
_MODULE_KEYS = {
    "PATIENT": ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientBirthTime", "OtherPatientIDs",
                "OtherPatientNames", "EthnicGroup", "PatientComments", "PatientSpeciesDescription",
                "PatientBreedDescription", "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization",
                "PatientIdentityRemoved", "DeidentificationMethod", "IssuerOfPatientID"],
    "STUDY": ["StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
              "StudyDescription", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy"],
    "SERIES": ["Modality", "SeriesInstanceUID", "SeriesNumber", "Laterality", "SeriesDate", "SeriesTime",
               "PerformingPhysicianName", "ProtocolName", "SeriesDescription", "OperatorsName", "BodyPartExamined",
               "PatientPosition", "SmallestPixelValueInSeries", "LargestPixelValueInSeries",
               "AnatomicalOrientationType", "PerformedProcedureStepID", "PerformedProcedureStepStartDate",
               "PerformedProcedureStepStartTime", "PerformedProcedureStepDescription",
               "CommentsOnThePerformedProcedureStep"],
    "IMAGE": ["SOPClassUID", "SOPInstanceUID", "SpecificCharacterSet", "InstanceCreationDate", "InstanceCreationTime",
              "InstanceCreatorUID", "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID",
              "TimezoneOffsetFromUTC", "InstanceNumber", "SOPInstanceStatus", "SOPAuthorizationDateTime",
              "SOPAuthorizationComment", "AuthorizationEquipmentCertificationNumber",
              "LongitudinalTemporalInformationModified"],
}
_LEVEL_COUNTS = {"PATIENT": ["NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                             "NumberOfPatientRelatedInstances"],
                 "STUDY": ["ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                           "SOPClassesInStudy"],
                 "SERIES": ["NumberOfSeriesRelatedInstances"], "IMAGE": []}
_LEVEL_ORDER = ["PATIENT", "STUDY", "SERIES", "IMAGE"]
# the keys every query asks for at each level (Orthanc adds them when absent), so answers can be retrieved
_DEFAULT_KEYS = {"PATIENT": ["PatientID"], "STUDY": ["AccessionNumber", "StudyInstanceUID"],
                 "SERIES": ["SeriesInstanceUID"], "IMAGE": ["SOPInstanceUID"]}


def allowed_keys(level: str) -> frozenset[str]:
    """The keys a normalised query of ``level`` keeps."""
    up_to = _LEVEL_ORDER[:_LEVEL_ORDER.index(level) + 1]
    return frozenset(k for lvl in up_to for k in _MODULE_KEYS[lvl]) | set(_LEVEL_COUNTS[level]) \
        | {"SpecificCharacterSet"}


def outgoing_query(level: str, items: dict[str, str], normalize: bool, manufacturer: str) -> dict[str, str]:
    """The C-FIND identifier sent for a modality query, as Orthanc 1.10 builds it: normalised
    (keys of other levels left out; a ``*`` blanked where the manufacturer cannot take it), then
    the level's default keys added when absent (``*`` for GE, empty otherwise), and Specific
    Character Set when not given (ISO_IR 100, Orthanc's default encoding, or UTF-8 when a value
    needs more)."""
    keys = dict(items)
    if normalize:
        allowed = allowed_keys(level)
        dropped = sorted(k for k in keys if k not in allowed)
        if dropped:
            log.warning("modality query at the %s level: %s left out (not a key of that level)",
                        level, ", ".join(dropped))
        keys = {k: v for k, v in keys.items() if k in allowed}
        for k, v in keys.items():
            if v == "*" and (manufacturer == "GenericNoUniversalWildcard" or
                             (manufacturer == "GenericNoWildcardInDates" and dictionary_VR(k) == "DA")):
                keys[k] = ""
    universal = "*" if manufacturer == "GE" else ""
    for lvl in _LEVEL_ORDER[:_LEVEL_ORDER.index(level) + 1]:
        for k in _DEFAULT_KEYS[lvl]:
            keys.setdefault(k, universal)
    if "SpecificCharacterSet" not in keys:
        latin1 = all(v.isascii() or _encodable(v, "latin-1") for v in keys.values())
        keys["SpecificCharacterSet"] = "ISO_IR 100" if latin1 else "ISO_IR 192"
    return keys


def _encodable(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


_INT_VRS = {"US", "SS", "UL", "SL", "UV", "SV"}
_FLOAT_VRS = {"FL", "FD"}


def element_value(keyword: str, value: str) -> Any:
    """A query value as the attribute's VR holds it: numbers for the binary VRs (US, FL, …; a
    ``\\``-list of them), the text checked for IS and DS; a 400 naming the key otherwise (the
    value would fail the C-FIND's encoding)."""
    vr = dictionary_VR(keyword).split(" or ")[0]
    binary = vr in _INT_VRS | _FLOAT_VRS | {"AT"}
    if value.strip() in ("", "*"):
        return None if binary else value       # universal: an empty element
    if not binary and vr not in ("IS", "DS"):
        return value
    if vr == "AT":
        raise BadRequestBody(f"{keyword} (AT) cannot be a query key with a value")
    parts = [p.strip() for p in value.split("\\")]
    number = int if vr in _INT_VRS | {"IS"} else float
    try:
        numbers = [number(p) for p in parts]
    except ValueError:
        kind = "whole numbers" if number is int else "numbers"
        raise BadRequestBody(f"{keyword} ({vr}) takes {kind}, not {value!r}") from None
    if vr in ("IS", "DS"):
        return value
    return numbers[0] if len(numbers) == 1 else numbers


def query_dataset(items: dict[str, str]) -> Dataset:
    """The query as a dataset (how /queries/{id}/query shows it, in Orthanc's tag formats)."""
    ds = Dataset()
    for k, v in items.items():
        ds.add_new(tag_for_keyword(k), dictionary_VR(k).split(" or ")[0], element_value(k, v))
    return ds


@routes.post("/modalities/{name}/query")
async def query(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]
    name, m = _modality(request)
    body = await _body_json(request, {})
    if not isinstance(body, dict) or "Level" not in body:   # Orthanc: a bad file format (15)
        raise BadRequestBody('expected {"Level": "Study", "Query": {...}}')
    level = _QUERY_LEVELS.get(str(body["Level"]).lower())
    if level is None:
        raise BadRequestBody(f"unknown level {body['Level']!r}: Patient, Study, Series or Instance", PARAMETER_OUT_OF_RANGE)
    q = body.get("Query", {})
    if not isinstance(q, dict):
        raise BadRequestBody("Query must be an object of tag: value")
    normalize = body.get("Normalize", True)
    if not isinstance(normalize, bool):
        raise BadRequestBody("Normalize must be true or false")
    items = query_items(q)
    keys = outgoing_query(level, items, normalize, m.get("Manufacturer", "Generic"))
    try:
        shown = query_dataset(items)
        keys = {k: element_value(k, v) for k, v in keys.items()}
    except BadRequestBody:      # what element_value says about a value: its own words
        raise
    except (ValueError, TypeError, OverflowError):
        raise BadRequestBody("a value of the query does not suit its attribute's "
                             "value representation") from None
    answers = await _run(scu.find, s["DicomAet"], m, level, keys, _timeout(request))
    store = request.app[QUERIES]
    qid = str(next(_query_ids))
    store[qid] = {"modality": name, "level": level, "query": shown, "answers": answers}
    while len(store) > MAX_QUERIES:
        store.popitem(last=False)
    return json_response({"ID": qid, "Path": f"/queries/{qid}"})


def _query(request: web.Request) -> tuple[str, dict]:
    qid = request.match_info["qid"]
    q = request.app[QUERIES].get(qid)
    if q is None:
        raise NotFound(f"no query {qid} (queries are kept for the last {MAX_QUERIES})")
    return qid, q


@routes.get("/queries")
async def list_queries(request: web.Request) -> web.Response:
    return json_response(list(request.app[QUERIES]))


@routes.get("/queries/{qid}")
async def query_routes(request: web.Request) -> web.Response:
    _query(request)
    return json_response(["answers", "level", "modality", "query", "retrieve"])


@routes.get("/queries/{qid}/answers")
async def query_answers(request: web.Request) -> web.Response:
    _, q = _query(request)
    if flag(request, "expand"):
        return json_response([dataset_to_json(a, _format(request)) for a in q["answers"]])
    return json_response([str(i) for i in range(len(q["answers"]))])


def _answer(request: web.Request):
    _, q = _query(request)
    n = request.match_info["n"]
    if not (n.isascii() and n.isdigit()) or int(n) >= len(q["answers"]):
        raise NotFound(f"no answer {n}")
    return q, q["answers"][int(n)]


@routes.get("/queries/{qid}/answers/{n}/content")
async def answer_content(request: web.Request) -> web.Response:
    _, a = _answer(request)
    return json_response(dataset_to_json(a, _format(request)))


@routes.get("/queries/{qid}/{what:level|modality|query}")
async def query_info(request: web.Request) -> web.Response:
    _, q = _query(request)
    what = request.match_info["what"]
    if what == "level":
        return web.Response(text={"IMAGE": "Instance"}.get(q["level"], q["level"].title()), content_type="text/plain")
    if what == "modality":
        return web.Response(text=q["modality"], content_type="text/plain")
    return json_response(dataset_to_json(q["query"], _format(request)))


def _format(request: web.Request) -> str:
    return "simplify" if flag(request, "simplify") else ("short" if flag(request, "short") else "full")


_UNIQUE = {"PATIENT": ["PatientID"], "STUDY": ["StudyInstanceUID"], "SERIES": ["StudyInstanceUID", "SeriesInstanceUID"],
           "IMAGE": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]}


async def _retrieve(request: web.Request, q: dict, answers: list) -> web.Response:
    s = request.app[SETTINGS]
    body = await _body_json(request, {})
    target = body if isinstance(body, str) else (body.get("TargetAet") if isinstance(body, dict) else None)
    target = ae_title(target or s["DicomAet"], "TargetAet")
    m = request.app[ARCHIVE].modalities().get(q["modality"])
    if m is None:
        raise NotFound(f"the modality {q['modality']!r} of this query is gone")
    level = q["level"]
    idents = [{k: str(a.get(k, "")) for k in _UNIQUE[level]} for a in answers]
    report = await _run(scu.move, s["DicomAet"], m, level, idents,
                        target, _timeout(request))
    return json_response({"Description": "REST API", "LocalAet": s["DicomAet"], "RemoteAet": m["AET"],
                          "TargetAet": target, "Query": [dict(i) for i in idents],
                          "CompletedSubOperations": report.completed, "FailedSubOperations": report.failed,
                          "WarningSubOperations": report.warning})


@routes.post("/queries/{qid}/answers/{n}/retrieve")
async def retrieve_answer(request: web.Request) -> web.Response:
    q, a = _answer(request)
    return await _retrieve(request, q, [a])


@routes.post("/queries/{qid}/retrieve")
async def retrieve_all(request: web.Request) -> web.Response:
    _, q = _query(request)
    return await _retrieve(request, q, q["answers"])


@routes.post("/modalities/{name}/move")
async def move(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]
    _, m = _modality(request)
    body = await _body_json(request, {})
    if not isinstance(body, dict) or "Level" not in body or "Resources" not in body:
        raise BadRequestBody('expected {"Level": ..., "Resources": [{"StudyInstanceUID": ...}], "TargetAet": ...}')
    level = _QUERY_LEVELS.get(str(body["Level"]).lower())
    if level is None:
        raise BadRequestBody(f"unknown level {body['Level']!r}", PARAMETER_OUT_OF_RANGE)
    resources = body["Resources"]
    if not isinstance(resources, list) or not all(
            isinstance(r, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in r.items())
            for r in resources):
        raise BadRequestBody('Resources must be a list of objects of keyword: string, such as '
                                      '[{"StudyInstanceUID": "1.2.3"}]')
    idents = [dict(r) for r in resources]
    for r in idents:
        unknown = [k for k in r if keyword_dict.get(k) is None]
        if unknown:
            raise BadRequestBody(f"unknown DICOM keyword {unknown[0]!r} in Resources")
    target = ae_title(body.get("TargetAet") or s["DicomAet"], "TargetAet")
    report = await _run(scu.move, s["DicomAet"], m, level, idents, target, _timeout(request))
    return json_response({"Description": "REST API", "LocalAet": s["DicomAet"], "RemoteAet": m["AET"],
                          "TargetAet": target, "CompletedSubOperations": report.completed,
                          "FailedSubOperations": report.failed})
