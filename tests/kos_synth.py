"""Key objects as a hospital workstation makes them (IHE TCE Export Selector), built with pydicom per
PS3.3 A.35.4 / TID 2010, and a multi-frame image: inputs of the key object and TCE tests."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from tests import synth

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
MF_GRAY_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def part10(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def header(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def multiframe_instance(frames: int = 4, rows: int = 32, cols: int = 32, patient_id: str = "PATMF",
                        study: str = "mf", series: str = "mf1") -> bytes:
    """A multi-frame grayscale word secondary capture image with Pixel Spacing."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MF_GRAY_WORD_SC
    ds.SOPInstanceUID = synth.uid(f"{patient_id}/{study}/{series}/1")
    ds.StudyInstanceUID = synth.uid(f"{patient_id}/{study}")
    ds.SeriesInstanceUID = synth.uid(f"{patient_id}/{study}/{series}")
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Multi^Frame", patient_id, "", "M"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240301", "080000", "7", ""
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.ConversionType = "OT", "WSD"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 100
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [0.5, 0.5]
    ds.PixelData = (np.arange(frames * rows * cols, dtype=np.uint16) % 4096).tobytes()
    return part10(ds)


def hospital_kos(study: Dataset, images: list[tuple[Dataset, list[int]]], *,
                 title: tuple[str, str, str] = ("128710", "DCM", "For Teaching File Export"),
                 description: str = "", delay: tuple[str, str, str] | None = None,
                 extra_evidence_study: str = "", seed: str = "kos1", presentation_state: Dataset | None = None,
                 manufacturer: str = "ACME Reading Station") -> Dataset:
    """A TCE Export Selector's KOS for the images (header, frames) of ``study`` (a header of it)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = KOS
    ds.SOPInstanceUID = synth.uid(f"kos/{seed}")
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(ds, kw, study.get(kw, ""))
    ds.Modality = "KO"
    ds.SeriesInstanceUID = synth.uid(f"kos/{seed}/series")
    ds.SeriesNumber = 100
    ds.ReferencedPerformedProcedureStepSequence = Sequence([])
    ds.Manufacturer = manufacturer
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20241205", "120000"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code(*title)])
    ds.ContinuityOfContent = "SEPARATE"
    tpl = Dataset()
    tpl.MappingResource, tpl.TemplateIdentifier = "DCMR", "2010"
    ds.ContentTemplateSequence = Sequence([tpl])
    content = []
    if delay is not None:
        mod = Dataset()
        mod.RelationshipType, mod.ValueType = "HAS CONCEPT MOD", "CODE"
        mod.ConceptNameCodeSequence = Sequence([_code("113011", "DCM", "Document Title Modifier")])
        mod.ConceptCodeSequence = Sequence([_code(*delay)])
        content.append(mod)
    if description:
        text = Dataset()
        text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
        text.ConceptNameCodeSequence = Sequence([_code("113012", "DCM", "Key Object Description")])
        text.TextValue = description
        content.append(text)
    evidence: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for img, frames in images:
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = img.SOPClassUID, img.SOPInstanceUID
        if frames:
            ref.ReferencedFrameNumber = frames if len(frames) > 1 else frames[0]
        if presentation_state is not None:
            ps = Dataset()
            ps.ReferencedSOPClassUID = GSPS
            ps.ReferencedSOPInstanceUID = presentation_state.SOPInstanceUID
            ref.ReferencedSOPSequence = Sequence([ps])
        item.ReferencedSOPSequence = Sequence([ref])
        content.append(item)
        evidence.setdefault((str(img.StudyInstanceUID), str(img.SeriesInstanceUID)), []).append(
            (str(img.SOPClassUID), str(img.SOPInstanceUID)))
    if presentation_state is not None:
        evidence.setdefault((str(presentation_state.StudyInstanceUID), str(presentation_state.SeriesInstanceUID)),
                            []).append((GSPS, str(presentation_state.SOPInstanceUID)))
    if extra_evidence_study:
        evidence[(extra_evidence_study, extra_evidence_study + ".1")] = [("1.2.840.10008.5.1.4.1.1.2",
                                                                          extra_evidence_study + ".1.1")]
    ds.ContentSequence = Sequence(content)
    studies: dict[str, list[Dataset]] = {}
    for (st, se), refs in evidence.items():
        s = Dataset()
        s.SeriesInstanceUID = se
        items = []
        for cls, uid in refs:
            r = Dataset()
            r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = cls, uid
            items.append(r)
        s.ReferencedSOPSequence = Sequence(items)
        studies.setdefault(st, []).append(s)
    out = []
    for st, series in studies.items():
        d = Dataset()
        d.StudyInstanceUID = st
        d.ReferencedSeriesSequence = Sequence(series)
        out.append(d)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence(out)
    return ds


def hospital_gsps(image: Dataset, seed: str = "ps1") -> Dataset:
    """A workstation's GSPS with one arrow on ``image`` (its header)."""
    ps = Dataset()
    ps.SpecificCharacterSet = "ISO_IR 100"
    ps.SOPClassUID = GSPS
    ps.SOPInstanceUID = synth.uid(f"gsps/{seed}")
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(ps, kw, image.get(kw, ""))
    ps.Modality = "PR"
    ps.SeriesInstanceUID = synth.uid(f"gsps/{seed}/series")
    ps.SeriesNumber = 101
    ps.Laterality = ""
    ps.Manufacturer = "ACME Reading Station"
    ps.InstanceNumber = 1
    ps.ContentLabel = "ARROW"
    ps.ContentDescription = "arrow"
    ps.PresentationCreationDate, ps.PresentationCreationTime = "20241205", "120000"
    ps.ContentCreatorName = ""
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    series.ReferencedImageSequence = Sequence([ref])
    ps.ReferencedSeriesSequence = Sequence([series])
    area = Dataset()
    area.DisplayedAreaTopLeftHandCorner = [1, 1]
    area.DisplayedAreaBottomRightHandCorner = [int(image.Columns), int(image.Rows)]
    area.PresentationSizeMode = "SCALE TO FIT"
    area.PresentationPixelAspectRatio = [1, 1]
    ps.DisplayedAreaSelectionSequence = Sequence([area])
    g = Dataset()
    g.GraphicAnnotationUnits, g.GraphicDimensions, g.NumberOfGraphicPoints = "PIXEL", 2, 2
    g.GraphicData = [1.0, 1.0, 20.0, 20.0]
    g.GraphicType = "POLYLINE"
    ann = Dataset()
    ann.GraphicLayer = "LAYER1"
    ann.GraphicObjectSequence = Sequence([g])
    ps.GraphicAnnotationSequence = Sequence([ann])
    layer = Dataset()
    layer.GraphicLayer, layer.GraphicLayerOrder = "LAYER1", 1
    ps.GraphicLayerSequence = Sequence([layer])
    ps.PresentationLUTShape = "IDENTITY"
    return ps
