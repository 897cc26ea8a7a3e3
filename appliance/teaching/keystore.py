"""A case's key objects stored into the archive (POST /cases/{id}/store-key-objects), so that DICOM
workstations retrieve the KOS and GSPS with the images, and taken back out when they no longer say
what the teacher published.

- Only a published case is stored (``NotPublished``, a 409): the files carry the case's title,
  captions and labels, and its study may be visible to students.
- The board remembers which instances it stored for each case (a durable archive setting
  ``case-exports:<case ID>``: their Orthanc instance IDs; each instance also carries the metadata
  ``CaseExport`` = the case ID). A new store replaces the previous one: the series UIDs are stable
  per case and study (``keyobjects``), the instances of an older version of the case are deleted.
- Unpublishing or deleting the case deletes them (``withdraw_key_objects``, called by web/cases.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from typing import Any

from ..archive import Archive, CaseConflict, Level, NotFound, Origin
from .casereading import case_export
from .keyobjects import dataset_bytes

log = logging.getLogger("pipacs.keystore")

__all__ = ["EXPORT_METADATA", "NotPublished", "stored_key_objects", "store_key_objects", "withdraw_key_objects"]

EXPORT_METADATA = "CaseExport"          # instance metadata: the case an instance was stored for
_SETTING = "case-exports:"              # + case ID: JSON list of the instance IDs stored for it
_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


class NotPublished(CaseConflict):
    """A draft's key objects are not stored (409): the message says to publish it first."""


def _lock(case_id: str) -> asyncio.Lock:
    lock = _locks.get(case_id)
    if lock is None:
        lock = _locks[case_id] = asyncio.Lock()
    return lock


def stored_key_objects(archive: Archive, case_id: str) -> list[str]:
    """The instance IDs the board stored for the case (not yet withdrawn), oldest store first."""
    raw = archive.setting(_SETTING + case_id)
    try:
        ids = json.loads(raw) if raw else []
    except ValueError:
        return []
    return [str(i) for i in ids] if isinstance(ids, list) else []


async def _remember(archive: Archive, case_id: str, ids: list[str]) -> None:
    await archive.put_setting(_SETTING + case_id, json.dumps(list(dict.fromkeys(ids))) if ids else None)


async def _delete(archive: Archive, ids: list[str]) -> list[str]:
    """Delete the instances; the IDs of those that could not be (a teacher made one a key image)."""
    kept = []
    for iid in ids:
        try:
            await archive.delete(Level.INSTANCE, iid)
        except NotFound:       # deleted with its study meanwhile
            continue
        except CaseConflict as e:
            log.warning("stored key object %s is kept: %s", iid, e)
            kept.append(iid)
    return kept


async def store_key_objects(archive: Archive, case: dict[str, Any], origin: Origin) -> dict[str, list[str]]:
    """Store the published case's KOS and GSPS as instances of its studies and delete what an
    earlier store of it left that this one does not have. {"KeyObjects": [...], "PresentationStates":
    [...]}: instance IDs. Raises NotPublished, ExportError (no key images), NotFound."""
    if case.get("State") != "published":
        raise NotPublished(f"case {case['ID']} is a draft: publish it first (its key objects carry the case's "
                           "title, captions and labels, and its studies may be visible to students)")
    async with _lock(case["ID"]):
        kos, states = await case_export(archive, case, student=False)
        answer: dict[str, list[str]] = {"KeyObjects": [], "PresentationStates": []}
        old = stored_key_objects(archive, case["ID"])
        # the presentation states first: a KOS references them
        for key, datasets in (("PresentationStates", states), ("KeyObjects", kos)):
            for ds in datasets:
                data = await asyncio.to_thread(dataset_bytes, ds)
                # built from the stored (already de-identified, with AnonymizeOnIngest) headers: the
                # ingest transform would map their UIDs a second time, away from the study
                result = await archive.ingest_bytes(data, origin, {Level.INSTANCE: {EXPORT_METADATA: case["ID"]}},
                                                    already_deidentified=True)
                answer[key].append(result.ids[3])
        new = answer["PresentationStates"] + answer["KeyObjects"]
        await _remember(archive, case["ID"], old + new)        # known before anything is deleted
        kept = await _delete(archive, [i for i in old if i not in new])
        await _remember(archive, case["ID"], kept + new)
        return answer


async def withdraw_key_objects(archive: Archive, case_id: str) -> int:
    """Delete the instances stored for the case (it was unpublished or deleted); how many were."""
    async with _lock(case_id):
        old = stored_key_objects(archive, case_id)
        if not old:
            return 0
        kept = await _delete(archive, old)
        await _remember(archive, case_id, kept)
        return len(old) - len(kept)
