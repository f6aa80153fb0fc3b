"""refresh and force-refresh (tracker_wsgi/refresh.py): expire silent peers, recount, rescan
the torrent directory, write bt_stats.inc and bt_rss.inc; one refresh at a time across
processes (a lease in the database); from cron (`tracker-wsgi refresh`), from traffic (a
background thread after the answer) and from the web (`/tracker?refresh`, X-Refresh-Secret: ...)."""

from __future__ import annotations

import hashlib
import logging
import os
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from bencoder import bencode

from conftest import announce_query, decode, ih, new_swarm_dir, pid
from tracker_wsgi import refresh as refresh_module
from tracker_wsgi.config import Config
from tracker_wsgi.live import HostSwarms
from tracker_wsgi.model import AnnounceRequest, Event, UnknownTorrent
from tracker_wsgi.protocol import UNKNOWN_TORRENT
from tracker_wsgi.refresh import BackgroundRefresh, RefreshBusy, RefreshReport, refresh
from tracker_wsgi.refresh_auth import REFRESH_BUSY, REFRESH_OFF, REFRESH_REFUSED
from tracker_wsgi.store import open_store
from tracker_wsgi.wsgi import Application, build_tracker

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "tracker-wsgi")
NOW = 1_700_000_000
TIMEOUT = 2700
BASE_URL = "http://h/torrents"
SECRET = "correct-horse-battery-staple-in-a-header"
V4 = bytes([192, 0, 2, 1])
BUSY_LINE = "tracker-wsgi: another refresh is running (the lock is held in the database)\n"
SUMMARY = re.compile(
    r"refreshed in \d+\.\d\d s: (\d+) files scanned, (\d+) torrents, (\d+) new, (\d+) updated, (\d+) removed, "
    r"(\d+) peers expired, (\d+) idle open torrents removed, (\d+) files skipped"
)


def torrent_file(directory: Path, relative: str, name: str, length: int = 1000) -> bytes:
    """Write a v1 .torrent; returns its info hash."""
    info = {b"name": name.encode(), b"length": length, b"piece length": 16384, b"pieces": b"\x02" * 20}
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bencode({b"announce": b"http://h/tracker/announce", b"info": info}))
    return hashlib.sha1(bencode(info)).digest()


def announce_written(store, request: AnnounceRequest, now: int):
    """Announce through a daemon process's swarms and write the batch, as its flush would."""
    swarms = HostSwarms(store, 2, new_swarm_dir())
    try:
        return swarms.announce(request, now)
    finally:
        swarms.close()


def ann(info_hash: bytes, n: int, left: int = 100, uploaded: int = 0, event: Event = Event.NONE,
        numwant: int = 50, downloaded: int = 0) -> AnnounceRequest:
    return AnnounceRequest(
        info_hash=info_hash, peer_id=pid(n), ip=V4, port=6000 + n, uploaded=uploaded, downloaded=downloaded,
        left=left, event=event, numwant=numwant, compact=False, no_peer_id=False, key=None,
        tracker_id=None, client_ip=V4,
    )


def count_peers(store) -> int:
    return store._fetchall("SELECT COUNT(*) FROM peers")[0][0]


def lock_is_free(store) -> bool:
    """Free means a fresh lease can be taken now; the probe's lease is released at once."""
    now = int(time.time())
    if not store.take_refresh_lock("probe", now, 600):
        return False
    store.release_refresh_lock("probe")
    return True


@pytest.fixture(params=["sqlite", "mysql"])
def store_url(request):
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def dirs(shared_dir):
    torrents, output = shared_dir / "torrents", shared_dir / "output"
    torrents.mkdir()
    return torrents, output


def make_config(url: str, dirs, **extra) -> Config:
    torrents, output = dirs
    return Config(database=url, torrent_dir=str(torrents), output_dir=str(output), swarm_dir=new_swarm_dir(),
                  base_url=BASE_URL,
                  peer_timeout=TIMEOUT, refresh_interval=900, **extra)


@pytest.fixture
def setup(store_url, dirs):
    """(config, store, torrent_dir, output_dir) on SQLite and on MariaDB."""
    config = make_config(store_url, dirs)
    store = open_store(store_url, TIMEOUT)
    store.create_tables()
    yield config, store, dirs[0], dirs[1]
    store.close()


def write_toml(path: Path, config: Config) -> Path:
    path.write_text(
        f'database = "{config.database}"\n'
        f'torrent_dir = "{config.torrent_dir}"\n'
        f'output_dir = "{config.output_dir}"\nswarm_dir = "{config.output_dir}-swarms"\n'
        f'base_url = "{config.base_url}"\n'
    )
    return path


def cli_env(config_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CRON"}
    env["TRACKER_WSGI_CONFIG"] = str(config_path)
    env.update(extra)
    return env


# -- what a refresh does ---------------------------------------------------------------------

def test_refresh_registers_new_torrents_and_writes_both_include_files(setup):
    config, store, torrents, output = setup
    one = torrent_file(torrents, "one.torrent", "First One")
    two = torrent_file(torrents, "sub/two.torrent", "Second Two")
    report = refresh(config, store, now=NOW)
    assert (report.ran, report.registered, report.updated, report.removed, report.torrents) == (True, 2, 0, 0, 2)
    assert report.warnings == []
    assert set(store.scrape([one, two], NOW)) == {one, two}
    stats = (output / "bt_stats.inc").read_text()
    rss = (output / "bt_rss.inc").read_text()
    assert f'<a href="{BASE_URL}/one.torrent">First One</a>' in stats
    assert f'<a href="{BASE_URL}/sub/two.torrent">Second Two</a>' in stats
    assert f"<link>{BASE_URL}/sub/two.torrent</link>" in rss
    assert rss.count("<item>") == 2
    assert sorted(os.listdir(output)) == ["bt_rss.inc", "bt_stats.css", "bt_stats.inc"]


def test_every_refresh_names_each_link_in_the_torrent_directory(setup, tmp_path):
    """A link is never followed (scanner.py) nor served (site.conf); the admin hears of each
    one at every refresh until it is gone, not once (issue 17: they were skipped silently)."""
    config, store, torrents, output = setup
    torrent_file(torrents, "one.torrent", "First One")
    os.symlink("/", torrents / "rootfs")
    os.symlink(config.output_dir, torrents / "sub-output")
    for now in (NOW, NOW + 900):
        report = refresh(config, store, force=True, now=now)
        assert sorted(report.warnings) == [f"{name}: a symbolic link, not followed (nor served by the site); "
                                           "remove it" for name in ("rootfs", "sub-output")]
        assert report.torrents == 1
    os.unlink(torrents / "rootfs")
    os.unlink(torrents / "sub-output")
    assert refresh(config, store, force=True, now=NOW + 1800).warnings == []


def test_a_torrent_whose_file_is_gone_is_removed_with_all_its_peers(setup):
    config, store, torrents, output = setup
    gone = torrent_file(torrents, "gone.torrent", "Gone")
    kept = torrent_file(torrents, "kept.torrent", "Kept")
    refresh(config, store, now=NOW)
    for n in range(1, 4):
        announce_written(store, ann(gone, n), NOW + 10)
    announce_written(store, ann(kept, 9), NOW + 10)
    (torrents / "gone.torrent").unlink()

    report = refresh(config, store, force=True, now=NOW + 20)
    assert (report.removed, report.torrents) == (1, 1)
    assert count_peers(store) == 1
    assert set(store.scrape([gone, kept], NOW + 20)) == {kept}
    with pytest.raises(UnknownTorrent):
        announce_written(store, ann(gone, 1), NOW + 30)
    assert "Gone" not in (output / "bt_stats.inc").read_text()
    assert "gone.torrent" not in (output / "bt_rss.inc").read_text()

    # And over HTTP, as a client sees it.
    tracker = build_tracker(config)
    status, _, body = tracker.handle({"REQUEST_METHOD": "GET", "PATH_INFO": "/announce",
                                      "QUERY_STRING": announce_query(gone, pid(1)), "REMOTE_ADDR": "192.0.2.1"})
    assert status == "200 OK"
    assert decode(body) == {b"failure reason": UNKNOWN_TORRENT.encode()}
    tracker.close()


def test_a_download_shows_as_transferred_before_its_seed_announces_again(setup):
    """A seed starts (it has given nothing yet), a leecher downloads the whole torrent from it
    and says `completed`: the next refresh shows the torrent's size transferred and one
    completion, though the seed's next announce, with its upload, is half an hour away."""
    config, store, torrents, output = setup
    size = 3 << 20
    info_hash = torrent_file(torrents, "fresh.torrent", "fresh", length=size)
    refresh(config, store, now=NOW)
    announce_written(store, ann(info_hash, 1, left=0, event=Event.STARTED), NOW + 10)  # the seed
    announce_written(store, ann(info_hash, 2, left=size, event=Event.STARTED), NOW + 20)
    announce_written(store, ann(info_hash, 2, left=0, downloaded=size, event=Event.COMPLETED), NOW + 80)
    refresh(config, store, force=True, now=NOW + 120)
    (fresh,) = store.report(NOW + 120)
    assert (fresh.seeds, fresh.downloaded, fresh.transferred) == (2, 1, size)
    row = re.search(r"<tr><td>[^\n]*fresh</a></td></tr>", (output / "bt_stats.inc").read_text()).group()
    assert "<td>3.00 MiB</td><td>2 min</td><td>1</td>" in row  # transferred, elapsed, completed
    # It leaves: what it downloaded stays in the total, counted once.
    announce_written(store, ann(info_hash, 2, left=0, downloaded=size, uploaded=size, event=Event.STOPPED),
                     NOW + 200)
    assert store.report(NOW + 200)[0].transferred == size


def test_expiry_deletes_only_stale_peers_and_keeps_what_they_downloaded(setup):
    """The original wiped whole swarms; only peers silent longer than peer_timeout go, and
    their downloaded bytes join the torrent's transfer total."""
    config, store, torrents, _ = setup
    mixed = torrent_file(torrents, "mixed.torrent", "mixed")
    stale_only = torrent_file(torrents, "stale.torrent", "stale")
    torrent_file(torrents, "quiet.torrent", "quiet")  # registered, never announced to
    refresh(config, store, now=NOW)
    announce_written(store, ann(mixed, 1, downloaded=5000, uploaded=1), NOW)  # silent since NOW
    announce_written(store, ann(stale_only, 3, downloaded=300, uploaded=1), NOW)
    announce_written(store, ann(mixed, 2, left=0, downloaded=700, uploaded=1), NOW + 2000)  # fresh

    later = NOW + TIMEOUT + 100  # cutoff NOW + 100: peers 1 and 3 are stale, 2 is not
    report = refresh(config, store, force=True, now=later)
    assert report.expired == 2
    assert count_peers(store) == 1
    by_name = {r.name: r for r in store.report(later)}
    assert (by_name["mixed"].seeds, by_name["mixed"].leechers, by_name["mixed"].transferred) == (1, 0, 5700)
    assert (by_name["stale"].seeds, by_name["stale"].leechers, by_name["stale"].transferred) == (0, 0, 300)
    assert by_name["quiet"].transferred == 0
    # The survivor is still handed out.
    assert [p.peer_id for p in announce_written(store, ann(mixed, 4), later).peers] == [pid(2)]


def test_recount_after_expiry_counts_live_seeds_leechers_and_partial_seeds(setup):
    config, store, torrents, output = setup
    h = torrent_file(torrents, "t.torrent", "t", length=1000)
    refresh(config, store, now=NOW)
    announce_written(store, ann(h, 1, left=0), NOW)  # stale seed
    announce_written(store, ann(h, 2, left=900), NOW)  # stale leecher
    later = NOW + TIMEOUT + 100
    announce_written(store, ann(h, 3, left=0), later - 10)
    announce_written(store, ann(h, 4, left=400), later - 10)
    announce_written(store, ann(h, 5, left=600), later - 10)
    announce_written(store, ann(h, 6, left=200, event=Event.PAUSED), later - 10)

    report = refresh(config, store, force=True, now=later)
    assert report.expired == 2
    [r] = store.report(later)
    assert (r.seeds, r.leechers, r.partial_seeds, r.bytes_left) == (1, 2, 1, 1200)
    assert store.history(0) == [(NOW, 0, 0), (later, 1, 3)]
    cells = re.findall(r"<td>([^<]*)</td>", (output / "bt_stats.inc").read_text())
    # current rate, average progress (1 - 1200 / (3 x 1000)), seeds, leechers + partial seeds
    assert cells[1:4] == ["60.00 %", "1", "3"]


@pytest.mark.parametrize("whitelist", ["open", "directory"])
def test_refresh_in_open_mode_removes_the_torrents_nobody_announces_to(store_url, dirs, whitelist):
    """Whitelist `open`: a torrent announces registered leaves once its peers have (after
    expiry) and it is older than peer_timeout. In mode `directory` such leftovers stay."""
    config = make_config(store_url, dirs, whitelist=whitelist)
    store = open_store(store_url, TIMEOUT, register_unknown=True)
    store.create_tables()
    listed = torrent_file(dirs[0], "listed.torrent", "listed")
    assert refresh(config, store, now=NOW).registered == 1
    announce_written(store, ann(ih(1), 1), NOW)  # registered by its announce; silent since
    announce_written(store, ann(ih(2), 2), NOW + TIMEOUT)  # and one still announced to
    later = NOW + TIMEOUT + 100
    report = refresh(config, store, force=True, now=later)
    assert (report.expired, report.idle_removed) == (1, 1 if whitelist == "open" else 0)
    assert f", {report.idle_removed} idle open torrents removed, " in report.summary()
    remaining = {listed, ih(2)} | ({ih(1)} if whitelist == "directory" else set())
    assert set(store.scrape_all(later)) == remaining
    store.close()


def test_refresh_waits_for_its_interval_and_force_runs_now(setup):
    config, store, torrents, _ = setup
    torrent_file(torrents, "a.torrent", "a")
    assert refresh(config, store, now=NOW).ran is True
    not_due = refresh(config, store, now=NOW + 10)
    assert not_due.ran is False
    assert not_due.summary() == "refresh not due yet (use force-refresh to run it now)"
    assert refresh(config, store, force=True, now=NOW + 10).ran is True
    assert store.last_refresh() == NOW + 10
    assert refresh(config, store, now=NOW + 10 + 899).ran is False
    assert refresh(config, store, now=NOW + 10 + 900).ran is True
    assert store.last_refresh() == NOW + 910
    assert lock_is_free(store)


def test_a_held_lease_refuses_and_an_expired_lease_can_be_taken(setup):
    config, store, torrents, _ = setup
    torrent_file(torrents, "a.torrent", "a")
    assert store.take_refresh_lock("other", NOW, 600)
    with pytest.raises(RefreshBusy):
        refresh(config, store, force=True, now=NOW + 599)
    assert store.last_refresh() == 0
    # The holder died: its lease ran out at NOW + 600.
    report = refresh(config, store, force=True, now=NOW + 601)
    assert (report.ran, report.registered) == (True, 1)
    assert store.take_refresh_lock("next", NOW + 602, 600)  # and it was released


def test_unreadable_torrent_dir_unregisters_nothing(setup):
    """An unmounted disk must not empty the whitelist."""
    config, store, torrents, _ = setup
    h = torrent_file(torrents, "a.torrent", "a")
    refresh(config, store, now=NOW)
    torrents.rename(torrents.with_name("moved-away"))
    report = refresh(config, store, force=True, now=NOW + 10)
    assert (report.removed, report.torrents) == (0, 1)
    assert report.warnings == [f"{torrents}/: cannot read directory: No such file or directory"]
    assert set(store.scrape([h], NOW + 10)) == {h}


# -- the command line ---------------------------------------------------------------------

def test_cli_refresh_exits_75_at_once_while_another_refresh_holds_the_lock(setup, shared_dir):
    config, store, torrents, output = setup
    torrent_file(torrents, "a.torrent", "a")
    config_path = write_toml(shared_dir / "tracker.toml", config)
    assert store.take_refresh_lock("other", int(time.time()), 600)
    started = time.monotonic()
    done = subprocess.run([CLI, "refresh", "--allow-root"], env=cli_env(config_path), capture_output=True, text=True,
                          timeout=60)
    assert time.monotonic() - started < 5
    assert (done.returncode, done.stdout, done.stderr) == (75, "", BUSY_LINE)
    assert not output.exists()
    assert not lock_is_free(store)  # the busy process neither took nor released the lock
    store.release_refresh_lock("other")
    done = subprocess.run([CLI, "refresh", "--allow-root"], env=cli_env(config_path), capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert (output / "bt_stats.inc").exists()


SLOW_FORCE_REFRESH = """
import os, sys, time
from tracker_wsgi import cli, refresh
log, real_plan = sys.argv[1], refresh.scanner.plan
def slow_plan(*args, **kwargs):
    with open(log, "a") as f:
        f.write(f"start {os.getpid()} {time.time()}\\n")
    time.sleep(1.5)
    try:
        return real_plan(*args, **kwargs)
    finally:
        with open(log, "a") as f:
            f.write(f"end {os.getpid()} {time.time()}\\n")
refresh.scanner.plan = slow_plan
sys.exit(cli.main(["force-refresh", "--quiet", "--allow-root"]))
"""


def test_two_concurrent_force_refreshes_on_mariadb_never_overlap(mysql_url, dirs, shared_dir):
    """Both start together; the refresh work is slowed to 1.5 s. Exactly the processes that
    exit 0 did the work, one after the other; the rest exit 75; the lock is released after."""
    config = make_config(mysql_url, dirs)
    hashes = [torrent_file(dirs[0], f"t{n}.torrent", f"t{n}") for n in range(30)]
    config_path = write_toml(shared_dir / "tracker.toml", config)
    log = shared_dir / "work.log"
    processes = [
        subprocess.Popen([sys.executable, "-c", SLOW_FORCE_REFRESH, str(log)], env=cli_env(config_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        for _ in range(2)
    ]
    results = [(p.pid, p.wait(60), *p.communicate()) for p in processes]
    codes = sorted(code for _, code, _, _ in results)
    assert codes in ([0, 0], [0, 75]), results
    for _, code, out, err in results:
        assert out == "" and err == ("" if code == 0 else BUSY_LINE)

    spans: dict[int, list[float]] = {}
    for line in log.read_text().splitlines():
        _, process, at = line.split()
        spans.setdefault(int(process), []).append(float(at))
    assert sorted(spans) == sorted(p for p, code, _, _ in results if code == 0)
    ordered = sorted(spans.values())
    for (_, first_end), (second_start, _) in zip(ordered, ordered[1:]):
        assert first_end <= second_start

    store = open_store(mysql_url, TIMEOUT)
    try:
        assert lock_is_free(store)
        assert set(store.scrape(hashes, int(time.time()))) == set(hashes)
        assert len(store.torrent_files()) == 30
    finally:
        store.close()


def run_with_tty_stderr(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run with stderr on a terminal, as an admin at a shell has it: (code, stdout, stderr)."""
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        terminal = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child side is closed
                break
            if not chunk:
                break
            terminal += chunk
        out = process.stdout.read()
        return process.wait(30), out, terminal.decode().replace("\r\n", "\n")
    finally:
        os.close(master)


def test_cli_is_quiet_under_cron_even_on_a_terminal(sqlite_url, dirs, shared_dir):
    config = make_config(sqlite_url, dirs)
    torrent_file(dirs[0], "a.torrent", "a")
    config_path = write_toml(shared_dir / "tracker.toml", config)
    assert run_with_tty_stderr([CLI, "refresh", "--allow-root"], cli_env(config_path, CRON="1")) == (0, "", "")
    assert (dirs[1] / "bt_stats.inc").exists()
    # Without CRON, at a terminal, the admin sees the summary.
    code, out, _ = run_with_tty_stderr([CLI, "force-refresh", "--allow-root"], cli_env(config_path))
    assert code == 0
    assert SUMMARY.fullmatch(out.rstrip("\n")), out


def test_cli_under_cron_prints_a_skipped_file_once(sqlite_url, dirs, shared_dir):
    config = make_config(sqlite_url, dirs)
    torrent_file(dirs[0], "a.torrent", "a")
    (dirs[0] / "broken.torrent").write_bytes(b"d4:info")
    config_path = write_toml(shared_dir / "tracker.toml", config)
    env = cli_env(config_path, CRON="1")
    first = subprocess.run([CLI, "force-refresh", "--allow-root"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert (first.returncode, first.stdout) == (0, "")
    assert first.stderr == "tracker-wsgi: broken.torrent: skipped: not a valid torrent: truncated bencoding\n"
    second = subprocess.run([CLI, "force-refresh", "--allow-root"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")


def test_cli_failure_is_one_line_on_stderr_and_releases_the_lock(sqlite_url, dirs, shared_dir):
    (shared_dir / "a-file").write_text("not a directory")
    output = shared_dir / "a-file" / "output"
    config = make_config(sqlite_url, (dirs[0], output))
    torrent_file(dirs[0], "a.torrent", "a")
    config_path = write_toml(shared_dir / "tracker.toml", config)
    done = subprocess.run([CLI, "refresh", "--allow-root"], env=cli_env(config_path, CRON="1"), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"tracker-wsgi: {config_path}: output_dir = '{output}': Not a directory: {output}; make it a directory "
        f"www-data can write: install -d -o www-data -g www-data {output}\n"
    )
    store = open_store(sqlite_url, TIMEOUT)
    try:
        assert lock_is_free(store)
        assert store.last_refresh() == 0  # a failed refresh is still due
    finally:
        store.close()


# -- traffic-triggered refresh --------------------------------------------------------------

def scrape_environ() -> dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": "/scrape", "REMOTE_ADDR": "192.0.2.1",
            "QUERY_STRING": announce_query(ih(1), pid(1)).split("&", 1)[0]}


def call(app, environ) -> tuple[str, bytes, float]:
    statuses = []
    started = time.monotonic()
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    return statuses[0], body, time.monotonic() - started


@pytest.fixture
def app_parts(sqlite_url, dirs, caplog):
    """(app, its background refresh, logged() -> [(level, message)] of the refresh's log, tracker)"""
    caplog.set_level(logging.INFO, logger="tracker_wsgi")
    config = make_config(sqlite_url, dirs)
    tracker = build_tracker(config)
    background = BackgroundRefresh(config, tracker.store)

    def logged() -> list[tuple[str, str]]:
        return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "tracker_wsgi.refresh"]

    yield Application(tracker, background), background, logged, tracker
    if background.thread is not None:
        background.thread.join(10)
    tracker.close()


def test_traffic_refresh_runs_after_the_answer_and_never_twice_at_once(app_parts, monkeypatch):
    app, background, logged, _ = app_parts
    calls: list[str] = []
    running = threading.Event()

    def slow_refresh(config, store, force=False, now=None, progress=None):
        calls.append(threading.current_thread().name)
        running.set()
        time.sleep(2)
        return RefreshReport(ran=True, torrents=3, seconds=2.0)

    monkeypatch.setattr(refresh_module, "refresh", slow_refresh)
    monkeypatch.setattr(BackgroundRefresh, "CHECK_SECONDS", 0)  # check on every request

    status, body, seconds = call(app, scrape_environ())
    assert status == "200 OK" and decode(body) == {b"files": {}}
    assert seconds < 0.5
    assert running.wait(1)
    first = background.thread
    assert first.is_alive()
    status, _, seconds = call(app, scrape_environ())  # during the running refresh
    assert status == "200 OK" and seconds < 0.5
    assert background.thread is first
    first.join(5)
    assert not first.is_alive()
    assert calls == ["tracker_wsgi refresh"]
    assert logged() == [("INFO", "refreshed in 2.00 s: 0 files scanned, 3 torrents, 0 new, 0 updated, 0 removed, "
                                 "0 peers expired, 0 idle open torrents removed, 0 files skipped")]

    call(app, scrape_environ())  # the refresh is over: the next request may start one
    background.thread.join(5)
    assert len(calls) == 2


def test_traffic_checks_for_an_overdue_refresh_at_most_once_a_minute(app_parts, monkeypatch):
    app, background, _, _ = app_parts
    calls: list[int] = []
    monkeypatch.setattr(refresh_module, "refresh", lambda *a, **k: calls.append(1) or RefreshReport(ran=False))
    for _ in range(5):
        call(app, scrape_environ())
        background.thread.join(5)
    assert calls == [1]


def test_traffic_refresh_does_the_real_work(app_parts, dirs):
    app, background, logged, tracker = app_parts
    h = torrent_file(dirs[0], "a.torrent", "a")
    (dirs[0] / "junk.torrent").write_bytes(b"not bencoded")
    call(app, scrape_environ())
    background.thread.join(10)
    assert (dirs[1] / "bt_stats.inc").exists() and (dirs[1] / "bt_rss.inc").exists()
    assert set(tracker.store.scrape([h], int(time.time()))) == {h}
    # The summary is routine (info); a file the admin should look at is a warning.
    [(level, summary), skipped] = logged()
    assert level == "INFO" and SUMMARY.fullmatch(summary).groups() == ("2", "1", "1", "0", "0", "0", "0", "1")
    assert skipped[0] == "WARNING" and skipped[1].startswith("junk.torrent: skipped: ")


def test_traffic_refresh_failure_is_logged_in_one_line(app_parts, dirs, monkeypatch):
    app, background, logged, _ = app_parts

    def failing(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/srv/out")

    monkeypatch.setattr(refresh_module, "refresh", failing)
    status, _, _ = call(app, scrape_environ())
    background.thread.join(5)
    assert status == "200 OK"
    assert logged() == [("ERROR", "background refresh failed: [Errno 13] Permission denied: '/srv/out'")]


# -- refresh over the web ------------------------------------------------------------------

def web(tracker, query: str, secret: str | None = None) -> tuple[str, dict, bytes]:
    """GET /tracker?query, with `secret` in an X-Refresh-Secret header (tests/test_wsgi.py: POST, limits)."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "", "QUERY_STRING": query, "REMOTE_ADDR": "192.0.2.1"}
    if secret is not None:
        environ["HTTP_X_REFRESH_SECRET"] = secret
    status, headers, body = tracker.handle(environ)
    return status, dict(headers), body


@pytest.fixture
def web_tracker(sqlite_url, dirs):
    def make(**extra):
        tracker = build_tracker(make_config(sqlite_url, dirs, **extra))
        made.append(tracker)
        return tracker

    made: list = []
    yield make
    for tracker in made:
        tracker.close()


def test_web_refresh_is_off_without_a_secret(web_tracker, dirs):
    tracker = web_tracker()
    for query, secret in (("refresh", None), ("refresh", ""), ("force-refresh", SECRET)):
        status, _, body = web(tracker, query, secret)
        assert (status, decode(body)) == ("200 OK", {b"failure reason": REFRESH_OFF.encode()})
    assert not dirs[1].exists()


def test_web_refresh_refuses_a_wrong_or_missing_secret(web_tracker, dirs):
    tracker = web_tracker(refresh_secret=SECRET)
    for query, secret in (("refresh", None), ("refresh", ""), ("refresh", "wrong"), ("refresh", SECRET + "x"),
                          ("force-refresh", SECRET[:-1])):
        status, _, body = web(tracker, query, secret)
        assert (status, decode(body)) == ("200 OK", {b"failure reason": REFRESH_REFUSED.encode()}), secret
    assert not dirs[1].exists()


def test_web_refresh_with_the_secret_runs_and_reports_in_plain_text(web_tracker, dirs):
    torrent_file(dirs[0], "a.torrent", "a")
    torrent_file(dirs[0], "b.torrent", "b")
    (dirs[0] / "junk.torrent").write_bytes(b"junk")
    tracker = web_tracker(refresh_secret=SECRET)
    status, headers, body = web(tracker, "refresh", SECRET)
    assert status == "200 OK"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Content-Length"] == str(len(body))
    summary, warning, end = body.decode().split("\n")
    assert SUMMARY.fullmatch(summary).groups() == ("3", "2", "2", "0", "0", "0", "0", "1")
    assert (warning, end) == ("junk.torrent: skipped: not a valid torrent: not bencoded", "")
    assert (dirs[1] / "bt_stats.inc").exists() and (dirs[1] / "bt_rss.inc").exists()

    _, _, body = web(tracker, "refresh", SECRET)
    assert body == b"refresh not due yet (use force-refresh to run it now)\n"
    _, _, body = web(tracker, "force-refresh", SECRET)
    # The junk file is still there: still counted, not reported again.
    assert SUMMARY.fullmatch(body.decode().split("\n")[0]).groups() == ("3", "2", "0", "0", "0", "0", "0", "1")


def test_web_refresh_while_another_runs_is_busy(web_tracker):
    tracker = web_tracker(refresh_secret=SECRET)
    assert tracker.store.take_refresh_lock("other", int(time.time()), 600)
    status, _, body = web(tracker, "force-refresh", SECRET)
    assert (status, decode(body)) == ("200 OK", {b"failure reason": REFRESH_BUSY.encode()})
