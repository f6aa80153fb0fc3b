"""What a hostile client meets: per-prefix shares and rates, and the process's own memory.

A tracker lives on the open internet, and anyone can announce. Every way a client can make
the process hold more (swarms, peers, unwritten announces) or make the database work
(completions) has a bound here or in live.py, counted per prefix of the client's address at
every level (an IPv6 user holds a whole /56 or /48), with defaults that still serve
thousands of users behind one carrier-grade NAT address.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from typing import Any

WINDOW_SECONDS = 60.0  # rates are per minute
# Prefixes a rate window remembers (each address counts at two or three levels); past this,
# an address in a prefix the window has not seen yet is refused until the window turns, so
# a flood from many addresses cannot grow the table.
TRACKED_PREFIXES = 200_000
# mod_wsgi's memory-limit is RLIMIT_DATA: past this share of it, the process takes no new
# swarms or peers (and answers `retry in`) rather than fail allocations on every thread.
MEMORY_SHARE = 0.7
MEMORY_CHECK_SECONDS = 1.0  # reading /proc costs ~10 us: at most once a second
PAGE_BYTES = resource.getpagesize()
# Whitelist mode `open`: the torrents a store holds before it refuses to register more. Each
# costs two rows and, while announced to, a view in each daemon process (~3 KB); idle ones
# leave at the refresh (store.remove_idle_open_torrents).
OPEN_MAX_TORRENTS = 100_000
# An answer's peers from one prefix: at most answer_share_per_prefix of numwant, and never
# fewer than this (a small answer may hold a few neighbours).
ANSWER_FLOOR = 10


def _limit(default: int, low: int, high: int, doc: str) -> Any:
    """One bound an admin may set: its default, the range config.py allows, and what it
    bounds in the README's words (its Configuration reference row). Declared once, below."""
    return field(default=default, metadata={"range": (low, high), "doc": doc})


@dataclass(frozen=True, slots=True)
class Limits:
    """Every bound an admin configures, each declared once: its config key (the field's
    name), default, allowed range and README text. config.py reads and checks them from
    these declarations, and the README's table is checked against them
    (`reference_rows`). The host state is a file in `swarm_dir` that the processes map (the
    page cache's, not the daemons' memory-limit): a swarm's record is ~100 bytes, a peer
    with its keys and prefix counts at most ~300, an unwritten announce ~150, so the
    defaults take at most about 0.7 GB of disk, and what is used stays in the cache.

    Per-prefix limits count per host (every process of it shares the swarm's counts) at
    every level a client's address belongs to:
    an IPv4 address and its /24, an IPv6 /64 (one subscriber's usual allocation, RFC
    6177), its /56 (a home line's) and its /48 (a site's). A client must fit every level,
    so rotating addresses inside a prefix buys nothing beyond the prefix's own limit. The
    defaults serve a carrier-grade NAT: thousands of users behind one IPv4 address, or a
    /24 of them, stay well inside them."""

    max_swarms: int = _limit(500_000, 100, 10_000_000, "swarms the host's shared state holds; see Hostile clients")
    max_peers: int = _limit(2_000_000, 1000, 100_000_000, "peers the host's shared state holds")
    max_unwritten: int = _limit(100_000, 1000, 100_000_000,
                                "announces the host keeps waiting for the database")
    peers_per_address: int = _limit(256, 1, 1_000_000,
                                    "peers one address (IPv4, or IPv6 /64) may have in one swarm")
    peers_per_ipv4_24: int = _limit(1024, 1, 1_000_000, "peers one IPv4 /24 may have in one swarm")
    peers_per_ipv6_56: int = _limit(256, 1, 1_000_000, "peers one IPv6 /56 may have in one swarm")
    peers_per_ipv6_48: int = _limit(1024, 1, 1_000_000, "peers one IPv6 /48 may have in one swarm")
    answer_share_per_prefix: int = _limit(
        25, 1, 100, "percent of a swarm past which one IPv4 /24 or IPv6 /48 fills no more than this percent "
        f"of an answer to anyone outside it (at least {ANSWER_FLOOR} peers)")
    completions_per_minute: int = _limit(120, 1, 1_000_000,
                                         "completions counted per address and minute (beyond: `retry in`)")
    completions_per_minute_ipv4_24: int = _limit(480, 1, 1_000_000,
                                                 "completions counted per IPv4 /24 and minute")
    completions_per_minute_ipv6_56: int = _limit(120, 1, 1_000_000,
                                                 "completions counted per IPv6 /56 and minute")
    completions_per_minute_ipv6_48: int = _limit(480, 1, 1_000_000,
                                                 "completions counted per IPv6 /48 and minute")
    new_swarms_per_minute: int = _limit(60, 1, 1_000_000,
                                        "whitelist `open`: registrations per address and minute")
    new_swarms_per_minute_ipv4_24: int = _limit(240, 1, 1_000_000,
                                                "whitelist `open`: registrations per IPv4 /24 and minute")
    new_swarms_per_minute_ipv6_56: int = _limit(60, 1, 1_000_000,
                                                "whitelist `open`: registrations per IPv6 /56 and minute")
    new_swarms_per_minute_ipv6_48: int = _limit(240, 1, 1_000_000,
                                                "whitelist `open`: registrations per IPv6 /48 and minute")
    open_max_torrents: int = _limit(OPEN_MAX_TORRENTS, 1, 1_000_000_000,
                                    "whitelist `open`: the most torrents announces may register")
    memory_limit: int = _limit(
        512 * 1024 * 1024, 64 * 1024 * 1024, 1 << 40,
        f"embedded mode: an Apache child's resident bytes past {MEMORY_SHARE:.0%} of which it reads no new "
        "swarms (daemon mode: the snippet's `memory-limit`)")

    @property
    def peers_by_prefix(self) -> dict[int, int]:
        return by_prefix(self.peers_per_address, self.peers_per_ipv4_24, self.peers_per_ipv6_56,
                         self.peers_per_ipv6_48)

    @property
    def completions_by_prefix(self) -> dict[int, int]:
        return by_prefix(self.completions_per_minute, self.completions_per_minute_ipv4_24,
                         self.completions_per_minute_ipv6_56, self.completions_per_minute_ipv6_48)

    @property
    def new_swarms_by_prefix(self) -> dict[int, int]:
        return by_prefix(self.new_swarms_per_minute, self.new_swarms_per_minute_ipv4_24,
                         self.new_swarms_per_minute_ipv6_56, self.new_swarms_per_minute_ipv6_48)


def limit_range(name: str) -> tuple[int, int] | None:
    """The (lowest, highest) value config.py allows for a limit; None: not a limit."""
    declared = _DECLARED.get(name)
    return declared.metadata["range"] if declared is not None else None


def reference_rows() -> list[str]:
    """The README's Configuration reference rows of the limits, from their declarations."""
    return [f"| `{f.name}` | `{f.default}` | {f.metadata['doc']} ({_range_text(f)}) |" for f in _DECLARED.values()]


def _range_text(declared: Field) -> str:
    low, high = declared.metadata["range"]
    return f"{low}–{high}"


_DECLARED: dict[str, Field] = {f.name: f for f in fields(Limits)}


# -- prefixes: which counts a client's address falls in ----------------------------------------
# A prefix is the leading bytes of a packed address, and its length says its level: 4 an
# IPv4 address, 3 its /24; 8 an IPv6 /64, 7 its /56, 6 its /48. So one table holds every
# level's counts with no key of one level ever equal to one of another.

def prefixes(ip: bytes) -> tuple[bytes, ...]:
    """Every prefix a packed address counts in, narrowest first."""
    return (ip, ip[:3]) if len(ip) == 4 else (ip[:8], ip[:7], ip[:6])


def address_key(ip: bytes) -> bytes:
    """The narrowest prefix: an IPv4 address, or an IPv6 /64 (one subscriber's usual
    allocation, RFC 6177), so a host cannot multiply itself by its interface ids."""
    return ip if len(ip) == 4 else ip[:8]


def broad_prefix(ip: bytes) -> bytes:
    """The widest prefix one holder usually has: an IPv4 /24, an IPv6 /48. An answer's
    share is counted by it."""
    return ip[:3] if len(ip) == 4 else ip[:6]


def by_prefix(address: int, ipv4_24: int, ipv6_56: int, ipv6_48: int) -> dict[int, int]:
    """A limit per prefix level, keyed by the prefix's length (see `prefixes`)."""
    return {4: address, 3: ipv4_24, 8: address, 7: ipv6_56, 6: ipv6_48}


class RateWindow:
    """At most `limits[len(prefix)]` events per prefix per minute, at every prefix level of
    the address (see `prefixes`): a fixed window, cheap and bounded. Thread-safe; only rare
    paths (registrations, completions) ask it."""

    def __init__(self, limits: dict[int, int], clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: dict[bytes, int] = {}
        self._window_ends = 0.0

    def allow(self, ip: bytes) -> bool:
        keys = prefixes(ip)
        limits = self.limits
        with self._lock:
            now = self.clock()
            if now >= self._window_ends:
                self._counts = {}
                self._window_ends = now + WINDOW_SECONDS
            counts = self._counts
            for key in keys:
                count = counts.get(key, 0)
                if count >= limits[len(key)] or (count == 0 and len(counts) >= TRACKED_PREFIXES):
                    return False
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
            return True

    def refund(self, ip: bytes) -> None:
        """Take back an `allow` whose event did not happen (a completion the database could
        not write): only what is counted counts."""
        with self._lock:
            counts = self._counts
            for key in prefixes(ip):
                count = counts.get(key, 0)
                if count:
                    counts[key] = count - 1


def _data_bytes() -> int:
    """The process's data segment as RLIMIT_DATA counts it (statm's `data`: heap, anonymous
    mappings and stacks)."""
    return _statm(5)


def _resident_bytes() -> int:
    """The process's own resident memory: statm's `resident` less its `shared` (pages of
    files and shared memory, which the page cache holds for every process: the host
    state's LMDB file, mapped by every child, is no child's memory)."""
    fields = _statm_fields()
    return (fields[1] - fields[2]) * PAGE_BYTES


def _statm(field: int) -> int:
    return _statm_fields()[field] * PAGE_BYTES


def _statm_fields() -> list[int]:
    with open("/proc/self/statm", "rb") as f:
        return [int(value) for value in f.read().split()]


def apache_process_group() -> str | None:
    """mod_wsgi's process group: a daemon group's name, "" in an Apache child (embedded
    mode), None outside Apache (the CLI, tests)."""
    try:
        import mod_wsgi  # the module mod_wsgi gives the processes it runs, not pip's package
    except ImportError:
        return None
    return getattr(mod_wsgi, "process_group", None)


class MemoryGuard:
    """Whether the process is close to its memory bound; past it, it takes no new swarms or
    peers. The count limits above bound memory first; this is the backstop.

    - A daemon process: mod_wsgi's `memory-limit` sets RLIMIT_DATA, measured as statm's
      data (heap, anonymous mappings, stacks), as the kernel counts it.
    - An Apache child (embedded mode) has no RLIMIT_DATA (it would fail Apache's own
      allocations), and its data segment holds every worker thread's reserved stack: there
      the config's `memory_limit` is measured against its own resident memory instead (not
      the mapped host state, which is the page cache's).
    - Outside Apache (the CLI, tests) a guard is never full unless given a limit."""

    def __init__(self, limit: int | None = None, clock: Callable[[], float] = time.monotonic,
                 data_bytes: Callable[[], int] = _data_bytes):
        if limit is None:
            soft = resource.getrlimit(resource.RLIMIT_DATA)[0]
            limit = None if soft == resource.RLIM_INFINITY else soft
        self.threshold = None if limit is None else int(limit * MEMORY_SHARE)
        self.clock = clock
        self.data_bytes = data_bytes
        self._checked_at = -MEMORY_CHECK_SECONDS
        self._full = False

    @classmethod
    def for_process_group(cls, group: str | None, embedded_limit: int) -> MemoryGuard:
        """The guard for where a process runs (see the class): `group` is
        apache_process_group(); `embedded_limit` the config's memory_limit."""
        if group == "":
            return cls(embedded_limit, data_bytes=_resident_bytes)
        return cls()

    def full(self) -> bool:
        if self.threshold is None:
            return False
        now = self.clock()
        if now - self._checked_at >= MEMORY_CHECK_SECONDS:  # a race here only reads twice
            self._checked_at = now
            self._full = self.data_bytes() > self.threshold
        return self._full
