"""The SD-card image: its layout checked statically, then booted in qemu (TCG, user-mode network
restricted to forwarded loopback ports): the service reaches READY, answers C-ECHO and HTTP,
the card grew, host keys exist, Zeroconf advertises, the first boot wrote the board's own
teacher password and hotspot passphrase to the FAT partition, changes need that password, and
a hard reset during a storescu loses nothing that was acknowledged.

Run by `make image-test` (which builds the amd64 image first); skipped when no image is built.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest

from appliance.card import SIGN_IN_HEADING

from .helpers import dcmtk, free_port
from .synth import write_series

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("PIPACS_IMAGE_DIR", ROOT / "build" / "image"))

pytestmark = [pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(1800)]


def _image(arch: str) -> Path | None:
    found = sorted(BUILD.glob(f"pipacs-*-{arch}.img"))
    return found[-1] if found else None


def _need(arch: str) -> Path:
    img = _image(arch)
    if img is None:
        pytest.skip(f"no {arch} image in {BUILD}: run `make image` (or image/build.sh {arch})")
    return img


def _partitions(img: Path) -> list[dict]:
    out = subprocess.run(["sfdisk", "-J", str(img)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["partitiontable"]["partitions"]


def _fat(img: Path) -> str:
    start = _partitions(img)[0]["start"] * 512
    return f"{img}@@{start}"


def _mtype(img: Path, name: str) -> str:
    out = subprocess.run(["mtype", "-i", _fat(img), f"::/{name}"], capture_output=True, text=True,
                         env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    return out.stdout if out.returncode == 0 else ""


def _mdir(img: Path) -> set[str]:
    out = subprocess.run(["mdir", "-b", "-i", _fat(img), "::/"], capture_output=True, text=True, check=True,
                         env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    return {line.strip().removeprefix("::/") for line in out.stdout.splitlines() if line.strip()}


def _debugfs(img: Path, tmp: Path, command: str) -> str:
    p = _partitions(img)[1]
    part = tmp / "root.ext4"
    if not part.exists():
        subprocess.run(["dd", f"if={img}", f"of={part}", "bs=512", f"skip={p['start']}", f"count={p['size']}",
                        "conv=sparse", "status=none"], check=True)
    return subprocess.run(["debugfs", "-R", command, str(part)], capture_output=True, text=True).stdout


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_card_layout(arch, tmp_path):
    img = _need(arch)
    parts = _partitions(img)
    assert [p["type"] for p in parts] == ["c", "83"] and parts[0].get("bootable")
    assert parts[0]["start"] % 2048 == 0 and parts[1]["start"] % 2048 == 0
    files = _mdir(img)
    assert {"pipacs.json", "wifi.txt"} <= files
    card = _mtype(img, "pipacs.json")
    assert '"Zeroconf": {"Enabled": true' in card
    # the card's defaults: teachers sign in, students read, DICOM uploads wait for the teacher; the
    # hotspot passphrase is made at the first boot (no two boards share one)
    for line in ('"AuthenticationEnabled": true', '"StudentAccess": "open"', '"DicomAlwaysAllowStore": false',
                 '"RemoteAccessAllowed": true', '"HotspotPassphrase": "(made at first boot)"'):
        assert line in card, line
    assert "radiology-class" not in card
    if arch == "arm64":   # what a Raspberry Pi's firmware needs from the FAT partition
        config, cmdline = _mtype(img, "config.txt"), _mtype(img, "cmdline.txt")
        kernel = re.search(r"^kernel=(\S+)", config, re.MULTILINE).group(1)
        initrd = re.search(r"^initramfs (\S+)", config, re.MULTILINE).group(1)
        assert kernel in files and initrd in files, (kernel, initrd, sorted(files))
        assert "root=LABEL=pipacs-root" in cmdline
        # Debian ships the upstream kernel's device-tree names (bcm2837-* for the Pi 3 and Zero 2 W)
        for dtb in ("bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb", "bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb",
                    "bcm2837-rpi-zero-2-w.dtb", "bcm2711-rpi-cm4-io.dtb",
                    "start4.elf", "fixup4.dat", "bootcode.bin"):
            assert dtb in files, dtb
    listing = _debugfs(img, tmp_path, "ls -l /opt/pipacs/venv/bin")
    assert "pipacs" in listing
    # `pipacs` over SSH acts on the service's configuration and storage
    wrapper = _debugfs(img, tmp_path, "cat /usr/local/bin/pipacs")
    assert "PIPACS_STORAGE_DIRECTORY" in wrapper and "/var/lib/pipacs/pipacs.json" in wrapper
    assert "pipacs.service" in _debugfs(img, tmp_path, "ls /etc/systemd/system/multi-user.target.wants")
    assert "ssh_host" not in _debugfs(img, tmp_path, "ls /etc/ssh")   # made at first boot, per card
    assert "LABEL=pipacs-root" in _debugfs(img, tmp_path, "cat /etc/fstab")
    # one mDNS responder on the box: the appliance's own (no avahi-daemon beside it)
    assert "File not found" in subprocess.run(
        ["debugfs", "-R", "stat /usr/sbin/avahi-daemon", str(tmp_path / "root.ext4")],
        capture_output=True, text=True).stderr


class Guest:
    """The image booted in qemu; serial console in a file; ports forwarded on loopback only."""

    def __init__(self, arch: str, img: Path, tmp: Path, grow_mb: int = 1024, nic: bool = True, append: str = ""):
        self.arch, self.tmp = arch, tmp
        self.nic, self.append = nic, append
        self.disk = tmp / "card.img"
        shutil.copyfile(img, self.disk)
        with open(self.disk, "r+b") as f:   # a bigger card than the image: first boot must grow into it
            f.truncate(self.disk.stat().st_size + grow_mb * 2**20)
        self.kernel = img.with_suffix(".vmlinuz")
        self.initrd = img.with_suffix(".initrd")
        self.serial = tmp / "serial.log"
        self.monitor = tmp / "monitor.sock"
        self.dicom_port, self.http_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.boot_offset = 0   # where the console log of the current boot starts

    def start(self) -> Guest:
        net = (f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.dicom_port}-:4242,"
               f"hostfwd=tcp:127.0.0.1:{self.http_port}-:8042")
        if self.arch == "amd64":
            cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "2"]
            console = "ttyS0"
        else:
            cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2"]
            console = "ttyAMA0"
        cmd += ["-m", "1024", "-display", "none", "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", f"root=LABEL=pipacs-root ro console={console} systemd.journald.forward_to_console=1 "
                           + self.append,
                "-drive", f"file={self.disk},format=raw,if=virtio", "-serial", f"file:{self.serial}",
                "-monitor", f"unix:{self.monitor},server,nowait"]
        cmd += ["-netdev", net, "-device", "virtio-net-pci,netdev=n0"] if self.nic else ["-nic", "none"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def log(self) -> str:
        return self.serial.read_text(errors="replace") if self.serial.exists() else ""

    def put_on_card(self, name: str, data: bytes) -> None:
        """Write a file on the card's FAT partition, as a teacher does from a laptop."""
        src = self.tmp / name
        src.write_bytes(data)
        subprocess.run(["mcopy", "-o", "-i", _fat(self.disk), str(src), f"::/{name}"], check=True,
                       env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))

    def http(self, path: str, timeout: float = 10, auth: str | None = None) -> tuple[int, bytes]:
        return self.request("GET", path, timeout=timeout, auth=auth)

    def request(self, method: str, path: str, body: bytes | None = None, auth: str | None = None,
                timeout: float = 30) -> tuple[int, bytes]:
        """``auth``: the teacher password (HTTP Basic as user teacher). Refusals are returned, not raised."""
        headers = {"Authorization": "Basic " + base64.b64encode(f"teacher:{auth}".encode()).decode()} if auth else {}
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def card_file(self, name: str) -> str:
        """A file on the card's FAT partition, read from the host as a teacher's laptop would (live:
        the guest syncs what it writes there)."""
        return _mtype(self.disk, name)

    def wait_http(self, limit: float) -> float:
        deadline = time.monotonic() + limit
        restarts = 0
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()[-2000:]
            if "Kernel panic - not syncing" in self.log()[self.boot_offset:] and restarts < 2:
                # qemu's software x86 now and then breaks the guest kernel's own code patching
                # early in boot (int3 oops in sched_clock_cpu), before any of ours runs: boot again
                print(f"\n{self.arch}: the guest kernel panicked while booting under emulation; resetting")
                restarts += 1
                self.reset()
                deadline = time.monotonic() + limit
                continue
            try:
                if self.http("/system", timeout=3)[0] == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(2)
        raise AssertionError(f"no HTTP answer within {limit} s; console:\n{self.log()[-4000:]}")

    def reset(self) -> None:
        """A power cut: the machine restarts without any shutdown."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.monitor))
            s.sendall(b"system_reset\n")
            time.sleep(0.5)
        self.started = time.monotonic()
        self.boot_offset = len(self.log())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("arch,limit", [("amd64", 240), ("arm64", 420)])
def test_image_boots_serves_and_survives_a_power_cut(arch, limit, tmp_path):
    img = _need(arch)
    if not shutil.which("qemu-system-x86_64" if arch == "amd64" else "qemu-system-aarch64"):
        pytest.skip("qemu-system is not installed")
    g = Guest(arch, img, tmp_path)
    # root over SSH: `pipacs teacher-password` while the service runs (tests/guest/teacher-password-test.sh,
    # started once by the first boot as firstrun.sh, as Raspberry Pi Imager's customisation is)
    script = (Path(__file__).parent / "guest" / "teacher-password-test.sh").read_text()
    g.put_on_card("firstrun.sh", (
        "#!/bin/sh\ncat > /usr/local/sbin/pipacs-teacher-pw-test <<'PIPACS_EOF'\n" + script + "PIPACS_EOF\n"
        "chmod 755 /usr/local/sbin/pipacs-teacher-pw-test\n"
        "systemd-run --no-block --unit=pipacs-teacher-pw-test /usr/local/sbin/pipacs-teacher-pw-test\n").encode())
    g.start()
    try:
        up = g.wait_http(limit)
        started = re.compile(r"\[\s*([\d.]+)\] systemd\[1\]: Started pipacs.service")
        deadline = time.monotonic() + 30   # READY follows the listening sockets by a moment
        while not started.search(g.log()) and time.monotonic() < deadline:
            time.sleep(0.5)
        log = g.log()
        ready = started.search(log)
        assert ready, "the service never reported READY to systemd"
        print(f"\n{arch}: READY {float(ready.group(1)):.0f} s after the kernel started; HTTP answered "
              f"{up:.0f} s after qemu started")
        assert "root file system grown to the whole card" in log
        assert "new SSH host keys" in log
        advert = re.compile(r"zeroconf: advertising PIPACS\._dicom\._tcp\.local\.")
        deadline = time.monotonic() + 60   # the host name is probed first: a few seconds after READY
        while not advert.search(g.log()) and time.monotonic() < deadline:
            time.sleep(1)
        assert advert.search(g.log()), "no _dicom._tcp advertisement inside the guest"
        out = subprocess.run([dcmtk("echoscu"), "-aec", "PIPACS", "127.0.0.1", str(g.dicom_port)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        system = json.loads(g.http("/system")[1])
        assert system["DicomAet"] == "PIPACS" and system["Name"] == "pipacs"

        # the first boot made this board's own teacher password and hotspot passphrase: on the card's FAT
        # partition (with the network's status, which keeps that section) and in the journal
        password, passphrase, status = _card_secrets(g)
        made = re.compile(r"[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}")
        assert made.fullmatch(password) and made.fullmatch(passphrase) and password != passphrase
        assert passphrase not in ("radiology-class", "(made at first boot)")
        assert f'"HotspotPassphrase": "{passphrase}"' in g.card_file("pipacs.json")
        assert "Students: nothing to sign in" in status
        # (this test's kernel command line forwards the journal to the console)
        assert f'teacher password (user "teacher"): {password}' in g.log()
        print(f"\n{arch}: pipacs-status.txt on the card:\n" + status)

        # root sets a new password over SSH while the service runs: taken at once, the file the service's
        deadline = time.monotonic() + 300
        while not re.search(r"TEACHER-PW: (PASS|FAIL)", g.log()) and time.monotonic() < deadline:
            assert g.proc.poll() is None
            time.sleep(2)
        lines = [x for x in g.log().splitlines() if "TEACHER-PW" in x]
        print("\n".join(lines))
        assert any("TEACHER-PW: PASS" in x for x in lines), "\n".join(lines) or g.log()[-3000:]

        # from the classroom network (the forwarded port): no change without the password from the card
        one = write_series(tmp_path / "one", 1, rows=64, cols=64, patient_id="DEL1")[0]
        assert g.request("POST", "/instances", one.read_bytes())[0] in (401, 403)
        code, body = g.request("POST", "/instances", one.read_bytes(), auth=password)
        assert code == 200, body
        study = json.loads(body)["ParentStudy"]
        assert g.request("DELETE", f"/studies/{study}")[0] in (401, 403)
        assert g.request("DELETE", f"/studies/{study}", auth="not-the-password")[0] == 401
        assert g.request("GET", f"/studies/{study}", auth=password)[0] == 200
        assert g.request("DELETE", f"/studies/{study}", auth=password)[0] == 200
        assert g.request("GET", f"/studies/{study}", auth=password)[0] == 404
        # DICOM stores from an unregistered device wait for the teacher's upload window
        subprocess.run([dcmtk("storescu"), "-aec", "PIPACS", "127.0.0.1", str(g.dicom_port), str(one)],
                       capture_output=True, text=True, timeout=60)
        assert json.loads(g.http("/instances", auth=password)[1]) == []
        code, body = g.request("PUT", "/pipacs/upload-window", json.dumps({"Minutes": 30}).encode(), auth=password)
        assert code == 200 and json.loads(body)["Open"], body

        # a power cut in the middle of a storescu
        files = write_series(tmp_path / "study", 150, rows=128, cols=128, patient_id="CUT1")
        scu = subprocess.Popen([dcmtk("storescu"), "-v", "-aec", "PIPACS", "127.0.0.1", str(g.dicom_port),
                                *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        acked: list[Path] = []
        current: Path | None = None
        for line in scu.stdout:
            m = re.search(r"Sending file: (\S+)", line)
            if m:
                current = Path(m.group(1))
            if "Received Store Response (Success)" in line and current is not None:
                acked.append(current)
                if len(acked) == 40:
                    g.reset()
                    break
            if time.monotonic() > deadline:
                break
        scu.kill()
        scu.wait()
        assert len(acked) == 40, "the storescu did not get far enough before the cut"
        g.wait_http(limit)
        stored = {}
        for inst in json.loads(g.http("/instances?expand", auth=password)[1]):
            stored[inst["MainDicomTags"]["SOPInstanceUID"]] = inst["ID"]
        for f in acked:
            ds = pydicom.dcmread(f)
            assert ds.SOPInstanceUID in stored, f"{f.name} was acknowledged but is gone after the power cut"
            back = pydicom.dcmread(io.BytesIO(g.http(f"/instances/{stored[ds.SOPInstanceUID]}/file",
                                                     auth=password)[1]))
            assert back.PixelData == ds.PixelData
    finally:
        g.stop()


def _card_secrets(g: Guest, limit: float = 180) -> tuple[str, str, str]:
    """(teacher password, hotspot passphrase, the whole text) from pipacs-status.txt on the card, once
    the network service has written its part too."""
    deadline = time.monotonic() + limit
    while True:
        status = g.card_file("pipacs-status.txt")
        pw = re.search(r'user "teacher" with the password (\S+)$', status, re.MULTILINE)
        wifi = re.search(r'"pipacs", password (\S+)$', status, re.MULTILINE)
        if pw and wifi and "Network mode:" in status and status.count(SIGN_IN_HEADING) == 1:
            return pw.group(1), wifi.group(1), status
        if time.monotonic() > deadline:
            raise AssertionError(f"pipacs-status.txt on the card has no sign-in section and network status:\n"
                                 f"{status}\n--- console:\n{g.log()[-3000:]}")
        time.sleep(3)


def test_hotspot_on_simulated_radios_serves_a_client(tmp_path):
    """A lecture hall with no network: auto mode with a Wi-Fi that is not there falls back to the
    hotspot in time; a client on the second simulated radio joins it, gets an address, resolves
    pipacs.local and pacs.lan, and C-ECHO and GET /system answer over that link."""
    img = _need("amd64")
    if not _find_module(img, tmp_path):
        pytest.skip("the image's kernel has no mac80211_hwsim")
    # three radios: the appliance's (phy0), the school's access point that refuses the wrong password
    # (phy2, set up by firstrun.sh before the network starts), the student's iPad (phy1)
    g = Guest("amd64", img, tmp_path, nic=False, append="mac80211_hwsim.radios=3 modules-load=mac80211_hwsim")
    g.put_on_card("pipacs.json", json.dumps({
        "RemoteAccessAllowed": True, "Zeroconf": {"Enabled": True},
        "Network": {"Mode": "auto", "WifiSsid": "School", "WifiPassword": "wrong-password", "ClientTimeout": 20,
                    "HotspotSsid": "pipacs", "HotspotPassphrase": "hwsim-class-9"}}).encode())
    script = (Path(__file__).parent / "guest" / "hwsim-test.sh").read_text()
    school_ap = (
        "ip netns add school\niw phy phy2 set netns name school\nip netns exec school ip link set wlan2 up\n"
        "printf 'interface=wlan2\\ndriver=nl80211\\nssid=School\\nhw_mode=g\\nchannel=1\\nwpa=2\\n"
        "wpa_key_mgmt=WPA-PSK\\nrsn_pairwise=CCMP\\nwpa_passphrase=the-right-password\\n' > /run/school.conf\n"
        "ip netns exec school hostapd -B /run/school.conf\n")
    g.put_on_card("firstrun.sh", (
        "#!/bin/sh\n" + school_ap + "cat > /usr/local/sbin/pipacs-hwsim-test <<'PIPACS_EOF'\n" + script + "PIPACS_EOF\n"
        "chmod 755 /usr/local/sbin/pipacs-hwsim-test\n"
        "systemd-run --no-block --unit=pipacs-hwsim-test /usr/local/sbin/pipacs-hwsim-test\n").encode())
    g.start()
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            log = g.log()
            if "HWSIM-TEST: PASS" in log or "HWSIM-TEST: FAIL" in log:
                break
            assert g.proc.poll() is None
            time.sleep(3)
        lines = [x for x in g.log().splitlines() if "HWSIM-TEST" in x or "network:" in x]
        print("\n" + "\n".join(lines[-25:]))
        log = g.log()
        assert "HWSIM-TEST: PASS" in log, "\n".join(lines[-25:]) or log[-3000:]
        assert 'the Wi-Fi \\"School\\" is in range but did not accept the password' in log or \
            'the Wi-Fi "School" is in range but did not accept the password' in log
        assert "resolve pipacs.local 10.42.0.1" in log and "resolve pacs.lan 10.42.0.1" in log
        assert "c-echo status 0x0000" in log and "http /system PIPACS" in log
        assert re.search(r"dhcp gave 10\.42\.0\.\d+", log)
        # the school's network was there and refused the password (not merely out of range)
        assert re.search(r"wpa_supplicant.*(WRONG_KEY|4-Way Handshake failed|reason=15|pre-shared key may be incorrect)",
                         log), "the client never tried the school's access point"
        # the fallback came within the configured time: first network line to the hotspot line
        times = [(float(m.group(1)), m.group(2)) for m in
                 re.finditer(r"\[\s*([\d.]+)\] pipacs\[\d+\]: pipacs.network: network: (\w+) \(", log)]
        first_wait = next(t for t, mode in times if mode == "client")
        hotspot = next(t for t, mode in times if mode == "hotspot")
        assert hotspot - first_wait <= 20 + 10, times
        assert re.search(r"zeroconf: advertising PIPACS\._dicom\._tcp\.local\..* on 10\.42\.0\.1", log)
    finally:
        g.stop()
    # the status file on the card, as a teacher reads it with the card in a laptop (after a power cut)
    status = subprocess.run(["mtype", "-i", _fat(g.disk), "::/pipacs-status.txt"], capture_output=True, text=True,
                            env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout
    assert 'Join the Wi-Fi "pipacs" with the password hwsim-class-9' in status, status
    assert "http://10.42.0.1:8042/" in status and "AE title PIPACS, port 4242" in status
    # the first boot's section survived the network's rewrites: the card's passphrase kept, a teacher password
    assert status.count(SIGN_IN_HEADING) == 1 and '"pipacs", password hwsim-class-9' in status
    assert re.search(r'user "teacher" with the password [a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}$', status, re.MULTILINE)


def _find_module(img: Path, tmp: Path) -> bool:
    kernels = [x for x in _debugfs(img, tmp, "ls /usr/lib/modules").split() if x[:1].isdigit()]
    for k in kernels:
        path = f"/usr/lib/modules/{k}/kernel/drivers/net/wireless/virtual"
        if "mac80211_hwsim" in _debugfs(img, tmp, f"ls {path}"):
            return True
    return False


def test_build_refuses_a_card_too_small():
    _need("amd64")   # the base root is cached by then: this takes seconds, not minutes
    out = subprocess.run(["bash", str(ROOT / "image" / "build.sh"), "amd64", str(BUILD)], capture_output=True,
                         text=True, env=dict(os.environ, CARD_MB="64", COMPRESS="0"), timeout=900)
    assert out.returncode != 0
    assert re.search(r"the image needs \d+ MB but the card \(CARD_MB\) has 64 MB", out.stderr), out.stderr[-2000:]
    assert _image("amd64") is not None   # the image built before is still there
