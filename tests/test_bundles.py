"""Case bundles (export, import, their refusals), key images drawn for slides, `pipacs import` of a bundle."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance.archive import IMAGER_PIXEL_SPACING, NO_PIXEL_SPACING, public_ids
from appliance.teaching.bundles import (
    SCHEMA_VERSION,
    BundleRefused,
    CasePart,
    bundle_entries,
    is_bundle,
    read_bundle_head,
)
from appliance.teaching.downloads import write_zip
from appliance.teaching.keyimage_render import length_label, render_key_image

from .synth import ct_instance


def _picture(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def _key_image(annotations: list[dict], zoom: float | None = None, window: dict | None = None,
               center: list[float] | None = None) -> dict:
    return {"Instance": "x", "Frame": 1, "Window": window, "Zoom": zoom, "Center": center, "Caption": "",
            "Annotations": annotations}


def _yellow(picture: np.ndarray) -> np.ndarray:
    return (picture[..., 0] > 200) & (picture[..., 1] > 170) & (picture[..., 2] < 80)


# ------------------------------------------------------------------ key images drawn

def test_arrow_head_is_drawn_where_the_contract_puts_it() -> None:
    """Image pixel coordinates (x = column, y = row) scaled to the picture: a 256-pixel frame is
    drawn at 512, so the head at (200, 60) is at (400, 120); far from the arrow nothing changed."""
    data = ct_instance(rows=256, cols=256, pixel_seed=3)
    plain = _picture(render_key_image(data, _key_image([])))
    drawn = _picture(render_key_image(data, _key_image([{"Type": "arrow", "Points": [[120, 140], [200, 60]],
                                                          "Text": ""}])))
    assert plain.shape == drawn.shape == (512, 512, 3)
    assert np.abs(drawn[118:123, 396:401] - plain[118:123, 396:401]).max() > 60
    assert (drawn[400:, :200] == plain[400:, :200]).all()          # the opposite corner is untouched
    head = drawn[118:136, 382:401]                                 # just inside the head: yellow on grey
    assert ((head[..., 0] > 200) & (head[..., 2] < 80)).any()


def test_zoom_crops_the_middle_and_window_changes_the_grey() -> None:
    data = ct_instance(rows=256, cols=256, pixel_seed=5)
    arrow = [{"Type": "arrow", "Points": [[60, 60], [128, 128]], "Text": ""}]
    zoomed = _picture(render_key_image(data, _key_image(arrow, zoom=2)))
    # at zoom 2 the frame's centre (128, 128) is the picture's centre
    assert zoomed.shape == (512, 512, 3)
    assert zoomed[254:259, 254:259, 2].min() < 60 and zoomed[254:259, 254:259, 0].max() > 200   # yellow
    narrow = _picture(render_key_image(data, _key_image([], window={"Center": 0, "Width": 10})))
    wide = _picture(render_key_image(data, _key_image([], window={"Center": 0, "Width": 4000})))
    assert not (narrow == wide).all()


def test_text_and_ellipse_and_length_labels() -> None:
    data = ct_instance(rows=128, cols=128, pixel_seed=1)
    plain = _picture(render_key_image(data, _key_image([])))
    drawn = _picture(render_key_image(data, _key_image([
        {"Type": "text", "Points": [[10, 100]], "Text": "Pneumothorax"},
        {"Type": "ellipse", "Points": [[20, 20], [60, 50]], "Text": ""}])))
    assert (drawn[400:440, 40:200] != plain[400:440, 40:200]).any()    # the label at (10, 100) x 4
    assert (drawn[80:200, 78:82] != plain[80:200, 78:82]).any()        # the ellipse's left side at x = 20
    assert length_label({"Type": "length", "Points": [[0, 0], [3, 4]], "LengthMm": 12.34}) == "12.3 mm"
    assert length_label({"Type": "length", "Points": [[0, 0], [3, 4]], "LengthMm": None,
                         "LengthNote": NO_PIXEL_SPACING}) == "5.0 px (no Pixel Spacing)"


def test_an_off_centre_zoom_keeps_the_arrow_head_in_the_picture() -> None:
    """Zoom 4 with Center (215, 45) of a 256-pixel frame shows x 183..247, y 13..77 (64 pixels at 8x):
    the head at (220, 40) is at (296, 216) of the picture (a centred zoom would show 96..160 and
    lose it). A Center near the corner is clamped: the region stays inside the frame."""
    data = ct_instance(rows=256, cols=256, pixel_seed=4)
    arrow = [{"Type": "arrow", "Points": [[200, 60], [220, 40]], "Text": ""}]
    shown = _picture(render_key_image(data, _key_image(arrow, zoom=4, center=[215, 45])))
    plain = _picture(render_key_image(data, _key_image([], zoom=4, center=[215, 45])))
    assert shown.shape == (512, 512, 3)
    assert _yellow(shown[205:222, 282:300]).any()            # just behind the tip, inside the head
    assert not _yellow(plain).any()
    centred = _picture(render_key_image(data, _key_image(arrow, zoom=4)))
    assert not _yellow(centred).any()                        # the middle of the frame: no arrow in it
    # clamped: Center (250, 5) at zoom 4 is x 192..256, y 0..64; the head at (224, 320)
    corner = _picture(render_key_image(data, _key_image(arrow, zoom=4, center=[250, 5])))
    assert _yellow(corner[305:322, 210:228]).any()


def test_a_length_measured_with_imager_pixel_spacing_says_so() -> None:
    data = ct_instance(rows=128, cols=128, pixel_seed=2)
    line = {"Type": "length", "Points": [[10, 64], [110, 64]], "Text": "", "LengthMm": 25.0}
    detector = {**line, "LengthNote": IMAGER_PIXEL_SPACING}
    assert length_label(line) == "25.0 mm"
    assert length_label(detector) == "25.0 mm at the detector (Imager Pixel Spacing)"
    plain = _picture(render_key_image(data, _key_image([line])))
    noted = _picture(render_key_image(data, _key_image([detector])))
    # the label is drawn from the line's middle to the right: the note makes it longer
    assert (plain[:, 300:] != noted[:, 300:]).any() and (plain[:, :200] == noted[:, :200]).all()


def test_jpeg_is_a_jpeg() -> None:
    body = render_key_image(ct_instance(rows=64, cols=64), _key_image([]), "jpeg")
    assert body[:3] == b"\xff\xd8\xff"


# ------------------------------------------------------------------ the ZIP's layout

def _zip_of(entries) -> bytes:
    out = bytearray()
    write_zip(entries, out.extend, threading.Event(), deflate=False)
    return bytes(out)


def test_bundle_layout_each_file_once_stored_byte_for_byte(tmp_path: Path) -> None:
    files = []
    for k in range(3):
        p = tmp_path / f"f{k}.dcm"
        p.write_bytes(ct_instance(rows=64, cols=64, index=k + 1))
        files.append(p)
    rows = [{"instance": f"inst{k}", "path": p, "size": p.stat().st_size} for k, p in enumerate(files)]
    doc = {"ID": "case-a", "Title": "A", "State": "draft",
           "KeyImages": [_key_image([{"Type": "arrow", "Points": [[1, 1], [30, 30]], "Text": ""}]) | {"Instance": "inst0"}]}
    a = CasePart(doc, rows, {r["instance"]: "study1" for r in rows}, [("key-object.dcm", b"KOS")], [files[0]])
    b = CasePart({"ID": "case-b", "Title": "B", "State": "published", "KeyImages": []}, rows[:2],
                 {r["instance"]: "study1" for r in rows[:2]})
    data = _zip_of(bundle_entries([a, b], "pipacs test", "2026-12-07T23:00:00Z"))
    assert is_bundle(data[:64])
    zf = zipfile.ZipFile(io.BytesIO(data))
    names = zf.namelist()
    assert names[0] == "bundle.json"
    dicom = [n for n in names if n.startswith("dicom/")]
    assert dicom == ["dicom/study1/inst0.dcm", "dicom/study1/inst1.dcm", "dicom/study1/inst2.dcm"]   # once each
    for n, p in zip(dicom, files, strict=True):
        assert zf.getinfo(n).compress_type == zipfile.ZIP_STORED
        assert hashlib.sha256(zf.read(n)).digest() == hashlib.sha256(p.read_bytes()).digest()
    assert json.loads(zf.read("cases/case-a/case.json"))["SchemaVersion"] == SCHEMA_VERSION
    assert json.loads(zf.read("cases/case-a/case.json"))["Title"] == "A"
    assert zf.read("cases/case-a/key-object.dcm") == b"KOS"
    assert zf.read("cases/case-a/key-images/0.png")[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads(zf.read("bundle.json"))
    assert [c["ID"] for c in manifest["Cases"]] == ["case-a", "case-b"]
    assert manifest["Dicom"]["Files"] == dicom and manifest["Dicom"]["Count"] == 3
    head = read_bundle_head(io.BytesIO(data), 1000)
    assert [c[0] for c in head.cases] == ["case-a", "case-b"] and all(c[1] for c in head.cases)


def test_a_key_image_without_pixels_is_left_out_not_the_bundle(tmp_path: Path) -> None:
    p = tmp_path / "nopixels.dcm"
    p.write_bytes(b"not DICOM at all")
    doc = {"ID": "c", "Title": "", "State": "draft", "KeyImages": [_key_image([]) | {"Instance": "i"}]}
    zf = zipfile.ZipFile(io.BytesIO(_zip_of(bundle_entries([CasePart(doc, key_image_files=[p])], "t", "now"))))
    assert "cases/c/key-images/0.png" not in zf.namelist() and "cases/c/case.json" in zf.namelist()


def test_a_bundle_carries_the_cases_key_objects_and_presentation_states(tmp_path: Path) -> None:
    import pydicom

    from appliance.teaching.bundles import dicom_objects
    paths = []
    for k in (1, 2):
        p = tmp_path / f"{k}.dcm"
        p.write_bytes(ct_instance(rows=64, cols=64, index=k))
        paths.append(p)
    doc = {"ID": "c6d1a7e0-0000-4000-8000-000000000001", "Title": "T", "State": "published",
           "Updated": "2026-12-07T22:50:01Z", "Created": "2026-12-07T22:50:01Z", "History": "",
           "KeyImages": [_key_image([{"Type": "arrow", "Points": [[1, 1], [30, 30]], "Text": "x"}]) | {"Instance": "i1"},
                         _key_image([]) | {"Instance": "i2"}]}
    made = dict(dicom_objects(doc, paths))
    assert sorted(made) == ["key-objects/1.dcm", "presentation-states/1.dcm"]
    kos = pydicom.dcmread(io.BytesIO(made["key-objects/1.dcm"]))
    assert kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    refs = {str(i.ReferencedSOPInstanceUID) for s in kos.CurrentRequestedProcedureEvidenceSequence
            for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths} <= refs
    assert pydicom.dcmread(io.BytesIO(made["presentation-states/1.dcm"])).SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"
    assert dicom_objects(doc, [None, None]) == [] and dicom_objects({**doc, "KeyImages": []}, []) == []


# ------------------------------------------------------------------ bundles refused whole

def _bundle(members: dict[str, bytes], manifest: dict | None = None, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        if manifest is not False:
            zf.writestr("bundle.json", json.dumps(manifest or {"Format": "pipacs case bundle", "SchemaVersion": 1,
                                                               "Cases": []}))
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize("name", ["../evil.dcm", "/etc/evil", "C:/evil.dcm", "dicom/../../x", "C:\\x.dcm"])
def test_hostile_member_names_refuse_the_bundle(name: str) -> None:
    with pytest.raises(BundleRefused, match="unsafe member names"):
        read_bundle_head(io.BytesIO(_bundle({name: b"x"})), 1000)


def test_symlink_members_refuse_the_bundle() -> None:
    with pytest.raises(BundleRefused, match="symbolic link"):
        read_bundle_head(io.BytesIO(_bundle({}, symlink="dicom/link.dcm")), 1000)


def test_newer_schema_and_not_a_bundle_are_refused_with_the_reason() -> None:
    with pytest.raises(BundleRefused, match="SchemaVersion 2, newer than the 1"):
        read_bundle_head(io.BytesIO(_bundle({}, {"Format": "pipacs case bundle", "SchemaVersion": 2})), 1000)
    newer_case = _bundle({"cases/c1/case.json": json.dumps({"SchemaVersion": 7, "ID": "c1"}).encode()})
    with pytest.raises(BundleRefused, match="case.json has SchemaVersion 7"):
        read_bundle_head(io.BytesIO(newer_case), 1000)
    with pytest.raises(BundleRefused, match="no bundle.json"):
        read_bundle_head(io.BytesIO(_bundle({"a.dcm": b"x"}, manifest=False)), 1000)
    with pytest.raises(BundleRefused, match="not a readable ZIP"):
        read_bundle_head(io.BytesIO(b"PK\x03\x04 nothing more"), 1000)
    with pytest.raises(BundleRefused, match="more than the 2 of MaximumZipMembers"):
        read_bundle_head(io.BytesIO(_bundle({"a": b"", "b": b""})), 2)


def test_missing_or_unreadable_case_json_is_reported_per_case() -> None:
    data = _bundle({"cases/c2/case.json": b"{not json", "cases/c3/key-images/0.png": b""},
                   {"Format": "pipacs case bundle", "SchemaVersion": 1, "Cases": [{"ID": "c1"}]})
    head = read_bundle_head(io.BytesIO(data), 1000)
    got = {cid: problem for cid, doc, problem in head.cases}
    assert "cases/c1/case.json is missing" in got["c1"]
    assert "cannot be read" in got["c2"]
    assert "cases/c3/case.json is missing" in got["c3"]


# ------------------------------------------------------------------ real servers: export, import, refusals

def _deidentified(**kw) -> bytes:
    """A CT instance that says it is de-identified (a published case needs it)."""
    import pydicom
    ds = pydicom.dcmread(io.BytesIO(ct_instance(**kw)))
    ds.PatientIdentityRemoved = "YES"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _store_study(srv, n: int = 4, patient: str = "BUNDLE1", study: str = "st") -> list[dict]:
    answers = []
    for k in range(1, n + 1):
        r = srv.post("/instances", _deidentified(patient_id=patient, study=study, index=k, rows=64, cols=64))
        assert r.status == 200, r.body
        answers.append(r.json())
    return answers


ARROW = {"Type": "arrow", "Points": [[10, 50], [40, 20]], "Text": "look"}


def _case_body(study: str, instances: list[dict]) -> dict:
    window = {"Center": 500, "Width": 1200}
    return {"Title": "Bundle case <img src=x onerror=alert(1)>", "History": "Cough, 3 weeks",
            "Question": "What is it?", "Findings": "A round thing", "Diagnosis": "Pneumonia",
            "DifferentialDiagnosis": "Tumour", "Discussion": "Déjà vu: é, ü", "TeachingPoints": "Look twice",
            "References": "Ref 1", "Keywords": ["lung", "round"], "BodyRegion": "Chest", "Category": "Chest",
            "Difficulty": "beginner", "Author": "Dr A", "Collections": ["week1"], "Studies": [study],
            "KeyImages": [
                {"Instance": instances[1]["ID"], "Frame": 1, "Window": window, "Zoom": None, "Caption": "arrow",
                 "Annotations": [ARROW, {"Type": "length", "Points": [[5, 60], [45, 60]], "Text": ""}]},
                {"Instance": instances[1]["ID"], "Frame": 1, "Window": window, "Zoom": None, "Caption": "plain",
                 "Annotations": []},
                {"Instance": instances[2]["ID"], "Frame": 1, "Window": None, "Zoom": 2, "Caption": "",
                 "Annotations": [{"Type": "ellipse", "Points": [[20, 20], [40, 40]], "Text": ""}]}]}


@pytest.fixture
def board(make_server):
    """A board with one study of 4 instances and a published case on it with 3 key images."""
    srv = make_server(name="a")
    instances = _store_study(srv)
    study = instances[0]["ParentStudy"]
    case = srv.post_json("/cases", _case_body(study, instances))
    case = srv.post_json(f"/cases/{case['ID']}/publish", {})
    srv.case, srv.instances, srv.study = case, instances, study
    return srv


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _import(srv, data: bytes):
    return srv.post("/cases/import", data, headers={"Content-Type": "application/zip"})


def test_a_case_goes_to_another_board_identical(board, make_server) -> None:
    r = board.get(f"/cases/{board.case['ID']}/bundle")
    assert r.status == 200 and r.headers["Content-Type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.body))
    names = zf.namelist()
    assert names[0] == "bundle.json"
    assert not any("BUNDLE1" in n or "Doe" in n for n in names)     # no patient in a member name
    assert sorted(n for n in names if n.startswith(f"cases/{board.case['ID']}/key-images/")) == [
        f"cases/{board.case['ID']}/key-images/{k}.png" for k in range(3)]
    dicom = [n for n in names if n.startswith("dicom/")]
    assert len(dicom) == 4 and all(zf.getinfo(n).compress_type == zipfile.ZIP_STORED for n in dicom)
    # the key object is the one GET /cases/{id}/key-object gives (same case, same UIDs, same bytes)
    assert zf.read(f"cases/{board.case['ID']}/key-objects/1.dcm") == board.get(f"/cases/{board.case['ID']}/key-object").body
    assert f"cases/{board.case['ID']}/presentation-states/1.dcm" in names

    other = make_server(name="b")
    report = _import(other, r.body)
    assert report.status == 200, report.body
    answer = report.json()
    assert answer["Cases"] == [{"ID": board.case["ID"], "Status": "Imported", "Problems": []}]
    assert answer["Instances"] == {"Stored": 4, "AlreadyStored": 0, "NotStored": 0}
    theirs = other.get_json(f"/cases/{board.case['ID']}")
    ours = board.get_json(f"/cases/{board.case['ID']}")
    assert set(theirs) == set(ours)
    for field_name in ours:
        assert theirs[field_name] == ours[field_name], field_name
    # the DICOM files byte for byte: served, and as stored on the disk
    for inst in board.instances:
        a = board.get(f"/instances/{inst['ID']}/file").body
        assert _sha(other.get(f"/instances/{inst['ID']}/file").body) == _sha(a)
    assert sorted(_sha(p.read_bytes()) for p in other.stored_files()) == \
        sorted(_sha(p.read_bytes()) for p in board.stored_files())

    again = _import(other, r.body).json()
    assert again["Cases"] == [{"ID": board.case["ID"], "Status": "AlreadyPresent", "Problems": []}]
    assert again["Instances"] == {"Stored": 0, "AlreadyStored": 4, "NotStored": 0}
    assert other.get_json("/cases") == [board.case["ID"]]                         # not doubled
    assert other.get_json("/statistics")["CountInstances"] == 4
    # and on the board it came from: already present as well
    assert _import(board, r.body).json()["Cases"][0]["Status"] == "AlreadyPresent"


def test_key_image_pictures_route(board) -> None:
    cid = board.case["ID"]
    drawn = board.get(f"/cases/{cid}/key-images/0/rendered")
    plain = board.get(f"/cases/{cid}/key-images/1/rendered?format=png")   # the same frame and window, no drawing
    assert drawn.status == plain.status == 200 and drawn.headers["Content-Type"] == "image/png"
    a, b = _picture(drawn.body), _picture(plain.body)
    assert a.shape == b.shape == (512, 512, 3)
    # the head at (40, 20) of a 64-pixel frame drawn at 512: (320, 160)
    assert np.abs(a[156:165, 316:325] - b[156:165, 316:325]).max() > 60
    assert (a[:40, 440:] == b[:40, 440:]).all()
    jpeg = board.get(f"/cases/{cid}/key-images/2/rendered?format=jpeg")
    assert jpeg.status == 200 and jpeg.headers["Content-Type"] == "image/jpeg" and jpeg.body[:2] == b"\xff\xd8"
    for n in ("3", "99", "-1", "x", "9" * 5000, "0" * 7):     # more digits than Python 3.11's int() takes: 404
        r = board.get(f"/cases/{cid}/key-images/{n}/rendered")
        assert r.status == 404 and "Message" in r.json(), (n, r.status)
    r = board.get(f"/cases/{cid}/key-images/0/rendered?format=gif")
    assert r.status == 400 and "png or jpeg" in r.json()["Message"]
    assert board.get("/cases/no-such-case/key-images/0/rendered").status == 404


def test_collection_bundle_carries_each_file_once(board) -> None:
    second = board.post_json("/cases", {"Title": "Same study, other case", "Studies": [board.study],
                                        "Collections": ["week1"], "KeyImages": []})
    board.post_json("/cases", {"Title": "Not in the collection", "Studies": [board.study], "KeyImages": []})
    r = board.get("/collections/week1/bundle")
    assert r.status == 200
    zf = zipfile.ZipFile(io.BytesIO(r.body))
    manifest = json.loads(zf.read("bundle.json"))
    assert sorted(c["ID"] for c in manifest["Cases"]) == sorted([board.case["ID"], second["ID"]])
    assert len([n for n in zf.namelist() if n.startswith("dicom/")]) == 4
    assert board.get("/collections/nothing-here/bundle").status == 404
    assert board.get("/collections/bad%20label/bundle").status == 400


def _rewritten(data: bytes, drop: str = "", change: dict | None = None, add: dict | None = None) -> bytes:
    """The bundle with members dropped (prefix), replaced (name -> bytes) or added."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for info in src.infolist():
            if drop and info.filename.startswith(drop):
                continue
            out.writestr(info.filename, (change or {}).get(info.filename, src.read(info)))
        for name, member in (add or {}).items():
            out.writestr(name, member)
    return buf.getvalue()


def test_bad_bundles_are_refused_or_imported_in_part(board, make_server, tmp_path: Path) -> None:
    good = board.get(f"/cases/{board.case['ID']}/bundle").body
    other = make_server(name="b")
    cid = board.case["ID"]
    for hostile in ("../escaped.dcm", "/tmp/escaped-pipacs.dcm", "C:/escaped.dcm", "dicom/../../escaped.dcm"):
        r = _import(other, _rewritten(good, add={hostile: board.get(f"/instances/{board.instances[0]['ID']}/file").body}))
        assert r.status == 400 and "unsafe member names" in r.json()["Message"], (hostile, r.body)
    assert other.get_json("/statistics")["CountInstances"] == 0 and other.get_json("/cases") == []
    assert not list(tmp_path.rglob("escaped*")) and not Path("/tmp/escaped-pipacs.dcm").exists()

    manifest = json.loads(zipfile.ZipFile(io.BytesIO(good)).read("bundle.json"))
    r = _import(other, _rewritten(good, change={"bundle.json": json.dumps(manifest | {"SchemaVersion": 2}).encode()}))
    assert r.status == 400 and "SchemaVersion 2" in r.json()["Message"]
    assert _import(other, b"not a zip at all").status == 400
    plain_zip = _rewritten(good, drop="bundle.json")
    r = _import(other, plain_zip)
    assert r.status == 400 and "no bundle.json" in r.json()["Message"]
    assert other.get_json("/statistics")["CountInstances"] == 0

    # the files of two key images left out: the case comes without them, and says so
    held = board.instances[1]["ID"]
    r = _import(other, _rewritten(good, drop=f"dicom/{board.study}/{held}.dcm"))
    assert r.status == 200, r.body
    answer = r.json()
    assert answer["Cases"][0]["Status"] == "Imported"
    assert len(answer["Cases"][0]["Problems"]) == 2 and all(held in p for p in answer["Cases"][0]["Problems"])
    assert any("not in the bundle" in p for p in answer["Problems"])      # bundle.json named the file
    imported = other.get_json(f"/cases/{cid}")
    assert [k["Caption"] for k in imported["KeyImages"]] == [""]
    assert other.get_json("/statistics")["CountInstances"] == 3

    # a case.json the case rules refuse, and one missing
    third = make_server(name="c")
    doc = json.loads(zipfile.ZipFile(io.BytesIO(good)).read(f"cases/{cid}/case.json"))
    r = _import(third, _rewritten(good, change={f"cases/{cid}/case.json": json.dumps(doc | {"Colour": 1}).encode()}))
    assert r.status == 200 and r.json()["Cases"][0]["Status"] == "Refused", r.body
    assert "Colour" in r.json()["Cases"][0]["Problems"][0]
    r = _import(third, _rewritten(good, drop=f"cases/{cid}/case.json"))
    assert r.json()["Cases"] == [{"ID": cid, "Status": "Refused",
                                  "Problems": [f"cases/{cid}/case.json is missing from the bundle"]}]
    assert third.get_json("/cases") == []


def test_pipacs_import_sends_a_bundle_to_the_case_import(board, make_server, tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "case.zip"
    path.write_bytes(board.get(f"/cases/{board.case['ID']}/bundle").body)
    other = make_server(name="b")

    def run():
        return subprocess.run([sys.executable, "-m", "appliance", "import", str(path), "--config",
                               str(other.config_path), "--port", str(other.http_port), "--quiet"],
                              capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    out = run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 case(s) imported" in out.stdout and "4 stored" in out.stdout
    assert other.get_json("/cases") == [board.case["ID"]]
    out = run()
    assert out.returncode == 0 and "already present" in out.stdout, out.stdout + out.stderr
    path.write_bytes(_rewritten(path.read_bytes(), change={"bundle.json": b'{"Format": "pipacs case bundle", '
                                                                          b'"SchemaVersion": 9}'}))
    out = run()
    assert out.returncode == 3 and "SchemaVersion 9" in out.stderr, out.stdout + out.stderr


@pytest.mark.xdist_group("chromium")
def test_the_upload_page_sends_a_bundle_to_the_case_import(board, make_server, tmp_path: Path) -> None:
    """The explorer's upload takes ZIPs; a bundle (first member bundle.json) goes to POST /cases/import
    and the page lists the cases; a ZIP of DICOM files still goes to /instances."""
    pytest.importorskip("selenium")
    from .test_pages import _browser, _open, _text, _wait

    path = tmp_path / "bundle.zip"
    path.write_bytes(board.get(f"/cases/{board.case['ID']}/bundle").body)
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("one.dcm", ct_instance(patient_id="PLAIN1", rows=16, cols=16))
    other = make_server(name="b")
    drv = _browser()
    try:
        _open(drv, other.url("/#/upload"), "upload:")
        drv.find_element("id", "upload-files").send_keys(f"{path}\n{plain}")
        _wait(drv, lambda d: "Done" in _text(d, "#upload-report"), what="the upload to finish")
        assert f"case {board.case['ID']}: imported" in _text(drv, "#upload-errors")
        assert "5 stored" in _text(drv, "#upload-summary") and "1 case(s) imported" in _text(drv, "#upload-summary")
    finally:
        drv.quit()
    assert other.get_json("/cases") == [board.case["ID"]]
    assert other.get_json("/statistics")["CountInstances"] == 5


def test_students_get_published_cases_only(make_server) -> None:
    """Drafts are 404 to a student (rendered pictures, bundles, collections); published cases come,
    a collection's bundle without its drafts; a student cannot import."""
    import base64
    user, pw = "teacher-b", "pw-b-long-enough"
    basic = {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}
    srv = make_server({"AuthenticationEnabled": True, "RegisteredUsers": {user: pw}, "StudentAccess": "open"},
                      name="classroom")
    instances = []
    for k in (1, 2):
        r = srv.post("/instances", _deidentified(patient_id="ANONB", study="s", index=k, rows=64, cols=64),
                     headers=basic)
        assert r.status == 200, r.body
        instances.append(r.json())
    study = instances[0]["ParentStudy"]

    def create(title: str) -> dict:
        r = srv.post("/cases", json.dumps({"Title": title, "Studies": [study], "Collections": ["term"],
                                           "KeyImages": [{"Instance": instances[0]["ID"], "Annotations": [ARROW]}]}),
                     headers=basic)
        assert r.status == 200, r.body
        return r.json()
    draft, shown = create("draft"), create("shown")
    assert srv.post(f"/cases/{shown['ID']}/publish", "{}", headers=basic).status == 200
    for path in (f"/cases/{draft['ID']}/key-images/0/rendered", f"/cases/{draft['ID']}/bundle"):
        r = srv.get(path)
        assert r.status == 404 and "Message" in r.json(), (path, r.status)
        assert srv.get(path, headers=basic).status == 200
    assert srv.get(f"/cases/{shown['ID']}/key-images/0/rendered").status == 200
    mine = zipfile.ZipFile(io.BytesIO(srv.get("/collections/term/bundle").body))
    assert [c["ID"] for c in json.loads(mine.read("bundle.json"))["Cases"]] == [shown["ID"]]
    assert len([n for n in mine.namelist() if n.startswith("dicom/")]) == 2
    teachers = zipfile.ZipFile(io.BytesIO(srv.get("/collections/term/bundle", headers=basic).body))
    assert sorted(c["ID"] for c in json.loads(teachers.read("bundle.json"))["Cases"]) == sorted([draft["ID"],
                                                                                                 shown["ID"]])
    r = srv.post("/cases/import", srv.get(f"/cases/{shown['ID']}/bundle").body)
    assert r.status in (401, 403)


def test_json_members_past_their_limits() -> None:
    """bundle.json past MAX_BUNDLE_JSON refuses the bundle; a case.json past MAX_CASE_JSON refuses that case."""
    from appliance.teaching.bundles import MAX_BUNDLE_JSON, MAX_CASE_JSON
    head = {"Format": "pipacs case bundle", "SchemaVersion": 1, "Cases": []}
    big_head = json.dumps(head) + " " * (MAX_BUNDLE_JSON - len(json.dumps(head)) + 1)
    with pytest.raises(BundleRefused, match="bundle.json cannot be read.*more than the"):
        read_bundle_head(io.BytesIO(_raw_bundle(big_head, {})), 1000)
    doc = json.dumps({"SchemaVersion": 1, "ID": "c1"})
    fits = doc + " " * (MAX_CASE_JSON - len(doc))
    data = _raw_bundle(json.dumps(head), {"cases/c1/case.json": fits + " ", "cases/c2/case.json": fits})
    got = {cid: (d, problem) for cid, d, problem in read_bundle_head(io.BytesIO(data), 1000).cases}
    assert got["c1"][0] is None and "more than the" in got["c1"][1]
    assert got["c2"][0] == {"SchemaVersion": 1, "ID": "c1"} and got["c2"][1] == ""


def test_case_jsons_past_their_total_refuse_the_bundle() -> None:
    """Every case.json is read before anything is stored: together they may inflate to at most
    MAX_CASE_JSON_TOTAL (64 MiB), whatever sizes the ZIP's headers declare."""
    from appliance.teaching.bundles import MAX_CASE_JSON_TOTAL
    assert MAX_CASE_JSON_TOTAL == 64 * 2**20
    head = json.dumps({"Format": "pipacs case bundle", "SchemaVersion": 1, "Cases": []})
    doc = json.dumps({"SchemaVersion": 1, "ID": "c0"})
    case = doc + " " * (1000 - len(doc))                       # 1000 bytes each
    members = {f"cases/c{i}/case.json": case.replace('"c0"', f'"c{i}"') for i in range(5)}
    data = _raw_bundle(head, members)
    assert len(read_bundle_head(io.BytesIO(data), 1000, max_case_json_total=5000).cases) == 5
    with pytest.raises(BundleRefused, match="inflate to more than 4999 bytes in all: nothing was stored"):
        read_bundle_head(io.BytesIO(data), 1000, max_case_json_total=4999)


def _raw_bundle(head: str, members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bundle.json", head)
        for name, text in members.items():
            zf.writestr(name, text)
    return buf.getvalue()


def test_a_collection_bundle_past_maximum_bundle_cases_is_refused(make_server) -> None:
    srv = make_server({"MaximumBundleCases": 2}, name="small")
    for k in range(2):
        srv.post_json("/cases", {"Title": f"case {k}", "Collections": ["three"]})
    assert srv.get("/collections/three/bundle").status == 200
    srv.post_json("/cases", {"Title": "one more", "Collections": ["three"]})
    r = srv.get("/collections/three/bundle")
    assert r.status == 400 and "3 cases, more than the 2 of MaximumBundleCases" in r.json()["Message"]


# ------------------------------------------------------------------ bundles meet AnonymizeOnIngest and TCE

def test_a_bundle_into_a_board_with_anonymize_on_ingest(board, make_server) -> None:
    """De-identified files (a published case's) are stored as they are: same IDs, same bytes, the case
    identical; files that are not follow AnonymizeOnIngest, and the case names their copies, said."""
    bundle = board.get(f"/cases/{board.case['ID']}/bundle").body
    other = make_server({"AnonymizeOnIngest": True}, name="anon")
    answer = _import(other, bundle).json()
    assert answer["Cases"] == [{"ID": board.case["ID"], "Status": "Imported", "Problems": []}]
    assert answer["Instances"] == {"Stored": 4, "AlreadyStored": 0, "NotStored": 0}
    ours, theirs = board.get_json(f"/cases/{board.case['ID']}"), other.get_json(f"/cases/{board.case['ID']}")
    for field_name in ours:
        assert theirs[field_name] == ours[field_name], field_name
    for inst in board.instances:
        assert _sha(other.get(f"/instances/{inst['ID']}/file").body) == \
            _sha(board.get(f"/instances/{inst['ID']}/file").body)
    assert other.get_json("/studies") == [board.study]

    # a draft of a study that is not de-identified: anonymized on the way in, the case names the copy
    plain = [board.post("/instances", ct_instance(patient_id="PLAIN-PATIENT", study="pl", index=k, rows=64,
                                                  cols=64)).json() for k in (1, 2)]
    draft = board.post_json("/cases", {"Title": "Plain draft", "Studies": [plain[0]["ParentStudy"]],
                                       "KeyImages": [{"Instance": plain[1]["ID"], "Caption": "two"}]})
    answer = _import(other, board.get(f"/cases/{draft['ID']}/bundle").body).json()
    [entry] = answer["Cases"]
    assert entry["Status"] == "Imported"
    [problem] = entry["Problems"]
    assert f"study {plain[0]['ParentStudy']} in the bundle is not de-identified" in problem
    got = other.get_json(f"/cases/{draft['ID']}")
    [copy] = got["Studies"]
    assert copy != plain[0]["ParentStudy"] and copy in other.get_json("/studies")
    [ki] = got["KeyImages"]
    assert ki["Caption"] == "two" and ki["Instance"] not in {p["ID"] for p in plain}
    assert other.get_json(f"/instances/{ki['Instance']}/study")["ID"] == copy
    tags = other.get_json(f"/instances/{ki['Instance']}/simplified-tags")
    assert tags["PatientIdentityRemoved"] == "YES" and tags["InstanceNumber"] == "2"
    assert "PLAIN-PATIENT" not in json.dumps(got)


def test_a_tce_case_in_a_bundle_makes_no_second_draft(make_server, tmp_path: Path) -> None:
    """A case that came from TCE keeps the workstation's KOS among its study's files: imported, the KOS
    makes no draft beside the imported case; a KOS sent by storescu still makes its draft."""
    from tests.test_tce import Study, storescu, teaching_kos
    src = make_server(name="tce-a")
    study = Study(tmp_path / "s1", patient_id="ANON-T1", deidentified=True)
    kos_path, kos = teaching_kos(study, tmp_path)
    storescu(src, study.files)
    mark = src.log_mark()
    storescu(src, [kos_path])
    src.wait_for_log("TCE: draft case", since=mark)
    [cid] = src.get_json("/cases")
    bundle = src.get(f"/cases/{cid}/bundle").body
    assert sum(n.startswith("dicom/") for n in zipfile.ZipFile(io.BytesIO(bundle)).namelist()) == 5

    dst = make_server(name="tce-b")
    mark = dst.log_mark()
    answer = _import(dst, bundle).json()
    assert answer["Cases"] == [{"ID": cid, "Status": "Imported", "Problems": []}]
    assert answer["Instances"]["Stored"] == 5
    dst.wait_for_log("came in a case bundle", since=mark)
    assert dst.get_json("/cases") == [cid]
    assert dst.get_json(f"/cases/{cid}") == src.get_json(f"/cases/{cid}")
    kos_id = public_ids("ANON-T1", study.uid, str(kos.SeriesInstanceUID), str(kos.SOPInstanceUID))[3]
    assert dst.get(f"/instances/{kos_id}/metadata/Origin").body == b"Import"
    assert dst.get(f"/instances/{kos_id}/metadata/RemoteIP").body == b"127.0.0.1"     # who sent it, kept

    # the other way: a workstation's KOS of another study, by storescu, makes its draft on that board
    other = Study(tmp_path / "s2", patient_id="ANON-T2", study="st2", deidentified=True)
    other_kos, _ = teaching_kos(other, tmp_path, name="kos2")
    storescu(dst, other.files)
    mark = dst.log_mark()
    storescu(dst, [other_kos])
    dst.wait_for_log("TCE: draft case", since=mark)
    assert len(dst.get_json("/cases")) == 2


def test_a_key_image_instance_deleted_on_its_own(board) -> None:
    """DELETE /instances/{id} of a key image: the key image leaves the case (the others keep their
    order), and the case, its pictures, bundle and key objects answer without it; with no key image
    left, the key-object routes are a 404 that says so. Never a 500."""
    cid = board.case["ID"]
    # asked first (wave 2 item 5): a 409 naming the case, then ?force
    asked = board.request("DELETE", f"/instances/{board.instances[2]['ID']}")
    assert asked.status == 409 and cid in asked.json()["Message"]
    assert board.request("DELETE", f"/instances/{board.instances[2]['ID']}?force").status == 200
    case = board.get_json(f"/cases/{cid}")
    assert [k["Caption"] for k in case["KeyImages"]] == ["arrow", "plain"]
    assert board.get(f"/cases/{cid}/key-images/1/rendered?format=png").status == 200
    assert board.get(f"/cases/{cid}/key-images/2/rendered?format=png").status == 404
    zf = zipfile.ZipFile(io.BytesIO(board.get(f"/cases/{cid}/bundle").body))
    assert sorted(n for n in zf.namelist() if "/key-images/" in n) == [f"cases/{cid}/key-images/{k}.png"
                                                                      for k in (0, 1)]
    assert len([n for n in zf.namelist() if n.startswith("dicom/")]) == 3
    import pydicom
    kos = pydicom.dcmread(io.BytesIO(board.get(f"/cases/{cid}/key-object").body))
    assert {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in kos.ContentSequence
            if i.ValueType == "IMAGE"} == {board.get_json(f"/instances/{board.instances[1]['ID']}/simplified-tags")[
                "SOPInstanceUID"]}
    assert board.request("DELETE", f"/instances/{board.instances[1]['ID']}?force").status == 200
    assert board.get_json(f"/cases/{cid}")["KeyImages"] == []
    for route in ("key-object", "presentation-states"):
        r = board.get(f"/cases/{cid}/{route}")
        assert r.status == 404 and "no key images" in r.json()["Message"]
    assert board.get(f"/cases/{cid}/bundle").status == 200
    assert board.get(f"/cases/{cid}/key-images/0/rendered?format=png").status == 404
    assert "Traceback" not in board.settled_log()


def test_pipacs_import_anonymize_de_identifies_a_bundles_files_that_are_not(board, make_server,
                                                                             tmp_path: Path) -> None:
    """``pipacs import --anonymize bundle.zip`` (``POST /cases/import?anonymize=1``): the files that are
    not de-identified are, as AnonymizeOnIngest does, and the case names the copies; without it they
    are stored as they are (the board has no AnonymizeOnIngest)."""
    import subprocess
    import sys

    plain = [board.post("/instances", ct_instance(patient_id="PLAIN-PATIENT", study="pl", index=k, rows=64,
                                                  cols=64)).json() for k in (1, 2)]
    draft = board.post_json("/cases", {"Title": "Plain draft", "Studies": [plain[0]["ParentStudy"]],
                                       "KeyImages": [{"Instance": plain[1]["ID"], "Caption": "two"}]})
    path = tmp_path / "plain.zip"
    path.write_bytes(board.get(f"/cases/{draft['ID']}/bundle").body)
    other = make_server(name="anon-cli")
    out = subprocess.run([sys.executable, "-m", "appliance", "import", str(path), "--anonymize", "--config",
                          str(other.config_path), "--port", str(other.http_port), "--quiet"],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 3, out.stdout + out.stderr          # imported, with a problem said
    assert "1 case(s) imported" in out.stdout and "is not de-identified" in out.stdout
    got = other.get_json(f"/cases/{draft['ID']}")
    [ki] = got["KeyImages"]
    assert ki["Instance"] != plain[1]["ID"]
    assert other.get_json(f"/instances/{ki['Instance']}/simplified-tags")["PatientIdentityRemoved"] == "YES"
    assert "PLAIN-PATIENT" not in json.dumps([other.get_json(f"/instances/{i}/simplified-tags")
                                              for i in other.get_json("/instances")])
    third = make_server(name="plain-cli")
    answer = _import(third, path.read_bytes()).json()
    assert answer["Cases"] == [{"ID": draft["ID"], "Status": "Imported", "Problems": []}]
    assert third.get_json(f"/cases/{draft['ID']}")["KeyImages"][0]["Instance"] == plain[1]["ID"]


def test_a_published_case_comes_in_as_a_draft_where_its_patient_is_not_de_identified(board, make_server) -> None:
    """The importing board already holds an identifiable instance of the case's patient, so the study
    is not de-identified there: the case is imported as a draft, saying why, not refused."""
    other = make_server(name="b")
    assert other.post("/instances", ct_instance(patient_id="BUNDLE1", study="elsewhere", index=1,
                                                rows=8, cols=8)).status == 200
    bundle = board.get(f"/cases/{board.case['ID']}/bundle").body
    report = _import(other, bundle).json()
    [entry] = report["Cases"]
    assert entry["Status"] == "Imported", entry
    assert any("imported as a draft, not published" in p and "not de-identified" in p for p in entry["Problems"])
    got = other.get_json(f"/cases/{board.case['ID']}")
    assert got["State"] == "draft" and got["KeyImages"] == board.get_json(f"/cases/{board.case['ID']}")["KeyImages"]


def test_a_case_already_present_says_when_the_bundles_copy_is_newer(board, make_server) -> None:
    """Imported once, then edited on the first board: the second import keeps the board's copy
    (AlreadyPresent, not doubled) and says the bundle's is newer."""
    other = make_server(name="b")
    cid = board.case["ID"]
    assert _import(other, board.get(f"/cases/{cid}/bundle").body).json()["Cases"][0]["Status"] == "Imported"
    again = _import(other, board.get(f"/cases/{cid}/bundle").body).json()["Cases"][0]
    assert again == {"ID": cid, "Status": "AlreadyPresent", "Problems": []}
    r = board.request("PUT", f"/cases/{cid}", json.dumps({"History": "Cough, 4 weeks"}))
    assert r.status == 200, r.body
    newer = _import(other, board.get(f"/cases/{cid}/bundle").body).json()["Cases"][0]
    assert newer["Status"] == "AlreadyPresent" and "the bundle's copy is newer" in newer["Problems"][0]
    assert other.get_json(f"/cases/{cid}")["History"] == "Cough, 3 weeks"

