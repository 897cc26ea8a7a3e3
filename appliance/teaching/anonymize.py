"""De-identification and modification of one dataset, as Orthanc's /anonymize and /modify do it.

The attribute table is PS3.15 Annex E Table E.1-1 (Basic Application Level Confidentiality
Profile), taken from the ``dicom-anonymizer`` package, which regenerates it from each
edition of the standard; the actions and Orthanc's request options are applied here, with
pipacs's Annex E options for teaching (``deid_options``: "Options", "CaseTitle") on top.

Pure functions on pydicom datasets: nothing here reads or writes the archive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib
import io
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

from .. import __version__
from ..archive import IMPLEMENTATION_VERSION
from . import deid_options as opt

__all__ = ["AnonymizationError", "Profile", "profile", "Instructions", "UidMap", "parse_instructions",
           "anonymize_dataset", "modify_dataset", "dataset_bytes", "parse_tag", "EDITIONS", "with_defaults"]

# Orthanc's DicomVersion values, and the editions of the table we hold. Older Orthanc values get
# the oldest table we hold, which removes at least as much as theirs did.
EDITIONS = {"2026c": "dicomfields_2026c", "2024b": "dicomfields_2024b", "2023b": "dicomfields_2023",
            "2023": "dicomfields_2023", "2021b": "dicomfields_2023", "2017c": "dicomfields_2023",
            "2008": "dicomfields_2023"}
LATEST = "2026c"
STANDARD_UID_ROOT = "1.2.840.10008."
PATIENT_IDENTITY_REMOVED = 0x00120062
DEIDENTIFICATION_METHOD = 0x00120063
DEIDENTIFICATION_METHOD_CODES = 0x00120064
LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED = 0x00280303
PATIENT_AGE = 0x00101010
BURNED_IN_ANNOTATION = 0x00280301
CONTENT_SEQUENCE = 0x0040A730
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"     # Key Object Selection Document Storage
KOS_CONTENT_METHOD = "Key object content: codes, image references kept"   # DeidentificationMethod (LO)


class AnonymizationError(ValueError):
    """The request cannot be carried out as asked; the message says why (an HTTP 400)."""


# ---------------------------------------------------------------------------------- the table

@dataclass
class Profile:
    edition: str
    actions: dict[int, str]                         # tag -> one of D Z X U (combined actions resolved)
    masked: list[tuple[int, int, int, int, str]]    # repeating groups: group, elem, group mask, elem mask, action

    def action(self, tag: int) -> str | None:
        a = self.actions.get(tag)
        if a is not None:
            return a
        g, e = tag >> 16, tag & 0xFFFF
        for mg, me, gm, em, act in self.masked:
            if g & gm == mg and e & em == me:
                return act
        return None


# Combined actions (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) resolve to the one that keeps a Type 1 or 2
# attribute valid: Z where emptying is allowed, D where a value is required, U for UIDs.
_CATEGORY_ACTION = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "D",
                    "X_Z_TAGS": "Z", "X_D_TAGS": "D", "X_Z_D_TAGS": "D", "X_Z_U_STAR_TAGS": "U*"}
_PROFILES: dict[str, Profile] = {}


def profile(dicom_version: str | None = None) -> Profile:
    """The Basic Profile of one edition (Orthanc's ``DicomVersion``; latest when not given)."""
    version = str(dicom_version or LATEST)
    module = EDITIONS.get(version)
    if module is None:
        raise AnonymizationError(f"DicomVersion {version!r} is not known; use one of {', '.join(EDITIONS)}")
    if module not in _PROFILES:
        db = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.{module}")
        actions: dict[int, str] = {}
        masked: list[tuple[int, int, int, int, str]] = []
        for cat, act in _CATEGORY_ACTION.items():
            for entry in getattr(db, cat):
                if len(entry) == 2:
                    actions[(entry[0] << 16) | entry[1]] = act
                else:
                    masked.append((entry[0], entry[1], entry[2], entry[3], act))
        edition = module.removeprefix("dicomfields_")
        _PROFILES[module] = Profile(edition if edition != "2023" else "2023b", actions, masked)
    return _PROFILES[module]


# ---------------------------------------------------------------------------------- requests

def parse_tag(key: str) -> int:
    """A tag as Orthanc's requests give it: a keyword, "0010,0010", "(0010,0010)" or "00100010"."""
    k = key.strip()
    m = re.fullmatch(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?", k)
    if m:
        return int(m.group(1) + m.group(2), 16)
    t = tag_for_keyword(k)
    if t is None:
        if "[" in k or "." in k:
            raise AnonymizationError(f"paths inside sequences ({key!r}) are not supported; "
                                     "give a top-level tag")
        raise AnonymizationError(f"unknown tag {key!r}: give a DICOM keyword or a tag like 0010,0010")
    return t


@dataclass
class Instructions:
    """What one /anonymize or /modify request asks, in Orthanc's vocabulary."""
    replace: dict[int, Any] = field(default_factory=dict)
    remove: set[int] = field(default_factory=set)
    keep: set[int] = field(default_factory=set)
    keep_private_tags: bool = False
    keep_source: bool = True
    force: bool = False
    dicom_version: str | None = None
    transcode: str | None = None
    deterministic: bool = False   # pipacs: same source, same anonymized identity and UIDs, every time
    # pipacs: the Annex E options (deid_options.OPTIONS); None when the request names none, so the
    # teacher's defaults apply (``with_defaults``)
    options: frozenset[str] | None = None
    case_title: str | None = None         # pipacs: the anonymized Patient's Name of a teaching case
    date_key: bytes | None = None         # the board's secret, for the per-patient date shift


_COMMON_KEYS = {"Replace", "Remove", "Keep", "KeepPrivateTags", "KeepSource", "Force", "Transcode",
                "Asynchronous", "Synchronous", "Permissive", "Priority", "PrivateCreator", "RemovePrivateTags",
                "KeepSourceSopInstanceUid"}
_ANON_KEYS = _COMMON_KEYS | {"DicomVersion", "Deterministic", "Options", "CaseTitle"}

# Changing these makes another patient, study, series or instance: Orthanc asks for Force.
IDENTIFYING = {0x00100020: "PatientID", 0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID",
               0x00080018: "SOPInstanceUID"}


def _transfer_syntax(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise AnonymizationError(f'"Transcode" must be a transfer syntax UID as text, not {value!r}')
    return value


def parse_instructions(body: Any, anonymize: bool) -> Instructions:
    if body is None or body == "":
        body = {}
    if not isinstance(body, dict):
        raise AnonymizationError("the request body must be a JSON object")
    allowed = _ANON_KEYS if anonymize else _COMMON_KEYS
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise AnonymizationError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    if body.get("Asynchronous"):
        raise AnonymizationError("Asynchronous jobs are not offered: send the request without it "
                                 "(the answer comes when the work is done)")
    replace = body.get("Replace", {})
    if not isinstance(replace, dict):
        raise AnonymizationError('"Replace" must be an object of tag: value')
    for key in ("Remove", "Keep"):
        if not isinstance(body.get(key, []), list):
            raise AnonymizationError(f'"{key}" must be a list of tags')
    ins = Instructions(
        replace={parse_tag(k): v for k, v in replace.items()},
        remove={parse_tag(k) for k in body.get("Remove", [])},
        keep={parse_tag(k) for k in body.get("Keep", [])},
        keep_private_tags=bool(body.get("KeepPrivateTags", False)) or not bool(body.get("RemovePrivateTags", True)),
        keep_source=bool(body.get("KeepSource", True)),
        force=bool(body.get("Force", False)),
        dicom_version=body.get("DicomVersion"),
        transcode=_transfer_syntax(body.get("Transcode")),
        deterministic=bool(body.get("Deterministic", False)),
    )
    if anonymize:
        try:
            if "Options" in body:
                ins.options = opt.parse_options(body["Options"])
            ins.case_title = opt.parse_case_title(body.get("CaseTitle"))
        except opt.OptionError as e:
            raise AnonymizationError(str(e)) from None
    for t, v in ins.replace.items():
        if not isinstance(v, (str, int, float, list)):
            raise AnonymizationError(f"the value for {Tag(t)} must be a string, a number or a list")
    if not anonymize and not body.get("RemovePrivateTags", False):
        ins.keep_private_tags = True   # /modify leaves private tags alone unless asked
    touched = (set(ins.replace) | ins.remove | (ins.keep if anonymize else set())) & set(IDENTIFYING)
    if touched and not ins.force:
        names = ", ".join(IDENTIFYING[t] for t in sorted(touched))
        raise AnonymizationError(f"changing {names} makes another resource: add \"Force\": true to do it anyway")
    if anonymize:
        profile(ins.dicom_version)  # refuse an unknown edition before any work
    return ins


def with_defaults(ins: Instructions, defaults: frozenset[str], date_key: bytes | None) -> Instructions:
    """The request's options, or the teacher's defaults when it names none; with the key of the
    date shift."""
    options = ins.options if ins.options is not None else frozenset(defaults)
    return dataclasses.replace(ins, options=options, date_key=date_key)


# ---------------------------------------------------------------------------------- UIDs

class UidMap:
    """Old UID -> new UID, the same answer for the same UID during one request.

    With a salt, the answer is also the same across requests (and restarts): a keyed hash,
    so a series anonymized on Tuesday lands in the study anonymized on Monday.
    """

    def __init__(self, salt: bytes | None = None):
        self.salt = salt
        self.known: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip().rstrip("\0")
        if not uid or uid.startswith(STANDARD_UID_ROOT):
            return uid
        new = self.known.get(uid)
        if new is None:
            if self.salt is None:
                new = generate_uid(prefix=None)
            else:
                digest = hmac.new(self.salt, b"uid:" + uid.encode(), hashlib.sha256).digest()
                new = "2.25." + str(int.from_bytes(digest[:16], "big"))
            self.known[uid] = new
        return new

    def alias(self, uid: str, new: str) -> None:
        """``uid`` becomes ``new`` wherever it is met (a UID the request replaces): references to it,
        in this instance and the others of the request, follow the replacement."""
        uid = str(uid).strip().rstrip("\0")
        if uid and not uid.startswith(STANDARD_UID_ROOT):
            self.known[uid] = str(new).strip()

    def identity(self, patient_id: str) -> str:
        """The anonymized PatientID for a source patient (its first characters name the patient)."""
        key = "patient:" + patient_id
        new = self.known.get(key)
        if new is None:
            if self.salt is None:
                new = str(uuid.uuid4())
            else:
                digest = hmac.new(self.salt, key.encode(), hashlib.sha256).hexdigest()
                new = "ANON-" + digest[:12].upper()
            self.known[key] = new
        return new


# ---------------------------------------------------------------------------------- values

_TEXT_DUMMY = "ANONYMIZED"
_DUMMY: dict[str, Any] = {
    "AE": "ANONYMIZED", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101", "DT": "19000101000000",
    "TM": "000000", "DS": "0", "IS": "0", "LO": _TEXT_DUMMY, "LT": _TEXT_DUMMY, "SH": _TEXT_DUMMY,
    "ST": _TEXT_DUMMY, "UC": _TEXT_DUMMY, "UT": _TEXT_DUMMY, "PN": _TEXT_DUMMY, "UR": "http://anonymized.invalid",
    "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0, "SV": 0, "UV": 0, "AT": 0,
    "OB": b"\0\0", "OW": b"\0\0", "OD": b"\0" * 8, "OF": b"\0" * 4, "OL": b"\0" * 4, "OV": b"\0" * 8,
    "UN": b"\0\0",
}


def _empty(elem: DataElement) -> None:
    elem.value = Sequence([]) if elem.VR == "SQ" else None


def _dummy(elem: DataElement, uids: UidMap) -> None:
    vr = elem.VR
    if vr == "SQ":
        elem.value = Sequence([])
    elif vr == "UI":
        _remap(elem, uids)
    else:
        elem.value = _DUMMY.get(vr, _TEXT_DUMMY)


def _remap(elem: DataElement, uids: UidMap) -> None:
    if elem.VR != "UI" or elem.value in (None, ""):
        return
    if elem.VM > 1:
        elem.value = [uids(u) for u in elem.value]
    else:
        elem.value = uids(elem.value)


@dataclass
class _Run:
    """What the request's Annex E options change in one dataset's pass through the profile."""
    actions: dict[int, str] = field(default_factory=dict)   # tag -> K, C or S (deid_options.option_actions)
    cleaner: opt.TextCleaner | None = None
    shift: int | None = None                                # days every date moves (Modified Dates)


_NO_OPTIONS = _Run()
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
# the parts of a code item that are no free text: never cleaned (a SNOMED code is a digit run)
_CODE_PARTS = frozenset({0x00080100, 0x00080102, 0x00080103, 0x00080119, 0x00080120, 0x00080105, 0x0008010F})


def _uid_items(seq: Sequence, prof: Profile, ins: Instructions, uids: UidMap, run: _Run = _NO_OPTIONS) -> None:
    """X/Z/U*: the items keep their structure (the profile applies inside, code items stay valid)
    and every instance UID in them is replaced consistently."""
    for item in seq:
        for elem in item:
            if elem.VR == "UI" and prof.action(int(elem.tag)) is None:
                _remap(elem, uids)
        _apply_profile(item, prof, ins, uids, top=False, run=run)


def _values(elem: DataElement) -> list[Any]:
    return list(elem.value) if elem.VM > 1 else [elem.value]


def _shift(elem: DataElement, days: int) -> None:
    """Modified Dates: the dates of a DA or DT element moved; one that is no whole date is emptied
    (kept, it would tell the true date)."""
    if elem.value in (None, ""):
        return
    move = opt.shift_date if elem.VR == "DA" else opt.shift_datetime
    moved = [move(str(v), days) for v in _values(elem)]
    if any(m is None for m in moved):
        elem.value = None
    else:
        elem.value = moved if len(moved) > 1 else moved[0]


def _clean_text(elem: DataElement, cleaner: opt.TextCleaner) -> bool:
    """Clean Descriptors on one text element; False when nothing safe is left."""
    if elem.value in (None, ""):
        return True
    cleaned = [c for c in (cleaner(str(v)) for v in _values(elem)) if c]
    if not cleaned:
        return False
    elem.value = cleaned if len(cleaned) > 1 else cleaned[0]
    return True


def _clean_items(seq: Sequence, cleaner: opt.TextCleaner) -> None:
    for item in seq:
        for elem in item:
            if elem.VR == "SQ":
                _clean_items(elem.value, cleaner)
            elif elem.VR in _TEXT_VRS and int(elem.tag) not in _CODE_PARTS and not _clean_text(elem, cleaner):
                elem.value = _TEXT_DUMMY   # inside an item it may be required: a dummy, not a gap


def _cleaned(ds: Dataset, elem: DataElement, prof: Profile, ins: Instructions, uids: UidMap, run: _Run) -> bool:
    """The C action of an option: the element kept, its identifying text removed; False when it
    must take its Basic Profile action after all (no cleaner, a person's name, nothing left)."""
    if run.cleaner is None or elem.VR == "PN":
        return False
    if elem.VR == "SQ":
        for item in elem.value:
            _apply_profile(item, prof, ins, uids, top=False, run=run)
        _clean_items(elem.value, run.cleaner)
        return True
    if elem.VR in _TEXT_VRS:
        return _clean_text(elem, run.cleaner)
    return True    # a code string or a number: no free text to clean


def _apply_profile(ds: Dataset, prof: Profile, ins: Instructions, uids: UidMap, top: bool,
                   run: _Run = _NO_OPTIONS) -> None:
    for elem in list(ds):
        tag = int(elem.tag)
        if top and (tag in ins.keep or tag in ins.replace or tag in ins.remove):
            continue
        if elem.tag.is_private:
            if not ins.keep_private_tags:
                del ds[elem.tag]
            continue
        base = prof.action(tag)
        action = run.actions.get(tag, base)
        if action == "C":
            if _cleaned(ds, elem, prof, ins, uids, run):
                continue
            action = base
        if action is None or action in ("K", "S"):
            # K, or not in the table: kept, but its items still go through the profile; with
            # Modified Dates every date kept is shifted (S: a date the option keeps, its time too)
            if elem.VR == "SQ":
                for item in elem.value:
                    _apply_profile(item, prof, ins, uids, top=False, run=run)
            elif run.shift is not None and elem.VR in ("DA", "DT"):
                _shift(elem, run.shift)
            continue
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            _empty(elem)
        elif action == "D":
            _dummy(elem, uids)
        elif action == "U":
            _remap(elem, uids)
        elif action == "U*":
            if elem.VR == "SQ":
                _uid_items(elem.value, prof, ins, uids, run)
            elif elem.VR == "UI":
                _remap(elem, uids)
            else:
                _empty(elem)


def _set(ds: Dataset, tag: int, value: Any) -> None:
    """Replace (or add) a top-level attribute; the VR comes from the dictionary or the existing element."""
    t = BaseTag(tag)
    if t in ds:
        vr = ds[t].VR
    else:
        try:
            vr = dictionary_VR(t)
        except KeyError:
            raise AnonymizationError(f"{Tag(t)} is not in the DICOM dictionary; give it with a known keyword "
                                     "or change it in the file itself") from None
        vr = vr.split(" or ")[0]
    if vr == "SQ":
        if not isinstance(value, list):
            raise AnonymizationError(f"{Tag(t)} is a sequence: give a list of objects")
        items = Sequence()
        for obj in value:
            if not isinstance(obj, dict):
                raise AnonymizationError(f"the items of {Tag(t)} must be objects of tag: value")
            item = Dataset()
            for k, v in obj.items():
                _set(item, parse_tag(k), v)
            items.append(item)
        value = items
    elif isinstance(value, list):
        value = [str(v) for v in value]
    elif vr in ("US", "UL", "SS", "SL", "SV", "UV"):
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise AnonymizationError(f"{Tag(t)} takes an integer, not {value!r}") from None
    elif vr in ("FL", "FD"):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise AnonymizationError(f"{Tag(t)} takes a number, not {value!r}") from None
    elif vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        raise AnonymizationError(f"{Tag(t)} holds binary data ({vr}), which cannot be given as text: "
                                 "remove it, or change it in the file itself")
    else:
        value = str(value)
    if t in ds:
        ds[t].value = value
    else:
        ds.add_new(t, vr, value)


def _alias_replaced_uids(ds: Dataset, ins: Instructions, uids: UidMap) -> None:
    """The UIDs this request replaces (``Replace`` of a UI attribute, with Force for the identifying
    ones) are the new value in every reference to them too."""
    for tag, value in ins.replace.items():
        t = BaseTag(tag)
        if t in ds and ds[t].VR == "UI" and ds[t].VM == 1 and ds[t].value and isinstance(value, str):
            uids.alias(ds[t].value, value)


def _apply_edits(ds: Dataset, ins: Instructions) -> None:
    for tag in ins.remove:
        if BaseTag(tag) in ds:
            del ds[BaseTag(tag)]
    for tag, value in ins.replace.items():
        _set(ds, tag, value)


def _sync_meta(ds: Dataset) -> None:
    fm = ds.file_meta
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SOPClassUID" in ds:
        fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = IMPLEMENTATION_VERSION
    for t in [e.tag for e in fm if e.tag.element >= 0x0100]:   # private meta (source AE etc.) goes
        del fm[t]


# ---------------------------------------------------------------------------------- the two actions

# dates and times of the table that are no event in the patient's life: the Basic Profile's action
# under the date options too (the birth date: Table E.1-1 has no option for it; versions of codes)
_NOT_EVENT_TIMES = frozenset({0x00100030, 0x00100032, 0x00080106, 0x00080107, 0x0040DB06, 0x0040DB07})
_TEMPORAL: dict[str, frozenset[int]] = {}


def _temporal_tags(prof: Profile) -> frozenset[int]:
    """Every date, time and date-time of this edition's table, for the date options: newer editions
    list more of them than the option columns we hold, and Annex E's note 4 asks to treat dates
    and times by their VR."""
    found = _TEMPORAL.get(prof.edition)
    if found is None:
        tags = set(opt.LONGITUDINAL_DATES)
        for tag in prof.actions:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                continue
            if vr in ("DA", "DT", "TM"):
                tags.add(tag)
        found = _TEMPORAL[prof.edition] = frozenset(tags - _NOT_EVENT_TIMES)
    return found


def _run_for(ds: Dataset, prof: Profile, options: frozenset[str], ins: Instructions, source_patient: str) -> _Run:
    """The options' actions for this dataset: its own cleaner (the names and numbers it holds),
    its patient's date shift."""
    if not options:
        return _NO_OPTIONS
    actions = opt.option_actions(options)
    if "RetainLongitudinalModifiedDates" in options:
        actions.update(dict.fromkeys(_temporal_tags(prof), "S"))
    elif "RetainLongitudinalFullDates" in options:
        actions.update(dict.fromkeys(_temporal_tags(prof), "K"))
    cleaner = None
    if "C" in actions.values():
        cleaner = opt.TextCleaner.for_dataset(ds, keep_characteristics="RetainPatientCharacteristics" in options,
                                              keep_institution="RetainInstitutionIdentity" in options)
    shift = None
    if "RetainLongitudinalModifiedDates" in options:
        if ins.date_key is None:
            raise AnonymizationError("RetainLongitudinalModifiedDates needs the board's key (an internal error)")
        shift = opt.date_shift_days(ins.date_key, source_patient)
    return _Run(actions, cleaner, shift)


def _age_for(ds: Dataset) -> str | None:
    """Patient's Age from the birth date the profile empties (Annex E E.1.1 note 3), on the day of
    the study (or the series, acquisition or content)."""
    if str(ds.get("PatientAge", "") or "").strip():
        return None
    birth = str(ds.get("PatientBirthDate", "") or "")
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        on = str(ds.get(kw, "") or "")
        if on:
            return opt.age_between(birth, on)
    return None


# ---------------------------------------------------------------------------------- key objects

# A Key Object Selection document's content tree (TID 2010) holds its document title modifiers (the
# TCE delay reason: a CID 7015 code), its image references (with their frames) and a Key Object
# Description (free text, which may name the patient). The Basic Profile removes the whole Content
# Sequence (Table E.1-1: X; kept only with Clean Structured Content, which pipacs does not offer), and
# a teaching file would lose the delay reason and the frames. What is no patient data is kept: CODE
# items (their code parts only) and IMAGE / COMPOSITE / WAVEFORM references, their UIDs mapped as the
# evidence sequence's are; every other item (TEXT, PNAME, DATETIME, UIDREF...) and every other
# attribute of an item (observation date-times) is left out.
_CODE_PARTS_KEPT = ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning", "LongCodeValue",
                    "URNCodeValue")
_REFERENCE_VALUE_TYPES = frozenset({"IMAGE", "COMPOSITE", "WAVEFORM"})


def _codes(seq: Sequence) -> Sequence:
    out = Sequence()
    for item in seq:
        code = Dataset()
        for kw in _CODE_PARTS_KEPT:
            if kw in item:
                code.add(item[kw])
        out.append(code)
    return out


def _references(seq: Sequence, uids: UidMap) -> Sequence:
    out = Sequence()
    for item in seq:
        ref = Dataset()
        if "ReferencedSOPClassUID" in item:
            ref.add(item["ReferencedSOPClassUID"])
        if item.get("ReferencedSOPInstanceUID"):
            ref.ReferencedSOPInstanceUID = uids(str(item.ReferencedSOPInstanceUID))
        for kw in ("ReferencedFrameNumber", "ReferencedSegmentNumber"):
            if kw in item:
                ref.add(item[kw])
        if "ReferencedSOPSequence" in item:      # the presentation state that shows the image
            ref.ReferencedSOPSequence = _references(item.ReferencedSOPSequence, uids)
        out.append(ref)
    return out


def key_object_content(items: Sequence, uids: UidMap) -> Sequence:
    """The de-identified Content Sequence of a Key Object Selection document: its CODE items and its
    references (UIDs mapped by ``uids``), nothing else."""
    kept = Sequence()
    for item in items:
        value_type = str(item.get("ValueType", "")).upper()
        new = Dataset()
        new.RelationshipType = str(item.get("RelationshipType", "") or "CONTAINS")
        new.ValueType = value_type
        if value_type == "CODE" and item.get("ConceptCodeSequence") and item.get("ConceptNameCodeSequence"):
            new.ConceptNameCodeSequence = _codes(item.ConceptNameCodeSequence)
            new.ConceptCodeSequence = _codes(item.ConceptCodeSequence)
        elif value_type in _REFERENCE_VALUE_TYPES and item.get("ReferencedSOPSequence"):
            new.ReferencedSOPSequence = _references(item.ReferencedSOPSequence, uids)
        else:
            continue
        kept.append(new)
    return kept


def anonymize_dataset(ds: Dataset, ins: Instructions, uids: UidMap) -> Dataset:
    """De-identify ``ds`` in place per the Basic Profile and the request's Annex E options (already
    merged with the teacher's defaults, ``with_defaults``), then apply Keep/Replace/Remove."""
    burned = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    if burned == "YES" and not ins.force:
        raise AnonymizationError("this image has burned-in annotation (0028,0301 BurnedInAnnotation = YES): "
                                 "its pixels may show the patient's identity, which anonymization does not "
                                 "remove. Add \"Force\": true to anonymize it anyway, then check the images")
    prof = profile(ins.dicom_version)
    source_patient = str(ds.get("PatientID", ""))
    options = ins.options or frozenset()
    run = _run_for(ds, prof, options, ins, source_patient)
    age = _age_for(ds) if "RetainPatientCharacteristics" in options else None
    _alias_replaced_uids(ds, ins, uids)
    content = None
    if (str(ds.get("SOPClassUID", "")) == KOS_SOP_CLASS and ds.get("ContentSequence")
            and not {CONTENT_SEQUENCE} & (ins.keep | set(ins.replace) | ins.remove)):
        content = ds.ContentSequence           # the profile empties it; what is not identifying comes back
    _apply_profile(ds, prof, ins, uids, top=True, run=run)
    if content is not None:
        ds.ContentSequence = key_object_content(content, uids)
    new_id = uids.identity(source_patient)
    if 0x00100020 not in ins.keep and 0x00100020 not in ins.replace:
        ds.PatientID = new_id
    if 0x00100010 not in ins.keep and 0x00100010 not in ins.replace:
        ds.PatientName = ins.case_title or f"Anonymized^{new_id.removeprefix('ANON-')[:8]}"
    if age and not ds.get("PatientAge") and not {PATIENT_AGE} & (ins.keep | set(ins.replace) | ins.remove):
        ds.PatientAge = age
    ds[PATIENT_IDENTITY_REMOVED] = DataElement(PATIENT_IDENTITY_REMOVED, "CS", "YES")
    method = f"pipacs {__version__} - PS 3.15-{prof.edition} Table E.1-1 Basic Profile"
    if options or ins.case_title:
        # Annex E E.1.1 step 6: the profile and each option applied, as CID 7050 codes, and in words
        texts = opt.method_texts(options) + (["Case title as Patient's Name"] if ins.case_title else [])
        ds[DEIDENTIFICATION_METHOD] = DataElement(DEIDENTIFICATION_METHOD, "LO", [method[:64], *texts])
        ds[DEIDENTIFICATION_METHOD_CODES] = DataElement(DEIDENTIFICATION_METHOD_CODES, "SQ",
                                                        Sequence(opt.method_codes(options)))
    else:
        ds[DEIDENTIFICATION_METHOD] = DataElement(DEIDENTIFICATION_METHOD, "LO", method)
    if content is not None:
        said = ds[DEIDENTIFICATION_METHOD].value
        said = list(said) if ds[DEIDENTIFICATION_METHOD].VM > 1 else [said]
        ds[DEIDENTIFICATION_METHOD] = DataElement(DEIDENTIFICATION_METHOD, "LO", [*said, KOS_CONTENT_METHOD])
    if options & {"RetainLongitudinalModifiedDates", "RetainLongitudinalFullDates"}:
        ds[LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED] = DataElement(
            LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, "CS",
            "MODIFIED" if "RetainLongitudinalModifiedDates" in options else "UNMODIFIED")
    _apply_edits(ds, ins)
    _sync_meta(ds)
    return ds


def modify_dataset(ds: Dataset, ins: Instructions, uids: UidMap, new_uid_tags: tuple[int, ...]) -> Dataset:
    """Apply Replace/Remove; give new UIDs to ``new_uid_tags`` (the modified level and below) not kept."""
    _alias_replaced_uids(ds, ins, uids)
    for tag in new_uid_tags:
        t = BaseTag(tag)
        if tag in ins.keep or tag in ins.replace or t not in ds:
            continue
        _remap(ds[t], uids)
    if not ins.keep_private_tags:
        for t in [e.tag for e in ds if e.tag.is_private]:
            del ds[t]
    _apply_edits(ds, ins)
    _sync_meta(ds)
    return ds


def dataset_bytes(ds: Dataset) -> bytes:
    """A Part-10 file in the dataset's own transfer syntax (pixel data untouched)."""
    buf = io.BytesIO()
    try:
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    except Exception as e:   # noqa: BLE001 - a value its VR cannot hold: the request's or the file's
        raise AnonymizationError(f"the changed instance cannot be written: {str(e).splitlines()[0][:200]}") from None
    return buf.getvalue()


Transform = Callable[[Dataset], Dataset]
