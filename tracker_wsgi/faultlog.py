"""Faults logged at a bounded rate: the first traceback of each kind, then counts.

A database outage makes every request fail the same way; a traceback per request (~10 KB)
filled 20 MB of Apache's error log for 2,000 announces (issue 12). One traceback says what
broke; after it the admin needs only how often it keeps breaking.

Per kind (a small fixed set of names chosen by the code, never request data, so memory stays
bounded): the first fault is logged with its message and full traceback; later ones are
counted, and the count goes out as one summary line per interval, when the next fault of that
kind comes after the interval or when `flush_summaries` finds one due (a background thread
calls it every few seconds, so a count is not lost when the faults stop). A kind that stayed
quiet for a whole interval after its last line starts over: its next fault is a new outage,
logged in full.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

SUMMARY_INTERVAL = 60.0  # seconds: at most one summary line per kind this often
MAX_DETAIL_CHARS = 200  # the exception text in a summary line; a message may quote a whole SQL statement


@dataclass
class _Kind:
    last_line_at: float  # when this kind last wrote a line (its traceback or a summary)
    pending: int = 0  # faults since that line
    last: str = ""  # the latest of them, one line


class FaultLog:
    """Where the code reports faults it answered for; thread-safe (daemon threads share one).
    `log` writes one message, a logger's `error` in the tracker: each is a fault of ours."""

    def __init__(self, log: Callable[[str], None], interval: float = SUMMARY_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self._log = log
        self._interval = interval
        self._clock = clock
        self._kinds: dict[str, _Kind] = {}
        self._lock = threading.Lock()

    def fault(self, kind: str, message: str) -> None:
        """Record the exception being handled; call it inside an `except` block."""
        now = self._clock()
        last = _one_line(sys.exc_info()[1])
        with self._lock:
            state = self._kinds.get(kind)
            first = state is None or (state.pending == 0 and now - state.last_line_at >= self._interval)
            if first:
                self._kinds[kind] = _Kind(last_line_at=now)
                line = None
            else:
                state.pending += 1
                state.last = last
                line = self._due_summary(kind, state, now)
        # Formatted and written outside the lock: reading source lines for a traceback, or a
        # slow error log, must not hold up the other threads' counting.
        if first:
            line = f"{message}\n{traceback.format_exc().rstrip()}"
        if line is not None:
            self._log(line)

    def flush_summaries(self) -> None:
        """Log every count whose interval has passed, and forget kinds that went quiet."""
        now = self._clock()
        with self._lock:
            lines = [line for kind, state in self._kinds.items() if (line := self._due_summary(kind, state, now))]
            quiet = [kind for kind, state in self._kinds.items()
                     if state.pending == 0 and now - state.last_line_at >= self._interval]
            for kind in quiet:
                del self._kinds[kind]
        for line in lines:
            self._log(line)

    def _due_summary(self, kind: str, state: _Kind, now: float) -> str | None:
        elapsed = now - state.last_line_at
        if state.pending == 0 or elapsed < self._interval:
            return None
        line = f"{state.pending} more {kind} faults in the last {elapsed:.0f} s (last: {state.last})"
        state.last_line_at, state.pending, state.last = now, 0, ""
        return line


def _one_line(exc: BaseException | None) -> str:
    text = " ".join(str(exc).split()) if exc is not None else ""
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return detail if len(detail) <= MAX_DETAIL_CHARS else detail[:MAX_DETAIL_CHARS - 3] + "..."
