"""The Orthanc-compatible REST core, through HTTP against a real server."""

import base64
import io
import json
import zipfile

import pydicom

from .helpers import TEST_FILES
from .synth import ct_instance

CT = (TEST_FILES / "CT_small.dcm").read_bytes()
CT_IDS = {"patient": "fa558bce-587a86d3-ad0da9b3-9d043d9d-4f5c5718",
          "study": "8a8cf898-ca27c490-d0c7058c-929d0581-2bbf104d",
          "series": "93034833-163e42c3-bc9a428b-194620cf-2c5799e5",
          "instance": "f689ddd2-662f8fe1-8b18180d-ec2a2cee-937917af"}


def upload(server, data):
    r = server.post("/instances", data)
    assert r.status == 200, r.body
    return r.json()


def test_upload_then_already_stored(server):
    first = upload(server, CT)
    assert first == {"ID": CT_IDS["instance"], "ParentPatient": CT_IDS["patient"], "ParentStudy": CT_IDS["study"],
                     "ParentSeries": CT_IDS["series"], "Path": f"/instances/{CT_IDS['instance']}", "Status": "Success"}
    assert upload(server, CT)["Status"] == "AlreadyStored"
    assert len(server.stored_files()) == 1


def test_hierarchy_routes_and_shapes(server):
    upload(server, CT)
    p = server.get_json(f"/patients/{CT_IDS['patient']}")
    assert set(p) == {"ID", "IsStable", "Labels", "LastUpdate", "MainDicomTags", "Studies", "Type"}
    assert p["MainDicomTags"]["PatientName"] == "CompressedSamples^CT1" and p["Type"] == "Patient"
    st = server.get_json(f"/studies/{CT_IDS['study']}")
    assert set(st) == {"ID", "IsStable", "Labels", "LastUpdate", "MainDicomTags", "ParentPatient",
                       "PatientMainDicomTags", "Series", "Type"}
    assert st["PatientMainDicomTags"]["PatientID"] == "1CT1"
    se = server.get_json(f"/series/{CT_IDS['series']}")
    assert set(se) == {"ExpectedNumberOfInstances", "ID", "Instances", "IsStable", "Labels", "LastUpdate",
                       "MainDicomTags", "ParentStudy", "Status", "Type"}
    assert se["MainDicomTags"]["Modality"] == "CT" and se["Status"] == "Unknown"
    i = server.get_json(f"/instances/{CT_IDS['instance']}")
    assert set(i) == {"FileSize", "FileUuid", "ID", "IndexInSeries", "Labels", "MainDicomTags", "ParentSeries",
                      "Type"}
    assert i["FileSize"] == len(CT) and i["IndexInSeries"] == 1

    assert [s["ID"] for s in server.get_json(f"/patients/{CT_IDS['patient']}/studies")] == [CT_IDS["study"]]
    assert [s["ID"] for s in server.get_json(f"/patients/{CT_IDS['patient']}/instances")] == [CT_IDS["instance"]]
    assert [s["ID"] for s in server.get_json(f"/studies/{CT_IDS['study']}/series")] == [CT_IDS["series"]]
    assert server.get_json(f"/instances/{CT_IDS['instance']}/patient")["ID"] == CT_IDS["patient"]
    assert server.get_json(f"/instances/{CT_IDS['instance']}/study")["ID"] == CT_IDS["study"]
    assert server.get_json(f"/series/{CT_IDS['series']}/study")["ID"] == CT_IDS["study"]
    assert server.get(f"/patients/{CT_IDS['patient']}/patient").status == 404
    stats = server.get_json(f"/studies/{CT_IDS['study']}/statistics")
    assert stats["CountInstances"] == 1 and stats["DiskSize"] == str(len(CT))


def test_lists_expand_since_limit(server):
    for k in range(5):
        upload(server, ct_instance(rows=8, cols=8, patient_id=f"P{k}", study=f"s{k}"))
    ids = server.get_json("/patients")
    assert len(ids) == 5
    assert server.get_json("/patients?since=1&limit=2") == ids[1:3]
    assert server.get_json("/patients?since=3") == ids[3:]
    expanded = server.get_json("/studies?expand")
    assert len(expanded) == 5 and all(e["Type"] == "Study" for e in expanded)
    assert server.get("/patients?limit=abc").status == 400


def test_file_route_is_a_dcm_download(server):
    upload(server, CT)
    r = server.get(f"/instances/{CT_IDS['instance']}/file")
    assert r.status == 200 and r.body == CT
    assert r.headers["Content-Type"] == "application/dicom"
    assert ".dcm" in r.headers["Content-Disposition"] and "attachment" in r.headers["Content-Disposition"]


def test_tags_in_orthanc_formats(server):
    upload(server, CT)
    base = f"/instances/{CT_IDS['instance']}"
    full = server.get_json(f"{base}/tags")
    assert full["0010,0010"] == {"Name": "PatientName", "Type": "String", "Value": "CompressedSamples^CT1"}
    assert full["7fe0,0010"] == {"Name": "PixelData", "Type": "Null", "Value": None}
    assert full["0009,1001"]["PrivateCreator"] == "GEMS_IDEN_01"
    assert server.get_json(f"{base}/tags?short")["0028,0010"] == "128"
    simple = server.get_json(f"{base}/simplified-tags")
    assert simple["PatientID"] == "1CT1" and simple["Rows"] == "128"
    assert simple == server.get_json(f"{base}/tags?simplify")
    header = server.get_json(f"{base}/header")
    assert header["0002,0010"]["Value"] == "1.2.840.10008.1.2.1"
    content = server.get_json(f"{base}/content")
    assert "0010-0010" in content
    assert server.get(f"{base}/content/0010-0010").body.rstrip() == b"CompressedSamples^CT1"
    assert server.get(f"{base}/content/0008-1140").status == 404


def test_sequences_in_tags_and_content(server):
    up = upload(server, (TEST_FILES / "rtplan.dcm").read_bytes())
    base = f"/instances/{up['ID']}"
    full = server.get_json(f"{base}/tags")
    seq = full["300a,0010"]
    assert seq["Type"] == "Sequence" and seq["Value"][0]["300a,0012"]["Value"] == "1"
    assert server.get_json(f"{base}/content/300a-0010") == ["0", "1"]  # as Orthanc answers
    assert "300a-0012" in server.get_json(f"{base}/content/300a-0010/0")
    assert server.get(f"{base}/content/300a-0010/0/300a-0012").body.strip() == b"1"


def test_metadata(server):
    upload(server, CT)
    meta = server.get_json(f"/instances/{CT_IDS['instance']}/metadata?expand")
    assert meta["Origin"] == "RestApi" and meta["RemoteIP"] == "127.0.0.1"
    assert meta["TransferSyntax"] == "1.2.840.10008.1.2.1" and meta["SopClassUid"] == "1.2.840.10008.5.1.4.1.1.2"
    assert set(server.get_json(f"/instances/{CT_IDS['instance']}/metadata")) == set(meta)
    r = server.get(f"/instances/{CT_IDS['instance']}/metadata/TransferSyntax")
    assert r.body == b"1.2.840.10008.1.2.1"


def test_delete_reports_remaining_ancestor_and_removes_files(server):
    a = upload(server, ct_instance(rows=8, cols=8, index=1))
    b = upload(server, ct_instance(rows=8, cols=8, index=2))
    assert len(server.stored_files()) == 2
    r = server.delete(f"/instances/{a['ID']}")
    assert r.status == 200
    assert r.json() == {"RemainingAncestor": {"ID": b["ParentSeries"], "Path": f"/series/{b['ParentSeries']}",
                                              "Type": "Series"}}
    assert len(server.stored_files()) == 1
    assert server.delete(f"/instances/{a['ID']}").status == 404
    assert server.delete(f"/studies/{b['ParentStudy']}").json() == {"RemainingAncestor": None}
    assert server.get_json("/patients") == []
    assert server.stored_files() == []
    upload(server, CT)
    assert server.delete(f"/studies/{CT_IDS['patient']}").status == 404  # a patient ID is not a study


def test_errors_are_json_with_a_message(server):
    for path in ("/nope", f"/instances/{'0' * 8}", "/studies/xyz/series"):
        r = server.get(path)
        assert r.status == 404
        body = r.json()
        assert body["HttpStatus"] == 404 and body["Message"]
    r = server.post("/instances", b"this is not DICOM at all, but it is long enough to be checked")
    assert r.status == 400 and "not a DICOM file" in r.json()["Message"]
    r = server.post("/instances", CT[:-1000])
    assert r.status == 400 and "truncated" in r.json()["Message"]
    assert server.post("/instances", b"").status == 400
    assert server.get_json("/statistics")["CountInstances"] == 0
    assert server.stored_files() == []
    r = server.post("/tools/find", "{not json")
    assert r.status == 400 and "JSON" in r.json()["Message"]
    assert "Traceback" not in server.settled_log()   # every line written while the requests were answered


def _zip(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            info = zipfile.ZipInfo(name)  # keeps hostile names as given (writestr(str) would clean them)
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return buf.getvalue()


def test_zip_upload_with_hostile_and_non_dicom_members(server, tmp_path):
    z = _zip([("case1/CT_small.dcm", CT), ("../../escape.dcm", ct_instance(rows=8, cols=8, index=5)),
              ("/etc/abs.dcm", ct_instance(rows=8, cols=8, index=6)), ("README.txt", b"teaching notes"),
              ("case1/MR.dcm", (TEST_FILES / "MR_small.dcm").read_bytes())])
    r = server.post("/instances", z)
    assert r.status == 200, r.body
    res = r.json()
    stored = [x for x in res if x.get("Status") == "Success"]
    # Orthanc's array: the instances stored, nothing else (a script counting it counts as with Orthanc)
    assert len(stored) == len(res) == 2
    skipped = {x["Filename"]: x for x in r.not_stored() if x["Status"] == "Skipped"}
    assert r.headers["X-Pipacs-Not-Stored-Count"] == "3"
    assert "unsafe" in skipped["../../escape.dcm"]["Message"]
    assert "unsafe" in skipped["/etc/abs.dcm"]["Message"]
    assert "not DICOM" in skipped["README.txt"]["Message"]
    assert server.get_json("/statistics")["CountInstances"] == 2
    assert not (server.workdir / "escape.dcm").exists() and not (server.workdir.parent / "escape.dcm").exists()


def test_zip_bomb_is_refused_before_writing(make_server, small_disk, tmp_path):
    srv = make_server({"StorageDirectory": str(small_disk / "data"), "IndexDirectory": str(tmp_path / "index")})
    # 40 members of 1 MB of zeros: a 40 MB inflation from a ZIP of a few hundred KB, on a 3 MB disk
    members = [(f"m{k}.dcm", b"\0" * 2**20) for k in range(40)]
    z = _zip(members)
    assert len(z) < 2**20
    r = srv.post("/instances", z)
    assert r.status == 507 and "ZIP would inflate to 40 MB" in r.json()["Message"]
    assert srv.stored_files() == []
    assert srv.get_json("/statistics")["CountInstances"] == 0


def test_tools_find(server):
    upload(server, CT)
    upload(server, (TEST_FILES / "MR_small.dcm").read_bytes())
    upload(server, ct_instance(rows=8, cols=8, patient_id="X1", patient_name="Müller^Anna", study_date="20230615",
                               study_description="Knee MRI", modality="MR"))

    def find(level, query, **kw):
        return server.post_json("/tools/find", {"Level": level, "Query": query, **kw})

    assert find("Study", {"PatientName": "*CT*"}) == [CT_IDS["study"]]
    assert find("Study", {"PatientName": "compressed*"}) != []  # names match case-insensitively
    assert len(find("Patient", {"PatientName": "müller*"})) == 1  # beyond ASCII too
    # CaseSensitive (Orthanc 1.10: false unless given) decides for every tag, names included
    assert len(find("Study", {"StudyDescription": "knee*"})) == 1
    assert len(find("Study", {"StudyDescription": "knee*"}, CaseSensitive=True)) == 0
    assert len(find("Study", {"PatientID": "1ct1"})) == 1
    assert find("Study", {"PatientID": "1ct1"}, CaseSensitive=True) == []
    assert find("Study", {"PatientName": "compressed*"}, CaseSensitive=True) == []  # whatever CaseSensitivePN says
    assert len(find("Study", {"PatientName": "Compressed*"}, CaseSensitive=True)) == 2  # CT_small, MR_small
    assert find("Study", {"StudyDate": "20040101-20040131"}) == [CT_IDS["study"]]  # MR_small is of 20040826
    assert len(find("Study", {"StudyDate": "20040101-20041231"})) == 2
    assert find("Study", {"StudyDate": "20040119"}) == [CT_IDS["study"]]
    assert len(find("Study", {"StudyDate": "20230101-"})) == 1
    assert len(find("Study", {"StudyDate": "-20050101"})) == 2
    assert len(find("Study", {"PatientID": "1CT1\\4MR1"})) == 2
    assert len(find("Study", {"ModalitiesInStudy": "MR"})) == 2
    assert len(find("Study", {"Modality": "CT"})) == 1  # a series tag at study level: any series matches
    assert len(find("Instance", {"SOPInstanceUID": "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"})) == 1
    assert len(find("Series", {"PatientName": "?ompressed*"})) == 2
    assert find("Study", {}, Limit=1, Since=1) == [find("Study", {})[1]]
    expanded = find("Study", {"PatientID": "1CT1"}, Expand=True)
    assert expanded[0]["MainDicomTags"]["StudyID"] == "1CT1"
    for bad in ({"Level": "Nonsense", "Query": {}}, {"Level": "Study", "Query": {"StudyDate": "2004-13-01x"}},
                {"Level": "Study", "Query": {"NotATag": "x"}}, {"Level": "Study"}):
        r = server.post("/tools/find", json.dumps(bad))
        assert r.status == 400 and r.json()["Message"], bad


def test_tools_lookup(server):
    upload(server, CT)
    r = server.post("/tools/lookup", "1CT1").json()
    assert r == [{"ID": CT_IDS["patient"], "Path": f"/patients/{CT_IDS['patient']}", "Type": "Patient"}]
    r = server.post("/tools/lookup", "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322").json()
    assert r[0]["Type"] == "Study"


def test_changes(server):
    upload(server, CT)
    upload(server, ct_instance(rows=8, cols=8))
    ch = server.get_json("/changes")
    kinds = [c["ChangeType"] for c in ch["Changes"]]
    assert kinds == ["NewInstance", "NewSeries", "NewStudy", "NewPatient"] * 2
    assert ch["Done"] is True and ch["Last"] == 8
    assert ch["Changes"][0] == {"ChangeType": "NewInstance", "Date": ch["Changes"][0]["Date"],
                                "ID": CT_IDS["instance"], "Path": f"/instances/{CT_IDS['instance']}",
                                "ResourceType": "Instance", "Seq": 1}
    page = server.get_json("/changes?since=2&limit=3")
    assert [c["Seq"] for c in page["Changes"]] == [3, 4, 5] and page["Done"] is False and page["Last"] == 5
    assert server.get_json("/changes?last")["Changes"][0]["Seq"] == 8


def test_authentication(make_server):
    srv = make_server({"AuthenticationEnabled": True, "RegisteredUsers": {"teacher": "s3cret"}})
    r = srv.get("/system")
    assert r.status == 401 and "Basic" in r.headers["WWW-Authenticate"]
    bad = base64.b64encode(b"teacher:wrong").decode()
    assert srv.get("/system", headers={"Authorization": f"Basic {bad}"}).status == 401
    good = base64.b64encode(b"teacher:s3cret").decode()
    r = srv.get("/system", headers={"Authorization": f"Basic {good}"})
    assert r.status == 200 and r.json()["DicomAet"] == "PIPACS"
    r = srv.post("/instances", CT, headers={"Authorization": f"Basic {good}"})
    iid = r.json()["ID"]
    meta = srv.get(f"/instances/{iid}/metadata/HttpUsername", headers={"Authorization": f"Basic {good}"})
    assert meta.body == b"teacher"


def test_malformed_authorization_is_unauthorized_not_an_error(make_server):
    """Whatever the Authorization header holds, a wrong one is a 401 in Orthanc's JSON shape, never a 500."""
    srv = make_server({"AuthenticationEnabled": True, "RegisteredUsers": {"teacher": "s3cret", "müller": "pw"}})

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()
    for header in ["Basic", "Basic ", "Basic !!!", f"Basic {b64(b'teacher')}", f"Bearer {b64(b'teacher:s3cret')}",
                   f"Basic {b64(b'teacher:s3cret')[:-2]}", f"Basic {b64(bytes([0xFF, 0xFE]) + b':pw')}",
                   "Basic \u00e9t\u00e9", "Basic teacher:s3cret"]:
        r = srv.get("/system", headers={"Authorization": header})
        assert r.status == 401, (header, r.status, r.body)
        assert r.json()["HttpError"] == "Unauthorized" and r.json()["Message"] == "wrong user name or password", \
            header
    # a user name outside ASCII, sent as UTF-8 (as browsers and curl do)
    assert srv.get("/system", headers={"Authorization": f"basic {b64('müller:pw'.encode())}"}).status == 200


def test_system_reports_actual_ports(server):
    s = server.get_json("/system")
    assert s["DicomPort"] == server.dicom_port and s["HttpPort"] == server.http_port
    assert s["DicomAet"] == "PIPACS" and s["ApiVersion"] >= 16 and s["Name"] == "pipacs"


def test_disk_full_fails_cleanly_and_keeps_what_was_stored(make_server, small_disk, tmp_path):
    """A real ENOSPC: storage on a 3 MB tmpfs, instances of 256 KB until it is full."""
    mnt = small_disk
    if True:
        srv = make_server({"StorageDirectory": str(mnt / "data"), "IndexDirectory": str(tmp_path / "index")})
        stored, statuses = [], []
        for k in range(20):
            data = ct_instance(rows=256, cols=512, index=k + 1)
            r = srv.post("/instances", data)
            statuses.append(r.status)
            if r.status == 200:
                stored.append((r.json()["ID"], data))
            else:
                assert r.status == 507, r.body
                assert "full" in r.json()["Message"]
        assert 507 in statuses and stored
        for iid, data in stored:
            assert srv.get(f"/instances/{iid}/file").body == data
        assert not list(mnt.glob("data/??/??/*.tmp"))
        # the DICOM side says A700 (out of resources)
        from pynetdicom import AE
        from pynetdicom.sop_class import CTImageStorage
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS")
        st = assoc.send_c_store(pydicom.dcmread(io.BytesIO(ct_instance(rows=256, cols=512, index=99))))
        assoc.release()
        assert st.Status == 0xA700
        srv.stop()
        srv.start()
        assert srv.get_json("/statistics")["CountInstances"] == len(stored)


def test_errors_carry_orthancs_error_codes(server):
    """Scripts test Orthanc's error code, not its words: Orthanc's own Python client treats a 400 with
    OrthancStatus 15 as "not a DICOM file" and fails on a 400 without one."""
    def code(r):
        body = r.json()
        return r.status, body.get("OrthancStatus"), body.get("OrthancError")

    assert code(server.post("/instances", b"this is not DICOM" * 10)) == (400, 15, "Bad file format")
    assert code(server.get("/studies/01234567-89abcdef-01234567-89abcdef-01234567")) == (404, 17, "Unknown resource")
    assert code(server.get("/no-such-route")) == (404, 17, "Unknown resource")
    iid = server.post("/instances", ct_instance(rows=8, cols=8)).json()["ID"]
    assert code(server.get(f"/instances/{iid}/metadata/NoSuchName")) == (404, 7, "Accessing an inexistent item")
    # Orthanc is not uniform: a body that is not JSON is a bad file format to /anonymize, a bad request to find
    assert code(server.post(f"/instances/{iid}/anonymize", b"{not json")) == (400, 15, "Bad file format")
    assert code(server.post(f"/instances/{iid}/anonymize", b'"text"')) == (400, 15, "Bad file format")
    assert code(server.post("/tools/find", b"{not json")) == (400, 8, "Bad request")
    assert code(server.post("/tools/find", json.dumps({"Level": "Nowhere", "Query": {}}).encode()))[:2] == (400, 3)
    assert code(server.post("/tools/find", json.dumps({"Level": "Study", "Query": {"PatientID": 12}}).encode()))[:2] \
        == (400, 8)
    assert code(server.post("/tools/find", json.dumps({"Level": "Study", "Query": {"NoSuchTag": "x"}}).encode()))[:2] \
        == (400, 27)
# ------------------------------------------------------------------ shared tags, modules, /content (issue 18)

def _series_of_three(server) -> tuple[list[str], str]:
    ids = [upload(server, ct_instance(rows=16, cols=16, index=k, patient_id="SYN3"))["ID"] for k in (1, 2, 3)]
    return ids, server.get_json(f"/instances/{ids[0]}")["ParentSeries"]


def test_shared_tags_keep_the_text_values_every_instance_holds(server):
    ids, series = _series_of_three(server)
    shared = server.get_json(f"/series/{series}/shared-tags")
    assert shared["0010,0010"] == {"Name": "PatientName", "Type": "String", "Value": "Doe^Jane"}
    assert "0008,0018" not in shared and "0020,0013" not in shared     # one per instance
    assert "7fe0,0010" not in shared                                    # no text: never shared
    simple = server.get_json(f"/series/{series}/shared-tags?simplify")
    assert simple["PatientName"] == "Doe^Jane" and "SOPInstanceUID" not in simple
    assert server.get_json(f"/series/{series}/shared-tags?short")["0010,0010"] == "Doe^Jane"
    study = server.get_json(f"/series/{series}")["ParentStudy"]
    assert server.get_json(f"/studies/{study}/shared-tags?simplify") == simple
    assert server.get(f"/instances/{ids[0]}/shared-tags").status == 404
    assert server.get(f"/series/{CT_IDS['series']}/shared-tags").status == 404


def test_instances_tags_answer_each_instance_as_its_tags_route(server):
    ids, series = _series_of_three(server)
    every = server.get_json(f"/series/{series}/instances-tags?simplify")
    assert set(every) == set(ids)
    for iid in ids:
        assert every[iid] == server.get_json(f"/instances/{iid}/simplified-tags")
    full = server.get_json(f"/patients/{server.get_json('/patients')[0]}/instances-tags")
    assert full[ids[1]]["0020,0013"]["Value"] == "2"


def test_modules_hold_the_attributes_of_their_level_only(server):
    upload(server, CT)
    patient = server.get_json(f"/patients/{CT_IDS['patient']}/module?simplify")
    assert patient["PatientName"] == "CompressedSamples^CT1" and "StudyDate" not in patient
    assert [x["PatientID"] for x in patient["OtherPatientIDsSequence"]] == ["ABCD1234", "1234ABCD"]
    assert server.get_json(f"/studies/{CT_IDS['study']}/module-patient?simplify") == patient
    study = server.get_json(f"/studies/{CT_IDS['study']}/module?short")
    assert study["0008,0020"] == "20040119" and "0010,0010" not in study and "0008,0060" not in study
    series = server.get_json(f"/series/{CT_IDS['series']}/module")
    assert series["0008,0060"] == {"Name": "Modality", "Type": "String", "Value": "CT"}
    assert "0020,000d" not in series
    inst = server.get_json(f"/instances/{CT_IDS['instance']}/module?simplify")
    assert set(inst) == {"InstanceCreationDate", "InstanceCreationTime", "InstanceCreatorUID", "InstanceNumber",
                         "SOPClassUID", "SOPInstanceUID", "SpecificCharacterSet", "TimezoneOffsetFromUTC"}
    assert server.get(f"/series/{CT_IDS['series']}/module-patient").status == 404
    assert server.get(f"/studies/{CT_IDS['series']}/module").status == 404


def test_content_by_keyword_pixel_items_and_padding(server):
    upload(server, CT)
    inst = f"/instances/{CT_IDS['instance']}"
    listing = server.get_json(f"{inst}/content")
    assert "fffc-fffc" in listing and listing[-2:] == ["7fe0-0010", "fffc-fffc"]   # as Orthanc lists them
    assert server.get(f"{inst}/content/PatientName").body == server.get(f"{inst}/content/0010-0010").body
    assert server.get(f"{inst}/content/OtherPatientIDsSequence/1/PatientID").body.rstrip() == b"1234ABCD"
    assert server.get(f"{inst}/content/patientname").status == 404
    assert server.get_json(f"{inst}/content/7fe0-0010") == ["0"]   # native: one item, the whole value
    pixels = pydicom.dcmread(io.BytesIO(CT)).PixelData
    assert server.get(f"{inst}/content/7fe0-0010/0").body == pixels
    assert server.get(f"{inst}/content/7fe0-0010/1").status == 404

    j2k = (TEST_FILES / "JPEG2000.dcm").read_bytes()
    jid = upload(server, j2k)["ID"]
    fragments = list(pydicom.encaps.generate_fragments(pydicom.dcmread(io.BytesIO(j2k)).PixelData))
    assert server.get_json(f"/instances/{jid}/content/7fe0-0010") == [str(i) for i in range(len(fragments))]
    for n, fragment in enumerate(fragments):   # the offset table first, then each fragment as stored
        r = server.get(f"/instances/{jid}/content/7fe0-0010/{n}")
        assert r.status == 200 and r.body == fragment
    assert server.get(f"/instances/{jid}/content/7fe0-0010/{len(fragments)}").status == 404


def test_ignore_length_shows_long_values(server):
    iid = upload(server, (TEST_FILES / "SC_rgb_rle.dcm").read_bytes())["ID"]
    comments = str(pydicom.dcmread(TEST_FILES / "SC_rgb_rle.dcm").ImageComments)
    assert len(comments) > 256
    assert server.get_json(f"/instances/{iid}/tags")["0020,4000"]["Type"] == "TooLong"
    for q in ("ImageComments", "0020-4000", "00204000", "PatientName,0020-4000"):
        shown = server.get_json(f"/instances/{iid}/tags?ignore-length={q}")["0020,4000"]
        assert shown == {"Name": "ImageComments", "Type": "String", "Value": comments}, q
    assert server.get_json(f"/instances/{iid}/simplified-tags?ignore-length=ImageComments")["ImageComments"] == comments
    series = server.get_json(f"/instances/{iid}")["ParentSeries"]
    every = server.get_json(f"/series/{series}/instances-tags?simplify&ignore-length=ImageComments")
    assert every[iid]["ImageComments"] == comments
    for bad in ("NoSuchTag", "", "0020,4000"):
        r = server.get(f"/instances/{iid}/tags?ignore-length={bad}")
        assert r.status == 400 and "ignore-length" in r.json()["Message"], bad


def test_header_leaves_out_the_binary_meta_elements(server):
    upload(server, CT)
    header = server.get_json(f"/instances/{CT_IDS['instance']}/header")
    assert "0002,0001" not in header and header["0002,0010"]["Value"] == "1.2.840.10008.1.2.1"
    assert all(v["Type"] == "String" for v in header.values())
    assert "FileMetaInformationVersion" not in server.get_json(f"/instances/{CT_IDS['instance']}/header?simplify")


def test_file_as_dicom_json_when_asked_for_exactly_that(server):
    upload(server, CT)
    path = f"/instances/{CT_IDS['instance']}/file"
    r = server.get(path, headers={"Accept": "application/dicom+json"})
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/dicom+json")
    doc = r.json()
    ds = pydicom.dcmread(io.BytesIO(CT))
    assert doc["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert base64.b64decode(doc["7FE00010"]["InlineBinary"]) == ds.PixelData    # everything inline
    assert not any(k.startswith("0002") for k in doc)
    for accept in ("application/dicom+json, */*", "application/json", "*/*"):
        assert server.get(path, headers={"Accept": accept}).body == CT, accept


def test_person_names_keep_their_empty_trailing_groups(server):
    from .synth import variant
    for stored in (b"Yamada^Tarou=", b"A^B=="):
        data = variant(CT, stored.decode(), person_name=stored)
        assert stored in data
        r = upload(server, data)
        inst, text = f"/instances/{r['ID']}", stored.decode()
        assert server.get_json(f"{inst}/simplified-tags")["PatientName"] == text
        assert server.get_json(f"{inst}/tags?short")["0008,0090"] == text
        assert server.get(f"{inst}/content/PatientName").body.rstrip(b" ") == stored
        assert server.get_json(f"/patients/{r['ParentPatient']}")["MainDicomTags"]["PatientName"] == text
        assert server.post_json("/tools/find", {"Level": "Patient", "Query": {"PatientName": text}}) == [
            r["ParentPatient"]]
        dicom_json = server.get(f"{inst}/file", headers={"Accept": "application/dicom+json"}).json()
        groups = dicom_json["00100010"]["Value"][0]
        assert groups["Alphabetic"] == text.split("=")[0] and len(groups) == text.count("=") + 1
        # the stored file is the bytes sent, and a copy made from it keeps the name
        assert stored in server.get(f"{inst}/file").body
        assert stored in server.post(f"{inst}/modify", "{}").body
def _form(files):
    """A body as a browser's <input type=file multiple> form sends it."""
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    out = b""
    for name, data in files:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_form_upload_of_several_files_and_a_zip(server):
    mr = (TEST_FILES / "MR_small.dcm").read_bytes()
    body, headers = _form([("CT_small.dcm", CT), ("notes.txt", b"teaching notes"),
                           ("case.zip", _zip([("a/MR.dcm", mr), ("a/readme.txt", b"x"), ("a/CT.dcm", CT)]))])
    r = server.post("/instances", body, headers=headers)
    assert r.status == 200, r.body
    res = r.json()
    assert [x["Status"] for x in res] == ["Success", "Success", "AlreadyStored"]   # only instances, as for a ZIP
    assert res[0]["ID"] == CT_IDS["instance"]
    assert {x["Filename"]: x["Status"] for x in r.not_stored()} == {"notes.txt": "Skipped",
                                                                   "case.zip/a/readme.txt": "Skipped"}
    assert server.get_json("/statistics")["CountInstances"] == 2
    body, headers = _form([("one.dcm", CT)])
    r = server.post("/instances", body, headers=headers)
    assert r.status == 200 and [x["Status"] for x in r.json()] == ["AlreadyStored"] and r.not_stored() == []
    body, headers = _form([("broken.zip", b"PK\x03\x04 and nothing of a ZIP after it"), ("one.dcm", CT)])
    r = server.post("/instances", body, headers=headers)
    assert r.status == 200 and len(r.json()) == 1
    assert [(x["Filename"], x["Status"]) for x in r.not_stored()] == [("broken.zip", "Skipped")]
    body, headers = _form([("notes.txt", b"just text")])
    r = server.post("/instances", body, headers=headers)
    assert r.status == 400 and "notes.txt" in r.json()["Message"]
    for bad in (b"no parts here", b""):
        r = server.post("/instances", bad, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
        assert r.status == 400 and "multipart" in r.json()["Message"], r.body
    r = server.post("/instances", b"--xyz--\r\n", headers={"Content-Type": "multipart/form-data"})
    assert r.status == 400 and "boundary" in r.json()["Message"]


def test_form_upload_limits_apply_to_each_part(make_server):
    srv = make_server({"MaximumInstanceSize": 1, "MaximumZipMembers": 2})
    big = bytes(3 * 2**19)    # 1.5 MB: not a ZIP, so one instance, over MaximumInstanceSize
    body, headers = _form([("big.dcm", big), ("CT_small.dcm", CT)])
    r = srv.post("/instances", body, headers=headers)
    assert r.status == 200, r.body
    assert [x["ID"] for x in r.json()] == [CT_IDS["instance"]]
    (failed,) = r.not_stored()
    assert failed["Filename"] == "big.dcm" and failed["Status"] == "Failure"
    assert "MaximumInstanceSize" in failed["Message"]
    body, headers = _form([("big.dcm", big)])
    r = srv.post("/instances", body, headers=headers)
    assert r.status == 413 and "MaximumInstanceSize" in r.json()["Message"]
    # a ZIP part: its members within MaximumZipMembers, as a ZIP upload's
    three = _zip([(f"{k}.dcm", ct_instance(rows=8, cols=8, index=k, patient_id="FORMZ")) for k in (1, 2, 3)])
    body, headers = _form([("three.zip", three)])
    r = srv.post("/instances", body, headers=headers)
    assert r.status == 413 and "MaximumZipMembers" in r.json()["Message"]
    # parts: at most MaximumZipMembers of them
    body, headers = _form([(f"{k}.dcm", ct_instance(rows=8, cols=8, index=k, patient_id="FORMP")) for k in (1, 2, 3)])
    r = srv.post("/instances", body, headers=headers)
    assert r.status == 413 and "MaximumZipMembers" in r.json()["Message"]
    assert srv.get_json("/statistics")["CountInstances"] == 3   # CT_small and the two parts before the limit


def test_tools_find_case_sensitive_ignores_case_sensitive_pn(make_server):
    """CaseSensitivePN is for C-FIND and QIDO-RS; /tools/find's CaseSensitive decides alone (Orthanc 1.10)."""
    srv = make_server({"CaseSensitivePN": True})
    upload(srv, CT)

    def find(query, **kw):
        return srv.post_json("/tools/find", {"Level": "Study", "Query": query, **kw})

    assert find({"PatientName": "compressedsamples^ct1"}) == [CT_IDS["study"]]
    assert find({"PatientName": "compressedsamples^ct1"}, CaseSensitive=False) == [CT_IDS["study"]]
    assert find({"PatientName": "compressedsamples^ct1"}, CaseSensitive=True) == []
    assert find({"PatientName": "CompressedSamples^CT1"}, CaseSensitive=True) == [CT_IDS["study"]]
    r = srv.post("/tools/find", json.dumps({"Level": "Study", "Query": {}, "CaseSensitive": "yes"}))
    assert r.status == 400 and "CaseSensitive" in r.json()["Message"]
