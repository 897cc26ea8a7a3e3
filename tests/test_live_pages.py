"""A live teaching session in real headless Chromium (issue 21): one teacher presenting on an iPad,
three students following on theirs and the projector (a teacher's page following), each its own
browser instance (so its own cookie jar), against a real board. The students join by the join page
and wait; the projector shows the code and its QR code; the teacher scrolls to image 40 in lung
window and every follower shows image 40 in that window, with the teacher's zoom and pointer; a
student scrolls alone (detached) and taps Follow teacher; each answers a multiple-choice question
and the teacher's bars count them, and two answer a several-choice one; the tap question takes the
students to its key image (a tap elsewhere refused) and the tap is counted inside the region on the
heat map; two free-text answers are grouped in the word list; a student's connection cut while the
teacher moves on resyncs to where the teacher is; the reveal shows the findings and the key
image's annotation; a second teacher takes the drive and the first takes it back; a pause keeps the followers' image until the start; the presenter's
own reconnect; the teacher switches series; the end reaches everyone. Text from people (the
session title, a nickname) shows as text, and no request leaves the board. Screenshots go to
tests/artifacts/live/.
"""

from __future__ import annotations

import time

import pytest

from .helpers import tap, touch
from .session_fixtures import BASIC, DIAGNOSIS, FINDINGS, SIZE, SLICES, Classroom, make_classroom, session_body
from .test_pages import ARTIFACTS, PROBE, _assert_same_origin, _browser, _no_probe_ran, _text, _wait

pytestmark = pytest.mark.xdist_group("chromium")   # one Chromium at a time, as test_pages.py

SHOTS = ARTIFACTS / "live"
LUNG = "W 1500  L -600"     # the viewer's lung preset, as its lower-left corner shows it


@pytest.fixture
def room(make_server, tmp_path) -> Classroom:
    """The shared classroom, its study holding a second series (12 slices, Series Number 2: the
    case still opens on the first) that the teacher switches to."""
    import io

    import pydicom

    from .synth import ct_phantom_series
    room = make_classroom(make_server)
    for p in ct_phantom_series(tmp_path / "second", n=12, size=SIZE, pixel_mm=400 / SIZE, patient_id="ANONSESS",
                               patient_name="Anon^Session", study="sess", series="second",
                               series_description="Axial 10 mm"):
        ds = pydicom.dcmread(p)
        ds.PatientIdentityRemoved, ds.SeriesNumber = "YES", 2
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        r = room.srv.post("/instances", buf.getvalue(), headers=BASIC)
        assert r.status == 200 and r.json()["ParentStudy"] == room.study, r.body[:300]
        room.second_series = r.json()["ParentSeries"]
    return room


def _ipad():
    return _browser(1024, 768, touch=True)


def _live(drv, expr: str):
    return drv.execute_script(f"const L = window.pipacsLive; return {expr};")


def _visible(drv, css: str) -> bool:
    return drv.execute_script("const e = document.querySelector(arguments[0]); return !!e && !e.hidden && "
                              "e.getClientRects().length > 0;", css)


def _tap(drv, css: str) -> None:
    """A finger on the element's middle (touch events, as an iPad), after scrolling it into view."""
    x, y = drv.execute_script("const e = document.querySelector(arguments[0]); e.scrollIntoView({block: 'center'});"
                              " const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2];",
                              css)
    tap(drv, (x, y))


def _key(drv, key: str, times: int = 1) -> None:
    for _ in range(times):
        drv.execute_script("document.querySelector('#stage').dispatchEvent(new KeyboardEvent('keydown', "
                           "{key: arguments[0], bubbles: true}))", key)


def _drag(drv, a: tuple[float, float], b: tuple[float, float], steps: int) -> None:
    """One finger from a to b that stops there before it lifts (a finger flicked off the glass would
    start a fling, and the tap that stops a fling is no click)."""
    touch(drv, "touchStart", [a])
    for k in range(1, steps + 1):
        touch(drv, "touchMove", [(a[0] + (b[0] - a[0]) * k / steps, a[1] + (b[1] - a[1]) * k / steps)])
    for _ in range(3):
        time.sleep(0.05)
        touch(drv, "touchMove", [b])
    touch(drv, "touchEnd", [])


class SecondTeacher:
    """Another teacher presenting from a script: aiohttp's WebSocket client on its own event loop in a
    thread, with Basic credentials (what a second teacher's laptop sends), kept open until close()."""

    def __init__(self, url: str, headers: dict[str, str]):
        import asyncio
        import threading

        import aiohttp
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def open_():
            self.http = aiohttp.ClientSession(headers=headers)
            self.ws = await self.http.ws_connect(url)
            return await self.ws.receive_json(timeout=10)
        self.hello = self._run(open_())

    def _run(self, coro):
        import asyncio
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=15)

    def send(self, msg: dict) -> None:
        self._run(self.ws.send_json(msg))

    def close(self) -> None:
        async def close_():
            await self.ws.close()
            await self.http.close()
        self._run(close_())
        self.loop.call_soon_threadsafe(self.loop.stop)


def _shows(drv, image: int, window: str | None = None) -> bool:
    """The viewer's own corners say image ``image`` (1-based) of the series, in ``window``."""
    return (f"Im {image} / {SLICES}" in _text(drv, "#ov-tr")
            and (window is None or window in _text(drv, "#ov-bl")))


def _student(room: Classroom, code: str, nickname: str, session_id: str):
    """A student's iPad: the join page (the address on the projector, the code in it), a nickname,
    Join: the seat cookie is set in this browser only, and the page goes on to the follower's."""
    drv = _ipad()
    drv.get(room.srv.url(f"/join?code={code}"))
    _wait(drv, lambda d: d.find_elements("id", "join-nickname"), what="the join page")
    drv.find_element("id", "join-nickname").send_keys(nickname)
    _tap(drv, "#join-go")
    _wait(drv, lambda d: d.current_url.endswith(f"/viewer/live?session={session_id}"), what="the follower's page")
    return drv


def _teacher(room: Classroom, session_id: str, present: bool = True):
    """A teacher's browser, signed in (the pages' cookie): the iPad presenting, or the projector's
    laptop following (1280x800, no touch)."""
    drv = _ipad() if present else _browser(1280, 800)
    drv.get(room.srv.url("/favicon.ico"))
    cookie = room.sign_in_cookie()["Cookie"]
    name, value = cookie.split("=", 1)
    drv.add_cookie({"name": name, "value": value, "path": "/"})
    drv.get(room.srv.url(f"/viewer/live?session={session_id}" + ("&present=1" if present else "")))
    return drv


def test_three_students_follow_the_teacher_answer_resync_and_see_the_reveal(room, shots):
    body = session_body(room.case["ID"], mode="unknown", title=f"Chest {PROBE}")
    body["Cases"][0]["Questions"].append({"ID": "q4", "Type": "choice", "Prompt": "Which signs?", "Correct": [0, 2],
                                          "Choices": ["Air bronchogram", "Effusion", "Silhouette sign"]})
    made = room.teacher_json("POST", "/sessions", body)
    sid, code = made["ID"], made["Code"]
    drivers, seen = [], {}
    try:
        # before the start: the students wait, told they joined
        students = []
        for k, nick in enumerate(["Ana", "Ben", PROBE[:32]]):
            s = _student(room, code, nick, sid)
            drivers.append(s)
            students.append(s)
            seen[k] = []
        for s in students:
            _wait(s, lambda d: _live(d, "L.connected") and _visible(d, "#live-wait"), timeout=30, what="the waiting screen")
            assert "Waiting for the teacher to start" in _text(s, "#live-wait")
            assert "You joined as" in _text(s, "#live-wait")
            assert not _live(s, "L.session.Code")   # a student's copy of the session has no code
        shots(students[0], "1-student-waits")
        # the projector: a teacher's page following shows the code and the QR code of the join address
        projector = _teacher(room, sid, present=False)
        drivers.append(projector)
        _wait(projector, lambda d: _live(d, "L.connected") and _visible(d, "#live-wait-code"), timeout=30,
              what="the code on the projector")
        assert _text(projector, "#live-wait-code") == code
        assert f"/join?code={code}" in _text(projector, "#live-wait")
        _wait(projector, lambda d: d.execute_script("const i = document.querySelector('#live-wait .live-qr'); "
                                                    "return !!i && i.complete && i.naturalWidth > 0"), what="the QR code")
        shots(projector, "1-projector-waits")

        # the teacher presents: the board's case opens on its first series, then Start
        teacher = _teacher(room, sid)
        drivers.append(teacher)
        _wait(teacher, lambda d: _live(d, "L.connected && L.driving") and _visible(d, "#live-start"), timeout=30,
              what="the presenter's panel")
        _wait(teacher, lambda d: _shows(d, 1) and d.execute_script("return window.viewerState.drawn > 0"),
              timeout=30, what="the case's first image on the teacher's page")
        # the side panel open on the landscape iPad: the toolbar stays compact, the image keeps most of the screen
        canvas_h, toolbar_h = teacher.execute_script(
            "return [document.querySelector('#canvas').getBoundingClientRect().height, "
            "document.querySelector('#toolbar').getBoundingClientRect().height]")
        assert _visible(teacher, "#live-panel") and canvas_h >= 0.6 * 768, (canvas_h, toolbar_h)
        _tap(teacher, "#live-join-btn")
        _wait(teacher, lambda d: _visible(d, "#live-join"), what="the join panel")
        assert _text(teacher, "#live-join-code") == code
        qr = teacher.execute_script("return document.querySelector('#live-join-qr').getAttribute('src')")
        assert qr.startswith("/pipacs/qr.svg?text=") and f"join%3Fcode%3D{code}" in qr, qr
        _wait(teacher, lambda d: d.execute_script("const i = document.querySelector('#live-join-qr'); "
                                                  "return i.complete && i.naturalWidth > 0"), what="the QR image")
        shots(teacher, "2-join-panel")
        _tap(teacher, "#live-join-close")
        _tap(teacher, "#live-start")
        for s in students:
            _wait(s, lambda d: not _visible(d, "#live-wait") and _shows(d, 1), timeout=30, what="the first image")

        # the teacher scrolls to image 40 with a finger and taps Lung: every student shows image 40 in it
        _tap(teacher, '[data-preset="lung"]')
        x, y = teacher.execute_script("const r = document.querySelector('#stage').getBoundingClientRect(); "
                                      "return [r.left + r.width / 3, r.top + 40];")
        _drag(teacher, (x, y), (x, y + 39 * 8), steps=13)   # 8 CSS pixels an image
        _wait(teacher, lambda d: _shows(d, 40, LUNG), what="image 40 in lung window on the teacher's page")
        for k, s in enumerate(students):
            _wait(s, lambda d: _shows(d, 40, LUNG), timeout=20, what=f"student {k + 1} on image 40 in lung window")
            assert _live(s, "!L.detached")
        _wait(projector, lambda d: _shows(d, 40, LUNG) and not _visible(d, "#live-wait"), what="the projector on image 40")
        assert not _visible(projector, "#live-question") and not _visible(projector, "#live-follow")
        shots(students[1], "3-student-follows-image-40")

        # zoom and the teacher's pointer: a finger held on the image's middle with the Point tool
        _key(teacher, "+")
        for s in students:
            _wait(s, lambda d: "Zoom 125%" in _text(d, "#ov-br"), what="the teacher's zoom")
        _key(teacher, "-")
        _tap(teacher, "#tool-pointer")
        px, py = teacher.execute_script("const r = document.querySelector('#stage').getBoundingClientRect(); "
                                        "return [r.left + r.width / 2, r.top + r.height / 2];")
        touch(teacher, "touchStart", [(px, py)])
        for s in students:
            _wait(s, lambda d: _live(d, "!!L.pointer && Math.abs(L.pointer[0] - 64) < 3 && Math.abs(L.pointer[1] - 64) < 3"),
                  what="the teacher's pointer on the image's middle")
            assert "Zoom 100%" in _text(s, "#ov-br")
        touch(teacher, "touchEnd", [])
        _tap(teacher, "#tool-pointer")   # back to scrolling
        shots(students[0], "3-pointer")

        # student 1 scrolls alone: detached, stays where they are while the teacher moves on, then re-follows
        s1 = students[0]
        sx, sy = s1.execute_script("const r = document.querySelector('#stage').getBoundingClientRect(); "
                                   "return [r.left + r.width / 3, r.top + 300];")
        _drag(s1, (sx, sy), (sx, sy - 10 * 8), steps=5)
        _wait(s1, lambda d: _shows(d, 30) and _visible(d, "#live-follow"), what="student 1 detached on image 30")
        assert "Detached" in _text(s1, "#live-status")
        shots(s1, "4-detached")
        _key(teacher, "ArrowDown", 2)
        _wait(teacher, lambda d: _shows(d, 42, LUNG), what="the teacher on image 42")
        for s in students[1:]:
            _wait(s, lambda d: _shows(d, 42, LUNG), what="the others on image 42")
        assert _shows(s1, 30), _text(s1, "#ov-tr")   # detached: the teacher's move is not applied
        _tap(s1, "#live-follow")
        _wait(s1, lambda d: _shows(d, 42, LUNG) and not _visible(d, "#live-follow"), what="student 1 following again")

        # a multiple-choice question: each student taps a choice, the teacher's bars count them
        _tap(teacher, '.live-ask[data-question="q2"]')
        for k, s in enumerate(students):
            _wait(s, lambda d: _visible(d, "#live-question") and "Which lobe?" in _text(d, "#live-prompt"),
                  what=f"the question on student {k + 1}'s page")
        for s, choice in zip(students, [1, 1, 0]):
            _tap(s, f'.live-choice[data-choice="{choice}"]')
            _wait(s, lambda d: "Sent:" in _text(d, "#live-mine"), what="the answer sent")
        _wait(teacher, lambda d: "Answered: 3" in _text(d, "#live-answers"), what="three answers on the teacher's page")
        counts = teacher.execute_script("return [...document.querySelectorAll('.live-bar .live-bar-count')].map(e => e.textContent)")
        assert counts == ["1", "2", "0"], counts
        shots(teacher, "5-answers-counted")
        shots(students[2], "5-student-question")

        # several choices are right (the student's copy says Multiple): a student picks two, unpicks one,
        # picks it again and sends them as one answer; another sends one; the teacher's bars count each choice
        _tap(teacher, '.live-ask[data-question="q4"]')
        s1, s2 = students[0], students[1]
        for s in (s1, s2):
            _wait(s, lambda d: "Which signs?" in _text(d, "#live-prompt") and _visible(d, "#live-send-choices"),
                  what="the several-choice question")
        for c in (0, 2, 2, 2):
            _tap(s1, f'.live-choice[data-choice="{c}"]')
        pressed = s1.execute_script("return [...document.querySelectorAll('.live-choice')].map(b => b.getAttribute('aria-pressed'))")
        assert pressed == ["true", "false", "true"], pressed
        assert _text(s1, "#live-mine") == ""   # picked, not sent
        _tap(s1, "#live-send-choices")
        _wait(s1, lambda d: "Sent: Air bronchogram, Silhouette sign" in _text(d, "#live-mine"), what="two choices sent")
        _tap(s2, '.live-choice[data-choice="1"]')
        _tap(s2, "#live-send-choices")
        _wait(s2, lambda d: "Sent: Effusion" in _text(d, "#live-mine"), what="one choice sent")
        _wait(teacher, lambda d: "Answered: 2" in _text(d, "#live-answers"), what="two answers to the several-choice question")
        counts = teacher.execute_script("return [...document.querySelectorAll('.live-bar .live-bar-count')].map(e => e.textContent)")
        assert counts == ["1", "1", "1"], counts
        shots(s1, "5-several-choices")

        # tap the finding: the teacher is on image 42, the students go to the question's key image (its
        # place in the stack); student 2 scrolls off it and the page refuses the tap with a sentence; back
        # on it (Follow teacher), the tap on the image's middle (inside the key image's ellipse) is
        # confirmed, and the teacher's heat map counts one tap inside the region
        key = teacher.execute_script("return window.viewerState.frames.findIndex(f => f.id === arguments[0])",
                                     room.key_instance)
        assert key >= 0 and key + 1 != 42
        # the teacher shows the study's other series when asking: the key image's own series is opened
        _tap(teacher, "#series-btn")
        _wait(teacher, lambda d: d.find_elements("css selector", f'.series-thumb[data-series="{room.second_series}"]'),
              what="the series list")
        _tap(teacher, f'.series-thumb[data-series="{room.second_series}"]')
        for k, s in enumerate(students):
            _wait(s, lambda d: "Im 1 / 12" in _text(d, "#ov-tr"), what=f"student {k + 1} on the second series")
        _tap(teacher, '.live-ask[data-question="q3"]')
        s2 = students[1]
        for k, s in enumerate(students):
            _wait(s, lambda d: "Tap the finding" in _text(d, "#live-prompt") and _shows(d, key + 1),
                  what=f"student {k + 1} on the tap question's key image")
        assert "Im 1 / 12" in _text(teacher, "#ov-tr")
        # the teacher back on the first series, image 42 in lung window: the students stay on the key image
        _tap(teacher, "#series-btn")
        _wait(teacher, lambda d: d.find_elements("css selector", f'.series-thumb[data-series="{room.series}"]'),
              what="the series list")
        _tap(teacher, f'.series-thumb[data-series="{room.series}"]')
        _wait(teacher, lambda d: _shows(d, 1), what="the teacher on the first series")
        _tap(teacher, '[data-preset="lung"]')
        _key(teacher, "ArrowDown", 41)
        _wait(teacher, lambda d: _shows(d, 42, LUNG), what="the teacher on image 42 again")
        for s in students:
            _wait(s, lambda d: _live(d, "L.state.Image") == 41, what="the teacher's view arrived")
            assert _shows(s, key + 1), _text(s, "#ov-tr")
        _key(s2, "ArrowDown")
        _wait(s2, lambda d: _shows(d, key + 2) and _live(d, "L.detached"), what="student 2 off the key image")
        _tap(s2, "#stage")
        _wait(s2, lambda d: "Tap on the question's key image" in _text(d, "#live-tap-hint"), what="the tap refused")
        assert not _visible(s2, "#live-tap-confirm")
        _tap(s2, "#live-follow")
        _wait(s2, lambda d: _shows(d, key + 1) and not _live(d, "L.detached"), what="student 2 back on the key image")
        _tap(s2, "#stage")
        _wait(s2, lambda d: _visible(d, "#live-tap-confirm"), what="the confirm of the tap")
        assert _shows(s2, key + 1) and _live(s2, "!L.detached")   # a tap to answer is not scrolling
        shots(s2, "6-tap-to-confirm")
        _tap(s2, "#live-tap-confirm")
        _wait(s2, lambda d: "Sent: a spot at" in _text(d, "#live-mine"), what="the tap sent")
        _wait(teacher, lambda d: "Answered: 1" in _text(d, "#live-answers")
              and "Inside the region: 1 (100%)" in _text(d, "#live-answers"), what="the tap on the teacher's heat map")
        heat = teacher.execute_script("const c = document.querySelector('#live-heat'); "
                                      "return [c.getAttribute('aria-label'), c.width, c.height]")
        assert heat == ["1 taps", SIZE, SIZE], heat   # drawn in the key image's own pixels
        shots(teacher, "6-heat-map")

        # a free-text question: two students write the same diagnosis differently; the teacher's word
        # list groups them (case and spaces), with each student's own text on their page
        _tap(teacher, '.live-ask[data-question="q1"]')
        for k, s in enumerate(students):   # no tap question: back where the teacher is
            _wait(s, lambda d: _shows(d, 42, LUNG), what=f"student {k + 1} back on the teacher's image 42")
        for s, words in zip(students[:2], ["Lobar pneumonia", "  lobar PNEUMONIA"]):
            _wait(s, lambda d: _visible(d, "#live-text"), what="the text box")
            s.find_element("id", "live-text").send_keys(words)
            _tap(s, "#live-send")
            _wait(s, lambda d: "Sent:" in _text(d, "#live-mine"), what="the text answer sent")
        _wait(teacher, lambda d: "Answered: 2" in _text(d, "#live-answers"), what="two text answers")
        # the third student's Wi-Fi is down when they press Send: the page says so, and sends it when it is back
        s3 = students[2]
        offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
        s3.execute_cdp_cmd("Network.enable", {})
        s3.execute_cdp_cmd("Network.emulateNetworkConditions", offline)
        s3.find_element("id", "live-text").send_keys("Aspiration")
        _tap(s3, "#live-send")
        _wait(s3, lambda d: "Not sent" in _text(d, "#live-toast"), what="the answer not sent")
        s3.execute_cdp_cmd("Network.emulateNetworkConditions", {**offline, "offline": False})
        _wait(s3, lambda d: "Sent: Aspiration" in _text(d, "#live-mine"), timeout=20, what="the answer sent once back")
        _wait(teacher, lambda d: "Answered: 3" in _text(d, "#live-answers"), what="the third text answer")
        words = teacher.execute_script("return [...document.querySelectorAll('.live-words li')].map(li => "
                                       "[li.firstChild.textContent, li.lastChild.textContent])")
        assert len(words) == 2 and words[0][0].lower() == "lobar pneumonia" and words[0][1] == "2", words
        assert words[1] == ["Aspiration", "1"], words

        # student 3's connection drops (held down) while the teacher moves on: the banner, then the resync
        s3 = students[2]
        s3.execute_script("window.pipacsLive.cut(true)")
        _wait(s3, lambda d: _visible(d, "#live-banner") and not _live(d, "L.connected"), what="the disconnected banner")
        _key(teacher, "ArrowUp", 12)
        _wait(teacher, lambda d: _shows(d, 30, LUNG), what="the teacher on image 30")
        _wait(students[1], lambda d: _shows(d, 30, LUNG), what="a connected student on image 30")
        assert _shows(s3, 42), _text(s3, "#ov-tr")
        shots(s3, "7-disconnected")
        s3.execute_script("window.pipacsLive.release()")
        _wait(s3, lambda d: _shows(d, 30, LUNG) and _live(d, "L.connected && L.hellos === 2")
              and not _visible(d, "#live-banner"), timeout=20, what="student 3 resynced to image 30")

        # before the reveal nothing of the answer is on a student's page; the reveal shows it
        for s in students:
            assert FINDINGS not in s.execute_script("return document.body.innerText")
            assert not _visible(s, "#live-reveal")
        # the key image (where the stack's order puts it): its ellipse is drawn only after the reveal
        _key(teacher, "ArrowDown" if key > 29 else "ArrowUp", abs(key - 29))
        for s in students:
            _wait(s, lambda d: _shows(d, key + 1), what="the key image")
            assert s.execute_script("return window.viewerState.annotationsDrawn") == 0
        _tap(teacher, "#live-reveal-btn")
        for k, s in enumerate(students):
            _wait(s, lambda d: _visible(d, "#live-reveal") and FINDINGS in _text(d, "#live-reveal")
                  and DIAGNOSIS in _text(d, "#live-reveal"), timeout=20, what=f"the findings on student {k + 1}'s page")
            assert "null" not in _text(s, "#live-reveal")
            _wait(s, lambda d: d.execute_script("return window.viewerState.annotationsDrawn") == 1,
                  what="the key image's ellipse")
            assert not _visible(s, "#live-question")   # answers are closed at the reveal
        shots(students[0], "8-revealed")

        # the teacher pauses: the followers say so and keep their image while the teacher moves on; the
        # start brings them where the teacher is
        room.teacher_json("POST", f"/sessions/{sid}/pause")
        for s in students:
            _wait(s, lambda d: "Paused by the teacher" in _text(d, "#live-status"), what="the pause on a student's page")
        _key(teacher, "ArrowDown")
        _wait(teacher, lambda d: _shows(d, key + 2), what="the teacher on the next image while paused")
        for s in students:   # the teacher's view has arrived (its Image is an index: image key + 2), not applied
            _wait(s, lambda d: _live(d, "L.state.Image") == key + 1, what="the teacher's view while paused")
            assert _shows(s, key + 1) and "Paused by the teacher" in _text(s, "#live-status"), _text(s, "#ov-tr")
        shots(students[0], "8-paused")
        _wait(teacher, lambda d: _visible(d, "#live-start") and "Resume" in _text(d, "#live-start"), what="Resume")
        _tap(teacher, "#live-start")
        for s in students:
            _wait(s, lambda d: _shows(d, key + 2) and "Following the teacher" in _text(d, "#live-status"),
                  what="the class following again after the start")

        # another teacher presents and takes the drive: this page says so and offers Take over
        other = SecondTeacher(room.srv.url(f"/sessions/{sid}/live?as=presenter").replace("http:", "ws:"), BASIC)
        try:
            assert other.hello["you"] == {"role": "presenter", "participant": None, "nickname": None, "driving": False}
            other.send({"type": "take"})
            _wait(teacher, lambda d: _visible(d, "#live-take") and "Another teacher is driving" in _text(d, "#live-status"),
                  what="another teacher driving")
            shots(teacher, "9-another-teacher-drives")
            _tap(teacher, "#live-take")
            _wait(teacher, lambda d: _live(d, "L.driving") and not _visible(d, "#live-take"),
                  what="the drive taken back")
            _key(teacher, "ArrowDown")
            for s in students:
                _wait(s, lambda d: _shows(d, key + 3), what="the class following the teacher who took over")
        finally:
            other.close()

        # the presenter's own connection drops while it scrolls on: back, it sends where it is (the board's
        # last state does not pull it back)
        teacher.execute_script("window.pipacsLive.cut(true)")
        _wait(teacher, lambda d: _visible(d, "#live-banner"), what="the presenter's disconnected banner")
        _key(teacher, "ArrowDown", 3)
        _wait(teacher, lambda d: _shows(d, key + 6), what="the teacher scrolled on alone")
        assert _shows(students[0], key + 3)
        teacher.execute_script("window.pipacsLive.release()")
        _wait(teacher, lambda d: _live(d, "L.connected && L.driving") and _shows(d, key + 6), what="the presenter back")
        for s in students:
            _wait(s, lambda d: _shows(d, key + 6), what="the class where the presenter is after its reconnect")

        # the teacher picks the study's other series: the class follows; a student picking another series
        # by hand detaches, and Follow teacher brings the teacher's back
        _tap(teacher, "#series-btn")
        _wait(teacher, lambda d: d.find_elements("css selector", f'.series-thumb[data-series="{room.second_series}"]'),
              what="the series list")
        _tap(teacher, f'.series-thumb[data-series="{room.second_series}"]')
        for k, s in enumerate(students):
            _wait(s, lambda d: "Im 1 / 12" in _text(d, "#ov-tr"), what=f"student {k + 1} on the second series")
        s2 = students[1]
        _tap(s2, "#series-btn")
        _wait(s2, lambda d: d.find_elements("css selector", f'.series-thumb[data-series="{room.series}"]'),
              what="a student's series list")
        _tap(s2, f'.series-thumb[data-series="{room.series}"]')
        _wait(s2, lambda d: f"/ {SLICES}" in _text(d, "#ov-tr") and _visible(d, "#live-follow"),
              what="the student on the first series, detached")
        _tap(s2, "#live-follow")
        _wait(s2, lambda d: "Im 1 / 12" in _text(d, "#ov-tr") and not _visible(d, "#live-follow"),
              what="the student back on the teacher's series")

        # the end: every follower says so, and tries no reconnect
        room.teacher_json("POST", f"/sessions/{sid}/end")
        for s in students:
            _wait(s, lambda d: "The session has ended" in _text(d, "#live-wait") and _live(d, "L.ended && !L.connected"),
                  what="the session's end on a student's page")

        for k, s in enumerate(students):
            _no_probe_ran(s)
            _assert_same_origin(s, room.srv.url(""), seen[k])
        # every view the presenter sent was taken (no bad-view, too-fast, case-missing...)
        assert [e for e in _live(teacher, "L.errors") if e != "not-driving"] == [], _live(teacher, "L.errors")
        assert _live(teacher, "L.sent") > 10
        _no_probe_ran(teacher)
        _no_probe_ran(projector)
        _assert_same_origin(projector, room.srv.url(""), [])
        _assert_same_origin(teacher, room.srv.url(""), [])
    finally:
        for d in drivers:
            d.quit()
