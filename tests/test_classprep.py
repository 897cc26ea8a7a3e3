"""Prepare for today's class (appliance/web/classprep.py): what a request names, the job (one at a time,
replaced, stopped, problems said as sentences) and, on a real server, that a prepared case's stack and
frames are then cache hits, also after a restart."""

from __future__ import annotations

import asyncio
import json
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
    """A stand-in for stack.warm_series that waits for ``gate`` (or fails for the series in ``broken``)."""

    def __init__(self, broken: set[str] = frozenset()) -> None:
        self.gate = asyncio.Event()
        self.started: list[str] = []
        self.broken = broken

    async def __call__(self, app, series: Resource) -> int:
        self.started.append(series.public_id)
        await self.gate.wait()
        if series.public_id in self.broken:
            raise RuntimeError("a decoder fell over")
        return 1000


async def _two_series(archive) -> list[Resource]:
    for s in ("s1", "s2"):
        for i in (1, 2):
            await store(archive, ct_instance(series=s, index=i, rows=8, cols=8))
    study = (await archive.index.resources_by_ids(await archive.find_request(Level.STUDY, {})))[0]
    return await classprep.series_to_prepare(archive, {"Studies": [study.public_id]})


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_job_progress_stop_and_replace(archive) -> None:
    app = build_app(archive, load_settings(environ={}), 0)
    series = await _two_series(archive)
    warm = GatedWarm()
    job = await classprep.start(app, series, warm)
    await _settle()
    status = job.status({})
    assert status["State"] == "running" and status["Series"] == 2 and status["Frames"] == 4
    assert status["SeriesDone"] == 0 and warm.started == [series[0].public_id]
    stopped = await classprep.stop(app)
    assert stopped is job and job.state == "idle" and job.message == "Stopped after 0 of 2 series."
    # a new one replaces the one running
    first = await classprep.start(app, series, GatedWarm())
    await _settle()
    second_warm = GatedWarm()
    second = await classprep.start(app, series[:1], second_warm)
    assert first.task.cancelled() and first.state == "idle"
    assert app[classprep.PREPARATION] is second
    second_warm.gate.set()
    await second.task
    assert second.state == "done" and second.series_done == 1 and second.frames_done == 2
    assert second.bytes == 1000 and second.message == "1 of 1 series ready for class (1.0 kB)."


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


def _wait_done(srv) -> dict:
    for _ in range(600):                 # polls until the job says it ended (a count, not a time limit)
        status, doc = _call(srv, "GET", "/pipacs/class/prepare")
        assert status == 200
        if doc["State"] != "running":
            return doc
        time.sleep(0.05)
    raise AssertionError(f"still running: {doc}")


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
    status, stopped = _call(srv, "DELETE", "/pipacs/class/prepare")
    assert status == 200 and stopped["State"] == "idle" and "Cache" in stopped


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
        assert said.startswith("1 of 1 series ready for class"), said
        done = _api(srv, "GET", "/pipacs/class/prepare")
        assert done["State"] == "done" and done["FramesDone"] == done["Frames"] == 6
        # the case list with the collection chosen: the collection's button
        _open(teacher, srv.url("/#/cases?collection=Session3"), "cases:")
        _wait(teacher, lambda d: d.find_elements(By.ID, "prepare-class"), what="the collection's button")
        assert "Session3" in teacher.find_element(By.ID, "prepare-class").get_attribute("title")
        # a student reads the case: no button
        _open(student, srv.url(f"/#/case/{case['ID']}"), f"case:{case['ID']}")
        _wait(student, lambda d: "Chest" in _text(d, "main"), what="the student's case page")
        _open(student, srv.url("/#/cases?collection=Session3"), "cases:")
        _wait(student, lambda d: "1 case" in _text(d, "#case-count"), what="the student's list")
        assert not student.find_elements(By.ID, "prepare-class")
    finally:
        teacher.quit()
        student.quit()
