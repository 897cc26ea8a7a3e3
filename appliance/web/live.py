"""The live channel of a teaching session: ``GET /sessions/{id}/live``, a WebSocket (README "The
live channel"), and its floor ``GET /pipacs/live-echo``, an echo with the same limits (the bench
measures the channel beside it).

The logic is appliance/teaching/live_state.py (tests call it directly); here are the socket, the
archive's news (``add_session_listener`` / ``add_answer_listener``) fed into the hubs, the
presenter's view saved at most every 2 s, the series the presenter opens warmed into the class
cache, and every socket closed (1001) when the server shuts down.

Each connection has one reader (this handler) and one writer task draining its ``Outbox``: a
follower whose network is slow holds only its own writer, never the others nor the presenter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from ..archive import Archive, Level, NotFound
from ..teaching.live_state import (
    ANSWERS_EVERY,
    FRAME_GUARD_BYTES,
    HEARTBEAT_SECONDS,
    MAX_CONNECTIONS,
    MAX_MESSAGE_BYTES,
    MAX_QUEUED,
    MAX_SEAT_CONNECTIONS,
    OVER_LIMIT_CLOSE,
    VIEW_SAVE_EVERY,
    Coalescer,
    LiveError,
    Peer,
    RateLimit,
    SessionHub,
    check_view,
    error_text,
    parse_message,
    session_messages,
)
from ..teaching.session_results import results, student_view
from .access import Role, caller
from .errors import error_response
from .keys import ARCHIVE
from .teaching_sessions import results_inputs

log = logging.getLogger("pipacs.live")

CLOSE_WAIT = 5.0          # seconds a closing socket's writer may take to send what is queued
SHUTDOWN_WAIT = 2.0       # seconds the server's shutdown waits for the sockets' closing handshakes
MAX_ECHO_PER_ADDRESS = 4  # /pipacs/live-echo sockets from one address (the bench holds one)
SESSION_OFF_LOOP = 1000   # a session message's students + answer rows past which it is made in a thread
DIRECT_BUFFER_LIMIT = 16 * 1024   # bytes unsent in a socket's buffer past which states wait in its slot
DRAIN_POLL = 0.02         # seconds before the first look again at a full socket's buffer
DRAIN_POLL_MAX = 0.2      # ... doubling up to this: a follower on a bad link wakes 5 times a second, not 50

routes = web.RouteTableDef()


class Channel:
    """One teaching session's hub with what runs beside it: the answer summaries' and the saved
    view's coalescers, the series being warmed."""

    def __init__(self, hub: SessionHub):
        self.hub = hub
        self.answers = Coalescer(ANSWERS_EVERY)
        self.save = Coalescer(VIEW_SAVE_EVERY)
        self.warming: asyncio.Task | None = None
        self.checked: set[tuple[int, str | None]] = set()     # (Case, Series) found on the board
        self.tasks: set[asyncio.Task] = set()


class Live:
    """Every live channel of the server (app[LIVE])."""

    def __init__(self, app: web.Application):
        self.app = app
        self.channels: dict[str, Channel] = {}
        self.sockets: dict[web.WebSocketResponse, Peer] = {}
        self.echoes = 0
        self.echoes_from: dict[str, int] = {}
        self.listening = False

    @property
    def archive(self) -> Archive:
        return self.app[ARCHIVE]

    def listen(self) -> None:
        """The archive's news into the hubs (once, when the first channel opens: the archive may be
        a stand-in in route listings)."""
        if not self.listening and hasattr(self.archive, "add_session_listener"):
            self.archive.add_session_listener(self.session_changed)
            self.archive.add_answer_listener(self.answer_stored)
            self.listening = True

    def channel(self, session_id: str, doc: dict[str, Any]) -> Channel:
        ch = self.channels.get(session_id)
        if ch is None:
            ch = self.channels[session_id] = Channel(SessionHub(session_id, doc))
        return ch

    def spawn(self, ch: Channel, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        ch.tasks.add(task)
        task.add_done_callback(ch.tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    # -- the archive's news (sync, on the loop)
    def session_changed(self, session_id: str, doc: dict[str, Any] | None) -> None:
        ch = self.channels.get(session_id)
        if ch is None:
            return
        ch.checked.clear()        # a case of it may have been deleted or edited
        if doc is None or ch.hub.session_changed(doc):
            self.end(ch)
            return
        self.spawn(ch, self._send_session(ch, doc), "live-session")

    async def _send_session(self, ch: Channel, doc: dict[str, Any]) -> None:
        """The new document to everyone: the teachers' text made once, the students' shared part
        once with each seat's own answers spliced in (``session_messages``), in a thread when the
        class is big (500 seats x 10 answers would hold the loop)."""
        answers: list[dict[str, Any]] = []
        seats = {p.participant: p.nickname or "" for p in ch.hub.peers if p.student and p.participant}
        if seats:
            try:
                answers = await self.archive.session_answers(ch.hub.session_id)
            except NotFound:
                return        # deleted meanwhile: the listener ends the channel
        if ch.hub.doc is not doc:
            return            # a newer document came meanwhile: its own message follows
        if len(seats) + len(answers) > SESSION_OFF_LOOP:
            teacher_text, texts = await asyncio.to_thread(session_messages, doc, seats, answers)
            if ch.hub.doc is not doc:
                return
        else:
            teacher_text, texts = session_messages(doc, seats, answers)
        for p in list(ch.hub.peers):
            if not p.student:
                p.send(teacher_text)
            elif p.participant in texts:
                p.send(texts[p.participant])

    def answer_stored(self, session_id: str, row: dict[str, Any]) -> None:
        ch = self.channels.get(session_id)
        if ch is None or not ch.hub.presenters():
            return
        loop = asyncio.get_running_loop()
        delay = ch.answers.note((row.get("Case"), row.get("Question")), loop.time())
        if delay is not None:
            loop.call_later(delay, lambda: self.spawn(ch, self._send_answers(ch), "live-answers"))

    async def _send_answers(self, ch: Channel) -> None:
        keys = ch.answers.take(asyncio.get_running_loop().time())
        if not keys or not ch.hub.presenters():
            return
        doc = ch.hub.doc
        try:
            answers, cases, sizes = await results_inputs(self.archive, doc)
        except NotFound:
            return
        summary = await asyncio.to_thread(results, doc, answers, cases, sizes)
        for entry in summary.get("Questions", []):
            key = (entry.get("Case"), entry.get("Question"))
            if key not in keys:
                continue
            text = json.dumps({"type": "answers", "case": key[0], "question": key[1],
                               "answered": entry.get("Answered", 0), "summary": entry})
            for p in ch.hub.presenters():
                p.send(text)

    # -- the presenter's view
    def view_changed(self, ch: Channel) -> None:
        loop = asyncio.get_running_loop()
        delay = ch.save.note(True, loop.time())
        if delay is not None:
            loop.call_later(delay, lambda: self.spawn(ch, self._save_view(ch), "live-save-view"))

    async def _save_view(self, ch: Channel) -> None:
        if ch.save.take(asyncio.get_running_loop().time()) and not ch.hub.ended:
            state = {k: v for k, v in ch.hub.state.items() if k not in ("Revealed", "Asked", "SessionState")}
            try:
                await self.archive.save_session_view(ch.hub.session_id, state)
            except NotFound:
                pass          # deleted meanwhile: the listener ends the channel

    def warm(self, ch: Channel, series_id: str) -> None:
        """The series the presenter opened into the class cache, so the followers' frames are
        made once, before thirty of them ask; a newer switch replaces an unfinished warm-up."""
        if ch.warming is not None and not ch.warming.done():
            ch.warming.cancel()
        ch.warming = self.spawn(ch, self._warm(series_id), "live-warm")

    async def _warm(self, series_id: str) -> None:
        from .pixels import warm_series
        try:
            series = await self.archive.get(Level.SERIES, series_id)
            await warm_series(self.app, series)
        except NotFound:
            pass

    # -- ending
    def end(self, ch: Channel) -> None:
        ch.hub.end()
        if self.channels.get(ch.hub.session_id) is ch:
            del self.channels[ch.hub.session_id]

    def released(self, ch: Channel, peer: Peer) -> None:
        """An admitted connection that never joined (its upgrade failed or the session ended)."""
        ch.hub.release(peer)
        self.left(ch, peer)

    def left(self, ch: Channel, peer: Peer) -> None:
        ch.hub.leave(peer)
        if not ch.hub.peers and not ch.hub.admitted and self.channels.get(ch.hub.session_id) is ch:
            del self.channels[ch.hub.session_id]     # the state is kept by the archive (View)
            if ch.save.scheduled:
                self.spawn(ch, self._save_view(ch), "live-save-view")

    async def shutdown(self, _app: web.Application | None = None) -> None:
        """Every socket closed (1001, going away) before the server stops: iPads reconnect to the
        restarted board at once instead of waiting for a dead TCP connection. Each connection's
        own handler makes the close (see ``_run_socket``); this waits for them, SHUTDOWN_WAIT at most."""
        for ch in list(self.channels.values()):
            for t in list(ch.tasks):
                t.cancel()
        self.channels.clear()
        peers = list(self.sockets.values())
        if not peers:
            return
        log.info("closing %d live channel sockets (1001)", len(peers))
        for p in peers:
            p.close_code, p.close_reason = 1001, "the server is shutting down"
            p.outbox.discard()
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_WAIT
        while self.sockets and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)


LIVE = web.AppKey("live", Live)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("live channel: %s failed", task.get_name(), exc_info=task.exception())


def session_view(peer: Peer, doc: dict[str, Any], answers: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The session document as this connection may see it: the teacher's whole, a student's
    view (as GET /sessions/{id} answers it: no code, no correct choices or regions, their answers)."""
    if not peer.student:
        return doc
    return student_view(doc, peer.participant or "", peer.nickname or "", answers or [])


# ------------------------------------------------------------------ the sockets

# ------------------------------------------------------------------ direct writes of a state's frame
#
# Why: a state goes to sixty followers at once. Through ws.send_str each follower costs its writer
# task's wake-up, aiohttp's framing of the same text and a transport write: the follow latency
# to the last of sixty was ~6x the echo's. A server's frame is unmasked and (no permessage-deflate,
# ``_socket``) uncompressed, so its bytes are the same for everyone: the hub encodes them once per
# state (live_state.text_frame) and writes them into each idle follower's transport right away.
# aiohttp has no public call for "write these frame bytes"; the one private thing used is
# WebSocketResponse._writer (its transport and whether a close frame went out), touched only in
# ``direct_socket`` below, for the aiohttp versions checked, with the same checks on every write.
# Anything not as expected: None, and the connection's states go through ws.send_str as before.

DIRECT_AIOHTTP = frozenset({(3, 14)})  # aiohttp minor versions whose WebSocketWriter this was checked on
                                       # (the installed one: test_live's raw-bytes test shows it)

try:
    from aiohttp._websocket.writer import WebSocketWriter as _WSWriter
except ImportError:         # pragma: no cover - another aiohttp layout: send_str only
    _WSWriter = None


def _aiohttp_minor(version: str) -> tuple[int, int] | None:
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def direct_socket(ws: web.WebSocketResponse, version: str = aiohttp.__version__
                  ) -> tuple[Callable[[bytes], bool], Callable[[], bool]] | None:
    """``(write, full)`` for a prepared server socket whose aiohttp internals are as expected, else
    None. ``write(frame)`` puts a whole pre-encoded frame on the wire and says True, or says False
    (nothing written) when the socket is closing or its buffer holds more than DIRECT_BUFFER_LIMIT
    bytes; ``full()`` says whether the buffer is over that limit (the writer task waits while it is).

    Why it is safe beside aiohttp's own frames: in aiohttp 3.14 ``WebSocketWriter.send_frame`` writes an
    uncompressed frame (text, ping, pong, close) into the transport synchronously, header and payload
    with no await between, so a direct frame, written on the same loop, lands before or after one of
    theirs, never inside it; once a close frame went out (``_closing``) or the transport closes,
    nothing more is written. A direct write bypasses aiohttp's output-size flow control
    (``_output_size``, which makes send_frame await the protocol's drain past its limit): harmless,
    since write() itself refuses past DIRECT_BUFFER_LIMIT (16 KiB) unsent, below the transports' default
    high-water mark (64 KiB), so direct writes leave at most 16 KiB and one state unsent, and the
    writer task waits (``drain_waits``) rather than write more."""
    minor = _aiohttp_minor(version)
    if _WSWriter is None or minor not in DIRECT_AIOHTTP:
        return None
    writer = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    if (type(writer) is not _WSWriter or getattr(writer, "compress", None) != 0
            or getattr(writer, "use_mask", None) is not False or not isinstance(getattr(writer, "_closing", None), bool)
            or not all(callable(getattr(transport, m, None)) for m in ("write", "is_closing", "get_write_buffer_size"))):
        return None     # (uvloop's transports are not asyncio.WriteTransport instances: their methods are asked)

    def full() -> bool:
        return transport.get_write_buffer_size() > DIRECT_BUFFER_LIMIT

    def write(frame: bytes) -> bool:
        if ws.closed or writer._closing or transport.is_closing() or full():
            return False
        transport.write(frame)
        return True
    return write, full


def drain_waits():
    """The waits between looks at a full socket's buffer: DRAIN_POLL doubling to DRAIN_POLL_MAX, then
    that for ever. A short first wait keeps a briefly full buffer's follower close behind; the
    backing off keeps sixty followers on a bad Wi-Fi from waking a Pi's core 3000 times a second."""
    delay = DRAIN_POLL
    while True:
        yield delay
        delay = min(delay * 2, DRAIN_POLL_MAX)


async def _writer(ws: web.WebSocketResponse, peer: Peer, full: Callable[[], bool] | None = None) -> None:
    """Drain the connection's outbox in order (it ends once the outbox is closed and sent). With
    direct writes (``full`` given) a socket whose buffer is over the limit is waited for before
    the next item is taken: the state slot meanwhile keeps only the newest state, which is what
    the follower gets once its buffer drains."""
    try:
        while await peer.outbox.ready():
            for delay in drain_waits():
                if full is None or not full() or ws.closed or peer.outbox.closed:
                    break
                await asyncio.sleep(delay)
            if not peer.outbox.pending():
                continue          # discarded meanwhile
            await ws.send_str(peer.outbox.pop())
    except (ConnectionError, RuntimeError):
        peer.outbox.discard()   # the client went away: its reader ends too


def _limited(peer: Peer, now: float) -> bool:
    """True when this message must be dropped (the too-fast error or the close queued)."""
    assert peer.limit is not None
    verdict = peer.limit.admit(now)
    if verdict == RateLimit.OK:
        return False
    rate = f"{peer.limit.rate:g} messages a second"
    if verdict == RateLimit.WARN:
        peer.send(error_text("too-fast", f"too many messages: at most {rate}; this one was dropped"))
    elif verdict == RateLimit.CLOSE:
        peer.send(error_text("too-fast", f"over {rate} for {OVER_LIMIT_CLOSE:g} s: closing"))
        peer.close(1008, "too many messages")
    return True


async def _serve(ws: web.WebSocketResponse, peer: Peer, handle) -> None:
    """The reader: each text frame checked (size, rate, JSON) and handed to ``handle``."""
    loop = asyncio.get_running_loop()
    async for msg in ws:
        if peer.outbox.closed:
            continue         # closing: what is queued is being sent
        if msg.type != WSMsgType.TEXT:
            if msg.type == WSMsgType.BINARY:
                peer.send(error_text("bad-message", "messages are JSON in text frames"))
                continue
            break
        if _limited(peer, loop.time()):
            continue
        try:
            await handle(parse_message(msg.data))
        except LiveError as e:
            peer.send(e.text())
            if e.code == "too-big":
                peer.close(1009, "message too big")
        if peer.outbox.pending() >= MAX_QUEUED // 2:
            # frames that came in one TCP read are all read without a turn of the loop: the writer
            # sends what they asked for before the queue's limit takes a reading client for a dead one
            await asyncio.sleep(0)


def _pong(peer: Peer, msg: dict[str, Any]) -> None:
    t = msg.get("t")
    if type(t) not in (int, float) or not math.isfinite(t):
        raise LiveError("bad-message", 'a ping is {"type": "ping", "t": number}')
    peer.send(json.dumps({"type": "pong", "t": t}))


async def _run_socket(request: web.Request, ws: web.WebSocketResponse, peer: Peer, handle, first: str | None,
                      on_leave) -> web.WebSocketResponse:
    """The connection's reader and writer until one ends. The close is made here, once the reader
    is stopped: aiohttp's close() from another task while a receive() waits closes the TCP
    connection without waiting for the client's close frame, and the client then reads 1006."""
    live = request.app[LIVE]
    live.sockets[ws] = peer
    if first is not None:
        peer.outbox.put(first)
    direct = direct_socket(ws)
    full = None
    if direct is not None:
        peer.direct, full = direct
    writer = asyncio.create_task(_writer(ws, peer, full), name="live-writer")
    reader = asyncio.create_task(_serve(ws, peer, handle), name="live-reader")
    try:
        await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
        if not reader.done():          # the writer sent all and the connection is to close
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        on_leave()
        if ws.closed:
            peer.outbox.discard()
        else:
            peer.outbox.close()        # what is queued still goes (a last error), then the close
        try:
            await asyncio.wait_for(writer, CLOSE_WAIT)
        except (TimeoutError, asyncio.CancelledError):
            writer.cancel()
        if not ws.closed:
            await ws.close(code=peer.close_code, message=peer.close_reason.encode()[:120])
    finally:
        for t in (reader, writer):
            t.cancel()
        live.sockets.pop(ws, None)
    return ws


def _socket() -> web.WebSocketResponse:
    # aiohttp's own limit is a guard well above ours, so that a message a little too big is told
    # "too-big" before the 1009 (past the guard aiohttp closes 1009 itself). No permessage-deflate
    # (browsers offer it, aiohttp accepts it by default): a state of a few hundred bytes would be
    # compressed once per follower, sixty times per change on a Pi's core, to save little.
    return web.WebSocketResponse(max_msg_size=FRAME_GUARD_BYTES, heartbeat=HEARTBEAT_SECONDS, compress=False)


@routes.get("/sessions/{id}/live")
async def live_channel(request: web.Request) -> web.StreamResponse:
    """Follow (or, a teacher with ?as=presenter, drive) a teaching session's view."""
    live: Live = request.app[LIVE]
    archive = live.archive
    session_id = request.match_info["id"]
    who = caller(request)
    teacher = who.role >= Role.TEACHER
    seat = None
    if not teacher:
        # a seat by its cookie or X-Pipacs-Seat header (access.identify), never ?seat= in the URL:
        # a token in a URL ends up in logs and browser histories
        seat = who.seat
        if seat is None or seat.session_id != session_id:
            return error_response(request, 404, f"no teaching session {session_id} that you have joined: "
                                                "join it with its code first")
    try:
        doc = await archive.get_session(session_id)
    except NotFound:
        return error_response(request, 404, f"no teaching session {session_id}")
    if doc.get("State") == "ended":
        return error_response(request, 409, "this teaching session has ended")
    live.listen()
    presenter = teacher and request.query.get("as") == "presenter"
    peer = Peer(presenter=presenter, student=not teacher, user=who.user,
                participant=seat.participant_id if seat else None, nickname=seat.nickname if seat else None)
    answers = await archive.session_answers(session_id) if seat else None
    ch = live.channel(session_id, doc)
    # counted before the upgrade (which awaits), so that concurrent upgrades cannot pass the limits
    refused = ch.hub.admit(peer)
    if refused == "session":
        return error_response(request, 503, f"this teaching session has {MAX_CONNECTIONS} connections, its most")
    if refused == "seat":
        return error_response(request, 429, f"this seat already has {MAX_SEAT_CONNECTIONS} live connections open, "
                                            "its most: close one (another tab or device) first")
    try:
        ws = _socket()
        await ws.prepare(request)
    except BaseException:
        live.released(ch, peer)
        raise
    if ch.hub.ended:                 # ended during the upgrade
        live.released(ch, peer)
        await ws.send_str('{"type":"ended"}')
        await ws.close(code=1000)
        return ws
    peer.limit = RateLimit.for_role(presenter, asyncio.get_running_loop().time())
    ch.hub.join(peer)
    hello = ch.hub.hello(peer, session_view(peer, ch.hub.doc, answers))

    async def handle(msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "ping":
            _pong(peer, msg)
        elif kind == "view":
            await _view(live, ch, peer, msg)
        elif kind == "take":
            ch.hub.take(peer)
        else:
            raise LiveError("bad-message", f'unknown message type {kind[:32]!r}: "view", "take" or "ping"')

    return await _run_socket(request, ws, peer, handle, hello, lambda: live.left(ch, peer))


async def _view(live: Live, ch: Channel, peer: Peer, msg: dict[str, Any]) -> None:
    hub = ch.hub
    hub.must_drive(peer)
    fields = check_view(msg, hub.doc)
    case = fields.get("Case", hub.state.get("Case"))
    cases = hub.doc.get("Cases") or []
    if case is not None and (case >= len(cases) or cases[case].get("Missing")):   # the case shown was deleted
        raise LiveError("case-missing", f"Case {case}: that case was deleted from the board; go on with another")
    series = fields.get("Series", hub.state.get("Series") if fields.get("Case", case) == hub.state.get("Case")
                        else None)
    if (case, series) != (hub.state.get("Case"), hub.state.get("Series")) and case is not None \
            and (case, series) not in ch.checked:
        # a Case or Series other than the one shown: asked of the archive once per session document
        await _check_series(live.archive, hub.doc, case, series)
        ch.checked.add((case, series))
    elif case is None and fields.get("Series") is not None:
        raise LiveError("bad-view", "Series: a series of the case shown; send a Case first")
    hub.must_drive(peer)       # the drive may have been taken while the archive was asked
    before, now = hub.view(peer, fields)
    live.view_changed(ch)
    if now is not None and now != before:
        live.warm(ch, now)


async def _check_series(archive: Archive, doc: dict[str, Any], case: int, series_id: str | None) -> None:
    """The case is still on the board, and the series (when given) is one of its studies'."""
    case_id = doc["Cases"][case]["Case"]
    try:
        case_doc = await archive.get_case(case_id)
    except NotFound:
        raise LiveError("case-missing", f"Case {case}: that case was deleted from the board; go on with another") \
            from None
    if series_id is None:
        return
    try:
        series = await archive.get(Level.SERIES, series_id)
        study = await archive.index.resource_by_id(series.parent_id) if series.parent_id is not None else None
    except NotFound:
        study = None
    if study is None or study.public_id not in case_doc.get("Studies", []):
        raise LiveError("bad-view", f"Series: {series_id} is not a series of case {case}'s studies")


@routes.get("/pipacs/live-echo")
async def live_echo(request: web.Request) -> web.StreamResponse:
    """The live channel's floor: each message sent back, under the same limits (size; the rate
    of a presenter, whose changes the bench sends through it), on the same server."""
    live: Live = request.app[LIVE]
    address = request.remote or ""
    if live.echoes >= MAX_CONNECTIONS:
        return error_response(request, 503, f"{MAX_CONNECTIONS} echo connections are open, the most")
    if live.echoes_from.get(address, 0) >= MAX_ECHO_PER_ADDRESS:
        return error_response(request, 429, f"{MAX_ECHO_PER_ADDRESS} echo connections are open from your address, "
                                            "its most: close one first")
    # counted before the upgrade (which awaits), so that concurrent upgrades cannot pass the limits
    live.echoes += 1
    live.echoes_from[address] = live.echoes_from.get(address, 0) + 1

    def left() -> None:
        live.echoes -= 1
        n = live.echoes_from.get(address, 0) - 1
        if n > 0:
            live.echoes_from[address] = n
        else:
            live.echoes_from.pop(address, None)
    try:
        ws = _socket()
        await ws.prepare(request)
    except BaseException:
        left()
        raise
    # a presenter's limits: the bench sends the teacher's changes through it at the same pace
    peer = Peer(presenter=False, student=True, limit=RateLimit.for_role(True, asyncio.get_running_loop().time()))

    async def echo(msg: dict[str, Any]) -> None:
        peer.send(json.dumps(msg))

    return await _run_socket(request, ws, peer, echo, None, left)


def install(app: web.Application) -> None:
    """The routes, the channels' registry, and their close at shutdown."""
    app[LIVE] = Live(app)
    app.add_routes(routes)
    app.on_shutdown.append(app[LIVE].shutdown)


__all__ = ["install", "routes", "LIVE", "Live", "MAX_MESSAGE_BYTES", "session_view"]
