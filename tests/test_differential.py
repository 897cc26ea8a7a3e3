"""The differential test: the same requests to pipacs and to a real Orthanc (with its DICOMweb
plugin) holding the same files; every difference must be accepted, with its reason, in
tests/orthanc_differences.json (see tests/differential.py). ``make test`` runs the quick subset;
the whole corpus is marked slow (.ci/run runs it)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from . import differential as diff
from .helpers import REPO, TEST_FILES, Server, dcmtk, free_port, have_orthanc
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
def receiver():
    """The C-MOVE destination both servers know as DEST."""
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, receiver):
    base = tmp_path_factory.mktemp("differential")
    aet_of_us = {"DicomModalities": {"diff": ["DIFF", "127.0.0.1", 11112],
                                     "dest": [Receiver.AET, "127.0.0.1", receiver.port]}}
    # Orthanc's rules for who may do what over DICOM (not the classroom's: a C-MOVE to an AE
    # title nobody registered goes back to the requesting device there); C-FIND from any AE title,
    # because test_modality_query_answers_as_orthanc has both servers query pipacs as themselves
    ours = Server(base / "pipacs", aet_of_us | {"ClassroomMode": False, "DicomAlwaysAllowFind": True})
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


# ------------------------------------------------------------------ DICOM: C-FIND, C-MOVE, C-GET
#
# The same identifier to both listeners, through pynetdicom and through DCMTK; the answers as
# {"status": ..., "answers": [{tag: value}]} (C-FIND) or {"pending": n, "final": {...}, "files":
# {SOP Instance UID: {tag: value}}} (C-MOVE, C-GET), compared by compare_json; the differences are
# named "DICOM C-FIND <case> [<tool>] :: ..." in the accepted list.

class Receiver:
    """A storage SCP on a free loopback port; what arrives is kept by the sender's AE title."""
    AET = "DEST"

    def __init__(self) -> None:
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.files: dict[str, dict[str, Dataset]] = {}
        ae = AE(ae_title=self.AET)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> int:
        ds = event.dataset
        self.files.setdefault(event.assoc.requestor.ae_title.strip(), {})[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    def take(self, sender_aet: str) -> dict[str, Dataset]:
        return self.files.pop(sender_aet, {})

    def stop(self) -> None:
        self.server.shutdown()


def _identifier(keys: dict[str, Any]) -> Dataset:
    ident = Dataset()
    for k, v in keys.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):     # a sequence key with one item
            item = Dataset()
            for kk, vv in v[0].items():
                setattr(item, kk, vv)
            v = [item]
        setattr(ident, k, v)
    return ident


def _values(ds: Dataset) -> dict[str, Any]:
    """A dataset tag by tag: text as its value's string, sequences item by item, bytes by digest."""
    out: dict[str, Any] = {}
    for e in ds:
        if e.tag.group in (0x0000, 0x0002):
            continue
        if e.VR == "SQ":
            out[str(e.tag)] = [_values(item) for item in e.value]
        elif isinstance(e.value, (bytes, bytearray)):
            out[str(e.tag)] = f"{len(e.value)} bytes {hashlib.sha256(e.value).hexdigest()[:12]}"
        else:
            out[str(e.tag)] = str(e.value)
    return out


def _status_of(st: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {"Status": f"0x{int(st.Status):04X}"}
    for k in ("NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations", "NumberOfFailedSuboperations",
              "NumberOfWarningSuboperations", "ErrorComment"):
        if st.get(k) is not None:
            out[k] = st.get(k) if k == "ErrorComment" else int(st.get(k))
    return out


def _associate(port: int, aet: str, contexts: list, **kw):
    ae = AE(ae_title="DIFF")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    for cx in contexts:
        ae.add_requested_context(cx)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet, **kw)
    assert assoc.is_established
    return assoc


def _cfind_pynetdicom(port: int, aet: str, model, keys: dict[str, Any]) -> dict[str, Any]:
    assoc = _associate(port, aet, [model])
    try:
        answers, final = [], {}
        for status, answer in assoc.send_c_find(_identifier(keys), model):
            assert status, "no answer"
            if status.Status in (0xFF00, 0xFF01):
                answers.append(_values(answer))
            else:
                final = _status_of(status)
        return {"status": final, "answers": answers}
    finally:
        assoc.release()


def _dimse_messages(log: str) -> list[dict[str, str]]:
    """The incoming DIMSE messages DCMTK's tools print with -d, field by field."""
    out, current = [], None
    for line in log.splitlines():
        body = line[3:] if line.startswith(("D: ", "I: ")) else line
        if "INCOMING DIMSE MESSAGE" in body:
            current = {}
        elif "END DIMSE MESSAGE" in body and current is not None:
            out.append(current)
            current = None
        elif current is not None and ":" in body:
            k, _, v = body.partition(":")
            current[k.strip()] = v.strip()
        elif "ErrorComment" in body and out:
            out[-1]["ErrorComment"] = body.split("[", 1)[1].rsplit("]", 1)[0].strip()
    return out


def _dcmtk_status(msg: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"Status": "0x" + msg.get("DIMSE Status", "?").split(":")[0][2:].upper()}
    for field, key in (("Remaining Suboperations", "NumberOfRemainingSuboperations"),
                       ("Completed Suboperations", "NumberOfCompletedSuboperations"),
                       ("Failed Suboperations", "NumberOfFailedSuboperations"),
                       ("Warning Suboperations", "NumberOfWarningSuboperations")):
        if msg.get(field, "none") != "none":
            out[key] = int(msg[field])
    if "ErrorComment" in msg:
        out["ErrorComment"] = msg["ErrorComment"]
    return out


def _dcmtk_keys(keys: dict[str, Any]) -> list[str]:
    """findscu's -k options, tags by number (DCMTK's dictionary lacks some retired keywords)."""
    from pydicom.datadict import tag_for_keyword

    args = []
    for k, v in keys.items():
        t = tag_for_keyword(k)
        tag = f"{t >> 16:04X},{t & 0xFFFF:04X}"
        text = "\\".join(v) if isinstance(v, list) else str(v)
        args += ["-k", f"{tag}={text}" if text else tag]
    return args


def _cfind_dcmtk(port: int, aet: str, model, keys: dict[str, Any], workdir: Path) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(dir=workdir))
    root = "-P" if model == PatientRootQueryRetrieveInformationModelFind else "-S"
    r = subprocess.run([dcmtk("findscu"), "-d", root, "-aet", "DIFF", "-aec", aet, *_dcmtk_keys(keys), "-X",
                        "-od", str(out), "127.0.0.1", str(port)], capture_output=True, timeout=60)
    messages = [m for m in _dimse_messages(r.stdout.decode("latin-1") + r.stderr.decode("latin-1"))
                if m.get("Message Type") == "C-FIND RSP"]
    answers = [_values(pydicom.dcmread(p)) for p in sorted(out.glob("rsp*.dcm"))]
    return {"status": _dcmtk_status(messages[-1]) if messages else {}, "answers": answers}


# name: (model, identifier); the quick subset (make test) sends QUICK_FIND
FINDS: dict[str, tuple[Any, dict[str, Any]]] = {
    "study": (StudyRootQueryRetrieveInformationModelFind,
              {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientID": "", "StudyDate": "",
               "StudyDescription": "", "ModalitiesInStudy": "", "NumberOfStudyRelatedInstances": ""}),
    "patient": (PatientRootQueryRetrieveInformationModelFind,
                {"QueryRetrieveLevel": "PATIENT", "PatientID": "", "PatientName": "", "PatientBirthDate": "",
                 "NumberOfPatientRelatedStudies": "", "NumberOfPatientRelatedInstances": ""}),
    "patient-root-study": (PatientRootQueryRetrieveInformationModelFind,
                           {"QueryRetrieveLevel": "STUDY", "PatientID": "1CT1", "StudyInstanceUID": "",
                            "AccessionNumber": ""}),
    "patient-root-series": (PatientRootQueryRetrieveInformationModelFind,
                            {"QueryRetrieveLevel": "SERIES", "PatientID": "SYN", "SeriesInstanceUID": "",
                             "Modality": ""}),
    "patient-root-image": (PatientRootQueryRetrieveInformationModelFind,
                           {"QueryRetrieveLevel": "IMAGE", "PatientID": "SYN", "SOPInstanceUID": "",
                            "InstanceNumber": ""}),
    "universal": (StudyRootQueryRetrieveInformationModelFind, {"QueryRetrieveLevel": "STUDY"}),
    "study-by-name": (StudyRootQueryRetrieveInformationModelFind,
                      {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientName": "*c*"}),
    "name-question-mark": (StudyRootQueryRetrieveInformationModelFind,
                           {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientName": "?LA"}),
    "star-on-empty-or-absent": (StudyRootQueryRetrieveInformationModelFind,
                                {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "StudyDescription": "*"}),
    "star-series": (StudyRootQueryRetrieveInformationModelFind,
                    {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "", "SeriesDescription": "*",
                     "BodyPartExamined": ""}),
    "star-and-other-key": (StudyRootQueryRetrieveInformationModelFind,
                           {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "", "SeriesDescription": "*",
                            "Modality": "CT"}),
    "star-on-date": (StudyRootQueryRetrieveInformationModelFind,
                     {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "StudyDate": "*"}),
    "date-range": (StudyRootQueryRetrieveInformationModelFind,
                   {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "StudyDate": "20030101-20041231"}),
    "date-range-open-start": (StudyRootQueryRetrieveInformationModelFind,
                              {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "StudyDate": "-20040101"}),
    "date-range-open-end": (StudyRootQueryRetrieveInformationModelFind,
                            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "StudyDate": "20040101-"}),
    "uid-list": (StudyRootQueryRetrieveInformationModelFind,
                 {"QueryRetrieveLevel": "STUDY", "PatientID": "",
                  "StudyInstanceUID": ["1.2.999.999.99.9.9999.8888", "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
                                       "1.2.3.4"]}),
    "modality-list": (StudyRootQueryRetrieveInformationModelFind,
                      {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "", "Modality": ["CT", "MR"]}),
    "modalities-in-study": (StudyRootQueryRetrieveInformationModelFind,
                            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "ModalitiesInStudy": "MR"}),
    "series": (StudyRootQueryRetrieveInformationModelFind,
               {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "", "StudyInstanceUID": "", "Modality": "",
                "SeriesNumber": "", "NumberOfSeriesRelatedInstances": ""}),
    "instance": (StudyRootQueryRetrieveInformationModelFind,
                 {"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": "", "SeriesInstanceUID": "",
                  "StudyInstanceUID": "", "InstanceNumber": "", "SOPClassUID": ""}),
    "instance-file-keys": (StudyRootQueryRetrieveInformationModelFind,
                           {"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": "", "Rows": "", "Columns": "",
                            "ImageType": "", "NumberOfFrames": ""}),
    "empty-return-keys": (StudyRootQueryRetrieveInformationModelFind,
                          {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientAge": "",
                           "OtherPatientIDs": "", "InstitutionName": "", "StudyComments": ""}),
    "sequence-keys": (StudyRootQueryRetrieveInformationModelFind,
                      {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "ReferencedStudySequence": [],
                       "ProcedureCodeSequence": []}),
    "charset-utf8": (StudyRootQueryRetrieveInformationModelFind,
                     {"SpecificCharacterSet": "ISO_IR 192", "QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "",
                      "PatientName": ""}),
    "charset-latin1": (StudyRootQueryRetrieveInformationModelFind,
                       {"SpecificCharacterSet": "ISO_IR 100", "QueryRetrieveLevel": "STUDY",
                        "StudyInstanceUID": "", "PatientName": ""}),
    "level-lower-case": (StudyRootQueryRetrieveInformationModelFind,
                         {"QueryRetrieveLevel": "study", "StudyInstanceUID": ""}),
    "level-trailing-space": (StudyRootQueryRetrieveInformationModelFind,
                             {"QueryRetrieveLevel": "SERIES ", "SeriesInstanceUID": ""}),
    "level-instance": (StudyRootQueryRetrieveInformationModelFind,
                       {"QueryRetrieveLevel": "INSTANCE", "SOPInstanceUID": ""}),
    "level-unknown": (StudyRootQueryRetrieveInformationModelFind,
                      {"QueryRetrieveLevel": "GALAXY", "StudyInstanceUID": ""}),
    "study-root-patient-level": (StudyRootQueryRetrieveInformationModelFind,
                                 {"QueryRetrieveLevel": "PATIENT", "PatientID": ""}),
}
QUICK_FIND = ("study", "findscu")


def _own_aet_unnamed(result: dict[str, Any], aet: str) -> dict[str, Any]:
    """Retrieve AE Title (0008,0054) written ``{aet}`` where it is the answering server's own."""
    for answer in result.get("answers", []):
        if answer.get("(0008,0054)") == aet:
            answer["(0008,0054)"] = "{aet}"
    return result


# the accepted "DICOM ..." entries each DICOM case used, for the check that none is stale
_DICOM_USED: dict[str, set[str]] = {}
_MODALITY_QUERY_USED: dict[str, set[str]] = {}


def _compare_dicom(name: str, ours: Any, theirs: Any) -> None:
    if "answers" in ours:
        ours, theirs = _own_aet_unnamed(ours, "PIPACS"), _own_aet_unnamed(theirs, "ORTHANC")
    found = diff.compare_json(f"DICOM {name}", ours, theirs)
    accepted = diff.load_accepted()
    left = diff.unaccepted(found, accepted)
    _DICOM_USED[name] = {a.match for a in accepted if a.used}
    assert not left, "\n".join(map(str, left))


def _dicom_params(table: dict[str, Any], tools: tuple[str, str], quick: tuple[str, str]) -> list:
    """(name, tool) parameters: every case through both tools, the ``quick`` one alone unmarked slow."""
    return [pytest.param(n, t, id=f"{n}-{t}", marks=() if (n, t) == quick else pytest.mark.slow)
            for n in table for t in tools]


@pytest.mark.parametrize(("name", "tool"), _dicom_params(FINDS, ("pynetdicom", "findscu"), QUICK_FIND))
def test_cfind_answers_tag_by_tag(pair, name, tool, tmp_path):
    """C-FIND at every level, both models, through pynetdicom and DCMTK's findscu: the same final
    status and the same answers, tag by tag."""
    ours, ref, _ = pair
    model, keys = FINDS[name]
    if tool == "pynetdicom":
        a = _cfind_pynetdicom(ours.dicom_port, "PIPACS", model, keys)
        r = _cfind_pynetdicom(ref.dicom_port, "ORTHANC", model, keys)
    else:
        a = _cfind_dcmtk(ours.dicom_port, "PIPACS", model, keys, tmp_path)
        r = _cfind_dcmtk(ref.dicom_port, "ORTHANC", model, keys, tmp_path)
    assert r["status"], "Orthanc gave no final status"
    _compare_dicom(f"C-FIND {name} [{tool}]", a, r)


CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
MR_SERIES = "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457"
CT_INSTANCE = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"

# name: (patient root?, identifier, destination); the quick subset sends QUICK_MOVE
RETRIEVES: dict[str, tuple[bool, dict[str, Any], str]] = {
    "study": (False, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": CT_STUDY}, Receiver.AET),
    "patient": (True, {"QueryRetrieveLevel": "PATIENT", "PatientID": "SYN"}, Receiver.AET),
    "series-list": (False, {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": [CT_SERIES, MR_SERIES]},
                    Receiver.AET),
    "instance": (False, {"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": CT_INSTANCE}, Receiver.AET),
    "level-lower-case": (False, {"QueryRetrieveLevel": "study", "StudyInstanceUID": CT_STUDY}, Receiver.AET),
    "unknown-uid": (False, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3.4.5"}, Receiver.AET),
    "no-unique-key": (False, {"QueryRetrieveLevel": "STUDY", "PatientName": "Comp*"}, Receiver.AET),
    "level-unknown": (False, {"QueryRetrieveLevel": "GALAXY", "StudyInstanceUID": CT_STUDY}, Receiver.AET),
    "unknown-destination": (False, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": CT_STUDY}, "NOWHERE"),
}
QUICK_MOVE = ("study", "pynetdicom")


def _retrieved(pending: int, final: dict[str, Any], files: dict[str, Dataset]) -> dict[str, Any]:
    return {"pending": pending, "final": final, "files": {uid: _values(ds) for uid, ds in files.items()}}


def _move_pynetdicom(server_port: int, aet: str, patient_root: bool, keys: dict[str, Any], dest: str,
                     receiver: Receiver) -> dict[str, Any]:
    model = PatientRootQueryRetrieveInformationModelMove if patient_root else StudyRootQueryRetrieveInformationModelMove
    assoc = _associate(server_port, aet, [model])
    try:
        rsps = [st for st, _ in assoc.send_c_move(_identifier(keys), dest, model)]
    finally:
        assoc.release()
    assert rsps and all(rsps), "no answer"
    pending = sum(1 for st in rsps if st.Status == 0xFF00)
    return _retrieved(pending, _status_of(rsps[-1]), receiver.take(aet))


def _move_dcmtk(server_port: int, aet: str, patient_root: bool, keys: dict[str, Any], dest: str,
                receiver: Receiver) -> dict[str, Any]:
    r = subprocess.run([dcmtk("movescu"), "-d", "-P" if patient_root else "-S", "-aet", "DIFF", "-aec", aet,
                        "-aem", dest, *_dcmtk_keys(keys), "127.0.0.1", str(server_port)],
                       capture_output=True, timeout=120)
    rsps = [m for m in _dimse_messages(r.stdout.decode("latin-1") + r.stderr.decode("latin-1"))
            if m.get("Message Type") == "C-MOVE RSP"]
    assert rsps, r.stderr[-2000:]
    pending = sum(1 for m in rsps if m.get("DIMSE Status", "").startswith("0xff00"))
    return _retrieved(pending, _dcmtk_status(rsps[-1]), receiver.take(aet))


def _get_pynetdicom(server_port: int, aet: str, patient_root: bool, keys: dict[str, Any]) -> dict[str, Any]:
    from pynetdicom import StoragePresentationContexts, build_role, evt

    model = PatientRootQueryRetrieveInformationModelGet if patient_root else StudyRootQueryRetrieveInformationModelGet
    classes = [cx.abstract_syntax for cx in StoragePresentationContexts[:120]]
    got: dict[str, Dataset] = {}

    def store(event) -> int:
        got[str(event.dataset.SOPInstanceUID)] = event.dataset
        return 0x0000

    assoc = _associate(server_port, aet, [model, *classes],
                       ext_neg=[build_role(c, scp_role=True) for c in classes],
                       evt_handlers=[(evt.EVT_C_STORE, store)])
    try:
        rsps = [st for st, _ in assoc.send_c_get(_identifier(keys), model)]
    finally:
        assoc.release()
    assert rsps and all(rsps), "no answer"
    return _retrieved(sum(1 for st in rsps if st.Status == 0xFF00), _status_of(rsps[-1]), got)


def _get_dcmtk(server_port: int, aet: str, patient_root: bool, keys: dict[str, Any], workdir: Path) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(dir=workdir))
    r = subprocess.run([dcmtk("getscu"), "-d", "-P" if patient_root else "-S", "-aet", "DIFF", "-aec", aet,
                        *_dcmtk_keys(keys), "-od", str(out), "127.0.0.1", str(server_port)],
                       capture_output=True, timeout=120)
    rsps = [m for m in _dimse_messages(r.stdout.decode("latin-1") + r.stderr.decode("latin-1"))
            if m.get("Message Type") == "C-GET RSP"]
    assert rsps, r.stderr[-2000:]
    files = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in sorted(out.iterdir()))}
    pending = sum(1 for m in rsps if m.get("DIMSE Status", "").startswith("0xff00"))
    return _retrieved(pending, _dcmtk_status(rsps[-1]), files)


@pytest.mark.parametrize(("name", "tool"), _dicom_params(RETRIEVES, ("pynetdicom", "movescu"), QUICK_MOVE))
def test_cmove_statuses_and_files(pair, receiver, name, tool):
    """The same C-MOVE to both: pending answers, final status and counts, and the files that
    arrive at DEST (SOP Instance UIDs, then tag by tag)."""
    ours, ref, _ = pair
    patient_root, keys, dest = RETRIEVES[name]
    move = _move_pynetdicom if tool == "pynetdicom" else _move_dcmtk
    r = move(ref.dicom_port, "ORTHANC", patient_root, keys, dest, receiver)
    a = move(ours.dicom_port, "PIPACS", patient_root, keys, dest, receiver)
    _compare_dicom(f"C-MOVE {name} [{tool}]", a, r)


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["pynetdicom", "getscu"])
@pytest.mark.parametrize("name", [n for n, (_, _, dest) in RETRIEVES.items() if dest == Receiver.AET])
def test_cget_statuses_and_files(pair, name, tool, tmp_path):
    """The same C-GET to both: pending answers, final status and counts, the files received."""
    ours, ref, _ = pair
    patient_root, keys, _ = RETRIEVES[name]
    if tool == "pynetdicom":
        a = _get_pynetdicom(ours.dicom_port, "PIPACS", patient_root, keys)
        r = _get_pynetdicom(ref.dicom_port, "ORTHANC", patient_root, keys)
    else:
        a = _get_dcmtk(ours.dicom_port, "PIPACS", patient_root, keys, tmp_path)
        r = _get_dcmtk(ref.dicom_port, "ORTHANC", patient_root, keys, tmp_path)
    _compare_dicom(f"C-GET {name} [{tool}]", a, r)


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
    accepted = diff.load_accepted()
    left = diff.unaccepted(found, accepted)
    _MODALITY_QUERY_USED[name] = {a.match for a in accepted if a.used}
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


@pytest.mark.slow
def test_accepted_dicom_differences_still_occur():
    """After the whole DICOM differential (in this process, before this test): every accepted
    "DICOM ..." entry was needed by some case (a fixed difference leaves no stale entry behind)."""
    cases = len(FINDS) * 2 + len(RETRIEVES) * 2 + sum(1 for *_, d in RETRIEVES.values() if d == Receiver.AET) * 2
    if len(_DICOM_USED) < cases or len(_MODALITY_QUERY_USED) < len(MODALITY_QUERIES):
        pytest.skip(f"only {len(_DICOM_USED)} of the {cases} DICOM cases (and {len(_MODALITY_QUERY_USED)} of the "
                    f"{len(MODALITY_QUERIES)} modality queries) ran in this process")
    used = set().union(*_DICOM_USED.values(), *_MODALITY_QUERY_USED.values())
    stale = [a.match for a in diff.load_accepted() if a.match.startswith("DICOM ") and a.match not in used]
    assert not stale, f"accepted DICOM differences that no longer occur (remove them): {stale}"
