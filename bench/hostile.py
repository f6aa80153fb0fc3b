"""Soak under hostile clients: the shipped Apache snippet, SQLite and MariaDB, an attack or a
database fault at a time, with legitimate announces running beside it (issue 12).

    .venv/bin/python bench/hostile.py                        # both stores, every scenario, 90 s each (~19 min)
    .venv/bin/python bench/hostile.py --seconds 20           # a quick look (~8 min)
    .venv/bin/python bench/hostile.py --stores sqlite --scenarios slow,db-hang --legit-rate 200
    .venv/bin/python bench/hostile.py --topology embedded    # the embedded snippets instead

Run as root with the venv's Python (Apache drops to www-data and runs this venv). Each store
x scenario gets a fresh store (50 registered torrents) and a fresh Apache built by
tracker_wsgi.devserver around apache/tracker.conf (--topology embedded: around
apache/embedded-server.conf and apache/tracker-embedded.conf), exactly as the tests do. MariaDB is a
private mariadbd of this script (own datadir and port, removed at the end); the shared
server on 3306 is never touched.

Legitimate traffic: 2,000 peers over the 50 torrents, from 127.0.0.2, one connection per
announce, at --legit-rate announces/s. Each first announces `started` (warm-up, not
counted); then mostly re-announces, some `stopped` (the peer comes back as a new peer_id
with `started`), some `completed` with left=0. A completion answered with anything but
success or a plain failure is sent again every COMPLETION_RETRY_SECONDS, also after the run.
The attacks come from 127.0.0.3 (floods) and 127.0.0.4 (slow connections), each in a
process of its own so that its CPU never slows the legitimate client's clock. Every answer
of either side is classified: success, `retry in`, other failure, not bencoded (body or
Content-Type), or no answer (timeout, connection error).

The run of one scenario: legitimate traffic alone for LEAD_SECONDS, the fault, legitimate
traffic on to --seconds, refused completions retried, SETTLE_SYNC_INTERVALS x sync_interval
for the last batch, then the store is read: legitimate peers answered (and not stopped since)
must have their row, and each torrent's `downloaded` must equal the completions answered
with success (counted once per peer); while either is wrong, the store is read again for up
to LATE_SECONDS, which tells late writes from lost ones. Figures of legitimate traffic count
the announces sent from the fault's start to the end (fault and recovery). The table prints
the issue's targets beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import math
import multiprocessing
import os
import pwd
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_from_bytes

import mysql.connector
from bencoder import bdecode

REPO = Path(__file__).resolve().parent.parent
APACHE_DIR = REPO / "apache"
sys.path.insert(0, str(REPO))

from tracker_wsgi import devserver  # noqa: E402
from tracker_wsgi.config import Config  # noqa: E402
from tracker_wsgi.limits import Limits  # noqa: E402
from tracker_wsgi.model import Torrent  # noqa: E402
from tracker_wsgi.store import open_store  # noqa: E402

STORES = ("sqlite", "mysql")
SCENARIOS = ("peer-flood", "swarm-flood", "slow", "db-stop", "db-hang", "split-route", "rotation-48", "symlinks")

# Who is who. Linux answers for all of 127/8 on lo, so each side gets an address of its own
# and the tracker sees three clients. Apache (devserver) listens on 127.0.0.1.
SERVER = "127.0.0.1"
LEGIT_SOURCE = "127.0.0.2"
FLOOD_SOURCE = "127.0.0.3"
SLOW_SOURCE = "127.0.0.4"
ADMIN_SOURCE = "127.0.0.5"  # refresh-guess: the admin's web refresh, from elsewhere than the guesser
IP_BIND_ADDRESS_NO_PORT = 24  # Linux: a bound socket takes its port at connect(), so ports are not used up

# The legitimate population and what it sends.
LEGIT_PEERS = 2000
LEGIT_TORRENTS = 50
TORRENT_SIZE = 1 << 30
SEED_SHARE = 1 / 3  # of the first peers; peers that come back later are leechers
STOPPED_SHARE = 0.03  # of announces: a peer leaves (and its slot returns as a new peer with `started`)
COMPLETED_SHARE = 0.01  # of announces: a leecher finishes (`completed`, left=0)
NUMWANT = 50
LEGIT_TIMEOUT = 10.0  # seconds a client waits for the tracker (libtorrent's tracker_receive_timeout)
# A completion refused with `retry in` (or unanswered) is sent again after this. BEP 31 asks
# clients for `retry in` minutes; a run of a few minutes must see the retry.
COMPLETION_RETRY_SECONDS = 10
COMPLETION_RETRY_LIMIT = 60  # after the run, how long refused completions are still retried
WARM_UP_CONCURRENCY = 20  # `started` of every legitimate peer before the clock runs
WARM_UP_TRIES = 3

# The attackers.
FLOOD_CONNECTIONS = 64  # keep-alive connections: more than the snippet's 2 x 15 daemon threads
SLOW_CONNECTIONS = 1000
SLOW_LINE_SECONDS = 10  # a slow client sends one more header line this often, never the end
SLOW_RAMP_SECONDS = 5  # the slow connections are opened over this long
SLOW_RECONNECT_SECONDS = 1  # a slow connection the server closed is opened again after this
ATTACK_TIMEOUT = 30.0  # an attacker gives up on one answer after this and reconnects
GUESS_CONNECTIONS = 16  # refresh-guess: clients guessing the web refresh's secret, one answer each
ADMIN_REFRESH_SECONDS = 2.0  # refresh-guess: how often the admin sends the right secret
# The run's web refresh secret (refresh-guess), the same in the attack's process (spawned: it
# imports this module again, and inherits the environment).
REFRESH_SECRET = os.environ.setdefault("HOSTILE_REFRESH_SECRET", os.urandom(32).hex())

# The schedule of a scenario.
LEAD_SECONDS = 10  # legitimate traffic alone before the fault (and after an attack)
DB_STOP_SECONDS = 60  # the issue's database stop
DB_HANG_SECONDS = 45  # the issue's database hang
SETTLE_SYNC_INTERVALS = 3  # wait this many sync_intervals for the last batch before reading the store
LATE_SECONDS = 45  # then, while rows are missing, read again this long: late writes, or lost ones?
SYNC_INTERVAL = Config().sync_interval  # the config below keeps the default
REFRESH_INTERVAL = 60  # the least allowed: a default run meets one traffic-triggered refresh mid-fault
MARIADB_BUFFER_POOL = "128M"  # room for a swarm flood's rows without making it disk-bound

# The issue's targets.
TARGET_OK = 0.99  # legitimate announces memory can answer that succeed
TARGET_P99 = 1.0  # seconds, their 99th percentile
TARGET_RSS = 0.80  # a daemon's peak RSS, as a share of memory-limit
TARGET_LOG_KB_PER_MINUTE = 100  # error log growth per minute of fault

# Answers.
SUCCESS, RETRY, FAILURE, NON_BENCODED, NO_ANSWER = "ok", "retry in", "failure", "not bencoded", "no answer"
OUTCOMES = (SUCCESS, RETRY, FAILURE, NON_BENCODED, NO_ANSWER)
BENCODED_TYPES = (b"text/plain", b"application/octet-stream")
# Legitimate announces: those memory can answer (a re-announce or `stopped` of a peer already
# in its swarm), and the rest (a new peer's `started`, a completion, which the tracker writes
# through).
MEMORY, NEW, COMPLETION = "memory", "new peer", "completion"
PRESENT, ABSENT = "present", "absent"


def say(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def info_hash(i: int) -> bytes:
    return hashlib.sha1(f"hostile-torrent-{i}".encode()).digest()


def quote(data: bytes) -> str:
    return quote_from_bytes(data, safe="")


def p99(seconds: list[float]) -> float | None:
    if not seconds:
        return None
    ordered = sorted(seconds)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


# -- HTTP, raw: every answer is read byte for byte, whoever produced it --------------------

def client_socket(source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source, 0))
    sock.setblocking(False)
    return sock


def request(target: bytes, close: bool) -> bytes:
    return (b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + (b"Connection: close\r\n" if close else b"") + b"\r\n")


def parse_head(head: bytes) -> dict[bytes, bytes]:
    """Headers by lower-case name (the status line is not needed: the body says it all)."""
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return headers


def dechunk(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        body, data = body + data[:size], data[size + 2:]
    return body


def split_response(data: bytes) -> tuple[dict[bytes, bytes], bytes] | None:
    """(headers, body) of a whole answer read to the end of the connection; None if no head."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    headers = parse_head(head)
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = dechunk(body)
    elif b"content-length" in headers:
        body = body[:int(headers[b"content-length"])]
    return headers, body


def classify(headers: dict[bytes, bytes], body: bytes) -> str:
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if content_type not in BENCODED_TYPES:
        return NON_BENCODED
    try:
        answer = bdecode(body)
    except Exception:
        return NON_BENCODED
    if not isinstance(answer, dict):
        return NON_BENCODED
    if b"failure reason" in answer:
        return RETRY if b"retry in" in answer else FAILURE
    return SUCCESS


def classify_raw(data: bytes) -> str:
    response = split_response(data)
    return NON_BENCODED if response is None else classify(*response)


async def fetch_once(port: int, source: str, target: bytes, timeout: float) -> str:
    """One request on a connection of its own, as BitTorrent clients announce."""
    loop = asyncio.get_running_loop()
    sock = client_socket(source)
    chunks = []
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (SERVER, port))
            await loop.sock_sendall(sock, request(target, close=True))
            while chunk := await loop.sock_recv(sock, 65536):
                chunks.append(chunk)
    except (OSError, TimeoutError):
        return NO_ANSWER
    finally:
        sock.close()
    return classify_raw(b"".join(chunks)) if chunks else NO_ANSWER


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes, bool]:
    """One answer on a keep-alive connection: (status, headers, body, the server closes)."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split()[1])
    headers = parse_head(status_line + (await reader.readuntil(b"\r\n\r\n"))[:-4])
    closing = headers.get(b"connection", b"").lower() == b"close"
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    elif b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    else:
        body, closing = await reader.read(), True
    return status, headers, body, closing


# -- the legitimate peers -----------------------------------------------------------------

@dataclass(slots=True)
class Peer:
    """A peer_id the legitimate client used, and what the store must hold of it."""

    peer_id: bytes
    torrent: int
    expect: str | None = None  # PRESENT or ABSENT since its last answered announce
    # False: an announce went unanswered. It may have counted, or count later still (it can wait
    # in the daemon's queue after the client gave up), so no answer since says what is stored.
    certain: bool = True
    completed: bool = False  # a completion of it was answered with success


@dataclass(slots=True)
class Slot:
    """One legitimate client: one peer at a time on one torrent."""

    index: int
    peer: Peer
    key: str
    left: int
    uploaded: int = 0
    downloaded: int = 0
    in_swarm: bool = False  # an announce of this peer was answered: memory can answer the next
    gone: bool = False  # it sent `stopped`; the next announce is a new peer's `started`
    busy: bool = False


class LegitClient:
    """The legitimate peers, announcing from LEGIT_SOURCE on an event loop of their own."""

    def __init__(self, port: int, hashes: list[bytes], rate: float, seed: int):
        self.port, self.hashes, self.rate = port, hashes, rate
        self.rng = random.Random(seed)
        self.peers: list[Peer] = []
        self.slots = [self._slot(i, seed=self.rng.random() < SEED_SHARE) for i in range(LEGIT_PEERS)]
        self.refused: dict[int, float] = {}  # slot index -> when its refused completion goes again
        self.results: list[tuple[float, str, str, float]] = []  # (sent at, kind, outcome, seconds)
        self.tasks: set[asyncio.Task] = set()
        self.phases: list = []  # what run() started, cancelled by close()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="legit peers", daemon=True)
        self.thread.start()

    def run(self, coroutine):
        """Run a coroutine on the client's loop; returns its concurrent Future."""
        phase = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        self.phases.append(phase)
        return phase

    def close(self) -> None:
        for phase in self.phases:
            phase.cancel()
        with contextlib.suppress(Exception):
            self.run(self._cancel()).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _slot(self, index: int, seed: bool) -> Slot:
        slot = Slot(index, self._peer(index % LEGIT_TORRENTS), "", 0)
        self._renew(slot, seed)
        return slot

    def _peer(self, torrent: int) -> Peer:
        peer = Peer(b"-HL0001-" + self.rng.randbytes(12), torrent)
        self.peers.append(peer)
        return peer

    def _renew(self, slot: Slot, seed: bool = False) -> None:
        if slot.gone:
            slot.peer = self._peer(slot.peer.torrent)
        slot.key = self.rng.randbytes(4).hex()
        slot.left = 0 if seed else self.rng.randrange(1, 64) * (TORRENT_SIZE // 64)
        slot.uploaded = slot.downloaded = 0
        slot.in_swarm = slot.gone = False

    def _target(self, slot: Slot, event: str | None) -> bytes:
        left = 0 if event == "completed" else slot.left
        query = (f"info_hash={quote(self.hashes[slot.peer.torrent])}&peer_id={quote(slot.peer.peer_id)}"
                 f"&port={20000 + slot.index}&uploaded={slot.uploaded}&downloaded={slot.downloaded}"
                 f"&left={left}&compact=1&numwant={NUMWANT}&key={slot.key}")
        if event:
            query += f"&event={event}"
        return b"/tracker/announce?" + query.encode()

    async def _announce(self, slot: Slot, event: str | None, kind: str, record: bool = True) -> str:
        slot.busy = True
        peer = slot.peer
        sent = time.monotonic()
        try:
            outcome = await fetch_once(self.port, LEGIT_SOURCE, self._target(slot, event), LEGIT_TIMEOUT)
        finally:
            slot.busy = False
        if record:
            self.results.append((sent, kind, outcome, time.monotonic() - sent))
        self._learn(slot, peer, event, outcome)
        return outcome

    def _learn(self, slot: Slot, peer: Peer, event: str | None, outcome: str) -> None:
        """What the store must now hold of this peer, and what the client does next."""
        if outcome == SUCCESS:
            self.refused.pop(slot.index, None)
            if event == "stopped":
                peer.expect, slot.gone = ABSENT, True
                return
            peer.expect, slot.in_swarm = PRESENT, True
            if event == "completed":
                peer.completed, slot.left = True, 0
        elif event == "completed":
            if outcome == FAILURE:  # refused for good: the client gives up on it
                self.refused.pop(slot.index, None)
            else:
                self.refused[slot.index] = time.monotonic() + COMPLETION_RETRY_SECONDS
        else:
            slot.gone = slot.gone or event == "stopped"  # a leaving client leaves anyway
            if outcome in (NON_BENCODED, NO_ANSWER):  # it may or may not have been taken
                peer.certain = False

    def _spawn(self, coroutine) -> None:
        task = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _next(self) -> tuple[Slot, str | None, str] | None:
        """The next announce of the mix: a slot that is free, its event and kind."""
        for _ in range(20):
            slot = self.rng.choice(self.slots)
            if not slot.busy and slot.index not in self.refused:
                break
        else:
            return None
        if slot.gone:
            self._renew(slot)
        if not slot.in_swarm:
            return slot, "started", NEW
        draw = self.rng.random()
        if draw < STOPPED_SHARE:
            return slot, "stopped", MEMORY
        if draw < STOPPED_SHARE + COMPLETED_SHARE and slot.left > 0:
            return slot, "completed", COMPLETION
        step = TORRENT_SIZE // 256
        slot.uploaded += step
        if slot.left > step:
            slot.left, slot.downloaded = slot.left - step, slot.downloaded + step
        return slot, None, MEMORY

    def _retry_due(self) -> None:
        now = time.monotonic()
        for index, due in list(self.refused.items()):
            slot = self.slots[index]
            if due <= now and not slot.busy:
                self.refused[index] = math.inf  # until this answer comes
                self._spawn(self._announce(slot, "completed", COMPLETION))

    async def warm_up(self) -> None:
        """Every peer announces `started` once: its swarm's view then holds it."""
        gate = asyncio.Semaphore(WARM_UP_CONCURRENCY)

        async def start(slot: Slot) -> str | None:
            for _ in range(WARM_UP_TRIES):
                async with gate:
                    outcome = await self._announce(slot, "started", NEW, record=False)
                if outcome == SUCCESS:
                    return None
                await asyncio.sleep(1)
            return outcome

        failed = Counter(o for o in await asyncio.gather(*(start(s) for s in self.slots)) if o)
        if failed:
            raise RuntimeError(f"warm-up: {sum(failed.values())} of {LEGIT_PEERS} legitimate peers "
                               f"could not announce ({dict(failed)})")

    async def announce_for(self, seconds: float) -> None:
        """The mix at `rate` announces per second, open loop, then the answers of the last."""
        interval = 1 / self.rate
        start = time.monotonic()
        deadline, next_at = start + seconds, start
        while (now := time.monotonic()) < deadline:
            if now >= next_at:
                self._retry_due()
                chosen = self._next()
                if chosen is not None:
                    self._spawn(self._announce(*chosen))
                next_at = max(next_at + interval, now - 1)  # no burst after a stall of the loop
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def retry_completions(self, seconds: float) -> None:
        """After the run: refused completions go again until answered (or `seconds` pass)."""
        deadline = time.monotonic() + seconds
        while self.refused and time.monotonic() < deadline:
            self._retry_due()
            await asyncio.sleep(0.2)
        await asyncio.gather(*self.tasks, return_exceptions=True)


# -- the attackers, each in a process of its own -------------------------------------------

def attack(kind: str, port: int, seconds: float, swarm: bytes, report) -> None:
    """Process entry: run one attack for `seconds`, put ("ready",) then its counts on `report`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it; Ctrl-C is the parent's
    report.put(("ready",))
    report.put(("done", dict(asyncio.run(ATTACKS[kind](port, seconds, swarm)))))


def wait(deadline: float) -> float:
    """How long an attacker waits for one thing: ATTACK_TIMEOUT, and never past its end."""
    return max(0.0, min(ATTACK_TIMEOUT, deadline - time.monotonic()))


async def flood(port: int, seconds: float, target) -> Counter:
    """FLOOD_CONNECTIONS keep-alive connections sending `target()` back to back."""
    def on_answer(counts: Counter, status: int, headers: dict[bytes, bytes], body: bytes, extra: bytes) -> None:
        counts[classify(headers, body)] += 1

    return await keepalive_attack(port, seconds, lambda: (target(), b""), on_answer, FLOOD_CONNECTIONS)


def _random_announce(info_hash_of) -> bytes:
    return (f"/tracker/announce?info_hash={quote(info_hash_of())}&peer_id={quote(random.randbytes(20))}"
            f"&port={random.randrange(1024, 65536)}&uploaded=0&downloaded=0&left={TORRENT_SIZE}"
            f"&event=started&compact=1&key={random.randbytes(4).hex()}").encode()


async def peer_flood(port: int, seconds: float, swarm: bytes) -> Counter:
    """New peer_ids into one registered swarm, from one address, as fast as it goes."""
    return await flood(port, seconds, lambda: _random_announce(lambda: swarm))


async def swarm_flood(port: int, seconds: float, swarm: bytes) -> Counter:
    """A new random info hash in every announce (whitelist `open` makes each a swarm)."""
    return await flood(port, seconds, lambda: _random_announce(lambda: random.randbytes(20)))


async def slow_connections(port: int, seconds: float, swarm: bytes) -> Counter:
    """SLOW_CONNECTIONS connections from one address, each sending a request line and then a
    header line every SLOW_LINE_SECONDS, never the blank line that ends a request. A
    connection the server answers or closes is opened again."""
    loop = asyncio.get_running_loop()
    counts: Counter = Counter()
    deadline = time.monotonic() + seconds
    open_now = 0

    async def connection(number: int) -> None:
        nonlocal open_now
        await asyncio.sleep(number * SLOW_RAMP_SECONDS / SLOW_CONNECTIONS)
        while time.monotonic() < deadline:
            sock, held, data = client_socket(SLOW_SOURCE), False, b""
            try:
                async with asyncio.timeout(wait(deadline)):
                    await loop.sock_connect(sock, (SERVER, port))
                    await loop.sock_sendall(sock, b"GET " + _random_announce(lambda: swarm) + b" HTTP/1.1\r\n")
                held, open_now = True, open_now + 1
                counts["opened"] += 1
                counts["connected at most"] = max(counts["connected at most"], open_now)
                lines = 0
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        async with asyncio.timeout(min(SLOW_LINE_SECONDS, left)):
                            chunk = await loop.sock_recv(sock, 65536)
                    except TimeoutError:
                        lines += 1
                        await loop.sock_sendall(sock, f"X-Slow-{lines}: {lines}\r\n".encode())
                        continue
                    if not chunk:
                        break
                    data += chunk  # the server answers: read it to the end
                    async with asyncio.timeout(5):
                        while chunk := await loop.sock_recv(sock, 65536):
                            data += chunk
                    break
                else:
                    continue  # held to the end of the attack
                counts[classify_raw(data) if data else "closed unanswered"] += 1
            except (OSError, TimeoutError):
                if data or time.monotonic() < deadline:
                    counts[classify_raw(data) if data else NO_ANSWER] += 1
            finally:
                sock.close()
                if held:
                    open_now -= 1
            await asyncio.sleep(SLOW_RECONNECT_SECONDS)

    await asyncio.gather(*(connection(n) for n in range(SLOW_CONNECTIONS)))
    return counts


# -- issue 17, items 3-5: split routing, address rotation in one /48, links in the site ------

ISSUE17_CONNECTIONS = 16  # keep-alive connections of each of these attacks
LEARN_EVERY = 20  # split-route: one answer in this many lists the swarm's peer_ids (compact=0)
ROTATION_48 = "2001:db8:4817"  # rotation-48: the attacker's /48, 65,536 /64s through X-Forwarded-For
PROBE_ADDRESS = "198.51.100.7"  # rotation-48: a leecher outside the /48 asking for 200 peers
SITE_LINKS = ("conf.txt", "dbdir/error.log", "rootfs/etc/passwd")  # symlinks: what is asked for


async def keepalive_attack(port: int, seconds: float, next_request, on_answer,
                           connections: int = ISSUE17_CONNECTIONS) -> Counter:
    """`connections` keep-alive connections from FLOOD_SOURCE sending next_request() (a
    target and extra header lines) back to back; on_answer(counts, status, headers, body,
    extra) says what each answer counts as."""
    loop = asyncio.get_running_loop()
    counts: Counter = Counter()
    deadline = time.monotonic() + seconds

    async def connection() -> None:
        while time.monotonic() < deadline:
            sock, writer = client_socket(FLOOD_SOURCE), None
            try:
                async with asyncio.timeout(wait(deadline)):
                    await loop.sock_connect(sock, (SERVER, port))
                reader, writer = await asyncio.open_connection(sock=sock)
                while time.monotonic() < deadline:
                    target, extra = next_request()
                    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n")
                    async with asyncio.timeout(wait(deadline)):
                        status, headers, body, closing = await read_response(reader)
                    on_answer(counts, status, headers, body, extra)
                    if closing:
                        break
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                    IndexError):
                # Also a reused connection the server closed before reading the request
                # (the event MPM closes idle keep-alive connections when busy). A wait cut
                # short by the attack's end is no answer missed.
                if time.monotonic() < deadline:
                    counts[NO_ANSWER] += 1
                await asyncio.sleep(0.1)
            finally:
                if writer is not None:
                    writer.close()
                else:
                    sock.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return counts


def other_process_hash(swarm: bytes) -> bytes:
    """An info hash the shipped daemon snippet routes to the other process than `swarm`'s."""
    return bytes([swarm[0] ^ 1]) + random.randbytes(19)


async def split_route(port: int, seconds: float, swarm: bytes) -> Counter:
    """Issue 17.3: `info_hash=<another process's>&info_hash=<the swarm>`. The attacker learns
    the swarm's peer_ids from compact=0 answers, then announces each with another key and
    port (taking the peer into the other process, past the key rule), and new peer_ids too
    (a second per-address allowance there)."""
    victims: list[bytes] = []
    me = b"-AT0001-" + random.randbytes(12)
    sent = [0]

    def next_request() -> tuple[bytes, bytes]:
        sent[0] += 1
        if sent[0] % LEARN_EVERY == 1:  # an ordinary announce that lists peer_ids
            return (f"/tracker/announce?info_hash={quote(swarm)}&peer_id={quote(me)}&port=6881&uploaded=0"
                    f"&downloaded=0&left={TORRENT_SIZE}&compact=0&numwant=200".encode(), b"")
        peer_id = random.choice(victims) if victims and random.random() < 0.5 else random.randbytes(20)
        return (f"/tracker/announce?info_hash={quote(other_process_hash(swarm))}&info_hash={quote(swarm)}"
                f"&peer_id={quote(peer_id)}&port={random.randrange(1024, 65536)}&uploaded=0&downloaded=0"
                f"&left={TORRENT_SIZE}&event=started&compact=1&key={random.randbytes(4).hex()}".encode(), b"")

    def on_answer(counts: Counter, status: int, headers, body: bytes, extra: bytes) -> None:
        outcome = classify(headers, body)
        if outcome == SUCCESS and body.startswith(b"d") and b"5:peersl" in body:
            peers = bdecode(body).get(b"peers", [])
            known = set(victims)
            victims.extend(p[b"peer id"] for p in peers if b"peer id" in p and p[b"peer id"] not in known)
            counts["peer_ids learned"] = len(victims)
            return
        counts[outcome] += 1

    return await keepalive_attack(port, seconds, next_request, on_answer)


async def rotation_48(port: int, seconds: float, swarm: bytes) -> Counter:
    """Issue 17.4: one IPv6 /48, a new /64 (rotating through its /56s first) for every new
    peer, completion and new swarm (whitelist `open`), by X-Forwarded-For from a trusted
    FLOOD_SOURCE; now and then a leecher outside it asks for 200 peers of the swarm."""
    n = [0]
    started: list[tuple[bytes, bytes]] = []  # (peer_id, X-Forwarded-For) of its leechers
    probe = b"-PR0001-" + random.randbytes(12)

    def rotated() -> bytes:
        n[0] += 1
        return f"X-Forwarded-For: {ROTATION_48}:{n[0] % 256:02x}{n[0] // 256 % 256:02x}::1\r\n".encode()

    def announce(info_hash: bytes, peer_id: bytes, left: int, event: str, numwant: int = 50) -> bytes:
        return (f"/tracker/announce?info_hash={quote(info_hash)}&peer_id={quote(peer_id)}&port=6881&uploaded=0"
                f"&downloaded=0&left={left}&event={event}&compact=1&numwant={numwant}&key=k".encode())

    def next_request() -> tuple[bytes, bytes]:
        draw = random.random()
        if draw < 0.05:
            return announce(swarm, probe, TORRENT_SIZE, "started", 200), \
                f"X-Forwarded-For: {PROBE_ADDRESS}\r\n".encode()
        if draw < 0.35 and started:
            peer_id, forwarded = started.pop(random.randrange(len(started)))
            return announce(swarm, peer_id, 0, "completed"), forwarded
        if draw < 0.55:
            return announce(random.randbytes(20), random.randbytes(20), TORRENT_SIZE, "started"), rotated()
        peer_id, forwarded = random.randbytes(20), rotated()
        started.append((peer_id, forwarded))
        del started[:-10_000]
        return announce(swarm, peer_id, TORRENT_SIZE, "started"), forwarded

    def on_answer(counts: Counter, status: int, headers, body: bytes, extra: bytes) -> None:
        outcome = classify(headers, body)
        if PROBE_ADDRESS.encode() in extra:
            if outcome == SUCCESS:
                answer = bdecode(body)
                theirs = len(answer.get(b"peers6", b"")) // 18  # the swarm's other peers are IPv4
                counts["probe answers"] += 1
                counts["probe: most /48 peers in one"] = max(counts["probe: most /48 peers in one"], theirs)
                counts["probe: peers in one, at most"] = max(counts["probe: peers in one, at most"],
                                                             theirs + len(answer.get(b"peers", b"")) // 6)
            return
        counts[outcome] += 1

    return await keepalive_attack(port, seconds, next_request, on_answer)


async def site_links(port: int, seconds: float, swarm: bytes) -> Counter:
    """Issue 17.5: links dropped in the torrent directory (the config, the run directory with
    the error log and the database, `/`), asked for again and again through the site."""
    def next_request() -> tuple[bytes, bytes]:
        return b"/torrents/" + random.choice(SITE_LINKS).encode(), b""

    def on_answer(counts: Counter, status: int, headers, body: bytes, extra: bytes) -> None:
        counts["served" if status == 200 else f"refused {status}"] += 1

    return await keepalive_attack(port, seconds, next_request, on_answer)


ATTACKS = {"peer-flood": peer_flood, "swarm-flood": swarm_flood, "slow": slow_connections,
           "split-route": split_route, "rotation-48": rotation_48, "symlinks": site_links}


# -- attacks on what Apache does before and after the tracker (issue 17: 1, 2, 6, 8) -------

SLOW_BODY_CONNECTIONS = 40  # the issue's: more than 2 daemon processes' 15 threads each
SLOW_BODY_LENGTH = 1000  # Content-Length announced; the body never gets there
SLOW_BODY_BYTE_SECONDS = 2  # one body byte this often
LOG_FLOOD_CONNECTIONS = 8  # the issue's 10-19 MB of error log a minute came from 8
SLOW_READERS = 2100  # the issue's: more than the 2 x 1024 workers of either topology's Apache
SLOW_READER_PIPELINE = 50  # announces sent at once on each connection, never read
SLOW_READER_RCVBUF = 4096  # the readers' receive buffer: the answers pile up in Apache
SLOW_READER_CHECK_SECONDS = 2  # how often a reader looks whether Apache closed its connection
TCP_STATES_CLOSED = (7, 8)  # TCP_INFO's tcpi_state: CLOSE (a reset), CLOSE_WAIT (the server's FIN)


def non_local_source() -> str | None:
    """An address of this host outside 127/8, from which a connection to SERVER is not
    `Require local` (that also takes the server's own address): the issue's monitoring
    pages asked from elsewhere."""
    for line in subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True,
                               text=True).stdout.splitlines():
        return line.split()[3].split("/")[0]
    return None


async def one_exchange(port: int, source: str, sent: bytes, deadline: float, half_close: bool = False) -> str:
    """Send these bytes on a new connection, read the answer to its end; its class."""
    data = await raw_exchange(port, source, sent, deadline, half_close)
    if data is None:
        return NO_ANSWER
    return classify_raw(data) if data else "closed unanswered"


async def raw_exchange(port: int, source: str, sent: bytes, deadline: float, half_close: bool = False) -> bytes | None:
    """Send these bytes on a new connection; the answer read to its end (None: no answer)."""
    loop = asyncio.get_running_loop()
    sock, data = client_socket(source), b""
    try:
        async with asyncio.timeout(wait(deadline)):
            await loop.sock_connect(sock, (SERVER, port))
            await loop.sock_sendall(sock, sent)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            while chunk := await loop.sock_recv(sock, 65536):
                data += chunk
    except (OSError, TimeoutError):
        if not data:
            return None
    finally:
        sock.close()
    return data


async def slow_bodies(port: int, seconds: float, swarm: bytes) -> Counter:
    """SLOW_BODY_CONNECTIONS connections from one address, each announcing (GET) or asking for
    a web refresh (POST) with a Content-Length body sent one byte every SLOW_BODY_BYTE_SECONDS,
    reopened when answered or closed (issue 17, finding 1)."""
    loop = asyncio.get_running_loop()
    counts: Counter = Counter()
    deadline = time.monotonic() + seconds

    async def connection(number: int) -> None:
        await asyncio.sleep(number * SLOW_RAMP_SECONDS / SLOW_BODY_CONNECTIONS)
        while time.monotonic() < deadline:
            head = (b"GET " + _random_announce(lambda: swarm) if number % 2 else b"POST /tracker?force-refresh")
            sock, data = client_socket(SLOW_SOURCE), b""
            try:
                async with asyncio.timeout(wait(deadline)):
                    await loop.sock_connect(sock, (SERVER, port))
                    await loop.sock_sendall(sock, head + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                            b"Content-Type: application/x-www-form-urlencoded\r\n"
                                            b"Content-Length: %d\r\n\r\n" % SLOW_BODY_LENGTH)
                counts["opened"] += 1
                while time.monotonic() < deadline:
                    try:
                        async with asyncio.timeout(min(SLOW_BODY_BYTE_SECONDS, wait(deadline))):
                            chunk = await loop.sock_recv(sock, 65536)
                    except TimeoutError:
                        await loop.sock_sendall(sock, b"s")
                        continue
                    if not chunk:
                        break
                    data += chunk  # an answer: read it to the end
                    async with asyncio.timeout(5):
                        while chunk := await loop.sock_recv(sock, 65536):
                            data += chunk
                    break
                else:
                    continue  # held to the end of the attack
                counts[classify_raw(data) if data else "closed unanswered"] += 1
            except (OSError, TimeoutError):
                if data or time.monotonic() < deadline:
                    counts[classify_raw(data) if data else NO_ANSWER] += 1
            finally:
                sock.close()
            await asyncio.sleep(SLOW_RECONNECT_SECONDS)

    await asyncio.gather(*(connection(n) for n in range(SLOW_BODY_CONNECTIONS)))
    return counts


async def log_flood(port: int, seconds: float, swarm: bytes) -> Counter:
    """LOG_FLOOD_CONNECTIONS clients, each sending in turn, as fast as answered: a chunked GET
    announce, /tracker/metrics from an address that is not local, and a web refresh whose
    POST body is cut short (issue 17, findings 2 and 8). Each once made Apache or mod_wsgi
    write an error log line."""
    counts: Counter = Counter()
    deadline = time.monotonic() + seconds
    elsewhere = non_local_source()
    kinds = [
        ("chunked", FLOOD_SOURCE, False,
         lambda: (b"GET " + _random_announce(lambda: swarm) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n")),
        ("cut-short", FLOOD_SOURCE, True,
         lambda: (b"POST /tracker?force-refresh HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n"
                  b"Connection: close\r\n\r\nsecret=abc")),
    ]
    if elsewhere is not None:
        kinds.append(("metrics", elsewhere, False,
                      lambda: b"GET /tracker/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
    else:
        counts["metrics not tried: no address outside 127/8"] += 1

    async def client(number: int) -> None:
        turn = number
        while time.monotonic() < deadline:
            name, source, half_close, sent = kinds[turn % len(kinds)]
            turn += 1
            outcome = await one_exchange(port, source, sent(), deadline, half_close)
            if outcome != NO_ANSWER or time.monotonic() < deadline:
                counts[outcome] += 1
                counts[f"{name}: {outcome}"] += 1

    await asyncio.gather(*(client(n) for n in range(LOG_FLOOD_CONNECTIONS)))
    return counts


def slow_reader_request(swarm: bytes) -> bytes:
    query = (f"info_hash={quote(swarm)}&peer_id={quote(random.randbytes(20))}&port={random.randrange(1024, 65536)}"
             f"&uploaded=0&downloaded=0&left={TORRENT_SIZE}&compact=0&numwant=200")
    return b"GET /tracker/announce?" + query.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def slow_readers(port: int, seconds: float, swarm: bytes) -> Counter:
    """SLOW_READERS connections from one address, each with a SLOW_READER_RCVBUF receive
    buffer, pipelining SLOW_READER_PIPELINE `compact=0&numwant=200` announces and never
    reading; each is opened again once Apache closes it (issue 17, finding 6)."""
    import resource  # the attack's process only: one descriptor per connection

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, SLOW_READERS + 1000)), hard))
    loop = asyncio.get_running_loop()
    counts: Counter = Counter()
    deadline = time.monotonic() + seconds
    open_now = 0

    async def connection(number: int) -> None:
        nonlocal open_now
        await asyncio.sleep(number * SLOW_RAMP_SECONDS / SLOW_READERS)
        while time.monotonic() < deadline:
            sock, held = client_socket(SLOW_SOURCE), False
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_READER_RCVBUF)  # before connect: the window
            try:
                async with asyncio.timeout(wait(deadline)):
                    await loop.sock_connect(sock, (SERVER, port))
                    await loop.sock_sendall(sock, b"".join(slow_reader_request(swarm)
                                                           for _ in range(SLOW_READER_PIPELINE)))
                held, open_now = True, open_now + 1
                counts["opened"] += 1
                counts["connected at most"] = max(counts["connected at most"], open_now)
                while time.monotonic() < deadline:
                    await asyncio.sleep(min(SLOW_READER_CHECK_SECONDS, max(0.0, deadline - time.monotonic())))
                    if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in TCP_STATES_CLOSED:
                        counts["closed by Apache"] += 1
                        break
            except (OSError, TimeoutError):
                if time.monotonic() < deadline:
                    counts[NO_ANSWER] += 1
            finally:
                sock.close()
                if held:
                    open_now -= 1
            await asyncio.sleep(SLOW_RECONNECT_SECONDS)

    await asyncio.gather(*(connection(n) for n in range(SLOW_READERS)))
    return counts


def web_refresh(secret: bytes) -> bytes:
    return (b"GET /tracker?refresh HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Refresh-Secret: " + secret
            + b"\r\nConnection: close\r\n\r\n")


async def refresh_guess(port: int, seconds: float, swarm: bytes) -> Counter:
    """GUESS_CONNECTIONS clients at FLOOD_SOURCE guess the web refresh's secret as fast as
    they are answered, while the admin at ADMIN_SOURCE sends the right one every
    ADMIN_REFRESH_SECONDS (issue 17, finding 7: the admin was locked out as long as guessing
    went on). Every admin's request must be admitted: the refresh's text report (refreshed,
    or not due yet), not a bencoded refusal."""
    counts: Counter = Counter()
    deadline = time.monotonic() + seconds

    async def guesser() -> None:
        while time.monotonic() < deadline:
            outcome = await one_exchange(port, FLOOD_SOURCE, web_refresh(random.randbytes(32).hex().encode()), deadline)
            if outcome != NO_ANSWER or time.monotonic() < deadline:
                counts[outcome] += 1

    async def admin() -> None:
        while time.monotonic() < deadline:
            data = await raw_exchange(port, ADMIN_SOURCE, web_refresh(REFRESH_SECRET.encode()), deadline)
            response = split_response(data) if data else None
            body = response[1] if response is not None else b""
            if response is None or body.startswith(b"d14:failure reason"):
                counts[f"admin's refreshes REFUSED ({body[:80]!r})"] += 1
            else:
                counts["admin's refreshes admitted"] += 1
            await asyncio.sleep(ADMIN_REFRESH_SECONDS)

    await asyncio.gather(admin(), *(guesser() for _ in range(GUESS_CONNECTIONS)))
    return counts


APACHE_ATTACKS = {"slow-body": slow_bodies, "log-flood": log_flood, "slow-readers": slow_readers,
                  "refresh-guess": refresh_guess}
ATTACKS.update(APACHE_ATTACKS)
SCENARIOS += tuple(APACHE_ATTACKS)


# -- the faults: begin() starts one, end() undoes it, abort() cleans up after an error -------

class Attack:
    def __init__(self, kind: str, port: int, seconds: float, swarm: bytes):
        self.kind, self.port, self.seconds, self.swarm = kind, port, seconds, swarm
        self.process = None
        self.counts: Counter = Counter()

    def begin(self) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        self.report = context.Queue()
        self.process = context.Process(target=attack, args=(self.kind, self.port, self.seconds, self.swarm,
                                                             self.report), daemon=True)
        self.process.start()
        self.report.get(timeout=60)  # ready

    def end(self) -> None:
        if self.process is None:
            return
        _, counts = self.report.get(timeout=ATTACK_TIMEOUT + 30)
        self.counts = Counter(counts)
        self.process.join(10)
        self.process = None

    def abort(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join()


def hold_sqlite_locks(path: str, writer_flock: bool, pipe) -> None:
    """Process entry, as www-data: take the database's write lock (BEGIN EXCLUSIVE) and, with
    `writer_flock`, the store's `-writer` flock first, as its writers do; hold them until the
    pipe says so (or closes: the parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    www = pwd.getpwnam("www-data")
    os.setgroups([])
    os.setgid(www.pw_gid)
    os.setuid(www.pw_uid)
    if writer_flock:
        writer = open(path + "-writer", "a")
        fcntl.flock(writer, fcntl.LOCK_EX)
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    pipe.send("held")
    with contextlib.suppress(EOFError):
        pipe.recv()
    conn.execute("ROLLBACK")


class SqliteLocks:
    def __init__(self, path: str, writer_flock: bool):
        self.path, self.writer_flock = path, writer_flock
        self.process = None

    def begin(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child_end = context.Pipe()
        self.process = context.Process(target=hold_sqlite_locks, args=(self.path, self.writer_flock, child_end),
                                       daemon=True)
        self.process.start()
        child_end.close()
        if not self.pipe.poll(60):
            raise RuntimeError(f"could not take the write locks of {self.path} within 60 s")
        self.pipe.recv()

    def end(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            self.pipe.send("release")
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process = None

    abort = end


class MariadbStop:
    def __init__(self, server: PrivateMariadb):
        self.server = server

    def begin(self) -> None:
        self.server.kill()

    def end(self) -> None:
        if not self.server.running():
            self.server.start()

    def abort(self) -> None:
        pass  # the server's own clean-up follows


class MariadbHang:
    def __init__(self, server: PrivateMariadb):
        self.server = server

    def begin(self) -> None:
        self.server.hang()

    def end(self) -> None:
        self.server.resume()

    abort = end


# What each scenario does, per store, for the legend under the table.
FAULTS = {
    ("peer-flood", None): f"new peer_ids into one registered swarm from {FLOOD_SOURCE}, "
                          f"{FLOOD_CONNECTIONS} keep-alive connections back to back",
    ("swarm-flood", None): f"a random info hash per announce from {FLOOD_SOURCE} (whitelist = \"open\"), "
                           f"{FLOOD_CONNECTIONS} keep-alive connections",
    ("slow", None): f"{SLOW_CONNECTIONS} connections from {SLOW_SOURCE}, a header line every "
                    f"{SLOW_LINE_SECONDS} s, reopened when closed",
    ("split-route", None): f"from {FLOOD_SOURCE}, {ISSUE17_CONNECTIONS} keep-alive connections: `info_hash=<the "
                           "other process's>&info_hash=<torrent 0>` with the swarm's peer_ids (learnt from compact=0 "
                           "answers) under another key, and new peer_ids",
    ("rotation-48", None): f"one IPv6 /48 ({ROTATION_48}::/48) by X-Forwarded-For from {FLOOD_SOURCE} (a trusted "
                           f"proxy), a new /64 per request, {ISSUE17_CONNECTIONS} keep-alive connections: new peers "
                           "into torrent 0, their completions, new swarms (whitelist = \"open\"); 5 % of requests "
                           f"a leecher at {PROBE_ADDRESS} asking torrent 0 for 200 peers",
    ("symlinks", None): f"links in the torrent directory (the config, the run directory, /) served by site.conf at "
                        f"/torrents, asked for by {ISSUE17_CONNECTIONS} keep-alive connections from {FLOOD_SOURCE}",
    ("db-stop", "mysql"): "the private mariadbd killed (SIGKILL), restarted on its datadir when the time is up",
    ("db-stop", "sqlite"): "another process holds BEGIN EXCLUSIVE: every write waits out the busy timeout and "
                           "fails, as writes fail while a server is down (WAL: reads go on)",
    ("db-hang", "mysql"): "the private mariadbd stopped with SIGSTOP, then SIGCONT",
    ("db-hang", "sqlite"): "another process holds the store's `-writer` flock and BEGIN EXCLUSIVE: writers "
                           "wait with no end, as on a frozen server (WAL: reads go on)",
}
FAULTS.update({
    ("slow-body", None): f"{SLOW_BODY_CONNECTIONS} connections from {SLOW_SOURCE}, GET announces and POST web "
                         f"refreshes with Content-Length: {SLOW_BODY_LENGTH} and a body byte every "
                         f"{SLOW_BODY_BYTE_SECONDS} s, reopened when answered or closed",
    ("log-flood", None): f"{LOG_FLOOD_CONNECTIONS} clients in turn: chunked GET announces and POST web refreshes "
                         f"cut short from {FLOOD_SOURCE}, /tracker/metrics from an address outside 127/8",
    ("slow-readers", None): f"{SLOW_READERS} connections from {SLOW_SOURCE} with a {SLOW_READER_RCVBUF}-byte "
                            f"receive buffer, each pipelining {SLOW_READER_PIPELINE} compact=0&numwant=200 "
                            "announces and never reading, reopened when Apache closes them",
    ("refresh-guess", None): f"{GUESS_CONNECTIONS} clients at {FLOOD_SOURCE} guessing the web refresh's secret "
                             f"as fast as answered; the admin at {ADMIN_SOURCE} sends the right one every "
                             f"{ADMIN_REFRESH_SECONDS:.0f} s and must be admitted every time",
})


def fault_seconds(scenario: str, seconds: float) -> tuple[float, float]:
    """(lead, duration): when the fault starts and how long it lasts in a run of `seconds`."""
    lead = min(LEAD_SECONDS, seconds / 6)
    nominal = {"db-stop": DB_STOP_SECONDS, "db-hang": DB_HANG_SECONDS}.get(scenario, math.inf)
    return lead, min(nominal, seconds - 2 * lead)


# -- stores and servers -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateMariadb:
    """A mariadbd of this script's own (datadir and port), as tests/test_e2e_apache.py's
    private_mariadb: the shared server on 3306 is never stopped."""

    USER, PASSWORD = "tracker", "hostile-soak-only"

    def __init__(self, root: Path):
        mysql_user = pwd.getpwnam("mysql")
        self.base = root / "mariadb"
        self.base.mkdir()
        os.chown(self.base, mysql_user.pw_uid, mysql_user.pw_gid)
        self.datadir, self.socket, self.port = self.base / "data", self.base / "mysqld.sock", free_port()
        self.process: subprocess.Popen | None = None
        install = subprocess.run(["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={self.datadir}",
                                  "--auth-root-authentication-method=normal"], capture_output=True, text=True)
        if install.returncode:
            raise RuntimeError(f"mariadb-install-db failed: {(install.stdout + install.stderr)[-2000:]}")
        self.start()
        admin = self.admin()
        cur = admin.cursor()
        cur.execute(f"CREATE USER '{self.USER}'@'127.0.0.1' IDENTIFIED BY '{self.PASSWORD}'")
        cur.execute(f"GRANT ALL ON `hostile%`.* TO '{self.USER}'@'127.0.0.1'")
        admin.close()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["/usr/sbin/mariadbd", "--no-defaults", "--user=mysql", f"--datadir={self.datadir}",
             f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--pid-file={self.base}/mysqld.pid", f"--log-error={self.base}/error.log",
             "--skip-name-resolve", "--skip-log-bin", f"--innodb-buffer-pool-size={MARIADB_BUFFER_POOL}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {(self.base / 'error.log').read_text(errors='replace')}")
            try:
                self.admin().close()
                return
            except mysql.connector.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def admin(self):
        return mysql.connector.connect(user="root", unix_socket=str(self.socket), connection_timeout=5)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def remove(self) -> None:
        if self.running():
            self.process.send_signal(signal.SIGCONT)  # a hang's SIGSTOP would hold SIGTERM back
            devserver.stop(self.process, 30)
        shutil.rmtree(self.base, ignore_errors=True)


class Database:
    """One scenario's store: a fresh SQLite file, or a fresh database on the private MariaDB."""

    def __init__(self, kind: str, run_dir: Path, name: str, server: PrivateMariadb | None):
        self.kind, self.server = kind, server
        if kind == "sqlite":
            self.dir = run_dir / "db"
            self.dir.mkdir()
            self.path = str(self.dir / "tracker.sqlite")
            self.url = f"sqlite:///{self.path}"
        else:
            self.name = "hostile_" + name.replace("-", "_")
            admin = server.admin()
            admin.cursor().execute(f"CREATE DATABASE {self.name}")
            admin.close()
            self.url = (f"mysql://{server.USER}:{server.PASSWORD}@127.0.0.1:{server.port}/{self.name}")

    def prepare(self, hashes: list[bytes]) -> None:
        """Tables, the torrents registered, a refresh marked done now; SQLite files to www-data."""
        now = int(time.time())
        store = open_store(self.url, Config().peer_timeout)
        store.create_tables()
        for i, h in enumerate(hashes):
            assert store.register(Torrent(h, None, f"hostile torrent {i}", TORRENT_SIZE), now)
        assert store.take_refresh_lock("hostile", now, 600)
        store.release_refresh_lock("hostile", finished_at=now)
        store.close()
        if self.kind == "sqlite":
            www = pwd.getpwnam("www-data")
            for path in [self.dir, *self.dir.iterdir()]:
                os.chown(path, www.pw_uid, www.pw_gid)

    def fetch(self, sql: str, params: tuple) -> list[tuple]:
        if self.kind == "sqlite":
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        conn = mysql.connector.connect(user=self.server.USER, password=self.server.PASSWORD, host="127.0.0.1",
                                       port=self.server.port, database=self.name, connection_timeout=10)
        try:
            cur = conn.cursor()
            cur.execute(sql.replace("?", "%s"), params)
            return cur.fetchall()
        finally:
            conn.close()

    def legit_rows(self, hashes: list[bytes]) -> tuple[set[tuple[bytes, bytes]], dict[bytes, int]]:
        """(info hash, peer_id) of every stored peer from LEGIT_SOURCE; `downloaded` by info hash."""
        peers = self.fetch("SELECT h.info_hash, p.peer_id FROM peers p JOIN info_hashes h "
                           "ON h.torrent_id = p.torrent_id WHERE p.ip = ?", (socket.inet_aton(LEGIT_SOURCE),))
        downloaded = self.fetch("SELECT h.info_hash, t.downloaded FROM info_hashes h JOIN torrents t "
                                f"ON t.id = h.torrent_id WHERE h.info_hash IN ({', '.join('?' * len(hashes))})",
                                tuple(hashes))
        return {(bytes(h), bytes(p)) for h, p in peers}, {bytes(h): int(d) for h, d in downloaded}

    def drop(self) -> None:
        if self.kind == "mysql" and self.server.running():
            with contextlib.suppress(mysql.connector.Error):
                admin = self.server.admin()
                admin.cursor().execute(f"DROP DATABASE IF EXISTS {self.name}")
                admin.close()


class Apache:
    """The shipped snippets of a topology in a real Apache, as tests/conftest.py's start_apache
    builds it."""

    def __init__(self, run_dir: Path, config_text: str, topology: str, site_conf: str = ""):
        self.run_dir = run_dir
        devserver.prepare_run_dir(run_dir)
        config = run_dir / "tracker.toml"
        config.write_text(config_text)
        config.chmod(0o644)
        self.port = free_port()
        conf = devserver.httpd_conf(run_dir, self.port, config, APACHE_DIR, site_conf=site_conf, topology=topology)
        self.process = devserver.start(run_dir, conf)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"apache exited: {self.error_log()}")
            try:
                socket.create_connection((SERVER, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def error_log(self) -> str:
        return (self.run_dir / "error.log").read_text(errors="replace")

    def error_log_size(self) -> int:
        return (self.run_dir / "error.log").stat().st_size

    def stop(self) -> None:
        devserver.stop(self.process)


def config_text(run_dir: Path, database: str, whitelist: str, *extra: str) -> str:
    torrents, output = run_dir / "torrents", run_dir / "output"
    torrents.mkdir()  # empty: the torrents are registered by hand (path ''), no rescan removes them
    output.mkdir()
    www = pwd.getpwnam("www-data")
    os.chown(output, www.pw_uid, www.pw_gid)
    swarms = run_dir / "swarms"
    swarms.mkdir()
    os.chown(swarms, www.pw_uid, www.pw_gid)
    return "\n".join([
        f'database = "{database}"', 'base_url = "http://torrents.example.org/files"',
        f'torrent_dir = "{torrents}"', f'output_dir = "{output}"', f'swarm_dir = "{swarms}"',
        f"refresh_interval = {REFRESH_INTERVAL}", f'whitelist = "{whitelist}"', *extra, "",
    ])


def site_links_conf(run_dir: Path) -> str:
    """The symlinks scenario: site.conf serving the run's torrent directory at /torrents, in
    which an attacker dropped links to the config, the run directory and /."""
    torrents = run_dir / "torrents"
    (torrents / "conf.txt").symlink_to(run_dir / "tracker.toml")
    (torrents / "dbdir").symlink_to(run_dir)
    (torrents / "rootfs").symlink_to("/")
    return (f'Define TRACKER_WSGI_SITE "{torrents}"\nDefine TRACKER_WSGI_OUTPUT "{run_dir / "output"}"\n'
            f'Alias /torrents "{torrents}"\nInclude "{APACHE_DIR}/site.conf"\n')


def issue17_measures(scenario: str, db: Database, hashes: list[bytes], peers: list[Peer]) -> str:
    """What the attacker of an issue-17 scenario holds in the store after the run."""
    def count(sql: str, params: tuple) -> int:
        return int(db.fetch(sql, params)[0][0])

    in_swarm = ("SELECT COUNT(*) FROM peers p JOIN info_hashes h ON h.torrent_id = p.torrent_id "
                "WHERE h.info_hash = ? AND ")
    if scenario == "split-route":
        flood = count(in_swarm + "p.ip = ?", (hashes[0], socket.inet_aton(FLOOD_SOURCE)))
        return f"torrent 0: {flood} peers stored from {FLOOD_SOURCE} (peers_per_address {Limits().peers_per_address})"
    if scenario == "rotation-48":
        site = socket.inet_pton(socket.AF_INET6, ROTATION_48 + "::")[:6]
        rows = db.fetch("SELECT p.ip FROM peers p JOIN info_hashes h ON h.torrent_id = p.torrent_id "
                        "WHERE h.info_hash = ?", (hashes[0],))
        theirs = sum(bytes(ip)[:6] == site and len(bytes(ip)) == 16 for (ip,) in rows)
        legit_completions = sum(p.completed for p in peers if p.torrent == 0)
        downloaded = count("SELECT t.downloaded FROM torrents t JOIN info_hashes h ON h.torrent_id = t.id "
                           "WHERE h.info_hash = ?", (hashes[0],))
        swarms = count("SELECT COUNT(*) FROM torrents", ()) - len(hashes)
        limits = Limits()
        return (f"the /48 holds {theirs} peers of torrent 0 (peers_per_ipv6_48 {limits.peers_per_ipv6_48}), "
                f"{downloaded - legit_completions} completions counted there, {swarms} new swarms registered "
                f"(per process and minute: {limits.completions_per_minute_ipv6_48}, "
                f"{limits.new_swarms_per_minute_ipv6_48})")
    return ""


def memory_limit(topology: str, conf: Path = APACHE_DIR / "tracker.conf") -> int | None:
    """The bound of one tracker process (bytes): in daemon mode the smallest memory-limit= of
    the snippet's WSGIDaemonProcess lines; in embedded mode the config's memory_limit (this
    script's config leaves the default), which each Apache child measures its RSS against."""
    if topology == "embedded":
        return Config().limits.memory_limit
    text = conf.read_text().replace("\\\n", " ")
    limits = [int(m.group(1)) for line in text.splitlines() if line.strip().startswith("WSGIDaemonProcess")
              for m in [re.search(r"memory-limit=(\d+)", line)] if m]
    return min(limits) if limits else None


class DaemonSampler(threading.Thread):
    """Each second: the RSS of this Apache's tracker processes, children of its parent process
    (other Apaches on the machine have their own): the mod_wsgi daemons (display-name
    "(wsgi:tracker_wsgi_N)"), or in embedded mode every child."""

    def __init__(self, apache_pid: int, topology: str):
        super().__init__(name="daemon sampler", daemon=True)
        self.apache_pid = apache_pid
        self.command_prefix = b"(wsgi:" if topology == "daemon" else b""
        self.halt = threading.Event()
        self.peak_total = self.peak_process = 0
        self.seen: set[int] = set()
        self.first: set[int] = set()

    def daemons(self) -> list[int]:
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == self.apache_pid and Path(f"/proc/{name}/cmdline").read_bytes().startswith(self.command_prefix):
                    pids.append(int(name))
            except (OSError, IndexError, ValueError):
                continue
        return pids

    @staticmethod
    def rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sample(self) -> None:
        pids = self.daemons()
        sizes = [self.rss(pid) for pid in pids]
        self.peak_total = max(self.peak_total, sum(sizes))
        self.peak_process = max([self.peak_process, *sizes])
        if not self.first:
            self.first = set(pids)
        self.seen |= set(pids)

    def run(self) -> None:
        while not self.halt.wait(1):
            self.sample()

    def stop(self) -> None:
        self.halt.set()
        self.join(5)

    @property
    def restarts(self) -> int:
        return len(self.seen - self.first)


# -- one scenario ---------------------------------------------------------------------------

@dataclass
class Row:
    store: str
    scenario: str
    fault_seconds: float = 0.0
    legit: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # kind -> (outcome, seconds)
    rss_process: int = 0
    rss_total: int = 0
    restarts: int = 0
    rows: StoreCheck | None = None  # the store read SETTLE_SYNC_INTERVALS after the run
    late: StoreCheck | None = None  # read again, while something is missing (LATE_SECONDS at most)
    late_seconds: int = 0
    log_bytes: int = 0
    attack: Counter = field(default_factory=Counter)
    attack_seconds: float = 0.0
    measured: str = ""  # what the store says a scenario's attacker added (issue17_measures)
    error: str = ""

    def outcomes(self, *kinds: str) -> list[tuple[str, float]]:
        return [answer for kind in kinds for answer in self.legit.get(kind, [])]

    @property
    def non_bencoded(self) -> int:
        return sum(o == NON_BENCODED for o, _ in self.outcomes(MEMORY, NEW, COMPLETION)) + self.attack[NON_BENCODED]


@dataclass
class StoreCheck:
    """What the store holds of the legitimate peers against the answers they got."""

    peers_checked: int = 0  # answered with success, not stopped since, nothing unanswered
    peers_lost: int = 0  # of those, with no row
    peers_stale: int = 0  # answered `stopped`, nothing unanswered, still stored
    completions_answered: int = 0  # with success, once per peer
    completions_lost: int = 0  # per torrent, answered minus stored `downloaded`
    completions_extra: int = 0  # per torrent, stored `downloaded` minus answered

    @property
    def wrong(self) -> bool:
        return bool(self.peers_lost or self.peers_stale or self.completions_lost)


def check_store(db: Database, hashes: list[bytes], peers: list[Peer]) -> StoreCheck:
    present, downloaded = db.legit_rows(hashes)
    check = StoreCheck()
    for peer in peers:
        stored = (hashes[peer.torrent], peer.peer_id) in present
        if peer.certain and peer.expect == PRESENT:
            check.peers_checked += 1
            check.peers_lost += not stored
        elif peer.certain and peer.expect == ABSENT:
            check.peers_stale += stored
    answered = Counter(peer.torrent for peer in peers if peer.completed)
    check.completions_answered = sum(answered.values())
    for torrent, h in enumerate(hashes):
        check.completions_lost += max(0, answered[torrent] - downloaded.get(h, 0))
        check.completions_extra += max(0, downloaded.get(h, 0) - answered[torrent])
    return check


def run_scenario(store: str, scenario: str, args, root: Path, server: PrivateMariadb | None,
                 limit: int | None) -> Row:
    label = f"{store}-{scenario}"
    row = Row(store, scenario)
    hashes = [info_hash(i) for i in range(LEGIT_TORRENTS)]
    lead, duration = fault_seconds(scenario, args.seconds)
    with contextlib.ExitStack() as stack:
        run_dir = root / label
        run_dir.mkdir()
        stack.callback(shutil.rmtree, run_dir, True)
        db = Database(store, run_dir, label, server)
        stack.callback(db.drop)
        db.prepare(hashes)
        open_mode = scenario in ("swarm-flood", "rotation-48")
        extra = [f'trusted_proxies = ["{FLOOD_SOURCE}/32"]'] if scenario == "rotation-48" else []
        if scenario == "refresh-guess":
            extra.append(f'refresh_secret = "{REFRESH_SECRET}"')
        text = config_text(run_dir, db.url, "open" if open_mode else "directory", *extra)
        apache = Apache(run_dir, text, args.topology, site_links_conf(run_dir) if scenario == "symlinks" else "")
        stack.callback(apache.stop)
        sampler = DaemonSampler(apache.process.pid, args.topology)
        sampler.sample()
        sampler.start()
        stack.callback(sampler.stop)
        legit = LegitClient(apache.port, hashes, args.legit_rate, seed=len(label))
        stack.callback(legit.close)
        started = time.monotonic()
        legit.run(legit.warm_up()).result()
        say(label, f"{LEGIT_PEERS} legitimate peers announced in {time.monotonic() - started:.1f} s")

        if scenario in ATTACKS:
            fault = Attack(scenario, apache.port, duration, hashes[0])
        elif store == "mysql":
            fault = MariadbStop(server) if scenario == "db-stop" else MariadbHang(server)
        else:
            fault = SqliteLocks(db.path, writer_flock=scenario == "db-hang")
        stack.callback(fault.abort)

        start = time.monotonic()
        window = legit.run(legit.announce_for(args.seconds))
        time.sleep(max(0.0, start + lead - time.monotonic()))
        log_before = apache.error_log_size()
        due = time.monotonic()
        fault.begin()
        fault_start = time.monotonic()
        say(label, f"fault on for {duration:.0f} s (it took {fault_start - due:.1f} s to start)")
        time.sleep(max(0.0, fault_start + duration - time.monotonic()))
        fault.end()
        row.fault_seconds = time.monotonic() - fault_start
        say(label, f"fault off after {row.fault_seconds:.0f} s")
        window.result()
        legit.run(legit.retry_completions(COMPLETION_RETRY_LIMIT)).result()
        time.sleep(SETTLE_SYNC_INTERVALS * SYNC_INTERVAL)

        row.rows = check_store(db, hashes, legit.peers)
        row.log_bytes = apache.error_log_size() - log_before
        sampler.sample()
        row.rss_process, row.rss_total, row.restarts = sampler.peak_process, sampler.peak_total, sampler.restarts
        for sent, kind, outcome, seconds in legit.results:
            if sent >= fault_start:
                row.legit.setdefault(kind, []).append((outcome, seconds))
        late = row.rows
        while late.wrong and row.late_seconds < LATE_SECONDS:  # late, or lost?
            time.sleep(SYNC_INTERVAL)
            row.late_seconds += SYNC_INTERVAL
            late = row.late = check_store(db, hashes, legit.peers)
        if isinstance(fault, Attack):
            row.attack, row.attack_seconds = fault.counts, duration
        row.measured = issue17_measures(scenario, db, hashes, legit.peers)
        if legit.refused:
            row.error = f"{len(legit.refused)} completions still refused {COMPLETION_RETRY_LIMIT} s after the run"
    return row


# -- the tables ---------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def share(answers: list[tuple[str, float]]) -> float | None:
    return sum(o == SUCCESS for o, _ in answers) / len(answers) if answers else None


def target_cells(row: Row, limit: int | None) -> list[str]:
    rows = row.rows
    memory = row.outcomes(MEMORY)
    ok, slowest = share(memory), p99([s for _, s in memory])
    rest = row.outcomes(NEW, COMPLETION)
    rest_ok, rest_p99 = share(rest), p99([s for _, s in rest])
    log_rate = row.log_bytes / 1024 / max(row.fault_seconds / 60, 1 / 60)
    rss = (f"{row.rss_process / 2**20:.0f} MiB = {100 * row.rss_process / limit:.0f} % "
           f"{verdict(row.rss_process <= TARGET_RSS * limit)}" if limit else
           f"{row.rss_process / 2**20:.0f} MiB (no memory-limit) FAIL")
    return [
        f"{row.fault_seconds:.0f} s",
        f"{100 * ok:.1f} % {verdict(ok >= TARGET_OK)}" if ok is not None else "none FAIL",
        f"{slowest:.2f} s {verdict(slowest < TARGET_P99)}" if slowest is not None else "none FAIL",
        (f"{100 * rest_ok:.1f} % / {rest_p99:.2f} s" if rest_ok is not None else "none"),
        rss,
        f"{rows.completions_lost} of {rows.completions_answered} {verdict(rows.completions_lost == 0)}",
        f"{rows.peers_lost} of {rows.peers_checked}",
        f"{row.non_bencoded} {verdict(row.non_bencoded == 0)}",
        f"{log_rate:.1f} {verdict(log_rate <= TARGET_LOG_KB_PER_MINUTE)}",
    ]


def counts_text(counts: Counter) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items() if n) or "none"


def print_tables(rows: list[Row], limit: int | None, args) -> None:
    print(f"\n### Hostile clients, {args.topology} mode, {args.seconds:.0f} s per scenario, legitimate rate "
          f"{args.legit_rate:.0f}/s\n")
    print("Targets (issue 12): announces memory can answer >= 99 % ok with p99 < 1 s; daemon RSS peak <= 80 % of "
          "memory-limit; 0 answered completions lost; 0 non-bencoded answers; error log <= 100 KB per minute "
          "of fault. Legitimate figures: announces sent from the fault's start to the end.\n")
    print("| store | scenario | fault | memory-answerable ok (>= 99 %) | their p99 (< 1 s) | new peers + "
          "completions: ok / p99 | daemon RSS peak (<= 80 % of memory-limit) | completions lost (0) | "
          "peers lost | non-bencoded (0) | error log KB/min of fault (<= 100) |")
    print("|" + "---|" * 11)
    for row in rows:
        cells = ["ERROR: " + row.error] + [""] * 8 if row.rows is None else target_cells(row, limit)
        print(f"| {row.store} | {row.scenario} | " + " | ".join(cells) + " |")

    print("\n| store | scenario | legitimate answers by kind | attacker's answers | attacker's answers/s | "
          "daemons' RSS peak, sum | daemon restarts | completions answered / extra in store | "
          "stopped peers still stored | read again: still wrong | error log bytes | note |")
    print("|" + "---|" * 12)
    for row in rows:
        if row.rows is None:
            continue
        kinds = "; ".join(f"{kind}: {counts_text(Counter(o for o, _ in row.legit[kind]))}"
                          for kind in (MEMORY, NEW, COMPLETION) if kind in row.legit)
        answered = sum(row.attack[o] for o in OUTCOMES if o != NO_ANSWER)
        rate = f"{answered / row.attack_seconds:.0f}" if row.attack_seconds else ""
        late = row.late and (f"after {row.late_seconds} s more: {row.late.peers_lost} peers lost, "
                             f"{row.late.completions_lost} completions lost, {row.late.peers_stale} stopped "
                             "still stored")
        print(f"| {row.store} | {row.scenario} | {kinds} | {counts_text(row.attack)} | {rate} | "
              f"{row.rss_total / 2**20:.0f} MiB | {row.restarts} | {row.rows.completions_answered} / "
              f"{row.rows.completions_extra} | {row.rows.peers_stale} | {late or ''} | {row.log_bytes} | "
              f"{'; '.join(t for t in (row.measured, row.error) if t)} |")

    print("\nWhat each fault is:")
    seen = set()
    for row in rows:
        key = (row.scenario, row.store if row.scenario.startswith("db-") else None)
        if key not in seen:
            seen.add(key)
            print(f"- {row.scenario}{' (' + row.store + ')' if key[1] else ''}: {FAULTS[key]}")
    source = APACHE_DIR / "tracker.conf" if args.topology == "daemon" else "the config's memory_limit"
    print(f"- memory-limit read from {source}: "
          f"{limit if limit is None else f'{limit / 2**20:.0f} MiB'} per tracker process (in embedded mode, each "
          "Apache child: its 'daemon' cells are the children's); the RSS cell is the largest one's peak (the "
          "limit is per process)")


# -- main ---------------------------------------------------------------------------------

def names(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in chosen if n not in allowed]
        if bad or not chosen:
            raise argparse.ArgumentTypeError(f"{', '.join(bad) or 'nothing'}: choose from {', '.join(allowed)}")
        return chosen
    return parse


def interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", type=names(STORES), default=list(STORES))
    parser.add_argument("--scenarios", type=names(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--seconds", type=float, default=90, help="length of each scenario (default 90)")
    parser.add_argument("--legit-rate", type=float, default=150, help="legitimate announces per second (default 150)")
    parser.add_argument("--topology", choices=devserver.TOPOLOGIES, default="daemon",
                        help="the snippets the tracker runs under: daemon (tracker.conf, the default) or embedded "
                             "(embedded-server.conf and tracker-embedded.conf)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: Apache drops to www-data, and mariadbd runs as mysql")
    if args.seconds < 12:
        parser.error("--seconds must be at least 12")
    signal.signal(signal.SIGTERM, interrupted)
    limit = memory_limit(args.topology)
    rows: list[Row] = []
    began = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            root = Path(tempfile.mkdtemp(prefix="tracker-hostile-"))
            root.chmod(0o755)  # www-data reaches the run directories inside
            stack.callback(shutil.rmtree, root, True)
            for store in args.stores:
                server = None
                if store == "mysql":
                    say("starting a private mariadbd")
                    server = PrivateMariadb(root)
                    stack.callback(server.remove)
                for scenario in args.scenarios:
                    say(f"{store}-{scenario}: setting up")
                    try:
                        rows.append(run_scenario(store, scenario, args, root, server, limit))
                    except Exception as exc:  # the next scenario still runs; the table says why
                        say(f"{store}-{scenario} failed: {exc!r}")
                        rows.append(Row(store, scenario, error=f"{type(exc).__name__}: {exc}"[:300]))
                    if server is not None and not server.running():
                        server.start()
    except KeyboardInterrupt:
        say("interrupted; cleaned up")
        print_tables(rows, limit, args)
        return 130
    print_tables(rows, limit, args)
    say(f"done in {(time.monotonic() - began) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
