"""tracker_wsgi.metrics without Apache: the request counters, the health verdict, the
metrics directory, and folding into prometheus_client's multiprocess files (in a child
process: multiprocess mode is chosen when prometheus_client is first imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import announce_query, ih, pid
from test_wsgi import call, make_app, register, tracker_log  # noqa: F401 (make_app and tracker_log are fixtures)
from tracker_wsgi import metrics
from tracker_wsgi.live import Held
from tracker_wsgi.metrics import Counts, Host, health
from tracker_wsgi.model import Shed, StoreUnavailable

REPO = Path(__file__).resolve().parent.parent


def test_counts_from_many_threads_add_up_exactly():
    counts = Counts()
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: a shared `+= 1` would lose some
    try:
        def work():
            announced = counts.tally(("announce", "ok"))
            for _ in range(20_000):
                counts.add(("announce", "refused"))
                announced()
            counts.add(("failure", "x"))

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old)
    assert counts.totals() == {("announce", "ok"): 160_000, ("announce", "refused"): 160_000, ("failure", "x"): 8}


NOW = 1_000_000
FINE = Host(backlog=0, failing=0, processes=2)


@pytest.mark.parametrize("database_error, last_refresh, host, healthy, problem, warning", [
    (None, NOW - 60, FINE, True, None, None),
    ("StoreUnavailable: cannot connect", None, FINE, False, "the database is unavailable: StoreUnavailable", None),
    (None, NOW - 60, Host(5, 1, 2), False, "writing announces to the database fails in 1 process", None),
    (None, NOW - 60, Host(1000, 0, 2), False, "1000 announces wait to be written", None),
    (None, NOW - 999, Host(999, 0, 2), True, None, None),
    (None, 0, FINE, True, None, "never refreshed"),
    (None, NOW - 3 * 900 - 1, FINE, True, None, "the last refresh is 2701 s old"),
    (None, NOW - 3 * 900, FINE, True, None, None),
])
def test_health_verdict(database_error, last_refresh, host, healthy, problem, warning):
    ok, report = health(database_error, last_refresh, NOW, 900, host, max_unwritten=1000)
    assert ok is healthy
    assert report["status"] == ("ok" if healthy else "failing")
    assert len(report["problems"]) == (problem is not None)
    if problem is not None:
        assert report["problems"][0].startswith(problem)
    if warning is not None:
        assert len(report["warnings"]) == 1 and warning in report["warnings"][0]
    else:
        assert report["warnings"] == []
    assert report["database"] == ("unreachable" if database_error else "ok")
    assert json.loads(metrics.health_body(report)) == report


def test_host_of_one_process():
    assert Host.of(Held(swarms=3, peers=10, unwritten=7, failing=True)) == Host(7, 1, 1)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_the_directory_is_made_closed_and_stale_ones_go(tmp_path):
    stale, live = tmp_path / f"{metrics.DIRECTORY_PREFIX}{dead_pid()}", tmp_path / f"{metrics.DIRECTORY_PREFIX}1"
    stale.mkdir()
    live.mkdir()
    path = metrics.make_directory(os.getpid(), str(tmp_path))
    assert path == str(tmp_path / f"{metrics.DIRECTORY_PREFIX}{os.getpid()}")
    assert os.stat(path).st_mode & 0o777 == 0o700
    assert not stale.exists() and live.exists()  # pid 1 is alive: its Apache's
    assert metrics.make_directory(os.getpid(), str(tmp_path)) == path  # the second process finds it


def test_a_directory_open_to_others_or_a_symlink_is_refused(tmp_path):
    opened = tmp_path / f"{metrics.DIRECTORY_PREFIX}7"
    opened.mkdir()
    opened.chmod(0o777)
    with pytest.raises(OSError, match="closed to others"):
        metrics.make_directory(7, str(tmp_path))
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / f"{metrics.DIRECTORY_PREFIX}8").symlink_to(target)
    with pytest.raises(OSError, match="closed to others"):
        metrics.make_directory(8, str(tmp_path))


FOLD_AND_SCRAPE = """
import os, shutil, sys
from tracker_wsgi import metrics
from tracker_wsgi.live import Held

class Store:
    errors, reconnects, conflicts = 2, 1, 1

directory = metrics.make_directory(os.getppid(), sys.argv[1])
counts = metrics.Counts()
held = Held(swarms=3, peers=40, unwritten=5, failing=False)
m = metrics.Metrics(directory, os.getppid(), print)
m.fold()  # made as the process starts: nothing to fold yet, but counted among the processes
assert "tracker_wsgi_processes 1.0" in m.exposition().decode()
m.serve(counts, lambda: held, [Store(), Store()], 60)
for _ in range(4):
    counts.add(("announce", "ok"))
counts.add(("failure", "unknown_torrent"))
m.fold()
m.fold()  # nothing new: nothing more given
counts.add(("announce", "ok"))
m.flushed(0.02, True)
m.flushed(3.0, False)
m.refreshed(0.3)
# What a process that is gone left behind: its counters count, its gauges do not.
def gone(pid):
    for kind in ("counter", "histogram", "gauge_livesum", "gauge_livemax"):
        shutil.copy(os.path.join(directory, f"{kind}_{os.getpid()}.db"), os.path.join(directory, f"{kind}_{pid}.db"))
gone(sys.argv[2])
first = m.exposition().decode()
# Its counters and histograms went into the archives; scraping again counts them once.
assert sorted(os.listdir(directory)) == sorted([f"{kind}_{os.getpid()}.db" for kind in
    ("counter", "histogram", "gauge_livesum", "gauge_livemax")] + ["counter_archive.db", "histogram_archive.db", "lock"]), os.listdir(directory)
assert m.exposition().decode() == first
gone(sys.argv[3])  # a second one, added to the archive
text = m.exposition().decode()
from prometheus_client.parser import text_string_to_metric_families  # after Metrics chose multiprocess mode
for family in text_string_to_metric_families(text):
    for s in family.samples:
        print(s.name, sorted(s.labels.items()), s.value)
"""


def test_fold_gives_each_count_once_and_a_scrape_sums_the_processes(tmp_path):
    out = subprocess.run([sys.executable, "-c", FOLD_AND_SCRAPE, str(tmp_path), str(dead_pid()), str(dead_pid())],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    samples = set(out.stdout.splitlines())
    # Each gone process's files are copies of this one's: the first with 4 announces, the
    # second with 5 (and one flush, failed flush and refresh each), beside this one's 5.
    for line in [
        "tracker_wsgi_announces_total [('outcome', 'ok')] 14.0",
        "tracker_wsgi_failure_reasons_total [('reason', 'unknown_torrent')] 3.0",
        # Every label there is, from the start: at 0 until counted.
        "tracker_wsgi_failure_reasons_total [('reason', 'bad_port')] 0.0",
        "tracker_wsgi_failure_reasons_total [('reason', 'database_unavailable')] 0.0",
        "tracker_wsgi_announces_total [('outcome', 'busy')] 0.0",
        "tracker_wsgi_scrapes_total [('outcome', 'unavailable')] 0.0",
        "tracker_wsgi_database_errors_total [] 12.0",
        "tracker_wsgi_database_reconnects_total [] 6.0",
        "tracker_wsgi_database_conflicts_total [] 6.0",
        # Gauges: this process's only.
        "tracker_wsgi_processes [] 1.0",
        "tracker_wsgi_swarms_held [] 3.0",
        "tracker_wsgi_peers_held [] 40.0",
        "tracker_wsgi_flush_backlog [] 5.0",
        "tracker_wsgi_flush_failing [] 1.0",
        "tracker_wsgi_flush_seconds_count [] 3.0",
        "tracker_wsgi_flush_seconds_bucket [('le', '0.01')] 0.0",
        "tracker_wsgi_flush_seconds_bucket [('le', '0.025')] 3.0",
        "tracker_wsgi_flush_seconds_bucket [('le', '+Inf')] 3.0",
        "tracker_wsgi_flush_failures_total [] 3.0",
        "tracker_wsgi_refresh_seconds_count [] 3.0",
    ]:
        assert line in samples, (line, out.stdout)


# -- in the WSGI application, without Apache (metrics off: no directory is made) ----------------


def test_the_application_counts_each_answer_by_outcome_and_reason(make_app, monkeypatch):
    app, tracker = make_app()
    register(tracker, 1)
    for n in (1, 2):
        assert call(app, "/announce", announce_query(ih(1), pid(n), 6000 + n)).status == "200 OK"
    call(app, "/announce", announce_query(ih(9), pid(1), 6001))  # unknown torrent
    call(app, "/scrape", f"info_hash={'%01' * 20}")
    call(app, "/nowhere")
    call(app, "/announce", method="DELETE")

    def shed(request, now):
        raise Shed("peers")

    monkeypatch.setattr(tracker.swarms, "announce", shed)
    call(app, "/announce", announce_query(ih(1), pid(3), 6003))

    def down(hashes, now):
        raise StoreUnavailable("down")

    monkeypatch.setattr(tracker.swarms, "scrape", down)
    call(app, "/scrape", f"info_hash={'%01' * 20}")
    assert tracker.counts.totals() == {
        ("announce", "ok"): 2, ("announce", "refused"): 1, ("announce", "busy"): 1,
        ("scrape", "ok"): 1, ("scrape", "unavailable"): 1,
        ("failure", "unknown_torrent"): 1, ("failure", "unknown_path"): 1, ("failure", "method_not_allowed"): 1,
        ("failure", "busy"): 1, ("failure", "database_unavailable"): 1,
    }


def test_health_of_a_lone_process_and_no_metrics_without_apache(make_app):
    app, tracker = make_app()
    register(tracker, 1)
    call(app, "/announce", announce_query(ih(1), pid(1), 6001))
    answer = call(app, "/health")
    assert (answer.status, answer.headers["Content-Type"]) == ("200 OK", "application/json")
    report = json.loads(answer.body)
    assert (report["database"], report["flush_backlog"], report["processes"]) == ("ok", 1, 1)
    answer = call(app, "/metrics")
    assert answer.status == "503 Service Unavailable" and b"Metrics are off" in answer.body


def test_health_names_the_cause_of_a_database_outage(make_app, monkeypatch):
    from tracker_wsgi.model import ACCESS_DENIED, OUTAGE_CAUSES

    app, tracker = make_app()

    def refused(call, *args):
        raise StoreUnavailable("cannot connect to the database: 1045 (28000): Access denied", ACCESS_DENIED)

    monkeypatch.setattr(tracker.swarms, "ask_store", refused)
    answer = call(app, "/health")
    report = json.loads(answer.body)
    assert answer.status == "503 Service Unavailable" and report["database"] == "unreachable"
    assert report["problems"] == [f"the database is unavailable: {OUTAGE_CAUSES[ACCESS_DENIED]} "
                                  "(cannot connect to the database: 1045 (28000): Access denied)"]
