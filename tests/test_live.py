"""A swarm's view in memory (tracker_wsgi/view.py), without a store."""

from __future__ import annotations

import random

from conftest import pid
from tracker_wsgi.model import PeerState, PeerWrite
from tracker_wsgi.view import SwarmView

V4 = bytes([192, 0, 2, 1])


def write(n: int, state: PeerState, stopped: bool = False) -> PeerWrite:
    return PeerWrite(pid(n), V4, 6000 + n, None, state, 0 if state is PeerState.SEED else 5, 0, 0, 1, stopped)


def test_samples_never_hold_the_asker_or_a_peer_twice_and_seeds_get_only_leechers():
    rng = random.Random(3)
    for _ in range(300):
        swarm = SwarmView(1)
        leechers, seeds = rng.randrange(0, 60), rng.randrange(0, 60)
        states = {n: PeerState.LEECHER for n in range(leechers)}
        states |= {n: rng.choice([PeerState.SEED, PeerState.PARTIAL_SEED]) for n in range(leechers, leechers + seeds)}
        for n, state in states.items():
            swarm.take(write(n, state), rng)
        for n in rng.sample(sorted(states), min(5, len(states))):  # some leave: pools reorder
            swarm.take(write(n, states.pop(n), stopped=True), rng)
        for _ in range(10):
            asker = rng.choice([*states, 999])  # 999: not in the swarm
            numwant = rng.randrange(1, 80)
            wants_seeds = states.get(asker, PeerState.LEECHER) is not PeerState.SEED
            state = rng.getstate()
            peers = swarm.sample(pid(asker), wants_seeds, numwant, rng, compact=False)
            rng.setstate(state)  # the same window again, as compact forms
            assert swarm.sample(pid(asker), wants_seeds, numwant, rng) == [p.compact for p in peers]
            ids = [p.peer_id for p in peers]
            eligible = {pid(n) for n, s in states.items() if wants_seeds or s is PeerState.LEECHER} - {pid(asker)}
            assert len(ids) == len(set(ids)) == min(numwant, len(eligible)), (numwant, len(eligible))
            assert set(ids) <= eligible


def test_a_large_swarm_is_sampled_from_everywhere():
    swarm = SwarmView(1)
    rng = random.Random(5)
    for n in range(500):
        swarm.take(write(n, PeerState.LEECHER if n % 2 else PeerState.SEED), rng)
    seen = set()
    for _ in range(200):
        seen |= {p.peer_id for p in swarm.sample(pid(1), True, 50, rng, compact=False)}
    assert len(seen) == 499
