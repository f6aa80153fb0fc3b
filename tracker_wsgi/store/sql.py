"""What the SQLite and MySQL stores share: the queries' shape and the announce algorithm.

A subclass supplies the connection (one per thread, made on first use), the few statements
whose syntax differs between the two databases, and which errors mean "the connection is
gone, reconnect and retry". SQL is written with `?` placeholders; the MySQL store turns
them into `%s` once, when its class is built. Every value is a bound parameter.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ..model import (
    AnnounceRequest,
    AnnounceResult,
    ClientError,
    Peer,
    PeerState,
    SwarmStats,
    Torrent,
    TorrentReport,
)
from ..protocol import UNKNOWN_TORRENT
from ..swarm import StoredPeer, count_stats, plan_announce

T = TypeVar("T")

# Peer selection: a window of `numwant` rows at a random offset. ORDER BY RAND() would sort
# the whole swarm on every announce (the original avoided it for the same reason).
_rng = random.Random()


class Dialect:
    """Statements whose syntax differs between databases (subclasses override)."""

    lock_peer = ""  # appended to the stored-peer SELECT, e.g. " FOR UPDATE"
    upsert_peer = ""


class SqlStore:
    dialect = Dialect

    TORRENT_BY_HASH = (
        "SELECT t.id, t.downloaded FROM info_hashes h JOIN torrents t ON t.id = h.torrent_id "
        "WHERE h.info_hash = ?"
    )
    STORED_PEER = (
        "SELECT ip, peer_key, state, bytes_left, completed FROM peers "
        "WHERE torrent_id = ? AND peer_id = ?"
    )
    DELETE_PEER = "DELETE FROM peers WHERE torrent_id = ? AND peer_id = ?"
    ADD_TRANSFERRED = "UPDATE torrents SET transferred = transferred + ? WHERE id = ?"
    COUNT_COMPLETION = "UPDATE torrents SET downloaded = downloaded + 1 WHERE id = ?"
    COUNT_STATES = (
        "SELECT state, COUNT(*) FROM peers WHERE torrent_id = ? AND last_seen >= ? GROUP BY state"
    )
    SELECT_PEERS = (
        "SELECT ip, port, peer_id FROM peers "
        "WHERE torrent_id = ? AND last_seen >= ? AND peer_id <> ? LIMIT ? OFFSET ?"
    )
    SELECT_LEECHERS = (
        "SELECT ip, port, peer_id FROM peers "
        "WHERE torrent_id = ? AND state = 0 AND last_seen >= ? AND peer_id <> ? LIMIT ? OFFSET ?"
    )
    INSERT_TORRENT = (
        "INSERT INTO torrents (name, size, path, added, file_size, file_mtime) VALUES (?, ?, ?, ?, ?, ?)"
    )
    INSERT_HASH = "INSERT INTO info_hashes (info_hash, torrent_id) VALUES (?, ?)"
    SCRAPE_TORRENTS = (
        "SELECT h.info_hash, t.id, t.name, t.downloaded FROM info_hashes h "
        "JOIN torrents t ON t.id = h.torrent_id"
    )
    SCRAPE_COUNTS = (
        "SELECT torrent_id, state, COUNT(*) FROM peers WHERE last_seen >= ? "
        "GROUP BY torrent_id, state"
    )
    TORRENT_IDS = "SELECT DISTINCT torrent_id FROM info_hashes WHERE info_hash IN ({})"
    DELETE_TORRENT = (
        "DELETE FROM peers WHERE torrent_id = ?",
        "DELETE FROM info_hashes WHERE torrent_id = ?",
        "DELETE FROM torrents WHERE id = ?",
    )
    # Expired peers' uploads join the departed total before the peers go.
    EXPIRE = (
        "UPDATE torrents SET transferred = transferred + (SELECT COALESCE(SUM(uploaded), 0) "
        "FROM peers WHERE peers.torrent_id = torrents.id AND peers.last_seen < ?) "
        "WHERE id IN (SELECT torrent_id FROM peers WHERE last_seen < ?)",
        "DELETE FROM peers WHERE last_seen < ?",
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
        "SELECT t.id, (SELECT MIN(info_hash) FROM info_hashes WHERE torrent_id = t.id), t.name, "
        "t.path, t.size, t.file_size, t.added, t.downloaded, t.transferred, t.last_transfer, "
        "t.last_done FROM torrents t"
    )
    REPORT_PEERS = (
        "SELECT torrent_id, state, COUNT(*), SUM(bytes_left), SUM(uploaded) FROM peers "
        "WHERE last_seen >= ? GROUP BY torrent_id, state"
    )
    # The rate snapshot: what the next refresh's "current average rate" is measured from.
    SNAPSHOT_RATES = (
        "UPDATE torrents SET last_done = downloaded, last_transfer = transferred + "
        "(SELECT COALESCE(SUM(uploaded), 0) FROM peers WHERE peers.torrent_id = torrents.id "
        "AND peers.last_seen >= ?)"
    )
    ADD_HISTORY = (
        "DELETE FROM history WHERE sampled_at = ? OR sampled_at < ?",
        "INSERT INTO history (sampled_at, seeds, leechers) VALUES (?, ?, ?)",
    )
    HISTORY = "SELECT sampled_at, seeds, leechers FROM history WHERE sampled_at >= ? ORDER BY sampled_at"

    def __init__(self, peer_timeout: int, register_unknown: bool):
        self.peer_timeout = peer_timeout
        self.register_unknown = register_unknown
        self._local = threading.local()

    # -- connection handling: subclasses implement these three -------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _is_transient(self, exc: BaseException) -> bool:
        """True when retrying the transaction once on a new connection may succeed."""
        raise NotImplementedError

    def _begin(self, conn: Any) -> None:
        raise NotImplementedError

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def close(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a dead connection may fail; it is gone either way
                pass

    def connection_type(self) -> str:
        return type(self._connection()).__name__

    def _transaction(self, work: Callable[[Any], T]) -> T:
        """Run `work(cursor)` in one transaction; on a dropped connection, a deadlock or a
        racing insert, start over once on a fresh connection. Every caller's work is
        idempotent when repeated whole (completions are guarded per peer)."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                self._begin(conn)
                cursor = conn.cursor()
                try:
                    result = work(cursor)
                finally:
                    cursor.close()
                conn.commit()
                return result
            except ClientError:
                conn.rollback()
                raise
            except Exception as exc:
                self.close()
                if attempt == 2 or not self._is_transient(exc):
                    raise
        raise AssertionError("unreachable")

    # -- the store interface --------------------------------------------------------------

    def announce(self, request: AnnounceRequest, now: int) -> AnnounceResult:
        return self._transaction(lambda cur: self._announce(cur, request, now))

    def _announce(self, cur: Any, request: AnnounceRequest, now: int) -> AnnounceResult:
        cur.execute(self.TORRENT_BY_HASH, (request.info_hash,))
        row = cur.fetchone()
        if row is None:
            if not self.register_unknown:
                raise ClientError(UNKNOWN_TORRENT)
            row = (self._insert_torrent(cur, Torrent(request.info_hash, None, "", 0), now), 0)
        torrent_id, downloaded = row

        cur.execute(self.STORED_PEER + self.dialect.lock_peer, (torrent_id, request.peer_id))
        found = cur.fetchone()
        stored = None
        if found is not None:
            ip, key, state, left, completed = found
            stored = StoredPeer(bytes(ip), bytes(key) if key else None, PeerState(state), left, bool(completed))
        update = plan_announce(request, stored)

        if update.remove:
            if stored is not None:
                cur.execute(self.DELETE_PEER, (torrent_id, request.peer_id))
                cur.execute(self.ADD_TRANSFERRED, (request.uploaded, torrent_id))
        else:
            cur.execute(
                self.dialect.upsert_peer,
                (torrent_id, request.peer_id, request.ip, request.port, update.key,
                 int(request.state), request.left, request.uploaded, request.downloaded,
                 int(update.completed), now),
            )
        if update.counts_completion:
            cur.execute(self.COUNT_COMPLETION, (torrent_id,))
            downloaded += 1

        cutoff = now - self.peer_timeout
        cur.execute(self.COUNT_STATES, (torrent_id, cutoff))
        complete, incomplete, downloaders = count_stats(dict(cur.fetchall()))
        stats = SwarmStats(complete, incomplete, downloaded, downloaders)

        peers: tuple[Peer, ...] = ()
        if request.numwant > 0:
            if request.state.wants_seeds:
                query, eligible = self.SELECT_PEERS, complete + incomplete - 1
            else:
                # BEP 3 practice (and BitTornado): a seed is sent only peers that download.
                query, eligible = self.SELECT_LEECHERS, downloaders
            if eligible > 0:
                offset = _rng.randrange(max(1, eligible - request.numwant + 1))
                cur.execute(query, (torrent_id, cutoff, request.peer_id, request.numwant, offset))
                peers = tuple(Peer(bytes(ip), port, bytes(pid)) for ip, port, pid in cur.fetchall())
        return AnnounceResult(stats, peers)

    def _insert_torrent(self, cur: Any, torrent: Torrent, now: int) -> int:
        cur.execute(
            self.INSERT_TORRENT,
            (torrent.name, torrent.size, torrent.path, now, torrent.file_size, torrent.file_mtime),
        )
        torrent_id = cur.lastrowid
        for info_hash in torrent.info_hashes:
            cur.execute(self.INSERT_HASH, (info_hash, torrent_id))
        return torrent_id

    def scrape(self, info_hashes: Sequence[bytes], now: int) -> dict[bytes, SwarmStats]:
        if not info_hashes:
            return {}
        marks = ", ".join("?" * len(info_hashes))
        where = f" WHERE h.info_hash IN ({marks})"
        counts = f" AND torrent_id IN (SELECT torrent_id FROM info_hashes WHERE info_hash IN ({marks}))"
        return self._scrape(where, counts, tuple(info_hashes), now)

    def scrape_all(self, now: int) -> dict[bytes, SwarmStats]:
        return self._scrape("", "", (), now)

    def _scrape(self, where: str, counts_where: str, args: tuple, now: int) -> dict[bytes, SwarmStats]:
        torrents_sql = self._sql(self.SCRAPE_TORRENTS + where)
        counts_sql = self._sql(self.SCRAPE_COUNTS.replace(" GROUP BY", counts_where + " GROUP BY"))

        def work(cur: Any) -> dict[bytes, SwarmStats]:
            cur.execute(torrents_sql, args)
            torrents = cur.fetchall()
            cur.execute(counts_sql, (now - self.peer_timeout, *args))
            by_torrent: dict[int, dict[int, int]] = {}
            for torrent_id, state, count in cur.fetchall():
                by_torrent.setdefault(torrent_id, {})[state] = count
            result = {}
            for info_hash, torrent_id, name, downloaded in torrents:
                complete, incomplete, downloaders = count_stats(by_torrent.get(torrent_id, {}))
                result[bytes(info_hash)] = SwarmStats(complete, incomplete, downloaded, downloaders, name)
            return result

        return self._transaction(work)

    def register(self, torrent: Torrent, now: int) -> bool:
        marks = ", ".join("?" * len(torrent.info_hashes))
        known_sql = self._sql(self.TORRENT_IDS.format(marks))

        def work(cur: Any) -> bool:
            cur.execute(known_sql, torrent.info_hashes)
            if cur.fetchall():
                return False
            self._insert_torrent(cur, torrent, now)
            return True

        return self._transaction(work)

    def unregister(self, info_hashes: Iterable[bytes]) -> int:
        hashes = tuple(info_hashes)
        if not hashes:
            return 0
        known_sql = self._sql(self.TORRENT_IDS.format(", ".join("?" * len(hashes))))

        def work(cur: Any) -> int:
            cur.execute(known_sql, hashes)
            torrent_ids = [row[0] for row in cur.fetchall()]
            for torrent_id in torrent_ids:
                for statement in self.DELETE_TORRENT:
                    cur.execute(statement, (torrent_id,))
            return len(torrent_ids)

        return self._transaction(work)

    def expire_peers(self, now: int) -> int:
        cutoff = now - self.peer_timeout

        def work(cur: Any) -> int:
            add_transferred, delete = self.EXPIRE
            cur.execute(add_transferred, (cutoff, cutoff))
            cur.execute(delete, (cutoff,))
            return cur.rowcount

        return self._transaction(work)

    # -- refresh: the lock, the directory's torrents, the report -------------------------

    def take_refresh_lock(self, owner: str, now: int, lease: int) -> bool:
        def work(cur: Any) -> bool:
            cur.execute(self.TAKE_REFRESH_LOCK, (owner, now + lease, now))
            return cur.rowcount == 1

        return self._transaction(work)

    def release_refresh_lock(self, owner: str, finished_at: int | None = None) -> None:
        def work(cur: Any) -> None:
            if finished_at is None:
                cur.execute(self.RELEASE_REFRESH_LOCK, (owner,))
            else:
                cur.execute(self.FINISH_REFRESH, (finished_at, owner))

        self._transaction(work)

    def last_refresh(self) -> int:
        return self._fetchall(self.LAST_REFRESH)[0][0]

    def torrent_files(self) -> dict[str, tuple[int, int, bytes]]:
        return {path: (size, mtime, bytes(h)) for path, size, mtime, h in self._fetchall(self.TORRENT_FILES)}

    def update_torrent_file(self, torrent: Torrent) -> None:
        def work(cur: Any) -> None:
            cur.execute(
                self.UPDATE_TORRENT_FILE,
                (torrent.path, torrent.file_size, torrent.file_mtime, torrent.info_hash),
            )

        self._transaction(work)

    def skipped_files(self) -> dict[str, tuple[int, int, str]]:
        return {path: (size, mtime, reason) for path, size, mtime, reason in self._fetchall(self.SKIPPED_FILES)}

    def replace_skipped_files(self, skipped: dict[str, tuple[int, int, str]]) -> None:
        rows = [
            (hashlib.sha1(path.encode()).digest(), path, size, mtime, reason[:255])
            for path, (size, mtime, reason) in skipped.items()
        ]

        def work(cur: Any) -> None:
            cur.execute(self.CLEAR_SKIPPED_FILES)
            if rows:
                cur.executemany(self.INSERT_SKIPPED_FILE, rows)

        self._transaction(work)

    def report(self, now: int) -> list[TorrentReport]:
        def work(cur: Any) -> list[TorrentReport]:
            cur.execute(self.REPORT_PEERS, (now - self.peer_timeout,))
            peers: dict[int, dict[int, tuple[int, int, int]]] = {}
            for torrent_id, state, count, left, uploaded in cur.fetchall():
                peers.setdefault(torrent_id, {})[state] = (count, int(left or 0), int(uploaded or 0))
            cur.execute(self.REPORT_TORRENTS)
            reports = []
            for (torrent_id, info_hash, name, path, size, file_size, added, downloaded, transferred,
                 last_transfer, last_done) in cur.fetchall():
                by_state = peers.get(torrent_id, {})
                seeds, leechers, partial = (
                    by_state.get(s, (0, 0, 0)) for s in (PeerState.SEED, PeerState.LEECHER, PeerState.PARTIAL_SEED)
                )
                reports.append(TorrentReport(
                    info_hash=bytes(info_hash or b""), name=name, path=path, size=size,
                    file_size=file_size, added=added,
                    seeds=seeds[0], leechers=leechers[0], partial_seeds=partial[0],
                    downloaded=downloaded,
                    transferred=transferred + seeds[2] + leechers[2] + partial[2],
                    bytes_left=leechers[1] + partial[1],
                    last_transfer=last_transfer, last_done=last_done,
                ))
            return reports

        return self._transaction(work)

    def record_refresh(self, now: int, seeds: int, leechers: int, keep_history: int) -> None:
        """Snapshot the rates and add a history sample (older than keep_history s go)."""

        def work(cur: Any) -> None:
            cur.execute(self.SNAPSHOT_RATES, (now - self.peer_timeout,))
            delete, insert = self.ADD_HISTORY
            cur.execute(delete, (now, now - keep_history))
            cur.execute(insert, (now, seeds, leechers))

        self._transaction(work)

    def history(self, since: int) -> list[tuple[int, int, int]]:
        return [tuple(row) for row in self._fetchall(self.HISTORY, (since,))]

    def _fetchall(self, statement: str, args: tuple = ()) -> list[tuple]:
        def work(cur: Any) -> list[tuple]:
            cur.execute(statement, args)
            return cur.fetchall()

        return self._transaction(work)

    @staticmethod
    def _sql(statement: str) -> str:
        """Hook for placeholder style; statements built at run time pass through here."""
        return statement
