"""Schema versions (tracker_wsgi/store/schema.py), on SQLite and the real MariaDB: a database
of every earlier release, loaded from tests/fixtures/schema/ as that release made it, migrates
to exactly what schema.sql creates and keeps its data; many processes starting at once
migrate it once; a newer schema, pre-release tables and a cut-short run are handled."""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mysql.connector
import pytest

from conftest import announce_query, decode, give_to_www_data, new_swarm_dir, own_directories, pid
from tracker_wsgi.live import HostSwarms
from tracker_wsgi.model import AnnounceRequest, Event, StoreUnavailable, Torrent
from tracker_wsgi.protocol import BUSY
from tracker_wsgi.store import open_store, schema
from tracker_wsgi.store.mysql_settings import connect_args
from tracker_wsgi.store.schema import SchemaChange, SchemaError, sqlite_statements

FIXTURES = Path(__file__).parent / "fixtures" / "schema"
CLI = str(Path(sys.executable).parent / "tracker-wsgi")
NOW = 1_700_000_200
TIMEOUT = 2700
# The fixtures' swarm: torrent 7, known by two hashes, a seed and a leecher.
HASH_V1 = bytes.fromhex("00252b20ff0000000000000000000000000000a1")
HASH_V2 = bytes.fromhex("00252b20ff0000000000000000000000000000a2")
# Each earlier release whose databases must migrate: its fixture, and the version it is.
RELEASES = {"0.1.0": 1, "unversioned-3": 3}


@pytest.fixture(params=["sqlite", "mysql"])
def kind(request):
    return request.param


@pytest.fixture
def url(kind, request):
    return request.getfixturevalue(f"{kind}_url")


def raw(url: str):
    """A plain connection to the test database, outside the store."""
    if url.startswith("sqlite:"):
        return sqlite3.connect(url.removeprefix("sqlite://"), isolation_level=None)
    conn = mysql.connector.connect(**connect_args(url))
    conn.autocommit = True
    return conn


def execute(url: str, *statements: str) -> list:
    conn = raw(url)
    cur = conn.cursor()
    rows = []
    for statement in statements:
        cur.execute(statement)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


def load(url: str, kind: str, release: str) -> None:
    """A database as that release left it (its SQLite files in WAL mode, as every release's)."""
    text = (FIXTURES / f"{release}-{kind}.sql").read_text()
    execute(url, *(["PRAGMA journal_mode = WAL"] if kind == "sqlite" else []), *schema.statements(text))


def structure(url: str) -> dict:
    """Every table's columns (in order), indexes and storage, as the database reports them."""
    conn = raw(url)
    cur = conn.cursor()
    tables = {}
    if url.startswith("sqlite:"):
        cur.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                    "ORDER BY name")
        for table, sql in cur.fetchall():
            cur.execute(f"PRAGMA table_info({table})")
            columns = [row[1:] for row in cur.fetchall()]  # name, type, notnull, default, pk
            cur.execute(f"PRAGMA index_list({table})")
            indexes = []
            for _, name, unique, origin, _ in cur.fetchall():
                cur.execute(f"PRAGMA index_info({name})")
                indexes.append((name if origin == "c" else origin, unique, tuple(r[2] for r in cur.fetchall())))
            tables[table] = (columns, sorted(indexes), "WITHOUT ROWID" in sql)
    else:
        cur.execute("SELECT table_name, engine, table_collation FROM information_schema.tables "
                    "WHERE table_schema = DATABASE() ORDER BY table_name")
        for table, engine, collation in cur.fetchall():
            cur.execute("SELECT column_name, column_type, is_nullable, column_default, extra "
                        "FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = %s "
                        "ORDER BY ordinal_position", (table,))
            columns = cur.fetchall()
            cur.execute("SELECT index_name, non_unique, GROUP_CONCAT(column_name ORDER BY seq_in_index) "
                        "FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = %s "
                        "GROUP BY index_name, non_unique ORDER BY index_name", (table,))
            tables[table] = (columns, cur.fetchall(), (engine, collation))
    conn.close()
    return tables


def versions(url: str) -> list[int]:
    return [row[0] for row in execute(url, "SELECT version FROM schema_version ORDER BY version")]


@pytest.fixture
def fresh_structure(url):
    """What schema.sql creates in an empty database of this kind (made in a second one)."""
    if url.startswith("mysql:"):
        other = url + "_fresh"
        execute(url, f"CREATE DATABASE {other.rsplit('/', 1)[1]}")
    else:
        other = url.replace("tracker.sqlite", "fresh.sqlite")
    try:
        assert open_store(other, TIMEOUT).create_tables() == SchemaChange(None, schema.LATEST, ())
        yield structure(other)
    finally:
        if url.startswith("mysql:"):
            execute(url, f"DROP DATABASE {other.rsplit('/', 1)[1]}")


def announce(n: int, left: int) -> AnnounceRequest:
    ip = bytes([192, 0, 2, 9])
    return AnnounceRequest(HASH_V2, pid(n), ip, 7000 + n, 0, 0, left, Event.STARTED, 50, True, False, None, None, ip)


# -- every earlier release migrates to what schema.sql creates -----------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_a_database_of_an_earlier_release_migrates_to_what_schema_sql_creates(kind, url, release, fresh_structure):
    load(url, kind, release)
    store = open_store(url, TIMEOUT)
    change = store.create_tables()
    assert change == SchemaChange(1, schema.LATEST, (
        "2: torrents.version: swarm views kept by version",
        "3: torrents.info_sha256: the whole SHA-256 of v2 and hybrid torrents, for the feed",
        "4: peers.stamp: writes ordered by their announce, stops kept as tombstones (state 3)",
        "5: peers.changed and swarm_counts: hosts read each other's changes, no row every writer bumps"))
    assert versions(url) == [1, 2, 3, 4, 5]
    assert structure(url) == fresh_structure
    assert store.create_tables() == SchemaChange(5, 5, ())  # done once
    assert versions(url) == [1, 2, 3, 4, 5]

    # The release's data, as the tracker reads it now.
    stats = store.scrape([HASH_V1, HASH_V2], NOW)
    assert {h: (s.complete, s.incomplete, s.downloaded) for h, s in stats.items()} == {
        HASH_V1: (1, 1, 1), HASH_V2: (1, 1, 1)}
    (report,) = store.report(1_700_000_100)
    assert (report.info_hash, report.name, report.path, report.downloaded, report.transferred, report.info_sha256) == (
        HASH_V1, "Alpha", "alpha.torrent", 1, 6500, None)  # 5000 departed + what the live peers downloaded
    assert store.find_peer(7, pid(1)).key == b"key"
    assert store.last_refresh() == 1_700_000_050
    assert store.history(0) == [(1_700_000_050, 1, 1)]
    assert store.skipped_files() == {"junk.torrent": (4, 1_700_000_000_000_000_000, "not a torrent")}
    # And the tracker goes on with it: a new peer joins, a hybrid torrent keeps its SHA-256.
    swarms = HostSwarms(store, 2, new_swarm_dir(), clock=lambda: NOW)
    assert swarms.announce(announce(3, 100), NOW).stats.incomplete == 2
    assert swarms.flush() == 1
    assert store.scrape([HASH_V1], NOW)[HASH_V1].incomplete == 2
    sha256 = bytes(range(32))
    assert store.register(Torrent(b"\x01" * 20, sha256[:20], "Beta", 5, info_sha256=sha256), NOW)
    assert {r.name: r.info_sha256 for r in store.report(NOW)}["Beta"] == sha256


def test_an_empty_database_is_created_at_the_latest_version(url, fresh_structure):
    assert open_store(url, TIMEOUT).create_tables() == SchemaChange(None, schema.LATEST, ())
    assert versions(url) == [schema.LATEST]
    assert structure(url) == fresh_structure
    rows = execute(url, "SELECT description FROM schema_version")
    assert rows == [(f"created at version {schema.LATEST}",)]


def test_sqlite_tables_are_the_ones_the_sqlite_store_made_before_schema_sql_was_their_source(tmp_path):
    """The translation of schema.sql gives SQLite exactly the tables its own copy of the schema
    gave (main before versions: tests/fixtures/schema/unversioned-3-sqlite.sql)."""
    before, after = f"sqlite:///{tmp_path}/before.sqlite", f"sqlite:///{tmp_path}/after.sqlite"
    load(before, "sqlite", "unversioned-3")
    open_store(after, TIMEOUT).create_tables()
    made_then = structure(before)
    made_now = structure(after)
    del made_now["schema_version"], made_now["swarm_counts"]  # the tables added since
    columns, indexes, without_rowid = made_now["peers"]
    assert [c[0] for c in columns[-2:]] == ["stamp", "changed"]  # migrations 4 and 5: the columns added since
    made_now["peers"] = (columns[:-2], [i for i in indexes if i[0] != "peers_by_changed"], without_rowid)
    columns, indexes, without_rowid = made_then["torrents"]
    dropped = ("seeders", "leechers", "partial_seeds", "version")  # by migration 5
    made_then["torrents"] = ([c for c in columns if c[0] not in dropped], indexes, without_rowid)
    assert made_now == made_then


# -- many at once, cut short, newer, older --------------------------------------------------------

MIGRATE_ONE = """
import sys, time
from tracker_wsgi.store import open_store
store = open_store(sys.argv[1], 2700)
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
change = store.create_tables()
print(change.before, change.after, len(change.applied))
"""


@pytest.mark.parametrize("release", [None, "0.1.0"])
def test_processes_starting_at_once_migrate_once(kind, url, release, fresh_structure):
    """Apache's daemon processes, and other hosts, start together after an upgrade: one
    migrates (or creates), the others wait for it and find it done."""
    if release:
        load(url, kind, release)
    start = time.time() + 2.0  # all of them connected and waiting by then
    processes = [subprocess.Popen([sys.executable, "-c", MIGRATE_ONE, url, str(start)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, [err for _, err in results]
    outcomes = sorted(out.strip() for out, _ in results)
    did = "1 5 4" if release else "None 5 0"
    assert outcomes == sorted([did] + ["5 5 0"] * 5), outcomes
    assert versions(url) == ([1, 2, 3, 4, 5] if release else [5])
    assert structure(url) == fresh_structure


def test_a_process_waits_for_the_one_migrating_and_gives_up_after_its_wait(kind, url):
    """The schema lock: MySQL's named lock for this database, SQLite's write lock (the
    writer file's flock, as another daemon process holds it while it migrates)."""
    load(url, kind, "0.1.0")
    holder = raw(url)
    if kind == "mysql":
        cur = holder.cursor()
        cur.execute("SELECT GET_LOCK(LEFT(CONCAT('tracker_wsgi schema ', DATABASE()), 64), 0)")
        assert cur.fetchall() == [(1,)]
    else:
        lock_file = open(url.removeprefix("sqlite://") + "-writer", "a")
        fcntl.flock(lock_file, fcntl.LOCK_EX)
    store = open_store(url, TIMEOUT, wait_seconds=3)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="another process" if kind == "mysql" else "write lock"):
        store.create_tables()
    assert 0.9 < time.monotonic() - started < 3 + 1  # it waited, and no longer than its wait
    assert "schema_version" not in {r[0] for r in execute(url, *([
        "SELECT name FROM sqlite_master WHERE type = 'table'"] if kind == "sqlite" else ["SHOW TABLES"]))}
    if kind == "mysql":
        holder.close()
    else:
        lock_file.close()
    assert store.create_tables().before == 1


def test_a_migration_cut_short_is_finished_by_the_next_run(kind, url, fresh_structure):
    """MySQL commits each DDL statement by itself: a process killed after migration 3's
    ALTER and before the versions were recorded leaves the column and no version."""
    load(url, kind, "0.1.0")
    execute(url, *sqlite_statements("ALTER TABLE torrents ADD COLUMN version BIGINT UNSIGNED NOT NULL DEFAULT 0")
            if kind == "sqlite" else ["ALTER TABLE torrents ADD COLUMN version BIGINT UNSIGNED NOT NULL DEFAULT 0"])
    assert open_store(url, TIMEOUT).create_tables().before == 1
    assert versions(url) == [1, 2, 3, 4, 5]
    assert structure(url) == fresh_structure


def test_a_creation_cut_short_is_finished_by_the_next_run(kind, url, fresh_structure):
    """The version table is created first and its row written last: tables half made, and
    the version table empty, mean a creation to finish (also what `mysql < schema.sql` leaves)."""
    first_two = [s for s in schema.schema_statements() if " schema_version (" in s or " torrents (" in s]
    execute(url, *[t for s in first_two for t in (sqlite_statements(s) if kind == "sqlite" else [s])])
    assert open_store(url, TIMEOUT).create_tables() == SchemaChange(None, schema.LATEST, ())
    assert structure(url) == fresh_structure


def test_a_newer_releases_schema_is_refused_with_the_fix(url):
    store = open_store(url, TIMEOUT)
    store.create_tables()
    execute(url, f"INSERT INTO schema_version (version, applied_at) VALUES ({schema.LATEST + 1}, 0)")
    with pytest.raises(SchemaError) as err:
        store.create_tables()
    assert str(err.value) == (
        f"the database's schema is at version {schema.LATEST + 1}, newer than this tracker-wsgi (0.1.0, schema "
        f"version {schema.LATEST}) knows: a newer release migrated it; install that release here too")


def test_tables_older_than_the_first_release_are_refused(kind, url):
    """The development schema before the first release (commit b454f2c) had no swarm counters."""
    ddl = ("CREATE TABLE IF NOT EXISTS torrents (id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, "
           "name VARCHAR(255) NOT NULL)")
    execute(url, *(sqlite_statements(ddl) if kind == "sqlite" else [ddl]))
    with pytest.raises(SchemaError, match=r"^these tables were made by a development version older than the first "
                                          r"release \(torrents has no seeders\); drop them"):
        open_store(url, TIMEOUT).create_tables()


def test_a_column_removed_by_hand_is_named(kind, url):
    load(url, kind, "unversioned-3")
    execute(url, "ALTER TABLE skipped_files DROP COLUMN reason")
    with pytest.raises(SchemaError, match=r"^table skipped_files lacks reason at schema version 5: it was changed "
                                          r"by hand"):
        open_store(url, TIMEOUT).create_tables()
    assert execute(url, "SELECT COUNT(*) FROM torrents") == [(1,)]
    tables = {r[0] for r in execute(url, "SELECT name FROM sqlite_master WHERE type = 'table'" if kind == "sqlite"
                                    else "SHOW TABLES")}
    assert "schema_version" not in tables or versions(url) == []  # nothing recorded


# -- the SQLite translation ---------------------------------------------------------------------


@pytest.mark.parametrize("statement, reason", [
    ("CREATE TABLE IF NOT EXISTS t (at DATETIME NOT NULL)", "no SQLite type for 'DATETIME'"),
    ("CREATE TABLE IF NOT EXISTS t (id INT UNSIGNED AUTO_INCREMENT)", "AUTO_INCREMENT only as"),
    ("CREATE TABLE IF NOT EXISTS t (id INT) ENGINE=MEMORY", "no SQLite form for"),
    ("DROP TABLE t", "no SQLite form for 'DROP TABLE t'"),
    ("ALTER TABLE t MODIFY COLUMN a INT", "no SQLite form for"),
])
def test_the_sqlite_translation_refuses_what_it_does_not_know(statement, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        sqlite_statements(statement)


# -- the command ------------------------------------------------------------------------------


def cli(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    """tracker-wsgi ARGS, as root or as `user`."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CRON", "TRACKER_WSGI_CONFIG")}
    command = [CLI, *args] if user is None else ["runuser", "-u", user, "--", CLI, *args]
    return subprocess.run(command, capture_output=True, text=True, env=environ)


def test_migrate_says_what_it_did_and_init_db_is_the_same(mysql_url, shared_dir):
    config = shared_dir / "tracker.toml"
    config.write_text(f'database = "{mysql_url}"\n' + own_directories(shared_dir))
    load(mysql_url, "mysql", "0.1.0")
    shown = mysql_url.replace(":tracker-test-only@", ":***@")
    done = cli("migrate", "--config", str(config))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (f"{shown}: schema migrated from version 1 to 5 (2: torrents.version: swarm views kept "
                           "by version; 3: torrents.info_sha256: the whole SHA-256 of v2 and hybrid torrents, for "
                           "the feed; 4: peers.stamp: writes ordered by their announce, stops kept as tombstones "
                           "(state 3); 5: peers.changed and swarm_counts: hosts read each other's changes, no row "
                           "every writer bumps)\n")
    for command in ("migrate", "init-db"):
        done = cli(command, "--config", str(config))
        assert (done.returncode, done.stdout, done.stderr) == (0, f"{shown}: schema at version 5: nothing to do\n", "")
    assert cli("migrate", "--quiet", "--config", str(config)).stdout == ""
    help_text = cli("migrate", "--help").stdout
    assert "Creates the tables in an empty database, or migrates those an earlier release made" in help_text

    execute(mysql_url, f"INSERT INTO schema_version (version, applied_at) VALUES ({schema.LATEST + 1}, 0)")
    done = cli("migrate", "--config", str(config))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"tracker-wsgi: {config}: database = '{shown}': the database's schema is at version {schema.LATEST + 1}, "
        f"newer than this tracker-wsgi (0.1.0, schema version {schema.LATEST}) knows: a newer release migrated it; install that release here too\n")


@pytest.mark.parametrize("release", RELEASES)
def test_only_migrate_changes_the_schema_the_other_commands_name_it(kind, url, release, shared_dir):
    """An upgrade is: back up, then migrate (README). The commands that read or write
    torrents leave an earlier release's tables as they are and say in one line what to run."""
    load(url, kind, release)
    config = shared_dir / "tracker.toml"
    config.write_text(f'database = "{url}"\n' + own_directories(shared_dir))
    if kind == "sqlite":
        give_to_www_data(shared_dir)
    before = structure(url)
    shown = url.replace(":tracker-test-only@", ":***@")
    # Tables without a version table are the first release's to the runner (schema.py).
    refusal = (f"tracker-wsgi: {config}: database = '{shown}': its tables are at schema version "
               f"{schema.FIRST_RELEASE}, this release's is {schema.LATEST}: back up the database, then run: "
               "runuser -u www-data -- tracker-wsgi migrate (README: Schema versions)\n")
    for command in (["list"], ["show", HASH_V1.hex()], ["stats"], ["stats", "--json"], ["remove", HASH_V1.hex()],
                    ["add", str(shared_dir / "new.torrent")], ["refresh"], ["force-refresh"]):
        done = cli(*command, "--config", str(config), user="www-data")
        assert (done.returncode, done.stdout, done.stderr) == (1, "", refusal), command
        assert structure(url) == before, command
    # check-config says so too, as a finding, not a problem: the daemons migrate when they start.
    done = cli("check-config", "--config", str(config), user="www-data")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(f"{config}: ok: database reachable, its tables are at schema version "
                                  f"{schema.FIRST_RELEASE}, this release's is {schema.LATEST}: back up the database")
    assert structure(url) == before
    done = cli("migrate", "--config", str(config), user="www-data")
    assert (done.returncode, done.stderr) == (0, "")
    assert f"schema migrated from version {schema.FIRST_RELEASE} to {schema.LATEST}" in done.stdout
    done = cli("list", "--config", str(config), user="www-data")
    assert (done.returncode, done.stderr) == (0, "")
    assert "Alpha" in done.stdout


def test_a_command_other_than_init_db_names_it_for_an_empty_database(mysql_url, shared_dir):
    config = shared_dir / "tracker.toml"
    config.write_text(f'database = "{mysql_url}"\n' + own_directories(shared_dir))
    shown = mysql_url.replace(":tracker-test-only@", ":***@")
    done = cli("list", "--config", str(config))
    assert (done.returncode, done.stdout, done.stderr) == (1, "", (
        f"tracker-wsgi: {config}: database = '{shown}': it has no tables yet: the tracker creates them on its "
        "first request, or run: runuser -u www-data -- tracker-wsgi init-db\n"))
    assert structure(mysql_url) == {}
    # The README's install refreshes before the tracker's first request: that creates them.
    done = cli("force-refresh", "--config", str(config), "--allow-root")
    assert (done.returncode, done.stderr) == (0, "")
    assert versions(mysql_url) == [schema.LATEST]


# -- in Apache --------------------------------------------------------------------------------


def test_the_tracker_migrates_an_earlier_releases_database_when_its_daemons_start(kind, url, shared_dir,
                                                                                 apache_factory):
    """After an upgrade, the first requests start both daemon processes at once; they migrate
    the database once between them and answer from the data it held."""
    load(url, kind, "0.1.0")
    # The release's peers announced just now, and its refresh just ran: no background refresh
    # expires them while the test reads their counts.
    now = int(time.time())
    execute(url, f"UPDATE peers SET last_seen = {now}", f"UPDATE refresh_state SET last_refresh = {now}")
    if kind == "sqlite":
        give_to_www_data(shared_dir)
    apache = apache_factory(f'database = "{url}"\nbase_url = "http://h/"\nlog_level = "info"\n',
                            site_conf="LogLevel warn wsgi:info")  # "ready" is INFO
    known = announce_query(HASH_V1, pid(5), left=10)  # first byte even: daemon process 0
    unknown = announce_query(b"\x01" * 20, pid(6))  # odd: daemon process 1
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: decode(apache.get("/tracker/announce", q)[2]), [known, unknown] * 2))
    # Of each process's two requests, the one that builds it answers; the other waits
    # DB_QUEUE_SECONDS for it, and on a loaded machine may be told `retry in` (wsgi.py).
    busy = {b"failure reason": BUSY.encode(), b"retry in": 1}
    known_answers = [a for a in (answers[0], answers[2]) if a != busy]
    unknown_answers = [a for a in (answers[1], answers[3]) if a != busy]
    assert known_answers and unknown_answers, answers
    assert all(a[b"complete"] == 1 and a[b"incomplete"] == 2 for a in known_answers), known_answers
    assert all(a == {b"failure reason": b"Requested torrent not available on this tracker."}
               for a in unknown_answers), unknown_answers
    assert versions(url) == [1, 2, 3, 4, 5]
    log = apache.error_log()
    assert len(re.findall(r"tracker_wsgi: ready:", log)) == 2, log
    assert "Traceback" not in log and "error" not in log.replace("[wsgi:error]", "").lower(), log
