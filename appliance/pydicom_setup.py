"""The process-wide pydicom settings, made by an explicit call at start-up, not by an import.

Every entry point that reads or writes DICOM calls ``configure()`` once before it does
(``pipacs serve`` and ``pipacs import`` in ``cli``).
"""

from __future__ import annotations

from collections.abc import MutableSequence
from typing import Any

import pydicom.config
import pydicom.values
from pydicom.charset import TEXT_VR_DELIMS, decode_bytes, default_encoding
from pydicom.datadict import add_dict_entry, add_private_dict_entry
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

__all__ = ["configure", "person_name_keeping_groups", "PersonNameAsStored"]

_convert_pn = pydicom.values.convert_PN


def configure(dictionary: dict[str, list[Any]] | None = None) -> None:
    """Turn off pydicom's value checks, for reading and for writing.

    pydicom checks every value it reads or sets against its VR (a regular expression per UID,
    per name, per date) and, as configured by default, warns (or, writing, raises). The archive
    keeps what it receives unmodified and answers with what it stored, so the checks only ever
    made log noise, at a fifth of the CPU of a C-GET or a C-FIND. Orthanc does not check either.

    ``dictionary``: the configuration's ``Dictionary`` (validated by ``config.parse_dictionary``),
    the user's own tags added to pydicom's dictionaries.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    pydicom.values.converters["PN"] = person_name_keeping_groups
    for tag_text, (vr, name, lo, hi, creator) in (dictionary or {}).items():
        tag = int(tag_text.replace(",", ""), 16)
        vm = str(lo) if lo == hi else f"{lo}-{hi or 'n'}"
        if creator:
            add_private_dict_entry(creator, tag, vr, name, vm)
        else:
            add_dict_entry(tag, vr, name, name, vm)


class PersonNameAsStored(PersonName):
    """A person name whose component groups are the stored ones, the empty trailing ones included."""

    def __init__(self, text: str, encodings: list[str] | None = None) -> None:
        super().__init__(text, encodings)
        self._groups = tuple(text.split("="))

    @property
    def components(self) -> tuple[str, ...]:
        return self._groups

    def encode(self, encodings: list[str] | None = None) -> bytes:
        """pydicom's encoding, with the trailing separators it drops put back ("=" is one byte in every
        character set DICOM allows)."""
        raw = super().encode(encodings)
        text = "=".join(self._groups)
        missing = (len(text) - len(text.rstrip("="))) - (len(raw) - len(raw.rstrip(b"=")))
        if missing > 0:
            raw += b"=" * missing
            if encodings is None or list(encodings) == list(self.encodings or []):
                self.original_string = raw
        return raw


def person_name_keeping_groups(byte_string: bytes, encodings: list[str] | None = None
                               ) -> PersonName | MutableSequence[PersonName]:
    """pydicom's PN reading, keeping a name's empty trailing component groups (``Yamada^Tarou=``,
    ``A^B==``): pydicom drops them, so what is shown or written again would lose separators the
    sender stored (DCMTK, and so Orthanc, keeps them, and its DICOM JSON shows the empty groups).
    The text is decoded first, as pydicom does: a ``=`` byte inside an ISO 2022 multi-byte character
    is no separator. Names without a ``=`` at the end of a group are pydicom's own."""
    codecs = encodings or [default_encoding]
    if b"=" not in byte_string:
        return _convert_pn(byte_string, encodings)
    texts = decode_bytes(byte_string.rstrip(b"\x00 "), codecs, TEXT_VR_DELIMS).split("\\")
    if not any(t.endswith("=") for t in texts):
        return _convert_pn(byte_string, encodings)

    def make(x: object) -> PersonName:
        if isinstance(x, PersonName):
            return x
        name = PersonNameAsStored(str(x), codecs)
        name.encode()       # its stored bytes, as pydicom's own names carry them
        return name
    return make(texts[0]) if len(texts) == 1 else MultiValue(make, texts)
