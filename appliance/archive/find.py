"""The query engine: one matcher for every front door (REST /tools/find, C-FIND, QIDO-RS).

A query is a level and constraints on main DICOM tags; the index turns it into one
statement over its main tags (``index.sqlite_query`` for SQLite). Matching follows PS3.4 C.2.2.2: universal
(empty), single value, wildcard (``*``, ``?``), range (dates and times), list of values (``\\``-separated,
e.g. UID lists). A ``*`` alone is a wildcard, as in Orthanc: it matches every resource where the tag is
present, empty or not, and none where it is absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.datadict import tag_for_keyword
from pydicom.tag import Tag

from .model import DATE_TAGS, PN_TAGS, TIME_TAGS, Level, level_of_main_tag, tag_key

MODALITIES_IN_STUDY = 0x00080061
MODALITY = 0x00080060
MAX_LIST_VALUES = 5000


class FindError(ValueError):
    """A query that cannot be run; the message says which part and why."""


class UnknownTag(FindError):
    """A query names a tag that no dictionary knows."""


class WrongType(FindError):
    """A part of a query is not of the JSON type it must be (a value that is not a string)."""


@dataclass
class Constraint:
    tag: int
    kind: str                      # "exact" | "wildcard" | "range" | "list"
    values: list[str]
    case_sensitive: bool = True


@dataclass
class Query:
    level: Level
    constraints: list[Constraint] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    labels_constraint: str = "All"          # Orthanc's LabelsConstraint: All | Any | None
    # only what students may see: studies the teacher released, de-identified to the last instance
    students: bool = False


def parse_tag(name: str) -> int:
    """A keyword (PatientName) or a tag in any usual spelling (0010,0010 / 0010-0010 / 00100010)."""
    n = name.strip()
    t = tag_for_keyword(n)
    if t is not None:
        return int(t)
    compact = n.replace(",", "").replace("-", "").replace("(", "").replace(")", "").replace(" ", "")
    if len(compact) == 8:
        try:
            return int(Tag(int(compact, 16)))
        except ValueError:
            pass
    raise UnknownTag(f"unknown DICOM tag {name!r}")


def _is_date_like(tag: int) -> bool:
    return tag in DATE_TAGS or tag in TIME_TAGS


def make_constraint(tag: int, value: str, case_sensitive: bool = True, pn_case_sensitive: bool = False
                    ) -> Constraint | None:
    """One constraint from a query value; None for a universal match (an empty value only: ``*`` is
    a wildcard that a resource without the tag does not match, as Orthanc matches it)."""
    value = value.strip() if tag not in PN_TAGS else value.rstrip()
    if value == "":
        return None
    cs = pn_case_sensitive if tag in PN_TAGS else case_sensitive
    if "\\" in value:
        parts = [p for p in value.split("\\")]
        if len(parts) > MAX_LIST_VALUES:
            raise FindError(f"too many values ({len(parts)}) in the list for {tag_key(tag)}; "
                            f"at most {MAX_LIST_VALUES}")
        return Constraint(tag, "list", parts, cs)
    if _is_date_like(tag) and "-" in value:
        lo, _, hi = value.partition("-")
        lo, hi = lo.strip(), hi.strip()
        for v in (lo, hi):
            if v and not _valid_date_or_time(tag, v):
                raise FindError(f"malformed range {value!r} for {tag_key(tag)}")
        if not lo and not hi:
            return None
        return Constraint(tag, "range", [lo, hi], cs)
    if _is_date_like(tag) and not any(c in value for c in "*?") and not _valid_date_or_time(tag, value):
        raise FindError(f"malformed value {value!r} for {tag_key(tag)}")
    if "*" in value or "?" in value:
        return Constraint(tag, "wildcard", [value], cs)
    return Constraint(tag, "exact", [value], cs)


def _valid_date_or_time(tag: int, v: str) -> bool:
    if tag in DATE_TAGS:
        return len(v) == 8 and v.isdigit()
    head = v.split(".")[0]
    return head.isdigit() and len(head) in (2, 4, 6)


def build_query(level: Level, items: dict[str, str], case_sensitive: bool = True,
                pn_case_sensitive: bool = False) -> Query:
    q = Query(level)
    for name, value in items.items():
        tag = parse_tag(name)
        if not isinstance(value, str):
            raise WrongType(f"the value for {name!r} must be a string")
        c = make_constraint(tag, value, case_sensitive, pn_case_sensitive)
        if c is not None:
            q.constraints.append(c)
    return q


def fold(s: str | None) -> str | None:
    """Case folding used for case-insensitive matching (registered in SQLite as ``fold``)."""
    return None if s is None else s.casefold()


def matchable_only(q: Query) -> tuple[Query, list[int]]:
    """``q`` without the constraints on tags the index cannot match, and those tags.

    DICOM's baseline for a key the archive cannot match on (PS3.4 C.2.2.1, PS3.17 YYYY.7.11):
    ignore it for matching and return it as a return key, rather than fail the whole query.
    """
    kept, ignored = [], []
    for c in q.constraints:
        if (c.tag == MODALITIES_IN_STUDY and q.level == Level.STUDY) or level_of_main_tag(c.tag, q.level) is not None:
            kept.append(c)
        else:
            ignored.append(c.tag)
    if not ignored:
        return q, []
    return Query(q.level, kept, list(q.labels), q.labels_constraint, q.students), ignored
