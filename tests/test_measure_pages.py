"""Measurements (measure.js) and reformats (mpr.js) in a real headless Chromium with an iPad viewport,
against a real server: lengths on a CT with anisotropic Pixel Spacing, an ellipse ROI's mean/SD in HU
over pixels of known values compared with numpy's on the same pixels (read back from
/instances/{id}/numpy), the angle of a known triangle, and a coronal reformat whose pixels equal
numpy's reformat of the same volume and whose lengths use the slices' spacing. Screenshots go to
tests/artifacts/measure/.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pydicom
import pytest

from .helpers import drag, tap, touch
from .synth import ct_instance, uid
from .test_pages import ARTIFACTS, By, _browser, _wait

pytestmark = pytest.mark.xdist_group("chromium")   # one Chromium at a time, as test_pages.py

SHOTS = ARTIFACTS / "measure"
SPACING = (0.5, 0.8)      # Pixel Spacing [row, col] mm: anisotropic, so rows and columns cannot be mixed up
GAP = 2.4                 # mm between slice positions
THICKNESS = 3.0           # Slice Thickness: deliberately not the gap (a reformat must not use it)
ROWS, COLS, SLICES = 48, 40, 8
INTERCEPT = -1024


# ------------------------------------------------------------------ datasets

def volume_pixels(slices: int = SLICES, rows: int = ROWS, cols: int = COLS, seed: int = 7) -> np.ndarray:
    """Stored values (slices, rows, cols), slice 0 the lowest position: soft tissue at 1064 (40 HU)
    with Gaussian noise (SD 12), a constant 'bone' block at 2024 (1000 HU), air (0) in a corner, and
    a ramp along the slices so that a reformat's interpolation shows."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((slices, rows, cols), dtype=np.int16)
    for s in range(slices):
        img = np.full((rows, cols), 1064, dtype=np.float64) + rng.normal(0, 12, size=(rows, cols))
        img[4:14, 24:36] = 2024                       # bone: constant
        img[rows - 8:, :8] = 0                        # air
        img[:, 0:4] += 30 * s                         # a ramp along the stack
        vol[s] = np.round(img).astype(np.int16)
    return vol


def ct_slice(index: int, pixels: np.ndarray, series: str = "mpr", position: float | None = None,
             orientation: tuple = (1, 0, 0, 0, 1, 0), spacing: tuple = SPACING, **kw) -> bytes:
    """One axial CT slice with these stored values, Pixel Spacing and position (index * GAP)."""
    rows, cols = pixels.shape
    ds = pydicom.dcmread(io.BytesIO(ct_instance(index=index, rows=rows, cols=cols, series=series,
                                                patient_id="MEAS1", patient_name="Measure^Phantom", **kw)))
    ds.SeriesInstanceUID = uid(f"MEAS1/{series}")
    ds.SeriesDescription = series
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = THICKNESS
    ds.ImageOrientationPatient = list(orientation)
    ds.ImagePositionPatient = [-10.0, -12.0, GAP * index if position is None else position]
    ds.RescaleSlope, ds.RescaleIntercept = 1, INTERCEPT
    ds.PixelData = pixels.astype("<i2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _upload(srv, blobs: list[bytes]) -> list[str]:
    ids = []
    for b in blobs:
        r = srv.post("/instances", b)
        assert r.status == 200, r.body
        ids.append(r.json()["ID"])
    return ids


def reformat_reference(vol: np.ndarray, positions: list[float], axis: str, in_plane: float) -> np.ndarray:
    """numpy's reformat of a volume (slices in stack order, highest position first) across image rows
    ("rows": frame k = image row k) or columns: output row r at z = positions[0] - r * spacing, spacing
    the extent over round(extent / in_plane) rows, linear between the two slices around z, rounded
    half up. The same rule as mpr.js, written independently."""
    n = len(positions)
    extent = positions[0] - positions[-1]
    height = max(math.floor(extent / in_plane + 0.5) + 1, n)
    step = extent / (height - 1)
    lines = []
    s = 0
    for r in range(height):
        z = positions[0] - r * step
        while s < n - 2 and positions[s + 1] > z:
            s += 1
        t = min(max((positions[s] - z) / (positions[s] - positions[s + 1]), 0.0), 1.0)
        a, b = vol[s].astype(np.float64), vol[s + 1].astype(np.float64)
        lines.append(np.floor(a + (b - a) * t + 0.5))
    out = np.stack(lines)                     # (height, rows, cols)
    return out.transpose(1, 0, 2) if axis == "rows" else out.transpose(2, 0, 1)   # (frames, height, width)


# ------------------------------------------------------------------ the scripts on their own

def _tool_page(drv, srv) -> None:
    """The board's explorer page with measure.js and mpr.js loaded (no viewer: the pure functions)."""
    drv.get(srv.url("/"))
    drv.execute_script("""
        for (const name of ["measure.js", "mpr.js"]) {
          const s = document.createElement("script"); s.src = "/app/" + name; document.head.appendChild(s);
        }""")
    _wait(drv, lambda d: d.execute_script("return !!(window.PipacsMeasure && window.PipacsMPR)"), what="the scripts")


def test_the_pure_functions_in_chromium(server):
    drv = _browser(1024, 768, touch=True)
    try:
        _tool_page(drv, server)
        # length: dx along a row uses the column spacing, dy the row spacing; pixels when none
        got = drv.execute_script("""
            const M = PipacsMeasure, ct = {PixelSpacing: [0.5, 0.8], SpacingSource: "PixelSpacing"};
            return [M.length([10, 20], [40, 60], ct), M.length([10, 20], [40, 60], {}),
                    M.length([0, 0], [3, 4], {PixelSpacing: [0.2, 0.2], SpacingSource: "ImagerPixelSpacing"}),
                    M.angle([4, 0], [0, 0], [0, 3], null), M.angle([40, 10], [10, 10], [10, 50], ct),
                    M.angle([1, 1], [1, 1], [2, 2], ct)];""")
        assert got[0]["value"] == pytest.approx(math.hypot(30 * 0.8, 40 * 0.5), rel=1e-12) and got[0]["unit"] == "mm"
        assert got[1]["unit"] == "px" and got[1]["value"] == pytest.approx(50) and "no pixel spacing" in got[1]["label"]
        assert got[2]["value"] == pytest.approx(1.0) and "Imager Pixel Spacing" in got[2]["label"]
        assert got[3] == pytest.approx(90)
        # a right angle in pixels stays one in mm (the arms are along the axes), and a degenerate arm has no angle
        assert got[4] == pytest.approx(90) and got[5] is None
        # an oblique triangle: anisotropic pixels change the angle; mm-space atan2 of numpy's vectors
        deg = drv.execute_script("return PipacsMeasure.angle([30, 0], [0, 0], [30, 40], "
                                 "{PixelSpacing: [0.5, 0.8]})")
        u, v = np.array([30 * 0.8, 0]), np.array([30 * 0.8, 40 * 0.5])
        assert deg == pytest.approx(math.degrees(math.acos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))), abs=1e-9)

        # ellipse ROI over known values, with a modality LUT whose slope is not 1
        rng = np.random.default_rng(3)
        img = rng.integers(-200, 3000, size=(30, 50)).astype(np.int16)
        stats = drv.execute_script("""
            const [w, h, vals] = arguments;
            const image = {width: w, height: h, channels: 1, data: Int16Array.from(vals)};
            const meta = {PixelSpacing: [0.5, 0.8], RescaleSlope: 2, RescaleIntercept: -1000, Units: "HU"};
            return [PipacsMeasure.ellipseStats(image, meta, [3.2, 4.5], [41.7, 26.1]),
                    PipacsMeasure.ellipseStats(image, {}, [3.2, 4.5], [41.7, 26.1]),
                    PipacsMeasure.ellipseStats({...image, channels: 3}, meta, [0, 0], [9, 9])];""",
                                   50, 30, img.ravel().tolist())
        mask = _ellipse_mask(img.shape, (3.2, 4.5), (41.7, 26.1))
        vals = img[mask].astype(np.float64)
        hu = vals * 2 - 1000
        s = stats[0]
        assert s["count"] == mask.sum() > 400
        assert s["stored"]["mean"] == pytest.approx(vals.mean(), rel=1e-12)
        assert s["stored"]["sd"] == pytest.approx(vals.std(), rel=1e-12)
        assert (s["stored"]["min"], s["stored"]["max"]) == (vals.min(), vals.max())
        assert s["rescaled"]["unit"] == "HU"
        assert s["rescaled"]["mean"] == pytest.approx(hu.mean(), rel=1e-12)
        assert s["rescaled"]["sd"] == pytest.approx(hu.std(), rel=1e-12)
        assert (s["rescaled"]["min"], s["rescaled"]["max"]) == (hu.min(), hu.max())
        assert s["area"] == pytest.approx(math.pi * (38.5 / 2) * (21.6 / 2) * 0.5 * 0.8) and s["areaUnit"] == "mm²"
        assert "rescaled" not in stats[1] and stats[1]["areaUnit"] == "px²"   # no LUT, no spacing: stored and px
        assert stats[2] is None                                              # colour: no single value

        # the volume check's refusals, each with its reason
        reasons = drv.execute_script("""
            const f = (k, extra = {}) => ({Instance: "i" + k, Frame: 0, Rows: 4, Columns: 4, SamplesPerPixel: 1,
              ImagePositionPatient: [0, 0, 2.4 * k], ImageOrientationPatient: [1, 0, 0, 0, 1, 0], PixelSpacing: [0.5, 0.8],
              RescaleSlope: 1, RescaleIntercept: -1024, ...extra});
            const C = PipacsMPR.checkVolume;
            return [C([f(0), f(1)]).reason, C([f(0), f(1), f(2, {Rows: 8})]).reason,
                    C([f(0), f(1), f(2, {ImageOrientationPatient: [0, 1, 0, 0, 0, -1]})]).reason,
                    C([f(0), f(1), f(2, {ImagePositionPatient: null})]).reason,
                    C([f(0), f(1), f(1), f(2)]).reason, C([f(0), f(1), f(3), f(4)]).reason,
                    C([f(0), f(1), f(2, {ImagePositionPatient: [5, 0, 4.8]})]).reason,
                    C([f(2), f(0), f(1)]).ok, C([f(2), f(0), f(1)]).geometry.order,
                    C(Array.from({length: 191}, (_, k) => f(k, {Rows: 512, Columns: 512}))).reason,
                    C(Array.from({length: 190}, (_, k) => f(k, {Rows: 512, Columns: 512}))).ok];""")
        assert "at least 3" in reasons[0] and "2 different sizes" in reasons[1]
        assert "orientation" in reasons[2] and "no position" in reasons[3]
        assert "share a position" in reasons[4] and "missing" in reasons[5] and "gantry tilt" in reasons[6]
        assert reasons[7] is True and reasons[8] == [0, 2, 1]   # ordered by position, highest first
        # any consistent orientation: a sagittal stack's reformat across its columns is coronal; no sagittal of it
        planes = drv.execute_script("""
            const f = (k) => ({Instance: "i" + k, Frame: 0, Rows: 4, Columns: 6, SamplesPerPixel: 1, RescaleSlope: 1,
              RescaleIntercept: 0, ImagePositionPatient: [3 * k, 0, 0], ImageOrientationPatient: [0, 1, 0, 0, 0, -1],
              PixelSpacing: [0.5, 0.8]});
            const g = PipacsMPR.checkVolume([f(0), f(1), f(2)]).geometry, cor = PipacsMPR.plan(g, "coronal");
            return [cor.axis, cor.width, cor.height, cor.normal, PipacsMPR.plan(g, "sagittal").reason];""")
        assert planes[:3] == ["cols", 4, 13] and planes[3] == pytest.approx([0, -1, 0])
        assert planes[4] == "This stack is sagittal: its reformats are not sagittal."
        # the memory limit (an iPad's tab, L9): 50 M pixels of slices (190 of 512 x 512 pass, 191 do not)
        assert "191 slices of 512×512" in reasons[9] and "50 million pixels" in reasons[9] and reasons[10] is True
        assert drv.execute_script("return PipacsMPR.MAX_INPUT_VOXELS") == 50_000_000
        _assert_no_errors(drv)
    finally:
        drv.quit()


def _ellipse_mask(shape: tuple[int, int], p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """The pixels whose centres lie in the ellipse inscribed in the box p0-p1 (image x, y)."""
    cx, cy = (p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2
    rx, ry = abs(p1[0] - p0[0]) / 2, abs(p1[1] - p0[1]) / 2
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1


def _assert_no_errors(drv) -> None:
    errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_a_big_reformat_runs_in_a_worker_and_the_page_keeps_running(server):
    """100 x 512 x 512 slices: the resampling is the Worker's; the page's timers fire meanwhile
    (computed on the page, none could until it finished). Values checked against numpy."""
    drv = _browser(1024, 768, touch=True)
    try:
        _tool_page(drv, server)
        drv.set_script_timeout(120)
        got = drv.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const N = 100, R = 512, C = 512, frames = [], images = [];
            for (let s = 0; s < N; s++) {
              const d = new Int16Array(R * C);
              for (let y = 0, k = 0; y < R; y++) for (let x = 0; x < C; x++, k++) d[k] = (s * 37 + y * 3 + x) % 2000;
              frames.push({Instance: "i" + s, Frame: 0, Rows: R, Columns: C, SamplesPerPixel: 1, RescaleSlope: 1,
                RescaleIntercept: -1024, ImagePositionPatient: [0, 0, 2.4 * s], ImageOrientationPatient: [1, 0, 0, 0, 1, 0],
                PixelSpacing: [0.7, 0.7]});
              images.push({width: C, height: R, channels: 1, data: d});
            }
            let ticks = 0;
            const timer = setInterval(() => { ticks++; }, 1);
            PipacsMPR.reformat(frames, images, "coronal").then(r => {
              clearInterval(timer);
              const pick = (fi) => Array.from(r.frames[fi].image.data);
              done({ticks, worker: PipacsMPR.last.worker, notice: r.notice, count: r.frames.length, step: r.plan.frameStep,
                    height: r.plan.height, width: r.plan.width, rows: r.frames.map(f => f.meta.SourceIndex),
                    spacing: r.frames[0].meta.PixelSpacing, f0: pick(0), f100: pick(100)});
            }, e => done({error: String(e)}));""")
        assert "error" not in got, got
        assert got["worker"] is True and got["ticks"] > 0
        sl, xx = np.mgrid[99:-1:-1, 0:512]                                   # stack order: highest position first
        positions = [2.4 * k for k in range(99, -1, -1)]
        # 237.6 mm at 0.7 mm: 340 rows; 512 frames of 512 x 340 would pass the 64 M budget: every 2nd row
        assert got["step"] == 2 and got["count"] == 256 and got["rows"][:3] == [0, 2, 4]
        assert got["notice"] == "Reformat: every 2nd row (1.40 mm apart), to fit the iPad's memory."

        assert (got["width"], got["height"]) == (512, 340)
        assert got["spacing"] == pytest.approx([99 * 2.4 / 339, 0.7])
        for fi in (0, 100):
            k = got["rows"][fi]
            row_k = ((sl * 37 + k * 3 + xx) % 2000).astype(np.int16)[:, None, :]   # image row k of every slice
            ref = reformat_reference(row_k, positions, "rows", 0.7)[0]
            assert np.array_equal(np.array(got[f"f{fi}"]).reshape(340, 512), ref), fi
    finally:
        drv.quit()


# ------------------------------------------------------------------ in the viewer, by touch

def _at(drv, x: float, y: float) -> tuple[float, float]:
    """Where image pixel coordinates (x = column, y = row) are on the screen (CSS pixels) now."""
    return tuple(drv.execute_script("""
        const vp = PipacsViewer.active(), r = vp.canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1, m = vp.map;
        return [r.left + (m.ox + arguments[0] * m.scale) / dpr, r.top + (m.oy + arguments[1] * m.scale) / dpr];""", x, y))


def _colour_at(drv, x: float, y: float) -> list[int]:
    """The canvas's colour at image point (x, y): what the page drew there."""
    return drv.execute_script("""
        const vp = PipacsViewer.active(), m = vp.map;
        return Array.from(vp.ctx.getImageData(Math.round(m.ox + arguments[0] * m.scale), Math.round(m.oy + arguments[1] * m.scale), 1, 1).data).slice(0, 3);""",
                              x, y)


SELECTED_RGB, DRAWN_RGB = (0x4F, 0xC3, 0xF7), (0x69, 0xF0, 0xAE)   # measure.js's colours


def _is(rgb: list[int], want: tuple[int, int, int]) -> bool:
    return max(abs(a - b) for a, b in zip(rgb, want)) <= 12


def _measurements(drv) -> list[dict]:
    return drv.execute_script("return PipacsMeasure.visible(PipacsViewer.active())")


def _press(drv, css: str) -> None:
    drv.find_element(By.CSS_SELECTOR, css).click()


def _show_index(drv, i: int) -> None:
    drv.execute_script("const s = document.getElementById('slider'); s.value = String(arguments[0]);"
                       "s.dispatchEvent(new Event('input'));", i)
    _wait(drv, lambda d: d.execute_script(
        "const vp = PipacsViewer.active(); return vp.index === arguments[0] && !!vp.image() && vp.map !== null", i),
        what=f"image {i + 1}")


def _open_viewer(drv, srv, series: str) -> None:
    drv.get(srv.url(f"/viewer/{series}"))
    _wait(drv, lambda d: d.execute_script(
        "return !!(window.viewerState && viewerState.ready && window.PipacsMeasure && PipacsMeasure.registered && "
        "window.PipacsMPR && PipacsMPR.registered && PipacsViewer.active().image() && PipacsViewer.active().map)"),
        timeout=30, what="the viewer with its measurement tools")


def _npy(srv, instance: str) -> np.ndarray:
    r = srv.get(f"/instances/{instance}/numpy")
    assert r.status == 200
    return np.load(io.BytesIO(r.body)).squeeze()


@pytest.fixture
def ct(make_server):
    """A CT series of SLICES axial slices (ROWS x COLS, Pixel Spacing 0.5 x 0.8 mm, GAP mm apart,
    Slice Thickness 3 mm) of volume_pixels, and a second series of the same patient with a slice
    missing (positions 0, 2.4, 4.8, 9.6)."""
    srv = make_server()
    vol = volume_pixels()
    _upload(srv, [ct_slice(s + 1, vol[s], position=GAP * s) for s in range(SLICES)])
    _upload(srv, [ct_slice(k + 1, vol[k], series="gap", position=p) for k, p in enumerate((0, 2.4, 4.8, 9.6))])
    by_desc = {srv.get_json(f"/series/{s}")["MainDicomTags"]["SeriesDescription"]: s for s in srv.get_json("/series")}
    srv.series, srv.gap_series, srv.vol = by_desc["mpr"], by_desc["gap"], vol
    return srv


def test_length_roi_and_angle_by_touch_on_an_anisotropic_ct(ct, shots):
    drv = _browser(1024, 768, touch=True)
    try:
        _open_viewer(drv, ct, ct.series)
        meta = drv.execute_script("return PipacsViewer.active().frame()")
        assert meta["PixelSpacing"] == [0.5, 0.8] and meta["Units"] == "HU"

        # length: a drag; dx along a row in column spacing (0.8), dy in row spacing (0.5)
        _press(drv, "#tool-length")
        drag(drv, _at(drv, 5.5, 6.5), _at(drv, 33.5, 40.5))
        [m] = _measurements(drv)
        (x0, y0), (x1, y1) = m["points"]
        assert max(abs(x0 - 5.5), abs(y0 - 6.5), abs(x1 - 33.5), abs(y1 - 40.5)) < 0.5
        assert m["result"]["unit"] == "mm"
        assert m["result"]["value"] == pytest.approx(math.hypot((x1 - x0) * 0.8, (y1 - y0) * 0.5), rel=1e-12)
        assert m["result"]["value"] == pytest.approx(math.hypot(28 * 0.8, 34 * 0.5), abs=0.3)   # 28.1 mm
        assert m["lines"][0].endswith(" mm") and m["selected"]
        assert drv.find_element(By.ID, "measure-live").get_attribute("textContent") == m["lines"][0]   # for a screen reader
        assert _is(_colour_at(drv, (x0 + x1) / 2, (y0 + y1) / 2), SELECTED_RGB)   # drawn, selected
        shots(drv, "length")

        # a second finger turns the drag into a pinch: the viewer zooms, nothing is measured or left drawn
        zoom = drv.execute_script("return PipacsViewer.active().zoom")
        a, b = _at(drv, 10, 30), _at(drv, 14, 30)
        touch(drv, "touchStart", [a])
        touch(drv, "touchMove", [(a[0] + 30, a[1])])
        touch(drv, "touchStart", [(a[0] + 30, a[1]), b])
        touch(drv, "touchMove", [(a[0] + 30, a[1]), (b[0] + 120, b[1] + 60)])
        touch(drv, "touchEnd", [])
        assert drv.execute_script("return PipacsViewer.active().zoom") != zoom
        assert len(_measurements(drv)) == 1
        assert not drv.execute_script("return PipacsMeasure.drafting(PipacsViewer.active())")
        _press(drv, "#reset")
        _wait(drv, lambda d: d.execute_script("return PipacsViewer.active().zoom === 1"), what="the view reset")

        # it belongs to its frame: not on the next one, there again on coming back
        here = drv.execute_script("return PipacsViewer.active().index")
        _show_index(drv, here + 1)
        assert _measurements(drv) == []
        _show_index(drv, here)
        assert len(_measurements(drv)) == 1

        # a tap elsewhere unselects, a tap on the line selects, Delete takes it away
        tap(drv, _at(drv, 30, 8))
        assert not _measurements(drv)[0]["selected"]
        assert _is(_colour_at(drv, (x0 + x1) / 2, (y0 + y1) / 2), DRAWN_RGB)
        tap(drv, _at(drv, 19.5, 23.5))
        assert _measurements(drv)[0]["selected"]
        _press(drv, "#action-measure-delete")
        assert _measurements(drv) == []

        # ROI: a constant block (bone, 2024 stored = 1000 HU), then soft tissue with noise, against numpy
        pixels = _npy(ct, meta["Instance"])
        _press(drv, "#tool-roi")
        drag(drv, _at(drv, 25, 5), _at(drv, 35, 13))
        drag(drv, _at(drv, 6.2, 18.3), _at(drv, 22.7, 44.1))
        bone, soft = _measurements(drv)
        assert bone["result"]["rescaled"]["mean"] == pytest.approx(1000) and bone["result"]["rescaled"]["sd"] == 0
        assert bone["result"]["stored"]["mean"] == pytest.approx(2024)
        for roi in (bone, soft):
            mask = _ellipse_mask(pixels.shape, *roi["points"])
            stored = pixels[mask].astype(np.float64)
            hu = stored * 1 + INTERCEPT
            r = roi["result"]
            assert r["count"] == mask.sum() and r["rescaled"]["unit"] == "HU"
            assert r["rescaled"]["mean"] == pytest.approx(hu.mean(), rel=1e-12, abs=1e-9)
            assert r["rescaled"]["sd"] == pytest.approx(hu.std(), rel=1e-12, abs=1e-9)
            assert (r["rescaled"]["min"], r["rescaled"]["max"]) == (hu.min(), hu.max())
            assert r["stored"]["mean"] == pytest.approx(stored.mean(), rel=1e-12)
            (a0, b0), (a1, b1) = roi["points"]
            assert r["area"] == pytest.approx(math.pi * abs(a1 - a0) / 2 * abs(b1 - b0) / 2 * 0.5 * 0.8, rel=1e-12)
        assert soft["result"]["count"] > 250 and 8 < soft["result"]["rescaled"]["sd"] < 16   # the noise's SD is 12
        assert soft["lines"][0].startswith("Mean ") and " HU " in soft["lines"][0]
        (a0, b0), (a1, b1) = soft["points"]
        assert _is(_colour_at(drv, max(a0, a1), (b0 + b1) / 2), SELECTED_RGB)   # the ellipse's right end
        assert _is(_colour_at(drv, 30, 5), DRAWN_RGB)                            # the bone ROI's top
        shots(drv, "roi")

        # angle: one drag draws the first arm to the vertex, a tap places the third point. In mm
        # the triangle's angle is 45 degrees (arms 19.2 mm along the row, (8, -8) mm); in pixels it would be 58
        _press(drv, "#tool-angle")
        drag(drv, _at(drv, 32, 40), _at(drv, 8, 40))
        assert drv.execute_script("return PipacsMeasure.pending()") is not None
        tap(drv, _at(drv, 18, 24))
        angle = next(m for m in _measurements(drv) if m["type"] == "angle")
        a, b, c = (np.array(p) * [0.8, 0.5] for p in angle["points"])
        u, v = a - b, c - b
        expected = math.degrees(math.atan2(abs(u[0] * v[1] - u[1] * v[0]), u @ v))
        assert angle["result"]["value"] == pytest.approx(expected, abs=1e-9)
        assert angle["result"]["value"] == pytest.approx(45, abs=1.5)
        assert angle["lines"][0].endswith("°")
        shots(drv, "angle")

        # Clear takes every measurement away
        _press(drv, "#action-measure-clear")
        assert _measurements(drv) == [] and drv.execute_script("return PipacsMeasure.count()") == 0
        _assert_no_errors(drv)
    finally:
        drv.quit()


def _volume_in_stack_order(srv, series: str) -> tuple[np.ndarray, list[float]]:
    """The series' pixels from /instances/{id}/numpy, in the stack document's order, and positions."""
    doc = srv.get_json(f"/pipacs/series/{series}/stack")
    frames = doc["Frames"]
    positions = [float(f["ImagePositionPatient"][2]) for f in frames]   # axial, IOP 1\0\0\0\1\0: the normal is z
    assert positions == sorted(positions, reverse=True)
    return np.stack([_npy(srv, f["Instance"]) for f in frames]), positions


def test_a_coronal_reformat_equals_numpys_and_measures_with_the_slice_spacing(ct, shots):
    vol, positions = _volume_in_stack_order(ct, ct.series)
    drv = _browser(1024, 768, touch=True)
    try:
        _open_viewer(drv, ct, ct.series)
        _press(drv, "#action-mpr-coronal")
        _wait(drv, lambda d: d.execute_script(
            "const vp = PipacsViewer.active(); return vp.stack.Order === 'computed' && !!vp.image() && !!PipacsMPR.result"),
            timeout=30, what="the coronal reformat")
        info = drv.execute_script("""
            const vp = PipacsViewer.active(), r = PipacsMPR.result;
            return {count: vp.frames.length, index: vp.index, meta: vp.frame(), shownIsOurs: vp.image().data === r.frames[vp.index].image.data,
                    width: vp.image().width, height: vp.image().height, worker: PipacsMPR.last.worker,
                    positions: vp.stack.Frames.map(f => f.Position)};""")
        ref = reformat_reference(vol, positions, "rows", SPACING[1])
        # 16.8 mm of stack at 0.8 mm: 22 rows; one frame per image row
        assert ref.shape == (ROWS, 22, COLS) and info["count"] == ROWS
        assert (info["width"], info["height"]) == (COLS, 22) and info["shownIsOurs"] and info["worker"]
        assert info["meta"]["PixelSpacing"] == pytest.approx([16.8 / 21, 0.8])
        assert info["meta"]["ImageOrientationPatient"] == [1, 0, 0, 0, 0, -1]
        # positions along the coronal normal (+y): the image row's y, -12 + 0.5 * row
        assert info["positions"] == pytest.approx([-12 + 0.5 * k for k in range(ROWS)])
        assert f"Im {info['index'] + 1} / {ROWS}" in drv.find_element(By.ID, "ov-tr").text
        assert "Pos " in drv.find_element(By.ID, "ov-tr").text
        for k in (0, 17, info["index"], ROWS - 1):
            got = drv.execute_script("return Array.from(PipacsMPR.result.frames[arguments[0]].image.data)", k)
            assert np.array_equal(np.array(got).reshape(22, COLS), ref[k]), k
        # rows that are slices hold the slice's pixels unchanged (every 3rd: 2.4 mm / 0.8 mm)
        assert np.array_equal(ref[17][::3], vol[:, 17, :])
        shots(drv, "coronal")

        # a length down the reformat spans the stack: 21 rows are 7 gaps of 2.4 mm (with the Slice
        # Thickness, 3 mm, it would read 21 mm)
        _press(drv, "#tool-length")
        drag(drv, _at(drv, 20.5, 0.5), _at(drv, 20.5, 21.5))
        [m] = _measurements(drv)
        (x0, y0), (x1, y1) = m["points"]
        assert m["result"]["value"] == pytest.approx(math.hypot((x1 - x0) * 0.8, (y1 - y0) * 16.8 / 21), rel=1e-12)
        assert m["result"]["value"] == pytest.approx(16.8, abs=0.3)
        shots(drv, "coronal-length")

        # the viewer opened again on the series; then the sagittal
        _open_viewer(drv, ct, ct.series)
        _press(drv, "#action-mpr-sagittal")
        _wait(drv, lambda d: d.execute_script(
            "const vp = PipacsViewer.active(); return vp.stack.Order === 'computed' && !!vp.image() && "
            "vp.frame().Reformat === 'sagittal'"), timeout=30, what="the sagittal reformat")
        sag = reformat_reference(vol, positions, "cols", SPACING[0])
        # 16.8 mm at 0.5 mm: 35 rows (0.494 mm); one frame per image column, ROWS wide
        assert sag.shape == (COLS, 35, ROWS)
        info = drv.execute_script("const vp = PipacsViewer.active(); return {count: vp.frames.length, meta: vp.frame()}")
        assert info["count"] == COLS and info["meta"]["PixelSpacing"] == pytest.approx([16.8 / 34, 0.5])
        assert info["meta"]["ImageOrientationPatient"] == [0, 1, 0, 0, 0, -1]
        for k in (2, 30):
            got = drv.execute_script("return Array.from(PipacsMPR.result.frames[arguments[0]].image.data)", k)
            assert np.array_equal(np.array(got).reshape(35, ROWS), sag[k]), k
        shots(drv, "sagittal")

        # two viewports (L9, an iPad's memory): while the second's reformat loads its volume, the
        # first keeps only its shown image; scrolling it brings the others back
        _open_viewer(drv, ct, ct.series)
        first = "PipacsViewer.viewports[0]"
        _wait(drv, lambda d: d.execute_script(f"return {first}.cache.size") == SLICES, what="every slice in the first")
        _press(drv, "#compare")
        _wait(drv, lambda d: d.execute_script("const v = PipacsViewer.viewports[1]; return !!v && v === PipacsViewer.active()"
                                              " && v.cache.size === arguments[0] && !!v.image()", SLICES),
              what="the second viewport with every slice")
        _press(drv, "#action-mpr-coronal")
        _wait(drv, lambda d: d.execute_script("return PipacsViewer.viewports[1].stack.Order === 'computed' && "
                                              "!!PipacsViewer.viewports[1].image()"), timeout=30, what="the second's coronal")
        assert drv.execute_script(f"return [{first}.cache.size, {first}.cache.has({first}.index), {first}.stack.Order]") == \
            [1, True, "position"]
        drv.execute_script(f"{first}.root.dispatchEvent(new KeyboardEvent('keydown', {{key: 'End', bubbles: true}}))")
        _wait(drv, lambda d: d.execute_script(f"return {first}.index === {first}.frames.length - 1 && !!{first}.image()"),
              what="the first scrolled, its image fetched again")
        _assert_no_errors(drv)
    finally:
        drv.quit()


def test_no_reformat_of_a_stack_with_a_missing_slice(ct, shots):
    drv = _browser(1024, 768, touch=True)
    try:
        _open_viewer(drv, ct, ct.gap_series)
        _press(drv, "#action-mpr-coronal")
        _wait(drv, lambda d: "missing" in d.execute_script(
            "const e = document.getElementById('tools-notice'); return e && !e.hidden ? e.textContent : ''"),
            what="the notice")
        text = drv.execute_script("return document.getElementById('tools-notice').textContent")
        assert "gap of 4.80 mm" in text and "2.40 mm apart" in text
        assert drv.execute_script("return PipacsViewer.active().stack.Order") == "position"
        assert drv.execute_script("return PipacsMPR.result === undefined")
        shots(drv, "refused")
    finally:
        drv.quit()
