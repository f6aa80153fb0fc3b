"""What every SQL store stands on: the connection pool's use, the transaction with its
retries and its StoreUnavailable (SqlBase._transaction, _read, _fetchall), the sizes shared by
both interfaces' code (POOL_SIZE, BATCH_ROWS), and the one write both make (_insert_torrent:
a registration, by the catalog or by an announce in whitelist mode `open`).

A store (sqlite.py, mysql.py) supplies the connection, its Dialect (statements.py) and which
errors mean "the connection is gone, reconnect and retry". announce.py, catalog.py and
migration.py build on SqlBase, each a mixin over it; sql.py composes them into SqlStore.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from ..limits import OPEN_MAX_TORRENTS  # noqa: F401 - the stores import their default from here
from ..model import ClientError, StoreUnavailable, Torrent
from .pool import ConnectionPool
from .statements import Dialect, Statements

T = TypeVar("T")

# Connections a store keeps per process (pool.py), unless its opener says otherwise: enough
# for a store used by a thread or two (the CLI; a flush thread and a refresh). The requests'
# store has live.DB_WAITERS (wsgi.py): no more request threads than that call it at once.
POOL_SIZE = 2
BATCH_ROWS = 500  # rows per statement in a batch write
# A transaction that lost a conflict (a deadlock; on Galera, certification against another
# node's commit) is run again whole after a jittered wait, at most CONFLICT_RETRIES times:
# two writers that collide once retry at different moments and rarely collide again. The
# waits double from CONFLICT_BACKOFF_SECONDS up to CONFLICT_BACKOFF_MAX_SECONDS, each a random
# part of that ("full jitter"): 1.3 s at the most in all.
CONFLICT_RETRIES = 10
CONFLICT_BACKOFF_SECONDS = 0.01
CONFLICT_BACKOFF_MAX_SECONDS = 0.2


class Connection(NamedTuple):
    """A database connection and the one cursor it keeps for its life."""

    conn: Any
    cursor: Any


class SqlBase:
    """The state and the connection machinery every part of SqlStore uses."""

    dialect = Dialect
    # Transactions run again on a fresh connection after a transient error: one per server
    # the store may connect to (MysqlStore may have several), so each may be tried.
    servers = 1

    def __init__(self, peer_timeout: int, register_unknown: bool, wait_seconds: float, open_max_torrents: int,
                 pool_size: int):
        self.peer_timeout = peer_timeout
        self.register_unknown = register_unknown
        self.wait_seconds = wait_seconds  # the longest a store call waits for the database
        self.open_max_torrents = open_max_torrents
        self.sql = Statements(self.dialect)
        self._torrents_counted = (0, float("-inf"))  # (count, time.monotonic() then)
        self._pool: ConnectionPool[Connection] = ConnectionPool(self._open, self._close_quietly, pool_size,
                                                                wait_seconds, self._keep)
        # For the metrics (metrics.py): statements and connections that failed, and of them
        # the transactions that lost a conflict (run again). Counted under a lock: a rare path.
        self.errors = 0
        self.conflicts = 0
        self._counting = threading.Lock()

    @property
    def reconnects(self) -> int:
        """Connections made again after one failed (metrics.py)."""
        return self._pool.reconnects

    # -- connection handling: subclasses implement these four --------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _is_transient(self, exc: BaseException) -> bool:
        """True when retrying the transaction once on a new connection may succeed."""
        raise NotImplementedError

    def _is_unavailable(self, exc: BaseException) -> bool:
        """True when the error says the database cannot be used now (gone, or a wait timed
        out), not that something in the transaction is wrong."""
        raise NotImplementedError

    def _begin(self, conn: Any, read_only: bool) -> None:
        raise NotImplementedError

    def _end(self, conn: Any, read_only: bool) -> None:
        if not read_only:
            conn.commit()

    def _is_lost(self, exc: BaseException) -> bool:
        """True when the error says the connection itself is gone (the pool's idle ones are
        then closed too). A database with no server to lose (SQLite) keeps this."""
        return False

    def _is_conflict(self, exc: BaseException) -> bool:
        """True when the transaction lost to another writer and was rolled back: running it
        again whole, after a wait, will likely succeed (CONFLICT_RETRIES)."""
        return False

    def _failed_on(self, connection: Connection, exc: BaseException) -> None:
        """A transaction failed on this connection with this error (it is closed next): a
        store with several servers may pass over the connection's server for a while."""

    def _keep(self, connection: Connection) -> bool:
        """Whether a connection whose transaction ended is lent again, or closed (a store
        with several servers closes one on a fallback server when the one it prefers may be
        back)."""
        return True

    def _open(self) -> Connection:
        # One cursor for the connection's life: the MySQL connector pings the server (a
        # round trip) every time a cursor is made.
        conn = self._connect()
        return Connection(conn, conn.cursor())

    def _disconnect(self, conn: Any) -> None:
        conn.close()

    def _close_quietly(self, connection: Connection) -> None:
        # The cursor first: a statement still open keeps a closed SQLite connection (its
        # transaction, its WAL) alive until the cursor is collected.
        for close in (connection.cursor.close, lambda: self._disconnect(connection.conn)):
            try:
                close()
            except Exception:  # closing a dead connection may fail; it is gone either way
                pass

    def close(self) -> None:
        self._pool.close()

    def connection_type(self) -> str:
        connection = self._pool.borrow()
        self._pool.give_back(connection)
        return type(connection.conn).__name__

    def _read(self, work: Callable[[Any], T]) -> T:
        """Reads, each statement on its own (autocommit: no BEGIN or COMMIT round trips,
        which cost a request more than the one SELECT it needs). Every read the announce
        path makes is one statement; a large swarm's window takes two or three more, and
        a sample needs no snapshot. They run beside the writer."""
        return self._transaction(work, read_only=True)

    def _transaction(self, work: Callable[[Any], T], read_only: bool = False) -> T:
        """Run `work(cursor)` in one transaction, on a connection borrowed from the pool for
        it. On a dropped connection or a racing insert, start over once on another (a fresh
        one, if the connection was lost; once per server, with several); on a lost conflict, start over after a jittered
        wait, up to CONFLICT_RETRIES times. Every caller's work is idempotent when repeated
        whole (completions are guarded per peer). `work` never calls the store: a
        transaction holds one connection, never two.

        Raises StoreUnavailable when the database cannot be used now: no connection can be
        made (not retried: it would only wait again), every connection stayed lent for
        wait_seconds, or the error says so, after the retries. Any other error is raised as
        it is: something in the work is wrong."""
        retries, conflicts = 0, 0
        while True:
            try:
                connection = self._pool.borrow()
            except StoreUnavailable:
                raise
            except Exception as exc:
                self._failed()
                raise StoreUnavailable(f"cannot connect to the database: {exc}") from exc
            conn, cursor = connection
            try:
                self._begin(conn, read_only)
                result = work(cursor)
                self._end(conn, read_only)
            except ClientError:
                self._roll_back(connection)
                raise
            except BaseException as exc:  # not only Exception: a connection mid-transaction is never lent again
                if isinstance(exc, Exception) and self._is_conflict(exc) and conflicts < CONFLICT_RETRIES:
                    self._roll_back(connection)  # the server rolled it back; the connection is sound
                    conflicts += 1
                    self._failed(conflict=True)
                    time.sleep(random.uniform(0, min(CONFLICT_BACKOFF_MAX_SECONDS,
                                                     CONFLICT_BACKOFF_SECONDS * 2 ** (conflicts - 1))))
                    continue
                self._failed_on(connection, exc)
                self._pool.discard(connection, self._is_lost(exc))
                if not isinstance(exc, Exception):
                    raise
                self._failed()
                if retries < self.servers and self._is_transient(exc):
                    retries += 1
                    continue
                if self._is_unavailable(exc):
                    raise StoreUnavailable(f"the database is unavailable: {exc}") from exc
                raise
            self._pool.give_back(connection)
            return result

    def _roll_back(self, connection: Connection) -> None:
        """End a failed transaction and lend its connection again (closed if that fails)."""
        try:
            connection.conn.rollback()
        except Exception:
            self._pool.discard(connection, lost=True)
        else:
            self._pool.give_back(connection)

    def _failed(self, conflict: bool = False) -> None:
        with self._counting:
            self.errors += 1
            self.conflicts += conflict


    def _fetchall(self, statement: str, args: tuple = ()) -> list[tuple]:
        def work(cur: Any) -> list[tuple]:
            cur.execute(statement, args)
            return cur.fetchall()

        return self._read(work)

    def _insert_torrent(self, cur: Any, torrent: Torrent, now: int) -> int:
        cur.execute(
            self.sql.INSERT_TORRENT,
            (torrent.name, torrent.size, torrent.path, now, torrent.file_size, torrent.file_mtime,
             torrent.info_sha256),
        )
        torrent_id = cur.lastrowid
        for info_hash in torrent.info_hashes:
            cur.execute(self.sql.INSERT_HASH, (info_hash, torrent_id))
        return torrent_id
