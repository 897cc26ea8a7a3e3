"""De-identifying a teaching case (POST /cases/{id}/anonymize) and the KeepSource false guard of
/{level}/{id}/anonymize|modify (review C1, U1), against real servers: an identifiable study with a
case whose key images (one of them frame 2 of a multi-frame image) carry annotations."""

from __future__ import annotations

import base64
import io
import json

import pydicom
import pytest

from appliance.teaching.anonymize import UidMap
from appliance.teaching.casedeid import NoCopy, case_title_of, moved_document
from appliance.teaching.deid_options import CASE_TITLE_MAX

from .kos_synth import multiframe_instance
from .synth import ct_instance, uid
from .test_tce import Study, storescu, teaching_kos
from .test_unreadable import unreadable_copy

TEACHER = {"Authorization": "Basic " + base64.b64encode(b"teacher-a:pw-a-long-enough").decode()}
CLASSROOM = {"AuthenticationEnabled": True, "RegisteredUsers": {"teacher-a": "pw-a-long-enough"},
             "StudentAccess": "open"}
PATIENT = "HOSP-4711"
ARROW = {"Type": "arrow", "Points": [[4, 4], [20.5, 30]], "Text": ""}
LENGTH = {"Type": "length", "Points": [[0, 0], [0, 10]], "Text": ""}
ELLIPSE = {"Type": "ellipse", "Points": [[2, 2], [12, 8]], "Text": ""}
LABEL = {"Type": "text", "Points": [[5, 6]], "Text": "air <b>here</b>"}


def call(srv, method: str, path: str, body=None, teacher: bool = True):
    data = json.dumps(body) if body is not None and not isinstance(body, (str, bytes)) else body
    return srv.request(method, path, data, headers=TEACHER if teacher else {})


def ok(r):
    assert r.status == 200, (r.status, r.body[:600])
    return r.json()


def upload(srv, data: bytes) -> dict:
    return ok(call(srv, "POST", "/instances", data))


def hospital_study(srv, patient: str = PATIENT, study: str = "s1") -> dict:
    """Two CT slices and a 3-frame image in one study, straight from the hospital (identifiable)."""
    ct = [upload(srv, ct_instance(patient_id=patient, patient_name="Real^Patient", study=study, series="ct",
                                  index=i, rows=32, cols=32)) for i in (1, 2)]
    mf = upload(srv, multiframe_instance(frames=3, patient_id=patient, study=study, series="mf"))
    assert ct[0]["ParentStudy"] == mf["ParentStudy"]
    return {"study": ct[0]["ParentStudy"], "ct": [c["ID"] for c in ct], "mf": mf["ID"],
            "ct_series": ct[0]["ParentSeries"], "mf_series": mf["ParentSeries"],
            "study_uid": uid(f"{patient}/{study}"), "series_uid": uid(f"{patient}/{study}/ct"),
            "late_uid": uid(f"{patient}/{study}/ct/9")}


def make_case(srv, h: dict, title: str = "Tension pneumothorax") -> dict:
    return ok(call(srv, "POST", "/cases", {
        "Title": title, "History": "fell off a horse", "Studies": [h["study"]],
        "KeyImages": [
            {"Instance": h["ct"][0], "Frame": 1, "Window": {"Center": 40, "Width": 400}, "Zoom": 2,
             "Caption": "the pleural line", "Annotations": [ARROW, LENGTH]},
            {"Instance": h["mf"], "Frame": 2, "Caption": "frame two", "Annotations": [ELLIPSE, LABEL]}],
        "Missing": [{"StudyInstanceUID": h["study_uid"], "SeriesInstanceUID": h["series_uid"],
                     "SOPInstanceUID": h["late_uid"]}]}))


def tags(srv, instance: str) -> dict:
    return ok(call(srv, "GET", f"/instances/{instance}/simplified-tags"))


def parent_study(srv, instance: str) -> str:
    return ok(call(srv, "GET", f"/instances/{instance}/study"))["ID"]


def count(srv, what: str) -> int:
    return ok(call(srv, "GET", "/statistics"))[f"Count{what}"]


@pytest.fixture
def board(make_server):
    return make_server(CLASSROOM)


def test_a_case_on_an_identifiable_study_is_de_identified_with_its_key_images(board) -> None:
    h = hospital_study(board)
    case = make_case(board, h)
    cid = case["ID"]
    refused = call(board, "POST", f"/cases/{cid}/publish")
    assert refused.status == 409 and "not de-identified" in refused.json()["Message"]
    studies_before = count(board, "Studies")

    done = ok(call(board, "POST", f"/cases/{cid}/anonymize", {}))
    report = done.pop("Deidentification")
    (copy,) = done["Studies"]
    assert copy != h["study"]
    assert report["Studies"] == [{"Source": h["study"], "Copy": copy, "InstancesCount": 3,
                                  "FailedInstancesCount": 0, "KeyObjectsNotCopied": 0, "SourceKept": True}]
    assert report["AlreadyDeidentified"] == [] and report["OtherCasesMoved"] == []
    assert count(board, "Studies") == studies_before + 1
    assert ok(call(board, "GET", f"/studies/{h['study']}"))["ID"] == h["study"]     # KeepSource: true

    # the case is the stored one, on the copy: key images point at the copies, all else kept
    assert done == ok(call(board, "GET", f"/cases/{cid}"))
    ct_key, mf_key = done["KeyImages"]
    assert ct_key["Instance"] not in h["ct"] and mf_key["Instance"] != h["mf"]
    for key in (ct_key, mf_key):
        assert parent_study(board, key["Instance"]) == copy
        t = tags(board, key["Instance"])
        assert t["PatientIdentityRemoved"] == "YES" and t["PatientName"] == "Tension pneumothorax"
        assert PATIENT not in json.dumps(t) and "Real^Patient" not in json.dumps(t)
    assert tags(board, mf_key["Instance"])["NumberOfFrames"] == "3"
    assert (ct_key["Frame"], ct_key["Window"], ct_key["Zoom"], ct_key["Caption"]) == (
        1, {"Center": 40, "Width": 400}, 2, "the pleural line")
    assert (mf_key["Frame"], mf_key["Caption"]) == (2, "frame two")
    before = {k["Caption"]: k for k in case["KeyImages"]}
    assert ct_key["Annotations"] == before["the pleural line"]["Annotations"]
    assert mf_key["Annotations"] == before["frame two"]["Annotations"]
    assert ct_key["Annotations"][1]["LengthMm"] == pytest.approx(9.766, abs=0.001)   # Pixel Spacing kept
    # Missing: the instance the case waits for, under the UIDs the copy's study was given
    (missing,) = done["Missing"]
    copy_uid = tags(board, ct_key["Instance"])["StudyInstanceUID"]
    assert missing["StudyInstanceUID"] == copy_uid != h["study_uid"]
    assert missing["SOPInstanceUID"] != h["late_uid"] and missing["SeriesInstanceUID"] != h["series_uid"]
    assert missing["SeriesInstanceUID"] == tags(board, ct_key["Instance"])["SeriesInstanceUID"]

    # publishable; a student reads the case and its images, never the original
    assert ok(call(board, "POST", f"/cases/{cid}/publish"))["State"] == "published"
    assert ok(call(board, "GET", f"/cases/{cid}", teacher=False))["KeyImages"] == done["KeyImages"]
    for n in (0, 1):
        img = call(board, "GET", f"/cases/{cid}/key-images/{n}/rendered", teacher=False)
        assert img.status == 200 and img.body.startswith(b"\x89PNG"), (img.status, img.body[:200])
    assert call(board, "GET", f"/instances/{mf_key['Instance']}/file", teacher=False).status == 200
    assert call(board, "GET", f"/studies/{h['study']}", teacher=False).status == 404

    # a case already de-identified: nothing is anonymized again
    instances = count(board, "Instances")
    again = ok(call(board, "POST", f"/cases/{cid}/anonymize", {"KeepSource": False}))
    assert again.pop("Deidentification") == {"Studies": [], "AlreadyDeidentified": [copy], "OtherCasesMoved": [],
                                             "OtherCasesLeftOnSource": []}
    assert again == ok(call(board, "GET", f"/cases/{cid}"))
    assert count(board, "Instances") == instances
    assert ok(call(board, "GET", f"/studies/{h['study']}"))["ID"] == h["study"]


def test_a_missing_instance_that_arrives_later_fills_the_moved_case(board) -> None:
    """The Missing entry names the UIDs a deterministic copy of the late instance gets."""
    h = hospital_study(board)
    case = make_case(board, h)
    done = ok(call(board, "POST", f"/cases/{case['ID']}/anonymize", {}))
    (copy,) = done["Studies"]
    late = upload(board, ct_instance(patient_id=PATIENT, patient_name="Real^Patient", study="s1", series="ct",
                                     index=9, rows=32, cols=32))
    assert late["ParentStudy"] == h["study"]                 # it comes in identifiable, into the original
    mark = board.log_mark()
    again = ok(call(board, "POST", f"/studies/{h['study']}/anonymize", {"Deterministic": True}))
    assert again["ID"] == copy                               # the same copy, the late instance added to it
    board.wait_for_log(f"missing instance(s) of case {case['ID']} arrived (0 still missing)", since=mark)
    filled = ok(call(board, "GET", f"/cases/{case['ID']}"))
    assert filled["Missing"] == [] and len(filled["KeyImages"]) == 3
    assert tags(board, filled["KeyImages"][2]["Instance"])["SOPInstanceUID"] == done["Missing"][0]["SOPInstanceUID"]


def test_a_tce_draft_from_the_hospital_is_de_identified_and_published(make_server, tmp_path) -> None:
    """The review's U1 path: a "For Teaching" KOS sent with its identifiable study by storescu (no
    AnonymizeOnIngest) makes a draft; de-identified with KeepSource false it publishes."""
    srv = make_server()
    study = Study(tmp_path / "study", patient_id="TCE-REAL")
    kos_path, kos = teaching_kos(study, tmp_path, description="fell off a horse")
    storescu(srv, study.files)
    mark = srv.log_mark()
    storescu(srv, [kos_path])
    srv.wait_for_log("TCE: draft case", since=mark)
    (cid,) = srv.get_json("/cases")
    draft = srv.get_json(f"/cases/{cid}")
    assert srv.post(f"/cases/{cid}/publish").status == 409
    done = srv.post_json(f"/cases/{cid}/anonymize", {"KeepSource": False})
    (copy,) = done["Studies"]
    assert [k["Frame"] for k in done["KeyImages"]] == [k["Frame"] for k in draft["KeyImages"]] == [1, 1, 2, 3]
    assert not {k["Instance"] for k in done["KeyImages"]} & set(study.ids)
    assert all(srv.get_json(f"/instances/{k['Instance']}/study")["ID"] == copy for k in done["KeyImages"])
    assert srv.get(f"/studies/{study.study_id}").status == 404
    # the hospital's KOS is not copied (the case holds what it said): no second draft from its copy;
    # Source names the UID its deterministic copy would have
    assert done["Deidentification"]["Studies"][0]["KeyObjectsNotCopied"] == 1
    assert done["Source"]["KeyObject"] not in ("", kos.SOPInstanceUID)
    assert srv.post("/tools/lookup", kos.SOPInstanceUID).json() == []
    assert srv.post_json(f"/cases/{cid}/publish", {})["State"] == "published"
    srv.settled_log()
    assert srv.get_json("/cases") == [cid]
    assert "TCE: draft case" not in srv.log[mark:].split("TCE: draft case", 1)[1]   # one draft only


def test_keep_source_false_moves_every_case_of_the_study_and_removes_the_original(board) -> None:
    h = hospital_study(board)
    case = make_case(board, h, title="Pneumothorax")
    other = ok(call(board, "POST", "/cases", {"Title": "Chest drain", "Studies": [h["study"]],
                                              "KeyImages": [{"Instance": h["ct"][1], "Annotations": [ARROW]}]}))
    done = ok(call(board, "POST", f"/cases/{case['ID']}/anonymize",
                   {"KeepSource": False, "CaseTitle": "Case 12", "Options": ["RetainPatientCharacteristics"]}))
    report = done["Deidentification"]
    (copy,) = done["Studies"]
    assert report["Studies"][0]["SourceKept"] is False and report["OtherCasesMoved"] == [other["ID"]]
    assert call(board, "GET", f"/studies/{h['study']}").status == 404
    for iid in (*h["ct"], h["mf"]):
        assert call(board, "GET", f"/instances/{iid}").status == 404
    t = tags(board, done["KeyImages"][0]["Instance"])
    assert t["PatientName"] == "Case 12" and t["PatientSex"] == "F"      # the options asked kept the sex
    moved = ok(call(board, "GET", f"/cases/{other['ID']}"))
    assert moved["Studies"] == [copy] and moved["Title"] == "Chest drain"
    (key,) = moved["KeyImages"]
    assert parent_study(board, key["Instance"]) == copy and key["Annotations"] == [ARROW]


def test_keep_source_true_leaves_the_other_cases_on_the_original(board) -> None:
    h = hospital_study(board)
    case = make_case(board, h)
    other = ok(call(board, "POST", "/cases", {"Title": "Someone else's", "Studies": [h["study"]]}))
    done = ok(call(board, "POST", f"/cases/{case['ID']}/anonymize", None))
    assert done["Deidentification"]["OtherCasesLeftOnSource"] == [other["ID"]]
    assert ok(call(board, "GET", f"/cases/{other['ID']}"))["Studies"] == [h["study"]]


def test_a_second_case_on_the_same_study_gets_the_same_copy_and_the_first_keeps_its_key_images(
        make_server) -> None:
    """With OverwriteInstances a copy stored again would replace the first case's instances (and drop
    its key images with them): the copy already made is used as it is."""
    srv = make_server({**CLASSROOM, "OverwriteInstances": True})
    h = hospital_study(srv)
    first = make_case(srv, h)
    second = ok(call(srv, "POST", "/cases", {"Title": "Second look", "Studies": [h["study"]],
                                             "KeyImages": [{"Instance": h["mf"], "Frame": 3}]}))
    one = ok(call(srv, "POST", f"/cases/{first['ID']}/anonymize", {}))
    assert one["Deidentification"]["OtherCasesLeftOnSource"] == [second["ID"]]
    instances = count(srv, "Instances")
    two = ok(call(srv, "POST", f"/cases/{second['ID']}/anonymize", {"KeepSource": False}))
    assert two["Studies"] == one["Studies"] and count(srv, "Instances") == instances - 3    # the originals went
    assert two["KeyImages"][0]["Instance"] == one["KeyImages"][1]["Instance"]
    assert ok(call(srv, "GET", f"/cases/{first['ID']}"))["KeyImages"] == one["KeyImages"]
    assert tags(srv, two["KeyImages"][0]["Instance"])["PatientName"] == "Tension pneumothorax"   # kept as made


def test_keep_source_false_on_a_study_that_a_case_uses_is_refused_unless_forced(board) -> None:
    h = hospital_study(board)
    case = make_case(board, h)
    studies = count(board, "Studies")
    for level, rid in (("studies", h["study"]), ("patients", ok(call(board, "GET", f"/studies/{h['study']}"))
                                                 ["ParentPatient"]), ("series", h["mf_series"])):
        for action, body in (("anonymize", {"KeepSource": False}),
                             ("modify", {"KeepSource": False, "Replace": {"InstitutionName": "X"},
                                         **({"Replace": {"PatientID": "NEW"}, "Force": True}
                                            if level == "patients" else {})})):
            r = call(board, "POST", f"/{level}/{rid}/{action}", body)
            assert r.status == 409, (level, action, r.status, r.body)
            assert case["ID"] in r.json()["Message"] and "?force" in r.json()["Message"]
    assert count(board, "Studies") == studies                       # refused before any copy was made
    assert ok(call(board, "GET", f"/cases/{case['ID']}"))["KeyImages"] == case["KeyImages"]
    # a series no key image is on: the case loses nothing, Orthanc's behaviour
    extra = upload(board, ct_instance(patient_id=PATIENT, patient_name="Real^Patient", study="s1", series="scout",
                                      index=7, rows=32, cols=32))
    ok(call(board, "POST", f"/series/{extra['ParentSeries']}/anonymize", {"KeepSource": False}))
    assert call(board, "GET", f"/series/{extra['ParentSeries']}").status == 404
    # KeepSource true: nothing is deleted, nothing refused
    ok(call(board, "POST", f"/studies/{h['study']}/anonymize", {}))
    # ?force: as today, the study leaves the case, its key images too
    forced = ok(call(board, "POST", f"/studies/{h['study']}/anonymize?force", {"KeepSource": False}))
    assert forced["Type"] == "Study" and call(board, "GET", f"/studies/{h['study']}").status == 404
    left = ok(call(board, "GET", f"/cases/{case['ID']}"))
    assert left["Studies"] == [] and left["KeyImages"] == []


def test_an_unreadable_file_in_the_study(board) -> None:
    """Under a key image: 409 naming it, the case unchanged. Elsewhere in the study: the case moves,
    the source is kept for it even with KeepSource false."""
    h = hospital_study(board)
    case = make_case(board, h)
    uuid = ok(call(board, "GET", f"/instances/{h['ct'][0]}"))["FileUuid"]
    [path] = [p for p in board.stored_files() if p.name.startswith(uuid)]
    path.write_bytes(unreadable_copy(path.read_bytes()))
    r = call(board, "POST", f"/cases/{case['ID']}/anonymize", {"KeepSource": False})
    assert r.status == 409 and h["ct"][0] in r.json()["Message"], (r.status, r.body)
    assert ok(call(board, "GET", f"/cases/{case['ID']}")) == case
    assert ok(call(board, "GET", f"/studies/{h['study']}"))["ID"] == h["study"]
    ok(call(board, "PUT", f"/cases/{case['ID']}", {"KeyImages": case["KeyImages"][1:]}))
    done = ok(call(board, "POST", f"/cases/{case['ID']}/anonymize", {"KeepSource": False}))
    (entry,) = done["Deidentification"]["Studies"]
    assert (entry["InstancesCount"], entry["FailedInstancesCount"], entry["SourceKept"]) == (2, 1, True)
    assert done["Studies"] == [entry["Copy"]] and parent_study(board, done["KeyImages"][0]["Instance"]) == entry["Copy"]
    assert ok(call(board, "GET", f"/studies/{h['study']}"))["ID"] == h["study"]


def test_bad_requests_to_anonymize_a_case(board) -> None:
    h = hospital_study(board)
    case = make_case(board, h)
    path = f"/cases/{case['ID']}/anonymize"
    for body, words in (({"Keep": []}, "unknown option(s) Keep"), ({"KeepSource": "no"}, "KeepSource"),
                        ({"CaseTitle": "A^B"}, "CaseTitle"), ({"Options": ["Nope"]}, "Nope"),
                        ([1], "JSON object"), ("{not json", "JSON")):
        r = call(board, "POST", path, body)
        assert r.status == 400 and words in r.json()["Message"], (body, r.status, r.body)
    assert call(board, "POST", "/cases/no-such-case/anonymize", {}).status == 404
    assert call(board, "POST", path, {}, teacher=False).status in (401, 403)
    assert ok(call(board, "GET", f"/cases/{case['ID']}")) == case            # nothing changed
    assert count(board, "Studies") == 1


# ------------------------------------------------------------------ the plain functions


def test_the_case_title_becomes_a_valid_person_name() -> None:
    assert case_title_of({"Title": "  Ring^enhancing = lesion\\ 2\n"}) == "Ring enhancing lesion 2"
    assert len(case_title_of({"Title": "x" * 500})) == CASE_TITLE_MAX
    assert case_title_of({"Title": "   "}) is None
    assert case_title_of({"Title": "Glioblastoma", "Unknown": True}) == "Unknown case"   # no answer in the name


def test_a_key_image_without_a_copy_stops_the_move() -> None:
    uids = UidMap(b"k" * 32)
    uids("1.2.3")
    doc = {"Studies": ["s", "t"], "KeyImages": [{"Instance": "a", "Frame": 2}, {"Instance": "z"}],
           "Missing": [{"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "SOPInstanceUID": "1.2.3.4.5"},
                       {"StudyInstanceUID": "9.9", "SeriesInstanceUID": "9.9.1", "SOPInstanceUID": "9.9.1.1"}]}
    moved = moved_document(doc, {"s": "s2"}, {"a": "a2"}, {"a", "b"}, [uids])
    assert moved["Studies"] == ["s2", "t"] and moved["KeyImages"] == [{"Instance": "a2", "Frame": 2}, {"Instance": "z"}]
    assert moved["Missing"][0] == {k: UidMap(b"k" * 32)(v) for k, v in doc["Missing"][0].items()}
    assert moved["Missing"][1] == doc["Missing"][1]                  # its study was not copied
    assert "Source" not in moved
    uids("1.2.3.77")
    assert moved_document({**doc, "Source": {"KeyObject": "1.2.3.77"}}, {}, {"a": "a2"}, set(), [uids])[
        "Source"] == {"KeyObject": UidMap(b"k" * 32)("1.2.3.77")}
    assert moved_document({**doc, "Source": {"KeyObject": "5.5"}}, {}, {"a": "a2"}, set(), [uids])[
        "Source"] == {"KeyObject": "5.5"}
    with pytest.raises(NoCopy):
        moved_document({**doc, "KeyImages": [{"Instance": "b"}]}, {"s": "s2"}, {"a": "a2"}, {"a", "b"}, [uids])


def test_the_multiframe_fixture_is_what_the_test_says() -> None:
    ds = pydicom.dcmread(io.BytesIO(multiframe_instance(frames=3, patient_id=PATIENT, study="s1", series="mf")))
    assert int(ds.NumberOfFrames) == 3 and ds.StudyInstanceUID == uid(f"{PATIENT}/s1")
