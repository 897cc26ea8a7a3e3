"""Bonjour / Zeroconf advertisement, so iPads and Macs find the appliance by itself.

Three services, and the host name:
  * ``_dicom._tcp``: named by the AE title, with the TXT keys DICOM nodes publish and read
    (``AET`` of PS3.15 Annex H, and those of OsiriX/Horos: ``AETitle``, ``serverDescription``,
    ``UID``, ``CGET``, ``WADO``, ``WADOPort``, ``WADOURL``, ``WADOProtocol``, ``preferredSyntax``);
  * ``_dicomweb._tcp`` with the DICOMweb root (``path``, ``DICOMWebPath``);
  * ``_http._tcp`` for the web pages (``path=/``);
  * ``<HostName>.local``: python-zeroconf renames clashing service names, but never checks
    host names, so the name is probed first; when another box answers for it, the
    appliance takes ``<HostName>-<last 4 of the board serial or MAC>`` instead.

Addresses are watched: a board that boots before its Wi-Fi has an address starts
advertising once one appears, and re-announces when they change.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from zeroconf import AddressResolverIPv4, IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from .netinfo import ipv4_addresses

log = logging.getLogger("pipacs.zeroconf")

__all__ = ["Advertiser", "AdvertisedNames", "board_suffix", "dicom_txt"]

PROBE_MS = 1500
WATCH_SECONDS = 10.0


def board_suffix() -> str:
    """Last 4 hex digits of the Raspberry Pi serial number, else of the first network card's MAC."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("serial"):
                serial = line.split(":")[-1].strip()
                if serial.strip("0"):
                    return serial[-4:].lower()
    except OSError:
        pass
    for dev in sorted(Path("/sys/class/net").glob("*")):
        if dev.name == "lo":
            continue
        try:
            mac = (dev / "address").read_text().strip().replace(":", "")
        except OSError:
            continue
        if mac.strip("0"):
            return mac[-4:].lower()
    return "0000"


def dicom_txt(aet: str, description: str, uid: str, http_port: int) -> dict[str, str]:
    return {
        "txtvers": "1", "AET": aet, "AETitle": aet, "serverDescription": description, "UID": uid,
        "CGET": "YES", "WADO": "YES", "WADOPort": str(http_port), "WADOURL": "/wado", "WADOProtocol": "http",
        "preferredSyntax": str(ExplicitVRLittleEndian),
    }


@dataclass
class AdvertisedNames:
    host: str = ""
    services: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"HostName": self.host, "Services": self.services, "Addresses": self.addresses}


class Advertiser:
    """Publishes the appliance on the interfaces chosen by ``Zeroconf.Interfaces`` (all when empty)."""

    def __init__(self, instance_name: str, host_name: str, aet: str, dicom_port: int, http_port: int,
                 appliance_uid: str, interfaces: list[str]):
        self.instance_name = instance_name
        self.host_name = host_name
        self.aet = aet
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.uid = appliance_uid
        self.interfaces = interfaces
        self.names = AdvertisedNames()
        self._zc: AsyncZeroconf | None = None
        self._infos: list[ServiceInfo] = []
        self._watch: asyncio.Task | None = None
        self._addresses: list[str] = []

    # ---------------------------------------------------------------- addresses

    def current_addresses(self) -> list[str]:
        """The IPv4 addresses to publish: those of the chosen interfaces (names or addresses)."""
        found = ipv4_addresses()
        if not self.interfaces:
            return [a for _, a in found if not a.startswith("127.")]
        wanted = set(self.interfaces)
        out = [a for name, a in found if name in wanted or a in wanted]
        for w in self.interfaces:   # an address given directly (127.0.0.1 in tests) counts even if unlisted
            if _is_ipv4(w) and w not in out and any(a == w for _, a in found):
                out.append(w)
        return out

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        self._watch = asyncio.create_task(self._watch_addresses(), name="zeroconf-watch")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except asyncio.CancelledError:
                pass
        await self._withdraw()

    async def _withdraw(self) -> None:
        if self._zc is not None:
            try:
                await self._zc.async_unregister_all_services()
            finally:
                await self._zc.async_close()
            log.info("zeroconf: withdrew %s", ", ".join(self.names.services))
            self._zc = None
            self._infos = []

    async def _watch_addresses(self) -> None:
        announced_none = False
        while True:
            try:
                addrs = await asyncio.to_thread(self.current_addresses)
                if addrs != self._addresses:
                    if not addrs:
                        if not announced_none:
                            log.warning("zeroconf: no network address yet; advertising starts when one appears")
                            announced_none = True
                        await self._withdraw()
                    elif self._zc is None:
                        await self._publish(addrs)
                    else:
                        await self._readdress(addrs)
                    self._addresses = addrs
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("zeroconf: advertising failed; retrying")
                await self._withdraw()
                self._addresses = []
            await asyncio.sleep(WATCH_SECONDS)

    async def _publish(self, addrs: list[str]) -> None:
        interfaces: Any = addrs if self.interfaces else None
        zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only) if interfaces else \
            AsyncZeroconf(ip_version=IPVersion.V4Only)
        self._zc = zc
        host = await self._claim_host_name(zc)
        server = f"{host}.local."
        packed = [socket.inet_aton(a) for a in addrs]
        infos = [
            ServiceInfo("_dicom._tcp.local.", f"{_label(self.aet)}._dicom._tcp.local.", port=self.dicom_port,
                        properties=dicom_txt(self.aet, self.instance_name, self.uid, self.http_port),
                        server=server, addresses=packed),
            ServiceInfo("_dicomweb._tcp.local.", f"{_label(self.instance_name)}._dicomweb._tcp.local.",
                        port=self.http_port, properties={"path": "/dicom-web", "DICOMWebPath": "/dicom-web"},
                        server=server, addresses=packed),
            ServiceInfo("_http._tcp.local.", f"{_label(self.instance_name)}._http._tcp.local.",
                        port=self.http_port, properties={"path": "/"}, server=server, addresses=packed),
        ]
        names = []
        for info in infos:
            wanted = info.name
            await zc.async_register_service(info, allow_name_change=True)
            if info.name != wanted:
                log.warning("zeroconf: %s is taken on this network; advertising as %s", wanted, info.name)
            names.append(info.name)
        self._infos = infos
        self.names = AdvertisedNames(f"{host}.local", names, addrs)
        log.info("zeroconf: advertising %s on %s as %s.local", ", ".join(names), ", ".join(addrs), host)

    async def _readdress(self, addrs: list[str]) -> None:
        assert self._zc is not None
        if not self.interfaces:
            await self._zc.async_update_interfaces()
        packed = [socket.inet_aton(a) for a in addrs]
        for info in self._infos:
            info.addresses = packed
            await self._zc.async_update_service(info)
        self.names.addresses = addrs
        log.info("zeroconf: addresses changed; now advertising on %s", ", ".join(addrs))

    async def _claim_host_name(self, zc: AsyncZeroconf) -> str:
        """The configured host name unless another box answers for it; then a board-specific one."""
        candidates = [self.host_name, f"{self.host_name}-{board_suffix()}"]
        candidates += [f"{candidates[1]}-{n}" for n in range(2, 10)]
        for name in candidates:
            resolver = AddressResolverIPv4(f"{name}.local.")
            if not await resolver.async_request(zc.zeroconf, PROBE_MS):
                if name != self.host_name:
                    log.warning("zeroconf: %s.local is already used by another device on this network; "
                                "this appliance is %s.local", self.host_name, name)
                return name
        return candidates[-1]


def _label(name: str) -> str:
    """A DNS-SD instance label: at most 63 bytes, no dots."""
    return name.replace(".", " ").encode()[:63].decode(errors="ignore") or "pipacs"


def _is_ipv4(text: str) -> bool:
    try:
        socket.inet_aton(text)
        return text.count(".") == 3
    except OSError:
        return False


def appliance_uid(secret: bytes) -> str:
    """A UID for this appliance, stable across restarts (the OsiriX ``UID`` TXT key)."""
    return "2.25." + str(int.from_bytes(hashlib.sha256(b"appliance-uid:" + secret).digest()[:16], "big"))
