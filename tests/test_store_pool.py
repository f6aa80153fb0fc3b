"""Bounded connections: a store opens at most pool_size connections per process, however many
threads call it (store/pool.py), keeps them open between calls, and a call that finds them
all lent waits at most wait_seconds."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import _admin, ih, pid
from tracker_wsgi.model import PeerState, PeerWrite, StoreUnavailable, Torrent
from tracker_wsgi.store import open_store
from tracker_wsgi.store.pool import ConnectionPool

NOW = 1_700_000_000
TIMEOUT = 2700
V4 = bytes([192, 0, 2, 1])
THREADS = 64  # an Apache child's worth of threads (embedded mode, 2 x 64 in issue 13)
CALLS = 12  # per thread
SLACK = 1.0  # seconds a wait may run over (a loaded 2-core test machine)


class FakeConnections:
    """connect/disconnect for a pool, counting the connections open at once."""

    def __init__(self):
        self.open = self.most_open = self.made = 0
        self.lock = threading.Lock()

    def connect(self) -> int:
        with self.lock:
            self.open += 1
            self.made += 1
            self.most_open = max(self.most_open, self.open)
            return self.made

    def disconnect(self, conn: int) -> None:
        with self.lock:
            self.open -= 1


def test_pool_never_opens_more_than_its_size_and_reuses_them():
    fake = FakeConnections()
    pool = ConnectionPool(fake.connect, fake.disconnect, 3, wait_seconds=30)
    barrier = threading.Barrier(THREADS)

    def worker() -> None:
        barrier.wait()
        for _ in range(50):
            conn = pool.borrow()
            time.sleep(0.0005)
            pool.give_back(conn)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake.most_open <= 3
    assert fake.made == fake.open <= 3  # kept open, lent again: never made twice
    pool.close()
    assert fake.open == 0
    made = fake.made
    assert pool.borrow() == made + 1  # usable after close: connects again


def test_a_borrow_that_finds_every_connection_lent_waits_at_most_wait_seconds():
    fake = FakeConnections()
    pool = ConnectionPool(fake.connect, fake.disconnect, 2, wait_seconds=0.5)
    held = [pool.borrow(), pool.borrow()]
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="all 2 database connections"):
        pool.borrow()
    assert 0.45 <= time.monotonic() - started < 0.5 + SLACK
    pool.give_back(held.pop())
    assert pool.borrow() in (1, 2)  # a returned one, not a third
    assert fake.made == 2


def test_a_lost_connection_takes_the_idle_ones_with_it_and_is_counted_as_replaced():
    """After a restart every idle connection is dead too: the retry must run on a new one."""
    fake = FakeConnections()
    pool = ConnectionPool(fake.connect, fake.disconnect, 3, wait_seconds=1)
    a, b, c = pool.borrow(), pool.borrow(), pool.borrow()
    pool.give_back(b)
    pool.give_back(c)
    pool.discard(a, lost=True)
    assert fake.open == 0
    assert pool.borrow() == 4 and pool.reconnects == 1
    pool.discard(4, lost=False)  # a statement refused: the idle ones (none here) stay
    assert pool.borrow() == 5 and pool.reconnects == 2


def test_a_failed_connect_frees_its_slot():
    calls = []

    def connect() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("refused")
        return len(calls)

    pool = ConnectionPool(connect, lambda conn: None, 1, wait_seconds=0.2)
    with pytest.raises(ConnectionError):
        pool.borrow()
    assert pool.borrow() == 2  # not a StoreUnavailable for a slot the failure kept


def _server_connections(database: str) -> set[int]:
    admin = _admin()
    try:
        cur = admin.cursor()
        cur.execute("SELECT id FROM information_schema.PROCESSLIST WHERE db = %s", (database,))
        return {row[0] for row in cur.fetchall()}
    finally:
        admin.close()


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
def test_many_threads_share_a_few_connections_and_all_their_work_is_done(kind, request):
    """64 threads calling one store at once (as an embedded-mode Apache child's threads
    would) open at most pool_size connections, the same ones throughout; every write lands."""
    url = request.getfixturevalue(f"{kind}_url")
    pool_size = 4
    store = open_store(url, TIMEOUT, pool_size=pool_size)
    store.create_tables()
    store.register(Torrent(ih(1), None, "one", 1000), NOW)
    connects = []
    connect = store._connect

    def counted_connect():
        connects.append(1)
        return connect()

    store._connect = counted_connect
    store.close()  # the connections above were made before the count began

    database = url.rsplit("/", 1)[1]
    seen: set[int] = set()
    most = 0
    done = threading.Event()

    def watch() -> None:  # the server's own count of this database's connections
        nonlocal most
        while not done.is_set():
            ids = _server_connections(database)
            seen.update(ids)
            most = max(most, len(ids))
            time.sleep(0.01)

    barrier = threading.Barrier(THREADS)
    failures = []

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for call in range(CALLS):
                peer = n * CALLS + call
                write = PeerWrite(pid(peer), V4, 6000 + peer % 1000, None, PeerState.LEECHER, 100, 0, 0, NOW, False)
                store.write_through(1, write, completion=False)
                store.find_swarm(ih(1), NOW, 50)
                store.scrape([ih(1)], NOW)
        except Exception as exc:  # reported below: a thread's exception is otherwise lost
            failures.append(exc)

    watcher = threading.Thread(target=watch) if kind == "mysql" else None
    if watcher:
        watcher.start()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        done.set()
        if watcher:
            watcher.join()
    assert failures == []
    assert store.scrape([ih(1)], NOW)[ih(1)].incomplete == THREADS * CALLS
    assert len(connects) <= pool_size  # kept open and lent again, never made per call
    if kind == "mysql":
        assert 1 <= most <= pool_size, most
        assert len(seen) <= pool_size, seen  # the same connections throughout
    store.close()
    if kind == "mysql":
        deadline = time.monotonic() + 5
        while _server_connections(database) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _server_connections(database) == set()  # close() closed them all


def test_mysql_pool_recovers_when_the_server_kills_its_connections(mysql_url):
    """Connections the server dropped (a restart, wait_timeout, KILL) are found dead by the
    next call, which runs again on a fresh one: no call fails."""
    store = open_store(mysql_url, TIMEOUT, pool_size=3)
    store.create_tables()
    store.register(Torrent(ih(1), None, "one", 1000), NOW)
    gate = threading.Barrier(3)

    def hold_one() -> None:  # three threads at once: three connections open
        store._read(lambda cur: gate.wait())

    threads = [threading.Thread(target=hold_one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    database = mysql_url.rsplit("/", 1)[1]
    killed = _server_connections(database)
    assert len(killed) == 3
    admin = _admin()
    for connection_id in killed:
        admin.cursor().execute(f"KILL {connection_id}")
    admin.close()
    for _ in range(3):
        assert ih(1) in store.scrape([ih(1)], NOW)
    assert store.reconnects == 1  # one failure; the idle ones went with it, not one by one
    assert not killed & _server_connections(database)
    store.close()


def test_connection_type_gives_its_connection_back(store_url):
    store = open_store(store_url, TIMEOUT, pool_size=1, wait_seconds=0.5)
    store.create_tables()
    for _ in range(3):
        assert store.connection_type() in ("CMySQLConnection", "Connection")
    store.close()


@pytest.fixture(params=["sqlite", "mysql"])
def store_url(request):
    return request.getfixturevalue(f"{request.param}_url")



def test_a_call_finding_every_connection_lent_is_unavailable_within_the_wait(store_url):
    """The store's bounded wait holds for its pool too: a call that cannot borrow a
    connection raises StoreUnavailable after wait_seconds, and the store goes on working."""
    wait = 0.5
    store = open_store(store_url, TIMEOUT, pool_size=1, wait_seconds=wait)
    store.create_tables()
    store.register(Torrent(ih(1), None, "one", 1000), NOW)
    lent, release = threading.Event(), threading.Event()

    def hold(cur) -> None:
        lent.set()
        release.wait(10)

    holder = threading.Thread(target=lambda: store._read(hold))
    holder.start()
    try:
        assert lent.wait(10)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="busy"):
            store.scrape([ih(1)], NOW)
        assert wait - 0.05 <= time.monotonic() - started < wait + SLACK
    finally:
        release.set()
        holder.join()
    assert ih(1) in store.scrape([ih(1)], NOW)
    assert store.errors == 0  # a wait for a connection is not a database error
    store.close()
