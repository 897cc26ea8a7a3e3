"""The class cache (appliance/web/classcache.py) and its disk tier (appliance/archive/derived.py):
coalescing, bounded makes, budgets, restarts, damaged files, cancelled callers; content_revision."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
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
    """make() that counts its calls and, when ``gate`` is given, waits for it to open; ``until_running(n)``
    waits (on a condition, not on loop turns) until n makes are inside."""

    def __init__(self, gate: asyncio.Event | None = None, size: int = 100):
        self.calls = 0
        self.running = 0
        self.most_running = 0
        self.gate = gate
        self.size = size
        self.changed = asyncio.Condition()

    async def until_running(self, n: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.running >= n)

    def __call__(self, key: str):
        async def make() -> bytes:
            self.calls += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            async with self.changed:
                self.changed.notify_all()
            try:
                if self.gate is not None:
                    await self.gate.wait()
                return (key.encode() * self.size)[: self.size]
            finally:
                self.running -= 1
        return make


async def test_thirty_callers_one_make(tmp_path: Path) -> None:
    gate = asyncio.Event()
    cache = ClassCache(2**20, DerivedStore(tmp_path / "cache", 2**20))
    maker = Maker(gate)
    callers = [asyncio.create_task(cache.get_or_make("k", maker("k"))) for _ in range(30)]
    await maker.until_running(1)     # the make is held open: every caller has asked by now
    assert cache.stats()["Coalesced"] == 29
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
    await maker.until_running(2)
    await asyncio.sleep(0.05)        # room for a third make to start, if the bound did not hold
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
    path = tmp_path / "cache" / "v2" / DerivedStore.name_of("x")[:2] / DerivedStore.name_of("x")
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
    await maker.until_running(1)
    leaver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaver
    gate.set()
    assert len(await stayer) == 100
    assert maker.calls == 1 and cache.peek("k") is not None


async def test_alone_cancelled_make_still_kept() -> None:
    gate = asyncio.Event()
    cache = ClassCache(2**20, None)
    maker = Maker(gate)
    only = asyncio.create_task(cache.get_or_make("k", maker("k")))
    await maker.until_running(1)
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await only
    gate.set()
    await cache.get_or_make("k", maker("k"))     # the next student: the same make (or its answer), not a second
    assert maker.calls == 1 and cache.peek("k") is not None


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


async def test_deleting_an_instance_drops_what_was_made_from_it(tmp_path: Path, archive) -> None:
    """The archive's delete path drops the derived entries its files own, in memory and on disk (and a
    restarted store still knows the owners, from the files' headers); the DICOM files of the others stay."""
    a = await store(archive, ct_instance(index=1, rows=16, cols=16))
    b = await store(archive, ct_instance(index=2, rows=16, cols=16))
    cache = ClassCache(2**20, archive.derived_store(2**20))
    archive.on_files_dropped(cache.forget_owners)
    inst_a, inst_b = (await archive.get(Level.INSTANCE, a[3])), (await archive.get(Level.INSTANCE, b[3]))
    owners_a, owners_b = await archive.content_files([inst_a]), await archive.content_files([inst_b])
    series = await archive.get(Level.SERIES, a[2])
    both = await archive.content_files([series])
    assert sorted(owners_a + owners_b) == both and len(both) == 2
    await cache.get_or_make("pixels-a", Maker()("pixels-a"), owners=owners_a)
    await cache.get_or_make("pixels-b", Maker()("pixels-b"), owners=owners_b)
    await cache.get_or_make("series", Maker()("series"), owners=both)
    folder = tmp_path / "data" / "cache"
    assert len([p for p in folder.rglob("*") if p.is_file()]) == 3
    reopened = DerivedStore(folder, 2**20)               # another run: owners read back from the headers
    assert len(reopened) == 3
    await archive.delete(Level.INSTANCE, a[3])
    assert cache.peek("pixels-a") is None and cache.peek("series") is None and cache.peek("pixels-b") is not None
    left = [p for p in folder.rglob("*") if p.is_file()]
    assert [p.name for p in left] == [DerivedStore.name_of("pixels-b")]
    assert DerivedStore(folder, 2**20).get("pixels-b") is not None
    # a make that was running for the deleted file when it went: answered, not kept
    maker = Maker()
    assert await cache.get_or_make("late", maker("late"), owners=owners_a)
    assert cache.peek("late") is None and cache.disk.get("late") is None and maker.calls == 1
    assert cache.disk.put("late", b"x", owners_a) is False
    assert (await archive.get(Level.INSTANCE, b[3])).public_id == b[3]


async def test_render_pool_is_memory_only_with_its_own_budget(tmp_path: Path) -> None:
    """images.py's answers: coalesced and bounded like the rest, but neither on the card nor able to
    evict what the teacher prepared."""
    disk = DerivedStore(tmp_path / "cache", 2**20)
    cache = ClassCache(1000, disk, render_budget=1000)
    maker = Maker(size=200)
    await cache.get_or_make("frame", maker("frame"))
    for i in range(20):                                 # a student trying twenty window values
        await cache.get_or_make(f"render/{i}", maker(f"render/{i}"), pool="render")
    assert cache.peek("frame") is not None and len(disk) == 1
    s = cache.stats()
    assert s["RenderBytes"] <= 1000 and s["RenderBudget"] == 1000 and s["MemoryBytes"] == 200
    gate = asyncio.Event()
    slow = Maker(gate)
    callers = [asyncio.create_task(cache.get_or_make("render/x", slow("x"), pool="render")) for _ in range(5)]
    await slow.until_running(1)
    gate.set()
    await asyncio.gather(*callers)
    assert slow.calls == 1
    s = cache.stats()
    assert s["RenderMisses"] == 21 and s["RenderCoalesced"] == 4 and s["Misses"] == 1   # counted apart


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


def test_concurrent_puts_and_evictions_keep_index_and_files_in_step(tmp_path: Path) -> None:
    """L4: eviction unlinks under the lock the rename happens under, so a put racing an eviction of the
    same name never leaves an index entry without its file (nor a file the index does not count)."""
    import threading
    disk = DerivedStore(tmp_path / "cache", 40_000)          # entries up to 5000 bytes: about 10 fit

    def writer(n: int) -> None:
        for i in range(150):
            disk.put(f"k{(i * 7 + n) % 15}", bytes([n]) * 4000, owners=(f"owner{i % 5}",))
            if i % 50 == 49:
                disk.drop_owners([f"owner{(i + n) % 5}"])
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    on_disk = {p.name: p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert sum(on_disk.values()) == disk.size <= 40_000 and len(on_disk) == len(disk)    # before any get
    assert set(on_disk) == {DerivedStore.name_of(f"k{i}") for i in range(15) if disk.get(f"k{i}") is not None}


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
    # a client that reached the board by another name gets its own URLs, from the same entry
    other = _series_metadata(srv, headers={"Host": "pipacs.local:8042"})
    assert "http://pipacs.local:8042/dicom-web/studies/" in other.body.decode()
    assert "pipacs.local" not in changed.body.decode() and "pipacs-dicomweb-base" not in other.body.decode()
    assert other.json() == json.loads(changed.body.decode().replace(f"{srv.host}:{srv.http_port}", "pipacs.local:8042"))


def test_fifty_host_names_cost_one_metadata_make(make_server) -> None:
    """H2: the Host header is not in the key (each one would be a full make and an entry on the card)."""
    srv = make_server()
    for i in (1, 2, 3):
        _post(srv, ct_instance(index=i, rows=16, cols=16))
    before = _cache_stats(srv)
    for n in range(50):
        r = _series_metadata(srv, headers={"Host": f"flood{n}.example:{1000 + n}"})
        assert r.status == 200
        assert f"http://flood{n}.example:{1000 + n}/dicom-web/studies/" in r.body.decode()
        assert "\\u0000" not in r.body.decode()
    after = _cache_stats(srv)
    assert after["Misses"] == before["Misses"] + 1 and after["Hits"] == before["Hits"] + 49
    assert after["Entries"] == before["Entries"] + 1


def test_deleting_a_study_leaves_nothing_of_it_in_the_cache_folder(make_server) -> None:
    """H3: a study deleted by the teacher (here one imported with the patient's name) leaves no file under
    cache/ with its PatientName, its stack document or its frames, also across a restart; another study's
    entries stay."""
    srv = make_server()
    secret = "Secretname^Patient"
    kept = [_post(srv, ct_instance(patient_id="KEEP", index=i, rows=16, cols=16)) for i in (1, 2)]
    gone = [_post(srv, ct_instance(patient_id="GONE", patient_name=secret, index=i, rows=16, cols=16))
            for i in (1, 2)]
    folder = srv.workdir / "data" / "cache"

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}

    def warm(ids: list[dict], patient: str) -> None:
        assert _series_metadata_of(srv, patient).status == 200
        stack = srv.get(f"/pipacs/series/{ids[0]['ParentSeries']}/stack")
        assert stack.status == 200
        for f in json.loads(stack.body)["Frames"]:
            assert srv.get(f["Pixels"]).status == 200
    warm(kept, "KEEP")
    of_kept = files()
    assert len(of_kept) == 4                              # metadata, stack document, two frames
    warm(gone, "GONE")
    everything = files()
    assert len(everything) == 8 and any(secret.encode() in raw for raw in everything.values())
    srv.stop()
    srv.start()                                           # the owners are read back from the files
    r = srv.request("DELETE", f"/studies/{gone[0]['ParentStudy']}")
    assert r.status == 200, r.body[:300]
    assert files() == of_kept
    assert not any(secret.encode() in raw for raw in files().values())


def test_an_overwritten_instance_drops_its_old_frames(make_server) -> None:
    """OverwriteInstances: the teacher sends a cleaned copy of an instance; what was made from the old
    file leaves cache/ (its key could never be asked for again, but its pixels were on the card)."""
    srv = make_server({"OverwriteInstances": True})
    first = [_post(srv, ct_instance(index=i, rows=16, cols=16, pixel_seed=1)) for i in (1, 2)]
    folder = srv.workdir / "data" / "cache"

    def names() -> set[str]:
        return {p.name for p in folder.rglob("*") if p.is_file()}
    stack = json.loads(srv.get(f"/pipacs/series/{first[0]['ParentSeries']}/stack").body)
    for f in stack["Frames"]:
        assert srv.get(f["Pixels"]).status == 200
    before = names()
    assert len(before) == 3                                  # the stack document and two frames
    _post(srv, ct_instance(index=1, rows=16, cols=16, pixel_seed=2))    # instance 1 again, other pixels
    after = names()
    assert len(after) == 1 and after < before                # only instance 2's frame is left


def _series_metadata_of(srv, patient: str):
    return srv.get(f"/dicom-web/studies/{uid(f'{patient}/st1')}/series/{uid(f'{patient}/st1/se1')}/metadata")


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
    before = _cache_stats(srv)
    ok = srv.get(_frames_url() + at_limit, headers=OCTETS)
    assert ok.status == 200 and ok.body.count(b"Content-Type: application/octet-stream") == 1024
    assert _cache_stats(srv)["Runs"] == before["Runs"] + 1          # L5: one decode, not 1024


def test_frames_listed_again_are_decoded_once(make_server) -> None:
    srv = make_server()
    _post(srv, multiframe(4, 16, 16))
    url = _frames_url("PAT1/st1/se1/multi")
    single = {n: srv.get(url + str(n), headers=OCTETS) for n in (1, 2, 3)}
    before = _cache_stats(srv)
    r = srv.get(url + "1,2,1,3,2,1", headers=OCTETS)
    assert r.status == 200
    assert _cache_stats(srv)["Runs"] == before["Runs"] + 3            # three distinct frames
    boundary = r.headers["Content-Type"].split("boundary=")[1].encode()
    parts = [p.split(b"\r\n\r\n", 1)[1][:-2] for p in r.body.split(b"--" + boundary)[1:-1]]
    assert len(parts) == 6
    for n, part in zip((1, 2, 1, 3, 2, 1), parts, strict=True):
        assert part[:2] == struct.pack("<H", n - 1)
        one = single[n]
        b1 = one.headers["Content-Type"].split("boundary=")[1].encode()
        assert part == one.body.split(b"--" + b1)[1].split(b"\r\n\r\n", 1)[1][:-2]


def multiframe(frames: int, rows: int, cols: int) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(ct_instance(index=9, rows=rows, cols=cols)))
    ds.SOPInstanceUID = uid("PAT1/st1/se1/multi")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.NumberOfFrames = frames
    ds.PixelData = b"".join(struct.pack("<H", i) + ds.PixelData[2:] for i in range(frames))   # frames differ
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
    polls, every = 200, 0.05                         # until the server has seen the reset: gives up after ~10 s
    for _ in range(polls):
        stats = _cache_stats(srv)
        if stats["StreamsCut"] > before["StreamsCut"]:
            break
        time_sleep(every)
    assert stats["StreamsCut"] == before["StreamsCut"] + 1, f"no cut stream seen in {polls} polls ({polls * every:.0f} s)"
    sent = stats["PartsSent"] - before["PartsSent"]
    assert 3 <= sent < frames, sent
    # the others are still answered
    r = srv.get(_frames_url("PAT1/st1/se1/multi") + "1,2", headers=OCTETS)
    assert r.status == 200 and r.body.count(b"Content-Type: application/octet-stream") == 2
    assert _cache_stats(srv)["StreamsCut"] == stats["StreamsCut"]


def _raw_get(srv, path: str) -> socket.socket:
    """A GET sent on its own connection (the answer read later by ``_answer``)."""
    sock = socket.create_connection((srv.host, srv.http_port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {srv.host}:{srv.http_port}\r\nConnection: close\r\n\r\n".encode())
    return sock


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    sock.settimeout(60)
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_thirty_students_at_once_cost_one_metadata_computation(make_server, request) -> None:
    """The thirty requests are all in the server's sockets before it runs again (the process is stopped
    while they are sent, SIGSTOP/SIGCONT), so they arrive while the first make is open: the others wait
    for it (Coalesced), none makes it again."""
    srv = make_server()
    # teardown (runs before make_server's, also when the run is interrupted) never leaves it stopped
    request.addfinalizer(lambda: os.kill(srv.proc.pid, signal.SIGCONT) if srv.proc.poll() is None else None)
    for i in range(1, 21):
        _post(srv, ct_instance(index=i, rows=16, cols=16))
    before = _cache_stats(srv)
    path = f"/dicom-web/studies/{uid('PAT1/st1')}/series/{uid('PAT1/st1/se1')}/metadata"
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        socks = [_raw_get(srv, path) for _ in range(30)]
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    answers = [_answer(s) for s in socks]
    assert {status for status, _ in answers} == {200} and len({body for _, body in answers}) == 1
    after = _cache_stats(srv)
    assert after["Misses"] == before["Misses"] + 1
    assert after["Coalesced"] - before["Coalesced"] >= 1
    assert (after["Hits"] - before["Hits"]) + (after["Coalesced"] - before["Coalesced"]) == 29


def test_frames_held_for_repeats_share_one_budget_across_requests(monkeypatch) -> None:
    """Two requests ``1,2,1,2`` at once, budget two frames: the first holds both, the second holds none
    and decodes again (6 decodes, not 4); the held bytes never pass the budget and all go back at the end."""
    from appliance.web.dicomweb import wado

    ds = pydicom.dcmread(io.BytesIO(multiframe(2, 16, 16)))
    size = len(wado.frame_bytes(ds, 0))
    monkeypatch.setattr(wado, "HELD_FRAME_BYTES", 2 * size)
    peak = []

    async def go() -> list[list[bytes]]:
        cache = ClassCache(2**20)
        a, b = wado.frame_parts(cache, ds, [1, 2, 1, 2]), wado.frame_parts(cache, ds, [1, 2, 1, 2])
        got: list[list[bytes]] = [[], []]
        for _ in range(4):
            for i, gen in enumerate((a, b)):
                body, _ = await gen.__anext__()
                got[i].append(body)
                peak.append(wado.held_frame_bytes())
        for gen in (a, b):
            with pytest.raises(StopAsyncIteration):
                await gen.__anext__()
        assert cache.runs == 6
        return got

    got = asyncio.run(go())
    assert got[0] == got[1] and got[0][0] == got[0][2] and got[0][0] != got[0][1]
    assert max(peak) == 2 * size and wado.held_frame_bytes() == 0


def test_entries_of_files_the_index_does_not_know_are_dropped_at_start(make_server) -> None:
    """N3: a power cut between the index's commit and drop_owners leaves entries whose owner is gone;
    at the store's first use after a restart they are removed, the others stay."""
    srv = make_server()
    ids = [_post(srv, ct_instance(index=i, rows=16, cols=16)) for i in (1, 2)]
    stack = srv.get(f"/pipacs/series/{ids[0]['ParentSeries']}/stack")
    assert stack.status == 200
    srv.stop()
    folder = srv.workdir / "data" / "cache"
    before = {p.name for p in folder.rglob("*") if p.is_file()}
    assert before
    stray = DerivedStore(folder, 2**24)
    assert stray.put("left by a crash", b"Secretname^Patient", owners=("0" * 8 + "-dead-beef-0000-" + "0" * 12,))
    assert stray.put("half known", b"x", owners=(next(iter(stray._owned)), "not-in-the-index"))
    with_stray = {p.name for p in folder.rglob("*") if p.is_file()}
    assert len(with_stray) == len(before) + 2
    srv.start()
    assert srv.get(f"/pipacs/series/{ids[0]['ParentSeries']}/stack").body == stack.body   # first use: indexing
    assert {p.name for p in folder.rglob("*") if p.is_file()} == before
