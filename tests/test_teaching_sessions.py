"""Teaching sessions over REST (issue 21): the routes with teacher and seated-student callers on a
real server, the seat and its join code, and the results functions (plain)."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from .session_fixtures import ELLIPSE, SIZE, Classroom, Student, make_classroom, session_body


@pytest.fixture
def room(make_server) -> Classroom:
    return make_classroom(make_server)


def _orthanc_error(r, status: int, method: str, uri: str | None, message: str | None = None) -> dict:
    """A refusal in Orthanc's error shape with the status, method and URI, and (a regex) message."""
    assert r.status == status, (r.status, r.body[:300])
    err = r.json()
    assert err["HttpStatus"] == status and err["Method"] == method and uri in (None, err["Uri"]), err
    if message is not None:
        assert re.search(message, err["Message"]), err["Message"]
    return err


def _cookie_attributes(r) -> list[str]:
    cookies = [v for k, v in r.headers.items() if k.lower() == "set-cookie" and v.startswith("pipacs_seat=")]
    assert len(cookies) == 1, r.headers
    return [a.strip().lower() for a in cookies[0].split(";")]


def test_the_shared_classroom_has_a_published_case_with_an_ellipse(room: Classroom) -> None:
    assert len(room.instances) == 48
    case = room.teacher_json("GET", f"/cases/{room.case['ID']}")
    assert case["State"] == "published"
    assert case["KeyImages"][0]["Annotations"][0]["Type"] == "ellipse"
    assert room.student().json("GET", f"/cases/{room.case['ID']}")["Findings"]


# ------------------------------------------------------------------ results: plain functions

def _doc(questions: list[dict], case: str = "case-1", **kw) -> dict:
    return {"ID": "s-1", "Title": "Chest", "Cases": [{"Case": case, "Missing": False, "Questions": questions}], **kw}


def _row(q: str, nick: str, answer, case: int = 0, at: str = "2026-12-08T04:10:00Z") -> dict:
    return {"Case": case, "Question": q, "Participant": "p-" + nick, "Nickname": nick, "Answer": answer, "At": at}


CASE = {"ID": "case-1", "Title": "Pneumonia", "KeyImages": [
    {"Instance": "inst-a", "Frame": 1, "Annotations": [{"Type": "length", "Points": [[0, 0], [5, 5]]},
                                                       {"Type": "ellipse", "Points": [[80, 90], [40, 50]]}]},
    {"Instance": "inst-b", "Frame": 2, "Annotations": []}]}


@pytest.mark.parametrize("region, inside, outside", [
    # ellipse of box (40, 50)-(80, 90): centre (60, 70), semi-axes 20 x 20; corners given either way round
    ({"Type": "ellipse", "Points": [[40, 50], [80, 90]]}, [(60, 70), (40, 70), (60, 90), (74, 84)],
     [(41, 51), (79, 89), (39.9, 70), (60, 90.1)]),
    ({"Type": "ellipse", "Points": [[80, 90], [40, 50]]}, [(60, 70)], [(41, 51)]),
    # a wide ellipse: 40 x 10 semi-axes
    ({"Type": "ellipse", "Points": [[0, 0], [80, 20]]}, [(1, 10), (79, 10), (40, 1)], [(40, 21), (2, 2)]),
    ({"Type": "rectangle", "Points": [[10, 10], [20, 30]]}, [(10, 10), (20, 30), (15, 20)], [(9.99, 10), (15, 30.5)]),
    ({"Type": "rectangle", "Points": [[20, 30], [10, 10]]}, [(15, 20)], [(25, 20)]),
    # an L-shaped (concave) polygon: the notch is outside; edges and vertices are inside
    ({"Type": "polygon", "Points": [[0, 0], [10, 0], [10, 4], [4, 4], [4, 10], [0, 10]]},
     [(1, 1), (9, 3), (2, 9), (10, 2), (0, 0), (4, 7), (7, 4)], [(7, 7), (5, 5), (11, 1), (-1, 5)]),
    ({"Type": "polygon", "Points": [[0, 0], [10, 0], [5, 10]]}, [(5, 5), (5, 0)], [(1, 9), (9, 9)]),
])
def test_inside_region(region, inside, outside) -> None:
    from appliance.teaching.session_results import inside_region
    for x, y in inside:
        assert inside_region(region, x, y), (region["Type"], x, y)
    for x, y in outside:
        assert not inside_region(region, x, y), (region["Type"], x, y)


def test_no_region_or_a_degenerate_one_holds_nothing() -> None:
    from appliance.teaching.session_results import inside_region
    assert not inside_region(None, 1, 1)
    assert not inside_region({"Type": "ellipse", "Points": [[5, 5], [5, 9]]}, 5, 7)      # no width
    assert not inside_region({"Type": "polygon", "Points": [[0, 0], [9, 9]]}, 1, 1)
    assert not inside_region({"Type": "rectangle", "Points": [[0, 0], [9, 9]]}, float("nan"), 1)
    assert not inside_region({"Type": "circle", "Points": [[0, 0], [9, 9]]}, 1, 1)


def test_words_are_grouped_without_case_accents_or_blanks_most_first() -> None:
    from appliance.teaching.session_results import group_words
    words = group_words(["Pneumonia", "  pneumonia ", "PNEUMONÍA.", "Pneumonía", "abscess", "Lung  abscess",
                         "lung abscess", "", "   ", "Abscess", "Zebra"])
    assert words == [{"Word": "Pneumonia", "Count": 4}, {"Word": "abscess", "Count": 2},
                     {"Word": "Lung abscess", "Count": 2}, {"Word": "Zebra", "Count": 1}]
    # the spelling shown is the most frequent one
    assert group_words(["TB", "tb", "tb"]) == [{"Word": "tb", "Count": 3}]


def test_results_count_choices_words_and_taps_against_the_key_images_ellipse() -> None:
    from appliance.teaching.session_results import results
    doc = _doc([{"ID": "q1", "Type": "text", "Prompt": "Diagnosis?"},
                {"ID": "q2", "Type": "choice", "Prompt": "Lobe?", "Choices": ["RUL", "RLL", "LUL"], "Correct": [1]},
                {"ID": "q3", "Type": "tap", "Prompt": "Where?", "KeyImage": 0, "Region": None},
                {"ID": "q4", "Type": "tap", "Prompt": "And here?", "KeyImage": 1, "Region": None},
                {"ID": "q5", "Type": "tap", "Prompt": "Box?", "KeyImage": 1,
                 "Region": {"Type": "rectangle", "Points": [[0, 0], [10, 10]]}}])
    answers = [_row("q1", "ana", "pneumonia"), _row("q1", "bo", "Pneumonía "), _row("q1", "cy", "abscess"),
               _row("q2", "ana", [1]), _row("q2", "bo", [1]), _row("q2", "cy", [2]),
               _row("q3", "ana", [60.0, 70.0]), _row("q3", "bo", [61.5, 72.0]), _row("q3", "cy", [5.0, 5.0]),
               _row("q5", "ana", [5.0, 5.0])]
    got = results(doc, answers, {"case-1": CASE}, sizes={"inst-a": (128, 96)})
    assert got["Session"] == "s-1" and got["Title"] == "Chest" and got["Participants"] == ["ana", "bo", "cy"]
    q1, q2, q3, q4, q5 = got["Questions"]
    assert q1 == {"Case": 0, "CaseTitle": "Pneumonia", "Question": "q1", "Type": "text", "Prompt": "Diagnosis?",
                  "Answered": 3, "Words": [{"Word": "pneumonia", "Count": 2}, {"Word": "abscess", "Count": 1}]}
    assert q2["Counts"] == [0, 2, 1] and q2["Correct"] == [1] and q2["Answered"] == 3
    assert q3["Taps"] == [[60.0, 70.0], [61.5, 72.0], [5.0, 5.0]] and q3["Inside"] == 2
    assert q3["InsideShare"] == pytest.approx(2 / 3)
    assert q3["Region"] == {"Type": "ellipse", "Points": [[80, 90], [40, 50]]}      # the first ellipse, not the length
    assert q3["KeyImage"] == {"Instance": "inst-a", "Frame": 1, "Columns": 128, "Rows": 96}
    # no ellipse on key image 1 and no region: taps are kept, nothing is inside, no share
    assert q4["Region"] is None and q4["Answered"] == 0 and q4["InsideShare"] is None and q4["Taps"] == []
    assert q4["KeyImage"] == {"Instance": "inst-b", "Frame": 2, "Columns": None, "Rows": None}
    assert q5["Inside"] == 1 and q5["InsideShare"] == 1.0
    assert results(doc, answers, {"case-1": CASE}, participants=["ana", "bo", "cy", "dee"])["Participants"][-1] == "dee"


def test_results_of_a_missing_case_keep_its_answers_without_its_title_or_image() -> None:
    from appliance.teaching.session_results import results
    doc = _doc([{"ID": "q3", "Type": "tap", "Prompt": "Where?", "KeyImage": 0, "Region": None}])
    doc["Cases"][0]["Missing"] = True
    got = results(doc, [_row("q3", "ana", [1.0, 2.0])], {"case-1": CASE})["Questions"][0]
    assert got["CaseTitle"] == "" and got["KeyImage"] is None and got["Region"] is None and got["Answered"] == 1


def test_the_csv_has_a_bom_rfc4180_quoting_and_no_formulas() -> None:
    import csv
    import io

    from appliance.teaching.session_results import CSV_FIELDS, results_csv
    doc = _doc([{"ID": "q1", "Type": "text", "Prompt": "Say, \"what\"?"},
                {"ID": "q2", "Type": "choice", "Prompt": "Lobe?", "Choices": ["RUL", "=RLL", "LUL"], "Correct": [1]},
                {"ID": "q3", "Type": "tap", "Prompt": "Where?", "KeyImage": 0, "Region": None},
                {"ID": "q4", "Type": "choice", "Prompt": "Any?", "Choices": ["a", "b"], "Correct": []}])
    answers = [_row("q1", "=cmd|' /C calc'!A0", "=1+1"), _row("q1", "bo", "+SUM(A1)"), _row("q1", "cy", "-2"),
               _row("q1", "dee", "@x"), _row("q1", "eve", "two\nlines, and \"quotes\""), _row("q1", "fay", "Été"),
               _row("q2", "bo", [1]), _row("q2", "cy", [0]), _row("q3", "bo", [60.0, 70.0]),
               _row("q3", "cy", [1.25, 2.0]), _row("q4", "bo", [0]), _row("gone", "bo", "x")]
    text = results_csv(doc, answers, {"case-1": {**CASE, "Title": "Pneumonia, RLL"}})
    assert text.startswith("\ufeffsession,case,case_title,") and "\r\n" in text
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline="")))
    assert tuple(rows[0]) == CSV_FIELDS
    body = [dict(zip(CSV_FIELDS, r, strict=True)) for r in rows[1:]]
    assert len(body) == 11                                   # an answer to a question no longer there is left out
    assert [r["answer"] for r in body[:6]] == ["'=1+1", "'+SUM(A1)", "'-2", "'@x", "two\nlines, and \"quotes\"", "Été"]
    assert body[0]["nickname"] == "'=cmd|' /C calc'!A0"
    assert body[0]["session"] == "s-1" and body[0]["case"] == "1" and body[0]["case_title"] == "Pneumonia, RLL"
    assert body[0]["prompt"] == 'Say, "what"?' and body[0]["type"] == "text" and body[0]["correct"] == ""
    assert body[0]["answered_at"] == "2026-12-08T04:10:00Z"
    assert (body[6]["answer"], body[6]["correct"]) == ("'=RLL", "yes")
    assert (body[7]["answer"], body[7]["correct"]) == ("RUL", "no")
    assert (body[8]["answer"], body[8]["inside"]) == ("60.0 70.0", "yes")
    assert (body[9]["answer"], body[9]["inside"], body[9]["correct"]) == ("1.2 2.0", "no", "")
    assert (body[10]["correct"], body[10]["inside"]) == ("", "")    # no answer marked correct
    # nothing but the header when no one answered
    assert results_csv(doc, [], {}) == "\ufeff" + ",".join(CSV_FIELDS) + "\r\n"


def test_the_student_view_has_no_code_correct_or_region_and_only_their_answers() -> None:
    from appliance.teaching.session_results import student_view
    doc = _doc([{"ID": "q2", "Type": "choice", "Prompt": "Lobe?", "Choices": ["a", "b"], "Correct": [1]},
                {"ID": "q3", "Type": "tap", "Prompt": "Where?", "KeyImage": 0,
                 "Region": {"Type": "rectangle", "Points": [[0, 0], [1, 1]]}}], Code="0427", Mode="unknown")
    rows = [_row("q2", "ana", [1]), _row("q2", "bo", [0])]
    view = student_view(doc, "p-ana", "ana", rows)
    assert "Code" not in view and view["Mode"] == "unknown" and view["Cases"][0]["Case"] == "case-1"
    for q in view["Cases"][0]["Questions"]:
        assert "Correct" not in q and "Region" not in q and q["Prompt"]
    assert view["You"] == {"Participant": "p-ana", "Nickname": "ana", "Answers": [rows[0]]}
    assert doc["Code"] == "0427" and doc["Cases"][0]["Questions"][0]["Correct"] == [1]    # the input is not changed
    # a choice question says whether several choices may be chosen (several marked Correct), not which
    assert view["Cases"][0]["Questions"][0]["Multiple"] is False and "Multiple" not in view["Cases"][0]["Questions"][1]
    several = _doc([{"ID": "q2", "Type": "choice", "Prompt": "Which?", "Choices": ["a", "b", "c"], "Correct": [0, 2]},
                    {"ID": "q4", "Type": "choice", "Prompt": "Any?", "Choices": ["a", "b"], "Correct": []}])
    assert [q["Multiple"] for q in student_view(several, "p-ana", "ana", [])["Cases"][0]["Questions"]] == [True, False]
    assert "Multiple" not in several["Cases"][0]["Questions"][0]


# ------------------------------------------------------------------ REST on a real server

def test_a_teacher_makes_drives_and_ends_a_session_and_students_answer(room: Classroom) -> None:
    sid_body = session_body(room.case["ID"])
    made = room.teacher_json("POST", "/sessions", sid_body)
    sid = made["ID"]
    assert made["State"] == "ready" and re.fullmatch(r"\d{4}", made["Code"]) and made["Author"] == "teacher-a"
    assert made["Revealed"] == [] and made["Asked"] is None and made["Participants"] == 0
    assert [q["ID"] for q in made["Cases"][0]["Questions"]] == ["q1", "q2", "q3"]
    assert room.teacher_json("GET", "/sessions") == [sid]
    assert room.teacher_json("GET", "/sessions?expand")[0]["Code"] == made["Code"]
    assert room.teacher_json("GET", f"/sessions/{sid}") == made
    # the teacher edits the title before class
    edited = room.teacher_json("PUT", f"/sessions/{sid}", {"Title": "Tuesday chest"})
    assert edited["Title"] == "Tuesday chest" and edited["Cases"] == made["Cases"]
    # a student joins before the start (ready: students wait in the room)
    ana = room.student()
    seat = ana.join(made["Code"], "  Ana  ")
    assert seat["Session"] == sid and seat["Nickname"] == "Ana" and len(seat["Token"]) >= 32
    assert ana.cookie == seat["Token"]
    view = ana.json("GET", f"/sessions/{sid}")
    assert "Code" not in view and view["Title"] == "Tuesday chest" and view["Cases"][0]["Case"] == room.case["ID"]
    assert all("Correct" not in q and "Region" not in q for q in view["Cases"][0]["Questions"])
    assert view["You"] == {"Participant": seat["Participant"], "Nickname": "Ana", "Answers": []}
    # answers wait for the start and for the question to be asked
    _orthanc_error(ana.answer(sid, 0, "q2", [1]), 409, "POST", f"/sessions/{sid}/answers")
    assert room.teacher_json("POST", f"/sessions/{sid}/start")["State"] == "live"
    _orthanc_error(ana.answer(sid, 0, "q2", [1]), 409, "POST", f"/sessions/{sid}/answers")
    asked = room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q2/ask")
    assert asked["Asked"] == {"Case": 0, "Question": "q2"}
    first = ana.answer(sid, 0, "q2", [0])
    assert first.status == 200, first.body
    row = first.json()
    assert row["Participant"] == seat["Participant"] and row["Answer"] == [0] and row["Nickname"] == "Ana"
    # a second answer (a resend after a reconnect, or a change of mind) replaces the first
    assert ana.answer(sid, 0, "q2", [1]).json()["Answer"] == [1]
    bo = room.student()
    bo.join(made["Code"], "Bo")
    assert bo.answer(sid, 0, "q2", [1]).status == 200
    mine = ana.json("GET", f"/sessions/{sid}")["You"]["Answers"]
    assert [(a["Question"], a["Answer"]) for a in mine] == [("q2", [1])]
    # the tap question: one inside the key image's ellipse, one outside
    room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q3/ask")
    assert ana.answer(sid, 0, "q3", [60.0, 70.0]).status == 200
    assert bo.answer(sid, 0, "q3", [5.0, 5.0]).status == 200
    room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q1/ask")
    assert ana.answer(sid, 0, "q1", "Pneumonía").status == 200
    assert bo.answer(sid, 0, "q1", " pneumonia ").status == 200
    closed = room.teacher_json("POST", f"/sessions/{sid}/close-question")
    assert closed["Asked"] is None
    _orthanc_error(ana.answer(sid, 0, "q1", "x"), 409, "POST", f"/sessions/{sid}/answers")
    # pause and resume
    assert room.teacher_json("POST", f"/sessions/{sid}/pause")["State"] == "paused"
    assert room.teacher_json("POST", f"/sessions/{sid}/start")["State"] == "live"
    # results
    res = room.teacher_json("GET", f"/sessions/{sid}/results")
    assert res["Session"] == sid and res["Title"] == "Tuesday chest" and set(res["Participants"]) == {"Ana", "Bo"}
    q1, q2, q3 = res["Questions"]
    assert q1["Words"] == [{"Word": "Pneumonía", "Count": 2}]
    assert q2["Counts"] == [0, 2, 0] and q2["Correct"] == [1] and q2["Answered"] == 2
    assert q3["Taps"] == [[60.0, 70.0], [5.0, 5.0]] and q3["Inside"] == 1 and q3["InsideShare"] == 0.5
    assert q3["Region"] == {"Type": "ellipse", "Points": ELLIPSE}
    assert q3["KeyImage"] == {"Instance": room.key_instance, "Frame": 1, "Columns": SIZE, "Rows": SIZE}
    assert q3["CaseTitle"] == room.case["Title"]
    # reveal: answers close, the case stays revealed
    room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q2/ask")
    revealed = room.teacher_json("POST", f"/sessions/{sid}/cases/0/reveal")
    assert revealed["Revealed"] == [0]
    _orthanc_error(ana.answer(sid, 0, "q2", [0]), 409, "POST", f"/sessions/{sid}/answers", "revealed")
    # the end: the code is gone, seats with it; results stay
    ended = room.teacher_json("POST", f"/sessions/{sid}/end")
    assert ended["State"] == "ended" and ended["Code"] == ""
    _orthanc_error(room.student().request("POST", "/sessions/join", {"Code": made["Code"], "Nickname": "Cy"}),
                   404, "POST", "/sessions/join", "no live session has that code")
    _orthanc_error(ana.request("GET", f"/sessions/{sid}"), 404, "GET", f"/sessions/{sid}")
    _orthanc_error(room.teacher("PUT", f"/sessions/{sid}", {"Title": "again"}), 409, "PUT", f"/sessions/{sid}")
    _orthanc_error(room.teacher("POST", f"/sessions/{sid}/start"), 409, "POST", f"/sessions/{sid}/start")
    assert room.teacher_json("GET", f"/sessions/{sid}/results")["Questions"][1]["Counts"] == [0, 2, 0]
    # a rerun: a new session, ready, a new code, nothing revealed, no answers
    again = room.teacher("POST", f"/sessions/{sid}/rerun")
    assert again.status == 201, again.body
    copy = again.json()
    assert copy["ID"] != sid and copy["State"] == "ready" and re.fullmatch(r"\d{4}", copy["Code"])
    assert copy["Revealed"] == [] and copy["Cases"] == ended["Cases"]
    assert all(q["Answered"] == 0 for q in room.teacher_json("GET", f"/sessions/{copy['ID']}/results")["Questions"])
    assert room.teacher_json("GET", "/sessions") == [copy["ID"], sid]          # newest first
    # deleted: gone with its answers
    assert room.teacher_json("DELETE", f"/sessions/{sid}") == {}
    _orthanc_error(room.teacher("GET", f"/sessions/{sid}"), 404, "GET", f"/sessions/{sid}")
    _orthanc_error(room.teacher("GET", f"/sessions/{sid}/results"), 404, "GET", f"/sessions/{sid}/results")
    assert room.srv.settled_log().count("Traceback") == 0


def test_the_results_csv_over_http(room: Classroom) -> None:
    doc = room.new_session()
    sid = doc["ID"]
    room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q1/ask")
    evil = room.student()
    evil.join(doc["Code"], "=HYPERLINK(1)")
    assert evil.answer(sid, 0, "q1", "@SUM(A1), \"quoted\"").status == 200
    room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q3/ask")
    assert evil.answer(sid, 0, "q3", [64, 64]).status == 200
    r = room.teacher("GET", f"/sessions/{sid}/results.csv")
    assert r.status == 200 and r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert f'filename="session-{sid}-results.csv"' in r.headers["Content-Disposition"]
    assert r.body.startswith(b"\xef\xbb\xbfsession,case,case_title,question,type,prompt,nickname,answer,correct,"
                             b"inside,answered_at\r\n")
    rows = list(csv.DictReader(io.StringIO(r.body.decode("utf-8-sig"), newline="")))
    assert [(x["question"], x["nickname"], x["answer"], x["inside"]) for x in rows] == [
        ("q1", "'=HYPERLINK(1)", "'@SUM(A1), \"quoted\"", ""), ("q3", "'=HYPERLINK(1)", "64.0 64.0", "yes")]
    assert rows[0]["case"] == "1" and rows[0]["case_title"] == room.case["Title"] and rows[0]["answered_at"]
    # a student reads neither
    for path in (f"/sessions/{sid}/results.csv", f"/sessions/{sid}/results"):
        assert evil.request("GET", path).status == 403


def test_joining_nicknames_cookies_and_rejoining(room: Classroom) -> None:
    doc = room.new_session()
    sid, code = doc["ID"], doc["Code"]
    s = room.student()
    r = s.request("POST", "/sessions/join", {"Code": code, "Nickname": "Ana"})
    assert r.status == 200, r.body
    attrs = _cookie_attributes(r)
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/" in attrs
    ana = r.json()
    assert set(ana) == {"Session", "Participant", "Nickname", "Token"}
    # the nickname is taken (whatever its case) for anyone else ...
    for name in ("Ana", "ana", " ANA "):
        _orthanc_error(room.student().request("POST", "/sessions/join", {"Code": code, "Nickname": name}),
                       409, "POST", "/sessions/join", "taken")
    # ... but the same browser rejoins as the same participant (its cookie), or by the header
    assert s.join(code, "Ana")["Participant"] == ana["Participant"]
    other = Student(room.srv)
    r = other.request("POST", "/sessions/join", {"Code": code, "Nickname": "Ana"}, headers={"X-Pipacs-Seat": ana["Token"]})
    assert r.status == 200 and r.json()["Participant"] == ana["Participant"]
    renamed = s.join(code, "Ana B")                 # a rejoin under a free nickname renames, same participant
    assert (renamed["Participant"], renamed["Nickname"]) == (ana["Participant"], "Ana B")
    assert room.student().join(code, "Ana")["Participant"] != ana["Participant"]     # "Ana" is free again
    # nickname rules: 1..32 characters after trimming, no control characters; fields and types
    assert room.student().join(code, "n" * 32)["Nickname"] == "n" * 32
    for body, field in (({"Code": code, "Nickname": ""}, "Nickname"), ({"Code": code, "Nickname": "   "}, "Nickname"),
                        ({"Code": code, "Nickname": "n" * 33}, "Nickname"),
                        ({"Code": code, "Nickname": "a\x07b"}, "Nickname"),
                        ({"Code": code, "Nickname": "a\u202eb"}, "Nickname"),
                        ({"Code": code, "Nickname": 7}, "Nickname"), ({"Code": code}, "Nickname"),
                        ({"Code": 427, "Nickname": "x"}, "Code"), ({"Nickname": "x"}, "Code"),
                        ({"Code": code, "Nickname": "x", "Admin": True}, "Admin")):
        _orthanc_error(room.student().request("POST", "/sessions/join", body), 400, "POST", "/sessions/join",
                       f"^{field}")
    for raw in ("", "[]", "not json", '"1234"'):
        assert room.student().request("POST", "/sessions/join", raw).status == 400, raw
    assert room.teacher_json("GET", f"/sessions/{sid}")["Participants"] == 3
    assert room.srv.settled_log().count("Traceback") == 0


def test_wrong_codes_are_throttled_per_address_30_a_minute(room: Classroom) -> None:
    doc = room.new_session()
    wrong = "0000" if doc["Code"] != "0000" else "0001"
    # a right code between the guesses does not clear their count (one known code would let anyone
    # guess the other sessions' codes without end)
    assert room.student().join(doc["Code"], "knows-one")["Session"] == doc["ID"]
    for k in range(30):     # 30, not 10: a class behind one NAT address makes typos
        if k == 5:
            assert room.student().join(doc["Code"], "knows-one-again")["Session"] == doc["ID"]
        r = room.student().request("POST", "/sessions/join", {"Code": wrong if k % 2 else "12345678901234567",
                                                              "Nickname": f"guess{k}"})
        _orthanc_error(r, 404, "POST", "/sessions/join", "no live session has that code")
    r = room.student().request("POST", "/sessions/join", {"Code": doc["Code"], "Nickname": "late"})
    _orthanc_error(r, 429, "POST", "/sessions/join", r"^too many wrong codes: wait \d+ s")
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # the teacher's sign-in is counted apart: still open from this address
    assert room.srv.post("/pipacs/sign-in", json.dumps({"User": "teacher-a", "Password": "pw-a-long-enough"})).status == 200
    audit = room.teacher_json("GET", "/pipacs/audit")
    assert sum(1 for e in audit if "wrong session code" in json.dumps(e)) == 30


def test_new_seats_are_capped_per_address_100_a_minute_and_rejoins_are_not(room: Classroom) -> None:
    """A script joining with made-up nicknames would take every seat (and 500 answer buckets)."""
    from appliance.web.access_state import NEW_SEATS
    doc = room.new_session()
    first = room.student()
    first.join(doc["Code"], "seat0")
    taken = room.student().request("POST", "/sessions/join", {"Code": doc["Code"], "Nickname": "seat0"})
    assert taken.status == 409, "a refused join makes no seat and is not counted"
    for k in range(1, NEW_SEATS):
        room.student().join(doc["Code"], f"seat{k}")
    r = room.student().request("POST", "/sessions/join", {"Code": doc["Code"], "Nickname": "one-more"})
    _orthanc_error(r, 429, "POST", "/sessions/join", r"^too many new seats from this address: wait \d+ s")
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # a rejoin with one's own seat is not a new seat: the same participant, even under another name
    again = first.join(doc["Code"], "seat0-renamed")
    assert again["Participant"] == first.seat["Participant"] and again["Token"] == first.seat["Token"]
    assert room.teacher_json("GET", f"/sessions/{doc['ID']}")["Participants"] == NEW_SEATS
    # nor is another session's seat a pass: a new seat elsewhere is counted
    other = room.new_session()
    assert first.request("POST", "/sessions/join", {"Code": other["Code"], "Nickname": "x"}).status == 429
    # wrong codes are their own count: still a 404, not the seats' 429
    wrong = next(c for c in ("0000", "0001", "0002") if c not in (doc["Code"], other["Code"]))
    _orthanc_error(room.student().request("POST", "/sessions/join", {"Code": wrong, "Nickname": "y"}), 404,
                   "POST", "/sessions/join", "no live session has that code")


async def _slow_posts(url: str, bodies: list[bytes], headers: dict[str, str] | None = None) -> list[int]:
    """POST each body at once, each sent in two parts: the first part of every one is out before
    any second part (so every handler has started before any body is complete)."""
    import asyncio

    import aiohttp
    started = asyncio.Event()
    sent = 0

    async def one(body: bytes) -> int:
        async def parts():
            nonlocal sent
            yield body[:5]
            sent += 1
            if sent == len(bodies):
                started.set()
            await started.wait()
            await asyncio.sleep(0.5)          # the first parts reach the server (no timing asserted)
            yield body[5:]
        async with session.post(url, data=parts(), headers={"Content-Type": "application/json",
                                                            **(headers or {})}) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(one(b) for b in bodies)))


def test_wrong_codes_sent_together_with_slow_bodies_are_throttled_too(room: Classroom) -> None:
    import asyncio
    doc = room.new_session()
    wrong = [f"{k:04d}" for k in range(50) if f"{k:04d}" != doc["Code"]][:40]
    bodies = [json.dumps({"Code": c, "Nickname": f"guess{k}"}).encode() for k, c in enumerate(wrong)]
    statuses = asyncio.run(_slow_posts(room.srv.url("/sessions/join"), bodies))
    assert statuses.count(404) <= 30 and statuses.count(404) + statuses.count(429) == 40, statuses
    audit = room.teacher_json("GET", "/pipacs/audit")
    assert sum(1 for e in audit if "wrong session code" in json.dumps(e)) == statuses.count(404)


def test_the_answer_bucket_takes_5_a_second_in_bursts_of_10() -> None:
    from appliance.web.teaching_sessions import AnswerRate
    rate = AnswerRate()
    assert [rate.wait("ana", now=100.0) for _ in range(10)] == [0.0] * 10
    assert rate.wait("ana", now=100.0) == pytest.approx(0.2)      # a token comes back in 1/5 s
    assert rate.wait("ben", now=100.0) == 0.0                     # per participant
    assert rate.wait("ana", now=100.2) == 0.0 and rate.wait("ana", now=100.2) > 0
    assert [rate.wait("ana", now=200.0) for _ in range(11)].count(0.0) == 10   # full again, never above 10
    few = AnswerRate(kept=2)
    for who in ("a", "b", "c"):
        few.wait(who, now=0.0)
    assert len(few._buckets) == 2


def test_a_seat_answering_in_a_loop_gets_429(room: Classroom) -> None:
    doc = room.new_session()
    sid = doc["ID"]
    room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q1/ask")
    ana, ben = room.student(), room.student()
    ana.join(doc["Code"], "Ana")
    ben.join(doc["Code"], "Ben")
    sent = [ana.answer(sid, 0, "q1", f"try {k}") for k in range(30)]
    statuses = [r.status for r in sent]
    assert statuses[:10] == [200] * 10, statuses          # the burst
    # back to back: 20 more within far less than the 4 s it takes to refill 20 tokens
    assert set(statuses) == {200, 429} and statuses.count(429) >= 1, statuses
    refused = next(r for r in sent if r.status == 429)
    _orthanc_error(refused, 429, "POST", f"/sessions/{sid}/answers", "too many answers: at most 5 a second")
    assert refused.headers["Retry-After"] == "1"
    assert ben.answer(sid, 0, "q1", "pneumonia").status == 200      # another seat is not slowed
    rows = room.teacher_json("GET", f"/sessions/{sid}/results")
    assert rows["Questions"][0]["Answered"] == 2


def test_a_body_is_at_most_1_mib(room: Classroom) -> None:
    from appliance.web.teaching_sessions import MAX_SESSION_BODY
    assert MAX_SESSION_BODY == 2**20
    body = json.dumps(session_body(room.case["ID"]))
    assert room.teacher("POST", "/sessions", body + " " * (MAX_SESSION_BODY - len(body))).status == 200
    _orthanc_error(room.teacher("POST", "/sessions", body + " " * (MAX_SESSION_BODY - len(body) + 1)),
                   413, "POST", "/sessions")
    doc = room.new_session()
    student = room.student()
    student.join(doc["Code"], "Ana")
    big = json.dumps({"Case": 0, "Question": "q1", "Answer": "x"}) + " " * MAX_SESSION_BODY
    _orthanc_error(student.request("POST", f"/sessions/{doc['ID']}/answers", big), 413, "POST",
                   f"/sessions/{doc['ID']}/answers")
    _orthanc_error(room.student().request("POST", "/sessions/join", " " * (MAX_SESSION_BODY + 1)), 413,
                   "POST", "/sessions/join")
    _orthanc_error(room.teacher("PUT", f"/sessions/{doc['ID']}", " " * (MAX_SESSION_BODY + 1)), 413,
                   "PUT", f"/sessions/{doc['ID']}")


def test_answers_are_checked_and_only_seated_students_answer(room: Classroom) -> None:
    doc = room.new_session()
    other = room.new_session(title="Another room")
    sid = doc["ID"]
    ana = room.student()
    ana.join(doc["Code"], "Ana")
    stranger = room.student()
    stranger.join(other["Code"], "Stranger")
    room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q1/ask")
    # not seated here: 404 as an unknown session (the open student, one seated elsewhere, the teacher)
    for who in (room.student(), stranger):
        _orthanc_error(who.answer(sid, 0, "q1", "x"), 404, "POST", f"/sessions/{sid}/answers")
        _orthanc_error(who.request("GET", f"/sessions/{sid}"), 404, "GET", f"/sessions/{sid}")
    _orthanc_error(room.teacher("POST", f"/sessions/{sid}/answers", {"Case": 0, "Question": "q1", "Answer": "x"}),
                   404, "POST", f"/sessions/{sid}/answers")
    _orthanc_error(ana.request("GET", "/sessions/no-such-session"), 404, "GET", "/sessions/no-such-session")
    # the token in a header instead of the cookie
    r = Student(room.srv).request("POST", f"/sessions/{sid}/answers", {"Case": 0, "Question": "q1", "Answer": "by header"},
                                  headers={"X-Pipacs-Seat": ana.seat["Token"]})
    assert r.status == 200 and r.json()["Answer"] == "by header"
    assert Student(room.srv, cookie="not-a-seat").answer(sid, 0, "q1", "x").status == 404
    # bad answers: 400 naming what is wrong
    for body, field in (({"Case": 0, "Question": "q1"}, "Answer"), ({"Case": "0", "Question": "q1", "Answer": "x"}, "Case"),
                        ({"Case": True, "Question": "q1", "Answer": "x"}, "Case"),
                        ({"Case": -1, "Question": "q1", "Answer": "x"}, "Case"),
                        ({"Case": 0, "Question": 1, "Answer": "x"}, "Question"),
                        ({"Case": 0, "Question": "q1", "Answer": "x", "Extra": 1}, "Extra"),
                        ({"Case": 0, "Question": "q1", "Answer": "x" * 501}, "Answer"),
                        ({"Case": 0, "Question": "q1", "Answer": ["x"]}, "Answer")):
        _orthanc_error(ana.request("POST", f"/sessions/{sid}/answers", body), 400, "POST", f"/sessions/{sid}/answers",
                       f"^{field}")
    assert ana.answer(sid, 0, "q1", "x" * 500).status == 200
    # (ana has sent her burst of 10 answers: the others come from seats of their own)
    ben, cy = room.student(), room.student()
    ben.join(doc["Code"], "Ben")
    cy.join(doc["Code"], "Cy")
    room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q2/ask")
    for bad in ([3], [-1], [0, 1], "1", [True]):
        assert ben.answer(sid, 0, "q2", bad).status == 400, bad
    room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q3/ask")
    for bad in ([SIZE + 1, 5], [5, -0.5], [1], "1,2", [1, "2"]):
        assert cy.answer(sid, 0, "q3", bad).status == 400, bad
    assert cy.answer(sid, 0, "q3", [SIZE, 0]).status == 200            # the far edge is in the image
    # the asked one only; paused: none
    _orthanc_error(cy.answer(sid, 0, "q1", "late"), 409, "POST", f"/sessions/{sid}/answers")
    room.teacher_json("POST", f"/sessions/{sid}/pause")
    _orthanc_error(cy.answer(sid, 0, "q3", [1, 1]), 409, "POST", f"/sessions/{sid}/answers")
    assert room.srv.settled_log().count("Traceback") == 0


def test_students_call_no_teacher_route(room: Classroom) -> None:
    """A seated student and an open one: every teacher route refused (403), as roles do today."""
    doc = room.new_session()
    sid = doc["ID"]
    ana = room.student()
    ana.join(doc["Code"], "Ana")
    teacher_routes = [("GET", "/sessions"), ("POST", "/sessions"), ("PUT", f"/sessions/{sid}"),
                      ("DELETE", f"/sessions/{sid}"), ("POST", f"/sessions/{sid}/start"),
                      ("POST", f"/sessions/{sid}/pause"), ("POST", f"/sessions/{sid}/end"),
                      ("POST", f"/sessions/{sid}/rerun"), ("POST", f"/sessions/{sid}/cases/0/reveal"),
                      ("POST", f"/sessions/{sid}/cases/0/questions/q1/ask"), ("POST", f"/sessions/{sid}/close-question"),
                      ("GET", f"/sessions/{sid}/results"), ("GET", f"/sessions/{sid}/results.csv")]
    for who in (ana, room.student()):
        for method, path in teacher_routes:
            body = session_body(room.case["ID"]) if method in ("POST", "PUT") else None
            _orthanc_error(who.request(method, path, body), 403, method, path, "needs the teacher")
    after = room.teacher_json("GET", f"/sessions/{sid}")
    assert after["State"] == "live" and after["Revealed"] == [] and room.teacher_json("GET", "/sessions") == [sid]


@pytest.mark.parametrize("access, asked", [("code", "room code"), ("off", "sign in")])
def test_a_seat_is_a_student_even_when_student_access_is_code_or_off(make_server, access: str, asked: str) -> None:
    room = make_classroom(make_server, student_access=access)
    doc = room.new_session()
    sid = doc["ID"]
    nobody = room.student()
    r = nobody.request("GET", f"/sessions/{sid}")
    assert r.status == 401 and asked in r.json()["Message"]
    for method, path in (("GET", "/sessions"), ("POST", f"/sessions/{sid}/end"), ("GET", f"/sessions/{sid}/results"),
                         ("POST", f"/sessions/{sid}/answers")):
        _orthanc_error(nobody.request(method, path, {} if method == "POST" else None), 401, method, path)
    assert nobody.request("GET", f"/cases/{room.case['ID']}").status == 401
    seat = nobody.join(doc["Code"], "Ana")
    assert nobody.json("GET", f"/sessions/{sid}")["You"]["Participant"] == seat["Participant"]
    # the seat lets them read what students read (the published case, its study) ...
    assert nobody.json("GET", f"/cases/{room.case['ID']}")["ID"] == room.case["ID"]
    assert nobody.request("GET", f"/series/{room.series}").status == 200
    who = nobody.json("GET", "/pipacs/session")
    assert who["Role"] == "student"
    # ... and no more: teacher routes are 403, as for any student
    _orthanc_error(nobody.request("GET", "/sessions"), 403, "GET", "/sessions")
    # the end of the session ends the seat: back to needing the room code
    room.teacher_json("POST", f"/sessions/{sid}/end")
    assert nobody.request("GET", f"/cases/{room.case['ID']}").status == 401


def test_refusals_name_the_field_and_say_what_to_do(room: Classroom) -> None:
    case = room.case["ID"]
    for body, field in (({"Title": 1, "Mode": "unknown", "Cases": []}, "Title"),
                        ({"Mode": "quiz", "Cases": []}, "Mode"),
                        ({"Mode": "unknown", "Cases": [], "Colour": "red"}, "Colour"),
                        ({"Mode": "unknown", "Cases": [], "Code": "1234"}, "Code"),
                        ({"Mode": "unknown", "Cases": [{"Case": "no-such-case"}]}, r"Cases\[0\]"),
                        ({"Mode": "unknown", "Cases": [{"Case": case, "Questions": [
                            {"Type": "choice", "Prompt": "p", "Choices": ["one"]}]}]},
                         r"Cases\[0\]\.Questions\[0\]\.Choices")):
        _orthanc_error(room.teacher("POST", "/sessions", body), 400, "POST", "/sessions", f"^{field}")
    for raw in ("", "[]", "not json", "{"):
        _orthanc_error(room.teacher("POST", "/sessions", raw), 400, "POST", "/sessions")
    doc = room.teacher_json("POST", "/sessions", session_body(case))
    sid = doc["ID"]
    _orthanc_error(room.teacher("POST", f"/sessions/{sid}/pause"), 409, "POST", f"/sessions/{sid}/pause")
    _orthanc_error(room.teacher("POST", f"/sessions/{sid}/cases/x/reveal"), 400, "POST", f"/sessions/{sid}/cases/x/reveal")
    # "²" and "٣" are digits to str.isdigit() but not to int(): a 400 too, never a 500
    for raw in ("%C2%B2", "%D9%A3"):
        _orthanc_error(room.teacher("POST", f"/sessions/{sid}/cases/{raw}/reveal"), 400, "POST", None, "case index")
    for path in (f"/sessions/{sid}/cases/5/reveal", f"/sessions/{sid}/cases/0/questions/q9/ask"):
        assert room.teacher("POST", path).status in (400, 404), path
    # a PUT from a stale copy changes nothing
    fresh = room.teacher_json("PUT", f"/sessions/{sid}", {"Title": "one"})
    _orthanc_error(room.teacher("PUT", f"/sessions/{sid}", {"Title": "two", "Updated": doc["Updated"]}), 409,
                   "PUT", f"/sessions/{sid}")
    assert room.teacher_json("PUT", f"/sessions/{sid}", {"Title": "two", "Updated": fresh["Updated"]})["Title"] == "two"
    for method, path in (("GET", "/sessions/nope"), ("PUT", "/sessions/nope"), ("DELETE", "/sessions/nope"),
                         ("POST", "/sessions/nope/start"), ("POST", "/sessions/nope/rerun"),
                         ("GET", "/sessions/nope/results"), ("GET", "/sessions/nope/results.csv")):
        _orthanc_error(room.teacher(method, path, {"Title": "x"} if method == "PUT" else None), 404, method, path)
    assert room.srv.settled_log().count("Traceback") == 0


def test_a_signed_in_teacher_drives_with_the_pages_token(room: Classroom) -> None:
    headers = room.sign_in_cookie()
    body = json.dumps(session_body(room.case["ID"]))
    cookie_only = {"Cookie": headers["Cookie"]}
    assert room.srv.request("POST", "/sessions", body, headers=cookie_only).status == 403
    made = room.srv.request("POST", "/sessions", body, headers=headers)
    assert made.status == 200 and made.json()["Author"] == "teacher-a"
    assert room.srv.request("POST", f"/sessions/{made.json()['ID']}/start", headers=headers).json()["State"] == "live"
    # a join from another site is forgery: refused before anything
    r = room.srv.request("POST", "/sessions/join", json.dumps({"Code": made.json()["Code"], "Nickname": "x"}),
                         headers={"Origin": "http://evil.example", "Content-Type": "application/json"})
    assert r.status == 403
    assert room.teacher_json("GET", f"/sessions/{made.json()['ID']}")["Participants"] == 0


def test_without_authentication_everyone_is_the_teacher(make_server) -> None:
    srv = make_server({}, name="open")
    made = srv.post_json("/sessions", {"Title": "no sign-in", "Mode": "known", "Cases": []})
    assert made["State"] == "ready" and srv.get_json("/sessions") == [made["ID"]]
    seat = srv.post_json("/sessions/join", {"Code": made["Code"], "Nickname": "Ana"})
    assert seat["Session"] == made["ID"]
    assert srv.get_json(f"/sessions/{made['ID']}")["Code"] == made["Code"]      # the teacher's document


def test_a_case_deleted_during_its_session_leaves_its_answers_readable(room: Classroom) -> None:
    doc = room.new_session()
    sid = doc["ID"]
    ana = room.student()
    ana.join(doc["Code"], "Ana")
    room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q3/ask")
    assert ana.answer(sid, 0, "q3", [60, 70]).status == 200
    assert room.teacher_json("DELETE", f"/cases/{room.case['ID']}") == {}
    after = room.teacher_json("GET", f"/sessions/{sid}")
    assert after["Cases"][0]["Missing"] is True
    q3 = room.teacher_json("GET", f"/sessions/{sid}/results")["Questions"][2]
    assert q3["Answered"] == 1 and q3["CaseTitle"] == "" and q3["KeyImage"] is None and q3["InsideShare"] is None
    rows = list(csv.DictReader(io.StringIO(room.teacher("GET", f"/sessions/{sid}/results.csv").body.decode("utf-8-sig"))))
    assert [(r["nickname"], r["answer"], r["inside"]) for r in rows] == [("Ana", "60.0 70.0", "")]
    assert ana.json("GET", f"/sessions/{sid}")["Cases"][0]["Missing"] is True
    assert room.srv.settled_log().count("Traceback") == 0


def test_a_session_seats_500_and_no_more(room: Classroom) -> None:
    from appliance.archive import MAX_PARTICIPANTS
    assert MAX_PARTICIPANTS == 500
    import http.client

    from appliance.web.access_state import NEW_SEATS
    doc = room.new_session()
    for k in range(MAX_PARTICIPANTS):    # from 5 addresses: each may make NEW_SEATS (100) seats a minute
        conn = http.client.HTTPConnection("127.0.0.1", room.srv.http_port, timeout=30,
                                          source_address=(f"127.0.1.{k // NEW_SEATS + 1}", 0))
        conn.request("POST", "/sessions/join", json.dumps({"Code": doc["Code"], "Nickname": f"s{k}"}))
        r = conn.getresponse()
        assert r.status == 200, (k, r.read())
        conn.close()
    _orthanc_error(room.student().request("POST", "/sessions/join", {"Code": doc["Code"], "Nickname": "one more"}),
                   409, "POST", "/sessions/join", "500 participants")
    assert room.teacher_json("GET", f"/sessions/{doc['ID']}")["Participants"] == MAX_PARTICIPANTS


def test_once_answered_a_sessions_cases_stay_but_unrevealed_questions_may_change(room: Classroom) -> None:
    doc = room.new_session()
    sid = doc["ID"]
    ana = room.student()
    ana.join(doc["Code"], "Ana")
    room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q1/ask")
    assert ana.answer(sid, 0, "q1", "pneumonia").status == 200
    _orthanc_error(room.teacher("PUT", f"/sessions/{sid}", {"Cases": []}), 409, "PUT", f"/sessions/{sid}",
                   "rerun the session to change its cases")
    cases = doc["Cases"]
    cases[0]["Questions"].append({"ID": "q4", "Type": "choice", "Prompt": "Sure?", "Choices": ["yes", "no"]})
    changed = room.teacher_json("PUT", f"/sessions/{sid}", {"Cases": cases})
    assert [q["ID"] for q in changed["Cases"][0]["Questions"]] == ["q1", "q2", "q3", "q4"]
    assert room.teacher_json("GET", f"/sessions/{sid}/results")["Questions"][3]["Counts"] == [0, 0]


async def test_many_answers_are_summed_up_off_the_loop(archive, monkeypatch) -> None:
    """Past ANSWERS_ON_THE_LOOP answer rows, results and CSV are made on a thread (the board's loop
    keeps serving the class meanwhile); below it, on the loop."""
    import threading

    from appliance.teaching import session_results as plain
    from appliance.web import teaching_sessions as web_sessions
    case = await archive.create_case({"Title": "t"}, new=True)
    doc = await archive.create_session({"Title": "s", "Mode": "known", "Cases": [{"Case": case["ID"], "Questions": [
        {"ID": "q1", "Type": "text", "Prompt": "p"}]}]}, "teacher-a")
    await archive.set_session_state(doc["ID"], "live")
    await archive.ask_session_question(doc["ID"], 0, "q1")
    for k in range(3):
        seat = await archive.join_session(doc["Code"], f"n{k}")
        await archive.record_answer(doc["ID"], seat.participant_id, 0, "q1", "pneumonia")
    seen: list[str] = []

    def watching(fn):
        def run(*a, **kw):
            seen.append(threading.current_thread().name)
            return fn(*a, **kw)
        return run

    monkeypatch.setattr(web_sessions, "results", watching(plain.results))
    monkeypatch.setattr(web_sessions, "results_csv", watching(plain.results_csv))
    loop_thread = threading.current_thread().name
    monkeypatch.setattr(web_sessions, "ANSWERS_ON_THE_LOOP", 3)
    assert (await web_sessions.session_results(archive, doc["ID"]))["Questions"][0]["Answered"] == 3
    assert (await web_sessions.session_results_csv(archive, doc["ID"]))[1].count("pneumonia") == 3
    assert seen == [loop_thread, loop_thread]
    monkeypatch.setattr(web_sessions, "ANSWERS_ON_THE_LOOP", 2)
    assert (await web_sessions.session_results(archive, doc["ID"]))["Questions"][0]["Words"][0]["Count"] == 3
    await web_sessions.session_results_csv(archive, doc["ID"])
    assert len(seen) == 4 and loop_thread not in seen[2:]
