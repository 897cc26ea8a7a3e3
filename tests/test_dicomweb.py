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
    assert "FailedSOPSequence" not in res
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
    assert r.status == 406
    assert r.json()["HttpError"] == "Not Acceptable" and "contentType must be" in r.json()["Message"]
