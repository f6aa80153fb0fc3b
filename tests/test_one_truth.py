"""Issue #18, one truth per swarm: random announces through real Apache, checked against one
single-process model (tests/swarm_model.py).

A few torrents, each with a dozen peers (clients at a few 127.0.0.x addresses), get random
sequences of announces: starts, progress, completions (`completed`, or left=0 on any event,
`stopped` included), stops, re-announces after a stop, partial seeds, key changes and moves
to another address (with the peer's key, or a hijack without it). Every announce goes on a
new connection, to a process or host the test picks at random where it can pick. Checks:
- every answer is bencoded; the key rule refuses exactly what the model refuses;
- on one host, every answer's complete/incomplete/downloaded and peers are the model's at
  once: a stopped peer is never handed out after its stop was answered, a new one is;
- across hosts, the same once nothing another host answered is younger than LAG (2 x
  sync_interval, and slack): a peer joined, stopped, moved or changed state there (or a
  completion counted there) may be seen late, never later than that;
- after each round, scrapes at every process and host say the model's counts (at once on
  one host, within LAG across hosts): every completion counted exactly once; after the
  last, once more after LAG, when every batch is written and views were read again.

Where a test picks the daemon process, STEERING routes the announce there by a request
header, and a wrapper around tracker.wsgi names the process that answered in a response
header: the test's PID log. ONE_TRUTH_SEED=<n> replays a failure's sequence of announces
(what the processes' timing makes of it may differ).
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest
from bencoder import bdecode

from conftest import Apache, make_run_dir, start_apache
from galera import galera, galera_front_ends  # noqa: F401 (fixtures)
from swarm_model import LEECHER, PARTIAL, SEED, ModelAnswer, SwarmModel
from test_e2e_apache import BENCODED_TYPES, config_text, register
from test_topologies import apache_dir_with
from tracker_wsgi import apache_conf
from tracker_wsgi.model import Torrent
from tracker_wsgi.protocol import PEER_CONFLICT
from tracker_wsgi.store import open_store

# End to end through a real Apache: scripts/test --quick leaves this file out.
pytestmark = pytest.mark.slow

SYNC = 1  # sync_interval: the shortest config.py allows, to keep the waits short
# How long another host may take to agree: the 2 x sync_interval, plus slack for a
# loaded 2-core machine (a flush thread waiting its turn for a core).
LAG = 2 * SYNC + 2
TORRENTS = 4
PEERS = 12  # per torrent: far below numwant_default (50), so an answer holds every peer it may
ROUNDS = 3
ANNOUNCES = 30  # per torrent and round
ADDRESSES = [f"127.0.0.{n}" for n in range(2, 8)]  # where clients announce from (all local)
SIZE = 1000  # every torrent's length: a starting leecher reports left=SIZE
RETRIES = 5  # a client asked to `retry in` tries again, as BEP 31 clients do
EMBEDDED_SCRAPES = 6  # scrapes on new connections per torrent in embedded mode: both children answer some

ANSWERED_BY = "X-Test-Answered-By"
CHOSEN_PROCESS = "X-Test-Process"
# tracker.wsgi with the answering process's pid and group (empty in embedded mode) in a
# response header: the PID log of a process the access log cannot name (in daemon mode its
# %P is the Apache child that passed the request on).
ANSWERED_BY_WSGI = f"""\
import os

from tracker_wsgi.wsgi import application as tracker


def application(environ, start_response):
    answered_by = f"{{os.getpid()}} {{environ.get('mod_wsgi.process_group', '')}}"

    def start(status, headers, exc_info=None):
        return start_response(status, [*headers, ("{ANSWERED_BY}", answered_by)], exc_info)

    return tracker(environ, start)
"""
# Test only: an announce carrying X-Test-Process: N goes to daemon process N, whatever its
# info hash. An <If> is merged after every <Location>, so this SetEnvIf runs after
# tracker.conf's routing lines and wins; WSGIProcessGroup reads the variable afterwards.
STEERING = f"""\
<If "true">
    SetEnvIf {CHOSEN_PROCESS} "^([0-9]+)$" TRACKER_WSGI_PROCESS={apache_conf.GROUP_PREFIX}$1
</If>
"""


def info_hash(n: int) -> bytes:
    """Torrent n's info hash: its first byte 0x40 + n, so the shipped routing spreads the
    torrents over the daemon processes; awkward bytes after it (%, &, +, space, 0xff)."""
    return bytes([0x40 + n, 0x25, 0x26, 0x2B, 0x20, 0xFF]) + n.to_bytes(14, "big")


# -- the topologies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    name: str
    mode: str  # devserver.TOPOLOGIES: "daemon" or "embedded"
    hosts: int = 1  # Apache hosts on one database
    processes: int = apache_conf.DEFAULT_PROCESSES  # daemon processes per host
    steered: bool = True  # each announce to a daemon process the test picks (STEERING)

    @property
    def pace(self) -> float:
        """Seconds between one torrent's announces: across hosts, a round lasts 1.5 x LAG, so
        that answers come both before and after the other host must know a change."""
        return 1.5 * LAG / ANNOUNCES if self.hosts > 1 else 0.0

    def places(self) -> list[tuple[int, int | None]]:
        """(host, process) of every process the test can address; None: Apache picks."""
        processes = range(self.processes) if self.steered and self.mode == "daemon" else [None]
        return [(host, process) for host in range(self.hosts) for process in processes]


EMBEDDED = Topology("embedded", "embedded", steered=False)
# The shipped routing: each swarm lives in the one process its info hash names.
ROUTED = Topology("daemon-routed", "daemon", steered=False)
DAEMON_2 = Topology("daemon-2", "daemon")
DAEMON_4 = Topology("daemon-4", "daemon", processes=4)
TWO_HOSTS = Topology("two-hosts", "daemon", hosts=2)  # each host's announces steered to its processes
# Three front ends on the 3-node Galera cluster (tests/galera.py), front end i on node i first.
THREE_HOSTS = Topology("three-hosts", "daemon", hosts=3)

CASES = [(EMBEDDED, "sqlite"), (EMBEDDED, "mysql"), (ROUTED, "sqlite"), (ROUTED, "mysql"), (DAEMON_2, "sqlite"),
         (DAEMON_2, "mysql"), (DAEMON_4, "mysql"), (TWO_HOSTS, "mysql"), (TWO_HOSTS, "sqlite"),
         (THREE_HOSTS, "galera")]


def database_urls(store: str, hosts: int, request) -> list[str]:
    """Each host's `database` setting: one database for all (sqlite, mysql), or the Galera
    cluster's nodes in each front end's own order."""
    if store == "galera":
        return request.getfixturevalue("galera_front_ends")
    return [request.getfixturevalue(f"{store}_url")] * hosts


@pytest.fixture
def hosts_of(shared_dir):
    """start(topology, each host's database url) -> its Apache hosts, each with the tracker.wsgi that
    names the answering process; stopped afterwards."""
    started: list[Apache] = []

    def start(topology: Topology, urls: list[str]) -> list[Apache]:
        root = shared_dir / "apache-under-test"
        root.mkdir(mode=0o755)
        tracker_conf = apache_conf.daemon_conf(topology.processes) if topology.mode == "daemon" else None
        apache_dir = apache_dir_with(root, tracker_conf, ANSWERED_BY_WSGI)
        site_conf = STEERING if topology.steered and topology.mode == "daemon" else ""
        for host in range(topology.hosts):
            run_dir, config_path = make_run_dir(shared_dir, f"host-{host}", config_text(urls[host], sync_interval=str(SYNC)))
            started.append(start_apache(run_dir, config_path, site_conf, topology.mode, apache_dir=apache_dir))
        return started

    yield start
    for apache in started:
        apache.stop()


# -- what a client sends and what it gets ---------------------------------------------------------


class Reply:
    """One answer: its status, content type, the process that answered ("pid group"), body."""

    def __init__(self, status: int, content_type: str, answered_by: str, body: bytes):
        self.status, self.content_type, self.answered_by, self.body = status, content_type, answered_by, body
        try:
            self.decoded = bdecode(body)
        except Exception:  # noqa: BLE001 - anything not bencoded is what the check reports
            self.decoded = None

    @property
    def retry(self) -> bool:
        return isinstance(self.decoded, dict) and b"retry in" in self.decoded


def request(apache: Apache, path: str, source: str, process: int | None) -> Reply:
    """GET on a new connection from `source` (a 127.0.0.x address), to daemon `process` if
    given."""
    connection = http.client.HTTPConnection("127.0.0.1", apache.port, timeout=30, source_address=(source, 0))
    try:
        connection.request("GET", path, headers={CHOSEN_PROCESS: str(process)} if process is not None else {})
        response = connection.getresponse()
        return Reply(response.status, response.getheader("Content-Type", ""), response.getheader(ANSWERED_BY, ""),
                     response.read())
    finally:
        connection.close()


@dataclass
class Client:
    """A BitTorrent client: one peer_id in one torrent."""

    peer_id: bytes
    port: int
    ip: str  # the address it announces from
    key: bytes | None  # the key it sends (None: a client that sends none)
    host: int = 0  # two hosts: where it announces this round

    @property
    def packed(self) -> bytes:
        return socket.inet_aton(self.ip)


@dataclass
class Announce:
    op: str
    event: str
    left: int
    key: bytes | None
    ip: str


def next_announce(rng: random.Random, client: Client, model: SwarmModel) -> Announce:
    """A random announce of `client`, of what a real client (or a hijacker of its peer_id)
    might send next."""
    known = model.peers.get(client.peer_id)
    if known is None:
        op = rng.choices(["start", "start seed", "re-announce after stop", "stop unknown"], [70, 8, 17, 5])[0]
        left = {"start": SIZE, "start seed": 0, "re-announce after stop": rng.choice([0, SIZE // 2, SIZE]),
                "stop unknown": SIZE}[op]
        event = {"start": "started", "start seed": "started", "stop unknown": "stopped"}.get(op, "")
        return Announce(op, event, left, client.key, client.ip)
    op = rng.choices(["progress", "completed", "stopped", "finish by stopping", "paused", "recheck", "new key",
                      "no key", "move with key", "hijack"], [30, 10, 9, 6, 6, 4, 8, 5, 7, 5])[0]
    other_ip = rng.choice([a for a in ADDRESSES if a != client.ip])
    if op == "progress":
        return Announce(op, "", max(0, known.left - rng.choice([0, 200, 400, 600])), client.key, client.ip)
    if op == "completed":
        return Announce(op, "completed", 0, client.key, client.ip)
    if op in ("stopped", "finish by stopping"):
        return Announce(op, "stopped", known.left if op == "stopped" else 0, client.key, client.ip)
    if op == "paused":
        return Announce(op, "paused", known.left or SIZE // 3, client.key, client.ip)
    if op == "recheck":
        return Announce(op, "", SIZE, client.key, client.ip)
    if op == "new key":
        return Announce(op, "", known.left, rng.randbytes(4).hex().encode(), client.ip)
    if op == "no key":
        return Announce(op, "", known.left, None, client.ip)
    if op == "move with key":
        return Announce(op, "", known.left, client.key, other_ip)
    return Announce(op, "", known.left, rng.choice([None, b"guessed"]), other_ip)  # hijack


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Run:
    topology: Topology
    hosts: list[Apache]
    seed: int
    models: list[SwarmModel]
    clients: list[list[Client]]
    # When each torrent's peers (compact forms) last changed their place in the swarm (in it
    # or not, leecher or not), and its completion count (DOWNLOADED): -> (the time its
    # announce was answered, the host that answered it).
    changed: list[dict[bytes, tuple[float, int]]]
    # (kind, what happened, (torrent, peer) of an announce of a round or None)
    violations: list[tuple[str, str, tuple[int, int] | None]] = field(default_factory=list)
    # Each torrent's announces, each with the model's answer and the tracker's.
    history: list[list[tuple[int, str]]] = field(default_factory=lambda: [[] for _ in range(TORRENTS)])
    answered_by: Counter = field(default_factory=Counter)  # (host, "pid group") -> answers
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def violation(self, kind: str, text: str, peer: tuple[int, int] | None = None) -> None:
        with self.lock:
            self.violations.append((kind, text, peer))

    def answered(self, host: int, process: int | None, torrent: int, reply: Reply, what: str) -> None:
        """Count who answered; a steered request must be answered by the process chosen, a
        routed one by the process its info hash names."""
        with self.lock:
            self.answered_by[host, reply.answered_by] += 1
        if self.topology.mode != "daemon":
            return
        group = reply.answered_by.partition(" ")[2]
        want = process if process is not None else apache_conf.group_of(info_hash(torrent)[0], self.topology.processes)
        if group != apache_conf.group_name(want):
            self.violation("wrong process", f"{what}: answered by {reply.answered_by!r}, not {apache_conf.group_name(want)}")

    def send(self, host: int, process: int | None, source: str, path: str, torrent: int, what: str) -> Reply:
        """A request as a client makes it, again after `retry in`."""
        for _ in range(RETRIES):
            reply = request(self.hosts[host], path, source, process)
            self.answered(host, process, torrent, reply, what)
            if not reply.retry:
                return reply
            with self.lock:
                self.retries += 1
            time.sleep(0.3)
        return reply

    def pick(self, rng: random.Random, host: int) -> int | None:
        places = [process for h, process in self.topology.places() if h == host]
        return rng.choice(places)


def check_bencoded(reply: Reply, what: str) -> list[tuple[str, str]]:
    """An answer under /tracker: HTTP 200 and a bencoded dictionary, as a client reads it."""
    if reply.status != 200 or reply.content_type not in BENCODED_TYPES or not isinstance(reply.decoded, dict):
        return [("not bencoded", f"{what}: {reply.status} {reply.content_type!r} {reply.body[:100]!r}")]
    return []


def peers_of(answer: dict) -> set[bytes]:
    peers = answer.get(b"peers", b"")
    return {peers[i:i + 6] for i in range(0, len(peers), 6)}


def check_announce(run: Run, torrent: int, host: int, since: float | None, reply: Reply, want: ModelAnswer,
                   what: str) -> list[tuple[str, str]]:
    """What an announce's answer got wrong against the model's answer. `since`: changes
    another host answered after this may not be known here yet (None: every change is)."""
    wrong = check_bencoded(reply, what)
    if wrong:
        return wrong
    answer = reply.decoded
    if b"retry in" in answer:
        return [("retry in", f"{what}: still {answer} after {RETRIES} tries")]
    if want.refused or b"failure reason" in answer:
        expected = {b"failure reason": PEER_CONFLICT.encode()} if want.refused else "an answer"
        return [] if answer == expected else [("key rule", f"{what}: got {answer}, the model {expected}")]
    problems = []
    recent = set() if since is None else {
        c for c, (when, by) in run.changed[torrent].items() if by != host and when > since - LAG}
    got = (answer[b"complete"], answer[b"incomplete"], answer[b"downloaded"])
    if not recent and got != (want.complete, want.incomplete, want.downloaded):
        problems.append(("counts", f"{what}: complete/incomplete/downloaded {got}, the model {tuple(want[1:4])}"))
    handed = peers_of(answer)
    stale = handed - want.peers - recent
    missing = want.peers - recent - handed
    if stale:
        problems.append(("peer handed out", f"{what}: {names(run, torrent, stale)} not in the model's answer"))
    if missing:
        problems.append(("peer missing", f"{what}: lacks the model's {names(run, torrent, missing)}"))
    return problems


def names(run: Run, torrent: int, compacts: set[bytes]) -> str:
    """Compact forms as `peer N@address (what the model says of it now)`."""
    by_port = {client.port: n for n, client in enumerate(run.clients[torrent])}
    model = run.models[torrent]
    out = []
    for compact in sorted(compacts):
        n = by_port.get(int.from_bytes(compact[4:], "big"))
        peer = model.peers.get(run.clients[torrent][n].peer_id) if n is not None else None
        now = "gone" if peer is None else ("moved" if peer.compact != compact else peer.state)
        out.append(f"peer {n}@{socket.inet_ntoa(compact[:4])} ({now})")
    return ", ".join(out)


DOWNLOADED = b"downloaded"  # the completion count's entry among a swarm's changes


def places_in_swarm(model: SwarmModel) -> dict[bytes, object]:
    """Each member's compact form and state (what answers hand out, and to whom), and the
    completion count."""
    return {DOWNLOADED: model.downloaded, **{peer.compact: peer.state for peer in model.peers.values()}}


def query_of(torrent: int, client: Client, left: int, event: str, key: bytes | None) -> str:
    fields: dict[str, object] = {"info_hash": info_hash(torrent), "peer_id": client.peer_id, "port": client.port,
                                 "uploaded": 0, "downloaded": SIZE - left, "left": left, "compact": 1}
    if event:
        fields["event"] = event
    if key is not None:
        fields["key"] = key
    return "/tracker/announce?" + urlencode(fields)


def play_round(run: Run, torrent: int, rng: random.Random, number: int) -> None:
    """ANNOUNCES random announces of one torrent's clients, one at a time, each checked."""
    model, clients, changed = run.models[torrent], run.clients[torrent], run.changed[torrent]
    for step in range(ANNOUNCES):
        n = rng.randrange(len(clients))
        client = clients[n]
        host, process = client.host, run.pick(rng, client.host)
        announce = next_announce(rng, client, model)
        before = places_in_swarm(model)
        want = model.announce(client.peer_id, socket.inet_aton(announce.ip), client.port, announce.left,
                              announce.event, announce.key)
        what = (f"round {number} torrent {torrent} step {step}: peer {n} {announce.op} "
                f"(event={announce.event or 'none'} left={announce.left} from {announce.ip}) at host {host}"
                f" process {process}")
        sent = time.monotonic()
        reply = run.send(host, process, announce.ip, query_of(torrent, client, announce.left, announce.event,
                                                              announce.key), torrent, what)
        for kind, problem in check_announce(run, torrent, host, sent, reply, want, what):
            run.violation(kind, problem, (torrent, n))
        run.history[torrent].append((n, f"{what}: the model {tuple(want[:4])}, got {summary(reply)}"))
        if not want.refused:
            client.ip = announce.ip
            client.key = announce.key if announce.key is not None else client.key
        after, answered = places_in_swarm(model), time.monotonic()
        for compact in before.keys() | after.keys():
            if before.get(compact) != after.get(compact):
                changed[compact] = (answered, host)
        time.sleep(run.topology.pace)


def summary(reply: Reply) -> str:
    answer = reply.decoded
    if not isinstance(answer, dict) or b"failure reason" in answer:
        return repr(answer if isinstance(answer, dict) else reply.body[:80])
    return str((answer[b"complete"], answer[b"incomplete"], answer[b"downloaded"]))


def check_scrapes(run: Run, when: str) -> list[tuple[str, str]]:
    """Scrape every torrent at every process (embedded: on several new connections) and
    compare with the model; the problems found."""
    problems = []
    for host, process in run.topology.places():
        tries = EMBEDDED_SCRAPES if run.topology.mode == "embedded" else 1
        for torrent in range(TORRENTS):
            for _ in range(tries):
                what = f"{when}: scrape of torrent {torrent} at host {host} process {process}"
                reply = run.send(host, process, ADDRESSES[0], "/tracker/scrape?" + urlencode(
                    {"info_hash": info_hash(torrent)}), torrent, what)
                wrong = check_bencoded(reply, what)
                if wrong:
                    problems += wrong
                    continue
                entry = reply.decoded[b"files"][info_hash(torrent)]
                got = (entry[b"complete"], entry[b"incomplete"], entry[b"downloaded"])
                if got != run.models[torrent].stats():
                    problems.append(("scrape", f"{what} ({reply.answered_by}): complete/incomplete/downloaded "
                                               f"{got}, the model {run.models[torrent].stats()}"))
    return problems


def probe(run: Run, rng: random.Random, when: str) -> None:
    """At every host and torrent, a live client whose next announces go there re-announces
    unchanged: everything is settled, so the answer must be the model's exactly."""
    for host in range(run.topology.hosts):
        for torrent in range(TORRENTS):
            model = run.models[torrent]
            live = [c for c in run.clients[torrent] if c.host == host and c.peer_id in model.peers]
            if not live:
                continue
            client = rng.choice(live)
            peer = model.peers[client.peer_id]
            event = "paused" if peer.state == PARTIAL else ""
            want = model.announce(client.peer_id, peer.ip, client.port, peer.left, event, client.key)
            process = run.pick(rng, host)
            what = f"{when}: re-announce of peer {run.clients[torrent].index(client)} of torrent {torrent} " \
                   f"at host {host} process {process}"
            reply = run.send(host, process, client.ip, query_of(torrent, client, peer.left, event, client.key),
                             torrent, what)
            for kind, problem in check_announce(run, torrent, host, None, reply, want, what):
                run.violation(kind, problem)


def settle(run: Run, rng: random.Random, round_end: float, when: str, last: bool) -> None:
    """After a round: the scrapes agree with the model at once on one host, within LAG
    across hosts; after the last round, again once every batch is written, and a
    re-announce at each host gets the model's answer."""
    if run.topology.hosts == 1:
        for kind, problem in check_scrapes(run, f"{when}, at once"):
            run.violation(kind, problem)
        if not last:
            time.sleep(SYNC + 0.5)  # every view goes idle: the next round reads the swarms again
            return
    deadline = round_end + LAG
    while True:
        problems = check_scrapes(run, f"{when}, {LAG} s after")
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for kind, problem in problems:
        run.violation(kind, problem)
    # A client announces at one host a round; it may go to another once both agree.
    time.sleep(max(0.0, round_end + LAG - time.monotonic()))
    if not last:
        for clients in run.clients:
            for client in clients:
                client.host = rng.randrange(run.topology.hosts)
    probe(run, rng, when)


def register_torrents(url: str) -> None:
    store = open_store(url, 2700)
    store.create_tables()
    for n in range(TORRENTS):
        assert store.register(Torrent(info_hash(n), None, f"torrent-{n}", SIZE), int(time.time()))
    store.close()
    register(url)  # hands an SQLite file to www-data


def report(run: Run) -> str:
    kinds = Counter(kind for kind, _, _ in run.violations)
    firsts = {kind: text for kind, text, _ in reversed(run.violations)}  # the first of each kind
    lines = [*firsts.values(), "...", *(text for _, text, _ in run.violations[:10])]
    about = next((peer for _, _, peer in run.violations if peer), None)
    if about:
        torrent, peer = about
        lines.append(f"Peer {peer} of torrent {torrent} (the first disagreement's), announce by announce:")
        lines += [text for n, text in run.history[torrent] if n == peer]
    return (f"{run.topology.name}: {len(run.violations)} disagreements with the model (ONE_TRUTH_SEED={run.seed} "
            f"replays the sequence): {dict(kinds)}; answers by host and process: {dict(run.answered_by)}; "
            f"retries: {run.retries}\n" + "\n".join(lines))


@pytest.mark.parametrize(("topology", "store"), CASES, ids=[f"{t.name}-{s}" for t, s in CASES])
def test_every_process_and_host_tells_the_models_truth(topology, store, hosts_of, request):
    urls = database_urls(store, topology.hosts, request)
    register_torrents(urls[0])
    hosts = hosts_of(topology, urls)
    seed = int(os.environ.get("ONE_TRUTH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    clients = [[Client(b"-OT0001-" + bytes([torrent]) + n.to_bytes(11, "big"), 20000 + 100 * torrent + n,
                       rng.choice(ADDRESSES), rng.choice([None, rng.randbytes(4).hex().encode()]),
                       rng.randrange(topology.hosts))
                for n in range(PEERS)] for torrent in range(TORRENTS)]
    run = Run(topology, hosts, seed, [SwarmModel() for _ in range(TORRENTS)], clients,
              [{} for _ in range(TORRENTS)])

    for number in range(ROUNDS):
        # The torrents' sequences run side by side (each torrent's one announce at a time):
        # several connections at once, so that every child of embedded mode takes some.
        seeds = [rng.randrange(2**32) for _ in range(TORRENTS)]
        with ThreadPoolExecutor(TORRENTS) as pool:
            plays = [pool.submit(play_round, run, torrent, random.Random(seeds[torrent]), number)
                     for torrent in range(TORRENTS)]
        for play in plays:
            if play.exception():
                raise AssertionError(f"ONE_TRUTH_SEED={seed}: a client failed") from play.exception()
        settle(run, rng, time.monotonic(), f"after round {number}", last=number == ROUNDS - 1)

    assert not run.violations, report(run)
    # The checks reached every process: both children in embedded mode, each daemon process.
    for host in range(topology.hosts):
        answering = {by for (h, by), _ in run.answered_by.items() if h == host}
        want = apache_conf.EMBEDDED_PROCESSES if topology.mode == "embedded" else topology.processes
        assert len({by.split()[0] for by in answering}) == want, report(run)


# -- the model itself ---------------------------------------------------------------------------


def test_the_model_counts_each_completion_once_per_stay_in_the_swarm():
    model = SwarmModel()
    home, elsewhere = socket.inet_aton("127.0.0.2"), socket.inet_aton("127.0.0.3")
    assert model.announce(b"a", home, 1, SIZE, "started", None).incomplete == 1
    assert model.announce(b"a", home, 1, 0, "", None).downloaded == 1  # a leecher reports left=0
    assert model.announce(b"a", home, 1, 0, "completed", None).downloaded == 1  # repeated
    assert model.announce(b"a", home, 1, SIZE, "", None).downloaded == 1  # recheck...
    assert model.announce(b"a", home, 1, 0, "completed", None).downloaded == 1  # ...still once
    assert model.announce(b"b", home, 2, SIZE, "started", None).peers == {home + (1).to_bytes(2, "big")}
    assert model.announce(b"b", home, 2, 0, "stopped", None) == ModelAnswer(False, 1, 0, 2, frozenset())  # aria2
    assert model.announce(b"b", home, 2, 0, "completed", None).downloaded == 3  # back: a new peer
    assert model.announce(b"c", home, 3, 0, "started", None)[1:4] == (3, 0, 3)  # a seed joining: none
    assert model.announce(b"d", home, 4, 0, "stopped", None)[1:4] == (3, 0, 3)  # unknown: nothing
    # The key rule: no key registered, no move; the registered key moves the peer.
    assert model.announce(b"c", elsewhere, 3, 0, "", b"k").refused
    assert not model.announce(b"c", home, 3, 0, "", b"k").refused  # a key from the same address
    assert model.announce(b"c", elsewhere, 3, 0, "", None).refused
    assert model.peers[b"c"].ip == home
    assert not model.announce(b"c", elsewhere, 3, 0, "stopped", b"k").refused
    assert b"c" not in model.peers
    assert model.announce(b"e", home, 5, 50, "paused", None)[1:3] == (2, 1)  # a partial seed is incomplete
    assert model.answer(b"e", "").peers == frozenset()  # and gets only leechers
    assert {p.state for p in model.peers.values()} == {SEED, PARTIAL}
    assert model.announce(b"f", home, 6, SIZE, "started", None).peers == {p.compact for p in model.peers.values()
                                                                          if p.state != LEECHER}
