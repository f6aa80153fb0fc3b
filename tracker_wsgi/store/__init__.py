"""The store: where swarms and peers live. Two small interfaces, by who uses them
(AnnounceStore: the announce path; Catalog: the refresh and the CLI), and two
implementations of both (Store), which share their SQL (sql.py and the modules it composes).

`open_store(url)` picks the implementation from the URL scheme, once, at start-up:
  sqlite:///absolute/path.sqlite        embedded default (stdlib sqlite3, WAL)
  mysql://user@localhost/db             MySQL / MariaDB (mysql-connector-python, C extension)
                                        by the unix socket; mysql_settings.py has the rest
                                        (TCP, option file, TLS)

The tables come from one source, schema.sql, and carry their version (schema.py):
`create_tables` creates them, or migrates a database an earlier release made.

The contract every implementation keeps (tests/test_store_contract.py runs it on both):
- A store opens at most `pool_size` connections per process, whatever the number of
  threads (pool.py), each lent to one transaction at a time and kept open between them; a
  connection the server dropped is replaced and the work retried once, so a database
  restart costs only the requests that arrive while it is down.
- No call waits for the database much longer than the store's `wait_seconds`: one that
  cannot reach it, or times out, raises StoreUnavailable (model.py).
- Announces are answered from the host's shared state (tracker_wsgi/live.py) and reach the
  store as `write_through` (one announce, committed before its answer: a completion) and
  `write_batch` (many, every sync_interval). Every writer locks the rows of the torrents it
  writes, in id order, so processes and hosts sharing one database take turns per swarm
  and never deadlock.
- No write touches a row that every writer of a swarm would touch: a peer's row is its
  own, completions and departed bytes go to the writing host's own swarm_counts row, and
  a swarm's counts are counted from its peers when asked. Each written row carries when it
  was written (`changed`), and hosts read each other's changes by it (`changes`).
- A peer is only ever changed by its own address, or by another one with its key
  (swarm.plan_announce's rule, checked again against the stored row).
- A completion is counted once per peer, whichever process or host sees it.
- Peers silent longer than `peer_timeout` are never read into a swarm. They stay in the
  counts until `expire_peers` deletes them (the refresh does), as the original's summary
  table did.
- Client-reported numbers never break a write: counters come capped (protocol.COUNTER_CAP)
  and every sum of them saturates at statements.MAX_TOTAL_BYTES.
- A batch writes every write it can: one that fails alone, or that the key rule refuses,
  is set aside and reported; only StoreUnavailable stops a batch.
- An unknown info hash is a ClientError(UNKNOWN_TORRENT), unless the store was opened with
  `register_unknown=True` (whitelist mode `open`), when it becomes a new swarm, up to
  `open_max_torrents` torrents (then ClientError(TRACKER_FULL)). Such torrents leave again
  once idle (remove_idle_open_torrents, run by the refresh).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from ..config import Config, ConfigError
from ..model import (
    BatchResult,
    PeerChange,
    PeerWrite,
    StoredPeer,
    SwarmSnapshot,
    SwarmStats,
    SwarmTotals,
    Torrent,
    TorrentReport,
)
from . import schema
from .schema import SchemaChange, SchemaError
from .sqlbase import OPEN_MAX_TORRENTS, POOL_SIZE

# How long bringing the schema up to date may take (a migration of a large table, or the
# wait for another process doing one): longer than any request waits for the database.
MIGRATION_WAIT_SECONDS = 300.0


class AnnounceStore(Protocol):
    """The store as the announce path uses it: live.HostSwarms (its requests' calls through
    the StoreGate, its sync thread's batches) and wsgi.py's announce and scrape. Every call
    is short, and the answers of most announces never reach it."""

    peer_timeout: int  # seconds after its last announce that a peer is no longer handed out
    register_unknown: bool  # whitelist mode `open`: find_swarm registers an unknown hash
    errors: int  # statements and connections that failed (metrics.py)
    conflicts: int  # of them, transactions that lost a conflict and ran again (metrics.py)

    @property
    def reconnects(self) -> int:
        """Connections made again after one failed (metrics.py)."""

    def find_swarm(self, info_hash: bytes, now: int, limit: int) -> SwarmSnapshot:
        """The swarm an info hash names, as load_swarm reads it, in one read; raises
        ClientError(UNKNOWN_TORRENT) (or registers it, in whitelist mode `open`)."""

    def load_swarm(self, torrent_id: int, now: int, limit: int) -> SwarmSnapshot | None:
        """A torrent's counters and up to `limit` of its live peers (a random sample of a
        larger swarm); None if the torrent is no longer registered."""

    def find_peer(self, torrent_id: int, peer_id: bytes) -> StoredPeer | None:
        """A peer's stored row (expired or not), for the key rule when a view lacks the peer;
        one primary-key read."""

    def registered(self, torrent_ids: Sequence[int]) -> set[int]:
        """Which of these torrents are still registered (the host forgets the others)."""

    def changes(self, since: int, limit: int, host: int = -1) -> list[PeerChange]:
        """Up to `limit` peers' rows written after `since` (PeerChange.changed), oldest first;
        of `host`'s own writes (its stamps' low 16 bits), only those carrying a completion."""

    def swarm_totals(self, torrent_ids: Sequence[int]) -> dict[int, SwarmTotals]:
        """Each registered torrent's completions and stored peers by state."""

    def write_through(self, torrent_id: int, write: PeerWrite, completion: bool) -> int:
        """Write one announce now, counting its completion once per peer; returns the
        torrent's `downloaded`. Raises ClientError for an unknown torrent or peer conflict."""

    def write_batch(self, batch: Sequence[tuple[int, PeerWrite]]) -> BatchResult:
        """Write many announces, in order. Returns the still registered torrents it wrote,
        and the writes set aside: refused by the key rule, or failing alone (the rest is
        written). Raises only StoreUnavailable."""

    def scrape(self, info_hashes: Sequence[bytes], now: int) -> dict[bytes, SwarmStats]:
        """Stats keyed by each requested hash that names a torrent; unknown ones are left out."""

    def scrape_all(self, now: int) -> dict[bytes, SwarmStats]:
        """Stats of every torrent, keyed by every hash that names it."""

    def connection_type(self) -> str:
        """Class name of the store's database connections (shows the MySQL C extension)."""

    def close(self) -> None:
        """Close the connections not lent at the moment; the store stays usable (the next
        call connects again)."""


class Catalog(Protocol):
    """The store as the catalog's keepers use it: the refresh (refresh.py: the torrent
    directory's scan, expiry, the stats page and feed rendered from `report` and `history`)
    and the CLI (cli/: add, list, remove, stats, migrate). Calls may be long (a first scan
    registers a whole directory); none is on an announce's path."""

    def create_tables(self) -> SchemaChange:
        """Bring the database to this release's schema: create the tables, or migrate those of
        an earlier release. Safe to repeat, from any number of processes and hosts at once."""

    def register(self, torrent: Torrent, now: int) -> bool:
        """Register a torrent under all its hashes; False if one of them is already known."""

    def register_all(self, torrents: Sequence[Torrent], now: int) -> int:
        """Register many torrents in one transaction; returns how many were new."""

    def unregister(self, info_hashes: Iterable[bytes]) -> int:
        """Remove the torrents these hashes name, with all their peers; returns how many."""

    def scrape(self, info_hashes: Sequence[bytes], now: int) -> dict[bytes, SwarmStats]:
        """As AnnounceStore.scrape: the CLI asks which of a torrent's hashes the store knows."""

    def expire_peers(self, now: int) -> int:
        """Delete peers silent longer than the peer timeout; returns how many."""

    def remove_idle_open_torrents(self, now: int) -> int:
        """Remove the torrents announces registered (whitelist `open`) that have no peers and
        were added more than the peer timeout ago; returns how many."""

    def take_refresh_lock(self, owner: str, now: int, lease: int) -> bool:
        """Take the one refresh lock for `lease` seconds; False if someone else holds it."""

    def release_refresh_lock(self, owner: str, finished_at: int | None = None) -> None:
        """Give the lock back; `finished_at` records a completed refresh."""

    def last_refresh(self) -> int:
        """Unix time the last completed refresh started (0: never)."""

    def torrent_files(self) -> dict[str, tuple[int, int, bytes]]:
        """Torrents found in the directory: relative path -> (file size, mtime ns, a hash)."""

    def update_torrent_file(self, torrent: Torrent) -> None:
        """A known torrent's file moved or was touched: record its path, size and mtime."""

    def skipped_files(self) -> dict[str, tuple[int, int, str]]:
        """Files the last scan refused and reported: path -> (size, mtime ns, reason)."""

    def replace_skipped_files(self, skipped: dict[str, tuple[int, int, str]]) -> None:
        """Replace that list with this scan's."""

    def report(self, now: int) -> list[TorrentReport]:
        """Every torrent with its live counts, for the stats table and the feed."""

    def record_refresh(self, now: int, seeds: int, leechers: int, keep_history: int) -> None:
        """Snapshot the per-torrent rate baselines and add a history sample."""

    def history(self, since: int) -> list[tuple[int, int, int]]:
        """History samples (time, seeds, leechers) since a time, oldest first."""

    def close(self) -> None:
        """As AnnounceStore.close."""


class Store(AnnounceStore, Catalog, Protocol):
    """Both, as open_store returns them (one implementation, sql.SqlStore, keeps both). A
    tracker process holds it whole (wsgi.py): its batch store writes the batches and runs
    the web and background refresh, and /health reads last_refresh through the requests'."""


def open_configured(config: Config, wait_seconds: float = 30.0, pool_size: int = POOL_SIZE) -> Store:
    """The store a config names, its schema brought up to date (migrate), as the tracker
    opens it when it starts. Raises ConfigError with one line."""
    migrate(config)
    return _open(config, wait_seconds, pool_size)


def open_current(config: Config, creates: bool) -> Store:
    """The store a config names for an admin's command, its schema left as it is (schema.py:
    only migrate and the tracker's start change it): at this release's version, or, with
    `creates`, an empty database, whose tables are then created (the README's install
    refreshes before the tracker's first request). Raises SchemaError naming the command to
    run, ConfigError for a bad URL."""
    store = _open(config)
    try:
        version = schema.found_version(store)
        if version is None and creates:
            store.create_tables()
        elif version != schema.LATEST:
            raise SchemaError(schema.not_current(version))
    except BaseException:
        store.close()
        raise
    return store


def _open(config: Config, wait_seconds: float = 30.0, pool_size: int = POOL_SIZE) -> Store:
    try:
        return open_store(config.database, config.peer_timeout, config.whitelist == "open", wait_seconds,
                          config.limits.open_max_torrents, pool_size)
    except ValueError as exc:
        raise ConfigError(f"database = {masked(config.database)!r}: {exc}") from None


def migrate(config: Config) -> SchemaChange:
    """Create the tables of the database a config names, or migrate them to this release's
    schema, on a connection of its own that may wait MIGRATION_WAIT_SECONDS. Raises
    ConfigError with one line for what only the admin can fix, StoreUnavailable when the
    database cannot be reached (or another process is migrating it) now."""
    try:
        store = open_store(config.database, config.peer_timeout, wait_seconds=MIGRATION_WAIT_SECONDS, pool_size=1)
        try:
            return store.create_tables()
        finally:
            store.close()
    except (ValueError, PermissionError) as exc:
        raise ConfigError(f"database = {masked(config.database)!r}: {exc}") from None


def sqlite_file(url: str) -> str | None:
    """The file of a sqlite:/// URL, as messages show it (one leading slash); None for another scheme."""
    if not url.startswith("sqlite:"):
        return None
    return "/" + url.removeprefix("sqlite:").lstrip("/")


def masked(url: str) -> str:
    """A database URL with its password hidden, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


def open_store(url: str, peer_timeout: int, register_unknown: bool = False, wait_seconds: float = 30.0,
               open_max_torrents: int = OPEN_MAX_TORRENTS, pool_size: int = POOL_SIZE) -> Store:
    """The store a database URL names. Raises ValueError with a one-line reason.

    wait_seconds: about the longest a call waits for the database before it raises
    StoreUnavailable (the announce path wants a second or two, a batch writer more).
    pool_size: the most connections the store opens in this process, however many threads
    call it (pool.py); a call finding them all lent waits for one (up to wait_seconds)."""
    scheme = url.partition("://")[0]
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(url, peer_timeout, register_unknown, wait_seconds, open_max_torrents, pool_size)
    if scheme == "mysql":
        from .mysql import MysqlStore

        return MysqlStore(url, peer_timeout, register_unknown, wait_seconds, open_max_torrents, pool_size)
    raise ValueError(f"unknown database URL scheme {scheme!r}: use sqlite:/// or mysql://")
