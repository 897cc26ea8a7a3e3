"""The disk store of derived data: answers computed from the DICOM files (stack documents, encoded
frames, WADO-RS metadata) kept so that a class prepared the evening before is ready after a restart.

It is storage, so it lives in the archive, in its own folder (``cache`` beside the two-hex-digit
folders of the DICOM files, which ``FileStorage.scan`` never enters): it never counts toward the
archive's size (the index's), never touches a DICOM file, and may be wiped at any time, since
everything in it can be made again. Each entry is one file named by the SHA-256 of its key, written
under a temporary name and renamed, and carries a header with its length and a checksum:
a partial or corrupt file is a miss (and removed), never served. The budget is kept by an LRU
index in memory, rebuilt at start from the files' modification times (a hit refreshes the time, at
most once an hour, so an SD card is not written on every read).

Blocking: the web layer calls it from worker threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path

__all__ = ["DerivedStore", "DERIVED_FOLDER"]

log = logging.getLogger("pipacs.archive.derived")

DERIVED_FOLDER = "cache"          # below the storage folder
_VERSION = "v1"                   # a change of format: a new folder, the old one wiped
_MAGIC = b"PIPD"
_HEADER = struct.Struct(">4sQ16s")   # magic, length of the data, BLAKE2b-128 of the data
_TMP = ".tmp"
TOUCH_EVERY = 3600.0              # seconds: a hit refreshes a file's time at most this often


class DerivedStore:
    """Bounded files of derived bytes by key; LRU beyond ``budget`` bytes. Thread-safe."""

    def __init__(self, root: Path, budget: int, reserve_bytes: int = 0, load: bool = True):
        self.root = Path(root)
        self.folder = self.root / _VERSION
        self.budget = max(0, int(budget))
        self.reserve_bytes = reserve_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()   # name -> (file size, mtime)
        self.size = 0
        self._loaded = False
        self._loading = threading.Lock()
        if load:
            self.ensure_loaded()

    # ------------------------------------------------------------------ set-up

    def ensure_loaded(self) -> None:
        """Index the folder once (``load=False``: at the first get or put, in the caller's worker
        thread, so that a big cache on an SD card does not hold up the server's start)."""
        if self._loaded:
            return
        with self._loading:
            if not self._loaded:
                self._load()
                self._loaded = True

    def _load(self) -> None:
        """Index what an earlier run left; remove temporary files and other formats' folders."""
        if self.root.is_dir():
            for entry in os.scandir(self.root):
                if entry.name != _VERSION:
                    _remove_tree(Path(entry.path))
        self.folder.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, str, int]] = []
        for top in os.scandir(self.folder):
            if not top.is_dir():
                _unlink(Path(top.path))
                continue
            for f in os.scandir(top.path):
                if f.name.endswith(_TMP) or not f.is_file():
                    _unlink(Path(f.path))
                    continue
                st = f.stat()
                found.append((st.st_mtime, f.name, st.st_size))
        for mtime, name, size in sorted(found):
            self._entries[name] = (size, mtime)
            self.size += size
        self._evict()

    # ------------------------------------------------------------------ reading and writing

    @staticmethod
    def name_of(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def _path(self, name: str) -> Path:
        return self.folder / name[:2] / name

    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None (absent, partial or corrupt: the file is removed)."""
        self.ensure_loaded()
        name = self.name_of(key)
        with self._lock:
            known = self._entries.get(name)
            if known is None:
                return None
            self._entries.move_to_end(name)
        path = self._path(name)
        try:
            raw = path.read_bytes()
        except OSError:
            self._forget(name)
            return None
        data = _unwrap(raw)
        if data is None:
            log.warning("derived-data file %s is damaged; removed (it will be made again)", name)
            self._forget(name, remove=True)
            return None
        now = time.time()
        if now - known[1] > TOUCH_EVERY:
            try:
                os.utime(path, (now, now))
                with self._lock:
                    if name in self._entries:
                        self._entries[name] = (known[0], now)
            except OSError:
                pass
        return data

    def put(self, key: str, data: bytes) -> bool:
        """Keep ``data`` under ``key`` (atomically: a temporary file renamed). False when it does not
        fit: larger than an eighth of the budget, or the disk would go below the reserve. Not fsynced:
        the students waiting for this answer should not wait for the card, and a file a power cut
        leaves short or empty fails its checksum and is made again."""
        self.ensure_loaded()
        size = _HEADER.size + len(data)
        if self.budget <= 0 or size > self.budget // 8:
            return False
        try:
            if shutil.disk_usage(self.folder).free - size < self.reserve_bytes:
                return False
        except OSError:
            return False
        name = self.name_of(key)
        path = self._path(name)
        tmp = path.with_name(f"{name}.{threading.get_ident()}{_TMP}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(_wrap(data))
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot keep derived data on disk: %s", e)
            _unlink(tmp)
            return False
        with self._lock:
            old = self._entries.pop(name, None)
            if old is not None:
                self.size -= old[0]
            self._entries[name] = (size, time.time())
            self.size += size
        self._evict()
        return True

    def _forget(self, name: str, remove: bool = False) -> None:
        with self._lock:
            old = self._entries.pop(name, None)
            if old is not None:
                self.size -= old[0]
        if remove:
            _unlink(self._path(name))

    def _evict(self) -> None:
        while True:
            with self._lock:
                if self.size <= self.budget or not self._entries:
                    return
                name, (size, _) = self._entries.popitem(last=False)
                self.size -= size
            _unlink(self._path(name))

    def wipe(self) -> None:
        """Remove every entry (only this store's folder; the DICOM files are elsewhere)."""
        self.ensure_loaded()
        with self._lock:
            self._entries.clear()
            self.size = 0
            _remove_tree(self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._entries)


def _wrap(data: bytes) -> bytes:
    return _HEADER.pack(_MAGIC, len(data), hashlib.blake2b(data, digest_size=16).digest()) + data


def _unwrap(raw: bytes) -> bytes | None:
    if len(raw) < _HEADER.size:
        return None
    magic, length, digest = _HEADER.unpack_from(raw)
    data = raw[_HEADER.size:]
    if magic != _MAGIC or length != len(data) or hashlib.blake2b(data, digest_size=16).digest() != digest:
        return None
    return data


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove %s: %s", path, e)


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        _unlink(path)
