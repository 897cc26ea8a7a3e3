"""Change the transfer syntax of a stored instance: for peers and clients that do not take the stored one."""

from __future__ import annotations

import io
import warnings

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian

from .render import DecodeError, load

# What pydicom can write with the codecs we ship (pylibjpeg-rle, pylibjpeg-openjpeg).
ENCODABLE = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5",                     # RLE Lossless
    "1.2.840.10008.1.2.4.90",                  # JPEG 2000 Lossless
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


def decompressed(part10: bytes) -> bytes:
    """Explicit VR Little Endian: what every DICOM node accepts."""
    return transcode(part10, ExplicitVRLittleEndian)


__all__ = ["transcode", "decompressed", "UnsupportedTranscode", "ENCODABLE", "pydicom"]
