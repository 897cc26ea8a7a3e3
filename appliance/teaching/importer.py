"""``pipacs import``: folders, ZIP files and DICOMDIR media (a copied or mounted CD) into the
running appliance.

Files go to the appliance's own ``POST /instances`` over loopback HTTP (``appliance.client``),
so there is one writer of the storage, whatever runs the import (a teacher over SSH, the USB
auto-import unit). Non-DICOM files are skipped and counted; refusals are listed with their
reasons. This module finds the files: folders, ZIP members, what a DICOMDIR names.
"""

from __future__ import annotations

import json
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import MediaStorageDirectoryStorage

from ..archive import hostile_name
from ..client import ApplianceClient

__all__ = ["ImportSummary", "Source", "find_sources", "run_import", "missing_from_dicomdir"]

DICOMDIR_CLASS = str(MediaStorageDirectoryStorage)
MAX_FILE = 2 * 2**30


@dataclass
class Source:
    """One file to send: on disk, or a member of a ZIP."""
    label: str
    path: Path
    member: str | None = None

    def read(self) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
            return f.read()


@dataclass
class ImportSummary:
    stored: int = 0
    already: int = 0
    skipped: int = 0                       # not DICOM (or a DICOMDIR itself)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)   # named by a DICOMDIR, not on the medium
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [(f"imported in {self.seconds:.1f} s: {self.stored} stored, {self.already} already stored, "
                f"{self.skipped} skipped (not DICOM), {len(self.rejected)} rejected")]
        for label, why in self.rejected[:50]:
            out.append(f"  rejected {label}: {why}")
        if len(self.rejected) > 50:
            out.append(f"  ... and {len(self.rejected) - 50} more rejected")
        if self.missing:
            out.append(f"{len(self.missing)} file(s) named by a DICOMDIR are missing from the medium:")
            out += [f"  missing {m}" for m in self.missing[:20]]
        return out


def missing_from_dicomdir(dicomdir: Path) -> list[str]:
    """Files a DICOMDIR references that are not there (a CD copied in part, a scratched disc)."""
    import pydicom

    try:
        ds = pydicom.dcmread(dicomdir, force=True)
        records = ds.get("DirectoryRecordSequence", [])
    except Exception as e:   # noqa: BLE001 - a broken DICOMDIR: the folder is still walked
        return [f"{dicomdir} (unreadable DICOMDIR: {e})"]
    root = dicomdir.parent
    missing = []
    for rec in records:
        fid = rec.get("ReferencedFileID")
        if not fid:
            continue
        parts = [fid] if isinstance(fid, str) else list(fid)
        if not _find_case_insensitive(root, parts):
            missing.append("/".join(parts))
    return missing


def _find_case_insensitive(root: Path, parts: list[str]) -> bool:
    """CDs written on one system and read on another differ in case (and ';1' suffixes)."""
    here = root
    for part in parts:
        if (here / part).exists():
            here = here / part
            continue
        wanted = part.upper()
        try:
            match = next((c for c in here.iterdir() if c.name.upper().split(";")[0] == wanted), None)
        except OSError:
            return False
        if match is None:
            return False
        here = match
    return here.is_file()


def find_sources(paths: list[Path], summary: ImportSummary) -> list[Source]:
    """Every candidate file under ``paths`` (recursive), ZIP members included, DICOMDIRs checked."""
    out: list[Source] = []
    for p in paths:
        files: Iterator[Path]
        if p.is_dir():
            files = (f for f in sorted(p.rglob("*")) if f.is_file())
        elif p.is_file():
            files = iter([p])
        else:
            summary.rejected.append((str(p), "no such file or folder"))
            continue
        for f in files:
            if f.name.upper() == "DICOMDIR":
                summary.missing += missing_from_dicomdir(f)
                summary.skipped += 1
                continue
            if zipfile.is_zipfile(f):
                try:
                    with zipfile.ZipFile(f) as zf:
                        for info in zf.infolist():
                            if info.is_dir():
                                continue
                            why = hostile_name(info.filename)
                            if why:
                                summary.rejected.append((f"{f}:{info.filename}", f"unsafe name in the ZIP ({why})"))
                            elif info.file_size > MAX_FILE:
                                summary.rejected.append((f"{f}:{info.filename}", "larger than 2 GB"))
                            else:
                                out.append(Source(f"{f}:{info.filename}", f, info.filename))
                except zipfile.BadZipFile as e:
                    summary.rejected.append((str(f), f"unreadable ZIP: {e}"))
                continue
            out.append(Source(str(f), f))
    return out


def _write_status(path: Path | None, state: str, paths: list[Path], done: int, total: int,
                  summary: ImportSummary) -> None:
    """Progress for the web page (the USB auto-import writes /run/pipacs/import.json)."""
    if path is None:
        return
    from ..config import write_text_atomically

    write_text_atomically(path, json.dumps({
        "State": state, "Source": ", ".join(str(p) for p in paths), "Done": done, "Total": total,
        "Stored": summary.stored, "AlreadyStored": summary.already, "Skipped": summary.skipped,
        "Rejected": len(summary.rejected), "Missing": len(summary.missing),
        "Time": time.strftime("%Y-%m-%d %H:%M:%S"), "Summary": summary.lines() if state == "done" else [],
    }))


def run_import(paths: list[Path], host: str, port: int, user: str | None = None, password: str | None = None,
               anonymize: bool = False, progress: bool = True, stream=sys.stderr,
               status_file: Path | None = None, local_token: str | None = None) -> ImportSummary:
    """Send everything under ``paths`` to the appliance; a progress bar on ``stream``."""
    from tqdm import tqdm

    summary = ImportSummary()
    appliance = ApplianceClient(host, port, user, password, local_token=local_token)
    appliance.check()
    start = time.monotonic()
    _write_status(status_file, "running", paths, 0, 0, summary)
    sources = find_sources(paths, summary)
    last_status = 0.0
    done = 0
    bar = tqdm(total=len(sources), unit="file", file=stream, disable=not progress, dynamic_ncols=True,
               mininterval=0.5, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                                           "{rate_fmt}]{postfix}")
    try:
        for position, src in enumerate(sources):
            try:
                data = src.read()
            except (OSError, zipfile.BadZipFile) as e:
                summary.rejected.append((src.label, f"cannot be read: {e}"))
                bar.update(1)
                done += 1
                continue
            if _is_dicomdir(data):
                summary.skipped += 1
            else:
                status, why = appliance.store(data, anonymize)
                if status == "Rejected" and why.startswith("400") and data[128:132] != b"DICM":
                    status = "NotDicom"   # no Part-10 header and nothing DICOM in it: some other file
                if status == "Success":
                    summary.stored += 1
                elif status == "AlreadyStored":
                    summary.already += 1
                elif status == "NotDicom":
                    summary.skipped += 1
                else:
                    summary.rejected.append((src.label, why))
                    if why.startswith("507"):   # the card is full: the rest would fail the same way
                        left = len(sources) - position - 1
                        summary.rejected.append((f"{left} file(s) not sent", "the appliance's storage is full"))
                        break
            bar.update(1)
            done += 1
            bar.set_postfix_str(f"stored {summary.stored}, rejected {len(summary.rejected)}", refresh=False)
            if time.monotonic() - last_status > 0.5:
                _write_status(status_file, "running", paths, done, len(sources), summary)
                last_status = time.monotonic()
    finally:
        bar.close()
        appliance.close()
        summary.seconds = time.monotonic() - start
        _write_status(status_file, "done", paths, done, len(sources), summary)
    return summary


def _is_dicomdir(data: bytes) -> bool:
    head = data[:512]
    return len(data) > 132 and data[128:132] == b"DICM" and DICOMDIR_CLASS.encode() in head
