"""The process-wide pydicom settings, made by an explicit call at start-up, not by an import.

Every entry point that reads or writes DICOM calls ``configure()`` once before it does
(``pipacs serve`` and ``pipacs import`` in ``cli``).
"""

from __future__ import annotations

from typing import Any

import pydicom.config
from pydicom.datadict import add_dict_entry, add_private_dict_entry

__all__ = ["configure"]


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
    for tag_text, (vr, name, lo, hi, creator) in (dictionary or {}).items():
        tag = int(tag_text.replace(",", ""), 16)
        vm = str(lo) if lo == hi else f"{lo}-{hi or 'n'}"
        if creator:
            add_private_dict_entry(creator, tag, vr, name, vm)
        else:
            add_dict_entry(tag, vr, name, name, vm)
