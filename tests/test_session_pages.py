"""Teaching-session pages in a real headless Chromium: the teacher makes a session from two cases
(a choice question, and a tap question whose rectangle is drawn by a finger on the key image),
starts it; a student joins at /join with the code and a nickname (a wrong code, a taken nickname
told plainly); the results page shows the counts and the heat map of answers posted through REST,
and its CSV link downloads. No request leaves the board. Screenshots go to tests/artifacts/sessions/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import drag
from .session_fixtures import ELLIPSE, TEACHER_PW, TEACHER_USER, make_classroom
from .test_case_pages import Select, _teacher
from .test_pages import (
    PROBE,
    By,
    _accept_confirm,
    _assert_same_origin,
    _browser,
    _ipad,
    _no_probe_ran,
    _sign_in,
    _text,
    _wait,
)

pytestmark = pytest.mark.xdist_group("chromium")   # one Chromium at a time, as test_pages.py

SHOTS = Path(__file__).parent / "artifacts" / "sessions"


@pytest.fixture
def room(make_server):
    """The shared classroom (a published case with an ellipse on its key image) and a second case, a
    draft whose key image has no annotation."""
    room = make_classroom(make_server)
    second = room.teacher_json("POST", "/cases", {"Title": "Second look", "Studies": [room.study],
                                                  "KeyImages": [{"Instance": room.instances[10]}]})
    room.second = second
    return room


def _view(drv, view: str) -> None:
    _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, f'main[data-view="{view}"]'), what=f"the page {view}")


def _in(drv, scope: str, css: str):
    return drv.find_element(By.CSS_SELECTOR, scope).find_element(By.CSS_SELECTOR, css)


def _click(drv, e) -> None:
    """Tap it where a finger would: in the middle of the screen (the editor's Save bar stays at the bottom)."""
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", e)
    e.click()


def _add_case(drv, search: str, case_id: str) -> None:
    box = drv.find_element(By.ID, "case-search")
    box.clear()
    box.send_keys(search)
    _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, f'#case-picks li[data-pick="{case_id}"] button:not([disabled])') and
          len(d.find_elements(By.CSS_SELECTOR, "#case-picks li")) == 1, what=f"the case {search} found")
    _click(drv, drv.find_element(By.CSS_SELECTOR, f'#case-picks li[data-pick="{case_id}"] button'))
    _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, f'.session-case[data-case="{case_id}"]'), what="the case added")


def test_the_teacher_makes_and_starts_a_session_and_a_student_joins_it(room, shots):
    srv, origin = room.srv, room.srv.url("")
    teacher = _teacher(srv)
    student = _browser(390, 844, touch=True)     # a phone
    seen_t: list[str] = []
    seen_s: list[str] = []
    try:
        assert "Sessions" in _text(teacher, "#nav")
        teacher.find_element(By.LINK_TEXT, "Sessions").click()
        _view(teacher, "list:")
        assert "No session yet" in _text(teacher, "#session-list")
        teacher.find_element(By.ID, "session-new").click()
        _view(teacher, "new:")
        teacher.find_element(By.ID, "session-title").send_keys(PROBE)
        assert teacher.find_element(By.ID, "session-mode-unknown").is_selected()

        # two cases found by the search box; the draft is warned about; the order changed by the arrows
        _add_case(teacher, "pneumonia", room.case["ID"])
        _add_case(teacher, "second", room.second["ID"])
        _wait(teacher, lambda d: "is a draft" in _text(d, "#session-warnings"), what="the draft warning")
        assert "Second look" in _text(teacher, "#session-warnings")
        _click(teacher, _in(teacher, '.session-case[data-case-index="1"]', '[data-move="up"]'))
        _wait(teacher, lambda d: d.find_element(By.CSS_SELECTOR, '.session-case[data-case-index="0"]')
              .get_attribute("data-case") == room.second["ID"], what="the draft moved first")
        _click(teacher, _in(teacher, '.session-case[data-case-index="0"]', '[data-move="down"]'))
        _wait(teacher, lambda d: d.find_element(By.CSS_SELECTOR, '.session-case[data-case-index="0"]')
              .get_attribute("data-case") == room.case["ID"], what="the published case first again")

        # case 1: a multiple-choice question, three choices, the second right
        first = '.session-case[data-case-index="0"]'
        _click(teacher, _in(teacher, first, '[data-add-question="choice"]'))
        _in(teacher, first, ".question-prompt").send_keys("Which lobe?")
        _click(teacher, _in(teacher, first, "[data-add-choice]"))
        for box, text in zip(teacher.find_elements(By.CSS_SELECTOR, f"{first} .choice-text"),
                             ("Right upper", "Right lower", "Left"), strict=True):
            box.send_keys(text)
        _click(teacher, teacher.find_elements(By.CSS_SELECTOR, f"{first} .choice-correct")[1])
        _click(teacher, _in(teacher, first, ".allow-retrieve"))

        # case 2: tap the finding; its key image has no ellipse (said), so a rectangle drawn by a finger
        second = '.session-case[data-case-index="1"]'
        _click(teacher, _in(teacher, second, '[data-add-question="tap"]'))
        _in(teacher, second, ".question-prompt").send_keys("Tap the consolidation")
        _wait(teacher, lambda d: "no ellipse" in _text(d, f"{second} .region-note"), what="no ellipse said")
        Select(_in(teacher, second, ".question-region")).select_by_value("rectangle")
        _wait(teacher, lambda d: d.execute_script(
            "const i = document.querySelector(arguments[0] + ' .keypic img'); return i && i.complete && i.naturalWidth > 0",
            second), what="the key image drawn")
        teacher.execute_script("document.querySelector(arguments[0] + ' .keypic').scrollIntoView({block: 'center'})", second)
        left, top, w, h = teacher.execute_script(
            "const r = document.querySelector(arguments[0] + ' .region-canvas').getBoundingClientRect();"
            "return [r.left, r.top, r.width, r.height];", second)
        drag(teacher, (left + 0.25 * w, top + 0.25 * h), (left + 0.5 * w, top + 0.625 * h))
        _wait(teacher, lambda d: "Taps inside the rectangle" in _text(d, f"{second} .region-note"), what="the rectangle drawn")
        shots(teacher, "teacher-editing")

        _click(teacher, teacher.find_element(By.ID, "session-save"))
        _view(teacher, "list:")
        assert "students join with code" in _text(teacher, "#flash")
        docs = room.teacher_json("GET", "/sessions?expand")
        assert len(docs) == 1
        doc = docs[0]
        assert doc["Title"] == PROBE and doc["Mode"] == "unknown" and doc["State"] == "ready"
        assert [c["Case"] for c in doc["Cases"]] == [room.case["ID"], room.second["ID"]]
        assert [c["AllowRetrieve"] for c in doc["Cases"]] == [True, False]
        (choice,), (tap,) = doc["Cases"][0]["Questions"], doc["Cases"][1]["Questions"]
        assert (choice["Type"], choice["Prompt"], choice["Choices"], choice["Correct"]) == \
            ("choice", "Which lobe?", ["Right upper", "Right lower", "Left"], [1])
        assert tap["Type"] == "tap" and tap["KeyImage"] == 0 and tap["Region"]["Type"] == "rectangle"
        (x0, y0), (x1, y1) = tap["Region"]["Points"]      # the 128-pixel frame: a quarter to a half across
        assert abs(x0 - 32) <= 1.5 and abs(y0 - 32) <= 1.5 and abs(x1 - 64) <= 1.5 and abs(y1 - 80) <= 1.5, tap["Region"]
        row = f'.session-row[data-session="{doc["ID"]}"]'
        assert doc["Code"] in _text(teacher, row) and "is a draft" in _text(teacher, row)
        present = _in(teacher, row, '[data-link="present"]').get_attribute("href")
        assert present == srv.url(f"/viewer/live?session={doc['ID']}&present=1")
        _no_probe_ran(teacher)

        # start it
        _click(teacher, _in(teacher, row, '[data-action="start"]'))
        _wait(teacher, lambda d: "Session live" in _text(d, "#flash") and d.find_elements(By.CSS_SELECTOR, f"{row} .state-live"),
              what="the session live")
        assert room.teacher_json("GET", f"/sessions/{doc['ID']}")["State"] == "live"
        shots(teacher, "teacher-list")

        # edited while live: a new title and a free-text question on the second case; the rest kept
        _click(teacher, _in(teacher, row, '[data-link="edit"]'))
        _view(teacher, f"edit:{doc['ID']}")
        title = teacher.find_element(By.ID, "session-title")
        assert title.get_attribute("value") == PROBE
        title.clear()
        title.send_keys("Chest conference, week 3")
        _click(teacher, _in(teacher, second, '[data-add-question="text"]'))
        teacher.find_elements(By.CSS_SELECTOR, f"{second} .question-prompt")[1].send_keys("What else would you do?")
        _click(teacher, teacher.find_element(By.ID, "session-save"))
        _view(teacher, "list:")
        assert "Saved: Chest conference, week 3." in _text(teacher, "#flash")
        edited = room.teacher_json("GET", f"/sessions/{doc['ID']}")
        assert edited["Title"] == "Chest conference, week 3" and edited["State"] == "live" and edited["Code"] == doc["Code"]
        assert edited["Cases"][0]["Questions"] == doc["Cases"][0]["Questions"]
        tap2, text2 = edited["Cases"][1]["Questions"]
        assert tap2 == tap and (text2["Type"], text2["Prompt"]) == ("text", "What else would you do?")
        assert text2["ID"] != tap["ID"]

        # once a case is revealed the cases stay as they are: no arrows, no removing, no adding
        room.teacher_json("POST", f"/sessions/{doc['ID']}/cases/0/reveal")
        _click(teacher, _in(teacher, row, '[data-link="edit"]'))
        _view(teacher, f"edit:{doc['ID']}")
        assert "A case is revealed" in _text(teacher, "#session-warnings")
        buttons = teacher.find_elements(By.CSS_SELECTOR, "[data-move], [data-remove-case]")
        assert len(buttons) == 6 and not [b for b in buttons if b.is_enabled()]
        assert not teacher.find_elements(By.ID, "case-search")
        teacher.get(srv.url("/app/sessions.html#/"))
        _view(teacher, "list:")

        # a student on a phone: a wrong code first, then the right one from the link (?code= fills it in)
        wrong = "0000" if doc["Code"] != "0000" else "1111"
        student.get(srv.url("/join"))
        _wait(student, lambda d: d.find_elements(By.ID, "join-go"), what="the join page")
        student.find_element(By.ID, "join-code").send_keys(wrong)
        student.find_element(By.ID, "join-nickname").send_keys("Ana")
        student.find_element(By.ID, "join-go").click()
        _wait(student, lambda d: "No session is running with that code" in _text(d, "#join-message"), what="the wrong code said")
        assert "/join" in student.current_url
        student.get(srv.url(f"/join?code={doc['Code']}"))
        _wait(student, lambda d: d.find_element(By.ID, "join-code").get_attribute("value") == doc["Code"], what="the code filled in")
        assert student.find_element(By.ID, "join-nickname").get_attribute("value") == "Ana"   # remembered
        student.find_element(By.ID, "join-go").click()
        _wait(student, lambda d: "/viewer/live?session=" in d.current_url, what="the follower's page")
        assert student.current_url == srv.url(f"/viewer/live?session={doc['ID']}")
        assert any(c["name"] == "pipacs_seat" for c in student.get_cookies())
        me = room.teacher_json("GET", f"/sessions/{doc['ID']}")
        assert me["Participants"] == 1
        _assert_same_origin(student, origin, seen_s)

        # another phone, the same nickname: taken, said so
        student.delete_all_cookies()
        student.get(srv.url(f"/join?code={doc['Code']}"))
        _wait(student, lambda d: d.find_element(By.ID, "join-code").get_attribute("value") == doc["Code"], what="the join page")
        student.find_element(By.ID, "join-go").click()
        _wait(student, lambda d: "That nickname is taken" in _text(d, "#join-message"), what="the taken nickname said")
        shots(student, "student-join-taken")
        assert room.teacher_json("GET", f"/sessions/{doc['ID']}")["Participants"] == 1

        # end and rerun: a new copy, ready, with a new code
        _click(teacher, _in(teacher, row, '[data-action="end"]'))
        _accept_confirm(teacher)
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, f'{row} [data-action="rerun"]'), what="the session ended")
        _click(teacher, _in(teacher, row, '[data-action="rerun"]'))
        _wait(teacher, lambda d: "A new copy is ready" in _text(d, "#flash") and
              len(d.find_elements(By.CSS_SELECTOR, ".session-row")) == 2, what="the rerun listed")
        rerun = next(d for d in room.teacher_json("GET", "/sessions?expand") if d["ID"] != doc["ID"])
        assert rerun["State"] == "ready" and rerun["Code"] not in ("", doc["Code"]) and rerun["Participants"] == 0
        assert f"code {rerun['Code']}" in _text(teacher, "#flash")

        # too many wrong codes from this address (30 a minute; the phone's one above counts): the
        # page says to wait
        statuses = [room.student().request("POST", "/sessions/join", {"Code": wrong, "Nickname": "x"}).status
                    for _ in range(30)]
        assert statuses == [404] * 29 + [429], statuses
        student.get(srv.url(f"/join?code={wrong}"))
        _wait(student, lambda d: d.find_element(By.ID, "join-code").get_attribute("value") == wrong, what="the join page")
        student.find_element(By.ID, "join-go").click()
        _wait(student, lambda d: "Too many wrong codes from this device: wait" in _text(d, "#join-message"), what="the 429 said")
        assert " seconds, then try again" in _text(student, "#join-message")
        _assert_same_origin(teacher, origin, seen_t)
    finally:
        teacher.quit()
        student.quit()


def test_results_show_counts_words_and_taps_and_the_csv_downloads(room, shots):
    srv, origin = room.srv, room.srv.url("")
    doc = room.new_session()                       # q1 text, q2 choice (second right), q3 tap in the ellipse
    sid = doc["ID"]
    answers = {"Ana": ("pneumonia", [1], [60.0, 70.0]), "Ben": ("Pneumonia ", [1], [62.0, 66.0]),
               "Cy": ("=cmd|' /C calc'!A0", [0], [10.0, 10.0])}
    students = {}
    for nick in answers:
        students[nick] = room.student()
        students[nick].join(doc["Code"], nick)
    for k, q in enumerate(("q1", "q2", "q3")):
        room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/{q}/ask")
        for nick, s in students.items():
            r = s.answer(sid, 0, q, answers[nick][k])
            assert r.status == 200, r.body[:300]

    teacher = _ipad()
    seen: list[str] = []
    try:
        teacher.get(srv.url("/#/sign-in"))
        _wait(teacher, lambda d: d.find_elements(By.ID, "signin-user"), what="the sign-in form")
        _sign_in(teacher, TEACHER_USER, TEACHER_PW)
        _wait(teacher, lambda d: "Signed in as" in _text(d, "#signed-in-as"), what="signed in")
        teacher.get(srv.url(f"/app/results.html?session={sid}"))
        _view(teacher, "results")
        choice = '.q-result[data-question="0:q2"]'
        assert [_text(teacher, f'{choice} [data-count="{i}"]') for i in range(3)] == ["1", "2", "0"]
        assert "Right lower ✓" in _text(teacher, choice)
        words = teacher.execute_script("return [...document.querySelectorAll(arguments[0] + ' table.words tbody tr')]"
                                       ".map(r => [...r.cells].map(c => c.textContent))", '.q-result[data-question="0:q1"]')
        assert words and [words[0][0].strip().lower(), words[0][1]] == ["pneumonia", "2"], words   # two spellings, one word
        tap = '.q-result[data-question="0:q3"]'
        _wait(teacher, lambda d: d.execute_script("const c = document.querySelector(arguments[0] + ' canvas');"
                                                  "return c && c.dataset.drawn === '1'", tap), what="the heat map drawn")
        assert teacher.find_element(By.CSS_SELECTOR, f"{tap} canvas").get_attribute("data-taps") == "3"
        assert "2 of 3 taps inside" in _text(teacher, tap) and "67%" in _text(teacher, tap)
        # the heat is over the taps inside the ellipse, not at the lone tap outside (a colour, not black)
        px = teacher.execute_script("""
            const c = document.querySelector(arguments[0] + ' canvas'), g = c.getContext('2d'), s = c.width / 128;
            const at = (x, y) => Array.from(g.getImageData(Math.round(x * s), Math.round(y * s), 1, 1).data);
            return at(61, 68);""", tap)
        assert px[0] > 150 and px[0] > px[2], px     # hot: red/yellow over the taps, not the grey phantom
        assert ELLIPSE[0][0] < 61 < ELLIPSE[1][0]
        table = _text(teacher, "#per-nickname")
        for nick in answers:
            assert nick in table
        assert "=cmd" in table                             # shown as typed, the CSV's guard taken off
        shots(teacher, "results")
        teacher.execute_script("document.querySelector(arguments[0]).scrollIntoView()", tap)
        shots(teacher, "results-heat-map")

        # the CSV: the link's download, read by the page's own session
        link = teacher.find_element(By.ID, "results-csv")
        assert link.get_attribute("href") == srv.url(f"/sessions/{sid}/results.csv")
        got = teacher.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch(arguments[0]).then(async r => done([r.status, r.headers.get('Content-Type'), await r.text()]));""",
                                           link.get_attribute("href"))
        assert got[0] == 200 and got[1].startswith("text/csv"), got[:2]
        assert got[2].lstrip("\ufeff").startswith("session,case,case_title,question") and "Ben" in got[2]

        # more answers come in: Refresh draws them
        late = room.student()
        late.join(doc["Code"], "Dee")
        assert late.answer(sid, 0, "q3", [50.0, 60.0]).status == 200
        teacher.find_element(By.ID, "results-refresh").click()
        _wait(teacher, lambda d: "3 of 4 taps inside" in _text(d, tap), what="the refreshed results")
        _no_probe_ran(teacher)
        _assert_same_origin(teacher, origin, seen)
    finally:
        teacher.quit()


def test_without_sign_in_every_device_is_a_teacher_and_the_page_says_so(make_server):
    srv = make_server({})
    drv = _ipad()
    try:
        drv.get(srv.url("/app/sessions.html#/new"))
        _view(drv, "new:")
        assert "every device is a teacher: nothing can be held back" in _text(drv, "#session-warnings")
    finally:
        drv.quit()

