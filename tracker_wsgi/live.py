"""The swarms of one host, in front of the database: the coordinator.

Every process of an Apache host answers announces from the state they share
(hoststate.HostState: LMDB in `swarm_dir`), so whichever process a client's connection
reaches, it gets the answer one process would give. This module decides when the database
is asked, and runs the host's one writer:

- An announce is one transaction on the host state, with no database round trip, unless
  the host does not hold its swarm yet (read once, then held until idle), the announce
  counts a completion (written through and committed before the answer: a killed process
  or host never loses one), or it names a peer the host lacks of a swarm held only in part
  (its row decides the key rule). Those calls go through the StoreGate (gate.py).
- What the database must know waits in the host state's `dirty` set: new peers, stops,
  changes of state, address, key or bytes left, and a peer's time once the database's
  grows old (hoststate.REWRITE_SECONDS). A re-announce that changes nothing else writes no
  row.
- One process of the host holds the writer's lease (kept in the host state, renewed every
  `sync_interval`, taken over by another process when its holder dies): it writes the dirty
  set in batches, takes in what other hosts wrote, forgets idle swarms and silent peers.
  Any process writes the dirty set when it stops, or before a refresh or a full scrape.
- Hosts meet in the database: every row written says when (peers.changed), and the writer
  reads the rows written since it last read (an index range, never whole swarms), a little
  further back each time than where it stopped (CHANGES_OVERLAP_SECONDS: a transaction
  that committed late, a host whose clock is behind), and takes in the ones newer by their
  announce than what the host holds, so a peer announced at one host is handed out by the
  others within about 2 x sync_interval. Counts come from the host state and the
  database's per-host rows; no host writes a row another writes.
- While the database is down or hung, every held swarm is answered as ever; a completion,
  a swarm not held yet and a scrape of one get `retry in`. Announces wait in the dirty set,
  up to `max_unwritten`.
- Bounds (limits.Limits), per host: swarms, peers, unwritten announces, peers per prefix in
  a swarm (exact: the host holds the whole swarm); per process: completions and (whitelist
  `open`) new swarms per prefix and minute, and new swarms against the process's memory.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import lmdb

from .config import ConfigError
from .faultlog import FaultLog
from .gate import StoreGate
from .hoststate import HOST_SWARM_PEERS, Bounds, Completes, HostState, NeedsStoredPeer, NotHeld
from .limits import Limits, MemoryGuard, RateWindow
from .model import (
    AnnounceRequest,
    AnnounceResult,
    Shed,
    StoredPeer,
    StoreUnavailable,
    SwarmStats,
    UnknownTorrent,
)
from .store import AnnounceStore

IDLE_SECONDS = 600  # a swarm nobody announced to for this long leaves the host state
BATCH_MOST = 20_000  # unwritten announces per batch (one batch runs at a time)
REGISTERED_TURN = 1000  # held swarms one statement checks are still registered
CHANGES_PAGE = 2000  # rows of other hosts' changes one read takes
CHANGES_TURN = 200  # rows taken in per write transaction: announces wait behind it
CHANGES_PAGES = 25  # reads per round at most (the rest the next round): a round stays short
# How much further back than where it stopped each read of changes starts: a row whose
# transaction committed after a later-stamped one was read, or written by a host whose clock
# is behind by up to this, is still read. A row missed anyway (a commit held up longer) is
# written again by its host within hoststate.REWRITE_SECONDS, if the peer lives on.
CHANGES_OVERLAP_SECONDS = 15
ANSWER_TRIES = 4  # a swarm read, a peer read, a completion written through: then answered
SET_ASIDE_SHOWN = 5  # set-aside writes named in a batch's log line (the count says the rest)
T = TypeVar("T")
_log = logging.getLogger(__name__)


class Held(NamedTuple):
    """What the host holds (metrics.py shows it)."""

    swarms: int
    peers: int
    unwritten: int  # announces answered, not written yet
    failing: bool  # this process's last batch failed


class HostSwarms:
    """The announce path of one process, on the host's shared state; its sync thread is the
    host's writer while it holds the lease. Thread-safe: the host state has its own locks;
    `_flush_lock` lets one batch of this process run at a time."""

    def __init__(
        self,
        store: AnnounceStore,
        sync_interval: int,
        swarm_dir: str,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        limits: Limits = Limits(),
        batch_store: AnnounceStore | None = None,
        memory: MemoryGuard | None = None,
        faults: FaultLog | None = None,
    ):
        self.store = store  # the requests' store: short waits (wsgi.REQUEST_WAIT_SECONDS)
        self.batch_store = batch_store or store  # the writer's: waits as long as it must
        self.sync_interval = sync_interval
        self.swarm_dir = swarm_dir
        self.lease_seconds = 3 * sync_interval + 5
        self.faults = faults or FaultLog(_log.error)
        self.clock = clock
        self.limits = limits
        self.memory = memory or MemoryGuard()
        self._completions = RateWindow(limits.completions_by_prefix)
        self.state = HostState(swarm_dir, store.peer_timeout,
                               Bounds(limits.max_swarms, limits.max_peers, limits.max_unwritten,
                                      limits.peers_by_prefix, limits.answer_share_per_prefix), rng,
                               self._completions.allow)
        try:
            self.state.open()  # at once, so a directory the tracker cannot use is one line at start
        except (OSError, lmdb.Error) as exc:
            raise ConfigError(f"swarm_dir = {swarm_dir!r}: {exc}; make it a directory the tracker's user can "
                              f"write: install -d -o www-data -g www-data {swarm_dir}") from None
        self._registrations = RateWindow(limits.new_swarms_by_prefix) if store.register_unknown else None
        self._gate = StoreGate()
        self._flush_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._syncer: threading.Thread | None = None
        self._closed = threading.Event()
        self._failing = False
        # Told how long each batch took and whether it was written (metrics.py), in the sync thread.
        self.on_flush: Callable[[float, bool], None] = lambda seconds, written: None

    # -- announces and scrapes --------------------------------------------------------------

    def announce(self, request: AnnounceRequest, now: int) -> AnnounceResult:
        if self._syncer is None and not self._closed.is_set():
            self._start_syncer()
        downloaded: int | None = None
        stored: StoredPeer | None = None
        stored_read = False
        for _ in range(ANSWER_TRIES):
            try:
                return self.state.announce(request, now, downloaded, stored, stored_read)
            except (NotHeld, NeedsStoredPeer, Completes) as exc:
                needs = exc  # handled below, outside the except: a fault there is not chained to it
            if isinstance(needs, NotHeld):
                self._read_swarm(request, now)
            elif isinstance(needs, NeedsStoredPeer):
                stored = self._stored_peer(needs.torrent_id, request.peer_id)
                stored_read = True
            elif downloaded is None:
                if not self._completions.allow(request.ip):
                    raise Shed("completions from this address or its prefix")
                try:
                    downloaded = self.ask_store(self.store.write_through, needs.torrent_id, needs.write, True)
                except BaseException as exc:
                    self._completions.refund(request.ip)  # not counted: it comes again (`retry in`)
                    if isinstance(exc, UnknownTorrent):
                        self.state.drop(needs.torrent_id)
                    raise
        raise Shed("the swarm changed while it was answered")

    def _read_swarm(self, request: AnnounceRequest, now: int) -> None:
        """Read a swarm the host does not hold from the database, and hold it."""
        if self.memory.full():
            raise Shed("swarms")
        if self._registrations is not None and not self._registrations.allow(request.ip):
            raise Shed("new swarms from this address or its prefix")  # whitelist `open`: a read may register
        snapshot = self.ask_store(self.store.find_swarm, request.info_hash, now, HOST_SWARM_PEERS)
        self.state.install(request.info_hash, snapshot, now)

    def _stored_peer(self, torrent_id: int, peer_id: bytes) -> StoredPeer | None:
        """The stored row of a peer the host lacks of a swarm it holds in part. While the
        database cannot say, the announce gets `retry in`: the key rule is checked before
        every answer, so an announce answered with success is never refused later."""
        try:
            return self.ask_store(self.store.find_peer, torrent_id, peer_id)
        except StoreUnavailable as exc:
            raise Shed("a peer the host does not hold, while the database cannot say whose it is") from exc

    def scrape(self, info_hashes: Sequence[bytes], now: int) -> dict[bytes, SwarmStats]:
        """Stats of held swarms from the host state; the rest from the database, in one query."""
        held = self.state.stats(info_hashes)
        rest = [h for h in info_hashes if h not in held]
        return {**self.ask_store(self.store.scrape, rest, now), **held} if rest else held

    def scrape_all(self, now: int) -> dict[bytes, SwarmStats]:
        """Every torrent from the database, after writing the host's announces."""
        self.flush()
        return self.ask_store(self.store.scrape_all, now)

    def ask_store(self, call: Callable[..., T], *args: Any) -> T:
        """A store call on the request path (or the health check), through the database gate."""
        return self._gate.call(call, *args)

    def held(self) -> Held:
        swarms, peers, unwritten = self.state.sizes()
        return Held(swarms, peers, unwritten, self._failing)

    # -- the writer ---------------------------------------------------------------------------

    def flush(self) -> int:
        """Write every unwritten announce of the host; returns how many. On failure they stay
        unwritten and the error is raised."""
        written = 0
        # One batch at a time on the host, whichever process writes it (the writer, or one
        # that stops or refreshes): two batches racing could land an older write after a
        # newer one (a stop, then the start it replaced).
        with self._flush_lock, open(os.path.join(self.swarm_dir, "batch.lock"), "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            while True:
                batch = self.state.dirty(BATCH_MOST)
                if not batch:
                    return written
                try:
                    result = self.batch_store.write_batch([(entry.torrent_id, entry.write) for entry in batch])
                except StoreUnavailable as exc:
                    self._gate.failed(exc)
                    raise
                self._gate.works()
                if result.set_aside:
                    self._log_set_aside(result.set_aside)
                self.state.written(batch, result.written, [(row.torrent_id, row.peer_id) for row in result.set_aside])
                written += len(batch)
                if len(batch) < BATCH_MOST:
                    return written

    def sync(self) -> None:
        """The writer's round: write the host's announces, take in what other hosts wrote,
        forget swarms no longer registered, silent peers and idle swarms."""
        self.flush()
        now = int(self.clock())
        self._take_changes(now)
        ids = sorted(self.state.swarms())
        for start in range(0, len(ids), REGISTERED_TURN):
            turn = ids[start:start + REGISTERED_TURN]
            for torrent_id in set(turn) - self.batch_store.registered(turn):
                self.state.drop(torrent_id)
        while self.state.expire(now) and not self._closed.is_set():
            pass
        for torrent_id in self.state.idle_swarms(now - IDLE_SECONDS):
            self.state.drop(torrent_id)

    def _take_changes(self, now: int) -> None:
        """Read the rows written since the last read (and CHANGES_OVERLAP_SECONDS before),
        take in those of held swarms, then the totals of the swarms they touched."""
        overlap = CHANGES_OVERLAP_SECONDS * 1000 << 16
        read_to = self.state.changes_read() or int(self.clock() * 1000) << 16
        since, touched = max(0, read_to - overlap), set()
        for _ in range(CHANGES_PAGES):
            rows = self.batch_store.changes(since, CHANGES_PAGE, self.state.host_id)
            for start in range(0, len(rows), CHANGES_TURN):
                touched |= self.state.take_changes(rows[start:start + CHANGES_TURN], now)
            if rows:
                read_to = max(read_to, rows[-1].changed)
            if len(rows) < CHANGES_PAGE:
                break
            # Rows sharing the page's last value may be cut off by the limit: read it again
            # (rows taken twice change nothing), unless the page holds nothing else.
            since = rows[-1].changed - (rows[0].changed != rows[-1].changed)
        self.state.read_changes_to(read_to)
        ids = sorted(touched)
        for start in range(0, len(ids), REGISTERED_TURN):
            self.state.take_totals(self.batch_store.swarm_totals(ids[start:start + REGISTERED_TURN]))

    def _log_set_aside(self, rows: Sequence[Any]) -> None:
        shown = ", ".join(f"torrent {row.torrent_id} peer {row.peer_id.hex()}" for row in rows[:SET_ASIDE_SHOWN])
        _log.warning(f"{len(rows)} announces set aside, not written: {shown}; the first because: {rows[0].reason}")

    def _start_syncer(self) -> None:
        with self._start_lock:
            if self._syncer is not None:
                return
            self._syncer = threading.Thread(target=self._sync_forever, name="tracker_wsgi sync", daemon=True)
        self._syncer.start()
        # A clean stop (Apache stop or restart, a touched .wsgi file) writes what is unwritten.
        # mod_wsgi's process_stopping event comes while the interpreter is still whole and
        # before the force-kill after shutdown-timeout; atexit runs later, if at all, and
        # stays for a process that is not mod_wsgi's (the CLI, tests).
        try:
            import mod_wsgi  # the module mod_wsgi gives its processes, not pip's package

            mod_wsgi.subscribe_shutdown(lambda event, **details: self.close())
        except (ImportError, AttributeError):
            pass
        atexit.register(self.close)

    def _sync_forever(self) -> None:
        while not self._closed.wait(self.sync_interval):
            try:
                holds = self.state.hold_lease(os.getpid(), int(self.clock()), self.lease_seconds)
            except Exception:
                self.faults.fault("batch", "the host's swarm state failed:")
                continue
            if holds:
                self._logged(self.sync)
            self.faults.flush_summaries()  # the counts of faults that have stopped coming

    def close(self) -> None:
        """Stop the sync thread and write what is unwritten (the process is stopping). Safe
        to call twice (mod_wsgi's shutdown event, then atexit)."""
        self._closed.set()
        if self._syncer is not None and self._syncer is not threading.current_thread():
            self._syncer.join()
        self._logged(self.flush)
        atexit.unregister(self.close)

    def _logged(self, work: Callable[[], Any]) -> None:
        """Run the writer's work; log failures at a bounded rate (FaultLog), and the recovery."""
        started = time.monotonic()
        try:
            work()
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
