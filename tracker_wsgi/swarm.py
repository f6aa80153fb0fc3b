"""Swarm rules: what one announce does to the peer it comes from, and what a swarm's counts
say. Pure: each rule is one function here, and everything that applies it calls it.

- The key rule: `conflicts`. hoststate.py applies it (through `plan_announce`) before every
  answer, against the peer the host holds or the stored row; the store applies it again as
  it writes, over a row another host wrote (store/announce.py).
- The completion rule: `finishes`. The host state applies it before the answer, against
  the peer it holds (a completion is written through); the store applies it to a write
  that finishes a stored leecher another host took, and counts each once per peer life.
- What a swarm's counts say: `swarm_stats`. How the counts move with one announce is the
  host state's (hoststate.HostState.announce); the store recounts from its rows every batch.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from .model import COMPLETED, STOPPED, AnnounceRequest, PeerConflict, SwarmStats


class KnownPeer(Protocol):
    """What a view knows of the peer an announce comes from (view.Member is one)."""

    @property
    def ip(self) -> bytes: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def left(self) -> int: ...


class PeerUpdate(NamedTuple):  # built for every announce
    remove: bool  # `stopped`: the peer leaves the swarm
    counts_completion: bool  # this announce finishes a download: the store counts it once per peer
    key: bytes | None  # key to store


def plan_announce(request: AnnounceRequest, known: KnownPeer | None) -> PeerUpdate:
    """Decide what an announce does to its peer.

    - `key` protects a peer (BEP 3 "key"): an announce for a known peer_id from another
      address is accepted only with the key the peer registered; otherwise anyone could
      stop or move someone else's peer (the original only had the IP check).
    - Whether the announce finishes a download: `finishes`. Whether this peer's completion
      was already counted is the store's to know: it counts one per peer (write_through).
    """
    if known is not None and conflicts(known.ip, known.key, request.ip, request.key):
        raise PeerConflict()
    key = request.key if request.key is not None else (known.key if known is not None else None)
    finished = finishes(request.event is COMPLETED, request.left, known.left if known is not None else None)
    return PeerUpdate(request.event is STOPPED, finished, key)


def conflicts(known_ip: bytes, known_key: bytes | None, ip: bytes, key: bytes | None) -> bool:
    """The key rule: an announce for a known peer from another address must carry the key
    the peer registered. The host state (plan_announce) and the store (against a stored row
    another host wrote) apply this one function."""
    return known_ip != ip and (known_key is None or known_key != key)


def finishes(completed_event: bool, left: int, known_left: int | None) -> bool:
    """A download finishes on `completed` with left=0, or when a peer this tracker knew as a
    leecher (left > 0) reports left=0, whatever the event (the original's rule) - `stopped`
    included: aria2 with --seed-time=0 announces `started`, downloads, then only `stopped`
    with left=0. The host state (plan_announce) and the store apply this one rule."""
    return left == 0 and (completed_event or (known_left is not None and known_left > 0))


def swarm_stats(leechers: int, seeds: int, partial_seeds: int, downloaded: int, name: str) -> SwarmStats:
    """A swarm's numbers from its peer counts by PeerState (BEP 21: partial seeds are
    incomplete but not downloaders). A count a race left below zero reads as 0."""
    leechers, seeds, partial_seeds = max(0, leechers), max(0, seeds), max(0, partial_seeds)
    return SwarmStats(seeds, leechers + partial_seeds, downloaded, leechers, name)
