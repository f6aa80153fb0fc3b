"""Issue #20: three front ends on the 3-node Galera cluster (tests/galera.py), through real
Apache: the certification conflicts their load makes, and one node killed under that load.

Front ends A, B and C are Apache hosts in daemon mode, each with its own swarm_dir, all on
one database of the cluster; front end A prefers node 1, B node 2, C node 3 (then the
others in turn: GaleraCluster.front_end_urls). The clients are tests/test_host_kill.py's:
threads moving peers through their lives at each front end (started, a re-announce, then a
completion, a finish by `stopped` with left=0, a stop, or staying), on a few torrents every
front end shares, each announce on a new connection.

The test of the model with three front ends on the cluster is test_one_truth's
(`three-hosts-galera`).
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import mysql.connector
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import announce_query, decode, make_run_dir, pid, wait_until
from galera import galera, galera_front_ends  # noqa: F401 (fixtures)
from test_host_kill import SIZE, TORRENTS, Host, Load, count_problems, downloaded, info_hash
from tracker_wsgi.model import Torrent
from tracker_wsgi.store import open_store

# End to end through real Apaches on a cluster: scripts/test --quick leaves this file out.
pytestmark = pytest.mark.slow

SYNC_INTERVAL = 1  # the shortest config.py allows: the crossings the test waits for are short
# What a loaded 2-core machine (three Apaches, three mariadbd, the clients) may add to a
# sync_interval before a writer's batch commits, or the other front end has read it: up to
# 3.5 s measured, 5.2 s while the killed node caught up (flow control) on a machine running
# another cluster's benchmark beside the test.
SYNC_SLACK = 4
CROSSING = 2 * SYNC_INTERVAL + SYNC_SLACK  # the 2 x sync_interval, and slack
NAMES = ("a", "b", "c")  # front end A on node 1 first, B on node 2, C on node 3
TARGET_CONFLICTS = 1.0  # the issue's: retried conflicts per 1,000 announces, fewer than this
FAILOVER_SECONDS = 5  # the target: the killed node's front end serves again within this
# The tracker's part of a failover: no node commits until the survivors have evicted the
# dead one (the cluster's part, 2-5 s with scripts/galera-cluster's failure detector, longer
# on a starved machine); A's next completion is answered within this of that.
AFTER_EVICTION = 2
# No write commits on any node until the others have evicted a killed one (~3.3 s with
# scripts/galera-cluster's failure detector, and slack): a peer started at A then may cross
# to C that much later.
EVICTION = 4
TRACER_NET = "172.17"  # the tracer peers' addresses (test_host_kill's clients use 10/8, probes 172.16)
# The tracers' torrent, one more than the clients': the clients' peers that stay would grow
# their swarms past numwant_max, and a tracer would then be handed out only by chance.
TRACED = TORRENTS


@pytest.fixture
def front_ends(shared_dir, galera_front_ends):  # noqa: F811
    """Front ends A, B, C started on the cluster, the clients' TORRENTS and the tracers'
    registered; stopped afterwards."""
    store = open_store(galera_front_ends[0], 2700)
    try:
        store.create_tables()
        for n in range(TORRENTS + 1):
            assert store.register(Torrent(info_hash(n), None, f"galera-{n}", SIZE), int(time.time()))
    finally:
        store.close()
    hosts = []
    try:
        for name, url in zip(NAMES, galera_front_ends):
            config = (f'database = "{url}"\nbase_url = "http://127.0.0.1"\nsync_interval = {SYNC_INTERVAL}\n'
                      'trusted_proxies = ["127.0.0.1/32"]\n')
            host = Host(name, *make_run_dir(shared_dir, name, config))
            hosts.append(host)
            host.start()
        yield hosts
    finally:
        for host in hosts:
            host.stop()


# -- what the front ends and the nodes count --------------------------------------------------------


def metric(host: Host, name: str) -> float:
    """A counter of the front end's /tracker/metrics (every daemon process's, summed; each
    folds its own every sync_interval), every label's samples added up."""
    status, body = host.get("/tracker/metrics", "127.0.0.1")
    assert status == 200, (host.name, status, body[:200])
    return sum(sample.value for family in text_string_to_metric_families(body.decode())
               for sample in family.samples if sample.name == name)


def conflicts_and_announces(hosts: list[Host]) -> tuple[int, int]:
    """(transactions that lost a conflict and ran again, announces answered), every front end's."""
    return (sum(int(metric(host, "tracker_wsgi_database_conflicts_total")) for host in hosts),
            sum(int(metric(host, "tracker_wsgi_announces_total")) for host in hosts))


CERTIFICATION = ("wsrep_local_cert_failures", "wsrep_local_bf_aborts")


def node_conflicts(galera) -> Counter:  # noqa: F811
    """Galera's own counts, summed over the nodes up: transactions of a node that failed
    certification, and those aborted by another node's replicated write (brute force). Both
    include what the server retried itself (wsrep_retry_autocommit: single-statement
    autocommit writes) and never told the tracker."""
    counts: Counter = Counter()
    for n in (1, 2, 3):
        for name in CERTIFICATION:
            counts[name] += int(galera.status(n, name) or 0)
    return counts


def conflict_log(galera, since: dict[int, int]) -> list[str]:  # noqa: F811
    """What the nodes logged of conflicts (wsrep_log_conflicts) after byte `since[n]` of each
    node's error log: the statements that lost, for the reader of a failure."""
    lines = []
    for n in (1, 2, 3):
        text = Path(galera.base, f"node{n}", "error.log").read_bytes()[since[n]:].decode(errors="replace")
        lines += [f"node{n}: {line.strip()}" for line in text.splitlines()
                  if any(word in line for word in ("cluster conflict", "Victim thread", "THD:", "SQL:"))]
    return lines


def log_sizes(galera) -> dict[int, int]:  # noqa: F811
    return {n: Path(galera.base, f"node{n}", "error.log").stat().st_size for n in (1, 2, 3)}


def set_log_conflicts(galera, on: bool) -> None:  # noqa: F811
    """wsrep_log_conflicts on every node up (a node restarted meanwhile has it off)."""
    for n in (1, 2, 3):
        try:
            conn = galera.connect(n)
        except mysql.connector.Error:
            continue
        conn.cursor().execute(f"SET GLOBAL wsrep_log_conflicts = {'ON' if on else 'OFF'}")
        conn.close()


def answered(load: Load) -> int:
    return sum(len(peer.answered) for peer in list(load.peers))


# -- certification conflicts --------------------------------------------------------------------

# The load runs until the clients were answered this many announces (at least 10 s, at
# most 60 s: a busy machine answers fewer), enough to count conflicts per 1,000.
CONFLICT_ANNOUNCES = 5000
CONFLICT_LOAD_SECONDS = (10, 60)


def test_three_front_ends_on_the_same_swarms_rarely_conflict(galera, front_ends):  # noqa: F811
    """Starts, stops and completions from all three front ends on the same TORRENTS swarms:
    fewer than TARGET_CONFLICTS transactions per 1,000 announces lose certification (each
    host writes rows of its own: its peers', its swarm_counts row; no announce writes the
    torrents row). Every answer is a success, every completion counted once everywhere."""
    hosts = {host.name: host for host in front_ends}
    set_log_conflicts(galera, True)
    logged_from = log_sizes(galera)
    nodes_before = node_conflicts(galera)
    load = Load(hosts, random.Random())
    try:
        for name in NAMES:
            load.start(name)
        began = time.monotonic()
        time.sleep(CONFLICT_LOAD_SECONDS[0])
        wait_until(lambda: answered(load) >= CONFLICT_ANNOUNCES, began + CONFLICT_LOAD_SECONDS[1] - time.monotonic())
        loaded = time.monotonic() - began
        for name in NAMES:
            load.stop(name)
    finally:
        for stop in load.stops.values():
            stop.set()
        set_log_conflicts(galera, False)
    wrong = {}
    for host in front_ends:
        if not wait_until(lambda host=host: not count_problems(host, load), CROSSING):
            wrong[host.name] = count_problems(host, load)
    time.sleep(2 * SYNC_INTERVAL)  # every process has folded its counts into the metrics
    conflicts, announces = conflicts_and_announces(front_ends)
    nodes = node_conflicts(galera)
    nodes.subtract(nodes_before)
    per_1000 = 1000 * conflicts / announces
    completions = sum(peer.finished for peer in load.peers)
    print(f"three front ends, {TORRENTS} swarms, {loaded:.0f} s: {announces} announces "
          f"({completions} completions), {conflicts} conflicts retried by the tracker ({per_1000:.2f} per 1,000); "
          f"the nodes: {dict(nodes)}; `retry in` answers: {dict(Counter(reason for _, reason, _ in load.refused))}")
    logged = conflict_log(galera, logged_from)
    assert not load.not_bencoded and not load.errors, (load.not_bencoded[:3], load.errors[:3])
    # A front end whose request threads all wait on the database says `busy` (retry in):
    # the load's doing on two cores, not a conflict's.
    assert not [reason for _, reason, _ in load.refused if reason.endswith("(no `retry in`)")], load.refused[:5]
    assert not wrong, f"`downloaded` (got, least, most) per torrent: {wrong}"
    assert announces >= 1000, announces  # enough to say "per 1,000"
    assert per_1000 < TARGET_CONFLICTS, "\n".join(logged[:40])


# -- a node killed under load -------------------------------------------------------------------------


@dataclass
class Crossing:
    """A tracer peer started at one front end, looked for at another."""

    source: str
    seen_at: str
    started: float  # when its `started` was answered (time.monotonic())
    delay: float | None = None  # until the other front end handed it out; None: never, within the wait


@dataclass
class Tracers:
    """Tracer peers started at A (or C), each looked for at C (or A) until it is handed out
    there, then stopped: how long a peer takes to cross, all along the test."""

    hosts: dict[str, Host]
    crossings: list[Crossing] = field(default_factory=list)
    retries: list[tuple[str, float]] = field(default_factory=list)  # (front end, when) of each `retry in`
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="tracers", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(60)

    def announce(self, host: str, torrent: int, number: int, event: str) -> dict:
        """One announce of tracer `number` (a leecher), again after each `retry in`."""
        query = announce_query(info_hash(torrent), pid(800_000 + number), 7000 + number % 1000, left=SIZE,
                               numwant=200, event=event)
        while True:
            status, body = self.hosts[host].get(f"/tracker/announce?{query}", self.address(number))
            answer = decode(body)
            if b"retry in" not in answer:
                assert b"failure reason" not in answer, (host, answer)
                return answer
            self.retries.append((host, time.monotonic()))
            time.sleep(0.2)

    @staticmethod
    def address(number: int) -> str:
        return f"{TRACER_NET}.{number >> 8 & 255}.{number & 255}"

    def compact(self, number: int) -> bytes:
        return socket.inet_aton(self.address(number)) + (7000 + number % 1000).to_bytes(2, "big")

    def _run(self) -> None:
        number = 0
        try:
            while not self.stop.is_set():
                number += 1
                source, seen_at = ("a", "c") if number % 2 else ("c", "a")
                torrent = TRACED
                self.announce(source, torrent, number, "started")
                crossing = Crossing(source, seen_at, time.monotonic())
                self.crossings.append(crossing)
                # The asker is another tracer (a leecher, so it is handed seeds and leechers).
                looker = number + 50_000
                while time.monotonic() < crossing.started + 4 * CROSSING:
                    peers = self.announce(seen_at, torrent, looker, "")[b"peers"]
                    if self.compact(number) in {peers[i:i + 6] for i in range(0, len(peers), 6)}:
                        crossing.delay = time.monotonic() - crossing.started
                        break
                    time.sleep(0.1)
                self.announce(seen_at, torrent, looker, "stopped")
                self.announce(source, torrent, number, "stopped")
        except Exception as exc:  # noqa: BLE001 - the test reports it
            self.errors.append(repr(exc))


@dataclass
class Prober:
    """At each front end, one client after another starts and completes at once: when each
    front end answered completions (which are committed before their answer) around the
    kill. Its peers are the Load's, so their completions are counted with the others'."""

    load: Load
    answered: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # front end: (sent, answered)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for name in NAMES:
            self.answered[name] = []
            thread = threading.Thread(target=self._run, args=(name,), name=f"prober {name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, name: str) -> None:
        rng = random.Random()
        while not self.stop.is_set():
            peer = self.load.new_peer(name, rng)
            peer.plan = []  # none of the client threads': this one's only
            if not self.load.send(peer, name, "started", SIZE):
                return
            sent = time.monotonic()
            if not self.load.send(peer, name, "completed", 0):
                return
            self.answered[name].append((sent, time.monotonic()))
            time.sleep(0.05)

    def serving_again(self, name: str, killed_at: float) -> float | None:
        """Seconds from the kill until the front end answered the first completion sent
        after it."""
        after = [answered for sent, answered in self.answered[name] if sent >= killed_at]
        return min(after) - killed_at if after else None

    def slowest(self, name: str, since: float, until: float) -> float:
        return max((answered - sent for sent, answered in self.answered[name] if since <= sent <= until), default=0)


@dataclass
class Survivors:
    """What the nodes left say of the cluster from the kill on (every 0.2 s): when both had
    evicted the dead node (a Primary component of two), and what else they were meanwhile."""

    galera: object
    nodes: tuple[int, ...]
    since: float = 0.0
    evicted_after: float | None = None
    seen: Counter = field(default_factory=Counter)  # (node, status, size) -> samples
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self, since: float) -> None:
        self.since = since
        self.thread = threading.Thread(target=self._run, name="survivors", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)

    def _run(self) -> None:
        while not self.stop.is_set():
            states = []
            for n in self.nodes:
                try:
                    states.append((n, self.galera.status(n, "wsrep_cluster_status"),
                                   self.galera.status(n, "wsrep_cluster_size")))
                except mysql.connector.Error as exc:
                    states.append((n, f"error {exc.errno}", ""))
            self.seen.update(states)
            if self.evicted_after is None and all(state[1:] == ("Primary", "2") for state in states):
                self.evicted_after = time.monotonic() - self.since
            time.sleep(0.2)


# What the nodes log of their membership: a view, a suspicion, a non-primary component.
MEMBERSHIP = ("view(", "suspect", "non-primary", "Non-Primary", "declaring", "partition", "inactive")


def membership_log(galera, since: dict[int, int]) -> list[str]:  # noqa: F811
    lines = []
    for n in (1, 2, 3):
        text = Path(galera.base, f"node{n}", "error.log").read_bytes()[since[n]:].decode(errors="replace")
        lines += [f"node{n}: {line.strip()[:200]}" for line in text.splitlines()
                  if any(word in line for word in MEMBERSHIP)]
    return lines


LOAD_BEFORE = 6  # seconds of load before the kill
DOWN = 6  # seconds the node stays down under load, before it is restarted
LOAD_AFTER = 14  # seconds of load once the node is Synced again: past FAILED_HOST_SECONDS (10 s)
KILLED = 1  # node 1: front end A's first


def node_connections(galera, n: int, database: str) -> int:  # noqa: F811
    """Client connections to node n using the database (the front ends' pooled ones; not
    Galera's applier threads, whose `db` is that of what they applied last)."""
    conn = galera.connect(n)
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE db = %s AND user = %s "
                    "AND id != CONNECTION_ID()", (database, galera.user))
        return cur.fetchone()[0]
    finally:
        conn.close()


def test_a_node_killed_under_load(galera, front_ends, galera_front_ends):  # noqa: F811
    """Steady load at A, B and C; node 1 (A's) killed with SIGKILL, restarted 6 s later (it
    rejoins by IST). Throughout: every answer is bencoded, a success or `retry in`; a peer
    started at A is handed out by C, and one started at C by A, within CROSSING (and the
    survivors' eviction of the dead node, for a crossing under way then); after the
    node returns, every front end's `downloaded` is exactly the completions answered. A
    answers completions again within AFTER_EVICTION of the survivors' eviction of the dead
    node (the failover time is printed beside the issue's target), and its connections move
    back to node 1 once it is back."""
    hosts = {host.name: host for host in front_ends}
    database = galera_front_ends[0].rpartition("/")[2]
    load = Load(hosts, random.Random())
    tracers = Tracers(hosts)
    prober = Prober(load)
    survivors = Survivors(galera, tuple(n for n in (1, 2, 3) if n != KILLED))
    conflicts_before, announces_before = conflicts_and_announces(front_ends)
    set_log_conflicts(galera, True)
    logged_from = log_sizes(galera)
    killed_at = synced_at = float("inf")
    restart_seconds = 0.0
    problems: list[str] = []
    try:
        for name in NAMES:
            load.start(name)
        tracers.start()
        prober.start()
        began = time.monotonic()
        time.sleep(LOAD_BEFORE)
        assert node_connections(galera, KILLED, database) > 0  # A's, at least
        galera.kill(KILLED)
        killed_at = time.monotonic()
        survivors.start(killed_at)
        try:
            time.sleep(DOWN)
        finally:
            survivors.finish()
            restart_seconds = galera.restart(KILLED)
            synced_at = time.monotonic()
        back = wait_until(lambda: node_connections(galera, KILLED, database) > 0, LOAD_AFTER, interval=0.5)
        back_after = time.monotonic() - synced_at
        time.sleep(max(0.0, synced_at + LOAD_AFTER - time.monotonic()))
        if not back:
            problems.append(f"no front end connected to node {KILLED} again within {LOAD_AFTER} s of its return")
    finally:
        for stop in load.stops.values():
            stop.set()
        prober.finish()
        tracers.finish()
        for name in NAMES:
            load.stop(name)
        set_log_conflicts(galera, False)
    ended = time.monotonic()
    # -- every completion answered is counted once, at every front end ---------------------------------
    for host in front_ends:
        if not wait_until(lambda host=host: not count_problems(host, load), CROSSING):
            problems.append(f"{host.name}'s `downloaded` (got, least, most) per torrent: {count_problems(host, load)}")
    time.sleep(2 * SYNC_INTERVAL)  # a batch after that must not count anything again
    for host in front_ends:
        if wrong := count_problems(host, load):
            problems.append(f"{2 * SYNC_INTERVAL} s later, {host.name}'s `downloaded` (got, least, most): {wrong}")
    expected = Counter(peer.torrent for peer in load.peers if peer.finished)
    counted = {host.name: downloaded(host) for host in front_ends}
    # -- what the clients were answered -----------------------------------------------------------------
    if load.not_bencoded:
        problems.append(f"{len(load.not_bencoded)} answers not bencoded: {load.not_bencoded[:3]}")
    if plain := [(host, reason) for host, reason, _ in load.refused if reason.endswith("(no `retry in`)")]:
        problems.append(f"refusals without `retry in`: {plain[:5]}")
    if load.errors or tracers.errors:
        problems.append(f"clients failed: {load.errors[:3]} {tracers.errors[:3]}")
    # -- a peer crosses from A to C (and C to A) within CROSSING, before, during and after -------------

    def phase(at: float) -> str:
        return "before" if at < killed_at else "during" if at < synced_at else "after"

    delays: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for crossing in tracers.crossings:
        # A crossing under way when the node died waits for its eviction too.
        bound = CROSSING + (EVICTION if killed_at - CROSSING < crossing.started < killed_at + EVICTION else 0)
        if crossing.delay is None or crossing.delay > bound:
            problems.append(f"a peer started at {crossing.source} {crossing.started - killed_at:+.1f} s from the kill "
                            f"was handed out by {crossing.seen_at} after {crossing.delay} s (> {bound} s)")
        if crossing.delay is not None:
            delays[phase(crossing.started)].append(crossing.delay)
    for name, found in delays.items():
        if not found:
            problems.append(f"no tracer crossed {name} the kill")
    # -- failover ---------------------------------------------------------------------------------------
    failover = {name: prober.serving_again(name, killed_at) for name in NAMES}
    slowest = {name: prober.slowest(name, killed_at - 1, synced_at) for name in NAMES}
    if survivors.evicted_after is None:
        problems.append("the survivors never formed a Primary component of two: the cluster lost its quorum "
                        "(their membership log is below)")
    elif failover["a"] is None or failover["a"] > survivors.evicted_after + AFTER_EVICTION:
        problems.append(f"A answered no completion within {AFTER_EVICTION} s of the eviction "
                        f"({survivors.evicted_after:.1f} s after the kill): {failover['a']}")
    conflicts_after, announces_after = conflicts_and_announces(front_ends)
    conflicts, announces = conflicts_after - conflicts_before, announces_after - announces_before
    retries = Counter((host, phase(at)) for host, _, at in load.refused) + Counter(
        (host, phase(at)) for host, at in tracers.retries)
    summary = (
        f"node {KILLED} killed at {time.strftime('%H:%M:%S', time.localtime(time.time() - (time.monotonic() - killed_at)))}"
        f" after {killed_at - began:.1f} s of load, restarted {DOWN} s later (Synced in "
        f"{restart_seconds:.1f} s; evicted by the others after "
        f"{'never' if survivors.evicted_after is None else f'{survivors.evicted_after:.1f} s'}; they said "
        f"{dict(survivors.seen)}), load until {ended - synced_at:.1f} s after; {announces} announces, "
        f"{sum(expected.values())} completions; "
        f"failover (kill -> first completion answered that was sent after it; the issue's target "
        f"{FAILOVER_SECONDS} s): "
        + ", ".join(f"{name.upper()} {value:.2f} s" if value is not None else f"{name.upper()} never"
                    for name, value in failover.items())
        + "; slowest completion answer while the node was down: "
        + ", ".join(f"{name.upper()} {value:.2f} s" for name, value in slowest.items())
        + f"; A's connections back on node {KILLED} {back_after:.1f} s after it was Synced; "
        f"a peer crossing between A and C (s, median/max): "
        + ", ".join(f"{name} {sorted(found)[len(found) // 2]:.2f}/{max(found):.2f} ({len(found)})"
                    for name, found in delays.items() if found)
        + f"; `retry in` answers (front end, phase): {dict(retries)}; conflicts retried {conflicts} "
        f"({1000 * conflicts / max(announces, 1):.2f} per 1,000 announces)")
    print(summary)
    if conflicts:
        print("what the nodes logged of conflicts:", *conflict_log(galera, logged_from)[:40], sep="\n")
    assert not problems, (summary + "\n" + "\n".join(problems[:20]) + f"\nexpected {dict(expected)}, counted "
                          f"{counted}\nwhat the nodes logged of their membership:\n"
                          + "\n".join(membership_log(galera, logged_from)[-60:]))
