"""An Orthanc user's script, written with Orthanc's own Python client (orthanc-api-client, by the
Orthanc Team), run unchanged against pipacs and against a real Orthanc holding the same files: each
step's outcome must be the same on both. Where the differential test compares answers request by
request, this is the other half of "scripts written for Orthanc work unchanged": a client library's
own addresses (it joins them to a base that ends in '/'), bodies and expectations."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pydicom
import pytest

from .helpers import TEST_FILES, Server, have_orthanc
from .orthanc import Orthanc

orthanc_api_client = pytest.importorskip("orthanc_api_client")

pytestmark = [pytest.mark.orthanc, pytest.mark.xdist_group("orthanc-client"),
              pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed (Debian package orthanc)")]

CT, MR = TEST_FILES / "CT_small.dcm", TEST_FILES / "MR_small.dcm"


def _zip_of(*paths) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in paths:
            z.write(p, f"case/{p.name}")
    return buf.getvalue()


def teaching_script(base_url: str) -> dict[str, Any]:
    """What a teacher's helper script does with a server: load cases, find them, read them, download,
    anonymize a copy, fix a name, delete. Returns each step's outcome, in words both servers share
    (UIDs, counts, tag values; Orthanc IDs are the same on both, being hashes of the UIDs)."""
    from orthanc_api_client import OrthancApiClient
    from orthanc_api_client.exceptions import BadFileFormat, HttpError, ResourceNotFound

    o = OrthancApiClient(base_url + "/")     # as users write it: a base ending in '/'
    out: dict[str, Any] = {"alive": o.is_alive()}
    out["upload-one"] = o.upload_file(CT)
    out["upload-zip"] = sorted(o.upload(_zip_of(CT, MR)))
    try:
        o.upload(b"this is not DICOM" * 10)
        out["upload-not-dicom"] = "accepted"
    except BadFileFormat:
        out["upload-not-dicom"] = "BadFileFormat"
    stats = o.get_statistics()
    out["statistics"] = (stats.patients_count, stats.studies_count, stats.series_count, stats.instances_count)

    ct = pydicom.dcmread(CT)
    study_id = o.studies.lookup(ct.StudyInstanceUID)
    out["lookup"] = study_id
    out["lookup-unknown"] = o.studies.lookup("1.2.3.4.5.6.7.8.9")
    found = o.studies.find(query={"PatientName": "CompressedSamples^CT1"})
    out["find-exact"] = sorted(s.dicom_id for s in found)
    out["find-case-sensitive"] = sorted(s.dicom_id for s in o.studies.find(query={"PatientName": "compressed*"}))
    out["find-case-insensitive"] = sorted(
        s.dicom_id for s in o.studies.find(query={"PatientName": "compressed*"}, case_sensitive=False))
    out["find-wildcard"] = sorted(s.dicom_id for s in o.studies.find(query={"PatientName": "*"}))
    study = o.studies.get(study_id)
    out["study-tags"] = (study.main_dicom_tags.get("StudyDescription"), study.main_dicom_tags.get("StudyDate"),
                         study.patient_main_dicom_tags.get("PatientName"), study.dicom_id)
    out["study-modalities"] = sorted(o.studies.get_modalities(study_id))
    out["study-series"] = sorted(o.studies.get_series_ids(study_id))
    instances = o.studies.get_instances_ids(study_id)
    out["study-instances"] = sorted(instances)
    tags = o.instances.get_tags(instances[0])
    out["instance-tags"] = (tags.get("PatientName"), tags.get("SOPInstanceUID"), tags.get("Rows"),
                            tags.get("0028,0010"))
    out["instance-file"] = pydicom.dcmread(io.BytesIO(o.instances.get_file(instances[0]))).SOPInstanceUID
    out["instance-parents"] = (o.instances.get_parent_series_id(instances[0]),
                               o.instances.get_parent_study_id(instances[0]),
                               o.instances.get_parent_patient_id(instances[0]))
    out["instance-is-pdf"] = o.instances.is_pdf(instances[0])

    buf = io.BytesIO()
    o.get_binary(f"studies/{study_id}/archive")
    buf.write(o.get_binary(f"studies/{study_id}/archive"))
    with zipfile.ZipFile(buf) as z:
        out["archive-members"] = sum(1 for i in z.infolist() if not i.is_dir())

    anon_id = o.studies.anonymize(study_id, delete_original=False)
    anon = o.studies.get(anon_id)
    out["anonymized"] = (anon_id != study_id, anon.patient_main_dicom_tags.get("PatientName") !=
                         study.patient_main_dicom_tags.get("PatientName"), o.studies.exists(study_id))
    renamed_id = o.studies.modify(anon_id, replace_tags={"StudyDescription": "Teaching: chest"},
                                  delete_original=True)
    out["modified"] = (o.studies.get(renamed_id).main_dicom_tags.get("StudyDescription"),
                       o.studies.exists(anon_id))
    o.studies.delete(renamed_id)
    out["deleted"] = o.studies.exists(renamed_id)
    try:
        o.studies.get_json("0000000-unknown")
        out["unknown"] = "found"
    except ResourceNotFound:
        out["unknown"] = "ResourceNotFound"
    except HttpError as e:
        out["unknown"] = f"HttpError {e.http_status_code}"
    changes, _last, done = o.get_changes()
    out["changes"] = (sorted({c.change_type.value if hasattr(c.change_type, "value") else str(c.change_type)
                              for c in changes}), done)
    return out


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("orthanc-client")
    ours = Server(base / "pipacs")
    ref = None
    try:
        ours.start()
        ref = Orthanc(base / "orthanc", {}).start()
        yield ours, ref
    finally:
        ours.stop()
        if ref is not None:
            ref.stop()


def test_an_orthanc_client_script_runs_unchanged(servers):
    ours, ref = servers
    theirs = teaching_script(f"http://127.0.0.1:{ref.http_port}")
    mine = teaching_script(f"http://127.0.0.1:{ours.http_port}")
    differing = {k: (mine.get(k), theirs.get(k)) for k in theirs if mine.get(k) != theirs.get(k)}
    assert not differing, differing
