"""The lossless wire format of /pipacs/instances/{id}/frames/{n}/pixels ("PXF1").

A classroom's limit is the air: every byte a student's iPad receives is received thirty times.
The frame's stored values go out exactly, in far fewer bytes than raw, and the browser undoes
them with what it already has plus a few lines of JS (static/pixels.js):

1. a predictor per channel: MED, the median edge detector of JPEG-LS (LOCO-I), from the left,
   upper and upper-left neighbours (first row: the left one; first column: the upper one);
2. the residuals modulo 2^bits, zigzagged (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...) so that small
   errors of either sign are small unsigned numbers;
3. byte planes: all low bytes, then all high bytes (the high plane of a 12-bit CT is almost all
   zeros and deflates to nearly nothing);
4. a 16-byte header before it, and the whole body deflated (zlib, RFC 1950) sent with
   ``Content-Encoding: deflate``, which every browser undoes natively (no DecompressionStream,
   which older iPads lack). A client that does not accept deflate gets it inflated.

The choice and the zlib level are measured (bench/framecodec.py; README "Images for a class:
the wire format"). Baseline 8-bit JPEG frames are not re-encoded: their stored bytes go out as
image/jpeg and the browser decodes them.

Header (little endian): b"PXF1", u8 sample type (1 uint8, 2 int8, 3 uint16, 4 int16), u8 predictor
(0 none, 1 MED), u8 channels, u8 reserved (0), u32 width, u32 height.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit

from .render import DecodeError, frame_array, load, number_of_frames

MAGIC = b"PXF1"
HEADER = struct.Struct("<4sBBBBII")
TYPES = {1: np.dtype("u1"), 2: np.dtype("i1"), 3: np.dtype("<u2"), 4: np.dtype("<i2")}
CODE_OF_TYPE = {v: k for k, v in TYPES.items()}
PREDICT_NONE, PREDICT_MED = 0, 1
ZLIB_LEVEL = 6          # measured: level 9 is 1-2 % smaller and several times slower on a Pi-class core
MAX_SIDE = 16384        # a frame wider or taller than this is refused (a Pi's memory)

# what the cached value starts with: which kind of body follows
KIND_PXF, KIND_JPEG = b"Z", b"J"
CONTENT_TYPE = {KIND_PXF: "application/x-pipacs-pixels", KIND_JPEG: "image/jpeg"}


@dataclass
class Frame:
    """Decoded stored values: (height, width) or (height, width, channels)."""
    values: np.ndarray

    @property
    def channels(self) -> int:
        return 1 if self.values.ndim == 2 else self.values.shape[2]


def med_predict(x: np.ndarray) -> np.ndarray:
    """The MED prediction of every sample of a 2-D plane (int32), from its original neighbours."""
    x = x.astype(np.int32, copy=False)
    pred = np.zeros_like(x)
    if x.shape[1] > 1:
        pred[0, 1:] = x[0, :-1]
    if x.shape[0] > 1:
        pred[1:, 0] = x[:-1, 0]
        a = x[1:, :-1]   # left
        b = x[:-1, 1:]   # up
        c = x[:-1, :-1]  # up-left
        lo = np.minimum(a, b)
        hi = np.maximum(a, b)
        pred[1:, 1:] = np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))
    return pred


def residual_planes(plane: np.ndarray, bits: int, predictor: int) -> np.ndarray:
    """Zigzagged residuals of one channel plane, as unsigned ``bits``-bit values."""
    x = plane.astype(np.int32)
    r = x - med_predict(x) if predictor == PREDICT_MED else x
    mask = (1 << bits) - 1
    r = r & mask                                     # modulo 2^bits ...
    r = np.where(r >= (1 << (bits - 1)), r - (1 << bits), r)   # ... as a signed residual
    z = (r << 1) ^ (r >> (bits - 1))                 # zigzag
    return (z & mask).astype(np.uint16 if bits == 16 else np.uint8)


def as_wire_type(values: np.ndarray) -> np.ndarray:
    """The stored values in one of the wire's sample types (8 or 16 bits, signed or not)."""
    dt = values.dtype
    if dt.kind == "b":
        values = values.astype(np.uint8)
        dt = values.dtype
    if dt.kind not in "ui" or dt.itemsize > 2:
        if dt.kind in "ui" and values.size and values.min() >= -32768 and values.max() <= 65535:
            values = values.astype(np.int16 if values.min() < 0 else np.uint16)
        else:
            raise DecodeError(f"pixels of type {dt} have no lossless wire form here; use /numpy")
    return values.astype(values.dtype.newbyteorder("<"), copy=False)


def encode(values: np.ndarray, level: int = ZLIB_LEVEL, predictor: int = PREDICT_MED) -> bytes:
    """A frame's stored values as a PXF1 body, deflated (zlib)."""
    values = as_wire_type(values)
    if values.ndim == 2:
        values = values[:, :, np.newaxis]
    if values.ndim != 3:
        raise DecodeError(f"a frame of shape {values.shape} is not an image")
    height, width, channels = values.shape
    if max(height, width) > MAX_SIDE:
        raise DecodeError(f"a frame of {width}x{height} is larger than {MAX_SIDE} on a side")
    bits = values.dtype.itemsize * 8
    planes = np.stack([residual_planes(values[:, :, ch], bits, predictor) for ch in range(channels)])
    if bits == 16:
        body = np.concatenate([(planes & 0xFF).astype(np.uint8).ravel(), (planes >> 8).astype(np.uint8).ravel()])
    else:
        body = planes.ravel()
    header = HEADER.pack(MAGIC, CODE_OF_TYPE[values.dtype], predictor, channels, 0, width, height)
    return zlib.compress(header + body.tobytes(), level)


def decode(body: bytes) -> np.ndarray:
    """The inverse of ``encode`` (tests and the bench; the browser has its own in pixels.js)."""
    raw = zlib.decompress(body)
    magic, code, predictor, channels, _, width, height = HEADER.unpack_from(raw)
    if magic != MAGIC or code not in TYPES:
        raise ValueError("not a PXF1 body")
    dt = TYPES[code]
    bits = dt.itemsize * 8
    n = width * height * channels
    data = np.frombuffer(raw, np.uint8, offset=HEADER.size)
    z = data[:n].astype(np.int64)
    if bits == 16:
        z |= data[n:2 * n].astype(np.int64) << 8
    r = (z >> 1) ^ -(z & 1)
    r = r.reshape(channels, height, width)
    mask = (1 << bits) - 1
    out = np.empty((channels, height, width), np.int64)
    for ch in range(channels):
        if predictor == PREDICT_NONE:
            out[ch] = r[ch] & mask
            continue
        x = out[ch]
        res = r[ch]
        for y in range(height):   # sequential, as the browser does it: slow in Python, fine for tests
            for col in range(width):
                if y == 0:
                    p = x[0, col - 1] if col else 0
                elif col == 0:
                    p = x[y - 1, 0]
                else:
                    a, b, c = x[y, col - 1], x[y - 1, col], x[y - 1, col - 1]
                    lo, hi = min(a, b), max(a, b)
                    p = lo if c >= hi else hi if c <= lo else a + b - c
                x[y, col] = (p + res[y, col]) & mask
    if dt.kind == "i":
        out = np.where(out >= (1 << (bits - 1)), out - (1 << bits), out)
    out = out.astype(dt).transpose(1, 2, 0)
    return out[:, :, 0] if channels == 1 else out


def _stored_jpeg(ds: Dataset, frame: int) -> bytes | None:
    """The frame's stored baseline JPEG bytes when the browser can show them as they are: 8-bit
    monochrome or colour (YBR_FULL_422 / YBR_FULL / RGB, which browsers' JPEG decoders take)."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts != JPEGBaseline8Bit or int(ds.get("BitsStored", 8) or 8) != 8:
        return None
    if str(ds.get("PhotometricInterpretation", "")) not in ("MONOCHROME2", "YBR_FULL_422", "YBR_FULL", "RGB"):
        return None      # MONOCHROME1 and palette images need our decode (inversion, lookup) to stay exact
    from pydicom.encaps import generate_frames
    try:
        n = number_of_frames(ds)
        for i, data in enumerate(generate_frames(ds.PixelData, number_of_frames=n)):
            if i == frame:
                return data if data[:2] == b"\xff\xd8" else None
    except Exception:  # noqa: BLE001 - broken encapsulation: decode it our way (and say why if that fails)
        return None
    return None


def stored_frame_body(part10: bytes, frame: int, level: int = ZLIB_LEVEL) -> bytes:
    """What /pixels serves for one frame, prefixed by its kind (KIND_PXF or KIND_JPEG): blocking,
    run it in a thread. Raises DecodeError (415) or FrameNotFound (404) as the image routes do."""
    ds = load(part10)
    frame_array_check = number_of_frames(ds)
    if 0 <= frame < frame_array_check:
        jpeg = _stored_jpeg(ds, frame)
        if jpeg is not None:
            return KIND_JPEG + jpeg
    values = frame_array(ds, frame)
    return KIND_PXF + encode(values, level)


__all__ = ["encode", "decode", "stored_frame_body", "med_predict", "KIND_PXF", "KIND_JPEG", "CONTENT_TYPE",
           "ZLIB_LEVEL", "MAGIC"]
