"""Answers compared key by key with a real Orthanc given the same files (Debian package orthanc)."""

import json

import pytest

from .helpers import TEST_FILES, have_orthanc
from .orthanc import Orthanc
from .synth import ct_instance

# one worker runs them all: the module's pair of servers is started once
pytestmark = [pytest.mark.orthanc, pytest.mark.xdist_group("orthanc-compat"),
              pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed (Debian package orthanc)")]

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "rtdose.dcm",
         "examples_ybr_color.dcm", "liver_1frame.dcm"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from .helpers import Server
    base = tmp_path_factory.mktemp("compat")
    ours, ref = Server(base / "pipacs"), Orthanc(base / "orthanc")
    try:       # a failed load must not leave the two servers running
        ours.start()
        ref.start()
        blobs = [(TEST_FILES / n).read_bytes() for n in FILES]
        blobs += [ct_instance(rows=16, cols=16, index=k, patient_id="SYN", patient_name="Synth^Case")
                  for k in (1, 2, 3)]
        answers = []
        for b in blobs:
            a, r = ours.post("/instances", b), ref.post("/instances", b)
            assert a.status == r.status == 200, (a.body, r.body)
            answers.append((a.json(), r.json()))
        yield ours, ref, answers
    finally:
        ours.stop()
        ref.stop()


def test_post_instances_answers_are_identical(pair):
    _, _, answers = pair
    for a, r in answers:
        assert a == r


@pytest.mark.parametrize("level", ["patients", "studies", "series", "instances"])
def test_every_resource_has_orthancs_shape_and_tags(pair, level):
    ours, ref, _ = pair
    ids = ref.get_json(f"/{level}")
    assert sorted(ours.get_json(f"/{level}")) == sorted(ids)
    for rid in ids:
        a, r = ours.get_json(f"/{level}/{rid}"), ref.get_json(f"/{level}/{rid}")
        # Labels: Orthanc 1.12's key, which the Debian Orthanc here (1.10) predates
        assert set(a) - {"Labels"} == set(r) - {"Labels"}, (level, set(a) ^ set(r))
        for key in r:
            if key in ("LastUpdate", "FileUuid"):
                continue
            if key == "FileSize":  # Orthanc rewrites files; we keep the bytes received (or fix only the header)
                assert a[key] == len(ours.get(f"/instances/{rid}/file").body)
                continue
            if isinstance(r[key], list):
                assert sorted(a[key]) == sorted(r[key]), (level, key)
            else:
                assert a[key] == r[key], (level, rid, key, a[key], r[key])


def test_children_routes(pair):
    ours, ref, _ = pair
    for sid in ref.get_json("/studies"):
        a = sorted(x["ID"] for x in ours.get_json(f"/studies/{sid}/instances"))
        r = sorted(x["ID"] for x in ref.get_json(f"/studies/{sid}/instances"))
        assert a == r
        assert ours.get_json(f"/studies/{sid}/patient")["ID"] == ref.get_json(f"/studies/{sid}/patient")["ID"]


def _public(d, names):
    """Names of private tags come from each toolkit's private dictionary (pydicom's, DCMTK's): compare the rest.

    Which attributes are retired also depends on the edition of the standard in each dictionary
    (pydicom's is newer than Debian's DCMTK), so the RETIRED_ prefix is not compared.
    """
    names = {n.removeprefix("RETIRED_") for n in names}
    return {k.removeprefix("RETIRED_"): ([_public(i, names) for i in v] if isinstance(v, list) else v)
            for k, v in d.items() if k.removeprefix("RETIRED_") in names}


def _public_names(full):
    names = set()
    for k, v in full.items():
        if int(k[:4], 16) % 2 == 0:
            names.add(v["Name"])
        if v["Type"] == "Sequence":
            for item in v["Value"]:
                names |= _public_names(item)
    return names


def test_tags_match(pair):
    ours, ref, _ = pair
    for iid in ref.get_json("/instances"):
        for route in ("/tags?short", "/simplified-tags"):
            a, r = ours.get_json(f"/instances/{iid}{route}"), ref.get_json(f"/instances/{iid}{route}")
            if route == "/simplified-tags":
                full = ref.get_json(f"/instances/{iid}/tags")
                names = _public_names(full)
                a, r = _public(a, names), _public(r, names)
            assert set(a) == set(r), (iid, route, set(a) ^ set(r))
            # Orthanc shows only the first value of a multi-valued AT (e.g. FrameIncrementPointer); we show all
            diffs = {k: (a[k], r[k]) for k in r if a[k] != r[k]
                     and not (k in ("0028,0009", "FrameIncrementPointer") and a[k].startswith(r[k] + "\\"))}
            assert not diffs, (iid, route, diffs)


def test_statistics_and_changes_shapes(pair):
    ours, ref, _ = pair
    a, r = ours.get_json("/statistics"), ref.get_json("/statistics")
    assert set(a) == set(r)
    for k in ("CountPatients", "CountStudies", "CountSeries", "CountInstances"):
        assert a[k] == r[k]
    a, r = ours.get_json("/changes?limit=5"), ref.get_json("/changes?limit=5")
    assert set(a) == set(r) and a["Done"] == r["Done"] and a["Last"] == r["Last"]
    for x, y in zip(a["Changes"], r["Changes"]):
        assert set(x) == set(y)
        assert {k: x[k] for k in x if k != "Date"} == {k: y[k] for k in y if k != "Date"}
    sys_a, sys_r = ours.get_json("/system"), ref.get_json("/system")
    assert set(sys_r) <= set(sys_a)


@pytest.mark.parametrize("query", [
    {"Level": "Study", "Query": {"PatientName": "*"}},
    {"Level": "Study", "Query": {"PatientName": "compressed*"}},
    {"Level": "Study", "Query": {"StudyDate": "20040101-20041231"}},
    {"Level": "Series", "Query": {"Modality": "CT\\MR"}},
    {"Level": "Instance", "Query": {"PatientID": "SYN"}},
    {"Level": "Patient", "Query": {"PatientID": "?CT?"}},
    {"Level": "Study", "Query": {"PatientID": "SYN"}, "Expand": True},
])
def test_tools_find_answers(pair, query):
    ours, ref, _ = pair
    a, r = ours.post_json("/tools/find", query), ref.post_json("/tools/find", query)
    if query.get("Expand"):
        strip = lambda xs: sorted(json.dumps({k: v for k, v in x.items() if k not in ("LastUpdate", "Labels")},
                                              sort_keys=True) for x in xs)
        assert strip(a) == strip(r)
    else:
        assert sorted(a) == sorted(r)


def test_lookup_answers(pair):
    ours, ref, _ = pair
    for value in ("1CT1", "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322", "nothing-like-this"):
        assert ours.post("/tools/lookup", value).json() == ref.post("/tools/lookup", value).json()
