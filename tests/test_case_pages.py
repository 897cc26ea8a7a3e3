"""Teaching-case pages in a real headless Chromium, one browser per person: the teacher makes a case
from a study, writes it, marks a key image and annotates it with touch events in the viewer, saves
and publishes it; a student searches for it, reads it, reveals the answer, and never sees a draft.
User text that is HTML shows as text. Screenshots go to tests/artifacts/cases/.
"""

from __future__ import annotations

import io
import json
import math
import time
import zipfile
from pathlib import Path

import pydicom
import pytest

from .helpers import drag, tap
from .synth import ct_instance
from .test_pages import (
    ARTIFACTS,
    PROBE,
    By,
    NoAlertPresentException,
    _assert_same_origin,
    _ipad,
    _no_probe_ran,
    _open,
    _sign_in,
    _text,
    _wait,
)

Select = pytest.importorskip("selenium.webdriver.support.ui").Select
Keys = pytest.importorskip("selenium.webdriver.common.keys").Keys

pytestmark = pytest.mark.xdist_group("chromium")   # one Chromium at a time, as test_pages.py

SHOTS = ARTIFACTS / "cases"
SCRIPT = "Fell from a ladder. <script>window.__xss = 2</script> Short of breath."
FINDINGS = "Left apical pneumothorax: a thin pleural line with no lung markings beyond it."
SLICES = 6


@pytest.fixture
def case_server(make_server):
    """Sign-in on, students open, one de-identified CT series (64x64, Pixel Spacing 0.9765625 mm)."""
    return _classroom(make_server)


def _classroom(make_server, name: str = "srv", **config):
    from .test_access import BASIC, CLASSROOM
    srv = make_server(CLASSROOM | config, name=name)
    for k in range(1, SLICES + 1):
        ds = pydicom.dcmread(io.BytesIO(ct_instance(patient_id="ANONC", patient_name="Case^Chest", study="cst",
                                                    study_description="CHEST TRAUMA", index=k, rows=64, cols=64)))
        ds.PatientIdentityRemoved = "YES"   # students see only de-identified studies
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        r = srv.post("/instances", buf.getvalue(), headers=BASIC)
        assert r.status == 200, r.body
    srv.basic = BASIC
    srv.study = srv.get("/studies", headers=BASIC).json()[0]
    srv.series = srv.get("/series", headers=BASIC).json()[0]
    return srv


def _api(srv, method: str, path: str, body=None):
    headers = dict(srv.basic)
    if body is not None:
        headers["Content-Type"] = "application/json"
    r = srv.request(method, path, None if body is None else json.dumps(body), headers=headers)
    assert r.status == 200, (method, path, r.status, r.body[:300])
    return r.json()


def _teacher(srv):
    from .test_access import TEACHER_PW, TEACHER_USER
    drv = _ipad()
    _open(drv, srv.url("/#/sign-in"), "sign-in:")
    _sign_in(drv, TEACHER_USER, TEACHER_PW)
    _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, 'main[data-view="studies:"]') and
          "Signed in as" in _text(d, "#signed-in-as"), what="the teacher signed in")
    return drv


def _type(drv, css: str, text: str) -> None:
    e = drv.find_element(By.CSS_SELECTOR, css)
    e.clear()
    e.send_keys(text)


def _set_value(drv, css: str, value: str) -> None:
    """A long value at once (send_keys of 100 000 characters would take minutes), as typing tells the page."""
    drv.execute_script("const e = document.querySelector(arguments[0]); e.value = arguments[1]; "
                       "e.dispatchEvent(new Event('input', {bubbles: true}));", css, value)


def _viewer_ready(drv) -> None:
    _wait(drv, lambda d: d.execute_script("return !!(window.viewerState && window.viewerState.ready && "
                                          "window.viewerState.map)"), what="the viewer")


def _vs(drv, expr: str):
    return drv.execute_script(f"const s = window.viewerState; return {expr};")


def _image_point(drv, x: float, y: float) -> tuple[float, float]:
    """Where on the screen (CSS pixels) the image pixel (x, y) is drawn."""
    return tuple(drv.execute_script("""
        const s = window.viewerState, m = s.map, r = document.getElementById('canvas').getBoundingClientRect();
        const dpr = window.devicePixelRatio || 1;
        return [r.left + (m.ox + arguments[0] * m.scale) / dpr, r.top + (m.oy + arguments[1] * m.scale) / dpr];""", x, y))


def _saved_after(drv, before: int) -> None:
    """Saved (plainly, or merged with changes made elsewhere: "Saved: the case had changed ...")."""
    _wait(drv, lambda d: _vs(d, "s.saved") > before and _text(d, "#case-status").startswith("Saved"), what="the case saved")


def _label(drv, text: str) -> None:
    """Type a text label's words in the viewer's own box (no window.prompt) and tap OK."""
    _wait(drv, lambda d: d.find_element(By.ID, "label-form").is_displayed(), what="the label box")
    assert drv.execute_script("return document.activeElement.id") == "label-text", "the box has the keyboard"
    box = drv.find_element(By.ID, "label-text")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text)
    drv.find_element(By.ID, "label-ok").click()
    _wait(drv, lambda d: not d.find_element(By.ID, "label-form").is_displayed(), what="the label box closed")


def _dialog(drv, text: str | None = None, accept: bool = True) -> str:
    """Answer the page's prompt or confirm, and say what it asked; the deadline is a hang guard."""
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            alert = drv.switch_to.alert
        except NoAlertPresentException:
            time.sleep(0.1)
            continue
        asked = alert.text
        if text is not None:
            alert.send_keys(text)
        if accept:
            alert.accept()
        else:
            alert.dismiss()
        return asked
    raise AssertionError("no question was asked")


def test_the_teacher_makes_annotates_and_publishes_a_case_and_a_student_finds_reads_and_reveals_it(case_server, shots):
    srv = case_server
    teacher, student = _teacher(srv), _ipad()
    seen_t: list[str] = []
    seen_s: list[str] = []
    try:
        # a case from a study: its row in the list offers "Make a case"
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, f'.make-case[data-study="{srv.study}"]'),
              what="Make a case on the study's row")
        teacher.find_element(By.CSS_SELECTOR, f'.make-case[data-study="{srv.study}"]').click()
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, 'main[data-view^="case:"]') and
              d.find_elements(By.ID, "case-Title"), what="the new case's editing view")
        case_id = teacher.execute_script("return document.querySelector('main').dataset.view.slice(5)")
        doc = _api(srv, "GET", f"/cases/{case_id}")
        assert doc["Studies"] == [srv.study] and doc["State"] == "draft"
        assert teacher.find_element(By.ID, "case-Title").get_attribute("value") == "CHEST TRAUMA"
        assert "Draft" in _text(teacher, "#case-state")

        # the board refuses an over-long field: the message names it and the field is marked
        _set_value(teacher, "#case-History", "x" * 100_001)
        teacher.find_element(By.ID, "case-save").click()
        _wait(teacher, lambda d: "Not saved" in _text(d, "#case-message"), what="the refusal")
        assert "History" in _text(teacher, "#case-message") and "Traceback" not in _text(teacher, "#case-message")
        assert teacher.find_element(By.ID, "case-History").get_attribute("aria-invalid") == "true"
        assert _api(srv, "GET", f"/cases/{case_id}")["History"] == "", "nothing of a refused save is stored"

        # the case written: HTML in the title and a script in the history are only text
        _type(teacher, "#case-Title", PROBE)
        _set_value(teacher, "#case-History", SCRIPT)
        _type(teacher, "#case-Question", "What is the finding on the chest image?")
        _type(teacher, "#case-Findings", FINDINGS)
        _type(teacher, "#case-Diagnosis", "Traumatic pneumothorax")
        _type(teacher, "#case-Keywords", "trauma, chest")
        Select(teacher.find_element(By.ID, "case-BodyRegion")).select_by_visible_text("Chest")
        Select(teacher.find_element(By.ID, "case-Category")).select_by_visible_text("Chest")
        Select(teacher.find_element(By.ID, "case-Difficulty")).select_by_visible_text("beginner")
        teacher.find_element(By.ID, "case-save").click()
        _wait(teacher, lambda d: "Saved at" in _text(d, "#case-message"), what="the case saved")
        doc = _api(srv, "GET", f"/cases/{case_id}")
        assert (doc["Title"], doc["History"], doc["Findings"]) == (PROBE, SCRIPT, FINDINGS)
        assert (doc["BodyRegion"], doc["Category"], doc["Difficulty"]) == ("Chest", "Chest", "beginner")
        assert doc["Keywords"] == ["trauma", "chest"]
        assert teacher.find_element(By.ID, "case-History").get_attribute("aria-invalid") is None
        _no_probe_ran(teacher)
        shots(teacher, "teacher-editing")

        # the full stack in the viewer: scroll to image 4, mark it a key image
        link = teacher.find_element(By.CSS_SELECTOR, f'#case-stacks a[data-series="{srv.series}"]')
        assert f"case={case_id}" in link.get_attribute("href")
        link.click()
        _viewer_ready(teacher)
        assert teacher.find_element(By.ID, "case-edit").is_displayed()
        teacher.execute_script("const r = document.getElementById('slider'); r.value = 3; "
                               "r.dispatchEvent(new Event('input'));")
        _wait(teacher, lambda d: _vs(d, "s.index") == 3, what="image 4")
        key_instance = _vs(teacher, "s.frames[3].id")
        saved = _vs(teacher, "s.saved")
        teacher.find_element(By.ID, "key-image").click()
        _saved_after(teacher, saved)
        keys = _api(srv, "GET", f"/cases/{case_id}")["KeyImages"]
        assert [(k["Instance"], k["Frame"]) for k in keys] == [(key_instance, 1)]
        assert keys[0]["Window"] == {"Center": 40, "Width": 400} and keys[0]["Annotations"] == []
        assert teacher.find_element(By.ID, "key-image").get_attribute("aria-pressed") == "true"

        # an arrow and a length drawn with a finger, in image pixels
        teacher.find_element(By.CSS_SELECTOR, "[data-tool=arrow]").click()
        saved = _vs(teacher, "s.saved")
        drag(teacher, _image_point(teacher, 10, 12), _image_point(teacher, 30, 28))
        _saved_after(teacher, saved)
        teacher.find_element(By.CSS_SELECTOR, "[data-tool=length]").click()
        saved = _vs(teacher, "s.saved")
        drag(teacher, _image_point(teacher, 12, 50), _image_point(teacher, 52, 50))
        _saved_after(teacher, saved)
        # a caption written on the case page meanwhile (here: the API) survives the viewer's next save
        stored = _api(srv, "GET", f"/cases/{case_id}")["KeyImages"]
        _api(srv, "PUT", f"/cases/{case_id}", {"KeyImages": [stored[0] | {"Caption": "from the case page"}]})
        # an ellipse drawn, tapped (selected) and deleted
        teacher.find_element(By.CSS_SELECTOR, "[data-tool=ellipse]").click()
        saved = _vs(teacher, "s.saved")
        drag(teacher, _image_point(teacher, 36, 4), _image_point(teacher, 60, 20))
        _saved_after(teacher, saved)
        assert _api(srv, "GET", f"/cases/{case_id}")["KeyImages"][0]["Caption"] == "from the case page"
        assert len(_api(srv, "GET", f"/cases/{case_id}")["KeyImages"][0]["Annotations"]) == 3
        tap(teacher, _image_point(teacher, 10, 12))       # the arrow's tail: selects the arrow
        _wait(teacher, lambda d: _vs(d, "s.selected") == 0, what="the arrow selected by a tap")
        tap(teacher, _image_point(teacher, 48, 12))       # inside the ellipse
        _wait(teacher, lambda d: _vs(d, "s.selected") == 2, what="the ellipse selected by a tap")
        saved = _vs(teacher, "s.saved")
        drag(teacher, _image_point(teacher, 48, 12), _image_point(teacher, 48, 18))   # a finger on it moves it
        _saved_after(teacher, saved)
        moved = _api(srv, "GET", f"/cases/{case_id}")["KeyImages"][0]["Annotations"][2]["Points"]
        assert abs(moved[0][1] - 10) < 1 and abs(moved[1][1] - 26) < 1 and abs(moved[0][0] - 36) < 1, moved
        saved = _vs(teacher, "s.saved")
        teacher.find_element(By.ID, "annot-delete").click()
        _saved_after(teacher, saved)
        # a text label: a tap with the text tool asks for its words in the page's own box
        teacher.find_element(By.CSS_SELECTOR, "[data-tool=text]").click()
        saved = _vs(teacher, "s.saved")
        tap(teacher, _image_point(teacher, 34, 30))
        shots(teacher, "viewer-label-box")
        _label(teacher, "pleural line <b>")
        _saved_after(teacher, saved)
        anns = _api(srv, "GET", f"/cases/{case_id}")["KeyImages"][0]["Annotations"]
        assert [a["Type"] for a in anns] == ["arrow", "length", "text"]
        (x0, y0), (x1, y1) = anns[0]["Points"]
        assert abs(x0 - 10) < 1 and abs(y0 - 12) < 1 and abs(x1 - 30) < 1 and abs(y1 - 28) < 1, anns[0]
        (lx0, ly0), (lx1, ly1) = anns[1]["Points"]
        assert abs(lx0 - 12) < 1 and abs(lx1 - 52) < 1 and abs(ly0 - 50) < 1, anns[1]
        assert anns[1]["LengthMm"] == pytest.approx(math.hypot(lx1 - lx0, ly1 - ly0) * 0.9765625, abs=0.05)
        assert anns[2]["Text"] == "pleural line <b>" and abs(anns[2]["Points"][0][0] - 34) < 1
        _wait(teacher, lambda d: " mm" in d.execute_script("return Annot.lengthLabel(window.viewerState.case"
                                                          ".KeyImages[0].Annotations[1], null)"),
              what="the length in mm")
        assert _vs(teacher, "s.annotationsDrawn") == 3 and "Key image 1 of 1" in _text(teacher, "#ov-br")
        shots(teacher, "viewer-key-image-annotated")
        _assert_same_origin(teacher, srv.url(""), seen_t)

        # publish from the case page
        teacher.find_element(By.ID, "case-link").click()
        _wait(teacher, lambda d: d.find_elements(By.ID, "case-publish"), what="the case page")
        assert "1 annotation" not in _text(teacher, "#case-keys") and "3 annotations" in _text(teacher, "#case-keys")
        # a caption typed here while another tab (the API here) adds a key image: the save keeps both
        first = srv.get(f"/series/{srv.series}", headers=srv.basic).json()["Instances"]
        other = next(i for i in first if i != key_instance)
        stored = _api(srv, "GET", f"/cases/{case_id}")["KeyImages"]
        _api(srv, "PUT", f"/cases/{case_id}", {"KeyImages": stored + [{"Instance": other, "Frame": 1}]})
        _type(teacher, '.key-caption[data-n="0"]', "Left apex")
        teacher.find_element(By.ID, "case-save").click()
        _wait(teacher, lambda d: "Saved at" in _text(d, "#case-message"), what="the caption saved")
        keys = _api(srv, "GET", f"/cases/{case_id}")["KeyImages"]
        assert [(k["Instance"], k["Caption"], len(k["Annotations"])) for k in keys] == [
            (key_instance, "Left apex", 3), (other, "", 0)]
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, '.key-remove[data-n="1"]'), what="both key images")
        teacher.find_element(By.CSS_SELECTOR, '.key-remove[data-n="1"]').click()
        teacher.find_element(By.ID, "case-save").click()
        _wait(teacher, lambda d: len(_api(srv, "GET", f"/cases/{case_id}")["KeyImages"]) == 1, what="the key image removed")
        assert _api(srv, "GET", f"/cases/{case_id}")["KeyImages"][0]["Caption"] == "Left apex"
        teacher.execute_script("document.getElementById('case-keys').scrollIntoView()")
        shots(teacher, "teacher-key-images")
        teacher.find_element(By.ID, "case-publish").click()
        _wait(teacher, lambda d: "Published" in _text(d, "#case-state"), what="published")
        assert _api(srv, "GET", f"/cases/{case_id}")["State"] == "published"

        # a draft of the teacher's, with the same word in its findings: never shown to the student
        draft = _api(srv, "POST", "/cases", {"Title": "Secret draft", "Findings": "another pleural effusion",
                                             "Studies": [srv.study]})

        # the student: search for a word of the findings, ranked list, open the case
        _open(student, srv.url("/#/cases"), "cases:")
        assert "Secret draft" not in _text(student, "#case-list") and not student.find_elements(By.ID, "new-case")
        student.find_element(By.ID, "case-q").send_keys("pleural")
        _wait(student, lambda d: d.find_elements(By.CSS_SELECTOR, f'#case-list[data-q="pleural"] a[data-case="{case_id}"]'),
              what="the search answer")
        assert "1–1 of 1 case" in _text(student, "#case-count")
        listed = _text(student, "#case-list")
        assert PROBE in listed and "Secret draft" not in listed and "Draft" not in listed and "null" not in listed
        assert "q=pleural" in student.current_url
        _no_probe_ran(student)
        shots(student, "student-search")
        student.find_element(By.CSS_SELECTOR, f'#case-list a[data-case="{case_id}"]').click()
        _wait(student, lambda d: d.find_elements(By.CSS_SELECTOR, f'main[data-view="case:{case_id}"]'),
              what="the case page")
        main = _text(student, "#main")
        assert _text(student, "main h2") == PROBE and SCRIPT in _text(student, "#case-History")
        assert "What is the finding" in main and "pleural" not in main and "Traumatic" not in main
        whole = student.execute_script("return document.documentElement.textContent")   # hidden parts too
        assert "pleural" not in whole and "Traumatic" not in whole, "the answer is not in the page before Reveal"
        assert not student.find_elements(By.ID, "case-Title") and not student.find_elements(By.ID, "case-publish")
        _wait(student, lambda d: d.execute_script(
            "const b = document.querySelector('#key-images .kthumb'); return b && b.dataset.annotations") == "3",
              what="the key image drawn with its 3 annotations")
        _no_probe_ran(student)
        assert student.execute_script("return window.__xss") is None
        student.find_element(By.ID, "reveal").click()
        _wait(student, lambda d: FINDINGS in _text(d, "#case-answer"), what="the revealed findings")
        assert "Traumatic pneumothorax" in _text(student, "#case-Diagnosis")
        assert "Left apex" in _text(student, "#key-images figcaption")
        alt = student.find_element(By.CSS_SELECTOR, "#key-images img").get_attribute("alt")
        assert alt.startswith("Key image 1: Left apex (arrow; length 39.") and 'label "pleural line <b>"' in alt, alt
        student.execute_script("document.getElementById('case-reveal').scrollIntoView()")
        shots(student, "student-case-revealed")

        # a tap on the key image: the viewer at that image, its annotations drawn, no teacher tool
        student.find_element(By.CSS_SELECTOR, "#key-images a.key-open").click()
        _viewer_ready(student)
        _wait(student, lambda d: _vs(d, "s.annotationsDrawn") == 3, what="the annotations in the student's viewer")
        assert _vs(student, "s.frames[s.index].id") == key_instance
        assert not student.find_element(By.ID, "case-edit").is_displayed(), "no teacher tool for a student"
        assert student.find_element(By.ID, "key-prev").is_displayed()
        shots(student, "student-viewer-key-image")
        _no_probe_ran(student)

        # the draft: not in any list, and its address tells nothing
        assert draft["ID"] not in json.dumps(srv.get("/cases?expand").json())
        assert srv.get(f"/cases/{draft['ID']}").status == 404
        _open(student, srv.url(f"/#/case/{draft['ID']}"), f"case:{draft['ID']}")
        assert "does not exist" in _text(student, "#main") and "Secret" not in _text(student, "#main")
        student.get(srv.url(f"/viewer/{srv.series}?case={draft['ID']}"))
        _wait(student, lambda d: "does not exist" in _text(d, "#error"), what="the viewer refusing the draft")
        _assert_same_origin(student, srv.url(""), seen_s)
    finally:
        teacher.quit()
        student.quit()


def test_the_case_list_filters_pages_and_the_teacher_deletes_a_case(case_server, shots):
    srv = case_server
    ids = []
    for k in range(27):
        doc = _api(srv, "POST", "/cases", {"Title": f"Fracture {k:02d}", "Category": "Musculoskeletal" if k % 2 else "Chest",
                                           "Difficulty": "advanced" if k == 5 else "beginner",
                                           "Studies": [srv.study] if k == 0 else []})
        if k < 26:
            _api(srv, "POST", f"/cases/{doc['ID']}/publish", {})
        ids.append(doc["ID"])
    teacher, student = _teacher(srv), _ipad()
    try:
        _open(student, srv.url("/#/cases"), "cases:")
        _wait(student, lambda d: "1–25 of 26 cases" in _text(d, "#case-count"), what="the first page")
        student.find_element(By.ID, "case-next").click()
        _wait(student, lambda d: "26–26 of 26" in _text(d, "#case-count"), what="the second page")
        assert not student.find_elements(By.ID, "case-next") and student.find_elements(By.ID, "case-prev")
        Select(student.find_element(By.ID, "case-difficulty")).select_by_visible_text("advanced")
        _wait(student, lambda d: "1–1 of 1 case" in _text(d, "#case-count"), what="the difficulty filter")
        assert "Fracture 05" in _text(student, "#case-list")
        Select(student.find_element(By.ID, "case-category")).select_by_visible_text("Chest")
        _wait(student, lambda d: "No case matches" in _text(d, "#case-list"), what="no case")
        assert not student.find_elements(By.ID, "case-state"), "no state filter for a student"

        # the teacher sees the draft, marked so, and deletes it after confirming
        _open(teacher, srv.url("/#/cases?state=draft"), "cases:")
        _wait(teacher, lambda d: "1–1 of 1 case" in _text(d, "#case-count"), what="the teacher's drafts")
        assert "Fracture 26" in _text(teacher, "#case-list") and "Draft" in _text(teacher, "#case-list")
        teacher.find_element(By.CSS_SELECTOR, f'a[data-case="{ids[26]}"]').click()
        _wait(teacher, lambda d: d.find_elements(By.ID, "case-delete"), what="the editing view")
        teacher.find_element(By.ID, "case-delete").click()
        _dialog(teacher, accept=False)
        assert srv.get(f"/cases/{ids[26]}", headers=srv.basic).status == 200, "kept when not confirmed"
        teacher.find_element(By.ID, "case-delete").click()
        _dialog(teacher)
        _wait(teacher, lambda d: "The case was deleted" in _text(d, "#main"), what="the deletion")
        assert srv.get(f"/cases/{ids[26]}", headers=srv.basic).status == 404
        assert srv.get(f"/studies/{srv.study}", headers=srv.basic).status == 200
        shots(teacher, "teacher-case-list")

        # deleting the study a case uses: asked again, naming the case; kept when the teacher says no
        _open(teacher, srv.url(f"/#/study/{srv.study}"), f"study:{srv.study}")
        assert _text(teacher, "#study-cases").count("Fracture") == 1 and "Fracture 00" in _text(teacher, "#study-cases")
        for keep in (True, False):
            teacher.find_element(By.ID, "delete").click()
            _dialog(teacher)                                   # "Delete this study and everything in it?"
            said = _dialog(teacher, accept=not keep)
            assert '"Fracture 00"' in said and "leaves that case" in said, said
            if keep:
                assert srv.get(f"/studies/{srv.study}", headers=srv.basic).status == 200
                assert "made=deleted" not in teacher.current_url
        _wait(teacher, lambda d: srv.get(f"/studies/{srv.study}", headers=srv.basic).status == 404, what="the deletion")
        assert _api(srv, "GET", f"/cases/{ids[0]}")["Studies"] == [], "the case stays, without the study"
    finally:
        teacher.quit()
        student.quit()


def test_a_length_on_an_image_without_pixel_spacing_says_so(case_server, shots):
    srv = case_server
    ds = pydicom.dcmread(io.BytesIO(ct_instance(patient_id="ANONC", patient_name="Case^Chest", study="cst",
                                                series="nospacing", rows=64, cols=64, index=1)))
    del ds.PixelSpacing
    ds.PatientIdentityRemoved = "YES"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = srv.post("/instances", buf.getvalue(), headers=srv.basic)
    assert r.status == 200, r.body
    series, instance = r.json()["ParentSeries"], r.json()["ID"]
    doc = _api(srv, "POST", "/cases", {"Title": "No spacing", "Studies": [srv.study]})
    teacher = _teacher(srv)
    try:
        teacher.get(srv.url(f"/viewer/{series}?case={doc['ID']}"))
        _viewer_ready(teacher)
        teacher.find_element(By.CSS_SELECTOR, "[data-tool=length]").click()
        saved = _vs(teacher, "s.saved")
        drag(teacher, _image_point(teacher, 10, 10), _image_point(teacher, 40, 50))
        _saved_after(teacher, saved)
        (key,) = _api(srv, "GET", f"/cases/{doc['ID']}")["KeyImages"]
        assert key["Instance"] == instance, "drawing on an image makes it a key image"
        (a,) = key["Annotations"]
        assert a["LengthMm"] is None and "Pixel Spacing" in a["LengthNote"], a
        label = teacher.execute_script("return Annot.lengthLabel(window.viewerState.case.KeyImages[0].Annotations[0], null)")
        assert label == "50 px (no pixel spacing)", label
        shots(teacher, "viewer-length-without-pixel-spacing")
    finally:
        teacher.quit()


# ------------------------------------------------------------------ the case as files

FILES_TITLE = "Files " + PROBE
COLLECTION = "Session1-chest"
# what a link gives when followed from the page: as the browser follows it (its cookies, no
# header of the pages' own), the status, the content type and the first bytes
FOLLOW = """const done = arguments[arguments.length - 1];
fetch(arguments[0], {credentials: 'same-origin'}).then(async r => {
  const b = new Uint8Array(await r.arrayBuffer());
  done([r.status, r.headers.get('Content-Type') || '', Array.from(b.slice(0, 132))]);
}).catch(e => done([0, String(e), []]));"""
MAGIC = {"application/zip": lambda b: b[:4] == b"PK\x03\x04", "application/dicom": lambda b: b[128:132] == b"DICM",
         "image/png": lambda b: b[:8] == b"\x89PNG\r\n\x1a\n", "image/jpeg": lambda b: b[:3] == b"\xff\xd8\xff"}


def _files_case(srv) -> dict:
    """A published case of the server's study: one key image (window, caption, an arrow) in a collection."""
    instance = srv.get(f"/series/{srv.series}", headers=srv.basic).json()["Instances"][2]
    doc = _api(srv, "POST", "/cases", {
        "Title": FILES_TITLE, "Studies": [srv.study], "Collections": [COLLECTION], "History": "Chest pain.",
        "KeyImages": [{"Instance": instance, "Frame": 1, "Window": {"Center": 40, "Width": 400}, "Caption": "apex",
                       "Annotations": [{"Type": "arrow", "Points": [[10, 12], [30, 28]], "Text": ""}]}]})
    return _api(srv, "POST", f"/cases/{doc['ID']}/publish", {})


def _follow(drv, css: str, kind: str) -> None:
    """The link's address followed from the page: 200, the content type ``kind``, bytes of that kind."""
    links = drv.find_elements(By.CSS_SELECTOR, css)
    assert len(links) == 1, (css, len(links))
    href = links[0].get_attribute("href")
    drv.set_script_timeout(60)
    status, ctype, head = drv.execute_async_script(FOLLOW, href)
    assert status == 200 and ctype.split(";")[0] == kind, (css, href, status, ctype)
    assert MAGIC[kind](bytes(head)), (css, href, bytes(head)[:8])


# each file link of a case page: its selector and what it gives
CASE_LINKS = [("#case-bundle", "application/zip"), ("#case-kos", "application/dicom"),
              ("#case-gsps", "application/zip"), (f'#case-downloads a.collection-bundle[data-collection="{COLLECTION}"]',
                                                   "application/zip"),
              ('#key-images a.key-png[data-n="0"]', "image/png"), ('#key-images a.key-jpg[data-n="0"]', "image/jpeg")]


def test_the_case_files_for_the_teacher_and_a_student_who_may_download_and_none_for_one_who_may_not(case_server,
                                                                                                   make_server, shots):
    srv = case_server
    doc = _files_case(srv)
    closed = _classroom(make_server, name="closed", StudentDownloads=False)
    closed_doc = _files_case(closed)
    teacher, student, other = _teacher(srv), _ipad(), _ipad()
    try:
        # the teacher's editing view: the files card, the key image's pictures for slides, the store button
        _open(teacher, srv.url(f"/#/case/{doc['ID']}"), f"case:{doc['ID']}")
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, "#case-key-list a.key-jpg"), what="the key image's links")
        for css, kind in CASE_LINKS:
            _follow(teacher, css.replace("#key-images", "#case-key-list"), kind)
        # the key object holds the case's key image (a KOS of the study)
        kos = pydicom.dcmread(io.BytesIO(srv.get(teacher.find_element(By.ID, "case-kos").get_attribute("href")
                                                 .removeprefix(srv.url("")), headers=srv.basic).body))
        assert kos.Modality == "KO"
        _no_probe_ran(teacher)

        # Store key objects in the archive: the study gains a KO series (and the PR of the arrow)
        def modalities():
            return sorted(se["MainDicomTags"]["Modality"]
                          for se in _api(srv, "GET", f"/studies/{srv.study}/series"))
        assert modalities() == ["CT"]
        teacher.find_element(By.ID, "case-store-kos").click()
        _wait(teacher, lambda d: "Stored in the archive" in _text(d, "#case-store-message"), what="the store")
        said = _text(teacher, "#case-store-message")
        assert "1 key object and 1 presentation state" in said and "in new series" in said, said
        assert modalities() == ["CT", "KO", "PR"]
        teacher.execute_script("document.getElementById('case-downloads').scrollIntoView()")
        shots(teacher, "teacher-case-files")

        # the teacher's Labels page: the collection (a case's, carried by no study) with its bundle
        _open(teacher, srv.url("/#/labels"), "labels:")
        row = f'#label-table tr[data-label="{COLLECTION}"]'
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, row), what="the collection's row")
        assert "1 case" in _text(teacher, row)
        _follow(teacher, f"{row} a.collection-bundle", "application/zip")

        # a student while downloads are allowed: the same links, no store button
        _open(student, srv.url(f"/#/case/{doc['ID']}"), f"case:{doc['ID']}")
        _wait(student, lambda d: d.find_elements(By.CSS_SELECTOR, "#key-images a.key-jpg"), what="the key image's links")
        for css, kind in CASE_LINKS:
            _follow(student, css, kind)
        assert not student.find_elements(By.ID, "case-store-kos")
        _no_probe_ran(student)
        shots(student, "student-case-files")
        _open(student, srv.url(f"/#/cases?collection={COLLECTION}"), "cases:")
        _wait(student, lambda d: "1–1 of 1 case" in _text(d, "#case-count"), what="the collection's cases")
        _follow(student, "#collection-bundle a.collection-bundle", "application/zip")

        # a student where the teacher allows no downloads: the case to read, no file to take
        _open(other, closed.url(f"/#/case/{closed_doc['ID']}"), f"case:{closed_doc['ID']}")
        _wait(other, lambda d: d.execute_script(
            "const b = document.querySelector('#key-images .kthumb'); return b && b.dataset.annotations") == "1",
              what="the key image drawn")
        assert "apex" in _text(other, "#key-images figcaption")
        for css, _kind in CASE_LINKS:
            assert not other.find_elements(By.CSS_SELECTOR, css), css
        assert not other.find_elements(By.ID, "case-downloads") and not other.find_elements(By.ID, "case-store-kos")
        other.set_script_timeout(60)
        status, _, _ = other.execute_async_script(FOLLOW, closed.url(f"/cases/{closed_doc['ID']}/bundle"))
        assert status in (401, 403), status   # the links' absence is the board's rule, not only the page's
        _open(other, closed.url(f"/#/cases?collection={COLLECTION}"), "cases:")
        _wait(other, lambda d: "1–1 of 1 case" in _text(d, "#case-count"), what="the collection's cases")
        assert not other.find_elements(By.CSS_SELECTOR, "a.collection-bundle")
    finally:
        teacher.quit()
        student.quit()
        other.quit()


def _with_member(data: bytes, name: str, member: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for info in src.infolist():
            out.writestr(info.filename, member if info.filename == name else src.read(info))
    return buf.getvalue()


def _choose(drv, path: Path) -> None:
    """One file in the upload's picker (the driver adds to a multiple picker's list: emptied first)."""
    picker = drv.find_element(By.ID, "upload-files")
    drv.execute_script("arguments[0].value = ''", picker)
    picker.send_keys(str(path))


def test_a_bundle_uploaded_on_the_upload_page_shows_what_became_of_each_case(case_server, make_server,
                                                                            tmp_path: Path, shots):
    srv = case_server
    doc = _files_case(srv)
    r = srv.get(f"/cases/{doc['ID']}/bundle", headers=srv.basic)
    assert r.status == 200
    good = tmp_path / "case-good.zip"
    good.write_bytes(r.body)
    name = f"cases/{doc['ID']}/case.json"
    bad_doc = json.loads(zipfile.ZipFile(good).read(name)) | {"Difficulty": "impossible"}
    bad = tmp_path / "case-bad.zip"
    bad.write_bytes(_with_member(good.read_bytes(), name, json.dumps(bad_doc).encode()))
    from .test_access import CLASSROOM
    other = make_server(CLASSROOM, name="b")
    teacher = _teacher(other)
    try:
        _open(teacher, other.url("/#/upload"), "upload:")
        # a case the board refuses: said, with the board's reason naming the field, and what to do
        _choose(teacher, bad)
        item = f'#upload-errors .case-import[data-case="{doc["ID"]}"]'
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, f'{item}[data-status="Refused"]') and
              "Done" in _text(d, "#upload-report"), what="the refused case")
        said = _text(teacher, item)
        assert "refused" in said and "Difficulty" in _text(teacher, f"{item} .case-import-problems") and \
            "upload the bundle again" in said, said
        assert "not imported" in _text(teacher, "#upload-report .msg.err")
        assert other.get(f"/cases/{doc['ID']}", headers=srv.basic).status == 404
        shots(teacher, "upload-bundle-refused")
        # the bundle as made: imported, with a link to the case and its title as text
        _choose(teacher, good)
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, f'{item}[data-status="Imported"]') and
              PROBE in _text(d, item), what="the imported case with its title")
        said = _text(teacher, item)
        assert f"case {doc['ID']}: imported" in said and "open it to check it" in said, said
        assert teacher.find_element(By.CSS_SELECTOR, f"{item} a").get_attribute("href").endswith(f"#/case/{doc['ID']}")
        assert "Done" in _text(teacher, "#upload-report .msg.ok")
        _no_probe_ran(teacher)
        assert other.get(f"/cases/{doc['ID']}", headers=srv.basic).json()["Title"] == FILES_TITLE
        shots(teacher, "upload-bundle-imported")
        # the same bundle again: already present, nothing doubled
        _choose(teacher, good)
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, f'{item}[data-status="AlreadyPresent"]'),
              what="the case already present")
        assert "nothing was doubled" in _text(teacher, item)
        teacher.find_element(By.CSS_SELECTOR, f"{item} a").click()
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, f'main[data-view="case:{doc["ID"]}"]'), what="the case")
    finally:
        teacher.quit()
    assert json.loads(other.get("/cases", headers=srv.basic).body) == [doc["ID"]]


# ------------------------------------------------------------------ two teachers, undo, the saved view

def _view_centre(drv) -> list[float]:
    """The image pixel drawn at the middle of the viewer's canvas now."""
    return drv.execute_script("""const s = window.viewerState, m = s.map, c = document.getElementById('canvas');
        return [(c.width / 2 - m.ox) / m.scale, (c.height / 2 - m.oy) / m.scale];""")


def test_two_teachers_edit_the_same_case_at_once_and_both_changes_survive(case_server, shots):
    """One marks and annotates a key image in the viewer while the other writes the history and a
    caption on the case page: each save finds the case changed (409), reads it again, applies its
    own changes onto it and says so; nothing either did is lost."""
    srv = case_server
    doc = _api(srv, "POST", "/cases", {"Title": "Shared case", "Studies": [srv.study]})
    page, viewer = _teacher(srv), _teacher(srv)
    try:
        _open(page, srv.url(f"/#/case/{doc['ID']}"), f"case:{doc['ID']}")
        _wait(page, lambda d: d.find_elements(By.ID, "case-History"), what="the editing view")
        viewer.get(srv.url(f"/viewer/{srv.series}?case={doc['ID']}"))
        _viewer_ready(viewer)
        viewer.execute_script("const r = document.getElementById('slider'); r.value = 2; r.dispatchEvent(new Event('input'));")
        _wait(viewer, lambda d: _vs(d, "s.index") == 2, what="image 3")
        key_instance = _vs(viewer, "s.frames[2].id")
        saved = _vs(viewer, "s.saved")
        viewer.find_element(By.ID, "key-image").click()
        _saved_after(viewer, saved)
        assert _text(viewer, "#case-status") == "Saved", "the viewer's copy was current: a plain save"

        # the case page read the case before the key image: its save is refused, merged, saved again
        _type(page, "#case-History", "Found on the ward, short of breath.")
        page.find_element(By.ID, "case-save").click()
        _wait(page, lambda d: "Saved at" in _text(d, "#case-message"), what="the history saved")
        said = _text(page, "#case-message")
        assert "had changed since this page read it" in said and "kept" in said, said
        stored = _api(srv, "GET", f"/cases/{doc['ID']}")
        assert stored["History"] == "Found on the ward, short of breath."
        assert [(k["Instance"], k["Frame"]) for k in stored["KeyImages"]] == [(key_instance, 1)], "the viewer's key image kept"
        _wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, '.key-caption[data-n="0"]'), what="the key image on the page")

        # now the viewer's copy is stale: its arrow is merged onto the case with the history
        viewer.find_element(By.CSS_SELECTOR, "[data-tool=arrow]").click()
        saved = _vs(viewer, "s.saved")
        drag(viewer, _image_point(viewer, 10, 12), _image_point(viewer, 30, 28))
        _saved_after(viewer, saved)
        assert "had changed elsewhere" in _text(viewer, "#case-status"), _text(viewer, "#case-status")
        stored = _api(srv, "GET", f"/cases/{doc['ID']}")
        assert stored["History"] == "Found on the ward, short of breath."
        assert [a["Type"] for a in stored["KeyImages"][0]["Annotations"]] == ["arrow"]
        shots(viewer, "viewer-saved-merged")

        # and the page's copy is stale again: a caption typed there keeps the viewer's arrow
        saves = page.execute_script("return document.getElementById('case-message').dataset.saves")
        assert saves == "1"
        _type(page, '.key-caption[data-n="0"]', "Left apex")
        page.find_element(By.ID, "case-save").click()
        _wait(page, lambda d: d.execute_script("return document.getElementById('case-message').dataset.saves") == "2",
              what="the caption saved")
        assert page.execute_script("return document.getElementById('case-message').dataset.merged") == "yes"
        assert "had changed" in _text(page, "#case-message")
        stored = _api(srv, "GET", f"/cases/{doc['ID']}")
        (key,) = stored["KeyImages"]
        assert key["Caption"] == "Left apex" and [a["Type"] for a in key["Annotations"]] == ["arrow"], key
        assert stored["History"] == "Found on the ward, short of breath." and stored["Title"] == "Shared case"
        shots(page, "teacher-saved-merged")
    finally:
        page.quit()
        viewer.quit()


def test_the_viewer_undoes_21_annotation_changes_and_saves_the_panned_view_of_a_key_image(case_server, shots):
    srv = case_server
    doc = _api(srv, "POST", "/cases", {"Title": "Undo", "Studies": [srv.study]})
    teacher = _teacher(srv)
    try:
        teacher.get(srv.url(f"/viewer/{srv.series}?case={doc['ID']}"))
        _viewer_ready(teacher)
        assert teacher.find_element(By.ID, "annot-undo").get_attribute("disabled") is not None, "nothing to undo yet"
        saved = _vs(teacher, "s.saved")
        teacher.find_element(By.ID, "key-image").click()
        _saved_after(teacher, saved)
        (key,) = _api(srv, "GET", f"/cases/{doc['ID']}")["KeyImages"]
        assert key["Center"] is None and key["Zoom"] == 1, "not panned: the frame's centre"
        # 21 arrows, one under the other (a drag starting on the selected arrow would move it)
        teacher.find_element(By.CSS_SELECTOR, "[data-tool=arrow]").click()
        for k in range(21):
            y = 3 + 2.7 * k
            drag(teacher, _image_point(teacher, 5, y), _image_point(teacher, 25, y), steps=3)
        _wait(teacher, lambda d: len(_api(srv, "GET", f"/cases/{doc['ID']}")["KeyImages"][0]["Annotations"]) == 21 and
              _text(d, "#case-status").startswith("Saved"), what="21 arrows saved")
        for _ in range(21):
            teacher.find_element(By.ID, "annot-undo").click()
        _wait(teacher, lambda d: _vs(d, "s.case.KeyImages.length") == 1 and
              _vs(d, "s.case.KeyImages[0].Annotations.length") == 0 and _text(d, "#case-status").startswith("Saved"),
              what="21 changes undone")
        (key,) = _api(srv, "GET", f"/cases/{doc['ID']}")["KeyImages"]
        assert key["Annotations"] == [], "every arrow undone, the key image kept"
        teacher.find_element(By.ID, "annot-undo").click()      # the 22nd: marking the key image
        _wait(teacher, lambda d: _api(srv, "GET", f"/cases/{doc['ID']}")["KeyImages"] == [], what="the key image undone")
        assert teacher.find_element(By.ID, "annot-undo").get_attribute("disabled") is not None

        # zoomed in (the + key, three times) and panned with a finger: the key image keeps that view
        stage = teacher.find_element(By.ID, "stage")
        for _ in range(3):
            stage.send_keys("+")
        teacher.find_element(By.CSS_SELECTOR, "[data-tool=pan]").click()
        drag(teacher, (500, 400), (380, 330))
        _wait(teacher, lambda d: abs(_vs(d, "s.panX")) > 10, what="the pan")
        centre = _view_centre(teacher)
        assert abs(centre[0] - 32) > 2 and abs(centre[1] - 32) > 2, centre
        saved = _vs(teacher, "s.saved")
        teacher.find_element(By.ID, "key-image").click()
        _saved_after(teacher, saved)
        (key,) = _api(srv, "GET", f"/cases/{doc['ID']}")["KeyImages"]
        assert key["Zoom"] == pytest.approx(1.25 ** 3, abs=0.01)
        assert key["Center"] == pytest.approx(centre, abs=0.01), (key["Center"], centre)
        shots(teacher, "viewer-panned-key-image")
        # opened again at that key image (as from the case page): the same zoom and centre
        teacher.get(srv.url(f"/viewer/{srv.series}?case={doc['ID']}&instance={key['Instance']}&frame=1"))
        _viewer_ready(teacher)
        _wait(teacher, lambda d: _vs(d, "s.drawn") > 0, what="the key image drawn")
        assert _vs(teacher, "s.zoom") == pytest.approx(key["Zoom"])
        assert _view_centre(teacher) == pytest.approx(key["Center"], abs=0.05)
    finally:
        teacher.quit()


# ------------------------------------------------------------------ an unknown case

UNKNOWN_TITLE = "Tension pneumothorax <img src=x onerror=alert(1)>"


def test_an_unknown_case_keeps_its_title_keywords_captions_and_labels_from_a_student_until_reveal(case_server, shots):
    srv = case_server
    instance = srv.get(f"/series/{srv.series}", headers=srv.basic).json()["Instances"][1]
    doc = _api(srv, "POST", "/cases", {
        "Title": UNKNOWN_TITLE, "Studies": [srv.study], "Keywords": ["tensionword"], "History": "Stabbed in the chest.",
        "Findings": "Mediastinal shift.", "KeyImages": [{"Instance": instance, "Frame": 1, "Caption": "apexcaption",
                                                         "Annotations": [{"Type": "arrow", "Points": [[10, 12], [30, 28]]},
                                                                         {"Type": "text", "Points": [[34, 30]],
                                                                          "Text": "collapsedlabel"}]}]})
    secret = ("Tension", "tensionword", "apexcaption", "collapsedlabel", "Mediastinal")
    teacher, student = _teacher(srv), _ipad()
    try:
        # the teacher turns the switch on in the editor and publishes
        _open(teacher, srv.url(f"/#/case/{doc['ID']}"), f"case:{doc['ID']}")
        switch = teacher.find_element(By.ID, "case-Unknown")
        assert switch.get_attribute("role") == "switch" and not switch.is_selected()
        teacher.find_element(By.CSS_SELECTOR, "label.switch-row").click()
        assert switch.is_selected()
        teacher.find_element(By.ID, "case-publish").click()      # saves first, then publishes
        _wait(teacher, lambda d: "Published" in _text(d, "#case-state"), what="published")
        stored = _api(srv, "GET", f"/cases/{doc['ID']}")
        assert stored["Unknown"] is True and stored["Title"] == UNKNOWN_TITLE and stored["State"] == "published"
        shots(teacher, "teacher-unknown-switch")

        # the student's list and page: "Unknown case", none of what it keeps back, the shapes drawn
        _open(student, srv.url("/#/cases"), "cases:")
        _wait(student, lambda d: "1–1 of 1 case" in _text(d, "#case-count"), what="the list")
        assert "Unknown case" in _text(student, "#case-list") and "Tension" not in _text(student, "#case-list")
        student.find_element(By.CSS_SELECTOR, f'#case-list a[data-case="{doc["ID"]}"]').click()
        _wait(student, lambda d: d.find_elements(By.CSS_SELECTOR, f'main[data-view="case:{doc["ID"]}"]'), what="the case")
        _wait(student, lambda d: d.execute_script(
            "const b = document.querySelector('#key-images .kthumb'); return b && b.dataset.annotations") == "2",
              what="the key image with its 2 shapes")
        assert _text(student, "main h2") == "Unknown case" and "Stabbed in the chest." in _text(student, "#case-History")
        whole = student.execute_script("return document.documentElement.textContent + "
                                       "[...document.querySelectorAll('img')].map(i => i.alt).join(' ')")
        for word in secret:
            assert word not in whole, word
        assert not student.find_elements(By.CSS_SELECTOR, "#key-images a.key-png"), "its slide shows the labels: after Reveal"
        _no_probe_ran(student)
        shots(student, "student-unknown-before-reveal")
        # the viewer opened from it: no label text drawn, the title kept back there too
        student.find_element(By.CSS_SELECTOR, "#key-images a.key-open").click()
        _viewer_ready(student)
        _wait(student, lambda d: _vs(d, "s.annotationsDrawn") == 2, what="the shapes in the viewer")
        assert _vs(student, "s.labelsHidden") is True and _text(student, "#case-link") == "Case: Unknown case"
        student.back()
        _wait(student, lambda d: d.find_elements(By.ID, "reveal"), what="the case again")

        # Reveal: the title, the keywords, the caption, the label; and in the viewer the label text
        student.find_element(By.ID, "reveal").click()
        _wait(student, lambda d: _text(d, "main h2") == UNKNOWN_TITLE, what="the revealed title")
        assert "tensionword" in _text(student, "#case-keywords") and "apexcaption" in _text(student, "#key-images figcaption")
        assert "Mediastinal shift." in _text(student, "#case-answer")
        alt = student.find_element(By.CSS_SELECTOR, "#key-images img").get_attribute("alt")
        assert 'label "collapsedlabel"' in alt and "apexcaption" in alt, alt
        assert student.find_elements(By.CSS_SELECTOR, "#key-images a.key-png")
        _no_probe_ran(student)
        student.execute_script("window.scrollTo(0, 0)")
        shots(student, "student-unknown-revealed")
        student.find_element(By.CSS_SELECTOR, "#key-images a.key-open").click()
        _viewer_ready(student)
        _wait(student, lambda d: _vs(d, "s.annotationsDrawn") == 2, what="the annotations in the viewer")
        assert _vs(student, "s.labelsHidden") is False and _text(student, "#case-link") == f"Case: {UNKNOWN_TITLE}"
        _no_probe_ran(student)
    finally:
        teacher.quit()
        student.quit()


# ------------------------------------------------------------------ de-identify, deletes that hit key images, the study picker

def _post(srv, data: bytes) -> dict:
    r = srv.post("/instances", data, headers=srv.basic)
    assert r.status == 200, r.body
    return r.json()


def test_a_draft_of_an_identifiable_study_is_de_identified_from_the_publish_refusal_then_published(case_server, shots):
    srv = case_server
    posted = [_post(srv, ct_instance(patient_id="IDENT1", patient_name="Real^Person", study="idst", index=k,
                                     rows=64, cols=64, study_description="KNEE")) for k in (1, 2)]
    study, instance = posted[0]["ParentStudy"], posted[1]["ID"]
    doc = _api(srv, "POST", "/cases", {"Title": "Knee case", "Studies": [study], "KeyImages": [
        {"Instance": instance, "Frame": 1, "Caption": "patella",
         "Annotations": [{"Type": "arrow", "Points": [[10, 12], [30, 28]], "Text": ""}]}]})
    teacher = _teacher(srv)
    try:
        _open(teacher, srv.url(f"/#/case/{doc['ID']}"), f"case:{doc['ID']}")
        teacher.find_element(By.ID, "case-publish").click()
        _wait(teacher, lambda d: d.find_elements(By.ID, "case-deidentify"), what="the refusal with its way out")
        said = _text(teacher, "#case-message")
        assert "Not published" in said and "not de-identified" in said and "De-identify the studies" in said, said
        assert _api(srv, "GET", f"/cases/{doc['ID']}")["State"] == "draft"
        shots(teacher, "teacher-publish-refused-deidentify")
        # a draft's key objects are not stored in the archive (students might see them): said so
        teacher.find_element(By.ID, "case-store-kos").click()
        _wait(teacher, lambda d: "Not stored" in _text(d, "#case-store-message"), what="the store refused")
        assert "publish it first" in _text(teacher, "#case-store-message")
        teacher.find_element(By.ID, "case-deidentify").click()
        _wait(teacher, lambda d: "De-identified: the case now uses the anonymized copies" in _text(d, "#case-message"),
              what="the case reloaded on its copies")
        stored = _api(srv, "GET", f"/cases/{doc['ID']}")
        assert stored["Studies"] and stored["Studies"] != [study]
        (key,) = stored["KeyImages"]
        assert key["Instance"] != instance and key["Caption"] == "patella" and [a["Type"] for a in key["Annotations"]] == ["arrow"]
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, "#case-key-list .kthumb"), what="the key image drawn")
        teacher.find_element(By.ID, "case-publish").click()
        _wait(teacher, lambda d: "Published" in _text(d, "#case-state"), what="published")
        assert _api(srv, "GET", f"/cases/{doc['ID']}")["State"] == "published"
    finally:
        teacher.quit()


def test_deleting_a_series_that_holds_key_images_asks_first_naming_the_case(case_server):
    srv = case_server
    instance = srv.get(f"/series/{srv.series}", headers=srv.basic).json()["Instances"][0]
    doc = _api(srv, "POST", "/cases", {"Title": "Series case <b>x</b>", "Studies": [srv.study],
                                       "KeyImages": [{"Instance": instance, "Frame": 1}]})
    teacher = _teacher(srv)
    try:
        _open(teacher, srv.url(f"/#/series/{srv.series}"), f"series:{srv.series}")
        for keep in (True, False):
            teacher.find_element(By.ID, "delete").click()
            _dialog(teacher)                                   # "Delete this series and everything in it?"
            said = _dialog(teacher, accept=not keep)
            assert '"Series case <b>x</b>"' in said and "holds key images" in said and "key images leave that case" in said, said
            if keep:
                assert srv.get(f"/series/{srv.series}", headers=srv.basic).status == 200, "kept when the teacher says no"
                assert len(_api(srv, "GET", f"/cases/{doc['ID']}")["KeyImages"]) == 1
        _wait(teacher, lambda d: srv.get(f"/series/{srv.series}", headers=srv.basic).status == 404, what="the deletion")
        assert _api(srv, "GET", f"/cases/{doc['ID']}")["KeyImages"] == [], "the case stays, without the key image"
    finally:
        teacher.quit()


def test_the_study_picker_pages_past_its_first_page_and_searches(case_server, shots):
    srv = case_server
    for k in range(51):      # 52 studies with the fixture's: more than a page of 50
        _post(srv, ct_instance(patient_id=f"PICK{k:02d}", patient_name=f"Picker^No{k:02d}", study=f"pick{k}",
                               rows=8, cols=8, study_description="PICK"))
    zebra = _post(srv, ct_instance(patient_id="ZZ9", patient_name="Zebra^Rare", study="zebra", rows=8, cols=8,
                                   study_description="ANKLE"))["ParentStudy"]
    doc = _api(srv, "POST", "/cases", {"Title": "Picker"})
    teacher = _teacher(srv)
    try:
        _open(teacher, srv.url(f"/#/case/{doc['ID']}"), f"case:{doc['ID']}")
        teacher.find_element(By.CSS_SELECTOR, "#case-add-study summary").click()
        _wait(teacher, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#case-study-picks li")) == 50, what="the first page")
        assert "so far" in _text(teacher, "#case-study-said")
        teacher.find_element(By.ID, "case-study-next").click()
        _wait(teacher, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#case-study-picks li")) == 53, what="the rest")
        assert not teacher.find_elements(By.ID, "case-study-next") and "53 studies." in _text(teacher, "#case-study-said")
        # a search by a part of the patient's name, any case
        teacher.find_element(By.ID, "case-study-q").send_keys("zebr")
        _wait(teacher, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#case-study-picks li")) == 1, what="the match")
        assert "Zebra" in _text(teacher, "#case-study-picks")
        shots(teacher, "teacher-study-picker")
        teacher.find_element(By.CSS_SELECTOR, f'#case-study-picks button[data-add-study="{zebra}"]').click()
        _wait(teacher, lambda d: "Zebra" in _text(d, "#case-study-list"), what="the study in the case")
        assert "in the case" in _text(teacher, "#case-study-picks")
        teacher.find_element(By.ID, "case-save").click()
        _wait(teacher, lambda d: "Saved at" in _text(d, "#case-message"), what="saved")
        assert _api(srv, "GET", f"/cases/{doc['ID']}")["Studies"] == [zebra]
    finally:
        teacher.quit()
