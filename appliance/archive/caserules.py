"""The teaching case document: its vocabulary, its limits and the checks of every body that makes one.

Plain functions over JSON values, no I/O. They live in the archive, which checks every document
it is handed (a POST /cases body, a draft made from a key object, a bundle's ``case.json``) once,
with these rules, before it stores it; ``appliance.archive`` exports them for the teaching and web
layers. Every refusal is a ``CaseInvalid`` whose
message names the field (``KeyImages[2].Annotations[0].Points``), so a client can point at it.

What needs the stored image (a key image's frame count, its size, its Pixel Spacing) is checked by
``check_key_image`` against the instance's tags, which the archive reads from the file.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

# ---------------------------------------------------------------- vocabulary (served at /cases/vocabulary)

# ACR-style subspecialties
CATEGORIES = ["Breast", "Cardiac", "Chest", "Emergency", "Gastrointestinal", "Genitourinary", "Head and Neck",
              "Interventional", "Musculoskeletal", "Neuroradiology", "Nuclear Medicine", "Oncology", "Pediatric",
              "Vascular", "Physics", "Other"]
BODY_REGIONS = ["Head", "Neck", "Spine", "Chest", "Breast", "Heart", "Abdomen", "Pelvis", "Upper limb",
                "Lower limb", "Vessels", "Whole body"]
DIFFICULTIES = ["beginner", "intermediate", "advanced"]
ANNOTATION_TYPES = ["arrow", "ellipse", "text", "length"]
STATES = ["draft", "published"]

# ---------------------------------------------------------------- limits (each one tested)

MAX_TEXT_BYTES = 100_000          # a text field, UTF-8
MAX_KEYWORDS = 64
MAX_KEYWORD_CHARS = 200
MAX_COLLECTIONS = 64
MAX_STUDIES = 100
MAX_KEY_IMAGES = 500
MAX_ANNOTATIONS = 100             # per key image
MAX_CAPTION_CHARS = 1000          # a key image's caption and an annotation's text
MAX_MISSING = 10_000              # referenced instances not received yet
MAX_UID_CHARS = 64                # PS3.5 9.1
MIN_ZOOM, MAX_ZOOM = 0.1, 20.0
POINTS_OF_TYPE = {"arrow": 2, "ellipse": 2, "text": 1, "length": 2}

TEXT_FIELDS = ("Title", "History", "Question", "Findings", "Diagnosis", "DifferentialDiagnosis", "Discussion",
               "TeachingPoints", "References", "Author", "DelayReason")
VOCABULARY_FIELDS = {"BodyRegion": BODY_REGIONS, "Category": CATEGORIES, "Difficulty": DIFFICULTIES}
EDITABLE_FIELDS = (*TEXT_FIELDS, *VOCABULARY_FIELDS, "Keywords", "Collections", "Studies", "KeyImages", "Missing",
                   "Unknown")
UNKNOWN_TITLE = "Unknown case"    # an unknown case's Title in students' lists and summaries
READ_ONLY_FIELDS = ("ID", "Created", "Updated", "Modalities", "State", "Source")
ALL_FIELDS = (*EDITABLE_FIELDS, *READ_ONLY_FIELDS)

LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}")            # as study labels (Orthanc's rule)
LABEL_RULE = "1 to 64 characters, each a letter A-Z or a-z, a digit, '-' or '_' (no spaces or accents), e.g. Session3-chest"


def label_problem(label: str) -> str | None:
    """Why ``label`` is no label (or collection name), what it accepts included: LABEL_RULE after
    what is wrong with this one (empty, too long, the first character it does not take); None when it is one."""
    if LABEL.fullmatch(label):
        return None
    if not label:
        return f"it is empty; a label is {LABEL_RULE}"
    if len(label) > 64:
        return f"it has {len(label)} characters; a label is {LABEL_RULE}"
    bad = next(c for c in label if not re.fullmatch(r"[A-Za-z0-9_-]", c))
    what = "a space" if bad == " " else repr(bad)
    return f"{what} is not accepted; a label is {LABEL_RULE}"

CASE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
UID = re.compile(r"[0-9]+(\.[0-9]+)*")
NO_PIXEL_SPACING = "the image has no Pixel Spacing"
IMAGER_PIXEL_SPACING = ("measured with Imager Pixel Spacing (0018,1164): the size at the detector, "
                        "not corrected for magnification")


class CaseInvalid(ValueError):
    """A case document (or part of one) that cannot be stored; the message names the field."""


def vocabulary() -> dict[str, list[str]]:
    return {"Categories": list(CATEGORIES), "BodyRegions": list(BODY_REGIONS), "Difficulties": list(DIFFICULTIES),
            "AnnotationTypes": list(ANNOTATION_TYPES)}


def empty_document() -> dict[str, Any]:
    """Every editable field at its default (what a case made from ``{}`` holds)."""
    doc: dict[str, Any] = {f: "" for f in TEXT_FIELDS}
    doc.update({f: "" for f in VOCABULARY_FIELDS})
    doc.update({"Keywords": [], "Collections": [], "Studies": [], "KeyImages": [], "Missing": [], "Source": {},
                "State": "draft", "Unknown": False})
    return doc


# ---------------------------------------------------------------- bodies


def validate_create(body: Any) -> dict[str, Any]:
    """A POST /cases body: the document to store (every editable field, defaults for those not
    given). Read-only fields are the board's: refused, unless they say what a new case is anyway
    (``"State": "draft"``, ``"Source": {}``)."""
    body = _unicode(_object(body, "the case"))
    for f in READ_ONLY_FIELDS:
        if f in body and not (f == "State" and body[f] == "draft") and not (f == "Source" and body[f] == {}):
            raise CaseInvalid(f"{f} is set by the board and cannot be given for a new case")
    _no_unknown(body, ALL_FIELDS, "")
    doc = empty_document()
    doc.update(check_fields({k: v for k, v in body.items() if k in EDITABLE_FIELDS}))
    return doc


def merge_update(stored: dict[str, Any], body: Any) -> dict[str, Any]:
    """A PUT /cases/{id} body merged onto the stored document: the fields given replace theirs,
    the others are kept. A read-only field is ignored when it equals the stored value (a client
    sending back what it read), refused otherwise. The values are checked once, by the archive,
    with the whole document (``validate_import``)."""
    body = _object(body, "the case")
    _no_unknown(body, ALL_FIELDS, "")
    for f in READ_ONLY_FIELDS:
        if f in body and body[f] != stored.get(f):
            what = "publish or unpublish it (POST /cases/{id}/publish)" if f == "State" else "it is set by the board"
            raise CaseInvalid(f"{f} cannot be changed: {what}")
    merged = dict(stored)
    merged.update({k: v for k, v in body.items() if k in EDITABLE_FIELDS})
    return merged


def validate_import(doc: Any) -> dict[str, Any]:
    """A whole document from elsewhere (a bundle's ``case.json``, a draft made from a key object):
    the editable fields as in a create, and the board's own (ID, Created, Updated, State, Source)
    kept when given. Modalities are derived from the studies, so what is given is checked for
    its type and dropped; ``SchemaVersion`` 1 (bundles) is accepted and dropped."""
    doc = _unicode(_object(doc, "the case"))
    _no_unknown(doc, (*ALL_FIELDS, "SchemaVersion"), "")
    if "SchemaVersion" in doc and (type(doc["SchemaVersion"]) is not int or doc["SchemaVersion"] != 1):
        raise CaseInvalid("SchemaVersion: this board reads case documents of schema version 1")
    out = empty_document()
    out.update(check_fields({k: v for k, v in doc.items() if k in EDITABLE_FIELDS}))
    if "ID" in doc:
        if not isinstance(doc["ID"], str) or not CASE_ID.fullmatch(doc["ID"]):
            raise CaseInvalid("ID: a case ID is a lower-case UUID (8-4-4-4-12 hexadecimal digits)")
        out["ID"] = doc["ID"]
    for f in ("Created", "Updated"):
        if f in doc:
            if not isinstance(doc[f], str) or not TIMESTAMP.fullmatch(doc[f]):
                raise CaseInvalid(f"{f}: a UTC time as 2026-12-07T22:50:01Z")
            out[f] = doc[f]
    if "State" in doc:
        if doc["State"] not in STATES:
            raise CaseInvalid(f"State: one of {', '.join(STATES)}")
        out["State"] = doc["State"]
    if "Source" in doc:
        out["Source"] = _source(doc["Source"])
    if "Modalities" in doc:
        _strings(doc["Modalities"], "Modalities", 64, 16)
    return out


def check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The editable fields given, each checked and normalised (defaults inside key images)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name in TEXT_FIELDS:
            out[name] = _text(value, name)
        elif name in VOCABULARY_FIELDS:
            allowed = VOCABULARY_FIELDS[name]
            if not isinstance(value, str) or (value and value not in allowed):
                raise CaseInvalid(f"{name}: one of {', '.join(allowed)}, or \"\" (unset)")
            out[name] = value
        elif name == "Keywords":
            out[name] = _strings(value, name, MAX_KEYWORDS, MAX_KEYWORD_CHARS)
        elif name == "Collections":
            labels = _strings(value, name, MAX_COLLECTIONS, 64)
            for i, label in enumerate(labels):
                if not LABEL.fullmatch(label):
                    raise CaseInvalid(f"{name}[{i}]: a collection name is {LABEL_RULE} (as study labels)")
            out[name] = list(dict.fromkeys(labels))
        elif name == "Studies":
            studies = _strings(value, name, MAX_STUDIES, 64)
            if len(set(studies)) != len(studies):
                raise CaseInvalid(f"{name}: a study is named twice")
            out[name] = studies
        elif name == "KeyImages":
            items = _array(value, name, MAX_KEY_IMAGES)
            out[name] = [_key_image(ki, f"{name}[{i}]") for i, ki in enumerate(items)]
        elif name == "Missing":
            items = _array(value, name, MAX_MISSING)
            out[name] = [_missing(m, f"{name}[{i}]") for i, m in enumerate(items)]
        elif name == "Unknown":
            if type(value) is not bool:
                raise CaseInvalid(f"{name}: true (an unknown case: students see the answer when they reveal it) "
                                  "or false")
            out[name] = value
        else:
            raise CaseInvalid(f"{name}: not a field of a case")
    return out


# ---------------------------------------------------------------- key images


def check_key_image(ki: dict[str, Any], where: str, tags: dict[str, Any]) -> dict[str, Any]:
    """A (checked) key image against its instance: the frame exists, its Center and every point are within
    [0, Columns] x [0, Rows] (PS3.3 GSPS PIXEL units), and each length gets its LengthMm from
    Pixel Spacing (0028,0030: row spacing \\ column spacing), else from Imager Pixel Spacing
    (0018,1164, said in LengthNote), else null with a LengthNote.

    ``tags``: Rows, Columns, NumberOfFrames (ints), PixelSpacing, ImagerPixelSpacing
    ([row, column] in mm, or None)."""
    rows, cols = int(tags.get("Rows") or 0), int(tags.get("Columns") or 0)
    frames = max(1, int(tags.get("NumberOfFrames") or 1))
    if not rows or not cols:
        raise CaseInvalid(f"{where}.Instance: instance {ki['Instance']} is not an image (it has no Rows and Columns)")
    if ki["Frame"] > frames:
        raise CaseInvalid(f"{where}.Frame: instance {ki['Instance']} has {frames} frame(s); frames count from 1")
    spacing, note = _spacing(tags.get("PixelSpacing")), ""
    if spacing is None:
        spacing = _spacing(tags.get("ImagerPixelSpacing"))
        note = IMAGER_PIXEL_SPACING if spacing is not None else NO_PIXEL_SPACING
    if ki.get("Center") is not None:
        x, y = ki["Center"]
        if not (0 <= x <= cols and 0 <= y <= rows):
            raise CaseInvalid(f"{where}.Center: ({x}, {y}) is outside the image: x (column) within [0, {cols}], "
                              f"y (row) within [0, {rows}]")
    out = dict(ki)
    out["Annotations"] = []
    for j, a in enumerate(ki["Annotations"]):
        for k, (x, y) in enumerate(a["Points"]):
            if not (0 <= x <= cols and 0 <= y <= rows):
                raise CaseInvalid(f"{where}.Annotations[{j}].Points[{k}]: ({x}, {y}) is outside the image: "
                                  f"x (column) within [0, {cols}], y (row) within [0, {rows}]")
        a = {k: v for k, v in a.items() if k not in ("LengthMm", "LengthNote")}
        if a["Type"] == "length":
            (x0, y0), (x1, y1) = a["Points"]
            if spacing is None:
                a["LengthMm"] = None
            else:
                row_mm, col_mm = spacing
                a["LengthMm"] = round(math.hypot((x1 - x0) * col_mm, (y1 - y0) * row_mm), 3)
            if note:
                a["LengthNote"] = note
        out["Annotations"].append(a)
    return out


def _spacing(value: Any) -> tuple[float, float] | None:
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0):
        return None
    return row, col


def _key_image(ki: Any, where: str) -> dict[str, Any]:
    ki = _object(ki, where)
    _no_unknown(ki, ("Instance", "Frame", "Window", "Zoom", "Center", "Caption", "Annotations"), where + ".")
    if not isinstance(ki.get("Instance"), str) or not 0 < len(ki["Instance"]) <= 64:
        raise CaseInvalid(f"{where}.Instance: the Orthanc ID of an instance of the case's studies is required")
    frame = ki.get("Frame", 1)
    if type(frame) is not int or frame < 1:
        raise CaseInvalid(f"{where}.Frame: a whole number from 1")
    window = ki.get("Window")
    if window is not None:
        window = _object(window, f"{where}.Window")
        _no_unknown(window, ("Center", "Width"), f"{where}.Window.")
        for k in ("Center", "Width"):
            if k not in window or not _is_number(window[k]):
                raise CaseInvalid(f"{where}.Window.{k}: a number is required (or Window null: the image's own)")
        if window["Width"] <= 0:
            raise CaseInvalid(f"{where}.Window.Width: greater than 0")
        window = {"Center": window["Center"], "Width": window["Width"]}
    zoom = ki.get("Zoom")
    if zoom is not None and (not _is_number(zoom) or not MIN_ZOOM <= zoom <= MAX_ZOOM):
        raise CaseInvalid(f"{where}.Zoom: a number within [{MIN_ZOOM}, {MAX_ZOOM:g}], or null")
    center = ki.get("Center")
    if center is not None:
        if not (isinstance(center, list) and len(center) == 2 and all(_is_number(v) for v in center)):
            raise CaseInvalid(f"{where}.Center: [x, y], the displayed centre in image pixels, or null (the "
                              "frame's centre)")
        center = [center[0], center[1]]
    caption = ki.get("Caption", "")
    if not isinstance(caption, str) or len(caption) > MAX_CAPTION_CHARS:
        raise CaseInvalid(f"{where}.Caption: text of at most {MAX_CAPTION_CHARS} characters")
    anns = _array(ki.get("Annotations", []), f"{where}.Annotations", MAX_ANNOTATIONS)
    return {"Instance": ki["Instance"], "Frame": frame, "Window": window, "Zoom": zoom, "Center": center,
            "Caption": caption,
            "Annotations": [_annotation(a, f"{where}.Annotations[{j}]") for j, a in enumerate(anns)]}


def _annotation(a: Any, where: str) -> dict[str, Any]:
    a = _object(a, where)
    # LengthMm and LengthNote are the board's (computed on save): sent back as read, they are dropped
    _no_unknown(a, ("Type", "Points", "Text", "LengthMm", "LengthNote"), where + ".")
    kind = a.get("Type")
    if kind not in ANNOTATION_TYPES:
        raise CaseInvalid(f"{where}.Type: one of {', '.join(ANNOTATION_TYPES)}")
    n = POINTS_OF_TYPE[kind]
    points = a.get("Points")
    if (not isinstance(points, list) or len(points) != n
            or not all(isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in points)):
        raise CaseInvalid(f"{where}.Points: {n} point(s) [x, y] for {'a' if kind != 'ellipse' else 'an'} {kind}, "
                          "numbers in image pixels")
    text = a.get("Text", "")
    if not isinstance(text, str) or len(text) > MAX_CAPTION_CHARS:
        raise CaseInvalid(f"{where}.Text: text of at most {MAX_CAPTION_CHARS} characters")
    if kind == "text" and not text.strip():
        raise CaseInvalid(f"{where}.Text: a text label needs its text")
    return {"Type": kind, "Points": [[p[0], p[1]] for p in points], "Text": text}


def _missing(m: Any, where: str) -> dict[str, str]:
    m = _object(m, where)
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    _no_unknown(m, keys, where + ".")
    for k in keys:
        v = m.get(k)
        if not isinstance(v, str) or len(v) > MAX_UID_CHARS or not UID.fullmatch(v):
            raise CaseInvalid(f"{where}.{k}: a UID (digits and dots, at most {MAX_UID_CHARS} characters)")
    return {k: m[k] for k in keys}


def _source(value: Any) -> dict[str, str]:
    value = _object(value, "Source")
    _no_unknown(value, ("KeyObject",), "Source.")
    if value and (not isinstance(value["KeyObject"], str) or len(value["KeyObject"]) > MAX_UID_CHARS
                  or not UID.fullmatch(value["KeyObject"])):
        raise CaseInvalid("Source.KeyObject: the SOP Instance UID of a key object")
    return dict(value)


# ---------------------------------------------------------------- the search index's text


def search_texts(doc: dict[str, Any], modalities: list[str] = ()) -> dict[str, str]:
    """What the full-text index holds of a document, by column (``sqlite`` CASE_TEXT_COLUMNS).
    An unknown case's "facets" (BodyRegion, Category, its ``modalities``) are what students'
    search matches beside its History and Question (never its answer fields); "" otherwise."""
    captions = []
    for ki in doc.get("KeyImages", []):
        captions.append(ki.get("Caption", ""))
        captions += [a.get("Text", "") for a in ki.get("Annotations", [])]
    texts = {"title": doc["Title"], "keywords": "\n".join(doc["Keywords"]), "diagnosis": doc["Diagnosis"],
             "findings": doc["Findings"], "differential": doc["DifferentialDiagnosis"], "history": doc["History"],
             "question": doc["Question"], "discussion": doc["Discussion"], "teaching": doc["TeachingPoints"],
             "refs": doc["References"], "author": doc["Author"], "captions": "\n".join(c for c in captions if c)}
    texts = {k: fold_for_search(v) for k, v in texts.items()}
    texts["variants"] = transliterations(" ".join(texts.values()))
    texts["facets"] = " ".join([doc.get("BodyRegion", ""), doc.get("Category", ""), *modalities]).strip() \
        if doc.get("Unknown") else ""
    return texts


# letters unicode61's remove_diacritics leaves alone (they are not a letter and a mark)
_LIGATURES = str.maketrans({"œ": "oe", "Œ": "OE", "æ": "ae", "Æ": "AE", "ß": "ss", "ẞ": "SS", "ĳ": "ij",
                            "Ĳ": "IJ", "ø": "o", "Ø": "O", "đ": "d", "Đ": "D", "ł": "l", "Ł": "L",
                            "ﬁ": "fi", "ﬂ": "fl"})
_GERMAN = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})
_WORD = re.compile(r"\w+")
_UMLAUTS = frozenset("äöüÄÖÜ")


_GREEK_WITH_MARK = re.compile(r"([\u0370-\u03ff\u1f00-\u1fff])[\u0300-\u036f]+")


def fold_for_search(text: str) -> str:
    """Text as the index and the queries see it: composed (NFC), ligatures spelt out ("œdème" ->
    "oedème") and Greek letters without their accents (unicode61 folds Latin ones only: "ώ" -> "ω");
    case and Latin accents are the tokenizer's (unicode61 remove_diacritics 2)."""
    text = unicodedata.normalize("NFC", text).translate(_LIGATURES)
    if any("\u0370" <= ch <= "\u03ff" or "\u1f00" <= ch <= "\u1fff" for ch in text):
        text = unicodedata.normalize("NFC", _GREEK_WITH_MARK.sub(r"\1", unicodedata.normalize("NFD", text)))
    return text


def transliterations(text: str) -> str:
    """Words with an umlaut, spelt as German does without one ("Ödem" -> "Oedem"): indexed
    beside the words themselves, so "oedem" finds it as "odem" and "ödem" do."""
    # words first, then those with an umlaut (a pattern \w*[äöü]\w* backtracks: minutes for a 100 KB word)
    return " ".join(dict.fromkeys(w.translate(_GERMAN) for w in _WORD.findall(text) if not _UMLAUTS.isdisjoint(w)))


# ---------------------------------------------------------------- helpers


def _unicode(doc: dict[str, Any]) -> dict[str, Any]:
    """Refuse text that is not Unicode (a lone surrogate, which a JSON parser may let through from
    a \\ud800 escape): it could be neither stored nor sent."""
    try:
        json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise CaseInvalid("the case holds text that is not Unicode (a lone surrogate, \\ud800-\\udfff)") from None
    except (TypeError, ValueError):
        raise CaseInvalid("the case holds something that is not JSON (NaN, Infinity, a set...)") from None
    return doc


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CaseInvalid(f"{where}: a JSON object is required")
    return value


def _array(value: Any, where: str, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise CaseInvalid(f"{where}: a JSON array is required")
    if len(value) > most:
        raise CaseInvalid(f"{where}: at most {most} items ({len(value)} given)")
    return value


def _strings(value: Any, where: str, most: int, chars: int) -> list[str]:
    items = _array(value, where, most)
    for i, v in enumerate(items):
        if not isinstance(v, str):
            raise CaseInvalid(f"{where}[{i}]: a string is required")
        if len(v) > chars:
            raise CaseInvalid(f"{where}[{i}]: at most {chars} characters")
    return list(items)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise CaseInvalid(f"{where}: a string is required")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise CaseInvalid(f"{where}: at most {MAX_TEXT_BYTES} bytes of UTF-8 text ({size} given)")
    return value


def _no_unknown(obj: dict[str, Any], known: tuple[str, ...], prefix: str,
                error: type[Exception] = CaseInvalid) -> None:
    """Refuse a field not in ``known`` (``error``: the rules' own refusal; sessionrules passes its own)."""
    for k in obj:
        if k not in known:
            # the name cut: it is the client's text, of any length up to the body's 8 MiB
            name = k if len(k) <= 64 else k[:64] + "..."
            raise error(f"{prefix}{name}: not a field here (known: {', '.join(known)})")


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)
