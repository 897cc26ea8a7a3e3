"""The archive: the index and the folder of DICOM files, behind one door.

Every other package enters here, never through a submodule: the DICOM and web layers call
the ``Archive`` object, use the records and errors it takes and gives back, and run queries
through its one query engine. Only the archive writes storage or SQL.
"""

from .caserules import (
    ALL_FIELDS,
    ANNOTATION_TYPES,
    BODY_REGIONS,
    CASE_ID,
    CATEGORIES,
    DIFFICULTIES,
    EDITABLE_FIELDS,
    IMAGER_PIXEL_SPACING,
    LABEL,
    LABEL_RULE,
    MAX_ANNOTATIONS,
    MAX_CAPTION_CHARS,
    MAX_COLLECTIONS,
    MAX_KEY_IMAGES,
    MAX_KEYWORD_CHARS,
    MAX_KEYWORDS,
    MAX_MISSING,
    MAX_STUDIES,
    MAX_TEXT_BYTES,
    MAX_UID_CHARS,
    MAX_ZOOM,
    MIN_ZOOM,
    NO_PIXEL_SPACING,
    POINTS_OF_TYPE,
    READ_ONLY_FIELDS,
    STATES,
    TEXT_FIELDS,
    TIMESTAMP,
    UID,
    UNKNOWN_TITLE,
    VOCABULARY_FIELDS,
    CaseInvalid,
    check_fields,
    check_key_image,
    empty_document,
    fold_for_search,
    label_problem,
    merge_update,
    search_texts,
    transliterations,
    validate_create,
    validate_import,
    vocabulary,
)
from .derived import DerivedStore, Tombstones
from .dicomfile import (
    IMPLEMENTATION_VERSION,
    MAX_MAIN_TAG_LENGTH,
    InvalidDicom,
    OverBudget,
    ParsedInstance,
    decode_every_element,
    element_text,
    parse_instance,
    part10_file,
    read_dataset,
)
from .find import FindError, Query, UnknownTag, WrongType, build_query, matchable_only, parse_tag
from .frames import LAYOUTS_KEPT
from .hub import Archive
from .ingest import PreparedInstance
from .lock import StorageInUse
from .model import (
    IDENTIFIER_OF_LEVEL,
    INDEXED_TAGS,
    MAIN_TAGS,
    Level,
    orthanc_date,
    public_ids,
    tag_key,
)
from .query_answers import answer_dataset, answers
from .records import (
    CaseConflict,
    CaseExists,
    CaseQuery,
    CaseStale,
    IndexTooNew,
    IndexUnusable,
    IngestResult,
    NotFound,
    Origin,
    Resource,
    Statistics,
    StoreRefused,
)
from .sessionrules import (
    ANSWER_BURST,
    ANSWER_RATE,
    CASE_ANSWER_FIELDS,
    HELD_BACK_KEYWORDS,
    HELD_BACK_TAGS,
    HELD_BACK_TITLE,
    MAX_CHOICE_CHARS,
    MAX_CHOICES,
    MAX_NICKNAME_CHARS,
    MAX_PARTICIPANTS,
    MAX_POLYGON_POINTS,
    MAX_PROMPT_CHARS,
    MAX_QUESTIONS,
    MAX_SESSION_BODY,
    MAX_SESSION_CASES,
    MAX_TEXT_ANSWER_CHARS,
    MAX_TITLE_CHARS,
    MAX_VIEW_BYTES,
    MIN_CHOICES,
    MIN_POLYGON_POINTS,
    MODES,
    QUESTION_ID,
    QUESTION_TYPES,
    REGION_TYPES,
    SESSION_ID,
    SESSION_STATES,
    HeldBack,
    Seat,
    SessionConflict,
    SessionInvalid,
    SessionStale,
    check_answer,
    held_back_case,
    nickname_key,
    nickname_of,
)
from .storage import Spool, StorageFull
from .zipimport import ZIP_MAGIC, hostile_name, ingest_zip

__all__ = [
    # the archive and its records
    "Archive", "Origin", "IngestResult", "Resource", "Statistics", "PreparedInstance", "Spool",
    # single frames and headers read by offset (Archive.read_frame / read_headers): files whose layout is kept
    "LAYOUTS_KEPT",
    # derived data kept on disk (the class cache's second tier)
    "DerivedStore",
    "Tombstones",
    # errors
    "NotFound", "StoreRefused", "IndexTooNew", "IndexUnusable", "StorageInUse", "InvalidDicom", "OverBudget",
    "StorageFull", "FindError", "UnknownTag", "WrongType",
    # the resource model
    "Level", "MAIN_TAGS", "INDEXED_TAGS", "IDENTIFIER_OF_LEVEL", "public_ids", "tag_key", "orthanc_date",
    # teaching cases
    "CaseQuery", "CaseInvalid", "CaseExists", "CaseConflict", "CaseStale",
    # the case document's rules (caserules): vocabulary, limits, checks
    "ALL_FIELDS",
    "ANNOTATION_TYPES",
    "BODY_REGIONS",
    "CASE_ID",
    "CATEGORIES",
    "DIFFICULTIES",
    "EDITABLE_FIELDS",
    "IMAGER_PIXEL_SPACING",
    "LABEL",
    "LABEL_RULE",
    "label_problem",
    "MAX_ANNOTATIONS",
    "MAX_CAPTION_CHARS",
    "MAX_COLLECTIONS",
    "MAX_KEYWORDS",
    "MAX_KEYWORD_CHARS",
    "MAX_KEY_IMAGES",
    "MAX_MISSING",
    "MAX_STUDIES",
    "MAX_TEXT_BYTES",
    "MAX_UID_CHARS",
    "MAX_ZOOM",
    "MIN_ZOOM",
    "NO_PIXEL_SPACING",
    "POINTS_OF_TYPE",
    "READ_ONLY_FIELDS",
    "STATES",
    "TEXT_FIELDS",
    "TIMESTAMP",
    "UID",
    "UNKNOWN_TITLE",
    "VOCABULARY_FIELDS",
    "check_fields",
    "check_key_image",
    "empty_document",
    "fold_for_search",
    "merge_update",
    "search_texts",
    "transliterations",
    "validate_create",
    "validate_import",
    "vocabulary",

    # teaching sessions (sessionrules): errors, records, limits, what unknown cases hold back
    "SessionInvalid", "SessionConflict", "SessionStale", "Seat", "HeldBack",
    "HELD_BACK_TAGS", "HELD_BACK_KEYWORDS", "HELD_BACK_TITLE", "CASE_ANSWER_FIELDS", "held_back_case",
    "MAX_SESSION_CASES", "MAX_QUESTIONS", "MAX_PARTICIPANTS", "MAX_NICKNAME_CHARS", "MAX_TITLE_CHARS",
    "MAX_PROMPT_CHARS", "MAX_CHOICE_CHARS", "MIN_CHOICES", "MAX_CHOICES", "MIN_POLYGON_POINTS", "MAX_POLYGON_POINTS",
    "MAX_TEXT_ANSWER_CHARS", "MAX_SESSION_BODY", "MAX_VIEW_BYTES", "MODES", "SESSION_STATES", "QUESTION_TYPES",
    "REGION_TYPES", "QUESTION_ID", "SESSION_ID", "check_answer", "nickname_of", "nickname_key",
    "ANSWER_RATE", "ANSWER_BURST",

    # queries: one engine for C-FIND, /tools/find and QIDO-RS
    "Query", "build_query", "matchable_only", "parse_tag", "answers", "answer_dataset",
    # DICOM files as the archive reads and writes them
    "ParsedInstance", "parse_instance", "read_dataset", "decode_every_element", "part10_file", "element_text",
    "MAX_MAIN_TAG_LENGTH", "IMPLEMENTATION_VERSION",
    # uploads of ZIP files
    "ZIP_MAGIC", "ingest_zip", "hostile_name",
]
