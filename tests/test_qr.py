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

from .helpers import TEST_FILES, RefusingPort, dcmtk, free_port, wait_listening
from .synth import ct_instance, uid

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


def run(cmd, **kw):
    # findscu prints values in the answer's own bytes: Latin-1 (ISO_IR 100) unless asked otherwise
    return subprocess.run(cmd, capture_output=True, text=True, encoding="latin-1", timeout=120, **kw)


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
    assert st == 0xC000 and "GALAXY" in status.ErrorComment     # Orthanc's status, and why

    plain = Dataset()        # no character set asked: Latin-1, said in every answer, as Orthanc does
    plain.QueryRetrieveLevel = "study "                           # Orthanc's spellings: any case, spaces
    plain.PatientName = "M*"
    answers = [a for st, a, _ in _find(loaded.dicom_port, plain) if st == 0xFF00]
    assert [(a.SpecificCharacterSet, a.PatientName, a.QueryRetrieveLevel) for a in answers] == [
        ("ISO_IR 100", "Müller^Anna", "STUDY")]
    instance = Dataset()
    instance.QueryRetrieveLevel = "INSTANCE"                      # Orthanc's other name of IMAGE
    instance.SOPInstanceUID = ""
    instance.StudyInstanceUID = CT_STUDY
    got = _find(loaded.dicom_port, instance)
    assert [st for st, _, _ in got] == [0xFF00, 0x0000] and got[0][1].SpecificCharacterSet == "ISO_IR 100"

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
    # eight associations, one after the other: the last one's summary line comes after anything they logged
    since = 0
    for _ in range(8):
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
    moved = len(storescp.files())
    unknown = [s for s, _ in assoc.send_c_move(ident, "NOBODY", StudyRootQueryRetrieveInformationModelMove)]
    assert [(s.Status, s.ErrorComment) for s in unknown] == [(0xA801, "unknown move destination 'NOBODY'")]
    # an identifier that selects nothing usable: Orthanc's 0xC000, no sub-operation, and why
    for level, key, value, why in (("STUDY", "PatientName", "Comp*", "no unique key"),
                                   ("GALAXY", "StudyInstanceUID", uid("SYN1/teach"), "GALAXY")):
        bad = Dataset()
        bad.QueryRetrieveLevel = level
        setattr(bad, key, value)
        rsps = [s for s, _ in assoc.send_c_move(bad, storescp.aet, StudyRootQueryRetrieveInformationModelMove)]
        assert len(rsps) == 1 and rsps[0].Status == 0xC000 and why in rsps[0].ErrorComment, rsps
        assert (rsps[0].NumberOfCompletedSuboperations, rsps[0].NumberOfFailedSuboperations) == (0, 0)
    assert len(storescp.files()) == moved == 5
    # the association goes on: the same move as first, again
    again = [s for s, _ in assoc.send_c_move(ident, storescp.aet, StudyRootQueryRetrieveInformationModelMove)]
    assert (again[-1].Status, again[-1].NumberOfCompletedSuboperations) == (0x0000, 5)
    assoc.release()


def test_move_to_unreachable_destination_answers_in_time(make_server):
    closed = RefusingPort()
    srv = make_server({"DicomModalities": {"gone": ["GONE", "127.0.0.1", closed.port]}, "DicomScuTimeout": 3})
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
        closed.close()
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
    # nothing is kept about a student's destination: no AE title is claimed for good, no list grows
    assert srv.get_json("/modalities") == []
    srv.wait_for_log("classroom mode: C-MOVE destination STUDENT07 is the requesting device, 127.0.0.1:")


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

    from appliance.archive.query_answers import _element, answer_dataset
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


def test_get_and_move_whose_identifier_never_comes_are_answered(make_server, storescp):
    """pynetdicom's own client sends no data PDV for an empty identifier (``send_c_get(Dataset())``):
    the listener waits pynetdicom_patches.IDENTIFIER_WAIT for one, then answers; the client's
    DIMSE timeout is the bound (an unanswered request fails it)."""
    srv = make_server({"DicomModalities": {"recv": [storescp.aet, "127.0.0.1", storescp.port]},
                       "ClassroomMode": False, "DicomAlwaysAllowMove": True,
                       "DicomAlwaysAllowGet": True})
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = 15
    ae.dimse_timeout = 10
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS")
    assert assoc.is_established
    try:
        got = [(s.Status, s.get("ErrorComment")) for s, _ in assoc.send_c_get(Dataset(), StudyRootQueryRetrieveInformationModelGet)]
        assert got[-1] == (0xA900, "the identifier has no QueryRetrieveLevel"), got
        mark = srv.log_mark()
        moved = [(s.Status, s.get("ErrorComment"), s.get("NumberOfFailedSuboperations"))
                 for s, _ in assoc.send_c_move(Dataset(), storescp.aet, StudyRootQueryRetrieveInformationModelMove)]
        # an unusable identifier is that failure, with its reason (pynetdicom alone could only say
        # 'move destination unknown': pynetdicom_patches.install_retrieve_refusal), and logged
        assert moved == [(0xA900, "the identifier has no QueryRetrieveLevel", 0)], moved
        srv.wait_for_log("C-MOVE from PYSCU: the identifier has no QueryRetrieveLevel", since=mark)
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_an_identifier_later_than_the_bound_is_dropped_and_the_association_lives_on(server, monkeypatch):
    import inspect

    from pynetdicom import dimse, dimse_messages

    from appliance.dicom.pynetdicom_patches import IDENTIFIER_WAIT

    real = dimse_messages.DIMSEMessage.encode_msg

    def encode_msg(self, context_id, max_pdu_length):
        for n, pdu in enumerate(real(self, context_id, max_pdu_length)):
            if n == 1:      # the identifier's PDU, sent well after the command
                time.sleep(IDENTIFIER_WAIT + 1.5)
            yield pdu

    ae = AE(ae_title="SLOWFIND")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = 15
    ae.dimse_timeout = 10
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PIPACS")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    mark = server.log_mark()
    # pynetdicom's own send_msg, which sends what encode_msg yields (pipacs' batched one, if this
    # process installed it, would not)
    monkeypatch.setattr(dimse.DIMSEServiceProvider, "send_msg", inspect.unwrap(dimse.DIMSEServiceProvider.send_msg))
    dimse_messages.DIMSEMessage.encode_msg = encode_msg
    try:
        got = [(s.Status, s.get("ErrorComment")) for s, _ in
               assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        dimse_messages.DIMSEMessage.encode_msg = real
    try:
        assert got == [(0xA900, "the identifier has no QueryRetrieveLevel")], got
        server.wait_for_log("arrived after its request was served without one", since=mark)
        assert assoc.send_c_echo().Status == 0x0000          # not aborted by the stray data PDV
        answers = [s.Status for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
        assert answers == [0x0000], answers                  # the next query is answered as usual
    finally:
        assoc.release()


def test_a_lone_star_matches_present_values_empty_or_not_never_absent_ones(server):
    """``*`` alone is a wildcard, as Orthanc matches it: a study whose StudyDescription is empty
    matches it, one without the tag does not (an empty key matches both); C-FIND and /tools/find
    alike, at study and at series level (pipacs took ``*`` as universal before)."""
    for study, description in (("with", "CHEST"), ("empty", ""), ("absent", None)):
        ds = pydicom.dcmread(io.BytesIO(ct_instance(rows=8, cols=8, patient_id="STAR", study=study,
                                                      study_description=description or "",
                                                      series_description=description or "")))
        if description is None:
            del ds.StudyDescription, ds.SeriesDescription
        out = io.BytesIO()
        ds.save_as(out)
        assert server.post("/instances", out.getvalue()).status == 200
    present = sorted([uid("STAR/with"), uid("STAR/empty")])
    every = sorted(present + [uid("STAR/absent")])
    for key, want in (("*", present), ("", every), ("C*", [uid("STAR/with")]), ("?*", [uid("STAR/with")])):
        for level, tag in (("STUDY", "StudyDescription"), ("SERIES", "SeriesDescription")):
            ident = Dataset()
            ident.QueryRetrieveLevel = level
            ident.StudyInstanceUID = ""
            setattr(ident, tag, key)
            found = sorted(a.StudyInstanceUID for st, a, _ in _find(server.dicom_port, ident) if st == 0xFF00)
            assert found == want, (level, key)
            rest = server.post_json("/tools/find", {"Level": level.title(), "Query": {tag: key}, "Expand": True})
            key_of = "ParentStudy" if level == "SERIES" else "ID"
            studies = {server.get_json(f"/studies/{r[key_of]}")["MainDicomTags"]["StudyInstanceUID"] for r in rest}
            assert sorted(studies) == want, (level, key, "REST")


@pytest.mark.parametrize(("asked", "values", "said"), [
    ("", ["Doe^Jane"], "ISO_IR 100"),                       # none asked: Latin-1, Orthanc's default, said
    ("", ["Müller^Anna"], "ISO_IR 100"),
    ("", ["Иванов^Иван"], "ISO_IR 192"),                    # beyond Latin-1: UTF-8
    ("ISO_IR 144", ["Иванов^Иван"], "ISO_IR 144"),          # the identifier's own when it fits
    ("ISO_IR 144", ["Müller^Anna"], "ISO_IR 192"),
    ("ISO_IR 192", ["Doe^Jane"], "ISO_IR 192"),
    ("ISO 2022 IR 87", ["Doe^Jane"], "ISO_IR 192"),         # code extensions: UTF-8
])
def test_every_answer_names_the_character_set_it_is_in(asked, values, said):
    from appliance.dicom.qr import FindRequest, Level, answer_charset

    req = FindRequest(Level.STUDY, "STUDY", {}, [], asked)
    assert answer_charset(req, [{0x00100010: v} for v in values]) == said
