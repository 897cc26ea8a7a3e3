"""The PXF1 wire format of /pipacs/instances/{id}/frames/{n}/pixels: lossless for every sample type,
smaller than raw by the measured margin, stored baseline JPEG passed through only where a browser
shows it as DICOM means it, and the route (Content-Encoding, ETag, errors) on a real appliance."""

from __future__ import annotations

import io
import warnings
import zlib

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydicom.data import get_testdata_file

from appliance.imaging import framecodec
from appliance.imaging.framecodec import KIND_JPEG, KIND_PXF, PREDICT_MED, PREDICT_NONE, decode, encode
from appliance.imaging.render import DecodeError, FrameNotFound, frame_array, load
from bench.framecodec import ct_phantom

from .synth import ct_phantom_slice

DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), channels=st.sampled_from([1, 3, 4]),
       predictor=st.sampled_from([PREDICT_MED, PREDICT_NONE]))
def test_every_sample_type_round_trips(data, dtype, channels, predictor) -> None:
    shape = (data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9)))
    if channels > 1:
        shape += (channels,)
    values = data.draw(hnp.arrays(dtype, shape))
    back = decode(encode(values, predictor=predictor))
    assert back.dtype == np.dtype(dtype).newbyteorder("<") and back.shape == values.shape
    assert np.array_equal(back, values)


def test_extremes_wrap_without_loss() -> None:
    # neighbours at opposite ends of the range: the residual wraps modulo 2^bits and back
    for dtype in DTYPES:
        info = np.iinfo(dtype)
        v = np.array([[info.min, info.max, info.min], [info.max, info.min, info.max]], dtype)
        assert np.array_equal(decode(encode(v)), v), dtype
        rgb = np.stack([v, v[::-1], v], -1)
        assert np.array_equal(decode(encode(rgb)), rgb), dtype


def test_realistic_ct_is_at_most_0_4_of_raw() -> None:
    """The issue's target (bytes per student <= 0.4x raw for CT, lossless) on a realistic slice:
    white 15 HU noise (the hard case) and correlated noise as a soft kernel gives it."""
    slices = [ct_phantom(soft_kernel=False), ct_phantom(soft_kernel=True)]
    slices += [ct_phantom_slice(z=2.5 * k, t=k / 99) for k in (0, 60)]     # the class bench's CT
    for k, ct in enumerate(slices):
        body = encode(ct)
        assert len(body) <= 0.4 * ct.nbytes, (k, len(body) / ct.nbytes)
        assert np.array_equal(decode(body), ct)


def test_real_files_are_smaller_than_deflate_alone() -> None:
    for name, at_most in (("CT_small.dcm", 0.45), ("MR_small.dcm", 0.56), ("examples_rgb_color.dcm", 0.2)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pydicom.dcmread(get_testdata_file(name)).pixel_array
        body = encode(arr)
        assert len(body) <= at_most * arr.nbytes, (name, len(body) / arr.nbytes)
        assert len(body) < len(zlib.compress(arr.tobytes(), 6)), name


def test_floating_point_pixels_are_refused_with_a_reason() -> None:
    with pytest.raises(DecodeError, match="floating point"):
        encode(np.zeros((4, 4), np.float32))


def _file(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm",
                                  "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_jpeg.dcm",
                                  "examples_palette.dcm", "rtdose.dcm", "SC_rgb_rle_16bit.dcm", "liver_1frame.dcm"])
def test_stored_frames_decode_to_what_numpy_gives(name: str) -> None:
    data = _file(name)
    ds = load(data)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    for frame in {0, frames - 1}:
        body = framecodec.stored_frame_body(data, frame)
        assert body[:1] == KIND_PXF
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = frame_array(load(data), frame)
            if name == "examples_palette.dcm":      # served as the RGB its palette gives (the browser has no LUT)
                expected = pydicom.pixels.apply_color_lut(expected, ds)
                assert expected.shape[-1] == 3 and expected.dtype == np.uint16
            assert np.array_equal(decode(body[1:]), expected), (name, frame)


def test_baseline_jpeg_goes_out_as_stored_only_when_a_browser_shows_it_as_dicom_means() -> None:
    for name in ("SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_dcmtk.dcm", "examples_ybr_color.dcm"):
        ds = load(_file(name))
        frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
        for frame in (0, len(frames) - 1):
            body = framecodec.stored_frame_body(_file(name), frame)
            assert body == KIND_JPEG + frames[frame], (name, frame)
    # colour JPEG coded as RGB (no colour transform): browsers may convert it anyway, so decoded here
    for name in ("SC_rgb_jpeg.dcm", "SC_jpeg_no_color_transform.dcm", "SC_rgb_dcmtk_+eb+cr.dcm"):
        assert framecodec.stored_frame_body(_file(name), 0)[:1] == KIND_PXF, name


def test_a_frame_past_the_end_and_an_undecodable_one() -> None:
    with pytest.raises(FrameNotFound):
        framecodec.stored_frame_body(_file("CT_small.dcm"), 1)
    with pytest.raises(FrameNotFound):
        framecodec.stored_frame_body(_file("SC_rgb_jpeg_dcmtk.dcm"), 3)
    with pytest.raises(DecodeError, match="cannot decode"):
        framecodec.stored_frame_body(_file("JPEG-lossy.dcm"), 0)


# ------------------------------------------------------------------ the route, on a real appliance

def _npy(body: bytes) -> np.ndarray:
    arr = np.load(io.BytesIO(body))
    return arr[0, :, :, 0] if arr.shape[-1] == 1 else arr[0]


def test_pixels_route_encodings_etag_and_errors(make_server) -> None:
    srv = make_server()
    ct = srv.post("/instances", _file("CT_small.dcm")).json()["ID"]
    url = f"/pipacs/instances/{ct}/frames/0/pixels"
    expected = _npy(srv.get(f"/instances/{ct}/frames/0/numpy").body)

    r = srv.get(url, headers={"Accept-Encoding": "gzip, deflate"})
    assert r.status == 200 and r.headers["Content-Encoding"] == "deflate"
    assert r.headers["Content-Type"] == "application/x-pipacs-pixels" and "Accept-Encoding" in r.headers["Vary"]
    assert len(r.body) <= 0.45 * expected.nbytes
    assert np.array_equal(decode(r.body), expected)

    plain = srv.get(url)                    # a client that does not take deflate: the same body inflated
    assert plain.status == 200 and "Content-Encoding" not in plain.headers
    assert zlib.compress(plain.body) and np.array_equal(decode(zlib.compress(plain.body)), expected)
    assert srv.get(url, headers={"Accept-Encoding": "deflate;q=0"}).headers.get("Content-Encoding") is None

    etag = r.headers["ETag"]
    assert plain.headers["ETag"] != etag and etag == plain.headers["ETag"][:-1] + '-d"'    # two representations
    assert r.headers["Cache-Control"] == "private, no-cache"          # no ?v=: not a URL to keep for good
    again = srv.get(url, headers={"If-None-Match": etag, "Accept-Encoding": "deflate"})
    assert again.status == 304 and again.body == b"" and again.headers["Vary"] == "Accept-Encoding"
    assert srv.get(url, headers={"If-None-Match": etag, "Accept-Encoding": "deflate;q=0.000"}).status == 200
    assert srv.get(url, headers={"Accept-Encoding": "deflate;q=0.5"}).headers["Content-Encoding"] == "deflate"
    versioned = srv.get_json(f"/pipacs/series/{srv.get_json(f'/instances/{ct}')['ParentSeries']}/stack")
    kept = srv.get(versioned["Frames"][0]["Pixels"])
    assert kept.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    assert srv.get(url + "?v=0000000000000000").headers["Cache-Control"] == "private, no-cache"

    assert srv.get(f"/pipacs/instances/{ct}/frames/1/pixels").status == 404
    lossy = srv.post("/instances", _file("JPEG-lossy.dcm")).json()["ID"]
    bad = srv.get(f"/pipacs/instances/{lossy}/frames/0/pixels")
    assert bad.status == 415 and "cannot decode the pixel data" in bad.json()["Message"]
    assert srv.get("/pipacs/instances/unknown/frames/0/pixels").status == 404

    jpeg = srv.post("/instances", _file("SC_rgb_jpeg_dcmtk.dcm")).json()["ID"]
    j = srv.get(f"/pipacs/instances/{jpeg}/frames/0/pixels", headers={"Accept-Encoding": "deflate"})
    assert j.status == 200 and j.headers["Content-Type"] == "image/jpeg" and "Content-Encoding" not in j.headers
    ds = load(_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert j.body == next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))


def test_a_replaced_instance_gets_a_new_etag(make_server) -> None:
    srv = make_server({"OverwriteInstances": True})
    first = srv.post("/instances", _file("CT_small.dcm")).json()["ID"]
    url = f"/pipacs/instances/{first}/frames/0/pixels"
    etag = srv.get(url).headers["ETag"]
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    arr = ds.pixel_array.copy()
    arr[0, 0] += 1
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    assert srv.post("/instances", buf.getvalue()).json()["ID"] == first    # same SOP instance: overwritten
    r = srv.get(url, headers={"If-None-Match": etag})
    assert r.status == 200 and decode(zlib.compress(r.body))[0, 0] == arr[0, 0]


def test_a_frame_larger_than_the_limit_is_refused() -> None:
    assert decode(encode(np.zeros((1, framecodec.MAX_SIDE), np.uint8))).shape == (1, framecodec.MAX_SIDE)
    with pytest.raises(DecodeError, match=f"larger than {framecodec.MAX_SIDE}"):
        encode(np.zeros((1, framecodec.MAX_SIDE + 1), np.uint8))
