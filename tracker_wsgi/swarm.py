"""Swarm rules: what one announce does to the peer it comes from, and what a swarm's counts
say. Pure.

tracker_wsgi/live.py asks `plan_announce` what an announce does, given what its view knows
of the peer; the store checks the key rule again against the stored row.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from .model import COMPLETED, STOPPED, AnnounceRequest, ClientError, SwarmStats
from .protocol import PEER_CONFLICT


class KnownPeer(Protocol):
    """What a view knows of the peer an announce comes from (live.Member is one)."""

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
    - A download finishes on `completed` with left=0, or when a known leecher reports
      left=0 without the event (the original's rule). Whether this peer's completion was
      already counted is the store's to know: it counts one per peer (write_through).
    """
    if known is not None and known.ip != request.ip:
        if known.key is None or known.key != request.key:
            raise ClientError(PEER_CONFLICT)
    key = request.key if request.key is not None else (known.key if known is not None else None)
    if request.event is STOPPED:
        return PeerUpdate(True, False, key)
    finished = request.left == 0 and (
        request.event is COMPLETED or (known is not None and known.left > 0)
    )
    return PeerUpdate(False, finished, key)


def swarm_stats(leechers: int, seeds: int, partial_seeds: int, downloaded: int, name: str) -> SwarmStats:
    """A swarm's numbers from its peer counts by PeerState (BEP 21: partial seeds are
    incomplete but not downloaders). A count a race left below zero reads as 0."""
    leechers, seeds, partial_seeds = max(0, leechers), max(0, seeds), max(0, partial_seeds)
    return SwarmStats(seeds, leechers + partial_seeds, downloaded, leechers, name)
