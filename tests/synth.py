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


# ------------------------------------------------------------------ a realistic CT phantom (issue 20)

def _smooth(img: np.ndarray, taps: tuple[float, ...]) -> np.ndarray:
    """Separable convolution with a small symmetric kernel (edges repeated): numpy only, no scipy."""
    k = np.asarray(taps, dtype=np.float32)
    k /= k.sum()
    half = len(k) // 2
    out = img.astype(np.float32)
    for axis in (0, 1):
        padded = np.pad(out, [(half, half) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * (padded[i:i + out.shape[0]] if axis == 0 else padded[:, i:i + out.shape[1]])
        out = acc
    return out


# a soft reconstruction kernel's effect on white noise: 5 taps, sigma ~0.8 pixel
_KERNEL = (0.06, 0.24, 0.40, 0.24, 0.06)
_NOISE_GAIN = float(np.sqrt(sum((np.outer(_KERNEL, _KERNEL) / np.sum(_KERNEL) ** 2).ravel() ** 2)))


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """The pixels inside an ellipse (mm), computed only over its bounding box (the grid is regular)."""
    out = np.zeros(xx.shape, dtype=bool)
    x, y = xx[0], yy[:, 0]
    cols = np.nonzero(np.abs(x - cx) <= ax)[0]
    rows = np.nonzero(np.abs(y - cy) <= ay)[0]
    if len(cols) and len(rows):
        c0, c1, r0, r1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
        out[r0:r1, c0:c1] = ((x[c0:c1][None, :] - cx) / ax) ** 2 + ((y[r0:r1][:, None] - cy) / ay) ** 2 <= 1.0
    return out


def ct_phantom_slice(z: float, t: float, size: int = 512, pixel_mm: float = 0.78125, noise_hu: float = 12.0,
                     seed: int = 0, padding: int = -2000) -> np.ndarray:
    """One axial slice in stored values (HU + 1024, int16) of the phantom ``ct_phantom_series`` stacks.

    ``t`` in [0, 1] runs from the top of the thorax (0) to the upper abdomen (1) and drives the
    anatomy smoothly: the lungs grow then give way to the liver dome, the heart comes and goes, the
    kidneys appear low down. ``z`` (mm) only seeds the slice's noise. Coordinates in mm, patient
    left on the image's right (radiological convention), anterior at the top."""
    half = size * pixel_mm / 2
    c = (np.arange(size, dtype=np.float32) + 0.5) * pixel_mm - half
    xx, yy = np.meshgrid(c, c)                       # x: patient right->left, y: anterior->posterior
    smooth = lambda a, b: a + (b - a) * (0.5 - 0.5 * np.cos(np.pi * min(max(t, 0.0), 1.0)))
    bump = lambda centre, width: float(np.exp(-((t - centre) / width) ** 2))

    hu = np.full((size, size), -1000.0, dtype=np.float32)           # air around the patient
    # the couch: a curved carbon-fibre board under the patient and its foam pad
    board = (yy > 128) & (yy < 136) & (np.abs(xx) < 210) & ((yy - 128) > (xx / 210) ** 2 * 4)
    hu[board] = 250.0
    hu[(yy >= 122) & (yy <= 128) & (np.abs(xx) < 200)] = -700.0
    bx, by = smooth(160.0, 172.0), smooth(105.0, 118.0)             # body half-widths, mm
    cy = 122.0 - by                                                  # the back lies on the pad
    body = _ellipse(xx, yy, 0.0, cy, bx, by)
    hu[body] = -100.0                                                # subcutaneous fat
    muscle = _ellipse(xx, yy, 0.0, cy, bx - 14, by - 12)
    hu[muscle] = 50.0                                                # the muscle wall
    inner = _ellipse(xx, yy, 0.0, cy + 3, bx - 24, by - 22)
    hu[inner] = 35.0                                                 # mediastinum / abdominal soft tissue
    hu[inner & _ellipse(xx, yy, 0.0, cy + 10, bx - 40, by - 45)] = -60.0 * bump(1.0, 0.35)  # visceral fat low down

    lung_w = 58.0 * (1 - bump(1.0, 0.3)) * (0.75 + 0.25 * bump(0.4, 0.4))   # lungs widest mid-thorax, gone at t=1
    lung_h = 82.0 * (1 - bump(1.0, 0.32))
    lungs = np.zeros_like(body)
    if lung_w > 4 and lung_h > 4:
        for side in (-1, 1):
            lungs |= _ellipse(xx, yy, side * (bx * 0.5), cy + 2, lung_w, lung_h) & inner
        hu[lungs] = -850.0
        rng = np.random.default_rng(seed + 7)                        # vessels: tubes that drift with t
        vx, vy = rng.uniform(-1, 1, 90), rng.uniform(-1, 1, 90)
        drift, radius = rng.uniform(-12, 12, (90, 2)), rng.uniform(0.8, 3.2, 90)
        for k in range(90):
            side = 1 if k % 2 else -1
            px = side * bx * 0.5 + vx[k] * lung_w * 0.8 + drift[k, 0] * t
            py = cy + 2 + vy[k] * lung_h * 0.8 + drift[k, 1] * t
            hu[lungs & _ellipse(xx, yy, px, py, radius[k], radius[k])] = 40.0
    heart = bump(0.45, 0.22)
    if heart > 0.05:
        hu[_ellipse(xx, yy, 15.0, cy - 20, 62 * heart, 50 * heart) & inner] = 42.0
    liver = 1 - bump(0.0, 0.62)
    if liver > 0.05:
        hu[_ellipse(xx, yy, -45.0, cy - 5, 85 * liver, 70 * liver) & inner & ~lungs] = 58.0   # patient right
        hu[_ellipse(xx, yy, 90.0, cy + 25, 35 * liver, 45 * liver) & inner & ~lungs] = 48.0   # spleen
        hu[_ellipse(xx, yy, 40.0, cy - 40, 40 * liver, 25 * liver) & inner & ~lungs] = -900.0  # stomach gas
    kidney = bump(1.0, 0.18)
    if kidney > 0.05:
        for side in (-1, 1):
            hu[_ellipse(xx, yy, side * 62.0, cy + 48, 28 * kidney, 40 * kidney) & inner] = 32.0
    hu[_ellipse(xx, yy, 20.0, cy + 38, 12.5, 12.5)] = 45.0            # the aorta, left of the spine
    # the spine: vertebral body (cortex, cancellous bone), canal, posterior elements
    sy = cy + by - 48
    hu[_ellipse(xx, yy, 0.0, sy, 20, 17)] = 700.0
    hu[_ellipse(xx, yy, 0.0, sy, 17, 14)] = 230.0
    hu[_ellipse(xx, yy, 0.0, sy + 30, 17, 11)] = 700.0
    hu[_ellipse(xx, yy, 0.0, sy + 27, 9, 8)] = 15.0                   # the spinal canal
    if lung_w > 4:                                                    # ribs in the thoracic slices
        for a in np.linspace(0.25, np.pi - 0.25, 9):
            for side in (-1, 1):
                rx = side * np.cos(a) * (bx - 19)
                ry = cy + (by - 17) * (1 - np.sin(a)) * 0.9 - (by - 17) * 0.45
                hu[_ellipse(xx, yy, rx, ry, 6, 4)] = 650.0
    hu = _smooth(hu, (0.25, 0.5, 0.25))                               # partial volume at the edges
    rng = np.random.default_rng([seed, round(z * 100) & 0xFFFFFFFF])
    hu += _smooth(rng.normal(0.0, noise_hu / _NOISE_GAIN, (size, size)).astype(np.float32), _KERNEL)
    stored = np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.int16)  # the scanner clips at -1024 HU
    r = np.hypot(xx, yy)
    stored[r > half] = padding                                         # outside the reconstruction circle
    return stored


def ct_phantom_series(folder: Path, n: int = 100, patient_id: str = "PHANTOM1", patient_name: str = "Phantom^Chest",
                      study: str = "ph1", series: str = "ax", study_description: str = "CT CHEST ABDOMEN",
                      series_description: str = "Axial 2.5 mm", slice_mm: float = 2.5, size: int = 512,
                      pixel_mm: float = 0.78125, noise_hu: float = 12.0, seed: int = 0,
                      padding: int = -2000) -> list[Path]:
    """``n`` axial slices of a CT chest/upper abdomen phantom as files ``folder/CT00001.dcm`` ...,
    Instance Number 1 the most superior (a head-first scan runs downwards); returns the paths.

    Why it stands for a real CT when bytes are measured: what makes a CT compress as it does is
    present and of the right size. Stored values are int16 with RescaleSlope 1, RescaleIntercept
    -1024 (HU + 1024) as most scanners write them; the body is an ellipse (fat, muscle wall, soft
    tissue, organs: lungs at -850 HU with vessels, heart, liver, spleen, stomach gas, kidneys, aorta,
    spine with cortex and cancellous bone, ribs) on a couch, air around it at -1000 HU with noise,
    and outside the reconstruction circle the padding value (-2000, PixelPaddingValue) as Siemens
    and GE write it. Noise is Gaussian, sigma ``noise_hu`` (12 HU, a standard 2.5 mm abdomen slice
    at 120 kV) after a soft reconstruction kernel, so neighbouring pixels correlate as in a real
    image, and edges are blurred by partial volume. The anatomy changes smoothly along z (lungs
    growing then giving way to the liver dome, heart, kidneys lower), and the geometry is a
    scanner's: 512x512, 400 mm field of view, IOP axial, IPP z falling by ``slice_mm`` per
    Instance Number, SliceLocation, FrameOfReferenceUID, PatientPosition HFS."""
    folder.mkdir(parents=True, exist_ok=True)
    half = size * pixel_mm / 2
    top = 1200.0                                    # table position of the first slice (mm), as scanners count
    frame_of_reference = uid(f"{patient_id}/{study}/for")
    paths = []
    for i in range(1, n + 1):
        z = top - (i - 1) * slice_mm
        pixels = ct_phantom_slice(z, (i - 1) / max(n - 1, 1), size, pixel_mm, noise_hu, seed, padding)
        ds = pydicom_dataset_from(ct_instance(patient_id=patient_id, patient_name=patient_name, study=study,
                                              series=series, index=i, rows=8, cols=8,
                                              study_description=study_description,
                                              series_description=series_description))
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Manufacturer = "pipacs phantom"
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.KVP = 120
        ds.ConvolutionKernel = "SOFT"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.AcquisitionNumber = 1
        ds.SliceThickness = slice_mm
        ds.SpacingBetweenSlices = slice_mm
        ds.ImagePositionPatient = [-half + pixel_mm / 2, -half + pixel_mm / 2, z]
        ds.SliceLocation = z
        ds.PixelSpacing = [pixel_mm, pixel_mm]
        ds.Rows, ds.Columns = size, size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.add_new(0x00280120, "SS", padding)            # PixelPaddingValue, signed as the pixels
        ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
        ds.PixelData = pixels.tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        p = folder / f"CT{i:05d}.dcm"
        p.write_bytes(buf.getvalue())
        paths.append(p)
    return paths


def pydicom_dataset_from(data: bytes) -> Dataset:
    """A Part-10 file's bytes as a pydicom Dataset (file meta included)."""
    import pydicom

    return pydicom.dcmread(io.BytesIO(data))
