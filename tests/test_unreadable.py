"""A study with one stored file that pydicom cannot read back (stored by an earlier version,
whose ingest accepted unknown VRs such as XX) still answers C-FIND, QIDO-RS, WADO-RS metadata
and downloads for its readable instances, with a warning naming the unreadable one; the routes
about that one instance answer a clear JSON error, and its bytes are still served (issue 17)."""

from __future__ import annotations

import io
import json
import zipfile

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as StudyFind,  # type: ignore[attr-defined]
)

from .helpers import Server
from .synth import ct_instance

MANUFACTURER = b"\x08\x00\x70\x00LO"   # (0008,0070) LO, explicit VR little endian: not an indexed tag


def unreadable_copy(data: bytes) -> bytes:
    """The same file with Manufacturer's VR made XX: same length, same UIDs, pydicom cannot decode it."""
    at = data.index(MANUFACTURER)
    bad = data[:at + 4] + b"XX" + data[at + 6:]
    with pytest.raises(NotImplementedError):    # the premise: pydicom cannot read it back
        pydicom.dcmread(io.BytesIO(bad), force=True).to_json_dict()
    return bad


@pytest.fixture
def poisoned(make_server):
    """Three instances of one study; the first one's stored file overwritten with an unreadable copy."""
    srv: Server = make_server({"AuthenticationEnabled": False})
    files = [ct_instance(rows=8, cols=8, index=i, patient_id="POISON") for i in (1, 2, 3)]
    ids = []
    for data in files:
        r = srv.post("/instances", data)
        assert r.status == 200, r.body
        ids.append(r.json()["ID"])
    bad_id = ids[0]
    uuid = srv.get_json(f"/instances/{bad_id}")["FileUuid"]
    [path] = [p for p in srv.stored_files() if p.name.startswith(uuid)]
    path.write_bytes(unreadable_copy(path.read_bytes()))
    ds = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)
    return srv, ids, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), [
        str(pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID) for f in files]


def c_find(srv: Server, level: str, **keys) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="FINDER")
    ae.add_requested_context(StudyFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS")
    assert assoc.is_established
    q = Dataset()
    q.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(q, k, v)
    try:
        return [(int(s.Status), i) for s, i in assoc.send_c_find(q, StudyFind)]
    finally:
        assoc.release()


def test_c_find_study_with_non_indexed_key(poisoned):
    srv, ids, study, _series, _sops = poisoned
    mark = srv.log_mark()
    got = c_find(srv, "STUDY", StudyInstanceUID=study, Manufacturer="", InstitutionName="")
    assert [s for s, _ in got] == [0xFF00, 0x0000], got
    answer = got[0][1]
    assert answer.StudyInstanceUID == study
    assert answer.Manufacturer == "pipacs synth"    # read from a readable instance of the study
    srv.wait_for_log(f"instance {ids[0]} skipped", since=mark)


def test_c_find_image_level(poisoned):
    srv, _ids, study, series, sops = poisoned
    got = c_find(srv, "IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID="",
                 PixelSpacing="")
    assert got[-1][0] == 0x0000, got
    answers = {str(i.SOPInstanceUID): i for s, i in got if s == 0xFF00}
    assert set(answers) == set(sops)          # the index still knows the unreadable one
    assert answers[sops[1]].PixelSpacing        # from its file (PixelSpacing is not indexed)
    assert not answers[sops[0]].get("PixelSpacing")   # its file cannot be read: the value is left empty


def test_qido_with_include_field(poisoned):
    srv, _ids, study, _series, _sops = poisoned
    r = srv.get(f"/dicom-web/studies?StudyInstanceUID={study}&includefield=00080070")
    assert r.status == 200, r.body
    [answer] = r.json()
    assert answer["00080070"]["Value"] == ["pipacs synth"]
    r = srv.get(f"/dicom-web/studies/{study}/instances?includefield=00080070")
    assert r.status == 200, r.body
    assert len(r.json()) == 3


@pytest.mark.parametrize("scope", ["study", "series"])
def test_wado_metadata_skips_the_unreadable(poisoned, scope):
    srv, ids, study, series, sops = poisoned
    mark = srv.log_mark()
    url = f"/dicom-web/studies/{study}/metadata" if scope == "study" else \
        f"/dicom-web/studies/{study}/series/{series}/metadata"
    r = srv.get(url)
    assert r.status == 200, r.body
    got = {m["00080018"]["Value"][0] for m in r.json()}
    assert got == set(sops[1:])
    srv.wait_for_log(f"instance {ids[0]} cannot be read", since=mark)


def test_routes_about_the_unreadable_instance(poisoned):
    srv, ids, study, series, sops = poisoned
    bad, good = ids[0], ids[1]
    for path in [f"/instances/{bad}/tags", f"/instances/{bad}/simplified-tags", f"/instances/{bad}/content",
                 f"/instances/{bad}/content/0010-0010",
                 f"/dicom-web/studies/{study}/series/{series}/instances/{sops[0]}/metadata"]:
        r = srv.get(path)
        assert r.status == 500, (path, r.status, r.body[:300])
        body = r.json()
        assert "cannot be read" in body["Message"] and bad in body["Message"], body
        assert "Traceback" not in r.body.decode() and "NotImplementedError" not in r.body.decode()
    assert srv.get(f"/instances/{good}/tags").status == 200
    assert srv.get(f"/instances/{good}/content/0008-0070").body.rstrip(b" \0") == b"pipacs synth"
    r = srv.get(f"/instances/{bad}/file")
    assert r.status == 200 and b"XX" in r.body
    header = srv.get_json(f"/instances/{bad}/header?simplify")    # the file meta group reads fine
    assert header["MediaStorageSOPInstanceUID"] == sops[0]


def test_downloads_keep_going(poisoned):
    srv, ids, _study, _series, _sops = poisoned
    study_id = srv.get_json(f"/instances/{ids[0]}/study")["ID"]
    for kind in ("archive", "media"):
        r = srv.get(f"/studies/{study_id}/{kind}")
        assert r.status == 200, (kind, r.status, r.body[:300])
        names = zipfile.ZipFile(io.BytesIO(r.body)).namelist()
        files = [n for n in names if not n.endswith("/") and not n.endswith("DICOMDIR")]
        assert len(files) == 3, (kind, names)      # the unreadable file's bytes are in too (OTHER/ on media)
    r = srv.post("/tools/create-media", json.dumps({"Resources": [study_id]}))
    assert r.status == 200



@pytest.mark.parametrize("level", ["patients", "studies", "series"])
def test_anonymize_and_modify_leave_the_unreadable_out_and_say_so(poisoned, level):
    """A teacher's case is still anonymized; the answer (Orthanc's, plus FailedInstances) names
    what was left out, and nothing of the source is lost."""
    srv, ids, _study, _series, sops = poisoned
    bad = ids[0]
    parent_route = {"patients": "patient", "studies": "study", "series": "series"}[level]
    parent = srv.get_json(f"/instances/{bad}/{parent_route}")["ID"]
    mark = srv.log_mark()
    r = srv.post(f"/{level}/{parent}/anonymize", "{}")
    assert r.status == 200, r.body[:300]
    answer = r.json()
    assert answer["FailedInstancesCount"] == 1 and answer["InstancesCount"] == 3, answer
    [failed] = answer["FailedInstances"]
    assert failed["ID"] == bad and "cannot be read" in failed["Message"] and "XX" in failed["Message"], failed
    made = srv.get_json(f"{answer['Path']}/instances")
    assert len(made) == 2
    for inst in made:      # each made copy reads whole, and is anonymized
        tags = srv.get_json(f"/instances/{inst['ID']}/simplified-tags")
        assert tags["PatientID"] != "POISON" and tags["SOPInstanceUID"] not in sops
    srv.wait_for_log(f"instance {bad} cannot be read", since=mark)

    modify = {"Replace": {"PatientID": "P2", "PatientName": "B"}, "Force": True} if level == "patients" else \
        {"Replace": {"InstitutionName": "Teaching"}}
    r = srv.post(f"/{level}/{parent}/modify", json.dumps({**modify, "KeepSource": False}))
    assert r.status == 200, r.body[:300]
    answer = r.json()
    assert answer["FailedInstancesCount"] == 1 and [f["ID"] for f in answer["FailedInstances"]] == [bad]
    assert "the source was kept" in answer["FailedInstances"][0]["Message"]
    assert len(srv.get_json(f"{answer['Path']}/instances")) == 2
    assert srv.get(f"/{level}/{parent}").status == 200          # KeepSource false, yet kept: nothing lost
    assert srv.get(f"/instances/{bad}/file").status == 200


def test_anonymize_and_modify_of_the_unreadable_instance_itself(poisoned):
    """Instance-level modify wrote the undecodable element back raw (a file nobody can read, answered
    200): now the same clear error as the instance's other routes; a readable one is unchanged."""
    srv, ids, _study, _series, _sops = poisoned
    bad, good = ids[0], ids[1]
    for action, body in (("modify", {"Replace": {"InstitutionName": "Teaching"}}), ("anonymize", {})):
        r = srv.post(f"/instances/{bad}/{action}", json.dumps(body))
        assert r.status == 500, (action, r.status, r.body[:200])
        message = r.json()["Message"]
        assert "cannot be read" in message and bad in message and "/file" in message, message
        assert "Traceback" not in r.body.decode() and "NotImplementedError" not in r.body.decode()
        r = srv.post(f"/instances/{good}/{action}", json.dumps(body))
        assert r.status == 200
        pydicom.dcmread(io.BytesIO(r.body)).to_json_dict()      # reads whole
    # a series whose every file is unreadable: nothing to make, the same clear error
    only = ct_instance(rows=8, cols=8, index=9, patient_id="POISON", series="alone")
    r = srv.post("/instances", only)
    assert r.status == 200
    alone = r.json()["ID"]
    uuid = srv.get_json(f"/instances/{alone}")["FileUuid"]
    [path] = [p for p in srv.stored_files() if p.name.startswith(uuid)]
    path.write_bytes(unreadable_copy(path.read_bytes()))
    series_id = srv.get_json(f"/instances/{alone}/series")["ID"]
    r = srv.post(f"/series/{series_id}/anonymize", "{}")
    assert r.status == 500 and alone in r.json()["Message"], (r.status, r.body[:300])
    assert srv.get(f"/series/{series_id}").status == 200
