"""ZIP uploads: every DICOM member is ingested; names are only reported, never used as paths.

Refused before anything is written: a ZIP whose members would not fit on the disk
(the sizes a member may inflate to are bounded by its declared size, which
``zipfile`` enforces), so a ZIP bomb cannot fill the card.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import zipfile
from collections.abc import Callable
from typing import IO, Any

from .dicomfile import InvalidDicom
from .hub import Archive
from .records import Origin, StoreRefused
from .storage import StorageFull

log = logging.getLogger("pipacs.archive")

ZIP_MAGIC = b"PK\x03\x04"
MAX_MEMBER_BYTES = 1 << 30


def hostile_name(name: str) -> str | None:
    """Why a member name would escape a folder if it were extracted, or None."""
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) > 1 and n[1] == ":"):
        return "absolute path"
    if any(part == ".." for part in n.split("/")):
        return "path with '..'"
    if "\x00" in n:
        return "NUL in name"
    return None


async def ingest_zip(archive: Archive, fileobj: IO[bytes], origin: Origin,
                     transform: Callable[[bytes], bytes] | None = None) -> list[dict[str, Any]]:
    """Ingest each member; return Orthanc's per-instance answers plus one entry per skipped member."""
    try:
        zf = await asyncio.to_thread(zipfile.ZipFile, fileobj)
    except (zipfile.BadZipFile, OSError) as e:
        raise InvalidDicom(f"the upload looks like a ZIP but cannot be read: {e}") from None
    members = [i for i in zf.infolist() if not i.is_dir()]
    declared = sum(i.file_size for i in members)
    free = await asyncio.to_thread(archive.files.free_bytes) - archive.files.reserve_bytes
    if declared > free:
        raise StorageFull(errno.ENOSPC, f"the ZIP would inflate to {declared // 2**20} MB but only "
                                        f"{max(free, 0) // 2**20} MB are free on the storage disk")
    results: list[dict[str, Any]] = []
    for info in members:
        why = hostile_name(info.filename)
        if why:
            log.warning("ZIP member %r skipped: %s", info.filename, why)
            results.append({"Filename": info.filename, "Status": "Skipped", "Message": f"unsafe name ({why})"})
            continue
        if info.file_size > MAX_MEMBER_BYTES:
            results.append({"Filename": info.filename, "Status": "Failure",
                            "Message": f"member of {info.file_size // 2**20} MB is too large for an upload"})
            continue
        try:
            data = await asyncio.to_thread(_read_member, zf, info)
            res = await archive.ingest_bytes(data, origin, transform=transform)
            results.append(res.orthanc_json())
        except InvalidDicom as e:
            results.append({"Filename": info.filename, "Status": "Skipped", "Message": f"not DICOM: {e}"})
        except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as e:
            results.append({"Filename": info.filename, "Status": "Failure", "Message": f"corrupt ZIP member: {e}"})
        except (StorageFull, StoreRefused) as e:
            results.append({"Filename": info.filename, "Status": "Failure", "Message": str(e)})
            break  # the disk is full: the rest would fail the same way
    zf.close()
    return results


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with zf.open(info) as f:
        return f.read()
