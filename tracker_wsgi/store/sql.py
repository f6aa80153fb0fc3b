"""What the SQLite and MySQL stores share: the queries' shape and the announce algorithm.

A subclass supplies the connection, the few statements whose syntax differs between the two
databases (its Dialect), and which errors mean "the connection is gone, reconnect and
retry". The shared statements (Statements) are written once, with `?` placeholders; each
store renders them for its database when it is made. Every value is a bound parameter.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

from .. import __version__
from ..limits import OPEN_MAX_TORRENTS  # noqa: F401 - the stores import their default from here
from ..model import (
    KEY_RULE_REFUSED,
    BatchResult,
    ClientError,
    PeerConflict,
    PeerState,
    PeerWrite,
    SetAside,
    StoredPeer,
    StoreUnavailable,
    SwarmSnapshot,
    SwarmStats,
    SwarmWritten,
    Torrent,
    TorrentReport,
    TrackerFull,
    UnknownTorrent,
)
from ..swarm import conflicts, finishes, swarm_stats
from . import schema
from .pool import ConnectionPool
from .schema import SchemaChange, SchemaError, describe

T = TypeVar("T")
log = logging.getLogger(__name__)
# peers.state of a tombstone: a stopped peer's row, kept until peer_timeout so that an older
# write landing later cannot bring the peer back. Never read into a swarm nor counted (the
# statements say `state < 3`).
GONE = 3

# Random peer ranks and window starts. ORDER BY RAND() would sort the whole swarm on every
# read (the original avoided it for the same reason); OFFSET would read up to it.
_rng = random.Random()


class Dialect:
    """Statements whose syntax differs between databases (subclasses override)."""

    # In the shared statements (Statements), `{least}(a, b)` is the smaller of two values
    # and `{total}(column)` an aggregate sum that never fails on overflow (SQLite's SUM
    # raises "integer overflow"; its TOTAL is a float); `?` is a bound value.
    least = "LEAST"
    total = "SUM"  # MySQL's SUM of integers is a DECIMAL: it cannot overflow
    placeholder = "?"  # the driver's paramstyle

    @classmethod
    def render(cls, statement: str) -> str:
        """A shared statement as this database runs it. (No statement has a `?` or a brace
        in a string literal.)"""
        return (statement.replace("{least}", cls.least).replace("{total}", cls.total)
                .replace("{cap}", str(MAX_TOTAL_BYTES)).replace("?", cls.placeholder))

    @classmethod
    def marks(cls, n: int) -> str:
        """n bound values, for `IN (...)`."""
        return ", ".join([cls.placeholder] * n)

    # Appended to a SELECT of torrent rows that a transaction will write, where writers run
    # concurrently (MySQL); SQLite's BEGIN IMMEDIATE already makes the writer the only one.
    lock_rows = ""
    # After `FROM peers` in a lookup of many (torrent_id, peer_id) pairs. MariaDB's range
    # optimizer weighs every index that starts with torrent_id for each pair, which for a
    # batch's 500 pairs costs twenty times the lookups themselves.
    by_primary_key = ""

    @staticmethod
    def pairs(n: int) -> str:
        """n (torrent_id, peer_id) pairs for `(torrent_id, peer_id) IN (...)`."""
        raise NotImplementedError

    @staticmethod
    def upsert_peers(n: int) -> str:
        """Insert n peers or update their rows; an older announce never overwrites a newer."""
        raise NotImplementedError

    # The names of this database's tables, one a row.
    tables = ""

    @staticmethod
    def ddl(statement: str) -> list[str]:
        """A statement of schema.sql or of a migration (MySQL's syntax) as this database runs it."""
        return [statement]

    @staticmethod
    def lock_schema(cur: Any, wait_seconds: float) -> None:
        """Take the one lock on changing the schema, held by this transaction's connection;
        raises StoreUnavailable if another holds it longer than wait_seconds."""

    @staticmethod
    def unlock_schema(cur: Any) -> None:
        """Give it back (a connection that closes gives it back too)."""


# Connections a store keeps per process (pool.py), unless its opener says otherwise: enough
# for a store used by a thread or two (the CLI; a flush thread and a refresh). The requests'
# store has live.DB_WAITERS (wsgi.py): no more request threads than that call it at once.
POOL_SIZE = 2
BATCH_ROWS = 500  # rows per statement in a batch write
# Every sum of what clients report (a torrent's bytes transferred, its peers' bytes left)
# saturates here: 2 EiB, 2048 peers at protocol.COUNTER_CAP. Two of them added still fit
# signed 64 bits, so a sum capped after each addition never overflows a column or a bind.
MAX_TOTAL_BYTES = 2**61
# Whitelist mode `open`: the torrents a store holds before it refuses to register more
# (ClientError(TRACKER_FULL)): limits.OPEN_MAX_TORRENTS, the config key's default.
# How old the torrent count a registration checks against may be: a flood of new hashes
# costs one COUNT(*) a second (10 ms at 100,000 torrents on MariaDB, 2 ms on SQLite), not
# one each; the count may run over by what other processes register meanwhile.
TORRENTS_RECOUNT_SECONDS = 1.0


def _conflicts(stored_ip: bytes, stored_key: bytes | None, write: PeerWrite) -> bool:
    """The key rule (swarm.conflicts) against a stored row (the drivers return bytearrays)."""
    return conflicts(bytes(stored_ip), None if stored_key is None else bytes(stored_key), write.ip, write.key)


def _as_the_host_knew(row: Sequence, write: PeerWrite) -> bool:
    """The stored row is the one the host's key rule passed from (PeerWrite.base)."""
    return write.base is not None and (bytes(row[0]), None if row[1] is None else bytes(row[1])) == write.base


def _pairs(writes: Sequence[tuple[int, PeerWrite]]) -> list:
    """(torrent_id, peer_id) of each write, flat, for `(torrent_id, peer_id) IN (...)`."""
    return [v for torrent_id, write in writes for v in (torrent_id, write.peer_id)]


def _rendered(text: Any, dialect: type[Dialect]) -> Any:
    """A statement (or a tuple or dict of them) as a database runs it (Dialect.render)."""
    if isinstance(text, str):
        return dialect.render(text)
    if isinstance(text, dict):
        return {k: _rendered(v, dialect) for k, v in text.items()}
    return tuple(_rendered(v, dialect) for v in text)


class Connection(NamedTuple):
    """A database connection and the one cursor it keeps for its life."""

    conn: Any
    cursor: Any


class Statements:
    """Every statement the stores share, one text each: `?` placeholders, and `{least}`,
    `{total}`, `{cap}` (see Dialect). A store renders them for its database once, when it is
    made (`Statements(dialect)`); a `{}` is a list filled in per call, with Dialect.marks or
    Dialect.pairs."""

    # A swarm's counters and live peers in one statement (one consistent read), by torrent
    # id or, for a swarm the process does not hold yet, by info hash.
    _SWARM = (
        "SELECT t.id, t.name, t.downloaded, t.seeders, t.leechers, t.partial_seeds, t.version, "
        "p.peer_id, p.ip, p.port, p.state, p.peer_key, p.bytes_left, p.last_seen "
    )
    _SWARM_PEERS_OF_T = "LEFT JOIN peers p ON p.torrent_id = t.id AND p.last_seen >= ? AND p.state < 3 "
    SWARM = _SWARM + "FROM torrents t " + _SWARM_PEERS_OF_T + "WHERE t.id = ? LIMIT ?"
    SWARM_BY_HASH = (
        _SWARM + "FROM info_hashes h JOIN torrents t ON t.id = h.torrent_id " + _SWARM_PEERS_OF_T
        + "WHERE h.info_hash = ? LIMIT ?"
    )
    FIND_TORRENT = "SELECT torrent_id FROM info_hashes WHERE info_hash = ?"
    # A large swarm's live peers: a window of random ranks (index by_rank), so a read costs
    # `limit` rows whatever the swarm's size.
    _SWARM_PEERS = (
        "SELECT peer_id, ip, port, state, peer_key, bytes_left, last_seen FROM peers "
        "WHERE torrent_id = ? AND last_seen >= ? AND state < 3"
    )
    SWARM_PEERS = {
        "from": _SWARM_PEERS + " AND peer_rank >= ? ORDER BY peer_rank LIMIT ?",
        "below": _SWARM_PEERS + " AND peer_rank < ? ORDER BY peer_rank LIMIT ?",
    }
    # Every transaction that writes peers locks their torrents' rows first, in id order:
    # writers of one swarm take turns, the recount at the end sees every row, and the
    # version a batch reads here is the one it moves on by one.
    LOCK_TORRENT = "SELECT downloaded FROM torrents WHERE id = ?"
    LOCK_TORRENTS = "SELECT id, version FROM torrents WHERE id IN ({}) ORDER BY id"
    LOCK_ALL_TORRENTS = "SELECT id FROM torrents ORDER BY id"
    FIND_PEER = "SELECT ip, peer_key, bytes_left FROM peers WHERE torrent_id = ? AND peer_id = ? AND state < 3"
    STORED_PEERS = (
        "SELECT torrent_id, peer_id, ip, peer_key, bytes_left, completed, state, stamp FROM peers{} "
        "WHERE (torrent_id, peer_id) IN ({})"
    )
    NEW_LIVES = "UPDATE peers SET completed = 0 WHERE (torrent_id, peer_id) IN ({})"
    ADD_TRANSFERRED = "UPDATE torrents SET transferred = {least}(transferred + ?, {cap}) WHERE id = ?"
    # Conditional, so two racing completions of one peer count once.
    MARK_COMPLETED = "UPDATE peers SET completed = 1 WHERE torrent_id = ? AND peer_id = ? AND completed = 0"
    COUNT_COMPLETION = "UPDATE torrents SET downloaded = downloaded + ? WHERE id = ?"
    # Swarm counts are recounted from the peers of every torrent a batch wrote; an index
    # range count (by_state_rank), once per batch, not once per announce.
    RECOUNT = (
        "UPDATE torrents SET version = version + 1, "
        "seeders = (SELECT COUNT(*) FROM peers WHERE peers.torrent_id = torrents.id AND state = 1), "
        "leechers = (SELECT COUNT(*) FROM peers WHERE peers.torrent_id = torrents.id AND state = 0), "
        "partial_seeds = (SELECT COUNT(*) FROM peers WHERE peers.torrent_id = torrents.id AND state = 2)"
    )
    VERSIONS = "SELECT id, version FROM torrents WHERE id IN ({})"
    WRITTEN = "SELECT id, version, leechers, seeders, partial_seeds, downloaded FROM torrents WHERE id IN ({})"
    INSERT_TORRENT = (
        "INSERT INTO torrents (name, size, path, added, file_size, file_mtime, info_sha256) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    INSERT_HASH = "INSERT INTO info_hashes (info_hash, torrent_id) VALUES (?, ?)"
    COUNT_TORRENTS = "SELECT COUNT(*) FROM torrents"
    SCRAPE = (
        "SELECT h.info_hash, t.name, t.downloaded, t.seeders, t.leechers, t.partial_seeds "
        "FROM info_hashes h JOIN torrents t ON t.id = h.torrent_id"
    )
    TORRENT_IDS = "SELECT DISTINCT torrent_id FROM info_hashes WHERE info_hash IN ({})"
    DELETE_TORRENT = (
        "DELETE FROM peers WHERE torrent_id = ?",
        "DELETE FROM info_hashes WHERE torrent_id = ?",
        "DELETE FROM torrents WHERE id = ?",
    )
    # Expired peers' downloads join the departed total before the peers go.
    EXPIRE = (
        "DELETE FROM peers WHERE last_seen < ? AND state = 3",  # tombstones: no peers, not counted
        "UPDATE torrents SET transferred = {least}(transferred + (SELECT COALESCE({total}(downloaded), 0) "
        "FROM peers WHERE peers.torrent_id = torrents.id AND peers.last_seen < ? AND peers.state < 3), {cap}) "
        "WHERE id IN (SELECT torrent_id FROM peers WHERE last_seen < ?)",
        "DELETE FROM peers WHERE last_seen < ?",
    )
    # Torrents announces registered (whitelist `open`: no file, so path ''; the directory's
    # have relative paths, hand-added ones absolute) that have no peers left, in id order.
    IDLE_OPEN_TORRENTS = (
        "SELECT id FROM torrents WHERE path = '' AND added < ? "
        "AND NOT EXISTS (SELECT 1 FROM peers WHERE peers.torrent_id = torrents.id AND peers.state < 3) ORDER BY id"
    )
    TORRENTS_WITH_PEERS = "SELECT DISTINCT torrent_id FROM peers WHERE torrent_id IN ({}) AND state < 3"
    DELETE_TORRENTS = (
        "DELETE FROM info_hashes WHERE torrent_id IN ({})",
        "DELETE FROM torrents WHERE id IN ({})",
    )
    TAKE_REFRESH_LOCK = (
        "UPDATE refresh_state SET lock_owner = ?, lock_until = ? WHERE id = 1 AND lock_until < ?"
    )
    LAST_REFRESH = "SELECT last_refresh FROM refresh_state WHERE id = 1"
    RELEASE_REFRESH_LOCK = "UPDATE refresh_state SET lock_until = 0 WHERE id = 1 AND lock_owner = ?"
    FINISH_REFRESH = (
        "UPDATE refresh_state SET lock_until = 0, last_refresh = ? WHERE id = 1 AND lock_owner = ?"
    )
    TORRENT_FILES = (
        "SELECT t.path, t.file_size, t.file_mtime, MIN(h.info_hash) FROM torrents t "
        "JOIN info_hashes h ON h.torrent_id = t.id WHERE t.path <> '' AND t.path NOT LIKE '/%' "
        "GROUP BY t.id, t.path, "
        "t.file_size, t.file_mtime"
    )
    UPDATE_TORRENT_FILE = (
        "UPDATE torrents SET path = ?, file_size = ?, file_mtime = ? "
        "WHERE id = (SELECT torrent_id FROM info_hashes WHERE info_hash = ?)"
    )
    SKIPPED_FILES = "SELECT path, file_size, file_mtime, reason FROM skipped_files"
    CLEAR_SKIPPED_FILES = "DELETE FROM skipped_files"
    INSERT_SKIPPED_FILE = (
        "INSERT INTO skipped_files (path_hash, path, file_size, file_mtime, reason) VALUES (?, ?, ?, ?, ?)"
    )
    REPORT_TORRENTS = (
        # The v1 hash: the one that is not the truncated SHA-256; a v2-only torrent has none.
        "SELECT t.id, COALESCE((SELECT MIN(h.info_hash) FROM info_hashes h WHERE h.torrent_id = t.id "
        "AND (t.info_sha256 IS NULL OR h.info_hash <> SUBSTR(t.info_sha256, 1, 20))), "
        "SUBSTR(t.info_sha256, 1, 20)), t.name, "
        "t.path, t.size, t.file_size, t.added, t.downloaded, t.transferred, t.last_transfer, "
        "t.last_done, t.info_sha256 FROM torrents t"
    )
    REPORT_PEERS = (
        "SELECT torrent_id, state, COUNT(*), {total}(bytes_left), {total}(downloaded) FROM peers "
        "WHERE last_seen >= ? AND state < 3 GROUP BY torrent_id, state"
    )
    # The rate snapshot: what the next refresh's "current average rate" is measured from.
    SNAPSHOT_RATES = (
        "UPDATE torrents SET last_done = downloaded, last_transfer = {least}(transferred + "
        "(SELECT COALESCE({total}(downloaded), 0) FROM peers WHERE peers.torrent_id = torrents.id "
        "AND peers.last_seen >= ? AND peers.state < 3), {cap})"
    )
    ADD_HISTORY = (
        "DELETE FROM history WHERE sampled_at = ? OR sampled_at < ?",
        "INSERT INTO history (sampled_at, seeds, leechers) VALUES (?, ?, ?)",
    )
    HISTORY = "SELECT sampled_at, seeds, leechers FROM history WHERE sampled_at >= ? ORDER BY sampled_at"

    # How schema_version records a creation or a migration (SqlStore._migrate).
    RECORD_VERSION = f"INSERT INTO {schema.VERSION_TABLE} (version, applied_at, description) VALUES (?, ?, ?)"

    def __init__(self, dialect: type[Dialect]):
        for name, text in vars(Statements).items():
            if name.isupper():
                setattr(self, name, _rendered(text, dialect))


class SqlStore:
    dialect = Dialect

    def __init__(self, peer_timeout: int, register_unknown: bool, wait_seconds: float, open_max_torrents: int,
                 pool_size: int):
        self.peer_timeout = peer_timeout
        self.register_unknown = register_unknown
        self.wait_seconds = wait_seconds  # the longest a store call waits for the database
        self.open_max_torrents = open_max_torrents
        self.sql = Statements(self.dialect)
        self._torrents_counted = (0, float("-inf"))  # (count, time.monotonic() then)
        self._pool: ConnectionPool[Connection] = ConnectionPool(self._open, self._close_quietly, pool_size,
                                                                wait_seconds)
        # For the metrics (metrics.py): statements and connections that failed. Counted
        # under a lock: a rare path.
        self.errors = 0
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
        it; on a dropped connection, a deadlock or a racing insert, start over once on
        another (a fresh one, if the connection was lost). Every caller's work is idempotent
        when repeated whole (completions are guarded per peer). `work` never calls the
        store: a transaction holds one connection, never two.

        Raises StoreUnavailable when the database cannot be used now: no connection can be
        made (not retried: it would only wait again), every connection stayed lent for
        wait_seconds, or the error says so, after the retry if there was one. Any other
        error is raised as it is: something in the work is wrong."""
        for attempt in (1, 2):
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
                try:
                    conn.rollback()
                except Exception:
                    self._pool.discard(connection, lost=True)
                else:
                    self._pool.give_back(connection)
                raise
            except BaseException as exc:  # not only Exception: a connection mid-transaction is never lent again
                self._pool.discard(connection, self._is_lost(exc))
                if not isinstance(exc, Exception):
                    raise
                self._failed()
                if attempt == 1 and self._is_transient(exc):
                    continue
                if self._is_unavailable(exc):
                    raise StoreUnavailable(f"the database is unavailable: {exc}") from exc
                raise
            self._pool.give_back(connection)
            return result
        raise AssertionError("unreachable")

    def _failed(self) -> None:
        with self._counting:
            self.errors += 1

    # -- the store interface --------------------------------------------------------------

    def find_swarm(self, info_hash: bytes, now: int, limit: int) -> SwarmSnapshot:
        snapshot = self._read(lambda cur: self._load(cur, self.sql.SWARM_BY_HASH, info_hash, now, limit))
        if snapshot is not None:
            return snapshot
        if not self.register_unknown:
            raise UnknownTorrent()

        def register(cur: Any) -> int:
            cur.execute(self.sql.FIND_TORRENT, (info_hash,))
            row = cur.fetchone()  # another thread may have registered it meanwhile
            if row:
                return row[0]
            if not self._room_for_a_torrent(cur):
                raise TrackerFull()
            return self._insert_torrent(cur, Torrent(info_hash, None, "", 0), now)

        snapshot = self.load_swarm(self._transaction(register), now, limit)
        if snapshot is None:  # unregistered again at once
            raise UnknownTorrent()
        return snapshot

    def _room_for_a_torrent(self, cur: Any) -> bool:
        """Fewer than open_max_torrents torrents, counting this registration. Counted only
        here, at most every TORRENTS_RECOUNT_SECONDS (a race of threads only blurs it)."""
        count, counted_at = self._torrents_counted
        if time.monotonic() - counted_at >= TORRENTS_RECOUNT_SECONDS:
            cur.execute(self.sql.COUNT_TORRENTS)
            count, counted_at = cur.fetchone()[0], time.monotonic()
        room = count < self.open_max_torrents
        self._torrents_counted = (count + room, counted_at)
        return room

    def load_swarm(self, torrent_id: int, now: int, limit: int) -> SwarmSnapshot | None:
        return self._read(lambda cur: self._load(cur, self.sql.SWARM, torrent_id, now, limit))

    def find_peer(self, torrent_id: int, peer_id: bytes) -> StoredPeer | None:
        def work(cur: Any) -> StoredPeer | None:
            cur.execute(self.sql.FIND_PEER, (torrent_id, peer_id))
            rows = cur.fetchall()  # all of it: an unfinished statement would hold SQLite's read snapshot
            row = rows[0] if rows else None
            return None if row is None else StoredPeer(bytes(row[0]), bytes(row[1]) if row[1] else None, row[2])

        return self._read(work)

    def _load(self, cur: Any, statement: str, key: int | bytes, now: int, limit: int) -> SwarmSnapshot | None:
        """Counters and up to `limit` live peers (a window of random ranks of a larger swarm)."""
        cutoff = now - self.peer_timeout
        cur.execute(statement, (cutoff, key, limit + 1))
        rows = cur.fetchall()
        if not rows:
            return None
        torrent_id, name, downloaded, seeders, leechers, partial, version = rows[0][:7]
        peers = [row[7:] for row in rows if row[7] is not None]
        if len(peers) > limit:
            # A window of random ranks: a different sample of a large swarm each time.
            head, start = (torrent_id, cutoff), _rng.getrandbits(32)
            cur.execute(self.sql.SWARM_PEERS["from"], (*head, start, limit))
            peers = cur.fetchall()
            if len(peers) < limit:  # wrap around to the lowest ranks
                cur.execute(self.sql.SWARM_PEERS["below"], (*head, start, limit - len(peers)))
                peers += cur.fetchall()
        return SwarmSnapshot(torrent_id, name, downloaded, seeders, leechers, partial, version, [
            (bytes(peer_id), bytes(ip), port, state, bytes(peer_key) if peer_key else None, left, last_seen)
            for peer_id, ip, port, state, peer_key, left, last_seen in peers
        ])

    def torrent_versions(self, torrent_ids: Sequence[int]) -> dict[int, int]:
        if not torrent_ids:
            return {}
        return dict(self._fetchall(self.sql.VERSIONS.format(self.dialect.marks(len(torrent_ids))), tuple(torrent_ids)))

    def write_through(self, torrent_id: int, write: PeerWrite, completion: bool) -> int:
        """One announce committed before its answer (a completion): the same rules as a batch
        (_apply_writes), so a `stopped` that finishes a download leaves the swarm here too."""

        def work(cur: Any) -> int:
            cur.execute(self.sql.LOCK_TORRENT + self.dialect.lock_rows, (torrent_id,))
            if cur.fetchone() is None:
                raise UnknownTorrent()
            counted = {(torrent_id, write.peer_id)} if completion else set()
            if self._apply_writes(cur, [(torrent_id, write)], counted):
                raise PeerConflict()
            # The counters move with the row at once, so a swarm read by another thread or
            # process agrees with its peers.
            cur.execute(self.sql.RECOUNT + f" WHERE id IN ({self.dialect.marks(1)})", (torrent_id,))
            cur.execute(self.sql.LOCK_TORRENT, (torrent_id,))
            return cur.fetchone()[0]

        return self._transaction(work)

    def write_batch(self, batch: Sequence[tuple[int, PeerWrite]]) -> BatchResult:
        # A transaction per BATCH_ROWS writes, in torrent order: each holds its torrents'
        # rows for milliseconds, so a completion never waits behind a whole batch.
        ordered = sorted(batch, key=lambda item: item[0])
        result = BatchResult({}, [])
        for start in range(0, len(ordered), BATCH_ROWS):
            self._write_bisecting(ordered[start:start + BATCH_ROWS], result)
        # A torrent whose every write was set aside is still registered: say so, as written
        # by another (version_before -1), so that its view is read again, not dropped.
        unwritten = sorted({row.torrent_id for row in result.set_aside} - result.written.keys())
        if unwritten:
            for torrent_id, *row in self._fetchall(self.sql.WRITTEN.format(self.dialect.marks(len(unwritten))),
                                                   tuple(unwritten)):
                result.written[torrent_id] = SwarmWritten(-1, *row)
        return result

    def _write_bisecting(self, chunk: Sequence[tuple[int, PeerWrite]], result: BatchResult) -> None:
        """Write a chunk in one transaction; if it fails (and the database is there), write
        each half the same way, down to the writes that fail alone: those are set aside, so
        one poisoned row never blocks the rest. A chunk with k such rows costs about
        2k log2(len) transactions more."""
        try:
            written, refused = self._write_chunk(chunk)
        except StoreUnavailable:
            raise
        except Exception as exc:
            if len(chunk) == 1:
                torrent_id, write = chunk[0]
                result.set_aside.append(SetAside(torrent_id, write.peer_id, f"{type(exc).__name__}: {exc}"))
                return
            middle = len(chunk) // 2
            self._write_bisecting(chunk[:middle], result)
            self._write_bisecting(chunk[middle:], result)
            return
        result.set_aside.extend(refused)
        for torrent_id, swarm in written.items():
            earlier = result.written.get(torrent_id)
            if earlier is not None:  # a swarm split over two transactions: unbroken
                # only if nobody wrote it between them
                before = earlier.version_before if earlier.version == swarm.version_before else -1
                swarm = swarm._replace(version_before=before)
            result.written[torrent_id] = swarm

    def _write_chunk(self, batch: Sequence[tuple[int, PeerWrite]]) -> tuple[dict[int, SwarmWritten], list[SetAside]]:
        """One transaction of at most BATCH_ROWS writes, so each list is one statement;
        returns the swarms it wrote and the writes the key rule refused."""

        def work(cur: Any) -> tuple[dict[int, SwarmWritten], list[SetAside]]:
            wanted = sorted({torrent_id for torrent_id, _ in batch})
            # In id order, like every writer of several torrents, so writers never deadlock.
            cur.execute(self.sql.LOCK_TORRENTS.format(self.dialect.marks(len(wanted))) + self.dialect.lock_rows, wanted)
            existing = dict(cur.fetchall())  # torrent id -> version before this transaction
            refused = self._apply_writes(cur, [(t, w) for t, w in batch if t in existing], set())
            if not existing:
                return {}, refused
            ids = sorted(existing)
            cur.execute(self.sql.RECOUNT + f" WHERE id IN ({self.dialect.marks(len(ids))})", ids)
            cur.execute(self.sql.WRITTEN.format(self.dialect.marks(len(ids))), ids)
            return {torrent_id: SwarmWritten(existing[torrent_id], *row)
                    for torrent_id, *row in cur.fetchall()}, refused

        return self._transaction(work)

    def _apply_writes(self, cur: Any, writes: Sequence[tuple[int, PeerWrite]],
                      counted: set[tuple[int, bytes]]) -> list[SetAside]:
        """The one place a write meets its stored row, for the write-through and the batch
        alike. In order:
        - A write older than the row (PeerWrite.stamp: the announce's time and host) is not
          written, wherever and whenever its batch lands; only, over a tombstone of a finish
          the stopping host could not tell (left=0), an older leecher's write tells it: the
          completion is counted then (swarm.finishes), once.
        - The key rule, over a live row other than the one the host's rule passed from
          (PeerWrite.base): another host took the peer_id.
        - A new life (PeerWrite.fresh, or a write over a tombstone but a stop of a peer the
          host did not hold): its completion mark goes.
        - A stop leaves a tombstone (state GONE, kept until peer_timeout); its bytes join the
          departed total. Anything else is upserted.
        - The completions `counted` holds (the host decided them before the answer, against
          the peer it holds or the row it read), and a leecher's row this write finishes
          (swarm.finishes): the row's mark counts each once per life.
        Returns the writes the key rule refused. The caller holds the torrents' rows
        (LOCK_TORRENTS order) and recounts them afterwards."""
        if not writes:
            return []
        stored: dict[tuple[int, bytes], tuple] = {}
        statement = self.sql.STORED_PEERS.format(self.dialect.by_primary_key, self.dialect.pairs(len(writes)))
        cur.execute(statement, _pairs(writes))
        for torrent_id, peer_id, *row in cur.fetchall():
            stored[torrent_id, bytes(peer_id)] = row  # ip, key, bytes_left, completed, state, stamp
        upserts, completions, refused, new_lives, late_finishes = [], [], [], [], []
        transferred: dict[int, int] = {}
        for torrent_id, write in writes:
            row = stored.get((torrent_id, write.peer_id))
            if row is not None and row[5] > write.stamp:
                if (row[4] == GONE and not row[3] and not write.stopped and finishes(False, row[2], write.left)
                        and not _conflicts(row[0], row[1], write)):
                    late_finishes.append((torrent_id, write.peer_id))
                continue
            gone = row is not None and row[4] == GONE
            if (row is not None and not gone and not _as_the_host_knew(row, write)
                    and _conflicts(row[0], row[1], write)):
                # Someone else's peer_id (another host took it): the answer was sent, the write is not.
                refused.append(SetAside(torrent_id, write.peer_id, KEY_RULE_REFUSED))
                continue
            if row is not None and ((write.fresh and not gone) or (gone and (write.held or not write.stopped))):
                # Rejoined after a stop (the row is its tombstone, or the stop was never
                # written): a new life, whose completion counts anew. A stop of a peer the
                # host did not hold, over a tombstone, is the same life's stop again.
                new_lives.append((torrent_id, write))
            if (torrent_id, write.peer_id) in counted or (
                    row is not None and not gone and not write.fresh and not row[3]
                    and finishes(False, write.left, row[2])):
                # Decided by the host before the answer; or a leecher's row that this newer
                # write of the same life finishes, where the host that took it had not read the
                # row (the start at another host, written meanwhile). The row's mark counts it once.
                completions.append((torrent_id, write.peer_id))
            if write.stopped and not gone:
                total = transferred.get(torrent_id, 0) + write.downloaded
                transferred[torrent_id] = min(total, MAX_TOTAL_BYTES)
            upserts.append((torrent_id, write))
        if new_lives:
            cur.execute(self.sql.NEW_LIVES.format(self.dialect.pairs(len(new_lives))), _pairs(new_lives))
        if upserts:  # first, so that a completion is marked on the row (a tombstone too)
            self._upsert(cur, upserts)
        # The row (or its tombstone) holds the mark, so a completion is counted once per
        # peer life, however often it is sent and whichever host sees it.
        for torrent_id, peer_id in completions + late_finishes:
            cur.execute(self.sql.MARK_COMPLETED, (torrent_id, peer_id))
            if cur.rowcount == 1:
                cur.execute(self.sql.COUNT_COMPLETION, (1, torrent_id))
        for torrent_id, amount in transferred.items():
            cur.execute(self.sql.ADD_TRANSFERRED, (amount, torrent_id))
        return refused

    def _upsert(self, cur: Any, writes: Sequence[tuple[int, PeerWrite]]) -> None:
        """Insert or update peers' rows in one statement (a stop: its tombstone). A new row
        gets a random rank."""
        values = []
        for torrent_id, w in writes:
            values += (torrent_id, w.peer_id, w.ip, w.port, w.key, GONE if w.stopped else int(w.state), w.left,
                       w.uploaded, w.downloaded, w.last_seen, _rng.getrandbits(32), w.stamp)
        cur.execute(self.dialect.upsert_peers(len(writes)), values)

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

    def scrape(self, info_hashes: Sequence[bytes], now: int) -> dict[bytes, SwarmStats]:
        if not info_hashes:
            return {}
        return self._scrape(f" WHERE h.info_hash IN ({self.dialect.marks(len(info_hashes))})", tuple(info_hashes))

    def scrape_all(self, now: int) -> dict[bytes, SwarmStats]:
        return self._scrape("", ())

    def _scrape(self, where: str, args: tuple) -> dict[bytes, SwarmStats]:
        result = {}
        for info_hash, name, downloaded, seeders, leechers, partial in self._fetchall(self.sql.SCRAPE + where, args):
            result[bytes(info_hash)] = swarm_stats(leechers, seeders, partial, downloaded, name)
        return result

    def register(self, torrent: Torrent, now: int) -> bool:
        return self.register_all([torrent], now) == 1

    def register_all(self, torrents: Sequence[Torrent], now: int) -> int:
        """Register many torrents in one transaction (a first scan of a large directory);
        returns how many were new."""

        def work(cur: Any) -> int:
            added = 0
            for torrent in torrents:
                marks = self.dialect.marks(len(torrent.info_hashes))
                cur.execute(self.sql.TORRENT_IDS.format(marks), torrent.info_hashes)
                if not cur.fetchall():
                    self._insert_torrent(cur, torrent, now)
                    added += 1
            return added

        return self._transaction(work)

    def unregister(self, info_hashes: Iterable[bytes]) -> int:
        hashes = tuple(info_hashes)
        if not hashes:
            return 0
        known_sql = self.sql.TORRENT_IDS.format(self.dialect.marks(len(hashes)))

        def work(cur: Any) -> int:
            cur.execute(known_sql, hashes)
            torrent_ids = [row[0] for row in cur.fetchall()]
            for torrent_id in torrent_ids:
                for statement in self.sql.DELETE_TORRENT:
                    cur.execute(statement, (torrent_id,))
            return len(torrent_ids)

        return self._transaction(work)

    def expire_peers(self, now: int) -> int:
        cutoff = now - self.peer_timeout

        def work(cur: Any) -> int:
            tombstones, add_transferred, delete = self.sql.EXPIRE
            # Every torrent is recounted, so every torrent row is locked first (see LOCK_TORRENTS).
            cur.execute(self.sql.LOCK_ALL_TORRENTS + self.dialect.lock_rows)
            cur.fetchall()
            cur.execute(tombstones, (cutoff,))
            cur.execute(add_transferred, (cutoff, cutoff))
            cur.execute(delete, (cutoff,))
            expired = cur.rowcount
            cur.execute(self.sql.RECOUNT)  # also corrects anything the batches' recounts missed
            return expired

        return self._transaction(work)

    def remove_idle_open_torrents(self, now: int) -> int:
        cutoff = now - self.peer_timeout

        def work(cur: Any) -> int:
            # Locked in id order (see LOCK_TORRENTS): a writer adds a torrent's peers only
            # while it holds the torrent's row, so once these rows are held, a new look at
            # the peers is final.
            cur.execute(self.sql.IDLE_OPEN_TORRENTS + self.dialect.lock_rows, (cutoff,))
            idle = [row[0] for row in cur.fetchall()]
            removed = 0
            for start in range(0, len(idle), BATCH_ROWS):
                ids = idle[start:start + BATCH_ROWS]
                cur.execute(self.sql.TORRENTS_WITH_PEERS.format(self.dialect.marks(len(ids))), ids)
                announced = {row[0] for row in cur.fetchall()}  # since the first look
                ids = [torrent_id for torrent_id in ids if torrent_id not in announced]
                if ids:
                    for statement in self.sql.DELETE_TORRENTS:
                        cur.execute(statement.format(self.dialect.marks(len(ids))), ids)
                    removed += len(ids)
            return removed

        return self._transaction(work)

    # -- refresh: the lock, the directory's torrents, the report -------------------------

    def take_refresh_lock(self, owner: str, now: int, lease: int) -> bool:
        def work(cur: Any) -> bool:
            cur.execute(self.sql.TAKE_REFRESH_LOCK, (owner, now + lease, now))
            return cur.rowcount == 1

        return self._transaction(work)

    def release_refresh_lock(self, owner: str, finished_at: int | None = None) -> None:
        def work(cur: Any) -> None:
            if finished_at is None:
                cur.execute(self.sql.RELEASE_REFRESH_LOCK, (owner,))
            else:
                cur.execute(self.sql.FINISH_REFRESH, (finished_at, owner))

        self._transaction(work)

    def last_refresh(self) -> int:
        return self._fetchall(self.sql.LAST_REFRESH)[0][0]

    def torrent_files(self) -> dict[str, tuple[int, int, bytes]]:
        return {path: (size, mtime, bytes(h)) for path, size, mtime, h in self._fetchall(self.sql.TORRENT_FILES)}

    def update_torrent_file(self, torrent: Torrent) -> None:
        def work(cur: Any) -> None:
            cur.execute(
                self.sql.UPDATE_TORRENT_FILE,
                (torrent.path, torrent.file_size, torrent.file_mtime, torrent.info_hash),
            )

        self._transaction(work)

    def skipped_files(self) -> dict[str, tuple[int, int, str]]:
        return {path: (size, mtime, reason) for path, size, mtime, reason in self._fetchall(self.sql.SKIPPED_FILES)}

    def replace_skipped_files(self, skipped: dict[str, tuple[int, int, str]]) -> None:
        rows = [
            (hashlib.sha1(path.encode()).digest(), path, size, mtime, reason[:255])
            for path, (size, mtime, reason) in skipped.items()
        ]

        def work(cur: Any) -> None:
            cur.execute(self.sql.CLEAR_SKIPPED_FILES)
            if rows:
                cur.executemany(self.sql.INSERT_SKIPPED_FILE, rows)

        self._transaction(work)

    def report(self, now: int) -> list[TorrentReport]:
        def work(cur: Any) -> list[TorrentReport]:
            cur.execute(self.sql.REPORT_PEERS, (now - self.peer_timeout,))
            peers: dict[int, dict[int, tuple[int, int, int]]] = {}
            for torrent_id, state, count, left, got in cur.fetchall():
                # Sums as {total} gives them (SQLite: a float), capped as every stored sum is.
                peers.setdefault(torrent_id, {})[state] = (
                    count, min(int(left or 0), MAX_TOTAL_BYTES), min(int(got or 0), MAX_TOTAL_BYTES))
            cur.execute(self.sql.REPORT_TORRENTS)
            reports = []
            for (torrent_id, info_hash, name, path, size, file_size, added, downloaded, transferred,
                 last_transfer, last_done, info_sha256) in cur.fetchall():
                by_state = peers.get(torrent_id, {})
                seeds, leechers, partial = (
                    by_state.get(s, (0, 0, 0)) for s in (PeerState.SEED, PeerState.LEECHER, PeerState.PARTIAL_SEED)
                )
                reports.append(TorrentReport(
                    info_hash=bytes(info_hash or b""), name=name, path=path, size=size,
                    file_size=file_size, added=added,
                    seeds=seeds[0], leechers=leechers[0], partial_seeds=partial[0],
                    downloaded=downloaded,
                    transferred=min(transferred + seeds[2] + leechers[2] + partial[2], MAX_TOTAL_BYTES),
                    bytes_left=min(leechers[1] + partial[1], MAX_TOTAL_BYTES),
                    last_transfer=last_transfer, last_done=last_done,
                    info_sha256=bytes(info_sha256) if info_sha256 else None,
                ))
            return reports

        return self._transaction(work)

    def record_refresh(self, now: int, seeds: int, leechers: int, keep_history: int) -> None:
        """Snapshot the rates and add a history sample (older than keep_history s go)."""

        def work(cur: Any) -> None:
            cur.execute(self.sql.SNAPSHOT_RATES, (now - self.peer_timeout,))
            delete, insert = self.sql.ADD_HISTORY
            cur.execute(delete, (now, now - keep_history))
            cur.execute(insert, (now, seeds, leechers))

        self._transaction(work)

    def history(self, since: int) -> list[tuple[int, int, int]]:
        return [tuple(row) for row in self._fetchall(self.sql.HISTORY, (since,))]

    # -- the schema: created, or migrated to this release's (store/schema.py) -----------------

    def create_tables(self) -> SchemaChange:
        """Bring the database to this release's schema: create it in an empty database, or
        run the migrations a database of an earlier release lacks. Safe to repeat, and to run
        from many processes and hosts at once (one migrates, the others wait for it and find
        it done). Costs two reads when the schema is current. Raises SchemaError for a
        database this release cannot use: a newer release's, or one not made by a release."""
        version = self._read(self._schema_version)
        if version == schema.LATEST:
            return SchemaChange(version, version, ())
        change = self._transaction(self._migrate)
        if change.before != change.after:
            log.info("database schema %s", describe(change))
        return change

    def _schema_version(self, cur: Any) -> int | None:
        """The schema's version; None if no version is recorded (yet)."""
        cur.execute(self.dialect.tables)
        if schema.VERSION_TABLE not in {row[0] for row in cur.fetchall()}:
            return None
        cur.execute(f"SELECT MAX(version) FROM {schema.VERSION_TABLE}")
        version = cur.fetchone()[0]
        if version is not None and version > schema.LATEST:
            raise SchemaError(
                f"the database's schema is at version {version}, newer than this tracker-wsgi "
                f"({__version__}, schema version {schema.LATEST}) knows: a newer release migrated it; "
                "install that release here too"
            )
        return version

    def _migrate(self, cur: Any) -> SchemaChange:
        """Under the schema lock, look again and do what is left. Versions are recorded last,
        after the check, so a run cut short (a MySQL DDL statement commits by itself) is
        finished by the next: an unversioned database is migrated again (every step finds its
        work done), an empty version table means a creation to finish."""
        self.dialect.lock_schema(cur, self.wait_seconds)
        cur.execute(self.dialect.tables)
        tables = {row[0] for row in cur.fetchall()}
        before = self._schema_version(cur)
        if before == schema.LATEST:  # another process did it while this one waited
            self.dialect.unlock_schema(cur)
            return SchemaChange(before, before, ())
        records: list[tuple[int, str]] = []
        if before is None and schema.VERSION_TABLE not in tables and "torrents" in tables:
            for table, column in schema.FIRST_RELEASE_COLUMNS.items():
                if table not in tables or column not in self._columns(cur, table):
                    raise SchemaError(
                        f"these tables were made by a development version older than the first release "
                        f"({table} has no {column}); drop them (or the database) and let the tracker create "
                        "its own"
                    )
            before = schema.FIRST_RELEASE
            records.append((before, "found the first release's tables, which kept no version"))
        if before is None:  # empty, or a creation cut short: every statement is IF NOT EXISTS
            self._execute_ddl(cur, self._version_table_ddl())
            for statement in schema.schema_statements():
                self._execute_ddl(cur, statement)
            records.append((schema.LATEST, f"created at version {schema.LATEST}"))
        else:
            for migration in schema.MIGRATIONS:
                if migration.version > before:
                    for step in migration.steps:
                        step.apply(self, cur)
                    records.append((migration.version, migration.description))
            self._execute_ddl(cur, self._version_table_ddl())
        self._check_columns(cur)
        for version, description in records:
            cur.execute(self.sql.RECORD_VERSION, (version, int(time.time()), description[:255]))
        self.dialect.unlock_schema(cur)
        applied = tuple(f"{v}: {d}" for v, d in records if before is not None and v > before)
        return SchemaChange(before, schema.LATEST, applied)

    def _version_table_ddl(self) -> str:
        return next(s for s in schema.schema_statements() if f" {schema.VERSION_TABLE} (" in s)

    def _execute_ddl(self, cur: Any, statement: str) -> None:
        for translated in self.dialect.ddl(statement):
            cur.execute(translated)

    def _columns(self, cur: Any, table: str) -> list[str]:
        cur.execute(f"SELECT * FROM {table} LIMIT 0")
        cur.fetchall()
        return [d[0] for d in cur.description]

    def _check_columns(self, cur: Any) -> None:
        """Every table and column schema.sql creates is there: a migrated database must be
        what a new one is, whatever was done to it by hand."""
        cur.execute(self.dialect.tables)
        tables = {row[0] for row in cur.fetchall()}
        for table, columns in schema.schema_columns().items():
            found = self._columns(cur, table) if table in tables else []
            missing = [c for c in columns if c not in found] if found else ["(the table)"]
            if missing:
                raise SchemaError(
                    f"table {table} lacks {', '.join(missing)} at schema version {schema.LATEST}: it was changed "
                    "by hand; add what is missing as schema.sql has it"
                )

    def _fetchall(self, statement: str, args: tuple = ()) -> list[tuple]:
        def work(cur: Any) -> list[tuple]:
            cur.execute(statement, args)
            return cur.fetchall()

        return self._read(work)
