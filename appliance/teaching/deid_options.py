"""The PS3.15 Annex E options a teaching file needs, beside the Basic Profile of ``anonymize``.

A teacher who anonymizes a case wants it to stay a case: the patient's age and sex, the
interval between the first CT and the follow-up, the study's description. The Basic Profile
removes all of them. The options of Annex E (Table E.1-1's option columns, in
``annex_e_options``) keep them, each recorded in De-identification Method Code Sequence
(0012,0064) with its PS3.16 CID 7050 code:

- ``RetainPatientCharacteristics`` (113108): age, sex, size, weight, ethnic group, smoking and
  pregnancy status kept; allergies, special needs, patient state, pre-medication kept cleaned.
  A Patient's Age absent from the file is computed from the birth date (which the profile
  empties) and the study date, as Annex E's de-identifier note 3 suggests.
- ``RetainLongitudinalModifiedDates`` (113107): every date shifted back by one number of days
  per source patient (a keyed hash of its Patient ID with the board's secret), so that two
  studies of one patient anonymized on different days keep their interval; times kept.
  Patient's Birth Date is still emptied (Table E.1-1 has no option for it).
- ``RetainLongitudinalFullDates`` (113106): dates and times kept as they are.
- ``CleanDescriptors`` (113105): descriptions, comments and protocol names kept after removing
  identifying text (see ``TextCleaner``); ``KeepDescriptors`` keeps them as they are (no code:
  it is no Annex E option, and De-identification Method says so).
- ``RetainDeviceIdentity`` (113109), ``RetainInstitutionIdentity`` (113112): the table's columns.

Pure functions on pydicom datasets and plain values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from . import annex_e_options as table

LONGITUDINAL_DATES = table.LONGITUDINAL_DATES

__all__ = ["OPTIONS", "OptionError", "parse_options", "parse_case_title", "parse_defaults", "option_actions",
           "method_codes", "method_texts", "date_shift_days", "shift_date", "shift_datetime", "age_between",
           "TextCleaner", "DEFAULTS", "CASE_TITLE_MAX", "LONGITUDINAL_DATES"]

# name -> the CID 7050 concept (None: pipacs's own choice, not an Annex E option)
OPTIONS: dict[str, Any] = {
    "RetainPatientCharacteristics": codes.DCM.RetainPatientCharacteristicsOption,
    "RetainLongitudinalModifiedDates": codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,
    "RetainLongitudinalFullDates": codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption,
    "CleanDescriptors": codes.DCM.CleanDescriptorsOption,
    "KeepDescriptors": None,
    "RetainDeviceIdentity": codes.DCM.RetainDeviceIdentityOption,
    "RetainInstitutionIdentity": codes.DCM.RetainInstitutionIdentityOption,
}
BASIC_PROFILE = codes.DCM.BasicApplicationConfidentialityProfile
# pairs that contradict each other
_EXCLUSIVE = [("RetainLongitudinalModifiedDates", "RetainLongitudinalFullDates"),
              ("CleanDescriptors", "KeepDescriptors")]
DEFAULTS: dict[str, Any] = {"Options": []}     # the teacher's defaults before they are ever set
CASE_TITLE_MAX = 64                            # a PN component group holds at most 64 characters

# how far dates move: between one and ten years back, whole days
SHIFT_MIN_DAYS = 365
SHIFT_MAX_DAYS = 3652


class OptionError(ValueError):
    """An option the request or the defaults cannot have; the message names it (an HTTP 400)."""


def parse_options(value: Any, where: str = "Options") -> frozenset[str]:
    """A list of option names, checked: unknown names, wrong types and contradictions refused."""
    if not isinstance(value, list):
        raise OptionError(f'"{where}" must be a list of option names, e.g. ["RetainPatientCharacteristics"]; '
                          f"known: {', '.join(OPTIONS)}")
    for v in value:
        if not isinstance(v, str):
            raise OptionError(f'"{where}" holds {v!r}, which is not an option name (a string)')
        if v not in OPTIONS:
            raise OptionError(f'unknown de-identification option {v!r} in "{where}"; known: {", ".join(OPTIONS)}')
    chosen = frozenset(value)
    for a, b in _EXCLUSIVE:
        if a in chosen and b in chosen:
            raise OptionError(f'"{where}" has both {a} and {b}: choose one')
    return chosen


def parse_case_title(value: Any) -> str | None:
    """The case title used as the anonymized Patient's Name (None: not given)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise OptionError('"CaseTitle" must be text, e.g. "Pneumothorax 3"')
    title = " ".join(value.split())
    if not title:
        return None
    if len(title) > CASE_TITLE_MAX:
        raise OptionError(f'"CaseTitle" is limited to {CASE_TITLE_MAX} characters (it becomes the Patient\'s Name)')
    bad = sorted({c for c in title if c in "\\^=" or ord(c) < 32 or ord(c) == 127})
    if bad:
        raise OptionError(f'"CaseTitle" cannot hold {", ".join(repr(c) for c in bad)} '
                          "(they separate the parts of a DICOM person name)")
    return title


def parse_defaults(body: Any) -> dict[str, Any]:
    """The teacher's defaults ({"Options": [...]}), checked; what GET /pipacs/deidentification answers."""
    if not isinstance(body, dict):
        raise OptionError('expected {"Options": ["RetainPatientCharacteristics", ...]}')
    unknown = sorted(k for k in body if k != "Options")
    if unknown:
        raise OptionError(f"unknown field(s) {', '.join(unknown)} in the de-identification defaults; known: Options")
    return {"Options": sorted(parse_options(body.get("Options", []), "Options"))}


def option_actions(options: Iterable[str]) -> dict[int, str]:
    """Tag -> the action an option puts in place of the Basic Profile's: K keep, C clean text,
    S shift dates (keep times)."""
    opts = set(options)
    out: dict[int, str] = {}
    if "KeepDescriptors" in opts:
        out.update(dict.fromkeys(table.DESCRIPTORS, "K"))
    if "CleanDescriptors" in opts:
        out.update(dict.fromkeys(table.DESCRIPTORS, "C"))
    if "RetainDeviceIdentity" in opts:
        out.update(dict.fromkeys(table.DEVICE_IDENTITY, "K"))
    if "RetainInstitutionIdentity" in opts:
        out.update(dict.fromkeys(table.INSTITUTION_IDENTITY, "K"))
    if "RetainPatientCharacteristics" in opts:
        out.update(dict.fromkeys(table.PATIENT_CHARACTERISTICS_KEEP, "K"))
        for t in table.PATIENT_CHARACTERISTICS_CLEAN:   # kept verbatim if descriptors are kept
            if out.get(t) != "K":
                out[t] = "C"
    if "RetainLongitudinalFullDates" in opts:
        out.update(dict.fromkeys(table.LONGITUDINAL_DATES, "K"))
    if "RetainLongitudinalModifiedDates" in opts:
        out.update(dict.fromkeys(table.LONGITUDINAL_DATES, "S"))
    return out    # (anonymize adds the dates and times its edition's table lists beyond these)


def _code_item(concept: Any) -> Dataset:
    item = Dataset()
    item.CodeValue = concept.value
    item.CodingSchemeDesignator = concept.scheme_designator
    item.CodeMeaning = concept.meaning
    return item


def method_codes(options: Iterable[str]) -> list[Dataset]:
    """De-identification Method Code Sequence items: the Basic Profile, then each option applied."""
    opts = set(options)
    return [_code_item(BASIC_PROFILE)] + [_code_item(OPTIONS[n]) for n in OPTIONS if n in opts and OPTIONS[n]]


def method_texts(options: Iterable[str]) -> list[str]:
    """De-identification Method values (LO, 64 characters each) for the options applied."""
    opts = set(options)
    texts = [OPTIONS[n].meaning for n in OPTIONS if n in opts and OPTIONS[n]]
    if "KeepDescriptors" in opts:
        texts.append("Descriptors kept unchanged (not cleaned)")
    return [t[:64] for t in texts]


# ---------------------------------------------------------------------------------- dates

def date_shift_days(key: bytes, patient_id: str) -> int:
    """The (negative) number of days every date of this source patient moves: the same for the
    same patient and board secret, whenever and however often it is anonymized."""
    digest = hmac.new(key, b"date-shift:" + patient_id.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
    span = SHIFT_MAX_DAYS - SHIFT_MIN_DAYS + 1
    return -(SHIFT_MIN_DAYS + int.from_bytes(digest[:8], "big") % span)


def _parse_da(text: str) -> dt.date | None:
    t = text.strip()
    if len(t) == 10 and t[4] == "." and t[7] == ".":   # ACR-NEMA form some old files carry
        t = t.replace(".", "")
    if len(t) != 8 or not t.isdigit():
        return None
    try:
        return dt.date(int(t[:4]), int(t[4:6]), int(t[6:]))
    except ValueError:
        return None


def shift_date(text: str, days: int) -> str | None:
    """A DA value moved by ``days``; None when it is no whole date (then it cannot be kept)."""
    d = _parse_da(text)
    if d is None:
        return None
    try:
        moved = d + dt.timedelta(days=days)
    except OverflowError:
        return None
    return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}"


def shift_datetime(text: str, days: int) -> str | None:
    """A DT value whose date part moves by ``days``, its time and offset kept; None when it has no
    whole date (a year or a month alone would be kept true)."""
    t = text.strip()
    if len(t) < 8:
        return None
    date = shift_date(t[:8], days)
    return None if date is None else date + t[8:]


def age_between(birth: str, on: str) -> str | None:
    """Patient's Age (AS) on date ``on`` for one born on ``birth``: days under a month, weeks
    under three months, months under two years, then years; None when either is no date."""
    b, d = _parse_da(birth), _parse_da(on)
    if b is None or d is None or d < b:
        return None
    days = (d - b).days
    years = d.year - b.year - ((d.month, d.day) < (b.month, b.day))
    months = (d.year - b.year) * 12 + d.month - b.month - (d.day < b.day)
    if days < 31:
        value, unit = days, "D"
    elif days < 90:
        value, unit = days // 7, "W"
    elif years < 2:
        value, unit = months, "M"
    else:
        value, unit = years, "Y"
    return f"{min(value, 999):03d}{unit}"


# ---------------------------------------------------------------------------------- text

_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|m[aä]r(?:ch|z)?|apr(?:il)?|ma[iy]|june?|july?|aug(?:ust)?|"
           r"sept?(?:ember)?|o[ck]t(?:ober)?|nov(?:ember)?|de[cz](?:ember)?)")
_DATE_PATTERNS = [
    r"\b(?:1[89]|20)\d\d[-./]?(?:0[1-9]|1[0-2])[-./]?(?:0[1-9]|[12]\d|3[01])\b",      # 20240102, 2024-01-02
    r"\b\d{1,2}[-./]\d{1,2}[-./](?:\d{4}|\d{2})\b",                                  # 02/01/2024, 1.2.24
    rf"\b\d{{1,2}}\.?\s*{_MONTHS}\.?,?\s*(?:\d{{4}}|\d{{2}})?\b",                     # 2 Jan 2024
    rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b",                     # January 2, 2024
]
# a run of at least 5 digits, with the separators of phone numbers and record numbers inside
_DIGIT_RUN = r"(?<![\w.])\+?(?:\d[\s\-./()]?){4,}\d(?![\w])|\b[A-Za-z]{0,4}\d{5,}[A-Za-z0-9]*\b"
# a title and the name after it, case as written ("MS lesions" is no Ms. Lesions: that title needs its dot)
_TITLES = (r"(?-i:\b(?:(?:Dr|DR|Prof|PROF|Herr|Frau|Mme|Mlle)\b\.?|(?:Mr|MR|Mrs|MRS|Ms|MS|Sr|Sra)\.)"
           r"\s*[A-ZÀ-Ý][\w'’-]*)")
_AGE_SEX = [r"\b\d{1,3}[\s-]?(?:y/?o|yrs?|years?(?:[- ]old)?|jährig|ans?)\b", r"(?-i:\b\d{1,3}\s?[MF]\b)"]
_ID_KEYWORDS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "AdmissionID", "IssuerOfPatientID",
                "MedicalRecordLocator", "RequestedProcedureID", "PerformedProcedureStepID",
                "ScheduledProcedureStepID", "PatientAddress", "PatientTelephoneNumbers", "MilitaryRank",
                "BranchOfService", "RegionOfResidence", "CountryOfResidence")
_INSTITUTION_KEYWORDS = ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName")


@dataclass
class TextCleaner:
    """Removes identifying text from a descriptor: the names of every person the file names
    (the patient's parts matched case-insensitively as whole words), titles with the word after
    them ("Dr. Smith"), the patient's identifiers, accession and study numbers, dates written in
    any usual form, runs of five digits or more (phone and record numbers), age and sex written
    out ("55F", "42 yo") unless the patient's characteristics are kept, and the institution's
    names unless its identity is kept. What is left is tidied; empty means nothing safe was left."""
    pattern: re.Pattern[str]

    @classmethod
    def for_dataset(cls, ds: Dataset, keep_characteristics: bool = False,
                    keep_institution: bool = False) -> TextCleaner:
        literals: set[str] = set()
        words: set[str] = set()
        for elem in ds.iterall():
            if elem.VR == "PN" and elem.value not in (None, ""):
                for v in (elem.value if elem.VM > 1 else [elem.value]):
                    for part in re.split(r"[\^=\s,.]+", str(v)):
                        if len(part) >= 2:
                            words.add(part)
        keywords = _ID_KEYWORDS + (() if keep_institution else _INSTITUTION_KEYWORDS)
        for kw in keywords:
            value = ds.get(kw)
            if value in (None, ""):
                continue
            for v in (value if isinstance(value, (list, tuple)) or getattr(value, "VM", 1) > 1 else [value]):
                s = str(v).strip()
                if len(s) >= 3:
                    literals.add(s)
        parts = [rf"(?<!\w){re.escape(x)}(?!\w)" for x in sorted(literals, key=len, reverse=True)]
        parts += [rf"\b{re.escape(w)}\b" for w in sorted(words, key=len, reverse=True)]
        parts += [_TITLES, *_DATE_PATTERNS, _DIGIT_RUN]
        if not keep_characteristics:
            parts += _AGE_SEX
        return cls(re.compile("|".join(f"(?:{p})" for p in parts), re.IGNORECASE))

    def __call__(self, text: str) -> str:
        # every step linear in the length of the text: blanks are collapsed first, so no pattern rescans a long run
        out = re.sub(r"[ \t]+", " ", self.pattern.sub(" ", text))
        out = re.sub(r"\( ?\)|\[ ?\]", " ", out)
        out = re.sub(r" ?([-,;:/])(?: ?[-,;:/])+", r" \1", out)    # separators left side by side
        out = re.sub(r" ([,;:])", r"\1", out)
        out = re.sub(r" {2,}", " ", out)
        out = re.sub(r" ?\r?\n ?", "\n", out)                   # line breaks of a comment kept
        return out.strip(" \t\r\n-,;:/.#_*")
