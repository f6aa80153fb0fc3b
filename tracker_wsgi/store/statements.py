"""The SQL the stores share, in one place: every statement (Statements), the few whose syntax
differs between SQLite and MySQL (Dialect, which sqlite.py and mysql.py subclass), and the cap
every stored sum saturates at ({cap}, MAX_TOTAL_BYTES).

The statements stay together rather than beside their users (announce.py, catalog.py): several
are both sides' (the torrent lock order is the batch writer's and expiry's, the totals
of swarm_counts are the scrape's and the report's,
INSERT_TORRENT is `open` registration's and register_all's, SCRAPE both interfaces'), the lock
order is checked by reading them side by side, and a store renders them all in one pass.
Written once, with `?` placeholders; each store renders them for its database when it is made.
Every value is a bound parameter.
"""

from __future__ import annotations

from typing import Any

from . import schema

# Every sum of what clients report (a torrent's bytes transferred, its peers' bytes left)
# saturates here: 2 EiB, 2048 peers at protocol.COUNTER_CAP. Two of them added still fit
# signed 64 bits, so a sum capped after each addition never overflows a column or a bind.
MAX_TOTAL_BYTES = 2**61


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

    # Add (torrent_id, host, completions, bytes) to the host's own swarm_counts row.
    add_counts = ""

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


def _rendered(text: Any, dialect: type[Dialect]) -> Any:
    """A statement (or a tuple or dict of them) as a database runs it (Dialect.render)."""
    if isinstance(text, str):
        return dialect.render(text)
    if isinstance(text, dict):
        return {k: _rendered(v, dialect) for k, v in text.items()}
    return tuple(_rendered(v, dialect) for v in text)


class Statements:
    """Every statement the stores share, one text each: `?` placeholders, and `{least}`,
    `{total}`, `{cap}` (see Dialect). A store renders them for its database once, when it is
    made (`Statements(dialect)`); a `{}` is a list filled in per call, with Dialect.marks or
    Dialect.pairs."""

    # A swarm's totals: what torrents kept before per-host counts, and each host's row.
    _DOWNLOADED = "t.downloaded + COALESCE((SELECT SUM(c.downloaded) FROM swarm_counts c WHERE c.torrent_id = t.id), 0)"
    _TRANSFERRED = (
        "{least}(t.transferred + COALESCE((SELECT {total}(c.transferred) FROM swarm_counts c "
        "WHERE c.torrent_id = t.id), 0), {cap})"
    )
    # Peers of torrent t by state (index by_state_rank: a range count each).
    _COUNTS = ", ".join(f"(SELECT COUNT(*) FROM peers p WHERE p.torrent_id = t.id AND p.state = {state})"
                        for state in (1, 0, 2))  # seeders, leechers, partial seeds
    # A swarm's completions and live peers in one statement (one consistent read), by
    # torrent id or, for a swarm the process does not hold yet, by info hash.
    _SWARM = (
        "SELECT t.id, t.name, " + _DOWNLOADED + ", "
        "p.peer_id, p.ip, p.port, p.state, p.peer_key, p.bytes_left, p.last_seen, p.completed, p.stamp "
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
        "SELECT peer_id, ip, port, state, peer_key, bytes_left, last_seen, completed, stamp FROM peers "
        "WHERE torrent_id = ? AND last_seen >= ? AND state < 3"
    )
    SWARM_PEERS = {
        "from": _SWARM_PEERS + " AND peer_rank >= ? ORDER BY peer_rank LIMIT ?",
        "below": _SWARM_PEERS + " AND peer_rank < ? ORDER BY peer_rank LIMIT ?",
    }
    # A large swarm's stored peers by state: what the host does not hold of it.
    STATE_COUNTS = "SELECT state, COUNT(*) FROM peers WHERE torrent_id = ? AND state < 3 GROUP BY state"
    # Every transaction that writes peers locks their torrents' rows first, in id order (a
    # lock, never a write: the row is no hot spot on a cluster): writers of one swarm on one
    # database node take turns, and an unregistration waits for them.
    LOCK_TORRENT = "SELECT id FROM torrents WHERE id = ?"
    LOCK_TORRENTS = "SELECT id FROM torrents WHERE id IN ({}) ORDER BY id"
    LOCK_ALL_TORRENTS = "SELECT id FROM torrents ORDER BY id"
    FIND_PEER = "SELECT ip, peer_key, bytes_left FROM peers WHERE torrent_id = ? AND peer_id = ? AND state < 3"
    STORED_PEERS = (
        "SELECT torrent_id, peer_id, ip, peer_key, bytes_left, completed, state, stamp FROM peers{} "
        "WHERE (torrent_id, peer_id) IN ({})"
    )
    NEW_LIVES = "UPDATE peers SET completed = 0 WHERE (torrent_id, peer_id) IN ({})"
    # Conditional, so two racing completions of one peer count once.
    MARK_COMPLETED = (
        "UPDATE peers SET completed = 1, changed = ? WHERE torrent_id = ? AND peer_id = ? AND completed = 0"
    )
    DOWNLOADED = "SELECT " + _DOWNLOADED + " FROM torrents t WHERE t.id = ?"
    REGISTERED = "SELECT id FROM torrents WHERE id IN ({})"
    # What other hosts wrote, by when (index by_changed): a host's own rows only where they
    # carry a completion (the store may have counted one as its batch landed).
    CHANGES = (
        "SELECT torrent_id, peer_id, ip, port, state, peer_key, bytes_left, last_seen, completed, stamp, changed "
        "FROM peers WHERE changed > ? AND (stamp % 65536 <> ? OR completed = 1) ORDER BY changed LIMIT ?"
    )
    # The totals of swarms the changes touched: completions, and peers by state.
    SWARM_TOTALS = "SELECT t.id, " + _DOWNLOADED + ", " + _COUNTS + " FROM torrents t WHERE t.id IN ({})"
    INSERT_TORRENT = (
        "INSERT INTO torrents (name, size, path, added, file_size, file_mtime, info_sha256) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    INSERT_HASH = "INSERT INTO info_hashes (info_hash, torrent_id) VALUES (?, ?)"
    COUNT_TORRENTS = "SELECT COUNT(*) FROM torrents"
    SCRAPE = (
        "SELECT h.info_hash, t.name, " + _DOWNLOADED + ", " + _COUNTS + " "
        "FROM info_hashes h JOIN torrents t ON t.id = h.torrent_id"
    )
    TORRENT_IDS = "SELECT DISTINCT torrent_id FROM info_hashes WHERE info_hash IN ({})"
    DELETE_TORRENT = (
        "DELETE FROM peers WHERE torrent_id = ?",
        "DELETE FROM swarm_counts WHERE torrent_id = ?",
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
        "DELETE FROM swarm_counts WHERE torrent_id IN ({})",
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
        "t.path, t.size, t.file_size, t.added, " + _DOWNLOADED + ", " + _TRANSFERRED + ", t.last_transfer, "
        "t.last_done, t.info_sha256 FROM torrents t"
    )
    REPORT_PEERS = (
        "SELECT torrent_id, state, COUNT(*), {total}(bytes_left), {total}(downloaded) FROM peers "
        "WHERE last_seen >= ? AND state < 3 GROUP BY torrent_id, state"
    )
    # The rate snapshot: what the next refresh's "current average rate" is measured from.
    SNAPSHOT_RATES = (
        "UPDATE torrents AS t SET last_done = " + _DOWNLOADED + ", last_transfer = {least}(" + _TRANSFERRED + " + "
        "(SELECT COALESCE({total}(downloaded), 0) FROM peers WHERE peers.torrent_id = t.id "
        "AND peers.last_seen >= ? AND peers.state < 3), {cap})"
    )
    ADD_HISTORY = (
        "DELETE FROM history WHERE sampled_at = ? OR sampled_at < ?",
        "INSERT INTO history (sampled_at, seeds, leechers) VALUES (?, ?, ?)",
    )
    HISTORY = "SELECT sampled_at, seeds, leechers FROM history WHERE sampled_at >= ? ORDER BY sampled_at"

    # How schema_version records a creation or a migration (SchemaRunner._migrate).
    RECORD_VERSION = f"INSERT INTO {schema.VERSION_TABLE} (version, applied_at, description) VALUES (?, ?, ?)"

    def __init__(self, dialect: type[Dialect]):
        for name, text in vars(Statements).items():
            if name.isupper():
                setattr(self, name, _rendered(text, dialect))
