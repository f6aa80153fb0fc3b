"""Swarms kept in the daemon process: announces answered from memory, written in batches.

Each Apache daemon process keeps a view of every swarm it serves: the swarm's counters,
the live peers read from the store (up to VIEW_PEERS) and every peer that announced to
this process since. An announce (nearly all traffic: re-announces, `started`, `stopped`)
is answered from the view with no database round trip; what it changed waits until the
flush thread writes every waiting announce, every `sync_interval` seconds and when the
process exits. XBT and Ocelot do the same (peer-trackers.md section 4); they run one
process per host. We run two (apache/tracker.conf sends each announce to the one its info
hash names, so a swarm normally lives in one of them) and several hosts per database.

Who owns what: this module is the coordinator (LiveSwarms: finding, reading and dropping
views, the locks, the flush cycle, the process's bounds) and the database gate
(StoreGate). A view and every change to it: view.py. What an announce does to its peer
(the key rule, the completion rule) and what counts say: swarm.py, whose functions the
store applies too. The text a refusal is answered with: protocol.py. So:

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
  view.PRUNE_SECONDS) and stays in the counts until the refresh expires it, as the original.
- A view holds at most view.VIEW_LIMIT peers; beyond that, peers whose announces are already
  written make room (they stay in the store and the counts).
- While the database is down or hung, swarms this process holds go on being answered from
  memory; only a completion, a swarm it has not read yet, a peer its view does not hold
  and a scrape of a swarm it does not hold get `retry in`. Requests reach the database through a StoreGate: a short wait, a few threads at a
  time, and none for a while after it failed.
- A process killed without warning loses at most its last sync_interval of announces:
  peers re-announce anyway, and a lost `stopped` peer leaves at expiry.
- The key rule (swarm.conflicts, through swarm.plan_announce) is checked before every
  answer: against the view when it holds the peer, else against the stored row
  (store.find_peer): a peer the view forgot (beyond VIEW_LIMIT) or another process or
  host took is in the store. While the database cannot say, the announce gets `retry
  in`, never a success its batch could refuse later. (The store checks the rule again
  as it writes; only two processes taking one new peer_id from two addresses in the same
  sync_interval can still meet it there: the later write is set aside.)
- Refusals are typed (model.UnknownTorrent, PeerConflict, TooManyPeers); `retry in` is
  model.Shed or model.StoreUnavailable. wsgi.py answers them; refusals.py says the text.
- Bounds (limits.Limits, from the config): views, peers held, unwritten announces, peers
  per prefix in a swarm, completions and (whitelist `open`) new swarms per prefix and
  minute (every prefix level of the address: limits.prefixes), and the process's data size
  against its memory-limit. Past one, new swarms and peers get `retry in` (model.Shed)
  while known peers are answered as ever. No broad prefix fills more than its share of an
  answer (view.SwarmView.sample).
"""

from __future__ import annotations

import atexit
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from .faultlog import FaultLog
from .limits import Limits, MemoryGuard, RateWindow
from .model import (
    FAILED,
    LEECHER,
    STOPPED,
    TIMEOUT,
    AnnounceRequest,
    AnnounceResult,
    BatchResult,
    PeerConflict,
    PeerWrite,
    SetAside,
    Shed,
    StoredPeer,
    StoreUnavailable,
    SwarmStats,
    SwarmWritten,
    TooManyPeers,
    UnknownTorrent,
)
from .store import AnnounceStore
from .swarm import KnownPeer, PeerUpdate, conflicts, plan_announce
from .view import NOTHING_NEW, SwarmView

VIEW_PEERS = 1000  # peers read into a view: plenty to sample a numwant of 200 from
IDLE_SECONDS = 600  # a swarm nobody announced to for this long leaves the process's memory
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
        self._cause = FAILED  # the last failure's (StoreUnavailable.cause): what the calls it holds off say

    def call(self, call: Callable[..., T], *args: Any) -> T:
        now = self.clock()
        if now < self._away_until:
            # The cause of the failure that closed the gate, so whichever thread logs
            # first, its line names the real cause (issue 19).
            raise StoreUnavailable("it failed a moment ago", self._cause)
        if self._failures:  # this call tries it again; the others wait for its verdict
            self._away_until = now + DB_AWAY_SECONDS
        if not self._slots.acquire(timeout=DB_QUEUE_SECONDS):
            raise StoreUnavailable("every database slot is taken: the database is slow", TIMEOUT)
        try:
            result = call(*args)
        except StoreUnavailable as exc:
            self.failed(exc)
            raise
        finally:
            self._slots.release()
        self.works()
        return result

    def failed(self, outage: StoreUnavailable) -> None:
        self._cause = outage.cause
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
    """The swarms of one process, in front of the store: the coordinator. It finds, reads
    and drops views, answers announces from them, and runs the flush cycle; every change
    to a view is a method of view.SwarmView. Thread-safe.

    Locking protocol:
    - `_lock` guards every view (each SwarmView method is called with it held) and the
      coordinator's tables and tallies: `_by_hash`, `_by_id`, `_dirty`, `_unwritten`,
      `_held_peers`. It is never held across a store call, so a hung database never
      holds up an answer from memory, and the flush cycle holds it for TURN views at a
      time, so an answer never waits for a whole pass.
    - `_flush_lock` lets one batch run at a time (the flush thread, close(), a full
      scrape, a web refresh). Order: `_flush_lock`, then `_lock`; never the other way.
    - The StoreGate's semaphore and the RateWindows' locks are leaves: taken with `_lock`
      released (every store call goes outside it), and nothing is taken while they are held.
    - Read without a lock: `_flusher` and `_closed` in announce (a stale read only calls
      _start_flusher, which checks again under `_lock`); `_failing` (a bool only the flush
      thread writes); the StoreGate's fields (see there); and the views' sort keys in the
      trims (an int read is atomic; a stale one only changes which view goes first).
      Between a store call and the next hold of `_lock` a view may change or leave
      memory: whatever was read before the call is checked again under the lock.
    - Outside the lock on purpose: SwarmView.read, which lays out a snapshot's peers (the
      costly part of installing one) on a new view no other thread can reach yet; only
      the swap into the held view (install) takes `_lock`.
    """

    def __init__(
        self,
        store: AnnounceStore,
        sync_interval: int,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        limits: Limits = Limits(),
        batch_store: AnnounceStore | None = None,
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
        self._registrations = RateWindow(limits.new_swarms_by_prefix) if store.register_unknown else None
        self._completions = RateWindow(limits.completions_by_prefix)
        self._peers_by_prefix = limits.peers_by_prefix
        self._answer_share = limits.answer_share_per_prefix
        self._lock = threading.Lock()  # guards every view and the tables below; never held across a store call
        self._flush_lock = threading.Lock()  # one batch at a time; taken before _lock
        self._by_hash: dict[bytes, SwarmView] = {}
        self._by_id: dict[int, SwarmView] = {}
        self._dirty: dict[SwarmView, None] = {}  # views with pending announces, in order
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
            view = self._by_hash.get(request.info_hash)
            if view is not None:
                member = view.usable_member(request.peer_id, now, self.sync_interval)
                if member is not None:
                    # Nearly every announce: a peer this process holds, in a view it holds,
                    # and nothing to write through.
                    update = plan_announce(request, member)  # raises PeerConflict
                    if not update.counts_completion:
                        return self._take(view, request, _peer_write(request, update, now))
        return self._announce_with_store(request, now)

    def _announce_with_store(self, request: AnnounceRequest, now: int) -> AnnounceResult:
        """A swarm to read first, a peer the view does not hold, or a completion to write
        through: store calls, outside the lock."""
        view = self._view(request, now)
        peer_id = request.peer_id
        with self._lock:
            known: KnownPeer | None = view.member(peer_id)
            if known is None and request.event is not STOPPED:
                self._admit(view, request.ip)
        if known is None:
            # The key rule holds whether or not the view holds the peer: a peer the view
            # forgot (or another process or host took) is in the store.
            known = self._stored_peer(view, peer_id)
            if known is None and request.event is STOPPED:
                # Nothing to stop; recording it would let random peer_ids grow the backlog.
                with self._lock:
                    return AnnounceResult(view.stats(), [])
        update = plan_announce(request, known)
        write = _peer_write(request, update, now)
        downloaded = -1
        if update.counts_completion:
            if not self._completions.allow(request.ip):
                raise Shed("completions from this address or its prefix")
            try:
                downloaded = self.ask_store(self.store.write_through, view.torrent_id, write, True)
            except UnknownTorrent:
                self._forget(view)
                raise
        with self._lock:
            if self._by_id.get(view.torrent_id) is not view:
                # The batch dropped the view (or another read replaced it) while we asked the
                # store: an answer from it would never be written.
                raise Shed("a swarm view left memory meanwhile")
            member = view.member(peer_id)
            if member is not None and conflicts(member.ip, member.key, request.ip, request.key):
                raise PeerConflict()  # another thread took this peer_id from another address meanwhile
            # A write through moved the stored version on, so the next batch reads the swarm
            # again (its recount may or may not hold this write; completions are rare).
            if downloaded >= 0:
                view.completion_counted(downloaded)
            return self._take(view, request, write)

    def held(self) -> Held:
        with self._lock:
            return Held(len(self._by_id), self._held_peers, self._unwritten, self._failing)

    def _admit(self, view: SwarmView, ip: bytes) -> None:
        """Refuse a new peer beyond the share of the swarm of any prefix its address is in,
        or when the process holds all it may (lock held)."""
        if not view.admits(ip, self._peers_by_prefix):
            raise TooManyPeers()
        if (self._unwritten >= self.limits.max_unwritten or self._held_peers >= self.limits.max_peers
                or self.memory.full()):
            raise Shed("peers")

    def _stored_peer(self, view: SwarmView, peer_id: bytes) -> StoredPeer | None:
        """The stored row of a peer the view does not hold, or None if there is none. While
        the database cannot say, the announce gets `retry in`: the key rule is checked
        before every answer, so an announce answered with success is never refused later."""
        try:
            return self.ask_store(self.store.find_peer, view.torrent_id, peer_id)
        except StoreUnavailable as exc:
            raise Shed("a peer the view does not hold, while the database cannot say whose it is") from exc

    def _take(self, view: SwarmView, request: AnnounceRequest, write: PeerWrite) -> AnnounceResult:
        """Take an announce into its view and answer it from there (lock held)."""
        taken = view.take(write, self.rng)
        # A view with pending announces is in _dirty already (or in the batch under way,
        # which takes its whole pending), so only a first one since the last batch marks it.
        if taken is not NOTHING_NEW:
            self._unwritten += taken[0]
            self._held_peers += taken[1]
            self._dirty[view] = None
        # Only a leecher wants seeds: a seed or a partial seed has nothing to download.
        peers = view.sample(write.peer_id, write.state is LEECHER, request.numwant, self.rng,
                            request.compact, self._answer_share) if request.numwant else []
        return AnnounceResult(view.stats(), peers)

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
                view = self._by_hash.get(info_hash)
                stats = view.fresh_stats(now, self.sync_interval) if view is not None else None
                if stats is not None:
                    result[info_hash] = stats
        return result

    def ask_store(self, call: Callable[..., T], *args: Any) -> T:
        """A store call on the request path (or the health check), through the database gate."""
        return self._gate.call(call, *args)

    # -- views in memory -------------------------------------------------------------------

    def _view(self, request: AnnounceRequest, now: int) -> SwarmView:
        """The view of a swarm, read from the store first if it is missing or stale. While
        one thread reads, others answer from the stale view; if the database cannot answer,
        a stale view answers as it is."""
        info_hash = request.info_hash
        with self._lock:
            view = self._by_hash.get(info_hash)
            if view is not None:
                if not view.start_load(now, self.sync_interval):
                    return view
            elif len(self._by_id) >= self.limits.max_swarms or self.memory.full():
                raise Shed("swarms")
        if view is None and self._registrations is not None and not self._registrations.allow(request.ip):
            raise Shed("new swarms from this address or its prefix")  # whitelist `open`: a read may register
        try:
            if view is None:  # one read: the info hash's torrent, its counters and peers
                snapshot = self.ask_store(self.store.find_swarm, info_hash, now, VIEW_PEERS)
            else:
                snapshot = self.ask_store(self.store.load_swarm, view.torrent_id, now, VIEW_PEERS)
        except Exception:
            if view is None:
                raise
            with self._lock:
                view.load_failed(now)  # answer from it as it is; try again in sync_interval
            return view
        read = SwarmView.read(snapshot) if snapshot is not None else None
        with self._lock:
            if snapshot is None:  # unregistered since this process read it
                self._drop(view)
                raise UnknownTorrent()
            torrent_id = snapshot.torrent_id
            view = self._by_id.get(torrent_id)
            if view is None:
                view = self._by_id[torrent_id] = SwarmView(torrent_id)
            self._held_peers += view.install(snapshot, read, now)
            view.answers_to(info_hash)
            self._by_hash[info_hash] = view
            return view

    def _forget(self, view: SwarmView) -> None:
        with self._lock:
            self._drop(view)

    def _drop(self, view: SwarmView) -> None:
        """Forget a view (lock held): an unregistered torrent's, whose unwritten announces go
        too, or an idle one's. A view that replaced it stays."""
        torrent_id = view.torrent_id
        if self._by_id.get(torrent_id) is view:
            del self._by_id[torrent_id]
        self._dirty.pop(view, None)
        for info_hash in view.info_hashes:
            if self._by_hash.get(info_hash) is view:
                del self._by_hash[info_hash]

    def _views(self) -> list[SwarmView]:
        with self._lock:
            return list(self._by_id.values())

    # -- the flush cycle ---------------------------------------------------------------------

    def flush(self) -> int:
        """Write every pending announce in one batch; returns how many. On failure they stay
        pending (newer announces of a peer replace older ones) and the error is raised.
        Then views another writer changed are read again, idle ones dropped, silent peers
        pruned, and the process brought back within its limits. Views are handled TURN at
        a time, so answers never wait for a pass."""
        with self._flush_lock:
            with self._lock:
                views = list(self._dirty)
                self._dirty.clear()
            batch = self._hand_over(views)
            try:
                result = self.batch_store.write_batch(batch) if batch else BatchResult({}, [])
            except BaseException as exc:
                if isinstance(exc, StoreUnavailable):
                    self._gate.failed(exc)
                self._batch_failed(views)
                raise
            self._gate.works()
            if result.set_aside:
                self._set_aside(result.set_aside)
            now = int(self.clock())
            for view in self._settle(views, result.written, now):
                self._reload(view, now)
            self._tidy(now)
            return len(batch)

    def _hand_over(self, views: list[SwarmView]) -> list[tuple[int, PeerWrite]]:
        batch: list[tuple[int, PeerWrite]] = []
        for turn in _turns(views):
            with self._lock:
                for view in turn:
                    view.hand_over(batch)
        return batch

    def _batch_failed(self, views: list[SwarmView]) -> None:
        """The views' announces wait for the next batch (in their `flushing`)."""
        with self._lock:
            for view in views:
                if self._by_id.get(view.torrent_id) is view:
                    self._dirty[view] = None
            # Re-announces while the batch failed were counted as new: recount the backlog.
            self._unwritten = sum(view.unwritten_count for view in self._by_id.values())

    def _settle(self, views: list[SwarmView], written: dict[int, SwarmWritten], now: int) -> list[SwarmView]:
        """Give each view its batch's result; returns the views another writer changed."""
        changed = []
        for turn in _turns(views):
            with self._lock:
                for view in turn:
                    result = written.get(view.torrent_id)
                    if result is None:
                        self._drop(view)  # unregistered meanwhile
                    elif not view.settle(result, now):
                        changed.append(view)
        return changed

    def _reload(self, view: SwarmView, now: int) -> None:
        snapshot = self.batch_store.load_swarm(view.torrent_id, now, VIEW_PEERS)
        read = SwarmView.read(snapshot) if snapshot is not None else None
        with self._lock:
            if snapshot is None:
                self._drop(view)
            elif self._by_id.get(view.torrent_id) is view:
                self._held_peers += view.install(snapshot, read, now)

    def _tidy(self, now: int) -> None:
        """Drop idle views, prune silent peers, bring the process back within its limits
        (the least recently used views, then the written peers of the largest go; they
        stay in the store), and recount what the limits count."""
        idle_since, silent_since = now - IDLE_SECONDS, now - self.store.peer_timeout
        for turn in _turns(self._views()):
            with self._lock:
                for view in turn:
                    if view.is_idle(idle_since):
                        self._drop(view)
                    else:
                        view.prune_if_due(now, silent_since)
        self._trim_views()
        self._trim_peers()
        with self._lock:  # one pass over the views, once a batch
            views = self._by_id.values()
            self._held_peers = sum(view.peer_count for view in views)
            self._unwritten = sum(view.unwritten_count for view in views)

    def _trim_views(self) -> None:
        """Over TRIM_AT of max_swarms: drop the least recently used views that hold nothing
        unwritten, down to TRIM_TO."""
        views = self._views()
        if len(views) <= self.limits.max_swarms * TRIM_AT:
            return
        views.sort(key=lambda view: view.last_used)  # read without the lock: see the class
        excess = len(views) - int(self.limits.max_swarms * TRIM_TO)
        for turn in _turns(views):
            with self._lock:
                for view in turn:
                    if excess > 0 and view.may_drop():
                        self._drop(view)
                        excess -= 1
            if excess <= 0:
                return

    def _trim_peers(self) -> None:
        """Over TRIM_AT of max_peers: the largest views forget peers whose announces are
        written, down to TRIM_TO."""
        sized: list[tuple[int, SwarmView]] = []
        for turn in _turns(self._views()):
            with self._lock:
                sized += [(view.peer_count, view) for view in turn]
        held = sum(size for size, _ in sized)
        if held <= self.limits.max_peers * TRIM_AT:
            return
        sized.sort(key=lambda pair: pair[0], reverse=True)
        excess = held - int(self.limits.max_peers * TRIM_TO)
        for turn in _turns([view for _, view in sized]):
            with self._lock:
                for view in turn:
                    if excess > 0:
                        excess -= view.forget_written(excess)
            if excess <= 0:
                return

    def _set_aside(self, rows: Sequence[SetAside]) -> None:
        """Writes the store did not take leave the views too (a refused one must not leave
        another address in the view); one log line for the batch."""
        with self._lock:
            for row in rows:
                view = self._by_id.get(row.torrent_id)
                if view is not None:
                    view.forget(row.peer_id)
        shown = ", ".join(f"torrent {row.torrent_id} peer {row.peer_id.hex()}" for row in rows[:SET_ASIDE_SHOWN])
        _log.warning(f"{len(rows)} announces set aside, not written: {shown}; the first because: {rows[0].reason}")

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


def _turns(views: list[SwarmView]) -> Iterator[list[SwarmView]]:
    """The flush cycle's views, TURN at a time: it holds the lock for one turn at a time."""
    for start in range(0, len(views), TURN):
        yield views[start:start + TURN]
