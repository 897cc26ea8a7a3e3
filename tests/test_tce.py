"""The IHE TCE receiver and key images as DICOM, with real clients: a workstation's "For Teaching" KOS
(made with pydicom per PS3.3 A.35.4) sent by DCMTK storescu after (or before) its study makes a draft
case; bad key objects make none and say why; the exported KOS and GSPS pass dciodvfy, read back with
pydicom and, stored into the archive, are retrieved with the study and make no new case."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import time
import zipfile
from pathlib import Path

import pydicom
import pytest

from appliance.archive import MAX_KEY_IMAGES, MAX_MISSING, MAX_TEXT_BYTES, public_ids
from appliance.teaching import tce
from tests import kos_synth, synth
from tests.helpers import dcmtk
from tests.test_keyobjects import verify

DELAY = ("128715", "DCM", "Delay export until final report is available")
HISTORY = "58-year-old, dyspnoea after a fall. Ünïcode history."


def storescu(srv, paths: list[Path]) -> None:
    r = subprocess.run([dcmtk("storescu"), "-aec", "PIPACS", "127.0.0.1", str(srv.dicom_port),
                        *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class Study:
    """A CT series of 3 images and a 4-frame image, one study, on disk; their headers and Orthanc IDs."""

    def __init__(self, folder: Path, patient_id: str = "TCE1", study: str = "st1", deidentified: bool = False):
        data = [synth.ct_instance(index=i, rows=32, cols=32, patient_id=patient_id, study=study,
                                  study_description="CHEST TCE") for i in (1, 2, 3)]
        data.append(kos_synth.multiframe_instance(frames=4, patient_id=patient_id, study=study))
        if deidentified:       # as the teacher's anonymized copy says it (a student may see it once published)
            marked = [pydicom.dcmread(io.BytesIO(d)) for d in data]
            for ds in marked:
                ds.PatientIdentityRemoved = "YES"
            data = [kos_synth.part10(ds) for ds in marked]
        self.files = [write(folder / f"ct{i}.dcm", d) for i, d in enumerate(data[:3], 1)]
        self.files.append(write(folder / "mf.dcm", data[3]))
        self.headers = [kos_synth.header(p.read_bytes()) for p in self.files]
        self.ids = [public_ids(str(h.PatientID), str(h.StudyInstanceUID), str(h.SeriesInstanceUID),
                               str(h.SOPInstanceUID))[3] for h in self.headers]
        self.study_id = public_ids(patient_id, str(self.headers[0].StudyInstanceUID), "", "")[1]
        self.uid = str(self.headers[0].StudyInstanceUID)


def teaching_kos(study: Study, folder: Path, name: str = "kos", **kw) -> tuple[Path, pydicom.Dataset]:
    """The workstation's KOS of CT 1 and 3 and frames 2 and 3 of the multi-frame image."""
    h = study.headers
    kw.setdefault("title", ("113004", "DCM", "For Teaching"))
    kos = kos_synth.hospital_kos(h[0], [(h[0], []), (h[2], []), (h[3], [2, 3])], seed=f"{study.uid}/{name}", **kw)
    return write(folder / f"{name}.dcm", kos_synth.part10(kos)), kos


def cases(srv) -> list[dict]:
    return [srv.get_json(f"/cases/{cid}") for cid in srv.get_json("/cases")]


def expected_key_images(study: Study) -> list[tuple[str, int]]:
    return [(study.ids[0], 1), (study.ids[2], 1), (study.ids[3], 2), (study.ids[3], 3)]


def key_images(case: dict) -> list[tuple[str, int]]:
    return [(k["Instance"], k["Frame"]) for k in case["KeyImages"]]


def test_a_teaching_kos_after_its_study_makes_a_draft_and_exports_back(make_server, tmp_path):
    srv = make_server()
    study = Study(tmp_path / "study", deidentified=True)      # so that the case may be published
    ps = kos_synth.hospital_gsps(study.headers[0])
    ps.PatientIdentityRemoved = "YES"
    ps_path = write(tmp_path / "ps.dcm", kos_synth.part10(ps))
    kos_path, kos = teaching_kos(study, tmp_path, description=HISTORY, delay=DELAY, presentation_state=ps)
    kos.PatientIdentityRemoved = "YES"
    write(kos_path, kos_synth.part10(kos))
    storescu(srv, study.files)
    mark = srv.log_mark()
    storescu(srv, [ps_path, kos_path])
    srv.wait_for_log("TCE: draft case", since=mark)

    [case] = cases(srv)
    assert case["State"] == "draft"
    assert case["Studies"] == [study.study_id]
    assert key_images(case) == expected_key_images(study)
    assert case["Missing"] == []
    assert case["History"] == HISTORY
    assert case["DelayReason"] == "Delay export until final report is available"
    assert case["Source"] == {"KeyObject": kos.SOPInstanceUID}
    assert case["Title"] == "CHEST TCE"
    # the KOS and the workstation's GSPS are stored as any instance
    assert srv.get(f"/instances/{public_ids('TCE1', study.uid, str(kos.SeriesInstanceUID), str(kos.SOPInstanceUID))[3]}").status == 200

    # the board's own KOS of the case: through dciodvfy, back through pydicom
    r = srv.get(f"/cases/{case['ID']}/key-object")
    assert r.status == 200 and r.headers["Content-Type"] == "application/dicom"
    mine = pydicom.dcmread(io.BytesIO(r.body))
    verify(mine, tmp_path / "export-kos.dcm")
    assert mine.StudyInstanceUID == study.uid and mine.PatientID == "TCE1"
    refs = [(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID,
             int(i.ReferencedSOPSequence[0].get("ReferencedFrameNumber", 1)))
            for i in mine.ContentSequence if i.ValueType == "IMAGE"]
    assert refs == [(str(study.headers[n].SOPInstanceUID), f) for n, f in ((0, 1), (2, 1), (3, 2), (3, 3))]
    # no window, zoom or annotation yet: nothing for a presentation state to carry
    r = srv.get(f"/cases/{case['ID']}/presentation-states")
    assert r.status == 200 and zipfile.ZipFile(io.BytesIO(r.body)).namelist() == []

    # the teacher annotates CT 1; the GSPS carries it
    images = case["KeyImages"]
    images[0]["Annotations"] = [{"Type": "arrow", "Points": [[2, 2], [20, 20]], "Text": "here"},
                                {"Type": "length", "Points": [[0, 0], [32, 0]], "Text": ""}]
    images[0]["Window"] = {"Center": 40, "Width": 400}
    r = srv.request("PUT", f"/cases/{case['ID']}", json.dumps({"KeyImages": images}))
    assert r.status == 200, r.body
    r = srv.get(f"/cases/{case['ID']}/presentation-states")
    z = zipfile.ZipFile(io.BytesIO(r.body))
    assert z.namelist() == ["PR001.dcm"]
    gsps = pydicom.dcmread(io.BytesIO(z.read("PR001.dcm")))
    verify(gsps, tmp_path / "export-ps.dcm")
    texts = [t.UnformattedTextValue for t in gsps.GraphicAnnotationSequence[0].TextObjectSequence]
    assert texts == ["here", "31.2 mm"]       # 32 px x 0.9765625 mm
    assert gsps.GraphicAnnotationSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == \
        study.headers[0].SOPInstanceUID

    # stored into the archive: a draft's are not (its text would reach whoever may see the study)
    r = srv.post(f"/cases/{case['ID']}/store-key-objects", "{}")
    assert r.status == 409 and "publish it first" in r.json()["Message"]
    assert srv.post_json(f"/cases/{case['ID']}/publish", {})["State"] == "published"
    # published: new instances of the study, no new case; twice: the same instances
    mark = srv.log_mark()
    stored = srv.post_json(f"/cases/{case['ID']}/store-key-objects", {})
    assert len(stored["KeyObjects"]) == 1 and len(stored["PresentationStates"]) == 1
    srv.wait_for_log("one of this board's own exports", since=mark)
    assert srv.post_json(f"/cases/{case['ID']}/store-key-objects", {}) == stored
    series = srv.get_json(f"/studies/{study.study_id}/series")
    modalities = sorted(s["MainDicomTags"]["Modality"] for s in series)
    assert modalities.count("KO") == 2 and modalities.count("PR") == 2   # the workstation's and ours
    kos_instance = srv.get_json(f"/instances/{stored['KeyObjects'][0]}")
    assert kos_instance["ParentSeries"] in {s["ID"] for s in series}
    assert srv.get(f"/instances/{stored['KeyObjects'][0]}/metadata/CaseExport").body.decode() == case["ID"]
    back = pydicom.dcmread(io.BytesIO(srv.get(f"/instances/{stored['KeyObjects'][0]}/file").body))
    now = pydicom.dcmread(io.BytesIO(srv.get(f"/cases/{case['ID']}/key-object").body))
    assert back.SOPInstanceUID == now.SOPInstanceUID != mine.SOPInstanceUID    # the case changed: new UIDs
    assert back.SeriesInstanceUID == mine.SeriesInstanceUID                    # in the same series
    ps_back = pydicom.dcmread(io.BytesIO(srv.get(f"/instances/{stored['PresentationStates'][0]}/file").body))
    assert back.ContentSequence[1].ReferencedSOPSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        ps_back.SOPInstanceUID
    assert ps_back.SeriesInstanceUID == gsps.SeriesInstanceUID
    assert len(srv.get_json("/cases")) == 1

    def ours() -> list[str]:
        """The board's KO/PR instances in the study."""
        return sorted(i["ID"] for s in srv.get_json(f"/studies/{study.study_id}/series")
                      for i in srv.get_json(f"/series/{s['ID']}/instances")
                      if i["MainDicomTags"].get("Manufacturer", "") == "pipacs"
                      or srv.get(f"/instances/{i['ID']}/metadata/CaseExport").status == 200)

    assert ours() == sorted(stored["KeyObjects"] + stored["PresentationStates"])
    # an edit and a new store: the new KOS/GSPS replace the old ones, in the same series
    images[0]["Caption"] = "edited"
    assert srv.request("PUT", f"/cases/{case['ID']}", json.dumps({"KeyImages": images})).status == 200
    again = srv.post_json(f"/cases/{case['ID']}/store-key-objects", {})
    assert set(again["KeyObjects"]).isdisjoint(stored["KeyObjects"])
    assert ours() == sorted(again["KeyObjects"] + again["PresentationStates"])
    for old in stored["KeyObjects"] + stored["PresentationStates"]:
        assert srv.get(f"/instances/{old}").status == 404
    assert len(srv.get_json(f"/studies/{study.study_id}/series")) == len(series)     # no series piled up
    # unpublished: the board's instances leave the study; published, stored and deleted: too
    srv.post_json(f"/cases/{case['ID']}/unpublish", {})
    assert ours() == []
    assert len(srv.get_json(f"/studies/{study.study_id}/instances")) == 6    # the study and the workstation's
    srv.post_json(f"/cases/{case['ID']}/publish", {})
    last = srv.post_json(f"/cases/{case['ID']}/store-key-objects", {})
    assert ours() == sorted(last["KeyObjects"] + last["PresentationStates"]) and len(ours()) == 2
    assert srv.request("DELETE", f"/cases/{case['ID']}").status == 200
    assert ours() == []
    assert "Traceback" not in srv.settled_log()


def test_a_kos_before_its_study_lists_missing_instances_filled_in_as_they_arrive(make_server, tmp_path):
    srv = make_server()
    study = Study(tmp_path / "study", patient_id="TCE2")
    kos_path, _ = teaching_kos(study, tmp_path, description=HISTORY)
    mark = srv.log_mark()
    storescu(srv, [kos_path])
    srv.wait_for_log("TCE: draft case", since=mark)
    [case] = cases(srv)
    assert case["KeyImages"] == []
    assert sorted(m["SOPInstanceUID"] for m in case["Missing"]) == sorted(
        str(study.headers[n].SOPInstanceUID) for n in (0, 2, 3))
    assert {m["SeriesInstanceUID"] for m in case["Missing"]} == {str(study.headers[0].SeriesInstanceUID),
                                                               str(study.headers[3].SeriesInstanceUID)}
    assert all(m["StudyInstanceUID"] == study.uid for m in case["Missing"])

    mark = srv.log_mark()
    storescu(srv, study.files[:3])        # the CT series: two of the three arrive
    # one batch or two, as the archive commits them
    srv.wait_for_log(re.compile(r"TCE: \d missing instance\(s\) of case \S+ arrived \(1 still missing\)"), since=mark)
    case = srv.get_json(f"/cases/{case['ID']}")
    assert key_images(case) == expected_key_images(study)[:2]
    assert [m["SOPInstanceUID"] for m in case["Missing"]] == [str(study.headers[3].SOPInstanceUID)]
    mark = srv.log_mark()
    storescu(srv, study.files[3:])        # the multi-frame image: its frames from the KOS
    srv.wait_for_log("(0 still missing)", since=mark)
    case = srv.get_json(f"/cases/{case['ID']}")
    assert key_images(case) == expected_key_images(study)
    assert case["Missing"] == []


def test_a_second_kos_of_the_study_joins_its_draft_and_an_upload_counts_as_a_store(make_server, tmp_path):
    srv = make_server()
    study = Study(tmp_path / "study", patient_id="TCE3")
    storescu(srv, study.files)
    first, _ = teaching_kos(study, tmp_path, name="first", description="first reader")
    mark = srv.log_mark()
    storescu(srv, [first])
    srv.wait_for_log("TCE: draft case", since=mark)
    h = study.headers
    second = kos_synth.hospital_kos(h[0], [(h[1], []), (h[0], [])], seed="second", description="second reader",
                                    title=("128710", "DCM", "For Teaching File Export"))
    mark = srv.log_mark()
    r = srv.post("/instances", kos_synth.part10(second))       # an upload, not a C-STORE
    assert r.status == 200, r.body
    srv.wait_for_log("added 1 key images and 0 missing instances", since=mark)
    [case] = cases(srv)
    assert key_images(case) == expected_key_images(study) + [(study.ids[1], 1)]
    assert case["History"] == "first reader\n\nsecond reader"


@pytest.mark.parametrize("kind, reason", [
    ("nothing", "references no instance"),
    ("other-study", "references instances of other studies"),
    ("of-interest", "not a teaching title"),
    ("clinical-trial", "not a teaching title"),
    ("frame-9-of-4", "makes no case: KeyImages[2].Frame: instance"),
])
def test_bad_or_other_key_objects_are_stored_and_make_no_case(make_server, tmp_path, kind, reason):
    srv = make_server()
    study = Study(tmp_path / "study", patient_id="TCE4")
    storescu(srv, study.files)
    h = study.headers
    other = kos_synth.header(synth.ct_instance(index=1, rows=32, cols=32, patient_id="TCE4", study="elsewhere"))
    kos = {"nothing": lambda: kos_synth.hospital_kos(h[0], [], seed=kind),
           "other-study": lambda: kos_synth.hospital_kos(h[0], [(h[0], []), (other, [])], seed=kind),
           "of-interest": lambda: kos_synth.hospital_kos(h[0], [(h[0], [])], seed=kind,
                                                         title=("113000", "DCM", "Of Interest")),
           "clinical-trial": lambda: kos_synth.hospital_kos(h[0], [(h[0], [])], seed=kind,
                                                            title=("128711", "DCM", "For Clinical Trial Export")),
           "frame-9-of-4": lambda: kos_synth.hospital_kos(h[0], [(h[0], []), (h[3], [2, 9])], seed=kind,
                                                          title=("113004", "DCM", "For Teaching")),
           }[kind]()
    mark = srv.log_mark()
    storescu(srv, [write(tmp_path / "bad.dcm", kos_synth.part10(kos))])
    line = srv.wait_for_log(reason, since=mark).splitlines()[-1]
    assert kos.SOPInstanceUID in line and "no case" in line
    assert srv.get_json("/cases") == []
    kos_id = public_ids("TCE4", study.uid, str(kos.SeriesInstanceUID), str(kos.SOPInstanceUID))[3]
    assert srv.get(f"/instances/{kos_id}").status == 200        # kept, as any instance
    assert "Traceback" not in srv.settled_log()


def test_with_anonymize_on_ingest_the_draft_is_made_of_the_anonymized_copies(make_server, tmp_path):
    srv = make_server({"AnonymizeOnIngest": True})
    study = Study(tmp_path / "study", patient_id="REAL-PATIENT")
    kos_path, _ = teaching_kos(study, tmp_path, description="Mr Real Patient, room 12", delay=DELAY)
    storescu(srv, study.files)
    mark = srv.log_mark()
    storescu(srv, [kos_path])
    srv.wait_for_log("TCE: draft case", since=mark)
    [case] = cases(srv)
    # the case names the stored (anonymized) instances: the only ones there are
    stored = set(srv.get_json("/instances"))
    assert len(stored) == 5 and not set(study.ids) & stored
    [anon_study] = srv.get_json("/studies")
    assert case["Studies"] == [anon_study]
    tags = {i: srv.get_json(f"/instances/{i}/simplified-tags") for i in stored}
    anon = {(t["Modality"], t["InstanceNumber"]): i for i, t in tags.items()}
    # the KOS's evidence and its content's image references were mapped to the same new UIDs; of its
    # content tree the codes (title modifier: the delay reason) and the references (with their frames)
    # are kept, the description (free text: it names the patient here) is not
    assert key_images(case) == [(anon[("CT", "1")], 1), (anon[("CT", "3")], 1), (anon[("OT", "1")], 2),
                                (anon[("OT", "1")], 3)]
    assert tags[anon[("KO", "1")]]["PatientID"] != "REAL-PATIENT"
    assert case["Missing"] == [] and case["History"] == ""
    assert case["DelayReason"] == "Delay export until final report is available"
    assert "REAL-PATIENT" not in json.dumps(case) and "Real Patient" not in json.dumps(case)
    stored_kos = pydicom.dcmread(io.BytesIO(srv.get(f"/instances/{anon[('KO', '1')]}/file").body))
    assert [i.ValueType for i in stored_kos.ContentSequence] == ["CODE", "IMAGE", "IMAGE", "IMAGE"]
    assert "Real Patient" not in str(stored_kos) and "REAL-PATIENT" not in str(stored_kos)
    assert stored_kos.ConceptNameCodeSequence[0].CodeValue == "113004"
    assert "Key object content: codes, image references kept" in list(stored_kos.DeidentificationMethod)
    # dciodvfy: no error (the anonymized study has no date, time or ID: DICOMDIR warnings only)
    verify(stored_kos, tmp_path / "anonymized-kos.dcm", also_allowed=("needed to build DICOMDIR",))
    # the board's KOS and GSPS of the draft are stored as they are, in the anonymized study (the
    # ingest transform would map their UIDs a second time, into a study of their own)
    images = case["KeyImages"]
    images[0]["Annotations"] = [{"Type": "text", "Points": [[3, 3]], "Text": "look"}]
    assert srv.request("PUT", f"/cases/{case['ID']}", json.dumps({"KeyImages": images})).status == 200
    srv.post_json(f"/cases/{case['ID']}/publish", {})
    stored = srv.post_json(f"/cases/{case['ID']}/store-key-objects", {})
    for iid in stored["KeyObjects"] + stored["PresentationStates"]:
        assert srv.get_json(f"/instances/{iid}/study")["ID"] == anon_study
    assert srv.get_json("/studies") == [anon_study] and len(srv.get_json("/cases")) == 1


def test_case_limits_cut_what_a_kos_brings_and_say_so(caplog):
    doc = {"KeyImages": [{"Instance": str(n)} for n in range(MAX_KEY_IMAGES + 3)],
           "Missing": [{"SOPInstanceUID": str(n)} for n in range(MAX_MISSING + 1)],
           "History": "é" * MAX_TEXT_BYTES}
    fitted = tce._fit(doc, "1.2.3")
    assert len(fitted["KeyImages"]) == MAX_KEY_IMAGES and fitted["KeyImages"][-1]["Instance"] == str(MAX_KEY_IMAGES - 1)
    assert len(fitted["Missing"]) == MAX_MISSING
    assert len(fitted["History"].encode()) == MAX_TEXT_BYTES and set(fitted["History"]) == {"é"}
    assert len([r for r in caplog.records if "1.2.3" in r.getMessage()]) == 3
    small = {"KeyImages": [{"Instance": "a"}], "Missing": [], "History": "short"}
    assert tce._fit(dict(small), "x") == small


def test_key_object_downloads_several_studies_and_what_a_student_may_fetch(make_server, tmp_path):
    teacher = {"Authorization": "Basic " + base64.b64encode(b"teacher-a:pw-a-long-enough").decode()}
    srv = make_server({"AuthenticationEnabled": True, "RegisteredUsers": {"teacher-a": "pw-a-long-enough"},
                       "StudentAccess": "open", "StudentDownloads": True})
    one = Study(tmp_path / "one", patient_id="TCE5", study="a", deidentified=True)
    two = Study(tmp_path / "two", patient_id="TCE5", study="b", deidentified=True)
    for f in one.files + two.files:
        assert srv.post("/instances", f.read_bytes(), headers=teacher).status == 200
    body = {"Title": "Two studies", "Studies": [one.study_id, two.study_id],
            "KeyImages": [{"Instance": one.ids[0], "Frame": 1}, {"Instance": two.ids[3], "Frame": 4,
                                                                 "Zoom": 2}]}
    r = srv.request("POST", "/cases", json.dumps(body), headers=teacher)
    assert r.status == 200, r.body
    case = r.json()
    r = srv.get(f"/cases/{case['ID']}/key-object", headers=teacher)
    assert r.status == 200 and r.headers["Content-Type"] == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(r.body))
    assert z.namelist() == ["KO001.dcm", "KO002.dcm"]
    studies = []
    for n, name in enumerate(z.namelist()):
        kos = pydicom.dcmread(io.BytesIO(z.read(name)))
        verify(kos, tmp_path / f"k{n}.dcm")
        studies.append(kos.StudyInstanceUID)
    assert studies == [one.uid, two.uid]
    r = srv.get(f"/cases/{case['ID']}/presentation-states", headers=teacher)
    [name] = zipfile.ZipFile(io.BytesIO(r.body)).namelist()
    # a draft: not found for a student, whatever the route; published: the downloads are the student's
    for path in ("key-object", "presentation-states"):
        r = srv.get(f"/cases/{case['ID']}/{path}")
        assert r.status == 404 and "Message" in r.json()
    assert srv.post(f"/cases/{case['ID']}/store-key-objects", "{}").status in (401, 403)
    assert srv.post(f"/cases/{case['ID']}/publish", "{}", headers=teacher).status == 200
    mine = srv.get(f"/cases/{case['ID']}/key-object", headers=teacher).body
    assert srv.get(f"/cases/{case['ID']}/key-object").body == mine       # the same file as the teacher's
    kos = pydicom.dcmread(io.BytesIO(zipfile.ZipFile(io.BytesIO(mine)).read("KO001.dcm")))
    assert kos.PatientIdentityRemoved == "YES"     # carried from the images
    assert srv.get("/cases/no-such-case/key-object", headers=teacher).status == 404
    # a case without key images has no key object: 404 with the reason, not a 500
    r = srv.request("POST", "/cases", json.dumps({"Title": "empty"}), headers=teacher)
    r = srv.get(f"/cases/{r.json()['ID']}/key-object", headers=teacher)
    assert r.status == 404 and "no key images" in r.json()["Message"]
    # the patient gets an identifiable instance: students no longer see the key images' instances, and
    # the case's KOS and GSPS (made from their headers) are not theirs either; the teacher's stay
    assert srv.post("/instances", synth.ct_instance(index=9, rows=8, cols=8, patient_id="TCE5", study="c"),
                    headers=teacher).status == 200
    for path in ("key-object", "presentation-states", "key-images/0/rendered", "key-images/1/rendered"):
        r = srv.get(f"/cases/{case['ID']}/{path}")
        assert r.status == 404 and "Message" in r.json(), (path, r.status)
        assert srv.get(f"/cases/{case['ID']}/{path}", headers=teacher).status == 200, path


def test_a_study_deleted_with_force_takes_its_missing_instances_out_of_the_draft(make_server, tmp_path):
    """A draft waits for instances of its study; the teacher deletes the study with ?force: the draft
    no longer lists them (they could never become key images), and when they come again they are
    not refused one batch after another. A study taken out by a PUT: listed until they arrive."""
    srv = make_server()
    study = Study(tmp_path / "study")
    kos_path, _ = teaching_kos(study, tmp_path)
    storescu(srv, study.files[:1])
    mark = srv.log_mark()
    storescu(srv, [kos_path])
    srv.wait_for_log("TCE: draft case", since=mark)
    [case] = cases(srv)
    assert len(case["Missing"]) == 2 and key_images(case) == [(study.ids[0], 1)]
    assert srv.request("DELETE", f"/studies/{study.study_id}").status == 409
    r = srv.request("DELETE", f"/studies/{study.study_id}?force")
    assert r.status == 200, r.body
    case = srv.get_json(f"/cases/{case['ID']}")
    assert case["Studies"] == [] and case["KeyImages"] == [] and case["Missing"] == []
    mark = srv.log_mark()
    storescu(srv, [*study.files, kos_path])     # all again, the KOS too: a new draft, the old one as it is
    srv.wait_for_log("TCE: draft case", since=mark)
    assert "cannot be added" not in srv.log[mark:]
    assert srv.get_json(f"/cases/{case['ID']}")["Missing"] == []
    [again] = [c for c in cases(srv) if c["ID"] != case["ID"]]
    assert key_images(again) == expected_key_images(study) and again["Missing"] == []

    # the other door: the teacher's PUT takes the study out of a draft that waits for instances
    other = Study(tmp_path / "other", patient_id="TCE2", study="st2")
    kos2, _ = teaching_kos(other, tmp_path, name="kos2")
    storescu(srv, other.files[:1])
    mark = srv.log_mark()
    storescu(srv, [kos2])
    srv.wait_for_log("TCE: draft case", since=mark)
    [draft] = [c for c in cases(srv) if c["Studies"] == [other.study_id]]
    assert len(draft["Missing"]) == 2
    r = srv.request("PUT", f"/cases/{draft['ID']}", json.dumps({"Studies": [], "KeyImages": []}))
    assert r.status == 200, r.body
    mark = srv.log_mark()
    storescu(srv, other.files[1:])
    srv.wait_for_log("arrived in a study it no longer has", since=mark)
    for _ in range(100):      # the two may come in two batches: the second is told a moment later
        if not srv.get_json(f"/cases/{draft['ID']}")["Missing"]:
            break
        time.sleep(0.1)
    assert srv.get_json(f"/cases/{draft['ID']}")["Missing"] == []
    assert "cannot be added" not in srv.log[mark:]

    # the patient deleted with ?force: the same as its study
    third = Study(tmp_path / "third", patient_id="TCE3", study="st3")
    kos3, _ = teaching_kos(third, tmp_path, name="kos3")
    storescu(srv, third.files[:1])
    mark = srv.log_mark()
    storescu(srv, [kos3])
    srv.wait_for_log("TCE: draft case", since=mark)
    [draft] = [c for c in cases(srv) if c["Studies"] == [third.study_id]]
    assert len(draft["Missing"]) == 2
    patient = srv.get_json(f"/studies/{third.study_id}")["ParentPatient"]
    assert srv.request("DELETE", f"/patients/{patient}?force").status == 200
    assert srv.get_json(f"/cases/{draft['ID']}")["Missing"] == []
    assert "Traceback" not in srv.settled_log()


def test_with_anonymize_on_ingest_a_kos_before_its_study_fills_in_its_frames(make_server, tmp_path):
    """The anonymized KOS keeps its image references with their frames: instances that arrive after it
    become the key images it names, frame by frame."""
    srv = make_server({"AnonymizeOnIngest": True})
    study = Study(tmp_path / "study", patient_id="REAL-PATIENT")
    kos_path, _ = teaching_kos(study, tmp_path, delay=DELAY)
    mark = srv.log_mark()
    storescu(srv, [kos_path])
    srv.wait_for_log("TCE: draft case", since=mark)
    [case] = cases(srv)
    assert case["KeyImages"] == [] and len(case["Missing"]) == 3
    mark = srv.log_mark()
    storescu(srv, study.files)
    srv.wait_for_log("(0 still missing)", since=mark)
    case = srv.get_json(f"/cases/{case['ID']}")
    tags = {i: srv.get_json(f"/instances/{i}/simplified-tags") for i in srv.get_json("/instances")}
    anon = {(t["Modality"], t["InstanceNumber"]): i for i, t in tags.items()}
    assert sorted(key_images(case)) == sorted([(anon[("CT", "1")], 1), (anon[("CT", "3")], 1),
                                               (anon[("OT", "1")], 2), (anon[("OT", "1")], 3)])
    assert case["Missing"] == [] and case["DelayReason"] == DELAY[2]


def test_anonymizing_a_study_whose_kos_made_a_draft_makes_no_second_draft(make_server, tmp_path):
    """POST /studies/{id}/anonymize copies the study's teaching KOS too (Orthanc's anonymize copies
    every instance): the copy is stored, but the draft stays the one made from the original (the
    case page's De-identify moves it onto the copies); a teaching KOS received anew still makes one."""
    srv = make_server()
    study = Study(tmp_path / "study", patient_id="TCE7", study="st7")
    kos_path, _ = teaching_kos(study, tmp_path)
    storescu(srv, study.files)
    mark = srv.log_mark()
    storescu(srv, [kos_path])
    srv.wait_for_log("TCE: draft case", since=mark)
    [draft] = cases(srv)
    mark = srv.log_mark()
    r = srv.request("POST", f"/studies/{study.study_id}/anonymize", json.dumps({}))
    assert r.status == 200, r.body
    srv.wait_for_log("is a copy (anonymized or modified) of the key object case", since=mark)
    assert [c["ID"] for c in cases(srv)] == [draft["ID"]]
    copy = r.json()["ID"]
    assert any(s["MainDicomTags"].get("Modality") == "KO" for s in srv.get_json(f"/studies/{copy}/series"))
    # another study's teaching KOS: a draft as ever
    other = Study(tmp_path / "other", patient_id="TCE8", study="st8")
    kos2, _ = teaching_kos(other, tmp_path, name="kos2")
    storescu(srv, other.files)
    mark = srv.log_mark()
    storescu(srv, [kos2])
    srv.wait_for_log("TCE: draft case", since=mark)
    assert len(cases(srv)) == 2
