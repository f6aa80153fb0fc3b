"""/tracker/metrics and /tracker/health through the real Apache and the shipped snippet: two
daemon processes (apache/tracker.conf sends an info hash whose first byte is odd to
tracker_wsgi_1, the rest to tracker_wsgi_0), one scrape that sums both, parsed with
Prometheus's own parser; health 200 and 503; and the snippet's Require."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from conftest import APACHE_DIR, Apache, announce_query, decode, free_port, give_to_www_data, own_directories, pid
from test_e2e_apache import APACHE_LOG_INFO, PrivateMariadb, config_text, reachable
from tracker_wsgi import devserver
from tracker_wsgi.metrics import DIRECTORY_PREFIX
from tracker_wsgi.model import Torrent
from tracker_wsgi.protocol import BAD_PORT, FULL_SCRAPE_DISABLED, UNKNOWN_TORRENT
from tracker_wsgi.store import open_store

# End to end through a real Apache: scripts/test --quick leaves this file out.
pytestmark = pytest.mark.slow

ODD, EVEN = b"\x01" + b"o" * 19, b"\x02" + b"e" * 19  # tracker_wsgi_1's swarm, tracker_wsgi_0's
UNKNOWN_ODD, UNKNOWN_EVEN = b"\x03" * 20, b"\x04" * 20
DAEMON = b"(wsgi:"  # display-name=%{GROUP}: the daemons' command line


def register(url: str, *hashes: bytes) -> None:
    store = open_store(url, 2700)
    store.create_tables()
    for n, info_hash in enumerate(hashes):
        assert store.register(Torrent(info_hash, None, f"torrent-{n}", 1000), int(time.time()))
    store.close()
    if url.startswith("sqlite:///"):
        give_to_www_data(Path(url.removeprefix("sqlite://")).parent)


def announce(apache: Apache, info_hash: bytes, peer: int, **extra) -> dict:
    status, _, body = apache.get("/tracker/announce", announce_query(info_hash, pid(peer), 7000 + peer, **extra))
    assert status == 200, (status, body)
    return decode(body)


def scrape_metrics(apache: Apache) -> dict[tuple[str, tuple], float]:
    """Every sample of /tracker/metrics as {(sample name, sorted labels): value}."""
    status, headers, body = apache.get("/tracker/metrics")
    assert status == 200, (status, body)
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def wait_for(apache: Apache, expected: dict[tuple[str, tuple], float], seconds: float = 15) -> dict:
    """Scrape until every expected sample has its value (each process folds its counts every
    sync_interval); returns the last scrape."""
    deadline = time.monotonic() + seconds
    while True:
        samples = scrape_metrics(apache)
        if all(samples.get(key) == value for key, value in expected.items()):
            return samples
        if time.monotonic() > deadline:
            wrong = {key: (samples.get(key), value) for key, value in expected.items() if samples.get(key) != value}
            raise AssertionError(f"(got, expected): {wrong}")
        time.sleep(0.2)


def health(apache: Apache) -> tuple[int, dict]:
    status, headers, body = apache.get("/tracker/health")
    assert headers["Content-Type"] == "application/json", (status, body)
    return status, json.loads(body)


def daemons(apache: Apache) -> list[int]:
    """The pids of this Apache's mod_wsgi daemon processes."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rpartition(b")")[2].split()[1]) == apache.process.pid and cmdline.startswith(DAEMON):
                found.append(int(entry))
    return sorted(found)


def wait_for_port(apache: Apache) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", apache.port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline and apache.process.poll() is None, apache.error_log()
            time.sleep(0.1)


def key(name: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted(labels.items()))


ANNOUNCES_OK = key("tracker_wsgi_announces_total", outcome="ok")


def test_one_scrape_sums_both_daemon_processes(sqlite_url, apache_factory):
    register(sqlite_url, ODD, EVEN)
    apache = apache_factory(config_text(sqlite_url, sync_interval="1"))
    for peer in range(1, 4):
        announce(apache, ODD, peer)
    for peer in range(1, 6):
        announce(apache, EVEN, peer)
    for info_hash in (UNKNOWN_ODD, UNKNOWN_EVEN):
        assert decode(apache.get("/tracker/announce", announce_query(info_hash, pid(1), 7001))[2]) == {
            b"failure reason": UNKNOWN_TORRENT.encode()}
    assert decode(apache.get("/tracker/announce", announce_query(ODD, pid(9), 0))[2]) == {  # tracker_wsgi_1
        b"failure reason": BAD_PORT.encode()}
    for info_hash in (ODD, EVEN):
        assert apache.get("/tracker/scrape", urlencode({"info_hash": info_hash}))[0] == 200
    assert decode(apache.get("/tracker/scrape")[2]) == {b"failure reason": FULL_SCRAPE_DISABLED.encode()}

    samples = wait_for(apache, {
        ANNOUNCES_OK: 8,
        key("tracker_wsgi_announces_total", outcome="refused"): 3,
        key("tracker_wsgi_scrapes_total", outcome="ok"): 2,
        key("tracker_wsgi_scrapes_total", outcome="refused"): 1,
        # Short codes, not the sentences the clients read (issue 19).
        key("tracker_wsgi_failure_reasons_total", reason="unknown_torrent"): 2,
        key("tracker_wsgi_failure_reasons_total", reason="bad_port"): 1,
        key("tracker_wsgi_failure_reasons_total", reason="full_scrape_disabled"): 1,
        key("tracker_wsgi_failure_reasons_total", reason="peer_conflict"): 0,
        key("tracker_wsgi_processes"): 2,
        key("tracker_wsgi_swarms_held"): 2,
        key("tracker_wsgi_peers_held"): 8,
        key("tracker_wsgi_flush_backlog"): 0,
        key("tracker_wsgi_flush_failing"): 0,
        key("tracker_wsgi_database_errors_total"): 0,
        key("tracker_wsgi_database_conflicts_total"): 0,
    })
    assert samples[key("tracker_wsgi_flush_seconds_count")] >= 1  # the host writer's batches
    assert not any(name.endswith("_created") for name, _ in samples)

    # Each daemon process counted its own: 3 and 5, in files of its own, summed by the scrape.
    directory = Path(f"/tmp/{DIRECTORY_PREFIX}{apache.process.pid}")
    pids = daemons(apache)
    assert len(pids) == 2
    assert sorted(_announces_ok(directory, daemon) for daemon in pids) == [3, 5]

    # A daemon process that restarts: its counts stay in the sums, its gauges go with it.
    odd_daemon = next(daemon for daemon in pids if _announces_ok(directory, daemon) == 3)
    os.kill(odd_daemon, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while len(set(daemons(apache)) - {odd_daemon}) < 2:
        assert time.monotonic() < deadline, apache.error_log()
        time.sleep(0.2)
    # The new tracker_wsgi_1 counts among the processes from its start, before any request.
    # What the host holds is the host's, whichever process reports it.
    wait_for(apache, {ANNOUNCES_OK: 8, key("tracker_wsgi_processes"): 2, key("tracker_wsgi_swarms_held"): 2,
                      key("tracker_wsgi_peers_held"): 8})
    announce(apache, ODD, 1)  # the new tracker_wsgi_1 answers from the host state at once
    wait_for(apache, {ANNOUNCES_OK: 9, key("tracker_wsgi_processes"): 2, key("tracker_wsgi_swarms_held"): 2})


@pytest.mark.parametrize("topology", ["daemon", "embedded"])
def test_health_counts_every_process_before_it_has_had_a_request(sqlite_url, apache_factory, topology):
    """Issue 19: health said `processes: 1` until the second daemon had had a request. Each
    process counts itself as it starts: mod_wsgi preloads tracker.wsgi (daemon mode's
    WSGIImportScript; embedded mode's WSGIScriptAlias with process-group and
    application-group), and the Application made then starts the metrics."""
    register(sqlite_url, ODD)
    apache = apache_factory(config_text(sqlite_url, log_level='"info"'), site_conf=APACHE_LOG_INFO, topology=topology)
    # Before any request: each process has made its metrics files (both topologies ship 2).
    directory = Path(f"/tmp/{DIRECTORY_PREFIX}{apache.process.pid}")
    deadline = time.monotonic() + 15
    while len(list(directory.glob("gauge_livesum_*.db"))) < 2:
        assert time.monotonic() < deadline, apache.error_log()
        time.sleep(0.1)
    assert "tracker_wsgi: ready" not in apache.error_log()  # no tracker built yet
    status, report = health(apache)  # one request: one process builds its tracker
    assert (status, report["processes"]) == (200, 2), report
    ready = [line for line in apache.error_log().splitlines() if "tracker_wsgi: ready" in line]
    assert len(ready) == 1, apache.error_log()


def test_an_unknown_path_is_the_same_bencoded_404_everywhere(sqlite_url, apache_factory):
    """Issue 19: /tracker/tracker.wsgi answered 200 where other unknown paths were 404,
    with the same body. Every unknown path under /tracker is now that 404."""
    register(sqlite_url, ODD)
    apache = apache_factory(config_text(sqlite_url))
    expected = (APACHE_DIR / "errors" / "unknown-path").read_bytes()
    for path in ("/tracker/tracker.wsgi", "/tracker/nowhere", "/tracker/announce.php", "/tracker/scrape/x"):
        status, headers, body = apache.get(path)
        assert (status, body) == (404, expected), (path, status, body)
        assert headers["Content-Type"] == "text/plain; charset=ISO-8859-1", path


def _announces_ok(directory: Path, daemon: int) -> float:
    families = MultiProcessCollector.merge([str(directory / f"counter_{daemon}.db")])
    return sum(s.value for f in families for s in f.samples
               if s.name == "tracker_wsgi_announces_total" and s.labels == {"outcome": "ok"})


def test_health_is_200_with_the_database_and_503_without(apache_factory):
    server = PrivateMariadb()
    try:
        server.start()
        url = server.tracker_database(password="pw")
        tcp = {"user": "tracker", "password": "pw", "host": "127.0.0.1", "port": server.port, "database": "tracker"}
        register(url, ODD, EVEN)
        # A refresh just ran (cron's): no background refresh runs during the test.
        store = open_store(url, 2700)
        refreshed = int(time.time())
        assert store.take_refresh_lock("test", refreshed, 600)
        store.release_refresh_lock("test", finished_at=refreshed)
        store.close()
        apache = apache_factory(config_text(url, sync_interval="1"))
        announce(apache, ODD, 1)
        announce(apache, EVEN, 1)

        deadline = time.monotonic() + 10
        while (report := health(apache)[1])["flush_backlog"]:  # both written
            assert time.monotonic() < deadline, report
            time.sleep(0.2)
        status, report = health(apache)
        assert status == 200, report
        assert report["status"] == "ok" and report["database"] == "ok" and report["problems"] == []
        assert report["processes"] == 2
        assert report["last_refresh"] == refreshed and report["warnings"] == []

        server.stop()
        started = time.monotonic()
        status, report = health(apache)
        assert time.monotonic() - started < 3
        assert status == 503, report
        assert report["status"] == "failing" and report["database"] == "unreachable"
        assert "Can't connect to MySQL server" in report["problems"][0]

        # The peers held go on being answered from the host state; the writer's batches fail,
        # and health says so.
        assert b"interval" in announce(apache, ODD, 1, left=50)
        assert b"interval" in announce(apache, EVEN, 1, left=50)
        deadline = time.monotonic() + 10
        while health(apache)[1]["flush_failing_processes"] < 1:
            assert time.monotonic() < deadline, health(apache)
            time.sleep(0.2)
        status, report = health(apache)
        assert status == 503 and report["flush_backlog"] == 2
        assert any("writing announces to the database fails in 1 process" in p for p in report["problems"])
        failed = scrape_metrics(apache)
        assert failed[key("tracker_wsgi_database_errors_total")] >= 2  # a probe, the writer's batch
        assert failed[key("tracker_wsgi_flush_failures_total")] >= 1
        assert failed[key("tracker_wsgi_flush_failing")] == 1  # the host's one writer

        server.start()
        deadline = time.monotonic() + 10
        while not reachable(tcp):
            assert time.monotonic() < deadline, "private MariaDB did not come back"
            time.sleep(0.1)
        deadline = time.monotonic() + 30  # the gate leaves the database alone for up to 4 s
        while health(apache)[0] != 200:
            assert time.monotonic() < deadline, health(apache)
            time.sleep(0.5)
        recovered = wait_for(apache, {key("tracker_wsgi_flush_failing"): 0, key("tracker_wsgi_flush_backlog"): 0})
        assert recovered[key("tracker_wsgi_database_reconnects_total")] >= 1
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        server.remove()


def test_health_and_metrics_answer_only_the_hosts_require_names(sqlite_url, shared_dir):
    """The shipped `Require local` lets every loopback address in; the same block with
    `Require ip 127.0.0.1` (as an admin names a monitoring host) shows it refuses the rest,
    and only for health and metrics."""
    register(sqlite_url, ODD)
    apache_dir = shared_dir / "apache-copy"
    shutil.copytree(APACHE_DIR, apache_dir)
    conf = apache_dir / "tracker.conf"
    shipped = conf.read_text()
    assert shipped.count("    Require local\n") == 1
    conf.write_text(shipped.replace("    Require local\n", "    Require ip 127.0.0.1\n"))
    run_dir = shared_dir / "run"
    devserver.prepare_run_dir(run_dir)
    config = shared_dir / "tracker.toml"
    config.write_text(config_text(sqlite_url) + own_directories(shared_dir))
    config.chmod(0o644)
    port = free_port()
    apache = Apache(port, run_dir, devserver.start(run_dir, devserver.httpd_conf(run_dir, port, config, apache_dir)))
    try:
        wait_for_port(apache)

        def get(path: str, source: str) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
            try:
                connection.request("GET", path)
                return connection.getresponse().status
            finally:
                connection.close()

        announce_path = "/tracker/announce?" + announce_query(ODD, pid(1), 7001)
        for path in ("/tracker/health", "/tracker/metrics", "/tracker//metrics"):
            assert get(path, "127.0.0.1") == 200, path
            assert get(path, "127.0.0.2") == 403, path
        assert get(announce_path, "127.0.0.2") == 200  # clients are not touched
    finally:
        apache.stop()


# Embedded mode: the tracker in Apache's own children (the other topology mod_wsgi offers),
# prefork, each child gone after one connection. Every announce is then answered by a
# process of its own that exits after it: the sums must still hold every one.
EMBEDDED_CONF = """\
ServerName localhost
ServerRoot "{run_dir}"
Listen 127.0.0.1:{port}
PidFile "{run_dir}/httpd.pid"
ErrorLog "{run_dir}/error.log"
LogLevel warn wsgi:info
User www-data
Group www-data
LoadModule mpm_prefork_module /usr/lib/apache2/modules/mod_mpm_prefork.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule authz_host_module /usr/lib/apache2/modules/mod_authz_host.so
LoadModule env_module /usr/lib/apache2/modules/mod_env.so
LoadModule wsgi_module "{wsgi}"
StartServers 3
MinSpareServers 3
MaxSpareServers 6
MaxConnectionsPerChild 1
WSGIPythonHome "{venv}"
WSGIScriptAlias /tracker "{apache_dir}/tracker.wsgi" application-group=%{{GLOBAL}}
<Directory "{apache_dir}">
    Require all granted
</Directory>
<Location /tracker>
    SetEnv tracker_wsgi.config "{config}"
</Location>
<LocationMatch "^/tracker/+(health|metrics)">
    Require local
</LocationMatch>
"""


def test_embedded_mode_children_that_come_and_go_are_summed(sqlite_url, shared_dir):
    register(sqlite_url, ODD, EVEN)
    store = open_store(sqlite_url, 2700)
    now = int(time.time())
    assert store.take_refresh_lock("test", now, 600)  # no refresh threads in the children
    store.release_refresh_lock("test", finished_at=now)
    store.close()
    run_dir = shared_dir / "embedded"
    devserver.prepare_run_dir(run_dir)
    config = shared_dir / "tracker.toml"
    config.write_text(config_text(sqlite_url, sync_interval="1", log_level='"info"')  # "ready" is INFO
                      + own_directories(shared_dir))
    config.chmod(0o644)
    port = free_port()
    conf = EMBEDDED_CONF.format(run_dir=run_dir, port=port, wsgi=devserver.wsgi_module(), venv=sys.prefix,
                                apache_dir=APACHE_DIR, config=config)
    (run_dir / "httpd.conf").write_text(conf)
    # A session of its own: prefork's parent stops by signalling its whole process group.
    process = subprocess.Popen([devserver.APACHE_BIN, "-f", str(run_dir / "httpd.conf"), "-DFOREGROUND"],
                               start_new_session=True, env={**os.environ, "LANG": "C.UTF-8"})
    apache = Apache(port, run_dir, process)
    try:
        wait_for_port(apache)
        for peer in range(1, 5):
            announce(apache, ODD if peer % 2 else EVEN, peer)
        samples = wait_for(apache, {ANNOUNCES_OK: 4, key("tracker_wsgi_processes"): 1})
        assert samples[key("tracker_wsgi_swarms_held")] == 2  # the host's, told by the child alive
        ready = [line for line in apache.error_log().splitlines() if "tracker_wsgi: ready" in line]
        assert len(ready) >= 5, apache.error_log()  # a process of its own for each request
        # What the children that are gone counted is in the archive, their own files are gone.
        directory = Path(f"/tmp/{DIRECTORY_PREFIX}{apache.process.pid}")
        left = {path.name for path in directory.glob("counter_*.db")}
        assert "counter_archive.db" in left and len(left) <= 2, left
    finally:
        apache.stop()
