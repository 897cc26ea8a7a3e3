"""Orthanc's ``DefaultEncoding``: the character set of a stored file that has no Specific
Character Set (0008,0005). Orthanc's names (its ``Encoding`` enumeration) and the Python codec
pydicom decodes each with.

One process-wide value, as Orthanc's is: set from the configuration at start, changed by
``PUT /tools/default-encoding`` (in memory only, as Orthanc does: a restart goes back to the
configuration). No dependency on the rest of the appliance, so the configuration can check
names against it.
"""

from __future__ import annotations

import threading

__all__ = ["DICOM_TERMS", "ENCODINGS", "canonical", "current", "python_codec", "set_current",
           "written_term"]

# Orthanc's name -> the codec pydicom uses for the DICOM term Orthanc writes for it
ENCODINGS: dict[str, str] = {
    "Ascii": "iso8859",           # ISO_IR 6: pydicom's own default (bytes above 127 read as Latin-1)
    "Utf8": "utf_8",              # ISO_IR 192
    "Latin1": "latin_1",          # ISO_IR 100
    "Latin2": "iso8859_2",        # ISO_IR 101
    "Latin3": "iso8859_3",        # ISO_IR 109
    "Latin4": "iso8859_4",        # ISO_IR 110
    "Latin5": "iso8859_9",        # ISO_IR 148
    "Cyrillic": "iso8859_5",      # ISO_IR 144
    "Windows1251": "cp1251",      # no DICOM term; Orthanc reads it as Windows-1251
    "Arabic": "iso8859_6",        # ISO_IR 127
    "Greek": "iso8859_7",         # ISO_IR 126
    "Hebrew": "iso8859_8",        # ISO_IR 138
    "Thai": "iso8859_11",         # ISO_IR 166
    "Japanese": "shift_jis",      # ISO_IR 13
    "Chinese": "GB18030",         # GB18030
    "Korean": "euc_kr",           # ISO 2022 IR 149
    "JapaneseKanji": "iso2022_jp",  # ISO 2022 IR 87
    "SimplifiedChinese": "GBK",   # ISO 2022 IR 58 (GB 2312)
}

DEFAULT = "Latin1"    # Orthanc's default

# the Specific Character Set that says the same (Windows1251 has none); pydicom writes a file's
# text in Latin-1 when it has none, so a copy made of a file in another one must name it
DICOM_TERMS: dict[str, str] = {
    "Ascii": "ISO_IR 6", "Utf8": "ISO_IR 192", "Latin1": "ISO_IR 100", "Latin2": "ISO_IR 101",
    "Latin3": "ISO_IR 109", "Latin4": "ISO_IR 110", "Latin5": "ISO_IR 148", "Cyrillic": "ISO_IR 144",
    "Arabic": "ISO_IR 127", "Greek": "ISO_IR 126", "Hebrew": "ISO_IR 138", "Thai": "ISO_IR 166",
    "Japanese": "ISO_IR 13", "Chinese": "GB18030", "Korean": "\\ISO 2022 IR 149",
    "JapaneseKanji": "\\ISO 2022 IR 87", "SimplifiedChinese": "\\ISO 2022 IR 58",
}

_lock = threading.Lock()
_current = [DEFAULT]


def canonical(name: str) -> str | None:
    """Orthanc's spelling of an encoding name given in any case (``utf8`` -> ``Utf8``), or None."""
    for known in ENCODINGS:
        if name.lower() == known.lower():
            return known
    return None


def current() -> str:
    """The DefaultEncoding in force (Orthanc's name)."""
    return _current[0]


def set_current(name: str) -> str:
    """Make ``name`` (any case) the DefaultEncoding; its Orthanc spelling, or ValueError."""
    known = canonical(name)
    if known is None:
        raise ValueError(f"unknown encoding {name!r}: one of {', '.join(ENCODINGS)}")
    with _lock:
        _current[0] = known
    return known


def python_codec(name: str | None = None) -> str:
    """The codec pydicom decodes text with for ``name`` (by default, the encoding in force)."""
    return ENCODINGS[name or current()]


def written_term(name: str | None = None) -> str | None:
    """The Specific Character Set a copy of a file that has none must carry so that its text,
    written by pydicom, keeps what it said (None: Latin-1 and ASCII, which pydicom writes as they
    are read, and Windows1251, which DICOM cannot name)."""
    name = name or current()
    if name in ("Latin1", "Ascii"):
        return None
    return DICOM_TERMS.get(name)
