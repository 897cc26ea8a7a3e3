"""The SQLite index (the embedded default): schema and read queries.

Writes live in ``sqlite_writer``, on their own connection and thread; reads use this
aiosqlite connection, so browsing is never held up behind a batch of stores (WAL lets
them run side by side).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from ..find import Query, fold
from ..model import Level
from ..records import Resource
from . import IndexReader
from .sqlite_cases import CASE_SCHEMA, CASE_STATEMENTS, CaseReads
from .sqlite_query import descendants, marks, paged, student_visible, to_sql
from .sqlite_sessions import SESSION_SCHEMA, SESSION_STATEMENTS, SessionReads

SCHEMA_VERSION = 7

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources(
    id INTEGER PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    level INTEGER NOT NULL,
    parent_id INTEGER REFERENCES resources(id) ON DELETE CASCADE,
    last_update REAL NOT NULL,
    stable INTEGER NOT NULL DEFAULT 0,
    protected INTEGER NOT NULL DEFAULT 0,
    -- instances: PatientIdentityRemoved is YES (1), is not (0), not read yet (NULL: files indexed
    -- before schema 2, read again in the background; not shown to students until then)
    identity_removed INTEGER,
    -- studies: released to students by the teacher
    released INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS resources_parent ON resources(parent_id);
CREATE INDEX IF NOT EXISTS resources_level ON resources(level, id);
CREATE INDEX IF NOT EXISTS resources_unstable ON resources(stable, last_update);
CREATE TABLE IF NOT EXISTS main_tags(
    resource_id INTEGER NOT NULL REFERENCES resources(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(resource_id, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS main_tags_value ON main_tags(tag, value);
CREATE TABLE IF NOT EXISTS files(
    resource_id INTEGER PRIMARY KEY REFERENCES resources(id) ON DELETE CASCADE,
    uuid TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS metadata(
    resource_id INTEGER NOT NULL REFERENCES resources(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(resource_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS labels(
    resource_id INTEGER NOT NULL REFERENCES resources(id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    PRIMARY KEY(resource_id, label)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labels_label ON labels(label);
CREATE TABLE IF NOT EXISTS changes(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    change_type TEXT NOT NULL,
    level INTEGER NOT NULL,
    public_id TEXT NOT NULL,
    date TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS properties(name TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Files whose row went (deleted, recycled, overwritten) and that may still be on disk: the
-- start-up reconcile removes them, and indexes any other file it finds without a row.
CREATE TABLE IF NOT EXISTS dropped_files(uuid TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS files_dropped AFTER DELETE ON files
    BEGIN INSERT OR IGNORE INTO dropped_files VALUES(old.uuid); END;
CREATE TABLE IF NOT EXISTS modalities(name TEXT PRIMARY KEY, config TEXT NOT NULL);
-- Series whose first instance's file is still to be read for the tags indexed since schema 3
-- (model.EXTRA_TAGS: Timezone Offset From UTC, Performed Procedure Step Start Date/Time); their
-- study's and their own rows are added in the background, then the series leaves this table.
CREATE TABLE IF NOT EXISTS tags_to_read(
    resource_id INTEGER PRIMARY KEY REFERENCES resources(id) ON DELETE CASCADE
) WITHOUT ROWID;
-- Labels (collections) whose studies the teacher published to students.
CREATE TABLE IF NOT EXISTS student_labels(label TEXT PRIMARY KEY) WITHOUT ROWID;
""" + CASE_SCHEMA + SESSION_SCHEMA

# Each step brings an index from the version before it; SCHEMA (all IF NOT EXISTS) then adds
# whatever tables and indexes are new.
MIGRATIONS: dict[int, list[str]] = {
    2: ["ALTER TABLE resources ADD COLUMN identity_removed INTEGER",
        "ALTER TABLE resources ADD COLUMN released INTEGER NOT NULL DEFAULT 0"],
    # a study keeps its own copy of the patient's tags (what its first instance said), as Orthanc
    # does: anonymized cases often share one PatientID under different names. An older index gets
    # the copy from its patient, which is what it showed before.
    3: [("INSERT OR IGNORE INTO main_tags SELECT s.id, t.tag, t.value FROM resources s "
         "JOIN main_tags t ON t.resource_id = s.parent_id WHERE s.level = 1")],
    # Orthanc's metadata names: a series keeps the RemoteAET of its first instance; an instance
    # keeps CalledAET only when it came by DICOM, HttpUsername only by REST (the empty values
    # recorded before for the other origins go: they said nothing)
    4: [("INSERT OR IGNORE INTO metadata SELECT s.id, 'RemoteAET', COALESCE((SELECT m.value FROM resources i "
        "JOIN metadata m ON m.resource_id = i.id AND m.name = 'RemoteAET' WHERE i.parent_id = s.id "
        "ORDER BY i.id LIMIT 1), '') FROM resources s WHERE s.level = 2"),
        ("DELETE FROM metadata WHERE name = 'CalledAET' AND value = '' AND resource_id IN "
        "(SELECT resource_id FROM metadata WHERE name = 'Origin' AND value <> 'DicomProtocol')"),
        ("DELETE FROM metadata WHERE name = 'HttpUsername' AND value = '' AND resource_id IN "
        "(SELECT resource_id FROM metadata WHERE name = 'Origin' AND value <> 'RestApi')")],
    # series whose files are read once more for tags indexed since (Timezone Offset From UTC,
    # Performed Procedure Step Start Date/Time): QIDO-RS answers them
    5: [("CREATE TABLE IF NOT EXISTS tags_to_read(resource_id INTEGER PRIMARY KEY "
         "REFERENCES resources(id) ON DELETE CASCADE) WITHOUT ROWID"),
        "INSERT INTO tags_to_read SELECT id FROM resources WHERE level = 2"],
    # teaching cases: new tables only, created here inside the migration's transaction (a step
    # that fails, a disk full, leaves the index at schema 5 as it was)
    6: CASE_STATEMENTS,
    # teaching sessions: new tables only, made inside the migration's transaction as schema 6's
    7: SESSION_STATEMENTS,
}


_RESOURCE_COLS = "id, public_id, level, parent_id, last_update, stable, protected"


def _resource(row: Iterable[Any]) -> Resource:
    i, p, lvl, parent, lu, st, pr = row
    return Resource(i, p, Level(lvl), parent, lu, bool(st), bool(pr))


async def _open(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA foreign_keys=ON")
    await conn.execute("PRAGMA busy_timeout=10000")
    return conn


class SqliteReader(CaseReads, SessionReads, IndexReader):
    """Read access (aiosqlite); the schema is created by the writer before this opens."""

    def __init__(self, path: Path):
        self.path = path
        self.r: aiosqlite.Connection

    async def open(self) -> None:
        self.r = await _open(self.path)
        await self.r.execute("PRAGMA query_only=ON")
        await self.r.create_function("fold", 1, fold, deterministic=True)

    async def close(self) -> None:
        if getattr(self, "r", None) is not None:
            await self.r.close()

    # ---- the connection (private to this module) ----

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        async with self.r.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> tuple | None:
        async with self.r.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def resource(self, public_id: str, level: Level | None = None) -> Resource | None:
        row = await self._one(f"SELECT {_RESOURCE_COLS} FROM resources WHERE public_id=?", (public_id,))
        if row is None:
            return None
        res = _resource(row)
        if level is not None and res.level != level:
            return None
        return res

    async def resource_by_id(self, internal_id: int) -> Resource | None:
        row = await self._one(f"SELECT {_RESOURCE_COLS} FROM resources WHERE id=?", (internal_id,))
        return None if row is None else _resource(row)

    async def resources_by_ids(self, ids: list[int]) -> list[Resource]:
        out: dict[int, Resource] = {}
        for chunk in _chunks(ids, 500):
            for row in await self._all(f"SELECT {_RESOURCE_COLS} FROM resources WHERE id IN ({marks(len(chunk))})", chunk):
                r = _resource(row)
                out[r.id] = r
        return [out[i] for i in ids if i in out]

    async def list_ids(self, level: Level, since: int = 0, limit: int = 0) -> list[int]:
        sql, params = paged("SELECT id FROM resources WHERE level=? ORDER BY id", [int(level)], since, limit)
        return [r[0] for r in await self._all(sql, params)]

    async def children(self, internal_id: int) -> list[Resource]:
        rows = await self._all(f"SELECT {_RESOURCE_COLS} FROM resources WHERE parent_id=? ORDER BY id",
                                   (internal_id,))
        return [_resource(r) for r in rows]

    async def children_public_ids(self, ids: list[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {i: [] for i in ids}
        for chunk in _chunks(ids, 500):
            for parent, pub in await self._all(
                    f"SELECT parent_id, public_id FROM resources WHERE parent_id IN ({marks(len(chunk))}) ORDER BY id", chunk):
                out[parent].append(pub)
        return out

    async def main_tags(self, ids: list[int]) -> dict[int, dict[str, str]]:
        out: dict[int, dict[str, str]] = {i: {} for i in ids}
        for chunk in _chunks(ids, 500):
            for rid, tag, value in await self._all(
                    f"SELECT resource_id, tag, value FROM main_tags WHERE resource_id IN ({marks(len(chunk))})", chunk):
                out[rid][tag] = value
        return out

    async def files(self, ids: list[int]) -> dict[int, tuple[str, int]]:
        out: dict[int, tuple[str, int]] = {}
        for chunk in _chunks(ids, 500):
            for rid, u, size in await self._all(
                    f"SELECT resource_id, uuid, size FROM files WHERE resource_id IN ({marks(len(chunk))})", chunk):
                out[rid] = (u, size)
        return out

    async def metadata(self, internal_id: int) -> dict[str, str]:
        rows = await self._all("SELECT name, value FROM metadata WHERE resource_id=?", (internal_id,))
        return dict(rows)

    async def labels(self, internal_id: int) -> list[str]:
        return [r[0] for r in await self._all("SELECT label FROM labels WHERE resource_id=? ORDER BY label",
                                                  (internal_id,))]

    async def all_labels(self) -> list[str]:
        return [r[0] for r in await self._all("SELECT DISTINCT label FROM labels ORDER BY label")]

    async def descendant_instances(self, internal_id: int) -> list[int]:
        rows = await self._all(f"{descendants(1)} SELECT id FROM d WHERE level=3 ORDER BY id", (internal_id,))
        return [r[0] for r in rows]

    async def changes(self, since: int, limit: int) -> list[tuple]:
        return await self._all(
            "SELECT seq, change_type, level, public_id, date FROM changes WHERE seq>? ORDER BY seq LIMIT ?",
            (since, limit))

    async def last_change(self) -> int:
        row = await self._one("SELECT MAX(seq) FROM changes")
        return row[0] or 0 if row else 0


    async def parents(self, ids: list[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for chunk in _chunks(ids, 500):
            out.update(await self._all(f"SELECT id, parent_id FROM resources WHERE id IN ({marks(len(chunk))}) "
                                       "AND parent_id IS NOT NULL", chunk))
        return out

    async def descendant_counts(self, ids: list[int], below: Level) -> dict[tuple[int, int], int]:
        out: dict[tuple[int, int], int] = {}
        for chunk in _chunks(ids, 500):
            for root, lvl, n in await self._all(
                    f"{descendants(len(chunk))} SELECT root, level, COUNT(*) FROM d WHERE level > ? "
                    "GROUP BY root, level", (*chunk, int(below))):
                out[(root, lvl)] = n
        return out

    async def metadata_values(self, ids: list[int], name: str) -> dict[int, str]:
        out: dict[int, str] = {}
        for chunk in _chunks(ids, 500):
            out.update(await self._all(f"SELECT resource_id, value FROM metadata WHERE name=? "
                                       f"AND resource_id IN ({marks(len(chunk))})", (name, *chunk)))
        return out

    async def child_values(self, parent_ids: list[int], tag: str | None = None,
                           metadata: str | None = None) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for chunk in _chunks(parent_ids, 500):
            if tag is not None:
                sql = ("SELECT s.parent_id, t.value FROM resources s JOIN main_tags t ON t.resource_id = s.id "
                       f"AND t.tag = ? WHERE s.parent_id IN ({marks(len(chunk))})")
                params: tuple = (tag, *chunk)
            else:
                sql = ("SELECT s.parent_id, m.value FROM resources s JOIN resources i ON i.parent_id = s.id "
                       f"JOIN metadata m ON m.resource_id = i.id AND m.name = ? WHERE s.parent_id IN "
                       f"({marks(len(chunk))})")
                params = (metadata, *chunk)
            for parent, value in await self._all(f"SELECT DISTINCT * FROM ({sql})", params):
                out.setdefault(parent, set()).add(value)
        return out

    async def labels_of(self, ids: list[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for chunk in _chunks(ids, 500):
            for rid, label in await self._all(
                    f"SELECT resource_id, label FROM labels WHERE resource_id IN ({marks(len(chunk))}) "
                    "ORDER BY label", chunk):
                out.setdefault(rid, []).append(label)
        return out

    async def find(self, q: Query, since: int = 0, limit: int = 0) -> list[int]:
        sql, params = to_sql(q, since, limit)
        return [r[0] for r in await self._all(sql, params)]

    async def lookup(self, value: str) -> list[int]:
        rows = await self._all(
            "SELECT t.resource_id FROM main_tags t JOIN resources r ON r.id = t.resource_id "
            "WHERE t.value=? AND ((t.tag='0010,0020' AND r.level=0) "
            "OR (t.tag='0020,000d' AND r.level=1) OR (t.tag='0020,000e' AND r.level=2) "
            "OR (t.tag='0008,0018' AND r.level=3)) ORDER BY r.level, r.id", (value,))
        return [r[0] for r in rows]

    async def instance_file(self, public_id: str) -> tuple[str, int] | None:
        row = await self._one("SELECT f.uuid, f.size FROM resources r JOIN files f ON f.resource_id = r.id "
                              "WHERE r.public_id=? AND r.level=3", (public_id,))
        return None if row is None else (row[0], row[1])

    async def stored_files_below(self, ids: list[int]) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        for chunk in _chunks(ids, 500):
            out += await self._all(
                f"""{descendants(len(chunk))}
                    SELECT f.uuid, COALESCE(mc.value, ''), COALESCE(mt.value, '') FROM d
                    JOIN files f ON f.resource_id = d.id
                    LEFT JOIN metadata mc ON mc.resource_id = d.id AND mc.name = 'SopClassUid'
                    LEFT JOIN metadata mt ON mt.resource_id = d.id AND mt.name = 'TransferSyntax'
                    ORDER BY d.id""", chunk)
        return out

    async def instances_with_ancestors(self, internal_id: int) -> list[tuple]:
        return await self._all(
            f"""{descendants(1)}
               SELECT i.id, i.public_id, se.id, st.id, pa.id, f.uuid, f.size FROM d
               JOIN resources i ON i.id = d.id AND d.level = 3
               JOIN files f ON f.resource_id = i.id
               JOIN resources se ON se.id = i.parent_id
               JOIN resources st ON st.id = se.parent_id
               JOIN resources pa ON pa.id = st.parent_id
               ORDER BY pa.id, st.id, se.id, i.id""", (internal_id,))

    async def level_counts(self) -> dict[int, int]:
        return dict(await self._all("SELECT level, COUNT(*) FROM resources GROUP BY level"))

    async def total_size(self) -> int:
        row = await self._one("SELECT COALESCE(SUM(size),0) FROM files")
        return row[0] if row else 0

    async def resource_statistics(self, internal_id: int) -> dict[str, int]:
        row = await self._one(
            f"""{descendants(1)}
               SELECT SUM(d.level=1), SUM(d.level=2), SUM(d.level=3), COALESCE(SUM(f.size),0)
               FROM d LEFT JOIN files f ON f.resource_id = d.id""", (internal_id,))
        return {"studies": row[0] or 0, "series": row[1] or 0, "instances": row[2] or 0, "size": row[3] or 0}

    async def student_visible_ids(self, ids: list[int]) -> set[int]:
        out: set[int] = set()
        for chunk in _chunks(ids, 500):
            out.update(r[0] for r in await self._all(
                f"SELECT r.id FROM resources r WHERE r.id IN ({marks(len(chunk))}) AND {student_visible('r')}",
                chunk))
        return out

    async def is_released(self, internal_id: int) -> bool:
        row = await self._one("SELECT released FROM resources WHERE id=?", (internal_id,))
        return bool(row and row[0])

    async def student_labels(self) -> list[str]:
        return [r[0] for r in await self._all("SELECT label FROM student_labels ORDER BY label")]

    async def unread_identities(self, limit: int) -> list[tuple[int, str]]:
        return await self._all(
            "SELECT r.id, f.uuid FROM resources r JOIN files f ON f.resource_id = r.id "
            "WHERE r.level = 3 AND r.identity_removed IS NULL ORDER BY r.id LIMIT ?", (limit,))

    async def series_with_unread_tags(self, limit: int) -> list[tuple[int, int, str | None]]:
        return await self._all(
            "SELECT t.resource_id, s.parent_id, (SELECT f.uuid FROM resources i JOIN files f ON f.resource_id = i.id "
            "WHERE i.parent_id = t.resource_id ORDER BY i.id LIMIT 1) "
            "FROM tags_to_read t JOIN resources s ON s.id = t.resource_id ORDER BY t.resource_id LIMIT ?", (limit,))

    async def has_unstable_before(self, t: float) -> bool:
        return await self._one("SELECT 1 FROM resources WHERE stable=0 AND level<3 AND last_update<? LIMIT 1",
                               (t,)) is not None


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
