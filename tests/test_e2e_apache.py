"""End to end: the shipped Apache snippet (apache/tracker.conf) in a real Apache, mod_wsgi in
daemon mode, the tracker on a real MariaDB or SQLite. Every request here goes over HTTP to
Apache; nothing calls the WSGI application directly."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote_plus, urlencode

import mysql.connector
import pytest

from conftest import announce_query, decode, free_port, ih, pid, wait_until
from tracker_wsgi import apache_conf, devserver
from tracker_wsgi.model import Torrent
from tracker_wsgi.protocol import (
    BAD_INFO_HASH,
    BAD_PORT,
    FULL_SCRAPE_DISABLED,
    METHOD_NOT_ALLOWED,
    PEER_CONFLICT,
    REPEATED_PARAMETER,
    SERVER_FAULT,
    UNKNOWN_PATH,
    UNKNOWN_TORRENT,
)
from tracker_wsgi.refusals import DATABASE_UNAVAILABLE
from tracker_wsgi.store import open_store

# End to end through a real Apache: scripts/test --quick leaves this file out.
pytestmark = pytest.mark.slow

NOW = int(time.time())
LOCALHOST = bytes([127, 0, 0, 1])
SYNC = 1  # sync_interval of the tests that watch two hosts share a database
BINARY = "application/octet-stream"
TEXT = "text/plain; charset=ISO-8859-1"
BENCODED_TYPES = (BINARY, TEXT)
SERVER_FAULT_ANSWER = {b"failure reason": SERVER_FAULT.encode(), b"retry in": 1}
# Whatever request meets a database outage hears this (issue 19: one cause, one wording).
DATABASE_ANSWER = {b"failure reason": DATABASE_UNAVAILABLE.encode(), b"retry in": 1}
BASE_URL = "http://torrents.example.org/files"


def config_text(database: str, **extra: str) -> str:
    """A tracker config: the database plus extra `key = <TOML value>` lines."""
    lines = [f'database = "{database}"', f'base_url = "{BASE_URL}"', "interval = 1800",
             "min_interval = 300"]
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def register(url: str, *numbers: int) -> None:
    """Register torrents ih(n) named "torrent-n", as the cron job would."""
    store = open_store(url, 2700)
    store.create_tables()
    for n in numbers:
        assert store.register(Torrent(ih(n), None, f"torrent-{n}", 1000 * n), NOW)
    store.close()
    if url.startswith("sqlite:///"):
        # The Apache daemon runs as www-data and writes the file (and its WAL beside it).
        www = pwd.getpwnam("www-data")
        path = Path(url.removeprefix("sqlite://"))
        for f in path.parent.glob(path.name + "*"):
            os.chown(f, www.pw_uid, www.pw_gid)


def compact(ip: bytes, port: int) -> bytes:
    return ip + port.to_bytes(2, "big")


def split_peers(peers: bytes) -> set[bytes]:
    assert len(peers) % 6 == 0, peers
    return {peers[i:i + 6] for i in range(0, len(peers), 6)}


def announce(apache, torrent: int, peer: int, port: int, headers=None, **extra):
    """Announce peer `pid(peer)` to torrent `ih(torrent)`; returns the decoded answer."""
    status, resp_headers, body = apache.get(
        "/tracker/announce", announce_query(ih(torrent), pid(peer), port, **extra), headers=headers
    )
    assert status == 200, (status, body)
    answer = decode(body)
    assert b"failure reason" not in answer, answer
    assert resp_headers["Content-Type"] == BINARY
    return answer


def scrape(apache, *torrents: int) -> dict:
    status, headers, body = apache.get("/tracker/scrape", urlencode([("info_hash", ih(n)) for n in torrents]))
    assert status == 200, (status, body)
    assert headers["Content-Type"] == TEXT
    return decode(body)


def stats(answer: dict) -> tuple[int, int, int]:
    return answer[b"complete"], answer[b"incomplete"], answer[b"downloaded"]


def scrape_entry(complete: int, incomplete: int, downloaded: int, downloaders: int, name: str) -> dict:
    return {b"complete": complete, b"incomplete": incomplete, b"downloaded": downloaded,
            b"downloaders": downloaders, b"name": name.encode()}


# The tracker's info lines ("ready", "refreshed") in Apache's error log: log_level = "info"
# in the tracker's config, and Apache's LogLevel letting mod_wsgi's info level through.
LOG_INFO = {"log_level": '"info"'}
APACHE_LOG_INFO = "LogLevel warn wsgi:info"


def wait_for_log(apache, text: str, seconds: float = 5) -> str:
    deadline = time.monotonic() + seconds
    while True:
        log = apache.error_log()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


# -- 1. announce and scrape, on both databases ------------------------------------------------


@pytest.fixture(params=["mysql", "sqlite"])
def database_url(request):
    return request.getfixturevalue(f"{request.param}_url")


def test_announce_and_scrape(database_url, apache_factory):
    register(database_url, 1, 2)
    apache = apache_factory(config_text(database_url))
    p1, p2, p3 = compact(LOCALHOST, 6881), compact(LOCALHOST, 6882), compact(LOCALHOST, 6883)

    first = announce(apache, 1, 1, 6881, event="started")
    assert 1620 <= first[b"interval"] <= 1980
    assert first[b"min interval"] == 300
    assert first[b"external ip"] == LOCALHOST
    assert stats(first) == (0, 1, 0)
    assert first[b"peers"] == b""

    # The second peer is given the first one, and the first one then the second.
    second = announce(apache, 1, 2, 6882, event="started")
    assert stats(second) == (0, 2, 0)
    assert second[b"peers"] == p1
    again = announce(apache, 1, 1, 6881)
    assert again[b"peers"] == p2

    # Another torrent's swarm is separate.
    other = announce(apache, 2, 3, 6883, event="started")
    assert stats(other) == (0, 1, 0)
    assert other[b"peers"] == b""

    # A partial seed (BEP 21) is incomplete but no downloader.
    partial = announce(apache, 1, 3, 6883, event="paused", left=50)
    assert stats(partial) == (0, 3, 0)
    assert split_peers(partial[b"peers"]) == {p1, p2}

    assert scrape(apache, 1, 2) == {b"files": {
        ih(1): scrape_entry(0, 3, 0, 2, "torrent-1"),
        ih(2): scrape_entry(0, 1, 0, 1, "torrent-2"),
    }}

    # `completed` counts once, however often it is repeated; a seed gets only downloaders.
    done = announce(apache, 1, 1, 6881, event="completed", left=0)
    assert stats(done) == (1, 2, 1)
    assert done[b"peers"] == p2
    done_again = announce(apache, 1, 1, 6881, event="completed", left=0)
    assert stats(done_again) == (1, 2, 1)
    seeding = announce(apache, 1, 1, 6881, left=0)
    assert stats(seeding) == (1, 2, 1)
    assert scrape(apache, 1)[b"files"][ih(1)] == scrape_entry(1, 2, 1, 1, "torrent-1")

    leecher = announce(apache, 1, 2, 6882)
    assert split_peers(leecher[b"peers"]) == {p1, p3}

    # `stopped` removes the peer: it is neither counted nor handed out any more.
    stopped = announce(apache, 1, 1, 6881, event="stopped", left=0)
    assert stopped[b"peers"] == b""
    assert stats(stopped) == (0, 2, 1)
    leecher = announce(apache, 1, 2, 6882)
    assert leecher[b"peers"] == p3
    assert stats(leecher) == (0, 2, 1)
    assert scrape(apache, 1, 2) == {b"files": {
        ih(1): scrape_entry(0, 2, 1, 1, "torrent-1"),
        ih(2): scrape_entry(0, 1, 0, 1, "torrent-2"),
    }}

    # A peer that starts as a seed is not a completion.
    back = announce(apache, 1, 1, 6881, event="started", left=0)
    assert stats(back) == (1, 2, 1)


# -- 2. bad requests never get HTML ----------------------------------------------------------


VALID = announce_query(ih(1), pid(1), 6881)
MISSING_PORT = announce_query(ih(1), pid(1)).replace("port=6881&", "")
GARBAGE = "info_hash=%zz%2%&peer_id=%%%%%GG&port=%4&left=%"
NOT_ALLOWED = {b"failure reason": METHOD_NOT_ALLOWED.encode()}
# Apache itself refuses some requests before any <Location> applies (a request line over
# LimitRequestLine, a path that does not %-decode). Then its own status is fine, but the
# body must still be a bencoded failure (an ErrorDocument), never Apache's HTML page.
APACHE_FAILURE = object()


def failure(reason: str) -> dict:
    return {b"failure reason": reason.encode()}


BAD_REQUESTS = [
    # id, method, path, query, [(status, answer), ...] (the first is the tracker's own answer)
    ("short-info-hash", "GET", "/tracker/announce", announce_query(b"x" * 19, pid(1)),
     [(200, failure(BAD_INFO_HASH))]),
    ("missing-port", "GET", "/tracker/announce", MISSING_PORT, [(200, failure(BAD_PORT))]),
    ("unknown-torrent", "GET", "/tracker/announce", announce_query(ih(99), pid(1)),
     [(200, failure(UNKNOWN_TORRENT))]),
    ("post", "POST", "/tracker/announce", VALID, [(405, NOT_ALLOWED)]),
    ("put", "PUT", "/tracker/announce", VALID, [(405, NOT_ALLOWED)]),
    ("delete", "DELETE", "/tracker/scrape", None, [(405, NOT_ALLOWED)]),
    ("nonsense-path", "GET", "/tracker/nonsense", VALID, [(404, failure(UNKNOWN_PATH))]),
    ("announce-extra", "GET", "/tracker/announce/extra", VALID, [(404, failure(UNKNOWN_PATH))]),
    ("the-script-itself", "GET", "/tracker/tracker.wsgi", VALID, [(404, failure(UNKNOWN_PATH))]),
    # Apache's request line limit (8190) comes before the tracker's own query limit, so
    # Apache answers, with the bencoded 414 from the snippet's ErrorDocument.
    ("10kb-query", "GET", "/tracker/announce", VALID + "&x=" + "a" * 10 * 1024,
     [(414, APACHE_FAILURE)]),
    ("percent-garbage-query", "GET", "/tracker/announce", GARBAGE, [(200, failure(BAD_INFO_HASH))]),
    ("percent-garbage-path", "GET", "/tracker/announce%zz", VALID,
     [(404, failure(UNKNOWN_PATH)), (400, APACHE_FAILURE)]),
    ("full-scrape-disabled", "GET", "/tracker/scrape", None, [(200, failure(FULL_SCRAPE_DISABLED))]),
    ("scrape-short-hash", "GET", "/tracker/scrape", "info_hash=abc", [(200, failure(BAD_INFO_HASH))]),
]


@pytest.fixture
def sqlite_tracker(sqlite_url, apache_factory):
    register(sqlite_url, 1)
    return apache_factory(config_text(sqlite_url))


def matches(status: int, answer: dict, want_status: int, want_answer) -> bool:
    if status != want_status:
        return False
    if want_answer is APACHE_FAILURE:
        return (isinstance(answer, dict) and bool(answer.get(b"failure reason"))
                and set(answer) <= {b"failure reason", b"retry in"})
    return answer == want_answer


def test_bad_requests_get_bencoded_failures(sqlite_tracker):
    apache = sqlite_tracker
    problems = []
    for name, method, path, query, wanted in BAD_REQUESTS:
        status, headers, body = apache.get(path, query, method=method)
        try:
            answer = decode(body)
        except Exception:
            problems.append(f"{name}: {status} {headers.get('Content-Type')} not bencoded: {body[:100]!r}")
            continue
        if not any(matches(status, answer, *want) for want in wanted):
            problems.append(f"{name}: got {status} {answer!r}, want one of {wanted!r}")
            continue
        if any(status == st and want is APACHE_FAILURE for st, want in wanted):
            continue  # Apache's own ErrorDocument: its headers are Apache's
        if headers.get("Content-Type") != TEXT:
            problems.append(f"{name}: Content-Type {headers.get('Content-Type')!r}")
        if headers.get("Cache-Control") != "no-cache, no-store, max-age=0":
            problems.append(f"{name}: Cache-Control {headers.get('Cache-Control')!r}")
        if status == 405 and headers.get("Allow") != "GET, HEAD":
            problems.append(f"{name}: Allow {headers.get('Allow')!r}")
    assert problems == []


def test_head_has_no_body_but_bencoded_headers(sqlite_tracker):
    apache = sqlite_tracker
    for path, query, content_type in [
        ("/tracker/scrape", urlencode({"info_hash": ih(1)}), TEXT),
        ("/tracker/announce", announce_query(b"short", pid(1)), TEXT),
        ("/tracker/announce", announce_query(ih(1), pid(7), 6887), BINARY),
    ]:
        _, _, get_body = apache.get(path, query)
        decode(get_body)
        status, headers, body = apache.get(path, query, method="HEAD")
        assert (status, body) == (200, b""), path
        assert headers["Content-Type"] == content_type
        assert int(headers["Content-Length"]) == len(get_body)


def test_bare_tracker_redirects_to_the_torrents(sqlite_tracker):
    for path in ("/tracker", "/tracker/"):
        status, headers, body = sqlite_tracker.get(path)
        assert (status, headers["Location"], body) == (302, BASE_URL + "/", b""), path
    # With a query, /tracker itself is an announce.
    status, _, body = sqlite_tracker.get("/tracker", announce_query(ih(1), pid(1), 6881))
    assert status == 200
    answer = decode(body)
    assert stats(answer) == (0, 1, 0)


def test_one_host_keeps_each_swarm_in_one_process_whatever_the_escapes(mysql_url, apache_factory):
    """Each announce goes to the daemon its info hash's first byte names (apache/tracker.conf),
    however the client escapes it, so peers of one swarm meet at once: with a minute between
    batches, a peer answered by the other process would not be seen for a minute."""
    firsts = b"AB12_-~.\x00\xff '!)aZ"
    hashes = [bytes([first]) + hashlib.sha1(bytes([first])).digest()[:19] for first in firsts]
    store = open_store(mysql_url, 2700)
    store.create_tables()
    for info_hash in hashes:
        store.register(Torrent(info_hash, None, "routed", 1), NOW)
    store.close()
    apache = apache_factory(config_text(mysql_url, sync_interval="60", **LOG_INFO), site_conf=APACHE_LOG_INFO)

    def escaped(data: bytes, style: str) -> str:
        if style == "upper":
            return "".join(f"%{b:02X}" for b in data)
        if style == "lower":
            return "".join(f"%{b:02x}" for b in data)
        return quote_plus(data, safe="!'()")  # unreserved and sub-delims bare, space as +

    styles = ["upper", "lower", "bare"]
    for info_hash in hashes:
        for n, style in enumerate(styles, start=1):
            query = (f"info_hash={escaped(info_hash, style)}&peer_id={escaped(pid(n), 'bare')}"
                     f"&port={7000 + n}&uploaded=0&downloaded=0&left=5&compact=1")
            status, _, body = apache.get("/tracker/announce", query)
            answer = decode(body)
            assert status == 200 and b"failure reason" not in answer, answer
            # Everyone before this peer, however they escaped the hash.
            assert split_peers(answer[b"peers"]) == {compact(LOCALHOST, 7000 + k) for k in range(1, n)}, \
                (info_hash, style)
    # Both processes answered some of them.
    wait_for_log(apache, "tracker_wsgi: ready:")
    time.sleep(0.5)
    assert len(re.findall(r"\[pid (\d+).*tracker_wsgi: ready:", apache.error_log())) == 2, apache.error_log()


def test_split_routing_cannot_take_a_peer_into_the_other_process(sqlite_url, apache_factory):
    """Issue 17: Apache routes an announce by its first info_hash. A victim announces
    `started` with a key; an attacker from another address sends the victim's peer_id with
    another key, the real hash last and first a hash the other daemon process serves. Were
    the last one read, the other process (whose view lacks the peer, and whose store row is
    not written yet: sync_interval is a minute) would take it past the key rule. Refused,
    as is an escaped key standing in for the first info_hash; the victim goes on."""
    register(sqlite_url, 1)
    apache = apache_factory(config_text(sqlite_url, sync_interval="60", trusted_proxies='["127.0.0.1/32"]'))
    victim, attacker = {"X-Forwarded-For": "192.0.2.10"}, {"X-Forwarded-For": "198.51.100.66"}
    real = ih(1)
    other = bytes([real[0] + 1]) + real[1:]  # routed to the other process (the first byte mod 2)
    assert apache_conf.group_of(real[0], 2) != apache_conf.group_of(other[0], 2)
    announce(apache, 1, 1, 6881, headers=victim, key="victimkey", event="started")
    base = {"peer_id": pid(1), "port": 6999, "uploaded": 0, "downloaded": 0, "left": 100, "key": "otherkey",
            "event": "started"}
    for first in ("info_hash", "info%5Fhash"):
        query = f"{first}={quote_plus(other)}&" + urlencode({"info_hash": real, **base})
        if first != "info_hash":  # the escaped key alone: not an info_hash at all
            query = f"{first}={quote_plus(real)}&" + urlencode(base)
        status, _, body = apache.get("/tracker/announce", query, headers=attacker)
        reason = decode(body)[b"failure reason"]
        assert status == 200 and reason == (REPEATED_PARAMETER if first == "info_hash" else BAD_INFO_HASH).encode()
    # The attacker's own address in the right process: the key rule, as ever.
    status, _, body = apache.get("/tracker/announce", urlencode({"info_hash": real, **base}), headers=attacker)
    assert decode(body)[b"failure reason"] == PEER_CONFLICT.encode()
    announce(apache, 1, 1, 6881, headers=victim, key="victimkey")
    apache.stop()  # the last batches written: the store holds the victim's peer, not the attacker's
    store = open_store(sqlite_url, 2700)
    stored = store.find_peer(store.find_swarm(real, NOW, 10).torrent_id, pid(1))
    assert (stored.ip, stored.key) == (bytes([192, 0, 2, 10]), b"victimkey")
    store.close()


# -- 3. the MySQL C extension inside the daemon --------------------------------------------


def test_daemon_uses_the_mysql_c_extension(mysql_url, apache_factory):
    register(mysql_url, 1)
    apache = apache_factory(config_text(mysql_url, **LOG_INFO), site_conf=APACHE_LOG_INFO)
    assert "CMySQLConnection" not in apache.error_log()
    announce(apache, 1, 1, 6881)
    log = wait_for_log(apache, "CMySQLConnection")
    ready = [line for line in log.splitlines() if "tracker_wsgi: ready:" in line]
    assert len(ready) == 1, log
    assert "store MysqlStore over CMySQLConnection" in ready[0]
    assert "MySQLConnection" not in log.replace("CMySQLConnection", "")


# -- 4. MariaDB restarted under a running Apache ---------------------------------------------


def all_threads_stopped(pid: int) -> bool:
    """Every thread of the process is in state T (stopped)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended
            continue
        if stat.rpartition(")")[2].split()[0] != "T":
            return False
    return True


class PrivateMariadb:
    """A MariaDB server of the test's own (the system one is shared with other tests)."""

    def __init__(self):
        self.base = Path(tempfile.mkdtemp(prefix="tracker-mdb-"))
        mysql_user = pwd.getpwnam("mysql")
        self.base.chmod(0o755)
        os.chown(self.base, mysql_user.pw_uid, mysql_user.pw_gid)
        self.datadir = self.base / "data"
        self.socket = self.base / "mysqld.sock"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={self.datadir}",
             "--auth-root-authentication-method=normal"],
            check=True, capture_output=True,
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["/usr/sbin/mariadbd", "--no-defaults", "--user=mysql", f"--datadir={self.datadir}",
             f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--pid-file={self.base}/mysqld.pid", f"--log-error={self.base}/error.log",
             "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=16M"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {self.log()}")
            try:
                self.admin().close()
                return
            except mysql.connector.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def admin(self):
        return mysql.connector.connect(user="root", unix_socket=str(self.socket), connection_timeout=2)

    def tracker_database(self, user: str = "tracker", password: str = "s3cret-Pw", db: str = "tracker") -> str:
        """A database and a TCP account for the tracker on this server; returns its URL."""
        admin = self.admin()
        cur = admin.cursor()
        cur.execute(f"CREATE DATABASE {db}")
        cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'")
        cur.execute(f"GRANT ALL ON {db}.* TO '{user}'@'127.0.0.1'")
        admin.close()
        return f"mysql://{user}:{password}@127.0.0.1:{self.port}/{db}"

    def hang(self) -> None:
        """SIGSTOP the server and wait until every thread of it is stopped: kill() returns
        before the others stop, and a thread still running may answer one more query (seen
        once in CI: a scrape answered at once after the signal)."""
        os.kill(self.process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not all_threads_stopped(self.process.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"mariadbd {self.process.pid} did not stop within 10 s of SIGSTOP")
            time.sleep(0.01)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            devserver.stop(self.process, 30)

    def log(self) -> str:
        path = self.base / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def private_mariadb():
    server = PrivateMariadb()
    try:
        server.start()
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        server.remove()


def reachable(url_args: dict) -> bool:
    try:
        mysql.connector.connect(**url_args, connection_timeout=1).close()
        return True
    except mysql.connector.Error:
        return False


def stored_peers(tcp: dict, torrent: int) -> int:
    conn = mysql.connector.connect(**tcp)
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM peers JOIN torrents ON torrents.id = peers.torrent_id"
                    " WHERE torrents.name = %s", (f"torrent-{torrent}",))
        return cur.fetchone()[0]
    finally:
        conn.close()


def in_every_process(topology: str, holds, seconds: float = 2 * SYNC + 3) -> bool:
    """Whether holds() is true: at once in daemon mode, where a swarm's announces all reach
    one process; in embedded mode within `seconds` (each child learns the other's peers at
    its next sync: within 2 x sync_interval)."""
    return wait_until(holds, seconds if topology == "embedded" else 0)


class BencodedWatch:
    """Requests under /tracker from a thread of its own until stopped: re-announces, new peers,
    completions and scrapes of torrent `torrent`, an unknown torrent, a bad query. Every
    answer must be bencoded with the tracker's content type, whatever the database does."""

    def __init__(self, apache, torrent: int):
        self.apache, self.torrent = apache, torrent
        self.answers = 0
        self.wrong: list[tuple] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            for path, query in (
                ("/tracker/announce", announce_query(ih(self.torrent), pid(1000 + n % 5), 9000 + n % 5)),
                ("/tracker/announce", announce_query(ih(self.torrent), pid(2000 + n), 9100, event="started")),
                ("/tracker/announce", announce_query(ih(self.torrent), pid(1000 + n % 5), 9000 + n % 5,
                                                     event="completed", left=0)),
                ("/tracker/scrape", urlencode({"info_hash": ih(self.torrent)})),
                ("/tracker/announce", announce_query(ih(99), pid(1), 9200)),
                ("/tracker/announce", "info_hash=short"),
            ):
                try:
                    status, headers, body = self.apache.get(path, query)
                except OSError as exc:  # a reset or a timeout: no answer at all
                    self.wrong.append((path, repr(exc)))
                    continue
                self.answers += 1
                try:
                    decode(body)
                except Exception:
                    self.wrong.append((path, status, body[:100]))
                    continue
                if headers["Content-Type"] not in BENCODED_TYPES:
                    self.wrong.append((path, status, headers["Content-Type"]))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


# Which Apache process answered each request (in embedded mode, the child that ran the tracker),
# in access.log of the run directory (Apache's ServerRoot); mod_log_config is built into Debian's.
PID_LOG = '\nCustomLog access.log "%P %U"\n'


def serving_lines(apache) -> list[tuple[int, str]]:
    """(process id, path) of every request answered so far, in order."""
    log = apache.run_dir / "access.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [(int(pid), path) for pid, path in (line.split() for line in lines)]


def serving_pids(apache, path: str = "/tracker/announce") -> set[int]:
    return {pid for pid, served in serving_lines(apache) if served == path}


def announce_with_child(apache, torrent: int, peer: int, port: int) -> tuple[int, dict]:
    """announce(), and the process that answered it (requests one at a time: Apache logs
    each just after its answer)."""
    before = len(serving_lines(apache))
    answer = announce(apache, torrent, peer, port)
    deadline = time.monotonic() + 5
    while len(lines := serving_lines(apache)) <= before:
        assert time.monotonic() < deadline, "no access.log line"
        time.sleep(0.02)
    return lines[before][0], answer


@pytest.mark.parametrize("topology", devserver.TOPOLOGIES)
def test_mariadb_restart_mid_run(topology, private_mariadb, apache_factory):
    server = private_mariadb
    url = server.tracker_database()
    tcp = {"user": "tracker", "password": "s3cret-Pw", "host": "127.0.0.1", "port": server.port, "database": "tracker"}
    register(url, 1, 3)
    # Embedded mode: each child holds its own view, in step with the others' every SYNC.
    sync = {"sync_interval": str(SYNC)} if topology == "embedded" else {}
    apache = apache_factory(config_text(url, **sync, **LOG_INFO), site_conf=APACHE_LOG_INFO + PID_LOG,
                            topology=topology)

    # Ten leechers, announced at once so that many threads hold a connection.
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda n: announce(apache, 1, n, 7000 + n, event="started"), range(1, 11)))
    assert all(a[b"incomplete"] >= 1 for a in answers)
    if topology == "embedded":
        # Every child holds the swarm, all ten peers in its view, before the database goes (a
        # child that never read it could only answer `retry in` below): re-announces, each on
        # a new connection, until each child has answered one with all ten.
        complete: set[int] = set()
        deadline = time.monotonic() + 2 * SYNC + 5
        while len(complete) < apache_conf.EMBEDDED_PROCESSES:
            assert time.monotonic() < deadline, complete
            n = len(serving_lines(apache)) % 10 + 1
            child, answer = announce_with_child(apache, 1, n, 7000 + n)
            if stats(answer) == (0, 10, 0):
                complete.add(child)
    assert scrape(apache, 1)[b"files"][ih(1)] == scrape_entry(0, 10, 0, 10, "torrent-1")
    log_before = apache.error_log()
    assert "CMySQLConnection" in log_before

    watch = BencodedWatch(apache, 3)  # from here to the end, beside everything else
    register(url, 2)  # a swarm the tracker has not read
    server.stop()
    assert server.process.returncode == 0, server.log()

    # The database is down. The peers of the swarm the tracker holds are still answered from
    # memory...
    for n in range(1, 11):
        assert stats(announce(apache, 1, n, 7000 + n)) == (0, 10, 0)
    # ...new peers too: the host holds the swarm whole, so the key rule needs no database...
    for n in range(11, 14):
        started = time.monotonic()
        status, headers, body = apache.get("/tracker/announce", announce_query(ih(1), pid(n), 7000 + n,
                                                                             event="started"))
        assert status == 200 and stats(decode(body)) == (0, n, 0), decode(body)
        assert time.monotonic() - started < 3
    # ...but what must be written at once (a `completed`) and a swarm never read get a quick
    # bencoded failure with `retry in`, never a hang or HTML.
    for query in [
        announce_query(ih(1), pid(1), 7001, event="completed", left=0),
        announce_query(ih(2), pid(1), 7001),
    ]:
        started = time.monotonic()
        status, headers, body = apache.get("/tracker/announce", query)
        elapsed = time.monotonic() - started
        assert (status, headers["Content-Type"], decode(body)) == (200, TEXT, DATABASE_ANSWER)
        assert elapsed < 3, elapsed
    status, _, body = apache.get("/tracker/scrape", urlencode({"info_hash": ih(2)}))
    assert (status, decode(body)) == (200, DATABASE_ANSWER)

    # The batch of the announces answered meanwhile waits; its failure is logged once.
    failed, recovered = "writing announces to the database failed", "writing announces to the database works again"
    deadline = time.monotonic() + 10
    while failed not in apache.error_log():
        assert time.monotonic() < deadline, apache.error_log()
        time.sleep(0.2)

    # The same server back on the same datadir; Apache is not touched.
    server.start()
    deadline = time.monotonic() + 5
    while not reachable(tcp):
        assert time.monotonic() < deadline, "private MariaDB did not come back"
        time.sleep(0.1)

    # The announces answered while it was down reach it (each process that failed says it
    # works again), and the peers from before are still there (InnoDB keeps them).
    def process_lines(text: str) -> list[str]:
        return re.findall(r"\[pid (\d+)[^\n]*" + text, apache.error_log())

    deadline = time.monotonic() + 10
    while sorted(process_lines(recovered)) != sorted(set(process_lines(failed))):
        assert time.monotonic() < deadline, apache.error_log()
        time.sleep(0.2)
    failing = process_lines(failed)
    assert len(failing) == len(set(failing)), apache.error_log()  # once per process
    first = announce(apache, 1, 20, 7020, numwant=200, event="started")
    assert stats(first) == (0, 14, 0)
    assert split_peers(first[b"peers"]) == {compact(LOCALHOST, 7000 + n) for n in range(1, 14)}

    # A burst over many threads: every stale connection is replaced without a failure.
    with ThreadPoolExecutor(20) as pool:
        bodies = list(pool.map(
            lambda n: apache.get("/tracker/announce", announce_query(ih(1), pid(n), 7000 + n)),
            range(1, 11),
        ))
    assert [(s, b"failure reason" in decode(b)) for s, _, b in bodies] == [(200, False)] * 10
    assert in_every_process(topology, lambda: scrape(apache, 1)[b"files"][ih(1)] == scrape_entry(
        0, 14, 0, 14, "torrent-1"))
    # Every announce answered while the database was down reaches it, with the next batch.
    deadline = time.monotonic() + 15
    while stored_peers(tcp, 1) != 14:
        assert time.monotonic() < deadline, stored_peers(tcp, 1)
        time.sleep(0.5)
    watch.stop()
    assert watch.wrong == [] and watch.answers > 50, (watch.answers, watch.wrong[:5])
    assert apache.process.poll() is None


# -- 5. two Apache hosts, one database ---------------------------------------------------------


def test_two_apaches_on_one_database_are_one_tracker(mysql_url, apache_factory):
    register(mysql_url, 1)
    a = apache_factory(config_text(mysql_url, sync_interval=str(SYNC)), "a")
    b = apache_factory(config_text(mysql_url, sync_interval=str(SYNC)), "b")

    store = open_store(mysql_url, 2700)  # what the hosts wrote
    try:
        assert announce(a, 1, 1, 7001, event="started")[b"peers"] == b""
        # a writes its batch within sync_interval; b, reading the swarm for the first time, has peer 1.
        assert wait_until(lambda: store._fetchall("SELECT COUNT(*) FROM peers") == [(1,)], SYNC + 10)
        from_b = announce(b, 1, 2, 7002, event="started")
        assert from_b[b"peers"] == compact(LOCALHOST, 7001)
        assert stats(from_b) == (0, 2, 0)

        done = announce(a, 1, 1, 7001, event="completed", left=0)
        assert done[b"complete"] == done[b"downloaded"] == 1
        # Each host writes its batch and takes in the other's within sync_interval.
        counted_once = {b"files": {ih(1): scrape_entry(1, 1, 1, 1, "torrent-1")}}
        assert wait_until(lambda: scrape(b, 1) == counted_once, 2 * SYNC + 10), scrape(b, 1)
        # The completion was counted once, not once per host: b took in peer 1's row with
        # its completion, and a client that sends it again there is not counted again.
        assert announce(b, 1, 1, 7001, event="completed", left=0, uploaded=777)[b"downloaded"] == 1
        time.sleep(SYNC + 1)  # b's batch
        assert store.scrape([ih(1)], int(time.time()))[ih(1)].downloaded == 1
    finally:
        store.close()
    # a took in b's peer 2: one completion there too.
    assert wait_until(lambda: scrape(a, 1) == counted_once, 2 * SYNC + 10), scrape(a, 1)
    assert announce(b, 1, 2, 7002)[b"peers"] == compact(LOCALHOST, 7001)
    assert stats(announce(a, 1, 2, 7002)) == (1, 1, 1)


# -- 6. a bad config file ---------------------------------------------------------------------


def test_config_error_is_a_retry_and_one_log_line(sqlite_url, apache_factory):
    apache = apache_factory(config_text(sqlite_url, colour='"blue"'))
    config_path = str(apache.run_dir / "tracker.toml")
    requests = [
        ("/tracker/announce", announce_query(ih(1), pid(1), 6881)),
        ("/tracker/scrape", urlencode({"info_hash": ih(1)})),
        ("/tracker", announce_query(ih(1), pid(2), 6882)),
        # An odd first byte: tracker.conf routes this hash to its other daemon process.
        ("/tracker/announce", announce_query(b"A" * 20, pid(3), 6883)),
    ]
    # Bursts of concurrent requests, routed to both daemon processes.
    with ThreadPoolExecutor(12) as pool:
        for _ in range(3):
            answers = list(pool.map(lambda r: apache.get(*r), requests * 4))
            for status, headers, body in answers:
                assert (status, headers["Content-Type"], decode(body)) == (200, TEXT, SERVER_FAULT_ANSWER)

    def said() -> list[str]:
        return [line for line in apache.error_log().splitlines() if config_path in line and "'colour'" in line]

    # Both daemon processes have said it (the requests reached both).
    assert wait_until(lambda: len({re.search(r"\[pid (\d+)", line).group(1) for line in said()}) == 2, 5), said()
    log = apache.error_log()
    lines = said()
    assert lines, log
    assert all("tracker_wsgi: configuration error:" in line for line in lines), lines
    assert "Traceback" not in log
    # Never once per request: once per daemon process (the snippet starts two), each
    # process keeping its verdict until it is restarted.
    pids = [re.search(r"\[pid (\d+)", line).group(1) for line in lines]
    assert len(pids) == len(set(pids)) == 2, lines


# -- 7. X-Forwarded-For -------------------------------------------------------------------------


@pytest.mark.parametrize("trusted", [True, False])
def test_x_forwarded_for(trusted, sqlite_url, apache_factory):
    register(sqlite_url, 1)
    extra = {"trusted_proxies": '["127.0.0.1/32"]'} if trusted else {}
    apache = apache_factory(config_text(sqlite_url, **extra))
    proxied = bytes([203, 0, 113, 7])
    seen_as = proxied if trusted else LOCALHOST

    behind = announce(apache, 1, 1, 7001, headers={"X-Forwarded-For": "203.0.113.7"})
    assert behind[b"external ip"] == seen_as
    other = announce(apache, 1, 2, 7002)
    assert other[b"external ip"] == LOCALHOST
    assert other[b"peers"] == compact(seen_as, 7001)
    assert announce(apache, 1, 1, 7001, headers={"X-Forwarded-For": "203.0.113.7"})[b"peers"] == (
        compact(LOCALHOST, 7002)
    )


def test_sqlite_file_apache_cannot_write_is_one_clear_log_line(apache_factory, shared_dir):
    """The trap of running tracker-wsgi as root: a database file www-data cannot write.
    Clients get `retry in`; the error log names the file and the fix, once, no traceback."""
    url = f"sqlite:///{shared_dir}/tracker.sqlite"
    store = open_store(url, 2700)
    store.create_tables()  # as root: the file is root's, mode 0644
    store.register(Torrent(ih(1), None, "torrent-1", 1), int(time.time()))
    store.close()
    apache = apache_factory(f'database = "{url}"\n')
    for n in range(3):
        status, headers, body = apache.get("/tracker/announce", announce_query(ih(1), pid(n)))
        assert (status, decode(body)) == (200, SERVER_FAULT_ANSWER)
    log = apache.error_log()
    lines = [line for line in log.splitlines() if "configuration error" in line]
    assert lines and all(f"{shared_dir}/tracker.sqlite is missing or not writable" in line for line in lines), log
    assert "www-data" in lines[0] and "Traceback" not in log


def _daemon_pids(apache) -> list[int]:
    """The mod_wsgi daemon processes (display-name "(wsgi:tracker_wsgi_N)") of this Apache."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if cmdline.startswith(b"(wsgi:") and ppid == apache.process.pid:
            pids.append(int(entry.name))
    return pids


def test_a_completed_survives_the_daemons_being_killed(mysql_url, apache_factory):
    """No data is lost for speed: once a client has its answer to `completed`, the count is
    in the database, even if every daemon process dies at that moment (SIGKILL)."""
    register(mysql_url, 1)
    apache = apache_factory(config_text(mysql_url))
    announce(apache, 1, 1, 6881, event="started", left=100)
    answer = announce(apache, 1, 1, 6881, event="completed", left=0)
    assert stats(answer) == (1, 0, 1)
    pids = _daemon_pids(apache)
    assert len(pids) == 2, pids
    for daemon in pids:
        os.kill(daemon, 9)
    deadline = time.monotonic() + 10
    while True:  # Apache starts new daemons; until then it answers 503 (bencoded)
        status, _, body = apache.get("/tracker/scrape", urlencode({"info_hash": ih(1)}))
        if status == 200 and b"files" in decode(body) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert decode(body)[b"files"][ih(1)][b"downloaded"] == 1
    assert set(_daemon_pids(apache)).isdisjoint(pids)


# How Apache is stopped: SIGWINCH is `apachectl graceful-stop`, what Debian's `systemctl stop
# apache2` runs (children finish their requests first); SIGTERM is `apachectl stop`.
STOP_SIGNALS = {"graceful-stop": signal.SIGWINCH, "stop": signal.SIGTERM}


@pytest.mark.parametrize("stop", STOP_SIGNALS)
@pytest.mark.parametrize("topology", devserver.TOPOLOGIES)
@pytest.mark.parametrize("database", ["sqlite", "mysql"])
def test_stopping_apache_right_after_a_burst_loses_no_announce(database, topology, stop, request, apache_factory):
    """Announces wait in each tracker process's memory for the next batch (here: a minute
    away). Apache stopped right after a burst: each process (a daemon, or in embedded mode
    an Apache child) writes its pending announces on mod_wsgi's shutdown event
    (process_stopping, which mod_wsgi 6 sends in both), and every one is stored."""
    url = request.getfixturevalue(f"{database}_url")
    hashes = [bytes([first]) + b"stop-test-torrent-x" for first in (0x10, 0x11, 0x42, 0x43)]  # both daemons
    store = open_store(url, 2700)
    store.create_tables()
    for n, info_hash in enumerate(hashes):
        assert store.register(Torrent(info_hash, None, f"t{n}", 1000), NOW)
    store.close()
    if database == "sqlite":
        register(url)  # hands the files to www-data
    apache = apache_factory(config_text(url, sync_interval="60"), topology=topology)
    answered = 0
    held_elsewhere = 0  # answers that did not count every peer of their swarm announced so far
    for n in range(200):
        query = announce_query(hashes[n % 4], pid(n), port=7000 + n, event="started")
        status, _, body = apache.get("/tracker/announce", query)
        assert status == 200 and b"failure reason" not in body, body
        answered += 1
        held_elsewhere += decode(body)[b"incomplete"] < n // 4 + 1
    # Unwritten announces in the host state: every process counts every peer announced so
    # far, whichever process answered it (embedded mode's new connections reach either child).
    assert held_elsewhere == 0, held_elsewhere
    apache.process.send_signal(STOP_SIGNALS[stop])
    assert apache.process.wait(30) == 0
    store = open_store(url, 2700)
    stored = store._fetchall("SELECT COUNT(*) FROM peers")[0][0]
    store.close()
    assert (stored, answered) == (200, 200), apache.error_log()


def test_a_hung_database_holds_no_announce_that_memory_can_answer(private_mariadb, apache_factory):
    """Issue 12, finding 4: with MariaDB stopped by SIGSTOP (hung: connections open, no
    answers), completions once held every daemon thread for the 30 s read timeout and
    re-announces fell to 0.5/s. Now a request waits for the database at most the request
    store's short wait, a few at a time, and re-announces are answered from memory
    throughout; a completion gets a quick `retry in` and counts once it comes back."""
    server = private_mariadb
    url = server.tracker_database()
    register(url, 1)
    apache = apache_factory(config_text(url, sync_interval="2"))
    for n in range(1, 21):
        announce(apache, 1, n, 7000 + n, event="started", left=100)
    time.sleep(3)  # one batch: the swarm is written and fresh

    server.hang()
    try:
        def reannounce(n: int) -> tuple[float, dict]:
            start = time.monotonic()
            answer = announce(apache, 1, n, 7000 + n, left=100)
            return time.monotonic() - start, answer

        def complete(n: int) -> tuple[float, dict]:
            start = time.monotonic()
            status, _, body = apache.get("/tracker/announce", announce_query(
                ih(1), pid(n), port=7000 + n, event="completed", left=0))
            return time.monotonic() - start, decode(body)

        with ThreadPoolExecutor(40) as pool:
            completions = [pool.submit(complete, n) for n in range(1, 11)]  # 10 threads' worth
            answers = list(pool.map(reannounce, [n for _ in range(15) for n in range(11, 21)]))
            finished = [c.result() for c in completions]
    finally:
        server.resume()
    slow = sorted(seconds for seconds, _ in answers)
    assert all(b"failure reason" not in answer for _, answer in answers), answers[:3]
    assert slow[int(len(slow) * 0.99) - 1] < 1.0, slow[-10:]
    for seconds, answer in finished:
        assert seconds < 8 and answer[b"failure reason"] and answer[b"retry in"] >= 1, (seconds, answer)
    # The database is back: the completions come again (as BEP 31 asked) and count.
    deadline = time.monotonic() + 30
    while True:
        done = [decode(apache.get("/tracker/announce", announce_query(
            ih(1), pid(n), port=7000 + n, event="completed", left=0))[2]) for n in range(1, 11)]
        if all(b"failure reason" not in answer for answer in done) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert scrape(apache, 1)[b"files"][ih(1)][b"downloaded"] == 10, (done, apache.error_log()[-3000:])


def test_one_ipv6_48_fills_at_most_its_share_of_an_answer(sqlite_url, apache_factory):
    """Issue 17.4 through Apache: a /48 rotating its /64s (by X-Forwarded-For from a trusted
    proxy) into a swarm of 40 others: a leecher outside it asking for 200 peers gets at
    most answer_share_per_prefix of them from the /48, and every other peer."""
    register(sqlite_url, 1)
    apache = apache_factory(config_text(sqlite_url, trusted_proxies='["127.0.0.1/32"]'))
    for n in range(40):
        announce(apache, 1, 1000 + n, 7000 + n, headers={"X-Forwarded-For": f"192.0.2.{n + 1}"})
    def probe() -> tuple[int, int]:
        answer = announce(apache, 1, 5000, 6999, headers={"X-Forwarded-For": "198.51.100.7"}, numwant=200,
                          compact=1)
        return len(answer.get(b"peers6", b"")) // 18, len(answer[b"peers"]) // 6

    for n in range(300):
        announce(apache, 1, n, 6881, headers={"X-Forwarded-For": f"2001:db8:4817:{n % 256:02x}{n // 256:02x}::1"},
                 compact=1)
        if n == 140:  # 181 peers in all: fewer than asked for, and still not the /48's 141
            assert probe() == (50, 40)
    for _ in range(10):
        answer = announce(apache, 1, 5000, 6999, headers={"X-Forwarded-For": "198.51.100.7"}, numwant=200,
                          compact=1)
        theirs, others = len(answer.get(b"peers6", b"")) // 18, len(answer[b"peers"]) // 6
        assert theirs <= 200 * 25 // 100 and others == 40, (theirs, others)
