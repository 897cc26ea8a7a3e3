"""A real Orthanc (Debian package) on loopback ports, for comparing answers and for benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from .helpers import Server, free_port


class Orthanc(Server):
    def __init__(self, workdir: Path, config: dict | None = None, tcp_nodelay: bool = True):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        cfg = {"Name": "REFERENCE", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
               "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
               "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
               "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False, "StableAge": 60,
               "HttpDescribeErrors": True}
        cfg.update(config or {})
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(cfg))
        self.env = dict(os.environ)
        if tcp_nodelay:
            self.env["TCP_NODELAY"] = "1"
        self.host = "127.0.0.1"
        self.proc = None
        self.lines = []

    def start(self, timeout: float = 30) -> Orthanc:
        exe = shutil.which("Orthanc")
        self.logfile = open(self.workdir / "orthanc.log", "w")  # noqa: SIM115 - open while Orthanc runs; stop() closes it
        self.proc = subprocess.Popen([exe, str(self.config_path)], stdout=self.logfile, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url("/system"), timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start: {(self.workdir / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.1)

    @property
    def log(self) -> str:
        return (self.workdir / "orthanc.log").read_text()

    def stop(self, timeout: float = 30) -> int:
        rc = super().stop(timeout)
        if getattr(self, "logfile", None):
            self.logfile.close()
        return rc
