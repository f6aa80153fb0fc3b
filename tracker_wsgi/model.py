"""The tracker's domain values: what a request asks and what an answer says.

Every value here is frozen and already valid: `protocol.parse_*` builds them from a query
and refuses anything else with a `ClientError`. The errors the core and the store raise
are here too, as types without text (refusals.py gives each its words). Binary fields (info hashes, peer ids, keys,
packed addresses) are always `bytes`, never `str`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple


class ClientError(Exception):
    """A failure the client caused: it is answered with a bencoded `failure reason`.

    The core and the store raise the typed refusals below, which carry no text: the
    edge chooses the text for each type (refusals.py). Only the edge itself (protocol.py's
    parsing, wsgi.py's routes, refresh_auth.py) raises a ClientError with its text.
    Texts are fixed strings, never request data, so nothing a client sends is ever echoed
    back or logged as an error.
    """

    def __init__(self, reason: str = ""):
        super().__init__(reason)
        self.reason = reason


class UnknownTorrent(ClientError):
    """The info hash names no registered torrent (and the store registers none)."""


class PeerConflict(ClientError):
    """The key rule (swarm.conflicts): the peer_id is held by another address, and the
    announce does not carry the key it registered."""


class TooManyPeers(ClientError):
    """The announcing address holds its share of the swarm's peers (limits.Limits)."""


class TrackerFull(ClientError):
    """Whitelist mode `open`: the store holds all the torrents it may, and registers none."""


class Shed(Exception):
    """The process takes no more of something now (its argument says what, for the log):
    the client gets `retry in` (BEP 31), not a refusal. Raised from a StoreUnavailable when
    the database's silence is the reason: that is then the cause the client is told."""


# Why the database cannot be used, as StoreUnavailable.cause: a small fixed set, each with
# what the admin's one log line says of it and, where a setting fixes it, which.
ACCESS_DENIED, UNKNOWN_DATABASE, UNREACHABLE, TIMEOUT, LOST, TOO_MANY_CONNECTIONS, TLS, FAILED = (
    "access denied", "unknown database", "unreachable", "timeout", "connection lost", "too many connections",
    "tls", "failed")
OUTAGE_CAUSES: dict[str, str] = {
    ACCESS_DENIED: "the database refused the tracker's user (its login or its privileges): check the user "
                   "and password of `database` in the tracker's config file (or its option_file) and the "
                   "user's GRANTs",
    UNKNOWN_DATABASE: "the database named in `database` does not exist: create it (README: Production "
                      "install) or fix `database` in the tracker's config file",
    UNREACHABLE: "the database server cannot be reached: is it running, and are the host, port or socket "
                 "of `database` in the tracker's config file right?",
    TIMEOUT: "the database did not answer in time",
    LOST: "the database server closed the connection (a restart?)",
    TOO_MANY_CONNECTIONS: "the database server takes no more connections: raise its max_connections "
                          "(README: MySQL connections, 10 per tracker process)",
    TLS: "the TLS handshake with the database failed: check ssl_ca, ssl_cert and ssl_key of `database` in "
         "the tracker's config file",
    FAILED: "the database failed",
}


class StoreUnavailable(Exception):
    """The database cannot be used now: it cannot be reached, a wait for it timed out, or
    the connection dropped and the one retry failed. Raised by the store, chained from the
    driver's error. Nothing is wrong with what was asked: asking again later may succeed.

    `cause` (one of OUTAGE_CAUSES) is what the admin's log line names; the stores set it
    where they know it (store/mysql.py by the server's error number), else FAILED."""

    def __init__(self, message: str = "", cause: str | None = None):
        super().__init__(message)
        self.cause = cause or FAILED

    def explain(self) -> str:
        """One line for the admin: the cause, what to fix, and the driver's own words."""
        detail = " ".join(str(self).split())
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[:MAX_DETAIL_CHARS - 3] + "..."
        return f"{OUTAGE_CAUSES[self.cause]} ({detail})" if detail else OUTAGE_CAUSES[self.cause]


MAX_DETAIL_CHARS = 200  # the driver's message in a log line; a message may quote a whole SQL statement


class Event(enum.Enum):
    NONE = ""
    STARTED = "started"
    STOPPED = "stopped"
    COMPLETED = "completed"
    PAUSED = "paused"  # BEP 21: sent on every announce while the peer is a partial seed


class PeerState(enum.IntEnum):
    """What a peer is in its swarm; stored as a small integer."""

    LEECHER = 0
    SEED = 1
    PARTIAL_SEED = 2  # BEP 21: incomplete, but wants nothing more


# The members again, as module names: the announce path tests several per request, and
# reading one through its class (EnumType's attribute lookup) costs ten times a global.
STOPPED, COMPLETED, PAUSED = Event.STOPPED, Event.COMPLETED, Event.PAUSED
LEECHER, SEED, PARTIAL_SEED = PeerState.LEECHER, PeerState.SEED, PeerState.PARTIAL_SEED


class AnnounceRequest(NamedTuple):  # NamedTuples here: built for every announce, 4x cheaper
    info_hash: bytes  # 20 bytes
    peer_id: bytes  # 20 bytes
    ip: bytes  # packed address the peer is reached at: 4 bytes (IPv4) or 16 (IPv6)
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: Event
    numwant: int  # already capped by policy
    compact: bool
    no_peer_id: bool
    key: bytes | None  # opaque; aria2 sends binary
    tracker_id: bytes | None
    client_ip: bytes  # packed address the request came from (BEP 24 `external ip`)
    warning: str | None = None  # set when part of the request was ignored

    @property
    def state(self) -> PeerState:
        if self.event is PAUSED:
            return PARTIAL_SEED
        return SEED if self.left == 0 else LEECHER


class Peer(NamedTuple):
    """A peer as answers hand it out. A NamedTuple, not a dataclass: views hold thousands,
    and a frozen dataclass costs three times as much to build. Make one with `make_peer`."""

    ip: bytes  # packed, 4 or 16 bytes
    port: int
    peer_id: bytes
    compact: bytes  # BEP 23 / BEP 7: the packed address and the port, big-endian


def make_peer(ip: bytes, port: int, peer_id: bytes) -> Peer:
    # The compact form is built once, when the peer enters a view, not in every answer.
    return Peer(ip, port, peer_id, ip + port.to_bytes(2, "big"))


class PeerWrite(NamedTuple):
    """What one announce writes to its peer's row; the store writes many of them at once."""

    peer_id: bytes
    ip: bytes
    port: int
    key: bytes | None  # the key to keep: the announce's, or the one the peer registered
    state: PeerState
    left: int
    uploaded: int
    downloaded: int
    last_seen: int
    stopped: bool  # the peer leaves the swarm: its row is deleted
    # The stored row as the host knew it when it took the first of the peer's unwritten
    # announces: (address, key). The host's key rule passed from there, so the store takes
    # the write over a row that still says so; over another row, the key rule decides
    # (another host wrote it). None: a peer new to the host.
    base: tuple[bytes, bytes | None] | None = None
    fresh: bool = False  # rejoined after a stop its row never saw: a new life, whose completion counts anew
    # When the announce was answered: the host's clock in ms x 65536 + the host's id (ties
    # broken by host). The store never lets a write replace a newer one (store/announce.py).
    stamp: int = 0
    # The stamp of the peer's record the host held, alive, when it answered (0: not held). A
    # stop over a tombstone newer than that ended the life the host knew: the same life's
    # stop again (a client's retry at another host), not a new life.
    held_stamp: int = 0


class SwarmSnapshot(NamedTuple):
    """A swarm as the store holds it: its counters and up to a limit of its live peers."""

    torrent_id: int
    name: str
    downloaded: int
    seeders: int  # stored peers by state (of a large swarm: more than `peers` holds)
    leechers: int
    partial_seeds: int
    # peer_id, ip, port, state, key, left, last_seen, completed, stamp
    peers: list[tuple[bytes, bytes, int, int, bytes | None, int, int, bool, int]]


class PeerChange(NamedTuple):
    """A peer's row as a host (this one or another) wrote it: what the other hosts take in
    when it is newer (by `stamp`) than what they hold. State 3 is a stop's tombstone."""

    torrent_id: int
    peer_id: bytes
    ip: bytes
    port: int
    state: int
    key: bytes | None
    left: int
    last_seen: int
    completed: bool
    stamp: int
    changed: int  # when the row was written (the cursor of the reads of changes)


class SwarmTotals(NamedTuple):
    """A swarm's totals in the database: completions, and stored peers by state."""

    downloaded: int
    seeders: int
    leechers: int
    partial_seeds: int


class SetAside(NamedTuple):
    """An announce a batch did not write; the batch wrote everything else."""

    torrent_id: int
    peer_id: bytes
    reason: str  # KEY_RULE_REFUSED, or the error that writing it alone raised


# The reason of a write from another address without the peer's key (swarm.plan_announce's
# rule, checked again against the stored row).
KEY_RULE_REFUSED = "another address without the peer's key"


class BatchResult(NamedTuple):
    written: set[int]  # each still registered torrent the batch wrote
    set_aside: list[SetAside]


class StoredPeer(NamedTuple):
    """A peer's stored row, as the key rule reads it (a swarm.KnownPeer)."""

    ip: bytes
    key: bytes | None
    left: int


class SwarmStats(NamedTuple):  # NamedTuples: one or two are built per request
    complete: int  # seeds
    incomplete: int  # leechers and partial seeds
    downloaded: int  # completions ever counted
    downloaders: int  # BEP 21: leechers that still download (incomplete minus partial seeds)
    name: str = ""


class AnnounceResult(NamedTuple):
    stats: SwarmStats
    # The peers handed out. For a compact request (nearly all) their compact forms (BEP 23,
    # BEP 7), as the view keeps them; for a dictionary-model request, Peers.
    peers: Sequence[bytes] | Sequence[Peer]


@dataclass(frozen=True, slots=True)
class Torrent:
    """A registered torrent: one swarm, reachable by one or two info hashes."""

    info_hash: bytes  # v1 SHA-1, or the truncated SHA-256 of a v2-only torrent
    info_hash_v2: bytes | None  # truncated SHA-256 of a v2 or hybrid torrent (BEP 52)
    name: str
    size: int  # total length of the content, bytes
    path: str = ""  # .torrent file: relative to the torrent directory, or absolute if added by hand
    file_size: int = 0  # the .torrent file's size and mtime (ns) when it was parsed
    file_mtime: int = 0
    info_sha256: bytes | None = None  # v2 and hybrid: the whole SHA-256 of info (BEP 52), for urn:btmh

    @property
    def info_hashes(self) -> tuple[bytes, ...]:
        return tuple(h for h in (self.info_hash, self.info_hash_v2) if h)


@dataclass(frozen=True, slots=True)
class TorrentReport:
    """One torrent's line in the stats table and the RSS feed, as of one refresh."""

    info_hash: bytes  # the v1 SHA-1, or a v2-only torrent's truncated SHA-256
    name: str
    path: str
    size: int
    file_size: int
    added: int
    seeds: int
    leechers: int  # still downloading
    partial_seeds: int
    downloaded: int
    transferred: int  # bytes downloaded, by departed and live peers (every byte moved, once)
    bytes_left: int  # summed over peers that are not seeds
    last_transfer: int  # `transferred` at the previous refresh
    last_done: int  # `downloaded` at the previous refresh
    info_sha256: bytes | None = None  # v2 and hybrid: the whole SHA-256 of info (BEP 52)
