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


def _key_image(annotations: list[dict], zoom: float | None = None, window: dict | None = None) -> dict:
    return {"Instance": "x", "Frame": 1, "Window": window, "Zoom": zoom, "Caption": "", "Annotations": annotations}


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
    assert length_label({"Type": "length", "Points": [[0, 0], [3, 4]], "LengthMm": None}) == "no pixel spacing"
    import pydicom
    ds = pydicom.dcmread(io.BytesIO(data))   # Pixel Spacing 0.9765625 both ways: 5 pixels, 4.9 mm
    assert length_label({"Type": "length", "Points": [[0, 0], [3, 4]]}, ds) == "4.9 mm"


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
