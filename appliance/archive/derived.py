"""The disk store of derived data: answers computed from the DICOM files (stack documents, encoded
frames, WADO-RS metadata) kept so that a class prepared the evening before is ready after a restart.

It is storage, so it lives in the archive, in its own folder (``cache`` beside the two-hex-digit
folders of the DICOM files, which ``FileStorage.scan`` never enters): it never counts toward the
archive's size (the index's), never touches a DICOM file, and may be wiped at any time, since
everything in it can be made again. Each entry is one file named by the SHA-256 of its key, written
under a temporary name and renamed, and carries a header with its length, the file UUIDs of the DICOM
instances it was made from (its owners) and a checksum: a partial or corrupt file is a miss (and
removed), never served. When the archive deletes or replaces an instance, every entry it owns is
removed at once (``drop_owners``): a stack document or WADO-RS metadata carries the patient's name, a
frame its pixels, and a teacher who deletes a study imported un-anonymised must not leave them on the
card until LRU eviction reaches them. A make still running for a dropped file cannot put its answer
back (the dropped UUIDs are remembered, ``Tombstones``). The budget is kept by an LRU
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
from collections.abc import Callable
from pathlib import Path

__all__ = ["DerivedStore", "DERIVED_FOLDER", "Tombstones"]

log = logging.getLogger("pipacs.archive.derived")

DERIVED_FOLDER = "cache"          # below the storage folder
_VERSION = "v2"                   # a change of format: a new folder, the old one wiped (v1: no owners)
_MAGIC = b"PIPD"
_HEADER = struct.Struct(">4sQI16s")  # magic, length of the data, of the owners, BLAKE2b-128 of both
TOMBSTONES = 20_000               # dropped file UUIDs remembered (a make in flight cannot put them back)
_TMP = ".tmp"
TOUCH_EVERY = 3600.0              # seconds: a hit refreshes a file's time at most this often


class Tombstones:
    """The last ``TOMBSTONES`` file UUIDs dropped: an answer made from one of them is not kept (a
    make that started before the delete ends after it). File UUIDs are never reused. Thread-safe."""

    def __init__(self, size: int = TOMBSTONES):
        self.size = size
        self._gone: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, owners: list[str] | tuple[str, ...] | set[str]) -> None:
        with self._lock:
            for o in owners:
                self._gone[o] = None
                self._gone.move_to_end(o)
            while len(self._gone) > self.size:
                self._gone.popitem(last=False)

    def any_of(self, owners: tuple[str, ...] | list[str]) -> bool:
        with self._lock:
            return any(o in self._gone for o in owners)


class DerivedStore:
    """Bounded files of derived bytes by key, each with its owners (file UUIDs); LRU beyond
    ``budget`` bytes. Thread-safe."""

    def __init__(self, root: Path, budget: int, reserve_bytes: int = 0, load: bool = True,
                 known: Callable[[], set[str]] | None = None):
        self.root = Path(root)
        self._known = known     # the index's file UUIDs: entries of any other owner are dropped when indexing
        self.folder = self.root / _VERSION
        self.budget = max(0, int(budget))
        self.reserve_bytes = reserve_bytes
        self._lock = threading.Lock()
        # name -> (file size, mtime, owners); owner (file UUID) -> names of the entries made from it
        self._entries: OrderedDict[str, tuple[int, float, tuple[str, ...]]] = OrderedDict()
        self._owned: dict[str, set[str]] = {}
        self.dropped = Tombstones()
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
        found: list[tuple[float, str, int, tuple[str, ...]]] = []
        for top in os.scandir(self.folder):
            if not top.is_dir():
                _unlink(Path(top.path))
                continue
            for f in os.scandir(top.path):
                owners = None if f.name.endswith(_TMP) or not f.is_file() else _read_owners(Path(f.path))
                if owners is None:
                    _unlink(Path(f.path))
                    continue
                st = f.stat()
                found.append((st.st_mtime, f.name, st.st_size, owners))
        with self._lock:
            for mtime, name, size, owners in sorted(found):
                self._add(name, size, mtime, owners)
        if self._known is not None:   # a crash between the index's commit and drop_owners left these behind
            known = self._known()
            with self._lock:
                for name in {n for o in self._owned if o not in known for n in self._owned[o]}:
                    self._pop(name)
                    _unlink(self._path(name))
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
        data = _unwrap(raw)[1]
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
                        self._entries[name] = (known[0], now, known[2])
            except OSError:
                pass
        return data

    def put(self, key: str, data: bytes, owners: tuple[str, ...] | list[str] = ()) -> bool:
        """Keep ``data`` under ``key`` (atomically: a temporary file renamed), made from the DICOM files
        ``owners`` (file UUIDs: ``drop_owners`` of any of them removes it). False when it does not
        fit: larger than an eighth of the budget, or the disk would go below the reserve, or when one of
        its owners was dropped meanwhile (the instance is deleted: its data is not kept). Not fsynced:
        the students waiting for this answer should not wait for the card, and a file a power cut
        leaves short or empty fails its checksum and is made again."""
        self.ensure_loaded()
        owners = tuple(sorted(set(owners)))
        head = "\n".join(owners).encode("ascii")
        size = _HEADER.size + len(head) + len(data)
        if self.budget <= 0 or size > self.budget // 8 or self.dropped.any_of(owners):
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
                for chunk in _wrap(head, data):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            # the rename and the index change under one lock: an eviction or a drop of the same name
            # (which unlink under it too) never removes this fresh file while the index keeps it
            with self._lock:
                if self.dropped.any_of(owners):     # deleted while this was written
                    _unlink(tmp)
                    return False
                os.replace(tmp, path)
                self._pop(name)
                self._add(name, size, time.time(), owners)
        except OSError as e:
            log.warning("cannot keep derived data on disk: %s", e)
            _unlink(tmp)
            return False
        self._evict()
        return True

    def drop_owners(self, owners: list[str] | tuple[str, ...] | set[str]) -> int:
        """Remove every entry made from any of these file UUIDs (the archive deleted or replaced those
        instances), and refuse them from now on; the number of entries removed."""
        self.ensure_loaded()
        self.dropped.add(owners)
        removed = 0
        with self._lock:
            names = set().union(*(self._owned.get(o, ()) for o in owners)) if owners else set()
            for name in names:
                self._pop(name)
                _unlink(self._path(name))
                removed += 1
        return removed

    def _add(self, name: str, size: int, mtime: float, owners: tuple[str, ...]) -> None:
        """(under the lock)"""
        self._entries[name] = (size, mtime, owners)
        self.size += size
        for o in owners:
            self._owned.setdefault(o, set()).add(name)

    def _pop(self, name: str) -> None:
        """(under the lock)"""
        old = self._entries.pop(name, None)
        if old is None:
            return
        self.size -= old[0]
        for o in old[2]:
            names = self._owned.get(o)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._owned[o]

    def _forget(self, name: str, remove: bool = False) -> None:
        with self._lock:
            self._pop(name)
            if remove:
                _unlink(self._path(name))

    def _evict(self) -> None:
        # popped and unlinked under one lock (L4): a put of the same name in between cannot lose its file
        with self._lock:
            while self.size > self.budget and self._entries:
                name = next(iter(self._entries))
                self._pop(name)
                _unlink(self._path(name))

    def __len__(self) -> int:
        return len(self._entries)


def _digest(head: bytes, data: bytes) -> bytes:
    h = hashlib.blake2b(head, digest_size=16)
    h.update(data)
    return h.digest()


def _wrap(head: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    return _HEADER.pack(_MAGIC, len(data), len(head), _digest(head, data)), head, data


def _unwrap(raw: bytes) -> tuple[tuple[str, ...], bytes | None]:
    """(owners, data) of a file's bytes; data None for a partial or corrupt file."""
    if len(raw) < _HEADER.size:
        return (), None
    magic, length, head_length, digest = _HEADER.unpack_from(raw)
    head = raw[_HEADER.size:_HEADER.size + head_length]
    data = raw[_HEADER.size + head_length:]
    if magic != _MAGIC or length != len(data) or len(head) != head_length or _digest(head, data) != digest:
        return (), None
    return tuple(head.decode("ascii", "replace").split("\n")) if head else (), data


def _read_owners(path: Path) -> tuple[str, ...] | None:
    """The owners in a file's header (read at start, without the data); None for a file too short."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_HEADER.size)
            if len(raw) < _HEADER.size:
                return None
            magic, _, head_length, _ = _HEADER.unpack(raw)
            head = f.read(head_length)
    except OSError:
        return None
    if magic != _MAGIC or len(head) != head_length:
        return None
    return tuple(head.decode("ascii", "replace").split("\n")) if head else ()


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
