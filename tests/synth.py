"""Synthetic DICOM studies for tests and benchmarks (no real patient data, reproducible)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root: generated UIDs are unique


def uid(seed: str) -> str:
    """A stable UID derived from ``seed`` (same seed, same UID)."""
    return generate_uid(prefix=_ROOT, entropy_srcs=[seed])


def ct_instance(patient_id: str = "PAT1", patient_name: str = "Doe^Jane", study: str = "st1",
                series: str = "se1", index: int = 1, rows: int = 512, cols: int = 512,
                study_date: str = "20240102", modality: str = "CT", study_description: str = "CHEST",
                accession: str = "", birth_date: str = "19700101", sex: str = "F",
                series_description: str = "AXIAL", pixel_seed: int | None = None) -> bytes:
    """One CT-like instance, Part-10 explicit VR little endian, ``rows`` x ``cols`` x 16 bit."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid(f"{patient_id}/{study}/{series}/{index}")
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = "101500"
    ds.SeriesTime = "101600"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "pipacs synth"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.StudyInstanceUID = uid(f"{patient_id}/{study}")
    ds.SeriesInstanceUID = uid(f"{patient_id}/{study}/{series}")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index
    ds.ImagePositionPatient = [-250.0, -250.0, float(index) * 2.5]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = 2.5
    ds.PixelSpacing = [0.9765625, 0.9765625]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    rng = np.random.default_rng(pixel_seed if pixel_seed is not None else index)
    yy, xx = np.mgrid[0:rows, 0:cols]
    r = np.hypot(yy - rows / 2, xx - cols / 2)
    img = np.where(r < rows * 0.4, 1000 + (index * 7) % 200, 0).astype(np.int16)
    img += rng.integers(0, 40, size=(rows, cols), dtype=np.int16)
    ds.PixelData = img.tobytes()
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = fm
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_series(folder: Path, n: int, **kw) -> list[Path]:
    """``n`` instances of one series as files ``folder/IM00001.dcm`` ...; returns the paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(1, n + 1):
        p = folder / f"IM{i:05d}.dcm"
        p.write_bytes(ct_instance(index=i, **kw))
        paths.append(p)
    return paths


def with_nested_binary(data: bytes) -> bytes:
    """``data`` (a ct_instance) with binary values inside sequence items, two levels deep: a private
    OB in item 1 of (0040,A730), an OB in item 1 of a sequence inside it, and an item 2 without binary values."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    item = Dataset()
    item.add_new(0x00091010, "LO", "PIPACS TEST")
    item.add_new(0x00091011, "OB", b"\x01\x02\x03\x04")
    inner = Dataset()
    inner.add_new(0x00189219, "OB", b"\x05\x06")
    item.add_new(0x00409096, "SQ", [inner])
    second = Dataset()
    second.add_new(0x00091010, "LO", "SECOND ITEM")
    ds.add_new(0x0040A730, "SQ", [item, second])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def with_patient_name(data: bytes, name: str, charset: str | list[str]) -> bytes:
    """``data`` (a ct_instance) with another Patient's Name, written in ``charset``."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
