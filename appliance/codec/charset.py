"""Specific Character Sets (PS3.3 C.12.1.1.2) whose text Python encodes in one step.

From pydicom's table of Python codecs, restricted to the sets without code extensions whose
codec is faithful to the repertoire (pydicom decodes ISO_IR 13 with Shift JIS, a superset,
which would let text outside the set through). The default repertoire is ASCII, strictly
(PS3.5 6.1.2.2): pydicom reads it leniently as Latin-1.
"""

from __future__ import annotations

from pydicom.charset import python_encoding

ONE_STEP_SETS = frozenset({
    "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 144", "ISO_IR 127", "ISO_IR 126",
    "ISO_IR 138", "ISO_IR 148", "ISO_IR 203", "ISO_IR 166", "ISO_IR 192", "GB18030", "GBK",
})


def one_step_codec(charset: str | None) -> str | None:
    """Python's codec for a Specific Character Set value, or None when text in it needs pydicom's
    general encoder (ISO 2022 code extensions, several values, an unknown term)."""
    if not charset or charset.strip() in ("", "ISO_IR 6"):
        return "ascii"
    term = charset.strip()
    return python_encoding[term] if term in ONE_STEP_SETS else None
