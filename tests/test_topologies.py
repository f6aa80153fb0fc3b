"""The two topologies of tracker_wsgi/apache_conf.py: the generated routing against every byte
value, the shipped files as its output, and both in a real Apache (daemon mode with 1, 2 and 4
routed processes; embedded mode under the event and worker MPMs, refused under prefork)."""

from __future__ import annotations

import http.client
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote_from_bytes, urlencode

import mysql.connector
import pytest

from conftest import APACHE_DIR, announce_query, decode, ih, make_run_dir, pid, start_apache
from test_e2e_apache import BINARY, SYNC, TEXT, config_text, register
from tracker_wsgi import apache_conf, cli, devserver
from tracker_wsgi.apache_conf import UNESCAPED, routing_pattern, unescaped_byte
from tracker_wsgi.gate import DB_WAITERS
from tracker_wsgi.model import Torrent
from tracker_wsgi.protocol import parse_query
from tracker_wsgi.store import open_store
from tracker_wsgi.wsgi import BATCH_POOL_SIZE

# End to end through a real Apache: scripts/test --quick leaves this file out.
pytestmark = pytest.mark.slow

# -- the routing, in Python ---------------------------------------------------------------------


def spellings(byte: int) -> list[str]:
    """Every way a client may write this byte in a query value: %XY in each case of each hex
    letter, and the unescaped characters that decode to it."""
    upper = f"{byte:02X}"
    escaped = {"%" + a + b for a in {upper[0], upper[0].lower()} for b in {upper[1], upper[1].lower()}}
    return sorted(escaped) + [c for c in UNESCAPED if unescaped_byte(c) == byte]


def routed_group(query: str, processes: int) -> int:
    """The group tracker.conf's SetEnvIf lines choose: the last matching pattern, else 0."""
    matched = [g for g in range(1, processes) if re.search(routing_pattern(g, processes), query)]
    assert len(matched) <= 1, (query, matched)
    return matched[0] if matched else 0


@pytest.mark.parametrize("processes", range(1, apache_conf.MAX_PROCESSES + 1))
def test_every_byte_in_every_spelling_goes_to_its_group(processes):
    wrong = []
    for byte in range(256):
        for spelled in spellings(byte):
            for query in (f"info_hash={spelled}rest&peer_id=x", f"peer_id=x&port=1&info_hash={spelled}"):
                if routed_group(query, processes) != byte % processes:
                    wrong.append((byte, query))
    assert wrong == []
    # Group 0 has no pattern of its own (it is the default), but the one it would have
    # matches exactly its bytes too.
    zeros = [b for b in range(256) if re.search(routing_pattern(0, processes), f"info_hash=%{b:02x}")]
    assert zeros == [b for b in range(256) if b % processes == 0]


def test_the_first_info_hash_decides():
    one, two = "%01", "%02"
    assert routed_group(f"info_hash={one}&info_hash={two}", 2) == 1
    assert routed_group(f"info_hash={two}&info_hash={one}", 2) == 0
    assert routed_group(f"xinfo_hash={one}&info_hash={two}", 2) == 0
    assert routed_group(f"peer_id=info_hash%3D{one}&info_hash={two}", 2) == 0
    assert routed_group("peer_id=1&left=3", 4) == 0


def test_unescaped_means_what_the_tracker_decodes():
    for char in UNESCAPED:
        assert parse_query(b"info_hash=" + char.encode())[b"info_hash"] == bytes([unescaped_byte(char)]), char
    assert not set("&%#") & set(UNESCAPED)


# -- the shipped files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", apache_conf.SHIPPED)
def test_shipped_snippet_is_the_generators_output(name):
    command, generate = apache_conf.SHIPPED[name]
    shipped = (APACHE_DIR / name).read_text()
    assert shipped == generate(), (
        f"apache/{name} is not what tracker_wsgi/apache_conf.py generates; regenerate it: "
        f".venv/bin/{command} > tracker_wsgi/apache/{name}")


def test_apache_conf_command(capsys):
    assert cli.main(["apache-conf", "--processes", "4"]) == 0
    assert capsys.readouterr().out == apache_conf.daemon_conf(4)
    assert cli.main(["apache-conf", "--embedded-server", "--processes", "3", "--threads", "20"]) == 0
    out = capsys.readouterr().out
    assert out == apache_conf.embedded_server_conf(3, 20)
    assert "MaxRequestWorkers       60" in out and "ServerLimit             3" in out
    assert cli.main(["apache-conf", "--processes", "3", "--site", "two"]) == 0
    out = capsys.readouterr().out
    assert out == apache_conf.daemon_conf(3, site="two") and "WSGIDaemonProcess tracker_wsgi_two_2 " in out
    for argv, message in ((["--processes", "17"], "--processes 17: choose 1 to 16"),
                          (["--site", "Two"], "--site 'Two': a lower-case letter"),
                          (["--embedded", "--site", "two"], "--site: daemon mode only"),
                          (["--processes", "0"], "--processes 0: choose 1 to 16"),
                          (["--embedded", "--processes", "2"], "belong to --embedded-server"),
                          (["--threads", "8"], "only with --embedded-server")):
        assert cli.main(["apache-conf", *argv]) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and message in captured.err and len(captured.err.splitlines()) == 1


# -- daemon mode in a real Apache -----------------------------------------------------------------

# A tracker.wsgi that answers with the name of the daemon process group that ran it: the
# routing is Apache's and mod_wsgi's alone, the app has no part in it.
PROCESS_GROUP_WSGI = """\
def application(environ, start_response):
    body = environ["mod_wsgi.process_group"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def apache_dir_with(root: Path, tracker_conf: str | None = None, wsgi: str | None = None,
                    embedded_server_conf: str | None = None) -> Path:
    """A copy of apache/ with tracker.conf, tracker.wsgi and embedded-server.conf replaced
    by those given."""
    copy = root / "apache"
    shutil.copytree(APACHE_DIR, copy, symlinks=False)
    for name, text in (("tracker.conf", tracker_conf), ("tracker.wsgi", wsgi),
                       ("embedded-server.conf", embedded_server_conf)):
        if text is not None:
            (copy / name).write_text(text)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


@pytest.fixture
def apaches():
    started = []
    yield started
    for apache in started:
        apache.stop()


def test_apache_accepts_the_daemon_conf_for_every_number_of_processes(shared_dir):
    """Apache parses each generated file, its expressions and regexes compiled (apache2 -t);
    the routing itself is tried in a running Apache below."""
    directory, config_path = make_run_dir(shared_dir, "syntax", "")
    conf_dir = apache_dir_with(directory, "")
    conf = directory / "httpd.conf"
    conf.write_text(devserver.httpd_conf(directory, 1, config_path, conf_dir))
    refused = []
    for processes in range(1, apache_conf.MAX_PROCESSES + 1):
        (conf_dir / "tracker.conf").write_text(apache_conf.daemon_conf(processes))
        check = subprocess.run([devserver.APACHE_BIN, "-t", "-f", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            refused.append((processes, check.stderr.strip()))
    assert refused == []


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_generated_daemon_conf_routes_every_byte_in_real_apache(processes, shared_dir, apaches):
    directory, config_path = make_run_dir(shared_dir, f"routing-{processes}", "")
    conf_dir = apache_dir_with(directory, apache_conf.daemon_conf(processes), PROCESS_GROUP_WSGI)
    apache = start_apache(directory, config_path, apache_dir=conf_dir)
    apaches.append(apache)
    connection = http.client.HTTPConnection("127.0.0.1", apache.port, timeout=30)
    wrong = []
    for byte in range(256):
        want = f"tracker_wsgi_{byte % processes}".encode()
        for spelled in spellings(byte):
            connection.request("GET", f"/tracker/announce?info_hash={spelled}x&peer_id=p&port=1")
            response = connection.getresponse()
            body = response.read()
            if (response.status, body) != (200, want):
                wrong.append((spelled, response.status, body[:80]))
    connection.close()
    assert wrong == [], apache.error_log()[-2000:]


def test_generated_daemon_conf_every_process_answers_the_tracker(sqlite_url, shared_dir, apaches):
    processes = 4
    # ih(n) starts with a NUL byte: torrents whose first byte is each group's own.
    hashes = {g: bytes([0x40 + g]) + ih(g)[1:] for g in range(processes)}
    store = open_store(sqlite_url, 2700)
    store.create_tables()
    for g, info_hash in hashes.items():
        assert store.register(Torrent(info_hash, None, f"group-{g}", 1), 1)
    store.close()
    register(sqlite_url)  # hands the files to www-data
    directory, config_path = make_run_dir(shared_dir, "every-process", config_text(sqlite_url, log_level='"info"'))
    conf_dir = apache_dir_with(directory, apache_conf.daemon_conf(processes))
    apache = start_apache(directory, config_path, site_conf="LogLevel warn wsgi:info", apache_dir=conf_dir)
    apaches.append(apache)
    for g, info_hash in hashes.items():
        for peer in (1, 2):
            status, headers, body = apache.get("/tracker/announce", announce_query(info_hash, pid(peer), 7000 + peer))
            answer = decode(body)
            assert status == 200 and b"failure reason" not in answer, answer
            assert headers["Content-Type"] == BINARY
        assert answer[b"incomplete"] == 2, (g, answer)  # both peers met in the one process
    # Each process builds the tracker on its first request, and says so: every one answered.
    pids = set(re.findall(r"\[pid (\d+):[^\n]*tracker_wsgi: ready", apache.error_log()))
    assert len(pids) == processes, apache.error_log()


# -- embedded mode in a real Apache ---------------------------------------------------------------

# The shipped snippets close each connection under /tracker after one answer (slow readers,
# issue 17); tests that reach one child through one keep-alive connection take that back. An
# <If> is merged after every <Location>, so its UnsetEnv undoes the snippet's SetEnv.
KEEP_ALIVE = '<If "true">\n    UnsetEnv nokeepalive\n</If>\n'


@pytest.mark.parametrize("mpm", ["event", "worker"])
def test_embedded_mode_answers_bencoded_in_apaches_own_children(mpm, sqlite_url, shared_dir, apaches):
    register(sqlite_url, 1)
    directory, config_path = make_run_dir(shared_dir, f"embedded-{mpm}", config_text(sqlite_url, sync_interval=str(SYNC)))
    apache = start_apache(directory, config_path, topology="embedded", mpm=mpm)
    apaches.append(apache)

    status, headers, body = apache.get("/tracker/announce", announce_query(ih(1), pid(1), 7001, left=0))
    assert (status, headers["Content-Type"]) == (200, BINARY)
    assert decode(body)[b"complete"] == 1
    # The scrape may reach the other child, which learns of the seed at its next sync.
    deadline = time.monotonic() + 2 * SYNC + 2
    while True:
        status, headers, body = apache.get("/tracker/scrape", urlencode({"info_hash": ih(1)}))
        assert (status, headers["Content-Type"]) == (200, TEXT)
        if decode(body)[b"files"][ih(1)][b"complete"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert decode(body)[b"files"][ih(1)][b"complete"] == 1
    # Apache's own 404 under /tracker (a path mod_wsgi cannot map): the bencoded ErrorDocument.
    status, headers, body = apache.get("/tracker/" + "a" * 5000)
    assert status == 404 and b"failure reason" in decode(body), body[:200]
    status, _, body = apache.get("/tracker/announce", "x" * 10, method="POST", headers={"Content-Length": "5000"})
    assert status == 413 and b"failure reason" in decode(body), body[:200]
    assert apache.get("/tracker/health")[0] == 200  # from this host

    # No mod_wsgi daemon process: the tracker ran in the MPM's children, the pool's size.
    children = subprocess.run(["pgrep", "-P", str(apache.process.pid), "-a"], capture_output=True,
                              text=True).stdout.splitlines()
    assert len(children) == apache_conf.EMBEDDED_PROCESSES, children
    assert not any("(wsgi:" in line for line in children), children
    assert "WSGIRestrictEmbedded" not in (directory / "httpd.conf").read_text()


def test_embedded_mode_is_refused_under_prefork(shared_dir):
    directory, config_path = make_run_dir(shared_dir, "prefork", "")
    devserver.prepare_run_dir(directory)
    conf = directory / "httpd.conf"
    conf.write_text(devserver.httpd_conf(directory, 1, config_path, APACHE_DIR, topology="embedded", mpm="prefork"))
    check = subprocess.run([devserver.APACHE_BIN, "-t", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode != 0
    assert "tracker_wsgi: embedded mode needs the event or worker MPM" in check.stderr, check.stderr
    # The same snippet passes under the event MPM: the refusal is prefork's alone.
    conf.write_text(devserver.httpd_conf(directory, 1, config_path, APACHE_DIR, topology="embedded"))
    check = subprocess.run([devserver.APACHE_BIN, "-t", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr



def test_embedded_children_hand_out_each_others_peers_within_two_sync_intervals(sqlite_url, shared_dir, apaches):
    """Each child keeps its own view of a swarm, as separate hosts do: a peer announced to one
    child is in the other child's answers within 2 x sync_interval (measured: 2.99-3.07 s with
    sync_interval 3, in four runs)."""
    sync = 3
    register(sqlite_url, 1, 2)
    directory, config_path = make_run_dir(shared_dir, "embedded-sync", config_text(sqlite_url, sync_interval=str(sync)))
    # Which child answers each keep-alive connection (it stays with the child that accepted
    # it): Apache's access log names the child's pid and the client's port.
    access_log = directory / "access.log"
    site = KEEP_ALIVE + f'LogFormat "%P %{{remote}}p" child\nCustomLog "{access_log}" child\n'
    apache = start_apache(directory, config_path, site, topology="embedded")
    apaches.append(apache)

    def announce_on(connection, torrent: int, peer: int, port: int, **extra) -> set[int]:
        """The ports of the peers in the answer (all are 127.0.0.1)."""
        connection.request("GET", "/tracker/announce?" + announce_query(ih(torrent), pid(peer), port, **extra))
        answer = decode(connection.getresponse().read())
        assert b"failure reason" not in answer, answer
        peers = answer[b"peers"]
        return {int.from_bytes(peers[i + 4:i + 6], "big") for i in range(0, len(peers), 6)}

    # An idle Apache may hand every new connection to the same child: open connections (a
    # scrape on each) until two children have answered.
    connections: list[http.client.HTTPConnection] = []
    child_of: dict[int, str] = {}  # client port -> child pid
    while len(set(child_of.values())) < apache_conf.EMBEDDED_PROCESSES and len(connections) < 400:
        connection = http.client.HTTPConnection("127.0.0.1", apache.port, timeout=30)
        connection.request("GET", "/tracker/scrape?info_hash=" + quote_from_bytes(ih(1)))
        connection.getresponse().read()
        connections.append(connection)
        # Apache logs each answer just after sending it: a line may come a moment late.
        for line in access_log.read_text().splitlines() if access_log.exists() else []:
            child, port = line.split()
            child_of[int(port)] = child
    children = sorted(set(child_of.values()))
    assert len(children) == apache_conf.EMBEDDED_PROCESSES, f"{len(connections)} connections, all to {children}"
    by_child = {child_of[c.sock.getsockname()[1]]: c for c in connections if c.sock.getsockname()[1] in child_of}
    first, other = by_child[children[0]], by_child[children[1]]

    announce_on(first, 2, 1, 9001, left=0)
    announced = time.monotonic()
    while 9001 not in announce_on(other, 2, 2, 9002):
        assert time.monotonic() - announced < 2 * sync + 0.5, "the other child never handed out the peer"
        time.sleep(0.1)
    for connection in connections:
        connection.close()


@pytest.fixture
def private_mysql_account():
    """A database and a MariaDB account of this test's alone (on the shared server), so that
    the server's connections of that user are the tracker's. Yields (url, user)."""
    name = f"tracker_conns_{secrets.token_hex(4)}"
    admin = mysql.connector.connect(user="root", host="127.0.0.1", port=3306)
    cursor = admin.cursor()
    cursor.execute(f"CREATE DATABASE {name}")
    cursor.execute(f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY 'conns-only'")
    cursor.execute(f"GRANT ALL ON {name}.* TO '{name}'@'127.0.0.1'")
    yield f"mysql://{name}:conns-only@127.0.0.1:3306/{name}", name
    cursor.execute(f"DROP USER IF EXISTS '{name}'@'127.0.0.1'")
    cursor.execute(f"DROP DATABASE IF EXISTS {name}")
    admin.close()


def test_embedded_database_connections_stay_bounded_under_a_burst(private_mysql_account, shared_dir, apaches):
    """Issue 13: under the event MPM's defaults a connection per Apache thread reached
    MariaDB's max_connections. Now each child opens at most its two stores' pools (8 for
    requests, 2 for the flush thread), whatever its threads: 128 clients at once, each
    announcing new peers (each one a store call: whose peer_id it is), never make the
    tracker's account hold more than ServerLimit x 10 connections."""
    url, user = private_mysql_account
    register(url, 1, 2, 3, 4)
    config = config_text(url, sync_interval="1", peers_per_address="1000000")
    directory, config_path = make_run_dir(shared_dir, "embedded-connections", config)
    apache = start_apache(directory, config_path, topology="embedded")
    apaches.append(apache)

    watcher = mysql.connector.connect(user="root", host="127.0.0.1", port=3306)
    watcher.autocommit = True

    def tracker_connections() -> int:
        cursor = watcher.cursor()
        cursor.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
        return cursor.fetchone()[0]

    counts: list[int] = []
    burst_over = threading.Event()

    def watch() -> None:
        while not burst_over.is_set():
            counts.append(tracker_connections())
            time.sleep(0.01)

    clients, announces_each = 128, 12
    start = threading.Barrier(clients)

    def client(number: int) -> list[bytes]:
        """New peers over one keep-alive connection; returns the answers that were not successes."""
        connection = http.client.HTTPConnection("127.0.0.1", apache.port, timeout=60)
        start.wait()
        refused = []
        for n in range(announces_each):
            peer = number * 100 + n
            connection.request("GET", "/tracker/announce?" + announce_query(
                ih(peer % 4 + 1), pid(peer), 10000 + peer, event="started", numwant=5))
            body = connection.getresponse().read()
            if b"failure reason" in decode(body):  # every answer bencoded: decode raises if not
                refused.append(body)
        connection.close()
        return refused

    watching = threading.Thread(target=watch)
    watching.start()
    try:
        with ThreadPoolExecutor(clients) as pool:
            refused = [body for bodies in pool.map(client, range(clients)) for body in bodies]
    finally:
        burst_over.set()
        watching.join()
    counts.append(tracker_connections())  # pools keep their connections open: the last count too
    watcher.close()

    bound = apache_conf.EMBEDDED_PROCESSES * (DB_WAITERS + BATCH_POOL_SIZE)
    assert max(counts) <= bound, (max(counts), bound)
    # The store was reached from both children (their pools hold connections), and most new
    # peers were taken (the rest got `retry in` while the database was busy: never HTML).
    assert max(counts) >= apache_conf.EMBEDDED_PROCESSES, counts[-10:]
    assert len(refused) < clients * announces_each / 2, (len(refused), refused[:3])
    assert all(decode(body).get(b"retry in") for body in refused), refused[:3]


TWO_SITES = """\
<VirtualHost *>
    ServerName {site}.example
    Define TRACKER_WSGI_VENV "{venv}"
    Define TRACKER_WSGI_APACHE "{apache_dir}"
    Define TRACKER_WSGI_CONFIG "{config}"
    Include "{apache_dir}/{site}.conf"
</VirtualHost>
"""


def two_sites(root: Path, second_conf: str) -> tuple[Path, str]:
    """A copy of apache/ with one.conf (daemon_conf(site="one")) and two.conf (second_conf),
    and the <VirtualHost>s of sites one and two, each with its own config file."""
    conf_dir = apache_dir_with(root)
    (conf_dir / "one.conf").write_text(apache_conf.daemon_conf(site="one"))
    (conf_dir / "two.conf").write_text(second_conf)
    hosts = "".join(TWO_SITES.format(site=site, venv=sys.prefix, config=root / f"{site}.toml", apache_dir=conf_dir)
                    for site in ("one", "two"))
    return conf_dir, hosts


def test_two_tracker_sites_need_their_own_daemon_names(shared_dir):
    """Daemon process names are server-wide in mod_wsgi: a second site whose file has the
    default names (those of the main server's tracker.conf here) or the first site's makes
    Apache refuse its config; one generated with its own --site passes."""
    directory, config_path = make_run_dir(shared_dir, "two-sites-syntax", "")
    conf = directory / "httpd.conf"
    for n, (second, passes) in enumerate([(apache_conf.daemon_conf(), False),
                                          (apache_conf.daemon_conf(site="one"), False),
                                          (apache_conf.daemon_conf(site="two"), True)]):
        (directory / str(n)).mkdir()
        conf_dir, hosts = two_sites(directory / str(n), second)
        conf.write_text(devserver.httpd_conf(directory, 1, config_path, conf_dir, site_conf=hosts))
        check = subprocess.run([devserver.APACHE_BIN, "-t", "-f", str(conf)], capture_output=True, text=True)
        if passes:
            assert check.returncode == 0, check.stderr
        else:
            assert check.returncode != 0 and "duplicates previous WSGI daemon definition" in check.stderr, check.stderr


def test_two_tracker_sites_in_one_apache_each_answer_from_their_own_config(shared_dir, apaches):
    """Sites one and two, each with its own database (torrent 1 registered in one's, torrent 2
    in two's) and daemons of its own name, in one Apache: each answers its own torrent and
    refuses the other's (a daemon builds one tracker, from its first request's config: had
    the sites shared daemons, one would answer with the other's)."""
    directory, config_path = make_run_dir(shared_dir, "two-sites", "")
    for site, torrent in (("one", 1), ("two", 2)):
        site_dir = directory / site
        for sub in ("db", "torrents", "output", "swarms"):
            (site_dir / sub).mkdir(parents=True)
            (site_dir / sub).chmod(0o777)
        site_dir.chmod(0o755)
        url = f"sqlite:///{site_dir}/db/tracker.sqlite"
        register(url, torrent)
        (directory / f"{site}.toml").write_text(config_text(
            url, torrent_dir=f'"{site_dir}/torrents"', output_dir=f'"{site_dir}/output"',
            swarm_dir=f'"{site_dir}/swarms"'))
        (directory / f"{site}.toml").chmod(0o644)
    conf_dir, hosts = two_sites(directory, apache_conf.daemon_conf(site="two"))
    apache = start_apache(directory, config_path, site_conf=hosts, apache_dir=conf_dir)
    apaches.append(apache)
    for site, own, other in (("one", 1, 2), ("two", 2, 1)):
        host = {"Host": f"{site}.example"}
        status, _, body = apache.get("/tracker/announce", announce_query(ih(own), pid(own), 7000), headers=host)
        assert status == 200 and b"failure reason" not in decode(body), (site, body)
        status, _, body = apache.get("/tracker/announce", announce_query(ih(other), pid(own), 7000), headers=host)
        assert status == 200 and b"failure reason" in decode(body), (site, body)
    # Both sites' daemons and the main server's (ps shows their names cut to argv[0]'s length).
    children = subprocess.run(["pgrep", "-a", "-P", str(apache.process.pid)], capture_output=True,
                              text=True).stdout.splitlines()
    assert sum("(wsgi:" in line for line in children) == 3 * apache_conf.DEFAULT_PROCESSES, children
