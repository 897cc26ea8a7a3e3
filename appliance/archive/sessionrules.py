"""Teaching sessions (a live class over ordered cases): the document's rules, its limits, and what an
unknown case holds back from students.

Plain functions over JSON values, no I/O, like ``caserules``: the archive checks every session
document it is handed with them before it stores it, and ``appliance.archive`` exports them for the
web layer. Every refusal is a ``SessionInvalid`` whose message names the field
(``Cases[2].Questions[0].Choices``); a change the session's state does not allow is a
``SessionConflict`` that says what to do. ("Session" alone is a teacher's sign-in elsewhere: these are
*teaching* sessions.)
"""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword

from .caserules import _is_number
from .caserules import _no_unknown as _no_unknown_field

# ---------------------------------------------------------------- limits (each one tested)

MAX_SESSION_CASES = 100
MAX_QUESTIONS = 10                 # a case
MAX_PARTICIPANTS = 500             # a session
MAX_NICKNAME_CHARS = 32            # after trimming
MAX_TITLE_CHARS = 200
MAX_PROMPT_CHARS = 1000
MAX_CHOICE_CHARS = 200
MIN_CHOICES, MAX_CHOICES = 2, 8
MIN_POLYGON_POINTS, MAX_POLYGON_POINTS = 3, 64
MAX_TEXT_ANSWER_CHARS = 500
ANSWER_RATE, ANSWER_BURST = 5.0, 10   # answers a second a seat may send, in bursts of (each a write)
MAX_SESSION_BODY = 1024 * 1024     # bytes of a POST/PUT body (the web layer reads at most this)
MAX_VIEW_BYTES = 4096              # the presenter's view state kept for a restart (a live message's size)

MODES = ("unknown", "known")
SESSION_STATES = ("ready", "live", "paused", "ended")
QUESTION_TYPES = ("text", "choice", "tap")
REGION_TYPES = ("ellipse", "rectangle", "polygon")
QUESTION_ID = re.compile(r"[A-Za-z0-9_-]{1,16}")
SESSION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CODE = re.compile(r"[0-9]{4}")

# state changes: target state -> the states it may come from
TRANSITIONS = {"live": ("ready", "paused"), "paused": ("live",), "ended": ("ready", "live", "paused")}
# the route's verbs, for callers that name the change rather than the state
VERBS = {"start": "live", "pause": "paused", "end": "ended"}

EDITABLE_SESSION_FIELDS = ("Title", "Mode", "Cases")
BOARD_SESSION_FIELDS = ("ID", "State", "Code", "Author", "Created", "Updated", "Started", "Ended", "Revealed",
                        "Asked", "View", "Participants")
ALL_SESSION_FIELDS = (*EDITABLE_SESSION_FIELDS, *BOARD_SESSION_FIELDS)
VOLATILE_FIELDS = ("View", "Participants")
ENTRY_FIELDS = ("Case", "AllowRetrieve", "Missing", "Questions")
QUESTION_FIELDS = ("ID", "Type", "Prompt", "Choices", "Correct", "KeyImage", "Region")


class SessionInvalid(ValueError):
    """A teaching-session document (or answer, or nickname) that cannot be stored (400); the message
    names the field."""


class SessionConflict(Exception):
    """A change the teaching session's state does not allow (409); the message says what to do."""


class SessionStale(SessionConflict):
    """The session changed since the copy a change was made from was read (409): reload it."""

    def __init__(self, message: str = "the session changed since you read it: reload it"):
        super().__init__(message)


@dataclass(frozen=True)
class Seat:
    """A student's place in a teaching session: what the join gave them. The index keeps only the
    token's sha256; the token itself is the student's (cookie ``pipacs_seat``)."""
    session_id: str
    participant_id: str
    nickname: str
    token: str


@dataclass(frozen=True)
class HeldBack:
    """What students must not see now: the cases of sessions not ended, in unknown mode, not revealed
    yet (ready counts: students must not read ahead), and their studies. Recomputed by the archive
    after every change that can alter it; an empty one is false."""
    cases: frozenset[str] = frozenset()        # case IDs whose answer students must not see now
    studies: frozenset[str] = frozenset()      # Orthanc study public IDs of those cases
    study_uids: frozenset[str] = frozenset()   # their StudyInstanceUIDs
    patients: frozenset[str] = frozenset()     # public IDs of those studies' patients
    no_retrieve: frozenset[str] = frozenset()  # study public IDs whose files students may not retrieve now

    def __bool__(self) -> bool:
        return bool(self.cases)


NOTHING_HELD_BACK = HeldBack()

# ---------------------------------------------------------------- what an unknown case holds back

# What students are not given about a held-back study (and its patient's other studies) until the
# reveal: HELD_BACK_TAGS, the one list every redaction uses (REST JSON and tag routes, DICOMweb, C-FIND,
# the stack document, the queries that would match on them). Two named parts, each with its why:
#
# HELD_BACK_KEYWORDS: what the study's own objects carry that often says the answer (a study described
# "CT chest: pneumothorax", a series "PE protocol", a request's reason, a visit's comment, a report).
# PatientName is there because a case's anonymized patient name is its Title. Documents in the study
# (an imported case often has a scanned request or report: Encapsulated PDF/CDA, or an SR) give the
# answer in their EncapsulatedDocument, DocumentTitle and ContentSequence (an SR's CODE items say
# "Pneumothorax" in a CodeMeaning): taken out too, and the web routes that would serve such an
# instance's content refuse it instead (``appliance.web.holdback.refuse_document``).
# Private elements are NOT covered: a vendor's copy of a description in (0009,xxxx) that de-identification
# kept ("retain safe private") is served as it is; no list can name them (README "Unknown cases in a
# session").
HELD_BACK_KEYWORDS = (
    "StudyDescription", "SeriesDescription", "ImageComments", "RequestedProcedureDescription",
    "PerformedProcedureStepDescription", "ProtocolName", "StudyComments", "ReasonForStudy",
    "ReasonForTheRequestedProcedure", "RequestedProcedureComments", "ImagingServiceRequestComments",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "AdditionalPatientHistory",
    "PatientComments", "DerivationDescription", "AcquisitionComments", "FrameComments", "ProcedureCodeSequence",
    "RequestAttributesSequence", "PerformedProtocolCodeSequence", "ReasonForRequestedProcedureCodeSequence",
    "PatientName", "ClinicalTrialSeriesDescription", "ClinicalTrialProtocolName", "ContentLabel",
    "ContentDescription",
    # scheduling, visit and procedure text that modalities copy into every image (review 21 item 4)
    "ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence", "RequestedProcedureCodeSequence",
    "SeriesDescriptionCodeSequence", "CommentsOnThePerformedProcedureStep", "PerformedProcedureTypeDescription",
    "ReasonForPerformedProcedureCodeSequence", "ReasonForVisit", "ReasonForVisitCodeSequence", "VisitComments",
    "ClinicalTrialTimePointDescription",
    # documents: a report's file, its title, an SR's tree of findings, a coded concept anywhere
    "EncapsulatedDocument", "DocumentTitle", "ContentSequence", "ConceptCodeSequence",
    # masks (review 21b item 3): a segmentation's segments and an RT structure set's ROIs are named after
    # the finding ("Pneumothorax"); their content is refused, these keep QIDO-RS and C-FIND from telling it
    "SegmentLabel", "SegmentDescription", "SegmentedPropertyCategoryCodeSequence",
    "SegmentedPropertyTypeCodeSequence", "ROIName", "ROIDescription", "StructureSetLabel", "StructureSetName",
    "StructureSetDescription", "ROIObservationLabel", "ROIObservationDescription")

# BOARD_OBJECT_TEXT_KEYWORDS: the free text of the board's own stored key objects
# (``POST /cases/{id}/store-key-objects`` puts a KOS and a GSPS into the case's study: the KOS says the
# case's title in a TextValue, the GSPS draws its annotations and writes its captions and labels), which
# any structured report's TextValue may also hold.
BOARD_OBJECT_TEXT_KEYWORDS = (
    "TextValue",                  # SR and KOS content items: the case's title, findings in a report
    "UnformattedTextValue",       # GSPS text objects: captions, labels, lengths
    "GraphicAnnotationSequence")  # GSPS: the annotations drawn, their text


def _tags(keywords: tuple[str, ...]) -> frozenset[int]:
    out = set()
    for k in keywords:
        tag = tag_for_keyword(k)
        if tag is None:      # a typo here would silently hold nothing back
            raise AssertionError(f"{k} is not a DICOM keyword")
        out.add(int(tag))
    return frozenset(out)


HELD_BACK_STUDY_TAGS: frozenset[int] = _tags(HELD_BACK_KEYWORDS)
BOARD_OBJECT_TEXT_TAGS: frozenset[int] = _tags(BOARD_OBJECT_TEXT_KEYWORDS)
# the one constant every redaction uses
HELD_BACK_TAGS: frozenset[int] = HELD_BACK_STUDY_TAGS | BOARD_OBJECT_TEXT_TAGS

# a case's fields that give its answer away ("Title" -> "Unknown case"; the others emptied); key
# images' Caption and Annotations too, and their Center and Zoom (``held_back_case``). DelayReason is
# the teacher's (or the workstation's) free text on why the case waits: it may name the answer
# ("until after the pneumothorax quiz").
CASE_ANSWER_FIELDS = ("Title", "Findings", "Diagnosis", "DifferentialDiagnosis", "Discussion", "TeachingPoints",
                      "References", "Keywords", "Collections", "DelayReason")
# a key image's framing that points at the finding: its Center is about where the teacher framed it
# (a tap question's answer), its Zoom how closely: both null in the copy. Window stays: it is how the image is read.
HELD_BACK_KEY_IMAGE_FIELDS = ("Center", "Zoom")
HELD_BACK_TITLE = "Unknown case"


def held_back_case(doc: dict[str, Any]) -> dict[str, Any]:
    """A student's copy of a held-back case: its answer fields emptied ("" or []), Title "Unknown case",
    each key image's Caption "" and Annotations [] and no Center or Zoom (they point at the finding;
    its pixels and Window stay: they are the quiz), and ``"HeldBack": true``. ``doc`` is not changed."""
    out = copy.deepcopy(doc)
    for f in CASE_ANSWER_FIELDS:
        if f in out:
            out[f] = [] if isinstance(out[f], list) else ""
    out["Title"] = HELD_BACK_TITLE
    for ki in out.get("KeyImages", []) or []:
        if isinstance(ki, dict):
            ki["Caption"] = ""
            ki["Annotations"] = []
            for f in HELD_BACK_KEY_IMAGE_FIELDS:
                if f in ki:
                    ki[f] = None          # null, as a key image without framing (the viewer fits the image)
    out["HeldBack"] = True
    return out


# ---------------------------------------------------------------- the document


def new_session_fields(body: Any) -> dict[str, Any]:
    """A POST /sessions body: Title, Mode, Cases checked (defaults for those not given). The board's
    fields are refused, unless they say what a new session is anyway (State "ready", Revealed [],
    Asked null, View null, Participants 0, an entry's Missing false)."""
    body = _object(body, "the session")
    _unicode(body)
    _no_unknown(body, ALL_SESSION_FIELDS, "")
    defaults = {"State": "ready", "Revealed": [], "Asked": None, "View": None, "Participants": 0}
    for f in BOARD_SESSION_FIELDS:
        if f in body and not (f in defaults and body[f] == defaults[f]):
            raise SessionInvalid(f"{f} is set by the board and cannot be given for a new session")
    out = {"Title": "", "Mode": "unknown", "Cases": []}
    out.update(check_session_fields({k: v for k, v in body.items() if k in EDITABLE_SESSION_FIELDS}, []))
    return out


def merged_session_fields(stored: dict[str, Any], body: Any) -> dict[str, Any]:
    """A PUT body onto the stored document: Title, Mode, Cases as they will be. The board's fields are
    ignored when they equal the stored value (a client sending back what it read), refused otherwise;
    an Updated other than the stored one is SessionStale (the copy is old), and View and Participants,
    which change without Updated (the presenter's view, a join), are ignored whatever they say."""
    body = _object(body, "the session")
    _unicode(body)
    _no_unknown(body, ALL_SESSION_FIELDS, "")
    if "Updated" in body and body["Updated"] != stored.get("Updated"):
        raise SessionStale()       # a copy read before the last change (a start, a reveal): not a wish to set it
    for f in BOARD_SESSION_FIELDS:
        if f in VOLATILE_FIELDS:
            continue
        if f in body and body[f] != stored.get(f):
            raise SessionInvalid(f"{f} cannot be changed here: it is set by the board"
                                 + (" (POST /sessions/{id}/start, /pause, /end)" if f == "State" else ""))
    out = {f: copy.deepcopy(stored[f]) for f in EDITABLE_SESSION_FIELDS}
    out.update(check_session_fields({k: v for k, v in body.items() if k in EDITABLE_SESSION_FIELDS},
                                    stored.get("Cases", [])))
    return out


def check_session_fields(fields: dict[str, Any], stored_cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The editable fields given, each checked and normalised. ``stored_cases``: the entries stored now,
    whose Missing (the board's) an entry naming the same case at the same place keeps."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "Title":
            if not isinstance(value, str) or len(value) > MAX_TITLE_CHARS:
                raise SessionInvalid(f"Title: text of at most {MAX_TITLE_CHARS} characters")
            out[name] = value
        elif name == "Mode":
            if value not in MODES:
                raise SessionInvalid("Mode: \"unknown\" (answers hidden from students until each case's reveal) "
                                     "or \"known\"")
            out[name] = value
        elif name == "Cases":
            items = _array(value, "Cases", MAX_SESSION_CASES)
            out[name] = [_entry(e, f"Cases[{i}]", stored_cases[i] if i < len(stored_cases) else None)
                         for i, e in enumerate(items)]
        else:
            raise SessionInvalid(f"{name}: not a field of a session")
    return out


def _entry(e: Any, where: str, stored: dict[str, Any] | None) -> dict[str, Any]:
    e = _object(e, where)
    _no_unknown(e, ENTRY_FIELDS, where + ".")
    case = e.get("Case")
    if not isinstance(case, str) or not 0 < len(case) <= 64:
        raise SessionInvalid(f"{where}.Case: the ID of a case on this board is required")
    allow = e.get("AllowRetrieve", False)
    if type(allow) is not bool:
        raise SessionInvalid(f"{where}.AllowRetrieve: true (students' DICOM apps may retrieve its studies' files "
                             "while it is unrevealed) or false")
    missing = bool(stored and stored.get("Case") == case and stored.get("Missing"))
    if "Missing" in e and e["Missing"] is not missing:
        raise SessionInvalid(f"{where}.Missing: set by the board (true once the case was deleted)")
    questions = _array(e.get("Questions", []), f"{where}.Questions", MAX_QUESTIONS)
    checked = [_question(q, f"{where}.Questions[{j}]") for j, q in enumerate(questions)]
    seen: set[str] = set()
    for j, q in enumerate(checked):
        if q["ID"] is not None:
            if q["ID"] in seen:
                raise SessionInvalid(f"{where}.Questions[{j}].ID: {q['ID']} is used twice in this case")
            seen.add(q["ID"])
    n = 0
    for q in checked:      # the board names those without an ID: q1, q2... (not one already used)
        if q["ID"] is None:
            n += 1
            while f"q{n}" in seen:
                n += 1
            q["ID"] = f"q{n}"
            seen.add(q["ID"])
    return {"Case": case, "AllowRetrieve": allow, "Missing": missing, "Questions": checked}


def _question(q: Any, where: str) -> dict[str, Any]:
    q = _object(q, where)
    _no_unknown(q, QUESTION_FIELDS, where + ".")
    qid = q.get("ID")
    if qid is not None and (not isinstance(qid, str) or not QUESTION_ID.fullmatch(qid)):
        raise SessionInvalid(f"{where}.ID: 1 to 16 letters A-Z a-z, digits, '-' or '_' (or absent: the board "
                             "names it)")
    kind = q.get("Type")
    if kind not in QUESTION_TYPES:
        raise SessionInvalid(f"{where}.Type: one of {', '.join(QUESTION_TYPES)}")
    prompt = q.get("Prompt", "")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise SessionInvalid(f"{where}.Prompt: text of at most {MAX_PROMPT_CHARS} characters")
    choices = q.get("Choices", [])
    correct = q.get("Correct", [])
    key_image = q.get("KeyImage")
    region = q.get("Region")
    if kind == "choice":
        if not isinstance(choices, list) or not MIN_CHOICES <= len(choices) <= MAX_CHOICES:
            raise SessionInvalid(f"{where}.Choices: {MIN_CHOICES} to {MAX_CHOICES} choices for a choice question")
        for k, c in enumerate(choices):
            if not isinstance(c, str) or len(c) > MAX_CHOICE_CHARS:
                raise SessionInvalid(f"{where}.Choices[{k}]: text of at most {MAX_CHOICE_CHARS} characters")
        if not isinstance(correct, list) or not all(type(i) is int and 0 <= i < len(choices) for i in correct):
            raise SessionInvalid(f"{where}.Correct: indexes of Choices (0 to {len(choices) - 1}), or [] (none marked)")
        if len(set(correct)) != len(correct):
            raise SessionInvalid(f"{where}.Correct: a choice is named twice")
        correct = sorted(correct)
    else:
        if choices not in ([], None):
            raise SessionInvalid(f"{where}.Choices: only a choice question has choices")
        if correct not in ([], None):
            raise SessionInvalid(f"{where}.Correct: only a choice question has correct choices")
        choices, correct = [], []
    if kind == "tap":
        if key_image is None:
            key_image = 0
        if type(key_image) is not int or key_image < 0:
            raise SessionInvalid(f"{where}.KeyImage: the index (from 0) of one of the case's key images")
        region = _region(region, f"{where}.Region")
    else:
        if key_image is not None:
            raise SessionInvalid(f"{where}.KeyImage: only a tap question has a key image")
        if region is not None:
            raise SessionInvalid(f"{where}.Region: only a tap question has a region")
    return {"ID": qid, "Type": kind, "Prompt": prompt, "Choices": list(choices), "Correct": correct,
            "KeyImage": key_image, "Region": region}


def _region(r: Any, where: str) -> dict[str, Any] | None:
    if r is None:
        return None
    r = _object(r, where)
    _no_unknown(r, ("Type", "Points"), where + ".")
    kind = r.get("Type")
    if kind not in REGION_TYPES:
        raise SessionInvalid(f"{where}.Type: one of {', '.join(REGION_TYPES)}")
    points = r.get("Points")
    if kind == "polygon":
        lo, hi, what = MIN_POLYGON_POINTS, MAX_POLYGON_POINTS, f"{MIN_POLYGON_POINTS} to {MAX_POLYGON_POINTS} points"
    else:
        lo, hi, what = 2, 2, "2 points (opposite corners of its box)"
    if (not isinstance(points, list) or not lo <= len(points) <= hi
            or not all(isinstance(p, list) and len(p) == 2 and all(_is_number(v) and v >= 0 for v in p)
                       for p in points)):
        raise SessionInvalid(f"{where}.Points: {what} [x, y] for a {kind}, in the key image's pixels (from 0)")
    return {"Type": kind, "Points": [[p[0], p[1]] for p in points]}


# ---------------------------------------------------------------- participants and answers


def nickname_of(value: Any) -> str:
    """A nickname as kept: trimmed, 1 to 32 characters, no control characters."""
    if not isinstance(value, str):
        raise SessionInvalid("Nickname: text is required")
    name = unicodedata.normalize("NFC", value).strip()
    if not 0 < len(name) <= MAX_NICKNAME_CHARS:
        raise SessionInvalid(f"Nickname: 1 to {MAX_NICKNAME_CHARS} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")
           or (unicodedata.category(ch) == "Cf" and ch not in _JOINERS) for ch in name):
        # format characters too (bidi overrides, zero-width spaces: "Ann\u200b" would pass for "Ann"),
        # but the joiners emoji are made with
        raise SessionInvalid("Nickname: no control characters")
    return name


_JOINERS = frozenset("\u200c\u200d")


def nickname_key(name: str) -> str:
    """What two nicknames compare as (one is taken when the other is): case and width folded."""
    return unicodedata.normalize("NFKC", name).casefold()


def check_answer(question: dict[str, Any], answer: Any, image: dict[str, int] | None = None) -> Any:
    """An answer to ``question``, as stored: text -> str (<= 500 characters); choice -> [index, ...] (one
    index unless the question marks several Correct, then any non-empty set; sorted); tap -> [x, y]
    within [0, Columns] x [0, Rows] of its key image (``image``: {"Rows", "Columns"})."""
    kind = question["Type"]
    if kind == "text":
        if not isinstance(answer, str) or len(answer) > MAX_TEXT_ANSWER_CHARS:
            raise SessionInvalid(f"Answer: text of at most {MAX_TEXT_ANSWER_CHARS} characters")
        _unicode(answer)
        return answer
    if kind == "choice":
        n = len(question["Choices"])
        if not isinstance(answer, list) or not answer or not all(type(i) is int and 0 <= i < n for i in answer):
            raise SessionInvalid(f"Answer: a list of choice indexes (0 to {n - 1})")
        if len(set(answer)) != len(answer):
            raise SessionInvalid("Answer: a choice is named twice")
        if len(answer) > 1 and len(question["Correct"]) < 2:
            raise SessionInvalid("Answer: one choice (this question has one answer)")
        return sorted(answer)
    if not (isinstance(answer, list) and len(answer) == 2 and all(_is_number(v) for v in answer)):
        raise SessionInvalid("Answer: [x, y], the tapped point in the key image's pixels")
    x, y = float(answer[0]), float(answer[1])
    cols, rows = (image or {}).get("Columns", 0), (image or {}).get("Rows", 0)
    if not (0 <= x <= cols and 0 <= y <= rows):
        raise SessionInvalid(f"Answer: ({x:g}, {y:g}) is outside the image: x (column) within [0, {cols}], "
                             f"y (row) within [0, {rows}]")
    return [x, y]


def check_view(view: Any) -> dict[str, Any] | None:
    """The presenter's view kept for a restart: an object of at most 4096 bytes of JSON, or None (its
    fields are the live channel's to check)."""
    if view is None:
        return None
    if not isinstance(view, dict):
        raise SessionInvalid("View: a JSON object or null")
    try:
        size = len(json.dumps(view, ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError, UnicodeEncodeError):
        raise SessionInvalid("View: JSON values only") from None
    if size > MAX_VIEW_BYTES:
        raise SessionInvalid(f"View: at most {MAX_VIEW_BYTES} bytes of JSON ({size} given)")
    return view


def target_state(state: str) -> str:
    """A state change's target ("live", "paused", "ended"; the verbs start, pause, end are taken too)."""
    state = VERBS.get(state, state)
    if state not in TRANSITIONS:
        raise SessionInvalid("State: one of live (start), paused (pause), ended (end)")
    return state


def transition_problem(current: str, target: str) -> str | None:
    """Why a session in ``current`` cannot go to ``target`` (a sentence), or None."""
    if current in TRANSITIONS[target]:
        return None
    if current == target:
        return f"the session is {current} already"
    if current == "ended":
        return "the session has ended: rerun it (POST /sessions/{id}/rerun) for another class"
    if target == "paused":
        return "only a live session can be paused: start it first"
    return f"a session that is {current} cannot become {target}"


# ---------------------------------------------------------------- helpers


def _unicode(value: Any) -> None:
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise SessionInvalid("the session holds text that is not Unicode (a lone surrogate, \\ud800-\\udfff)") \
            from None
    except (TypeError, ValueError):
        raise SessionInvalid("the session holds something that is not JSON (NaN, Infinity...)") from None


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SessionInvalid(f"{where}: a JSON object is required")
    return value


def _array(value: Any, where: str, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise SessionInvalid(f"{where}: a JSON array is required")
    if len(value) > most:
        raise SessionInvalid(f"{where}: at most {most} items ({len(value)} given)")
    return value


def _no_unknown(obj: dict[str, Any], known: tuple[str, ...], prefix: str) -> None:
    _no_unknown_field(obj, known, prefix, SessionInvalid)
