"""The store contract (tracker_wsgi/store/__init__.py), one suite run against both stores:
the embedded SQLite and the real MariaDB. Any store must pass every test here."""

from __future__ import annotations

import logging
import struct
import threading
import time

import pytest

from conftest import announce_query, ih, new_swarm_dir, pid
from tracker_wsgi import hoststate, live
from tracker_wsgi.config import Config
from tracker_wsgi.limits import Limits
from tracker_wsgi.live import HostSwarms
from tracker_wsgi.model import (
    KEY_RULE_REFUSED,
    AnnounceRequest,
    Event,
    PeerConflict,
    PeerState,
    PeerWrite,
    StoredPeer,
    SwarmTotals,
    Torrent,
    TrackerFull,
    UnknownTorrent,
)
from tracker_wsgi.protocol import (
    MAX_COUNTER,
    AnnouncePolicy,
    parse_announce,
    parse_query,
)
from tracker_wsgi.refresh import refresh
from tracker_wsgi.store import announce, open_store
from tracker_wsgi.store.sqlbase import BATCH_ROWS
from tracker_wsgi.store.statements import MAX_TOTAL_BYTES
from tracker_wsgi.swarm import plan_announce

NOW = 1_700_000_000
TIMEOUT = 2700
SYNC = 2  # sync_interval: a view this many seconds old is read again
V4 = bytes([192, 0, 2, 1])
V6 = bytes.fromhex("20010db8000000000000000000000001")


@pytest.fixture(params=["sqlite", "mysql"])
def store_url(request):
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def swarms(store):
    """One daemon process's swarms in front of the store. Every test peer announces from
    one address: the per-address completion rate is raised out of the way (test_live_limits
    tests it)."""
    return HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW, limits=Limits(completions_per_minute=10_000))


@pytest.fixture
def store(store_url):
    store = open_store(store_url, TIMEOUT)
    store.create_tables()
    store.create_tables()  # idempotent
    store.register(Torrent(ih(1), None, "one", 1000), NOW)
    yield store
    store.close()


def ann(n: int, *, torrent: int = 1, left: int = 100, event: Event = Event.NONE, ip: bytes = V4,
        port: int | None = None, key: bytes | None = None, numwant: int = 50, uploaded: int = 0,
        info_hash: bytes | None = None) -> AnnounceRequest:
    return AnnounceRequest(
        info_hash=info_hash or ih(torrent), peer_id=pid(n), ip=ip, port=port or 6000 + n,
        uploaded=uploaded, downloaded=0, left=left, event=event, numwant=numwant, compact=False,
        no_peer_id=False, key=key, tracker_id=None, client_ip=ip,
    )


def test_unknown_torrent_is_refused(store, swarms):
    with pytest.raises(UnknownTorrent):
        swarms.announce(ann(1, torrent=99), NOW)


def test_open_store_registers_unknown_hashes(store_url):
    store = open_store(store_url, TIMEOUT, register_unknown=True)
    store.create_tables()
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW)
    result = swarms.announce(ann(1, torrent=42), NOW)
    assert (result.stats.complete, result.stats.incomplete) == (0, 1)
    swarms.flush()
    assert store.scrape([ih(42)], NOW)[ih(42)].incomplete == 1


def test_peers_find_each_other_but_never_themselves(store, swarms):
    assert swarms.announce(ann(1), NOW).peers == []
    result = swarms.announce(ann(2), NOW)
    assert [p.peer_id for p in result.peers] == [pid(1)]
    assert (result.peers[0].ip, result.peers[0].port) == (V4, 6001)
    assert result.stats.incomplete == 2


def test_seeds_get_only_leechers(store, swarms):
    swarms.announce(ann(1, left=0), NOW)
    swarms.announce(ann(2, left=0), NOW)
    swarms.announce(ann(3, left=5), NOW)
    swarms.announce(ann(4, left=0, event=Event.PAUSED), NOW)
    seed_view = swarms.announce(ann(1, left=0), NOW)
    assert {p.peer_id for p in seed_view.peers} == {pid(3)}
    leecher_view = swarms.announce(ann(3, left=5), NOW)
    assert {p.peer_id for p in leecher_view.peers} == {pid(1), pid(2), pid(4)}


def test_partial_seeds_are_incomplete_but_not_downloaders(store, swarms):
    """BEP 21."""
    swarms.announce(ann(1, left=0), NOW)
    swarms.announce(ann(2, left=5), NOW)
    swarms.announce(ann(3, left=5, event=Event.PAUSED), NOW)
    stats = swarms.scrape([ih(1)], NOW)[ih(1)]
    assert (stats.complete, stats.incomplete, stats.downloaders) == (1, 2, 1)


def test_numwant_limits_the_peer_list_and_zero_sends_none(store, swarms):
    for n in range(1, 31):
        swarms.announce(ann(n), NOW)
    assert len(swarms.announce(ann(99, numwant=7), NOW).peers) == 7
    assert swarms.announce(ann(98, numwant=0), NOW).peers == []
    everyone = swarms.announce(ann(97, numwant=200), NOW).peers
    assert len(everyone) == 32 and pid(97) not in {p.peer_id for p in everyone}


def test_completed_counts_once_per_peer(store, swarms):
    swarms.announce(ann(1, left=10, event=Event.STARTED), NOW)
    assert swarms.announce(ann(1, left=0, event=Event.COMPLETED), NOW).stats.downloaded == 1
    assert swarms.announce(ann(1, left=0, event=Event.COMPLETED), NOW).stats.downloaded == 1
    assert swarms.announce(ann(1, left=0), NOW).stats.downloaded == 1
    stats = swarms.scrape([ih(1)], NOW)[ih(1)]
    assert (stats.complete, stats.incomplete, stats.downloaded) == (1, 0, 1)
    swarms.flush()
    stats = store.scrape([ih(1)], NOW)[ih(1)]
    assert (stats.complete, stats.incomplete, stats.downloaded) == (1, 0, 1)


def test_stopped_removes_the_peer_and_returns_no_peers(store, swarms):
    swarms.announce(ann(1), NOW)
    swarms.announce(ann(2), NOW)
    result = swarms.announce(ann(1, event=Event.STOPPED, numwant=0), NOW)
    assert result.peers == [] and result.stats.incomplete == 1
    swarms.flush()
    assert store.scrape([ih(1)], NOW)[ih(1)].incomplete == 1
    # Stopping an unknown peer is harmless.
    assert swarms.announce(ann(9, event=Event.STOPPED, numwant=0), NOW).stats.incomplete == 1


def test_key_protects_a_peer_from_another_address(store, swarms):
    other = bytes([198, 51, 100, 9])
    swarms.announce(ann(1, key=b"\x00\xffk1"), NOW)
    with pytest.raises(PeerConflict):
        swarms.announce(ann(1, ip=other, key=b"wrong"), NOW)
    with pytest.raises(PeerConflict):
        swarms.announce(ann(1, ip=other, event=Event.STOPPED), NOW)
    moved = swarms.announce(ann(2, ip=other), NOW)
    assert [(p.peer_id, p.ip) for p in moved.peers] == [(pid(1), V4)]
    swarms.announce(ann(1, ip=other, key=b"\x00\xffk1"), NOW)  # same key: the peer moved
    assert [p.ip for p in swarms.announce(ann(3), NOW).peers if p.peer_id == pid(1)] == [other]


def test_same_peer_id_in_two_torrents_is_two_peers(store, swarms):
    """The original keyed peers by peer_id alone; one client seeds many torrents."""
    store.register(Torrent(ih(2), None, "two", 5), NOW)
    swarms.announce(ann(1, torrent=1), NOW)
    swarms.announce(ann(1, torrent=2), NOW)
    scrape = swarms.scrape([ih(1), ih(2)], NOW)
    assert scrape[ih(1)].incomplete == 1 and scrape[ih(2)].incomplete == 1
    swarms.flush()
    scrape = store.scrape([ih(1), ih(2)], NOW)
    assert scrape[ih(1)].incomplete == 1 and scrape[ih(2)].incomplete == 1


def test_ipv6_peers_keep_their_address(store, swarms):
    swarms.announce(ann(1, ip=V6), NOW)
    assert swarms.announce(ann(2), NOW).peers[0].ip == V6


def test_silent_peers_are_not_handed_out_and_leave_the_counts_at_expiry(store):
    """As the original: counts are corrected when the refresh expires silent peers."""
    clock = Clock(NOW - TIMEOUT - 1)
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=clock)
    swarms.announce(ann(1), clock.now)
    swarms.flush()
    clock.now = NOW - 10
    swarms.announce(ann(2), clock.now)
    swarms.flush()
    clock.now = NOW
    result = swarms.announce(ann(3), NOW)  # the view is read again, without peer 1
    assert [p.peer_id for p in result.peers] == [pid(2)]
    assert result.stats.incomplete == 3
    swarms.flush()
    assert store.expire_peers(NOW) == 1
    assert store.expire_peers(NOW) == 0
    assert store.scrape([ih(1)], NOW)[ih(1)].incomplete == 2
    swarms.sync()  # the host's writer forgets it too
    assert swarms.announce(ann(3), NOW + SYNC).stats.incomplete == 2


def test_a_large_swarm_hands_out_a_random_window(store, swarms):
    """numwant peers out of many, never the asker, and not always the same ones."""
    for n in range(1, 121):
        swarms.announce(ann(n, left=0 if n % 3 == 0 else 5), NOW)
    seen = set()
    for _ in range(20):
        peers = swarms.announce(ann(200), NOW).peers
        assert len(peers) == 50 and pid(200) not in {p.peer_id for p in peers}
        assert len({p.peer_id for p in peers}) == 50
        seen |= {p.peer_id for p in peers}
    assert len(seen) > 100
    seed_view = swarms.announce(ann(3, left=0, numwant=200), NOW).peers
    assert len(seed_view) == 80 + 1  # every leecher, the new one (200) included


def test_v2_alias_is_the_same_swarm(store, swarms):
    """BEP 52: a hybrid torrent is announced under its v1 and truncated v2 hashes."""
    v1, v2 = ih(10), ih(11)
    assert store.register(Torrent(v1, v2, "hybrid", 7), NOW) is True
    assert store.register(Torrent(v1, v2, "hybrid", 7), NOW) is False
    swarms.announce(ann(1, info_hash=v1), NOW)
    assert [p.peer_id for p in swarms.announce(ann(2, info_hash=v2), NOW).peers] == [pid(1)]
    scrape = swarms.scrape([v1, v2], NOW)
    assert scrape[v1].incomplete == scrape[v2].incomplete == 2
    assert scrape[v1].name == "hybrid"


def test_scrape_leaves_out_unknown_hashes_and_full_scrape_lists_all(store, swarms):
    store.register(Torrent(ih(2), ih(3), "two", 5), NOW)
    assert set(store.scrape([ih(1), ih(77)], NOW)) == {ih(1)}
    assert set(swarms.scrape([ih(1), ih(77)], NOW)) == {ih(1)}
    assert set(store.scrape_all(NOW)) == {ih(1), ih(2), ih(3)}


def test_unregister_removes_the_torrent_and_its_peers(store, swarms):
    swarms.announce(ann(1), NOW)
    assert store.unregister([ih(1)]) == 1
    # Unwritten announces of the torrent are dropped, not written as orphan peers.
    swarms.announce(ann(2), NOW)
    swarms.flush()
    with pytest.raises(UnknownTorrent):
        swarms.announce(ann(3), NOW + SYNC)  # the view is read again: the torrent is gone
    assert swarms.scrape([ih(1)], NOW + SYNC) == {}
    assert store.unregister([ih(1)]) == 0
    assert store.expire_peers(NOW + 10 * TIMEOUT) == 0  # no peer rows were left behind


def test_binary_ids_round_trip_exactly(store, swarms):
    """Trailing spaces and NULs survive (the original's CHAR columns stripped them)."""
    awkward = b"\x00" * 10 + b" " * 10
    store.register(Torrent(awkward, None, "awkward", 1), NOW)
    peer_id = b"peer   \x00\x00" + b" " * 11
    request = ann(1, info_hash=awkward)
    swarms.announce(AnnounceRequest(**{**_fields(request), "peer_id": peer_id}), NOW)
    peers = swarms.announce(ann(2, info_hash=awkward), NOW).peers
    assert [p.peer_id for p in peers] == [peer_id]
    assert set(swarms.scrape([awkward], NOW)) == {awkward}


def _fields(request: AnnounceRequest) -> dict:
    return request._asdict()


def test_concurrent_announces_lose_nothing(store, swarms):
    """Each thread has its own connection; 8 threads x 25 peers all land, and the 200
    completions are each counted exactly once."""
    errors = []

    def worker(base: int) -> None:
        try:
            for n in range(base, base + 25):
                swarms.announce(ann(n, left=10), NOW)
                swarms.announce(ann(n, left=0, event=Event.COMPLETED), NOW)
            store.close()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i * 100,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = swarms.scrape([ih(1)], NOW)[ih(1)]
    assert (stats.complete, stats.downloaded) == (200, 200)
    swarms.flush()
    stats = store.scrape([ih(1)], NOW)[ih(1)]
    assert (stats.complete, stats.downloaded) == (200, 200)


def test_connection_type_is_reported(store, store_url):
    expected = "CMySQLConnection" if store_url.startswith("mysql") else "Connection"
    assert store.connection_type() == expected
    assert PeerState.SEED == 1  # stored as a small integer in both schemas


def test_racing_announces_of_one_peer_count_it_once(store, swarms):
    """libtorrent announces a hybrid torrent's v1 and v2 hashes at the same moment with one
    peer_id: the swarm's counts must still say one peer per peer_id."""
    v1, v2 = ih(20), ih(21)
    store.register(Torrent(v1, v2, "hybrid", 7), NOW)
    rounds = 15
    for n in range(1, rounds + 1):
        barrier = threading.Barrier(2)

        def go(info_hash: bytes, peer: int, barrier: threading.Barrier) -> None:
            barrier.wait()
            swarms.announce(ann(peer, info_hash=info_hash, left=0), NOW)

        threads = [threading.Thread(target=go, args=(h, n, barrier)) for h in (v1, v2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    stats = swarms.scrape([v1], NOW)[v1]
    assert (stats.complete, stats.incomplete) == (rounds, 0)
    swarms.flush()
    assert (store.scrape([v1], NOW)[v1].complete, store.scrape([v1], NOW)[v1].incomplete) == (rounds, 0)
    for n in range(1, rounds + 1):
        swarms.announce(ann(n, info_hash=v2, event=Event.STOPPED, numwant=0), NOW)
    assert swarms.scrape([v1], NOW)[v1].complete == 0
    swarms.flush()
    assert store.scrape([v1], NOW)[v1].complete == 0


# -- the host state: swarms read once, other hosts' writes taken in as changes ---------------


class Clock:
    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now


def count_reads(store) -> list:
    """The torrent id or info hash of every swarm read from the store from now on."""
    reads: list = []

    def counting(read):
        def counted(key, now, limit):
            reads.append(key)
            return read(key, now, limit)
        return counted

    store.load_swarm, store.find_swarm = counting(store.load_swarm), counting(store.find_swarm)
    return reads


def test_a_process_alone_never_reads_its_busy_swarm_again(store):
    clock = Clock(NOW)
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=clock)
    reads = count_reads(store)
    for t in range(20):  # twenty batches, each finding the version the view was built on
        clock.now = NOW + t
        result = swarms.announce(ann(1 + t % 3, left=0 if t % 3 == 0 else 5), NOW + t)
        swarms.flush()
    assert len(reads) == 1
    assert (result.stats.complete, result.stats.incomplete) == (1, 2)
    stored = store.scrape([ih(1)], NOW)[ih(1)]
    assert (stored.complete, stored.incomplete) == (1, 2)


def test_a_busy_swarm_is_not_read_again_while_its_next_batch_is_late(store):
    """The batch that checks a view comes a little over sync_interval after the last one."""
    clock = Clock(NOW)
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=clock)
    swarms.announce(ann(1), NOW)
    swarms.flush()
    reads = count_reads(store)
    swarms.announce(ann(2), NOW + 1)
    swarms.announce(ann(3), NOW + SYNC + 1)  # the flush thread is late: no read meanwhile
    assert reads == []
    clock.now = NOW + SYNC + 1
    swarms.flush()
    assert swarms.announce(ann(4), NOW + 2 * SYNC).stats.incomplete == 4
    assert reads == []


def test_another_hosts_writes_come_in_as_changes_never_by_reading_the_swarm_again(store):
    clock = Clock(NOW)
    first, second = HostSwarms(store, SYNC, new_swarm_dir(), clock=clock), HostSwarms(store, SYNC, new_swarm_dir(), clock=clock)
    first.announce(ann(1), NOW)
    second.announce(ann(2), NOW)
    second.announce(ann(3), NOW)
    second.flush()
    reads = count_reads(store)
    assert first.announce(ann(1), NOW).peers == []  # first has not read the changes yet
    first.sync()
    result = first.announce(ann(1), NOW)
    assert sorted(p.peer_id for p in result.peers) == [pid(2), pid(3)] and result.stats.incomplete == 3
    second.announce(ann(2, event=Event.STOPPED), NOW)
    second.announce(ann(3, left=0, event=Event.COMPLETED), NOW)  # written through
    second.flush()
    first.sync()
    result = first.announce(ann(1), NOW)
    assert [p.peer_id for p in result.peers] == [pid(3)]
    assert (result.stats.complete, result.stats.incomplete, result.stats.downloaded) == (1, 1, 1)
    assert reads == []


def test_silent_peers_are_never_handed_out_and_a_held_swarm_is_never_read_again(store):
    """Left out of answers at peer_timeout; counted until expired."""
    sync = 60
    clock = Clock(NOW)
    swarms = HostSwarms(store, sync, new_swarm_dir(), clock=clock)
    swarms.announce(ann(1), NOW)
    reads = count_reads(store)
    for t in range(0, TIMEOUT + 120, sync - 1):
        clock.now = NOW + t
        result = swarms.announce(ann(2), NOW + t)
        swarms.flush()
    assert reads == []
    assert result.peers == [] and result.stats.incomplete == 2
    assert store.expire_peers(clock.now) == 1
    swarms.announce(ann(2), clock.now)
    swarms.sync()  # the host expires its own silent peers, as the refresh did the stored ones
    assert swarms.announce(ann(2), clock.now).stats.incomplete == 1
    assert reads == []


def test_no_announce_writes_a_row_another_host_writes_too(store):
    """Galera fails one of two transactions of two nodes that write one row: the torrent's
    row is never written by an announce, and each host counts its completions and departed
    bytes in a row of its own."""
    torrent_row = "SELECT * FROM torrents WHERE id = 1"
    before = store._fetchall(torrent_row)
    hosts = [HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW) for _ in range(2)]
    for host, n in ((hosts[0], 1), (hosts[1], 2)):
        host.announce(ann(n), NOW)
        host.flush()
        host.announce(ann(n, left=0, event=Event.COMPLETED), NOW)  # written through
        host.announce(ann(n, left=0, event=Event.STOPPED, uploaded=0)._replace(downloaded=1000), NOW)
        host.flush()
    assert store._fetchall(torrent_row) == before
    counts = store._fetchall("SELECT host, downloaded, transferred FROM swarm_counts WHERE torrent_id = 1 ORDER BY host")
    assert sorted(counts) == sorted([(host.state._host_id, 1, 1000) for host in hosts])
    assert store.scrape([ih(1)], NOW)[ih(1)].downloaded == 2 and store.report(NOW)[0].transferred == 2000


def set_changed(store, peer_id: bytes, changed: int) -> None:
    statement = "UPDATE peers SET changed = ? WHERE peer_id = ?".replace("?", store.dialect.placeholder)
    store._transaction(lambda cur: cur.execute(statement, (changed, peer_id)))


def test_a_row_that_committed_late_is_still_taken_in(store):
    """A row whose `changed` is before where a host last read (its transaction committed
    late, or its host's clock is behind) is read by the next round, within
    CHANGES_OVERLAP_SECONDS; a stop that late too."""
    clock = Clock(NOW)
    reader = HostSwarms(store, SYNC, new_swarm_dir(), clock=clock)
    reader.announce(ann(1), NOW)
    reader.sync()
    read_to = reader.state.changes_read()
    late = (live.CHANGES_OVERLAP_SECONDS - 2) * 1000 << 16
    late_write = write(2)._replace(stamp=1 << 16)
    store.write_batch([(1, late_write)])
    set_changed(store, pid(2), read_to - late)
    reader.sync()
    assert [p.peer_id for p in reader.announce(ann(1), NOW).peers] == [pid(2)]
    store.write_batch([(1, late_write._replace(stopped=True, stamp=2 << 16))])
    set_changed(store, pid(2), reader.state.changes_read() - late)
    reader.sync()
    assert reader.announce(ann(1), NOW).peers == []


def test_a_completion_written_through_is_counted_once_by_the_batches_after_it(store):
    clock = Clock(NOW)
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=clock)
    swarms.announce(ann(1), NOW)
    swarms.announce(ann(2), NOW)
    swarms.flush()
    swarms.announce(ann(1, left=0, event=Event.COMPLETED), NOW)
    for _ in range(2):
        swarms.flush()
        stats = swarms.announce(ann(2), NOW).stats
        assert (stats.complete, stats.incomplete, stats.downloaded) == (1, 1, 1)


def test_a_huge_swarm_is_held_in_part_and_counted_whole(store, monkeypatch):
    """A host reads at most HOST_SWARM_PEERS of a stored swarm: the rest is counted, and a
    peer it lacks is looked up (the key rule) and counted once when it comes."""
    monkeypatch.setattr(hoststate, "HOST_SWARM_PEERS", 20)
    monkeypatch.setattr(live, "HOST_SWARM_PEERS", 20)
    first = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW)
    for n in range(1, 101):
        first.announce(ann(n), NOW)
    first.flush()
    other_host = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW)
    assert other_host.announce(ann(200, numwant=0), NOW).stats.incomplete == 101
    assert other_host.held().peers == 21
    held = {p.peer_id for p in other_host.announce(ann(201, numwant=200), NOW).peers}
    assert len(held) == 21 and pid(200) in held
    lacking = next(n for n in range(1, 101) if pid(n) not in held)
    # Its stored row decides the key rule, and it is counted once, not as new.
    assert other_host.announce(ann(lacking, numwant=0), NOW).stats.incomplete == 102
    assert other_host.announce(ann(lacking, numwant=0), NOW).stats.incomplete == 102


def test_changes_are_read_in_the_order_written_a_page_at_a_time(store):
    """Every row written says when (peers.changed), a value of its own even within one
    batch split over transactions, so hosts read each other's changes by it in pages."""
    assert store.write_batch([(1, write(n)) for n in range(1, BATCH_ROWS + 11)]).written == {1}
    rows = store.changes(0, 10_000)
    assert sorted(r.peer_id for r in rows) == sorted(pid(n) for n in range(1, BATCH_ROWS + 11))
    assert len({r.changed for r in rows}) == len(rows) and [r.changed for r in rows] == sorted(r.changed for r in rows)
    assert store.changes(rows[99].changed, 50) == rows[100:150]
    store.write_batch([(1, write(1)._replace(stopped=True, stamp=1))])
    [gone] = store.changes(rows[-1].changed, 10)  # a stop is a change too: its tombstone
    assert (gone.peer_id, gone.state, gone.stamp) == (pid(1), 3, 1)
    assert store.swarm_totals([1, 99]) == {1: SwarmTotals(0, 0, BATCH_ROWS + 9, 0)}
    assert store.registered([1, 99]) == {1}


def write(n: int) -> PeerWrite:
    return PeerWrite(pid(n), V4, 6000 + n, None, PeerState.LEECHER, 100, 0, 0, NOW, False)


# -- hostile numbers and poisoned rows --------------------------------------------------------


def parsed(n: int, **fields) -> AnnounceRequest:
    """An announce of torrent 1 as a client sends it, every counter at the largest number the
    protocol accepts (it keeps protocol.COUNTER_CAP of it), through the real parser."""
    query = announce_query(ih(1), pid(n), 6000 + n, **{"uploaded": MAX_COUNTER, "downloaded": MAX_COUNTER,
                                                        "left": MAX_COUNTER, **fields})
    return parse_announce(parse_query(query.encode()), V4, AnnouncePolicy(), False)


def test_the_largest_numbers_break_no_write_and_no_sum(store, store_url, shared_dir, caplog):
    """Counters at 2**63-1 at every step: announce, batch, completion, stopped, refresh with
    its report and stats page, expiry, and the batches and refreshes after them. Some rows
    hold 2**63-1 itself, as a version without the counter cap stored them."""
    caplog.set_level(logging.INFO, logger="tracker_wsgi")
    clock = Clock(NOW)
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=clock)
    for n in range(1, 6):
        swarms.announce(parsed(n), NOW)
    assert swarms.flush() == 5
    old = [(1, PeerWrite(pid(n), V4, 6000 + n, None, PeerState.LEECHER, MAX_COUNTER, MAX_COUNTER, MAX_COUNTER,
                         NOW, False)) for n in range(11, 16)]
    assert store.write_batch(old).set_aside == []
    assert swarms.announce(parsed(1, left=0, event="completed"), NOW).stats.downloaded == 1  # written through
    for n in (2, 3):
        swarms.announce(parsed(n, event="stopped"), NOW)  # what they downloaded joins the torrent's total
    swarms.flush()
    stopped = store.write_batch([(1, write._replace(stopped=True)) for _, write in old[:3]])
    assert stopped.set_aside == [] and stopped.written == {1}
    assert store.swarm_totals([1])[1].leechers == 2 + 2
    assert store._fetchall("SELECT MAX(transferred) FROM swarm_counts WHERE torrent_id = 1") == [(MAX_TOTAL_BYTES,)]
    swarms.announce(parsed(6), NOW)
    assert swarms.flush() == 1  # later batches still write
    stats = store.scrape([ih(1)], NOW)[ih(1)]
    assert (stats.complete, stats.incomplete, stats.downloaded) == (1, 5, 1)

    torrents, output = shared_dir / "torrents", shared_dir / "output"
    torrents.mkdir()
    config = Config(database=store_url, torrent_dir=str(torrents), output_dir=str(output), base_url="http://h",
                    peer_timeout=TIMEOUT)
    assert refresh(config, store, force=True, now=NOW).ran  # sums over live peers
    [row] = store.report(NOW)
    assert (row.transferred, row.bytes_left) == (MAX_TOTAL_BYTES, MAX_TOTAL_BYTES)
    assert "2048 PiB" in (output / "bt_stats.inc").read_text()  # MAX_TOTAL_BYTES, rendered
    later = NOW + TIMEOUT + 1
    assert refresh(config, store, force=True, now=later).expired == 6  # what they downloaded joins the total
    [row] = store.report(later)
    assert (row.transferred, row.bytes_left, row.seeds + row.leechers) == (MAX_TOTAL_BYTES, 0, 0)
    clock.now = later
    swarms.announce(parsed(7), later)
    assert swarms.flush() == 1
    assert refresh(config, store, force=True, now=later + 1).ran
    assert store.report(later + 1)[0].transferred == MAX_TOTAL_BYTES
    assert [r for r in caplog.records if r.name.startswith("tracker_wsgi")] == []


POISON = 2**64  # fits no column of either store (SQLite: OverflowError at bind; MariaDB: 1264)
OTHER = bytes([198, 51, 100, 9])


def test_a_poisoned_write_is_set_aside_and_the_rest_written(store):
    store.register(Torrent(ih(2), None, "two", 5), NOW)
    store.write_batch([(1, write(1)._replace(key=b"k1"))])
    batch = [(t, write(n)) for t in (1, 2) for n in range(2, BATCH_ROWS // 2 + 60)]  # two transactions
    poisoned = len(batch) - 7  # in the second
    batch[poisoned] = (2, batch[poisoned][1]._replace(uploaded=POISON))
    batch.append((1, write(1)._replace(ip=OTHER, key=b"guess")))  # another address without the key
    result = store.write_batch(batch)
    refused, failed = sorted(result.set_aside, key=lambda row: row.torrent_id)
    assert refused == (1, pid(1), KEY_RULE_REFUSED)
    assert failed[:2] == (2, batch[poisoned][1].peer_id)
    assert "OverflowError" in failed.reason or "1264" in failed.reason, failed.reason
    per_torrent = BATCH_ROWS // 2 + 58
    assert result.written == {1, 2}
    stored = store.scrape([ih(1), ih(2)], NOW)
    assert (stored[ih(1)].incomplete, stored[ih(2)].incomplete) == (per_torrent + 1, per_torrent - 1)
    assert store.find_peer(1, pid(1)) == StoredPeer(V4, b"k1", 100)  # the refused write changed nothing


def test_a_poisoned_announce_fails_alone_and_a_refused_write_is_set_aside_forgotten_and_logged_once(store, caplog):
    store.register(Torrent(ih(2), None, "two", 5), NOW)
    caplog.set_level(logging.INFO, logger="tracker_wsgi")

    def logged() -> list[str]:
        # This thread's (flush is called here): earlier tests' flush threads may still log.
        records = [r for r in caplog.records if r.name.startswith("tracker_wsgi") and r.thread == threading.get_ident()]
        assert {r.levelname for r in records} <= {"WARNING"}, records  # the admin's to look at
        return [r.getMessage() for r in records]

    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW)
    other_host = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW)
    for n in range(1, 4):
        swarms.announce(ann(n), NOW)
    # The host state cannot hold a number no column holds: that announce fails alone.
    with pytest.raises(struct.error):
        swarms.announce(ann(4, uploaded=POISON), NOW)  # the parser never makes one; a bug might
    time.sleep(0.002)  # a later millisecond: the stamps order the two hosts' writes as they came
    other_host.announce(ann(9, torrent=2), NOW)
    # Peer 1's id from another address, at a host that has not heard of it yet: answered
    # there, refused by the key rule when written after peer 1's own write.
    other_host.announce(ann(1, ip=V6), NOW)
    other_host.announce(ann(1, torrent=2, ip=V6), NOW)
    assert swarms.flush() == 3
    assert other_host.flush() == 3
    logs = logged()
    assert len(logs) == 1 and logs[0].startswith("1 announces set aside, not written: ")
    assert f"torrent 1 peer {pid(1).hex()}" in logs[0] and "another address" in logs[0]
    other_host.sync()
    answer = other_host.announce(ann(5, numwant=50), NOW)
    # Forgotten where it was set aside; the real one came in with the changes.
    assert {p.ip for p in answer.peers if p.peer_id == pid(1)} == {V4}
    assert ih(2) in other_host.state.stats([ih(2)])  # still held, not dropped as unregistered
    assert other_host.flush() == 1 and len(logged()) == 1  # set aside once, not retried
    assert store.scrape([ih(1)], NOW)[ih(1)].incomplete == 4
    assert store.scrape([ih(2)], NOW)[ih(2)].incomplete == 2
    assert store.find_peer(1, pid(1)).ip == V4 and store.find_peer(1, pid(4)) is None


# -- the key rule on a view miss ---------------------------------------------------------------


def test_find_peer_reads_the_stored_row(store):
    store.write_batch([(1, write(1)._replace(key=b"\x00k", left=77)), (1, write(2))])
    assert store.find_peer(1, pid(1)) == StoredPeer(V4, b"\x00k", 77)
    assert store.find_peer(1, pid(2)) == StoredPeer(V4, None, 100)
    assert store.find_peer(1, pid(3)) is None
    assert store.find_peer(2, pid(1)) is None
    # It is a swarm.KnownPeer: the key rule reads it as it reads a view's member.
    with pytest.raises(PeerConflict):
        plan_announce(ann(1, ip=OTHER), store.find_peer(1, pid(1)))
    assert plan_announce(ann(1, ip=OTHER, key=b"\x00k"), store.find_peer(1, pid(1))).key == b"\x00k"


# -- whitelist `open`: a cap, and idle torrents leave ------------------------------------------


def open_mode_store(store_url: str, **kwargs):
    store = open_store(store_url, TIMEOUT, register_unknown=True, **kwargs)
    store.create_tables()
    return store


def test_open_mode_registers_up_to_open_max_torrents(store_url, monkeypatch):
    monkeypatch.setattr(announce, "TORRENTS_RECOUNT_SECONDS", 60)
    store = open_mode_store(store_url, open_max_torrents=3)
    store.register(Torrent(ih(1), None, "listed", 1, path="one.torrent"), NOW)  # every torrent counts
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW)
    for n in (2, 3):
        swarms.announce(ann(1, torrent=n), NOW)
    with pytest.raises(TrackerFull):
        swarms.announce(ann(1, torrent=4), NOW)
    assert swarms.announce(ann(2, torrent=2), NOW).stats.incomplete == 2  # known ones are served
    assert set(store.scrape_all(NOW)) == {ih(1), ih(2), ih(3)}
    assert store.unregister([ih(1)]) == 1
    with pytest.raises(TrackerFull):  # the count is not read again for TORRENTS_RECOUNT_SECONDS
        store.find_swarm(ih(4), NOW, 10)
    monkeypatch.setattr(announce, "TORRENTS_RECOUNT_SECONDS", 0)
    assert store.find_swarm(ih(4), NOW, 10).name == ""  # counted again: room
    with pytest.raises(TrackerFull):
        store.find_swarm(ih(5), NOW, 10)


def test_idle_torrents_of_open_mode_leave_the_store(store_url):
    store = open_mode_store(store_url)
    old = NOW - TIMEOUT - 1
    store.register(Torrent(ih(1), None, "listed", 1, path="dir/one.torrent"), old)
    store.register(Torrent(ih(2), None, "hand-added", 1, path="/srv/two.torrent"), old)
    swarms = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: old)
    swarms.announce(ann(1, torrent=3), old)  # silent since: a peer until it expires
    swarms.announce(ann(2, torrent=4), old)
    swarms.announce(ann(2, torrent=4, event=Event.STOPPED), old)  # its only peer left
    swarms.flush()
    store.find_swarm(ih(5), old, 10)  # registered by an announce that never got written
    store.find_swarm(ih(6), NOW, 10)  # registered just now
    assert store.remove_idle_open_torrents(NOW) == 2
    assert set(store.scrape_all(NOW)) == {ih(1), ih(2), ih(3), ih(6)}
    assert store._fetchall("SELECT COUNT(*) FROM info_hashes")[0][0] == 4
    assert store.expire_peers(NOW) == 1
    assert store.remove_idle_open_torrents(NOW) == 1
    assert store.remove_idle_open_torrents(NOW) == 0
    assert set(store.scrape_all(NOW)) == {ih(1), ih(2), ih(6)}
    swarms.announce(ann(3, torrent=5), NOW)  # an announce registers it again
    assert ih(5) in store.scrape_all(NOW)


def test_a_leecher_that_stops_with_nothing_left_has_finished_once(store, swarms):
    """aria2 1.36 with --seed-time=0: `started` with left>0, the download, then only
    `stopped` with left=0 — never `completed`. That is a completion, counted once."""
    swarms.announce(ann(1, left=5_000_000, event=Event.STARTED), NOW)
    swarms.flush()
    swarms.announce(ann(1, left=5_000_000), NOW)
    swarms.announce(ann(1, left=0, event=Event.STOPPED), NOW)
    swarms.flush()
    stats = store.scrape([ih(1)], NOW)[ih(1)]
    assert (stats.downloaded, stats.complete, stats.incomplete) == (1, 0, 0)
    # A peer the view never held (another process answered its `started`) counts the same.
    other = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW)
    swarms.announce(ann(2, left=10, event=Event.STARTED), NOW)
    swarms.flush()
    time.sleep(0.002)  # a later millisecond: the stamps order the two hosts' writes as they came
    other.announce(ann(2, left=0, event=Event.STOPPED), NOW)
    other.flush()
    assert store.scrape([ih(1)], NOW)[ih(1)].downloaded == 2


def test_a_completion_counts_once_whatever_follows(store, swarms):
    swarms.announce(ann(1, left=10, event=Event.STARTED), NOW)
    swarms.announce(ann(1, left=0, event=Event.COMPLETED), NOW)
    swarms.announce(ann(1, left=0, event=Event.COMPLETED), NOW)
    swarms.announce(ann(1, left=0), NOW)
    swarms.announce(ann(1, left=0, event=Event.STOPPED), NOW)
    swarms.flush()
    # The batch's own rule (a stored leecher reporting left=0) must not count it again.
    swarms.announce(ann(1, left=0, event=Event.STOPPED), NOW)
    swarms.flush()
    assert store.scrape([ih(1)], NOW)[ih(1)].downloaded == 1


def test_a_finish_at_a_host_that_has_not_read_the_peer_yet_counts_once(store):
    """aria2's finish across hosts: `started` at one host, `stopped` with left=0 at another
    that has not read the peer yet: the store counts the finish when the stop's write lands
    on the leecher's row, once, and both hosts say so after their writers' next rounds."""
    first = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW)
    second = HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW)
    second.announce(ann(9), NOW)  # the second host holds the swarm already
    first.announce(ann(1, left=7, event=Event.STARTED), NOW)
    first.flush()
    # Stamps are milliseconds: two announces of one peer within one at two hosts are ordered
    # by the hosts' ids, not as they came. No client announces twice in a millisecond.
    time.sleep(0.002)
    second.announce(ann(1, left=0, event=Event.STOPPED), NOW)
    for _ in range(2):
        for host in (second, first):
            host.flush()
            host.sync()
    stats = store.scrape([ih(1)], NOW)[ih(1)]
    assert (stats.downloaded, stats.complete, stats.incomplete) == (1, 0, 1)
    assert first.scrape([ih(1)], NOW)[ih(1)] == second.scrape([ih(1)], NOW)[ih(1)] == stats
    assert store.find_peer(1, pid(1)) is None


def test_a_stop_that_finishes_leaves_the_swarm_at_once_when_written_through(store, swarms):
    """aria2's finish written through before its answer: the peer leaves the stored swarm in
    that same transaction, as the batch path would remove it, so no other process or host
    hands out the departed peer meanwhile, and the batch after it counts nothing more."""
    swarms.announce(ann(1, left=10, event=Event.STARTED), NOW)
    swarms.announce(ann(2, left=10, event=Event.STARTED), NOW)
    swarms.flush()
    swarms.announce(ann(1, left=0, event=Event.STOPPED), NOW)  # a completion: written through
    # Before any batch: what another process reads from the store.
    snapshot = store.find_swarm(ih(1), NOW, 10)
    assert [peer[0] for peer in snapshot.peers] == [pid(2)]
    assert (snapshot.downloaded, snapshot.seeders, snapshot.leechers) == (1, 0, 1)
    swarms.flush()
    stats = store.scrape([ih(1)], NOW)[ih(1)]
    assert (stats.downloaded, stats.complete, stats.incomplete) == (1, 0, 1)


# -- the announce's order, not the batch's (issue 18) -------------------------------------------


def stamped(n: int, stamp: int, left: int = 100, stopped: bool = False, ip: bytes = V4) -> PeerWrite:
    state = PeerState.SEED if left == 0 else PeerState.LEECHER
    return PeerWrite(pid(n), ip, 6000 + n, None, state, left, 0, 0, NOW, stopped, stamp=stamp)


def test_a_write_never_replaces_a_newer_one_whenever_its_batch_lands(store):
    torrent_id = store.find_swarm(ih(1), NOW, 10).torrent_id
    store.write_batch([(torrent_id, stamped(1, stamp=200, left=50))])
    store.write_batch([(torrent_id, stamped(1, stamp=100, left=90))])  # older, landing later
    assert store.find_peer(torrent_id, pid(1)).left == 50
    store.write_batch([(torrent_id, stamped(1, stamp=300, left=10))])
    assert store.find_peer(torrent_id, pid(1)).left == 10


def test_a_stop_leaves_a_tombstone_that_a_late_start_cannot_undo(store):
    torrent_id = store.find_swarm(ih(1), NOW, 10).torrent_id
    store.write_batch([(torrent_id, stamped(1, stamp=100)), (torrent_id, stamped(2, stamp=100))])
    store.write_batch([(torrent_id, stamped(1, stamp=300, stopped=True))])
    store.write_batch([(torrent_id, stamped(1, stamp=200))])  # another host's older announce
    assert store.find_peer(torrent_id, pid(1)) is None
    assert store.scrape([ih(1)], NOW)[ih(1)].incomplete == 1
    assert [p[0] for p in store.find_swarm(ih(1), NOW, 10).peers] == [pid(2)]
    store.write_batch([(torrent_id, stamped(1, stamp=400))])  # a new life, after the stop
    assert store.scrape([ih(1)], NOW)[ih(1)].incomplete == 2
    # Tombstones go with the refresh's expiry, uncounted.
    assert store.expire_peers(NOW + TIMEOUT + 1) == 2


def test_a_finish_recorded_before_its_start_lands_counts_once(store):
    """aria2 across hosts: `stopped` with left=0 at a host that never heard of the peer
    (its `started` at another host, not written yet). Its tombstone counts the completion
    when the older leecher's write lands, once, however often that write comes."""
    torrent_id = store.find_swarm(ih(1), NOW, 10).torrent_id
    store.write_batch([(torrent_id, stamped(1, stamp=300, left=0, stopped=True))])
    assert store.scrape([ih(1)], NOW)[ih(1)].downloaded == 0
    for _ in range(2):
        store.write_batch([(torrent_id, stamped(1, stamp=200, left=70))])
    stats = store.scrape([ih(1)], NOW)[ih(1)]
    assert (stats.downloaded, stats.complete, stats.incomplete) == (1, 0, 0)
    # A seed's older write tells nothing of a finish.
    store.write_batch([(torrent_id, stamped(2, stamp=300, left=0, stopped=True))])
    store.write_batch([(torrent_id, stamped(2, stamp=200, left=0))])
    assert store.scrape([ih(1)], NOW)[ih(1)].downloaded == 1
