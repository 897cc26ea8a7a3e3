"""Orthanc's system tools: /tools (what there is), /tools/now, /tools/now-local,
/tools/generate-uid, /tools/dicom-conformance, /tools/accepted-transfer-syntaxes,
/tools/unknown-sop-class-accepted, /tools/default-encoding, /tools/dicom-echo, and /plugins
(pipacs loads none: its DICOMweb is built in)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiohttp import web
from pydicom.uid import UID, generate_uid
from pynetdicom import AE

from .. import __version__, charsets
from ..archive import NotFound
from ..config import ConfigError, parse_modalities
from ..dicom import scu
from ..dicom.listener import add_scp_contexts
from .errors import BAD_FILE_FORMAT, PARAMETER_OUT_OF_RANGE, BadRequestBody
from .keys import SETTINGS
from .modalities import RemoteError
from .resources import body_text, json_body, json_response

routes = web.RouteTableDef()

# What GET /tools lists: the tools pipacs offers (Orthanc lists its own, some of which pipacs
# does not offer: a script that discovers tools from this list finds only ones that answer).
TOOLS = sorted(["accepted-transfer-syntaxes", "create-archive", "create-media", "create-media-extended",
                "default-encoding", "dicom-conformance", "dicom-echo", "find", "generate-uid", "labels", "lookup",
                "now", "now-local", "unknown-sop-class-accepted"])

UID_LEVELS = ("patient", "study", "series", "instance")


def _text(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/plain")


@routes.get("/tools")
async def list_tools(request: web.Request) -> web.Response:
    return json_response(TOOLS)


def orthanc_time(t: time.struct_time) -> str:
    """Orthanc's date-time of /tools/now: ``YYYYMMDDTHHMMSS``."""
    return time.strftime("%Y%m%dT%H%M%S", t)


@routes.get("/tools/now")
async def now_utc(request: web.Request) -> web.Response:
    return _text(orthanc_time(time.gmtime()))


@routes.get("/tools/now-local")
async def now_local(request: web.Request) -> web.Response:
    return _text(orthanc_time(time.localtime()))


def new_identifier(level: str) -> str:
    """A new identifier for ``level``, as Orthanc makes them: a patient's is a random UUID (a
    PatientID is not a UID), the others a UID (pydicom's: 2.25. and a random UUID, PS3.5 B.2)."""
    if level == "patient":
        return str(uuid.uuid4())
    return str(generate_uid(prefix=None))


@routes.get("/tools/generate-uid")
async def generate(request: web.Request) -> web.Response:
    level = request.query.get("level", "")
    if level not in UID_LEVELS:
        raise web.HTTPBadRequest(text=f"give the level the identifier is for: ?level= one of {', '.join(UID_LEVELS)}"
                                      + (f" (not {level!r})" if level else ""))
    return _text(new_identifier(level))


# ------------------------------------------------------------------ what the DICOM listener accepts

def scp_contexts() -> list[tuple[str, list[str]]]:
    """(abstract syntax, transfer syntaxes) of every presentation context the listener accepts,
    read from the pynetdicom AE configured as the listener's is."""
    ae = add_scp_contexts(AE())
    return [(str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax]) for cx in ae.supported_contexts]


def accepted_transfer_syntaxes() -> list[str]:
    return sorted({ts for _, syntaxes in scp_contexts() for ts in syntaxes}, key=_uid_order)


def _uid_order(uid: str) -> tuple[int, ...]:
    return tuple(int(p) for p in uid.split(".") if p.isdigit())


def _uid_name(uid: str) -> str:
    name = UID(uid).name
    return "" if name == uid else name


def conformance_statement(aet: str) -> str:
    """pipacs's DICOM conformance, as text: made from the listener's pynetdicom configuration,
    so it states what the listener accepts, no more."""
    contexts = scp_contexts()
    syntaxes = list(dict.fromkeys(ts for _, tss in contexts for ts in tss))   # in the listener's order
    lines = [f"pipacs {__version__}: DICOM conformance of the listener (AE title {aet})", "",
             "Services (SCP): C-ECHO; C-STORE of the storage SOP classes below; C-FIND, C-MOVE and C-GET",
             "of the Patient Root and Study Root query/retrieve models. As SCU: C-ECHO, C-STORE, C-FIND, C-MOVE",
             "(the /modalities routes), and C-STORE on a C-GET's own association.", "",
             f"Each abstract syntax below is accepted with these {len(syntaxes)} transfer syntaxes, in this order of",
             "preference: of those a peer proposes in a presentation context, the first one here is accepted.", ""]
    lines += [f"  {ts:<26} {_uid_name(ts)}" for ts in syntaxes]
    lines += ["", f"Abstract syntaxes accepted ({len(contexts)}):", ""]
    lines += [f"  {sop:<32} {_uid_name(sop)}" for sop, _ in contexts]
    lines += ["", "SOP classes not listed (private or unknown ones) are refused at association.", ""]
    return "\n".join(lines)


@routes.get("/tools/dicom-conformance")
async def dicom_conformance(request: web.Request) -> web.Response:
    text = await asyncio.to_thread(conformance_statement, request.app[SETTINGS]["DicomAet"])
    return _text(text)


@routes.get("/tools/accepted-transfer-syntaxes")
async def get_accepted_transfer_syntaxes(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(accepted_transfer_syntaxes))


@routes.get("/tools/unknown-sop-class-accepted")
async def unknown_sop_class_accepted(request: web.Request) -> web.Response:
    """Orthanc's answer when UnknownSopClassAccepted is false: pynetdicom accepts the storage
    SOP classes it knows, and refuses the others at association."""
    return _text("0")


# ------------------------------------------------------------------ DefaultEncoding

@routes.get("/tools/default-encoding")
async def get_default_encoding(request: web.Request) -> web.Response:
    return _text(charsets.current())


@routes.put("/tools/default-encoding")
async def put_default_encoding(request: web.Request) -> web.Response:
    """As Orthanc: the name in any case, answered in Orthanc's spelling; in memory only (the
    configuration's DefaultEncoding comes back at the next start)."""
    name = await body_text(request)
    try:
        return _text(charsets.set_current(name))
    except ValueError as e:
        raise BadRequestBody(str(e), PARAMETER_OUT_OF_RANGE) from None


# ------------------------------------------------------------------ C-ECHO to any node

class BadEchoBody(BadRequestBody):
    """A /tools/dicom-echo body that names no node; the message says what is wrong (Orthanc's code:
    a bad file format, or a parameter out of range for a port that is no port)."""


def echo_target(body: Any) -> tuple[dict[str, Any], float | None, bool]:
    """The node of a /tools/dicom-echo body ({"AET", "Host", "Port"} or [AET, host, port], as a
    modality is written), its optional Timeout in seconds and CheckFind; BadEchoBody otherwise."""
    if not isinstance(body, (dict, list)):
        raise BadEchoBody('expected {"AET": ..., "Host": ..., "Port": ...} (or [AET, host, port]), '
                         "optionally with \"Timeout\" in seconds")
    try:
        node = parse_modalities("body", {"echo": body})["echo"]
    except ConfigError as e:
        raise BadEchoBody(e.reason if e.key == "body.echo" else f"{e.key.removeprefix('body.echo.')}: {e.reason}",
                          PARAMETER_OUT_OF_RANGE if e.key.endswith(".Port") else BAD_FILE_FORMAT) from None
    timeout = body.get("Timeout") if isinstance(body, dict) else None
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout <= 3600):
        raise BadEchoBody("Timeout must be a whole number of seconds from 0 to 3600 (0: DicomScuTimeout)")
    check_find = body.get("CheckFind", False) if isinstance(body, dict) else False
    if not isinstance(check_find, bool):
        raise BadEchoBody("CheckFind must be true or false")
    return node, float(timeout) if timeout else None, check_find


@routes.post("/tools/dicom-echo")
async def dicom_echo(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]
    body = await json_body(request)
    node, timeout, check_find = echo_target(body)
    try:
        await asyncio.to_thread(scu.echo, s["DicomAet"], node, timeout or float(s["DicomScuTimeout"]), check_find)
    except scu.ScuError as e:
        raise RemoteError(str(e)) from None
    return json_response({})


# ------------------------------------------------------------------ plugins: none

@routes.get("/plugins")
async def plugins(request: web.Request) -> web.Response:
    return json_response([])


@routes.get("/plugins/{plugin}")
async def plugin(request: web.Request) -> web.Response:
    raise NotFound(f"no plugin {request.match_info['plugin']!r}: pipacs loads no plugins (its DICOMweb is built in, "
                   "at /dicom-web/)")
