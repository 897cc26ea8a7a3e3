"""Teaching sessions over REST (pipacs's own routes; README "Teaching sessions"): the teacher makes,
edits, drives (start, pause, end, rerun, reveal, ask) and reads the results; a student joins with
the session's code and a nickname (a seat, kept in the pipacs_seat cookie), reads the session
they are seated in (the student view: no code, no correct answers, no regions) and answers.

The archive keeps the sessions and checks every document and answer (``SessionInvalid`` 400,
``SessionConflict`` 409, ``NotFound`` 404); these handlers read the request, apply who may see
what, and shape the answer. Results are computed by ``teaching.session_results``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

from ..archive import ANSWER_BURST, ANSWER_RATE, MAX_SESSION_BODY, Archive, Level, NotFound, Seat
from ..teaching.session_results import results, results_csv, student_view
from .access import ACCESS, SEAT_COOKIE, caller, is_student, seat_of_request, too_many
from .errors import BadArgument, BadRequestBody
from .keys import ARCHIVE
from .resources import body_text, flag, json_response, parse_json

routes = web.RouteTableDef()

# MAX_SESSION_BODY (the archive's, 1 MiB): bytes of any teaching-session request body, 413 beyond
ANSWERS_ON_THE_LOOP = 2000        # more answer rows than this are summed up on a thread (a class is 60 x 10)
ANSWER_RATES_KEPT = 10_000        # seats whose answer bucket is remembered (the least recent forgotten: full)
_JOIN_FIELDS = ("Code", "Nickname")
_ANSWER_FIELDS = ("Case", "Question", "Answer")


class AnswerRate:
    """Answers per participant: a token bucket of ``burst`` refilled at ``rate`` a second. Each
    answer is a transaction on the card and a message to the presenters, and a resend replaces the
    answer, so without it a looping seat would cost the board writes without end."""

    def __init__(self, rate: float = ANSWER_RATE, burst: int = ANSWER_BURST, kept: int = ANSWER_RATES_KEPT):
        self.rate, self.burst, self.kept = rate, burst, kept
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()   # participant -> (tokens, when)

    def wait(self, participant: str, now: float | None = None) -> float:
        """0: the answer may go (a token taken); else the seconds until the next one may."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(participant, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[participant] = (tokens, now)
        while len(self._buckets) > self.kept:
            self._buckets.popitem(last=False)
        return wait


ANSWER_RATES = web.AppKey("answer_rates", AnswerRate)


def install(app: web.Application) -> None:
    """The routes and the seats' answer buckets."""
    app[ANSWER_RATES] = AnswerRate()
    app.add_routes(routes)


async def session_body(request: web.Request, what: str = "a teaching session document") -> dict[str, Any]:
    """A JSON object of at most MAX_SESSION_BODY bytes (413 beyond, read no further)."""
    text = await body_text(request, MAX_SESSION_BODY)
    if not text.strip():
        raise BadRequestBody(f"the request body must be a JSON object ({what})")
    try:
        body = parse_json(text)
    except json.JSONDecodeError as e:
        raise BadRequestBody(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequestBody(f"the request body must be a JSON object ({what})")
    return body


def _only(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            shown = key if len(key) <= 40 else key[:40] + "..."
            raise BadRequestBody(f"{shown}: not a field here (the fields are {', '.join(allowed)})")


def _session_id(request: web.Request) -> str:
    return request.match_info["id"]


def _index(request: web.Request, name: str = "n") -> int:
    raw = request.match_info[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:     # "²".isdigit(), but int("²") fails
        raise BadArgument(f"the case index in the path is a whole number from 0 ({raw[:16]!r} given)")
    return int(raw)


def _author(request: web.Request) -> str:
    who = caller(request)
    return who.user if who.via in ("basic", "session") else ""


def _seat_in(request: web.Request, session_id: str) -> Seat:
    """The caller's seat in this session; a student without one gets the 404 of an unknown session
    (whether it exists is not told)."""
    seat = caller(request).seat
    if seat is None or seat.session_id != session_id:
        raise NotFound(f"no session {session_id}: join it with the code the teacher shows")
    return seat


async def _as_caller_sees(request: web.Request, doc: dict[str, Any]) -> dict[str, Any]:
    """The teacher's document, or a seated student's view of it with their answers."""
    if not is_student(request):
        return doc
    seat = _seat_in(request, doc["ID"])
    answers = await request.app[ARCHIVE].session_answers(doc["ID"])
    return student_view(doc, seat.participant_id, seat.nickname, answers)


# ---------------------------------------------------------------------- the teacher's routes

@routes.get("/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    """Session IDs newest first (``?expand``: the documents)."""
    docs = await request.app[ARCHIVE].list_sessions()
    return json_response(docs if flag(request, "expand") else [d["ID"] for d in docs])


@routes.post("/sessions")
async def create_session(request: web.Request) -> web.Response:
    """A new session (ready, with its code); the board's fields are the archive's."""
    body = await session_body(request)
    return json_response(await request.app[ARCHIVE].create_session(body, _author(request)))


# before /sessions/{id}: "join" is not a session ID
@routes.post("/sessions/join")
async def join_session(request: web.Request) -> web.Response:
    """A seat: {"Code", "Nickname"} -> the pipacs_seat cookie and {"Session", "Participant",
    "Nickname", "Token"}. Wrong codes are throttled per address (30 a minute: a class behind one
    NAT address makes typos; then 429), in a counter of their own that a right code neither adds
    to nor clears; new seats are capped per address (100 a minute, 429), rejoins are not; the seat
    cookie or header already held is passed on, so a rejoin is the same participant."""
    state = request.app[ACCESS]
    address = request.remote or ""
    wait = state.join_throttle.wait(address)
    if wait:
        return too_many(request, wait, "too many wrong codes")
    body = await session_body(request, 'a seat request: {"Code": "1234", "Nickname": "..."}')
    _only(body, _JOIN_FIELDS)
    code, nickname = body.get("Code"), body.get("Nickname")
    if not isinstance(code, str):
        raise BadRequestBody("Code: the session's code, a string of 4 digits (as the teacher shows it)")
    if not isinstance(nickname, str):
        raise BadRequestBody("Nickname: a string of 1 to 32 characters")
    code = code.strip()
    # asked again once the body is in, with nothing awaited between this check, the archive's
    # NotFound for a wrong code (raised before its first await) and its count: joins sent together
    # with slow bodies all passed the first check, and only 30 of them may guess
    wait = state.join_throttle.wait(address)
    if wait:
        return too_many(request, wait, "too many wrong codes")
    archive: Archive = request.app[ARCHIVE]
    held = seat_of_request(request, state)
    named = archive.session_of_code(code)       # None: a wrong code, the archive's NotFound (counted) below
    rejoin = held is not None and named == held.session_id
    stamp = None
    if named is not None and not rejoin:        # a new seat: counted before the archive's awaits, taken back if none is made
        wait, stamp = state.seat_throttle.attempt(address)
        if wait:
            return too_many(request, wait, "too many new seats from this address")
    made = False
    try:                              # a code that is not 4 digits is as wrong as any (the archive's NotFound)
        seat = await archive.join_session(code, nickname, held.token if rejoin else None)
        made = True
    except NotFound:
        state.join_throttle.failed(address)
        state.audit.record(address, "", "join a teaching session", "refused", "wrong session code")
        raise
    finally:
        if stamp is not None and not made:
            state.seat_throttle.forgive(address, stamp)
    # a right code does not clear the count (as no right answer does): one known code must not
    # reset the count of guesses at the others; nor is it counted (a class behind one address joins)
    resp = json_response({"Session": seat.session_id, "Participant": seat.participant_id,
                          "Nickname": seat.nickname, "Token": seat.token})
    resp.set_cookie(SEAT_COOKIE, seat.token, httponly=True, samesite="Strict", path="/")
    return resp


@routes.get("/sessions/{id}")
async def get_session(request: web.Request) -> web.Response:
    """The teacher: the document; a student: the view of the session they are seated in (else 404)."""
    session_id = _session_id(request)
    if is_student(request):
        _seat_in(request, session_id)           # before reading: a student learns nothing of other sessions
    doc = await request.app[ARCHIVE].get_session(session_id)
    return json_response(await _as_caller_sees(request, doc))


@routes.put("/sessions/{id}")
async def update_session(request: web.Request) -> web.Response:
    """The fields given replace theirs; with "Updated" (as read) a session changed since is a 409."""
    body = await session_body(request)
    expect = body.get("Updated")
    return json_response(await request.app[ARCHIVE].update_session(
        _session_id(request), body, expect_updated=expect if isinstance(expect, str) else None))


@routes.delete("/sessions/{id}")
async def delete_session(request: web.Request) -> web.Response:
    await request.app[ARCHIVE].delete_session(_session_id(request))
    return json_response({})


def _state_route(path: str, state: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        return json_response(await request.app[ARCHIVE].set_session_state(_session_id(request), state))
    handler.__name__ = handler.__qualname__ = f"session_{path}"
    handler.__doc__ = f"POST /sessions/{{id}}/{path}: the session {state} (or 409 saying why not)."
    routes.post(f"/sessions/{{id}}/{path}")(handler)


_state_route("start", "live")
_state_route("pause", "paused")
_state_route("end", "ended")


@routes.post("/sessions/{id}/rerun")
async def rerun_session(request: web.Request) -> web.Response:
    """A copy of the session: ready, a new code, no answers, nothing revealed (201)."""
    doc = await request.app[ARCHIVE].rerun_session(_session_id(request), _author(request))
    return json_response(doc, status=201)


@routes.post("/sessions/{id}/cases/{n}/reveal")
async def reveal_case(request: web.Request) -> web.Response:
    """The case's answer shown to students (never un-revealed); its answers close."""
    return json_response(await request.app[ARCHIVE].reveal_session_case(_session_id(request), _index(request)))


@routes.post("/sessions/{id}/cases/{n}/questions/{q}/ask")
async def ask_question(request: web.Request) -> web.Response:
    """The question on every screen now (the one answers are taken for)."""
    return json_response(await request.app[ARCHIVE].ask_session_question(
        _session_id(request), _index(request), request.match_info["q"]))


@routes.post("/sessions/{id}/close-question")
async def close_question(request: web.Request) -> web.Response:
    return json_response(await request.app[ARCHIVE].close_session_question(_session_id(request)))


# ---------------------------------------------------------------------- answers

@routes.post("/sessions/{id}/answers")
async def answer(request: web.Request) -> web.Response:
    """A seated student's answer {"Case": n, "Question": id, "Answer": ...} -> the stored row; a
    second answer to the same question replaces the first until the case is revealed."""
    session_id = _session_id(request)
    seat = _seat_in(request, session_id)
    wait = request.app[ANSWER_RATES].wait(seat.participant_id)
    if wait:
        return too_many(request, wait, f"too many answers: at most {ANSWER_RATE:g} a second")
    body = await session_body(request, 'an answer: {"Case": 0, "Question": "q1", "Answer": ...}')
    _only(body, _ANSWER_FIELDS)
    for name in _ANSWER_FIELDS:
        if name not in body:
            raise BadRequestBody(f"{name}: missing (an answer is {{\"Case\", \"Question\", \"Answer\"}})")
    case = body["Case"]
    if not isinstance(case, int) or isinstance(case, bool) or case < 0:
        raise BadRequestBody("Case: the case's index in the session, a whole number from 0")
    if not isinstance(body["Question"], str):
        raise BadRequestBody("Question: the question's ID, a string")
    row = await request.app[ARCHIVE].record_answer(session_id, seat.participant_id, case, body["Question"],
                                                   body["Answer"])
    return json_response(row)


# ---------------------------------------------------------------------- results

async def results_inputs(archive: Archive, doc: dict[str, Any]
                         ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, tuple[int, int]]]:
    """What ``session_results.results`` needs beside the document: the answer rows, the cases'
    documents (a case deleted since is left out) and the key images' sizes (Columns, Rows)."""
    answers = await archive.session_answers(doc["ID"])
    cases: dict[str, dict[str, Any]] = {}
    for entry in doc.get("Cases") or []:
        if entry.get("Missing") or entry["Case"] in cases:
            continue
        try:
            cases[entry["Case"]] = await archive.get_case(entry["Case"])
        except NotFound:
            continue
    sizes: dict[str, tuple[int, int]] = {}
    for entry in doc.get("Cases") or []:
        case = cases.get(entry["Case"])
        for q in entry.get("Questions") or []:
            k = q.get("KeyImage", 0) or 0
            images = (case or {}).get("KeyImages") or []
            if q.get("Type") != "tap" or not 0 <= k < len(images) or images[k]["Instance"] in sizes:
                continue
            instance = images[k]["Instance"]
            try:
                tags = await archive.main_tags_of(Level.INSTANCE, instance)
                sizes[instance] = (int(tags.get("0028,0011") or 0), int(tags.get("0028,0010") or 0))
            except (NotFound, ValueError):
                continue
    return answers, cases, sizes


async def session_results(archive: Archive, session_id: str) -> dict[str, Any]:
    """The results of a session (GET /sessions/{id}/results), for any caller of the teacher's."""
    doc = await archive.get_session(session_id)
    answers, cases, sizes = await results_inputs(archive, doc)
    if len(answers) > ANSWERS_ON_THE_LOOP:
        return await asyncio.to_thread(results, doc, answers, cases, sizes)
    return results(doc, answers, cases, sizes)


@routes.get("/sessions/{id}/results")
async def get_results(request: web.Request) -> web.Response:
    return json_response(await session_results(request.app[ARCHIVE], _session_id(request)))


async def session_results_csv(archive: Archive, session_id: str) -> tuple[dict[str, Any], str]:
    """The session's document and its results as CSV text (GET /sessions/{id}/results.csv)."""
    doc = await archive.get_session(session_id)
    answers, cases, _ = await results_inputs(archive, doc)
    if len(answers) > ANSWERS_ON_THE_LOOP:
        return doc, await asyncio.to_thread(results_csv, doc, answers, cases)
    return doc, results_csv(doc, answers, cases)


@routes.get("/sessions/{id}/results.csv")
async def get_results_csv(request: web.Request) -> web.Response:
    """One row per answer (UTF-8 with BOM, for Excel), as a download named after the session."""
    doc, text = await session_results_csv(request.app[ARCHIVE], _session_id(request))
    return web.Response(body=text.encode("utf-8"), headers={
        "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="session-{doc["ID"]}-results.csv"'})
