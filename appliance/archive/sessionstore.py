"""Teaching sessions: the archive's methods about them (mixed into ``Archive``).

A session document is checked with ``sessionrules``, its cases against the board (each one is
there; a tap question's key image exists), then written by the index writer in one transaction.
What is asked on every request is answered from memory, kept beside the index and rebuilt from it
at start: the sessions not ended (their documents), the seats of their participants (by the sha256
of the token: the index never keeps a token), and what unknown cases hold back from students now
(``held_back``), recomputed after every change that can alter it.

Writers of one session take its lock, so a reveal and an answer never cross: an answer checked
against a case not yet revealed is stored before the reveal is.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .casestore import checked_off_loop, next_updated, utc_now
from .index.sqlite_sessions import SessionWrite
from .keyedlocks import KeyedLocks
from .model import Level
from .records import NotFound
from .sessionrules import (
    CODE,
    MAX_PARTICIPANTS,
    NOTHING_HELD_BACK,
    HeldBack,
    Seat,
    SessionConflict,
    SessionInvalid,
    SessionStale,
    check_answer,
    check_view,
    merged_session_fields,
    new_session_fields,
    nickname_key,
    nickname_of,
    target_state,
    transition_problem,
)

if TYPE_CHECKING:
    from .hub import Archive

log = logging.getLogger("pipacs.archive")

SessionListener = Callable[[str, "dict[str, Any] | None"], None]
AnswerListener = Callable[[str, "dict[str, Any]"], None]
_STUDY_INSTANCE_UID = "0020,000d"
NO_CODE = "no live session has that code"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class SessionMethods:
    """``Archive``'s teaching-session API (README "Teaching sessions in the archive")."""

    def _sessions_init(self: Archive) -> None:
        self._open_sessions: dict[str, dict[str, Any]] = {}        # ID -> document, sessions not ended
        self._seats: dict[str, tuple[str, str, str]] = {}          # token sha256 -> (session, participant, nickname)
        self._seated: dict[str, dict[str, tuple[str, str]]] = {}   # session -> participant -> (nickname, sha256)
        self._held: HeldBack = NOTHING_HELD_BACK
        self._held_lock = asyncio.Lock()
        self._session_listeners: list[SessionListener] = []
        self._answer_listeners: list[AnswerListener] = []
        self._session_locks = KeyedLocks()
        # asked per request while something is held back, forgotten at each recomputation (after any
        # session or case write, study delete): (level, public ID) -> held-back study or None
        self._held_memo: dict[tuple[Level, str], str | None] = {}
        # held_back_labels' answer, for (this snapshot, this archive generation): labels change with the
        # generation (set_label, stores, deletes), the held-back set with the snapshot
        self._held_labels: tuple[HeldBack, int, frozenset[str]] | None = None
        # (case ID, key image index) -> its Rows and Columns: a tap answer is checked against them
        self._tap_images: dict[tuple[str, int], dict[str, int]] = {}

    async def _sessions_load(self: Archive) -> None:
        """At open: the sessions not ended and their seats, from the index; what they hold back."""
        self._open_sessions = {d["ID"]: d for d in await self.index.teaching_sessions(open_only=True)}
        for p in await self.index.open_session_participants():
            self._seat(p.session_id, p.participant_id, p.nickname, p.token_sha256)
        await self._refresh_held_back()

    def _seat(self: Archive, session_id: str, participant_id: str, nickname: str, sha: str) -> None:
        self._seats[sha] = (session_id, participant_id, nickname)
        self._seated.setdefault(session_id, {})[participant_id] = (nickname, sha)

    def _unseat_all(self: Archive, session_id: str) -> None:
        for _, sha in self._seated.pop(session_id, {}).values():
            self._seats.pop(sha, None)

    def _session_lock(self: Archive, session_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The per-session lock of its writers (answers and reveals take turns on it)."""
        return self._session_locks(session_id)

    # ---------------------------------------------------------------- listeners

    def add_session_listener(self: Archive, fn: SessionListener) -> None:
        """``fn(session_id, doc)`` (sync, on the loop) after every stored change of a session: its state,
        a reveal, a question asked or closed, a PUT, a case of it deleted; ``doc`` None: deleted."""
        self._session_listeners.append(fn)

    def add_answer_listener(self: Archive, fn: AnswerListener) -> None:
        """``fn(session_id, answer_row)`` (sync, on the loop) after each stored answer."""
        self._answer_listeners.append(fn)

    def _tell_session(self: Archive, session_id: str, doc: dict[str, Any] | None) -> None:
        for fn in list(self._session_listeners):
            try:
                fn(session_id, copy.deepcopy(doc) if doc is not None else None)
            except Exception as e:
                log.error("a session listener failed: %s", e, exc_info=e)

    # ---------------------------------------------------------------- reading

    async def get_session(self: Archive, session_id: str) -> dict[str, Any]:
        """The whole document. Raises NotFound."""
        doc = self._open_sessions.get(session_id)
        if doc is not None:
            out = copy.deepcopy(doc)
            out["Participants"] = len(self._seated.get(session_id, {}))
            return out
        found = await self.index.teaching_session(session_id) if isinstance(session_id, str) else None
        if found is None:
            raise NotFound(f"no session {session_id}")
        return found

    async def list_sessions(self: Archive) -> list[dict[str, Any]]:
        """Every session's document, newest first."""
        return await self.index.teaching_sessions()

    async def session_answers(self: Archive, session_id: str) -> list[dict[str, Any]]:
        """``{"Case", "Question", "Participant", "Nickname", "Answer", "At"}`` rows in answer order.
        Raises NotFound."""
        await self.get_session(session_id)
        return await self.index.session_answers(session_id)

    def held_back(self: Archive) -> HeldBack:
        """What students must not see now (see ``HeldBack``): a snapshot, no I/O; an immutable object
        replaced whole, so a DICOM association's thread may ask too."""
        return self._held

    async def held_back_study_of(self: Archive, level: Level, public_id: str) -> str | None:
        """The held-back study (public ID) a resource is in or under (a patient: any of its studies
        held back), else None; None at once when nothing is held back."""
        held = self._held
        if not held:
            return None
        if level == Level.STUDY:
            return public_id if public_id in held.studies else None
        key = (level, public_id)
        if key in self._held_memo:
            return self._held_memo[key]
        found = await self._held_study_below(level, public_id, held)
        if held is self._held:             # not recomputed meanwhile: still true
            if len(self._held_memo) >= 8192:
                self._held_memo.clear()
            self._held_memo[key] = found
        return found

    async def held_back_labels(self: Archive) -> frozenset[str]:
        """Labels found on anything held back (the held-back studies' patients, their studies, series
        and instances): computed once per snapshot and archive generation (a label set or removed, a
        store, a delete), not per call; empty at once when nothing is held back."""
        held, generation = self._held, self._generation
        if not held:
            return frozenset()
        cached = self._held_labels
        if cached is not None and cached[0] is held and cached[1] == generation:
            return cached[2]
        ids: list[int] = []
        for pid in held.patients:
            patient = await self.index.resource(pid, Level.PATIENT)
            if patient is None:
                continue
            ids.append(patient.id)
            for study in await self.index.children(patient.id):
                ids.append(study.id)
                ids += [s.id for s in await self.index.children(study.id)]
            ids += await self.index.descendant_instances(patient.id)
        found = frozenset(label for labels in (await self.index.labels_of(ids)).values()
                          for label in labels) if ids else frozenset()
        if held is self._held and generation == self._generation:     # no change meanwhile: still true
            self._held_labels = (held, generation, found)
        return found

    async def _held_study_below(self: Archive, level: Level, public_id: str, held: HeldBack) -> str | None:
        res = await self.index.resource(public_id, level)
        if res is None:
            return None
        if level == Level.PATIENT:
            if public_id not in held.patients:
                return None
            for study in await self.index.children(res.id):
                if study.public_id in held.studies:
                    return study.public_id
            return None
        while res is not None and res.level != Level.STUDY:
            res = await self.index.resource_by_id(res.parent_id) if res.parent_id is not None else None
        return res.public_id if res is not None and res.public_id in held.studies else None

    async def _refresh_held_back(self: Archive) -> None:
        """Recompute ``held_back`` from the open sessions and the index as they are now."""
        async with self._held_lock:
            self._tap_images.clear()
            flags: dict[str, list[bool]] = {}
            for doc in self._open_sessions.values():
                if doc["Mode"] != "unknown":
                    continue
                revealed = set(doc["Revealed"])
                for i, entry in enumerate(doc["Cases"]):
                    if i not in revealed and not entry["Missing"]:
                        flags.setdefault(entry["Case"], []).append(entry["AllowRetrieve"])
            if not flags:
                self._held = NOTHING_HELD_BACK
                self._held_memo.clear()
                return
            internal = list((await self.index.case_ids_of(list(flags))).values())
            study_flags: dict[int, list[bool]] = {}
            study_pub: dict[int, str] = {}
            for s in await self.index.cases_by_ids(internal, summary=True):
                for sid, pub in s.studies:
                    study_pub[sid] = pub
                    study_flags.setdefault(sid, []).extend(flags.get(s.public_id, []))
            sids = list(study_pub)
            tags = await self.index.main_tags(sids) if sids else {}
            parents = await self.index.parents(sids) if sids else {}
            patients = await self.index.resources_by_ids(list(set(parents.values())))
            self._held = HeldBack(
                cases=frozenset(flags),
                studies=frozenset(study_pub.values()),
                study_uids=frozenset(t[_STUDY_INSTANCE_UID] for t in tags.values() if _STUDY_INSTANCE_UID in t),
                patients=frozenset(p.public_id for p in patients),
                no_retrieve=frozenset(study_pub[sid] for sid, f in study_flags.items() if not all(f)))
            self._held_memo.clear()

    # ---------------------------------------------------------------- writing

    async def create_session(self: Archive, doc: dict[str, Any], author: str) -> dict[str, Any]:
        """Store a new session (ready, with a join code) from a POST /sessions body. Raises
        SessionInvalid, SessionConflict (no join code free)."""
        fields = await checked_off_loop(new_session_fields, doc)
        return await self._new_session(fields, author)

    async def _new_session(self: Archive, fields: dict[str, Any], author: str) -> dict[str, Any]:
        await self._check_session_cases(fields["Cases"])
        now = utc_now()
        session_id = str(uuid.uuid4())
        full = {"ID": session_id, "Title": fields["Title"], "Mode": fields["Mode"], "State": "ready",
                "Code": self._free_code(), "Author": str(author or ""), "Created": now, "Updated": now,
                "Started": "", "Ended": "", "Cases": fields["Cases"], "Revealed": [], "Asked": None, "View": None,
                "Participants": 0}
        async with self._session_lock(session_id):
            return await self._write_session(full, create=True)

    def _free_code(self: Archive) -> str:
        """Four digits no open session has (random: a code says nothing of the one before)."""
        taken = {d["Code"] for d in self._open_sessions.values()}
        for _ in range(64):
            code = f"{secrets.randbelow(10_000):04d}"
            if code not in taken:
                return code
        free = [c for c in (f"{n:04d}" for n in range(10_000)) if c not in taken]
        if not free:
            raise SessionConflict("every join code is in use by a session not ended: end some sessions first")
        return secrets.choice(free)

    async def _check_session_cases(self: Archive, cases: list[dict[str, Any]]) -> None:
        """Each entry not Missing names a case on the board; a tap question's key image is one of its."""
        for i, entry in enumerate(cases):
            if entry["Missing"]:
                continue
            try:
                case = await self.get_case(entry["Case"])
            except NotFound:
                raise SessionInvalid(f"Cases[{i}].Case: no case {entry['Case']} on this board") from None
            n = len(case["KeyImages"])
            for j, q in enumerate(entry["Questions"]):
                if q["Type"] != "tap":
                    continue
                where = f"Cases[{i}].Questions[{j}]"
                if q["KeyImage"] >= n:
                    raise SessionInvalid(f"{where}.KeyImage: case {entry['Case']} has {n} key image(s), counted "
                                         "from 0 (a tap question is answered on one of them)")
                if q["Region"] is not None:
                    res = await self.index.resource(case["KeyImages"][q["KeyImage"]]["Instance"], Level.INSTANCE)
                    tags = await self._image_tags(res) if res is not None else {}
                    cols, rows = int(tags.get("Columns") or 0), int(tags.get("Rows") or 0)
                    for k, (x, y) in enumerate(q["Region"]["Points"]):
                        if not (x <= cols and y <= rows):
                            raise SessionInvalid(f"{where}.Region.Points[{k}]: ({x}, {y}) is outside the key image: "
                                                 f"x (column) within [0, {cols}], y (row) within [0, {rows}]")

    async def _write_session(self: Archive, doc: dict[str, Any], create: bool = False,
                             expect_updated: str | None = None, tell: bool = True) -> dict[str, Any]:
        """Write a whole document (the caller holds the session's lock), then memory, the hold-back
        snapshot and the listeners follow."""
        sid = doc["ID"]
        w = SessionWrite(sid, doc["State"], doc["Code"], doc["Created"], doc["Updated"], doc,
                         [e["Case"] for e in doc["Cases"] if not e["Missing"]], expect_updated)
        await self._writes.serialised(self._writer.put_session, w, create)
        if doc["State"] == "ended":
            self._open_sessions.pop(sid, None)
            self._unseat_all(sid)
        else:
            kept = self._open_sessions.get(sid)
            stored = copy.deepcopy(doc)
            if kept is not None:            # the view is saved apart (save_session_view), never by a write
                stored["View"] = kept.get("View")
            self._open_sessions[sid] = stored
        await self._refresh_held_back()
        out = await self.get_session(sid)
        if tell:
            self._tell_session(sid, out)
        return out

    async def update_session(self: Archive, session_id: str, fields: dict[str, Any],
                             expect_updated: str | None = None) -> dict[str, Any]:
        """A PUT: the fields given replace theirs (Title, Mode, Cases), the board's sent back equal are
        ignored. Refused (SessionConflict) once ended; once an answer exists or a case is revealed the
        cases' IDs and order stay, and a revealed case's questions too. ``expect_updated``: the Updated
        the caller read (SessionStale when it changed since)."""
        async with self._session_lock(session_id):
            stored = await self.get_session(session_id)
            if expect_updated is not None and stored["Updated"] != expect_updated:
                raise SessionStale()
            if stored["State"] == "ended":
                raise SessionConflict("the session has ended and cannot be changed: rerun it "
                                      "(POST /sessions/{id}/rerun) to change a copy")
            new = await checked_off_loop(lambda body: merged_session_fields(stored, body), fields)
            old_ids = [e["Case"] for e in stored["Cases"]]
            new_ids = [e["Case"] for e in new["Cases"]]
            if new_ids != old_ids and (stored["Revealed"] or await self.index.session_has_answers(session_id)):
                raise SessionConflict("the session has answers or revealed cases, so its cases and their order "
                                      "stay: rerun the session to change its cases")
            for i in stored["Revealed"]:
                if new["Cases"][i]["Questions"] != stored["Cases"][i]["Questions"]:
                    raise SessionConflict(f"case {i} of the session is revealed: its questions can no longer "
                                          "change (rerun the session to change them)")
            if "Cases" in fields:
                await self._check_answered_questions(session_id, stored["Cases"], new["Cases"])
            await self._check_session_cases(new["Cases"])
            doc = {**stored, **new, "Updated": next_updated(stored["Updated"])}
            asked = doc["Asked"]
            if asked is not None and not (
                    asked["Case"] < len(doc["Cases"]) and doc["Cases"][asked["Case"]]["Case"] == old_ids[asked["Case"]]
                    and any(q["ID"] == asked["Question"] for q in doc["Cases"][asked["Case"]]["Questions"])):
                doc["Asked"] = None        # the question asked is gone (or its case moved)
            return await self._write_session(doc, expect_updated=stored["Updated"])

    async def _check_answered_questions(self: Archive, session_id: str, old: list[dict[str, Any]],
                                        new: list[dict[str, Any]]) -> None:
        """A question with answers keeps its Type and Choices (the answers would no longer fit it and
        drop out of the results without a word): SessionConflict. Its cases stay where they are
        once an answer exists (checked before), so an index names the same case in both."""
        for i, qid in sorted(await self.index.session_answered_questions(session_id)):
            if i >= len(old) or i >= len(new):
                continue
            before = next((q for q in old[i]["Questions"] if q["ID"] == qid), None)
            k, after = next(((k, q) for k, q in enumerate(new[i]["Questions"]) if q["ID"] == qid), (0, None))
            if before is None or after is None:
                continue
            for name in ("Type", "Choices"):
                if after[name] != before[name]:
                    raise SessionConflict(f"Cases[{i}].Questions[{k}].{name}: question {qid} has answers, so its "
                                          f"{name} {'stays' if name == 'Type' else 'stay'}: rerun the session "
                                          "to change it")

    async def set_session_state(self: Archive, session_id: str, state: str) -> dict[str, Any]:
        """live (start: from ready or paused), paused (from live), ended (from ready, live or paused);
        anything else SessionConflict. Ending clears the join code and every seat."""
        target = target_state(state)
        async with self._session_lock(session_id):
            stored = await self.get_session(session_id)
            problem = transition_problem(stored["State"], target)
            if problem:
                raise SessionConflict(problem)
            doc = dict(stored)
            now = utc_now()
            doc["State"] = target
            doc["Updated"] = next_updated(stored["Updated"])
            if target == "live" and not doc["Started"]:
                doc["Started"] = now
            if target == "ended":
                doc.update({"Ended": now, "Code": "", "Asked": None})
            return await self._write_session(doc, expect_updated=stored["Updated"])

    async def rerun_session(self: Archive, session_id: str, author: str) -> dict[str, Any]:
        """A new session (ready, its own code, no answers, nothing revealed) with the cases and questions
        of this one (those whose case was deleted left out)."""
        stored = await self.get_session(session_id)
        cases = [dict(copy.deepcopy(e), Missing=False) for e in stored["Cases"] if not e["Missing"]]
        return await self._new_session({"Title": stored["Title"], "Mode": stored["Mode"], "Cases": cases}, author)

    async def delete_session(self: Archive, session_id: str) -> None:
        """Delete a session with its participants and answers. Raises NotFound."""
        async with self._session_lock(session_id):
            await self._writes.serialised(self._writer.delete_session, session_id)
            self._open_sessions.pop(session_id, None)
            self._unseat_all(session_id)
            await self._refresh_held_back()
        self._tell_session(session_id, None)

    def _entry_of(self: Archive, doc: dict[str, Any], case_index: Any) -> dict[str, Any]:
        if type(case_index) is not int or not 0 <= case_index < len(doc["Cases"]):
            raise NotFound(f"no case {case_index} in session {doc['ID']} (it has {len(doc['Cases'])}, from 0)")
        return doc["Cases"][case_index]

    async def reveal_session_case(self: Archive, session_id: str, case_index: int) -> dict[str, Any]:
        """Reveal a case of the session (for good): its answers close, students see it whole."""
        async with self._session_lock(session_id):
            stored = await self.get_session(session_id)
            self._entry_of(stored, case_index)
            if stored["State"] == "ended":
                raise SessionConflict("the session has ended: nothing more is revealed in it")
            if case_index in stored["Revealed"]:
                return stored
            doc = dict(stored, Revealed=sorted([*stored["Revealed"], case_index]),
                       Updated=next_updated(stored["Updated"]))
            return await self._write_session(doc, expect_updated=stored["Updated"])

    async def ask_session_question(self: Archive, session_id: str, case_index: int,
                                   question_id: str) -> dict[str, Any]:
        """Put a question on every screen (Asked); answers are taken for it only."""
        async with self._session_lock(session_id):
            stored = await self.get_session(session_id)
            entry = self._entry_of(stored, case_index)
            if not any(q["ID"] == question_id for q in entry["Questions"]):
                raise NotFound(f"no question {question_id} in case {case_index} of the session")
            if stored["State"] not in ("live", "paused"):
                raise SessionConflict("the session has ended: no more questions" if stored["State"] == "ended"
                                      else "start the session before asking")
            if entry["Missing"]:
                raise SessionConflict(f"case {case_index} of the session was deleted: its questions cannot be asked")
            if case_index in stored["Revealed"]:
                raise SessionConflict(f"case {case_index} is revealed: its answers are closed")
            asked = {"Case": case_index, "Question": question_id}
            if stored["Asked"] == asked:
                return stored
            doc = dict(stored, Asked=asked, Updated=next_updated(stored["Updated"]))
            return await self._write_session(doc, expect_updated=stored["Updated"])

    async def close_session_question(self: Archive, session_id: str) -> dict[str, Any]:
        """No question on screens (Asked null)."""
        async with self._session_lock(session_id):
            stored = await self.get_session(session_id)
            if stored["State"] == "ended":
                raise SessionConflict("the session has ended")
            if stored["Asked"] is None:
                return stored
            return await self._write_session(dict(stored, Asked=None, Updated=next_updated(stored["Updated"])),
                                            expect_updated=stored["Updated"])

    async def save_session_view(self: Archive, session_id: str, view: dict[str, Any] | None) -> None:
        """Keep the presenter's last view so a restart resumes it (Updated unchanged, nobody told).
        An ended session's view is not kept (nothing resumes it): a save that crossed the end is
        dropped. Raises NotFound, SessionInvalid (not an object of at most 4096 bytes)."""
        view = check_view(view)
        doc = self._open_sessions.get(session_id)
        if doc is None:
            await self.get_session(session_id)       # NotFound, or ended:
            return
        text = json.dumps(view, ensure_ascii=False) if view is not None else None
        await self._writes.serialised(self._writer.set_session_view, session_id, text)
        if session_id in self._open_sessions:
            self._open_sessions[session_id]["View"] = copy.deepcopy(view)

    # ---------------------------------------------------------------- participants and answers

    async def join_session(self: Archive, code: str, nickname: str, token: str | None = None) -> Seat:
        """A seat in the open session with this join code (NotFound "no live session has that code").
        A nickname taken there is SessionConflict, unless ``token`` is that participant's own seat
        (a rejoin: the same participant, the same token). A wrong code's NotFound is raised before
        the first await: the web layer's throttle of wrong codes counts on it (tested with joins
        sent together)."""
        name = nickname_of(nickname)
        if not isinstance(code, str) or not CODE.fullmatch(code):
            raise NotFound(NO_CODE)
        doc = next((d for d in self._open_sessions.values() if d["Code"] == code), None)
        if doc is None:
            raise NotFound(NO_CODE)
        sid = doc["ID"]
        key = nickname_key(name)
        async with self._session_lock(sid):
            if sid not in self._open_sessions:
                raise NotFound(NO_CODE)
            seated = self._seated.get(sid, {})
            mine = self._seats.get(token_hash(token)) if isinstance(token, str) and token else None
            if mine is not None and mine[0] == sid:
                pid = mine[1]
                if nickname_key(mine[2]) != key:       # a rejoin under another name (if nobody has it)
                    await self._writes.serialised(self._writer.rename_participant, pid, name, key)
                    self._seat(sid, pid, name, token_hash(token))
                    return Seat(sid, pid, name, token)
                return Seat(sid, pid, mine[2], token)
            if any(nickname_key(n) == key for n, _ in seated.values()):
                raise SessionConflict("that nickname is taken here: choose another")
            if len(seated) >= MAX_PARTICIPANTS:
                raise SessionConflict(f"this session has its {MAX_PARTICIPANTS} participants: no more can join")
            pid = str(uuid.uuid4())
            new_token = secrets.token_urlsafe(24)
            sha = token_hash(new_token)
            await self._writes.serialised(self._writer.add_participant, sid, pid, name, key, sha, utc_now(),
                                          MAX_PARTICIPANTS)
            self._seat(sid, pid, name, sha)
            return Seat(sid, pid, name, new_token)

    def session_of_code(self: Archive, code: str) -> str | None:
        """The ID of the open session with this join code, from memory, or None: the web layer asks
        it to tell a rejoin (a seat of that session held) from a new seat before any await."""
        if not isinstance(code, str) or not CODE.fullmatch(code):
            return None
        return next((sid for sid, d in self._open_sessions.items() if d["Code"] == code), None)

    def seat_of(self: Archive, token: str) -> Seat | None:
        """The seat a token holds, from memory (asked on every request of a seated student); None for
        an unknown token or a session that ended or was deleted."""
        if not isinstance(token, str) or not token or len(token) > 256:
            return None
        found = self._seats.get(token_hash(token))
        if found is None or found[0] not in self._open_sessions:
            return None
        return Seat(found[0], found[1], found[2], token)

    async def record_answer(self: Archive, session_id: str, participant_id: str, case_index: int,
                            question_id: str, answer: Any) -> dict[str, Any]:
        """Store a participant's answer to the question asked now (a second one replaces the first).
        Refused (SessionConflict) when the session is not live, the case is revealed, or the question
        is not the one asked; SessionInvalid for an answer of the wrong shape."""
        async with self._session_lock(session_id):
            doc = self._open_sessions.get(session_id)
            if doc is None:
                await self.get_session(session_id)     # NotFound, or:
                raise SessionConflict("the session has ended: answers are closed")
            seated = self._seated.get(session_id, {})
            if participant_id not in seated:
                raise NotFound(f"no participant {participant_id} in session {session_id}")
            if doc["State"] != "live":
                raise SessionConflict(f"the session is {doc['State']}: answers are taken while it is live")
            if type(case_index) is not int or not 0 <= case_index < len(doc["Cases"]):
                raise SessionInvalid(f"Case: an index of the session's cases (0 to {len(doc['Cases']) - 1})")
            if case_index in doc["Revealed"]:
                raise SessionConflict("answers closed when the teacher revealed the case")
            if doc["Asked"] != {"Case": case_index, "Question": question_id}:
                raise SessionConflict("that question is not the one asked now")
            entry = doc["Cases"][case_index]
            question = next(q for q in entry["Questions"] if q["ID"] == question_id)
            image = await self._tap_image(entry, question) if question["Type"] == "tap" else None
            value = check_answer(question, answer, image)
            row = await self._writes.serialised(self._writer.put_answer, session_id, participant_id, case_index,
                                                question_id, json.dumps(value, ensure_ascii=False), utc_now())
        for fn in list(self._answer_listeners):
            try:
                fn(session_id, dict(row))
            except Exception as e:
                log.error("an answer listener failed: %s", e, exc_info=e)
        return row

    async def _tap_image(self: Archive, entry: dict[str, Any], question: dict[str, Any]) -> dict[str, int]:
        """Rows and Columns of a tap question's key image (remembered until the next case or session
        write: a class answering at once reads the case once)."""
        key = (entry["Case"], question["KeyImage"])
        hit = self._tap_images.get(key)
        if hit is not None:
            return hit
        try:
            case = await self.get_case(entry["Case"])
        except NotFound:
            raise SessionConflict("the case of this question was deleted") from None
        kis = case["KeyImages"]
        if question["KeyImage"] >= len(kis):
            raise SessionConflict(f"the case has no key image {question['KeyImage']} any more: the teacher must "
                                  "change the question")
        res = await self.index.resource(kis[question["KeyImage"]]["Instance"], Level.INSTANCE)
        if res is None:
            raise SessionConflict("the key image of this question is no longer on the board")
        tags = await self._image_tags(res)
        dims = {"Rows": int(tags["Rows"]), "Columns": int(tags["Columns"])}
        if len(self._tap_images) >= 1024:
            self._tap_images.clear()
        self._tap_images[key] = dims
        return dims

    # ---------------------------------------------------------------- what cases do to sessions

    async def _cases_deleted_in_sessions(self: Archive, session_ids: list[str]) -> None:
        """After a case's delete marked its entries Missing (same transaction): memory and listeners."""
        for sid in session_ids:
            async with self._session_lock(sid):
                doc = await self.index.teaching_session(sid)
                if doc is None or doc["State"] == "ended":
                    continue
                kept = self._open_sessions.get(sid)
                if kept is not None:
                    doc["View"] = kept.get("View")
                self._open_sessions[sid] = {k: v for k, v in doc.items() if k != "Participants"}
        await self._refresh_held_back()
        for sid in session_ids:
            try:
                self._tell_session(sid, await self.get_session(sid))
            except NotFound:
                pass
