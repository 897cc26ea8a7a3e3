"""The query engine: one matcher for every front door (REST /tools/find, C-FIND, QIDO-RS).

A query is a level and constraints on main DICOM tags; it becomes one SQL statement
over the indexed ``main_tags`` table. Matching follows PS3.4 C.2.2.2: universal
(empty or ``*``), single value, wildcard (``*``, ``?``), range (dates and times),
list of values (``\\``-separated, e.g. UID lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.tag import Tag

from .model import DATE_TAGS, PN_TAGS, TIME_TAGS, Level, level_of_main_tag, tag_key

MODALITIES_IN_STUDY = 0x00080061
MODALITY = 0x00080060
MAX_LIST_VALUES = 5000


class FindError(ValueError):
    """A query that cannot be run; the message says which part and why."""


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
    raise FindError(f"unknown DICOM tag {name!r}")


def _is_date_like(tag: int) -> bool:
    return tag in DATE_TAGS or tag in TIME_TAGS


def make_constraint(tag: int, value: str, case_sensitive: bool = True, pn_case_sensitive: bool = False
                    ) -> Constraint | None:
    """One constraint from a query value; None for a universal match."""
    value = value.strip() if tag not in PN_TAGS else value.rstrip()
    if value in ("", "*"):
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
            raise FindError(f"the value for {name!r} must be a string")
        c = make_constraint(tag, value, case_sensitive, pn_case_sensitive)
        if c is not None:
            q.constraints.append(c)
    return q


def _glob_escape(s: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in s)


def _dicom_wildcard_to_glob(s: str) -> str:
    return "".join(c if c in "*?" else _glob_escape(c) for c in s)


def fold(s: str | None) -> str | None:
    """Case folding used for case-insensitive matching (registered in SQLite as ``fold``)."""
    return None if s is None else s.casefold()


def _match_sql(c: Constraint, col: str, params: list[Any]) -> str:
    """SQL testing the value column ``col`` against one constraint."""
    expr = col if c.case_sensitive else f"fold({col})"
    prep = (lambda v: v) if c.case_sensitive else (lambda v: v.casefold())

    def one(v: str) -> str:
        if "*" in v or "?" in v:
            params.append(prep(_dicom_wildcard_to_glob(v)))
            return f"{expr} GLOB ?"
        params.append(prep(v))
        return f"{expr} = ?"

    if c.kind == "exact":
        return one(c.values[0])
    if c.kind == "wildcard":
        return one(c.values[0])
    if c.kind == "range":
        lo, hi = c.values
        parts = []
        if lo:
            params.append(lo)
            parts.append(f"{col} >= ?")
        if hi:
            # a time or date upper bound includes everything that starts with it
            params.append(hi + ("\uffff" if c.tag in TIME_TAGS else ""))
            parts.append(f"{col} <= ?")
        parts.append(f"{col} <> ''")
        return "(" + " AND ".join(parts) + ")"
    if c.kind == "list":
        plain = [v for v in c.values if "*" not in v and "?" not in v]
        wild = [v for v in c.values if v not in plain]
        parts = []
        if plain:
            params.extend(prep(v) for v in plain)
            parts.append(f"{expr} IN ({','.join('?' * len(plain))})")
        parts.extend(one(v) for v in wild)
        return "(" + " OR ".join(parts) + ")" if parts else "0"
    raise FindError(f"unknown constraint kind {c.kind}")


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
    return Query(q.level, kept, list(q.labels), q.labels_constraint), ignored


def to_sql(q: Query, since: int = 0, limit: int = 0, extra_where: list[str] | None = None,
           extra_params: list[Any] | None = None) -> tuple[str, list[Any]]:
    """``SELECT r0.id FROM ...`` for the resources of ``q.level`` matching every constraint."""
    params: list[Any] = []
    joins: list[str] = []
    where = ["r0.level = ?"]
    params_where: list[Any] = [int(q.level)]
    depth_needed = 0
    conds: list[str] = []

    for c in q.constraints:
        if c.tag == MODALITIES_IN_STUDY and q.level == Level.STUDY:
            sub_params: list[Any] = []
            m = _match_sql(Constraint(MODALITY, c.kind if c.kind != "range" else "exact", c.values,
                                      c.case_sensitive), "t.value", sub_params)
            conds.append("EXISTS (SELECT 1 FROM resources s JOIN main_tags t ON t.resource_id = s.id "
                         f"WHERE s.parent_id = r0.id AND t.tag = ? AND {m})")
            params_where.extend([tag_key(MODALITY)] + sub_params)
            continue
        tl = level_of_main_tag(c.tag, q.level)
        if tl is None:
            raise FindError(f"tag {tag_key(c.tag)} is not indexed, so it cannot be used in a query; "
                            "query on the main DICOM tags")
        sub_params = []
        m = _match_sql(c, "t.value", sub_params)
        if tl <= q.level:
            depth = q.level - tl
            depth_needed = max(depth_needed, depth)
            conds.append(f"EXISTS (SELECT 1 FROM main_tags t WHERE t.resource_id = r{depth}.id "
                         f"AND t.tag = ? AND {m})")
            params_where.extend([tag_key(c.tag)] + sub_params)
        else:
            # a tag of a lower level: some descendant must match
            chain = ["resources d1"]
            for k in range(2, tl - q.level + 1):
                chain.append(f"JOIN resources d{k} ON d{k}.parent_id = d{k - 1}.id")
            last = f"d{tl - q.level}"
            conds.append(f"EXISTS (SELECT 1 FROM {' '.join(chain)} JOIN main_tags t ON t.resource_id = {last}.id "
                         f"WHERE d1.parent_id = r0.id AND t.tag = ? AND {m})")
            params_where.extend([tag_key(c.tag)] + sub_params)

    if q.labels:
        marks = ",".join("?" * len(q.labels))
        if q.labels_constraint == "All":
            conds.append(f"(SELECT COUNT(*) FROM labels l WHERE l.resource_id = r0.id AND l.label IN ({marks})) = ?")
            params_where.extend(list(q.labels) + [len(set(q.labels))])
        elif q.labels_constraint == "Any":
            conds.append(f"EXISTS (SELECT 1 FROM labels l WHERE l.resource_id = r0.id AND l.label IN ({marks}))")
            params_where.extend(q.labels)
        else:
            conds.append(f"NOT EXISTS (SELECT 1 FROM labels l WHERE l.resource_id = r0.id AND l.label IN ({marks}))")
            params_where.extend(q.labels)

    for k in range(1, depth_needed + 1):
        joins.append(f"JOIN resources r{k} ON r{k}.id = r{k - 1}.parent_id")
    where += conds
    if extra_where:
        where += extra_where
        params_where += extra_params or []
    sql = f"SELECT r0.id FROM resources r0 {' '.join(joins)} WHERE {' AND '.join(where)} ORDER BY r0.id"
    params += params_where
    if limit:
        sql += " LIMIT ? OFFSET ?"
        params += [limit, since]
    elif since:
        sql += " LIMIT -1 OFFSET ?"
        params += [since]
    return sql, params
