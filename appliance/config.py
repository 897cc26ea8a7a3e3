"""Configuration: one JSON file, keys spelled as in Orthanc where Orthanc has the option.

Every key has a default; a file overrides defaults; environment variables
(``PIPACS_`` + the key in UPPER_SNAKE case, e.g. ``PIPACS_HTTP_PORT=8043``) override the
file. Anything unknown or malformed is refused at start with the key and the reason,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import charsets

__all__ = ["ConfigError", "Settings", "load_settings", "defaults_document", "OPTIONS", "adopt", "write_text_atomically",
           "parse_modalities"]

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value that cannot be used; names the key and the reason."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"configuration key {key!r}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    doc: str
    check: Callable[[str, Any], Any]


def _bool(key: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise ConfigError(key, f"expected true or false, got {json.dumps(v)}")


def _int_range(lo: int, hi: int) -> Callable[[str, Any], int]:
    def check(key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(key, f"expected a whole number, got {json.dumps(v)}")
        if not lo <= v <= hi:
            raise ConfigError(key, f"must be between {lo} and {hi}, got {v}")
        return v
    return check


def _megabytes_or_auto(hi: int) -> Callable[[str, Any], int | str]:
    """A size in MB (a whole number, 0 to ``hi``, also as a string from the environment) or "auto"."""
    def check(key: str, v: Any) -> int | str:
        if isinstance(v, str):
            text = v.strip()
            if text.lower() == "auto":
                return "auto"
            if not (text.isascii() and text.isdigit()):
                raise ConfigError(key, f'expected "auto" or a whole number of MB, got {json.dumps(v)}')
            v = int(text)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(key, f'expected "auto" or a whole number of MB, got {json.dumps(v)}')
        if not 0 <= v <= hi:
            raise ConfigError(key, f"must be between 0 and {hi} MB (or \"auto\"), got {v}")
        return v
    return check


def _str(key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ConfigError(key, f"expected a string, got {json.dumps(v)}")
    return v


def _nonempty_str(key: str, v: Any) -> str:
    v = _str(key, v)
    if not v.strip():
        raise ConfigError(key, "must not be empty")
    return v


def check_ae_title(key: str, v: Any) -> str:
    """AE titles: 1-16 characters of the default repertoire, no backslash (PS3.5 AE VR)."""
    v = _str(key, v)
    if not v.strip():
        raise ConfigError(key, "an AE title must not be empty")
    if len(v) > 16:
        raise ConfigError(key, f"an AE title has at most 16 characters, {v!r} has {len(v)}")
    if "\\" in v or any(ord(c) < 0x20 or ord(c) > 0x7E for c in v):
        raise ConfigError(key, f"{v!r} has a character not allowed in an AE title")
    return v


def _host(key: str, v: Any) -> str:
    v = _nonempty_str(key, v)
    if any(c.isspace() for c in v):
        raise ConfigError(key, f"{v!r} is not a host name or address")
    return v


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(key: str, v: Any) -> str:
        v = _str(key, v)
        for c in choices:
            if v.lower() == c.lower():
                return c
        raise ConfigError(key, f"must be one of {', '.join(choices)}, got {v!r}")
    return check


def _encoding(key: str, v: Any) -> str:
    """Orthanc's DefaultEncoding names, in any case (Orthanc accepts ``utf8`` for ``Utf8``)."""
    known = charsets.canonical(_str(key, v))
    if known is None:
        raise ConfigError(key, f"must be one of {', '.join(charsets.ENCODINGS)}, got {v!r}")
    return known


def parse_modalities(key: str, v: Any) -> dict[str, dict[str, Any]]:
    """Orthanc accepts ``[AET, host, port]`` or an object; normalise to the object form.

    Public: a modality PUT over REST (``web.modalities``) is checked by the same rules as the file."""
    if not isinstance(v, dict):
        raise ConfigError(key, "expected an object mapping names to modalities")
    out: dict[str, dict[str, Any]] = {}
    for name, m in v.items():
        sub = f"{key}.{name}"
        if isinstance(m, list):
            if len(m) not in (3, 4):
                raise ConfigError(sub, "expected [AET, host, port] or [AET, host, port, manufacturer]")
            m = {"AET": m[0], "Host": m[1], "Port": m[2]} | ({"Manufacturer": m[3]} if len(m) == 4 else {})
        if not isinstance(m, dict):
            raise ConfigError(sub, "expected [AET, host, port] or an object with AET, Host, Port")
        missing = [k for k in ("AET", "Host", "Port") if k not in m]
        if missing:
            raise ConfigError(sub, f"missing {', '.join(missing)}")
        norm = dict(m)
        norm["AET"] = check_ae_title(f"{sub}.AET", m["AET"])
        norm["Host"] = _host(f"{sub}.Host", m["Host"])
        port = m["Port"]
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        norm["Port"] = _int_range(1, 65535)(f"{sub}.Port", port)
        for flag in MODALITY_PERMISSIONS:
            norm[flag] = _bool(f"{sub}.{flag}", m.get(flag, True))
        for flag in MODALITY_FLAGS:
            if flag in m:
                norm[flag] = _bool(f"{sub}.{flag}", m[flag])
        norm["Manufacturer"] = modality_manufacturer(f"{sub}.Manufacturer", m.get("Manufacturer", "Generic"))
        if "Timeout" in m:
            norm["Timeout"] = _int_range(0, 86400)(f"{sub}.Timeout", m["Timeout"])
        if "LocalAet" in m:
            local = _str(f"{sub}.LocalAet", m["LocalAet"])
            norm["LocalAet"] = check_ae_title(f"{sub}.LocalAet", local) if local else ""
        out[name] = norm
    return out


MODALITY_PERMISSIONS = ("AllowEcho", "AllowFind", "AllowGet", "AllowMove", "AllowStore")
# Orthanc's other yes/no keys of a modality: kept (and answered back) when given, checked as booleans
MODALITY_FLAGS = ("AllowEventReport", "AllowFindWorklist", "AllowNAction", "AllowTranscoding", "UseDicomTls")
# the Manufacturer values Orthanc 1.10 accepts; the obsolete ones it still reads become the one it names
MODALITY_MANUFACTURERS = ("Generic", "GenericNoWildcardInDates", "GenericNoUniversalWildcard", "Vitrea", "GE")
OBSOLETE_MANUFACTURERS = {"AgfaImpax": "GenericNoWildcardInDates", "SyngoVia": "GenericNoWildcardInDates",
                          "EFilm2": "Generic", "MedInria": "Generic", "ClearCanvas": "Generic", "Dcm4Chee": "Generic"}


def modality_manufacturer(key: str, v: Any) -> str:
    """A modality's Manufacturer as Orthanc 1.10 reads it: one of its names (spelled exactly), an
    obsolete one standing for the name Orthanc puts instead (said in the log); anything else refused."""
    if not isinstance(v, str):
        raise ConfigError(key, f"expected a string, one of {', '.join(MODALITY_MANUFACTURERS)}")
    if v in OBSOLETE_MANUFACTURERS:
        log.warning("%s: the manufacturer %r is obsolete; it is read as %r, as Orthanc does", key, v,
                    OBSOLETE_MANUFACTURERS[v])
        return OBSOLETE_MANUFACTURERS[v]
    if v not in MODALITY_MANUFACTURERS:
        raise ConfigError(key, f"unknown manufacturer {v!r}; known: {', '.join(MODALITY_MANUFACTURERS)}")
    return v


def _users(key: str, v: Any) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(p, str) for k, p in v.items()):
        raise ConfigError(key, 'expected an object {"user": "password", ...}')
    if any(":" in k for k in v):
        raise ConfigError(key, "a user name must not contain ':'")
    return dict(v)


_DICTIONARY_TAG = re.compile(r"^([0-9a-fA-F]{4}),([0-9a-fA-F]{4})$")
_KEYWORD = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")


def parse_dictionary(key: str, v: Any) -> dict[str, list[Any]]:
    """Orthanc's ``Dictionary``: {"gggg,eeee": [VR, Name, MinMultiplicity, MaxMultiplicity (0: any),
    PrivateCreator]}, the last three optional. A tag of the standard dictionary, or a Name that
    already names another tag, is refused: it would change how every stored file reads."""
    from pydicom.datadict import dictionary_has_tag, keyword_dict
    from pydicom.valuerep import VR

    if not isinstance(v, dict):
        raise ConfigError(key, 'must be an object {"gggg,eeee": ["VR", "Name", min, max, "PrivateCreator"]}')
    out: dict[str, list[Any]] = {}
    names: dict[str, str] = {}
    for tag_text, entry in v.items():
        where = f"{key}.{tag_text}"
        m = _DICTIONARY_TAG.match(str(tag_text))
        if not m:
            raise ConfigError(where, "a tag is written gggg,eeee in hexadecimal, e.g. 0009,1001")
        group, element = int(m.group(1), 16), int(m.group(2), 16)
        if not isinstance(entry, list) or not 2 <= len(entry) <= 5:
            raise ConfigError(where, 'must be ["VR", "Name"] with, optionally, min, max and "PrivateCreator"')
        vr, name = entry[0], entry[1]
        lo = entry[2] if len(entry) > 2 else 1
        hi = entry[3] if len(entry) > 3 else 1
        creator = entry[4] if len(entry) > 4 else ""
        if not isinstance(vr, str) or vr.upper() not in VR.__members__ or vr.upper() in ("SQ",):
            raise ConfigError(where, f"VR {vr!r} is not a DICOM value representation (SQ cannot be added)")
        if not isinstance(name, str) or not _KEYWORD.match(name):
            raise ConfigError(where, f"Name {name!r} must be a keyword: a letter, then letters and digits")
        if not (isinstance(lo, int) and isinstance(hi, int)) or isinstance(lo, bool) or isinstance(hi, bool) \
                or lo < 1 or hi < 0 or (hi and hi < lo):
            raise ConfigError(where, "MinMultiplicity must be 1 or more and MaxMultiplicity 0 (any) or at least it")
        if not isinstance(creator, str):
            raise ConfigError(where, "PrivateCreator must be a string")
        if group % 2 == 1:
            if group < 0x0009 or not 0x1000 <= element <= 0xFFFF:
                raise ConfigError(where, "a private tag is gggg,xxee with an odd group from 0009 and xx from 10")
            if not creator:
                raise ConfigError(where, "a private tag needs its PrivateCreator (the fifth item)")
        else:
            if creator:
                raise ConfigError(where, "only a private tag (odd group) has a PrivateCreator")
            if group in (0x0000, 0x0002) or dictionary_has_tag((group << 16) | element):
                raise ConfigError(where, "is a tag of the DICOM standard's dictionary; it cannot be redefined")
            if name in keyword_dict:
                raise ConfigError(where, f"Name {name!r} is already the keyword of tag {keyword_dict[name]:08X}")
        if name in names and group % 2 == 0:
            raise ConfigError(where, f"Name {name!r} is also given to {names[name]}")
        names[name] = str(tag_text)
        out[f"{group:04x},{element:04x}"] = [vr.upper(), name, lo, hi, creator]
    return out


def _with_defaults(key: str, v: Any, defaults: dict[str, Any], example: str) -> dict[str, Any]:
    """An option that is an object of sub-options: unknown ones refused, missing ones defaulted."""
    if not isinstance(v, dict):
        raise ConfigError(key, f"expected an object like {example}")
    unknown = sorted(set(v) - set(defaults))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown option; known: {', '.join(defaults)}")
    return dict(defaults) | v


ZEROCONF_DEFAULT = {"Enabled": False, "InstanceName": "", "HostName": "pipacs", "Interfaces": []}


def _zeroconf(key: str, v: Any) -> dict[str, Any]:
    out = _with_defaults(key, v, ZEROCONF_DEFAULT, '{"Enabled": true, "InstanceName": "", "Interfaces": []}')
    out["Enabled"] = _bool(f"{key}.Enabled", out["Enabled"])
    out["InstanceName"] = _str(f"{key}.InstanceName", out["InstanceName"])
    host = _nonempty_str(f"{key}.HostName", out["HostName"])
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,50}[A-Za-z0-9])?", host):
        raise ConfigError(f"{key}.HostName", "use letters, digits and '-' (no dots, no '.local'), e.g. pipacs")
    out["HostName"] = host
    ifaces = out["Interfaces"]
    if not isinstance(ifaces, list) or not all(isinstance(i, str) and i for i in ifaces):
        raise ConfigError(f"{key}.Interfaces", 'expected a list of interface names or addresses, e.g. ["wlan0"] '
                                               "([] for all)")
    return out


# The card's pipacs.json ships this instead of a hotspot passphrase: the first boot puts one of the
# board's own there (appliance.card), so no two boards share one. Left in place, the hotspot stays off.
HOTSPOT_PASSPHRASE_AT_FIRST_BOOT = "(made at first boot)"

NETWORK_DEFAULT = {"Mode": "auto", "Interface": "wlan0", "WifiSsid": "", "WifiPassword": "", "Country": "",
                   "ClientTimeout": 60, "HotspotSsid": "pipacs", "HotspotPassphrase": "",
                   "HotspotAddress": "10.42.0.1", "ShortName": "pacs.lan"}


def _network(key: str, v: Any) -> dict[str, Any]:
    """Type checks only: a hotspot passphrase of the wrong length turns the hotspot off with the
    reason (appliance.network), it does not stop the appliance."""
    out = _with_defaults(key, v, NETWORK_DEFAULT, '{"Mode": "auto", "WifiSsid": "...", ...}')
    out["Mode"] = _choice("auto", "client", "hotspot", "off")(f"{key}.Mode", out["Mode"])
    for k in ("Interface", "HotspotSsid", "ShortName"):
        out[k] = _nonempty_str(f"{key}.{k}", out[k])
    for k in ("WifiSsid", "WifiPassword", "HotspotPassphrase", "Country"):
        out[k] = _str(f"{key}.{k}", out[k])
    if out["Country"] and not re.fullmatch(r"[A-Za-z]{2}", out["Country"]):
        raise ConfigError(f"{key}.Country", "a two-letter country code, e.g. FR, DE, US")
    if len(out["HotspotSsid"].encode()) > 32 or len(out["WifiSsid"].encode()) > 32:
        raise ConfigError(key, "a Wi-Fi name (SSID) has at most 32 bytes")
    out["ClientTimeout"] = _int_range(5, 3600)(f"{key}.ClientTimeout", out["ClientTimeout"])
    try:
        import ipaddress
        addr = ipaddress.IPv4Address(out["HotspotAddress"])
    except (ValueError, TypeError):
        raise ConfigError(f"{key}.HotspotAddress", f"{out['HotspotAddress']!r} is not an IPv4 address") from None
    if not addr.is_private:
        raise ConfigError(f"{key}.HotspotAddress", "use a private address, e.g. 10.42.0.1 or 192.168.4.1")
    return out


OPTIONS: list[Option] = [
    Option("Name", "pipacs", "Name of this appliance, shown in /system and the web pages.", _nonempty_str),
    Option("DicomAet", "PIPACS", "Our DICOM Application Entity title (1-16 characters).", check_ae_title),
    Option("DicomPort", 4242, "TCP port of the DICOM listener (0: any free port).", _int_range(0, 65535)),
    Option("HttpPort", 8042, "TCP port of the web server: REST API, DICOMweb, pages (0: any free port).",
           _int_range(0, 65535)),
    Option("BindAddress", "0.0.0.0",
           "Address the DICOM and HTTP listeners bind to (pipacs option; 127.0.0.1 keeps them on this machine).",
           _host),
    Option("StorageDirectory", "./data", "Folder of the stored DICOM files.", _nonempty_str),
    Option("IndexDirectory", "", "Folder of the SQLite index (empty: the StorageDirectory).", _str),
    Option("DicomModalities", {}, 'Known DICOM nodes: {"name": ["AET", "host", port]} or {"name": {"AET":…, '
           '"Host":…, "Port":…}}.', parse_modalities),
    Option("RemoteAccessAllowed", False,
           "Serve HTTP to other machines; when false only this machine (loopback) is answered.", _bool),
    Option("AuthenticationEnabled", False,
           "Changes need a teacher: signed in on the web page, or HTTP Basic for scripts, as one of RegisteredUsers "
           "or as 'teacher' with the password pipacs keeps (`pipacs teacher-password`). False: every client "
           "is the teacher (keep RemoteAccessAllowed false then).", _bool),
    Option("RegisteredUsers", {}, 'Teachers, for HTTP Basic and the sign-in page: {"user": "password"}.', _users),
    Option("StudentAccess", "off",
           "With AuthenticationEnabled, what students need to browse, view and retrieve what the teacher "
           "published (pipacs option): open (nothing: iPad DICOM apps cannot sign in; the card's setting), code "
           "(the room code the teacher's page shows), off (only teachers, as in Orthanc).",
           _choice("open", "code", "off")),
    Option("StudentDownloads", True,
           "Students may download published studies as ZIP or DICOMDIR media (pipacs option).", _bool),
    Option("DicomCheckCalledAet", False, "Refuse associations whose called AE title is not DicomAet.", _bool),
    Option("OverwriteInstances", False,
           "A SOP Instance UID received again replaces the stored one (false: kept, reported AlreadyStored).",
           _bool),
    Option("MaximumStorageSize", 0, "Largest total size of stored files in MB (0: no limit).",
           _int_range(0, 2**40)),
    Option("MaximumPatientCount", 0, "Largest number of patients stored (0: no limit).", _int_range(0, 2**40)),
    Option("MaximumStorageMode", "Recycle",
           "When a limit is reached: Recycle (delete oldest unprotected patients) or Reject (refuse the store).",
           _choice("Recycle", "Reject")),
    Option("MinimumFreeDiskSpace", 64,
           "Stores are refused while the disk holding the storage has less free space than this, in MB, "
           "so the index can still be written (pipacs option).", _int_range(0, 2**40)),
    Option("StableAge", 60, "Seconds without a new instance before a patient, study or series is stable.",
           _int_range(1, 86400)),
    Option("DicomScpTimeout", 30, "Seconds an idle DICOM association is kept open.", _int_range(1, 3600)),
    Option("CaseSensitivePN", False, "Match person names case-sensitively in queries.", _bool),
    Option("DefaultEncoding", charsets.DEFAULT,
           "Character set of stored files without Specific Character Set (0008,0005), as Orthanc names it "
           f"({', '.join(charsets.ENCODINGS)}): their text is read with it when indexed and shown. "
           "PUT /tools/default-encoding changes it until the next start.", _encoding),
    Option("LimitFindResults", 0, "Most answers to a find at patient, study or series level (0: no limit).",
           _int_range(0, 2**31)),
    Option("LimitFindInstances", 0, "Most answers to a find at instance level (0: no limit).",
           _int_range(0, 2**31)),
    Option("ClassroomMode", True,
           "Teaching mode (pipacs option): any calling AE title may echo, store, find and get, and a C-MOVE to an "
           "unknown AE title goes back to the requesting device's address on ClassroomMovePort (and is "
           "remembered as a modality). False: Orthanc's rules (DicomAlwaysAllow*, DicomModalities).", _bool),
    Option("ClassroomMovePort", 104, "Port of a C-MOVE destination found by ClassroomMode (pipacs option).",
           _int_range(1, 65535)),
    Option("DicomAlwaysAllowEcho", True, "Without ClassroomMode: accept C-ECHO from unknown AE titles.", _bool),
    Option("DicomAlwaysAllowStore", True, "Without ClassroomMode: accept C-STORE from unknown AE titles.", _bool),
    Option("DicomAlwaysAllowFind", False, "Without ClassroomMode: accept C-FIND from unknown AE titles.", _bool),
    Option("DicomAlwaysAllowGet", False, "Without ClassroomMode: accept C-GET from unknown AE titles.", _bool),
    Option("DicomAlwaysAllowMove", False, "Without ClassroomMode: accept C-MOVE from unknown AE titles.", _bool),
    Option("DicomCheckModalityHost", False,
           "Without ClassroomMode: a known AE title counts only when it calls from its configured Host.", _bool),
    Option("DicomScuTimeout", 10, "Seconds to wait for a remote DICOM node (connect, answers) as a client.",
           _int_range(1, 3600)),
    Option("RenderCacheSize", "auto",
           "MB of rendered images (previews, frames) kept in memory so a slide shown twice is instant: the "
           "class cache's render pool, memory only, coalesced (pipacs option; 0 turns the keeping off; \"auto\": a 32nd of the board's memory, at least 32).",
           _megabytes_or_auto(4096)),
    Option("ClassCacheMemory", "auto",
           "MB of memory for the class cache: stack documents, encoded frames and WADO-RS metadata made once "
           "and served to a whole class (pipacs option; 0 keeps nothing in memory; \"auto\": an eighth of the "
           "board's memory, at least 64).", _megabytes_or_auto(65536)),
    Option("ClassCacheDisk", "auto",
           "MB of disk for the class cache, in the cache folder of StorageDirectory, kept across restarts so a "
           "class prepared the evening before is ready (pipacs option; 0 keeps nothing on disk; \"auto\": a "
           "tenth of the free space, at most 16 GiB). Never counted in the archive's size.",
           _megabytes_or_auto(2**24)),
    Option("AnonymizeOnIngest", False,
           "De-identify every instance as it arrives (PS3.15 Basic Profile, same anonymized patient and UIDs "
           "for the same source every time), for an appliance that must never hold identities (pipacs option). "
           "Images marked BurnedInAnnotation=YES are then refused.", _bool),
    Option("Zeroconf", ZEROCONF_DEFAULT,
           "Bonjour/Zeroconf advertisement (pipacs option): _dicom._tcp (named by DicomAet, with the TXT keys "
           "OsiriX and Horos read), _dicomweb._tcp, _http._tcp, and the host name HostName.local. InstanceName "
           "defaults to Name; Interfaces [] means all. Off by default so that a server run from a checkout does "
           "not announce itself on a network unasked; the SD-card image turns it on.", _zeroconf),
    Option("Network", NETWORK_DEFAULT,
           "The board's network on the SD-card image (pipacs option; needs pipacs-network.service as root): Mode "
           "auto (join WifiSsid or Ethernet; without an address after ClientTimeout seconds, serve a Wi-Fi "
           "HotspotSsid of our own at HotspotAddress, with DHCP and DNS for pipacs.local and ShortName), client, "
           "hotspot or off. HotspotPassphrase: 8 to 63 characters for WPA2, empty for an open network; the card "
           f"ships {HOTSPOT_PASSPHRASE_AT_FIRST_BOOT!r}, replaced by a passphrase of the board's own at its first "
           "boot.", _network),
    Option("IngestBatchSize", 64,
           "Most stores committed to the index in one transaction when many arrive at once (pipacs option).",
           _int_range(1, 10000)),
    Option("Dictionary", {},
           'Tags to add to the DICOM dictionary, as Orthanc: {"gggg,eeee": ["VR", "Name", MinMultiplicity, '
           'MaxMultiplicity (0: any), "PrivateCreator"]} (the last three optional; a private tag needs its '
           "creator). Their names show in /tags and /simplified-tags, and an implicit VR file reads them with "
           "the VR given. Tags of the standard dictionary cannot be redefined.", parse_dictionary),
    # Budgets of every input (pipacs options): a classroom network is not to be trusted, and the
    # defaults are chosen for a board with 1 GB of memory.
    Option("MaximumInstanceSize", 256,
           "Largest DICOM instance accepted, in MB, as stored (after a deflated transfer syntax, a "
           "Content-Encoding or a ZIP member is inflated); larger ones are refused with the reason (pipacs option).",
           _int_range(1, 4096)),
    Option("MaximumInflationRatio", 100,
           "Most an inflated input (deflated transfer syntax, Content-Encoding gzip or deflate, a ZIP member) may "
           "grow over its compressed size, beyond its first MB; real images compress 2 to 20 times, a bomb a "
           "thousand (pipacs option).", _int_range(2, 100000)),
    Option("MaximumDatasetElements", 250000,
           "Most data elements in one instance, its sequences' items included (pipacs option).",
           _int_range(100, 100_000_000)),
    Option("MaximumSequenceDepth", 32, "Deepest nesting of sequences in one instance (pipacs option; at most "
           "100: pydicom cannot read much deeper).", _int_range(1, 100)),
    Option("MaximumZipMembers", 50000, "Most members of one uploaded ZIP (pipacs option).",
           _int_range(1, 10_000_000)),
    Option("MaximumBundleCases", 1000, "Most cases in one collection bundle, GET /collections/{label}/bundle "
           "(each case's document is read before the ZIP streams; pipacs option).", _int_range(1, 100_000)),
    Option("DicomMaximumAssociations", 128,
           "Most DICOM associations at once, for every device together: a class of sixty iPads with two each "
           "(pipacs option).", _int_range(1, 4096)),
    Option("DicomMaximumAssociationsPerAddress", 16,
           "Most DICOM associations at once from one network address, so one device cannot take every slot "
           "(pipacs option).", _int_range(1, 4096)),
    Option("DicomAssociationRequestTimeout", 5,
           "Seconds a new DICOM connection may take to send its association request before it is closed "
           "(pipacs option).", _int_range(1, 600)),
    Option("HttpMaximumConnections", 2000, "Most HTTP connections open at once (pipacs option).",
           _int_range(1, 100000)),
    Option("HttpMaximumConnectionsPerAddress", 64,
           "Most HTTP connections open at once from one network address (a browser opens six) (pipacs option).",
           _int_range(1, 100000)),
    Option("HttpRequestHeaderTimeout", 10,
           "Seconds a client may take to send a request's line and headers, from the connection or the end "
           "of the previous answer, before the connection is closed (pipacs option).", _int_range(1, 3600)),
]

_BY_KEY = {o.key: o for o in OPTIONS}


def env_name(key: str) -> str:
    """``DicomAet`` -> ``PIPACS_DICOM_AET``."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", key).upper()
    return "PIPACS_" + snake


def strip_json_comments(text: str) -> str:
    """Orthanc's configuration files carry ``//`` and ``/* */`` comments; accept them too."""
    out = []
    i, n = 0, len(text)
    in_str = False
    while i < n:
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                in_str = False
            i += 1
        elif c == '"':
            in_str = True
            out.append(c)
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ValueError("unterminated /* comment")
            out.append(" " * (j + 2 - i))  # keep positions for error messages roughly right
            i = j + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


class Settings(dict):
    """Validated configuration; a dict keyed by option name, with every key present."""

    source: str = "defaults"
    # Set when the configuration on the card was refused and this one is the last good one.
    problem: str = ""

    @property
    def storage_dir(self) -> Path:
        return Path(self["StorageDirectory"]).expanduser().resolve()

    @property
    def index_dir(self) -> Path:
        d = self["IndexDirectory"] or self["StorageDirectory"]
        return Path(d).expanduser().resolve()


def _parse_env_value(key: str, raw: str) -> Any:
    default = _BY_KEY[key].default
    if isinstance(default, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise ConfigError(key, f"environment variable {env_name(key)}={raw!r} is not valid JSON") from None


def validate(values: dict[str, Any]) -> Settings:
    """Check every key, fill defaults; raise ConfigError on the first problem."""
    s = Settings()
    for key in values:
        if key not in _BY_KEY:
            close = [k for k in _BY_KEY if k.lower() == key.lower()]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(key, f"unknown option{hint}; `pipacs config --defaults` lists them all")
    for opt in OPTIONS:
        s[opt.key] = opt.check(opt.key, values.get(opt.key, opt.default))
    return s


def load_settings(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults <- file <- environment, validated."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    source = "defaults"
    if path is None and environ.get("PIPACS_CONFIG"):
        path = environ["PIPACS_CONFIG"]
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError("(file)", f"cannot read {p}: {e.strerror or e}") from None
        try:
            values = json.loads(strip_json_comments(text))
        except (json.JSONDecodeError, ValueError) as e:
            raise ConfigError("(file)", f"{p} is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise ConfigError("(file)", f"{p} must hold a JSON object")
        source = str(p)
    for opt in OPTIONS:
        name = env_name(opt.key)
        if name in environ:
            values[opt.key] = _parse_env_value(opt.key, environ[name])
    s = validate(values)
    s.source = source
    if path is not None:
        err = Path(str(path) + ".error")
        if err.is_file():
            s.problem = err.read_text(encoding="utf-8", errors="replace").strip()
    return s


def adopt(card: Path, last_good: Path) -> tuple[bool, str]:
    """Take the configuration a teacher edited on the card if it is valid; else keep the last good one.

    Returns (adopted, message). A refusal is written beside the last good file
    (``pipacs.json.error``), where ``load_settings`` finds it for /system, the log and the pages.
    """
    err = Path(str(last_good) + ".error")
    last_good.parent.mkdir(parents=True, exist_ok=True)
    if not card.is_file():
        if not last_good.exists():
            write_text_atomically(last_good, "{}\n")
        return False, f"no {card}: using {last_good}"
    try:
        load_settings(card, environ={})
    except ConfigError as e:
        message = f"the configuration on the card ({card}) was refused: {e}. Using the last good one."
        if not last_good.exists():
            write_text_atomically(last_good, "{}\n")
            message = f"the configuration on the card ({card}) was refused: {e}. Using the defaults."
        write_text_atomically(err, message + "\n")
        return False, message
    write_text_atomically(last_good, card.read_text(encoding="utf-8"))
    err.unlink(missing_ok=True)
    return True, f"configuration taken from {card}"


def read_json_file(path: Path) -> Any | None:
    """A JSON status file that another process replaces whole (``write_text_atomically``);
    None while there is none, or when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_text_atomically(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Whole or not at all, even across a power cut: a temporary file, fsynced, renamed.
    ``owner`` (uid, gid): the file belongs to them before it takes its name (root writing a
    file for a service)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        if owner is not None:
            os.fchown(f.fileno(), *owner)
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:   # the rename itself must reach the disk too (a FAT card is pulled without warning)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def defaults_document() -> str:
    """The default configuration as a commented JSON file (accepted by ``--config`` as is)."""
    lines = ["{"]
    for i, opt in enumerate(OPTIONS):
        lines.append(f"  // {opt.doc}")
        lines.append(f"  //   environment: {env_name(opt.key)}")
        comma = "," if i < len(OPTIONS) - 1 else ""
        lines.append(f"  {json.dumps(opt.key)}: {json.dumps(opt.default)}{comma}")
        if comma:
            lines.append("")
    lines.append("}")
    return "\n".join(lines) + "\n"
