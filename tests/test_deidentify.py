"""De-identification that keeps what teaching needs: the PS3.15 Annex E options of
POST /{level}/{id}/anonymize and the teacher's defaults (GET/PUT /pipacs/deidentification),
on real files through a real server."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from appliance.teaching.deid_options import TextCleaner, age_between, shift_datetime

from .helpers import TEST_FILES, dcmtk
from .synth import ct_instance

CODES = {"113100": "Basic Application Confidentiality Profile", "113105": "Clean Descriptors Option",
         "113106": "Retain Longitudinal Temporal Information Full Dates Option",
         "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
         "113108": "Retain Patient Characteristics Option", "113109": "Retain Device Identity Option",
         "113112": "Retain Institution Identity Option"}
TEACHING = ["RetainPatientCharacteristics", "RetainLongitudinalModifiedDates", "CleanDescriptors"]


def _instance(**kw) -> bytes:
    """A synthetic CT instance with the patient characteristics and descriptors a case has."""
    extra = {k: kw.pop(k) for k in list(kw) if k[:1].isupper()}
    ds = pydicom.dcmread(io.BytesIO(ct_instance(rows=16, cols=16, **kw)))
    ds.PatientWeight = 71.5
    ds.PatientSize = 1.68
    ds.EthnicGroup = "W"
    ds.AcquisitionDate = ds.StudyDate
    ds.AcquisitionTime = "101630.250"
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = "101631"
    ds.InstanceCreationDate = ds.StudyDate
    ds.InstanceCreationTime = "101700"
    ds.StationName = "CT-ROOM-4"
    ds.InstitutionName = "Saint Elsewhere Hospital"
    for k, v in extra.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _store(srv, data: bytes) -> dict:
    r = srv.post("/instances", data)
    assert r.status == 200, r.body[:300]
    return r.json()


def _first_file(srv, study_id: str) -> Dataset:
    inst = srv.get_json(f"/studies/{study_id}/instances")
    return pydicom.dcmread(io.BytesIO(srv.get(f"/instances/{inst[0]['ID']}/file").body))


def _anonymize(srv, study_id: str, body: dict) -> Dataset:
    answer = srv.post_json(f"/studies/{study_id}/anonymize", body)
    return _first_file(srv, answer["ID"])


def _codes(ds: Dataset) -> dict[str, str]:
    return {item.CodeValue: item.CodeMeaning for item in ds.get("DeidentificationMethodCodeSequence", [])
            if item.CodingSchemeDesignator == "DCM"}


def _day(da: str) -> dt.date:
    return dt.date(int(da[:4]), int(da[4:6]), int(da[6:8]))


# ------------------------------------------------------------------------------- the options, one by one

def test_retain_patient_characteristics_keeps_age_sex_size_weight(server):
    sid = _store(server, _instance(patient_id="PC1", birth_date="19700315", study_date="20240102"))["ParentStudy"]
    plain = _anonymize(server, sid, {})
    assert "PatientSex" not in plain or not plain.PatientSex      # the Basic Profile: gone
    assert "PatientWeight" not in plain and "PatientAge" not in plain and "EthnicGroup" not in plain
    assert "DeidentificationMethodCodeSequence" not in plain      # as before: no option, no codes
    kept = _anonymize(server, sid, {"Options": ["RetainPatientCharacteristics"]})
    assert kept.PatientSex == "F" and float(kept.PatientWeight) == 71.5 and float(kept.PatientSize) == 1.68
    assert kept.EthnicGroup == "W"
    assert kept.PatientAge == "053Y"            # computed from the birth date on the study's day ...
    assert not kept.get("PatientBirthDate")      # ... which the profile still empties
    assert kept.PatientIdentityRemoved == "YES"
    assert _codes(kept) == {"113100": CODES["113100"], "113108": CODES["113108"]}
    assert "Retain Patient Characteristics Option" in kept.DeidentificationMethod
    assert not kept.get("StudyDate") and "StudyDescription" not in kept   # the other options are not applied


def test_modified_dates_keep_the_interval_between_two_studies_of_one_patient(server):
    first = _store(server, _instance(patient_id="LONG1", study="baseline", study_date="20240102"))["ParentStudy"]
    follow = _store(server, _instance(patient_id="LONG1", study="followup", study_date="20240315"))["ParentStudy"]
    other = [_store(server, _instance(patient_id=f"OTHER{k}", study_date="20240102"))["ParentStudy"] for k in range(3)]
    opts = {"Options": ["RetainLongitudinalModifiedDates"]}
    a = _anonymize(server, first, opts)          # two separate calls, not Deterministic: only the
    b = _anonymize(server, follow, opts)         # patient and the board's secret decide the shift
    assert a.StudyDate != "20240102" and b.StudyDate != "20240315"
    assert (_day(b.StudyDate) - _day(a.StudyDate)).days == (dt.date(2024, 3, 15) - dt.date(2024, 1, 2)).days
    shift = (_day(a.StudyDate) - dt.date(2024, 1, 2)).days
    assert -3652 <= shift <= -365
    for ds, true in ((a, dt.date(2024, 1, 2)), (b, dt.date(2024, 3, 15))):
        for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate"):
            assert (_day(ds[kw].value) - true).days == shift, kw
        # times kept, to the fraction
        assert (ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime, ds.ContentTime) == \
            ("101500", "101600", "101630.250", "101631")
        assert ds.InstanceCreationTime == "101700"
        assert not ds.get("PatientBirthDate")    # Table E.1-1: no option keeps it
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert _codes(ds) == {"113100": CODES["113100"], "113107": CODES["113107"]}
    # the same patient once more gets the same dates; other patients get their own shifts
    assert _anonymize(server, first, opts).StudyDate == a.StudyDate
    others = {_anonymize(server, s, opts).StudyDate for s in other}
    assert len(others | {a.StudyDate}) > 1
    # the index's study date is the shifted one (what the explorer shows)
    new_study = server.post_json(f"/studies/{first}/anonymize", opts)["ID"]
    assert server.get_json(f"/studies/{new_study}")["MainDicomTags"]["StudyDate"] == a.StudyDate


def test_full_dates_keep_dates_unmodified(server):
    sid = _store(server, _instance(patient_id="FULL1", study_date="20240102"))["ParentStudy"]
    ds = _anonymize(server, sid, {"Options": ["RetainLongitudinalFullDates"]})
    assert ds.StudyDate == ds.ContentDate == ds.InstanceCreationDate == "20240102"
    assert ds.StudyTime == "101500" and not ds.get("PatientBirthDate")
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert "113106" in _codes(ds)


DIRTY_STUDY = "CT chest - 55F Dr. Smith DOE 2024-01-02 044 123 45 67"   # 53 of LO's 64
DIRTY_SERIES = "AXIAL jane ACC777 3 Jan 2024 Saint Elsewhere Hospital"


def test_clean_descriptors_removes_identifying_text(server):
    data = _instance(patient_id="MRN4711", accession="ACC777", study_description=DIRTY_STUDY,
                     series_description=DIRTY_SERIES, ProtocolName="CHEST MRN4711 ROUTINE",
                     ImageComments="seen by Dr. House, called 555-0199-77", ReferringPhysicianName="Smith^John")
    sid = _store(server, data)["ParentStudy"]
    plain = _anonymize(server, sid, {})
    assert "StudyDescription" not in plain and "SeriesDescription" not in plain     # as before
    clean = _anonymize(server, sid, {"Options": ["CleanDescriptors"]})
    assert clean.StudyDescription == "CT chest"
    assert clean.SeriesDescription == "AXIAL"
    assert clean.ProtocolName == "CHEST ROUTINE"
    assert clean.ImageComments == "seen by, called"
    assert _codes(clean) == {"113100": CODES["113100"], "113105": CODES["113105"]}
    # with the patient's characteristics kept, "55F" may stay in the text too
    both = _anonymize(server, sid, {"Options": ["CleanDescriptors", "RetainPatientCharacteristics"]})
    assert both.StudyDescription == "CT chest - 55F"
    # the institution's name stays only when its identity is kept
    inst = _anonymize(server, sid, {"Options": ["CleanDescriptors", "RetainInstitutionIdentity"]})
    assert inst.SeriesDescription == "AXIAL Saint Elsewhere Hospital"
    assert inst.InstitutionName == "Saint Elsewhere Hospital" and "113112" in _codes(inst)
    keep = _anonymize(server, sid, {"Options": ["KeepDescriptors"]})
    assert keep.StudyDescription == DIRTY_STUDY and keep.SeriesDescription == DIRTY_SERIES
    assert _codes(keep) == {"113100": CODES["113100"]}   # keeping them is no Annex E option ...
    assert "Descriptors kept unchanged (not cleaned)" in keep.DeidentificationMethod   # ... but said
    # nothing of the text that was removed is anywhere in the cleaned file
    raw = server.get(f"/instances/{server.get_json('/studies/' + server.post_json(f'/studies/{sid}/anonymize', {'Options': ['CleanDescriptors']})['ID'] + '/instances')[0]['ID']}/file").body
    for secret in (b"Smith", b"DOE", b"jane", b"MRN4711", b"ACC777", b"2024-01-02", b"044 123", b"House", b"Elsewhere"):
        assert secret.lower() not in raw.lower(), secret


def test_device_identity(server):
    sid = _store(server, _instance(patient_id="DEV1", DeviceSerialNumber="SN-778899"))["ParentStudy"]
    plain = _anonymize(server, sid, {})
    assert plain.get("StationName") != "CT-ROOM-4" and plain.get("DeviceSerialNumber") != "SN-778899"
    ds = _anonymize(server, sid, {"Options": ["RetainDeviceIdentity"]})
    assert ds.StationName == "CT-ROOM-4" and ds.DeviceSerialNumber == "SN-778899" and "113109" in _codes(ds)


def test_case_title_becomes_the_patient_name(server):
    sid = _store(server, _instance(patient_id="TITLE1"))["ParentStudy"]
    answer = server.post_json(f"/studies/{sid}/anonymize", {"CaseTitle": "  Pneumothorax   3 ",
                                                             "Options": ["RetainPatientCharacteristics"]})
    ds = _first_file(server, answer["ID"])
    assert ds.PatientName == "Pneumothorax 3"
    assert server.get_json(f"/patients/{answer['PatientID']}")["MainDicomTags"]["PatientName"] == "Pneumothorax 3"
    assert "Case title as Patient's Name" in ds.DeidentificationMethod
    assert ds.PatientID != "TITLE1"
    # Replace still wins over the title (Orthanc's own key)
    ds = _anonymize(server, sid, {"CaseTitle": "X", "Replace": {"PatientName": "Case^Twelve"}})
    assert ds.PatientName == "Case^Twelve"


def test_bad_options_are_refused_naming_what_is_wrong(server):
    sid = _store(server, _instance(patient_id="BAD1"))["ParentStudy"]
    before = server.get_json("/studies")
    cases = [({"Options": ["RetainEverything"]}, "RetainEverything"),
             ({"Options": "RetainPatientCharacteristics"}, '"Options" must be a list'),
             ({"Options": [7]}, "not an option name"),
             ({"Options": ["CleanDescriptors", "KeepDescriptors"]}, "choose one"),
             ({"Options": ["RetainLongitudinalModifiedDates", "RetainLongitudinalFullDates"]}, "choose one"),
             ({"CaseTitle": 5}, '"CaseTitle" must be text'),
             ({"CaseTitle": "x" * 65}, "64 characters"),
             ({"CaseTitle": "Doe^John"}, "'^'"),
             ({"Optons": []}, "Optons")]
    for body, words in cases:
        r = server.post(f"/studies/{sid}/anonymize", json.dumps(body))
        assert r.status == 400, (body, r.status, r.body[:300])
        assert words in r.json()["Message"], (body, r.json()["Message"])
    # /modify has no such options
    r = server.post(f"/studies/{sid}/modify", json.dumps({"Options": ["CleanDescriptors"]}))
    assert r.status == 400 and "Options" in r.json()["Message"]
    assert server.get_json("/studies") == before          # nothing was made
    # the defaults: the same checks
    for body, words in [({"Options": ["Nope"]}, "Nope"), ({"Options": {}}, '"Options" must be a list'),
                        ({"Options": [], "CaseTitle": "x"}, "CaseTitle"), ([], "JSON object")]:
        r = server.request("PUT", "/pipacs/deidentification", json.dumps(body))
        assert r.status == 400 and words in r.json()["Message"], (body, r.body[:300])
    r = server.request("PUT", "/pipacs/deidentification", "{not json")
    assert r.status == 400
    assert server.get_json("/pipacs/deidentification") == {"Options": []}
    assert "Traceback" not in server.settled_log()


# ------------------------------------------------------------------------------- dciodvfy

def _dciodvfy_errors(path: Path) -> set[str]:
    out = subprocess.run([dcmtk("dciodvfy"), str(path)], capture_output=True, text=True)
    lines = (out.stdout + out.stderr).splitlines()
    # the element paths name the file's own values (UIDs, dates): compare the messages alone
    return {re.sub(r"\s+", " ", x.strip()) for x in lines if x.startswith("Error")}


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm", "synthetic"])
def test_files_anonymized_with_every_option_pass_dciodvfy_without_new_errors(server, tmp_path, name):
    if not Path("/usr/bin/dciodvfy").exists():
        pytest.skip("dicom3tools is not installed")
    data = _instance(patient_id="VFY1") if name == "synthetic" else (TEST_FILES / name).read_bytes()
    iid = _store(server, data)["ID"]
    src = tmp_path / "src.dcm"
    src.write_bytes(server.get(f"/instances/{iid}/file").body)
    for options in (TEACHING, ["RetainLongitudinalFullDates", "KeepDescriptors", "RetainDeviceIdentity",
                               "RetainInstitutionIdentity", "RetainPatientCharacteristics"]):
        r = server.post(f"/instances/{iid}/anonymize", json.dumps({"Options": options, "CaseTitle": "Case 1"}))
        assert r.status == 200, r.body[:300]
        dst = tmp_path / "anon.dcm"
        dst.write_bytes(r.body)
        new_errors = _dciodvfy_errors(dst) - _dciodvfy_errors(src)
        assert not new_errors, (options, new_errors)
        back = pydicom.dcmread(dst)
        assert back.PixelData == pydicom.dcmread(src).PixelData
        assert back.PatientName == "Case 1" and len(_codes(back)) == len([o for o in options if o != "KeepDescriptors"]) + 1


# ------------------------------------------------------------------------------- the teacher's defaults

def test_defaults_apply_when_the_request_names_none_and_survive_a_restart(make_server):
    srv = make_server()
    assert srv.get_json("/pipacs/deidentification") == {"Options": []}
    sid = _store(srv, _instance(patient_id="DEF1", study_date="20240102"))["ParentStudy"]
    r = srv.request("PUT", "/pipacs/deidentification", json.dumps({"Options": TEACHING[::-1]}))
    assert r.status == 200 and r.json() == {"Options": sorted(TEACHING)}
    ds = _anonymize(srv, sid, {})
    assert ds.PatientSex == "F" and ds.StudyDescription == "CHEST" and ds.StudyDate != "20240102"
    assert set(_codes(ds)) == {"113100", "113105", "113107", "113108"}
    shifted = ds.StudyDate
    # a request's own list replaces the defaults: [] is the Basic Profile alone
    bare = _anonymize(srv, sid, {"Options": []})
    assert not bare.get("PatientSex") and not bare.get("StudyDate") and not _codes(bare)
    srv.stop()
    srv.start()
    assert srv.get_json("/pipacs/deidentification") == {"Options": sorted(TEACHING)}
    again = _anonymize(srv, sid, {})
    assert again.StudyDate == shifted and again.PatientSex == "F"    # the same shift after a restart
    # back to none
    assert srv.request("PUT", "/pipacs/deidentification", '{"Options": []}').json() == {"Options": []}
    assert not _codes(_anonymize(srv, sid, {}))


def test_anonymize_on_ingest_applies_the_defaults(make_server, tmp_path):
    srv = make_server({"AnonymizeOnIngest": True})
    assert srv.request("PUT", "/pipacs/deidentification", json.dumps({"Options": TEACHING})).status == 200
    folder = tmp_path / "in"
    folder.mkdir()
    for k in (1, 2):
        (folder / f"IM{k}.dcm").write_bytes(_instance(patient_id="MRN999", patient_name="Doe^Secret", index=k,
                                                      study_date="20240102", study_description=DIRTY_STUDY))
    out = subprocess.run([dcmtk("storescu"), "-aec", "PIPACS", "+sd", "127.0.0.1", str(srv.dicom_port), str(folder)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    studies = srv.get_json("/studies")
    assert len(studies) == 1
    ds = _first_file(srv, studies[0])
    assert ds.PatientID != "MRN999" and "Secret" not in str(ds.PatientName)
    assert ds.PatientSex == "F" and ds.PatientAge == "054Y"
    assert ds.StudyDescription == "CT chest - 55F"
    assert ds.StudyDate != "20240102" and ds.StudyTime == "101500"
    assert set(_codes(ds)) == {"113100", "113105", "113107", "113108"}
    # the same source through REST later lands on the same shifted day as by DICOM
    sid = _store(srv, _instance(patient_id="MRN999", patient_name="Doe^Secret", study="later",
                                study_date="20240202"))["ParentStudy"]
    later = _first_file(srv, sid)
    assert (_day(later.StudyDate) - _day(ds.StudyDate)).days == 31
    for p in srv.stored_files():
        body = p.read_bytes()
        assert b"Doe^Secret" not in body and b"MRN999" not in body and b"Smith" not in body


# ------------------------------------------------------------------------------- the plain functions

def test_cleaner_and_dates_edge_cases():
    ds = Dataset()
    ds.PatientName = "O'Brien^Ann-Marie"
    ds.PatientID = "12"               # too short to tell from ordinary text: left to the other rules
    c = TextCleaner.for_dataset(ds)
    assert c("o'brien ann-marie knee") == "knee"
    assert c("MS lesions, FLAIR") == "MS lesions, FLAIR"          # no title without its dot
    assert c("Ms. Jones FLAIR") == "FLAIR"
    assert c("DWI b0 b500 b1000") == "DWI b0 b500 b1000"
    assert c("T1 3D 1.0 mm 12 slices") == "T1 3D 1.0 mm 12 slices"
    assert c("PET 42 yo 5/4/23") == "PET"
    assert c("2024-01-02") == ""
    assert c("seen by ann-marie\ncontrol 2024-01-02 ,\n\nno change") == "seen by\ncontrol,\n\nno change"   # lines kept
    assert c(" " * 50_000 + "x" + "\t" * 50_000 + ",") == "x"     # long blank runs: tidied in one pass each
    assert shift_datetime("20240229235959.5+0100", -366) == "20230228235959.5+0100"
    assert shift_datetime("2024", -1) is None                     # a year alone cannot be shifted: emptied
    assert age_between("20240101", "20240115") == "014D" and age_between("20231101", "20240102") == "008W"
    assert age_between("20230101", "20240102") == "012M" and age_between("x", "20240102") is None


# ------------------------------------------------------------------------------- the explorer's dialog

@pytest.mark.xdist_group("chromium")
def test_the_explorer_anonymize_dialog_preselects_the_defaults_and_takes_a_case_title(server):
    pages = pytest.importorskip("tests.test_pages", reason="Chromium and selenium are needed")
    from selenium.webdriver.common.by import By

    server.request("PUT", "/pipacs/deidentification",
                   json.dumps({"Options": ["RetainPatientCharacteristics", "CleanDescriptors"]}))
    study = _store(server, _instance(patient_id="UI1", study_description="CT chest Dr. Smith"))["ParentStudy"]
    refused = server.post(f"/studies/{study}/anonymize", json.dumps({"CaseTitle": "a=b"}))
    assert refused.status == 400 and "'='" in refused.json()["Message"]
    drv = pages._browser()
    try:
        pages._open(drv, server.url(f"/#/study/{study}"), f"study:{study}")
        drv.find_element(By.ID, "anonymize").click()
        pages._wait(drv, lambda d: d.find_elements(By.ID, "anonymize-box"), what="the anonymize options")

        def checked() -> list[str]:
            return drv.execute_script("return [...document.querySelectorAll('#anonymize-box input:checked')]"
                                      ".map(i => i.value)")
        assert sorted(checked()) == ["", "CleanDescriptors", "RetainPatientCharacteristics"]   # "": dates removed
        drv.find_element(By.CSS_SELECTOR, 'input[value="RetainLongitudinalModifiedDates"]').click()
        hostile = "<b>Case 7</b><img src onerror>"    # no '=': a person name's separator, refused
        drv.find_element(By.ID, "anonymize-title").send_keys(hostile)
        pages._shot(drv, "explorer-anonymize-options")
        drv.find_element(By.ID, "anonymize-go").click()
        pages._wait(drv, lambda d: "Anonymized copy created" in pages._text(d, "#main"), what="the anonymized study")
        anon = next(s for s in server.get_json("/studies?expand") if s["ID"] != study)
        assert anon["PatientMainDicomTags"]["PatientName"] == hostile
        ds = _first_file(server, anon["ID"])
        assert set(_codes(ds)) == {"113100", "113105", "113107", "113108"}
        assert ds.PatientSex == "F" and ds.StudyDescription == "CT chest"
        # the title is shown as text, never run
        pages._wait(drv, lambda d: hostile in pages._text(d, "#main"), what="the title on the page, as text")
        assert drv.execute_script("return !document.querySelector('main b, main img[onerror]')")
        # the dialog saves new defaults
        drv.find_element(By.ID, "anonymize").click()
        pages._wait(drv, lambda d: d.find_elements(By.ID, "anonymize-box"), what="the options again")
        drv.find_element(By.ID, "deid-RetainPatientCharacteristics").click()
        drv.find_element(By.CSS_SELECTOR, 'input[value="KeepDescriptors"]').click()
        drv.find_element(By.ID, "anonymize-save-defaults").click()
        pages._wait(drv, lambda d: "Saved as your defaults" in pages._text(d, "#anonymize-result"), what="saving")
        assert server.get_json("/pipacs/deidentification") == {"Options": ["KeepDescriptors"]}
    finally:
        drv.quit()


# ------------------------------------------------------------------------------- every attribute of each column

def test_every_attribute_of_an_option_column_gets_the_option_action():
    """Each attribute the options' columns list, in a dataset holding the whole Basic Profile table:
    kept (K), kept with its dates shifted and times as they were (Modified Dates), or kept cleaned (C)."""
    import copy

    from appliance.teaching import annex_e_options as table
    from appliance.teaching.anonymize import Instructions, UidMap, anonymize_dataset, profile
    from appliance.teaching.deid_options import date_shift_days

    from .test_teaching import _full_dataset

    prof = profile("2026c")
    ds, vrs = _full_dataset(prof)
    # the identifiers the cleaner removes get values of their own (the sample gives every LO the same)
    for n, kw in enumerate(("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "AdmissionID",
                            "IssuerOfPatientID", "MedicalRecordLocator", "RequestedProcedureID",
                            "PerformedProcedureStepID", "ScheduledProcedureStepID", "PatientAddress",
                            "PatientTelephoneNumbers", "MilitaryRank", "BranchOfService", "RegionOfResidence",
                            "CountryOfResidence")):
        if kw in ds:
            ds[kw].value = f"ID-{n:03d}"
    for tag in (table.PATIENT_CHARACTERISTICS_KEEP | table.LONGITUDINAL_DATES | table.DESCRIPTORS
                | table.DEVICE_IDENTITY | table.INSTITUTION_IDENTITY):
        assert tag in vrs or prof.action(tag) is None or tag >> 16 in (0x0000, 0x0002), hex(tag)
    key = b"s" * 32
    days = date_shift_days(key, str(ds.PatientID))
    teaching = frozenset({"RetainPatientCharacteristics", "RetainLongitudinalModifiedDates", "CleanDescriptors",
                          "RetainDeviceIdentity", "RetainInstitutionIdentity"})
    out = anonymize_dataset(copy.deepcopy(ds), Instructions(options=teaching, date_key=key), UidMap())
    kept = table.PATIENT_CHARACTERISTICS_KEEP | table.DEVICE_IDENTITY | table.INSTITUTION_IDENTITY
    checked = 0
    for tag, vr in vrs.items():
        if tag in kept:
            assert tag in out and (vr == "SQ" or out[tag].value == ds[tag].value), hex(tag)
        elif tag in table.LONGITUDINAL_DATES or (vr in ("DA", "DT", "TM") and tag not in (0x00100030, 0x00100032)
                                                 and tag not in (0x00080106, 0x00080107, 0x0040DB06, 0x0040DB07)):
            assert tag in out, hex(tag)
            if vr == "TM":
                assert out[tag].value == ds[tag].value, hex(tag)
            elif vr == "DA":
                assert (_day(out[tag].value) - _day(ds[tag].value)).days == days, hex(tag)
            elif vr == "DT":
                assert out[tag].value[8:] == ds[tag].value[8:] and out[tag].value[:8] != ds[tag].value[:8], hex(tag)
        elif tag in table.DESCRIPTORS or tag in table.PATIENT_CHARACTERISTICS_CLEAN:
            assert tag in out, hex(tag)
            if vr in ("LO", "SH", "ST", "LT", "UT", "UC"):
                assert out[tag].value == ds[tag].value, hex(tag)    # nothing identifying in the sample texts
        else:
            continue
        checked += 1
    assert checked > 200
    assert not out.get("PatientBirthDate") and out.LongitudinalTemporalInformationModified == "MODIFIED"
    # Full Dates and Keep Descriptors: the dates and the descriptors exactly as they were
    full = anonymize_dataset(copy.deepcopy(ds), Instructions(options=frozenset({"RetainLongitudinalFullDates",
                                                                                 "KeepDescriptors"})), UidMap())
    for tag in table.LONGITUDINAL_DATES | table.DESCRIPTORS:
        if tag in vrs and vrs[tag] != "SQ":
            assert full[tag].value == ds[tag].value, hex(tag)


def test_a_key_object_keeps_its_codes_and_references_not_its_text() -> None:
    """A Key Object Selection document: the Basic Profile would empty its Content Sequence; its CODE
    items (the TCE delay reason) and image references (frames, the presentation state) are kept, their
    UIDs mapped as the evidence's; TEXT, PNAME and date-times inside the tree are not."""
    from appliance.teaching.anonymize import Instructions, UidMap, anonymize_dataset
    from appliance.teaching.keyobjects import read_key_object

    from . import kos_synth
    image = kos_synth.header(ct_instance(patient_id="KOS-PAT", patient_name="Doe^Jane"))
    ps = kos_synth.hospital_gsps(image)
    kos = kos_synth.hospital_kos(image, [(image, [])], description="Jane Doe, bed 4",
                                 delay=("128715", "DCM", "Delay export until final report is available"),
                                 presentation_state=ps)
    observer = Dataset()
    observer.RelationshipType, observer.ValueType = "HAS OBS CONTEXT", "PNAME"
    observer.ConceptNameCodeSequence = [kos.ConceptNameCodeSequence[0]]
    observer.PersonName = "Smith^Dr"
    kos.ContentSequence[0].ObservationDateTime = "20241205120000"
    kos.ContentSequence.append(observer)
    uids = UidMap(b"k" * 32)
    out = anonymize_dataset(pydicom.dcmread(io.BytesIO(kos_synth.part10(kos))), Instructions(deterministic=True),
                            uids)
    assert [i.ValueType for i in out.ContentSequence] == ["CODE", "IMAGE"]
    assert "ObservationDateTime" not in out.ContentSequence[0]
    for text in ("Jane", "Doe", "Smith", "KOS-PAT", "bed 4"):
        assert text not in str(out), text
    got = read_key_object(out)
    assert got.delay_reason == "Delay export until final report is available" and got.description == ""
    [ref] = got.references
    assert ref.sop_instance_uid == uids(str(image.SOPInstanceUID)) != str(image.SOPInstanceUID)
    inner = out.ContentSequence[1].ReferencedSOPSequence[0].ReferencedSOPSequence[0]
    assert inner.ReferencedSOPInstanceUID == uids(str(ps.SOPInstanceUID))
    # the evidence names the same new UIDs
    evidence = {s.ReferencedSOPInstanceUID for st in out.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence for s in se.ReferencedSOPSequence}
    assert evidence == {uids(str(image.SOPInstanceUID)), uids(str(ps.SOPInstanceUID))}
