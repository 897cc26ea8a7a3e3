"""Teaching sessions in the SQLite index: their tables (schema 7) and the reads and writes of
``SqliteReader`` / ``SqliteWriter`` about them.

A session is one row of ``teaching_sessions``: the board's columns (state, join code, times) and
the rest of its document as JSON; the presenter's last view has a column of its own, because the
live channel saves it every few seconds and the document may be large. Its participants (the
sha256 of each seat's token, never the token) and their answers are rows that go with it (ON
DELETE CASCADE). Cases are named by their public ID inside the document, not by a reference: a
deleted case stays in the session, marked Missing, in the same transaction as its delete.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..records import NotFound
from ..sessionrules import SessionConflict, SessionInvalid, SessionStale

SESSION_SCHEMA = """
CREATE TABLE IF NOT EXISTS teaching_sessions(
    id INTEGER PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    code TEXT NOT NULL DEFAULT '',       -- 4 digits while not ended, '' once ended
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    document TEXT NOT NULL,              -- Title, Mode, Author, Started, Ended, Cases, Revealed, Asked
    view TEXT                            -- the presenter's last view (JSON), NULL: none yet
);
CREATE UNIQUE INDEX IF NOT EXISTS teaching_sessions_code ON teaching_sessions(code) WHERE code <> '';
CREATE TABLE IF NOT EXISTS session_participants(
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES teaching_sessions(id) ON DELETE CASCADE,
    public_id TEXT NOT NULL UNIQUE,
    nickname TEXT NOT NULL,
    nickname_key TEXT NOT NULL,          -- folded (sessionrules.nickname_key): one per session
    token_sha256 TEXT NOT NULL UNIQUE,
    joined TEXT NOT NULL,
    UNIQUE(session_id, nickname_key)
);
CREATE TABLE IF NOT EXISTS session_answers(
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES teaching_sessions(id) ON DELETE CASCADE,
    participant_id INTEGER NOT NULL REFERENCES session_participants(id) ON DELETE CASCADE,
    case_index INTEGER NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,                -- JSON
    at TEXT NOT NULL,
    UNIQUE(participant_id, case_index, question)
);
CREATE INDEX IF NOT EXISTS session_answers_session ON session_answers(session_id, id);
"""

# one statement each, for the migration to schema 7 (run one by one inside its transaction)
SESSION_STATEMENTS = [st.strip() + ";" for st in SESSION_SCHEMA.split(";\n") if st.strip()]

# what the document column holds (the others are columns, or counted)
_OWN = ("ID", "State", "Code", "Created", "Updated", "View", "Participants")


def document_json(doc: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in doc.items() if k not in _OWN}, ensure_ascii=False, sort_keys=True)


@dataclass
class SessionWrite:
    """A session for the index writer. ``cases``: the case IDs that must be on the board (the entries
    not Missing); ``expect_updated``: a replace made from the copy with this Updated."""
    public_id: str
    state: str
    code: str
    created: str
    updated: str
    document: dict[str, Any]
    cases: list[str]
    expect_updated: str | None = None


@dataclass
class StoredParticipant:
    session_id: str
    participant_id: str
    nickname: str
    token_sha256: str


_COLS = ("s.public_id, s.state, s.code, s.created, s.updated, s.document, s.view, "
         "(SELECT COUNT(*) FROM session_participants p WHERE p.session_id = s.id)")


def session_document(row: tuple) -> dict[str, Any]:
    """A stored row as the document the archive gives."""
    pub, state, code, created, updated, document, view, participants = row
    doc = json.loads(document)
    doc.update({"ID": pub, "State": state, "Code": code, "Created": created, "Updated": updated,
                "View": json.loads(view) if view else None, "Participants": participants})
    return doc


def _answer(row: tuple) -> dict[str, Any]:
    case_index, question, participant, nickname, answer, at = row
    return {"Case": case_index, "Question": question, "Participant": participant, "Nickname": nickname,
            "Answer": json.loads(answer), "At": at}


class SessionReads:
    """The teaching-session reads of ``SqliteReader`` (which gives ``_all`` and ``_one``)."""

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]: ...   # SqliteReader's

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> tuple | None: ...

    async def teaching_sessions(self, open_only: bool = False) -> list[dict[str, Any]]:
        """Every session's document, newest first (``open_only``: those not ended)."""
        where = " WHERE s.state <> 'ended'" if open_only else ""
        return [session_document(r) for r in await self._all(
            f"SELECT {_COLS} FROM teaching_sessions s{where} ORDER BY s.created DESC, s.id DESC")]

    async def teaching_session(self, public_id: str) -> dict[str, Any] | None:
        row = await self._one(f"SELECT {_COLS} FROM teaching_sessions s WHERE s.public_id=?", (public_id,))
        return None if row is None else session_document(row)

    async def session_answers(self, public_id: str) -> list[dict[str, Any]]:
        return [_answer(r) for r in await self._all(
            "SELECT a.case_index, a.question, p.public_id, p.nickname, a.answer, a.at FROM teaching_sessions s "
            "JOIN session_answers a ON a.session_id = s.id JOIN session_participants p ON p.id = a.participant_id "
            "WHERE s.public_id=? ORDER BY a.id", (public_id,))]

    async def session_has_answers(self, public_id: str) -> bool:
        return await self._one("SELECT 1 FROM session_answers a JOIN teaching_sessions s ON s.id = a.session_id "
                               "WHERE s.public_id=? LIMIT 1", (public_id,)) is not None

    async def session_answered_questions(self, public_id: str) -> set[tuple[int, str]]:
        """(case index, question ID) of the questions that have answers."""
        return {(r[0], r[1]) for r in await self._all(
            "SELECT DISTINCT a.case_index, a.question FROM session_answers a JOIN teaching_sessions s "
            "ON s.id = a.session_id WHERE s.public_id=?", (public_id,))}

    async def open_session_participants(self) -> list[StoredParticipant]:
        """The participants of the sessions not ended: the seats the archive knows at start."""
        return [StoredParticipant(*r) for r in await self._all(
            "SELECT s.public_id, p.public_id, p.nickname, p.token_sha256 FROM session_participants p "
            "JOIN teaching_sessions s ON s.id = p.session_id WHERE s.state <> 'ended' ORDER BY p.id")]


class SessionWrites:
    """The teaching-session writes of ``SqliteWriter`` (which gives ``_transaction``)."""

    def _transaction(self, fn, *args, durable: bool = True) -> Any: ...   # SqliteWriter's

    def put_session(self, s: SessionWrite, create: bool) -> None:
        """Insert or replace a session's row in one transaction: the cases it names are checked to be
        on the board (SessionInvalid naming the entry), a replace that the stored Updated no longer
        matches is SessionStale, a join code in use by another open session SessionConflict."""
        def run(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT id, updated FROM teaching_sessions WHERE public_id=?", (s.public_id,)).fetchone()
            if create and row is not None:
                raise SessionConflict(f"session {s.public_id} is already on this board")
            if not create and row is None:
                raise NotFound(f"no session {s.public_id}")
            if s.expect_updated is not None and row is not None and row[1] != s.expect_updated:
                raise SessionStale()
            for i, entry in enumerate(s.document.get("Cases", [])):
                if entry.get("Case") in s.cases and c.execute(
                        "SELECT 1 FROM cases WHERE public_id=?", (entry["Case"],)).fetchone() is None:
                    raise SessionInvalid(f"Cases[{i}].Case: no case {entry['Case']} on this board")
            try:
                if row is None:
                    c.execute("INSERT INTO teaching_sessions(public_id, state, code, created, updated, document) "
                              "VALUES(?,?,?,?,?,?)", (s.public_id, s.state, s.code, s.created, s.updated,
                                                      document_json(s.document)))
                else:
                    c.execute("UPDATE teaching_sessions SET state=?, code=?, created=?, updated=?, document=? "
                              "WHERE id=?", (s.state, s.code, s.created, s.updated, document_json(s.document),
                                             row[0]))
            except sqlite3.IntegrityError:
                raise SessionConflict("that join code is in use by another session: try again") from None
        self._transaction(run)

    def delete_session(self, public_id: str) -> None:
        def run(c: sqlite3.Connection) -> None:
            if c.execute("DELETE FROM teaching_sessions WHERE public_id=?", (public_id,)).rowcount == 0:
                raise NotFound(f"no session {public_id}")
        self._transaction(run)

    def set_session_view(self, public_id: str, view: str | None) -> None:
        """The presenter's view (not synced: a view lost to a power cut is the one before)."""
        def run(c: sqlite3.Connection) -> None:
            if c.execute("UPDATE teaching_sessions SET view=? WHERE public_id=?", (view, public_id)).rowcount == 0:
                raise NotFound(f"no session {public_id}")
        self._transaction(run, durable=False)

    def add_participant(self, session_public_id: str, participant_public_id: str, nickname: str, key: str,
                        token_sha256: str, joined: str, most: int) -> None:
        """A new participant; SessionConflict when the nickname is taken there or the session is full."""
        def run(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT id, state FROM teaching_sessions WHERE public_id=?",
                            (session_public_id,)).fetchone()
            if row is None or row[1] == "ended":
                raise NotFound("no live session has that code")
            if c.execute("SELECT 1 FROM session_participants WHERE session_id=? AND nickname_key=?",
                         (row[0], key)).fetchone():
                raise SessionConflict("that nickname is taken here: choose another")
            n = c.execute("SELECT COUNT(*) FROM session_participants WHERE session_id=?", (row[0],)).fetchone()[0]
            if n >= most:
                raise SessionConflict(f"this session has its {most} participants: no more can join")
            c.execute("INSERT INTO session_participants(session_id, public_id, nickname, nickname_key, token_sha256, "
                      "joined) VALUES(?,?,?,?,?,?)",
                      (row[0], participant_public_id, nickname, key, token_sha256, joined))
        self._transaction(run)

    def rename_participant(self, participant_public_id: str, nickname: str, key: str) -> None:
        """A rejoin under another nickname (SessionConflict when another participant has it)."""
        def run(c: sqlite3.Connection) -> None:
            try:
                if c.execute("UPDATE session_participants SET nickname=?, nickname_key=? WHERE public_id=?",
                             (nickname, key, participant_public_id)).rowcount == 0:
                    raise NotFound(f"no participant {participant_public_id}")
            except sqlite3.IntegrityError:
                raise SessionConflict("that nickname is taken here: choose another") from None
        self._transaction(run)

    def put_answer(self, session_public_id: str, participant_public_id: str, case_index: int, question: str,
                   answer: str, at: str) -> dict[str, Any]:
        """One answer per participant per question: a second replaces the first (its place in the
        answer order stays). Not synced: a whole class answers at once, on an SD card."""
        def run(c: sqlite3.Connection) -> dict[str, Any]:
            found = c.execute("SELECT s.id, p.id FROM teaching_sessions s JOIN session_participants p ON "
                              "p.session_id = s.id WHERE s.public_id=? AND p.public_id=?",
                              (session_public_id, participant_public_id)).fetchone()
            if found is None:
                raise NotFound(f"no participant {participant_public_id} in session {session_public_id}")
            c.execute("INSERT INTO session_answers(session_id, participant_id, case_index, question, answer, at) "
                      "VALUES(?,?,?,?,?,?) ON CONFLICT(participant_id, case_index, question) DO UPDATE SET "
                      "answer=excluded.answer, at=excluded.at", (*found, case_index, question, answer, at))
            row = c.execute("SELECT a.case_index, a.question, p.public_id, p.nickname, a.answer, a.at FROM "
                            "session_answers a JOIN session_participants p ON p.id = a.participant_id WHERE "
                            "a.participant_id=? AND a.case_index=? AND a.question=?",
                            (found[1], case_index, question)).fetchone()
            return _answer(row)
        return self._transaction(run, durable=False)


def mark_case_missing(c: sqlite3.Connection, case_public_id: str, now: str) -> list[str]:
    """In a case's delete: its entries in sessions become Missing (their Updated moves on); the
    public IDs of the sessions changed."""
    touched = []
    rows = c.execute("SELECT s.id, s.public_id, s.document, s.updated FROM teaching_sessions s WHERE EXISTS "
                     "(SELECT 1 FROM json_each(s.document, '$.Cases') j WHERE json_extract(j.value, '$.Case') = ?)",
                     (case_public_id,)).fetchall()
    for sid, pub, document, updated in rows:
        doc = json.loads(document)
        for entry in doc.get("Cases", []):
            if entry.get("Case") == case_public_id:
                entry["Missing"] = True
        asked = doc.get("Asked")
        cases = doc.get("Cases", [])
        if asked and 0 <= asked.get("Case", -1) < len(cases) and cases[asked["Case"]]["Missing"]:
            doc["Asked"] = None          # its question cannot be answered any more
        c.execute("UPDATE teaching_sessions SET document=?, updated = CASE WHEN ? > updated THEN ? ELSE "
                  "strftime('%Y-%m-%dT%H:%M:%SZ', updated, '+1 second') END WHERE id=?",
                  (json.dumps(doc, ensure_ascii=False, sort_keys=True), now, now, sid))
        touched.append(pub)
    return touched
