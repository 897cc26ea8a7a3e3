"""The appliance around the service: Zeroconf advertisement, systemd notification and units,
configuration taken from the card."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from zeroconf import AddressResolverIPv4, IPVersion
from zeroconf.asyncio import AsyncZeroconf

from appliance.config import adopt, load_settings
from appliance.systemd_notify import Notifier

from .helpers import dcmtk

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_ZC = {"Enabled": True, "Interfaces": ["127.0.0.1"]}
# mDNS on loopback is one space for every process of the machine: the tests that advertise or
# look for an appliance there run one after the other, on one worker
ZEROCONF = pytest.mark.xdist_group("zeroconf")


# ------------------------------------------------------------------------------- Zeroconf (on loopback only)

async def _resolve(kind: str, name: str, timeout: float = 8.0):
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = await zc.async_get_service_info(kind, f"{name}.{kind}", timeout=1500)
            if info is not None:
                return info
            await asyncio.sleep(0.3)
        return None
    finally:
        await zc.async_close()


async def _host_answers(host: str) -> list[str]:
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        r = AddressResolverIPv4(f"{host}.local.")
        await r.async_request(zc.zeroconf, 3000)
        return r.parsed_addresses()
    finally:
        await zc.async_close()


def _txt(info) -> dict[str, str]:
    return {k.decode(): (v or b"").decode() for k, v in info.properties.items()}


@ZEROCONF
def test_zeroconf_advertises_dicom_dicomweb_and_http(make_server):
    srv = make_server({"Name": "Radiology 101", "DicomAet": "TEACHPACS",
                       "Zeroconf": dict(LOOPBACK_ZC, HostName="pipacs-test-a")})
    dicom = asyncio.run(_resolve("_dicom._tcp.local.", "TEACHPACS"))
    assert dicom is not None, srv.log
    assert dicom.port == srv.dicom_port and dicom.parsed_addresses() == ["127.0.0.1"]
    assert dicom.server == "pipacs-test-a.local."
    txt = _txt(dicom)
    assert txt["AET"] == txt["AETitle"] == "TEACHPACS"
    assert txt["serverDescription"] == "Radiology 101" and txt["CGET"] == "YES" and txt["WADO"] == "YES"
    assert txt["WADOPort"] == str(srv.http_port) and txt["WADOURL"] == "/wado" and txt["WADOProtocol"] == "http"
    assert txt["UID"].startswith("2.25.") and txt["preferredSyntax"] == "1.2.840.10008.1.2.1"
    web = asyncio.run(_resolve("_http._tcp.local.", "Radiology 101"))
    assert web is not None and web.port == srv.http_port and _txt(web)["path"] == "/"
    dw = asyncio.run(_resolve("_dicomweb._tcp.local.", "Radiology 101"))
    assert dw is not None and _txt(dw)["DICOMWebPath"] == "/dicom-web"
    assert asyncio.run(_host_answers("pipacs-test-a")) == ["127.0.0.1"]
    # what the TXT record says works: C-ECHO on the advertised port, WADO on the advertised one
    out = subprocess.run([dcmtk("echoscu"), "-aec", txt["AET"], "127.0.0.1", str(dicom.port)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # the UID is the appliance's own: the same after a restart
    srv.stop()
    assert asyncio.run(_resolve("_dicom._tcp.local.", "TEACHPACS", timeout=2)) is None   # withdrawn on stop
    srv.start()
    again = asyncio.run(_resolve("_dicom._tcp.local.", "TEACHPACS"))
    assert again is not None and _txt(again)["UID"] == txt["UID"]


@ZEROCONF
def test_two_appliances_in_one_room_both_stay_reachable(make_server):
    zc = dict(LOOPBACK_ZC, HostName="pipacs-test-b")
    first = make_server({"DicomAet": "ROOMA", "Zeroconf": zc}, name="a")
    assert asyncio.run(_resolve("_dicom._tcp.local.", "ROOMA")) is not None
    second = make_server({"DicomAet": "ROOMB", "Zeroconf": zc}, name="b")
    info = asyncio.run(_resolve("_dicom._tcp.local.", "ROOMB"))
    assert info is not None, second.log
    assert info.server != "pipacs-test-b.local." and info.server.startswith("pipacs-test-b-")
    second.wait_for_log("already used by another device")
    assert asyncio.run(_host_answers(info.server[:-len(".local.")])) == ["127.0.0.1"]
    assert asyncio.run(_resolve("_dicom._tcp.local.", "ROOMA")).server == "pipacs-test-b.local."
    first.stop()


@ZEROCONF
def test_zeroconf_is_off_by_default(server):
    assert asyncio.run(_resolve("_dicom._tcp.local.", "PIPACS", timeout=2)) is None
    # the banner is written after the service started (Zeroconf included): once it is out, and the
    # log settled, a Zeroconf line would be in the log
    server.wait_for_log("Bonjour  off", stream="stdout")   # the banner says how to turn it on
    assert "pipacs.zeroconf" not in server.settled_log()


# ------------------------------------------------------------------------------- systemd notification

class _NotifySocket:
    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        self._t.join()
        self.sock.close()

    def with_(self, text: str) -> list[str]:
        return [m for _, m in self.messages if text in m]

    def wait_until(self, cond, timeout: float = 15) -> None:
        """Poll ``cond`` until it holds; a hang guard, not a speed check."""
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"not within {timeout} s; datagrams: {self.messages}"
            time.sleep(0.02)


def test_service_tells_systemd_ready_status_watchdog_stopping(make_server, tmp_path):
    ns = _NotifySocket(tmp_path / "notify")
    try:
        srv = make_server(env={"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "300000"}, start=False)
        srv.start()
        ns.wait_until(lambda: len(ns.with_("WATCHDOG=1")) >= 4)   # every 150 ms, from the event loop
        ready = ns.with_("READY=1")
        assert len(ready) == 1 and "STATUS=0 patients" in ready[0] and f"DICOM PIPACS:{srv.dicom_port}" in ready[0]
        srv.stop()
        ns.wait_until(lambda: ns.with_("STOPPING=1"))
    finally:
        ns.close()


@pytest.mark.parametrize("backend", ["socket", "python-systemd"])
def test_both_notify_backends_write_the_same_datagrams(tmp_path, monkeypatch, backend):
    if backend == "python-systemd":
        pytest.importorskip("systemd.daemon", reason="systemd-python (pipacs[systemd]) is not installed")
    ns = _NotifySocket(tmp_path / "n")
    monkeypatch.setenv("NOTIFY_SOCKET", str(ns.path))   # systemd-python reads the process environment
    try:
        n = Notifier(backend=backend, environ={"NOTIFY_SOCKET": str(ns.path)})
        assert n.backend == backend
        n.ready("3 patients")
        n.status("busy")
        n.stopping()
        ns.wait_until(lambda: len(ns.messages) >= 3)
        got = [m for _, m in ns.messages]
        assert got[0].startswith("READY=1\nSTATUS=3 patients") and got[1] == "STATUS=busy"
        assert got[2].startswith("STOPPING=1")
    finally:
        ns.close()


def test_notifier_is_silent_outside_systemd():
    n = Notifier(environ={})
    assert not n.active and n.notify("READY=1") is False


def test_log_lines_carry_journal_priorities_under_systemd(tmp_path):
    """Run as systemd runs it: stderr is the journal stream (checked by $JOURNAL_STREAM)."""
    log = tmp_path / "err"
    code = ("import os,sys,logging; st=os.fstat(2); os.environ['JOURNAL_STREAM']=f'{st.st_dev}:{st.st_ino}';"
            "import appliance.cli as c; c._setup_logging(False); logging.getLogger('pipacs.x').error('boom');"
            "logging.getLogger('pipacs.x').info('hello')")
    with open(log, "w") as f:
        subprocess.run([os.sys.executable, "-c", code], stderr=f, cwd=ROOT, check=True)
    text = log.read_text()
    import importlib.util
    if importlib.util.find_spec("systemd") is not None:
        assert text == ""   # went to the journal itself, with its fields
    else:
        assert "<3>pipacs.x: boom" in text and "<6>pipacs.x: hello" in text


# ------------------------------------------------------------------------------- units

def _analyze_root(tmp_path: Path) -> Path:
    """A file-system root holding our units and the programs they start, for systemd-analyze --root."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for prog in ("opt/pipacs/venv/bin/pipacs", "opt/pipacs/image/firstboot.sh", "opt/pipacs/image/usb-import.sh"):
        p = root / prog
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    for unit in (ROOT / "systemd").glob("*.service"):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    return root


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_units_verify_without_any_complaint(tmp_path):
    root = _analyze_root(tmp_path)
    units = ["/etc/systemd/system/pipacs.service", "/etc/systemd/system/pipacs-firstboot.service",
             "/etc/systemd/system/pipacs-import@sdb1.service", "/etc/systemd/system/pipacs-network.service"]
    out = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    # the check is real: a typo in a unit is reported
    bad = root / "etc/systemd/system/pipacs.service"
    bad.write_text(bad.read_text().replace("Restart=on-failure", "Restart=on-failur"))
    out = subprocess.run(["systemd-analyze", "verify", f"--root={root}", units[0]], capture_output=True, text=True)
    assert out.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_service_unit_is_hardened(tmp_path):
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20",
                          str(ROOT / "systemd/pipacs.service")], capture_output=True, text=True)
    text = out.stdout + out.stderr
    score = float(text.split("Overall exposure level for pipacs.service:")[1].split()[0])
    assert score <= 2.0, text[-2000:]
    unit = (ROOT / "systemd/pipacs.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "DynamicUser=yes", "StateDirectory=pipacs",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE"):
        assert line in unit


def test_udev_rule_starts_the_import_unit():
    rules = (ROOT / "systemd/99-pipacs-usb-import.rules").read_text()
    assert 'ENV{SYSTEMD_WANTS}+="pipacs-import@%k.service"' in rules and 'ENV{ID_BUS}=="usb"' in rules
    if shutil.which("udevadm"):
        out = subprocess.run(["udevadm", "verify", str(ROOT / "systemd/99-pipacs-usb-import.rules")],
                             capture_output=True, text=True)
        if "Unknown command" not in out.stderr and "invalid option" not in out.stderr:
            assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------------------- configuration from the card

def test_a_bad_card_configuration_keeps_the_last_good_one_and_says_why(tmp_path, make_server):
    card, good = tmp_path / "card.json", tmp_path / "state" / "pipacs.json"
    base = {"StorageDirectory": str(tmp_path / "data"), "DicomPort": 0, "HttpPort": 0, "BindAddress": "127.0.0.1"}
    card.write_text(json.dumps(base | {"Name": "Room 4", "DicomAet": "ROOM4"}))
    assert adopt(card, good)[0] is True
    card.write_text(json.dumps(base | {"Name": "Room 4", "DicomAet": "THIS AE TITLE IS FAR TOO LONG"}))
    adopted, message = adopt(card, good)
    assert not adopted and "DicomAet" in message
    s = load_settings(good, environ={})
    assert s["DicomAet"] == "ROOM4" and "DicomAet" in s.problem
    # the CLI never fails the boot, and the service shows the problem
    out = subprocess.run([os.sys.executable, "-m", "appliance", "config", "--adopt", str(card), "--last-good",
                          str(good)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "refused" in out.stderr
    srv = make_server(start=False)
    srv.config_path = good
    srv.start()
    sysinfo = srv.get_json("/system")
    assert sysinfo["DicomAet"] == "ROOM4" and "DicomAet" in sysinfo["ConfigurationProblem"]
    srv.wait_for_log("refused")
    card.write_text(json.dumps(base | {"Name": "Room 4", "DicomAet": "ROOM4B"}))
    assert adopt(card, good)[0] and load_settings(good, environ={}).problem == ""
