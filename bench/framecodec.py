"""Which lossless wire format for /pipacs/instances/{id}/frames/{n}/pixels: measured, not guessed.

    PYTHONPATH=. python -m bench.framecodec [--markdown]

For each image (slices of the class bench's 100-slice CT phantom, tests/synth.py; pydicom's test
files: CT, MR, NM, US/secondary capture colour; and a simpler 512x512 CT phantom here: body outline,
lungs, bone, air at -1000 HU with noise, -2000 padding outside the reconstruction circle, Gaussian
noise of 15 HU, white or correlated) it prints the size of each candidate as a
ratio of the raw stored values, and the encode time (best of 5, this machine; a Pi 4 core is
some 3-5 times slower). Candidates are what a browser undoes natively or with a few lines of JS
(a predictor, zigzag, byte planes, deflate), beside JPEG 2000 lossless (openjpeg) and JPEG-LS
lossless (CharLS through pyjpegls, the optional ``bench`` extra) as references: those need a
WebAssembly decoder the pages do not have. The README's table is this script's output.
"""

from __future__ import annotations

import argparse
import time
import warnings
import zlib
from collections.abc import Callable

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from appliance.imaging import framecodec
from appliance.imaging.framecodec import PREDICT_MED, PREDICT_NONE, as_wire_type, encode

FILES = [
    ("CT_small.dcm", "CT 128x128 int16"),
    ("693_J2KI.dcm", "CT 512x512 int16, stored J2K"),
    ("MR_small.dcm", "MR 64x64 int16"),
    ("examples_overlay.dcm", "MR 484x300 uint16 (12 bit)"),
    ("JPEG2000.dcm", "NM 256x1024 int16, stored J2K"),
    ("examples_rgb_color.dcm", "US 320x240 RGB 8 bit"),
    ("SC_rgb_jpeg_gdcm.dcm", "SC 100x100 RGB, stored JPEG lossless"),
]


def ct_phantom(size: int = 512, sigma: float = 15.0, seed: int = 0, soft_kernel: bool = False) -> np.ndarray:
    """A realistic axial CT slice in stored values (int16, Rescale Intercept -1024): what real CT
    gives a compressor, unlike a uniform-noise square. Noise is white (the hard case) unless
    ``soft_kernel``: correlated over neighbours as a soft reconstruction kernel makes it."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float64) - size / 2) / (size / 2)
    hu = np.full((size, size), -1000.0)                                    # air
    body = (xx / 0.78) ** 2 + ((yy - 0.05) / 0.58) ** 2 < 1
    hu[body] = -100.0                                                      # subcutaneous fat
    hu[(xx / 0.72) ** 2 + ((yy - 0.05) / 0.52) ** 2 < 1] = 40.0            # muscle, soft tissue
    for cx in (-0.33, 0.33):
        hu[((xx - cx) / 0.25) ** 2 + ((yy + 0.02) / 0.35) ** 2 < 1] = -850.0   # lungs
    hu[((xx - 0.05) / 0.16) ** 2 + ((yy + 0.05) / 0.14) ** 2 < 1] = 45.0   # heart
    hu[(xx ** 2 + (yy - 0.42) ** 2) < 0.07 ** 2] = 700.0                   # vertebral body
    hu[(xx ** 2 + (yy - 0.42) ** 2) < 0.045 ** 2] = 250.0                  # its cancellous core
    hu[(xx ** 2 + (yy + 0.02) ** 2) < 0.035 ** 2] = 180.0                  # contrast in the aorta
    hu[np.abs(yy - 0.68) < 0.015] = -200.0                                 # the table
    noise = rng.normal(0, sigma, (size, size))
    if soft_kernel:
        k = np.array([1.0, 2.0, 1.0])
        noise = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 1, noise)
        noise = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 0, noise)
        noise *= sigma / noise.std()
    hu += noise
    stored = np.round(hu + 1024).astype(np.int16)
    stored[xx ** 2 + yy ** 2 >= 1] = -2000          # Pixel Padding Value outside the reconstruction circle
    return stored


def images() -> list[tuple[str, np.ndarray]]:
    from tests.synth import ct_phantom_slice  # the class bench's CT (bench/classroom.py)
    out = [(f"class bench CT, slice {k} of 100 (tests/synth.py)", ct_phantom_slice(z=2.5 * k, t=k / 99))
           for k in (10, 50, 90)]
    out += [("CT phantom 512x512, white noise 15 HU", ct_phantom()),
            ("CT phantom 512x512, soft-kernel noise 15 HU", ct_phantom(soft_kernel=True, seed=1))]
    for name, label in FILES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(get_testdata_file(name))
            arr = pydicom.pixels.pixel_array(ds, index=0)
        out.append((f"{label} ({name})", arr))
    return out


def _zigzag_planes(x: np.ndarray, pred: np.ndarray, bits: int) -> bytes:
    r = (x.astype(np.int32) - pred) & ((1 << bits) - 1)
    r = np.where(r >= 1 << (bits - 1), r - (1 << bits), r)
    z = ((r << 1) ^ (r >> (bits - 1))) & ((1 << bits) - 1)
    if bits == 16:
        return (z & 0xFF).astype(np.uint8).tobytes() + (z >> 8).astype(np.uint8).tobytes()
    return z.astype(np.uint8).tobytes()


def left_planes(values: np.ndarray, level: int) -> bytes:
    """Left neighbour prediction (PNG's Sub filter), zigzag, byte planes, deflate."""
    v = as_wire_type(values)
    v = v if v.ndim == 3 else v[:, :, None]
    bits = v.dtype.itemsize * 8
    parts = []
    for ch in range(v.shape[2]):
        x = v[:, :, ch].astype(np.int32)
        pred = np.zeros_like(x)
        pred[:, 1:] = x[:, :-1]
        pred[1:, 0] = x[:-1, 0]
        parts.append(_zigzag_planes(x, pred, bits))
    return zlib.compress(b"".join(parts), level)


def med_strategy(values: np.ndarray, strategy: int) -> bytes:
    raw = zlib.decompress(encode(values, 0))
    c = zlib.compressobj(6, zlib.DEFLATED, 15, 8, strategy)
    return c.compress(raw) + c.flush()


def jpeg2000(values: np.ndarray) -> bytes:
    import openjpeg
    v = values if values.dtype.itemsize <= 2 else values.astype(np.int32)
    return openjpeg.encode(np.ascontiguousarray(v), photometric_interpretation=1 if v.ndim == 3 else 0,
                           use_mct=False)


def jpeg_ls(values: np.ndarray) -> bytes:
    import jpeg_ls as jls
    v = values
    if v.dtype.kind == "i":      # CharLS codes unsigned samples: shift signed ones (lossless, reversible)
        v = (v.astype(np.int32) + 32768).astype(np.uint16)
    return bytes(jls.encode_array(np.ascontiguousarray(v)))


# (short name for the table, what it is, encoder)
CANDIDATES: list[tuple[str, str, Callable[[np.ndarray], bytes]]] = [
    ("deflate", "deflate (zlib 6) of the raw values", lambda v: zlib.compress(as_wire_type(v).tobytes(), 6)),
    ("planes", "byte planes + deflate 6, no predictor (colour: green differences)", lambda v: encode(v, 6, PREDICT_NONE)),
    ("left", "left neighbour (PNG Sub) + zigzag + planes + deflate 6, no colour transform",
     lambda v: left_planes(v, 6)),
    ("MED-1", "MED + zigzag + planes + deflate 1", lambda v: encode(v, 1, PREDICT_MED)),
    ("**PXF1**", "MED + zigzag + planes + deflate 6: the wire format",
     lambda v: encode(v, framecodec.ZLIB_LEVEL, PREDICT_MED)),
    ("MED-9", "MED + zigzag + planes + deflate 9", lambda v: encode(v, 9, PREDICT_MED)),
    ("MED-H", "MED + zigzag + planes + deflate's Huffman coding only", lambda v: med_strategy(v, zlib.Z_HUFFMAN_ONLY)),
    ("J2K", "JPEG 2000 lossless (openjpeg): a WebAssembly decoder in the page", jpeg2000),
    ("JLS", "JPEG-LS lossless (CharLS): a WebAssembly decoder in the page", jpeg_ls),
]


def measure(values: np.ndarray, encoder: Callable[[np.ndarray], bytes], runs: int = 5) -> tuple[int, float]:
    best = float("inf")
    size = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        size = len(encoder(values))
        best = min(best, time.perf_counter() - t0)
    return size, best * 1000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="the README's table")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    rows = []
    for label, values in images():
        raw = as_wire_type(values).nbytes
        cells = []
        for _, _, enc in CANDIDATES:
            try:
                size, ms = measure(values, enc, args.runs)
                cells.append(f"{size / raw:.3f} ({ms:.1f})")
            except ImportError:
                cells.append("n/a")
            except Exception as e:  # noqa: BLE001 - a reference codec that cannot take this image
                cells.append(f"n/a ({type(e).__name__})")
        assert np.array_equal(framecodec.decode(encode(values)), as_wire_type(values)), label
        rows.append((label, f"{raw // 1024} KiB", cells))
    if args.markdown:
        print("| image | raw | " + " | ".join(short for short, _, _ in CANDIDATES) + " |")
        print("|---" * (len(CANDIDATES) + 2) + "|")
        for label, raw_size, cells in rows:
            print(f"| {label} | {raw_size} | " + " | ".join(cells) + " |")
        print()
        for short, what, _ in CANDIDATES:
            print(f"- {short}: {what}")
    else:
        for label, raw_size, cells in rows:
            print(f"\n{label}: raw {raw_size}; size / raw (encode ms)")
            for (short, what, _), cell in zip(CANDIDATES, cells):
                print(f"  {what[:70]:70s} {cell}")


if __name__ == "__main__":
    main()
