"""The option columns of PS3.15 Annex E Table E.1-1 that pipacs offers, as tag sets.

Read from the table of the standard (the options' columns, which the ``dicom-anonymizer``
package's Basic Profile tables do not carry); an attribute not listed keeps its Basic Profile
action under every option. Sequences listed are kept with the profile applied inside them.
"""

from __future__ import annotations

# Retain Patient Characteristics Option: K
PATIENT_CHARACTERISTICS_KEEP: frozenset[int] = frozenset({
    0x00100040,  # PatientSex
    0x00101010,  # PatientAge
    0x00101020,  # PatientSize
    0x00101030,  # PatientWeight
    0x00102160,  # EthnicGroup
    0x001021A0,  # SmokingStatus
    0x001021C0,  # PregnancyStatus
    0x00102203,  # PatientSexNeutered
})

# Retain Patient Characteristics Option: C (free text about the patient, kept cleaned)
PATIENT_CHARACTERISTICS_CLEAN: frozenset[int] = frozenset({
    0x00102110,  # Allergies
    0x00380050,  # SpecialNeeds
    0x00380500,  # PatientState
    0x00400012,  # PreMedication
})

# Retain Longitudinal Temporal Information Options: K with Full Dates, C with Modified Dates
LONGITUDINAL_DATES: frozenset[int] = frozenset({
    0x00080015,  # InstanceCoercionDateTime
    0x00080020,  # StudyDate
    0x00080021,  # SeriesDate
    0x00080022,  # AcquisitionDate
    0x00080023,  # ContentDate
    0x00080024,  # OverlayDate
    0x00080025,  # CurveDate
    0x0008002A,  # AcquisitionDateTime
    0x00080030,  # StudyTime
    0x00080031,  # SeriesTime
    0x00080032,  # AcquisitionTime
    0x00080033,  # ContentTime
    0x00080034,  # OverlayTime
    0x00080035,  # CurveTime
    0x00080201,  # TimezoneOffsetFromUTC
    0x001021D0,  # LastMenstrualDate
    0x0016008D,  # GPSDateStamp
    0x00189369,  # SourceStartDateTime
    0x0018936A,  # SourceEndDateTime
    0x00189516,  # StartAcquisitionDateTime
    0x00189517,  # EndAcquisitionDateTime
    0x00340007,  # FrameOriginTimestamp
    0x00380020,  # AdmittingDate
    0x00380021,  # AdmittingTime
    0x003A0314,  # ImpedanceMeasurementDateTime
    0x00400002,  # ScheduledProcedureStepStartDate
    0x00400003,  # ScheduledProcedureStepStartTime
    0x00400004,  # ScheduledProcedureStepEndDate
    0x00400005,  # ScheduledProcedureStepEndTime
    0x00400244,  # PerformedProcedureStepStartDate
    0x00400245,  # PerformedProcedureStepStartTime
    0x00400250,  # PerformedProcedureStepEndDate
    0x00400251,  # PerformedProcedureStepEndTime
    0x00404005,  # ScheduledProcedureStepStartDateTime
    0x00404008,  # ScheduledProcedureStepExpirationDateTime
    0x00404010,  # ScheduledProcedureStepModificationDateTime
    0x00404011,  # ExpectedCompletionDateTime
    0x00404050,  # PerformedProcedureStepStartDateTime
    0x00404051,  # PerformedProcedureStepEndDateTime
    0x00404052,  # ProcedureStepCancellationDateTime
    0x0040A192,  # ObservationDateTrial
    0x0040A193,  # ObservationTimeTrial
    0x30080054,  # FirstTreatmentDate
    0x30080056,  # MostRecentTreatmentDate
    0x30080250,  # TreatmentDate
    0x30080251,  # TreatmentTime
    0x300A0006,  # RTPlanDate
    0x300A0007,  # RTPlanTime
    0x300A0736,  # TreatmentToleranceViolationDateTime
    0x300A073A,  # RecordedRTControlPointDateTime
    0x300A0741,  # InterlockDateTime
    0x300A0760,  # OverrideDateTime
    0x3010004C,  # IntendedPhaseStartDate
    0x3010004D,  # IntendedPhaseEndDate
})

# Clean Descriptors Option: C
DESCRIPTORS: frozenset[int] = frozenset({
    0x00081030,  # StudyDescription
    0x0008103E,  # SeriesDescription
    0x00081080,  # AdmittingDiagnosesDescription
    0x00081084,  # AdmittingDiagnosesCodeSequence
    0x00082111,  # DerivationDescription
    0x00084000,  # IdentifyingComments
    0x00102000,  # MedicalAlerts
    0x00102110,  # Allergies
    0x00102180,  # Occupation
    0x001021B0,  # AdditionalPatientHistory
    0x00104000,  # PatientComments
    0x00120051,  # ClinicalTrialTimePointDescription
    0x00120072,  # ClinicalTrialSeriesDescription
    0x0016002B,  # MakerNote
    0x0016004B,  # DeviceSettingDescription
    0x00180010,  # ContrastBolusAgent
    0x00181030,  # ProtocolName
    0x00181400,  # AcquisitionDeviceProcessingDescription
    0x00184000,  # AcquisitionComments
    0x00189185,  # RespiratoryMotionCompensationTechniqueDescription
    0x0018937B,  # MultienergyAcquisitionDescription
    0x0018937F,  # DecompositionDescription
    0x00189424,  # AcquisitionProtocolDescription
    0x0018A003,  # ContributionDescription
    0x00204000,  # ImageComments
    0x00209158,  # FrameComments
    0x00321030,  # ReasonForStudy
    0x00321060,  # RequestedProcedureDescription
    0x00321066,  # ReasonForVisit
    0x00321067,  # ReasonForVisitCodeSequence
    0x00321070,  # RequestedContrastAgent
    0x00324000,  # StudyComments
    0x00380040,  # DischargeDiagnosisDescription
    0x00380062,  # ServiceEpisodeDescription
    0x00380500,  # PatientState
    0x00384000,  # VisitComments
    0x00400007,  # ScheduledProcedureStepDescription
    0x00400254,  # PerformedProcedureStepDescription
    0x00400275,  # RequestAttributesSequence
    0x00400280,  # CommentsOnThePerformedProcedureStep
    0x0040051A,  # ContainerDescription
    0x00400600,  # SpecimenShortDescription
    0x00400602,  # SpecimenDetailedDescription
    0x00401002,  # ReasonForTheRequestedProcedure
    0x0040100A,  # ReasonForRequestedProcedureCodeSequence
    0x00401400,  # RequestedProcedureComments
    0x00402001,  # ReasonForTheImagingServiceRequest
    0x00402400,  # ImagingServiceRequestComments
    0x00500021,  # LongDeviceDescription
    0x22000002,  # LabelText
    0x300A0002,  # RTPlanLabel
    0x300A0003,  # RTPlanName
    0x300A0004,  # RTPlanDescription
    0x300A000E,  # PrescriptionDescription
    0x300A0016,  # DoseReferenceDescription
    0x300A0072,  # FractionGroupDescription
    0x300A00C3,  # BeamDescription
    0x300A00DD,  # BolusDescription
    0x300A0196,  # FixationDeviceDescription
    0x300A01A6,  # ShieldingDeviceDescription
    0x300A01B2,  # SetupTechniqueDescription
    0x300A02EB,  # CompensatorDescription
    0x300A0608,  # TreatmentPositionGroupLabel
    0x300A0619,  # RadiationDoseIdentificationLabel
    0x300A0623,  # RadiationDoseInVivoMeasurementLabel
    0x300A062A,  # RTToleranceSetLabel
    0x300A0676,  # EquipmentFrameOfReferenceDescription
    0x300A067C,  # RadiationGenerationModeLabel
    0x300A067D,  # RadiationGenerationModeDescription
    0x300A0734,  # TreatmentToleranceViolationDescription
    0x300A0742,  # InterlockDescription
    0x300A0783,  # InterlockOriginDescription
    0x300C0113,  # ReasonForOmissionDescription
    0x3010000F,  # ConceptualVolumeCombinationDescription
    0x30100017,  # ConceptualVolumeDescription
    0x30100033,  # UserContentLabel
    0x30100034,  # UserContentLongLabel
    0x30100035,  # EntityLabel
    0x30100036,  # EntityName
    0x30100037,  # EntityDescription
    0x30100038,  # EntityLongLabel
    0x30100054,  # RTPrescriptionLabel
    0x30100056,  # RTTreatmentApproachLabel
    0x3010005A,  # RTPhysicianIntentNarrative
    0x3010005C,  # ReasonForSuperseding
    0x30100061,  # PriorTreatmentDoseDescription
    0x30100077,  # TreatmentSite
    0x3010007A,  # TreatmentTechniqueNotes
    0x3010007B,  # PrescriptionNotes
    0x3010007F,  # FractionationNotes
    0x30100081,  # PrescriptionNotesSequence
    0x4008010B,  # InterpretationText
    0x40080115,  # InterpretationDiagnosisDescription
    0x40080300,  # Impressions
    0x40084000,  # ResultsComments
})

# Retain Device Identity Option: K
DEVICE_IDENTITY: frozenset[int] = frozenset({
    0x00081010,  # StationName
    0x0016004E,  # LensSpecification
    0x0016004F,  # LensMake
    0x00160050,  # LensModel
    0x00160051,  # LensSerialNumber
    0x00181000,  # DeviceSerialNumber
    0x00181002,  # DeviceUID
    0x00181004,  # PlateID
    0x00181005,  # GeneratorID
    0x00181007,  # CassetteID
    0x00181008,  # GantryID
    0x00181009,  # UniqueDeviceIdentifier
    0x0018100A,  # UDISequence
    0x0018100B,  # ManufacturerDeviceClassUID
    0x0018700A,  # DetectorID
    0x00189367,  # XRaySourceID
    0x00189371,  # XRayDetectorID
    0x00189373,  # XRayDetectorLabel
    0x00321020,  # ScheduledStudyLocation
    0x00321021,  # ScheduledStudyLocationAETitle
    0x00400001,  # ScheduledStationAETitle
    0x00400010,  # ScheduledStationName
    0x00400011,  # ScheduledProcedureStepLocation
    0x00400241,  # PerformedStationAETitle
    0x00400242,  # PerformedStationName
    0x00404025,  # ScheduledStationNameCodeSequence
    0x00404027,  # ScheduledStationGeographicLocationCodeSequence
    0x00404028,  # PerformedStationNameCodeSequence
    0x00404030,  # PerformedStationGeographicLocationCodeSequence
    0x00500020,  # DeviceDescription
    0x30080105,  # SourceSerialNumber
    0x300A00B2,  # TreatmentMachineName
    0x300A0216,  # SourceManufacturer
    0x3010002D,  # DeviceLabel
    0x30100043,  # ManufacturerDeviceIdentifier
})

# Retain Institution Identity Option: K
INSTITUTION_IDENTITY: frozenset[int] = frozenset({
    0x00080080,  # InstitutionName
    0x00080081,  # InstitutionAddress
    0x00080082,  # InstitutionCodeSequence
    0x00081040,  # InstitutionalDepartmentName
    0x00081041,  # InstitutionalDepartmentTypeCodeSequence
    0x00120030,  # ClinicalTrialSiteID
    0x00120031,  # ClinicalTrialSiteName
    0x00120060,  # ClinicalTrialCoordinatingCenterName
    0x00120081,  # ClinicalTrialProtocolEthicsCommitteeName
})
