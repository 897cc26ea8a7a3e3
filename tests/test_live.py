"""The live channel of a teaching session (issue 21): its plain logic (appliance/teaching/live_state.py)
called directly, then a real server with a teacher and several students on aiohttp's WebSocket client.
No wall-clock assertions: messages are waited for with generous timeouts, their content and order checked."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from appliance.teaching.live_state import (
    FOLLOWER_BURST,
    MAX_MESSAGE_BYTES,
    OVER_LIMIT_CLOSE,
    PRESENTER_BURST,
    Coalescer,
    LiveError,
    Outbox,
    Peer,
    RateLimit,
    SessionHub,
    check_view,
    initial_state,
    merge_view,
    parse_message,
)

SESSION = {"ID": "s1", "State": "live", "Revealed": [1], "Asked": None, "View": None,
           "Cases": [{"Case": "c0", "Missing": False, "Questions": []},
                     {"Case": "c1", "Missing": False, "Questions": []},
                     {"Case": "c2", "Missing": True, "Questions": []}]}


# ------------------------------------------------------------------ messages and the view state

def test_a_message_is_one_json_object_with_a_type_of_at_most_4096_bytes():
    assert parse_message('{"type": "ping", "t": 1}') == {"type": "ping", "t": 1}
    for bad in ("[1]", "nope", '{"t": 1}', '{"type": 3}', '"view"'):
        with pytest.raises(LiveError) as e:
            parse_message(bad)
        assert e.value.code == "bad-message", bad
    at_limit = json.dumps({"type": "ping", "pad": ""})
    at_limit = at_limit[:-2] + "x" * (MAX_MESSAGE_BYTES - len(at_limit)) + '"}'
    assert len(at_limit.encode()) == MAX_MESSAGE_BYTES
    parse_message(at_limit)
    over = at_limit[:-2] + "é" + '"}'         # one more character, two more bytes
    with pytest.raises(LiveError) as e:
        parse_message(over)
    assert e.value.code == "too-big" and "4096" in e.value.message


@pytest.mark.parametrize("fields, code, names", [
    ({"Case": 3}, "bad-view", "Case"),
    ({"Case": -1}, "bad-view", "Case"),
    ({"Case": True}, "bad-view", "Case"),
    ({"Case": 2}, "case-missing", "Case 2"),
    ({"Image": 100_001}, "bad-view", "Image"),
    ({"Image": 1.5}, "bad-view", "Image"),
    ({"Image": None}, "bad-view", "Image"),
    ({"Frame": -1}, "bad-view", "Frame"),
    ({"Window": {"Center": 40, "Width": 0}}, "bad-view", "Window"),
    ({"Window": {"Center": 40, "Width": float("inf")}}, "bad-view", "Window"),
    ({"Window": {"Center": 40, "Width": 400, "Gamma": 1}}, "bad-view", "Window"),
    ({"Zoom": 0.05}, "bad-view", "Zoom"),
    ({"Zoom": 21}, "bad-view", "Zoom"),
    ({"Center": [1, float("nan")]}, "bad-view", "Center"),
    ({"Pointer": [1, 2, 3]}, "bad-view", "Pointer"),
    ({"Pointer": ["1", 2]}, "bad-view", "Pointer"),
    ({"Series": "../x"}, "bad-view", "Series"),
    ({"Revealed": True}, "bad-view", "Revealed"),
    ({"SessionState": "ended"}, "bad-view", "SessionState"),
    ({"Colour": "red"}, "bad-view", "Colour"),
])
def test_a_bad_view_field_is_refused_naming_it(fields, code, names):
    with pytest.raises(LiveError) as e:
        check_view({"type": "view", **fields}, SESSION)
    assert e.value.code == code and names in e.value.message


def test_view_fields_merge_and_the_boards_fields_come_from_the_session():
    fields = check_view({"type": "view", "Case": 1, "Series": "abc-1", "Image": 40, "Frame": None,
                         "Window": {"Center": -600, "Width": 1500}, "Zoom": 2, "Center": [10, 20.5],
                         "Pointer": None}, SESSION)
    hub = SessionHub("s1", SESSION)
    presenter = Peer(presenter=True, student=False, user="t")
    hub.join(presenter)
    assert hub.view(presenter, fields) == (None, "abc-1")
    assert hub.state == {"Case": 1, "Series": "abc-1", "Image": 40, "Frame": None,
                         "Window": {"Center": -600, "Width": 1500}, "Zoom": 2.0, "Center": [10.0, 20.5],
                         "Pointer": None, "Revealed": True, "Asked": None, "SessionState": "live"}
    # another case without a series starts it afresh; the same case keeps what is not sent
    assert merge_view(hub.state, {"Image": 41})["Window"] == {"Center": -600, "Width": 1500}
    fresh = merge_view(hub.state, {"Case": 0})
    assert (fresh["Series"], fresh["Image"], fresh["Window"], fresh["Zoom"]) == (None, 0, None, None)
    # the session's news: Asked and State follow, published as a new state
    seq = hub.seq
    assert hub.session_changed({**SESSION, "Asked": {"Case": 1, "Question": "q1"}, "State": "paused"}) is False
    assert hub.seq == seq + 1 and hub.state["Asked"] == {"Case": 1, "Question": "q1"}
    assert hub.state["SessionState"] == "paused"
    assert hub.session_changed({**SESSION, "State": "ended"}) is True


def test_a_saved_view_is_where_the_channel_starts_unless_it_no_longer_fits():
    saved = {**SESSION, "View": {"Case": 1, "Series": "s", "Image": 7, "Window": None, "Revealed": False}}
    assert initial_state(saved)["Image"] == 7 and initial_state(saved)["Revealed"] is True
    assert initial_state({**SESSION, "View": {"Case": 2, "Image": 7}})["Image"] == 0    # its case was deleted


# ------------------------------------------------------------------ limits

def test_the_follower_bucket_drops_warns_once_a_second_and_closes_after_5_s_over():
    t = 1000.0
    limit = RateLimit.for_role(False, t)
    verdicts = [limit.admit(t) for _ in range(FOLLOWER_BURST + 5)]
    assert verdicts[:FOLLOWER_BURST] == [RateLimit.OK] * FOLLOWER_BURST
    assert verdicts[FOLLOWER_BURST:] == [RateLimit.WARN] + [RateLimit.DROP] * 4
    # 100 a second (ten times the rate): a few taken as the bucket refills, one warning a second,
    # closed once it has been over the limit in every second for OVER_LIMIT_CLOSE seconds
    seen = []
    while True:
        t += 0.01
        v = limit.admit(t)
        seen.append((t, v))
        if v == RateLimit.CLOSE:
            break
        assert t < 1000 + OVER_LIMIT_CLOSE + 1
    warns = [at for at, v in seen if v == RateLimit.WARN]
    # one a second: the one at 1000.0 above, then one in each following second until the close
    assert len(warns) == int(OVER_LIMIT_CLOSE) - 1 and all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(warns))
    assert sum(v == RateLimit.OK for _, v in seen) > 0
    assert seen[-1][0] - 1000 >= OVER_LIMIT_CLOSE


def test_a_burst_then_calm_is_never_closed():
    t = 0.0
    limit = RateLimit.for_role(True, t)
    for _ in range(20):
        assert [limit.admit(t) for _ in range(PRESENTER_BURST)] == [RateLimit.OK] * PRESENTER_BURST
        assert limit.admit(t) == RateLimit.WARN
        t += 3.0         # refilled: 120 tokens at 60 a second take 2 s


def test_the_coalescer_flushes_at_most_once_per_interval_with_every_key():
    c = Coalescer(0.25)
    assert c.note("a", 10.0) == 0.0          # nothing flushed lately: at once
    assert c.note("b", 10.0) is None         # already due
    assert c.take(10.0) == {"a", "b"}
    assert c.note("a", 10.1) == pytest.approx(0.15)
    assert c.note("c", 10.2) is None
    assert c.take(10.25) == {"a", "c"}
    assert c.note("a", 11.0) == 0.0


# ------------------------------------------------------------------ outboxes and the hub

async def drain(box: Outbox) -> list[str]:
    box.close()
    out = []
    while (t := await box.next()) is not None:
        out.append(t)
    return out


async def test_a_slow_follower_gets_the_latest_state_in_order_and_messages_in_between():
    box = Outbox()
    box.put("hello")
    for n in range(1, 50):
        box.put_state(f"state {n}")
    box.put("session")
    box.put_state("state 50")
    got = await drain(box)
    assert got == ["hello", "state 50", "session"] and box.skipped == 49
    # a writer keeping up gets every state
    box = Outbox()
    seen = []

    async def writer():
        while (t := await box.next()) is not None:
            seen.append(t)
    task = asyncio.create_task(writer())
    for n in range(5):
        box.put_state(f"s{n}")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    box.close()
    await asyncio.wait_for(task, 10)
    assert seen == [f"s{n}" for n in range(5)]


async def test_a_client_not_reading_is_closed_once_its_queue_is_full_and_states_never_queue():
    peer = Peer(presenter=False, student=True, outbox=Outbox(max_queued=3))
    for n in range(1000):
        peer.outbox.put_state(f"s{n}")
    assert peer.outbox.pending() == 1
    for n in range(3):
        peer.send(f"m{n}")
    assert not peer.outbox.closed
    peer.send("one too many")
    assert peer.outbox.closed and peer.close_code == 1008 and await drain(peer.outbox) == []


async def test_the_first_presenter_drives_a_second_is_not_driving_until_it_takes():
    hub = SessionHub("s1", SESSION)
    a, b = Peer(presenter=True, student=False, user="a"), Peer(presenter=True, student=False, user="b")
    follower = Peer(presenter=False, student=True, participant="p1", nickname="Ana")
    for p in (a, b, follower):
        hub.join(p)
    assert json.loads(hub.hello(a, {}))["you"]["driving"] is True
    hello = json.loads(hub.hello(follower, {"ID": "s1"}))
    assert hello["you"] == {"role": "follower", "participant": "p1", "nickname": "Ana", "driving": False}
    assert hello["state"] == hub.state and hello["seq"] == 0
    with pytest.raises(LiveError) as e:
        hub.view(follower, {"Image": 3})
    assert e.value.code == "not-presenter"
    with pytest.raises(LiveError) as e:
        hub.view(b, {"Image": 3})
    assert e.value.code == "not-driving"
    hub.take(b)
    hub.view(b, {"Image": 3})
    with pytest.raises(LiveError):
        hub.view(a, {"Image": 4})
    told = [json.loads(t) for t in await drain(a.outbox)]
    assert {"type": "driver", "driving": False, "by": "b"} in told
    assert next(json.loads(t) for t in await drain(b.outbox)) == {"type": "driver", "driving": True, "by": "b"}
    states = [json.loads(t) for t in await drain(follower.outbox)]
    assert states == [{"type": "state", "seq": 1, "state": hub.state}]
    # the driver leaves: the oldest presenter left drives
    hub2 = SessionHub("s1", SESSION)
    for p in (x := Peer(presenter=True, student=False, user="x"), y := Peer(presenter=True, student=False,
                                                                             user="y")):
        hub2.join(p)
    hub2.leave(x)
    assert hub2.driver is y


async def test_ending_tells_everyone_then_closes_1000():
    hub = SessionHub("s1", SESSION)
    peers = [Peer(presenter=False, student=True) for _ in range(3)]
    for p in peers:
        hub.join(p)
    hub.end()
    for p in peers:
        assert await drain(p.outbox) == ['{"type":"ended"}'] and p.close_code == 1000


# ------------------------------------------------------------------ a real server

async def _receive(ws, timeout: float = 30.0) -> dict:
    """The next JSON message (a close or an error fails the test with what came)."""
    import aiohttp
    # wait_for, not receive(timeout=): the server's heartbeat pings (every 20 s) restart receive's own timer
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    return json.loads(msg.data)


async def _until(ws, pred, timeout: float = 30.0) -> dict:
    """Skip messages until one satisfies ``pred``; return it."""
    while True:
        m = await _receive(ws, timeout)
        if pred(m):
            return m


async def _both(ws, *preds, timeout: float = 30.0) -> list[dict]:
    """Skip messages until each predicate has been satisfied by one (in any order); those messages."""
    found: list[dict | None] = [None] * len(preds)
    while not all(found):
        m = await _receive(ws, timeout)
        for i, p in enumerate(preds):
            if found[i] is None and p(m):
                found[i] = m
    return found  # type: ignore[return-value]


async def _closed(ws, timeout: float = 30.0) -> tuple[list[dict], int | None]:
    """The messages before the close, and the close code."""
    import aiohttp
    got = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            got.append(json.loads(msg.data))
            continue
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), msg
        return got, ws.close_code


FLOOD_BURST = 300       # messages sent back to back: far over any bucket, however loaded the machine is


async def _flood(ws, until) -> list[dict]:
    """Unpaced bursts of pings until the socket closes; what came back. After each burst ``until(n)``
    (the others carrying on) runs beside the next bursts, not in their way: the flood never slows to
    the pace of the calm clients, so its rate stays far over the limit on a loaded machine too."""
    import aiohttp
    got: list[dict] = []

    async def read():
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                got.append(json.loads(msg.data))
    reader = asyncio.create_task(read())
    side: asyncio.Task | None = None
    rounds = 0
    n = 0
    try:
        while not reader.done() and n < 600 * FLOOD_BURST:
            try:
                for _ in range(FLOOD_BURST):
                    n += 1
                    await ws.send_str(json.dumps({"type": "ping", "t": n}))
            except ConnectionError:
                break
            if side is None or side.done():
                if side is not None:
                    side.result()          # a failure of the others shows here
                rounds += 1
                side = asyncio.create_task(until(rounds))
            await asyncio.sleep(0.05)
        await asyncio.wait_for(reader, 30)
        if side is not None:
            await asyncio.wait_for(side, 30)
    finally:
        reader.cancel()
        if side is not None:
            side.cancel()
    return got


def echo_server(make_server):
    from .session_fixtures import classroom_config
    return make_server(classroom_config("open"), name="echo")


def teacher_headers() -> dict[str, str]:
    """/pipacs/live-echo is a TEACHER route (the bench signs in)."""
    from .session_fixtures import BASIC
    return dict(BASIC)


async def test_the_echo_is_the_teachers_and_takes_4_sockets_an_address(make_server):
    import aiohttp

    from appliance.web.live import MAX_ECHO_PER_ADDRESS
    assert MAX_ECHO_PER_ADDRESS == 4
    srv = echo_server(make_server)
    base = f"http://127.0.0.1:{srv.http_port}"
    async with aiohttp.ClientSession(base) as anyone:      # StudentAccess "open": a student
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await anyone.ws_connect("/pipacs/live-echo")
        assert e.value.status in (401, 403)
    async with aiohttp.ClientSession(base, headers=teacher_headers()) as http:
        # concurrent upgrades: each counted before its upgrade, so exactly 4 get in
        tries = await asyncio.gather(*(http.ws_connect("/pipacs/live-echo") for _ in range(MAX_ECHO_PER_ADDRESS + 4)),
                                     return_exceptions=True)
        sockets = [t for t in tries if not isinstance(t, BaseException)]
        refused = [t for t in tries if isinstance(t, BaseException)]
        assert len(sockets) == MAX_ECHO_PER_ADDRESS, tries
        assert all(isinstance(t, aiohttp.WSServerHandshakeError) and t.status == 429 for t in refused), refused
        r = await http.get("/pipacs/live-echo", headers=UPGRADE)
        assert r.status == 429 and "4 echo connections are open from your address" in (await r.json())["Message"]
        for ws in sockets:
            await ws.send_str('{"type": "ping", "t": 3}')
            assert await _receive(ws) == {"type": "ping", "t": 3}
        await sockets[0].close()
        for _ in range(200):                 # the server sees the close: the place is free again
            try:
                again = await http.ws_connect("/pipacs/live-echo")
                break
            except aiohttp.WSServerHandshakeError as e:
                assert e.status == 429
                await asyncio.sleep(0.05)
        await again.send_str('{"type": "ping", "t": 4}')
        assert await _receive(again) == {"type": "ping", "t": 4}
        for ws in (*sockets[1:], again):
            await ws.close()


UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


async def test_the_echo_floor_echoes_refuses_a_big_message_with_1009_and_a_flood_with_1008(make_server):
    import aiohttp
    srv = echo_server(make_server)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{srv.http_port}", headers=teacher_headers()) as http:
        ws = await http.ws_connect("/pipacs/live-echo")
        await ws.send_str('{"type": "ping", "t": 1.5}')
        assert await _receive(ws) == {"type": "ping", "t": 1.5}
        await ws.send_str("not json")
        assert (await _receive(ws))["code"] == "bad-message"
        await ws.send_str(json.dumps({"type": "ping", "pad": "x" * MAX_MESSAGE_BYTES}))
        got, code = await _closed(ws)
        assert [m["code"] for m in got] == ["too-big"] and code == 1009
        # a flood: dropped with too-fast (one a second), then closed 1008; another client carries on
        flooder, calm = await http.ws_connect("/pipacs/live-echo"), await http.ws_connect("/pipacs/live-echo")

        async def calm_round(n: int) -> None:
            await calm.send_str(json.dumps({"type": "ping", "t": n}))
            assert (await _receive(calm))["t"] == n
        got = await _flood(flooder, calm_round)
        assert flooder.close_code == 1008
        errors = [m for m in got if m.get("type") == "error"]
        assert {m["code"] for m in errors} == {"too-fast"} and len(errors) >= 2
        assert any(m.get("type") == "ping" for m in got)        # its first messages were echoed
        await calm.send_str('{"type": "ping", "t": -1}')
        assert await _receive(calm) == {"type": "ping", "t": -1}
        await calm.close()


async def test_the_server_closes_every_socket_1001_when_it_stops(make_server):
    import signal

    import aiohttp
    srv = echo_server(make_server)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{srv.http_port}", headers=teacher_headers()) as http:
        sockets = [await http.ws_connect("/pipacs/live-echo") for _ in range(3)]
        for ws in sockets:
            await ws.send_str('{"type": "ping", "t": 0}')
            await _receive(ws)
        # the banner is printed once SIGTERM is the appliance's to handle (before, it kills the process)
        await asyncio.to_thread(srv.wait_for_log, "is running as", 30, 0, "stdout")
        srv.proc.send_signal(signal.SIGTERM)
        codes = [(await _closed(ws))[1] for ws in sockets]
        assert codes == [1001] * 3, (codes, [ws.exception() for ws in sockets], srv.log[-3000:])
    assert await asyncio.to_thread(srv.proc.wait, 30) == 0
    assert "Traceback" not in srv.log and "stopped; these steps failed" not in srv.log
    assert "closing 3 live channel sockets (1001)" in srv.log


def test_a_session_takes_at_most_600_connections_counted_before_their_upgrade():
    """The limits are checked and counted in one step, before the upgrade's await: admitted sockets
    that have not joined yet (upgrades under way) count, so concurrent upgrades cannot pass 600."""
    from appliance.teaching.live_state import MAX_CONNECTIONS, MAX_SEAT_CONNECTIONS
    assert (MAX_CONNECTIONS, MAX_SEAT_CONNECTIONS) == (600, 4)
    hub = SessionHub("s1", SESSION)
    upgrading = [Peer(presenter=False, student=False) for _ in range(MAX_CONNECTIONS - 1)]
    assert all(hub.admit(p) is None for p in upgrading)          # none has joined yet
    assert not hub.full() and hub.peers == []
    last = Peer(presenter=False, student=True, participant="p1")
    assert hub.admit(last) is None and hub.full()
    assert hub.admit(Peer(presenter=True, student=False)) == "session"
    hub.release(upgrading[0])                                   # an upgrade that failed
    hub.release(upgrading[0])                                   # once only
    assert not hub.full() and hub.admitted == MAX_CONNECTIONS - 1
    hub.join(last)
    hub.leave(last)                                             # leaving gives the place back
    assert hub.admitted == MAX_CONNECTIONS - 2 and hub.per_seat == {}


def test_a_seat_takes_at_most_4_connections_and_teachers_count_only_for_the_session():
    from appliance.teaching.live_state import MAX_SEAT_CONNECTIONS
    hub = SessionHub("s1", SESSION)
    mine = [Peer(presenter=False, student=True, participant="p1") for _ in range(MAX_SEAT_CONNECTIONS)]
    assert [hub.admit(p) for p in mine] == [None] * MAX_SEAT_CONNECTIONS
    assert hub.admit(Peer(presenter=False, student=True, participant="p1")) == "seat"
    assert hub.admit(Peer(presenter=False, student=True, participant="p2")) is None
    assert all(hub.admit(Peer(presenter=False, student=False)) is None for _ in range(10))   # projectors
    for p in mine:
        hub.join(p)
    hub.leave(mine[0])
    assert hub.admit(Peer(presenter=False, student=True, participant="p1")) is None


# ------------------------------------------------------------------ the live channel of a real session

@pytest.fixture
def room(make_server):
    from .session_fixtures import make_classroom
    return make_classroom(make_server)


class Room:
    """The classroom of tests/session_fixtures.py with WebSocket clients on it."""

    def __init__(self, room, http):
        self.room = room
        self.http = http

    async def teacher(self, session_id: str, presenter: bool = True, headers: dict | None = None):
        from .session_fixtures import BASIC
        ws = await self.http.ws_connect(f"/sessions/{session_id}/live" + ("?as=presenter" if presenter else ""),
                                        headers=headers or BASIC)
        return ws, await _receive(ws)

    async def student(self, session_id: str, token: str):
        ws = await self.http.ws_connect(f"/sessions/{session_id}/live", headers={"Cookie": f"pipacs_seat={token}"})
        return ws, await _receive(ws)

    def seats(self, code: str, n: int) -> list[str]:
        return [self.room.student().join(code, f"Student {k}")["Token"] for k in range(n)]


def _state_with(image: int):
    return lambda m: m.get("type") == "state" and m["state"]["Image"] == image


LUNG = {"Center": -600, "Width": 1500}


async def test_followers_follow_the_teacher_and_the_drive_is_one_teachers_at_a_time(room):
    import aiohttp
    session = room.new_session(mode="known")
    sid = session["ID"]
    async with aiohttp.ClientSession(f"http://127.0.0.1:{room.srv.http_port}") as http:
        r = Room(room, http)
        tokens = r.seats(session["Code"], 3)
        teacher, hello = await r.teacher(sid)
        assert hello["type"] == "hello" and hello["you"] == {"role": "presenter", "participant": None,
                                                             "nickname": None, "driving": True}
        assert hello["session"]["Code"] == session["Code"] and hello["state"]["SessionState"] == "live"
        students = []
        for k, tok in enumerate(tokens):
            ws, h = await r.student(sid, tok)
            assert h["you"]["role"] == "follower" and h["you"]["nickname"] == f"Student {k}"
            assert "Code" not in h["session"] and h["session"]["You"]["Nickname"] == f"Student {k}"
            assert all("Correct" not in q and "Region" not in q for q in h["session"]["Cases"][0]["Questions"])
            assert h["state"] == hello["state"]
            students.append(ws)
        # the teacher moves to image 40 in lung window: every follower gets it
        await teacher.send_str(json.dumps({"type": "view", "Case": 0, "Series": room.series, "Image": 40,
                                           "Window": LUNG, "Pointer": [64, 60]}))
        seqs = []
        for ws in students:
            m = await _until(ws, _state_with(40))
            assert m["state"]["Window"] == LUNG and m["state"]["Series"] == room.series
            assert m["state"]["Pointer"] == [64.0, 60.0] and m["state"]["Case"] == 0
            seqs.append(m["seq"])
        assert len(set(seqs)) == 1 and seqs[0] > hello["seq"]
        # a student sending a presenter command is told so, and nothing changes
        await students[0].send_str(json.dumps({"type": "view", "Image": 3}))
        assert (await _until(students[0], lambda m: m.get("type") == "error"))["code"] == "not-presenter"
        await students[0].send_str(json.dumps({"type": "take"}))
        assert (await _until(students[0], lambda m: m.get("type") == "error"))["code"] == "not-presenter"
        # a series not of the case, a bad field
        await teacher.send_str(json.dumps({"type": "view", "Series": "0" * 8 + "-" + "1" * 8}))
        assert (await _until(teacher, lambda m: m.get("type") == "error"))["code"] == "bad-view"
        await teacher.send_str(json.dumps({"type": "view", "Zoom": 50}))
        err = await _until(teacher, lambda m: m.get("type") == "error")
        assert err["code"] == "bad-view" and "Zoom" in err["message"]
        # a second presenter: not driving until it takes over
        second, hello2 = await r.teacher(sid, headers=room.sign_in_cookie())
        assert hello2["you"]["driving"] is False and hello2["state"]["Image"] == 40
        await second.send_str(json.dumps({"type": "view", "Image": 41}))
        assert (await _until(second, lambda m: m.get("type") == "error"))["code"] == "not-driving"
        await second.send_str('{"type": "take"}')
        assert (await _until(second, lambda m: m.get("type") == "driver")) == {
            "type": "driver", "driving": True, "by": "teacher-a"}
        assert (await _until(teacher, lambda m: m.get("type") == "driver"))["driving"] is False
        await second.send_str(json.dumps({"type": "view", "Image": 42}))
        for ws in students:
            await _until(ws, _state_with(42))
        await teacher.send_str(json.dumps({"type": "view", "Image": 43}))
        assert (await _until(teacher, lambda m: m.get("type") == "error"))["code"] == "not-driving"
        # ping, and a reconnect gets hello with the current state at once
        await students[1].send_str('{"type": "ping", "t": 7}')
        assert await _until(students[1], lambda m: m.get("type") == "pong") == {"type": "pong", "t": 7}
        await students[2].close()
        again, h = await r.student(sid, tokens[2])
        assert h["type"] == "hello" and h["state"]["Image"] == 42 and h["state"]["Window"] == LUNG
        # the projector: a teacher without ?as=presenter follows
        projector, hp = await r.teacher(sid, presenter=False)
        assert hp["you"]["role"] == "follower" and hp["state"]["Image"] == 42
        for ws in (*students, again, teacher, second, projector):
            await ws.close()


async def test_a_flood_and_a_big_message_close_one_student_while_the_others_carry_on(room):
    import aiohttp
    session = room.new_session(mode="known")
    sid = session["ID"]
    async with aiohttp.ClientSession(f"http://127.0.0.1:{room.srv.http_port}") as http:
        r = Room(room, http)
        tokens = r.seats(session["Code"], 3)
        teacher, _ = await r.teacher(sid)
        flooder, _ = await r.student(sid, tokens[0])
        big, _ = await r.student(sid, tokens[1])
        calm, _ = await r.student(sid, tokens[2])
        await big.send_str(json.dumps({"type": "ping", "t": 1, "pad": "x" * MAX_MESSAGE_BYTES}))
        got, code = await _closed(big)
        assert [m["code"] for m in got if m["type"] == "error"] == ["too-big"] and code == 1009
        image = [0]

        async def teacher_moves(n: int) -> None:
            image[0] += 1              # the teacher goes on moving; the calm student follows
            await teacher.send_str(json.dumps({"type": "view", "Case": 0, "Image": image[0]}))
            await _until(calm, _state_with(image[0]))
        got = await _flood(flooder, teacher_moves)
        assert flooder.close_code == 1008
        assert {m["code"] for m in got if m.get("type") == "error"} == {"too-fast"}
        assert image[0] >= 2
        await teacher.send_str(json.dumps({"type": "view", "Image": 30}))
        await _until(calm, _state_with(30))
        # the flooder comes back: hello with the current state
        back, h = await r.student(sid, tokens[0])
        assert h["state"]["Image"] == 30
        for ws in (teacher, calm, back):
            await ws.close()


async def test_who_may_connect_is_decided_before_the_upgrade(room):
    import aiohttp
    session = room.new_session(mode="known")
    other = room.new_session(mode="known", title="Other")
    sid = session["ID"]
    async with aiohttp.ClientSession(f"http://127.0.0.1:{room.srv.http_port}") as http:
        r = Room(room, http)
        mine = r.seats(other["Code"], 1)[0]
        for headers in ({}, {"Cookie": "pipacs_seat=not-a-seat"}, {"Cookie": f"pipacs_seat={mine}"}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(f"/sessions/{sid}/live", headers=headers)
            assert e.value.status == 404, headers
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await r.teacher("no-such-session")
        assert e.value.status == 404
        ws, hello = await r.student(other["ID"], mine)       # the right session: in
        assert hello["you"]["participant"]
        await ws.close()
        ws = await http.ws_connect(f"/sessions/{other['ID']}/live", headers={"X-Pipacs-Seat": mine})  # a script's
        assert (await _receive(ws))["you"]["participant"] == hello["you"]["participant"]
        await ws.close()
        # never a token in the URL (it would end up in logs and histories): ?seat= is not a seat
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await http.ws_connect(f"/sessions/{other['ID']}/live?seat={mine}")
        assert e.value.status == 404


async def test_one_seat_takes_4_sockets_the_next_refused_429_before_the_upgrade(room):
    """Eight upgrades of one seat at once: each is counted before its upgrade, so exactly 4 get in and
    the others get 429 with a sentence; a closed one frees its place; another seat is not affected."""
    import aiohttp

    from appliance.teaching.live_state import MAX_SEAT_CONNECTIONS
    session = room.new_session(mode="known")
    sid = session["ID"]
    async with aiohttp.ClientSession(f"http://127.0.0.1:{room.srv.http_port}") as http:
        r = Room(room, http)
        mine, other = r.seats(session["Code"], 2)
        cookie = {"Cookie": f"pipacs_seat={mine}"}
        tries = await asyncio.gather(*(http.ws_connect(f"/sessions/{sid}/live", headers=cookie)
                                       for _ in range(MAX_SEAT_CONNECTIONS + 4)), return_exceptions=True)
        sockets = [t for t in tries if not isinstance(t, BaseException)]
        refused = [t for t in tries if isinstance(t, BaseException)]
        assert len(sockets) == MAX_SEAT_CONNECTIONS, tries
        assert all(isinstance(t, aiohttp.WSServerHandshakeError) and t.status == 429 for t in refused), refused
        resp = await http.get(f"/sessions/{sid}/live", headers={**cookie, **UPGRADE})
        body = await resp.json()
        assert resp.status == 429 and "this seat already has 4 live connections open" in body["Message"]
        for ws in sockets:
            assert (await _receive(ws))["type"] == "hello"
        ws, h = await r.student(sid, other)                       # another seat: in
        assert h["type"] == "hello"
        teacher, _ = await r.teacher(sid)
        await teacher.send_str(json.dumps({"type": "view", "Case": 0, "Image": 5}))
        for s in (*sockets, ws):
            await _until(s, _state_with(5))
        await sockets[0].close()
        for _ in range(200):                 # the server sees the close: the place is free again
            try:
                again, h = await r.student(sid, mine)
                break
            except aiohttp.WSServerHandshakeError as e:
                assert e.status == 429
                await asyncio.sleep(0.05)
        assert h["state"]["Image"] == 5
        for s in (*sockets[1:], again, ws, teacher):
            await s.close()


async def test_the_sessions_news_reach_the_followers_and_an_ended_session_closes_them(room):
    import aiohttp
    second = room.teacher_json("POST", "/cases", {"Title": "Second case", "Studies": [room.study]})
    from .session_fixtures import session_body
    body = session_body(room.case["ID"], mode="known")
    body["Cases"].append({"Case": second["ID"], "AllowRetrieve": False, "Questions": []})
    session = room.teacher_json("POST", "/sessions", body)
    sid = session["ID"]
    room.teacher_json("POST", f"/sessions/{sid}/start")
    async with aiohttp.ClientSession(f"http://127.0.0.1:{room.srv.http_port}") as http:
        r = Room(room, http)
        tokens = r.seats(session["Code"], 2)
        teacher, _ = await r.teacher(sid)
        students = [(await r.student(sid, t))[0] for t in tokens]
        await teacher.send_str(json.dumps({"type": "view", "Case": 0, "Series": room.series, "Image": 20}))
        for ws in students:
            await _until(ws, _state_with(20))
        # reveal through REST: a session message to everyone, the state says Revealed
        room.teacher_json("POST", f"/sessions/{sid}/cases/0/reveal")
        for ws in students:
            m, _ = await _both(ws, lambda m: m.get("type") == "session" and 0 in m["session"]["Revealed"],
                               lambda m: m.get("type") == "state" and m["state"]["Revealed"] is True)
            assert "Code" not in m["session"] and m["session"]["You"]["Nickname"].startswith("Student")
            questions = [q for c in m["session"]["Cases"] for q in c["Questions"]]
            assert questions and all("Correct" not in q and "Region" not in q for q in questions)
        m = await _until(teacher, lambda m: m.get("type") == "session" and 0 in m["session"]["Revealed"])
        assert m["session"]["Code"] == session["Code"]
        questions = [q for c in m["session"]["Cases"] for q in c["Questions"]]       # the teacher's has them
        assert any("Correct" in q for q in questions) and any("Region" in q for q in questions)
        # a case deleted during the session: a view to it is refused, the session goes on
        assert room.teacher("DELETE", f"/cases/{second['ID']}").status == 200
        await _until(teacher, lambda m: m.get("type") == "session" and m["session"]["Cases"][1]["Missing"])
        await teacher.send_str(json.dumps({"type": "view", "Case": 1}))
        err = await _until(teacher, lambda m: m.get("type") == "error")
        assert err["code"] == "case-missing"
        await teacher.send_str(json.dumps({"type": "view", "Image": 21}))
        for ws in students:
            await _until(ws, _state_with(21))
        # the end: {"type": "ended"} then close 1000, and no new connection
        room.teacher_json("POST", f"/sessions/{sid}/end")
        for ws in (*students, teacher):
            got, code = await _closed(ws)
            assert got[-1] == {"type": "ended"} and code == 1000
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await r.teacher(sid)
        assert e.value.status == 409


async def test_answers_reach_the_presenter_as_summaries(room):
    import aiohttp
    session = room.new_session(mode="unknown")
    sid = session["ID"]
    async with aiohttp.ClientSession(f"http://127.0.0.1:{room.srv.http_port}") as http:
        r = Room(room, http)
        teacher, _ = await r.teacher(sid)
        room.teacher_json("POST", f"/sessions/{sid}/cases/0/questions/q2/ask")
        await _until(teacher, lambda m: m.get("type") == "state" and m["state"]["Asked"] == {"Case": 0,
                                                                                           "Question": "q2"})
        pupils = [room.student() for _ in range(3)]
        for k, p in enumerate(pupils):
            p.join(session["Code"], f"P{k}")
            assert p.answer(sid, 0, "q2", [1 if k else 0]).status == 200
        m = await _until(teacher, lambda m: m.get("type") == "answers" and m["answered"] == 3)
        assert (m["case"], m["question"]) == (0, "q2") and m["summary"]["Counts"] == [1, 2, 0]
        await teacher.close()


async def test_the_presenters_series_is_warmed_and_the_view_saved_and_resumed_after_a_restart(room):
    import aiohttp
    session = room.new_session(mode="known")
    sid = session["ID"]
    async with aiohttp.ClientSession(f"http://127.0.0.1:{room.srv.http_port}") as http:
        r = Room(room, http)
        teacher, _ = await r.teacher(sid)
        before = room.teacher_json("GET", "/pipacs/class/prepare")["Cache"]["Entries"]
        assert before < len(room.instances)
        await teacher.send_str(json.dumps({"type": "view", "Case": 0, "Series": room.series, "Image": 33,
                                           "Window": LUNG}))
        await _until(teacher, _state_with(33))
        # the series the presenter opened is warmed into the class cache: its stack and every frame
        for _ in range(600):
            entries = room.teacher_json("GET", "/pipacs/class/prepare")["Cache"]["Entries"]
            if entries >= before + len(room.instances) + 1:
                break
            await asyncio.sleep(0.1)
        assert entries >= before + len(room.instances) + 1
        for _ in range(300):                      # saved at most every 2 s: wait for it
            view = room.teacher_json("GET", f"/sessions/{sid}")["View"]
            if view and view.get("Image") == 33:
                break
            await asyncio.sleep(0.1)
        assert view["Image"] == 33 and view["Window"] == LUNG
        await teacher.close()
    room.srv.stop()
    room.srv.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{room.srv.http_port}") as http:
        teacher, hello = await Room(room, http).teacher(sid)
        assert hello["state"]["Image"] == 33 and hello["state"]["Series"] == room.series
        await teacher.close()


async def test_the_channel_declines_permessage_deflate(make_server):
    """A browser offers permessage-deflate; a state compressed once per follower would cost the board's
    core sixty compressions per change: the server's answer leaves the extension out."""
    import aiohttp
    srv = echo_server(make_server)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{srv.http_port}", headers=teacher_headers()) as http:
        ws = await http.ws_connect("/pipacs/live-echo", compress=15)
        assert ws.compress == 0
        await ws.send_str('{"type": "ping", "t": 2}')
        assert await _receive(ws) == {"type": "ping", "t": 2}
        await ws.close()


# ------------------------------------------------------------------ a session change's messages

def test_a_session_message_is_each_students_view_made_in_one_pass():
    """The students' shared part serialised once, each seat's own answers spliced in: the same JSON as
    the student view of that seat (no Code, Correct or Region; only their answers)."""
    from appliance.teaching.live_state import session_messages
    from appliance.teaching.session_results import student_view
    doc = {"ID": "s1", "Code": "0427", "State": "live", "Revealed": [], "Asked": None, "Title": "Chest \u00e9",
           "Cases": [{"Case": "c0", "Missing": False, "Questions": [
               {"ID": "q1", "Type": "choice", "Prompt": "Which?", "Choices": ["a", "b"], "Correct": [1]},
               {"ID": "q2", "Type": "tap", "Prompt": "Where?", "KeyImage": 0,
                "Region": {"Type": "ellipse", "Points": [[1, 2], [3, 4]]}}]}]}
    seats = {f"p{k}": f"Student {k}" for k in range(50)}
    answers = [{"Case": 0, "Question": "q1", "Participant": f"p{k % 40}", "Nickname": f"Student {k % 40}",
                "Answer": [k % 2], "At": f"2026-12-08T04:{k % 60:02d}:00Z"} for k in range(400)]
    teacher, texts = session_messages(doc, seats, answers)
    assert json.loads(teacher) == {"type": "session", "session": doc}
    assert set(texts) == set(seats)
    for pid, nick in seats.items():
        got = json.loads(texts[pid])
        assert got == {"type": "session", "session": student_view(doc, pid, nick, answers)}
        assert "Code" not in got["session"]
        assert all("Correct" not in q and "Region" not in q for q in got["session"]["Cases"][0]["Questions"])
        assert all(r["Participant"] == pid for r in got["session"]["You"]["Answers"])
    assert len(json.loads(texts["p3"])["session"]["You"]["Answers"]) == 10
    assert json.loads(texts["p45"])["session"]["You"]["Answers"] == []
    assert session_messages(doc, {}, answers)[1] == {}


# ------------------------------------------------------------------ a state's frame written once

def test_a_state_frame_is_rfc_6455_text_unmasked():
    from appliance.teaching.live_state import text_frame
    assert text_frame("hi") == b"\x81\x02hi"
    assert text_frame("x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame("\u00e9" * 40000)[:10] == b"\x81\x7f" + (80000).to_bytes(8, "big")
    # the length's three forms at their edges (RFC 6455 5.2): 7 bits to 125, 16 bits to 65535, then 64
    for n, head in ((125, b"\x81\x7d"), (126, b"\x81\x7e\x00\x7e"), (65535, b"\x81\x7e\xff\xff"),
                    (65536, b"\x81\x7f" + (65536).to_bytes(8, "big"))):
        frame = text_frame("y" * n)
        assert frame[:len(head)] == head and frame[len(head):] == b"y" * n, n


def _read_frames(data: bytes) -> list[tuple[int, bytes]]:
    """RFC 6455 5.2 frames of a server's byte stream, each (opcode, payload); it must be only whole,
    final, unmasked, unextended frames (a frame cut into by another would break the parse)."""
    frames, i = [], 0
    while i < len(data):
        first, second = data[i], data[i + 1]
        assert first & 0xF0 == 0x80 and not second & 0x80, (i, data[i:i + 16])    # FIN, no RSV, no mask
        n, i = second & 0x7F, i + 2
        if n == 126:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        assert i + n <= len(data), "a frame cut short"
        frames.append((first & 0x0F, data[i:i + n]))
        i += n
    return frames


async def test_direct_frames_land_whole_and_in_order_between_aiohttps_own():
    """The raw bytes a client reads when direct frames are written between (and while there wait)
    aiohttp's ping, send_str (short and past 65535 bytes) and close: every frame whole, in the order
    written, none after the close frame. Run on the installed aiohttp, the one DIRECT_AIOHTTP names:
    an aiohttp whose writer no longer writes a frame at once and whole fails here."""
    import base64
    import os

    import aiohttp
    from aiohttp import web

    from appliance.teaching.live_state import text_frame
    from appliance.web import live
    wrote: list[tuple[int, bytes]] = []        # what the server put on the wire, in order
    after_close: list[bool] = []

    async def handler(request):
        ws = live._socket()
        await ws.prepare(request)
        assert live.direct_socket(ws, "3.13.9") is None and live.direct_socket(ws, "3.15.0") is None
        direct = live.direct_socket(ws)
        assert direct is not None, f"aiohttp {aiohttp.__version__}: not checked for direct writes"
        write, _ = direct

        def put(text: str) -> None:
            if write(text_frame(text)):
                wrote.append((1, text.encode()))
        put("d1")
        ping = asyncio.create_task(ws.ping(b"p1"))     # started, not yet run
        put("d2")
        await ping
        wrote.append((9, b"p1"))
        put("d3")
        await ws.send_str("s" * 70_000)
        wrote.append((1, b"s" * 70_000))
        put("d4")
        short = asyncio.create_task(ws.send_str("s2"))
        put("d5")
        await short
        wrote.append((1, b"s2"))
        put("\u00e9" * 40_000)
        put("d6")
        closing = asyncio.create_task(ws.close(code=1000))
        await asyncio.sleep(0)                    # its close frame is out; it waits for the client's
        after_close.append(write(text_frame("late")))
        await closing
        after_close.append(write(text_frame("later")))
        return ws
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                     .encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 101"), head
        data = b""
        while not any(op == 8 for op, _ in _read_frames_so_far(data)):
            chunk = await asyncio.wait_for(reader.read(65536), 30)
            assert chunk, "the server closed before its close frame"
            data += chunk
        mask = os.urandom(4)
        payload = bytes(b ^ mask[k % 4] for k, b in enumerate((1000).to_bytes(2, "big")))
        writer.write(b"\x88\x82" + mask + payload)            # the client's close (masked, RFC 6455 5.3)
        await writer.drain()
        data += await asyncio.wait_for(reader.read(), 30)    # to the end of the stream: nothing after
        writer.close()
    finally:
        await runner.cleanup()
    frames = _read_frames(data)
    assert frames[:-1] == wrote and frames[-1] == (8, (1000).to_bytes(2, "big"))
    assert [t for op, t in wrote if op == 1][:2] == [b"d1", b"d2"] and (9, b"p1") in wrote
    assert sum(op == 1 for op, _ in wrote) >= 8          # the direct frames were written, not refused
    assert after_close == [False, False]


def _read_frames_so_far(data: bytes) -> list[tuple[int, bytes]]:
    """The whole frames at the start of ``data`` (the rest not yet read)."""
    frames, i = [], 0
    while i + 2 <= len(data):
        n, j = data[i + 1] & 0x7F, i + 2
        if n == 126:
            n, j = int.from_bytes(data[j:j + 2], "big"), j + 2
        elif n == 127:
            n, j = int.from_bytes(data[j:j + 8], "big"), j + 8
        if j > len(data) or j + n > len(data):
            break
        frames.append((data[i] & 0x0F, data[j:j + n]))
        i = j + n
    return frames


def test_a_full_socket_is_looked_at_less_and_less_often():
    """20 ms, then doubling to 200 ms: a follower stuck behind a bad link costs 5 wake-ups a second."""
    from appliance.web.live import DRAIN_POLL_MAX, drain_waits
    waits = list(itertools.islice(drain_waits(), 8))
    assert waits == [0.02, 0.04, 0.08, 0.16, 0.2, 0.2, 0.2, 0.2] and DRAIN_POLL_MAX == 0.2


async def _in_process_follower(version: str, states: int, read_after: int | None = None):
    """A real aiohttp server in this process whose one socket follows a hub (the live channel's own
    writer, outbox and direct writes), and a real client: what the client read, and the peer."""
    import aiohttp
    from aiohttp import web

    from appliance.web import live
    hub = SessionHub("s1", SESSION)
    presenter = Peer(presenter=True, student=False, user="t")
    hub.join(presenter)
    joined = asyncio.Event()
    peers: list[Peer] = []

    async def handler(request):
        ws = live._socket()
        await ws.prepare(request)
        peer = Peer(presenter=False, student=True, participant="p1")
        direct = live.direct_socket(ws, version)
        full = None
        if direct is not None:
            peer.direct, full = direct
        writer = asyncio.create_task(live._writer(ws, peer, full))
        hub.join(peer)
        peers.append(peer)
        joined.set()
        async for _ in ws:
            pass
        peer.outbox.discard()
        await writer
        return ws
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    seqs: list[int] = []
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
            await asyncio.wait_for(joined.wait(), 30)
            peer = peers[0]
            for n in range(states):
                hub.view(presenter, {"Image": n % 1000, "Pointer": [float(n), 1.0]})
                if read_after is None or n % 64 == 0:
                    await asyncio.sleep(0)       # the writer task runs (the fall-back path's turn)
            while not seqs or seqs[-1] < hub.seq:
                msg = await asyncio.wait_for(ws.receive(), 30)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                m = json.loads(msg.data)
                assert m["type"] == "state" and (m["seq"] < hub.seq or m["state"] == hub.state), m
                seqs.append(m["seq"])
            await ws.close()
    finally:
        await runner.cleanup()
    return seqs, peer, hub


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_states_are_written_as_one_frame_straight_to_each_socket(loop):
    """On asyncio's loop and on uvloop's (the appliance's: its transports are not asyncio classes)."""
    import aiohttp
    if loop == "uvloop":
        import uvloop
        seqs, peer, _ = await asyncio.to_thread(uvloop.run, _in_process_follower(aiohttp.__version__, 200))
    else:
        seqs, peer, _ = await _in_process_follower(aiohttp.__version__, 200)
    assert seqs == list(range(1, 201))
    assert peer.direct is not None and peer.direct_writes == 200


async def test_with_aiohttp_internals_not_as_expected_states_go_through_send_str():
    """The fall-back: an aiohttp version the direct write was not checked on (or another layout)
    gives no direct writer; every state then goes through the outbox and ws.send_str, in order."""
    from appliance.web.live import direct_socket
    assert direct_socket(object(), "3.14.0") is None            # not a prepared aiohttp socket
    seqs, peer, hub = await _in_process_follower("4.0.0", 200)
    assert peer.direct is None and peer.direct_writes == 0
    assert seqs == sorted(set(seqs)) and seqs[-1] == hub.seq == 200


async def test_a_follower_whose_socket_is_full_gets_the_newest_state_once_it_drains():
    """The client reads nothing while 60 000 states are published: once the socket's buffer is past
    DIRECT_BUFFER_LIMIT, states wait in the slot (latest wins); once it reads, it gets every state it
    gets in order, the newest last, and far fewer than were published."""
    import aiohttp
    seqs, peer, hub = await _in_process_follower(aiohttp.__version__, 60_000, read_after=0)
    assert peer.direct_writes > 0 and peer.outbox.skipped > 0
    assert seqs == sorted(set(seqs)) and seqs[-1] == hub.seq == 60_000
    assert len(seqs) < 60_000
