"""The fuzz suite (issue 17): generated bad input over every route of the role table, POST
/instances with mutants of real files, ZIP uploads with mutated members and names, and C-STORE
with mutated datasets. Each case asserts that the server answers it without a fault of ours (no
500; a 4xx answer is Orthanc's JSON error shape); afterwards the server still answers /system and
C-ECHO, and every instance stored before is still there, byte for byte.

One server is shared by the module (starting one per case would cost more than the cases), with
AuthenticationEnabled false so that every route is exercised; a short second pass signs nobody in
on a server with AuthenticationEnabled and StudentAccess open, and checks that no teacher-only
route succeeds. Cases are bounded by hypothesis' max_examples (no deadline: the machine is shared).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from appliance.web.roles import ROUTE_NEEDS, TEACHER

from .helpers import TEST_FILES, Server
from .synth import ct_instance

pytestmark = pytest.mark.slow

SEEDS = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_rle_2frame.dcm", "rtplan.dcm"]

# the bound on every generated case: a few thousand requests in all, under ~3 minutes on 2 cores
FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])
MUTANTS = settings(FUZZ, max_examples=200)

# a remote node's failure is answered 500, OrthancError "Error in the network protocol", as Orthanc does: not a
# fault of ours (modalities.remote_error_response); every other 5xx must be one of these
REMOTE_FAILURE = "Error in the network protocol"
ALLOWED_5XX = {502, 503, 504, 507}


# ---------------------------------------------------------------------------- the shared server

class Seeded:
    """The fuzzed server, what was stored in it before, and the values its paths may name."""

    def __init__(self, srv: Server):
        self.srv = srv
        self.hashes: dict[str, str] = {}
        self.ids: dict[str, list[str]] = {"patients": [], "studies": [], "series": [], "instances": []}
        self.uids: dict[str, list[str]] = {"study": [], "series": [], "instance": []}
        self.qids: list[str] = []


def _store_seeds(srv: Server) -> Seeded:
    seeded = Seeded(srv)
    for name in SEEDS:
        data = (TEST_FILES / name).read_bytes()
        r = srv.post("/instances", data)
        assert r.status == 200, (name, r.status, r.body[:300])
        ans = r.json()
        seeded.hashes[ans["ID"]] = hashlib.sha256(srv.get(f"/instances/{ans['ID']}/file").body).hexdigest()
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        seeded.uids["study"].append(str(ds.StudyInstanceUID))
        seeded.uids["series"].append(str(ds.SeriesInstanceUID))
        seeded.uids["instance"].append(str(ds.SOPInstanceUID))
    for level in seeded.ids:
        seeded.ids[level] = srv.get_json(f"/{level}")
    return seeded


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory):
    """One server for the module; a modality "loop" names the server itself (loopback only)."""
    work = tmp_path_factory.mktemp("fuzz")
    srv = Server(work / "srv", {"AuthenticationEnabled": False, "DicomScuTimeout": 3}).start()
    try:
        seeded = _store_seeds(srv)
        r = srv.request("PUT", "/modalities/loop", json.dumps(["PIPACS", "127.0.0.1", srv.dicom_port]))
        assert r.status == 200, r.body
        r = srv.post("/modalities/loop/query", json.dumps({"Level": "Study", "Query": {"PatientID": "*"}}))
        assert r.status == 200, r.body
        seeded.qids.append(r.json()["ID"])
        yield seeded
        assert_alive_and_intact(seeded)
    finally:
        srv.stop()
        (work / "server.log").write_text(srv.log)    # for a person reading a failure


def echo(srv: Server) -> int:
    ae = AE(ae_title="FUZZ")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS")
    assert assoc.is_established, "C-ECHO: no association after fuzzing"
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else -1
    finally:
        assoc.release()


def assert_alive_and_intact(seeded: Seeded) -> None:
    """The server still answers /system and C-ECHO, and every seed is still stored, unchanged."""
    srv = seeded.srv
    assert srv.proc.poll() is None, f"the server exited:\n{srv.log[-3000:]}"
    assert srv.get("/system").status == 200
    assert echo(srv) == 0
    for iid, digest in seeded.hashes.items():
        r = srv.get(f"/instances/{iid}/file")
        assert r.status == 200, f"instance {iid} stored before the fuzz is gone"
        assert hashlib.sha256(r.body).hexdigest() == digest, f"instance {iid} changed"


def assert_no_fault(r, what: str) -> None:
    """No fault of ours: not a 500 (except a remote node's failure), and errors in Orthanc's shape."""
    detail = f"{what} -> {r.status}: {r.body[:400]!r}"
    if r.status >= 400:
        assert (r.headers.get("Content-Type") or "").startswith("application/json"), detail
        body = r.json()
        assert isinstance(body, dict) and body.get("HttpStatus") == r.status and body.get("Message"), detail
        assert "Traceback" not in body["Message"], detail
        if r.status == 500:
            assert body.get("OrthancError") == REMOTE_FAILURE, detail
        elif r.status > 500:
            assert r.status in ALLOWED_5XX, detail


# ---------------------------------------------------------------------------- generated requests

def _json_values() -> st.SearchStrategy:
    scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
               | st.sampled_from(["", "*", "1.2.3", "0010,0010", "PatientName", "Study", "STUDY", "Instance",
                                  "20240101", "20240101-", "\u00e9\u4e2d\U0001f600", "-1", "1e400", "%", "\x00"]))
    return st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                        | st.dictionaries(st.text(max_size=12), kids, max_size=4), max_leaves=12)


# keys the routes read from their bodies, so that wrong types reach the code that reads them
BODY_KEYS = ["Level", "Query", "Expand", "Limit", "Since", "CaseSensitive", "Labels", "LabelsConstraint",
             "Resources", "Replace", "Remove", "Keep", "KeepPrivateTags", "Force", "DicomVersion", "Minutes",
             "TargetAet", "Synchronous", "Timeout", "Normalize", "Transcode", "Permissive", "Asynchronous",
             "RequestedTags", "Short", "Simplify", "Full", "MoveOriginatorAet", "MoveOriginatorID", "Password",
             "Username", "Code", "Tags", "Series", "Instances", "StorageCommitment", "Priority", "AET", "Port",
             "Host", "ParentPatient", "RemoveSequences", "PrivateCreator", "KeepLabels", "Query"]


def _bodies() -> st.SearchStrategy:
    values = _json_values()
    keyed = st.dictionaries(st.sampled_from(BODY_KEYS), values, max_size=5)
    return (keyed | values
            | st.builds(lambda level, q: {"Level": level, "Query": q}, values, values | keyed)
            | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))


QUERY_KEYS = ["since", "limit", "offset", "expand", "simplify", "short", "includefield", "fuzzymatching",
              "PatientName", "00100010", "StudyDate", "0020000D", "ModalitiesInStudy", "quality", "width",
              "height", "window-center", "window-width", "windowCenter", "windowWidth", "smooth", "window",
              "viewport", "requestType", "studyUID", "seriesUID", "objectUID", "contentType", "transferSyntax",
              "frameNumber", "rows", "columns", "region", "anonymize", "text", "filename", "transcode",
              "requestedTags", "full", "format", "0x00100010", "(0010,0010)", "Unknown"]


def _query_strings() -> st.SearchStrategy:
    nums = st.integers(min_value=-2**65, max_value=2**65).map(str)
    odd = st.sampled_from(["", "nan", "inf", "-inf", "1e308", "1e-320", "0", "-0", "1,2", "0010,0010", "all",
                           "*", "true", "false", "x", "9" * 40, "-1", "1.5", "%zz", "\u00e9", "0020000D,foo",
                           "-0.0,0", "1,1,1,1", "0,0,0,0"])
    value = st.one_of(odd, odd, nums, st.text(max_size=20))
    key = st.one_of(st.sampled_from(QUERY_KEYS), st.sampled_from(QUERY_KEYS), st.text(max_size=8))
    pairs = st.lists(st.tuples(key, value), max_size=4)
    return pairs.map(lambda kv: urllib.parse.urlencode(kv))


NUMBERS = st.integers(min_value=-2**65, max_value=2**65).map(str) | st.sampled_from(
    ["0", "1", "2", "3", "1,2", "1,,2", "0,1", "a", "", "1.5", "9" * 30, "-1", " 1", "\u0661"])
TEXT = st.text(max_size=30) | st.sampled_from(["", ".", "..", "*", "%00", "\u00e9", "a" * 300, "1.2.840.10008",
                                               "00100010", "0010,0010", "x/y", "1..2", "01.2"])


def _param(seeded: Seeded, name: str, route: str = "") -> st.SearchStrategy:
    """Values for one path parameter: the real ones (so that the handler runs) and generated ones."""
    fixed = {"level": ["patients", "studies", "series", "instances"],
             "rel": ["patient", "study", "studies", "series", "instances"],
             "kind": ["archive", "media", "create-archive", "create-media", "create-media-extended"],
             "action": ["anonymize", "modify"], "what": ["level", "modality", "query"],
             "name": ["loop", "ModifiedFrom", "IndexInSeries", "RemoteAET", "1024"]}
    if name == "id":   # mostly real (so that the handler runs past its lookup), of the route's level
        level = route.split("/")[1]
        real = seeded.ids.get(level) or [i for ids in seeded.ids.values() for i in ids]
        return st.one_of(st.sampled_from(real), st.sampled_from(real), st.sampled_from(real), TEXT)
    if name in ("study", "series", "instance"):
        uids = st.sampled_from(list(range(len(seeded.uids["study"]))))
        return st.one_of(uids.map(lambda i: seeded.uids[name][i]), uids.map(lambda i: seeded.uids[name][i]), TEXT)
    if name in ("frame", "frames", "n"):
        return NUMBERS
    if name == "tag":
        return st.sampled_from(["00100010", "7FE00010", "0010", "FFFFFFFF", "zz", "00000000"]) | TEXT
    if name == "qid":
        return st.sampled_from(seeded.qids) | TEXT
    if name == "path":
        return st.sampled_from(["", "/0010-0010", "/0008-1140/0/0008-1155", "/7fe0-0010", "/3006-0010/0",
                                "/300a-00b0/0/300a-0111/0", "/300a-00b0/-1", "/300a-00b0/99999999999999999999",
                                "/zz", "/0010-0010/0"]) | TEXT.map(lambda t: "/" + t)
    if name in fixed:
        return st.sampled_from(fixed[name]) | TEXT
    return TEXT


def _routes() -> list[tuple[str, str]]:
    return sorted(ROUTE_NEEDS)


# Requests that would lose what the test keeps (a delete of a real resource) or reach beyond
# loopback (a modality with a generated host) are made safe before they are sent.
def _safe(method: str, route: str, params: dict[str, str], body: Any, seeded: Seeded) -> tuple[dict, Any] | None:
    real = {i for ids in seeded.ids.values() for i in ids} | {u for uids in seeded.uids.values() for u in uids}
    if method == "DELETE" and params.get("id") in real and "/labels/" not in route and "/metadata/" not in route:
        return None
    # a modality PUT, and a C-ECHO to the node a /tools/dicom-echo body names: loopback only
    if (route.startswith("/modalities/{name}") and method == "PUT") or route == "/tools/dicom-echo":
        if params.get("name") == "loop":
            return None
        if isinstance(body, list) and len(body) >= 2:
            body = [body[0], "127.0.0.1", *body[2:]]
        elif isinstance(body, dict):
            body = {k: ("127.0.0.1" if k.lower() == "host" else v) for k, v in body.items()}
        elif isinstance(body, str):
            body = ""
    if route.startswith("/modalities/{name}/") and params.get("name") not in ("loop", None):
        params = dict(params, name="fuzz-" + params["name"])  # never a modality the fuzz PUT
    if route == "/modalities/{name}" and method == "DELETE" and params.get("name") == "loop":
        return None
    if isinstance(body, dict):    # a modify/anonymize that would delete the seed
        body = {k: v for k, v in body.items() if k != "KeepSource"}
    if route.endswith("/protected") or route.startswith("/pipacs/password"):
        pass
    return params, body


# bodies no generated JSON value spells: not UTF-8, nested past any parser, numbers past 64 bits
# or a double, JSON's missing constants, a lone surrogate
RAW_BODIES = [b"\xff\xfe\x00", b"[" * 100000, b"1" * 5000, b"-" + b"9" * 30, b"NaN", b"1e400", b"Infinity",
              b'{"Level": "Study", "Query": {"PatientName": "\\ud800"}}', b'"\\u0000"',
              b'{"Level": "Study", "Query": {}, "Limit": 99999999999999999999}',
              b'{"Level": "Study", "Query": {}, "Since": 1e308}']


def _quote(v: str) -> str:
    return urllib.parse.quote(v, safe="")


def build_request(seeded: Seeded, method: str, route: str, draw) -> tuple[str, bytes | None] | None:
    names = re.findall(r"{(\w+)}", route)
    k = draw(st.integers(0, len(seeded.uids["study"]) - 1))    # one instance's UIDs, consistent
    params = {}
    for n in names:
        if n in ("study", "series", "instance") and draw(st.integers(0, 3)) < 3:
            params[n] = seeded.uids[n][k]
        else:
            params[n] = draw(_param(seeded, n, route))
    body = draw(_bodies()) if method in ("POST", "PUT") else None
    safe = _safe(method, route, params, body, seeded)
    if safe is None:
        return None
    params, body = safe
    path = route
    for n, v in params.items():
        path = path.replace("{" + n + "}", urllib.parse.quote(v, safe="/") if n == "path" else _quote(v))
    qs = draw(_query_strings())
    if qs:
        path += "?" + qs
    data = None
    raw = draw(st.sampled_from([None] * 8 + RAW_BODIES)) if method in ("POST", "PUT") else None
    if raw is not None:
        return path, raw
    if body is not None:
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) and draw(st.booleans()) else \
            json.dumps(body).encode()
    return path, data


HTTP_ROUTES = [rt for rt in _routes() if rt != ("POST", "/instances")]


@pytest.mark.parametrize("method,route", HTTP_ROUTES, ids=[f"{m} {r}" for m, r in HTTP_ROUTES])
def test_route_fuzz(fuzzed: Seeded, method: str, route: str):
    """Generated path parameters, query strings and JSON bodies on one route: no fault of ours."""
    srv = fuzzed.srv

    @settings(FUZZ, max_examples=150 if method in ("POST", "PUT") else 60)
    @given(st.data())
    def case(data):
        built = build_request(fuzzed, method, route, data.draw)
        if built is None:
            return
        path, body = built
        if "/pipacs/password" in path:     # keep the teacher's password as it is
            return
        r = srv.request(method, path, body, timeout=30)
        if os.environ.get("FUZZ_TRACE"):
            print("TRACE", r.status, method, path, body[:100] if body else body)
        assert_no_fault(r, f"{method} {path} body={body[:300] if body else body!r}")
    case()


# ---------------------------------------------------------------------------- POST /instances

def _seed_bytes() -> list[bytes]:
    return [(TEST_FILES / n).read_bytes() for n in SEEDS + ["ExplVR_BigEnd.dcm", "image_dfl.dcm", "nested_priv_SQ.dcm",
                                                           "UN_sequence.dcm", "reportsi.dcm", "no_meta.dcm"]]


SEED_FILES = _seed_bytes()


def assert_stored_readable(srv: Server, r, what: str) -> None:
    """Store only what we can serve (issue 17): every instance an upload stored answers /tags."""
    if r.status != 200:
        return
    body = r.json()
    for item in body if isinstance(body, list) else [body]:
        if isinstance(item, dict) and item.get("ID") and item.get("Status") in ("Success", "AlreadyStored"):
            tags = srv.get(f"/instances/{item['ID']}/tags")
            assert tags.status == 200, f"{what} stored {item['ID']}, whose /tags answers {tags.status}: {tags.body[:300]!r}"


@st.composite
def mutants(draw) -> bytes:
    """A real file with bit flips, a cut, bytes inserted, or one 16/32-bit length field changed."""
    data = bytearray(draw(st.sampled_from(SEED_FILES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "length16", "length32", "vr"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "length16" and at + 2 <= len(data):
            data[at:at + 2] = draw(st.sampled_from([0, 1, 0xFFFF, 0xFFFE, 0x8000])).to_bytes(2, "little")
        elif kind == "length32" and at + 4 <= len(data):
            data[at:at + 4] = draw(st.sampled_from([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFF0,
                                                    len(data)])).to_bytes(4, "little")
        elif kind == "vr":   # an element's VR replaced by one pydicom does not know, or a wrong one
            vrs = [m.start() for m in re.finditer(rb"(?<=..\x00.)(?:CS|DA|LO|PN|UI|SQ|US|OB|OW|IS|DS)", data)]
            if vrs:
                i = draw(st.sampled_from(vrs))
                data[i:i + 2] = draw(st.sampled_from([b"XX", b"\x00\x00", b"SQ", b"UN", b"OB", b"zz"]))
        if not data:
            break
    return bytes(data)


def _upload_each(fuzzed: Seeded, bodies: st.SearchStrategy[bytes], kind: str) -> None:
    """POST /instances of every generated body: no fault, and what it stored reads back."""
    srv = fuzzed.srv

    @MUTANTS
    @given(bodies)
    def case(data):
        r = srv.post("/instances", data, timeout=60)
        what = f"POST /instances of {kind} of {len(data)} bytes (sha256 {hashlib.sha256(data).hexdigest()})"
        assert_no_fault(r, what)
        assert_stored_readable(srv, r, what)
    case()
    assert_alive_and_intact(fuzzed)


def test_post_instances_mutants(fuzzed: Seeded):
    _upload_each(fuzzed, mutants(), "a mutated file")


@st.composite
def zips(draw) -> bytes:
    """ZIP uploads: mutated members, odd names (traversal, unicode, empty, duplicate), odd archives."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as z:
        for _ in range(draw(st.integers(0, 4))):
            name = draw(st.sampled_from(["a.dcm", "../../etc/x.dcm", "/abs.dcm", "dir/", "\u00e9\u4e2d.dcm", "",
                                         "a.dcm", "DICOMDIR", "x" * 300, "nested.zip"]) | st.text(max_size=20))
            member = draw(mutants() | st.sampled_from(SEED_FILES) | st.binary(max_size=64))
            try:
                z.writestr(name or "_", member)
            except (ValueError, UnicodeEncodeError, IndexError):
                pass     # a name zipfile cannot write (IndexError: "/" is empty once its slash is stripped)
    data = bytearray(buf.getvalue())
    if draw(st.booleans()) and len(data) > 4:   # the archive itself damaged
        at = draw(st.integers(4, len(data) - 1))
        if draw(st.booleans()):
            del data[at:]
        else:
            data[at] ^= 0xFF
    return bytes(data)


def test_zip_upload_mutants(fuzzed: Seeded):
    _upload_each(fuzzed, zips(), "a ZIP")


# ---------------------------------------------------------------------------- C-STORE

def test_c_store_mutants(fuzzed: Seeded, tmp_path: Path):
    """C-STORE of mutated datasets: raw bytes after an intact file meta, sent by pynetdicom from a
    file (it does not decode them), so the listener sees exactly the mutant."""
    from pynetdicom import StoragePresentationContexts

    srv = fuzzed.srv
    base = ct_instance(rows=8, cols=8)
    meta_end = _meta_end(base)

    ae = AE(ae_title="FUZZ")
    ae.requested_contexts = StoragePresentationContexts[:100]
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20

    answered: list[int] = []

    @settings(MUTANTS, max_examples=40)
    @given(st.data())
    def case(data):
        body = bytearray(base[meta_end:])
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(0, len(body) - 1))
            kind = data.draw(st.sampled_from(["flip", "cut", "len", "vr"]))
            if kind == "flip":
                body[at] ^= 1 << data.draw(st.integers(0, 7))
            elif kind == "cut":
                del body[max(at, 8):]
            elif kind == "len" and at + 2 <= len(body):
                body[at:at + 2] = data.draw(st.sampled_from([0xFFFF, 0, 1, 0x7FFF])).to_bytes(2, "little")
            elif kind == "vr":
                vrs = [m.start() for m in re.finditer(rb"(?<=....)(?:CS|DA|LO|PN|UI|US|IS|DS)", body)]
                if vrs:
                    i = data.draw(st.sampled_from(vrs))
                    body[i:i + 2] = b"XX"
        path = tmp_path / "mutant.dcm"
        path.write_bytes(base[:meta_end] + bytes(body))
        assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS")
        assert assoc.is_established
        try:
            status = assoc.send_c_store(path)
            # any status is fine (refused or stored), as long as there is one: no hang, no abort
            assert status is not None and "Status" in status, "C-STORE of a mutant got no response"
            answered.append(int(status.Status))
        except (ValueError, AttributeError, KeyError, NotImplementedError, UnboundLocalError):
            # pynetdicom could not read the mutant's meta or UIDs itself: nothing was sent (its
            # send_c_store raises UnboundLocalError when it finds no SOP class in the file)
            pass
        finally:
            if assoc.is_established:
                assoc.release()
    case()
    assert len(answered) >= 10, f"only {len(answered)} mutants reached the listener"   # the fuzz did fuzz
    assert_alive_and_intact(fuzzed)


def _meta_end(data: bytes) -> int:
    """Where the file meta group of a Part 10 file ends (after its group length's reach)."""
    length = int.from_bytes(data[140:144], "little")   # (0002,0000) UL value right after DICM + its header
    return 144 + length


# ---------------------------------------------------------------------------- a student's pass

@pytest.fixture(scope="module")
def student_server(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("fuzz-student")
    srv = Server(work / "srv", {"AuthenticationEnabled": True, "StudentAccess": "open",
                                "RegisteredUsers": {"teacher": "secret"}}).start()
    try:
        for name in SEEDS[:2]:
            r = srv.post("/instances", (TEST_FILES / name).read_bytes(),
                         headers={"Authorization": "Basic dGVhY2hlcjpzZWNyZXQ="})
            assert r.status == 200, r.body
        yield srv
    finally:
        srv.stop()


STUDENT_ROUTES = [rt for rt in _routes()]


def test_student_pass(student_server: Server, tmp_path: Path):
    """A student (nobody signed in, StudentAccess open) on every route: no 500, and no teacher-only
    route succeeds."""
    srv = student_server
    auth = {"Authorization": "Basic dGVhY2hlcjpzZWNyZXQ="}
    seeded = Seeded(srv)
    for level in seeded.ids:
        seeded.ids[level] = json.loads(srv.get(f"/{level}", headers=auth).body)
    seeded.qids = ["nothing"]
    seeded.uids = {"study": ["1.2.3"], "series": ["1.2.3"], "instance": ["1.2.3"]}

    @settings(FUZZ, max_examples=2 * len(STUDENT_ROUTES))
    @given(st.sampled_from(STUDENT_ROUTES), st.data())
    def case(route, data):
        method, pattern = route
        built = build_request(seeded, method, pattern, data.draw)
        if built is None:
            return
        path, body = built
        r = srv.request(method, path, body, timeout=30)
        assert_no_fault(r, f"student {method} {path}")
        if ROUTE_NEEDS[route] is TEACHER:
            assert r.status >= 400, f"student {method} {path} -> {r.status}: a teacher-only route succeeded"

    case()
    assert srv.get("/system").status == 200
    assert echo(srv) == 0


def test_socket_garbage_then_alive(fuzzed: Seeded):
    """Raw garbage on the HTTP port: answered or closed, and the server still serves."""
    srv = fuzzed.srv
    for junk in [b"\x00" * 100, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                 b"POST /tools/find HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]:
        with socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as s:
            s.sendall(junk)
            try:
                s.recv(4096)
            except (TimeoutError, ConnectionError):
                pass
    assert_alive_and_intact(fuzzed)



# ---------------------------------------------------------------------------- what the fuzz found

def _found(seeded: Seeded) -> list[tuple[str, str, bytes | None]]:
    """The requests that answered 500 before their fixes (by the fuzz above, or found reading the
    routes it pointed at), each now a 4xx."""
    ct = seeded.ids["instances"][0]
    st_, se, sop = seeded.uids["study"][0], seeded.uids["series"][0], seeded.uids["instance"][0]
    inst = f"/dicom-web/studies/{st_}/series/{se}/instances/{sop}"
    qid = seeded.qids[0]
    wado = f"/wado?requestType=WADO&studyUID={st_}&seriesUID={se}&objectUID={sop}"
    return [
        ("GET", f"/instances/{ct}/preview?quality=nan", None),
        ("GET", f"/instances/{ct}/rendered?quality=1000", None),
        ("GET", f"/instances/{ct}/preview?width=inf", None),
        ("GET", f"/instances/{ct}/frames/0/rendered?window-center=-inf", None),
        ("GET", f"/instances/{ct}/frames/%C2%B2/preview", None),
        ("POST", f"/queries/{qid}/retrieve", b'"\\u0000"'),
        ("POST", f"/queries/{qid}/answers/0/retrieve", '{"TargetAet": "\u00e9"}'.encode()),
        ("POST", f"/queries/{qid}/answers/0/retrieve", b'{"TargetAet": 5}'),
        ("POST", "/modalities/loop/move", b'{"Level": "Study", "Resources": 5}'),
        ("POST", "/modalities/loop/move", b'{"Level": "Study", "Resources": [{"NoSuchKeyword": "1"}]}'),
        ("POST", "/modalities/loop/move", b'{"Level": "Study", "Resources": [{"StudyInstanceUID": 1}]}'),
        ("POST", "/modalities/loop/query", b'{"Level": "Study", "Query": {"PixelData": "x"}}'),
        ("POST", "/modalities/loop/query", b'{"Level": "Study", "Query": {"PatientName": ["a"]}}'),
        ("POST", "/modalities/loop/query", b'{"Level": "Study", "Query": {"NoSuchKeyword": "x"}}'),
        ("POST", "/tools/find", b"\xff\xfe"),
        ("POST", "/tools/find", b"[" * 100000),
        ("POST", "/tools/find", b'{"Level": "Study", "Query": {}, "Limit": 99999999999999999999}'),
        ("POST", "/tools/find", b'{"Level": "Study", "Query": {}, "Since": NaN}'),
        ("POST", "/tools/lookup", b"\xff"),
        ("POST", "/tools/find", b'{"Level": "Study", "Query": {"PatientName": "\\ud800"}}'),
        ("PUT", "/modalities/fuzz-bytes", b"\xff"),
        ("PUT", f"/instances/{ct}/metadata/Note", b"\xff"),
        ("PUT", f"/patients/{seeded.ids['patients'][0]}/protected", b"\xff"),
        ("POST", f"/studies/{seeded.ids['studies'][0]}/anonymize", b"[" * 100000),
        ("GET", "/patients?limit=99999999999999999999", None),
        ("GET", "/patients?since=%C2%B2", None),
        ("GET", "/changes?limit=99999999999999999999", None),
        ("GET", "/dicom-web/studies?limit=%C2%B2", None),
        ("GET", "/dicom-web/studies?offset=99999999999999999999", None),
        ("GET", "/dicom-web/studies/%2A/metadata", None),
        ("GET", "/dicom-web/studies/%2A/series", None),
        ("GET", f"/dicom-web/studies/{st_}/series/1.2%5C3/instances", None),
        ("GET", f"{inst}/rendered?viewport=inf,1", None),
        ("GET", f"{inst}/rendered?window=nan,1", None),
        ("GET", f"{wado}&frameNumber=x", None),
        ("GET", f"{wado}&windowCenter=inf&windowWidth=1", None),
    ]


def test_found_requests_answer_4xx(fuzzed: Seeded):
    for method, path, body in _found(fuzzed):
        r = fuzzed.srv.request(method, path, body, timeout=30)
        assert 400 <= r.status < 500, (method, path, r.status, r.body[:300])
        assert_no_fault(r, f"{method} {path}")


# ---------------------------------------------------------------------------- an empty C-FIND identifier

def _find_empty(srv: Server, pdv_for_empty: bool) -> list:
    """A C-FIND whose identifier has no element at all, with a bounded DIMSE timeout. pynetdicom
    sends a command saying a data set follows and then no data PDV for an empty one; with
    ``pdv_for_empty``, the client sends it as one empty last fragment (as a peer may)."""
    from pynetdicom import dimse_messages
    from pynetdicom.pdu_primitives import P_DATA
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as StudyFind

    real = dimse_messages.DIMSEMessage.encode_msg

    def encode_msg(self, context_id, max_pdu_length):
        yield from real(self, context_id, max_pdu_length)
        if pdv_for_empty and self.data_set is not None and not self.data_set.getvalue() \
                and self.command_set.CommandDataSetType != 0x0101:
            p = P_DATA()
            p.presentation_data_value_list.append((context_id, b"\x02"))   # last data fragment, empty
            yield p

    ae = AE(ae_title="EMPTYFIND")
    ae.add_requested_context(StudyFind)
    ae.acse_timeout = ae.network_timeout = 10
    # the bound: an identifier never answered fails here, not after 30 s; without a data PDV the
    # listener waits pynetdicom_patches.IDENTIFIER_WAIT (2 s) for one, then answers
    ae.dimse_timeout = 10
    dimse_messages.DIMSEMessage.encode_msg = encode_msg
    try:
        assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS")
        assert assoc.is_established
        try:
            return [(int(s.Status) if s is not None and "Status" in s else None,
                     s.get("ErrorComment") if s is not None else None) for s, _ in assoc.send_c_find(Dataset(), StudyFind)]
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        dimse_messages.DIMSEMessage.encode_msg = real


@pytest.mark.parametrize("pdv_for_empty", [True, False], ids=["empty-data-pdv", "no-data-pdv"])
def test_empty_c_find_identifier_answered(fuzzed: Seeded, pdv_for_empty: bool):
    """PS3.4 C.4.1.1.3: the identifier holds the Query/Retrieve Level; without it the find fails
    with 0xA900 (identifier does not match SOP class), answered at once. Orthanc (DCMTK) does
    not answer the one without a data PDV, and answers the empty PDV 0xC000 'C-FIND request
    without the tag 0008,0052'."""
    got = _find_empty(fuzzed.srv, pdv_for_empty)
    assert got == [(0xA900, "the identifier has no QueryRetrieveLevel")], got
    assert echo(fuzzed.srv) == 0


def _ingest_found() -> list[tuple[str, bytes]]:
    """Uploads the fuzz found answered 500, made by hand so that they are tried on every run (the
    mutants above find them only now and then): ingest's (archive/dicomfile.py, codec/part10.py,
    archive/zipimport.py), each a 4xx once refused there."""
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    sop = str(pydicom.dcmread(io.BytesIO(ct), stop_before_pixels=True).SOPInstanceUID).encode()
    at = ct.rindex(sop)                                   # the data set's SOP Instance UID (the meta has it first)
    uid_not_ascii = ct[:at + 1] + b"\xff" + ct[at + 2:]
    at = ct.index(b"\x10\x00\x20\x00LO")                   # (0010,0020) PatientID, explicit VR
    patient_id_xx = ct[:at + 4] + b"XX" + ct[at + 6:]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.dcm", ct)
    data = bytearray(buf.getvalue())
    end = data.rindex(b"PK\x05\x06")                      # the central directory's offset, made too large:
    offset = int.from_bytes(data[end + 16:end + 20], "little")    # zipfile then seeks before the start
    data[end + 16:end + 20] = (offset + 1000).to_bytes(4, "little")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.dcm", ct)
    damaged = bytearray(buf.getvalue())
    start = 30 + len("a.dcm")                             # the member's deflated data, damaged: zlib.error
    damaged[start + 100:start + 116] = b"\xff" * 16       # ("invalid distance too far back"), not a CRC error
    return [("a SOP Instance UID with a byte that is not ASCII", uid_not_ascii),
            ("a PatientID whose VR is XX", patient_id_xx),
            ("a ZIP whose central directory offset is past its place", bytes(data)),
            ("a ZIP whose deflated member is damaged", bytes(damaged))]


@pytest.mark.parametrize("case", range(len(_ingest_found())), ids=[c for c, _ in _ingest_found()])
def test_found_uploads_answer_4xx(fuzzed: Seeded, case: int):
    what, data = _ingest_found()[case]
    r = fuzzed.srv.post("/instances", data, timeout=60)
    assert_no_fault(r, f"POST /instances of {what}")
    assert_stored_readable(fuzzed.srv, r, what)
