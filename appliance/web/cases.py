"""Teaching cases over REST (pipacs's own routes; Orthanc has no cases): list and search,
the vocabulary, create, read, change, delete, publish. The archive does the work; these handlers
read the request, check the body with the archive's case rules and hide drafts from students (404,
as an unknown case: their existence is not told)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..archive import (
    BODY_REGIONS,
    CATEGORIES,
    DIFFICULTIES,
    LABEL,
    LABEL_RULE,
    STATES,
    Archive,
    CaseQuery,
    CaseStale,
    merge_update,
    vocabulary,
)
from ..teaching.casereading import readable_case
from ..teaching.keystore import withdraw_key_objects
from . import holdback
from .access import caller, is_student
from .errors import BadArgument, BadRequestBody
from .keys import ARCHIVE
from .resources import body_text, flag, int_arg, json_response, parse_json

routes = web.RouteTableDef()

MAX_CASE_LIMIT = 1000         # cases in one page of GET /cases
DEFAULT_CASE_LIMIT = 100
MAX_QUERY_CHARS = 1000        # ?q=
MAX_CASE_BODY = 8 * 2**20     # bytes of a POST/PUT /cases body (far above a real case; the board's RAM is small)
_FILTERS = {"body-region": BODY_REGIONS, "category": CATEGORIES, "difficulty": DIFFICULTIES}


def case_query(query: Any, student: bool) -> CaseQuery:
    """GET /cases's arguments as the archive's CaseQuery (a BadArgument naming the one that is wrong).
    A student's list is the published cases whatever ``state`` says."""
    q = CaseQuery(students=student)
    text = query.get("q", "")
    if len(text) > MAX_QUERY_CHARS:
        raise BadArgument(f"the argument 'q' is at most {MAX_QUERY_CHARS} characters ({len(text)} given)")
    q.text = text
    for name, allowed in _FILTERS.items():
        value = query.get(name, "")
        if value and value not in allowed:
            raise BadArgument(f"the argument {name!r} is one of: {', '.join(allowed)}")
        setattr(q, name.replace("-", "_"), value)
    collection = query.get("collection", "")
    if collection and not LABEL.fullmatch(collection):
        raise BadArgument(f"the argument 'collection' is a collection name: {LABEL_RULE}")
    q.collection = collection
    modality = query.get("modality", "")
    if len(modality) > 16:
        raise BadArgument("the argument 'modality' is a DICOM modality (CT, MR, ...)")
    q.modality = modality
    state = query.get("state", "")
    if state and state not in STATES:
        raise BadArgument(f"the argument 'state' is one of: {', '.join(STATES)}")
    q.state = "" if student else state
    return q


async def case_body(request: web.Request) -> dict[str, Any]:
    """A case body: a JSON object of at most MAX_CASE_BODY bytes (413 beyond, read no further)."""
    text = await body_text(request, MAX_CASE_BODY)
    try:
        body = parse_json(text)
    except json.JSONDecodeError as e:
        raise BadRequestBody(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequestBody("the request body must be a JSON object (a case document)")
    return body


def _case_id(request: web.Request) -> str:
    return request.match_info["id"]


async def _readable_case(request: web.Request) -> dict[str, Any]:
    """The case the route names; a draft is an unknown case to a student."""
    return await readable_case(request.app[ARCHIVE], _case_id(request), is_student(request))


@routes.get("/cases")
async def list_cases(request: web.Request) -> web.Response:
    """Case IDs (``?expand``: summaries), ranked when ``q`` is given, newest first otherwise;
    X-Total-Count says how many match in all."""
    q = case_query(request.query, is_student(request))
    q.since = int_arg(request, "since")
    q.limit = int_arg(request, "limit", DEFAULT_CASE_LIMIT)
    if q.limit > MAX_CASE_LIMIT or q.limit == 0:
        raise BadArgument(f"the argument 'limit' is from 1 to {MAX_CASE_LIMIT}")
    summaries, total = await request.app[ARCHIVE].list_cases(q)
    body = summaries if flag(request, "expand") else [s["ID"] for s in summaries]
    resp = json_response(body)
    resp.headers["X-Total-Count"] = str(total)
    return resp


@routes.get("/cases/vocabulary")
async def case_vocabulary(request: web.Request) -> web.Response:
    return json_response(vocabulary())


@routes.post("/cases")
async def create_case(request: web.Request) -> web.Response:
    """A new case; checked once, by the archive (on a thread when the body is big)."""
    body = await case_body(request)
    who = caller(request)
    if "Author" not in body and who.via in ("basic", "session"):   # the teacher signed in, unless told
        body["Author"] = who.user
    return json_response(await request.app[ARCHIVE].create_case(body, new=True))


@routes.get("/cases/{id}")
async def get_case(request: web.Request) -> web.Response:
    """The case; a student's copy of an unknown case in a teaching session without its answer
    (``holdback.student_case``)."""
    return json_response(holdback.student_case(request, await _readable_case(request)))


@routes.put("/cases/{id}")
async def update_case(request: web.Request) -> web.Response:
    """The fields given replace theirs; the others are kept. With "Updated" (as read), a case
    changed since is a 409 and nothing is written: the page reloads it and merges."""
    archive: Archive = request.app[ARCHIVE]
    body = await case_body(request)

    def change(stored: dict[str, Any]) -> dict[str, Any]:
        # "Updated": the value the page read; another writer since (a TCE key image, another page) -> 409
        if "Updated" in body and body["Updated"] != stored["Updated"]:
            raise CaseStale()
        return merge_update(stored, body)

    return json_response(await archive.modify_case(_case_id(request), change))


@routes.delete("/cases/{id}")
async def delete_case(request: web.Request) -> web.Response:
    await request.app[ARCHIVE].delete_case(_case_id(request))
    await withdraw_key_objects(request.app[ARCHIVE], _case_id(request))   # its stored KOS/GSPS (teaching.keystore)
    return json_response({})


@routes.post("/cases/{id}/publish")
async def publish_case(request: web.Request) -> web.Response:
    return json_response(await request.app[ARCHIVE].set_case_state(_case_id(request), "published"))


@routes.post("/cases/{id}/unpublish")
async def unpublish_case(request: web.Request) -> web.Response:
    doc = await request.app[ARCHIVE].set_case_state(_case_id(request), "draft")
    await withdraw_key_objects(request.app[ARCHIVE], _case_id(request))   # its stored KOS/GSPS (teaching.keystore)
    return json_response(doc)

