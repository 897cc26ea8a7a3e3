"""Every change pipacs makes to pynetdicom, in one module, installed by one ``install()``.

pynetdicom is made fast enough for a classroom here: TCP tuning, threads that wait for work
instead of polling, and less per-message work. Each patch below names the upstream function
it replaces or depends on, and why; ``UPSTREAM`` lists them all, and
tests/test_pynetdicom_patches.py fails, naming the patch to revisit, when the source of any
of them differs from the pinned pynetdicom's (see pyproject.toml). Where pynetdicom has a
public extension point it is used instead of a patch: the ``contexts`` given to
``start_server``/``associate`` (``quickly_copied``: a PresentationContext subclass), and
EVT_CONN_OPEN handlers (``speed_up``). Everything degrades to pynetdicom's own behaviour
when its internals are not what a patch expects. docs/pynetdicom-speedups.md says which of
these would serve every pynetdicom user.

Why: pynetdicom polls. Its DUL thread checks the socket and sleeps 1 ms when idle, its
association thread sleeps 1 ms between looks at the message queue (and a thread sending on
an association waits for that nap to end), and it reads PDUs 4 KB at a time. On a 512 KB CT
slice that is most of the time spent per instance, and the polling threads take the
interpreter lock from the thread writing the file. Here both threads sleep until there is
work: the DUL thread in ``select`` on the socket and on a wake-up socket that its outgoing
queue pokes, the association thread on an event that its incoming queues and its pause
requests set. Whole PDUs are read with ``recv_into``. An idle association wakes at most
every 10 ms (to notice pynetdicom's timers), less often than pynetdicom's own 1 ms.

The patches (upstream -> here):

1. ``_config.LOG_*_IDENTIFIERS``, ``LOG_HANDLER_LEVEL`` (pynetdicom's documented options)
   -> ``quiet_pynetdicom_logging``
2. ``transport.AssociationSocket`` (``send``, ``recv``, ``ready``, ``close``), per connection,
   by a class swap in an EVT_CONN_OPEN handler -> ``FastAssociationSocket`` / ``speed_up``
3. ``dul.DULServiceProvider``: its ``_run_loop_delay`` and its two queues' ``put``, per
   association (``run_reactor`` polls both) -> ``speed_up``
4. ``dimse.DIMSEServiceProvider.msg_queue.put`` and ``Association._reactor_checkpoint``
   (``wait``, ``set``), per association -> ``speed_up``, ``_hold_at_checkpoint``
5. ``association.time`` (module global; the literals 0.001, 0.0001 and 0.01 of
   ``Association._run_reactor``, its ``send_c_*`` methods and ``kill``) -> ``_WakeableClock``
6. ``Association._is_paused`` (an instance attribute set by the reactor and read by senders)
   -> ``_PausedFlag``, a class-level descriptor
7. ``dimse.DIMSEServiceProvider.send_msg`` and ``fsm.ACTIONS["DT-1"]``, ``["AR-7"]``
   (``fsm.DT_1``, ``fsm.AR_7``) -> ``install_batched_send``
8. ``dimse_messages.encode`` (``dsutils.encode``, for command sets) -> ``install_fast_command_encoding``
9. ``association.encode`` (``dsutils.encode``, for datasets sent) and
   ``Association.send_c_store`` -> ``install_fast_encode``
10. ``utils.set_uid`` as imported by six modules -> ``install_remembered_uids``
11. ``Association._serve_request`` -> ``install_store_refusal``
12. ``transport.AssociationServer.verify_request`` (socketserver's, inherited) -> ``install_connection_admission``
13. ``dimse.DIMSEServiceProvider.receive_primitive`` and ``.get_msg`` (wrapped) -> ``install_identifier_wait``
"""

from __future__ import annotations

import copy
import functools
import importlib
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket

from ..codec import encode_command_set, explicit_to_implicit_le, p_data_pdus
from .statuses import SOP_CLASS_NOT_SUPPORTED
from .transport import dataset_for_sending

log = logging.getLogger("pipacs.dicom")

# Upstream functions, methods and classes each patch replaces or relies on (by name), with the
# patch: the guard test hashes their source at the pinned version.
UPSTREAM: dict[str, str] = {
    "pynetdicom._config": "quiet_pynetdicom_logging",
    "pynetdicom.transport.AssociationSocket.__init__": "FastAssociationSocket",
    "pynetdicom.transport.AssociationSocket.send": "FastAssociationSocket",
    "pynetdicom.transport.AssociationSocket.recv": "FastAssociationSocket",
    "pynetdicom.transport.AssociationSocket.close": "FastAssociationSocket",
    "pynetdicom.transport.AssociationSocket.ready": "FastAssociationSocket",
    "pynetdicom.dul.DULServiceProvider.__init__": "speed_up",
    "pynetdicom.dul.DULServiceProvider.run_reactor": "speed_up",
    "pynetdicom.dul.DULServiceProvider._is_transport_event": "speed_up",
    "pynetdicom.dul.DULServiceProvider.send_pdu": "speed_up",
    "pynetdicom.dimse.DIMSEServiceProvider.__init__": "speed_up",
    "pynetdicom.association.Association.__init__": "_PausedFlag",
    "pynetdicom.association.Association._run_reactor": "_WakeableClock",
    "pynetdicom.association.Association.kill": "_WakeableClock",
    "pynetdicom.association.Association.release": "_WakeableClock",
    "pynetdicom.association.Association.send_c_echo": "_WakeableClock",
    "pynetdicom.association.Association.send_c_find": "_WakeableClock",
    "pynetdicom.association.Association.send_c_get": "_WakeableClock",
    "pynetdicom.association.Association.send_c_move": "_WakeableClock",
    "pynetdicom.association.Association.send_c_store": "install_fast_encode",
    "pynetdicom.dimse.DIMSEServiceProvider.send_msg": "install_batched_send",
    "pynetdicom.dimse_messages.DIMSEMessage.encode_msg": "install_batched_send",
    "pynetdicom.fsm.DT_1": "install_batched_send",
    "pynetdicom.fsm.AR_7": "install_batched_send",
    "pynetdicom.dsutils.encode": "install_fast_command_encoding",
    "pynetdicom.utils.set_uid": "install_remembered_uids",
    "pynetdicom.association.Association._serve_request": "install_store_refusal",
    "pynetdicom.service_class.QueryRetrieveServiceClass._move_scp": "install_retrieve_refusal",
    "pynetdicom.service_class.QueryRetrieveServiceClass._get_scp": "install_retrieve_refusal",
    "pynetdicom.transport.RequestHandler._create_association": "quickly_copied",
    "pynetdicom.presentation.PresentationContext.__init__": "quickly_copied",
    "pynetdicom.transport.AssociationServer.verify_request": "install_connection_admission",
    "pynetdicom.transport.AssociationServer.get_request": "install_connection_admission",
    "pynetdicom.transport.AssociationServer.shutdown_request": "install_connection_admission",
    "pynetdicom.transport.ThreadedAssociationServer.process_request_thread": "install_connection_admission",
    "pynetdicom.transport.RequestHandler.handle": "install_connection_admission",
    "pynetdicom.association.Association.run_reactor": "install_connection_admission",
    "pynetdicom.fsm.AE_5": "install_connection_admission",
    "pynetdicom.dimse.DIMSEServiceProvider.receive_primitive": "install_identifier_wait",
    "pynetdicom.dimse.DIMSEServiceProvider.get_msg": "install_identifier_wait",
    "pynetdicom.dimse_messages.DIMSEMessage.decode_msg": "install_identifier_wait",
}

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
IDLE_WAIT = 0.01        # longest nap of an association's threads when nothing wakes them
PYNETDICOM_NAP = 0.001  # the association reactor's own sleep, replaced by a wait for work
PYNETDICOM_KILL_POLL = 0.01   # Association.kill()'s wait for the DUL thread to stop
PYNETDICOM_PAUSE_POLL = 0.0001  # a sending thread's wait for the association reactor to pause
FAST_KILL_POLL = 0.0005
_IOV_MAX = 512                  # buffers per gathering write (Linux takes 1024)

_installed = False


def install() -> None:
    """Every patch of pynetdicom, once (idempotent: later calls do nothing; each patch also
    keeps pynetdicom's own behaviour if its internals are not what it expects)."""
    global _installed
    quiet_pynetdicom_logging()   # each time: follows the log level, if it was set after the first call
    if _installed:
        return
    install_wakeable_reactor()
    install_batched_send()
    install_fast_command_encoding()
    install_fast_encode()
    install_remembered_uids()
    install_store_refusal()
    install_retrieve_refusal()
    install_connection_admission()
    install_identifier_wait()
    _installed = True


def _marked(wrapper: Callable, real: Callable) -> Callable:
    """Mark a replacement as ours, keeping the upstream function it replaces as ``__wrapped__``."""
    wrapper._pipacs = True  # type: ignore[attr-defined]
    wrapper.__wrapped__ = real  # type: ignore[attr-defined]
    return wrapper


# ------------------------------------------------------------------------------------------ logging

def quiet_pynetdicom_logging() -> None:
    """Spare pynetdicom the work of describing what nobody reads.

    Replaces the defaults of ``pynetdicom._config.LOG_RESPONSE_IDENTIFIERS``,
    ``LOG_REQUEST_IDENTIFIERS`` and ``LOG_HANDLER_LEVEL`` (documented options). pynetdicom
    formats every query identifier for its log even when that log is off (a tenth of each
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


# ------------------------------------------------------------------------------------------ the socket

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
    """Drop-in for pynetdicom's ``transport.AssociationSocket`` (its class is swapped when the
    connection opens, by ``speed_up``): ``send`` takes a message's PDUs as buffers, ``recv``
    reads whole PDUs, ``ready`` waits in select instead of the DUL thread's 1 ms poll.

    A swap, not a subclass given to pynetdicom: the sockets are made by ``AE._create_socket``
    and ``RequestHandler._create_association``, private both, and the C-MOVE sub-association
    by pynetdicom itself; EVT_CONN_OPEN reaches all three.
    """

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
    """Tune a new association's socket and make its threads wait for work instead of polling
    (an EVT_CONN_OPEN handler's work, for every association, accepted or requested).

    Per association: the socket becomes a ``FastAssociationSocket``; the ``put`` of the DUL's
    ``to_provider_queue`` (pokes the DUL thread's select), of its ``to_user_queue`` and of the
    DIMSE ``msg_queue`` (wake the association thread) are hooked; ``_run_loop_delay`` is 0
    (``DULServiceProvider.run_reactor`` sleeps that long between polls; the wait is in
    ``ready`` now); and the reactor checkpoint tells whether it holds the reactor.
    """
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


# ------------------------------------------------------------------------------------------ the association reactor

class _WakeableClock:
    """Stands in for the ``time`` module inside ``pynetdicom.association``: the association
    reactor's 1 ms nap (``Association._run_reactor``) becomes a wait for work (a message, a
    release, a pause request), a sender's 0.1 ms polls for the reactor to pause
    (``Association.send_c_*``) a wait for it, and ``Association.kill`` polls faster.
    Relies on those sleep literals (the guard test hashes the methods holding them)."""

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
    """Let the reactor's checkpoint (``Association._reactor_checkpoint``, an Event whose
    ``wait`` and ``set`` are hooked here) tell whether it holds the reactor (see _PausedFlag)."""
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
    """Replace ``pynetdicom.association.time`` (module global) with ``_WakeableClock`` and
    ``Association._is_paused`` with ``_PausedFlag``."""
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


# ------------------------------------------------------------------------------------------ sending messages

def install_batched_send() -> None:
    """Replace ``dimse.DIMSEServiceProvider.send_msg`` and wrap the state machine's actions
    DT-1 and AR-7 (``fsm.DT_1``, ``fsm.AR_7`` in ``fsm.ACTIONS``): each DIMSE message's
    P-DATA-TF PDUs go in one socket write instead of one trip each through the DUL thread's
    queue and state machine.

    A 512 KB instance to a peer taking 16 KB PDUs (DCMTK's default) is 33 PDUs; one trip
    costs about as much as the whole C-STORE otherwise does. The message still passes the
    state machine once (Evt9, P-DATA request), in order with everything else queued, and
    the PDUs are those of ``DIMSEMessage.encode_msg`` (``codec.p_data_pdus``, tested
    byte-identical); only the per-PDU ``EVT_PDU_SENT`` is not raised. Messages of one PDU (a
    C-FIND answer's command) go the usual way.
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

    _marked(send_msg, real_send_msg)

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
        run.__wrapped__ = action  # type: ignore[attr-defined]
        return run

    for name in ("DT-1", "AR-7"):
        description, action, next_state = fsm.ACTIONS[name]
        fsm.ACTIONS[name] = (description, batched(action, next_state), next_state)
    dimse_module.DIMSEServiceProvider.send_msg = send_msg


def _wrap_encode(module_name: str, wrap: Callable[[Callable], Callable]) -> bool:
    """Replace pynetdicom's ``encode`` (``dsutils.encode``) as imported by ``module_name`` with
    ``wrap(encode)``, once; False when it is not there (pynetdicom changed) or already replaced."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    real = getattr(module, "encode", None)
    if real is None or getattr(real, "_pipacs", False):
        return False
    module.encode = _marked(wrap(real), real)
    return True


def install_fast_command_encoding() -> None:
    """Replace ``dimse_messages.encode`` (``dsutils.encode``): command sets are encoded by
    ``codec.encode_command_set`` (byte-identical, once instead of twice through pydicom's
    general writer); anything else by pydicom."""

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


def install_fast_encode() -> None:
    """Replace ``association.encode`` (``dsutils.encode``) and wrap ``Association.send_c_store``:
    a ``transport.dataset_for_sending`` goes out as stored when the syntaxes agree.

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
        if raw is None:   # not one of the archive's files (a path, a dataset of the caller's): as pynetdicom
            return real_send(self, dataset, *args, **kwargs)
        ts = dataset.file_meta.TransferSyntaxUID
        if not (ts.is_compressed or not ts.is_little_endian):
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

    assoc_module.Association.send_c_store = _marked(send_c_store, real_send)


# ------------------------------------------------------------------------------------------ association set-up

def install_remembered_uids(limit: int = 10000) -> None:
    """Replace ``utils.set_uid`` (in the six modules that import it): each distinct UID is
    converted and checked once.

    Every association request is a few hundred UIDs (a viewer proposes every storage class,
    each with its transfer syntaxes and roles), each made a pydicom UID and matched against
    the UID rules, for a warning at most: 10 ms of an association's set-up here, for the same
    strings every time. UIDs are immutable, so the answers are kept (up to ``limit``; an
    invalid value still raises, and is not kept). Not the UIDs named "... Instance UID" (a
    C-STORE's Affected SOP Instance UID): each is new, and keeping them filled the cache
    with 10 000 never-asked-again UIDs in the first 10 000 stores (5 MB of a soak's RSS).
    """
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
            if len(known) < limit and "Instance" not in name:
                known[key] = uid
        return uid

    _marked(set_uid, real)
    for name in ("pynetdicom.utils", "pynetdicom.ae", "pynetdicom.dimse_primitives", "pynetdicom.pdu_items",
                 "pynetdicom.pdu_primitives", "pynetdicom.presentation"):
        module = importlib.import_module(name)
        if getattr(module, "set_uid", None) is real:
            module.set_uid = set_uid


class _QuicklyCopiedContext(PresentationContext):
    """A supported presentation context that deep-copies in microseconds (a subclass given to
    pynetdicom as ``contexts``: no patch).

    pynetdicom deep-copies every supported context for each new association
    (``RequestHandler._create_association``); with every storage SOP class and every transfer
    syntax that is 5000 UIDs, each rebuilt and re-validated: 60 ms before a C-ECHO or C-FIND
    could be answered. UIDs are immutable strings, so sharing them is safe; only the lists
    are fresh.
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


# ------------------------------------------------------------------------------------------ C-STORE refusal

def install_store_refusal() -> None:
    """Wrap ``Association._serve_request``: a C-STORE naming a SOP class no storage service
    covers is refused alone (status 0x0122), not with its association.

    pynetdicom aborts the whole association when a request names a SOP class it has no service
    for. DCMTK's senders name the class they read in the file, and a damaged file (pydicom's
    rtdose_rle.dcm, whose SOP Class UID DCMTK reads as "31") then cost every file after it in
    the transfer: a teacher's CD stopped halfway. Orthanc answers that one request and goes on.
    The association's AE may carry ``store_refused(assoc, reason)`` to count and log it.
    """
    from pynetdicom import _config
    from pynetdicom import association as assoc_module
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import uid_to_service_class

    real = assoc_module.Association._serve_request
    if getattr(real, "_pipacs", False):
        return
    # pynetdicom's lookup scans its lists of UIDs: once per class (bounded: a peer inventing
    # classes cannot grow it for ever)
    @functools.lru_cache(maxsize=1024)
    def is_storage(uid: str) -> bool:
        return uid_to_service_class(uid) is StorageServiceClass

    def serve_request(self, msg, context_id: int) -> None:
        if (not isinstance(msg, C_STORE) or not msg.is_valid_request or _config.UNRESTRICTED_STORAGE_SERVICE
                or context_id not in self._accepted_cx or getattr(self, "_sent_release", False)):
            return real(self, msg, context_id)   # pynetdicom's own answer (an unknown context: abort)
        claimed = str(msg.AffectedSOPClassUID or "")
        if claimed in self.acceptor.accepted_common_extended or is_storage(claimed):
            return real(self, msg, context_id)
        rsp = C_STORE()
        rsp.MessageID = msg.MessageID
        rsp.MessageIDBeingRespondedTo = msg.MessageID
        for name in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
            try:
                setattr(rsp, name, getattr(msg, name))
            except (ValueError, TypeError):
                pass   # optional in a response; a value pynetdicom would not send is left out
        rsp.Status = SOP_CLASS_NOT_SUPPORTED
        reason = (f"SOP class {claimed!r} is not a storage SOP class (presentation context "
                  f"{context_id} is for {self._accepted_cx[context_id].abstract_syntax})")
        rsp.ErrorComment = reason[:64]
        self.dimse.send_msg(rsp, context_id)
        notify = getattr(self.ae, "store_refused", None)
        if notify is not None:
            notify(self, reason)

    assoc_module.Association._serve_request = _marked(serve_request, real)


# ------------------------------------------------------------------------------------------ C-MOVE / C-GET refusal

_REFUSAL = "_pipacs_refusal"


def refuse_next_response(assoc, status: int, comment: str) -> None:
    """Make the next C-MOVE or C-GET response of ``assoc`` a failure ``status`` with ``comment``
    as its Error Comment (see ``install_retrieve_refusal``); called by a handler in the
    association's thread just before it yields (None, None) (C-MOVE) or 0 (C-GET)."""
    setattr(assoc, _REFUSAL, (status, comment[:64]))


def install_retrieve_refusal() -> None:
    """Wrap ``QueryRetrieveServiceClass._move_scp`` and ``_get_scp``: a refusal the handler
    set with ``refuse_next_response`` replaces the status of the response pynetdicom sends next.

    pynetdicom's C-MOVE handler can only refuse before any sub-operation with 'move destination
    unknown' (0xA801, no Error Comment), and a C-GET handler that finds nothing to send gets a
    Success: an identifier without a unique key or with an unknown level then said 'destination
    unknown' or 'done'. Orthanc answers 0xC000 with zero sub-operations; pipacs says why as well.
    """
    from pynetdicom.dimse_primitives import C_GET, C_MOVE
    from pynetdicom.service_class import QueryRetrieveServiceClass

    for name in ("_move_scp", "_get_scp"):
        real = getattr(QueryRetrieveServiceClass, name)
        if getattr(real, "_pipacs", False):
            continue
        setattr(QueryRetrieveServiceClass, name, _marked(_with_refusal(real, (C_MOVE, C_GET)), real))


def _with_refusal(real: Callable, kinds: tuple) -> Callable:
    def serve(self, req, context) -> None:
        assoc, dimse = self.assoc, self.dimse
        setattr(assoc, _REFUSAL, None)
        own = vars(dimse).get("send_msg")
        send = dimse.send_msg

        def send_msg(primitive, context_id: int) -> None:
            refusal = getattr(assoc, _REFUSAL, None)
            if refusal is not None and isinstance(primitive, kinds):
                setattr(assoc, _REFUSAL, None)
                primitive.Status, primitive.ErrorComment = refusal
                primitive.NumberOfRemainingSuboperations = None
                for counted in ("Completed", "Failed", "Warning"):
                    setattr(primitive, f"NumberOf{counted}Suboperations", 0)
            send(primitive, context_id)

        dimse.send_msg = send_msg
        try:
            real(self, req, context)
        finally:
            if own is None:
                del dimse.send_msg
            else:
                dimse.send_msg = own
            setattr(assoc, _REFUSAL, None)

    return serve


# ------------------------------------------------------------------------------------------ connection admission

def install_connection_admission() -> None:
    """Give ``transport.AssociationServer`` a ``verify_request`` (socketserver's hook, which
    pynetdicom inherits unchanged: it admits every connection) that asks the server's AE.

    An AE carrying ``admit_connection(sock, client_address) -> bool`` decides, right after the
    TCP accept and before any thread is started for the connection, whether it may go on; a
    refused connection is closed by socketserver (``shutdown_request``), unless the hook took it
    (``socket.detach``) to answer it elsewhere: socketserver then closes nothing. pynetdicom itself counts associations only when their A-ASSOCIATE-RQ arrives
    (``ACSE._negotiate_as_acceptor`` against ``maximum_associations``) and counts the silent
    connections waiting for one: 32 of them, sent by a script, refused every other device for
    as long as it ran. Relied on: ``get_request`` accepts (no thread yet); ``process_request_thread``
    closes the socket when the handler fails; ``RequestHandler.handle`` raises EVT_CONN_OPEN
    before ``Association.run_reactor`` starts, whose wait for the A-ASSOCIATE-RQ (and the ARTIM
    timer started by ``fsm.AE_5``) lasts the association's ``acse_timeout``.
    """
    from pynetdicom import transport

    server_class = transport.AssociationServer
    real = server_class.verify_request
    if getattr(real, "_pipacs", False):
        return

    def verify_request(self, request, client_address) -> bool:
        admit = getattr(getattr(self, "ae", None), "admit_connection", None)
        if admit is None:
            return real(self, request, client_address)
        return bool(admit(request, client_address))

    server_class.verify_request = _marked(verify_request, real)


# ------------------------------------------------------------------------------------------ an identifier that never comes

# How long a C-FIND, C-GET or C-MOVE request whose command announces an identifier waits for
# its first data fragment before it is served as one with an empty identifier. An identifier
# is a few hundred bytes that every client sends right behind its command (pynetdicom, DCMTK:
# the next PDU, milliseconds later), so 2 s covers a few lost-segment retransmissions on a
# poor Wi-Fi (Linux's first retransmission comes after 200 ms, each next one after twice as
# long) while the peer, whose DIMSE timeout is 30 s or more, still gets its answer early.
# pynetdicom's own client sends no data fragment at all for an empty identifier
# (``send_c_find(Dataset())``): without this bound it waited for ever, and so did its user.
# Never applied to C-STORE, whose megabytes may lag well behind their command.
IDENTIFIER_WAIT = 2.0


def install_identifier_wait() -> None:
    """Wrap ``dimse.DIMSEServiceProvider.receive_primitive`` and ``.get_msg``: a C-FIND, C-GET
    or C-MOVE request whose command announces a data set (CommandDataSetType other than
    0x0101) and whose first data fragment has not come within ``IDENTIFIER_WAIT`` is served
    as a request with an empty identifier (qr.py then answers why), and data fragments of
    that message arriving later are dropped with a log line.

    Upstream assembles a message in ``DIMSEMessage.decode_msg`` (its class becomes the
    request's once the last command fragment is decoded; the last data fragment, bit 1 of
    the control header, completes it) from the DUL thread (``receive_primitive``), and the
    association's reactor polls ``get_msg(block=False)`` between naps (``_run_reactor``):
    the deadline is checked there, no thread of its own. An expired request is completed
    through upstream's ``receive_primitive`` with one empty last data fragment, as a peer
    sending an empty identifier does, so everything after is pynetdicom's own path. A lone
    late data fragment would otherwise start a message without a command (pynetdicom then
    aborts the association). A lock per provider keeps the two threads from mixing a
    message; uncontended, it costs well under a microsecond per PDU.
    """
    from pynetdicom import dimse as dimse_module
    from pynetdicom import dimse_messages
    from pynetdicom.pdu_primitives import P_DATA

    provider = dimse_module.DIMSEServiceProvider
    real_receive, real_get = provider.receive_primitive, provider.get_msg
    if getattr(real_receive, "_pipacs", False):
        return
    awaited = tuple(getattr(dimse_messages, n, None) for n in ("C_FIND_RQ", "C_GET_RQ", "C_MOVE_RQ"))
    if None in awaited:
        log.info("pynetdicom internals changed: a request's identifier is awaited without a bound")
        return

    def lock_of(dimse) -> threading.Lock:
        lock = dimse.__dict__.get("_pipacs_identifier_lock")
        if lock is None:   # setdefault is atomic: two threads get the same lock
            lock = dimse.__dict__.setdefault("_pipacs_identifier_lock", threading.Lock())
        return lock

    def receive_primitive(self, primitive) -> None:
        with lock_of(self):
            state = self.__dict__.get("_pipacs_awaiting")    # (message, deadline) or ("late", context id)
            pdvs = getattr(primitive, "presentation_data_value_list", None)
            if not isinstance(pdvs, list) or not pdvs:
                return real_receive(self, primitive)
            if state is not None and state[0] == "late":
                kept = _without_late_data(self, pdvs, state[1])
                if not kept:
                    return None
                if kept is not pdvs:
                    primitive = P_DATA()
                    primitive.presentation_data_value_list.extend(kept)
                    pdvs = kept
            elif state is not None and state[0] is self.message and len(pdvs[0][1]) and pdvs[0][1][0] & 1:
                # a new command while a request awaits its identifier: none is coming (upstream
                # would append the command to the awaiting one's)
                serve_without_identifier(self, state[0], "a new command came first")
                self.__dict__["_pipacs_awaiting"] = state = None
            has_data = any(len(data) and not data[0] & 1 for _, data in pdvs)
            real_receive(self, primitive)
            message = self.message
            if isinstance(message, awaited) and not has_data:
                if state is None or state[0] is not message:
                    self.__dict__["_pipacs_awaiting"] = (message, time.monotonic() + IDENTIFIER_WAIT)
            elif self.__dict__.get("_pipacs_awaiting") is state and state is not None and state[0] != "late":
                self.__dict__["_pipacs_awaiting"] = None     # its data came, or it is complete
        return None

    def get_msg(self, block: bool = False):
        state = self.__dict__.get("_pipacs_awaiting")
        if state is not None and state[0] != "late" and time.monotonic() >= state[1]:
            with lock_of(self):
                state = self.__dict__.get("_pipacs_awaiting")
                if state is not None and state[0] is self.message and time.monotonic() >= state[1]:
                    serve_without_identifier(self, state[0], f"it did not come within {IDENTIFIER_WAIT:g} s")
                    self.__dict__["_pipacs_awaiting"] = ("late", state[0].context_id)
        return real_get(self, block)

    def serve_without_identifier(self, message, why: str) -> None:
        """Complete the awaiting request as upstream does one whose identifier is empty."""
        log.warning("%s (message %s) announced an identifier, but %s: served as an empty identifier",
                    type(message).__name__.replace("_", "-"), getattr(message.command_set, "MessageID", "?"), why)
        empty_last = P_DATA()
        empty_last.presentation_data_value_list.append((message.context_id, b"\x02"))
        real_receive(self, empty_last)

    provider.receive_primitive = _marked(receive_primitive, real_receive)
    provider.get_msg = _marked(get_msg, real_get)


def _without_late_data(dimse, pdvs: list, context_id: int) -> list:
    """The PDVs of a primitive less the data fragments of a request already served without
    them (logged once); the wait for them ends at their last fragment or at a new command."""
    kept = []
    for i, (cx, data) in enumerate(pdvs):
        if len(data) and data[0] & 1:        # a command fragment: a new message, nothing more is late
            dimse.__dict__["_pipacs_awaiting"] = None
            return kept + pdvs[i:] if kept or i else pdvs
        if cx != context_id:
            kept.append((cx, data))
            continue
        if dimse.__dict__.get("_pipacs_late_logged") is not dimse.__dict__.get("_pipacs_awaiting"):
            dimse.__dict__["_pipacs_late_logged"] = dimse.__dict__.get("_pipacs_awaiting")
            log.warning("an identifier arrived after its request was served without one (more than %g s "
                        "after the command): dropped", IDENTIFIER_WAIT)
        if len(data) and data[0] & 2:        # its last fragment: later ones belong to no one
            dimse.__dict__["_pipacs_awaiting"] = None
            return kept + pdvs[i + 1:]
    return kept
