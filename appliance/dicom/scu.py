"""pipacs as a DICOM client (SCU): echo, store, find and move towards a modality.

Blocking functions (pynetdicom is synchronous): the web layer runs them in worker
threads, never on the event loop. Each opens one association and releases it.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
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


class _Watch:
    """What the peer said while an association was being negotiated (pynetdicom's public
    events: EVT_CONN_OPEN, EVT_ACSE_RECV), so a failure can name its reason."""

    def __init__(self) -> None:
        self.connected = False
        self.primitives: list = []

    def handlers(self) -> list:
        def opened(event) -> None:
            self.connected = True
            speed_up(event.assoc.dul.socket)
        return [(evt.EVT_CONN_OPEN, opened), (evt.EVT_ACSE_RECV, lambda e: self.primitives.append(e.primitive))]

    def rejection(self):
        return next((p for p in self.primitives if isinstance(p, A_ASSOCIATE) and p.result in (1, 2)), None)

    def abort(self):
        return next((p for p in self.primitives if isinstance(p, (A_ABORT, A_P_ABORT))), None)


def _lower(text: str) -> str:
    text = str(text)
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def connect_failure(host: str, port: int, timeout: float) -> str:
    """Why a TCP connection to host:port fails, in words: pynetdicom logs the socket error but does
    not hand it to its caller, so the connection is tried once more here (a few seconds at most)
    and the error of that try is named."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 5.0)):
            return "the connection opened but closed before the association was negotiated"
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return "timed out"
    except socket.gaierror:
        return "unknown host name"
    except OSError as e:
        if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "no route to host"
        return _lower(e.strerror or "network error")


def sop_class_name(uid: str) -> str:
    """A SOP class UID as its name where pydicom knows it (e.g. 'CT Image Storage')."""
    try:
        name = UID(uid).name
    except Exception:   # noqa: BLE001 - a malformed UID from a stored file is shown as given
        name = ""
    return name if name and name != uid else uid


_REJECT_SOURCES = {1: "service user", 2: "service provider (ACSE)", 3: "service provider (presentation)"}


def _failure(modality: dict, assoc, watch: _Watch, timeout: float) -> str:
    host, port, aet = modality["Host"], int(modality["Port"]), modality["AET"]
    where = f"{aet} at {host}:{port}"
    rj = watch.rejection()
    if assoc.is_rejected or rj is not None:
        if rj is None:
            return f"association rejected by {where}"
        result = {1: "permanent", 2: "transient"}.get(rj.result, str(rj.result))
        source = _REJECT_SOURCES.get(rj.result_source, f"source {rj.result_source}")
        return f"association rejected: {_lower(rj.reason_str)} ({result} rejection by the {source}; {where})"
    if not watch.connected:
        return f"cannot connect to {host}:{port} ({connect_failure(host, port, timeout)})"
    refused = [cx.abstract_syntax for cx in assoc.rejected_contexts]
    if refused and not assoc.accepted_contexts:
        names = ", ".join(dict.fromkeys(sop_class_name(u) for u in refused))
        return f"no presentation context accepted for {names} by {where}"
    if watch.abort() is not None:
        return f"association aborted by {where}"
    if not watch.primitives:
        return f"association aborted: {where} did not answer the association request within {timeout:g} s"
    return f"association aborted ({where})"


def _associate(ae: AE, modality: dict, contexts=None):
    pynetdicom_patches.install()
    watch = _Watch()
    kwargs = {"ae_title": modality["AET"], "evt_handlers": watch.handlers()}
    if contexts is not None:
        kwargs["contexts"] = contexts
    assoc = ae.associate(modality["Host"], int(modality["Port"]), **kwargs)
    if not assoc.is_established:
        raise ScuError(_failure(modality, assoc, watch, ae.connection_timeout or 5.0))
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
    refused_classes: list[str] = field(default_factory=list)   # SOP classes the peer accepted no context for


def store(our_aet: str, modality: dict, files: list[tuple[str, str, str]], read: Callable[[str], bytes],
          timeout: float) -> StoreReport:
    """Send instances (file UUID, SOP class, syntax) over one association; uncompressed fallback by pynetdicom.
    When no instance could go because the peer accepted no presentation context for their SOP
    classes, that is the error (naming the classes), not a report of failures."""
    report = StoreReport()
    if not files:
        return report
    ae = _ae(our_aet, timeout)
    assoc = _associate(ae, modality, storage_contexts([(c, t) for _, c, t in files]))
    where = f"{modality['AET']} at {modality['Host']}:{modality['Port']}"
    try:
        for file_uuid, sop_class, ts in files:
            try:
                st = assoc.send_c_store(dataset_for_sending(read(file_uuid)))
                if st is None or "Status" not in st:
                    # pynetdicom answers no status when the peer aborted, did not answer in time or answered
                    # nonsense; it aborts the association in each case (is_established turns False a moment later)
                    raise ScuError(f"association aborted by {where} during the transfer "
                                   f"({report.sent} of {len(files)} instances sent)")
                ok = st.Status == statuses.SUCCESS or statuses.is_warning(st.Status)
            except ValueError as e:  # no accepted context: the peer takes neither the stored syntax nor ours
                ok = False
                if sop_class not in report.refused_classes:
                    report.refused_classes.append(sop_class)
                log.warning("cannot send %s to %s: %s", file_uuid, modality["AET"], e)
            if ok:
                report.sent += 1
            else:
                report.failed += 1
                report.failures.append(file_uuid)
            if not assoc.is_established:
                raise ScuError(f"association aborted by {where} during the transfer "
                               f"({report.sent} of {len(files)} instances sent)")
    finally:
        if assoc.is_established:
            assoc.release()
    if report.refused_classes and report.sent == 0:
        names = ", ".join(sop_class_name(u) for u in report.refused_classes)
        raise ScuError(f"no presentation context accepted for {names} by {where}")
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
