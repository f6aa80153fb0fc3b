"""Health and Prometheus metrics: what every process serving the tracker counted, in one scrape.

Apache runs the tracker in several processes (two daemon processes in the shipped snippet;
N, or Apache's own children in embedded mode, elsewhere) and answers /tracker/metrics from
whichever one it picks, so each process's counts must reach every other. prometheus_client's
multiprocess mode does that: each process keeps its values in memory-mapped files of its
own, in one directory (PROMETHEUS_MULTIPROC_DIR), and a scrape merges every file there.

Counting costs an announce a dict increment, nothing more (Counts): a per-thread dict, so
no lock and no lost update. A thread of each process folds what the counters gained into
prometheus_client's values every sync_interval (each change a write into the mapped file),
and reads what the process holds (swarms, peers, unwritten announces) into gauges; the
process that answers a scrape folds its own first.

The directory is <tempdir>/tracker-wsgi-metrics-<pid of Apache's parent process>, made by
the first process that needs it (mode 0700, Apache's user). Daemon processes and, in
embedded mode, Apache's children are all children of Apache's parent, so they agree on it
with nothing to configure. prometheus_client wants it emptied when the server starts: a new
Apache (a restart, not a reload) has a new parent and so a new, empty directory. Debian's
apache2.service runs Apache with PrivateTmp, so systemd removes the old one when Apache
stops; elsewhere the first process of a new Apache removes those whose Apache is gone.
A daemon process that restarts on its own (a graceful reload, a touched tracker.wsgi,
request-timeout) gets a new pid and new files. Once no process of the old pid is Apache's
child, the next scrape drops its gauges (`livesum` gauges and prometheus_client's
mark_process_dead) and adds its counters and histograms into an archive file (one per kind):
no total goes down while Apache runs, and the directory does not grow with every restart
(nor, in embedded mode, with every child Apache replaces).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from .refusals import OUTCOMES, REFUSALS

DIRECTORY_PREFIX = "tracker-wsgi-metrics-"  # + Apache's parent pid, in the temporary directory
LOCK_FILE = "lock"  # in the directory: one collection at a time
ARCHIVE = "archive"  # counter_archive.db, histogram_archive.db: what processes that are gone counted
# What generate_latest writes; every Prometheus server reads it.
EXPOSITION_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Batches take milliseconds; one that waits on a slow database, seconds (a batch store waits
# up to 30 s per statement).
FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# An unchanged tree of 10,000 torrents refreshes in ~0.3 s; a first scan of it, seconds.
REFRESH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# The health check calls the refresh overdue (a warning, not a 503: announces are answered
# all the same) once it is this many refresh_intervals old: cron or traffic missed two.
REFRESH_OVERDUE_INTERVALS = 3

ANNOUNCE, SCRAPE, FAILURE = "announce", "scrape", "failure"  # what Counts keys start with
OK = "ok"


class Counts:
    """The request path's counters, as plain integers: each thread adds to a dict of its
    own (no lock, no lost update between threads) and `totals` adds the dicts up (a dict
    copy is atomic under the GIL). mod_wsgi's threads live as long as their process, so
    the dicts are few. What nearly every request counts (an announce answered) has a
    `tally` of its own instead: one call of C code, a fifth of `add`'s cost."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._threads: list[dict[tuple[str, str], int]] = []
        self._tallies: dict[tuple[str, str], itertools.count] = {}
        self._lock = threading.Lock()  # guards _threads and _tallies

    def tally(self, key: tuple[str, str]) -> Callable[[], int]:
        """A function that counts one `key` each call: itertools.count's increment, atomic
        under the GIL."""
        with self._lock:
            count = self._tallies.setdefault(key, itertools.count())
        return count.__next__

    def add(self, key: tuple[str, str]) -> None:
        try:
            counts = self._local.counts
        except AttributeError:
            counts = self._local.counts = {}
            with self._lock:
                self._threads.append(counts)
        counts[key] = counts.get(key, 0) + 1

    def totals(self) -> dict[tuple[str, str], int]:
        with self._lock:
            threads, tallies = list(self._threads), dict(self._tallies)
        # "count(N)": N calls so far; the one way to read a count without moving it.
        total = {key: int(repr(count)[6:-1]) for key, count in tallies.items()}
        for counts in threads:
            for key, n in counts.copy().items():
                total[key] = total.get(key, 0) + n
        return total


def make_directory(parent: int, base: str | None = None) -> str:
    """This Apache's metrics directory, made if missing (0700), and the directories of Apache
    parents that are gone removed. Raises OSError with a one-line reason if it cannot be
    used: not a directory of ours, or open to other users (they could forge the counts)."""
    path = os.path.join(base or tempfile.gettempdir(), f"{DIRECTORY_PREFIX}{parent}")
    try:
        os.mkdir(path, 0o700)
        _remove_stale(os.path.dirname(path), parent)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise OSError(f"{path} is not a directory of user {os.geteuid()} closed to others (mode 0700); "
                      f"remove it and restart Apache")
    return path


def _remove_stale(base: str, parent: int) -> None:
    for path in glob.glob(os.path.join(base, DIRECTORY_PREFIX + "*")):
        pid = path.rpartition("-")[2]
        try:
            if pid.isdigit() and int(pid) != parent and not _alive(int(pid)) and os.lstat(path).st_uid == os.geteuid():
                shutil.rmtree(path, ignore_errors=True)
        except OSError:  # another process removed it first
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Apache's parent runs as root
        return True
    return True


def _parent_of(pid: int) -> int | None:
    """The parent of a running process (Linux /proc), None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[1])  # the name, in (), may hold spaces
    except (OSError, IndexError, ValueError):
        return None


class Metrics:
    """prometheus_client's values of this process, and the scrape of every process's.

    Made when the process starts (wsgi.Application, as mod_wsgi preloads tracker.wsgi), so
    `tracker_wsgi_processes` counts every process serving the tracker from the start, not
    only those that have had a request. `serve` then gives it what to fold, once the
    tracker is built: the request counters (`counts`), what the swarms hold (`held`:
    live.HostSwarms.held) and the stores' `errors`, `reconnects` and `conflicts` (store/sqlbase.py)."""

    def __init__(self, directory: str, parent: int, log: Callable[[str], None]):
        # Multiprocess mode is chosen when prometheus_client is imported: set the directory
        # first. Nothing else in a tracker process imports it.
        if "prometheus_client" in sys.modules and not sys.modules["prometheus_client"].values.ValueClass._multiprocess:
            raise RuntimeError("prometheus_client was imported before the tracker set PROMETHEUS_MULTIPROC_DIR")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        import prometheus_client
        from prometheus_client import multiprocess
        self._pc = prometheus_client
        self._multiprocess = multiprocess
        self.directory = directory
        self.parent = parent
        self.log = log
        self.counts: Counts | None = None  # serve() gives these
        self.held: Callable[[], Any] = lambda: None
        self.stores: list[Any] = []
        self.interval = 0.0
        c, g, h = prometheus_client.Counter, prometheus_client.Gauge, prometheus_client.Histogram
        self.requests = {
            ANNOUNCE: c("tracker_wsgi_announces", "Announces answered, by outcome.", ["outcome"], registry=None),
            SCRAPE: c("tracker_wsgi_scrapes", "Scrapes answered, by outcome.", ["outcome"], registry=None),
            FAILURE: c("tracker_wsgi_failure_reasons", "Answers with a failure reason, by reason.", ["reason"],
                       registry=None),
        }
        self.database_errors = c("tracker_wsgi_database_errors",
                                 "Database statements and connections that failed (each retry counted).",
                                 registry=None)
        self.database_reconnects = c("tracker_wsgi_database_reconnects",
                                     "Database connections made again after one failed.", registry=None)
        self.database_conflicts = c("tracker_wsgi_database_conflicts",
                                    "Transactions that lost a conflict (a deadlock; on Galera, certification) "
                                    "and were run again (counted among the errors too).", registry=None)
        self.flush_seconds = h("tracker_wsgi_flush_seconds", "How long each batch write of announces took.",
                               buckets=FLUSH_BUCKETS, registry=None)
        self.flush_failures = c("tracker_wsgi_flush_failures", "Batch writes that failed (kept and retried).",
                                registry=None)
        self.refresh_seconds = h("tracker_wsgi_refresh_seconds",
                                 "How long each refresh run by the tracker's processes took (not cron's).",
                                 buckets=REFRESH_BUCKETS, registry=None)

        def live_sum(name: str, text: str):
            return g(name, text, multiprocess_mode="livesum", registry=None)

        self.processes = live_sum("tracker_wsgi_processes", "Processes serving the tracker.")
        def host_wide(name: str, text: str):  # every process reads the same host state
            return g(name, text, multiprocess_mode="livemax", registry=None)

        self.swarms_held = host_wide("tracker_wsgi_swarms_held", "Swarms the host's shared state holds.")
        self.peers_held = host_wide("tracker_wsgi_peers_held", "Peers held in those swarms.")
        self.flush_backlog = host_wide("tracker_wsgi_flush_backlog", "Announces answered and not written yet.")
        self.flush_failing = live_sum("tracker_wsgi_flush_failing", "Processes whose last batch write failed.")
        self.processes.set(1)
        # Every label a counter can have, at 0: a rate over a series that appears only at its
        # first count misses that count (Prometheus's rate() needs two samples).
        for kind in (ANNOUNCE, SCRAPE):
            for outcome in (OK, *OUTCOMES):
                self.requests[kind].labels(outcome)
        for refusal in REFUSALS:
            self.requests[FAILURE].labels(refusal.code)
        self._folded: dict[Any, float] = {}  # what each counter was given so far
        self._fold_lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    # -- this process's values -------------------------------------------------------------

    def serve(self, counts: Counts, held: Callable[[], Any], stores: list[Any], interval: float) -> None:
        """Fold these every `interval` seconds in a thread of its own, until `close`."""
        self.counts, self.held, self.stores, self.interval = counts, held, stores, interval
        self._thread = threading.Thread(target=self._fold_forever, name="tracker_wsgi metrics", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # as live.py's flush: the last counts when the process stops

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        self.fold()
        atexit.unregister(self.close)

    def _fold_forever(self) -> None:
        while not self._closed.wait(self.interval):
            try:
                self.fold()
            except Exception as exc:  # a full disk, say: the next fold tries again
                self.log(f"metrics: folding the counts into {self.directory} failed: {exc}")

    def fold(self) -> None:
        """Give prometheus_client what the counters gained since the last fold, and what the
        process holds now."""
        if self.counts is None:  # no tracker yet
            return
        with self._fold_lock:
            for (kind, label), total in self.counts.totals().items():
                self._give(self.requests[kind].labels(label), (kind, label), total)
            self._give(self.database_errors, "errors", sum(store.errors for store in self.stores))
            self._give(self.database_reconnects, "reconnects", sum(store.reconnects for store in self.stores))
            self._give(self.database_conflicts, "conflicts", sum(store.conflicts for store in self.stores))
            held = self.held()
            self.swarms_held.set(held.swarms)
            self.peers_held.set(held.peers)
            self.flush_backlog.set(held.unwritten)

    def _give(self, counter: Any, key: Any, total: int) -> None:
        gained = total - self._folded.get(key, 0)
        if gained:
            counter.inc(gained)
            self._folded[key] = total

    def flushed(self, seconds: float, written: bool) -> None:
        """A batch write ended (live.HostSwarms.on_flush, in the flush thread: never raises)."""
        try:
            if written:
                self.flush_seconds.observe(seconds)
            else:
                self.flush_failures.inc()
            self.flush_failing.set(0 if written else 1)
        except Exception as exc:
            self.log(f"metrics: recording a batch write in {self.directory} failed: {exc}")

    def refreshed(self, seconds: float) -> None:
        """A refresh ran (refresh.BackgroundRefresh, a web refresh); never raises."""
        try:
            self.refresh_seconds.observe(seconds)
        except Exception as exc:
            self.log(f"metrics: recording a refresh in {self.directory} failed: {exc}")

    # -- every process's values ------------------------------------------------------------

    def exposition(self) -> bytes:
        """The scrape: every process's values, summed, in Prometheus's text format."""
        with self._collecting():
            registry = self._pc.CollectorRegistry()
            self._multiprocess.MultiProcessCollector(registry, path=self.directory)
            return self._pc.generate_latest(registry)

    def host(self) -> Host:
        """The gauges the health check reads, summed over the processes."""
        with self._collecting():
            files = glob.glob(os.path.join(self.directory, "gauge_*.db"))
            families = self._multiprocess.MultiProcessCollector.merge(files)
        sums = {family.name: int(sum(s.value for s in family.samples)) for family in families}
        return Host(sums.get("tracker_wsgi_flush_backlog", 0), sums.get("tracker_wsgi_flush_failing", 0),
                    sums.get("tracker_wsgi_processes", 0))

    @contextlib.contextmanager
    def _collecting(self) -> Iterator[None]:
        """Fold this process's counts; then, holding the directory's lock (one collection at a
        time, whichever process makes it), tidy what gone processes left, and collect."""
        self.fold()
        with open(os.path.join(self.directory, LOCK_FILE), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._tidy_gone()
            yield

    def _tidy_gone(self) -> None:
        """Files of processes that are gone (no process of that pid is Apache's child): their
        gauges go (prometheus_client's mark_process_dead); their counters and histograms are
        added into one archive file per kind, so totals never go down and the directory does
        not grow with every daemon restart or, in embedded mode, every child Apache replaces
        (a scrape read 1,460 files, a year of daily reloads, in 0.5 s)."""
        gone: dict[str, list[str]] = {}
        for path in glob.glob(os.path.join(self.directory, "*_*.db")):
            kind, _, pid = os.path.basename(path)[:-3].rpartition("_")
            if pid.isdigit() and _parent_of(int(pid)) != self.parent:
                gone.setdefault(kind, []).append(path)
                if kind.startswith("gauge_"):
                    self._multiprocess.mark_process_dead(int(pid), self.directory)
        for kind in ("counter", "histogram"):
            if gone.get(kind):
                self._archive(kind, gone[kind])

    def _archive(self, kind: str, paths: list[str]) -> None:
        """Add these files' values into `kind`_archive.db, then remove them. The new archive
        replaces the old in one rename; a process killed between that and the removals
        would count those files twice (the lock keeps every scrape out meanwhile)."""
        from prometheus_client.mmap_dict import MmapedDict, mmap_key

        archive = os.path.join(self.directory, f"{kind}_{ARCHIVE}.db")
        sources = paths + ([archive] if os.path.exists(archive) else [])
        # accumulate=False: histogram buckets as each file keeps them, not cumulative.
        families = self._multiprocess.MultiProcessCollector.merge(sources, accumulate=False)
        building = archive + ".new"  # not *.db: no scrape reads it
        if os.path.exists(building):
            os.unlink(building)
        merged = MmapedDict(building)
        try:
            for family in families:
                for sample in family.samples:
                    key = mmap_key(family.name, sample.name, list(sample.labels), list(sample.labels.values()),
                                   family.documentation)
                    merged.write_value(key, sample.value, 0.0)
        finally:
            merged.close()
        os.replace(building, archive)
        for path in paths:
            os.unlink(path)


def start(log: Callable[[str], None]) -> Metrics | None:
    """The metrics of a process under Apache, counted among the processes from now on; None
    (logged once) if they cannot be kept, for the tracker serves all the same."""
    parent = os.getppid()  # Apache's parent process: the parent of every process serving the tracker
    try:
        return Metrics(make_directory(parent), parent, log)
    except (OSError, RuntimeError) as exc:
        log(f"metrics are off: {exc}")
        return None


# -- the health check --------------------------------------------------------------------------

class Host(NamedTuple):
    """What the health check needs from the processes: announces waiting to be written, how
    many processes' last batch failed, and how many processes that covers."""

    backlog: int
    failing: int
    processes: int

    @classmethod
    def of(cls, held: Any) -> Host:
        """This process alone (its metrics are off)."""
        return cls(held.unwritten, int(held.failing), 1)


def health(database_error: str | None, last_refresh: int | None, now: float, refresh_interval: int,
           host: Host, max_unwritten: int) -> tuple[bool, dict[str, Any]]:
    """(healthy, the report) from what the check found. Unhealthy: the database did not
    answer, a process's last batch failed, or the processes hold as many unwritten
    announces as one may (new peers are being turned away). An overdue refresh is a warning
    only: announces are answered all the same."""
    problems, warnings = [], []
    if database_error is not None:
        problems.append(f"the database is unavailable: {database_error}")
    if host.failing:
        problems.append(f"writing announces to the database fails in {host.failing} process(es)")
    if host.backlog >= max_unwritten:
        problems.append(f"{host.backlog} announces wait to be written: new peers are turned away (max_unwritten)")
    age = max(0, int(now) - last_refresh) if last_refresh else None
    if last_refresh == 0:
        warnings.append("never refreshed: run tracker-wsgi force-refresh, and refresh from cron")
    elif age is not None and age > REFRESH_OVERDUE_INTERVALS * refresh_interval:
        warnings.append(f"the last refresh is {age} s old (refresh_interval = {refresh_interval}): is cron running it?")
    report = {
        "status": "failing" if problems else "ok",
        "problems": problems,
        "warnings": warnings,
        "database": "unreachable" if database_error else "ok",
        "last_refresh": last_refresh or None,
        "last_refresh_age_seconds": age,
        "flush_backlog": host.backlog,
        "flush_failing_processes": host.failing,
        "processes": host.processes,
    }
    return not problems, report


def health_body(report: dict[str, Any]) -> bytes:
    return json.dumps(report, indent=1).encode() + b"\n"
