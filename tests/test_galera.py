"""The tracker as a client of a 3-node MariaDB Galera cluster (scripts/galera-cluster, one
per session: tests/galera.py): the schema Galera needs, writes that lose certification,
failover between nodes, the refresh lease, and reads of another node's writes."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import mysql.connector
import pytest
from mysql.connector import errorcode

from conftest import free_port, wait_until
from galera import galera  # noqa: F401 (a fixture)
from tracker_wsgi.model import TIMEOUT as TIMEOUT_CAUSE
from tracker_wsgi.model import UNREACHABLE, StoreUnavailable
from tracker_wsgi.store import mysql as mysql_store
from tracker_wsgi.store import open_store
from tracker_wsgi.store.sqlbase import CONFLICT_BACKOFF_MAX_SECONDS, CONFLICT_RETRIES

TIMEOUT = 2700
NOW = 1_700_000_000

REJOIN_SECONDS = 60  # a node isolated and let back in is synced again (a deadline, not a target)


def test_the_three_nodes_form_one_cluster_and_replicate(galera):  # noqa: F811
    assert [galera.status(n, "wsrep_cluster_size") for n in (1, 2, 3)] == ["3", "3", "3"]
    with galera.database() as db:
        one = galera.connect(1, db)
        one.cursor().execute("CREATE TABLE t (id INT PRIMARY KEY, n INT)")
        one.cursor().execute("INSERT INTO t VALUES (1, 7)")
        three = galera.connect(3, db, )
        cur = three.cursor()
        cur.execute("SET SESSION wsrep_sync_wait = 1")
        cur.execute("SELECT n FROM t WHERE id = 1")
        assert cur.fetchall() == [(7,)]
        one.close()
        three.close()


def test_every_table_the_tracker_creates_has_a_primary_key(galera):  # noqa: F811
    """Galera replicates a row by its primary key: DELETE on a table without one is not
    supported, and certification compares keys."""
    with galera.database() as db:
        store = open_store(galera.url(db, 1), TIMEOUT)
        store.create_tables()
        store.close()
        conn = galera.connect(2, db)
        cur = conn.cursor()
        cur.execute(
            "SELECT t.table_name FROM information_schema.tables t WHERE t.table_schema = %s AND NOT EXISTS "
            "(SELECT 1 FROM information_schema.table_constraints c WHERE c.table_schema = t.table_schema "
            "AND c.table_name = t.table_name AND c.constraint_type = 'PRIMARY KEY')", (db,))
        without = [row[0] for row in cur.fetchall()]
        cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s", (db,))
        tables = cur.fetchone()[0]
        cur.execute("SELECT DISTINCT engine FROM information_schema.tables WHERE table_schema = %s", (db,))
        engines = {row[0] for row in cur.fetchall()}
        conn.close()
    assert tables >= 5  # the schema reached node 2 (DDL replicates)
    assert without == []
    assert engines == {"InnoDB"}  # Galera replicates InnoDB only


@pytest.fixture
def galera_db(galera):  # noqa: F811
    with galera.database() as db:
        yield db


# -- writes that lose certification ---------------------------------------------------------------

HOT_ROUNDS = 200


def bump_hot_row(conn, rounds: int, failures: list[int]) -> None:
    """`rounds` transactions of two statements on one row every writer bumps, without retries."""
    cur = conn.cursor()
    for _ in range(rounds):
        try:
            cur.execute("START TRANSACTION")
            cur.execute("UPDATE hot SET n = n + 1 WHERE id = 1")
            cur.execute("UPDATE hot SET m = m + 1 WHERE id = 1")
            cur.execute("COMMIT")
        except mysql.connector.Error as exc:
            assert exc.errno == errorcode.ER_LOCK_DEADLOCK, exc
            failures.append(1)
            conn.rollback()


def make_hot_row(galera, db):  # noqa: F811
    conn = galera.connect(1, db)
    conn.cursor().execute("CREATE TABLE hot (id INT PRIMARY KEY, n INT NOT NULL, m INT NOT NULL)")
    conn.cursor().execute("INSERT INTO hot VALUES (1, 0, 0)")
    conn.close()


def test_two_writers_of_one_row_on_two_nodes_lose_certification(galera, galera_db):  # noqa: F811
    """What the store's retry is for: without it, a good part of the transactions of two
    writers bumping one row on two nodes fail with 1213 (certification, or a brute-force
    abort by the other node's replicated write)."""
    make_hot_row(galera, galera_db)
    failures: dict[int, list[int]] = {1: [], 2: []}
    conns = {n: galera.connect(n, galera_db) for n in (1, 2)}
    threads = [threading.Thread(target=bump_hot_row, args=(conns[n], HOT_ROUNDS, failures[n])) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = len(failures[1]) + len(failures[2])
    cur = conns[1].cursor()
    cur.execute("SET SESSION wsrep_sync_wait = 1")
    cur.execute("SELECT n, m FROM hot")
    assert cur.fetchall() == [(2 * HOT_ROUNDS - failed, 2 * HOT_ROUNDS - failed)]
    for conn in conns.values():
        conn.close()
    print(f"hot row, 2 nodes x {HOT_ROUNDS} transactions: {failed} failed with 1213 "
          f"({1000 * failed // (2 * HOT_ROUNDS)} per 1,000)")
    assert failed > 0


def test_the_store_runs_a_transaction_that_lost_certification_again(galera, galera_db):  # noqa: F811
    """The same two writers through two stores (one per node): every transaction commits
    exactly once, whole; the conflicts were there, and were retried."""
    make_hot_row(galera, galera_db)
    stores = [open_store(galera.url(galera_db, n), TIMEOUT, wait_seconds=10) for n in (1, 2)]

    def bump(cur) -> None:
        cur.execute("UPDATE hot SET n = n + 1 WHERE id = 1")
        cur.execute("UPDATE hot SET m = m + 1 WHERE id = 1")

    def writer(store) -> None:
        for _ in range(HOT_ROUNDS):
            store._transaction(bump)

    threads = [threading.Thread(target=writer, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    conn = galera.connect(3, galera_db)
    cur = conn.cursor()
    cur.execute("SET SESSION wsrep_sync_wait = 1")
    cur.execute("SELECT n, m FROM hot")
    assert cur.fetchall() == [(2 * HOT_ROUNDS, 2 * HOT_ROUNDS)]
    conn.close()
    conflicts = sum(store.conflicts for store in stores)
    for store in stores:
        store.close()
    print(f"hot row through the store, 2 nodes x {HOT_ROUNDS} transactions: {conflicts} conflicts retried")
    assert conflicts > 0


def test_a_transaction_that_keeps_losing_is_unavailable_after_the_retries(mysql_url):
    """A batch that loses every time stays pending, as in an outage: StoreUnavailable after
    CONFLICT_RETRIES waits, not an error of the batch's rows. (The server's own 1213, raised
    by SIGNAL: no second writer can lose every time on purpose.)"""
    store = open_store(mysql_url, TIMEOUT)
    store.create_tables()
    tries = []

    def lose(cur) -> None:
        tries.append(1)
        cur.execute("SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'Deadlock found'")

    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        store._transaction(lose)
    elapsed = time.monotonic() - started
    assert len(tries) == 1 + CONFLICT_RETRIES
    assert store.conflicts == CONFLICT_RETRIES
    assert err.value.cause == TIMEOUT_CAUSE
    assert elapsed < CONFLICT_RETRIES * CONFLICT_BACKOFF_MAX_SECONDS + 1
    store.close()


# -- failover -------------------------------------------------------------------------------------


def server_port(store) -> int:
    return store._fetchall("SELECT @@port")[0][0]


def test_the_store_fails_over_to_the_next_node_and_comes_back(galera, galera_db, monkeypatch):  # noqa: F811
    """database = three nodes: node 1 killed, the store's next call is answered by node 2
    (the lost connection's one retry connects there), with no error; node 1 back, the store
    uses it again once FAILED_HOST_SECONDS have passed, by itself."""
    monkeypatch.setattr(mysql_store, "FAILED_HOST_SECONDS", 2)
    store = open_store(galera.url(galera_db, 1, 2, 3), TIMEOUT, wait_seconds=10, pool_size=2)
    store.create_tables()
    assert server_port(store) == galera.port(1)
    galera.kill(1)
    try:
        started = time.monotonic()
        assert server_port(store) == galera.port(2)
        failover = time.monotonic() - started
        store.take_refresh_lock("host-a", NOW, 60)  # a write, on the two nodes left
        assert server_port(store) == galera.port(2)
    finally:
        rejoin = galera.restart(1)  # by IST: node 1 missed the write
    print(f"failover to node 2: {failover:.2f} s; node 1 restarted and Synced in {rejoin:.1f} s")
    assert failover < 5
    assert wait_until(lambda: server_port(store) == galera.port(1), 10)
    assert not store.take_refresh_lock("host-b", NOW, 60)  # node 1 has the write made at node 2
    store.close()


def test_a_node_out_of_the_cluster_is_passed_over(galera, galera_db, monkeypatch):  # noqa: F811
    """A node cut off from the others (gmcast.isolate: as a network partition would) leaves
    the primary component: it takes connections, but no statements (1047, `WSREP has not yet
    prepared node`). The store uses node 2 meanwhile, and node 1 again once it is back."""
    monkeypatch.setattr(mysql_store, "FAILED_HOST_SECONDS", 2)
    store = open_store(galera.url(galera_db, 1, 2), TIMEOUT, wait_seconds=10)
    store.create_tables()
    assert store.last_refresh() == 0 and server_port(store) == galera.port(1)
    admin = galera.connect(1)
    admin.cursor().execute("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'")
    try:
        assert wait_until(lambda: galera.status(1, "wsrep_ready") == "OFF", 10)
        # Until the others have evicted node 1 (2-5 s here), the whole cluster waits: a call
        # then may time out (1205), as any call while a node dies (README).
        assert wait_until(lambda: galera.status(2, "wsrep_cluster_size") == "2", 10)
        assert store.last_refresh() == 0 and server_port(store) == galera.port(2)
    finally:
        admin.cursor().execute("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'")
        admin.close()
        # A few seconds on a quiet machine; a loaded one (CI beside other work) took longer.
        if not wait_until(lambda: galera.status(1, "wsrep_ready") == "ON", REJOIN_SECONDS):
            galera.kill(1)  # for the next tests; this one fails below
            galera.restart(1)
            pytest.fail(f"node 1 did not rejoin within {REJOIN_SECONDS} s of gmcast.isolate=0")
    assert wait_until(lambda: store.last_refresh() == 0 and server_port(store) == galera.port(1), 10)
    store.close()


def test_a_node_rejecting_queries_is_passed_over(galera, galera_db, monkeypatch):  # noqa: F811
    """A node whose admin set wsrep_reject_queries (maintenance) answers 1047 to a statement
    on a table, though it is in the cluster: the store moves to node 2 at once."""
    monkeypatch.setattr(mysql_store, "FAILED_HOST_SECONDS", 2)
    store = open_store(galera.url(galera_db, 1, 2), TIMEOUT, wait_seconds=10)
    store.create_tables()
    assert store.last_refresh() == 0 and server_port(store) == galera.port(1)
    admin = galera.connect(1)
    admin.cursor().execute("SET GLOBAL wsrep_reject_queries = ALL_KILL")
    try:
        assert store.last_refresh() == 0 and server_port(store) == galera.port(2)
    finally:
        admin.cursor().execute("SET GLOBAL wsrep_reject_queries = NONE")
        admin.close()
    assert wait_until(lambda: store.last_refresh() == 0 and server_port(store) == galera.port(1), 10)
    store.close()


def test_when_no_host_answers_the_error_is_one_line_naming_the_setting():
    ports = [free_port(), free_port()]
    store = open_store(f"mysql://u:pw@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/db", TIMEOUT, wait_seconds=2)
    with pytest.raises(StoreUnavailable) as err:
        store.last_refresh()
    assert err.value.cause == UNREACHABLE
    line = err.value.explain()
    assert "\n" not in line and "`database`" in line and f"127.0.0.1:{ports[0]}" in line


# -- the refresh lease ----------------------------------------------------------------------------

LEASE_ROUNDS = 100


def test_two_hosts_refreshing_at_once_on_two_nodes_never_both_take_the_lease(galera, galera_db):  # noqa: F811
    """take_refresh_lock is one UPDATE ... WHERE lock_until < now of the one lock row: on
    two nodes at the same moment both may find the row free, but only one commit passes
    certification; the other is run again and finds the lease taken."""
    stores = [open_store(galera.url(galera_db, n), TIMEOUT, wait_seconds=10) for n in (1, 2)]
    stores[0].create_tables()
    both = none = 0
    start = threading.Barrier(2)

    def refresh(i: int, now: int, taken: list[bool]) -> None:
        start.wait()
        taken[i] = stores[i].take_refresh_lock(f"host-{i}", now, 60)

    for round_ in range(LEASE_ROUNDS):
        now = NOW + 1000 * round_  # every round's lease is free: the last one ended long ago
        taken = [False, False]
        threads = [threading.Thread(target=refresh, args=(i, now, taken)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        both += all(taken)
        none += not any(taken)
    conflicts = sum(store.conflicts for store in stores)
    for store in stores:
        store.close()
    print(f"refresh lease, {LEASE_ROUNDS} rounds on 2 nodes: {both} both, {none} neither, "
          f"{conflicts} conflicts retried")
    assert (both, none) == (0, 0)


# -- reads of another node's writes ---------------------------------------------------------------

CAUSAL_ROUNDS = 300


@contextlib.contextmanager
def write_load(galera, db: str) -> Iterator[None]:  # noqa: F811
    """Transactions of many rows at node 2, which the other nodes apply, for the block."""
    setup = galera.connect(2, db)
    setup.cursor().execute("CREATE TABLE IF NOT EXISTS busy (id INT PRIMARY KEY, n INT NOT NULL)")
    setup.cursor().execute("REPLACE INTO busy VALUES " + ", ".join(f"({i}, 0)" for i in range(1000)))
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            setup.cursor().execute("UPDATE busy SET n = n + 1")

    loader = threading.Thread(target=load)
    loader.start()
    try:
        yield
    finally:
        stop.set()
        loader.join()
        setup.close()


def test_a_read_right_after_another_nodes_commit_needs_wsrep_sync_wait(galera, galera_db):  # noqa: F811
    """A commit at node 1 returns once the cluster has certified it, before node 3 has
    applied it: under write load, a read at node 3 right after may not see it. With
    wsrep_sync_wait = 1 the read waits until node 3 has applied everything committed before
    it began, so it always sees it."""
    setup = galera.connect(1, galera_db)
    setup.cursor().execute("CREATE TABLE seen (id INT PRIMARY KEY, n INT NOT NULL)")
    setup.cursor().execute("INSERT INTO seen VALUES (1, 0)")
    setup.close()
    writer = galera.connect(1, galera_db)
    reader = galera.connect(3, galera_db)
    stale: dict[int, int] = {}
    slowest: dict[int, float] = {}
    with write_load(galera, galera_db):
        for sync_wait in (0, 1):
            reader.cursor().execute(f"SET SESSION wsrep_sync_wait = {sync_wait}")
            stale[sync_wait], slowest[sync_wait] = 0, 0.0
            for i in range(CAUSAL_ROUNDS):
                value = sync_wait * CAUSAL_ROUNDS + i + 1
                writer.cursor().execute("UPDATE seen SET n = %s WHERE id = 1", (value,))
                cur = reader.cursor()
                started = time.monotonic()
                cur.execute("SELECT n FROM seen WHERE id = 1")
                stale[sync_wait] += cur.fetchall() != [(value,)]
                slowest[sync_wait] = max(slowest[sync_wait], time.monotonic() - started)
    writer.close()
    reader.close()
    print(f"reads at node 3 right after a commit at node 1, under writes at node 2: stale {stale[0]} of "
          f"{CAUSAL_ROUNDS} (slowest {1000 * slowest[0]:.0f} ms); with wsrep_sync_wait=1 {stale[1]} "
          f"(slowest {1000 * slowest[1]:.0f} ms)")
    assert stale[1] == 0
    assert stale[0] > 0


def test_the_store_reads_what_another_node_committed_before(galera, galera_db):  # noqa: F811
    """The store sets wsrep_sync_wait on its connections to a Galera node: a host's read at
    node 3 sees what another host committed at node 1 before it, under the same load."""
    writer = open_store(galera.url(galera_db, 1), TIMEOUT, wait_seconds=10)
    reader = open_store(galera.url(galera_db, 3), TIMEOUT, wait_seconds=10)
    writer.create_tables()
    stale = 0
    with write_load(galera, galera_db):
        for i in range(CAUSAL_ROUNDS // 3):
            assert writer.take_refresh_lock("host-a", NOW + i, 60)
            writer.release_refresh_lock("host-a", finished_at=NOW + i)
            stale += reader.last_refresh() != NOW + i
    writer.close()
    reader.close()
    assert stale == 0
