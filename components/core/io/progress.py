"""Progress lines for long loops, so a step's log shows it is alive and how fast it goes."""

from __future__ import annotations

import logging
import time


class Progress:
    """Logs "<label>: done/total (rate per second)" at most every `interval` seconds (default
    10) and once when done reaches total."""

    def __init__(self, log: logging.Logger, label: str, total: int, interval: float = 10.0):
        self.log, self.label, self.total, self.interval = log, label, total, interval
        self.done = 0
        self.started = self.last = time.monotonic()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.interval or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            self.log.info("%s: %d/%d (%.1f/s)", self.label, self.done, self.total, rate)
