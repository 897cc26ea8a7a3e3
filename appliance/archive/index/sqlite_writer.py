"""Every write to the SQLite index, as plain synchronous transactions (``IndexWriter``).

They run on one dedicated thread (the hub's single-thread executor) that owns the
write connection: a whole batch of stores is one call and one commit, instead of a
dozen thread round-trips per instance through an async driver. Reads go through
aiosqlite on their own connection (WAL lets both run at once).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..model import Level, orthanc_date
from ..records import (
    IndexTooNew,
    IndexUnusable,
    IngestResult,
    Limits,
    NotFound,
    Origin,
    StoreItem,
    StoreRefused,
)
from . import IndexWriter
from .sqlite import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from .sqlite_cases import (
    CaseWrites,
    cases_of_resource,
    drop_missing_of_studies,
    refuse_if_in_cases,
    reindex_case_text,
    require_fts5,
    study_uids_below,
)
from .sqlite_query import descendants
from .sqlite_sessions import SessionWrites

log = logging.getLogger("pipacs.archive")


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring an older index up to date in one transaction."""
    has_properties = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='properties'").fetchone()
    row = conn.execute("SELECT value FROM properties WHERE name='schema'").fetchone() if has_properties else None
    version = int(row[0]) if row else None
    if version is not None and version > SCHEMA_VERSION:
        raise IndexTooNew(f"the index was written by a newer pipacs (schema {version}; this one reads up to "
                          f"{SCHEMA_VERSION}): start that version, or move the index away")
    require_fts5({r[0] for r in conn.execute("PRAGMA compile_options")})
    if version is not None and version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for sql in MIGRATIONS[step]:
                    conn.execute(sql)
            conn.execute("UPDATE properties SET value=? WHERE name='schema'", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.warning("index schema brought from version %d to %d", version, SCHEMA_VERSION)
    conn.executescript(SCHEMA)      # every statement IF NOT EXISTS: new tables and indexes
    conn.execute("INSERT OR IGNORE INTO properties VALUES('schema', ?)", (str(SCHEMA_VERSION),))


def origin_metadata(o: Origin) -> dict[str, str]:
    """What Orthanc records of where an instance came from, beyond Origin and RemoteAET: the
    address for DICOM and REST; the called AE title for DICOM only, the HTTP user for REST only."""
    if o.kind == "DicomProtocol":
        return {"RemoteIP": o.remote_ip, "CalledAET": o.called_aet}
    if o.kind in ("RestApi", "Import"):     # Import: a case bundle's instances (POST /cases/import)
        return {"RemoteIP": o.remote_ip, "HttpUsername": o.http_username}
    return {}


class SqliteWriter(CaseWrites, SessionWrites, IndexWriter):
    def __init__(self, path: Path, overwrite: bool, limits: Limits):
        self.path = path
        self.overwrite = overwrite
        self.limits = limits
        self.conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            # WAL + synchronous=FULL: a commit is on disk when it returns, even across a power cut.
            # Stores commit with NORMAL (see store_batch); the next FULL commit or checkpoint
            # makes them durable with it.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._synchronous = "FULL"
            _migrate(conn)
        except IndexUnusable:
            conn.close()
            raise
        except sqlite3.DatabaseError as e:
            conn.close()
            raise IndexUnusable(f"the index {self.path} cannot be read ({e}); move it away and start again: "
                                "the files are indexed anew (labels and notes are lost)") from None
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self.conn.close()
            self.conn = None

    def _transaction(self, fn, *args, durable: bool = True) -> Any:
        c = self.conn
        wanted = "FULL" if durable else "NORMAL"
        if wanted != self._synchronous:
            c.execute(f"PRAGMA synchronous={wanted}")
            self._synchronous = wanted
        c.execute("BEGIN IMMEDIATE")
        try:
            result = fn(c, *args)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return result

    # ------------------------------------------------------------------ stores

    def store_batch(self, items: list[StoreItem]) -> tuple[list[IngestResult | Exception], list[str]]:
        """Index a batch in one transaction; if that fails, one by one so the others still land.

        Returns an outcome per item and the file UUIDs to remove once committed (duplicates,
        overwritten or recycled instances).

        The commit is not synced (synchronous=NORMAL): the files are, and they are the truth.
        A power cut may take the last rows with it; the next start finds their files without
        rows and indexes them again (``reconcile``). One sync fewer per instance
        received, of the three (file, folder, index) that stand before each answer.
        """
        drop: list[str] = []
        try:
            outcomes = self._transaction(lambda c: [self._insert(c, it, drop) for it in items], durable=False)
            return outcomes, drop
        except Exception as e:  # noqa: BLE001 - retried one by one, each failure answered
            if len(items) == 1:
                log.error("cannot index instance %s: %s", items[0].parsed.sop_instance_uid, e)
                return [StoreRefused(f"the index could not be written: {e}")], [items[0].file_uuid]
        outcomes, drop = [], []
        for it in items:
            o, d = self.store_batch([it])
            outcomes += o
            drop += d
        return outcomes, drop

    def _insert(self, c: sqlite3.Connection, item: StoreItem, drop: list[str]) -> IngestResult | Exception:
        p = item.parsed
        ids = p.ids
        now = time.time()
        found = dict(c.execute("SELECT public_id, id FROM resources WHERE public_id IN (?,?,?,?)", ids).fetchall())
        old_instance = found.get(ids[3])
        key_images: list[tuple] = []
        if old_instance is not None:
            if not self.overwrite:
                drop.append(item.file_uuid)
                return IngestResult("AlreadyStored", ids)
            old = c.execute("SELECT uuid FROM files WHERE resource_id=?", (old_instance,)).fetchone()
            # the same instance sent again: the key images of cases on it stay, on its new row
            key_images = c.execute("SELECT case_id, position, data FROM case_key_images WHERE instance_id=?",
                                   (old_instance,)).fetchall()
            c.execute("DELETE FROM resources WHERE id=?", (old_instance,))
            if old:
                drop.append(old[0])

        refusal = self._make_room(c, ids[0], len(p.data), drop)
        if refusal is not None:
            drop.append(item.file_uuid)
            return refusal

        parent: int | None = None
        existing: list[int] = []
        created: list[tuple[Level, str]] = []
        for lvl in (Level.PATIENT, Level.STUDY, Level.SERIES):
            rid = found.get(ids[lvl])
            if rid is not None:
                parent = rid
                existing.append(rid)
                continue
            parent = c.execute("INSERT INTO resources(public_id, level, parent_id, last_update) VALUES(?,?,?,?) "
                               "RETURNING id", (ids[lvl], int(lvl), parent, now)).fetchone()[0]
            own = p.main_tags[lvl].items()
            if lvl == Level.STUDY:   # the study's own copy of the patient's tags (see MIGRATIONS[3])
                own = [*p.main_tags[Level.PATIENT].items(), *own]
            c.executemany("INSERT INTO main_tags VALUES(?,?,?)", [(parent, t, v) for t, v in own])
            if lvl == Level.SERIES:   # Orthanc: the sender of the series' first instance
                c.execute("INSERT INTO metadata VALUES(?,?,?)", (parent, "RemoteAET", item.origin.remote_aet))
            created.append((lvl, ids[lvl]))
        if existing:
            c.execute(f"UPDATE resources SET last_update=?, stable=0 WHERE id IN ({','.join('?' * len(existing))})",
                      (now, *existing))
        iid = c.execute("INSERT INTO resources(public_id, level, parent_id, last_update, identity_removed) "
                        "VALUES(?,?,?,?,?) RETURNING id",
                        (ids[3], int(Level.INSTANCE), parent, now, int(p.identity_removed))).fetchone()[0]
        c.executemany("INSERT INTO main_tags VALUES(?,?,?)",
                      [(iid, t, v) for t, v in p.main_tags[Level.INSTANCE].items()])
        c.execute("INSERT INTO files VALUES(?,?,?)", (iid, item.file_uuid, len(p.data)))
        if key_images:
            c.executemany("INSERT INTO case_key_images VALUES(?,?,?,?)",
                          [(case_id, pos, iid, data) for case_id, pos, data in key_images])
        o = item.origin
        tags = p.main_tags[Level.INSTANCE]
        index_in_series = (tags.get("0020,0013") or tags.get("0054,1330") or "").strip()
        date = orthanc_date(now)
        meta = {"ReceptionDate": date, "Origin": o.kind, "RemoteAET": o.remote_aet,
                "TransferSyntax": p.transfer_syntax, "SopClassUid": p.sop_class_uid, **origin_metadata(o)}
        if index_in_series:
            meta["IndexInSeries"] = index_in_series
        if p.pixel_data_offset is not None:
            meta["PixelDataOffset"] = str(p.pixel_data_offset)
        c.executemany("INSERT INTO metadata VALUES(?,?,?)", [(iid, k, v) for k, v in meta.items()])
        made_here = {lvl for lvl, _ in created} | {Level.INSTANCE}
        for lvl, extra in (item.extra_metadata or {}).items():
            if lvl not in made_here:    # a patient, study or series that was there already keeps its own
                continue
            rid = iid if lvl == Level.INSTANCE else c.execute(
                "SELECT id FROM resources WHERE public_id=?", (ids[lvl],)).fetchone()[0]
            c.executemany("INSERT OR REPLACE INTO metadata VALUES(?,?,?)", [(rid, k, v) for k, v in extra.items()])
        changes = [("NewInstance", 3, ids[3], date)]
        changes += [(f"New{lvl.title}", int(lvl), pub, date) for lvl, pub in reversed(created)]
        c.executemany("INSERT INTO changes(change_type, level, public_id, date) VALUES(?,?,?,?)", changes)
        return IngestResult("Success", ids)

    def _make_room(self, c: sqlite3.Connection, patient_public_id: str, size: int,
                   drop: list[str]) -> StoreRefused | None:
        """MaximumStorageSize / MaximumPatientCount, applied inside the store transaction."""
        lim = self.limits
        if not lim.max_bytes and not lim.max_patients:
            return None
        if lim.max_bytes and size > lim.max_bytes:
            return StoreRefused(f"the instance ({size} bytes) is larger than MaximumStorageSize")
        while True:
            total = c.execute("SELECT COALESCE(SUM(size),0) FROM files").fetchone()[0]
            n_patients, is_known = c.execute("SELECT COUNT(*), COALESCE(SUM(public_id=?),0) FROM resources "
                                             "WHERE level=0", (patient_public_id,)).fetchone()
            too_big = bool(lim.max_bytes) and total + size > lim.max_bytes
            too_many = bool(lim.max_patients) and not is_known and n_patients >= lim.max_patients
            if not (too_big or too_many):
                return None
            what = "MaximumStorageSize" if too_big else "MaximumPatientCount"
            if lim.mode == "Reject":
                return StoreRefused(f"the archive is full ({what} reached; MaximumStorageMode is Reject)")
            # a patient whose study a teaching case uses stands as protected: a case is the teacher's work
            victim = c.execute("SELECT id, public_id FROM resources p WHERE level=0 AND protected=0 AND public_id<>? "
                               "AND NOT EXISTS (SELECT 1 FROM resources s JOIN case_studies cs ON cs.study_id = s.id "
                               "WHERE s.parent_id = p.id) ORDER BY last_update, id LIMIT 1",
                               (patient_public_id,)).fetchone()
            if victim is None:
                return StoreRefused(f"the archive is full ({what} reached) and every other patient is protected "
                                    "(or used by a teaching case)")
            log.warning("recycling patient %s to make room (%s)", victim[1], what)
            drop.extend(self._delete_rows(c, victim[0]))
            c.execute("INSERT INTO changes(change_type, level, public_id, date) VALUES(?,?,?,?)",
                      ("Deleted", 0, victim[1], orthanc_date()))

    # ------------------------------------------------------------------ deletes and other changes

    @staticmethod
    def _delete_rows(c: sqlite3.Connection, internal_id: int) -> list[str]:
        """Delete a resource and its descendants in the open transaction; return their file UUIDs."""
        uuids = [r[0] for r in c.execute(
            f"{descendants(1)} SELECT f.uuid FROM files f JOIN d ON f.resource_id = d.id", (internal_id,))]
        c.execute("DELETE FROM resources WHERE id=?", (internal_id,))
        return uuids

    def delete(self, level: Level, public_id: str, in_cases: str = "detach",
               now: str = "") -> tuple[dict[str, str] | None, list[str]]:
        """Delete a resource and every ancestor left empty; Orthanc's RemainingAncestor and the files to remove.

        A study that cases use (or a patient of one), a series or instance holding key images of
        cases: ``in_cases="refuse"`` raises CaseConflict naming them; ``"detach"`` takes it, its key
        images and the instances of it they await (Missing) out of them (their Updated: ``now``)."""
        def run(c: sqlite3.Connection):
            row = c.execute("SELECT id, level, parent_id FROM resources WHERE public_id=?", (public_id,)).fetchone()
            if row is None or row[1] != level:
                raise NotFound(f"no {level.title.lower()} {public_id}")
            using, holding, touched = cases_of_resource(c, row[0])
            if in_cases == "refuse":
                refuse_if_in_cases(using, level.title.lower(), public_id, holding)
            study_uids = study_uids_below(c, row[0]) if using else []
            dropped = self._delete_rows(c, row[0])
            for case_id in touched:
                drop_missing_of_studies(c, case_id, study_uids)
                reindex_case_text(c, case_id)
                if now:   # moved on even within the second (Updated is what a page's staleness check compares)
                    c.execute("UPDATE cases SET updated = CASE WHEN ? > updated THEN ? ELSE "
                              "strftime('%Y-%m-%dT%H:%M:%SZ', updated, '+1 second') END WHERE id=?",
                              (now, now, case_id))
            parent = row[2]
            while parent is not None:
                has_child = c.execute("SELECT 1 FROM resources WHERE parent_id=? LIMIT 1", (parent,)).fetchone()
                pub, plevel, grand = c.execute("SELECT public_id, level, parent_id FROM resources WHERE id=?",
                                               (parent,)).fetchone()
                if has_child:
                    lvl = Level(plevel)
                    return {"ID": pub, "Path": f"/{lvl.plural}/{pub}", "Type": lvl.title}, dropped
                c.execute("DELETE FROM resources WHERE id=?", (parent,))
                parent = grand
            return None, dropped
        return self._transaction(run)

    def set_protected(self, public_id: str, protected: bool) -> None:
        def run(c: sqlite3.Connection) -> None:
            cur = c.execute("UPDATE resources SET protected=? WHERE public_id=? AND level=0",
                            (int(protected), public_id))
            if cur.rowcount == 0:
                raise NotFound(f"no patient {public_id}")
        self._transaction(run)

    def _resource_id(self, c: sqlite3.Connection, level: Level, public_id: str) -> int:
        row = c.execute("SELECT id FROM resources WHERE public_id=? AND level=?", (public_id, int(level))).fetchone()
        if row is None:
            raise NotFound(f"no {level.title.lower()} {public_id}")
        return row[0]

    def set_label(self, level: Level, public_id: str, label: str, present: bool) -> bool:
        """Add or remove a label; True when something changed."""
        def run(c: sqlite3.Connection) -> bool:
            rid = self._resource_id(c, level, public_id)
            if present:
                return c.execute("INSERT OR IGNORE INTO labels VALUES(?,?)", (rid, label)).rowcount > 0
            return c.execute("DELETE FROM labels WHERE resource_id=? AND label=?", (rid, label)).rowcount > 0
        return self._transaction(run)

    def set_metadata(self, level: Level, public_id: str, name: str, value: str | None) -> bool:
        """Set (or, with None, delete) one metadata item; False when deleting one that was not there."""
        def run(c: sqlite3.Connection) -> bool:
            rid = self._resource_id(c, level, public_id)
            if value is None:
                return c.execute("DELETE FROM metadata WHERE resource_id=? AND name=?", (rid, name)).rowcount > 0
            c.execute("INSERT OR REPLACE INTO metadata VALUES(?,?,?)", (rid, name, value))
            c.execute("INSERT INTO changes(change_type, level, public_id, date) VALUES(?,?,?,?)",
                      ("UpdatedMetadata", int(level), public_id, orthanc_date()))
            return True
        return self._transaction(run)

    def set_released(self, public_id: str, released: bool) -> None:
        def run(c: sqlite3.Connection) -> None:
            if c.execute("UPDATE resources SET released=? WHERE public_id=? AND level=1",
                         (int(released), public_id)).rowcount == 0:
                raise NotFound(f"no study {public_id}")
        self._transaction(run)

    def set_label_published(self, label: str, published: bool) -> bool:
        def run(c: sqlite3.Connection) -> bool:
            if published:
                return c.execute("INSERT OR IGNORE INTO student_labels VALUES(?)", (label,)).rowcount > 0
            return c.execute("DELETE FROM student_labels WHERE label=?", (label,)).rowcount > 0
        return self._transaction(run)

    def set_identities(self, identities: list[tuple[int, bool]]) -> None:
        self._transaction(lambda c: c.executemany(
            "UPDATE resources SET identity_removed=? WHERE id=? AND level=3",
            [(int(removed), rid) for rid, removed in identities]))

    def set_read_tags(self, found: list[tuple[int, int, dict[str, str], dict[str, str]]]) -> None:
        def run(c: sqlite3.Connection) -> None:
            for series_id, study_id, series_tags, study_tags in found:
                c.executemany("INSERT OR IGNORE INTO main_tags VALUES(?,?,?)",
                              [(series_id, t, v) for t, v in series_tags.items()]
                              + [(study_id, t, v) for t, v in study_tags.items()])
                c.execute("DELETE FROM tags_to_read WHERE resource_id=?", (series_id,))
        self._transaction(run)

    def property(self, name: str, make: Callable[[], str]) -> str:
        """A persistent appliance property, created with ``make()`` the first time."""
        def run(c: sqlite3.Connection) -> str:
            row = c.execute("SELECT value FROM properties WHERE name=?", (name,)).fetchone()
            if row is not None:
                return row[0]
            value = make()
            c.execute("INSERT INTO properties VALUES(?,?)", (name, value))
            return value
        return self._transaction(run)

    def properties(self, prefix: str) -> dict[str, str]:
        rows = self.conn.execute("SELECT name, value FROM properties WHERE substr(name, 1, ?) = ?",
                                 (len(prefix), prefix)).fetchall()
        return {name[len(prefix):]: value for name, value in rows}

    def set_property(self, name: str, value: str | None) -> None:
        if value is None:
            self._transaction(lambda c: c.execute("DELETE FROM properties WHERE name=?", (name,)))
        else:
            self._transaction(lambda c: c.execute("INSERT OR REPLACE INTO properties VALUES(?,?)", (name, value)))

    def mark_stable(self, now: float, age: float) -> int:
        """Resources with no news for ``age`` seconds become stable; Stable* changes are logged."""
        def run(c: sqlite3.Connection) -> int:
            rows = c.execute("SELECT id, level, public_id FROM resources WHERE stable=0 AND level<3 AND "
                             "last_update<? ORDER BY level DESC, id", (now - age,)).fetchall()
            if not rows:
                return 0
            date = orthanc_date(now)
            c.executemany("UPDATE resources SET stable=1 WHERE id=?", [(r[0],) for r in rows])
            c.executemany("INSERT INTO changes(change_type, level, public_id, date) VALUES(?,?,?,?)",
                          [(f"Stable{Level(r[1]).title}", r[1], r[2], date) for r in rows])
            return len(rows)
        return self._transaction(run)

    def file_uuids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT uuid FROM files")}

    def dropped_file_uuids(self) -> set[str]:
        """Files whose rows went: to remove, never to index again (see index.SCHEMA)."""
        return {r[0] for r in self.conn.execute("SELECT uuid FROM dropped_files")}

    def clear_dropped_files(self) -> None:
        """Once reconcile has removed them all."""
        self._transaction(lambda c: c.execute("DELETE FROM dropped_files"))

    def forget_files(self, uuids: set[str]) -> None:
        """Remove the instances whose file is gone, and parents left empty (reconcile at start)."""
        def run(c: sqlite3.Connection) -> None:
            touched: set[int] = set()
            for u in uuids:     # cases with a key image on a forgotten instance: their search text follows
                touched.update(r[0] for r in c.execute(
                    "SELECT k.case_id FROM case_key_images k JOIN files f ON f.resource_id = k.instance_id "
                    "WHERE f.uuid=?", (u,)))
            c.executemany("DELETE FROM resources WHERE id = (SELECT resource_id FROM files WHERE uuid=?)",
                          [(u,) for u in uuids])
            for case_id in sorted(touched):
                reindex_case_text(c, case_id)
            for lvl in (Level.SERIES, Level.STUDY, Level.PATIENT):
                c.execute("DELETE FROM resources WHERE level=? AND NOT EXISTS "
                          "(SELECT 1 FROM resources ch WHERE ch.parent_id = resources.id)", (int(lvl),))
        self._transaction(run)

    # ------------------------------------------------------------------ modalities added at run time

    def modalities(self) -> dict[str, dict]:
        return {n: json.loads(c) for n, c in self.conn.execute("SELECT name, config FROM modalities ORDER BY name")}

    def put_modality(self, name: str, config: dict) -> None:
        self._transaction(lambda c: c.execute("INSERT OR REPLACE INTO modalities VALUES(?,?)",
                                              (name, json.dumps(config))))

    def delete_modality(self, name: str) -> bool:
        return self._transaction(lambda c: c.execute("DELETE FROM modalities WHERE name=?", (name,)).rowcount > 0)
