"""ZIP downloads of stored resources: Orthanc's /archive layout, and /media with a DICOMDIR.

The ZIP is written by a worker thread into a small bounded queue that the web handler
drains to the client, so memory stays flat whatever the study size, and a client
that goes away stops the work at the next chunk.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import tempfile
import threading
import unicodedata
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet

from ..archive import tag_key

log = logging.getLogger("pipacs.downloads")

__all__ = ["ZipEntry", "archive_layout", "media_layout", "write_zip", "Cancelled", "folder_name", "download_filename"]

CHUNK = 256 * 1024


class Cancelled(Exception):
    """The client went away: stop writing."""


@dataclass
class ZipEntry:
    name: str
    path: Path | None = None     # a stored file, read in chunks
    data: bytes | None = None    # or bytes made for the download (the DICOMDIR)
    size: int = 0
    # or bytes made when the writer reaches the entry (a bundle's key-image PNGs, drawn while the
    # ZIP streams rather than all before its first byte); None from it: the entry is left out
    produce: Callable[[], bytes | None] | None = None


def folder_name(*parts: str, fallback: str) -> str:
    """A readable, portable folder name from DICOM values, as Orthanc's archives spell them:
    ``^`` becomes a space, accents are dropped, anything outside letters, digits, space,
    ``-``, ``_`` and ``.`` goes, spaces are collapsed."""
    text = " ".join(p for p in parts if p)
    text = unicodedata.normalize("NFKD", text.replace("^", " ")).encode("ascii", "ignore").decode()
    text = re.sub(r"[^A-Za-z0-9 _.\-]", "", text)
    text = re.sub(r" +", " ", text).strip(" .")
    return text[:64] or fallback


def _t(tags: dict[str, str], tag: int) -> str:
    return tags.get(tag_key(tag), "").strip()


def _safe(text: str) -> str:
    """Safe ASCII for a file name: accents dropped, ``^`` and spaces as ``_``, only letters,
    digits, ``-``, ``_`` and ``.`` kept, runs of ``_`` collapsed."""
    text = unicodedata.normalize("NFKD", text.replace("^", " ")).encode("ascii", "ignore").decode()
    text = re.sub(r"[^A-Za-z0-9_.\-]+", "_", text.strip())
    return re.sub(r"_+", "_", text).strip("_.-")


def download_filename(rows: list[dict], media: bool, fallback: str = "Archive", of_series: bool = False) -> str:
    """The Content-Disposition name of a ZIP download, so two downloads (and the ZIP and the
    DICOMDIR of one study) do not land as the same ``<id>.zip``: the patient (name, else ID), then
    for one study its date and description (and with ``of_series``, a series download, its modality
    and description), else
    how many studies or patients; ``-dicomdir.zip`` for the DICOMDIR media. Safe ASCII only, at
    most 100 characters before the suffix; ``fallback`` when the files name nothing."""
    patients = {r["patient_key"]: r["patient_tags"] for r in rows}
    studies = {r["study_key"]: r["study_tags"] for r in rows}
    series = {r["series_key"]: r["series_tags"] for r in rows}
    parts: list[str] = []
    if len(patients) == 1:
        p = next(iter(patients.values()))
        parts.append(_safe(_t(p, 0x00100010)) or _safe(_t(p, 0x00100020)))
    elif patients:
        parts.append(f"{len(patients)}_patients")
    if len(studies) == 1:
        st = next(iter(studies.values()))
        date = _t(st, 0x00080020)
        if re.fullmatch(r"\d{8}", date):
            date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        parts += [_safe(date), _safe(_t(st, 0x00081030))]
        if of_series and len(series) == 1:
            se = next(iter(series.values()))
            parts += [_safe(_t(se, 0x00080060)), _safe(_t(se, 0x0008103E))]
    elif len(patients) == 1:
        parts.append(f"{len(studies)}_studies")
    name = "-".join(p for p in parts if p)[:100].strip("_.-") or _safe(fallback) or "Archive"
    return f"{name}-dicomdir.zip" if media else f"{name}.zip"


def archive_layout(rows: list[dict]) -> list[ZipEntry]:
    """Orthanc's folders: ``PatientID PatientName/Accession StudyDescription/Modality SeriesDescription/``
    then ``<Modality><index>.dcm`` (6 digits), each name made unique among its siblings."""
    entries: list[ZipEntry] = []
    names: dict[tuple, str] = {}
    used: dict[str, set[str]] = {}
    counters: dict[str, int] = {}

    def unique(parent: str, key: tuple, name: str) -> str:
        if key in names:
            return names[key]
        taken = used.setdefault(parent, set())
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{name}_{n}"
        taken.add(candidate.lower())
        names[key] = candidate
        return candidate

    for r in rows:
        p, st, se = r["patient_tags"], r["study_tags"], r["series_tags"]
        pdir = unique("", ("p", r["patient_key"]),
                      folder_name(_t(p, 0x00100020), _t(p, 0x00100010), fallback="Unknown Patient"))
        sdir = unique(pdir, ("s", r["study_key"]),
                      folder_name(_t(st, 0x00080050), _t(st, 0x00081030), fallback="Unknown Study"))
        modality = folder_name(_t(se, 0x00080060), fallback="")
        edir = unique(f"{pdir}/{sdir}", ("e", r["series_key"]),
                      folder_name(modality, _t(se, 0x0008103E), fallback="Unknown Series"))
        folder = f"{pdir}/{sdir}/{edir}"
        k = counters.get(folder, 0)
        counters[folder] = k + 1
        prefix = re.sub(r"[^A-Z0-9]", "", modality.upper())[:2] or "IM"
        entries.append(ZipEntry(f"{folder}/{prefix}{k:06d}.dcm", path=r["path"], size=r["size"]))
    return entries


def fill_record_keys(ds: Dataset, number: int) -> list[str]:
    """Give a header the values a DICOMDIR's records must have (PS3.3 F.5, type 1) when the file
    lacks them, and say which; an anonymized case often has no Patient ID or Study Date.

    Only the header copy the DICOMDIR is made from is changed: the files on the medium are the
    stored ones, byte for byte. Dates come from the instance's other dates where it has one.
    """
    def empty(keyword: str) -> bool:
        return str(ds.get(keyword, "") or "").strip() == ""

    filled = []
    fallbacks = {
        "PatientID": lambda: "NONE",
        "StudyDate": lambda: next((str(ds.get(k)) for k in ("SeriesDate", "AcquisitionDate", "ContentDate",
                                                             "InstanceCreationDate") if not empty(k)), "19000101"),
        "StudyTime": lambda: next((str(ds.get(k)) for k in ("SeriesTime", "AcquisitionTime", "ContentTime",
                                                             "InstanceCreationTime") if not empty(k)), "000000"),
        "StudyID": lambda: "1",
        "Modality": lambda: "OT",
        "SeriesNumber": lambda: "1",
        "InstanceNumber": lambda: str(number),
    }
    for keyword, value in fallbacks.items():
        if empty(keyword):
            setattr(ds, keyword, value())
            filled.append(keyword)
    return filled


def media_layout(rows: list[dict], scratch: Path, should_stop: Callable[[], bool] = lambda: False
                 ) -> list[ZipEntry]:
    """A DICOMDIR (PS3.10 file-set, built with pydicom's FileSet) and the files it names.

    Only each file's header is staged on disk to let pydicom write the DICOMDIR; the
    stored files themselves go into the ZIP unchanged, under the 8-character file IDs.
    """
    work = Path(tempfile.mkdtemp(prefix="media-", dir=scratch))
    try:
        fs = FileSet()
        fs.ID = "PIPACS"
        by_uid: dict[str, dict] = {}
        outside: list[dict] = []
        filled: set[str] = set()
        for k, r in enumerate(rows, 1):
            if should_stop():
                raise Cancelled()
            ds = None
            try:
                # a stored file pydicom cannot read back (an unknown VR, stored by an earlier
                # version) fails here or below: it goes into OTHER/, the medium is still made
                ds = pydicom.dcmread(r["path"], stop_before_pixels=True)
                filled.update(fill_record_keys(ds, k))
                # pydicom writes the headers it is given when it writes the file-set: one it
                # cannot write (a VR lost in a damaged file) would fail the whole medium
                pydicom.dcmwrite(io.BytesIO(), ds)
                fs.add(ds)
            except Exception as e:   # noqa: BLE001 - a record type whose keys the file lacks, a damaged header
                log.warning("%s left out of the DICOMDIR (its file is in OTHER/): %s", _name_of(ds, r["path"]),
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
                outside.append(r)
                continue
            by_uid[str(ds.SOPInstanceUID)] = r
        if filled:
            log.info("DICOMDIR records given placeholder %s where files had none", ", ".join(sorted(filled)))
        out = work / "fs"
        entries = []
        if len(fs) or not rows:   # nothing asked for: an empty DICOMDIR, as Orthanc's empty media
            out.mkdir(exist_ok=True)   # (pydicom makes the folder only for the files it writes)
            fs.write(out)
            entries.append(ZipEntry("DICOMDIR", data=(out / "DICOMDIR").read_bytes()))
        for inst in fs:
            r = by_uid[str(inst.SOPInstanceUID)]
            entries.append(ZipEntry(Path(inst.path).relative_to(out).as_posix(), path=r["path"], size=r["size"]))
        entries += [ZipEntry(f"OTHER/IM{k:06d}", path=r["path"], size=r["size"]) for k, r in enumerate(outside)]
        return entries
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _name_of(ds: Dataset | None, path) -> str:
    """The SOP Instance UID of a file for a log line, or its path when even that cannot be read."""
    try:
        return str(ds.SOPInstanceUID) if ds is not None and "SOPInstanceUID" in ds else str(path)
    except Exception:  # noqa: BLE001 - the file is damaged: its path names it
        return str(path)


class _Sink(io.RawIOBase):
    """Write-only, unseekable: zipfile then writes data descriptors (a ZIP that streams)."""

    def __init__(self, push: Callable[[bytes], None]):
        self.push = push
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.buf += b
        if len(self.buf) >= CHUNK:
            self.flush()
        return len(b)

    def flush(self) -> None:
        if self.buf:
            self.push(bytes(self.buf))
            self.buf.clear()


def write_zip(entries: Iterable[ZipEntry], push: Callable[[bytes], None], stop: threading.Event,
              deflate: bool = True) -> None:
    """Write a ZIP of ``entries`` through ``push`` (blocking; run it in a worker thread).

    Deflate at level 1: DICOM pixels of uncompressed images shrink by about half, and
    level 1 runs faster on a Pi than its Wi-Fi can carry the result.
    """
    sink = _Sink(push)
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(sink, "w", compression=method, compresslevel=1 if deflate else None,
                         allowZip64=True) as zf:
        for e in entries:
            if stop.is_set():
                raise Cancelled()
            info = zipfile.ZipInfo(e.name, date_time=(2000, 1, 1, 0, 0, 0))
            info.compress_type = method
            data = e.data if e.produce is None else e.produce()
            if e.produce is not None and data is None:
                continue
            if data is not None:
                info.file_size = len(data)
                with zf.open(info, "w") as out:
                    out.write(data)
                continue
            info.file_size = e.size
            try:
                src = open(e.path, "rb")  # noqa: SIM115 - the with below closes it; opening apart tells a deleted file
            except FileNotFoundError:
                continue   # deleted while the download ran: the rest still comes
            with src, zf.open(info, "w", force_zip64=e.size > 2**31) as out:
                while True:
                    if stop.is_set():
                        raise Cancelled()
                    block = src.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
    sink.flush()
