"""The swarm core (live.py with hoststate.py) on both stores: the key rule for peers the host
does not hold, a swarm bigger than a read, many threads against a model; and the host
state's own life (the writer's lease, a reboot)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import pytest

from conftest import ih, new_swarm_dir, pid
from test_store_contract import NOW, SYNC, TIMEOUT, ann
from tracker_wsgi import hoststate
from tracker_wsgi.hoststate import Bounds, HostState
from tracker_wsgi.limits import Limits
from tracker_wsgi.live import HostSwarms
from tracker_wsgi.model import Event, PeerConflict, Shed, StoreUnavailable, Torrent
from tracker_wsgi.store import open_store

OTHER_V4 = bytes([198, 51, 100, 99])
BOUNDS = Bounds(1000, 10_000, 10_000, Limits().peers_by_prefix, Limits().answer_share_per_prefix)


@pytest.fixture(params=["sqlite", "mysql"])
def store_url(request):
    url = request.getfixturevalue(f"{request.param}_url")
    store = open_store(url, TIMEOUT)
    store.create_tables()
    for n in range(1, 4):
        store.register(Torrent(ih(n), None, f"t{n}", 1000), NOW)
    store.close()
    return url


@pytest.fixture
def store(store_url):
    store = open_store(store_url, TIMEOUT)
    yield store
    store.close()


def live(store, **kwargs) -> HostSwarms:
    limits = Limits(completions_per_minute=1_000_000, peers_per_address=1_000_000)
    return HostSwarms(store, SYNC, new_swarm_dir(), clock=lambda: NOW, limits=limits, **kwargs)


def address(n: int) -> bytes:
    return bytes([10, 1, n // 256, n % 256])


class AwayForPeers:
    """The store, except that the key rule's read fails as a hung database does."""

    def __init__(self, store):
        self.store = store

    def __getattr__(self, name):
        return getattr(self.store, name)

    def find_peer(self, torrent_id, peer_id):
        raise StoreUnavailable("hung")


# -- An announce answered with success is never dropped later ----------------------------------


def first_announced_at_another_host(store_url, store):
    """A peer another process (on another host, with its own connection) wrote."""
    here = live(store)
    here.announce(ann(1, ip=address(1)), NOW)  # this process holds the swarm first
    elsewhere = live(open_store(store_url, TIMEOUT))
    elsewhere.announce(ann(0, ip=address(0)), NOW)
    elsewhere.flush()
    here.flush()
    here.sync()  # the writer's round reads again what the other host wrote
    assert pid(0) in {p.peer_id for p in here.announce(ann(2, ip=address(2)), NOW).peers}
    return here, elsewhere


@pytest.fixture
def view_lacks_peer_0(store_url, store):
    return first_announced_at_another_host(store_url, store)


def test_the_peer_itself_is_answered_and_written(store, view_lacks_peer_0, caplog):
    here, _ = view_lacks_peer_0
    result = here.announce(ann(0, ip=address(0), left=40, uploaded=7), NOW)
    assert result.stats.incomplete >= 2
    here.flush()
    assert store.find_peer(1, pid(0)).left == 40
    assert "set aside" not in caplog.text


def test_another_address_without_the_key_is_refused_before_any_answer(store, view_lacks_peer_0, caplog):
    here, _ = view_lacks_peer_0
    for event in (Event.NONE, Event.STARTED, Event.STOPPED, Event.COMPLETED):
        with pytest.raises(PeerConflict):
            here.announce(ann(0, ip=OTHER_V4, left=0 if event is Event.COMPLETED else 100, event=event), NOW)
    here.flush()
    assert store.find_peer(1, pid(0)).ip == address(0)  # untouched
    assert "set aside" not in caplog.text


def test_a_peer_the_view_holds_is_answered_while_the_database_is_away(store):
    swarms = live(store)
    swarms.announce(ann(1), NOW)
    swarms.store = AwayForPeers(store)
    assert swarms.announce(ann(1, left=50), NOW).stats.incomplete == 1
    swarms.store = store
    swarms.flush()
    assert store.find_peer(1, pid(1)).left == 50


# -- a large swarm held whole --------------------------------------------------------------------


def test_a_large_swarm_samples_and_counts_right(store):
    rng = random.Random(7)
    # sync_interval an hour: no batch but the test's own (the sync thread waits that long).
    swarms = HostSwarms(store, 3600, new_swarm_dir(), rng=random.Random(3), clock=lambda: NOW,
                        limits=Limits(peers_per_address=1_000_000))
    size = 2700
    state: dict[int, int] = {}  # peer -> left, the model of the swarm

    def announce(n: int, left: int, event: Event = Event.NONE, numwant: int = 0):
        result = swarms.announce(ann(n, ip=address(n), left=left, event=event, numwant=numwant), NOW)
        if event is Event.STOPPED:
            state.pop(n, None)
        else:
            state[n] = left
        return result

    def counted() -> tuple[int, int]:
        return sum(1 for left in state.values() if left == 0), sum(1 for left in state.values() if left)

    def stats():
        return swarms.state.stats([ih(1)])[ih(1)]

    for n in range(size):
        announce(n, 0 if n % 4 == 0 else 100)
    assert swarms.held().peers == size
    swarms.flush()
    assert (stats().complete, stats().incomplete) == counted()

    for _ in range(3):
        for _ in range(900):  # new peers, re-announces, leaving peers, leechers finishing
            n = rng.randrange(size + 600)
            if n in state and rng.random() < 0.1:
                announce(n, 100, Event.STOPPED)
            else:
                announce(n, 0 if rng.random() < 0.3 else 100)
        assert (stats().complete, stats().incomplete) == counted()
        swarms.flush()
        assert (stats().complete, stats().incomplete) == counted()
        assert store.scrape([ih(1)], NOW)[ih(1)][:2] == counted()
        assert swarms.held().peers == len(state)

    # Windows: never the asker, never twice, the size asked, leechers only to a seed.
    leechers = [n for n, left in state.items() if left]
    for _ in range(200):
        asker = rng.choice(list(state))
        numwant = rng.choice([1, 50, 200])
        wants_seeds = state[asker] > 0
        peers = announce(asker, state[asker], numwant=numwant).peers
        ids = [p.peer_id for p in peers]
        eligible = {pid(n) for n in (state if wants_seeds else leechers)} - {pid(asker)}
        assert pid(asker) not in ids
        assert len(ids) == len(set(ids)) == min(numwant, len(eligible))
        assert set(ids) <= eligible
    # Every peer is handed out now and then: a window starts anywhere.
    seen = set()
    for _ in range(300):
        seen |= {p.peer_id for p in announce(leechers[0], 100, numwant=50).peers}
    assert len(seen) > 0.95 * (len(state) - 1)


# -- many threads against a model --------------------------------------------------------------


THREADS = 8
ANNOUNCES = 1200  # per thread
POPULATION = {1: 400, 2: 40, 3: 40}  # peers per thread and torrent


def test_many_threads_against_a_model(store_url, store):
    """8 threads announce at random (new peers, re-announces, stops, completions, finishing
    leechers) to three swarms, each announce to one of two processes of a host, while the
    writer writes every second. Each thread owns its peers, so a model of each peer is the order it announced
    in. After a last batch, the store and the views say what the model says: every peer
    where it should be, once, with its state, and `downloaded` the distinct peers that
    finished (the completion rule: a known leecher reporting left=0, or `completed`)."""
    # Two processes of one host (one swarm_dir): each announce goes to either at random.
    limits = Limits(completions_per_minute=1_000_000, peers_per_address=1_000_000)
    directory = new_swarm_dir()
    processes = [HostSwarms(store, 1, directory, limits=limits, batch_store=open_store(store_url, TIMEOUT))
                 for _ in range(2)]
    swarms = processes[0]
    # (torrent, peer) -> [left, its completion counted]. A peer that stopped does not come
    # back: whether its next life may finish again depends on whether a batch wrote the stop
    # first (see the report of issue 13); that is not what this test is about.
    models: list[dict[tuple[int, int], list]] = [{} for _ in range(THREADS)]
    gone: list[set[tuple[int, int]]] = [set() for _ in range(THREADS)]
    downloads = [[0] * 4 for _ in range(THREADS)]  # by torrent
    retried = [0] * THREADS
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        rng = random.Random(thread)
        model, counted = models[thread], downloads[thread]
        try:
            for _ in range(ANNOUNCES):
                torrent = rng.choice([1, 1, 1, 1, 2, 3])
                peer = thread + THREADS * rng.randrange(POPULATION[torrent])
                if (torrent, peer) in gone[thread]:
                    continue
                known = model.get((torrent, peer))
                known_left = known[0] if known is not None else None
                roll = rng.random()
                if known is None:
                    event, left = Event.STARTED, rng.choice([0, 100, 100])
                elif roll < 0.5:
                    event, left = Event.NONE, known_left
                elif roll < 0.65:
                    event, left = Event.STOPPED, known_left
                elif roll < 0.8:
                    event, left = Event.COMPLETED, 0
                else:
                    event, left = Event.NONE, 0 if known_left else 50
                request = ann(peer, torrent=torrent, ip=address(peer), left=left, event=event, numwant=20)
                while True:
                    try:
                        rng.choice(processes).announce(request, int(time.time()))
                        break
                    except (Shed, StoreUnavailable):  # `retry in`: the client asks again
                        retried[thread] += 1
                        time.sleep(0.01)
                if event is Event.STOPPED:
                    del model[(torrent, peer)]
                    gone[thread].add((torrent, peer))
                    continue
                entry = model.setdefault((torrent, peer), [left, False])
                entry[0] = left
                if left == 0 and (event is Event.COMPLETED or (known_left is not None and known_left > 0)):
                    if not entry[1]:
                        entry[1] = True
                        counted[torrent] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for process in processes:
        process.flush()
    swarms.sync()  # swarms a completion's write through changed are read again
    model = {key: entry[0] for part in models for key, entry in part.items()}
    now = int(time.time())
    stored = store.scrape([ih(n) for n in POPULATION], now)
    for torrent in POPULATION:
        peers = {peer: left for (t, peer), left in model.items() if t == torrent}
        seeds = sum(1 for left in peers.values() if left == 0)
        expected = (seeds, len(peers) - seeds, sum(part[torrent] for part in downloads))
        assert stored[ih(torrent)][:3] == expected, torrent
        for process in processes:  # one truth: every process says the same
            assert process.scrape([ih(torrent)], now)[ih(torrent)][:3] == expected, torrent
        for peer in range(THREADS * POPULATION[torrent]):
            row = store.find_peer(torrent, pid(peer))
            if peer in peers:
                assert row is not None and (row.ip, row.left) == (address(peer), peers[peer]), (torrent, peer)
            else:
                assert row is None, (torrent, peer)
    held = swarms.held()
    assert held.unwritten == 0
    assert held.peers == len(model)
    assert sum(retried) < THREADS * ANNOUNCES // 20, retried
    for process in processes:
        process.close()


# -- the host state's own life: the writer's lease, a reboot ------------------------------------


def test_a_dead_writers_lease_is_taken_at_once_a_live_ones_when_it_runs_out(tmp_path):
    """A host restarted after its processes were killed writes at once, not after the dead
    writer's lease (4 x sync_interval + 5 s) has run out."""
    state = HostState(str(tmp_path / "swarms"), TIMEOUT, BOUNDS)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert state.hold_lease(dead.pid, NOW, 60)
    assert state.hold_lease(os.getpid(), NOW + 1, 60)  # its holder is gone: taken at once
    alive = os.getppid()  # pytest's parent: alive, and not this process
    assert state.hold_lease(alive, NOW + 61, 60)
    assert not state.hold_lease(os.getpid(), NOW + 62, 60)  # alive and running: kept
    assert state.hold_lease(os.getpid(), NOW + 121, 60)  # run out


def test_a_reboot_starts_the_host_state_afresh_a_process_restart_does_not(tmp_path, monkeypatch):
    """LMDB does not sync its file here: after a crash or a power cut it may be torn, so a
    new boot (another /proc/sys/kernel/random/boot_id) empties it; a restarted process
    finds what the host held."""
    path = str(tmp_path / "swarms")
    store = open_store(f"sqlite:///{tmp_path}/tracker.sqlite", TIMEOUT)
    store.create_tables()
    store.register(Torrent(ih(1), None, "t1", 1000), NOW)
    swarms = HostSwarms(store, SYNC, path, clock=lambda: NOW)
    swarms.announce(ann(1), NOW)
    assert swarms.held()[:3] == (1, 1, 1)
    hoststate.forget_environments()
    assert HostSwarms(store, SYNC, path, clock=lambda: NOW).held()[:3] == (1, 1, 1)
    hoststate.forget_environments()
    monkeypatch.setattr(hoststate, "_boot_id", lambda: b"another boot")
    assert HostSwarms(store, SYNC, path, clock=lambda: NOW).held()[:3] == (0, 0, 0)
    store.close()


def test_a_directory_of_another_kind_is_made_anew_keeping_the_admins_files(tmp_path):
    """A file that is not LMDB's (or a state of another format) is made anew: LMDB's two
    files only, never the rest of the directory (swarm_dir is the admin's to choose)."""
    path = tmp_path / "swarms"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"not an LMDB file" * 1000)
    (path / "notes.txt").write_text("the admin's\n")
    state = HostState(str(path), TIMEOUT, BOUNDS)
    state.open()
    assert state.sizes() == (0, 0, 0) and (path / "notes.txt").read_text() == "the admin's\n"
    hoststate.forget_environments()
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(hoststate, "FORMAT", b"tracker_wsgi host state 0")  # an earlier release's
    try:
        HostState(str(path), TIMEOUT, BOUNDS).open()
        hoststate.forget_environments()
    finally:
        monkeypatch.undo()
    state = HostState(str(path), TIMEOUT, BOUNDS)
    state.open()  # this release's format again: made anew
    assert state.sizes() == (0, 0, 0) and (path / "notes.txt").exists()
    hoststate.forget_environments()
