"""pipacs as a DICOM client (SCU): echo, store, find and move towards a modality.

Blocking functions (pynetdicom is synchronous): the web layer runs them in worker
threads, never on the event loop. Each opens one association and releases it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from . import pynetdicom_patches, statuses
from .pynetdicom_patches import speed_up
from .qr import storage_contexts
from .transport import dataset_for_sending

log = logging.getLogger("pipacs.dicom")


class ScuError(RuntimeError):
    """The remote node could not be reached or refused; the message says which and why."""


def _ae(our_aet: str, timeout: float) -> AE:
    ae = AE(ae_title=our_aet)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def _associate(ae: AE, modality: dict, contexts=None):
    pynetdicom_patches.install()
    handlers = [(evt.EVT_CONN_OPEN, lambda e: speed_up(e.assoc.dul.socket))]
    kwargs = {"ae_title": modality["AET"], "evt_handlers": handlers}
    if contexts is not None:
        kwargs["contexts"] = contexts
    assoc = ae.associate(modality["Host"], int(modality["Port"]), **kwargs)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise ScuError(f"{modality['AET']} at {modality['Host']}:{modality['Port']} rejected the association")
        raise ScuError(f"cannot connect to {modality['AET']} at {modality['Host']}:{modality['Port']}")
    return assoc


def echo(our_aet: str, modality: dict, timeout: float, check_find: bool = False) -> None:
    """C-ECHO; with ``check_find`` (Orthanc's CheckFind), a dummy study-level C-FIND on the same
    association too, so a node that echoes but does not answer queries fails the check."""
    ae = _ae(our_aet, timeout)
    ae.add_requested_context(Verification)
    if check_find:
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(ae, modality)
    try:
        st = assoc.send_c_echo()
        if not st or st.Status != statuses.SUCCESS:
            raise ScuError(f"{modality['AET']} answered C-ECHO with status "
                           f"{'none' if not st else hex(st.Status)}")
        if check_find:
            _dummy_find(assoc, modality["AET"])
    finally:
        if assoc.is_established:
            assoc.release()


def _dummy_find(assoc, aet: str) -> None:
    model = StudyRootQueryRetrieveInformationModelFind
    if not any(cx.abstract_syntax == model for cx in assoc.accepted_contexts):
        raise ScuError(f"{aet} does not support C-FIND (it refused the Study Root query context)")
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = "1.2.3.4.5.6.7.8.9.0.0"   # asks for nothing, matches nothing
    for status, _ in assoc.send_c_find(ident, model):
        if status is None or "Status" not in status:
            raise ScuError(f"{aet} did not answer the C-FIND in time")
        if status.Status not in (statuses.SUCCESS, statuses.PENDING, statuses.PENDING_WITH_WARNINGS):
            raise ScuError(f"{aet} answered C-FIND with status {hex(status.Status)}")


@dataclass
class StoreReport:
    sent: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)


def store(our_aet: str, modality: dict, files: list[tuple[str, str, str]], read: Callable[[str], bytes],
          timeout: float) -> StoreReport:
    """Send instances (file UUID, SOP class, syntax) over one association; uncompressed fallback by pynetdicom."""
    report = StoreReport()
    if not files:
        return report
    ae = _ae(our_aet, timeout)
    assoc = _associate(ae, modality, storage_contexts([(c, t) for _, c, t in files]))
    try:
        for file_uuid, _, ts in files:
            try:
                st = assoc.send_c_store(dataset_for_sending(read(file_uuid)))
                ok = st is not None and "Status" in st and (st.Status == statuses.SUCCESS or statuses.is_warning(st.Status))
            except ValueError as e:  # no accepted context: the peer takes neither the stored syntax nor ours
                ok = False
                log.warning("cannot send %s to %s: %s", file_uuid, modality["AET"], e)
            if ok:
                report.sent += 1
            else:
                report.failed += 1
                report.failures.append(file_uuid)
            if not assoc.is_established:
                raise ScuError(f"{modality['AET']} closed the association during the transfer")
    finally:
        if assoc.is_established:
            assoc.release()
    return report


def find(our_aet: str, modality: dict, level: str, query: dict[str, str], timeout: float) -> list[Dataset]:
    """C-FIND (Study Root, Patient Root for the PATIENT level); return keys = the query's tags."""
    ae = _ae(our_aet, timeout)
    model = PatientRootQueryRetrieveInformationModelFind if level == "PATIENT" \
        else StudyRootQueryRetrieveInformationModelFind
    ae.add_requested_context(model)
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for key, value in query.items():
        setattr(ident, key, value)
    assoc = _associate(ae, modality)
    answers = []
    try:
        for status, answer in assoc.send_c_find(ident, model):
            if status is None:
                raise ScuError(f"{modality['AET']} did not answer the C-FIND in time")
            if status.Status in (statuses.PENDING, statuses.PENDING_WITH_WARNINGS) and answer is not None:
                answers.append(answer)
            elif status.Status not in (statuses.SUCCESS, statuses.PENDING, statuses.PENDING_WITH_WARNINGS):
                comment = status.get("ErrorComment", "")
                raise ScuError(f"{modality['AET']} answered C-FIND with status {hex(status.Status)} {comment}")
    finally:
        if assoc.is_established:
            assoc.release()
    return answers


@dataclass
class MoveReport:
    completed: int = 0
    failed: int = 0
    warning: int = 0
    status: int = 0


def move(our_aet: str, modality: dict, level: str, identifiers: Iterable[dict[str, str]], target_aet: str,
         timeout: float) -> MoveReport:
    """C-MOVE at the remote node, for each identifier, to ``target_aet``."""
    ae = _ae(our_aet, timeout)
    model = PatientRootQueryRetrieveInformationModelMove if level == "PATIENT" \
        else StudyRootQueryRetrieveInformationModelMove
    ae.add_requested_context(model)
    assoc = _associate(ae, modality)
    report = MoveReport()
    try:
        for keys in identifiers:
            ident = Dataset()
            ident.QueryRetrieveLevel = level
            for k, v in keys.items():
                setattr(ident, k, v)
            last = None
            for status, _ in assoc.send_c_move(ident, target_aet, model):
                if status is None:
                    raise ScuError(f"{modality['AET']} did not answer the C-MOVE in time")
                last = status
            if last is not None:
                report.status = last.Status
                report.completed += int(last.get("NumberOfCompletedSuboperations", 0) or 0)
                report.failed += int(last.get("NumberOfFailedSuboperations", 0) or 0)
                report.warning += int(last.get("NumberOfWarningSuboperations", 0) or 0)
                if last.Status not in (statuses.SUCCESS, statuses.WARNING):
                    raise ScuError(f"{modality['AET']} answered C-MOVE with status {hex(last.Status)}")
    finally:
        if assoc.is_established:
            assoc.release()
    return report
