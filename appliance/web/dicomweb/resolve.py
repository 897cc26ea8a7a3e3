"""The instances a DICOMweb URL names by its UIDs, and the frame lists in its path."""

from __future__ import annotations

import re

from aiohttp import web

from ...archive import Archive, FindError, Level, Resource, build_query
from .. import holdback
from ..access import is_student
from ..errors import PARAMETER_OUT_OF_RANGE, BadRequestBody, ItemNotFound
from ..images import Target
from ..keys import ARCHIVE

UID = re.compile(r"[0-9.]{1,64}")


def check_uid(what: str, uid: str) -> None:
    """A UID named by a URL path: digits and dots, at most 64 (PS3.5 9.1). A wildcard or a list
    there would be matched as one by the query engine: refused (400) rather than widened."""
    if not UID.fullmatch(uid):
        raise web.HTTPBadRequest(text=f"{uid[:80]!r} is not a {what} UID: digits and dots, at most 64")


async def resolve(archive: Archive, study: str | None, series: str | None = None, instance: str | None = None,
                  students: bool = False) -> list[Resource]:
    """The instances under the given UIDs (in index order); NotFound when nothing matches (or, for
    ``students``, nothing the teacher published). ``study`` (and ``series``) may be None when
    ``instance`` is given: WADO-URI's objectUID alone names an instance."""
    for what, uid in (("study", study), ("series", series), ("instance", instance)):
        if uid is not None:
            check_uid(what, uid)
    items = {"StudyInstanceUID": study} if study is not None else {}
    level = Level.STUDY
    if series:
        items["SeriesInstanceUID"] = series
        level = Level.SERIES
    if instance:
        items["SOPInstanceUID"] = instance
        level = Level.INSTANCE
    try:
        q = build_query(level, items)
        q.students = students
        ids = await archive.find(q)
    except FindError as e:
        raise web.HTTPBadRequest(text=str(e)) from None
    if not ids:
        raise ItemNotFound(f"no {level.title.lower()} with these UIDs")   # Orthanc's plugin: code 7
    inst: list[int] = []
    for rid in ids:
        inst += await archive.index.descendant_instances(rid)
    return await archive.index.resources_by_ids(inst)


async def resolve_request(request: web.Request) -> list[Resource]:
    """The instances the URL's {study}, {series} and {instance} name, as the caller may see them."""
    m = request.match_info
    return await resolve(request.app[ARCHIVE], m["study"], m.get("series"), m.get("instance"),
                         students=is_student(request))


async def one_instance(request: web.Request) -> Target:
    """The instance of a .../studies/{study}/series/{series}/instances/{instance}/... URL, with its file."""
    archive: Archive = request.app[ARCHIVE]
    res = (await resolve_request(request))[0]
    f = (await archive.index.files([res.id]))[res.id]
    await holdback.refuse_mask(request, res)       # frames, rendered, thumbnail, bulk of a held-back mask
    return Target(archive, res, f[0])


def frame_list(text: str) -> list[int]:
    """Frame numbers from a path segment such as ``1,3,5`` (numbered from 1)."""
    try:
        frames = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise web.HTTPBadRequest(text=f"frame list {text!r} must be numbers separated by commas") from None
    if not frames or min(frames) < 1:
        raise BadRequestBody("frames are numbered from 1", PARAMETER_OUT_OF_RANGE)
    return frames
