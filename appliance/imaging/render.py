"""Pixels: decode a frame, apply the modality and VOI transforms, make an 8-bit picture.

Pure functions over pydicom datasets and numpy arrays, no I/O: callers run them off
the event loop. Decoding goes through pydicom's pixel handlers (numpy for native data,
the pylibjpeg plugins for JPEG, JPEG-LS, JPEG 2000 and RLE).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

MAX_OUTPUT_SIDE = 4096  # a bigger requested size is clamped: a Pi must not render a 100000-pixel PNG


# What a frame is decoded with when its file lacks the attribute, as Orthanc (DCMTK) assumes: unsigned
# samples, one per pixel. A file without PhotometricInterpretation is refused, as Orthanc refuses it.
ASSUMED_WHEN_ABSENT = {"PixelRepresentation": 0, "SamplesPerPixel": 1}


class DecodeError(ValueError):
    """The pixel data cannot be decoded; the message says why (HTTP 415/422)."""


class FrameNotFound(LookupError):
    pass


def load(part10: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(part10), force=True)


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def frame_array(ds: Dataset, index: int) -> np.ndarray:
    """Stored values of one frame (0-based); colour frames as RGB (YBR converted)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DecodeError("this instance has no pixel data")
    n = number_of_frames(ds)
    if not 0 <= index < n:
        raise FrameNotFound(f"frame {index} does not exist: this instance has {n} frame(s), numbered from 0")
    for keyword, value in ASSUMED_WHEN_ABSENT.items():
        if keyword not in ds:
            setattr(ds, keyword, value)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pydicom.pixels.pixel_array(ds, index=index)
    except Exception as e:  # noqa: BLE001 - decoders raise many types on bad data
        ts = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        name = getattr(ts, "name", ts)
        raise DecodeError(f"cannot decode the pixel data ({name}): {str(e).splitlines()[0][:200]}") from None
    return arr


def is_color(ds: Dataset) -> bool:
    return int(ds.get("SamplesPerPixel", 1) or 1) > 1 or str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR"


def modality_values(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """Rescale slope/intercept (or a Modality LUT) applied: Hounsfield units for CT."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = pydicom.pixels.apply_modality_lut(arr, ds)
    except Exception:  # noqa: BLE001 - a broken LUT: show the stored values
        out = arr
    return out.astype(np.float32, copy=False)  # float32: half the memory traffic, ample precision


@dataclass
class Window:
    center: float
    width: float


def _first(v) -> float | None:
    if v is None:
        return None
    if isinstance(v, (list, pydicom.multival.MultiValue)):
        v = v[0] if len(v) else None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def file_window(ds: Dataset) -> Window | None:
    c, w = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if c is None or w is None or w <= 0:
        return None
    return Window(c, w)


def minmax_window(values: np.ndarray) -> Window:
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= lo:
        hi = lo + 1
    return Window((lo + hi) / 2, hi - lo)


def apply_window(values: np.ndarray, w: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 linear VOI function, to 0..255."""
    lo = w.center - 0.5 - (w.width - 1) / 2
    scale = np.float32(255.0 / max(w.width - 1, 1e-6))
    scaled = (values - np.float32(lo)) * scale
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def to_rgb8(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """Colour frames as 8-bit RGB (palette colour looked up, 16-bit colour scaled down)."""
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pydicom.pixels.apply_color_lut(arr, ds)
    if arr.dtype != np.uint8:
        bits = int(ds.get("BitsStored", 8) or 8) if str(ds.get("PhotometricInterpretation", "")) != "PALETTE COLOR" \
            else 16
        arr = (arr.astype(np.float64) / (2 ** bits - 1) * 255).clip(0, 255).astype(np.uint8)
    return arr


@dataclass
class RenderRequest:
    frame: int = 0
    mode: str = "rendered"            # "rendered": the file's window; "preview": min/max stretch
    center: float | None = None
    width: float | None = None
    out_width: int | None = None
    out_height: int | None = None
    smooth: bool = True


def render(ds: Dataset, req: RenderRequest) -> Image.Image:
    arr = frame_array(ds, req.frame)
    if is_color(ds):
        img = Image.fromarray(to_rgb8(ds, arr), "RGB")
    else:
        if arr.ndim != 2:
            arr = arr.reshape(arr.shape[-2], arr.shape[-1])
        values = modality_values(ds, arr)
        if req.center is not None and req.width is not None and req.width > 0:
            w = Window(req.center, req.width)
        elif req.mode == "rendered":
            w = file_window(ds) or minmax_window(values)
        else:
            w = minmax_window(values)
        out = apply_window(values, w)
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            out = 255 - out  # low values are white in MONOCHROME1
        img = Image.fromarray(out, "L")
    return resize(img, req.out_width, req.out_height, req.smooth)


def resize(img: Image.Image, width: int | None, height: int | None, smooth: bool = True) -> Image.Image:
    """Fit inside width x height keeping the aspect ratio; never larger than MAX_OUTPUT_SIDE."""
    if not width and not height:
        if max(img.size) <= MAX_OUTPUT_SIDE:
            return img
        width = height = MAX_OUTPUT_SIDE
    w0, h0 = img.size
    width = min(width or MAX_OUTPUT_SIDE, MAX_OUTPUT_SIDE)
    height = min(height or MAX_OUTPUT_SIDE, MAX_OUTPUT_SIDE)
    scale = min(width / w0, height / h0)
    size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
    if size == img.size:
        return img
    return img.resize(size, Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST)


def encode_image(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG", compress_level=1)  # fast: a Pi should spend its time elsewhere
    return buf.getvalue()


def integer_image(ds: Dataset, frame: int, bits: int) -> Image.Image:
    """Orthanc's /image-uint8 and /image-uint16: stored values clipped to the range, no windowing."""
    arr = frame_array(ds, frame)
    if is_color(ds):
        if bits != 8:
            raise DecodeError("a colour image has no 16-bit grayscale form; ask for image-uint8 or preview")
        return Image.fromarray(to_rgb8(ds, arr), "RGB")
    if arr.ndim != 2:
        arr = arr.reshape(arr.shape[-2], arr.shape[-1])
    top = 255 if bits == 8 else 65535
    clipped = np.clip(arr.astype(np.int64), 0, top)
    if bits == 8:
        return Image.fromarray(clipped.astype(np.uint8), "L")
    return Image.fromarray(clipped.astype(np.uint16))  # mode I;16


def frame_bytes(ds: Dataset, frame: int) -> bytes:
    """One frame decoded, little endian, as DICOMweb's frames and Orthanc's /raw serve it."""
    arr = frame_array(ds, frame)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr).tobytes()
