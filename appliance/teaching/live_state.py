"""The live channel's logic, with no aiohttp in it (appliance/web/live.py is the WebSocket around it).

A teaching session's presenter moves through its cases; every follower's screen shows the same
*view state*. What is here:

- ``parse_message`` / ``check_view`` / ``merge_view``: a client's message read and validated (every
  limit a named number), the presenter's view fields merged into the state, the board's fields
  (Revealed, Asked, SessionState) always taken from the session document, never from a client.
- ``RateLimit``: a token bucket per connection; over it a message is dropped, with one "too-fast"
  error a second; a client over the limit in every second for ``OVER_LIMIT_CLOSE`` seconds is closed.
- ``Outbox``: what one connection still has to be sent. The state has a *slot*: a newer state
  replaces one not yet sent (latest wins), so a slow follower skips intermediate states, never
  gets them out of order, and never makes the board queue more than one state for it. Other
  messages (session, answers, errors, pongs) queue in order, at most ``MAX_QUEUED``; a client that
  lets more pile up is not reading and is closed. One writer task per connection drains it, so a
  slow follower never delays the others.
- ``SessionHub``: the connections of one teaching session, its state (serialised once per change,
  the same text to everyone; its frame encoded once and written straight to each connection whose
  outbox is idle, ``Peer.put_state``), the presenter drive lock and take-over, and the admission
  of connections before their upgrade (600 a session, 4 a seat).
- ``session_messages``: a session change's messages, O(seats + answers).
- ``Coalescer``: at most one flush per interval (answer summaries 4 a second, the saved view every 2 s).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .session_results import student_view

MAX_MESSAGE_BYTES = 4096        # a client's message; bigger: error too-big and close 1009
FRAME_GUARD_BYTES = 65536       # aiohttp's own max_msg_size: past it aiohttp closes 1009 before we can say why
HEARTBEAT_SECONDS = 20.0        # WebSocket ping: a sleeping iPad's socket is found dead within 2 of them
PRESENTER_RATE, PRESENTER_BURST = 60.0, 120    # messages a second, bucket
FOLLOWER_RATE, FOLLOWER_BURST = 10.0, 20
TOO_FAST_EVERY = 1.0            # seconds between two "too-fast" errors to one client
OVER_LIMIT_CLOSE = 5.0          # a client over its limit in every second for this long is closed (1008)
MAX_CONNECTIONS = 600           # a teaching session's sockets (500 participants, projectors, presenters)
MAX_SEAT_CONNECTIONS = 4        # one seat's sockets (an iPad's tab, a reload, a second device); more: 429
MAX_QUEUED = 64                 # messages other than states waiting for one client; more: it is closed
ANSWERS_EVERY = 0.25            # answer summaries to presenters: at most 4 a second
VIEW_SAVE_EVERY = 2.0           # the presenter's view saved to the archive at most every 2 s
MAX_INDEX = 100_000             # Image and Frame
MIN_ZOOM, MAX_ZOOM = 0.1, 20.0
MAX_ID_CHARS = 64               # a Series ID (Orthanc's are 44)
SERIES_ID = re.compile(r"[0-9A-Za-z-]{1,64}")

VIEW_FIELDS = ("Case", "Series", "Image", "Frame", "Window", "Zoom", "Center", "Pointer")
BOARD_FIELDS = ("Revealed", "Asked", "SessionState")
ERROR_CODES = frozenset({"too-big", "bad-message", "too-fast", "not-presenter", "not-driving", "bad-view",
                         "case-missing"})


class LiveError(Exception):
    """A client's message refused: ``code`` is one of ERROR_CODES, the message a sentence."""

    def __init__(self, code: str, message: str):
        assert code in ERROR_CODES
        super().__init__(message)
        self.code = code
        self.message = message

    def text(self) -> str:
        return error_text(self.code, self.message)


def error_text(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})


# ------------------------------------------------------------------ messages and the view state

def parse_message(data: str) -> dict[str, Any]:
    """A client's text frame as a message: one JSON object with a string "type"."""
    size = len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise LiveError("too-big", f"a message is at most {MAX_MESSAGE_BYTES} bytes; this one has {size}")
    try:
        msg = json.loads(data)
    except ValueError:
        raise LiveError("bad-message", "a message is one JSON object") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise LiveError("bad-message", 'a message is one JSON object with a "type", e.g. {"type": "ping", "t": 1}')
    return msg


def empty_state() -> dict[str, Any]:
    return {"Case": None, "Series": None, "Image": 0, "Frame": None, "Window": None, "Zoom": None,
            "Center": None, "Pointer": None, "Revealed": False, "Asked": None, "SessionState": "ready"}


def _finite(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _index(v: Any, name: str) -> int:
    if type(v) is not int or not 0 <= v <= MAX_INDEX:
        raise LiveError("bad-view", f"{name}: an integer from 0 to {MAX_INDEX}")
    return v


def _point(v: Any, name: str) -> list[float] | None:
    if v is None:
        return None
    if not (isinstance(v, list) and len(v) == 2 and all(_finite(x) for x in v)):
        raise LiveError("bad-view", f"{name}: [x, y] (two finite numbers) or null")
    return [float(v[0]), float(v[1])]


def check_view(msg: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
    """The view fields of a presenter's {"type": "view", ...} message, validated against the
    session document (Case must name one of its cases that is not Missing). Whether Series is a
    series of that case's studies needs the archive: the caller checks it (``series_belongs``)."""
    out: dict[str, Any] = {}
    for name, v in msg.items():
        if name == "type":
            continue
        if name in BOARD_FIELDS:
            raise LiveError("bad-view", f"{name}: the board's (from the session), not sent by a presenter")
        if name not in VIEW_FIELDS:
            raise LiveError("bad-view", f"{name}: not a field of the view state ({', '.join(VIEW_FIELDS)})")
        if name == "Case":
            if v is not None:
                cases = session.get("Cases") or []
                if type(v) is not int or not 0 <= v < len(cases):
                    raise LiveError("bad-view", f"Case: the index of one of the session's {len(cases)} cases, "
                                                "or null")
                if cases[v].get("Missing"):
                    raise LiveError("case-missing", f"Case {v}: that case was deleted from the board; "
                                                    "go on with another")
            out[name] = v
        elif name == "Series":
            if v is not None and not (isinstance(v, str) and SERIES_ID.fullmatch(v)):
                raise LiveError("bad-view", "Series: a series ID of the case's studies, or null")
            out[name] = v
        elif name == "Image":
            out[name] = _index(v, name)
        elif name == "Frame":
            out[name] = None if v is None else _index(v, name)
        elif name == "Window":
            if v is not None:
                if not (isinstance(v, dict) and set(v) == {"Center", "Width"} and _finite(v["Center"])
                        and _finite(v["Width"]) and v["Width"] > 0):
                    raise LiveError("bad-view", 'Window: {"Center": number, "Width": number > 0} or null')
                v = {"Center": v["Center"], "Width": v["Width"]}
            out[name] = v
        elif name == "Zoom":
            if v is not None and not (_finite(v) and MIN_ZOOM <= v <= MAX_ZOOM):
                raise LiveError("bad-view", f"Zoom: a number from {MIN_ZOOM} to {MAX_ZOOM:g}, or null")
            out[name] = None if v is None else float(v)
        else:       # Center, Pointer
            out[name] = _point(v, name)
    return out


def merge_view(state: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """The new state: ``fields`` over ``state``. Another Case without a Series starts that case
    afresh (no series, first image, no window/zoom/pointer of the other case's images)."""
    new = dict(state)
    if "Case" in fields and fields["Case"] != state.get("Case") and "Series" not in fields:
        new.update({"Series": None, "Image": 0, "Frame": None, "Window": None, "Zoom": None, "Center": None,
                    "Pointer": None})
    new.update(fields)
    return new


def with_board(state: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
    """The state with the board's fields from the session document."""
    case = state.get("Case")
    return {**state, "Revealed": case is not None and case in (session.get("Revealed") or []),
            "Asked": session.get("Asked"), "SessionState": session.get("State", "ready")}


def initial_state(session: dict[str, Any]) -> dict[str, Any]:
    """Where a session's channel starts: the presenter's saved View (a restart resumes there) when
    it is still valid, else the empty state."""
    state = empty_state()
    saved = session.get("View")
    if isinstance(saved, dict):
        try:
            state = merge_view(state, check_view({k: v for k, v in saved.items() if k in VIEW_FIELDS}, session))
        except LiveError:
            pass
    return with_board(state, session)


def session_messages(doc: dict[str, Any], seats: dict[str, str], answers: list[dict[str, Any]]
                     ) -> tuple[str, dict[str, str]]:
    """The {"type": "session"} message of a new document: the teachers' text, and each seat's
    (participant ID -> text; ``seats`` maps participant IDs to nicknames). Cost O(seats + answers),
    not O(seats x answers): the answer rows grouped by participant in one pass, the student view
    without "You" serialised once, and each seat's "You" spliced in (the same text as
    json.dumps of ``student_view``, whose "You" is its last key)."""
    teacher = json.dumps({"type": "session", "session": doc})
    if not seats:
        return teacher, {}
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in answers:
        rows.setdefault(r.get("Participant"), []).append(r)
    shared = student_view(doc, "", "", [])
    del shared["You"]
    head = json.dumps({"type": "session", "session": shared})
    assert head.endswith("}}") and shared, head[-20:]
    head = head[:-2] + ', "You": '
    return teacher, {pid: head + json.dumps({"Participant": pid, "Nickname": nick, "Answers": rows.get(pid, [])})
                     + "}}" for pid, nick in seats.items()}


# ------------------------------------------------------------------ limits

class RateLimit:
    """A token bucket of ``burst`` refilled at ``rate`` a second, and what to do over it."""

    OK, DROP, WARN, CLOSE = "ok", "drop", "warn", "close"

    def __init__(self, rate: float, burst: int, now: float):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = now
        self.warned = -math.inf      # when the last "too-fast" error was sent
        self.over_since: float | None = None
        self.last_drop = -math.inf

    @classmethod
    def for_role(cls, presenter: bool, now: float) -> RateLimit:
        return cls(PRESENTER_RATE, PRESENTER_BURST, now) if presenter else cls(FOLLOWER_RATE, FOLLOWER_BURST, now)

    def admit(self, now: float) -> str:
        """OK (take the message), DROP (silently), WARN (drop and send one too-fast error) or
        CLOSE (over the limit in every second for OVER_LIMIT_CLOSE seconds)."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            if now - self.last_drop > 1.0:
                self.over_since = None
            return self.OK
        if self.over_since is None or now - self.last_drop > 1.0:
            self.over_since = now          # a new run of drops (none in the second before)
        self.last_drop = now
        if now - self.over_since >= OVER_LIMIT_CLOSE:
            return self.CLOSE
        if now - self.warned >= TOO_FAST_EVERY:
            self.warned = now
            return self.WARN
        return self.DROP


class Coalescer:
    """Work asked for many times, done at most once per ``every`` seconds with every key asked
    since the last time: ``note`` says in how long to flush (None: a flush is already due)."""

    def __init__(self, every: float):
        self.every = every
        self.last = -math.inf
        self.pending: set[Any] = set()
        self.scheduled = False

    def note(self, key: Any, now: float) -> float | None:
        self.pending.add(key)
        if self.scheduled:
            return None
        self.scheduled = True
        return max(0.0, self.last + self.every - now)

    def take(self, now: float) -> set[Any]:
        """The keys to flush now (the flush is then no longer due)."""
        self.scheduled = False
        self.last = now
        keys, self.pending = self.pending, set()
        return keys


# ------------------------------------------------------------------ one connection's outbox

class Outbox:
    """What one connection still has to be sent: the latest state in a slot, other messages in
    order. ``next`` gives the writer task the next text (None once closed and drained)."""

    def __init__(self, max_queued: int = MAX_QUEUED):
        self.max_queued = max_queued
        self._items: deque[str | None] = deque()     # None: the state slot's place in the order
        self._state: str | None = None
        self._wake = asyncio.Event()
        self.closed = False
        self.busy = False         # the writer took an item and is sending it
        self.skipped = 0          # states replaced before they were sent (a slow follower)

    def idle(self) -> bool:
        """Nothing queued, nothing being sent, not closed: a state written to the socket now, past
        the outbox, comes after everything before it (the hub's direct write, README)."""
        return not self._items and not self.busy and not self.closed

    def put_state(self, text: str) -> None:
        if self.closed:
            return
        if self._state is not None:
            self.skipped += 1      # the unsent one is replaced where it stands
        else:
            self._items.append(None)
        self._state = text
        self._wake.set()

    def put(self, text: str) -> bool:
        """Queue a message; False when the client already has MAX_QUEUED unsent (it is not reading)."""
        if self.closed:
            return True
        if len(self._items) - (self._state is not None) >= self.max_queued:
            return False
        self._items.append(text)
        self._wake.set()
        return True

    def close(self) -> None:
        """No more messages; what is queued is still sent."""
        self.closed = True
        self._wake.set()

    def discard(self) -> None:
        self._items.clear()
        self._state = None
        self.close()

    def pending(self) -> int:
        return len(self._items)

    async def ready(self) -> bool:
        """Wait until something is queued (True) or the outbox is closed and drained (False); the
        previous item taken is then sent (``busy`` cleared)."""
        self.busy = False
        while not self._items:
            if self.closed:
                return False
            self._wake.clear()
            await self._wake.wait()
        return True

    def pop(self) -> str:
        """The next text (after ``ready``): a state slot gives the newest state put in it."""
        item = self._items.popleft()
        if item is None:
            item, self._state = self._state, None
        self.busy = True
        return item

    async def next(self) -> str | None:
        return self.pop() if await self.ready() else None


# ------------------------------------------------------------------ a teaching session's connections

@dataclass(eq=False)
class Peer:
    """One connection: who it is and what it still has to be sent."""
    presenter: bool
    student: bool
    user: str = ""
    participant: str | None = None
    nickname: str | None = None
    outbox: Outbox = field(default_factory=Outbox)
    limit: RateLimit | None = None
    close_code: int = 1000        # the code the writer closes the socket with once the outbox is sent
    close_reason: str = ""
    # writes a state's pre-encoded frame to the socket now; False when it cannot (the socket's
    # buffer is full, or aiohttp is not as expected): the state then goes through the outbox
    direct: Callable[[bytes], bool] | None = None
    direct_writes: int = 0
    admitted: bool = False        # counted in its hub's limits (SessionHub.admit)

    def put_state(self, text: str, frame: Callable[[], bytes] | None = None) -> None:
        """A state to this connection: written at once when nothing is ahead of it and the socket
        takes it (``frame`` gives the state's frame, encoded once for everyone), else into the
        outbox's slot (latest wins, in order)."""
        if frame is not None and self.direct is not None and self.outbox.idle() and self.direct(frame()):
            self.direct_writes += 1
            return
        self.outbox.put_state(text)

    def send(self, text: str) -> None:
        if not self.outbox.put(text):
            self.close(1008, "too many messages unread")
            self.outbox.discard()

    def close(self, code: int, reason: str = "") -> None:
        """Close once what is queued is sent (the first code asked for wins)."""
        if not self.outbox.closed:
            self.close_code, self.close_reason = code, reason
        self.outbox.close()


def state_text(seq: int, state: dict[str, Any]) -> str:
    return json.dumps({"type": "state", "seq": seq, "state": state}, separators=(",", ":"))


def text_frame(text: str) -> bytes:
    """A server's WebSocket text frame (RFC 6455 5.2: FIN, opcode 1, unmasked, no extension) of
    ``text``: the same bytes for every follower, so made once per state."""
    data = text.encode("utf-8")
    n = len(data)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + data


class SessionHub:
    """The connections of one teaching session and its view state. Used on the event loop only."""

    def __init__(self, session_id: str, doc: dict[str, Any]):
        self.session_id = session_id
        self.doc = doc
        self.state = initial_state(doc)
        self.seq = 0
        self.text = state_text(self.seq, self.state)
        self.peers: list[Peer] = []          # in the order they joined (the next driver is the oldest)
        self.driver: Peer | None = None
        self.ended = False
        self.admitted = 0                    # sockets counted from before their upgrade until they leave
        self.per_seat: dict[str, int] = {}   # of those, a seat's (participant ID)

    # -- joining
    def full(self) -> bool:
        return self.admitted >= MAX_CONNECTIONS

    def admit(self, peer: Peer) -> str | None:
        """Count a connection BEFORE its upgrade (the upgrade awaits: counted after it, concurrent
        upgrades would all pass the check): None when admitted, else which limit refused it,
        "session" (MAX_CONNECTIONS) or "seat" (MAX_SEAT_CONNECTIONS for one participant). An
        admitted connection is ``release``d by ``leave``, or by the caller if it never joins."""
        if self.admitted >= MAX_CONNECTIONS:
            return "session"
        seat = peer.participant
        if seat is not None:
            if self.per_seat.get(seat, 0) >= MAX_SEAT_CONNECTIONS:
                return "seat"
            self.per_seat[seat] = self.per_seat.get(seat, 0) + 1
        self.admitted += 1
        peer.admitted = True
        return None

    def release(self, peer: Peer) -> None:
        """Its admission given back (once: a second call does nothing)."""
        if not peer.admitted:
            return
        peer.admitted = False
        self.admitted -= 1
        seat = peer.participant
        if seat is not None:
            left = self.per_seat.get(seat, 0) - 1
            if left > 0:
                self.per_seat[seat] = left
            else:
                self.per_seat.pop(seat, None)

    def join(self, peer: Peer) -> None:
        """An admitted connection in; the first presenter drives."""
        self.peers.append(peer)
        if peer.presenter and self.driver is None:
            self.driver = peer

    def hello(self, peer: Peer, session_view: dict[str, Any]) -> str:
        return json.dumps({"type": "hello", "you": {
            "role": "presenter" if peer.presenter else "follower", "participant": peer.participant,
            "nickname": peer.nickname, "driving": peer is self.driver},
            "session": session_view, "state": self.state, "seq": self.seq})

    def leave(self, peer: Peer) -> None:
        """A joined connection out (its admission released)."""
        if peer in self.peers:
            self.peers.remove(peer)
        self.release(peer)
        if self.driver is peer:
            self.driver = next((p for p in self.peers if p.presenter), None)
            if self.driver is not None:
                self._tell_drivers()

    def presenters(self) -> list[Peer]:
        return [p for p in self.peers if p.presenter]

    # -- the presenter's commands
    def view(self, peer: Peer, fields: dict[str, Any]) -> tuple[str | None, str | None]:
        """Apply a presenter's checked view fields: (the Series before, the Series now). Raises
        LiveError not-presenter / not-driving."""
        self.must_drive(peer)
        before = self.state.get("Series")
        self.state = with_board(merge_view(self.state, fields), self.doc)
        self._publish()
        return before, self.state.get("Series")

    def must_drive(self, peer: Peer) -> None:
        if not peer.presenter:
            raise LiveError("not-presenter", "only the teacher presenting (?as=presenter) changes the view")
        if peer is not self.driver:
            raise LiveError("not-driving", 'another teacher is driving: send {"type": "take"} to take over')

    def take(self, peer: Peer) -> None:
        if not peer.presenter:
            raise LiveError("not-presenter", "only a teacher presenting (?as=presenter) can take the drive")
        if self.driver is not peer:
            self.driver = peer
            self._tell_drivers()

    def _tell_drivers(self) -> None:
        by = self.driver.user if self.driver is not None else ""
        for p in self.presenters():
            p.send(json.dumps({"type": "driver", "driving": p is self.driver, "by": by}))

    def _publish(self) -> None:
        """The state serialised once, the same text to every connection: written at once as one
        pre-encoded frame where the socket takes it, else into the connection's slot."""
        self.seq += 1
        self.text = text = state_text(self.seq, self.state)
        encoded: list[bytes] = []

        def frame() -> bytes:
            if not encoded:
                encoded.append(text_frame(text))
            return encoded[0]
        for p in self.peers:
            p.put_state(text, frame)

    # -- the archive's news
    def session_changed(self, doc: dict[str, Any]) -> bool:
        """A new session document: the board's fields of the state follow it (published if they
        changed); True when the session has ended (the caller then ends the channel)."""
        self.doc = doc
        state = with_board(self.state, doc)
        if state != self.state:
            self.state = state
            self._publish()
        return doc.get("State") == "ended"

    def end(self) -> None:
        """{"type": "ended"} to everyone, then each connection closes (1000)."""
        self.ended = True
        for p in list(self.peers):
            p.send('{"type":"ended"}')
            p.close(1000, "the teaching session has ended")
