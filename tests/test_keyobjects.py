"""Key images as DICOM (teaching.keyobjects): KOS and GSPS built from case documents pass dciodvfy and
read back with pydicom; received key objects are read as the TCE receiver needs them."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from appliance.archive import IMAGER_PIXEL_SPACING
from appliance.teaching import keyobjects as ko
from tests import kos_synth, synth

DCIODVFY = "/usr/bin/dciodvfy"
# the only warning dciodvfy gives our GSPS: Laterality (Type 2C, paired body parts) is sent empty,
# as dciodvfy cannot tell whether the body part is paired and calls its absence an error
ALLOWED_WARNINGS = ("attribute <Laterality>",)


def verify(ds: Dataset, path: Path, also_allowed: tuple[str, ...] = ()) -> list[str]:
    """Write ``ds`` and run dciodvfy on it; its warnings (after asserting there is no error)."""
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        path.write_bytes(kos_synth.part10(ds))
    else:
        ds.save_as(path, enforce_file_format=True)
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error")]
    assert not errors, "\n".join(lines)
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    unexpected = [w for w in warnings if not any(a in w for a in ALLOWED_WARNINGS + also_allowed)]
    assert not unexpected, "\n".join(lines)
    back = pydicom.dcmread(path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    return warnings


def ct(index: int, **kw) -> Dataset:
    return kos_synth.header(synth.ct_instance(index=index, rows=64, cols=64, **kw))


def case_of(key_images: list[dict], **kw) -> dict:
    doc = {"ID": "6f1b1c1e-0000-4000-8000-000000000001", "Title": "Tension pneumothorax – ünïcode title",
           "Author": "Jane Teacher", "Updated": "2026-12-07T22:50:01Z", "KeyImages": key_images}
    doc.update(kw)
    return doc


def key(instance: str, frame: int = 1, **kw) -> dict:
    im = {"Instance": instance, "Frame": frame, "Window": None, "Zoom": None, "Caption": "", "Annotations": []}
    im.update(kw)
    return im


ANNOTATIONS = [{"Type": "arrow", "Points": [[10, 10], [30, 30]], "Text": "pleural line"},
               {"Type": "ellipse", "Points": [[40, 20], [5, 5]], "Text": "lesion"},
               {"Type": "ellipse", "Points": [[10, 5], [20, 60]], "Text": ""},
               {"Type": "text", "Points": [[50, 50]], "Text": "apex"},
               {"Type": "length", "Points": [[0, 0], [64, 0]], "Text": "", "LengthMm": 62.5}]   # as the case rules say


def test_ct_case_kos_and_gsps_pass_dciodvfy_and_say_what_the_case_says(tmp_path):
    a, b, c = ct(1), ct(2), ct(3)
    case = case_of([key("ia", Window={"Center": 50, "Width": 350}, Zoom=2, Caption="left apex",
                        Annotations=ANNOTATIONS),
                    key("ib", Annotations=[{"Type": "arrow", "Points": [[5, 5], [6, 6]], "Text": ""}]),
                    key("ic")])
    kos_list, states = ko.build_export(case, {"ia": a, "ib": b, "ic": c})
    assert len(kos_list) == 1 and len(states) == 1
    kos, ps = kos_list[0], states[0]
    verify(kos, tmp_path / "kos.dcm")
    verify(ps, tmp_path / "ps.dcm")
    kos = pydicom.dcmread(tmp_path / "kos.dcm")
    ps = pydicom.dcmread(tmp_path / "ps.dcm")

    # the KOS: For Teaching, the case's title, the same patient and study, a new series
    assert kos.SOPClassUID == ko.KOS_SOP_CLASS and kos.Modality == "KO"
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("113004", "DCM", "For Teaching")
    assert kos.ContentTemplateSequence[0].TemplateIdentifier == "2010"
    for kw in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyID"):
        assert kos[kw].value == a[kw].value
    assert kos.SeriesInstanceUID not in (a.SeriesInstanceUID, ps.SeriesInstanceUID)
    text = [i for i in kos.ContentSequence if i.ValueType == "TEXT"]
    assert text[0].ConceptNameCodeSequence[0].CodeValue == "113012"
    assert text[0].TextValue == case["Title"]
    images = [i for i in kos.ContentSequence if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [
        a.SOPInstanceUID, b.SOPInstanceUID, c.SOPInstanceUID]
    for item in images:            # every image of the series is presented by the GSPS
        ref = item.ReferencedSOPSequence[0]
        assert "ReferencedFrameNumber" not in ref            # single-frame images
        assert ref.ReferencedSOPSequence[0].ReferencedSOPClassUID == ko.GSPS_SOP_CLASS
        assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ps.SOPInstanceUID
    evidence = kos.CurrentRequestedProcedureEvidenceSequence
    assert len(evidence) == 1 and evidence[0].StudyInstanceUID == a.StudyInstanceUID
    listed = {(s.SeriesInstanceUID, r.ReferencedSOPInstanceUID) for s in evidence[0].ReferencedSeriesSequence
              for r in s.ReferencedSOPSequence}
    assert listed == {(a.SeriesInstanceUID, x.SOPInstanceUID) for x in (a, b, c)} | {
        (ps.SeriesInstanceUID, ps.SOPInstanceUID)}

    # the GSPS: same study, its images, the window, the zoom, the annotations on their image
    assert ps.Modality == "PR" and ps.StudyInstanceUID == a.StudyInstanceUID
    assert ps.PresentationLUTShape == "IDENTITY"
    assert (float(ps.RescaleIntercept), ps.RescaleType) == (-1024.0, "HU")
    refs = ps.ReferencedSeriesSequence[0].ReferencedImageSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [a.SOPInstanceUID, b.SOPInstanceUID, c.SOPInstanceUID]
    vois = {v.ReferencedImageSequence[0].ReferencedSOPInstanceUID: (float(v.WindowCenter), float(v.WindowWidth))
            for v in ps.SoftcopyVOILUTSequence}
    assert vois[a.SOPInstanceUID] == (50.0, 350.0)
    assert vois[b.SOPInstanceUID] == (40.0, 400.0)      # Window null: the image's own
    areas = {d.ReferencedImageSequence[0].ReferencedSOPInstanceUID: d for d in ps.DisplayedAreaSelectionSequence}
    assert list(areas[a.SOPInstanceUID].DisplayedAreaTopLeftHandCorner) == [17, 17]     # zoom 2: the middle half
    assert list(areas[a.SOPInstanceUID].DisplayedAreaBottomRightHandCorner) == [48, 48]
    assert list(areas[b.SOPInstanceUID].DisplayedAreaBottomRightHandCorner) == [64, 64]
    assert areas[a.SOPInstanceUID].PresentationSizeMode == "SCALE TO FIT"
    by_layer = {(g.ReferencedImageSequence[0].ReferencedSOPInstanceUID, g.GraphicLayer): g
                for g in ps.GraphicAnnotationSequence}
    assert set(by_layer) == {(a.SOPInstanceUID, "ANNOTATIONS"), (a.SOPInstanceUID, "CAPTION"),
                             (b.SOPInstanceUID, "ANNOTATIONS")}
    assert {layer.GraphicLayer for layer in ps.GraphicLayerSequence} == {"ANNOTATIONS", "CAPTION"}
    ann = by_layer[(a.SOPInstanceUID, "ANNOTATIONS")]
    graphics = [(g.GraphicType, [round(v, 3) for v in g.GraphicData]) for g in ann.GraphicObjectSequence]
    assert graphics[0] == ("POLYLINE", [10, 10, 30, 30])                   # the arrow's shaft
    assert graphics[1][0] == "POLYLINE" and graphics[1][1][2:4] == [30, 30]   # its head: wing, tip, wing
    assert graphics[2] == ("ELLIPSE", [5, 12.5, 40, 12.5, 22.5, 5, 22.5, 20])  # major axis ends first
    assert graphics[3] == ("ELLIPSE", [15, 5, 15, 60, 10, 32.5, 20, 32.5])    # a tall one: vertical major axis
    assert graphics[4] == ("POLYLINE", [0, 0, 64, 0])
    assert all(g.GraphicAnnotationUnits == "PIXEL" for g in ann.GraphicObjectSequence)
    texts = [t.UnformattedTextValue for t in ann.TextObjectSequence]
    assert texts == ["pleural line", "lesion", "apex", "62.5 mm"]          # 64 px x 0.9765625 mm
    for t in ann.TextObjectSequence:                                        # kept inside the image
        x0, y0 = t.BoundingBoxTopLeftHandCorner
        x1, y1 = t.BoundingBoxBottomRightHandCorner
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    assert list(ann.TextObjectSequence[2].AnchorPoint) == [50.0, 50.0]
    caption = by_layer[(a.SOPInstanceUID, "CAPTION")].TextObjectSequence[0]
    assert caption.UnformattedTextValue == "left apex"


def test_same_case_same_uids_and_a_changed_case_new_ones():
    a = ct(1)
    case = case_of([key("ia", Annotations=ANNOTATIONS[:1])])
    k1, p1 = ko.build_export(case, {"ia": a})
    k2, p2 = ko.build_export(dict(case), {"ia": a})
    assert (k1[0].SOPInstanceUID, p1[0].SOPInstanceUID) == (k2[0].SOPInstanceUID, p2[0].SOPInstanceUID)
    k3, p3 = ko.build_export(case_of(case["KeyImages"], Updated="2026-12-08T10:00:00Z"), {"ia": a})
    assert k3[0].SOPInstanceUID != k1[0].SOPInstanceUID and p3[0].SOPInstanceUID != p1[0].SOPInstanceUID
    # the series are the case's in the study, whatever its content: a new store replaces the old one there
    assert (k3[0].SeriesInstanceUID, p3[0].SeriesInstanceUID) == (k1[0].SeriesInstanceUID, p1[0].SeriesInstanceUID)
    k4, p4 = ko.build_export(case_of(case["KeyImages"], ID="6f1b1c1e-0000-4000-8000-000000000002"), {"ia": a})
    assert k4[0].SeriesInstanceUID != k1[0].SeriesInstanceUID and p4[0].SeriesInstanceUID != p1[0].SeriesInstanceUID
    assert k3[0].ContentDate == "20261208" and k1[0].ContentTime == "225001"


def test_multiframe_key_images_reference_their_frames(tmp_path):
    mf = kos_synth.header(kos_synth.multiframe_instance(frames=4))
    case = case_of([key("mf", frame=2, Annotations=[{"Type": "length", "Points": [[0, 0], [0, 32]], "Text": "cc",
                                                     "LengthMm": 16.0}]),
                    key("mf", frame=4, Window={"Center": 2000, "Width": 4000})])
    kos, states = ko.build_export(case, {"mf": mf})
    verify(kos[0], tmp_path / "kos.dcm")
    verify(states[0], tmp_path / "ps.dcm")
    images = [i for i in kos[0].ContentSequence if i.ValueType == "IMAGE"]
    assert [int(i.ReferencedSOPSequence[0].ReferencedFrameNumber) for i in images] == [2, 4]
    ps = states[0]
    assert list(ps.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedFrameNumber) == [2, 4]
    assert "RescaleSlope" not in ps                 # the image has no rescale: no Modality LUT
    ann = ps.GraphicAnnotationSequence[0]
    assert int(ann.ReferencedImageSequence[0].ReferencedFrameNumber) == 2
    assert ann.TextObjectSequence[0].UnformattedTextValue == "cc 16.0 mm"     # 32 px x 0.5 mm
    vois = ps.SoftcopyVOILUTSequence
    assert len(vois) == 1 and int(vois[0].ReferencedImageSequence[0].ReferencedFrameNumber) == 4


def test_several_studies_one_kos_each(tmp_path):
    a = ct(1)
    other = ct(1, study="st2", study_date="20250101")
    case = case_of([key("a", Annotations=ANNOTATIONS[:1]), key("o")])
    kos = ko.build_key_objects(case, {"a": a, "o": other})
    assert [k.StudyInstanceUID for k in kos] == [a.StudyInstanceUID, other.StudyInstanceUID]
    for n, k in enumerate(kos):
        verify(k, tmp_path / f"k{n}.dcm")
        studies = [s.StudyInstanceUID for s in k.CurrentRequestedProcedureEvidenceSequence]
        assert studies == [k.StudyInstanceUID]
    assert len({k.SOPInstanceUID for k in kos}) == 2
    with pytest.raises(ko.ExportError, match="2 studies"):
        ko.build_key_object(case, {"a": a, "o": other})
    assert ko.build_key_object(case, {"a": a, "o": other}, other.StudyInstanceUID).SOPInstanceUID == kos[1].SOPInstanceUID
    assert ko.study_of_key_images(case, {"a": a, "o": other}) == [a.StudyInstanceUID, other.StudyInstanceUID]


def test_monochrome1_without_pixel_spacing_and_a_colour_image(tmp_path):
    m1 = ct(1)
    m1.PhotometricInterpretation = "MONOCHROME1"
    del m1.PixelSpacing
    colour = kos_synth.header(synth.ct_instance(index=1, rows=16, cols=16, series="rgb"))
    colour.PhotometricInterpretation, colour.SamplesPerPixel = "RGB", 3
    case = case_of([key("m1", Annotations=[{"Type": "length", "Points": [[0, 0], [30, 40]], "Text": "",
                                            "LengthMm": None, "LengthNote": "the image has no Pixel Spacing"}]),
                    key("rgb", Annotations=ANNOTATIONS[:1])])
    kos, states = ko.build_export(case, {"m1": m1, "rgb": colour})
    assert len(states) == 1                         # a grayscale presentation state is not for a colour image
    ps = states[0]
    verify(ps, tmp_path / "ps.dcm")
    verify(kos[0], tmp_path / "kos.dcm")
    assert ps.PresentationLUTShape == "INVERSE"
    assert list(ps.DisplayedAreaSelectionSequence[0].PresentationPixelAspectRatio) == [1, 1]
    assert ps.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == "50.0 px (no Pixel Spacing)"
    images = [i for i in kos[0].ContentSequence if i.ValueType == "IMAGE"]
    assert "ReferencedSOPSequence" in images[0].ReferencedSOPSequence[0]
    assert "ReferencedSOPSequence" not in images[1].ReferencedSOPSequence[0]


def test_length_from_the_boards_value_and_a_case_without_anything_to_present():
    a = ct(1)
    case = case_of([key("a", Annotations=[{"Type": "length", "Points": [[0, 0], [10, 0]], "Text": "",
                                           "LengthMm": 12.34}])])
    ps = ko.build_presentation_states(case, {"a": a})[0]
    assert ps.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == "12.3 mm"
    assert ko.build_presentation_states(case_of([key("a")]), {"a": a}) == []
    kos = ko.build_key_object(case_of([key("a")]), {"a": a})
    assert "ReferencedSOPSequence" not in kos.ContentSequence[1].ReferencedSOPSequence[0]


def test_an_off_centre_zoom_shows_the_arrow_head_in_the_displayed_area(tmp_path):
    """Zoom 4 with Center (50, 12) of a 64-pixel image: the area x 42..58, y 4..20 (pixels 43..58,
    5..20), which holds the arrow's head at (54, 10); a centred zoom (25..40) would not. A Center
    past the edge is clamped: the area stays inside the image."""
    a = ct(1)
    arrow = [{"Type": "arrow", "Points": [[40, 20], [54, 10]], "Text": "here"}]
    [ps] = ko.build_presentation_states(case_of([key("a", Zoom=4, Center=[50, 12], Annotations=arrow)]), {"a": a})
    verify(ps, tmp_path / "ps.dcm")
    area = ps.DisplayedAreaSelectionSequence[0]
    (left, top), (right, bottom) = area.DisplayedAreaTopLeftHandCorner, area.DisplayedAreaBottomRightHandCorner
    assert (left, top, right, bottom) == (43, 5, 58, 20)
    assert left - 1 <= 54 <= right and top - 1 <= 10 <= bottom
    [ps] = ko.build_presentation_states(case_of([key("a", Zoom=4, Annotations=arrow)]), {"a": a})
    area = ps.DisplayedAreaSelectionSequence[0]
    assert list(area.DisplayedAreaTopLeftHandCorner) == [25, 25]          # no Center: the middle, as before
    [ps] = ko.build_presentation_states(case_of([key("a", Zoom=4, Center=[70, -3], Annotations=arrow)]), {"a": a})
    area = ps.DisplayedAreaSelectionSequence[0]
    assert (list(area.DisplayedAreaTopLeftHandCorner), list(area.DisplayedAreaBottomRightHandCorner)) == \
        ([49, 1], [64, 16])
    verify(ps, tmp_path / "ps-clamped.dcm")
    assert ko.view_box(64, 64, 4, [50, 12]) == (42.0, 4.0, 58.0, 20.0)
    assert ko.view_box(64, 64, 0.5, [0, 0]) == (-32.0, -32.0, 96.0, 96.0)     # wider than the frame: centred


def test_a_length_measured_with_imager_pixel_spacing_says_so_in_the_gsps(tmp_path):
    a = ct(1)
    del a.PixelSpacing
    a.ImagerPixelSpacing = [0.5, 0.25]
    line = {"Type": "length", "Points": [[0, 0], [40, 0]], "Text": "gap", "LengthMm": 10.0,
            "LengthNote": IMAGER_PIXEL_SPACING}
    [ps] = ko.build_presentation_states(case_of([key("a", Annotations=[line])]), {"a": a})
    verify(ps, tmp_path / "ps.dcm")
    assert ps.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == \
        "gap 10.0 mm at the detector (Imager Pixel Spacing)"


def test_export_errors():
    with pytest.raises(ko.ExportError, match="no key images"):
        ko.build_key_object(case_of([]), {})
    with pytest.raises(ko.ExportError, match="instance gone was not given"):
        ko.build_key_object(case_of([key("gone")]), {})


# ------------------------------------------------------------------------------ reading received KOS

def test_our_own_export_reads_back_as_made_here():
    mf = kos_synth.header(kos_synth.multiframe_instance(frames=4))
    kos = ko.build_key_object(case_of([key("mf", frame=3, Zoom=1.5)]), {"mf": mf})
    got = ko.read_key_object(kos)
    assert got.teaching and got.made_here
    assert got.description == "Tension pneumothorax – ünïcode title"
    assert [(r.sop_instance_uid, r.frames) for r in got.references] == [(mf.SOPInstanceUID, [3])]
    assert len(got.presentation_states) == 1      # not a reference of the case


@pytest.mark.parametrize("title, delay, reason", [
    (("128710", "DCM", "For Teaching File Export"), ("128715", "DCM", "Delay export until final report is available"),
     "Delay export until final report is available"),
    (("113004", "DCM", "For Teaching"), None, ""),
    (("TCE001", "IHERADTF", "For Teaching File Export"),
     ("TCE014", "IHERADTF", "Delay export until histopathology is available"),
     "Delay export until histopathology is available"),
])
def test_a_workstations_teaching_kos(tmp_path, title, delay, reason):
    a, b = ct(1), ct(2)
    ps = kos_synth.hospital_gsps(a)
    kos = kos_synth.hospital_kos(a, [(a, []), (b, [])], title=title, delay=delay,
                                 description="58 y, dyspnoea after a fall", presentation_state=ps)
    # IHE's first coding of the TCE titles is not a coding scheme dciodvfy knows
    verify(kos, tmp_path / "kos.dcm", also_allowed=("<IHERADTF>",))
    verify(ps, tmp_path / "ps.dcm")
    got = ko.read_key_object(kos)
    assert got.teaching and not got.made_here
    assert got.delay_reason == reason
    assert got.description == "58 y, dyspnoea after a fall"
    assert got.study_uid == a.StudyInstanceUID
    assert [r.sop_instance_uid for r in got.references] == [a.SOPInstanceUID, b.SOPInstanceUID]
    assert {r.series_uid for r in got.references} == {a.SeriesInstanceUID}
    assert got.presentation_states == [ps.SOPInstanceUID]


@pytest.mark.parametrize("title, teaching", [
    (("113000", "DCM", "Of Interest"), False),
    (("128711", "DCM", "For Clinical Trial Export"), False),
    (("128713", "DCM", "For Research Collection Export"), False),
    (("113001", "DCM", "Rejected for Quality Reasons"), False),
    (("128710", "DCM", "For Teaching File Export"), True),
])
def test_which_titles_teach(title, teaching):
    a = ct(1)
    got = ko.read_key_object(kos_synth.hospital_kos(a, [(a, [])], title=title))
    assert got.teaching is teaching
    assert got.title.meaning == title[2]


def test_bad_key_objects_say_why():
    a = ct(1)
    with pytest.raises(ko.KeyObjectProblem, match="references no instance"):
        ko.read_key_object(kos_synth.hospital_kos(a, []))
    with pytest.raises(ko.KeyObjectProblem, match="other studies"):
        ko.read_key_object(kos_synth.hospital_kos(a, [(a, [])], extra_evidence_study="1.2.3.4"))
    elsewhere = ct(1, study="elsewhere")
    with pytest.raises(ko.KeyObjectProblem, match="other studies"):
        ko.read_key_object(kos_synth.hospital_kos(a, [(elsewhere, [])]))
    listed_nowhere = kos_synth.hospital_kos(a, [(a, [])])
    listed_nowhere.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.3.99"
    with pytest.raises(ko.KeyObjectProblem, match="does not list"):
        ko.read_key_object(listed_nowhere)
    with pytest.raises(ko.KeyObjectProblem, match="not a Key Object"):
        ko.read_key_object(a)


def test_a_kos_whose_content_was_emptied_by_deidentification_still_names_its_images():
    a, b = ct(1), ct(2)
    kos = kos_synth.hospital_kos(a, [(a, []), (b, [])], description="identifying text",
                                 delay=("128715", "DCM", "Delay export until final report is available"))
    kos.ContentSequence = []           # what the Basic Profile's D action on (0040,A730) leaves
    got = ko.read_key_object(pydicom.dcmread(io.BytesIO(kos_synth.part10(kos))))
    assert got.teaching and got.description == "" and got.delay_reason == ""
    assert [r.sop_instance_uid for r in got.references] == [a.SOPInstanceUID, b.SOPInstanceUID]


def test_deidentified_images_give_a_deidentified_export(tmp_path):
    bare, told = ct(1), ct(2)
    for ds in (bare, told):
        ds.PatientIdentityRemoved = "YES"
    told.DeidentificationMethod = "pipacs - PS 3.15 Basic Profile"
    kos = ko.build_key_object(case_of([key("a", Annotations=ANNOTATIONS[:1])]), {"a": bare})
    verify(kos, tmp_path / "bare.dcm")      # Type 1C: a method when PatientIdentityRemoved is YES
    assert (kos.PatientIdentityRemoved, kos.DeidentificationMethod) == ("YES", "not stated by the referenced images")
    ps = ko.build_presentation_states(case_of([key("t", Annotations=ANNOTATIONS[:1])]), {"t": told})[0]
    verify(ps, tmp_path / "told.dcm")
    assert ps.DeidentificationMethod == "pipacs - PS 3.15 Basic Profile"


def test_user_text_that_no_dicom_value_may_hold_is_cleaned(tmp_path):
    hostile = "back\\slash\x01 bell\x07 <img src=x onerror=alert(1)>\nsecond line " + "é" * 2000
    a = ct(1)
    case = case_of([key("a", Caption=hostile[:1000], Annotations=[
        {"Type": "text", "Points": [[1, 1]], "Text": hostile[:1000]},
        {"Type": "length", "Points": [[0, 0], [5, 5]], "Text": hostile[:1000]}])], Title=hostile, Author=hostile)
    kos, states = ko.build_export(case, {"a": a})
    verify(kos[0], tmp_path / "kos.dcm")
    verify(states[0], tmp_path / "ps.dcm")
    ps = pydicom.dcmread(tmp_path / "ps.dcm")
    # LO: one line, no backslash, 64 bytes (dciodvfy counts UTF-8 bytes), not cut inside a character
    assert ps.ContentDescription == "back/slash bell <img src=x onerror=alert(1)> second line ééé"
    texts = [t.UnformattedTextValue for g in ps.GraphicAnnotationSequence for t in g.TextObjectSequence]
    assert all("\x01" not in t and "\x07" not in t and len(t.encode()) <= 1024 for t in texts)
    assert texts[0].startswith("back\\slash bell <img")                 # ST keeps a backslash
    assert pydicom.dcmread(tmp_path / "kos.dcm").ContentSequence[0].TextValue == hostile.replace(
        "\x01", "").replace("\x07", "")


def test_a_key_instance_that_is_not_an_image_is_a_composite_reference(tmp_path):
    a = ct(1)
    pdf = Dataset()
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(pdf, kw, a.get(kw))
    pdf.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"      # Encapsulated PDF: no Rows, no Columns
    pdf.SOPInstanceUID, pdf.SeriesInstanceUID = synth.uid("pdf/1"), synth.uid("pdf")
    kos = ko.build_key_object(case_of([key("a"), key("pdf")]), {"a": a, "pdf": pdf})
    verify(kos, tmp_path / "kos.dcm")
    assert [i.ValueType for i in kos.ContentSequence] == ["TEXT", "IMAGE", "COMPOSITE"]
    assert [r.sop_instance_uid for r in ko.read_key_object(kos).references] == [a.SOPInstanceUID, pdf.SOPInstanceUID]


def test_two_series_of_one_study_two_presentation_states_in_one_series(tmp_path):
    a, b = ct(1), ct(1, series="se2")
    case = case_of([key("a", Zoom=3), key("b", Window={"Center": 0, "Width": 2000})])
    [kos], states = ko.build_export(case, {"a": a, "b": b})
    assert len(states) == 2 and len({s.SeriesInstanceUID for s in states}) == 1
    assert [int(s.InstanceNumber) for s in states] == [1, 2]
    for n, s in enumerate(states):
        verify(s, tmp_path / f"ps{n}.dcm")
    verify(kos, tmp_path / "kos.dcm")
    shown_by = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID:
                i.ReferencedSOPSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                for i in kos.ContentSequence if i.ValueType == "IMAGE"}
    assert shown_by == {a.SOPInstanceUID: states[0].SOPInstanceUID, b.SOPInstanceUID: states[1].SOPInstanceUID}
    assert [s.ReferencedSeriesSequence[0].SeriesInstanceUID for s in states] == [a.SeriesInstanceUID,
                                                                                 b.SeriesInstanceUID]


def test_odd_key_objects_are_read_without_failing():
    a, b = ct(1), ct(2)
    kos = kos_synth.hospital_kos(a, [(a, [2]), (b, [])])
    ref = kos.ContentSequence[0].ReferencedSOPSequence[0]
    ref.add_new(0x00081160, "IS", None)                  # an empty frame list: the whole instance
    kos.ContentSequence.append(Dataset())                # an item without a Value Type
    odd = Dataset()
    odd.ValueType = "IMAGE"                              # an image item that references nothing
    kos.ContentSequence.append(odd)
    empty_study = Dataset()                              # an evidence item without series
    empty_study.StudyInstanceUID = a.StudyInstanceUID
    kos.CurrentRequestedProcedureEvidenceSequence.append(empty_study)
    del kos.ConceptNameCodeSequence                      # no title at all: not a teaching one
    got = ko.read_key_object(pydicom.dcmread(io.BytesIO(kos_synth.part10(kos))))
    assert not got.teaching and got.title == ko.Code("", "", "")
    assert [(r.sop_instance_uid, r.frames) for r in got.references] == [(a.SOPInstanceUID, []),
                                                                        (b.SOPInstanceUID, [])]
    assert ko._int_list(["0", "-1", "x", "3"]) == [3]
