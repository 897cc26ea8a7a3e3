"""Classroom access against a real appliance: the role table covers every route, students see
only what the teacher published (REST, DICOMweb, WADO, DICOM), teachers sign in (cookie with
CSRF token, or HTTP Basic), wrong passwords are throttled, DICOM uploads need the window."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import subprocess
from pathlib import Path

import pydicom
import pytest

from appliance.config import load_settings
from appliance.web.access import DOWNLOAD, By, Role
from appliance.web.app import build_app
from appliance.web.roles import ROUTE_NEEDS

from .helpers import Response, dcmtk
from .synth import ct_instance, uid
from .test_qr import StoreSCP

TEACHER_USER, TEACHER_PW = "teacher-a", "pw-a-long-enough"
CLASSROOM = {"AuthenticationEnabled": True, "RegisteredUsers": {TEACHER_USER: TEACHER_PW},
             "StudentAccess": "open", "ClassroomMode": True, "DicomAlwaysAllowStore": False}
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{TEACHER_USER}:{TEACHER_PW}".encode()).decode()}


def deidentified(**kw) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(ct_instance(rows=16, cols=16, **kw)))
    ds.PatientIdentityRemoved = "YES"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def app_routes() -> set[tuple[str, str]]:
    app = build_app(None, load_settings(environ={}), 0)  # type: ignore[arg-type]
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}


def test_every_route_has_exactly_one_rule() -> None:
    routes = app_routes()
    missing = sorted(routes - set(ROUTE_NEEDS))
    assert not missing, f"routes with no rule in web/roles.py: {missing}"
    stale = sorted(set(ROUTE_NEEDS) - routes)
    assert not stale, f"rules for routes that do not exist: {stale}"


@pytest.fixture
def classroom(make_server):
    """A locked-down appliance with a published teaching study, an unpublished one, and a released
    study that is not de-identified."""
    srv = make_server(CLASSROOM)
    ids = {}
    for name, data in (("published", deidentified(patient_id="ANON1", patient_name="Case^One", study="pub")),
                       ("unpublished", deidentified(patient_id="ANON2", patient_name="Case^Two", study="unpub")),
                       ("identifiable", ct_instance(rows=16, cols=16, patient_id="REAL1", patient_name="Real^Name",
                                                    study="real"))):
        r = srv.post("/instances", data, headers=BASIC)
        assert r.status == 200, r.body
        ids[name] = r.json()
    for name in ("published", "identifiable"):
        assert srv.request("PUT", f"/studies/{ids[name]['ParentStudy']}/released", "1", headers=BASIC).status == 200
    srv.ids = ids
    return srv


def concrete(path: str, ids: dict) -> str:
    pub = ids["published"]
    values = {"level": "studies", "id": pub["ParentStudy"], "rel": "series", "kind": "archive",
              "action": "anonymize", "label": "lbl", "name": "Note", "frame": "1", "path": "", "qid": "q",
              "n": "0", "what": "level", "series": pub["ParentSeries"], "study": uid("ANON1/pub"),
              "instance": uid("ANON1/pub/se1/1"), "frames": "1", "tag": "7fe00010", "plugin": "dicom-web",
              "q": "q1"}
    if path.startswith("/instances/"):
        values["id"] = pub["ID"]
    elif path.startswith("/patients/"):
        values["id"] = pub["ParentPatient"]
    if path.startswith("/dicom-web/"):
        values["series"] = uid("ANON1/pub/se1")
    if path == "/tools/{kind}":
        values["kind"] = "create-archive"
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def expected_need(method: str, path: str, downloads: bool = True) -> Role:
    need = ROUTE_NEEDS[(method, path)]
    if isinstance(need, By):
        return Role.TEACHER if need.param != "kind" else Role.STUDENT
    if need is DOWNLOAD:
        return Role.STUDENT if downloads else Role.TEACHER
    return need


def test_every_route_answers_as_its_rule_says(classroom) -> None:
    """Each route and method, as a student (no credentials, StudentAccess open) and as a teacher.
    A refusal is 401/403 with a JSON message; anything else means the access check let it through.
    State-changing requests as the teacher name nothing that exists, so nothing is changed."""
    checked = 0
    for method, path in sorted(ROUTE_NEEDS):
        if path in ("/pipacs/sign-in", "/pipacs/sign-out", "/pipacs/join"):
            continue   # answer 401/403 themselves for a wrong password or code: tested on their own below
        url = concrete(path, classroom.ids)
        need = expected_need(method, path)
        body = "{}" if method in ("POST", "PUT") else None
        student = classroom.request(method, url, body)
        if need == Role.TEACHER:
            assert student.status in (401, 403), (method, path, student.status, student.body[:200])
            assert "Message" in student.json()
        else:
            assert student.status not in (401, 403), (method, path, student.status, student.body[:200])
        if method in ("GET", "POST") and need != Role.TEACHER:
            teacher_url = url
        else:
            teacher_url = re.sub(r"/(studies|patients|series|instances)/[0-9a-f-]{44}", r"/\1/no-such-id", url)
        teacher = classroom.request(method, teacher_url, body, headers=BASIC)
        assert teacher.status not in (401, 403), (method, path, teacher.status, teacher.body[:200])
        checked += 1
    assert checked == len(ROUTE_NEEDS) - 3
    # nothing was changed by the walk
    assert len(classroom.get("/instances", headers=BASIC).json()) == 3


def test_without_credentials_only_the_pages_shell_answers_when_students_need_an_account(make_server) -> None:
    """StudentAccess off: every route but those anyone may call asks for credentials."""
    srv = make_server({**CLASSROOM, "StudentAccess": "off"}, name="off")
    ids = {"published": {"ID": "i", "ParentStudy": "s", "ParentSeries": "se", "ParentPatient": "p"}}
    for method, path in sorted(ROUTE_NEEDS):
        if path in ("/pipacs/sign-in", "/pipacs/sign-out", "/pipacs/join"):
            continue
        r = srv.request(method, concrete(path, ids), "{}" if method in ("POST", "PUT") else None)
        if ROUTE_NEEDS[(method, path)] == Role.ANYONE:
            assert r.status not in (401, 403), (method, path, r.status)
        else:
            assert r.status == 401 and "Message" in r.json(), (method, path, r.status)


def test_students_see_only_what_the_teacher_published(classroom) -> None:
    ids = classroom.ids
    pub, unpub, real = ids["published"], ids["unpublished"], ids["identifiable"]
    # REST lists and resources
    assert classroom.get_json("/patients") == [pub["ParentPatient"]]
    assert classroom.get_json("/studies") == [pub["ParentStudy"]]
    assert len(classroom.get("/studies", headers=BASIC).json()) == 3
    for hidden in (unpub, real):
        for path in (f"/studies/{hidden['ParentStudy']}", f"/instances/{hidden['ID']}/file",
                     f"/instances/{hidden['ID']}/preview", f"/patients/{hidden['ParentPatient']}/studies",
                     f"/studies/{hidden['ParentStudy']}/archive"):
            r = classroom.get(path)
            assert r.status == 404, (path, r.status)
            assert classroom.get(path, headers=BASIC).status == 200, path
    assert classroom.get(f"/instances/{pub['ID']}/file").status == 200
    found = classroom.post_json("/tools/find", {"Level": "Study", "Query": {}})
    assert found == [pub["ParentStudy"]]
    lookup = json.loads(classroom.post("/tools/lookup", uid("REAL1/real")).body)
    assert lookup == []
    # DICOMweb and WADO-URI
    qido = json.loads(classroom.get("/dicom-web/studies").body)
    assert [s["0020000D"]["Value"][0] for s in qido] == [uid("ANON1/pub")]
    assert classroom.get(f"/dicom-web/studies/{uid('REAL1/real')}/metadata").status == 404
    assert classroom.get(f"/dicom-web/studies/{uid('ANON1/pub')}/metadata").status == 200
    wado = (f"/wado?requestType=WADO&studyUID={uid('REAL1/real')}&seriesUID={uid('REAL1/real/se1')}"
            f"&objectUID={uid('REAL1/real/se1/1')}&contentType=application/dicom")
    assert classroom.get(wado).status == 404
    assert classroom.get(wado, headers=BASIC).status == 200
    # the teacher's reception details are the teacher's
    assert classroom.get(f"/instances/{pub['ID']}/metadata").status == 403


def test_a_teacher_signs_in_with_a_cookie_and_forged_requests_are_refused(classroom) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", classroom.http_port, timeout=30)

    def call(method: str, path: str, body: str | None = None, **headers: str) -> Response:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return Response(r.status, r.read(), dict(r.getheaders()))

    bad = call("POST", "/pipacs/sign-in", json.dumps({"User": TEACHER_USER, "Password": "nope"}))
    assert bad.status == 401 and "Set-Cookie" not in bad.headers
    ok = call("POST", "/pipacs/sign-in", json.dumps({"User": TEACHER_USER, "Password": TEACHER_PW}))
    assert ok.status == 200
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    session = cookie.split(";")[0]
    csrf = ok.json()["CSRF"]
    study = classroom.ids["unpublished"]["ParentStudy"]
    assert call("GET", "/pipacs/session", Cookie=session).json()["Role"] == "teacher"
    # a state change from the page without its token, or from another site with it: refused
    assert call("DELETE", f"/studies/{study}", Cookie=session).status == 403
    assert call("DELETE", f"/studies/{study}", Cookie=session, **{"X-Pipacs-CSRF": csrf,
                                                                   "Origin": "http://evil.example"}).status == 403
    assert call("DELETE", f"/studies/{study}", Cookie=session, **{"X-Pipacs-CSRF": csrf,
                                                                   "Sec-Fetch-Site": "cross-site"}).status == 403
    assert classroom.get(f"/studies/{study}", headers=BASIC).status == 200, "nothing was deleted"
    done = call("DELETE", f"/studies/{study}", Cookie=session, **{"X-Pipacs-CSRF": csrf})
    assert done.status == 200
    assert classroom.get(f"/studies/{study}", headers=BASIC).status == 404
    # signed out, the cookie is worth nothing
    assert call("POST", "/pipacs/sign-out", "", Cookie=session, **{"X-Pipacs-CSRF": csrf}).status == 200
    assert call("GET", "/pipacs/session", Cookie=session).json()["Role"] == "student"
    assert call("DELETE", f"/studies/{classroom.ids['published']['ParentStudy']}", Cookie=session,
                **{"X-Pipacs-CSRF": csrf}).status == 403
    audit = classroom.get("/pipacs/audit", headers=BASIC).json()
    assert any(e["Action"] == f"DELETE /studies/{study}" and e["Outcome"] == "done" for e in audit)
    assert any(e["Outcome"] == "refused" for e in audit)


def _sign_in_from(srv, address: str, password: str) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=30, source_address=(address, 0))
    conn.request("POST", "/pipacs/sign-in", body=json.dumps({"User": TEACHER_USER, "Password": password}))
    r = conn.getresponse()
    out = Response(r.status, r.read(), dict(r.getheaders()))
    conn.close()
    return out


def test_wrong_passwords_are_slowed_per_address_and_say_how_long(classroom) -> None:
    for _ in range(10):
        assert _sign_in_from(classroom, "127.0.0.2", "wrong").status == 401
    slowed = _sign_in_from(classroom, "127.0.0.2", TEACHER_PW)
    assert slowed.status == 429, "even the right password waits once the address is slowed"
    wait = int(slowed.headers["Retry-After"])
    assert 1 <= wait <= 60 and f"wait {wait} s" in slowed.json()["Message"]
    # HTTP Basic from that address is slowed too; another device is not
    conn = http.client.HTTPConnection("127.0.0.1", classroom.http_port, timeout=30, source_address=("127.0.0.2", 0))
    conn.request("GET", "/statistics", headers=BASIC)
    assert conn.getresponse().status == 429
    assert _sign_in_from(classroom, "127.0.0.3", TEACHER_PW).status == 200
    # the answer never tells whether the user exists
    other = _sign_in_from(classroom, "127.0.0.4", "wrong").json()["Message"]
    conn = http.client.HTTPConnection("127.0.0.1", classroom.http_port, timeout=30, source_address=("127.0.0.4", 0))
    conn.request("POST", "/pipacs/sign-in", body=json.dumps({"User": "nobody", "Password": "wrong"}))
    assert json.loads(conn.getresponse().read())["Message"] == other


@pytest.mark.parametrize("header", ["Basic", "Basic !!!", "Bearer x", "Basic " + "A" * 20000,
                                    "Basic " + base64.b64encode(("t:" + "é" * 3000).encode()).decode()])
def test_odd_credentials_get_a_clean_answer(classroom, header) -> None:
    r = classroom.request("DELETE", f"/studies/{classroom.ids['published']['ParentStudy']}",
                          headers={"Authorization": header})
    assert r.status in (400, 401, 431), (header[:20], r.status)
    assert classroom.get("/studies", headers=BASIC).status == 200


def test_unknown_routes_and_methods_keep_their_own_answers(classroom) -> None:
    assert classroom.get("/no/such/route").status == 404
    r = classroom.request("PATCH", "/studies")
    assert r.status == 405 and "Allow" in r.headers


def test_an_overlong_cookie_is_not_a_session(classroom) -> None:
    r = classroom.request("GET", "/pipacs/session", headers={"Cookie": "pipacs_session=" + "x" * 3000})
    assert r.status == 200 and r.json()["Role"] == "student"


def test_student_access_off_and_code(make_server) -> None:
    off = make_server({**CLASSROOM, "StudentAccess": "off"}, name="off")
    r = off.get("/studies", headers={"X-Requested-With": "pipacs"})
    assert r.status == 401 and "WWW-Authenticate" not in r.headers, "our pages get no browser login dialog"
    assert "Basic" in off.get("/studies").headers["WWW-Authenticate"]
    assert off.get("/").status == 200, "the page itself loads, to show its sign-in form"
    code = make_server({**CLASSROOM, "StudentAccess": "code"}, name="code")
    assert code.get("/studies").status == 401
    conn = http.client.HTTPConnection("127.0.0.1", code.http_port, timeout=30)
    conn.request("POST", "/pipacs/join", body=json.dumps({"Code": "000000x"}))
    assert conn.getresponse().status == 403
    conn.close()


def test_change_password_keeps_a_hash_and_ends_other_sessions(make_server, tmp_path) -> None:
    from appliance.accounts import PasswordFile
    srv = make_server({"AuthenticationEnabled": True, "StudentAccess": "open"}, name="own")
    PasswordFile(srv.workdir / "data").set("first-password")
    basic = {"Authorization": "Basic " + base64.b64encode(b"teacher:first-password").decode()}
    assert srv.get("/statistics", headers=basic).status == 200
    r = srv.request("POST", "/pipacs/password", json.dumps({"Current": "first-password", "New": "second-pass"}),
                    headers=basic)
    assert r.status == 200, r.body
    assert srv.get("/statistics", headers=basic).status == 401
    stored = (srv.workdir / "data" / "teacher-password").read_text()
    assert stored.startswith("scrypt$") and "second-pass" not in stored and "second-pass" not in srv.log
    short = srv.request("POST", "/pipacs/password", json.dumps({"Current": "second-pass", "New": "x"}),
                        headers={"Authorization": "Basic " + base64.b64encode(b"teacher:second-pass").decode()})
    assert short.status == 400 and "at least" in short.json()["Message"]


def test_wrong_basic_passwords_sent_together_are_throttled_too(make_server) -> None:
    """The kept password is checked with scrypt off the loop (an await): every request sent at once
    used to pass the throttle's check before the first wrong one was counted."""
    import asyncio

    import aiohttp

    from appliance.accounts import PasswordFile
    srv = make_server({"AuthenticationEnabled": True, "StudentAccess": "open"}, name="own")
    PasswordFile(srv.workdir / "data").set("first-password")
    wrong = {"Authorization": "Basic " + base64.b64encode(b"teacher:wrong-password").decode()}

    async def together() -> list[int]:
        async with aiohttp.ClientSession() as session:
            async def one() -> int:
                async with session.get(srv.url("/statistics"), headers=wrong) as r:
                    return r.status
            return list(await asyncio.gather(*(one() for _ in range(30))))

    statuses = asyncio.run(together())
    assert statuses.count(401) <= 10 and statuses.count(401) + statuses.count(429) == 30, statuses
    # the right password is slowed now too; it clears the count once the wait is over (not here)
    right = {"Authorization": "Basic " + base64.b64encode(b"teacher:first-password").decode()}
    assert srv.get("/statistics", headers=right).status == 429


def _statuses_together(srv, headers: list[dict[str, str]], address: str = "127.0.0.1") -> list[int]:
    """GET /statistics once per headers, all sent at once from ``address``."""
    import asyncio

    import aiohttp

    async def together() -> list[int]:
        connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one(h: dict[str, str]) -> int:
                async with session.get(srv.url("/statistics"), headers=h) as r:
                    return r.status
            return list(await asyncio.gather(*(one(h) for h in headers)))
    return asyncio.run(together())


def test_right_basic_passwords_sent_together_all_pass_and_never_clear_wrong_ones(make_server) -> None:
    """A DICOMweb client fires many requests at once: on a cold cache each right one used to be
    counted before its scrypt check, so 20 of 30 got 429; and a right one cleared the count, so
    9 wrong + 1 right + 9 wrong... guessed without end."""
    from appliance.accounts import PasswordFile
    srv = make_server({"AuthenticationEnabled": True, "StudentAccess": "open"}, name="own")
    PasswordFile(srv.workdir / "data").set("first-password")
    right = {"Authorization": "Basic " + base64.b64encode(b"teacher:first-password").decode()}

    def wrong(k: int) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"teacher:wrong-{k}".encode()).decode()}

    assert _statuses_together(srv, [right] * 30) == [200] * 30
    # serial, from the same address: a right one (counted, then forgiven, or not counted) clears nothing
    assert [srv.get("/statistics", headers=wrong(k)).status for k in range(9)] == [401] * 9
    assert srv.get("/statistics", headers=right).status == 200
    assert srv.get("/statistics", headers=wrong(9)).status == 401
    assert srv.get("/statistics", headers=wrong(10)).status == 429
    # together, mixed, from another address: still at most 10 wrong ones answered
    mixed = [wrong(100 + k) if k % 2 else right for k in range(40)]
    statuses = _statuses_together(srv, mixed, "127.0.0.9")
    guessed = statuses[1::2]
    assert guessed.count(401) <= 10 and guessed.count(401) + guessed.count(429) == 20, statuses
    assert set(statuses[0::2]) <= {200, 429}, statuses


def _room_code_from(srv, address: str, code: str) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=30, source_address=(address, 0))
    conn.request("POST", "/pipacs/join", body=json.dumps({"Code": code}))
    r = conn.getresponse()
    out = Response(r.status, r.read(), dict(r.getheaders()))
    conn.close()
    return out


def test_wrong_room_codes_are_counted_serial_and_together_apart_from_passwords(make_server) -> None:
    import asyncio

    from .test_teaching_sessions import _slow_posts
    srv = make_server({**CLASSROOM, "StudentAccess": "code"}, name="code")
    code = srv.get("/pipacs/room-code", headers=BASIC).json()["Code"]
    assert code
    wrong = "x" + code
    statuses = [_room_code_from(srv, "127.0.0.5", wrong).status for _ in range(25)]
    assert statuses == [403] * 10 + [429] * 15, statuses
    said = _room_code_from(srv, "127.0.0.5", code)
    assert said.status == 429 and re.match(r"too many wrong room codes: wait \d+ s", said.json()["Message"])
    # the teacher's password has a counter of its own: still open from that address
    assert _sign_in_from(srv, "127.0.0.5", TEACHER_PW).status == 200
    # together with slow bodies: every handler has started before any body is in
    bodies = [json.dumps({"Code": f"{wrong}{k}"}).encode() for k in range(30)]
    statuses = asyncio.run(_slow_posts(srv.url("/pipacs/join"), bodies))
    assert statuses.count(403) <= 10 and statuses.count(403) + statuses.count(429) == 30, statuses
    # a right room code neither clears the wrong passwords' count nor is counted itself
    assert [_sign_in_from(srv, "127.0.0.7", "wrong").status for _ in range(9)] == [401] * 9
    assert [_room_code_from(srv, "127.0.0.7", code).status for _ in range(12)] == [200] * 12
    assert _sign_in_from(srv, "127.0.0.7", "wrong").status == 401
    assert _sign_in_from(srv, "127.0.0.7", "wrong").status == 429


# ---------------------------------------------------------------------- DICOM


def _storescu(srv, path: Path, aet: str = "IPAD01") -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("storescu"), "-aet", aet, "-aec", "PIPACS", "127.0.0.1", str(srv.dicom_port),
                           str(path)], capture_output=True, text=True, timeout=60)


def test_dicom_uploads_need_the_teachers_window(classroom, tmp_path) -> None:
    f = tmp_path / "one.dcm"
    f.write_bytes(deidentified(patient_id="ANON9", study="upload"))
    before = len(classroom.get("/instances", headers=BASIC).json())
    refused = _storescu(classroom, f)
    assert len(classroom.get("/instances", headers=BASIC).json()) == before
    assert "0124" in (refused.stdout + refused.stderr) or refused.returncode != 0
    opened = classroom.request("PUT", "/pipacs/upload-window", json.dumps({"Minutes": 15}), headers=BASIC)
    assert opened.status == 200 and opened.json()["Open"] and 890 <= opened.json()["SecondsLeft"] <= 900
    assert _storescu(classroom, f).returncode == 0
    assert len(classroom.get("/instances", headers=BASIC).json()) == before + 1
    assert classroom.request("DELETE", "/pipacs/upload-window", headers=BASIC).json()["Open"] is False
    g = tmp_path / "two.dcm"
    g.write_bytes(deidentified(patient_id="ANON9", study="upload", index=2))
    _storescu(classroom, g)
    assert len(classroom.get("/instances", headers=BASIC).json()) == before + 1
    refusals = [e for e in classroom.get("/pipacs/audit", headers=BASIC).json() if e["Action"] == "C-STORE"]
    assert refusals and refusals[0]["User"] == "IPAD01" and refusals[0]["Address"] == "127.0.0.1"
    assert "closed" in refusals[0]["Detail"]
    for bad in ('{"Minutes": 0}', '{"Minutes": 100000}', '{"Minutes": "ten"}', "nonsense"):
        assert classroom.request("PUT", "/pipacs/upload-window", bad, headers=BASIC).status == 400


def test_students_find_and_get_only_published_studies(classroom, tmp_path) -> None:
    r = subprocess.run([dcmtk("findscu"), "-aet", "IPAD01", "-aec", "PIPACS", "-S", "-k", "QueryRetrieveLevel=STUDY",
                        "-k", "StudyInstanceUID", "-k", "PatientName", "127.0.0.1", str(classroom.dicom_port)],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert uid("ANON1/pub") in out and uid("REAL1/real") not in out and uid("ANON2/unpub") not in out
    got = tmp_path / "got"
    got.mkdir()
    for study in ("ANON1/pub", "REAL1/real"):
        subprocess.run([dcmtk("getscu"), "-aet", "IPAD01", "-aec", "PIPACS", "-S", "-od", str(got), "-k",
                        "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid(study)}", "127.0.0.1",
                        str(classroom.dicom_port)], capture_output=True, text=True, timeout=60)
    received = {pydicom.dcmread(p).StudyInstanceUID for p in got.iterdir()}
    assert received == {uid("ANON1/pub")}


def test_a_move_never_goes_to_a_registered_modality_for_a_student(make_server, tmp_path) -> None:
    """A student's C-MOVE naming the teacher's workstation goes back to the student's own device
    (ClassroomMovePort), never to the workstation; the teacher's workstation gets it."""
    workstation = StoreSCP(tmp_path / "ws", aet="TEACHERWS")
    student_device = StoreSCP(tmp_path / "ipad", aet="IPAD01")
    try:
        srv = make_server({**CLASSROOM, "ClassroomMovePort": student_device.port,
                           "DicomModalities": {"ws": ["TEACHERWS", "127.0.0.1", workstation.port]}})
        r = srv.post("/instances", deidentified(patient_id="ANON1", study="pub"), headers=BASIC)
        srv.request("PUT", f"/studies/{r.json()['ParentStudy']}/released", "1", headers=BASIC)
        move = [dcmtk("movescu"), "-aec", "PIPACS", "-aem", "TEACHERWS", "-S", "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={uid('ANON1/pub')}", "127.0.0.1", str(srv.dicom_port)]
        subprocess.run(move[:1] + ["-aet", "IPAD01"] + move[1:], capture_output=True, timeout=60)
        assert len(student_device.files()) == 1 and workstation.files() == []
        subprocess.run(move[:1] + ["-aet", "TEACHERWS"] + move[1:], capture_output=True, timeout=60)
        assert len(workstation.files()) == 1
    finally:
        workstation.stop()
        student_device.stop()


def test_a_move_goes_to_the_address_that_asks_and_nothing_is_kept(make_server) -> None:
    """The same AE title asking from a new address (an iPad that got another lease) receives there;
    made-up destination titles leave no trace in the modalities."""
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    from .helpers import free_port

    port = free_port()
    received: dict[str, int] = {"127.0.0.1": 0, "127.0.0.2": 0}
    receivers = []
    for address in received:
        ae = AE(ae_title="IPAD01")
        ae.supported_contexts = AllStoragePresentationContexts

        def stored(event, address=address):
            received[address] += 1
            return 0x0000
        receivers.append(ae.start_server((address, port), block=False, evt_handlers=[(evt.EVT_C_STORE, stored)]))
    try:
        srv = make_server({**CLASSROOM, "ClassroomMovePort": port})
        r = srv.post("/instances", deidentified(patient_id="ANON1", study="pub"), headers=BASIC)
        srv.request("PUT", f"/studies/{r.json()['ParentStudy']}/released", "1", headers=BASIC)
        ident = pydicom.Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = uid("ANON1/pub")
        for source, destination in (("127.0.0.1", "IPAD01"), ("127.0.0.2", "IPAD01"), ("127.0.0.2", "MADEUP1"),
                                    ("127.0.0.2", "MADEUP2")):
            scu = AE(ae_title="IPAD01")
            scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = scu.associate("127.0.0.1", srv.dicom_port, ae_title="PIPACS", bind_address=(source, 0))
            assert assoc.is_established
            final = [s for s, _ in assoc.send_c_move(ident, destination, StudyRootQueryRetrieveInformationModelMove)][-1]
            assoc.release()
            assert final.Status == 0x0000, (source, destination, hex(final.Status))
        assert received == {"127.0.0.1": 1, "127.0.0.2": 3}
        assert srv.get("/modalities", headers=BASIC).json() == []
    finally:
        for s in receivers:
            s.shutdown()


def test_commands_on_the_board_call_as_the_teacher_with_the_local_token(make_server, tmp_path) -> None:
    """`pipacs import` beside the service (a USB stick on the card, where the only teacher password is
    a hash) sends the token the service wrote beside the index; a wrong token is nobody."""
    import sys

    from .synth import write_series
    srv = make_server({"AuthenticationEnabled": True, "StudentAccess": "off"}, name="card")
    token_file = srv.workdir / "data" / "local-token"
    assert (token_file.stat().st_mode & 0o777) == 0o600
    write_series(tmp_path / "usb", 2, rows=8, cols=8, patient_id="USB1")
    out = subprocess.run([sys.executable, "-m", "appliance", "import", str(tmp_path / "usb"), "--config",
                          str(srv.config_path), "--port", str(srv.http_port), "--quiet"],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0 and "2 stored" in out.stdout, out.stdout + out.stderr
    wrong = srv.request("DELETE", "/patients/x", headers={"X-Pipacs-Local-Token": "0" * 64})
    assert wrong.status == 401
    right = srv.request("GET", "/statistics", headers={"X-Pipacs-Local-Token": token_file.read_text().strip()})
    assert right.status == 200 and right.json()["CountInstances"] == 2


def test_tag_routes_read_only_what_a_student_may_see(classroom) -> None:
    """shared-tags, instances-tags and module of a patient read its published studies only, for a student."""
    pub = classroom.ids["published"]
    hidden = classroom.post("/instances", deidentified(patient_id="ANON1", patient_name="Case^One", study="later"),
                            headers=BASIC).json()
    assert hidden["ParentPatient"] == pub["ParentPatient"]
    patient = f"/patients/{pub['ParentPatient']}"
    assert set(classroom.get_json(f"{patient}/instances-tags")) == {pub["ID"]}
    assert set(classroom.get(f"{patient}/instances-tags", headers=BASIC).json()) == {pub["ID"], hidden["ID"]}
    student_shared = classroom.get_json(f"{patient}/shared-tags?simplify")
    assert student_shared["StudyInstanceUID"] == uid("ANON1/pub")   # one study seen: its UID is shared
    assert "StudyInstanceUID" not in classroom.get(f"{patient}/shared-tags?simplify", headers=BASIC).json()
    for route in ("shared-tags", "instances-tags", "module", "module-patient"):
        assert classroom.get(f"/studies/{hidden['ParentStudy']}/{route}").status == 404, route
        assert classroom.get(f"/studies/{hidden['ParentStudy']}/{route}", headers=BASIC).status == 200, route


async def test_every_student_route_naming_a_resource_is_checked_by_the_middleware() -> None:
    """M2: the access middleware checks what a student's request names through visibility._named; a
    STUDENT route with an {id} that _named cannot resolve would be unchecked (e.g. /pipacs/... before)."""
    from aiohttp.test_utils import make_mocked_request

    from appliance.archive import Level
    from appliance.web.visibility import _named

    app = build_app(None, load_settings(environ={}), 0)  # type: ignore[arg-type]
    ids = {"published": {"ID": "in", "ParentSeries": "se", "ParentStudy": "st", "ParentPatient": "pa"}}
    checked = []
    for (method, path) in sorted(app_routes()):
        if "{id}" not in path or expected_need(method, path) != Role.STUDENT or path.startswith(("/cases/",
                                                                                                  "/sessions/")):
            continue            # a case's or session's {id} is not a resource (they check their own rules:
            #                     a session's by the student's seat in it)
        url = concrete(path, ids)
        match = await app.router.resolve(make_mocked_request(method, url, app=app))
        assert match.route.resource.canonical == path, (path, url)
        named = _named(make_mocked_request(method, url, app=app, match_info=dict(match)))
        assert named is not None, f"{method} {path}: the middleware would not check it"
        level, public_id = named
        assert public_id == match["id"] and isinstance(level, Level)
        segments = path.split("/")
        plural = segments[2] if segments[1] == "pipacs" else segments[1]
        assert plural in ("{level}", level.plural), (path, level)
        checked.append(path)
    assert "/pipacs/series/{id}/stack" in checked and "/pipacs/instances/{id}/frames/{frame}/pixels" in checked
