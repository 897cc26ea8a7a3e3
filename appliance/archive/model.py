"""The resource model shared by every part of the archive: levels, public IDs, main tags.

Public IDs follow Orthanc's DicomInstanceHasher so that IDs seen in Orthanc scripts
and bookmarks stay valid here: SHA-1 over the identifying UIDs joined by ``|``,
written as five groups of eight hexadecimal digits.
"""

from __future__ import annotations

import enum
import hashlib
import time

from pydicom.tag import Tag


class Level(enum.IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    INSTANCE = 3

    @property
    def title(self) -> str:
        """Orthanc's ``Type``/``ResourceType`` spelling."""
        return ("Patient", "Study", "Series", "Instance")[self]

    @property
    def plural(self) -> str:
        """The REST collection name."""
        return ("patients", "studies", "series", "instances")[self]

    @classmethod
    def parse(cls, text: str) -> Level:
        """Accept Orthanc's and DICOM's spellings: Patient, STUDY, series, Image, instances..."""
        t = text.strip().lower()
        table = {
            "patient": cls.PATIENT, "patients": cls.PATIENT,
            "study": cls.STUDY, "studies": cls.STUDY,
            "series": cls.SERIES,
            "instance": cls.INSTANCE, "instances": cls.INSTANCE, "image": cls.INSTANCE,
        }
        if t not in table:
            raise ValueError(f"unknown resource level {text!r}")
        return table[t]


def format_public_id(text: str) -> str:
    h = hashlib.sha1(text.encode("utf-8")).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def public_ids(patient_id: str, study_uid: str, series_uid: str, sop_uid: str) -> tuple[str, str, str, str]:
    """(patient, study, series, instance) public IDs, as Orthanc computes them."""
    return (
        format_public_id(patient_id),
        format_public_id(f"{patient_id}|{study_uid}"),
        format_public_id(f"{patient_id}|{study_uid}|{series_uid}"),
        format_public_id(f"{patient_id}|{study_uid}|{series_uid}|{sop_uid}"),
    )


def orthanc_date(t: float | None = None) -> str:
    """Orthanc's timestamp format, e.g. 20261125T110543 (UTC)."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if t is None else t))


def tag_key(tag: int) -> str:
    """0x00100010 -> '0010,0010' (Orthanc's and our index's spelling)."""
    return f"{tag >> 16:04x},{tag & 0xFFFF:04x}"


# Orthanc 1.10's default main DICOM tags, per level: what it indexes and shows in MainDicomTags.
_MAIN = {
    Level.PATIENT: ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs"],
    Level.STUDY: ["StudyDate", "StudyTime", "StudyID", "StudyDescription", "AccessionNumber", "StudyInstanceUID",
                  "RequestedProcedureDescription", "InstitutionName", "RequestingPhysician",
                  "ReferringPhysicianName"],
    Level.SERIES: ["SeriesDate", "SeriesTime", "Modality", "Manufacturer", "StationName", "SeriesDescription",
                   "BodyPartExamined", "SequenceName", "ProtocolName", "SeriesNumber", "CardiacNumberOfImages",
                   "ImagesInAcquisition", "NumberOfTemporalPositions", "NumberOfSlices", "NumberOfTimeSlices",
                   "SeriesInstanceUID", "ImageOrientationPatient", "SeriesType", "OperatorsName",
                   "PerformedProcedureStepDescription", "AcquisitionDeviceProcessingDescription",
                   "ContrastBolusAgent"],
    Level.INSTANCE: ["InstanceCreationDate", "InstanceCreationTime", "AcquisitionNumber", "ImageIndex",
                     "InstanceNumber", "NumberOfFrames", "TemporalPositionIdentifier", "SOPInstanceUID",
                     "ImagePositionPatient", "ImageComments", "ImageOrientationPatient"],
}

MAIN_TAGS: dict[Level, list[tuple[int, str]]] = {
    lvl: [(int(Tag(kw)), kw) for kw in kws] for lvl, kws in _MAIN.items()
}

# Also indexed, not shown in MainDicomTags (Orthanc does not keep them): what QIDO-RS answers by
# default, without reading every file (Timezone Offset From UTC and the Performed Procedure Step
# Start Date/Time since index schema 3: older indexes read them from the files once, in the
# background).
_EXTRA = {Level.STUDY: ["TimezoneOffsetFromUTC"],
          Level.SERIES: ["PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"],
          Level.INSTANCE: ["SOPClassUID", "Rows", "Columns", "BitsAllocated"]}
EXTRA_TAGS: dict[Level, list[tuple[int, str]]] = {
    lvl: [(int(Tag(kw)), kw) for kw in _EXTRA.get(lvl, [])] for lvl in _MAIN
}
INDEXED_TAGS: dict[Level, list[tuple[int, str]]] = {lvl: MAIN_TAGS[lvl] + EXTRA_TAGS[lvl] for lvl in _MAIN}

# Tags whose values are dates: ranges apply to them in queries.
DATE_TAGS = {int(Tag(k)) for k in ("PatientBirthDate", "StudyDate", "SeriesDate", "InstanceCreationDate",
                                   "AcquisitionDate", "ContentDate")}
TIME_TAGS = {int(Tag(k)) for k in ("StudyTime", "SeriesTime", "InstanceCreationTime")}
PN_TAGS = {int(Tag(k)) for k in ("PatientName", "ReferringPhysicianName", "RequestingPhysician",
                                 "OperatorsName")}

IDENTIFIER_OF_LEVEL = {
    Level.PATIENT: int(Tag("PatientID")),
    Level.STUDY: int(Tag("StudyInstanceUID")),
    Level.SERIES: int(Tag("SeriesInstanceUID")),
    Level.INSTANCE: int(Tag("SOPInstanceUID")),
}


def level_of_main_tag(tag: int, at_or_above: Level = Level.INSTANCE) -> Level | None:
    """The highest level at or above ``at_or_above`` that indexes ``tag``, else the lowest below it."""
    found = [lvl for lvl in Level if any(t == tag for t, _ in INDEXED_TAGS[lvl])]
    above = [lvl for lvl in found if lvl <= at_or_above]
    if above:
        return max(above)
    return min(found) if found else None
