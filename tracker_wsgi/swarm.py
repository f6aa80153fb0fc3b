"""Swarm rules: what one announce does to the peer it comes from. Pure; both stores call it.

tracker_wsgi/live.py asks `plan_announce` what an announce does, given what its view knows
of the peer; the store checks the key rule again against the stored row.
"""

from __future__ import annotations

from typing import NamedTuple

from .model import AnnounceRequest, ClientError, Event, PeerState, SwarmStats
from .protocol import PEER_CONFLICT


class StoredPeer(NamedTuple):  # NamedTuples: built for every announce
    ip: bytes
    key: bytes | None
    state: PeerState
    left: int
    completed: bool  # this peer's completion has already been counted


class PeerUpdate(NamedTuple):
    remove: bool  # `stopped`: the peer leaves the swarm
    counts_completion: bool  # add one to the torrent's `downloaded`
    completed: bool  # value to store, so a repeated `completed` counts once
    key: bytes | None  # key to store


def plan_announce(request: AnnounceRequest, stored: StoredPeer | None) -> PeerUpdate:
    """Decide what an announce does to its peer.

    - `key` protects a peer (BEP 3 "key"): an announce for a known peer_id from another
      address is accepted only with the key the peer registered; otherwise anyone could
      stop or move someone else's peer (the original only had the IP check).
    - A completion is counted once per peer: on `completed`, or when a known leecher
      reports left=0 without the event (the original's rule), never twice.
    """
    if stored is not None and stored.ip != request.ip:
        if stored.key is None or stored.key != request.key:
            raise ClientError(PEER_CONFLICT)
    key = request.key if request.key is not None else (stored.key if stored else None)
    if request.event is Event.STOPPED:
        return PeerUpdate(remove=True, counts_completion=False, completed=False, key=key)
    already = stored is not None and stored.completed
    finished = request.left == 0 and (
        request.event is Event.COMPLETED or (stored is not None and stored.left > 0)
    )
    counts = finished and not already
    return PeerUpdate(remove=False, counts_completion=counts, completed=already or counts, key=key)


def swarm_stats(leechers: int, seeds: int, partial_seeds: int, downloaded: int, name: str) -> SwarmStats:
    """A swarm's numbers from its peer counts by PeerState (BEP 21: partial seeds are
    incomplete but not downloaders). A count a race left below zero reads as 0."""
    leechers, seeds, partial_seeds = max(0, leechers), max(0, seeds), max(0, partial_seeds)
    return SwarmStats(seeds, leechers + partial_seeds, downloaded, leechers, name)
