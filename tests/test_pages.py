"""The explorer and the touch viewer in a real headless Chromium (Debian's chromium + chromium-driver).

Screenshots go to tests/artifacts/ (kept by CI). Every request the pages make is recorded
from Chrome's performance log: none may leave the appliance's origin (classrooms are offline).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from .helpers import dcmtk, free_port, wait_listening
from .helpers import touch as _touch
from .synth import ct_instance, write_series

ARTIFACTS = Path(__file__).parent / "artifacts"
# one worker runs them all: one Chromium at a time (heavy on 2 cores), and the module's
# _fresh_artifacts empties tests/artifacts, which another worker's screenshots would be in
pytestmark = pytest.mark.xdist_group("chromium")


selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install '.[test]')")
if not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")):
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def _browser(width: int = 1280, height: int = 900, touch: bool = False):
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--disable-background-networking", "--no-first-run",
              "--disable-component-update", "--disable-default-apps", "--disable-sync"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    drv.set_page_load_timeout(30)
    if touch:   # an iPad: 1024x768, touch events, no mouse
        drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True})
        drv.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
    return drv


def _requested_urls(drv) -> list[str]:
    urls = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def _assert_same_origin(drv, origin: str, seen: list[str]) -> None:
    seen += _requested_urls(drv)
    foreign = [u for u in seen if not (u.startswith((origin, "data:", "blob:")))]
    assert not foreign, foreign


def _wait(drv, cond, timeout: float = 15, what: str = ""):
    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.1).until(lambda d: cond(d))
    except TimeoutException:
        ARTIFACTS.mkdir(exist_ok=True)
        drv.save_screenshot(str(ARTIFACTS / f"timeout-{int(time.time())}.png"))
        raise AssertionError(f"timed out waiting for {what}") from None


def _open(drv, url: str, view: str) -> None:
    """Go to an explorer page and wait until it is drawn (main[data-view] names it)."""
    drv.get(url)
    _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, f'main[data-view="{view}"]'), what=f"the page {view}")


def _text(drv, css: str) -> str:
    """The element's visible text, read in one script call (an element re-drawn between a find and a
    read would otherwise be stale)."""
    return drv.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css)


def _shot(drv, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    drv.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _fetch(url: str) -> tuple[int, bytes, str]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read(), r.headers.get("Content-Type", "")


def _accept_confirm(drv) -> None:
    deadline = time.time() + 15   # a hang guard: the page asks at once, a loaded machine may take a while
    while time.time() < deadline:
        try:
            drv.switch_to.alert.accept()
            return
        except NoAlertPresentException:
            time.sleep(0.1)
    raise AssertionError("no confirmation was asked")


@pytest.fixture
def browser():
    drv = _browser()
    yield drv
    drv.quit()


def test_explorer_upload_browse_and_every_action(server, browser, tmp_path):
    drv, origin, seen = browser, server.url(""), []
    drv.get(server.url("/"))
    _wait(drv, lambda d: "PIPACS" in _text(d, "#connect"), what="the connection line")
    assert str(server.dicom_port) in _text(drv, "#connect")
    # sign-in off (a laptop): every client is the teacher, with every action and no sign-in form
    _wait(drv, lambda d: d.find_elements(By.ID, "upload-window-open"), what="the teacher's switches")
    assert "sign-in is off" in _text(drv, "#signed-in-as") and "null" not in _text(drv, "#account")
    assert not drv.find_elements(By.ID, "sign-out") and "Upload" in _text(drv, "#nav")

    # upload three files by the file input, and a file that is not DICOM
    files = []
    for k in (1, 2, 3):
        p = tmp_path / f"im{k}.dcm"
        p.write_bytes(ct_instance(rows=64, cols=64, index=k, patient_name="Browser^Case", patient_id="WEB1"))
        files.append(str(p))
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    _open(drv, server.url("/#/upload"), "upload:")
    drv.find_element(By.ID, "upload-files").send_keys("\n".join(files + [str(notes)]))
    _wait(drv, lambda d: "Done" in _text(d, "#upload-report"), what="the upload to finish")
    report = drv.find_element(By.ID, "upload-report").text
    assert "4/4 files · 3 stored" in report and "1 refused" in report
    assert "notes.txt" in _text(drv, "#upload-errors") and "not a DICOM file" in _text(drv, "#upload-errors")
    _shot(drv, "explorer-upload")
    assert len(server.get_json("/instances")) == 3

    # see them listed, open the study
    drv.get(server.url("/#/"))
    _wait(drv, lambda d: "Browser Case" in _text(d, "#study-list"), what="the study in the list")
    drv.find_element(By.LINK_TEXT, "Browser Case").click()
    study = server.get_json("/studies")[0]
    _wait(drv, lambda d: "3 instances" in _text(d, "#study-counts"), what="the study page")
    _shot(drv, "explorer-study")

    # labels and the case note
    drv.find_element(By.ID, "label-input").send_keys("Session3-chest")
    drv.find_element(By.ID, "label-add").click()
    _wait(drv, lambda d: "Session3-chest" in _text(d, "#labels"), what="the label")
    assert server.get_json(f"/studies/{study}/labels") == ["Session3-chest"]
    drv.find_element(By.ID, "note").send_keys("Round opacity: what is it?")
    drv.find_element(By.ID, "note-save").click()
    _wait(drv, lambda d: "Note saved" in _text(d, "#flash"), what="the note")
    assert server.get(f"/studies/{study}/metadata/Note").body.decode() == "Round opacity: what is it?"

    # downloads: ZIP and DICOMDIR
    for link_id, first_name in (("download-zip", "WEB1 Browser Case/"), ("download-media", "DICOMDIR")):
        link = drv.find_element(By.ID, link_id)
        assert link.get_attribute("download") == ""     # the server's Content-Disposition name is the one saved
        href = link.get_attribute("href")
        status, body, ctype = _fetch(href)
        names = zipfile.ZipFile(io.BytesIO(body)).namelist()
        assert status == 200 and ctype == "application/zip" and names[0].startswith(first_name)
        assert len([n for n in names if n != "DICOMDIR"]) == 3

    # protect the patient
    patient = server.get_json("/patients")[0]
    _open(drv, server.url(f"/#/patient/{patient}"), f"patient:{patient}")
    drv.find_element(By.ID, "protect").click()
    _wait(drv, lambda d: server.get(f"/patients/{patient}/protected").body == b"1", what="protection")

    # anonymize the study
    _open(drv, server.url(f"/#/study/{study}"), f"study:{study}")
    drv.find_element(By.ID, "anonymize").click()
    _wait(drv, lambda d: d.find_elements(By.ID, "anonymize-go"), what="the anonymize options")
    drv.find_element(By.ID, "anonymize-go").click()     # no default stored: the Basic Profile alone
    _wait(drv, lambda d: "Anonymized copy created" in _text(d, "#main"), what="the anonymized study")
    assert len(server.get_json("/studies")) == 2
    anon = next(s for s in server.get_json("/studies?expand") if s["ID"] != study)
    assert anon["PatientMainDicomTags"]["PatientName"].startswith("Anonymized")
    assert anon["ID"] in drv.current_url

    # send to a modality: a real DCMTK storescp, added and echoed through the page
    port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "CLASSROOM", "-od", str(received), "+B", str(port)])
    try:
        wait_listening(port, scp)
        _open(drv, server.url("/#/modalities"), "modalities:")
        for field, value in (("mod-name", "classroom"), ("mod-aet", "CLASSROOM"), ("mod-host", "127.0.0.1")):
            drv.find_element(By.ID, field).send_keys(value)
        drv.find_element(By.ID, "mod-port").clear()
        drv.find_element(By.ID, "mod-port").send_keys(str(port))
        drv.find_element(By.ID, "mod-add").click()
        _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-echo=classroom]"), what="the new modality")
        assert server.get_json("/modalities") == ["classroom"]
        drv.find_element(By.CSS_SELECTOR, "[data-echo=classroom]").click()
        _wait(drv, lambda d: "answered the C-ECHO" in _text(d, "#modality-result"), what="the echo")
        _open(drv, server.url(f"/#/study/{study}"), f"study:{study}")
        drv.find_element(By.ID, "send").click()
        _wait(drv, lambda d: d.find_elements(By.ID, "send-go"), what="the send box")
        drv.find_element(By.ID, "send-go").click()
        _wait(drv, lambda d: "Done: 3 instance(s) sent to classroom" in _text(d, "#send-result"), what="the send")
        assert len(list(received.iterdir())) == 3
    finally:
        scp.terminate()
        scp.wait()

    # series: preview, instance: .dcm and JSON tags
    series = server.get_json(f"/studies/{study}/series")[0]["ID"]
    _open(drv, server.url(f"/#/series/{series}"), f"series:{series}")
    assert drv.find_element(By.ID, "open-viewer").get_attribute("href").endswith(f"/viewer/{series}")
    drv.find_element(By.ID, "preview").click()
    _wait(drv, lambda d: d.find_elements(By.ID, "instance-preview"), what="the instance page")
    _wait(drv, lambda d: d.execute_script("return document.getElementById('instance-preview').naturalWidth") == 64,
          what="the preview image")
    status, body, ctype = _fetch(drv.find_element(By.ID, "download-dcm").get_attribute("href"))
    assert status == 200 and ctype == "application/dicom" and body[128:132] == b"DICM"
    drv.find_element(By.ID, "show-tags").click()
    _wait(drv, lambda d: "Browser^Case" in _text(d, "#tags-json"), what="the JSON tags")

    # delete the series, with confirmation; its old link then says so
    _open(drv, server.url(f"/#/series/{series}"), f"series:{series}")
    drv.find_element(By.ID, "delete").click()
    _accept_confirm(drv)
    _wait(drv, lambda d: server.get(f"/series/{series}").status == 404, what="the deletion")
    _wait(drv, lambda d: "made=deleted" in d.current_url, what="the page to leave the deleted series")
    drv.get(server.url(f"/#/series/{series}"))
    _wait(drv, lambda d: "does not exist any more" in _text(d, "#main"), what="not found")
    assert drv.find_element(By.LINK_TEXT, "Back to the list of studies")
    _assert_same_origin(drv, origin, seen)


def test_orthanc_bookmark_and_connection_page_with_qr_codes(make_server, browser, tmp_path):
    status = tmp_path / "network.json"
    status.write_text(json.dumps({"Mode": "hotspot", "Reason": "could not join Wi-Fi \"School\" within 60 s",
                                  "HotspotSsid": "pipacs", "HotspotPassphrase": "radiology", "Problems": [],
                                  "Addresses": ["10.42.0.1"]}))
    server = make_server(env={"PIPACS_NETWORK_STATUS_FILE": str(status)})
    drv = browser
    drv.get(server.url("/app/explorer.html"))
    assert drv.current_url.rstrip("/") == server.url("").rstrip("/") or drv.current_url.startswith(server.url("/#"))
    _open(drv, server.url("/#/about"), "about:")
    details = _text(drv, "#connect-details")
    assert "PIPACS" in details and f":{server.http_port}/wado" in details and "/dicom-web" in details
    assert "hotspot" in _text(drv, "#network") and "School" in _text(drv, "#network")
    _wait(drv, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#qr-codes img')].filter(i => i.naturalWidth > 0).length") == 2,
        what="two QR codes drawn")
    assert 'Join the Wi-Fi "pipacs" (password radiology)' in _text(drv, "#qr-codes")
    _shot(drv, "connect-page")


def test_a_usb_import_in_progress_shows_in_the_header(make_server, browser, tmp_path):
    status = tmp_path / "import.json"
    status.write_text(json.dumps({"State": "running", "Source": "/run/pipacs-import.X", "Done": 120, "Total": 500,
                                  "Stored": 118, "AlreadyStored": 0, "Skipped": 2, "Rejected": 0, "Missing": 0,
                                  "Time": time.strftime("%Y-%m-%d %H:%M:%S"), "Summary": []}))
    server = make_server(env={"PIPACS_IMPORT_STATUS_FILE": str(status)})
    drv = browser
    _open(drv, server.url("/#/"), "studies:")
    _wait(drv, lambda d: "120/500 files (24%)" in _text(d, "#import-banner"), what="the import banner")
    done = json.loads(status.read_text()) | {"State": "done", "Done": 500, "Stored": 498}
    tmp = tmp_path / "import.json.tmp"   # replaced whole, as `pipacs import --status-file` does
    tmp.write_text(json.dumps(done))
    os.replace(tmp, status)
    _wait(drv, lambda d: "done: 498 stored" in _text(d, "#import-banner"), timeout=10, what="the import summary")


def _canvas_digest(drv) -> int:
    return drv.execute_script("""
        const c = document.getElementById('canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let h = 0; for (let i = 0; i < d.length; i += 97) h = (h * 31 + d[i]) | 0; return h;""")


def _state(drv) -> dict:
    return drv.execute_script("const s = window.viewerState; return {index: s.index, count: s.frames.length, "
                              "loaded: s.loaded, wc: s.wc, ww: s.ww, zoom: s.zoom, ready: s.ready, tool: s.tool}")


def test_viewer_on_an_ipad_scrolls_50_slices_windows_and_zooms(server, tmp_path):
    for p in write_series(tmp_path / "s", 50, rows=128, cols=128, patient_id="VIEW1"):
        assert server.post("/instances", p.read_bytes()).status == 200
    series = server.get_json("/series")[0]
    drv = _browser(1024, 768, touch=True)
    seen: list[str] = []
    try:
        drv.get(server.url(f"/viewer/{series}"))
        _wait(drv, lambda d: d.execute_script("return !!(window.viewerState && window.viewerState.ready)"),
              what="the viewer")
        _wait(drv, lambda d: _state(d)["loaded"] == 50, timeout=30, what="all 50 slices prefetched")
        s = _state(drv)
        assert s["count"] == 50 and s["index"] == 0 and (s["wc"], s["ww"]) == (40, 400)
        assert "Im 1 / 50" in _text(drv, "#ov-tr") and _text(drv, "#or-right") == "L"
        assert not drv.find_element(By.ID, "case-edit").is_displayed(), "no case tools without a case"
        assert not drv.find_element(By.ID, "case-nav").is_displayed()
        _shot(drv, "viewer-ipad-first")
        before = _canvas_digest(drv)

        # a finger swipe scrolls the stack (8 px per image)
        _touch(drv, "touchStart", [(500, 300)])
        for y in range(300, 381, 10):
            _touch(drv, "touchMove", [(500, y)])
        _touch(drv, "touchEnd", [])
        _wait(drv, lambda d: _state(d)["index"] == 10, what="the swipe to reach image 11")
        assert _canvas_digest(drv) != before and "Im 11 / 50" in _text(drv, "#ov-tr")

        # the slider and the keyboard scroll too
        drv.execute_script("const r = document.getElementById('slider'); r.value = 49; "
                           "r.dispatchEvent(new Event('input'));")
        _wait(drv, lambda d: _state(d)["index"] == 49, what="the slider")
        drv.execute_script("document.getElementById('stage').dispatchEvent(new KeyboardEvent('keydown', "
                           "{key: 'Home', bubbles: true}))")
        _wait(drv, lambda d: _state(d)["index"] == 0, what="the Home key")

        # a preset and a drag change the window
        digest = _canvas_digest(drv)
        drv.find_element(By.CSS_SELECTOR, "[data-preset=lung]").click()
        _wait(drv, lambda d: (_state(d)["wc"], _state(d)["ww"]) == (-600, 1500), what="the lung preset")
        assert _canvas_digest(drv) != digest and "W 1500  L -600" in _text(drv, "#ov-bl")
        drv.find_element(By.CSS_SELECTOR, "[data-tool=window]").click()
        _touch(drv, "touchStart", [(400, 300)])
        for x in range(400, 561, 20):
            _touch(drv, "touchMove", [(x, 300)])
        _touch(drv, "touchEnd", [])
        _wait(drv, lambda d: _state(d)["ww"] > 1500, what="the window drag")
        _shot(drv, "viewer-ipad-lung-window")

        # pinch to zoom, reset
        _touch(drv, "touchStart", [(450, 300), (550, 300)])
        for d in range(0, 101, 20):
            _touch(drv, "touchMove", [(450 - d, 300), (550 + d, 300)])
        _touch(drv, "touchEnd", [])
        _wait(drv, lambda d: _state(d)["zoom"] > 2.5, what="the pinch zoom")
        _shot(drv, "viewer-ipad-zoomed")
        drv.find_element(By.ID, "reset").click()
        _wait(drv, lambda d: _state(d)["zoom"] == 1 and _state(d)["ww"] == 400, what="reset")

        # the address is shareable: it holds the image and window shown
        drv.execute_script("const r = document.getElementById('slider'); r.value = 24; "
                           "r.dispatchEvent(new Event('input'));")
        _wait(drv, lambda d: "#i=24&wc=40&ww=400" in d.current_url, what="the shareable address")
        shared = drv.current_url
        drv.get(server.url("/"))
        drv.get(shared)
        _wait(drv, lambda d: d.execute_script("return !!(window.viewerState && window.viewerState.ready)"),
              what="the shared viewer")
        _wait(drv, lambda d: "Im 25 / 50" in _text(d, "#ov-tr"), what="the shared image")
        _assert_same_origin(drv, server.url(""), seen)

        # a deleted series opened from an old link says so, with a way back
        server.delete(f"/series/{series}")
        drv.get(server.url(f"/viewer/{series}"))
        _wait(drv, lambda d: "does not exist any more" in _text(d, "#error"), what="not found")
        _shot(drv, "viewer-not-found")
    finally:
        drv.quit()


def test_a_series_without_images_shows_a_label_not_a_broken_image(server, browser):
    from .helpers import TEST_FILES
    for name in ("rtplan.dcm", "CT_small.dcm"):   # an RT plan has no pixels to preview
        assert server.post("/instances", (TEST_FILES / name).read_bytes()).status == 200
    plan = next(s for s in server.get_json("/studies?expand") if s["PatientMainDicomTags"]["PatientID"] != "1CT1")
    drv = browser
    _open(drv, server.url(f"/#/study/{plan['ID']}"), f"study:{plan['ID']}")
    _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, ".thumb .noimg"), what="the label for the RT plan")
    assert _text(drv, ".thumb .noimg") == "no image"
    plan_instance = server.get_json(f"/studies/{plan['ID']}/instances")[0]["ID"]
    _open(drv, server.url(f"/#/instance/{plan_instance}"), f"instance:{plan_instance}")
    _wait(drv, lambda d: "No image" in _text(d, "#instance-noimg"), what="why the RT plan has no image")
    assert "pixel data" in _text(drv, "#instance-noimg")
    series = server.get_json(f"/studies/{plan['ID']}/series")[0]["ID"]
    drv.get(server.url(f"/viewer/{series}"))
    _wait(drv, lambda d: "cannot be shown" in d.find_element(By.TAG_NAME, "body").text, what="the viewer's reason")
    assert "no pixel data" in drv.find_element(By.TAG_NAME, "body").text
    ct = next(s for s in server.get_json("/studies?expand") if s["PatientMainDicomTags"]["PatientID"] == "1CT1")
    _open(drv, server.url(f"/#/study/{ct['ID']}"), f"study:{ct['ID']}")
    _wait(drv, lambda d: d.execute_script(
        "const i = document.querySelector('.thumb img'); return i && i.complete && i.naturalWidth > 0"),
        what="the CT preview")
    assert not drv.find_elements(By.CSS_SELECTOR, ".thumb .noimg")


def test_viewer_plays_a_multiframe_colour_cine(server, browser):
    from .helpers import TEST_FILES
    data = (TEST_FILES / "examples_ybr_color.dcm").read_bytes()   # ultrasound: 30 colour frames, JPEG
    assert server.post("/instances", data).status == 200
    series = server.get_json("/series")[0]
    drv = browser
    drv.get(server.url(f"/viewer/{series}"))
    _wait(drv, lambda d: d.execute_script("return !!(window.viewerState && window.viewerState.ready)"),
          what="the viewer")
    assert _state(drv)["count"] == 30
    _wait(drv, lambda d: "Frame 1 / 30" in _text(d, "#ov-tr"), what="the first frame")
    _shot(drv, "viewer-colour-cine")
    drv.find_element(By.ID, "play").click()
    _wait(drv, lambda d: _state(d)["index"] >= 3, what="the cine to play")
    drv.find_element(By.ID, "play").click()
    idx = _state(drv)["index"]
    time.sleep(0.5)
    assert _state(drv)["index"] == idx


@pytest.fixture(autouse=True, scope="module")
def _fresh_artifacts():
    # this module's own screenshots: tests/artifacts/cases/ is test_case_pages.py's, which empties it itself
    for p in ARTIFACTS.glob("*"):
        if p.is_file():
            p.unlink()
    yield


# ---------------------------------------------------------------------- classroom access (issue 16)

PROBE = "<img src=x onerror=window.__xss=1>"     # user text that must show as text, never as HTML


def _ipad():
    return _browser(1024, 768, touch=True)


def _no_probe_ran(drv) -> None:
    assert drv.execute_script("return window.__xss === undefined && "
                              "document.querySelectorAll('img[src=\"x\"], #probe').length === 0")


@pytest.fixture
def classroom_pages(make_server):
    """An appliance locked down for a class (students open, a registered teacher) with a released
    de-identified study whose description is an HTML probe, a de-identified one not released, and
    a released one that is not de-identified."""
    from .test_access import BASIC, CLASSROOM, deidentified
    srv = make_server(CLASSROOM)
    ids = {}
    for name, data in (
            ("published", deidentified(patient_id="ANON1", patient_name="Case^One", study="pub",
                                       study_description=PROBE)),
            ("unpublished", deidentified(patient_id="ANON2", patient_name="Case^Two", study="unpub")),
            ("labelled", deidentified(patient_id="ANON3", patient_name="Case^Three", study="lab")),
            ("identifiable", ct_instance(rows=16, cols=16, patient_id="REAL1", patient_name="Real^Name",
                                         study="real"))):
        r = srv.post("/instances", data, headers=BASIC)
        assert r.status == 200, r.body
        ids[name] = r.json()["ParentStudy"]
    for name in ("published", "identifiable"):
        assert srv.request("PUT", f"/studies/{ids[name]}/released", "1", headers=BASIC).status == 200
    srv.ids = ids
    srv.basic = BASIC
    return srv


def _nav(drv) -> str:
    return _text(drv, "#nav")


def test_a_student_sees_only_published_studies_and_no_teacher_action(classroom_pages):
    srv, ids = classroom_pages, classroom_pages.ids
    drv, seen = _ipad(), []
    try:
        _open(drv, srv.url("/#/"), "studies:")
        _wait(drv, lambda d: "Case One" in _text(d, "#study-list"), what="the published study")
        listed = _text(drv, "#study-list")
        assert "Case Two" not in listed and "Real Name" not in listed and "Case Three" not in listed
        assert PROBE in listed, "the study's description shows as text"
        _no_probe_ran(drv)
        assert _text(drv, "#signed-in-as") == "Student view" and "null" not in _text(drv, "#account")
        assert drv.find_element(By.ID, "sign-in-link")
        for teacher_link in ("Upload", "Labels", "Modalities", "Audit", "Sessions"):
            assert teacher_link not in _nav(drv)
        assert "Join a session" in _nav(drv)     # a teaching session's join page, for a student
        assert not drv.find_elements(By.CSS_SELECTOR, "#upload-window button, #sign-out, #change-password")
        _shot(drv, "classroom-student-home")

        # the published study: viewing and downloads, nothing that changes anything
        _open(drv, srv.url(f"/#/study/{ids['published']}"), f"study:{ids['published']}")
        assert "1 series, 1 instance" in _text(drv, "#study-counts")
        assert drv.find_elements(By.ID, "download-zip")
        for teacher_only in ("delete", "anonymize", "send", "release-toggle", "label-input", "note", "protect"):
            assert not drv.find_elements(By.ID, teacher_only), teacher_only
        series = srv.get_json(f"/studies/{ids['published']}/series")[0]["ID"]
        _open(drv, srv.url(f"/#/series/{series}"), f"series:{series}")
        assert drv.find_elements(By.ID, "open-viewer") and not drv.find_elements(By.ID, "delete")
        _shot(drv, "classroom-student-series")

        # what is not published does not exist for a student; teacher pages say whose they are
        _open(drv, srv.url(f"/#/study/{ids['unpublished']}"), f"study:{ids['unpublished']}")
        assert "does not exist any more" in _text(drv, "#main")
        _open(drv, srv.url("/#/upload"), "upload:")
        assert "This page is for the teacher" in _text(drv, "#teacher-only")
        assert not drv.find_elements(By.ID, "upload-files")
        for address in ("/pipacs/audit", "/changes", "/modalities"):
            drv.get(srv.url(address))
            body = drv.find_element(By.TAG_NAME, "body").text
            assert "This page is for the teacher. Sign in on the home page." in body, (address, body[:200])
            assert "{" not in body, "no JSON"
            assert drv.find_element(By.LINK_TEXT, "Go to the home page").get_attribute("href") == srv.url("/")
        _shot(drv, "classroom-student-refused")
        _assert_same_origin(drv, srv.url(""), seen)
    finally:
        drv.quit()


def test_the_teacher_signs_in_releases_publishes_opens_uploads_deletes_and_signs_out(classroom_pages):
    from .test_access import TEACHER_PW, TEACHER_USER
    srv, ids, basic = classroom_pages, classroom_pages.ids, classroom_pages.basic
    teacher, student = _ipad(), _ipad()
    try:
        _open(student, srv.url("/#/"), "studies:")
        _wait(student, lambda d: "Case One" in _text(d, "#study-list"), what="the student's list")

        # a wrong password says so; a probe as the user name is kept as text in the audit
        _open(teacher, srv.url("/#/"), "studies:")
        teacher.find_element(By.ID, "sign-in-link").click()
        _wait(teacher, lambda d: d.find_elements(By.ID, "signin-password"), what="the sign-in form")
        user = teacher.find_element(By.ID, "signin-user")
        user.clear()
        user.send_keys('<b id="probe">x</b>')
        teacher.find_element(By.ID, "signin-password").send_keys("not the password")
        teacher.find_element(By.ID, "signin-go").click()
        _wait(teacher, lambda d: "Wrong user name or password" in _text(d, "#signin-message"), what="the refusal")
        assert "Student view" in _text(teacher, "#signed-in-as")
        _shot(teacher, "classroom-wrong-password")
        user.clear()
        user.send_keys(TEACHER_USER)
        teacher.find_element(By.ID, "signin-password").send_keys(TEACHER_PW)
        teacher.find_element(By.ID, "signin-go").click()
        _wait(teacher, lambda d: _text(d, "#signed-in-as") == f"Signed in as {TEACHER_USER}", what="signed in")
        _wait(teacher, lambda d: "Case Two" in _text(d, "#study-list"), what="the teacher's whole list")
        for link in ("Upload", "Labels", "Modalities", "Audit"):
            assert link in _nav(teacher)
        assert teacher.find_elements(By.ID, "sign-out") and teacher.find_elements(By.ID, "change-password")
        assert "null" not in _text(teacher, "#account")

        # a study's release, and why a released study may still be hidden
        _open(teacher, srv.url(f"/#/study/{ids['identifiable']}"), f"study:{ids['identifiable']}")
        assert "not every image in it is de-identified" in _text(teacher, "#release-status")
        _open(teacher, srv.url(f"/#/study/{ids['unpublished']}"), f"study:{ids['unpublished']}")
        assert "Not released" in _text(teacher, "#release-status")
        teacher.find_element(By.ID, "release-toggle").click()
        _wait(teacher, lambda d: "Students can see this study." in _text(d, "#release-status"), what="the release")
        assert srv.get(f"/studies/{ids['unpublished']}/released", headers=basic).body == b"1"
        _shot(teacher, "classroom-teacher-released")

        # a case note that is HTML stays text
        teacher.find_element(By.ID, "note").send_keys(PROBE)
        teacher.find_element(By.ID, "note-save").click()
        _wait(teacher, lambda d: "Note saved" in _text(d, "#flash"), what="the note")
        _open(teacher, srv.url(f"/#/study/{ids['published']}"), f"study:{ids['published']}")
        _open(teacher, srv.url(f"/#/study/{ids['unpublished']}"), f"study:{ids['unpublished']}")
        assert teacher.execute_script("return document.getElementById('note').value") == PROBE
        _no_probe_ran(teacher)

        # a label published to students shows them its studies
        _open(teacher, srv.url(f"/#/study/{ids['labelled']}"), f"study:{ids['labelled']}")
        teacher.find_element(By.ID, "label-input").send_keys("Session1")
        teacher.find_element(By.ID, "label-add").click()
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-publish=Session1]"), what="the label")
        teacher.find_element(By.CSS_SELECTOR, "[data-publish=Session1]").click()
        _wait(teacher, lambda d: srv.get("/pipacs/published-labels", headers=basic).json() == ["Session1"],
              what="the label published")
        _open(teacher, srv.url("/#/labels"), "labels:")
        assert "Published to students" in _text(teacher, "#label-table")
        _open(teacher, srv.url(f"/#/study/{ids['labelled']}"), f"study:{ids['labelled']}")
        assert "Students can see this study: it carries a label" in _text(teacher, "#release-status")

        student.refresh()
        _wait(student, lambda d: "Case Two" in _text(d, "#study-list") and "Case Three" in _text(d, "#study-list"),
              what="the student to see the released and the labelled study")
        assert "Real Name" not in _text(student, "#study-list")

        # the DICOM upload window, with its countdown
        teacher.find_element(By.ID, "upload-window-open").click()
        _wait(teacher, lambda d: "DICOM uploads open: 1" in _text(d, "#upload-window-left"), what="the window open")
        assert srv.get("/pipacs/upload-window", headers=basic).json()["Open"] is True
        first = _text(teacher, "#upload-window-left")
        _wait(teacher, lambda d: _text(d, "#upload-window-left") not in ("", first), what="the countdown to tick")
        _shot(teacher, "classroom-teacher-upload-window")
        teacher.find_element(By.ID, "upload-window-close").click()
        _wait(teacher, lambda d: d.find_elements(By.ID, "upload-window-open"), what="the window closed")
        assert srv.get("/pipacs/upload-window", headers=basic).json()["Open"] is False

        # delete a study (the cookie session and its token), then read it in the audit
        _open(teacher, srv.url(f"/#/study/{ids['identifiable']}"), f"study:{ids['identifiable']}")
        teacher.find_element(By.ID, "delete").click()
        _accept_confirm(teacher)
        _wait(teacher, lambda d: srv.get(f"/studies/{ids['identifiable']}", headers=basic).status == 404,
              what="the deletion")
        _wait(teacher, lambda d: "made=deleted" in d.current_url, what="the page to leave the deleted study")
        _open(teacher, srv.url("/#/audit"), "audit:")
        audit = _text(teacher, "#audit")
        assert f"DELETE /studies/{ids['identifiable']}" in audit and TEACHER_USER in audit
        assert '<b id="probe">x</b>' in audit, "the refused user name shows as text"
        _no_probe_ran(teacher)
        _shot(teacher, "classroom-teacher-audit")

        # sign out: back to what a student sees
        teacher.find_element(By.ID, "sign-out").click()
        _wait(teacher, lambda d: _text(d, "#signed-in-as") == "Student view", what="signed out")
        assert "Upload" not in _nav(teacher) and not teacher.find_elements(By.ID, "upload-window-open")
        assert srv.get("/pipacs/session").json()["Role"] == "student"
    finally:
        teacher.quit()
        student.quit()


def test_with_a_room_code_students_join_and_the_teacher_shows_the_code(make_server):
    from .test_access import CLASSROOM, TEACHER_PW, TEACHER_USER
    srv = make_server({**CLASSROOM, "StudentAccess": "code"})
    teacher, student = _ipad(), _ipad()
    try:
        _open(teacher, srv.url("/#/sign-in"), "sign-in:")
        user = teacher.find_element(By.ID, "signin-user")
        user.clear()
        user.send_keys(TEACHER_USER)
        teacher.find_element(By.ID, "signin-password").send_keys(TEACHER_PW)
        teacher.find_element(By.ID, "signin-go").click()
        _wait(teacher, lambda d: len(_text(d, "#room-code")) == 6, what="the room code in the teacher's header")
        code = _text(teacher, "#room-code")

        student.get(srv.url("/studies"))     # an address opened before joining: words, not JSON
        assert "needs the room code the teacher shows" in student.find_element(By.TAG_NAME, "body").text
        _open(student, srv.url("/#/"), "studies:")
        assert student.find_elements(By.ID, "room-code-input") and not student.find_elements(By.ID, "study-list")
        assert _text(student, "#signed-in-as") == "Not signed in" and "Connect" not in _nav(student)
        student.find_element(By.ID, "room-code-input").send_keys("x" + code)
        student.find_element(By.ID, "room-join").click()
        _wait(student, lambda d: "not the room code" in _text(d, "#room-code-message"), what="the wrong code")
        student.find_element(By.ID, "room-code-input").clear()
        student.find_element(By.ID, "room-code-input").send_keys(code)
        student.find_element(By.ID, "room-join").click()
        _wait(student, lambda d: _text(d, "#signed-in-as") == "Student view", what="the student let in")
        _wait(student, lambda d: d.find_elements(By.ID, "study-list"), what="the studies page")
        _shot(student, "classroom-room-code-joined")
    finally:
        teacher.quit()
        student.quit()


def _sign_in(drv, user: str, password: str) -> None:
    field = drv.find_element(By.ID, "signin-user")
    field.clear()
    field.send_keys(user)
    drv.find_element(By.ID, "signin-password").send_keys(password)
    drv.find_element(By.ID, "signin-go").click()


def test_the_teacher_changes_the_password_and_too_many_wrong_ones_say_how_long_to_wait(make_server):
    from appliance.accounts import PasswordFile
    srv = make_server({"AuthenticationEnabled": True, "StudentAccess": "open"})
    PasswordFile(srv.workdir / "data").set("first-password")
    drv = _ipad()
    try:
        _open(drv, srv.url("/#/sign-in"), "sign-in:")
        _sign_in(drv, "teacher", "first-password")
        _wait(drv, lambda d: _text(d, "#signed-in-as") == "Signed in as teacher", what="signed in")
        # signed in, the page goes to the study list itself: a navigation before that would be undone
        _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, 'main[data-view="studies:"]'), what="the study list")
        _open(drv, srv.url("/#/password"), "password:")
        for current, new, again, said in (("first-password", "second-password", "second-passwordx", "differ"),
                                          ("not-it", "second-password", "second-password", "not right"),
                                          ("first-password", "second-password", "second-password", "Password changed")):
            for field, value in (("pw-current", current), ("pw-new", new), ("pw-again", again)):
                drv.find_element(By.ID, field).clear()
                drv.find_element(By.ID, field).send_keys(value)
            drv.find_element(By.ID, "pw-go").click()
            _wait(drv, lambda d, said=said: said in _text(d, "#password-message"), what=f"the answer {said!r}")
        # still signed in (a new session), and the new password is the one that works
        assert _text(drv, "#signed-in-as") == "Signed in as teacher"
        _open(drv, srv.url("/#/audit"), "audit:")
        assert "POST /pipacs/password" in _text(drv, "#audit")
        basic = {"Authorization": "Basic " + base64.b64encode(b"teacher:second-password").decode()}
        assert srv.get("/statistics", headers=basic).status == 200
        # the session gone behind the page's back (here: its cookie dropped): the next refused action
        # redraws the page as a student's, with no teacher button left to fail again
        drv.delete_all_cookies()
        drv.find_element(By.ID, "upload-window-open").click()
        _wait(drv, lambda d: _text(d, "#signed-in-as") == "Student view", what="the page redrawn for a student")
        _wait(drv, lambda d: "Audit" not in _text(d, "#nav") and not d.find_elements(By.ID, "upload-window-open"),
              what="the teacher's buttons gone")

        # wrong passwords: the form says so, then how long to wait
        drv.find_element(By.ID, "sign-in-link").click()
        _wait(drv, lambda d: d.find_elements(By.ID, "signin-password"), what="the sign-in form")
        said = ""
        for _ in range(15):
            _sign_in(drv, "teacher", "wrong-password")
            _wait(drv, lambda d: _text(d, "#signin-message") and d.find_element(By.ID, "signin-go").is_enabled(),
                  what="the answer to a wrong password")
            said = _text(drv, "#signin-message")
            if "too many attempts" in said:
                break
            assert "Wrong user name or password" in said
        assert "too many attempts: wait" in said, said
        _shot(drv, "classroom-too-many-attempts")
    finally:
        drv.quit()
