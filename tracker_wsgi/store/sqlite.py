"""The embedded store: stdlib sqlite3 in WAL mode, so the tracker runs with no database
server. Good for one host (several Apache daemon processes share the file); hosts that
share a tracker need MySQL/MariaDB."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from typing import Any

from ..model import StoreUnavailable
from .schema import SchemaChange, sqlite_statements
from .sql import SqlStore
from .sqlbase import OPEN_MAX_TORRENTS, POOL_SIZE
from .statements import MAX_TOTAL_BYTES, Dialect

# How often a writer waiting for another process's write lock tries again: first soon (a
# batch holds it for milliseconds), then less often. flock cannot wait with a time limit.
WRITER_POLL_SECONDS = (0.001, 0.016)


_PEER_COLUMNS = (
    "torrent_id, peer_id, ip, port, peer_key, state, bytes_left, uploaded, downloaded, last_seen, peer_rank, stamp, "
    "changed"
)
_PEER_ROW = "(" + ", ".join("?" * 13) + ")"


class SqliteDialect(Dialect):
    least = "MIN"  # MIN with two arguments is SQLite's LEAST
    total = "TOTAL"  # a float sum: SUM of integers raises "integer overflow"
    tables = "SELECT name FROM sqlite_master WHERE type = 'table'"
    # The schema lock: create_tables migrates in a write transaction (BEGIN IMMEDIATE, and
    # the writer file's flock across processes), and SQLite's DDL is transactional.
    ddl = staticmethod(sqlite_statements)

    @staticmethod
    def pairs(n: int) -> str:
        return "VALUES " + ", ".join(["(?, ?)"] * n)

    @staticmethod
    def upsert_peers(n: int) -> str:
        return (
            f"INSERT INTO peers ({_PEER_COLUMNS}) VALUES {', '.join([_PEER_ROW] * n)} "
            "ON CONFLICT (torrent_id, peer_id) DO UPDATE SET ip = excluded.ip, port = excluded.port, "
            "peer_key = COALESCE(excluded.peer_key, peers.peer_key), state = excluded.state, "
            "bytes_left = excluded.bytes_left, uploaded = excluded.uploaded, "
            "downloaded = excluded.downloaded, last_seen = excluded.last_seen, stamp = excluded.stamp, "
            "changed = excluded.changed WHERE excluded.stamp >= peers.stamp"
        )

    add_counts = (
        "INSERT INTO swarm_counts (torrent_id, host, downloaded, transferred) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (torrent_id, host) DO UPDATE SET downloaded = downloaded + excluded.downloaded, "
        f"transferred = MIN(transferred + excluded.transferred, {MAX_TOTAL_BYTES})"
    )


class SqliteStore(SqlStore):
    dialect = SqliteDialect

    def __init__(self, url: str, peer_timeout: int, register_unknown: bool = False, wait_seconds: float = 30.0,
                 open_max_torrents: int = OPEN_MAX_TORRENTS, pool_size: int = POOL_SIZE):
        super().__init__(peer_timeout, register_unknown, wait_seconds, open_max_torrents, pool_size)
        path = url.removeprefix("sqlite://")
        if not os.path.isabs(path):
            raise ValueError(f"sqlite database path must be absolute: {url!r} (sqlite:///path/file.sqlite)")
        self.path = path
        self._writer = threading.Lock()
        self._writer_file = None  # opened on first use, kept for the process's life

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun explicitly (BEGIN IMMEDIATE takes the
        # write lock up front, so two announces never deadlock upgrading a read lock).
        # The busy timeout: how long a statement waits for a lock held outside the tracker's
        # own queue (below), e.g. by the sqlite3 shell.
        # check_same_thread=False: the pool lends a connection to one thread at a time, not
        # always the same one.
        conn = sqlite3.connect(self.path, timeout=self.wait_seconds, isolation_level=None, check_same_thread=False)
        self._use_wal(conn)
        # NORMAL in WAL mode survives any process being killed; only a power cut may lose
        # the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """WAL mode, which the file keeps once set. Setting it takes an exclusive lock and
        SQLite answers "database is locked" at once, without its busy handler, when other
        processes hold the file (several daemons starting together): try again until
        wait_seconds, as any other wait for the file."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _begin(self, conn: Any, read_only: bool) -> None:
        # A writer takes the write lock up front (BEGIN IMMEDIATE), so two never deadlock
        # upgrading a read lock; in WAL mode readers need no lock at all, and (SqlStore._read)
        # no transaction.
        if not read_only:
            conn.execute("BEGIN IMMEDIATE")

    def _read(self, work):
        return super()._transaction(work, read_only=True)

    def _transaction(self, work):
        # One writer at a time per file anyway: queue on locks of our own (a thread lock in
        # this process, flock across Apache's daemon processes) rather than in SQLite's busy
        # handler, which sleeps up to 100 ms between tries. Both waits end by wait_seconds.
        deadline = time.monotonic() + self.wait_seconds
        if not self._writer.acquire(timeout=self.wait_seconds):
            raise StoreUnavailable(f"{self.path}: another thread held the write lock for {self.wait_seconds} s")
        try:
            if self._writer_file is None:
                self._writer_file = open(self.path + "-writer", "a")
            self._lock_writer_file(deadline)
            try:
                return super()._transaction(work)
            finally:
                fcntl.flock(self._writer_file, fcntl.LOCK_UN)
        finally:
            self._writer.release()

    def _lock_writer_file(self, deadline: float) -> None:
        pause, longest = WRITER_POLL_SECONDS
        while True:
            try:
                fcntl.flock(self._writer_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreUnavailable(
                        f"{self.path}-writer: another process held the write lock for {self.wait_seconds} s"
                    ) from None
                time.sleep(min(pause, left))
                pause = min(2 * pause, longest)

    def _disconnect(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            # A cursor still referenced (a traceback holds the failed work's) keeps a closed
            # connection open, and with it its transaction and the write lock: end it first.
            try:
                conn.rollback()
            except sqlite3.Error:
                pass
        conn.close()

    def _is_transient(self, exc: BaseException) -> bool:
        # A racing insert. Not "database is locked": that comes after the busy timeout
        # has waited already.
        return isinstance(exc, sqlite3.IntegrityError)

    def _is_unavailable(self, exc: BaseException) -> bool:
        # Locked past the busy timeout, a disk or permission error, a missing table: the
        # database, not the statement's values (OverflowError, IntegrityError).
        return isinstance(exc, sqlite3.OperationalError)

    def create_tables(self) -> SchemaChange:
        # SQLite writes the database, its -wal and -shm files, and new ones beside them: all
        # must be writable by whoever runs the tracker, or every announce fails.
        directory = os.path.dirname(self.path)
        files = (self.path, self.path + "-wal", self.path + "-shm", self.path + "-writer")
        for path in (directory, *(p for p in files if os.path.exists(p))):
            if not os.access(path, os.W_OK):
                raise PermissionError(
                    f"{path} is missing or not writable by uid {os.geteuid()}: create the database's directory, give it "
                    "and files to the user the tracker runs as (Apache's www-data), and run "
                    "tracker-wsgi as that user"
                )
        return super().create_tables()
