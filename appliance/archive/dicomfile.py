"""Turn received bytes into what the archive stores: a checked Part-10 file and its index values.

pydicom reads truncated data without complaint (a value cut short is returned short),
so the element structure is walked here first: every length must fit inside the data.
Pixel data is never decoded on the way in.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from .. import charsets
from ..codec.part10 import (
    DEFAULT_BUDGET,
    IMPLEMENTATION_VERSION,
    PREAMBLE,
    Budget,
    InvalidDicom,
    OverBudget,
    Walker,
    file_meta_bytes,
    guess_encoding,
    inflate,
    part10_file,
    read_meta,
    uid_text,
)
from .model import INDEXED_TAGS, Level, public_ids, tag_key

# The byte-level parts (the structure check, the file meta group) are appliance.codec's;
# the names the rest of the appliance used from here are kept.
__all__ = [
    "IMPLEMENTATION_VERSION",
    "PREAMBLE",
    "Budget",
    "InvalidDicom",
    "OverBudget",
    "STORED_FILE_BUDGET",
    "ParsedInstance",
    "check_size",
    "check_structure",
    "element_text",
    "file_meta_bytes",
    "parse_instance",
    "part10_file",
    "read_dataset",
    "decode_every_element",
]

# Files read back from the archive's own folder (found without an index row at start, or read
# again): they passed the budget in force when they were stored, which may have been larger
# than today's; only the structure and what pydicom can read are checked again.
STORED_FILE_BUDGET = Budget(max_instance_bytes=2**62, max_inflation_ratio=2**30, max_elements=100_000_000,
                            max_depth=1000)

MAX_MAIN_TAG_LENGTH = 256  # Orthanc leaves longer values out of the main tags (they are "TooLong")

@dataclass
class ParsedInstance:
    data: bytes                       # the Part-10 file to store
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    patient_id: str
    study_uid: str
    series_uid: str
    main_tags: dict[Level, dict[str, str]] = field(default_factory=dict)
    pixel_data_offset: int | None = None
    # PatientIdentityRemoved is YES: a student may see it once the teacher releases its study
    identity_removed: bool = False

    @property
    def ids(self) -> tuple[str, str, str, str]:
        return public_ids(self.patient_id, self.study_uid, self.series_uid, self.sop_instance_uid)


def element_text(elem: DataElement) -> str | None:
    """A value as Orthanc shows it in MainDicomTags and /tags: text, backslash-separated; None if binary."""
    vr = elem.VR
    if vr == "SQ" or vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW", "US or SS or OW"):
        return None
    v = elem.value
    if v is None:
        return ""
    if vr == "AT":
        vals = v if isinstance(v, (list, MultiValue)) else [v]
        return "\\".join(f"{int(t) >> 16:04x},{int(t) & 0xFFFF:04x}" for t in vals)
    if isinstance(v, (bytes, bytearray)):
        return None
    if isinstance(v, (list, MultiValue)):
        parts = [_scalar_text(x) for x in v]
        return "\\".join(parts)
    return _scalar_text(v)


def _scalar_text(x) -> str:
    orig = getattr(x, "original_string", None)  # DS and IS keep the text they were read from
    if isinstance(orig, str):
        return orig.strip(" \x00")
    if isinstance(x, float) and not hasattr(x, "original_string"):
        return format(x, ".17g")  # FL/FD as DCMTK (and so Orthanc) prints them
    return str(x).rstrip(" \x00")


def check_size(size: int, budget: Budget) -> None:
    """OverBudget for an instance larger than MaximumInstanceSize."""
    if size > budget.max_instance_bytes:
        raise OverBudget(f"the instance has {size / 2**20:.0f} MB, more than the "
                         f"{budget.max_instance_bytes // 2**20} MB of MaximumInstanceSize")


@dataclass
class _Walked:
    """What ``_walk_instance`` found: where the dataset is and how it is encoded."""
    has_preamble: bool
    meta: dict[int, bytes]
    ds_start: int
    transfer_syntax: str
    implicit: bool
    little: bool
    body: bytes | memoryview   # the dataset's bytes (inflated, for the deflated transfer syntax)
    walker: Walker


def check_structure(data: bytes, budget: Budget = DEFAULT_BUDGET) -> None:
    """The byte-level half of ``parse_instance`` (meta information, size, inflation, the walk
    of every element within the budget), without pydicom: what must pass before anything
    hands the bytes to pydicom (an anonymizer on ingest). Raises InvalidDicom (OverBudget)."""
    _walk_instance(data, budget)


def _walk_instance(data: bytes, budget: Budget) -> _Walked:
    if len(data) < 16:
        raise InvalidDicom(f"not a DICOM file: only {len(data)} bytes")
    check_size(len(data), budget)
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    meta_start = 132 if has_preamble else 0
    meta: dict[int, bytes] = {}
    ds_start = meta_start
    if has_preamble or data[:2] == b"\x02\x00":
        meta, ds_start = read_meta(data, meta_start)
    else:
        first_group = min(struct.unpack_from("<H", data, 0)[0], struct.unpack_from(">H", data, 0)[0])
        if first_group > 0x0010:
            raise InvalidDicom("not a DICOM file: no 'DICM' marker, and the data does not start like a DICOM "
                               "dataset")
    ts = uid_text(meta[0x00020010]) if 0x00020010 in meta else ""
    if ts:
        try:
            ts_uid = pydicom.uid.UID(ts)
            implicit, little = ts_uid.is_implicit_VR, ts_uid.is_little_endian
        except ValueError:
            raise InvalidDicom(f"unknown transfer syntax {ts}") from None
    else:
        ts = guess_encoding(data, ds_start)
        implicit, little = pydicom.uid.UID(ts).is_implicit_VR, pydicom.uid.UID(ts).is_little_endian
    if ds_start >= len(data):
        raise InvalidDicom("the file holds no dataset after its meta information")
    if little and ts != DeflatedExplicitVRLittleEndian:
        actual = guess_encoding(data, ds_start)
        if actual in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) and pydicom.uid.UID(actual).is_implicit_VR != implicit:
            # The meta information names the wrong VR encoding (seen in the wild): trust the
            # data, as pydicom does, and store the file with a corrected meta group.
            implicit = not implicit
            if ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                ts = actual
                meta.pop(0x00020010, None)

    body: bytes | memoryview = memoryview(data)[ds_start:]
    if ts == DeflatedExplicitVRLittleEndian:   # inflated once, within the budget, and read from there
        body = inflate(body, budget.inflation_limit(len(body)), "the deflated dataset")
    walker = Walker(body, implicit, little, budget)
    try:
        walker.dataset(0, len(body), implicit)
    except RecursionError:   # a MaximumSequenceDepth above what Python's stack allows
        raise OverBudget("sequences nested too deep to be read (MaximumSequenceDepth)") from None


    return _Walked(has_preamble, meta, ds_start, ts, implicit, little, body, walker)


def parse_instance(data: bytes, budget: Budget = DEFAULT_BUDGET) -> ParsedInstance:
    """Check ``data`` (a Part-10 file or a bare dataset) and extract what the index keeps.

    Refused (InvalidDicom, OverBudget) unless it is within ``budget`` and pydicom can read
    every element of it: what is stored must be servable."""
    w = _walk_instance(data, budget)
    has_preamble, meta, ds_start, ts = w.has_preamble, w.meta, w.ds_start, w.transfer_syntax
    implicit, little, body, walker = w.implicit, w.little, w.body, w.walker

    try:
        ds = pydicom.filereader.read_dataset(io.BytesIO(body), implicit, little,
                                             stop_when=lambda tag, vr, length: tag == 0x7FE00010,
                                             parent_encoding=charsets.python_codec())
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on malformed data
        raise InvalidDicom(f"cannot read the dataset: {type(e).__name__}" if isinstance(e, RecursionError)
                           else f"cannot read the dataset: {e}") from None

    def text(tag: int) -> str:
        elem = ds.get(tag)
        if elem is None:
            return ""
        try:
            return element_text(elem) or ""
        except Exception:  # noqa: BLE001 - a malformed value is left out, not fatal
            return ""

    sop_uid = text(0x00080018)
    study_uid, series_uid = text(0x0020000D), text(0x0020000E)
    missing = [n for n, v in (("SOPInstanceUID", sop_uid), ("StudyInstanceUID", study_uid),
                              ("SeriesInstanceUID", series_uid)) if not v]
    if missing:
        raise InvalidDicom(f"not a storable DICOM instance: no {', '.join(missing)}")
    sop_class = text(0x00080016) or uid_text(meta.get(0x00020002, b""))
    if not sop_class:
        raise InvalidDicom("not a storable DICOM instance: no SOPClassUID")
    for name, value in (("SOPInstanceUID", sop_uid), ("StudyInstanceUID", study_uid),
                        ("SeriesInstanceUID", series_uid), ("SOPClassUID", sop_class)):
        if not _is_uid_text(value):
            raise InvalidDicom(f"not a storable DICOM instance: its {name} {value[:80]!r} is not a UID (at most 64 "
                               "characters of the default character set)")

    main: dict[Level, dict[str, str]] = {}
    for lvl, tags in INDEXED_TAGS.items():
        vals = {}
        for tag, _kw in tags:
            if tag in ds:
                try:
                    t = element_text(ds[tag])
                except Exception:  # noqa: BLE001 - a malformed value is left out, not fatal
                    t = None
                if t is not None and len(t) <= MAX_MAIN_TAG_LENGTH:
                    vals[tag_key(tag)] = t
        main[lvl] = vals

    meta_ok = (has_preamble and 0x00020010 in meta and 0x00020003 in meta
               and uid_text(meta[0x00020003]) == sop_uid)
    if meta_ok:
        out = data
        pixel_offset = None if walker.pixel_offset is None else ds_start + walker.pixel_offset
    else:
        out, new_start = _with_new_meta(data, ds_start, ts, sop_class, sop_uid)
        pixel_offset = None if walker.pixel_offset is None else new_start + walker.pixel_offset
    if ts == DeflatedExplicitVRLittleEndian:
        pixel_offset = None

    return ParsedInstance(
        data=out, transfer_syntax=ts, sop_class_uid=sop_class, sop_instance_uid=sop_uid,
        patient_id=text(0x00100020), study_uid=study_uid, series_uid=series_uid,
        main_tags=main, pixel_data_offset=pixel_offset,
        identity_removed=text(0x00120062).strip().upper() == "YES",
    )


def _is_uid_text(value: str) -> bool:
    """A UI value the archive can index and write in a file meta group: printable ASCII, at most 64
    characters. Orthanc keeps UIDs with letters or leading zeros, seen in the wild, and so do we;
    a byte outside ASCII cannot be written back as a UI at all."""
    return len(value) <= 64 and value.isascii() and value.isprintable()


def _with_new_meta(data: bytes, ds_start: int, ts: str, sop_class: str, sop_uid: str) -> tuple[bytes, int]:
    """Preamble + a fresh, correct file meta group + the dataset bytes as received."""
    head = PREAMBLE + file_meta_bytes(sop_class, sop_uid, ts)
    return head + bytes(memoryview(data)[ds_start:]), len(head)


def read_dataset(data: bytes, stop_before_pixels: bool = False) -> Dataset:
    """A stored file as a pydicom Dataset (for /tags and friends), its text read with the
    DefaultEncoding when it has no Specific Character Set (Orthanc's rule)."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
    with_default_encoding(ds)
    return ds


def with_default_encoding(ds: Dataset) -> Dataset:
    """``ds`` (just read: its elements not decoded yet) decodes its text, and its sequences' items
    theirs, with the DefaultEncoding when it has no Specific Character Set. pydicom's dcmread has
    no argument for it (its ``read_dataset`` has: ``parent_encoding``), so the same attribute is set
    that ``read_dataset`` gives the Dataset it makes (the text is written back with it too, by
    anonymize and modify), and the original character set its elements are decoded with; items
    inherit it as they are read."""
    if 0x00080005 not in ds:
        codec = charsets.python_codec()
        ds._parent_encoding = codec
        ds.set_original_encoding(*ds.original_encoding, codec)
    return ds


def decode_every_element(ds: Dataset) -> None:
    """Decode every element, into sequences: pydicom reads a file lazily, so an element it cannot
    decode (an unknown VR such as XX) fails only when reached (in the middle of an answer) or is
    written back raw (by anonymize and modify). Raises what pydicom raises."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                decode_every_element(item)
