"""Test helpers: run the real appliance as a subprocess, talk to it over HTTP, find DCMTK tools."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom

REPO = Path(__file__).resolve().parent.parent
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def dcmtk(tool: str) -> str:
    """DCMTK tools by their /usr/bin path: a venv's bin/ may hold Python scripts of the same name."""
    path = f"/usr/bin/{tool}"
    if not os.path.exists(path):
        import pytest
        pytest.skip(f"{path} is not installed (Debian package dcmtk)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipacs_sender_handlers() -> list:
    """Event handlers that make a pynetdicom client in this process send as pipacs's own SCU does
    (its patches installed, each association sped up at EVT_CONN_OPEN). Plain pynetdicom 3.0.4
    drops about one answer in 3 000 under load (its ``_is_paused`` race: the answer to the next
    request is taken off the queue by a reactor just released, docs/pynetdicom-speedups.md); a
    test whose client sends several requests on one association under xdist's load hit it."""
    from pynetdicom import evt

    from appliance.dicom import pynetdicom_patches

    pynetdicom_patches.install()
    return [(evt.EVT_CONN_OPEN, lambda event: pynetdicom_patches.speed_up(event.assoc.dul.socket))]


class RefusingPort:
    """A loopback port that refuses connections while this object lives: bound but never
    listening, so no other test's server can take it meanwhile (a number from ``free_port``
    can be bound by anyone a moment later: seen as an echo to a "gone" node answered)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open (``socket:[N]`` links in /proc/PID/fd)."""
    found = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(target[8:-1])
    except OSError:
        pass
    return found


def wait_listening(port: int, proc: subprocess.Popen | None = None, timeout: float = 30,
                   owned: bool = False) -> None:
    """Wait until something listens on TCP ``port`` (read from /proc/net/tcp*, so the listener
    sees no connection); a fixed sleep after starting a peer such as storescp races with a
    loaded machine. Raises if ``proc`` exits first, or on timeout. ``owned``: the listener must be
    ``proc`` itself (by the socket's inode), not another test's server that took the same free port
    between ``free_port`` and ``proc``'s bind (``proc`` then exits with its bind error, and this raises)."""
    deadline = time.monotonic() + timeout
    while True:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                rows = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                fields = row.split()
                listening = fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port   # 0A: LISTEN
                if listening and (not owned or proc is None or fields[9] in _socket_inodes(proc.pid)):
                    return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}) before listening on port {port}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port} after {timeout} s")
        time.sleep(0.02)


class Response:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]):
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.body)

    def not_stored(self) -> list[dict[str, Any]]:
        """What an upload did not store (ZIP members, form parts), from pipacs's X-Pipacs-Not-Stored
        header (kept out of Orthanc's answer array); checked against its count header."""
        heads = {k.lower(): v for k, v in self.headers.items()}
        shown = json.loads(heads.get("x-pipacs-not-stored", "[]"))
        assert int(heads.get("x-pipacs-not-stored-count", "0")) >= len(shown)
        return shown


class Server:
    """A real pipacs process on loopback, ports chosen by the kernel and read back from its log."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 wrap: list[str] | None = None):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = {"StorageDirectory": str(workdir / "data"), "DicomPort": 0, "HttpPort": 0,
               "BindAddress": "127.0.0.1", "MinimumFreeDiskSpace": 0}
        cfg.update(config or {})
        self.config_path = workdir / "pipacs.json"
        self.config_path.write_text(json.dumps(cfg, indent=2))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PIPACS_")}
        self.env.update(env or {})
        self.wrap = wrap or []
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.stdout = ""
        self.http_port = 0
        self.dicom_port = 0
        self.host = cfg["BindAddress"]

    def start(self, timeout: float = 30) -> Server:
        self.lines = []
        self.proc = subprocess.Popen(
            self.wrap + [sys.executable, "-m", "appliance", "serve", "--config", str(self.config_path)],
            cwd=self.workdir, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = threading.Event()

        def pump_err() -> None:
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"listening: dicom=(\d+) http=(\d+)", line)
                if m:
                    self.dicom_port, self.http_port = int(m.group(1)), int(m.group(2))
                    ready.set()

        def pump_out() -> None:
            for line in self.proc.stdout:
                self.stdout += line

        self._pumps = [threading.Thread(target=pump_err, daemon=True), threading.Thread(target=pump_out, daemon=True)]
        for t in self._pumps:
            t.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)
                raise RuntimeError(f"pipacs did not start (exit {self.proc.poll()}):\n{self.log}")
        return self

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, pattern: str | re.Pattern, timeout: float = 15, since: int = 0,
                     stream: str = "log") -> str:
        """Wait until ``pattern`` (a substring, or a compiled regular expression) is in the
        server's log (``stream="stdout"``: its banner), at or after character ``since`` (see
        ``log_mark``); return the text from ``since`` to the end of the line that matched.

        The log is read by a thread from the server's stderr: a line the server wrote before
        it answered a request may still be on its way when the answer is in, so a log
        assertion right after an action is a race. On timeout: AssertionError with the tail.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = (self.stdout if stream == "stdout" else self.log)[since:]
            if isinstance(pattern, re.Pattern):
                m = pattern.search(text)
                at = m.end() if m else -1
            else:
                at = text.find(pattern)
                at = at + len(pattern) if at >= 0 else -1
            if at >= 0:
                end = text.find("\n", at)
                return text if end < 0 else text[:end + 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the {stream} within {timeout} s; its tail:\n{text[-3000:]}")
            time.sleep(0.02)

    def log_mark(self) -> int:
        """Where the log ends now: pass as ``since`` to wait for a line written after this point."""
        return len(self.log)

    _barriers = 0

    def settled_log(self) -> str:
        """The log once every line the server wrote before this call is in it: asks a URL
        that cannot exist (every answer >= 400 is logged, in order, by the same logger) and
        waits for that line. For negative assertions ("no Traceback"): without it, a line
        still in the pipe would make them pass whatever happened."""
        Server._barriers += 1
        path = f"/pipacs-test-log-barrier-{os.getpid()}-{Server._barriers}"
        mark = self.log_mark()
        self.get(path)
        self.wait_for_log(f"GET {path} -> ", since=mark)
        return self.log

    def stop(self, timeout: float = 30) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain()
        return self.proc.returncode if self.proc else 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._drain()

    def _drain(self) -> None:
        """After the process is gone, its last lines may still be in the pipes: read them to the end,
        so that ``log`` and ``stdout`` are whole once ``stop`` or ``kill`` returns."""
        for t in getattr(self, "_pumps", []):
            t.join(10)

    # ---- HTTP
    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.http_port}{path}"

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60) -> Response:
        if isinstance(body, str):
            body = body.encode()
        req = urllib.request.Request(self.url(path), data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return Response(r.status, r.read(), dict(r.headers))
        except urllib.error.HTTPError as e:
            return Response(e.code, e.read(), dict(e.headers))

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def get_json(self, path: str) -> Any:
        r = self.get(path)
        assert r.status == 200, (path, r.status, r.body[:500])
        return r.json()

    def post(self, path: str, body: bytes | str | None = None, **kw) -> Response:
        return self.request("POST", path, body, **kw)

    def post_json(self, path: str, obj: Any) -> Any:
        r = self.post(path, json.dumps(obj))
        assert r.status == 200, (path, r.status, r.body[:500])
        return r.json()

    def delete(self, path: str) -> Response:
        return self.request("DELETE", path)

    def stored_files(self) -> list[Path]:
        root = self.workdir / "data"
        return [p for p in root.glob("??/??/*") if p.is_file()]


def have_orthanc() -> bool:
    return shutil.which("Orthanc") is not None


async def store(archive, data: bytes) -> tuple[str, str, str, str]:
    """Ingest one instance into an in-process Archive: its (patient, study, series, instance) IDs."""
    from appliance.archive import Origin
    return (await archive.ingest_bytes(data, Origin())).ids


# ------------------------------------------------------------------ touch, in the browser tests

def touch(drv: Any, kind: str, points: list[tuple[float, float]]) -> None:
    """One touch event (touchStart, touchMove, touchEnd) with these fingers (CSS pixels), through
    Chrome's DevTools protocol: what an iPad's finger does, not a mouse's."""
    drv.execute_cdp_cmd("Input.dispatchTouchEvent", {
        "type": kind, "touchPoints": [{"x": x, "y": y, "id": k} for k, (x, y) in enumerate(points)]})


def drag(drv: Any, a: tuple[float, float], b: tuple[float, float], steps: int = 8) -> None:
    """One finger from a to b in ``steps`` moves."""
    touch(drv, "touchStart", [a])
    for k in range(1, steps + 1):
        touch(drv, "touchMove", [(a[0] + (b[0] - a[0]) * k / steps, a[1] + (b[1] - a[1]) * k / steps)])
    touch(drv, "touchEnd", [])


def tap(drv: Any, p: tuple[float, float]) -> None:
    """One finger tap at p."""
    touch(drv, "touchStart", [p])
    touch(drv, "touchEnd", [])
