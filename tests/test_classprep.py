"""Prepare for today's class (appliance/web/classprep.py): what a request names, the job (one at a time,
replaced, stopped, problems said as sentences) and, on a real server, that a prepared case's stack and
frames are then cache hits, also after a restart."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from appliance.archive import Level, NotFound, Resource
from appliance.config import load_settings
from appliance.web import classprep
from appliance.web.app import build_app
from appliance.web.errors import BadRequestBody

from .helpers import store
from .synth import ct_instance


async def _case(archive, studies: list[str], collections: list[str] = ()) -> str:
    doc = {"Title": "case", "Studies": studies, "Collections": list(collections)}
    return (await archive.create_case(doc, new=True))["ID"]


async def test_what_a_request_names(archive) -> None:
    a = await store(archive, ct_instance(patient_id="A", series="s1", rows=8, cols=8))
    a2 = await store(archive, ct_instance(patient_id="A", series="s2", rows=8, cols=8))
    b = await store(archive, ct_instance(patient_id="B", rows=8, cols=8))
    c = await store(archive, ct_instance(patient_id="C", rows=8, cols=8))
    d = await store(archive, ct_instance(patient_id="D", rows=8, cols=8))
    case_a = await _case(archive, [a[1]])
    await _case(archive, [b[1]], collections=["Session3"])
    await archive.set_label(Level.STUDY, c[1], "Session3", True)

    def names(series: list[Resource]) -> list[str]:
        return [s.public_id for s in series]

    assert names(await classprep.series_to_prepare(archive, {"Cases": [case_a]})) == [a[2], a2[2]]
    assert sorted(names(await classprep.series_to_prepare(archive, {"Collections": ["Session3"]}))) == \
        sorted([b[2], c[2]])
    both = await classprep.series_to_prepare(archive, {"Cases": [case_a], "Studies": [a[1], d[1]]})
    assert names(both) == [a[2], a2[2], d[2]]            # each series once
    with pytest.raises(NotFound, match="no case"):
        await classprep.series_to_prepare(archive, {"Cases": ["nope"]})
    with pytest.raises(NotFound):
        await classprep.series_to_prepare(archive, {"Studies": ["no-such-study"]})
    assert await classprep.series_to_prepare(archive, {"Collections": ["Empty"]}) == []


def test_request_bodies_refused_with_a_reason() -> None:
    for body, says in (([], "JSON object"), ({}, "nothing to prepare"), ({"Cases": "c1"}, "list of names"),
                       ({"Cases": [1]}, "list of names"), ({"Series": ["x"]}, "Series is not something"),
                       ({"Collections": ["a b"]}, "not a collection name"),
                       ({"Studies": [f"s{i}" for i in range(classprep.MAX_NAMES + 1)]}, "at most 100")):
        with pytest.raises(BadRequestBody, match=says):
            classprep.validate_request(body)
    assert classprep.validate_request({"Cases": ["c", "c"]}) == {"Cases": ["c"], "Collections": [], "Studies": []}


class GatedWarm:
    """A stand-in for stack.warm_series before contract 3 (no on_frame): it waits for ``gate`` (or fails
    for the series in ``broken``); ``entered`` is set when a series starts."""

    def __init__(self, broken: set[str] = frozenset()) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.started: list[str] = []
        self.broken = broken

    async def __call__(self, app, series: Resource) -> int:
        self.started.append(series.public_id)
        self.entered.set()
        await self.gate.wait()
        if series.public_id in self.broken:
            raise RuntimeError("a decoder fell over")
        return 1000


class FrameWarm:
    """warm_series after contract 3: reports each frame through on_frame, and stops after ``hold`` frames
    of the first series until ``gate`` opens (``held`` is set then)."""

    def __init__(self, frames: dict[str, int], hold: int) -> None:
        self.frames, self.hold = frames, hold
        self.gate, self.held = asyncio.Event(), asyncio.Event()

    async def __call__(self, app, series: Resource, on_frame=None) -> int:
        for i in range(self.frames[series.public_id]):
            if i == self.hold and not self.gate.is_set():
                self.held.set()
                await self.gate.wait()
            on_frame(10)
        return 10 * self.frames[series.public_id]


async def _two_series(archive) -> list[Resource]:
    for s in ("s1", "s2"):
        for i in (1, 2):
            await store(archive, ct_instance(series=s, index=i, rows=8, cols=8))
    study = (await archive.index.resources_by_ids(await archive.find_request(Level.STUDY, {})))[0]
    return await classprep.series_to_prepare(archive, {"Studies": [study.public_id]})


async def test_job_progress_stop_and_replace(archive) -> None:
    app = build_app(archive, load_settings(environ={}), 0)
    series = await _two_series(archive)
    warm = GatedWarm()
    wanted = {"Cases": [], "Collections": [], "Studies": ["st"]}
    job = await classprep.start(app, series, warm, wanted=wanted, title="the study CHEST")
    await warm.entered.wait()
    status = job.status({})
    assert status["State"] == "running" and status["Series"] == 2 and status["Frames"] == 4
    assert status["For"] == wanted and status["Title"] == "the study CHEST" and status["Finished"] is None
    assert status["SeriesDone"] == 0 and warm.started == [series[0].public_id]
    stopped = await classprep.stop(app)
    assert stopped is job and job.state == "idle" and job.message == "Stopped after 0 of 2 series."
    # a new one replaces the one running
    first_warm = GatedWarm()
    first = await classprep.start(app, series, first_warm)
    await first_warm.entered.wait()
    second_warm = GatedWarm()
    second = await classprep.start(app, series[:1], second_warm)
    assert first.task.cancelled() and first.state == "idle"
    assert app[classprep.PREPARATION] is second
    second_warm.gate.set()
    await second.task
    assert second.state == "done" and second.series_done == 1 and second.frames_done == 2
    assert second.bytes == 1000 and second.message == "1 of 1 series ready for class (1.0 kB)."
    assert second.finished is not None and second.finished.endswith("Z")


async def test_progress_counts_frames_of_multiframe_series(archive) -> None:
    """M8: Frames are frames (NumberOfFrames of each instance), and a warm that reports each frame
    (on_frame, contract 3) moves FramesDone within a series."""
    from .test_classcache import multiframe
    await store(archive, multiframe(7, 8, 8))                       # one instance of 7 frames ...
    await store(archive, ct_instance(series="s2", index=1, rows=8, cols=8))   # ... and a 1-frame series
    study = (await archive.index.resources_by_ids(await archive.find_request(Level.STUDY, {})))[0]
    series = await classprep.series_to_prepare(archive, {"Studies": [study.public_id]})
    assert [await classprep.frames_of(archive, s) for s in series] == [7, 1]
    app = build_app(archive, load_settings(environ={}), 0)
    warm = FrameWarm({series[0].public_id: 7, series[1].public_id: 1}, hold=3)
    job = await classprep.start(app, series, warm)
    assert job.frames == 8 and job.message == "Preparing 2 series (8 frames) for class."
    await warm.held.wait()
    assert job.frames_done == 3 and job.series_done == 0
    warm.gate.set()
    await job.task
    assert job.state == "done" and job.frames_done == job.frames == 8 and job.bytes == 80


async def test_title_says_what_a_job_is_for(archive) -> None:
    a = await store(archive, ct_instance(patient_id="A", rows=8, cols=8))
    b = await store(archive, ct_instance(patient_id="B", rows=8, cols=8, study_description="Thorax"))
    case_a = await _case(archive, [a[1]])
    assert await classprep.title_of(archive, {"Cases": [case_a]}) == 'the case "case"'
    assert await classprep.title_of(archive, {"Collections": ["Session3"], "Studies": [b[1]]}) == \
        "the collection Session3 and the study Thorax"
    assert await classprep.title_of(archive, {"Cases": [case_a], "Collections": ["S1", "S2"]}) == \
        'the case "case" and 2 more'


async def test_job_problems_said_as_sentences(archive) -> None:
    app = build_app(archive, load_settings(environ={}), 0)
    series = await _two_series(archive)
    warm = GatedWarm(broken={series[1].public_id})
    job = await classprep.start(app, series, warm)
    warm.gate.set()
    await job.task
    assert job.state == "done" and job.series_done == 2
    assert job.message == (f"1 of 2 series ready for class (1.0 kB). Not ready: series {series[1].public_id} "
                           "could not be prepared (the log says why).")
    assert "Traceback" not in job.message and "decoder fell over" not in job.message
    every = GatedWarm(broken={s.public_id for s in series})
    job = await classprep.start(app, series, every)
    every.gate.set()
    await job.task
    assert job.state == "failed" and job.message.startswith("No series could be prepared: series ")


# ---------------------------------------------------------------- end to end on a real server

def _call(srv, method: str, path: str, body=None):
    r = srv.request(method, path, json.dumps(body) if body is not None else None)
    return r.status, (r.json() if r.body else None)


POLLS, POLL_EVERY = 600, 0.05     # the job is asked at most 600 times, 0.05 s apart: it gives up after ~30 s


def _wait_done(srv) -> dict:
    for _ in range(POLLS):
        status, doc = _call(srv, "GET", "/pipacs/class/prepare")
        assert status == 200
        if doc["State"] != "running":
            return doc
        time.sleep(POLL_EVERY)
    raise AssertionError(f"still running after {POLLS} polls ({POLLS * POLL_EVERY:.0f} s): {doc}")


def test_prepared_case_is_served_from_the_cache(make_server) -> None:
    srv = make_server()
    ids = []
    for i in range(1, 5):
        r = srv.post("/instances", ct_instance(index=i, rows=64, cols=64))
        assert r.status == 200
        ids.append(r.json())
    study, series = ids[0]["ParentStudy"], ids[0]["ParentSeries"]
    status, case = _call(srv, "POST", "/cases", {"Title": "Chest", "Studies": [study]})
    assert status == 200, case
    assert _call(srv, "GET", "/pipacs/class/prepare")[1]["State"] == "idle"
    status, started = _call(srv, "POST", "/pipacs/class/prepare", {"Cases": [case["ID"]]})
    assert status == 202 and started == {"Series": 1, "State": "running"}
    done = _wait_done(srv)
    assert done["State"] == "done", done
    assert done["For"] == {"Cases": [case["ID"]], "Collections": [], "Studies": []}
    assert done["Title"] == 'the case "Chest"' and done["Finished"].endswith("Z")
    assert done["SeriesDone"] == 1 and done["Frames"] == done["FramesDone"] == 4 and done["Bytes"] > 0
    assert done["Message"].startswith("1 of 1 series ready for class")
    prepared = done["Cache"]
    assert prepared["Misses"] >= 5                     # the stack document and the four frames, made once
    stack = srv.get(f"/pipacs/series/{series}/stack")
    assert stack.status == 200
    frames = json.loads(stack.body)["Frames"]
    assert len(frames) == 4
    for f in frames:
        assert srv.get(f["Pixels"]).status == 200
    after = _call(srv, "GET", "/pipacs/class/prepare")[1]["Cache"]
    assert after["Misses"] == prepared["Misses"] and after["Hits"] >= prepared["Hits"] + 5
    # after a restart (the board switched off overnight) the frames come from the disk
    srv.stop()
    srv.start()
    for f in frames:
        assert srv.get(f["Pixels"]).status == 200
    cold = _call(srv, "GET", "/pipacs/class/prepare")[1]["Cache"]
    assert cold["Misses"] == 0 and cold["DiskHits"] == 4 and cold["DiskBytes"] > 0
    # bad requests: a sentence and a 4xx
    status, err = _call(srv, "POST", "/pipacs/class/prepare", {"Cases": ["no-such-case"]})
    assert status == 404 and "no case no-such-case" in err["Message"]
    status, err = _call(srv, "POST", "/pipacs/class/prepare", {"Collections": ["Nothing-here"]})
    assert status == 400 and "nothing to prepare" in err["Message"]
    status, err = _call(srv, "POST", "/pipacs/class/prepare", {"Collections": ["a b"]})
    assert status == 400 and "a space is not accepted; a label is" in err["Message"]
    big = json.dumps({"Studies": ["x" * 1000] * 70})                 # over MAX_BODY_BYTES (64 kB)
    assert len(big) > classprep.MAX_BODY_BYTES
    assert srv.request("POST", "/pipacs/class/prepare", big).status == 413
    assert srv.request("POST", "/pipacs/class/prepare", "[1]").status == 400
    status, stopped = _call(srv, "DELETE", "/pipacs/class/prepare")
    assert status == 200 and stopped["State"] == "idle" and "Cache" in stopped


def test_a_multiframe_series_is_prepared_frame_by_frame(make_server) -> None:
    """M8 on a real server, through stack.warm_series(on_frame): a 7-frame instance is 7 frames."""
    from appliance.web.pixels import warm_series

    from .test_classcache import multiframe
    assert classprep._counts_frames(warm_series)
    srv = make_server()
    r = srv.post("/instances", multiframe(7, 16, 16))
    assert r.status == 200
    status, _ = _call(srv, "POST", "/pipacs/class/prepare", {"Studies": [r.json()["ParentStudy"]]})
    assert status == 202
    done = _wait_done(srv)
    assert done["State"] == "done" and done["Frames"] == done["FramesDone"] == 7, done
    assert done["Title"] == "the study CHEST" and done["Cache"]["Misses"] == 8    # the document, 7 frames


# ---------------------------------------------------------------- the teacher's button, in Chromium (iPad viewport)

@pytest.mark.xdist_group("chromium")
def test_the_teacher_prepares_a_case_from_its_page_and_a_student_has_no_button(make_server):
    from .test_case_pages import _api, _classroom, _teacher
    from .test_pages import By, _ipad, _open, _text, _wait
    srv = _classroom(make_server)
    case = _api(srv, "POST", "/cases", {"Title": "Chest", "Studies": [srv.study], "Collections": ["Session3"]})
    _api(srv, "POST", f"/cases/{case['ID']}/publish", {})
    teacher, student = _teacher(srv), _ipad()
    try:
        _open(teacher, srv.url(f"/#/case/{case['ID']}"), f"case:{case['ID']}")
        _wait(teacher, lambda d: d.find_elements(By.ID, "prepare-class"), what="the button")
        teacher.find_element(By.ID, "prepare-class").click()
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, '#prepare-box[data-state="done"]'),
              what="the preparation done", timeout=60)
        said = _text(teacher, "#prepare-status")
        assert re.fullmatch(r'The case "Chest" ready at \d\d:\d\d \(\d+ KB\)', said), said
        done = _api(srv, "GET", "/pipacs/class/prepare")
        assert done["State"] == "done" and done["FramesDone"] == done["Frames"] == 6
        # coming back to the case later: its preparation is still said
        _open(teacher, srv.url("/#/cases"), "cases:")
        _open(teacher, srv.url(f"/#/case/{case['ID']}"), f"case:{case['ID']}")
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, '#prepare-box[data-state="done"]'),
              what="the case's finished preparation")
        assert _text(teacher, "#prepare-status") == said
        # the case list with the collection chosen: the collection's button, and nothing of the case's job
        _open(teacher, srv.url("/#/cases?collection=Session3"), "cases:")
        _wait(teacher, lambda d: d.find_elements(By.CSS_SELECTOR, '#prepare-box[data-state="other"]'),
              what="the collection's button, with the case's job not shown")
        assert "Session3" in teacher.find_element(By.ID, "prepare-class").get_attribute("title")
        assert _text(teacher, "#prepare-status") == ""
        # a student reads the case: no button
        _open(student, srv.url(f"/#/case/{case['ID']}"), f"case:{case['ID']}")
        _wait(student, lambda d: "Chest" in _text(d, "main"), what="the student's case page")
        _open(student, srv.url("/#/cases?collection=Session3"), "cases:")
        _wait(student, lambda d: "1 case" in _text(d, "#case-count"), what="the student's list")
        assert not student.find_elements(By.ID, "prepare-class")
    finally:
        teacher.quit()
        student.quit()
