"""The DICOM listener against real clients: DCMTK (as shipped, Nagle on) and pynetdicom."""

import io
import subprocess
import time

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from .helpers import TEST_FILES, dcmtk
from .synth import ct_instance, write_series


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def test_echoscu(server):
    r = run([dcmtk("echoscu"), "-aec", "PIPACS", "127.0.0.1", str(server.dicom_port)])
    assert r.returncode == 0, r.stderr
    line = server.wait_for_log("association ECHOSCU@")
    assert line.splitlines()[-1].endswith(": 1 echo"), line


def test_storescu_folder_then_rest_sees_it(server, tmp_path):
    files = write_series(tmp_path / "study", 20, rows=64, cols=64)
    r = run([dcmtk("storescu"), "-aec", "PIPACS", "+sd", "+r", "127.0.0.1", str(server.dicom_port),
             str(tmp_path / "study")])
    assert r.returncode == 0, r.stderr
    stats = server.get_json("/statistics")
    assert (stats["CountPatients"], stats["CountStudies"], stats["CountSeries"], stats["CountInstances"]) == (1, 1, 1, 20)
    # stored bytes are the dataset as sent, with a Part-10 header
    iid = server.get_json("/instances")[0]
    stored = server.get(f"/instances/{iid}/file").body
    sent = {pydicom.dcmread(p).SOPInstanceUID: p for p in files}
    ds = pydicom.dcmread(io.BytesIO(stored))
    orig = pydicom.dcmread(sent[ds.SOPInstanceUID])
    assert ds.PixelData == orig.PixelData
    assert ds.file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID
    meta = server.get_json(f"/instances/{iid}/metadata?expand")
    assert meta["Origin"] == "DicomProtocol" and meta["RemoteAET"] == "STORESCU" and meta["CalledAET"] == "PIPACS"
    server.wait_for_log("20 stored")


# storescu proposes a compressed syntax only when told which one
_STORESCU_TS_OPTION = {"1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw",
                       "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.4.80": "-xt",
                       "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.50": "-xy",
                       "1.2.840.10008.1.2.4.70": "-xs"}


def test_storescu_compressed_syntaxes_are_stored_as_received(server):
    # distinct SOP Instance UIDs (several pydicom files are the same image in other syntaxes)
    names = ["JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm"]
    assert len({pydicom.dcmread(TEST_FILES / n).SOPInstanceUID for n in names}) == len(names)
    for n in names:
        orig = pydicom.dcmread(TEST_FILES / n)
        ts = str(orig.file_meta.TransferSyntaxUID)
        r = run([dcmtk("storescu"), "-aec", "PIPACS", _STORESCU_TS_OPTION[ts], "127.0.0.1", str(server.dicom_port),
                 str(TEST_FILES / n)])
        assert r.returncode == 0, (n, r.stderr + r.stdout)
        hits = server.post("/tools/lookup", orig.SOPInstanceUID).json()
        inst = next(h for h in hits if h["Type"] == "Instance")
        back = pydicom.dcmread(io.BytesIO(server.get(f"/instances/{inst['ID']}/file").body))
        assert back.file_meta.TransferSyntaxUID == ts, n
        assert back.PixelData == orig.PixelData, n
        meta = server.get_json(f"/instances/{inst['ID']}/metadata?expand")
        assert meta["TransferSyntax"] == ts
    assert server.get_json("/statistics")["CountInstances"] == len(names)


def test_pynetdicom_store_bad_then_good_on_one_association(server):
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PIPACS")
    assert assoc.is_established
    try:
        bad = pydicom.dcmread(io.BytesIO(ct_instance(rows=8, cols=8, index=1)))
        del bad.StudyInstanceUID
        st = assoc.send_c_store(bad)
        assert st.Status == 0xC000
        assert "StudyInstanceUID" in st.ErrorComment
        good = pydicom.dcmread(io.BytesIO(ct_instance(rows=8, cols=8, index=2)))
        assert assoc.send_c_store(good).Status == 0x0000
        assert assoc.send_c_store(good).Status == 0x0000  # already stored: still success
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert server.get_json("/statistics")["CountInstances"] == 1
    end = server.wait_for_log("association PYSCU@").splitlines()[-1]   # written after the release
    assert "1 stored, 1 already stored, 1 failed" in end, end
    # the refused instance (written while it was checked) and the duplicate left no file behind;
    # the duplicate's file is removed just after its answer went out: wait for that (a hang guard)
    deadline = time.monotonic() + 15
    while len(server.stored_files()) != 1:
        assert time.monotonic() < deadline, server.stored_files()
        time.sleep(0.02)


def test_called_aet_check(make_server, tmp_path):
    srv = make_server({"DicomCheckCalledAet": True, "DicomAet": "CLASSROOM"})
    bad = run([dcmtk("echoscu"), "-aec", "WRONG", "127.0.0.1", str(srv.dicom_port)])
    assert bad.returncode != 0
    good = run([dcmtk("echoscu"), "-aec", "CLASSROOM", "127.0.0.1", str(srv.dicom_port)])
    assert good.returncode == 0, good.stderr
    # without the check, any called AE title is accepted (what iPad apps often send)
    srv2 = make_server({"DicomCheckCalledAet": False}, name="srv2")
    assert run([dcmtk("echoscu"), "-aec", "ANYTHING", "127.0.0.1", str(srv2.dicom_port)]).returncode == 0


def test_store_refused_when_disk_reserve_reached(make_server, tmp_path):
    srv = make_server({"MinimumFreeDiskSpace": 2**39})  # more than any disk: every store is refused
    path = tmp_path / "one.dcm"
    path.write_bytes(ct_instance(rows=8, cols=8))
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS")
    try:
        st = assoc.send_c_store(pydicom.dcmread(path))
        assert st.Status == 0xA700
        assert "MinimumFreeDiskSpace" in st.ErrorComment
    finally:
        assoc.release()
    r = srv.post("/instances", path.read_bytes())
    assert r.status == 507 and "MinimumFreeDiskSpace" in r.json()["Message"]
    assert srv.get_json("/statistics")["CountInstances"] == 0
    assert srv.stored_files() == []


def test_parallel_associations(server, tmp_path):
    procs = []
    for k in range(6):
        write_series(tmp_path / f"s{k}", 10, rows=32, cols=32, patient_id=f"P{k}", study=f"st{k}")
        procs.append(subprocess.Popen([dcmtk("storescu"), "-aec", "PIPACS", "+sd", "127.0.0.1",
                                       str(server.dicom_port), str(tmp_path / f"s{k}")]))
    assert all(p.wait(120) == 0 for p in procs)
    st = server.get_json("/statistics")
    assert (st["CountPatients"], st["CountInstances"]) == (6, 60)


def test_damaged_file_refused_alone_by_dcmsend(server):
    # DCMTK reads this file's SOP Class UID as "31" and names that class in its C-STORE request;
    # pynetdicom on its own aborted the association there, losing every file sent after it
    r = run([dcmtk("dcmsend"), "-aec", "PIPACS", "-nh", "127.0.0.1", str(server.dicom_port),
             str(TEST_FILES / "rtdose_rle_1frame.dcm"), str(TEST_FILES / "CT_small.dcm")])
    assert "Peer aborted" not in r.stderr, r.stderr
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    hits = server.post("/tools/lookup", ct.SOPInstanceUID).json()
    assert [h["Type"] for h in hits] == ["Instance"]
    end = server.wait_for_log("association DCMSEND@").splitlines()[-1]
    assert "released" in end and "1 stored, 0 already stored, 1 failed" in end, end
    # the refusal is logged while the association runs, before its summary line
    assert "C-STORE from DCMSEND refused: SOP class '31' is not a storage SOP class" in server.log


def test_store_naming_an_unknown_sop_class_refused_then_association_goes_on(server):
    from pynetdicom.dimse_primitives import C_STORE

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PIPACS")
    assert assoc.is_established
    try:
        ds = pydicom.dcmread(io.BytesIO(ct_instance(rows=8, cols=8, index=3)))
        cx = assoc.accepted_contexts[0]
        req = C_STORE()
        req.MessageID = 7
        req.AffectedSOPClassUID = "1.2.3.4.5"   # on a CT Image Storage context
        req.AffectedSOPInstanceUID = ds.SOPInstanceUID
        req.Priority = 2
        req.DataSet = io.BytesIO(_encoded(ds, cx.transfer_syntax[0]))
        # pynetdicom offers no call for an invalid request: hold its reactor as its send_* do, so
        # that it does not take the response off the queue first
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0001)
        try:
            assoc.dimse.send_msg(req, cx.context_id)
            _, rsp = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        assert rsp.Status == 0x0122 and "1.2.3.4.5" in rsp.ErrorComment
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    assert server.get_json("/statistics")["CountInstances"] == 1
    end = server.wait_for_log("association PYSCU@").splitlines()[-1]
    assert "1 stored, 0 already stored, 1 failed" in end, end


def _encoded(ds, transfer_syntax) -> bytes:
    from pydicom.uid import UID
    ts = UID(transfer_syntax)
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = ts.is_little_endian, ts.is_implicit_VR
    pydicom.filewriter.write_dataset(buf, ds)
    return buf.getvalue()


def test_the_banners_example_sends_a_cd_of_compressed_images(server, tmp_path):
    # what `make run` prints to send a folder must work for the JPEG, JPEG 2000 and RLE of hospital CDs
    # the banner follows the log line that Server.start waits for
    line = server.wait_for_log("study-folder/", stream="stdout").splitlines()[-1]
    assert "e.g. " in line, line
    cmd = line.split("e.g. ", 1)[1].split()
    folder = tmp_path / "cd"
    folder.mkdir()
    names = ["JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm", "CT_small.dcm"]
    for n in names:
        (folder / n).write_bytes((TEST_FILES / n).read_bytes())
    cmd = [dcmtk(cmd[0])] + [str(folder) if a == "study-folder/" else a for a in cmd[1:]]
    r = run(cmd)
    assert r.returncode == 0, (cmd, r.stderr)
    assert server.get_json("/statistics")["CountInstances"] == len(names)
