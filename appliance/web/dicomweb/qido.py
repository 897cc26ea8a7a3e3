"""QIDO-RS (PS3.18 10.6): searches for studies, series and instances.

Searches go through the archive's query engine (the same as C-FIND and /tools/find);
answers are DICOM JSON made by pydicom (``Dataset.to_json_dict``).
"""

from __future__ import annotations

from aiohttp import web
from pydicom.datadict import dictionary_VR

from ...archive import (
    INDEXED_TAGS,
    Archive,
    HeldBack,
    Level,
    answer_dataset,
    answers,
    build_query,
    matchable_only,
    parse_tag,
)
from .. import holdback
from ..access import is_student
from ..errors import BadRequestBody
from ..keys import ARCHIVE, SETTINGS
from ..resources import MAX_JSON_INTEGER
from .formatter import base_url, dicom_json, retrieve_url
from .negotiation import accepted_json
from .resolve import check_uid

routes = web.RouteTableDef()

RETRIEVE_URL = 0x00081190
INSTANCE_AVAILABILITY = 0x00080056

# What each level answers by default: PS3.18 Table 6.7.1-2, with the study's and the patient's
# attributes at the series level, and the series' too at the instance level, as Orthanc's DICOMweb
# plugin answers (Table 6.7.1-2a asks for them when the path names no study); all from the index.
_PATIENT_TAGS = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex"]
_STUDY_OWN = ["StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyInstanceUID", "StudyID",
              "TimezoneOffsetFromUTC"]
_SERIES_OWN = ["Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
               "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"]
_STUDY_TAGS = ["SpecificCharacterSet", *_STUDY_OWN, "InstanceAvailability", "ModalitiesInStudy", *_PATIENT_TAGS,
               "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
_SERIES_TAGS = ["SpecificCharacterSet", *_SERIES_OWN, "NumberOfSeriesRelatedInstances", *_STUDY_OWN, *_PATIENT_TAGS]
_INSTANCE_TAGS = ["SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "InstanceNumber",
                  "Rows", "Columns", "BitsAllocated", "NumberOfFrames", *_SERIES_OWN, *_STUDY_OWN, *_PATIENT_TAGS]
DEFAULT_TAGS = {Level.STUDY: _STUDY_TAGS, Level.SERIES: _SERIES_TAGS, Level.INSTANCE: _INSTANCE_TAGS}
_RESERVED = {"limit", "offset", "includefield", "fuzzymatching", "orderby"}


def _int(request: web.Request, name: str) -> int:
    v = request.query.get(name, "")
    if not v:
        return 0
    if not (v.isascii() and v.isdigit()) or int(v) > MAX_JSON_INTEGER:
        raise BadRequestBody(f"{name} must be a whole number from 0 to {MAX_JSON_INTEGER}, not {v!r}")
    return int(v)


async def qido(request: web.Request, level: Level, fixed: dict[str, str]) -> web.Response:
    """One search at ``level``; ``fixed`` holds the UIDs the path gives."""
    archive: Archive = request.app[ARCHIVE]
    accepted_json(request)
    for key, uid in fixed.items():
        check_uid(key.removesuffix("InstanceUID").lower(), uid)
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
        for lvl in Level:
            if lvl <= level:
                wanted += [t for t, _ in INDEXED_TAGS[lvl] if t not in wanted]
    q, ignored = matchable_only(build_query(level, items, case_sensitive=True,
                                            pn_case_sensitive=request.app[SETTINGS]["CaseSensitivePN"]))
    q.students = is_student(request)
    limit = _int(request, "limit") or request.app[SETTINGS]["LimitFindResults"]
    found = await answers(archive, q, wanted, limit=limit, offset=_int(request, "offset"))
    held = holdback.held_for(request)
    if held is not None:   # a student while a teaching session holds unknown cases back
        found = held_back_answers(found, level, held, list(zip(query_tags, items.values(), strict=True)))
    base = base_url(request)
    with_vr = [(t, _vr(t)) for t in wanted if t != 0x00080005]
    out = []
    for values in found:
        # an attribute the instance does not have is left out, not answered empty (as Orthanc's
        # plugin does); one it has empty is answered empty
        present = [(t, vr) for t, vr in with_vr if t in values or t == INSTANCE_AVAILABILITY]
        ds = answer_dataset(None, present, values, "ISO_IR 192", request.app[SETTINGS]["DicomAet"])
        ds.add_new(RETRIEVE_URL, "UR", retrieve_url(base, values, level))
        out.append(ds.to_json_dict())
    resp = dicom_json(out)
    # PS3.18 8.3.4: what the search could not honour is said in Warning headers, not refused
    if ignored:
        resp.headers.add("Warning", f"299 {base}: The following attributes are not supported for matching: "
                                    + ",".join(f"{t:08X}" for t in ignored))
    if request.query.get("fuzzymatching", "").lower() == "true":
        resp.headers.add("Warning", f"299 {base}: The fuzzymatching parameter is not supported. "
                                    "Only literal matching has been performed.")
    return resp


def held_back_answers(found: list[dict[int, str]], level: Level, held: HeldBack,
                      constraints: list[tuple[int, str]]) -> list[dict[int, str]]:
    """A student's answers while unknown cases are held back: the held-back attributes of their studies
    left out; those studies not found at all by a search that matches on held-back text."""
    drop = holdback.matches_on_held_back(constraints)
    out = []
    for values in found:
        if holdback.held_answer(values, level, held):
            if drop:
                continue
            values = holdback.redact_values(values)
        out.append(values)
    return out


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
