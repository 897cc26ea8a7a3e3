"""Orthanc's system and tool routes (/tools, now, generate-uid, dicom-conformance, dicom-echo,
default-encoding, /plugins), the metadata each level keeps, and paging, against a real server."""

from __future__ import annotations

import io
import re
import sqlite3
import subprocess
import uuid
import zipfile
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import AE

from appliance.archive import Archive, Origin
from appliance.config import ConfigError, load_settings

from .helpers import TEST_FILES, RefusingPort, dcmtk, free_port, pipacs_sender_handlers, wait_listening
from .synth import ct_instance

CT = (TEST_FILES / "CT_small.dcm").read_bytes()
CT_SERIES = "93034833-163e42c3-bc9a428b-194620cf-2c5799e5"


def _error(r, status: int) -> str:
    assert r.status == status, (r.status, r.body[:300])
    body = r.json()
    assert body["HttpStatus"] == status
    return body["Message"]


# ------------------------------------------------------------------ /tools and its plain answers

def test_tools_lists_only_tools_that_answer(server):
    tools = server.get_json("/tools")
    assert "dicom-echo" in tools and "generate-uid" in tools and "execute-script" not in tools
    for name in tools:
        r = server.get(f"/tools/{name}?level=study")
        assert r.status != 404, (name, r.status)      # 405 for the POST-only ones


def test_now_is_utc_and_now_local_the_server_time_zone(make_server):
    srv = make_server(env={"TZ": "Asia/Tokyo"})      # UTC+9, no summer time
    utc, local = srv.get("/tools/now"), srv.get("/tools/now-local")
    assert utc.headers["Content-Type"].startswith("text/plain")
    for r in (utc, local):
        assert re.fullmatch(r"\d{8}T\d{6}", r.body.decode()), r.body
    shift = datetime.strptime(local.body.decode(), "%Y%m%dT%H%M%S") - \
        datetime.strptime(utc.body.decode(), "%Y%m%dT%H%M%S")
    assert abs(shift.total_seconds() - 9 * 3600) <= 5


def test_generate_uid_per_level(server):
    patient = server.get("/tools/generate-uid?level=patient").body.decode()
    assert str(uuid.UUID(patient)) == patient          # a PatientID is no UID: Orthanc gives a UUID
    made = set()
    for level in ("study", "series", "instance"):
        r = server.get(f"/tools/generate-uid?level={level}")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        uid = r.body.decode()
        assert UID(uid).is_valid, uid
        made.add(uid)
    assert len(made) == 3
    for bad in ("?level=Study", "?level=instances", "?level=", ""):
        assert "patient, study, series, instance" in _error(server.get(f"/tools/generate-uid{bad}"), 400)


def test_plugins_none_and_each_plugin_unknown(server):
    assert server.get_json("/plugins") == []
    assert "no plugin" in _error(server.get("/plugins/dicom-web"), 404)
    assert server.get_json("/system")["PluginsEnabled"] is False


# ------------------------------------------------------------------ conformance: what the listener does

def _associate(port: int, sop_class: str, *syntaxes: str):
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(sop_class, list(syntaxes))
    return ae.associate("127.0.0.1", port, ae_title="PIPACS", evt_handlers=pipacs_sender_handlers())


def test_conformance_statement_says_what_the_listener_accepts(server):
    r = server.get("/tools/dicom-conformance")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.body.decode()
    syntaxes = server.get_json("/tools/accepted-transfer-syntaxes")
    assert ExplicitVRLittleEndian in syntaxes and JPEGLSLossless in syntaxes
    for ts in syntaxes:
        assert ts in text
    ct_storage = "1.2.840.10008.5.1.4.1.1.2"
    assert ct_storage in text and "1.2.840.10008.1.1" in text      # CT Image Storage, Verification
    assert server.get("/tools/unknown-sop-class-accepted").body == b"0"
    # what it states holds: a listed class with a listed syntax is accepted, an unlisted class is not
    assoc = _associate(server.dicom_port, ct_storage, JPEGLSLossless)
    try:
        assert assoc.is_established and assoc.accepted_contexts
    finally:
        assoc.release()
    # and in the order it states: of two proposed, the one listed first
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("  1.2.840.10008.1.2")]
    proposed = [JPEGLSLossless, ExplicitVRLittleEndian]
    first = min(proposed, key=listed.index)
    assoc = _associate(server.dicom_port, ct_storage, *proposed)
    try:
        assert assoc.accepted_contexts[0].transfer_syntax[0] == first
    finally:
        assoc.release()
    private = "1.2.3.4.5.6.7.8.9"
    assert private not in text
    assoc = _associate(server.dicom_port, private, ExplicitVRLittleEndian)
    try:
        assert not assoc.accepted_contexts
    finally:
        if assoc.is_established:
            assoc.release()


# ------------------------------------------------------------------ C-ECHO to a node given in the body

def test_dicom_echo_to_storescp_and_to_a_refusing_port(make_server, tmp_path):
    port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "VIEWER", "-od", str(tmp_path), str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gone = RefusingPort()
    try:
        wait_listening(port, scp)
        srv = make_server({"DicomScuTimeout": 5})
        node = {"AET": "VIEWER", "Host": "127.0.0.1", "Port": port}
        assert srv.post_json("/tools/dicom-echo", node) == {}
        assert srv.post_json("/tools/dicom-echo", ["VIEWER", "127.0.0.1", port]) == {}
        assert srv.post_json("/tools/dicom-echo", node | {"Port": str(port), "Timeout": 3}) == {}
        # CheckFind: storescp answers C-ECHO but not C-FIND; pipacs's own listener answers both
        r = srv.post("/tools/dicom-echo", f'{{"AET": "VIEWER", "Host": "127.0.0.1", "Port": {port}, "CheckFind": true}}')
        assert _error(r, 500).startswith("Error in the network protocol: ") and "C-FIND" in r.json()["Details"]
        itself = {"AET": "PIPACS", "Host": "127.0.0.1", "Port": srv.dicom_port, "CheckFind": True}
        assert srv.post_json("/tools/dicom-echo", itself) == {}
        _error(srv.post("/tools/dicom-echo", f'{{"AET": "VIEWER", "Host": "127.0.0.1", "Port": {port}, '
                                             '"CheckFind": "yes"}'), 400)
        r = srv.post("/tools/dicom-echo", f'{{"AET": "GONE", "Host": "127.0.0.1", "Port": {gone.port}}}')
        assert _error(r, 500).startswith("Error in the network protocol: ") and "cannot connect" in r.json()["Details"]
        for bad in ('{"AET": "X", "Host": "127.0.0.1"}', '"viewer"', "[1]", "{not json", "",
                    '{"AET": "X", "Host": "127.0.0.1", "Port": 99999}',
                    '{"AET": "X", "Host": "127.0.0.1", "Port": 104, "Timeout": "x"}',
                    '{"AET": "", "Host": "127.0.0.1", "Port": 104}'):
            _error(srv.post("/tools/dicom-echo", bad), 400)
    finally:
        gone.close()
        scp.terminate()
        scp.wait()


# ------------------------------------------------------------------ DefaultEncoding

def _without_charset(name_bytes: bytes, sop_suffix: str = "1") -> bytes:
    """CT_small with no Specific Character Set and a PatientName of the given bytes."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    if "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet
    ds.PatientName = "X" * len(name_bytes)
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{sop_suffix}"
    buf = io.BytesIO()
    ds.save_as(buf)
    data = buf.getvalue()
    assert data.count(b"X" * len(name_bytes)) == 1
    return data.replace(b"X" * len(name_bytes), name_bytes)


NAME = "Grün^José"


def test_default_encoding_reads_files_without_a_character_set(make_server):
    srv = make_server({"DefaultEncoding": "utf8"})
    assert srv.get("/tools/default-encoding").body == b"Utf8"       # Orthanc's spelling
    iid = srv.post("/instances", _without_charset(NAME.encode("utf-8"))).json()["ID"]
    assert srv.get_json(f"/instances/{iid}/simplified-tags")["PatientName"] == NAME
    patient = srv.get_json(f"/instances/{iid}/patient")
    assert patient["MainDicomTags"]["PatientName"] == NAME        # indexed with it too
    # a modified copy keeps its text in it, and says so (Orthanc's copy would not say it)
    r = srv.post(f"/instances/{iid}/modify", '{"Replace": {"PatientName": "Zoë^Ünal"}, "Force": true}')
    assert r.status == 200, r.body[:300]
    copy = pydicom.dcmread(io.BytesIO(r.body))
    assert copy.SpecificCharacterSet == "ISO_IR 192" and "Zoë^Ünal".encode() in r.body
    assert copy.PatientName == "Zoë^Ünal"
    r = srv.post(f"/instances/{iid}/modify", '{"Replace": {"StudyDescription": "x"}}')
    assert NAME.encode("utf-8") in r.body and pydicom.dcmread(io.BytesIO(r.body)).PatientName == NAME
    # changed in memory: the same bytes now read as Latin-1
    r = srv.request("PUT", "/tools/default-encoding", "latin1")
    assert r.status == 200 and r.body == b"Latin1"
    assert srv.get_json(f"/instances/{iid}/simplified-tags")["PatientName"] == NAME.encode("utf-8").decode("latin-1")
    for bad in ("utf-8", "Latin1 ", "", "Klingon"):
        _error(srv.request("PUT", "/tools/default-encoding", bad), 400)
    assert srv.get("/tools/default-encoding").body == b"Latin1"
    # in memory only, as Orthanc: a restart reads the configuration again
    srv.stop()
    srv.start()
    assert srv.get("/tools/default-encoding").body == b"Utf8"
    assert srv.get_json(f"/instances/{iid}/simplified-tags")["PatientName"] == NAME


def test_default_encoding_default_is_latin1_and_a_file_with_its_own_set_keeps_it(server):
    assert server.get("/tools/default-encoding").body == b"Latin1"
    iid = server.post("/instances", _without_charset(NAME.encode("latin-1"))).json()["ID"]
    assert server.get_json(f"/instances/{iid}/simplified-tags")["PatientName"] == NAME
    ds = pydicom.dcmread(io.BytesIO(_without_charset(NAME.encode("latin-1"), "2")))
    ds.SpecificCharacterSet = "ISO_IR 100"     # its own character set: the default does not apply
    buf = io.BytesIO()
    ds.save_as(buf)
    own = server.post("/instances", buf.getvalue()).json()["ID"]
    assert server.request("PUT", "/tools/default-encoding", "Utf8").status == 200
    assert server.get_json(f"/instances/{own}/simplified-tags")["PatientName"] == NAME
    assert server.get_json(f"/instances/{iid}/simplified-tags")["PatientName"] != NAME   # read as UTF-8 now


def test_default_encoding_configuration_is_checked():
    assert load_settings(environ={})["DefaultEncoding"] == "Latin1"
    assert load_settings(environ={"PIPACS_DEFAULT_ENCODING": "JAPANESE"})["DefaultEncoding"] == "Japanese"
    with pytest.raises(ConfigError, match="DefaultEncoding"):
        load_settings(environ={"PIPACS_DEFAULT_ENCODING": "utf-8"})


# ------------------------------------------------------------------ paging and empty archives

def test_limit_zero_is_no_resource(server):
    server.post("/instances", CT)
    for q in ("since=0&limit=0", "since=5&limit=0", "limit=0"):
        assert server.get_json(f"/instances?{q}") == [], q
    assert len(server.get_json("/instances?since=0&limit=1")) == 1
    assert len(server.get_json("/instances?limit=")) == 1       # an empty limit is none given


def test_empty_lists_of_resources_are_empty_archives(server):
    for route in ("/tools/create-archive", "/tools/create-media", "/tools/create-media-extended"):
        for body in ("[]", '{"Resources": []}'):
            r = server.post(route, body)
            assert r.status == 200 and r.headers["Content-Type"] == "application/zip", (route, r.body[:200])
            names = zipfile.ZipFile(io.BytesIO(r.body)).namelist()
            if route == "/tools/create-archive":
                assert names == []
            else:   # a medium with an empty DICOMDIR, as Orthanc's
                assert names == ["DICOMDIR"]
                dicomdir = pydicom.dcmread(io.BytesIO(zipfile.ZipFile(io.BytesIO(r.body)).read("DICOMDIR")))
                assert dicomdir.DirectoryRecordSequence == []
        _error(server.post(route, "{}"), 400)
        _error(server.post(route, '{"Resources": "nothing"}'), 400)


def test_frames_are_listed_as_numbers_and_a_frame_lists_its_routes(server):
    iid = server.post("/instances", CT).json()["ID"]
    assert server.get_json(f"/instances/{iid}/frames") == [0]
    below = server.get_json(f"/instances/{iid}/frames/0")
    assert "preview" in below and "raw" in below
    for route in below:      # each one it lists answers
        assert server.get(f"/instances/{iid}/frames/0/{route}").status == 200, route
    assert server.get(f"/instances/{iid}/frames/7").status == 200       # a listing, as Orthanc's
    assert server.get("/instances/01234567-89abcdef-01234567-89abcdef-01234567/frames/0").status == 404


# ------------------------------------------------------------------ metadata per level

def test_metadata_each_level_keeps_as_orthanc(server):
    up = server.post("/instances", CT).json()
    for level, rid in (("patients", up["ParentPatient"]), ("studies", up["ParentStudy"])):
        assert server.get_json(f"/{level}/{rid}/metadata") == ["LastUpdate"]
        assert re.fullmatch(r"\d{8}T\d{6}", server.get(f"/{level}/{rid}/metadata/LastUpdate").body.decode())
    series = server.get_json(f"/series/{up['ParentSeries']}/metadata?expand")
    assert set(series) == {"LastUpdate", "RemoteAET"} and series["RemoteAET"] == ""
    assert series["LastUpdate"] == server.get_json(f"/series/{up['ParentSeries']}")["LastUpdate"]
    by_rest = server.get_json(f"/instances/{up['ID']}/metadata?expand")
    assert set(by_rest) == {"HttpUsername", "IndexInSeries", "Origin", "PixelDataOffset", "ReceptionDate",
                            "RemoteAET", "RemoteIP", "SopClassUid", "TransferSyntax"}
    assert by_rest["Origin"] == "RestApi"
    # by DICOM: the called AE title, no HTTP user; the series keeps its first sender
    mr = TEST_FILES / "MR_small.dcm"
    subprocess.run([dcmtk("storescu"), "-aet", "SENDER", "-aec", "PIPACS", "127.0.0.1", str(server.dicom_port),
                    str(mr)], check=True, capture_output=True)
    ds = pydicom.dcmread(mr)
    found = server.post("/tools/lookup", str(ds.SOPInstanceUID)).json()[0]["ID"]
    by_dicom = server.get_json(f"/instances/{found}/metadata?expand")
    assert by_dicom["CalledAET"] == "PIPACS" and by_dicom["RemoteAET"] == "SENDER" and "HttpUsername" not in by_dicom
    mr_series = server.get_json(f"/instances/{found}/series")["ID"]
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.2"
    buf = io.BytesIO()
    ds.save_as(buf)
    assert server.post("/instances", buf.getvalue()).status == 200    # the same series, by REST
    assert server.get(f"/series/{mr_series}/metadata/RemoteAET").body == b"SENDER"
    assert server.get(f"/instances/{up['ID']}/metadata/CalledAET").status == 404
    assert server.request("PUT", f"/series/{mr_series}/metadata/RemoteAET", "X").status == 403


async def test_an_index_from_schema_2_gets_orthanc_metadata_names(tmp_path: Path):
    """Before schema 3 pipacs kept CalledAET (empty) for REST uploads, HttpUsername (empty) for
    DICOM stores, and no RemoteAET on series; the upgrade brings them to Orthanc's names, keeping
    every value that said something."""
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    rest = await a.ingest_bytes(ct_instance(rows=16, cols=16, index=1, study="s1"), Origin("RestApi", "127.0.0.1"))
    dicom = await a.ingest_bytes(ct_instance(rows=16, cols=16, index=1, study="s2"),
                                 Origin("DicomProtocol", "127.0.0.1", "MODALITY", "PIPACS"))
    await a.close()
    db = sqlite3.connect(tmp_path / "data" / "pipacs-index.sqlite")
    ids = {p: i for p, i in db.execute("SELECT public_id, id FROM resources")}
    db.executescript(f"""BEGIN;
        INSERT INTO metadata VALUES({ids[rest.ids[3]]}, 'CalledAET', '');
        INSERT INTO metadata VALUES({ids[dicom.ids[3]]}, 'HttpUsername', '');
        DELETE FROM metadata WHERE name = 'RemoteAET' AND resource_id IN (SELECT id FROM resources WHERE level = 2);
        UPDATE properties SET value = '2' WHERE name = 'schema'; COMMIT;""")
    db.close()
    b = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await b.open()
    try:
        meta = {k: await b.metadata(await b.index.resource(v)) for k, v in
                (("rest", rest.ids[3]), ("dicom", dicom.ids[3]), ("rest-series", rest.ids[2]),
                 ("dicom-series", dicom.ids[2]))}
    finally:
        await b.close()
    assert "CalledAET" not in meta["rest"] and meta["rest"]["HttpUsername"] == ""
    assert "HttpUsername" not in meta["dicom"] and meta["dicom"]["CalledAET"] == "PIPACS"
    assert meta["rest-series"]["RemoteAET"] == "" and meta["dicom-series"]["RemoteAET"] == "MODALITY"
