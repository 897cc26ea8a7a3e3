"""Unknown cases in a teaching session, enforced by the server (issue 21, README "Unknown cases in a
session"): while a session holds a case unrevealed, a student's REST JSON, tag routes, DICOMweb,
WADO-URI, stack document, case document and C-FIND answers carry none of its answer, and its files
are refused (HTTP and C-GET); the teacher sees everything at the same time; the reveal, the end of
the session, and AllowRetrieve each lift what they should.

Each hidden value is checked present for the teacher (and for the student after the reveal) in the
same answer where it is checked absent for the student, so no check passes by finding nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from appliance.archive import HELD_BACK_TAGS, HeldBack, Level
from appliance.teaching.holdback_tags import (
    RETRIEVE_REFUSED,
    RETRIEVE_REFUSED_DIMSE,
    held_answer,
    matches_on_held_back,
    redact_dataset,
    redact_dicom_json,
    redact_values,
)
from appliance.web.holdback import main_tags_json, redact_stack_body

from .helpers import dcmtk, free_port
from .session_fixtures import (
    DIAGNOSIS,
    FINDINGS,
    SERIES_DESCRIPTION,
    STUDY_DESCRIPTION,
    TITLE,
    Classroom,
    make_classroom,
    phantom_files,
    session_body,
)
from .test_qr import StoreSCP

PATIENT_NAME = "Anon^Session"          # session_fixtures.phantom_files' patient: a case's name is its title
HIDDEN = (STUDY_DESCRIPTION, SERIES_DESCRIPTION, PATIENT_NAME)
TEACHER_AET = "TEACHWS"
SLICES = 24                             # > session_fixtures.KEY_IMAGE (20)


# ------------------------------------------------------------------ the plain functions

def _held() -> HeldBack:
    return HeldBack(cases=frozenset({"c1"}), studies=frozenset({"st1"}), study_uids=frozenset({"1.2.3"}),
                    patients=frozenset({"pa1"}), no_retrieve=frozenset({"st1"}))


def test_redact_dataset_takes_held_back_text_out_at_every_depth() -> None:
    ds = Dataset()
    ds.StudyDescription = "CT PNEUMONIA"
    ds.SeriesDescription = "lung"
    ds.PatientName = "Case^Title"
    ds.ImageComments = "RLL consolidation"
    ds.Modality = "CT"
    item = Dataset()
    item.RequestedProcedureDescription = "pneumonia follow-up"
    item.AccessionNumber = "A1"
    ds.RequestAttributesSequence = [item]     # itself held back: gone whole
    other = Dataset()
    other.SeriesDescription = "nested"
    other.SeriesInstanceUID = "1.2.3.4"
    ds.ReferencedSeriesSequence = [other]     # kept, its held-back item attribute gone
    assert redact_dataset(ds) == 6
    assert [e.keyword for e in ds] == ["Modality", "ReferencedSeriesSequence"]
    assert [e.keyword for e in ds.ReferencedSeriesSequence[0]] == ["SeriesInstanceUID"]


def test_redact_dicom_json_copies_and_leaves_the_original_whole() -> None:
    original = {"0008103E": {"vr": "LO", "Value": ["lung"]}, "00080060": {"vr": "CS", "Value": ["CT"]},
                "00081115": {"vr": "SQ", "Value": [{"0008103E": {"vr": "LO", "Value": ["x"]},
                                                    "0020000E": {"vr": "UI", "Value": ["1.2"]}}]}}
    kept = json.dumps(original)
    out = redact_dicom_json([original])
    assert out == [{"00080060": {"vr": "CS", "Value": ["CT"]},
                    "00081115": {"vr": "SQ", "Value": [{"0020000E": {"vr": "UI", "Value": ["1.2"]}}]}}]
    assert json.dumps(original) == kept


def test_query_answers_and_matching() -> None:
    study_description, modality, uid = 0x00081030, 0x00080060, 0x0020000D
    assert study_description in HELD_BACK_TAGS and modality not in HELD_BACK_TAGS
    assert redact_values({study_description: "x", modality: "CT"}) == {modality: "CT"}
    assert matches_on_held_back([(study_description, "*PNEUMO*")])
    assert not matches_on_held_back([(study_description, "*"), (study_description, ""), (modality, "CT")])
    held = _held()
    assert held_answer({uid: "1.2.3"}, Level.STUDY, held)
    assert not held_answer({uid: "1.2.4"}, Level.SERIES, held)
    assert not held_answer({}, Level.INSTANCE, held)
    from appliance.archive import public_ids
    pid = public_ids("P1", "", "", "")[0]
    assert held_answer({0x00100020: "P1"}, Level.PATIENT, HeldBack(**{**held.__dict__, "patients": frozenset({pid})}))
    assert not held_answer({0x00100020: "P2"}, Level.PATIENT, HeldBack(**{**held.__dict__, "patients": frozenset({pid})}))
    assert len(RETRIEVE_REFUSED_DIMSE) <= 64


def test_one_list_holds_the_images_text_the_documents_and_the_boards_key_objects() -> None:
    """HELD_BACK_TAGS is the one constant every redaction uses: the study's own attributes (review 21
    item 4 added the scheduling, visit and procedure text), documents' content, the board's KOS/GSPS text."""
    from pydicom.datadict import tag_for_keyword

    import appliance.teaching.holdback_tags as tags_module
    for keyword in ("ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence",
                    "RequestedProcedureCodeSequence", "SeriesDescriptionCodeSequence",
                    "CommentsOnThePerformedProcedureStep", "PerformedProcedureTypeDescription",
                    "ReasonForPerformedProcedureCodeSequence", "ReasonForVisit", "ReasonForVisitCodeSequence",
                    "VisitComments", "ClinicalTrialTimePointDescription", "EncapsulatedDocument", "DocumentTitle",
                    "ContentSequence", "ConceptCodeSequence", "TextValue", "UnformattedTextValue",
                    "GraphicAnnotationSequence"):
        assert tag_for_keyword(keyword) in HELD_BACK_TAGS, keyword
    assert not hasattr(tags_module, "REDACTED_TAGS") and not hasattr(tags_module, "EXPORT_TEXT_TAGS")
    ds = Dataset()
    ds.ScheduledProcedureStepDescription = "CT chest for pneumothorax"
    ds.TextValue = "Pneumothorax"
    ds.Modality = "CT"
    assert redact_dataset(ds) == 2 and [e.keyword for e in ds] == ["Modality"]


def test_main_tags_keep_orthanc_keys_and_the_stack_document_its_fields() -> None:
    assert main_tags_json({"StudyDescription": "CT PNEUMONIA", "StudyDate": "20260101", "PatientName": "A^B"}) == \
        {"StudyDescription": "", "StudyDate": "20260101", "PatientName": ""}
    body = zlib.compress(json.dumps({"StudyDescription": "a", "SeriesDescription": "b", "PatientName": "c",
                                     "Modality": "CT", "Frames": [1]}).encode())
    assert json.loads(zlib.decompress(redact_stack_body(body))) == \
        {"StudyDescription": "", "SeriesDescription": "", "PatientName": "", "Modality": "CT", "Frames": [1]}


async def test_a_redacted_copy_is_made_from_the_full_answer_even_with_one_worker_slot() -> None:
    """The copy's make must not wait for the full answer's make: with one slot that waits for ever."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from appliance.web.classcache import CLASS_CACHE, ClassCache
    from appliance.web.holdback import redacted_cached

    app = web.Application()
    app[CLASS_CACHE] = cache = ClassCache(2**20, workers=1)
    request = make_mocked_request("GET", "/", app=app)
    made = []

    async def make_full() -> bytes:
        made.append("full")
        return b"StudyDescription"

    def full():
        return cache.get_or_make("k", make_full)
    two = [redacted_cached(request, "k", full, lambda b: b.replace(b"Study", b"").lower(), ()) for _ in range(2)]
    assert await asyncio.wait_for(asyncio.gather(*two), 60) == [b"description", b"description"]
    assert made == ["full"] and cache.peek("k") == b"StudyDescription"     # the full answer kept as it is


# ------------------------------------------------------------------ a real board

@pytest.fixture
def room(make_server, tmp_path: Path) -> Classroom:
    teacher_port = free_port()
    r = make_classroom(make_server, slices=SLICES, size=128, ClassroomMode=True,
                       DicomModalities={"ws": [TEACHER_AET, "127.0.0.1", teacher_port]})
    r.uids = r.teacher_json("GET", f"/instances/{r.instances[3]}/simplified-tags")
    return r


def _student(room: Classroom, method: str, path: str, body=None, headers=None):
    return room.srv.request(method, path, body, headers=headers or {})


def views(room: Classroom) -> dict[str, tuple[str, str, str | None, dict | None]]:
    """name -> (method, path, body, headers) of every answer that tells DICOM text of the case's study."""
    st, se, inst = room.study, room.series, room.instances[3]
    suid, seuid, sop = (room.uids[k] for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    patient = room.teacher_json("GET", f"/studies/{st}")["ParentPatient"]
    find = {"Level": "Study", "Query": {}, "Expand": True}
    get = {
        "patient": f"/patients/{patient}", "patients?expand": "/patients?expand", "study": f"/studies/{st}",
        "studies?expand": "/studies?expand", "series": f"/series/{se}",
        "study/series": f"/studies/{st}/series", "series/study": f"/series/{se}/study",
        "patient/studies": f"/patients/{patient}/studies", "instance/series": f"/instances/{inst}/series",
        "tags": f"/instances/{inst}/tags", "tags?short": f"/instances/{inst}/tags?short",
        "tags?simplify": f"/instances/{inst}/tags?simplify", "simplified-tags": f"/instances/{inst}/simplified-tags",
        "shared-tags": f"/series/{se}/shared-tags", "study shared-tags": f"/studies/{st}/shared-tags?simplify",
        "instances-tags": f"/series/{se}/instances-tags?simplify", "study module": f"/studies/{st}/module",
        "series module": f"/series/{se}/module", "module-patient": f"/studies/{st}/module-patient",
        "patient module": f"/patients/{patient}/module",
        "qido studies": "/dicom-web/studies", "qido series": f"/dicom-web/studies/{suid}/series",
        "qido instances": f"/dicom-web/instances?includefield=all&StudyInstanceUID={suid}",
        "study metadata": f"/dicom-web/studies/{suid}/metadata",
        "series metadata": f"/dicom-web/studies/{suid}/series/{seuid}/metadata",
        "instance metadata": f"/dicom-web/studies/{suid}/series/{seuid}/instances/{sop}/metadata",
        "stack": f"/pipacs/series/{se}/stack",
    }
    out = {name: ("GET", path, None, None) for name, path in get.items()}
    out["dicom+json"] = ("GET", f"/instances/{inst}/file", None, {"Accept": "application/dicom+json"})
    for level in ("Patient", "Study", "Series"):     # an instance's MainDicomTags hold none of HIDDEN
        out[f"find {level}"] = ("POST", "/tools/find", json.dumps({**find, "Level": level}), None)
    return out


def _text(r) -> str:
    body = r.body
    if r.headers.get("Content-Encoding") == "deflate":
        body = zlib.decompress(body)
    return body.decode("utf-8", "replace")


def teacher_sees(room: Classroom) -> dict[str, set[str]]:
    """Which hidden values each answer carries for the teacher (every answer carries at least one)."""
    seen = {}
    for name, (method, path, body, headers) in views(room).items():
        r = room.teacher(method, path, body, headers)
        assert r.status == 200, (name, r.status, r.body[:300])
        seen[name] = {h for h in HIDDEN if h in _text(r)}
        assert seen[name], f"{name}: the teacher's answer has none of {HIDDEN}: the check could not fail"
    return seen


def student_sees(room: Classroom) -> dict[str, set[str]]:
    seen = {}
    for name, (method, path, body, headers) in views(room).items():
        r = _student(room, method, path, body, headers)
        assert r.status == 200, (name, r.status, r.body[:300])
        seen[name] = {h for h in HIDDEN if h in _text(r)}
    return seen


def start_session(room: Classroom, allow_retrieve: bool = False, start: bool = True) -> dict:
    body = session_body(room.case["ID"])
    body["Cases"][0]["AllowRetrieve"] = allow_retrieve
    doc = room.teacher_json("POST", "/sessions", body)
    if start:
        doc = room.teacher_json("POST", f"/sessions/{doc['ID']}/start")
    return doc


def test_before_the_reveal_a_student_is_told_no_dicom_text_and_after_it_all(room) -> None:
    before = teacher_sees(room)
    assert student_sees(room) == before     # no session: the student sees what the teacher sees
    session = start_session(room)
    hidden = student_sees(room)
    assert hidden == {name: set() for name in before}, hidden
    assert teacher_sees(room) == before     # the teacher, at the same time: everything
    # MainDicomTags keep Orthanc's keys, emptied
    study = _student(room, "GET", f"/studies/{room.study}").json()
    assert study["MainDicomTags"]["StudyDescription"] == "" and study["PatientMainDicomTags"]["PatientName"] == ""
    assert study["MainDicomTags"]["StudyInstanceUID"] == room.uids["StudyInstanceUID"]
    # one held-back element by its address: as absent as in the metadata
    assert _student(room, "GET", f"/instances/{room.instances[3]}/content/0008-1030").status == 404
    assert room.teacher("GET", f"/instances/{room.instances[3]}/content/0008-1030").status == 200
    suid, seuid, sop = (room.uids[k] for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    bulk = f"/dicom-web/studies/{suid}/series/{seuid}/instances/{sop}/bulk/00081030"
    assert _student(room, "GET", bulk).status == 404 and room.teacher("GET", bulk).status == 200
    room.teacher_json("POST", f"/sessions/{session['ID']}/cases/0/reveal")
    assert student_sees(room) == before
    assert _student(room, "GET", bulk).status == 200


def test_the_case_document_and_its_key_image_before_and_after_the_reveal(room) -> None:
    case = f"/cases/{room.case['ID']}"
    picture = f"{case}/key-images/0/rendered"
    teacher_picture = room.teacher("GET", picture).body
    assert _student(room, "GET", picture).body == teacher_picture
    session = start_session(room)
    doc = _student(room, "GET", case).json()
    assert doc["HeldBack"] is True and doc["Title"] == "Unknown case"
    text = json.dumps(doc)
    for hidden in (FINDINGS, DIAGNOSIS, TITLE, "the consolidation", "ellipse"):
        assert hidden not in text
    assert doc["History"] == "Fever and cough for five days."     # what the quiz shows stays
    teacher = room.teacher_json("GET", case)
    assert teacher["Findings"] == FINDINGS and "HeldBack" not in teacher
    drawn = _student(room, "GET", picture)
    assert drawn.status == 200 and drawn.body != teacher_picture      # no ellipse drawn
    assert room.teacher("GET", picture).body == teacher_picture
    listed = _student(room, "GET", "/cases?expand").json()
    assert [c["Title"] for c in listed] == ["Unknown case"]
    room.teacher_json("POST", f"/sessions/{session['ID']}/cases/0/reveal")
    doc = _student(room, "GET", case).json()
    assert doc["Findings"] == FINDINGS and doc["Title"] == TITLE and "HeldBack" not in doc
    assert _student(room, "GET", picture).body == teacher_picture


def downloads(room: Classroom) -> dict[str, tuple[str, dict | None]]:
    suid = room.uids["StudyInstanceUID"]
    seuid, sop = room.uids["SeriesInstanceUID"], room.uids["SOPInstanceUID"]
    inst = room.instances[3]
    wado_uri = (f"/wado?requestType=WADO&studyUID={suid}&seriesUID={seuid}&objectUID={sop}"
                "&contentType=application/dicom")
    return {
        "file": (f"/instances/{inst}/file", None),
        "wado-uri dicom": (wado_uri, None),
        "wado-rs study": (f"/dicom-web/studies/{suid}", {"Accept": 'multipart/related; type="application/dicom"'}),
        "wado-rs series": (f"/dicom-web/studies/{suid}/series/{seuid}",
                           {"Accept": 'multipart/related; type="application/dicom"'}),
        "wado-rs instance": (f"/dicom-web/studies/{suid}/series/{seuid}/instances/{sop}",
                             {"Accept": 'multipart/related; type="application/dicom"'}),
        "study archive": (f"/studies/{room.study}/archive", None),
        "series media": (f"/series/{room.series}/media", None),
    }


CASE_FILES = ("bundle", "key-object", "presentation-states")
PIXELS = ("/instances/{i}/preview", "/instances/{i}/frames/0/rendered", "/pipacs/instances/{i}/frames/0/pixels")


def _refused(r) -> bool:
    return r.status == 403 and r.json()["Message"] == RETRIEVE_REFUSED


@pytest.mark.parametrize("allow_retrieve", [False, True])
def test_files_are_refused_until_the_reveal_unless_the_teacher_allows_retrieving(room, allow_retrieve) -> None:
    for name, (path, headers) in downloads(room).items():
        assert _student(room, "GET", path, headers=headers).status == 200, name
    session = start_session(room, allow_retrieve=allow_retrieve)
    for name, (path, headers) in downloads(room).items():
        r = _student(room, "GET", path, headers=headers)
        if allow_retrieve:
            assert r.status == 200, (name, r.status)
        else:
            assert _refused(r), (name, r.status, r.body[:200])
        assert room.teacher("GET", path, headers=headers).status == 200, name
    archive_many = _student(room, "POST", "/tools/create-archive", json.dumps({"Resources": [room.study]}))
    assert archive_many.status == (200 if allow_retrieve else 403)
    for what in CASE_FILES:      # the case's answer is in them: refused whatever AllowRetrieve says
        r = _student(room, "GET", f"/cases/{room.case['ID']}/{what}")
        assert r.status == 403 and "after the teacher reveals it" in r.json()["Message"], (what, r.status)
        assert room.teacher("GET", f"/cases/{room.case['ID']}/{what}").status == 200
    for pixels in PIXELS:        # the images are the quiz
        assert _student(room, "GET", pixels.format(i=room.instances[3])).status == 200, pixels
    # AllowRetrieve lets the files through, never the text of the JSON answers
    tags = _student(room, "GET", f"/instances/{room.instances[3]}/tags?simplify").json()
    assert "StudyDescription" not in tags and "SeriesDescription" not in tags
    room.teacher_json("POST", f"/sessions/{session['ID']}/cases/0/reveal")
    for name, (path, headers) in downloads(room).items():
        assert _student(room, "GET", path, headers=headers).status == 200, name
    for what in CASE_FILES:
        assert _student(room, "GET", f"/cases/{room.case['ID']}/{what}").status == 200, what


def test_a_ready_session_holds_back_and_ending_it_lifts_everything(room) -> None:
    before = teacher_sees(room)
    session = start_session(room, start=False)       # ready: the teacher prepares, students must not read ahead
    assert student_sees(room) == {name: set() for name in before}
    assert _refused(_student(room, "GET", f"/instances/{room.instances[3]}/file"))
    room.teacher_json("POST", f"/sessions/{session['ID']}/end")
    assert student_sees(room) == before
    assert _student(room, "GET", f"/instances/{room.instances[3]}/file").status == 200
    assert _student(room, "GET", f"/cases/{room.case['ID']}").json()["Findings"] == FINDINGS


def test_a_known_mode_session_holds_nothing_back(room) -> None:
    before = teacher_sees(room)
    doc = room.teacher_json("POST", "/sessions", session_body(room.case["ID"], mode="known"))
    room.teacher_json("POST", f"/sessions/{doc['ID']}/start")
    assert student_sees(room) == before
    assert _student(room, "GET", f"/instances/{room.instances[3]}/file").status == 200


def test_a_search_on_held_back_text_does_not_find_the_unknown_case(room) -> None:
    qido = "/dicom-web/studies?StudyDescription=*PNEUMONIA*"
    find = json.dumps({"Level": "Series", "Query": {"SeriesDescription": "*pneumonia*"}})
    by_label = json.dumps({"Level": "Study", "Query": {}, "Labels": ["pneumonia"]})
    assert room.teacher("PUT", f"/studies/{room.study}/labels/pneumonia", "").status == 200
    assert len(room.teacher_json("GET", qido)) == 1 and len(_student(room, "GET", qido).json()) == 1
    assert len(room.teacher_json("POST", "/tools/find", find)) == 1
    assert _student(room, "POST", "/tools/find", by_label).json() == [room.study]
    assert _student(room, "GET", f"/studies/{room.study}").json()["Labels"] == ["pneumonia"]
    session = start_session(room)
    assert _student(room, "GET", qido).json() == []
    assert _student(room, "POST", "/tools/find", find).json() == []
    assert len(room.teacher_json("GET", qido)) == 1 and len(room.teacher_json("POST", "/tools/find", find)) == 1
    # a label may name the answer as a collection may: not shown, not found by
    assert _student(room, "POST", "/tools/find", by_label).json() == []
    assert _student(room, "GET", f"/studies/{room.study}").json()["Labels"] == []
    assert _student(room, "GET", f"/studies/{room.study}/labels").json() == []
    assert _student(room, "GET", f"/studies/{room.study}/labels/pneumonia").status == 404
    assert room.teacher_json("GET", f"/studies/{room.study}/labels") == ["pneumonia"]
    assert room.teacher_json("POST", "/tools/find", by_label) == [room.study]
    # a search that does not select on held-back text finds it (its text left out)
    found = _student(room, "GET", "/dicom-web/studies?StudyDescription=*").json()
    assert len(found) == 1 and "00081030" not in found[0]
    room.teacher_json("POST", f"/sessions/{session['ID']}/cases/0/reveal")
    assert len(_student(room, "GET", qido).json()) == 1
    assert _student(room, "POST", "/tools/find", by_label).json() == [room.study]
    assert _student(room, "GET", f"/studies/{room.study}/labels").json() == ["pneumonia"]


# ------------------------------------------------------------------ DICOM: C-FIND and C-GET

def findscu(room: Classroom, aet: str, *keys: str) -> str:
    r = subprocess.run([dcmtk("findscu"), "-aet", aet, "-aec", "PIPACS", "-S", "-k", "QueryRetrieveLevel=SERIES",
                        "-k", f"StudyInstanceUID={room.uids['StudyInstanceUID']}", "-k", "SeriesInstanceUID",
                        "-k", "StudyDescription", "-k", "SeriesDescription", "-k", "PatientName",
                        *[a for k in keys for a in ("-k", k)], "127.0.0.1", str(room.srv.dicom_port)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


def c_get(room: Classroom, aet: str) -> tuple[int, str, int]:
    """(final status, its Error Comment, instances received) of a study-level C-GET by pynetdicom."""
    received = []
    ae = AE(ae_title=aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)

    def on_store(event):
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000
    assoc = ae.associate("127.0.0.1", room.srv.dicom_port, ae_title="PIPACS",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)], evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = room.uids["StudyInstanceUID"]
    last = [s for s, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)][-1]
    assoc.release()
    return int(last.Status), str(last.get("ErrorComment", "")), len(received)


def c_find_count(room: Classroom, aet: str, **keys: str) -> int:
    ae = AE(ae_title=aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", room.srv.dicom_port, ae_title="PIPACS")
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    for k, v in keys.items():
        setattr(ident, k, v)
    n = sum(1 for s, i in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind)
            if s and s.Status in (0xFF00, 0xFF01))
    assoc.release()
    return n


def patient_names(room: Classroom, aet: str) -> list[str]:
    """PatientName of every patient a Patient Root C-FIND answers."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", room.srv.dicom_port, ae_title="PIPACS")
    ident = Dataset()
    ident.QueryRetrieveLevel = "PATIENT"
    ident.PatientID = ""
    ident.PatientName = ""
    names = [str(i.PatientName) for s, i in assoc.send_c_find(ident, PatientRootQueryRetrieveInformationModelFind)
             if s and s.Status in (0xFF00, 0xFF01)]
    assoc.release()
    return names


def test_dicom_find_and_get_hold_back_for_students(room) -> None:
    assert all(h in findscu(room, "IPAD01") for h in HIDDEN)
    session = start_session(room)
    student = findscu(room, "IPAD01")
    assert room.uids["SeriesInstanceUID"] in student          # found, its text empty
    assert not [h for h in HIDDEN if h in student], student
    teacher = findscu(room, TEACHER_AET)
    assert all(h in teacher for h in HIDDEN), teacher
    assert c_find_count(room, "IPAD01", StudyDescription="*PNEUMONIA*") == 0
    assert c_find_count(room, TEACHER_AET, StudyDescription="*PNEUMONIA*") == 1
    assert c_find_count(room, "IPAD01", StudyDescription="") == 1
    assert patient_names(room, "IPAD01") == [""] and patient_names(room, TEACHER_AET) == [PATIENT_NAME]
    status, comment, got = c_get(room, "IPAD01")
    assert (status, comment, got) == (0x0124, RETRIEVE_REFUSED_DIMSE, 0)
    status, _, got = c_get(room, TEACHER_AET)
    assert (status, got) == (0x0000, SLICES)
    room.teacher_json("POST", f"/sessions/{session['ID']}/cases/0/reveal")
    assert all(h in findscu(room, "IPAD01") for h in HIDDEN)
    assert c_find_count(room, "IPAD01", StudyDescription="*PNEUMONIA*") == 1
    assert patient_names(room, "IPAD01") == [PATIENT_NAME]
    status, _, got = c_get(room, "IPAD01")
    assert (status, got) == (0x0000, SLICES)


def test_getscu_of_a_held_back_study_brings_nothing(room, tmp_path: Path) -> None:
    start_session(room)
    got = tmp_path / "got"
    got.mkdir()
    r = subprocess.run([dcmtk("getscu"), "-v", "-aet", "IPAD01", "-aec", "PIPACS", "-S", "-od", str(got), "-k",
                        "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={room.uids['StudyInstanceUID']}",
                        "127.0.0.1", str(room.srv.dicom_port)], capture_output=True, text=True, timeout=60)
    assert not list(got.iterdir())
    assert "status is: Unknown Status: 0x124" in r.stdout + r.stderr, r.stderr    # 0124 refused: not authorized
    mine = tmp_path / "mine"
    mine.mkdir()
    subprocess.run([dcmtk("getscu"), "-aet", TEACHER_AET, "-aec", "PIPACS", "-S", "-od", str(mine), "-k",
                    "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={room.uids['StudyInstanceUID']}",
                    "127.0.0.1", str(room.srv.dicom_port)], capture_output=True, text=True, timeout=60)
    files = list(mine.iterdir())
    assert len(files) == SLICES and pydicom.dcmread(io.BytesIO(files[0].read_bytes())).StudyDescription == \
        STUDY_DESCRIPTION


def test_the_boards_stored_key_objects_tell_a_student_nothing_either(room) -> None:
    """The KOS names the case's title, the GSPS writes the key image's caption: both are instances of the
    case's study once stored (POST /cases/{id}/store-key-objects)."""
    stored = room.teacher_json("POST", f"/cases/{room.case['ID']}/store-key-objects")
    kos, gsps = stored["KeyObjects"][0], stored["PresentationStates"][0]
    told = {kos: TITLE, gsps: "the consolidation"}
    for inst, text in told.items():
        assert text in room.teacher("GET", f"/instances/{inst}/tags").body.decode()
        assert text in _student(room, "GET", f"/instances/{inst}/tags").body.decode()
    session = start_session(room)
    for inst, text in told.items():
        for path in (f"/instances/{inst}/tags", f"/instances/{inst}/simplified-tags"):
            r = _student(room, "GET", path)
            assert r.status == 200 and text not in r.body.decode(), path
        assert text in room.teacher("GET", f"/instances/{inst}/tags").body.decode()
    suid = room.uids["StudyInstanceUID"]
    metadata = _student(room, "GET", f"/dicom-web/studies/{suid}/metadata").body.decode()
    assert TITLE not in metadata and "the consolidation" not in metadata
    metadata = room.teacher("GET", f"/dicom-web/studies/{suid}/metadata").body.decode()
    assert TITLE in metadata and "the consolidation" in metadata
    room.teacher_json("POST", f"/sessions/{session['ID']}/cases/0/reveal")
    for inst, text in told.items():
        assert text in _student(room, "GET", f"/instances/{inst}/tags").body.decode()


def test_a_seated_student_is_held_back_too(make_server) -> None:
    """StudentAccess off: the join code's seat is what makes a student (access.identify)."""
    room = make_classroom(make_server, slices=SLICES, student_access="off", name="seated")
    session = start_session(room)
    student = room.student()
    assert student.request("GET", f"/studies/{room.study}").status == 401     # no seat: nobody
    student.join(session["Code"], "Ana")
    study = student.json("GET", f"/studies/{room.study}")
    assert study["MainDicomTags"]["StudyDescription"] == ""
    assert room.teacher_json("GET", f"/studies/{room.study}")["MainDicomTags"]["StudyDescription"] == \
        STUDY_DESCRIPTION
    assert student.request("GET", f"/instances/{room.instances[3]}/file").status == 403
    assert student.json("GET", f"/cases/{room.case['ID']}")["HeldBack"] is True
    room.teacher_json("POST", f"/sessions/{session['ID']}/cases/0/reveal")
    assert student.json("GET", f"/studies/{room.study}")["MainDicomTags"]["StudyDescription"] == STUDY_DESCRIPTION


def test_a_students_c_move_leaves_the_held_back_study_out(make_server, tmp_path: Path) -> None:
    device = StoreSCP(tmp_path / "ipad", aet="IPAD01")     # the student's own device (ClassroomMovePort)
    try:
        room = make_classroom(make_server, slices=SLICES, ClassroomMode=True, ClassroomMovePort=device.port,
                              name="mover")
        suid = room.teacher_json("GET", f"/studies/{room.study}")["MainDicomTags"]["StudyInstanceUID"]
        session = start_session(room)

        def move() -> tuple[int, str]:
            ae = AE(ae_title="IPAD01")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = ae.associate("127.0.0.1", room.srv.dicom_port, ae_title="PIPACS")
            ident = Dataset()
            ident.QueryRetrieveLevel = "STUDY"
            ident.StudyInstanceUID = suid
            last = [s for s, _ in assoc.send_c_move(ident, "IPAD01", StudyRootQueryRetrieveInformationModelMove)][-1]
            assoc.release()
            return int(last.Status), str(last.get("ErrorComment", ""))
        assert move() == (0x0124, RETRIEVE_REFUSED_DIMSE)
        assert device.files() == []
        room.teacher_json("POST", f"/sessions/{session['ID']}/cases/0/reveal")
        assert move() == (0x0000, "")
        assert len(device.files()) == SLICES
    finally:
        device.stop()


def test_another_study_of_the_unknown_cases_patient_is_held_back_with_it(room, tmp_path: Path) -> None:
    """The patient's name is the case's title, and a prior study's description may say the answer."""
    prior = [room.teacher("POST", "/instances", data).json()
             for data in phantom_files(tmp_path, slices=2, size=16, study="prior")]
    study, inst = prior[0]["ParentStudy"], prior[0]["ID"]
    assert study != room.study
    assert room.teacher("PUT", f"/studies/{study}/released", "1").status == 200
    shown = _student(room, "GET", f"/studies/{study}").json()
    assert shown["PatientMainDicomTags"]["PatientName"] == PATIENT_NAME
    start_session(room)
    for who, told in ((_student, False), (lambda room, m, p: room.teacher(m, p), True)):
        doc = who(room, "GET", f"/studies/{study}").json()
        assert (doc["PatientMainDicomTags"]["PatientName"] == PATIENT_NAME) is told
        assert (doc["MainDicomTags"]["StudyDescription"] == STUDY_DESCRIPTION) is told
        tags = who(room, "GET", f"/instances/{inst}/tags?simplify").json()
        assert ("PatientName" in tags and "StudyDescription" in tags) is told
        qido = who(room, "GET", f"/dicom-web/studies?StudyInstanceUID={tags['StudyInstanceUID']}").json()
        assert ("00100010" in qido[0]) is told


# ------------------------------------------------------------------ documents in the held-back study

REPORT_TEXT = b"Impression: right tension pneumothorax"
REPORT_TITLE = "CT report: pneumothorax"    # the tag routes show a PDF's title (its bytes are binary)
SR_FINDING = "Pneumothorax"


def _document(room: Classroom, sop_class: str, modality: str, number: int) -> Dataset:
    """A new instance of the case's study (its patient, study and UIDs), of a document SOP class."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    ds = Dataset()
    for k in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyID", "AccessionNumber"):
        if k in room.uids:
            setattr(ds, k, room.uids[k])
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, number, 1
    ds.PatientIdentityRemoved = "YES"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _store(room: Classroom, ds: Dataset) -> str:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = room.teacher("POST", "/instances", buf.getvalue(), {"Content-Type": "application/dicom"})
    assert r.status == 200, r.body[:300]
    return r.json()["ID"]


def _documents(room: Classroom) -> tuple[str, str]:
    """An Encapsulated PDF (a scanned report) and a Comprehensive SR with a CODE finding, in the case's study."""
    pdf = _document(room, "1.2.840.10008.5.1.4.1.1.104.1", "DOC", 90)
    pdf.DocumentTitle = REPORT_TITLE
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n" + REPORT_TEXT + b"\n%%EOF\n"
    sr = _document(room, "1.2.840.10008.5.1.4.1.1.88.33", "SR", 91)
    sr.ValueType, sr.CompletionFlag, sr.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    sr.ContinuityOfContent = "SEPARATE"
    code, name, item = Dataset(), Dataset(), Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "36118008", "SCT", SR_FINDING
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    item.RelationshipType, item.ValueType = "CONTAINS", "CODE"
    item.ConceptNameCodeSequence, item.ConceptCodeSequence = [name], [code]
    sr.ContentSequence = [item]
    return _store(room, pdf), _store(room, sr)


def test_a_report_or_sr_in_the_held_back_study_waits_for_the_reveal(room) -> None:
    """Documents say the answer in their content (an encapsulated PDF's bytes, an SR's CODE item): a
    student is refused the content routes and given tags without it; the teacher gets all, and the
    student too after the reveal."""
    pdf, sr = _documents(room)
    meta = {i: room.teacher_json("GET", f"/instances/{i}/simplified-tags") for i in (pdf, sr)}
    suid = room.uids["StudyInstanceUID"]

    def wado(i: str) -> str:
        return f"/dicom-web/studies/{suid}/series/{meta[i]['SeriesInstanceUID']}/instances/{meta[i]['SOPInstanceUID']}"
    content = {pdf: f"/instances/{pdf}/content/0042-0011", sr: f"/instances/{sr}/content/0040-a730"}
    refused = {"content": lambda i: ("GET", content[i], None),
               "listing": lambda i: ("GET", f"/instances/{i}/content", None),
               "dicom+json": lambda i: ("GET", f"/instances/{i}/file", {"Accept": "application/dicom+json"}),
               "bulk": lambda i: ("GET", f"{wado(i)}/bulk/00080016", None),
               "bulk document": lambda i: ("GET", f"{wado(i)}/bulk/00420011", None)}
    told = {pdf: REPORT_TEXT.decode(), sr: SR_FINDING}
    titled = {pdf: REPORT_TITLE, sr: SR_FINDING}
    redacted = {"tags": lambda i: f"/instances/{i}/tags", "simplified": lambda i: f"/instances/{i}/simplified-tags",
                "metadata": lambda i: f"{wado(i)}/metadata"}

    def text(r) -> str:
        body = _text(r)
        return body + "".join(base64_texts(body))

    def check(student_told: bool) -> None:
        for i in (pdf, sr):
            for name, how in refused.items():
                method, path, headers = how(i)
                if name == "bulk document" and i == sr:
                    continue
                assert room.teacher(method, path, None, headers).status == 200, (name, i)
                r = _student(room, method, path, None, headers)
                assert (r.status == 200) is student_told, (name, i, r.status)
                if not student_told:
                    assert r.status in (403, 404) and told[i] not in text(r), (name, i, r.status)
            for name, path in redacted.items():
                assert titled[i] in text(room.teacher("GET", path(i))), (name, i)
                r = _student(room, "GET", path(i))
                assert r.status == 200 and (titled[i] in text(r)) is student_told, (name, i)
        assert REPORT_TEXT in room.teacher("GET", content[pdf]).body

    check(student_told=True)        # no session: nothing held
    session = start_session(room, allow_retrieve=True)      # files allowed: the content still waits
    check(student_told=False)
    assert _student(room, "GET", content[pdf]).status == 403
    room.teacher_json("POST", f"/sessions/{session['ID']}/cases/0/reveal")
    check(student_told=True)
    assert REPORT_TEXT in _student(room, "GET", content[pdf]).body


def base64_texts(body: str) -> list[str]:
    """What the base64 values of a DICOM JSON answer (InlineBinary) say, decoded."""
    import base64
    import re
    out = []
    for m in re.finditer(r'"InlineBinary"\s*:\s*"([A-Za-z0-9+/=]+)"', body):
        out.append(base64.b64decode(m.group(1)).decode("latin-1"))
    return out


def test_tools_labels_leave_out_labels_of_held_back_studies_until_the_reveal(room, tmp_path: Path) -> None:
    """A label may name the answer: while the case is unknown, /tools/labels does not list one found on
    its study, for a student; a label of another patient's study stays; the teacher sees all."""
    data = phantom_files(tmp_path, slices=1, size=16, patient_id="OTHER", patient_name="Other^P", study="other")[0]
    other = room.teacher("POST", "/instances", data).json()["ParentStudy"]
    assert room.teacher("PUT", f"/studies/{other}/released", "1").status == 200
    assert room.teacher("PUT", f"/studies/{room.study}/labels/pneumothorax", "").status == 200
    assert room.teacher("PUT", f"/series/{room.series}/labels/tension", "").status == 200
    assert room.teacher("PUT", f"/studies/{other}/labels/chest", "").status == 200

    def labels(who) -> set[str]:
        r = who("GET", "/tools/labels")
        assert r.status == 200, r.body[:300]
        return set(r.json())
    teacher = lambda m, p: room.teacher(m, p)
    student = lambda m, p: _student(room, m, p)
    assert {"pneumothorax", "chest"} <= labels(student)
    session = start_session(room)
    assert "chest" in labels(student) and not {"pneumothorax", "tension"} & labels(student)
    assert {"pneumothorax", "tension", "chest"} <= labels(teacher)
    room.teacher_json("POST", f"/sessions/{session['ID']}/cases/0/reveal")
    assert {"pneumothorax", "chest"} <= labels(student)


# ------------------------------------------------------------------ masks in the held-back study

SEGMENT_LABEL = "Pneumothorax segment"
SEGMENT_TYPE = "Pneumothorax type"


def _segmentation(room: Classroom) -> str:
    """A DICOM SEG (fractional, one 16 x 16 frame) of the case's study whose segment is named after the
    answer and whose frame shows where it is; its internal ID."""
    seg = _document(room, "1.2.840.10008.5.1.4.1.1.66.4", "SEG", 92)
    seg.Rows = seg.Columns = 16
    seg.SamplesPerPixel, seg.PhotometricInterpretation, seg.PixelRepresentation = 1, "MONOCHROME2", 0
    seg.BitsAllocated, seg.BitsStored, seg.HighBit, seg.NumberOfFrames = 8, 8, 7, 1
    seg.SegmentationType, seg.MaximumFractionalValue, seg.SegmentationFractionalType = "FRACTIONAL", 255, "PROBABILITY"
    category, kind, segment = Dataset(), Dataset(), Dataset()
    category.CodeValue, category.CodingSchemeDesignator, category.CodeMeaning = "49755003", "SCT", "Morphology"
    kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning = "36118008", "SCT", SEGMENT_TYPE
    segment.SegmentNumber, segment.SegmentLabel, segment.SegmentAlgorithmType = 1, SEGMENT_LABEL, "MANUAL"
    segment.SegmentDescription = SEGMENT_LABEL
    segment.SegmentedPropertyCategoryCodeSequence, segment.SegmentedPropertyTypeCodeSequence = [category], [kind]
    seg.SegmentSequence = [segment]
    seg.PixelData = bytes(range(256))
    return _store(room, seg)


def test_a_segmentation_in_the_held_back_study_waits_for_the_reveal(room) -> None:
    """A SEG names the finding (SegmentLabel, its coded type) and its frames show where to tap: a student
    is refused its content, file as JSON, bulk data, frames, rendered images and previews on every route,
    and given tags and metadata without its segments' names, until the reveal; the teacher always all."""
    seg = _segmentation(room)
    meta = room.teacher_json("GET", f"/instances/{seg}/simplified-tags")
    suid = room.uids["StudyInstanceUID"]
    wado = f"/dicom-web/studies/{suid}/series/{meta['SeriesInstanceUID']}/instances/{meta['SOPInstanceUID']}"
    uri = (f"/wado?requestType=WADO&studyUID={suid}&seriesUID={meta['SeriesInstanceUID']}"
           f"&objectUID={meta['SOPInstanceUID']}&contentType=image/png")
    refused = {
        "content": (f"/instances/{seg}/content/0062-0002", None), "listing": (f"/instances/{seg}/content", None),
        "dicom+json": (f"/instances/{seg}/file", {"Accept": "application/dicom+json"}),
        "bulk": (f"{wado}/bulk/00080016", None), "wado frames": (f"{wado}/frames/1", None),
        "wado rendered": (f"{wado}/rendered", None), "wado thumbnail": (f"{wado}/thumbnail", None),
        "wado frame rendered": (f"{wado}/frames/1/rendered", None),
        "preview": (f"/instances/{seg}/preview", None), "rendered": (f"/instances/{seg}/frames/0/rendered", None),
        "image-uint8": (f"/instances/{seg}/image-uint8", None), "frames": (f"/instances/{seg}/frames", None),
        "raw": (f"/instances/{seg}/frames/0/raw", None), "numpy": (f"/instances/{seg}/numpy", None),
        "pixels": (f"/pipacs/instances/{seg}/frames/0/pixels", None), "wado-uri": (uri, None)}
    redacted = {"tags": f"/instances/{seg}/tags", "simplified": f"/instances/{seg}/simplified-tags",
                "metadata": f"{wado}/metadata"}

    def check(student_told: bool) -> None:
        for name, (path, headers) in refused.items():
            assert room.teacher("GET", path, None, headers).status == 200, (name, path)
            r = _student(room, "GET", path, None, headers)
            assert (r.status == 200) is student_told, (name, r.status)
            if not student_told:
                assert r.status == 403 and SEGMENT_LABEL not in _text(r), (name, r.status)
        for name, path in redacted.items():
            assert SEGMENT_LABEL in _text(room.teacher("GET", path)) and SEGMENT_TYPE in _text(room.teacher("GET", path))
            r = _student(room, "GET", path)
            assert r.status == 200, (name, r.status)
            assert (SEGMENT_LABEL in _text(r)) is student_told and (SEGMENT_TYPE in _text(r)) is student_told, name

    check(student_told=True)        # no session: nothing held
    session = start_session(room, allow_retrieve=True)      # files allowed: the mask still waits
    check(student_told=False)
    # the image series stays the quiz: its frames are served
    assert _student(room, "GET", f"/instances/{room.instances[3]}/preview").status == 200
    room.teacher_json("POST", f"/sessions/{session['ID']}/cases/0/reveal")
    check(student_told=True)


def test_a_label_search_of_any_constraint_leaves_the_unknown_case_out(room) -> None:
    """/tools/find with Labels tells nothing of a held-back study whatever LabelsConstraint says:
    "None" would list it exactly when it lacks the label guessed (one bit a guess)."""
    assert room.teacher("PUT", f"/studies/{room.study}/labels/pneumonia", "").status == 200

    def find(who, labels: list[str], constraint: str | None) -> list[str]:
        body = {"Level": "Study", "Query": {}, "Labels": labels}
        if constraint is not None:
            body["LabelsConstraint"] = constraint
        r = who("POST", "/tools/find", json.dumps(body))
        assert r.status == 200, r.body[:300]
        return r.json()
    student = lambda m, p, b: _student(room, m, p, b)
    rows = [(["pneumonia"], None), (["pneumonia"], "All"), (["pneumonia", "x"], "Any"), (["tension"], "None")]
    for labels, constraint in rows:
        assert room.study in find(student, labels, constraint), (labels, constraint)
    session = start_session(room)
    for labels, constraint in rows:
        assert room.study in find(room.teacher, labels, constraint), (labels, constraint)
        assert room.study not in find(student, labels, constraint), (labels, constraint)
    room.teacher_json("POST", f"/sessions/{session['ID']}/cases/0/reveal")
    for labels, constraint in rows:
        assert room.study in find(student, labels, constraint), (labels, constraint)


async def test_held_back_labels_are_computed_once_per_snapshot_and_generation(archive) -> None:
    """``Archive.held_back_labels``: the same answer object while nothing changed (no walk per call), a
    new one after a label is set; empty when nothing is held back."""
    from .test_session_store import make_case, quiz
    assert await archive.held_back_labels() == frozenset()
    case = await make_case(archive, "A")
    study = case["Studies"][0]
    await archive.set_label(Level.STUDY, study, "pneumothorax", True)
    doc = await archive.create_session({"Mode": "unknown", "Cases": [quiz(case["ID"])]}, "t")
    first = await archive.held_back_labels()
    assert first == {"pneumothorax"} and await archive.held_back_labels() is first
    await archive.set_label(Level.STUDY, study, "tension", True)
    assert await archive.held_back_labels() == {"pneumothorax", "tension"}
    await archive.reveal_session_case(doc["ID"], 0)
    assert await archive.held_back_labels() == frozenset()
