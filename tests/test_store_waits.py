"""Bounded database waits: a store call on a hung or locked database raises StoreUnavailable
within about the store's wait_seconds, on SQLite (another process holding the write lock)
and on MariaDB (a private server stopped with SIGSTOP, a row lock held by another client).
Then the store works again by itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import mysql.connector
import pytest

from conftest import TEST_PASSWORD, TEST_USER, announce_query, ih, new_swarm_dir, pid
from test_e2e_apache import PrivateMariadb
from test_wsgi import call as wsgi_call
from test_wsgi import tracker_log  # noqa: F401 (a fixture)
from tracker_wsgi import config as config_module
from tracker_wsgi.gate import DB_QUEUE_SECONDS
from tracker_wsgi.live import HostSwarms
from tracker_wsgi.model import (
    ACCESS_DENIED,
    UNKNOWN_DATABASE,
    UNREACHABLE,
    AnnounceRequest,
    Event,
    PeerState,
    PeerWrite,
    StoreUnavailable,
    Torrent,
)
from tracker_wsgi.model import (
    TIMEOUT as TIMEOUT_CAUSE,
)
from tracker_wsgi.protocol import BUSY, UNKNOWN_TORRENT
from tracker_wsgi.refusals import DATABASE_UNAVAILABLE
from tracker_wsgi.store import open_store
from tracker_wsgi.store.mysql import timeouts
from tracker_wsgi.store.mysql_settings import connect_args
from tracker_wsgi.wsgi import Application, build_tracker

NOW = 1_700_000_000
TIMEOUT = 2700
V4 = bytes([192, 0, 2, 1])
SLACK = 1.0  # seconds a call may take beyond wait_seconds (a loaded 2-core test machine)


def write(n: int) -> PeerWrite:
    return PeerWrite(pid(n), V4, 6000 + n, None, PeerState.LEECHER, 100, 0, 0, NOW, False)


def ann(n: int) -> AnnounceRequest:
    return AnnounceRequest(ih(1), pid(n), V4, 6000 + n, 0, 0, 100, Event.NONE, 50, True, False, None, None, V4)


def timed_unavailable(call) -> tuple[float, StoreUnavailable]:
    started = time.monotonic()
    try:
        returned = call()
    except StoreUnavailable as exc:
        return time.monotonic() - started, exc
    pytest.fail(f"no StoreUnavailable after {time.monotonic() - started:.2f} s; the call returned {returned!r}")


def opened(url: str, wait_seconds: float):
    store = open_store(url, TIMEOUT, wait_seconds=wait_seconds)
    store.create_tables()
    store.register(Torrent(ih(1), None, "one", 1000), NOW)
    return store


def holder(code: str) -> subprocess.Popen:
    """Another process that takes a lock, says so, and holds it until killed."""
    process = subprocess.Popen([sys.executable, "-c", code + "\nprint('held', flush=True)\nimport time; time.sleep(120)"],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    return process


def release(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


# -- SQLite --------------------------------------------------------------------------------------


@pytest.mark.parametrize("lock", ["writer file", "exclusive transaction"])
def test_sqlite_locked_by_another_process_is_unavailable_within_the_wait(sqlite_url, lock):
    """The tracker's processes queue on the -writer file's flock; anything else (the sqlite3
    shell) holds SQLite's own lock, met by the busy timeout. Either ends by wait_seconds."""
    wait = 1.0
    store = opened(sqlite_url, wait)
    path = sqlite_url.removeprefix("sqlite://")
    if lock == "writer file":
        code = f"import fcntl; f = open({path + '-writer'!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX)"
    else:
        code = f"import sqlite3; c = sqlite3.connect({path!r}, isolation_level=None); c.execute('BEGIN EXCLUSIVE')"
    process = holder(code)
    try:
        elapsed, error = timed_unavailable(lambda: store.write_batch([(1, write(1))]))
        assert wait - 0.05 <= elapsed < wait + SLACK, elapsed
        assert error.__cause__ is not None or lock == "writer file"
        elapsed, _ = timed_unavailable(lambda: store.write_through(1, write(2), True))
        assert elapsed < wait + SLACK, elapsed
        assert ih(1) in store.scrape([ih(1)], NOW)  # readers never wait for the writer (WAL)
    finally:
        release(process)
    assert store.write_batch([(1, write(1))]).written == {1}


def test_sqlite_a_batch_the_store_cannot_take_stays_pending(sqlite_url):
    """HostSwarms.flush on StoreUnavailable: nothing is lost, the next flush writes it. The
    swarm the host holds goes on being answered meanwhile, new peers included (the host
    holds it whole: the key rule needs no database)."""
    store = opened(sqlite_url, 0.5)
    swarms = HostSwarms(store, 2, new_swarm_dir(), clock=lambda: NOW)
    swarms.announce(ann(1), NOW)
    path = sqlite_url.removeprefix("sqlite://")
    process = holder(f"import fcntl; f = open({path + '-writer'!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX)")
    try:
        timed_unavailable(swarms.flush)
        swarms.announce(ann(1)._replace(left=50), NOW)
        assert swarms.announce(ann(2), NOW).stats.incomplete == 2
    finally:
        release(process)
    assert swarms.flush() == 2
    assert store.scrape([ih(1)], NOW)[ih(1)].incomplete == 2
    assert store.find_peer(1, pid(1)).left == 50  # the re-announce was written


# -- MariaDB -------------------------------------------------------------------------------------


def test_mysql_timeouts_add_up_to_the_wait():
    assert timeouts(30) == {"connection_timeout": 5, "read_timeout": 25, "write_timeout": 25}
    assert timeouts(10) == {"connection_timeout": 5, "read_timeout": 5, "write_timeout": 5}
    assert timeouts(2) == {"connection_timeout": 1, "read_timeout": 1, "write_timeout": 1}
    assert timeouts(0.5) == {"connection_timeout": 1, "read_timeout": 1, "write_timeout": 1}  # whole seconds


@pytest.fixture
def private_mariadb():
    """A MariaDB server of this test's own: it is stopped with SIGSTOP, which the shared one
    (other engineers' tests use it) must never be."""
    server = PrivateMariadb()
    try:
        server.start()
        yield server, server.tracker_database(password="pw")
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGCONT)
            server.process.kill()
            server.process.wait()
        server.remove()


def test_mysql_hung_server_is_unavailable_within_the_wait(private_mariadb):
    server, url = private_mariadb
    wait = 2.0
    store = opened(url, wait)
    assert store.write_batch([(1, write(1))]).written == {1}  # this thread is connected
    server.hang()
    try:
        # A connected thread: its read times out, and the one retry's connect does too.
        elapsed, error = timed_unavailable(lambda: store.write_batch([(1, write(2))]))
        assert wait - 0.1 <= elapsed < wait + SLACK, elapsed
        assert isinstance(error.__cause__, mysql.connector.Error)
        # Its next calls find no connection: a connect that times out, not retried.
        for call in (lambda: store.scrape([ih(1)], NOW), lambda: store.write_through(1, write(3), True)):
            elapsed, error = timed_unavailable(call)
            assert elapsed < wait + SLACK, elapsed
            assert isinstance(error.__cause__, mysql.connector.Error)
        # A thread with no connection yet: its connect times out, and is not retried.
        results: list = []
        thread = threading.Thread(target=lambda: results.append(timed_unavailable(lambda: store.find_peer(1, pid(1)))))
        thread.start()
        thread.join()
        assert results[0][0] < wait + SLACK, results[0][0]
    finally:
        server.resume()
    assert store.find_peer(1, pid(1)) is not None  # back by itself
    assert store.write_batch([(1, write(2))]).written == {1}
    assert store.scrape([ih(1)], NOW)[ih(1)].incomplete == 2


def test_mysql_row_lock_held_by_another_client_is_unavailable_within_the_wait(mysql_url):
    """A writer stuck holding a torrent's row (a host that hangs mid-transaction) on the
    shared server: the server ends our lock wait (1205) before our read would time out."""
    wait = 3.0
    store = opened(mysql_url, wait)
    other = mysql.connector.connect(**connect_args(mysql_url))
    try:
        cur = other.cursor()
        other.start_transaction()
        cur.execute("SELECT id FROM torrents WHERE id = 1 FOR UPDATE")
        cur.fetchall()
        elapsed, error = timed_unavailable(lambda: store.write_through(1, write(1), False))
        assert elapsed < wait + SLACK, elapsed
        assert error.__cause__.errno == 1205
        assert ih(1) in store.scrape([ih(1)], NOW)  # reads take no row locks
    finally:
        other.rollback()
        other.close()
    store.write_through(1, write(1), False)
    assert store.find_peer(1, pid(1)) is not None


def test_a_client_library_error_of_any_type_is_the_connections_never_a_bad_rows(mysql_url):
    """A batch sets aside only what the server refused for the row itself; an error of the
    client library (2000-2999), even the C extension's unconverted MySQLInterfaceError, means
    the connection failed, so the batch stays pending (StoreUnavailable), whole."""
    from _mysql_connector import MySQLInterfaceError

    store = open_store(mysql_url, TIMEOUT)
    out_of_sync = MySQLInterfaceError("Commands out of sync; you can't run this command now")
    out_of_sync.errno = 2014
    for exc in (out_of_sync, mysql.connector.errors.DatabaseError(errno=2027, msg="Malformed packet"),
                mysql.connector.errors.InterfaceError("MySQL Connection not available.")):
        assert store._is_transient(exc) and store._is_unavailable(exc), exc
    out_of_range = mysql.connector.errors.DataError(errno=1264, msg="Out of range value for column 'transferred'")
    assert not store._is_transient(out_of_range) and not store._is_unavailable(out_of_range)


# -- what an outage is called: its cause, in one line (issue 19) -----------------------------------


@pytest.fixture
def own_user(mysql_url):
    """A MariaDB user of this test's own on a fresh database (its password is changed: the
    shared test user is other tests'), dropped afterwards; yields (url, admin connection)."""
    user, password = f"tracker_own_{os.getpid()}_{threading.get_ident() % 10_000}", "own-Pw-1"
    database = mysql_url.rpartition("/")[2]
    admin = mysql.connector.connect(user="root", host="127.0.0.1", port=3306, autocommit=True)
    cur = admin.cursor()
    cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'")
    cur.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'127.0.0.1'")
    try:
        yield f"mysql://{user}:{password}@127.0.0.1:3306/{database}", admin
    finally:
        cur.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        admin.close()


def cause_of(store) -> StoreUnavailable:
    _, error = timed_unavailable(lambda: store.scrape([ih(1)], NOW))
    return error


def test_mysql_outages_are_named_by_cause(own_user):
    """Against the real MariaDB: a refused login, a database that is not there, a closed
    port. Each names its cause and, where a setting fixes it, the setting."""
    url, _ = own_user
    wrong_password = url.replace(":own-Pw-1@", ":wrong@")
    error = cause_of(open_store(wrong_password, TIMEOUT, wait_seconds=2))
    assert (error.cause, error.__cause__.errno) == (ACCESS_DENIED, 1045)
    assert error.explain().startswith("the database refused the tracker's user (its login or its privileges): "
                                      "check the user and password of `database`")
    assert "Access denied for user" in error.explain() and "\n" not in error.explain()
    # A user without privileges on a database is not told whether it exists (1044)...
    error = cause_of(open_store(url.rpartition("/")[0] + "/tracker_test_nowhere", TIMEOUT, wait_seconds=2))
    assert (error.cause, error.__cause__.errno) == (ACCESS_DENIED, 1044)
    # ...one with them is (the shared test user may use every tracker_test_% database).
    error = cause_of(open_store(f"mysql://{TEST_USER}:{TEST_PASSWORD}@127.0.0.1:3306/tracker_test_nowhere", TIMEOUT,
                                wait_seconds=2))
    assert (error.cause, error.__cause__.errno) == (UNKNOWN_DATABASE, 1049)
    assert "does not exist" in error.explain()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    error = cause_of(open_store(url.replace(":3306/", f":{port}/"), TIMEOUT, wait_seconds=2))
    assert (error.cause, error.__cause__.errno) == (UNREACHABLE, 2003)
    assert "cannot be reached" in error.explain()


def test_mysql_hung_server_is_named_a_timeout(private_mariadb):
    server, url = private_mariadb
    store = opened(url, 2.0)
    server.hang()
    try:
        error = cause_of(store)
    finally:
        server.resume()
    assert error.cause == TIMEOUT_CAUSE and error.explain().startswith("the database did not answer in time (")


def test_a_refused_login_is_one_line_and_one_wording_for_every_request(own_user, tracker_log):
    """Issue 19: with the database refusing the tracker's login (1045), the log said "the
    database did not answer a request in time" with an 18-line traceback, and completions
    were told "busy" where an unknown swarm was told "temporarily unavailable"."""
    url, admin = own_user
    tracker = build_tracker(config_module.from_dict({"database": url, "swarm_dir": new_swarm_dir()}))
    try:
        tracker.store.register(Torrent(ih(1), None, "one", 1000), NOW)
        tracker.store.register(Torrent(ih(2), None, "two", 1000), NOW)
        app = Application(tracker)
        assert b"interval" in wsgi_announce(app, ih(1), 1).decoded  # swarm 1 is held now
        tracker_log()
        admin.cursor().execute(f"ALTER USER '{url.split('//')[1].split(':')[0]}'@'127.0.0.1' IDENTIFIED BY 'changed'")
        tracker.store.close()  # the idle connections go: the next ones must log in again
        answers = [
            wsgi_announce(app, ih(2), 1),  # a swarm not held yet: read from the database
            wsgi_announce(app, ih(1), 2, event="completed", left=0),  # a completion of a peer the view lacks
        ]
        tracker.swarms._gate._away_until = 0  # the database gate's pause after a failure: ask again
        answers.append(wsgi_announce(app, ih(1), 1, event="completed", left=0))  # a completion, written through
        for answer in answers:
            assert answer.decoded == {b"failure reason": DATABASE_UNAVAILABLE.encode(), b"retry in": 1}
        logged = tracker_log()
        assert len(logged) == 1, logged
        level, line = logged[0]
        assert level == "ERROR" and "\n" not in line and "Traceback" not in line
        assert line.startswith("requests that need the database are answered `retry in`: the database refused "
                               "the tracker's user (its login or its privileges): check the user and password of "
                               "`database`")
        assert "1045" in line
    finally:
        tracker.close()


def test_a_closed_port_at_start_is_one_line_naming_the_config(tmp_path, monkeypatch, tracker_log):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    path = tmp_path / "tracker.toml"
    path.write_text(f'database = "mysql://tracker:pw@127.0.0.1:{port}/tracker"\n'
                    f'torrent_dir = "{tmp_path}"\noutput_dir = "{tmp_path}/output"\nswarm_dir = "{tmp_path}/output-swarms"\n')
    app = Application()
    for _ in range(3):
        answer = wsgi_call(app, "/announce", announce_query(ih(1), pid(1)),
                           extra={config_module.ENVIRON_KEY: str(path)})
        assert answer.decoded == {b"failure reason": DATABASE_UNAVAILABLE.encode(), b"retry in": 1}
    [(level, line)] = tracker_log()
    assert level == "ERROR" and "\n" not in line
    assert line.startswith(f"the tracker cannot start (config {path}): the database server cannot be reached: "
                           "is it running, and are the host, port or socket of `database`")
    assert f"127.0.0.1:{port}" in line


def wsgi_announce(app, info_hash: bytes, peer: int, **fields):
    return wsgi_call(app, "/announce", announce_query(info_hash, pid(peer), port=6000 + peer, **fields),
                remote=f"10.1.0.{peer}")


def test_requests_while_the_tracker_starts_on_a_hung_database_get_retry_in_at_once(private_mariadb, tmp_path):
    """Issue 18: the first request builds the tracker (its tables checked) under a lock; on a
    hung database that takes the database's wait, and every other request of the process
    waited on the lock as long. Now they wait DB_QUEUE_SECONDS, then get `retry in`."""
    server, url = private_mariadb
    path = tmp_path / "tracker.toml"
    path.write_text(f'database = "{url}"\ntorrent_dir = "{tmp_path}"\noutput_dir = "{tmp_path}/output"\nswarm_dir = "{tmp_path}/output-swarms"\n')
    app = Application()
    environ = {config_module.ENVIRON_KEY: str(path)}
    server.hang()
    first: list = []
    try:
        starting = threading.Thread(target=lambda: first.append(
            wsgi_call(app, "/announce", announce_query(ih(1), pid(1)), extra=environ)))
        starting.start()
        time.sleep(0.3)  # the first request holds the build
        assert starting.is_alive()
        for n in range(2, 5):
            began = time.monotonic()
            answer = wsgi_call(app, "/announce", announce_query(ih(1), pid(n)), extra=environ)
            assert time.monotonic() - began < DB_QUEUE_SECONDS + SLACK
            assert answer.decoded == {b"failure reason": BUSY.encode(), b"retry in": 1}
    finally:
        server.resume()
    starting.join()
    # The first request met the database hung, then back (built, or `retry in` if it had
    # waited out its time): answered either way; the tracker builds once it is back.
    assert b"failure reason" in first[0].decoded
    assert wsgi_call(app, "/announce", announce_query(ih(1), pid(5)), extra=environ).decoded == {
        b"failure reason": UNKNOWN_TORRENT.encode()}  # built: it reads the (empty) torrent list
