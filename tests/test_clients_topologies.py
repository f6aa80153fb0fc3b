"""Issue #18, "one truth per swarm", with real clients and under load: the processes of one
host, and hosts on one database, answer as one tracker.

Each test runs in three topologies, each on a MariaDB database of its own (mysql_url):
- `daemon`: one Apache in daemon mode (apache/tracker.conf), each swarm in the one process
  its info hash names: the case that holds without any sharing, the tests' control;
- `embedded`: one Apache running the tracker in its 2 children (apache/tracker-embedded.conf),
  any child answering any announce;
- `two_hosts`: two Apaches in daemon mode, each with its own swarm state, on the one
  database (seeders announce to host A, leechers to host B).

What is proved:
- libtorrent, 10 runs: a leecher's every answer names the seeder, it downloads the whole
  file, and its completion is counted once;
- aria2, 10 runs (`--seed-time=0`: `started`, then only `stopped` with left=0, across hosts
  the one at A and the other at B): the scrape counts each leecher's finish exactly once;
- under wrk's load, a new peer is in the very next answer of every process of its host,
  and in the other host's answers within 2 x sync_interval;
- kill -9 of an Apache child (embedded) or a daemon process mid-load: every answer is
  bencoded, at most `retry in`, and every completion answered is counted exactly once.

Clients here all run on 127.0.0.1: libtorrent needs `ssrf_mitigation` off to announce to a
loopback tracker at /tracker/announce and `allow_multiple_connections_per_ip`; DHT, local
peer discovery, UPnP and NAT-PMP are off in both clients, so the tracker is the only way
peers meet.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import libtorrent as lt
import pytest

from conftest import REPO, Apache, announce_query, decode, ih, pid, wait_until, warm
from test_libtorrent import LOOPBACK_SESSION
from tracker_wsgi import apache_conf
from tracker_wsgi.metainfo import parse_torrent
from tracker_wsgi.model import Torrent
from tracker_wsgi.store import open_store

# End to end through real Apaches and clients: scripts/test --quick leaves this file out.
pytestmark = pytest.mark.slow

TOPOLOGIES = ("daemon", "embedded", "two_hosts")
# sync_interval: short, so that what crosses hosts does so within a run (the promise is 2 x
# this); the aria2 test keeps the default, longer than a leecher's whole life (3-4 s: aria2
# acts on a one-second tick), so its `stopped` at B comes before A has written its `started`.
SYNC_INTERVAL = 1
ARIA2_SYNC_INTERVAL = 5
RUNS = 10  # client runs per topology, each on a torrent of its own; every one must succeed
FILE_SIZE = 256 * 1024 + 4321  # small (a run takes about a second), not a whole number of pieces
# How long a client may take for a step that takes well under a second on an idle machine:
# generous, as the 2 cores are shared with Apache, MariaDB and other tests.
STEP_TIMEOUT = 20
# Beyond 2 x sync_interval, what a busy 2-core machine may add before a flush thread runs.
SYNC_SLACK = 3
# Embedded mode: which child answered a probe, by the client's port (Apache logs a request
# just after its answer). Only probes carry the header: wrk's traffic is not logged.
PROBE_HEADER = "X-Probe"
PROBE_LOG = f'LogFormat "%P %{{remote}}p" probe\nCustomLog probe.log probe "expr=-n req(\'{PROBE_HEADER}\')"\n'


# Clients listen below Linux's ephemeral range (32768-60999 by default), where no outgoing
# connection takes a port between our check and the client's bind: wrk, Apache and the
# clients open thousands of connections a second. Each port is handed out once per session.
CLIENT_PORTS = range(20000, 32000)
_ports_given: set[int] = set()
_ports_lock = threading.Lock()


def client_port() -> int:
    """A free TCP port on 127.0.0.1 for a client to listen on."""
    with _ports_lock:
        for port in random.sample(CLIENT_PORTS, len(CLIENT_PORTS)):
            if port in _ports_given:
                continue
            with socket.socket() as probe_socket:
                try:
                    probe_socket.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _ports_given.add(port)
            return port
    raise RuntimeError(f"no free port in {CLIENT_PORTS}")


def tracker_config(database: str, sync_interval: int) -> str:
    """The config of every host here: the test's database, its sync_interval, and
    127.0.0.1 trusted as a proxy, so wrk's peers (bench/announce.lua) announce from many
    addresses by X-Forwarded-For, as through a reverse proxy, and no per-address limit of a
    busy host refuses them; the clients, which send no such header, stay 127.0.0.1."""
    return (f'database = "{database}"\nbase_url = "http://127.0.0.1"\nsync_interval = {sync_interval}\n'
            'trusted_proxies = ["127.0.0.1/32"]\n')


@dataclass
class Topology:
    name: str
    hosts: list[Apache]  # two hosts: A, B
    database: str
    sync_interval: int

    @property
    def crossing(self) -> float:
        """How long a peer or count may take to reach the other host: 2 x sync_interval,
        and what a busy machine adds."""
        return 2 * self.sync_interval + SYNC_SLACK

    @property
    def seeder_host(self) -> Apache:
        return self.hosts[0]

    @property
    def leecher_host(self) -> Apache:
        return self.hosts[-1]

    def register(self, torrent_bytes: bytes) -> bytes:
        """Registers a torrent (all its hashes) as the refresh would; returns its v1 info hash."""
        meta = parse_torrent(torrent_bytes)
        store = open_store(self.database, 2700)
        try:
            assert store.register(meta.torrent, int(time.time()))
        finally:
            store.close()
        return meta.torrent.info_hash

    def scrape(self, host: Apache, info_hash: bytes) -> dict:
        status, _, body = host.get("/tracker/scrape", {"info_hash": info_hash})
        assert status == 200, (status, body[:200])
        return decode(body)[b"files"].get(info_hash, {})

    def error_logs(self) -> str:
        return "\n".join(f"--- {host.run_dir.name}'s error log (tail)\n{host.error_log()[-3000:]}"
                         for host in self.hosts)


def start_topology(name: str, apache_factory, database: str, sync_interval: int) -> Topology:
    store = open_store(database, 2700)
    store.create_tables()
    store.close()
    config = tracker_config(database, sync_interval)
    if name == "embedded":
        hosts = [apache_factory(config, name="embedded", site_conf=PROBE_LOG, topology="embedded")]
    elif name == "daemon":
        hosts = [apache_factory(config, name="daemon", topology="daemon")]
    else:
        hosts = [apache_factory(config, name=host, topology="daemon") for host in ("a", "b")]
    for host in hosts:
        warm(host)  # real clients take a `retry in` at start for a failure, and wait minutes
    return Topology(name, hosts, database, sync_interval)


@pytest.fixture(params=TOPOLOGIES)
def topology(request, apache_factory, mysql_url) -> Topology:
    return start_topology(request.param, apache_factory, mysql_url, SYNC_INTERVAL)


@pytest.fixture(params=TOPOLOGIES)
def aria2_topology(request, apache_factory, mysql_url) -> Topology:
    return start_topology(request.param, apache_factory, mysql_url, ARIA2_SYNC_INTERVAL)


def payload(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(os.urandom(FILE_SIZE))
    return path


def make_torrent(content: Path, announce: str, v1_only: bool = False) -> bytes:
    """A .torrent of `content`: libtorrent's default, a v1 + v2 hybrid, or v1 only (aria2
    speaks no v2)."""
    flags = lt.create_torrent.v1_only if v1_only else 0
    creator = lt.create_torrent(lt.list_files(str(content)), 0, flags)
    creator.add_tracker(announce)
    creator.set_creator("tracker_wsgi test")
    lt.set_piece_hashes(creator, str(content.parent))
    return lt.bencode(creator.generate())


def with_announce(torrent_bytes: bytes, announce: str) -> bytes:
    """The same torrent (the same info, so the same info hashes) announcing elsewhere."""
    meta = lt.bdecode(torrent_bytes)
    meta[b"announce"] = announce.encode()
    meta.pop(b"announce-list", None)
    return lt.bencode(meta)


def refused(answer: dict) -> bool:
    """A `failure reason` answer (BEP 3), with or without `retry in`."""
    return b"failure reason" in answer


def counts_differing(topology: Topology, expected: dict[bytes, int]) -> dict[str, dict[bytes, int]]:
    """Each torrent's scrape `downloaded` where it is not what `expected` says, per host (in
    embedded mode a scrape reaches either child: each host is asked several times)."""
    wrong: dict[str, dict[bytes, int]] = {}
    for host in topology.hosts:
        for _ in range(4 if topology.name == "embedded" else 1):
            for info_hash, count in expected.items():
                got = topology.scrape(host, info_hash).get(b"downloaded")
                if got != count:
                    wrong.setdefault(host.run_dir.name, {})[info_hash] = got
    return wrong


def wait_counted(topology: Topology, expected: dict[bytes, int]) -> dict[str, dict[bytes, int]]:
    """Scrapes every host until each torrent's `downloaded` is what `expected` says (a count
    crosses hosts within 2 x sync_interval), and again 2 x sync_interval later (a batch
    must not count a finish again); returns what differs, per host: empty when all agree."""
    deadline = time.monotonic() + topology.crossing
    while (wrong := counts_differing(topology, expected)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if wrong:
        return wrong
    time.sleep(2 * topology.sync_interval)
    return counts_differing(topology, expected)


def assert_runs(topology: Topology, client: str, failed: list[str], counted: dict[bytes, int]) -> None:
    """Every run succeeded, and each finish of those that did is counted once at every host
    (checked even when some runs failed: each says something of its own)."""
    wrong = wait_counted(topology, counted)
    problems = []
    if failed:
        problems.append(f"{len(failed)} of {RUNS} {client} runs failed: "
                        + "; ".join(f.splitlines()[0] for f in failed))
    if wrong:
        problems.append(f"`downloaded` not 1 after the finishes of {len(counted)} runs that passed: "
                        + ", ".join(f"{host}: {len(hashes)} torrents at {sorted(set(hashes.values()), key=str)}"
                                    for host, hashes in wrong.items()))
    log = "".join(host.error_log() for host in topology.hosts)
    if "Traceback" in log:
        problems.append("a traceback in an error log")
    assert not problems, (f"{topology.name}: " + "; ".join(problems) + "\n"
                          + "".join("\n" + "\n".join(f.splitlines()[:60]) + "\n" for f in failed[:3])
                          + topology.error_logs())


# -- libtorrent ---------------------------------------------------------------------------------


class LibtorrentPeer:
    """One libtorrent session holding one torrent, and every alert it raised (for failures)."""

    def __init__(self, name: str, torrent_bytes: bytes, save_path: Path, seed: bool = False):
        self.name = name
        self.alerts: list[str] = []
        # (event, peers in the answer) of each announce answered, in order
        self.replies: list[tuple[str, int]] = []
        self._sent: dict[str, str] = {}  # the event of the last announce of each hash version
        self.session = lt.session({
            "listen_interfaces": f"127.0.0.1:{client_port()}",
            **LOOPBACK_SESSION,
            "user_agent": f"tracker_wsgi-test-{name}",
            # A tracker that does not answer fails the step at once rather than after the
            # default 30 s (completion) and 10 s (receive).
            "tracker_completion_timeout": 10,
            "tracker_receive_timeout": 5,
            "stop_tracker_timeout": 2,  # bounds the `stopped` announces at session exit
            "alert_mask": (lt.alert_category.error | lt.alert_category.status | lt.alert_category.tracker
                           | lt.alert_category.connect | lt.alert_category.peer),
        })
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(lt.bdecode(torrent_bytes))
        params.save_path = str(save_path)
        if seed:
            params.flags |= lt.torrent_flags.seed_mode  # the file is the torrent's: no check
        self.handle = self.session.add_torrent(params)

    def pump(self) -> None:
        for alert in self.session.pop_alerts():
            self.alerts.append(f"{time.strftime('%H:%M:%S')} {type(alert).__name__}: {alert.message()}")
            if isinstance(alert, lt.tracker_announce_alert):
                self._sent[str(alert.version)] = alert.event.name
            elif isinstance(alert, lt.tracker_reply_alert):
                self.replies.append((self._sent.get(str(alert.version), "?"), alert.num_peers))

    def tracker_errors(self) -> list[str]:
        return [a for a in self.alerts if "tracker_error_alert" in a]

    def announces_sent(self) -> int:
        return sum("tracker_announce_alert" in a for a in self.alerts)

    def report(self) -> str:
        s = self.handle.status()
        return (f"{self.name}: state={s.state} progress={s.progress:.3f} peers={s.num_peers} "
                f"answers (event, peers)={self.replies}\n    " + "\n    ".join(self.alerts[-40:]))

    def close(self) -> None:
        self.session.remove_torrent(self.handle)  # sends `stopped`; the session waits for it
        del self.session


class RunFailed(Exception):
    """A client run that did not do what it must: the first line says what, the rest why."""


def libtorrent_run(topology: Topology, directory: Path) -> bytes:
    """One seeder -> leecher run on a torrent of its own; returns its v1 info hash. Raises
    RunFailed naming the step that did not happen."""
    content = payload(directory / "seed", "payload.bin")
    seeder_torrent = make_torrent(content, f"{topology.seeder_host.base}/tracker/announce")
    info_hash = topology.register(seeder_torrent)
    peers: list[LibtorrentPeer] = []

    def unanswered(peer: LibtorrentPeer) -> bool:
        """True while `peer` awaits an answer (a hybrid torrent's two hashes: two announces)."""
        return peer.announces_sent() == 0 or len(peer.replies) < peer.announces_sent()

    def empty_answers(peer: LibtorrentPeer) -> list[tuple[str, int]]:
        """Answers to the leecher that named no peer while it leeched (a seed is sent only
        leechers: an answer to `completed` may name none)."""
        return [(event, n) for event, n in peer.replies if event != "completed" and n == 0]

    def step(what: str, done, timeout: float = STEP_TIMEOUT) -> None:
        failure = None

        def check() -> bool:
            nonlocal failure
            for peer in peers:
                peer.pump()
            if errors := [e for peer in peers for e in peer.tracker_errors()]:
                failure = f"our tracker answered an error: {errors[0]}"
            elif empty := [e for peer in peers[1:] for e in empty_answers(peer)]:
                failure = f"an answer to the leecher named no peer, the seeder in the swarm: {empty}"
            return failure is not None or done()

        if not wait_until(check, timeout):
            failure = f"timed out after {timeout} s"
        if failure:
            raise RunFailed(f"{failure} (waiting for {what})\n" + "\n".join(peer.report() for peer in peers))

    try:
        seeder = LibtorrentPeer("seeder", seeder_torrent, content.parent, seed=True)
        peers.append(seeder)
        step("the seeder's announces to be answered", lambda: not unanswered(seeder))
        if len(topology.hosts) > 1:
            # The leecher's host learns of the seeder within 2 x sync_interval.
            step("the leecher's host to count the seeder",
                 lambda: topology.scrape(topology.leecher_host, info_hash).get(b"complete") == 1,
                 topology.crossing)
        leecher_torrent = with_announce(seeder_torrent, f"{topology.leecher_host.base}/tracker/announce")
        leecher = LibtorrentPeer("leecher", leecher_torrent, directory / "leech")
        peers.append(leecher)
        step("the leecher to download the file", lambda: leecher.handle.status().is_seeding)
        # Its `completed` announces answered (and so every one before them) before it goes.
        step("the leecher's completion to be answered",
             lambda: not unanswered(leecher) and any(event == "completed" for event, _ in leecher.replies))
        if (directory / "leech" / "payload.bin").read_bytes() != content.read_bytes():
            raise RunFailed("the leecher's file differs from the seeder's")
    finally:
        for peer in peers:
            peer.close()
    return info_hash


def test_libtorrent_leecher_finds_the_seeder_and_downloads(topology, tmp_path):
    """Ten runs: the seeder announces (across hosts to A), the leecher (to B) has it in every
    answer and downloads the file; its completion is counted once, at every host."""
    counted: dict[bytes, int] = {}
    failed: list[str] = []
    for run in range(RUNS):
        try:
            counted[libtorrent_run(topology, tmp_path / f"run-{run}")] = 1
        except RunFailed as exc:
            failed.append(f"run {run}: {exc}")
    assert_runs(topology, "libtorrent", failed, counted)


# -- aria2 --------------------------------------------------------------------------------------


@dataclass
class Exchange:
    """One announce through the EventRouter: who sent it, to which host, and the answer."""

    host: str
    port: int  # the announcing client's listen port (its `port` parameter)
    event: str  # "" for a plain re-announce
    left: int
    answer: dict | None  # None: the answer was not bencoded (`raw` holds it)
    raw: bytes

    @property
    def peers(self) -> int:
        return len((self.answer or {}).get(b"peers", b"")) // 6


class EventRouter:
    """A forwarding proxy for clients' announces: `started` goes to the first host, every
    other announce to the last. With two hosts an aria2 leecher is thus started at A and
    stopped at B, its finish (left=0 on `stopped`) a peer B never saw; with one host it only
    watches. One request per connection, as the tracker's hosts close each after its answer."""

    def __init__(self, hosts: list[Apache]):
        self.hosts = hosts
        self.exchanges: list[Exchange] = []
        self.errors: list[str] = []  # what went wrong in forwarding (a run that waits says so)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def announce_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tracker/announce"

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        try:
            self._exchange(client)
        except Exception as exc:  # noqa: BLE001 - kept for the run's failure, which names it
            self.errors.append(repr(exc))

    def _exchange(self, client: socket.socket) -> None:
        with client:
            client.settimeout(STEP_TIMEOUT)
            request = b""
            while b"\r\n\r\n" not in request and (chunk := client.recv(65536)):
                request += chunk
            query = parse_qs(urlsplit(request.split(b" ", 2)[1].decode("latin-1")).query)
            event = query.get("event", [""])[0]
            host = self.hosts[0] if event == "started" else self.hosts[-1]
            with socket.create_connection(("127.0.0.1", host.port), timeout=STEP_TIMEOUT) as upstream:
                upstream.sendall(request)
                response = b""
                while chunk := upstream.recv(65536):
                    response += chunk
            body = response.partition(b"\r\n\r\n")[2]
            try:
                answer = decode(body)
            except Exception:  # noqa: BLE001 - what is not bencoded is kept raw, and fails the run
                answer = None
            # Recorded before the client has it: a client that exits on it finds it here.
            self.exchanges.append(Exchange(host.run_dir.name, int(query["port"][0]), event,
                                           int(query["left"][0]), answer, response))
            client.sendall(response)

    def of(self, port: int) -> list[Exchange]:
        return [e for e in self.exchanges if e.port == port]

    def close(self) -> None:
        self.listener.close()


ARIA2_RUNS_AT_ONCE = 5
ARIA2_OPTIONS = [
    "--no-conf=true", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
    "--enable-peer-exchange=false", "--disable-ipv6=true", "--follow-torrent=false",
    "--bt-tracker-connect-timeout=5", "--bt-tracker-timeout=10", "--summary-interval=0",
    "--console-log-level=warn", "--log-level=info",
]


def aria2(role: str, torrent: Path, directory: Path, port: int, *options: str) -> subprocess.Popen:
    """aria2c as `role`, its log (info) in <role>.log and its console in <role>.out beside
    `directory`."""
    with open(directory.parent / f"{role}.out", "wb") as console:
        return subprocess.Popen(
            ["aria2c", *ARIA2_OPTIONS, f"--listen-port={port}", f"--dir={directory}",
             f"--log={directory.parent / f'{role}.log'}", *options, str(torrent)],
            stdout=console, stderr=subprocess.STDOUT)


def aria2_run(topology: Topology, router: EventRouter, directory: Path) -> bytes:
    """One aria2 seeder -> leecher (--seed-time=0) run; returns the torrent's info hash.
    Raises RunFailed naming what did not happen."""
    content = payload(directory / "seed", "payload.bin")
    torrent_bytes = make_torrent(content, router.announce_url, v1_only=True)
    info_hash = topology.register(torrent_bytes)
    torrent = directory / "payload.torrent"
    torrent.write_bytes(torrent_bytes)
    seeder_port, leecher_port = client_port(), client_port()
    processes = []

    def failed(what: str) -> RunFailed:
        logs = "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
                         for log in sorted(directory.glob("*.log")) + sorted(directory.glob("*.out")))
        return RunFailed(f"{what}\nannounces: {router.of(seeder_port) + router.of(leecher_port)}\n"
                         f"router errors: {router.errors}\n{logs}")

    try:
        seeder = aria2("seeder", torrent, directory / "seed", seeder_port, "--seed-time=10", "--seed-ratio=0.0",
                       "--bt-seed-unverified=true")
        processes.append(seeder)
        if not wait_until(lambda: router.of(seeder_port) or seeder.poll() is not None, STEP_TIMEOUT):
            raise failed("the seeder's `started` was not answered")
        if not router.of(seeder_port):
            raise failed(f"the seeder exited {seeder.returncode}")
        if (first := router.of(seeder_port)[0]).answer is None or refused(first.answer):
            raise failed(f"the seeder's `started` was answered {first.raw[-200:]!r}")
        leecher = aria2("leecher", torrent, directory / "leech", leecher_port, "--seed-time=0")
        processes.append(leecher)

        def leeching_in_vain() -> list[Exchange]:
            """Answers to the leecher while it leeched that named no peer (so it would wait
            an interval; a refusal names none either)."""
            return [e for e in router.of(leecher_port) if e.event != "stopped" and e.peers == 0]

        if not wait_until(lambda: leecher.poll() is not None or leeching_in_vain(), STEP_TIMEOUT):
            raise failed(f"the leecher did not finish in {STEP_TIMEOUT} s")
        if leecher.poll() is None:
            answer = leeching_in_vain()[0].answer
            if answer is None or refused(answer):
                raise failed(f"the leecher's `started` was answered {answer}")
            raise failed("an answer to the leecher named no peer, the seeder in the swarm")
        if leecher.returncode != 0:
            raise failed(f"the leecher exited {leecher.returncode}")
        if (directory / "leech" / "payload.bin").read_bytes() != content.read_bytes():
            raise failed("the leecher's file differs from the seeder's")
        exchanges = router.of(leecher_port)
        if bad := [e.raw[-200:] if e.answer is None else e.answer[b"failure reason"]
                   for e in exchanges if e.answer is None or refused(e.answer)]:
            raise failed(f"an announce of the leecher's was answered {bad[0]!r}")
        # What this run is about: a `started`, then only a `stopped` that says left=0 (and,
        # across hosts, the two at different hosts).
        events = [(e.event, e.left == 0, e.host) for e in exchanges]
        hosts = [h.run_dir.name for h in topology.hosts]
        if events != [("started", False, hosts[0]), ("stopped", True, hosts[-1])]:
            raise failed(f"the leecher's announces were {events}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()  # aria2 announces `stopped` as it goes
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return info_hash


def test_aria2_leecher_finish_is_counted_once(aria2_topology, tmp_path):
    """Ten aria2 runs, each leecher with --seed-time=0: it announces `started` (across hosts
    at A), downloads from the seeder, and announces only `stopped` with left=0 (at B). Each
    finish is counted exactly once: the scrape's `downloaded` is 1 at every host. With
    sync_interval 5 the leecher's `stopped` at B comes before A has written its `started`."""
    router = EventRouter(aria2_topology.hosts)
    counted: dict[bytes, int] = {}
    failed: list[str] = []

    def run(number: int) -> None:
        try:
            counted[aria2_run(aria2_topology, router, tmp_path / f"run-{number}")] = 1
        except RunFailed as exc:
            failed.append(f"run {number}: {exc}")

    try:
        # aria2 acts on a one-second tick (a run takes 4-6 s, mostly waiting): a few runs
        # at once, each on its own torrent, keep the file's runtime down.
        with ThreadPoolExecutor(ARIA2_RUNS_AT_ONCE) as pool:
            list(pool.map(run, range(RUNS)))
    finally:
        router.close()
    assert_runs(aria2_topology, "aria2", failed, counted)


# -- under load ---------------------------------------------------------------------------------

BENCH_LUA = REPO / "bench" / "announce.lua"
BENCH_TORRENTS, BENCH_PEERS_PER_THREAD = 20, 200
# Each probe asks on a connection of its own (the hosts close each after one answer), until
# both of a host's children have answered, or this many connections.
PROBE_CONNECTIONS = 200


def bench_info_hash(i: int) -> bytes:
    """bench/announce.lua's torrent i (bench/run.py registers the same)."""
    return hashlib.sha1(f"bench-torrent-{i}".encode()).digest()


class Load:
    """wrk sending bench/announce.lua's traffic (announces of its many peers, ~5 % started and
    stopped, 10 % scrapes) to every host, 8 connections each, until stopped."""

    def __init__(self, topology: Topology):
        assert shutil.which("wrk"), "wrk, the load of these tests, is not installed: apt-get install wrk"
        store = open_store(topology.database, 2700)
        try:
            for i in range(BENCH_TORRENTS):
                store.register(Torrent(bench_info_hash(i), None, f"bench torrent {i}", 1 << 30), int(time.time()))
        finally:
            store.close()
        self.processes = [subprocess.Popen(
            ["wrk", "-t1", "-c8", "-d600s", "-s", str(BENCH_LUA), f"{host.base}/tracker", "--",
             str(BENCH_TORRENTS), str(BENCH_PEERS_PER_THREAD)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for host in topology.hosts]

    def stop(self) -> list[int]:
        """Stops wrk (SIGINT: it prints its summary); returns the requests each sent."""
        sent = []
        for process in self.processes:
            process.send_signal(signal.SIGINT)
        for process in self.processes:
            out = process.communicate(timeout=30)[0]
            found = re.search(r"(\d+) requests in", out)
            assert found, out
            sent.append(int(found.group(1)))
        return sent

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def compact_ports(answer: dict) -> set[int]:
    peers = answer[b"peers"]
    return {int.from_bytes(peers[i + 4:i + 6], "big") for i in range(0, len(peers), 6)}


def probe(host: Apache, info_hash: bytes, peer: int, port: int, **extra) -> tuple[int, dict]:
    """An announce on a connection of its own; returns the client port it came from and the
    decoded answer (every answer must be bencoded)."""
    connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=60)
    try:
        connection.request("GET", "/tracker/announce?" + announce_query(info_hash, pid(peer), port, numwant=200,
                                                                       **extra), headers={PROBE_HEADER: "1"})
        client_port = connection.sock.getsockname()[1]
        return client_port, decode(connection.getresponse().read())
    finally:
        connection.close()


def answering_process(topology: Topology, host: Apache, client_port: int) -> str:
    """Which process answered the probe from `client_port`: in embedded mode the child
    probe.log names; in daemon mode always the one the info hash names."""
    if topology.name != "embedded":
        return "daemon process"
    log = host.run_dir / "probe.log"
    found = None

    def logged() -> bool:
        nonlocal found
        lines = log.read_text().split("\n") if log.exists() else []
        found = next((child for child, port in (line.split() for line in reversed(lines) if line)
                      if int(port) == client_port), None)
        return found is not None

    assert wait_until(logged, 10), f"no probe.log line for client port {client_port}"
    return f"child {found}"


def processes_per_host(topology: Topology) -> int:
    """Processes of one host that answer a swarm: embedded mode's children (any child takes
    any connection); in daemon mode the one process its info hash's first byte names."""
    return apache_conf.EMBEDDED_PROCESSES if topology.name == "embedded" else 1


TRIALS = 5  # fresh swarms per topology in the discovery test


def discovery_trial(topology: Topology, trial: int) -> str | None:
    """A seeder announced at one process of the first host, then a leecher asking on new
    connections until every process of that host answered (each answer must name the
    seeder), then (two hosts) at the other host until it names the seeder, within 2 x
    sync_interval. Returns what went wrong, or None."""
    seeder_port, leecher_port = 20000 + trial, 30000 + trial
    host = topology.seeder_host
    client_port, answer = probe(host, ih(trial), 1, seeder_port, left=0, event="started")
    if refused(answer):
        return f"swarm {trial}: the seeder's `started` at {host.run_dir.name} was answered {answer}"
    announced = time.monotonic()
    seeder_child = answering_process(topology, host, client_port)
    children: set[str] = set()
    event = "started"
    for _ in range(PROBE_CONNECTIONS):
        client_port, answer = probe(host, ih(trial), 2, leecher_port, event=event)
        event = ""
        child = answering_process(topology, host, client_port)
        children.add(child)
        if refused(answer) or seeder_port not in compact_ports(answer):
            return (f"swarm {trial}: {host.run_dir.name}'s {child} answered the leecher "
                    f"{time.monotonic() - announced:.2f} s after the seeder's announce at {seeder_child} "
                    f"without the seeder: {answer}")
        if len(children) == processes_per_host(topology):
            break
    else:
        return f"swarm {trial}: {PROBE_CONNECTIONS} connections reached only processes {children}"
    if len(topology.hosts) == 1:
        return None
    other, answers = topology.leecher_host, []

    def other_has_it() -> bool:
        answers.append(probe(other, ih(trial), 3, leecher_port + 1000)[1])
        return not refused(answers[-1]) and seeder_port in compact_ports(answers[-1])

    limit = topology.crossing
    if not wait_until(other_has_it, limit, interval=0.1):
        return (f"swarm {trial}: host {other.run_dir.name} did not hand out the seeder announced at "
                f"{host.run_dir.name} within {limit} s; its answers: {sorted(set(map(repr, answers)))[:3]}")
    return None


def test_new_peer_is_in_the_next_answer_of_every_process_under_load(topology):
    """With wrk loading every host: a peer announced at one process is in the very next
    answer of every process of its host (embedded: probes on new connections until both
    children have answered, every answer naming it), and in the other host's answers within
    2 x sync_interval, in each of 5 fresh swarms."""
    store = open_store(topology.database, 2700)
    for trial in range(TRIALS):
        assert store.register(Torrent(ih(trial), None, f"discovery-{trial}", 1000), int(time.time()))
    store.close()
    with Load(topology) as load:
        time.sleep(1)  # wrk's connections are up
        problems = [problem for trial in range(TRIALS) if (problem := discovery_trial(topology, trial))]
        sent = load.stop()
    assert all(n > 100 for n in sent), f"wrk sent {sent} requests: not a load"
    assert not problems, (f"{topology.name}: {len(problems)} of {TRIALS} swarms: " + "\n".join(problems)
                          + "\n" + topology.error_logs())


# -- kill -9 mid-load ---------------------------------------------------------------------------

KILL_CLIENTS = 6  # threads, each a client moving peers through started -> completed -> stopped
KILL_TORRENTS = 4
COMPLETIONS_BEFORE_KILL = COMPLETIONS_AFTER_KILL = 15
RETRY_PAUSE = 0.2  # a client here retries at once, not after `retry in`'s minutes
# What a client meets when the process holding its connection dies: the connection ends
# without an answer. Only embedded mode has Apache's own processes die; in daemon mode
# Apache answers for a dead daemon (a bencoded 500/503).
CONNECTION_LOST = (ConnectionError, http.client.RemoteDisconnected, http.client.IncompleteRead)


def tracker_processes(host: Apache, topology: Topology) -> list[int]:
    """The processes running the tracker: Apache's children (embedded), or its mod_wsgi
    daemon processes, which show as (wsgi:<group>), cut to argv[0]'s length."""
    children = subprocess.run(["pgrep", "-a", "-P", str(host.process.pid)], capture_output=True,
                              text=True).stdout.splitlines()
    return [int(line.split()[0]) for line in children
            if topology.name == "embedded" or line.split(maxsplit=1)[1].startswith("(wsgi:")]


def kill_info_hash(n: int) -> bytes:
    """The clients' torrents: their first bytes 0, 1, 2, ... put them in every daemon process
    of a host (apache/tracker.conf routes by the first byte), so the one killed holds some."""
    return bytes([n]) + ih(100 + n)[1:]


@dataclass
class KillRecord:
    completed: dict[bytes, set[bytes]]  # info hash -> peer ids whose completion was answered
    not_bencoded: list[str]
    refused: list[dict]  # failure answers without `retry in`
    unanswered: list[str]  # announces never answered with success in STEP_TIMEOUT: that client stopped
    retried: int = 0  # `retry in` answers
    lost: int = 0  # connections that ended without an answer


def kill_client(topology: Topology, number: int, record: KillRecord, stop: threading.Event) -> None:
    """Peers one after another, each announcing started, completed and stopped, each request
    to the hosts in turn and from the peer's own address (X-Forwarded-For, trusted), each
    retried until it is answered with success: a peer whose completion was answered ends in
    record.completed."""
    sent = 0
    for serial in itertools.count():
        if stop.is_set():
            return
        info_hash = kill_info_hash(serial % KILL_TORRENTS)
        peer_id = pid(100_000 * (number + 1) + serial)
        address = f"10.{number + 1}.{serial // 250}.{serial % 250 + 1}"
        for event, left in (("started", 1000), ("completed", 0), ("stopped", 0)):
            give_up = time.monotonic() + STEP_TIMEOUT
            while True:
                if time.monotonic() > give_up:
                    record.unanswered.append(f"{event} of {peer_id!r}")
                    return
                host = topology.hosts[sent % len(topology.hosts)]
                sent += 1
                query = announce_query(info_hash, peer_id, 40000 + number, left=left, event=event, numwant=5)
                connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=60)
                try:
                    connection.request("GET", f"/tracker/announce?{query}", headers={"X-Forwarded-For": address})
                    response = connection.getresponse()
                    body = response.read()
                except CONNECTION_LOST:
                    record.lost += 1
                    time.sleep(RETRY_PAUSE)
                    continue
                finally:
                    connection.close()
                try:
                    answer = decode(body)
                except Exception:  # noqa: BLE001 - anything not bencoded is the finding
                    record.not_bencoded.append(f"{response.status} {body[:200]!r}")
                    time.sleep(RETRY_PAUSE)
                    continue
                if not refused(answer):
                    break
                if answer.get(b"retry in"):
                    record.retried += 1
                else:
                    record.refused.append(answer)
                time.sleep(RETRY_PAUSE)
            if event == "completed":
                record.completed.setdefault(info_hash, set()).add(peer_id)


def test_kill_9_of_a_tracker_process_mid_load(topology):
    """Under wrk's load and clients completing downloads (each request to the hosts in
    turn), kill -9 of one of the host's Apache children (embedded) or of a daemon process of
    the first host, which holds some of the clients' swarms: every answer is bencoded, at
    most `retry in` (in embedded mode the connections the dead child held end unanswered),
    and each completion answered is counted exactly once afterwards."""
    store = open_store(topology.database, 2700)
    for n in range(KILL_TORRENTS):
        assert store.register(Torrent(kill_info_hash(n), None, f"kill-{n}", 1000), int(time.time()))
    store.close()
    host = topology.hosts[0]
    record = KillRecord({}, [], [], [])
    stop = threading.Event()

    def completions() -> int:
        return sum(map(len, list(record.completed.values())))

    with Load(topology) as load, ThreadPoolExecutor(KILL_CLIENTS) as pool:
        clients = [pool.submit(kill_client, topology, n, record, stop) for n in range(KILL_CLIENTS)]
        try:
            assert wait_until(lambda: completions() >= COMPLETIONS_BEFORE_KILL, 60), \
                f"{completions()} completions in 60 s before the kill: {record}"
            before = tracker_processes(host, topology)
            victim = before[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = completions()
            # Apache (or mod_wsgi) starts a process in its place, and clients go on completing.
            replaced = wait_until(lambda: len(tracker_processes(host, topology)) == len(before)
                                  and victim not in tracker_processes(host, topology), 60)
            assert replaced, f"no process took {victim}'s place: {tracker_processes(host, topology)}"
            assert wait_until(lambda: completions() >= killed_at + COMPLETIONS_AFTER_KILL, 60), \
                f"{completions() - killed_at} completions in 60 s after the kill: {record}"
        finally:
            stop.set()
            for client in clients:
                client.result(timeout=120)  # each finishes its peer; raises what a client raised
        sent = load.stop()
    assert all(n > 100 for n in sent), f"wrk sent {sent} requests: not a load"
    problems = []
    if record.not_bencoded:
        problems.append(f"{len(record.not_bencoded)} answers not bencoded: {record.not_bencoded[:3]}")
    if record.refused:
        problems.append(f"{len(record.refused)} refusals without `retry in`: {record.refused[:3]}")
    if record.unanswered:
        problems.append(f"retried for {STEP_TIMEOUT} s, never answered with success: {record.unanswered}")
    if record.lost and topology.name != "embedded":
        problems.append(f"{record.lost} connections ended without an answer")
    expected = {info_hash: len(peers) for info_hash, peers in record.completed.items()}
    if wrong := wait_counted(topology, expected):
        problems.append(f"`downloaded` differs from the {sum(expected.values())} completions answered "
                        f"({ {h.hex()[-4:]: n for h, n in expected.items()} }): "
                        + "; ".join(f"{name}: { {h.hex()[-4:]: n for h, n in got.items()} }"
                                    for name, got in wrong.items()))
    assert not problems, (f"{topology.name}, {record.retried} `retry in`, {record.lost} connections lost: "
                          + "\n".join(problems) + "\n" + topology.error_logs())
