"""The class cache (appliance/web/classcache.py) and its disk tier (appliance/archive/derived.py):
coalescing, bounded makes, budgets, restarts, damaged files, cancelled callers; content_revision."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import struct
from pathlib import Path
from time import sleep as time_sleep

import pydicom
import pytest

from appliance.archive import DerivedStore, Level
from appliance.config import ConfigError, validate
from appliance.web import classcache
from appliance.web.classcache import ClassCache

from .helpers import store
from .synth import ct_instance, uid


class Maker:
    """make() that counts its calls and, when ``gate`` is given, waits for it to open."""

    def __init__(self, gate: asyncio.Event | None = None, size: int = 100):
        self.calls = 0
        self.running = 0
        self.most_running = 0
        self.gate = gate
        self.size = size

    def __call__(self, key: str):
        async def make() -> bytes:
            self.calls += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            try:
                if self.gate is not None:
                    await self.gate.wait()
                return (key.encode() * self.size)[: self.size]
            finally:
                self.running -= 1
        return make


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_thirty_callers_one_make(tmp_path: Path) -> None:
    gate = asyncio.Event()
    cache = ClassCache(2**20, DerivedStore(tmp_path / "cache", 2**20))
    maker = Maker(gate)
    callers = [asyncio.create_task(cache.get_or_make("k", maker("k"))) for _ in range(30)]
    await _settle()
    gate.set()
    answers = await asyncio.gather(*callers)
    assert maker.calls == 1
    assert len(set(answers)) == 1 and len(answers[0]) == 100
    s = cache.stats()
    assert s["Misses"] == 1 and s["Coalesced"] == 29 and s["Hits"] == 0
    assert await cache.get_or_make("k", maker("k")) == answers[0]
    assert maker.calls == 1 and cache.stats()["Hits"] == 1


async def test_makes_bounded_by_workers() -> None:
    gate = asyncio.Event()
    cache = ClassCache(2**20, None, workers=2)
    maker = Maker(gate)
    callers = [asyncio.create_task(cache.get_or_make(f"k{i}", maker(f"k{i}"))) for i in range(10)]
    await _settle()
    assert maker.running == 2 and cache.stats()["Making"] == 2
    gate.set()
    await asyncio.gather(*callers)
    assert maker.calls == 10 and maker.most_running == 2


async def test_memory_budget_evicts_least_recent() -> None:
    cache = ClassCache(1000, None)       # items up to 250 bytes are kept
    maker = Maker(size=200)
    for k in ("a", "b", "c", "d"):
        await cache.get_or_make(k, maker(k))
    await cache.get_or_make("a", maker("a"))       # a: recent again
    await cache.get_or_make("e", maker("e"))       # 5 x 200 = 1000: fits
    await cache.get_or_make("f", maker("f"))       # over: b (least recent) goes
    assert cache.stats()["MemoryBytes"] <= 1000
    assert cache.peek("b") is None and cache.peek("a") is not None and cache.peek("f") is not None
    calls = maker.calls
    await cache.get_or_make("b", maker("b"))
    assert maker.calls == calls + 1
    too_big = Maker(size=300)
    await cache.get_or_make("big", too_big("big"))
    assert cache.peek("big") is None                # more than a quarter of the budget: not kept


async def test_disk_hit_after_restart(tmp_path: Path) -> None:
    maker = Maker(size=5000)
    first = ClassCache(2**20, DerivedStore(tmp_path / "cache", 2**20))
    made = await first.get_or_make("series:1", maker("series:1"))
    again = ClassCache(2**20, DerivedStore(tmp_path / "cache", 2**20))   # a fresh process over the folder
    assert await again.get_or_make("series:1", maker("series:1")) == made
    assert maker.calls == 1
    s = again.stats()
    assert s["DiskHits"] == 1 and s["Hits"] == 1 and s["Misses"] == 0 and s["DiskBytes"] > 5000


async def test_disk_budget_evicts(tmp_path: Path) -> None:
    disk = DerivedStore(tmp_path / "cache", 80_000)        # entries up to 10 000 bytes
    cache = ClassCache(0, disk)                              # nothing in memory: every hit is the disk's
    maker = Maker(size=9000)
    for i in range(20):
        await cache.get_or_make(f"k{i}", maker(f"k{i}"))
    assert disk.size <= 80_000 and len(disk) < 20
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) == disk.size
    calls = maker.calls
    await cache.get_or_make("k19", maker("k19"))             # the newest: still there
    assert maker.calls == calls
    await cache.get_or_make("k0", maker("k0"))               # the oldest: evicted, made again
    assert maker.calls == calls + 1
    reopened = DerivedStore(tmp_path / "cache", 30_000)     # a smaller budget at the next start
    assert reopened.size <= 30_000


async def test_damaged_or_partial_file_is_a_miss(tmp_path: Path) -> None:
    maker = Maker(size=4000)
    cache = ClassCache(0, DerivedStore(tmp_path / "cache", 2**20))
    good = await cache.get_or_make("x", maker("x"))
    path = tmp_path / "cache" / "v1" / DerivedStore.name_of("x")[:2] / DerivedStore.name_of("x")
    raw = path.read_bytes()
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))        # one bit flipped
    cache = ClassCache(0, DerivedStore(tmp_path / "cache", 2**20))
    assert await cache.get_or_make("x", maker("x")) == good
    assert maker.calls == 2 and cache.stats()["DiskHits"] == 0
    path.write_bytes(path.read_bytes()[:1000])               # cut short (a power cut)
    cache = ClassCache(0, DerivedStore(tmp_path / "cache", 2**20))
    assert await cache.get_or_make("x", maker("x")) == good
    assert maker.calls == 3
    (path.parent / (path.name + ".123.tmp")).write_bytes(b"half")  # a write that never finished
    DerivedStore(tmp_path / "cache", 2**20)
    assert not list(path.parent.glob("*.tmp"))


async def test_cancelled_caller_does_not_cancel_the_shared_make() -> None:
    gate = asyncio.Event()
    cache = ClassCache(2**20, None)
    maker = Maker(gate)
    leaver = asyncio.create_task(cache.get_or_make("k", maker("k")))
    stayer = asyncio.create_task(cache.get_or_make("k", maker("k")))
    await _settle()
    leaver.cancel()
    await _settle()
    assert leaver.cancelled()
    gate.set()
    assert len(await stayer) == 100
    assert maker.calls == 1 and cache.peek("k") is not None


async def test_alone_cancelled_make_still_kept() -> None:
    gate = asyncio.Event()
    cache = ClassCache(2**20, None)
    maker = Maker(gate)
    only = asyncio.create_task(cache.get_or_make("k", maker("k")))
    await _settle()
    only.cancel()
    gate.set()
    await _settle()
    assert cache.peek("k") is not None           # the next student gets it without a second make
    await cache.get_or_make("k", maker("k"))
    assert maker.calls == 1


async def test_failed_make_reaches_every_caller_and_is_not_kept() -> None:
    cache = ClassCache(2**20, None)
    calls = 0

    async def broken() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise ValueError("cannot decode")

    results = await asyncio.gather(*(cache.get_or_make("k", broken) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results) and calls == 1
    assert cache.peek("k") is None
    await asyncio.gather(cache.get_or_make("k", broken), return_exceptions=True)
    assert calls == 2


async def test_wipe_leaves_dicom_files(tmp_path: Path, archive) -> None:
    ids = await store(archive, ct_instance(rows=16, cols=16))
    dicom = [p for p in (tmp_path / "data").glob("??/??/*") if p.is_file()]
    assert len(dicom) == 1
    cache = ClassCache(2**20, archive.derived_store(2**20))
    await cache.get_or_make("a", Maker()("a"))
    assert list((tmp_path / "data" / "cache").rglob("*"))
    before = (await archive.statistics()).disk_size
    assert cache.stats()["DiskBytes"] > 0 and before == dicom[0].stat().st_size
    await cache.wipe()
    assert cache.stats()["DiskBytes"] == 0 and cache.peek("a") is None
    assert [p for p in (tmp_path / "data").glob("??/??/*") if p.is_file()] == dicom
    assert (await archive.statistics()).disk_size == before
    assert await archive.reconcile() is not None
    assert (await archive.get(Level.INSTANCE, ids[3])).public_id == ids[3]


async def test_content_revision_changes_with_instances(archive) -> None:
    ids = await store(archive, ct_instance(index=1, rows=16, cols=16))
    series = await archive.get(Level.SERIES, ids[2])
    first = await archive.content_revision([series])
    assert first == await archive.content_revision([series])
    ids2 = await store(archive, ct_instance(index=2, rows=16, cols=16))
    assert ids2[2] == ids[2]
    second = await archive.content_revision([series])
    assert second != first
    await archive.delete(Level.INSTANCE, ids2[3])
    assert await archive.content_revision([series]) == first


def test_budgets_from_the_board() -> None:
    total = classcache.memory_total()
    assert total > 64 * 2**20
    assert classcache.memory_budget("auto", total=4 * 2**30) == 512 * 2**20
    assert classcache.memory_budget("auto", total=256 * 2**20) == 64 * 2**20    # the minimum
    assert classcache.memory_budget("auto", total=64 * 2**20) == 32 * 2**20     # never over half the memory
    assert classcache.memory_budget(100) == 100 * 2**20
    assert classcache.disk_budget("auto", 50 * 2**30) == 5 * 2**30
    assert classcache.disk_budget("auto", 500 * 2**30) == 16 * 2**30             # the cap
    assert classcache.disk_budget(0, 500 * 2**30) == 0


def test_config_keys_validated() -> None:
    s = validate({})
    assert s["ClassCacheMemory"] == "auto" and s["ClassCacheDisk"] == "auto" and s["RenderCacheSize"] == "auto"
    assert validate({"ClassCacheMemory": 256, "ClassCacheDisk": "2048"})["ClassCacheDisk"] == 2048
    for key, bad, reason in (("ClassCacheMemory", "lots", "whole number of MB"),
                             ("ClassCacheDisk", -1, "between 0"),
                             ("RenderCacheSize", True, "whole number of MB"),
                             ("ClassCacheMemory", 10**9, "between 0")):
        with pytest.raises(ConfigError) as e:
            validate({key: bad})
        assert e.value.key == key and reason in e.value.reason


def test_store_refuses_when_disk_reserve_would_be_crossed(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    disk = DerivedStore(tmp_path / "cache", 2**20, reserve_bytes=free + 2**30)
    assert disk.put("k", b"x" * 100) is False and disk.get("k") is None and disk.size == 0


# ---------------------------------------------------------------- WADO-RS metadata and bounded work, on a server

def _post(srv, data: bytes, **kw) -> dict:
    r = srv.post("/instances", data, **kw)
    assert r.status == 200, r.body[:300]
    return r.json()


def _cache_stats(srv, **kw) -> dict:
    r = srv.get("/pipacs/class/prepare", **kw)
    assert r.status == 200, r.body[:300]
    return r.json()["Cache"]


def _series_metadata(srv, series: str = "se1", **kw):
    return srv.get(f"/dicom-web/studies/{uid('PAT1/st1')}/series/{uid(f'PAT1/st1/{series}')}/metadata", **kw)


def test_series_metadata_cached_and_invalidated_by_a_new_instance(make_server) -> None:
    srv = make_server()
    for i in (1, 2):
        _post(srv, ct_instance(index=i, rows=16, cols=16))
    before = _cache_stats(srv)
    first = _series_metadata(srv)
    assert first.status == 200 and first.headers["Content-Type"] == "application/dicom+json"
    assert len(first.json()) == 2
    made = _cache_stats(srv)
    assert made["Misses"] == before["Misses"] + 1
    again = _series_metadata(srv)
    assert again.body == first.body
    after = _cache_stats(srv)
    assert after["Hits"] == made["Hits"] + 1 and after["Misses"] == made["Misses"]
    study = srv.get(f"/dicom-web/studies/{uid('PAT1/st1')}/metadata")        # another route, another key
    assert study.status == 200 and len(study.json()) == 2
    assert _cache_stats(srv)["Misses"] == after["Misses"] + 1
    _post(srv, ct_instance(index=3, rows=16, cols=16))                      # the series changes
    changed = _series_metadata(srv)
    assert len(changed.json()) == 3 and changed.body != first.body
    sops = {item["00080018"]["Value"][0] for item in changed.json()}
    assert uid("PAT1/st1/se1/3") in sops
    # the base URL is in the key: a client that reached the board by another name gets its own URLs
    other = _series_metadata(srv, headers={"Host": "pipacs.local:8042"})
    assert "http://pipacs.local:8042/dicom-web/studies/" in other.body.decode()
    assert "pipacs.local" not in changed.body.decode()


def test_students_never_get_what_the_teacher_warmed_for_an_unpublished_study(make_server) -> None:
    from .test_access import BASIC, CLASSROOM, deidentified
    srv = make_server(CLASSROOM)
    for study in ("pub", "unpub"):
        r = srv.post("/instances", deidentified(patient_id="ANON1", study=study), headers=BASIC)
        assert r.status == 200, r.body[:300]
        r = srv.post("/instances", deidentified(patient_id="ANON1", study=study, index=2), headers=BASIC)
        assert r.status == 200, r.body[:300]
        if study == "pub":
            assert srv.request("PUT", f"/studies/{r.json()['ParentStudy']}/released", "1",
                               headers=BASIC).status == 200
    urls = {s: f"/dicom-web/studies/{uid(f'ANON1/{s}')}/series/{uid(f'ANON1/{s}/se1')}/metadata"
            for s in ("pub", "unpub")}
    for s in ("pub", "unpub"):
        assert srv.get(urls[s], headers=BASIC).status == 200
    warmed = _cache_stats(srv, headers=BASIC)
    hidden = srv.get(urls["unpub"])                       # a student: what the teacher did not publish
    assert hidden.status == 404 and "Message" in hidden.json()
    shown = srv.get(urls["pub"])                          # the same instances the teacher saw: shared
    assert shown.status == 200 and shown.body == srv.get(urls["pub"], headers=BASIC).body
    after = _cache_stats(srv, headers=BASIC)
    assert after["Misses"] == warmed["Misses"] and after["Hits"] == warmed["Hits"] + 2
    assert srv.get("/pipacs/class/prepare").status in (401, 403)


def _frames_url(sop: str = "PAT1/st1/se1/1") -> str:
    return (f"/dicom-web/studies/{uid('PAT1/st1')}/series/{uid('PAT1/st1/se1')}/instances/{uid(sop)}/frames/")


OCTETS = {"Accept": 'multipart/related; type="application/octet-stream"'}


def test_frames_request_over_the_limit_is_refused(make_server) -> None:
    from appliance.web.dicomweb.wado import MAX_FRAMES_PER_REQUEST
    assert MAX_FRAMES_PER_REQUEST == 1024
    srv = make_server()
    _post(srv, ct_instance(rows=16, cols=16))
    many = ",".join(str(i % 1 + 1) for i in range(MAX_FRAMES_PER_REQUEST + 1))
    r = srv.get(_frames_url() + many, headers=OCTETS)
    assert r.status == 400, r.body[:300]
    err = r.json()
    assert "1025 frames" in err["Message"] and "at most 1024" in err["Message"] and err["HttpStatus"] == 400
    at_limit = ",".join("1" for _ in range(MAX_FRAMES_PER_REQUEST))     # 1024: allowed (frame 1 each time)
    ok = srv.get(_frames_url() + at_limit, headers=OCTETS)
    assert ok.status == 200 and ok.body.count(b"Content-Type: application/octet-stream") == 1024


def multiframe(frames: int, rows: int, cols: int) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(ct_instance(index=9, rows=rows, cols=cols)))
    ds.SOPInstanceUID = uid("PAT1/st1/se1/multi")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.NumberOfFrames = frames
    ds.PixelData = ds.PixelData * frames
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_client_leaving_mid_stream_stops_the_work(make_server) -> None:
    frames, rows = 200, 256                         # 26 MB of frames: far more than loopback's socket buffers
    srv = make_server()
    _post(srv, multiframe(frames, rows, rows))
    before = _cache_stats(srv)
    path = _frames_url("PAT1/st1/se1/multi") + ",".join(str(i + 1) for i in range(frames))
    sock = socket.create_connection((srv.host, srv.http_port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {srv.host}\r\nAccept: {OCTETS['Accept']}\r\n\r\n".encode())
    got = b""
    while len(got) < 3 * rows * rows * 2:           # the headers and the first frames
        chunk = sock.recv(65536)
        assert chunk, "the server closed first"
        got += chunk
    assert got.startswith(b"HTTP/1.1 200")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # reset, as a tab closed
    sock.close()
    for _ in range(200):                             # until the server has seen the reset (a count, not a time)
        stats = _cache_stats(srv)
        if stats["StreamsCut"] > before["StreamsCut"]:
            break
        time_sleep(0.05)
    assert stats["StreamsCut"] == before["StreamsCut"] + 1
    sent = stats["PartsSent"] - before["PartsSent"]
    assert 3 <= sent < frames, sent
    # the others are still answered
    r = srv.get(_frames_url("PAT1/st1/se1/multi") + "1,2", headers=OCTETS)
    assert r.status == 200 and r.body.count(b"Content-Type: application/octet-stream") == 2
    assert _cache_stats(srv)["StreamsCut"] == stats["StreamsCut"]


def test_thirty_students_at_once_cost_one_metadata_computation(make_server) -> None:
    from concurrent.futures import ThreadPoolExecutor
    srv = make_server()
    for i in range(1, 11):
        _post(srv, ct_instance(index=i, rows=16, cols=16))
    before = _cache_stats(srv)
    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(lambda _: _series_metadata(srv), range(30)))
    assert {a.status for a in answers} == {200} and len({a.body for a in answers}) == 1
    after = _cache_stats(srv)
    assert after["Misses"] == before["Misses"] + 1
    assert (after["Hits"] - before["Hits"]) + (after["Coalesced"] - before["Coalesced"]) == 29
