"""pipacs as a DICOM client through Orthanc's REST routes: /modalities and /queries."""

import json
import socket
import subprocess

import pydicom
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from .helpers import TEST_FILES, RefusingPort, dcmtk, free_port, wait_listening
from .synth import ct_instance, uid
from .test_qr import StoreSCP

ORTHANC_MODALITY_KEYS = {"AET", "AllowEcho", "AllowEventReport", "AllowFind", "AllowFindWorklist", "AllowGet",
                         "AllowMove", "AllowNAction", "AllowStore", "AllowTranscoding", "Host", "LocalAet",
                         "Manufacturer", "Port", "Timeout", "UseDicomTls"}


def test_modalities_crud(make_server):
    srv = make_server({"DicomModalities": {"pacs": ["MAINPACS", "127.0.0.1", 104]}})
    assert srv.get_json("/modalities") == ["pacs"]
    assert srv.request("PUT", "/modalities/ipad", json.dumps({"AET": "IPAD", "Host": "127.0.0.1",
                                                              "Port": 11112})).status == 200
    assert srv.get_json("/modalities") == ["ipad", "pacs"]
    exp = srv.get_json("/modalities?expand")
    assert set(exp["ipad"]) >= ORTHANC_MODALITY_KEYS and exp["ipad"]["Port"] == 11112
    assert srv.get_json("/modalities/ipad/configuration")["AET"] == "IPAD"
    assert "echo" in srv.get_json("/modalities/ipad")
    r = srv.request("PUT", "/modalities/bad", json.dumps({"AET": "X" * 20, "Host": "h", "Port": 1}))
    assert r.status == 400 and "16" in r.json()["Message"]
    assert srv.delete("/modalities/ipad").status == 200
    assert srv.delete("/modalities/ipad").status == 404
    r = srv.delete("/modalities/pacs")
    assert r.status == 400 and "configuration" in r.json()["Message"]
    # run-time modalities survive a restart
    srv.request("PUT", "/modalities/ws", '["WS", "127.0.0.1", 4006]')
    srv.stop()
    srv.start()
    assert srv.get_json("/modalities/ws/configuration")["Port"] == 4006


def test_echo_and_store_to_storescp(make_server, tmp_path):
    scp = StoreSCP(tmp_path / "recv", aet="VIEWER")
    gone = RefusingPort()
    try:
        srv = make_server({"DicomModalities": {"viewer": ["VIEWER", "127.0.0.1", scp.port],
                                               "gone": ["GONE", "127.0.0.1", gone.port]}, "DicomScuTimeout": 3})
        assert srv.post("/modalities/viewer/echo", "{}").json() == {}
        r = srv.post("/modalities/gone/echo", "{}")
        assert r.status == 500 and "cannot connect" in r.json()["Details"]
        ids = []
        for i in range(3):
            ids.append(srv.post("/instances", ct_instance(rows=16, cols=16, index=i + 1)).json())
        jpeg = srv.post("/instances", (TEST_FILES / "JPEG2000.dcm").read_bytes()).json()
        study = ids[0]["ParentStudy"]
        res = srv.post("/modalities/viewer/store", study).json()
        assert res["InstancesCount"] == 3 and res["FailedInstancesCount"] == 0 and res["RemoteAet"] == "VIEWER"
        assert len(scp.files()) == 3
        res = srv.post("/modalities/viewer/store", json.dumps({"Resources": [jpeg["ID"], ids[0]["ID"]]})).json()
        assert res["InstancesCount"] == 2
        # a default storescp takes uncompressed data only: the JPEG 2000 instance goes decompressed
        assert res["FailedInstancesCount"] == 0
        assert len(scp.files()) == 4
        orig = pydicom.dcmread(TEST_FILES / "JPEG2000.dcm")
        back = next(d for d in (pydicom.dcmread(p) for p in scp.files()) if d.SOPInstanceUID == orig.SOPInstanceUID)
        assert not back.file_meta.TransferSyntaxUID.is_compressed
        assert (back.pixel_array == orig.pixel_array).all()
        got = {pydicom.dcmread(p).SOPInstanceUID for p in scp.files()}
        assert uid("PAT1/st1/se1/3") in got
        assert srv.post("/modalities/viewer/store", '"nope"').status == 400     # no ID at all, as Orthanc
        assert srv.post("/modalities/viewer/store", "01234567-89abcdef-01234567-89abcdef-01234567").status == 404
        assert srv.post("/modalities/nobody/store", study).status == 404
    finally:
        gone.close()
        scp.stop()


def test_query_and_retrieve_between_two_appliances(make_server):
    a_port = free_port()
    remote = make_server({"DicomAet": "REMOTE", "DicomModalities": {"a": ["LOCAL", "127.0.0.1", a_port]}},
                         name="remote")
    local = make_server({"DicomAet": "LOCAL", "DicomPort": a_port,
                         "DicomModalities": {"remote": ["REMOTE", "127.0.0.1", remote.dicom_port]}}, name="local")
    for i in range(4):
        remote.post("/instances", ct_instance(rows=16, cols=16, index=i + 1, patient_id="RQ", patient_name="Remote^Q"))
    q = local.post_json("/modalities/remote/query", {"Level": "Study", "Query": {"PatientName": "remote*",
                                                                                 "StudyDescription": ""}})
    assert q["Path"] == f"/queries/{q['ID']}"
    assert local.get_json(f"/queries/{q['ID']}/answers") == ["0"]
    content = local.get_json(f"/queries/{q['ID']}/answers/0/content?simplify")
    assert content["PatientName"] == "Remote^Q" and content["StudyInstanceUID"] == uid("RQ/st1")
    assert local.get(f"/queries/{q['ID']}/level").body == b"Study"
    r = local.post(f"/queries/{q['ID']}/answers/0/retrieve", "LOCAL")
    assert r.status == 200, r.body
    assert r.json()["CompletedSubOperations"] == 4
    assert local.get_json("/statistics")["CountInstances"] == 4
    # /modalities/{name}/move the same study again: already stored, still complete
    res = local.post_json("/modalities/remote/move", {"Level": "Study", "TargetAet": "LOCAL",
                                                      "Resources": [{"StudyInstanceUID": uid("RQ/st1")}]})
    assert res["CompletedSubOperations"] == 4
    assert local.get("/queries/999/answers").status == 404


def test_modality_manufacturer_is_one_orthanc_knows(make_server):
    """A Manufacturer pipacs does not know is refused, naming the known ones; known ones are kept as
    given; Orthanc's obsolete names read as Orthanc reads them; the array form's fourth element counts."""
    srv = make_server()

    def put(name, body):
        return srv.request("PUT", f"/modalities/{name}", json.dumps(body))

    for known in ("Generic", "GenericNoWildcardInDates", "GenericNoUniversalWildcard", "Vitrea", "GE"):
        assert put("m", {"AET": "M", "Host": "127.0.0.1", "Port": 104, "Manufacturer": known}).status == 200
        assert srv.get_json("/modalities/m/configuration")["Manufacturer"] == known
    for unknown in ("Siemens", "generic", "", 7):
        r = put("u", {"AET": "U", "Host": "127.0.0.1", "Port": 104, "Manufacturer": unknown})
        assert r.status == 400 and "GenericNoWildcardInDates" in r.json()["Message"], r.body
    assert "u" not in srv.get_json("/modalities")
    assert srv.get_json("/modalities/m/configuration")["Manufacturer"] == "GE"   # left as it was
    assert put("old", ["OLD", "127.0.0.1", 104, "SyngoVia"]).status == 200
    assert srv.get_json("/modalities/old/configuration")["Manufacturer"] == "GenericNoWildcardInDates"
    assert put("arr", ["ARR", "127.0.0.1", 104, "Nope"]).status == 400
    for key, bad in (("AllowTranscoding", "yes"), ("Timeout", "soon"), ("Timeout", -1), ("LocalAet", 5),
                     ("LocalAet", "X" * 17)):
        r = put("flag", {"AET": "F", "Host": "127.0.0.1", "Port": 104, key: bad})
        assert r.status == 400 and key in r.json()["Message"], (key, bad, r.body)
    assert put("flag", {"AET": "F", "Host": "127.0.0.1", "Port": 104, "AllowFind": False,
                        "AllowTranscoding": False}).status == 200
    conf = srv.get_json("/modalities?expand")["flag"]
    assert set(conf) >= ORTHANC_MODALITY_KEYS
    assert conf["AllowFind"] is False and conf["AllowTranscoding"] is False and conf["AllowEcho"] is True


def test_modality_query_keys_as_orthanc_sends_them(make_server):
    """What a modality query asks the remote, seen in its answers: keys of other levels left out
    unless Normalize is false, the level's default keys added, values only as strings."""
    a_port = free_port()
    remote = make_server({"DicomAet": "REMOTE", "DicomModalities": {"a": ["LOCAL", "127.0.0.1", a_port]}},
                         name="remote")
    local = make_server({"DicomAet": "LOCAL", "DicomPort": a_port,
                         "DicomModalities": {"remote": ["REMOTE", "127.0.0.1", remote.dicom_port]}}, name="local")
    remote.post("/instances", ct_instance(rows=8, cols=8, index=1, patient_id="NK", patient_name="Numeric^Keys"))

    def query(body):
        r = local.post("/modalities/remote/query", json.dumps(body))
        assert r.status == 200, r.body
        return r.json()["ID"]

    qid = query({"Level": "Study", "Query": {"NumberOfStudyRelatedInstances": "", "SeriesNumber": "1"}})
    [answer] = local.get_json(f"/queries/{qid}/answers?expand&simplify")
    # (Retrieve AE Title: the remote puts it in every answer, as Orthanc's listener does)
    assert set(answer) == {"AccessionNumber", "NumberOfStudyRelatedInstances", "PatientID", "QueryRetrieveLevel",
                           "RetrieveAETitle", "SpecificCharacterSet", "StudyInstanceUID"}
    assert answer["NumberOfStudyRelatedInstances"] == "1" and answer["PatientID"] == "NK"
    # the query as given (SeriesNumber included), in Orthanc's tag formats
    assert local.get_json(f"/queries/{qid}/query") == {
        "0020,0011": {"Name": "SeriesNumber", "Type": "String", "Value": "1"},
        "0020,1208": {"Name": "NumberOfStudyRelatedInstances", "Type": "String", "Value": ""}}
    assert local.get_json(f"/queries/{qid}/query?simplify") == {"SeriesNumber": "1",
                                                                "NumberOfStudyRelatedInstances": ""}
    qid = query({"Level": "Study", "Query": {"SeriesNumber": "1"}, "Normalize": False})
    assert local.get_json(f"/queries/{qid}/answers?expand&simplify")[0]["SeriesNumber"] == "1"
    qid = query({"Level": "Instance", "Query": {"InstanceNumber": "1"}})
    assert set(local.get_json(f"/queries/{qid}/answers/0/content?simplify")) >= {
        "PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber"}
    # a binary VR's value given as text is sent as the number it spells (it was a 500)
    qid = query({"Level": "Study", "Query": {"Rows": "12", "StudyDate": ""}, "Normalize": False})
    assert local.get_json(f"/queries/{qid}/query?simplify") == {"Rows": "12", "StudyDate": ""}
    for bad, says in (({"Level": "Study", "Query": {"Rows": "abc"}, "Normalize": False}, "Rows (US)"),
                      ({"Level": "Series", "Query": {"SeriesNumber": "one"}}, "SeriesNumber (IS)"),
                      ({"Level": "Study", "Query": {"StudyDate": 20200101}}, "must be a string"),
                      ({"Level": "Study", "Query": {"StudyDate": None}}, "must be a string"),
                      ({"Level": "Study", "Query": {}, "Normalize": "yes"}, "Normalize"),
                      ({"Query": {"StudyDate": "20200101"}}, "Level")):
        r = local.post("/modalities/remote/query", json.dumps(bad))
        assert r.status == 400 and says in r.json()["Message"], (bad, r.body)


def test_modality_query_identifier_on_the_wire(make_server):
    """The C-FIND identifier pipacs sends, as a pynetdicom SCP receives it: Orthanc's default keys
    (empty, `*` for GE), Specific Character Set, keys of other levels left out unless Normalize is
    false, a `*` blanked for GenericNoUniversalWildcard and, in dates, for GenericNoWildcardInDates."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        PatientRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelFind,
    )

    received = []

    def on_find(event):
        received.append(event.identifier)
        yield 0x0000, None

    scp = AE(ae_title="RECORDER")
    scp.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    scp.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        srv = make_server()

        def sent(manufacturer, body):
            node = {"AET": "RECORDER", "Host": "127.0.0.1", "Port": port, "Manufacturer": manufacturer}
            assert srv.request("PUT", "/modalities/rec", json.dumps(node)).status == 200
            r = srv.post("/modalities/rec/query", json.dumps(body))
            assert r.status == 200, r.body
            ident = received.pop()
            return {e.keyword: ("" if e.value is None else str(e.value)) for e in ident}

        assert sent("Generic", {"Level": "Study", "Query": {"PatientName": "Doe*", "SeriesNumber": "1"}}) == {
            "QueryRetrieveLevel": "STUDY", "SpecificCharacterSet": "ISO_IR 100", "PatientName": "Doe*",
            "PatientID": "", "AccessionNumber": "", "StudyInstanceUID": ""}
        ident = sent("Generic", {"Level": "Study", "Query": {"SeriesNumber": "1"}, "Normalize": False})
        assert ident["SeriesNumber"] == "1"
        assert sent("GE", {"Level": "Instance", "Query": {}}) == {
            "QueryRetrieveLevel": "IMAGE", "SpecificCharacterSet": "ISO_IR 100", "PatientID": "*",
            "AccessionNumber": "*", "StudyInstanceUID": "*", "SeriesInstanceUID": "*", "SOPInstanceUID": "*"}
        ident = sent("Generic", {"Level": "Patient", "Query": {"PatientName": "山田*"}})
        assert ident["SpecificCharacterSet"] == "ISO_IR 192" and ident["PatientName"] == "山田*"
        assert set(ident) == {"QueryRetrieveLevel", "SpecificCharacterSet", "PatientName", "PatientID"}
        ident = sent("GenericNoUniversalWildcard", {"Level": "Study", "Query": {"StudyDate": "*", "PatientName": "*"}})
        assert ident["StudyDate"] == "" and ident["PatientName"] == ""
        ident = sent("GenericNoWildcardInDates", {"Level": "Study", "Query": {"StudyDate": "*", "PatientName": "*"}})
        assert ident["StudyDate"] == "" and ident["PatientName"] == "*"
        ident = sent("Generic", {"Level": "Series", "Query": {"Rows": "12"}, "Normalize": False})
        assert ident["Rows"] == "12" and ident["SeriesInstanceUID"] == ""
    finally:
        server.shutdown()


# ------------------------------------------------------------------ send errors say the reason (issue 20)

def _storescp(*flags: str) -> tuple[subprocess.Popen, int]:
    """storescp on a free port, listening itself: the port ``free_port`` gave can be taken by another
    test's server before storescp binds it (storescp then exits), so a new port is tried."""
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen([dcmtk("storescp"), *flags, "-aet", "VIEWER", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, proc, owned=True)
            return proc, port
        except RuntimeError:
            proc.kill()
            proc.wait()
    raise RuntimeError("storescp found no free port in 5 tries")


def _failure(r) -> str:
    """The reason of a failed send, checked to be in Orthanc's error shape: Message and Details."""
    assert r.status == 500, r.body[:300]
    body = r.json()
    assert body["OrthancError"] == "Error in the network protocol" and body["OrthancStatus"] == 9
    assert body["Message"] == f"Error in the network protocol: {body['Details']}"
    return body["Details"]


def test_send_errors_say_why(make_server):
    """Each way a send fails names its reason: a closed port, a connection that times out, DCMTK's
    storescp refusing the association, a pynetdicom node that does not know the called AE title or
    takes no CT, storescp aborting mid-transfer, a node that never answers the association request."""
    gone = RefusingPort()
    # a listener whose accept queue (backlog 0) is full: the kernel drops further SYNs, the connect times out
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    queued = socket.create_connection(full.getsockname())
    # a listener that accepts TCP connections but never speaks DICOM
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    refusing, refusing_port = _storescp("--refuse")
    aborting, aborting_port = _storescp("--abort-after")
    picky = AE(ae_title="RIGHT")
    picky.require_called_aet = True
    picky.add_supported_context(Verification)
    picky.add_supported_context(CTImageStorage)
    picky_port = free_port()
    picky_server = picky.start_server(("127.0.0.1", picky_port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    echo_only = AE(ae_title="ECHO")
    echo_only.add_supported_context(Verification)
    echo_port = free_port()
    echo_server = echo_only.start_server(("127.0.0.1", echo_port), block=False)
    try:
        # the peers that never answer, on a short timeout (what they test is that timeout)
        silent = make_server({"DicomScuTimeout": 2, "DicomModalities": {
            "gone": ["GONE", "127.0.0.1", gone.port], "full": ["FULL", "127.0.0.1", full.getsockname()[1]],
            "mute": ["MUTE", "127.0.0.1", mute.getsockname()[1]]}}, name="silent")
        ct = ct_instance(rows=16, cols=16, index=1)
        silent_study = silent.post("/instances", ct).json()["ParentStudy"]
        for route, body in (("echo", "{}"), ("store", silent_study)):
            assert _failure(silent.post(f"/modalities/gone/{route}", body)) == \
                f"cannot connect to 127.0.0.1:{gone.port} (connection refused)"
        assert _failure(silent.post("/modalities/full/echo", "{}")) == \
            f"cannot connect to 127.0.0.1:{full.getsockname()[1]} (timed out)"
        assert _failure(silent.post("/modalities/mute/echo", "{}")) == \
            (f"association aborted: MUTE at 127.0.0.1:{mute.getsockname()[1]} did not answer the association "
             "request within 2 s")
        # the peers that answer, on a timeout a loaded test machine does not reach (their answer is the test)
        srv = make_server({"DicomScuTimeout": 30, "DicomModalities": {
            "refusing": ["VIEWER", "127.0.0.1", refusing_port], "aborting": ["VIEWER", "127.0.0.1", aborting_port],
            "wrongaet": ["WRONG", "127.0.0.1", picky_port], "picky": ["RIGHT", "127.0.0.1", picky_port],
            "echoonly": ["ECHO", "127.0.0.1", echo_port]}})
        study = srv.post("/instances", ct).json()["ParentStudy"]
        assert _failure(srv.post("/modalities/refusing/store", study)) == \
            (f"association rejected: no reason given (permanent rejection by the service user; "
             f"VIEWER at 127.0.0.1:{refusing_port})")
        assert _failure(srv.post("/modalities/wrongaet/echo", "{}")) == \
            (f"association rejected: called AE title not recognised (permanent rejection by the "
             f"service user; WRONG at 127.0.0.1:{picky_port})")
        assert srv.post("/modalities/picky/echo", "{}").status == 200        # the same node, the right title
        assert srv.post("/modalities/picky/store", study).json()["FailedInstancesCount"] == 0
        assert _failure(srv.post("/modalities/echoonly/store", study)) == \
            f"no presentation context accepted for CT Image Storage by ECHO at 127.0.0.1:{echo_port}"
        assert _failure(srv.post("/modalities/aborting/store", study)) == \
            f"association aborted by VIEWER at 127.0.0.1:{aborting_port} during the transfer (0 of 1 instances sent)"
        # the same reasons through /tools/dicom-echo (no modality defined)
        r = srv.post("/tools/dicom-echo", json.dumps({"AET": "WRONG", "Host": "127.0.0.1", "Port": picky_port}))
        assert _failure(r).startswith("association rejected: called AE title not recognised")
    finally:
        for proc in (refusing, aborting):
            proc.terminate()
            proc.wait()
        picky_server.shutdown()
        echo_server.shutdown()
        for s in (queued, full, mute):
            s.close()
        gone.close()
