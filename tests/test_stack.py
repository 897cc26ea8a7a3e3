"""The stack document: OHIF's slice order (build_stack, called directly on generated headers)
and the route, against a real appliance (order, visibility for students, ETag, invalidation)."""

from __future__ import annotations

import io
import json
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from appliance.imaging.stack import build_stack

from .synth import ct_instance, uid
from .test_access import BASIC, CLASSROOM, deidentified


def header(index: int, z: float | None = None, number: int | None = None, iop=(1, 0, 0, 0, 1, 0),
           rows: int = 16, cols: int = 16, **kw) -> Dataset:
    ds = Dataset()
    ds.Modality = kw.pop("modality", "CT")
    ds.SOPInstanceUID = uid(f"hdr/{index}")
    ds.SeriesInstanceUID = uid("hdr")
    ds.SeriesNumber = 3
    ds.SeriesDescription = "AXIAL"
    ds.StudyDescription = "CHEST"
    if number is not None:
        ds.InstanceNumber = number
    if z is not None:
        ds.ImagePositionPatient = [-100.0, -100.0, z]
    if iop is not None:
        ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 12, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def order(doc: dict) -> list[tuple[str, int]]:
    return [(f["Instance"], f["Frame"]) for f in doc["Frames"]]


def test_position_descending_even_when_instance_numbers_run_the_other_way() -> None:
    # numbers 1..10 from the top (z=0) down... no: number 1 is the LOWEST slice, as some scanners number
    instances = [(f"i{k}", header(k, z=10.0 * k, number=k)) for k in range(1, 11)]
    doc = build_stack(list(reversed(instances[3:])) + instances[:3])
    assert doc["Order"] == "position"
    assert doc["Notices"] == []
    assert [f["Instance"] for f in doc["Frames"]] == [f"i{k}" for k in range(10, 0, -1)]
    first = doc["Frames"][0]
    assert first["Position"] == 100.0 and first["InstanceNumber"] == 10
    assert first["Units"] == "HU" and first["RescaleIntercept"] == -1024.0 and first["RescaleSlope"] == 1.0
    assert first["PixelSpacing"] == [0.5, 0.5] and first["SpacingSource"] == "PixelSpacing"
    assert first["ImageOrientationPatient"] == [1, 0, 0, 0, 1, 0]
    assert first["Pixels"] == "/pipacs/instances/i10/frames/0/pixels"
    assert (first["WindowCenter"], first["WindowWidth"], first["BitsStored"]) == (40.0, 400.0, 12)
    assert doc["SeriesNumber"] == 3 and doc["Modality"] == "CT" and doc["SeriesDescription"] == "AXIAL"


def test_position_is_along_the_slice_normal_not_z() -> None:
    # sagittal: row along y (anterior->posterior... [0,1,0]), column along -z; normal = cross = [-1, 0, 0]
    iop = (0, 1, 0, 0, 0, -1)
    instances = []
    for k in range(5):
        ds = header(k, number=k + 1, iop=iop)
        ds.ImagePositionPatient = [float(k * 3), 0.0, 0.0]   # x grows; the normal points to -x
        instances.append((f"s{k}", ds))
    doc = build_stack(instances)
    assert doc["Order"] == "position"
    assert [f["Position"] for f in doc["Frames"]] == [0.0, -3.0, -6.0, -9.0, -12.0]
    assert [f["Instance"] for f in doc["Frames"]] == ["s0", "s1", "s2", "s3", "s4"]


def test_missing_positions_fall_back_to_instance_number_with_a_notice() -> None:
    instances = [(f"i{k}", header(k, z=None if k in (2, 5, 7) else float(k), number=11 - k)) for k in range(1, 11)]
    doc = build_stack(instances)
    assert doc["Order"] == "instance-number"
    assert [f["InstanceNumber"] for f in doc["Frames"]] == list(range(1, 11))
    assert doc["Notices"] == ["3 images of 10 have no position: ordered by Instance Number"]


def test_no_instance_number_goes_last_then_sop_instance_uid() -> None:
    instances = [("a", header(1, number=None, iop=None)), ("b", header(2, number=2, iop=None)),
                 ("c", header(3, number=1, iop=None))]
    doc = build_stack(instances)
    assert [f["Instance"] for f in doc["Frames"]] == ["c", "b", "a"]
    assert doc["Notices"] == ["no image has a position: ordered by Instance Number"]


def test_projection_images_without_positions_need_no_notice() -> None:
    doc = build_stack([("pa", header(1, number=1, iop=None, modality="CR")),
                       ("lat", header(2, number=2, iop=None, modality="CR"))])
    assert doc["Notices"] == [] and order(doc) == [("pa", 0), ("lat", 0)]
    assert doc["Frames"][0]["Units"] is None


def test_two_orientations_ordered_by_instance_number_with_a_notice() -> None:
    axial = [(f"a{k}", header(k, z=float(k), number=k)) for k in range(1, 4)]
    coronal = []
    for k in range(4, 6):
        ds = header(k, number=k, iop=(1, 0, 0, 0, 0, -1))
        ds.ImagePositionPatient = [0.0, float(k), 0.0]
        coronal.append((f"c{k}", ds))
    doc = build_stack(coronal + axial)
    assert doc["Order"] == "instance-number"
    assert [f["Instance"] for f in doc["Frames"]] == ["a1", "a2", "a3", "c4", "c5"]
    assert doc["Notices"] == ["2 orientations in this series (coronal 2, axial 3): ordered by Instance Number"]


def test_nearly_equal_orientations_are_one() -> None:
    doc = build_stack([("a", header(1, z=1.0, number=1)),
                       ("b", header(2, z=2.0, number=2, iop=(1, 0.0004, 0, 0, 1, 0)))])
    assert doc["Order"] == "position" and order(doc) == [("b", 0), ("a", 0)]


def test_duplicate_positions_kept_in_instance_number_order_with_a_notice() -> None:
    instances = [("x3", header(3, z=5.0, number=3)), ("x1", header(1, z=5.0, number=1)),
                 ("x2", header(2, z=10.0, number=2)), ("x4", header(4, z=0.0, number=4)),
                 ("x5", header(5, z=0.0, number=5))]
    doc = build_stack(instances)
    assert doc["Order"] == "position"
    assert [f["Instance"] for f in doc["Frames"]] == ["x2", "x1", "x3", "x4", "x5"]
    assert doc["Notices"] == ["4 images share a position with another"]


def test_frames_of_different_sizes_say_so() -> None:
    doc = build_stack([("a", header(1, z=1.0, number=1)), ("b", header(2, z=2.0, number=2, rows=8, cols=32)),
                       ("c", header(3, z=3.0, number=3))])
    assert doc["Order"] == "position"
    assert doc["Notices"] == ["frames of 2 different sizes (16x16, 32x8)"]


def enhanced(frames: int, positions: list[float] | None) -> Dataset:
    ds = header(1, number=1)
    del ds.ImageOrientationPatient, ds.PixelSpacing, ds.RescaleSlope
    del ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth
    ds.NumberOfFrames = frames
    shared = Dataset()
    orient, measures, transform = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [0.7, 0.8], 1.5
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    if positions is not None:
        items = []
        for z in positions:
            item, pos, voi = Dataset(), Dataset(), Dataset()
            pos.ImagePositionPatient = [0.0, 0.0, z]
            voi.WindowCenter, voi.WindowWidth = z, 100
            item.PlanePositionSequence = Sequence([pos])
            item.FrameVOILUTSequence = Sequence([voi])
            items.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    return ds


def test_enhanced_multiframe_ordered_by_its_per_frame_positions() -> None:
    doc = build_stack([("mf", enhanced(4, [10.0, 30.0, 20.0, 0.0]))])
    assert doc["Order"] == "position" and doc["Notices"] == []
    assert order(doc) == [("mf", 1), ("mf", 2), ("mf", 0), ("mf", 3)]
    f = doc["Frames"][0]
    assert f["Position"] == 30.0 and f["WindowCenter"] == 30.0 and f["NumberOfFrames"] == 4
    assert f["PixelSpacing"] == [0.7, 0.8] and f["SliceThickness"] == 1.5
    assert f["RescaleType"] == "HU" and f["Units"] == "HU" and f["RescaleIntercept"] == -1024.0
    assert f["Pixels"] == "/pipacs/instances/mf/frames/1/pixels"


def test_multiframe_without_per_frame_positions_in_stored_order() -> None:
    ds = header(1, z=5.0, number=1, modality="US")
    ds.NumberOfFrames = 3
    doc = build_stack([("cine", ds)])
    assert order(doc) == [("cine", 0), ("cine", 1), ("cine", 2)]
    assert all(f["Position"] is None for f in doc["Frames"])


def test_series_level_frame_of_reference_frame_time_and_identity() -> None:
    same = [(f"i{k}", header(k, z=float(k), number=k, FrameOfReferenceUID="1.2.3", FrameTime=40,
                             PatientIdentityRemoved="YES", PatientName="Case^Seven")) for k in range(3)]
    doc = build_stack(same, {"i0": "0123456789abcdef-0123"})
    assert doc["FrameOfReferenceUID"] == "1.2.3" and doc["FrameTime"] == 40.0 and doc["Notices"] == []
    assert doc["PatientIdentityRemoved"] is True and doc["PatientName"] == "Case^Seven"
    urls = {f["Instance"]: f["Pixels"] for f in doc["Frames"]}
    assert urls["i0"] == "/pipacs/instances/i0/frames/0/pixels?v=0123456789abcdef"
    assert urls["i1"] == "/pipacs/instances/i1/frames/0/pixels"
    mixed = [(f"i{k}", header(k, z=float(k), number=k, FrameOfReferenceUID=f"1.2.{k % 2}", CineRate=25))
             for k in range(4)]
    doc = build_stack(mixed)
    assert doc["FrameOfReferenceUID"] is None and doc["FrameTime"] == 40.0
    assert doc["Notices"] == ["2 different frames of reference in this series"]
    assert doc["PatientIdentityRemoved"] is False
    some = [(f"i{k}", header(k, z=float(k), number=k, **({"FrameOfReferenceUID": "1.2"} if k else {})))
            for k in range(3)]
    doc = build_stack(some)
    assert doc["FrameOfReferenceUID"] is None and doc["Notices"] == ["1 image of 3 has no frame of reference"]
    assert build_stack([("i", header(0, RecommendedDisplayFrameRate=50))])["FrameTime"] == 20.0
    assert build_stack([("i", header(0))])["FrameTime"] is None


def test_palette_colour_is_served_as_rgb() -> None:
    from pydicom.data import get_testdata_file
    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"), stop_before_pixels=True)
    frame = build_stack([("p", ds)])["Frames"][0]
    assert (frame["PhotometricInterpretation"], frame["SamplesPerPixel"], frame["BitsStored"]) == ("RGB", 3, 8)


def test_no_image_and_non_images() -> None:
    sr = Dataset()
    sr.Modality = "SR"
    sr.SOPInstanceUID = uid("sr")
    empty = build_stack([("sr", sr)])
    assert empty["Frames"] == [] and empty["Notices"] == ["this series has no image"]
    assert build_stack([])["Frames"] == []
    mixed = build_stack([("sr", sr), ("im", header(1, z=1.0, number=1))])
    assert order(mixed) == [("im", 0)] and mixed["Notices"] == ["1 instance without an image not shown"]


def test_malformed_geometry_reads_as_absent() -> None:
    bad = header(1, z=1.0, number=1)
    bad.ImagePositionPatient = [1.0, 2.0]          # two values, not three
    doc = build_stack([("bad", bad), ("good", header(2, z=2.0, number=2))])
    assert doc["Order"] == "instance-number" and order(doc) == [("bad", 0), ("good", 0)]
    assert doc["Frames"][0]["ImagePositionPatient"] is None and doc["Frames"][0]["Position"] is None


# ------------------------------------------------------------------ the route, on a real appliance

def ct_opposite(index: int, count: int, **kw) -> bytes:
    """A CT slice whose Instance Number runs opposite to its position: number 1 is the lowest slice."""
    ds = pydicom.dcmread(io.BytesIO(ct_instance(index=index, rows=16, cols=16, **kw)))
    ds.ImagePositionPatient = [-100.0, -100.0, -5.0 * (count - index)]   # number 1 lowest (z = -45)
    ds.PatientIdentityRemoved = "YES"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_stack_route_order_revision_etag_and_invalidation(make_server) -> None:
    srv = make_server()
    ids = [srv.post("/instances", ct_opposite(k, 10)).json() for k in range(1, 11)]
    series = ids[0]["ParentSeries"]
    r = srv.get(f"/pipacs/series/{series}/stack")
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    assert doc["Series"] == series and doc["Study"] == ids[0]["ParentStudy"]
    assert doc["Patient"] == ids[0]["ParentPatient"] and doc["Order"] == "position"
    assert [f["InstanceNumber"] for f in doc["Frames"]] == list(range(10, 0, -1))
    by_number = {i["ID"]: k + 1 for k, i in enumerate(ids)}
    assert [by_number[f["Instance"]] for f in doc["Frames"]] == list(range(10, 0, -1))
    assert doc["SeriesInstanceUID"] == uid("PAT1/st1/se1")
    etag = r.headers["ETag"]
    deflated = srv.get(f"/pipacs/series/{series}/stack", headers={"Accept-Encoding": "deflate"})
    # two representations, two validators (RFC 9110)
    assert deflated.headers["Content-Encoding"] == "deflate" and deflated.headers["ETag"] == etag[:-1] + '-d"'
    held = srv.get(f"/pipacs/series/{series}/stack",
                   headers={"If-None-Match": deflated.headers["ETag"], "Accept-Encoding": "deflate"})
    assert held.status == 304 and held.headers["Vary"] == "Accept-Encoding"
    assert srv.get(f"/pipacs/series/{series}/stack", headers={"If-None-Match": deflated.headers["ETag"]}).status == 200
    assert json.loads(zlib.decompress(deflated.body)) == doc and len(deflated.body) < len(r.body) / 3
    again = srv.get(f"/pipacs/series/{series}/stack", headers={"If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    # an instance added: a new revision, a new document
    srv.post("/instances", ct_opposite(11, 10))
    r2 = srv.get(f"/pipacs/series/{series}/stack", headers={"If-None-Match": etag})
    assert r2.status == 200 and r2.headers["ETag"] != etag
    assert r2.json()["Revision"] != doc["Revision"] and len(r2.json()["Frames"]) == 11
    assert srv.get("/pipacs/series/nope/stack").status == 404
    assert "Message" in srv.get("/pipacs/series/nope/stack").json()


def test_students_get_only_published_series_and_frames(make_server) -> None:
    srv = make_server(CLASSROOM)
    pub = srv.post("/instances", deidentified(patient_id="ANON1", study="pub"), headers=BASIC).json()
    hidden = srv.post("/instances", deidentified(patient_id="ANON2", study="unpub"), headers=BASIC).json()
    assert srv.request("PUT", f"/studies/{pub['ParentStudy']}/released", "1", headers=BASIC).status == 200
    for path in (f"/pipacs/series/{hidden['ParentSeries']}/stack",
                 f"/pipacs/instances/{hidden['ID']}/frames/0/pixels"):
        r = srv.get(path)
        assert r.status == 404, path
        assert srv.get(path, headers=BASIC).status == 200, path
    # a student's 404 looks like an unknown resource's
    unknown = srv.get("/pipacs/series/0000/stack").json()["Message"].replace("0000", "X")
    assert srv.get(f"/pipacs/series/{hidden['ParentSeries']}/stack").json()["Message"] \
        .replace(hidden["ParentSeries"], "X") == unknown
    doc = srv.get(f"/pipacs/series/{pub['ParentSeries']}/stack")
    assert doc.status == 200 and [f["Instance"] for f in doc.json()["Frames"]] == [pub["ID"]]
    assert srv.get(doc.json()["Frames"][0]["Pixels"]).status == 200


@pytest.mark.parametrize(("frame", "status"), [("1", 404), ("x", 400), ("-1", 400), ("99999999999", 400)])
def test_pixels_of_a_frame_that_is_not_there(make_server, frame: str, status: int) -> None:
    srv = make_server()
    inst = srv.post("/instances", ct_instance(rows=16, cols=16)).json()
    r = srv.get(f"/pipacs/instances/{inst['ID']}/frames/{frame}/pixels")
    assert r.status == status, r.status
    assert "Message" in json.loads(r.body)


def test_a_frame_past_the_end_is_refused_from_the_index_without_reading_the_file(make_server) -> None:
    """L2: the number of frames comes from the index: with the stored file gone, frame 40 of a
    40-frame instance is still "does not exist" (no file read), frame 0 says the file is missing."""
    srv = make_server()
    inst = srv.post("/instances", enhanced_instance(frames=40, size=16)[0]).json()
    stored = [p for p in srv.workdir.rglob("*") if p.is_file() and len(p.name) == 36 and len(p.parent.name) == 2]
    assert len(stored) == 1
    stored[0].unlink()
    past = srv.get(f"/pipacs/instances/{inst['ID']}/frames/40/pixels")
    assert past.status == 404 and "does not exist" in past.json()["Message"], past.body
    assert "40 frame(s)" in past.json()["Message"]
    gone = srv.get(f"/pipacs/instances/{inst['ID']}/frames/0/pixels")
    assert gone.status == 404 and "missing" in gone.json()["Message"], gone.body


def test_a_damaged_stored_file_gets_a_reason(make_server) -> None:
    """A stored file damaged on the card after it was received: a clear 415, never the parser's text."""
    from pydicom.data import get_testdata_file
    srv = make_server()
    ids = [srv.post("/instances", _testdata(get_testdata_file(n))).json()["ID"] for n in ("CT_small.dcm", "rtdose.dcm")]
    stored = sorted((p for p in srv.workdir.rglob("*") if p.is_file() and len(p.name) == 36 and len(p.parent.name) == 2),
                    key=lambda p: p.stat().st_size)
    assert stored[0].stat().st_size < 10_000 < stored[1].stat().st_size     # rtdose (7 kB), CT_small (39 kB)
    stored[0].write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 300)        # rtdose: garbage after the preamble
    with open(stored[1], "r+b") as f:                                       # CT_small: cut in its pixel data
        f.truncate(stored[1].stat().st_size - 10_000)
    for instance, frame, reason in ((ids[1], 14, "this instance has no pixel data"),
                                    (ids[0], 0, "cannot decode the pixel data (Explicit VR Little Endian)")):
        r = srv.get(f"/pipacs/instances/{instance}/frames/{frame}/pixels")
        assert r.status == 415, (r.status, r.body)
        message = r.json()["Message"]
        assert message.startswith(reason) and "Error" not in message and len(message) < 300, message


def test_a_replaced_instance_has_a_new_pixels_url_and_the_old_one_is_revalidated(make_server) -> None:
    """H1: the browser keeps a frame under its URL for good (immutable), so the URL names the file:
    after an overwrite the stack document gives a new URL; the old one answers no-cache."""
    srv = make_server({"OverwriteInstances": True})
    data = ct_instance(rows=16, cols=16)
    inst = srv.post("/instances", data).json()
    first = srv.get_json(f"/pipacs/series/{inst['ParentSeries']}/stack")["Frames"][0]["Pixels"]
    assert "?v=" in first
    r = srv.get(first)
    assert r.status == 200 and r.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    ds = pydicom.dcmread(io.BytesIO(data))
    arr = ds.pixel_array.copy()
    arr[0, 0] += 7
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    assert srv.post("/instances", buf.getvalue()).json()["ID"] == inst["ID"]     # overwritten
    second = srv.get_json(f"/pipacs/series/{inst['ParentSeries']}/stack")["Frames"][0]["Pixels"]
    assert second != first and second.split("?")[0] == first.split("?")[0]
    old = srv.get(first)
    assert old.status == 200 and old.headers["Cache-Control"] == "private, no-cache"
    new = srv.get(second)
    assert new.headers["Cache-Control"].endswith("immutable") and new.body == old.body != r.body


def test_a_prepared_multiframe_series_is_served_from_the_cache_with_the_same_values(make_server) -> None:
    """warm_series (through the teacher's prepare job) makes exactly what the routes serve: every
    frame of a 15-frame 32-bit instance and a 30-frame stored-JPEG cine, then none is made again."""
    from pydicom.data import get_testdata_file

    from appliance.imaging.framecodec import decode

    from .test_classprep import _call, _wait_done

    srv = make_server()
    studies = []
    for name in ("rtdose.dcm", "examples_ybr_color.dcm"):
        with open(get_testdata_file(name), "rb") as f:
            r = srv.post("/instances", f.read())
        assert r.status == 200, r.body[:200]
        studies.append(r.json()["ParentStudy"])
    status, _ = _call(srv, "POST", "/pipacs/class/prepare", {"Studies": studies})
    assert status == 202
    done = _wait_done(srv)
    assert done["State"] == "done" and done["SeriesDone"] == 2, done
    prepared = done["Cache"]
    for study in studies:
        series = srv.get_json(f"/studies/{study}/series")[0]["ID"]
        frames = srv.get_json(f"/pipacs/series/{series}/stack")["Frames"]
        assert [f["Frame"] for f in frames] == list(range(len(frames)))      # no positions: stored order
        for f in frames[:: max(1, len(frames) // 5)]:
            r = srv.get(f["Pixels"])
            assert r.status == 200
            if r.headers["Content-Type"] == "application/x-pipacs-pixels":
                expected = np.load(io.BytesIO(srv.get(f"/instances/{f['Instance']}/frames/{f['Frame']}/numpy").body))
                assert np.array_equal(decode(zlib.compress(r.body)), expected[0, :, :, 0])
        for f in frames:
            assert srv.get(f["Pixels"]).status == 200
    after = _call(srv, "GET", "/pipacs/class/prepare")[1]["Cache"]
    assert after["Misses"] == prepared["Misses"], (prepared, after)
    # the series switcher's thumbnails (the middle instance's /preview, as a browser's <img> asks) were warm
    assert prepared["RenderMisses"] == 2
    before = after["RenderMisses"]
    for study in studies:
        listed = srv.get_json(f"/series/{srv.get_json(f'/studies/{study}/series')[0]['ID']}")["Instances"]
        thumb = srv.get(f"/instances/{listed[len(listed) // 2]}/preview",
                        headers={"Accept": "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"})
        assert thumb.status == 200 and thumb.headers["Content-Type"] == "image/png"
    assert _call(srv, "GET", "/pipacs/class/prepare")[1]["Cache"]["RenderMisses"] == before


def enhanced_instance(frames: int = 40, size: int = 256, name: str = "1") -> tuple[bytes, np.ndarray]:
    """An enhanced-MR-like multi-frame file over 4 MiB (read once for all its frames), frames stored
    bottom to top: the stack shows them top first."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    rng = np.random.default_rng(5)
    values = rng.integers(0, 4096, (frames, size, size), dtype=np.uint16)
    ds = enhanced(frames, [2.0 * k for k in range(frames)])
    ds.Modality = "MR"
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid(f"enhanced/{name}")
    ds.StudyInstanceUID, ds.PatientID, ds.PatientName = uid("enhanced"), "ENH1", "Enhanced^Test"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = values.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), values


def test_a_big_multiframe_instance_in_stack_order_with_its_exact_values(make_server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from appliance.imaging.framecodec import decode

    srv = make_server()
    data, values = enhanced_instance()
    inst = srv.post("/instances", data).json()
    doc = srv.get_json(f"/pipacs/series/{inst['ParentSeries']}/stack")
    assert doc["Order"] == "position" and [f["Frame"] for f in doc["Frames"]] == list(range(39, -1, -1))

    def frame(f: dict) -> tuple[int, np.ndarray]:
        r = srv.get(f["Pixels"], headers={"Accept-Encoding": "deflate"})
        assert r.status == 200 and r.headers["Content-Encoding"] == "deflate"
        return f["Frame"], decode(r.body)

    with ThreadPoolExecutor(6) as pool:        # as the viewer asks: six at a time
        for number, got in pool.map(frame, doc["Frames"]):
            assert np.array_equal(got, values[number]), number


def _testdata(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def test_alternating_big_instances_read_only_their_frames(archive) -> None:
    """M1: two students paging two big multi-frame instances (native, and encapsulated RLE / JPEG):
    every frame read costs that frame's bytes (plus each file's header once), never the whole file."""
    from pydicom.data import get_testdata_file

    from appliance.archive import Level
    from appliance.imaging.framecodec import frame_body
    from appliance.imaging.render import frame_array, load

    from .helpers import store

    a_data, a_values = enhanced_instance(frames=40, size=256, name="a")
    b_data, b_values = enhanced_instance(frames=40, size=256, name="b")
    assert len(a_data) > 5 * 2**20          # over the old read-once threshold; no size limit applies now
    a = await archive.get(Level.INSTANCE, (await store(archive, a_data))[-1])
    b = await archive.get(Level.INSTANCE, (await store(archive, b_data))[-1])
    frame_size = 256 * 256 * 2
    for k in range(10):
        for res, values in ((a, a_values), (b, b_values)):
            ds, index = await archive.read_frame(res, k)
            assert np.array_equal(frame_array(ds, index), values[k])
    reads = archive.frame_reads
    assert reads["WholeFiles"] == 0 and reads["Reads"] == 20 + 2           # 20 frames, 2 headers
    headers = reads["Bytes"] - 20 * frame_size
    assert 0 < headers < 2 * 64 * 2**10, reads                               # a header is a few kB

    for name in ("rtdose_rle.dcm", "examples_ybr_color.dcm"):
        data = _testdata(get_testdata_file(name))
        res = await archive.get(Level.INSTANCE, (await store(archive, data))[-1])
        whole = load(data)
        frames = int(whole.NumberOfFrames)
        before = dict(archive.frame_reads)
        for k in (0, frames - 1, 1):
            ds, index = await archive.read_frame(res, k)
            assert frame_body(ds, index) == frame_body(whole, k), (name, k)
        spent = archive.frame_reads["Bytes"] - before["Bytes"]
        assert archive.frame_reads["WholeFiles"] == 0
        assert spent < 3 * len(data) / frames + 64 * 2**10, (name, spent, len(data))


async def test_warm_series_counts_frames_made_and_found(archive) -> None:
    """Contract 3: on_frame(bytes) once per frame, made or already in the cache; the series'
    thumbnail is warmed with the frames (M4)."""
    from aiohttp import web

    from appliance.archive import Level
    from appliance.web.classcache import CLASS_CACHE, ClassCache
    from appliance.web.keys import ARCHIVE
    from appliance.web.pixels import warm_series

    from .helpers import store

    *_, series_id, _ = await store(archive, enhanced_instance(frames=12, size=32, name="w")[0])
    series = await archive.get(Level.SERIES, series_id)
    app = web.Application()
    app[ARCHIVE] = archive
    app[CLASS_CACHE] = ClassCache(64 * 2**20)
    made: list[int] = []
    total = await warm_series(app, series, made.append)
    assert len(made) == 12 and all(n > 0 for n in made) and total > sum(made)
    again: list[int] = []
    assert await warm_series(app, series, again.append) == total and again == made
    stats = app[CLASS_CACHE].stats()
    assert stats["Misses"] == 13          # the document and 12 frames, made once
    assert stats["RenderMisses"] == 1     # and the series switcher's thumbnail (/instances/{id}/preview), once


async def test_layout_lru_is_bounded_by_header_bytes_and_a_huge_header_is_not_kept(archive) -> None:
    """N2: the layouts kept are bounded by their headers' bytes; a header over LAYOUT_MAX_BYTES is read
    again when asked rather than kept."""
    from appliance.archive import Level
    from appliance.archive.frames import LAYOUT_BYTES, LAYOUT_MAX_BYTES

    from .helpers import store

    ds = pydicom.dcmread(io.BytesIO(enhanced_instance(frames=3, size=16, name="h")[0]))
    ds.add_new(0x00091010, "OB", b"\0" * (LAYOUT_MAX_BYTES + 2))
    ds.add_new(0x00090010, "LO", "PIPACS TEST")
    out = io.BytesIO()
    ds.save_as(out)
    res = await archive.get(Level.INSTANCE, (await store(archive, out.getvalue()))[-1])
    for k in (0, 1):
        await archive.read_frame(res, k)
    assert archive.layout_stats() == {"Files": 0, "Bytes": 0}
    assert archive.frame_reads["Reads"] == 4 and archive.frame_reads["WholeFiles"] == 0   # header read twice
    small = await archive.get(Level.INSTANCE, (await store(archive, enhanced_instance(frames=3, size=16,
                                                                                        name="s")[0]))[-1])
    await archive.read_frame(small, 0)
    await archive.read_frame(small, 1)
    stats = archive.layout_stats()
    assert stats["Files"] == 1 and 0 < stats["Bytes"] <= LAYOUT_BYTES


async def test_fragments_without_offset_table_are_grouped_by_frame_markers(archive) -> None:
    """N4: a multi-frame JPEG in 2 fragments per frame, no BOT nor EOT: each frame read is its share
    of the file, and its values are what the whole file gives."""
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_frames

    from appliance.archive import Level
    from appliance.imaging.render import frame_array, load

    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    frames = int(ds.NumberOfFrames)
    parts = list(generate_frames(ds.PixelData, number_of_frames=frames))
    ds.PixelData = encapsulate(parts, fragments_per_frame=2, has_bot=False)
    out = io.BytesIO()
    ds.save_as(out)
    data = out.getvalue()
    from .helpers import store
    res = await archive.get(Level.INSTANCE, (await store(archive, data))[-1])
    whole = load(data)
    for k in (0, frames - 1, 1):
        before = archive.frame_reads["Bytes"]
        got, index = await archive.read_frame(res, k)
        assert np.array_equal(frame_array(got, index), frame_array(whole, k)), k
        assert archive.frame_reads["Bytes"] - before < len(data) / 2
    assert archive.frame_reads["WholeFiles"] == 0


async def test_a_damaged_frame_is_remembered_and_an_io_error_is_a_clear_error(archive, tmp_path) -> None:
    """N5: a frame that fails to decode is not read again for FAILED_SECONDS (reads counted); N9: an
    I/O error of the storage is StoredFileIOError (503), and warm_series counts it as a frame not made."""
    from aiohttp import web
    from pydicom.encaps import encapsulate

    from appliance.archive import Level
    from appliance.imaging.render import DecodeError
    from appliance.web.classcache import CLASS_CACHE, ClassCache
    from appliance.web.errors import StoredFileIOError
    from appliance.web.keys import ARCHIVE
    from appliance.web.pixels import _make_pixels, warm_series

    from .helpers import store

    ds = pydicom.dcmread(io.BytesIO(enhanced_instance(frames=2, size=16, name="d")[0]))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([b"\xff\xd8garbage!" * 8, b"\xff\xd8garbage!" * 8])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    *_, series_id, instance_id = await store(archive, out.getvalue())
    res = await archive.get(Level.INSTANCE, instance_id)
    app = web.Application()
    app[ARCHIVE] = archive
    app[CLASS_CACHE] = ClassCache(64 * 2**20)
    file_uuid = (await archive.index.files([res.id]))[res.id][0]
    with pytest.raises(DecodeError):
        await _make_pixels(app, res, 0, file_uuid)()
    reads = archive.frame_reads["Reads"]
    for _ in range(3):
        with pytest.raises(DecodeError):
            await _make_pixels(app, res, 0, file_uuid)()
    assert archive.frame_reads["Reads"] == reads          # remembered: the file is not read again

    series = await archive.get(Level.SERIES, series_id)
    made: list[int] = []
    await warm_series(app, series, made.append)           # the stack document is cached; no frame decodes
    assert made == [0, 0]
    path = archive.files.path_of(file_uuid)
    path.unlink()
    path.mkdir()                                          # reading it now is an OSError (not a missing file)
    archive._layouts.clear()
    archive._failed.clear()
    with pytest.raises(StoredFileIOError):
        await _make_pixels(app, res, 1, file_uuid)()
    made.clear()
    await warm_series(app, series, made.append)           # goes on: each frame counted as not made
    assert made == [0, 0]
    path.rmdir()
