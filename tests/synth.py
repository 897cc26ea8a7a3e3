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


# ------------------------------------------------------------------ files written by DCMTK's tools

_ODD_DUMP = r"""(0008,0005) CS [ISO_IR 100]
(0008,0016) UI =SecondaryCaptureImageStorage
(0008,0018) UI [1.2.826.0.1.3680043.8.498.4242.1.1.1]
(0008,0020) DA [20240229]
(0008,0030) TM [235959.999999]
(0008,0050) SH [ACC-ÄÖÜ]
(0008,0060) CS [OT]
(0008,0090) PN [Müller^Jürgen^^Dr.]
(0008,1030) LO [Caractères accentués / ß]
(0008,1032) SQ (Sequence with undefined length #=0)
(fffe,e0dd) na (SequenceDelimitationItem)
(0008,1140) SQ (Sequence with undefined length #=2)
  (fffe,e000) na (Item with undefined length #=2)
    (0008,1150) UI =CTImageStorage
    (0008,1155) UI [1.2.826.0.1.3680043.8.498.4242.9.1]
  (fffe,e00d) na (ItemDelimitationItem)
  (fffe,e000) na (Item with undefined length #=2)
    (0008,1150) UI =CTImageStorage
    (0008,1155) UI [1.2.826.0.1.3680043.8.498.4242.9.2]
  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
(0009,0010) LO [PIPACS TEST]
(0009,1001) LO [a private value]
(0009,1002) OB 01\02\03\04
(0010,0010) PN [Dupont^Éloïse=]
(0010,0020) LO [ODD-1]
(0010,0030) DA []
(0010,0040) CS [F]
(0010,1010) AS [042Y]
(0018,0015) CS [CHEST]
(0020,000d) UI [1.2.826.0.1.3680043.8.498.4242.1]
(0020,000e) UI [1.2.826.0.1.3680043.8.498.4242.1.1]
(0020,0010) SH [S1]
(0020,0011) IS [7]
(0020,0013) IS [1]
(0020,0032) DS [-125.0\-125.0\42.5]
(0020,0037) DS [1\0\0\0\1\0]
(0028,0002) US 1
(0028,0004) CS [MONOCHROME2]
(0028,0010) US 2
(0028,0011) US 2
(0028,0100) US 8
(0028,0101) US 8
(0028,0102) US 7
(0028,0103) US 0
(7fe0,0010) OB 00\40\80\ff
"""

# the smallest PDF readers open (one empty page), for an Encapsulated PDF instance
_TINY_PDF = (b"%PDF-1.1\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
             b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
             b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 72 72]>>endobj\n"
             b"trailer<</Root 1 0 R>>\n%%EOF\n")


def dcmtk_made_files(workdir: Path, ct_small: Path) -> list[bytes]:
    """Instances as DCMTK's own tools write them, the files a DCMTK user sends: a Latin-1 dataset with
    an empty and a two-item sequence, a private block, a person name with a trailing group separator
    (dump2dcm); a JPEG as Secondary Capture (img2dcm); an Encapsulated PDF, an instance without pixels
    (pdf2dcm); CT_small recompressed lossless JPEG and RLE under new UIDs (dcmodify, dcmcjpeg, dcmcrle)."""
    import subprocess

    from PIL import Image

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, timeout=60)

    workdir.mkdir(parents=True, exist_ok=True)
    out = []
    dump = workdir / "odd.dump"
    dump.write_bytes(_ODD_DUMP.encode("latin-1"))
    run("/usr/bin/dump2dcm", "-q", str(dump), str(workdir / "odd.dcm"))
    out.append(workdir / "odd.dcm")

    jpeg = workdir / "gradient.jpg"
    Image.linear_gradient("L").resize((64, 48)).save(jpeg, quality=90)
    run("/usr/bin/img2dcm", "-q", "-k", "PatientID=DCMTK-SC", "-k", "PatientName=Img^Two^Dcm",
        "-k", "StudyDescription=img2dcm", str(jpeg), str(workdir / "sc.dcm"))
    out.append(workdir / "sc.dcm")

    pdf = workdir / "tiny.pdf"
    pdf.write_bytes(_TINY_PDF)
    run("/usr/bin/pdf2dcm", "-q", "+pn", "Pdf^Report", "+pi", "DCMTK-PDF", "+t", "A report", "+sg",
        str(pdf), str(workdir / "pdf.dcm"))
    out.append(workdir / "pdf.dcm")

    for name, tool, option in (("ct_jpegll.dcm", "/usr/bin/dcmcjpeg", "+e1"), ("ct_rle.dcm", "/usr/bin/dcmcrle", "")):
        copy = workdir / ("new-" + name)
        copy.write_bytes(ct_small.read_bytes())
        run("/usr/bin/dcmodify", "-q", "-nb", "-gst", "-gse", "-gin", str(copy))
        run(tool, "-q", *([option] if option else []), str(copy), str(workdir / name))
        out.append(workdir / name)
    return [p.read_bytes() for p in out]
def variant(source: bytes, name: str, drop: tuple[str, ...] = (), person_name: bytes | None = None) -> bytes:
    """A copy of a file as its own patient, study, series and instance (UIDs from ``name``), without the
    attributes in ``drop``; ``person_name``: the raw PatientName and ReferringPhysicianName, stored
    byte for byte (pydicom drops a trailing ``=`` of a name given as text)."""
    import pydicom
    from pydicom.valuerep import PersonName

    ds = pydicom.dcmread(io.BytesIO(source))
    for keyword in drop:
        if keyword in ds:
            delattr(ds, keyword)
    ds.PatientID = f"VARIANT-{name}"
    ds.StudyInstanceUID = uid(f"variant/{name}/study")
    ds.SeriesInstanceUID = uid(f"variant/{name}/series")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(f"variant/{name}/instance")
    if person_name is not None:
        ds.PatientName = PersonName(person_name)
        ds.ReferringPhysicianName = PersonName(person_name)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
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
