"""`make bench ONLY=session`: the live channel of a teaching session (issue 21) beside its floor.

One pipacs on loopback with sign-in on, a case of a small phantom CT, a live teaching session, and
on aiohttp's WebSocket client: one teacher presenting (``?as=presenter``) and 60 seated followers
(each joined with a nickname, its seat token as the pipacs_seat cookie). The teacher sends 500 view
changes (image, window, pointer) at 30 a second, the pace the presenter page throttles to; the
figure is the time from the teacher's send to the *last* follower's receipt of a state with that
change (a follower that skipped a state got a newer one: its receipt counts for the skipped one too).
The floor is the same server in the same run: ``GET /pipacs/live-echo``, one client sending the same
messages at the same pace, the round trip of each. The two are measured in interleaved blocks of
100 so that whatever else the machine does weighs on both alike.

Server CPU per change: utime + stime of the server process (/proc/PID/stat) over the changes, per
change (the echo's per message beside it). RSS per follower: the server's VmRSS with 60 followers
connected (each having had its hello) minus VmRSS with none (the teacher alone), over 60.
Nothing leaves the machine. Figures are printed with the issue's targets beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .classroom import cpu_seconds, rss_mb

FOLLOWERS = 60
CHANGES = 500
PACE = 30.0           # changes a second (static/live.js throttles the presenter to this)
PROCS = 4             # worker processes the followers are spread over
BLOCK = 100           # changes per block; echo and follow blocks alternate
TARGETS = {"p95": 0.050, "rss_kb": 200.0, "x_echo": 3.0}


def _p(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def _board(work: Path, followers: int):
    """The server, its case and a started session; the followers' seat tokens."""
    from tests.helpers import Server
    from tests.session_fixtures import BASIC, classroom_config, phantom_files, session_body
    srv = Server(work / "srv", classroom_config("open", HttpMaximumConnectionsPerAddress=followers + 64)).start()
    try:
        files = phantom_files(work / "files", slices=48, size=128)
        ids = [srv.post("/instances", data, headers=BASIC).json() for data in files]
        study = ids[0]["ParentStudy"]

        def call(method: str, path: str, body: Any = None) -> Any:
            r = srv.request(method, path, json.dumps(body).encode() if body is not None else None,
                            headers={**BASIC, "Content-Type": "application/json"})
            if r.status not in (200, 201):
                raise RuntimeError(f"{method} {path}: {r.status} {r.body[:300]!r}")
            return r.json()
        case = call("POST", "/cases", {"Title": "Bench case", "Studies": [study],
                                       "KeyImages": [{"Instance": ids[20]["ID"]}]})
        call("POST", f"/cases/{case['ID']}/publish")
        doc = call("POST", "/sessions", session_body(case["ID"], mode="known"))
        doc = call("POST", f"/sessions/{doc['ID']}/start")
        tokens = []
        for k in range(followers):
            r = srv.request("POST", "/sessions/join", json.dumps({"Code": doc["Code"], "Nickname": f"Student {k}"}),
                            headers={"Content-Type": "application/json"})
            if r.status != 200:
                raise RuntimeError(f"join: {r.status} {r.body[:300]!r}")
            tokens.append(r.json()["Token"])
        return srv, doc["ID"], ids[0]["ParentSeries"], tokens
    except Exception:
        srv.stop()
        raise


def _change(k: int, series: str) -> str:
    return json.dumps({"type": "view", "Case": 0, "Series": series, "Image": k % 48,
                       "Window": {"Center": -600 + k % 7, "Width": 1500}, "Pointer": [64.0 + k % 11, 60.0]})


async def _followers(spec: dict) -> None:
    """A worker process: its share of the followers connected (a line {"seq"} once each has had its
    hello), then, told the last change's seq on stdin, every state's first receipt time per follower
    (time.perf_counter: CLOCK_MONOTONIC, the same clock in every process of the machine)."""
    import aiohttp
    arrivals: list[dict[int, float]] = []
    async with aiohttp.ClientSession(spec["base"]) as http:
        sockets = [await http.ws_connect(f"/sessions/{spec['session']}/live",
                                         headers={"Cookie": f"pipacs_seat={tok}"}) for tok in spec["tokens"]]
        seqs = []
        for ws in sockets:
            h = json.loads((await ws.receive(timeout=60)).data)
            assert h["type"] == "hello", h
            seqs.append(h["seq"])
        arrivals = [{} for _ in sockets]

        async def follow(i: int, ws) -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                if msg.data.startswith('{"type":"state"'):
                    at = time.perf_counter()
                    arrivals[i].setdefault(json.loads(msg.data)["seq"], at)
        readers = [asyncio.create_task(follow(i, ws)) for i, ws in enumerate(sockets)]
        print(json.dumps({"seq": max(seqs)}), flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        last = json.loads(line)["last"]
        deadline = time.monotonic() + 60
        while any(not a or max(a) < last for a in arrivals) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for ws in sockets:
            await ws.close()
        for r in readers:
            r.cancel()
    print(json.dumps([{str(k): v for k, v in a.items()} for a in arrivals]), flush=True)


async def _run(base: str, srv, session_id: str, series: str, tokens: list[str], changes: int, procs: int) -> dict:
    import aiohttp

    from tests.session_fixtures import BASIC
    pid = srv.proc.pid
    out: dict[str, Any] = {}
    root = str(Path(__file__).resolve().parent.parent)
    async with aiohttp.ClientSession(base) as http:
        teacher = await http.ws_connect(f"/sessions/{session_id}/live?as=presenter", headers=BASIC)
        hello = json.loads((await teacher.receive(timeout=30)).data)
        assert hello["type"] == "hello" and hello["you"]["driving"], hello
        # the first change opens the series (warmed into the class cache) before anything is measured
        await teacher.send_str(_change(0, series))
        while json.loads((await teacher.receive(timeout=30)).data).get("type") != "state":
            pass
        await asyncio.sleep(3)
        rss0 = rss_mb(pid)[0]
        # the followers in worker processes (in a classroom each is its own device): the figure is the
        # server's fan-out, not one Python client reading sixty sockets in turn
        workers = []
        for w in range(procs):
            spec = {"base": base, "session": session_id, "tokens": tokens[w::procs]}
            workers.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.session", "--worker", json.dumps(spec), cwd=root,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**26))
        base_seq = max([json.loads(await asyncio.wait_for(p.stdout.readline(), 120))["seq"] for p in workers])
        await asyncio.sleep(1)
        rss60 = rss_mb(pid)[0]
        told: dict[int, float] = {}

        async def drain_teacher() -> None:
            async for msg in teacher:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                m = json.loads(msg.data)
                if m.get("type") == "state":
                    told[m["seq"]] = time.perf_counter()
        reader = asyncio.create_task(drain_teacher())
        echo = await http.ws_connect("/pipacs/live-echo", headers=BASIC)      # a TEACHER route
        sent: list[float] = []
        echo_rtt: list[float] = []
        cpu_follow = cpu_echo = 0.0
        k = 1
        while k <= changes:
            n = min(BLOCK, changes - k + 1)
            c0 = cpu_seconds(pid)
            for j in range(n):       # the floor: one client, the same message, the same pace
                t0 = time.perf_counter()
                await echo.send_str(_change(k + j, series))
                m = await echo.receive(timeout=30)
                echo_rtt.append(time.perf_counter() - t0)
                assert m.type == aiohttp.WSMsgType.TEXT, m
                await asyncio.sleep(max(0.0, 1 / PACE - (time.perf_counter() - t0)))
            c1 = cpu_seconds(pid)
            cpu_echo += c1 - c0
            for j in range(n):
                t0 = time.perf_counter()
                sent.append(t0)
                await teacher.send_str(_change(k + j, series))
                await asyncio.sleep(max(0.0, 1 / PACE - (time.perf_counter() - t0)))
            deadline = time.monotonic() + 30
            while base_seq + len(sent) not in told and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)      # the fan-out of the last change ends
            cpu_follow += cpu_seconds(pid) - c1
            k += n
        arrivals: list[dict[int, float]] = []
        for p in workers:
            p.stdin.write((json.dumps({"last": base_seq + len(sent)}) + "\n").encode())
            await p.stdin.drain()
        for p in workers:
            got = json.loads(await asyncio.wait_for(p.stdout.readline(), 120))
            arrivals += [{int(s): at for s, at in a.items()} for a in got]
            await p.wait()
        latencies, firsts = [], []
        skipped = 0
        for n, t in enumerate(sent, start=1):
            seq = base_seq + n
            each = []
            for a in arrivals:
                got = [at for s, at in a.items() if s >= seq]
                if not got:
                    raise RuntimeError(f"a follower never received change {n}")
                each.append(min(got) - t)
                skipped += seq not in a
            latencies.append(max(each))
            firsts.append(min(each))
        for ws in (teacher, echo):
            await ws.close()
        reader.cancel()
        out.update({"follow": latencies, "first": firsts, "echo": echo_rtt, "cpu_follow": cpu_follow / changes,
                    "cpu_echo": cpu_echo / changes, "rss0": rss0, "rss60": rss60, "skipped": skipped,
                    "followers": len(arrivals), "procs": procs})
    return out


def report(fig: dict) -> None:
    f, e = fig["follow"], fig["echo"]
    n = fig["followers"]
    print(f"\n  {'':34} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    print(f"  {f'follow: teacher -> last of {n}':34} {_p(f, .5) * 1e3:8.2f} {_p(f, .95) * 1e3:8.2f} "
          f"{_p(f, .99) * 1e3:8.2f}")
    print(f"  {'  (first follower)':34} {_p(fig['first'], .5) * 1e3:8.2f} {_p(fig['first'], .95) * 1e3:8.2f} "
          f"{_p(fig['first'], .99) * 1e3:8.2f}")
    print(f"  {'echo (floor): round trip':34} {_p(e, .5) * 1e3:8.2f} {_p(e, .95) * 1e3:8.2f} {_p(e, .99) * 1e3:8.2f}")
    print(f"  {'ratio':34} {_p(f, .5) / _p(e, .5):7.2f}x {_p(f, .95) / _p(e, .95):7.2f}x "
          f"{_p(f, .99) / _p(e, .99):7.2f}x")
    per = (fig["rss60"] - fig["rss0"]) * 1024 / n
    print(f"  server CPU per change {fig['cpu_follow'] * 1e3:.2f} ms (echo: {fig['cpu_echo'] * 1e3:.2f} ms a message, "
          f"{fig['cpu_follow'] / max(fig['cpu_echo'], 1e-9):.1f}x); RSS {fig['rss0']:.1f} MB with the teacher alone, "
          f"{fig['rss60']:.1f} MB with {n} followers: {per:.0f} KB a follower")
    if fig["skipped"]:
        print(f"  states a follower skipped (latest wins): {fig['skipped']} of {len(f) * n}")
    print(f"  targets: p95 <= {TARGETS['p95'] * 1e3:.0f} ms with 60 followers; RSS <= {TARGETS['rss_kb']:.0f} KB "
          f"a follower; follow <= {TARGETS['x_echo']:g}x the echo")


def bench_session(followers: int = FOLLOWERS, changes: int = CHANGES, procs: int = PROCS) -> dict:
    print(f"\nLive session bench: 1 teacher and {followers} followers on loopback, {changes} changes at "
          f"{PACE:g} a second, beside /pipacs/live-echo on the same server", flush=True)
    work = Path(tempfile.mkdtemp(prefix="pipacs-bench-session-"))
    try:
        srv, session_id, series, tokens = _board(work, followers)
        try:
            fig = asyncio.run(_run(f"http://127.0.0.1:{srv.http_port}", srv, session_id, series, tokens, changes,
                                   procs))
        finally:
            srv.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(fig)
    return {k: v for k, v in fig.items() if k not in ("follow", "first", "echo")} | {
        "follow_p": [_p(fig["follow"], q) for q in (.5, .95, .99)], "echo_p": [_p(fig["echo"], q) for q in (.5, .95, .99)],
        "median_follow": statistics.median(fig["follow"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--followers", type=int, default=FOLLOWERS)
    ap.add_argument("--changes", type=int, default=CHANGES)
    ap.add_argument("--procs", type=int, default=PROCS, help="worker processes holding the followers")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        asyncio.run(_followers(json.loads(args.worker)))
        return 0
    bench_session(args.followers, args.changes, args.procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
