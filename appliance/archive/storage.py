"""The folder of DICOM files. Blocking calls: the archive runs them in worker threads.

A file becomes visible under its final name only once its bytes are on disk
(temp file written synchronously, rename, fsync of the folder), so a power cut leaves either the
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
        """Write ``data`` durably under a temporary name; ``publish`` or ``discard`` it next."""
        return self.finish_staging(self.start_staging(len(data)), data)

    def start_staging(self, size: int) -> Staging:
        """Create the temporary file that ``finish_staging`` fills.

        Split so that the caller can start other work (checking the content) between the
        two: the write in ``finish_staging`` is one system call that holds no interpreter
        lock, and a file is only published once its content has passed the check.
        """
        if self.reserve_bytes and self.free_bytes() - size < self.reserve_bytes:
            raise StorageFull(errno.ENOSPC, "storage disk almost full (MinimumFreeDiskSpace reached)")
        file_uuid = self._new_uuid()
        final = self.path_of(file_uuid)
        folder = final.parent
        created = not folder.is_dir()
        tmp = final.with_name(final.name + TMP_SUFFIX)
        try:
            if created:
                folder.mkdir(parents=True, exist_ok=True)
            # O_DSYNC: each write returns once its bytes (and the size) are on disk, so
            # writing and syncing a file is a single call (no fsync after it).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DSYNC, 0o644)
        except OSError as e:
            raise storage_error(e) from None
        return Staging(Staged(file_uuid, tmp, created), fd)

    def finish_staging(self, staging: Staging, data: bytes) -> Staged:
        """Write the whole file and close it; on failure the temporary file is removed."""
        try:
            try:
                view = memoryview(data)
                while view:
                    n = os.write(staging.fd, view)
                    view = view[n:]
            finally:
                os.close(staging.fd)
        except OSError as e:
            self._unlink(staging.staged.tmp)
            raise storage_error(e) from None
        return staging.staged

    def abandon_staging(self, staging: Staging) -> None:
        """Give up a temporary file that was started but will not be written."""
        try:
            os.close(staging.fd)
        finally:
            self._unlink(staging.staged.tmp)

    def publish(self, staged: Staged, sync_folders: bool = True) -> str:
        """Give a staged file its final name, durably (the folder entry fsynced too), or,
        without ``sync_folders``, leave the folder fsync to a later ``sync_folders``."""
        final = self.path_of(staged.file_uuid)
        try:
            os.rename(staged.tmp, final)
        except OSError as e:
            self._unlink(staged.tmp)
            raise storage_error(e) from None
        if sync_folders:
            try:
                self.sync_folders(staged)
            except OSError as e:
                raise storage_error(e) from None
        return staged.file_uuid

    def sync_folders(self, staged: Staged) -> None:
        """Make a published file's name (and any folder made for it) survive a power cut."""
        folder = self.path_of(staged.file_uuid).parent
        _fsync_dir(folder)
        if staged.created_folder:
            _fsync_dir(folder.parent)
            _fsync_dir(folder.parent.parent)

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
        base = name.removesuffix(TMP_SUFFIX)
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


@dataclass(frozen=True)
class Staging:
    """A temporary file created and open, not written yet."""
    staged: Staged
    fd: int


def storage_error(e: OSError) -> OSError:
    """A full disk as StorageFull (answered as such to the sender); other errors unchanged."""
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
        self.file = tempfile.SpooledTemporaryFile(max_size=max_memory, dir=folder)  # noqa: SIM115 - close() closes it
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
