"""What a hostile client meets in a daemon process (live.py with limits.py), on both stores:
per-address shares and rates, the process's bounds on views, peers and unwritten
announces, and the key rule for peers the view does not hold."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from conftest import new_swarm_dir, ih
from test_store_contract import NOW, SYNC, TIMEOUT, ann
from tracker_wsgi.limits import ANSWER_FLOOR, Limits, MemoryGuard, broad_prefix, prefixes
from tracker_wsgi.live import HostSwarms
from tracker_wsgi.model import ClientError, Event, PeerConflict, PeerState, Shed, TooManyPeers, Torrent, make_peer
from tracker_wsgi.store import open_store

OTHER_V4 = bytes([198, 51, 100, 99])
V6_HOST = bytes.fromhex("20010db8000000010000000000000001")


@pytest.fixture(params=["sqlite", "mysql"])
def store(request):
    store = open_store(request.getfixturevalue(f"{request.param}_url"), TIMEOUT)
    store.create_tables()
    for n in range(1, 6):
        store.register(Torrent(ih(n), None, f"t{n}", 1000), NOW)
    yield store
    store.close()


def live(store, **limits) -> HostSwarms:
    return HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW, limits=Limits(**limits))


def refused(swarms: HostSwarms, request) -> type[ClientError]:
    with pytest.raises(ClientError) as err:
        swarms.announce(request, NOW)
    return type(err.value)


def test_an_address_holds_its_share_of_a_swarm_and_no_more(store):
    swarms = live(store, peers_per_address=3)
    for n in range(3):
        swarms.announce(ann(n), NOW)
    assert refused(swarms, ann(3)) is TooManyPeers
    swarms.announce(ann(3, ip=OTHER_V4), NOW)  # another address has its own share
    swarms.announce(ann(4, torrent=2), NOW)  # and so has another swarm
    swarms.announce(ann(0), NOW)  # a peer that holds its place re-announces as ever
    swarms.announce(ann(0, event=Event.STOPPED), NOW)
    swarms.announce(ann(5), NOW)  # a peer that left makes room
    swarms.flush()
    assert store.scrape([ih(1)], NOW)[ih(1)].incomplete == 4


def test_an_ipv6_host_is_one_address_whatever_its_interface_ids(store):
    swarms = live(store, peers_per_address=2)
    swarms.announce(ann(0, ip=V6_HOST), NOW)
    swarms.announce(ann(1, ip=V6_HOST[:8] + bytes(7) + b"\x09"), NOW)
    assert refused(swarms, ann(2, ip=V6_HOST[:8] + bytes(7) + b"\x0a")) is TooManyPeers
    swarms.announce(ann(3, ip=bytes.fromhex("20010db8000000020000000000000001")), NOW)


def test_new_peers_wait_while_the_unwritten_backlog_is_full_and_known_ones_go_on(store):
    swarms = live(store, max_unwritten=3)
    for n in range(3):
        swarms.announce(ann(n, ip=bytes([198, 51, 100, n])), NOW)
    with pytest.raises(Shed):
        swarms.announce(ann(3, ip=bytes([198, 51, 100, 3])), NOW)
    swarms.announce(ann(1, ip=bytes([198, 51, 100, 1])), NOW)  # replaces its own unwritten announce
    assert swarms.flush() == 3
    swarms.announce(ann(3, ip=bytes([198, 51, 100, 3])), NOW)


def test_past_max_swarms_a_new_swarm_waits_until_the_batch_drops_idle_views(store):
    clock = [NOW]
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: clock[0], limits=Limits(max_swarms=3))
    for torrent in (1, 2, 3):
        swarms.announce(ann(torrent, torrent=torrent), clock[0])
    with pytest.raises(Shed):
        swarms.announce(ann(4, torrent=4), clock[0])
    clock[0] += 1
    swarms.announce(ann(2, torrent=2), clock[0])
    swarms.announce(ann(3, torrent=3), clock[0])
    swarms.flush()  # over 90% of the limit: the least recently used view goes
    swarms.announce(ann(4, torrent=4), clock[0])
    assert set(swarms._by_id) == {store.find_swarm(ih(n), NOW, 10).torrent_id for n in (2, 3, 4)}


def test_past_max_peers_the_batch_forgets_written_peers_of_the_largest_swarm(store):
    swarms = live(store, max_peers=10)
    for n in range(10):
        swarms.announce(ann(n, ip=bytes([198, 51, 100, n])), NOW)
    with pytest.raises(Shed):
        swarms.announce(ann(10, ip=bytes([198, 51, 100, 10])), NOW)
    swarms.flush()
    held = sum(view.peer_count for view in swarms._by_id.values())
    assert held == 8  # TRIM_TO: they stay in the store and the counts
    assert store.scrape([ih(1)], NOW)[ih(1)].incomplete == 10
    swarms.announce(ann(10, ip=bytes([198, 51, 100, 10])), NOW)


def test_a_process_near_its_memory_limit_takes_no_new_swarms_or_peers(store):
    size = [0]
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW,
                        memory=MemoryGuard(limit=1000, clock=lambda: size[0], data_bytes=lambda: size[0]))
    swarms.announce(ann(0), NOW)
    size[0] = 10_000  # over the limit; the clock moved on, so the guard reads it again
    with pytest.raises(Shed):
        swarms.announce(ann(1), NOW)
    with pytest.raises(Shed):
        swarms.announce(ann(2, torrent=2), NOW)
    swarms.announce(ann(0), NOW)  # what memory holds is still answered


def test_completions_per_address_are_rate_limited(store):
    swarms = live(store, completions_per_minute=2)
    for n in range(3):
        swarms.announce(ann(n, left=10), NOW)
    swarms.announce(ann(0, left=0, event=Event.COMPLETED), NOW)
    swarms.announce(ann(1, left=0, event=Event.COMPLETED), NOW)
    with pytest.raises(Shed):
        swarms.announce(ann(2, left=0, event=Event.COMPLETED), NOW)
    assert store.scrape([ih(1)], NOW)[ih(1)].downloaded == 2


def test_open_mode_registrations_per_address_are_rate_limited(store_url_open):
    swarms = live(store_url_open, new_swarms_per_minute=2)
    swarms.announce(ann(0, info_hash=b"\x01" * 20), NOW)
    swarms.announce(ann(0, info_hash=b"\x02" * 20), NOW)
    with pytest.raises(Shed):
        swarms.announce(ann(0, info_hash=b"\x03" * 20), NOW)
    swarms.announce(ann(1, ip=OTHER_V4, info_hash=b"\x03" * 20), NOW)
    swarms.announce(ann(1, info_hash=b"\x01" * 20), NOW)  # a swarm it holds costs nothing


@pytest.fixture(params=["sqlite", "mysql"])
def store_url_open(request):
    store = open_store(request.getfixturevalue(f"{request.param}_url"), TIMEOUT, register_unknown=True)
    store.create_tables()
    yield store
    store.close()


def test_the_key_rule_holds_for_a_peer_the_view_does_not_hold(store):
    """A peer another process (or host) wrote, and a view that forgot it: an announce of its
    peer_id from another address without its key is refused before any answer, so nothing
    is answered that the store would then refuse, and the view never takes the stranger."""
    owner = live(store)
    stranger_view = live(store)
    stranger_view.announce(ann(50, ip=OTHER_V4), NOW)  # this process holds the swarm first
    owner.announce(ann(1, key=b"secret"), NOW)
    owner.flush()
    assert refused(stranger_view, ann(1, ip=OTHER_V4)) is PeerConflict
    assert refused(stranger_view, ann(1, ip=OTHER_V4, event=Event.STOPPED)) is PeerConflict
    assert not stranger_view._by_hash[ih(1)].holds(ann(1).peer_id)
    stranger_view.announce(ann(1, ip=OTHER_V4, key=b"secret"), NOW)  # with the key: it moved
    stranger_view.flush()
    assert store.find_peer(stranger_view._by_hash[ih(1)].torrent_id, ann(1).peer_id).ip == OTHER_V4


def test_a_stop_for_a_peer_nobody_knows_is_answered_and_costs_nothing(store):
    swarms = live(store, max_unwritten=1)
    for n in range(100):
        swarms.announce(ann(n, event=Event.STOPPED), NOW)
    assert swarms.flush() == 0


def test_the_key_rule_holds_for_a_peer_the_view_forgot_beyond_its_limit(store, monkeypatch):
    """A swarm bigger than a view holds: written peers make room and leave the view (they
    stay in the store and the counts). A stranger announcing one of their peer_ids from
    another address is refused before any answer; the peer itself goes on as ever."""
    monkeypatch.setattr(view_module, "VIEW_LIMIT", 5)
    swarms = live(store)
    for n in range(5):
        swarms.announce(ann(n, ip=bytes([198, 51, 100, n])), NOW)
    swarms.flush()
    for n in range(5, 40):  # each new peer makes room: written peers leave the view
        swarms.announce(ann(n, ip=bytes([198, 51, 100, n])), NOW)
    view = swarms._by_hash[ih(1)]
    forgotten = [n for n in range(5) if not view.holds(ann(n).peer_id)]
    assert forgotten  # unwritten peers stay: only the written ones made room
    victim = forgotten[0]
    assert refused(swarms, ann(victim, ip=OTHER_V4)) is PeerConflict
    assert not view.holds(ann(victim).peer_id)
    swarms.announce(ann(victim, ip=bytes([198, 51, 100, victim])), NOW)  # the peer itself
    swarms.flush()
    assert store.find_peer(view.torrent_id, ann(victim).peer_id).ip == bytes([198, 51, 100, victim])
    assert store.scrape([ih(1)], NOW)[ih(1)].incomplete == 40


SITE = bytes.fromhex("20010db8abcd")  # an IPv6 /48: 256 /56s of 256 /64s each


def in_site(n: int, interface: int = 1) -> bytes:
    """The n-th /64 of SITE, rotating its /56 first (n's low byte), then the /64 in it."""
    return SITE + bytes([n % 256, n // 256 % 256]) + interface.to_bytes(8, "big")


def test_each_prefix_level_holds_its_own_share_of_a_swarm(store):
    swarms = live(store, peers_per_address=2, peers_per_ipv6_56=3, peers_per_ipv6_48=5, peers_per_ipv4_24=4)
    home = SITE + b"\x07"  # one /56
    assert [accepted(swarms, ann(n, ip=home + bytes([n]) + bytes(8))) for n in range(5)] == [True] * 3 + [False] * 2
    assert accepted(swarms, ann(10, ip=SITE + b"\x08\x00" + bytes(8)))  # another /56 of the /48
    assert accepted(swarms, ann(11, ip=SITE + b"\x09\x00" + bytes(8)))
    assert not accepted(swarms, ann(12, ip=SITE + b"\x0a\x00" + bytes(8)))  # the /48 holds 5
    assert accepted(swarms, ann(13, ip=bytes.fromhex("20010db8abce") + bytes(10)))  # the next /48
    assert [accepted(swarms, ann(20 + n, ip=bytes([198, 51, 100, n]))) for n in range(6)] == [True] * 4 + [False] * 2
    assert accepted(swarms, ann(30, ip=bytes([198, 51, 101, 1])))  # the next /24
    swarms.announce(ann(0, ip=home + bytes(9)), NOW)  # a peer that holds its place re-announces as ever


def accepted(swarms: HostSwarms, request, now: int = NOW) -> bool:
    try:
        swarms.announce(request, now)
    except TooManyPeers:
        return False
    return True


def test_one_ipv6_48_adds_at_most_what_its_documented_limits_say(store):
    """The issue's attack with the shipped limits: one /48 rotating through its /56s and
    /64s. It holds at most peers_per_ipv6_48 peers in a swarm, fills at most
    answer_share_per_prefix of a leecher's numwant=200 answer while others' peers are
    there, and has completions_per_minute_ipv6_48 completions counted a minute (whitelist
    `open`: the next test)."""
    shipped = Limits()
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW, limits=shipped)
    for n in range(300):  # legitimate leechers, each from its own IPv4 /24
        swarms.announce(ann(10_000 + n, ip=bytes([198, 18 + n // 256, n % 256, 1])), NOW)
    attackers = [n for n in range(1500) if accepted(swarms, ann(n, ip=in_site(n)))]
    assert len(attackers) == shipped.peers_per_ipv6_48 == 1024

    asker = ann(20_000, ip=bytes([203, 0, 113, 9]), numwant=200)
    for _ in range(20):
        peers = swarms.announce(asker, NOW).peers
        assert len(peers) == 200
        theirs = sum(p.ip[:6] == SITE for p in peers)
        assert theirs <= 200 * shipped.answer_share_per_prefix // 100 == 50

    counted = 0
    for n in attackers[:600]:
        try:
            swarms.announce(ann(n, ip=in_site(n), left=0, event=Event.COMPLETED), NOW)
            counted += 1
        except Shed:
            pass
    assert counted == shipped.completions_per_minute_ipv6_48 == 480
    assert store.scrape([ih(1)], NOW)[ih(1)].downloaded == 480


def test_one_ipv6_48_registers_at_most_its_documented_new_swarms_a_minute(store_url_open):
    shipped = Limits()
    registrations = HostSwarms(store_url_open, SYNC, new_swarm_dir(), clock=lambda: NOW, limits=shipped)
    registered = 0
    for n in range(300):
        try:
            registrations.announce(ann(n, ip=in_site(n), info_hash=n.to_bytes(20, "big")), NOW)
            registered += 1
        except Shed:
            pass
    assert registered == shipped.new_swarms_per_minute_ipv6_48 == 240


def test_a_views_prefix_counts_and_random_places_stay_true_through_joins_and_leaves():
    """The bookkeeping the limits and the answer's share read (view.SwarmView): counts at
    every prefix level, the prefixes crowding the view, and each peer's place in its pool."""
    rng = random.Random(7)
    swarm = view_module.SwarmView(1)
    held: dict[bytes, view_module.Member] = {}
    for _ in range(4000):
        if held and rng.random() < 0.4:
            peer_id = rng.choice(list(held))
            swarm._forget_peer(peer_id)
            del held[peer_id]
            continue
        peer_id = rng.randbytes(20)
        ip = (bytes([198, 51, rng.randrange(3), rng.randrange(256)]) if rng.random() < 0.5
              else SITE[:5] + bytes([rng.randrange(2), rng.randrange(3), rng.randrange(3)]) + bytes(7) + b"\x01")
        member = view_module.Member(None, rng.randrange(2), PeerState(rng.randrange(3)), NOW,
                                    make_peer(ip, 6881, peer_id))
        swarm._add(peer_id, member)
        held[peer_id] = member
    counts = Counter(key for m in held.values() for key in prefixes(m.peer.ip))
    assert swarm._per_prefix == counts
    assert swarm._crowders == {key for m in held.values() if counts[key := broad_prefix(m.peer.ip)] > ANSWER_FLOOR}
    for pool, ids in zip(swarm._pools, swarm._pool_ids):
        assert [held[p].peer.compact for p in ids] == pool
        assert all(swarm._positions[p] == n for n, p in enumerate(ids))
    assert sorted(swarm._positions) == sorted(held)


def test_a_prefix_new_to_a_partly_held_swarm_has_its_whole_limit(store, monkeypatch):
    """The peers a view holds of a prefix are counted as they are, not scaled up by the
    swarm's size: a site whose users all arrive after the view read a tenth of a large
    swarm (all of them held, unwritten) may still have its whole limit. Scaling what the
    view holds by swarm / view refused this site at 11 peers instead of 100."""
    monkeypatch.setattr("tracker_wsgi.live.VIEW_PEERS", 100)
    clock = [NOW]
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: clock[0], limits=Limits(peers_per_ipv6_48=100))
    for n in range(1000):
        swarms.announce(ann(10_000 + n, ip=bytes([198, 18, n // 256, n % 256])), clock[0])  # others
    swarms.flush()
    clock[0] += SYNC  # stale: the next announce reads the view again, 100 of its 1,000 peers
    assert sum(accepted(swarms, ann(n, ip=in_site(n)), clock[0]) for n in range(150)) == 100


def test_a_prefix_cannot_grow_past_its_limit_through_a_view_that_holds_part_of_the_swarm(store, monkeypatch):
    """A view re-read from the store holds at most live.VIEW_PEERS of its swarm (a random
    sample); the prefix's share of it stands for its share of the swarm, so a re-read
    does not make room: the prefix ends near its limit (a sample's error), not a limit
    further on at every re-read."""
    monkeypatch.setattr("tracker_wsgi.live.VIEW_PEERS", 100)
    clock = [NOW]
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: clock[0], limits=Limits(peers_per_ipv6_48=100))
    for n in range(100):
        swarms.announce(ann(10_000 + n, ip=bytes([198, 18, n, 1])), clock[0])  # others
    attackers = sum(accepted(swarms, ann(n, ip=in_site(n)), clock[0]) for n in range(150))
    assert attackers == 100
    for round in range(1, 6):
        swarms.flush()
        clock[0] += SYNC  # stale: the next announce reads the view again, 100 of its peers
        tries = range(200 * round, 200 * round + 150)
        attackers += sum(accepted(swarms, ann(n, ip=in_site(n)), clock[0]) for n in tries)
    swarms.flush()
    theirs = sum(1 for p in store.find_swarm(ih(1), clock[0], 10_000).peers if bytes(p[1])[:6] == SITE)
    assert theirs == attackers <= 125
