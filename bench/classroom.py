"""`make bench ONLY=class`: a class of simulated students opening the same CT at once (issue 20).

Thirty students (asyncio + aiohttp, each with its own connection pool of 6, as a browser keeps per
host) do what a viewer does, all at the same moment: a 100-slice CT phantom (tests/synth.py
``ct_phantom_series``), then a second case (another phantom, stored JPEG 2000 lossless, as the
issue's eviction example), then the first again. Two deliveries, each on its own fresh server
with the same files, one after the other in the same run:

- pipacs now: ``GET /pipacs/series/{id}/stack``, then the frames' ``Pixels`` URLs, the first, then
  outwards from it six at a time (the viewer's order);
- today's raw delivery: main's viewer, run on main's code from before issue 20 (commit
  ``RAW_COMMIT``, extracted by ``git archive`` into bench/out once, or ``--raw-code``): ``/series/{id}``, ``/studies/{id}`` and ``/series/{id}/instances``, WADO-RS series
  metadata, then ``/instances/{id}/frames/{n}/numpy`` for the first and outwards four at a time.

Students are anonymous (the student role; the study released by the teacher) and send
``Accept-Encoding: gzip, deflate`` as a browser does; the bytes counted are those on the wire
(bodies as sent, ``auto_decompress=False``, plus the response headers). Two links: loopback, and
a veth pair into a network namespace this bench makes and removes (``ip netns``), shaped by tc to
20 Mbit/s each way with a 10 ms round trip (netem when the kernel has it; otherwise tbf for the
rate and the 10 ms added by each client before each request, which the output says), shared by
all the students; the server in the root namespace bound to the veth address, the students in the
namespace. Nothing goes beyond this machine. Server CPU seconds from /proc/PID/stat (utime +
stime over the sequence), RSS from /proc/PID/status.

The shaped raw run is bound by the link: 30 x 50 MB at 20 Mbit/s is ten minutes per CT. By
default the shaped link runs the first case only (new and raw); ``--shaped-sequence`` runs all
three phases there too, ``--no-shaped`` skips it, ``--students`` and ``--slices`` scale the class.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"
# the last commit before issue 20: its server and viewer requests are "today's raw delivery"
RAW_COMMIT = "f6fb194"
NS = "pipacs-class"
VETH_HOST, VETH_NS = "pcls0", "pcls1"
HOST_IP, NS_IP = "10.213.77.1", "10.213.77.2"
PAGE = {"X-Requested-With": "pipacs", "Accept-Encoding": "gzip, deflate"}
TEACHER, PASSWORD = "teacher", "bench-password"
TARGETS = {"bytes": "<= 0.4x raw, lossless", "first_loop": "p95 <= 1.5 s (30 students, loopback)",
           "full_shaped": "<= 0.5x raw (shaped link)"}


# ------------------------------------------------------------------ the cases

def _deidentified(path: Path, compress: bool) -> None:
    import pydicom
    ds = pydicom.dcmread(path)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "pipacs bench phantom (no patient)"
    if compress:
        from pydicom.uid import JPEG2000Lossless
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(path, enforce_file_format=True)


def make_cases(slices: int, out: Path = OUT) -> list[tuple[str, Path]]:
    """The two cases, made once per size and kept in bench/out: the phantom CT, uncompressed, and
    another phantom (other patient, other noise) stored JPEG 2000 lossless."""
    from tests.synth import ct_phantom_series
    cases = []
    for name, kw, compress in (
            ("CT", {"patient_id": "CLASS1", "patient_name": "Phantom^One", "study": "c1", "seed": 1}, False),
            ("CT J2K", {"patient_id": "CLASS2", "patient_name": "Phantom^Two", "study": "c2", "seed": 2,
                        "study_description": "CT ABDOMEN"}, True)):
        folder = out / f"class-{'j2k' if compress else 'ct'}{slices}"
        if not (folder.is_dir() and len(list(folder.glob("*.dcm"))) == slices):
            shutil.rmtree(folder, ignore_errors=True)
            print(f"making the {name} phantom, {slices} slices, in {folder} ...", flush=True)
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            for p in ct_phantom_series(tmp, slices, **kw):
                _deidentified(p, compress)
            tmp.rename(folder)
        cases.append((name, folder))
    return cases


# ------------------------------------------------------------------ servers

def raw_checkout(commit: str = RAW_COMMIT, out: Path = OUT) -> Path:
    """The code of ``commit`` (its appliance package), extracted from this repository's history once
    into bench/out, so the peer is the same on every machine and after main moves on."""
    folder = out / f"raw-{commit}"
    if not (folder / "appliance" / "__main__.py").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        repo = Path(__file__).resolve().parent.parent
        archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "appliance"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _server(work: Path, bind: str, code: Path | None, students: int):
    """A pipacs (``code``: another checkout's) on ``bind``. In a classroom every iPad has its own
    address; here all the students share one, so the per-address connection limit is raised to
    the class's six each (the total limit stays the default)."""
    from tests.helpers import Server
    config = {"AuthenticationEnabled": True, "RegisteredUsers": {TEACHER: PASSWORD}, "StudentAccess": "open",
              "BindAddress": bind, "RemoteAccessAllowed": bind != "127.0.0.1",
              "HttpMaximumConnectionsPerAddress": max(64, 6 * students + 16)}
    env = {"PYTHONPATH": str(code)} if code else {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return Server(work, config, env=env).start()


def _basic() -> dict[str, str]:
    import base64
    return {"Authorization": "Basic " + base64.b64encode(f"{TEACHER}:{PASSWORD}".encode()).decode()}


def _stored(r) -> dict:
    if r.status != 200:
        raise RuntimeError(f"storing a case file: {r.status} {r.body[:300]!r}")
    return r.json()


def load_cases(srv, cases: list[tuple[str, Path]]) -> list[dict[str, str]]:
    """Store each case's files, release its study to students; the IDs and UIDs a student uses."""
    out = []
    for name, folder in cases:
        ids = [_stored(srv.post("/instances", p.read_bytes(), headers=_basic())) for p in sorted(folder.glob("*.dcm"))]
        study = ids[0]["ParentStudy"]
        r = srv.request("PUT", f"/studies/{study}/released", "1", headers=_basic())
        assert r.status < 300, r.body[:300]
        out.append({"name": name, "series": ids[0]["ParentSeries"], "study": study, "frames": str(len(ids))})
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            got[line[:5]] = int(line.split()[1]) / 1024
    return got.get("VmRSS", float("nan")), got.get("VmHWM", float("nan"))


# ------------------------------------------------------------------ the students (run in a worker process)

def _content(body: bytes, encoding: str) -> bytes:
    import gzip
    import zlib
    encoding = encoding.strip().lower()
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:       # raw deflate, as some servers send it
            return zlib.decompress(body, -15)
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    return body


class Wire:
    """Bytes a student received: bodies as sent (not decompressed) and response headers."""

    RETRIES = 2     # a browser sends a GET again when a kept-alive connection was closed under it

    def __init__(self) -> None:
        self.bytes = 0
        self.retries = 0

    async def get(self, session, url: str, rtt: float, decoded: bool = False) -> bytes:
        """The body as sent (counted), or with ``decoded`` as the browser reads it (Content-Encoding undone)."""
        import aiohttp
        for attempt in range(self.RETRIES + 1):
            if rtt:
                await asyncio.sleep(rtt)      # the round trip the link lacks (no netem): one per request
            try:
                async with session.get(url, headers=PAGE) as r:
                    body = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: {r.status} {body[:200]!r}")
                    self.bytes += len(body) + sum(len(k) + len(v) + 4 for k, v in r.raw_headers) + 17
                    return _content(body, r.headers.get("Content-Encoding", "")) if decoded else body
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if attempt == self.RETRIES:
                    raise
                self.retries += 1     # said in the output: the time it cost is in the figures
        raise AssertionError("unreachable")


def _no_timeout():
    """No total time limit per request (aiohttp's default is 5 minutes): a flow starved on the shaped
    link is measured, not cut."""
    import aiohttp
    return aiohttp.ClientTimeout(total=None, sock_connect=60)


async def _outward(wire: Wire, session, urls: list[str], first: int, width: int, rtt: float) -> None:
    order = []
    for d in range(1, len(urls)):
        for i in (first + d, first - d):
            if 0 <= i < len(urls):
                order.append(i)
    queue = list(order)

    async def worker() -> None:
        while queue:
            i = queue.pop(0)
            await wire.get(session, urls[i], rtt)
    await asyncio.gather(*(worker() for _ in range(width)))


async def student_new(base: str, case: dict, rtt: float) -> dict:
    import aiohttp
    wire = Wire()
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=6), auto_decompress=False,
                                     timeout=_no_timeout()) as s:
        stack = json.loads(await wire.get(s, f"/pipacs/series/{case['series']}/stack", rtt, decoded=True))
        urls = [f["Pixels"] for f in stack["Frames"]]
        await wire.get(s, urls[0], rtt)
        first = time.perf_counter() - t0
        await _outward(wire, s, urls, 0, 6, rtt)
    return {"bytes": wire.bytes, "first": first, "full": time.perf_counter() - t0, "frames": len(urls),
            "retries": wire.retries}


def _position(ds: dict) -> float | None:
    iop = ds.get("00200037", {}).get("Value")
    ipp = ds.get("00200032", {}).get("Value")
    if not (iop and ipp and len(iop) == 6 and len(ipp) == 3):
        return None
    n = [iop[1] * iop[5] - iop[2] * iop[4], iop[2] * iop[3] - iop[0] * iop[5], iop[0] * iop[4] - iop[1] * iop[3]]
    return sum(a * b for a, b in zip(n, ipp, strict=True))


async def student_raw(base: str, case: dict, rtt: float) -> dict:
    """main's viewer.js load(): its four requests, its order (position ascending), four frames at a time."""
    import aiohttp
    wire = Wire()
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=6), auto_decompress=False,
                                     timeout=_no_timeout()) as s:
        series = json.loads(await wire.get(s, f"/series/{case['series']}", rtt, decoded=True))
        study_b, inst_b = await asyncio.gather(wire.get(s, f"/studies/{series['ParentStudy']}", rtt, decoded=True),
                                               wire.get(s, f"/series/{case['series']}/instances", rtt, decoded=True))
        study, instances = json.loads(study_b), json.loads(inst_b)
        meta = json.loads(await wire.get(s, f"/dicom-web/studies/{study['MainDicomTags']['StudyInstanceUID']}"
                                            f"/series/{series['MainDicomTags']['SeriesInstanceUID']}/metadata", rtt, decoded=True))
        by_sop = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in instances}
        items = [(_position(ds), int((ds.get("00200013", {}).get("Value") or [0])[0]),
                  by_sop.get(ds["00080018"]["Value"][0])) for ds in meta]
        items = [x for x in items if x[2]]
        items.sort(key=lambda x: (x[0] if all(y[0] is not None for y in items) else x[1]))
        urls = [f"/instances/{iid}/frames/0/numpy" for _, _, iid in items]
        await wire.get(s, urls[0], rtt)
        first = time.perf_counter() - t0
        await _outward(wire, s, urls, 0, 4, rtt)
    return {"bytes": wire.bytes, "first": first, "full": time.perf_counter() - t0, "frames": len(urls),
            "retries": wire.retries}


async def check_lossless(base: str, case: dict, samples: int = 4) -> bool:
    """A few frames of the new delivery decoded (appliance.imaging.framecodec, as pixels.js does)
    against the raw stored values of the same frame."""
    import zlib

    import aiohttp
    import numpy as np

    from appliance.imaging import framecodec
    async with aiohttp.ClientSession(base, auto_decompress=False) as s:
        async with s.get(f"/pipacs/series/{case['series']}/stack", headers=PAGE) as r:
            frames = json.loads(_content(await r.read(), r.headers.get("Content-Encoding", "")))["Frames"]
        step = max(len(frames) // samples, 1)
        for f in frames[::step][:samples]:
            async with s.get(f["Pixels"], headers=PAGE) as r:
                body, enc, ctype = await r.read(), r.headers.get("Content-Encoding"), r.headers["Content-Type"]
            if ctype == "image/jpeg":
                continue           # stored bytes passed through unchanged
            values = framecodec.decode(body if enc == "deflate" else zlib.compress(body))
            async with s.get(f"/instances/{f['Instance']}/frames/{f['Frame']}/numpy", headers=PAGE) as r:
                raw = np.load(io.BytesIO(await r.read()))
            if not np.array_equal(values.reshape(-1), raw.reshape(-1).astype(values.dtype)):
                return False
    return True


async def run_class(base: str, kind: str, case: dict, students: int, rtt: float) -> list[dict]:
    one = student_new if kind == "new" else student_raw
    return list(await asyncio.gather(*(one(base, case, rtt) for _ in range(students))))


def worker_main(spec: dict) -> dict:
    """One phase: all the students at once; the figures as JSON on stdout (the parent may run this in
    the namespace through ``ip netns exec``)."""
    async def go() -> dict:
        res = await run_class(spec["base"], spec["kind"], spec["case"], spec["students"], spec["rtt"])
        ok = await check_lossless(spec["base"], spec["case"]) if spec["kind"] == "new" and spec["check"] else None
        return {"students": res, "lossless": ok}
    return asyncio.run(go())


# ------------------------------------------------------------------ the link

def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


class ShapedLink:
    """A veth pair into a namespace of our own, each end's egress shaped; removed by ``close``."""

    def __init__(self, rate: str = "20mbit", one_way_ms: float = 5.0, ns: str = NS,
                 devs: tuple[str, str] = (VETH_HOST, VETH_NS), ips: tuple[str, str] = (HOST_IP, NS_IP)):
        self.client_rtt = 0.0
        self.how = ""
        self.ns, self.devs, self.ips = ns, devs, ips
        host_dev, ns_dev = devs
        host_ip, ns_ip = ips
        self.close()     # a namespace left by an interrupted run
        _sh("ip", "netns", "add", ns)
        try:
            _sh("ip", "link", "add", host_dev, "type", "veth", "peer", "name", ns_dev)
            _sh("ip", "link", "set", ns_dev, "netns", ns)
            _sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_dev)
            _sh("ip", "link", "set", host_dev, "up")
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_dev)
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_dev, "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            ends = [("ip", "netns", "exec", ns, "tc"), ("tc",)]
            shaped = [ns_dev, host_dev]
            netem = all(_sh(*pre, "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{one_way_ms}ms",
                            "rate", rate, "limit", "10000", check=False).returncode == 0
                        for pre, dev in zip(ends, shaped, strict=True))
            if netem:
                self.how = f"netem: {rate} and {one_way_ms:g} ms each way"
            else:
                for pre, dev in zip(ends, shaped, strict=True):
                    _sh(*pre, "qdisc", "del", "dev", dev, "root", check=False)
                    _sh(*pre, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "32kb",
                        "latency", "400ms")   # 1 MB of queue: an access point's buffer, not 180 flows' drops
                self.client_rtt = 2 * one_way_ms / 1000
                self.how = (f"tbf {rate} each way (this kernel has no netem): the {2 * one_way_ms:g} ms round "
                            "trip added by each client before each request")
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        _sh("ip", "link", "del", self.devs[0], check=False)
        _sh("ip", "netns", "del", self.ns, check=False)


# ------------------------------------------------------------------ the run

def _phase(base: str, kind: str, case: dict, students: int, rtt: float, ns: str | None, check: bool) -> dict:
    spec = {"base": base, "kind": kind, "case": case, "students": students, "rtt": rtt, "check": check}
    cmd = [sys.executable, "-m", "bench.classroom", "--worker", json.dumps(spec)]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    root = str(Path(__file__).resolve().parent.parent)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": root})
    if r.returncode != 0:
        raise RuntimeError(f"students failed ({kind}, {case['name']}): {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_delivery(kind: str, cases: list[tuple[str, Path]], students: int, work: Path, link: ShapedLink | None,
                 sequence: list[int], raw_code: Path) -> dict:
    """A fresh server for one delivery, its cases loaded, then the phases; figures per phase."""
    bind = link.ips[0] if link else "127.0.0.1"
    srv = _server(work / f"{kind}-{'shaped' if link else 'loop'}", bind, raw_code if kind == "raw" else None,
                  students)
    try:
        ids = load_cases(srv, cases)
        base = f"http://{bind}:{srv.http_port}"
        pid = srv.proc.pid
        cpu0 = cpu_seconds(pid)
        phases = []
        for k in sequence:
            c0 = cpu_seconds(pid)
            out = _phase(base, kind, ids[k], students, link.client_rtt if link else 0.0, link.ns if link else None,
                         check=kind == "new" and not phases)
            out["cpu"] = cpu_seconds(pid) - c0
            out["case"] = ids[k]["name"]
            phases.append(out)
        rss, hwm = rss_mb(pid)
        return {"phases": phases, "cpu": cpu_seconds(pid) - cpu0, "rss": rss, "hwm": hwm}
    finally:
        srv.stop()


def _p(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def report(title: str, new: dict, raw: dict, students: int) -> None:
    print(f"\n{title}")
    print(f"  {'phase':22} {'':6} {'MB/student':>10} {'first p50':>9} {'p95':>6} {'full p50':>9} {'p95':>6} "
          f"{'CPU s':>6}")
    for pn, pr in zip(new["phases"], raw["phases"], strict=True):
        for label, ph in (("pipacs", pn), ("raw", pr)):
            st = ph["students"]
            mb = statistics.mean(s["bytes"] for s in st) / 1e6
            first, full = [s["first"] for s in st], [s["full"] for s in st]
            print(f"  {ph['case'] + ' (' + str(st[0]['frames']) + ' frames)':22} {label:6} {mb:10.2f} "
                  f"{_p(first, .5):9.2f} {_p(first, .95):6.2f} {_p(full, .5):9.2f} {_p(full, .95):6.2f} "
                  f"{ph['cpu']:6.1f}")
        sn, sr = pn["students"], pr["students"]
        bn, br = (statistics.mean(s["bytes"] for s in x) for x in (sn, sr))
        print(f"  {'':22} {'ratio':6} {bn / br:9.2f}x {_p([s['first'] for s in sn], .5) / _p([s['first'] for s in sr], .5):8.2f}x"
              f" {_p([s['first'] for s in sn], .95) / _p([s['first'] for s in sr], .95):5.2f}x"
              f" {_p([s['full'] for s in sn], .5) / _p([s['full'] for s in sr], .5):8.2f}x"
              f" {_p([s['full'] for s in sn], .95) / _p([s['full'] for s in sr], .95):5.2f}x"
              f" {pn['cpu'] / max(pr['cpu'], 1e-9):5.2f}x"
              + ("" if pn.get("lossless") is None else f"   lossless: {'yes' if pn['lossless'] else 'NO'}"))
    retried = [sum(s.get("retries", 0) for ph in d["phases"] for s in ph["students"]) for d in (new, raw)]
    if any(retried):
        print(f"  requests sent again after the server closed a kept-alive connection: pipacs {retried[0]}, "
              f"raw {retried[1]}")
    print(f"  server CPU over the sequence: pipacs {new['cpu']:.1f} s, raw {raw['cpu']:.1f} s "
          f"({new['cpu'] / max(raw['cpu'], 1e-9):.2f}x); RSS at the end {new['rss']:.0f} MB vs {raw['rss']:.0f} MB, "
          f"peak {new['hwm']:.0f} MB vs {raw['hwm']:.0f} MB")
    print(f"  targets: bytes per student {TARGETS['bytes']}; first image {TARGETS['first_loop']}; "
          f"full stack {TARGETS['full_shaped']}")


def bench_class(students: int = 30, slices: int = 100, shaped: bool = True, shaped_sequence: bool = False,
                raw_code: Path | None = None, loopback: bool = True, out: Path = OUT) -> dict:
    """The whole bench; returns the figures (the printout is the product)."""
    out.mkdir(exist_ok=True)
    cases = make_cases(slices, out)
    sequence = [0, 1, 0]
    main_rev = RAW_COMMIT if raw_code is None else str(raw_code)
    raw_code = raw_code or raw_checkout()
    print(f"\nClass bench: {students} students at once; sequence {' -> '.join(cases[k][0] for k in sequence)}; "
          f"raw = main's viewer on the code of {main_rev}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="pipacs-bench-class-"))
    figures: dict[str, Any] = {}
    try:
        if loopback:
            for kind in ("new", "raw"):
                print(f"  loopback, {kind} ...", flush=True)
                figures[f"loop-{kind}"] = run_delivery(kind, cases, students, work, None, sequence, raw_code)
            report(f"Loopback, {students} students", figures["loop-new"], figures["loop-raw"], students)
        if shaped:
            seq = sequence if shaped_sequence else [0]
            link = ShapedLink()
            try:
                print(f"\n  shaped link: {link.how}; server on {HOST_IP} (root namespace), students in namespace "
                      f"{NS}; phases: {' -> '.join(cases[k][0] for k in seq)}"
                      + ("" if shaped_sequence else " (the first case only by default: raw takes ~10 min "
                                                    "per CT for 30 students; --shaped-sequence for all three)"),
                      flush=True)
                for kind in ("new", "raw"):
                    print(f"  shaped, {kind} ...", flush=True)
                    figures[f"shaped-{kind}"] = run_delivery(kind, cases, students, work, link, seq, raw_code)
            finally:
                link.close()
            report(f"Shaped link ({link.how}), {students} students", figures["shaped-new"], figures["shaped-raw"],
                   students)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", type=int, default=30)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--no-shaped", action="store_true", help="loopback only")
    ap.add_argument("--no-loopback", action="store_true", help="the shaped link only")
    ap.add_argument("--shaped-sequence", action="store_true", help="all three phases on the shaped link too")
    ap.add_argument("--raw-code", type=Path, default=None,
                    help=f"a checkout whose code serves the raw delivery (default: commit {RAW_COMMIT}, extracted)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker_main(json.loads(args.worker))))
        return 0
    bench_class(args.students, args.slices, shaped=not args.no_shaped, shaped_sequence=args.shaped_sequence,
                raw_code=args.raw_code, loopback=not args.no_loopback)
    return 0


if __name__ == "__main__":
    sys.exit(main())
