"""What a hostile client meets: per-address rates, and the process's own memory.

A tracker lives on the open internet, and anyone can announce. Every way a client can make
the process hold more (swarms, peers, unwritten announces) or make the database work
(completions) has a bound here or in live.py, with defaults that still serve thousands of
users behind one carrier-grade NAT address.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .model import Shed  # noqa: F401 (its home is model.py, with the other refusals; tests import it here)

WINDOW_SECONDS = 60.0  # rates are per minute
# Addresses a rate window remembers; past this, an address the window has not seen yet is
# refused until the window turns, so a flood from many addresses cannot grow the table.
TRACKED_ADDRESSES = 100_000
# mod_wsgi's memory-limit is RLIMIT_DATA: past this share of it, the process takes no new
# swarms or peers (and answers `retry in`) rather than fail allocations on every thread.
MEMORY_SHARE = 0.7
MEMORY_CHECK_SECONDS = 1.0  # reading /proc costs ~10 us: at most once a second
PAGE_BYTES = resource.getpagesize()
# Whitelist mode `open`: the torrents a store holds before it refuses to register more. Each
# costs two rows and, while announced to, a view in each daemon process (~3 KB); idle ones
# leave at the refresh (store.remove_idle_open_torrents).
OPEN_MAX_TORRENTS = 100_000


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds an admin configures, and their defaults (config.py explains each). The
    defaults fit the shipped memory-limit (512 MiB) with room: a view costs ~3 KB, a peer in
    it ~400 bytes, an unwritten announce ~300 bytes."""

    max_swarms: int = 50_000  # swarm views a process holds
    max_peers: int = 300_000  # peers held in views, all swarms together
    max_unwritten: int = 100_000  # announces waiting for the database (outage included)
    peers_per_address: int = 256  # one address's peers in one swarm
    new_swarms_per_minute: int = 60  # one address's registrations in whitelist mode `open`
    completions_per_minute: int = 120  # one address's completions counted


def address_key(ip: bytes) -> bytes:
    """Who a limit counts: an IPv4 address, or an IPv6 /64 (one subscriber's usual
    allocation, RFC 6177), so a host cannot multiply itself by its interface ids."""
    return ip if len(ip) == 4 else ip[:8]


class RateWindow:
    """At most `limit` events per address per minute: a fixed window, cheap and bounded.
    Thread-safe; only rare paths (registrations, completions) ask it."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: dict[bytes, int] = {}
        self._window_ends = 0.0

    def allow(self, ip: bytes) -> bool:
        key = address_key(ip)
        with self._lock:
            now = self.clock()
            if now >= self._window_ends:
                self._counts = {}
                self._window_ends = now + WINDOW_SECONDS
            count = self._counts.get(key, 0)
            if count >= self.limit or (count == 0 and len(self._counts) >= TRACKED_ADDRESSES):
                return False
            self._counts[key] = count + 1
            return True


def _data_bytes() -> int:
    """The process's data segment as RLIMIT_DATA counts it (statm's `data`: heap, anonymous
    mappings and stacks)."""
    return _statm(5)


def _resident_bytes() -> int:
    """The process's resident memory (statm's `resident`)."""
    return _statm(1)


def _statm(field: int) -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[field]) * PAGE_BYTES


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
      the config's `memory_limit` is measured against resident memory instead.
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
