"""ZIP uploads: every DICOM member is ingested; names are only reported, never used as paths.

Refused before anything is written: a ZIP of more than MaximumZipMembers members, and one
whose members would not fit on the disk (by their declared sizes). Each member is then read
a MB at a time and refused as soon as it passes its budget (MaximumInstanceSize, and
MaximumInflationRatio times its compressed size beyond a first MB): the sizes a ZIP declares
are the sender's word, not a bound. A ZIP inside the ZIP is reported, not opened. The loop
stops between members when the archive is closing, so a stop never waits for a long import.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Any

from ..codec.part10 import size_text
from .dicomfile import Budget, InvalidDicom, OverBudget
from .hub import Archive
from .records import Origin, StoreRefused
from .storage import StorageFull
from .uploads import ZIP_MAGIC

log = logging.getLogger("pipacs.archive")

MEMBER_CHUNK = 2**20   # a member is inflated a MB at a time: a bomb costs its budget plus this
# Real images compress 2 to 20 times: a member that declares more is inflated once without
# keeping anything before it is read, so a lie about its size costs a MB, not its budget.
SUSPECT_RATIO = 20
LOGGED_MEMBERS = 50    # members not stored, logged one line each; past that, one line says how many more


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
                     transform: Callable[[bytes], bytes] | None = None,
                     only: Callable[[str], bool] | None = None
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ingest each member (``only``: those whose name it accepts, the others not looked at, as
    a case bundle's DICOM folder is ingested beside its JSON and pictures); return Orthanc's
    per-instance answers (one per DICOM member stored or already stored: the array Orthanc answers, whose length a script may count), and apart from
    them one entry per member not stored (Filename, Status "Skipped" or "Failure", Message),
    each also logged.

    Raises OverBudget (too many members) or StorageFull before anything is stored."""
    try:
        zf = await asyncio.to_thread(zipfile.ZipFile, fileobj)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InvalidDicom(f"the upload looks like a ZIP but cannot be read: {e}") from None
    try:
        results = await _ingest_members(archive, zf, origin, transform, only)
    finally:
        zf.close()
    stored = [r for r in results if "Filename" not in r]
    not_stored = [r for r in results if "Filename" in r]
    for r in not_stored[:LOGGED_MEMBERS]:
        log.warning("ZIP member %r not stored (%s): %s", r["Filename"], r["Status"], r["Message"])
    if len(not_stored) > LOGGED_MEMBERS:
        log.warning("ZIP upload: %d more members not stored", len(not_stored) - LOGGED_MEMBERS)
    return stored, not_stored


async def _ingest_members(archive: Archive, zf: zipfile.ZipFile, origin: Origin,
                          transform: Callable[[bytes], bytes] | None,
                          only: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    members = [i for i in zf.infolist() if not i.is_dir() and (only is None or only(i.filename))]
    if len(members) > archive.max_zip_members:
        raise OverBudget(f"the ZIP has {len(members)} members, more than the {archive.max_zip_members} of "
                         "MaximumZipMembers: nothing was stored")
    declared = sum(i.file_size for i in members)
    free = await asyncio.to_thread(archive.files.free_bytes) - archive.files.reserve_bytes
    if declared > free:
        raise StorageFull(errno.ENOSPC, f"the ZIP would inflate to {declared // 2**20} MB but only "
                                        f"{max(free, 0) // 2**20} MB are free on the storage disk")
    budget = archive.budget
    results: list[dict[str, Any]] = []
    for done, info in enumerate(members):
        if archive.closing:
            log.warning("ZIP import stopped after %d of %d members: the appliance is stopping", done, len(members))
            results.append({"Filename": info.filename, "Status": "Failure",
                            "Message": f"the appliance is stopping: this member and the {len(members) - done - 1} "
                                       "after it were not imported"})
            break
        why = hostile_name(info.filename)
        if why:
            results.append({"Filename": info.filename, "Status": "Skipped", "Message": f"unsafe name ({why})"})
            continue
        if info.file_size > budget.max_instance_bytes:
            results.append({"Filename": info.filename, "Status": "Failure",
                            "Message": f"member of {info.file_size // 2**20} MB is larger than the "
                                       f"{budget.max_instance_bytes // 2**20} MB of MaximumInstanceSize"})
            continue
        try:
            data = await asyncio.to_thread(read_member, zf, info, budget)
            if data[:4] == ZIP_MAGIC:
                results.append({"Filename": info.filename, "Status": "Skipped",
                                "Message": "a ZIP inside the ZIP is not opened: upload it on its own"})
                continue
            res = await archive.ingest_bytes(data, origin, transform=transform)
            results.append(res.orthanc_json())
        except OverBudget as e:
            results.append({"Filename": info.filename, "Status": "Failure", "Message": str(e)})
        except InvalidDicom as e:
            results.append({"Filename": info.filename, "Status": "Skipped", "Message": f"not DICOM: {e}"})
        except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, NotImplementedError, ValueError, zlib.error) as e:
            # ValueError: a member whose offset lies outside the file ("negative seek value");
            # zlib.error: a deflated member whose data is damaged ("invalid distance too far back")
            results.append({"Filename": info.filename, "Status": "Failure", "Message": f"corrupt ZIP member: {e}"})
        except (StorageFull, StoreRefused) as e:
            results.append({"Filename": info.filename, "Status": "Failure", "Message": str(e)})
            break  # the disk is full (or the archive closing): the rest would fail the same way
    return results


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget) -> bytes:
    """A member's bytes, within its budget (OverBudget otherwise).

    A member that declares more than its budget is refused unread. One that declares less
    is read a MB at a time into a buffer of the declared size: ``zipfile`` stops at the
    declared size (and then finds the CRC wrong if the member holds more), and the loop
    refuses anything past the budget in any case, so what a ZIP declares is never the bound."""
    limit = budget.inflation_limit(info.compress_size)
    if info.file_size > limit:
        raise OverBudget(f"the member declares {size_text(info.file_size)} from {size_text(info.compress_size)}, "
                         f"more than the {size_text(limit)} it may inflate to (MaximumInflationRatio, "
                         "MaximumInstanceSize)")
    if info.file_size > SUSPECT_RATIO * info.compress_size + MEMBER_CHUNK:
        _count_member(zf, info)   # a bomb's CRC or length is found wrong here, at the cost of a MB
    data = bytearray(info.file_size)
    view = memoryview(data)
    size = 0
    with zf.open(info) as f:
        while n := f.readinto(view[size:size + MEMBER_CHUNK] if size < len(data) else bytearray(MEMBER_CHUNK)):
            size += n
            if size > min(limit, len(data)):
                raise OverBudget(f"the member inflates to more than it declares ({size_text(info.file_size)}) "
                                 f"from {size_text(info.compress_size)}")
    view.release()
    del data[size:]
    return bytes(data)


def _count_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Inflate a member a MB at a time, keeping nothing: ``zipfile`` checks its length and CRC
    at the end (BadZipFile when they are not what the ZIP declares)."""
    with zf.open(info) as f:
        while f.read(MEMBER_CHUNK):
            pass
