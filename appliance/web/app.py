"""The aiohttp application: the remote-access, method-override (``paths``) and classroom-access
middlewares, the error middlewares (``errors``), then one route table per domain. Paths and
method overrides are read as Orthanc reads them before routing (``paths.install``, called where
the server is made)."""

from __future__ import annotations

import logging
import os
import secrets
from collections import OrderedDict

from aiohttp import web

from ..accounts import PasswordFile, Teachers
from ..archive import Archive
from ..audit import Audit
from ..config import Settings
from ..dicom.policy import UploadWindow
from . import (
    access,
    casebundles,
    cases,
    casework,
    classcache,
    classprep,
    dicomweb,
    images,
    live,
    modalities,
    pages,
    pixels,
    publishing,
    resources,
    system,
    teaching_sessions,
    tools,
)
from .access import ACCESS, AccessState, is_loopback
from .cases_dicom import routes as key_object_routes
from .classcache import CLASS_CACHE, ClassCache
from .errors import error_middleware, error_response, log_middleware
from .keys import ARCHIVE, SETTINGS, STARTED, UPLOAD_WINDOW
from .paths import override_refusal_middleware
from .roles import ROUTE_NEEDS

log = logging.getLogger("pipacs.http")


@web.middleware
async def remote_access_middleware(request: web.Request, handler):
    """Loopback only unless RemoteAccessAllowed."""
    if not request.app[SETTINGS]["RemoteAccessAllowed"] and not is_loopback(request.remote):
        return error_response(request, 403, "remote access is disabled on this appliance; set RemoteAccessAllowed "
                                            "to true in its configuration")
    return await handler(request)


def access_state(settings: Settings, local_token: str = "") -> AccessState:
    """Who the teachers are and what students need, from the configuration."""
    teachers = Teachers(settings["RegisteredUsers"], PasswordFile(settings.index_dir))
    state = AccessState(teachers, student_access=settings["StudentAccess"],
                        student_downloads=settings["StudentDownloads"],
                        authentication=settings["AuthenticationEnabled"],
                        room_code=f"{secrets.randbelow(10**6):06d}", room_key=os.urandom(32),
                        local_token=local_token)
    if state.authentication and not settings["RegisteredUsers"] and not teachers.has_own_password:
        log.error("AuthenticationEnabled is true but there is no teacher: no RegisteredUsers and no password kept "
                  "by pipacs; set one with `pipacs teacher-password`")
    elif not state.authentication and settings["RemoteAccessAllowed"]:
        log.warning("AuthenticationEnabled is false and RemoteAccessAllowed is true: anyone on the network may "
                    "change or delete the archive")
    return state


def class_cache(archive: Archive, settings: Settings) -> ClassCache:
    """The class cache with its budgets from the board (or the configuration) and its disk tier in the
    archive's derived-data store (none when ClassCacheDisk is 0)."""
    disk = None
    if archive is not None:    # None: a route listing only (tests/test_access.py)
        disk_bytes = classcache.disk_budget(settings["ClassCacheDisk"], archive.free_disk_bytes())
        disk = archive.derived_store(disk_bytes) if disk_bytes > 0 else None
    cache = ClassCache(classcache.memory_budget(settings["ClassCacheMemory"]), disk,
                       render_budget=classcache.memory_budget(settings["RenderCacheSize"],
                                                              share=classcache.RENDER_SHARE,
                                                              minimum=classcache.RENDER_MINIMUM))
    if archive is not None:
        archive.on_files_dropped(cache.forget_owners)
    return cache


def build_app(archive: Archive, settings: Settings, started: float,
              upload_window: UploadWindow | None = None, local_token: str = "",
              audit: Audit | None = None) -> web.Application:
    """The whole web server: middlewares outermost first, then every route table."""
    app = web.Application(middlewares=[log_middleware, error_middleware, remote_access_middleware,
                                       override_refusal_middleware, access.access_middleware(ROUTE_NEEDS),
                                       modalities.remote_errors],
                          client_max_size=2**40)
    app[modalities.QUERIES] = OrderedDict()
    app[CLASS_CACHE] = class_cache(archive, settings)
    app[ARCHIVE] = archive
    app[resources.UPLOAD_STATE] = {}
    app[SETTINGS] = settings
    app[STARTED] = started
    app[ACCESS] = access_state(settings, local_token)
    if archive is not None:                  # None: a route listing only (tests/test_access.py)
        app[ACCESS].seat_of = archive.seat_of
    if audit is not None:
        app[ACCESS].audit = audit
    app[UPLOAD_WINDOW] = upload_window or UploadWindow()
    app.add_routes(access.routes)
    app.add_routes(publishing.routes)
    app.add_routes(system.routes)
    app.add_routes(tools.routes)
    app.add_routes(resources.routes)
    app.add_routes(modalities.routes)
    app.add_routes(images.routes)
    app.add_routes(pixels.routes)
    classprep.install(app)
    app.add_routes(dicomweb.routes)
    app.add_routes(casebundles.routes)       # before the /cases routes: /cases/import is not a case ID
    app.add_routes(casework.routes)
    app.add_routes(cases.routes)
    app.add_routes(key_object_routes)
    teaching_sessions.install(app)
    live.install(app)
    app.add_routes(pages.routes)
    return app
