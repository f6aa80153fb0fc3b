"""The catalog side of the SQL stores (Catalog in store/__init__.py): registering and
removing torrents, expiring peers and idle `open` torrents, and what the refresh keeps (its
lock, the directory's torrent files, the skipped files, the report, the history).

A mixin over SqlBase: calls of the refresh and the CLI, which may be long and are never on
an announce's path (announce.py). scrape, which the CLI uses too, is announce.py's; the
schema's creation and migration is migration.py's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from ..model import PeerState, Torrent, TorrentReport
from .sqlbase import BATCH_ROWS, SqlBase
from .statements import MAX_TOTAL_BYTES


class CatalogQueries(SqlBase):
    """Catalog's calls, but create_tables (migration.py) and scrape (announce.py)."""

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
            # Writers of peers lock their torrents first (see LOCK_TORRENTS): none adds to an
            # expired peer's row between its bytes joining the total and its deletion.
            cur.execute(self.sql.LOCK_ALL_TORRENTS + self.dialect.lock_rows)
            cur.fetchall()
            cur.execute(tombstones, (cutoff,))
            cur.execute(add_transferred, (cutoff, cutoff))
            cur.execute(delete, (cutoff,))
            return cur.rowcount

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
                    downloaded=int(downloaded),  # MySQL's SUM is a DECIMAL, SQLite's TOTAL a float
                    transferred=min(int(transferred) + seeds[2] + leechers[2] + partial[2], MAX_TOTAL_BYTES),
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
