"""A soak load for a storage SCP: pynetdicom and DCMTK senders at once, every answer counted.

Used by tests/test_soak.py (a few thousand stores) and bench/soak.py (100 000). Bounded by a
number of stores, never by time. Each C-STORE carries a new SOP Instance UID, so every
success must end as exactly one indexed instance. A request without an answer is "lost":
pynetdicom's ``send_c_store`` returns an empty status after its DIMSE timeout; storescu
(``-td``) reports the failure and ends its association.

The pynetdicom senders run in a child process, one thread per association (the shape of the
load in issue 17), sending with pipacs's patches as pipacs's own SCU does
(``dicom/scu.py``), or as plain pynetdicom 3.0.4 (``plain=True``). A C-STORE response is also
counted when it reaches the sender's DIMSE layer (EVT_DIMSE_RECV): an answer that arrived
but that ``send_c_store`` did not return is lost in the sender, not by the server
(docs/pynetdicom-speedups.md, "Lost answers").
"""

from __future__ import annotations

import io
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

DIMSE_TIMEOUT = 20          # s a sender waits for an answer before counting it lost
STORESCU = "/usr/bin/storescu"
DCMTK_PASS = 200            # files per storescu association (new UIDs each pass)
ROWS = 64                   # small instances: many stores per minute (about 9 KB each)


@dataclass
class LoadResult:
    answered_ok: int = 0
    answered_failed: int = 0
    lost: int = 0                    # no answer returned to the sending code
    lost_in_sender: int = 0          # of those, answers that did reach the sender's DIMSE layer
    pynetdicom_ok: int = 0
    dcmtk_ok: int = 0
    seconds: float = 0.0
    find_latencies: list[float] = field(default_factory=list)
    find_failed: int = 0
    samples: list[tuple[float, int, float]] = field(default_factory=list)   # (t, indexed, VmRSS MB)
    errors: list[str] = field(default_factory=list)

    @property
    def stores(self) -> int:
        return self.answered_ok + self.answered_failed + self.lost

    @property
    def rate(self) -> float:
        return self.stores / self.seconds if self.seconds else 0.0

    def find_p99(self) -> float:
        xs = sorted(self.find_latencies)
        return xs[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else float("nan")

    def find_median(self) -> float:
        return statistics.median(self.find_latencies) if self.find_latencies else float("nan")


def template(sender: str):
    """A small CT dataset of its own patient and study for one sender."""
    import pydicom

    from tests.synth import ct_instance
    return pydicom.dcmread(io.BytesIO(ct_instance(patient_id=f"SOAK-{sender}", patient_name=f"Soak^{sender}",
                                                  study=sender, series="1", rows=ROWS, cols=ROWS)))


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------ pynetdicom senders

def _pynetdicom_sender(port: int, aet: str, name: str, count: int, plain: bool, out: dict) -> None:
    """One association (a new one only if one is lost), ``count`` C-STOREs of new UIDs."""
    from pydicom.uid import generate_uid
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    handlers: list = []
    if not plain:
        from appliance.dicom.pynetdicom_patches import speed_up
        handlers.append((evt.EVT_CONN_OPEN, lambda e: speed_up(e.assoc.dul.socket)))
    answered: set[int] = set()

    def on_dimse_recv(event) -> None:
        cs = event.message.command_set
        if cs is not None and "MessageIDBeingRespondedTo" in cs:
            answered.add(int(cs.MessageIDBeingRespondedTo))

    handlers.append((evt.EVT_DIMSE_RECV, on_dimse_recv))
    ds = template(name)
    ae = AE(ae_title=name[:16])
    ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
    ae.dimse_timeout = ae.acse_timeout = DIMSE_TIMEOUT
    done = 0
    assoc = None
    while done < count:
        if assoc is None or not assoc.is_established:
            assoc = ae.associate("127.0.0.1", port, ae_title=aet, evt_handlers=handlers)
            if not assoc.is_established:
                out["errors"].append(f"{name}: association refused or failed")
                time.sleep(0.5)
                continue
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        msg_id = done % 65535 + 1
        answered.discard(msg_id)
        status = assoc.send_c_store(ds, msg_id=msg_id)
        done += 1
        if "Status" not in status:
            out["lost"] += 1
            out["lost_in_sender"] += msg_id in answered
            assoc = None          # pynetdicom aborted it
        elif status.Status == 0:
            out["ok"] += 1
        else:
            out["failed"] += 1
    if assoc is not None and assoc.is_established:
        assoc.release()


def _pynetdicom_child(port: int, aet: str, senders: int, each: int, plain: bool) -> None:
    """The child process: ``senders`` threads; prints its counts as JSON."""
    if not plain:
        from appliance.dicom import pynetdicom_patches
        pynetdicom_patches.install()
    outs = [{"ok": 0, "failed": 0, "lost": 0, "lost_in_sender": 0, "errors": []} for _ in range(senders)]
    threads = [threading.Thread(target=_pynetdicom_sender, args=(port, aet, f"PYND{i}", each, plain, outs[i]))
               for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = {k: sum(o[k] for o in outs) for k in ("ok", "failed", "lost", "lost_in_sender")}
    total["errors"] = [e for o in outs for e in o["errors"]][:20]
    print(json.dumps(total), flush=True)


# ------------------------------------------------------------------------------ DCMTK senders

_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def _dcmtk_sender(port: int, aet: str, name: str, count: int, folder: Path, result: LoadResult,
                  lock: threading.Lock) -> None:
    """storescu associations of DCMTK_PASS files each, the files rewritten with new UIDs before each."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = template(name)
    folder.mkdir(parents=True, exist_ok=True)
    left = count
    while left > 0:
        n = min(DCMTK_PASS, left)
        for old in folder.glob("*.dcm"):
            old.unlink()
        for i in range(n):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = i + 1
            pydicom.dcmwrite(folder / f"{i:05d}.dcm", ds, enforce_file_format=True)
        r = subprocess.run([STORESCU, "-v", "-td", str(DIMSE_TIMEOUT), "-ta", str(DIMSE_TIMEOUT), "-aet", name,
                            "-aec", aet, "+sd", "127.0.0.1", str(port), str(folder)],
                           capture_output=True, text=True, timeout=DIMSE_TIMEOUT * (n + 5))
        statuses = _RESPONSE.findall(r.stdout + r.stderr)
        ok = sum(s == "Success" for s in statuses)
        with lock:
            result.answered_ok += ok
            result.dcmtk_ok += ok
            result.answered_failed += len(statuses) - ok
            result.lost += n - len(statuses)      # sent and never answered (storescu stops at the first)
            if r.returncode != 0 or len(statuses) != n:
                result.errors.append(f"{name}: storescu exit {r.returncode}, {len(statuses)} answers of {n}: "
                                     f"{(r.stderr or r.stdout)[-300:]}")
        left -= n


# ------------------------------------------------------------------------------ C-FIND alongside

def _find_loop(port: int, aet: str, stop: threading.Event, result: LoadResult) -> None:
    """Study-level C-FIND over one association, again and again until ``stop``: each query's time."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    from appliance.dicom import pynetdicom_patches
    pynetdicom_patches.install()
    ae = AE(ae_title="SOAKFIND")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.dimse_timeout = ae.acse_timeout = DIMSE_TIMEOUT
    handlers = [(evt.EVT_CONN_OPEN, lambda e: pynetdicom_patches.speed_up(e.assoc.dul.socket))]
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyDescription",
                    "ModalitiesInStudy", "NumberOfStudyRelatedInstances"):
        setattr(query, keyword, "")
    assoc = None
    while not stop.is_set():
        if assoc is None or not assoc.is_established:
            assoc = ae.associate("127.0.0.1", port, ae_title=aet, evt_handlers=handlers)
            if not assoc.is_established:
                result.find_failed += 1
                stop.wait(0.5)
                continue
        t0 = time.perf_counter()
        final = None
        for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            final = status
        if final is None or "Status" not in final or final.Status != 0:
            result.find_failed += 1
            assoc = None
            continue
        result.find_latencies.append(time.perf_counter() - t0)
        stop.wait(0.05)
    if assoc is not None and assoc.is_established:
        assoc.release()


# ------------------------------------------------------------------------------ the whole load

def run_load(port: int, aet: str, work: Path, *, pynetdicom_assocs: int, dcmtk_assocs: int, stores: int,
             plain: bool = False, server=None, find: bool = False, sample_every: float = 1.0) -> LoadResult:
    """``stores`` C-STOREs in all, shared by ``pynetdicom_assocs`` pynetdicom associations and
    ``dcmtk_assocs`` storescu processes, at once. With ``server`` (a tests.helpers.Server), its
    VmRSS and indexed count are sampled, and with ``find`` a C-FIND loop runs alongside."""
    result = LoadResult()
    senders = pynetdicom_assocs + dcmtk_assocs
    each = stores // senders
    lock = threading.Lock()
    t0 = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "tests.soakload", str(port), aet, str(pynetdicom_assocs),
                              str(each), "plain" if plain else "patched"],
                             stdout=subprocess.PIPE, text=True) if pynetdicom_assocs else None
    threads = [threading.Thread(target=_dcmtk_sender, args=(port, aet, f"DCMTK{i}", each, work / f"dcmtk{i}",
                                                            result, lock)) for i in range(dcmtk_assocs)]
    stop = threading.Event()
    if find:
        threads.append(threading.Thread(target=_find_loop, args=(port, aet, stop, result)))
    for t in threads:
        t.start()

    def sample() -> None:
        while not stop.is_set():
            try:
                count = server.get_json("/statistics")["CountInstances"]
                result.samples.append((time.monotonic() - t0, count, vm_rss_mb(server.proc.pid)))
            except Exception as e:  # noqa: BLE001 - a missed sample is reported, not fatal
                result.errors.append(f"sample: {e}")
            stop.wait(sample_every)

    sampler = threading.Thread(target=sample) if server is not None else None
    if sampler:
        sampler.start()
    if child is not None:
        out, _ = child.communicate()
        counts = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        if child.returncode != 0 or not counts:
            result.errors.append(f"pynetdicom senders exited {child.returncode}")
        result.answered_ok += counts.get("ok", 0)
        result.pynetdicom_ok += counts.get("ok", 0)
        result.answered_failed += counts.get("failed", 0)
        result.lost += counts.get("lost", 0)
        result.lost_in_sender += counts.get("lost_in_sender", 0)
        result.errors += counts.get("errors", [])
    for t in threads[:dcmtk_assocs]:
        t.join()
    result.seconds = time.monotonic() - t0
    stop.set()
    for t in threads[dcmtk_assocs:]:
        t.join()
    if sampler:
        sampler.join()
        count = server.get_json("/statistics")["CountInstances"]
        result.samples.append((time.monotonic() - t0, count, vm_rss_mb(server.proc.pid)))
    return result


if __name__ == "__main__":
    _pynetdicom_child(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "plain")
