"""Shared test data for teaching sessions (issue 21): a real server with sign-in on, a de-identified
CT series, a published case with a key image carrying an ellipse, and HTTP helpers for the teacher
and for seated students.

Use it from a test module::

    from .session_fixtures import Classroom, make_classroom, session_body

    @pytest.fixture
    def room(make_server) -> Classroom:
        return make_classroom(make_server)

    def test_x(room):
        made = room.teacher_json("POST", "/sessions", session_body(room.case["ID"]))
        student = room.student()
        seat = student.join(made["Code"], "Ana")
        ...

Everything is real: the server is ``tests/helpers.Server`` (a pipacs process on loopback), the
images are ``synth.ct_phantom_series`` marked PatientIdentityRemoved (the board publishes only
de-identified studies), the case is made and published through POST /cases.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from .helpers import Response, Server
from .synth import ct_phantom_series

TEACHER_USER, TEACHER_PW = "teacher-a", "pw-a-long-enough"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{TEACHER_USER}:{TEACHER_PW}".encode()).decode()}
SEAT_COOKIE = "pipacs_seat"
SEAT_HEADER = "X-Pipacs-Seat"

SLICES = 48            # >= 41: the live tests move the teacher to image 40
SIZE = 128             # pixels a side (small: 32 KiB a slice)
PIXEL_MM = 3.125       # 128 x 3.125 = the phantom's 400 mm field of view
KEY_IMAGE = 20         # index (0-based, in Instance Number order) of the case's key image
# the key image's ellipse (image pixel coordinates: two opposite corners of its box)
ELLIPSE = [[40.0, 50.0], [80.0, 90.0]]
FINDINGS = "Right lower lobe consolidation with an air bronchogram."
DIAGNOSIS = "Lobar pneumonia"
TITLE = "Pneumonia, right lower lobe"
STUDY_DESCRIPTION = "CT CHEST PNEUMONIA FOLLOW-UP"     # gives the answer away: held back while unknown
SERIES_DESCRIPTION = "Axial lung 2.5 mm pneumonia"


def classroom_config(student_access: str = "open", **extra: Any) -> dict[str, Any]:
    """A locked-down board: a teacher in RegisteredUsers, students as ``student_access`` says."""
    return {"AuthenticationEnabled": True, "RegisteredUsers": {TEACHER_USER: TEACHER_PW},
            "StudentAccess": student_access, **extra}


def _json_body(body: Any) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


@dataclass
class Student:
    """One student's browser: no credentials, only the seat cookie once joined (like an iPad)."""
    srv: Server
    cookie: str = ""            # the pipacs_seat value
    seat: dict[str, Any] = field(default_factory=dict)

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
                ) -> Response:
        h = {"Content-Type": "application/json"} if body is not None else {}
        if self.cookie:
            h["Cookie"] = f"{SEAT_COOKIE}={self.cookie}"
        h.update(headers or {})
        resp = self.srv.request(method, path, _json_body(body), headers=h)
        self._keep_cookie(resp)
        return resp

    def _keep_cookie(self, resp: Response) -> None:
        for k, v in resp.headers.items():
            if k.lower() == "set-cookie" and v.startswith(SEAT_COOKIE + "="):
                self.cookie = v.split(";", 1)[0].split("=", 1)[1].strip('"')

    def json(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        r = self.request(method, path, body)
        assert r.status == status, (method, path, r.status, r.body[:500])
        return r.json()

    def join(self, code: str, nickname: str) -> dict[str, Any]:
        """POST /sessions/join; keeps the cookie. The answer: {"Session", "Participant", "Nickname", "Token"}."""
        self.seat = self.json("POST", "/sessions/join", {"Code": code, "Nickname": nickname})
        return self.seat

    def answer(self, session_id: str, case: int, question: str, answer: Any) -> Response:
        return self.request("POST", f"/sessions/{session_id}/answers",
                            {"Case": case, "Question": question, "Answer": answer})


@dataclass
class Classroom:
    """The board and what is on it. ``instances``: the series' instance IDs in Instance Number order."""
    srv: Server
    study: str
    series: str
    instances: list[str]
    case: dict[str, Any]
    key_instance: str

    # ---- the teacher (HTTP Basic: a script's way; pages sign in with the cookie and CSRF token)
    def teacher(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
                ) -> Response:
        h = dict(BASIC)
        if body is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        return self.srv.request(method, path, _json_body(body), headers=h)

    def teacher_json(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        r = self.teacher(method, path, body)
        assert r.status == status, (method, path, r.status, r.body[:500])
        return r.json()

    def student(self) -> Student:
        """A new student with no seat yet."""
        return Student(self.srv)

    def sign_in_cookie(self) -> dict[str, str]:
        """Headers of a teacher signed in the pages' way: the session cookie and the CSRF token."""
        r = self.srv.post("/pipacs/sign-in", json.dumps({"User": TEACHER_USER, "Password": TEACHER_PW}))
        assert r.status == 200, r.body
        cookie = next(v for k, v in r.headers.items() if k.lower() == "set-cookie").split(";", 1)[0]
        return {"Cookie": cookie, "X-Pipacs-CSRF": r.json()["CSRF"]}

    def new_session(self, mode: str = "unknown", start: bool = True, **fields: Any) -> dict[str, Any]:
        """A session of this board's case (the questions of ``session_body``), started unless told."""
        doc = self.teacher_json("POST", "/sessions", session_body(self.case["ID"], mode=mode, **fields))
        if start:
            doc = self.teacher_json("POST", f"/sessions/{doc['ID']}/start")
        return doc


def phantom_files(folder: Path, slices: int = SLICES, size: int = SIZE, patient_id: str = "ANONSESS",
                  patient_name: str = "Anon^Session", study: str = "sess") -> list[bytes]:
    """The phantom series as de-identified Part-10 files (PatientIdentityRemoved YES, as the board
    wants before it publishes), in Instance Number order."""
    paths = ct_phantom_series(folder, n=slices, size=size, pixel_mm=400 / size, patient_id=patient_id,
                              patient_name=patient_name, study=study, study_description=STUDY_DESCRIPTION,
                              series_description=SERIES_DESCRIPTION)
    out = []
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "pipacs test phantom: synthetic, no patient"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def make_classroom(make_server, student_access: str = "open", slices: int = SLICES, size: int = SIZE,
                   name: str = "classroom", publish: bool = True, **config: Any) -> Classroom:
    """Start a board (``make_server`` is the conftest fixture), store the phantom series, make the
    case (Title, History, Findings, Diagnosis, one key image at index KEY_IMAGE with ELLIPSE) and
    publish it."""
    srv = make_server(classroom_config(student_access, **config), name=name)
    ids = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in phantom_files(Path(tmp), slices, size):
            r = srv.post("/instances", data, headers=BASIC)
            assert r.status == 200, r.body[:300]
            ids.append(r.json())
    study, series = ids[0]["ParentStudy"], ids[0]["ParentSeries"]
    instances = [i["ID"] for i in ids]
    key = instances[KEY_IMAGE]
    body = {"Title": TITLE, "History": "Fever and cough for five days.", "Question": "What is the finding?",
            "Findings": FINDINGS, "Diagnosis": DIAGNOSIS, "Discussion": "Classic lobar pattern.",
            "Keywords": ["pneumonia"], "Studies": [study],
            "KeyImages": [{"Instance": key, "Caption": "the consolidation",
                           "Annotations": [{"Type": "ellipse", "Points": ELLIPSE}]}]}
    room = Classroom(srv, study, series, instances, {}, key)
    case = room.teacher_json("POST", "/cases", body)
    if publish:
        case = room.teacher_json("POST", f"/cases/{case['ID']}/publish")
    room.case = case
    return room


def session_body(case_id: str, mode: str = "unknown", title: str = "Chest conference", **fields: Any
                 ) -> dict[str, Any]:
    """A session document with one case and one question of each type: q1 text, q2 choice (the
    second choice correct), q3 tap (region null: the key image's first ellipse)."""
    return {"Title": title, "Mode": mode, "Cases": [{"Case": case_id, "AllowRetrieve": False, "Questions": [
        {"ID": "q1", "Type": "text", "Prompt": "What is the diagnosis?"},
        {"ID": "q2", "Type": "choice", "Prompt": "Which lobe?", "Choices": ["Right upper", "Right lower", "Left"],
         "Correct": [1]},
        {"ID": "q3", "Type": "tap", "Prompt": "Tap the finding", "KeyImage": 0, "Region": None},
    ]}], **fields}
