"""Error answers of the web layer, in Orthanc's JSON shape, and the middlewares that make them.

Kept apart from ``app`` so that any route module can answer an error without importing the
application that imports it (that was an import cycle with ``modalities``).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web

from ..archive import (
    CaseConflict,
    CaseExists,
    CaseInvalid,
    FindError,
    InvalidDicom,
    NotFound,
    SessionConflict,
    SessionInvalid,
    StorageFull,
    StoreRefused,
    UnknownTag,
    WrongType,
)
from ..imaging.render import DecodeError, FrameNotFound
from ..imaging.transcode import UnsupportedTranscode
from ..teaching.anonymize import AnonymizationError

__all__ = ["BadArgument", "BadRequestBody", "ItemNotFound", "StoredFileIOError", "StoredFileUnreadable", "error_middleware", "error_response", "log_middleware"]

log = logging.getLogger("pipacs.http")

INTERNAL_ERROR = "internal error; the appliance's log has the details"


class StoredFileIOError(Exception):
    """The storage failed reading a stored file (an I/O error of the SD card): 503, the reason in the log."""

    def __init__(self, instance_id: str):
        super().__init__(f"the stored file of instance {instance_id} could not be read from the storage "
                         "(an I/O error); try again later")
        self.instance_id = instance_id


class StoredFileUnreadable(Exception):
    """A stored file that pydicom cannot read back (an unknown VR, an odd length: stored by an
    earlier version, whose ingest accepted it). Routes about several instances skip it with a
    warning; a route about that one instance answers this, with the reason in the log."""

    def __init__(self, instance_id: str):
        super().__init__(f"the stored file of instance {instance_id} cannot be read (an element pydicom cannot "
                         f"decode; the appliance's log names it); its bytes are still served by "
                         f"/instances/{instance_id}/file")
        self.instance_id = instance_id


# Orthanc's error codes (OrthancStatus) and their fixed text (OrthancError), as Orthanc 1.10 answers
# them: scripts test the code, e.g. Orthanc's own Python client (orthanc-api-client) tells a file
# that is not DICOM (15) from other refusals of an upload.
BAD_REQUEST = (8, "Bad request")
BAD_FILE_FORMAT = (15, "Bad file format")
UNKNOWN_RESOURCE = (17, "Unknown resource")
INEXISTENT_ITEM = (7, "Accessing an inexistent item")
PARAMETER_OUT_OF_RANGE = (3, "Parameter out of range")
FULL_STORAGE = (19, "The file storage is full")
NETWORK_PROTOCOL = (9, "Error in the network protocol")
BAD_PARAMETER_TYPE = (5, "Bad type for a parameter")
UNKNOWN_DICOM_TAG = (27, "Unknown DICOM tag")
INTERNAL = (-1, "Internal error")
# the code an error of a status carries when nothing more precise is known
_ORTHANC_CODE_OF_STATUS = {400: BAD_REQUEST, 404: UNKNOWN_RESOURCE, 500: INTERNAL, 507: FULL_STORAGE}


class BadRequestBody(ValueError):
    """A request body that cannot be used as it is (not JSON, or not the JSON type the route takes),
    with the Orthanc error code that route answers: Orthanc itself is not uniform (15 from
    /anonymize, 8 from /tools/find)."""

    def __init__(self, message: str, orthanc_code: tuple[int, str] = BAD_FILE_FORMAT):
        super().__init__(message)
        self.orthanc_code = orthanc_code


class BadArgument(BadRequestBody):
    """A query-string argument that is not of its type (``limit=x``): Orthanc's code 5."""

    def __init__(self, message: str):
        super().__init__(message, BAD_PARAMETER_TYPE)


class ItemNotFound(NotFound):
    """What a known resource or collection lacks (a metadata name, a modality): Orthanc's
    "Accessing an inexistent item" (7), where an unknown resource or route is 17."""


def error_response(request: web.Request, status: int, message: str, details: str = "",
                   orthanc_code: tuple[int, str] | None = None) -> web.Response:
    """Errors in Orthanc's JSON shape, always with a message a person can act on."""
    body = error_body(status, message, request.method, request.path, orthanc_code)
    if details:
        body["Details"] = details
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, indent=3))


def error_body(status: int, message: str, method: str | None = None, uri: str | None = None,
               orthanc_code: tuple[int, str] | None = None) -> dict[str, Any]:
    """Orthanc's error object; Method and Uri when known (aiohttp's own errors may come before
    a request was parsed); OrthancStatus and OrthancError where Orthanc gives them."""
    body: dict[str, Any] = {"HttpError": phrase(status), "HttpStatus": status, "Message": message}
    if method is not None:
        body["Method"] = method
    code = orthanc_code or _ORTHANC_CODE_OF_STATUS.get(status)
    if code is not None:
        body["OrthancError"], body["OrthancStatus"] = code[1], code[0]
    if uri is not None:
        body["Uri"] = uri
    return body


def phrase(status: int) -> str:
    """The reason phrase of an HTTP status."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:   # a code the standard library does not name
        return "Error"


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Any exception out of a handler becomes an error answer (or, once the answer began, a cut)."""
    try:
        return await handler(request)
    except Exception as e:
        if isinstance(e, web.HTTPException) and e.status < 400:
            raise
        if request.writer is not None and request.writer.output_size > 0:
            return _cut_short(request, e)
        return _error_answer(request, e)


# The errors a person can act on whose message is their own text: (kind, status, Orthanc code),
# in order (a subclass before its base: ItemNotFound before NotFound, UnknownTag before FindError)
_PLAIN_ERRORS: tuple[tuple[type[Exception], int, tuple[int, str] | None], ...] = (
    (ItemNotFound, 404, INEXISTENT_ITEM),
    (CaseInvalid, 400, BAD_REQUEST),
    (CaseExists, 409, None),
    (CaseConflict, 409, None),
    (SessionInvalid, 400, BAD_REQUEST),       # a teaching session's document, answer or nickname
    (SessionConflict, 409, None),             # what the session's state does not allow (SessionStale too)
    (InvalidDicom, 400, BAD_FILE_FORMAT),
    (UnsupportedTranscode, 400, PARAMETER_OUT_OF_RANGE),
    (WrongType, 400, BAD_REQUEST),
    (UnknownTag, 400, UNKNOWN_DICOM_TAG),
    (FindError, 400, PARAMETER_OUT_OF_RANGE),
    (AnonymizationError, 400, BAD_REQUEST),
    (FrameNotFound, 404, INEXISTENT_ITEM),
    (StoredFileUnreadable, 500, None),
    (StoredFileIOError, 503, None),
    (DecodeError, 415, None),
)


def _known_error(e: Exception) -> tuple[int, str, tuple[int, str] | None] | None:
    """The status, message and Orthanc error code of an error a person can act on; None for a
    fault of ours."""
    if isinstance(e, web.HTTPException):
        return e.status, (e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason), None
    if isinstance(e, BadRequestBody):
        return 400, str(e), e.orthanc_code
    for kind, status, code in _PLAIN_ERRORS:
        if isinstance(e, kind):
            return status, str(e), code
    if isinstance(e, NotFound):
        return 404, str(e) or "unknown resource", UNKNOWN_RESOURCE
    if isinstance(e, StorageFull):
        return 507, f"cannot store: {e.strerror or e}", FULL_STORAGE
    if isinstance(e, StoreRefused):
        return 507, f"cannot store: {e}", FULL_STORAGE
    if isinstance(e, json.JSONDecodeError):   # Orthanc: a body it cannot parse is a bad file format
        return 400, f"the request body is not valid JSON: {e}", BAD_FILE_FORMAT
    return None


def _error_answer(request: web.Request, e: Exception) -> web.Response:
    known = _known_error(e)
    if known is None:
        log.error("error in %s %s", request.method, request.path, exc_info=e)
        # a fault of ours: the details (exception text, traceback) go to the log, never to the client
        return error_response(request, 500, INTERNAL_ERROR)
    status, message, code = known
    resp = error_response(request, status, message, orthanc_code=code)
    if isinstance(e, web.HTTPMethodNotAllowed):     # RFC 9110: a 405 names the methods allowed
        resp.headers["Allow"] = e.headers.get("Allow", "")
    return resp


def _cut_short(request: web.Request, e: Exception) -> web.StreamResponse:
    """An answer whose headers and part of whose body are out cannot turn into an error answer
    (it would land inside the first one): the connection is closed, so the client sees a
    truncated answer, and the reason goes to the log."""
    known = _known_error(e)
    if isinstance(e, ConnectionError):
        log.info("%s %s stopped: %s", request.method, request.path, e or "the client went away")
    elif known is not None:
        log.warning("%s %s cut short after its answer began: %s", request.method, request.path, known[1])
    else:
        log.error("%s %s cut short after its answer began", request.method, request.path, exc_info=e)
    if request.transport is not None:
        request.transport.close()
    return web.StreamResponse()   # aiohttp finds the connection closed and writes nothing more


@web.middleware
async def log_middleware(request: web.Request, handler):
    """Every error answer leaves a line in the log, whoever made it."""
    resp = await handler(request)
    if resp.status >= 400:
        log.warning("%s %s -> %d", request.method, request.path_qs, resp.status)
    return resp
