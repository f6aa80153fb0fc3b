"""The announce path of the SQL stores (AnnounceStore in store/__init__.py): reading swarms
(find_swarm, load_swarm, find_peer), writing announces (write_through, write_batch: the one
place a write meets its stored row, _apply_writes), what hosts read of each other's writes
(changes, swarm_totals, registered) and scrape.

A mixin over SqlBase, so that everything live.py and wsgi.py lean on per announce reads in
one module, apart from the catalog's long calls (catalog.py). Its statements are in
statements.py, with the catalog's that share their lock order.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..model import (
    KEY_RULE_REFUSED,
    BatchResult,
    PeerChange,
    PeerConflict,
    PeerWrite,
    SetAside,
    StoredPeer,
    StoreUnavailable,
    SwarmSnapshot,
    SwarmStats,
    SwarmTotals,
    Torrent,
    TrackerFull,
    UnknownTorrent,
)
from ..swarm import conflicts, finishes, swarm_stats
from .sqlbase import BATCH_ROWS, SqlBase
from .statements import MAX_TOTAL_BYTES

# peers.state of a tombstone: a stopped peer's row, kept until peer_timeout so that an older
# write landing later cannot bring the peer back. Never read into a swarm nor counted (the
# statements say `state < 3`).
GONE = 3

# Random peer ranks and window starts. ORDER BY RAND() would sort the whole swarm on every
# read (the original avoided it for the same reason); OFFSET would read up to it.
_rng = random.Random()

# Whitelist mode `open`: the torrents a store holds before it refuses to register more
# (ClientError(TRACKER_FULL)): limits.OPEN_MAX_TORRENTS, the config key's default.
# How old the torrent count a registration checks against may be: a flood of new hashes
# costs one COUNT(*) a second (10 ms at 100,000 torrents on MariaDB, 2 ms on SQLite), not
# one each; the count may run over by what other processes register meanwhile.
TORRENTS_RECOUNT_SECONDS = 1.0


class WriteClock:
    """When rows are written (peers.changed): the clock in ms x 65536, one more than the last
    value at least, so that the rows a process writes never share one (a read of changes
    pages by it)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> int:
        """The first of n values for n rows."""
        with self._lock:
            first = max(self._last + 1, time.time_ns() // 1_000_000 << 16)
            self._last = first + n - 1
            return first


_clock = WriteClock()


def _host(write: PeerWrite) -> int:
    """The host that answered the write (the low 16 bits of its stamp): its swarm_counts row."""
    return write.stamp & 0xFFFF


def _conflicts(stored_ip: bytes, stored_key: bytes | None, write: PeerWrite) -> bool:
    """The key rule (swarm.conflicts) against a stored row (the drivers return bytearrays)."""
    return conflicts(bytes(stored_ip), None if stored_key is None else bytes(stored_key), write.ip, write.key)


def _as_the_host_knew(row: Sequence, write: PeerWrite) -> bool:
    """The stored row is the one the host's key rule passed from (PeerWrite.base)."""
    return write.base is not None and (bytes(row[0]), None if row[1] is None else bytes(row[1])) == write.base


def _pairs(writes: Sequence[tuple[int, PeerWrite]]) -> list:
    """(torrent_id, peer_id) of each write, flat, for `(torrent_id, peer_id) IN (...)`."""
    return [v for torrent_id, write in writes for v in (torrent_id, write.peer_id)]


class AnnouncePath(SqlBase):
    """AnnounceStore's calls (but connection_type and close: SqlBase's)."""

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
        torrent_id, name, downloaded = rows[0][:3]
        peers = [row[3:] for row in rows if row[3] is not None]
        counts = [0, 0, 0]  # by state
        if len(peers) > limit:
            cur.execute(self.sql.STATE_COUNTS, (torrent_id,))
            for state, count in cur.fetchall():
                counts[state] = count
            # A window of random ranks: a different sample of a large swarm each time.
            head, start = (torrent_id, cutoff), _rng.getrandbits(32)
            cur.execute(self.sql.SWARM_PEERS["from"], (*head, start, limit))
            peers = cur.fetchall()
            if len(peers) < limit:  # wrap around to the lowest ranks
                cur.execute(self.sql.SWARM_PEERS["below"], (*head, start, limit - len(peers)))
                peers += cur.fetchall()
        else:
            for row in peers:
                counts[row[3]] += 1
        return SwarmSnapshot(torrent_id, name, int(downloaded), counts[1], counts[0], counts[2], [
            (bytes(peer_id), bytes(ip), port, state, bytes(peer_key) if peer_key else None, left, last_seen,
             bool(completed), stamp)
            for peer_id, ip, port, state, peer_key, left, last_seen, completed, stamp in peers
        ])

    def registered(self, torrent_ids: Sequence[int]) -> set[int]:
        if not torrent_ids:
            return set()
        statement = self.sql.REGISTERED.format(self.dialect.marks(len(torrent_ids)))
        return {row[0] for row in self._fetchall(statement, tuple(torrent_ids))}

    def changes(self, since: int, limit: int, host: int = -1) -> list[PeerChange]:
        return [PeerChange(torrent_id, bytes(peer_id), bytes(ip), port, state, bytes(key) if key else None, left,
                           last_seen, bool(completed), stamp, changed)
                for torrent_id, peer_id, ip, port, state, key, left, last_seen, completed, stamp, changed
                in self._fetchall(self.sql.CHANGES, (since, host, limit))]

    def swarm_totals(self, torrent_ids: Sequence[int]) -> dict[int, SwarmTotals]:
        if not torrent_ids:
            return {}
        statement = self.sql.SWARM_TOTALS.format(self.dialect.marks(len(torrent_ids)))
        return {torrent_id: SwarmTotals(int(downloaded), seeders, leechers, partial)
                for torrent_id, downloaded, seeders, leechers, partial in self._fetchall(statement, tuple(torrent_ids))}

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
            cur.execute(self.sql.DOWNLOADED, (torrent_id,))
            return int(cur.fetchone()[0])

        return self._transaction(work)

    def write_batch(self, batch: Sequence[tuple[int, PeerWrite]]) -> BatchResult:
        # A transaction per BATCH_ROWS writes, in torrent order: each holds its torrents'
        # rows for milliseconds, so a completion never waits behind a whole batch.
        ordered = sorted(batch, key=lambda item: item[0])
        result = BatchResult(set(), [])
        for start in range(0, len(ordered), BATCH_ROWS):
            self._write_bisecting(ordered[start:start + BATCH_ROWS], result)
        # A torrent whose every write was set aside may still be registered: say so, so that
        # the host keeps it.
        unwritten = sorted({row.torrent_id for row in result.set_aside} - result.written)
        result.written.update(self.registered(unwritten))
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
        result.written.update(written)

    def _write_chunk(self, batch: Sequence[tuple[int, PeerWrite]]) -> tuple[set[int], list[SetAside]]:
        """One transaction of at most BATCH_ROWS writes, so each list is one statement;
        returns the registered torrents it wrote and the writes the key rule refused."""

        def work(cur: Any) -> tuple[set[int], list[SetAside]]:
            wanted = sorted({torrent_id for torrent_id, _ in batch})
            # In id order, like every writer of several torrents, so writers never deadlock.
            cur.execute(self.sql.LOCK_TORRENTS.format(self.dialect.marks(len(wanted))) + self.dialect.lock_rows, wanted)
            existing = {row[0] for row in cur.fetchall()}
            refused = self._apply_writes(cur, [(t, w) for t, w in batch if t in existing], set())
            return existing, refused

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
        - Completions and a stop's bytes go to the answering host's own swarm_counts row.
        Every row written says when (`changed`: WriteClock). Returns the writes the key rule
        refused. The caller holds the torrents' rows (LOCK_TORRENTS order)."""
        if not writes:
            return []
        stored: dict[tuple[int, bytes], tuple] = {}
        statement = self.sql.STORED_PEERS.format(self.dialect.by_primary_key, self.dialect.pairs(len(writes)))
        cur.execute(statement, _pairs(writes))
        for torrent_id, peer_id, *row in cur.fetchall():
            stored[torrent_id, bytes(peer_id)] = row  # ip, key, bytes_left, completed, state, stamp
        upserts, completions, refused, new_lives, late_finishes = [], [], [], [], []
        transferred: dict[tuple[int, int], int] = {}  # (torrent, host) -> bytes
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
            if row is not None and ((write.fresh and not gone)
                                    or (gone and (write.held_stamp > row[5] or not write.stopped))):
                # Rejoined after a stop (the row is its tombstone, or the stop was never
                # written): a new life, whose completion counts anew. A stop over a tombstone
                # newer than what the host held (or of a peer it did not hold) is the same
                # life's stop again: a client's retry at another host.
                new_lives.append((torrent_id, write))
            if (torrent_id, write.peer_id) in counted or (
                    row is not None and not gone and not write.fresh and not row[3]
                    and finishes(False, write.left, row[2])):
                # Decided by the host before the answer; or a leecher's row that this newer
                # write of the same life finishes, where the host that took it had not read the
                # row (the start at another host, written meanwhile). The row's mark counts it once.
                completions.append((torrent_id, write.peer_id))
            if write.stopped and not gone:
                total = transferred.get((torrent_id, _host(write)), 0) + write.downloaded
                transferred[torrent_id, _host(write)] = min(total, MAX_TOTAL_BYTES)
            upserts.append((torrent_id, write))
        hosts = {(torrent_id, write.peer_id): _host(write) for torrent_id, write in writes}
        if new_lives:
            cur.execute(self.sql.NEW_LIVES.format(self.dialect.pairs(len(new_lives))), _pairs(new_lives))
        if upserts:  # first, so that a completion is marked on the row (a tombstone too)
            self._upsert(cur, upserts)
        # The row (or its tombstone) holds the mark, so a completion is counted once per
        # peer life, however often it is sent and whichever host sees it.
        for torrent_id, peer_id in completions + late_finishes:
            cur.execute(self.sql.MARK_COMPLETED, (_clock.take(1), torrent_id, peer_id))
            if cur.rowcount == 1:
                cur.execute(self.dialect.add_counts, (torrent_id, hosts[torrent_id, peer_id], 1, 0))
        for (torrent_id, host), amount in transferred.items():
            cur.execute(self.dialect.add_counts, (torrent_id, host, 0, amount))
        return refused

    def _upsert(self, cur: Any, writes: Sequence[tuple[int, PeerWrite]]) -> None:
        """Insert or update peers' rows in one statement (a stop: its tombstone). A new row
        gets a random rank."""
        values = []
        changed = _clock.take(len(writes))
        for i, (torrent_id, w) in enumerate(writes):
            values += (torrent_id, w.peer_id, w.ip, w.port, w.key, GONE if w.stopped else int(w.state), w.left,
                       w.uploaded, w.downloaded, w.last_seen, _rng.getrandbits(32), w.stamp, changed + i)
        cur.execute(self.dialect.upsert_peers(len(writes)), values)

    def scrape(self, info_hashes: Sequence[bytes], now: int) -> dict[bytes, SwarmStats]:
        if not info_hashes:
            return {}
        return self._scrape(f" WHERE h.info_hash IN ({self.dialect.marks(len(info_hashes))})", tuple(info_hashes))

    def scrape_all(self, now: int) -> dict[bytes, SwarmStats]:
        return self._scrape("", ())

    def _scrape(self, where: str, args: tuple) -> dict[bytes, SwarmStats]:
        result = {}
        for info_hash, name, downloaded, seeders, leechers, partial in self._fetchall(self.sql.SCRAPE + where, args):
            result[bytes(info_hash)] = swarm_stats(leechers, seeders, partial, int(downloaded), name)
        return result
