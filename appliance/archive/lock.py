"""One server per storage folder: an exclusive lock held for as long as the archive is open.

Two servers writing one folder and one SQLite index would each reconcile away the other's
files at start and recycle by their own counts. ``flock`` is released by the kernel when
the holder's process ends, however it ends (``kill -9``, a power cut), so a stale lock
never keeps the appliance from starting; the file also says who holds it, so the second
server's refusal can name the first.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .records import IndexUnusable

LOCK_NAME = "pipacs.lock"


class StorageInUse(IndexUnusable):
    """Another pipacs process has the storage folder open; the message names it."""


class StorageLock:
    """An exclusive, non-blocking ``flock`` on ``folder/pipacs.lock``, with the holder described in it."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None
        self._started = ""

    def acquire(self) -> None:
        """Take the lock, or raise StorageInUse naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise StorageInUse(f"another pipacs ({holder}) is using the storage in {self.path.parent}; stop it "
                               f"first, or give this one its own StorageDirectory") from None
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        self.describe()

    def describe(self, **details: Any) -> None:
        """Say who holds the lock (process, host, start time, and ``details`` such as the ports)."""
        if self._fd is None:
            return
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": self._started} | details
        data = json.dumps(holder).encode() + b"\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)     # closing the descriptor releases the flock


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        found = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    parts = [f"process {holder['pid']}" if "pid" in holder else "a process"]
    if holder.get("host"):
        parts.append(f"on {holder['host']}")
    if holder.get("started"):
        parts.append(f"since {holder['started']}")
    ports = [f"{k} port {holder[k]}" for k in ("dicom", "http") if holder.get(k)]
    if ports:
        parts.append(", ".join(ports).replace("dicom", "DICOM").replace("http", "HTTP"))
    return " ".join(parts[:3]) + (f", {parts[3]}" if len(parts) > 3 else "")
