"""The folder of DICOM files. Blocking calls: the archive runs them in worker threads.

A file becomes visible under its final name only once its bytes are on disk
(temp file, fsync, rename, fsync of the folder), so a power cut leaves either the
whole file or a ``.tmp`` that the next start removes.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TMP_SUFFIX = ".tmp"
FILES_PER_FOLDER = 256  # new files go to one folder until it holds this many


class StorageFull(OSError):
    """Not enough room on the disk for the file (or the configured reserve)."""


class FileStorage:
    def __init__(self, root: Path, reserve_bytes: int = 0):
        self.root = root
        self.reserve_bytes = reserve_bytes
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._folder_prefix = ""
        self._folder_room = 0

    def _new_uuid(self) -> str:
        """A random UUID, placed in the folder that new files are filling.

        Orthanc's layout spreads files over 65536 folders by the UUID's first four hex
        digits; a random UUID for every file means a new folder (a mkdir and two more folder
        fsyncs) for nearly every file of the first ten thousand on a fresh card. Here the
        first four digits are those of the folder being filled, the other 28 stay random,
        and a folder takes FILES_PER_FOLDER files.
        """
        with self._lock:
            if self._folder_room <= 0:
                for _ in range(8):   # a random folder that is already full (a big archive): pick again
                    pick = str(uuid.uuid4())
                    try:
                        used = len(os.listdir(self.root / pick[0:2] / pick[2:4]))
                    except OSError:
                        used = 0
                    if used < FILES_PER_FOLDER:
                        break
                self._folder_prefix, self._folder_room = pick[:4], max(1, FILES_PER_FOLDER - used)
            self._folder_room -= 1
            return self._folder_prefix + str(uuid.uuid4())[4:]

    def path_of(self, file_uuid: str) -> Path:
        # Orthanc's layout: two levels of two hex digits, then the UUID.
        return self.root / file_uuid[0:2] / file_uuid[2:4] / file_uuid

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def write(self, data: bytes) -> str:
        """Store ``data`` durably under a new UUID and return it."""
        return self.publish(self.stage(data))

    def stage(self, data: bytes) -> Staged:
        """Write ``data`` under a temporary name and fsync it; ``publish`` or ``discard`` it next.

        Split from ``publish`` so that a file can be written while its content is being
        checked (the archive does both at once), and only published if the check passes.
        """
        if self.reserve_bytes and self.free_bytes() - len(data) < self.reserve_bytes:
            raise StorageFull(errno.ENOSPC, "storage disk almost full (MinimumFreeDiskSpace reached)")
        file_uuid = self._new_uuid()
        final = self.path_of(file_uuid)
        folder = final.parent
        created = not folder.is_dir()
        tmp = final.with_name(final.name + TMP_SUFFIX)
        try:
            if created:
                folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self._unlink(tmp)
            raise _storage_error(e) from None
        return Staged(file_uuid, tmp, created)

    def publish(self, staged: Staged) -> str:
        """Give a staged file its final name, durably (the folder entry fsynced too)."""
        final = self.path_of(staged.file_uuid)
        try:
            os.rename(staged.tmp, final)
            _fsync_dir(final.parent)
            if staged.created_folder:
                _fsync_dir(final.parent.parent)
                _fsync_dir(final.parent.parent.parent)
        except OSError as e:
            self._unlink(staged.tmp)
            raise _storage_error(e) from None
        return staged.file_uuid

    def discard(self, staged: Staged) -> None:
        self._unlink(staged.tmp)

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def read(self, file_uuid: str) -> bytes:
        return self.path_of(file_uuid).read_bytes()

    def remove(self, file_uuid: str) -> None:
        try:
            os.unlink(self.path_of(file_uuid))
        except FileNotFoundError:
            pass

    def scan(self) -> Iterator[tuple[str, bool]]:
        """Every stored name as (uuid or temp name, is_temp); used to reconcile at start."""
        for top in os.scandir(self.root):
            if not (top.is_dir() and len(top.name) == 2):
                continue
            for mid in os.scandir(top.path):
                if not (mid.is_dir() and len(mid.name) == 2):
                    continue
                for f in os.scandir(mid.path):
                    if f.is_file():
                        yield f.name, f.name.endswith(TMP_SUFFIX)

    def remove_name(self, name: str) -> None:
        """Remove a scanned name (a temp file or an orphan)."""
        base = name[:-len(TMP_SUFFIX)] if name.endswith(TMP_SUFFIX) else name
        try:
            os.unlink(self.path_of(base).with_name(name))
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class Staged:
    """A file written and fsynced under its temporary name."""
    file_uuid: str
    tmp: Path
    created_folder: bool


def _storage_error(e: OSError) -> OSError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(e.errno, "the storage disk is full")
    return e


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A request body on its way in: in memory while small, then in a file beside the storage.

    Lives in the storage folder's ``incoming`` directory (not /tmp, which is RAM on many
    boards); whatever a power cut leaves there is removed at the next start.
    """

    def __init__(self, folder: Path, max_memory: int = 32 * 2**20):
        import tempfile
        folder.mkdir(parents=True, exist_ok=True)
        self.file = tempfile.SpooledTemporaryFile(max_size=max_memory, dir=folder)
        self.max_memory = max_memory
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.size += len(chunk)

    def peek(self, n: int) -> bytes:
        pos = self.file.tell()
        self.file.seek(0)
        head = self.file.read(n)
        self.file.seek(pos)
        return head

    def read_all(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        self.file.close()
