"""Part 5 VR conversion at the byte level: Explicit VR Little Endian to Implicit VR Little Endian.

C-GET and C-MOVE send stored files to peers that often take only Implicit VR; pydicom would
decode the whole dataset and write it again, here only the element headers are rewritten.
"""

from __future__ import annotations

import struct

from .part10 import ITEM, ITEM_END, LONG_VRS, SEQ_END, UNDEFINED


class _CannotConvert(Exception):
    pass


def explicit_to_implicit_le(body: bytes | memoryview) -> bytes | None:
    """An Explicit VR Little Endian dataset rewritten as Implicit VR Little Endian, at the byte level.

    Values are little endian in both, so only element headers change (and the lengths of
    sequences and items that hold them). None when the data is not simple to convert
    (encapsulated pixel data, UN of undefined length, malformed): the caller then lets pydicom
    decode and re-encode it.
    """
    mv = memoryview(body)
    try:
        out, end = _convert(mv, 0, len(mv), until=None)
    except (_CannotConvert, struct.error, IndexError):
        return None
    return bytes(out) if end == len(mv) else None


def _convert(mv: memoryview, pos: int, end: int, until: int | None) -> tuple[bytearray, int]:
    """Convert elements from ``pos`` up to ``end`` or up to the delimiter tag ``until``."""
    out = bytearray()
    while pos < end:
        group, elem = struct.unpack_from("<HH", mv, pos)
        tag = (group << 16) | elem
        if tag == until:
            return out, pos + 8       # the delimiter (and its zero length), left for the caller to write
        if group == 0xFFFE:
            raise _CannotConvert()
        vr = bytes(mv[pos + 4:pos + 6])
        if vr in LONG_VRS:
            length = struct.unpack_from("<I", mv, pos + 8)[0]
            vstart = pos + 12
        else:
            if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                raise _CannotConvert()
            length = struct.unpack_from("<H", mv, pos + 6)[0]
            vstart = pos + 8
        if vr == b"SQ":
            value, pos = _convert_sequence(mv, vstart, length)
        elif length == UNDEFINED:
            raise _CannotConvert()    # encapsulated pixel data or UN sequence
        else:
            if vstart + length > end:
                raise _CannotConvert()
            value = mv[vstart:vstart + length]
            pos = vstart + length
        if elem == 0 and group > 6:
            continue                  # retired group lengths, dropped as pydicom drops them
        if vr == b"SQ" and length == UNDEFINED:
            out += struct.pack("<HHI", group, elem, UNDEFINED) + value
        else:
            out += struct.pack("<HHI", group, elem, len(value)) + value
    if until is not None:
        raise _CannotConvert()
    return out, pos


def _convert_sequence(mv: memoryview, pos: int, length: int) -> tuple[bytearray, int]:
    """The items of a sequence, converted; with the sequence delimiter when of undefined length."""
    out = bytearray()
    end = len(mv) if length == UNDEFINED else pos + length
    while pos < end:
        group, elem, item_len = struct.unpack_from("<HHI", mv, pos)
        tag = (group << 16) | elem
        if tag == SEQ_END and length == UNDEFINED:
            out += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
            return out, pos + 8
        if tag != ITEM:
            raise _CannotConvert()
        if item_len == UNDEFINED:
            content, pos = _convert(mv, pos + 8, len(mv), until=ITEM_END)
            out += struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + content
            out += struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        else:
            content, after = _convert(mv, pos + 8, pos + 8 + item_len, until=None)
            out += struct.pack("<HHI", 0xFFFE, 0xE000, len(content)) + content
            pos = after
    if length == UNDEFINED:
        raise _CannotConvert()
    return out, pos
