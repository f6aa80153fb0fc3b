"""The bounds a hostile client meets (tracker_wsgi/limits.py), and the request path's
database gate (live.StoreGate), without Apache or a database."""

from __future__ import annotations

import pytest

from tracker_wsgi import limits
from tracker_wsgi.limits import MemoryGuard, RateWindow, address_key
from tracker_wsgi.live import DB_AWAY_MAX_SECONDS, DB_AWAY_SECONDS, StoreGate
from tracker_wsgi.model import StoreUnavailable

V4 = bytes([198, 51, 100, 7])
V6 = bytes.fromhex("20010db8000000010000000000000001")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_ipv6_host_counts_as_its_64_and_an_ipv4_host_as_its_address():
    assert address_key(V4) == V4
    other_interface = V6[:8] + bytes(7) + b"\x02"
    assert address_key(V6) == address_key(other_interface) == V6[:8]
    assert address_key(bytes.fromhex("20010db8000000020000000000000001")) != address_key(V6)


def test_a_rate_window_allows_its_limit_per_address_per_minute():
    clock = Clock()
    window = RateWindow(3, clock)
    assert [window.allow(V4) for _ in range(4)] == [True, True, True, False]
    assert window.allow(bytes([198, 51, 100, 8]))  # another address has its own count
    clock.now += limits.WINDOW_SECONDS
    assert window.allow(V4)


def test_a_rate_window_remembers_a_bounded_number_of_addresses(monkeypatch):
    monkeypatch.setattr(limits, "TRACKED_ADDRESSES", 10)
    clock = Clock()
    window = RateWindow(5, clock)
    for n in range(10):
        assert window.allow(n.to_bytes(4, "big"))
    assert not window.allow((99).to_bytes(4, "big"))  # a new address past the table's size
    assert window.allow((3).to_bytes(4, "big"))  # one it already counts goes on
    clock.now += limits.WINDOW_SECONDS
    assert window.allow((99).to_bytes(4, "big"))


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
