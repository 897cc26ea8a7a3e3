"""pynetdicom made fast enough for a classroom: TCP tuning, threads that wait for work, and
less per-message work (see ``install_speedups``).

pynetdicom polls: its DUL thread checks the socket and sleeps 1 ms when idle, its
association thread sleeps 1 ms between looks at the message queue (and a thread sending
on an association waits for that nap to end), and it reads PDUs 4 KB at a time. On a
512 KB CT slice that is most of the time spent per instance, and the polling threads take
the interpreter lock from the thread writing the file. Here both threads sleep until there
is work: the DUL thread in ``select`` on the socket and on a wake-up socket that its
outgoing queue pokes, the association thread on an event that its incoming queues and its
pause requests set. Whole PDUs are read with ``recv_into``. An idle association wakes at
most every 10 ms (to notice pynetdicom's timers), less often than pynetdicom's own 1 ms.

Everything degrades to pynetdicom's own behaviour if its internals change.
"""

from __future__ import annotations

import copy
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydicom.multival import MultiValue
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket

from ..archive.dicomfile import _ITEM, _ITEM_END, _LONG_VRS, _SEQ_END, _UNDEFINED

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("pipacs.dicom")

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
IDLE_WAIT = 0.01        # longest nap of an association's threads when nothing wakes them
PYNETDICOM_NAP = 0.001  # the association reactor's own sleep, replaced by a wait for work
PYNETDICOM_KILL_POLL = 0.01   # Association.kill()'s wait for the DUL thread to stop
PYNETDICOM_PAUSE_POLL = 0.0001  # a sending thread's wait for the association reactor to pause
FAST_KILL_POLL = 0.0005
_IOV_MAX = 512                  # buffers per gathering write (Linux takes 1024)


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


class _Wakeup:
    """What wakes an association's two threads: a socket pair for the DUL thread's select,
    an event for the association thread."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        self.reactor = threading.Event()

    def poke_dul(self) -> None:
        try:
            self.writer.send(b"\0")
        except OSError:
            pass  # a wake-up already pending (buffer full), or the association is closed

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def _then(method: Callable, after: Callable[[], None]) -> Callable:
    def hooked(*args, **kwargs):
        result = method(*args, **kwargs)
        after()
        return result
    return hooked


class FastAssociationSocket(AssociationSocket):
    """Drop-in for an AssociationSocket (its class is swapped when the connection opens)."""

    _wakeup: _Wakeup

    def send(self, data) -> None:
        """Bytes, as pynetdicom sends them; or a message's PDUs as a list of buffers (see
        ``p_data_pdus``), written with gathering writes: no joined copy of the dataset, and
        no copy of the rest after each partial write."""
        if not isinstance(data, list):
            return super().send(data)
        views = [memoryview(b).cast("B") for b in data]
        first = 0
        try:
            while first < len(views):
                sent = self.socket.sendmsg(views[first:first + _IOV_MAX])
                while first < len(views) and sent >= views[first].nbytes:
                    sent -= views[first].nbytes
                    first += 1
                if sent:
                    views[first] = views[first][sent:]
        except OSError:
            self.event_queue.put("Evt17")   # transport connection closed, as pynetdicom reports it

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

    def close(self) -> None:
        super().close()
        self._wakeup.close()   # later pokes are ignored; ``ready`` no longer selects once closed

    @property
    def ready(self) -> bool:
        """Whether a PDU can be read; waits (in select, without the interpreter lock) until
        one can, or until something is queued for sending, or IDLE_WAIT."""
        dul = self.assoc.dul
        pending = dul.to_provider_queue.qsize() or dul.event_queue.qsize()
        sock = self.socket
        if sock is None or self._is_connected is False:
            if not pending:
                time.sleep(PYNETDICOM_NAP)   # closed, waiting to be stopped: do not spin
            return False
        timeout = 0 if pending else (PYNETDICOM_NAP if dul.state_machine.current_state == "Sta1" else IDLE_WAIT)
        try:
            readable, _, _ = select.select([sock, self._wakeup.reader], [], [], timeout)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # transport closed
            return False
        if self._wakeup.reader in readable:
            self._wakeup.drain()
        return sock in readable


def speed_up(assoc_socket: AssociationSocket) -> None:
    """Tune a new association's socket and make its threads wait for work instead of polling."""
    tune_socket(getattr(assoc_socket, "socket", None))
    assoc = getattr(assoc_socket, "assoc", None)
    dul = getattr(assoc, "dul", None)
    needed = ("to_provider_queue", "to_user_queue", "event_queue", "_run_loop_delay", "state_machine")
    if (type(assoc_socket) is not AssociationSocket or dul is None or not all(hasattr(dul, n) for n in needed)
            or not hasattr(getattr(assoc, "dimse", None), "msg_queue")
            or not hasattr(assoc, "_reactor_checkpoint")):
        return
    wakeup = _Wakeup()
    assoc_socket._wakeup = wakeup  # type: ignore[attr-defined]
    assoc._pipacs_wakeup = wakeup
    # Queues are hooked in place (not replaced): another thread may be using them right now.
    dul.to_provider_queue.put = _then(dul.to_provider_queue.put, wakeup.poke_dul)
    dul.to_user_queue.put = _then(dul.to_user_queue.put, wakeup.reactor.set)
    assoc.dimse.msg_queue.put = _then(assoc.dimse.msg_queue.put, wakeup.reactor.set)
    # a thread about to send on the association waits for the reactor to pause (or nap)
    _hold_at_checkpoint(assoc)
    dul._run_loop_delay = 0          # the wait happens in ``ready``
    assoc_socket.__class__ = FastAssociationSocket


class _WakeableClock:
    """Stands in for the ``time`` module inside pynetdicom.association: the association
    reactor's 1 ms nap becomes a wait for work (a message, a release, a pause request), and
    ``kill`` polls faster."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def sleep(self, seconds: float) -> None:
        if seconds == PYNETDICOM_NAP:
            reactor = threading.current_thread()
            wakeup = getattr(reactor, "_pipacs_wakeup", None)
            if wakeup is not None:
                # Napping counts as paused (see _PausedFlag): after the nap the reactor
                # stops at its checkpoint before it looks at any message.
                state = reactor.__dict__
                state["_pipacs_napping"] = True
                _announce_pause()
                try:
                    wakeup.reactor.wait(IDLE_WAIT)
                finally:
                    state["_pipacs_napping"] = False
                wakeup.reactor.clear()
                return
        elif seconds == PYNETDICOM_PAUSE_POLL:
            # A thread about to send on an association (a C-MOVE's C-STORE) waits for the
            # reactor to pause: woken when any reactor pauses, not a 0.1 ms sleep at a time.
            with _a_reactor_paused:
                _a_reactor_paused.wait(seconds)
            return
        elif seconds == PYNETDICOM_KILL_POLL:
            # Association.kill() polls this often for the DUL thread to reach Sta1, which it does
            # within a millisecond of a release: 10 ms added to every release (every C-MOVE's
            # sub-association, every send to a modality) for nothing.
            seconds = FAST_KILL_POLL
        self._real.sleep(seconds)


_a_reactor_paused = threading.Condition()


class _PausedFlag:
    """``Association._is_paused``, made exact, and announced to the threads waiting for it.

    pynetdicom's reactor sets the flag, waits at its checkpoint, then clears the flag; a
    thread about to send clears the checkpoint, waits for the flag, sends, takes the reply
    and sets the checkpoint again. The flag can be stale: a reactor that passed the
    checkpoint just before it was cleared, or one released by the previous sender's
    ``set`` that has not run yet, shows it while it goes on to take the next message off
    the queue, the reply the next sender waits for. (Seen as "Received unexpected C-STORE
    service message" and a C-MOVE stuck for the 30 s DIMSE timeout, once reads ahead made
    the sender quick.) Here the flag reads as set only while the reactor really is held at
    the checkpoint (see ``_hold_at_checkpoint``), or runs a service (it is then the sender),
    or naps (``_WakeableClock``): a reactor that naps goes to the checkpoint first when it
    wakes, so the sender need not wake it and wait for it to get there.
    """

    def __get__(self, assoc, owner=None):
        if assoc is None:
            return self
        state = assoc.__dict__
        return (state.get("_pipacs_is_paused", False) and not state.get("_pipacs_passing", False)) \
            or state.get("_pipacs_napping", False)

    def __set__(self, assoc, paused: bool) -> None:
        state = assoc.__dict__
        state["_pipacs_is_paused"] = paused
        if paused:
            _announce_pause()
        else:
            state["_pipacs_passing"] = state["_pipacs_held"] = False


def _announce_pause() -> None:
    with _a_reactor_paused:
        _a_reactor_paused.notify_all()


def _hold_at_checkpoint(assoc) -> None:
    """Let the reactor's checkpoint tell whether it holds the reactor (see _PausedFlag)."""
    checkpoint = assoc._reactor_checkpoint
    real_wait, real_set = checkpoint.wait, checkpoint.set
    state = assoc.__dict__

    def wait(timeout=None):
        state["_pipacs_passing"] = True     # before looking: a sender may clear it any moment
        if real_wait(0):
            return True                     # passing: the flag reads unset until the reactor clears it
        state["_pipacs_passing"] = False
        state["_pipacs_held"] = True        # held: now the flag is true
        _announce_pause()
        return real_wait(timeout)

    def set_():
        if state.get("_pipacs_held"):
            state["_pipacs_passing"] = True  # released: no longer paused, though it has not run yet
        real_set()

    checkpoint.wait = wait
    checkpoint.set = set_


def install_wakeable_reactor() -> None:
    try:
        import pynetdicom.association as assoc_module
    except ImportError:
        return
    if isinstance(getattr(assoc_module, "time", None), _WakeableClock):
        return
    if getattr(assoc_module, "time", None) is not time:
        log.info("pynetdicom internals changed: keeping its own polling")
        return
    assoc_module.time = _WakeableClock(time)
    assoc_module.Association._is_paused = _PausedFlag()


_PDV_HEADER = struct.Struct(">BBIIBB")   # PDU type, reserved, PDU length, PDV length, context, control


def p_data_pdus(context_id: int, command: bytes, dataset: bytes | memoryview, max_pdu_length: int) -> list:
    """A DIMSE message as P-DATA-TF PDUs (PS3.8 9.3.5, Annex E), one PDV each, fragmented as
    pynetdicom's ``encode_msg`` does: a list of buffers (headers, and slices of the dataset,
    not copies) for one gathering write."""
    size = max_pdu_length - 6 if max_pdu_length else max(len(command), len(dataset), 1)
    parts: list = []
    for data, flag in ((command, 1), (dataset, 0)):
        view = memoryview(data)
        if flag == 0 and not len(view):
            break
        count = max(1, -(-len(view) // size))
        for i in range(count):
            piece = view[i * size:(i + 1) * size]
            parts.append(_PDV_HEADER.pack(0x04, 0, len(piece) + 6, len(piece) + 2, context_id,
                                          flag | (2 if i == count - 1 else 0)))   # bit 1: last fragment
            parts.append(piece)
    return parts


def install_batched_send() -> None:
    """Send each DIMSE message's P-DATA-TF PDUs in one socket write instead of one trip each
    through the DUL thread's queue and state machine.

    A 512 KB instance to a peer taking 16 KB PDUs (DCMTK's default) is 33 PDUs; one trip
    costs about as much as the whole C-STORE otherwise does. The message still passes the
    state machine once (Evt9, P-DATA request), in order with everything else queued, and
    each PDU is pynetdicom's own encoding; only the per-PDU ``EVT_PDU_SENT`` is not raised.
    Messages of one PDU (a C-FIND answer's command) go the usual way.
    """
    try:
        import pynetdicom.dimse as dimse_module
        import pynetdicom.dimse_messages as dimse_messages_module
        from pynetdicom import fsm
        from pynetdicom.pdu_primitives import P_DATA
    except ImportError:
        return
    if getattr(dimse_module.DIMSEServiceProvider.send_msg, "_pipacs", False):
        return
    needed = all(hasattr(dimse_module, n) for n in ("_RQ_TO_MESSAGE", "_RSP_TO_MESSAGE", "evt")) and \
        all(k in fsm.ACTIONS for k in ("DT-1", "AR-7")) and hasattr(dimse_messages_module, "encode")
    if not needed:
        log.info("pynetdicom internals changed: sending P-DATA its own way")
        return
    real_send_msg = dimse_module.DIMSEServiceProvider.send_msg

    def send_msg(self, primitive, context_id: int) -> None:
        if getattr(self.assoc, "_pipacs_wakeup", None) is None:
            return real_send_msg(self, primitive, context_id)
        if primitive.MessageIDBeingRespondedTo is None:
            message = dimse_module._RQ_TO_MESSAGE[primitive.__class__]()
        else:
            message = dimse_module._RSP_TO_MESSAGE[primitive.__class__]()
        message.primitive_to_message(primitive)
        message.context_id = context_id
        dimse_module.evt.trigger(self.assoc, dimse_module.evt.EVT_DIMSE_SENT, {"message": message})
        data_set = message.data_set
        if getattr(message, "_data_set_path", None) is not None or \
                (data_set is not None and not hasattr(data_set, "getvalue")):
            for pdu in message.encode_msg(context_id, self.maximum_pdu_size):   # a dataset sent from a file
                self.dul.send_pdu(pdu)
            return
        command = dimse_messages_module.encode(message.command_set, True, True)
        # getvalue: the bytes the BytesIO was made from, not a copy (getbuffer would copy them)
        dataset = data_set.getvalue() if data_set is not None else b""
        if not dataset and (self.maximum_pdu_size == 0 or len(command) + 6 <= self.maximum_pdu_size):
            one = P_DATA()        # a command alone (a C-FIND answer's, a C-STORE response): one PDU
            one.presentation_data_value_list.append((context_id, b"\x03" + command))
            self.dul.send_pdu(one)
            return
        whole = P_DATA()
        whole._pipacs_wire = p_data_pdus(context_id, command, dataset,   # type: ignore[attr-defined]
                                         self.maximum_pdu_size)
        self.dul.send_pdu(whole)

    send_msg._pipacs = True  # type: ignore[attr-defined]

    def batched(action: Callable, next_state: str) -> Callable:
        def run(dul) -> str:
            try:
                primitive = dul.to_provider_queue.queue[0]
            except IndexError:
                return action(dul)
            wire = getattr(primitive, "_pipacs_wire", None)
            if wire is None:
                return action(dul)
            dul.to_provider_queue.get(False)
            dul.socket.send(wire)
            return next_state
        return run

    for name in ("DT-1", "AR-7"):
        description, action, next_state = fsm.ACTIONS[name]
        fsm.ACTIONS[name] = (description, batched(action, next_state), next_state)
    dimse_module.DIMSEServiceProvider.send_msg = send_msg


class _QuicklyCopiedContext(PresentationContext):
    """A supported presentation context that deep-copies in microseconds.

    pynetdicom deep-copies every supported context for each new association; with every
    storage SOP class and every transfer syntax that is 5000 UIDs, each rebuilt and
    re-validated: 60 ms before a C-ECHO or C-FIND could be answered. UIDs are immutable
    strings, so sharing them is safe; only the lists are fresh.
    """

    def __deepcopy__(self, memo: dict) -> _QuicklyCopiedContext:
        new = copy.copy(self)
        new._transfer_syntax = list(self._transfer_syntax)
        return new


def quickly_copied(contexts: list[PresentationContext]) -> list[PresentationContext]:
    """The same contexts, as objects that pynetdicom copies cheaply per association."""
    out: list[PresentationContext] = []
    for cx in contexts:
        if not hasattr(cx, "_transfer_syntax"):
            return contexts  # pynetdicom internals changed: keep its own objects
        quick = _QuicklyCopiedContext()
        quick.__dict__.update(cx.__dict__)
        quick._transfer_syntax = list(cx._transfer_syntax)
        out.append(quick)
    return out


def encode_command_set(ds: Dataset) -> bytes | None:
    """A DIMSE command set as Implicit VR Little Endian (PS3.7 6.3.1), byte for byte what
    pydicom writes, or None for anything but the few value types command sets hold.

    pynetdicom encodes each command set twice through pydicom's general writer (once for
    its group length): about 0.2 ms per message, a third of the cost of a C-FIND answer.
    """
    out = bytearray()
    for elem in ds:
        tag = elem.tag
        if tag >> 16:
            return None
        vr, value = elem.VR, elem.value
        values = value if isinstance(value, (list, tuple, MultiValue)) else ([] if value is None or value == ""
                                                                                else [value])
        if vr in ("US", "UL"):
            if not all(type(v) is int for v in values):
                return None
            fmt = "<H" if vr == "US" else "<I"
            body = b"".join(struct.pack(fmt, v) for v in values)
        elif vr in ("UI", "AE", "LO"):
            if not all(isinstance(v, str) and v.isascii() for v in values):
                return None
            body = "\\".join(values).encode("ascii")
            if len(body) % 2:
                body += b"\0" if vr == "UI" else b" "
        elif vr == "AT":
            if not all(isinstance(v, int) for v in values):
                return None
            body = b"".join(struct.pack("<HH", v >> 16, v & 0xFFFF) for v in values)
        else:
            return None
        out += struct.pack("<HHI", 0, tag & 0xFFFF, len(body)) + body
    return bytes(out)


def _wrap_encode(module_name: str, wrap: Callable[[Callable], Callable]) -> bool:
    """Replace pynetdicom's ``encode`` as imported by ``module_name`` with ``wrap(encode)``,
    once; False when it is not there (pynetdicom changed) or already replaced."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    real = getattr(module, "encode", None)
    if real is None or getattr(real, "_pipacs", False):
        return False
    wrapped = wrap(real)
    wrapped._pipacs = True  # type: ignore[attr-defined]
    module.encode = wrapped
    return True


def install_fast_command_encoding() -> None:
    """Let pynetdicom encode command sets with ``encode_command_set`` (pydicom for the rest)."""

    def wrap(real: Callable) -> Callable:
        def encode(ds, is_implicit_vr, is_little_endian, deflated=False):
            if is_implicit_vr and is_little_endian and not deflated:
                try:
                    encoded = encode_command_set(ds)
                except (AttributeError, TypeError, ValueError, struct.error):
                    encoded = None
                if encoded is not None:
                    return encoded
            return real(ds, is_implicit_vr, is_little_endian, deflated)
        return encode

    _wrap_encode("pynetdicom.dimse_messages", wrap)


# ------------------------------------------------------------------------------------------ sending stored files

def dataset_for_sending(part10: bytes) -> Dataset:
    """A stored file, ready for pynetdicom's send_c_store without decoding or re-encoding it.

    Only the file meta information is read (what send_c_store needs: the SOP class and
    instance, the syntax; PS3.10 makes them equal to the dataset's); the dataset bytes
    travel as stored when the negotiated syntax is the stored one (see
    ``install_fast_encode``), and the whole file is decoded only when pynetdicom must
    convert between uncompressed syntaxes.
    """
    import io

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    from ..archive.dicomfile import InvalidDicom, _read_meta, _uid_text

    try:
        meta, start = _read_meta(part10, 132) if part10[128:132] == b"DICM" else ({}, 0)
    except InvalidDicom:
        meta, start = {}, 0
    sop_class, sop_instance, syntax = (_uid_text(meta.get(t, b"")) for t in (0x00020002, 0x00020003, 0x00020010))
    if sop_class and sop_instance and syntax:
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_instance
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    else:  # not written by us (no meta information): let pydicom read the header
        ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True, force=True)
    ts = ds.file_meta.TransferSyntaxUID
    ds.set_original_encoding(ts.is_implicit_VR, ts.is_little_endian)
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

    def wrap(real: Callable) -> Callable:
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
        return encode

    if not _wrap_encode("pynetdicom.association", wrap):
        return
    import pynetdicom.association as assoc_module

    real_send = assoc_module.Association.send_c_store

    def send_c_store(self, dataset, *args, **kwargs):
        """An instance the peer does not take in its syntax (compressed, or big endian, which
        pynetdicom does not convert) goes in Explicit VR Little Endian instead."""
        raw = getattr(dataset, "_pipacs_raw", None)
        ts = dataset.file_meta.TransferSyntaxUID
        if raw is None or not (ts.is_compressed or not ts.is_little_endian):
            return real_send(self, dataset, *args, **kwargs)
        sop_class = dataset.get("SOPClassUID")
        if any(cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == ts and cx.as_scu
               for cx in self.accepted_contexts):
            return real_send(self, dataset, *args, **kwargs)
        # asked first, not after pynetdicom has logged an error for what is then sent fine
        from ..imaging.transcode import decompressed
        log.info("peer does not accept %s: sending %s in Explicit VR Little Endian",
                 ts.name, dataset.get("SOPInstanceUID", "?"))
        return real_send(self, dataset_for_sending(decompressed(raw[4])), *args, **kwargs)

    assoc_module.Association.send_c_store = send_c_store


def install_remembered_uids(limit: int = 10000) -> None:
    """Let pynetdicom convert and check each distinct UID once.

    Every association request is a few hundred UIDs (a viewer proposes every storage class,
    each with its transfer syntaxes and roles), each made a pydicom UID and matched against
    the UID rules, for a warning at most: 10 ms of an association's set-up here, for the same
    strings every time. UIDs are immutable, so the answers are kept (up to ``limit``; an
    invalid value still raises, and is not kept).
    """
    import importlib

    try:
        from pynetdicom import utils
    except ImportError:
        return
    real = getattr(utils, "set_uid", None)
    if real is None or getattr(real, "_pipacs", False):
        return
    known: dict[tuple, object] = {}

    def set_uid(value, name, allow_empty=True, allow_none=True, validate=True):
        if not isinstance(value, (str, bytes)):
            return real(value, name, allow_empty, allow_none, validate)
        key = (value, name, allow_empty, allow_none, validate)
        uid = known.get(key)
        if uid is None:
            uid = real(value, name, allow_empty, allow_none, validate)
            if len(known) < limit:
                known[key] = uid
        return uid

    set_uid._pipacs = True  # type: ignore[attr-defined]
    for name in ("pynetdicom.utils", "pynetdicom.ae", "pynetdicom.dimse_primitives", "pynetdicom.pdu_items",
                 "pynetdicom.pdu_primitives", "pynetdicom.presentation"):
        module = importlib.import_module(name)
        if getattr(module, "set_uid", None) is real:
            module.set_uid = set_uid


def quiet_pynetdicom_logging() -> None:
    """Spare pynetdicom the work of describing what nobody reads.

    It formats every query identifier for its log even when that log is off (a tenth of each
    C-FIND answer's cost): always turned off, our own log says what a person needs. Its
    standard handlers describe every PDU and every DIMSE message for its INFO and DEBUG log
    (an association request with a hundred contexts takes them 5 ms, quadratically): unbound
    unless that log is wanted (``pipacs serve --verbose``).
    """
    from pynetdicom import _config

    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_REQUEST_IDENTIFIERS = False
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        _config.LOG_HANDLER_LEVEL = "none"


def install_speedups() -> None:
    """Everything above that changes how pynetdicom works (idempotent; each part keeps
    pynetdicom's own behaviour if its internals are not what it expects)."""
    quiet_pynetdicom_logging()
    install_wakeable_reactor()
    install_batched_send()
    install_fast_command_encoding()
    install_fast_encode()
    install_remembered_uids()
