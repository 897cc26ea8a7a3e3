"""Teaching cases: the document's checks (plain functions), the archive's case API on a real index
(search ranked by FTS5, filters, visibility, deletes), the migration of a schema 5 index, and the
REST routes against a real server with teacher and student callers."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import re
import shutil
import sqlite3
import urllib.parse
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.archive import (
    MAX_ANNOTATIONS,
    MAX_KEY_IMAGES,
    MAX_KEYWORD_CHARS,
    MAX_KEYWORDS,
    MAX_TEXT_BYTES,
    NO_PIXEL_SPACING,
    Archive,
    CaseConflict,
    CaseExists,
    CaseInvalid,
    CaseQuery,
    Level,
    NotFound,
    StoreRefused,
    build_query,
    caserules,
    merge_update,
    validate_create,
    validate_import,
)
from appliance.archive.index.sqlite import SCHEMA_VERSION
from appliance.archive.index.sqlite_cases import CASE_SCHEMA, case_query_sql, fts_match

from .helpers import store
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


def test_text_that_is_not_unicode_or_json_is_refused() -> None:
    for bad in ({"Title": "\ud800"}, {"Keywords": ["ok", "\udfff"]}, {"Title": float("nan")}, {"Title": {1, 2}}):
        with pytest.raises(CaseInvalid):
            validate_import(bad)
    with pytest.raises(CaseInvalid, match="not JSON"):
        validate_import({"KeyImages": [{"Instance": "i", "Window": {"Center": float("inf"), "Width": 1}}]})
    with pytest.raises(CaseInvalid, match=r"^KeyImages\[0\].Instance"):
        validate_create({"KeyImages": [{"Instance": "i" * 65}]})


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
    out = caserules.check_key_image(ki, "KeyImages[0]", tags)
    # Pixel Spacing is row spacing \ column spacing: x (columns) 3 px * 1 mm, y (rows) 4 px * 2 mm
    assert out["Annotations"][0]["LengthMm"] == pytest.approx((3 ** 2 + 8 ** 2) ** 0.5, abs=1e-3)
    assert "LengthNote" not in out["Annotations"][0]
    assert "LengthMm" not in out["Annotations"][1]
    none = caserules.check_key_image(ki, "KeyImages[0]", {**tags, "PixelSpacing": None})
    assert none["Annotations"][0]["LengthMm"] is None and none["Annotations"][0]["LengthNote"] == NO_PIXEL_SPACING
    imager = caserules.check_key_image(ki, "KeyImages[0]", {**tags, "PixelSpacing": None,
                                                          "ImagerPixelSpacing": [1.0, 1.0]})
    assert imager["Annotations"][0]["LengthMm"] == 5.0
    assert "Imager Pixel Spacing" in imager["Annotations"][0]["LengthNote"]
    with pytest.raises(CaseInvalid, match=r"^KeyImages\[0\].Annotations\[1\].Points\[1\]"):
        caserules.check_key_image(ki, "KeyImages[0]", {**tags, "Columns": 9})
    with pytest.raises(CaseInvalid, match=r"^KeyImages\[0\].Frame"):
        caserules.check_key_image({**ki, "Frame": 2}, "KeyImages[0]", tags)


# ------------------------------------------------------------------ search expressions


def test_what_a_user_types_becomes_a_safe_match() -> None:
    assert fts_match("pneumothorax") == '"pneumothorax"*'
    assert fts_match('ring "ring enhancing" lesion') == '"ring"* AND "ring enhancing" AND "lesion"*'
    assert fts_match('"unbalanced quote') == '"unbalanced"* AND "quote"*'
    assert fts_match("NEAR(a b) OR -c* ^d:e") == ('"NEAR"* AND "a"* AND "b"* AND "OR"* AND "c"* AND "d"* '
                                                   'AND "e"*')
    assert fts_match("***") == "" and fts_match('""') == ""
    assert fts_match("Œdème") == '"OEdème"*'
    assert fts_match("pneumo \u0301 x_y") == '"pneumo"* AND "x"* AND "y"*'   # a lone mark is no word


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
        heard.append([(parsed.sop_instance_uid, len(parsed.data)) for _, parsed in results])
        done.set()

    archive.add_store_listener(listener)
    uid = "1.2.826.0.1.3680043.8.498.1"
    case = await archive.create_case({"Missing": [{"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3",
                                                   "SOPInstanceUID": uid}]})
    assert await archive.cases_missing([uid, "1.9"]) == {uid: [case["ID"]]}
    data = instance(patient_id="L")
    await store(archive, data)
    await asyncio.wait_for(done.wait(), 30)
    # an image's bytes are not held for the listener (read_file reads them)
    assert heard == [[(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID, 0)]]
    await store(archive, data)          # already stored: nothing new to tell
    await archive.create_case({})       # a change after it: the queue has moved on
    assert len(heard) == 1
    ds = pydicom.dcmread(io.BytesIO(instance(patient_id="L", index=2)))
    del ds.PixelData                     # no pixel data (as a key object): its bytes come along
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    done.clear()
    await store(archive, buf.getvalue())
    await asyncio.wait_for(done.wait(), 30)
    assert heard[1] == [(ds.SOPInstanceUID, len(buf.getvalue()))]


# ------------------------------------------------------------------ search over generated cases

WORDS = ["liver", "spleen", "kidney", "aorta", "femur", "tibia", "skull", "pelvis", "bladder", "colon", "thyroid", "pancreas", "lesion", "mass", "cyst", "fracture", "hemorrhage", "infarct", "abscess", "nodule", "effusion", "stenosis", "aneurysm", "dissection"]


def generated(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        docs.append({"Title": " ".join(rng.sample(WORDS, 3)), "History": " ".join(rng.sample(WORDS, 8)),
                     "Discussion": " ".join(rng.choices(WORDS, k=40)), "Keywords": rng.sample(WORDS, 2),
                     "Category": rng.choice(caserules.CATEGORIES), "BodyRegion": rng.choice(caserules.BODY_REGIONS),
                     "Difficulty": rng.choice(caserules.DIFFICULTIES), "Collections": [f"set{i % 5}"]})
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
        "greek": await archive.create_case({"Title": "Πνευμοθώρακας", "History": "हिन्दी रेडियोलॉजी 気胸"}),
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
    assert await found(searchable, text="πνευμοθωρακας") == [sp["greek"]]     # Greek accents too
    assert await found(searchable, text="ΠΝΕΥΜΟΘΏΡΑΚΑΣ") == [sp["greek"]]
    assert await found(searchable, text="रेडियो") == [sp["greek"]]
    assert await found(searchable, text="気胸") == [sp["greek"]]


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
    assert every[0] == searchable.special["greek"] and len(every) == 308
    first = (await searchable.list_cases(CaseQuery(limit=1, since=8)))[0][0]       # the last generated one
    assert first["Collections"] == ["set4"] and first["Title"] == docs[-1]["Title"]
    assert (first["Category"], first["KeyImageCount"], first["Thumbnail"]) == (docs[-1]["Category"], 0, None)
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
    # a key object series in the CT study (what the board exports): not a modality of the case
    await store(archive, instance(patient_id="CT1", series="ko", modality="KO"))
    assert (await archive.get_case(a["ID"]))["Modalities"] == ["CT"]
    assert await found(archive, modality="KO") == []
    assert await found(archive, modality="CT") == [a["ID"]]


_hostile = st.text(alphabet=st.sampled_from(list('"*-^:()+ \'NEAROTDab\\%_ńé\x00{}[]')), max_size=40) | st.text(
    max_size=30)


@pytest.fixture(scope="module")
def fts_db():
    """A real FTS5 table of the kind the index has (its schema), in memory."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE resources(id INTEGER PRIMARY KEY)")
    db.executescript(CASE_SCHEMA)
    db.execute("INSERT INTO cases(id, public_id, state, created, updated) VALUES(1, 'c', 'published', '', '')")
    db.execute("INSERT INTO case_documents VALUES(1, '{\"Title\": \"near and or not pneumothorax\"}')")
    db.execute("INSERT INTO cases_text(rowid, title) VALUES(1, 'near and or not pneumothorax')")
    yield db
    db.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_hostile)
def test_no_typed_text_is_an_fts5_error(fts_db, text: str) -> None:
    """Whatever is typed, the expression is valid FTS5 (sqlite3.OperationalError otherwise)."""
    match = fts_match(text)
    if not match:
        assert not any(ch.isalnum() for ch in text)
    fts_db.execute("SELECT rowid FROM cases_text WHERE cases_text MATCH ?", (match or '""',)).fetchall()
    # and the archive's own statements for it (ranked page, count), filters and the LIKE scan too
    for q in (CaseQuery(text=text), CaseQuery(text=text, students=True, category="Chest", collection="c"),
              CaseQuery(text=text, scan=True)):
        page, page_params, count, count_params = case_query_sql(q)
        fts_db.execute(page, page_params).fetchall()
        fts_db.execute(count, count_params).fetchall()


async def test_hostile_searches_through_the_archive(searchable: Archive) -> None:
    for text in ('"', '""', '"a" "', "NEAR(", "a NEAR/3 b", "*", "-", "^", "title:x", "(", ")", "AND", "OR NOT",
                 "\x00", "a" * 1000, "é*", '"unbalanced', "'; DROP TABLE cases; --"):
        await searchable.list_cases(CaseQuery(text=text))
    assert len(await found(searchable)) == 308


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
    assert SCHEMA_VERSION >= 6
    db.close()



async def test_a_failing_migration_leaves_schema_5(tmp_path: Path) -> None:
    """Review C5: the case tables are made inside the migration's one transaction. A step that
    fails half-way (here: a view already named case_studies, which cannot be indexed) leaves the
    index at schema 5 without any case table, and pipacs says it cannot open it."""
    from appliance.archive import IndexUnusable
    shutil.copytree(FIXTURES / "schema5", tmp_path / "data")
    path = tmp_path / "data" / "pipacs-index.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE VIEW case_studies AS SELECT 1 AS case_id, 1 AS study_id")
    db.commit()
    db.close()
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    with pytest.raises(IndexUnusable, match="cannot be read"):
        await a.open()
    await a.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM properties WHERE name='schema'").fetchone() == ("5",)
    made = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'case%'")}
    assert made == {"case_studies"}        # only the view it had: cases, cases_text, ... rolled back
    db.execute("DROP VIEW case_studies")
    db.commit()
    db.close()
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")   # the obstacle gone: upgraded
    await a.open()
    try:
        assert (await a.list_cases(CaseQuery())) == ([], 0)
    finally:
        await a.close()


def test_a_sqlite_without_fts5_is_refused_saying_so() -> None:
    from appliance.archive import IndexUnusable
    from appliance.archive.index.sqlite_cases import require_fts5
    options = {r[0] for r in sqlite3.connect(":memory:").execute("PRAGMA compile_options")}
    require_fts5(options)                      # this one has it
    with pytest.raises(IndexUnusable, match="without FTS5.*index was not changed"):
        require_fts5(options - {"ENABLE_FTS5"})


# ------------------------------------------------------------------ REST, against a real server

TEACHER = {"Authorization": "Basic " + base64.b64encode(b"teacher-a:pw-a-long-enough").decode()}
CLASSROOM = {"AuthenticationEnabled": True, "RegisteredUsers": {"teacher-a": "pw-a-long-enough"},
             "StudentAccess": "open"}


@pytest.fixture
def board(make_server):
    """A locked-down board with a de-identified study and an identifiable one; students read
    without credentials (StudentAccess open), the teacher signs in with HTTP Basic."""
    srv = make_server(CLASSROOM)
    srv.ids = {}
    for name, data in (("anon", instance(True, patient_id="ANON", patient_name="Case^One", rows=64, cols=64)),
                       ("real", instance(False, patient_id="REAL", patient_name="Real^Name"))):
        r = srv.post("/instances", data, headers=TEACHER)
        assert r.status == 200, r.body
        srv.ids[name] = r.json()
    return srv


def call(srv, method: str, path: str, body=None, teacher: bool = True):
    data = json.dumps(body) if body is not None and not isinstance(body, (str, bytes)) else body
    return srv.request(method, path, data, headers=TEACHER if teacher else {})


def test_rest_cases_for_teacher_and_student(board) -> None:
    anon = board.ids["anon"]
    r = call(board, "POST", "/cases", {"Title": "Tension <b>pneumothorax</b>", "Studies": [anon["ParentStudy"]],
                                       "KeyImages": [{"Instance": anon["ID"], "Annotations": [
                                           {"Type": "length", "Points": [[0, 0], [0, 10]]}]}]})
    assert r.status == 200, r.body
    case = r.json()
    assert case["Author"] == "teacher-a" and case["State"] == "draft" and case["Modalities"] == ["CT"]
    assert case["Title"] == "Tension <b>pneumothorax</b>"           # text is kept as text
    assert case["KeyImages"][0]["Annotations"][0]["LengthMm"] == pytest.approx(9.766, abs=1e-3)
    cid = case["ID"]
    # a draft is unknown to a student: the case, its list, its study
    for path in (f"/cases/{cid}", f"/studies/{anon['ParentStudy']}"):
        student = call(board, "GET", path, teacher=False)
        assert student.status == 404, (path, student.status)
    assert call(board, "GET", "/cases/no-such-case", teacher=False).json()["Message"] == "no case no-such-case"
    assert call(board, "GET", f"/cases/{cid}", teacher=False).json()["Message"] == f"no case {cid}"
    listed = call(board, "GET", "/cases", teacher=False)
    assert listed.json() == [] and listed.headers["X-Total-Count"] == "0"
    assert call(board, "GET", "/cases").json() == [cid]
    # the teacher changes a field, the others stay
    r = call(board, "PUT", f"/cases/{cid}", {"History": "fell off a horse", "Modalities": ["CT"]})
    assert r.status == 200 and r.json()["Title"] == case["Title"] and r.json()["History"] == "fell off a horse"
    # published: the student reads it, finds it, and sees its study
    r = call(board, "POST", f"/cases/{cid}/publish")
    assert r.status == 200 and r.json()["State"] == "published"
    assert call(board, "GET", f"/cases/{cid}", teacher=False).json()["History"] == "fell off a horse"
    assert call(board, "GET", f"/studies/{anon['ParentStudy']}", teacher=False).status == 200
    assert call(board, "GET", f"/instances/{anon['ID']}/file", teacher=False).status == 200
    found = call(board, "GET", "/cases?q=pneumo&expand", teacher=False)
    assert found.headers["X-Total-Count"] == "1"
    summary = found.json()[0]
    assert summary["ID"] == cid and summary["KeyImageCount"] == 1 and summary["Thumbnail"] == anon["ID"]
    assert set(summary) == {"ID", "Title", "State", "BodyRegion", "Category", "Difficulty", "Collections",
                            "Modalities", "Author", "Updated", "Studies", "KeyImageCount", "Thumbnail", "Unknown"}
    assert call(board, "GET", "/cases?q=nothing-like-it", teacher=False).json() == []
    # unpublished: gone again for the student
    assert call(board, "POST", f"/cases/{cid}/unpublish").json()["State"] == "draft"
    assert call(board, "GET", f"/cases/{cid}", teacher=False).status == 404
    assert call(board, "GET", f"/studies/{anon['ParentStudy']}", teacher=False).status == 404
    # students change nothing
    for method, path in (("POST", "/cases"), ("PUT", f"/cases/{cid}"), ("DELETE", f"/cases/{cid}"),
                         ("POST", f"/cases/{cid}/publish")):
        assert call(board, method, path, {}, teacher=False).status in (401, 403)
    assert call(board, "DELETE", f"/cases/{cid}").json() == {}
    assert call(board, "GET", f"/cases/{cid}").status == 404


def test_rest_refusals_are_4xx_in_orthancs_shape(board) -> None:
    real = board.ids["real"]
    for body, field in (({"Title": 1}, "Title"), ({"Colour": "red"}, "Colour"), ({"ID": "x"}, "ID"),
                        ({"Discussion": "x" * 100_001}, "Discussion"), ({"Studies": ["nope"]}, r"Studies\[0\]"),
                        ({"KeyImages": [{"Instance": real["ID"]}]}, r"KeyImages\[0\].Instance")):
        r = call(board, "POST", "/cases", body)
        assert r.status == 400, (body, r.status)
        err = r.json()
        assert err["HttpStatus"] == 400 and err["Method"] == "POST" and err["Uri"] == "/cases"
        assert re.match(field, err["Message"]), err["Message"]
    for raw in ("[]", "not json", ""):
        assert call(board, "POST", "/cases", raw).status == 400
    case = call(board, "POST", "/cases", {"Studies": [real["ParentStudy"]]}).json()
    r = call(board, "PUT", f"/cases/{case['ID']}", {"State": "published"})
    assert r.status == 400 and "publish" in r.json()["Message"]
    r = call(board, "POST", f"/cases/{case['ID']}/publish")
    assert r.status == 409 and f"study {real['ParentStudy']} is not de-identified" in r.json()["Message"]
    assert call(board, "GET", f"/cases/{case['ID']}").json()["State"] == "draft"
    for query in ("limit=1001", "limit=0", "limit=x", "since=-1", "body-region=Toe", "category=chest",
                  "difficulty=hard", "state=gone", "collection=a%20b", "q=" + "a" * 1001):
        r = call(board, "GET", f"/cases?{query}")
        assert r.status == 400 and "Message" in r.json(), (query, r.status)
    for q in ('"', "NEAR(", "*", "a -b", "title:x", "(", '"unbalanced', "\x00", "AND OR NOT", "é*"):
        assert call(board, "GET", "/cases?" + urllib.parse.urlencode({"q": q}), teacher=False).status == 200, q
    assert call(board, "GET", "/cases/vocabulary", teacher=False).json() == caserules.vocabulary()
    assert board.settled_log().count("Traceback") == 0


def test_deleting_a_study_a_case_uses_asks_first(board) -> None:
    anon = board.ids["anon"]
    case = call(board, "POST", "/cases", {"Title": "t", "Studies": [anon["ParentStudy"]],
                                          "KeyImages": [{"Instance": anon["ID"]}]}).json()
    for path in (f"/studies/{anon['ParentStudy']}", f"/patients/{anon['ParentPatient']}"):
        r = call(board, "DELETE", path)
        assert r.status == 409 and case["ID"] in r.json()["Message"] and "force" in r.json()["Message"], path
    assert call(board, "GET", f"/studies/{anon['ParentStudy']}").status == 200
    # a study no case uses is deleted as Orthanc does
    real = board.ids["real"]
    r = call(board, "DELETE", f"/studies/{real['ParentStudy']}")
    assert r.status == 200 and r.json() == {"RemainingAncestor": None}
    r = call(board, "DELETE", f"/studies/{anon['ParentStudy']}?force")
    assert r.status == 200
    after = call(board, "GET", f"/cases/{case['ID']}").json()
    assert after["Studies"] == [] and after["KeyImages"] == [] and after["Modalities"] == []


def test_a_case_body_is_at_most_8_mib(board) -> None:
    from appliance.web.cases import MAX_CASE_BODY
    # within the limit, a body may be large (whitespace is JSON); beyond it: 413, nothing stored
    padded = json.dumps({"Title": "big"}) + " " * (MAX_CASE_BODY - 20)
    assert call(board, "POST", "/cases", padded).status == 200
    r = call(board, "POST", "/cases", json.dumps({"Title": "too big"}) + " " * MAX_CASE_BODY)
    assert r.status == 413 and "Maximum request body size" in r.json()["Message"]
    assert call(board, "GET", "/cases?q=big").headers["X-Total-Count"] == "1"


async def test_a_patient_a_case_uses_is_not_recycled(tmp_path: Path) -> None:
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data", max_patient_count=1)
    await a.open()
    try:
        _, study, _, _ = await store(a, instance(patient_id="KEEP"))
        case = await a.create_case({"Studies": [study]})
        with pytest.raises(StoreRefused, match="used by a teaching case"):
            await store(a, instance(patient_id="NEW"))
        await a.delete_case(case["ID"])
        await store(a, instance(patient_id="NEW"))      # now the old patient makes room
        assert await a.index.resource(study) is None
    finally:
        await a.close()


def test_a_search_takes_at_most_32_terms() -> None:
    from appliance.archive.index.sqlite_cases import MAX_QUERY_TERMS
    assert MAX_QUERY_TERMS == 32
    assert fts_match(" ".join(f"w{i}" for i in range(40))).count(" AND ") == MAX_QUERY_TERMS - 1


def test_a_signed_in_teacher_writes_cases_with_the_pages_token(board) -> None:
    """The pages' way: a session cookie, and the CSRF token with every change."""
    r = board.post("/pipacs/sign-in", json.dumps({"User": "teacher-a", "Password": "pw-a-long-enough"}))
    assert r.status == 200
    cookie = {"Cookie": r.headers["Set-Cookie"].split(";")[0]}
    token = {**cookie, "X-Pipacs-CSRF": r.json()["CSRF"]}
    body = json.dumps({"Title": "from the page"})
    assert board.request("POST", "/cases", body, headers=cookie).status == 403       # no token: refused
    made = board.request("POST", "/cases", body, headers=token)
    assert made.status == 200 and made.json()["Author"] == "teacher-a"
    cid = made.json()["ID"]
    assert board.request("POST", f"/cases/{cid}/publish", headers=cookie).status == 403
    assert board.request("POST", f"/cases/{cid}/publish", headers=token).json()["State"] == "published"
    assert board.request("GET", "/cases?state=draft", headers=cookie).json() == []
    assert board.request("GET", "/cases?state=published", headers=cookie).json() == [cid]
    assert board.get("/cases?state=draft").json() == [cid]       # a student's list: the published, whatever it asks


def test_a_case_made_from_a_study_starts_in_the_studys_collections(board) -> None:
    """The explorer's labels are the collections: a study labelled "chest-week1" makes a case in
    "chest-week1" unless the body says otherwise."""
    study = board.ids["anon"]["ParentStudy"]
    for label in ("chest-week1", "trauma"):
        assert call(board, "PUT", f"/studies/{study}/labels/{label}", "").status == 200
    made = call(board, "POST", "/cases", {"Title": "From a labelled study", "Studies": [study]}).json()
    assert made["Collections"] == ["chest-week1", "trauma"]
    told = call(board, "POST", "/cases", {"Title": "Told", "Studies": [study], "Collections": ["other"]}).json()
    assert told["Collections"] == ["other"]
    listed = call(board, "GET", "/cases?collection=trauma").json()
    assert listed == [made["ID"]]


# ------------------------------------------------------------------ concurrent writers (review C4, C8)


async def test_concurrent_changes_of_a_case_are_all_kept(archive: Archive) -> None:
    """Each writer changes the case as stored when it writes (modify_case), not the copy it read:
    20 writers adding a keyword each leave 20 keywords (a read-merge-write kept one or two)."""
    case = await archive.create_case({"Title": "t"})

    async def add(i: int) -> None:
        await archive.modify_case(case["ID"], lambda d: {**d, "Keywords": [*d["Keywords"], f"k{i}"]})

    await asyncio.gather(*(add(i) for i in range(20)))
    assert sorted((await archive.get_case(case["ID"]))["Keywords"]) == sorted(f"k{i}" for i in range(20))


async def test_every_write_changes_updated(archive: Archive) -> None:
    """Updated is what a page's staleness check compares: two writes within a second differ too."""
    case = await archive.create_case({"Title": "t"})
    seen = [case["Updated"]]
    for i in range(3):
        seen.append((await archive.update_case(case["ID"], {**case, "History": str(i)}))["Updated"])
    seen.append((await archive.set_case_state(case["ID"], "published"))["Updated"])
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


async def test_a_stale_writer_changes_nothing(archive: Archive) -> None:
    from appliance.archive import CaseStale
    case = await archive.create_case({"Title": "t"})
    await archive.update_case(case["ID"], {**case, "History": "the other writer's"})

    def stale(d: dict) -> dict:
        if d["Updated"] != case["Updated"]:
            raise CaseStale()
        return {**d, "Title": "mine"}

    with pytest.raises(CaseStale):
        await archive.modify_case(case["ID"], stale)
    after = await archive.get_case(case["ID"])
    assert after["Title"] == "t" and after["History"] == "the other writer's"


async def test_a_published_case_keeps_its_text_editable_when_its_patient_gets_an_identifiable_instance(
        archive: Archive) -> None:
    """Publishability is checked when the studies change, not on a typo fix (review C8)."""
    _, anon, _, _ = await store(archive, instance(True, patient_id="ANON"))
    case = await archive.create_case({"Title": "Pneumothorx", "Studies": [anon]})
    published = await archive.set_case_state(case["ID"], "published")
    await store(archive, instance(False, patient_id="ANON", study="later"))    # identifiable, same patient
    fixed = await archive.update_case(case["ID"], merge_update(published, {"Title": "Pneumothorax"}))
    assert fixed["Title"] == "Pneumothorax" and fixed["State"] == "published"
    _, other, _, _ = await store(archive, instance(True, patient_id="OTHER"))
    with pytest.raises(CaseConflict, match=f"study {anon} is not de-identified"):
        await archive.update_case(case["ID"], merge_update(fixed, {"Studies": [anon, other]}))


def test_rest_a_put_from_a_stale_copy_is_409(board) -> None:
    case = call(board, "POST", "/cases", {"Title": "t"}).json()
    first = call(board, "PUT", f"/cases/{case['ID']}", {"History": "one", "Updated": case["Updated"]})
    assert first.status == 200 and first.json()["Updated"] != case["Updated"]
    r = call(board, "PUT", f"/cases/{case['ID']}", {"History": "two", "Updated": case["Updated"]})
    assert r.status == 409 and r.json()["Message"] == "the case changed since you read it: reload it"
    assert r.json()["HttpStatus"] == 409
    assert call(board, "GET", f"/cases/{case['ID']}").json()["History"] == "one"
    again = call(board, "PUT", f"/cases/{case['ID']}", {"History": "two", "Updated": first.json()["Updated"]})
    assert again.status == 200 and again.json()["History"] == "two"
    assert call(board, "PUT", f"/cases/{case['ID']}", {"History": "three"}).status == 200   # no Updated: no check


# ------------------------------------------------------------------ unknown cases (wave 2, item 3)


def test_unknown_is_a_boolean_false_by_default() -> None:
    assert validate_create({})["Unknown"] is False
    assert validate_create({"Unknown": True})["Unknown"] is True
    for bad in (1, "true", None):
        with pytest.raises(CaseInvalid, match="^Unknown"):
            validate_create({"Unknown": bad})


async def test_students_search_an_unknown_case_by_its_question_only(archive: Archive) -> None:
    """An unknown case is found by a student through its History, Question, BodyRegion, Category
    and Modalities, never through the answer (Title, Findings, Diagnosis, ..., Keywords, captions);
    the teacher finds it by every field; a student's summary titles it "Unknown case"."""
    _, study, _, inst = await store(archive, instance(patient_id="U"))
    answer = {"Title": "Tension pneumothorax", "Findings": "deep sulcus", "Diagnosis": "zebra",
              "DifferentialDiagnosis": "okapi", "Discussion": "giraffe", "TeachingPoints": "llama",
              "References": "alpaca", "Keywords": ["vicuna"]}
    unknown = await archive.create_case({**answer, "Unknown": True, "History": "fell off a horse",
                                         "Question": "what is wrong", "BodyRegion": "Chest",
                                         "Category": "Emergency", "Studies": [study],
                                         "KeyImages": [{"Instance": inst, "Caption": "guanaco"}]})
    known = await archive.create_case({**answer, "History": "fell off a bike"})
    for c in (unknown, known):
        await archive.set_case_state(c["ID"], "published")

    async def found(text: str, students: bool) -> set[str]:
        summaries, total = await archive.list_cases(CaseQuery(text=text, students=students))
        assert total == len(summaries)
        return {s["ID"] for s in summaries}

    for word in ("pneumothorax", "sulcus", "zebra", "okapi", "giraffe", "llama", "alpaca", "vicuna"):
        assert await found(word, True) == {known["ID"]}, word
        assert await found(word, False) == {unknown["ID"], known["ID"]}, word
    assert await found("guanaco", True) == set() and await found("guanaco", False) == {unknown["ID"]}
    for word in ("horse", "wrong", "emergency", "chest", "CT"):
        assert unknown["ID"] in await found(word, True), word
    assert await found("fell", True) == {unknown["ID"], known["ID"]}
    titles = {s["ID"]: s["Title"] for s in (await archive.list_cases(CaseQuery(students=True)))[0]}
    assert titles == {unknown["ID"]: "Unknown case", known["ID"]: "Tension pneumothorax"}
    teacher = {s["ID"]: (s["Title"], s["Unknown"]) for s in (await archive.list_cases(CaseQuery()))[0]}
    assert teacher[unknown["ID"]] == ("Tension pneumothorax", True)
    # known again: found by its answer
    await archive.update_case(unknown["ID"], {**await archive.get_case(unknown["ID"]), "Unknown": False})
    assert await found("zebra", True) == {unknown["ID"], known["ID"]}


def test_a_key_images_center_is_a_point_within_its_frame() -> None:
    """Center [x, y] (wave 2 item 2): the displayed centre in image pixels, null for the frame's."""
    ki = validate_create({"KeyImages": [{"Instance": "i"}]})["KeyImages"][0]
    assert ki["Center"] is None
    tags = {"Rows": 8, "Columns": 10, "NumberOfFrames": 1, "PixelSpacing": None, "ImagerPixelSpacing": None}
    for center in ([0, 0], [10, 8], [2.5, 7.25]):
        ki = validate_create({"KeyImages": [{"Instance": "i", "Zoom": 2, "Center": center}]})["KeyImages"][0]
        assert caserules.check_key_image(ki, "KeyImages[0]", tags)["Center"] == center
    for bad in ([1], [1, "2"], "1,2", [1, 2, 3], [True, 1], {"x": 1}):
        with pytest.raises(CaseInvalid, match=r"^KeyImages\[0\].Center"):
            validate_create({"KeyImages": [{"Instance": "i", "Center": bad}]})
    for outside in ([10.5, 0], [0, 8.01], [-1, 4]):
        ki = validate_create({"KeyImages": [{"Instance": "i", "Center": outside}]})["KeyImages"][0]
        with pytest.raises(CaseInvalid, match=r"^KeyImages\[0\].Center: .* outside the image"):
            caserules.check_key_image(ki, "KeyImages[0]", tags)


async def test_deleting_a_series_or_instance_holding_key_images_is_refused_unless_asked(archive: Archive) -> None:
    """Wave 2 item 5: as a study, a series or instance whose instance is a key image of a case
    is not deleted silently; with ?force (detach) the key image leaves the case."""
    data = instance(patient_id="K")
    _, study, series, inst = await store(archive, data)
    _, _, _, other = await store(archive, instance(patient_id="K", index=2))
    case = await archive.create_case({"Studies": [study], "KeyImages": [{"Instance": inst, "Caption": "zebra"}]})
    for level, pub in ((Level.SERIES, series), (Level.INSTANCE, inst)):
        with pytest.raises(CaseConflict, match=f"holds key images of case\\(s\\) {case['ID']}.*force") as e:
            await archive.delete(level, pub, "refuse")
        assert e.value.cases == [case["ID"]]
    await archive.delete(Level.INSTANCE, other, "refuse")     # not a key image: deleted as Orthanc does
    assert len((await archive.get_case(case["ID"]))["KeyImages"]) == 1
    await archive.delete(Level.INSTANCE, inst, "detach")
    after = await archive.get_case(case["ID"])
    assert after["KeyImages"] == [] and after["Updated"] > case["Updated"]
    assert (await archive.list_cases(CaseQuery(text="zebra")))[1] == 0


async def test_a_study_detached_with_force_drops_its_missing_entries(archive: Archive) -> None:
    """Review C9: the instances of a study taken out of a case are no longer awaited by it."""
    data = instance(patient_id="M")
    study_uid = str(pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID)
    _, study, _, _ = await store(archive, data)
    _, study2, _, _ = await store(archive, instance(patient_id="M", study="st2"))
    study2_uid = "1.2.3.999"
    missing = [{"StudyInstanceUID": study_uid, "SeriesInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4"},
               {"StudyInstanceUID": study2_uid, "SeriesInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.5"}]
    case = await archive.create_case({"Studies": [study, study2], "Missing": missing})
    await archive.delete(Level.STUDY, study, "detach")
    after = await archive.get_case(case["ID"])
    assert after["Missing"] == missing[1:]
    assert await archive.cases_missing(["1.2.3.4", "1.2.3.5"]) == {"1.2.3.5": [case["ID"]]}


def test_rest_deleting_a_key_images_instance_asks_first(board) -> None:
    anon = board.ids["anon"]
    case = call(board, "POST", "/cases", {"Studies": [anon["ParentStudy"]],
                                          "KeyImages": [{"Instance": anon["ID"]}]}).json()
    for path in (f"/series/{anon['ParentSeries']}", f"/instances/{anon['ID']}"):
        r = call(board, "DELETE", path)
        assert r.status == 409 and case["ID"] in r.json()["Message"] and "force" in r.json()["Message"], path
    assert call(board, "GET", f"/instances/{anon['ID']}").status == 200
    assert call(board, "DELETE", f"/instances/{anon['ID']}?force").status == 200
    assert call(board, "GET", f"/cases/{case['ID']}").json()["KeyImages"] == []


# ------------------------------------------------------------------ an instance sent again (review C2)


def test_an_instance_sent_again_keeps_its_key_images_with_overwrite(make_server) -> None:
    """OverwriteInstances true: a workstation re-sending a study (with its TCE key object) replaces
    the instance's row; the key image of a case on it stays, annotations and all, and the search
    text with it (before: the key image went with the old row, the caption stayed searchable)."""
    srv = make_server({**CLASSROOM, "OverwriteInstances": True})
    data = instance(True, patient_id="OVR")
    first = srv.post("/instances", data, headers=TEACHER).json()
    case = call(srv, "POST", "/cases", {"Studies": [first["ParentStudy"]], "KeyImages": [
        {"Instance": first["ID"], "Caption": "zebra", "Annotations": [
            {"Type": "arrow", "Points": [[1, 1], [5, 5]], "Text": "okapi"}]}]}).json()
    again = srv.post("/instances", data, headers=TEACHER)
    assert again.status == 200 and again.json()["ID"] == first["ID"]
    after = call(srv, "GET", f"/cases/{case['ID']}").json()
    assert after["KeyImages"] == case["KeyImages"]
    for word in ("zebra", "okapi"):
        assert call(srv, "GET", f"/cases?q={word}").headers["X-Total-Count"] == "1", word
    call(srv, "DELETE", f"/instances/{first['ID']}?force")
    assert call(srv, "GET", "/cases?q=zebra").headers["X-Total-Count"] == "0"
    assert srv.settled_log().count("Traceback") == 0


async def test_a_key_image_whose_file_vanished_leaves_the_search_at_start_up(tmp_path: Path) -> None:
    """The start-up reconcile forgets an instance whose file is gone: its key image goes with it,
    and its caption leaves the full-text index too (review C2)."""
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    _, study, _, inst = await store(a, instance(patient_id="GONE"))
    _, _, _, kept = await store(a, instance(patient_id="GONE", index=2))
    case = await a.create_case({"Studies": [study], "KeyImages": [{"Instance": inst, "Caption": "zebra"},
                                                                  {"Instance": kept, "Caption": "giraffe"}]})
    path, _ = await a.instance_file(inst)
    await a.close()
    path.unlink()
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    try:
        assert [k["Instance"] for k in (await a.get_case(case["ID"]))["KeyImages"]] == [kept]
        assert (await a.list_cases(CaseQuery(text="zebra")))[1] == 0
        assert (await a.list_cases(CaseQuery(text="giraffe")))[1] == 1
    finally:
        await a.close()


async def test_thumbnails_of_cases_without_key_images_take_one_query(archive: Archive) -> None:
    """Review C12: a page of summaries finds the middle instance of each first study's first image
    series (not its key objects, presentation states or reports) in one query, not one per study."""
    cases, middles = [], []
    for p in range(4):
        ids = [await store(archive, instance(patient_id=f"T{p}", index=n)) for n in range(1, 2 + p * 2)]
        middles.append(ids[len(ids) // 2][3])      # 1, 3, 5, 7 instances: the middle one by InstanceNumber
        cases.append(await archive.create_case({"Title": f"t{p}", "Studies": [ids[0][1]]}))
    statements: list[str] = []
    await archive.index.r.set_trace_callback(statements.append)
    try:
        summaries = {s["ID"]: s["Thumbnail"] for s in (await archive.list_cases(CaseQuery()))[0]}
    finally:
        await archive.index.r.set_trace_callback(None)
    assert [summaries[c["ID"]] for c in cases] == middles
    assert sum("IndexInSeries" in s for s in statements) == 1


async def test_many_stored_documents_are_decoded_off_the_loop(archive: Archive) -> None:
    """Review R1: a large read (here ~600 KB of documents) is decoded on a thread, not on the loop."""
    import threading

    from appliance.archive.index import sqlite_cases
    made = [await archive.create_case({"Title": f"t{i}", "Discussion": "x" * 60_000}) for i in range(10)]
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    real_loads = json.loads

    def watching(text, *a, **kw):
        threads.add(threading.get_ident())
        return real_loads(text, *a, **kw)

    sqlite_cases.json.loads = watching
    try:
        ids = [await archive.index.case_id_of(c["ID"]) for c in made]
        got = await archive.index.cases_by_ids(ids)
    finally:
        sqlite_cases.json.loads = real_loads
    assert [c.document["Title"] for c in got] == [f"t{i}" for i in range(10)]
    assert threads and loop_thread not in threads


def test_the_archive_does_not_import_teaching() -> None:
    """Review R3: the case document's rules live in the archive (appliance.archive.caserules,
    exported by its door), so the archive depends on no package above it."""
    from .test_archive_door import ARCHIVE, _imported_modules
    offenders = [f"{p.name}:{line} imports {name}" for p in ARCHIVE.rglob("*.py")
                 for line, name in _imported_modules(p) if name.startswith("appliance.teaching")]
    assert not offenders
    assert caserules.validate_import is __import__("appliance.archive", fromlist=["x"]).validate_import


def test_the_tce_receiver_does_not_read_the_archives_index() -> None:
    """Review R3: the TCE receiver asks Archive methods (main_tags_of), never ``archive.index``."""
    import ast

    from .test_archive_door import APPLIANCE
    tree = ast.parse((APPLIANCE / "teaching" / "tce.py").read_text())
    receiver = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TceReceiver")
    assert ".index." not in ast.unparse(receiver)


def test_an_unknown_field_name_is_not_echoed_whole() -> None:
    """Review S5: a 1 MB field name is named by its first 64 characters in the 400."""
    with pytest.raises(CaseInvalid) as e:
        validate_create({"x" * 1_000_000: 1})
    assert str(e.value).startswith("x" * 64 + "...: not a field here") and len(str(e.value)) < 1000


async def test_a_big_case_body_is_checked_off_the_loop(archive: Archive) -> None:
    """Review R1: a document above ~256 KB is checked (its JSON made to find text that is not
    Unicode) on a thread, once; a small one on the loop."""
    import threading
    loop_thread = threading.get_ident()
    calls: list[tuple[int, int]] = []
    real_dumps = json.dumps

    def watching(obj, *a, **kw):
        text = real_dumps(obj, *a, **kw)
        calls.append((threading.get_ident(), len(text)))
        return text

    json.dumps = watching
    try:
        await archive.create_case({"Title": "big", "Discussion": "x" * 90_000, "History": "y" * 90_000,
                                   "Findings": "z" * 90_000})
        big = [t for t, n in calls if n > 250_000 and t == loop_thread]
        await archive.create_case({"Title": "small"})
    finally:
        json.dumps = real_dumps
    assert big == []
    assert any(t == loop_thread for t, n in calls if n < 1000)      # a small body: checked on the loop
