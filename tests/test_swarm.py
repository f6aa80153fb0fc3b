"""tracker_wsgi.swarm: what one announce does to its peer, and how peers are counted.

Both stores apply these rules, so they are specified here once, without a database.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

import pytest

from conftest import ih, pid
from tracker_wsgi.model import AnnounceRequest, Event, PeerConflict, PeerState
from tracker_wsgi.swarm import PeerUpdate, plan_announce, swarm_stats

HOME = ipaddress.ip_address("198.51.100.7").packed
ELSEWHERE = ipaddress.ip_address("203.0.113.9").packed
HOME6 = ipaddress.ip_address("2001:db8::7").packed


def request(*, left: int = 100, event: Event = Event.NONE, ip: bytes = HOME, key: bytes | None = None) -> AnnounceRequest:
    return AnnounceRequest(
        info_hash=ih(1), peer_id=pid(1), ip=ip, port=6881, uploaded=0, downloaded=0, left=left,
        event=event, numwant=0 if event is Event.STOPPED else 50, compact=True, no_peer_id=False,
        key=key, tracker_id=None, client_ip=ip,
    )


class Known(NamedTuple):  # what a view knows of a peer (swarm.KnownPeer)
    ip: bytes
    key: bytes | None
    left: int


def stored(*, left: int = 100, ip: bytes = HOME, key: bytes | None = None) -> Known:
    return Known(ip=ip, key=key, left=left)


def update(*, remove=False, counts=False, key=None) -> PeerUpdate:
    return PeerUpdate(remove=remove, counts_completion=counts, key=key)


# --------------------------------------------------------------------------------------
# key protection (BEP 3 `key`)
# --------------------------------------------------------------------------------------

CONFLICT_CASES = [
    # (id, announce, stored peer): all refused with PeerConflict
    ("another IP, different key", request(ip=ELSEWHERE, key=b"other"), stored(key=b"secret")),
    ("another IP, no key", request(ip=ELSEWHERE), stored(key=b"secret")),
    ("another IP, peer registered no key", request(ip=ELSEWHERE, key=b"guess"), stored()),
    ("another IP, neither has a key", request(ip=ELSEWHERE), stored()),
    ("another IP family, no key", request(ip=HOME6), stored(key=b"secret")),
    ("key differs only in case", request(ip=ELSEWHERE, key=b"SECRET"), stored(key=b"secret")),
    ("stopped from another IP without the key", request(ip=ELSEWHERE, event=Event.STOPPED), stored(key=b"secret")),
]


@pytest.mark.parametrize(("announce", "peer"), [c[1:] for c in CONFLICT_CASES], ids=[c[0] for c in CONFLICT_CASES])
def test_announce_from_another_ip_without_the_peers_key_is_refused(announce, peer):
    """BEP 3 `key`: only the registered key lets a known peer_id move to another address,
    so nobody can stop or move someone else's peer."""
    with pytest.raises(PeerConflict):
        plan_announce(announce, peer)


ACCEPTED_CASES = [
    # (id, announce, stored peer or None, the update)
    ("new peer, no key", request(), None, update()),
    ("new peer registers its key", request(key=b"secret"), None, update(key=b"secret")),
    ("new seed", request(left=0), None, update()),
    ("another IP with the same key", request(ip=ELSEWHERE, key=b"secret"), stored(key=b"secret"),
     update(key=b"secret")),
    ("same binary key from IPv6", request(ip=HOME6, key=b"\x00\xff"), stored(key=b"\x00\xff"),
     update(key=b"\x00\xff")),
    ("same IP without key: stored key kept", request(), stored(key=b"secret"), update(key=b"secret")),
    ("same IP with a new key: new key stored", request(key=b"new"), stored(key=b"old"), update(key=b"new")),
    ("same IP, no key anywhere", request(), stored(), update()),
]


@pytest.mark.parametrize(("announce", "peer", "expected"), [c[1:] for c in ACCEPTED_CASES],
                         ids=[c[0] for c in ACCEPTED_CASES])
def test_accepted_announces(announce, peer, expected):
    assert plan_announce(announce, peer) == expected


# --------------------------------------------------------------------------------------
# stopped, and finished downloads
# --------------------------------------------------------------------------------------

STOPPED_CASES = [  # (case, the peer as known, left in the `stopped`, whether it finished)
    ("known leecher, stopped with nothing left (aria2 --seed-time=0)", stored(), 0, True),
    ("known leecher, stopped half way", stored(), 50, False),
    ("known seed", stored(left=0), 0, False),
    ("unknown peer", None, 0, False),
]


@pytest.mark.parametrize("peer, left, finished", [c[1:] for c in STOPPED_CASES], ids=[c[0] for c in STOPPED_CASES])
def test_stopped_removes_the_peer_and_a_known_leecher_with_nothing_left_has_finished(peer, left, finished):
    """BEP 3 `stopped`: the peer leaves the swarm; swarm.finishes says whether it finished."""
    assert plan_announce(request(event=Event.STOPPED, left=left), peer) == update(remove=True, counts=finished)


def test_stopped_keeps_the_key_for_the_record():
    assert plan_announce(request(event=Event.STOPPED), stored(key=b"k")) == update(remove=True, key=b"k")


COMPLETION_CASES = [
    # (id, announce, known peer or None, finishes a download)
    ("completed with left=0", request(event=Event.COMPLETED, left=0), stored(left=100), True),
    ("completed from a peer the tracker never saw", request(event=Event.COMPLETED, left=0), None, True),
    ("completed repeated by a seed the view knows", request(event=Event.COMPLETED, left=0), stored(left=0), True),
    ("known leecher reaching left=0 without the event", request(left=0), stored(left=100), True),
    ("known partial seed reaching left=0", request(left=0), stored(left=5), True),
    ("seed starting with left=0", request(event=Event.STARTED, left=0), None, False),
    ("seed re-announcing left=0", request(left=0), stored(left=0), False),
    ("completed with left>0", request(event=Event.COMPLETED, left=1), stored(left=100), False),
    ("completed with left>0 from an unknown peer", request(event=Event.COMPLETED, left=50), None, False),
    ("leecher still downloading", request(left=40), stored(left=100), False),
    ("paused (BEP 21)", request(event=Event.PAUSED, left=5), stored(left=100), False),
]


@pytest.mark.parametrize(("announce", "peer", "finishes"), [c[1:] for c in COMPLETION_CASES],
                         ids=[c[0] for c in COMPLETION_CASES])
def test_which_announces_finish_a_download(announce, peer, finishes):
    """`downloaded` counts finished downloads (BEP 48): on `completed` with left=0, or when
    a known leecher reports left=0; never for a peer that started as a seed. That one peer
    counts once, however often it says so, is the store's rule (test_store_contract:
    test_completed_counts_once_per_peer)."""
    assert plan_announce(announce, peer) == update(counts=finishes)


# --------------------------------------------------------------------------------------
# swarm_stats (BEP 21)
# --------------------------------------------------------------------------------------

STATS_CASES = [
    # (id, (leechers, seeds, partial seeds), (complete, incomplete, downloaders))
    ("empty swarm", (0, 0, 0), (0, 0, 0)),
    ("seeds only", (0, 4, 0), (4, 0, 0)),
    ("leechers only", (3, 0, 0), (0, 3, 3)),
    ("partial seeds are incomplete but not downloaders", (0, 0, 2), (0, 2, 0)),
    ("all three", (5, 7, 3), (7, 8, 5)),
    ("a count a race left below zero reads as 0", (-1, 2, -1), (2, 0, 0)),
]


@pytest.mark.parametrize(("counts", "expected"), [c[1:] for c in STATS_CASES], ids=[c[0] for c in STATS_CASES])
def test_swarm_stats(counts, expected):
    """BEP 21: partial seeds count in `incomplete`, and `downloaders` leaves them out."""
    stats = swarm_stats(*counts, 9, "name")
    assert (stats.complete, stats.incomplete, stats.downloaders) == expected
    assert (stats.downloaded, stats.name) == (9, "name")


STATE_CASES = [
    ("left > 0 is a leecher", request(left=1), PeerState.LEECHER),
    ("left = 0 is a seed", request(left=0), PeerState.SEED),
    ("paused is a partial seed (BEP 21)", request(left=10, event=Event.PAUSED), PeerState.PARTIAL_SEED),
    ("completed with left = 0 is a seed", request(left=0, event=Event.COMPLETED), PeerState.SEED),
]


@pytest.mark.parametrize(("announce", "state"), [c[1:] for c in STATE_CASES], ids=[c[0] for c in STATE_CASES])
def test_request_state(announce, state):
    assert announce.state is state

