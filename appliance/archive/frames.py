"""Reading headers and single frames of stored instances, for the viewer's routes.

A class pages through big multi-frame instances (an enhanced CT of 150 MB, a cine): reading the whole
file for every frame would read 45 GB from the SD card for 300 frames, and keeping whole files parsed
in memory does not fit a 1 GB board. So a frame is read by offset:

- native pixel data: the header is parsed once (up to the pixel data), and frame n is the
  ``frame_bytes`` at ``start + n * frame_bytes``;
- encapsulated pixel data: one scan of the item headers (8 bytes per fragment, seeking over the data)
  gives each frame's fragments, grouped by the Basic Offset Table, the Extended Offset Table, one
  fragment per frame, or all fragments for a single frame.

What a frame read needs of a file (its parsed header and where its frames are) is kept per file UUID
in a small LRU bounded by the headers' stored bytes (LAYOUT_BYTES; a header over LAYOUT_MAX_BYTES, an
enhanced multi-frame's functional groups, is not kept), so a replaced instance (a new UUID) is never
read with an old layout. Fragments without an offset table are grouped by the frame-start markers
found at fragment starts (JPEG SOI, JPEG 2000 SOC+SIZ) when their count is the number of frames.
Layouts this does not index (deflated transfer syntax, 1-bit samples, 8-bit samples in big-endian OW, several frames in fragments
without an offset table nor markers, a pixel data element shorter than its frames) fall back to reading the whole
file, one such read at a time, so that the decoder says what is wrong exactly as the other image
routes do.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .records import NotFound, Resource

LAYOUTS_KEPT = 16                   # files whose header and frame offsets are kept, at most
LAYOUT_BYTES = 16 * 2**20           # their headers' stored bytes together, at most (N2: an enhanced MR's is MBs)
LAYOUT_MAX_BYTES = 4 * 2**20        # a header bigger than this is not kept (read again when asked)
FAILED_SECONDS = 60.0               # a frame that failed to decode is not read again for this long (N5)
FAILED_KEPT = 256                   # failures remembered, at most
PIXEL_DATA = 0x7FE00010
ITEM, SEQUENCE_END = 0xFFFEE000, 0xFFFEE0DD
EMPTY_OFFSET_TABLE = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"


@dataclass
class Layout:
    """Where one stored file's frames are: its parsed header (no pixel data), then either the native
    frames' start and size, or each encapsulated frame's byte range (its items, headers included)."""
    header: Dataset
    frames: int
    start: int = 0
    frame_size: int = 0
    encapsulated: list[tuple[int, int]] | None = None
    vr: str | None = None           # the stored VR of native pixel data (OW 8-bit big endian is swapped)
    header_bytes: int = 0           # the stored header's size (what the LRU budget counts)


def _frames_in(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _int(ds: Dataset, keyword: str) -> int:
    try:
        return int(ds.get(keyword, 0) or 0)
    except (TypeError, ValueError):
        return 0


def _element_header(f, little: bool, implicit: bool | None) -> tuple[int, int, bool, str | None] | None:
    """(value position, value length, undefined length, explicit VR or None) of the pixel data element
    at the file's position; ``implicit`` from the transfer syntax (None: unknown, sniffed from the bytes)."""
    head = f.read(12)
    if len(head) < 8:
        return None
    order = "<" if little else ">"
    group, elem = struct.unpack(order + "HH", head[:4])
    if (group << 16 | elem) != PIXEL_DATA:
        return None
    pos = f.tell() - len(head)
    explicit = head[4:6] in (b"OB", b"OW", b"UN", b"OD", b"OF", b"OL", b"OV") if implicit is None else not implicit
    if explicit:                                                          # explicit VR, 4-byte length
        length = struct.unpack(order + "I", head[8:12])[0]
        value, vr = pos + 12, head[4:6].decode()
    else:                                                                 # implicit VR
        length = struct.unpack(order + "I", head[4:8])[0]
        value, vr = pos + 8, None
    return value, length, length == 0xFFFFFFFF, vr


def _starts_a_frame(lead: bytes) -> bool:
    """A fragment that begins a compressed frame: JPEG / JPEG-LS SOI (FFD8), or a JPEG 2000 codestream
    (SOC FF4F then SIZ FF51)."""
    return lead[:2] == b"\xff\xd8" or lead[:4] == b"\xff\x4f\xff\x51"


def _fragments(f, start: int) -> tuple[list[int], list[tuple[int, int, bool]]] | None:
    """(Basic Offset Table, [(item position, item size incl. its header, begins a frame)]) of
    encapsulated pixel data; each fragment's first 4 bytes are read to find frame starts (N4)."""
    f.seek(start)
    items: list[tuple[int, int, bool]] = []
    table: list[int] = []
    first = True
    while True:
        pos = f.tell()
        head = f.read(8)
        if len(head) < 8:
            return None
        tag = struct.unpack("<HH", head[:4])
        tag_value, length = tag[0] << 16 | tag[1], struct.unpack("<I", head[4:])[0]
        if tag_value == SEQUENCE_END:
            return table, items
        if tag_value != ITEM or length == 0xFFFFFFFF:
            return None
        if first:
            raw = f.read(length)
            if len(raw) != length or length % 4:
                return None
            table = list(struct.unpack(f"<{length // 4}I", raw))
            first = False
            continue
        lead = f.read(min(4, length))
        items.append((pos, 8 + length, _starts_a_frame(lead)))
        f.seek(length - len(lead), 1)


def _group(ds: Dataset, frames: int, table: list[int],
           items: list[tuple[int, int, bool]]) -> list[tuple[int, int]] | None:
    """Each frame's byte range (its consecutive items), or None when the file does not say. Offsets
    (BOT, EOT) must each land on an item; else the next rule (N6)."""
    if not items:
        return None
    first = items[0][0]
    end = items[-1][0] + items[-1][1]
    offsets = table
    if not offsets or (len(offsets) == 1 and frames > 1):
        ext = ds.get("ExtendedOffsetTable")
        if ext is not None and len(ext) == 8 * frames:
            offsets = list(struct.unpack(f"<{frames}Q", bytes(ext)))
        else:
            offsets = []
    if len(offsets) == frames:
        starts = [first + o for o in offsets]
        at_items = {pos for pos, _, _ in items}
        if starts == sorted(set(starts)) and all(s in at_items for s in starts):
            return _ranges(starts, end)
    if len(items) == frames:
        return [(pos, size) for pos, size, _ in items]
    if frames == 1:
        return [(first, end - first)]
    marked = [pos for pos, _, starts_frame in items if starts_frame]
    if len(marked) == frames and marked[0] == first:      # pydicom's generate_frames heuristic
        return _ranges(marked, end)
    return None


def _ranges(starts: list[int], end: int) -> list[tuple[int, int]]:
    return [(s, (starts[k + 1] if k + 1 < len(starts) else end) - s) for k, s in enumerate(starts)]


def _parse_all(ds: Dataset) -> None:
    """Convert every raw element, walking the sequences' items (the per-frame functional groups) once."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _parse_all(item)


def read_layout(path: Path) -> Layout | None:
    """The layout of a stored file (blocking); None when a frame of it cannot be read by offset."""
    with open(path, "rb") as f:
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        _parse_all(ds)          # every element parsed now, sequences too: worker threads then only read it
        ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if ts == DeflatedExplicitVRLittleEndian:
            return None
        known = ts is not None and ts.is_valid
        little = not known or ts.is_little_endian
        found = _element_header(f, little, ts.is_implicit_VR if known else None)
        if found is None:
            return None
        value, length, undefined, vr = found
        frames = _frames_in(ds)
        if undefined:
            scanned = _fragments(f, value)
            if scanned is None:
                return None
            ranges = _group(ds, frames, *scanned)
            return None if ranges is None else Layout(ds, frames, encapsulated=ranges, header_bytes=value)
        bits = _int(ds, "BitsAllocated")
        size = _int(ds, "Rows") * _int(ds, "Columns") * max(1, _int(ds, "SamplesPerPixel")) * bits // 8
        if bits % 8 or size <= 0 or frames * size > length or (not little and bits == 8 and vr == "OW"):
            return None     # 1-bit samples, short data, 8-bit samples swapped in big-endian words
        return Layout(ds, frames, start=value, frame_size=size, vr=vr if vr in ("OB", "OW") else None,
                      header_bytes=value)


def _one_frame(layout: Layout, data: bytes) -> Dataset:
    """The header with one frame's pixel data (NumberOfFrames 1): what the decoders take."""
    ds = Dataset()
    for elem in layout.header:
        ds.add(elem)
    if hasattr(layout.header, "file_meta"):
        ds.file_meta = layout.header.file_meta
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    if "NumberOfFrames" in ds:      # a new element: the header's own is shared with other threads
        ds.add(DataElement(0x00280008, "IS", 1))
    if layout.encapsulated is not None:
        elem = DataElement(PIXEL_DATA, "OB", EMPTY_OFFSET_TABLE + data, is_undefined_length=True)
    else:
        elem = DataElement(PIXEL_DATA, layout.vr or ("OW" if _int(ds, "BitsAllocated") > 8 else "OB"), data)
    ds.add(elem)
    return ds


class FrameMethods:
    """Archive methods (mixed into ``Archive``): an instance's header, or one frame, read off the loop."""

    def _frames_init(self) -> None:
        self._layouts: OrderedDict[str, Layout | None] = OrderedDict()
        self._layouts_lock = threading.Lock()
        self._layout_bytes = 0
        self._failed: OrderedDict[tuple[str, int], tuple[float, str]] = OrderedDict()
        self._whole_reads = asyncio.Semaphore(1)      # the fallback reads a whole file: one at a time
        # what frame reads cost the storage (tests assert on it; a debugging aid on a board)
        self.frame_reads = {"Reads": 0, "Bytes": 0, "WholeFiles": 0}

    def _count(self, n: int, whole: bool = False) -> None:
        self.frame_reads["Reads"] += 1
        self.frame_reads["Bytes"] += n
        if whole:
            self.frame_reads["WholeFiles"] += 1

    async def _file_uuid(self, instance: Resource) -> str:
        f = (await self.index.files([instance.id])).get(instance.id)  # type: ignore[attr-defined]
        if f is None:
            raise NotFound(f"no file for instance {instance.public_id}")
        return f[0]

    def _layout(self, file_uuid: str, public_id: str, keep: bool = True) -> Layout | None:
        """The file's layout, from the LRU or read (and kept when ``keep``: a series' headers read for its
        stack document do not push out the big files a class is paging through)."""
        with self._layouts_lock:
            if file_uuid in self._layouts:
                self._layouts.move_to_end(file_uuid)
                return self._layouts[file_uuid]
        path = self.files.path_of(file_uuid)  # type: ignore[attr-defined]
        try:
            layout = read_layout(path)
        except FileNotFoundError:
            raise NotFound(f"the file of instance {public_id} is missing") from None
        except Exception:  # noqa: BLE001 - a damaged file: the whole-file path lets the decoder say why
            layout = None
        try:
            self._count(path.stat().st_size if layout is None else layout.header_bytes)
        except OSError:
            pass
        size = 0 if layout is None else layout.header_bytes
        if keep and size <= LAYOUT_MAX_BYTES:
            with self._layouts_lock:
                if file_uuid not in self._layouts:
                    self._layouts[file_uuid] = layout
                    self._layout_bytes += size
                while len(self._layouts) > LAYOUTS_KEPT or self._layout_bytes > LAYOUT_BYTES:
                    _, old = self._layouts.popitem(last=False)
                    self._layout_bytes -= 0 if old is None else old.header_bytes
        return layout

    def layout_stats(self) -> dict[str, int]:
        """What the layout LRU holds (files, header bytes): tests assert its bounds."""
        with self._layouts_lock:
            return {"Files": len(self._layouts), "Bytes": self._layout_bytes}

    def frame_failed(self, file_uuid: str, frame: int) -> str | None:
        """The reason a frame of this content failed to decode in the last FAILED_SECONDS, or None:
        repeated taps on a damaged frame are answered without reading the file again (N5)."""
        with self._layouts_lock:
            got = self._failed.get((file_uuid, frame))
            if got is None:
                return None
            if time.monotonic() - got[0] > FAILED_SECONDS:
                del self._failed[(file_uuid, frame)]
                return None
            return got[1]

    def remember_failure(self, file_uuid: str, frame: int, reason: str) -> None:
        with self._layouts_lock:
            self._failed[(file_uuid, frame)] = (time.monotonic(), reason)
            self._failed.move_to_end((file_uuid, frame))
            while len(self._failed) > FAILED_KEPT:
                self._failed.popitem(last=False)

    def _read_range(self, file_uuid: str, public_id: str, start: int, size: int) -> bytes:
        try:
            with open(self.files.path_of(file_uuid), "rb") as f:  # type: ignore[attr-defined]
                f.seek(start)
                data = f.read(size)
        except FileNotFoundError:
            raise NotFound(f"the file of instance {public_id} is missing") from None
        self._count(len(data))
        return data

    def _frame_blocking(self, file_uuid: str, public_id: str, frame: int) -> tuple[Dataset, int] | None:
        layout = self._layout(file_uuid, public_id)
        if layout is None or not 0 <= frame < layout.frames:
            return None
        if layout.encapsulated is not None:
            start, size = layout.encapsulated[frame]
            data = self._read_range(file_uuid, public_id, start, size)
        else:
            data = self._read_range(file_uuid, public_id, layout.start + frame * layout.frame_size,
                                    layout.frame_size)
        return _one_frame(layout, data), 0

    async def read_frame(self, instance: Resource, frame: int) -> tuple[Dataset, int]:
        """(dataset, frame index in it) for one frame of an instance: its header and only that frame's
        pixel data (index 0), read by offset in a worker thread; for a layout not indexed (see the
        module), the whole file (the frame's own index), or NotFound for a missing file."""
        file_uuid = await self._file_uuid(instance)
        got = await asyncio.to_thread(self._frame_blocking, file_uuid, instance.public_id, frame)
        if got is not None:
            return got
        async with self._whole_reads:
            data = await self.read_file(instance)  # type: ignore[attr-defined]
            self._count(len(data), whole=True)
            return await asyncio.to_thread(_load_all, data), frame

    def _headers_blocking(self, items: list[tuple[str, str | None]]) -> list[tuple[str, Dataset]]:
        out = []
        for public_id, file_uuid in items:
            ds = Dataset()
            if file_uuid is not None:
                try:
                    layout = self._layout(file_uuid, public_id, keep=False)
                    if layout is not None:
                        ds = layout.header
                    else:
                        ds = pydicom.dcmread(self.files.path_of(file_uuid),  # type: ignore[attr-defined]
                                             stop_before_pixels=True, force=True)
                except Exception:  # noqa: BLE001 - an unreadable or missing file is an instance without an image
                    ds = Dataset()
            out.append((public_id, ds))
        return out

    async def read_headers(self, instances: list[Resource]) -> list[tuple[str, Dataset]]:
        """(public ID, header without pixel data) of each instance, read in a worker thread; a missing or
        unreadable file gives an empty dataset (listed as an instance without an image). The headers
        are shared with the frame reads' cache: read them, do not change them."""
        files = await self.index.files([r.id for r in instances])  # type: ignore[attr-defined]
        items = [(r.public_id, files[r.id][0] if r.id in files else None) for r in instances]
        return await asyncio.to_thread(self._headers_blocking, items)


def _load_all(data: bytes) -> Dataset:
    import io
    return pydicom.dcmread(io.BytesIO(data), force=True)


__all__ = ["FrameMethods", "Layout", "read_layout", "LAYOUTS_KEPT", "LAYOUT_BYTES", "LAYOUT_MAX_BYTES",
           "FAILED_SECONDS"]
