"""Refused connections (DICOM and HTTP) in the journal and the audit trail, at a bounded rate.

A device over its connection limit may retry thousands of times a second: one line per refusal
would fill the journal (and the teacher's page of recent events) with the same sentence. Each
address is reported on its first refusal in a window of REFUSAL_LOG_WINDOW seconds, at most
REFUSAL_LOG_ADDRESSES addresses per window; the refusals left out are counted and summed up in
one line when the next window begins.
"""

from __future__ import annotations

import logging
import threading
import time

from .audit import Audit

log = logging.getLogger("pipacs.audit")

REFUSAL_LOG_WINDOW = 60.0      # seconds: an address is reported at most once per window
REFUSAL_LOG_ADDRESSES = 20     # addresses reported per window; beyond, only counted


class RefusalReporter:
    """Records refusals of ``action`` (e.g. "DICOM connection") by address, rate-limited: in
    the audit trail (which writes the journal's line), or without one only in the journal.

    Called from the event loop and from pynetdicom's threads alike (hence the lock).
    """

    def __init__(self, audit: Audit | None, action: str, window: float = REFUSAL_LOG_WINDOW,
                 addresses: int = REFUSAL_LOG_ADDRESSES, logger: logging.Logger = log):
        self.audit = audit
        self.log = logger
        self.action = action
        self.window = window
        self.addresses = addresses
        self._lock = threading.Lock()
        self._window_end = 0.0
        self._reported: set[str] = set()
        self._left_out = 0
        self._left_out_from: set[str] = set()

    def refused(self, address: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            summary = None
            if now >= self._window_end:
                if self._left_out:
                    summary = (self._left_out, len(self._left_out_from))
                self._window_end = now + self.window
                self._reported.clear()
                self._left_out = 0
                self._left_out_from = set()
            report = address not in self._reported and len(self._reported) < self.addresses
            if report:
                self._reported.add(address)
            else:
                self._left_out += 1
                if len(self._left_out_from) < 10 * self.addresses:   # bounded: only for the count
                    self._left_out_from.add(address)
        if summary is not None:
            self.log.warning("%s: %d more refusals not logged in the last %.0f s (from %s%d addresses)", self.action,
                        summary[0], self.window, "at least " if summary[1] >= 10 * self.addresses else "",
                        summary[1])
        if report:
            detail = f"{reason} (further refusals of this address are not logged for {self.window:.0f} s)"
            if self.audit is not None:
                self.audit.record(address, "", self.action, "refused", detail)
            else:
                self.log.warning("%s from %s refused: %s", self.action, address, detail)
