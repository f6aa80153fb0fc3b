"""A black-box conformance probe for an HTTP BitTorrent tracker: real HTTP requests to its
announce and scrape URLs, and checks of what a BitTorrent client relies on, one line each.

    python tests/conformance.py http://127.0.0.1:8000/tracker --info-hashes FILE
    python tests/conformance.py http://a/tracker http://b/tracker --lag 4 ...   # two hosts

Each check states what the BEPs say and what this tracker promises beyond them (README,
"Protocol notes" and "Hostile clients"; the wordings are tracker_wsgi/protocol.py's). Only
HTTP is used: nothing here reads the tracker's database or imports the tracker.

Every check works on a swarm of its own (a torrent from --info-hashes, registered there; in
whitelist mode `open`, a random hash), with peer_ids and ports new to this run, so a check
never sees another's peers. Several URLs are several hosts of one tracker: each check has a
home host (in turn), and the checks named `...-at-other-host` announce at one and look at
another, allowing `lag` seconds for a change to cross (the README promises about 2 x
sync_interval); on one host every answer must be right at once, whichever process or Apache
child answers it. Requests go on a new connection each (as most clients announce), or with
--keep-alive on connections kept open as long as the server keeps them.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import itertools
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar
from urllib.parse import urlsplit

# -- the tracker's promised wordings (tracker_wsgi/protocol.py; copied, not imported: black box) --
UNKNOWN_TORRENT = "Requested torrent not available on this tracker."
BAD_INFO_HASH = "Invalid info_hash: it must be exactly 20 bytes, URL-encoded."
BAD_PEER_ID = "Invalid peer_id: it must be exactly 20 bytes, URL-encoded."
BAD_PORT = "Invalid port: it must be a number from 1 to 65535."
BAD_EVENT = "Invalid event: use started, stopped, completed, paused or leave it out."
BAD_KEY = "Invalid key: it must be at most 64 bytes."
TOO_MANY_HASHES = "Too many info_hash values: at most 64 per scrape."
REPEATED_PARAMETER = "Invalid request: each parameter may appear only once (only a scrape repeats info_hash)."
FULL_SCRAPE_DISABLED = "Full scrape is disabled on this tracker: name an info_hash."
PEER_CONFLICT = "Duplicated peer_id or changed IP address without the same key. Please restart BitTorrent."
UNKNOWN_PATH = "Unknown tracker path: announce at /tracker/announce, scrape at /tracker/scrape."
METHOD_NOT_ALLOWED = "Only GET and HEAD are accepted."
IP_IGNORED = "The ip parameter is ignored; peers are given the address you connect from."


def missing_or_bad(name: str) -> str:
    return f"Missing or invalid {name}: it must be a non-negative whole number."


T = TypeVar("T")
SIZE = 1_000_000  # a torrent's length as the probe's leechers report it (left=SIZE at start)
MAX_SCRAPE_HASHES = 64
TIMEOUT = 30  # seconds for one request: a loaded 2-core machine answers in well under one

# -- bencoding (BEP 3), strict: what the probe calls an answer ---------------------------------


class NotBencoded(ValueError):
    pass


def bdecode(data: bytes, canonical: bool = False) -> object:
    """Decode one bencoded value that is the whole of `data`; anything else raises. With
    `canonical`, also as BEP 3 asks: dictionary keys sorted, integers without leading zeros
    (clients read answers that are not, so only canonical-bencoding asks for it)."""
    value, end = _decode(data, 0, canonical)
    if end != len(data):
        raise NotBencoded(f"{len(data) - end} bytes after the value")
    return value


def _decode(data: bytes, at: int, canonical: bool) -> tuple[object, int]:
    if at >= len(data):
        raise NotBencoded("cut short")
    lead = data[at:at + 1]
    if lead == b"i":
        end = data.index(b"e", at)
        text = data[at + 1:end]
        if not text or (canonical and text != str(int(text)).encode()):
            raise NotBencoded(f"integer {text!r} not canonical")
        return int(text), end + 1
    if lead == b"l":
        items, at = [], at + 1
        while data[at:at + 1] != b"e":
            item, at = _decode(data, at, canonical)
            items.append(item)
        return items, at + 1
    if lead == b"d":
        entries: dict[bytes, object] = {}
        last, at = None, at + 1
        while data[at:at + 1] != b"e":
            key, at = _decode(data, at, canonical)
            if not isinstance(key, bytes):
                raise NotBencoded("a dictionary key that is not a string")
            if canonical and last is not None and key <= last:
                raise NotBencoded(f"dictionary keys not sorted: {key!r} after {last!r}")
            entries[key], at = _decode(data, at, canonical)
            last = key
        return entries, at + 1
    if lead.isdigit():
        colon = data.index(b":", at)
        length = int(data[at:colon])
        if colon + 1 + length > len(data):
            raise NotBencoded("string cut short")
        return data[colon + 1:colon + 1 + length], colon + 1 + length
    raise NotBencoded(f"unexpected byte {lead!r} at {at}")


# -- HTTP -----------------------------------------------------------------------------------------


def escape(data: bytes, style: str = "minimal") -> str:
    """URL-escape bytes: `minimal` leaves RFC 3986's unreserved characters as they are (as
    libtorrent does), `upper` / `lower` escape every byte as %XY in that case of hex."""
    if style == "upper":
        return "".join(f"%{b:02X}" for b in data)
    if style == "lower":
        return "".join(f"%{b:02x}" for b in data)
    unreserved = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    return "".join(chr(b) if b in unreserved else f"%{b:02X}" for b in data)


def query_of(fields: Iterable[tuple[str, object]], style: str = "minimal") -> str:
    parts = []
    for name, value in fields:
        if isinstance(value, bytes):
            parts.append(f"{name}={escape(value, style)}")
        elif value is None:
            parts.append(name)
        else:
            parts.append(f"{name}={value}")
    return "&".join(parts)


@dataclass
class Answer:
    """One HTTP answer as a client reads it."""

    url: str
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    local: str  # the address the request left from (what the tracker should see)
    reused: bool  # sent on a kept-alive connection
    closing: bool  # the server said it closes the connection (Connection: close, or HTTP/1.0)
    decoded: object = None
    problem: str = ""  # why the body is not a bencoded dictionary, if it is not

    def __post_init__(self) -> None:
        try:
            self.decoded = bdecode(self.body)
            if not isinstance(self.decoded, dict):
                self.problem = "a bencoded value, not a dictionary"
        except (NotBencoded, ValueError, IndexError) as exc:
            self.problem = f"not bencoded ({exc})"

    @property
    def dict(self) -> dict:
        return self.decoded if isinstance(self.decoded, dict) else {}

    @property
    def failure(self) -> str | None:
        reason = self.dict.get(b"failure reason")
        return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else None

    def __str__(self) -> str:
        shown = self.decoded if not self.problem else self.body[:160]
        return f"HTTP {self.status} {self.headers.get('content-type', '')!r} {shown!r}"


RETRIES = 10  # a `retry in` answer is asked again (BEP 31), this many times at most...
RETRY_PAUSE = 0.5  # ...this many seconds apart (not the minutes it says: a probe is in a hurry)


class Transport:
    """Requests, each on a new connection or on one kept alive per thread, host and source
    address while the server keeps it (a client retries once, on a new connection, a request
    the server closed the kept connection before reading). An answer with `retry in` (BEP 31:
    the tracker cannot answer now, e.g. while a process starts) is asked again, as a client
    would, and counted in `retried` by its failure reason."""

    def __init__(self, keep_alive: bool, record: Callable[[Answer], None]):
        self.keep_alive = keep_alive
        self.record = record
        self.retried: Counter[str] = Counter()  # failure reasons that came with `retry in`
        self._local = threading.local()

    def _connections(self) -> dict:
        if not hasattr(self._local, "connections"):
            self._local.connections = {}
        return self._local.connections

    def request(self, url: str, method: str = "GET", source: str | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        for _ in range(RETRIES):
            answer = self._request(url, method, source, headers)
            if b"retry in" not in answer.dict:
                break
            self.retried[answer.failure or ""] += 1
            time.sleep(RETRY_PAUSE)
        return answer

    def _request(self, url: str, method: str, source: str | None, headers: dict[str, str] | None) -> Answer:
        parts = urlsplit(url)
        target = parts.path + ("?" + parts.query if parts.query else "")
        where = (parts.hostname, parts.port or 80, source)
        kept = self._connections().pop(where, None) if self.keep_alive else None
        for attempt in range(2):
            reused = kept is not None
            connection = kept or http.client.HTTPConnection(
                parts.hostname or "", parts.port or 80, timeout=TIMEOUT,
                source_address=(source, 0) if source else None)
            sent = {"Connection": "keep-alive" if self.keep_alive else "close", **(headers or {})}
            try:
                connection.request(method, target, headers=sent)
                local = connection.sock.getsockname()[0]
                response = connection.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                if not reused or attempt:
                    raise
                kept = None  # the server closed the idle connection: once more, on a new one
                continue
            answer = Answer(url, response.status, {k.lower(): v for k, v in response.getheaders()}, body,
                            local, reused, response.will_close)
            if self.keep_alive and not response.will_close:
                self._connections()[where] = connection
            else:
                connection.close()
            self.record(answer)
            return answer
        raise AssertionError("unreachable")


# -- checks ---------------------------------------------------------------------------------------


class CheckFailed(AssertionError):
    pass


class Skipped(Exception):
    """The check cannot run here; the message says why."""


@dataclass(frozen=True)
class Check:
    name: str
    source: str  # the BEP, or "tracker" for this tracker's own promise
    what: str
    run: Callable[[Case], None]


CHECKS: list[Check] = []


def check(name: str, source: str, what: str) -> Callable[[Callable[[Case], None]], Callable[[Case], None]]:
    def register(function: Callable[[Case], None]) -> Callable[[Case], None]:
        assert name not in {c.name for c in CHECKS}, name
        CHECKS.append(Check(name, source, what, function))
        return function
    return register


@dataclass
class Result:
    check: Check
    outcome: str  # "pass", "FAIL", "skip"
    detail: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.outcome:4}  {self.check.name:34} [{self.check.source}] {self.check.what}{detail}"


def expect(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


class Peer:
    """One client in one swarm: its peer_id, port and key, the host it announces to and the
    address it announces from."""

    def __init__(self, swarm: Swarm, peer_id: bytes, port: int, left: int, host: int, source: str | None,
                 ipv6: bool, key: bytes | None):
        self.swarm, self.peer_id, self.port, self.left = swarm, peer_id, port, left
        self.host, self.source, self.ipv6, self.key = host, source, ipv6, key

    def announce(self, event: str | None = None, left: int | None = None, host: int | None = None,
                 style: str = "minimal", path: str | None = None, extra: Iterable[tuple[str, object]] = (),
                 **fields: object) -> Answer:
        """The announce a client sends (uploaded, downloaded, left; event if given), plus
        `fields`; the answer, whatever it is."""
        if left is not None:
            self.left = left
        query: dict[str, object] = {"info_hash": self.swarm.info_hash, "peer_id": self.peer_id, "port": self.port,
                                    "uploaded": 0, "downloaded": SIZE - self.left, "left": self.left}
        if event:
            query["event"] = event
        if self.key is not None:
            query["key"] = self.key
        query.update(fields)
        probe = self.swarm.case.probe
        where = self.host if host is None else host
        url = (probe.ipv6_announce(where) if self.ipv6 else probe.announce_url(where)) if path is None else path
        try:
            return probe.transport.request(f"{url}?{query_of([*query.items(), *extra], style)}", source=self.source)
        except OSError as exc:
            if self.ipv6:  # the check needs the tracker over IPv6: say why it could not run
                raise Skipped(f"the tracker is not reachable over IPv6 at {url}: {exc}") from None
            raise

    def ok(self, event: str | None = None, **kwargs: object) -> dict:
        """An announce that must be answered: HTTP 200, a bencoded dictionary, no failure."""
        answer = self.announce(event, **kwargs)  # type: ignore[arg-type]
        expect(answer.status == 200 and not answer.problem and answer.failure is None,
               f"{self.name} {event or 'announce'}: {answer}")
        return answer.dict

    @property
    def name(self) -> str:
        return f"peer :{self.port}"


def ports_of(answer: dict) -> set[int]:
    """The ports of the peers an answer hands out, compact or not, IPv4 and IPv6."""
    return {port for _, port in addresses_of(answer)}


def addresses_of(answer: dict) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    for key, size in ((b"peers", 6), (b"peers6", 18)):
        value = answer.get(key, b"")
        if isinstance(value, bytes):
            expect(len(value) % size == 0, f"{key.decode()} is {len(value)} bytes, not a multiple of {size}")
            for i in range(0, len(value), size):
                entry = value[i:i + size]
                found.add((str(ipaddress.ip_address(entry[:-2])), int.from_bytes(entry[-2:], "big")))
        elif isinstance(value, list):
            for entry in value:
                expect(isinstance(entry, dict) and isinstance(entry.get(b"port"), int)
                       and isinstance(entry.get(b"ip"), bytes), f"a peer entry {entry!r}")
                found.add((str(ipaddress.ip_address(entry[b"ip"].decode())), entry[b"port"]))
        else:
            raise CheckFailed(f"{key.decode()} is {value!r}")
    return found


def counts(answer: dict) -> tuple[int, int, int]:
    """(complete, incomplete, downloaded) of an announce answer or a scrape entry."""
    return answer.get(b"complete"), answer.get(b"incomplete"), answer.get(b"downloaded")  # type: ignore[return-value]


class Swarm:
    """One check's torrent: its peers are the check's own."""

    def __init__(self, case: Case, info_hash: bytes):
        self.case, self.info_hash = case, info_hash

    def peer(self, left: int = SIZE, host: int | None = None, source: str | None = None, ipv6: bool = False,
             key: bytes | None = None, peer_id: bytes | None = None) -> Peer:
        probe = self.case.probe
        return Peer(self, peer_id or probe.new_peer_id(), probe.new_port(), left,
                    self.case.home if host is None else host, source, ipv6, key)

    def scrape(self, host: int | None = None) -> tuple[int, int, int, int]:
        """(complete, incomplete, downloaded, downloaders) of a scrape of this swarm."""
        answer = self.case.probe.scrape([self.info_hash], self.case.home if host is None else host)
        expect(answer.status == 200 and not answer.problem and answer.failure is None, f"scrape: {answer}")
        entry = answer.dict.get(b"files", {}).get(self.info_hash)
        expect(isinstance(entry, dict), f"scrape: no entry for the torrent: {answer}")
        return (*counts(entry), entry.get(b"downloaders"))


class Case:
    """What one check runs with: its probe, its home host, new swarms."""

    def __init__(self, probe: Probe, home: int):
        self.probe, self.home = probe, home
        self.other = (home + 1) % len(probe.hosts)
        self.crossed: list[float] = []  # seconds each cross-host change took to show
        self._spare: bytes | None = None

    def swarm(self) -> Swarm:
        return Swarm(self, self.probe.new_info_hash())

    def spare_hash(self) -> bytes:
        """A registered info hash for this check's requests that must fail: one per check."""
        if self._spare is None:
            self._spare = self.probe.new_info_hash()
        return self._spare

    def eventually(self, observe: Callable[[], T], holds: Callable[[T], bool], what: str, across: bool) -> T:
        """observe() until holds(its value): once on one host (it must hold at once), for up
        to the probe's lag when the change was made at another host. Returns the value."""
        start = time.monotonic()
        deadline = start + (self.probe.lag if across and len(self.probe.hosts) > 1 else 0)
        while True:
            value = observe()
            if holds(value):
                if deadline > start:
                    self.crossed.append(time.monotonic() - start)
                return value
            if time.monotonic() >= deadline:
                waited = f" after {time.monotonic() - start:.1f} s" if deadline > start else ""
                raise CheckFailed(f"{what}{waited}: {value!r}")
            time.sleep(0.1)

    def bad_request(self, path: str, reason: str, status: int = 200, method: str = "GET") -> None:
        """`path` (under the home host's tracker URL) gets exactly {failure reason: reason}:
        bencoded, HTTP `status`, no `retry in` (a client's mistake is not temporary, BEP 31)."""
        answer = self.probe.transport.request(self.probe.base(self.home) + path, method=method)
        expect(answer.status == status and answer.decoded == {b"failure reason": reason.encode()},
               f"{path[:80]}: want HTTP {status} {{failure reason: {reason!r}}}, got {answer}")


class Probe:
    """The checks against one tracker, at one or more hosts."""

    def __init__(self, hosts: list[str], info_hashes: Iterable[bytes] | None = None, *, lag: float = 0.0,
                 keep_alive: bool = False, second_address: str | None = None,
                 ipv6_hosts: list[str] | None = None, hybrid: tuple[bytes, bytes] | None = None,
                 full_scrape: bool = False, jobs: int = 4, seed: int | None = None):
        """hosts: the tracker's base URL at each host (http://host:port/tracker; announce at
        /announce below it, scrape at /scrape), or its announce URL. info_hashes: torrents
        registered there, each used by one check (None: whitelist `open`, random hashes).
        second_address: a local address to announce from as another client (the key rule).
        ipv6_hosts: the same hosts over IPv6 (BEP 7), if they listen there. hybrid: a
        registered BEP 52 hybrid torrent's (v1, v2) info hashes."""
        self.hosts = [h.removesuffix("/announce").rstrip("/") for h in hosts]
        self.ipv6_hosts = [h.removesuffix("/announce").rstrip("/") for h in ipv6_hosts or []]
        self.open_whitelist = info_hashes is None
        self._hashes: Iterator[bytes] = iter(info_hashes) if info_hashes is not None else iter(())
        self.lag, self.second_address, self.hybrid = lag, second_address, hybrid
        self.full_scrape, self.jobs = full_scrape, jobs
        self.rng = random.Random(seed)
        self.exchanges: list[Answer] = []
        self.transport = Transport(keep_alive, self._record)
        self._lock = threading.Lock()
        self._ports = itertools.count(self.rng.randrange(10000, 50000))

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.exchanges.append(answer)

    # -- what checks draw on ---------------------------------------------------------------------
    def base(self, host: int) -> str:
        return self.hosts[host]

    def announce_url(self, host: int) -> str:
        return self.hosts[host] + "/announce"

    def ipv6_announce(self, host: int) -> str:
        if not self.ipv6_hosts:
            raise Skipped("no IPv6 URL of the tracker given (--ipv6)")
        return self.ipv6_hosts[host % len(self.ipv6_hosts)] + "/announce"

    def scrape_url(self, host: int) -> str:
        # BEP 48: the scrape URL is the announce URL with `announce` replaced by `scrape`.
        return self.announce_url(host).rsplit("announce", 1)[0] + "scrape"

    def scrape(self, info_hashes: list[bytes], host: int) -> Answer:
        query = query_of([("info_hash", h) for h in info_hashes])
        return self.transport.request(self.scrape_url(host) + ("?" + query if query else ""))

    def new_info_hash(self) -> bytes:
        with self._lock:
            if self.open_whitelist:
                return self.rng.randbytes(20)
            try:
                return next(self._hashes)
            except StopIteration:
                raise Skipped("no registered info hash left: give more (--info-hashes)") from None

    def new_peer_id(self) -> bytes:
        # Azureus-style, then 12 random bytes: awkward ones (%, &, +, NUL) included at times.
        with self._lock:
            return b"-CP0001-" + self.rng.randbytes(12)

    def new_port(self) -> int:
        with self._lock:
            return next(self._ports)

    def unregistered_hash(self) -> bytes:
        with self._lock:
            return self.rng.randbytes(20)

    # -- running ---------------------------------------------------------------------------------
    def run(self, checks: Iterable[Check] | None = None,
            report: Callable[[Result], None] | None = None) -> list[Result]:
        """Every check (or those given), `jobs` at a time; results in the checks' order."""
        chosen = list(CHECKS if checks is None else checks)

        def one(numbered: tuple[int, Check]) -> Result:
            number, chosen_check = numbered
            case = Case(self, number % len(self.hosts))
            start = time.monotonic()
            try:
                chosen_check.run(case)
                result = Result(chosen_check, "pass")
            except Skipped as exc:
                result = Result(chosen_check, "skip", str(exc))
            except CheckFailed as exc:
                result = Result(chosen_check, "FAIL", str(exc))
            except Exception as exc:  # noqa: BLE001 - a check that breaks is a failure, named
                result = Result(chosen_check, "FAIL", f"{type(exc).__name__}: {exc}")
            result.seconds = time.monotonic() - start
            if case.crossed and result.outcome == "pass":
                result.detail = f"crossed hosts in {max(case.crossed):.1f} s"
            if report:
                report(result)
            return result

        with ThreadPoolExecutor(self.jobs) as pool:
            return list(pool.map(one, enumerate(chosen)))


def summary(results: list[Result]) -> str:
    passed = sum(r.outcome == "pass" for r in results)
    skipped = sum(r.outcome == "skip" for r in results)
    return f"{passed}/{len(results)} passed" + (f", {skipped} skipped" if skipped else "")


# ================================================================================================
# The checks. BEP 3 (announce), 7 (IPv6), 21 (partial seeds), 23 (compact), 24 (external ip),
# 31 (retry in), 48 (scrape), 52 (hybrid torrents); "tracker": a promise of this tracker's own
# README beyond the BEPs. (BEP 41 extends only the UDP tracker protocol: nothing to check here.)
# ================================================================================================

# -- the answer itself ----------------------------------------------------------------------------


@check("announce-bencoded", "BEP 3", "an announce gets HTTP 200 and a bencoded dictionary")
def _(case: Case) -> None:
    answer = case.swarm().peer().announce("started")
    expect(answer.status == 200, f"HTTP {answer.status}")
    expect(not answer.problem, f"{answer.problem}: {answer.body[:160]!r}")
    expect(answer.failure is None, f"failure reason {answer.failure!r}")


@check("canonical-bencoding", "BEP 3", "answers are canonical bencoding: keys sorted, nothing after the end")
def _(case: Case) -> None:
    swarm = case.swarm()
    a, b = swarm.peer(), swarm.peer(left=0)
    a.ok("started")
    answers = [b.announce("started"), b.announce(compact=0), a.announce(compact=1),
               case.probe.scrape([swarm.info_hash], case.home), b.announce(port="x")]
    for answer in answers:
        try:
            bdecode(answer.body, canonical=True)
        except (NotBencoded, ValueError, IndexError) as exc:
            raise CheckFailed(f"{answer.url[:90]}: {exc}: {answer.body[:120]!r}") from None


@check("announce-fields", "BEP 3", "interval, min interval <= interval, complete, incomplete, peers")
def _(case: Case) -> None:
    answer = case.swarm().peer().ok("started")
    interval, minimum = answer.get(b"interval"), answer.get(b"min interval")
    expect(isinstance(interval, int) and interval > 0, f"interval {interval!r}")
    expect(isinstance(minimum, int) and isinstance(interval, int) and 0 <= minimum <= interval, f"min interval {minimum!r}, interval {interval!r}")
    expect(all(isinstance(n, int) and n >= 0 for n in counts(answer)[:2]), f"counts {counts(answer)}")
    expect(b"peers" in answer, f"no peers: {answer!r}")


@check("content-length", "BEP 3", "the answer's Content-Length is its length (clients read by it)")
def _(case: Case) -> None:
    answer = case.swarm().peer().announce("started")
    expect(answer.headers.get("content-length") == str(len(answer.body)),
           f"Content-Length {answer.headers.get('content-length')!r}, body {len(answer.body)} bytes")


@check("bare-url-announces", "tracker", "a query on the bare tracker URL is an announce")
def _(case: Case) -> None:
    swarm = case.swarm()
    seed = swarm.peer(left=0)
    seed.ok("started")
    answer = swarm.peer().announce("started", path=case.probe.base(case.home))
    expect(answer.failure is None and seed.port in ports_of(answer.dict), f"{answer}")


@check("keep-alive", "BEP 3", "two announces on one kept-alive connection: both answered, or Connection: close")
def _(case: Case) -> None:
    peer = case.swarm().peer()
    transport = Transport(True, case.probe._record)
    url = case.probe.announce_url(case.home)
    fields = [("info_hash", peer.swarm.info_hash), ("peer_id", peer.peer_id), ("port", peer.port),
              ("uploaded", 0), ("downloaded", 0), ("left", SIZE)]
    first = transport.request(f"{url}?{query_of([*fields, ('event', 'started')])}")
    expect(first.failure is None and not first.problem, f"first: {first}")
    second = transport.request(f"{url}?{query_of(fields)}")
    expect(second.failure is None and not second.problem and counts(second.dict)[1] == 1, f"second: {second}")
    expect(second.reused or first.closing, "the server closed the connection without saying Connection: close")


# -- peers in the answer --------------------------------------------------------------------------


@check("compact-by-default", "BEP 23", "without compact=, peers is a compact string")
def _(case: Case) -> None:
    swarm = case.swarm()
    a, b = swarm.peer(), swarm.peer()
    a.ok("started")
    answer = b.ok("started")
    expect(isinstance(answer.get(b"peers"), bytes), f"peers is {answer.get(b'peers')!r}")
    expect(ports_of(answer) == {a.port}, f"peers {addresses_of(answer)}, want port {a.port}")


@check("compact-peers", "BEP 23", "compact=1: 6 bytes a peer, the address it connected from, port big-endian")
def _(case: Case) -> None:
    swarm = case.swarm()
    a, b = swarm.peer(), swarm.peer()
    seen_as = a.ok("started").get(b"external ip")
    answer = b.ok("started", compact=1)
    peers = answer.get(b"peers")
    expect(isinstance(peers, bytes) and len(peers) == 6, f"peers {peers!r}")
    want = (seen_as or b"") + a.port.to_bytes(2, "big")
    expect(peers == want, f"peers {peers!r}, want {want!r} (the address the tracker saw, and the port)")


@check("dictionary-peers", "BEP 3", "compact=0: a list of {ip, port, peer id}")
def _(case: Case) -> None:
    swarm = case.swarm()
    a, b = swarm.peer(), swarm.peer()
    a.ok("started")
    peers = b.ok("started", compact=0).get(b"peers")
    expect(isinstance(peers, list) and len(peers) == 1, f"peers {peers!r}")
    entry = peers[0] if isinstance(peers, list) else {}
    expect(entry.get(b"peer id") == a.peer_id and entry.get(b"port") == a.port
           and isinstance(entry.get(b"ip"), bytes), f"entry {entry!r}, want peer id {a.peer_id!r} port {a.port}")
    ipaddress.ip_address(entry[b"ip"].decode())  # the address as text


@check("no-peer-id", "BEP 3", "compact=0&no_peer_id=1: entries without peer id")
def _(case: Case) -> None:
    swarm = case.swarm()
    a, b = swarm.peer(), swarm.peer()
    a.ok("started")
    peers = b.ok("started", compact=0, no_peer_id=1).get(b"peers")
    expect(isinstance(peers, list) and len(peers) == 1 and b"peer id" not in peers[0]
           and peers[0].get(b"port") == a.port, f"peers {peers!r}")


@check("never-sent-itself", "tracker", "a peer is never handed itself")
def _(case: Case) -> None:
    swarm = case.swarm()
    a, b = swarm.peer(), swarm.peer()
    expect(a.port not in ports_of(a.ok("started")), "in its own first answer")
    b.ok("started")
    for peer, other in ((a, b), (b, a)):
        for compact in (1, 0):
            got = ports_of(peer.ok(compact=compact))
            expect(got == {other.port}, f"{peer.name} (compact={compact}) got {sorted(got)}, want {other.port}")


@check("external-ip", "BEP 24", "external ip: the 4 bytes of the address the client connected from")
def _(case: Case) -> None:
    answer = case.swarm().peer().announce("started")
    external = answer.dict.get(b"external ip")
    want = ipaddress.ip_address(answer.local).packed
    expect(external == want, f"external ip {external!r}, connected from {answer.local} ({want!r})")


@check("tracker-id-echoed", "tracker", "trackerid= is accepted and echoed as tracker id")
def _(case: Case) -> None:
    answer = case.swarm().peer().ok("started", trackerid=b"probe-id-1")
    expect(answer.get(b"tracker id") == b"probe-id-1", f"tracker id {answer.get(b'tracker id')!r}")


@check("ip-parameter-ignored", "tracker", "an untrusted client's ip= is ignored, with a warning message")
def _(case: Case) -> None:
    swarm = case.swarm()
    a, b = swarm.peer(), swarm.peer()
    warned = a.ok("started", ip="203.0.113.7")
    expect(warned.get(b"warning message") == IP_IGNORED.encode(), f"warning {warned.get(b'warning message')!r}")
    handed = addresses_of(b.ok("started"))
    expect(("203.0.113.7", a.port) not in handed and len(handed) == 1, f"peers {handed}")


# -- numwant ----------------------------------------------------------------------------------------


def crowd(case: Case, n: int, **kwargs: object) -> tuple[Swarm, list[Peer]]:
    swarm = case.swarm()
    peers = [swarm.peer(**kwargs) for _ in range(n)]  # type: ignore[arg-type]
    for peer in peers:
        peer.ok("started")
    return swarm, peers


@check("numwant-limits", "BEP 3", "numwant=1 gets 1 peer of 3, numwant=0 none (with the counts)")
def _(case: Case) -> None:
    swarm, others = crowd(case, 3)
    asker = swarm.peer()
    one = asker.ok("started", numwant=1)
    expect(len(ports_of(one)) == 1 and ports_of(one) <= {p.port for p in others}, f"numwant=1: {addresses_of(one)}")
    none = asker.ok(numwant=0)
    expect(ports_of(none) == set() and counts(none)[1] == 4, f"numwant=0: {none!r}")


@check("numwant-default", "tracker", "without numwant, a small swarm's every other peer (default 50)")
def _(case: Case) -> None:
    swarm, others = crowd(case, 5)
    got = ports_of(swarm.peer().ok("started"))
    expect(got == {p.port for p in others}, f"got {sorted(got)}, want {sorted(p.port for p in others)}")


@check("numwant-huge", "tracker", "numwant=4294967296 is capped, not refused")
def _(case: Case) -> None:
    swarm, others = crowd(case, 3)
    got = ports_of(swarm.peer().ok("started", numwant=4294967296))
    expect(got == {p.port for p in others}, f"got {sorted(got)}")


@check("numwant-negative", "tracker", "numwant=-1 gets a failure reason")
def _(case: Case) -> None:
    answer = case.swarm().peer().announce("started", numwant=-1)
    expect(answer.status == 200 and answer.decoded == {b"failure reason": missing_or_bad("numwant").encode()},
           f"{answer}")


# -- escapes and keys -------------------------------------------------------------------------------


@check("escapes-upper-lower", "BEP 3", "%XY in upper and in lower case name the same torrent and peer")
def _(case: Case) -> None:
    swarm = case.swarm()
    peer = swarm.peer()
    first = peer.ok("started", style="upper")
    again = peer.ok(style="lower")
    expect(counts(first)[1] == 1 and counts(again)[1] == 1, f"incomplete {counts(first)[1]} then {counts(again)[1]}")
    expect(swarm.scrape()[1] == 1, f"scrape {swarm.scrape()}")


@check("escapes-unreserved", "BEP 3", "unreserved characters sent as they are or as %XY are the same")
def _(case: Case) -> None:
    swarm = case.swarm()
    peer = swarm.peer(peer_id=b"-CP0001-abcXYZ019._~")
    peer.ok("started", style="minimal")
    expect(counts(peer.ok(style="upper"))[1] == 1, "two peers where one was announced twice")


@check("plus-is-space", "BEP 3", "+ in a value is a space, as %20")
def _(case: Case) -> None:
    swarm = case.swarm()
    peer = swarm.peer(peer_id=b"-CP0001- spaced out ")
    peer.ok("started")  # minimal: the space as %20
    url = case.probe.announce_url(case.home)
    query = query_of([("info_hash", swarm.info_hash), ("peer_id", peer.peer_id), ("port", peer.port),
                      ("uploaded", 0), ("downloaded", 0), ("left", SIZE)]).replace("%20", "+")
    answer = case.probe.transport.request(f"{url}?{query}")
    expect(answer.failure is None and counts(answer.dict)[1] == 1, f"{answer}")


@check("binary-key", "BEP 3", "a binary key (aria2) is accepted and moves its peer to another address")
def _(case: Case) -> None:
    second = case.probe.second_address
    if not second:
        raise Skipped("no second local address to announce from (--second-address)")
    swarm = case.swarm()
    key = bytes([0x00, 0xFF, 0x25, 0x26, 0x2B, 0x80, 0x7F, 0x20])
    peer, watcher = swarm.peer(key=key), swarm.peer(left=0)
    peer.ok("started")
    peer.ok()
    peer.source = second
    peer.ok()
    handed = addresses_of(watcher.ok("started"))
    expect(handed == {(second, peer.port)}, f"the moved peer is handed out as {handed}, want {second}")


@check("key-protects-peer", "BEP 3", "another address without the peer's key is refused")
def _(case: Case) -> None:
    second = case.probe.second_address
    if not second:
        raise Skipped("no second local address to announce from (--second-address)")
    swarm = case.swarm()
    peer = swarm.peer(key=b"k3y")
    local = peer.announce("started").local
    hijack = swarm.peer(peer_id=peer.peer_id, source=second, key=b"guess")
    hijack.port = peer.port
    answer = hijack.announce("stopped")
    expect(answer.status == 200 and answer.decoded == {b"failure reason": PEER_CONFLICT.encode()}, f"{answer}")
    handed = addresses_of(swarm.peer(left=0).ok("started"))
    expect(handed == {(local, peer.port)}, f"after the hijack: {handed}")


@check("no-key-no-move", "tracker", "a peer that sent no key cannot be taken from another address")
def _(case: Case) -> None:
    second = case.probe.second_address
    if not second:
        raise Skipped("no second local address to announce from (--second-address)")
    swarm = case.swarm()
    peer = swarm.peer()
    peer.ok("started")
    answer = swarm.peer(peer_id=peer.peer_id, source=second).announce()
    expect(answer.decoded == {b"failure reason": PEER_CONFLICT.encode()}, f"{answer}")


@check("key-too-long", "tracker", "a key over 64 bytes gets a failure reason")
def _(case: Case) -> None:
    answer = case.swarm().peer(key=b"k" * 65).announce("started")
    expect(answer.status == 200 and answer.decoded == {b"failure reason": BAD_KEY.encode()}, f"{answer}")


# -- events and counts ----------------------------------------------------------------------------


@check("started-counts", "BEP 3", "right after started: a leecher in incomplete, a seed in complete")
def _(case: Case) -> None:
    swarm = case.swarm()
    expect(counts(swarm.peer().ok("started")) == (0, 1, 0), "after a leecher's start")
    expect(counts(swarm.peer(left=0).ok("started")) == (1, 1, 0), "after a seed's start")
    expect(counts(swarm.peer().ok("started")) == (1, 2, 0), "after a second leecher's start")


@check("completed-counts", "BEP 3", "right after completed: complete+1, incomplete-1, downloaded+1")
def _(case: Case) -> None:
    swarm = case.swarm()
    a, b = swarm.peer(), swarm.peer()
    a.ok("started")
    b.ok("started")
    got = counts(a.ok("completed", left=0))
    expect(got == (1, 1, 1), f"{got}, want (1, 1, 1)")


@check("completed-once", "BEP 3", "downloaded counts a completion once: completed twice, then left=0")
def _(case: Case) -> None:
    swarm = case.swarm()
    peer = swarm.peer()
    peer.ok("started")
    peer.ok("completed", left=0)
    expect(counts(peer.ok("completed", left=0))[2] == 1, "a repeated completed counted again")
    expect(counts(peer.ok())[2] == 1 and swarm.scrape()[2] == 1, f"scrape {swarm.scrape()}")


@check("left-zero-completes", "tracker", "a leecher reporting left=0 without an event has completed")
def _(case: Case) -> None:
    swarm = case.swarm()
    peer = swarm.peer()
    peer.ok("started")
    expect(counts(peer.ok(left=0)) == (1, 0, 1), "not counted as a completion and a seed")


@check("seed-start-not-a-completion", "tracker", "a seed that starts is no completion")
def _(case: Case) -> None:
    swarm = case.swarm()
    expect(counts(swarm.peer(left=0).ok("started")) == (1, 0, 0), "downloaded moved")
    expect(swarm.scrape()[:3] == (1, 0, 0), f"scrape {swarm.scrape()}")


@check("stopped-answer", "tracker", "stopped: no peers in the answer, counts without the peer")
def _(case: Case) -> None:
    swarm, (a, b) = crowd(case, 2)
    answer = b.ok("stopped")
    expect(ports_of(answer) == set() and counts(answer)[:2] == (0, 1), f"{answer!r}")


@check("stopped-never-handed-out", "tracker", "10 peers started then stopped are never handed out again")
def _(case: Case) -> None:
    swarm, gone = crowd(case, 10)
    for peer in gone:
        peer.ok("stopped")
    ports = {p.port for p in gone}
    for n in range(10):
        asker = swarm.peer(left=0 if n % 2 else SIZE)
        handed = ports_of(asker.ok("started")) & ports
        expect(not handed, f"answer {n}: stopped peers {sorted(handed)} handed out")
    expect(swarm.scrape()[:2] == (5, 5), f"scrape {swarm.scrape()}, want 5 seeds, 5 leechers")


@check("restart-after-stop", "tracker", "a peer that stopped and starts again is handed out again")
def _(case: Case) -> None:
    swarm = case.swarm()
    peer, other = swarm.peer(), swarm.peer()
    peer.ok("started")
    peer.ok("stopped")
    peer.ok("started")
    expect(ports_of(other.ok("started")) == {peer.port}, "not handed out after its new start")


@check("stopped-finish-counts", "tracker", "stopped with left=0 of a leecher (aria2's finish) counts once")
def _(case: Case) -> None:
    swarm = case.swarm()
    peer = swarm.peer()
    peer.ok("started")
    answer = peer.ok("stopped", left=0)
    expect(counts(answer) == (0, 0, 1), f"{counts(answer)}, want (0, 0, 1)")
    expect(swarm.scrape()[:3] == (0, 0, 1), f"scrape {swarm.scrape()}")


@check("stopped-unknown-peer", "tracker", "stopped of a peer never seen is answered and changes nothing")
def _(case: Case) -> None:
    swarm, _ = crowd(case, 1)
    answer = swarm.peer().ok("stopped")
    expect(counts(answer) == (0, 1, 0) and swarm.scrape()[:3] == (0, 1, 0), f"{answer!r}")


@check("seed-gets-no-seeds", "tracker", "a seed is sent leechers only")
def _(case: Case) -> None:
    swarm = case.swarm()
    seed, other_seed, leecher = swarm.peer(left=0), swarm.peer(left=0), swarm.peer()
    seed.ok("started")
    other_seed.ok("started")
    leecher.ok("started")
    got = ports_of(seed.ok())
    expect(got == {leecher.port}, f"a seed got {sorted(got)}, want only the leecher {leecher.port}")


@check("leecher-gets-everyone", "BEP 3", "a leecher is sent seeds, leechers and partial seeds")
def _(case: Case) -> None:
    swarm = case.swarm()
    seed, leecher, partial = swarm.peer(left=0), swarm.peer(), swarm.peer(left=SIZE // 2)
    seed.ok("started")
    leecher.ok("started")
    partial.ok("paused")
    got = ports_of(swarm.peer().ok("started"))
    expect(got == {seed.port, leecher.port, partial.port}, f"got {sorted(got)}")


@check("paused-partial-seed", "BEP 21", "paused: incomplete, not a downloader, sent leechers only")
def _(case: Case) -> None:
    swarm = case.swarm()
    seed, leecher, partial = swarm.peer(left=0), swarm.peer(), swarm.peer(left=SIZE // 2)
    seed.ok("started")
    leecher.ok("started")
    answer = partial.ok("paused")
    expect(counts(answer) == (1, 2, 0), f"counts {counts(answer)}, want (1, 2, 0)")
    expect(ports_of(answer) == {leecher.port}, f"a partial seed got {sorted(ports_of(answer))}")
    expect(swarm.scrape() == (1, 2, 0, 1), f"scrape {swarm.scrape()}, want downloaders 1")


@check("next-answer-sees-peer", "tracker", "a peer announced is in the very next answer of another")
def _(case: Case) -> None:
    swarm = case.swarm()
    a, b, c = swarm.peer(), swarm.peer(), swarm.peer()
    a.ok("started")
    expect(ports_of(b.ok("started")) == {a.port}, "the second peer's answer lacks the first")
    expect(ports_of(c.ok("started")) == {a.port, b.port}, "the third peer's answer lacks one")


@check("scrapes-agree", "tracker", "scrapes on 8 new connections all say the announced counts at once")
def _(case: Case) -> None:
    swarm = case.swarm()
    swarm.peer(left=0).ok("started")
    swarm.peer().ok("started")
    last = swarm.peer().ok("started")
    got = {swarm.scrape() for _ in range(8)}
    expect(got == {(*counts(last), 2)}, f"scrapes said {got}, the last announce {counts(last)}")


# -- across hosts (one host: the same, at once) --------------------------------------------------


@check("peer-seen-at-other-host", "tracker", "a peer announced at one host is handed out by another")
def _(case: Case) -> None:
    swarm = case.swarm()
    a, b = swarm.peer(left=0), swarm.peer(host=case.other)
    a.ok("started")
    b.ok("started")
    case.eventually(lambda: ports_of(b.ok()), lambda ports: a.port in ports, "the other host never handed it out",
                    across=True)


@check("stop-honoured-at-other-host", "tracker", "a peer stopped at one host is no longer handed out by another")
def _(case: Case) -> None:
    swarm = case.swarm()
    a, b = swarm.peer(left=0), swarm.peer(host=case.other)
    a.ok("started")
    b.ok("started")
    case.eventually(lambda: ports_of(b.ok()), lambda ports: a.port in ports, "never handed out", across=True)
    a.ok("stopped")
    case.eventually(lambda: ports_of(b.ok()), lambda ports: a.port not in ports, "still handed out", across=True)
    for n in range(5):
        expect(a.port not in ports_of(b.ok()), f"handed out again (answer {n} after it went)")


@check("finish-across-hosts", "tracker", "started at one host, stopped with left=0 at another: counted once")
def _(case: Case) -> None:
    swarm = case.swarm()
    peer = swarm.peer()
    peer.ok("started")
    peer.host = case.other
    peer.ok("stopped", left=0)
    for host in sorted({case.home, case.other}):
        case.eventually(partial(swarm.scrape, host), lambda got: got[:3] == (0, 0, 1),
                        f"host {host}'s scrape", across=True)
    time.sleep(case.probe.lag if len(case.probe.hosts) > 1 else 0)
    for host in sorted({case.home, case.other}):
        expect(swarm.scrape(host)[:3] == (0, 0, 1), f"later, host {host} says {swarm.scrape(host)}")


@check("scrape-at-every-host", "tracker", "every host's scrape says the counts announced at one")
def _(case: Case) -> None:
    swarm = case.swarm()
    swarm.peer(left=0).ok("started")
    peer = swarm.peer()
    peer.ok("started")
    last = peer.ok("completed", left=0)
    want = (*counts(last), 0)
    for host in range(len(case.probe.hosts)):
        case.eventually(partial(swarm.scrape, host), lambda got: got == want, f"host {host}'s scrape",
                        across=host != case.home)


# -- scrape (BEP 48) ------------------------------------------------------------------------------


@check("scrape-fields", "BEP 48", "files: {raw 20-byte hash: {complete, incomplete, downloaded, downloaders}}")
def _(case: Case) -> None:
    swarm, _ = crowd(case, 1)
    answer = case.probe.scrape([swarm.info_hash], case.home)
    files = answer.dict.get(b"files")
    expect(isinstance(files, dict) and list(files) == [swarm.info_hash], f"{answer}")
    entry = files[swarm.info_hash] if isinstance(files, dict) else {}
    expect(all(isinstance(entry.get(k), int) for k in (b"complete", b"incomplete", b"downloaded", b"downloaders")),
           f"entry {entry!r}")


@check("scrape-equals-announce", "BEP 48", "a scrape says what the last announce said")
def _(case: Case) -> None:
    swarm = case.swarm()
    for left, event in ((0, "started"), (SIZE, "started"), (SIZE, "started"), (SIZE // 3, "paused")):
        swarm.peer(left=left).ok(event)
    finisher = swarm.peer()
    finisher.ok("started")
    last = finisher.ok("completed", left=0)
    expect(counts(last) == (2, 3, 1), f"the announce said {counts(last)}, want (2, 3, 1)")
    expect(swarm.scrape() == (2, 3, 1, 2), f"scrape {swarm.scrape()}, want (2, 3, 1, 2)")


@check("scrape-several-hashes", "BEP 48", "several info_hash parameters: an entry for each")
def _(case: Case) -> None:
    first, _ = crowd(case, 1)
    second, _ = crowd(case, 2, left=0)
    files = case.probe.scrape([first.info_hash, second.info_hash], case.home).dict.get(b"files", {})
    got = {h: counts(e) for h, e in files.items()}
    expect(got == {first.info_hash: (0, 1, 0), second.info_hash: (2, 0, 0)}, f"{got}")


@check("scrape-unknown-hash", "tracker", "an unknown hash is left out of files; the rest answered")
def _(case: Case) -> None:
    swarm, _ = crowd(case, 1)
    answer = case.probe.scrape([case.probe.unregistered_hash(), swarm.info_hash], case.home)
    files = answer.dict.get(b"files")
    if case.probe.open_whitelist:
        expect(isinstance(files, dict) and swarm.info_hash in files, f"{answer}")
        return
    expect(isinstance(files, dict) and list(files) == [swarm.info_hash], f"{answer}")


@check("scrape-repeated-hash", "BEP 48", "the same info_hash twice: one entry")
def _(case: Case) -> None:
    swarm, _ = crowd(case, 1)
    files = case.probe.scrape([swarm.info_hash, swarm.info_hash], case.home).dict.get(b"files")
    expect(isinstance(files, dict) and list(files) == [swarm.info_hash], f"files {files!r}")


@check("scrape-no-hash", "tracker", "a scrape naming no info_hash: refused while full scrape is off")
def _(case: Case) -> None:
    answer = case.probe.scrape([], case.home)
    if case.probe.full_scrape:
        expect(isinstance(answer.dict.get(b"files"), dict), f"{answer}")
    else:
        expect(answer.status == 200 and answer.decoded == {b"failure reason": FULL_SCRAPE_DISABLED.encode()},
               f"{answer}")


@check("scrape-bad-hash", "BEP 48", "a 19-byte info_hash in a scrape gets a failure reason")
def _(case: Case) -> None:
    case.bad_request("/scrape?info_hash=" + escape(bytes(19)), BAD_INFO_HASH)


@check("scrape-too-many", "tracker", "65 info_hash in one scrape get a failure reason (at most 64)")
def _(case: Case) -> None:
    case.bad_request("/scrape?" + query_of([("info_hash", bytes([n]) * 20) for n in range(MAX_SCRAPE_HASHES + 1)]),
                     TOO_MANY_HASHES)


# -- a client's mistakes: HTTP 200 and a bencoded failure reason, never HTML -----------------------


def announce_path(case: Case, drop: str = "", **changed: object) -> str:
    """An announce query (under the home host's base URL) of a new peer of a new swarm, with
    `drop` left out and `changed` fields replaced."""
    fields: dict[str, object] = {"info_hash": case.spare_hash(), "peer_id": case.probe.new_peer_id(),
                                 "port": case.probe.new_port(), "uploaded": 0, "downloaded": 0, "left": SIZE}
    fields.update(changed)
    fields.pop(drop, None)
    return "/announce?" + query_of(fields.items())


@check("missing-info-hash", "BEP 3", "no info_hash: failure reason")
def _(case: Case) -> None:
    case.bad_request(announce_path(case, drop="info_hash"), BAD_INFO_HASH)


@check("info-hash-length", "BEP 3", "a 19- or 21-byte info_hash: failure reason")
def _(case: Case) -> None:
    case.bad_request(announce_path(case, info_hash=bytes(range(19))), BAD_INFO_HASH)
    case.bad_request(announce_path(case, info_hash=bytes(range(21))), BAD_INFO_HASH)


@check("bad-peer-id", "BEP 3", "a missing or 19-byte peer_id: failure reason")
def _(case: Case) -> None:
    case.bad_request(announce_path(case, drop="peer_id"), BAD_PEER_ID)
    case.bad_request(announce_path(case, peer_id=b"-CP0001-" + bytes(11)), BAD_PEER_ID)


@check("bad-port", "BEP 3", "port 0, 65536, x or none: failure reason; 65535 is a port")
def _(case: Case) -> None:
    for port in (0, 65536, "x", None):
        case.bad_request(announce_path(case, drop="port" if port is None else "", port=port), BAD_PORT)
    swarm = case.swarm()
    peer = swarm.peer()
    peer.port = 65535
    peer.ok("started")


@check("unknown-torrent", "BEP 3", "an info_hash not registered: failure reason (whitelist directory)")
def _(case: Case) -> None:
    if case.probe.open_whitelist:
        raise Skipped("whitelist open: an unknown info_hash registers its torrent")
    case.bad_request(announce_path(case, info_hash=case.probe.unregistered_hash()), UNKNOWN_TORRENT)


@check("bad-event", "BEP 3", "event=finished: failure reason")
def _(case: Case) -> None:
    case.bad_request(announce_path(case, event="finished"), BAD_EVENT)


@check("bad-counters", "tracker", "left missing or -1, uploaded 2^63: failure reason; 2^62 accepted")
def _(case: Case) -> None:
    case.bad_request(announce_path(case, drop="left"), missing_or_bad("left"))
    case.bad_request(announce_path(case, left=-1), missing_or_bad("left"))
    case.bad_request(announce_path(case, uploaded=2**63), missing_or_bad("uploaded"))
    case.swarm().peer().ok("started", uploaded=2**62)


@check("repeated-parameter", "tracker", "an announce naming info_hash twice: failure reason")
def _(case: Case) -> None:
    case.bad_request(announce_path(case) + "&info_hash=" + escape(case.probe.unregistered_hash()), REPEATED_PARAMETER)


@check("unknown-path", "tracker", "an unknown path below the tracker: a bencoded 404")
def _(case: Case) -> None:
    case.bad_request("/announce.php", UNKNOWN_PATH, status=404)


@check("post-refused", "tracker", "POST: a bencoded 405")
def _(case: Case) -> None:
    case.bad_request(announce_path(case), METHOD_NOT_ALLOWED, status=405, method="POST")


@check("query-too-long", "tracker", "a 9,000-byte query: a bencoded failure reason, not HTML")
def _(case: Case) -> None:
    answer = case.probe.transport.request(case.probe.base(case.home) + announce_path(case) + "&pad=" + "a" * 9000)
    expect(not answer.problem and answer.failure, f"{answer}")


@check("retry-in-only-for-faults", "BEP 31", "a client's mistake carries no retry in; any retry in is whole minutes")
def _(case: Case) -> None:
    answers = [case.probe.transport.request(case.probe.base(case.home) + path)
               for path in (announce_path(case, drop="info_hash"), announce_path(case, port=0), "/nowhere")]
    for answer in answers:
        expect(answer.failure and b"retry in" not in answer.dict, f"{answer}")
    with case.probe._lock:
        seen = list(case.probe.exchanges)
    retries = [a.dict[b"retry in"] for a in seen if b"retry in" in a.dict]
    expect(all((isinstance(r, int) and r > 0) or r == b"never" for r in retries), f"retry in values {retries}")


# -- IPv6 (BEP 7) ---------------------------------------------------------------------------------


@check("ipv6-in-peers6", "BEP 7", "an IPv6 peer is in peers6 (18 bytes each) of a compact answer, not peers")
def _(case: Case) -> None:
    swarm = case.swarm()
    six = swarm.peer(left=0, ipv6=True)
    seen_as = six.ok("started").get(b"external ip", b"")
    answer = swarm.peer().ok("started")
    want = seen_as + six.port.to_bytes(2, "big")
    expect(answer.get(b"peers6") == want and answer.get(b"peers") == b"",
           f"peers {answer.get(b'peers')!r}, peers6 {answer.get(b'peers6')!r}, want peers6 {want!r}")


@check("ipv6-client", "BEP 7", "an IPv6 client: external ip its 16 bytes, IPv4 peers in peers")
def _(case: Case) -> None:
    swarm = case.swarm()
    four = swarm.peer(left=0)
    four.ok("started")
    answer = swarm.peer(ipv6=True).announce("started")
    expect(answer.failure is None and not answer.problem, f"{answer}")
    external = answer.dict.get(b"external ip")
    expect(external == ipaddress.ip_address(answer.local).packed, f"external ip {external!r} for {answer.local}")
    expect(ports_of({b"peers": answer.dict.get(b"peers")}) == {four.port}, f"peers {answer.dict.get(b'peers')!r}")


@check("ipv6-dictionary", "BEP 7", "compact=0: an IPv6 peer's ip is its address as text")
def _(case: Case) -> None:
    swarm = case.swarm()
    six = swarm.peer(left=0, ipv6=True)
    local = six.announce("started").local
    peers = swarm.peer().ok("started", compact=0).get(b"peers")
    expect(isinstance(peers, list) and len(peers) == 1
           and ipaddress.ip_address(peers[0][b"ip"].decode()) == ipaddress.ip_address(local), f"peers {peers!r}")


# -- hybrid torrents (BEP 52) ---------------------------------------------------------------------


@check("hybrid-one-swarm", "BEP 52", "a hybrid torrent's v1 and v2 hashes are one swarm")
def _(case: Case) -> None:
    if case.probe.hybrid is None:
        raise Skipped("no hybrid torrent given (--hybrid V1HEX:V2HEX)")
    v1, v2 = case.probe.hybrid
    by_v1, by_v2 = Swarm(case, v1), Swarm(case, v2)
    seed = by_v1.peer(left=0)
    seed.ok("started")
    answer = by_v2.peer().ok("started")
    expect(seed.port in ports_of(answer), f"the v2 leecher got {sorted(ports_of(answer))}, not the v1 seed")
    expect(by_v1.scrape() == by_v2.scrape(), f"scrapes {by_v1.scrape()} and {by_v2.scrape()}")


# -- the command ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("urls", nargs="+", help="the tracker's URL at each host (http://host:port/tracker)")
    parser.add_argument("--info-hashes", metavar="FILE",
                        help="registered info hashes, 40 hex digits a line, one used per check; "
                             "without: whitelist open, random hashes")
    parser.add_argument("--ipv6", nargs="*", default=None, metavar="URL",
                        help="the same hosts over IPv6; given bare: [::1] at each URL's port")
    parser.add_argument("--second-address", metavar="IP", help="a local address to announce from as another client")
    parser.add_argument("--hybrid", metavar="V1HEX:V2HEX", help="a registered hybrid torrent's two hashes")
    parser.add_argument("--lag", type=float, default=0.0, help="seconds a change may take to reach another host")
    parser.add_argument("--keep-alive", action="store_true", help="keep connections open while the server does")
    parser.add_argument("--full-scrape", action="store_true", help="the tracker has full_scrape on")
    parser.add_argument("--jobs", type=int, default=4, help="checks run at once")
    parser.add_argument("-k", metavar="TEXT", help="only checks whose name contains TEXT")
    args = parser.parse_args(argv)
    hashes = None
    if args.info_hashes:
        with open(args.info_hashes) as file:
            hashes = [bytes.fromhex(line.strip()) for line in file if line.strip()]
    ipv6 = args.ipv6
    if ipv6 == []:
        ipv6 = [f"http://[::1]:{urlsplit(u).port or 80}{urlsplit(u).path}" for u in args.urls]
    hybrid = tuple(bytes.fromhex(h) for h in args.hybrid.split(":")) if args.hybrid else None
    probe = Probe(args.urls, hashes, lag=args.lag, keep_alive=args.keep_alive, second_address=args.second_address,
                  ipv6_hosts=ipv6, hybrid=hybrid, full_scrape=args.full_scrape, jobs=args.jobs)  # type: ignore[arg-type]
    chosen = [c for c in CHECKS if not args.k or args.k in c.name]
    results = probe.run(chosen)
    for result in results:
        print(result.line())
    print(f"conformance: {summary(results)}")
    return 0 if all(r.outcome != "FAIL" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
