"""`make bench`: pipacs beside its floor (DCMTK storescp) and its peer (Orthanc) on the same files.

Every figure is a median of several runs, printed with its ratio to the floor or the peer
measured in the same run. Nothing here is a pass/fail test; the issue's targets are
printed beside the figures so a reader sees where we stand.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import Server, free_port, have_orthanc
from tests.orthanc import Orthanc
from tests.synth import write_series

OUT = Path(__file__).resolve().parent / "out"
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"


def ct_set(n: int) -> Path:
    """n CT instances of 512x512x16 bit, made once and kept in bench/out."""
    folder = OUT / f"ct{n}"
    if not (folder.is_dir() and len(list(folder.glob("*.dcm"))) == n):
        shutil.rmtree(folder, ignore_errors=True)
        print(f"making {n} CT instances of 512x512x16 bit in {folder} ...", flush=True)
        write_series(folder, n, patient_id="BENCH", patient_name="Bench^CT", study="bench", series="ct")
    return folder


def storescu(port: int, aet: str, folder: Path, nodelay: bool) -> float:
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    t0 = time.perf_counter()
    r = subprocess.run([STORESCU, "-aec", aet, "+sd", "127.0.0.1", str(port), str(folder)], env=env,
                       capture_output=True, text=True)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr[-1000:]}")
    return took


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_floor(folder: Path, n: int, work: Path) -> float:
    out = work / "storescp"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([STORESCP, "-aet", "FLOOR", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        took = storescu(port, "FLOOR", folder, nodelay=False)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(out, ignore_errors=True)
    return n / took


def run_pipacs(folder: Path, n: int, work: Path, nodelay: bool) -> tuple[float, float]:
    srv = Server(work / "pipacs").start()
    try:
        took = storescu(srv.dicom_port, "PIPACS", folder, nodelay)
        count = srv.get_json("/statistics")["CountInstances"]
        assert count == n, f"pipacs stored {count} of {n}"
        rss = vm_hwm_mb(srv.proc.pid)
    finally:
        srv.stop()
        shutil.rmtree(work / "pipacs", ignore_errors=True)
    return n / took, rss


def run_orthanc(folder: Path, n: int, work: Path, nodelay: bool) -> float:
    ref = Orthanc(work / "orthanc", tcp_nodelay=nodelay).start()
    try:
        took = storescu(ref.dicom_port, "ORTHANC", folder, nodelay)
    finally:
        ref.stop()
        shutil.rmtree(work / "orthanc", ignore_errors=True)
    return n / took


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_ingest(n: int, reps: int) -> None:
    folder = ct_set(n)
    work = Path(tempfile.mkdtemp(prefix="pipacs-bench-"))
    try:
        res: dict[str, list[float]] = {k: [] for k in ("floor", "ours", "ours_nd", "rss", "orthanc", "orthanc_nd")}
        for i in range(reps):
            print(f"  ingest run {i + 1}/{reps} ...", flush=True)
            res["floor"].append(run_floor(folder, n, work))
            rate, rss = run_pipacs(folder, n, work, nodelay=False)
            res["ours"].append(rate)
            res["rss"].append(rss)
            res["ours_nd"].append(run_pipacs(folder, n, work, nodelay=True)[0])
            if have_orthanc():
                res["orthanc"].append(run_orthanc(folder, n, work, nodelay=False))
                res["orthanc_nd"].append(run_orthanc(folder, n, work, nodelay=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = med(res["floor"])
    print(f"\nC-STORE ingest: {n} CT instances 512x512x16 (~{n * 0.5:.0f} MB) over one association, "
          f"median of {reps}")
    print(f"  {'':38} {'inst/s':>8}  {'ratio':>22}")
    print(f"  {'DCMTK storescp (floor, no fsync)':38} {floor:8.1f}")
    print(f"  {'pipacs, storescu as shipped':38} {med(res['ours']):8.1f}  {med(res['ours']) / floor:6.2f}x floor"
          f"   (target >= 150 inst/s)")
    line = f"  {'pipacs, storescu TCP_NODELAY=1':38} {med(res['ours_nd']):8.1f}  {med(res['ours_nd']) / floor:6.2f}x floor"
    print(line)
    if res["orthanc"]:
        o, ond = med(res["orthanc"]), med(res["orthanc_nd"])
        print(f"  {'Orthanc, storescu as shipped':38} {o:8.1f}  pipacs/Orthanc = {med(res['ours']) / o:5.2f}x")
        print(f"  {'Orthanc, TCP_NODELAY=1 (fair figure)':38} {ond:8.1f}  pipacs/Orthanc = "
              f"{med(res['ours_nd']) / ond:5.2f}x   (target >= 1.0x)")
    else:
        print("  Orthanc not installed (apt-get install orthanc): no peer figure")
    print(f"  pipacs peak RSS (VmHWM) during ingest: {med(res['rss']):.0f} MB   (target <= 150 MB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    for tool in (STORESCU, STORESCP):
        if not os.path.exists(tool):
            print(f"{tool} is missing: apt-get install dcmtk", file=sys.stderr)
            return 1
    OUT.mkdir(exist_ok=True)
    bench_ingest(args.instances, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
