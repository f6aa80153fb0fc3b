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
from ..swarm import StoredPeer, count_stats, counter_deltas, plan_announce

T = TypeVar("T")

# Random peer ranks and window starts. ORDER BY RAND() would sort the whole swarm on every
# announce (the original avoided it for the same reason); OFFSET would read up to it.
_rng = random.Random()
_COUNTER_ORDER = (PeerState.SEED, PeerState.LEECHER, PeerState.PARTIAL_SEED)  # torrents' columns


class Dialect:
    """Statements whose syntax differs between databases (subclasses override)."""

    upsert_peer = ""
    # Appended to STORED_PEER where announces run concurrently: a state change re-reads the
    # peer's row under a lock, so two racing announces of one peer change the counters once.
    lock_peer = ""
    # Run first in the expiry's transaction where announces run concurrently. Holding every
    # torrent row means no announce can change a counter between the recount's read of the
    # peers and its write (it would be lost); announces that change no counter go on.
    lock_torrents = ""

    @staticmethod
    def upsert_inserted(rowcount: int) -> bool:
        """Whether the upsert of a peer the lookup did not find inserted it. Where
        transactions are serial (SQLite) it always did; MySQL says so in the row count."""
        return True


def _stored_peer(row: Sequence[Any]) -> StoredPeer | None:
    ip, key, state, left, completed = row
    if ip is None:
        return None
    return StoredPeer(bytes(ip), bytes(key) if key else None, PeerState(state), left, bool(completed))


class SqlStore:
    dialect = Dialect

    # The torrent, its counters and the announcing peer's row, in one round trip.
    LOOKUP = (
        "SELECT t.id, t.downloaded, t.seeders, t.leechers, t.partial_seeds, "
        "p.ip, p.peer_key, p.state, p.bytes_left, p.completed "
        "FROM info_hashes h JOIN torrents t ON t.id = h.torrent_id "
        "LEFT JOIN peers p ON p.torrent_id = t.id AND p.peer_id = ? WHERE h.info_hash = ?"
    )
    STORED_PEER = (
        "SELECT ip, peer_key, state, bytes_left, completed FROM peers WHERE torrent_id = ? AND peer_id = ?"
    )
    DELETE_PEER = "DELETE FROM peers WHERE torrent_id = ? AND peer_id = ?"
    ADD_TRANSFERRED = "UPDATE torrents SET transferred = transferred + ? WHERE id = ?"
    # Conditional, so two racing `completed` announces of one peer count once.
    MARK_COMPLETED = "UPDATE peers SET completed = 1 WHERE torrent_id = ? AND peer_id = ? AND completed = 0"
    COUNT_COMPLETION = "UPDATE torrents SET downloaded = downloaded + 1 WHERE id = ?"
    ADD_COUNTS = (
        "UPDATE torrents SET seeders = seeders + ?, leechers = leechers + ?, "
        "partial_seeds = partial_seeds + ? WHERE id = ?"
    )
    # Peer lists: a window of random ranks (index by_rank / by_state_rank), so the cost is
    # numwant rows whatever the swarm's size; stale peers are skipped, the asker too.
    _PEERS = "SELECT ip, port, peer_id FROM peers WHERE torrent_id = ? AND last_seen >= ? AND peer_id <> ?"
    _LEECHERS = _PEERS + " AND state = 0"
    SELECT_PEERS = {
        (wants_seeds, window): query + window_sql
        for wants_seeds, query in ((True, _PEERS), (False, _LEECHERS))
        for window, window_sql in (
            ("all", " LIMIT ?"),
            ("from", " AND peer_rank >= ? ORDER BY peer_rank LIMIT ?"),
            ("below", " AND peer_rank < ? ORDER BY peer_rank LIMIT ?"),
        )
    }
    INSERT_TORRENT = (
        "INSERT INTO torrents (name, size, path, added, file_size, file_mtime) VALUES (?, ?, ?, ?, ?, ?)"
    )
    INSERT_HASH = "INSERT INTO info_hashes (info_hash, torrent_id) VALUES (?, ?)"
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
    # Expired peers' uploads join the departed total before the peers go.
    EXPIRE = (
        "UPDATE torrents SET transferred = transferred + (SELECT COALESCE(SUM(uploaded), 0) "
        "FROM peers WHERE peers.torrent_id = torrents.id AND peers.last_seen < ?) "
        "WHERE id IN (SELECT torrent_id FROM peers WHERE last_seen < ?)",
        "DELETE FROM peers WHERE last_seen < ?",
        # Recount every torrent: corrects any drift the announces' counters picked up.
        "UPDATE torrents SET "
        "seeders = (SELECT COUNT(*) FROM peers WHERE peers.torrent_id = torrents.id AND state = 1), "
        "leechers = (SELECT COUNT(*) FROM peers WHERE peers.torrent_id = torrents.id AND state = 0), "
        "partial_seeds = (SELECT COUNT(*) FROM peers WHERE peers.torrent_id = torrents.id AND state = 2)",
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
            # One cursor for the connection's life: the MySQL connector pings the server
            # (a round trip) every time a cursor is made.
            self._local.cursor = conn.cursor()
        return conn

    def close(self) -> None:
        conn, self._local.conn, self._local.cursor = getattr(self._local, "conn", None), None, None
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
                result = work(self._local.cursor)
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
        cur.execute(self.LOOKUP, (request.peer_id, request.info_hash))
        row = cur.fetchone()
        if row is None:
            if not self.register_unknown:
                raise ClientError(UNKNOWN_TORRENT)
            torrent = Torrent(request.info_hash, None, "", 0)
            row = (self._insert_torrent(cur, torrent, now), 0, 0, 0, 0, None, None, None, None, None)
        torrent_id, downloaded, counts, stored = row[0], row[1], row[2:5], _stored_peer(row[5:])
        update = plan_announce(request, stored)
        if self.dialect.lock_peer and stored is not None and (update.remove or stored.state != request.state):
            # Rare (start, finish, stop), so the common re-announce stays one read.
            cur.execute(self.STORED_PEER + self.dialect.lock_peer, (torrent_id, request.peer_id))
            stored = _stored_peer(cur.fetchone() or (None,) * 5)
            update = plan_announce(request, stored)

        # Two announces of one peer may race (libtorrent announces a hybrid torrent's v1 and
        # v2 hash at once, with one peer_id): the write's own row count says what really
        # changed, and the counters follow that, not the lookup.
        if update.remove:
            if stored is not None:
                cur.execute(self.DELETE_PEER, (torrent_id, request.peer_id))
                if cur.rowcount == 0:
                    stored = None  # a racing `stopped` removed it first
                cur.execute(self.ADD_TRANSFERRED, (request.uploaded, torrent_id))
        else:
            cur.execute(
                self.dialect.upsert_peer,
                (torrent_id, request.peer_id, request.ip, request.port, update.key,
                 int(request.state), request.left, request.uploaded, request.downloaded, now,
                 _rng.getrandbits(32)),
            )
            if stored is None and not self.dialect.upsert_inserted(cur.rowcount):
                # A racing announce inserted it first, and counted it in its state.
                stored = StoredPeer(request.ip, update.key, request.state, request.left, False)
        if update.counts_completion:
            cur.execute(self.MARK_COMPLETED, (torrent_id, request.peer_id))
            if cur.rowcount == 1:
                cur.execute(self.COUNT_COMPLETION, (torrent_id,))
                downloaded += 1
        deltas = counter_deltas(request, stored, update)
        if deltas:
            cur.execute(self.ADD_COUNTS, (*(deltas.get(s, 0) for s in _COUNTER_ORDER), torrent_id))
        seeders, leechers, partial = (max(0, n + deltas.get(s, 0)) for n, s in zip(counts, _COUNTER_ORDER))
        complete, incomplete, downloaders = count_stats(
            {PeerState.SEED: seeders, PeerState.LEECHER: leechers, PeerState.PARTIAL_SEED: partial}
        )
        stats = SwarmStats(complete, incomplete, downloaded, downloaders)
        if request.numwant == 0:
            return AnnounceResult(stats, ())
        wants_seeds = request.state.wants_seeds
        # BEP 3 practice (and BitTornado): a seed is sent only peers that download.
        eligible = complete + incomplete - 1 if wants_seeds else downloaders
        return AnnounceResult(stats, self._select_peers(cur, request, torrent_id, now, wants_seeds, eligible))

    def _select_peers(
        self, cur: Any, request: AnnounceRequest, torrent_id: int, now: int, wants_seeds: bool, eligible: int
    ) -> tuple[Peer, ...]:
        if eligible <= 0:
            return ()
        head = (torrent_id, now - self.peer_timeout, request.peer_id)
        if eligible <= request.numwant:
            cur.execute(self.SELECT_PEERS[wants_seeds, "all"], (*head, request.numwant))
            rows = cur.fetchall()
        else:
            start = _rng.getrandbits(32)
            cur.execute(self.SELECT_PEERS[wants_seeds, "from"], (*head, start, request.numwant))
            rows = cur.fetchall()
            if len(rows) < request.numwant:  # wrap around to the lowest ranks
                cur.execute(self.SELECT_PEERS[wants_seeds, "below"], (*head, start, request.numwant - len(rows)))
                rows += cur.fetchall()
        return tuple(map(Peer._make, rows))  # both drivers return BLOB/BINARY as bytes

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
        return self._scrape(f" WHERE h.info_hash IN ({marks})", tuple(info_hashes))

    def scrape_all(self, now: int) -> dict[bytes, SwarmStats]:
        return self._scrape("", ())

    def _scrape(self, where: str, args: tuple) -> dict[bytes, SwarmStats]:
        result = {}
        for info_hash, name, downloaded, seeders, leechers, partial in self._fetchall(self._sql(self.SCRAPE + where), args):
            complete, incomplete, downloaders = count_stats(
                {PeerState.SEED: max(0, seeders), PeerState.LEECHER: max(0, leechers),
                 PeerState.PARTIAL_SEED: max(0, partial)}
            )
            result[bytes(info_hash)] = SwarmStats(complete, incomplete, downloaded, downloaders, name)
        return result

    def register(self, torrent: Torrent, now: int) -> bool:
        return self.register_all([torrent], now) == 1

    def register_all(self, torrents: Sequence[Torrent], now: int) -> int:
        """Register many torrents in one transaction (a first scan of a large directory);
        returns how many were new."""

        def work(cur: Any) -> int:
            added = 0
            for torrent in torrents:
                marks = ", ".join("?" * len(torrent.info_hashes))
                cur.execute(self._sql(self.TORRENT_IDS.format(marks)), torrent.info_hashes)
                if not cur.fetchall():
                    self._insert_torrent(cur, torrent, now)
                    added += 1
            return added

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
            add_transferred, delete, recount = self.EXPIRE
            if self.dialect.lock_torrents:
                cur.execute(self.dialect.lock_torrents)
                cur.fetchall()
            cur.execute(add_transferred, (cutoff, cutoff))
            cur.execute(delete, (cutoff,))
            expired = cur.rowcount
            cur.execute(recount)
            return expired

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
