"""A faster receive path for pynetdicom's association sockets, and TCP tuning.

pynetdicom polls: its DUL thread checks the socket and sleeps 1 ms when idle, its
association thread sleeps 1 ms between looks at the message queue, and it reads
PDUs 4 KB at a time. On a 512 KB CT slice that is most of the time spent per
instance (a bare pynetdicom SCP took 360 instances/s here; with this module 630/s).
Here: whole PDUs read with ``recv_into``, and short sleeps while data is flowing,
back to pynetdicom's own 1 ms once an association has been quiet for 50 ms, so idle
iPad connections cost no more CPU than before.

Everything degrades to pynetdicom's own behaviour if its internals change.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING

from pynetdicom.transport import AssociationSocket

from ..archive.dicomfile import _ITEM, _ITEM_END, _LONG_VRS, _SEQ_END, _UNDEFINED

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("pipacs.dicom")

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
BUSY_WINDOW = 0.05      # seconds after the last data during which polling stays fast
FAST_DELAY = 0.0001     # polling delay while busy
IDLE_DELAY = 0.001      # pynetdicom's own delay


def tune_socket(sock: socket.socket | None) -> None:
    """TCP_NODELAY for our answers; TCP_QUICKACK so the peer's Nagle is not held by our delayed ACK.

    DCMTK and pynetdicom clients leave Nagle on: without an immediate ACK each instance
    waits for the 40 ms delayed-ACK timer. QUICKACK is not sticky in Linux, so it is
    re-armed on every PDU (not on every read: that costs a third of the throughput for
    clients that already disable Nagle).
    """
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _TCP_QUICKACK is not None:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
    except OSError:
        pass


class FastAssociationSocket(AssociationSocket):
    """Drop-in for an accepted AssociationSocket (its class is swapped on connection)."""

    last_data = 0.0

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        while got < nr_bytes:
            n = sock.recv_into(view[got:], nr_bytes - got)
            if n == 0:  # connection closed: pynetdicom expects what was read so far
                return buf[:got]
            got += n
        if nr_bytes == 6 and _TCP_QUICKACK is not None:
            # A PDU header was just read and we are about to wait for its body: ACK now,
            # or a Nagle-bound sender holds the body back until our delayed ACK fires.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                pass
        return buf

    def send(self, bytestream: bytes) -> None:
        # sending a stream of answers (C-FIND, C-GET) is activity too: keep polling fast meanwhile
        self.last_data = time.monotonic()
        super().send(bytestream)

    @property
    def ready(self) -> bool:
        if self.socket is None or self._is_connected is False:
            return False
        try:
            readable, _, _ = select.select([self.socket], [], [], 0)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # transport closed
            return False
        dul = self.assoc.dul
        now = time.monotonic()
        if readable:
            self.last_data = now
            dul._run_loop_delay = FAST_DELAY
        elif now - self.last_data > BUSY_WINDOW:
            dul._run_loop_delay = IDLE_DELAY
        return bool(readable)


def speed_up(assoc_socket: AssociationSocket) -> None:
    """Tune an accepted association's socket and switch it to the fast receive path."""
    tune_socket(getattr(assoc_socket, "socket", None))
    if type(assoc_socket) is AssociationSocket and hasattr(assoc_socket.assoc.dul, "_run_loop_delay"):
        assoc_socket.__class__ = FastAssociationSocket


class _AdaptiveClock:
    """Stands in for the ``time`` module inside pynetdicom.association: shortens the
    association reactor's 1 ms nap while its socket is busy."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def sleep(self, seconds: float) -> None:
        if seconds == IDLE_DELAY:
            sock = getattr(getattr(threading.current_thread(), "dul", None), "socket", None)
            if isinstance(sock, FastAssociationSocket) and self._real.monotonic() - sock.last_data < BUSY_WINDOW:
                seconds = FAST_DELAY
        self._real.sleep(seconds)


def install_adaptive_reactor() -> None:
    try:
        import pynetdicom.association as assoc_module
    except ImportError:
        return
    if isinstance(getattr(assoc_module, "time", None), _AdaptiveClock):
        return
    if getattr(assoc_module, "time", None) is not time:
        log.info("pynetdicom internals changed: keeping its own polling")
        return
    assoc_module.time = _AdaptiveClock(time)


# ------------------------------------------------------------------------------------------ sending stored files

def dataset_for_sending(part10: bytes) -> "Dataset":
    """A stored file, ready for pynetdicom's send_c_store without decoding or re-encoding it.

    Only the header is parsed; the dataset bytes travel as stored when the negotiated
    syntax is the stored one (see ``install_fast_encode``), and the whole file is decoded
    only when pynetdicom must convert between uncompressed syntaxes.
    """
    import io

    import pydicom

    from ..archive.dicomfile import _read_meta

    ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True, force=True)
    _, start = _read_meta(part10, 132) if part10[128:132] == b"DICM" else ({}, 0)
    ts = ds.file_meta.TransferSyntaxUID
    object.__setattr__(ds, "_pipacs_raw", (memoryview(part10)[start:], ts.is_implicit_VR, ts.is_little_endian,
                                           ts.is_deflated, part10))
    return ds


class _CannotConvert(Exception):
    pass


def explicit_to_implicit_le(body) -> bytes | None:
    """An Explicit VR Little Endian dataset rewritten as Implicit VR Little Endian, at the byte level.

    Values are little endian in both, so only element headers change (and the lengths of
    sequences and items that hold them). None when the data is not simple to convert
    (encapsulated pixel data, UN of undefined length, malformed): the caller then lets pydicom
    decode and re-encode it.
    """
    mv = memoryview(body)
    try:
        out, end = _convert(mv, 0, len(mv), until=None)
    except (_CannotConvert, struct.error, IndexError):
        return None
    return bytes(out) if end == len(mv) else None


def _convert(mv: memoryview, pos: int, end: int, until: int | None) -> tuple[bytearray, int]:
    """Convert elements from ``pos`` up to ``end`` or up to the delimiter tag ``until``."""
    out = bytearray()
    while pos < end:
        group, elem = struct.unpack_from("<HH", mv, pos)
        tag = (group << 16) | elem
        if tag == until:
            return out, pos + 8       # the delimiter (and its zero length), left for the caller to write
        if group == 0xFFFE:
            raise _CannotConvert()
        vr = bytes(mv[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            length = struct.unpack_from("<I", mv, pos + 8)[0]
            vstart = pos + 12
        else:
            if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                raise _CannotConvert()
            length = struct.unpack_from("<H", mv, pos + 6)[0]
            vstart = pos + 8
        if vr == b"SQ":
            value, pos = _convert_sequence(mv, vstart, length)
        elif length == _UNDEFINED:
            raise _CannotConvert()    # encapsulated pixel data or UN sequence
        else:
            if vstart + length > end:
                raise _CannotConvert()
            value = mv[vstart:vstart + length]
            pos = vstart + length
        if elem == 0 and group > 6:
            continue                  # retired group lengths, dropped as pydicom drops them
        if vr == b"SQ" and length == _UNDEFINED:
            out += struct.pack("<HHI", group, elem, _UNDEFINED) + value
        else:
            out += struct.pack("<HHI", group, elem, len(value)) + value
    if until is not None:
        raise _CannotConvert()
    return out, pos


def _convert_sequence(mv: memoryview, pos: int, length: int) -> tuple[bytearray, int]:
    """The items of a sequence, converted; with the sequence delimiter when of undefined length."""
    out = bytearray()
    end = len(mv) if length == _UNDEFINED else pos + length
    while pos < end:
        group, elem, item_len = struct.unpack_from("<HHI", mv, pos)
        tag = (group << 16) | elem
        if tag == _SEQ_END and length == _UNDEFINED:
            out += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
            return out, pos + 8
        if tag != _ITEM:
            raise _CannotConvert()
        if item_len == _UNDEFINED:
            content, pos = _convert(mv, pos + 8, len(mv), until=_ITEM_END)
            out += struct.pack("<HHI", 0xFFFE, 0xE000, _UNDEFINED) + content
            out += struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        else:
            content, after = _convert(mv, pos + 8, pos + 8 + item_len, until=None)
            out += struct.pack("<HHI", 0xFFFE, 0xE000, len(content)) + content
            pos = after
    if length == _UNDEFINED:
        raise _CannotConvert()
    return out, pos


def install_fast_encode() -> None:
    """Let pynetdicom send a ``dataset_for_sending`` as stored when the syntaxes agree.

    pynetdicom re-encodes every dataset it sends with pydicom (half the time of a C-GET);
    a compressed instance can only go out in its own syntax, and an uncompressed one with
    the same VR encoding and byte order is byte-identical, so the stored bytes are reused.
    """
    try:
        import pynetdicom.association as assoc_module
    except ImportError:
        return
    real = getattr(assoc_module, "encode", None)
    if real is None or getattr(real, "_pipacs", False):
        return

    def encode(ds, is_implicit_vr, is_little_endian, deflated=False):
        raw = getattr(ds, "_pipacs_raw", None)
        if raw is not None:
            body, implicit, little, stored_deflated, whole = raw
            if (implicit, little, stored_deflated) == (is_implicit_vr, is_little_endian, deflated):
                return bytes(body)
            if (implicit, little, stored_deflated, is_implicit_vr, is_little_endian, deflated) == \
                    (False, True, False, True, True, False):
                converted = explicit_to_implicit_le(body)   # many peers take only Implicit VR
                if converted is not None:
                    return converted
            import io

            import pydicom
            ds = pydicom.dcmread(io.BytesIO(whole), force=True)  # conversion needs the full dataset
        return real(ds, is_implicit_vr, is_little_endian, deflated)

    encode._pipacs = True  # type: ignore[attr-defined]
    assoc_module.encode = encode

    real_send = assoc_module.Association.send_c_store

    def send_c_store(self, dataset, *args, **kwargs):
        """A compressed instance the peer does not take in its syntax goes decompressed instead."""
        try:
            return real_send(self, dataset, *args, **kwargs)
        except ValueError:
            raw = getattr(dataset, "_pipacs_raw", None)
            if raw is None or not dataset.file_meta.TransferSyntaxUID.is_compressed:
                raise
            from ..imaging.transcode import decompressed
            log.info("peer does not accept %s: sending %s decompressed",
                     dataset.file_meta.TransferSyntaxUID.name, dataset.get("SOPInstanceUID", "?"))
            return real_send(self, dataset_for_sending(decompressed(raw[4])), *args, **kwargs)

    assoc_module.Association.send_c_store = send_c_store
