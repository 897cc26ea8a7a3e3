"""Every input has a budget, and only what can be served is stored (issue 17).

Each bomb is sent to a real server and must be refused within its budget while the server's
peak memory (VmHWM of its process) stays under RSS_BOUND_MB, and nothing of it is stored.
The bombs are made once per module: 1 GB of zeros deflated (about 1 MB), used as a deflated
transfer syntax dataset, as a gzip request body and as a ZIP member.
"""

from __future__ import annotations

import io
import json
import signal
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.errors import BytesLengthException
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from appliance.codec.part10 import part10_file

from .helpers import Server
from .synth import ct_instance

RSS_BOUND_MB = 250          # the server's peak RSS through every bomb below (a 1 GB board runs it)
BOMB_BYTES = 2**30          # what each bomb inflates to
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"


# ---------------------------------------------------------------- building hostile inputs

def element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element, written as given (odd lengths and unknown VRs too)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def item(value: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(value)) + value


def instance(sop_uid: str, *extra: bytes) -> bytes:
    """A small Part-10 secondary capture whose dataset holds ``extra`` (in tag order)."""
    ds = b"".join((element(0x00080016, b"UI", SECONDARY_CAPTURE.encode() + b"\0"),
                   element(0x00080018, b"UI", _even(sop_uid.encode())),
                   *extra,
                   element(0x00100020, b"LO", b"BUDGET"),
                   element(0x0020000D, b"UI", b"1.2.826.0.1.3680043.8.498.17.1\0"),
                   element(0x0020000E, b"UI", b"1.2.826.0.1.3680043.8.498.17.2\0")))
    return part10_file(SECONDARY_CAPTURE, sop_uid, ExplicitVRLittleEndian, ds)


def _even(v: bytes) -> bytes:
    return v + b"\0" if len(v) % 2 else v


@pytest.fixture(scope="module")
def zeros_deflated() -> tuple[bytes, int]:
    """1 GB of zeros as raw deflate (about 1 MB), and its CRC-32."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = bytes(2**24)
    out, crc = [], 0
    for _ in range(BOMB_BYTES // len(block)):
        out.append(c.compress(block))
        crc = zlib.crc32(block, crc)
    out.append(c.flush())
    return b"".join(out), crc


def gzip_of(raw_deflate: bytes, crc: int, size: int) -> bytes:
    """A gzip stream (RFC 1952) around raw deflate data."""
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + raw_deflate + struct.pack("<II", crc, size & 0xFFFFFFFF)


def gzip_member(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def zip_of(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A ZIP written by hand, so that a member may declare any size: (name, data as stored,
    method (0 stored, 8 deflated), CRC-32, declared size)."""
    out, central = io.BytesIO(), []
    for name, data, method, crc, declared in members:
        offset = out.tell()
        n = name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), declared,
                              len(n), 0) + n)
        out.write(data)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(data),
                                   declared, len(n), 0, 0, 0, 0, 0, offset) + n)
    cd_offset = out.tell()
    cd = b"".join(central)
    out.write(cd)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(cd), cd_offset, 0))
    return out.getvalue()


def stored_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


# ---------------------------------------------------------------- the server and what it costs

def peak_rss_mb(server: Server) -> float:
    """The server process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture(scope="module")
def bombed(tmp_path_factory):
    """One server for every bomb (its VmHWM is the peak over all of them)."""
    s = Server(tmp_path_factory.mktemp("budgets") / "srv", {"MaximumZipMembers": 100}).start()
    yield s
    s.stop()


def assert_nothing_stored(server: Server) -> None:
    assert server.get_json("/statistics")["CountInstances"] == 0
    assert server.stored_files() == []
    incoming = server.workdir / "data" / "incoming"
    assert not incoming.exists() or list(incoming.iterdir()) == []


def error_json(resp) -> dict:
    body = resp.json()
    assert body["HttpStatus"] == resp.status
    return body


def store_file(server: Server, path: Path, ts: str = ExplicitVRLittleEndian, sop_class: str = SECONDARY_CAPTURE):
    """C-STORE a Part-10 file as its bytes are: pynetdicom, told to send a file's dataset in
    chunks, sends it undecoded (otherwise it reads it with pydicom first)."""
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="BUDGETSCU")
    ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PIPACS")
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


# ---------------------------------------------------------------- the bombs

def test_a_deflated_c_store_of_zeros_is_refused_within_its_budget(bombed, zeros_deflated, tmp_path):
    raw, _crc = zeros_deflated
    path = tmp_path / "bomb.dcm"
    path.write_bytes(part10_file(SECONDARY_CAPTURE, "1.2.3.17.1", DeflatedExplicitVRLittleEndian, raw))
    st = store_file(bombed, path, DeflatedExplicitVRLittleEndian)
    assert st.Status == 0xC000
    assert "inflates to more than 101 MB" in st.ErrorComment
    # the same file uploaded: 413, with the sizes
    r = bombed.post("/instances", path.read_bytes())
    assert r.status == 413
    assert "inflates to more than 101 MB" in error_json(r)["Message"]
    r = bombed.post("/instances?anonymize=1", path.read_bytes())   # checked before the anonymizer reads it
    assert r.status == 413
    assert "inflates to more than 101 MB" in error_json(r)["Message"]
    assert_nothing_stored(bombed)
    assert peak_rss_mb(bombed) < RSS_BOUND_MB


def test_a_gzip_upload_of_a_gigabyte_of_zeros_is_refused(bombed, zeros_deflated):
    raw, crc = zeros_deflated
    body = gzip_of(raw, crc, BOMB_BYTES)
    r = bombed.post("/instances", body, headers={"Content-Encoding": "gzip"})
    assert r.status == 413
    msg = error_json(r)["Message"]
    assert "larger than 101 MB once inflated from 1019 KB" in msg
    assert_nothing_stored(bombed)
    assert peak_rss_mb(bombed) < RSS_BOUND_MB


def test_a_chunked_gzip_upload_without_length_is_bounded_by_the_instance_size(bombed, zeros_deflated):
    raw, crc = zeros_deflated
    body = gzip_of(raw, crc, BOMB_BYTES)
    chunks = iter([body[i:i + 65536] for i in range(0, len(body), 65536)])
    req = urllib.request.Request(bombed.url("/instances"), data=chunks, method="POST",
                                 headers={"Content-Encoding": "gzip", "Transfer-Encoding": "chunked"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, answer = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, answer = e.code, e.read()
    assert status == 413
    assert "larger than 256 MB" in json.loads(answer)["Message"]
    assert_nothing_stored(bombed)
    assert peak_rss_mb(bombed) < RSS_BOUND_MB


def test_zip_members_of_zeros_are_refused_whatever_size_they_declare(bombed, zeros_deflated):
    raw, crc = zeros_deflated
    body = zip_of([
        ("honest.dcm", raw, 8, crc, BOMB_BYTES),            # declares its gigabyte: refused unread
        ("lying-big.dcm", raw, 8, crc, 200 * 2**20),        # under MaximumInstanceSize, over its ratio: unread
        ("lying-100.dcm", raw, 8, crc, 100 * 2**20),        # within its budget: read to what it declares
        ("lying-small.dcm", raw, 8, crc, 1000),             # 1000 bytes declared: the CRC gives it away
    ])
    r = bombed.post("/instances", body)
    assert r.status == 200, r.body[:300]
    assert r.json() == []   # Orthanc's array holds the instances stored; the rest is said beside it
    answers = {a["Filename"]: a for a in r.not_stored()}
    assert answers["honest.dcm"]["Status"] == "Failure"
    assert "larger than the 256 MB of MaximumInstanceSize" in answers["honest.dcm"]["Message"]
    assert answers["lying-big.dcm"]["Status"] == "Failure"
    assert "declares 200 MB from 1019 KB, more than the 101 MB" in answers["lying-big.dcm"]["Message"]
    assert answers["lying-100.dcm"]["Status"] == "Failure"
    assert "corrupt ZIP member" in answers["lying-100.dcm"]["Message"]
    assert answers["lying-small.dcm"]["Status"] == "Failure"
    assert "corrupt ZIP member" in answers["lying-small.dcm"]["Message"]
    assert_nothing_stored(bombed)
    assert peak_rss_mb(bombed) < RSS_BOUND_MB


def test_a_zip_member_of_zeros_is_refused_at_once(bombed):
    """Zeros parse as (0000,0000) elements (118 million of them in 1 GB): group 0000 is refused."""
    zeros = bytes(8 * 2**20)
    for path in ("/instances", "/instances?anonymize=1"):   # before the anonymizer (pydicom) reads it too
        r = bombed.post(path, zip_of([("zeros.dcm", zeros, 0, zlib.crc32(zeros), len(zeros))]))
        assert r.status == 200 and r.json() == []
        (answer,) = r.not_stored()
        assert answer["Status"] == "Skipped"
        assert "group 0000" in answer["Message"]
    assert_nothing_stored(bombed)


def test_a_zip_inside_the_zip_is_reported_not_opened(bombed):
    inner = stored_zip({"ct.dcm": ct_instance(rows=8, cols=8, patient_id="NESTED")})
    r = bombed.post("/instances", stored_zip({"inner.zip": inner}))
    assert r.status == 200 and r.json() == []
    (answer,) = r.not_stored()
    assert answer["Filename"] == "inner.zip"
    assert answer["Status"] == "Skipped"
    assert "ZIP inside the ZIP" in answer["Message"]
    assert_nothing_stored(bombed)


def test_a_zip_of_too_many_members_is_refused_before_anything_is_stored(bombed):
    members = {f"ct{i}.dcm": ct_instance(rows=8, cols=8, index=i, patient_id="MANY") for i in range(101)}
    r = bombed.post("/instances", stored_zip(members))
    assert r.status == 413
    assert "101 members, more than the 100 of MaximumZipMembers" in error_json(r)["Message"]
    assert_nothing_stored(bombed)
    del members["ct100.dcm"]
    r = bombed.post("/instances", stored_zip(members))   # at the limit: every one stored
    assert r.status == 200
    assert [a["Status"] for a in r.json()] == ["Success"] * 100
    for a in r.json():
        assert bombed.delete(f"/instances/{a['ID']}").status == 200
    assert_nothing_stored(bombed)


def test_a_non_zip_body_larger_than_an_instance_is_refused(make_server):
    server = make_server({"MaximumInstanceSize": 1})
    r = server.post("/instances", b"\0" * (2 * 2**20))
    assert r.status == 413
    assert "larger than 1 MB (MaximumInstanceSize)" in error_json(r)["Message"]
    assert_nothing_stored(server)


def multipart(*parts: bytes) -> bytes:
    return b"".join(b"--B\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts) + b"--B--\r\n"


STOW_TYPE = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=B',
             "Accept": "application/dicom+json"}


def test_stow_rs_refuses_a_deflated_bomb_part_and_a_gzip_bomb_body(bombed, zeros_deflated):
    raw, crc = zeros_deflated
    bomb = part10_file(SECONDARY_CAPTURE, "1.2.3.17.11", DeflatedExplicitVRLittleEndian, raw)
    r = bombed.post("/dicom-web/studies", multipart(bomb), headers=STOW_TYPE)
    assert r.status == 409
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    head, tail = multipart(b"")[:-len(b"\r\n--B--\r\n")], b"\r\n--B--\r\n"
    body = gzip_member(head) + gzip_of(raw, crc, BOMB_BYTES) + gzip_member(tail)   # gzip members, one after another
    r = bombed.post("/dicom-web/studies", body, headers={**STOW_TYPE, "Content-Encoding": "gzip"})
    assert r.status == 413
    assert "inflates to more than MaximumInflationRatio" in error_json(r)["Message"]
    assert_nothing_stored(bombed)
    assert peak_rss_mb(bombed) < RSS_BOUND_MB


# ---------------------------------------------------------------- store only what can be served

UNREADABLE = {
    "unknown VR": (element(0x00091010, b"XX", b"ab"), "unknown value representation b'XX' for tag 0009,1010"),
    "odd US": (element(0x00280010, b"US", b"\x01\x00\x02"), "value of 0028,0010 (US) has 3 bytes"),
    "odd FD in a sequence": (element(0x00081140, b"SQ", item(element(0x00181050, b"FD", b"12345"))),
                             "value of 0018,1050 (FD) has 5 bytes"),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_an_unreadable_instance_is_refused_over_c_store_and_post(server, tmp_path, case):
    extra, message = UNREADABLE[case]
    data = instance("1.2.3.17.2", extra)
    with pytest.raises((NotImplementedError, BytesLengthException)):   # what we refuse, pydicom cannot read
        ds = pydicom.dcmread(io.BytesIO(data))
        for elem in ds.iterall():
            _ = elem.value
    path = tmp_path / "bad.dcm"
    path.write_bytes(data)
    st = store_file(server, path)
    assert st.Status == 0xC000
    assert message[:40] in st.ErrorComment
    r = server.post("/instances", data)
    assert r.status == 400
    assert message in error_json(r)["Message"]
    assert_nothing_stored(server)
    good = instance("1.2.3.17.3", element(0x00280010, b"US", b"\x01\x00"))   # the same, readable
    assert server.post("/instances", good).status == 200
    inst = server.get_json("/instances")
    assert len(inst) == 1
    assert server.get(f"/instances/{inst[0]}/tags").status == 200


def test_an_odd_length_text_value_that_pydicom_reads_is_kept(server):
    data = instance("1.2.3.17.4", element(0x00080070, b"LO", b"odd"))
    r = server.post("/instances", data)
    assert r.status == 200
    tags = server.get_json(f"/instances/{r.json()['ID']}/tags?simplify")
    assert tags["Manufacturer"] == "odd"


def test_a_command_element_in_the_dataset_is_refused_over_c_store(server, tmp_path):
    data = instance("1.2.3.17.5")
    first = data.index(b"\x08\x00\x16\x00", 132 + 12)   # the first dataset element, after the meta group
    path = tmp_path / "command.dcm"
    path.write_bytes(data[:first] + element(0x00000002, b"UI", SECONDARY_CAPTURE.encode() + b"\0") + data[first:])
    st = store_file(server, path)
    assert st.Status == 0xC000
    assert "command element (0000,0002)" in st.ErrorComment
    assert_nothing_stored(server)


def test_sequences_nested_past_the_budget_are_refused(make_server):
    server = make_server({"MaximumSequenceDepth": 4})

    def nested(depth: int) -> bytes:
        v = element(0x00100010, b"PN", b"ab")
        for _ in range(depth):
            v = element(0x00081140, b"SQ", item(v))
        return v

    assert server.post("/instances", instance("1.2.3.17.6", nested(4))).status == 200
    r = server.post("/instances", instance("1.2.3.17.7", nested(5)))
    assert r.status == 413
    assert "nested more than 4 deep" in error_json(r)["Message"]


def test_too_many_elements_are_refused(make_server):
    server = make_server({"MaximumDatasetElements": 1000})
    many = element(0x00081140, b"SQ", item(element(0x00100010, b"PN", b"") * 1000))
    r = server.post("/instances", instance("1.2.3.17.8", many))
    assert r.status == 413
    assert "more than 1000 data elements (MaximumDatasetElements)" in error_json(r)["Message"]
    fewer = element(0x00081140, b"SQ", item(element(0x00100010, b"PN", b"") * 900))
    assert server.post("/instances", instance("1.2.3.17.9", fewer)).status == 200


# ---------------------------------------------------------------- a stop during a long import

def test_sigterm_during_a_large_zip_import_ends_the_process_and_keeps_what_was_stored(make_server):
    server = make_server()
    members = {f"ct{i:04d}.dcm": ct_instance(rows=32, cols=32, index=i, patient_id="LONG") for i in range(3000)}
    body = stored_zip(members)
    answer: dict = {}

    def upload() -> None:
        try:
            answer["status"] = server.post("/instances", body, timeout=120).status
        except Exception as e:   # noqa: BLE001 - the connection may be cut by the stop
            answer["error"] = repr(e)

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while server.get_json("/statistics")["CountInstances"] < 50:
        assert time.monotonic() < deadline, "the import did not start"
        time.sleep(0.05)
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(40)   # well under the unit's TimeoutStopSec (30 s) plus a margin
    except subprocess.TimeoutExpired:
        pytest.fail("the server did not end after SIGTERM during a ZIP import")
    server._drain()
    assert code == 0, server.log[-2000:]
    t.join(30)
    # published files (a temporary one, of a write cut short, is removed at the next start)
    files_before = len([p for p in server.stored_files() if not p.name.endswith(".tmp")])
    assert 50 <= files_before < len(members), ("the import was not stopped in the middle", files_before, answer)
    server.start()
    stats = server.get_json("/statistics")
    assert stats["CountInstances"] == files_before, (stats, server.log[-3000:])   # every file kept, indexed
    for iid in server.get_json("/instances")[:5]:
        assert server.get(f"/instances/{iid}/tags").status == 200


def test_the_budget_defaults_are_the_configuration_defaults():
    from appliance.codec.part10 import DEFAULT_BUDGET
    from appliance.config import OPTIONS

    defaults = {o.key: o.default for o in OPTIONS}
    assert DEFAULT_BUDGET.max_instance_bytes == defaults["MaximumInstanceSize"] * 2**20
    assert DEFAULT_BUDGET.max_inflation_ratio == defaults["MaximumInflationRatio"]
    assert DEFAULT_BUDGET.max_elements == defaults["MaximumDatasetElements"]
    assert DEFAULT_BUDGET.max_depth == defaults["MaximumSequenceDepth"]


def test_implicit_vr_unreadable_numbers_are_found_through_the_dictionary():
    """Implicit VR carries no VR: the dictionary's is what pydicom will use."""
    from appliance.archive import InvalidDicom, parse_instance

    def implicit(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value

    ds = b"".join((implicit(0x00080016, CT.encode() + b"\0"), implicit(0x00080018, b"1.2.3.17.10\0"),
                   implicit(0x0020000D, b"1.2.3\0"), implicit(0x0020000E, b"1.2.3.4\0")))
    assert parse_instance(part10_file(CT, "1.2.3.17.10", ImplicitVRLittleEndian,
                                      ds + implicit(0x00280010, b"\x01\x00"))).sop_instance_uid == "1.2.3.17.10"
    for tag, value in ((0x00280010, b"\x01\x00\x02"), (0x60000010, b"\x01\x00\x02")):   # Rows, OverlayRows
        with pytest.raises(InvalidDicom, match="not a whole number of 2-byte values"):
            parse_instance(part10_file(CT, "1.2.3.17.10", ImplicitVRLittleEndian, ds + implicit(tag, value)))


def test_a_stored_file_found_without_its_row_is_kept_whatever_todays_budget(make_server):
    """At start, files found without an index row (a power cut after the answer) were stored under
    the budget of their day: a smaller MaximumInstanceSize now does not remove them (reconcile reads
    them with STORED_FILE_BUDGET, not the configured one)."""
    server = make_server({"MaximumInstanceSize": 1}, start=False)
    big = ct_instance(rows=1024, cols=1024, patient_id="BIGGER")   # 2 MB
    uuid = "0123abcd-0000-4000-8000-000000000001"
    path = server.workdir / "data" / uuid[0:2] / uuid[2:4] / uuid
    path.parent.mkdir(parents=True)
    path.write_bytes(big)
    server.start()
    assert server.get_json("/statistics")["CountInstances"] == 1
    assert server.post("/instances", big).status == 413   # but not received again


def test_nesting_deeper_than_python_can_walk_is_refused_not_crashed():
    from appliance.archive import InvalidDicom, parse_instance
    from appliance.codec.part10 import Budget

    v = element(0x00100010, b"PN", b"ab")
    for _ in range(3000):
        v = element(0x00081140, b"SQ", item(v))
    with pytest.raises(InvalidDicom, match="nested too deep"):
        parse_instance(instance("1.2.3.17.12", v), Budget(max_depth=5000))
