"""The differential test: the same requests to pipacs and to a real Orthanc (with its DICOMweb
plugin) holding the same files; every difference must be accepted, with its reason, in
tests/orthanc_differences.json (see tests/differential.py). ``make test`` runs the quick subset;
the whole corpus is marked slow (.ci/run runs it)."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from . import differential as diff
from .helpers import REPO, TEST_FILES, Server, have_orthanc
from .orthanc import Orthanc
from .synth import ct_instance

pytestmark = [pytest.mark.orthanc, pytest.mark.xdist_group("orthanc-differential"),
              pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed (Debian package orthanc)")]

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

# pydicom's odd files beside ordinary ones: other transfer syntaxes, multi-frame, sequences,
# character sets, big endian, private tags
FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "rtdose.dcm", "JPEG2000.dcm",
         "SC_rgb_rle.dcm", "examples_ybr_color.dcm", "liver_1frame.dcm", "emri_small.dcm",
         "MR_small_bigendian.dcm", "chr_japanese.dcm", "chr_arab.dcm", "nested_priv_SQ.dcm",
         "image_dfl.dcm", "JPEG-LL.dcm", "MR2_J2KI.dcm", "gdcm-US-ALOKA-16.dcm"]


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
                                      "sop_uid": ct.SOPInstanceUID, "name": "RemoteAET", "label": "teaching"})
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


MODALITY_QUERIES = {
    "patient": {"Level": "Patient", "Query": {"PatientName": "", "PatientBirthDate": ""}},
    "study-numeric-keys": {"Level": "Study", "Query": {"NumberOfStudyRelatedInstances": "", "SeriesNumber": "1"}},
    "study-not-normalized": {"Level": "Study", "Query": {"SeriesNumber": "", "StudyDate": ""}, "Normalize": False},
    "study-by-tag": {"Level": "Study", "Query": {"0010,0020": "", "StudyDate": "", "ModalitiesInStudy": ""}},
    "series": {"Level": "Series", "Query": {"Modality": "", "SeriesNumber": ""}},
    "instance": {"Level": "Instance", "Query": {"InstanceNumber": ""}},
}


@pytest.mark.parametrize("name", sorted(MODALITY_QUERIES))
def test_modality_query_answers_as_orthanc(pair, name):
    """POST /modalities/{id}/query from both servers to the same peer (pipacs's own DICOM port):
    what each asks (seen in the answers: default keys, normalisation) and how /queries/{id}
    shows the query and its answers."""
    ours, ref, _ = pair
    peer = json.dumps({"AET": "PIPACS", "Host": "127.0.0.1", "Port": ours.dicom_port})
    qids = []
    for server in (ours, ref):
        assert server.request("PUT", "/modalities/peer", peer).status == 200
        try:   # the corpus's /modalities answers stay what they were
            r = server.post("/modalities/peer/query", json.dumps(MODALITY_QUERIES[name]))
        finally:
            server.delete("/modalities/peer")
        assert r.status == 200, r.body
        qids.append(r.json()["ID"])
    found = []
    for sub in ("answers", "answers?expand", "answers?expand&simplify", "answers?expand&short",
                "answers/0/content?simplify", "query", "query?simplify", "level", "modality", ""):
        a, r = (s.get(f"/queries/{q}/{sub}") for s, q in zip((ours, ref), qids))
        assert a.status == r.status == 200, (sub, a.body[:300], r.body[:300])
        case = f"DICOM modality query {name} /{sub}"
        if sub in ("level", "modality"):
            found += diff.compare_json(case, a.body.decode(), r.body.decode())
            continue
        theirs = r.json()
        if _drop_meta(theirs):   # before the items are matched: the extra key would misalign them
            found.append(diff.Difference(case, "json-missing-key", "MediaStorageSOPInstanceUID"))
        found += diff.compare_json(case, a.json(), theirs)
    left = diff.unaccepted(found, diff.load_accepted())
    assert not left, "\n".join(map(str, left))


def _drop_meta(v) -> bool:
    """Take (0002,0003) out of Orthanc's query answers (at the instance level, its answers carry
    it, from the file it makes of each answer); True when there was one."""
    dropped = False
    if isinstance(v, list):
        for x in v:
            dropped |= _drop_meta(x)
    elif isinstance(v, dict):
        for k in ("0002,0003", "MediaStorageSOPInstanceUID"):
            dropped |= v.pop(k, None) is not None
    return dropped
