"""Typed application state (aiohttp AppKey), shared by the route modules."""

from aiohttp import web

from ..archive import Archive
from ..config import Settings
from ..dicom.policy import UploadWindow

ARCHIVE = web.AppKey("archive", Archive)
SETTINGS = web.AppKey("settings", Settings)
STARTED = web.AppKey("started", float)
# Ports actually listened on (the configuration may say 0: any free port).
PORTS = web.AppKey("ports", dict)
# Parts started after the web server: {"advertiser": discovery.Advertiser} when Zeroconf is on.
RUNTIME = web.AppKey("runtime", dict)
# The teacher's "accept DICOM uploads for N minutes", shared with the DICOM listener.
UPLOAD_WINDOW = web.AppKey("upload_window", UploadWindow)
