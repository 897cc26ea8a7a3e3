"""Paths and method overrides read as Orthanc 1.10.1 reads them (appliance/web/paths.py): repeated
and trailing slashes, X-HTTP-Method-Override and ?_method=, on a real server; an override is
judged by the role table and the forgery checks exactly as the method it names."""

from __future__ import annotations

import http.client
import json

import pytest
from yarl import URL

from appliance.web.paths import orthanc_method, orthanc_path

from .helpers import Response
from .synth import ct_instance
from .test_access import BASIC, CLASSROOM, TEACHER_PW, TEACHER_USER, deidentified

OVERRIDE = "X-HTTP-Method-Override"


def call(port: int, method: str, path: str, body: bytes | None = None, **headers: str) -> Response:
    """The request exactly as spelt (http.client does not touch the path)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return Response(r.status, r.read(), dict(r.getheaders()))
    finally:
        conn.close()


@pytest.mark.parametrize(("raw", "read"), [
    ("//patients", "/patients"), ("///patients", "/patients"), ("/system//", "/system"),
    ("/patients/", "/patients"), ("/studies//abc", "/studies/abc"), ("/instances/x//tags", "/instances/x/tags"),
    ("//", "/"), ("/", "/")])
def test_empty_segments_do_not_count(raw: str, read: str) -> None:
    assert orthanc_path(raw) == read


# (method, header or None, query, what Orthanc 1.10.1 served: a method, or 400), each measured
OVERRIDES = [
    ("POST", "GET", "", 400), ("POST", "POST", "", 400), ("POST", "PATCH", "", 400),
    ("POST", "PUT", "", "PUT"), ("POST", "DELETE", "", "DELETE"), ("POST", "delete", "", "DELETE"),
    ("POST", "", "", "POST"), ("GET", "DELETE", "", "DELETE"), ("GET", "GET", "", 400),
    ("PUT", "DELETE", "", "DELETE"), ("DELETE", "PUT", "", "PUT"),
    ("POST", None, "_method=GET", "POST"), ("POST", None, "_method=DELETE", "POST"),
    ("GET", None, "_method=GET", 400), ("GET", None, "_method=get", 400), ("GET", None, "_method=POST", 400),
    ("GET", None, "_method=DELETE", "DELETE"), ("GET", None, "_method=delete", "DELETE"),
    ("GET", None, "_method=PUT", "PUT"), ("GET", None, "_method=", "GET"), ("GET", None, "_method", "GET"),
    ("GET", None, "_method=PUT&_method=GET", "PUT"), ("GET", "DELETE", "_method=PUT", "DELETE"),
    ("GET", "", "_method=DELETE", "GET"), ("PUT", None, "_method=DELETE", "PUT"),
    ("HEAD", "DELETE", "", "HEAD"),   # the one departure: a HEAD's answer has no body
]


@pytest.mark.parametrize(("method", "header", "query", "served"), OVERRIDES)
def test_the_override_rule(method: str, header: str | None, query: str, served: str | int) -> None:
    headers = {} if header is None else {OVERRIDE: header}
    got, refused = orthanc_method(method, headers, URL.build(path="/system", query_string=query))
    if served == 400:
        assert refused and got == method
    else:
        assert (got, refused) == (served, "")


def _steady(answer):
    """An answer without what changes between two reads of it."""
    return {k: v for k, v in answer.items() if k != "LastUpdate"} if isinstance(answer, dict) else answer


def test_slashes_and_overrides_on_a_real_server(make_server) -> None:
    srv = make_server()
    data = [ct_instance(rows=16, cols=16, index=k, patient_id="PATHS") for k in (1, 2, 3)]
    stored = [srv.post("/instances", d).json() for d in data]
    port = srv.http_port
    inst, study = stored[0]["ID"], stored[0]["ParentStudy"]
    for spelt, canonical in (("//patients", "/patients"), ("///patients", "/patients"), ("/patients/", "/patients"),
                             ("/system//", "/system"), (f"//studies/{study}", f"/studies/{study}"),
                             (f"/studies//{study}/", f"/studies/{study}"),
                             (f"/instances/{inst}//tags?short", f"/instances/{inst}/tags?short"),
                             ("/patients//?expand", "/patients?expand")):
        a, b = call(port, "GET", spelt), call(port, "GET", canonical)
        assert a.status == b.status == 200, (spelt, a.status, a.body[:200])
        assert _steady(a.json()) == _steady(b.json()), spelt
    assert call(port, "GET", f"//instances/{inst}//file").body == data[0]
    assert call(port, "GET", "/no-such-route//").status == 404

    # a refused override: 400 in Orthanc's error shape, nothing done
    for headers in ({OVERRIDE: "GET"}, {OVERRIDE: "POST"}):
        r = call(port, "POST", f"/instances/{inst}", b"", **headers)
        assert r.status == 400, r.body
        err = r.json()
        assert err["HttpStatus"] == 400 and "PUT or DELETE" in err["Message"] and err["Uri"] == f"/instances/{inst}"
    r = call(port, "GET", f"/instances/{inst}?_method=GET")
    assert r.status == 400 and "_method" in r.json()["Message"]
    assert call(port, "POST", f"/instances/{inst}?_method=DELETE", b"").status == 405, "a POST's _method is no override"
    assert call(port, "GET", f"/instances/{inst}").status == 200

    # the overrides Orthanc honours do what they name
    r = call(port, "GET", f"/instances/{inst}?_method=delete")
    assert r.status == 200 and r.json()["RemainingAncestor"]["Type"] == "Series", r.body
    assert call(port, "GET", f"/instances/{inst}").status == 404
    second = stored[1]["ID"]
    assert call(port, "POST", f"//instances/{second}/", b"", **{OVERRIDE: "DELETE"}).status == 200
    assert call(port, "GET", f"/instances/{second}").status == 404
    third = stored[2]["ID"]
    assert call(port, "GET", f"/instances/{third}", **{OVERRIDE: "DELETE"}).status == 200
    assert call(port, "GET", f"/instances/{third}").status == 404
    assert call(port, "POST", "/system", b"", **{OVERRIDE: "PUT"}).status == 405   # a PUT of /system


def test_a_head_stays_a_head_and_the_connection_stays_in_step(make_server) -> None:
    srv = make_server()
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=30)
    try:
        conn.request("HEAD", "//system/", headers={OVERRIDE: "DELETE"})
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b""
        conn.request("GET", "/system")           # the same connection: no body of the HEAD left in it
        r = conn.getresponse()
        assert r.status == 200 and "ApiVersion" in json.loads(r.read())
    finally:
        conn.close()


@pytest.fixture
def locked(make_server):
    srv = make_server(CLASSROOM)
    r = srv.post("/instances", deidentified(patient_id="ANON9", patient_name="Case^Nine", study="p"), headers=BASIC)
    assert r.status == 200, r.body
    srv.study = r.json()["ParentStudy"]
    assert srv.request("PUT", f"/studies/{srv.study}/released", "1", headers=BASIC).status == 200
    return srv


def test_a_students_override_is_refused_as_the_method_it_names(locked) -> None:
    port, study = locked.http_port, locked.study
    assert call(port, "GET", f"/studies/{study}").status == 200, "the student reads the published study"
    real = call(port, "DELETE", f"/studies/{study}")
    assert real.status == 403
    for method, path, headers in (("POST", f"/studies/{study}", {OVERRIDE: "DELETE"}),
                                  ("GET", f"/studies/{study}?_method=DELETE", {}),
                                  ("GET", f"/studies/{study}", {OVERRIDE: "delete"}),
                                  ("DELETE", f"//studies//{study}/", {})):
        r = call(port, method, path, b"" if method == "POST" else None, **headers)
        assert (r.status, r.json()) == (real.status, real.json()), (method, path, headers)
    assert call(port, "GET", f"/studies/{study}", **BASIC).status == 200, "nothing was deleted"
    audit = locked.get("/pipacs/audit", headers=BASIC).json()
    assert any(e["Action"] == f"DELETE /studies/{study}" and e["Outcome"] == "refused" for e in audit)


def test_forgery_checks_see_the_overridden_method(locked) -> None:
    port, study = locked.http_port, locked.study
    ok = call(port, "POST", "/pipacs/sign-in", json.dumps({"User": TEACHER_USER, "Password": TEACHER_PW}).encode())
    assert ok.status == 200
    session, csrf = ok.headers["Set-Cookie"].split(";")[0], ok.json()["CSRF"]
    # without the page's token: refused as a DELETE without it is
    real = call(port, "DELETE", f"/studies/{study}", Cookie=session)
    assert real.status == 403
    for method, path, headers in (("POST", f"/studies/{study}", {OVERRIDE: "DELETE"}),
                                  ("GET", f"/studies/{study}?_method=DELETE", {})):
        r = call(port, method, path, b"" if method == "POST" else None, Cookie=session, **headers)
        assert (r.status, r.json()) == (real.status, real.json())
    # with it, from another site (a link or an image on another page): refused; a plain GET is not
    for forged in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}):
        r = call(port, "GET", f"/studies/{study}?_method=DELETE", Cookie=session, **{"X-Pipacs-CSRF": csrf}, **forged)
        assert r.status == 403 and "another site" in r.json()["Message"], forged
        assert call(port, "GET", f"/studies/{study}", Cookie=session, **forged).status == 200
    assert call(port, "GET", f"/studies/{study}", **BASIC).status == 200, "nothing was deleted"
    done = call(port, "GET", f"/studies/{study}?_method=DELETE", Cookie=session, **{"X-Pipacs-CSRF": csrf})
    assert done.status == 200
    assert call(port, "GET", f"/studies/{study}", **BASIC).status == 404
    audit = locked.get("/pipacs/audit", headers=BASIC).json()
    assert any(e["Action"] == f"DELETE /studies/{study}" and e["Outcome"] == "done" for e in audit)
