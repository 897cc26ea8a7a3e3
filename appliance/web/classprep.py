"""Prepare for today's class: the teacher names cases, collections and studies; every series of them
is made into the class cache (stack document and every frame's pixels, exactly as the viewer's
routes make them, through ``stack.warm_series``), so at 8 a.m. thirty students hit a warm cache.

One preparation at a time (a new one replaces the one running), in the background, cancellable,
with its progress; a problem is said in ``Message`` as a sentence for the teacher, the details go
to the log. The disk tier keeps what was prepared across a restart.

    POST   /pipacs/class/prepare {"Cases": [...], "Collections": [...], "Studies": [...]} -> 202
    GET    /pipacs/class/prepare  -> the state, the progress and the cache's stats
    DELETE /pipacs/class/prepare  -> stops it
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..archive import LABEL, MAX_STUDIES, Archive, CaseQuery, Level, NotFound, Resource
from .classcache import CLASS_CACHE
from .errors import BadRequestBody
from .keys import ARCHIVE
from .resources import json_response

__all__ = ["routes", "PREPARATION", "Preparation", "series_to_prepare", "validate_request", "MAX_NAMES"]

log = logging.getLogger("pipacs.classprep")
routes = web.RouteTableDef()

MAX_NAMES = MAX_STUDIES    # cases, collections or studies one request may name (each list)

Warm = Callable[[web.Application, Resource], Awaitable[int]]


@dataclass
class Preparation:
    """The one preparation of this server: what it does and how far it got."""
    state: str = "idle"                 # idle | running | done | failed
    series: int = 0
    series_done: int = 0
    frames: int = 0                     # images (instances) of those series
    frames_done: int = 0
    bytes: int = 0
    message: str = ""
    task: asyncio.Task | None = field(default=None, repr=False)

    def status(self, cache_stats: dict) -> dict[str, Any]:
        return {"State": self.state, "Series": self.series, "SeriesDone": self.series_done,
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
                if not LABEL.fullmatch(label):
                    raise BadRequestBody(f"{label[:80]!r} is not a collection name: 1 to 64 letters, digits, "
                                         "'-' or '_'")
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


async def _run(app: web.Application, job: Preparation, series: list[tuple[Resource, int]], warm: Warm) -> None:
    failed: list[str] = []
    try:
        for s, images in series:
            try:
                job.bytes += await warm(app, s)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except NotFound:
                failed.append(f"series {s.public_id} was deleted while it was being prepared")
            except Exception as e:  # one series' problem is said; the others are prepared
                log.warning("class preparation: series %s failed", s.public_id, exc_info=e)
                failed.append(f"series {s.public_id} could not be prepared (the log says why)")
            job.series_done += 1
            job.frames_done += images
        done = f"{job.series_done - len(failed)} of {job.series} series ready for class ({_size(job.bytes)})."
        if failed and len(failed) == job.series:
            job.state, job.message = "failed", "No series could be prepared: " + "; ".join(failed[:3]) + "."
        else:
            job.state = "done"
            job.message = done + (" Not ready: " + "; ".join(failed[:3]) + "." if failed else "")
    except asyncio.CancelledError:
        if job.state == "running":
            job.state = "idle"
            job.message = f"Stopped after {job.series_done} of {job.series} series."
        raise
    except Exception as e:  # the teacher gets a sentence, the log the details
        log.error("class preparation failed", exc_info=e)
        job.state, job.message = "failed", (f"The preparation stopped after {job.series_done} of {job.series} "
                                            "series because of an error in the board; its log has the details.")


async def start(app: web.Application, series: list[Resource], warm: Warm | None = None) -> Preparation:
    """Replace the preparation running (if any) by one over ``series``; returns it, running."""
    async with app[STARTING]:
        await stop(app)
        archive: Archive = app[ARCHIVE]
        counted = [(s, len(await archive.index.descendant_instances(s.id))) for s in series]
        job = Preparation(state="running", series=len(series), frames=sum(n for _, n in counted))
        job.message = f"Preparing {len(series)} series ({job.frames} images) for class."
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


async def _warm_series(app: web.Application, series: Resource) -> int:
    from .stack import warm_series
    return await warm_series(app, series)


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
    wanted = validate_request(await request.json())
    series = await series_to_prepare(request.app[ARCHIVE], wanted)
    if not series:
        raise BadRequestBody("nothing to prepare: the cases, collections and studies named have no series")
    job = await start(request.app, series)
    return json_response({"Series": job.series, "State": job.state}, status=202)


@routes.get("/pipacs/class/prepare")
async def prepare_status(request: web.Request) -> web.Response:
    job = request.app[PREPARATION]
    return json_response(job.status(request.app[CLASS_CACHE].stats()))


@routes.delete("/pipacs/class/prepare")
async def prepare_stop(request: web.Request) -> web.Response:
    job = await stop(request.app)
    return json_response(job.status(request.app[CLASS_CACHE].stats()))
