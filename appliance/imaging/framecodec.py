"""The lossless wire format of /pipacs/instances/{id}/frames/{n}/pixels ("PXF1").

A classroom's limit is the air: every byte a student's iPad receives is received thirty times.
The frame's stored values go out exactly, in far fewer bytes than raw, and the browser undoes
them with what it already has plus a few lines of JS (static/pixels.js):

1. a predictor per channel: MED, the median edge detector of JPEG-LS (LOCO-I), from the left,
   upper and upper-left neighbours (first row: the left one; first column: the upper one);
2. the residuals modulo 2^bits, zigzagged (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...) so that small
   errors of either sign are small unsigned numbers;
3. byte planes: all low bytes, then all high bytes (four planes for 32-bit samples) (the high plane of a 12-bit CT is almost all
   zeros and deflates to nearly nothing);
4. a 16-byte header before it, and the whole body deflated (zlib, RFC 1950) sent with
   ``Content-Encoding: deflate``, which every browser undoes natively (no DecompressionStream,
   which older iPads lack). A client that does not accept deflate gets it inflated.

The choice and the zlib level are measured (bench/framecodec.py; README "Images for a class:
the wire format"). Baseline 8-bit JPEG frames are not re-encoded: their stored bytes go out as
image/jpeg and the browser decodes them.

Colour (3 channels) is first decorrelated as WebP and JPEG-LS do: green, red - green, blue - green
(modulo 2^bits), since most medical colour images (ultrasound, secondary captures) are largely grey,
where the two differences are zero (measured: US RGB 0.19x raw instead of 0.39x without it).

Header (little endian): b"PXF1", u8 sample type (1 uint8, 2 int8, 3 uint16, 4 int16, 5 uint32, 6 int32), u8 predictor
(0 none, 1 MED), u8 channels, u8 colour transform (0 none, 1 subtract green), u32 width, u32 height.
Planes follow channel by channel (after the transform), each in rows.
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
TYPES = {1: np.dtype("u1"), 2: np.dtype("i1"), 3: np.dtype("<u2"), 4: np.dtype("<i2"), 5: np.dtype("<u4"),
         6: np.dtype("<i4")}
CODE_OF_TYPE = {v: k for k, v in TYPES.items()}
PREDICT_NONE, PREDICT_MED = 0, 1
COLOUR_NONE, COLOUR_SUBTRACT_GREEN = 0, 1
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
    """The MED prediction of every sample of a 2-D plane (int64), from its original neighbours."""
    x = x.astype(np.int64, copy=False)
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
    x = plane.astype(np.int64)
    r = x - med_predict(x) if predictor == PREDICT_MED else x
    mask = (1 << bits) - 1
    r = r & mask                                     # modulo 2^bits ...
    r = np.where(r >= (1 << (bits - 1)), r - (1 << bits), r)   # ... as a signed residual
    z = (r << 1) ^ (r >> (bits - 1))                 # zigzag
    return (z & mask).astype({8: np.uint8, 16: np.uint16, 32: np.uint32}[bits])


def as_wire_type(values: np.ndarray) -> np.ndarray:
    """The stored values in one of the wire's sample types (8, 16 or 32 bits, signed or not)."""
    if values.dtype.kind == "b":
        values = values.astype(np.uint8)
    dt = values.dtype
    if dt.kind not in "ui" or dt.itemsize not in (1, 2, 4):
        raise DecodeError(f"pixels of type {dt} (floating point or 64-bit) have no lossless wire form; "
                          f"the /numpy route serves them")
    return values.astype(dt.newbyteorder("<"), copy=False)


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
    colour = COLOUR_SUBTRACT_GREEN if channels == 3 else COLOUR_NONE
    chans = [values[:, :, ch] for ch in range(channels)]
    if colour == COLOUR_SUBTRACT_GREEN:
        # differences centred in the sample type's range (unsigned: + 2^(bits-1)), wrapped to it, so that
        # a small difference of either sign is a small step for the predictor, not a jump from 0 to 255
        g = chans[1].astype(np.int64)
        offset = 0 if values.dtype.kind == "i" else 1 << (bits - 1)
        chans = [chans[1]] + [(c.astype(np.int64) - g + offset).astype(values.dtype) for c in (chans[0], chans[2])]
    planes = np.stack([residual_planes(c, bits, predictor) for c in chans])
    body = np.concatenate([((planes >> (8 * k)) & 0xFF).astype(np.uint8).ravel() for k in range(bits // 8)])
    header = HEADER.pack(MAGIC, CODE_OF_TYPE[values.dtype], predictor, channels, colour, width, height)
    return zlib.compress(header + body.tobytes(), level)


def decode(body: bytes) -> np.ndarray:
    """The inverse of ``encode`` (tests and the bench; the browser has its own in pixels.js)."""
    raw = zlib.decompress(body)
    magic, code, predictor, channels, colour, width, height = HEADER.unpack_from(raw)
    if magic != MAGIC or code not in TYPES:
        raise ValueError("not a PXF1 body")
    dt = TYPES[code]
    bits = dt.itemsize * 8
    n = width * height * channels
    data = np.frombuffer(raw, np.uint8, offset=HEADER.size)
    z = np.zeros(n, np.int64)
    for k in range(bits // 8):
        z |= data[k * n:(k + 1) * n].astype(np.int64) << (8 * k)
    r = (z >> 1) ^ -(z & 1)
    r = r.reshape(channels, height, width)
    mask = (1 << bits) - 1
    out = np.empty((channels, height, width), np.int64)
    signed = dt.kind == "i"
    half, full = (1 << (bits - 1) if signed else 1 << bits), 1 << bits
    for ch in range(channels):
        if predictor == PREDICT_NONE:
            out[ch] = r[ch] & mask
            if signed:
                out[ch] = np.where(out[ch] >= half, out[ch] - full, out[ch])
            continue
        res = r[ch].tolist()
        prev: list[int] = []
        for y in range(height):   # sequential, as the browser does it (Python ints: fast enough for tests)
            row, line = res[y], [0] * width
            for col in range(width):
                if y == 0:
                    p = line[col - 1] if col else 0
                elif col == 0:
                    p = prev[0]
                else:
                    a, b, c = line[col - 1], prev[col], prev[col - 1]
                    lo, hi = (a, b) if a < b else (b, a)
                    p = lo if c >= hi else hi if c <= lo else a + b - c
                v = (p + row[col]) & mask
                line[col] = v - full if v >= half else v   # the predictor works on the stored (signed) values
            out[ch, y] = line
            prev = line
    if colour == COLOUR_SUBTRACT_GREEN:
        g = out[0].copy()
        offset = 0 if signed else 1 << (bits - 1)
        out[0], out[1], out[2] = out[1] + g - offset, g, out[2] + g - offset
        out &= mask
        if signed:
            out = np.where(out >= half, out - full, out)
    out = out.astype(dt).transpose(1, 2, 0)
    return out[:, :, 0] if channels == 1 else out


def jpeg_layout(data: bytes) -> tuple[int, int, int, bytes, int | None] | None:
    """(SOF marker, sample precision, components, component IDs, Adobe APP14 colour transform or None)
    of a JPEG stream, read from its markers up to the frame header; None when it has none."""
    i, adobe = 2, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        segment = data[i + 4:i + 2 + length]
        if marker == 0xEE and segment[:5] == b"Adobe" and len(segment) >= 12:
            adobe = segment[11]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if len(segment) < 6:
                return None
            nf = segment[5]
            return marker, segment[0], nf, bytes(segment[6 + 3 * k] for k in range(nf) if 6 + 3 * k < len(segment)), \
                adobe
        i += 2 + length
    return None


def browser_shows_as_stored(photometric: str, jpeg: bytes) -> bool:
    """Whether a browser's JPEG decoder gives exactly what DICOM means by these bytes (up to the
    decoders' rounding): 8-bit baseline/extended/progressive Huffman, grey as MONOCHROME2, or colour
    as YCbCr (YBR_FULL, YBR_FULL_422) that is not marked as RGB. Anything else (RGB stored without
    the colour transform, which browsers may convert anyway; MONOCHROME1, palette) is decoded here."""
    layout = jpeg_layout(jpeg)
    if layout is None:
        return False
    sof, precision, nf, ids, adobe = layout
    if sof not in (0xC0, 0xC1, 0xC2) or precision != 8:
        return False
    if nf == 1:
        return photometric == "MONOCHROME2"
    return nf == 3 and photometric in ("YBR_FULL", "YBR_FULL_422") and adobe != 0 and ids != b"RGB"


def _stored_jpeg(ds: Dataset, frame: int) -> bytes | None:
    """The frame's stored JPEG bytes when the browser can show them as they are (see above)."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts != JPEGBaseline8Bit:
        return None
    from pydicom.encaps import generate_frames
    try:
        for i, data in enumerate(generate_frames(ds.PixelData, number_of_frames=number_of_frames(ds))):
            if i == frame:
                photometric = str(ds.get("PhotometricInterpretation", ""))
                return data if data[:2] == b"\xff\xd8" and browser_shows_as_stored(photometric, data) else None
    except Exception:  # noqa: BLE001 - broken encapsulation: decode it our way (and say why if that fails)
        return None
    return None


def stored_frame_body(part10: bytes, frame: int, level: int = ZLIB_LEVEL) -> bytes:
    """What /pixels serves for one frame, prefixed by its kind (KIND_PXF or KIND_JPEG): blocking,
    run it in a thread. Raises DecodeError (415) or FrameNotFound (404) as the image routes do."""
    return frame_body(load(part10), frame, level)


def frame_body(ds: Dataset, frame: int, level: int = ZLIB_LEVEL) -> bytes:
    """``stored_frame_body`` of an instance already read: a multi-frame instance is read once for
    all its frames when a class is prepared."""
    if 0 <= frame < number_of_frames(ds):
        jpeg = _stored_jpeg(ds, frame)
        if jpeg is not None:
            return KIND_JPEG + jpeg
    values = frame_array(ds, frame)
    if is_palette(ds):
        values = palette_rgb(ds, values)
    return KIND_PXF + encode(values, level)


def is_palette(ds: Dataset) -> bool:
    return str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR"


def palette_bits(ds: Dataset) -> int:
    """The bits of a palette's entries (its descriptor's third value): the served RGB's sample size."""
    try:
        return 8 if int(ds.RedPaletteColorLookupTableDescriptor[2]) == 8 else 16
    except (AttributeError, TypeError, ValueError, IndexError, KeyError):
        return 16


def palette_rgb(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """PALETTE COLOR indices as the RGB the palette gives (the browser has no LUT): uint8 or uint16."""
    from pydicom.pixels import apply_color_lut
    try:
        return apply_color_lut(values, ds)
    except Exception:  # noqa: BLE001 - a missing or malformed palette
        raise DecodeError("the palette of this PALETTE COLOR image cannot be applied") from None


__all__ = ["is_palette", "palette_bits", "palette_rgb", "encode", "decode", "stored_frame_body", "frame_body", "med_predict", "KIND_PXF", "KIND_JPEG", "CONTENT_TYPE",
           "ZLIB_LEVEL", "MAGIC"]
