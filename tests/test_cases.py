"""Teaching cases: the document's checks (plain functions), the archive's case API on a real index
(search ranked by FTS5, filters, visibility, deletes), the migration of a schema 5 index, and the
REST routes against a real server with teacher and student callers."""

from __future__ import annotations

import asyncio
import io
import random
import shutil
import sqlite3
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.archive import (
    Archive,
    CaseConflict,
    CaseExists,
    CaseInvalid,
    CaseQuery,
    Level,
    NotFound,
    Origin,
    build_query,
)
from appliance.archive.index.sqlite import SCHEMA_VERSION
from appliance.archive.index.sqlite_cases import CASE_SCHEMA, fts_match
from appliance.teaching import casedoc
from appliance.teaching.casedoc import (
    MAX_ANNOTATIONS,
    MAX_KEY_IMAGES,
    MAX_KEYWORD_CHARS,
    MAX_KEYWORDS,
    MAX_TEXT_BYTES,
    NO_PIXEL_SPACING,
    merge_update,
    validate_create,
    validate_import,
)

from .synth import ct_instance

FIXTURES = Path(__file__).resolve().parent / "data"


def instance(deidentified: bool = True, pixel_spacing: bool = True, imager_spacing: bool = False, **kw) -> bytes:
    kw.setdefault("rows", 8)
    kw.setdefault("cols", 10)
    ds = pydicom.dcmread(io.BytesIO(ct_instance(**kw)))
    if deidentified:
        ds.PatientIdentityRemoved = "YES"
    if not pixel_spacing:
        del ds.PixelSpacing
    if imager_spacing:
        ds.ImagerPixelSpacing = [0.5, 0.25]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
async def archive(tmp_path: Path):
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    yield a
    await a.close()


async def store(a: Archive, data: bytes) -> tuple[str, str, str, str]:
    return (await a.ingest_bytes(data, Origin())).ids


async def student_studies(a: Archive) -> set[str]:
    q = build_query(Level.STUDY, {})
    q.students = True
    return {r.public_id for r in await a.index.resources_by_ids(await a.find(q))}


# ------------------------------------------------------------------ the document's checks


def test_a_create_body_gets_every_field_and_the_board_keeps_its_own() -> None:
    doc = validate_create({"Title": "Tension pneumothorax", "Keywords": ["chest", "trauma"]})
    assert doc["Title"] == "Tension pneumothorax" and doc["History"] == "" and doc["KeyImages"] == []
    assert doc["State"] == "draft" and doc["Source"] == {}
    assert validate_create({"State": "draft", "Source": {}})["State"] == "draft"   # what a new case is anyway
    for field, value in (("ID", "c6d1e1a0-0000-4000-8000-000000000000"), ("Created", "2026-01-01T00:00:00Z"),
                         ("State", "published"), ("Modalities", ["CT"]), ("Source", {"KeyObject": "1.2"})):
        with pytest.raises(CaseInvalid, match=f"^{field}"):
            validate_create({field: value})


@pytest.mark.parametrize("body, field", [
    ({"Title": 3}, "Title"),
    ({"Titel": "x"}, "Titel"),
    ({"Keywords": "chest"}, "Keywords"),
    ({"Keywords": ["a", 1]}, r"Keywords\[1\]"),
    ({"Keywords": ["k"] * (MAX_KEYWORDS + 1)}, "Keywords"),
    ({"Keywords": ["k" * (MAX_KEYWORD_CHARS + 1)]}, r"Keywords\[0\]"),
    ({"BodyRegion": "Toe"}, "BodyRegion"),
    ({"Category": "chest"}, "Category"),
    ({"Difficulty": "hard"}, "Difficulty"),
    ({"Collections": ["no spaces"]}, r"Collections\[0\]"),
    ({"Studies": ["a", "a"]}, "Studies"),
    ({"KeyImages": [{"Frame": 1}]}, r"KeyImages\[0\].Instance"),
    ({"KeyImages": [{"Instance": "i", "Frame": 0}]}, r"KeyImages\[0\].Frame"),
    ({"KeyImages": [{"Instance": "i", "Frame": True}]}, r"KeyImages\[0\].Frame"),
    ({"KeyImages": [{"Instance": "i", "Zoom": 21}]}, r"KeyImages\[0\].Zoom"),
    ({"KeyImages": [{"Instance": "i", "Window": {"Center": 40, "Width": 0}}]}, r"KeyImages\[0\].Window.Width"),
    ({"KeyImages": [{"Instance": "i", "Caption": "c" * 1001}]}, r"KeyImages\[0\].Caption"),
    ({"KeyImages": [{"Instance": "i"}] * (MAX_KEY_IMAGES + 1)}, "KeyImages"),
    ({"KeyImages": [{"Instance": "i", "Annotations": [{"Type": "arrow", "Points": [[0, 0]]}]}]},
     r"KeyImages\[0\].Annotations\[0\].Points"),
    ({"KeyImages": [{"Instance": "i", "Annotations": [{"Type": "circle", "Points": []}]}]},
     r"KeyImages\[0\].Annotations\[0\].Type"),
    ({"KeyImages": [{"Instance": "i", "Annotations": [{"Type": "text", "Points": [[1, 1]]}]}]},
     r"KeyImages\[0\].Annotations\[0\].Text"),
    ({"KeyImages": [{"Instance": "i", "Annotations": [{"Type": "arrow", "Points": [[0, 0], [1, "2"]]}]}]},
     r"KeyImages\[0\].Annotations\[0\].Points"),
    ({"KeyImages": [{"Instance": "i", "Annotations": [{"Type": "text", "Points": [[1, 1]], "Text": "a"}]
                     * (MAX_ANNOTATIONS + 1)}]}, r"KeyImages\[0\].Annotations"),
    ({"Missing": [{"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2", "SOPInstanceUID": "x"}]},
     r"Missing\[0\].SOPInstanceUID"),
])
def test_bad_bodies_are_refused_naming_the_field(body: dict, field: str) -> None:
    with pytest.raises(CaseInvalid, match=f"^{field}"):
        validate_create(body)


def test_a_text_field_holds_at_most_100_000_bytes_of_utf8() -> None:
    assert validate_create({"Discussion": "a" * MAX_TEXT_BYTES})["Discussion"]
    with pytest.raises(CaseInvalid, match="^Discussion: at most 100000 bytes"):
        validate_create({"Discussion": "a" * (MAX_TEXT_BYTES + 1)})
    with pytest.raises(CaseInvalid, match="^History"):      # 50 001 characters of two bytes each
        validate_create({"History": "é" * (MAX_TEXT_BYTES // 2 + 1)})


def test_an_update_merges_and_read_only_fields_must_equal_the_stored_ones() -> None:
    stored = {**validate_create({"Title": "old", "History": "kept"}), "ID": "x", "Created": "t", "Updated": "t",
              "Modalities": ["CT"], "State": "draft", "Source": {}}
    merged = merge_update(stored, {"Title": "new", "ID": "x", "Modalities": ["CT"]})
    assert merged["Title"] == "new" and merged["History"] == "kept"
    with pytest.raises(CaseInvalid, match="^State cannot be changed: publish"):
        merge_update(stored, {"State": "published"})
    with pytest.raises(CaseInvalid, match="^ID"):
        merge_update(stored, {"ID": "y"})
    with pytest.raises(CaseInvalid, match="^Nope"):
        merge_update(stored, {"Nope": 1})


def test_an_import_keeps_the_boards_fields() -> None:
    doc = validate_import({"ID": "c6d1e1a0-0000-4000-8000-000000000000", "Created": "2026-01-01T00:00:00Z",
                           "State": "published", "Source": {"KeyObject": "1.2.3"}, "SchemaVersion": 1,
                           "Modalities": ["CT"]})
    assert doc["ID"].startswith("c6d1") and doc["State"] == "published" and doc["Source"] == {"KeyObject": "1.2.3"}
    assert "Modalities" not in doc and "SchemaVersion" not in doc
    for bad, field in (({"ID": "../x"}, "ID"), ({"Created": "yesterday"}, "Created"), ({"State": "gone"}, "State"),
                       ({"SchemaVersion": 2}, "SchemaVersion"), ({"Source": {"KeyObject": "x"}}, "Source")):
        with pytest.raises(CaseInvalid, match=f"^{field}"):
            validate_import(bad)


def test_key_images_against_their_image() -> None:
    ki = validate_create({"KeyImages": [{"Instance": "i", "Annotations": [
        {"Type": "length", "Points": [[0, 0], [3, 4]]}, {"Type": "ellipse", "Points": [[0, 0], [10, 8]]}]}]}
    )["KeyImages"][0]
    tags = {"Rows": 8, "Columns": 10, "NumberOfFrames": 1, "PixelSpacing": [2.0, 1.0], "ImagerPixelSpacing": None}
    out = casedoc.check_key_image(ki, "KeyImages[0]", tags)
    # Pixel Spacing is row spacing \ column spacing: x (columns) 3 px * 1 mm, y (rows) 4 px * 2 mm
    assert out["Annotations"][0]["LengthMm"] == pytest.approx((3 ** 2 + 8 ** 2) ** 0.5, abs=1e-3)
    assert "LengthNote" not in out["Annotations"][0]
    assert "LengthMm" not in out["Annotations"][1]
    none = casedoc.check_key_image(ki, "KeyImages[0]", {**tags, "PixelSpacing": None})
    assert none["Annotations"][0]["LengthMm"] is None and none["Annotations"][0]["LengthNote"] == NO_PIXEL_SPACING
    imager = casedoc.check_key_image(ki, "KeyImages[0]", {**tags, "PixelSpacing": None,
                                                          "ImagerPixelSpacing": [1.0, 1.0]})
    assert imager["Annotations"][0]["LengthMm"] == 5.0
    assert "Imager Pixel Spacing" in imager["Annotations"][0]["LengthNote"]
    with pytest.raises(CaseInvalid, match=r"^KeyImages\[0\].Annotations\[1\].Points\[1\]"):
        casedoc.check_key_image(ki, "KeyImages[0]", {**tags, "Columns": 9})
    with pytest.raises(CaseInvalid, match=r"^KeyImages\[0\].Frame"):
        casedoc.check_key_image({**ki, "Frame": 2}, "KeyImages[0]", tags)


# ------------------------------------------------------------------ search expressions


def test_what_a_user_types_becomes_a_safe_match() -> None:
    assert fts_match("pneumothorax") == '"pneumothorax"*'
    assert fts_match('ring "ring enhancing" lesion') == '"ring"* AND "ring enhancing" AND "lesion"*'
    assert fts_match('"unbalanced quote') == '"unbalanced"* AND "quote"*'
    assert fts_match("NEAR(a b) OR -c* ^d:e") == ('"NEAR"* AND "a"* AND "b"* AND "OR"* AND "c"* AND "d"* '
                                                   'AND "e"*')
    assert fts_match("***") == "" and fts_match('""') == ""
    assert fts_match("Œdème") == '"OEdème"*'


# ------------------------------------------------------------------ the archive's case API


async def test_create_get_update_delete(archive: Archive) -> None:
    _, study, _, inst = await store(archive, instance())
    doc = validate_create({"Title": "Pneumothorax", "Studies": [study], "KeyImages": [
        {"Instance": inst, "Caption": "the rim", "Annotations": [{"Type": "length", "Points": [[0, 0], [3, 4]]}]}]})
    made = await archive.create_case(doc)
    assert made["ID"] and made["State"] == "draft" and made["Modalities"] == ["CT"]
    assert made["Created"] == made["Updated"] and made["Created"].endswith("Z")
    # synth's Pixel Spacing is 0.9765625 \ 0.9765625
    assert made["KeyImages"][0]["Annotations"][0]["LengthMm"] == pytest.approx(5 * 0.9765625, abs=1e-3)
    assert await archive.get_case(made["ID"]) == made
    changed = await archive.update_case(made["ID"], merge_update(made, {"History": "a fall"}))
    assert changed["History"] == "a fall" and changed["Title"] == "Pneumothorax" and changed["Created"] == made["Created"]
    summaries, total = await archive.list_cases(CaseQuery())
    assert total == 1 and summaries[0]["KeyImageCount"] == 1 and summaries[0]["Thumbnail"] == inst
    assert summaries[0]["Studies"] == [study]
    assert [c["ID"] for c in await archive.cases_using_study(study)] == [made["ID"]]
    await archive.delete_case(made["ID"])
    with pytest.raises(NotFound):
        await archive.get_case(made["ID"])
    with pytest.raises(NotFound):
        await archive.delete_case(made["ID"])
    assert await archive.list_cases(CaseQuery()) == ([], 0)


async def test_an_import_keeps_its_id_and_is_not_doubled(archive: Archive) -> None:
    doc = {"ID": "c6d1e1a0-0000-4000-8000-000000000001", "Title": "imported", "Created": "2020-01-01T00:00:00Z",
           "Updated": "2020-01-02T00:00:00Z"}
    made = await archive.create_case(doc)
    assert (made["ID"], made["Created"], made["Updated"]) == (doc["ID"], doc["Created"], doc["Updated"])
    with pytest.raises(CaseExists):
        await archive.create_case(doc)


async def test_key_images_must_be_of_the_cases_studies(archive: Archive) -> None:
    _, study, _, inst = await store(archive, instance(patient_id="A"))
    _, _, _, other_inst = await store(archive, instance(patient_id="B"))
    with pytest.raises(CaseInvalid, match=r"^KeyImages\[0\].Instance"):
        await archive.create_case({"Studies": [study], "KeyImages": [{"Instance": other_inst}]})
    with pytest.raises(CaseInvalid, match=r"^Studies\[1\]: no study nope"):
        await archive.create_case({"Studies": [study, "nope"]})
    with pytest.raises(CaseInvalid, match=r"^KeyImages\[0\].Annotations\[0\].Points\[0\]"):
        await archive.create_case({"Studies": [study], "KeyImages": [
            {"Instance": inst, "Annotations": [{"Type": "text", "Points": [[10.5, 0]], "Text": "x"}]}]})
    assert await archive.list_cases(CaseQuery()) == ([], 0)


async def test_lengths_without_pixel_spacing_say_so(archive: Archive) -> None:
    _, s1, _, plain = await store(archive, instance(pixel_spacing=False, patient_id="NPS"))
    _, s2, _, imager = await store(archive, instance(pixel_spacing=False, imager_spacing=True, patient_id="IPS"))
    length = [{"Type": "length", "Points": [[0, 0], [4, 0]]}]
    made = await archive.create_case({"Studies": [s1, s2], "KeyImages": [
        {"Instance": plain, "Annotations": length}, {"Instance": imager, "Annotations": length}]})
    a, b = (ki["Annotations"][0] for ki in made["KeyImages"])
    assert a["LengthMm"] is None and a["LengthNote"] == NO_PIXEL_SPACING
    assert b["LengthMm"] == 1.0 and "Imager Pixel Spacing" in b["LengthNote"]   # 4 columns * 0.25 mm


async def test_a_published_case_shows_its_de_identified_studies_to_students(archive: Archive) -> None:
    _, anon, _, _ = await store(archive, instance(True, patient_id="ANON"))
    _, real, _, _ = await store(archive, instance(False, patient_id="REAL"))
    case = await archive.create_case({"Title": "t", "Studies": [anon]})
    assert await student_studies(archive) == set()
    assert not await archive.student_may_see(Level.STUDY, anon)
    await archive.set_case_state(case["ID"], "published")
    assert await student_studies(archive) == {anon}
    assert await archive.student_may_see(Level.STUDY, anon)      # the cache was told
    assert [c["ID"] for c in (await archive.list_cases(CaseQuery(students=True)))[0]] == [case["ID"]]
    await archive.set_case_state(case["ID"], "draft")
    assert not await archive.student_may_see(Level.STUDY, anon)
    assert (await archive.list_cases(CaseQuery(students=True)))[1] == 0
    # a case with an identifiable study is not published, and says which and what to do
    bad = await archive.create_case({"Title": "t", "Studies": [anon, real]})
    with pytest.raises(CaseConflict, match=f"study {real} is not de-identified.*anonymize"):
        await archive.set_case_state(bad["ID"], "published")
    assert real not in await student_studies(archive)
    published = await archive.set_case_state(case["ID"], "published")
    with pytest.raises(CaseConflict, match=f"study {real}"):
        await archive.update_case(case["ID"], merge_update(published, {"Studies": [anon, real]}))
    with pytest.raises(CaseConflict):
        await archive.create_case({"Studies": [real], "State": "published"})


async def test_deleting_a_study_cases_use_is_refused_unless_asked(archive: Archive) -> None:
    _, study, _, inst = await store(archive, instance(patient_id="P1"))
    patient, study2, _, inst2 = await store(archive, instance(patient_id="P1", study="st2"))
    case = await archive.create_case({"Title": "t", "Studies": [study, study2], "KeyImages": [
        {"Instance": inst, "Caption": "zebra"}, {"Instance": inst2, "Caption": "giraffe"}]})
    with pytest.raises(CaseConflict, match=case["ID"]):
        await archive.delete(Level.STUDY, study, "refuse")
    with pytest.raises(CaseConflict, match=case["ID"]):
        await archive.delete(Level.PATIENT, patient, "refuse")
    assert (await archive.get_case(case["ID"]))["Studies"] == [study, study2]
    assert (await archive.list_cases(CaseQuery(text="zebra")))[1] == 1
    await archive.delete(Level.STUDY, study, "detach")
    after = await archive.get_case(case["ID"])
    assert after["Studies"] == [study2] and [k["Instance"] for k in after["KeyImages"]] == [inst2]
    assert after["Updated"] >= case["Updated"]
    assert (await archive.list_cases(CaseQuery(text="zebra")))[1] == 0      # its caption left the index
    assert (await archive.list_cases(CaseQuery(text="giraffe")))[1] == 1
    await archive.delete(Level.INSTANCE, inst2)      # an instance: its key image goes with it
    assert (await archive.get_case(case["ID"]))["KeyImages"] == []


async def test_missing_instances_and_store_listeners(archive: Archive) -> None:
    heard: list[list[str]] = []
    done = asyncio.Event()

    async def listener(results) -> None:
        heard.append([parsed.sop_instance_uid for _, parsed in results])
        done.set()

    archive.add_store_listener(listener)
    uid = "1.2.826.0.1.3680043.8.498.1"
    case = await archive.create_case({"Missing": [{"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3",
                                                   "SOPInstanceUID": uid}]})
    assert await archive.cases_missing([uid, "1.9"]) == {uid: [case["ID"]]}
    data = instance(patient_id="L")
    await store(archive, data)
    await asyncio.wait_for(done.wait(), 30)
    assert heard == [[pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID]]
    await store(archive, data)          # already stored: nothing new to tell
    await archive.create_case({})       # a change after it: the queue has moved on
    assert len(heard) == 1


# ------------------------------------------------------------------ search over generated cases

WORDS = ["liver", "spleen", "kidney", "aorta", "femur", "tibia", "skull", "pelvis", "bladder", "colon", "thyroid", "pancreas", "lesion", "mass", "cyst", "fracture", "hemorrhage", "infarct", "abscess", "nodule", "effusion", "stenosis", "aneurysm", "dissection"]


def generated(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        docs.append({"Title": " ".join(rng.sample(WORDS, 3)), "History": " ".join(rng.sample(WORDS, 8)),
                     "Discussion": " ".join(rng.choices(WORDS, k=40)), "Keywords": rng.sample(WORDS, 2),
                     "Category": rng.choice(casedoc.CATEGORIES), "BodyRegion": rng.choice(casedoc.BODY_REGIONS),
                     "Difficulty": rng.choice(casedoc.DIFFICULTIES), "Collections": [f"set{i % 5}"]})
    return docs


@pytest.fixture
async def searchable(archive: Archive):
    """300 generated cases, and a few written for the test."""
    for doc in generated(300):
        await archive.create_case(doc)
    special = {
        "title": await archive.create_case({"Title": "Tension pneumothorax", "Category": "Chest"}),
        "discussion": await archive.create_case({"Title": "Chest trauma",
                                                 "Discussion": "no pneumothorax was seen on this film"}),
        "phrase": await archive.create_case({"Title": "Ring enhancing lesion", "Findings": "a ring, enhancing"}),
        "split": await archive.create_case({"Title": "enhancing rim", "Findings": "ring shadow"}),
        "french": await archive.create_case({"Title": "Œdème pulmonaire", "Category": "Chest"}),
        "german": await archive.create_case({"Title": "Lungenödem", "Discussion": "Ödem der Lunge"}),
        "html": await archive.create_case({"Title": "<img src=x onerror=alert(1)> NEAR(\"x\")"}),
    }
    archive.special = {k: v["ID"] for k, v in special.items()}
    return archive


async def found(a: Archive, **kw) -> list[str]:
    return [s["ID"] for s in (await a.list_cases(CaseQuery(limit=1000, **kw)))[0]]


async def test_search_ranks_a_title_hit_above_a_discussion_hit(searchable: Archive) -> None:
    sp = searchable.special
    assert await found(searchable, text="pneumothorax") == [sp["title"], sp["discussion"]]
    assert await found(searchable, text="PNEUMOTHORAX") == [sp["title"], sp["discussion"]]
    assert await found(searchable, text="pneumo") == [sp["title"], sp["discussion"]]        # prefix
    assert await found(searchable, text="pneumothorax tension") == [sp["title"]]             # every word


async def test_search_phrases_accents_and_hostile_text(searchable: Archive) -> None:
    sp = searchable.special
    assert set(await found(searchable, text="ring enhancing")) == {sp["phrase"], sp["split"]}
    assert await found(searchable, text='"ring enhancing"') == [sp["phrase"]]
    assert await found(searchable, text="oedeme") == [sp["french"]]
    assert await found(searchable, text="œdème") == [sp["french"]]
    assert await found(searchable, text="EDEME") == []          # a word's start, not its middle
    assert set(await found(searchable, text="oedem")) == {sp["french"], sp["german"]}   # Ödem spelt oe
    assert await found(searchable, text="odem") == [sp["german"]]
    assert await found(searchable, text="Ödem") == [sp["german"]]
    assert await found(searchable, text="lungenodem") == [sp["german"]]
    assert await found(searchable, text='NEAR("x"') == [sp["html"]]
    assert await found(searchable, text="onerror") == [sp["html"]]


async def test_search_with_filters_paging_and_totals(searchable: Archive) -> None:
    docs = generated(300)
    liver = {i for i, d in enumerate(docs) if any("liver" in d[f] for f in ("Title", "History", "Discussion"))
             or "liver" in d["Keywords"]}
    ids, total = await searchable.list_cases(CaseQuery(text="liver", limit=1000))
    assert total == len(liver) == len(ids)
    chest = await found(searchable, text="liver", category="Chest")
    expected = sum(1 for i in liver if docs[i]["Category"] == "Chest")
    assert len(chest) == expected and all(s in {x["ID"] for x in ids} for s in chest)
    both = await found(searchable, category="Chest", collection="set1", body_region="Head")
    assert len(both) == sum(1 for i, d in enumerate(docs) if d["Category"] == "Chest" and i % 5 == 1
                            and d["BodyRegion"] == "Head")
    page1, t1 = await searchable.list_cases(CaseQuery(text="liver", limit=5))
    page2, t2 = await searchable.list_cases(CaseQuery(text="liver", limit=5, since=5))
    assert t1 == t2 == total and len(page1) == 5
    assert [s["ID"] for s in page1 + page2] == [s["ID"] for s in ids[:10]]
    # newest first without text
    every = await found(searchable)
    assert every[0] == searchable.special["html"] and len(every) == 307
    assert await found(searchable, students=True) == []
    await searchable.set_case_state(searchable.special["discussion"], "published")
    assert await found(searchable, text="pneumothorax", students=True) == [searchable.special["discussion"]]
    assert await found(searchable, state="published") == [searchable.special["discussion"]]


async def test_search_by_modality(archive: Archive) -> None:
    _, ct, _, _ = await store(archive, instance(patient_id="CT1"))
    _, mr, _, _ = await store(archive, instance(patient_id="MR1", modality="MR"))
    a = await archive.create_case({"Title": "ct case", "Studies": [ct]})
    b = await archive.create_case({"Title": "mr case", "Studies": [mr]})
    assert await found(archive, modality="CT") == [a["ID"]]
    assert await found(archive, modality="mr") == [b["ID"]]
    assert await found(archive, modality="US") == []


_hostile = st.text(alphabet=st.sampled_from(list('"*-^:()+ \'NEAROTDab\\%_ńé\x00{}[]')), max_size=40) | st.text(
    max_size=30)


@pytest.fixture(scope="module")
def fts_db():
    """A real FTS5 table of the kind the index has (its schema), in memory."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE resources(id INTEGER PRIMARY KEY)")
    db.executescript(CASE_SCHEMA)
    db.execute("INSERT INTO cases_text(rowid, title) VALUES(1, 'near and or not pneumothorax')")
    yield db
    db.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_hostile)
def test_no_typed_text_is_an_fts5_error(fts_db, text: str) -> None:
    """Whatever is typed, the expression is valid FTS5 (sqlite3.OperationalError otherwise)."""
    match = fts_match(text)
    if match:
        fts_db.execute("SELECT rowid FROM cases_text WHERE cases_text MATCH ?", (match,)).fetchall()
    else:
        assert not any(ch.isalnum() for ch in text)


async def test_hostile_searches_through_the_archive(searchable: Archive) -> None:
    for text in ('"', '""', '"a" "', "NEAR(", "a NEAR/3 b", "*", "-", "^", "title:x", "(", ")", "AND", "OR NOT",
                 "\x00", "a" * 1000, "é*", '"unbalanced', "'; DROP TABLE cases; --"):
        await searchable.list_cases(CaseQuery(text=text))
    assert len(await found(searchable)) == 307


# ------------------------------------------------------------------ schema 5 -> 6


async def test_an_index_of_schema_5_gains_the_case_tables(tmp_path: Path) -> None:
    """tests/data/schema5: a folder written by pipacs at schema 5 (commit eb96d6c): two studies, one
    de-identified, released and labelled 'chest'."""
    shutil.copytree(FIXTURES / "schema5", tmp_path / "data")
    db = sqlite3.connect(tmp_path / "data" / "pipacs-index.sqlite")
    assert db.execute("SELECT value FROM properties WHERE name='schema'").fetchone() == ("5",)
    assert db.execute("SELECT 1 FROM sqlite_master WHERE name='cases'").fetchone() is None
    db.close()
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    try:
        studies = {r.public_id for r in await a.index.resources_by_ids(await a.find(build_query(Level.STUDY, {})))}
        assert len(studies) == 2
        assert len(await student_studies(a)) == 1          # the released one, as before
        case = await a.create_case({"Title": "after the upgrade", "Studies": sorted(studies)})
        assert (await a.list_cases(CaseQuery(text="upgrade")))[1] == 1
        assert (await a.get_case(case["ID"]))["Studies"] == sorted(studies)
    finally:
        await a.close()
    db = sqlite3.connect(tmp_path / "data" / "pipacs-index.sqlite")
    assert db.execute("SELECT value FROM properties WHERE name='schema'").fetchone() == (str(SCHEMA_VERSION),)
    assert SCHEMA_VERSION == 6
    db.close()

