"""What the SQLite and MySQL stores share: the queries' shape and the announce algorithm.

A subclass supplies the connection (one per thread, made on first use), the few statements
whose syntax differs between the two databases, and which errors mean "the connection is
gone, reconnect and retry". SQL is written with `?` placeholders; the MySQL store turns
them into `%s` once, when its class is built. Every value is a bound parameter.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ..model import AnnounceRequest, AnnounceResult, ClientError, Peer, PeerState, SwarmStats, Torrent
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
    INSERT_TORRENT = "INSERT INTO torrents (name, size, path, added) VALUES (?, ?, ?, ?)"
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
    EXPIRE = "DELETE FROM peers WHERE last_seen < ?"

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
        cur.execute(self.INSERT_TORRENT, (torrent.name, torrent.size, torrent.path, now))
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
        def work(cur: Any) -> int:
            cur.execute(self.EXPIRE, (now - self.peer_timeout,))
            return cur.rowcount

        return self._transaction(work)

    @staticmethod
    def _sql(statement: str) -> str:
        """Hook for placeholder style; statements built at run time pass through here."""
        return statement
