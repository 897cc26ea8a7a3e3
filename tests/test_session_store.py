"""Teaching sessions in the archive (appliance/archive/sessionstore.py, sessionrules.py,
index/sqlite_sessions.py): the document's rules and limits, state changes, seats and answers,
what unknown cases hold back from students, and what survives a restart; in process, on real
SQLite files (the ``archive`` fixture), with cases on real stored instances."""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import sqlite3
from pathlib import Path

import pydicom
import pytest

from appliance.archive import (
    CASE_ANSWER_FIELDS,
    HELD_BACK_TAGS,
    MAX_CHOICES,
    MAX_NICKNAME_CHARS,
    MAX_PARTICIPANTS,
    MAX_POLYGON_POINTS,
    MAX_PROMPT_CHARS,
    MAX_QUESTIONS,
    MAX_SESSION_CASES,
    MAX_TEXT_ANSWER_CHARS,
    MAX_TITLE_CHARS,
    Archive,
    CaseQuery,
    HeldBack,
    Level,
    NotFound,
    Seat,
    SessionConflict,
    SessionInvalid,
    SessionStale,
    check_answer,
    held_back_case,
)

from .helpers import store
from .synth import ct_instance

FIXTURES = Path(__file__).resolve().parent / "data"


def instance(**kw) -> bytes:
    kw.setdefault("rows", 8)
    kw.setdefault("cols", 10)
    ds = pydicom.dcmread(io.BytesIO(ct_instance(**kw)))
    ds.PatientIdentityRemoved = "YES"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


async def make_case(a: Archive, name: str, key_images: int = 1, **fields) -> dict:
    """A case on its own study (patient ``name``) with key images on its instances (10 x 8 pixels)."""
    ids = [await store(a, instance(patient_id=name, study=name, index=i + 1)) for i in range(max(1, key_images))]
    kis = [{"Instance": ids[i][3], "Caption": f"caption {i}",
            "Annotations": [{"Type": "ellipse", "Points": [[1, 1], [5, 5]], "Text": "here"}]}
           for i in range(key_images)]
    body = {"Title": f"answer {name}", "Findings": "the finding", "Diagnosis": "the diagnosis",
            "History": f"history {name}", "Keywords": ["kw"], "Studies": [ids[0][1]], "KeyImages": kis, **fields}
    return await a.create_case(body, new=True)


def quiz(case_id: str, **entry) -> dict:
    return {"Case": case_id, "Questions": [
        {"Type": "text", "Prompt": "What is it?"},
        {"Type": "choice", "Prompt": "Which?", "Choices": ["a", "b", "c"], "Correct": [1]},
        {"ID": "where", "Type": "tap", "Prompt": "Where?",
         "Region": {"Type": "rectangle", "Points": [[0, 0], [5, 4]]}}], **entry}


# ------------------------------------------------------------------ the document


async def test_a_session_is_created_ready_with_a_code_and_read_back(archive: Archive) -> None:
    case = await make_case(archive, "A")
    doc = await archive.create_session({"Title": "Chest", "Mode": "unknown", "Cases": [quiz(case["ID"])]}, "teacher")
    assert doc["State"] == "ready" and len(doc["Code"]) == 4 and doc["Code"].isdigit()
    assert doc["Author"] == "teacher" and doc["Started"] == doc["Ended"] == "" and doc["Created"] == doc["Updated"]
    assert doc["Revealed"] == [] and doc["Asked"] is None and doc["View"] is None and doc["Participants"] == 0
    qs = doc["Cases"][0]["Questions"]
    assert [q["ID"] for q in qs] == ["q1", "q2", "where"]          # the board names those without an ID
    assert qs[0] == {"ID": "q1", "Type": "text", "Prompt": "What is it?", "Choices": [], "Correct": [],
                     "KeyImage": None, "Region": None}
    assert qs[2]["KeyImage"] == 0 and qs[2]["Region"]["Type"] == "rectangle"
    assert doc["Cases"][0]["AllowRetrieve"] is False and doc["Cases"][0]["Missing"] is False
    assert await archive.get_session(doc["ID"]) == doc
    second = await archive.create_session({"Title": "later"}, "teacher")
    assert [d["ID"] for d in await archive.list_sessions()] == [second["ID"], doc["ID"]]   # newest first
    assert second["Code"] != doc["Code"] and second["Mode"] == "unknown"
    with pytest.raises(NotFound):
        await archive.get_session("nope")


@pytest.mark.parametrize("body, field", [
    ({"Title": "t" * (MAX_TITLE_CHARS + 1)}, "Title"),
    ({"Title": 3}, "Title"),
    ({"Mode": "quiz"}, "Mode"),
    ({"Color": "red"}, "Color"),
    ({"State": "live"}, "State"),
    ({"Code": "1234"}, "Code"),
    ({"Revealed": [0]}, "Revealed"),
    ({"Cases": {}}, "Cases"),
    ({"Cases": [{"Case": "X"}] * (MAX_SESSION_CASES + 1)}, "Cases"),
    ({"Cases": [{}]}, r"Cases\[0\].Case"),
    ({"Cases": [{"Case": "X", "AllowRetrieve": 1}]}, r"Cases\[0\].AllowRetrieve"),
    ({"Cases": [{"Case": "X", "Missing": True}]}, r"Cases\[0\].Missing"),
    ({"Cases": [{"Case": "X", "Extra": 1}]}, r"Cases\[0\].Extra"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "text"}] * (MAX_QUESTIONS + 1)}]}, r"Cases\[0\].Questions"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "essay"}]}]}, r"Cases\[0\].Questions\[0\].Type"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "text", "ID": "a b"}]}]}, r"Cases\[0\].Questions\[0\].ID"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "text", "ID": "x" * 17}]}]}, r"Cases\[0\].Questions\[0\].ID"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "text", "ID": "a"}, {"Type": "text", "ID": "a"}]}]},
     r"Cases\[0\].Questions\[1\].ID"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "text", "Prompt": "p" * (MAX_PROMPT_CHARS + 1)}]}]},
     r"Cases\[0\].Questions\[0\].Prompt"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "choice", "Choices": ["a"]}]}]},
     r"Cases\[0\].Questions\[0\].Choices"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "choice", "Choices": ["a"] * (MAX_CHOICES + 1)}]}]},
     r"Cases\[0\].Questions\[0\].Choices"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "choice", "Choices": ["a", "b" * 201]}]}]},
     r"Cases\[0\].Questions\[0\].Choices\[1\]"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "choice", "Choices": ["a", "b"], "Correct": [2]}]}]},
     r"Cases\[0\].Questions\[0\].Correct"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "choice", "Choices": ["a", "b"], "Correct": [0, 0]}]}]},
     r"Cases\[0\].Questions\[0\].Correct"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "text", "Choices": ["a", "b"]}]}]},
     r"Cases\[0\].Questions\[0\].Choices"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "text", "KeyImage": 0}]}]},
     r"Cases\[0\].Questions\[0\].KeyImage"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "tap", "KeyImage": -1}]}]},
     r"Cases\[0\].Questions\[0\].KeyImage"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "tap", "Region": {"Type": "circle", "Points": []}}]}]},
     r"Cases\[0\].Questions\[0\].Region.Type"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "tap", "Region": {"Type": "ellipse", "Points": [[1, 1]]}}]}]},
     r"Cases\[0\].Questions\[0\].Region.Points"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "tap", "Region": {"Type": "polygon",
                                                                      "Points": [[1, 1], [2, 2]]}}]}]},
     r"Cases\[0\].Questions\[0\].Region.Points"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "tap", "Region": {
        "Type": "polygon", "Points": [[1, 1]] * (MAX_POLYGON_POINTS + 1)}}]}]}, r"Cases\[0\].Questions\[0\].Region.Points"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "tap", "Region": {"Type": "rectangle",
                                                                      "Points": [[1, 1], [2, -1]]}}]}]},
     r"Cases\[0\].Questions\[0\].Region.Points"),
    ({"Cases": [{"Case": "X", "Questions": [{"Type": "tap", "Region": {"Type": "rectangle",
                                                                      "Points": [[1, 1], [2, float("nan")]]}}]}]},
     "not JSON"),
    ({"Title": "\ud800"}, "Unicode"),
])
async def test_bad_documents_are_refused_naming_the_field(archive: Archive, body: dict, field: str) -> None:
    with pytest.raises(SessionInvalid, match=field):
        await archive.create_session(body, "t")
    assert await archive.list_sessions() == []


async def test_the_limits_hold_at_their_numbers(archive: Archive) -> None:
    case = await make_case(archive, "A")
    at_limit = {"Title": "t" * MAX_TITLE_CHARS, "Cases": [
        {"Case": case["ID"], "Questions": [{"Type": "choice", "Prompt": "p" * MAX_PROMPT_CHARS,
                                            "Choices": ["c" * 200] * MAX_CHOICES}] * MAX_QUESTIONS}]}
    doc = await archive.create_session(at_limit, "t")
    assert len(doc["Cases"][0]["Questions"]) == MAX_QUESTIONS
    many = await archive.create_session({"Cases": [{"Case": case["ID"]}] * MAX_SESSION_CASES}, "t")
    assert len(many["Cases"]) == MAX_SESSION_CASES
    polygon = await archive.create_session({"Cases": [{"Case": case["ID"], "Questions": [
        {"Type": "tap", "Region": {"Type": "polygon", "Points": [[1, 1]] * MAX_POLYGON_POINTS}}]}]}, "t")
    assert len(polygon["Cases"][0]["Questions"][0]["Region"]["Points"]) == MAX_POLYGON_POINTS


async def test_cases_must_be_on_the_board_and_tap_questions_on_their_key_images(archive: Archive) -> None:
    case = await make_case(archive, "A", key_images=1)
    inside = {"Type": "rectangle", "Points": [[0, 0], [10, 8]]}      # the image is 10 x 8
    doc = await archive.create_session({"Cases": [{"Case": case["ID"], "Questions": [
        {"Type": "tap", "Region": inside}]}]}, "t")
    assert doc["Cases"][0]["Questions"][0]["Region"] == inside
    with pytest.raises(SessionInvalid, match=r"Cases\[0\].Questions\[0\].Region.Points\[1\]: .* outside"):
        await archive.create_session({"Cases": [{"Case": case["ID"], "Questions": [
            {"Type": "tap", "Region": {"Type": "ellipse", "Points": [[0, 0], [10, 9]]}}]}]}, "t")
    with pytest.raises(SessionInvalid, match=r"Cases\[1\].Case: no case nope"):
        await archive.create_session({"Cases": [{"Case": case["ID"]}, {"Case": "nope"}]}, "t")
    with pytest.raises(SessionInvalid, match=r"Cases\[0\].Questions\[0\].KeyImage: .* 1 key image"):
        await archive.create_session({"Cases": [{"Case": case["ID"], "Questions": [{"Type": "tap", "KeyImage": 1}]}]},
                                     "t")


# ------------------------------------------------------------------ changes


async def test_a_put_merges_and_keeps_answers_consistent(archive: Archive) -> None:
    a, b = await make_case(archive, "A"), await make_case(archive, "B")
    doc = await archive.create_session({"Title": "one", "Cases": [quiz(a["ID"]), quiz(b["ID"])]}, "t")
    told: list = []
    archive.add_session_listener(lambda sid, d: told.append(d))
    changed = await archive.update_session(doc["ID"], {**doc, "Title": "two"}, expect_updated=doc["Updated"])
    assert changed["Title"] == "two" and changed["Cases"] == doc["Cases"] and changed["Updated"] > doc["Updated"]
    assert told == [changed]
    with pytest.raises(SessionStale):
        await archive.update_session(doc["ID"], {"Title": "three"}, expect_updated=doc["Updated"])
    with pytest.raises(SessionStale):
        await archive.update_session(doc["ID"], {**doc, "Title": "three"})         # the copy read before
    with pytest.raises(SessionInvalid, match="Code"):
        await archive.update_session(doc["ID"], {"Code": "9999" if doc["Code"] != "9999" else "9998"})
    with pytest.raises(SessionInvalid, match="State"):
        await archive.update_session(doc["ID"], {**changed, "State": "live"})
    await archive.save_session_view(doc["ID"], {"Image": 2})
    await archive.join_session(doc["Code"], "early")
    kept = await archive.update_session(doc["ID"], {**changed, "Title": "2b"})  # its View and Participants old
    assert kept["Title"] == "2b" and kept["View"] == {"Image": 2} and kept["Participants"] == 1
    with pytest.raises(SessionInvalid, match=r"Cases\[0\].Missing"):
        await archive.update_session(doc["ID"], {"Cases": [dict(quiz(a["ID"]), Missing=True)]})
    swapped = await archive.update_session(doc["ID"], {"Cases": [quiz(b["ID"]), quiz(a["ID"])]})
    assert [e["Case"] for e in swapped["Cases"]] == [b["ID"], a["ID"]]      # no answers yet: free
    live = await archive.set_session_state(doc["ID"], "live")
    with pytest.raises(SessionStale):
        await archive.update_session(doc["ID"], swapped)     # read before the start
    await archive.ask_session_question(doc["ID"], 1, "q1")
    seat = await archive.join_session(live["Code"], "Ann")
    await archive.record_answer(doc["ID"], seat.participant_id, 1, "q1", "x")
    with pytest.raises(SessionConflict, match="rerun the session to change its cases"):
        await archive.update_session(doc["ID"], {"Cases": [quiz(a["ID"]), quiz(b["ID"])]})
    entries = swapped["Cases"]
    more = [entries[0], dict(entries[1], Questions=[*entries[1]["Questions"], {"Type": "text", "Prompt": "More?"}])]
    added = await archive.update_session(doc["ID"], {"Cases": more})
    assert [q["ID"] for q in added["Cases"][1]["Questions"]] == ["q1", "q2", "where", "q3"]
    assert added["Asked"] == {"Case": 1, "Question": "q1"}
    # an answered question keeps its Type and Choices (its answers would drop out of the results);
    # its prompt may change, and an unanswered question's choices too
    def with_q(k: int, **q) -> list:
        qs = [dict(x) for x in added["Cases"][1]["Questions"]]
        qs[k].update(q)
        return [entries[0], dict(added["Cases"][1], Questions=qs)]
    with pytest.raises(SessionConflict, match=r"^Cases\[1\]\.Questions\[0\]\.Type: question q1 has answers.*"
                                              "rerun the session to change it"):
        await archive.update_session(doc["ID"], {"Cases": with_q(0, Type="choice", Choices=["x", "y"])})
    await archive.ask_session_question(doc["ID"], 1, "q2")
    await archive.record_answer(doc["ID"], seat.participant_id, 1, "q2", [1])
    with pytest.raises(SessionConflict, match=r"Questions\[1\]\.Choices: .*rerun the session to change it"):
        await archive.update_session(doc["ID"], {"Cases": with_q(1, Choices=["a", "b", "c", "d"])})
    reworded = await archive.update_session(doc["ID"], {"Cases": with_q(0, Prompt="What is it, then?")})
    assert reworded["Cases"][1]["Questions"][0]["Prompt"] == "What is it, then?"
    assert (await archive.update_session(doc["ID"], {"Cases": [dict(entries[0], Questions=[
        dict(entries[0]["Questions"][1], Choices=["p", "q"], Correct=[0])]), reworded["Cases"][1]]}))
    added = reworded
    await archive.reveal_session_case(doc["ID"], 1)
    with pytest.raises(SessionConflict, match="revealed"):
        await archive.update_session(doc["ID"], {"Cases": [entries[0], dict(entries[1], Questions=[])]})
    gone = await archive.update_session(doc["ID"], {"Cases": [dict(entries[0], Questions=[]), added["Cases"][1]]})
    assert gone["Cases"][0]["Questions"] == [] and gone["Revealed"] == [1]


async def test_reveal_ask_close_and_the_view(archive: Archive) -> None:
    _, doc = await started(archive)
    sid = doc["ID"]
    with pytest.raises(NotFound):
        await archive.reveal_session_case(sid, 1)
    with pytest.raises(NotFound):
        await archive.ask_session_question(sid, 0, "q9")
    asked = await archive.ask_session_question(sid, 0, "q2")
    assert (await archive.ask_session_question(sid, 0, "q2")) == asked      # the same again: no change
    closed = await archive.close_session_question(sid)
    assert closed["Asked"] is None and closed["Updated"] > asked["Updated"]
    revealed = await archive.reveal_session_case(sid, 0)
    assert revealed["Revealed"] == [0]
    assert (await archive.reveal_session_case(sid, 0))["Revealed"] == [0]   # never twice, never un-revealed
    with pytest.raises(SessionConflict, match="revealed"):
        await archive.ask_session_question(sid, 0, "q1")
    told: list = []
    archive.add_session_listener(lambda s, d: told.append(d))
    await archive.save_session_view(sid, {"Case": 0, "Image": 3})
    after = await archive.get_session(sid)
    assert after["View"] == {"Case": 0, "Image": 3} and after["Updated"] == revealed["Updated"] and told == []
    with pytest.raises(SessionInvalid, match="4096"):
        await archive.save_session_view(sid, {"x": "y" * 5000})
    await archive.update_session(sid, {"Title": "renamed"})
    assert (await archive.get_session(sid))["View"] == {"Case": 0, "Image": 3}     # a PUT keeps the view
    await archive.set_session_state(sid, "ended")
    await archive.save_session_view(sid, {"Case": 0, "Image": 9})                 # crossed the end: dropped
    assert (await archive.get_session(sid))["View"] == {"Case": 0, "Image": 3}
    await archive.delete_session(sid)
    assert told[-1] is None
    with pytest.raises(NotFound):
        await archive.get_session(sid)
    with pytest.raises(NotFound):
        await archive.save_session_view(sid, None)


async def test_rerun_copies_the_cases_without_answers(archive: Archive) -> None:
    case, doc = await started(archive)
    seat = await archive.join_session(doc["Code"], "Ann")
    await archive.ask_session_question(doc["ID"], 0, "q1")
    await archive.record_answer(doc["ID"], seat.participant_id, 0, "q1", "x")
    await archive.reveal_session_case(doc["ID"], 0)
    ended = await archive.set_session_state(doc["ID"], "ended")
    again = await archive.rerun_session(doc["ID"], "t")
    assert again["ID"] != doc["ID"] and again["State"] == "ready" and again["Code"] and again["Revealed"] == []
    assert again["Cases"] == ended["Cases"] and again["Participants"] == 0 and again["Asked"] is None
    assert await archive.session_answers(again["ID"]) == []
    assert archive.held_back().cases == {case["ID"]}       # ready counts: held back again


# ------------------------------------------------------------------ states


async def test_state_changes_follow_the_rules(archive: Archive) -> None:
    case = await make_case(archive, "A")
    doc = await archive.create_session({"Cases": [quiz(case["ID"])]}, "t")
    sid = doc["ID"]
    with pytest.raises(SessionConflict, match="only a live session can be paused"):
        await archive.set_session_state(sid, "paused")
    live = await archive.set_session_state(sid, "start")
    assert live["State"] == "live" and live["Started"] and live["Updated"] > doc["Updated"]
    with pytest.raises(SessionConflict, match="live already"):
        await archive.set_session_state(sid, "live")
    paused = await archive.set_session_state(sid, "pause")
    assert paused["State"] == "paused"
    again = await archive.set_session_state(sid, "live")
    assert again["Started"] == live["Started"]           # the first start stays
    ended = await archive.set_session_state(sid, "end")
    assert ended["State"] == "ended" and ended["Code"] == "" and ended["Ended"]
    for state in ("live", "paused", "ended"):
        with pytest.raises(SessionConflict, match="ended"):
            await archive.set_session_state(sid, state)
    with pytest.raises(SessionInvalid, match="State"):
        await archive.set_session_state(sid, "ready")
    with pytest.raises(SessionConflict, match="rerun"):
        await archive.update_session(sid, {"Title": "x"})
    with pytest.raises(NotFound):
        await archive.set_session_state("nope", "live")


async def test_a_ready_session_can_end_at_once(archive: Archive) -> None:
    doc = await archive.create_session({}, "t")
    assert (await archive.set_session_state(doc["ID"], "ended"))["State"] == "ended"


# ------------------------------------------------------------------ seats and answers


async def started(a: Archive, mode: str = "unknown", **entry) -> tuple[dict, dict]:
    case = await make_case(a, "A")
    doc = await a.create_session({"Title": "class", "Mode": mode, "Cases": [quiz(case["ID"], **entry)]}, "t")
    return case, await a.set_session_state(doc["ID"], "live")


async def test_join_seat_of_and_answers(archive: Archive) -> None:
    _, doc = await started(archive)
    sid = doc["ID"]
    seat = await archive.join_session(doc["Code"], "  Ann  ")
    assert isinstance(seat, Seat) and seat.session_id == sid and seat.nickname == "Ann" and len(seat.token) >= 32
    assert archive.seat_of(seat.token) == seat
    assert archive.seat_of("not a token") is None and archive.seat_of("") is None
    assert (await archive.get_session(sid))["Participants"] == 1
    with pytest.raises(SessionConflict, match="that nickname is taken here: choose another"):
        await archive.join_session(doc["Code"], "ann")                   # case-folded
    rejoin = await archive.join_session(doc["Code"], "Ann", token=seat.token)
    assert rejoin == seat
    assert (await archive.get_session(sid))["Participants"] == 1
    bob = await archive.join_session(doc["Code"], "Bob")
    assert bob.participant_id != seat.participant_id and bob.token != seat.token
    with pytest.raises(NotFound, match="no live session has that code"):
        await archive.join_session("0000" if doc["Code"] != "0000" else "0001", "Cy")
    with pytest.raises(NotFound, match="no live session has that code"):
        await archive.join_session("12a4", "Cy")

    with pytest.raises(SessionConflict, match="not the one asked now"):
        await archive.record_answer(sid, seat.participant_id, 0, "q1", "pneumothorax")
    told: list = []
    archive.add_answer_listener(lambda s, row: told.append((s, row)))
    asked = await archive.ask_session_question(sid, 0, "q1")
    assert asked["Asked"] == {"Case": 0, "Question": "q1"}
    row = await archive.record_answer(sid, seat.participant_id, 0, "q1", "pneumothorax")
    assert row["Answer"] == "pneumothorax" and row["Nickname"] == "Ann" and row["Participant"] == seat.participant_id
    assert told == [(sid, row)]
    await archive.record_answer(sid, bob.participant_id, 0, "q1", "effusion")
    again = await archive.record_answer(sid, seat.participant_id, 0, "q1", "tension pneumothorax")  # replaces
    answers = await archive.session_answers(sid)
    assert [(r["Nickname"], r["Answer"]) for r in answers] == [("Ann", "tension pneumothorax"), ("Bob", "effusion")]
    assert answers[0] == again

    await archive.ask_session_question(sid, 0, "q2")
    with pytest.raises(SessionInvalid, match="one choice"):
        await archive.record_answer(sid, bob.participant_id, 0, "q2", [0, 1])
    with pytest.raises(SessionInvalid, match="choice indexes"):
        await archive.record_answer(sid, bob.participant_id, 0, "q2", [3])
    assert (await archive.record_answer(sid, bob.participant_id, 0, "q2", [1]))["Answer"] == [1]
    await archive.ask_session_question(sid, 0, "where")
    with pytest.raises(SessionInvalid, match="outside the image"):
        await archive.record_answer(sid, bob.participant_id, 0, "where", [11, 2])   # the image is 10 x 8
    assert (await archive.record_answer(sid, bob.participant_id, 0, "where", [10, 8]))["Answer"] == [10.0, 8.0]
    with pytest.raises(NotFound):
        await archive.record_answer(sid, "someone", 0, "where", [1, 1])

    await archive.set_session_state(sid, "paused")
    with pytest.raises(SessionConflict, match="paused"):
        await archive.record_answer(sid, bob.participant_id, 0, "where", [1, 1])
    await archive.set_session_state(sid, "live")
    await archive.reveal_session_case(sid, 0)
    with pytest.raises(SessionConflict, match="answers closed when the teacher revealed the case"):
        await archive.record_answer(sid, bob.participant_id, 0, "where", [2, 2])
    await archive.set_session_state(sid, "ended")
    assert archive.seat_of(seat.token) is None                   # a seat lasts the session's life
    with pytest.raises(NotFound, match="no live session has that code"):
        await archive.join_session(doc["Code"], "Dee")
    assert len(await archive.session_answers(sid)) == 4          # results stay readable


async def test_an_answer_and_the_reveal_never_cross(archive: Archive) -> None:
    """Answers sent while the teacher reveals: each is either stored (before the reveal) or refused
    with the reveal's sentence, none is stored after it."""
    _, doc = await started(archive)
    sid = doc["ID"]
    seats = [await archive.join_session(doc["Code"], f"s{i}") for i in range(30)]
    await archive.ask_session_question(sid, 0, "q1")
    calls = [archive.record_answer(sid, s.participant_id, 0, "q1", f"answer {i}") for i, s in enumerate(seats[:15])]
    calls.append(archive.reveal_session_case(sid, 0))
    calls += [archive.record_answer(sid, s.participant_id, 0, "q1", f"answer {i}") for i, s in enumerate(seats[15:])]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert all(isinstance(o, SessionConflict) and "revealed" in str(o) for o in refused)
    stored = await archive.session_answers(sid)
    assert len(stored) == len(outcomes) - 1 - len(refused)
    assert len(stored) == 15 and len(refused) == 15          # the lock serves them in the order they came


async def test_text_answers_and_nicknames_have_limits(archive: Archive) -> None:
    _, doc = await started(archive)
    for bad in ("", "   ", "x" * (MAX_NICKNAME_CHARS + 1), "a\x00b", "a\nb", "Ann\u200b", "\u202eAnn", 7):
        with pytest.raises(SessionInvalid, match="Nickname"):
            await archive.join_session(doc["Code"], bad)
    seat = await archive.join_session(doc["Code"], "n" * MAX_NICKNAME_CHARS)
    await archive.ask_session_question(doc["ID"], 0, "q1")
    with pytest.raises(SessionInvalid, match="500 characters"):
        await archive.record_answer(doc["ID"], seat.participant_id, 0, "q1", "a" * (MAX_TEXT_ANSWER_CHARS + 1))
    row = await archive.record_answer(doc["ID"], seat.participant_id, 0, "q1", "a" * MAX_TEXT_ANSWER_CHARS)
    assert len(row["Answer"]) == MAX_TEXT_ANSWER_CHARS


def test_answers_are_checked_against_their_question() -> None:
    one = {"Type": "choice", "Choices": ["a", "b", "c"], "Correct": [1]}
    several = {"Type": "choice", "Choices": ["a", "b", "c"], "Correct": [0, 2]}
    assert check_answer(several, [2, 0]) == [0, 2] and check_answer(one, [2]) == [2]
    for bad in ([0, 0], [], [True], "a", [1.0]):
        with pytest.raises(SessionInvalid):
            check_answer(several, bad)
    tap = {"Type": "tap"}
    image = {"Rows": 8, "Columns": 10}
    assert check_answer(tap, [0, 0], image) == [0.0, 0.0]
    for bad in ([1], [1, 2, 3], [True, 1], [-0.5, 1], [1, 8.01], [float("inf"), 1], "1,2"):
        with pytest.raises(SessionInvalid, match="Answer"):
            check_answer(tap, bad, image)
    with pytest.raises(SessionInvalid, match="Answer"):
        check_answer({"Type": "text"}, ["text"])


async def test_an_emoji_nickname_is_one(archive: Archive) -> None:
    _, doc = await started(archive)
    seat = await archive.join_session(doc["Code"], "Dr \U0001F469\u200D\u2695\uFE0F")
    assert seat.nickname.startswith("Dr ")


async def test_a_session_takes_500_participants(archive: Archive) -> None:
    _, doc = await started(archive)
    for i in range(MAX_PARTICIPANTS):
        await archive.join_session(doc["Code"], f"student {i}")
    with pytest.raises(SessionConflict, match=f"{MAX_PARTICIPANTS} participants"):
        await archive.join_session(doc["Code"], "one more")
    assert (await archive.get_session(doc["ID"]))["Participants"] == MAX_PARTICIPANTS


# ------------------------------------------------------------------ what is held back


async def test_held_back_follows_sessions_and_their_reveals(archive: Archive) -> None:
    assert not archive.held_back() and archive.held_back() == HeldBack()
    case = await make_case(archive, "A")
    other = await make_case(archive, "B")
    study = case["Studies"][0]
    assert await archive.held_back_study_of(Level.STUDY, study) is None
    doc = await archive.create_session({"Cases": [quiz(case["ID"]), {"Case": other["ID"], "AllowRetrieve": True}]},
                                       "t")
    held = archive.held_back()
    assert held and held.cases == {case["ID"], other["ID"]}          # ready counts
    assert held.studies == {study, other["Studies"][0]}
    assert held.no_retrieve == {study}                                # the other allows retrieve
    res = await archive.get(Level.STUDY, study)
    patient = await archive.index.resource_by_id(res.parent_id)
    assert held.patients == {patient.public_id, (await archive.index.resource_by_id(
        (await archive.get(Level.STUDY, other["Studies"][0])).parent_id)).public_id}
    tags = (await archive.index.main_tags([res.id]))[res.id]
    assert tags["0020,000d"] in held.study_uids
    instance_id = case["KeyImages"][0]["Instance"]
    inst = await archive.get(Level.INSTANCE, instance_id)
    series = await archive.index.resource_by_id(inst.parent_id)
    for level, pub in ((Level.STUDY, study), (Level.SERIES, series.public_id), (Level.INSTANCE, instance_id),
                       (Level.PATIENT, patient.public_id)):
        assert await archive.held_back_study_of(level, pub) == study
    assert await archive.held_back_study_of(Level.STUDY, "nope") is None

    await archive.set_session_state(doc["ID"], "live")
    await archive.reveal_session_case(doc["ID"], 0)
    assert archive.held_back().cases == {other["ID"]}
    assert await archive.held_back_study_of(Level.INSTANCE, instance_id) is None
    await archive.update_session(doc["ID"], {"Mode": "known"})
    assert not archive.held_back()
    await archive.update_session(doc["ID"], {"Mode": "unknown"})
    assert archive.held_back().cases == {other["ID"]}
    await archive.set_session_state(doc["ID"], "ended")
    assert not archive.held_back()
    doc2 = await archive.create_session({"Cases": [{"Case": case["ID"], "AllowRetrieve": True}]}, "t")
    doc3 = await archive.create_session({"Cases": [{"Case": case["ID"]}]}, "t")
    assert archive.held_back().no_retrieve == {study}                 # one entry without AllowRetrieve
    await archive.delete_session(doc3["ID"])
    assert archive.held_back().no_retrieve == frozenset() and archive.held_back().cases == {case["ID"]}
    await archive.delete_session(doc2["ID"])
    assert not archive.held_back()


async def test_held_back_follows_case_changes_and_study_deletes(archive: Archive) -> None:
    case = await make_case(archive, "A")
    extra = await store(archive, instance(patient_id="A", study="A2"))
    doc = await archive.create_session({"Cases": [quiz(case["ID"])]}, "t")
    assert archive.held_back().studies == set(case["Studies"])
    await archive.update_case(case["ID"], {**case, "Studies": [*case["Studies"], extra[1]]})
    assert archive.held_back().studies == {*case["Studies"], extra[1]}
    await archive.delete(Level.STUDY, extra[1])
    assert archive.held_back().studies == set(case["Studies"])
    await archive.set_session_state(doc["ID"], "live")
    asked = await archive.ask_session_question(doc["ID"], 0, "q1")
    seat = await archive.join_session(doc["Code"], "Ann")
    told: list = []
    archive.add_session_listener(lambda sid, d: told.append((sid, d)))
    await archive.delete_case(case["ID"])
    assert not archive.held_back()
    stored = await archive.get_session(doc["ID"])
    assert stored["Cases"][0]["Missing"] is True and stored["Updated"] > asked["Updated"]
    assert stored["Asked"] is None                    # its question cannot be answered any more
    assert told == [(doc["ID"], stored)]
    with pytest.raises(SessionConflict, match="not the one asked"):
        await archive.record_answer(doc["ID"], seat.participant_id, 0, "q1", "x")
    with pytest.raises(SessionConflict, match="was deleted"):
        await archive.ask_session_question(doc["ID"], 0, "q1")
    rerun = await archive.rerun_session(doc["ID"], "t2")
    assert rerun["Cases"] == [] and rerun["State"] == "ready" and rerun["Author"] == "t2"


async def test_a_students_case_list_treats_held_back_cases_as_unknown(archive: Archive) -> None:
    case = await make_case(archive, "A", Collections=["pneumothorax"])
    await archive.set_case_state(case["ID"], "published")
    students = CaseQuery(students=True)
    summaries, _ = await archive.list_cases(students)
    assert summaries[0]["Title"] == "answer A" and summaries[0]["Collections"] == ["pneumothorax"]
    assert (await archive.list_cases(CaseQuery(text="diagnosis", students=True)))[1] == 1
    doc = await archive.create_session({"Cases": [{"Case": case["ID"]}]}, "t")
    summaries, _ = await archive.list_cases(students)
    assert summaries[0]["Title"] == "Unknown case" and summaries[0]["Collections"] == []
    assert summaries[0]["Unknown"] is True and summaries[0]["HeldBack"] is True
    assert (await archive.list_cases(CaseQuery(text="diagnosis", students=True)))[1] == 0   # its answer
    assert (await archive.list_cases(CaseQuery(text="answer", students=True)))[1] == 0      # its title
    assert (await archive.list_cases(CaseQuery(text="history", students=True)))[1] == 1     # its question
    assert (await archive.list_cases(CaseQuery(collection="pneumothorax", students=True)))[1] == 0
    assert (await archive.list_cases(CaseQuery(text="history", collection="pneumothorax", students=True)))[1] == 0
    assert (await archive.list_cases(CaseQuery(collection="pneumothorax")))[1] == 1
    assert (await archive.list_cases(CaseQuery(text="history", collection="pneumothorax")))[1] == 1
    teacher, _ = await archive.list_cases(CaseQuery())
    assert teacher[0]["Title"] == "answer A"
    assert (await archive.list_cases(CaseQuery(text="diagnosis")))[1] == 1
    await archive.set_session_state(doc["ID"], "live")
    await archive.reveal_session_case(doc["ID"], 0)
    assert (await archive.list_cases(students))[0][0]["Title"] == "answer A"
    assert (await archive.list_cases(CaseQuery(text="diagnosis", students=True)))[1] == 1


def test_held_back_case_empties_the_answer() -> None:
    doc = {"ID": "c", "Title": "Pneumothorax", "History": "dyspnoea", "Findings": "f", "Diagnosis": "d",
           "DifferentialDiagnosis": "dd", "Discussion": "x", "TeachingPoints": "tp", "References": "r",
           "Keywords": ["k"], "Collections": ["c"], "DelayReason": "until after the pneumothorax quiz",
           "KeyImages": [{"Instance": "i", "Caption": "arrow at the pleural line", "Window": {"Center": 40, "Width": 400},
                          "Center": [180.5, 96.0], "Zoom": 3.5,
                          "Annotations": [{"Type": "text", "Points": [[1, 1]], "Text": "PTX"}]}]}
    out = held_back_case(doc)
    assert out["Title"] == "Unknown case" and out["HeldBack"] is True and out["History"] == "dyspnoea"
    assert "DelayReason" in CASE_ANSWER_FIELDS
    for f in CASE_ANSWER_FIELDS[1:]:
        assert out[f] in ("", []), f
    # the framing points at the finding (Center, Zoom: null); the window is how the image is read
    assert out["KeyImages"] == [{"Instance": "i", "Caption": "", "Annotations": [], "Center": None, "Zoom": None,
                                 "Window": {"Center": 40, "Width": 400}}]
    assert doc["KeyImages"][0]["Caption"] and doc["Title"] == "Pneumothorax"      # the original untouched


def test_held_back_tags_name_the_giveaway_attributes() -> None:
    assert 0x00081030 in HELD_BACK_TAGS and 0x0008103E in HELD_BACK_TAGS and 0x00100010 in HELD_BACK_TAGS
    # 27 + 11 (review 21 item 4) + 4 documents + 3 board text + 11 segmentation and RT labels (review 21b item 3)
    assert 0x00204000 in HELD_BACK_TAGS and 0x00700081 in HELD_BACK_TAGS and len(HELD_BACK_TAGS) == 56
    assert 0x00620005 in HELD_BACK_TAGS and 0x30060026 in HELD_BACK_TAGS      # SegmentLabel, ROIName
    assert 0x0020000D not in HELD_BACK_TAGS and 0x00080060 not in HELD_BACK_TAGS   # UIDs and Modality stay


# ------------------------------------------------------------------ after a restart


async def test_sessions_seats_and_what_is_held_back_survive_a_restart(tmp_path: Path) -> None:
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    try:
        _, doc = await started(a)
        seat = await a.join_session(doc["Code"], "Ann")
        await a.ask_session_question(doc["ID"], 0, "q1")
        await a.record_answer(doc["ID"], seat.participant_id, 0, "q1", "ptx")
        await a.save_session_view(doc["ID"], {"Case": 0, "Image": 40})
        before = await a.get_session(doc["ID"])
        held = a.held_back()
    finally:
        await a.close()
    db = sqlite3.connect(tmp_path / "data" / "pipacs-index.sqlite")
    stored = db.execute("SELECT token_sha256 FROM session_participants").fetchall()
    assert stored == [(hashlib.sha256(seat.token.encode()).hexdigest(),)]     # the hash only
    assert seat.token not in str(db.execute("SELECT * FROM session_participants").fetchall())
    db.close()
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    try:
        assert a.seat_of(seat.token) == seat
        after = await a.get_session(doc["ID"])
        assert after == before and after["View"] == {"Case": 0, "Image": 40} and after["Participants"] == 1
        assert a.held_back() == held and held
        row = await a.record_answer(doc["ID"], seat.participant_id, 0, "q1", "pneumothorax")
        assert [r["Answer"] for r in await a.session_answers(doc["ID"])] == [row["Answer"]]
        with pytest.raises(SessionConflict, match="taken"):
            await a.join_session(doc["Code"], "ANN")
    finally:
        await a.close()


async def test_an_index_of_schema_6_gains_the_session_tables(tmp_path: Path) -> None:
    """tests/data/schema5 brought to schema 6 by this version's migration with the session tables taken
    away (what a schema 6 index is), then opened: it is schema 7 and takes sessions."""
    shutil.copytree(FIXTURES / "schema5", tmp_path / "data")
    path = tmp_path / "data" / "pipacs-index.sqlite"
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    await a.close()
    db = sqlite3.connect(path)
    db.executescript("BEGIN; DROP TABLE session_answers; DROP TABLE session_participants; "
                     "DROP TABLE teaching_sessions; UPDATE properties SET value='6' WHERE name='schema'; COMMIT;")
    db.close()
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    try:
        doc = await a.create_session({"Title": "after the upgrade"}, "t")
        assert (await a.list_sessions())[0]["ID"] == doc["ID"]
    finally:
        await a.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM properties WHERE name='schema'").fetchone() == ("7",)
    db.close()


async def test_a_failing_migration_leaves_schema_6(tmp_path: Path) -> None:
    """The session tables are made inside the migration's one transaction: a step that fails (a view
    already named session_answers, which cannot be indexed) leaves schema 6 without any of them."""
    from appliance.archive import IndexUnusable
    shutil.copytree(FIXTURES / "schema5", tmp_path / "data")
    path = tmp_path / "data" / "pipacs-index.sqlite"
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    await a.close()
    db = sqlite3.connect(path)
    db.executescript("BEGIN; DROP TABLE session_answers; DROP TABLE session_participants; "
                     "DROP TABLE teaching_sessions; UPDATE properties SET value='6' WHERE name='schema'; "
                     "CREATE VIEW session_answers AS SELECT 1 AS session_id, 1 AS id; COMMIT;")
    db.close()
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    with pytest.raises(IndexUnusable, match="cannot be read"):
        await a.open()
    await a.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM properties WHERE name='schema'").fetchone() == ("6",)
    made = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE name LIKE '%session%'")}
    assert made == {"session_answers"}
    db.close()


async def test_keyed_locks_serialise_one_key_and_forget_idle_ones() -> None:
    """The one helper behind the case and the session locks (casestore, sessionstore)."""
    from appliance.archive.keyedlocks import KeyedLocks
    locks = KeyedLocks()
    order: list[str] = []
    a_holds, release = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with locks("a"):
            order.append("a1 in")
            a_holds.set()
            await release.wait()
            order.append("a1 out")

    async def second() -> None:
        async with locks("a"):
            order.append("a2 in")

    async def other() -> None:
        async with locks("b"):
            order.append("b in")

    one = asyncio.create_task(first())
    await a_holds.wait()
    two, three = asyncio.create_task(second()), asyncio.create_task(other())
    await three                                   # another key does not wait for "a"
    assert order == ["a1 in", "b in"] and len(locks) == 1
    release.set()
    await asyncio.gather(one, two)
    assert order == ["a1 in", "b in", "a1 out", "a2 in"] and len(locks) == 0
    with pytest.raises(RuntimeError):             # a holder that fails lets the lock go too
        async with locks("c"):
            raise RuntimeError("boom")
    assert len(locks) == 0


async def test_the_stores_use_the_one_keyed_lock_helper(archive: Archive) -> None:
    from appliance.archive.keyedlocks import KeyedLocks
    _, doc = await started(archive)
    await archive.ask_session_question(doc["ID"], 0, "q1")
    assert isinstance(archive._session_locks, KeyedLocks) and len(archive._session_locks) == 0
    case = await make_case(archive, "locked")
    await archive.update_case(case["ID"], {"Title": "locked too"})
    assert isinstance(archive._case_locks, KeyedLocks) and len(archive._case_locks) == 0
