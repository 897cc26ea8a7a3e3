"""Request paths and methods as Orthanc reads them, applied once, before routing.

Orthanc clients build addresses as ``base + "/patients"`` with a base ending in ``/``, and some
send PUT or DELETE as a POST (or a GET) with the method named elsewhere. What Orthanc 1.10.1
answers (measured; its rule is ``ExtractMethod`` in OrthancFramework/Sources/HttpServer/
HttpServer.cpp, and its embedded web server's path normalisation):

- Empty path segments do not count: ``//patients``, ``///patients``, ``/studies//{id}`` and
  ``/instances/{id}//tags`` are ``/patients``, ``/studies/{id}``, ``/instances/{id}/tags``; so
  is a trailing slash (``/patients/``, ``/system//``). ``/`` stays ``/``.
- ``X-HTTP-Method-Override`` (on a request of any method): ``PUT`` or ``DELETE``, in any case,
  makes the request that method; any other value (``GET``, ``POST``, ``PATCH``) is answered 400;
  an empty value is no override.
- ``?_method=`` does the same, on a GET only and only when the header is absent:
  ``GET /x?_method=delete`` is ``DELETE /x``; ``POST /x?_method=GET`` stays a POST.

Both are done where aiohttp turns a parsed request message into a ``Request`` (the Server's
``request_factory``, see ``install``), so the router, the role table and the forgery checks of
``access`` see only the rewritten path and method: an override is judged exactly as the method
it names (a GET that says ``_method=DELETE`` is a state change, refused from another site). A
refused override is marked on the request and answered 400 by ``override_refusal_middleware``.

One departure: only GET, POST, PUT and DELETE (Orthanc's methods) are overridden. A HEAD's
answer has no body, and aiohttp decides that from the request's method: HEAD stays HEAD.

The common request (no ``//``, no trailing slash, no override header, a GET without a query
string: every ``/file`` download) costs a few string tests and a header lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from multidict import istr
from yarl import URL

from .errors import error_response

OVERRIDE_HEADER = istr("X-HTTP-Method-Override")
OVERRIDE_QUERY = "_method"
OVERRIDDEN = frozenset({"GET", "POST", "PUT", "DELETE"})   # methods an override may replace
OVERRIDES = frozenset({"PUT", "DELETE"})                    # what an override may name (Orthanc's)
OVERRIDE_REFUSED = web.RequestKey("override_refused", str)  # why a request's override is refused

RequestFactory = Callable[..., web.BaseRequest]


def orthanc_path(raw_path: str) -> str:
    """``raw_path`` without its empty segments (repeated and trailing slashes); ``/`` for none."""
    return "/" + "/".join(p for p in raw_path.split("/") if p)


def needs_orthanc_path(raw_path: str) -> bool:
    """True when Orthanc would read ``raw_path`` differently from aiohttp's router."""
    return "//" in raw_path or (raw_path.endswith("/") and raw_path != "/")


def orthanc_method(method: str, headers: Any, url: URL) -> tuple[str, str]:
    """The method Orthanc would serve, and why the override is refused ("" when it is not)."""
    if method not in OVERRIDDEN:
        return method, ""
    named = headers.get(OVERRIDE_HEADER)
    where = "X-HTTP-Method-Override"
    if named is None:
        if method != "GET" or not url.raw_query_string:
            return method, ""
        named = url.query.get(OVERRIDE_QUERY)
        where = "?_method="
        if named is None:
            return method, ""
    if not named:
        return method, ""
    wanted = named.upper()
    if wanted in OVERRIDES:
        return wanted, ""
    return method, (f"{where} may name only PUT or DELETE, as in Orthanc; "
                    f"send any other method as itself")


def orthanc_message(message: RawRequestMessage) -> tuple[RawRequestMessage, str]:
    """The message with Orthanc's reading of its path and method, and why its override is refused
    ("" when there is none to refuse). The message itself when nothing changes."""
    url = message.url
    raw_path = url.raw_path
    method, refused = orthanc_method(message.method, message.headers, url)
    if not needs_orthanc_path(raw_path):
        if method == message.method:
            return message, refused
        return message._replace(method=method), refused
    new_url = URL.build(scheme=url.scheme, authority=url.raw_authority, path=orthanc_path(raw_path),
                        query_string=url.raw_query_string, fragment=url.raw_fragment, encoded=True)
    return message._replace(method=method, path=str(new_url), url=new_url), refused


def orthanc_request_factory(make_request: RequestFactory) -> RequestFactory:
    """``make_request`` (aiohttp's request factory) reading every message as Orthanc does."""
    def make(message: RawRequestMessage, *args: Any, **kwargs: Any) -> web.BaseRequest:
        message, refused = orthanc_message(message)
        request = make_request(message, *args, **kwargs)
        if refused:
            request[OVERRIDE_REFUSED] = refused
        return request
    make.orthanc_paths = True   # type: ignore[attr-defined]
    return make


def install(server: web.Server) -> None:
    """Read every request ``server`` makes as Orthanc does (once; before any connection is made:
    each connection takes the server's factory when it starts)."""
    if not getattr(server.request_factory, "orthanc_paths", False):
        server.request_factory = orthanc_request_factory(server.request_factory)


@web.middleware
async def override_refusal_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """A method override Orthanc refuses is answered 400, before any route or role is looked at."""
    refused = request.get(OVERRIDE_REFUSED)
    if refused is not None:
        return error_response(request, 400, refused)
    return await handler(request)
