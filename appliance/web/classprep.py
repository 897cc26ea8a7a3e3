"""Prepare for today's class: the teacher names cases, collections and studies; every series of them
is made into the class cache (stack document and every frame's pixels, exactly as the viewer's
routes make them, through ``stack.warm_series``), so at 8 a.m. thirty students hit a warm cache.

One preparation at a time (a new one replaces the one running), in the background, cancellable,
with its progress in frames (``warm_series`` reports each frame); a problem is said in ``Message`` as
a sentence for the teacher, the details go to the log. The job says what it is for ("For": the names
asked for, "Title": them in words, "Finished": when it ended), so a case's page shows only its own
preparation and asks before replacing one made for something else. The disk tier keeps what was
prepared across a restart.

    POST   /pipacs/class/prepare {"Cases": [...], "Collections": [...], "Studies": [...]} -> 202
    GET    /pipacs/class/prepare  -> the state, what it is for, the progress and the cache's stats
    DELETE /pipacs/class/prepare  -> stops it
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..archive import MAX_STUDIES, Archive, CaseQuery, Level, NotFound, Resource, label_problem
from .classcache import CLASS_CACHE
from .errors import BadRequestBody
from .keys import ARCHIVE
from .resources import json_body, json_response

__all__ = ["routes", "PREPARATION", "Preparation", "series_to_prepare", "validate_request", "MAX_NAMES"]

log = logging.getLogger("pipacs.classprep")
routes = web.RouteTableDef()

MAX_NAMES = MAX_STUDIES    # cases, collections or studies one request may name (each list)
MAX_BODY_BYTES = 64 * 1024  # a POST body: 3 x 100 names fit many times over

# stack.warm_series(app, series, on_frame=None): on_frame(bytes) once per frame made or found
Warm = Callable[..., Awaitable[int]]


@dataclass
class Preparation:
    """The one preparation of this server: what it does and how far it got."""
    state: str = "idle"                 # idle | running | done | failed
    series: int = 0
    series_done: int = 0
    frames: int = 0                     # frames of those series (NumberOfFrames of each instance)
    frames_done: int = 0
    bytes: int = 0
    message: str = ""
    wanted: dict[str, list[str]] = field(default_factory=dict)   # "For": the names the POST gave
    title: str = ""                     # them in words: 'the case "Chest CT"', "the collection Session3"
    finished: str | None = None         # when it ended (done or failed), ISO 8601 UTC
    task: asyncio.Task | None = field(default=None, repr=False)

    def status(self, cache_stats: dict) -> dict[str, Any]:
        return {"State": self.state, "For": self.wanted, "Title": self.title, "Finished": self.finished,
                "Series": self.series, "SeriesDone": self.series_done,
                "Frames": self.frames, "FramesDone": self.frames_done, "Bytes": self.bytes,
                "Message": self.message, "Cache": cache_stats}


PREPARATION = web.AppKey("class_preparation", Preparation)
STARTING = web.AppKey("class_preparation_lock", asyncio.Lock)   # two POSTs at once: one replaces the other


def validate_request(body: Any) -> dict[str, list[str]]:
    """The body of a POST: up to three lists of names (strings), at least one name in all."""
    if not isinstance(body, dict):
        raise BadRequestBody('expected a JSON object such as {"Cases": ["case id"], "Collections": ["label"], '
                             '"Studies": ["study id"]}')
    unknown = sorted(set(body) - {"Cases", "Collections", "Studies"})
    if unknown:
        raise BadRequestBody(f"{unknown[0]} is not something to prepare: give Cases, Collections or Studies")
    out: dict[str, list[str]] = {}
    for name in ("Cases", "Collections", "Studies"):
        value = body.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise BadRequestBody(f"{name} must be a list of names (strings)")
        if len(value) > MAX_NAMES:
            raise BadRequestBody(f"{name} names {len(value)}; at most {MAX_NAMES} at once")
        if name == "Collections":
            for label in value:
                problem = label_problem(label)
                if problem is not None:
                    raise BadRequestBody(f"{label[:80]!r} is not a collection name: {problem}")
        out[name] = list(dict.fromkeys(value))
    if not any(out.values()):
        raise BadRequestBody("nothing to prepare: name at least one case, collection or study")
    return out


async def series_to_prepare(archive: Archive, wanted: dict[str, list[str]]) -> list[Resource]:
    """Every series of the named cases (their studies), collections (the cases in that collection and
    the studies with that label) and studies, each once, in that order. NotFound for an unknown case
    or study, with its name."""
    studies: list[str] = []
    for case_id in wanted.get("Cases", []):
        studies += (await archive.get_case(case_id))["Studies"]
    for label in wanted.get("Collections", []):
        cases, _ = await archive.list_cases(CaseQuery(collection=label, limit=0))
        for case in cases:
            studies += case["Studies"]
        labelled = await archive.find_request(Level.STUDY, {}, labels=[label])
        studies += [r.public_id for r in await archive.index.resources_by_ids(labelled)]
    studies += wanted.get("Studies", [])
    series: dict[int, Resource] = {}
    for public_id in dict.fromkeys(studies):
        try:
            study = await archive.get(Level.STUDY, public_id)
        except NotFound:
            if public_id in wanted.get("Studies", []):
                raise
            log.info("class preparation: study %s of a case is no longer on the board", public_id)
            continue
        for s in await archive.index.children(study.id):
            series.setdefault(s.id, s)
    return list(series.values())


async def title_of(archive: Archive, wanted: dict[str, list[str]]) -> str:
    """What a preparation is for, in words for the teacher: 'the case "Chest CT"', "the collection
    Session3", "the study Thorax", or the first of them and how many more."""
    names: list[str] = []
    for case_id in wanted.get("Cases", []):
        try:
            title = (await archive.get_case(case_id)).get("Title") or "untitled"
        except NotFound:
            title = case_id
        names.append(f'the case "{title}"')
    names += [f"the collection {label}" for label in wanted.get("Collections", [])]
    for study_id in wanted.get("Studies", []):
        try:
            tags = await archive.index.main_tags([(await archive.get(Level.STUDY, study_id)).id])
            described = next(iter(tags.values()), {}).get("0008,1030") or study_id   # StudyDescription
        except NotFound:
            described = study_id
        names.append(f"the study {described}")
    if len(names) <= 2:
        return " and ".join(names)
    return f"{names[0]} and {len(names) - 1} more"


def _counts_frames(warm: Warm) -> bool:
    """Whether ``warm`` takes on_frame (contract 3); an older one is counted a series at a time."""
    try:
        return "on_frame" in inspect.signature(warm).parameters
    except (TypeError, ValueError):
        return False


async def _run(app: web.Application, job: Preparation, series: list[tuple[Resource, int]], warm: Warm) -> None:
    failed: list[str] = []
    per_frame = _counts_frames(warm)
    try:
        before = 0                      # frames of the series already done
        for s, frames in series:
            made = 0

            def on_frame(_size: int, frames: int = frames, before: int = before) -> None:
                nonlocal made
                made += 1
                job.frames_done = before + min(made, frames)
            try:
                job.bytes += await (warm(app, s, on_frame=on_frame) if per_frame else warm(app, s))
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except NotFound:
                failed.append(f"series {s.public_id} was deleted while it was being prepared")
            except Exception as e:  # one series' problem is said; the others are prepared
                log.warning("class preparation: series %s failed", s.public_id, exc_info=e)
                failed.append(f"series {s.public_id} could not be prepared (the log says why)")
            job.series_done += 1
            before += frames
            job.frames_done = before
        done = f"{job.series_done - len(failed)} of {job.series} series ready for class ({_size(job.bytes)})."
        if failed and len(failed) == job.series:
            job.state, job.message = "failed", "No series could be prepared: " + "; ".join(failed[:3]) + "."
        else:
            job.state = "done"
            job.message = done + (" Not ready: " + "; ".join(failed[:3]) + "." if failed else "")
        job.finished = _now()
    except asyncio.CancelledError:
        if job.state == "running":
            job.state = "idle"
            job.message = f"Stopped after {job.series_done} of {job.series} series."
        raise
    except Exception as e:  # the teacher gets a sentence, the log the details
        log.error("class preparation failed", exc_info=e)
        job.state, job.message = "failed", (f"The preparation stopped after {job.series_done} of {job.series} "
                                            "series because of an error in the board; its log has the details.")
        job.finished = _now()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def frames_of(archive: Archive, series: Resource) -> int:
    """The frames of a series: each instance's NumberOfFrames (the index's), 1 when it has none."""
    ids = await archive.index.descendant_instances(series.id)
    tags = await archive.index.main_tags(ids) if ids else {}
    total = 0
    for i in ids:
        n = tags.get(i, {}).get("0028,0008") or "1"   # NumberOfFrames
        total += max(1, int(n)) if n.strip().isdigit() else 1
    return total


async def start(app: web.Application, series: list[Resource], warm: Warm | None = None,
                wanted: dict[str, list[str]] | None = None, title: str = "") -> Preparation:
    """Replace the preparation running (if any) by one over ``series`` (for ``wanted``, in words
    ``title``); returns it, running."""
    async with app[STARTING]:
        await stop(app)
        archive: Archive = app[ARCHIVE]
        counted = [(s, await frames_of(archive, s)) for s in series]
        job = Preparation(state="running", series=len(series), frames=sum(n for _, n in counted),
                          wanted=wanted or {}, title=title)
        job.message = f"Preparing {len(series)} series ({job.frames} frames) for class."
        app[PREPARATION] = job
        job.task = asyncio.create_task(_run(app, job, counted, warm or _warm_series), name="class-prepare")
        return job


async def stop(app: web.Application) -> Preparation:
    """Stop the preparation running (what it made stays in the cache)."""
    job = app.get(PREPARATION)
    if job is None:
        job = app[PREPARATION] = Preparation()
    if job.task is not None and not job.task.done():
        job.task.cancel()
        try:
            await job.task
        except asyncio.CancelledError:
            pass
    return job


async def _warm_series(app: web.Application, series: Resource,
                       on_frame: Callable[[int], None] | None = None) -> int:
    from .pixels import warm_series
    if on_frame is not None and _counts_frames(warm_series):
        return await warm_series(app, series, on_frame=on_frame)
    return await warm_series(app, series)   # before contract 3: counted a series at a time


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


async def _cleanup(app: web.Application) -> None:
    await stop(app)


def install(app: web.Application) -> None:
    """The routes and the state; the running preparation is stopped when the server closes."""
    app[PREPARATION] = Preparation()
    app[STARTING] = asyncio.Lock()
    app.on_cleanup.append(_cleanup)
    app.add_routes(routes)


@routes.post("/pipacs/class/prepare")
async def prepare(request: web.Request) -> web.Response:
    wanted = validate_request(await json_body(request, want=dict, max_bytes=MAX_BODY_BYTES))
    archive: Archive = request.app[ARCHIVE]
    series = await series_to_prepare(archive, wanted)
    if not series:
        raise BadRequestBody("nothing to prepare: the cases, collections and studies named have no series")
    job = await start(request.app, series, wanted=wanted, title=await title_of(archive, wanted))
    return json_response({"Series": job.series, "State": job.state}, status=202)


@routes.get("/pipacs/class/prepare")
async def prepare_status(request: web.Request) -> web.Response:
    job = request.app[PREPARATION]
    return json_response(job.status(request.app[CLASS_CACHE].stats()))


@routes.delete("/pipacs/class/prepare")
async def prepare_stop(request: web.Request) -> web.Response:
    job = await stop(request.app)
    return json_response(job.status(request.app[CLASS_CACHE].stats()))
