"""Teaching cases in the SQLite index: their tables (schema 6), the full-text index, and the
reads and writes of ``SqliteReader`` / ``SqliteWriter`` about them.

A case is one row of ``cases`` (the board's columns, small: the search joins them) and one of
``case_documents`` (the document's own fields as JSON);
its studies and key images are rows that reference the resources (ON DELETE CASCADE), so a
study or instance that goes, by a delete, a recycle or a start-up reconcile, leaves every case
with it and no case names what is not there. ``cases_text`` (FTS5) holds every text field,
written in the same transaction as the case.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import unicodedata
from collections.abc import Iterable
from typing import Any

from ..caserules import CaseInvalid, fold_for_search, search_texts
from ..records import CaseConflict, CaseExists, CaseQuery, CaseStale, CaseWrite, IndexUnusable, NotFound, StoredCase
from .sqlite_query import descendants, marks
from .sqlite_sessions import mark_case_missing

# the full-text columns, in order, and their bm25 weights: a title hit outranks a keyword hit,
# which outranks the diagnosis, ... the references
CASE_TEXT_COLUMNS: tuple[tuple[str, float], ...] = (
    ("title", 10.0), ("keywords", 6.0), ("diagnosis", 4.0), ("findings", 3.0), ("differential", 2.0),
    ("history", 1.5), ("question", 1.0), ("discussion", 1.0), ("teaching", 1.0), ("refs", 0.5),
    ("author", 1.0), ("captions", 1.5), ("variants", 1.0), ("facets", 1.0))
# what students' search matches of an unknown case (its question, not its answer)
UNKNOWN_CASE_COLUMNS = ("history", "question", "facets")
_WEIGHTS = ", ".join(f"{w:g}" for _, w in CASE_TEXT_COLUMNS)
# Modalities of the board's own exports (key objects, presentation states): not what a case shows
NOT_A_CASE_MODALITY = ("KO", "PR")
MODALITY_TAG = "0008,0060"

CASE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS cases(
    id INTEGER PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    body_region TEXT NOT NULL DEFAULT '',
    category TEXT NOT NULL DEFAULT '',
    difficulty TEXT NOT NULL DEFAULT '',
    unknown INTEGER NOT NULL DEFAULT 0     -- an unknown case (students search its question only)
);
CREATE INDEX IF NOT EXISTS cases_state ON cases(state, id);
CREATE INDEX IF NOT EXISTS cases_unknown ON cases(id) WHERE unknown = 1;
-- the document's own fields (not ID, State, Created, Updated, Studies, KeyImages, Modalities), apart
-- from ``cases`` so that a filtered search reads small rows, not up to a megabyte of text each
CREATE TABLE IF NOT EXISTS case_documents(
    case_id INTEGER PRIMARY KEY REFERENCES cases(id) ON DELETE CASCADE,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS case_studies(
    case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    study_id INTEGER NOT NULL REFERENCES resources(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    PRIMARY KEY(case_id, study_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS case_studies_study ON case_studies(study_id);
CREATE TABLE IF NOT EXISTS case_key_images(
    case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    instance_id INTEGER NOT NULL REFERENCES resources(id) ON DELETE CASCADE,
    data TEXT NOT NULL,
    PRIMARY KEY(case_id, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS case_key_images_instance ON case_key_images(instance_id);
CREATE TABLE IF NOT EXISTS case_collections(
    case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    PRIMARY KEY(case_id, label)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS case_collections_label ON case_collections(label);
-- instances a key object referenced that the board has not received (IHE TCE), by SOP Instance UID
CREATE TABLE IF NOT EXISTS case_missing(
    case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    sop_instance_uid TEXT NOT NULL,
    PRIMARY KEY(case_id, sop_instance_uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS case_missing_uid ON case_missing(sop_instance_uid);
CREATE VIRTUAL TABLE IF NOT EXISTS cases_text USING fts5({", ".join(c for c, _ in CASE_TEXT_COLUMNS)},
    tokenize='unicode61 remove_diacritics 2', prefix='2 3');
CREATE TRIGGER IF NOT EXISTS cases_text_gone AFTER DELETE ON cases
    BEGIN DELETE FROM cases_text WHERE rowid = old.id; END;
"""

# one statement each, for the migration to schema 6 (run one by one inside its transaction)
CASE_STATEMENTS = [st.strip() + ";" for st in CASE_SCHEMA.split(";\n") if st.strip()]


def require_fts5(compile_options: set[str]) -> None:
    """The case search needs SQLite's FTS5 (in Python's own SQLite, and Debian's): refuse, saying
    so, to open an index with a SQLite built without it (``PRAGMA compile_options``)."""
    if "ENABLE_FTS5" not in compile_options:
        raise IndexUnusable(f"this SQLite ({sqlite3.sqlite_version}) was built without FTS5, which the teaching "
                            "cases' search needs: run pipacs with a Python whose sqlite3 has it (python.org's, "
                            "Debian's and Raspberry Pi OS's do); the index was not changed")


# ---------------------------------------------------------------- what a user types -> FTS5 MATCH

_PHRASE = re.compile(r'"([^"]*)"')
MAX_QUERY_TERMS = 32


def _is_token_char(ch: str) -> bool:
    """unicode61's token characters: letters, numbers, marks (folded away with the diacritics)
    and private-use characters; everything else separates words."""
    cat = unicodedata.category(ch)
    return cat[0] in "LNM" or cat == "Co"


def words(text: str) -> list[str]:
    """The words of ``text`` as unicode61 splits it; a run of marks alone is no word (the tokenizer
    drops it, and an empty term would make a whole search find nothing)."""
    out: list[str] = []
    current: list[str] = []
    for ch in text + " ":
        if _is_token_char(ch):
            current.append(ch)
            continue
        if current and any(unicodedata.category(c)[0] != "M" for c in current):
            out.append("".join(current))
        current = []
    return out


def fts_match(text: str) -> str:
    """A safe FTS5 MATCH expression for what a user typed: plain words become prefix terms, all
    of them required; "quoted phrases" stay phrases. Everything else (FTS5's own syntax: ``*``,
    ``-``, ``^``, ``:``, parentheses, NEAR/AND/OR/NOT, a quote left open) is plain text: every
    term is a quoted string of letters and digits, so the expression cannot fail to parse.
    "" when nothing searchable was typed. Beyond ``MAX_QUERY_TERMS`` terms the rest is left out."""
    text = fold_for_search(text)
    terms: list[str] = []
    at = 0
    for m in _PHRASE.finditer(text):
        terms += [f'"{t}"*' for t in words(text[at:m.start()])]
        phrase = words(m.group(1))
        if phrase:
            terms.append('"' + " ".join(phrase) + '"')
        at = m.end()
    terms += [f'"{t}"*' for t in words(text[at:])]
    return " AND ".join(terms[:MAX_QUERY_TERMS])


def like_terms(text: str) -> list[str]:
    """The words of ``text`` as LIKE patterns: ``CaseQuery.scan``, the bench's yardstick only (a scan
    of the documents, beside which bench/cases.py measures the FTS5 search); no route uses it."""
    found = words(fold_for_search(text))[:MAX_QUERY_TERMS]
    return ["%" + w.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%" for w in found]


def _filters(q: CaseQuery) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if q.students:
        where.append("c.state = 'published'")
    if q.state:
        where.append("c.state = ?")
        params.append(q.state)
    for col, value in (("body_region", q.body_region), ("category", q.category), ("difficulty", q.difficulty)):
        if value:
            where.append(f"c.{col} = ?")
            params.append(value)
    if q.collection:
        where.append("EXISTS (SELECT 1 FROM case_collections cc WHERE cc.case_id = c.id AND cc.label = ?)")
        params.append(q.collection)
        if q.students and q.held_back:     # a collection's name may say the answer of a held-back case
            where.append("c.public_id NOT IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(sorted(q.held_back)))
    if q.modality.upper() in NOT_A_CASE_MODALITY:
        where.append("0")       # what the board makes from a case is not one of its modalities
    elif q.modality:
        where.append("EXISTS (SELECT 1 FROM case_studies cs JOIN resources se ON se.parent_id = cs.study_id "
                     "JOIN main_tags t ON t.resource_id = se.id AND t.tag = ? WHERE cs.case_id = c.id "
                     "AND t.value = ?)")
        params += [MODALITY_TAG, q.modality.upper()]
    return where, params


def case_query_sql(q: CaseQuery) -> tuple[str, list[Any], str, list[Any]]:
    """(the page of matching case ids, its parameters, the count of every match, its parameters)."""
    where, params = _filters(q)
    match = "" if q.scan else fts_match(q.text)
    likes = like_terms(q.text) if q.scan else []
    if match and not where:
        # the full-text index alone: its rowid is the case's id (written in the same transaction)
        source, key = "cases_text", "cases_text.rowid"
    elif match:
        # the full-text match first, then its cases (CROSS JOIN keeps that order: the planner
        # would otherwise walk every case of a filter and ask the index about each)
        source, key = "cases_text CROSS JOIN cases c ON c.id = cases_text.rowid", "c.id"
    elif likes:
        source, key = "cases c JOIN case_documents cd ON cd.case_id = c.id", "c.id"
    else:
        source, key = "cases c", "c.id"
    if match and q.students:
        # students: a known case by every text column, an unknown one by its question's columns
        # only (two matches of the one index, so their ranks compare)
        restricted = "{" + " ".join(UNKNOWN_CASE_COLUMNS) + "} : (" + match + ")"
        unknown = "SELECT id FROM cases WHERE unknown = 1"
        held: list[Any] = []
        if q.held_back:      # cases a teaching session holds back: unknown ones meanwhile
            unknown += " OR public_id IN (SELECT value FROM json_each(?))"
            held = [json.dumps(sorted(q.held_back))]
        # ("+rowid": a filter of each match, not a lookup of the index per unknown case)
        source = (f"(SELECT rowid AS id, bm25(cases_text, {_WEIGHTS}) AS rank FROM cases_text WHERE "
                  f"cases_text MATCH ? AND +rowid NOT IN ({unknown}) UNION ALL SELECT rowid, "
                  f"bm25(cases_text, {_WEIGHTS}) FROM cases_text WHERE cases_text MATCH ? AND +rowid IN ({unknown})) "
                  "m CROSS JOIN cases c ON c.id = m.id")
        key = "c.id"
        params[0:0] = [match, *held, restricted, *held]
        order = "m.rank, c.id"
    elif match:
        where.insert(0, "cases_text MATCH ?")
        params.insert(0, match)
        order = f"bm25(cases_text, {_WEIGHTS}), {key}"
    else:
        order = f"{key} DESC"
    for pattern in likes:
        where.append("cd.document LIKE ? ESCAPE '\\'")
        params.append(pattern)
    cond = (" WHERE " + " AND ".join(where)) if where else ""
    page = f"SELECT {key} FROM {source}{cond} ORDER BY {order} LIMIT ? OFFSET ?"
    count = f"SELECT COUNT(*) FROM {source}{cond}"
    return page, [*params, q.limit if q.limit > 0 else -1, q.since], count, params


# ---------------------------------------------------------------- reads (mixed into SqliteReader)

BIG_DECODE = 256 * 1024     # bytes of stored JSON decoded on the loop at most; more on a thread


async def decoded(texts: list[str]) -> list[Any]:
    """Stored JSON texts decoded: on a thread when they are many or large (a page of 1000 whole
    documents, a case of 500 annotated key images), so the loop keeps answering meanwhile."""
    if sum(len(t) for t in texts) > BIG_DECODE:
        return await asyncio.to_thread(lambda: [json.loads(t) for t in texts])
    return [json.loads(t) for t in texts]



class CaseReads:
    """The case reads of ``SqliteReader`` (which gives ``_all`` and ``_one``)."""

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]: ...   # SqliteReader's

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> tuple | None: ...

    async def case_id_of(self, public_id: str) -> int | None:
        row = await self._one("SELECT id FROM cases WHERE public_id=?", (public_id,))
        return None if row is None else row[0]

    async def case_ids_of(self, public_ids: list[str]) -> dict[str, int]:
        """Public ID -> internal id of the cases known (the others left out), in one query."""
        return dict(await self._all("SELECT public_id, id FROM cases WHERE public_id IN "
                                    "(SELECT value FROM json_each(?))", (json.dumps(list(public_ids)),)))

    async def cases_by_ids(self, ids: list[int], summary: bool = False) -> list[StoredCase]:
        """In the order of ``ids`` (unknown ones left out). ``summary``: the document holds only
        Title, Author and Collections, and the key images only the first one's Instance (with
        their count as ``KeyImageCount`` in the document)."""
        out: dict[int, StoredCase] = {}
        for chunk in _chunks(ids, 500):
            m = marks(len(chunk))
            if summary:
                rows = await self._all(
                    "SELECT id, public_id, state, created, updated, json_object('Title', json_extract(document, "
                    "'$.Title'), 'Author', json_extract(document, '$.Author'), 'Collections', "
                    "json_extract(document, '$.Collections'), 'BodyRegion', body_region, 'Category', category, "
                    "'Difficulty', difficulty, 'Unknown', unknown = 1) FROM cases JOIN case_documents ON case_id = id "
                    f"WHERE id IN ({m})", chunk)
            else:
                rows = await self._all(f"SELECT id, public_id, state, created, updated, document FROM cases "
                                       f"JOIN case_documents ON case_id = id WHERE id IN ({m})", chunk)
            docs = await decoded([r[5] for r in rows])
            for (i, pub, state, created, updated, _), doc in zip(rows, docs):
                out[i] = StoredCase(i, pub, state, created, updated, doc)
            for case_id, study_id, study_pub in await self._all(
                    f"SELECT cs.case_id, cs.study_id, r.public_id FROM case_studies cs JOIN resources r ON "
                    f"r.id = cs.study_id WHERE cs.case_id IN ({m}) ORDER BY cs.case_id, cs.position", chunk):
                out[case_id].studies.append((study_id, study_pub))
            if summary:
                for case_id, n, first in await self._all(
                        "SELECT k.case_id, COUNT(*), (SELECT json_extract(k2.data, '$.Instance') FROM "
                        "case_key_images k2 WHERE k2.case_id = k.case_id ORDER BY k2.position LIMIT 1) "
                        f"FROM case_key_images k WHERE k.case_id IN ({m}) GROUP BY k.case_id", chunk):
                    out[case_id].document["KeyImageCount"] = n
                    out[case_id].key_images.append({"Instance": first})
            else:
                rows = await self._all(f"SELECT case_id, data FROM case_key_images WHERE case_id IN ({m}) "
                                       "ORDER BY case_id, position", chunk)
                for (case_id, _), ki in zip(rows, await decoded([r[1] for r in rows])):
                    out[case_id].key_images.append(ki)
        return [out[i] for i in ids if i in out]

    async def find_cases(self, q: CaseQuery) -> tuple[list[int], int]:
        page, page_params, count, count_params = case_query_sql(q)
        ids = [r[0] for r in await self._all(page, page_params)]
        total = (await self._one(count, count_params))[0]
        return ids, total

    async def cases_using_studies(self, study_ids: list[int]) -> list[int]:
        out: list[int] = []
        for chunk in _chunks(study_ids, 500):
            out += [r[0] for r in await self._all(
                f"SELECT DISTINCT case_id FROM case_studies WHERE study_id IN ({marks(len(chunk))}) "
                "ORDER BY case_id", chunk)]
        return sorted(set(out))

    async def cases_missing(self, sop_instance_uids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for chunk in _chunks(sop_instance_uids, 500):
            for uid, pub in await self._all(
                    "SELECT m.sop_instance_uid, c.public_id FROM case_missing m JOIN cases c ON c.id = m.case_id "
                    f"WHERE m.sop_instance_uid IN ({marks(len(chunk))}) ORDER BY c.id", chunk):
                out.setdefault(uid, []).append(pub)
        return out

    async def studies_not_deidentified(self, study_ids: list[int]) -> dict[int, bool]:
        """Those of ``study_ids`` whose patient has an instance not known to be de-identified:
        study id -> True when some of them were not read yet (stored before the index kept it)."""
        out: dict[int, bool] = {}
        for chunk in _chunks(study_ids, 500):
            for sid, unread in await self._all(
                    "SELECT s.id, MAX(i.identity_removed IS NULL) FROM resources s JOIN resources st ON "
                    "st.parent_id = s.parent_id JOIN resources se ON se.parent_id = st.id JOIN resources i ON "
                    f"i.parent_id = se.id WHERE s.id IN ({marks(len(chunk))}) AND COALESCE(i.identity_removed, 0) "
                    "= 0 GROUP BY s.id", chunk):
                out[sid] = bool(unread)
        return out

    async def middle_instances(self, study_ids: list[int]) -> dict[int, str]:
        """The middle instance (by IndexInSeries) of each study's first image series: a case's
        thumbnail when it has no key image. One query for a page of summaries (a window over the
        instances of each study's first series), not one per study."""
        out: dict[int, str] = {}
        skip = marks(len(NOT_A_CASE_MODALITY) + 1)
        for chunk in _chunks(study_ids, 500):
            out.update(await self._all(
                "WITH first(study, series) AS (SELECT st.id, (SELECT se.id FROM resources se WHERE se.parent_id "
                "= st.id AND NOT EXISTS (SELECT 1 FROM main_tags t WHERE t.resource_id = se.id AND t.tag = ? AND "
                f"t.value IN ({skip})) ORDER BY se.id LIMIT 1) FROM resources st WHERE st.id IN "
                f"({marks(len(chunk))})), "
                "ranked AS (SELECT f.study, i.public_id, ROW_NUMBER() OVER (PARTITION BY f.study ORDER BY "
                "CAST(m.value AS INTEGER), i.id) AS n, COUNT(*) OVER (PARTITION BY f.study) AS total FROM first f "
                "JOIN resources i ON i.parent_id = f.series LEFT JOIN metadata m ON m.resource_id = i.id AND "
                "m.name = 'IndexInSeries') "
                "SELECT study, public_id FROM ranked WHERE n = total / 2 + 1",
                (MODALITY_TAG, *NOT_A_CASE_MODALITY, "SR", *chunk)))
        return out


# ---------------------------------------------------------------- writes (mixed into SqliteWriter)

_OWN_COLUMNS = ("ID", "State", "Created", "Updated", "Studies", "KeyImages", "Modalities")


def _document_json(doc: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in doc.items() if k not in _OWN_COLUMNS}, ensure_ascii=False,
                      sort_keys=True)


def _write_text(c: sqlite3.Connection, case_id: int, doc: dict[str, Any], key_images: list[dict[str, Any]]) -> None:
    modalities: list[str] = []
    if doc.get("Unknown"):      # its facets: the modalities of its studies' series, as Modalities says
        modalities = [r[0] for r in c.execute(
            "SELECT DISTINCT t.value FROM case_studies cs JOIN resources se ON se.parent_id = cs.study_id "
            "JOIN main_tags t ON t.resource_id = se.id AND t.tag = ? WHERE cs.case_id = ? "
            f"AND t.value NOT IN ({marks(len(NOT_A_CASE_MODALITY))}) ORDER BY t.value",
            (MODALITY_TAG, case_id, *NOT_A_CASE_MODALITY))]
    texts = search_texts({**doc, "KeyImages": key_images}, modalities)
    c.execute("DELETE FROM cases_text WHERE rowid=?", (case_id,))
    cols = [name for name, _ in CASE_TEXT_COLUMNS]
    c.execute(f"INSERT INTO cases_text(rowid, {', '.join(cols)}) VALUES(?, {marks(len(cols))})",
              (case_id, *(texts[k] for k in cols)))


def reindex_case_text(c: sqlite3.Connection, case_id: int) -> None:
    """The full-text row of a case whose key images changed under it (a deleted instance)."""
    doc = json.loads(c.execute("SELECT document FROM case_documents WHERE case_id=?", (case_id,)).fetchone()[0])
    kis = [json.loads(r[0]) for r in c.execute("SELECT data FROM case_key_images WHERE case_id=? ORDER BY position",
                                               (case_id,))]
    _write_text(c, case_id, doc, kis)


def cases_of_resource(c: sqlite3.Connection, internal_id: int) -> tuple[list[str], list[str], list[int]]:
    """Before a resource is deleted: (public IDs of the cases using a study at or below it, public
    IDs of the cases holding a key image below it, internal ids of all of them)."""
    using = c.execute(
        f"{descendants(1)} SELECT DISTINCT ca.id, ca.public_id FROM d JOIN case_studies cs ON cs.study_id = d.id "
        "JOIN cases ca ON ca.id = cs.case_id WHERE d.level = 1 ORDER BY ca.id", (internal_id,)).fetchall()
    holding = c.execute(
        f"{descendants(1)} SELECT DISTINCT ca.id, ca.public_id FROM d JOIN case_key_images k ON k.instance_id = d.id "
        "JOIN cases ca ON ca.id = k.case_id WHERE d.level = 3 ORDER BY ca.id", (internal_id,)).fetchall()
    return [r[1] for r in using], [r[1] for r in holding], sorted({r[0] for r in using} | {r[0] for r in holding})


STUDY_INSTANCE_UID_TAG = "0020,000d"


def study_uids_below(c: sqlite3.Connection, internal_id: int) -> list[str]:
    """The Study Instance UIDs of the studies at or below a resource (asked before it is deleted)."""
    return [r[0] for r in c.execute(
        f"{descendants(1)} SELECT t.value FROM d JOIN main_tags t ON t.resource_id = d.id AND t.tag = ? "
        "WHERE d.level = 1", (internal_id, STUDY_INSTANCE_UID_TAG))]


def drop_missing_of_studies(c: sqlite3.Connection, case_id: int, study_uids: list[str]) -> None:
    """A study left a case (deleted with ?force): the instances of it the case awaited (Missing)
    leave it too; they could never become its key images."""
    if not study_uids:
        return
    row = c.execute("SELECT document FROM case_documents WHERE case_id=?", (case_id,)).fetchone()
    doc = json.loads(row[0])
    gone = set(study_uids)
    kept = [m for m in doc.get("Missing", []) if m.get("StudyInstanceUID") not in gone]
    if len(kept) == len(doc.get("Missing", [])):
        return
    dropped = [m["SOPInstanceUID"] for m in doc["Missing"] if m.get("StudyInstanceUID") in gone]
    doc["Missing"] = kept
    c.execute("UPDATE case_documents SET document=? WHERE case_id=?", (_document_json(doc), case_id))
    c.executemany("DELETE FROM case_missing WHERE case_id=? AND sop_instance_uid=?", [(case_id, u) for u in dropped])


class CaseWrites:
    """The case writes of ``SqliteWriter`` (which gives ``_transaction``)."""

    def _transaction(self, fn, *args, durable: bool = True) -> Any: ...   # SqliteWriter's

    def put_case(self, case: CaseWrite, create: bool) -> None:
        """Insert (``create``: CaseExists if its ID is taken) or replace a case, its rows and its
        text, in one transaction. Studies and key images are checked here against the index as it
        is now: CaseInvalid naming the field when one is gone or not of the case's studies."""
        def run(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT id FROM cases WHERE public_id=?", (case.public_id,)).fetchone()
            if create and row is not None:
                raise CaseExists(case.public_id)
            if not create and row is None:
                raise NotFound(f"no case {case.public_id}")
            if case.expect_updated is not None and c.execute(
                    "SELECT updated FROM cases WHERE id=?", (row[0],)).fetchone()[0] != case.expect_updated:
                raise CaseStale()
            study_ids = []
            for i, pub in enumerate(case.studies):
                found = c.execute("SELECT id FROM resources WHERE public_id=? AND level=1", (pub,)).fetchone()
                if found is None:
                    raise CaseInvalid(f"Studies[{i}]: no study {pub} on this board")
                study_ids.append(found[0])
            instance_ids = []
            for i, ki in enumerate(case.key_images):
                found = c.execute(
                    "SELECT i.id, st.public_id FROM resources i JOIN resources se ON se.id = i.parent_id "
                    "JOIN resources st ON st.id = se.parent_id WHERE i.public_id=? AND i.level=3",
                    (ki["Instance"],)).fetchone()
                if found is None or found[1] not in case.studies:
                    raise CaseInvalid(f"KeyImages[{i}].Instance: {ki['Instance']} is not an instance of the "
                                      "case's studies (add its study to Studies)")
                instance_ids.append(found[0])
            doc = case.document
            values = (case.state, case.created, case.updated, doc.get("BodyRegion", ""), doc.get("Category", ""),
                      doc.get("Difficulty", ""), int(bool(doc.get("Unknown"))))
            if row is None:
                case_id = c.execute("INSERT INTO cases(public_id, state, created, updated, body_region, category, "
                                    "difficulty, unknown) VALUES(?,?,?,?,?,?,?,?) RETURNING id",
                                    (case.public_id, *values)).fetchone()[0]
            else:
                case_id = row[0]
                c.execute("UPDATE cases SET state=?, created=?, updated=?, body_region=?, category=?, difficulty=?, "
                          "unknown=? WHERE id=?", (*values, case_id))
                for table in ("case_studies", "case_key_images", "case_collections", "case_missing"):
                    c.execute(f"DELETE FROM {table} WHERE case_id=?", (case_id,))
            c.execute("INSERT OR REPLACE INTO case_documents VALUES(?,?)", (case_id, _document_json(doc)))
            c.executemany("INSERT INTO case_studies VALUES(?,?,?)",
                          [(case_id, sid, n) for n, sid in enumerate(study_ids)])
            c.executemany("INSERT INTO case_key_images VALUES(?,?,?,?)",
                          [(case_id, n, iid, json.dumps(ki, ensure_ascii=False, sort_keys=True))
                           for n, (iid, ki) in enumerate(zip(instance_ids, case.key_images))])
            c.executemany("INSERT OR IGNORE INTO case_collections VALUES(?,?)",
                          [(case_id, label) for label in doc.get("Collections", [])])
            c.executemany("INSERT OR IGNORE INTO case_missing VALUES(?,?)",
                          [(case_id, m["SOPInstanceUID"]) for m in doc.get("Missing", [])])
            _write_text(c, case_id, doc, case.key_images)
        self._transaction(run)

    def delete_case(self, public_id: str, now: str = "") -> list[str]:
        """Delete a case; its entries in teaching sessions become Missing in the same transaction
        (the IDs of those sessions are returned)."""
        def run(c: sqlite3.Connection) -> list[str]:
            if c.execute("DELETE FROM cases WHERE public_id=?", (public_id,)).rowcount == 0:
                raise NotFound(f"no case {public_id}")
            return mark_case_missing(c, public_id, now)
        return self._transaction(run)

    def set_case_state(self, public_id: str, state: str, updated: str) -> None:
        def run(c: sqlite3.Connection) -> None:
            if c.execute("UPDATE cases SET state=?, updated=? WHERE public_id=?",
                         (state, updated, public_id)).rowcount == 0:
                raise NotFound(f"no case {public_id}")
        self._transaction(run)


def refuse_if_in_cases(public_ids: list[str], level_name: str, public_id: str, holding: list[str] = ()) -> None:
    """A study (or patient) that cases use, or a series or instance that holds key images of
    cases, is not deleted unless asked to take it out of them."""
    if public_ids:
        raise CaseConflict(f"the {level_name} {public_id} is used by case(s) {', '.join(public_ids)}: take it out "
                           "of them first, or delete with ?force to take it and its key images out of them",
                           public_ids)
    if holding:
        raise CaseConflict(f"the {level_name} {public_id} holds key images of case(s) {', '.join(holding)}: take "
                           "them out of the cases first, or delete with ?force to take them out with it",
                           list(holding))


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
