"""The archive in-process: the find engine and the writer, on a real SQLite index and a real folder
of files in ``tmp_path``, in the test's own event loop (no subprocess, no HTTP).

What goes through the archive alone is tested here (fast); the front doors (REST, DICOM,
DICOMweb) keep their own tests against a real server.

"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from appliance.archive import Archive, FindError, IngestResult, Level, NotFound, Origin, StoreRefused

from .synth import ct_instance, uid


@pytest.fixture
async def open_archive(tmp_path):
    """Open archives on folders of ``tmp_path`` (keyword arguments as Archive's); all are closed at the end."""
    opened: list[Archive] = []

    async def open_(name: str = "data", **kw) -> Archive:
        a = Archive(storage_dir=tmp_path / name, index_dir=tmp_path / name, **kw)
        await a.open()
        opened.append(a)
        return a

    yield open_
    for a in opened:
        if not a._closing:
            await a.close()


@pytest.fixture
async def archive(open_archive) -> Archive:
    return await open_archive()


def files_on_disk(a: Archive) -> list:
    return [p for p in a.storage_dir.glob("??/??/*") if p.is_file()]


async def store(a: Archive, **kw) -> IngestResult:
    kw.setdefault("rows", 8)
    kw.setdefault("cols", 8)
    return await a.ingest_bytes(ct_instance(**kw), Origin())


async def public_ids(a: Archive, internal_ids: list[int]) -> list[str]:
    return [r.public_id for r in await a.index.resources_by_ids(internal_ids)]


# ------------------------------------------------------------------------------- the find engine

@pytest.fixture
async def cases(archive):
    """Three patients, as a teaching file holds them; returns (archive, study public ID by patient ID)."""
    anna = [await store(archive, patient_id="CT1", patient_name="Müller^Anna", study="teach", series=f"se{s}",
                        index=i, study_date="20230615", study_description="Chest teaching case")
            for s in (0, 1) for i in (1, 2)]
    john = await store(archive, patient_id="MR1", patient_name="Doe^John", study="knee", study_date="20040826",
                       study_description="Knee MRI", modality="MR")
    jane = await store(archive, patient_id="CT2", patient_name="DOE^JANE", study="head", study_date="20040119",
                       study_description="HEAD")
    odd = await store(archive, patient_id="X[1]*", patient_name="Odd^Id", study="odd", study_date="19991231")
    return archive, {"CT1": anna[0].ids[1], "MR1": john.ids[1], "CT2": jane.ids[1], "X[1]*": odd.ids[1]}


async def studies(a: Archive, query: dict[str, str], **kw) -> list[str]:
    """The patient IDs of the studies matching ``query``, sorted."""
    by_study = {uid(f"{p}/{s}"): p for p, s in (("CT1", "teach"), ("MR1", "knee"), ("CT2", "head"),
                                                 ("X[1]*", "odd"))}
    found = await a.find_request(Level.STUDY, query, **kw)
    tags = await a.index.main_tags(found)
    return sorted(by_study[tags[i]["0020,000d"]] for i in found)


async def test_find_wildcards(cases):
    a, _ = cases
    assert await studies(a, {}) == ["CT1", "CT2", "MR1", "X[1]*"]
    assert await studies(a, {"PatientID": "*"}) == ["CT1", "CT2", "MR1", "X[1]*"]
    assert await studies(a, {"PatientID": "CT?"}) == ["CT1", "CT2"]
    assert await studies(a, {"PatientID": "?T?"}) == ["CT1", "CT2"]
    assert await studies(a, {"PatientID": "*1"}) == ["CT1", "MR1"]
    assert await studies(a, {"StudyDescription": "*teaching*"}) == ["CT1"]
    # glob's own characters are plain characters in DICOM: [ ] match themselves, * in a value is literal
    assert await studies(a, {"PatientID": "X[1]*"}) == ["X[1]*"]
    assert await studies(a, {"PatientID": "X[1]?"}) == ["X[1]*"]
    assert await studies(a, {"PatientID": "X1*"}) == []


async def test_find_case_sensitivity(cases):
    a, _ = cases
    # person names match case-insensitively by default, beyond ASCII too
    assert await studies(a, {"PatientName": "doe*"}) == ["CT2", "MR1"]
    assert await studies(a, {"PatientName": "müller*"}) == ["CT1"]
    assert await studies(a, {"PatientName": "MÜLLER^ANNA"}) == ["CT1"]
    assert await studies(a, {"PatientName": "DOE*"}, pn_case_sensitive=True) == ["CT2"]
    assert await studies(a, {"PatientName": "Doe*"}, pn_case_sensitive=True) == ["MR1"]
    # other tags are case-sensitive unless asked
    assert await studies(a, {"StudyDescription": "knee*"}) == []
    assert await studies(a, {"StudyDescription": "knee*"}, case_sensitive=False) == ["MR1"]
    assert await studies(a, {"StudyDescription": "KNEE MRI"}, case_sensitive=False) == ["MR1"]
    assert await studies(a, {"PatientID": "ct1"}) == []
    assert await studies(a, {"PatientID": "ct1\\mr1"}, case_sensitive=False) == ["CT1", "MR1"]


async def test_find_date_ranges(cases):
    a, _ = cases
    assert await studies(a, {"StudyDate": "20040101-20041231"}) == ["CT2", "MR1"]
    assert await studies(a, {"StudyDate": "20040119-20040119"}) == ["CT2"]
    assert await studies(a, {"StudyDate": "20040119"}) == ["CT2"]
    assert await studies(a, {"StudyDate": "20230101-"}) == ["CT1"]
    assert await studies(a, {"StudyDate": "-20041231"}) == ["CT2", "MR1", "X[1]*"]
    assert await studies(a, {"StudyDate": "2004*"}) == ["CT2", "MR1"]
    assert await studies(a, {"PatientBirthDate": "19700101"}) == ["CT1", "CT2", "MR1", "X[1]*"]
    for bad in ("2004-13-45", "20040119x", "2004011"):
        with pytest.raises(FindError, match="0008,0020"):
            await studies(a, {"StudyDate": bad})


async def test_find_uid_lists_and_levels(cases):
    a, study = cases
    assert await studies(a, {"StudyInstanceUID": f"{uid('CT1/teach')}\\{uid('CT2/head')}"}) == ["CT1", "CT2"]
    assert await studies(a, {"StudyInstanceUID": "\\".join([uid(f"x{i}") for i in range(2000)] +
                                                             [uid("MR1/knee")])}) == ["MR1"]
    with pytest.raises(FindError, match="too many"):
        await studies(a, {"StudyInstanceUID": "\\".join(uid(f"x{i}") for i in range(6000))})
    # a series tag at study level: any series of the study matches; ModalitiesInStudy likewise
    assert await studies(a, {"Modality": "MR"}) == ["MR1"]
    assert await studies(a, {"ModalitiesInStudy": "CT\\MR"}) == ["CT1", "CT2", "MR1", "X[1]*"]
    assert len(await a.find_request(Level.SERIES, {"PatientID": "CT1"})) == 2
    found = await a.find_request(Level.INSTANCE, {"SOPInstanceUID": uid("CT1/teach/se1/2")})
    assert await public_ids(a, found) == [(await a.lookup(uid("CT1/teach/se1/2")))[0].public_id]
    with pytest.raises(FindError, match="NotATag"):
        await a.find_request(Level.STUDY, {"NotATag": "x"})
    # paging: since and limit over the matches in storage order
    every = await a.find_request(Level.STUDY, {})
    assert await a.find_request(Level.STUDY, {}, since=1, limit=2) == every[1:3]
    assert await public_ids(a, every) == [study[p] for p in ("CT1", "MR1", "CT2", "X[1]*")]


async def test_find_by_labels(cases):
    a, study = cases
    for pid, label in (("CT1", "Session3-chest"), ("CT1", "quiz"), ("MR1", "quiz")):
        assert await a.set_label(Level.STUDY, study[pid], label, True) is True
    assert await a.set_label(Level.STUDY, study["CT1"], "quiz", True) is False    # already there
    assert await a.index.all_labels() == ["Session3-chest", "quiz"]

    async def labelled(labels, constraint="All", **query):
        return await studies(a, query, labels=labels, labels_constraint=constraint)

    assert await labelled(["quiz"]) == ["CT1", "MR1"]
    assert await labelled(["quiz", "Session3-chest"]) == ["CT1"]
    assert await labelled(["quiz", "Session3-chest"], "Any") == ["CT1", "MR1"]
    assert await labelled(["Session3-chest"], "None") == ["CT2", "MR1", "X[1]*"]
    assert await labelled(["quiz"], PatientName="doe*") == ["MR1"]
    assert await a.set_label(Level.STUDY, study["CT1"], "quiz", False) is True
    assert await labelled(["quiz"]) == ["MR1"]
    with pytest.raises(NotFound):
        await a.set_label(Level.STUDY, study["CT1"][::-1], "quiz", True)
    await a.delete(Level.STUDY, study["CT1"])
    assert await a.index.all_labels() == ["quiz"]


# ------------------------------------------------------------------------------- the writer

async def test_store_then_already_stored_keeps_one_file(archive):
    data = ct_instance(rows=8, cols=8)
    first = await archive.ingest_bytes(data, Origin(kind="RestApi", remote_ip="127.0.0.1"))
    assert first.status == "Success"
    assert (await archive.ingest_bytes(data, Origin())).status == "AlreadyStored"
    # the same from a DICOM association's thread: written, then found already stored and removed
    again = await asyncio.to_thread(archive.store_received, data, Origin(kind="DicomProtocol"), 30)
    assert again.status == "AlreadyStored" and again.ids == first.ids
    # the thread has its answer first; the writer removes the duplicate's file before it takes the
    # next item of its queue: a write queued now returns once that is done
    await archive.set_protected(first.ids[0], False)
    assert len(files_on_disk(archive)) == 1
    inst = await archive.get(Level.INSTANCE, first.ids[3])
    assert await archive.read_file(inst) == data
    meta = await archive.index.metadata(inst.id)
    assert meta["Origin"] == "RestApi" and meta["RemoteIP"] == "127.0.0.1"
    st = await archive.statistics()
    assert (st.patients, st.studies, st.series, st.instances, st.disk_size) == (1, 1, 1, 1, len(data))
    kinds = [c[1] for c in await archive.index.changes(0, 100)]
    assert kinds == ["NewInstance", "NewSeries", "NewStudy", "NewPatient"]


async def test_overwrite_replaces_the_instance_and_its_file(open_archive):
    a = await open_archive(overwrite_instances=True)
    one, two = ct_instance(rows=8, cols=8, pixel_seed=1), ct_instance(rows=8, cols=8, pixel_seed=2)
    assert one != two
    first = await a.ingest_bytes(one, Origin())
    second = await a.ingest_bytes(two, Origin())
    assert second.status == "Success" and second.ids == first.ids
    assert await a.read_file(await a.get(Level.INSTANCE, first.ids[3])) == two
    assert [p.read_bytes() for p in files_on_disk(a)] == [two]
    # from a thread too (a DICOM store)
    third = await asyncio.to_thread(a.store_received, one, Origin(kind="DicomProtocol"), 30)
    await a.set_protected(first.ids[0], False)   # the replaced file goes before the writer's next item
    assert third.status == "Success" and [p.read_bytes() for p in files_on_disk(a)] == [one]


async def test_delete_reports_the_remaining_ancestor_and_removes_files(archive):
    a1 = await store(archive, index=1)
    a2 = await store(archive, index=2)
    other = await store(archive, study="st2")
    assert len(files_on_disk(archive)) == 3
    series = a2.ids[2]
    assert await archive.delete(Level.INSTANCE, a1.ids[3]) == {"ID": series, "Path": f"/series/{series}",
                                                              "Type": "Series"}
    assert len(files_on_disk(archive)) == 2
    with pytest.raises(NotFound):
        await archive.delete(Level.INSTANCE, a1.ids[3])
    with pytest.raises(NotFound):   # a patient ID is not a study
        await archive.delete(Level.STUDY, a2.ids[0])
    # the last instance of a study: the study and series go, the patient (with another study) stays
    patient = a2.ids[0]
    assert await archive.delete(Level.INSTANCE, a2.ids[3]) == {"ID": patient, "Path": f"/patients/{patient}",
                                                              "Type": "Patient"}
    assert await archive.index.resource(a2.ids[1]) is None and await archive.index.resource(series) is None
    assert await archive.delete(Level.STUDY, other.ids[1]) is None   # nothing above is left
    assert (await archive.statistics()).instances == 0 and await archive.index.resource(patient) is None
    assert files_on_disk(archive) == []
    kinds = [c[1] for c in await archive.index.changes(0, 100)]
    assert kinds.count("NewInstance") == 3


async def _patients(a: Archive) -> list[str]:
    ids = await a.index.list_ids(Level.PATIENT)
    tags = await a.index.main_tags(ids)
    return sorted(tags[i]["0010,0020"] for i in ids)


async def test_recycling_deletes_the_oldest_unprotected_patient_first(open_archive):
    a = await open_archive(max_patient_count=2)
    p1 = await store(a, patient_id="P1", index=1)
    await store(a, patient_id="P1", index=2)
    p2 = await store(a, patient_id="P2")
    await a.set_protected(p1.ids[0], True)
    assert (await a.get(Level.PATIENT, p1.ids[0])).protected
    await store(a, patient_id="P3")
    assert await _patients(a) == ["P1", "P3"]   # P2 (oldest unprotected) went; the protected P1 stayed
    assert len(files_on_disk(a)) == 3           # and its file with it
    assert ("Deleted", 0, p2.ids[0]) in [c[1:4] for c in await a.index.changes(0, 100)]
    # a new instance of a patient already there needs no room
    await store(a, patient_id="P3", index=2)
    assert await _patients(a) == ["P1", "P3"]
    await a.set_protected(p1.ids[0], False)
    await store(a, patient_id="P4")
    assert await _patients(a) == ["P3", "P4"]
    with pytest.raises(NotFound):
        await a.set_protected(p1.ids[0], True)


async def test_recycling_by_size_never_touches_protected_and_refuses_when_it_must(open_archive):
    a = await open_archive(max_storage_mb=1)   # each 64x64 instance is about 9 KB
    for k in range(1, 41):
        first = await store(a, patient_id="P1", rows=64, cols=64, index=k)
    await a.set_protected(first.ids[0], True)
    with pytest.raises(StoreRefused, match="protected"):
        await store(a, patient_id="BIG", rows=700, cols=700)    # 980 KB: does not fit beside P1
    with pytest.raises(StoreRefused, match="MaximumStorageSize"):
        await store(a, patient_id="HUGE", rows=800, cols=800)   # larger than the limit itself
    assert (await a.statistics()).instances == 40 and len(files_on_disk(a)) == 40   # nothing left behind
    await a.set_protected(first.ids[0], False)
    assert (await store(a, patient_id="BIG", rows=700, cols=700)).status == "Success"
    assert await _patients(a) == ["BIG"] and len(files_on_disk(a)) == 1


async def test_reject_mode_refuses_with_the_reason(open_archive):
    a = await open_archive(max_patient_count=1, storage_mode="Reject")
    await store(a, patient_id="P1")
    with pytest.raises(StoreRefused, match="MaximumStorageMode is Reject"):
        await store(a, patient_id="P2")
    with pytest.raises(StoreRefused, match="Reject"):   # the DICOM path: from an association's thread
        await asyncio.to_thread(a.store_received, ct_instance(patient_id="P3", rows=8, cols=8),
                                Origin(kind="DicomProtocol"), 30)
    p1 = (await a.lookup("P1"))[0].public_id
    await a.set_protected(p1, False)   # the refused file goes before the writer's next item
    assert await _patients(a) == ["P1"] and len(files_on_disk(a)) == 1


async def test_resources_become_stable_after_stable_age(open_archive):
    a = await open_archive(stable_age=0.4)
    r = await store(a)
    assert not (await a.get(Level.STUDY, r.ids[1])).stable
    deadline = time.monotonic() + 30          # a hang guard: the loop looks every stable_age / 4
    while not (await a.get(Level.STUDY, r.ids[1])).stable:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    kinds = {c[1] for c in await a.index.changes(0, 100)}
    assert {"StableSeries", "StableStudy", "StablePatient"} <= kinds
    await store(a, index=2)                   # news: not stable any more
    assert not (await a.get(Level.STUDY, r.ids[1])).stable


# ------------------------------------------------------------------------------- after a power cut

async def test_instances_whose_index_rows_a_power_cut_took_are_indexed_again(open_archive, tmp_path, caplog):
    """Stores commit the index without a sync (the files are synced): a power cut may take the
    last rows. Here the index is put back as it was before the last stores, as a power cut
    leaves it; the files stored since are found and indexed at the next open."""
    sent: dict[str, bytes] = {}

    async def send(a: Archive, **kw) -> str:
        data = ct_instance(rows=8, cols=8, **kw)
        r = await a.ingest_bytes(data, Origin())
        sent[r.ids[3]] = data
        return r.ids[3]

    a = await open_archive()
    early = [await send(a, series="a", index=i) for i in (1, 2, 3)]
    await a.close()                             # the index checkpointed: one file, no WAL
    index = tmp_path / "data" / "pipacs-index.sqlite"
    before = index.read_bytes()
    a = await open_archive()
    for i in (1, 2, 3, 4):
        await send(a, series="b", index=i)
    await a.close()
    for suffix in ("-wal", "-shm"):
        index.with_name(index.name + suffix).unlink(missing_ok=True)
    index.write_bytes(before)                   # the rows of the later stores are gone
    caplog.set_level(logging.WARNING, logger="pipacs.archive")
    a = await open_archive()                    # open() reconciles
    assert "indexed 4 files stored before a power cut" in caplog.text
    assert set(await public_ids(a, await a.index.list_ids(Level.INSTANCE))) == set(sent)
    for public_id, data in sent.items():
        inst = await a.get(Level.INSTANCE, public_id)
        assert await a.read_file(inst) == data
        origin = (await a.index.metadata(inst.id))["Origin"]
        assert origin == ("RestApi" if public_id in early else "Unknown")   # how the later ones came is lost
    assert await a.reconcile() == {"temporary": 0, "removed": 0, "indexed": 0, "missing": 0}


async def test_a_deleted_instance_whose_file_survived_stays_deleted(open_archive):
    """A row is deleted (and synced) before its file; were the power cut in between, the file
    is removed at the next open, not indexed again."""
    a = await open_archive()
    victim, kept = await store(a, index=1), await store(a, index=2)
    path, _ = await a.instance_file(victim.ids[3])
    content = path.read_bytes()
    await a.delete(Level.INSTANCE, victim.ids[3])
    await a.close()
    path.write_bytes(content)                   # the unlink did not reach the disk
    a = await open_archive()
    assert await public_ids(a, await a.index.list_ids(Level.INSTANCE)) == [kept.ids[3]]
    assert not path.exists() and len(files_on_disk(a)) == 1
    assert await a.reconcile() == {"temporary": 0, "removed": 0, "indexed": 0, "missing": 0}


# ------------------------------------------------------------------- a study's copy of its patient's tags

async def test_each_study_keeps_the_patient_tags_its_instances_gave(archive):
    """Anonymized teaching cases often share one PatientID under different names: as in Orthanc,
    each study answers with (and is matched on) what its own first instance said; the patient keeps
    what its first instance said."""
    from appliance.archive import answers, build_query
    first = await store(archive, patient_id="ANON", patient_name="Case^One", study="one", sex="F")
    second = await store(archive, patient_id="ANON", patient_name="Case^Two", study="two", sex="M")
    assert first.ids[0] == second.ids[0]                    # one patient
    name, sex = 0x00100010, 0x00100040
    q = build_query(Level.STUDY, {"PatientName": "Case^Two"})
    assert await public_ids(archive, await archive.find(q)) == [second.ids[1]]
    got = await answers(archive, build_query(Level.STUDY, {}), [0x0020000D, name, sex])
    assert sorted((a[name], a[sex]) for a in got) == [("Case^One", "F"), ("Case^Two", "M")]
    series = await answers(archive, build_query(Level.SERIES, {"PatientName": "Case^Two"}), [name])
    assert [a[name] for a in series] == ["Case^Two"]
    patient = await answers(archive, build_query(Level.PATIENT, {}), [name])
    assert [a[name] for a in patient] == ["Case^One"]


async def test_an_index_without_study_copies_gets_them_from_the_patient(open_archive, tmp_path):
    """Schema 2 kept patient tags on the patient only: the upgrade copies them to each study, so
    that studies answer what they answered before."""
    import sqlite3

    from appliance.archive import answers, build_query
    a = await open_archive()
    ids = (await store(a, patient_id="OLD", patient_name="Old^Index", study="s")).ids
    await a.close()
    db = sqlite3.connect(tmp_path / "data" / "pipacs-index.sqlite")
    with db:
        db.execute("DELETE FROM main_tags WHERE tag LIKE '0010,%' AND resource_id IN "
                   "(SELECT id FROM resources WHERE level = 1)")
        db.execute("UPDATE properties SET value='2' WHERE name='schema'")
    db.close()
    b = await open_archive()
    got = await answers(b, build_query(Level.STUDY, {"PatientName": "Old^*"}), [0x00100010, 0x0020000D])
    assert [(x[0x00100010], x[0x0020000D]) for x in got] == [("Old^Index", uid("OLD/s"))]
    assert ids[1] in await public_ids(b, await b.find(build_query(Level.STUDY, {"PatientName": "Old*"})))
