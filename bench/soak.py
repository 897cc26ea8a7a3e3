"""`make bench ONLY=soak`: 8 associations (pynetdicom and DCMTK storescu) storing 100 000
small instances at once into pipacs, with a C-FIND loop alongside; then the same clients
against DCMTK storescp (--fork: a process per association, no fsync) for the floor.

Prints lost answers (goal 0), VmRSS after warm-up and at the end (goal: within 10%), C-FIND
p99 under that load (goal <= 0.5 s) and the store rates, as a ratio to storescp's. Bounded by
the number of stores (about 10 minutes in all on the 2-core development VM).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers import Server, free_port, wait_listening
from tests.soakload import LoadResult, run_load

STORESCP = "/usr/bin/storescp"
PYNETDICOM_ASSOCS = 4
DCMTK_ASSOCS = 4


def _pipacs(stores: int, work: Path, plain: bool) -> tuple[LoadResult, float]:
    srv = Server(work / "pipacs").start()
    try:
        result = run_load(srv.dicom_port, "PIPACS", work / "load-pipacs", pynetdicom_assocs=PYNETDICOM_ASSOCS,
                          dcmtk_assocs=DCMTK_ASSOCS, stores=stores, plain=plain, server=srv, find=True,
                          sample_every=2.0)
        indexed = srv.get_json("/statistics")["CountInstances"]
        if indexed != result.answered_ok:
            result.errors.append(f"{indexed} instances indexed for {result.answered_ok} successful C-STOREs")
    finally:
        srv.stop()
    return result, indexed


def _storescp(stores: int, work: Path, plain: bool) -> LoadResult:
    out = work / "storescp"
    out.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen([STORESCP, "--fork", "-aet", "PIPACS", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        return run_load(port, "PIPACS", work / "load-storescp", pynetdicom_assocs=PYNETDICOM_ASSOCS,
                        dcmtk_assocs=DCMTK_ASSOCS, stores=stores, plain=plain)
    finally:
        proc.terminate()
        proc.wait()


def bench_soak(stores: int = 100_000, floor_stores: int = 25_000, plain: bool = False) -> None:
    work = Path(tempfile.mkdtemp(prefix="pipacs-bench-soak-"))
    kind = "plain pynetdicom 3.0.4" if plain else "pynetdicom with pipacs's patches (as pipacs's own SCU)"
    try:
        print(f"  soak: {stores} stores into pipacs, {PYNETDICOM_ASSOCS} pynetdicom associations ({kind}) "
              f"and {DCMTK_ASSOCS} storescu, C-FIND alongside ...", flush=True)
        ours, indexed = _pipacs(stores, work, plain)
        print(f"  soak: {floor_stores} stores into DCMTK storescp --fork, the same clients ...", flush=True)
        floor = _storescp(floor_stores, work, plain)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    warm_at = stores // 10
    warm = next((rss for _, n, rss in ours.samples if n >= warm_at), float("nan"))
    end = ours.samples[-1][2] if ours.samples else float("nan")
    peak = max((rss for _, _, rss in ours.samples), default=float("nan"))
    print(f"\nSoak: {PYNETDICOM_ASSOCS} pynetdicom + {DCMTK_ASSOCS} storescu associations at once, small CT "
          f"instances ({kind})")
    print(f"  {'':34} {'stores':>8} {'lost':>5} {'failed':>6} {'inst/s':>8}")
    for name, r in (("pipacs", ours), ("DCMTK storescp --fork (floor)", floor)):
        print(f"  {name:34} {r.stores:8d} {r.lost:5d} {r.answered_failed:6d} {r.rate:8.1f}")
    print(f"  pipacs/storescp store rate: {ours.rate / floor.rate:.2f}x; lost answers {ours.lost} (goal 0), "
          f"of which the sender's pynetdicom had received {ours.lost_in_sender}; indexed {indexed} "
          f"for {ours.answered_ok} successes")
    print(f"  pipacs VmRSS after warm-up ({warm_at} stores) {warm:.0f} MB, at the end {end:.0f} MB "
          f"({(end / warm - 1) * 100:+.1f}%; goal within 10%), highest sample {peak:.0f} MB")
    print(f"  C-FIND (study level, all studies) under that load: p99 {ours.find_p99() * 1000:.0f} ms, "
          f"median {ours.find_median() * 1000:.0f} ms, {len(ours.find_latencies)} queries, "
          f"{ours.find_failed} failed (goal p99 <= 500 ms)")
    for r in (ours, floor):
        for e in r.errors[:5]:
            print(f"  ! {e}")
