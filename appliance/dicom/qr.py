"""Query/retrieve as an SCP: C-FIND, C-MOVE and C-GET handlers, and the plain functions behind them.

Matching is done by the archive's query engine (the same SQL as POST /tools/find).
Handlers run in pynetdicom's association threads and hand every archive call to the
event loop with ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ..archive import (
    IDENTIFIER_OF_LEVEL,
    FindError,
    Level,
    Query,
    answer_dataset,
    answers,
    build_query,
    element_text,
    matchable_only,
    tag_key,
)
from ..codec import one_step_codec
from ..teaching.holdback_tags import (
    PATIENT_ID,
    RETRIEVE_REFUSED_DIMSE,
    STUDY_INSTANCE_UID,
    held_answer,
    matches_on_held_back,
    redact_values,
    retrieve_plan,
)
from . import policy, pynetdicom_patches, statuses
from .transport import dataset_for_sending

log = logging.getLogger("pipacs.dicom")

QR_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054

PATIENT_ROOT = {PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
                PatientRootQueryRetrieveInformationModelGet}
STUDY_ROOT = {StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove,
              StudyRootQueryRetrieveInformationModelGet}
# QueryRetrieveLevel as Orthanc reads it: any case, spaces around, INSTANCE as well as IMAGE
_LEVELS = {"PATIENT": Level.PATIENT, "STUDY": Level.STUDY, "SERIES": Level.SERIES, "IMAGE": Level.INSTANCE,
           "INSTANCE": Level.INSTANCE}

# The character set of an answer to an identifier that names none: Orthanc's default encoding
# (Latin-1, which ASCII is part of); text beyond it goes out in UTF-8.
DEFAULT_ANSWER_CHARSET = "ISO_IR 100"


class QueryRequestError(ValueError):
    """An identifier we cannot answer; the message goes into the Error Comment, ``status`` is
    the failure sent (Orthanc's 0xC000 where it has one, else 0xA900)."""

    def __init__(self, message: str, status: int = statuses.IDENTIFIER_MISMATCH):
        super().__init__(message)
        self.status = status


@dataclass
class FindRequest:
    level: Level
    level_name: str
    items: dict[str, str]
    wanted: list[tuple[int, str]] = field(default_factory=list)   # (tag, VR) of every return key
    charset: str = ""


def parse_identifier(identifier: Dataset, model_uid: str) -> FindRequest:
    """A C-FIND/C-MOVE/C-GET identifier as a level, matching values and return keys."""
    if identifier is None or QR_LEVEL not in identifier:
        raise QueryRequestError("the identifier has no QueryRetrieveLevel")
    level_name = str(identifier[QR_LEVEL].value or "").strip().upper()
    if level_name not in _LEVELS:
        raise QueryRequestError(f"unknown QueryRetrieveLevel {level_name!r}", statuses.UNABLE_TO_PROCESS)
    if model_uid in STUDY_ROOT and level_name == "PATIENT":
        raise QueryRequestError("the Study Root model has no PATIENT level")
    charset = identifier.get("SpecificCharacterSet", "")
    if isinstance(charset, (list, pydicom.multival.MultiValue)):
        charset = charset[0] if charset else ""
    req = FindRequest(_LEVELS[level_name], level_name, {}, [], str(charset or "").strip())
    for elem in identifier:
        tag = int(elem.tag)
        if tag in (QR_LEVEL, SPECIFIC_CHARACTER_SET) or elem.tag.group in (0x0000, 0x0002):
            continue
        vr = elem.VR if elem.VR not in ("UN", None) else _dict_vr(tag)
        req.wanted.append((tag, vr))
        if vr == "SQ":
            continue  # sequence keys are return keys only
        if elem.VR == "UN" and vr != "UN" and isinstance(elem.value, (bytes, bytearray)):
            # a value too long for its VR in explicit VR (a long UID list) arrives as UN
            elem = _as_dictionary_vr(elem, vr, identifier)
        try:
            text = element_text(elem)
        except Exception:  # noqa: BLE001 - any unreadable value is the same refusal
            raise QueryRequestError(f"the value of {tag_key(tag)} cannot be read") from None
        if text:
            req.items[tag_key(tag)] = text
    return req


def _as_dictionary_vr(elem, vr: str, identifier: Dataset):
    from pydicom.dataelem import RawDataElement, convert_raw_data_element

    raw = RawDataElement(elem.tag, vr, len(elem.value), bytes(elem.value), 0, True, True)
    try:
        return convert_raw_data_element(raw, encoding=getattr(identifier, "_character_set", None))
    except Exception:  # noqa: BLE001 - pydicom raises many types on a malformed value
        raise QueryRequestError(f"the value of {tag_key(int(elem.tag))} cannot be read") from None


def _dict_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def to_query(req: FindRequest, pn_case_sensitive: bool, only_unique_keys: bool = False) -> Query:
    items = req.items
    if only_unique_keys:  # C-MOVE / C-GET: the unique keys of each level select what moves
        uniques = {tag_key(t) for t in IDENTIFIER_OF_LEVEL.values()}
        items = {k: v for k, v in items.items() if k in uniques}
        if not items:
            raise QueryRequestError("no unique key (PatientID, Study/Series/SOPInstanceUID)",
                                    statuses.UNABLE_TO_PROCESS)
    try:
        return build_query(req.level, items, case_sensitive=True, pn_case_sensitive=pn_case_sensitive)
    except FindError as e:
        raise QueryRequestError(str(e)) from None


def answer_charset(req: FindRequest, answers: list[dict[int, str]]) -> str:
    """The character set every answer says it is in (Orthanc names one in each): the request's if
    every answer fits in it, Latin-1 (Orthanc's default) when the request names none, else UTF-8."""
    charset = req.charset or DEFAULT_ANSWER_CHARSET
    codec = one_step_codec(charset)
    if codec is None:
        return "ISO_IR 192"
    for ans in answers:
        for v in ans.values():
            try:
                v.encode(codec)
            except UnicodeEncodeError:
                return "ISO_IR 192"
    return charset


# ---------------------------------------------------------------------------------------- handlers


class QueryRetrieveHandlers:
    """The EVT_C_FIND, EVT_C_MOVE and EVT_C_GET handlers of the listener."""

    def __init__(self, archive, settings, loop: asyncio.AbstractEventLoop, timeout: float = 120.0,
                 decide: Callable[[Any, str], policy.Decision] | None = None,
                 sub_association_handlers: list | None = None):
        self.archive = archive
        self.settings = settings
        self.loop = loop
        self.timeout = timeout
        self.sub_association_handlers = sub_association_handlers or []
        self._decide_with = decide
        # reads the next file of a C-MOVE or C-GET while the current one travels
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="retrieve-reader")

    def close(self) -> None:
        """At stop: no new reads; reads under way are not waited for (a stuck card must not hold
        the process), queued ones are dropped."""
        self._readers.shutdown(wait=False, cancel_futures=True)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout)

    def _decide(self, event, service: str) -> policy.Decision:
        """The listener's decision (logged and audited there); the policy alone without a listener."""
        if self._decide_with is not None:
            return self._decide_with(event, service)
        r = event.assoc.requestor
        return policy.decide(self.settings, self.archive.modalities(), service, r.ae_title, r.address)

    def on_find(self, event) -> Iterator:
        decision = self._decide(event, "Find")
        if not decision.allowed:
            yield _failure(statuses.NOT_AUTHORIZED, decision.reason)
            return
        try:
            req = parse_identifier(event.identifier, event.request.AffectedSOPClassUID)
            q, ignored = matchable_only(to_query(req, self.settings["CaseSensitivePN"]))
            q.students = self._students(event)
            if ignored:
                log.info("C-FIND from %s: %s not indexed, so not matched on (returned as asked)",
                         event.assoc.requestor.ae_title, ", ".join(tag_key(t) for t in ignored))
            limit = self.settings["LimitFindInstances" if req.level == Level.INSTANCE else "LimitFindResults"]
            held = self.archive.held_back() if q.students else None
            wanted = [t for t, _ in req.wanted]
            if held:   # which answers are of unknown cases: their patient's ID and study's UID are read too
                wanted += [PATIENT_ID, STUDY_INSTANCE_UID]
            found = self._call(answers(self.archive, q, wanted, limit))
            if held:
                found = held_back_answers(found, req, held)
        except (QueryRequestError, FindError) as e:
            log.warning("C-FIND from %s: %s", event.assoc.requestor.ae_title, e)
            yield _failure(getattr(e, "status", statuses.IDENTIFIER_MISMATCH), str(e))
            return
        except Exception:
            log.exception("C-FIND from %s failed", event.assoc.requestor.ae_title)
            # a fault of ours: the details go to the log, not into the peer's Error Comment
            yield _failure(statuses.UNABLE_TO_PROCESS, "internal error; see the appliance's log")
            return
        charset = answer_charset(req, found)
        # Retrieve AE Title in every answer, as Orthanc's: where to send the C-MOVE or C-GET
        wanted = req.wanted if any(t == RETRIEVE_AE_TITLE for t, _ in req.wanted) else [
            *req.wanted, (RETRIEVE_AE_TITLE, "AE")]
        log.info("C-FIND %s from %s: %d answers", req.level_name, event.assoc.requestor.ae_title, len(found))
        our_aet = self.settings["DicomAet"]
        ts = event.context.transfer_syntax
        encoding = (ts.is_implicit_VR, ts.is_little_endian) if not ts.is_deflated else None
        for n, values in enumerate(found):
            if n and n % CANCEL_CHECK_EVERY == 0:
                _let_peer_speak(event)
            if event.is_cancelled:
                log.info("C-FIND from %s cancelled after %d answers", event.assoc.requestor.ae_title, n)
                yield statuses.CANCEL, None
                return
            yield statuses.PENDING, answer_dataset(req.level_name, wanted, values, charset, our_aet, encoding)

    def _students(self, event) -> bool:
        r = event.assoc.requestor
        return policy.student_view(self.settings, self.archive.modalities(), r.ae_title, r.address)

    def _instances(self, event) -> list[tuple[str, str, str]]:
        """What a C-MOVE or C-GET sends; a student's without the instances of unknown cases that may not be
        retrieved now (teaching sessions), and a refusal saying so when that leaves nothing."""
        req = parse_identifier(event.identifier, event.request.AffectedSOPClassUID)
        q = to_query(req, self.settings["CaseSensitivePN"], only_unique_keys=True)
        q.students = self._students(event)
        files, left_out = self._call(retrieve_plan(self.archive, q))
        if left_out:
            log.info("retrieve from %s: %d instances of unknown cases in a teaching session left out",
                     event.assoc.requestor.ae_title, left_out)
            if not files:
                raise QueryRequestError(RETRIEVE_REFUSED_DIMSE, statuses.NOT_AUTHORIZED)
        return files

    def _dataset(self, file_uuid: str) -> Dataset:
        return dataset_for_sending(self.archive.read_stored(file_uuid))

    def on_move(self, event) -> Iterator:
        r = event.assoc.requestor
        decision = self._decide(event, "Move")
        if not decision.allowed:
            # 'move destination unknown' (A801), the refusal pynetdicom offers here, with the reason
            pynetdicom_patches.refuse_next_response(event.assoc, statuses.MOVE_DESTINATION_UNKNOWN, decision.reason)
            yield None, None
            return
        dest_aet = event.move_destination
        dest_aet = dest_aet.decode("ascii", "replace") if isinstance(dest_aet, bytes) else str(dest_aet)
        dest_aet = dest_aet.strip()
        dest = policy.move_destination(self.settings, self.archive.modalities(), dest_aet, r.ae_title, r.address)
        if dest is None:
            log.warning("C-MOVE from %s: unknown destination %r", r.ae_title, dest_aet)
            pynetdicom_patches.refuse_next_response(event.assoc, statuses.MOVE_DESTINATION_UNKNOWN,
                                                    f"unknown move destination {dest_aet!r}")
            yield None, None
            return
        if not dest.name:
            log.info("classroom mode: C-MOVE destination %s is the requesting device, %s:%d", dest_aet, dest.host,
                     dest.port)
        try:
            files = self._instances(event)
        except QueryRequestError as e:
            log.warning("C-MOVE from %s: %s", r.ae_title, e)
            # answered as Orthanc does (0xC000, or 0xA900), not 'destination unknown'
            pynetdicom_patches.refuse_next_response(event.assoc, e.status, str(e))
            yield None, None
            return
        contexts = storage_contexts([(c, t) for _, c, t in files])
        yield dest.host, dest.port, {"ae_title": dest_aet, "contexts": contexts,
                                     "evt_handlers": self.sub_association_handlers}
        yield len(files)
        log.info("C-MOVE from %s to %s (%s:%d): %d instances", r.ae_title, dest_aet, dest.host, dest.port, len(files))
        yield from self._send(event, files)

    def on_get(self, event) -> Iterator:
        decision = self._decide(event, "Get")
        if not decision.allowed:
            yield 0
            return
        try:
            files = self._instances(event)
        except QueryRequestError as e:
            log.warning("C-GET from %s: %s", event.assoc.requestor.ae_title, e)
            # pynetdicom answers a count of 0 with Success: that answer becomes the failure, no
            # sub-operation counted (as Orthanc answers), so that the viewer shows why nothing came
            pynetdicom_patches.refuse_next_response(event.assoc, e.status, str(e))
            yield 0
            return
        yield len(files)
        log.info("C-GET from %s: %d instances", event.assoc.requestor.ae_title, len(files))
        yield from self._send(event, files)

    def _send(self, event, files: list[tuple[str, str, str]]) -> Iterator:
        """The C-STORE sub-operations' datasets, each file read while the one before travels."""
        ahead: Future | None = None
        for i, (file_uuid, _, _) in enumerate(files):
            if event.is_cancelled:
                yield statuses.CANCEL, None
                return
            current = ahead
            ahead = self._readers.submit(self._dataset_if_small, files[i + 1][0]) if i + 1 < len(files) else None
            try:
                ds = current.result() if current is not None else None
                if ds is None:
                    ds = self._dataset(file_uuid)
            except (OSError, pydicom.errors.InvalidDicomError) as e:
                log.error("cannot read stored file %s: %s", file_uuid, e)
                yield statuses.OUT_OF_RESOURCES, None
                continue
            yield statuses.PENDING, ds

    def _dataset_if_small(self, file_uuid: str) -> Dataset | None:
        """Read ahead only what memory can spare twice over (not a 500 MB multi-frame)."""
        if self.archive.stored_path(file_uuid).stat().st_size > READ_AHEAD_MAX_BYTES:
            return None
        return self._dataset(file_uuid)


CANCEL_CHECK_EVERY = 64
READ_AHEAD_MAX_BYTES = 64 * 2**20


def held_back_answers(found: list[dict[int, str]], req: FindRequest, held: Any) -> list[dict[int, str]]:
    """A student's C-FIND answers while unknown cases are held back: their held-back keys answered empty;
    their studies not found at all by an identifier that matches on held-back text (the match would tell)."""
    constraints = [(int(k.replace(",", ""), 16), v) for k, v in req.items.items()]
    drop = matches_on_held_back(constraints)
    out = []
    for values in found:
        if held_answer(values, req.level, held):
            if drop:
                continue
            values = redact_values(values)
        out.append(values)
    return out


def _let_peer_speak(event, limit: float = 0.2) -> None:
    """Let pynetdicom read what the peer sent (a C-CANCEL) before more answers are queued.

    Its DUL thread only reads the socket when it has nothing left to send, so a long
    stream of answers would otherwise hide a C-CANCEL until the very end.
    """
    queue = getattr(getattr(event.assoc, "dul", None), "to_provider_queue", None)
    if queue is None:
        return
    deadline = time.monotonic() + limit
    while not queue.empty() and time.monotonic() < deadline:
        time.sleep(0.0002)
    time.sleep(0.0005)


def _failure(status: int, comment: str) -> tuple[Dataset, None]:
    """A failure status with an Error Comment (a status Dataset: pynetdicom sends its elements)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds, None


def storage_contexts(pairs: list[tuple[str, str]]) -> list:
    """Presentation contexts for sending: each SOP class with its stored syntaxes, then uncompressed ones."""
    by_class: dict[str, list[str]] = {}
    for sop_class, ts in pairs:
        lst = by_class.setdefault(sop_class, [])
        if ts and ts not in lst:
            lst.append(ts)
    contexts = []
    for sop_class, syntaxes in by_class.items():
        for fallback in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if fallback not in syntaxes:
                syntaxes.append(fallback)
        contexts.append(build_context(sop_class, syntaxes))
    return contexts[:128]
