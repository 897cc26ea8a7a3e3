"""Who may do what over DICOM: the classroom policy, or Orthanc's rules.

Plain functions over the settings and the known modalities, so tests call them directly.
A teaching appliance's users are students with iPads nobody registered in advance:
``ClassroomMode`` (the default) lets any AE title echo, store, find, get and move, and
sends a C-MOVE to an unknown destination back to the device that asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SERVICES = ("Echo", "Store", "Find", "Get", "Move")


@dataclass
class Decision:
    allowed: bool
    reason: str = ""


@dataclass
class Destination:
    host: str
    port: int
    aet: str
    name: str                 # modality name
    remembered: dict | None   # a new modality to remember (classroom), else None


def known_modality(modalities: dict[str, dict], aet: str, address: str | None = None,
                   check_host: bool = False) -> tuple[str, dict] | None:
    """The modality with this AE title (and host, when checked)."""
    for name, m in modalities.items():
        if m.get("AET") == aet and (not check_host or address is None or m.get("Host") == address):
            return name, m
    return None


def decide(settings: Any, modalities: dict[str, dict], service: str, calling_aet: str, address: str) -> Decision:
    """May ``calling_aet`` at ``address`` use ``service`` (one of SERVICES)?"""
    if settings["ClassroomMode"]:
        return Decision(True)
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


def move_destination(settings: Any, modalities: dict[str, dict], dest_aet: str,
                     requestor_address: str) -> Destination | None:
    """Where a C-MOVE to ``dest_aet`` goes; None if nowhere (answered 'move destination unknown')."""
    found = known_modality(modalities, dest_aet)
    if found is not None:
        name, m = found
        return Destination(m["Host"], int(m["Port"]), dest_aet, name, None)
    if not settings["ClassroomMode"]:
        return None
    name = dest_aet if dest_aet not in modalities else f"{dest_aet}-{requestor_address}"
    config = {"AET": dest_aet, "Host": requestor_address, "Port": settings["ClassroomMovePort"],
              "AllowEcho": True, "AllowFind": True, "AllowGet": True, "AllowMove": True, "AllowStore": True,
              "Origin": "ClassroomMode"}
    return Destination(requestor_address, settings["ClassroomMovePort"], dest_aet, name, config)
