"""ZIP and DICOMDIR downloads are named after what they hold (issue 20: both used to be <id>.zip)."""

import re

from appliance.teaching.downloads import download_filename

from .synth import ct_instance, with_patient_name

SAFE = re.compile(r'attachment; filename="([A-Za-z0-9_.\-]+)"')


def _row(patient: str = "p", study: str = "s", series: str = "e", name: str = "Doe^Jane", pid: str = "PAT1",
         date: str = "20240102", desc: str = "CHEST", modality: str = "CT", sdesc: str = "AXIAL") -> dict:
    return {"patient_key": patient, "study_key": study, "series_key": series,
            "patient_tags": {"0010,0010": name, "0010,0020": pid},
            "study_tags": {"0008,0020": date, "0008,1030": desc},
            "series_tags": {"0008,0060": modality, "0008,103e": sdesc}}


def test_download_filename_names_patient_and_study():
    one_study = [_row(series="a"), _row(series="b", sdesc="CORONAL")]
    assert download_filename(one_study, media=False) == "Doe_Jane-2024-01-02-CHEST.zip"
    assert download_filename(one_study, media=True) == "Doe_Jane-2024-01-02-CHEST-dicomdir.zip"
    assert download_filename([_row()], media=False) == "Doe_Jane-2024-01-02-CHEST.zip"
    assert download_filename([_row()], media=False, of_series=True) == "Doe_Jane-2024-01-02-CHEST-CT-AXIAL.zip"
    assert download_filename(one_study, media=False, of_series=True) == "Doe_Jane-2024-01-02-CHEST.zip"
    # accents dropped, separators and quotes made safe, the ID when there is no name
    row = _row(name="Müller^Jürgen \"J\"", desc="CT Thorax/Abdomen; contrast", sdesc="")
    assert download_filename([row], media=False, of_series=True) == "Muller_Jurgen_J-2024-01-02-CT_Thorax_Abdomen_contrast-CT.zip"
    assert download_filename([_row(name="", date="")], media=True) == "PAT1-CHEST-dicomdir.zip"
    assert download_filename([_row(study="a"), _row(study="b")], media=False) == "Doe_Jane-2_studies.zip"
    assert download_filename([_row(patient="a"), _row(patient="b", study="t")], media=False) == "2_patients.zip"
    assert download_filename([], media=False) == "Archive.zip"
    assert download_filename([], media=True, fallback="0123-abcd") == "0123-abcd-dicomdir.zip"
    assert download_filename([_row(name="日本^太郎", pid="", date="", desc="", modality="", sdesc="")],
                             media=False, fallback="f00d", of_series=True) == "f00d.zip"
    long = download_filename([_row(desc="X" * 300)], media=True)
    assert len(long) <= 100 + len("-dicomdir.zip") and long.endswith("-dicomdir.zip")


def test_archive_and_media_downloads_have_different_meaningful_names(make_server):
    srv = make_server()
    first = srv.post("/instances", with_patient_name(ct_instance(rows=16, cols=16, study_description="CT Thorax/Abd"),
                                                     "Müller^Jürgen", "ISO_IR 100")).json()
    srv.post("/instances", ct_instance(rows=16, cols=16, index=2, study_description="CT Thorax/Abd"))
    study = first["ParentStudy"]
    names = {}
    for kind in ("archive", "media"):
        for method in ("GET", "POST"):
            r = srv.request(method, f"/studies/{study}/{kind}", "{}" if method == "POST" else None)
            assert r.status == 200, r.body[:300]
            m = SAFE.fullmatch(r.headers["Content-Disposition"])
            assert m, r.headers["Content-Disposition"]
            names[kind] = m.group(1)
    assert names == {"archive": "Muller_Jurgen-2024-01-02-CT_Thorax_Abd.zip",
                     "media": "Muller_Jurgen-2024-01-02-CT_Thorax_Abd-dicomdir.zip"}
    r = srv.get(f"/series/{first['ParentSeries']}/media")
    assert SAFE.fullmatch(r.headers["Content-Disposition"]).group(1) == \
        "Muller_Jurgen-2024-01-02-CT_Thorax_Abd-CT-AXIAL-dicomdir.zip"
    r = srv.request("POST", "/tools/create-media", f'{{"Resources": ["{study}"]}}')
    assert SAFE.fullmatch(r.headers["Content-Disposition"]).group(1) == "Muller_Jurgen-2024-01-02-CT_Thorax_Abd-dicomdir.zip"
    r = srv.request("POST", "/tools/create-archive", '{"Resources": []}')
    assert SAFE.fullmatch(r.headers["Content-Disposition"]).group(1) == "Archive.zip"
