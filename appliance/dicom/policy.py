"""Who may do what over DICOM: the classroom policy, or Orthanc's rules.

Plain functions over the settings and the known modalities, so tests call them directly.
A teaching appliance's users are students with iPads nobody registered in advance:
``ClassroomMode`` (the default) lets any AE title echo, find and get; stores come from the
teacher's registered modalities, from anyone while the teacher's upload window is open, or
from anyone at all when ``DicomAlwaysAllowStore`` is true (Orthanc's default; the card turns
it off). A C-MOVE goes to a registered modality, or back to the device that asked, on
``ClassroomMovePort``: nothing a request names can make the board send anywhere else, and
nothing about a student's destination is kept (so no device can claim an AE title for good).

With ``AuthenticationEnabled``, a device that is not a registered modality is a student:
its queries and retrievals see only what the teacher published.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from typing import Any

SERVICES = ("Echo", "Store", "Find", "Get", "Move")
UPLOAD_WINDOW_MAX_MINUTES = 240


@dataclass
class Decision:
    allowed: bool
    reason: str = ""


@dataclass
class Destination:
    host: str
    port: int
    aet: str
    name: str                 # the registered modality, or "" for the requesting device itself


class UploadWindow:
    """The teacher's *accept DICOM uploads for N minutes*; asked from association threads."""

    def __init__(self) -> None:
        self._until = 0.0
        self._lock = threading.Lock()

    def open(self, minutes: float, now: float | None = None) -> float:
        """Open for ``minutes`` (1 to UPLOAD_WINDOW_MAX_MINUTES) from now; returns the seconds left."""
        if not 0 < minutes <= UPLOAD_WINDOW_MAX_MINUTES:
            raise ValueError(f"an upload window lasts 1 to {UPLOAD_WINDOW_MAX_MINUTES} minutes")
        now = time.monotonic() if now is None else now
        with self._lock:
            self._until = now + minutes * 60
        return minutes * 60

    def close(self) -> None:
        with self._lock:
            self._until = 0.0

    def remaining(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            return max(0.0, self._until - now)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def known_modality(modalities: dict[str, dict], aet: str, address: str | None = None,
                   check_host: bool = False) -> tuple[str, dict] | None:
    """The modality with this AE title (and host, when checked)."""
    for name, m in modalities.items():
        if m.get("AET") == aet and (not check_host or address is None or m.get("Host") == address):
            return name, m
    return None


def registered_device(modalities: dict[str, dict], aet: str, address: str) -> str | None:
    """The name of the registered modality this caller is: its AE title, and its address when the
    modality's host is an IP address (a host name is not resolved in an association's thread)."""
    for name, m in modalities.items():
        host = str(m.get("Host", ""))
        if m.get("AET") == aet and (not _is_ip(host) or host == address):
            return name
    return None


def student_view(settings: Any, modalities: dict[str, dict], aet: str, address: str) -> bool:
    """True when this caller sees only what the teacher published."""
    return bool(settings["AuthenticationEnabled"]) and registered_device(modalities, aet, address) is None


def decide(settings: Any, modalities: dict[str, dict], service: str, calling_aet: str, address: str,
           window: UploadWindow | None = None) -> Decision:
    """May ``calling_aet`` at ``address`` use ``service`` (one of SERVICES)?"""
    if settings["ClassroomMode"]:
        if service != "Store" or settings["DicomAlwaysAllowStore"]:
            return Decision(True)
        if registered_device(modalities, calling_aet, address) is not None:
            return Decision(True)
        if window is not None and window.remaining() > 0:
            return Decision(True)
        return Decision(False, f"uploads from {calling_aet} ({address}) are closed: the teacher opens them for a "
                               f"while on the appliance's page, or registers this device as a modality")
    found = known_modality(modalities, calling_aet, address, settings["DicomCheckModalityHost"])
    if found is not None:
        name, m = found
        if m.get(f"Allow{service}", True):
            return Decision(True)
        return Decision(False, f"modality {name!r} is not allowed to {service.lower()} (Allow{service} is false)")
    if settings[f"DicomAlwaysAllow{service}"]:
        return Decision(True)
    return Decision(False, f"DicomAlwaysAllow{service} is false and {calling_aet!r} is not a known modality "
                           f"(ClassroomMode is off)")


def move_destination(settings: Any, modalities: dict[str, dict], dest_aet: str, requestor_aet: str,
                     requestor_address: str) -> Destination | None:
    """Where a C-MOVE to ``dest_aet`` goes; None if nowhere (answered 'move destination unknown').

    A registered modality, unless a student device asks for it (with AuthenticationEnabled, the
    teacher's modalities are the teacher's); otherwise, in ClassroomMode, the requesting device's
    own address on ClassroomMovePort.
    """
    found = known_modality(modalities, dest_aet)
    classroom = settings["ClassroomMode"]
    if found is not None and not (classroom and student_view(settings, modalities, requestor_aet,
                                                                 requestor_address)):
        name, m = found
        return Destination(m["Host"], int(m["Port"]), dest_aet, name)
    if not classroom:
        return None
    return Destination(requestor_address, settings["ClassroomMovePort"], dest_aet, "")
