"""The audit trail: every teacher action and every refused attempt, from the web and DICOM.

To the journal (logger ``pipacs.audit``, with the client address), and the recent ones kept
for the teacher's page. Recorded from the event loop and from association threads alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

audit_log = logging.getLogger("pipacs.audit")

AUDIT_KEPT = 500                      # recent events shown on the teacher's page


@dataclass
class AuditEvent:
    time: float
    address: str
    user: str
    action: str
    outcome: str
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"Time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)), "Address": self.address,
                "User": self.user, "Action": self.action, "Outcome": self.outcome, "Detail": self.detail}


@dataclass
class Audit:
    """Every teacher action and every refused attempt: to the journal (``pipacs.audit``), and
    the recent ones kept for the teacher's page."""
    kept: int = AUDIT_KEPT
    events: deque[AuditEvent] = field(init=False)

    def __post_init__(self) -> None:
        self.events = deque(maxlen=self.kept)
        self._lock = threading.Lock()

    def record(self, address: str, user: str, action: str, outcome: str, detail: str = "") -> None:
        event = AuditEvent(time.time(), address, user, action, outcome, detail[:200])
        with self._lock:
            self.events.append(event)
        level = logging.INFO if outcome == "done" else logging.WARNING
        audit_log.log(level, "%s %s by %s from %s%s", action, outcome, user or "(no user)", address,
                      f": {event.detail}" if event.detail else "")

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            events = list(self.events)[-limit:]
        return [e.as_json() for e in events][::-1]
