"""Start and stop order of the appliance: archive, DICOM listener, web server; the reverse to stop."""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import __version__, charsets
from .accounts import make_local_token
from .archive import Archive, IndexUnusable
from .audit import Audit
from .config import Settings
from .dicom.listener import REFUSALS_LINGERING as DICOM_REFUSALS_LINGERING
from .dicom.listener import DicomListener
from .dicom.policy import UploadWindow
from .discovery import Advertiser, appliance_uid
from .netinfo import ipv4_addresses
from .refusals import RefusalReporter
from .systemd_notify import Notifier
from .teaching import tce
from .web import paths
from .web.app import build_app
from .web.keys import PORTS, RUNTIME
from .web.server import REFUSALS_LINGERING as HTTP_REFUSALS_LINGERING
from .web.server import ConnectionLimits, GuardedSite

log = logging.getLogger("pipacs")

# How long each step of a stop may take before the next one runs anyway. The bounded steps
# (1 + 12 + 6 + 3 s) leave the archive's close at least 5 s before STOP_DEADLINE, which is
# itself below the unit's TimeoutStopSec (30 s): systemd never has to SIGKILL a closing archive.
DICOM_GRACE = 10.0    # running associations finish (DicomListener.stop's own grace), then are aborted
WEB_GRACE = 5.0       # in-flight HTTP requests finish; aiohttp's default (60 s) is twice TimeoutStopSec
STOP_DEADLINE = 27.0  # after SIGTERM; then whatever still holds the process is named and it exits

# Open files, as counted for RLIMIT_NOFILE (measured in /proc/PID/fd, see tests/test_connections.py):
# an accepted association holds its socket and the socket pair that wakes its threads, and a
# store in progress its file (4); an HTTP connection its socket, and a file it is sending (2).
FILES_PER_ASSOCIATION = 4
FILES_PER_HTTP_CONNECTION = 2
# the index, logs, C-MOVE sub-associations, threads' pipes, Zeroconf, imports; and the refused
# connections still being answered (DICOM and HTTP)
FILES_HEADROOM = 256 + DICOM_REFUSALS_LINGERING + HTTP_REFUSALS_LINGERING


class StartupError(RuntimeError):
    """Something a person must fix before the appliance can start; the message says what."""


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.archive = Archive.from_settings(settings)
        self.listener: DicomListener | None = None
        self.runner: web.AppRunner | None = None
        self.dicom_port = 0
        self.http_port = 0
        self.stopping = asyncio.Event()
        self.notifier = Notifier()
        # the teacher's "accept DICOM uploads for N minutes", shared by the web page and the listener
        self.upload_window = UploadWindow()
        # teacher actions and refusals, from the web and DICOM, for the journal and the teacher's page
        self.audit = Audit()
        self.advertiser: Advertiser | None = None
        self._archive_open = False
        self._stopped = False
        self.stop_failures: list[str] = []

    async def start(self) -> None:
        s = self.settings
        if s.problem:
            log.error("%s", s.problem)
        open_files = raise_open_files_limit()
        charsets.set_current(s["DefaultEncoding"])   # before the archive indexes a file it finds
        try:
            await self.archive.open()
        except OSError as e:
            raise StartupError(f"cannot open the storage in {s.storage_dir}: {e.strerror or e}") from None
        except IndexUnusable as e:
            raise StartupError(str(e)) from None
        self._archive_open = True
        if s["AnonymizeOnIngest"]:
            from .teaching.derive import ingest_anonymizer
            self.archive.ingest_transform = ingest_anonymizer(await self.archive.secret("anonymization"))
        # IHE TCE: teaching key objects received by C-STORE or upload make draft cases
        tce.install(self.archive)
        loop = asyncio.get_running_loop()
        self.listener = DicomListener(self.archive, s, loop, upload_window=self.upload_window, audit=self.audit)
        try:
            self.dicom_port = self.listener.start()
        except OSError as e:
            await self.stop()
            raise StartupError(_port_problem("DicomPort", s["DicomPort"], e)) from None
        try:      # for commands on the board itself (pipacs import from a USB stick)
            local_token = make_local_token(s.index_dir)
        except OSError as e:
            log.warning("cannot write the local token (%s): pipacs import needs a teacher's password", e)
            local_token = ""
        app = build_app(self.archive, s, time.time(), upload_window=self.upload_window, local_token=local_token,
                        audit=self.audit)
        app[PORTS] = {"dicom": self.dicom_port}
        app[RUNTIME] = {}
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=WEB_GRACE)
        await self.runner.setup()
        assert self.runner.server is not None
        paths.install(self.runner.server)     # before any connection: each takes the factory it finds
        http_limit = fitted_http_connections(s["HttpMaximumConnections"], s["DicomMaximumAssociations"], open_files)
        handler_options = {
            "access_log": None,
            # No SO_KEEPALIVE: its first probe comes after two hours, long after the idle timeout
            # has closed the connection of an iPad that left; it only costs each connection.
            "tcp_keepalive": False,
            # aiohttp's keep-alive timer is the request-head deadline (see web/server.py): a
            # connection idle, or still sending a request's line and headers, that long after it
            # was made or its last answer ended is closed (aiohttp's own default: 3630 s).
            "keepalive_timeout": s["HttpRequestHeaderTimeout"],
        }
        site = GuardedSite(self.runner, s["BindAddress"], s["HttpPort"],
                           ConnectionLimits(http_limit, s["HttpMaximumConnectionsPerAddress"]),
                           RefusalReporter(self.audit, "HTTP connection"), handler_options)
        try:
            await site.start()
        except OSError as e:
            await self.stop()
            raise StartupError(_port_problem("HttpPort", s["HttpPort"], e)) from None
        self.http_port = self.runner.addresses[0][1]
        app[PORTS]["http"] = self.http_port
        self.archive.describe_owner(dicom=self.dicom_port, http=self.http_port)
        log.info("listening: dicom=%d http=%d aet=%s storage=%s", self.dicom_port, self.http_port,
                 s["DicomAet"], s.storage_dir)
        zc = s["Zeroconf"]
        if zc["Enabled"]:
            self.advertiser = Advertiser(zc["InstanceName"] or s["Name"], zc["HostName"], s["DicomAet"],
                                         self.dicom_port, self.http_port,
                                         appliance_uid(await self.archive.secret("appliance")), zc["Interfaces"])
            app[RUNTIME]["advertiser"] = self.advertiser
            await self.advertiser.start()
        self.notifier.ready(await self.status_line())
        self.notifier.start_watchdog(self.status_line)

    async def status_line(self) -> str:
        st = await self.archive.statistics()
        return (f"{st.patients} patients, {st.studies} studies, {st.instances} instances; "
                f"DICOM {self.settings['DicomAet']}:{self.dicom_port}, HTTP :{self.http_port}")

    async def stop(self) -> None:
        """Stop taking new work, let in-flight stores finish, then close the archive.

        Every step runs even when one before it failed or overran its bound (each failure is
        logged once, with the step's name): a notification that cannot be sent, or a web
        server that will not close, must not leave the archive open and the process hanging
        on its threads. The names of failed steps are kept in ``stop_failures``.
        """
        if self._stopped:
            return
        self._stopped = True
        # an upload's ZIP import stops between members now, not when the archive closes after the
        # web server's shutdown grace (which aiohttp waits twice before it cancels a handler)
        self.archive.stop_imports()
        steps: list[tuple[str, Callable[[], Any], float | None]] = [
            ("tell systemd the appliance is stopping", self.notifier.stopping, None),
            ("stop the systemd watchdog", self.notifier.stop_watchdog, 1.0),
            ("stop accepting DICOM", self._stop_listener, DICOM_GRACE + 2),
            ("stop the web server", self._stop_web, WEB_GRACE + 1),
            ("withdraw the Zeroconf advertisement", self._stop_advertiser, 3.0),
            # not bounded: it finishes the queued writes; serve's STOP_DEADLINE is the last resort
            ("close the archive", self._close_archive, None),
        ]
        for name, step, bound in steps:
            if not await _run_step(name, step, bound):
                self.stop_failures.append(name)
        if self.stop_failures:
            log.error("stopped; these steps failed: %s", "; ".join(self.stop_failures))
        else:
            log.info("stopped")

    async def _stop_listener(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            await listener.stop(grace=DICOM_GRACE)

    async def _stop_web(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()

    async def _stop_advertiser(self) -> None:
        advertiser, self.advertiser = self.advertiser, None
        if advertiser is not None:
            await advertiser.stop()

    async def _close_archive(self) -> None:
        if self._archive_open:
            self._archive_open = False
            await self.archive.close()

    def banner(self) -> str:
        s = self.settings
        addrs = [a for _, a in ipv4_addresses()] if s["BindAddress"] in ("0.0.0.0", "::") else [s["BindAddress"]]
        if not addrs:
            addrs = ["127.0.0.1"]
        lan = [a for a in addrs if not a.startswith("127.")]
        host = lan[0] if lan and s["RemoteAccessAllowed"] else "127.0.0.1"
        lines = [
            f"pipacs {__version__} is running as {s['Name']!r}",
            f"  DICOM  AE title {s['DicomAet']}, port {self.dicom_port}, on {', '.join(addrs)}",
            # dcmsend rather than storescu: it proposes each file's own transfer syntax, so a
            # CD's JPEG images go as they are (storescu offers only uncompressed ones by default)
            (f"         e.g. dcmsend -aec {s['DicomAet']} {lan[0] if lan else '127.0.0.1'} {self.dicom_port} "
             f"study-folder/ +sd +r"),
            f"  Web    http://{host}:{self.http_port}/  (REST API as Orthanc's: /patients, /studies, /system ...)",
        ]
        if not s["RemoteAccessAllowed"]:
            lines.append("         web access from this machine only; set RemoteAccessAllowed to true "
                         "(or PIPACS_REMOTE_ACCESS_ALLOWED=true) for the classroom")
        if self.advertiser is not None:
            lines.append(f"  Bonjour  on: iPads and Macs find {s['DicomAet']} in their DICOM node lists "
                         f"(host {s['Zeroconf']['HostName']}.local)")
        else:
            lines.append("  Bonjour  off: to be found by iPads and Macs, set \"Zeroconf\": {\"Enabled\": true} "
                         "or PIPACS_ZEROCONF='{\"Enabled\": true}'")
        lines.append(f"  Data   {s.storage_dir}  (configuration: {s.source})")
        lines.append("  Stop with Ctrl+C.")
        return "\n".join(lines)


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the soft limit now in force.

    systemd starts services with a soft limit of 1024 open files (the unit sets LimitNOFILE);
    1 100 slow HTTP connections took them all, and a C-STORE then failed with "Too many open
    files". The hard limit is the most an unprivileged process may have.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or soft == resource.RLIM_INFINITY:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    except (ValueError, OSError) as e:   # a hard limit of "infinity" is refused above nr_open
        log.info("cannot raise the open files limit from %d to %s: %s", soft, hard, e)
        return soft


def fitted_http_connections(http_max: int, dicom_max: int, open_files: int) -> int:
    """HttpMaximumConnections, or fewer if the open files limit cannot hold them beside
    DicomMaximumAssociations (a warning with the numbers says so)."""
    if open_files == resource.RLIM_INFINITY:
        return http_max
    needed = http_max * FILES_PER_HTTP_CONNECTION + dicom_max * FILES_PER_ASSOCIATION + FILES_HEADROOM
    if needed <= open_files:
        return http_max
    fitted = max(1, (open_files - dicom_max * FILES_PER_ASSOCIATION - FILES_HEADROOM) // FILES_PER_HTTP_CONNECTION)
    log.warning("the open files limit (%d) cannot hold HttpMaximumConnections %d (x%d files) beside "
                "DicomMaximumAssociations %d (x%d) and %d more: at most %d HTTP connections at once; raise "
                "LimitNOFILE (ulimit -n) or lower the limits", open_files, http_max, FILES_PER_HTTP_CONNECTION,
                dicom_max, FILES_PER_ASSOCIATION, FILES_HEADROOM, fitted)
    return fitted


MALLOC_ARENAS = 2      # glibc heaps shared by every thread (see keep_freed_memory_mapped)


def keep_freed_memory_mapped() -> bool:
    """Ask glibc to keep freed memory instead of unmapping it at once.

    Every instance sent or received makes a few buffers of its size (0.5 MB for a CT slice).
    glibc serves those from fresh mappings and hands them back when freed, so each one is
    page-faulted and zeroed again: a fifth of the CPU of a C-MOVE. Fixed thresholds of 16 MB
    keep such buffers in the heap for reuse; memory is still returned to the system when
    more than 16 MB lies free at the top of a heap.

    At most two heaps (arenas): glibc otherwise gives threads their own, up to eight per core,
    and each association's thread left its own heap with buffers kept for reuse, so memory grew
    with every thread that ever stored (100 000 stores over 8 associations: 104 -> 117 MB after
    warm-up, +12%). Python holds its interpreter lock around most allocations, so the threads
    hardly contend for two heaps (the same soak stored as many per second).
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
        return (bool(libc.mallopt(m_arena_max, MALLOC_ARENAS)) and bool(libc.mallopt(m_mmap_threshold, 16 << 20))
                and bool(libc.mallopt(m_trim_threshold, 16 << 20)))
    except (OSError, AttributeError):
        return False


async def _run_step(name: str, step: Callable[[], Awaitable[Any] | Any], bound: float | None) -> bool:
    """Run one step of a stop; False (after one log line naming it) when it raised or overran ``bound``.

    A step cut short by its bound is cancelled, so the next one starts on time.
    """
    try:
        async with asyncio.timeout(bound):
            result = step()
            if inspect.isawaitable(result):
                await result
        return True
    except TimeoutError:
        log.error("stop: %s did not finish within %.0f s; going on", name, bound)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise   # the stop itself is being cancelled: not this step's failure
        log.error("stop: %s was cancelled; going on", name)
    except Exception:   # the remaining steps must run whatever this one raised
        log.exception("stop: %s failed; going on", name)
    return False


def _exit_after(seconds: float) -> None:
    """Make sure the process ends ``seconds`` from now, even when a thread would keep it alive.

    The archive's and pynetdicom's worker threads are not daemon threads, and Python waits for
    them at exit: one stuck in a read, or an index left open by a failed stop, would hold the
    process until systemd's SIGKILL at TimeoutStopSec. Rather than that, say which threads are
    left and exit with status 1. The timer itself is a daemon thread, so it never holds a
    process that ended on time.
    """
    def expire() -> None:
        time.sleep(seconds)
        me, main = threading.current_thread(), threading.main_thread()
        left = [t.name for t in threading.enumerate() if t is not me and (t is main or not t.daemon)]
        log.error("still running %.0f s after the stop began (threads: %s); exiting now", seconds,
                  ", ".join(left) or "none")
        for h in logging.getLogger().handlers:
            try:
                h.flush()
            except Exception:   # noqa: BLE001, S110 - exiting regardless
                pass
        os._exit(1)

    threading.Thread(target=expire, name="stop-deadline", daemon=True).start()


def _port_problem(key: str, port: int, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return f"port {port} is already in use by another program; stop it or choose another {key}"
    if e.errno == errno.EACCES:
        return f"not allowed to listen on port {port} ({key}); ports below 1024 need CAP_NET_BIND_SERVICE"
    return f"cannot listen on port {port} ({key}): {e.strerror or e}"


async def serve(settings: Settings, on_ready: Callable[[Service], None] | None = None,
                stop_deadline: float | None = STOP_DEADLINE) -> None:
    """Run until SIGTERM or SIGINT; then stop, and have the process end within ``stop_deadline``.

    The deadline exits the whole process (see ``_exit_after``): None for a caller that embeds
    the appliance and will not be ended with it.
    """
    keep_freed_memory_mapped()
    service = Service(settings)
    try:
        await service.start()
    except StartupError:
        raise   # start() has already undone what it began
    except BaseException:
        log.error("start failed; stopping what had started")
        if stop_deadline is not None:
            _exit_after(stop_deadline)
        await service.stop()
        raise
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, service.stopping.set)
        except (NotImplementedError, RuntimeError):
            pass
    if on_ready:
        on_ready(service)
    try:
        await service.stopping.wait()
    finally:
        log.info("stopping")
        if stop_deadline is not None:
            _exit_after(stop_deadline)
        await service.stop()


def print_banner(service: Service) -> None:
    print(service.banner(), flush=True)
    sys.stdout.flush()
