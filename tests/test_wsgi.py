"""tracker_wsgi.wsgi: the WSGI application in-process, checked by wsgiref's validator, on a
real SQLite store.

What a client sees: every answer under /tracker is bencoded (BEP 3), a client's mistake is
a `failure reason`, our own fault is a `failure reason` with `retry in` (BEP 31) and its
traceback goes to the server's error log (once, then counts), never to the client.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest

from conftest import announce_query, decode, ih, pid
from tracker_wsgi import config as config_module
from tracker_wsgi.faultlog import FaultLog
from tracker_wsgi.model import StoreUnavailable, Torrent
from tracker_wsgi.protocol import (
    FULL_SCRAPE_DISABLED,
    METHOD_NOT_ALLOWED,
    SERVER_FAULT,
    UNKNOWN_PATH,
    UNKNOWN_TORRENT,
)
from tracker_wsgi.refresh_auth import (
    FAILURES_PER_ADDRESS,
    FAILURES_PER_MINUTE,
    REFRESH_LOCKED_OUT,
    REFRESH_OFF,
    REFRESH_REFUSED,
    REFRESH_SECRET_IN_QUERY,
    REMEMBERED_ADDRESSES,
    RefreshGate,
)
from tracker_wsgi.refusals import DATABASE_UNAVAILABLE
from tracker_wsgi.wsgi import Application, build_tracker

BINARY = "application/octet-stream"
TEXT = "text/plain; charset=ISO-8859-1"
BASE_URL = "https://torrents.example.org/files"


@dataclass
class Answer:
    status: str
    headers: dict[str, str]
    body: bytes
    errors: str  # what the app wrote to wsgi.errors

    @property
    def decoded(self) -> dict:
        return decode(self.body)


@pytest.fixture(autouse=True)
def tracker_log(caplog):
    """tracker_log() -> (level, message) of each record the tracker logged since the last call."""
    caplog.set_level(logging.INFO, logger="tracker_wsgi")

    def records() -> list[tuple[str, str]]:
        logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("tracker_wsgi")]
        caplog.clear()
        return logged

    return records


def call(app, path: str = "/announce", query: str = "", method: str = "GET", remote: str = "198.51.100.1",
         forwarded_for: str | None = None, extra: dict | None = None) -> Answer:
    """One request through wsgiref.validate.validator, which checks the app keeps PEP 3333."""
    errors = io.StringIO()
    environ = {"wsgi.errors": errors}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD=method, SCRIPT_NAME="/tracker", PATH_INFO=path, QUERY_STRING=query,
                   REMOTE_ADDR=remote)
    if forwarded_for is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded_for
    environ.update(extra or {})
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, headers
        return lambda data: None

    result = validator(app)(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()
    return Answer(seen["status"], dict(seen["headers"]), body, errors.getvalue())


@pytest.fixture
def make_app(sqlite_url, shared_dir, tracker_log):
    """make_app(**config) -> (Application, Tracker) on a fresh SQLite store, its torrent_dir
    and output_dir in the test's directory unless given."""
    made = []
    directories = {"torrent_dir": str(shared_dir / "torrents"), "output_dir": str(shared_dir / "output"),
                   "swarm_dir": str(shared_dir / "swarms")}

    def make(**config):
        tracker = build_tracker(config_module.from_dict(
            {"database": sqlite_url, "base_url": BASE_URL, **directories, **config}))
        tracker_log()  # what building it logged (the schema created) is not the test's
        made.append(tracker)
        return Application(tracker), tracker

    yield make
    for tracker in made:
        tracker.close()


def register(tracker, n: int, name: str = "", v2: bytes | None = None) -> None:
    assert tracker.store.register(Torrent(ih(n), v2, name or f"torrent {n}", 1000), int(time.time()))


@pytest.fixture
def app(make_app):
    """Default config (whitelist `directory`, full scrape off) with torrent 1 registered."""
    app, tracker = make_app()
    register(tracker, 1)
    return app


def announce(app, peer: int, torrent: int = 1, remote: str | None = None, **fields) -> Answer:
    """Peer n announces from 10.1.0.n, port 6000+n, unless told otherwise."""
    query = announce_query(ih(torrent), pid(peer), port=6000 + peer, **fields)
    return call(app, "/announce", query, remote=remote or f"10.1.0.{peer}")


def compact_peers(blob: bytes) -> list[tuple[str, int]]:
    """BEP 23: 6 bytes per peer, 4-byte address and 2-byte big-endian port."""
    assert len(blob) % 6 == 0
    return sorted((str(ipaddress.ip_address(blob[i:i + 4])), int.from_bytes(blob[i + 4:i + 6], "big"))
                  for i in range(0, len(blob), 6))


def peer_ids(answer: Answer) -> list[bytes]:
    """Peer ids in a dictionary-model (compact=0) answer."""
    return sorted(p[b"peer id"] for p in answer.decoded[b"peers"])


def scrape(app, *torrents: int) -> dict:
    query = urllib.parse.urlencode([("info_hash", ih(n)) for n in torrents])
    answer = call(app, "/scrape", query)
    assert answer.status == "200 OK"
    return answer.decoded[b"files"]


def counts(files: dict, torrent: int = 1) -> tuple[int, int, int, int]:
    entry = files[ih(torrent)]
    return entry[b"complete"], entry[b"incomplete"], entry[b"downloaded"], entry[b"downloaders"]


def failure(reason: str, retry_in: int | None = None) -> dict:
    answer = {b"failure reason": reason.encode()}
    if retry_in is not None:
        answer[b"retry in"] = retry_in
    return answer


# --------------------------------------------------------------------------------------
# routes
# --------------------------------------------------------------------------------------

def test_announce_route(app):
    answer = announce(app, 1)
    assert answer.status == "200 OK"
    body = answer.decoded
    assert (body[b"complete"], body[b"incomplete"], body[b"downloaded"], body[b"peers"]) == (0, 1, 0, b"")
    assert 1620 <= body[b"interval"] <= 1980  # 1800 s +- 10%
    assert body[b"min interval"] == 300
    assert body[b"external ip"] == bytes([10, 1, 0, 1])  # BEP 24


@pytest.mark.parametrize("path", ["", "/"])
def test_bare_tracker_with_an_announce_query_is_an_announce(app, path):
    """Clients configured with .../tracker (no /announce) announce there, as with the original."""
    answer = call(app, path, announce_query(ih(1), pid(1)))
    assert answer.status == "200 OK"
    assert answer.decoded[b"incomplete"] == 1
    assert scrape(app, 1)[ih(1)][b"incomplete"] == 1


@pytest.mark.parametrize("path", ["", "/"])
def test_bare_tracker_without_a_query_redirects_to_the_torrents(app, path):
    """A person typing /tracker is sent to base_url/ (the original's behaviour)."""
    answer = call(app, path)
    assert answer.status == "302 Found"
    assert answer.headers["Location"] == BASE_URL + "/"
    assert answer.body == b""


def test_redirect_adds_exactly_one_slash(make_app):
    app, _ = make_app(base_url="https://torrents.example.org/files/")
    assert call(app, "").headers["Location"] == "https://torrents.example.org/files/"


def test_scrape_route(app):
    announce(app, 1)
    assert scrape(app, 1) == {ih(1): {b"complete": 0, b"incomplete": 1, b"downloaded": 0, b"downloaders": 1,
                                      b"name": b"torrent 1"}}


@pytest.mark.parametrize("path", ["/announce/", "/Announce", "/scrape.php", "/tracker/announce", "/favicon.ico",
                                  "/tracker.wsgi"])
def test_unknown_path_is_a_bencoded_404(app, path):
    """Apache answers a path under /tracker that is not the tracker's with the same 404 and
    body (apache/errors/unknown-path); /tracker/tracker.wsgi reaches the tracker."""
    answer = call(app, path, announce_query(ih(1), pid(1)))
    assert (answer.status, answer.decoded) == ("404 Not Found", failure(UNKNOWN_PATH))
    assert answer.body == (Path(__file__).parent.parent / "apache/errors/unknown-path").read_bytes()
    assert answer.headers["Content-Type"] == TEXT


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_methods_other_than_get_and_head_are_405_with_a_bencoded_body(app, method):
    answer = call(app, "/announce", announce_query(ih(1), pid(1)), method=method)
    assert answer.status == "405 Method Not Allowed"
    assert answer.headers["Allow"] == "GET, HEAD"
    assert answer.decoded == failure(METHOD_NOT_ALLOWED)
    assert scrape(app, 1)[ih(1)][b"incomplete"] == 0  # nothing was announced


def test_head_is_answered_like_get(app):
    answer = call(app, "/announce", announce_query(ih(1), pid(1)), method="HEAD")
    assert answer.status == "200 OK"
    assert answer.headers["Content-Type"] == BINARY
    assert answer.headers["Content-Length"] == str(len(answer.body))
    assert answer.decoded[b"incomplete"] == 1
    head = call(app, "/scrape", urllib.parse.urlencode({"info_hash": ih(1)}), method="HEAD")
    assert (head.status, counts(head.decoded[b"files"])) == ("200 OK", (0, 1, 0, 1))


EVERY_ANSWER_CASES = [
    # (id, method, path, query)
    ("announce", "GET", "/announce", announce_query(ih(1), pid(1))),
    ("announce non-compact", "GET", "/announce", announce_query(ih(1), pid(1), compact=0)),
    ("announce HEAD", "HEAD", "/announce", announce_query(ih(1), pid(1))),
    ("scrape", "GET", "/scrape", urllib.parse.urlencode({"info_hash": ih(1)})),
    ("full scrape refused", "GET", "/scrape", ""),
    ("unknown torrent", "GET", "/announce", announce_query(ih(9), pid(1))),
    ("bad info_hash", "GET", "/announce", "info_hash=short&peer_id=x"),
    ("bad port", "GET", "/announce", announce_query(ih(1), pid(1), port=0)),
    ("empty query", "GET", "/announce", ""),
    ("query too long", "GET", "/announce", "a=" + "x" * 5000),
    ("binary junk query", "GET", "/announce", "%00%ff%fe=%zz&&&=="),
    ("unknown path", "GET", "/index.html", ""),
    ("POST", "POST", "/announce", ""),
    ("bad scrape hash", "GET", "/scrape", "info_hash=abc"),
]


@pytest.mark.parametrize(("method", "path", "query"), [c[1:] for c in EVERY_ANSWER_CASES],
                         ids=[c[0] for c in EVERY_ANSWER_CASES])
def test_every_answer_is_bencoded_never_html(app, method, path, query):
    """BitTorrent clients parse every tracker answer as bencoding (BEP 3); an HTML error
    page would show up as "invalid tracker response"."""
    answer = call(app, path, query, method=method)
    body = answer.decoded  # raises if not bencoded
    assert isinstance(body, dict)
    assert set(body) & {b"failure reason", b"interval", b"files"}
    assert answer.headers["Content-Length"] == str(len(answer.body))
    assert b"<" not in answer.body[:1]


# --------------------------------------------------------------------------------------
# whitelist and scrape policy
# --------------------------------------------------------------------------------------

def test_unknown_torrent_is_refused_in_directory_mode(app):
    answer = announce(app, 1, torrent=9)
    assert (answer.status, answer.decoded) == ("200 OK", failure(UNKNOWN_TORRENT))
    assert UNKNOWN_TORRENT == "Requested torrent not available on this tracker."


def test_open_whitelist_registers_unknown_hashes(make_app):
    app, _ = make_app(whitelist="open")
    first = announce(app, 1, torrent=7)
    assert (first.decoded[b"incomplete"], first.decoded[b"peers"]) == (1, b"")
    second = announce(app, 2, torrent=7, left=0)
    assert compact_peers(second.decoded[b"peers"]) == [("10.1.0.1", 6001)]
    assert counts(scrape(app, 7), 7) == (1, 1, 0, 1)


def test_scrape_leaves_out_unknown_hashes(app):
    assert scrape(app, 1, 9) == {ih(1): {b"complete": 0, b"incomplete": 0, b"downloaded": 0, b"downloaders": 0,
                                         b"name": b"torrent 1"}}


def test_full_scrape_off_refuses_a_scrape_without_info_hash(app):
    answer = call(app, "/scrape")
    assert answer.decoded == failure(FULL_SCRAPE_DISABLED)


def test_full_scrape_on_returns_every_torrent_under_every_hash(make_app):
    app, tracker = make_app(full_scrape=True)
    register(tracker, 1, "one")
    register(tracker, 2, "two", v2=ih(102))
    announce(app, 1, torrent=2, left=0)
    files = call(app, "/scrape").decoded[b"files"]
    assert files == {
        ih(1): {b"complete": 0, b"incomplete": 0, b"downloaded": 0, b"downloaders": 0, b"name": b"one"},
        ih(2): {b"complete": 1, b"incomplete": 0, b"downloaded": 0, b"downloaders": 0, b"name": b"two"},
        ih(102): {b"complete": 1, b"incomplete": 0, b"downloaded": 0, b"downloaders": 0, b"name": b"two"},
    }
    # Naming hashes still works with full scrape on.
    assert set(scrape(app, 2)) == {ih(2)}


# --------------------------------------------------------------------------------------
# our own faults
# --------------------------------------------------------------------------------------

def broken(info_hash, now, limit):
    raise RuntimeError("database on fire at /var/lib/secret/path")


def test_a_store_fault_is_a_failure_with_retry_in_and_a_logged_traceback(make_app, monkeypatch, tracker_log):
    """BEP 31: a fault of ours tells the client when to come back; the traceback goes to
    the error log as an error, never to the client."""
    app, tracker = make_app()
    register(tracker, 1)
    monkeypatch.setattr(tracker.store, "find_swarm", broken)
    answer = announce(app, 1)
    assert (answer.status, answer.decoded) == ("200 OK", failure(SERVER_FAULT, 1))
    assert b"fire" not in answer.body and b"Traceback" not in answer.body
    [(level, logged)] = tracker_log()
    assert level == "ERROR"
    assert logged.startswith("unexpected fault answering a request:\nTraceback (most recent call last)")
    assert "RuntimeError: database on fire at /var/lib/secret/path" in logged


def test_a_held_swarm_is_answered_whole_while_the_database_is_hung(make_app, monkeypatch):
    """The host holds a swarm whole once read: new peers, known ones and their stops are
    answered with no database call; a completion (written through first) gets the bencoded
    `retry in` (BEP 31) that every request meeting the outage gets."""
    app, tracker = make_app()
    register(tracker, 1)
    assert b"interval" in announce(app, 1).decoded

    def hung(*args):
        raise StoreUnavailable("hung")

    for call in ("find_peer", "find_swarm", "load_swarm", "write_through", "write_batch"):
        monkeypatch.setattr(tracker.store, call, hung)
    assert peer_ids(announce(app, 2, compact=0)) == [pid(1)]
    assert b"interval" in announce(app, 1).decoded
    assert b"interval" in announce(app, 3).decoded
    assert b"interval" in announce(app, 3, event="stopped").decoded
    answer = announce(app, 2, left=0, event="completed")
    # The database's silence is the reason: the wording every other request meeting it gets.
    assert (answer.status, answer.decoded) == ("200 OK", failure(DATABASE_UNAVAILABLE, 1))


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_fault_on_every_request_logs_one_traceback_then_a_count_a_minute(make_app, monkeypatch, tracker_log):
    """Issue 12: 2,000 announces during a database fault wrote 20 MB of tracebacks. Now the
    first is logged in full and the rest are counted, one line a minute."""
    _, tracker = make_app()
    register(tracker, 1)
    clock = FakeClock()
    app = Application(tracker, faults=FaultLog(logging.getLogger("tracker_wsgi.wsgi").error, clock=clock))
    monkeypatch.setattr(tracker.store, "find_swarm", broken)
    for n in range(2000):
        assert announce(app, n % 250 + 1).decoded == failure(SERVER_FAULT, 1)
    [(level, first_minute)] = tracker_log()
    assert level == "ERROR" and first_minute.count("Traceback") == 1
    assert len(first_minute.encode()) < 4096, len(first_minute.encode())

    clock.now += 61  # the next fault after the interval brings the count
    announce(app, 1)
    assert tracker_log() == [("ERROR", "2000 more request faults in the last 61 s "
                                       "(last: RuntimeError: database on fire at /var/lib/secret/path)")]
    for _ in range(500):
        announce(app, 1)
    assert tracker_log() == []
    clock.now += 60  # the faults stopped: the background thread's flush brings the count
    app.faults.flush_summaries()
    assert tracker_log() == [("ERROR", "500 more request faults in the last 60 s "
                                       "(last: RuntimeError: database on fire at /var/lib/secret/path)")]


def test_a_bad_config_file_is_a_failure_with_retry_in_logged_once(tmp_path, monkeypatch, tracker_log):
    """The config error is one line in the error log, once per process, not once per request."""
    monkeypatch.delenv(config_module.ENV_VAR, raising=False)
    path = tmp_path / "tracker.toml"
    path.write_text("intervall = 1800\n")
    app = Application()
    extra = {config_module.ENVIRON_KEY: str(path)}
    answers = [call(app, "/announce", announce_query(ih(1), pid(1)), extra=extra) for _ in range(2)]
    for answer in answers:
        assert (answer.status, answer.decoded) == ("200 OK", failure(SERVER_FAULT, 1))
        assert answer.errors == ""  # a config error is no crash: no traceback
    [(level, logged)] = tracker_log()
    assert level == "ERROR"
    assert logged.startswith(f"configuration error: {path}: unknown key 'intervall'")


def test_a_missing_config_file_is_logged_once_too(tmp_path, monkeypatch, tracker_log):
    monkeypatch.delenv(config_module.ENV_VAR, raising=False)
    path = tmp_path / "missing.toml"
    app = Application()
    for _ in range(2):
        answer = call(app, "/scrape", extra={config_module.ENVIRON_KEY: str(path)})
        assert answer.decoded == failure(SERVER_FAULT, 1)
    assert tracker_log() == [
        ("ERROR", f"configuration error: {path}: cannot read the config file: No such file or directory")]


# --------------------------------------------------------------------------------------
# headers and addresses
# --------------------------------------------------------------------------------------

CONTENT_TYPE_CASES = [
    ("compact announce is binary", {}, BINARY),
    ("compact=1 is binary", {"compact": 1}, BINARY),
    ("dictionary-model announce is text", {"compact": 0}, TEXT),
]


@pytest.mark.parametrize(("fields", "content_type"), [c[1:] for c in CONTENT_TYPE_CASES],
                         ids=[c[0] for c in CONTENT_TYPE_CASES])
def test_content_type(app, fields, content_type):
    """Compact peers are binary (BEP 23): mod_deflate must not treat them as text."""
    assert announce(app, 1, **fields).headers["Content-Type"] == content_type


def test_failures_and_scrapes_are_text(app):
    assert call(app, "/announce").headers["Content-Type"] == TEXT
    assert call(app, "/scrape", urllib.parse.urlencode({"info_hash": ih(1)})).headers["Content-Type"] == TEXT


FORWARDED_CASES = [
    # (id, trusted_proxies, REMOTE_ADDR, X-Forwarded-For, external ip and peer address)
    ("no proxies trusted: header ignored", [], "127.0.0.1", "203.0.113.7", "127.0.0.1"),
    ("untrusted peer: header ignored", ["127.0.0.1/32"], "198.51.100.9", "203.0.113.7", "198.51.100.9"),
    ("trusted proxy: header honoured", ["127.0.0.1/32"], "127.0.0.1", "203.0.113.7", "203.0.113.7"),
    ("trusted proxy, forged left entry", ["127.0.0.1/32"], "127.0.0.1", "6.6.6.6, 203.0.113.7", "203.0.113.7"),
    ("trusted proxy, IPv6 client", ["127.0.0.1/32"], "127.0.0.1", "2001:db8::7", "2001:db8::7"),
]


@pytest.mark.parametrize(("proxies", "remote", "forwarded", "client"), [c[1:] for c in FORWARDED_CASES],
                         ids=[c[0] for c in FORWARDED_CASES])
def test_x_forwarded_for_is_honoured_only_from_trusted_proxies(make_app, proxies, remote, forwarded, client):
    app, tracker = make_app(trusted_proxies=proxies)
    register(tracker, 1)
    query = announce_query(ih(1), pid(1), port=6001)
    answer = call(app, "/announce", query, remote=remote, forwarded_for=forwarded)
    assert answer.decoded[b"external ip"] == ipaddress.ip_address(client).packed  # BEP 24
    # And the peer is handed out at that address.
    other = call(app, "/announce", announce_query(ih(1), pid(2), compact=0), remote="198.51.100.200")
    assert [(p[b"ip"], p[b"port"]) for p in other.decoded[b"peers"]] == [(client.encode(), 6001)]


def test_ip_parameter_is_ignored_with_a_warning_from_an_untrusted_client(app):
    answer = announce(app, 1, ip="203.0.113.50")
    assert answer.decoded[b"warning message"] == (
        b"The ip parameter is ignored; peers are given the address you connect from.")
    other = announce(app, 2, compact=0)
    assert [p[b"ip"] for p in other.decoded[b"peers"]] == [b"10.1.0.1"]


# --------------------------------------------------------------------------------------
# the swarm, end to end
# --------------------------------------------------------------------------------------

def test_a_peer_is_never_sent_itself(app):
    assert announce(app, 1, compact=0).decoded[b"peers"] == []
    assert peer_ids(announce(app, 2, compact=0)) == [pid(1)]
    assert peer_ids(announce(app, 1, compact=0)) == [pid(2)]


def test_seeds_are_never_sent_seeds(app):
    """A seed has nothing to download: it gets only leechers (BEP 3 practice, BitTornado)."""
    announce(app, 1, left=0)
    assert announce(app, 2, left=0, compact=0).decoded[b"peers"] == []  # only another seed there
    announce(app, 3, left=50)  # a leecher
    announce(app, 4, left=10, event="paused")  # a partial seed (BEP 21): nothing to give a seed
    assert peer_ids(announce(app, 2, left=0, compact=0)) == [pid(3)]
    assert peer_ids(announce(app, 3, left=50, compact=0)) == [pid(1), pid(2), pid(4)]


def test_a_partial_seed_is_not_sent_seeds(app):
    """BEP 21: a partial seed wants nothing more, so, like a seed, it is sent leechers only."""
    announce(app, 1, left=0)
    announce(app, 2, left=50)
    assert peer_ids(announce(app, 3, left=10, event="paused", compact=0)) == [pid(2)]


def test_stopped_gets_no_peers_and_leaves_the_swarm(app):
    announce(app, 1)
    announce(app, 2)
    assert counts(scrape(app, 1)) == (0, 2, 0, 2)
    stopped = announce(app, 2, event="stopped").decoded
    assert (stopped[b"peers"], stopped[b"incomplete"]) == (b"", 1)
    assert counts(scrape(app, 1)) == (0, 1, 0, 1)
    assert announce(app, 1, compact=0).decoded[b"peers"] == []


def test_repeated_completed_counts_downloaded_once(app):
    announce(app, 1, event="started", left=100)
    assert announce(app, 1, event="completed", left=0).decoded[b"downloaded"] == 1
    assert announce(app, 1, event="completed", left=0).decoded[b"downloaded"] == 1
    announce(app, 1, left=0)
    assert counts(scrape(app, 1)) == (1, 0, 1, 0)


def test_paused_is_incomplete_but_not_a_downloader(app):
    """BEP 21: scrape's `downloaders` leaves out partial seeds; `incomplete` keeps them."""
    announce(app, 1, left=10, event="paused")
    announce(app, 2, left=100)
    announce(app, 3, left=0)
    assert counts(scrape(app, 1)) == (1, 2, 0, 1)


def test_numwant_caps_the_peer_count(app):
    for n in range(1, 7):
        announce(app, n)
    assert len(compact_peers(announce(app, 7, numwant=2).decoded[b"peers"])) == 2
    assert len(compact_peers(announce(app, 7, numwant=0).decoded[b"peers"])) == 0
    assert len(compact_peers(announce(app, 7).decoded[b"peers"])) == 6  # default 50: everyone else


def test_numwant_is_capped_by_numwant_max(make_app):
    app, tracker = make_app(numwant_default=2, numwant_max=3)
    register(tracker, 1)
    for n in range(1, 7):
        announce(app, n)
    assert len(compact_peers(announce(app, 7, numwant=100).decoded[b"peers"])) == 3
    assert len(compact_peers(announce(app, 7).decoded[b"peers"])) == 2


def test_a_v2_alias_announces_into_the_same_swarm_as_the_v1_hash(make_app):
    """BEP 52 hybrid torrents: v1 clients use the SHA-1, v2 clients the truncated SHA-256;
    both must meet in one swarm."""
    app, tracker = make_app()
    register(tracker, 1, v2=ih(101))
    announce(app, 1, torrent=1, left=0)
    via_alias = announce(app, 2, torrent=101).decoded
    assert (via_alias[b"complete"], via_alias[b"incomplete"]) == (1, 1)
    assert compact_peers(via_alias[b"peers"]) == [("10.1.0.1", 6001)]
    assert compact_peers(announce(app, 3, torrent=1).decoded[b"peers"]) == [("10.1.0.1", 6001), ("10.1.0.2", 6002)]
    assert counts(scrape(app, 1)) == counts(scrape(app, 101), 101) == (1, 2, 0, 2)


def test_ipv6_peers_go_to_peers6(app):
    """BEP 7: compact IPv6 peers are 18 bytes each, under `peers6`."""
    announce(app, 1, remote="2001:db8::1")
    body = announce(app, 2).decoded
    assert body[b"peers"] == b""
    assert body[b"peers6"] == ipaddress.ip_address("2001:db8::1").packed + (6001).to_bytes(2, "big")


def test_key_protects_a_peer_from_another_address(app):
    announce(app, 1, key="s3cret")
    hijack = call(app, "/announce", announce_query(ih(1), pid(1), event="stopped"), remote="203.0.113.66")
    assert hijack.decoded == failure(
        "Duplicated peer_id or changed IP address without the same key. Please restart BitTorrent.")
    assert counts(scrape(app, 1)) == (0, 1, 0, 1)
    moved = call(app, "/announce", announce_query(ih(1), pid(1), key="s3cret"), remote="203.0.113.66")
    assert moved.decoded[b"external ip"] == bytes([203, 0, 113, 66])


# --------------------------------------------------------------------------------------
# refresh over the web: the secret (tests/test_refresh.py: what the refresh then does)
# --------------------------------------------------------------------------------------

SECRET = "4f0c1e3b9a7d2c5e8f6a1b0d3c9e7f2a"
FORM = "application/x-www-form-urlencoded"


@dataclass
class RefreshApp:
    app: Application
    output: Path  # where a refresh that ran wrote its files
    clock: FakeClock  # the refresh gate's
    tracker_log: Callable[[], list[tuple[str, str]]]

    def logged(self) -> list[str]:
        """The tracker's log messages since the last call; every one a warning."""
        records = self.tracker_log()
        assert {level for level, _ in records} <= {"WARNING"}, records
        return [message for _, message in records]


@pytest.fixture
def refresh_app(make_app, shared_dir, tracker_log) -> RefreshApp:
    """An app with refresh_secret set, whose refresh gate has a clock the test turns."""
    torrents, output = shared_dir / "torrents", shared_dir / "output"
    torrents.mkdir()
    app, tracker = make_app(refresh_secret=SECRET, torrent_dir=str(torrents), output_dir=str(output))
    clock = FakeClock()
    log = logging.getLogger("tracker_wsgi.wsgi")
    tracker.faults = FaultLog(log.error, clock=clock, warn=log.warning)
    tracker.refresh_gate = RefreshGate(SECRET.encode(), tracker.faults, clock)
    tracker_log()
    return RefreshApp(app, output, clock, tracker_log)


def post(app, query: str = "refresh", body: bytes = b"", remote: str = "198.51.100.1", **environ) -> Answer:
    extra = {"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": FORM}
    extra.update(environ)
    return call(app, "", query, method="POST", remote=remote, extra=extra)


def with_header(app, query: str = "refresh", secret: str = SECRET, method: str = "GET",
                remote: str = "198.51.100.1") -> Answer:
    return call(app, "", query, method=method, remote=remote, extra={"HTTP_X_REFRESH_SECRET": secret})


def admitted(answer: Answer) -> bool:
    """The secret was taken: the answer is the refresh's report (ran, or not due yet)."""
    return answer.status == "200 OK" and answer.headers["Content-Type"] == "text/plain; charset=utf-8"


def refreshed(answer: Answer) -> bool:
    if answer.headers["Content-Type"] != "text/plain; charset=utf-8":
        return False
    return answer.body.startswith(b"refreshed in ")


SECRET_ACCEPTED_CASES = [
    ("GET with the header", lambda app: with_header(app)),
    ("HEAD with the header", lambda app: with_header(app, method="HEAD")),
    ("POST with the header", lambda app: with_header(app, method="POST")),
]


@pytest.mark.parametrize("send", [c[1] for c in SECRET_ACCEPTED_CASES], ids=[c[0] for c in SECRET_ACCEPTED_CASES])
def test_the_secret_in_a_header_runs_the_refresh(refresh_app, send):
    app, output, logged = refresh_app.app, refresh_app.output, refresh_app.logged
    answer = send(app)
    assert answer.status == "200 OK"
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert (output / "bt_stats.inc").exists()
    assert logged() == []


QUERY_SECRET_CASES = [
    ("GET, the right secret", "GET", f"refresh&secret={SECRET}"),
    ("GET, force-refresh", "GET", f"force-refresh&secret={SECRET}"),
    ("GET, a wrong secret", "GET", "refresh&secret=guess"),
    ("GET, empty", "GET", "refresh&secret="),
    ("POST, the right secret in the query", "POST", f"refresh&secret={SECRET}"),
]


@pytest.mark.parametrize(("method", "query"), [c[1:] for c in QUERY_SECRET_CASES], ids=[c[0] for c in QUERY_SECRET_CASES])
def test_a_secret_in_the_query_string_is_refused_unread(refresh_app, method, query):
    """Apache's access log records every URL: a secret there is no longer a secret. Even
    with the right secret also in the header, the query's is refused, and the log says why."""
    app, output, logged = refresh_app.app, refresh_app.output, refresh_app.logged
    answer = call(app, "", query, method=method, extra={"HTTP_X_REFRESH_SECRET": SECRET})
    assert (answer.status, answer.decoded) == ("200 OK", failure(REFRESH_SECRET_IN_QUERY))
    assert "X-Refresh-Secret header" in REFRESH_SECRET_IN_QUERY
    assert not output.exists()
    assert logged() == ["web refresh refused from 198.51.100.1: secret in the URL, refused unread (it is in the "
                        "access log now: if it was the real one, change refresh_secret)"]


WRONG_SECRET_CASES = [
    # (id, send, what the log line says)
    ("no secret at all", lambda app: call(app, "", "refresh"), "no secret"),
    ("empty header", lambda app: with_header(app, secret=""), "no secret"),
    ("wrong header", lambda app: with_header(app, secret="guess"), "wrong secret in the header"),
    ("header one character short", lambda app: with_header(app, secret=SECRET[:-1]), "wrong secret in the header"),
    ("header one character long", lambda app: with_header(app, secret=SECRET + "0"), "wrong secret in the header"),
    ("POST without a body", lambda app: post(app), "no secret"),
]


@pytest.mark.parametrize(("send", "why"), [c[1:] for c in WRONG_SECRET_CASES], ids=[c[0] for c in WRONG_SECRET_CASES])
def test_a_wrong_or_missing_secret_is_refused_and_logged_with_the_address(refresh_app, send, why):
    app, output, logged = refresh_app.app, refresh_app.output, refresh_app.logged
    answer = send(app)
    assert (answer.status, answer.decoded) == ("200 OK", failure(REFRESH_REFUSED))
    assert not output.exists()
    assert logged() == [f"web refresh refused from 198.51.100.1: {why}"]


def test_web_refresh_off_says_so_and_logs_nothing(make_app, tracker_log):
    app, _ = make_app()
    for answer in (with_header(app), post(app, body=b"secret=x"), call(app, "", "refresh&secret=x")):
        assert answer.decoded == failure(REFRESH_OFF)
    assert tracker_log() == []


class Body(io.BytesIO):
    """A request body that records what is asked of it, and fails the test if it would block."""

    def __init__(self, data: bytes, available: bool = True):
        super().__init__(data)
        self.available, self.asked = available, []

    def read(self, size: int | None = -1) -> bytes:
        self.asked.append(size)
        assert self.available and size is not None and size >= 0, "read a body that is not there: it would block"
        return super().read(size)


BODY_CASES = [
    # (id, body, CONTENT_LENGTH): behind the shipped snippets Apache refuses a body first
    ("no Content-Length (chunked)", Body(b"", available=False), None),
    ("Content-Length 0", Body(b"", available=False), "0"),
    ("the right secret in a body", Body(f"secret={SECRET}".encode()), str(len("secret=") + len(SECRET))),
    ("a huge body", Body(b"secret=x&pad=" + b"p" * 100_000), str(100_013)),
]


@pytest.mark.parametrize(("body", "length"), [c[1:] for c in BODY_CASES], ids=[c[0] for c in BODY_CASES])
def test_a_post_body_is_never_read(refresh_app, body, length):
    """The secret goes in the header only: a body is not read, so none can hold a thread."""
    app = refresh_app.app
    extra = {"wsgi.input": body}
    if length is not None:
        extra["CONTENT_LENGTH"] = length
    answer = call(app, "", "refresh", method="POST", extra=extra)
    assert answer.decoded == failure(REFRESH_REFUSED)
    assert body.asked == []


POST_REFUSED_CASES = [
    ("announce", "/announce", announce_query(ih(1), pid(1))),
    ("scrape", "/scrape", "refresh"),
    ("bare /tracker", "", ""),
    ("an announce at /tracker that mentions refresh", "", announce_query(ih(1), pid(1), refresh=1)),
    ("refresh under another path", "/refresh", "refresh"),
    ("a query too long to read", "", "refresh&x=" + "x" * 9000),
]


@pytest.mark.parametrize(("path", "query"), [c[1:] for c in POST_REFUSED_CASES], ids=[c[0] for c in POST_REFUSED_CASES])
def test_post_is_only_for_the_web_refresh(refresh_app, path, query):
    app, output, logged = refresh_app.app, refresh_app.output, refresh_app.logged
    answer = call(app, path, query, method="POST", extra={"HTTP_X_REFRESH_SECRET": SECRET})
    assert answer.status == "405 Method Not Allowed"
    assert (answer.headers["Allow"], answer.decoded) == ("GET, HEAD", failure(METHOD_NOT_ALLOWED))
    assert not output.exists()
    assert logged() == []


def guess(app, remote: str, n: int = 0) -> dict:
    return with_header(app, secret=f"guess{n}", remote=remote).decoded


def test_a_guessing_address_is_locked_out_and_the_right_secret_from_another_works(refresh_app):
    """Issue 17: 600 wrong guesses from one address locked out the admin at another address
    as long as guessing went on. Now the guesser's address alone is refused unread."""
    app, clock, logged = refresh_app.app, refresh_app.clock, refresh_app.logged
    answers = [guess(app, "203.0.113.7", n) for n in range(600)]
    assert answers == [failure(REFRESH_REFUSED)] * FAILURES_PER_ADDRESS + \
        [failure(REFRESH_LOCKED_OUT)] * (600 - FAILURES_PER_ADDRESS)
    # Refused unread: the right secret from the guessing address is refused too...
    assert with_header(app, remote="203.0.113.7").decoded == failure(REFRESH_LOCKED_OUT)
    # ...while guessing goes on, the right secret from another address runs the refresh.
    assert guess(app, "203.0.113.7") == failure(REFRESH_LOCKED_OUT)
    assert admitted(with_header(app, remote="198.51.100.20"))
    assert guess(app, "203.0.113.7") == failure(REFRESH_LOCKED_OUT)
    # 603 refusals, one line; the rest a count, once the minute is over.
    assert logged() == ["web refresh refused from 203.0.113.7: wrong secret in the header"]
    clock.now += 60
    app._tracker.faults.flush_summaries()
    assert logged() == ["602 more refused web refreshes in the last 60 s (last: web refresh refused from "
                        f"203.0.113.7: refused unread: {FAILURES_PER_ADDRESS} wrong secrets from its address "
                        "within a minute)"]
    # A minute on, the address is checked again.
    assert guess(app, "203.0.113.7") == failure(REFRESH_REFUSED)
    assert admitted(with_header(app, remote="203.0.113.7"))


def test_an_ipv6_slash_64_is_one_address(refresh_app):
    """A host picks any of its /64's 2^64 interface ids: they are one address to the limit."""
    app = refresh_app.app
    for n in range(FAILURES_PER_ADDRESS):
        assert guess(app, f"2001:db8:1:2::{n + 1:x}", n) == failure(REFRESH_REFUSED)
    assert guess(app, "2001:db8:1:2:ffff::1") == failure(REFRESH_LOCKED_OUT)
    assert admitted(with_header(app, remote="2001:db8:1:3::1"))  # the next /64


def test_a_flood_from_many_addresses_is_checked_at_most_so_often(refresh_app):
    """Past FAILURES_PER_MINUTE wrong secrets from all addresses together, only addresses
    that gave the right secret before are still checked: the checks stay bounded (and the
    table of addresses with them), and the admin's usual address still works."""
    app, clock = refresh_app.app, refresh_app.clock
    assert admitted(with_header(app, remote="198.51.100.20"))  # the admin, earlier
    answers = [guess(app, f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", n) for n in range(10_000)]
    assert answers.count(failure(REFRESH_REFUSED)) == FAILURES_PER_MINUTE
    assert answers.count(failure(REFRESH_LOCKED_OUT)) == 10_000 - FAILURES_PER_MINUTE
    assert len(app._tracker.refresh_gate._failures) == FAILURES_PER_MINUTE
    assert with_header(app, remote="192.0.2.99").decoded == failure(REFRESH_LOCKED_OUT)  # new: unread
    assert admitted(with_header(app, remote="198.51.100.20"))  # remembered: checked
    clock.now += 60
    assert admitted(with_header(app, remote="192.0.2.99"))
    # The addresses remembered are bounded too.
    for n in range(REMEMBERED_ADDRESSES + 5):
        assert admitted(with_header(app, remote=f"192.0.2.{n + 100}"))
    assert len(app._tracker.refresh_gate._known) == REMEMBERED_ADDRESSES
