"""What a student's request may name: only resources the teacher published.

The archive decides (``Archive.student_may_see``, ``Query.students``); this module applies
it to the web's routes. A resource a student may not see is answered exactly as an unknown
one (404, same message), so its existence is not given away.
"""

from __future__ import annotations

from aiohttp import web

from ..archive import Archive, Level, NotFound
from .keys import ARCHIVE

_LEVEL_OF_SEGMENT = {lvl.plural: lvl for lvl in Level}


def _named(request: web.Request) -> tuple[Level, str] | None:
    """The resource a REST route names by its public ID (``/{level}/{id}/...``, ``/instances/{id}/...``,
    and our own ``/pipacs/{level}/{id}/...``): asked on every student request, so plain look-ups."""
    mi = request.match_info
    public_id = mi.get("id")
    if public_id is None:
        return None
    parts = request.path.split("/", 3)
    segment = mi.get("level") or (parts[2] if parts[1] == "pipacs" and len(parts) > 2 else parts[1])
    level = _LEVEL_OF_SEGMENT.get(segment)
    return None if level is None else (level, public_id)


async def check_student_request(request: web.Request) -> None:
    """Raise NotFound when a student's request names a resource they may not see."""
    named = _named(request)
    if named is None:
        return
    level, public_id = named
    archive: Archive = request.app[ARCHIVE]
    if not await archive.student_may_see(level, public_id):
        raise NotFound(f"no {level.title.lower()} {public_id}")
