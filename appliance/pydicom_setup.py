"""The process-wide pydicom settings, made by an explicit call at start-up, not by an import.

Every entry point that reads or writes DICOM calls ``configure()`` once before it does
(``pipacs serve`` and ``pipacs import`` in ``cli``).
"""

from __future__ import annotations

import pydicom.config

__all__ = ["configure"]


def configure() -> None:
    """Turn off pydicom's value checks, for reading and for writing.

    pydicom checks every value it reads or sets against its VR (a regular expression per UID,
    per name, per date) and, as configured by default, warns (or, writing, raises). The archive
    keeps what it receives unmodified and answers with what it stored, so the checks only ever
    made log noise, at a fifth of the CPU of a C-GET or a C-FIND. Orthanc does not check either.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
