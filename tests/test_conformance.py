"""Issue #18's "conformance in every topology": the probe of tests/conformance.py (real HTTP
to the announce and scrape URLs, every check what a BitTorrent client relies on) run
whole against a real Apache in each topology: daemon mode with 1 and 2 (routed) processes,
embedded mode (event MPM, 2 children: both must have answered), embedded mode with
keep-alive allowed, and two Apache hosts on one MariaDB (each check's announces at one host
or both; what crosses hosts may take 2 x sync_interval). Each topology is probed twice: a
new connection per request, then keep-alive. Every check must pass; the totals are printed
(pytest -s).

And the probe can fail: in-process, the tracker itself passes every check, while the bench's
hello-world app and the tracker behind a few deliberately broken front ends fail the checks
that watch for what they break.
"""

from __future__ import annotations

import re
import runpy
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

import conformance
from conftest import REPO, make_run_dir, start_apache
from test_e2e_apache import config_text, register
from test_one_truth import ANSWERED_BY, ANSWERED_BY_WSGI
from test_topologies import KEEP_ALIVE, apache_dir_with
from tracker_wsgi import apache_conf
from tracker_wsgi import config as config_module
from tracker_wsgi.model import Torrent
from tracker_wsgi.store import open_store
from tracker_wsgi.wsgi import Application, build_tracker

SECOND_ADDRESS = "127.0.0.2"  # another client, for the key rule (all of 127/8 is this machine's)
HASHES_PER_RUN = 80  # the probe takes one registered torrent per check (68 checks, a few take two)


def info_hashes(run: int) -> list[bytes]:
    """Run `run`'s torrents: first bytes that spread over the daemon processes' routing, and
    awkward bytes (%, &, +, space, NUL, 0xff) after."""
    return [bytes([(7 * n + run) % 256, 0x25, 0x26, 0x2B, 0x20, 0x00, 0xFF, run]) + n.to_bytes(12, "big")
            for n in range(HASHES_PER_RUN)]


def hybrid(run: int) -> tuple[bytes, bytes]:
    return b"\x41" + bytes([run]) * 19, b"\x42" + bytes([run]) * 19


def register_runs(store_url: str, runs: int) -> None:
    store = open_store(store_url, 2700)
    store.create_tables()
    now = int(time.time())
    for run in range(runs):
        for n, info_hash in enumerate(info_hashes(run)):
            assert store.register(Torrent(info_hash, None, f"run-{run}-{n}", conformance.SIZE), now)
        v1, v2 = hybrid(run)
        assert store.register(Torrent(v1, v2, f"run-{run}-hybrid", conformance.SIZE), now)
    store.close()


def failed(results: list[conformance.Result]) -> dict[str, str]:
    return {r.check.name: r.detail for r in results if r.outcome != "pass"}


# -- in-process: the probe passes the tracker and fails broken ones ------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


@contextmanager
def served(app: Callable) -> Iterator[tuple[str, str]]:
    """`app` over HTTP on 127.0.0.1 and ::1: (IPv4 URL, IPv6 URL) of /tracker."""
    servers = [make_server("127.0.0.1", 0, app, _Server, _QuietHandler),
               make_server("::1", 0, app, _Server6, _QuietHandler)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield (f"http://127.0.0.1:{servers[0].server_port}/tracker", f"http://[::1]:{servers[1].server_port}/tracker")
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def mounted(app: Callable) -> Callable:
    """The app under /tracker, as Apache's WSGIScriptAlias puts it."""
    def mount(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != "/tracker" and not path.startswith("/tracker/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not here"]
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = "/tracker", path.removeprefix("/tracker")
        return app(environ, start_response)
    return mount


@pytest.fixture
def in_process_tracker(sqlite_url, shared_dir):
    """The tracker's WSGI application in this process on a fresh SQLite store, every run's
    torrents registered."""
    tracker = build_tracker(config_module.from_dict({
        "database": sqlite_url, "base_url": "http://torrents.example.org/", "torrent_dir": str(shared_dir / "torrents"),
        "output_dir": str(shared_dir / "output"), "swarm_dir": str(shared_dir / "swarms")}))
    register_runs(sqlite_url, 1)
    yield Application(tracker)
    tracker.close()


def probe_in_process(app: Callable, **options: object) -> list[conformance.Result]:
    with served(mounted(app)) as (url, url6):
        probe = conformance.Probe([url], info_hashes(0), ipv6_hosts=[url6], second_address=SECOND_ADDRESS,
                                  hybrid=hybrid(0), seed=1, **options)  # type: ignore[arg-type]
        return probe.run()


def test_the_tracker_in_process_passes_every_check(in_process_tracker):
    results = probe_in_process(in_process_tracker)
    assert failed(results) == {}, "\n".join(r.line() for r in results if r.outcome != "pass")
    assert len(results) == len(conformance.CHECKS) >= 50


def test_the_command_prints_a_line_per_check_and_the_total(in_process_tracker, tmp_path, capsys):
    hashes = tmp_path / "hashes"
    hashes.write_text("".join(h.hex() + "\n" for h in info_hashes(0)))
    with served(mounted(in_process_tracker)) as (url, url6):
        status = conformance.main([url, "--info-hashes", str(hashes), "--ipv6", url6, "--second-address",
                                   SECOND_ADDRESS, "--hybrid", ":".join(h.hex() for h in hybrid(0))])
    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert len(lines) == len(conformance.CHECKS) + 1 and all(line.startswith("pass ") for line in lines[:-1])
    assert lines[-1] == f"conformance: {len(conformance.CHECKS)}/{len(conformance.CHECKS)} passed"


# What the bench's hello-world app (one fixed, empty announce answer) passes: answers that
# are well-formed whatever was asked. Every other check fails against it; each of these
# fails against one of the broken front ends below.
HELLO_PASSES = {"announce-bencoded", "canonical-bencoding", "announce-fields", "content-length"}


def test_the_hello_app_fails_every_check_that_needs_a_tracker():
    hello = runpy.run_path(str(REPO / "bench" / "hello.wsgi"))["application"]
    results = probe_in_process(hello)
    passed = {r.check.name for r in results if r.outcome == "pass"}
    assert passed == HELLO_PASSES, "\n".join(r.line() for r in results)


def ignoring_stopped(app: Callable) -> Callable:
    """A front end that drops `event=stopped`: stopped peers stay in the swarm."""
    def front(environ: dict, start_response: Callable) -> list[bytes]:
        environ["QUERY_STRING"] = environ.get("QUERY_STRING", "").replace("&event=stopped", "")
        return app(environ, start_response)
    return front


def upper_case_escapes_only(app: Callable) -> Callable:
    """A front end that takes %xy in lower-case hex for text (as a naive decoder might)."""
    def front(environ: dict, start_response: Callable) -> list[bytes]:
        environ["QUERY_STRING"] = re.sub(r"%([0-9][a-f]|[a-f][0-9a-f])", r"%25\1", environ.get("QUERY_STRING", ""))
        return app(environ, start_response)
    return front


def html_refusals(app: Callable) -> Callable:
    """A front end that answers every refusal with an HTML 400 page, as opentracker does."""
    def front(environ: dict, start_response: Callable) -> list[bytes]:
        seen: dict = {}
        body = b"".join(app(environ, lambda status, headers, exc_info=None: seen.update(status=status,
                                                                                    headers=headers)))
        if b"failure reason" in body:
            page = b"<html><body><h1>400 Bad Request</h1></body></html>"
            start_response("400 Bad Request", [("Content-Type", "text/html"), ("Content-Length", str(len(page)))])
            return [page]
        start_response(seen["status"], seen["headers"])
        return [body]
    return front


def sloppy_encoder(app: Callable) -> Callable:
    """A front end that re-encodes announce answers with the peers key first (chihaya's
    unsorted keys) and a min interval above the interval, and sends no Content-Length."""
    def front(environ: dict, start_response: Callable) -> list[bytes]:
        seen: dict = {}
        body = b"".join(app(environ, lambda status, headers, exc_info=None: seen.update(status=status,
                                                                                    headers=headers)))
        decoded = conformance.bdecode(body)
        if isinstance(decoded, dict) and b"peers" in decoded:
            decoded[b"min interval"] = 2 * decoded[b"interval"]
            body = b"d" + _bencode(b"peers") + _bencode(decoded.pop(b"peers")) + _bencode(decoded)[1:]
        start_response(seen["status"], [(k, v) for k, v in seen["headers"] if k.lower() != "content-length"])
        return [body[:1], body[1:]]  # two pieces: wsgiref would count a single one
    return front


def _bencode(value: object) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, bytes):
        return b"%d:%b" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(_bencode(v) for v in value) + b"e"
    assert isinstance(value, dict)
    return b"d" + b"".join(_bencode(k) + _bencode(v) for k, v in sorted(value.items())) + b"e"


def doubling_completions(app: Callable) -> Callable:
    """A front end that makes each `completed` a new peer's (a stop and a start first): a
    tracker that counts a completion per event, not once per peer."""
    def front(environ: dict, start_response: Callable) -> list[bytes]:
        query = environ.get("QUERY_STRING", "")
        if "event=completed" in query:
            leecher = re.sub(r"left=0(&|$)", rf"left={conformance.SIZE}\1", query)
            for event in ("stopped", "started"):
                app({**environ, "QUERY_STRING": leecher.replace("event=completed", f"event={event}")},
                    lambda *args: None)
        return app(environ, start_response)
    return front


def crashing_on_start(app: Callable) -> Callable:
    """A front end whose every `started` meets a fault: Apache's HTML 500 page."""
    def front(environ: dict, start_response: Callable) -> list[bytes]:
        if "event=started" in environ.get("QUERY_STRING", ""):
            page = b"<html><body><h1>Internal Server Error</h1></body></html>"
            start_response("500 Internal Server Error", [("Content-Type", "text/html")])
            return [page]
        return app(environ, start_response)
    return front


@dataclass(frozen=True)
class Broken:
    name: str
    front: Callable[[Callable], Callable]
    fails: frozenset[str]  # the checks it must fail
    only: bool = True  # and no others


BROKEN = [
    Broken("ignores stopped", ignoring_stopped, frozenset({
        "stopped-answer", "stopped-never-handed-out", "stopped-finish-counts", "stopped-unknown-peer",
        "stop-honoured-at-other-host", "finish-across-hosts"})),
    Broken("upper-case escapes only", upper_case_escapes_only, frozenset({"escapes-upper-lower"})),
    Broken("HTML refusals", html_refusals, frozenset({
        "canonical-bencoding", "numwant-negative", "key-protects-peer", "no-key-no-move", "key-too-long",
        "scrape-no-hash", "scrape-bad-hash", "scrape-too-many", "missing-info-hash", "info-hash-length",
        "bad-peer-id", "bad-port", "unknown-torrent", "bad-event", "bad-counters", "repeated-parameter",
        "unknown-path", "post-refused", "query-too-long", "retry-in-only-for-faults"})),
    Broken("sloppy encoder", sloppy_encoder, frozenset({"canonical-bencoding", "content-length", "announce-fields"})),
    Broken("counts every completed", doubling_completions, frozenset({"completed-once"})),
    Broken("crashing on started", crashing_on_start, frozenset({"announce-bencoded", "started-counts"}), only=False),
]


@pytest.mark.parametrize("broken", BROKEN, ids=[b.name for b in BROKEN])
def test_a_broken_tracker_fails_the_checks_that_watch_for_it(broken, in_process_tracker):
    results = probe_in_process(broken.front(in_process_tracker))
    failing = set(failed(results))
    assert failing == broken.fails if broken.only else failing >= broken.fails, \
        "\n".join(r.line() for r in results if r.outcome != "pass")


def test_every_check_fails_against_some_broken_tracker():
    """Together, the hello app and the broken front ends fail every check at least once."""
    failing = set().union(*(b.fails for b in BROKEN)) | {c.name for c in conformance.CHECKS} - HELLO_PASSES
    assert failing == {c.name for c in conformance.CHECKS}


# -- every topology, through a real Apache ----------------------------------------------------------

SYNC = 2  # sync_interval of every host here
# README: a peer announced at one host is handed out by the others within about 2 x sync_interval
# (measured here: 1.6-4.0 s with sync_interval 2); the slack is for a loaded 2-core machine.
LAG = 2 * SYNC + 1


@dataclass(frozen=True)
class Topology:
    name: str
    mode: str  # devserver.TOPOLOGIES
    hosts: int = 1  # Apache hosts on one database
    processes: int = apache_conf.DEFAULT_PROCESSES  # daemon mode: processes per host, routed
    # The shipped snippets close each connection after one answer (README, Slow readers): a
    # keep-alive client reconnects. Here Apache keeps them open, so requests do reuse them
    # (and in embedded mode each connection stays with the child that took it).
    keep_alive_allowed: bool = False


TOPOLOGIES = [Topology("daemon-1", "daemon", processes=1), Topology("daemon-2", "daemon"),
              Topology("embedded", "embedded"), Topology("two-hosts", "daemon", hosts=2),
              Topology("embedded-keep-alive", "embedded", keep_alive_allowed=True)]


def free_port6() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


@pytest.fixture
def apaches():
    started: list = []
    yield started
    for apache in started:
        apache.stop()


@pytest.mark.slow
@pytest.mark.parametrize("topology", TOPOLOGIES, ids=[t.name for t in TOPOLOGIES])
def test_every_check_passes_in_every_topology(topology, mysql_url, shared_dir, apaches):
    runs = (False, True)  # keep-alive
    register_runs(mysql_url, len(runs))
    register(mysql_url)
    root = shared_dir / "apache-under-test"
    root.mkdir(mode=0o755)
    tracker_conf = apache_conf.daemon_conf(topology.processes) if topology.mode == "daemon" else None
    # tracker.wsgi wrapped to name the process that answered (the pid; and the daemon group).
    apache_dir = apache_dir_with(root, tracker_conf, ANSWERED_BY_WSGI)
    urls, urls6 = [], []
    for host in range(topology.hosts):
        port6 = free_port6()
        run_dir, config_path = make_run_dir(shared_dir, f"host-{host}", config_text(mysql_url, sync_interval=str(SYNC)))
        site = f"Listen [::1]:{port6}\n" + (KEEP_ALIVE if topology.keep_alive_allowed else "")
        if topology.mode == "embedded":
            # A listening socket per core, each child on its own (SO_REUSEPORT): the kernel
            # spreads new connections over the children by their ports. Without it an idle
            # Apache may hand every connection to one child, and cross-child answers go unchecked.
            site += "ListenCoresBucketsRatio 1\n"
        apache = start_apache(run_dir, config_path, site, topology.mode, apache_dir=apache_dir)
        apaches.append(apache)
        urls.append(f"{apache.base}/tracker")
        urls6.append(f"http://[::1]:{port6}/tracker")

    lines, problems = [], []
    for run, keep_alive in enumerate(runs):
        probe = conformance.Probe(urls, info_hashes(run), lag=LAG if topology.hosts > 1 else 0.0,
                                  keep_alive=keep_alive, second_address=SECOND_ADDRESS, ipv6_hosts=urls6,
                                  hybrid=hybrid(run), seed=run)
        results = probe.run()
        how = "keep-alive" if keep_alive else "a new connection each"
        crossing = ", ".join(f"{r.check.name} {r.detail.split()[-2]} s" for r in results if "crossed" in r.detail)
        lines.append(f"{topology.name}, {how}: conformance {conformance.summary(results)}"
                     + (f"; crossed hosts in: {crossing}" if crossing else "")
                     + "".join(f"; {n} answers {reason!r} with `retry in`, asked again"
                               for reason, n in probe.transport.retried.items()))
        problems += [f"{topology.name}, {how}: {r.line()}" for r in results if r.outcome != "pass"]
        # Every process answered some checks: both children in embedded mode, each daemon.
        for host, url in enumerate(urls):
            answers = Counter(a.headers[ANSWERED_BY.lower()] for a in probe.exchanges
                              if a.url.startswith(url) and ANSWERED_BY.lower() in a.headers)  # not Apache's own
            lines.append(f"  host {host}: answers by process {dict(answers)}")
            answering = set(answers)
            want = apache_conf.EMBEDDED_PROCESSES if topology.mode == "embedded" else topology.processes
            if len(answering) != want:
                problems.append(f"{topology.name}, {how}: host {host} answered by {sorted(answering)}, want {want}")
        reused = sum(a.reused for a in probe.exchanges)
        if keep_alive and topology.keep_alive_allowed and reused < len(probe.exchanges) / 2:
            problems.append(f"{topology.name}: {reused} of {len(probe.exchanges)} requests on a kept connection")
    print("\n" + "\n".join(lines))
    assert not problems, "\n".join(problems + [apache.error_log()[-2000:] for apache in apaches])
