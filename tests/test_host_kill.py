"""Issue #18: a whole host killed mid-load loses at most what the README says ("How it fits
together": one sync_interval of its writer's changes), and never an answered completion.

Two Apache hosts in daemon mode, A and B, each with its own swarm_dir, on one MariaDB
database (mysql_url). Client threads move peers through their lives at both hosts (each
peer at its own host, from its own address: started, a re-announce, then a completion, a
finish by `stopped` with left=0, a stop, or staying), each announce on a new connection.
Mid-load, every process of host A is killed at once (SIGKILL to its process group: the
Apache parent, its children and its mod_wsgi daemons), as a machine that loses power.
Then, black-box (HTTP only):
- every completion A answered (and a `completed` A left unanswered, sent again to B as a
  client does with its next tracker) is counted exactly once in B's scrape within
  2 x sync_interval and slack; every answer B gave throughout is bencoded, and a success;
- B hands out exactly the peers whose last answered announce left them in the swarm, but
  for what A had not written: a peer whose `started` (or a stop whose `stopped`) A answered
  within its last sync_interval (and slack) before the kill. The test counts them and fails
  on one older than that.
- A comes back, under load again, (1) on the same swarm_dir (its LMDB survived, as a
  rebooted machine's disk): what it had not written is written, both hosts hand out exactly
  the peers the clients left in the swarms, every completion is still counted once; (2) on
  an empty swarm_dir (a replaced machine): what A had not written stays lost (a lost start
  is handed out by nobody, a lost stop by both hosts until peer_timeout), and the hosts
  agree on the rest and on every count.

A kill -9 of one process of a host is tests/test_clients_topologies.py's.
"""

from __future__ import annotations

import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest

from conftest import APACHE_DIR, announce_query, decode, make_run_dir, pid, wait_until
from tracker_wsgi import devserver
from tracker_wsgi.model import Torrent
from tracker_wsgi.store import open_store

# End to end through real Apaches: scripts/test --quick leaves this file out.
pytestmark = pytest.mark.slow

SYNC_INTERVAL = 2  # long enough that a host has some announces unwritten when it dies
# What a busy 2-core machine may add to a sync_interval before a writer's batch commits, or
# before the other host has read what it wrote.
SYNC_SLACK = 3
CROSSING = 2 * SYNC_INTERVAL + SYNC_SLACK  # the README's "about twice sync_interval", and slack
# A restarted host writes what its dead processes left unwritten at its writer's first round:
# a dead holder's lease goes at once (hoststate.hold_lease), and a round comes within
# sync_interval of a process's first request (one more for slack); the other host reads it
# within CROSSING.
REWRITTEN = 2 * SYNC_INTERVAL + CROSSING
TORRENTS = 4
CLIENTS_PER_HOST = 3  # threads announcing to each host
ACTIVE_PEERS = 4  # peers a client thread moves along at once (it picks one at random each time)
PACE = 0.01  # seconds a client thread waits between announces: a steady, modest load
LOAD_SECONDS = 3 * SYNC_INTERVAL  # before the kill: A has written a few batches
COMPLETIONS_BEFORE_KILL = 10  # completions A answered, at least, before it is killed
B_AFTER_KILL = 2.0  # seconds B goes on under load after A died
LOAD_AFTER_RESTART = 2 * SYNC_INTERVAL
SIZE = 1000  # every torrent's length: a starting leecher reports left=SIZE
# How peers end (weights): `completed` then `stopped`, `completed` and stay a seed, `stopped`
# with left=0 (a finish: aria2 --seed-time=0), `stopped` before finishing, or stay a leecher.
ENDINGS = {"complete_stop": 3, "complete_stay": 2, "finish_by_stop": 2, "abandon": 2, "stay": 2}
PROBE_NET = "172.16"  # the probes' addresses: never a client peer's
STEP_TIMEOUT = 20  # a client gives up an announce not answered within this (connection timeout)


def info_hash(n: int) -> bytes:
    """Torrent n's info hash: its first byte n puts the torrents in both daemon processes
    of a host (apache/tracker.conf routes by the first byte)."""
    return bytes([n]) + b"host-kill-torrent" + n.to_bytes(2, "big")


# -- the hosts --------------------------------------------------------------------------------


@dataclass
class Host:
    """One Apache host in daemon mode, in a process group of its own so that every one of
    its processes dies at once (os.killpg), as on a machine that loses power."""

    name: str
    run_dir: Path
    config_path: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def swarm_dir(self) -> Path:
        return self.run_dir / "swarms"  # conftest.own_directories

    def start(self) -> None:
        """Start (or start again, on the same port, config and swarm_dir)."""
        devserver.prepare_run_dir(self.run_dir)
        self.port = self.port or free_port()
        conf = devserver.httpd_conf(self.run_dir, self.port, self.config_path, APACHE_DIR, topology="daemon")
        (self.run_dir / "httpd.conf").write_text(conf)
        self.process = subprocess.Popen([devserver.APACHE_BIN, "-f", str(self.run_dir / "httpd.conf"),
                                         "-DFOREGROUND"], env={**os.environ, "LANG": "C.UTF-8"},
                                        start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name}: apache exited: {self.error_log()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def processes(self) -> list[int]:
        """Every process of the host: its process group."""
        assert self.process is not None
        found = subprocess.run(["pgrep", "-g", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(line) for line in found.split()]

    def kill(self) -> tuple[list[int], float]:
        """SIGKILL to every process of the host at once; returns their pids and when."""
        assert self.process is not None
        victims = self.processes()
        os.killpg(self.process.pid, signal.SIGKILL)
        at = time.monotonic()
        self.process.wait()
        assert wait_until(lambda: not self.processes(), 10), f"{self.name}: {self.processes()} outlived SIGKILL"
        return victims, at

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            devserver.stop(self.process)
        if self.process is not None and self.processes():
            os.killpg(self.process.pid, signal.SIGKILL)

    def error_log(self) -> str:
        path = self.run_dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def get(self, path_and_query: str, source: str) -> tuple[int, bytes]:
        """One request on a connection of its own, from `source` (X-Forwarded-For: the
        config trusts 127.0.0.1 as a proxy, so every peer has its own address)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=STEP_TIMEOUT)
        try:
            connection.request("GET", path_and_query, headers={"X-Forwarded-For": source})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hosts(shared_dir, mysql_url):
    """Hosts A and B (not started) on one new MariaDB database with TORRENTS registered."""
    store = open_store(mysql_url, 2700)
    try:
        store.create_tables()
        for n in range(TORRENTS):
            assert store.register(Torrent(info_hash(n), None, f"host-kill-{n}", SIZE), int(time.time()))
    finally:
        store.close()
    config = (f'database = "{mysql_url}"\nbase_url = "http://127.0.0.1"\nsync_interval = {SYNC_INTERVAL}\n'
              'trusted_proxies = ["127.0.0.1/32"]\n')
    made = [Host(name, *make_run_dir(shared_dir, name, config)) for name in ("a", "b")]
    yield made
    for host in made:
        host.stop()


# -- the clients --------------------------------------------------------------------------------


@dataclass
class Answered:
    event: str  # "" for a re-announce
    left: int
    host: str
    at: float  # time.monotonic() when the answer came


@dataclass
class Peer:
    """A client's peer: what it sent, what was answered, and what is still to send."""

    number: int
    home: str  # the host it announces to
    torrent: int
    plan: list[tuple[str, int]]  # (event, left) still to send
    answered: list[Answered] = field(default_factory=list)
    in_flight: tuple[str, int] | None = None  # sent, not answered (its host died meanwhile)

    @property
    def peer_id(self) -> bytes:
        return pid(700_000 + self.number)

    @property
    def address(self) -> str:
        """An address of its own, in a /24 of its own (no per-prefix share or rate applies)."""
        return f"10.{self.number >> 8 & 255}.{self.number & 255}.{1 + (self.number >> 16)}"

    @property
    def port(self) -> int:
        return 10_000 + self.number % 50_000

    @property
    def compact(self) -> bytes:
        return socket.inet_aton(self.address) + self.port.to_bytes(2, "big")

    @property
    def known(self) -> bool:
        """Whether the client knows the peer's state: nothing in flight."""
        return self.in_flight is None and bool(self.answered)

    @property
    def in_swarm(self) -> bool:
        """In the swarm by its last answered announce."""
        return bool(self.answered) and self.answered[-1].event != "stopped"

    @property
    def finished(self) -> bool:
        """A completion was answered: `completed` with left=0, or left=0 (a `stopped` here)
        from a peer the answering host knew as a leecher (swarm.finishes)."""
        return any(a.left == 0 and (a.event == "completed" or (i > 0 and self.answered[i - 1].left > 0
                                                               and self.answered[i - 1].host == a.host))
                   for i, a in enumerate(self.answered))

    @property
    def maybe_finished(self) -> bool:
        """Its finish was sent and not answered: the dead host may have counted it or not."""
        return (not self.finished and self.in_flight is not None and self.in_flight[1] == 0
                and bool(self.answered) and self.answered[-1].left > 0)

    def last_change(self) -> Answered:
        """The answered announce that put the peer where it is (in, or out of, the swarm)."""
        return self.answered[-1] if not self.in_swarm else self.answered[0]


def plan_of(rng: random.Random) -> list[tuple[str, int]]:
    ending = rng.choices(list(ENDINGS), weights=list(ENDINGS.values()))[0]
    return [("started", SIZE), ("", SIZE // 2)] + {
        "complete_stop": [("completed", 0), ("", 0), ("stopped", 0)],
        "complete_stay": [("completed", 0)],
        "finish_by_stop": [("stopped", 0)],
        "abandon": [("stopped", SIZE // 2)],
        "stay": [],
    }[ending]


@dataclass
class Load:
    """Client threads announcing to the hosts, and every answer they got."""

    hosts: dict[str, Host]
    rng: random.Random
    peers: list[Peer] = field(default_factory=list)
    not_bencoded: list[str] = field(default_factory=list)
    refused: list[tuple[str, str, float]] = field(default_factory=list)  # host, failure reason, when
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)
    stops: dict[str, threading.Event] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)  # hosts the test killed
    errors: list[str] = field(default_factory=list)  # what a client thread raised

    def new_peer(self, home: str, rng: random.Random) -> Peer:
        with self.lock:
            peer = Peer(len(self.peers) + 1, home, rng.randrange(TORRENTS), plan_of(rng))
            self.peers.append(peer)
        return peer

    def start(self, home: str) -> None:
        stop = self.stops[home] = threading.Event()
        for n in range(CLIENTS_PER_HOST):
            thread = threading.Thread(target=self._client, args=(home, stop, random.Random(self.rng.random())),
                                      name=f"client {home}{n}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, home: str) -> None:
        self.stops[home].set()
        for thread in self.threads:
            if thread.name.startswith(f"client {home}"):
                thread.join(STEP_TIMEOUT + 10)
                assert not thread.is_alive(), f"{thread.name} did not stop"

    def _client(self, home: str, stop: threading.Event, rng: random.Random) -> None:
        try:
            self._announce_until(home, stop, rng)
        except Exception:  # noqa: BLE001 - the test reports it
            with self.lock:
                self.errors.append(traceback.format_exc())

    def _announce_until(self, home: str, stop: threading.Event, rng: random.Random) -> None:
        active: list[Peer] = []
        while not stop.is_set():
            while len(active) < ACTIVE_PEERS:
                active.append(self.new_peer(home, rng))
            peer = rng.choice(active)
            event, left = peer.plan[0]
            if not self.send(peer, home, event, left):
                # The host died with this announce unanswered: a client sends a `completed`
                # again to its next tracker (BEP 12); anything else it leaves (the peer's
                # state is then unknown to the test).
                peer.in_flight = (event, left)
                if event == "completed":
                    other = next(name for name in self.hosts if name != home)
                    if self.send(peer, other, event, left):
                        peer.in_flight = None
                return
            peer.plan.pop(0)
            if not peer.plan:
                active.remove(peer)
            time.sleep(PACE)

    def send(self, peer: Peer, host_name: str, event: str, left: int) -> bool:
        """One announce; records its answer. False: the connection failed on a killed host."""
        host = self.hosts[host_name]
        extra = {"event": event} if event else {}
        query = announce_query(info_hash(peer.torrent), peer.peer_id, peer.port, left=left, numwant=5, **extra)
        while True:
            try:
                status, body = host.get(f"/tracker/announce?{query}", peer.address)
            except (OSError, http.client.HTTPException):
                if host_name in self.dead:
                    return False
                raise
            try:
                answer = decode(body)
            except Exception:  # noqa: BLE001 - anything not bencoded is the finding
                with self.lock:
                    self.not_bencoded.append(f"{host_name}: {status} {body[:200]!r}")
                return True  # not answered with success, not a lost connection either
            if b"failure reason" in answer:
                with self.lock:
                    self.refused.append((host_name, answer[b"failure reason"].decode(errors="replace")
                                         + ("" if answer.get(b"retry in") else " (no `retry in`)"), time.monotonic()))
                if not answer.get(b"retry in"):
                    return True
                time.sleep(0.2)  # `retry in`: at once here, not minutes later
                continue
            peer.answered.append(Answered(event, left, host_name, time.monotonic()))
            return True

    def completions(self, host: str) -> int:
        return sum(1 for peer in list(self.peers) if peer.finished and peer.answered[-1].host == host)


# -- what the hosts say -----------------------------------------------------------------------------


_probes = iter(range(1, 1 << 16))


def handed_out(host: Host, torrent: int) -> set[bytes]:
    """Every peer of the swarm the host hands out (compact), asked by a probe leecher (a
    leecher is sent seeds and leechers) that stops at once."""
    number = next(_probes)
    address = f"{PROBE_NET}.{number >> 8}.{number & 255}"
    peer_id = pid(900_000 + number)
    query = announce_query(info_hash(torrent), peer_id, 9999, left=SIZE, numwant=200, event="started")
    status, body = host.get(f"/tracker/announce?{query}", address)
    answer = decode(body)
    assert b"failure reason" not in answer, (host.name, answer)
    peers = answer[b"peers"]
    host.get("/tracker/announce?" + announce_query(info_hash(torrent), peer_id, 9999, left=SIZE, event="stopped"),
             address)
    probe = socket.inet_aton(f"{PROBE_NET}.0.0")[:2]
    return {peers[i:i + 6] for i in range(0, len(peers), 6) if peers[i:i + 2] != probe}


def downloaded(host: Host) -> dict[int, int]:
    """Each torrent's scrape `downloaded` at the host."""
    query = urlencode([("info_hash", info_hash(n)) for n in range(TORRENTS)])
    status, body = host.get(f"/tracker/scrape?{query}", "127.0.0.1")
    assert status == 200, (host.name, status, body[:200])
    files = decode(body)[b"files"]
    return {n: files.get(info_hash(n), {}).get(b"downloaded") for n in range(TORRENTS)}


def count_problems(host: Host, load: Load) -> dict[int, tuple]:
    """Torrents whose `downloaded` at the host is not the completions answered (and, at
    most, the finishes the killed host left unanswered): torrent -> (got, least, most)."""
    # Clients may be announcing meanwhile: at least what was answered before the scrape,
    # at most what was answered (or may have been counted unanswered) after it.
    least = Counter(peer.torrent for peer in list(load.peers) if peer.finished)
    got = downloaded(host)
    peers = list(load.peers)
    maybe = Counter(peer.torrent for peer in peers if peer.maybe_finished or peer.finished)
    maybe.subtract(least)
    return {n: (got[n], least[n], least[n] + maybe[n]) for n in range(TORRENTS)
            if got[n] is None or not least[n] <= got[n] <= least[n] + maybe[n]}


def view_differences(host: Host, load: Load, lost: set[bytes] = frozenset()) -> list[Peer]:
    """Peers the host hands out though their last answered announce took them out of the
    swarm, or does not though it put them in; `lost`: peers (compact) expected the other way
    round. Peers whose state the client does not know (an announce in flight at the kill)
    are not judged."""
    wrong = []
    for torrent in range(TORRENTS):
        got = handed_out(host, torrent)
        for peer in list(load.peers):
            if peer.torrent == torrent and peer.known and (peer.compact in got) != (peer.in_swarm != (peer.compact in lost)):
                wrong.append(peer)
    return wrong


def describe(peers: list[Peer], since: float) -> str:
    return "; ".join(f"peer {peer.number} at {peer.home}: {'in' if peer.in_swarm else 'out'} by "
                     f"{[(a.event, a.left, a.host, round(a.at - since, 2)) for a in peer.answered]}"
                     for peer in peers[:8])


@pytest.mark.parametrize("disk", ["same_swarm_dir", "empty_swarm_dir"])
def test_whole_host_killed_mid_load(hosts, disk):
    """Kill every process of A at once under load on both hosts; check B's counts and
    peers against what the clients were answered; restart A on its swarm_dir (`disk`
    same_swarm_dir) or on an empty one, load both again, check both hosts."""
    a, b = hosts
    for host in hosts:
        host.start()
    load = Load({"a": a, "b": b}, random.Random(int(os.environ.get("HOST_KILL_SEED", "0")) or None))
    problems: list[str] = []
    load.start("a")
    load.start("b")
    began = time.monotonic()
    try:
        assert wait_until(lambda: time.monotonic() - began >= LOAD_SECONDS
                          and load.completions("a") >= COMPLETIONS_BEFORE_KILL, 60), \
            f"{load.completions('a')} completions at A in 60 s"
        # -- the kill: every process of A at once, B under load --------------------------------
        load.dead.add("a")
        victims, killed_at = a.kill()
        load.stop("a")  # A's clients end; a `completed` A left unanswered goes to B
        completions_a = load.completions("a")
        in_flight = [peer for peer in load.peers if peer.in_flight]
        # Every completion A answered is in the database: B's scrape says so within
        # CROSSING, B still under load.
        if not wait_until(lambda: not count_problems(b, load), killed_at + CROSSING - time.monotonic()):
            problems.append(f"after the kill, B's `downloaded` (got, least, most) per torrent: {count_problems(b, load)}")
        counted_after = time.monotonic() - killed_at
        time.sleep(max(0.0, killed_at + B_AFTER_KILL - time.monotonic()))
        load.stop("b")
        # What A had not written: peers B does not hand out though they are in, or does
        # though they left. By CROSSING after the kill, B has read everything A wrote.
        time.sleep(max(0.0, killed_at + CROSSING - time.monotonic()))
        differ = view_differences(b, load)
        lost = [peer for peer in differ if peer.home == "a"]
        if wrong_at_b := [peer for peer in differ if peer.home == "b"]:
            problems.append(f"B hands out its own peers wrong: {describe(wrong_at_b, killed_at)}")
        ages = sorted(killed_at - peer.last_change().at for peer in lost)
        if too_old := [peer for peer in lost if killed_at - peer.last_change().at > SYNC_INTERVAL + SYNC_SLACK]:
            problems.append(f"A lost announces answered more than {SYNC_INTERVAL + SYNC_SLACK} s before the "
                            f"kill: {describe(too_old, killed_at)}")
        lost_set = {peer.compact for peer in lost}
        a_peers = [peer for peer in load.peers if peer.home == "a" and peer.known]
        # -- A comes back -------------------------------------------------------------------------
        if disk == "empty_swarm_dir":
            for path in a.swarm_dir.iterdir():
                path.unlink() if path.is_file() else shutil.rmtree(path)
        a.start()
        restarted_at = time.monotonic()
        load.dead.discard("a")
        still_lost = lost_set if disk == "empty_swarm_dir" else set()
        views: dict[str, list[Peer]] = {}
        right_after: dict[str, float] = {}

        def agree() -> bool:
            """Each host hands out exactly the peers the clients left in the swarms (but
            for those still lost); notes when each first did."""
            for host in hosts:
                views[host.name] = view_differences(host, load, still_lost)
                if not views[host.name]:
                    right_after.setdefault(host.name, time.monotonic() - restarted_at)
            return len(right_after) == len(hosts) and not any(views.values())

        agree()
        stale_at_a = list(views["a"])
        # A restarted on its swarm_dir answers from what it held when it died until its
        # writer's first round, which writes what it had not written and takes in what B
        # changed meanwhile (the dead writer's lease went with it).
        if not wait_until(agree, restarted_at + REWRITTEN - time.monotonic(), interval=0.2):
            problems.append(f"{REWRITTEN} s after A's restart, peers handed out wrong: "
                            + "; ".join(f"{name}: {len(peers)}: {describe(peers, killed_at)}"
                                        for name, peers in views.items() if peers))
        # Under load again, both hosts agree on every peer and count.
        load.start("a")
        load.start("b")
        time.sleep(LOAD_AFTER_RESTART)
        load.stop("a")
        load.stop("b")
        if not wait_until(agree, CROSSING, interval=0.2):
            problems.append("under load after A's restart, peers handed out wrong: "
                            + "; ".join(f"{name}: {len(peers)}: {describe(peers, killed_at)}"
                                        for name, peers in views.items() if peers))
        for host in hosts:
            if not wait_until(lambda host=host: not count_problems(host, load), CROSSING):
                problems.append(f"after A's restart, {host.name}'s `downloaded` (got, least, most): "
                                f"{count_problems(host, load)}")
        time.sleep(2 * SYNC_INTERVAL)  # a batch after that must not count anything again
        for host in hosts:
            if wrong := count_problems(host, load):
                problems.append(f"{2 * SYNC_INTERVAL} s later, {host.name}'s `downloaded` (got, least, most): {wrong}")
    finally:
        for name in list(load.stops):
            load.stops[name].set()
    if load.not_bencoded:
        problems.append(f"{len(load.not_bencoded)} answers not bencoded: {load.not_bencoded[:3]}")
    if plain := [(host, reason) for host, reason, _ in load.refused if reason.endswith("(no `retry in`)")]:
        problems.append(f"refusals: {plain}")
    if load.errors:
        problems.append(f"client threads failed: {load.errors[:3]}")
    summary = (f"{disk}: killed {len(victims)} processes of A after {killed_at - began:.1f} s; "
               f"A answered {completions_a} completions, {len(in_flight)} announces in flight "
               f"({sum(p.in_flight == ('completed', 0) for p in in_flight)} `completed`, sent again to B), "
               f"counted at B after {counted_after:.1f} s; "
               f"of {len(a_peers)} A peers, B did not see {len(lost)} "
               f"({sum(p.in_swarm for p in lost)} starts, {sum(not p.in_swarm for p in lost)} stops), "
               f"answered {ages[0] if ages else 0:.2f}-{ages[-1] if ages else 0:.2f} s before the kill; "
               f"right after its restart A handed out {len(stale_at_a)} peers wrong "
               f"({sum(p.home == 'b' for p in stale_at_a)} of B's); right after it, A: {right_after.get('a', -1):.1f} s, "
               f"B: {right_after.get('b', -1):.1f} s; `retry in` answers (host, s after the kill): "
               f"{[(host, round(at - killed_at, 1)) for host, _, at in load.refused]}")
    print(summary)
    assert not problems, summary + "\n" + "\n".join(problems) + "".join(
        f"\n--- {host.name}'s error log\n{host.error_log()[-3000:]}" for host in hosts)


# `stopped` was counted twice until the store told a retried stop from a new life by the
# stamp of the record the host held (PeerWrite.held_stamp).
@pytest.mark.parametrize("finish", ["completed", "stopped"])
def test_a_finish_sent_again_to_the_other_host_is_counted_once(hosts, finish):
    """A client whose finish A answered but whose answer never arrived (A died as it sent
    it) sends it again to B, its next tracker (BEP 12), before B has read A's write: the
    finish is counted once."""
    a, b = hosts
    for host in hosts:
        host.start()
    load = Load({"a": a, "b": b}, random.Random(0))
    peer = load.new_peer("a", random.Random(0))
    assert load.send(peer, "a", "started", SIZE) and peer.in_swarm
    assert wait_until(lambda: peer.compact in handed_out(b, peer.torrent), CROSSING), "B never read the peer"
    assert load.send(peer, "a", finish, 0) and peer.finished
    assert load.send(peer, "b", finish, 0)
    time.sleep(CROSSING)
    counts = {host.name: downloaded(host)[peer.torrent] for host in hosts}
    assert counts == {"a": 1, "b": 1}, f"one finish of {finish!r}, at A then again at B: `downloaded` {counts}"
