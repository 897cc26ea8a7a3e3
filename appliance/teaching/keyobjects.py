"""Key images as DICOM: a case's key images as a Key Object Selection document (KOS, PS3.3 A.35.4,
template TID 2010) and its annotations as Grayscale Softcopy Presentation States (GSPS, PS3.3 A.33.1),
so that a DICOM workstation shows the same images, windows, zoom and arrows; and the reading of a
received KOS for the IHE Teaching File and Clinical Trial Export (TCE) receiver (``teaching.tce``).

Pure functions on pydicom datasets: the archive reads the headers, the callers store or send the
results. pydicom builds every dataset; nothing here writes bytes by hand.

Choices (PS3.16 CID 7010 lists the titles; see README "Key images as DICOM"):
- An export is titled (113004, DCM, "For Teaching") and carries Manufacturer "pipacs": the
  receiver recognises the board's own exports by that mark (``made_here``) and never turns them
  into new cases (a bundle import, POST /cases/{id}/store-key-objects, a round trip through a PACS).
- Same case content, same instance UIDs (derived from the case's ID, Updated and key images):
  exporting a case twice gives identical files, and storing them twice stores them once. The series
  UIDs depend on the case's ID and the study only: a changed case's new export is in the same series.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
)
from pydicom.valuerep import DSfloat

from .. import __version__
from ..archive import IMAGER_PIXEL_SPACING

__all__ = [
    "KOS_SOP_CLASS", "GSPS_SOP_CLASS", "MANUFACTURER", "Code", "TEACHING_TITLES", "OTHER_EXPORT_TITLES",
    "DELAY_REASONS", "ExportError", "KeyObjectProblem", "Reference", "ReceivedKeyObject",
    "build_key_object", "build_key_objects", "build_presentation_states", "build_export", "dataset_bytes",
    "read_key_object", "title_of", "is_key_object", "study_of_key_images", "length_label", "view_box",
]

KOS_SOP_CLASS = str(KeyObjectSelectionDocumentStorage)
GSPS_SOP_CLASS = str(GrayscaleSoftcopyPresentationStateStorage)
MANUFACTURER = "pipacs"                       # (0008,0070) of every KOS and GSPS the board makes
MODEL = "pipacs teaching file"                # (0008,1090)
KOS_SERIES_NUMBER = 990                       # after the acquired series in a workstation's list
GSPS_SERIES_NUMBER = 991
MAX_LO = 64                                   # LO: 64 characters
MAX_ST = 1024                                 # ST: 1024 characters


@dataclass(frozen=True)
class Code:
    value: str
    scheme: str
    meaning: str

    def item(self) -> Dataset:
        ds = Dataset()
        ds.CodeValue = self.value
        ds.CodingSchemeDesignator = self.scheme
        ds.CodeMeaning = self.meaning
        return ds


FOR_TEACHING = Code("113004", "DCM", "For Teaching")
KEY_OBJECT_DESCRIPTION = Code("113012", "DCM", "Key Object Description")
DOCUMENT_TITLE_MODIFIER = Code("113011", "DCM", "Document Title Modifier")

# CID 7010 titles that make a teaching draft: "For Teaching", and the TCE "For Teaching File Export"
# (as PS3.16 codes it today, and as IHE's TCE profile first coded it, IHERADTF).
TEACHING_TITLES: dict[tuple[str, str], str] = {
    ("113004", "DCM"): "For Teaching",
    ("128710", "DCM"): "For Teaching File Export",
    ("TCE001", "IHERADTF"): "For Teaching File Export",
}
# The other TCE export titles are for other receivers (a clinical trial, a research collection, a
# journal): recognised and named in the log, stored as any instance, no case (students would see
# what was selected for a trial sponsor).
OTHER_EXPORT_TITLES: dict[tuple[str, str], str] = {
    ("128711", "DCM"): "For Clinical Trial Export",
    ("128713", "DCM"): "For Research Collection Export",
    ("128714", "DCM"): "For Publication Export",
    ("TCE002", "IHERADTF"): "For Clinical Trial Export",
    ("TCE007", "IHERADTF"): "For Research Collection Export",
}
# Export delay reasons (PS3.16 CID 7015 "Export Delay Reason"; IHE TCE's first coding IHERADTF),
# carried as HAS CONCEPT MOD CODE (113011, DCM, "Document Title Modifier") items of the root (TID 2010).
DELAY_REASONS: dict[tuple[str, str], str] = {
    ("128715", "DCM"): "Delay export until final report is available",
    ("128716", "DCM"): "Delay export until clinical information is available",
    ("128717", "DCM"): "Delay export until confirmation of diagnosis is available",
    ("128718", "DCM"): "Delay export until histopathology is available",
    ("128719", "DCM"): "Delay export until other laboratory results are available",
    ("128720", "DCM"): "Delay export until patient is discharged",
    ("128721", "DCM"): "Delay export until patient dies",
    ("128722", "DCM"): "Delay export until expert review is available",
    ("TCE011", "IHERADTF"): "Delay export until final report is available",
    ("TCE012", "IHERADTF"): "Delay export until clinical information is available",
    ("TCE013", "IHERADTF"): "Delay export until confirmation of diagnosis is available",
    ("TCE014", "IHERADTF"): "Delay export until histopathology is available",
    ("TCE015", "IHERADTF"): "Delay export until other laboratory results are available",
    ("TCE016", "IHERADTF"): "Delay export until patient is discharged",
    ("TCE017", "IHERADTF"): "Delay export until patient dies",
    ("TCE018", "IHERADTF"): "Delay export until expert review is available",
}


class ExportError(ValueError):
    """The case cannot be exported as asked (no key images, an instance not given); the message says why."""


class KeyObjectProblem(ValueError):
    """A received KOS that makes no case; the message says why (for the log)."""


# ---------------------------------------------------------------------------------- building

def _uid(seed: Any, *parts: str) -> str:
    """A UID derived from the case's content and the object's place in the export (same in, same out):
    2.25 and a name-based UUID (PS3.5 B.2; pydicom's generate_uid ignores its entropy without a prefix)."""
    digest = hashlib.sha256("\0".join([str(seed), *parts]).encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"


def _case_seed(case: dict) -> str:
    keep = {k: case.get(k) for k in ("ID", "Updated", "Title", "KeyImages")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def _case_time(case: dict) -> tuple[str, str]:
    """ContentDate/ContentTime from the case's Updated (so the same case gives the same file)."""
    text = str(case.get("Updated") or case.get("Created") or "")
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        when = dt.datetime.now(dt.UTC)
    return when.strftime("%Y%m%d"), when.strftime("%H%M%S")


_CONTROL = {c: None for c in range(32) if chr(c) not in "\t\n\r\f"} | {127: None}


def _text(value: Any, limit: int | None = None, one_line: bool = False) -> str:
    """User text as an ST/UT value may hold it (no control characters but TAB, LF, FF, CR), or for an
    LO (``one_line``: no line breaks, no backslash, which separates values); ``limit`` in UTF-8 bytes
    (the characters of the VR's limit, as dciodvfy counts them in ISO_IR 192)."""
    text = str(value or "").translate(_CONTROL)
    if one_line:
        text = " ".join(text.replace("\\", "/").split())
    text = text.strip()
    if limit is not None:
        text = text.encode()[:limit].decode(errors="ignore").strip()
    return text


def _ds(value: float) -> DSfloat:
    return DSfloat(value, auto_format=True)


def _frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _copy(src: Dataset, dst: Dataset, keywords: Iterable[str]) -> None:
    """Copy Type 2 attributes: the value when the source has one, else empty."""
    for kw in keywords:
        value = src.get(kw)
        setattr(dst, kw, value if value is not None else "")


def _patient_and_study(src: Dataset, dst: Dataset) -> None:
    """Patient and General Study modules as in the referenced images (a KOS and a GSPS belong to
    their study); de-identification marks are carried, so a student sees a de-identified export."""
    _copy(src, dst, ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"))
    for kw in ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence"):
        if kw in src:
            setattr(dst, kw, src.get(kw))
    if str(dst.get("PatientIdentityRemoved", "")).upper() == "YES" and not (
            dst.get("DeidentificationMethod") or dst.get("DeidentificationMethodCodeSequence")):
        # Type 1C with PatientIdentityRemoved YES; the images say YES and not how
        dst.DeidentificationMethod = "not stated by the referenced images"
    dst.StudyInstanceUID = src.StudyInstanceUID
    _copy(src, dst, ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"))
    if src.get("StudyDescription"):
        dst.StudyDescription = src.StudyDescription


def _common(dst: Dataset, sop_class: str, sop_uid: str, date: str, time: str) -> None:
    dst.SpecificCharacterSet = "ISO_IR 192"       # case text is any Unicode
    dst.SOPClassUID = sop_class
    dst.SOPInstanceUID = sop_uid
    dst.InstanceCreationDate = date
    dst.InstanceCreationTime = time
    dst.Manufacturer = MANUFACTURER
    dst.ManufacturerModelName = MODEL
    dst.SoftwareVersions = __version__
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dst.file_meta = meta


@dataclass
class _Key:
    """One key image of the case with its instance's header."""
    index: int
    image: dict
    instance_id: str
    ds: Dataset

    @property
    def frame(self) -> int:
        return int(self.image.get("Frame") or 1)

    @property
    def multiframe(self) -> bool:
        return _frames(self.ds) > 1

    @property
    def is_image(self) -> bool:
        return "Rows" in self.ds and "Columns" in self.ds

    @property
    def grayscale(self) -> bool:
        return self.is_image and str(self.ds.get("PhotometricInterpretation", "")).strip() in (
            "MONOCHROME1", "MONOCHROME2")

    def presented(self) -> bool:
        """Something for a presentation state to carry (else the image shows as it is)."""
        im = self.image
        return bool(im.get("Window") or im.get("Zoom") or im.get("Annotations") or im.get("Caption"))


def _keys(case: dict, instances: dict[str, Dataset]) -> list[_Key]:
    keys = []
    for n, im in enumerate(case.get("KeyImages") or []):
        iid = im.get("Instance")
        ds = instances.get(iid)
        if ds is None:
            raise ExportError(f"key image {n}: instance {iid} was not given (is it still stored?)")
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if not ds.get(kw):
                raise ExportError(f"key image {n}: instance {iid} has no {kw}")
        keys.append(_Key(n, im, iid, ds))
    if not keys:
        raise ExportError("the case has no key images")
    return keys


def study_of_key_images(case: dict, instances: dict[str, Dataset]) -> list[str]:
    """The Study Instance UIDs of the case's key images, in the order they first appear."""
    return list(dict.fromkeys(str(k.ds.StudyInstanceUID) for k in _keys(case, instances)))


def _ref_image(ds: Dataset, frames: Iterable[int] | None) -> Dataset:
    """A Referenced Image Sequence item: the instance and, for a multi-frame image, its frames."""
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if frames is not None and _frames(ds) > 1:
        fs = sorted(set(frames))
        item.ReferencedFrameNumber = fs if len(fs) > 1 else fs[0]
    return item


# ---------------------------------------------------------------------------------- GSPS

@dataclass
class _Group:
    """Key images one GSPS presents: one series, one photometric interpretation, one rescale
    (a GSPS has one Modality LUT and one Presentation LUT for all the images it references)."""
    keys: list[_Key] = field(default_factory=list)
    uid: str = ""


def _rescale(ds: Dataset) -> tuple[str, str, str] | None:
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        return None
    return (str(ds.get("RescaleSlope", 1)), str(ds.get("RescaleIntercept", 0)),
            str(ds.get("RescaleType", "") or ""))


def _groups(keys: list[_Key], seed: str) -> list[_Group]:
    by: dict[tuple, _Group] = {}
    for k in keys:
        if not k.grayscale:
            continue
        ds = k.ds
        key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
               str(ds.PhotometricInterpretation).strip(), _rescale(ds))
        by.setdefault(key, _Group()).keys.append(k)
    groups = [g for g in by.values() if any(k.presented() for k in g.keys)]
    for n, g in enumerate(groups):
        g.uid = _uid(seed, "gsps", str(n), str(g.keys[0].ds.SeriesInstanceUID))
    return groups


def _font_height(ds: Dataset) -> float:
    return max(8.0, 0.03 * max(int(ds.Rows), int(ds.Columns)))


def _clamp(v: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, v))


def _text_object(ds: Dataset, text: str, anchor: tuple[float, float]) -> Dataset:
    """An unformatted text with a bounding box beside ``anchor`` (kept inside the image) and the
    anchor point itself (not drawn: the graphic it labels marks the place)."""
    cols, rows = float(ds.Columns), float(ds.Rows)
    h = _font_height(ds)
    text = _text(text, MAX_ST)
    w = min(cols, max(h, 0.6 * h * len(text)))
    x0 = _clamp(anchor[0] + 0.3 * h, 0.0, cols - w)
    y0 = _clamp(anchor[1] - 1.3 * h, 0.0, max(0.0, rows - 1.2 * h))
    item = Dataset()
    item.BoundingBoxAnnotationUnits = "PIXEL"
    item.AnchorPointAnnotationUnits = "PIXEL"
    item.UnformattedTextValue = text
    item.BoundingBoxTopLeftHandCorner = [x0, y0]
    item.BoundingBoxBottomRightHandCorner = [min(cols, x0 + w), min(rows, y0 + 1.2 * h)]
    item.BoundingBoxTextHorizontalJustification = "LEFT"
    item.AnchorPoint = [_clamp(anchor[0], 0.0, cols), _clamp(anchor[1], 0.0, rows)]
    item.AnchorPointVisibility = "N"
    return item


def _graphic(kind: str, points: list[tuple[float, float]], filled: bool | None = None) -> Dataset:
    item = Dataset()
    item.GraphicAnnotationUnits = "PIXEL"
    item.GraphicDimensions = 2
    item.NumberOfGraphicPoints = len(points)
    item.GraphicData = [float(c) for p in points for c in p]
    item.GraphicType = kind
    if filled is not None:
        item.GraphicFilled = "Y" if filled else "N"
    return item


def _arrowhead(ds: Dataset, tail: tuple[float, float], head: tuple[float, float]) -> list[tuple[float, float]]:
    """The two wings of an arrow's head and its tip, as one open polyline (GSPS has no arrow type
    in every reader's edition: a polyline draws everywhere)."""
    dx, dy = head[0] - tail[0], head[1] - tail[1]
    length = math.hypot(dx, dy)
    if length == 0:
        return []
    size = min(0.3 * length, 0.04 * math.hypot(float(ds.Rows), float(ds.Columns)))
    ux, uy = dx / length, dy / length
    cols, rows = float(ds.Columns), float(ds.Rows)
    wings = []
    for sign in (1, -1):
        a = math.radians(25) * sign
        wx = head[0] - size * (ux * math.cos(a) - uy * math.sin(a))
        wy = head[1] - size * (uy * math.cos(a) + ux * math.sin(a))
        wings.append((_clamp(wx, 0.0, cols), _clamp(wy, 0.0, rows)))
    return [wings[0], head, wings[1]]


def length_label(ann: dict) -> str:
    """What a length says, on a slide (``keyimage_render``) and in a GSPS: the board's LengthMm
    (the archive's ``check_key_image`` sets it, and LengthNote, on every save), saying so when it was
    measured with Imager Pixel Spacing; the length in pixels when the image has no spacing."""
    mm = ann.get("LengthMm")
    if mm is None:
        pts = ann.get("Points") or []
        px = math.hypot(float(pts[1][0]) - float(pts[0][0]), float(pts[1][1]) - float(pts[0][1])) \
            if len(pts) == 2 else 0.0
        return f"{px:.1f} px (no Pixel Spacing)"
    label = f"{float(mm):.1f} mm"
    if ann.get("LengthNote") == IMAGER_PIXEL_SPACING:
        label += " at the detector (Imager Pixel Spacing)"
    return label


def _length_text(ann: dict) -> str:
    text = str(ann.get("Text") or "").strip()
    return f"{text} {length_label(ann)}" if text else length_label(ann)


def view_box(cols: float, rows: float, zoom: float | None, center: Any = None) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in image pixel coordinates of what a key image shows (contract: Zoom z with
    Center c shows the region Columns/z wide and Rows/z high centred on c, null c the frame's centre,
    clamped inside the frame). At z < 1 the region is larger than the frame: centred on it."""
    z = float(zoom) if zoom else 1.0
    w, h = cols / z, rows / z
    try:
        cx, cy = float(center[0]), float(center[1])
    except (TypeError, ValueError, IndexError, KeyError):
        cx, cy = cols / 2, rows / 2
    cx = _clamp(cx, w / 2, cols - w / 2) if w <= cols else cols / 2
    cy = _clamp(cy, h / 2, rows - h / 2) if h <= rows else rows / 2
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _annotation_objects(ds: Dataset, ann: dict) -> tuple[list[Dataset], list[Dataset]]:
    """(graphic objects, text objects) of one annotation of the contract."""
    kind = ann.get("Type")
    pts = [(float(p[0]), float(p[1])) for p in ann.get("Points") or []]
    text = str(ann.get("Text") or "").strip()
    graphics: list[Dataset] = []
    texts: list[Dataset] = []
    if kind == "arrow" and len(pts) >= 2:
        tail, head = pts[0], pts[1]
        graphics.append(_graphic("POLYLINE", [tail, head]))
        wing = _arrowhead(ds, tail, head)
        if wing:
            graphics.append(_graphic("POLYLINE", wing))
        if text:
            texts.append(_text_object(ds, text, tail))
    elif kind == "ellipse" and len(pts) >= 2:
        (x0, y0), (x1, y1) = pts[0], pts[1]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left, right, top, bottom = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        if right - left == 0 or bottom - top == 0:      # flat: a line is what it is
            graphics.append(_graphic("POLYLINE", [pts[0], pts[1]]))
        elif right - left >= bottom - top:              # PS3.3 C.10.5: major axis ends, then minor axis ends
            graphics.append(_graphic("ELLIPSE", [(left, cy), (right, cy), (cx, top), (cx, bottom)], filled=False))
        else:
            graphics.append(_graphic("ELLIPSE", [(cx, top), (cx, bottom), (left, cy), (right, cy)], filled=False))
        if text:
            texts.append(_text_object(ds, text, (left, top)))
    elif kind == "text" and pts and text:
        texts.append(_text_object(ds, text, pts[0]))
    elif kind == "length" and len(pts) >= 2:
        a, b = pts[0], pts[1]
        graphics.append(_graphic("POLYLINE", [a, b]))
        texts.append(_text_object(ds, _length_text(ann), ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)))
    return graphics, texts


def _displayed_area(k: _Key) -> Dataset:
    """Displayed Area Selection (C.10.4) of one key image: the whole image scaled to fit, or for a
    Zoom z the area 1/z of it around its Center (``view_box``) scaled to fit (z times larger than
    fit, whatever the screen)."""
    ds = k.ds
    cols, rows = int(ds.Columns), int(ds.Rows)
    item = Dataset()
    item.ReferencedImageSequence = Sequence([_ref_image(ds, [k.frame])])
    zoom = k.image.get("Zoom")
    if zoom:
        # pixels are numbered from 1: the area from the pixel holding x0 to the one holding x1
        x0, y0, x1, y1 = view_box(cols, rows, zoom, k.image.get("Center"))
        left, top = round(x0) + 1, round(y0) + 1
        item.DisplayedAreaTopLeftHandCorner = [left, top]
        item.DisplayedAreaBottomRightHandCorner = [max(left, round(x1)), max(top, round(y1))]
    else:
        item.DisplayedAreaTopLeftHandCorner = [1, 1]
        item.DisplayedAreaBottomRightHandCorner = [cols, rows]
    item.PresentationSizeMode = "SCALE TO FIT"
    spacing = ds.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2 and float(spacing[0]) > 0 and float(spacing[1]) > 0:
        item.PresentationPixelSpacing = [_ds(float(spacing[0])), _ds(float(spacing[1]))]
    else:
        item.PresentationPixelAspectRatio = [1, 1]
    return item


def _first(value: Any) -> Any:
    if isinstance(value, (list, tuple, MultiValue)):
        return value[0] if len(value) else None
    return value


def _window(k: _Key) -> tuple[float, float] | None:
    """The key image's window, or the image's own first one; None when it has neither."""
    w = k.image.get("Window")
    if w:
        return float(w["Center"]), float(w["Width"])
    try:
        c, width = float(_first(k.ds.get("WindowCenter"))), float(_first(k.ds.get("WindowWidth")))
    except (TypeError, ValueError):
        return None
    return (c, width) if width > 0 else None


def _presentation_state(group: _Group, case: dict, number: int, date: str, time: str) -> Dataset:
    first = group.keys[0].ds
    ps = Dataset()
    _common(ps, GSPS_SOP_CLASS, group.uid, date, time)
    _patient_and_study(first, ps)
    # General Series / Presentation Series
    ps.Modality = "PR"
    ps.SeriesInstanceUID = _gsps_series(case, str(first.StudyInstanceUID))
    ps.SeriesNumber = GSPS_SERIES_NUMBER
    ps.SeriesDescription = "pipacs key image annotations"
    ps.SeriesDate, ps.SeriesTime = date, time
    # Presentation State Identification
    ps.InstanceNumber = number
    ps.ContentLabel = "PIPACS_KEYIMAGES"      # CS: at most 16
    ps.ContentDescription = _text(case.get("Title"), MAX_LO, one_line=True) or "Key images"
    ps.PresentationCreationDate, ps.PresentationCreationTime = date, time
    ps.ContentCreatorName = _person_name(str(case.get("Author") or ""))
    # Type 2C (paired body parts); dciodvfy cannot tell, so always present: the images' own, or empty
    ps.Laterality = first.get("Laterality", "") or ""
    # Presentation State Relationship: the images and frames, by series
    frames: dict[str, list[int]] = {}
    by_uid: dict[str, Dataset] = {}
    for k in group.keys:
        frames.setdefault(str(k.ds.SOPInstanceUID), []).append(k.frame)
        by_uid.setdefault(str(k.ds.SOPInstanceUID), k.ds)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ReferencedImageSequence = Sequence([_ref_image(by_uid[u], fs) for u, fs in frames.items()])
    ps.ReferencedSeriesSequence = Sequence([series])
    # Displayed Area: one item per key image (its zoom)
    seen: set[tuple[str, int]] = set()
    areas, vois, annotations = [], [], []
    layers: dict[str, int] = {}
    for k in group.keys:
        place = (str(k.ds.SOPInstanceUID), k.frame)
        if place not in seen:
            seen.add(place)
            areas.append(_displayed_area(k))
            win = _window(k)
            if win is not None:
                voi = Dataset()
                voi.ReferencedImageSequence = Sequence([_ref_image(k.ds, [k.frame])])
                voi.WindowCenter = _ds(win[0])
                voi.WindowWidth = _ds(win[1])
                vois.append(voi)
        graphics, texts = [], []
        for ann in k.image.get("Annotations") or []:
            g, t = _annotation_objects(k.ds, ann)
            graphics += g
            texts += t
        if graphics or texts:
            item = Dataset()
            item.ReferencedImageSequence = Sequence([_ref_image(k.ds, [k.frame])])
            item.GraphicLayer = "ANNOTATIONS"
            layers["ANNOTATIONS"] = 1
            if texts:
                item.TextObjectSequence = Sequence(texts)
            if graphics:
                item.GraphicObjectSequence = Sequence(graphics)
            annotations.append(item)
        caption = str(k.image.get("Caption") or "").strip()
        if caption:
            item = Dataset()
            item.ReferencedImageSequence = Sequence([_ref_image(k.ds, [k.frame])])
            item.GraphicLayer = "CAPTION"
            layers["CAPTION"] = 2
            h = _font_height(k.ds)
            text = _text_object(k.ds, caption, (0.0, float(k.ds.Rows)))
            del text.AnchorPoint, text.AnchorPointVisibility, text.AnchorPointAnnotationUnits
            text.BoundingBoxTopLeftHandCorner = [0.0, max(0.0, float(k.ds.Rows) - 1.2 * h)]
            text.BoundingBoxBottomRightHandCorner = [float(k.ds.Columns), float(k.ds.Rows)]
            item.TextObjectSequence = Sequence([text])
            annotations.append(item)
    ps.DisplayedAreaSelectionSequence = Sequence(areas)
    if annotations:
        ps.GraphicAnnotationSequence = Sequence(annotations)
        ps.GraphicLayerSequence = Sequence([_layer(name, order) for name, order in sorted(layers.items(),
                                                                                         key=lambda x: x[1])])
    # Softcopy Modality LUT: the images' rescale, so the window is in their units (HU for CT)
    rescale = _rescale(first)
    if rescale is not None:
        ps.RescaleSlope = first.get("RescaleSlope", 1)
        ps.RescaleIntercept = first.get("RescaleIntercept", 0)
        ps.RescaleType = rescale[2] or ("HU" if str(first.get("Modality", "")) == "CT" else "US")
    if vois:
        ps.SoftcopyVOILUTSequence = Sequence(vois)
    ps.PresentationLUTShape = "INVERSE" if str(first.PhotometricInterpretation).strip() == "MONOCHROME1" \
        else "IDENTITY"
    return ps


def _person_name(text: str) -> str:
    """An author's free-text name as a PN: one family-name component (no ``^`` guessing), 64 characters."""
    text = _text(text.replace("=", " ").replace("^", " "), MAX_LO - 1, one_line=True).replace("/", " ")
    return f"{text}^" if " " in text else text


def _layer(name: str, order: int) -> Dataset:
    item = Dataset()
    item.GraphicLayer = name
    item.GraphicLayerOrder = order
    item.GraphicLayerRecommendedDisplayGrayscaleValue = 0xFFFF
    item.GraphicLayerDescription = "arrows, ellipses, labels, lengths" if name == "ANNOTATIONS" else "captions"
    return item


def build_presentation_states(case: dict, instances: dict[str, Dataset]) -> list[Dataset]:
    """The GSPS of a case: one per series (and photometric interpretation and rescale) whose key
    images carry a window, a zoom, a caption or annotations; none for colour images (a Grayscale
    presentation state does not apply to them) or images shown as they are."""
    return build_export(case, instances)[1]


# ---------------------------------------------------------------------------------- KOS

def _content_item(relationship: str, value_type: str, concept: Code | None = None) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    if concept is not None:
        item.ConceptNameCodeSequence = Sequence([concept.item()])
    return item


def _key_object(case: dict, keys: list[_Key], groups: list[_Group], study_uid: str,
                number: int, date: str, time: str) -> Dataset:
    seed = _case_seed(case)
    mine = [k for k in keys if str(k.ds.StudyInstanceUID) == study_uid]
    first = mine[0].ds
    kos = Dataset()
    _common(kos, KOS_SOP_CLASS, _uid(seed, "kos", study_uid), date, time)
    _patient_and_study(first, kos)
    # Key Object Document Series
    kos.Modality = "KO"
    kos.SeriesInstanceUID = _series_uid(case, "kos-series", study_uid)
    kos.SeriesNumber = KOS_SERIES_NUMBER
    kos.SeriesDescription = "pipacs key images"
    kos.SeriesDate, kos.SeriesTime = date, time
    kos.ReferencedPerformedProcedureStepSequence = Sequence([])
    # Key Object Document
    kos.InstanceNumber = number
    kos.ContentDate, kos.ContentTime = date, time
    # SR Document Content: the root container titled For Teaching (TID 2010)
    kos.ValueType = "CONTAINER"
    kos.ConceptNameCodeSequence = Sequence([FOR_TEACHING.item()])
    kos.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    kos.ContentTemplateSequence = Sequence([template])
    content = []
    title = _text(case.get("Title"))
    if title:
        text = _content_item("CONTAINS", "TEXT", KEY_OBJECT_DESCRIPTION)
        text.TextValue = title
        content.append(text)
    ps_of: dict[tuple[str, int], str] = {}
    for g in groups:
        for k in g.keys:
            ps_of[(k.instance_id, k.index)] = g.uid
    evidence: dict[str, dict[str, str]] = {}      # series UID -> SOP instance UID -> SOP class
    seen: set[tuple[str, int]] = set()
    for k in mine:
        place = (str(k.ds.SOPInstanceUID), k.frame)
        if place in seen:
            continue
        seen.add(place)
        item = _content_item("CONTAINS", "IMAGE" if k.is_image else "COMPOSITE")
        ref = Dataset()
        ref.ReferencedSOPClassUID = k.ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = k.ds.SOPInstanceUID
        if k.is_image and k.multiframe:
            ref.ReferencedFrameNumber = k.frame
        ps_uid = ps_of.get((k.instance_id, k.index))
        if ps_uid and k.is_image:
            # TID 2010 / Image Reference Macro: the presentation state to show the image with
            ps_ref = Dataset()
            ps_ref.ReferencedSOPClassUID = GSPS_SOP_CLASS
            ps_ref.ReferencedSOPInstanceUID = ps_uid
            ref.ReferencedSOPSequence = Sequence([ps_ref])
            evidence.setdefault(_gsps_series(case, study_uid), {})[ps_uid] = GSPS_SOP_CLASS
        item.ReferencedSOPSequence = Sequence([ref])
        content.append(item)
        evidence.setdefault(str(k.ds.SeriesInstanceUID), {})[str(k.ds.SOPInstanceUID)] = str(k.ds.SOPClassUID)
    kos.ContentSequence = Sequence(content)
    # Current Requested Procedure Evidence: every instance the content references, by series
    study = Dataset()
    study.StudyInstanceUID = study_uid
    series_items = []
    for series_uid, sops in evidence.items():
        s = Dataset()
        s.SeriesInstanceUID = series_uid
        refs = []
        for sop_uid, sop_class in sops.items():
            r = Dataset()
            r.ReferencedSOPClassUID = sop_class
            r.ReferencedSOPInstanceUID = sop_uid
            refs.append(r)
        s.ReferencedSOPSequence = Sequence(refs)
        series_items.append(s)
    study.ReferencedSeriesSequence = Sequence(series_items)
    kos.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    return kos


def _series_uid(case: dict, kind: str, study_uid: str) -> str:
    """A series UID of the case's exports in a study, the same whatever the case's content: a store
    after an edit puts the new KOS/GSPS in the series of the old ones (which ``keystore`` deletes)."""
    return _uid(f"series of case {case.get('ID')}", kind, study_uid)


def _gsps_series(case: dict, study_uid: str) -> str:
    return _series_uid(case, "gsps-series", study_uid)


def build_export(case: dict, instances: dict[str, Dataset]) -> tuple[list[Dataset], list[Dataset]]:
    """(KOS per study, GSPS) of a case; the KOS reference the GSPS that present their images.

    ``instances``: Orthanc instance ID -> the instance's header (pixels not needed).
    Raises ExportError when the case has no key images or an instance is missing.
    """
    keys = _keys(case, instances)
    seed = _case_seed(case)
    date, time = _case_time(case)
    groups = _groups(keys, seed)
    states = [_presentation_state(g, case, n, date, time) for n, g in enumerate(groups, 1)]
    studies = list(dict.fromkeys(str(k.ds.StudyInstanceUID) for k in keys))
    kos = [_key_object(case, keys, groups, s, n, date, time) for n, s in enumerate(studies, 1)]
    return kos, states


def build_key_objects(case: dict, instances: dict[str, Dataset]) -> list[Dataset]:
    """One KOS per study of the case's key images (a KOS belongs to one study), in key image order."""
    return build_export(case, instances)[0]


def build_key_object(case: dict, instances: dict[str, Dataset], study_uid: str | None = None) -> Dataset:
    """The KOS of a case's key images in one study: ``study_uid``, or the only one (ExportError when
    the key images are in several studies and none is named: see ``build_key_objects``)."""
    kos = build_key_objects(case, instances)
    if study_uid is None:
        if len(kos) > 1:
            raise ExportError(f"the key images are in {len(kos)} studies: one key object each")
        return kos[0]
    for k in kos:
        if str(k.StudyInstanceUID) == study_uid:
            return k
    raise ExportError(f"no key image is in study {study_uid}")


def dataset_bytes(ds: Dataset) -> bytes:
    """A built KOS or GSPS as a Part-10 file (explicit VR little endian)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ---------------------------------------------------------------------------------- reading

@dataclass
class Reference:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""
    frames: list[int] = field(default_factory=list)       # [] : the whole instance


@dataclass
class ReceivedKeyObject:
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    title: Code
    teaching: bool                 # a title that makes a teaching draft (TEACHING_TITLES)
    made_here: bool                # one of this board's exports (Manufacturer pipacs)
    description: str               # the Key Object Description text(s)
    delay_reason: str              # the meaning of a CID 7015 Document Title Modifier, "" if none
    references: list[Reference]    # image and composite references (not the presentation states)
    presentation_states: list[str] = field(default_factory=list)

    @property
    def title_name(self) -> str:
        return self.title.meaning or f"({self.title.value}, {self.title.scheme})"


def is_key_object(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) == KOS_SOP_CLASS


def _first_code(seq: Any) -> Code | None:
    if not seq:
        return None
    item = seq[0]
    return Code(str(item.get("CodeValue", "") or item.get("LongCodeValue", "") or "").strip(),
                str(item.get("CodingSchemeDesignator", "") or "").strip(),
                str(item.get("CodeMeaning", "") or "").strip())


def _int_list(value: Any) -> list[int]:
    if value is None or value == "":
        return []
    values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    out = []
    for v in values:
        try:
            out.append(int(v))
        except (TypeError, ValueError):
            continue
    return [v for v in out if v >= 1]


def title_of(ds: Dataset) -> tuple[Code, bool, bool]:
    """(document title, a teaching title?, one of this board's exports?) of a KOS: what decides,
    before its references are read, whether it can make a case."""
    title = _first_code(ds.get("ConceptNameCodeSequence")) or Code("", "", "")
    made_here = str(ds.get("Manufacturer", "") or "").strip() == MANUFACTURER
    return title, (title.value, title.scheme) in TEACHING_TITLES, made_here


def read_key_object(ds: Dataset) -> ReceivedKeyObject:
    """What a received KOS says, for the TCE receiver: its title, whether it is a teaching one,
    its description, delay reason and references (study, series, instance, frames).

    Raises KeyObjectProblem with a reason for the log when it references nothing, references
    another study than its own, or is not a KOS. The evidence sequence is the list of what is
    referenced (TID 2010 puts every referenced instance there); the content tree adds frames and
    presentation states. A KOS de-identified on the way in (AnonymizeOnIngest) keeps its evidence
    but not its content tree (PS3.15 Basic Profile: Content Sequence emptied): it still makes a case.
    """
    if not is_key_object(ds):
        raise KeyObjectProblem("not a Key Object Selection document")
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    if not study_uid:
        raise KeyObjectProblem(f"key object {sop_uid} has no Study Instance UID")
    title, teaching, made_here = title_of(ds)
    descriptions: list[str] = []
    delay = ""
    frames_of: dict[str, list[int]] = {}
    content_refs: dict[str, str] = {}
    states: list[str] = []
    for item in ds.get("ContentSequence") or []:
        vt = str(item.get("ValueType", "")).strip()
        name = _first_code(item.get("ConceptNameCodeSequence"))
        if vt == "TEXT" and name is not None and (name.value, name.scheme) == ("113012", "DCM"):
            text = str(item.get("TextValue", "") or "").strip()
            if text:
                descriptions.append(text)
        elif vt == "CODE":
            value = _first_code(item.get("ConceptCodeSequence"))
            if value is not None and (value.value, value.scheme) in DELAY_REASONS and not delay:
                delay = DELAY_REASONS[(value.value, value.scheme)]
        elif vt in ("IMAGE", "COMPOSITE", "WAVEFORM"):
            for ref in item.get("ReferencedSOPSequence") or []:
                uid = str(ref.get("ReferencedSOPInstanceUID", "") or "").strip()
                if not uid:
                    continue
                content_refs[uid] = str(ref.get("ReferencedSOPClassUID", "") or "")
                frames_of.setdefault(uid, []).extend(_int_list(ref.get("ReferencedFrameNumber")))
                for ps in ref.get("ReferencedSOPSequence") or []:
                    ps_uid = str(ps.get("ReferencedSOPInstanceUID", "") or "").strip()
                    if ps_uid and ps_uid not in states:
                        states.append(ps_uid)
    refs: list[Reference] = []
    other_studies: list[str] = []
    listed: set[str] = set()
    for st in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:
        st_uid = str(st.get("StudyInstanceUID", "") or "").strip()
        for se in st.get("ReferencedSeriesSequence") or []:
            se_uid = str(se.get("SeriesInstanceUID", "") or "").strip()
            for r in se.get("ReferencedSOPSequence") or []:
                uid = str(r.get("ReferencedSOPInstanceUID", "") or "").strip()
                sop_class = str(r.get("ReferencedSOPClassUID", "") or "").strip()
                if not uid or uid in listed or uid in states or sop_class == GSPS_SOP_CLASS:
                    continue
                listed.add(uid)
                if st_uid != study_uid:
                    other_studies.append(st_uid or "(none)")
                    continue
                refs.append(Reference(st_uid, se_uid, uid, sop_class, sorted(set(frames_of.get(uid, [])))))
    received = ReceivedKeyObject(sop_uid, study_uid, str(ds.get("SeriesInstanceUID", "") or ""), title,
                                 teaching, made_here, "\n\n".join(descriptions), delay, refs, states)
    if other_studies:
        raise KeyObjectProblem(
            f"key object {sop_uid} ({received.title_name}) of study {study_uid} references instances of "
            f"other studies ({', '.join(sorted(set(other_studies)))}): a teaching case is made from one study's "
            "key object; send one key object per study")
    missing_evidence = [u for u in content_refs if u not in listed]
    if missing_evidence:
        raise KeyObjectProblem(
            f"key object {sop_uid} references {len(missing_evidence)} instance(s) in its content that its "
            f"Current Requested Procedure Evidence Sequence does not list (e.g. {missing_evidence[0]})")
    if not refs:
        raise KeyObjectProblem(f"key object {sop_uid} ({received.title_name}) references no instance")
    return received
