"""DICOMweb with the real dicomweb-client library against a running server."""

import io

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from requests.exceptions import HTTPError

from .helpers import TEST_FILES
from .synth import ct_instance, uid


@pytest.fixture
def web(server):
    for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb_rle_2frame.dcm"):
        assert server.post("/instances", (TEST_FILES / name).read_bytes()).status == 200
    for i in range(3):
        server.post("/instances", ct_instance(rows=16, cols=16, index=i + 1, patient_id="DW",
                                              patient_name="Web^Student", study_date="20240301"))
    return server, DICOMwebClient(url=server.url("/dicom-web"))


def test_search(web):
    _srv, c = web
    studies = c.search_for_studies()
    assert len(studies) == 4
    st = next(s for s in studies if s["00100020"]["Value"] == ["DW"])
    assert st["00201208"]["Value"] == [3] and st["00080061"]["Value"] == ["CT"]
    assert st["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{uid('DW/st1')}")
    assert len(c.search_for_studies(search_filters={"PatientName": "web*"})) == 1
    assert len(c.search_for_studies(search_filters={"StudyDate": "20240101-20241231"})) == 1
    assert len(c.search_for_studies(search_filters={"PatientName": "web*"}, fuzzymatching=True)) == 1
    assert len(c.search_for_studies(limit=2)) == 2
    assert len(c.search_for_studies(offset=3)) == 1
    series = c.search_for_series(uid("DW/st1"))
    assert series[0]["00201209"]["Value"] == [3] and series[0]["00080060"]["Value"] == ["CT"]
    inst = c.search_for_instances(uid("DW/st1"), uid("DW/st1/se1"), fields=["ImagePositionPatient"])
    assert len(inst) == 3
    assert {i["00280010"]["Value"][0] for i in inst} == {16}
    assert "00200032" in inst[0]
    assert len(c.search_for_instances(search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"})) == 4


def test_search_on_attributes_not_matched_warns_instead_of_failing(web):
    import urllib.request
    srv, c = web
    url = srv.url("/dicom-web/studies?PatientAge=045Y&PatientID=DW&fuzzymatching=true")
    with urllib.request.urlopen(url) as r:
        body, warnings = r.read(), r.headers.get_all("Warning")
    assert [s["00100020"]["Value"] for s in __import__("json").loads(body)] == [["DW"]]   # PatientID matched
    base = srv.url("/dicom-web")
    assert f"299 {base}: The following attributes are not supported for matching: 00101010" in warnings
    assert any("fuzzymatching parameter is not supported" in w for w in warnings)
    assert len(c.search_for_studies(search_filters={"PatientAge": "045Y"})) == 4


def test_retrieve_study_metadata_frames(web):
    _srv, c = web
    dss = c.retrieve_study(uid("DW/st1"))
    assert sorted(int(d.InstanceNumber) for d in dss) == [1, 2, 3]
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    one = c.retrieve_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert one.PixelData == ct.PixelData
    md = c.retrieve_instance_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert md["00100010"]["Value"][0]["Alphabetic"] == "CompressedSamples^CT1"
    assert "BulkDataURI" in md["7FE00010"]
    frames = c.retrieve_instance_frames(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID,
                                        frame_numbers=[1])
    assert frames[0] == ct.pixel_array.astype("<i2").tobytes()
    rgb = pydicom.dcmread(TEST_FILES / "SC_rgb_rle_2frame.dcm")
    frames = c.retrieve_instance_frames(rgb.StudyInstanceUID, rgb.SeriesInstanceUID, rgb.SOPInstanceUID,
                                        frame_numbers=[2, 1])
    assert frames[0] == np.ascontiguousarray(rgb.pixel_array[1]).tobytes()
    assert frames[1] == np.ascontiguousarray(rgb.pixel_array[0]).tobytes()
    with pytest.raises(HTTPError) as e:
        c.retrieve_instance_frames(rgb.StudyInstanceUID, rgb.SeriesInstanceUID, rgb.SOPInstanceUID,
                                   frame_numbers=[9])
    assert e.value.response.status_code == 404
    series_md = c.retrieve_series_metadata(uid("DW/st1"), uid("DW/st1/se1"))
    assert len(series_md) == 3


def test_rendered_and_thumbnail(web):
    srv, c = web
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    img = c.retrieve_instance_rendered(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID,
                                       media_types=("image/jpeg",))
    assert img[:2] == b"\xff\xd8"
    base = f"/dicom-web/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}"
    from PIL import Image
    thumb = Image.open(io.BytesIO(srv.get(base + "/thumbnail").body))
    assert max(thumb.size) == 128
    r = srv.get(base + "/rendered?viewport=64,64&window=40,400", headers={"Accept": "image/png"})
    assert r.headers["Content-Type"] == "image/png" and Image.open(io.BytesIO(r.body)).size == (64, 64)


def test_store(web):
    srv, c = web
    good = [pydicom.dcmread(io.BytesIO(ct_instance(rows=8, cols=8, index=i, patient_id="STOW"))) for i in (1, 2)]
    res = c.store_instances(good)
    assert len(res.ReferencedSOPSequence) == 2
    assert len(res.FailedSOPSequence) == 0   # present and empty, as Orthanc's plugin answers
    assert len(c.search_for_instances(search_filters={"PatientID": "STOW"})) == 2
    # one bad part among good ones: 202 with the failure listed
    bad = pydicom.dcmread(io.BytesIO(ct_instance(rows=8, cols=8, index=3, patient_id="STOW")))
    del bad.StudyInstanceUID
    boundary = "xyzBOUNDARY"
    body = b""
    for ds in (bad, pydicom.dcmread(io.BytesIO(ct_instance(rows=8, cols=8, index=4, patient_id="STOW")))):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buf.getvalue() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    r = srv.post("/dicom-web/studies", body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status == 202
    js = r.json()
    assert len(js["00081199"]["Value"]) == 1 and len(js["00081198"]["Value"]) == 1
    assert js["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    # a body that is not the multipart its Content-Type says
    r = srv.post("/dicom-web/studies", b"garbage", headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=zz'})
    assert r.status == 400 and "multipart" in r.json()["Message"]
    # storing into a study the instance is not part of
    r = srv.post(f"/dicom-web/studies/{uid('OTHER/st1')}", body.replace(b"", b""), headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status == 409


def _raw_get(srv, path: str, accept: str) -> bytes:
    """The whole answer as bytes, read until the server closes (to see what a client really gets)."""
    import socket
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_undecodable_or_odd_instances_get_a_clear_answer(web):
    srv, c = web
    # JPEG Extended 12-bit: none of the codecs here decodes it
    bad = pydicom.dcmread(TEST_FILES / "JPEG-lossy.dcm")
    assert srv.post("/instances", (TEST_FILES / "JPEG-lossy.dcm").read_bytes()).status == 200
    base = f"/dicom-web/studies/{bad.StudyInstanceUID}/series/{bad.SeriesInstanceUID}/instances/{bad.SOPInstanceUID}"
    r = srv.get(base + "/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert r.status == 415 and "cannot decode" in r.json()["Message"]
    # an IS value of "1A": the metadata comes, without that element
    odd = pydicom.dcmread(TEST_FILES / "badVR.dcm")
    assert srv.post("/instances", (TEST_FILES / "badVR.dcm").read_bytes()).status == 200
    md = c.retrieve_instance_metadata(odd.StudyInstanceUID, odd.SeriesInstanceUID, odd.SOPInstanceUID)
    assert md["0020000D"]["Value"] == [odd.StudyInstanceUID]
    assert "00280008" not in md   # Number of Frames "1A"
    assert "300C0002" in md       # kept: a UID component with a leading zero breaks a rule, not the answer
    log = srv.settled_log()   # every line written while the requests above were answered
    assert "Traceback" not in log and "internal error" not in log


def test_a_study_that_fails_halfway_is_cut_short_not_answered_twice(web):
    srv, _ = web
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    # an undecodable instance in CT_small's study, after it: it cannot be sent in Explicit VR LE
    bad = pydicom.dcmread(TEST_FILES / "JPEG-lossy.dcm")
    for k in ("PatientID", "PatientName", "StudyInstanceUID"):
        setattr(bad, k, ct.get(k))
    buf = io.BytesIO()
    bad.save_as(buf, enforce_file_format=True)
    assert srv.post("/instances", buf.getvalue()).status == 200
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    raw = _raw_get(srv, f"/dicom-web/studies/{ct.StudyInstanceUID}", accept)
    assert raw.startswith(b"HTTP/1.1 200") and raw.count(b"HTTP/1.1 ") == 1   # no answer inside the answer
    assert ct.SOPInstanceUID.encode() in raw   # the first instance came
    assert not raw.rstrip().endswith(b"--") and not raw.endswith(b"0\r\n\r\n")   # visibly unfinished
    srv.wait_for_log("cut short after its answer began")
    # the same instance alone: a clear refusal before anything is sent
    one = f"/dicom-web/studies/{ct.StudyInstanceUID}/series/{bad.SeriesInstanceUID}/instances/{bad.SOPInstanceUID}"
    r = srv.get(one, headers={"Accept": accept})
    assert r.status == 415 and "cannot transcode" in r.json()["Message"]


def test_wado_uri_refuses_a_content_type_it_cannot_make(web):
    srv, _ = web
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    r = srv.get(f"/wado?requestType=WADO&studyUID={ct.StudyInstanceUID}&seriesUID={ct.SeriesInstanceUID}"
                f"&objectUID={ct.SOPInstanceUID}&contentType=text/html")
    assert r.status == 400   # as Orthanc's plugin answers it
    assert r.json()["HttpError"] == "Bad Request" and "contentType must be" in r.json()["Message"]


def _instance_path(ds: pydicom.Dataset) -> str:
    return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


def test_an_accept_that_cannot_be_satisfied_is_refused_not_answered_with_something_else(web):
    srv, _ = web
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    inst = _instance_path(ct)
    refused = [("/dicom-web/studies", "image/png"), (f"{inst}/metadata", "image/png"),
               (f"{inst}/metadata", 'multipart/related; type="application/dicom+xml"'),
               (inst, "application/dicom+json"), (f"/dicom-web/studies/{ct.StudyInstanceUID}", "image/jpeg"),
               (f"{inst}/frames/1", 'multipart/related; type="application/dicom"'),
               (f"{inst}/frames/1", ('multipart/related; type="application/octet-stream"; '
                                     'transfer-syntax=1.2.840.10008.1.2.4.50')),
               (f"{inst}/rendered", "text/html"), (f"{inst}/rendered", "image/gif"),
               (f"{inst}/frames/1/rendered", "application/dicom"), (f"{inst}/thumbnail", "text/html"),
               (f"{inst}/bulk/7fe00010", "image/jpeg")]
    for path, accept in refused:
        r = srv.get(path, headers={"Accept": accept})
        assert r.status == 400, (path, accept, r.status)
        assert r.headers["Content-Type"].startswith("application/json") and "Accept" in r.json()["Message"]
    # lists with weights, wildcards, parameters: the best the route can make
    for path, accept, media in ((f"{inst}/rendered", "image/gif, image/png;q=0.5, image/jpeg;q=0.4", "image/png"),
                                (f"{inst}/rendered", "text/html, */*;q=0.8", "image/jpeg"),
                                (f"{inst}/rendered", "image/*", "image/jpeg"),
                                (f"{inst}/metadata", "application/json", "application/dicom+json"),
                                ("/dicom-web/studies", "text/html, application/xhtml+xml, */*;q=0.8",
                                 "application/dicom+json"),
                                (inst, "multipart/related", "multipart/related"),
                                (inst, "image/png, multipart/related; type=application/dicom;q=0.1",
                                 "multipart/related")):
        r = srv.get(path, headers={"Accept": accept})
        assert r.status == 200 and r.headers["Content-Type"].split(";")[0] == media, (path, accept)
    r = srv.get(f"{inst}/frames/1", headers={
        "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'})
    assert r.status == 200 and "transfer-syntax=1.2.840.10008.1.2.1" in r.headers["Content-Type"]
    # 405 on a DICOMweb route says which methods it takes
    r = srv.request("DELETE", "/dicom-web/studies")
    assert r.status == 405 and "GET" in r.headers["Allow"] and "POST" in r.headers["Allow"]


def _without(data: bytes, *keywords: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for k in keywords:
        delattr(ds, k)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_qido_series_and_instances_carry_the_study_and_patient_attributes(web):
    srv, c = web
    blob = _without(ct_instance(rows=8, cols=8, index=1, patient_id="NODESC", patient_name="No^Description",
                                accession="ACC7"), "StudyDescription")
    assert srv.post("/instances", blob).status == 200
    st = uid("NODESC/st1")
    [study] = c.search_for_studies(search_filters={"PatientID": "NODESC"})
    assert "00081030" not in study          # absent from the file: left out, not answered empty
    assert study["00080050"]["Value"] == ["ACC7"]
    for series in (c.search_for_series(st), c.search_for_series(search_filters={"PatientID": "NODESC"})):
        [se] = series
        assert se["00100010"]["Value"] == [{"Alphabetic": "No^Description"}] and se["00100020"]["Value"] == ["NODESC"]
        assert se["00080020"]["Value"] == ["20240102"] and se["00080050"]["Value"] == ["ACC7"]
        assert se["0020000D"]["Value"] == [st] and se["00100040"]["Value"] == ["F"]
    for instances in (c.search_for_instances(st, uid("NODESC/st1/se1")), c.search_for_instances(st),
                      c.search_for_instances(search_filters={"PatientID": "NODESC"})):
        [inst] = instances
        assert inst["00080060"]["Value"] == ["CT"] and inst["0008103E"]["Value"] == ["AXIAL"]
        assert inst["0020000E"]["Value"] == [uid("NODESC/st1/se1")] and inst["00100020"]["Value"] == ["NODESC"]
        assert inst["00080030"]["Value"] == ["101500"]
        assert "00280008" not in inst        # a single-frame CT has no Number of Frames
    # an attribute present but empty stays, empty
    [se] = c.search_for_series(st)
    assert se["00080090"] == {"vr": "PN"}   # ReferringPhysicianName ""


def _bulk_addresses(obj, out: list[tuple[str, str]], path: str = "") -> list[tuple[str, str]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "BulkDataURI":
                out.append((path, v))
            else:
                _bulk_addresses(v, out, f"{path}/{k}" if k != "Value" else path)
    elif isinstance(obj, list):
        for i, x in enumerate(obj, 1):
            _bulk_addresses(x, out, f"{path}[{i}]")
    return out


def test_every_bulk_data_address_of_metadata_is_its_own_and_is_served(web):
    from .synth import with_nested_binary
    srv, c = web
    blob = with_nested_binary(ct_instance(rows=8, cols=8, index=1, patient_id="BULK"))
    assert srv.post("/instances", blob).status == 200
    ds = pydicom.dcmread(io.BytesIO(blob))
    md = c.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    found = dict(_bulk_addresses(md, []))
    seq = md["0040A730"]["Value"]
    assert len(seq) == 2 and seq[1]["00091010"]["Value"] == ["SECOND ITEM"]
    inner = seq[0]["00409096"]["Value"][0]["00189219"]
    assert inner["vr"] == "OB" and inner["BulkDataURI"].endswith("/bulk/0040a730/1/00409096/1/00189219")
    assert seq[0]["00091011"]["BulkDataURI"].endswith("/bulk/0040a730/1/00091011")
    assert len(set(found.values())) == len(found)   # one address per value
    expected = {"/0040A730[1]/00091011": b"\x01\x02\x03\x04", "/0040A730[1]/00409096[1]/00189219": b"\x05\x06"}
    for where, value in expected.items():
        assert c.retrieve_bulkdata(found[where])[0] == value, where
    # every address metadata gives is served (pixel data's is its frames)
    for where, url in found.items():
        assert c.retrieve_bulkdata(url), where
    # a small private OB of a stored file is bulk data too, as Orthanc's plugin answers it
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    md = c.retrieve_instance_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert "InlineBinary" not in md["00431028"]
    assert c.retrieve_bulkdata(md["00431028"]["BulkDataURI"])[0] == ct[0x00431028].value
    base = _instance_path(ds)
    for sub, status in (("0040a730/3/00091011", 404), ("0040a730/0/00091011", 400), ("0040a730", 400),
                        ("zz", 400), ("0040a730/1", 400), ("00091234", 404)):
        assert srv.get(f"{base}/bulk/{sub}").status == status, sub


def test_person_names_keep_their_component_groups(web):
    from .synth import with_patient_name
    srv, c = web
    names = {"JP1": ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["ISO 2022 IR 6", "ISO 2022 IR 87", "ISO 2022 IR 13"],
                     {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}),
             "JP2": ("Yamada^Tarou=", "ISO_IR 192", {"Alphabetic": "Yamada^Tarou"}),
             "JP3": ("=山田^太郎", "ISO_IR 192", {"Alphabetic": "", "Ideographic": "山田^太郎"})}
    for pid, (name, charset, _) in names.items():
        blob = with_patient_name(ct_instance(rows=8, cols=8, index=1, patient_id=pid), name, charset)
        assert srv.post("/instances", blob).status == 200
    for pid, (_, _, groups) in names.items():
        [study] = c.search_for_studies(search_filters={"PatientID": pid})
        assert study["00100010"]["Value"] == [groups], pid
        [inst] = c.search_for_instances(search_filters={"PatientID": pid})
        assert inst["00100010"]["Value"] == [groups], pid
        md = c.retrieve_study_metadata(uid(f"{pid}/st1"))
        assert md[0]["00100010"]["Value"] == [groups], pid


def test_stow_answers_as_orthancs_plugin_does(web):
    srv, c = web
    boundary = "b0undary"
    mp = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}

    def body(*parts: tuple[str, bytes]) -> bytes:
        out = b"".join(f"--{boundary}\r\nContent-Type: {t}\r\n\r\n".encode() + d + b"\r\n" for t, d in parts)
        return out + f"--{boundary}--\r\n".encode()
    one = ct_instance(rows=8, cols=8, index=1, patient_id="STOWSHAPE")
    r = srv.post("/dicom-web/studies", body(("application/dicom", one)), headers=mp)
    js = r.json()
    assert r.status == 200 and js["00080005"]["Value"] == ["ISO_IR 192"]
    assert js["00081198"] == {"vr": "SQ"}                      # present, empty
    assert js["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{uid('STOWSHAPE/st1')}")
    [item] = js["00081199"]["Value"]
    assert set(item) == {"00081150", "00081155", "00081190"}
    # a part labelled as something else than DICOM is a failure, said so, and not stored
    other = ct_instance(rows=8, cols=8, index=2, patient_id="STOWSHAPE")
    r = srv.post("/dicom-web/studies", body(("application/dicom+json", other)), headers=mp)
    assert r.status == 409 and r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert r.json()["00081199"] == {"vr": "SQ"}
    assert len(c.search_for_instances(search_filters={"PatientID": "STOWSHAPE"})) == 1
    # a multipart Content-Type without its boundary: 415, as Orthanc's plugin answers
    r = srv.post("/dicom-web/studies", body(("application/dicom", other)),
                 headers={"Content-Type": 'multipart/related; type="application/dicom"'})
    assert r.status == 415 and "boundary" in r.json()["Message"]
    r = srv.post("/dicom-web/studies", body(), headers=mp)
    assert r.status == 200 and r.json()["00081199"] == {"vr": "SQ"} and r.json()["00081198"] == {"vr": "SQ"}


def test_wado_uri_finds_an_instance_by_its_object_uid_alone(web):
    srv, _ = web
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    r = srv.get(f"/wado?requestType=WADO&objectUID={ct.SOPInstanceUID}")
    assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg" and r.body[:2] == b"\xff\xd8"
    r = srv.get(f"/wado?requestType=WADO&objectUID={ct.SOPInstanceUID}&contentType=application/dicom")
    assert r.status == 200 and pydicom.dcmread(io.BytesIO(r.body)).SOPInstanceUID == ct.SOPInstanceUID
    # the study and series, when given, must be the instance's
    r = srv.get(f"/wado?requestType=WADO&studyUID={ct.StudyInstanceUID}&seriesUID=1.2.3&objectUID={ct.SOPInstanceUID}")
    assert r.status == 404
    for query, status in (("&contentType=image/gif", 400), ("&frameNumber=2", 404), ("&frameNumber=x", 400),
                          ("&contentType=application/dicom&transferSyntax=1.2.3", 400)):
        assert srv.get(f"/wado?requestType=WADO&objectUID={ct.SOPInstanceUID}{query}").status == status, query
    assert srv.get("/wado?requestType=WADO&objectUID=1.2.826.0.1.3680043.2.1143.999").status == 404
