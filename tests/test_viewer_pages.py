"""The viewer as a radiologist expects it, in a real headless Chromium with an iPad viewport (issue 20):
slices in OHIF's order (the most superior first) on a CT whose Instance Numbers disagree with its
positions, the Instance Number and position shown, #in= deep links, the series switcher, the study
list's one-tap View (past the localizers), a comparison viewport with linked scrolling (by position in
one Frame of Reference, by index across two; side by side in landscape, stacked in portrait), cine at
the stack's Frame Time, the patient's name on de-identified studies only, and a series with missing
positions or a damaged frame shown with the board's notice and its images, never blank. Screenshots
go to tests/artifacts/viewer/.
"""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from .helpers import tap
from .synth import ct_instance, uid
from .test_pages import ARTIFACTS, By, _assert_same_origin, _browser, _open, _text, _wait

pytestmark = pytest.mark.xdist_group("chromium")   # one Chromium at a time, as test_pages.py

SHOTS = ARTIFACTS / "viewer"
# Instance Numbers of slices 1..12 (slice k at z = 5 k mm): a scanner's numbering that follows
# neither direction, so "Im 1" and "Instance 1" are different images
SHUFFLED = [7, 3, 11, 1, 9, 5, 12, 2, 10, 4, 8, 6]


def _slice(series: str, k: int, *, z: float | None, number: int | None, series_number: int = 1,
           description: str = "AXIAL", study: str = "vw", rows: int = 64, slice_location: float | None = None,
           truncate: bool = False, frame_of_reference: str | None = None, image_type: list[str] | None = None,
           frame_time: float | None = None, deidentified: bool = False) -> bytes:
    """One axial CT slice of ``series`` (pydicom): position z (None: no Image Position), the Instance
    Number given (None: none), Slice Location, and optionally its pixel data cut short (a damaged file),
    a Frame of Reference UID, an Image Type, a Frame Time (ms) and Patient Identity Removed YES."""
    ds = pydicom.dcmread(io.BytesIO(ct_instance(patient_id="VIEWR", patient_name="Viewer^Case", study=study,
                                                series=series, index=k, rows=rows, cols=rows,
                                                series_description=description, pixel_seed=k)))
    ds.SeriesNumber = series_number
    if number is None:
        del ds.InstanceNumber
    else:
        ds.InstanceNumber = number
    if z is None:
        del ds.ImagePositionPatient
    else:
        ds.ImagePositionPatient = [-31.25, -31.25, z]
    if slice_location is not None:
        ds.SliceLocation = slice_location
    if truncate:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    if frame_of_reference is not None:
        ds.FrameOfReferenceUID = uid(f"VIEWR/for/{frame_of_reference}")
    if image_type is not None:
        ds.ImageType = image_type
    if frame_time is not None:
        ds.FrameTime = frame_time
    if deidentified:
        ds.PatientIdentityRemoved = "YES"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _report(series: str, series_number: int, study: str = "vw") -> bytes:
    """A text SR in the study: a series with no image (the study list's View passes it by)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"   # Basic Text SR
    ds.SOPInstanceUID = uid(f"VIEWR/{study}/{series}/sr")
    ds.StudyInstanceUID = uid(f"VIEWR/{study}")
    ds.SeriesInstanceUID = uid(f"VIEWR/{study}/{series}")
    ds.PatientName, ds.PatientID, ds.Modality = "Viewer^Case", "VIEWR", "SR"
    ds.StudyDate, ds.StudyDescription, ds.SeriesNumber, ds.InstanceNumber = "20240102", "CHEST", series_number, 1
    ds.SeriesDescription = "REPORT"
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = fm
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _store(server, items: list[bytes]) -> str:
    series = None
    for data in items:
        r = server.post("/instances", data)
        assert r.status == 200, r.body
        series = r.json()["ParentSeries"]
    return series


def _ready(drv, n: int | None = None) -> None:
    _wait(drv, lambda d: d.execute_script("const s = window.viewerState; return !!(s && s.ready && s.map && s.drawn > 0"
                                          " && (arguments[0] === null || s.frames.length === arguments[0]))", n),
          timeout=30, what="the viewer's first image")


def _vp(drv, k: int, expr: str):
    """An expression over viewport k (0 or 1) of window.PipacsViewer."""
    return drv.execute_script(f"const v = window.PipacsViewer.viewports[{k}]; return {expr};")


def _key(drv, key: str, css: str = "#stage") -> None:
    drv.execute_script("document.querySelector(arguments[0]).dispatchEvent(new KeyboardEvent('keydown', "
                       "{key: arguments[1], bubbles: true}))", css, key)


def _tap(drv, css: str) -> None:
    """One finger tap on the element's middle (touch events, as an iPad)."""
    x, y = drv.execute_script("const r = document.querySelector(arguments[0]).getBoundingClientRect(); "
                              "return [r.left + r.width / 2, r.top + r.height / 2];", css)
    tap(drv, (x, y))


def _canvas_lit(drv, css: str = "#canvas") -> bool:
    """Something other than black is drawn (the image, not an empty viewer)."""
    return drv.execute_script("""const c = document.querySelector(arguments[0]);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4 * 37) if (d[i] > 20) return true; return false;""", css)


def test_slices_in_ohifs_order_with_instance_numbers_and_deep_links(server, shots):
    # slice k at z = 5k mm (z up: superior), Instance Numbers shuffled, Slice Location the negative
    # of the position (as some scanners write it): it differs, so it is shown beside the position
    series = _store(server, [_slice("ax", k, z=5.0 * k, number=SHUFFLED[k - 1], slice_location=-5.0 * k)
                             for k in range(1, 13)])
    top_number = SHUFFLED[11]               # slice 12, z = 60: the most superior
    drv = _browser(1024, 768, touch=True)
    seen: list[str] = []
    try:
        drv.get(server.url(f"/viewer/{series}"))
        _ready(drv, 12)
        _wait(drv, lambda d: "Im 1 / 12" in _text(d, "#ov-tr"), what="Im 1")
        corner = _text(drv, "#ov-tr")
        assert f"Instance {top_number}\n" in corner + "\n" and "Pos 60.0 mm" in corner and "Loc -60.0 mm" in corner, corner
        assert drv.execute_script("return window.viewerState.stack.Order") == "position"
        assert [round(p) for p in drv.execute_script("return window.viewerState.frames.map(f => f.pos)")] == \
            list(range(60, 0, -5)), "the most superior slice first, then downwards"
        shots(drv, "order-first-image")

        # the next image down is slice 11 (z = 55), whatever its number
        _key(drv, "ArrowDown")
        _wait(drv, lambda d: "Im 2 / 12" in _text(d, "#ov-tr"), what="Im 2")
        assert f"Instance {SHUFFLED[10]}\n" in _text(drv, "#ov-tr") + "\n" and "Pos 55.0 mm" in _text(drv, "#ov-tr")

        # "go to image 1" by its Instance Number: slice 4 (z = 20), the 9th shown
        drv.get(server.url("/"))
        drv.get(server.url(f"/viewer/{series}#in=1"))
        _ready(drv, 12)
        _wait(drv, lambda d: "Instance 1\n" in _text(d, "#ov-tr") + "\n", what="#in=1")
        assert "Im 9 / 12" in _text(drv, "#ov-tr") and "Pos 20.0 mm" in _text(drv, "#ov-tr")
        # a new #in= on the open page moves there too; an unknown number leaves #i= to decide
        drv.execute_script("location.hash = '#in=12'")
        _wait(drv, lambda d: "Instance 12\n" in _text(d, "#ov-tr") + "\n", what="#in=12")
        assert "Im 6 / 12" in _text(drv, "#ov-tr") and "Pos 35.0 mm" in _text(drv, "#ov-tr")
        drv.execute_script("location.hash = '#in=99&i=2'")
        _wait(drv, lambda d: "Im 3 / 12" in _text(d, "#ov-tr"), what="#i= when #in= matches nothing")
        # the old deep link #i= (0-based index) still works, with its window
        drv.get(server.url("/"))
        drv.get(server.url(f"/viewer/{series}#i=11&wc=100&ww=800"))
        _ready(drv, 12)
        _wait(drv, lambda d: "Im 12 / 12" in _text(d, "#ov-tr") and "W 800  L 100" in _text(d, "#ov-bl"),
              what="#i=11 with its window")
        assert f"Instance {SHUFFLED[0]}\n" in _text(drv, "#ov-tr") + "\n" and "Pos 5.0 mm" in _text(drv, "#ov-tr")
        _assert_same_origin(drv, server.url(""), seen)
    finally:
        drv.quit()


def test_study_list_view_opens_the_first_series_not_a_localizer_and_the_switcher_changes_series(server, shots):
    # stored out of Series Number order: the report (Series Number 0) holds no image, series 1 is a
    # 2-image topogram, series 2 six images whose Image Type says LOCALIZER under a plain description
    axial = _store(server, [_slice("ax", k, z=5.0 * k, number=k, series_number=3, description="AXIAL") for k in range(1, 6)])
    report = _store(server, [_report("sr", 0)])
    scout = _store(server, [_slice("loc", k, z=10.0 * k, number=k, series_number=1, description="TOPOGRAM", rows=32)
                            for k in range(1, 3)])
    lateral = _store(server, [_slice("lat", k, z=10.0 * k, number=k, series_number=2, description="AP LAT", rows=32,
                                     image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"]) for k in range(1, 7)])
    study = server.get_json("/studies")[0]
    drv = _browser(1024, 768, touch=True)
    try:
        # the study page lists the series by Series Number
        _open(drv, server.url(f"/#/study/{study}"), f"study:{study}")
        _wait(drv, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".grid .thumb")) == 4, what="the study's series")
        labels = drv.execute_script("return [...document.querySelectorAll('.grid .thumb span')].map(e => e.textContent)")
        assert [x.split(" ·")[0] for x in labels] == ["0", "1", "2", "3"], labels
        assert "REPORT" in labels[0] and "TOPOGRAM" in labels[1] and "AP LAT" in labels[2] and "AXIAL" in labels[3]
        hrefs = drv.execute_script("return [...document.querySelectorAll('.grid .thumb')].map(a => a.getAttribute('href'))")
        assert hrefs == [f"#/series/{report}", f"#/series/{scout}", f"#/series/{lateral}", f"#/series/{axial}"]

        # the study list: one tap on View, and the viewer shows the axial series, not the report
        # (no image), the topogram (2 images) or the lateral localizer (its Image Type)
        _open(drv, server.url("/#/"), "studies:")
        _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, "#study-list a.view"), what="the View button")
        shots(drv, "study-list-view")
        _tap(drv, "#study-list a.view")
        _wait(drv, lambda d: "/viewer/" in d.current_url, what="one tap to the viewer")
        _ready(drv, 5)
        assert drv.execute_script("return location.pathname") == f"/viewer/{axial}"
        assert "AXIAL" in _text(drv, "#title") and "Im 1 / 5" in _text(drv, "#ov-tr")
        assert drv.find_element(By.ID, "back").get_attribute("href").endswith(f"/#/study/{study}")

        # the series switcher: the study's series in Series Number order, this one marked
        _tap(drv, "#series-btn")
        _wait(drv, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#series-list .series-thumb")) == 4, what="the switcher")
        listed = drv.execute_script("return [...document.querySelectorAll('#series-list .series-thumb')]"
                                    ".map(b => [b.dataset.series, b.getAttribute('aria-current')])")
        assert listed == [[report, None], [scout, None], [lateral, None], [axial, "true"]]
        _wait(drv, lambda d: d.execute_script("return [...document.querySelectorAll('#series-list img')]"
                                              ".every(i => i.complete && i.naturalWidth > 0)"), what="the thumbnails")
        shots(drv, "series-switcher")
        _tap(drv, f'#series-list [data-series="{scout}"]')
        _wait(drv, lambda d: d.execute_script("return window.viewerState.seriesId") == scout and
              "Im 1 / 2" in _text(d, "#ov-tr"), what="the topogram")
        assert "TOPOGRAM" in _text(drv, "#title") and "Pos 20.0 mm" in _text(drv, "#ov-tr")
        assert drv.find_element(By.ID, "series-panel").get_attribute("hidden") is not None, "the switcher closes"
        _wait(drv, lambda d: d.execute_script("return location.pathname") == f"/viewer/{scout}", what="the address")
        _tap(drv, "#series-btn")
        _wait(drv, lambda d: d.execute_script(
            "const b = document.querySelector('#series-list [aria-current=true]'); return b && b.dataset.series") == scout,
            what="the topogram marked")
        # the report: no image to show, said so, not a blank viewer
        _tap(drv, f'#series-list [data-series="{report}"]')
        _wait(drv, lambda d: "no pixel data" in _text(d, "#frame-error"), what="the report's reason")

        # a study of a 2-image scout and a 3-image series: none has more than a few images, so
        # View opens the one with the most frames
        known = set(server.get_json("/studies"))
        _store(server, [_slice("fs", k, z=10.0 * k, number=k, series_number=1, description="SCOUT", study="fb")
                        for k in range(1, 3)])
        few = _store(server, [_slice("fa", k, z=5.0 * k, number=k, series_number=2, description="FEW", study="fb")
                              for k in range(1, 4)])
        (other,) = set(server.get_json("/studies")) - known
        drv.get(server.url(f"/viewer/study?study={other}"))
        _ready(drv, 3)
        assert drv.execute_script("return location.pathname") == f"/viewer/{few}" and "FEW" in _text(drv, "#title")
    finally:
        drv.quit()


def test_comparison_viewport_scrolls_with_the_first_by_position(server, shots):
    # two axial series of one study in one frame of reference, 5 mm (10 slices, z 0..45) and 2.5 mm
    # (19 slices, z 0..45)
    thick = _store(server, [_slice("thick", k, z=5.0 * (k - 1), number=k, series_number=2, description="5 MM",
                                   frame_of_reference="one") for k in range(1, 11)])
    thin = _store(server, [_slice("thin", k, z=2.5 * (k - 1), number=k, series_number=3, description="2.5 MM",
                                  frame_of_reference="one") for k in range(1, 20)])
    drv = _browser(1024, 768, touch=True)
    try:
        drv.get(server.url(f"/viewer/{thick}"))
        _ready(drv, 10)
        _tap(drv, "#compare")
        _wait(drv, lambda d: d.execute_script("return window.PipacsViewer.viewports.length") == 2 and
              _vp(d, 1, "v.frames.length && v.drawn > 0"), what="the second viewport")
        a, b = drv.execute_script("return [...document.querySelectorAll('#stages .stage')].map(e => "
                                  "{ const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })")
        assert a[0] < b[0] and abs(a[1] - b[1]) < 1 and a[2] > 300 and b[2] > 300, ("side by side in landscape", a, b)
        assert _vp(drv, 1, "v === window.PipacsViewer.active()"), "the new viewport is the one the switcher serves"
        # the second viewport gets the thin series from the switcher
        _tap(drv, "#series-btn")
        _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, f'#series-list [data-series="{thin}"]'), what="the switcher")
        _tap(drv, f'#series-list [data-series="{thin}"]')
        _wait(drv, lambda d: _vp(d, 1, "v.seriesId") == thin and _vp(d, 1, "v.drawn > 0 && v.frame().Position") == 45,
              what="the thin series at the matching (top) slice")
        assert drv.execute_script("return window.viewerState.linkMode") == "position"
        assert "Linked by position" in _vp(drv, 1, "v.ov.br.textContent")

        # three images down in the first (z 30): the second shows its slice at z 30 (its 7th)
        for _ in range(3):
            _key(drv, "ArrowDown")
        _wait(drv, lambda d: "Pos 30.0 mm" in _text(d, "#ov-tr"), what="the first viewport at z 30")
        _wait(drv, lambda d: _vp(d, 1, "v.index") == 6 and "Pos 30.0 mm" in _vp(d, 1, "v.ov.tr.textContent"),
              what="the second viewport at z 30")
        shots(drv, "compare-linked-landscape")
        # scrolling the second moves the first to the nearest slice: z 27.5 -> z 25 or 30, here 25 (first found)
        drv.execute_script("window.PipacsViewer.viewports[1].root.dispatchEvent(new KeyboardEvent('keydown', "
                           "{key: 'ArrowDown', bubbles: true}))")
        _wait(drv, lambda d: "Pos 27.5 mm" in _vp(d, 1, "v.ov.tr.textContent"), what="the second viewport at z 27.5")
        _wait(drv, lambda d: abs(drv.execute_script("return window.viewerState.frame().Position") - 27.5) <= 2.5,
              what="the first viewport at the nearest slice")

        # unlinked, the second stays where it is
        _tap(drv, "#link")
        _wait(drv, lambda d: d.find_element(By.ID, "link").get_attribute("aria-pressed") == "false" and
              "Not linked" in _vp(d, 1, "v.ov.br.textContent"), what="unlinked")
        before = _vp(drv, 1, "v.index")
        for _ in range(2):
            _key(drv, "ArrowDown")
        _wait(drv, lambda d: "Pos 15.0 mm" in _text(d, "#ov-tr") or "Pos 20.0 mm" in _text(d, "#ov-tr"),
              what="the first viewport scrolled")
        assert _vp(drv, 1, "v.index") == before

        # an iPad held upright: one above the other
        drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 820, "height": 1180, "deviceScaleFactor": 2, "mobile": True})
        _wait(drv, lambda d: d.execute_script("""const [a, b] = [...document.querySelectorAll('#stages .stage')]
            .map(e => e.getBoundingClientRect()); return a.bottom <= b.top + 1 && Math.abs(a.left - b.left) < 1;"""),
              what="stacked in portrait")
        _wait(drv, lambda d: _canvas_lit(d, "#stage canvas") and _canvas_lit(d, "#stages .stage:not(#stage) canvas"),
              what="both images drawn in portrait")
        shots(drv, "compare-portrait")
        # back to one viewport
        _tap(drv, "#compare")
        _wait(drv, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#stages .stage")) == 1, what="one viewport again")
    finally:
        drv.quit()


def test_series_in_other_frames_of_reference_link_by_index(server, shots):
    # one study, three axial series at the same z values: two in frames of reference A and B (the
    # patient got up between them: the same mm are another place), one with no Frame of Reference
    # UID. Only the same non-empty UID links by position; the others link image k with image k.
    first = _store(server, [_slice("fa", k, z=5.0 * (k - 1), number=k, series_number=2, description="FOR A",
                                   frame_of_reference="A") for k in range(1, 11)])
    other = _store(server, [_slice("fb", k, z=2.5 * (k - 1), number=k, series_number=3, description="FOR B",
                                   frame_of_reference="B") for k in range(1, 20)])
    bare = _store(server, [_slice("fn", k, z=2.5 * (k - 1), number=k, series_number=4, description="NO FOR")
                           for k in range(1, 20)])
    drv = _browser(1024, 768, touch=True)
    try:
        drv.get(server.url(f"/viewer/{first}"))
        _ready(drv, 10)
        assert drv.execute_script("return window.viewerState.stack.FrameOfReferenceUID") == uid("VIEWR/for/A"), \
            "the stack document carries the series' Frame of Reference UID"
        # compared with itself: one frame of reference, by position
        _tap(drv, "#compare")
        _wait(drv, lambda d: _vp(d, 1, "v.frames.length && v.drawn > 0"), what="the second viewport")
        _wait(drv, lambda d: d.execute_script("return window.viewerState.linkMode") == "position", what="by position")
        for series, what in ((other, "frame of reference B"), (bare, "no Frame of Reference UID")):
            _tap(drv, "#series-btn")
            _wait(drv, lambda d, series=series: d.find_elements(By.CSS_SELECTOR, f'#series-list [data-series="{series}"]'),
                  what="the switcher")
            _tap(drv, f'#series-list [data-series="{series}"]')
            _wait(drv, lambda d, series=series: _vp(d, 1, "v.seriesId") == series and _vp(d, 1, "v.drawn > 0"),
                  what=what)
            assert drv.execute_script("return window.viewerState.linkMode") == "index", what
            _wait(drv, lambda d: "Linked by index" in _vp(d, 1, "v.ov.br.textContent"), what=f"{what}: said so")
            # two images down in the first: the second shows its third image (z 5, not the z 10 of the first)
            drv.execute_script("window.PipacsViewer.viewports[0].root.dispatchEvent(new KeyboardEvent('keydown', "
                               "{key: 'Home', bubbles: true}))")
            _wait(drv, lambda d: drv.execute_script("return window.viewerState.index") == 0, what="the first at image 1")
            _key(drv, "ArrowDown")
            _key(drv, "ArrowDown")
            _wait(drv, lambda d: _vp(d, 1, "v.index") == 2 and drv.execute_script("return window.viewerState.index") == 2,
                  what=f"{what}: image 3 with image 3")
        shots(drv, "compare-other-frame-of-reference")
    finally:
        drv.quit()


def test_cine_at_the_stacks_frame_time_and_the_name_only_on_a_deidentified_study(server, shots):
    # a de-identified study (Patient Identity Removed YES: its name is a teaching alias) with a Frame
    # Time of 40 ms, and an identifiable one without: the name shows on the first only, the cine
    # steps at 40 ms there and at the viewer's 100 ms on the other
    alias = _store(server, [_slice("cine", k, z=5.0 * k, number=k, study="deid", frame_time=40.0, deidentified=True)
                            for k in range(1, 6)])
    plain = _store(server, [_slice("plain", k, z=5.0 * k, number=k, study="ident") for k in range(1, 6)])
    drv = _browser(1024, 768, touch=True)
    try:
        drv.get(server.url(f"/viewer/{alias}"))
        _ready(drv, 5)
        assert drv.execute_script("return window.viewerState.stack.PatientIdentityRemoved") is True
        _wait(drv, lambda d: _text(d, "#ov-tl").split("\n")[0] == "Viewer Case", what="the alias in the corner")
        assert drv.execute_script("return window.viewerState.stack.FrameTime") == 40
        _tap(drv, "#play")
        _wait(drv, lambda d: d.execute_script("return window.viewerState.playing"), what="the cine")
        assert drv.execute_script("return window.viewerState.cineMs") == 40
        _wait(drv, lambda d: d.execute_script("return window.viewerState.index") > 0, what="the cine stepping")
        shots(drv, "cine-deidentified")
        _tap(drv, "#play")
        _wait(drv, lambda d: not d.execute_script("return window.viewerState.playing"), what="paused")

        drv.get(server.url(f"/viewer/{plain}"))
        _ready(drv, 5)
        assert drv.execute_script("return window.viewerState.stack.PatientIdentityRemoved") is False
        _wait(drv, lambda d: "CHEST" in _text(d, "#ov-tl"), what="the study in the corner")
        assert "Viewer" not in _text(drv, "#ov-tl"), "no name on an identifiable study"
        assert drv.execute_script("return window.viewerState.stack.FrameTime") is None
        _tap(drv, "#play")
        _wait(drv, lambda d: d.execute_script("return window.viewerState.playing"), what="the cine")
        assert drv.execute_script("return window.viewerState.cineMs") == 100
    finally:
        drv.quit()


def test_missing_positions_and_a_damaged_frame_show_the_notice_and_the_images(server, shots):
    # six slices, two without a position: the board orders by Instance Number and says why;
    # slice 4's pixel data is cut short: that frame says so, the others show
    series = _store(server, [_slice("gap", k, z=None if k in (2, 5) else 5.0 * k, number=k, truncate=k == 4)
                             for k in range(1, 7)])
    drv = _browser(820, 1180, touch=True)
    try:
        drv.get(server.url(f"/viewer/{series}"))
        _ready(drv, 6)
        _wait(drv, lambda d: "no position" in _text(d, "#notice"), what="the notice")
        assert drv.execute_script("return window.viewerState.stack.Order") == "instance-number"
        assert drv.execute_script("return window.viewerState.frames.map(f => f.number)") == [1, 2, 3, 4, 5, 6]
        assert "Instance 1\n" in _text(drv, "#ov-tr") + "\n" and _canvas_lit(drv)
        assert drv.find_element(By.ID, "frame-error").get_attribute("hidden") is not None
        _key(drv, "ArrowDown")
        _wait(drv, lambda d: "Instance 2\n" in _text(d, "#ov-tr") + "\n" and _canvas_lit(d), what="the slice without position")
        assert "Pos" not in _text(drv, "#ov-tr")
        _key(drv, "ArrowDown")
        _key(drv, "ArrowDown")
        _wait(drv, lambda d: "cannot be shown" in _text(d, "#frame-error"), what="the damaged frame's reason")
        assert "Im 4 / 6" in _text(drv, "#ov-tr") and "no position" in _text(drv, "#notice")
        shots(drv, "damaged-frame")
        _key(drv, "ArrowDown")
        _wait(drv, lambda d: "Instance 5\n" in _text(d, "#ov-tr") + "\n" and _canvas_lit(d), what="the next frame")
        assert drv.find_element(By.ID, "frame-error").get_attribute("hidden") is not None, "the reason on that frame only"
        # compared with itself by index (no positions to link by)
        _tap(drv, "#compare")
        _wait(drv, lambda d: _vp(d, 1, "v.drawn > 0 && v.index") == 4, what="the second viewport at the same index")
        assert drv.execute_script("return window.viewerState.linkMode") == "index"
    finally:
        drv.quit()


def test_mixed_orientations_and_sizes_show_every_frame_with_the_notices(server, shots):
    # two axial 64x64 slices and two coronal 48x48 ones in one series (a scout stored with its CT)
    items = [_slice("mix", k, z=5.0 * k, number=k) for k in (1, 2)]
    for k in (3, 4):
        ds = pydicom.dcmread(io.BytesIO(_slice("mix", k, z=0.0, number=k, rows=48)))
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-24.0, 10.0 * k, 24.0]
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        items.append(buf.getvalue())
    series = _store(server, items)
    drv = _browser(1024, 768, touch=True)
    try:
        drv.get(server.url(f"/viewer/{series}"))
        _ready(drv, 4)
        _wait(drv, lambda d: "orientations" in _text(d, "#notice") and "different sizes" in _text(d, "#notice"),
              what="the notices")
        assert drv.execute_script("return window.viewerState.frames.map(f => f.number)") == [1, 2, 3, 4]
        sizes = []
        for k in range(4):
            _wait(drv, lambda d, k=k: f"Im {k + 1} / 4" in _text(d, "#ov-tr") and _canvas_lit(d), what=f"image {k + 1}")
            assert drv.find_element(By.ID, "frame-error").get_attribute("hidden") is not None
            sizes.append(_text(drv, "#ov-bl").split("\n")[-1])
            if k == 2:
                assert _text(drv, "#or-bottom") == "I" and _text(drv, "#or-right") == "L", "a coronal image's letters"
                shots(drv, "mixed-coronal")
            _key(drv, "ArrowDown")
        assert sizes == ["64×64", "64×64", "48×48", "48×48"]
    finally:
        drv.quit()
