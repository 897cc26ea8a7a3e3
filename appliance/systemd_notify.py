"""systemd integration: readiness, status, watchdog, stopping, and journal logging.

systemd-python (the optional extra ``pipacs[systemd]``) when it is installed; otherwise
the same datagrams written to ``$NOTIFY_SOCKET`` by hand, and log lines prefixed with
``<priority>`` which journald understands. Outside systemd, every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import ClassVar

__all__ = ["Notifier", "journal_handler", "under_journal"]

log = logging.getLogger("pipacs.systemd")


def _python_systemd_notify() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon  # type: ignore[import-not-found]
    except ImportError:
        return None
    return lambda state: bool(daemon.notify(state))


class Notifier:
    """sd_notify(3). ``backend``: "auto" (systemd-python if present), "python-systemd" or "socket"."""

    def __init__(self, backend: str = "auto", environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0.0
        lib = _python_systemd_notify() if backend in ("auto", "python-systemd") else None
        if backend == "python-systemd" and lib is None:
            raise RuntimeError("systemd-python is not installed (pip install 'pipacs[systemd]')")
        self.backend = "python-systemd" if lib is not None else "socket"
        self._lib = lib
        self._task: asyncio.Task | None = None
        self._failing = False

    @property
    def active(self) -> bool:
        return bool(self.address)

    def notify(self, state: str) -> bool:
        """Send one datagram; never raises, since no notification is worth the appliance.

        systemd-python raises (``FileNotFoundError``, ``ConnectionRefusedError``) when the socket
        named by ``$NOTIFY_SOCKET`` is gone; the plain socket fails the same way. The first
        failure is logged, not every watchdog ping after it; a success re-arms the log line.
        """
        if not self.address:
            return False
        try:
            if self._lib is not None:
                sent = self._lib(state)
            else:
                self._send(state)
                sent = True
        except Exception as e:   # noqa: BLE001 - whatever either backend raises, the caller goes on
            if not self._failing:
                self._failing = True
                log.warning("systemd notification (%s) to %s failed: %s; later failures are not logged",
                            self.backend, self.address, str(e) or type(e).__name__)
            return False
        if self._failing and sent:
            self._failing = False
            log.info("systemd notification (%s) to %s works again", self.backend, self.address)
        return sent

    def _send(self, state: str) -> None:
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1\nSTATUS=stopping")

    def start_watchdog(self, status: Callable[[], asyncio.Future[str] | str] | None = None,
                       status_every: float = 30.0) -> None:
        """Ping WATCHDOG=1 from the event loop itself, so a wedged loop is restarted by systemd."""
        if not self.active:
            return
        self._task = asyncio.create_task(self._loop(status, status_every), name="systemd-watchdog")

    async def _loop(self, status, status_every: float) -> None:
        period = self.watchdog_seconds / 2 if self.watchdog_seconds else status_every
        period = min(period, status_every)
        last_status = 0.0
        while True:
            if self.watchdog_seconds:
                self.notify("WATCHDOG=1")
            if status is not None and time.monotonic() - last_status >= status_every:
                try:
                    text = status()
                    if asyncio.iscoroutine(text) or isinstance(text, asyncio.Future):
                        text = await text
                    self.status(str(text))
                except Exception:   # a status line is never worth a restart
                    log.debug("status for systemd failed", exc_info=True)
                last_status = time.monotonic()
            await asyncio.sleep(period)

    async def stop_watchdog(self) -> None:
        """Cancel the pings; a ping task that died is logged here, never raised into a stop."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:   # the stop that called us must go on
            log.warning("the systemd watchdog task had failed", exc_info=True)


def under_journal() -> bool:
    """True when stderr is connected to the journal (systemd sets $JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


class _PrefixFormatter(logging.Formatter):
    """``<3>message``: journald reads the priority from the prefix (sd-daemon(3))."""
    LEVELS: ClassVar[dict[int, int]] = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prio = self.LEVELS.get(record.levelno, 6)
        return f"<{prio}>{record.name}: {super().format(record)}"


def journal_handler() -> logging.Handler:
    """Native journal fields (systemd-python), else priority-prefixed lines on stderr."""
    try:
        from systemd.journal import JournalHandler  # type: ignore[import-not-found]
        h: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="pipacs")
        h.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        return h
    except ImportError:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_PrefixFormatter("%(message)s"))
        return h
