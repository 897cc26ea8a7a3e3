"""The differential test: the same requests to pipacs and to a real Orthanc (with its DICOMweb
plugin) holding the same files; every difference must be accepted, with its reason, in
tests/orthanc_differences.json (see tests/differential.py). ``make test`` runs the quick subset;
the whole corpus is marked slow (.ci/run runs it)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from . import differential as diff
from .helpers import REPO, TEST_FILES, Server, have_orthanc
from .orthanc import Orthanc
from .synth import ct_instance, dcmtk_made_files, variant

pytestmark = [pytest.mark.orthanc, pytest.mark.xdist_group("orthanc-differential"),
              pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed (Debian package orthanc)")]

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

# pydicom's odd files beside ordinary ones: other transfer syntaxes, multi-frame, sequences,
# character sets, big endian, private tags, waveforms, overlays, palettes, structured reports, files
# without a file meta group or without identifiers (both servers must refuse those), and a file whose
# pixel representation disagrees with its JPEG 2000 stream. (Files pydicom fetches from the network are
# absent offline and skipped.)
FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "rtdose.dcm", "JPEG2000.dcm",
         "SC_rgb_rle.dcm", "examples_ybr_color.dcm", "liver_1frame.dcm", "emri_small.dcm",
         "MR_small_bigendian.dcm", "chr_japanese.dcm", "chr_arab.dcm", "nested_priv_SQ.dcm",
         "image_dfl.dcm", "JPEG-LL.dcm", "MR2_J2KI.dcm", "gdcm-US-ALOKA-16.dcm",
         "waveform_ecg.dcm", "examples_overlay.dcm", "examples_palette.dcm", "test-SR.dcm",
         "reportsi_with_empty_number_tags.dcm", "J2K_pixelrep_mismatch.dcm", "SC_rgb_small_odd.dcm",
         "JPEGLSNearLossless_16.dcm", "ExplVR_BigEndNoMeta.dcm", "no_meta.dcm", "UN_sequence.dcm",
         "priv_SQ.dcm", "empty_charset_LEI.dcm", "meta_missing_tsyntax.dcm"]


# files made from those above for the tag routes and rendering: person names ending in empty component
# groups, and images without the attributes whose defaults Orthanc assumes (or refuses without)
ODD = {"pn-trailing": ("CT_small.dcm", (), b"Yamada^Tarou="), "pn-two-empty": ("CT_small.dcm", (), b"A^B=="),
       "no-pixrep": ("CT_small.dcm", ("PixelRepresentation",), None),
       "no-spp": ("CT_small.dcm", ("SamplesPerPixel",), None),
       "no-photometric": ("CT_small.dcm", ("PhotometricInterpretation",), None),
       "rgb-no-spp": ("SC_rgb_rle.dcm", ("SamplesPerPixel",), None),
       "mr-no-pixrep": ("MR_small.dcm", ("PixelRepresentation",), None)}


def _odd_ids(ref, odd: dict[str, bytes]) -> dict[str, str]:
    """Orthanc's IDs of the odd files and of a few others the tag routes read (the same in pipacs)."""
    def instance(data: bytes) -> str:
        return ref.post("/tools/lookup", pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID).json()[0]["ID"]

    out = {name: instance(data) for name, data in odd.items()}
    for name, file in (("encapsulated", "JPEG2000.dcm"), ("long-value", "SC_rgb_rle.dcm")):
        if (TEST_FILES / file).exists():
            out[name] = instance((TEST_FILES / file).read_bytes())
            out[f"{name}-series"] = ref.get_json(f"/instances/{out[name]}")["ParentSeries"]
    syn = ref.post("/tools/lookup", "SYN").json()[0]["ID"]
    out["syn-patient"] = syn
    out["syn-study"] = ref.get_json(f"/patients/{syn}")["Studies"][0]
    out["syn-series"] = ref.get_json(f"/studies/{out['syn-study']}")["Series"][0]
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("differential")
    aet_of_us = {"DicomModalities": {"diff": ["DIFF", "127.0.0.1", 11112]}}
    ours = Server(base / "pipacs", aet_of_us)
    ref = None
    try:
        ours.start()
        config = dict(aet_of_us)
        if DICOMWEB_PLUGIN.exists():
            config |= {"Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/",
                                                                     "EnableWado": True, "WadoRoot": "/wado"}}
        ref = Orthanc(base / "orthanc", config).start()
        blobs = [(TEST_FILES / n).read_bytes() for n in FILES if (TEST_FILES / n).exists()]
        blobs += [ct_instance(rows=16, cols=16, index=k, patient_id="SYN", patient_name="Synth^Case") for k in (1, 2, 3)]
        if Path("/usr/bin/dump2dcm").exists():   # DCMTK's own files (Debian dcmtk, installed by .ci/run)
            blobs += dcmtk_made_files(base / "dcmtk", TEST_FILES / "CT_small.dcm")
        odd = {name: variant((TEST_FILES / src).read_bytes(), name, drop, pn) for name, (src, drop, pn) in ODD.items()}
        blobs += list(odd.values())
        for b in blobs:
            a, r = ours.post("/instances", b), ref.post("/instances", b)
            # both store it, or both refuse it (a file without an identifier: their words differ)
            assert a.status == r.status or min(a.status, r.status) >= 400, (a.body[:300], r.body[:300])
        ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
        found = ref.post("/tools/lookup", ct.SOPInstanceUID).json()[0]
        inst = ref.get_json(f"/instances/{found['ID']}")
        series = ref.get_json(f"/series/{inst['ParentSeries']}")
        study = ref.get_json(f"/studies/{series['ParentStudy']}")
        ids = diff.Identifiers(patient=study["ParentPatient"], study=study["ID"], series=series["ID"],
                               instance=inst["ID"],
                               extra={"study_uid": ct.StudyInstanceUID, "series_uid": ct.SeriesInstanceUID,
                                      "sop_uid": ct.SOPInstanceUID, "name": "RemoteAET", "label": "teaching",
                                      "modality": "diff"})
        ids.extra.update(_odd_ids(ref, odd))
        yield ours, ref, ids
    finally:   # a failed load must not leave the two servers running
        ours.stop()
        if ref is not None:
            ref.stop()


def _private_names(pair) -> frozenset[str]:
    """Names each server gives the private tags of the instance the corpus reads (from each toolkit's
    own private dictionary: DCMTK's and pydicom's differ), left out of simplified answers."""
    ours, ref, ids = pair
    names = set()
    for server in (ours, ref):
        for tag, v in server.get_json(f"/instances/{ids.instance}/tags").items():
            if int(tag[:4], 16) % 2:
                names.add(v["Name"])
    return frozenset(names)


def _differences(pair, cases: list[diff.Case]) -> list[diff.Difference]:
    ours, ref, _ = pair
    private = _private_names(pair)
    found = []
    for case in cases:
        ignored = private if "simplif" in case.path else frozenset()
        found += diff.compare(case, diff.send(ours.http_port, case), diff.send(ref.http_port, case), ignored)
    return found


def _cases(pair) -> list[diff.Case]:
    return diff.corpus(diff.orthanc_openapi(), pair[2])


def _report(cases: list[diff.Case], found: list[diff.Difference], left: list[diff.Difference], name: str) -> str:
    """What a run compared, for the artifacts and the closing note."""
    differing = {d.case for d in found}
    kinds: dict[str, int] = {}
    for d in found:
        kinds[d.kind] = kinds.get(d.kind, 0) + 1
    lines = [(f"{len(cases)} requests compared, {len({c.name for c in cases} - differing)} names equal, "
             f"{len(differing)} names with differences ({len(found)} differences; {len(left)} not accepted)"),
             "by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))]
    lines += ["NOT ACCEPTED: " + str(d) for d in left]
    lines += ["accepted: " + str(d) for d in found if d not in left]
    text = "\n".join(lines) + "\n"
    out = REPO / "tests" / "artifacts"
    out.mkdir(exist_ok=True)
    (out / f"differential-{name}.txt").write_text(text)
    return text


def test_quick_subset_differs_only_as_accepted(pair):
    cases = [c for c in _cases(pair) if c.quick]
    assert len(cases) >= 30
    found = _differences(pair, cases)
    left = diff.unaccepted(found, diff.load_accepted())
    assert not left, _report(cases, found, left, "quick")


@pytest.mark.slow
def test_whole_corpus_differs_only_as_accepted(pair):
    cases = _cases(pair)
    found = _differences(pair, cases)
    accepted = diff.load_accepted()
    left = diff.unaccepted(found, accepted)
    report = _report(cases, found, left, "full")
    assert not left, report
    stale = [a.match for a in accepted if a.used == 0 and not a.match.startswith("DICOM ")]
    assert not stale, f"accepted differences that no longer occur (remove them): {stale}"


@pytest.mark.parametrize("name", ["no-pixrep", "no-spp", "mr-no-pixrep"])
def test_defaults_for_absent_pixel_attributes_give_orthancs_pixels(pair, name):
    """A file without PixelRepresentation or SamplesPerPixel: the same stored values as Orthanc's
    (/image-uint16, pixel for pixel) and its preview within one grey level."""
    ours, ref, ids = pair
    iid = ids.extra[name]
    for route, tolerance in (("image-uint16", 0), ("preview", 1)):
        a, r = ours.get(f"/instances/{iid}/{route}"), ref.get(f"/instances/{iid}/{route}")
        assert a.status == r.status == 200, (route, a.status, r.status)
        x, y = (np.asarray(Image.open(io.BytesIO(b.body))).astype(np.int64) for b in (a, r))
        assert x.shape == y.shape and int(np.abs(x - y).max()) <= tolerance, route


def _cfind(port: int, aet: str, model, ident: Dataset) -> list[dict[str, str]]:
    ae = AE(ae_title="DIFF")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established
    try:
        out = []
        for status, answer in assoc.send_c_find(ident, model):
            if status and status.Status in (0xFF00, 0xFF01) and answer is not None:
                out.append({str(e.tag): str(e.value) for e in answer if e.tag not in (0x00080054, 0x00080056)})
        return out
    finally:
        assoc.release()


CFINDS = {
    "patient": (PatientRootQueryRetrieveInformationModelFind,
                {"QueryRetrieveLevel": "PATIENT", "PatientID": "", "PatientName": "", "PatientBirthDate": ""}),
    "study": (StudyRootQueryRetrieveInformationModelFind,
              {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientID": "", "StudyDate": "",
               "StudyDescription": "", "ModalitiesInStudy": "", "NumberOfStudyRelatedInstances": ""}),
    "study-by-name": (StudyRootQueryRetrieveInformationModelFind,
                      {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientName": "*c*"}),
    "series": (StudyRootQueryRetrieveInformationModelFind,
               {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "", "StudyInstanceUID": "", "Modality": "",
                "SeriesNumber": "", "NumberOfSeriesRelatedInstances": ""}),
    "instance": (StudyRootQueryRetrieveInformationModelFind,
                 {"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": "", "SeriesInstanceUID": "",
                  "StudyInstanceUID": "", "InstanceNumber": "", "SOPClassUID": ""}),
}


@pytest.mark.parametrize("name", sorted(CFINDS))
def test_cfind_answers_tag_by_tag(pair, name):
    """C-FIND at every level through pynetdicom: the same answers, tag by tag."""
    ours, ref, _ = pair
    model, keys = CFINDS[name]
    ident = Dataset()
    for k, v in keys.items():
        setattr(ident, k, v)
    a = _cfind(ours.dicom_port, "PIPACS", model, ident)
    r = _cfind(ref.dicom_port, "ORTHANC", model, ident)
    found = diff.compare_json(f"DICOM C-FIND {name}", a, r)
    left = diff.unaccepted(found, diff.load_accepted())
    assert not left, "\n".join(map(str, left))


def test_readme_section_is_made_from_the_accepted_list():
    readme = (REPO / "README.md").read_text()
    section = diff.readme_section(diff.load_accepted())
    assert section in readme, ("README.md's 'Differences from Orthanc' section differs from "
                               "`python -m tests.differential --readme`")


def test_accepted_list_is_well_formed():
    doc = json.loads(diff.ACCEPTED_FILE.read_text())
    for e in doc["differences"]:
        assert set(e) == {"match", "kind", "reason"}, e
        assert e["kind"] in diff.KIND_TITLES, e
        assert len(e["reason"]) >= 10, e
