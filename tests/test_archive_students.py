"""What students may see, decided by the archive's one query engine (in process, no server):
only studies the teacher released, and only when every instance in them is de-identified."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pydicom
import pytest

from appliance.archive import Archive, Level, build_query
from appliance.archive.index.sqlite import SCHEMA_VERSION

from .helpers import store
from .synth import ct_instance


def instance(deidentified: bool, **kw) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(ct_instance(rows=8, cols=8, **kw)))
    if deidentified:
        ds.PatientIdentityRemoved = "YES"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


async def student_find(a: Archive, level: Level, items: dict[str, str] | None = None) -> set[str]:
    q = build_query(level, items or {})
    q.students = True
    return {r.public_id for r in await a.index.resources_by_ids(await a.find(q))}


async def test_students_see_only_released_deidentified_studies(archive: Archive) -> None:
    teaching = await store(archive, instance(True, patient_id="ANON1", study="s1"))
    await store(archive, instance(True, patient_id="ANON1", study="s1", index=2))
    original = await store(archive, instance(False, patient_id="REAL", patient_name="Real^Name", study="s2"))
    unreleased = await store(archive, instance(True, patient_id="ANON2", study="s3"))

    for level in Level:
        assert await student_find(archive, level) == set(), "nothing is released yet"

    await archive.release_study(teaching[1], True)
    await archive.release_study(original[1], True)       # identifiable: released or not, never shown
    assert await student_find(archive, Level.PATIENT) == {teaching[0]}
    assert await student_find(archive, Level.STUDY) == {teaching[1]}
    assert await student_find(archive, Level.SERIES) == {teaching[2]}
    assert len(await student_find(archive, Level.INSTANCE)) == 2
    assert await student_find(archive, Level.STUDY, {"PatientID": "REAL"}) == set()
    # a teacher's query is unchanged
    assert len(await archive.find(build_query(Level.STUDY, {}))) == 3

    for pid, visible in ((teaching[0], True), (teaching[1], True), (teaching[2], True), (teaching[3], True),
                         (original[0], False), (original[1], False), (original[3], False),
                         (unreleased[1], False)):
        res = await archive.index.resource(pid)
        assert await archive.visible_to_students(res) is visible, pid

    await archive.release_study(teaching[1], False)
    assert await student_find(archive, Level.STUDY) == set()


async def test_one_identifiable_instance_hides_its_whole_study(archive: Archive) -> None:
    ids = await store(archive, instance(True, patient_id="ANON1", study="s1"))
    await archive.release_study(ids[1], True)
    assert await student_find(archive, Level.STUDY) == {ids[1]}
    await store(archive, instance(False, patient_id="ANON1", study="s1", index=2))   # an original slips in
    assert await student_find(archive, Level.STUDY) == set()
    assert await student_find(archive, Level.INSTANCE) == set()


async def test_an_identifiable_study_of_the_same_patient_hides_the_published_one(archive: Archive) -> None:
    """The patient's name shown with a study comes from whichever instance made the patient row."""
    real = await store(archive, instance(False, patient_id="SAMEID", patient_name="Real^Name", study="orig"))
    anon = await store(archive, instance(True, patient_id="SAMEID", patient_name="Case^One", study="copy"))
    assert real[0] == anon[0]
    await archive.release_study(anon[1], True)
    assert await student_find(archive, Level.STUDY) == set()
    assert await student_find(archive, Level.PATIENT) == set()
    await archive.delete(Level.STUDY, real[1])            # the teacher deletes the original
    assert await student_find(archive, Level.STUDY) == {anon[1]}


async def test_a_published_label_releases_its_studies(archive: Archive) -> None:
    a = await store(archive, instance(True, patient_id="A", study="s1"))
    b = await store(archive, instance(True, patient_id="B", study="s2"))
    await archive.set_label(Level.STUDY, a[1], "chest", True)
    await archive.set_label(Level.STUDY, b[1], "neuro", True)
    assert await archive.publish_label("chest", True) is True
    assert await archive.student_labels() == ["chest"]
    assert await student_find(archive, Level.STUDY) == {a[1]}
    await archive.publish_label("chest", False)
    assert await student_find(archive, Level.STUDY) == set()


async def test_only_a_study_can_be_released(archive: Archive) -> None:
    from appliance.archive import NotFound
    ids = await store(archive, instance(True))
    with pytest.raises(NotFound):
        await archive.release_study(ids[0], True)
    with pytest.raises(NotFound):
        await archive.release_study(ids[2], True)


# The index as pipacs wrote it before it kept identities (schema 1): an on-disk format, kept here
# to prove the upgrade.
SCHEMA_1_RESOURCES = """CREATE TABLE resources(id INTEGER PRIMARY KEY, public_id TEXT NOT NULL UNIQUE,
    level INTEGER NOT NULL, parent_id INTEGER REFERENCES resources(id) ON DELETE CASCADE,
    last_update REAL NOT NULL, stable INTEGER NOT NULL DEFAULT 0, protected INTEGER NOT NULL DEFAULT 0)"""


async def test_an_index_from_schema_1_is_upgraded_and_identities_read_from_the_files(tmp_path: Path) -> None:
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    anon = await store(a, instance(True, patient_id="ANON", study="s1"))
    real = await store(a, instance(False, patient_id="REAL", study="s2"))
    await a.close()
    # turn it back into a schema 1 index, keeping its rows (legacy_alter_table: the other tables'
    # references keep naming `resources`, as in a real schema 1 index, not the renamed table)
    db = sqlite3.connect(tmp_path / "data" / "pipacs-index.sqlite")
    db.executescript(f"""PRAGMA foreign_keys=OFF; PRAGMA legacy_alter_table=ON; BEGIN; DROP TABLE tags_to_read;
        ALTER TABLE resources RENAME TO new_resources; {SCHEMA_1_RESOURCES};
        INSERT INTO resources SELECT id, public_id, level, parent_id, last_update, stable, protected
            FROM new_resources;
        DROP TABLE new_resources; DROP TABLE student_labels;
        UPDATE properties SET value='1' WHERE name='schema'; COMMIT;""")
    db.close()

    b = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await b.open()
    try:
        await b._identities          # the background read of the files, to its end
        for ids in (anon, real):
            await b.release_study(ids[1], True)
        assert await student_find(b, Level.STUDY) == {anon[1]}
        assert len(await b.find(build_query(Level.INSTANCE, {}))) == 2
    finally:
        await b.close()
    db = sqlite3.connect(tmp_path / "data" / "pipacs-index.sqlite")
    assert db.execute("SELECT value FROM properties WHERE name='schema'").fetchone() == (str(SCHEMA_VERSION),)
    db.close()


async def test_an_index_from_schema_2_is_upgraded_and_the_new_tags_read_from_the_files(tmp_path: Path) -> None:
    """Schema 3 indexes Timezone Offset From UTC (study) and Performed Procedure Step Start
    Date/Time (series), which QIDO-RS answers: an index written before gets them from the files."""
    from appliance.archive import answers
    ds = pydicom.dcmread(io.BytesIO(ct_instance(rows=8, cols=8, patient_id="TZ")))
    ds.TimezoneOffsetFromUTC = "+0100"
    ds.PerformedProcedureStepStartDate = "20240102"
    ds.PerformedProcedureStepStartTime = "101700"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    await store(a, buf.getvalue())
    await store(a, ct_instance(rows=8, cols=8, patient_id="NOTZ"))
    await a.close()
    # turn it back into a schema 2 index: the rows it did not keep, and the table it did not have
    db = sqlite3.connect(tmp_path / "data" / "pipacs-index.sqlite")
    db.executescript("""BEGIN; DELETE FROM main_tags WHERE tag IN ('0008,0201', '0040,0244', '0040,0245');
        DROP TABLE tags_to_read; UPDATE properties SET value='2' WHERE name='schema'; COMMIT;""")
    db.close()
    wanted = [0x00080201, 0x00400244, 0x00400245, 0x00100020]

    b = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await b.open()
    try:
        await b._tags          # the background read of the files, to its end
        found = await answers(b, build_query(Level.SERIES, {}), wanted)
        by_patient = {v[0x00100020]: v for v in found}
        assert by_patient["TZ"] == {0x00080201: "+0100", 0x00400244: "20240102", 0x00400245: "101700",
                                    0x00100020: "TZ"}
        assert by_patient["NOTZ"] == {0x00100020: "NOTZ"}    # absent from its file: absent here
        assert await b.index.series_with_unread_tags(10) == []
    finally:
        await b.close()


async def test_an_index_from_a_newer_pipacs_is_refused(tmp_path: Path) -> None:
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    await a.close()
    db = sqlite3.connect(tmp_path / "data" / "pipacs-index.sqlite")
    db.execute("UPDATE properties SET value='99' WHERE name='schema'")
    db.commit()
    db.close()
    b = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    with pytest.raises(RuntimeError, match="newer pipacs"):
        await b.open()


async def test_a_damaged_index_is_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pipacs-index.sqlite").write_bytes(b"this is not a database" * 100)
    b = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    from appliance.archive import IndexUnusable
    with pytest.raises(IndexUnusable, match="move it away"):
        await b.open()


async def test_a_students_patient_counts_only_published_studies(archive: Archive) -> None:
    from appliance.archive import answers
    pub = await store(archive, instance(True, patient_id="ANON1", study="s1"))
    await store(archive, instance(True, patient_id="ANON1", study="s1", index=2))
    await store(archive, instance(True, patient_id="ANON1", study="s2"))          # not released
    await archive.release_study(pub[1], True)
    q = build_query(Level.PATIENT, {})
    related_studies, related_instances = 0x00201200, 0x00201204
    assert await answers(archive, q, [related_studies, related_instances]) == [
        {related_studies: "2", related_instances: "3"}]
    q.students = True
    assert await answers(archive, q, [related_studies, related_instances]) == [
        {related_studies: "1", related_instances: "2"}]
