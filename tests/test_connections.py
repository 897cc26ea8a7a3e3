"""One device cannot lock the class out: DICOM and HTTP connection limits, the A-ASSOCIATE-RQ and
request-head deadlines, aiohttp's own errors as JSON, the open files limit (issue 17).

Against real servers on loopback; other devices are stood in for by source addresses 127.0.x.y.
Every wait is bounded; nothing asserts how long a thing took, only what happened.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import resource
import select
import selectors
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from aiohttp import web, web_protocol, web_runner
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

from appliance.service import FILES_HEADROOM, FILES_PER_ASSOCIATION, FILES_PER_HTTP_CONNECTION, fitted_http_connections

from .helpers import dcmtk, pipacs_sender_handlers
from .synth import ct_instance

A_ASSOCIATE_RJ = 0x03
# A-ASSOCIATE-RJ: rejected-transient, service-provider (presentation), local-limit-exceeded
REJECT_LOCAL_LIMIT = bytes([0x03, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x02, 0x03, 0x02])


@pytest.fixture(autouse=True, scope="module")
def enough_open_files():
    """This test process opens a thousand sockets at once: its own soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, 65536)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 3000:
        pytest.skip("needs an open files limit of 3000 or more")
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_until_closed(s: socket.socket, timeout: float) -> bytes | None:
    """What the server sent before it closed the connection; None if it is still open after ``timeout``."""
    got = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def closed_by_server(socks: list[socket.socket], timeout: float, poke: bytes = b"") -> dict[socket.socket, bytes]:
    """Wait (at most ``timeout``) until the server closed each socket; what each received. With
    ``poke``, one byte of it is sent on every open socket each second (a slow client)."""
    pending = {s: b"" for s in socks}
    done: dict[socket.socket, bytes] = {}
    with selectors.DefaultSelector() as sel:   # epoll: a thousand sockets are past select's 1024
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)

        def finish(s: socket.socket) -> None:
            done[s] = pending.pop(s)
            sel.unregister(s)

        deadline = time.monotonic() + timeout
        next_poke, at = time.monotonic(), 0
        while pending and time.monotonic() < deadline:
            if poke and time.monotonic() >= next_poke:
                byte = poke[at % len(poke):at % len(poke) + 1]
                at += 1
                for s in list(pending):
                    try:
                        s.send(byte)
                    except OSError:
                        finish(s)
                next_poke += 1.0
            for key, _ in sel.select(0.2):
                s = key.fileobj
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    pending[s] += chunk
                else:
                    finish(s)
    assert not pending, f"{len(pending)} of {len(socks)} connections still open after {timeout} s"
    return done


def still_open(s: socket.socket) -> bool:
    """Whether the server has neither answered nor closed the connection (nothing to read now)."""
    poll = select.poll()
    poll.register(s, select.POLLIN)
    return not poll.poll(0)


def close_all(socks) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def scu(source: str) -> AE:
    ae = AE(ae_title="GOODSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.network_timeout = 20
    return ae


def echo_find_store(port: int, source: str, index: int) -> None:
    """A good client from ``source``: C-ECHO, C-STORE, then a C-FIND that finds what it stored."""
    assoc = scu(source).associate("127.0.0.1", port, ae_title="PIPACS", bind_address=(source, 0),
                                  evt_handlers=pipacs_sender_handlers())
    assert assoc.is_established, f"the good client from {source} was not let in"
    try:
        assert assoc.send_c_echo().Status == 0x0000
        ds = pydicom.dcmread(io.BytesIO(ct_instance(rows=8, cols=8, study=f"conn{index}", index=index)))
        assert assoc.send_c_store(ds).Status == 0x0000
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ds.StudyInstanceUID
        found = [identifier for status, identifier in
                 assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                 if status and status.Status in (0xFF00, 0xFF01)]
        assert [f.StudyInstanceUID for f in found] == [ds.StudyInstanceUID]
    finally:
        assoc.release()


def http_get(port: int, path: str, source: str = "127.0.0.1", timeout: float = 20) -> tuple[int, dict, bytes]:
    """One GET on its own connection: status, headers (lower-case names), body."""
    s = connect(port, source, timeout)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = read_until_closed(s, timeout)
    finally:
        s.close()
    assert raw, f"no answer to GET {path} from {source}"
    return parse_answer(raw)


def parse_answer(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def server_open_files(server) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


# ------------------------------------------------------------------------------------------ DICOM

def test_40_idle_dicom_connections_from_one_address_leave_another_device_its_echo_find_store(make_server):
    server = make_server({"DicomAssociationRequestTimeout": 10})
    idle = [connect(server.dicom_port) for _ in range(40)]
    try:
        # a good client from another address is not held up by them
        echo_find_store(server.dicom_port, "127.0.0.2", 1)
        # 16 held (the per-address limit) until the request deadline closes them, the rest refused
        answers = closed_by_server(idle, timeout=40)
        refused = [a for a in answers.values() if a == REJECT_LOCAL_LIMIT]
        assert len(refused) == 40 - 16 and all(a in (b"", REJECT_LOCAL_LIMIT) for a in answers.values())
    finally:
        close_all(idle)
    # then DCMTK from that address is served
    r = subprocess.run([dcmtk("echoscu"), "-aec", "PIPACS", "127.0.0.1", str(server.dicom_port)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_idle_connections_from_40_addresses_are_closed_after_the_request_timeout(make_server):
    """Each address within its own limit, together past every slot: refused while they are
    held, the good client gets in once pynetdicom's A-ASSOCIATE-RQ deadline has closed them."""
    server = make_server({"DicomMaximumAssociations": 32, "DicomAssociationRequestTimeout": 2})
    idle = [connect(server.dicom_port, f"127.0.1.{n}") for n in range(1, 41)]
    try:
        answers = closed_by_server(idle, timeout=30)   # the server closes every one of them
    finally:
        close_all(idle)
    assert sorted(answers.values()).count(REJECT_LOCAL_LIMIT) == 8, answers.values()   # 32 slots, 40 tries
    assert all(a in (b"", REJECT_LOCAL_LIMIT) for a in answers.values())
    echo_find_store(server.dicom_port, "127.0.0.2", 2)


def test_past_the_per_address_limit_the_extra_connections_are_refused_at_once(make_server):
    server = make_server({"DicomAssociationRequestTimeout": 10})
    held = [connect(server.dicom_port, "127.0.0.3") for _ in range(16)]
    try:
        extra = [connect(server.dicom_port, "127.0.0.3") for _ in range(4)]
        # the extras: the A-ASSOCIATE-RJ, then the close (the request deadline closes without a word)
        for s in extra:
            assert read_until_closed(s, timeout=15) == REJECT_LOCAL_LIMIT
        close_all(extra)
        assert all(still_open(s) for s in held)   # the 16 within the limit are not refused
        # a real client from that address reads the rejection (transient: it may retry)...
        assoc = scu("127.0.0.3").associate("127.0.0.1", server.dicom_port, ae_title="PIPACS",
                                           bind_address=("127.0.0.3", 0))
        assert assoc.is_rejected and not assoc.is_established
        # ...and any other address is served meanwhile
        echo_find_store(server.dicom_port, "127.0.0.4", 3)
    finally:
        close_all(held)
    # once its connections are closed, the address is served again (the slots are freed as
    # pynetdicom's threads end, at the request deadline at the latest)
    deadline = time.monotonic() + 40
    while True:
        assoc = scu("127.0.0.3").associate("127.0.0.1", server.dicom_port, ae_title="PIPACS",
                                           bind_address=("127.0.0.3", 0))
        if assoc.is_established:
            assoc.release()
            break
        assert time.monotonic() < deadline, "the address was not served again after closing its connections"
        time.sleep(0.2)
    # refused five times within a minute: one line in the audit trail
    log = server.settled_log()
    refusals = [line for line in log.splitlines() if "DICOM connection refused" in line and "127.0.0.3" in line]
    assert len(refusals) == 1, refusals
    assert "DicomMaximumAssociationsPerAddress" in refusals[0]


def test_a_silent_connection_is_closed_after_the_request_timeout(make_server):
    server = make_server({"DicomAssociationRequestTimeout": 1})
    silent = connect(server.dicom_port)
    try:
        assert read_until_closed(silent, timeout=20) == b""
    finally:
        silent.close()
    # one that sends its request in time is served
    echo_find_store(server.dicom_port, "127.0.0.1", 4)


def test_an_association_holds_few_open_files(make_server):
    """FILES_PER_ASSOCIATION (the open files limit check's figure) covers what an association holds."""
    server = make_server()
    before = server_open_files(server)
    ae = scu("127.0.0.1")
    assocs = [ae.associate("127.0.0.1", server.dicom_port, ae_title="PIPACS") for _ in range(8)]
    try:
        assert all(a.is_established for a in assocs)
        held = server_open_files(server) - before
    finally:
        for a in assocs:
            a.release()
    assert 8 <= held <= 8 * (FILES_PER_ASSOCIATION - 1)   # the last one: a store's file, while it is written


def test_refused_connections_are_answered_after_their_request_and_a_flood_at_once():
    from appliance.dicom.listener import RefusedConnections

    refused = RefusedConnections(REJECT_LOCAL_LIMIT, most=1, linger=30)
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    try:
        refused.add(first)
        refused.add(second)   # past ``most``: answered and closed at once
        assert read_until_closed(second_peer, timeout=10) == REJECT_LOCAL_LIMIT
        assert still_open(first_peer)   # waiting for its request (30 s)
        first_peer.sendall(b"\x01\x00\x00\x00\x00\x10" + bytes(16))   # an A-ASSOCIATE-RQ's start
        first_peer.settimeout(10)
        assert first_peer.recv(100) == REJECT_LOCAL_LIMIT
        first_peer.close()   # the peer closes: so does the server
    finally:
        refused.close()
        close_all([first_peer, second_peer])


# ------------------------------------------------------------------------------------------ HTTP

def test_1000_slow_http_connections_leave_a_good_client_its_answers_and_are_closed(make_server):
    server = make_server({"HttpRequestHeaderTimeout": 3})
    slow: list[socket.socket] = []
    try:
        for n in range(1000):   # 50 from each of 20 addresses: each within its 64
            s = connect(server.http_port, f"127.0.2.{n % 20 + 1}")
            s.sendall(b"G")
            slow.append(s)
        status, _, body = http_get(server.http_port, "/system", "127.0.0.5")
        assert status == 200 and json.loads(body)["Name"]
        answers = closed_by_server(slow, timeout=60, poke=b"ET /system HTTP/1.1\r\nX-Slow: 1")
    finally:
        close_all(slow)
    assert set(answers.values()) == {b""}, "a slow connection got an answer instead of being closed"
    status, _, _ = http_get(server.http_port, "/system", "127.0.2.1")
    assert status == 200


def test_a_kept_alive_connection_is_closed_when_idle_past_the_header_timeout(make_server):
    server = make_server({"HttpRequestHeaderTimeout": 2})
    s = connect(server.http_port)
    try:
        s.sendall(b"GET /system HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(20)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        rest = read_until_closed(s, timeout=20)   # nothing more asked: closed, no answer
        assert rest is not None and not rest.startswith(b"HTTP/")
    finally:
        s.close()
    # the deadline is the head's only: a body sent slowly (past it) is read to the end and answered
    body = ct_instance(rows=8, cols=8, study="slowupload", index=9)
    s = connect(server.http_port)
    try:
        s.sendall(b"POST /instances HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        pieces = [body[i:i + len(body) // 5 + 1] for i in range(0, len(body), len(body) // 5 + 1)]
        for piece in pieces:   # over about 5 s, more than twice the deadline
            s.sendall(piece)
            time.sleep(1)
        raw = read_until_closed(s, timeout=20)
    finally:
        s.close()
    assert raw and parse_answer(raw)[0] == 200, raw[:300]
    assert server.get_json("/statistics")["CountInstances"] == 1


def test_the_65th_connection_from_one_address_gets_503_json(make_server):
    server = make_server()
    held = [connect(server.http_port, "127.0.0.6") for _ in range(64)]
    try:
        over = connect(server.http_port, "127.0.0.6")
        over.sendall(b"GET /system HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = read_until_closed(over, timeout=15)
        over.close()
        assert raw, "the connection over the limit was closed without an answer"
        status, headers, body = parse_answer(raw)
        assert status == 503 and headers["content-type"].startswith("application/json")
        assert headers["retry-after"].isdigit() and headers["connection"] == "close"
        err = json.loads(body)
        assert err["HttpStatus"] == 503 and err["HttpError"] == "Service Unavailable"
        assert "HttpMaximumConnectionsPerAddress" in err["Message"]
        assert all(still_open(s) for s in held)
        assert http_get(server.http_port, "/system", "127.0.0.7")[0] == 200   # another device
    finally:
        close_all(held)
    deadline = time.monotonic() + 20   # its connections closed, the address is served again
    while http_get(server.http_port, "/system", "127.0.0.6")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    log = server.settled_log()
    assert [line for line in log.splitlines() if "HTTP connection refused" in line and "127.0.0.6" in line]


def test_the_total_http_limit(make_server):
    from appliance.web.server import REFUSALS_LINGERING

    server = make_server({"HttpMaximumConnections": 20})
    held = [connect(server.http_port, f"127.0.3.{n}") for n in range(1, 21)]
    try:
        status, _, body = http_get(server.http_port, "/system", "127.0.0.8")
        assert status == 503 and "HttpMaximumConnections" in json.loads(body)["Message"]
        # a flood of refused connections: at most REFUSALS_LINGERING kept a moment, the rest closed at once
        before = server_open_files(server)
        flood = [connect(server.http_port, f"127.0.5.{n % 200 + 1}") for n in range(2 * REFUSALS_LINGERING)]
        try:
            assert server_open_files(server) <= before + REFUSALS_LINGERING + 8
            answers = closed_by_server(flood, timeout=30)
            assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers.values())
        finally:
            close_all(flood)
    finally:
        close_all(held)


BAD_REQUESTS = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), 400),   # a TLS hello
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
]


def test_aiohttps_own_error_answers_are_orthanc_json(server):
    for request_bytes, status in BAD_REQUESTS:
        s = connect(server.http_port)
        try:
            s.sendall(request_bytes)
            raw = read_until_closed(s, timeout=15)
        finally:
            s.close()
        assert raw, f"closed without an answer to {request_bytes[:40]!r}"
        got, headers, body = parse_answer(raw)
        assert got == status and headers["content-type"].startswith("application/json"), raw[:300]
        err = json.loads(body)
        assert err["HttpStatus"] == status and err["HttpError"] and err["Message"], err
        for leaked in (b"GARBAGE", b"aaaa", b"Bad Header", b"X-199", b"Traceback", b"message:", b"Content-Length: 6"):
            assert leaked not in body, body
    assert "Traceback" not in server.settled_log()


# ------------------------------------------------------------------------------------------ open files

def test_the_http_limit_is_lowered_to_what_the_open_files_limit_holds(make_server):
    assert fitted_http_connections(2000, 128, 65536) == 2000
    assert fitted_http_connections(2000, 128, 2048) == \
        (2048 - 128 * FILES_PER_ASSOCIATION - FILES_HEADROOM) // FILES_PER_HTTP_CONNECTION
    server = make_server(wrap=["/usr/bin/prlimit", "--nofile=1400:1400", "--"])
    line = server.wait_for_log("the open files limit (1400) cannot hold HttpMaximumConnections 2000")
    fitted = (1400 - 128 * FILES_PER_ASSOCIATION - FILES_HEADROOM) // FILES_PER_HTTP_CONNECTION
    assert f"at most {fitted} HTTP connections" in line
    held = [connect(server.http_port, f"127.0.4.{n % 200 + 1}") for n in range(fitted)]
    try:
        status, _, body = http_get(server.http_port, "/system", "127.0.0.9")
        assert b"HttpMaximumConnections" in body
        assert status == 503, "the lowered limit is not applied"
    finally:
        close_all(held)


def test_the_server_raises_its_open_files_limit_to_the_hard_limit(make_server):
    server = make_server(wrap=["/usr/bin/prlimit", "--nofile=1024:8192", "--"])
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert row.split()[3:5] == ["8192", "8192"], row


# ------------------------------------------------------------------------------------------ aiohttp pins

def test_the_aiohttp_internals_relied_on_are_there():
    """appliance/web/server.py relies on these; after an aiohttp upgrade, a failure names the one
    to check (and web/server.py's docstring says what each is used for)."""
    handler = web_protocol.RequestHandler
    params = inspect.signature(handler.__init__).parameters
    for name in ("manager", "loop", "keepalive_timeout", "tcp_keepalive", "access_log"):
        assert name in params, f"RequestHandler.__init__ has no {name} argument"
    assert list(inspect.signature(handler.handle_error).parameters) == ["self", "request", "status", "exc",
                                                                        "message"], "RequestHandler.handle_error"
    assert "_process_keepalive" in inspect.getsource(handler.connection_made), \
        "RequestHandler.connection_made no longer starts the keep-alive timer (the request-head deadline)"
    keepalive = inspect.getsource(handler._process_keepalive)
    assert "self._waiter" in keepalive and "force_close" in keepalive, \
        "RequestHandler._process_keepalive no longer closes a connection waiting for its request"
    assert "_next_keepalive_close_time" in inspect.getsource(handler.start), \
        "RequestHandler.start no longer restarts the keep-alive timer when an answer ends"
    for name in ("max_line_size", "max_field_size", "max_headers"):
        assert f"self.{name} = " in inspect.getsource(handler.__init__), f"RequestHandler.{name}"
    assert "_server" in web.BaseSite.__slots__, "BaseSite._server"
    assert "site._server" in inspect.getsource(web_runner.BaseRunner.addresses.fget), "BaseRunner.addresses"
    assert "self._server" in inspect.getsource(web.BaseSite.stop), "BaseSite.stop"
    assert "_backlog" in web.BaseSite.__slots__, "BaseSite._backlog"


def test_threads_do_not_pile_up_behind_silent_connections(make_server):
    """Each silent connection costs pynetdicom two threads until its deadline; they end with it."""
    server = make_server({"DicomAssociationRequestTimeout": 1})

    def threads() -> int:
        return int(next(line for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines()
                        if line.startswith("Threads:")).split()[1])

    idle_threads = threads()
    for _ in range(3):   # three waves of 16 silent connections, each closed by the deadline
        wave = [connect(server.dicom_port) for _ in range(16)]
        try:
            closed_by_server(wave, timeout=20)
        finally:
            close_all(wave)
    deadline = time.monotonic() + 20
    while threads() > idle_threads + 2:
        assert time.monotonic() < deadline, f"{threads()} threads, {idle_threads} before"
        time.sleep(0.1)


def test_the_units_open_files_limit_holds_the_default_limits():
    unit = (Path(__file__).parent.parent / "systemd/pipacs.service").read_text()
    limit = int(next(line for line in unit.splitlines() if line.startswith("LimitNOFILE=")).split("=")[1])
    assert fitted_http_connections(2000, 128, limit) == 2000
