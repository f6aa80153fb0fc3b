"""tracker_wsgi.faultlog: a fault that repeats costs one traceback, then one line a minute.

Issue 12: every request that met a database fault printed a ~10 KB traceback; 2,000
announces wrote 20 MB of error log. The cases here drive FaultLog with a clock the test
turns; tests/test_wsgi.py drives it through the WSGI application.
"""

from __future__ import annotations

from tracker_wsgi.faultlog import MAX_DETAIL_CHARS, FaultLog


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[FaultLog, list[str], Clock]:
    lines: list[str] = []
    clock = Clock()
    return FaultLog(lines.append, clock=clock), lines, clock


def fail(faults: FaultLog, kind: str = "flush", exc: Exception | None = None, message: str = "flush failed:") -> None:
    try:
        raise exc or ConnectionError("MySQL server has gone away")
    except Exception:
        faults.fault(kind, message)


def test_the_first_fault_is_logged_with_its_message_and_traceback():
    faults, lines, _ = make()
    fail(faults)
    assert len(lines) == 1
    message, traceback_header, *_, last = lines[0].split("\n")
    assert (message, traceback_header) == ("flush failed:", "Traceback (most recent call last):")
    assert last == "ConnectionError: MySQL server has gone away"
    assert "in fail" in lines[0]  # the frames, in full


def test_later_faults_are_counted_until_the_next_after_the_interval_brings_the_count():
    faults, lines, clock = make()
    fail(faults)
    for second in range(59):
        clock.now += 1
        fail(faults, exc=TimeoutError(f"read timed out after {second} s"))
    assert len(lines) == 1
    clock.now += 1
    fail(faults, exc=OSError("disk full"))
    assert lines[1:] == ["60 more flush faults in the last 60 s (last: OSError: disk full)"]
    # The next interval starts at that line.
    clock.now += 30
    fail(faults)
    clock.now += 29
    faults.flush_summaries()
    assert len(lines) == 2
    clock.now += 1
    faults.flush_summaries()
    assert lines[2:] == ["1 more flush faults in the last 60 s (last: ConnectionError: MySQL server has gone away)"]


def test_flush_brings_the_count_when_the_faults_stop():
    faults, lines, clock = make()
    fail(faults)
    fail(faults)
    fail(faults)
    faults.flush_summaries()  # not due yet
    assert len(lines) == 1
    clock.now += 75
    faults.flush_summaries()
    assert lines[1:] == ["2 more flush faults in the last 75 s (last: ConnectionError: MySQL server has gone away)"]
    faults.flush_summaries()
    assert len(lines) == 2  # a count goes out once


def test_a_kind_quiet_for_an_interval_starts_over_with_a_traceback():
    """A fault after a quiet minute is a new outage: its traceback may say something new."""
    faults, lines, clock = make()
    fail(faults)
    clock.now += 60
    fail(faults, exc=ValueError("a new cause"))
    assert len(lines) == 2 and lines[1].startswith("flush failed:\nTraceback")
    assert lines[1].endswith("ValueError: a new cause")
    # The same after a count went out and a quiet interval followed, with or without flushes.
    fail(faults)
    clock.now += 60
    faults.flush_summaries()
    assert lines[2].startswith("1 more flush faults")
    clock.now += 60
    faults.flush_summaries()
    fail(faults)
    assert len(lines) == 4 and lines[3].startswith("flush failed:\nTraceback")


def test_kinds_are_counted_apart():
    faults, lines, clock = make()
    fail(faults, "request", message="unexpected fault answering a request:")
    fail(faults, "flush")
    fail(faults, "request", exc=KeyError("x"))
    assert [line.split("\n")[0] for line in lines] == ["unexpected fault answering a request:", "flush failed:"]
    clock.now += 60
    faults.flush_summaries()
    assert lines[2:] == ["1 more request faults in the last 60 s (last: KeyError: 'x')"]


def test_the_summary_detail_is_one_bounded_line():
    faults, lines, clock = make()
    fail(faults)
    fail(faults, exc=RuntimeError("INSERT INTO peers VALUES\n" + "(1, 2, 3),\n" * 1000))
    clock.now += 60
    faults.flush_summaries()
    summary = lines[1]
    assert "\n" not in summary
    assert summary.startswith("1 more flush faults in the last 60 s (last: RuntimeError: INSERT INTO peers VALUES (1, 2, 3), ")
    assert len(summary) < len("1 more flush faults in the last 60 s (last: )") + MAX_DETAIL_CHARS + 1
    fail(faults, exc=TimeoutError())
    clock.now += 60
    faults.flush_summaries()
    assert lines[2] == "1 more flush faults in the last 60 s (last: TimeoutError)"



def test_a_database_outage_is_one_line_naming_its_cause_then_counts():
    """Issue 19: a refused login was logged as "did not answer in time" and 18 lines of the
    store's own frames. The cause and the setting to fix are the line; no traceback."""
    from tracker_wsgi.model import ACCESS_DENIED, OUTAGE_CAUSES, Shed, StoreUnavailable

    faults, lines, clock = make()
    outage = StoreUnavailable("cannot connect to the database: 1045 (28000): Access denied", ACCESS_DENIED)
    fail(faults, "database", outage, "requests are answered `retry in`:")
    assert lines == [f"requests are answered `retry in`: {OUTAGE_CAUSES[ACCESS_DENIED]} "
                     "(cannot connect to the database: 1045 (28000): Access denied)"]
    try:  # shed `from` an outage (live.py: a peer the view does not hold): the outage's line
        raise Shed("a peer") from outage
    except Shed:
        faults.fault("batch", "writing failed:")
    assert lines[1] == f"writing failed: {OUTAGE_CAUSES[ACCESS_DENIED]} " \
                       "(cannot connect to the database: 1045 (28000): Access denied)"
    fail(faults, "database", outage)
    clock.now += 60
    faults.flush_summaries()
    assert lines[2] == ("1 more database faults in the last 60 s (last: StoreUnavailable: cannot connect to the "
                        "database: 1045 (28000): Access denied)")


def test_notices_are_warnings_bounded_as_faults_are():
    errors, warnings = [], []
    clock = Clock()
    faults = FaultLog(errors.append, clock=clock, warn=warnings.append)
    for n in range(1000):
        faults.notice("refused web refreshes", f"web refresh refused from 192.0.2.{n % 250}: no secret")
    clock.now += 60
    faults.flush_summaries()
    assert errors == []
    assert warnings == ["web refresh refused from 192.0.2.0: no secret",
                        "999 more refused web refreshes in the last 60 s (last: web refresh refused from "
                        "192.0.2.249: no secret)"]
