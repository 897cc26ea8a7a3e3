"""The DICOM listener (pynetdicom SCP): C-ECHO and C-STORE, handing stores to the archive.

pynetdicom runs each association in its own thread; handlers hand work to the
event loop with ``asyncio.run_coroutine_threadsafe`` and wait for the answer, so the
archive (and its SQLite connections) is only ever used from the loop.
"""

from __future__ import annotations

import asyncio
import logging
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

    # ---------------------------------------------------------------- setup

    def make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s["DicomAet"])
        ae.add_supported_context(Verification, PREFERRED_SYNTAXES)
        for model in (PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
                      PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelFind,
                      StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet):
            ae.add_supported_context(model, PREFERRED_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            # scu_role: a C-GET requestor asks us to act as storage SCU on its association
            ae.add_supported_context(cx.abstract_syntax, PREFERRED_SYNTAXES, scu_role=True, scp_role=True)
        ae.require_called_aet = s["DicomCheckCalledAet"]
        ae.network_timeout = s["DicomScpTimeout"]
        ae.acse_timeout = 30
        ae.dimse_timeout = max(30, s["DicomScpTimeout"])
        ae.maximum_associations = 32
        ae.connection_timeout = s["DicomScuTimeout"]  # C-MOVE sub-associations to unreachable devices
        # Receive large PDUs: fewer PDUs per instance, fewer wake-ups.
        ae.maximum_pdu_size = 1 << 20
        return ae

    def start(self) -> int:
        pynetdicom_patches.install()
        ae = self.make_ae()
        ae.store_refused = self._on_store_refused  # type: ignore[attr-defined]
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

    # ---------------------------------------------------------------- events (association threads)

    def _on_conn_open(self, event) -> None:
        """Every association, accepted or opened for a C-MOVE: tuned, its threads waiting for work."""
        speed_up(event.assoc.dul.socket)

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
