"""A store's database connections: at most `size` per process, each lent to one transaction.

Why not a connection per thread: under mod_wsgi's embedded mode every Apache worker thread
runs the tracker (2 children x 64 threads, and more under the MPM's defaults), and a
connection per thread was a MariaDB connection per Apache thread (issue 13: max_connections
151 reached, 69 failed answers in 8 s). Most announces are answered from memory; the calls
that reach the database are few at a time (live.StoreGate lets DB_WAITERS request threads
wait for it at once; the flush thread and the refresh use a store of their own), so a few
connections serve a process whatever its thread count, and the database sees
processes x pool size, which the README's max_connections formula counts.

Connections stay open between transactions, as the per-thread ones did (no connect per
request). The most recently returned is lent first, so a quiet process keeps using one warm
connection. One that failed is closed, not returned; when the failure says the connection
was lost (a restart, wait_timeout), the idle ones are closed too, since they are likely lost
as well, so the store's one retry runs on a fresh connection.

Why never more than `size` open: a connection is made only by a borrower that holds one of
the `size` slots and found no idle connection. Then every open connection is lent to another
slot holder, and each other holder has at most one (lent, or being made), so with the new
one there are at most as many as slots held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from ..model import TIMEOUT, StoreUnavailable

C = TypeVar("C")


class ConnectionPool(Generic[C]):
    """Thread-safe. `connect` makes a connection (raising what the driver raises);
    `disconnect` closes one and never raises; `keep` says whether one given back is lent
    again, or closed (its slot freed: the next borrower connects anew)."""

    def __init__(self, connect: Callable[[], C], disconnect: Callable[[C], None], size: int,
                 wait_seconds: float, keep: Callable[[C], bool] = lambda conn: True):
        if size < 1:
            raise ValueError(f"a store's pool needs at least one connection, not {size}")
        self.size = size
        self.wait_seconds = wait_seconds  # the longest a borrower waits for a free slot
        self._connect, self._disconnect, self._keep = connect, disconnect, keep
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[C] = []  # a stack: the most recently returned on top
        self._lock = threading.Lock()  # guards _idle, _lost, reconnects
        self._lost = 0  # connections closed after a failure and not made again yet
        self.reconnects = 0  # connections made to replace one that failed (metrics.py)

    def borrow(self) -> C:
        """A connection for one transaction, given back with give_back or discard. Raises
        StoreUnavailable when every slot stays taken for wait_seconds, and whatever
        `connect` raises (the slot is free again)."""
        if not self._slots.acquire(timeout=self.wait_seconds):
            raise StoreUnavailable(f"all {self.size} database connections of this process were busy for "
                                   f"{self.wait_seconds} s", TIMEOUT)
        with self._lock:
            if self._idle:
                return self._idle.pop()
            replacing = self._lost > 0
            self._lost -= replacing
        try:
            conn = self._connect()
        except BaseException:
            with self._lock:
                self._lost += replacing
            self._slots.release()
            raise
        if replacing:
            with self._lock:
                self.reconnects += 1
        return conn

    def give_back(self, conn: C) -> None:
        """A connection whose transaction ended (committed or rolled back): lent again,
        unless `keep` says otherwise."""
        if self._keep(conn):
            with self._lock:
                self._idle.append(conn)
        else:
            self._disconnect(conn)
        self._slots.release()

    def discard(self, conn: C, lost: bool) -> None:
        """A connection that failed: closed. `lost`: the connection itself was lost (not a
        statement refused), so the idle ones, older than it, are closed too."""
        with self._lock:
            self._lost += 1
            idle, self._idle = (self._idle, []) if lost else ([], self._idle)
        try:
            for other in (conn, *idle):
                self._disconnect(other)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections (a lent one is kept by its borrower and returned). The
        pool stays usable: the next borrower connects again."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._disconnect(conn)
