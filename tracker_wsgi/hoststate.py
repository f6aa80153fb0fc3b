"""The swarm state every process of one host shares: an LMDB environment in `swarm_dir`.

Every process of an Apache host (embedded children or daemon processes) opens the same
environment and answers each announce in one write transaction on it, so an announce
answered by any of them is in the next answer of every other: no per-process copies, no
re-reads, no routing needed for correctness. LMDB maps the file into every process; readers
never block, one writer at a time (a per-process lock in front of LMDB's own, so a process's
threads queue on a cheap lock rather than LMDB's mutex), and a process killed mid-write
leaves the last committed state (bench/README: "Choosing the host's shared swarm state").

The state is soft: the database stays the durable store and the meeting point of hosts.
What an announce changed that the database must know waits in `dirty` until the host's one
writer (live.HostSwarms, by a lease kept here) writes it in a batch. A completion is written
through to the database before its answer. Losing the whole directory (a reboot onto tmpfs,
a format change) loses at most the dirty announces; swarms are read again on demand.

Layout (named databases of one environment; integers big-endian, so keys sort by them):
- hashes:   info_hash (20)                       -> torrent id (4)
- swarms:   torrent id (4)                       -> _SWARM header, its info hashes, its name
- peers:    torrent id (4) + pool (1) + rank (4) + peer_id (20) -> _PEER header, compact
            address, key. Pool 0: leechers (what a seed is sent); pool 1: seeds and partial
            seeds. The rank is a keyed hash of the peer_id (a secret salt per host), so an
            answer is a window from a random rank on and no client can choose its place.
- prefixes: torrent id (4) + prefix (limits.prefixes: 3 to 8 bytes) -> peers of the swarm in it
- dirty:    torrent id (4) + peer_id (20)        -> the announce's PeerWrite, to write
- meta:     format, salt, host id, the writer's lease, where expiry goes on, how far the
            host has read the database's changes

Every method takes the process lock and one transaction; none calls the database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import lmdb

from .limits import ANSWER_FLOOR, broad_prefix, prefixes
from .model import (
    LEECHER,
    STOPPED,
    AnnounceRequest,
    AnnounceResult,
    PeerChange,
    PeerState,
    PeerWrite,
    Shed,
    StoredPeer,
    SwarmSnapshot,
    SwarmStats,
    SwarmTotals,
    TooManyPeers,
    make_peer,
)
from .swarm import plan_announce, swarm_stats

FORMAT = b"tracker_wsgi host state 3"  # a directory of another format is made anew
MAP_SIZE = 1 << 34  # 16 GiB of address space; the file only takes what is written
MAX_READERS = 4096  # concurrent read transactions: every thread of every process may hold one
# A peer whose announces change nothing but its time and byte counts is written to the
# database at most this often (so it is not expired there), not every batch.
REWRITE_SECONDS = 300
EXPIRE_TURN = 5000  # peers the expiry looks at per transaction: a write transaction is short
SPREAD_WALK = 4  # entries per wanted peer an answer walks at most where a prefix hogs the swarm

_PEER = struct.Struct(">BqBBBqqqqq")  # compact length, last_seen, state, completed, has key, left, up, down,
#                                        written_seen, stamp
_SEEN = struct.Struct(">Bq")  # the first two fields of _PEER: what a sample reads
_SWARM = struct.Struct(">iiiiiiqqqB")  # held leechers, seeds, partials; unheld ones; downloaded, used_at, loaded_at, hashes
_WRITE = struct.Struct(">BBqqqqqqHBBBB")  # state, flags (_W_*), left, up, down, last_seen, stamp, held_stamp, port;
#                                          lengths: ip, key, base ip, base key
_W_STOPPED, _W_KEY, _W_FRESH, _W_BASE, _W_BASE_KEY = 1, 2, 4, 8, 16
_TID = struct.Struct(">I")
_COUNT = struct.Struct(">i")
_LEASE = struct.Struct(">iq")  # pid, until
_CURSOR = struct.Struct(">Q")  # the newest `changed` of the database's rows the host has read
GONE = 3  # a stop's tombstone row (store/announce.py)
_STATES = tuple(PeerState)
_POOL = (b"\0", b"\1", b"\1")  # by PeerState: leechers, seeds, partial seeds


class Swarm(NamedTuple):
    """A swarm's record (swarms database)."""

    counts: tuple[int, ...]  # held peers by PeerState (three)
    unheld: tuple[int, ...]  # stored peers of a swarm larger than a read, by state
    downloaded: int
    used_at: int
    loaded_at: int
    info_hashes: tuple[bytes, ...]
    name: str

    def pack(self) -> bytes:
        return (_SWARM.pack(*self.counts, *self.unheld, self.downloaded, self.used_at,
                            self.loaded_at, len(self.info_hashes))
                + b"".join(self.info_hashes) + self.name.encode("utf-8", "replace"))

    @classmethod
    def unpack(cls, raw: bytes) -> Swarm:
        l0, s0, p0, l1, s1, p1, downloaded, used_at, loaded_at, n = _SWARM.unpack_from(raw)
        start = _SWARM.size
        hashes = tuple(raw[start + 20 * i:start + 20 * (i + 1)] for i in range(n))
        return cls((l0, s0, p0), (l1, s1, p1), downloaded, used_at, loaded_at, hashes,
                   bytes(raw[start + 20 * n:]).decode("utf-8", "replace"))

    def stats(self) -> SwarmStats:
        counts, unheld = self.counts, self.unheld
        return swarm_stats(counts[0] + unheld[0], counts[1] + unheld[1], counts[2] + unheld[2], self.downloaded,
                           self.name)

    @property
    def partial(self) -> bool:
        """The host holds a window of a larger stored swarm (a peer it lacks may be stored)."""
        return any(self.unheld)


class Held(NamedTuple):
    """A peer's record (peers database), as the key rule and the completion rule read it."""

    ip: bytes
    key: bytes | None
    left: int
    state: PeerState
    completed: bool
    last_seen: int
    written_seen: int  # the last_seen the database has (or will have: it is dirty)
    stamp: int  # its last announce's (PeerWrite.stamp), here or at the host that wrote it
    compact: bytes

    @property
    def port(self) -> int:
        return int.from_bytes(self.compact[-2:], "big")


def _held(raw: bytes) -> Held:
    clen, last_seen, state, completed, has_key, left, _up, _down, written_seen, stamp = _PEER.unpack_from(raw)
    start = _PEER.size
    compact = bytes(raw[start:start + clen])
    key = bytes(raw[start + clen:]) if has_key else None
    return Held(compact[:-2], key, left, _STATES[state], bool(completed), last_seen, written_seen, stamp, compact)


def _peer_value(write: PeerWrite, completed: bool, written_seen: int) -> bytes:
    compact = write.ip + write.port.to_bytes(2, "big")
    return _PEER.pack(len(compact), write.last_seen, write.state, completed, write.key is not None, write.left,
                      write.uploaded, write.downloaded, written_seen, write.stamp) + compact + (write.key or b"")


def pack_write(write: PeerWrite) -> bytes:
    base_ip, base_key = write.base or (b"", None)
    flags = ((write.stopped and _W_STOPPED) | (write.key is not None and _W_KEY) | (write.fresh and _W_FRESH)
             | (write.base is not None and _W_BASE) | (base_key is not None and _W_BASE_KEY))
    key, base_key = write.key or b"", base_key or b""
    return (_WRITE.pack(write.state, flags, write.left, write.uploaded, write.downloaded, write.last_seen,
                        write.stamp, write.held_stamp, write.port, len(write.ip), len(key), len(base_ip), len(base_key))
            + write.ip + key + base_ip + base_key)


def unpack_write(peer_id: bytes, raw: bytes) -> PeerWrite:
    (state, flags, left, up, down, last_seen, stamp, held_stamp, port, iplen, keylen, base_iplen,
     base_keylen) = _WRITE.unpack_from(raw)
    at = _WRITE.size
    ip, at = bytes(raw[at:at + iplen]), at + iplen
    key, at = bytes(raw[at:at + keylen]), at + keylen
    base_ip, at = bytes(raw[at:at + base_iplen]), at + base_iplen
    base_key = bytes(raw[at:at + base_keylen])
    base = (base_ip, base_key if flags & _W_BASE_KEY else None) if flags & _W_BASE else None
    return PeerWrite(peer_id, ip, port, key if flags & _W_KEY else None, _STATES[state], left, up, down, last_seen,
                     bool(flags & _W_STOPPED), base, bool(flags & _W_FRESH), stamp, held_stamp)


class Dirty(NamedTuple):
    """An announce waiting for the batch, and its raw value (a batch clears it only if no
    newer announce replaced it meanwhile)."""

    torrent_id: int
    write: PeerWrite
    raw: bytes


class NotHeld(Exception):
    """The host does not hold this info hash's swarm: read it from the database first."""


class NeedsStoredPeer(Exception):
    """A peer the host does not hold of a swarm it holds only part of: the stored row decides
    the key rule (the caller reads it and asks again with `stored`)."""

    def __init__(self, torrent_id: int):
        super().__init__()
        self.torrent_id = torrent_id


class Completes(Exception):
    """This announce counts a completion: write it through to the database first, then ask
    again with `downloaded`."""

    def __init__(self, torrent_id: int, write: PeerWrite):
        super().__init__()
        self.torrent_id, self.write = torrent_id, write


class Bounds(NamedTuple):
    """What the host may hold (limits.Limits): past one, new swarms and peers get `retry in`."""

    max_swarms: int
    max_peers: int
    max_unwritten: int
    peers_by_prefix: dict[int, int]
    answer_share: int


_ENVS: dict[tuple[int, str], lmdb.Environment] = {}  # (pid, path): one environment per process and path
_ENVS_LOCK = threading.Lock()
_PROCESS_LOCKS: dict[tuple[int, str], threading.Lock] = {}


def _environment(path: str) -> tuple[lmdb.Environment, threading.Lock]:
    """The process's environment of `path`, opened once per process (after fork: an
    environment inherited from the parent must not be used, and LMDB refuses a second open
    of one path in a process), made anew if it is not of this FORMAT or cannot be opened."""
    key = (os.getpid(), path)
    with _ENVS_LOCK:
        env = _ENVS.get(key)
        if env is None:
            env = _open(path)
            _ENVS[key] = env
            _PROCESS_LOCKS[key] = threading.Lock()
        return env, _PROCESS_LOCKS[key]


class _OtherFormat(lmdb.Error):
    """The directory holds a host state of another format (an earlier release's)."""


# What makes a directory anew: not LMDB's, torn, of another LMDB or of another format. Not
# any other error (a process forked after opening it is told "already open"; a directory it
# may not write): the directory may be another process's, in use.
_MADE_ANEW = (_OtherFormat, lmdb.InvalidError, lmdb.CorruptedError, lmdb.PageNotFoundError,
              lmdb.VersionMismatchError, lmdb.IncompatibleError, lmdb.PanicError)


def _open(path: str) -> lmdb.Environment:
    for attempt in (1, 2):
        try:
            os.makedirs(path, mode=0o750, exist_ok=True)
            env = lmdb.open(path, map_size=MAP_SIZE, max_dbs=8, max_readers=MAX_READERS, writemap=True,
                            sync=False, metasync=False, readahead=False)
            with env.begin(write=True) as txn:
                meta = env.open_db(b"meta", txn=txn)
                found = txn.get(b"format", db=meta)
                if found is None and txn.stat(meta)["entries"] == 0:
                    txn.put(b"format", FORMAT, db=meta)
                    txn.put(b"salt", os.urandom(16), db=meta)
                    txn.put(b"host", os.urandom(2), db=meta)  # breaks ties of the stamps of two hosts
                elif found != FORMAT:
                    raise _OtherFormat(f"{path} holds another format ({found!r})")
                boot = _boot_id()
                if txn.get(b"boot", db=meta) != boot:
                    # LMDB does not sync its file here (sync=False): after a crash or a power
                    # cut what it held may be torn. Start afresh after every boot, in one
                    # transaction (another process may be opening it too); a clean stop
                    # wrote what was unwritten before.
                    for name in _STATE_DBS:
                        txn.drop(env.open_db(name.encode(), txn=txn), delete=False)
                    for key in (b"writer", b"expiry_at", b"changes_at"):
                        txn.delete(key, db=meta)
                    txn.put(b"boot", boot, db=meta)
            return env
        except _MADE_ANEW:
            if attempt == 2:
                raise
            # Soft state: what it held is in the database but for its last dirty announces.
            # LMDB's two files only: the directory is the admin's, and may hold others.
            for name in ("data.mdb", "lock.mdb"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(path, name))
    raise AssertionError("unreachable")


_STATE_DBS = ("hashes", "swarms", "peers", "prefixes", "dirty")  # what the host holds (meta aside)


def _boot_id() -> bytes:
    """This boot of the machine (Linux); the same for every process until it reboots."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as file:
            return file.read().strip()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """A process of this pid exists (the writer's lease names one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def forget_environments() -> None:
    """Close every environment this process opened (tests that remove their directories)."""
    with _ENVS_LOCK:
        for (pid, _), env in list(_ENVS.items()):
            if pid == os.getpid():
                env.close()
        _ENVS.clear()
        _PROCESS_LOCKS.clear()


class HostState:
    """One host's swarms, peers and unwritten announces, in the LMDB environment at `path`."""

    def __init__(self, path: str, peer_timeout: int, bounds: Bounds, rng: random.Random | None = None,
                 finish_claims: Callable[[bytes], bool] = lambda ip: True):
        self.path = path
        self.finish_claims = finish_claims  # whether an address may record a finish of a peer the host lacks
        self.peer_timeout = peer_timeout
        self.bounds = bounds
        self.rng = rng or random.Random()
        self._opened: tuple[int, Any] | None = None
        self._host_id = 0

    # -- the environment ---------------------------------------------------------------------

    def open(self) -> None:
        """Open (or make) the environment now; raises OSError or lmdb.Error."""
        self._env()

    def _env(self) -> tuple[lmdb.Environment, threading.Lock, Any]:
        opened = self._opened
        if opened is None or opened[0] != os.getpid():
            env, lock = _environment(self.path)
            with env.begin(write=True) as txn:
                dbs = {name: env.open_db(name.encode(), txn=txn)
                       for name in (*_STATE_DBS, "meta")}
                salt = txn.get(b"salt", db=dbs["meta"])
                self._host_id = int.from_bytes(txn.get(b"host", db=dbs["meta"]) or b"", "big")
            opened = self._opened = (os.getpid(), (env, lock, dbs, salt))
        return opened[1][0], opened[1][1], opened[1]

    @property
    def host_id(self) -> int:
        """This host's id: the low 16 bits of its stamps."""
        self._env()
        return self._host_id

    def _rank(self, salt: bytes, tid4: bytes, peer_id: bytes) -> bytes:
        return hashlib.blake2b(tid4 + peer_id, digest_size=4, key=salt).digest()

    # -- announces ----------------------------------------------------------------------------

    def announce(self, request: AnnounceRequest, now: int, downloaded: int | None = None,
                 stored: StoredPeer | None = None, stored_read: bool = False) -> AnnounceResult:
        """Answer an announce in one write transaction: the key rule and the completion rule
        (swarm.plan_announce) against the held peer, the bounds for a new one, the peer's
        move, its dirty mark when the database must know, and the answer's sample.

        Raises NotHeld (read the swarm first), NeedsStoredPeer (read the peer's row first),
        Completes (write the completion through first, then call again with the swarm's
        `downloaded`), or a refusal (PeerConflict, TooManyPeers, Shed)."""
        env, lock, (_, _, dbs, salt) = self._env()
        with lock, env.begin(write=True) as txn:
            raw_tid = txn.get(request.info_hash, db=dbs["hashes"])
            if raw_tid is None:
                raise NotHeld()
            tid4 = bytes(raw_tid)
            swarm_raw = txn.get(tid4, db=dbs["swarms"])
            if swarm_raw is None:
                raise NotHeld()
            swarm = Swarm.unpack(swarm_raw)
            peer_id = request.peer_id
            rank = self._rank(salt, tid4, peer_id)
            peers_db = dbs["peers"]
            old_key = None
            held = None
            for pool in (b"\0", b"\1"):
                key = tid4 + pool + rank + peer_id
                raw = txn.get(key, db=peers_db)
                if raw is not None:
                    old_key, held = key, _held(raw)
                    break
            known: Any = held
            dirty_key = tid4 + peer_id
            prior = txn.get(dirty_key, db=dbs["dirty"])
            if held is None and not stored_read and prior is None and swarm.partial:
                raise NeedsStoredPeer(_TID.unpack(tid4)[0])  # the stored row decides the key rule
            if held is None:
                known = stored
            update = plan_announce(request, known)  # raises PeerConflict
            counts_completion = update.counts_completion and not (held is not None and held.completed)
            if held is None and known is None and request.event is STOPPED and not (
                    request.left == 0 and self.finish_claims(request.ip)):
                # Nothing to stop; recording it would let random peer_ids grow the backlog. A
                # finish (left=0) is recorded, at the completions' rate: its start may be at
                # another host, not written yet; the store counts it when that lands.
                return AnnounceResult(swarm.stats(), [])
            if prior is not None:  # the first unwritten announce's view of the stored row holds
                earlier = unpack_write(peer_id, prior)
                # A rejoin after a stop not written yet: the stored row is the earlier life's.
                base, fresh = earlier.base, earlier.fresh or (earlier.stopped and not update.remove)
            else:
                base, fresh = ((known.ip, known.key) if known is not None else None), False
            stamp = time.time_ns() // 1_000_000 * 65536 + self._host_id
            write = PeerWrite(peer_id, request.ip, request.port, update.key, request.state, request.left,
                              request.uploaded, request.downloaded, now, update.remove, base, fresh, stamp,
                              held.stamp if held is not None else 0)
            if counts_completion:
                if downloaded is None:
                    raise Completes(_TID.unpack(tid4)[0], write)
                # Written through: the stored row is this write's, of this life.
                write = write._replace(base=(write.ip, write.key), fresh=False)
            counts, changed = list(swarm.counts), False
            prefix_db = dbs["prefixes"]
            unheld = swarm.unheld
            if held is None and not update.remove:
                self._admit(txn, dbs, tid4, request.ip, stored is not None)
                if stored is not None:  # counted among the unheld until now
                    was = 0 if stored.left else 1
                    unheld = tuple(max(0, c - (i == was)) for i, c in enumerate(unheld))
            if held is not None and (update.remove or held.state is not write.state or held.ip != write.ip
                                     or held.port != write.port):
                txn.delete(old_key, db=peers_db)  # type: ignore[arg-type]  # held: found under old_key
                counts[held.state] -= 1
                changed = True
                if update.remove or held.ip != write.ip:
                    _move_prefixes(txn, prefix_db, tid4, held.ip, -1)
                old_key = None
            if not update.remove:
                was_counted = old_key is not None
                # What the database must know: anything but the time and byte counts, and
                # those too once the database's last_seen grows old.
                must_write = (held is None or changed or held.key != write.key or held.left != write.left
                              or now - held.written_seen >= REWRITE_SECONDS or counts_completion)
                written_seen = now if must_write else held.written_seen  # type: ignore[union-attr]
                completed = counts_completion or (held is not None and held.completed)
                txn.put(tid4 + _POOL[write.state] + rank + peer_id, _peer_value(write, completed, written_seen),
                        db=peers_db)
                if not was_counted:
                    counts[write.state] += 1
                    changed = True
                    if held is None or held.ip != write.ip:
                        _move_prefixes(txn, prefix_db, tid4, write.ip, 1)
            else:
                must_write = True
            if must_write:
                txn.put(dirty_key, pack_write(write), db=dbs["dirty"])
            new_downloaded = max(swarm.downloaded, downloaded or 0)
            if changed or new_downloaded != swarm.downloaded or now - swarm.used_at >= 60:
                swarm = swarm._replace(counts=tuple(counts), unheld=unheld, downloaded=new_downloaded, used_at=now)
                txn.put(tid4, swarm.pack(), db=dbs["swarms"])
            stats = swarm.stats()
            if update.remove or not request.numwant:
                return AnnounceResult(stats, [])
        # The sample in a read transaction after the write commits, outside the process lock
        # and LMDB's writer mutex (readers never block): the host's one writer slot is held
        # for the update alone (1.04-1.22x the announces a second, bench/perf_ab.py).
        with env.begin() as txn:
            peers = self._sample(txn, dbs, tid4, swarm, rank + peer_id, write.state is LEECHER, request.numwant,
                                 request.compact, broad_prefix(request.ip), now)
        return AnnounceResult(stats, peers)

    def _admit(self, txn: Any, dbs: dict, tid4: bytes, ip: bytes, stored: bool) -> None:
        """A new peer: refused beyond any prefix's share of the swarm, `retry in` past the
        host's bounds. A peer the database holds (of a partial swarm) is no new peer."""
        prefix_db = dbs["prefixes"]
        limits = self.bounds.peers_by_prefix
        for key in prefixes(ip):
            raw = txn.get(tid4 + key, db=prefix_db)
            if raw is not None and _COUNT.unpack(raw)[0] >= limits[len(key)]:
                raise TooManyPeers()
        if stored:
            return
        if (txn.stat(dbs["peers"])["entries"] >= self.bounds.max_peers
                or txn.stat(dbs["dirty"])["entries"] >= self.bounds.max_unwritten):
            raise Shed("peers")

    def _sample(self, txn: Any, dbs: dict, tid4: bytes, swarm: Swarm, asker: bytes, wants_seeds: bool,
                numwant: int, compact: bool, asker_prefix: bytes, now: int) -> list:
        """Up to numwant live peers from a random rank on, never the asker; a seed is sent only
        leechers. A broad prefix (limits.broad_prefix) that holds more than `answer_share`
        percent of the swarm fills no more than that share of the answer (at least
        ANSWER_FLOOR) to anyone outside it."""
        leechers = swarm.counts[0]
        others = swarm.counts[1] + swarm.counts[2]
        total = leechers + others if wants_seeds else leechers
        if total <= 0:
            return []
        pools = [b"\0", b"\1"] if wants_seeds else [b"\0"]
        first = 1 if wants_seeds and self.rng.random() * total >= leechers else 0
        start = self.rng.getrandbits(32).to_bytes(4, "big")
        # The walk: the first pool from `start`, the other pool whole, the first pool to `start`.
        order = pools[first:] + pools[:first]
        segments: list[tuple[bytes, bytes, bytes | None]] = [(tid4 + order[0] + start, tid4 + order[0], None)]
        segments += [(tid4 + pool, tid4 + pool, None) for pool in order[1:]]
        segments.append((tid4 + order[0], tid4 + order[0], tid4 + order[0] + start))
        share = self.bounds.answer_share
        cap = max(ANSWER_FLOOR, numwant * share // 100)
        members = max(1, sum(swarm.counts))
        taken: dict[bytes, int] = {}
        blocked: set[bytes] = set()
        walk = min(total + 1, (SPREAD_WALK + 1) * numwant)
        cutoff = now - self.peer_timeout
        chosen: list = []
        cursor = txn.cursor(db=dbs["peers"])
        prefix_db = dbs["prefixes"]
        seen = 0
        unpack_seen = _SEEN.unpack_from
        head = _PEER.size
        for begin, prefix, stop in segments:
            if not cursor.set_range(begin):
                continue
            for key, value in cursor.iternext():
                if key[:5] != prefix or (stop is not None and key >= stop):
                    break
                seen += 1
                if seen > walk:
                    return chosen
                if key[5:] == asker:
                    continue
                clen, last_seen = unpack_seen(value)
                if last_seen < cutoff:
                    continue  # silent: counted until expired, never handed out
                entry = value[head:head + clen]
                broad = entry[:3] if clen == 6 else entry[:6]
                if broad in blocked:
                    continue
                count = taken.get(broad, 0) + 1
                taken[broad] = count
                if count > cap and broad != asker_prefix:
                    raw = txn.get(tid4 + broad, db=prefix_db)
                    held = _COUNT.unpack(raw)[0] if raw is not None else 0
                    if share * members < held * 100 and held < members:
                        blocked.add(broad)
                        continue
                chosen.append(entry if compact else make_peer(entry[:-2], int.from_bytes(entry[-2:], "big"),
                                                                bytes(key[9:])))
                if len(chosen) == numwant:
                    return chosen
        return chosen

    # -- swarms from the database -----------------------------------------------------------------

    def install(self, info_hash: bytes, snapshot: SwarmSnapshot, now: int) -> None:
        """Hold a swarm the database read: its counters and peers (a window of a larger swarm:
        the rest counted as unheld). Peers the host already holds, or stopped and not yet
        written, keep what the host knows: it is newer."""
        env, lock, (_, _, dbs, salt) = self._env()
        tid4 = _TID.pack(snapshot.torrent_id)
        with lock, env.begin(write=True) as txn:
            raw = txn.get(tid4, db=dbs["swarms"])
            if raw is not None:
                swarm = Swarm.unpack(raw)
                if info_hash not in swarm.info_hashes:
                    swarm = swarm._replace(info_hashes=swarm.info_hashes + (info_hash,))
                    txn.put(tid4, swarm.pack(), db=dbs["swarms"])
                txn.put(info_hash, tid4, db=dbs["hashes"])
                return
            if txn.stat(dbs["swarms"])["entries"] >= self.bounds.max_swarms:
                raise Shed("swarms")
            counts = self._lay_out(txn, dbs, salt, tid4, snapshot.peers)
            stored = (snapshot.leechers, snapshot.seeders, snapshot.partial_seeds)
            unheld = tuple(max(0, s - c) for s, c in zip(stored, counts)) if len(snapshot.peers) >= HOST_SWARM_PEERS \
                else (0, 0, 0)
            swarm = Swarm(counts, unheld, snapshot.downloaded, now, now, (info_hash,), snapshot.name)
            txn.put(tid4, swarm.pack(), db=dbs["swarms"])
            txn.put(info_hash, tid4, db=dbs["hashes"])

    def _lay_out(self, txn: Any, dbs: dict, salt: bytes, tid4: bytes,
                 rows: Sequence[tuple]) -> tuple[int, int, int]:
        """Put stored peers the host does not hold (nor holds stopped, unwritten) into a swarm;
        returns the swarm's held counts after."""
        peers_db, dirty_db, prefix_db = dbs["peers"], dbs["dirty"], dbs["prefixes"]
        for peer_id, ip, port, state, key, left, last_seen, completed, stamp in rows:
            rank = self._rank(salt, tid4, peer_id)
            if (txn.get(tid4 + b"\0" + rank + peer_id, db=peers_db) is not None
                    or txn.get(tid4 + b"\1" + rank + peer_id, db=peers_db) is not None
                    or txn.get(tid4 + peer_id, db=dirty_db) is not None):
                continue
            write = PeerWrite(peer_id, ip, port, key, _STATES[state], left, 0, 0, last_seen, False, stamp=stamp)
            txn.put(tid4 + _POOL[state] + rank + peer_id, _peer_value(write, completed, last_seen), db=peers_db)
            _move_prefixes(txn, prefix_db, tid4, ip, 1)
        return self._recount(txn, peers_db, tid4)

    @staticmethod
    def _recount(txn: Any, peers_db: Any, tid4: bytes) -> tuple[int, int, int]:
        counts = [0, 0, 0]
        cursor = txn.cursor(db=peers_db)
        if cursor.set_range(tid4):
            for key, value in cursor.iternext():
                if key[:4] != tid4:
                    break
                counts[value[_SEEN.size]] += 1
        return counts[0], counts[1], counts[2]

    def take_changes(self, changes: Sequence[PeerChange], now: int) -> set[int]:
        """Take in peers' rows the database holds (written by any host, this one too) that
        are newer, by their announce's stamp, than what the host holds: a tombstone or a
        silent row removes the peer. A peer with an unwritten announce here is left as it
        is (the database orders the two when it lands; the next read sees the outcome).
        Returns the held swarms whose totals the changes may have moved."""
        env, lock, (_, _, dbs, salt) = self._env()
        cutoff = now - self.peer_timeout
        touched: set[int] = set()
        with lock, env.begin(write=True) as txn:
            swarms_db, peers_db, dirty_db, prefix_db = dbs["swarms"], dbs["peers"], dbs["dirty"], dbs["prefixes"]
            swarms: dict[bytes, Swarm] = {}
            room = self.bounds.max_peers - txn.stat(peers_db)["entries"]
            for change in changes:
                tid4 = _TID.pack(change.torrent_id)
                swarm = swarms.get(tid4)
                if swarm is None:
                    raw = txn.get(tid4, db=swarms_db)
                    if raw is None:
                        continue  # not held: read whole when it is
                    swarm = swarms[tid4] = Swarm.unpack(raw)
                if change.completed or change.stamp & 0xFFFF != self._host_id:
                    # Another host's write, or a completion (the store may have counted a
                    # finish another host recorded as this host's write landed): the
                    # totals may have moved. This host's other writes cannot move them.
                    touched.add(change.torrent_id)
                peer_id = change.peer_id
                if txn.get(tid4 + peer_id, db=dirty_db) is not None:
                    continue
                rank = self._rank(salt, tid4, peer_id)
                held_key, held = None, None
                for pool in (b"\0", b"\1"):
                    key = tid4 + pool + rank + peer_id
                    raw = txn.get(key, db=peers_db)
                    if raw is not None:
                        held_key, held = key, _held(raw)
                        break
                if held is not None and held.stamp >= change.stamp:
                    continue  # what the host holds is as new or newer
                counts = list(swarm.counts)
                if held is not None:
                    txn.delete(held_key, db=peers_db)  # type: ignore[arg-type]  # held: found under held_key
                    _move_prefixes(txn, prefix_db, tid4, held.ip, -1)
                    counts[held.state] -= 1
                    room += 1
                if (change.state < GONE and change.last_seen >= cutoff and room > 0
                        and (held is not None or not swarm.partial or sum(counts) < HOST_SWARM_PEERS)):
                    write = PeerWrite(peer_id, change.ip, change.port, change.key, _STATES[change.state], change.left,
                                      0, 0, change.last_seen, False, stamp=change.stamp)
                    txn.put(tid4 + _POOL[change.state] + rank + peer_id,
                            _peer_value(write, change.completed, change.last_seen), db=peers_db)
                    _move_prefixes(txn, prefix_db, tid4, change.ip, 1)
                    counts[change.state] += 1
                    room -= 1
                swarms[tid4] = swarm._replace(counts=tuple(counts))
            for tid4, swarm in swarms.items():
                txn.put(tid4, swarm.pack(), db=swarms_db)
        return touched

    def take_totals(self, totals: dict[int, SwarmTotals]) -> None:
        """The database's totals of held swarms: completions counted anywhere, and (of a
        swarm held in part) the stored peers the host does not hold."""
        env, lock, (_, _, dbs, _) = self._env()
        with lock, env.begin(write=True) as txn:
            for torrent_id, total in totals.items():
                tid4 = _TID.pack(torrent_id)
                raw = txn.get(tid4, db=dbs["swarms"])
                if raw is None:
                    continue
                swarm = Swarm.unpack(raw)
                unheld = swarm.unheld
                if swarm.partial:
                    stored = (total.leechers, total.seeders, total.partial_seeds)
                    unheld = tuple(max(0, s - c) for s, c in zip(stored, swarm.counts))
                txn.put(tid4, swarm._replace(downloaded=max(swarm.downloaded, total.downloaded),
                                             unheld=unheld).pack(), db=dbs["swarms"])

    def changes_read(self) -> int:
        """How far the host has read the database's changes (PeerChange.changed; 0: never)."""
        env, _, (_, _, dbs, _) = self._env()
        with env.begin() as txn:
            raw = txn.get(b"changes_at", db=dbs["meta"])
        return _CURSOR.unpack(raw)[0] if raw is not None else 0

    def read_changes_to(self, changed: int) -> None:
        env, lock, (_, _, dbs, _) = self._env()
        with lock, env.begin(write=True) as txn:
            txn.put(b"changes_at", _CURSOR.pack(changed), db=dbs["meta"])

    def drop(self, torrent_id: int) -> None:
        """Forget a swarm (unregistered, or idle with nothing unwritten)."""
        env, lock, (_, _, dbs, _) = self._env()
        tid4 = _TID.pack(torrent_id)
        with lock, env.begin(write=True) as txn:
            self._drop(txn, dbs, tid4)

    @staticmethod
    def _drop(txn: Any, dbs: dict, tid4: bytes) -> None:
        raw = txn.get(tid4, db=dbs["swarms"])
        if raw is not None:
            for info_hash in Swarm.unpack(raw).info_hashes:
                if txn.get(info_hash, db=dbs["hashes"]) == tid4:
                    txn.delete(info_hash, db=dbs["hashes"])
            txn.delete(tid4, db=dbs["swarms"])
        for name in ("peers", "prefixes", "dirty"):
            cursor = txn.cursor(db=dbs[name])
            if cursor.set_range(tid4):
                while cursor.key()[:4] == tid4:
                    if not cursor.delete():
                        break

    # -- reads ------------------------------------------------------------------------------------

    def stats(self, info_hashes: Sequence[bytes]) -> dict[bytes, SwarmStats]:
        """Stats of the held swarms among these hashes (a scrape)."""
        env, _, (_, _, dbs, _) = self._env()
        result = {}
        with env.begin() as txn:
            for info_hash in info_hashes:
                tid4 = txn.get(info_hash, db=dbs["hashes"])
                raw = txn.get(tid4, db=dbs["swarms"]) if tid4 is not None else None
                if raw is not None:
                    result[info_hash] = Swarm.unpack(raw).stats()
        return result

    def swarm(self, torrent_id: int) -> Swarm | None:
        env, _, (_, _, dbs, _) = self._env()
        with env.begin() as txn:
            raw = txn.get(_TID.pack(torrent_id), db=dbs["swarms"])
        return Swarm.unpack(raw) if raw is not None else None

    def swarms(self) -> dict[int, Swarm]:
        env, _, (_, _, dbs, _) = self._env()
        with env.begin() as txn:
            return {_TID.unpack(key)[0]: Swarm.unpack(value) for key, value in txn.cursor(db=dbs["swarms"])}

    def sizes(self) -> tuple[int, int, int]:
        """Swarms, peers and unwritten announces the host holds."""
        env, _, (_, _, dbs, _) = self._env()
        with env.begin() as txn:
            return tuple(txn.stat(dbs[name])["entries"] for name in ("swarms", "peers", "dirty"))  # type: ignore[return-value]

    # -- the batch ---------------------------------------------------------------------------------

    def dirty(self, most: int) -> list[Dirty]:
        """Up to `most` unwritten announces, in torrent order."""
        env, _, (_, _, dbs, _) = self._env()
        result = []
        with env.begin() as txn:
            for key, value in txn.cursor(db=dbs["dirty"]):
                result.append(Dirty(_TID.unpack_from(key)[0], unpack_write(bytes(key[4:]), value), bytes(value)))
                if len(result) >= most:
                    break
        return result

    def written(self, batch: Sequence[Dirty], registered: set[int], set_aside: Sequence[tuple[int, bytes]]) -> None:
        """The database committed a batch: clear its dirty marks (unless a newer announce
        replaced one) and forget peers whose write was set aside; a swarm the batch found
        no longer registered goes."""
        env, lock, (_, _, dbs, salt) = self._env()
        with lock, env.begin(write=True) as txn:
            dirty_db = dbs["dirty"]
            for entry in batch:
                key = _TID.pack(entry.torrent_id) + entry.write.peer_id
                if txn.get(key, db=dirty_db) == entry.raw:
                    txn.delete(key, db=dirty_db)
            for torrent_id, peer_id in set_aside:
                self._forget(txn, dbs, salt, _TID.pack(torrent_id), peer_id)
            for torrent_id in sorted({entry.torrent_id for entry in batch} - registered):
                self._drop(txn, dbs, _TID.pack(torrent_id))

    def _forget(self, txn: Any, dbs: dict, salt: bytes, tid4: bytes, peer_id: bytes) -> None:
        rank = self._rank(salt, tid4, peer_id)
        for pool in (b"\0", b"\1"):
            key = tid4 + pool + rank + peer_id
            raw = txn.get(key, db=dbs["peers"])
            if raw is not None:
                held = _held(raw)
                txn.delete(key, db=dbs["peers"])
                _move_prefixes(txn, dbs["prefixes"], tid4, held.ip, -1)
                swarm_raw = txn.get(tid4, db=dbs["swarms"])
                if swarm_raw is not None:
                    swarm = Swarm.unpack(swarm_raw)
                    counts = list(swarm.counts)
                    counts[held.state] -= 1
                    txn.put(tid4, swarm._replace(counts=tuple(counts)).pack(), db=dbs["swarms"])

    # -- the writer's lease, expiry ------------------------------------------------------------------

    def hold_lease(self, pid: int, now: int, seconds: int) -> bool:
        """Take or keep the host's one writer lease: True if this process holds it now. A
        lease runs out `seconds` after its holder last renewed it, or when the holder is gone."""
        env, lock, (_, _, dbs, _) = self._env()
        with lock, env.begin(write=True) as txn:
            raw = txn.get(b"writer", db=dbs["meta"])
            holder, until = _LEASE.unpack(raw) if raw is not None else (0, 0)
            if holder != pid and until > now and _alive(holder):
                return False  # a dead holder's lease goes at once: a restarted host writes at once
            txn.put(b"writer", _LEASE.pack(pid, now + seconds), db=dbs["meta"])
            return True

    def expire(self, now: int) -> int:
        """Forget up to EXPIRE_TURN peers' worth of silent ones, going on where the last call
        stopped (one short transaction per call); returns how many went. They stay in the
        database until the refresh expires them there."""
        env, lock, (_, _, dbs, _) = self._env()
        cutoff = now - self.peer_timeout
        gone = 0
        with lock, env.begin(write=True) as txn:
            meta, peers_db = dbs["meta"], dbs["peers"]
            start = txn.get(b"expiry_at", db=meta) or b""
            cursor = txn.cursor(db=peers_db)
            found = cursor.set_range(start) if start else cursor.first()
            looked, last = 0, b""
            moved: dict[bytes, list[int]] = {}
            while found and looked < EXPIRE_TURN:
                key, value = bytes(cursor.key()), cursor.value()
                looked += 1
                last = key
                if _SEEN.unpack_from(value)[1] < cutoff:
                    held = _held(value)
                    tid4 = key[:4]
                    _move_prefixes(txn, dbs["prefixes"], tid4, held.ip, -1)
                    moved.setdefault(tid4, [0, 0, 0])[held.state] += 1
                    gone += 1
                    found = cursor.delete() and bool(cursor.key())
                else:
                    found = cursor.next()
            txn.put(b"expiry_at", last + b"\0" if found else b"", db=meta)
            for tid4, counts in moved.items():
                raw = txn.get(tid4, db=dbs["swarms"])
                if raw is not None:
                    swarm = Swarm.unpack(raw)
                    txn.put(tid4, swarm._replace(counts=tuple(c - m for c, m in zip(swarm.counts, counts))).pack(),
                            db=dbs["swarms"])
        return gone

    def idle_swarms(self, since: int) -> list[int]:
        """Swarms nobody announced to since `since` that hold nothing unwritten."""
        env, _, (_, _, dbs, _) = self._env()
        idle = []
        with env.begin() as txn:
            dirty = txn.cursor(db=dbs["dirty"])
            for key, value in txn.cursor(db=dbs["swarms"]):
                if _SWARM.unpack_from(value)[7] < since:  # used_at
                    if dirty.set_range(key) and dirty.key()[:4] == key:
                        continue
                    idle.append(_TID.unpack(key)[0])
        return idle

    def clear(self) -> None:
        """Forget every swarm and unwritten announce (tests)."""
        env, lock, (_, _, dbs, _) = self._env()
        with lock, env.begin(write=True) as txn:
            for name in _STATE_DBS:
                txn.drop(dbs[name], delete=False)


# Peers read into the host state per swarm at most: a larger swarm is held as a window of
# random ranks (the rest counted, not handed out).
HOST_SWARM_PEERS = 20_000


def _move_prefixes(txn: Any, prefix_db: Any, tid4: bytes, ip: bytes, step: int) -> None:
    for key in prefixes(ip):
        full = tid4 + key
        raw = txn.get(full, db=prefix_db)
        count = (_COUNT.unpack(raw)[0] if raw is not None else 0) + step
        if count > 0:
            txn.put(full, _COUNT.pack(count), db=prefix_db)
        elif raw is not None:
            txn.delete(full, db=prefix_db)
