"""What the room answered in a teaching session, as the teacher reads it: per question counts
(choice), grouped words (text), taps against the teacher's region (tap); the same as CSV rows;
and the student's view of a session document.

Plain functions over the session document, its answer rows (``Archive.session_answers``) and
its cases' documents, so the routes (web/teaching_sessions.py), the live channel's summaries and
the tests all compute them the same way. Nothing here reads storage.
"""

from __future__ import annotations

import csv
import io
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

UTF8_BOM = "\ufeff"               # Excel reads a CSV as UTF-8 only with it
CSV_FIELDS = ("session", "case", "case_title", "question", "type", "prompt", "nickname", "answer", "correct",
              "inside", "answered_at")
# a cell a spreadsheet would run as a formula (OWASP "CSV injection"): = + - @, and tab / CR that
# some spreadsheets strip before looking
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_STUDENT_HIDDEN_QUESTION_FIELDS = ("Correct", "Region")


# ---------------------------------------------------------------------- regions

def inside_region(region: Mapping[str, Any] | None, x: float, y: float) -> bool:
    """Is the point (image pixels) inside the region? Ellipse and rectangle: given by two opposite
    corners of their box; polygon: its vertices (even-odd rule; a point on an edge is inside). No
    region, a degenerate one, or a point that is not finite: False."""
    if not region or not (math.isfinite(x) and math.isfinite(y)):
        return False
    points = region.get("Points") or []
    kind = region.get("Type")
    if kind in ("ellipse", "rectangle"):
        if len(points) < 2:
            return False
        (x0, y0), (x1, y1) = points[0], points[1]
        left, right, top, bottom = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        if kind == "rectangle":
            return left <= x <= right and top <= y <= bottom
        a, b = (right - left) / 2, (bottom - top) / 2
        if a <= 0 or b <= 0:
            return False
        cx, cy = (left + right) / 2, (top + bottom) / 2
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0
    if kind == "polygon":
        if len(points) < 3:
            return False
        return _in_polygon([(float(p[0]), float(p[1])) for p in points], x, y)
    return False


def _in_polygon(poly: list[tuple[float, float]], x: float, y: float) -> bool:
    inside = False
    n = len(poly)
    for i in range(n):
        (xa, ya), (xb, yb) = poly[i], poly[(i + 1) % n]
        if _on_segment(xa, ya, xb, yb, x, y):
            return True
        if (ya > y) != (yb > y):
            cross_x = xa + (y - ya) * (xb - xa) / (yb - ya)
            if x < cross_x:
                inside = not inside
    return inside


def _on_segment(xa: float, ya: float, xb: float, yb: float, x: float, y: float) -> bool:
    cross = (xb - xa) * (y - ya) - (yb - ya) * (x - xa)
    if abs(cross) > 1e-9 * max(1.0, abs(xb - xa) + abs(yb - ya)):
        return False
    return min(xa, xb) - 1e-9 <= x <= max(xa, xb) + 1e-9 and min(ya, yb) - 1e-9 <= y <= max(ya, yb) + 1e-9


def key_image_of(question: Mapping[str, Any], case: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The case's key image a tap question is asked on (its KeyImage index), None when the case or
    that key image is gone."""
    if not case:
        return None
    images = case.get("KeyImages") or []
    k = question.get("KeyImage", 0) or 0
    return images[k] if isinstance(k, int) and 0 <= k < len(images) else None


def region_of(question: Mapping[str, Any], case: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The region a tap is judged against: the question's own, else (Region null) the key image's
    first ellipse annotation, else none."""
    if question.get("Region"):
        return dict(question["Region"])
    image = key_image_of(question, case)
    for ann in (image or {}).get("Annotations") or []:
        if ann.get("Type") == "ellipse" and len(ann.get("Points") or []) >= 2:
            return {"Type": "ellipse", "Points": [list(p) for p in ann["Points"][:2]]}
    return None


# ---------------------------------------------------------------------- text answers

def word_key(text: str) -> str:
    """What makes two free-text answers the same word: case, accents, surrounding blanks and
    punctuation, and runs of inner blanks do not count ("Pneumonía." is "pneumonia")."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    plain = re.sub(r"\s+", " ", plain).strip(" \t\r\n.,;:!?\"'()[]")
    return plain.casefold()


def group_words(texts: Iterable[str]) -> list[dict[str, Any]]:
    """Free-text answers grouped (``word_key``), most first, then alphabetically; each group is
    shown as its most frequent spelling (trimmed), the first seen among equals."""
    groups: dict[str, dict[str, int]] = {}
    for text in texts:
        if not isinstance(text, str):
            continue
        key = word_key(text)
        if not key:
            continue
        spelling = re.sub(r"\s+", " ", text).strip()
        forms = groups.setdefault(key, {})
        forms[spelling] = forms.get(spelling, 0) + 1
    out = []
    for key, forms in groups.items():
        shown = max(forms.items(), key=lambda kv: kv[1])[0]    # max keeps the first of equals
        out.append({"Word": shown, "Count": sum(forms.values()), "_key": key})
    out.sort(key=lambda w: (-w["Count"], w["_key"]))
    for w in out:
        del w["_key"]
    return out


# ---------------------------------------------------------------------- results

def _answers_by_question(answers: Iterable[Mapping[str, Any]]) -> dict[tuple[int, str], list[Mapping[str, Any]]]:
    by: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for row in answers:
        by.setdefault((row["Case"], row["Question"]), []).append(row)
    return by


def _case_doc(doc: Mapping[str, Any], index: int, cases: Mapping[str, Mapping[str, Any]]
              ) -> Mapping[str, Any] | None:
    entry = doc["Cases"][index]
    return None if entry.get("Missing") else cases.get(entry["Case"])


def choice_correct(question: Mapping[str, Any], answer: Any) -> bool | None:
    """A choice answer against the marked ones: right when it is exactly the set marked; None when
    none is marked (or the question is not a choice)."""
    correct = question.get("Correct") or []
    if question.get("Type") != "choice" or not correct or not isinstance(answer, list):
        return None
    return set(answer) == set(correct)


def question_summary(doc: Mapping[str, Any], case_index: int, question: Mapping[str, Any],
                     rows: Sequence[Mapping[str, Any]], cases: Mapping[str, Mapping[str, Any]],
                     sizes: Mapping[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """One question's entry of ``results``: what the live channel sends presenters as answers come in."""
    case = _case_doc(doc, case_index, cases)
    entry: dict[str, Any] = {"Case": case_index, "CaseTitle": (case or {}).get("Title", ""),
                             "Question": question["ID"], "Type": question["Type"], "Prompt": question.get("Prompt", ""),
                             "Answered": len(rows)}
    kind = question["Type"]
    if kind == "choice":
        counts = [0] * len(question.get("Choices") or [])
        for row in rows:
            for i in row["Answer"] if isinstance(row["Answer"], list) else []:
                if isinstance(i, int) and 0 <= i < len(counts):
                    counts[i] += 1
        entry["Choices"] = list(question.get("Choices") or [])
        entry["Counts"] = counts
        entry["Correct"] = list(question.get("Correct") or [])
    elif kind == "text":
        entry["Words"] = group_words(row["Answer"] for row in rows)
    elif kind == "tap":
        region = region_of(question, case)
        taps = [[float(row["Answer"][0]), float(row["Answer"][1])] for row in rows
                if isinstance(row["Answer"], list) and len(row["Answer"]) == 2]
        inside = sum(1 for x, y in taps if inside_region(region, x, y)) if region else 0
        entry["Taps"] = taps
        entry["Inside"] = inside
        entry["InsideShare"] = inside / len(taps) if region and taps else None
        entry["Region"] = region
        image = key_image_of(question, case)
        if image is None:
            entry["KeyImage"] = None
        else:
            cols, rows_ = (sizes or {}).get(image["Instance"], (None, None))
            entry["KeyImage"] = {"Instance": image["Instance"], "Frame": image.get("Frame", 1),
                                 "Columns": cols, "Rows": rows_}
    return entry


def results(doc: Mapping[str, Any], answers: Sequence[Mapping[str, Any]],
            cases: Mapping[str, Mapping[str, Any]], sizes: Mapping[str, tuple[int, int]] | None = None,
            participants: Sequence[str] | None = None) -> dict[str, Any]:
    """The teacher's results of a session: every question of every case in order, answered or not.
    ``answers``: the session's answer rows; ``cases``: case ID -> its (teacher's) document;
    ``sizes``: key image instance -> (Columns, Rows); ``participants``: nicknames of everyone who
    joined (default: those who answered, in the order of their first answer)."""
    by = _answers_by_question(answers)
    if participants is None:
        participants = list(dict.fromkeys(row["Nickname"] for row in answers))
    questions = []
    for ci, entry in enumerate(doc.get("Cases") or []):
        for q in entry.get("Questions") or []:
            questions.append(question_summary(doc, ci, q, by.get((ci, q["ID"]), []), cases, sizes))
    return {"Session": doc["ID"], "Title": doc.get("Title", ""), "Participants": list(participants),
            "Questions": questions}


# ---------------------------------------------------------------------- CSV

def csv_cell(value: Any) -> str:
    """A cell as text, prefixed with ' when a spreadsheet would take it for a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _answer_text(question: Mapping[str, Any], answer: Any) -> str:
    kind = question["Type"]
    if kind == "choice" and isinstance(answer, list):
        choices = question.get("Choices") or []
        return "; ".join(choices[i] if isinstance(i, int) and 0 <= i < len(choices) else str(i) for i in answer)
    if kind == "tap" and isinstance(answer, list) and len(answer) == 2:
        return f"{float(answer[0]):.1f} {float(answer[1]):.1f}"
    return answer if isinstance(answer, str) else str(answer)


def _yes_no(flag: bool | None) -> str:
    return "" if flag is None else ("yes" if flag else "no")


def results_csv(doc: Mapping[str, Any], answers: Sequence[Mapping[str, Any]],
                cases: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per answer, in answer order: ``CSV_FIELDS``. ``case`` counts from 1 (its place in the
    session); ``answer``: the text, the choices' texts joined by "; ", or a tap's "x y" in image
    pixels; ``correct``: yes/no for a choice question with marked answers, else empty; ``inside``:
    yes/no for a tap question with a region, else empty. UTF-8 with a BOM (Excel), RFC 4180
    quoting and CRLF, every cell guarded against formulas (``csv_cell``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(CSV_FIELDS)
    questions = {(ci, q["ID"]): q for ci, entry in enumerate(doc.get("Cases") or [])
                 for q in entry.get("Questions") or []}
    regions: dict[tuple[int, str], dict[str, Any] | None] = {}
    for row in answers:
        key = (row["Case"], row["Question"])
        q = questions.get(key)
        if q is None:
            continue            # a question removed since (its answers are kept by the archive)
        case = _case_doc(doc, row["Case"], cases)
        inside: bool | None = None
        if q["Type"] == "tap":
            if key not in regions:
                regions[key] = region_of(q, case)
            region = regions[key]
            a = row["Answer"]
            if region and isinstance(a, list) and len(a) == 2:
                inside = inside_region(region, float(a[0]), float(a[1]))
        w.writerow([csv_cell(v) for v in (
            doc["ID"], row["Case"] + 1, (case or {}).get("Title", ""), q["ID"], q["Type"], q.get("Prompt", ""),
            row["Nickname"], _answer_text(q, row["Answer"]), _yes_no(choice_correct(q, row["Answer"])),
            _yes_no(inside), row.get("At", ""))])
    return UTF8_BOM + buf.getvalue()


# ---------------------------------------------------------------------- the student's view

def student_view(doc: Mapping[str, Any], participant: str, nickname: str,
                 answers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A session as a seated student sees it: no Code, no question's Correct or Region (the
    answers), the case IDs kept; plus "You": their participant ID, nickname and own answer rows.
    A choice question carries ``"Multiple"``: true when several choices are marked correct, so the
    page offers several (the answer is then any set; says how many may be chosen, not which)."""
    out = {k: v for k, v in doc.items() if k != "Code"}
    out["Cases"] = [{**entry, "Questions": [_student_question(q) for q in entry.get("Questions") or []]}
                    for entry in doc.get("Cases") or []]
    out["You"] = {"Participant": participant, "Nickname": nickname,
                  "Answers": [dict(r) for r in answers if r.get("Participant") == participant]}
    return out


def _student_question(q: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in q.items() if k not in _STUDENT_HIDDEN_QUESTION_FIELDS}
    if q.get("Type") == "choice":
        out["Multiple"] = len(q.get("Correct") or []) >= 2
    return out
