"""Teaching-file workflow: anonymize, modify, downloads, labels, metadata, recycling, import."""

from __future__ import annotations

import copy
import io
import json
import re
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.sequence import Sequence

from appliance.teaching.anonymize import (
    AnonymizationError,
    Instructions,
    UidMap,
    anonymize_dataset,
    parse_instructions,
    profile,
)

from .helpers import TEST_FILES, dcmtk, have_orthanc
from .synth import ct_instance, write_series

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# ------------------------------------------------------------------------------- the profile table

_SAMPLE = {"AE": "SCANNER1", "AS": "045Y", "CS": "VALUE", "DA": "20200304", "DT": "20200304101010", "TM": "101010",
           "DS": "1.5", "IS": "7", "LO": "Secret Hospital", "LT": "long secret", "SH": "SECRET", "ST": "secret text",
           "UC": "secret", "UT": "secret", "PN": "Doe^John", "UR": "http://x", "FL": 1.5, "FD": 1.5, "SL": 3,
           "SS": 3, "UL": 3, "US": 3, "SV": 3, "UV": 3, "AT": 0x00100010, "OB": b"\x01\x02", "OW": b"\x01\x02",
           "OD": b"\x01" * 8, "OF": b"\x01" * 4, "OL": b"\x01" * 4, "OV": b"\x01" * 8, "UN": b"\x01\x02"}


def _full_dataset(prof) -> tuple[Dataset, dict[int, str]]:
    """A dataset holding every attribute of the table that the dictionary knows, with a value."""
    ds = Dataset()
    vrs: dict[int, str] = {}
    for tag in prof.actions:
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        if vr == "SQ":
            item = Dataset()
            item.CodeMeaning = "secret"
            item.ReferencedSOPInstanceUID = f"1.2.3.{tag}"
            value = Sequence([item])
        elif vr == "UI":
            value = f"1.2.3.4.{tag}"
        else:
            value = _SAMPLE[vr]
        ds.add_new(tag, vr, value)
        vrs[tag] = vr
    ds.SOPInstanceUID = "1.2.3.4.999"
    ds.Rows = 4                                   # K: not in the table, kept
    ds.PixelData = b"\x07" * 32
    ds.add_new(0x00091010, "LO", "private secret")
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    return ds, vrs


@pytest.mark.parametrize("edition", ["2026c", "2023b"])
def test_every_attribute_of_the_basic_profile_gets_its_action(edition):
    prof = profile(edition)
    ds, vrs = _full_dataset(prof)
    uids = UidMap()
    out = anonymize_dataset(copy.deepcopy(ds), Instructions(dicom_version=edition), uids)
    checked = 0
    for tag, vr in vrs.items():
        action = prof.action(tag)
        if tag in (0x00100010, 0x00100020, 0x00120062, 0x00120063):
            continue   # the anonymized identity and the de-identification marks, checked below
        present = tag in out
        if action == "X":
            assert not present, f"{pydicom.tag.Tag(tag)} should be removed"
        elif action == "Z":
            assert present and (out[tag].value in (None, "", b"") or out[tag].value == []), \
                f"{pydicom.tag.Tag(tag)} should be empty, is {out[tag].value!r}"
        elif action == "D":
            assert present, f"{pydicom.tag.Tag(tag)} should be replaced, not removed"
            if vr not in ("SQ",):
                assert out[tag].value not in (None, "") and out[tag].value != ds[tag].value, pydicom.tag.Tag(tag)
        elif action == "U":
            assert present and out[tag].value == uids(ds[tag].value) != ds[tag].value
        elif action == "U*" and vr == "SQ":
            item = out[tag].value[0]
            assert item.ReferencedSOPInstanceUID == uids(f"1.2.3.{tag}") != f"1.2.3.{tag}"
        checked += 1
    assert checked > 400
    assert out.Rows == 4 and out.PixelData == b"\x07" * 32
    assert 0x00091010 not in out
    assert out.PatientIdentityRemoved == "YES" and edition in out.DeidentificationMethod
    assert out.PatientID != ds.PatientID and str(out.PatientName).startswith("Anonymized")
    assert out.SOPInstanceUID == uids("1.2.3.4.999") and out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    # sequences kept by the profile still have their own identifiers cleaned inside
    assert all(not str(e.value).startswith("Doe") for e in out.iterall() if e.VR == "PN" and e.value)


def test_uid_remapping_is_consistent_and_deterministic_with_a_salt():
    a, b = UidMap(b"k" * 32), UidMap(b"k" * 32)
    assert a("1.2.3") == a("1.2.3") == b("1.2.3") != a("1.2.4")
    assert a("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"   # standard UIDs untouched
    assert UidMap()("1.2.3") != UidMap()("1.2.3")
    assert a.identity("P1") == b.identity("P1") != a.identity("P2")
    assert len(a("1.2.3")) <= 64


def test_request_checks():
    with pytest.raises(AnonymizationError, match="Force"):
        parse_instructions({"Replace": {"PatientID": "X"}}, anonymize=False)
    with pytest.raises(AnonymizationError, match="unknown option"):
        parse_instructions({"Replce": {}}, anonymize=True)
    with pytest.raises(AnonymizationError, match="DicomVersion"):
        parse_instructions({"DicomVersion": "1999"}, anonymize=True)
    with pytest.raises(AnonymizationError, match="unknown tag"):
        parse_instructions({"Remove": ["NoSuchKeyword"]}, anonymize=True)
    ins = parse_instructions({"Keep": ["StudyDescription"], "Replace": {"0010,0010": "Case^One"}}, anonymize=True)
    assert ins.keep == {0x00081030} and ins.replace == {0x00100010: "Case^One"}


def _dciodvfy_errors(path: Path) -> set[str]:
    out = subprocess.run([dcmtk("dciodvfy"), str(path)], capture_output=True, text=True)
    lines = (out.stdout + out.stderr).splitlines()
    return {re.sub(r"\s+", " ", x.strip()) for x in lines if x.startswith("Error")}


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "synthetic"])
def test_anonymized_files_pass_dciodvfy_without_new_errors_and_keep_their_pixels(tmp_path, name):
    if not Path("/usr/bin/dciodvfy").exists():
        pytest.skip("dicom3tools is not installed")
    src = tmp_path / "src.dcm"
    src.write_bytes(ct_instance(rows=32, cols=32) if name == "synthetic" else (TEST_FILES / name).read_bytes())
    ds = pydicom.dcmread(src)
    out = anonymize_dataset(copy.deepcopy(ds), Instructions(), UidMap())
    dst = tmp_path / "anon.dcm"
    out.save_as(dst, enforce_file_format=True)
    new_errors = _dciodvfy_errors(dst) - _dciodvfy_errors(src)
    assert not new_errors, new_errors
    back = pydicom.dcmread(dst)
    assert back.PixelData == pydicom.dcmread(src).PixelData
    assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


# ------------------------------------------------------------------------------- REST: anonymize / modify

def _store_case(srv, patient="PAT1", n=3, **kw):
    for k in range(1, n + 1):
        r = srv.post("/instances", ct_instance(patient_id=patient, rows=16, cols=16, index=k, **kw))
        assert r.status == 200, r.body


def test_anonymize_study_as_orthanc_answers(server):
    _store_case(server)
    sid = server.get_json("/studies")[0]
    r = server.post(f"/studies/{sid}/anonymize", "{}")
    assert r.status == 200, r.body
    a = r.json()
    assert set(a) == {"Description", "FailedInstancesCount", "ID", "InstancesCount", "IsAnonymization", "Path",
                      "PatientID", "Type"}
    assert a["Type"] == "Study" and a["Path"] == f"/studies/{a['ID']}" and a["InstancesCount"] == 3
    assert a["IsAnonymization"] is True and a["ID"] != sid
    study = server.get_json(f"/studies/{a['ID']}")
    assert study["ParentPatient"] == a["PatientID"]
    assert study["PatientMainDicomTags"]["PatientName"].startswith("Anonymized")
    assert study["PatientMainDicomTags"]["PatientID"] != "PAT1"
    assert server.get(f"/studies/{a['ID']}/metadata/AnonymizedFrom").body.decode() == sid
    assert len(server.get_json(f"/studies/{a['ID']}/instances")) == 3
    tags = server.get_json(f"/instances/{server.get_json(f'/studies/{a[chr(73) + chr(68)]}/instances')[0]['ID']}"
                           "/simplified-tags")
    assert tags["PatientIdentityRemoved"] == "YES" and "Basic Profile" in tags["DeidentificationMethod"]
    assert "PatientBirthDate" not in tags or tags["PatientBirthDate"] == ""
    # the source is kept (KeepSource defaults to true); a second anonymization makes another study
    assert server.get(f"/studies/{sid}").status == 200
    b = server.post_json(f"/studies/{sid}/anonymize", {})
    assert b["ID"] != a["ID"]
    # ... unless asked to be deterministic: then the same study again
    c = server.post_json(f"/studies/{sid}/anonymize", {"Deterministic": True})
    d = server.post_json(f"/studies/{sid}/anonymize", {"Deterministic": True, "KeepSource": False})
    assert c["ID"] == d["ID"] and c["PatientID"] == d["PatientID"]
    assert server.get(f"/studies/{sid}").status == 404   # KeepSource false removed the source


def test_anonymize_with_replace_keep_and_instance_file(server):
    _store_case(server)
    sid = server.get_json("/studies")[0]
    a = server.post_json(f"/studies/{sid}/anonymize", {"Replace": {"PatientName": "Case^Twelve"},
                                                      "Keep": ["StudyDescription"]})
    st = server.get_json(f"/studies/{a['ID']}")
    assert st["PatientMainDicomTags"]["PatientName"] == "Case^Twelve"
    assert st["MainDicomTags"]["StudyDescription"] == "CHEST"
    iid = server.get_json("/instances")[0]
    before = len(server.get_json("/instances"))
    r = server.post(f"/instances/{iid}/anonymize", "{}")
    assert r.status == 200 and r.headers["Content-Type"] == "application/dicom"
    ds = pydicom.dcmread(io.BytesIO(r.body))
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientName != "Doe^Jane"
    assert len(server.get_json("/instances")) == before   # Orthanc answers the file, stores nothing


def test_burned_in_annotation_is_refused_unless_forced(server):
    raw = ct_instance(rows=16, cols=16)
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.BurnedInAnnotation = "YES"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    server.post("/instances", buf.getvalue())
    sid = server.get_json("/studies")[0]
    r = server.post(f"/studies/{sid}/anonymize", "{}")
    assert r.status == 400 and "burned-in" in r.json()["Message"]
    assert len(server.get_json("/studies")) == 1
    assert server.post(f"/studies/{sid}/anonymize", '{"Force": true}').status == 200


def test_anonymizing_a_study_whose_files_vanish_leaves_nothing_half_made(server):
    _store_case(server, n=4)
    sid = server.get_json("/studies")[0]
    files = sorted(server.stored_files(), key=lambda p: p.stat().st_mtime)
    files[2].unlink()   # the third instance's file goes while the study is being anonymized
    r = server.post(f"/studies/{sid}/anonymize", "{}")
    assert r.status == 404
    assert server.get_json("/studies") == [sid]
    assert len(server.get_json("/patients")) == 1


def test_modify_study_series_patient(server):
    _store_case(server)
    sid = server.get_json("/studies")[0]
    r = server.post(f"/studies/{sid}/modify", json.dumps({"Replace": {"StudyDescription": "Teaching: lung"}}))
    assert r.status == 200, r.body
    m = r.json()
    assert m["IsAnonymization"] is False and m["ID"] != sid
    st = server.get_json(f"/studies/{m['ID']}")
    assert st["MainDicomTags"]["StudyDescription"] == "Teaching: lung"
    assert st["MainDicomTags"]["StudyInstanceUID"] != server.get_json(f"/studies/{sid}")["MainDicomTags"][
        "StudyInstanceUID"]
    assert st["PatientMainDicomTags"]["PatientID"] == "PAT1"
    assert server.get(f"/studies/{m['ID']}/metadata/ModifiedFrom").body.decode() == sid
    # identifiers need Force, as in Orthanc
    r = server.post(f"/studies/{sid}/modify", json.dumps({"Replace": {"SOPInstanceUID": "1.2.3"}}))
    assert r.status == 400 and "Force" in r.json()["Message"]
    pid = server.get_json("/patients")[0]
    r = server.post(f"/patients/{pid}/modify", json.dumps({"Replace": {"PatientName": "X"}}))
    assert r.status == 400 and "PatientID" in r.json()["Message"]
    p = server.post_json(f"/patients/{pid}/modify", {"Replace": {"PatientID": "CASE7", "PatientName": "Case^7"},
                                                     "Force": True, "KeepSource": False})
    assert server.get_json(f"/patients/{p['ID']}")["MainDicomTags"]["PatientID"] == "CASE7"
    assert server.get(f"/patients/{pid}").status == 404
    se = server.get_json("/series")[0]
    s2 = server.post_json(f"/series/{se}/modify", {"Replace": {"SeriesDescription": "key images"}})
    assert server.get_json(f"/series/{s2['ID']}")["MainDicomTags"]["SeriesDescription"] == "key images"


def test_modify_and_anonymize_refuse_what_cannot_be_written(server):
    _store_case(server, n=1)
    sid = server.get_json("/studies")[0]
    for route in ("modify", "anonymize"):
        for body, words in (({"Replace": {"PixelData": "X"}}, "binary data"),
                            ({"Transcode": 123}, "transfer syntax UID as text"),
                            ({"Replace": {"ImageComments": "x" * 20000}}, None)):
            r = server.post(f"/studies/{sid}/{route}", json.dumps(body))
            assert r.status in (200, 400), (route, body, r.status, r.body[:200])
            if words:
                assert r.status == 400 and words in r.json()["Message"], (route, r.body[:200])
    log = server.settled_log()   # every line written while the requests above were answered
    assert "internal error" not in log and "Traceback" not in log


def test_anonymize_on_ingest(make_server, tmp_path):
    srv = make_server({"AnonymizeOnIngest": True})
    write_series(tmp_path / "in", 3, rows=16, cols=16, patient_name="Doe^Secret", patient_id="MRN123")
    out = subprocess.run([dcmtk("storescu"), "-aec", "PIPACS", "+sd", "127.0.0.1", str(srv.dicom_port),
                          str(tmp_path / "in")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    pats = srv.get_json("/patients?expand")
    assert len(pats) == 1 and len(srv.get_json("/studies")) == 1   # parts of one study stay one
    assert pats[0]["MainDicomTags"]["PatientID"] != "MRN123"
    assert "Secret" not in json.dumps(pats)
    # the same source again (over HTTP) lands in the same anonymized study
    srv.post("/instances", ct_instance(rows=16, cols=16, index=1, patient_name="Doe^Secret", patient_id="MRN123"))
    assert len(srv.get_json("/instances")) == 3
    for p in srv.stored_files():
        assert b"Doe^Secret" not in p.read_bytes() and b"MRN123" not in p.read_bytes()


# ------------------------------------------------------------------------------- downloads

def _zip(resp) -> zipfile.ZipFile:
    assert resp.status == 200, resp.body[:300]
    assert resp.headers["Content-Type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(resp.body))


def test_archive_zip_holds_every_instance_once_in_readable_folders(server):
    _store_case(server, n=3)
    _store_case(server, patient="PAT2", n=2, series="se2", series_description="CORONAL")
    for name in ("CT_small.dcm", "MR_small.dcm"):
        server.post("/instances", (TEST_FILES / name).read_bytes())
    for level in ("patients", "studies", "series"):
        for rid in server.get_json(f"/{level}"):
            z = _zip(server.get(f"/{level}/{rid}/archive"))
            names = z.namelist()
            inst = server.get_json(f"/{level}/{rid}/instances")
            assert len(names) == len(set(names)) == len(inst)
            sops = {pydicom.dcmread(io.BytesIO(z.read(n))).SOPInstanceUID for n in names}
            assert len(sops) == len(inst)
    pid = next(p for p in server.get_json("/patients?expand") if p["MainDicomTags"]["PatientID"] == "PAT1")["ID"]
    names = _zip(server.get(f"/patients/{pid}/archive")).namelist()
    assert names == ["PAT1 Doe Jane/CHEST/CT AXIAL/CT000000.dcm", "PAT1 Doe Jane/CHEST/CT AXIAL/CT000001.dcm",
                     "PAT1 Doe Jane/CHEST/CT AXIAL/CT000002.dcm"]
    every = server.get_json("/patients")
    z = _zip(server.post("/tools/create-archive", json.dumps({"Resources": every})))
    assert len(z.namelist()) == len(server.get_json("/instances"))


@pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed")
def test_archive_names_match_orthanc(server, tmp_path):
    from .orthanc import Orthanc
    ref = Orthanc(tmp_path / "orthanc").start()
    try:
        for name in ("CT_small.dcm", "MR_small.dcm"):
            data = (TEST_FILES / name).read_bytes()
            server.post("/instances", data)
            ref.post("/instances", data)
        for sid in ref.get_json("/studies"):
            ours = _zip(server.get(f"/studies/{sid}/archive")).namelist()
            theirs = zipfile.ZipFile(io.BytesIO(ref.get(f"/studies/{sid}/archive").body)).namelist()
            assert ours == theirs
    finally:
        ref.stop()


def test_media_zip_has_a_valid_dicomdir(server, tmp_path):
    _store_case(server, n=3)
    server.post("/instances", (TEST_FILES / "MR_small.dcm").read_bytes())
    sid = next(s for s in server.get_json("/studies?expand") if s["PatientMainDicomTags"]["PatientID"] == "PAT1")["ID"]
    z = _zip(server.get(f"/studies/{sid}/media"))
    names = z.namelist()
    assert names[0] == "DICOMDIR" and len(names) == 4
    for n in names[1:]:
        assert all(re.fullmatch(r"[A-Z0-9_]{1,8}", part) for part in n.split("/")), n
    z.extractall(tmp_path / "cd")
    dicomdir = tmp_path / "cd" / "DICOMDIR"
    if Path("/usr/bin/dciodvfy").exists():
        assert not _dciodvfy_errors(dicomdir)
    dump = subprocess.run([dcmtk("dcmdump"), str(dicomdir)], capture_output=True, text=True)
    assert dump.returncode == 0 and dump.stdout.count("DirectoryRecordType") >= 6 and "[IMAGE]" in dump.stdout
    fs = FileSet(pydicom.dcmread(dicomdir))
    opened = [inst.load() for inst in fs]
    assert len(opened) == 3 and all(ds.PatientID == "PAT1" for ds in opened)
    z = _zip(server.post("/tools/create-media", json.dumps({"Resources": server.get_json("/studies")})))
    assert len(z.namelist()) == 1 + len(server.get_json("/instances"))


def test_media_of_anonymized_cases_lacking_record_keys(server, tmp_path):
    # de-identified teaching files often lack what a DICOMDIR record must hold (PS3.3 F.5 type 1)
    stored = {}
    for k in range(1, 4):
        ds = pydicom.dcmread(io.BytesIO(ct_instance(rows=8, cols=8, index=k, patient_id="ANON")))
        ds.PatientID = ""
        ds.StudyDate = ""
        ds.StudyTime = ""
        ds.StudyID = ""
        del ds.SeriesNumber
        del ds.InstanceNumber
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        stored[ds.SOPInstanceUID] = buf.getvalue()
        assert server.post("/instances", buf.getvalue()).status == 200
    sid = server.get_json("/studies")[0]
    r = server.get(f"/studies/{sid}/media")
    assert r.status == 200, r.body[:300]
    z = _zip(r)
    z.extractall(tmp_path / "cd")
    dicomdir = tmp_path / "cd" / "DICOMDIR"
    if Path("/usr/bin/dciodvfy").exists():
        assert not _dciodvfy_errors(dicomdir)
    fs = FileSet(pydicom.dcmread(dicomdir))
    opened = {inst.SOPInstanceUID: Path(inst.path).read_bytes() for inst in fs}
    assert opened == stored   # the files themselves are unchanged
    records = {r.DirectoryRecordType: r for r in pydicom.dcmread(dicomdir).DirectoryRecordSequence}
    assert records["STUDY"].StudyDate == "20240102"   # taken from the Series Date
    assert records["PATIENT"].PatientID == "NONE"
    server.wait_for_log("placeholder")


def test_media_with_a_damaged_header_puts_that_file_beside_the_dicomdir(server, tmp_path):
    # SC_rgb_jpeg.dcm's header cannot be written again (Explicit VR announced, Implicit encoded)
    for name in ("CT_small.dcm", "SC_rgb_jpeg.dcm"):
        assert server.post("/instances", (TEST_FILES / name).read_bytes()).status == 200
    r = server.post("/tools/create-media", json.dumps({"Resources": server.get_json("/studies")}))
    assert r.status == 200, r.body[:300]
    z = _zip(r)
    assert z.namelist()[0] == "DICOMDIR" and "OTHER/IM000000" in z.namelist() and len(z.namelist()) == 3
    assert z.read("OTHER/IM000000") == (TEST_FILES / "SC_rgb_jpeg.dcm").read_bytes()
    z.extractall(tmp_path / "cd")
    assert [i.SOPInstanceUID for i in FileSet(pydicom.dcmread(tmp_path / "cd" / "DICOMDIR"))] == \
        [pydicom.dcmread(TEST_FILES / "CT_small.dcm").SOPInstanceUID]
    server.wait_for_log("left out of the DICOMDIR")


def test_a_client_that_goes_away_stops_the_zip(server, tmp_path):
    write_series(tmp_path / "big", 40, rows=512, cols=512, pixel_seed=None)
    for p in sorted((tmp_path / "big").iterdir()):
        server.post("/instances", p.read_bytes())
    sid = server.get_json("/studies")[0]
    s = socket.create_connection(("127.0.0.1", server.http_port))
    s.sendall(f"GET /studies/{sid}/archive HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = s.recv(65536)
    assert b"200 OK" in got
    s.close()
    server.wait_for_log("client went away")
    assert server.get("/system").status == 200
    assert len(_zip(server.get(f"/studies/{sid}/archive")).namelist()) == 40


# ------------------------------------------------------------------------------- labels and notes

def test_labels_and_find(server):
    _store_case(server, patient="A")
    _store_case(server, patient="B")
    a, b = [s["ID"] for s in sorted(server.get_json("/studies?expand"),
                                    key=lambda s: s["PatientMainDicomTags"]["PatientID"])]
    assert server.request("PUT", f"/studies/{a}/labels/Session3-chest").status == 200
    assert server.request("PUT", f"/studies/{a}/labels/quiz").status == 200
    assert server.request("PUT", f"/studies/{b}/labels/quiz").status == 200
    assert server.get_json(f"/studies/{a}/labels") == ["Session3-chest", "quiz"]
    assert server.get_json(f"/studies/{a}")["Labels"] == ["Session3-chest", "quiz"]
    assert server.get_json("/tools/labels") == ["Session3-chest", "quiz"]

    def find(labels, constraint="All"):
        return sorted(server.post_json("/tools/find", {"Level": "Study", "Query": {}, "Labels": labels,
                                                       "LabelsConstraint": constraint}))
    assert find(["Session3-chest"]) == [a]
    assert find(["quiz"]) == sorted([a, b])
    assert find(["quiz", "Session3-chest"]) == [a]
    assert find(["quiz", "Session3-chest"], "Any") == sorted([a, b])
    assert find(["Session3-chest"], "None") == [b]
    assert server.request("DELETE", f"/studies/{a}/labels/quiz").status == 200
    assert server.get_json(f"/studies/{a}/labels") == ["Session3-chest"]
    r = server.request("PUT", f"/studies/{a}/labels/bad%20label")
    assert r.status == 400 and "label" in r.json()["Message"]
    assert server.request("PUT", "/studies/nope/labels/x").status == 404
    server.delete(f"/studies/{a}")
    assert server.get_json("/tools/labels") == ["quiz"]


def test_case_notes_as_metadata(server):
    _store_case(server)
    sid = server.get_json("/studies")[0]
    note = "Look at the left lower lobe – pneumonia"
    assert server.request("PUT", f"/studies/{sid}/metadata/Note", note.encode()).status == 200
    assert server.get(f"/studies/{sid}/metadata/Note").body.decode() == note
    assert "Note" in server.get_json(f"/studies/{sid}/metadata")
    assert server.request("PUT", f"/studies/{sid}/metadata/ReceptionDate", b"x").status == 403
    assert server.request("DELETE", f"/studies/{sid}/metadata/Note").status == 200
    assert server.get(f"/studies/{sid}/metadata/Note").status == 404


# ------------------------------------------------------------------------------- protection and recycling

def _store_patients(srv, names, n=2):
    for p in names:
        for k in range(1, n + 1):
            r = srv.post("/instances", ct_instance(patient_id=p, rows=64, cols=64, index=k))
            if r.status != 200:
                return r
        time.sleep(0.02)   # distinct last-update times
    return None


def test_recycling_deletes_oldest_unprotected_patients_first(make_server):
    srv = make_server({"MaximumPatientCount": 2})
    _store_patients(srv, ["P1", "P2"])
    ids = {p["MainDicomTags"]["PatientID"]: p["ID"] for p in srv.get_json("/patients?expand")}
    assert srv.request("PUT", f"/patients/{ids['P1']}/protected", b"1").status == 200
    assert srv.get(f"/patients/{ids['P1']}/protected").body == b"1"
    _store_patients(srv, ["P3"])
    left = sorted(p["MainDicomTags"]["PatientID"] for p in srv.get_json("/patients?expand"))
    assert left == ["P1", "P3"]          # P2 (oldest unprotected) went; the protected P1 stayed
    changes = srv.get_json("/changes?limit=1000")["Changes"]
    assert any(c["ChangeType"] == "Deleted" and c["ID"] == ids["P2"] for c in changes)


def test_reject_mode_refuses_with_a_clear_status(make_server, tmp_path):
    srv = make_server({"MaximumPatientCount": 1, "MaximumStorageMode": "Reject"})
    _store_patients(srv, ["P1"])
    r = _store_patients(srv, ["P2"])
    assert r is not None and r.status == 507 and "Reject" in r.json()["Message"]
    f = tmp_path / "p3.dcm"
    f.write_bytes(ct_instance(patient_id="P3", rows=16, cols=16))
    out = subprocess.run([dcmtk("storescu"), "-aec", "PIPACS", "127.0.0.1", str(srv.dicom_port), str(f)],
                         capture_output=True, text=True)
    assert "Out of Resources" in out.stderr or "0xa7" in out.stderr.lower() or out.returncode != 0, out.stderr
    assert [p["MainDicomTags"]["PatientID"] for p in srv.get_json("/patients?expand")] == ["P1"]


# ------------------------------------------------------------------------------- import

def _pipacs(*args, **kw):
    return subprocess.run([PY, "-m", "appliance", *args], capture_output=True, text=True, cwd=ROOT, **kw)


def test_import_a_folder_of_1000_files_with_progress_and_summary(server, tmp_path):
    src = tmp_path / "cd"
    write_series(src / "a", 500, rows=8, cols=8, patient_id="IMP1")
    write_series(src / "b" / "deep", 500, rows=8, cols=8, patient_id="IMP2")
    (src / "README.txt").write_text("not dicom")
    (src / "autorun.inf").write_bytes(b"\x00" * 300)
    out = _pipacs("import", str(src), "--port", str(server.http_port))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1000 stored, 0 already stored, 2 skipped (not DICOM), 0 rejected" in out.stdout
    assert "1002/1002" in out.stderr and "file/s" in out.stderr     # the progress bar: count and rate
    assert len(server.get_json("/instances")) == 1000
    again = _pipacs("import", str(src / "a"), "--port", str(server.http_port), "--quiet")
    assert "0 stored, 500 already stored" in again.stdout


def test_import_dicomdir_media_and_zip_reporting_what_is_missing(server, tmp_path):
    # a CD made by our own /media, then one file lost
    _store_case(server, patient="CD1", n=4)
    sid = server.get_json("/studies")[0]
    zipfile.ZipFile(io.BytesIO(server.get(f"/studies/{sid}/media").body)).extractall(tmp_path / "cd")
    server.delete(f"/studies/{sid}")
    lost = max(p for p in (tmp_path / "cd").rglob("IM*") if p.is_file())
    lost.unlink()
    zpath = tmp_path / "case.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("x/one.dcm", ct_instance(patient_id="ZIP1", rows=8, cols=8))
        z.writestr("../evil.dcm", ct_instance(patient_id="ZIP2", rows=8, cols=8))
    out = _pipacs("import", str(tmp_path / "cd"), str(zpath), "--port", str(server.http_port), "--quiet")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "4 stored" in out.stdout and "1 rejected" in out.stdout and "unsafe name" in out.stdout
    assert "1 file(s) named by a DICOMDIR are missing" in out.stdout
    ids = sorted(p["MainDicomTags"]["PatientID"] for p in server.get_json("/patients?expand"))
    assert ids == ["CD1", "ZIP1"]


def test_import_with_anonymize_and_without_an_appliance(server, tmp_path):
    write_series(tmp_path / "s", 2, rows=8, cols=8, patient_id="SECRET9", patient_name="Doe^Secret")
    out = _pipacs("import", str(tmp_path / "s"), "--port", str(server.http_port), "--anonymize", "--quiet")
    assert out.returncode == 0 and "2 stored" in out.stdout
    pats = server.get_json("/patients?expand")
    assert len(pats) == 1 and pats[0]["MainDicomTags"]["PatientID"] != "SECRET9"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _pipacs("import", str(tmp_path / "s"), "--port", str(port))
    assert out.returncode == 1 and "not answering" in out.stderr


def test_import_into_an_appliance_with_passwords(make_server, tmp_path):
    srv = make_server({"AuthenticationEnabled": True, "RegisteredUsers": {"müller": "s3cret"}})
    write_series(tmp_path / "s", 2, rows=8, cols=8, patient_id="AUTH1")
    # the appliance's own configuration names the user (a UTF-8 name: HTTP Basic as browsers send it)
    out = _pipacs("import", str(tmp_path / "s"), "--config", str(srv.config_path), "--port", str(srv.http_port),
                  "--quiet")
    assert out.returncode == 0 and "2 stored" in out.stdout, out.stdout + out.stderr
    out = _pipacs("import", str(tmp_path / "s"), "--port", str(srv.http_port), "--user", "müller",
                  "--password", "wrong", "--quiet")
    assert out.returncode == 1 and "asks for a password" in out.stderr, out.stdout + out.stderr

def test_import_stops_when_the_appliance_is_full(make_server, tmp_path):
    srv = make_server({"MaximumStorageSize": 1, "MaximumStorageMode": "Reject"})   # 1 MB
    write_series(tmp_path / "big", 30, rows=256, cols=256, patient_id="FULL1")     # 130 KB each
    out = _pipacs("import", str(tmp_path / "big"), "--port", str(srv.http_port), "--quiet")
    assert out.returncode == 3
    assert "storage is full" in out.stdout and "file(s) not sent" in out.stdout
    stored = len(srv.get_json("/instances"))
    assert 0 < stored < 30 and f"{stored} stored" in out.stdout


def test_import_progress_reaches_the_web_page(make_server, tmp_path):
    status = tmp_path / "import.json"
    srv = make_server(env={"PIPACS_IMPORT_STATUS_FILE": str(status)})
    write_series(tmp_path / "usb", 20, rows=8, cols=8, patient_id="USB1")
    out = _pipacs("import", str(tmp_path / "usb"), "--port", str(srv.http_port), "--quiet",
                  "--status-file", str(status))
    assert out.returncode == 0, out.stdout + out.stderr
    imp = srv.get_json("/pipacs/status")["Import"]
    assert imp["State"] == "done" and imp["Done"] == imp["Total"] == 20 and imp["Stored"] == 20
    assert str(tmp_path / "usb") in imp["Source"] and "20 stored" in imp["Summary"][0]


def test_derived_resources_name_their_source_in_their_json(server):
    """As Orthanc 1.10: each resource an anonymization or modification made shows the one it came from
    (AnonymizedFrom / ModifiedFrom); a study or patient that was there already does not."""
    _store_case(server)
    sid = server.get_json("/studies")[0]
    src = server.get_json(f"/studies/{sid}")
    src_series = src["Series"][0]
    src_instance = server.get_json(f"/series/{src_series}")["Instances"][0]
    a = server.post_json(f"/studies/{sid}/anonymize", {})
    study = server.get_json(f"/studies/{a['ID']}")
    assert study["AnonymizedFrom"] == sid and "ModifiedFrom" not in study
    assert server.get_json(f"/patients/{a['PatientID']}")["AnonymizedFrom"] == src["ParentPatient"]
    series = server.get_json(f"/series/{study['Series'][0]}")
    assert series["AnonymizedFrom"] == src_series
    by_source = {server.get_json(f"/instances/{i}")["AnonymizedFrom"] for i in series["Instances"]}
    assert src_instance in by_source and len(by_source) == 3
    assert [s.get("AnonymizedFrom") for s in server.get_json(f"/studies/{a['ID']}/series")] == [src_series]
    assert "AnonymizedFrom" not in server.get_json(f"/studies/{sid}")   # the source is no copy
    m = server.post_json(f"/series/{src_series}/modify", {"Replace": {"SeriesDescription": "Teaching"}})
    assert server.get_json(f"/series/{m['ID']}")["ModifiedFrom"] == src_series
    assert server.get_json(f"/series/{m['ID']}")["ParentStudy"] == sid
    assert "ModifiedFrom" not in server.get_json(f"/studies/{sid}")    # the study was there already
    assert "ModifiedFrom" not in server.get_json(f"/patients/{src['ParentPatient']}")


def test_a_replaced_uid_is_the_new_value_in_every_reference(server):
    """Anonymizing with ``Replace`` of StudyInstanceUID (Force): every instance takes the new UID, and so
    does each reference to the old one (an item of Referenced Image Sequence, kept with its UIDs
    mapped), beside the new SOP Instance UID of the image it names."""
    _store_case(server)
    sid = server.get_json("/studies")[0]
    old_uid = server.get_json(f"/studies/{sid}")["MainDicomTags"]["StudyInstanceUID"]
    first = pydicom.dcmread(io.BytesIO(ct_instance(patient_id="PAT1", rows=16, cols=16, index=1)))
    ds = pydicom.dcmread(io.BytesIO(ct_instance(patient_id="PAT1", rows=16, cols=16, index=4)))
    item = Dataset()
    item.ReferencedSOPClassUID = first.SOPClassUID
    item.ReferencedSOPInstanceUID = first.SOPInstanceUID
    item.StudyInstanceUID = old_uid
    ds.ReferencedImageSequence = Sequence([item])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert server.post("/instances", buf.getvalue()).json()["ParentStudy"] == sid
    new = "1.2.826.0.1.3680043.8.498.4242"
    r = server.post_json(f"/studies/{sid}/anonymize", {"Replace": {"StudyInstanceUID": new}, "Force": True})
    tags = {}
    for inst in server.get_json(f"/studies/{r['ID']}/instances"):
        t = server.get_json(f"/instances/{inst['ID']}/simplified-tags")
        assert t["StudyInstanceUID"] == new
        tags[t["InstanceNumber"]] = t
    assert len(tags) == 4
    ref = tags["4"]["ReferencedImageSequence"][0]
    assert ref["StudyInstanceUID"] == new
    assert ref["ReferencedSOPInstanceUID"] == tags["1"]["SOPInstanceUID"] != first.SOPInstanceUID


def test_one_sop_instance_uid_for_many_instances_is_refused(server):
    _store_case(server)
    sid = server.get_json("/studies")[0]
    before = len(server.get_json("/instances"))
    r = server.post(f"/studies/{sid}/modify", json.dumps({"Replace": {"SOPInstanceUID": "1.2.3.4"}, "Force": True}))
    assert r.status == 400 and "SOPInstanceUID" in r.json()["Message"]
    assert len(server.get_json("/instances")) == before
    iid = server.get_json("/instances")[0]
    one = server.post(f"/instances/{iid}/modify", json.dumps({"Replace": {"SOPInstanceUID": "1.2.3.4"}, "Force": True}))
    assert one.status == 200 and pydicom.dcmread(io.BytesIO(one.body)).SOPInstanceUID == "1.2.3.4"


def test_downloads_refuse_a_transcode_they_would_not_apply(server):
    _store_case(server)
    sid = server.get_json("/studies")[0]
    for kind in ("archive", "media"):
        for q in ("transcode", "transcode=", "transcode=1.2.3", "transcode=1.2.840.10008.5.1.4.1.1.2"):
            r = server.get(f"/studies/{sid}/{kind}?{q}")
            assert r.status == 400 and "unknown transfer syntax" in r.json()["Message"], (kind, q)
        r = server.get(f"/studies/{sid}/{kind}?transcode=1.2.840.10008.1.2.1")
        assert r.status == 400 and "not offered" in r.json()["Message"]
        assert server.get(f"/studies/{sid}/{kind}").status == 200
        # Orthanc's POST body says the same
        r = server.post(f"/studies/{sid}/{kind}", '{"Transcode": "1.2.840.10008.1.2.1"}')
        assert r.status == 400 and "not offered" in r.json()["Message"]
        assert server.post(f"/studies/{sid}/{kind}", '{"Transcode": ""}').status == 400
        assert server.post(f"/studies/{sid}/{kind}", "{not json").status == 400
        assert server.post(f"/studies/{sid}/{kind}", "{}").status == 200
    r = server.post("/tools/create-archive", json.dumps({"Resources": [sid], "Transcode": "1.2.840.10008.1.2.1"}))
    assert r.status == 400 and "not offered" in r.json()["Message"]
