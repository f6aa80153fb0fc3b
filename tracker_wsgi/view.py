"""A swarm's view: what one process holds of one torrent's swarm, and every change to it.

A view is the counters and the peers of a swarm as the store last gave them
(`install`), moved by the announces this process answered since (`take`), until a batch
writes those announces (`hand_over`, then `settle`). The view owns its fields: every
transition is a method here, and the coordinator (live.LiveSwarms) only calls them. It
holds no lock of its own: every method is called with the coordinator's lock held (see
live.LiveSwarms for the locking protocol).

Owners of the rules a view applies:
- what an announce does to its peer (the key rule, the completion rule): swarm.py, before
  the view takes the announce;
- the counts a view moves: `_move` (one peer's old state out, its new state in), and
  the counts a view shows: swarm.swarm_stats;
- which peers an answer hands out: `sample`; which peers leave the view and stay in the
  store: `make_room` (beyond VIEW_LIMIT), `prune` (silent), `forget_written` (the
  process is over its peer limit), `forget` (a write the store set aside).
"""

from __future__ import annotations

import random
from typing import NamedTuple

from .limits import ANSWER_FLOOR, broad_prefix, prefixes
from .model import LEECHER, Peer, PeerState, PeerWrite, SwarmSnapshot, SwarmStats, SwarmWritten, make_peer
from .swarm import swarm_stats

_STATES = tuple(PeerState)  # stored state -> PeerState: indexing costs a tenth of PeerState(n)
VIEW_LIMIT = 2000  # peers a view holds at most: bounds a huge swarm's memory
PRUNE_SECONDS = 60  # how often a view drops its silent peers
ROOM_TRIES = 4  # random draws per announce to find a written peer that makes room
SPREAD_WALK = 4  # entries per wanted peer an answer in a hogged view walks at most (SwarmView._spread)
NOTHING_NEW = (0, 0)  # what SwarmView.take returns for nearly every announce: no new unwritten announce, no new peer


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


class SwarmView:
    """One torrent's view: counters and peers, in pools that sample in O(numwant).

    Its announces go through three places: `_pending` (answered, not yet given to a
    batch), `_flushing` (in a batch not yet committed) and then the store. `_unwritten`
    is what `_pending` moved the counts by: a batch's recount lacks exactly that."""

    __slots__ = ("_torrent_id", "_hashes", "_name", "_downloaded", "_counts", "_unwritten", "_members",
                 "_pools", "_pool_ids", "_positions", "_version", "_loaded_at", "_loading", "_used_at",
                 "_pruned_at", "_pending", "_flushing", "_stats_cache", "_per_prefix", "_unheld", "_crowders",
                 "_hog_cache")

    def __init__(self, torrent_id: int):
        self._torrent_id = torrent_id
        self._hashes: set[bytes] = set()  # the info hashes that reach it (one, or two for a hybrid)
        self._name = ""
        self._downloaded = 0
        self._counts = [0, 0, 0]  # peers by PeerState: leechers, seeds, partial seeds
        self._unwritten = [0, 0, 0]  # what `_pending` changed in counts: a batch's recount lacks it
        self._members: dict[bytes, Member] = {}
        # _pools[0]: leechers (what a seed is sent); _pools[1]: seeds and partial seeds. A
        # pool holds its peers' compact forms, which nearly every answer sends as they are,
        # and _pool_ids their peer_ids in the same order.
        self._pools: tuple[list[bytes], list[bytes]] = ([], [])
        self._pool_ids: tuple[list[bytes], list[bytes]] = ([], [])
        self._positions: dict[bytes, int] = {}  # peer_id -> index in its pool
        self._version = -1  # the stored version the view is built on; -1: unknown
        self._loaded_at = -1  # when the view was last known to match the store
        self._loading = False  # a request thread is reading it from the store
        self._used_at = 0  # when it last answered an announce or was read for one
        self._pruned_at = 0
        self._pending: dict[bytes, PeerWrite] = {}  # announces not yet given to a batch
        self._flushing: dict[bytes, PeerWrite] = {}  # given to a batch not yet committed
        self._stats_cache: SwarmStats | None = None  # stats() until counts, downloaded or name change
        self._per_prefix: dict[bytes, int] = {}  # members by every limits.prefixes level
        # The stored swarm's peers the view does not hold, by prefix: estimated from the
        # sample a read holds, counted one by one as the view forgets written peers (admits).
        self._unheld: dict[bytes, int] = {}
        # Broad prefixes (limits.broad_prefix) holding more than ANSWER_FLOOR members: while
        # none holds more than its share of the view, `sample` takes its window as it is.
        self._crowders: set[bytes] = set()
        self._hog_cache: tuple[int, list[bytes]] | None = None  # (share, hogs) until members change

    # -- what the coordinator reads ----------------------------------------------------------

    @property
    def torrent_id(self) -> int:
        return self._torrent_id

    @property
    def info_hashes(self) -> frozenset[bytes]:
        return frozenset(self._hashes)

    @property
    def peer_count(self) -> int:
        """Peers the view holds (the counts may say more: the store holds the rest)."""
        return len(self._members)

    @property
    def unwritten_count(self) -> int:
        """Announces answered and not committed yet."""
        return len(self._pending) + len(self._flushing)

    @property
    def last_used(self) -> int:
        return self._used_at

    def holds(self, peer_id: bytes) -> bool:
        return peer_id in self._members

    def member(self, peer_id: bytes) -> Member | None:
        return self._members.get(peer_id)

    def is_fresh(self, now: int, sync_interval: int) -> bool:
        """Known to match the store within sync_interval, or about to be checked by the next
        batch (it holds unwritten announces): a batch comes a little over sync_interval
        after the one before, and a busy swarm must not be read again in that gap."""
        return now - self._loaded_at < sync_interval or bool(self._pending or self._flushing)

    def usable_member(self, peer_id: bytes, now: int, sync_interval: int) -> Member | None:
        """The member an announce of `peer_id` is answered from with no store call: the
        view is fresh, or being read by another thread (meanwhile it answers as it is),
        and it holds the peer. The announce hot path: one call."""
        if self._loading or now - self._loaded_at < sync_interval or self._pending or self._flushing:
            return self._members.get(peer_id)
        return None

    def admits(self, ip: bytes, limits: dict[int, int]) -> bool:
        """Whether a new peer from this address may join: every prefix it is in holds fewer
        of the swarm's peers than its level's limit (limits.Limits.peers_by_prefix). What
        the view holds of a prefix is exact; what it does not hold (`_unheld`) is counted
        too, or every re-read would forget the rest and a prefix could add more each time."""
        per_prefix, unheld = self._per_prefix, self._unheld
        for key in prefixes(ip):
            if per_prefix.get(key, 0) + unheld.get(key, 0) >= limits[len(key)]:
                return False
        return True

    def stats(self) -> SwarmStats:
        if self._stats_cache is None:
            leechers, seeds, partial_seeds = self._counts
            self._stats_cache = swarm_stats(leechers, seeds, partial_seeds, self._downloaded, self._name)
        return self._stats_cache

    def fresh_stats(self, now: int, sync_interval: int) -> SwarmStats | None:
        """stats() if the view is fresh (a scrape may answer from it), else None."""
        return self.stats() if self.is_fresh(now, sync_interval) else None

    def is_idle(self, since: int) -> bool:
        """Nobody announced to it since `since`, and it holds nothing unwritten."""
        return self._used_at < since and not self._pending and not self._flushing

    def may_drop(self) -> bool:
        """Whether it can leave memory losing nothing: nothing unwritten, no read under way."""
        return not self._pending and not self._flushing and not self._loading

    # -- reading from the store ----------------------------------------------------------------

    def answers_to(self, info_hash: bytes) -> None:
        self._hashes.add(info_hash)

    def start_load(self, now: int, sync_interval: int) -> bool:
        """Whether the caller must read the view from the store now (then it is marked as
        being read, so other threads answer from it as it is meanwhile)."""
        if self._loading or self.is_fresh(now, sync_interval):
            return False
        self._loading = True
        return True

    def load_failed(self, now: int) -> None:
        """The store could not be read: answer from the view as it is, and try again in
        sync_interval. Its announces wait in `_pending` until the database is back."""
        self._loading = False
        self._loaded_at = now

    @classmethod
    def read(cls, snapshot: SwarmSnapshot) -> SwarmView:
        """The stored peers of a snapshot laid out as a view holds them, for `install`.
        The costly part of installing (a Peer and a compact form per peer, up to
        VIEW_PEERS): built on a view nobody else sees, so outside the coordinator's lock."""
        read = cls(snapshot.torrent_id)
        for peer_id, ip, port, state, key, left, last_seen in snapshot.peers:  # already counted
            read._add(peer_id, Member(key, left, _STATES[state], last_seen, make_peer(ip, port, peer_id)))
        held = len(snapshot.peers)
        stored = snapshot.leechers + snapshot.seeders + snapshot.partial_seeds
        if held and stored > held:
            # A read holds a random window of a larger swarm (peer ranks are random): each
            # prefix is about as common among the peers it did not read as among those it did.
            unheld = (stored - held) / held
            read._unheld = {key: int(count * unheld) for key, count in read._per_prefix.items()}
        return read

    def install(self, snapshot: SwarmSnapshot, read: SwarmView, now: int) -> int:
        """Replace the view with the store's (`read` is SwarmView.read(snapshot)), then
        replay this process's unwritten announces. Returns how many more peers it holds
        than before."""
        held = len(self._members)
        self._name, self._downloaded, self._version = snapshot.name, snapshot.downloaded, snapshot.version
        self._stats_cache = None
        self._counts = [snapshot.leechers, snapshot.seeders, snapshot.partial_seeds]
        self._members, self._pools, self._pool_ids = read._members, read._pools, read._pool_ids
        self._positions, self._per_prefix, self._crowders = read._positions, read._per_prefix, read._crowders
        self._unheld = read._unheld
        self._hog_cache = None
        members = self._members
        for write in self._flushing.values():
            self._move(members.get(write.peer_id), write)
        self._unwritten = [0, 0, 0]
        for write in self._pending.values():
            self._move(members.get(write.peer_id), write)
        # Read for an announce (or by the batch for one): it counts as used, so the batch
        # does not drop it as idle before that announce is taken.
        self._loaded_at = self._pruned_at = self._used_at = now
        self._loading = False
        return len(self._members) - held

    # -- announces ---------------------------------------------------------------------------

    def take(self, write: PeerWrite, rng: random.Random) -> tuple[int, int]:
        """Take an answered announce: the peer moves in the view, and the write waits for
        the next batch (written through or not, the batch writes it again so the swarm is
        recounted). A new peer beyond VIEW_LIMIT makes room. Returns how many unwritten
        announces and how many held peers it added (0 or 1 each) for the process's tallies."""
        peer_id = write.peer_id
        members = self._members
        old = members.get(peer_id)
        if (old is not None and old.state is write.state and not write.stopped
                and old.peer.ip == write.ip and old.peer.port == write.port):
            # The usual re-announce: nothing counted changes, and the peer keeps its place.
            members[peer_id] = Member(write.key, write.left, old.state, write.last_seen, old.peer)
            joins = 0
        else:
            joins = 0 if old is not None or write.stopped else 1
            self._move(old, write)
        pending = self._pending
        added = 0 if peer_id in pending else 1
        pending[peer_id] = write
        self._used_at = write.last_seen
        if joins and len(members) > VIEW_LIMIT:
            self.make_room(VIEW_LIMIT, rng)
        return NOTHING_NEW if not (added or joins) else (added, joins)

    def completion_counted(self, downloaded: int) -> None:
        """The store counted a completion and says the swarm's `downloaded` now."""
        if downloaded > self._downloaded:
            self._downloaded = downloaded
            self._stats_cache = None

    def _move(self, old: Member | None, write: PeerWrite) -> None:
        """Move the peer from `old` (None: the view lacks it) to what `write` says (or out
        of the view), and the counts with it. The one place a view's counts change between
        batches."""
        self._stats_cache = None
        if old is not None:
            self._forget_peer(write.peer_id)
            self._counts[old.state] -= 1
            self._unwritten[old.state] -= 1
        if not write.stopped:
            old_peer = old and old.peer
            # A re-announce from the same address keeps its Peer (and its compact form).
            if old_peer is None or old_peer.ip != write.ip or old_peer.port != write.port:
                old_peer = make_peer(write.ip, write.port, write.peer_id)
            self._add(write.peer_id, Member(write.key, write.left, write.state, write.last_seen, old_peer))
            self._counts[write.state] += 1
            self._unwritten[write.state] += 1

    def sample(self, asker: bytes, wants_seeds: bool, numwant: int, rng: random.Random,
               compact: bool = True, share: int = 100) -> list[bytes] | list[Peer]:
        """Up to numwant peers from a random place in the pools, never the asker: their
        compact forms, or (compact=False) their Peers. A seed is sent only leechers (BEP 3
        practice, and BitTornado's). A window, not random.sample: slices cost a few
        microseconds, numwant random draws ten times that, and every peer takes a random
        place in its pool as it joins (_add). A broad prefix that holds more than `share`
        percent of the view fills no more than that share of numwant (at least
        ANSWER_FLOOR peers) of an answer to anyone outside it (_spread)."""
        leechers, others = self._pools if compact else self._pool_ids
        split = len(leechers)
        total = split + len(others) if wants_seeds else split
        # Where the asker is in leechers + others (None: not among what is sampled).
        at = self._positions.get(asker)
        if at is not None and self._members[asker].state is not LEECHER:
            at = at + split if wants_seeds else None
        hogs = self._hogs(share, asker) if self._crowders else None
        cap = max(ANSWER_FLOOR, numwant * share // 100)
        if hogs and total > cap:  # however small the swarm: a hog's share holds in every answer
            chosen = self._spread(leechers + others if wants_seeds else leechers, at, numwant, cap, hogs, rng,
                                  compact)
        elif total <= numwant + (at is not None):  # everyone
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
        return chosen if compact else [self._members[peer_id].peer for peer_id in chosen]

    def _hogs(self, share: int, asker: bytes) -> list[bytes]:
        """The broad prefixes that hold more than `share` percent of the view (not all of
        it), when the asker is in none of them (a hog's own peers get a
        window as it is: they hog their own answers, at the cost of no one else's).
        Elsewhere a window is fair as it is: peers take random places in the pools as they
        join (_add), so a window holds each prefix about in its share of the view; and a
        swarm all behind one carrier-grade NAT /24 is answered as any other."""
        cached = self._hog_cache
        if cached is not None and cached[0] == share:
            hogs = cached[1]
        else:
            per_prefix = self._per_prefix
            members = len(self._members)
            hogs = [p for p in self._crowders if share * members < per_prefix[p] * 100 and per_prefix[p] < members]
            self._hog_cache = (share, hogs)
        member = self._members.get(asker)
        return [] if not hogs or member is None or broad_prefix(member.peer.ip) in hogs else hogs

    def _spread(self, entries: list[bytes], at: int | None, numwant: int, cap: int, hogs: list[bytes],
                rng: random.Random, compact: bool) -> list[bytes]:
        """`sample` where prefixes hog the view: from a random place on, at most `cap`
        entries of each hog, however few others there are (a leecher asking for 200 peers
        of a swarm one /48 floods gets 50 of its peers and every other one found, not 194
        of the flood's). Walks at most SPREAD_WALK x numwant entries (pool order is
        random: a fair sample of the view), only for an asker outside the hogs."""
        total = len(entries)
        start = int(rng.random() * total)
        walk = min(total, SPREAD_WALK * numwant)
        members = self._members
        taken = dict.fromkeys(hogs, 0)
        chosen: list[bytes] = []
        for first, end in ((start, min(total, start + walk)), (0, max(0, start + walk - total))):
            for index in range(first, end):
                if index == at:
                    continue
                entry = entries[index]
                if compact:  # broad_prefix of a compact form (address + 2-byte port), inlined
                    prefix = entry[:3] if len(entry) == 6 else entry[:6]
                else:
                    prefix = broad_prefix(members[entry].peer.ip)
                count = taken.get(prefix)
                if count is not None:
                    if count >= cap:
                        continue
                    taken[prefix] = count + 1
                chosen.append(entry)
                if len(chosen) == numwant:
                    return chosen
        return chosen

    # -- the batch -----------------------------------------------------------------------------

    def hand_over(self, batch: list[tuple[int, PeerWrite]]) -> None:
        """Give every unwritten announce to a batch: what a failed batch held (still in
        `_flushing`) goes again, newer announces of a peer replacing older ones."""
        self._flushing.update(self._pending)
        self._pending = {}
        self._unwritten = [0, 0, 0]
        torrent_id = self._torrent_id
        batch.extend([(torrent_id, write) for write in self._flushing.values()])

    def settle(self, result: SwarmWritten, now: int) -> bool:
        """The batch committed what the view handed over: take its recount if the view was
        built on the version it wrote over; False if another writer came in between (the
        view must be read again)."""
        self._flushing = {}
        if result.version_before != self._version:
            return False
        self._version = result.version
        unwritten = self._unwritten
        self._counts = [result.leechers + unwritten[0], result.seeders + unwritten[1],
                        result.partial_seeds + unwritten[2]]
        if result.downloaded > self._downloaded:
            self._downloaded = result.downloaded
        self._stats_cache = None
        self._loaded_at = now
        return True

    def forget(self, peer_id: bytes) -> None:
        """A peer whose write the store set aside leaves the view (the batch's recount
        corrects the counts)."""
        if peer_id in self._members:
            self._forget_peer(peer_id)

    def prune_if_due(self, now: int, silent_since: int) -> None:
        """Every PRUNE_SECONDS, forget peers silent since before `silent_since`: they are
        never handed out (they stay in the counts until the refresh expires them)."""
        if self._pruned_at <= now - PRUNE_SECONDS:
            self.prune(silent_since)
            self._pruned_at = now

    def prune(self, cutoff: int) -> None:
        """Forget peers silent since before `cutoff`."""
        for peer_id in [p for p, m in self._members.items() if m.last_seen < cutoff]:
            self._forget_peer(peer_id)

    def make_room(self, limit: int, rng: random.Random) -> None:
        """Forget random peers whose announces are already written, down to `limit` (a few
        tries per call: unwritten peers stay)."""
        for _ in range(ROOM_TRIES):
            if len(self._members) <= limit:
                return
            ids = max(self._pool_ids, key=len)
            peer_id = ids[int(rng.random() * len(ids))]
            if peer_id not in self._pending and peer_id not in self._flushing:
                self._forget_peer(peer_id, stays_stored=True)

    def forget_written(self, most: int) -> int:
        """Forget up to `most` peers whose announces are written; returns how many."""
        chosen = [p for p in self._members if p not in self._pending and p not in self._flushing][:most]
        for peer_id in chosen:
            self._forget_peer(peer_id, stays_stored=True)
        return len(chosen)

    # -- the pools -----------------------------------------------------------------------------

    def _add(self, peer_id: bytes, member: Member) -> None:
        self._members[peer_id] = member
        self._hog_cache = None
        per_prefix = self._per_prefix
        for key in prefixes(member.peer.ip):
            count = per_prefix[key] = per_prefix.get(key, 0) + 1
        if count == ANSWER_FLOOR + 1:  # the last key is the broad prefix
            self._crowders.add(key)
        which = member.state is not LEECHER
        pool, ids, positions = self._pools[which], self._pool_ids[which], self._positions
        # A random place, not the end: peers of one prefix that join one after the other must
        # not sit side by side, where one window of `sample` could hold only them. The
        # place comes from the peer_id's hash, which the client cannot predict (Python salts
        # bytes hashes per process).
        end = len(pool)
        place = hash(peer_id) % (end + 1)
        if place == end:
            pool.append(member.peer.compact)
            ids.append(peer_id)
        else:
            pool.append(pool[place])
            moved = ids[place]
            ids.append(moved)
            positions[moved] = end
            pool[place], ids[place] = member.peer.compact, peer_id
        positions[peer_id] = place

    def _unpool(self, peer_id: bytes, state: PeerState) -> None:
        which = state is not LEECHER
        pool, ids = self._pools[which], self._pool_ids[which]
        index = self._positions.pop(peer_id)
        last, last_id = pool.pop(), ids.pop()
        if index < len(pool):
            pool[index], ids[index] = last, last_id
            self._positions[last_id] = index

    def _forget_peer(self, peer_id: bytes, stays_stored: bool = False) -> None:
        """Out of the view, not out of the counts: the store still holds the peer. One that
        `stays_stored` (written, and not silent) still counts against its prefixes."""
        member = self._members.pop(peer_id)
        self._hog_cache = None
        self._unpool(peer_id, member.state)
        per_prefix, unheld = self._per_prefix, self._unheld
        for key in prefixes(member.peer.ip):
            left = per_prefix[key] - 1
            if left:
                per_prefix[key] = left
            else:
                del per_prefix[key]
            if stays_stored:
                unheld[key] = unheld.get(key, 0) + 1
        if left == ANSWER_FLOOR:  # the broad prefix's (the last key): it no longer crowds the view
            self._crowders.discard(key)
