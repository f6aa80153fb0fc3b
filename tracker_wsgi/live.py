"""Swarms kept in the daemon process: announces answered from memory, written in batches.

Each Apache daemon process keeps a view of every swarm it serves: the swarm's counters,
the live peers read from the store (up to VIEW_PEERS) and every peer that announced to
this process since. An announce (nearly all traffic: re-announces, `started`, `stopped`)
is answered from the view with no database round trip; what it changed waits until the
flush thread writes every waiting announce, every `sync_interval` seconds and when the
process exits. XBT and Ocelot do the same (peer-trackers.md section 4); they run one
process per host. We run two (apache/tracker.conf sends each announce to the one its info
hash names, so a swarm normally lives in one of them) and several hosts per database, so:

- A completion (`completed`, or a leecher the view knew reporting left=0) is written
  through and committed before the answer: a killed process never loses one.
- Every transaction that writes a swarm's peers moves the torrent row's `version` on by
  one (store/__init__.py). A batch that finds the version its view was built on (nobody
  else wrote the swarm since) leaves the view as it is: one process alone never reads a
  busy swarm again. A batch that finds another version reads the swarm again, in the
  flush thread, off the requests' path. A view nobody announced to for `sync_interval` is
  read again by its next announce. So a peer another process or host heard from is
  handed out within about 2 x sync_interval.
- Counts: every batch recounts the swarms it wrote from their stored peers; the view
  takes those counts, moved by the announces it answered since. Between batches a view
  that holds only part of its swarm counts a re-announcing peer it did not hold as new,
  until the next batch corrects it.
- A silent peer leaves the view's peer lists once it is `peer_timeout` old (checked every
  PRUNE_SECONDS) and stays in the counts until the refresh expires it, as the original.
- A view holds at most VIEW_LIMIT peers; beyond that, peers whose announces are already
  written make room (they stay in the store and the counts).
- While the database is down or hung, swarms this process holds go on being answered from
  memory; only a completion, a swarm it has not read yet and a scrape of one get `retry
  in`. Requests reach the database through a StoreGate: a short wait, a few threads at a
  time, and none for a while after it failed.
- A process killed without warning loses at most its last sync_interval of announces:
  peers re-announce anyway, and a lost `stopped` peer leaves at expiry.
- The key rule (swarm.plan_announce) is checked before the answer: against the view when
  it holds the peer, else against the stored row (store.find_peer). Only while the
  database cannot say is a new peer taken on trust; if the batch then finds the row
  belongs to another address, the write is set aside and the peer leaves the view.
- Bounds (limits.Limits, from the config): views, peers held, unwritten announces, peers
  per address in a swarm, completions and (whitelist `open`) new swarms per address and
  minute, and the process's data size against its memory-limit. Past one, new swarms and
  peers get `retry in` (limits.Shed) while known peers are answered as ever.
"""

from __future__ import annotations

import atexit
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

from .faultlog import FaultLog
from .limits import Limits, MemoryGuard, RateWindow, Shed, address_key
from .model import (
    LEECHER,
    STOPPED,
    AnnounceRequest,
    AnnounceResult,
    BatchResult,
    ClientError,
    Peer,
    PeerState,
    PeerWrite,
    SetAside,
    SwarmSnapshot,
    SwarmStats,
    StoredPeer,
    StoreUnavailable,
    SwarmWritten,
    make_peer,
)
from .protocol import TOO_MANY_PEERS, UNKNOWN_TORRENT
from .store import Store
from .swarm import KnownPeer, PeerUpdate, plan_announce, swarm_stats

VIEW_PEERS = 1000  # peers read into a view: plenty to sample a numwant of 200 from
VIEW_LIMIT = 2000  # peers a view holds at most: bounds a huge swarm's memory
IDLE_SECONDS = 600  # a swarm nobody announced to for this long leaves the process's memory
PRUNE_SECONDS = 60  # how often a view drops its silent peers
TURN = 200  # views the flush thread handles per hold of the views' lock
# Over TRIM_AT of a limit (limits.Limits), the flush thread brings views and peers down to
# TRIM_TO of it, so new swarms and peers find room; at the limit itself they are refused.
TRIM_AT, TRIM_TO = 0.9, 0.8
DB_WAITERS = 8  # request threads (of mod_wsgi's 15) that may wait for the database at once
DB_QUEUE_SECONDS = 0.5  # how long a request waits for one of those slots (a busy moment, not a hang)
DB_AWAY_SECONDS = 2.0  # after the database failed, the request path leaves it alone this long,
DB_AWAY_MAX_SECONDS = 16.0  # doubled at each failure in a row, up to this
T = TypeVar("T")
SET_ASIDE_SHOWN = 5  # set-aside writes named in a batch's log line (the count says the rest)
_log = logging.getLogger(__name__)


def _peer_write(request: AnnounceRequest, update: PeerUpdate, now: int) -> PeerWrite:
    return PeerWrite(request.peer_id, request.ip, request.port, update.key, request.state, request.left,
                     request.uploaded, request.downloaded, now, update.remove)


class Member(NamedTuple):
    """A peer in a view (a swarm.KnownPeer)."""

    key: bytes | None
    left: int
    state: PeerState
    last_seen: int
    peer: Peer  # what answers hand out

    @property
    def ip(self) -> bytes:
        return self.peer.ip


class Swarm:
    """One torrent's view: counters and peers, in pools that sample in O(numwant)."""

    __slots__ = ("torrent_id", "hashes", "name", "downloaded", "counts", "unwritten", "members",
                 "pools", "pool_ids", "positions", "version", "loaded_at", "loading", "used_at", "pruned_at",
                 "pending", "flushing", "stats_cache", "per_address")

    def __init__(self, torrent_id: int):
        self.torrent_id = torrent_id
        self.hashes: set[bytes] = set()
        self.name = ""
        self.downloaded = 0
        self.counts = [0, 0, 0]  # peers by PeerState: leechers, seeds, partial seeds
        self.unwritten = [0, 0, 0]  # what `pending` changed in counts: a batch's recount lacks it
        self.members: dict[bytes, Member] = {}
        # pools[0]: leechers (what a seed is sent); pools[1]: seeds and partial seeds. A pool
        # holds its peers' compact forms, which nearly every answer sends as they are, and
        # pool_ids their peer_ids in the same order.
        self.pools: tuple[list[bytes], list[bytes]] = ([], [])
        self.pool_ids: tuple[list[bytes], list[bytes]] = ([], [])
        self.positions: dict[bytes, int] = {}  # peer_id -> index in its pool
        self.version = -1  # the stored version the view is built on; -1: unknown
        self.loaded_at = -1  # when the view was last known to match the store
        self.loading = False
        self.used_at = 0  # when it last answered an announce
        self.pruned_at = 0
        self.pending: dict[bytes, PeerWrite] = {}  # announces not yet given to the store
        self.flushing: dict[bytes, PeerWrite] = {}  # given to a batch not yet committed
        self.stats_cache: SwarmStats | None = None  # stats() until counts, downloaded or name change
        self.per_address: dict[bytes, int] = {}  # members by limits.address_key

    def install(self, snapshot: SwarmSnapshot, now: int) -> None:
        """Replace the view with the store's, then replay this process's unwritten announces."""
        self.name, self.downloaded, self.version = snapshot.name, snapshot.downloaded, snapshot.version
        self.stats_cache = None
        self.counts = [snapshot.leechers, snapshot.seeders, snapshot.partial_seeds]
        self.members, self.pools, self.pool_ids, self.positions = {}, ([], []), ([], []), {}
        self.per_address = {}
        for peer_id, ip, port, state, key, left, last_seen in snapshot.peers:  # already counted
            self._add(peer_id, Member(key, left, PeerState(state), last_seen, make_peer(ip, port, peer_id)))
        for write in self.flushing.values():
            self.apply(write)
        self.unwritten = [0, 0, 0]
        for write in self.pending.values():
            self.apply(write)
        self.loaded_at = self.pruned_at = now

    def is_fresh(self, now: int, sync_interval: int) -> bool:
        """Known to match the store within sync_interval, or about to be checked by the next
        batch (it holds unwritten announces): a batch comes a little over sync_interval
        after the one before, and a busy swarm must not be read again in that gap."""
        return now - self.loaded_at < sync_interval or bool(self.pending or self.flushing)

    def written(self, result: SwarmWritten, now: int) -> bool:
        """Take a batch's recount if the view was built on the version it wrote over;
        False if another writer came in between (the view must be read again)."""
        if result.version_before != self.version:
            return False
        self.version = result.version
        self.counts = [result.leechers + self.unwritten[0], result.seeders + self.unwritten[1],
                       result.partial_seeds + self.unwritten[2]]
        self.downloaded = max(self.downloaded, result.downloaded)
        self.stats_cache = None
        self.loaded_at = now
        return True

    def apply(self, write: PeerWrite) -> None:
        """Move the peer to its new state in the view (or out of it) and the counts with it."""
        old = self.members.get(write.peer_id)
        if (old is not None and old.state is write.state and not write.stopped
                and old.peer.ip == write.ip and old.peer.port == write.port):
            # The usual re-announce: nothing counted changes, and the peer keeps its place.
            self.members[write.peer_id] = Member(write.key, write.left, old.state, write.last_seen, old.peer)
            return
        self.stats_cache = None
        if old is not None:
            self._forget_peer(write.peer_id)
            self.counts[old.state] -= 1
            self.unwritten[old.state] -= 1
        if not write.stopped:
            old_peer = old and old.peer
            # A re-announce from the same address keeps its Peer (and its compact form).
            if old_peer is None or old_peer.ip != write.ip or old_peer.port != write.port:
                old_peer = make_peer(write.ip, write.port, write.peer_id)
            self._add(write.peer_id, Member(write.key, write.left, write.state, write.last_seen, old_peer))
            self.counts[write.state] += 1
            self.unwritten[write.state] += 1

    def admits(self, ip: bytes, limit: int) -> bool:
        """Whether a new peer from this address may join (its address holds fewer than
        `limit` of the view's peers)."""
        return self.per_address.get(address_key(ip), 0) < limit

    def _add(self, peer_id: bytes, member: Member) -> None:
        self.members[peer_id] = member
        address = address_key(member.peer.ip)
        self.per_address[address] = self.per_address.get(address, 0) + 1
        which = member.state is not LEECHER
        pool = self.pools[which]
        self.positions[peer_id] = len(pool)
        pool.append(member.peer.compact)
        self.pool_ids[which].append(peer_id)

    def _unpool(self, peer_id: bytes, state: PeerState) -> None:
        which = state is not LEECHER
        pool, ids = self.pools[which], self.pool_ids[which]
        index = self.positions.pop(peer_id)
        last, last_id = pool.pop(), ids.pop()
        if index < len(pool):
            pool[index], ids[index] = last, last_id
            self.positions[last_id] = index

    def _forget_peer(self, peer_id: bytes) -> None:
        """Out of the view, not out of the counts: the store still holds the peer."""
        member = self.members.pop(peer_id)
        self._unpool(peer_id, member.state)
        address = address_key(member.peer.ip)
        left = self.per_address[address] - 1
        if left:
            self.per_address[address] = left
        else:
            del self.per_address[address]

    def make_room(self, limit: int, rng: random.Random) -> None:
        """Forget random peers whose announces are already written, down to `limit` (a few
        tries per call: unwritten peers stay)."""
        for _ in range(4):
            if len(self.members) <= limit:
                return
            ids = max(self.pool_ids, key=len)
            peer_id = ids[int(rng.random() * len(ids))]
            if peer_id not in self.pending and peer_id not in self.flushing:
                self._forget_peer(peer_id)

    def forget(self, peer_id: bytes) -> None:
        """A peer whose write the store refused leaves the view (the batch's recount
        corrects the counts)."""
        if peer_id in self.members:
            self._forget_peer(peer_id)

    def forget_written(self, most: int) -> int:
        """Forget up to `most` peers whose announces are written; returns how many."""
        chosen = [p for p in self.members if p not in self.pending and p not in self.flushing][:most]
        for peer_id in chosen:
            self._forget_peer(peer_id)
        return len(chosen)

    def prune(self, cutoff: int) -> None:
        """Forget peers silent since before `cutoff`: they are never handed out."""
        for peer_id in [p for p, m in self.members.items() if m.last_seen < cutoff]:
            self._forget_peer(peer_id)

    def stats(self) -> SwarmStats:
        if self.stats_cache is None:
            self.stats_cache = swarm_stats(*self.counts, self.downloaded, self.name)
        return self.stats_cache

    def sample(self, asker: bytes, wants_seeds: bool, numwant: int, rng: random.Random,
               compact: bool = True) -> list[bytes] | list[Peer]:
        """Up to numwant peers from a random place in the pools, never the asker: their
        compact forms, or (compact=False) their Peers. A seed is sent only leechers (BEP 3
        practice, and BitTornado's). A window, not random.sample: slices cost a few
        microseconds, numwant random draws ten times that, and pool order is shuffled by
        every peer that leaves (see _unpool)."""
        leechers, others = self.pools if compact else self.pool_ids
        split = len(leechers)
        total = split + len(others) if wants_seeds else split
        # Where the asker is in leechers + others (None: not among what is sampled).
        at = self.positions.get(asker)
        if at is not None and self.members[asker].state is not LEECHER:
            at = at + split if wants_seeds else None
        if total <= numwant + (at is not None):  # everyone
            chosen = leechers + others if wants_seeds else leechers[:]
            if at is not None:
                del chosen[at]
        else:
            start = int(rng.random() * total)
            skip = (at - start) % total if at is not None else numwant  # the asker's place in the window
            want = numwant + 1 if skip < numwant else numwant
            chosen = []
            while want:  # at most three slices: the end of one pool, the other, the wrap
                part = leechers[start:start + want] if start < split else others[start - split:start - split + want]
                chosen += part
                want -= len(part)
                start = (start + len(part)) % total
            if skip < numwant:
                del chosen[skip]
        return chosen if compact else [self.members[peer_id].peer for peer_id in chosen]


class StoreGate:
    """The request path's way to the database. At most DB_WAITERS threads wait for it at
    once; once it has failed, none does for DB_AWAY_SECONDS (doubling while it keeps
    failing), and then a single call tries it again. So a database that hangs holds a few
    requests for the store's short wait, not every thread: the rest answer from memory.
    Thread-safe; its races only let a second call try."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._slots = threading.BoundedSemaphore(DB_WAITERS)
        self._away_until = 0.0
        self._failures = 0  # in a row

    def call(self, call: Callable[..., T], *args: Any) -> T:
        now = self.clock()
        if now < self._away_until:
            raise StoreUnavailable("the database failed a moment ago")
        if self._failures:  # this call tries it again; the others wait for its verdict
            self._away_until = now + DB_AWAY_SECONDS
        if not self._slots.acquire(timeout=DB_QUEUE_SECONDS):
            raise StoreUnavailable("every database slot is taken")
        try:
            result = call(*args)
        except StoreUnavailable:
            self.failed()
            raise
        finally:
            self._slots.release()
        self.works()
        return result

    def failed(self) -> None:
        self._failures += 1
        self._away_until = self.clock() + min(DB_AWAY_MAX_SECONDS, DB_AWAY_SECONDS * 2 ** (self._failures - 1))

    def works(self) -> None:
        if self._failures:
            self._failures, self._away_until = 0, 0.0


class Held(NamedTuple):
    """What a process holds (metrics.py counts it)."""

    swarms: int  # views
    peers: int  # peers in them
    unwritten: int  # announces answered, not written yet
    failing: bool  # the last batch failed


class LiveSwarms:
    """The swarms of one process, in front of the store. Thread-safe.

    Locking: `_lock` guards every view and the coordinator's tables (`_by_hash`, `_by_id`,
    `_dirty`, `_unwritten`); it is never held across a store call. `_flush_lock` lets one
    batch run at a time; it is taken before `_lock`, never after. A view's `members` dict is
    read without the lock in one place (announce's `members.get`), a single dict read,
    atomic under the GIL; whatever it returns is checked again under the lock.
    """

    def __init__(
        self,
        store: Store,
        sync_interval: int,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        limits: Limits = Limits(),
        batch_store: Store | None = None,
        memory: MemoryGuard | None = None,
        faults: FaultLog | None = None,
    ):
        self.store = store  # the requests' store: short waits (wsgi.REQUEST_WAIT_SECONDS)
        self.batch_store = batch_store or store  # the flush thread's: waits as long as it must
        self.sync_interval = sync_interval
        self.faults = faults or FaultLog(_log.error)
        self.rng = rng or random.Random()
        self.clock = clock
        self.limits = limits
        self.memory = memory or MemoryGuard()
        self._registrations = RateWindow(limits.new_swarms_per_minute) if store.register_unknown else None
        self._completions = RateWindow(limits.completions_per_minute)
        self._lock = threading.Lock()  # guards every view; never held across a store call
        self._flush_lock = threading.Lock()  # one batch at a time
        self._by_hash: dict[bytes, Swarm] = {}
        self._by_id: dict[int, Swarm] = {}
        self._dirty: dict[int, Swarm] = {}  # swarms with pending announces
        self._unwritten = 0  # announces in views' pending and flushing: recounted every batch
        self._held_peers = 0  # peers in all views: recounted every batch
        self._gate = StoreGate()
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()
        self._failing = False
        # Told how long each batch took and whether it was written (metrics.py), in the flush thread.
        self.on_flush: Callable[[float, bool], None] = lambda seconds, written: None

    # -- announces and scrapes --------------------------------------------------------------

    def announce(self, request: AnnounceRequest, now: int) -> AnnounceResult:
        if self._flusher is None and not self._closed.is_set():
            self._start_flusher()
        with self._lock:
            swarm = self._by_hash.get(request.info_hash)
            if swarm is not None and (swarm.loading or swarm.is_fresh(now, self.sync_interval)):
                member = swarm.members.get(request.peer_id)
                if member is not None:
                    # Nearly every announce: a peer this process holds, in a view it holds,
                    # and nothing to write through.
                    update = plan_announce(request, member)  # raises PEER_CONFLICT
                    if not update.counts_completion:
                        return self._take(swarm, request, _peer_write(request, update, now))
        # A swarm to read first, a peer the view does not hold, or a completion to write
        # through: store calls, outside the lock.
        swarm = self._swarm(request, now)
        known: KnownPeer | None = swarm.members.get(request.peer_id)  # one dict read: atomic
        if known is None:
            if request.event is not STOPPED:
                with self._lock:
                    self._admit(swarm, request.ip)
            # The key rule holds whether or not the view holds the peer: a peer the view
            # dropped (or another process or host took) is in the store.
            known = self._stored_peer(swarm, request.peer_id)
            if known is None and request.event is STOPPED:
                # Nothing to stop; recording it would let random peer_ids grow the backlog.
                with self._lock:
                    return AnnounceResult(swarm.stats(), [])
        update = plan_announce(request, known)
        write = _peer_write(request, update, now)
        if update.counts_completion:
            if not self._completions.allow(request.ip):
                raise Shed("completions from this address")
            try:
                downloaded = self.ask_store(self.store.write_through, swarm.torrent_id, write, True)
            except ClientError as exc:
                if exc.reason == UNKNOWN_TORRENT:
                    self._forget(swarm)
                raise
        with self._lock:
            # A write through moved the stored version on, so the next batch reads the swarm
            # again (its recount may or may not hold this write; completions are rare).
            if update.counts_completion:
                swarm.downloaded = max(swarm.downloaded, downloaded)
                swarm.stats_cache = None
            return self._take(swarm, request, write)

    def held(self) -> Held:
        with self._lock:
            return Held(len(self._by_id), self._held_peers, self._unwritten, self._failing)

    def _admit(self, swarm: Swarm, ip: bytes) -> None:
        """Refuse a new peer beyond its address's share of the swarm, or when the process
        holds all it may (lock held)."""
        if not swarm.admits(ip, self.limits.peers_per_address):
            raise ClientError(TOO_MANY_PEERS)
        if (self._unwritten >= self.limits.max_unwritten or self._held_peers >= self.limits.max_peers
                or self.memory.full()):
            raise Shed("peers")

    def _stored_peer(self, swarm: Swarm, peer_id: bytes) -> StoredPeer | None:
        """The stored row of a peer the view does not hold; None if there is none, or if
        the database cannot say now (the batch then checks the key rule, see _set_aside)."""
        try:
            return self.ask_store(self.store.find_peer, swarm.torrent_id, peer_id)
        except StoreUnavailable:
            return None

    def _take(self, swarm: Swarm, request: AnnounceRequest, write: PeerWrite) -> AnnounceResult:
        """Take an announce into its view and answer it from there (lock held)."""
        joins = write.peer_id not in swarm.members
        swarm.apply(write)
        # Written through or not, the batch writes it (again) so the swarm is recounted.
        if write.peer_id not in swarm.pending:
            self._unwritten += 1
        swarm.pending[write.peer_id] = write
        swarm.used_at = write.last_seen
        if joins and not write.stopped:
            self._held_peers += 1
            if len(swarm.members) > VIEW_LIMIT:
                swarm.make_room(VIEW_LIMIT, self.rng)
        self._dirty[swarm.torrent_id] = swarm
        # Only a leecher wants seeds: a seed or a partial seed has nothing to download.
        peers = swarm.sample(write.peer_id, write.state is LEECHER, request.numwant, self.rng,
                             request.compact) if request.numwant else []
        return AnnounceResult(swarm.stats(), peers)

    def scrape(self, info_hashes: Sequence[bytes], now: int) -> dict[bytes, SwarmStats]:
        """Stats from fresh views; the rest from the store, in one query."""
        fresh = self._fresh_stats(info_hashes, now)
        rest = [h for h in info_hashes if h not in fresh]
        return {**self.ask_store(self.store.scrape, rest, now), **fresh} if rest else fresh

    def scrape_all(self, now: int) -> dict[bytes, SwarmStats]:
        """Every torrent from the store, after writing this process's announces (a full
        scrape reads every torrent anyway; one batch more is nothing beside it)."""
        self.flush()
        return self.ask_store(self.store.scrape_all, now)

    def _fresh_stats(self, info_hashes: Iterable[bytes], now: int) -> dict[bytes, SwarmStats]:
        result = {}
        with self._lock:
            for info_hash in info_hashes:
                swarm = self._by_hash.get(info_hash)
                if swarm is not None and swarm.is_fresh(now, self.sync_interval):
                    result[info_hash] = swarm.stats()
        return result

    def ask_store(self, call: Callable[..., T], *args: Any) -> T:
        """A store call on the request path (or the health check), through the database gate."""
        return self._gate.call(call, *args)

    def _swarm(self, request: AnnounceRequest, now: int) -> Swarm:
        """The view of a swarm, read from the store first if it is missing or stale. While
        one thread reads, others answer from the stale view; if the database cannot answer,
        a stale view answers as it is."""
        info_hash = request.info_hash
        with self._lock:
            swarm = self._by_hash.get(info_hash)
            if swarm is not None:
                if swarm.loading or swarm.is_fresh(now, self.sync_interval):
                    return swarm
                swarm.loading = True
            elif len(self._by_id) >= self.limits.max_swarms or self.memory.full():
                raise Shed("swarms")
        if swarm is None and self._registrations is not None and not self._registrations.allow(request.ip):
            raise Shed("new swarms from this address")  # whitelist `open`: a read may register
        try:
            if swarm is None:  # one read: the info hash's torrent, its counters and peers
                snapshot = self.ask_store(self.store.find_swarm, info_hash, now, VIEW_PEERS)
            else:
                snapshot = self.ask_store(self.store.load_swarm, swarm.torrent_id, now, VIEW_PEERS)
        except ClientError:
            raise
        except Exception:
            if swarm is None:
                raise
            # The database is away: go on answering from the view we have, and try again
            # in sync_interval. Announces wait in `pending` until the database is back.
            with self._lock:
                swarm.loading = False
                swarm.loaded_at = now
            return swarm
        with self._lock:
            if snapshot is None:  # unregistered since this process read it
                self._drop(swarm)
                raise ClientError(UNKNOWN_TORRENT)
            torrent_id = snapshot.torrent_id
            swarm = self._by_id.get(torrent_id)
            if swarm is None:
                swarm = self._by_id[torrent_id] = Swarm(torrent_id)
            held = len(swarm.members)
            swarm.install(snapshot, now)
            self._held_peers += len(swarm.members) - held
            swarm.loading = False
            swarm.hashes.add(info_hash)
            self._by_hash[info_hash] = swarm
            return swarm

    def _forget(self, swarm: Swarm) -> None:
        with self._lock:
            self._drop(swarm)

    def _drop(self, swarm: Swarm) -> None:
        """Forget a view (lock held): an unregistered torrent's, whose unwritten announces go
        too, or an idle one's."""
        self._by_id.pop(swarm.torrent_id, None)
        self._dirty.pop(swarm.torrent_id, None)
        for info_hash in swarm.hashes:
            self._by_hash.pop(info_hash, None)

    # -- writing to the store ------------------------------------------------------------

    def flush(self) -> int:
        """Write every pending announce in one batch; returns how many. On failure they stay
        pending (newer announces of a peer replace older ones) and the error is raised.
        Then views another writer changed are read again, idle ones dropped, silent peers
        pruned, and the process brought back within its limits. Views are handled TURN at
        a time, so answers never wait for a pass."""
        with self._flush_lock:
            with self._lock:
                swarms = list(self._dirty.values())
                self._dirty.clear()
            batch: list[tuple[int, PeerWrite]] = []

            def take(swarm: Swarm) -> None:
                swarm.flushing.update(swarm.pending)
                swarm.pending = {}
                swarm.unwritten = [0, 0, 0]
                batch.extend([(swarm.torrent_id, write) for write in swarm.flushing.values()])

            self._in_turns(swarms, take)
            try:
                result = self.batch_store.write_batch(batch) if batch else BatchResult({}, [])
            except BaseException as exc:
                if isinstance(exc, StoreUnavailable):
                    self._gate.failed()
                with self._lock:
                    for swarm in swarms:
                        if swarm.torrent_id in self._by_id:
                            self._dirty[swarm.torrent_id] = swarm
                    # Re-announces while the batch failed were counted as new; the backlog
                    # is what pending and flushing hold.
                    self._unwritten = sum(len(s.pending) + len(s.flushing) for s in self._by_id.values())
                raise
            self._gate.works()
            written = result.written
            if result.set_aside:
                self._set_aside(result.set_aside)
            now = int(self.clock())
            changed: list[Swarm] = []

            def settle(swarm: Swarm) -> None:
                swarm.flushing = {}
                result = written.get(swarm.torrent_id)
                if result is None:
                    self._drop(swarm)  # unregistered meanwhile
                elif not swarm.written(result, now):
                    changed.append(swarm)

            self._in_turns(swarms, settle)
            for swarm in changed:
                self._reload(swarm, now)
            self._tidy(now)
            return len(batch)

    def _tidy(self, now: int) -> None:
        """Drop idle views, prune silent peers, and recount what the limits count: the
        views' peers and unwritten announces. Over a limit, the least recently used views
        and the written peers of the largest go (they stay in the store)."""
        with self._lock:
            views = list(self._by_id.values())
        idle_since = now - IDLE_SECONDS
        prune_due, silent_since = now - PRUNE_SECONDS, now - self.store.peer_timeout

        def tidy(swarm: Swarm) -> None:
            if swarm.used_at < idle_since and not swarm.pending and not swarm.flushing:
                self._drop(swarm)
            elif swarm.pruned_at <= prune_due:
                swarm.prune(silent_since)
                swarm.pruned_at = now

        self._in_turns(views, tidy)
        with self._lock:
            views = list(self._by_id.values())
        if len(views) > self.limits.max_swarms * TRIM_AT:
            views.sort(key=lambda swarm: swarm.used_at)
            excess = len(views) - int(self.limits.max_swarms * TRIM_TO)

            def trim_views(swarm: Swarm) -> None:
                nonlocal excess
                if excess > 0 and not swarm.pending and not swarm.flushing and not swarm.loading:
                    self._drop(swarm)
                    excess -= 1

            self._in_turns(views, trim_views)
            with self._lock:
                views = list(self._by_id.values())
        held = sum(len(swarm.members) for swarm in views)
        if held > self.limits.max_peers * TRIM_AT:
            views.sort(key=lambda swarm: len(swarm.members), reverse=True)
            excess = held - int(self.limits.max_peers * TRIM_TO)

            def trim_peers(swarm: Swarm) -> None:
                nonlocal excess, held
                if excess > 0:
                    forgotten = swarm.forget_written(excess)
                    excess -= forgotten
                    held -= forgotten

            self._in_turns(views, trim_peers)
        with self._lock:
            self._held_peers = held
            self._unwritten = sum(len(s.pending) + len(s.flushing) for s in self._by_id.values())

    def _set_aside(self, rows: Sequence[SetAside]) -> None:
        """Writes the store did not take leave the views too (a refused one must not leave
        another address in the view); one log line for the batch."""
        with self._lock:
            for row in rows:
                swarm = self._by_id.get(row.torrent_id)
                if swarm is not None:
                    swarm.forget(row.peer_id)
        shown = ", ".join(f"torrent {row.torrent_id} peer {row.peer_id.hex()}" for row in rows[:SET_ASIDE_SHOWN])
        _log.warning(f"{len(rows)} announces set aside, not written: {shown}; the first because: {rows[0].reason}")

    def _in_turns(self, swarms: list[Swarm], work: Callable[[Swarm], None]) -> None:
        for start in range(0, len(swarms), TURN):
            with self._lock:
                for swarm in swarms[start:start + TURN]:
                    work(swarm)

    def _reload(self, swarm: Swarm, now: int) -> None:
        snapshot = self.batch_store.load_swarm(swarm.torrent_id, now, VIEW_PEERS)
        with self._lock:
            if snapshot is None:
                self._drop(swarm)
            elif self._by_id.get(swarm.torrent_id) is swarm:
                swarm.install(snapshot, now)

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._flush_forever, name="tracker_wsgi flush", daemon=True)
        self._flusher.start()
        # A clean stop (Apache stop or restart, a touched .wsgi file) writes what is pending.
        # mod_wsgi's process_stopping event comes while the interpreter is still whole and
        # before the force-kill after shutdown-timeout; atexit runs later, if at all, and
        # stays for a process that is not mod_wsgi's (the CLI, tests).
        try:
            import mod_wsgi  # the module mod_wsgi gives its processes, not pip's package

            mod_wsgi.subscribe_shutdown(lambda event, **details: self.close())
        except (ImportError, AttributeError):
            pass
        atexit.register(self.close)

    def _flush_forever(self) -> None:
        while not self._closed.wait(self.sync_interval):
            self._flush_logged()
            self.faults.flush_summaries()  # the counts of faults that have stopped coming

    def close(self) -> None:
        """Stop the flush thread and write what is pending (the process is stopping).
        Safe to call twice (mod_wsgi's shutdown event, then atexit)."""
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join()
        self._flush_logged()
        atexit.unregister(self.close)

    def _flush_logged(self) -> None:
        """Flush; log failures at a bounded rate (FaultLog), and the recovery."""
        started = time.monotonic()
        try:
            self.flush()
        except Exception:
            self.faults.fault("batch", "writing announces to the database failed; they are kept and retried:")
            self._failing = True
            self.on_flush(time.monotonic() - started, False)
            return
        self.on_flush(time.monotonic() - started, True)
        if self._failing:
            # A warning, not info: it must show wherever the failure (an error) showed.
            _log.warning("writing announces to the database works again")
            self._failing = False
