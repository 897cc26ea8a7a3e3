"""Classroom network: join the configured Wi-Fi (or Ethernet), else serve a Wi-Fi of our own.

Runs as root in its own unit (pipacs-network.service, `pipacs network`), apart from the
unprivileged appliance service. Hotspot by hostapd + dnsmasq: both are in Debian, small,
work with the Pi's brcmfmac driver in AP mode and with the kernel's simulated radios
(mac80211_hwsim) for tests, and fit beside systemd-networkd, which the image already uses;
NetworkManager's shared mode would bring D-Bus and a second network stack to the card.

What the teacher needs to know (mode, network name, addresses, viewer settings) is written
at every change to /run/pipacs/network.json (for the web page), to the journal, and to
pipacs-status.txt on the card's FAT partition (readable by taking the card out), whose last
section, how to sign in, the first boot wrote (appliance.card) and every rewrite keeps.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .card import read_status_file, with_sign_in, write_status_file
from .config import HOTSPOT_PASSPHRASE_AT_FIRST_BOOT, read_json_file, write_text_atomically
from .netinfo import ipv4_addresses

log = logging.getLogger("pipacs.network")

__all__ = ["NetworkPlan", "plan_network", "hostapd_conf", "dnsmasq_conf", "wpa_supplicant_conf",
           "hotspot_networkd", "decide_mode", "status_text", "wifi_qr_text", "NetworkController",
           "STATUS_JSON"]

# Written by `pipacs network` (root), read by the service for the web page.
STATUS_JSON = Path(os.environ.get("PIPACS_NETWORK_STATUS_FILE", "/run/pipacs/network.json"))


@dataclass
class NetworkPlan:
    mode: str                        # auto | client | hotspot | off
    interface: str
    wifi_ssid: str
    wifi_password: str
    country: str
    client_timeout: int
    hotspot_ssid: str
    hotspot_passphrase: str
    hotspot_address: str             # e.g. 10.42.0.1
    short_name: str                  # e.g. pacs.lan
    hotspot_allowed: bool = True
    problems: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return str(ipaddress.ip_network(f"{self.hotspot_address}/24", strict=False))


def plan_network(net: dict[str, Any], wifi_txt: Path | None = None) -> NetworkPlan:
    """The plan from the ``Network`` configuration (already type-checked), with the reasons
    a part of it cannot be used. A bad hotspot passphrase turns the hotspot off, not the appliance."""
    ssid, password, country = net["WifiSsid"], net["WifiPassword"], net["Country"]
    if not ssid and wifi_txt is not None and wifi_txt.is_file():   # the simple file on the card
        kv = dict(line.split("=", 1) for line in wifi_txt.read_text(errors="replace").splitlines()
                  if "=" in line and not line.lstrip().startswith("#"))
        ssid, password = kv.get("SSID", "").strip(), kv.get("PASSWORD", "").strip()
        country = country or kv.get("COUNTRY", "").strip()
    plan = NetworkPlan(net["Mode"], net["Interface"], ssid, password, country.upper(), net["ClientTimeout"],
                       net["HotspotSsid"], net["HotspotPassphrase"], net["HotspotAddress"], net["ShortName"])
    p = plan.hotspot_passphrase
    if p == HOTSPOT_PASSPHRASE_AT_FIRST_BOOT:
        plan.hotspot_allowed = False
        plan.problems.append("the hotspot passphrase was to be made at the first boot and was not (could the card "
                             "not be written?), so the hotspot stays off (set Network.HotspotPassphrase in "
                             "pipacs.json: 8 to 63 characters)")
    elif p and not 8 <= len(p) <= 63:
        plan.hotspot_allowed = False
        plan.problems.append(f"the hotspot passphrase has {len(p)} characters; WPA2 needs 8 to 63, so the "
                             "hotspot stays off (fix Network.HotspotPassphrase in pipacs.json)")
    if not p:
        plan.problems.append("the hotspot has no passphrase: anyone nearby can join it (set "
                             "Network.HotspotPassphrase for a WPA2 network)")
    if plan.mode == "client" and not plan.wifi_ssid:
        plan.problems.append("Network.Mode is client but no Wi-Fi is configured: only Ethernet can connect")
    return plan


def decide_mode(plan: NetworkPlan, has_wifi: bool, address: str | None, waited: float) -> tuple[str, str]:
    """(what to do now, why): "client" (keep waiting or connected), "hotspot", or "none"."""
    if plan.mode == "off":
        return "none", "network management is off (Network.Mode)"
    if plan.mode == "hotspot":
        if not has_wifi:
            return "none", "hotspot mode asked, but this board has no Wi-Fi hardware"
        if not plan.hotspot_allowed:
            return "none", plan.problems[0]
        return "hotspot", "hotspot mode (Network.Mode)"
    if address:
        return "client", f"connected with address {address}"
    if plan.mode == "client":
        return "client", "waiting for a network (Network.Mode is client: no hotspot)"
    if waited < plan.client_timeout:
        return "client", f"waiting for a network ({int(waited)}/{plan.client_timeout} s)"
    if not has_wifi:
        return "none", "no network address, and no Wi-Fi hardware for a hotspot"
    if not plan.hotspot_allowed:
        return "none", f"no network address after {plan.client_timeout} s; {plan.problems[0]}"
    why = (f"could not join Wi-Fi \"{plan.wifi_ssid}\" within {plan.client_timeout} s (wrong password, or out "
           "of range?)" if plan.wifi_ssid else f"no network address within {plan.client_timeout} s")
    return "hotspot", why + "; serving a Wi-Fi of our own"


# ------------------------------------------------------------------ generated settings

def _conf_value(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise ValueError("a Wi-Fi name or passphrase cannot hold a line break")
    return text


def hostapd_conf(plan: NetworkPlan, channel: int = 6) -> str:
    lines = [
        f"interface={plan.interface}", "driver=nl80211", f"ssid2={plan.hotspot_ssid.encode().hex()}",
        "hw_mode=g", f"channel={channel}", "wmm_enabled=1", "ieee80211n=1", "auth_algs=1",
        "ignore_broadcast_ssid=0", "ctrl_interface=/run/hostapd",
    ]
    if plan.country:
        lines += [f"country_code={plan.country}", "ieee80211d=1"]
    if plan.hotspot_passphrase:
        lines += ["wpa=2", "wpa_key_mgmt=WPA-PSK", "rsn_pairwise=CCMP",
                  f"wpa_passphrase={_conf_value(plan.hotspot_passphrase)}"]
    return "\n".join(lines) + "\n"


def dnsmasq_conf(plan: NetworkPlan) -> str:
    """DHCP and a DNS that answers our names (offline: no upstream)."""
    net = ipaddress.ip_network(plan.prefix)
    hosts = list(net.hosts())
    first, last = hosts[9], hosts[-5]
    ip = plan.hotspot_address
    names = ["pipacs.local", plan.short_name, "pipacs"]
    return "\n".join([
        f"interface={plan.interface}", "bind-interfaces", f"listen-address={ip}", "no-resolv", "no-hosts",
        "domain-needed", "bogus-priv", "log-dhcp",
        f"dhcp-range={first},{last},{net.netmask},12h",
        f"dhcp-option=option:router,{ip}", f"dhcp-option=option:dns-server,{ip}",
        *[f"address=/{n}/{ip}" for n in dict.fromkeys(names) if n],
        "dhcp-authoritative", "",
    ])


def wpa_supplicant_conf(plan: NetworkPlan) -> str:
    lines = ["ctrl_interface=DIR=/run/wpa_supplicant", "update_config=0"]
    if plan.country:
        lines.append(f"country={plan.country}")
    # hex SSID and a derived PSK: any character of a name or password survives, no quoting rules
    lines += ["network={", f"  ssid={plan.wifi_ssid.encode().hex()}"]
    if plan.wifi_password:
        psk = hashlib.pbkdf2_hmac("sha1", plan.wifi_password.encode(), plan.wifi_ssid.encode(), 4096, 32)
        lines.append(f"  psk={psk.hex()}")
    else:
        lines.append("  key_mgmt=NONE")
    lines.append("}")
    return "\n".join(lines) + "\n"


def hotspot_networkd(plan: NetworkPlan) -> str:
    """A static address on the hotspot interface (sorts before the image's DHCP file for wl*)."""
    return (f"[Match]\nName={plan.interface}\n\n[Network]\nAddress={plan.hotspot_address}/24\n"
            "DHCP=no\nLinkLocalAddressing=no\nConfigureWithoutCarrier=yes\n")


def wifi_qr_text(ssid: str, passphrase: str) -> str:
    """The Wi-Fi QR code payload phones understand (WIFI:T:WPA;S:...;P:...;;)."""
    def esc(s: str) -> str:
        return "".join("\\" + c if c in '\\;,:"' else c for c in s)
    kind = "WPA" if passphrase else "nopass"
    return f"WIFI:T:{kind};S:{esc(ssid)};P:{esc(passphrase)};;"


def status_text(status: dict[str, Any], settings_summary: dict[str, Any]) -> str:
    """pipacs-status.txt: what a teacher reads with the card in a laptop."""
    aet, dport, hport = settings_summary["DicomAet"], settings_summary["DicomPort"], settings_summary["HttpPort"]
    addrs = status.get("Addresses") or []
    lines = [f"pipacs status, {status.get('Time', '')}", "",
             f"Network mode: {status.get('Mode', '?')} - {status.get('Reason', '')}"]
    if status.get("Mode") == "hotspot":
        lines.append(f"Join the Wi-Fi \"{status.get('HotspotSsid')}\"" +
                     (f" with the password {status.get('HotspotPassphrase')}" if status.get("HotspotPassphrase")
                      else " (open network)"))
    lines.append("Addresses: " + (", ".join(addrs) if addrs else "none yet"))
    for a in addrs:
        lines.append(f"  Web page:  http://{a}:{hport}/")
    if status.get("ShortName") and status.get("Mode") == "hotspot":
        lines.append(f"  Web page:  http://{status['ShortName']}:{hport}/")
    lines += ["", f"DICOM viewers: AE title {aet}, port {dport}, host " + (addrs[0] if addrs else "pipacs.local"),
              f"WADO: http://{addrs[0] if addrs else 'pipacs.local'}:{hport}/wado",
              *[f"Problem: {p}" for p in status.get("Problems", [])], ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ the controller (root)

class NetworkController:
    """Brings the plan about with wpa_supplicant, hostapd and dnsmasq; reports every change."""

    def __init__(self, plan: NetworkPlan, settings_summary: dict[str, Any], boot_dir: Path = Path("/boot/firmware"),
                 run_dir: Path = Path("/run/pipacs")):
        self.plan = plan
        self.summary = settings_summary
        self.boot_dir = boot_dir
        self.run_dir = run_dir
        self.children: dict[str, subprocess.Popen] = {}
        self.current = ""
        self.reason = ""
        self.stopping = False

    def has_wifi(self) -> bool:
        return Path(f"/sys/class/net/{self.plan.interface}/wireless").exists() or \
            Path(f"/sys/class/net/{self.plan.interface}/phy80211").exists()

    def address(self) -> str | None:
        addrs = [a for i, a in ipv4_addresses() if not a.startswith("127.") and not a.startswith("169.254.")
                 and not (self.current == "hotspot" and i == self.plan.interface)]
        return addrs[0] if addrs else None

    def report(self, mode: str, reason: str) -> None:
        if (mode, reason) == (self.current, self.reason) and not reason.startswith("waiting"):
            return
        changed = mode != self.current or not reason.startswith("waiting") or not self.reason.startswith("waiting")
        self.current, self.reason = mode, reason
        status = {
            "Time": time.strftime("%Y-%m-%d %H:%M:%S"), "Mode": mode, "Reason": reason,
            "Interface": self.plan.interface, "Addresses": [a for _, a in ipv4_addresses() if not a.startswith("127.")],
            "WifiSsid": self.plan.wifi_ssid, "HotspotSsid": self.plan.hotspot_ssid if mode == "hotspot" else "",
            "HotspotPassphrase": self.plan.hotspot_passphrase if mode == "hotspot" else "",
            "ShortName": self.plan.short_name, "Problems": self.plan.problems,
        }
        write_text_atomically(self.run_dir / "network.json", json.dumps(status, indent=1))
        if changed:
            log.info("network: %s (%s); addresses %s", mode, reason, ", ".join(status["Addresses"]) or "none")
            try:   # the first boot's section (how to sign in) stays at the end
                write_status_file(self.boot_dir, with_sign_in(status_text(status, self.summary),
                                                              read_status_file(self.boot_dir)))
            except OSError as e:
                log.warning("cannot write pipacs-status.txt on the card: %s", e)

    def _run(self, *cmd: str) -> bool:
        if not shutil.which(cmd[0]):
            log.warning("network: %s is not installed", cmd[0])
            return False
        r = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if r.returncode != 0:
            log.warning("network: %s failed: %s", " ".join(cmd), (r.stderr or r.stdout).strip()[:300])
        return r.returncode == 0

    def start_client(self) -> None:
        if not self.plan.wifi_ssid or not self.has_wifi():
            return
        conf = Path(f"/etc/wpa_supplicant/wpa_supplicant-{self.plan.interface}.conf")
        write_text_atomically(conf, wpa_supplicant_conf(self.plan))
        os.chmod(conf, 0o600)
        self._run("systemctl", "restart", f"wpa_supplicant@{self.plan.interface}.service")

    def client_failure(self) -> str | None:
        """Why the configured Wi-Fi was not joined, as wpa_supplicant saw it: not in range, or the
        password refused (a teacher fixes the one or the other)."""
        if not shutil.which("wpa_cli"):
            log.info("network: wpa_cli is not installed: cannot tell why the Wi-Fi was not joined")
            return None
        try:
            r = subprocess.run(["wpa_cli", "-i", self.plan.interface, "scan_results"], check=False,
                               capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.info("network: wpa_cli failed: %s", e)
            return None
        if r.returncode != 0:
            log.info("network: wpa_cli failed: %s", (r.stderr or r.stdout).strip()[:200])
            return None
        seen = {line.split("\t")[4] for line in r.stdout.splitlines()[1:] if line.count("\t") >= 4}
        ssid = self.plan.wifi_ssid
        if ssid in seen:
            return f'the Wi-Fi "{ssid}" is in range but did not accept the password (check Network.WifiPassword)'
        return f'the Wi-Fi "{ssid}" was not found (out of range, or another name?)'

    def start_hotspot(self) -> None:
        iface = self.plan.interface
        self._run("systemctl", "stop", f"wpa_supplicant@{iface}.service")
        netd = Path("/run/systemd/network/10-pipacs-hotspot.network")
        write_text_atomically(netd, hotspot_networkd(self.plan))
        # networkd must take the static address file instead of DHCP on wl* (no D-Bus on the card for
        # networkctl; systemctl reaches systemd on its private socket)
        self._run("systemctl", "restart", "systemd-networkd.service")
        self._run("ip", "addr", "replace", f"{self.plan.hotspot_address}/24", "dev", iface)
        self._run("ip", "link", "set", iface, "up")
        (self.run_dir / "hostapd.conf").write_text(hostapd_conf(self.plan))
        (self.run_dir / "dnsmasq.conf").write_text(dnsmasq_conf(self.plan))
        self.children["hostapd"] = subprocess.Popen(["hostapd", str(self.run_dir / "hostapd.conf")])
        time.sleep(1)
        self.children["dnsmasq"] = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--conf-file=" +
                                                     str(self.run_dir / "dnsmasq.conf"),
                                                     "--pid-file=" + str(self.run_dir / "dnsmasq.pid")])

    def stop_children(self) -> None:
        for p in self.children.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.children.clear()

    def run(self) -> None:
        """Until SIGTERM: client first (unless hotspot mode), hotspot after the timeout in auto mode."""
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        for p in self.plan.problems:
            log.warning("network: %s", p)
        has_wifi = self.has_wifi()
        if not has_wifi:
            log.warning("network: no Wi-Fi hardware on %s: hotspot unavailable", self.plan.interface)
        if self.plan.mode in ("auto", "client"):
            self.start_client()
        t0 = time.monotonic()
        while not self.stopping:
            if self.current == "hotspot":
                for name, p in list(self.children.items()):
                    if p.poll() is not None:
                        log.warning("network: %s stopped (exit %s); restarting the hotspot", name, p.returncode)
                        self.stop_children()
                        self.start_hotspot()
                        break
                self.report("hotspot", self.reason)
            else:
                mode, why = decide_mode(self.plan, has_wifi, self.address(), time.monotonic() - t0)
                if mode == "hotspot" and self.plan.wifi_ssid:
                    diagnosis = self.client_failure()
                    if diagnosis:
                        why = f"{diagnosis}; serving a Wi-Fi of our own after {self.plan.client_timeout} s"
                if mode == "hotspot":
                    log.info("network: starting the hotspot: %s", why)
                    self.start_hotspot()
                    self.report("hotspot", why)   # once it serves, with its address
                else:
                    self.report(mode, why)
            time.sleep(2)
        self.stop_children()


def status_json(path: Path | None = None) -> dict[str, Any] | None:
    return read_json_file(path or Path(os.environ.get("PIPACS_NETWORK_STATUS_FILE", str(STATUS_JSON))))


def plan_as_json(plan: NetworkPlan) -> dict[str, Any]:
    d = asdict(plan)
    d.pop("wifi_password", None)
    return d
