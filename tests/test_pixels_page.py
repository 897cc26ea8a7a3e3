"""PipacsPixels.fetchFrame in a real headless Chromium (iPad viewport): the values the page decodes
from /pipacs/instances/{id}/frames/{n}/pixels are exactly the server's /frames/{n}/numpy for real
files of every kind (signed and unsigned 16-bit, 8-bit, RGB, 32-bit multi-frame; stored JPEG
lossless, JPEG-LS, JPEG 2000), and within the decoders' rounding for stored baseline JPEG, which
goes out as it is stored and the browser decodes."""

from __future__ import annotations

import base64
import io
import json
import os
import statistics

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from .helpers import Response

pytestmark = pytest.mark.xdist_group("chromium")
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install '.[test]')")
if not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")):
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)

from .test_pages import ARTIFACTS, _assert_same_origin, _browser, _wait

# (file, frames to check): what the decoded values must equal exactly
EXACT = [
    ("CT_small.dcm", [0]),                      # int16, native
    ("examples_overlay.dcm", [0]),              # uint16 (12 bits stored), native
    ("image_dfl.dcm", [0]),                     # uint8 grey 512x512, deflated file
    ("examples_rgb_color.dcm", [0]),            # RGB 8-bit, native
    ("SC_rgb_jpeg_gdcm.dcm", [0]),              # RGB, stored JPEG lossless
    ("MR_small_jpeg_ls_lossless.dcm", [0]),     # int16, stored JPEG-LS lossless
    ("JPEG2000.dcm", [0]),                      # int16 NM 256x1024, stored JPEG 2000
    ("693_J2KI.dcm", [0]),                      # int16 CT 512x512, stored JPEG 2000
    ("rtdose.dcm", [0, 14]),                    # uint32 multi-frame
    ("SC_rgb_jpeg.dcm", [0]),                   # baseline JPEG coded as RGB: decoded on the server
]
# stored baseline JPEG the browser decodes itself: (file, frame)
PASSED_THROUGH = [("SC_rgb_jpeg_dcmtk.dcm", 0), ("SC_rgb_dcmtk_+eb+cy+np.dcm", 0), ("examples_ybr_color.dcm", 7)]
# the page's JPEG decoder and pydicom's (libjpeg) may round the inverse DCT, the chroma upsampling and
# the YCbCr conversion differently: measured at most 3 stored units per sample (README), allowed 4
JPEG_TOLERANCE = 4

FETCH = """
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
PipacsPixels.fetchFrame(url).then(f => {
  const bytes = new Uint8Array(f.data.buffer, f.data.byteOffset, f.data.byteLength);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  done({width: f.width, height: f.height, channels: f.channels, type: f.data.constructor.name, b64: btoa(s)});
}, e => done({error: String(e && e.message || e), status: e && e.status}));
"""

TIME_DECODE = """
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
fetch(url).then(r => r.arrayBuffer()).then(buf => {
  const bytes = new Uint8Array(buf), times = [];
  for (let i = 0; i < 15; i++) { const t0 = performance.now(); PipacsPixels.decodePxf(bytes); times.push(performance.now() - t0); }
  done(times);
}, e => done(String(e)));
"""

TYPES = {"Int8Array": np.int8, "Uint8Array": np.uint8, "Int16Array": np.int16, "Uint16Array": np.uint16,
         "Int32Array": np.int32, "Uint32Array": np.uint32}


def grey_baseline_jpeg() -> bytes:
    """An 8-bit MONOCHROME2 baseline JPEG instance (Pillow's encoder), as a scanner's secondary capture."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    arr = ds.pixel_array.astype(np.float64)
    grey = ((arr - arr.min()) / (arr.max() - arr.min()) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey, "L").save(buf, "JPEG", quality=90)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "MONOCHROME2"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _decoded(drv, url: str) -> np.ndarray:
    got = drv.execute_async_script(FETCH, url)
    assert "error" not in got, (url, got)
    arr = np.frombuffer(base64.b64decode(got["b64"]), TYPES[got["type"]])
    shape = (got["height"], got["width"]) + ((got["channels"],) if got["channels"] > 1 else ())
    return arr.reshape(shape)


def _numpy(srv, instance: str, frame: int) -> np.ndarray:
    r: Response = srv.get(f"/instances/{instance}/frames/{frame}/numpy")
    assert r.status == 200, r.body[:200]
    arr = np.load(io.BytesIO(r.body))[0]
    return arr[:, :, 0] if arr.shape[-1] == 1 else arr


@pytest.fixture
def page(make_server):
    srv = make_server()
    drv = _browser(1024, 768, touch=True)
    try:
        drv.get(srv.url("/"))
        drv.execute_async_script("""
            const done = arguments[arguments.length - 1], s = document.createElement("script");
            s.src = "/app/pixels.js"; s.onload = () => done(true); s.onerror = () => done(false);
            document.head.appendChild(s);""")
        _wait(drv, lambda d: d.execute_script("return !!window.PipacsPixels"), what="pixels.js")
        yield srv, drv
    finally:
        drv.quit()


def test_decoded_values_equal_the_servers_numpy(page) -> None:
    srv, drv = page
    seen: list[str] = []
    ids = {}
    for name, _ in EXACT + PASSED_THROUGH:
        with open(get_testdata_file(name), "rb") as f:
            r = srv.post("/instances", f.read())
        assert r.status == 200, (name, r.body[:300])
        ids[name] = r.json()["ID"]
    r = srv.post("/instances", grey_baseline_jpeg())
    assert r.status == 200
    ids["grey baseline JPEG"] = r.json()["ID"]

    for name, frames in EXACT:
        for frame in frames:
            url = f"/pipacs/instances/{ids[name]}/frames/{frame}/pixels"
            assert srv.get(url).headers["Content-Type"] == "application/x-pipacs-pixels", name
            got, expected = _decoded(drv, url), _numpy(srv, ids[name], frame)
            assert got.dtype == expected.dtype.newbyteorder("="), (name, got.dtype, expected.dtype)
            assert got.shape == expected.shape and np.array_equal(got, expected), (name, frame)

    differences = {}
    for name, frame in PASSED_THROUGH + [("grey baseline JPEG", 0)]:
        url = f"/pipacs/instances/{ids[name]}/frames/{frame}/pixels"
        assert srv.get(url).headers["Content-Type"] == "image/jpeg", name
        got, expected = _decoded(drv, url), _numpy(srv, ids[name], frame)
        assert got.shape == expected.shape and got.dtype == np.uint8, (name, got.shape, expected.shape)
        diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
        differences[name] = (int(diff.max()), float(diff.mean()))
        assert diff.max() <= JPEG_TOLERANCE and diff.mean() < 1.5, (name, differences[name])
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "pixels-jpeg-differences.json").write_text(json.dumps(differences, indent=1))

    # a frame the server cannot decode: the page gets the server's reason
    with open(get_testdata_file("JPEG-lossy.dcm"), "rb") as f:
        lossy = srv.post("/instances", f.read()).json()["ID"]
    err = drv.execute_async_script(FETCH, f"/pipacs/instances/{lossy}/frames/0/pixels")
    assert err["status"] == 415 and "cannot decode the pixel data" in err["error"]

    # how long a 512x512 frame takes to decode in the page (recorded for the README, not asserted)
    timing = {}
    for name in ("693_J2KI.dcm", "image_dfl.dcm", "examples_rgb_color.dcm"):
        times = drv.execute_async_script(TIME_DECODE, f"/pipacs/instances/{ids[name]}/frames/0/pixels")
        assert isinstance(times, list), times
        timing[name] = round(statistics.median(times), 2)
    (ARTIFACTS / "pixels-decode-ms.json").write_text(json.dumps(timing, indent=1))
    print("decode ms (median of 15):", timing, "JPEG differences (max, mean):", differences)
    _assert_same_origin(drv, srv.url(""), seen)


def test_an_aborted_fetch_rejects(page) -> None:
    srv, drv = page
    with open(get_testdata_file("CT_small.dcm"), "rb") as f:
        ct = srv.post("/instances", f.read()).json()["ID"]
    got = drv.execute_async_script("""
        const done = arguments[arguments.length - 1], ctl = new AbortController();
        const p = PipacsPixels.fetchFrame(arguments[0], {signal: ctl.signal});
        ctl.abort();
        p.then(() => done("resolved"), e => done(e.name));""", f"/pipacs/instances/{ct}/frames/0/pixels")
    assert got == "AbortError"


