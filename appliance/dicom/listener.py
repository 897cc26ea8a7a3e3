"""The DICOM listener (pynetdicom SCP): C-ECHO and C-STORE, handing stores to the archive.

pynetdicom runs each association in its own thread; handlers hand work to the
event loop with ``asyncio.run_coroutine_threadsafe`` and wait for the answer, so the
archive (and its SQLite connections) is only ever used from the loop.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from ..archive import (
    Archive,
    InvalidDicom,
    Origin,
    StorageFull,
    StoreRefused,
    part10_file,
)
from ..audit import Audit
from ..refusals import RefusalReporter
from . import policy, pynetdicom_patches, statuses
from .pynetdicom_patches import quickly_copied, speed_up
from .qr import QueryRetrieveHandlers

log = logging.getLogger("pipacs.dicom")


def _received_file(event) -> bytes:
    """The C-STORE's dataset as a Part-10 file, bytes as received (pynetdicom's
    ``encoded_dataset`` builds the same file through pydicom datasets, ten times slower)."""
    req = event.request
    with req.DataSet.getbuffer() as dataset:
        return part10_file(req.AffectedSOPClassUID, req.AffectedSOPInstanceUID, event.context.transfer_syntax,
                           dataset)


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


@dataclass
class _AssocStats:
    calling: str
    address: str
    called: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    echoes: int = 0


# pynetdicom accepts, of what a peer proposes, the first syntax in the acceptor's own list.
# Explicit VR Little Endian first: the data keeps its VRs, and what is stored goes back out to
# the viewers (which propose it first) byte for byte, without conversion. Then the compressed
# syntaxes, as received, and Implicit VR Little Endian for the peers that offer nothing else.
PREFERRED_SYNTAXES = [ExplicitVRLittleEndian] + \
    [ts for ts in ALL_TRANSFER_SYNTAXES if UID(ts).is_compressed] + \
    [ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian and not UID(ts).is_compressed]


# Connections the kernel queues before pynetdicom's server thread accepts them. socketserver
# listens with 5: past that the kernel drops a connecting device's SYN, and it retries after
# 1, 3, 7 s: a script connecting in a loop kept every other device waiting seconds to connect.
DICOM_BACKLOG = 256

# A-ASSOCIATE-RJ: rejected-transient (2), by the service provider's presentation function (3),
# local-limit-exceeded (2), as pynetdicom itself rejects past maximum_associations.
_REJECT_LOCAL_LIMIT = (2, 3, 2)


def _reject_pdu() -> bytes:
    from pynetdicom.pdu import A_ASSOCIATE_RJ

    pdu = A_ASSOCIATE_RJ()
    pdu.result, pdu.source, pdu.reason_diagnostic = _REJECT_LOCAL_LIMIT
    return pdu.encode()


REFUSAL_LINGER = 2.0       # seconds a refused connection has to send its A-ASSOCIATE-RQ (then closed)
REFUSALS_LINGERING = 256   # most refused connections waiting at once; beyond, answered and closed at once
# seconds between a refused connection's request and its rejection: pynetdicom's requestor reads
# a rejection that comes before it has looked at its own connection as a failure to connect
# (acse.negotiate_association checks the socket after sending), one time in ten on loopback
REJECT_DELAY = 0.05


class RefusedConnections:
    """Refused connections, answered with the A-ASSOCIATE-RJ in one thread of their own.

    The rejection goes REJECT_DELAY after the peer's A-ASSOCIATE-RQ comes (the exchange a
    client expects), then the connection closes when the peer closes it, or after
    REFUSAL_LINGER seconds. An RJ written at the accept, before the RQ, and a close at once:
    pynetdicom clients read that as an abort one time in three. Past REFUSALS_LINGERING, a
    flood is answered so anyway.
    """

    def __init__(self, reject: bytes, most: int = REFUSALS_LINGERING, linger: float = REFUSAL_LINGER):
        self.reject = reject
        self.most = most
        self.linger = linger
        self._lock = threading.Lock()
        self._incoming: list[socket.socket] = []
        self._waiting = 0
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            keep = not self._closed and self._waiting < self.most
            if keep:
                self._waiting += 1
                self._incoming.append(sock)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="dicom-refusals", daemon=True)
                    self._thread.start()
        if not keep:
            self._answer_and_close(sock)
            return
        try:
            self._wake_writer.send(b"\0")
        except OSError:
            pass

    def _answer_and_close(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            sock.send(self.reject)
            while sock.recv(65536):   # what is already here: a close with unread data is a reset
                pass
        except OSError:
            pass
        sock.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_reader, selectors.EVENT_READ)
        # socket -> [when it is closed, when it is answered (None: no request yet), answered]
        waiting: dict[socket.socket, list] = {}

        def done(sock: socket.socket) -> None:
            sel.unregister(sock)
            del waiting[sock]
            sock.close()
            with self._lock:
                self._waiting -= 1

        def answer(sock: socket.socket, entry: list) -> None:
            entry[2] = True
            try:
                sock.send(self.reject)
            except OSError:
                done(sock)

        while True:
            with self._lock:
                incoming, self._incoming = self._incoming, []
                closed = self._closed
            for sock in incoming:
                sock.setblocking(False)
                waiting[sock] = [time.monotonic() + self.linger, None, False]
                sel.register(sock, selectors.EVENT_READ)
            if closed:
                for sock in list(waiting):
                    done(sock)
                sel.close()
                return
            now = time.monotonic()
            for sock, entry in list(waiting.items()):
                if entry[0] <= now:
                    if not entry[2]:   # no request came: the answer anyway, then the close
                        try:
                            sock.send(self.reject)
                        except OSError:
                            pass
                    done(sock)
                elif not entry[2] and entry[1] is not None and entry[1] <= now:
                    answer(sock, entry)
            times = [e[0] for e in waiting.values()] + \
                [e[1] for e in waiting.values() if e[1] is not None and not e[2]]
            timeout = max(0.0, min(times, default=now + 60) - now)
            for key, _ in sel.select(timeout):
                sock = key.fileobj
                if sock is self._wake_reader:
                    try:
                        while self._wake_reader.recv(4096):
                            pass
                    except OSError:
                        pass
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    done(sock)
                elif waiting[sock][1] is None:
                    waiting[sock][1] = time.monotonic() + REJECT_DELAY

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        try:
            self._wake_writer.send(b"\0")
        except OSError:
            pass
        if thread is not None:
            thread.join(5)
        self._wake_reader.close()
        self._wake_writer.close()


@dataclass
class _Slot:
    sock: socket.socket
    address: str
    assoc: Any = None   # the Association (a thread), once pynetdicom made it


class AssociationSlots:
    """Who holds the listener's association slots, from the TCP accept on.

    A slot is held by a connection from its accept until its association's thread has ended
    (or, before pynetdicom has started that thread, while its socket is open): a device that
    connects and says nothing holds it for DicomAssociationRequestTimeout at most, then
    pynetdicom closes the connection and the slot is free. Counted per address and in all,
    so that one device cannot take the slots of the class. Called from pynetdicom's server
    thread (``admit``) and association threads (``bind``).
    """

    def __init__(self, total: int, per_address: int):
        self.total = total
        self.per_address = per_address
        self._slots: dict[int, _Slot] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _held(slot: _Slot) -> bool:
        assoc = slot.assoc
        if assoc is not None and assoc.ident is not None:   # its thread has started
            return assoc.is_alive()
        return slot.sock.fileno() != -1

    def admit(self, sock: socket.socket, address: str) -> str | None:
        """None if the connection may go on (it then holds a slot); else why not."""
        with self._lock:
            for key in [k for k, slot in self._slots.items() if not self._held(slot)]:
                del self._slots[key]
            if len(self._slots) >= self.total:
                return f"all {self.total} association slots are taken (DicomMaximumAssociations)"
            mine = sum(1 for slot in self._slots.values() if slot.address == address)
            if mine >= self.per_address:
                return (f"{mine} connections from this address already "
                        f"(DicomMaximumAssociationsPerAddress {self.per_address})")
            self._slots[id(sock)] = _Slot(sock, address)
            return None

    def bind(self, sock: socket.socket | None, assoc: Any) -> None:
        """The association pynetdicom made for an admitted connection (its EVT_CONN_OPEN)."""
        with self._lock:
            slot = self._slots.get(id(sock)) if sock is not None else None
            if slot is not None and slot.sock is sock:
                slot.assoc = assoc


QUERY_RETRIEVE_MODELS = (PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
                         PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelFind,
                         StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet)


def add_scp_contexts(ae: AE) -> AE:
    """The presentation contexts the listener accepts: verification, query/retrieve, every storage
    SOP class pynetdicom knows, each with PREFERRED_SYNTAXES. One place, read by the listener and by
    what pipacs states of itself (/tools/dicom-conformance, /tools/accepted-transfer-syntaxes)."""
    ae.add_supported_context(Verification, PREFERRED_SYNTAXES)
    for model in QUERY_RETRIEVE_MODELS:
        ae.add_supported_context(model, PREFERRED_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        # scu_role: a C-GET requestor asks us to act as storage SCU on its association
        ae.add_supported_context(cx.abstract_syntax, PREFERRED_SYNTAXES, scu_role=True, scp_role=True)
    return ae


class DicomListener:
    def __init__(self, archive: Archive, settings: Any, loop: asyncio.AbstractEventLoop,
                 store_timeout: float = 120.0, upload_window: policy.UploadWindow | None = None,
                 audit: Audit | None = None):
        self.archive = archive
        self.settings = settings
        self.upload_window = upload_window or policy.UploadWindow()
        self.audit = audit or Audit()
        self.loop = loop
        self.store_timeout = store_timeout
        self.server = None
        self.qr: QueryRetrieveHandlers | None = None
        self.port: int | None = None
        self._stats: dict[int, _AssocStats] = {}
        self._lock = threading.Lock()
        self.slots = AssociationSlots(settings["DicomMaximumAssociations"],
                                      settings["DicomMaximumAssociationsPerAddress"])
        self.refusals = RefusalReporter(self.audit, "DICOM connection")
        self.refused = RefusedConnections(_reject_pdu())

    # ---------------------------------------------------------------- setup

    def make_ae(self) -> AE:
        s = self.settings
        ae = add_scp_contexts(AE(ae_title=s["DicomAet"]))
        ae.require_called_aet = s["DicomCheckCalledAet"]
        ae.network_timeout = s["DicomScpTimeout"]
        # For the associations we request (C-MOVE's); those we accept wait for the
        # A-ASSOCIATE-RQ DicomAssociationRequestTimeout seconds only (see _on_conn_open).
        ae.acse_timeout = 30
        ae.dimse_timeout = max(30, s["DicomScpTimeout"])
        # pynetdicom's own check, when an A-ASSOCIATE-RQ arrives; AssociationSlots counts
        # from the TCP accept, per address too (see admit_connection)
        ae.maximum_associations = s["DicomMaximumAssociations"]
        ae.connection_timeout = s["DicomScuTimeout"]  # C-MOVE sub-associations to unreachable devices
        # Receive large PDUs: fewer PDUs per instance, fewer wake-ups.
        ae.maximum_pdu_size = 1 << 20
        return ae

    def start(self) -> int:
        pynetdicom_patches.install()
        ae = self.make_ae()
        ae.store_refused = self._on_store_refused  # type: ignore[attr-defined]
        ae.admit_connection = self.admit_connection  # type: ignore[attr-defined]
        self.qr = QueryRetrieveHandlers(self.archive, self.settings, self.loop, self.store_timeout, self._allowed,
                                        sub_association_handlers=[(evt.EVT_CONN_OPEN, self._on_conn_open)])
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_end, ["released"]),
            (evt.EVT_ABORTED, self._on_end, ["aborted"]),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, lambda e: self.qr.on_find(e)),
            (evt.EVT_C_MOVE, lambda e: self.qr.on_move(e)),
            (evt.EVT_C_GET, lambda e: self.qr.on_get(e)),
        ]
        address = (self.settings["BindAddress"], self.settings["DicomPort"])
        self.server = ae.start_server(address, block=False, evt_handlers=handlers,
                                      contexts=quickly_copied(ae.supported_contexts))
        self.server.socket.listen(DICOM_BACKLOG)   # again, on the listening socket: a longer queue
        self.port = self.server.server_address[1]
        return self.port

    async def stop(self, grace: float = 10.0) -> None:
        """Stop listening; let running associations finish for ``grace`` seconds, then abort them."""
        if self.server is None:
            return
        server, self.server = self.server, None
        await asyncio.to_thread(server.shutdown)
        deadline = time.monotonic() + grace
        while server.active_associations and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for assoc in server.active_associations:
            log.warning("aborting association from %s at shutdown", assoc.requestor.ae_title)
            await asyncio.to_thread(assoc.abort)
        if self.qr is not None:
            self.qr.close()
        await asyncio.to_thread(self.refused.close)

    # ---------------------------------------------------------------- events (association threads)

    def admit_connection(self, sock: socket.socket, client_address: Any) -> bool:
        """Whether a connection just accepted may go on (pynetdicom's server thread, before any
        thread is started for it; see pynetdicom_patches.install_connection_admission).

        Refused: past DicomMaximumAssociations in all or DicomMaximumAssociationsPerAddress
        from its address. The refusal is an A-ASSOCIATE-RJ (transient, local-limit-exceeded)
        rather than a bare close: DCMTK reports "Association Rejected: Rejected Transient ...
        Local Limit Exceeded", pynetdicom ``is_rejected``, and either may retry later, where a
        close looks like a network fault. The connection is taken from socketserver (which
        closes what it refused) and answered by ``RefusedConnections``, not in this thread:
        the next device's accept does not wait for it.
        """
        address = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        why = self.slots.admit(sock, address)
        if why is None:
            return True
        self.refusals.refused(address, why)
        try:
            # detached: socketserver's close of the refused request then closes nothing
            self.refused.add(socket.socket(fileno=sock.detach()))
        except OSError:
            sock.close()
        return False

    def _on_conn_open(self, event) -> None:
        """Every association, accepted or opened for a C-MOVE: tuned, its threads waiting for work.

        An accepted one is bound to its slot, and waits DicomAssociationRequestTimeout seconds
        for the A-ASSOCIATE-RQ (pynetdicom's wait in the association thread and the ARTIM timer
        both follow the association's acse_timeout); then pynetdicom closes the connection.
        """
        assoc = event.assoc
        if assoc.is_acceptor:
            assoc.acse_timeout = self.settings["DicomAssociationRequestTimeout"]
            self.slots.bind(getattr(assoc.dul.socket, "socket", None), assoc)
        speed_up(assoc.dul.socket)

    def _allowed(self, event, service: str) -> policy.Decision:
        r = event.assoc.requestor
        d = policy.decide(self.settings, self.archive.modalities(), service, r.ae_title, r.address,
                          self.upload_window)
        if not d.allowed:
            log.warning("C-%s from %s (%s) refused: %s", service.upper(), r.ae_title, r.address, d.reason)
            self.audit.record(r.address, r.ae_title, f"C-{service.upper()}", "refused", d.reason)
        return d

    def _on_established(self, event) -> None:
        a = event.assoc
        with self._lock:
            self._stats[id(a)] = _AssocStats(a.requestor.ae_title, f"{a.requestor.address}:{a.requestor.port}",
                                             a.acceptor.ae_title)

    def _on_rejected(self, event) -> None:
        a = event.assoc
        log.warning("association from %s (%s) rejected", a.requestor.ae_title, a.requestor.address)

    def _on_end(self, event, how: str) -> None:
        with self._lock:
            st = self._stats.pop(id(event.assoc), None)
        if st is None:
            return
        took = time.monotonic() - st.started
        parts = []
        if st.echoes:
            parts.append(f"{st.echoes} echo")
        if st.stored or st.duplicates or st.failed:
            parts.append(f"{st.stored} stored, {st.duplicates} already stored, {st.failed} failed")
        log.info("association %s@%s -> %s %s after %.1f s%s", st.calling, st.address, st.called, how, took,
                 (": " + "; ".join(parts)) if parts else "")

    def _stats_of(self, event) -> _AssocStats | None:
        return self._stats.get(id(event.assoc))

    def _on_echo(self, event) -> int:
        if not self._allowed(event, "Echo").allowed:
            return statuses.NOT_AUTHORIZED
        st = self._stats_of(event)
        if st:
            st.echoes += 1
        return statuses.SUCCESS

    def _on_store(self, event) -> Dataset | int:
        a = event.assoc
        st = self._stats_of(event)
        origin = Origin(kind="DicomProtocol", remote_ip=a.requestor.address, remote_aet=a.requestor.ae_title,
                        called_aet=a.acceptor.ae_title)
        decision = self._allowed(event, "Store")
        if not decision.allowed:
            self._count(st, "failed")
            return _status(statuses.NOT_AUTHORIZED, decision.reason)
        try:
            # Written and checked here, in the association's thread; only the index
            # transaction goes to the event loop.
            result = self.archive.store_received(_received_file(event), origin, self.store_timeout)
        except InvalidDicom as e:
            self._count(st, "failed")
            log.warning("C-STORE from %s refused: %s", a.requestor.ae_title, e)
            return _status(statuses.CANNOT_UNDERSTAND, str(e))
        except (StorageFull, StoreRefused) as e:
            self._count(st, "failed")
            msg = e.strerror if isinstance(e, StorageFull) and e.strerror else str(e)
            log.warning("C-STORE from %s refused: %s", a.requestor.ae_title, msg)
            return _status(statuses.OUT_OF_RESOURCES, msg)
        except Exception as e:
            self._count(st, "failed")
            log.exception("C-STORE from %s failed", a.requestor.ae_title)
            return _status(statuses.OUT_OF_RESOURCES, f"{type(e).__name__}: {e}")
        self._count(st, "stored" if result.status == "Success" else "duplicates")
        return statuses.SUCCESS

    def _on_store_refused(self, assoc, reason: str) -> None:
        with self._lock:
            st = self._stats.get(id(assoc))
        self._count(st, "failed")
        log.warning("C-STORE from %s refused: %s", assoc.requestor.ae_title, reason)

    def _count(self, st: _AssocStats | None, what: str) -> None:
        if st is not None:
            with self._lock:
                setattr(st, what, getattr(st, what) + 1)
