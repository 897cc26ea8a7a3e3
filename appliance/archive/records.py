"""The archive's records and errors: what its public methods take and give back.

Shared by the hub and every index backend, so a backend is a new module under ``index/``
and never an edit of its callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .caserules import CaseInvalid  # noqa: F401 - the archive's error for a case it cannot store
from .dicomfile import ParsedInstance
from .model import Level


class StoreRefused(Exception):
    """A store refused by policy (storage limits); the message is for the sender."""


class NotFound(LookupError):
    """No such resource (or not at that level)."""


class CaseExists(Exception):
    """A case with this ID is on the board already (an import of a case it has)."""

    def __init__(self, case_id: str):
        super().__init__(f"case {case_id} is already on this board")
        self.case_id = case_id


class CaseConflict(Exception):
    """A change refused because of the state of something else (409): publishing a case whose
    studies are not de-identified, deleting a study that cases use. The message says what to do."""

    def __init__(self, message: str, cases: list[str] | None = None):
        super().__init__(message)
        self.cases = cases or []


class CaseStale(CaseConflict):
    """A case changed since the copy a change was made from was read (409): reload it."""

    def __init__(self, message: str = "the case changed since you read it: reload it"):
        super().__init__(message)


class IndexUnusable(RuntimeError):
    """The index cannot be opened (damaged, or not an index); the message says what to do."""


class IndexTooNew(IndexUnusable):
    """The index was written by a newer pipacs, whose schema this one would misread."""


@dataclass
class Origin:
    """Where an instance came from; kept as Orthanc's instance metadata."""
    kind: str = "RestApi"              # "DicomProtocol" | "RestApi" | "Import"
    remote_ip: str = ""
    remote_aet: str = ""
    called_aet: str = ""
    http_username: str = ""


@dataclass
class IngestResult:
    status: str                         # "Success" | "AlreadyStored"
    ids: tuple[str, str, str, str]      # patient, study, series, instance public IDs
    # where it came from: set for the store listeners (a case bundle's instances are Origin "Import")
    origin: Origin | None = field(default=None, compare=False, repr=False)

    def orthanc_json(self) -> dict[str, str]:
        """The response body of Orthanc's POST /instances."""
        p, st, se, i = self.ids
        return {"ID": i, "ParentPatient": p, "ParentSeries": se, "ParentStudy": st,
                "Path": f"/instances/{i}", "Status": self.status}


@dataclass
class StoreItem:
    """One instance for the index: its parsed header, its stored file and where it came from."""
    parsed: ParsedInstance
    file_uuid: str
    origin: Origin
    # metadata for the new resources, by level (ModifiedFrom / AnonymizedFrom of derived instances)
    extra_metadata: dict[int, dict[str, str]] | None = None


@dataclass
class Limits:
    """MaximumStorageSize (bytes), MaximumPatientCount and MaximumStorageMode."""
    max_bytes: int = 0
    max_patients: int = 0
    mode: str = "Recycle"


@dataclass
class Resource:
    """A patient, study, series or instance as the index knows it."""
    id: int
    public_id: str
    level: Level
    parent_id: int | None
    last_update: float
    stable: bool
    protected: bool


@dataclass
class Statistics:
    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    disk_size: int = 0


@dataclass
class CaseQuery:
    """What ``Archive.list_cases`` looks for; every filter given must hold. ``text``: full-text
    search (ranked, best first); otherwise newest first. ``students``: published cases only.
    ``scan``: the text matched by a LIKE scan of the documents instead of the full-text index. It is
    the bench's yardstick only (bench/cases.py: the issue's target is the FTS5 search's p95 beside
    the same query as a LIKE scan, on the same index in the same run); no route sets it, and it is
    neither ranked nor folded as the search is."""
    text: str = ""
    collection: str = ""
    body_region: str = ""
    modality: str = ""
    category: str = ""
    difficulty: str = ""
    state: str = ""
    students: bool = False
    since: int = 0
    limit: int = 100
    scan: bool = False
    # students: case IDs searched as unknown cases (held back by a teaching session now); the archive sets it
    held_back: frozenset[str] = frozenset()


@dataclass
class StoredCase:
    """A case as the index keeps it: the board's columns, the document's own fields, its studies
    (internal id, public ID) and key images, in order."""
    id: int
    public_id: str
    state: str
    created: str
    updated: str
    document: dict[str, Any]
    studies: list[tuple[int, str]] = field(default_factory=list)
    key_images: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CaseWrite:
    """A case for the index writer: the document (its Studies and KeyImages are kept in rows of
    their own, by the public IDs given here); the writer derives its search text."""
    public_id: str
    state: str
    created: str
    updated: str
    document: dict[str, Any]
    studies: list[str]
    key_images: list[dict[str, Any]]
    # a replace: the stored Updated it was made from (CaseStale when the case changed since)
    expect_updated: str | None = None
