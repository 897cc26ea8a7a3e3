"""A stop is exception-safe: SIGTERM ends the real appliance within the unit's TimeoutStopSec
even when the socket named by $NOTIFY_SOCKET is gone (issue 15), with both notify backends.

The bound is systemd's contract, not a speed target: by the time the unit's stop timeout
expires systemd SIGKILLs the process, so it must have exited by then, and exited cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from appliance import service
from appliance.systemd_notify import Notifier

from .helpers import REPO, TEST_FILES, Server

UNIT = REPO / "systemd" / "pipacs.service"
NOTIFY_FAILED = re.compile(r"systemd notification \(([\w-]+)\) to \S+ failed")


def timeout_stop_sec() -> float:
    """TimeoutStopSec= of the appliance's unit, in seconds (systemd.time(7): "30", "30s", "1min 30s")."""
    m = re.search(r"^TimeoutStopSec=(.+)$", UNIT.read_text(), re.MULTILINE)
    assert m, f"{UNIT} sets no TimeoutStopSec"
    units = {"ms": 0.001, "s": 1, "sec": 1, "": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", m.group(1).strip()):
        total += float(number) * units[unit]
    assert total > 0
    return total


class NotifyListener:
    """A datagram socket standing in for systemd's; ``vanish`` removes it as a restarted manager would."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def vanish(self, unlink: bool = True) -> None:
        """Close (sends then fail with ECONNREFUSED) and, by default, unlink (ENOENT). Unlinked first:
        a watchdog ping between a close and an unlink would see ECONNREFUSED, not ENOENT."""
        if unlink:
            self.path.unlink(missing_ok=True)
        if not self._stop.is_set():
            self._stop.set()
            self._t.join()
            self.sock.close()

    def with_(self, text: str) -> list[str]:
        return [m for m in self.messages if text in m]


def backend_env(backend: str, tmp_path: Path) -> dict[str, str]:
    """Environment that makes the appliance choose ``backend``.

    The plain-socket fallback is what an installation without the ``systemd`` extra uses; it
    is forced here by a ``systemd`` package earlier on the path that cannot be imported.
    """
    if backend == "python-systemd":
        pytest.importorskip("systemd.daemon", reason="systemd-python (pipacs[systemd]) is not installed")
        return {}
    shim = tmp_path / "no-systemd-python"
    (shim / "systemd").mkdir(parents=True, exist_ok=True)
    (shim / "systemd" / "__init__.py").write_text('raise ImportError("systemd-python hidden by the test")\n')
    return {"PYTHONPATH": str(shim)}


def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def sigterm_and_wait(srv: Server) -> int:
    """SIGTERM, then wait as systemd does: until TimeoutStopSec, after which it would SIGKILL."""
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    limit = timeout_stop_sec()
    try:
        return srv.proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        srv.proc.kill()
        srv.proc.wait()
        pytest.fail(f"still running {limit:.0f} s (TimeoutStopSec) after SIGTERM:\n{srv.log}")


def notify_failures(srv: Server) -> list[tuple[str, str]]:
    return [(m.group(1), line) for line in srv.lines if (m := NOTIFY_FAILED.search(line))]


# ----------------------------------------------------------------------------- the real appliance

@pytest.mark.parametrize("backend", ["python-systemd", "socket"])
@pytest.mark.parametrize("gone", ["before READY", "after READY, unlinked", "after READY, closed"])
def test_sigterm_ends_the_appliance_when_the_notify_socket_is_gone(tmp_path, backend, gone):
    path = tmp_path / "notify"
    ns = NotifyListener(path)
    if gone == "before READY":
        ns.vanish()
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000", **backend_env(backend, tmp_path)}
    srv = Server(tmp_path / "srv", env=env)
    try:
        srv.start()
        if gone != "before READY":
            wait_for(lambda: ns.with_("READY=1"), "READY=1")
            assert f"DICOM PIPACS:{srv.dicom_port}" in ns.with_("READY=1")[0]
            ns.vanish(unlink=gone.endswith("unlinked"))
        # the watchdog pings every 100 ms: the first one to fail is logged ...
        wait_for(lambda: notify_failures(srv), "the notify failure in the log")
        time.sleep(0.5)   # ... and the next few are not
        assert srv.get("/system").status == 200, "the appliance serves on without its notify socket"
        status = sigterm_and_wait(srv)
        time.sleep(0.2)   # the stderr reader has the last lines
        failures = notify_failures(srv)
        assert [b for b, _ in failures] == [backend], srv.log   # once, through the backend chosen
        expected = "No such file" if gone != "after READY, closed" else "Connection refused"
        assert expected in failures[0][1]
        assert status == 0, srv.log
        assert "INFO pipacs: stopped" in srv.log and "steps failed" not in srv.log, srv.log
        assert "Traceback" not in srv.log, srv.log
    finally:
        srv.kill()
        ns.vanish()


@pytest.mark.parametrize("backend", ["python-systemd", "socket"])
def test_an_instance_stored_just_before_sigterm_survives_a_stop_whose_notify_fails(tmp_path, backend):
    """The original failure left the archive open: the stop ended at STOPPING=1."""
    path = tmp_path / "notify"
    ns = NotifyListener(path)
    srv = Server(tmp_path / "srv", env={"NOTIFY_SOCKET": str(path), **backend_env(backend, tmp_path)})
    try:
        srv.start()
        wait_for(lambda: ns.with_("READY=1"), "READY=1")
        assert srv.post("/instances", (TEST_FILES / "CT_small.dcm").read_bytes()).status == 200
        ns.vanish()
        assert sigterm_and_wait(srv) == 0, srv.log
        time.sleep(0.2)
        assert [b for b, _ in notify_failures(srv)] == [backend], srv.log   # STOPPING=1 failed ...
        assert "INFO pipacs: stopped" in srv.log, srv.log                     # ... and the stop went on
        first_log = srv.log
        srv.env.pop("NOTIFY_SOCKET")
        srv.start()
        assert len(srv.get_json("/instances")) == 1, first_log
        assert "reconciled storage" not in srv.log, srv.log   # closed cleanly: nothing to repair
        assert srv.stop() == 0
    finally:
        srv.kill()
        ns.vanish()


@pytest.mark.slow   # waits out the listener's grace for running associations (10 s) by design
def test_sigterm_ends_the_appliance_while_a_dicom_peer_holds_an_association(tmp_path):
    """An association left open (a modality that never releases) is aborted after the grace,
    the archive still closes, and the process is gone within TimeoutStopSec."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    path = tmp_path / "notify"
    ns = NotifyListener(path)
    srv = Server(tmp_path / "srv", env={"NOTIFY_SOCKET": str(path)})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    assoc = None
    try:
        srv.start()
        assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        ns.vanish()
        assert sigterm_and_wait(srv) == 0, srv.log
        time.sleep(0.2)
        assert "aborting association from HOLDER at shutdown" in srv.log, srv.log
        assert "INFO pipacs: stopped" in srv.log and "steps failed" not in srv.log, srv.log
    finally:
        if assoc is not None and assoc.is_alive():
            assoc.abort()
        srv.kill()
        ns.vanish()


def test_the_stop_deadline_ends_a_process_held_by_a_thread(tmp_path):
    """The last resort in serve(): a non-daemon thread that never ends cannot outlive the deadline."""
    code = ("import logging, threading\n"
            "from appliance.service import _exit_after\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "threading.Thread(target=threading.Event().wait, name='stuck-worker').start()\n"
            "_exit_after(0.5)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        _, err = proc.communicate(timeout=timeout_stop_sec())
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the stop deadline did not end the process")
    assert proc.returncode == 1
    assert "exiting now" in err and "stuck-worker" in err, err


def test_the_stop_deadline_is_inside_the_units_stop_timeout():
    """Our own deadline fires before systemd's SIGKILL, and leaves the archive's close time."""
    bounded = 1.0 + (service.DICOM_GRACE + 2) + (service.WEB_GRACE + 1) + 3.0   # the bounds in Service.stop
    assert bounded + 5 <= service.STOP_DEADLINE < timeout_stop_sec()


# ----------------------------------------------------------------------------- the parts, in process

@pytest.mark.parametrize("backend", ["python-systemd", "socket"])
@pytest.mark.parametrize("unlink", [True, False], ids=["unlinked", "closed"])
def test_the_notifier_never_raises_and_logs_a_failure_once(tmp_path, monkeypatch, caplog, backend, unlink):
    backend_env(backend, tmp_path)   # skips python-systemd when it is not installed
    path = tmp_path / "n"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))   # systemd-python reads the process environment
    ns = NotifyListener(path)
    n = Notifier(backend=backend, environ={"NOTIFY_SOCKET": str(path)})
    assert n.notify("READY=1")
    ns.vanish(unlink=unlink)
    caplog.set_level(logging.INFO, logger="pipacs.systemd")
    for _ in range(20):
        assert n.notify("WATCHDOG=1") is False
    n.ready("x")
    n.stopping()
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1, caplog.text
    if unlink:   # the manager is back: sending works again, and a later loss is logged again
        back = NotifyListener(path)
        try:
            assert n.notify("WATCHDOG=1")
            assert "works again" in caplog.text
        finally:
            back.vanish()
        n.notify("WATCHDOG=1")
        assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 2, caplog.text


def test_every_stop_step_runs_and_each_failure_is_logged_once_by_name(caplog):
    ran: list[str] = []

    def raises() -> None:
        ran.append("raises")
        raise ConnectionRefusedError(111, "Connection refused")

    async def overruns() -> None:
        ran.append("overruns")
        await asyncio.sleep(3600)

    async def fine() -> None:
        ran.append("fine")

    async def stop() -> list[bool]:
        return [await service._run_step("notify", raises, None),
                await service._run_step("stop the web server", overruns, 0.05),
                await service._run_step("close the archive", fine, None)]

    caplog.set_level(logging.INFO, logger="pipacs")
    assert asyncio.run(stop()) == [False, False, True]
    assert ran == ["raises", "overruns", "fine"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors
    assert "notify failed" in errors[0] and "stop the web server did not finish" in errors[1]
