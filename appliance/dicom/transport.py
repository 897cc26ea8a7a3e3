"""Sending stored files: a stored Part-10 file made ready for pynetdicom's ``send_c_store``
without decoding it.

The dataset bytes travel as stored (see ``pynetdicom_patches.install_fast_encode``, which
reads the ``_pipacs_raw`` attribute set here); the byte codecs are appliance.codec's.
"""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset

from ..codec import InvalidDicom, read_meta, uid_text


def dataset_for_sending(part10: bytes) -> Dataset:
    """A stored file, ready for pynetdicom's send_c_store without decoding or re-encoding it.

    Only the file meta information is read (what send_c_store needs: the SOP class and
    instance, the syntax; PS3.10 makes them equal to the dataset's); the dataset bytes
    travel as stored when the negotiated syntax is the stored one (see
    ``pynetdicom_patches.install_fast_encode``), and the whole file is decoded only when
    pynetdicom must convert between uncompressed syntaxes.
    """
    try:
        meta, start = read_meta(part10, 132) if part10[128:132] == b"DICM" else ({}, 0)
    except InvalidDicom:
        meta, start = {}, 0
    sop_class, sop_instance, syntax = (uid_text(meta.get(t, b"")) for t in (0x00020002, 0x00020003, 0x00020010))
    if sop_class and sop_instance and syntax:
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_instance
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    else:  # not written by us (no meta information): let pydicom read the header
        ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True, force=True)
    ts = ds.file_meta.TransferSyntaxUID
    ds.set_original_encoding(ts.is_implicit_VR, ts.is_little_endian)
    object.__setattr__(ds, "_pipacs_raw", (memoryview(part10)[start:], ts.is_implicit_VR, ts.is_little_endian,
                                           ts.is_deflated, part10))
    return ds
