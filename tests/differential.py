"""The differential test against a real Orthanc: one corpus of requests, sent to pipacs and to an
Orthanc loaded with the same files; the answers are normalised and compared, and every difference
must be one that ``tests/orthanc_differences.json`` accepts, with its reason.

The corpus is built from what Orthanc says of itself (``Orthanc --openapi``: every documented
route, with the documented query options), from pipacs's own role table, and from bad requests
(unknown IDs at every level, IDs of the wrong level, malformed bodies, repeated slashes); and, for
DICOM, C-FIND at every level through pynetdicom. A difference is named
``METHOD route :: kind :: where`` (``GET /patients/{id} :: json-missing-key :: $.Labels``), the name
the accepted list matches, ``*`` standing for anything.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCEPTED_FILE = Path(__file__).with_name("orthanc_differences.json")

# Keys whose values differ between any two servers, whatever they run: times, versions, file names.
VOLATILE_KEYS = frozenset({"LastUpdate", "FileUuid", "Date", "ApiVersion", "Version", "DatabaseVersion",
                           "DatabaseBackendPlugin", "StorageAreaPlugin", "Name", "DicomAet", "DicomPort",
                           "HttpPort", "PluginsEnabled", "IsHttpServerSecure", "StorageCompression",
                           "OverwriteInstances", "CheckRevisions", "MaximumStorageSize",
                           "MaximumPatientCount", "MaximumStorageMode", "UserMetadata",
                           "HasLabels", "Capabilities", "ReadOnly", "DicomTlsEnabled"})

# Placeholders of Orthanc's documented routes, and what stands for each in a request.
LEVEL_OF_PREFIX = {"patients": "patient", "studies": "study", "series": "series", "instances": "instance"}


@dataclass(frozen=True)
class Case:
    """One request, sent as it is to both servers; ``route`` names it in the accepted list."""
    method: str
    path: str
    route: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    quick: bool = False

    @property
    def name(self) -> str:
        return f"{self.method} {self.route}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    base: str = ""       # the server's own address, as it writes it in URLs

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Difference:
    case: str
    kind: str
    where: str
    ours: str = ""
    theirs: str = ""

    @property
    def name(self) -> str:
        return f"{self.case} :: {self.kind} :: {self.where}"

    def __str__(self) -> str:
        return f"{self.name}  (pipacs: {self.ours}; Orthanc: {self.theirs})"


def send(port: int, case: Case, timeout: float = 60) -> Answer:
    """The request exactly as the case spells it (http.client: no normalisation of the path)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(case.method, case.path, body=case.body, headers=dict(case.headers))
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read(), f"http://127.0.0.1:{port}")
    finally:
        conn.close()


# ------------------------------------------------------------------ comparing

def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
    return text if len(text) <= 120 else text[:117] + "..."


# DICOM JSON items (QIDO-RS answers, metadata) are matched by their UID, not their place
ITEM_KEYS = ("ID", "00080018", "0020000E", "0020000D", "(0008,0018)", "(0020,000E)", "(0020,000D)")


def _item_key(x: Any) -> str | None:
    if not isinstance(x, dict):
        return None
    for k in ITEM_KEYS:
        v = x.get(k)
        if isinstance(v, str):
            return v
        if isinstance(v, dict) and isinstance(v.get("Value"), list) and v["Value"]:
            return f"{k}={v['Value'][0]}"
    return None


def compare_json(case: str, ours: Any, theirs: Any, where: str = "$",
                 ignored: frozenset[str] = frozenset()) -> list[Difference]:
    """Key by key and value by value; lists as Orthanc's are unordered (of IDs, of resources), their
    items matched by ID or UID where they have one. ``ignored`` keys are not compared (the names of
    private tags, which come from each toolkit's own dictionary)."""
    if type(ours) is not type(theirs) and not (isinstance(ours, (int, float)) and isinstance(theirs, (int, float))):
        return [Difference(case, "json-type", where, type(ours).__name__, type(theirs).__name__)]
    if isinstance(ours, dict):
        out: list[Difference] = []
        skip = VOLATILE_KEYS | ignored
        missing = sorted(set(theirs) - set(ours) - skip)
        extra = sorted(set(ours) - set(theirs) - skip)
        for k in missing:
            out.append(Difference(case, "json-missing-key", f"{where}.{k}", "absent", _short(theirs[k])))
        for k in extra:
            out.append(Difference(case, "json-extra-key", f"{where}.{k}", _short(ours[k]), "absent"))
        for k in sorted(set(ours) & set(theirs) - skip):
            out += compare_json(case, ours[k], theirs[k], f"{where}.{k}", ignored)
        return out
    if isinstance(ours, list):
        if len(ours) != len(theirs):
            return [Difference(case, "json-length", where, str(len(ours)), str(len(theirs)))]
        keys_ours, keys_theirs = [_item_key(x) for x in ours], [_item_key(y) for y in theirs]
        if None not in keys_ours and None not in keys_theirs and len(set(keys_theirs)) == len(theirs):
            by_key = dict(zip(keys_ours, ours, strict=True))
            out = []
            for k, y in zip(keys_theirs, theirs, strict=True):
                x = by_key.get(k)
                out += (compare_json(case, x, y, f"{where}[*]", ignored) if x is not None
                        else [Difference(case, "json-value", f"{where}[*]", "absent", k or "")])
            return _unique(out)
        key = lambda v: json.dumps(v, sort_keys=True)
        out = []
        for x, y in zip(sorted(ours, key=key), sorted(theirs, key=key), strict=True):
            out += compare_json(case, x, y, f"{where}[*]", ignored)
        return _unique(out)
    if ours != theirs:
        return [Difference(case, "json-value", where, _short(ours), _short(theirs))]
    return []


def _unbased(v: Any, base: str) -> Any:
    """``v`` with the server's own address in its strings written ``{base}``."""
    if isinstance(v, str):
        return v.replace(base, "{base}") if base else v
    if isinstance(v, list):
        return [_unbased(x, base) for x in v]
    if isinstance(v, dict):
        return {k: _unbased(x, base) for k, x in v.items()}
    return v


def _unique(diffs: list[Difference]) -> list[Difference]:
    """One difference per name: the same key missing from 300 answers is one finding."""
    seen: dict[str, Difference] = {}
    for d in diffs:
        seen.setdefault(d.name, d)
    return list(seen.values())


def compare(case: Case, ours: Answer, theirs: Answer, ignored: frozenset[str] = frozenset()) -> list[Difference]:
    """Status, then the headers a client counts on, then the body when both answered with JSON (each
    server's own address in it, as in DICOMweb's retrieve URLs, written ``{base}``)."""
    name = case.name
    if ours.status != theirs.status:
        return [Difference(name, "status", "", str(ours.status), str(theirs.status))]
    out: list[Difference] = []
    if ours.status == 405:
        allow = lambda a: sorted(m.strip() for m in a.headers.get("allow", "").split(",") if m.strip())
        if allow(ours) != allow(theirs):
            out.append(Difference(name, "allow", "", ",".join(allow(ours)), ",".join(allow(theirs))))
    if ours.status >= 300:
        # error messages differ by design (ours says what went wrong in words), but the Orthanc
        # error code is what scripts test (orthanc-api-client: 15 is "not a DICOM file")
        def code(a: Answer) -> Any:   # Orthanc sends its error object without a Content-Type
            try:
                body = a.json() if a.body.lstrip().startswith(b"{") else None
            except ValueError:
                return None
            return body.get("OrthancStatus") if isinstance(body, dict) else None
        mine, theirs_code = code(ours), code(theirs)
        if theirs_code is not None and mine != theirs_code:
            out.append(Difference(name, "orthanc-status", "", str(mine), str(theirs_code)))
        return out
    if ours.media_type != theirs.media_type:
        out.append(Difference(name, "content-type", "", ours.media_type, theirs.media_type))
        return out
    if ("content-disposition" in ours.headers) != ("content-disposition" in theirs.headers):
        out.append(Difference(name, "content-disposition", "", ours.headers.get("content-disposition", "absent"),
                              theirs.headers.get("content-disposition", "absent")))
    if theirs.media_type in ("application/json", "application/dicom+json"):
        try:
            a, r = ours.json(), theirs.json()
        except ValueError as e:
            return out + [Difference(name, "json-invalid", "", str(e), "")]
        out += compare_json(name, _unbased(a, ours.base), _unbased(r, theirs.base), ignored=ignored)
    return out


# ------------------------------------------------------------------ the accepted differences

@dataclass
class Accepted:
    """One accepted difference: ``match`` is a difference's name where ``*`` stands for anything
    (every other character, brackets included, stands for itself)."""
    match: str
    kind: str
    reason: str
    used: int = 0

    def matches(self, name: str) -> bool:
        pattern = ".*".join(re.escape(part) for part in self.match.split("*"))
        return re.fullmatch(pattern, name) is not None


def load_accepted(path: Path = ACCEPTED_FILE) -> list[Accepted]:
    doc = json.loads(path.read_text())
    return [Accepted(e["match"], e["kind"], e["reason"]) for e in doc["differences"]]


def unaccepted(diffs: Iterable[Difference], accepted: list[Accepted]) -> list[Difference]:
    """The differences no entry accepts; counts each entry's uses (an entry never used is stale)."""
    out = []
    for d in diffs:
        hit = next((a for a in accepted if a.matches(d.name)), None)
        if hit is None:
            out.append(d)
        else:
            hit.used += 1
    return out


KIND_TITLES = {
    "better": "Answers that say more than Orthanc's",
    "not offered": "Routes and options pipacs does not offer",
    "older Orthanc": "Where the Orthanc compared with (Debian's 1.10) predates what pipacs follows",
    "by design": "Different on purpose",
    "to do": "Known differences still to remove",
}


def readme_section(accepted: list[Accepted]) -> str:
    """The README's "Differences from Orthanc" section, made from the accepted list."""
    lines = ["## Differences from Orthanc", "",
             "Measured by the differential test (`tests/test_differential.py`): the same requests to pipacs and to",
             "a real Orthanc holding the same files. Every difference it finds must be listed in",
             "`tests/orthanc_differences.json` with its reason; this section is made from that file",
             "(`python -m tests.differential --readme`).", ""]
    for kind, title in KIND_TITLES.items():
        entries = [a for a in accepted if a.kind == kind]
        if not entries:
            continue
        lines += [f"### {title}", ""]
        lines += [f"- `{a.match}`: {a.reason}" for a in entries]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------ the corpus

def orthanc_openapi() -> dict[str, Any]:
    """Orthanc's own description of its REST API (``Orthanc --openapi``), from the installed Orthanc."""
    exe = shutil.which("Orthanc")
    if exe is None:
        raise RuntimeError("Orthanc is not installed (Debian package orthanc)")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "openapi.json"
        subprocess.run([exe, f"--openapi={out}"], capture_output=True, check=True, timeout=60)
        return json.loads(out.read_text())


@dataclass
class Identifiers:
    """Which stored resources stand for a route's placeholders."""
    patient: str
    study: str
    series: str
    instance: str
    multiframe: str = ""
    unknown: str = "01234567-89abcdef-01234567-89abcdef-01234567"
    extra: dict[str, str] = field(default_factory=dict)


def _fill(route: str, ids: Identifiers) -> str | None:
    """A route with its placeholders replaced, or None when nothing stands for one."""
    parts = route.split("/")
    out = []
    for i, p in enumerate(parts):
        m = re.fullmatch(r"\{(\w+)\}", p)
        if not m:
            out.append(p)
            continue
        name = m.group(1)
        prev = parts[i - 1] if i else ""
        if name == "id" and prev in LEVEL_OF_PREFIX:
            out.append(getattr(ids, LEVEL_OF_PREFIX[prev]))
        elif name in ("frame", "index"):
            out.append("0")
        elif name in ids.extra:
            out.append(ids.extra[name])
        elif name == "id":
            out.append("unknown-name")
        else:
            return None
    return "/".join(out)


def openapi_cases(openapi: dict[str, Any], ids: Identifiers) -> Iterator[Case]:
    """GET of every documented route (with no option, then each documented option alone), and of every
    documented route that Orthanc's description lists under another method only (its 405, or its
    answer: Orthanc 1.10's description keeps one method a route)."""
    for route, methods in openapi["paths"].items():
        path = _fill(route, ids)
        if path is None:
            continue
        yield Case("GET", path, route, quick=route.count("/") <= 3)
        for op in methods.values():
            for p in op.get("parameters", []):
                if p.get("in") != "query":
                    continue
                flag = p["name"]
                schema = p.get("schema", {})
                value = {"boolean": "", "number": "1"}.get(schema.get("type", ""), "")
                q = flag if value == "" else f"{flag}={value}"
                yield Case("GET", f"{path}?{q}", f"{route}?{flag}")
            break


def resource_cases(ids: Identifiers) -> Iterator[Case]:
    """The resource routes at every level: lists and their options, each resource, its relatives,
    unknown IDs and IDs of the wrong level."""
    for prefix, level in LEVEL_OF_PREFIX.items():
        yield Case("GET", f"/{prefix}", f"/{prefix}", quick=True)
        for q in ("expand", "since=0&limit=2", "since=0&limit=0", "limit=1", "expand&requestedTags=PatientName"):
            yield Case("GET", f"/{prefix}?{q}", f"/{prefix}?{q}")
        own = getattr(ids, level)
        yield Case("GET", f"/{prefix}/{own}", f"/{prefix}/{{id}}", quick=True)
        yield Case("GET", f"/{prefix}/{ids.unknown}", f"/{prefix}/{{unknown}}", quick=True)
        yield Case("GET", f"/{prefix}/not-an-id", f"/{prefix}/{{not-an-id}}")
        for other in LEVEL_OF_PREFIX.values():
            if other != level:
                yield Case("GET", f"/{prefix}/{getattr(ids, other)}", f"/{prefix}/{{{other}-id}}")
        for rel in ("patient", "study", "series", "instances", "studies", "shared-tags", "shared-tags?simplify",
                    "instances-tags", "module", "module?simplify", "patient-module", "statistics", "labels",
                    "metadata", "metadata?expand", "attachments"):
            yield Case("GET", f"/{prefix}/{own}/{rel}", f"/{prefix}/{{id}}/{rel}")
    yield Case("GET", f"/instances/{ids.instance}/tags?short", "/instances/{id}/tags?short", quick=True)
    for route in ("tags", "simplified-tags", "header", "header?simplify", "content", "content/0010-0010",
                  "content/PatientName", "content/7fe0-0010", "content/7fe0-0010/0", "content/0008-1140",
                  "frames", "metadata/TransferSyntax", "metadata/SopClassUid", "metadata/RemoteAET",
                  "metadata/NoSuchName", "tags?ignore-length=0010-0010"):
        yield Case("GET", f"/instances/{ids.instance}/{route}", f"/instances/{{id}}/{route}")


def tool_cases(ids: Identifiers) -> Iterator[Case]:
    """The tools with the bodies a script sends, good and bad."""
    def post(route: str, body: Any, quick: bool = False, label: str = "") -> Case:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return Case("POST", route, f"{route} {label}".strip(), raw, quick=quick)

    finds = {
        "study-all": {"Level": "Study", "Query": {}},
        "study-name": {"Level": "Study", "Query": {"PatientName": "*"}, "Expand": True},
        "series-modality": {"Level": "Series", "Query": {"Modality": "CT\\MR"}},
        "instance-limit": {"Level": "Instance", "Query": {}, "Limit": 2},
        "patient-case": {"Level": "Patient", "Query": {"PatientName": "*c*"}, "CaseSensitive": False},
        "study-date-range": {"Level": "Study", "Query": {"StudyDate": "20000101-"}},
        "bad-level": {"Level": "Nowhere", "Query": {}},
        "no-query": {"Level": "Study"},
        "query-not-object": {"Level": "Study", "Query": []},
        "value-not-string": {"Level": "Study", "Query": {"PatientID": 12}},
        "unknown-tag": {"Level": "Study", "Query": {"NoSuchTag": "x"}},
        "limit-negative": {"Level": "Study", "Query": {}, "Limit": -1},
    }
    for label, body in finds.items():
        yield post("/tools/find", body, quick=label in ("study-all", "bad-level"), label=label)
    yield post("/tools/find", b"{not json", label="malformed")
    yield post("/tools/find", b"", label="empty")
    yield post("/tools/lookup", ids.extra.get("study_uid", "1.2.3").encode(), quick=True, label="study-uid")
    yield post("/tools/lookup", b"nothing-like-this", label="unknown")
    yield post("/tools/create-archive", [], label="empty-list")
    yield post("/tools/create-archive", {"Resources": []}, label="empty-resources")
    yield post("/tools/create-archive", {"Resources": [ids.unknown]}, label="unknown")
    yield post("/tools/create-media", [], label="empty-list")
    for route in ("/tools", "/tools/generate-uid?level=study", "/tools/default-encoding", "/tools/now",
                  "/tools/dicom-conformance", "/tools/labels", "/plugins", "/system", "/statistics",
                  "/changes", "/changes?limit=2", "/changes?last", "/exports", "/jobs", "/peers", "/modalities",
                  "/modalities?expand", "/queries"):
        yield Case("GET", route, route, quick=route in ("/system", "/statistics", "/tools"))


def system_tool_cases(ids: Identifiers) -> Iterator[Case]:
    """The system tools, plugins, metadata per level and paging, good requests and bad. Nothing
    here changes what either server answers afterwards (the DefaultEncoding is set to its default)."""
    def body(method: str, route: str, raw: bytes, label: str, quick: bool = False) -> Case:
        return Case(method, route, f"{route} {label}", raw, quick=quick)

    for q in ("patient", "study", "series", "instance", "Study", "instances", "bad", ""):
        path = f"/tools/generate-uid?level={q}" if q else "/tools/generate-uid"
        yield Case("GET", path, path, quick=q == "bad")
    for route in ("/tools/now-local", "/tools/accepted-transfer-syntaxes", "/tools/unknown-sop-class-accepted",
                  "/plugins/", "/plugins/dicom-web", "/plugins/no-such-plugin"):
        yield Case("GET", route, route, quick=route == "/plugins/dicom-web")
    yield Case("PUT", "/plugins", "/plugins", b"")
    # DefaultEncoding: only its default is set, in both spellings; a bad name is refused
    for label, raw in (("Latin1", b"Latin1"), ("latin1", b"latin1"), ("unknown", b"NoSuchEncoding"),
                       ("trailing-space", b"Latin1 "), ("empty", b"")):
        yield body("PUT", "/tools/default-encoding", raw, label)
    yield Case("GET", "/tools/default-encoding", "/tools/default-encoding [after PUT]")
    # C-ECHO to a node named in the body: a port nothing listens on (1), and bodies that name no node
    refused = {"AET": "NOBODY", "Host": "127.0.0.1", "Port": 1}
    for label, raw in (("refused", json.dumps(refused).encode()),
                       ("refused-array", json.dumps(["NOBODY", "127.0.0.1", 1]).encode()),
                       ("refused-timeout", json.dumps(refused | {"Timeout": 2}).encode()),
                       ("port-as-string", json.dumps(refused | {"Port": "1"}).encode()),
                       ("empty-object", b"{}"), ("malformed", b"{not json"), ("empty", b""),
                       ("modality-name", b"diff"), ("modality-name-string", b'"diff"'), ("list-of-one", b"[1]"),
                       ("no-port", json.dumps({"AET": "NOBODY", "Host": "127.0.0.1"}).encode()),
                       ("port-too-large", json.dumps(refused | {"Port": 99999}).encode()),
                       ("port-negative", json.dumps(refused | {"Port": -1}).encode()),
                       ("timeout-not-number", json.dumps(refused | {"Timeout": "x"}).encode()),
                       ("check-find-refused", json.dumps(refused | {"CheckFind": True}).encode()),
                       ("check-find-not-bool", json.dumps(refused | {"CheckFind": "yes"}).encode())):
        yield body("POST", "/tools/dicom-echo", raw, label, quick=label == "empty-object")
    # empty archives, and bodies that are not lists of resources
    for route in ("/tools/create-archive", "/tools/create-media", "/tools/create-media-extended"):
        for label, raw in (("empty-list", b"[]"), ("empty-resources", b'{"Resources": []}'),
                           ("no-resources", b"{}"), ("empty-body", b"")):
            yield body("POST", route, raw, label)
    # metadata of every level, each name alone
    for prefix, level in LEVEL_OF_PREFIX.items():
        own = getattr(ids, level)
        for name in ("LastUpdate", "RemoteAET", "CalledAET", "HttpUsername", "Origin", "NoSuchName"):
            yield Case("GET", f"/{prefix}/{own}/metadata/{name}", f"/{prefix}/{{id}}/metadata/{name}")
        yield Case("GET", f"/{prefix}/{ids.unknown}/metadata", f"/{prefix}/{{unknown}}/metadata")
    # the bare frame route (Orthanc's alias of .../preview), a frame that is not there, one that is no number
    for frame in ("0", "99", "x"):
        yield Case("GET", f"/instances/{ids.instance}/frames/{frame}", f"/instances/{{id}}/frames/{frame}")
    # paging: limit=0 is none, with since at and past the end
    for q in ("since=0&limit=0", "since=1&limit=0", "since=100000&limit=0", "since=100000&limit=5"):
        yield Case("GET", f"/instances?{q}", f"/instances?{q}")


def path_cases(ids: Identifiers) -> Iterator[Case]:
    """Paths as clients spell them: repeated slashes, a trailing slash."""
    for path in ("//patients", "///patients", "/system//", "/patients/", f"//studies/{ids.study}",
                 f"/studies//{ids.study}", f"/instances/{ids.instance}//tags?short", "/patients//?expand",
                 f"/series/{ids.series}/instances/"):
        route = path.replace(ids.study, "{id}").replace(ids.series, "{id}").replace(ids.instance, "{id}")
        yield Case("GET", path, route, quick=True)


def method_cases(ids: Identifiers) -> Iterator[Case]:
    """Methods a route does not take, and the overrides Orthanc honours."""
    yield Case("PUT", "/system", "/system", b"{}")
    yield Case("POST", f"/patients/{ids.patient}", "/patients/{id}", b"{}")
    yield Case("PUT", "/tools/find", "/tools/find", b"{}")
    yield Case("DELETE", "/instances", "/instances")
    yield Case("POST", "/system?_method=GET", "/system?_method=GET", b"")
    for named in ("GET", "POST", "PUT", "delete", "PATCH", ""):
        yield Case("POST", "/system", f"/system [X-HTTP-Method-Override: {named}]", b"",
                   (("X-HTTP-Method-Override", named),), quick=named == "GET")
    yield Case("GET", "/system", "/system [X-HTTP-Method-Override: GET]", None, (("X-HTTP-Method-Override", "GET"),))
    yield Case("POST", "/tools/find", "/tools/find [X-HTTP-Method-Override: PUT]", b"{}",
               (("X-HTTP-Method-Override", "PUT"),))
    for named in ("GET", "DELETE", "put", "POST", ""):
        yield Case("GET", f"/system?_method={named}", f"/system?_method={named}")
    # an override of an unknown resource: what it names is done (here: nothing to delete)
    yield Case("GET", f"/instances/{ids.unknown}?_method=DELETE", "/instances/{unknown}?_method=DELETE")
    yield Case("POST", f"/studies/{ids.unknown}", "/studies/{unknown} [X-HTTP-Method-Override: DELETE]", b"",
               (("X-HTTP-Method-Override", "DELETE"),))


def dicomweb_cases(ids: Identifiers) -> Iterator[Case]:
    """DICOMweb reads as OHIF and dicomweb-client make them, with the Accept they send."""
    st, se, sop = (ids.extra.get(k, "1.2.3") for k in ("study_uid", "series_uid", "sop_uid"))
    json_accept = (("Accept", "application/dicom+json"),)
    for route, path in (
            ("/dicom-web/studies", "/dicom-web/studies"),
            ("/dicom-web/studies?limit", "/dicom-web/studies?limit=1"),
            ("/dicom-web/studies?PatientName", "/dicom-web/studies?PatientName=*"),
            ("/dicom-web/studies?includefield", "/dicom-web/studies?includefield=00081030"),
            ("/dicom-web/series", "/dicom-web/series"),
            ("/dicom-web/instances", "/dicom-web/instances"),
            ("/dicom-web/studies/{study}/series", f"/dicom-web/studies/{st}/series"),
            ("/dicom-web/studies/{study}/metadata", f"/dicom-web/studies/{st}/metadata"),
            ("/dicom-web/studies/{study}/series/{series}/instances", f"/dicom-web/studies/{st}/series/{se}/instances"),
            ("/dicom-web/studies/{study}/series/{series}/metadata", f"/dicom-web/studies/{st}/series/{se}/metadata"),
            ("/dicom-web/studies/{unknown}/series", "/dicom-web/studies/1.2.3.4.5.6.7/series"),
            ("/dicom-web/studies/{not-a-uid}/metadata", "/dicom-web/studies/not..a..uid/metadata")):
        yield Case("GET", path, route, headers=json_accept, quick=route == "/dicom-web/studies")
    inst = f"/dicom-web/studies/{st}/series/{se}/instances/{sop}"
    for route, accept in (("", "multipart/related; type=\"application/dicom\""),
                          ("/metadata", "application/dicom+json"),
                          ("/metadata [Accept: image/png]", "image/png"),
                          ("/rendered", "image/jpeg"),
                          ("/rendered [Accept: text/html]", "text/html"),
                          ("/frames/1", "multipart/related; type=\"application/octet-stream\"")):
        sub = route.split(" ")[0]
        yield Case("GET", inst + sub, "/dicom-web/studies/{study}/series/{series}/instances/{instance}" + route,
                   headers=(("Accept", accept),))
    yield Case("GET", f"/wado?requestType=WADO&studyUID={st}&seriesUID={se}&objectUID={sop}&contentType=application/dicom",
               "/wado?requestType&studyUID&seriesUID&objectUID&contentType=dicom")
    yield Case("GET", f"/wado?requestType=WADO&objectUID={sop}&contentType=image/jpeg", "/wado?objectUID-only")
    yield Case("GET", "/wado?requestType=WADO", "/wado?no-uid")


# documented JSON routes not sent bad bodies: a body Orthanc does not parse first would change its
# configuration for the rest of the run
_NO_BAD_BODIES = ("/tools/accepted-transfer-syntaxes",)


def bad_body_cases(openapi: dict[str, Any], ids: Identifiers) -> Iterator[Case]:
    """Every documented route that takes a JSON body, sent one that is not JSON and one of the wrong
    JSON type (a string): both servers must refuse them alike, and never with a 500. Bodies that
    would be obeyed (an empty one is "defaults" to /anonymize) are not sent: they would change what
    the other cases read."""
    for route, methods in openapi["paths"].items():
        if route in _NO_BAD_BODIES:
            continue
        path = _fill(route, ids)
        if path is None:
            continue
        if route.startswith("/modalities/{id}"):   # a modality both know: the body is what is refused
            path = path.replace("unknown-name", ids.extra.get("modality", "unknown-name"), 1)
        for method, op in methods.items():
            if method not in ("post", "put") or "application/json" not in op.get("requestBody", {}).get("content", {}):
                continue
            for label, body in (("not-json", b"{not json"), ("json-string", b'"text"')):
                yield Case(method.upper(), path, f"{route} {label}", body,
                           quick=route in ("/studies/{id}/anonymize",) and label == "not-json")


def bad_input_cases(ids: Identifiers) -> Iterator[Case]:
    """The values a careless or crafted script sends: huge and negative limits, numbers that are not
    numbers, invalid UIDs, transfer syntaxes no one can produce, unknown tags in requested tags."""
    huge = "99999999999999999999999"
    for q in (f"since=0&limit={huge}", f"since={huge}&limit=1", "since=-1&limit=1", "since=0&limit=-5",
              "since=x&limit=1", "since=0&limit=1.5", "expand=maybe", "requestedTags=NoSuchTag&expand",
              "requestedTags=0010,0010;0008,1030&expand"):
        yield Case("GET", f"/studies?{q}", f"/studies?{q.replace(huge, 'HUGE')}", quick=q.startswith("since=0&limit=9"))
    for body in ({"Level": "Study", "Query": {}, "Limit": int(huge)}, {"Level": "Study", "Query": {}, "Since": -3},
                 {"Level": "Study", "Query": {}, "Limit": "2"}, {"Level": "Study", "Query": {}, "Expand": "yes"},
                 {"Level": "Study", "Query": {"StudyInstanceUID": "not..a..uid"}},
                 {"Level": "Study", "Query": {"StudyDate": "2024-01-01"}},
                 {"Level": "Study", "Query": {"StudyDate": "20240101-20230101"}},
                 {"Level": "Study", "Query": {"PatientName": "x" * 5000}},
                 {"Level": "Study", "Query": {}, "RequestedTags": ["NoSuchTag"], "Expand": True}):
        label = json.dumps(body, sort_keys=True).replace(huge, "HUGE")
        label = label if len(label) < 90 else label[:60] + "..."
        yield Case("POST", "/tools/find", f"/tools/find {label}", json.dumps(body).encode())
    for needle in (b"not..a..uid", b"", b"x" * 70, "été".encode(), b"1.2.3\x00"):
        yield Case("POST", "/tools/lookup", f"/tools/lookup {needle[:20]!r}", needle)
    for ts in ("1.2.840.10008.1.2.4.100", "1.2.3.4", "not-a-uid"):   # MPEG2 video: no one transcodes to it
        yield Case("GET", f"/studies/{ids.study}/archive?transcode={ts}", f"/studies/{{id}}/archive?transcode={ts}")
        yield Case("POST", f"/instances/{ids.instance}/modify", f"/instances/{{id}}/modify Transcode={ts}",
                   json.dumps({"Transcode": ts}).encode())
    for uid in ("1.2.3.4.5.6.7", "not..a..uid", "1." + "2" * 70):
        yield Case("GET", f"/dicom-web/studies/{uid}/series/{uid}/instances/{uid}/metadata",
                   f"/dicom-web/studies/{{{'long' if len(uid) > 64 else uid}}}/.../metadata",
                   headers=(("Accept", "application/dicom+json"),))
def tag_route_cases(ids: Identifiers) -> Iterator[Case]:
    """The tag and content routes (shared tags, every instance's tags, modules, /content paths, the
    header, ignore-length), person names as stored, /file as DICOM JSON, rendering of files without
    the attributes Orthanc has defaults for, and the options of images and downloads."""
    x = ids.extra
    levels = {"patients": ids.patient, "studies": ids.study, "series": ids.series}
    if "syn-series" in x:
        levels_syn = {"patients": x["syn-patient"], "studies": x["syn-study"], "series": x["syn-series"]}
    else:
        levels_syn = {}
    for prefix, own in levels.items():
        for rel in ("shared-tags?short", "instances-tags?simplify", "instances-tags?short", "module?short"):
            yield Case("GET", f"/{prefix}/{own}/{rel}", f"/{prefix}/{{id}}/{rel}", quick=rel == "module?short"
                       and prefix == "studies")
        yield Case("GET", f"/{prefix}/{ids.unknown}/shared-tags", f"/{prefix}/{{unknown}}/shared-tags")
        yield Case("GET", f"/{prefix}/{ids.unknown}/module", f"/{prefix}/{{unknown}}/module")
    for prefix, own in levels_syn.items():   # three instances: what they share, each one's tags
        for rel in ("shared-tags", "shared-tags?simplify", "instances-tags", "module"):
            yield Case("GET", f"/{prefix}/{own}/{rel}", f"/{prefix}/{{3-instances}}/{rel}")
    yield Case("GET", f"/instances/{ids.instance}/shared-tags", "/instances/{id}/shared-tags")
    yield Case("GET", f"/studies/{ids.series}/module", "/studies/{series-id}/module")
    for route in ("module-patient", "module-patient?simplify", "module-patient?short"):
        yield Case("GET", f"/studies/{ids.study}/{route}", f"/studies/{{id}}/{route}", quick=route == "module-patient")
    yield Case("GET", f"/series/{ids.series}/module-patient", "/series/{id}/module-patient")
    yield Case("GET", f"/patients/{ids.patient}/module-patient", "/patients/{id}/module-patient")
    inst = f"/instances/{ids.instance}"
    for route in ("content/", "content/0010,0010", "content/00100010", "content/patientname", "content/NoSuchKeyword",
                  "content/OtherPatientIDsSequence", "content/OtherPatientIDsSequence/0/PatientID",
                  "content/OtherPatientIDsSequence/1", "content/OtherPatientIDsSequence/9",
                  "content/fffc-fffc", "content/7fe0-0010/1", "content/7fe0-0010/x", "content/0010-0010/0",
                  "module?simplify&ignore-length=PatientName"):
        yield Case("GET", f"{inst}/{route}", f"/instances/{{id}}/{route}")
    if "encapsulated" in x:
        enc = f"/instances/{x['encapsulated']}"
        for route in ("content/7fe0-0010", "content/7fe0-0010/0", "content/7fe0-0010/1", "content/7fe0-0010/2",
                      "content"):
            yield Case("GET", f"{enc}/{route}", f"/instances/{{encapsulated}}/{route}")
    if "long-value" in x:
        lv, lvs = f"/instances/{x['long-value']}", f"/series/{x['long-value-series']}"
        for route in ("tags", "tags?ignore-length=ImageComments", "tags?ignore-length=0020-4000,0010-0010",
                      "tags?ignore-length=00204000", "simplified-tags?ignore-length=ImageComments",
                      "tags?simplify&ignore-length=ImageComments", "module?ignore-length=ImageComments",
                      "tags?ignore-length=NoSuchTag", "tags?ignore-length="):
            yield Case("GET", f"{lv}/{route}", f"/instances/{{long-value}}/{route}", quick=route == "tags")
        for route in ("instances-tags?ignore-length=ImageComments", "shared-tags?ignore-length=ImageComments"):
            yield Case("GET", f"{lvs}/{route}", f"/series/{{long-value}}/{route}")
    for name in ("pn-trailing", "pn-two-empty"):
        if name in x:
            pn = f"/instances/{x[name]}"
            for route in ("tags", "simplified-tags", "tags?short", "content/0010-0010", "content/PatientName",
                          "module"):
                yield Case("GET", f"{pn}/{route}", f"/instances/{{{name}}}/{route}", quick=route == "simplified-tags")
    yield Case("GET", f"{inst}/file", "/instances/{id}/file [Accept: application/dicom+json]",
               headers=(("Accept", "application/dicom+json"),), quick=True)
    for accept in ("application/json", "application/dicom+json, */*"):
        yield Case("GET", f"{inst}/file", f"/instances/{{id}}/file [Accept: {accept}]", headers=(("Accept", accept),))
    for name in ("no-pixrep", "no-spp", "no-photometric", "rgb-no-spp", "mr-no-pixrep"):
        if name in x:
            for route in ("preview", "rendered", "image-uint8", "image-uint16", "frames/0/rendered"):
                yield Case("GET", f"/instances/{x[name]}/{route}", f"/instances/{{{name}}}/{route}")
    for q in ("smooth=0", "smooth=1", "smooth=true", "smooth=false", "smooth=yes", "smooth=TRUE"):
        yield Case("GET", f"{inst}/rendered?{q}", f"/instances/{{id}}/rendered?{q}")
    for q in ("transcode=", "transcode=1.2.3", "transcode=1.2.840.10008.1.2.1", "transcode=nonsense"):
        yield Case("GET", f"/studies/{ids.study}/archive?{q}", f"/studies/{{id}}/archive?{q}")
    for label, body in (("transcode=", b'{"Transcode": ""}'), ("transcode=1.2.3", b'{"Transcode": "1.2.3"}'),
                        ("transcode=1.2.840.10008.1.2.1", b'{"Transcode": "1.2.840.10008.1.2.1"}'),
                        ("malformed", b"{not json"), ("list", b"[]")):
        yield Case("POST", f"/studies/{ids.study}/archive", f"/studies/{{id}}/archive {label}", body)
def _zip_of(members: list[tuple[str, bytes]]) -> bytes:
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def _form_of(files: list[tuple[str, bytes]]) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    boundary = "----WebKitFormBoundaryDiff0123456789"
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{n}\"\r\n"
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + d + b"\r\n" for n, d in files)
    return body + f"--{boundary}--\r\n".encode(), (("Content-Type", f"multipart/form-data; boundary={boundary}"),)


def find_modality_upload_cases(ids: Identifiers) -> Iterator[Case]:
    """/tools/find's options and bad bodies; modalities (configuration, PUT with good and bad
    bodies, queries refused before any association); uploads of ZIPs with members that are not
    stored and of browser forms (the files sent are already stored, so nothing else changes)."""
    def post(route: str, body: Any, label: str, quick: bool = False) -> Case:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return Case("POST", route, f"{route} {label}", raw, quick=quick)

    finds = {
        "case-default-pn": {"Level": "Study", "Query": {"PatientName": "compressedsamples*"}},
        "case-true-pn": {"Level": "Study", "Query": {"PatientName": "compressedsamples*"}, "CaseSensitive": True},
        "case-false-pn": {"Level": "Study", "Query": {"PatientName": "COMPRESSEDSAMPLES^CT1"}, "CaseSensitive": False},
        "case-default-id": {"Level": "Study", "Query": {"PatientID": "1ct1"}},
        "case-true-id": {"Level": "Study", "Query": {"PatientID": "1ct1"}, "CaseSensitive": True},
        "case-false-description": {"Level": "Series", "Query": {"Modality": "ct"}, "CaseSensitive": False},
        "case-not-bool": {"Level": "Study", "Query": {}, "CaseSensitive": "yes"},
        "limit-huge": {"Level": "Instance", "Query": {}, "Limit": 2**31 - 1},
        "limit-string": {"Level": "Study", "Query": {}, "Limit": "2"},
        "since-negative": {"Level": "Study", "Query": {}, "Since": -5},
        "level-lower-case": {"Level": "series", "Query": {"Modality": "MR"}},
        "level-number": {"Level": 3, "Query": {}},
        "value-null": {"Level": "Study", "Query": {"PatientID": None}},
        "unknown-tag-hex": {"Level": "Study", "Query": {"9999,9999": "x"}},
        "expand-instances": {"Level": "Instance", "Query": {"SOPInstanceUID": ids.extra.get("sop_uid", "1.2.3")},
                             "Expand": True},
    }
    for label, body in finds.items():
        yield post("/tools/find", body, label, quick=label == "case-default-id")
    yield post("/tools/find", b'["Level", "Study"]', "body-is-array")
    yield post("/tools/find", b'{"Level": "Study", "Query": {}', "truncated-json")

    yield Case("GET", "/modalities/diff/configuration", "/modalities/{name}/configuration", quick=True)
    yield Case("GET", "/modalities/diff", "/modalities/{name}")
    yield Case("GET", "/modalities/no-such-node/configuration", "/modalities/{unknown}/configuration")
    node = {"AET": "CASEPACS", "Host": "127.0.0.1", "Port": 104}
    for label, body in (("manufacturer-ge", node | {"Manufacturer": "GE"}),
                        ("manufacturer-obsolete", node | {"Manufacturer": "AgfaImpax"}),
                        ("manufacturer-unknown", node | {"Manufacturer": "Siemens"}),
                        ("manufacturer-lower-case", node | {"Manufacturer": "generic"}),
                        ("manufacturer-not-string", node | {"Manufacturer": 7}),
                        ("array-manufacturer", ["CASEPACS", "127.0.0.1", 104, "Vitrea"]),
                        ("array-manufacturer-unknown", ["CASEPACS", "127.0.0.1", 104, "Nope"]),
                        ("allow-not-bool", node | {"AllowFind": "yes"}),
                        ("unknown-key", node | {"Colour": "blue"}),
                        ("timeout-not-number", node | {"Timeout": "soon"}),
                        ("local-aet-not-string", node | {"LocalAet": 5}),
                        ("port-string", node | {"Port": "104"}),
                        ("aet-missing", {"Host": "127.0.0.1", "Port": 104}),
                        ("flags", node | {"AllowFind": False, "AllowTranscoding": False, "Timeout": 5,
                                          "LocalAet": "ME"})):
        yield Case("PUT", "/modalities/case-node", f"/modalities/{{name}} {label}", json.dumps(body).encode())
        yield Case("GET", "/modalities/case-node/configuration", f"/modalities/{{name}}/configuration after {label}")
    yield Case("GET", "/modalities?expand", "/modalities?expand with case-node")
    yield Case("DELETE", "/modalities/case-node", "/modalities/{name} DELETE")
    yield Case("DELETE", "/modalities/case-node", "/modalities/{name} DELETE again")

    # refused before any association is opened (the declared node does not listen)
    for label, body in (("value-number", {"Level": "Study", "Query": {"StudyDate": 20200101}}),
                        ("value-null", {"Level": "Study", "Query": {"StudyDate": None}}),
                        ("no-level", {"Query": {"StudyDate": "20200101"}}),
                        ("level-unknown", {"Level": "Nowhere", "Query": {}}),
                        ("query-not-object", {"Level": "Study", "Query": []}),
                        ("normalize-not-bool", {"Level": "Study", "Query": {}, "Normalize": "yes"}),
                        ("unknown-tag", {"Level": "Study", "Query": {"NoSuchTag": "x"}}),
                        ("binary-vr-not-number", {"Level": "Study", "Query": {"Rows": "abc"}, "Normalize": False})):
        yield post("/modalities/diff/query", body, label)
    yield post("/modalities/diff/query", b"{not json", "malformed")
    yield post("/modalities/no-such-node/query", {"Level": "Study", "Query": {}}, "unknown-modality")
    for sub in ("", "/answers", "/answers?expand", "/level", "/modality", "/query", "/answers/0/content"):
        yield Case("GET", f"/queries/no-such-query{sub}", f"/queries/{{unknown}}{sub}")

    try:
        from pydicom.data import get_testdata_file
        ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    except (ImportError, TypeError, OSError):
        return
    yield post("/instances", _zip_of([("a/CT.dcm", ct), ("a/notes.txt", b"teaching notes"), ("b/CT-again.dcm", ct)]),
               "zip-with-text-and-duplicate", quick=True)
    yield post("/instances", _zip_of([("notes.txt", b"only text")]), "zip-of-text-only")
    yield post("/instances", _zip_of([]), "zip-empty")
    for label, files in (("form-one", [("CT.dcm", ct)]), ("form-two-and-zip", [("CT.dcm", ct), ("CT.zip", _zip_of(
            [("CT.dcm", ct)]))]), ("form-text-only", [("notes.txt", b"text")])):
        body, headers = _form_of(files)
        yield Case("POST", "/instances", f"/instances {label}", body, headers)
def dicomweb_more_cases(ids: Identifiers) -> Iterator[Case]:
    """DICOMweb beyond what viewers send: Accept each route cannot satisfy, methods it does not
    take, unknown and invalid UIDs at each level, odd QIDO-RS parameters, WADO-URI variants."""
    st, se, sop = (ids.extra.get(k, "1.2.3") for k in ("study_uid", "series_uid", "sop_uid"))
    inst = f"/dicom-web/studies/{st}/series/{se}/instances/{sop}"
    inst_route = "/dicom-web/studies/{study}/series/{series}/instances/{instance}"
    accepts = {
        "qido": ["application/json", "image/png", "text/html, */*;q=0.8"],
        "metadata": ["application/json", "*/*", "text/html", 'multipart/related; type="application/dicom+xml"'],
        "": ["multipart/related", "*/*", "application/dicom", 'multipart/related; type="application/octet-stream"',
             'multipart/related; type="application/dicom"; transfer-syntax=1.2.3'],
        "/frames/1": ["multipart/related", "image/png", 'multipart/related; type="application/dicom"',
                      'multipart/related; type="image/jpeg"',
                      'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
                      'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.50'],
        "/rendered": ["image/png", "image/gif", "*/*", "application/dicom", "image/*", "text/html, */*;q=0.8"],
        "/frames/1/rendered": ["image/jpeg", "text/html"],
        "/bulk/7FE00010": ["multipart/related; type=\"application/octet-stream\"", "image/jpeg"],
    }
    for sub, values in accepts.items():
        for accept in values:
            if sub == "qido":
                path, route = "/dicom-web/studies", "/dicom-web/studies"
            elif sub == "metadata":
                path, route = f"/dicom-web/studies/{st}/metadata", "/dicom-web/studies/{study}/metadata"
            else:
                path, route = inst + sub, inst_route + sub
            yield Case("GET", path, f"{route} [Accept: {accept}]", headers=(("Accept", accept),),
                       quick=(sub, accept) == ("/rendered", "application/dicom"))
    study_accept = "multipart/related; type=application/dicom"
    yield Case("GET", f"/dicom-web/studies/{st}", "/dicom-web/studies/{study} [Accept: image/png]",
               headers=(("Accept", "image/png"),))
    yield Case("GET", f"/dicom-web/studies/{st}/series/{se}", "/dicom-web/studies/{study}/series/{series}",
               headers=(("Accept", study_accept),))
    # methods a DICOMweb route does not take: 405 with Allow
    for method, path, route in (("DELETE", "/dicom-web/studies", "/dicom-web/studies"),
                                ("POST", "/dicom-web/series", "/dicom-web/series"),
                                ("PUT", f"/dicom-web/studies/{st}/metadata", "/dicom-web/studies/{study}/metadata"),
                                ("POST", f"{inst}/rendered", inst_route + "/rendered"),
                                ("DELETE", "/wado", "/wado")):
        yield Case(method, path, route, b"" if method != "DELETE" else None)
    # unknown and invalid UIDs at every level
    unknown = "1.2.826.0.1.3680043.2.1143.999999"
    for route, path in (
            ("/dicom-web/studies/{unknown}", f"/dicom-web/studies/{unknown}"),
            ("/dicom-web/studies/{unknown}/metadata", f"/dicom-web/studies/{unknown}/metadata"),
            ("/dicom-web/studies/{study}/series/{unknown}/metadata", f"/dicom-web/studies/{st}/series/{unknown}/metadata"),
            ("/dicom-web/studies/{study}/series/{series}/instances/{unknown}/metadata",
             f"/dicom-web/studies/{st}/series/{se}/instances/{unknown}/metadata"),
            ("/dicom-web/studies/{unknown}/series/{series}/instances/{instance}/metadata",
             f"/dicom-web/studies/{unknown}/series/{se}/instances/{sop}/metadata"),
            ("/dicom-web/studies/{study}/series/{series}/instances/{unknown}/rendered",
             f"/dicom-web/studies/{st}/series/{se}/instances/{unknown}/rendered"),
            ("/dicom-web/studies/{study}/series/{series}/instances/{unknown}/frames/1",
             f"/dicom-web/studies/{st}/series/{se}/instances/{unknown}/frames/1"),
            ("/dicom-web/studies/{unknown}/instances", f"/dicom-web/studies/{unknown}/instances"),
            ("/dicom-web/studies/{study}/series/{unknown}/instances", f"/dicom-web/studies/{st}/series/{unknown}/instances"),
            (inst_route + "/frames/{beyond}", f"{inst}/frames/2"),
            (inst_route + "/frames/{zero}", f"{inst}/frames/0"),
            (inst_route + "/bulk/{absent}", f"{inst}/bulk/00091234")):
        yield Case("GET", path, route, quick=route == "/dicom-web/studies/{study}/series/{unknown}/metadata")
    # QIDO-RS parameters, good and bad
    for q in ("limit=100000000000", "limit=-1", "limit=abc", "offset=100000", "offset=2&limit=2",
              "includefield=NoSuchKeyword", "includefield=00081030,00080201", "includefield=all",
              "NoSuchKeyword=x", "00100020=ID1", "fuzzymatching=true&PatientName=lestrade",
              "PatientName=lestrade*", "StudyDate=20000101-", "ModalitiesInStudy=CT", "StudyInstanceUID=" + st,
              "StudyInstanceUID=not-a-uid"):
        yield Case("GET", f"/dicom-web/studies?{q}", f"/dicom-web/studies?{q.split('=')[0]}={q.split('=', 1)[1][:20]}")
    for q in ("Modality=CT", "SeriesInstanceUID=" + se, "limit=1&offset=1"):
        yield Case("GET", f"/dicom-web/series?{q}", f"/dicom-web/series?{q.split('=')[0]}")
    yield Case("GET", f"/dicom-web/instances?SOPInstanceUID={sop}", "/dicom-web/instances?SOPInstanceUID")
    yield Case("GET", f"/dicom-web/studies/{st}/instances", "/dicom-web/studies/{study}/instances")
    # WADO-URI: objectUID alone, contentType variants, transferSyntax, frameNumber
    w = f"/wado?requestType=WADO&objectUID={sop}"
    for q, route in (("", "/wado?objectUID-only [no contentType]"),
                     ("&contentType=application/dicom", "/wado?objectUID&contentType=dicom"),
                     ("&contentType=image/png", "/wado?objectUID&contentType=png"),
                     ("&contentType=image/gif", "/wado?objectUID&contentType=gif"),
                     ("&contentType=text/html", "/wado?objectUID&contentType=html"),
                     ("&contentType=image/jpeg,image/png", "/wado?objectUID&contentType=list"),
                     ("&contentType=application/dicom&transferSyntax=1.2.840.10008.1.2", "/wado?transferSyntax=implicit"),
                     ("&contentType=application/dicom&transferSyntax=1.2.3", "/wado?transferSyntax=unknown"),
                     ("&contentType=image/jpeg&frameNumber=1", "/wado?frameNumber=1"),
                     ("&contentType=image/jpeg&frameNumber=2", "/wado?frameNumber=beyond"),
                     ("&contentType=image/jpeg&frameNumber=x", "/wado?frameNumber=x"),
                     (f"&contentType=image/jpeg&studyUID={st}&seriesUID=1.2.3", "/wado?seriesUID=wrong")):
        yield Case("GET", w + q, route, quick=route == "/wado?objectUID&contentType=dicom")
    yield Case("GET", f"/wado?requestType=WADO&objectUID={unknown}", "/wado?objectUID=unknown")
    yield Case("GET", "/wado?requestType=WADO&objectUID=not..a..uid", "/wado?objectUID=invalid")


def multipart_body(parts: list[tuple[str, bytes]], boundary: str = "pipacs-differential") -> bytes:
    """A multipart/related body of ``(Content-Type, bytes)`` parts."""
    out = b""
    for media, data in parts:
        out += f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def dicomweb_stow_cases(ids: Identifiers) -> Iterator[Case]:
    """STOW-RS, sent last (it stores): a good instance (with binary values in sequence items, whose
    metadata and bulk data are then read), the same again, a part that is not DICOM, a good part
    beside a bad one, a study in the path that is not the instance's, bodies that are not
    multipart/related. The instances are synthetic, with UIDs of their own."""
    import io

    import pydicom

    from .synth import ct_instance, with_nested_binary

    nested = with_nested_binary(ct_instance(rows=8, cols=8, index=1, patient_id="STOW1", patient_name="Stow^One"))
    second = ct_instance(rows=8, cols=8, index=2, patient_id="STOW1", patient_name="Stow^One")
    other = ct_instance(rows=8, cols=8, index=1, patient_id="STOW2", patient_name="Stow^Two", study="st2")
    ds = pydicom.dcmread(io.BytesIO(nested), stop_before_pixels=True)
    mp = (("Content-Type", 'multipart/related; type="application/dicom"; boundary=pipacs-differential'),
          ("Accept", "application/dicom+json"))
    for label, path, body, headers in (
            ("good", "/dicom-web/studies", multipart_body([("application/dicom", nested)]), mp),
            ("duplicate", "/dicom-web/studies", multipart_body([("application/dicom", nested)]), mp),
            ("not-dicom", "/dicom-web/studies", multipart_body([("application/dicom", b"not DICOM at all")]), mp),
            ("good-and-bad", "/dicom-web/studies",
             multipart_body([("application/dicom", second), ("application/dicom", b"not DICOM")]), mp),
            ("empty", "/dicom-web/studies", multipart_body([]), mp),
            ("part-json", "/dicom-web/studies", multipart_body([("application/json", other)]), mp),
            ("single-part", "/dicom-web/studies", other, (("Content-Type", "application/dicom"),)),
            ("json", "/dicom-web/studies", b"{}", (("Content-Type", "application/json"),)),
            ("no-boundary", "/dicom-web/studies", b"garbage",
             (("Content-Type", 'multipart/related; type="application/dicom"'),)),
            ("garbage", "/dicom-web/studies", b"garbage", mp)):
        yield Case("POST", path, f"/dicom-web/studies [STOW {label}]", body, headers)
    yield Case("POST", "/dicom-web/studies/1.2.826.0.1.3680043.2.1143.999999",
               "/dicom-web/studies/{other-study} [STOW]", multipart_body([("application/dicom", other)]), mp)
    inst = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    route = "/dicom-web/studies/{stowed}/series/{series}/instances/{instance}"
    yield Case("GET", f"{inst}/metadata", f"{route}/metadata", headers=(("Accept", "application/dicom+json"),))
    for sub in ("0040a730/1/00091011", "0040a730/1/00409096/1/00189219", "0040a730/2/00091011",
                "0040a730/0/00091011", "0040a730", "0040A730/1/00091011", "zz"):
        yield Case("GET", f"{inst}/bulk/{sub}", f"{route}/bulk/{sub}")


def corpus(openapi: dict[str, Any], ids: Identifiers) -> list[Case]:
    """Every case once (the same request reached two ways is sent once)."""
    seen: dict[tuple[str, str, bytes | None, tuple], Case] = {}
    # dicomweb_stow_cases store: last, so that no other case sees what they stored
    for gen in (resource_cases(ids), tool_cases(ids), system_tool_cases(ids), path_cases(ids), method_cases(ids),
                dicomweb_cases(ids), dicomweb_more_cases(ids), tag_route_cases(ids), find_modality_upload_cases(ids),
                openapi_cases(openapi, ids), bad_input_cases(ids), bad_body_cases(openapi, ids),
                dicomweb_stow_cases(ids)):
        for c in gen:
            seen.setdefault((c.method, c.path, c.body, c.headers), c)
    return list(seen.values())


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["--readme"]:
        sys.stdout.write(readme_section(load_accepted()))
    else:
        sys.exit("usage: python -m tests.differential --readme")
