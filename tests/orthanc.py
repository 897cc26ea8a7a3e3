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

REFERENCE_NAME = "REFERENCE"
PORT_TRIES = 5     # Orthanc cannot take port 0: a free_port() number may be bound by another test first


class Orthanc(Server):
    def __init__(self, workdir: Path, config: dict | None = None, tcp_nodelay: bool = True):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        cfg = {"Name": REFERENCE_NAME, "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
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
        """Start Orthanc; when one of its ports was taken meanwhile (Orthanc exits saying so), again
        on new ports, up to PORT_TRIES times."""
        for _ in range(PORT_TRIES):
            if self._start_once(timeout):
                return self
            cfg = json.loads(self.config_path.read_text())
            self.http_port, self.dicom_port = cfg["HttpPort"], cfg["DicomPort"] = free_port(), free_port()
            self.config_path.write_text(json.dumps(cfg))
        raise RuntimeError(f"Orthanc did not start after {PORT_TRIES} tries: its ports were taken each time")

    def _start_once(self, timeout: float) -> bool:
        """True once Orthanc answers as itself; False when it exited because a port was in use."""
        exe = shutil.which("Orthanc")
        if getattr(self, "logfile", None):
            self.logfile.close()
        self.logfile = open(self.workdir / "orthanc.log", "w")  # noqa: SIM115 - open while Orthanc runs; stop() closes it
        self.proc = subprocess.Popen([exe, str(self.config_path)], stdout=self.logfile, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                if "already in use" in self.log:
                    return False
                raise RuntimeError(f"Orthanc did not start: {self.log[-2000:]}")
            try:
                with urllib.request.urlopen(self.url("/system"), timeout=1) as r:
                    # its own answer, not that of whatever else took the port
                    if r.status == 200 and json.loads(r.read()).get("Name") == REFERENCE_NAME:
                        return True
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start: {self.log[-2000:]}")
            time.sleep(0.1)

    @property
    def log(self) -> str:
        return (self.workdir / "orthanc.log").read_text()

    def stop(self, timeout: float = 30) -> int:
        rc = super().stop(timeout)
        if getattr(self, "logfile", None):
            self.logfile.close()
        return rc
