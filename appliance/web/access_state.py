"""The state behind classroom access: teacher sessions and sign-in throttling (the audit trail
is ``appliance.audit``).

Plain objects with no aiohttp in them, so tests call them directly; ``access`` is the
middleware that uses them. Every number is a bound with a name: the memory a flood of
clients can make the board hold is fixed.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

SESSION_IDLE_SECONDS = 12 * 3600      # a teaching day; signing in again costs a teacher little
SESSION_MAX = 64                      # teacher sessions kept at once (the oldest goes first)
SIGN_IN_FAILURES = 10                 # wrong passwords per address ...
SIGN_IN_WINDOW = 60.0                 # ... per this many seconds, then wait
THROTTLED_ADDRESSES_MAX = 4096        # addresses whose failures are remembered
ROOM_CODE_FAILURES = 10               # wrong room codes per address a window (a counter of its own)
SESSION_CODE_FAILURES = 30            # wrong teaching-session codes per address a window: a class
                                      # behind one NAT address makes typos; 10 000 codes keep guessing dear
NEW_SEATS = 100                       # new teaching-session seats per address a window (rejoins free):
                                      # a class behind one NAT never reaches it, a script taking every seat does


@dataclass
class Session:
    user: str
    csrf: str
    created: float
    last_seen: float


class Sessions:
    """Teacher sign-ins by cookie. Only a digest of each token is kept, so a memory dump or a
    log line never holds a usable cookie."""

    def __init__(self, idle: float = SESSION_IDLE_SECONDS, most: int = SESSION_MAX):
        self.idle = idle
        self.most = most
        self._by_digest: OrderedDict[bytes, Session] = OrderedDict()

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def start(self, user: str, now: float | None = None) -> tuple[str, Session]:
        now = time.monotonic() if now is None else now
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(24), now, now)
        self._by_digest[self._digest(token)] = session
        while len(self._by_digest) > self.most:
            self._by_digest.popitem(last=False)
        return token, session

    def get(self, token: str, now: float | None = None) -> Session | None:
        if not token or len(token) > 128:
            return None
        now = time.monotonic() if now is None else now
        key = self._digest(token)
        session = self._by_digest.get(key)
        if session is None:
            return None
        if now - session.last_seen > self.idle:
            del self._by_digest[key]
            return None
        session.last_seen = now
        self._by_digest.move_to_end(key)
        return session

    def end(self, token: str) -> None:
        self._by_digest.pop(self._digest(token), None)

    def end_all(self) -> None:
        """After a password change: every other device signs in again."""
        self._by_digest.clear()

    def __len__(self) -> int:
        return len(self._by_digest)


class Throttle:
    """Tries per client address (wrong passwords; each kind of code and new seats have a Throttle
    of their own): at most ``limit`` in ``window`` seconds, then refused until the oldest one is
    out of the window."""

    def __init__(self, limit: int = SIGN_IN_FAILURES, window: float = SIGN_IN_WINDOW,
                 addresses: int = THROTTLED_ADDRESSES_MAX):
        self.limit = limit
        self.window = window
        self.addresses = addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, address: str, now: float | None = None) -> float:
        """Seconds ``address`` must wait before its next try (0: it may try now)."""
        now = time.monotonic() if now is None else now
        times = self._failures.get(address)
        if not times:
            return 0.0
        while times and now - times[0] >= self.window:
            times.popleft()
        if len(times) < self.limit:
            return 0.0
        return max(0.0, self.window - (now - times[0]))

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        times = self._failures.setdefault(address, deque(maxlen=self.limit))
        times.append(now)
        self._failures.move_to_end(address)
        while len(self._failures) > self.addresses:
            self._failures.popitem(last=False)

    def attempt(self, address: str, now: float | None = None) -> tuple[float, float]:
        """``(wait, stamp)``: when ``wait`` is 0 the try is counted at once, before the caller awaits
        anything (a body, a password hash), so N requests sent together with slow bodies cannot all
        pass the check before the first is counted. A right one then calls ``forgive(address,
        stamp)``, which takes back its own count and nothing else: the wrong tries of others in
        flight, or before it, still count (a right answer never clears them, so wrong tries stay
        at ``limit`` a window however many right ones are mixed in)."""
        now = time.monotonic() if now is None else now
        wait = self.wait(address, now)
        if not wait:
            self.failed(address, now)
        return wait, now

    def forgive(self, address: str, stamp: float) -> None:
        """Take back the one try counted at ``stamp`` (a right answer); any equal stamp is the same."""
        times = self._failures.get(address)
        if times is not None:
            try:
                times.remove(stamp)
            except ValueError:      # already out of the window, or the address forgotten
                pass
