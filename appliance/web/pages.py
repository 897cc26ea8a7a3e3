"""The web pages: the explorer at /, the touch viewer at /viewer/{series}, and /pipacs/status,
which tells a teacher where the appliance is and how to point a viewer at it.

Plain files from the package (no build step, nothing from a CDN: classrooms are often offline).
"""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path

from aiohttp import web

from .. import __version__
from ..config import read_json_file
from ..netinfo import ipv4_addresses
from ..network import status_json as network_status
from .keys import ARCHIVE, PORTS, RUNTIME, SETTINGS
from .resources import json_response

routes = web.RouteTableDef()
STATIC = Path(__file__).parent / "static"
_FILES = {p.name for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else set()


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache",
                                                    "Content-Type": "text/html; charset=utf-8"})


@routes.get("/")
async def explorer(request: web.Request) -> web.StreamResponse:
    return _page("index.html")


@routes.get("/app/explorer.html")
async def orthanc_explorer(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/")   # where Orthanc users' bookmarks point


@routes.get("/viewer/{series}")
async def viewer(request: web.Request) -> web.StreamResponse:
    return _page("viewer.html")


@routes.get("/join")
async def join(request: web.Request) -> web.StreamResponse:
    """Where a student joins a teaching session: the code the projector shows (``?code=`` fills it in,
    as the projector's QR code does) and a nickname; the page does the rest (POST /sessions/join)."""
    return _page("join.html")


@routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "favicon.svg", headers={"Content-Type": "image/svg+xml"})


@routes.get("/app/{name}")
async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _FILES:
        raise web.HTTPNotFound(text=f"no page {name!r}")
    headers = {"Cache-Control": "no-cache"}
    if name.endswith(".js"):
        headers["Content-Type"] = "text/javascript; charset=utf-8"
    elif name.endswith(".css"):
        headers["Content-Type"] = "text/css; charset=utf-8"
    return web.FileResponse(STATIC / name, headers=headers)


@routes.get("/pipacs/status")
async def status(request: web.Request) -> web.Response:
    """Everything a teacher needs to connect a viewer, and how full the card is."""
    s = request.app[SETTINGS]
    ports = request.app.get(PORTS, {})
    archive = request.app[ARCHIVE]
    st = await archive.statistics()
    disk = await asyncio.to_thread(shutil.disk_usage, archive.storage_dir)
    addrs = [{"Interface": i, "Address": a} for i, a in await asyncio.to_thread(ipv4_addresses)]
    if s["BindAddress"] not in ("0.0.0.0", "::"):
        addrs = [a for a in addrs if a["Address"] == s["BindAddress"]]
    advertiser = request.app.get(RUNTIME, {}).get("advertiser")
    http_port = ports.get("http", s["HttpPort"])
    return json_response({
        "Name": s["Name"], "Version": __version__, "DicomAet": s["DicomAet"],
        "DicomPort": ports.get("dicom", s["DicomPort"]), "HttpPort": http_port,
        "Addresses": addrs, "WadoUrl": "/wado", "DicomWebRoot": "/dicom-web",
        "ClassroomMode": s["ClassroomMode"], "RemoteAccessAllowed": s["RemoteAccessAllowed"],
        "Zeroconf": advertiser.names.as_json() if advertiser is not None else None,
        "Storage": {"UsedBytes": st.disk_size, "LimitBytes": s["MaximumStorageSize"] * 2**20,
                    "FreeBytes": disk.free, "DiskBytes": disk.total,
                    "Patients": st.patients, "Studies": st.studies, "Series": st.series,
                    "Instances": st.instances, "MaximumPatientCount": s["MaximumPatientCount"]},
        "ConfigurationProblem": s.problem or None,
        "Network": await asyncio.to_thread(network_status),
        "Import": await asyncio.to_thread(import_status),
    })


def import_status() -> dict | None:
    """The latest `pipacs import --status-file` (the USB auto-import), if any."""
    import os

    return read_json_file(Path(os.environ.get("PIPACS_IMPORT_STATUS_FILE", "/run/pipacs/import.json")))


@routes.get("/pipacs/qr.svg")
async def qr_code(request: web.Request) -> web.Response:
    """A QR code of ``text`` (the web address, the hotspot's Wi-Fi), made here: no network needed."""
    import segno

    text = request.query.get("text", "")
    if not text or len(text) > 512:
        raise web.HTTPBadRequest(text="give the text to encode: /pipacs/qr.svg?text=... (at most 512 characters)")
    buf = io.BytesIO()
    segno.make(text, error="m").save(buf, kind="svg", scale=6, border=2, dark="#000", light="#fff")
    return web.Response(body=buf.getvalue(), content_type="image/svg+xml",
                        headers={"Cache-Control": "max-age=3600"})
