"""Query/retrieve against real clients: DCMTK findscu/movescu/getscu/storescp and pynetdicom."""

import io
import json
import re
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from .helpers import TEST_FILES, dcmtk, free_port, wait_listening
from .synth import ct_instance, uid

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def load(server, n_series=2, per_series=5):
    """CT_small, MR_small and a synthetic patient (Müller^Anna) with two CT series."""
    for name in ("CT_small.dcm", "MR_small.dcm"):
        assert server.post("/instances", (TEST_FILES / name).read_bytes()).status == 200
    for s in range(n_series):
        for i in range(per_series):
            data = ct_instance(rows=16, cols=16, patient_id="SYN1", patient_name="Müller^Anna", study="teach",
                               series=f"se{s}", index=i + 1, study_date="20230615",
                               study_description="Chest teaching case")
            assert server.post("/instances", data).status == 200


def findscu_values(output: str, keyword: str) -> list[str]:
    """Values of ``keyword`` in findscu's printed answers."""
    out = []
    for line in output.splitlines():
        if f"# {keyword}" in line or line.rstrip().endswith(keyword):
            if "[" in line and "]" in line:
                out.append(line.split("[", 1)[1].split("]", 1)[0].strip())
            elif "(no value available)" in line:
                out.append("")
            else:  # binary VRs: "(0028,0010) US 16   #   2, 1 Rows"
                m = re.search(r"\)\s+[A-Z]{2}\s+(\S+)\s+#", line)
                if m:
                    out.append(m.group(1))
    return out


@pytest.fixture
def loaded(server):
    load(server)
    return server


def test_find_on_keys_the_index_cannot_match_ignores_them(loaded):
    # PS3.4's baseline: a key we cannot match on is a return key, not a failed query
    r = run([dcmtk("findscu"), "-aec", "PIPACS", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
             "-k", "PatientAge=045Y", "-k", "(0009,0010)=PRIVATE", "-k", "PatientID=SYN1",
             "127.0.0.1", str(loaded.dicom_port)])
    assert r.returncode == 0 and "Failed" not in r.stderr, r.stderr
    assert findscu_values(r.stdout + r.stderr, "StudyInstanceUID") == [uid("SYN1/teach")]   # PatientID still matched
    loaded.wait_for_log("0009,0010, 0010,1010 not indexed, so not matched on")
    # the association's summary line comes after anything its C-FIND logged
    assert "Traceback" not in loaded.wait_for_log(re.compile(r"association FINDSCU@.* released"))


def test_findscu_study_root_each_level(loaded):
    port = str(loaded.dicom_port)
    r = run([dcmtk("findscu"), "-aec", "PIPACS", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=*",
             "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances", "-k", "NumberOfStudyRelatedSeries",
             "-k", "ModalitiesInStudy", "127.0.0.1", port])
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert sorted(findscu_values(out, "NumberOfStudyRelatedInstances")) == ["1", "1", "10"]
    assert sorted(findscu_values(out, "NumberOfStudyRelatedSeries")) == ["1", "1", "2"]
    assert sorted(findscu_values(out, "ModalitiesInStudy")) == ["CT", "CT", "MR"]
    st = uid("SYN1/teach")
    r = run([dcmtk("findscu"), "-aec", "PIPACS", "-S", "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={st}",
             "-k", "SeriesInstanceUID", "-k", "NumberOfSeriesRelatedInstances", "-k", "Modality", "127.0.0.1", port])
    out = r.stdout + r.stderr
    assert findscu_values(out, "NumberOfSeriesRelatedInstances") == ["5", "5"]
    r = run([dcmtk("findscu"), "-aec", "PIPACS", "-S", "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={st}",
             "-k", f"SeriesInstanceUID={uid('SYN1/teach/se0')}", "-k", "SOPInstanceUID", "-k", "InstanceNumber",
             "-k", "SOPClassUID", "-k", "Rows", "127.0.0.1", port])
    out = r.stdout + r.stderr
    assert sorted(findscu_values(out, "InstanceNumber"), key=int) == ["1", "2", "3", "4", "5"]
    assert out.count("=CTImageStorage") == 5  # DCMTK prints well-known UIDs by name
    assert set(findscu_values(out, "Rows")) == {"16"}  # not indexed: read from the stored file


def test_findscu_patient_root_wildcards_ranges_lists(loaded):
    port = str(loaded.dicom_port)

    def names(*keys, level="PATIENT", model="-P"):
        args = [dcmtk("findscu"), "-aec", "PIPACS", model, "-k", f"QueryRetrieveLevel={level}", "-k", "PatientName"]
        for k in keys:
            args += ["-k", k]
        r = run(args + ["127.0.0.1", port])
        assert r.returncode == 0, r.stderr
        return sorted(findscu_values(r.stdout + r.stderr, "PatientName"))

    assert names("PatientID=*") == ["CompressedSamples^CT1", "CompressedSamples^MR1", "Müller^Anna"]
    assert names("PatientID=?CT?") == ["CompressedSamples^CT1"]
    assert names("PatientID=1CT1\\4MR1") == ["CompressedSamples^CT1", "CompressedSamples^MR1"]
    assert names("PatientName=compressed*") == ["CompressedSamples^CT1", "CompressedSamples^MR1"]
    assert names("StudyDate=20230101-", level="STUDY") == ["Müller^Anna"]
    assert names("StudyDate=-20041231", level="STUDY") == ["CompressedSamples^CT1", "CompressedSamples^MR1"]
    assert names("StudyDate=20040119", level="STUDY", model="-S") == ["CompressedSamples^CT1"]


def _find(port, ident, model=StudyRootQueryRetrieveInformationModelFind, aet="PYSCU"):
    ae = AE(ae_title=aet)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="PIPACS")
    assert assoc.is_established
    try:
        return [(s.Status, a, s) for s, a in assoc.send_c_find(ident, model)]
    finally:
        assoc.release()


def test_pynetdicom_find_charset_and_failures(loaded):
    ident = Dataset()
    ident.SpecificCharacterSet = "ISO_IR 100"
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientName = "MÜLLER*"
    ident.StudyInstanceUID = ""
    res = _find(loaded.dicom_port, ident)
    pending = [a for st, a, _ in res if st == 0xFF00]
    assert len(pending) == 1
    assert pending[0].PatientName == "Müller^Anna"
    assert pending[0].SpecificCharacterSet == "ISO_IR 100"  # the answer fits in the request's character set
    assert res[-1][0] == 0x0000

    bad_date = Dataset()
    bad_date.QueryRetrieveLevel = "STUDY"
    bad_date.StudyDate = "2004-13-45"
    st, _, status = _find(loaded.dicom_port, bad_date)[-1]
    assert st == 0xA900 and "StudyDate" in status.ErrorComment or "0008,0020" in status.ErrorComment

    bad_level = Dataset()
    bad_level.QueryRetrieveLevel = "GALAXY"
    st, _, status = _find(loaded.dicom_port, bad_level)[-1]
    assert st == 0xA900 and "GALAXY" in status.ErrorComment

    patient_in_study_root = Dataset()
    patient_in_study_root.QueryRetrieveLevel = "PATIENT"
    assert _find(loaded.dicom_port, patient_in_study_root)[-1][0] == 0xA900

    many = Dataset()
    many.QueryRetrieveLevel = "STUDY"
    many.StudyInstanceUID = [uid(f"x{i}") for i in range(6000)]
    st, _, status = _find(loaded.dicom_port, many)[-1]
    assert st == 0xA900 and "too many" in status.ErrorComment

    uids = Dataset()
    uids.QueryRetrieveLevel = "STUDY"
    uids.StudyInstanceUID = [uid(f"x{i}") for i in range(2000)] + [CT_STUDY]
    assert [st for st, _, _ in _find(loaded.dicom_port, uids)] == [0xFF00, 0x0000]
    # six associations, one after the other: the sixth's summary line comes after anything they logged
    since = 0
    for _ in range(6):
        since += len(loaded.wait_for_log("association PYSCU@", since=since))
    assert "Traceback" not in loaded.log


def test_find_cancel_stops_answers(server):
    for k in range(400):
        server.post("/instances", ct_instance(rows=8, cols=8, patient_id=f"C{k}", study=f"s{k}"))
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PIPACS")
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    statuses = []
    for st, _ in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind, msg_id=7):
        statuses.append(st.Status)
        if len(statuses) == 3:
            assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelFind)
    assoc.release()
    assert statuses[-1] == 0xFE00
    assert len(statuses) < 400


class StoreSCP:
    """DCMTK storescp as a C-MOVE destination, on a free loopback port."""

    def __init__(self, folder: Path, aet: str = "RECEIVER"):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.aet = aet
        self.proc = subprocess.Popen([dcmtk("storescp"), "-aet", aet, "-od", str(folder), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc)

    def files(self):
        return sorted(self.folder.glob("*"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


@pytest.fixture
def storescp(tmp_path):
    s = StoreSCP(tmp_path / "received")
    yield s
    s.stop()


def test_movescu_to_storescp_registered(make_server, storescp):
    srv = make_server({"DicomModalities": {"recv": [storescp.aet, "127.0.0.1", storescp.port]},
                       "ClassroomMode": False, "DicomAlwaysAllowMove": True})
    load(srv)
    r = run([dcmtk("movescu"), "-aec", "PIPACS", "-aem", storescp.aet, "-S", "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={uid('SYN1/teach')}", "127.0.0.1", str(srv.dicom_port)])
    assert r.returncode == 0, r.stderr
    assert len(storescp.files()) == 10
    received = {pydicom.dcmread(p).SOPInstanceUID for p in storescp.files()}
    assert uid("SYN1/teach/se1/5") in received


def test_pynetdicom_move_counts_and_unknown_destination(make_server, storescp):
    srv = make_server({"DicomModalities": {"recv": [storescp.aet, "127.0.0.1", storescp.port]},
                       "ClassroomMode": False, "DicomAlwaysAllowMove": True})
    load(srv)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS")
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.StudyInstanceUID = uid("SYN1/teach")
    ident.SeriesInstanceUID = uid("SYN1/teach/se0")
    rsps = [s for s, _ in assoc.send_c_move(ident, storescp.aet, StudyRootQueryRetrieveInformationModelMove)]
    pending = [s for s in rsps if s.Status == 0xFF00]
    assert [s.NumberOfRemainingSuboperations for s in pending] == [4, 3, 2, 1, 0]
    assert rsps[-1].Status == 0x0000 and rsps[-1].NumberOfCompletedSuboperations == 5
    assert rsps[-1].NumberOfFailedSuboperations == 0
    unknown = [s for s, _ in assoc.send_c_move(ident, "NOBODY", StudyRootQueryRetrieveInformationModelMove)]
    assert unknown[-1].Status == 0xA801
    assoc.release()


def test_move_to_unreachable_destination_answers_in_time(make_server):
    closed = free_port()
    srv = make_server({"DicomModalities": {"gone": ["GONE", "127.0.0.1", closed]}, "DicomScuTimeout": 3})
    load(srv, n_series=1, per_series=2)
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS")
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = uid("SYN1/teach")
    try:
        statuses = [s.Status for s, _ in assoc.send_c_move(ident, "GONE", StudyRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()
    # one failed attempt to reach the destination, then the answer: no pending answers, no try per
    # instance (each would wait up to DicomScuTimeout for a host that does not answer)
    assert statuses == [0xA801]
    srv.wait_for_log(re.compile(r"association MOVER@.* released"))
    assert srv.log.count("Unable to associate with destination") == 1


def test_getscu_and_pynetdicom_get(loaded, tmp_path):
    out = tmp_path / "got"
    out.mkdir()
    r = run([dcmtk("getscu"), "-aec", "PIPACS", "-S", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={uid('SYN1/teach')}", "127.0.0.1", str(loaded.dicom_port)])
    assert r.returncode == 0, r.stderr
    assert len(list(out.iterdir())) == 10

    received = []
    ae = AE(ae_title="IPAD01")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    role = build_role(CTImageStorage, scp_role=True)

    def on_store(event):
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000

    assoc = ae.associate("127.0.0.1", loaded.dicom_port, ae_title="PIPACS", ext_neg=[role],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID = uid("SYN1/teach")
    ident.SeriesInstanceUID = uid("SYN1/teach/se1")
    ident.SOPInstanceUID = [uid("SYN1/teach/se1/2"), uid("SYN1/teach/se1/3")]
    rsps = [s for s, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    assert sorted(received) == sorted([uid("SYN1/teach/se1/2"), uid("SYN1/teach/se1/3")])
    assert rsps[-1].Status == 0x0000 and rsps[-1].NumberOfCompletedSuboperations == 2


def test_get_with_a_level_the_model_lacks_fails_with_the_reason(loaded, tmp_path):
    # getscu -S with PATIENT level: nothing can come, and the viewer should say why, not "Success"
    r = run([dcmtk("getscu"), "-aec", "PIPACS", "-S", "-od", str(tmp_path), "-k", "QueryRetrieveLevel=PATIENT",
             "-k", "PatientID=SYN1", "127.0.0.1", str(loaded.dicom_port)])
    # (getscu 3.6.7 leaves the final response's Failed SOP Instance UID List unread, so its
    # release then fails: its own matter, and the same for any failed C-GET)
    assert "DIMSE status is: Error: DataSetDoesNotMatchSOPClass" in r.stdout + r.stderr, r.stderr
    assert not list(tmp_path.glob("*.dcm")) and not list(tmp_path.glob("CT*"))
    ae = AE(ae_title="IPAD03")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    assoc = ae.associate("127.0.0.1", loaded.dicom_port, ae_title="PIPACS")
    ident = Dataset()
    ident.QueryRetrieveLevel = "PATIENT"
    ident.PatientID = "SYN1"
    rsps = [s for s, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)]
    assert assoc.is_established
    assoc.release()
    assert rsps[-1].Status == 0xA900 and "no PATIENT level" in rsps[-1].ErrorComment


def test_get_without_storage_role_reports_failures(loaded):
    ae = AE(ae_title="IPAD02")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(MRImageStorage)  # no CT context: the CT instances cannot be sent
    assoc = ae.associate("127.0.0.1", loaded.dicom_port, ae_title="PIPACS")
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = uid("SYN1/teach")
    rsps = [s for s, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    final = rsps[-1]
    assert final.NumberOfFailedSuboperations == 10 and final.Status in (0xA702, 0xB000)
    assert loaded.get_json("/statistics")["CountInstances"] == 12


def test_classroom_mode_lets_unknown_ipads_in_and_moves_back_to_them(make_server, storescp):
    srv = make_server({"ClassroomMode": True, "ClassroomMovePort": storescp.port})
    load(srv, n_series=1, per_series=3)
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    assert [s for s, _, _ in _find(srv.dicom_port, ident, aet="STUDENT07")][-1] == 0x0000
    # C-MOVE to an AE title nobody configured: it goes to the requester's address on ClassroomMovePort
    r = run([dcmtk("movescu"), "-aet", "STUDENT07", "-aec", "PIPACS", "-aem", "STUDENT07", "-S",
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid('SYN1/teach')}",
             "127.0.0.1", str(srv.dicom_port)])
    assert r.returncode == 0, r.stderr
    assert len(storescp.files()) == 3
    mods = srv.get_json("/modalities?expand")
    assert mods["STUDENT07"]["Host"] == "127.0.0.1" and mods["STUDENT07"]["Port"] == storescp.port
    srv.wait_for_log("classroom mode: C-MOVE destination STUDENT07 is 127.0.0.1:")


def test_without_classroom_mode_unknown_aes_are_refused(make_server):
    srv = make_server({"ClassroomMode": False})
    load(srv, n_series=1, per_series=1)
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    st, _, status = _find(srv.dicom_port, ident, aet="STRANGER")[-1]
    assert st == 0x0124 and "DicomAlwaysAllowFind" in status.ErrorComment
    run([dcmtk("getscu"), "-aet", "STRANGER", "-aec", "PIPACS", "-S", "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={uid('SYN1/teach')}", "127.0.0.1", str(srv.dicom_port)])
    srv.wait_for_log(re.compile(r"C-GET from STRANGER .* refused: .*DicomAlwaysAllowGet"))
    # a known modality may
    srv.request("PUT", "/modalities/ws", '{"AET": "STRANGER", "Host": "127.0.0.1", "Port": 11112}')
    assert [s for s, _, _ in _find(srv.dicom_port, ident, aet="STRANGER")][-1] == 0x0000
    # echo and store stay open by default, as in Orthanc
    assert run([dcmtk("echoscu"), "-aet", "OTHER", "-aec", "PIPACS", "127.0.0.1", str(srv.dicom_port)]).returncode == 0


def test_parallel_students(loaded, tmp_path):
    procs = []
    for k in range(8):
        out = tmp_path / f"ipad{k}"
        out.mkdir()
        procs.append(subprocess.Popen(
            [dcmtk("getscu"), "-aet", f"IPAD{k}", "-aec", "PIPACS", "-S", "-od", str(out), "-k",
             "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid('SYN1/teach')}", "127.0.0.1",
             str(loaded.dicom_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(
            [dcmtk("findscu"), "-aet", f"IPAD{k}", "-aec", "PIPACS", "-S", "-k", "QueryRetrieveLevel=STUDY",
             "-k", "PatientName=*", "127.0.0.1", str(loaded.dicom_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    assert all(p.wait(120) == 0 for p in procs)
    for k in range(8):
        assert len(list((tmp_path / f"ipad{k}").iterdir())) == 10
    assert loaded.get("/system").status == 200


def test_aborting_peer_leaves_archive_untouched(loaded):
    before = loaded.get_json("/statistics")
    ae = AE(ae_title="ABORTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    role = build_role(CTImageStorage, scp_role=True)
    got = []

    def on_store(event):
        got.append(1)
        return 0x0000

    assoc = ae.associate("127.0.0.1", loaded.dicom_port, ae_title="PIPACS", ext_neg=[role],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = uid("SYN1/teach")
    # aborted after the second of ten sub-operations, while the server goes on with the next ones.
    # (Aborted from the C-STORE handler, as before, the peer's own send_c_get is not woken by its
    # abort and waits out its DIMSE timeout, 30 s: the test's whole duration.)
    for _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet):
        if len(got) >= 2:
            assoc.abort()
            break
    assert assoc.is_aborted and 2 <= len(got) < 10
    loaded.wait_for_log(re.compile(r"association ABORTER@.* aborted"))   # the server saw it through
    assert loaded.get_json("/statistics") == before
    ident2 = Dataset()
    ident2.QueryRetrieveLevel = "STUDY"
    ident2.StudyInstanceUID = ""
    assert _find(loaded.dicom_port, ident2)[-1][0] == 0x0000


def test_get_converts_to_implicit_when_that_is_all_the_peer_takes(loaded):
    from pydicom.uid import ImplicitVRLittleEndian
    received = []
    ae = AE(ae_title="OLDVIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
    role = build_role(CTImageStorage, scp_role=True)

    def on_store(event):
        received.append((event.context.transfer_syntax, event.dataset))
        return 0x0000

    assoc = ae.associate("127.0.0.1", loaded.dicom_port, ae_title="PIPACS", ext_neg=[role],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.StudyInstanceUID = uid("SYN1/teach")
    ident.SeriesInstanceUID = uid("SYN1/teach/se0")
    rsps = [s for s, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    assert rsps[-1].NumberOfCompletedSuboperations == 5
    ts, ds = received[0]
    assert ts == ImplicitVRLittleEndian
    orig = pydicom.dcmread(io.BytesIO(ct_instance(rows=16, cols=16, patient_id="SYN1", patient_name="Müller^Anna",
                                                  study="teach", series="se0", index=ds.InstanceNumber,
                                                  study_date="20230615",
                                                  study_description="Chest teaching case")))
    assert ds.PixelData == orig.PixelData and ds.PatientName == "Müller^Anna"


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192", ""])
@pytest.mark.parametrize("implicit", [True, False])
def test_answers_are_encoded_exactly_as_pydicom_would(charset, implicit):
    """Answers carry pre-encoded elements (the fast path); the bytes must not change."""
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    from appliance.archive.qr import _element, answer_dataset
    wanted = [(0x00100010, "PN"), (0x0020000D, "UI"), (0x00080020, "DA"), (0x00201208, "IS"), (0x00080061, "CS"),
              (0x00080054, "AE"), (0x00081030, "LO"), (0x00100030, "DA")]
    values = {0x00100010: "Müller^Hans", 0x0020000D: "1.2.3.4.5", 0x00080020: "20240102", 0x00201208: "12",
              0x00080061: "CT\\MR", 0x00081030: "Thorax"}
    if not charset:
        values = {k: v.replace("ü", "u") for k, v in values.items()}
    ref = Dataset()
    if charset:
        ref.SpecificCharacterSet = charset
    ref.QueryRetrieveLevel = "STUDY"
    for tag, vr in wanted:
        ref.add(_element(tag, vr, "PIPACS" if tag == 0x00080054 else values.get(tag, "")))
    fast = answer_dataset("STUDY", wanted, values, charset, "PIPACS", (implicit, True))
    assert encode(fast, implicit, True, False) == encode(ref, implicit, True, False)


def test_explicit_to_implicit_at_the_byte_level_matches_pydicom():
    """What C-GET/C-MOVE send to a peer that takes only Implicit VR: the same dataset pydicom would write."""
    import io
    import warnings

    import pydicom
    from pydicom.filereader import read_dataset
    from pynetdicom.dsutils import encode

    from appliance.archive.dicomfile import _read_meta
    from appliance.dicom.transport import explicit_to_implicit_le

    from .helpers import TEST_FILES
    from .synth import ct_instance
    blobs = [ct_instance(rows=16, cols=16)] + [p.read_bytes() for p in sorted(TEST_FILES.glob("*.dcm"))]
    converted = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data in blobs:
            if data[128:132] != b"DICM":
                continue
            try:
                ds = pydicom.dcmread(io.BytesIO(data))
                ref = encode(ds, True, True, False)
            except Exception:
                continue
            if ds.file_meta.get("TransferSyntaxUID") != "1.2.840.10008.1.2.1" or ref is None:
                continue
            ours = explicit_to_implicit_le(memoryview(data)[_read_meta(data, 132)[1]:])
            if ours is None:
                continue   # left to pydicom (e.g. UN of undefined length)
            converted += 1
            a, b = read_dataset(io.BytesIO(ours), True, True), read_dataset(io.BytesIO(ref), True, True)
            assert [(e.tag, e.value) for e in a.iterall()] == [(e.tag, e.value) for e in b.iterall()]
    assert converted >= 10
    assert explicit_to_implicit_le(b"\x10\x00\x10\x00PN\x20\x00abc") is None   # truncated: refused


def test_large_instances_cross_intact_in_many_small_pdus(make_server):
    """A 512 KB instance to peers that take 4 KB PDUs (130 PDUs per message, sent in one write):
    C-GET and C-MOVE deliver the stored dataset bytes unchanged."""
    srv = make_server()
    stored = [ct_instance(patient_id="BIG", study="big", index=i, pixel_seed=i) for i in (1, 2)]
    for data in stored:
        assert srv.post("/instances", data).status == 200
    body_of = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: d[d.index(b"\x08\x00", 132 + 12):] for d in stored}

    received: dict[str, bytes] = {}

    def on_store(event):
        received[event.request.AffectedSOPInstanceUID] = event.request.DataSet.getvalue()
        return 0x0000

    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = uid("BIG/big")

    ae = AE(ae_title="SMALLPDU")
    ae.maximum_pdu_size = 4096
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    rsps = [s for s, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    assert rsps[-1].NumberOfCompletedSuboperations == 2
    assert received == body_of

    received.clear()
    scp_ae = AE(ae_title="SMALLSCP")
    scp_ae.maximum_pdu_size = 4096
    scp_ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    scp = scp_ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        port = scp.server_address[1]
        r = srv.request("PUT", "/modalities/small", json.dumps({"AET": "SMALLSCP", "Host": "127.0.0.1", "Port": port}))
        assert r.status == 200, r.body
        ae = AE(ae_title="MOVER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS")
        rsps = [s for s, _ in assoc.send_c_move(ident, "SMALLSCP", StudyRootQueryRetrieveInformationModelMove)]
        assoc.release()
    finally:
        scp.shutdown()
    assert rsps[-1].NumberOfCompletedSuboperations == 2
    assert received == body_of


def test_command_sets_are_encoded_exactly_as_pydicom_would():
    from pynetdicom import dimse_messages as messages
    from pynetdicom import dimse_primitives as prim
    from pynetdicom.dsutils import encode

    from appliance.dicom.transport import encode_command_set

    def make(cls, **values):
        p = cls()
        for k, v in values.items():
            setattr(p, k, v)
        return p

    ct = "1.2.840.10008.5.1.4.1.1.2"
    cases = [
        (messages.C_STORE_RQ, make(prim.C_STORE, MessageID=5, AffectedSOPClassUID=ct, AffectedSOPInstanceUID="1.2.3.44",
                                   Priority=2, MoveOriginatorApplicationEntityTitle="MOVER",
                                   MoveOriginatorMessageID=3, DataSet=io.BytesIO(b"xx"))),
        (messages.C_STORE_RSP, make(prim.C_STORE, MessageIDBeingRespondedTo=5, AffectedSOPClassUID=ct,
                                    AffectedSOPInstanceUID="1.2.3.4", Status=0xA700, ErrorComment="disk full",
                                    OffendingElement=[0x00100010, 0x00080018])),
        (messages.C_FIND_RSP, make(prim.C_FIND, MessageIDBeingRespondedTo=7, AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1",
                                   Status=0xFF00, Identifier=io.BytesIO(b"abcd"))),
        (messages.C_MOVE_RQ, make(prim.C_MOVE, MessageID=9, AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.2",
                                  Priority=0, MoveDestination="STORESCP", Identifier=io.BytesIO(b"ab"))),
        (messages.C_GET_RSP, make(prim.C_GET, MessageIDBeingRespondedTo=9, AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.3",
                                  Status=0xFF00, NumberOfRemainingSuboperations=99, NumberOfCompletedSuboperations=1,
                                  NumberOfFailedSuboperations=0, NumberOfWarningSuboperations=0)),
        (messages.C_ECHO_RQ, make(prim.C_ECHO, MessageID=1, AffectedSOPClassUID="1.2.840.10008.1.1")),
        (messages.C_CANCEL_RQ, make(prim.C_CANCEL, MessageIDBeingRespondedTo=1)),
    ]
    for cls, primitive in cases:
        message = cls()
        message.primitive_to_message(primitive)
        assert encode_command_set(message.command_set) == encode(message.command_set, True, True), cls.__name__
    odd = Dataset()
    odd.PatientName = "not a command"   # group 0010: left to pydicom
    assert encode_command_set(odd) is None


def test_supported_contexts_copy_quickly_and_faithfully():
    import copy

    from pynetdicom import ALL_TRANSFER_SYNTAXES
    from pynetdicom.presentation import AllStoragePresentationContexts

    from appliance.dicom.transport import _QuicklyCopiedContext, quickly_copied

    ae = AE()
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    quick = quickly_copied(ae.supported_contexts)
    copies = copy.deepcopy(quick)
    # quick because nothing is rebuilt: the copies share the (immutable) UID objects, where
    # pynetdicom's own deep copy makes and validates 5000 new ones (its time: `make bench`, "contexts")
    assert all(type(c) is _QuicklyCopiedContext for c in copies)
    assert all(c.abstract_syntax is q.abstract_syntax and c._transfer_syntax is not q._transfer_syntax
               and all(x is y for x, y in zip(c._transfer_syntax, q._transfer_syntax)) for c, q in zip(copies, quick))
    theirs = copy.deepcopy(ae.supported_contexts[:1])[0]   # the other way round, to show the check means something
    assert theirs.abstract_syntax is not ae.supported_contexts[0].abstract_syntax
    for a, b in zip(ae.supported_contexts, copies):
        assert (a.abstract_syntax, a.transfer_syntax, a.scu_role, a.scp_role) == \
            (b.abstract_syntax, b.transfer_syntax, b.scu_role, b.scp_role)
    copies[0].transfer_syntax.append("1.2.3")
    assert "1.2.3" not in quick[0].transfer_syntax


def test_pynetdicom_speedups_are_in_place():
    """Each speed-up falls back to pynetdicom's own way when its internals change; this says when
    that happens (after a pynetdicom upgrade) instead of a silent slow-down."""
    import pynetdicom.dimse_messages as messages
    from pynetdicom import association, dimse, fsm

    from appliance.dicom.transport import _PausedFlag, _WakeableClock, install_speedups

    install_speedups()
    install_speedups()   # idempotent
    assert getattr(association.encode, "_pipacs", False) and getattr(messages.encode, "_pipacs", False)
    assert getattr(dimse.DIMSEServiceProvider.send_msg, "_pipacs", False)
    assert isinstance(association.time, _WakeableClock)
    assert fsm.ACTIONS["DT-1"][1].__name__ == "run"
    from pynetdicom import pdu_items, presentation
    assert getattr(pdu_items.set_uid, "_pipacs", False) and getattr(presentation.set_uid, "_pipacs", False)
    uid = pdu_items.set_uid(b"1.2.840.10008.1.2.1", "Transfer Syntax Name")
    assert uid == "1.2.840.10008.1.2.1" and pdu_items.set_uid("1.2.840.10008.1.2.1", "x") == uid
    for _ in range(2):   # a bad value is refused every time, never remembered
        with pytest.raises(ValueError):
            pdu_items.set_uid("1." * 40, "Abstract Syntax Name")
    assert isinstance(association.Association.__dict__["_is_paused"], _PausedFlag)


@pytest.mark.parametrize("max_pdu", [0, 4096, 16382, 16384, 1 << 20])
@pytest.mark.parametrize("length", [0, 1, 4090, 4091, 16377, 500001])
def test_p_data_pdus_are_pynetdicoms_own(max_pdu, length):
    import random

    from pynetdicom import dimse_messages as messages
    from pynetdicom import dimse_primitives as prim
    from pynetdicom.pdu import P_DATA_TF

    from appliance.dicom.transport import p_data_pdus

    p = prim.C_STORE()
    p.MessageID, p.Priority = 7, 2
    p.AffectedSOPClassUID, p.AffectedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    p.DataSet = io.BytesIO(random.Random(length).randbytes(length))
    message = messages.C_STORE_RQ()
    message.primitive_to_message(p)
    theirs = b"".join(P_DATA_TF(pd).encode() for pd in message.encode_msg(3, max_pdu))
    ours = p_data_pdus(3, messages.encode(message.command_set, True, True), message.data_set.getvalue(), max_pdu)
    assert b"".join(ours) == theirs


def test_the_reactor_reads_as_paused_only_while_it_is_held():
    """pynetdicom's own flag could say 'paused' while the reactor went on to take the reply a
    sending thread was about to wait for (a C-MOVE then hung for the 30 s DIMSE timeout)."""
    import threading

    from pynetdicom.association import Association

    from appliance.dicom.transport import _hold_at_checkpoint, install_speedups

    install_speedups()
    assoc = Association(AE(), "requestor")
    checkpoint = assoc._reactor_checkpoint
    _hold_at_checkpoint(assoc)

    def reactor_turn():       # what pynetdicom's reactor does on each turn
        assoc._is_paused = True
        checkpoint.wait()
        assoc._is_paused = False

    # the reactor passed the checkpoint just before a sender cleared it: not paused
    assoc._is_paused = True
    assert checkpoint.wait() is True
    checkpoint.clear()
    assert assoc._is_paused is False
    assoc._is_paused = False
    # held at the cleared checkpoint: paused
    turn = threading.Thread(target=reactor_turn)
    turn.start()
    deadline = time.monotonic() + 5
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.001)
    assert assoc._is_paused is True
    # released by the sender: no longer paused, even before the reactor thread runs again
    checkpoint.set()
    assert assoc._is_paused is False
    checkpoint.clear()
    assert assoc._is_paused is False
    turn.join(5)
    assert not turn.is_alive()
    # a reactor running a service (and sending itself) is paused, set or not
    assoc._is_paused = True
    checkpoint.set()
    assert assoc._is_paused is True


def test_a_napping_reactor_reads_as_paused():
    """After its nap the reactor stops at the checkpoint before it looks at any message, so a
    sender need not wake it and wait for it to get there."""
    import threading

    from appliance.dicom.transport import (
        PYNETDICOM_NAP,
        _PausedFlag,
        _WakeableClock,
        _Wakeup,
    )

    flag, wakeup, stop = _PausedFlag(), _Wakeup(), threading.Event()

    def naps():              # the reactor's loop when nothing happens: one nap after another
        while not stop.is_set():
            _WakeableClock(time).sleep(PYNETDICOM_NAP)

    reactor = threading.Thread(target=naps)
    reactor._pipacs_wakeup = wakeup
    assert flag.__get__(reactor) is False
    reactor.start()
    deadline = time.monotonic() + 5
    while not flag.__get__(reactor) and time.monotonic() < deadline:
        time.sleep(0.0005)
    assert flag.__get__(reactor) is True     # napping (for up to IDLE_WAIT, or until woken)
    stop.set()
    wakeup.reactor.set()
    reactor.join(5)
    assert flag.__get__(reactor) is False
    wakeup.close()


def test_a_message_written_in_pieces_arrives_whole():
    import random
    import socket
    import threading

    from appliance.dicom.transport import FastAssociationSocket, p_data_pdus

    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)   # many partial writes
    sock = FastAssociationSocket.__new__(FastAssociationSocket)
    sock.socket = a
    data = random.Random(1).randbytes(300_000)
    parts = p_data_pdus(1, b"command", data, 4096) * 2
    expected = b"".join(parts)
    received = bytearray()

    def read():
        while len(received) < len(expected):
            received.extend(b.recv(65536))

    reader = threading.Thread(target=read)
    reader.start()
    sock.send(parts)
    reader.join(10)
    a.close()
    b.close()
    assert bytes(received) == expected
