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

A database outage (model.StoreUnavailable) is logged as one line, not a traceback: its cause
and the setting to fix are what the admin needs, and the traceback of a refused login or a
closed port is the store's own code every time. Refusals a client can repeat at will (a
wrong refresh secret) go through `notice`: a warning line, then counts, the same way.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from .model import MAX_DETAIL_CHARS, StoreUnavailable

SUMMARY_INTERVAL = 60.0  # seconds: at most one summary line per kind this often
FAULTS = " faults"  # what a fault kind's summary calls them: "3 more database faults"


@dataclass
class _Kind:
    last_line_at: float  # when this kind last wrote a line (its traceback or a summary)
    log: Callable[[str], None]  # where its lines go: the fault log's `log`, or `warn` for notices
    noun: str  # what the summary counts: "database faults", "refused web refreshes"
    pending: int = 0  # faults since that line
    last: str = ""  # the latest of them, one line


class FaultLog:
    """Where the code reports faults it answered for; thread-safe (daemon threads share one).
    `log` writes one message, a logger's `error` in the tracker: each is a fault of ours;
    `warn` (by default `log`) writes a notice's lines, a logger's `warning`."""

    def __init__(self, log: Callable[[str], None], interval: float = SUMMARY_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, warn: Callable[[str], None] | None = None):
        self._log = log
        self._warn = warn or log
        self._interval = interval
        self._clock = clock
        self._kinds: dict[str, _Kind] = {}
        self._lock = threading.Lock()

    def fault(self, kind: str, message: str) -> None:
        """Record the exception being handled; call it inside an `except` block. A database
        outage is one line (its cause, model.StoreUnavailable.explain); anything else comes
        with its traceback."""
        exc = sys.exc_info()[1]
        outage = _outage(exc)
        first = f"{message} {outage.explain()}" if outage is not None else None
        if self._record(kind, kind + FAULTS, first, _one_line(exc), self._log) and first is None:
            # Formatted outside the lock: reading source lines for a traceback must not hold
            # up the other threads' counting.
            self._log(f"{message}\n{traceback.format_exc().rstrip()}")

    def notice(self, kind: str, line: str) -> None:
        """A warning a client can make happen at will (a refused web refresh): the first
        line in full, then counts, as for faults. `kind` names them in the summary."""
        self._record(kind, kind, line, line, self._warn)

    def _record(self, kind: str, noun: str, first_line: str | None, last: str, log: Callable[[str], None]) -> bool:
        """Count one of `kind`; write `first_line` if it is the first, or a summary that is
        due. True if it is the first (and `first_line` None: the caller writes it)."""
        now = self._clock()
        with self._lock:
            state = self._kinds.get(kind)
            first = state is None or (state.pending == 0 and now - state.last_line_at >= self._interval)
            if first:
                self._kinds[kind] = _Kind(now, log, noun)
                line = first_line
            else:
                state.pending += 1
                state.last = last
                line = self._due_summary(state, now)
        # Written outside the lock: a slow error log must not hold up the others' counting.
        if line is not None:
            log(line)
        return first

    def flush_summaries(self) -> None:
        """Log every count whose interval has passed, and forget kinds that went quiet."""
        now = self._clock()
        with self._lock:
            lines = [(state.log, line) for state in self._kinds.values() if (line := self._due_summary(state, now))]
            quiet = [kind for kind, state in self._kinds.items()
                     if state.pending == 0 and now - state.last_line_at >= self._interval]
            for kind in quiet:
                del self._kinds[kind]
        for log, line in lines:
            log(line)

    def _due_summary(self, state: _Kind, now: float) -> str | None:
        elapsed = now - state.last_line_at
        if state.pending == 0 or elapsed < self._interval:
            return None
        line = f"{state.pending} more {state.noun} in the last {elapsed:.0f} s (last: {state.last})"
        state.last_line_at, state.pending, state.last = now, 0, ""
        return line


def _outage(exc: BaseException | None) -> StoreUnavailable | None:
    """The database outage an exception is or was raised from (live.py sheds a request
    `from` one), if any."""
    for candidate in (exc, getattr(exc, "__cause__", None)):
        if isinstance(candidate, StoreUnavailable):
            return candidate
    return None


def _one_line(exc: BaseException | None) -> str:
    text = " ".join(str(exc).split()) if exc is not None else ""
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return detail if len(detail) <= MAX_DETAIL_CHARS else detail[:MAX_DETAIL_CHARS - 3] + "..."
