"""Answers for query/retrieve front doors (C-FIND now, QIDO-RS later): the find engine's
matches, with the values of the requested keys taken from the index, computed from it
(counts, modalities in study), or, for keys the index does not keep, from the stored file.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from ..codec import one_step_codec
from .find import MODALITIES_IN_STUDY, MODALITY, Query
from .model import INDEXED_TAGS, Level, tag_key

if TYPE_CHECKING:
    from .hub import Archive

log = logging.getLogger("pipacs.archive")

NUMBER_OF_PATIENT_RELATED_STUDIES = 0x00201200
NUMBER_OF_PATIENT_RELATED_SERIES = 0x00201202
NUMBER_OF_PATIENT_RELATED_INSTANCES = 0x00201204
NUMBER_OF_STUDY_RELATED_SERIES = 0x00201206
NUMBER_OF_STUDY_RELATED_INSTANCES = 0x00201208
NUMBER_OF_SERIES_RELATED_INSTANCES = 0x00201209
SOP_CLASSES_IN_STUDY = 0x00080062
SOP_CLASS_UID = 0x00080016
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056

COMPUTED = {
    Level.PATIENT: {NUMBER_OF_PATIENT_RELATED_STUDIES, NUMBER_OF_PATIENT_RELATED_SERIES,
                    NUMBER_OF_PATIENT_RELATED_INSTANCES},
    Level.STUDY: {NUMBER_OF_STUDY_RELATED_SERIES, NUMBER_OF_STUDY_RELATED_INSTANCES, MODALITIES_IN_STUDY,
                  SOP_CLASSES_IN_STUDY},
    Level.SERIES: {NUMBER_OF_SERIES_RELATED_INSTANCES},
    Level.INSTANCE: {SOP_CLASS_UID},
}

_INDEXED = {lvl: {t for t, _ in tags} for lvl, tags in INDEXED_TAGS.items()}


async def _counts(archive: Archive, level: Level, ids: list[int], wanted: set[int],
                  students: bool = False) -> dict[int, dict[int, str]]:
    """Computed attributes (PS3.4 C.3) for resources of ``level``; for ``students``, a patient's
    counts are of its published studies only."""
    out: dict[int, dict[int, str]] = {i: {} for i in ids}
    if not ids or not (wanted & COMPUTED[level]):
        return out
    idx = archive.index
    if students and level == Level.PATIENT:
        by: dict[tuple[int, int], int] = {}
        for patient in await idx.resources_by_ids(ids):
            pid = patient.id
            studies = await archive.narrowed_for_students([patient])
            below = await idx.descendant_counts([s.id for s in studies], Level.STUDY)
            by[(pid, int(Level.STUDY))] = len(studies)
            for (_root, lvl), n in below.items():
                by[(pid, lvl)] = by.get((pid, lvl), 0) + n
    else:
        by = await idx.descendant_counts(ids, level)   # (root id, level) -> how many below it
    table = {
        NUMBER_OF_PATIENT_RELATED_STUDIES: Level.STUDY, NUMBER_OF_PATIENT_RELATED_SERIES: Level.SERIES,
        NUMBER_OF_PATIENT_RELATED_INSTANCES: Level.INSTANCE, NUMBER_OF_STUDY_RELATED_SERIES: Level.SERIES,
        NUMBER_OF_STUDY_RELATED_INSTANCES: Level.INSTANCE, NUMBER_OF_SERIES_RELATED_INSTANCES: Level.INSTANCE,
    }
    for tag, below in table.items():
        if tag in wanted and tag in COMPUTED[level]:
            for i in ids:
                out[i][tag] = str(by.get((i, int(below)), 0))
    if level == Level.STUDY and MODALITIES_IN_STUDY in wanted:
        for sid in ids:   # a study none of whose series says its modality: present, empty (as Orthanc)
            out[sid][MODALITIES_IN_STUDY] = ""
        for sid, mods in (await idx.child_values(ids, tag=tag_key(MODALITY))).items():
            out[sid][MODALITIES_IN_STUDY] = "\\".join(sorted(mods))
    if level == Level.STUDY and SOP_CLASSES_IN_STUDY in wanted:
        for sid, classes in (await idx.child_values(ids, metadata="SopClassUid")).items():
            out[sid][SOP_CLASSES_IN_STUDY] = "\\".join(sorted(classes))
    if level == Level.INSTANCE and SOP_CLASS_UID in wanted:
        for rid, v in (await idx.metadata_values(ids, "SopClassUid")).items():
            out[rid][SOP_CLASS_UID] = v
    return out


async def answers(archive: Archive, q: Query, wanted: list[int], limit: int = 0, offset: int = 0
                  ) -> list[dict[int, str]]:
    """Values of the ``wanted`` tags for each match of ``q``, in index order."""
    ids = await archive.find(q, since=offset, limit=limit)
    if not ids:
        return []
    wanted_set = set(wanted)
    # up to the study: a study's own copy of its patient's tags stands for the patient's (absent
    # there means absent), so the patient's row is read only for a patient-level query
    chains = await _ancestor_chains(archive, ids, max(0, q.level - Level.STUDY))
    all_ids = sorted({r for chain in chains.values() for r in chain})
    tags = await archive.index.main_tags(all_ids)
    computed = await _counts(archive, q.level, ids, wanted_set, q.students)
    keys = {t: tag_key(t) for t in wanted}
    indexed_anywhere = set().union(*(_INDEXED[lvl] for lvl in Level if lvl <= q.level))
    from_file = [t for t in wanted if t not in indexed_anywhere and t not in COMPUTED[q.level]
                 and t not in (0x00080052, 0x00080005, 0x00080054, 0x00080056)]
    files = await _representative_files(archive, ids) if from_file else {}
    out = []
    for rid in ids:
        merged: dict[str, str] = {}
        for res_id in reversed(chains[rid]):   # ancestors first, the resource's own values win
            merged.update(tags.get(res_id, {}))
        ans: dict[int, str] = {}
        for t in wanted:
            if t in computed[rid]:
                ans[t] = computed[rid][t]
            elif keys[t] in merged:
                ans[t] = merged[keys[t]]
        if from_file and rid in files:
            ans.update({t: files[rid][t] for t in from_file if t in files[rid]})
        out.append(ans)
    return out


async def _ancestor_chains(archive: Archive, ids: list[int], depth: int) -> dict[int, list[int]]:
    """Each resource with its ancestors, ``depth`` levels up at most."""
    chains = {i: [i] for i in ids}
    current = {i: i for i in ids}  # origin -> current top of its chain
    for _ in range(depth):
        if not current:
            break
        tops = list(set(current.values()))
        parent_of = await archive.index.parents(tops)
        nxt = {}
        for origin, top in current.items():
            p = parent_of.get(top)
            if p is not None:
                chains[origin].append(p)
                nxt[origin] = p
        current = nxt
    return chains


# how many of a resource's instances are tried, in index order, for a readable one: a study
# poisoned by unreadable files (stored by an earlier version) costs a few reads, not one per instance
REPRESENTATIVE_TRIES = 4


async def _representative_files(archive: Archive, ids: list[int]) -> dict[int, dict[int, str]]:
    """Tags of one readable stored instance per resource, for keys that the index does not keep.

    An instance whose file pydicom cannot read back is skipped with a warning that names it
    (and the next one tried), so that one bad file does not fail the query for everyone."""
    out: dict[int, dict[int, str]] = {}
    for rid in ids:
        inst = await archive.index.descendant_instances(rid)
        for iid in inst[:REPRESENTATIVE_TRIES]:
            res = await archive.index.resource_by_id(iid)
            try:
                data = await archive.read_file(res)
            except LookupError:
                continue
            try:
                out[rid] = await asyncio.to_thread(_file_values, data)
                break
            except Exception as e:  # noqa: BLE001 - pydicom raises many types on a file it cannot read
                log.warning("query answer: instance %s skipped, its stored file cannot be read: %s: %s",
                            res.public_id, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
    return out


def _file_values(data: bytes) -> dict[int, str]:
    """The text of every top-level element of a stored file; raises if pydicom cannot read one."""
    from .dicomfile import element_text, read_dataset

    ds = read_dataset(data, stop_before_pixels=True)
    vals = {}
    for elem in ds:   # decoding happens here: an unknown VR raises, and the file is skipped
        try:
            v = element_text(elem)
        except Exception:  # noqa: BLE001 - a malformed value is left out, not fatal
            v = None
        if v is not None:
            vals[int(elem.tag)] = v
    return vals


def answer_dataset(level_name: str | None, wanted: list[tuple[int, str]], values: dict[int, str], charset: str,
                   our_aet: str, encoding: tuple[bool, bool] | None = None) -> Dataset:
    """A query answer holding exactly the requested keys (empty when there is no value).

    ``encoding`` (implicit VR, little endian) is the transfer syntax the answer goes out in:
    declared as the dataset's own, pydicom then writes the pre-encoded elements untouched.
    """
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    if level_name:
        ds.QueryRetrieveLevel = level_name
    codec = one_step_codec(charset)
    for tag, vr in wanted:
        if tag == RETRIEVE_AE_TITLE:
            text = our_aet
        elif tag == INSTANCE_AVAILABILITY:
            text = "ONLINE"
        else:
            text = values.get(tag, "")
        if codec is not None and vr in _TEXT_VRS:
            # already-encoded bytes: pydicom writes them as they are, which is most of the
            # cost of an answer saved (a C-FIND over a class's worth of studies sends hundreds)
            raw = text.encode(codec, errors="replace")
            if len(raw) % 2:
                raw += b"\0" if vr == "UI" else b" "
            ds[tag] = RawDataElement(BaseTag(tag), vr, len(raw), raw, 0, False, True)
        else:
            ds.add(_element(tag, vr, text))
    if encoding is not None and codec is not None:
        ds.set_original_encoding(encoding[0], encoding[1], ds._character_set)
    return ds


_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


_BINARY_INT = {"US", "SS", "UL", "SL", "UV", "SV"}
_BINARY_FLOAT = {"FL", "FD"}


def _element(tag: int, vr: str, text: str) -> DataElement:
    if vr == "SQ":
        return DataElement(tag, vr, Sequence())
    if not text:
        return DataElement(tag, vr, None)
    parts = text.split("\\")
    try:
        if vr in _BINARY_INT:
            vals: Any = [int(p) for p in parts]
        elif vr in _BINARY_FLOAT:
            vals = [float(p) for p in parts]
        elif vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV", "AT"):
            return DataElement(tag, vr, None)
        else:
            vals = parts
    except ValueError:
        return DataElement(tag, vr, None)
    return DataElement(tag, vr, vals if len(vals) > 1 else vals[0])
