"""Classroom access: who is calling (teacher or student), what each route needs, and the checks
that go with it (throttled sign-in, cross-site forgery, the audit trail).

One table, ``ROUTE_NEEDS``, decides for every route and method which role it needs; a route
missing from it is refused (a test walks the router so that none is). A teacher is anyone
signed in (a cookie session from the pages, or HTTP Basic for Orthanc scripts) as one of
``RegisteredUsers`` or with the password pipacs keeps. A student is anyone else, when
``StudentAccess`` lets them in: ``open`` (no login: iPad DICOM apps cannot log in), ``code``
(a room code the browser keeps in a cookie) or ``off``. With ``AuthenticationEnabled`` false
(a laptop, loopback only) every caller is the teacher, as in Orthanc.

What a student may see is decided by the archive (``Query.students``, ``visible_to_students``):
this module only says who is a student.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hmac
import ipaddress
import json
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BasicAuth, web

from ..accounts import MAX_PASSWORD_BYTES, TEACHER, PasswordRejected, Teachers
from ..archive import Seat
from ..audit import Audit
from .access_state import NEW_SEATS, ROOM_CODE_FAILURES, SESSION_CODE_FAILURES, Sessions, Throttle
from .errors import error_response
from .visibility import check_student_request

LOCAL_TOKEN_HEADER = "X-Pipacs-Local-Token"   # commands on the board itself (accounts.make_local_token)
SESSION_COOKIE = "pipacs_session"
ROOM_COOKIE = "pipacs_room"
SEAT_COOKIE = "pipacs_seat"          # a student's seat in a teaching session (web/teaching_sessions.py)
SEAT_HEADER = "X-Pipacs-Seat"        # the same token from a client that keeps no cookies
MAX_SEAT_TOKEN = 128                 # characters; a seat token is 32 (secrets.token_urlsafe(24))
CSRF_HEADER = "X-Pipacs-CSRF"
PAGE_HEADER = "X-Requested-With"     # our pages send "pipacs": no browser login dialog for them
MAX_CREDENTIALS_BODY = 4096          # a sign-in request's body, in bytes
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Role(enum.IntEnum):
    ANYONE = 0
    STUDENT = 1
    TEACHER = 2


class Download(enum.Enum):
    """A student when the teacher allows downloads (``StudentDownloads``), else the teacher."""
    ALLOWED = "download"


DOWNLOAD = Download.ALLOWED


@dataclass(frozen=True)
class By:
    """The need depends on a path parameter (``{action}`` of ``POST /{level}/{id}/{action}``)."""
    param: str
    needs: Mapping[str, Role | Download]
    otherwise: Role | Download = Role.TEACHER


Need = Role | Download | By


@dataclass
class Caller:
    role: Role
    user: str = ""
    via: str = ""              # "local" | "basic" | "session" | "seat" | "open" | "code" | ""
    session_token: str = ""
    csrf: str = ""
    seat: Seat | None = None   # via "seat": the teaching-session seat (session_id, participant_id, nickname, token)

    @property
    def is_student(self) -> bool:
        """Reads are limited to what the teacher published."""
        return self.role == Role.STUDENT


@dataclass
class AccessState:
    """Everything access keeps while the server runs."""
    teachers: Teachers
    student_access: str = "open"
    student_downloads: bool = True
    authentication: bool = True
    room_code: str = ""
    sessions: Sessions = field(default_factory=Sessions)
    throttle: Throttle = field(default_factory=Throttle)
    audit: Audit = field(default_factory=Audit)
    room_key: bytes = b""
    local_token: str = ""       # empty: no command on the board may call as the teacher
    # a teaching session's seat by its token (Archive.seat_of, synchronous, in memory; set when the
    # app is built): None for no seat. A seat makes its holder a student whatever StudentAccess says.
    seat_of: Callable[[str], Seat | None] | None = None
    # each its own counter, so one kind of try never spends or clears another's (a student who
    # knows the room code cannot use it to reset the count of guesses at the teacher's password)
    room_throttle: Throttle = field(default_factory=lambda: Throttle(ROOM_CODE_FAILURES))   # wrong room codes
    join_throttle: Throttle = field(default_factory=lambda: Throttle(SESSION_CODE_FAILURES))  # wrong session codes
    seat_throttle: Throttle = field(default_factory=lambda: Throttle(NEW_SEATS))   # new seats per address
    # scrypt checks under way, by a keyed digest of (user, password): the same credentials sent
    # together (a DICOMweb client's parallel requests) wait for one check and count as one try
    checking: dict[bytes, asyncio.Future[bool]] = field(default_factory=dict)
    checking_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def room_token(self) -> str:
        return hmac.new(self.room_key, self.room_code.encode(), "sha256").hexdigest() if self.room_code else ""


ACCESS = web.AppKey("access", AccessState)
CALLER = "pipacs.caller"       # request key: the Caller


def caller(request: web.Request) -> Caller:
    """Who is calling (set by the middleware before any handler runs)."""
    return request[CALLER]


def is_student(request: web.Request) -> bool:
    c = request.get(CALLER)
    return c is not None and c.is_student


def need_of(request: web.Request, table: Mapping[tuple[str, str], Need]) -> Role | Download | None:
    """The role this request's route needs; None for a route missing from the table."""
    if getattr(request.match_info, "http_exception", None) is not None:
        return Role.ANYONE        # no route matched (404), or not with this method (405): aiohttp answers
    resource = request.match_info.route.resource
    if resource is None:
        return Role.ANYONE
    method = "GET" if request.method == "HEAD" else request.method
    need = table.get((method, resource.canonical))
    if isinstance(need, By):
        return need.needs.get(request.match_info.get(need.param, ""), need.otherwise)
    return need


# scrypt checks at once (16 MiB and a tenth of a second of a Pi's core each): more wait their turn
HASHING_AT_ONCE = 2
_hashing = asyncio.Semaphore(HASHING_AT_ONCE)


async def check_teacher(state: AccessState, user: str, password: str) -> bool:
    """A teacher's credentials, hashed off the event loop when they must be (the service stays
    responsive while someone tries passwords). Not throttled: ``try_teacher`` is, for requests."""
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        return False
    quick = state.teachers.quick_check(user, password)
    if quick is not None:
        return quick
    async with _hashing:
        return await asyncio.to_thread(state.teachers.check, user, password)


async def try_teacher(state: AccessState, address: str, user: str, password: str) -> tuple[bool, float]:
    """``(right, wait)`` for a sign-in try from ``address``; ``wait`` > 0: refused unasked (429).

    Everything up to the count is synchronous, so tries sent together cannot pass the check
    before the first is counted: the throttle first (a throttled address is refused even a right
    password, or its 429s would tell a remembered password from a wrong one), then ``quick_check``
    (a right answer it knows is not counted; a wrong one is), then, when only scrypt can tell, the
    try is counted before the hash and forgiven (its own count only) when right. The same
    credentials already being hashed wait for that hash, counted after it only when wrong (the
    same guess, so nothing is learnt meanwhile): 30 parallel requests with the right password on
    a cold cache are one try, not 30, and 30 with a wrong one are still 10 tries and 20 refusals."""
    wait = state.throttle.wait(address)
    if wait:
        return False, wait
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        state.throttle.failed(address)
        return False, 0.0
    quick = state.teachers.quick_check(user, password)
    if quick is True:
        return True, 0.0
    if quick is False:
        state.throttle.failed(address)
        return False, 0.0
    key = hmac.new(state.checking_key, f"{user}\0{password}".encode("utf-8", "surrogatepass"), "sha256").digest()
    pending = state.checking.get(key)
    if pending is not None:       # the same guess: it learns nothing new, but a wrong one still counts
        if await asyncio.shield(pending):
            return True, 0.0
        return False, state.throttle.attempt(address)[0]
    wait, stamp = state.throttle.attempt(address)
    if wait:
        return False, wait
    pending = asyncio.ensure_future(check_teacher(state, user, password))
    state.checking[key] = pending
    pending.add_done_callback(lambda _: state.checking.pop(key, None))
    right = await asyncio.shield(pending)
    if right:
        state.throttle.forgive(address, stamp)
    return right, 0.0


async def identify(request: web.Request, state: AccessState) -> Caller | web.Response:
    """The caller, or the answer that refuses them (bad or throttled credentials)."""
    if not state.authentication:
        return Caller(Role.TEACHER, via="local")
    address = request.remote or ""
    local = request.headers.get(LOCAL_TOKEN_HEADER)
    if local is not None and state.local_token and is_loopback(request.remote) \
            and hmac.compare_digest(local.encode("utf-8", "surrogatepass"), state.local_token.encode()):
        return Caller(Role.TEACHER, "local", "token")
    header = request.headers.get("Authorization")
    if header is not None:
        try:
            creds = BasicAuth.decode(header, encoding="utf-8")
        except ValueError:
            creds = None
        right, wait = await try_teacher(state, address, creds.login, creds.password) if creds is not None \
            else (False, state.throttle.attempt(address)[0])
        if wait:
            return too_many(request, wait, "too many attempts")
        if right:
            return Caller(Role.TEACHER, creds.login, "basic")
        state.audit.record(address, creds.login[:64] if creds else "", f"{request.method} {request.path}",
                           "refused", "wrong user or password (HTTP Basic)")
        return _unauthorized(request, "wrong user name or password")
    raw_cookies = request.headers.get("Cookie", "")
    token = cookie_value(raw_cookies, SESSION_COOKIE)
    if token:
        session = state.sessions.get(token)
        if session is not None:
            return Caller(Role.TEACHER, session.user, "session", token, session.csrf)
    seat = seat_of_request(request, state, raw_cookies)
    if seat is not None:      # the join code was the teacher's invitation, for that session's life
        return Caller(Role.STUDENT, via="seat", seat=seat)
    if state.student_access == "open":
        return Caller(Role.STUDENT, via="open")
    if state.student_access == "code":
        room = cookie_value(raw_cookies, ROOM_COOKIE)
        expected = state.room_token()
        if room and expected and hmac.compare_digest(room.encode(), expected.encode()):
            return Caller(Role.STUDENT, via="code")
    return Caller(Role.ANYONE)


def seat_token_of(request: web.Request, raw_cookies: str | None = None) -> str:
    """The seat token a request carries: the pipacs_seat cookie, else the X-Pipacs-Seat header."""
    raw = request.headers.get("Cookie", "") if raw_cookies is None else raw_cookies
    return cookie_value(raw, SEAT_COOKIE) or request.headers.get(SEAT_HEADER, "").strip()


def seat_of_request(request: web.Request, state: AccessState, raw_cookies: str | None = None) -> Seat | None:
    """The seat the request's token names (the archive keeps them in memory), or None."""
    token = seat_token_of(request, raw_cookies)
    if not token or len(token) > MAX_SEAT_TOKEN or state.seat_of is None:
        return None
    return state.seat_of(token)


def cookie_value(header: str, name: str) -> str:
    """One cookie's value from a Cookie header (RFC 6265: ``a=b; c=d``), without parsing the
    rest: asked on every request, where aiohttp's ``request.cookies`` builds a SimpleCookie."""
    if name not in header:
        return ""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return ""


@functools.lru_cache(maxsize=256)   # asked on every request, of the same few addresses
def is_loopback(remote: str | None) -> bool:
    if not remote:
        return True  # a Unix socket or a test transport
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def _from_our_page(request: web.Request) -> bool:
    return request.headers.get(PAGE_HEADER, "") == "pipacs"


def _unauthorized(request: web.Request, message: str) -> web.Response:
    resp = error_response(request, 401, message)
    if not _from_our_page(request):   # a script gets Basic's challenge; a page its own sign-in form
        resp.headers["WWW-Authenticate"] = 'Basic realm="pipacs", charset="UTF-8"'
    return resp


def too_many(request: web.Request, wait: float, sentence: str) -> web.Response:
    """429 saying ``sentence`` and how long to wait (also in ``Retry-After``): every throttle's answer."""
    seconds = max(1, math.ceil(wait))
    resp = error_response(request, 429, f"{sentence}: wait {seconds} s before trying again")
    resp.headers["Retry-After"] = str(seconds)
    return resp


def cross_site(request: web.Request) -> bool:
    """A state-changing request a browser sent on behalf of another site (forgery), judged by the
    headers browsers add and pages cannot forge; scripts send neither and pass."""
    if request.headers.get("Sec-Fetch-Site", "") in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    if origin == "null":
        return True
    host = request.headers.get("Host", "")
    return origin.split("://", 1)[-1].rstrip("/") != host


def refusal(request: web.Request, who: Caller, need: Role | Download | None, state: AccessState
            ) -> web.Response | None:
    """The answer refusing ``who`` this request, or None to let it through. A person who opened
    the address in a browser gets a short page saying so in words, not a JSON error."""
    refused = _refusal(request, who, need, state)
    if refused is None or not _browser_navigation(request):
        return refused
    return _refusal_page(refused, who, state)


def _browser_navigation(request: web.Request) -> bool:
    """A page opened in a browser's address bar or from a link (not a fetch of our pages, nor a script)."""
    if request.method not in SAFE_METHODS or _from_our_page(request):
        return False
    mode = request.headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode == "navigate"
    return request.headers.get("Accept", "").lstrip().lower().startswith("text/html")


REFUSAL_MESSAGE = "pipacs.refusal"      # a refusal page's message, kept on the response for the audit


def _refusal_page(refused: web.Response, who: Caller, state: AccessState) -> web.Response:
    said = refusal_message(refused)
    if who.role == Role.STUDENT and said.startswith("downloads are turned off"):
        title, text = "Downloads are off", "The teacher has turned downloads off. The studies can be viewed on the home page."
    elif who.role == Role.STUDENT:
        title, text = "For the teacher", "This page is for the teacher. Sign in on the home page."
    elif state.student_access == "code":
        title, text = "Sign in first", ("This page needs the room code the teacher shows, or the teacher's "
                                        "sign-in. Enter it on the home page.")
    else:
        title, text = "Sign in first", "This page needs a sign-in. Sign in on the home page."
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{title}</title><link rel="stylesheet" href="/app/style.css"></head>'
        f'<body><main><div class="card" id="refused"><h2>{title}</h2><p>{text}</p>'
        '<p><a class="button" href="/">Go to the home page</a></p></div></main></body></html>\n')
    # no WWW-Authenticate: a browser would answer it with its own login dialog
    resp = web.Response(status=refused.status, text=page, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})
    resp[REFUSAL_MESSAGE] = said
    return resp


def refusal_message(refused: web.Response) -> str:
    """What a refusal says (for the audit trail), JSON answer or page."""
    if REFUSAL_MESSAGE in refused:
        return refused[REFUSAL_MESSAGE]
    try:
        return json.loads(refused.text).get("Message", "") if refused.text else ""
    except ValueError:
        return ""


def _refusal(request: web.Request, who: Caller, need: Role | Download | None, state: AccessState
             ) -> web.Response | None:
    if need is None:
        return error_response(request, 403, f"no access rule covers {request.method} "
                                            f"{request.match_info.route.resource.canonical}; refused")
    if need is DOWNLOAD:
        need = Role.STUDENT if state.student_downloads else Role.TEACHER
    if request.method not in SAFE_METHODS:
        if cross_site(request):
            return error_response(request, 403, "refused: this request came from another site")
        if who.via == "session" and need != Role.ANYONE:
            sent = request.headers.get(CSRF_HEADER, "")
            if not (sent and hmac.compare_digest(sent.encode(), who.csrf.encode())):
                return error_response(request, 403, "refused: the page's security token is missing or old; "
                                                     "reload the page")
    if who.role >= need:
        return None
    if who.role == Role.STUDENT:
        what = "downloads are turned off by the teacher" if need == Role.TEACHER and \
            request.match_info.route.resource is not None and _is_download(request) else "this needs the teacher"
        return error_response(request, 403, f"{what}: sign in as the teacher")
    if need == Role.STUDENT and state.student_access == "code":
        return _unauthorized(request, "enter the room code the teacher shows, or sign in")
    return _unauthorized(request, "sign in first")


def _is_download(request: web.Request) -> bool:
    return request.match_info.get("kind", "") in ("archive", "media", "create-archive", "create-media")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def access_middleware(table: Mapping[tuple[str, str], Need]) -> Callable:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        state = request.app[ACCESS]
        who = await identify(request, state)
        if isinstance(who, web.Response):
            return who
        need = need_of(request, table)
        refused = refusal(request, who, need, state)
        if refused is not None:
            if who.role != Role.ANYONE or request.method not in SAFE_METHODS:
                state.audit.record(request.remote or "", who.user, f"{request.method} {request.path}", "refused",
                                   refusal_message(refused))
            return refused
        request[CALLER] = who
        request["user"] = who.user         # Orthanc's HttpUsername of what this request stores
        if who.is_student:
            await check_student_request(request)
        response = await handler(request)
        # what only a teacher may do (reads sent as POST, such as /tools/find, are not actions)
        if need == Role.TEACHER and request.method not in SAFE_METHODS and who.via not in ("local", "token"):
            state.audit.record(request.remote or "", who.user, f"{request.method} {request.path}",
                               "done" if response.status < 400 else f"failed ({response.status})")
        return response
    return middleware


# ---------------------------------------------------------------------- sign-in routes

routes = web.RouteTableDef()


async def _credentials(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_CREDENTIALS_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_CREDENTIALS_BODY, actual_size=request.content_length)
    raw = b""
    while len(raw) <= MAX_CREDENTIALS_BODY:     # read(n) gives what has come so far: a body in parts needs more
        part = await request.content.read(MAX_CREDENTIALS_BODY + 1 - len(raw))
        if not part:
            break
        raw += part
    if len(raw) > MAX_CREDENTIALS_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_CREDENTIALS_BODY, actual_size=len(raw))
    try:
        body = json.loads(raw.decode("utf-8")) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise web.HTTPBadRequest(text="the body must be a JSON object") from None
    if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
        raise web.HTTPBadRequest(text='the body must be a JSON object of strings, e.g. {"Password": "..."}')
    return body


def _signed_in(state: AccessState, user: str) -> web.Response:
    """A new teacher session: the answer carries its cookie and the token the page sends back."""
    token, session = state.sessions.start(user)
    resp = web.json_response({"Role": "teacher", "User": user, "CSRF": session.csrf})
    resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", path="/")
    return resp


@routes.get("/pipacs/session")
async def session_info(request: web.Request) -> web.Response:
    """Who the page's user is, and the token its state-changing requests must carry."""
    state = request.app[ACCESS]
    who = caller(request)
    return web.json_response({
        "Role": who.role.name.lower(), "User": who.user, "CSRF": who.csrf,
        "StudentAccess": state.student_access, "StudentDownloads": state.student_downloads,
        "CanSignIn": state.authentication,
    })


@routes.post("/pipacs/sign-in")
async def sign_in(request: web.Request) -> web.Response:
    state = request.app[ACCESS]
    address = request.remote or ""
    if not state.authentication:
        return error_response(request, 400, "this appliance has no sign-in: AuthenticationEnabled is false, "
                                            "every client on this machine is the teacher")
    wait = state.throttle.wait(address)         # a throttled address is not read (asked again: try_teacher)
    if wait:
        return too_many(request, wait, "too many attempts")
    body = await _credentials(request)
    user, password = body.get("User") or TEACHER, body.get("Password", "")
    right, wait = await try_teacher(state, address, user, password)
    if wait:
        return too_many(request, wait, "too many attempts")
    if not right:
        state.audit.record(address, user[:64], "sign in", "refused", "wrong user or password")
        return error_response(request, 401, "wrong user name or password")
    state.audit.record(address, user, "sign in", "done")
    return _signed_in(state, user)


@routes.post("/pipacs/sign-out")
async def sign_out(request: web.Request) -> web.Response:
    state = request.app[ACCESS]
    who = caller(request)
    if who.session_token:
        state.sessions.end(who.session_token)
        state.audit.record(request.remote or "", who.user, "sign out", "done")
    resp = web.json_response({"Role": "student" if state.student_access == "open" else "anyone"})
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


@routes.post("/pipacs/password")
async def change_password(request: web.Request) -> web.Response:
    state = request.app[ACCESS]
    body = await _credentials(request)
    try:
        async with _hashing:
            await asyncio.to_thread(state.teachers.change_own_password, body.get("Current", ""), body.get("New", ""))
    except PasswordRejected as e:
        state.audit.record(request.remote or "", caller(request).user, "change password", "refused", str(e))
        return error_response(request, 400, str(e))
    state.sessions.end_all()        # every other device signs in again
    return _signed_in(state, TEACHER)


@routes.post("/pipacs/join")
async def join(request: web.Request) -> web.Response:
    """A student's room code, kept by the browser in a cookie."""
    state = request.app[ACCESS]
    address = request.remote or ""
    if state.student_access != "code":
        return error_response(request, 400, "this appliance needs no room code")
    wait = state.room_throttle.wait(address)
    if wait:
        return too_many(request, wait, "too many wrong room codes")
    code = (await _credentials(request)).get("Code", "").strip()
    # asked again once the body is in, and counted with nothing awaited between the check, the
    # compare and the count: requests sent together with slow bodies all passed the first check.
    # A right code is neither counted (a class joins at once) nor clears the count (of its own:
    # the teacher's password has another)
    wait = state.room_throttle.wait(address)
    if wait:
        return too_many(request, wait, "too many wrong room codes")
    if not (code and state.room_code and hmac.compare_digest(code.encode(), state.room_code.encode())):
        state.room_throttle.failed(address)
        state.audit.record(address, "", "room code", "refused", "wrong room code")
        return error_response(request, 403, "that is not the room code the teacher shows")
    resp = web.json_response({"Role": "student"})
    resp.set_cookie(ROOM_COOKIE, state.room_token(), httponly=True, samesite="Strict", path="/")
    return resp


@routes.get("/pipacs/audit")
async def audit(request: web.Request) -> web.Response:
    """The recent teacher actions and refused attempts, newest first."""
    return web.json_response(request.app[ACCESS].audit.recent())


@routes.get("/pipacs/room-code")
async def room_code(request: web.Request) -> web.Response:
    """The room code students type (``StudentAccess`` code), for the teacher's page to show."""
    state = request.app[ACCESS]
    return web.json_response({"Code": state.room_code if state.student_access == "code" else "",
                              "StudentAccess": state.student_access})
