"""The query engine's SQL for SQLite: a ``find.Query`` becomes one statement over ``main_tags``.

Matching follows PS3.4 C.2.2.2 (see ``find``); the case-insensitive forms call ``fold``,
registered on the reader connection. A second index backend writes its own formatter
beside this one (as Orthanc's ISqlLookupFormatter has one per database).
"""

from __future__ import annotations

from typing import Any

from ..find import MODALITIES_IN_STUDY, MODALITY, Constraint, FindError, Query
from ..model import TIME_TAGS, Level, level_of_main_tag, tag_key

# Every resource at or below the resources whose ids fill ``{roots}`` (one ``?`` each):
# d(root, id, level), ``root`` being the one it descends from. The one "all descendants" query.
DESCENDANTS = """WITH RECURSIVE d(root, id, level) AS (
    SELECT id, id, level FROM resources WHERE id IN ({roots})
    UNION ALL SELECT d.root, r.id, r.level FROM resources r JOIN d ON r.parent_id = d.id)"""


def marks(n: int) -> str:
    """``?,?,?`` for n parameters."""
    return ",".join("?" * n)


def descendants(n_roots: int) -> str:
    return DESCENDANTS.format(roots=marks(n_roots))


def student_study(s: str) -> str:
    """True for the study row ``s`` when students may see it: the teacher released it (its own
    switch, a label the teacher published, or a published teaching case that uses it) and every instance of its patient is de-identified
    (the patient's name and birth date shown with the study come from whichever instance made the
    patient: one identifiable study of the same PatientID could have)."""
    return (f"(({s}.released = 1 OR EXISTS (SELECT 1 FROM labels sl JOIN student_labels sp ON sp.label = sl.label "
            f"WHERE sl.resource_id = {s}.id) OR EXISTS (SELECT 1 FROM case_studies scs JOIN cases sca ON sca.id = "
            f"scs.case_id WHERE scs.study_id = {s}.id AND sca.state = 'published')) AND NOT EXISTS (SELECT 1 FROM resources sst JOIN resources sse "
            f"ON sse.parent_id = sst.id JOIN resources si ON si.parent_id = sse.id WHERE sst.parent_id = "
            f"{s}.parent_id AND COALESCE(si.identity_removed, 0) = 0))")


def student_visible(r: str) -> str:
    """True for the resource row ``r`` (any level) when students may see it: a patient with a study
    they may see, a study they may see, or a series or instance in one."""
    return (f"(({r}.level = 0 AND EXISTS (SELECT 1 FROM resources vs WHERE vs.parent_id = {r}.id "
            f"AND {student_study('vs')})) "
            f"OR ({r}.level = 1 AND {student_study(r)}) "
            f"OR ({r}.level = 2 AND EXISTS (SELECT 1 FROM resources vs WHERE vs.id = {r}.parent_id "
            f"AND {student_study('vs')})) "
            f"OR ({r}.level = 3 AND EXISTS (SELECT 1 FROM resources vse JOIN resources vs ON vs.id = vse.parent_id "
            f"WHERE vse.id = {r}.parent_id AND {student_study('vs')})))")


def _glob_escape(s: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in s)


def _dicom_wildcard_to_glob(s: str) -> str:
    return "".join(c if c in "*?" else _glob_escape(c) for c in s)


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
        if tl == Level.PATIENT and q.level >= Level.STUDY:
            tl = Level.STUDY   # a study matches on its own copy of the patient's tags, as Orthanc
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

    if q.students:
        if q.level == Level.PATIENT:
            conds.append(f"EXISTS (SELECT 1 FROM resources vs WHERE vs.parent_id = r0.id AND {student_study('vs')})")
        else:
            depth = q.level - Level.STUDY
            depth_needed = max(depth_needed, depth)
            conds.append(student_study(f"r{depth}"))

    for k in range(1, depth_needed + 1):
        joins.append(f"JOIN resources r{k} ON r{k}.id = r{k - 1}.parent_id")
    where += conds
    if extra_where:
        where += extra_where
        params_where += extra_params or []
    sql = f"SELECT r0.id FROM resources r0 {' '.join(joins)} WHERE {' AND '.join(where)} ORDER BY r0.id"
    return paged(sql, params + params_where, since, limit)


def paged(sql: str, params: list[Any], since: int, limit: int) -> tuple[str, list[Any]]:
    """``sql`` from its ``since``-th row, at most ``limit`` rows (0: all): Orthanc's since/limit."""
    if limit:
        return sql + " LIMIT ? OFFSET ?", [*params, limit, since]
    if since:
        return sql + " LIMIT -1 OFFSET ?", [*params, since]
    return sql, params
