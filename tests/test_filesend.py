"""Stored files sent as downloads: from the page cache by sendfile, from a worker thread when the
pages are on the disk, and to readers slower than the server. Each path is checked byte for byte."""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from appliance.web.filesend import in_page_cache, sendfile_nowait

from .synth import ct_instance

BIG = ct_instance(rows=1700, cols=1700, patient_id="BIG")   # 5.8 MB: under FileResponse's 8 MB


def _evict(path: Path) -> None:
    """Drop a file's pages from the page cache (clean pages go at once)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _cached_bytes(path: Path) -> int:
    """How much of a file is in the page cache, by mincore(2) through util-linux's fincore."""
    if not shutil.which("fincore"):
        pytest.skip("fincore (util-linux) is not installed")
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                         capture_output=True, text=True, timeout=30)
    return int(out.stdout.strip() or 0)


def _stored_files(srv) -> list[Path]:
    data = srv.workdir / "data"
    return [p for p in data.rglob("*") if p.is_file() and p.read_bytes()[128:132] == b"DICM"]


def _http_get(port: int, path: str, method: str = "GET", rcvbuf: int = 0,
              pause: float = 0.0, stop_after: int = 0) -> tuple[bytes, bytes]:
    """A raw HTTP/1.1 exchange, so the test decides how fast (and how far) the client reads."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    time.sleep(pause)
    chunks, got = [], 0
    while True:
        block = s.recv(65536)
        if not block:
            break
        chunks.append(block)
        got += len(block)
        if stop_after and got >= stop_after:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
            break
    s.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return head, body


def _fs_type(path: Path) -> str:
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mnt, fstype = line.split()[:3]
        if str(path).startswith(mnt.rstrip("/") + "/") and len(mnt) > len(best):
            best, kind = mnt, fstype
    return kind


def test_in_page_cache_tells_cached_from_evicted(tmp_path: Path):
    if _fs_type(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is in memory: its pages cannot be evicted")
    f = tmp_path / "f"
    f.write_bytes(os.urandom(2 * 2**20))
    fd = os.open(f, os.O_RDONLY)
    try:
        try:
            os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                pytest.skip(f"this filesystem ({_fs_type(tmp_path)}) cannot tell; pipacs reads in a thread")
        assert in_page_cache(fd, f.stat().st_size)
        for _ in range(50):   # DONTNEED is advice: under load the kernel may keep the pages a while
            _evict(f)
            if _cached_bytes(f) == 0:    # util-linux's fincore (mincore(2)) as the judge
                break
            time.sleep(0.02)
        else:
            pytest.skip("the kernel kept the file's pages after 50 requests to drop them")
        assert not in_page_cache(fd, f.stat().st_size)
        os.read(fd, 2 * 2**20)   # read back in
        assert in_page_cache(fd, f.stat().st_size)
        assert not in_page_cache(fd, 0)
    finally:
        os.close(fd)


def test_sendfile_nowait_stops_at_a_full_socket_and_resumes(tmp_path: Path):
    f = tmp_path / "f"
    payload = os.urandom(6 * 2**20)
    f.write_bytes(payload)
    lst = socket.create_server(("127.0.0.1", 0))
    reader = socket.create_connection(lst.getsockname())
    writer, _ = lst.accept()
    writer.setblocking(False)
    fd = os.open(f, os.O_RDONLY)
    try:
        first = sendfile_nowait(writer.fileno(), fd, 0, len(payload))
        assert 0 < first < len(payload)   # nobody reads yet: the socket fills, no blocking
        received = bytearray()
        sent = first
        while len(received) < len(payload):
            received += reader.recv(1 << 20)
            if sent < len(payload):
                sent += sendfile_nowait(writer.fileno(), fd, sent, len(payload) - sent)
        assert bytes(received) == payload
    finally:
        os.close(fd)
        for s in (reader, writer, lst):
            s.close()


def test_download_to_a_slow_reader_is_whole(server):
    iid = server.post("/instances", BIG).json()["ID"]
    head, body = _http_get(server.http_port, f"/instances/{iid}/file", rcvbuf=4096, pause=0.5)
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(BIG)}".encode() in head
    assert body == BIG
    head, body = _http_get(server.http_port, f"/instances/{iid}/file", method="HEAD")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(BIG)}".encode() in head
    assert body == b""


def test_kept_alive_connection_carries_downloads_one_after_another(server):
    small = ct_instance(patient_id="KEEP")
    big_id = server.post("/instances", BIG).json()["ID"]
    small_id = server.post("/instances", small).json()["ID"]
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        for iid, data in ((big_id, BIG), (small_id, small), (big_id, BIG)):
            conn.request("GET", f"/instances/{iid}/file")
            r = conn.getresponse()
            assert r.status == 200 and r.read() == data
        conn.request("HEAD", f"/instances/{small_id}/file")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"" and int(r.headers["Content-Length"]) == len(small)
        conn.request("GET", "/system")
        assert json.loads(conn.getresponse().read())["DicomAet"]
    finally:
        conn.close()


def test_download_of_a_file_not_in_memory_reads_it_from_disk(server):
    small = ct_instance(patient_id="EVICT")
    iid = server.post("/instances", small).json()["ID"]
    (stored,) = _stored_files(server)
    _evict(stored)
    r = server.get(f"/instances/{iid}/file")
    assert r.status == 200 and r.body == small
    study = server.get_json(f"/instances/{iid}/study")["MainDicomTags"]["StudyInstanceUID"]
    series = server.get_json(f"/instances/{iid}/series")["MainDicomTags"]["SeriesInstanceUID"]
    sop = server.get_json(f"/instances/{iid}")["MainDicomTags"]["SOPInstanceUID"]
    _evict(stored)
    r = server.get(f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
                   "&contentType=application/dicom")
    assert r.status == 200 and r.body == small and r.headers["Content-Type"] == "application/dicom"


def test_client_leaving_mid_download_is_not_an_error(server):
    iid = server.post("/instances", BIG).json()["ID"]
    for _ in range(3):
        _http_get(server.http_port, f"/instances/{iid}/file", rcvbuf=4096, stop_after=100_000)
    assert server.get(f"/instances/{iid}/file").body == BIG   # still serving
    # the three cut downloads were handled before the whole one was answered; the settled log
    # holds every line written until then
    lines = server.settled_log().splitlines()
    assert not [ln for ln in lines if "Traceback" in ln or "error in GET" in ln], lines[-20:]


def test_missing_file_is_a_clear_404(server):
    iid = server.post("/instances", ct_instance(patient_id="GONE")).json()["ID"]
    (stored,) = _stored_files(server)
    stored.unlink()
    r = server.get(f"/instances/{iid}/file")
    assert r.status == 404 and b"is missing" in r.body


def test_large_file_is_sent_whole_and_in_ranges(server):
    huge = ct_instance(rows=2200, cols=2200, patient_id="HUGE")   # 9.7 MB: aiohttp's FileResponse
    iid = server.post("/instances", huge).json()["ID"]
    r = server.get(f"/instances/{iid}/file")
    assert r.status == 200 and r.body == huge and r.headers["Content-Type"] == "application/dicom"
    r = server.get(f"/instances/{iid}/file", headers={"Range": "bytes=128-131"})
    assert r.status == 206 and r.body == b"DICM"
