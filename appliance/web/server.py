"""The web server's connections: limits per address and in all, a deadline for a request's head,
and aiohttp's own error answers (bad request line, headers too large...) in Orthanc's JSON shape.

aiohttp 3.14 has no limit on connections and closes an idle one only after its keep-alive
timeout (3630 s by default), so a script holding a thousand half-sent requests took the board's
open files and the class's answers. Here:

- ``ConnectionLimits``: a connection over HttpMaximumConnectionsPerAddress or
  HttpMaximumConnections is answered 503 (JSON, with Retry-After) at once and closed.
- The head deadline (HttpRequestHeaderTimeout) is aiohttp's keep-alive timer, which already
  starts when a connection is made and again when an answer ends, and closes the connection
  if aiohttp is then still waiting for a whole request line and headers (partly sent or not
  at all): given a few seconds instead of an hour, it is the request-header timeout. A request
  being handled (a slow upload, a long download) is never cut by it.
- ``PipacsRequestHandler.handle_error``: aiohttp's answers to requests it cannot parse, as JSON,
  without the parser's text (which quotes the client's bytes).

aiohttp internals relied on (tests/test_connections.py pins each by name): ``RequestHandler``'s
constructor, ``connection_made``/``connection_lost``/``data_received``, ``handle_error``'s
signature, the keep-alive timer (``_process_keepalive``, started in ``connection_made``), and
``BaseSite._server`` (which ``BaseRunner.addresses`` and ``BaseSite.stop`` read).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

from ..refusals import RefusalReporter
from .errors import error_body, phrase

log = logging.getLogger("pipacs.http")

BACKLOG = 1024          # connections the kernel queues before we accept them: a class arriving at once
RETRY_AFTER = 10        # seconds, in the Retry-After of a connection refused over a limit
REFUSAL_LINGER = 1.0    # seconds a refused connection is read (and its bytes dropped) before it is
#                         closed: closed with unread data it is reset, and a reset may overtake the 503
REFUSALS_LINGERING = 256  # most refused connections lingering at once; beyond, closed at once


def orthanc_error(status: int, message: str, method: str | None = None, uri: str | None = None) -> bytes:
    """An error body in Orthanc's shape (``errors.error_body``), as bytes."""
    return json.dumps(error_body(status, message, method, uri), indent=3).encode()


def refusal_answer(message: str) -> bytes:
    """A whole HTTP/1.1 503 answer (written before the request is read, then the connection closes)."""
    body = orthanc_error(503, message)
    head = ("HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Retry-After: {RETRY_AFTER}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


class ConnectionLimits:
    """HTTP connections open now, per client address and in all (used on the event loop only)."""

    def __init__(self, total: int, per_address: int):
        self.total = total
        self.per_address = per_address
        self.open = 0
        self.by_address: dict[str, int] = {}
        self.lingering = 0   # refused connections still being read before their close

    def admit(self, address: str) -> str | None:
        """None if a new connection from ``address`` may be served (it is then counted); else why not."""
        if self.open >= self.total:
            return f"the server has {self.open} connections open, its most (HttpMaximumConnections)"
        mine = self.by_address.get(address, 0)
        if mine >= self.per_address:
            return (f"{mine} connections are open from your address, the most allowed "
                    f"(HttpMaximumConnectionsPerAddress); close some and try again")
        self.by_address[address] = mine + 1
        self.open += 1
        return None

    def release(self, address: str) -> None:
        left = self.by_address.get(address, 0) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)
        self.open -= 1


def protocol_error(status: int, exc: BaseException | None, handler: web.RequestHandler) -> tuple[int, str]:
    """The status and message of an error aiohttp answers itself: fixed sentences, never the
    exception's text (aiohttp's quotes the client's bytes back)."""
    if isinstance(exc, LineTooLong):
        return 431, (f"the request line or a header is too long (at most {handler.max_line_size} bytes "
                     f"for the request line, {handler.max_field_size} for a header)")
    if isinstance(exc, BadHttpMessage) and exc.message == "Too many headers received":
        return 431, f"the request has too many headers (at most {handler.max_headers})"
    if isinstance(exc, BadHttpMethod):
        if exc.message == "Received HTTPS traffic on an HTTP port":
            return 400, "this port speaks HTTP, not HTTPS: use an http:// address"
        return 400, "the request does not begin with an HTTP method (GET, POST...)"
    if isinstance(exc, BadStatusLine):
        return 400, "the request line is not valid HTTP (expected: METHOD /path HTTP/1.1)"
    if isinstance(exc, InvalidURLError):
        return 400, "the request's target is not a valid URL"
    if isinstance(exc, InvalidHeader):
        return 400, "a header of the request is not valid HTTP"
    if isinstance(exc, PayloadEncodingError):
        return 400, "the request's body does not match its framing (Content-Length, Transfer-Encoding)"
    if isinstance(exc, HttpProcessingError):
        return 400, "the request is not valid HTTP"
    if status == 504:
        return 504, "the request took too long to answer"
    if 400 <= status < 500:
        return status, phrase(status)
    return 500, "internal error"


class PipacsRequestHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, with the connection limits and JSON errors.

    Made by ``GuardedSite`` with the runner's ``Server`` as its manager, exactly as aiohttp
    makes its own (so the runner's shutdown closes these connections as it closes its own).
    """

    __slots__ = ("_address", "_admitted", "_bad_requests", "_limits", "_linger", "_refusals")

    def __init__(self, manager: web.Server, *, limits: ConnectionLimits, refusals: RefusalReporter,
                 bad_requests: RefusalReporter, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._refusals = refusals
        self._bad_requests = bad_requests
        self._address = ""
        self._admitted = False
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        why = self._limits.admit(self._address)
        if why is None:
            self._admitted = True
            super().connection_made(transport)
            return
        self._refusals.refused(self._address, why)
        self._refuse(transport, why)   # type: ignore[arg-type]

    def _refuse(self, transport: asyncio.Transport, why: str) -> None:
        """Answer 503 before reading the request, stop sending, drop what the client sends for
        REFUSAL_LINGER seconds (or until it closes), then close."""
        transport.write(refusal_answer(f"too busy: {why}"))
        limits = self._limits
        if limits.lingering >= REFUSALS_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        limits.lingering += 1
        self._linger = asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            super().data_received(data)

    def eof_received(self) -> None:
        if self._admitted:
            super().eof_received()
        # a refused connection: returning None lets the transport close itself

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admitted:
            self._admitted = False
            self._limits.release(self._address)
            super().connection_lost(exc)
        elif self._linger is not None:
            self._linger.cancel()
            self._linger = None
            self._limits.lingering -= 1

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's own error answers (a request it cannot parse, a handler's exception that
        escaped the application's middlewares) in Orthanc's JSON shape."""
        status, text = protocol_error(status, exc, self)
        parsed = not isinstance(exc, HttpProcessingError)   # else aiohttp's request is a placeholder
        if status >= 500:
            log.error("error handling %s %s from %s", request.method, request.path, request.remote, exc_info=exc)
        elif isinstance(exc, BadHttpMethod):
            log.debug("not HTTP from %s: %s", request.remote, type(exc).__name__)   # port scanners, TLS
        else:
            self._bad_requests.refused(self._address, f"{status}: {type(exc).__name__ if exc else text}")
        if request.writer.output_size > 0:   # as aiohttp: an answer already begun cannot become another
            raise ConnectionError("an answer was already being sent")
        body = orthanc_error(status, text, request.method if parsed else None, request.path if parsed else None)
        resp = web.Response(status=status, body=body, content_type="application/json")
        resp.force_close()
        return resp


class GuardedSite(web.BaseSite):
    """A TCP site (as ``web.TCPSite``) whose connections are ``PipacsRequestHandler``s.

    ``handler_options`` are RequestHandler's keyword arguments (what web.AppRunner would hand
    to its Server): access_log, tcp_keepalive, keepalive_timeout (the head deadline)...
    """

    __slots__ = ("_bad_requests", "_host", "_limits", "_options", "_port", "_refusals", "_reuse_address")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limits: ConnectionLimits,
                 refusals: RefusalReporter, handler_options: dict[str, Any], *, reuse_address: bool = True,
                 backlog: int = BACKLOG):
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_address = reuse_address
        self._limits = limits
        self._refusals = refusals
        self._bad_requests = RefusalReporter(None, "HTTP request", logger=log)
        self._options = dict(handler_options)

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    def _protocol(self) -> PipacsRequestHandler:
        manager = self._runner.server
        assert manager is not None
        return PipacsRequestHandler(manager, loop=asyncio.get_running_loop(), limits=self._limits,
                                    refusals=self._refusals, bad_requests=self._bad_requests, **self._options)

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self._host, self._port, backlog=self._backlog,
                                                reuse_address=self._reuse_address)
