"""The index: what the archive knows about its resources, behind one interface.

Two halves, because reads and writes are served differently: ``IndexReader`` answers the
event loop's queries (browsing never waits behind a batch of stores), ``IndexWriter`` runs
every change as a plain synchronous transaction on the archive's one writer thread (a whole
batch of stores is one call and one commit). ``sqlite`` is the embedded implementation; a
second backend (PostgreSQL) is a new module beside it that implements both halves, and
``open_index`` chooses. All SQL lives below this package.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..find import Query
from ..model import Level
from ..records import CaseQuery, CaseWrite, IngestResult, Limits, Resource, StoredCase, StoreItem

INDEX_FILE_NAME = "pipacs-index.sqlite"


class IndexReader(abc.ABC):
    """Read queries, awaited on the event loop. Internal ``id``s are the index's own keys."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # resources
    @abc.abstractmethod
    async def resource(self, public_id: str, level: Level | None = None) -> Resource | None: ...

    @abc.abstractmethod
    async def resource_by_id(self, internal_id: int) -> Resource | None: ...

    @abc.abstractmethod
    async def resources_by_ids(self, ids: list[int]) -> list[Resource]:
        """In the order of ``ids``; unknown ids are left out."""

    @abc.abstractmethod
    async def list_ids(self, level: Level, since: int = 0, limit: int = 0) -> list[int]: ...

    @abc.abstractmethod
    async def children(self, internal_id: int) -> list[Resource]: ...

    @abc.abstractmethod
    async def children_public_ids(self, ids: list[int]) -> dict[int, list[str]]: ...

    @abc.abstractmethod
    async def parents(self, ids: list[int]) -> dict[int, int]:
        """Parent id of each resource that has one."""

    @abc.abstractmethod
    async def descendant_instances(self, internal_id: int) -> list[int]: ...

    @abc.abstractmethod
    async def descendant_counts(self, ids: list[int], below: Level) -> dict[tuple[int, int], int]:
        """(root id, level) -> how many resources of that level (deeper than ``below``) descend from root."""

    # what is kept about them
    @abc.abstractmethod
    async def main_tags(self, ids: list[int]) -> dict[int, dict[str, str]]: ...

    @abc.abstractmethod
    async def files(self, ids: list[int]) -> dict[int, tuple[str, int]]:
        """(file UUID, size) of each instance."""

    @abc.abstractmethod
    async def metadata(self, internal_id: int) -> dict[str, str]: ...

    @abc.abstractmethod
    async def metadata_values(self, ids: list[int], name: str) -> dict[int, str]:
        """One metadata item (e.g. SopClassUid, IndexInSeries) of many resources."""

    @abc.abstractmethod
    async def child_values(self, parent_ids: list[int], tag: str | None = None,
                           metadata: str | None = None) -> dict[int, set[str]]:
        """Distinct values among the children (``tag``, a main tag) or grandchildren (``metadata``)
        of each parent: ModalitiesInStudy and SOPClassesInStudy."""

    @abc.abstractmethod
    async def labels(self, internal_id: int) -> list[str]: ...

    @abc.abstractmethod
    async def labels_of(self, ids: list[int]) -> dict[int, list[str]]: ...

    @abc.abstractmethod
    async def all_labels(self) -> list[str]: ...

    # queries
    @abc.abstractmethod
    async def find(self, q: Query, since: int = 0, limit: int = 0) -> list[int]:
        """Ids of the resources of ``q.level`` matching every constraint, in index order."""

    @abc.abstractmethod
    async def lookup(self, value: str) -> list[int]:
        """Resources whose identifier (PatientID or a UID) is ``value``."""

    @abc.abstractmethod
    async def instance_file(self, public_id: str) -> tuple[str, int] | None:
        """(file UUID, size) of an instance, by public ID."""

    @abc.abstractmethod
    async def stored_files_below(self, ids: list[int]) -> list[tuple[str, str, str]]:
        """(file UUID, SOP class UID, transfer syntax) of every instance below ``ids``, in storage order."""

    @abc.abstractmethod
    async def instances_with_ancestors(self, internal_id: int) -> list[tuple]:
        """(instance id, instance public id, series id, study id, patient id, file UUID, size)
        of every instance below a resource, patient by patient: what a download lays out."""

    @abc.abstractmethod
    async def level_counts(self) -> dict[int, int]: ...

    @abc.abstractmethod
    async def total_size(self) -> int: ...

    @abc.abstractmethod
    async def resource_statistics(self, internal_id: int) -> dict[str, int]: ...

    @abc.abstractmethod
    async def student_visible_ids(self, ids: list[int]) -> set[int]:
        """Those of ``ids`` (any level) that students may see: in a study the teacher released
        (its own switch, or a published label) whose patient's every instance is de-identified."""

    @abc.abstractmethod
    async def is_released(self, internal_id: int) -> bool:
        """The study's own release switch (labels aside)."""

    @abc.abstractmethod
    async def student_labels(self) -> list[str]:
        """Labels the teacher published to students."""

    @abc.abstractmethod
    async def unread_identities(self, limit: int) -> list[tuple[int, str]]:
        """(instance id, file UUID) of instances whose PatientIdentityRemoved was never read."""

    @abc.abstractmethod
    async def series_with_unread_tags(self, limit: int) -> list[tuple[int, int, str | None]]:
        """(series id, study id, file UUID of its first instance) of series indexed before the
        index kept the tags it keeps now."""

    @abc.abstractmethod
    async def has_unstable_before(self, t: float) -> bool: ...

    @abc.abstractmethod
    async def changes(self, since: int, limit: int) -> list[tuple]: ...

    @abc.abstractmethod
    async def last_change(self) -> int: ...

    # teaching cases
    @abc.abstractmethod
    async def case_id_of(self, public_id: str) -> int | None: ...

    @abc.abstractmethod
    async def case_ids_of(self, public_ids: list[str]) -> dict[str, int]:
        """Public ID -> internal id of those cases that exist."""

    @abc.abstractmethod
    async def cases_by_ids(self, ids: list[int], summary: bool = False) -> list[StoredCase]:
        """In the order of ``ids``; ``summary``: only what a case summary shows."""

    @abc.abstractmethod
    async def find_cases(self, q: CaseQuery) -> tuple[list[int], int]:
        """A page of the ids of the cases matching ``q`` (ranked when it has text), and how many match."""

    @abc.abstractmethod
    async def cases_using_studies(self, study_ids: list[int]) -> list[int]: ...

    @abc.abstractmethod
    async def cases_missing(self, sop_instance_uids: list[str]) -> dict[str, list[str]]:
        """SOP Instance UID -> public IDs of the cases that list it as missing."""

    @abc.abstractmethod
    async def studies_not_deidentified(self, study_ids: list[int]) -> dict[int, bool]:
        """Studies a published case may not show: study id -> True when not read yet."""

    @abc.abstractmethod
    async def middle_instances(self, study_ids: list[int]) -> dict[int, str]:
        """Public ID of the middle instance of each study's first image series (a thumbnail)."""

    # teaching sessions
    @abc.abstractmethod
    async def teaching_sessions(self, open_only: bool = False) -> list[dict[str, Any]]:
        """Every session's document, newest first (``open_only``: those not ended)."""

    @abc.abstractmethod
    async def teaching_session(self, public_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def session_answers(self, public_id: str) -> list[dict[str, Any]]:
        """A session's answer rows, in answer order."""

    @abc.abstractmethod
    async def session_has_answers(self, public_id: str) -> bool: ...

    @abc.abstractmethod
    async def session_answered_questions(self, public_id: str) -> set[tuple[int, str]]:
        """(case index, question ID) of the questions that have answers."""

    @abc.abstractmethod
    async def open_session_participants(self) -> list[Any]:
        """(session, participant, nickname, token sha256) of the sessions not ended."""


class IndexWriter(abc.ABC):
    """Every change, synchronous, called on the archive's one writer thread only."""

    @abc.abstractmethod
    def open(self) -> None:
        """Create or migrate the schema."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def store_batch(self, items: list[StoreItem]) -> tuple[list[IngestResult | Exception], list[str]]:
        """Index a batch; an outcome per item, and the file UUIDs to remove once committed."""

    @abc.abstractmethod
    def delete(self, level: Level, public_id: str, in_cases: str = "detach",
               now: str = "") -> tuple[dict[str, str] | None, list[str]]:
        """``in_cases``: "refuse" (CaseConflict when a case uses a study at or below it) or "detach"
        (the study and its key images leave those cases, whose Updated becomes ``now``)."""

    @abc.abstractmethod
    def set_protected(self, public_id: str, protected: bool) -> None: ...

    @abc.abstractmethod
    def set_label(self, level: Level, public_id: str, label: str, present: bool) -> bool: ...

    @abc.abstractmethod
    def set_metadata(self, level: Level, public_id: str, name: str, value: str | None) -> bool: ...

    @abc.abstractmethod
    def set_released(self, public_id: str, released: bool) -> None:
        """A study's release to students; NotFound for anything but a study."""

    @abc.abstractmethod
    def set_label_published(self, label: str, published: bool) -> bool:
        """Publish a label's studies to students (or stop); True when something changed."""

    @abc.abstractmethod
    def set_identities(self, identities: list[tuple[int, bool]]) -> None:
        """Record PatientIdentityRemoved read from the files of instances indexed before it was kept."""

    @abc.abstractmethod
    def set_read_tags(self, found: list[tuple[int, int, dict[str, str], dict[str, str]]]) -> None:
        """Add the (series id, study id, series tags, study tags) read from the files of series indexed
        before these tags were kept, never replacing a value the index has; those series are done."""

    @abc.abstractmethod
    def property(self, name: str, make: Callable[[], str]) -> str: ...

    @abc.abstractmethod
    def properties(self, prefix: str) -> dict[str, str]:
        """Every appliance property whose name starts with ``prefix`` (prefix removed)."""

    @abc.abstractmethod
    def set_property(self, name: str, value: str | None) -> None:
        """Store (or, with None, remove) a persistent appliance property."""

    @abc.abstractmethod
    def mark_stable(self, now: float, age: float) -> int: ...

    @abc.abstractmethod
    def file_uuids(self) -> set[str]: ...

    @abc.abstractmethod
    def dropped_file_uuids(self) -> set[str]: ...

    @abc.abstractmethod
    def clear_dropped_files(self) -> None: ...

    @abc.abstractmethod
    def forget_files(self, uuids: set[str]) -> None: ...

    @abc.abstractmethod
    def modalities(self) -> dict[str, dict[str, Any]]: ...

    @abc.abstractmethod
    def put_modality(self, name: str, config: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def delete_modality(self, name: str) -> bool: ...

    # teaching cases
    @abc.abstractmethod
    def put_case(self, case: CaseWrite, create: bool) -> None:
        """Insert (CaseExists when taken) or replace a case with its rows and search text, in one
        transaction; CaseInvalid when a study or key image is not (or no longer) there."""

    @abc.abstractmethod
    def delete_case(self, public_id: str, now: str = "") -> list[str]:
        """Delete a case; its entries in teaching sessions become Missing (those sessions' IDs returned)."""

    @abc.abstractmethod
    def set_case_state(self, public_id: str, state: str, updated: str) -> None: ...

    # teaching sessions
    @abc.abstractmethod
    def put_session(self, s: Any, create: bool) -> None:
        """Insert or replace a session (a ``SessionWrite``) in one transaction."""

    @abc.abstractmethod
    def delete_session(self, public_id: str) -> None: ...

    @abc.abstractmethod
    def set_session_view(self, public_id: str, view: str | None) -> None: ...

    @abc.abstractmethod
    def add_participant(self, session_public_id: str, participant_public_id: str, nickname: str, key: str,
                        token_sha256: str, joined: str, most: int) -> None: ...

    @abc.abstractmethod
    def rename_participant(self, participant_public_id: str, nickname: str, key: str) -> None: ...

    @abc.abstractmethod
    def put_answer(self, session_public_id: str, participant_public_id: str, case_index: int, question: str,
                   answer: str, at: str) -> dict[str, Any]: ...


def open_index(index_dir: Path, overwrite: bool, limits: Limits) -> tuple[IndexReader, IndexWriter]:
    """The configured backend's two halves (today: SQLite in ``index_dir``)."""
    from .sqlite import SqliteReader
    from .sqlite_writer import SqliteWriter
    path = index_dir / INDEX_FILE_NAME
    return SqliteReader(path), SqliteWriter(path, overwrite, limits)
