"""Case bundles: one ZIP that carries teaching cases from one board to another.

Layout (``bundle.json`` first, so a page or a command tells a bundle by its first member)::

    bundle.json                              what is inside (BUNDLE_FORMAT, SchemaVersion, cases, files)
    cases/<ID>/case.json                     the case document + "SchemaVersion"
    cases/<ID>/key-images/<n>.png            key image n (from 0), its annotations drawn
    cases/<ID>/key-objects/<n>.dcm           the case's Key Object Selection documents (one per study)
    cases/<ID>/presentation-states/<n>.dcm   its Grayscale Softcopy Presentation States (teaching.keyobjects)
    dicom/<study ID>/<instance ID>.dcm       every instance of the cases' studies, byte for byte as stored,
                                             each once (Orthanc IDs: no patient name in a member name)

Import ingests ``dicom/`` through the archive's ZIP import (its budgets and hostile-name checks)
and creates each case with its own ID, dates and state; the KOS and presentation-state files are
for DICOM workstations and are not ingested (the importing board makes its own from the case).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..archive import (
    Archive,
    CaseConflict,
    CaseExists,
    CaseInvalid,
    Level,
    NotFound,
    Origin,
    hostile_name,
    ingest_zip,
    public_ids,
)
from .downloads import ZipEntry
from .keyimage_render import render_key_image
from .keyobjects import ExportError, build_export
from .tce import IMPORT_ORIGIN

log = logging.getLogger("pipacs.bundles")

__all__ = ["BUNDLE_FORMAT", "SCHEMA_VERSION", "BundleRefused", "CasePart", "bundle_entries", "dicom_objects",
           "import_bundle",
           "is_bundle", "read_bundle_head", "report_lines"]

BUNDLE_FORMAT = "pipacs case bundle"
SCHEMA_VERSION = 1
MAX_BUNDLE_JSON = 16 * 2**20     # bundle.json: a manifest of at most MaximumZipMembers names
MAX_CASE_JSON = 32 * 2**20       # case.json: four times the 8 MiB a POST /cases body may hold (indented here)
# every case.json of one bundle together, as inflated (they are all read before anything is stored, so
# that a bundle a board cannot take is refused whole): a hostile bundle of thousands of small members
# that each inflate to MAX_CASE_JSON must not fill a 1 GB board; a real case is a few kB to 1 MB
MAX_CASE_JSON_TOTAL = 64 * 2**20
MAX_REFUSED_SHOWN = 20           # hostile member names named in a refusal
DICOM_FOLDER = "dicom/"
# Fields a board derives or computes (recomputed by the importing board from the same files)
DERIVED_FIELDS = ("Modalities",)
DERIVED_ANNOTATION_FIELDS = ("LengthMm", "LengthNote")


class BundleRefused(ValueError):
    """The bundle as a whole is refused (400): nothing of it was stored. The message says why."""


@dataclass
class CasePart:
    """One case as a bundle carries it: its document, the stored files of its studies, the
    KOS/GSPS files made for it, and the stored file of each key image (None: not on this board)."""
    doc: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)      # Archive.instance_paths_below rows
    study_of_row: dict[str, str] = field(default_factory=dict)    # instance ID -> study ID
    dicom_extras: list[tuple[str, bytes]] = field(default_factory=list)   # (name under cases/<ID>/, bytes)
    key_image_files: list[Path | None] = field(default_factory=list)


def dicom_objects(doc: dict[str, Any], key_image_files: list[Path | None]) -> list[tuple[str, bytes]]:
    """The case's Key Object Selection documents and presentation states (teaching.keyobjects) as
    ``key-objects/<n>.dcm`` and ``presentation-states/<n>.dcm`` (n from 1): none for a case without
    key images, and those of the key images whose files are here. Blocking (reads the headers)."""
    import pydicom

    headers: dict[str, Any] = {}
    keys = []
    for ki, path in zip(doc.get("KeyImages") or [], key_image_files, strict=False):
        if path is None:
            continue
        try:
            if ki["Instance"] not in headers:
                headers[ki["Instance"]] = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as e:   # noqa: BLE001 - a damaged header: that key image is left out of the KOS
            log.warning("bundle: key image %s left out of the key object: %s", ki.get("Instance"), e)
            continue
        keys.append(ki)
    if not keys:
        return []
    try:
        kos, states = build_export({**doc, "KeyImages": keys}, headers)
    except ExportError as e:
        log.warning("bundle of case %s: no key object: %s", doc.get("ID"), e)
        return []
    out = []
    for folder, items in (("key-objects", kos), ("presentation-states", states)):
        for n, ds in enumerate(items, 1):
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            out.append((f"{folder}/{n}.dcm", buf.getvalue()))
    return out


def case_json(doc: dict[str, Any]) -> bytes:
    """The case document as a bundle's ``case.json``: the contract's document + SchemaVersion."""
    return json.dumps({"SchemaVersion": SCHEMA_VERSION, **doc}, indent=2, ensure_ascii=False).encode()


def _png_of(path: Path, key_image: dict[str, Any], name: str) -> Callable[[], bytes | None]:
    def produce() -> bytes | None:
        try:
            return render_key_image(path.read_bytes(), key_image, "png")
        except Exception as e:   # noqa: BLE001 - no pixels, a damaged file: the rest of the bundle comes
            log.warning("bundle: %s left out: %s", name, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
            return None
    return produce


def bundle_entries(parts: list[CasePart], generator: str, created: str) -> list[ZipEntry]:
    """The members of a bundle of ``parts``, in order: bundle.json, each case's folder, then the
    DICOM files (each instance once, whichever cases share it). Blocking only for the key-image
    PNGs, which are drawn when the ZIP writer reaches them."""
    dicom: list[ZipEntry] = []
    seen: set[str] = set()
    for part in parts:
        for r in part.rows:
            if r["instance"] in seen:
                continue
            seen.add(r["instance"])
            study = part.study_of_row.get(r["instance"], "study")
            dicom.append(ZipEntry(f"{DICOM_FOLDER}{study}/{r['instance']}.dcm", path=r["path"], size=r["size"]))
    cases: list[ZipEntry] = []
    listed = []
    for part in parts:
        cid = part.doc["ID"]
        base = f"cases/{cid}/"
        cases.append(ZipEntry(base + "case.json", data=case_json(part.doc)))
        pictures = []
        for n, ki in enumerate(part.doc.get("KeyImages") or []):
            path = part.key_image_files[n] if n < len(part.key_image_files) else None
            if path is not None:
                name = f"{base}key-images/{n}.png"
                cases.append(ZipEntry(name, produce=_png_of(path, ki, name)))
                pictures.append(name)
        for name, data in part.dicom_extras:
            cases.append(ZipEntry(base + name, data=data))
        listed.append({"ID": cid, "Title": part.doc.get("Title", ""), "State": part.doc.get("State", ""),
                       "Document": base + "case.json", "KeyImages": pictures,
                       "DicomObjects": [base + name for name, _ in part.dicom_extras]})
    manifest = {"Format": BUNDLE_FORMAT, "SchemaVersion": SCHEMA_VERSION, "Generator": generator,
                "Created": created, "Cases": listed,
                "Dicom": {"Count": len(dicom), "Bytes": sum(e.size for e in dicom),
                          "Files": [e.name for e in dicom]}}
    head = ZipEntry("bundle.json", data=json.dumps(manifest, indent=2, ensure_ascii=False).encode())
    return [head, *cases, *dicom]


# ------------------------------------------------------------------ import

def is_bundle(head: bytes) -> bool:
    """A ZIP whose first member is ``bundle.json`` (how bundles are written; what the upload
    page and ``pipacs import`` look at): its local header's name, at offset 30."""
    if head[:4] != b"PK\x03\x04" or len(head) < 30:
        return False
    n = int.from_bytes(head[26:28], "little")
    return head[30:30 + n] == b"bundle.json"


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and (info.external_attr >> 16) & 0o170000 == 0o120000


def _read_json(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> Any:
    return _read_json_sized(zf, info, limit)[0]


class _MemberTooBig(ValueError):
    """A member larger than what may be read of it."""


def _read_json_sized(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> tuple[Any, int]:
    """The member's JSON and how many bytes it inflated to (never more than ``limit`` are read:
    the size a ZIP's header declares may lie)."""
    if info.file_size > limit:
        raise _MemberTooBig(f"{info.filename} is {info.file_size} bytes, more than the {limit} a bundle allows")
    with zf.open(info) as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise _MemberTooBig(f"{info.filename} inflates to more than the {limit} bytes a bundle allows")
    return json.loads(raw.decode("utf-8")), len(raw)


def _check_version(what: str, doc: Any) -> None:
    v = doc.get("SchemaVersion") if isinstance(doc, dict) else None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise BundleRefused(f"{what} has no valid SchemaVersion (a whole number from 1): not a pipacs case bundle")
    if v > SCHEMA_VERSION:
        raise BundleRefused(f"{what} has SchemaVersion {v}, newer than the {SCHEMA_VERSION} this board reads: "
                            "update pipacs to import it")


@dataclass
class BundleHead:
    manifest: dict[str, Any]
    cases: list[tuple[str, dict[str, Any] | None, str]]   # (case folder ID, document or None, problem)
    dicom_members: set[str]


def read_bundle_head(fileobj: IO[bytes], max_members: int, max_case_json_total: int = MAX_CASE_JSON_TOTAL) -> BundleHead:
    """Open a bundle and read what it says, refusing it (BundleRefused) before anything is stored:
    not a ZIP, hostile member names (``..``, absolute paths, drive letters, symlinks), more members
    than ``max_members``, no bundle.json, a SchemaVersion this board does not read, case.json files
    inflating to more than ``max_case_json_total`` bytes in all. Blocking."""
    try:
        zf = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise BundleRefused(f"the bundle is not a readable ZIP: {e}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise BundleRefused(f"the bundle has {len(infos)} members, more than the {max_members} of "
                                "MaximumZipMembers: nothing was stored")
        bad = []
        for i in infos:
            why = hostile_name(i.filename) or ("symbolic link" if _is_symlink(i) else None)
            if why:
                bad.append(f"{i.filename!r} ({why})")
        if bad:
            more = f" and {len(bad) - MAX_REFUSED_SHOWN} more" if len(bad) > MAX_REFUSED_SHOWN else ""
            raise BundleRefused("the bundle has unsafe member names, nothing was stored: "
                                + ", ".join(bad[:MAX_REFUSED_SHOWN]) + more)
        by_name = {i.filename: i for i in infos}
        if "bundle.json" not in by_name:
            raise BundleRefused("not a case bundle: it has no bundle.json (upload a ZIP of DICOM files "
                                "to POST /instances)")
        try:
            manifest = _read_json(zf, by_name["bundle.json"], MAX_BUNDLE_JSON)
        except (ValueError, UnicodeDecodeError, zipfile.BadZipFile) as e:
            raise BundleRefused(f"bundle.json cannot be read: {str(e)[:300]}") from None
        if not isinstance(manifest, dict) or manifest.get("Format") != BUNDLE_FORMAT:
            raise BundleRefused(f"bundle.json does not describe a {BUNDLE_FORMAT!r}")
        _check_version("bundle.json", manifest)
        folders = sorted({n.split("/")[1] for n in by_name if n.startswith("cases/") and n.count("/") >= 2})
        listed = [c.get("ID") for c in manifest.get("Cases") or [] if isinstance(c, dict)]
        cases: list[tuple[str, dict[str, Any] | None, str]] = []
        left = max_case_json_total
        too_much = BundleRefused(f"the bundle's case.json files inflate to more than {max_case_json_total} bytes "
                                 "in all: nothing was stored (export the collection as smaller bundles)")
        for cid in list(dict.fromkeys([str(x) for x in listed if x] + folders)):
            name = f"cases/{cid}/case.json"
            if name not in by_name:
                cases.append((cid, None, f"{name} is missing from the bundle"))
                continue
            limit = min(MAX_CASE_JSON, left)
            try:
                doc, used = _read_json_sized(zf, by_name[name], limit)
                left -= used
            except (ValueError, UnicodeDecodeError, zipfile.BadZipFile) as e:
                if isinstance(e, _MemberTooBig) and limit < MAX_CASE_JSON:   # the total's limit, not the member's
                    raise too_much from None
                cases.append((cid, None, f"{name} cannot be read: {str(e)[:300]}"))
                continue
            if not isinstance(doc, dict):
                cases.append((cid, None, f"{name} is not a JSON object"))
                continue
            _check_version(name, doc)
            cases.append((cid, doc, ""))
        return BundleHead(manifest, cases, {n for n in by_name if n.startswith(DICOM_FOLDER)})


def _importable(doc: dict[str, Any]) -> dict[str, Any]:
    """A case.json as create_case's import path takes it: without SchemaVersion and what the board
    derives (Modalities, the lengths of length lines), which it computes again from the same files."""
    out = {k: v for k, v in doc.items() if k != "SchemaVersion" and k not in DERIVED_FIELDS}
    for ki in out.get("KeyImages") or []:
        if isinstance(ki, dict):
            for a in ki.get("Annotations") or []:
                if isinstance(a, dict):
                    for k in DERIVED_ANNOTATION_FIELDS:
                        a.pop(k, None)
    return out


async def _exists(archive: Archive, level: Level, public_id: Any) -> bool:
    if not isinstance(public_id, str) or not public_id:
        return False
    try:
        await archive.get(level, public_id)
        return True
    except NotFound:
        return False


async def _stored_case(archive: Archive, case_id: Any) -> dict[str, Any] | None:
    if not isinstance(case_id, str):
        return None
    try:
        return await archive.get_case(case_id)
    except NotFound:
        return None


def _newer_here(stored: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    """What to say of a case already present: the bundle's copy may be the newer one (its teacher
    edited it since), which the import does not take over the board's own."""
    theirs, ours = doc.get("Updated"), stored.get("Updated")
    if isinstance(theirs, str) and isinstance(ours, str) and theirs > ours:
        return [(f"the bundle's copy is newer (Updated {theirs[:32]}, here {ours}): the board's is kept; "
                 "delete the case here and import again to take the bundle's")]
    return []


async def import_bundle(archive: Archive, fileobj: IO[bytes], origin: Origin,
                        anonymize: Callable[[bytes], bytes] | None = None) -> dict[str, Any]:
    """Import a bundle (a seekable file): its DICOM files stored (already stored: fine), then each
    case created as it was (ID, Created, Updated, State kept). Returns the report
    ``{"Cases": [{"ID", "Status", "Problems"}], "Instances": {...}, "Problems": [...]}``.

    Raises BundleRefused before anything is stored when the bundle as a whole cannot be taken.
    A case already on the board is "AlreadyPresent" (not doubled); a key image whose instance is
    neither in the bundle nor on the board is left out and said; a case the board refuses
    (CaseInvalid, or CaseConflict: published with a study that is not de-identified) is "Refused"
    with the reason.

    ``anonymize`` (``?anonymize``, ``pipacs import --anonymize``) de-identifies the files that are not,
    as AnonymizeOnIngest (the board's, when not given) does; de-identified files are stored as they are."""
    head = await asyncio.to_thread(read_bundle_head, fileobj, archive.max_zip_members)
    problems: list[str] = []
    listed = (head.manifest.get("Dicom") or {}).get("Files") if isinstance(head.manifest.get("Dicom"), dict) else []
    absent = [n for n in listed or [] if isinstance(n, str) and n not in head.dicom_members]
    if absent:
        problems.append(f"{len(absent)} DICOM file(s) named in bundle.json are not in the bundle, e.g. {absent[0]}")
    await asyncio.to_thread(fileobj.seek, 0)
    ingest = _BundleIngest(anonymize or archive.ingest_transform)
    # Origin "Import": the TCE receiver makes no draft of a key object a bundle brings (its case comes with it)
    stored, not_stored = await ingest_zip(archive, fileobj, dataclasses.replace(origin, kind=IMPORT_ORIGIN),
                                          transform=ingest, only=lambda n: n.startswith(DICOM_FOLDER))
    counts = {"Stored": sum(1 for r in stored if r.get("Status") == "Success"),
              "AlreadyStored": sum(1 for r in stored if r.get("Status") == "AlreadyStored"),
              "NotStored": len(not_stored)}
    for r in not_stored[:MAX_REFUSED_SHOWN]:
        problems.append(f"{r['Filename']} not stored ({r['Status']}): {r['Message'][:200]}")
    report_cases = []
    for cid, doc, problem in head.cases:
        entry: dict[str, Any] = {"ID": cid, "Status": "Refused", "Problems": [problem] if problem else []}
        report_cases.append(entry)
        if doc is None:
            continue
        if doc.get("ID") != cid:
            entry["Problems"].append(f"cases/{cid}/case.json names the case {doc.get('ID')!r}, not {cid!r}")
            continue
        stored = await _stored_case(archive, cid)
        if stored is not None:
            entry["Status"] = "AlreadyPresent"
            entry["Problems"] += _newer_here(stored, doc)
            continue
        doc = _importable(doc)
        entry["Problems"] += ingest.remap(doc)
        entry["Problems"] += await _drop_what_is_absent(archive, doc)
        try:
            await _create_imported(archive, doc, entry["Problems"])
        except CaseExists:
            entry["Status"] = "AlreadyPresent"
            continue
        except (CaseInvalid, CaseConflict) as e:
            entry["Problems"].append(f"the case is refused: {str(e)[:500]}")
            continue
        entry["Status"] = "Imported"
    return {"Cases": report_cases, "Instances": counts, "Problems": problems}


async def _create_imported(archive: Archive, doc: dict[str, Any], problems: list[str]) -> None:
    """Create an imported case as it was; a published one whose studies this board does not hold as
    de-identified (another instance of the patient here says otherwise) comes in as a draft, said in
    its problems, rather than not at all: the teacher de-identifies it and publishes."""
    try:
        await archive.create_case(doc)
    except CaseConflict as e:
        if doc.get("State") != "published":
            raise
        await archive.create_case({**doc, "State": "draft"})
        problems.append(f"imported as a draft, not published: {str(e)[:500]}")


class _BundleIngest:
    """The transform a bundle's DICOM files go through: a file that says it is de-identified
    (PatientIdentityRemoved YES: a published case's studies always are) is stored as it is, so that
    it keeps the IDs its case names; another follows the board's AnonymizeOnIngest (``anonymize``),
    and the IDs of its copy are remembered, so that the case can name the copy. Called in a thread."""

    def __init__(self, anonymize: Callable[[bytes], bytes] | None):
        self.anonymize = anonymize
        self.studies: dict[str, str] = {}      # study ID in the bundle -> study ID of the anonymized copy
        self.instances: dict[str, str] = {}    # the same for instances

    def __call__(self, data: bytes) -> bytes:
        if self.anonymize is None:
            return data
        before = _ids_and_mark(data)
        if before is None or before[1]:
            return data          # de-identified already, or not DICOM (the store's checks say so)
        out = self.anonymize(data)
        after = _ids_and_mark(out)
        if after is not None:
            self.studies[before[0][1]] = after[0][1]
            self.instances[before[0][3]] = after[0][3]
        return out

    def remap(self, doc: dict[str, Any]) -> list[str]:
        """Make ``doc`` name the anonymized copies of its files that were not de-identified; say so."""
        problems = []
        studies = doc.get("Studies")
        if isinstance(studies, list):
            for n, sid in enumerate(studies):
                if isinstance(sid, str) and sid in self.studies:
                    studies[n] = self.studies[sid]
                    problems.append(f"study {sid} in the bundle is not de-identified: AnonymizeOnIngest stored an "
                                    f"anonymized copy, study {self.studies[sid]}, which the case uses instead")
        keys = doc.get("KeyImages")
        if isinstance(keys, list):
            for ki in keys:
                if isinstance(ki, dict) and isinstance(ki.get("Instance"), str) and ki["Instance"] in self.instances:
                    ki["Instance"] = self.instances[ki["Instance"]]
        return problems


def _ids_and_mark(data: bytes) -> tuple[tuple[str, str, str, str], bool] | None:
    """The Orthanc IDs a file's UIDs give, and whether it says PatientIdentityRemoved YES; None if
    it is not readable (left to the store's own checks)."""
    import pydicom
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                             specific_tags=["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                            "PatientIdentityRemoved"])
        ids = public_ids(str(ds.get("PatientID", "") or ""), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                         str(ds.SOPInstanceUID))
        return ids, str(ds.get("PatientIdentityRemoved", "") or "").strip().upper() == "YES"
    except Exception:   # noqa: BLE001 - any unreadable header: the store refuses it with its own message
        return None


async def _drop_what_is_absent(archive: Archive, doc: dict[str, Any]) -> list[str]:
    """Leave out of ``doc`` the studies and key images whose resources are neither in the bundle
    (stored by now) nor on the board; say which."""
    problems = []
    studies = doc.get("Studies")
    if isinstance(studies, list):
        kept = []
        for sid in studies:
            if await _exists(archive, Level.STUDY, sid):
                kept.append(sid)
            else:
                problems.append(f"study {sid} is neither in the bundle nor on this board: left out of the case")
        doc["Studies"] = kept
    keys = doc.get("KeyImages")
    if isinstance(keys, list):
        kept = []
        for n, ki in enumerate(keys):
            inst = ki.get("Instance") if isinstance(ki, dict) else None
            if isinstance(ki, dict) and not await _exists(archive, Level.INSTANCE, inst):
                problems.append(f"key image {n}: instance {inst} is neither in the bundle nor on this board: "
                                "left out")
                continue
            kept.append(ki)
        doc["KeyImages"] = kept
    return problems


def report_lines(name: str, report: dict[str, Any]) -> list[str]:
    """An import report as ``pipacs import`` prints it."""
    words = {"Imported": "imported", "AlreadyPresent": "already present", "Refused": "refused"}
    i = report.get("Instances", {})
    out = [(f"{name}: case bundle: {sum(c['Status'] == 'Imported' for c in report['Cases'])} case(s) imported, "
           f"{sum(c['Status'] == 'AlreadyPresent' for c in report['Cases'])} already present, "
           f"{sum(c['Status'] == 'Refused' for c in report['Cases'])} refused; instances: {i.get('Stored', 0)} stored, "
           f"{i.get('AlreadyStored', 0)} already stored, {i.get('NotStored', 0)} not stored")]
    for c in report["Cases"]:
        out.append(f"  case {c['ID']}: {words.get(c['Status'], c['Status'])}")
        out += [f"    {p}" for p in c["Problems"]]
    out += [f"  {p}" for p in report.get("Problems", [])]
    return out
