"""refresh and force-refresh: expire silent peers, recount, remove idle torrents of
whitelist mode `open`, sample history, rescan the torrent directory, rewrite bt_stats.inc
(and its bt_stats.css) and bt_rss.inc.

One refresh at a time across every process and host sharing the database: the lock is a
lease row in the database (store.take_refresh_lock). Cron runs it (`tracker-wsgi refresh`),
and so does traffic: a request that finds the refresh overdue starts one in a background
thread of its daemon process (BackgroundRefresh), as the original did after answering.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import render, scanner
from .config import Config
from .files import write_atomically
from .store import Catalog

LOCK_LEASE_SECONDS = 600  # a refresh that dies holding the lock loses it after this long
HISTORY_SECONDS = 30 * 86400  # history samples kept for the chart
CHART_SECONDS = 7 * 86400  # the chart shows the last week
STATS_FILE, STYLESHEET_FILE, RSS_FILE = "bt_stats.inc", "bt_stats.css", "bt_rss.inc"
_log = logging.getLogger(__name__)


class RefreshBusy(Exception):
    """Another process holds the refresh lock."""


@dataclass
class RefreshReport:
    ran: bool  # False: not due yet
    expired: int = 0
    idle_removed: int = 0  # whitelist `open`: registered by announces, no peers left
    registered: int = 0
    updated: int = 0
    removed: int = 0
    torrents: int = 0
    scanned: int = 0  # .torrent files found in the directory
    skipped: int = 0  # of those, refused: new ones and those reported before, still there
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        if not self.ran:
            return "refresh not due yet (use force-refresh to run it now)"
        return (
            f"refreshed in {self.seconds:.2f} s: {self.scanned} files scanned, {self.torrents} torrents, "
            f"{self.registered} new, {self.updated} updated, {self.removed} removed, {self.expired} peers expired, "
            f"{self.idle_removed} idle open torrents removed, {self.skipped} files skipped"
        )


def refresh(
    config: Config,
    store: Catalog,
    force: bool = False,
    now: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RefreshReport:
    """Run one refresh if it is due (or forced). Raises RefreshBusy if one is running.

    The store's tables exist already: the CLI and the daemons open it with
    store.open_configured, which creates any that are missing."""
    started = time.monotonic()
    now = int(time.time()) if now is None else now
    owner = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
    if not store.take_refresh_lock(owner, now, LOCK_LEASE_SECONDS):
        raise RefreshBusy("another refresh is running (the lock is held in the database)")
    finished = None
    try:
        previous = store.last_refresh()
        if not force and now < previous + config.refresh_interval:
            return RefreshReport(ran=False)
        templates = render.load_templates(config.template_dir)  # a broken one stops us before any work
        report = RefreshReport(ran=True)
        report.expired = store.expire_peers(now)
        if config.whitelist == "open":  # torrents nobody announces to leave, as their peers did
            report.idle_removed = store.remove_idle_open_torrents(now)

        walk = scanner.walk(config.torrent_dir)
        plan = scanner.plan(
            config.torrent_dir, walk.torrents, store.torrent_files(), store.skipped_files(),
            config.announce_url, progress,
        )
        report.warnings = walk.warnings + plan.warnings
        report.scanned, report.skipped = len(walk.torrents), len(plan.skipped)
        if walk.complete:
            report.removed = store.unregister(plan.unregister)
        for torrent in plan.update:
            store.update_torrent_file(torrent)
        report.registered = store.register_all(plan.register, now)
        report.updated = len(plan.update)
        store.replace_skipped_files(plan.skipped)

        torrents = store.report(now)
        report.torrents = len(torrents)
        info_links = {
            r.path: link for r in torrents if (link := scanner.info_link(r.path, walk.all_files))
        }
        seeds = sum(r.seeds for r in torrents)
        leechers = sum(r.leechers + r.partial_seeds for r in torrents)
        store.record_refresh(now, seeds, leechers, HISTORY_SECONDS)
        history = store.history(now - CHART_SECONDS)
        period = now - previous if previous else 0
        stats = render.stats_table(torrents, now, period, config.base_url, info_links, history, templates)
        os.makedirs(config.output_dir, exist_ok=True)
        write_atomically(os.path.join(config.output_dir, STYLESHEET_FILE), templates.stylesheet.encode())
        write_atomically(os.path.join(config.output_dir, STATS_FILE), stats.encode())
        rss = render.rss_items(torrents, config.base_url)
        write_atomically(os.path.join(config.output_dir, RSS_FILE), rss.encode())
        finished = now
        report.seconds = time.monotonic() - started
        return report
    finally:
        store.release_refresh_lock(owner, finished)


class BackgroundRefresh:
    """The traffic-triggered refresh of one daemon process.

    `poke()` is called once per request and costs a clock read; at most once a minute it
    starts a thread that runs `refresh` (which returns at once when it is not due). The
    client's answer never waits for it, and a process never runs two at once; the
    database lock keeps other processes and hosts out.
    """

    CHECK_SECONDS = 60

    def __init__(self, config: Config, store: Catalog, observe: Callable[[float], None] | None = None):
        self.config, self.store = config, store
        self.observe = observe  # told each refresh's duration (metrics.py)
        self._next_check = 0.0
        self._running = threading.Lock()
        self.thread: threading.Thread | None = None

    def poke(self) -> None:
        now = time.monotonic()
        if now < self._next_check or not self._running.acquire(blocking=False):
            return
        self._next_check = now + self.CHECK_SECONDS
        self.thread = threading.Thread(target=self._run, name="tracker_wsgi refresh", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            report = refresh(self.config, self.store)
            if report.ran:
                if self.observe is not None:
                    self.observe(report.seconds)
                _log.info(report.summary())  # routine: every refresh_interval
                for warning in report.warnings:  # a file skipped (once), a directory unreadable
                    _log.warning(warning)
        except RefreshBusy:
            pass
        except OSError as exc:  # output_dir or torrent_dir: the admin's to fix, one line
            _log.error(f"background refresh failed: {exc}")
        except Exception:
            _log.exception("background refresh failed:")
        finally:
            self._running.release()


def terminal_progress(done: int, total: int) -> None:
    if done == total or done % 100 == 0:
        width = 40
        filled = width * done // max(1, total)
        print(f"\rreading torrents [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
              end="\n" if done == total else "", file=sys.stderr, flush=True)
