"""The SQLite index: schema and read queries (resources, main tags, files, metadata, changes).

Only the archive hub calls this module. Writes live in writer.py, on their own
connection and thread; reads use this aiosqlite connection, so browsing is never
held up behind a batch of stores (WAL lets them run side by side).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import aiosqlite

from .model import Level

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources(
    id INTEGER PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    level INTEGER NOT NULL,
    parent_id INTEGER REFERENCES resources(id) ON DELETE CASCADE,
    last_update REAL NOT NULL,
    stable INTEGER NOT NULL DEFAULT 0,
    protected INTEGER NOT NULL DEFAULT 0
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
"""


def orthanc_date(t: float | None = None) -> str:
    """Orthanc's timestamp format, e.g. 20261125T110543 (UTC)."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if t is None else t))


@dataclass
class Resource:
    id: int
    public_id: str
    level: Level
    parent_id: int | None
    last_update: float
    stable: bool
    protected: bool


_RESOURCE_COLS = "id, public_id, level, parent_id, last_update, stable, protected"


def _resource(row: Iterable[Any]) -> Resource:
    i, p, lvl, parent, lu, st, pr = row
    return Resource(i, p, Level(lvl), parent, lu, bool(st), bool(pr))


async def _open(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA foreign_keys=ON")
    await conn.execute("PRAGMA busy_timeout=10000")
    return conn


class Index:
    """Read access (aiosqlite); the schema is created by the writer (writer.py) before this opens."""

    def __init__(self, path: Path):
        self.path = path
        self.r: aiosqlite.Connection

    async def open(self) -> None:
        self.r = await _open(self.path)
        await self.r.execute("PRAGMA query_only=ON")

    async def close(self) -> None:
        if getattr(self, "r", None) is not None:
            await self.r.close()

    # ---- reads (reader connection) ----

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        async with self.r.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> tuple | None:
        async with self.r.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def resource(self, public_id: str, level: Level | None = None) -> Resource | None:
        row = await self.fetchone(f"SELECT {_RESOURCE_COLS} FROM resources WHERE public_id=?", (public_id,))
        if row is None:
            return None
        res = _resource(row)
        if level is not None and res.level != level:
            return None
        return res

    async def resource_by_id(self, internal_id: int) -> Resource | None:
        row = await self.fetchone(f"SELECT {_RESOURCE_COLS} FROM resources WHERE id=?", (internal_id,))
        return None if row is None else _resource(row)

    async def resources_by_ids(self, ids: list[int]) -> list[Resource]:
        out: dict[int, Resource] = {}
        for chunk in _chunks(ids, 500):
            q = ",".join("?" * len(chunk))
            for row in await self.fetchall(f"SELECT {_RESOURCE_COLS} FROM resources WHERE id IN ({q})", chunk):
                r = _resource(row)
                out[r.id] = r
        return [out[i] for i in ids if i in out]

    async def list_ids(self, level: Level, since: int = 0, limit: int = 0) -> list[int]:
        sql = "SELECT id FROM resources WHERE level=? ORDER BY id"
        params: list[Any] = [int(level)]
        if limit:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, since]
        elif since:
            sql += " LIMIT -1 OFFSET ?"
            params += [since]
        return [r[0] for r in await self.fetchall(sql, params)]

    async def children(self, internal_id: int) -> list[Resource]:
        rows = await self.fetchall(f"SELECT {_RESOURCE_COLS} FROM resources WHERE parent_id=? ORDER BY id",
                                   (internal_id,))
        return [_resource(r) for r in rows]

    async def children_public_ids(self, ids: list[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {i: [] for i in ids}
        for chunk in _chunks(ids, 500):
            q = ",".join("?" * len(chunk))
            for parent, pub in await self.fetchall(
                    f"SELECT parent_id, public_id FROM resources WHERE parent_id IN ({q}) ORDER BY id", chunk):
                out[parent].append(pub)
        return out

    async def main_tags(self, ids: list[int]) -> dict[int, dict[str, str]]:
        out: dict[int, dict[str, str]] = {i: {} for i in ids}
        for chunk in _chunks(ids, 500):
            q = ",".join("?" * len(chunk))
            for rid, tag, value in await self.fetchall(
                    f"SELECT resource_id, tag, value FROM main_tags WHERE resource_id IN ({q})", chunk):
                out[rid][tag] = value
        return out

    async def files(self, ids: list[int]) -> dict[int, tuple[str, int]]:
        out: dict[int, tuple[str, int]] = {}
        for chunk in _chunks(ids, 500):
            q = ",".join("?" * len(chunk))
            for rid, u, size in await self.fetchall(
                    f"SELECT resource_id, uuid, size FROM files WHERE resource_id IN ({q})", chunk):
                out[rid] = (u, size)
        return out

    async def metadata(self, internal_id: int) -> dict[str, str]:
        rows = await self.fetchall("SELECT name, value FROM metadata WHERE resource_id=?", (internal_id,))
        return dict(rows)

    async def labels(self, internal_id: int) -> list[str]:
        return [r[0] for r in await self.fetchall("SELECT label FROM labels WHERE resource_id=? ORDER BY label",
                                                  (internal_id,))]

    async def all_labels(self) -> list[str]:
        return [r[0] for r in await self.fetchall("SELECT DISTINCT label FROM labels ORDER BY label")]

    async def descendant_instances(self, internal_id: int) -> list[int]:
        rows = await self.fetchall(
            """WITH RECURSIVE d(id, level) AS (
                   SELECT id, level FROM resources WHERE id=?
                   UNION ALL SELECT r.id, r.level FROM resources r JOIN d ON r.parent_id=d.id)
               SELECT id FROM d WHERE level=3 ORDER BY id""", (internal_id,))
        return [r[0] for r in rows]

    async def all_file_uuids(self) -> set[str]:
        return {r[0] for r in await self.fetchall("SELECT uuid FROM files")}

    async def changes(self, since: int, limit: int) -> list[tuple]:
        return await self.fetchall(
            "SELECT seq, change_type, level, public_id, date FROM changes WHERE seq>? ORDER BY seq LIMIT ?",
            (since, limit))

    async def last_change(self) -> int:
        row = await self.fetchone("SELECT MAX(seq) FROM changes")
        return row[0] or 0 if row else 0


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
