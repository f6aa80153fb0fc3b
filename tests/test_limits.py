"""The bounds a hostile client meets (tracker_wsgi/limits.py), and the request path's
database gate (live.StoreGate), without Apache or a database."""

from __future__ import annotations

import mmap
import tempfile

import pytest

from tracker_wsgi import limits
from tracker_wsgi.gate import DB_AWAY_MAX_SECONDS, DB_AWAY_SECONDS, StoreGate
from tracker_wsgi.limits import MemoryGuard, RateWindow, by_prefix, prefixes
from tracker_wsgi.model import ACCESS_DENIED, OUTAGE_CAUSES, StoreUnavailable

V4 = bytes([198, 51, 100, 7])
V6 = bytes.fromhex("20010db8000000010000000000000001")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_counts_at_every_prefix_level_and_no_two_levels_share_a_key():
    assert prefixes(V4) == (V4, V4[:3])  # the address, its /24
    other_interface = V6[:8] + bytes(7) + b"\x02"
    assert prefixes(V6) == prefixes(other_interface) == (V6[:8], V6[:7], V6[:6])  # /64, /56, /48
    assert prefixes(bytes.fromhex("20010db8000000020000000000000001"))[0] != prefixes(V6)[0]
    assert prefixes(bytes.fromhex("20010db8000000020000000000000001"))[2] == prefixes(V6)[2]  # one /48
    # The level is the key's length: an IPv4 /32 never meets an IPv6 prefix in one table.
    assert sorted(len(k) for k in prefixes(V4) + prefixes(V6)) == [3, 4, 6, 7, 8]


def same_limit(n: int) -> dict[int, int]:
    return by_prefix(n, n, n, n)


def test_a_rate_window_allows_its_limit_per_address_per_minute():
    clock = Clock()
    window = RateWindow(by_prefix(3, 100, 100, 100), clock)
    assert [window.allow(V4) for _ in range(4)] == [True, True, True, False]
    assert window.allow(bytes([198, 51, 100, 8]))  # another address has its own count
    clock.now += limits.WINDOW_SECONDS
    assert window.allow(V4)


def test_a_rate_window_bounds_each_prefix_level_whatever_the_addresses_inside():
    """Rotating addresses (or /64s) inside a prefix buys nothing past the prefix's limit, and
    a refused event uses up nothing."""
    window = RateWindow(by_prefix(address=2, ipv4_24=5, ipv6_56=3, ipv6_48=4), Clock())
    assert sum(window.allow(bytes([198, 51, 100, n])) for n in range(100)) == 5  # one /24
    assert window.allow(bytes([198, 51, 101, 1]))  # the next /24
    home = V6[:7]  # a /56: 256 /64s
    assert sum(window.allow(home + bytes([n]) + bytes(8)) for n in range(256)) == 3
    site = V6[:6]  # its /48: 65,536 /64s, the /56 above already holds 3
    assert sum(window.allow(site + bytes([n, 0]) + bytes(8)) for n in range(1, 256)) == 1


def test_a_rate_window_remembers_a_bounded_number_of_prefixes(monkeypatch):
    monkeypatch.setattr(limits, "TRACKED_PREFIXES", 20)  # two per IPv4 address
    clock = Clock()
    window = RateWindow(same_limit(5), clock)
    def address(n: int) -> bytes:  # each in a /24 of its own
        return bytes([10, n, 0, 1])

    for n in range(10):
        assert window.allow(address(n))
    assert not window.allow(address(99))  # a new address past the table's size
    assert window.allow(address(3))  # one it already counts goes on
    clock.now += limits.WINDOW_SECONDS
    assert window.allow(address(99))


def test_the_memory_guard_reads_the_process_at_most_once_a_second():
    clock, reads = Clock(), []
    size = [100]

    def data_bytes() -> int:
        reads.append(clock.now)
        return size[0]

    guard = MemoryGuard(limit=1000, clock=clock, data_bytes=data_bytes)
    assert not guard.full()
    size[0] = 1000 * limits.MEMORY_SHARE + 1
    assert not guard.full()  # not read again yet
    clock.now += limits.MEMORY_CHECK_SECONDS
    assert guard.full()
    assert len(reads) == 2


def test_without_a_memory_limit_the_guard_is_never_full(monkeypatch):
    monkeypatch.setattr(limits.resource, "getrlimit", lambda which: (limits.resource.RLIM_INFINITY,) * 2)
    assert not MemoryGuard(limit=None, data_bytes=lambda: 1 << 60).full()
    assert MemoryGuard(limit=None).threshold is None


def test_where_the_process_runs_chooses_what_the_guard_measures(monkeypatch):
    """A daemon process: RLIMIT_DATA (mod_wsgi's memory-limit) against its data segment. An
    Apache child (embedded, process group ""): the config's memory_limit against resident
    memory, since its data segment holds every worker thread's reserved stack. Outside
    Apache: RLIMIT_DATA if the process has one, else never full."""
    monkeypatch.setattr(limits.resource, "getrlimit", lambda which: (1 << 30, 1 << 30))
    daemon = MemoryGuard.for_process_group("tracker_wsgi_0", 64 << 20)
    assert daemon.threshold == int((1 << 30) * limits.MEMORY_SHARE) and daemon.data_bytes is limits._data_bytes
    embedded = MemoryGuard.for_process_group("", 64 << 20)
    assert embedded.threshold == int((64 << 20) * limits.MEMORY_SHARE)
    assert embedded.data_bytes is limits._resident_bytes
    assert limits._resident_bytes() > 1 << 20  # this test process, measured
    # A file's pages mapped and read (the host state's LMDB file in every child) are the page
    # cache's, not the child's: not counted.
    size = 64 << 20
    with tempfile.TemporaryFile() as file:
        file.write(b"\1" * size)
        file.flush()
        with mmap.mmap(file.fileno(), size) as mapped:
            own, resident = limits._resident_bytes(), limits._statm(1)
            assert sum(mapped[i] for i in range(0, size, mmap.PAGESIZE)) == size // mmap.PAGESIZE
            assert limits._statm(1) - resident > size // 2  # resident, as statm counts it
            assert limits._resident_bytes() - own < 8 << 20  # not the process's own
    assert MemoryGuard.for_process_group(limits.apache_process_group(), 64 << 20).data_bytes is limits._data_bytes  # pytest: no mod_wsgi


def test_the_memory_guard_reads_this_process():
    assert limits._data_bytes() > 1 << 20


def test_the_gate_keeps_requests_off_a_failing_database_and_tries_it_again_alone():
    clock = Clock()
    gate = StoreGate(clock)
    calls = []

    def down():
        calls.append(clock.now)
        raise StoreUnavailable("down")

    with pytest.raises(StoreUnavailable):
        gate.call(down)
    for _ in range(100):  # every request in the next DB_AWAY_SECONDS answers at once
        with pytest.raises(StoreUnavailable):
            gate.call(down)
    assert len(calls) == 1
    waits = []
    for _ in range(8):  # the wait doubles while it keeps failing, up to its maximum
        start = clock.now
        while True:
            clock.now += 0.25
            with pytest.raises(StoreUnavailable):
                gate.call(down)
            if len(calls) > len(waits) + 1:
                waits.append(clock.now - start)
                break
    assert waits[0] <= DB_AWAY_SECONDS * 2 + 0.25
    assert waits[-1] == pytest.approx(DB_AWAY_MAX_SECONDS, abs=0.3)
    clock.now += DB_AWAY_MAX_SECONDS
    assert gate.call(lambda: "back") == "back"
    assert gate.call(lambda: "again") == "again"  # no wait once it works


def test_the_calls_the_gate_holds_off_name_the_cause_of_the_failure_that_closed_it():
    """Issue 19: whichever thread logs an outage first names its cause; a call the gate
    refused without asking the database used to say only that it had failed."""
    clock = Clock()
    gate = StoreGate(clock)

    def refused():
        raise StoreUnavailable("Access denied for user", ACCESS_DENIED)

    with pytest.raises(StoreUnavailable):
        gate.call(refused)
    with pytest.raises(StoreUnavailable) as held_off:
        gate.call(lambda: "never asked")
    assert held_off.value.cause == ACCESS_DENIED
    assert held_off.value.explain().startswith(OUTAGE_CAUSES[ACCESS_DENIED])
