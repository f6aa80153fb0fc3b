"""The request path's way to the database (StoreGate): a short wait, a few threads at a
time, and none for a while after it failed, so a hung database holds a few requests for a
moment, not every thread of a process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .model import FAILED, TIMEOUT, StoreUnavailable

DB_WAITERS = 8  # request threads (of mod_wsgi's 15) that may wait for the database at once
DB_QUEUE_SECONDS = 0.5  # how long a request waits for one of those slots (a busy moment, not a hang)
DB_AWAY_SECONDS = 1.0  # after the database failed, the request path leaves it alone this long,
# doubled at each failure in a row, up to this: a database back (a restart, a Galera cluster
# formed again) is used within seconds, a hung one costs a probe's short wait this often.
DB_AWAY_MAX_SECONDS = 4.0
T = TypeVar("T")


class StoreGate:
    """The request path's way to the database. At most DB_WAITERS threads wait for it at
    once; once it has failed, none does for DB_AWAY_SECONDS (doubling while it keeps
    failing), and then a single call tries it again. So a database that hangs holds a few
    requests for the store's short wait, not every thread: the rest answer from memory.
    Thread-safe; its races only let a second call try."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._slots = threading.BoundedSemaphore(DB_WAITERS)
        self._away_until = 0.0
        self._failures = 0  # in a row
        self._cause = FAILED  # the last failure's (StoreUnavailable.cause): what the calls it holds off say

    def call(self, call: Callable[..., T], *args: Any) -> T:
        now = self.clock()
        if now < self._away_until:
            # The cause of the failure that closed the gate, so whichever thread logs
            # first, its line names the real cause (issue 19).
            raise StoreUnavailable("it failed a moment ago", self._cause)
        if self._failures:  # this call tries it again; the others wait for its verdict
            self._away_until = now + DB_AWAY_SECONDS
        if not self._slots.acquire(timeout=DB_QUEUE_SECONDS):
            raise StoreUnavailable("every database slot is taken: the database is slow", TIMEOUT)
        try:
            result = call(*args)
        except StoreUnavailable as exc:
            self.failed(exc)
            raise
        finally:
            self._slots.release()
        self.works()
        return result

    def failed(self, outage: StoreUnavailable) -> None:
        self._cause = outage.cause
        self._failures += 1
        self._away_until = self.clock() + min(DB_AWAY_MAX_SECONDS, DB_AWAY_SECONDS * 2 ** (self._failures - 1))

    def works(self) -> None:
        if self._failures:
            self._failures, self._away_until = 0, 0.0
