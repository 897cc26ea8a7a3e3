"""Change the transfer syntax of a stored instance: for peers and clients that do not take the stored one."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from .render import DecodeError, load

# What pydicom can write with the codecs we ship (pylibjpeg-rle, pylibjpeg-openjpeg).
ENCODABLE = {
    ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
    RLELossless, JPEG2000Lossless,
}


class UnsupportedTranscode(ValueError):
    """A target syntax we cannot write; the message lists the ones we can."""


def transcode(part10: bytes, target: str) -> bytes:
    """The instance re-encoded in ``target``; the same bytes if it already is."""
    target_uid = UID(target)
    if target not in ENCODABLE:
        raise UnsupportedTranscode(f"cannot write transfer syntax {target} ({target_uid.name}); "
                                   f"available: {', '.join(sorted(ENCODABLE))}")
    ds = load(part10)
    source = UID(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    if source == target_uid:
        return part10
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if source.is_compressed:
                ds.decompress(generate_instance_uid=False)  # same instance, other encoding
            elif not source.is_little_endian and target_uid.is_little_endian:
                to_little_endian(ds)
            if target_uid.is_compressed:
                ds.compress(target_uid, generate_instance_uid=False)
            else:
                ds.file_meta.TransferSyntaxUID = target_uid
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
    except Exception as e:   # noqa: BLE001 - a value pydicom cannot write is the data's problem, said as such
        raise DecodeError(f"cannot transcode from {source.name} to {target_uid.name}: "
                          f"{str(e).splitlines()[0][:200]}") from None
    return buf.getvalue()


# bytes per word of the binary VRs whose words follow the byte order (OB and UN are bytes)
_WORD = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_PIXEL_DATA = 0x7FE00010


def to_little_endian(ds: Dataset) -> None:
    """An Explicit VR Big Endian dataset made ready to be written little endian.

    Big endian is retired, and few peers take it, but old teaching files still carry it.
    pydicom writes the values it has parsed in any byte order but copies unparsed ones and
    binary words as they are, so every value is parsed first, binary words are swapped, and
    the pixels are re-encoded from their decoded values.
    """
    for elem in ds.iterall():   # parses each value in the file's own byte order
        size = _WORD.get(elem.VR)
        if size and elem.tag != _PIXEL_DATA and isinstance(elem.value, bytes) and len(elem.value) % size == 0:
            elem.value = np.frombuffer(elem.value, dtype=f">u{size}").astype(f"<u{size}").tobytes()
    if _PIXEL_DATA in ds and int(ds.get("BitsAllocated", 8) or 8) > 1:
        arr = pydicom.pixels.pixel_array(ds, raw=True)   # stored values, colour model untouched
        data = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes()
        ds.PixelData = data + b"\0" * (len(data) % 2)
        if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
            ds.PlanarConfiguration = 0   # the decoded array is pixel by pixel
    ds.set_original_encoding(ds.original_encoding[0], True)


def decompressed(part10: bytes) -> bytes:
    """Explicit VR Little Endian: what every DICOM node accepts."""
    return transcode(part10, ExplicitVRLittleEndian)


__all__ = ["transcode", "decompressed", "UnsupportedTranscode", "ENCODABLE", "pydicom"]
