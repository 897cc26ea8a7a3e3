"""The order a viewer shows a series in, and what it needs to know of each frame.

``build_stack`` is a pure function over header datasets (read without pixel data): the web
route reads the headers off the event loop, calls it once per series content, and caches the
answer. The order is the one radiologists know from OHIF/cornerstone and Horos: when every
frame has a position and all share one orientation, by position along the slice normal
(cross(row, col) of Image Orientation Patient) . Image Position Patient, DESCENDING (an axial
CT starts with its most superior slice), ties by Instance Number then frame; otherwise by
Instance Number, and a notice says why. Whatever the headers, every image is in the answer.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

IOP_TOLERANCE = 1e-3        # two orientations closer than this (each cosine) are the same
POSITION_DECIMALS = 2       # positions equal to 1/100 mm are the same position (duplicates)
CROSS_SECTIONAL = {"CT", "MR", "PT", "NM"}   # modalities whose images are expected to have positions

PIXELS_URL = "/pipacs/instances/{instance}/frames/{frame}/pixels"
VERSION_CHARS = 16          # the file UUID's first 16 hex digits in the URL: a replaced file is a new URL


def pixels_url(instance: str, frame: int, version: str | None = None) -> str:
    """A frame's Pixels URL; ``version`` (the file UUID) makes it name one content, so the browser may
    keep it for good (``immutable``) and a replaced instance is a new URL."""
    url = PIXELS_URL.format(instance=instance, frame=frame)
    if version:
        url += "?v=" + version.replace("-", "")[:VERSION_CHARS]
    return url


def _floats(value: Any, n: int) -> list[float] | None:
    """``n`` finite numbers from a multi-valued element, or None when it is absent or malformed."""
    if value is None:
        return None
    try:
        items = list(value) if not isinstance(value, (str, bytes)) else str(value).split("\\")
        out = [float(v) for v in items]
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        return None
    return out


def _float(value: Any) -> float | None:
    """A number from a (possibly multi-valued) element: its first value."""
    if value is None:
        return None
    if not isinstance(value, (str, bytes, int, float)):
        try:
            value = value[0] if len(value) else None
        except TypeError:
            return None
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _int(value: Any) -> int | None:
    x = _float(value)
    return int(x) if x is not None and x == int(x) else None


def _text(ds: Dataset, keyword: str) -> str:
    try:
        v = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed value reads as absent
        return ""
    if v is None:
        return ""
    if isinstance(v, (list, tuple, MultiValue)):
        v = v[0] if len(v) else ""
    return str(v).strip()


def _get(ds: Dataset | None, keyword: str) -> Any:
    if ds is None:
        return None
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom raises on values it cannot convert
        return None


def _item(ds: Dataset | None, keyword: str) -> Dataset | None:
    """The first item of a sequence in ``ds``, or None."""
    seq = _get(ds, keyword)
    try:
        return seq[0] if seq is not None and len(seq) else None
    except (TypeError, IndexError):
        return None


def number_of_frames(ds: Dataset) -> int:
    n = _int(_get(ds, "NumberOfFrames"))
    return max(1, n or 1)


def normal_of(iop: list[float]) -> tuple[float, float, float]:
    """The slice normal: cross product of the row and column direction cosines."""
    r, c = iop[:3], iop[3:]
    return (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])


def plane_name(iop: list[float]) -> str:
    """axial, coronal, sagittal or oblique: the patient axis the slice normal is closest to."""
    n = normal_of(iop)
    axis = max(range(3), key=lambda i: abs(n[i]))
    if abs(n[axis]) < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


class _Frame:
    """What one frame contributes: its document entry and its sort keys."""

    __slots__ = ("doc", "frame", "iop", "ipp", "number", "uid")

    def __init__(self, doc: dict, ipp: list[float] | None, iop: list[float] | None, uid: str,
                 number: int | None, frame: int):
        self.doc, self.ipp, self.iop, self.uid, self.number, self.frame = doc, ipp, iop, uid, number, frame


def _frame_values(ds: Dataset, shared: Dataset | None, per_frame: Dataset | None) -> dict[str, Any]:
    """Geometry and pixel transforms of one frame: the per-frame functional group first, then the
    shared one, then the top level (classic single-frame images have only the last)."""
    groups = [g for g in (per_frame, shared) if g is not None]

    def grouped(sequence: str, keyword: str) -> Any:
        for g in groups:
            v = _get(_item(g, sequence), keyword)
            if v is not None:
                return v
        return _get(ds, keyword)

    spacing, source = _floats(grouped("PixelMeasuresSequence", "PixelSpacing"), 2), "PixelSpacing"
    if spacing is None:
        spacing, source = _floats(_get(ds, "ImagerPixelSpacing"), 2), "ImagerPixelSpacing"
    slope = _float(grouped("PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _float(grouped("PixelValueTransformationSequence", "RescaleIntercept"))
    rescale_type = grouped("PixelValueTransformationSequence", "RescaleType")
    return {
        "ImagePositionPatient": _floats(grouped("PlanePositionSequence", "ImagePositionPatient"), 3),
        "ImageOrientationPatient": _floats(grouped("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
        "PixelSpacing": spacing, "SpacingSource": source if spacing is not None else None,
        "SliceThickness": _float(grouped("PixelMeasuresSequence", "SliceThickness")),
        "RescaleSlope": slope if slope not in (None, 0.0) else 1.0,
        "RescaleIntercept": intercept if intercept is not None else 0.0,
        "RescaleType": str(rescale_type).strip() or None if rescale_type is not None else None,
        "WindowCenter": _float(grouped("FrameVOILUTSequence", "WindowCenter")),
        "WindowWidth": _float(grouped("FrameVOILUTSequence", "WindowWidth")),
    }


def _is_image(ds: Dataset) -> bool:
    return _int(_get(ds, "Rows")) not in (None, 0) and _int(_get(ds, "Columns")) not in (None, 0)


def _frames_of(instance: str, ds: Dataset, version: str | None = None) -> list[_Frame]:
    n = number_of_frames(ds)
    modality = _text(ds, "Modality")
    number = _int(_get(ds, "InstanceNumber"))
    uid = _text(ds, "SOPInstanceUID")
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame_seq = _get(ds, "PerFrameFunctionalGroupsSequence")
    try:
        per_frame = list(per_frame_seq) if per_frame_seq is not None else []
    except TypeError:
        per_frame = []
    base = {
        "Instance": instance, "NumberOfFrames": n, "InstanceNumber": number,
        "SliceLocation": _float(_get(ds, "SliceLocation")),
        "Rows": _int(_get(ds, "Rows")), "Columns": _int(_get(ds, "Columns")),
        "SamplesPerPixel": _int(_get(ds, "SamplesPerPixel")) or 1,
        "PhotometricInterpretation": _text(ds, "PhotometricInterpretation"),
        "BitsStored": _int(_get(ds, "BitsStored")) or _int(_get(ds, "BitsAllocated")) or 8,
        "PixelRepresentation": _int(_get(ds, "PixelRepresentation")) or 0,
    }
    if base["PhotometricInterpretation"] == "PALETTE COLOR":
        # served as the RGB the palette gives (framecodec applies it): the viewer has no LUT
        base.update(PhotometricInterpretation="RGB", SamplesPerPixel=3, BitsStored=_palette_bits(ds),
                    PixelRepresentation=0)
    out = []
    for f in range(n):
        values = _frame_values(ds, shared, per_frame[f] if f < len(per_frame) else None)
        if n > 1 and not per_frame:
            # a multi-frame without per-frame positions: one position for all frames says nothing
            values["ImagePositionPatient"] = None
        ipp, iop = values["ImagePositionPatient"], values["ImageOrientationPatient"]
        position = None
        if ipp is not None and iop is not None:
            normal = normal_of(iop)
            position = round(sum(a * b for a, b in zip(normal, ipp)), 6)
        units = "HU" if values["RescaleType"] == "HU" or (modality == "CT" and values["RescaleType"] is None) \
            else None
        doc = {**base, "Frame": f, "Position": position, **values, "Units": units,
               "Pixels": pixels_url(instance, f, version)}
        # key order as the contract lists it (readable answers)
        doc = {k: doc[k] for k in _KEYS}
        out.append(_Frame(doc, ipp, iop, uid, number, f))
    return out


_KEYS = ["Instance", "Frame", "NumberOfFrames", "InstanceNumber", "Position", "SliceLocation",
         "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SpacingSource", "SliceThickness",
         "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsStored", "PixelRepresentation",
         "RescaleSlope", "RescaleIntercept", "RescaleType", "Units", "WindowCenter", "WindowWidth", "Pixels"]


def _palette_bits(ds: Dataset) -> int:
    d = _get(ds, "RedPaletteColorLookupTableDescriptor")
    try:
        return 8 if int(d[2]) == 8 else 16
    except (TypeError, ValueError, IndexError):
        return 16


def _same_orientation(a: list[float], b: list[float]) -> bool:
    return all(abs(x - y) <= IOP_TOLERANCE for x, y in zip(a, b))


def _images(n: int) -> str:
    return "1 image" if n == 1 else f"{n} images"


def _orientation_groups(frames: list[_Frame]) -> list[tuple[list[float], int]]:
    groups: list[tuple[list[float], int]] = []
    for fr in frames:
        assert fr.iop is not None
        for i, (iop, count) in enumerate(groups):
            if _same_orientation(iop, fr.iop):
                groups[i] = (iop, count + 1)
                break
        else:
            groups.append((fr.iop, 1))
    return groups


def _by_number(fr: _Frame) -> tuple:
    return (fr.number is None, fr.number if fr.number is not None else 0, fr.frame, fr.uid)


def order_frames(frames: list[_Frame], modality: str) -> tuple[str, list[_Frame], list[str]]:
    """(Order, frames in display order, notices)."""
    notices: list[str] = []
    if not frames:
        return "instance-number", [], notices
    missing = [fr for fr in frames if fr.ipp is None or fr.iop is None]
    if missing:
        if len(missing) < len(frames):
            notices.append(f"{_images(len(missing))} of {len(frames)} have no position: ordered by Instance Number")
        elif len(frames) > 1 and modality in CROSS_SECTIONAL:
            notices.append("no image has a position: ordered by Instance Number")
        return "instance-number", sorted(frames, key=_by_number), notices
    groups = _orientation_groups(frames)
    if len(groups) > 1:
        parts = ", ".join(f"{plane_name(iop)} {count}" for iop, count in groups)
        notices.append(f"{len(groups)} orientations in this series ({parts}): ordered by Instance Number")
        return "instance-number", sorted(frames, key=_by_number), notices
    ordered = sorted(frames, key=lambda fr: (-fr.doc["Position"], *_by_number(fr)))
    shared = Counter(round(fr.doc["Position"], POSITION_DECIMALS) for fr in frames)
    duplicates = sum(c for c in shared.values() if c > 1)
    if duplicates:
        notices.append(f"{_images(duplicates)} share a position with another")
    return "position", ordered, notices


def _frame_time(ds: Dataset) -> float | None:
    """Milliseconds between frames: FrameTime, else 1000 / RecommendedDisplayFrameRate or CineRate."""
    t = _float(_get(ds, "FrameTime"))
    if t is not None and t > 0:
        return t
    for keyword in ("RecommendedDisplayFrameRate", "CineRate"):
        rate = _float(_get(ds, keyword))
        if rate is not None and rate > 0:
            return round(1000.0 / rate, 3)
    return None


def _identity_removed(ds: Dataset) -> bool:
    return _text(ds, "PatientIdentityRemoved").upper() == "YES"


def build_stack(instances: list[tuple[str, Dataset]], versions: dict[str, str] | None = None) -> dict:
    """The series part of the stack document (Order, Notices, Frames and the series' own tags)
    from (instance public ID, header dataset) pairs; the route adds the IDs and the revision.
    ``versions`` (instance public ID -> file UUID) puts the content in each Pixels URL."""
    versions = versions or {}
    frames: list[_Frame] = []
    not_images = 0
    first: Dataset | None = None
    images: list[Dataset] = []
    for instance, ds in instances:
        if not _is_image(ds):
            not_images += 1
            continue
        first = first if first is not None else ds
        frames.extend(_frames_of(instance, ds, versions.get(instance)))
        images.append(ds)
    head = first if first is not None else (instances[0][1] if instances else Dataset())
    modality = _text(head, "Modality")
    order, ordered, notices = order_frames(frames, modality)
    sizes = Counter((fr.doc["Columns"], fr.doc["Rows"]) for fr in frames)
    if len(sizes) > 1:
        listed = ", ".join(f"{c}x{r}" for (c, r), _ in sizes.most_common())
        notices.append(f"frames of {len(sizes)} different sizes ({listed})")
    references = Counter(_text(ds, "FrameOfReferenceUID") or None for ds in images)
    known = [u for u in references if u is not None]
    if len(references) > 1:
        without = references.get(None, 0)
        notices.append(f"{len(known)} different frames of reference in this series" if not without else
                       f"{_images(without)} of {len(images)} have no frame of reference")
    frame_of_reference = references.most_common(1)[0][0] if len(known) == 1 and None not in references else None
    frame_time = next((t for t in (_frame_time(ds) for ds in images) if t is not None), None)
    if not frames:
        notices.append("this series has no image")
    elif not_images:
        notices.append(f"{not_images} instance{'s' if not_images > 1 else ''} without an image not shown")
    return {
        "SeriesInstanceUID": _text(head, "SeriesInstanceUID"), "Modality": modality,
        "SeriesNumber": _int(_get(head, "SeriesNumber")),
        "SeriesDescription": _text(head, "SeriesDescription"), "StudyDescription": _text(head, "StudyDescription"),
        "FrameOfReferenceUID": frame_of_reference, "FrameTime": frame_time,
        "PatientIdentityRemoved": _identity_removed(head), "PatientName": _text(head, "PatientName"),
        "Order": order, "Notices": notices, "Frames": [fr.doc for fr in ordered],
    }


__all__ = ["pixels_url", "VERSION_CHARS", "build_stack", "order_frames", "normal_of", "plane_name", "number_of_frames", "PIXELS_URL"]
