"""What a caller may read of a case (teaching.casereading) and the storing of its key objects
(teaching.keystore), called directly on a real Archive: the rules the case routes share."""

from __future__ import annotations

import io

import pydicom
import pytest

from appliance.archive import Archive, Level, NotFound, Origin, validate_create
from appliance.teaching import casereading, keystore

from .synth import ct_instance


def instance(deidentified: bool = True, **kw) -> bytes:
    kw.setdefault("rows", 16)
    kw.setdefault("cols", 16)
    ds = pydicom.dcmread(io.BytesIO(ct_instance(**kw)))
    if deidentified:
        ds.PatientIdentityRemoved = "YES"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


async def _case(a: Archive, title: str, patient: str = "CR1", collections: tuple[str, ...] = ("week1",),
                publish: bool = True) -> dict:
    ids = [(await a.ingest_bytes(instance(patient_id=patient, study=title, index=k), Origin())).ids for k in (1, 2)]
    doc = validate_create({"Title": title, "Studies": [ids[0][1]], "Collections": list(collections),
                           "KeyImages": [{"Instance": ids[0][3], "Zoom": 2,
                                          "Annotations": [{"Type": "arrow", "Points": [[1, 1], [8, 8]]}]},
                                         {"Instance": ids[1][3]}]})
    case = await a.create_case(doc)
    return await a.set_case_state(case["ID"], "published") if publish else case


async def test_a_draft_is_not_found_for_a_student_and_key_images_only_when_visible(archive: Archive) -> None:
    draft = await _case(archive, "draft", publish=False)
    with pytest.raises(NotFound):
        await casereading.readable_case(archive, draft["ID"], student=True)
    assert (await casereading.readable_case(archive, draft["ID"], student=False))["ID"] == draft["ID"]
    shown = await _case(archive, "shown", patient="CR2")
    doc = await casereading.readable_case(archive, shown["ID"], student=True)
    assert await casereading.visible_key_images(archive, doc, student=True) == [True, True]
    assert (await casereading.readable_key_image(archive, doc, "1", True))["Instance"] == doc["KeyImages"][1]["Instance"]
    for n in ("2", "-1", "x", "9" * 5000, "0000000"):
        with pytest.raises(NotFound):
            await casereading.readable_key_image(archive, doc, n, True)
    # an identifiable instance of the patient: nothing of the case's images is a student's any more
    await archive.ingest_bytes(instance(deidentified=False, patient_id="CR2", study="other"), Origin())
    assert await casereading.visible_key_images(archive, doc, student=True) == [False, False]
    assert await casereading.visible_key_images(archive, doc, student=False) == [True, True]
    with pytest.raises(NotFound):
        await casereading.readable_key_image(archive, doc, "0", True)
    part = await casereading.case_part(archive, doc, student=True)
    assert part.key_image_files == [None, None] and part.rows == [] and part.dicom_extras == []
    teachers = await casereading.case_part(archive, doc, student=False)
    assert all(teachers.key_image_files) and len(teachers.rows) == 2 and teachers.dicom_extras
    kos, states = await casereading.case_export(archive, doc, student=False)
    assert len(kos) == 1 and len(states) == 1


async def test_headers_are_read_without_pixels(archive: Archive) -> None:
    case = await _case(archive, "headers", patient="CR3")
    headers = await casereading.key_image_headers(archive, case)
    assert set(headers) == {k["Instance"] for k in case["KeyImages"]}
    assert all("PixelData" not in h and h.Rows == 16 for h in headers.values())


async def test_a_collection_for_a_student_is_its_published_cases_within_the_limit(archive: Archive) -> None:
    shown = await _case(archive, "one", patient="CR4")
    await _case(archive, "two", patient="CR5", publish=False)
    assert [d["ID"] for d in await casereading.collection_cases(archive, "week1", True, 10)] == [shown["ID"]]
    assert len(await casereading.collection_cases(archive, "week1", False, 10)) == 2
    with pytest.raises(casereading.TooManyCases, match="MaximumBundleCases"):
        await casereading.collection_cases(archive, "week1", False, 1)


async def test_stored_key_objects_are_remembered_replaced_and_withdrawn(archive: Archive) -> None:
    draft = await _case(archive, "store", patient="CR6", publish=False)
    with pytest.raises(keystore.NotPublished, match="publish it first"):
        await keystore.store_key_objects(archive, draft, Origin())
    case = await archive.set_case_state(draft["ID"], "published")
    first = await keystore.store_key_objects(archive, case, Origin())
    ids = first["PresentationStates"] + first["KeyObjects"]
    assert len(ids) == 2 and keystore.stored_key_objects(archive, case["ID"]) == ids
    meta = await archive.metadata(await archive.get(Level.INSTANCE, ids[0]))
    assert meta[keystore.EXPORT_METADATA] == case["ID"]
    assert await keystore.store_key_objects(archive, case, Origin()) == first       # unchanged: the same
    changed = await archive.update_case(case["ID"], {**case, "Title": "store, edited"})
    second = await keystore.store_key_objects(archive, changed, Origin())
    new = second["PresentationStates"] + second["KeyObjects"]
    assert set(new).isdisjoint(ids) and keystore.stored_key_objects(archive, case["ID"]) == new
    for old in ids:
        with pytest.raises(NotFound):
            await archive.get(Level.INSTANCE, old)
    assert await keystore.withdraw_key_objects(archive, case["ID"]) == 2
    assert keystore.stored_key_objects(archive, case["ID"]) == []
    for gone in new:
        with pytest.raises(NotFound):
            await archive.get(Level.INSTANCE, gone)
    assert await keystore.withdraw_key_objects(archive, case["ID"]) == 0
    assert len(await archive.instances_below(await archive.get(Level.STUDY, case["Studies"][0]))) == 2
