"""An HTTP client of the appliance's own REST API, for commands that run beside the service.

``pipacs import`` sends its files through the running appliance (``POST /instances``), so
there is one writer of the storage whoever imports; this is how it reaches it. Plain
``http.client`` on one kept-alive connection: a command, not an event loop.
"""

from __future__ import annotations

import http.client
import json
import os
from typing import Any

from aiohttp import BasicAuth

from .accounts import read_local_token
from .config import Settings

__all__ = ["ApplianceClient", "default_target"]


class ApplianceClient:
    """The running appliance at ``host:port``, with HTTP Basic credentials when it asks for them."""

    def __init__(self, host: str, port: int, user: str | None = None, password: str | None = None,
                 timeout: float = 120, local_token: str | None = None):
        self.host, self.port, self.timeout = host, port, timeout
        self.headers: dict[str, str] = {}
        if local_token and not user:
            self.headers["X-Pipacs-Local-Token"] = local_token
        if user:
            try:
                self.headers["Authorization"] = BasicAuth(user, password or "", encoding="utf-8").encode()
            except ValueError as e:   # a colon in the user name: HTTP Basic cannot carry it
                raise ConnectionError(f"cannot log in as {user!r}: {e}") from None
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the kept-alive connection (a later request opens a new one)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def check(self) -> None:
        """Raise ConnectionError, with what to do, unless the appliance answers and lets us in."""
        try:
            status, _ = self.request("GET", "/system")
        except OSError as e:
            raise ConnectionError(f"the appliance is not answering at http://{self.host}:{self.port} ({e}); "
                                  "start it (make run, or systemctl start pipacs) and try again") from None
        if status == 401:
            raise ConnectionError("the appliance asks for a password: give --user and --password")
        if status != 200:
            raise ConnectionError(f"the appliance answered {status} to GET /system")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """Status and body; a connection the appliance closed meanwhile is opened again once."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def import_bundle(self, path: str | os.PathLike, anonymize: bool = False) -> tuple[int, Any]:
        """POST a case bundle file to /cases/import (``?anonymize=1``: its files that are not
        de-identified are), streamed from the disk: (status, the JSON answer)."""
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            for attempt in (1, 2):
                f.seek(0)
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=max(self.timeout, 3600))
                try:
                    self.conn.request("POST", "/cases/import?anonymize=1" if anonymize else "/cases/import", body=f,
                                      headers={**self.headers, "Content-Type": "application/zip",
                                               "Content-Length": str(size)})
                    r = self.conn.getresponse()
                    status, body = r.status, r.read()
                    break
                except (http.client.HTTPException, ConnectionError):
                    self.close()
                    if attempt == 2:
                        raise
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"Message": body[:200].decode(errors="replace")}

    def store(self, data: bytes, anonymize: bool = False) -> tuple[str, str]:
        """POST /instances: ("Success" | "AlreadyStored" | "NotDicom" | "Rejected", message)."""
        path = "/instances?anonymize=1" if anonymize else "/instances"
        status, body = self.request("POST", path, data, {"Content-Type": "application/dicom"})
        try:
            answer: Any = json.loads(body)
        except ValueError:
            answer = {}
        if status == 200:
            return answer.get("Status", "Success"), ""
        message = answer.get("Message") or answer.get("Details") or body[:200].decode(errors="replace")
        if status == 400 and "not a DICOM file" in message:
            return "NotDicom", message
        return "Rejected", f"{status}: {message}"


def default_target(settings: Settings) -> tuple[str, int, str | None, str | None, str | None]:
    """Loopback, the configured HTTP port, and how to call as the teacher when that is needed: the
    service's local token (readable on the board by root and the service), or the first
    registered user."""
    user = password = token = None
    if settings["AuthenticationEnabled"]:
        token = read_local_token(settings.index_dir)
        if token is None and settings["RegisteredUsers"]:
            user, password = next(iter(settings["RegisteredUsers"].items()))
    host = os.environ.get("PIPACS_IMPORT_HOST", "127.0.0.1")
    return host, settings["HttpPort"], user, password, token
