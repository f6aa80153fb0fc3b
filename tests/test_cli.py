"""The admin's command line (tracker_wsgi/cli/), run as an admin runs it: the venv's
`tracker-wsgi` in a subprocess, as www-data (`runuser -u www-data --`) or, where the test
is about that mistake, as root; against SQLite in a temporary directory and the real
MariaDB. Each test checks the lines printed and the exit status."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from bencoder import bencode

from conftest import TEST_PASSWORD, give_to_www_data
from tracker_wsgi import apache_conf
from tracker_wsgi.model import PeerState, PeerWrite
from tracker_wsgi.store import open_store

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "tracker-wsgi")
WWW = "www-data"
BASE_URL = "http://h/torrents"
V4 = bytes([192, 0, 2, 1])
COMMANDS = ("check-config", "init-db", "add", "list", "show", "remove", "stats", "refresh",
            "force-refresh", "serve")
SUMMARY = re.compile(
    r"refreshed in \d+\.\d\d s: (\d+) files scanned, (\d+) torrents, (\d+) new, (\d+) updated, "
    r"(\d+) removed, (\d+) peers expired, \d+ idle open torrents removed, (\d+) files skipped"
)


def run(*args: str, user: str | None = WWW, **env: str) -> subprocess.CompletedProcess:
    """tracker-wsgi ARGS as `user` (None: root, as this test runs), without CRON or a
    config from the environment unless given."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CRON", "TRACKER_WSGI_CONFIG")}
    environ.update(env)
    command = [CLI, *args] if user is None else ["runuser", "-u", user, "--", CLI, *args]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60)


def lines(text: str) -> list[str]:
    return text.splitlines()


def info_dict(name: str, length: int = 1000, hybrid: bool = False) -> dict:
    info = {b"name": name.encode(), b"length": length, b"piece length": 16384, b"pieces": b"\x02" * 20}
    if hybrid:  # BEP 52: the v1 keys and a file tree; announced under two hashes
        info |= {b"file tree": {name.encode(): {b"": {b"length": length, b"pieces root": b"r" * 32}}},
                 b"meta version": 2}
    return info


def write_torrent(path: Path, name: str, length: int = 1000, hybrid: bool = False) -> str:
    """Write a .torrent; returns its v1 info hash in hex."""
    info = info_dict(name, length, hybrid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bencode({b"announce": b"http://h/tracker/announce", b"info": info}))
    return hashlib.sha1(bencode(info)).hexdigest()


@dataclass
class Site:
    url: str
    config: Path
    torrents: Path
    output: Path
    root: Path

    def store(self):
        return open_store(self.url, 2700)


def make_site(url: str, root: Path, **extra: str) -> Site:
    torrents, output = root / "torrents", root / "output"
    torrents.mkdir()
    config = root / "tracker.toml"
    text = (f'database = "{url}"\ntorrent_dir = "{torrents}"\noutput_dir = "{output}"\nswarm_dir = "{output}-swarms"\n'
            f'base_url = "{BASE_URL}"\n')
    config.write_text(text + "".join(f'{k} = "{v}"\n' for k, v in extra.items()))
    return Site(url, config, torrents, output, root)


@pytest.fixture(params=["sqlite", "mysql"])
def site(request, shared_dir) -> Site:
    return make_site(request.getfixturevalue(f"{request.param}_url"), shared_dir)


@pytest.fixture
def sqlite_site(sqlite_url, shared_dir) -> Site:
    return make_site(sqlite_url, shared_dir)


# -- the parser ----------------------------------------------------------------------------

def test_version_is_the_installed_package_version():
    done = run("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"tracker-wsgi {metadata.version('tracker_wsgi')}\n", "")


def test_every_command_has_its_own_help_text():
    overview = run("--help").stdout
    for command in COMMANDS:
        summary = re.search(rf"^    {command}\s+(\S.*)$", overview, re.M)
        assert summary, (command, overview)
        done = run(command, "--help")
        assert done.returncode == 0
        usage, description, details = done.stdout.split("\n\n")[:3]
        assert usage.startswith(f"usage: tracker-wsgi {command} [-h] [--config FILE] [--quiet]")
        # The one-line summary of the overview, then a paragraph of its own.
        assert description == summary.group(1)[0].upper() + summary.group(1)[1:] + "."
        assert len(details.split()) > 8 and not details.startswith(("options:", "positional"))


def test_paths_names_every_shipped_apache_file_and_each_is_there():
    """`tracker-wsgi paths` tells the admin what the apache directory holds: both topologies'
    snippets among them, each named file (or directory) present in it."""
    done = run("paths")
    assert done.returncode == 0 and done.stderr == ""
    apache_line = next(line for line in done.stdout.splitlines() if line.startswith("apache "))
    apache_dir = Path(run("paths", "apache").stdout.strip())
    assert str(apache_dir) in apache_line
    named = re.search(r"\((.*): TRACKER_WSGI_APACHE\)", apache_line).group(1).split(", ")
    assert {*apache_conf.SHIPPED, "tracker-host.conf", "site.conf", "tracker.wsgi"} <= set(named), named
    assert [name for name in named if not (apache_dir / name).exists()] == []


def test_options_are_accepted_before_and_after_the_command(sqlite_site):
    write_torrent(sqlite_site.torrents / "a.torrent", "Alpha")
    assert run("force-refresh", "--config", str(sqlite_site.config)).returncode == 0
    config = str(sqlite_site.config)
    before, after = run("--config", config, "list"), run("list", "--config", config)
    assert before.returncode == after.returncode == 0
    assert before.stdout == after.stdout and len(lines(before.stdout)) == 3
    # --quiet in either place: the rows only, no header or summary
    quiet = [run("--quiet", "list", "--config", config), run("--config", config, "list", "--quiet")]
    assert [q.stdout for q in quiet] == [lines(before.stdout)[1] + "\n"] * 2
    # After the command wins over before it, as for any option given twice.
    assert run("--config", "/nonexistent.toml", "list", "--config", config).stdout == before.stdout


# -- add, list, show, remove -----------------------------------------------------------------

def test_add_list_remove_and_what_reaches_the_feed(site):
    config = str(site.config)
    inside = site.torrents / "a.torrent"
    outside = site.root / "outside.torrent"
    alpha, other = write_torrent(inside, "Alpha"), write_torrent(outside, "Outside", 5000)
    added = run("add", str(inside), str(outside), "--config", config)
    assert added.returncode == 0, added.stderr
    assert lines(added.stdout) == [
        f"{inside}: added {alpha} Alpha",
        f"{outside}: added {other} Outside",
        "2 added, 0 already registered, 0 failed; the stats page and the feed show them after the next refresh",
    ]
    assert added.stderr == (
        f"tracker-wsgi: {outside} is outside torrent_dir ({site.torrents}): its swarm is tracked, but the "
        "stats page lists it without a link and the feed leaves it out; to publish it, "
        f"`tracker-wsgi remove {other}` and put the file in torrent_dir instead\n"
    )
    again = run("add", str(inside), str(site.root / "missing.torrent"), "--config", config)
    assert (again.returncode, lines(again.stdout)) == (1, [
        f"{inside}: already registered: {alpha} Alpha", "0 added, 1 already registered, 1 failed"])
    assert again.stderr == f"tracker-wsgi: {site.root}/missing.torrent: skipped: No such file or directory\n"

    listed = run("list", "--config", config)
    assert listed.returncode == 0
    header, *rows, summary = lines(listed.stdout)
    assert header.split() == ["info", "hash", "seeds", "leechers", "completed", "size", "torrent", "file", "name"]
    assert [row.split(None, 4) for row in rows] == [
        [other, "0", "0", "0", f"4.88 KiB  {outside} (added by hand)  Outside"],
        [alpha, "0", "0", "0", "1000 B  a.torrent  Alpha"],
    ]
    assert summary == "2 torrents: 1 from torrent_dir, 1 added by hand, 0 registered by announces"

    # The file added from torrent_dir is the scan's like any other: unchanged, not new, and
    # in the feed; the one from elsewhere is on the stats page without a link, not in the feed.
    refreshed = run("force-refresh", "--config", config)
    assert SUMMARY.fullmatch(refreshed.stdout.rstrip("\n")).groups() == ("1", "2", "0", "0", "0", "0", "0")
    rss, stats = (site.output / "bt_rss.inc").read_text(), (site.output / "bt_stats.inc").read_text()
    assert f"<link>{BASE_URL}/a.torrent</link>" in rss and "Outside" not in rss
    assert f'<a href="{BASE_URL}/a.torrent">Alpha</a>' in stats and '<td class="name">Outside</td>' in stats

    removed = run("remove", alpha, str(outside), "0" * 40, "--config", config)
    assert removed.returncode == 1
    assert lines(removed.stdout) == [
        f"{alpha}: removed {alpha} Alpha and its 0 peers",
        f"{outside}: removed {other} Outside and its 0 peers",
        "2 removed, 1 not found",
    ]
    assert lines(removed.stderr) == [
        f"tracker-wsgi: {inside} is still in torrent_dir: the next refresh registers it again unless the file "
        "is removed",
        f"tracker-wsgi: {'0' * 40}: not registered",
    ]
    assert lines(run("list", "--config", config).stdout)[-1] == (
        "0 torrents: 0 from torrent_dir, 0 added by hand, 0 registered by announces")
    again = run("force-refresh", "--config", config)
    assert SUMMARY.fullmatch(again.stdout.rstrip("\n")).groups() == ("1", "1", "1", "0", "0", "0", "0")


def test_show_and_remove_find_a_hybrid_torrent_by_either_hash_or_its_file(site):
    config = str(site.config)
    path = site.torrents / "h.torrent"
    v1 = write_torrent(path, "Hybrid", hybrid=True)
    v2_full = hashlib.sha256(bencode(info_dict("Hybrid", hybrid=True))).hexdigest()
    v2 = v2_full[:40]  # BEP 52: announced truncated to 20 bytes
    assert run("force-refresh", "--config", config).returncode == 0
    lowest, highest = sorted([v1, v2])
    expected = [
        "name          Hybrid",
        f"info hash     {lowest}",
        f"info hash     {highest}",
        "torrent file  h.torrent",
        "size          1000 bytes (1000 B)",
    ]
    for target in (v1, v2, v2_full, v1.upper(), str(path)):
        shown = run("show", target, "--config", config)
        assert (shown.returncode, shown.stderr) == (0, "")
        assert lines(shown.stdout)[:5] == expected, target
        assert lines(shown.stdout)[6:] == [
            "peers         0 seeds, 0 leechers, 0 partial seeds (announced in the last 2700 s)",
            "completed     0 times",
            "transferred   0 B downloaded",
        ]
    # With the file gone, the store still knows both hashes name the torrent.
    path.unlink()
    shown = run("show", highest, "--config", config)
    assert (shown.returncode, lines(shown.stdout)[:4]) == (0, [
        "name          Hybrid", f"info hash     {lowest}", f"info hash     {highest}",
        "torrent file  h.torrent"])
    removed = run("remove", highest, "--config", config)
    assert (removed.returncode, removed.stderr) == (0, "")
    assert lines(removed.stdout) == [f"{highest}: removed {lowest} Hybrid and its 0 peers", "1 removed, 0 not found"]
    store = site.store()
    try:
        assert store.scrape([bytes.fromhex(v1), bytes.fromhex(v2)], int(time.time())) == {}
    finally:
        store.close()
    missing = run("show", v1, "--config", config)
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", f"tracker-wsgi: {v1}: not registered\n")


def test_stats_counts_live_peers_and_completions_in_text_and_json(site):
    config = str(site.config)
    alpha = write_torrent(site.torrents / "a.torrent", "Alpha", 1000)
    write_torrent(site.torrents / "b.torrent", "Beta", 3000)
    assert run("force-refresh", "--config", config).returncode == 0
    store = site.store()
    now = int(time.time())
    try:
        torrent_id = store.find_swarm(bytes.fromhex(alpha), now, 50).torrent_id
        peers = [(1, PeerState.SEED, 0, True), (2, PeerState.LEECHER, 400, False),
                 (3, PeerState.PARTIAL_SEED, 100, False), (4, PeerState.LEECHER, 900, False)]
        for n, state, left, completed in peers:
            write = PeerWrite(b"-TW0001-" + n.to_bytes(12, "big"), V4, 6000 + n, None, state, left,
                              0, 250, now - (5000 if n == 4 else 0), False)  # peer 4 is long silent
            store.write_through(torrent_id, write, completed)
        last_refresh = store.last_refresh()
    finally:
        store.close()
    as_json = run("stats", "--json", "--config", config)
    assert (as_json.returncode, as_json.stderr) == (0, "")
    assert json.loads(as_json.stdout) == {
        "torrents": 2, "seeds": 1, "leechers": 1, "partial_seeds": 1, "completed": 1,
        "transferred_bytes": 750, "content_bytes": 4000, "last_refresh": last_refresh,
    }
    text = run("stats", "--config", config)
    refreshed = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(last_refresh))
    assert (text.returncode, text.stdout) == (0, (
        "2 torrents (3.91 KiB), 1 seed, 1 leecher, 1 partial seed, 1 completed, 750 B downloaded; "
        f"last refresh {refreshed}\n"))


def test_names_from_torrent_files_reach_the_terminal_escaped(sqlite_site):
    """Anyone's .torrent names its files; a name or a file name must not drive the admin's
    terminal (colours, clearing the screen, right-to-left overrides, fake lines)."""
    config = str(sqlite_site.config)
    name = "\x1b[31mRed\x1b[0m\u202eevil\nline"
    info_hash = write_torrent(sqlite_site.torrents / "esc\x1b[2J.torrent", name)
    assert run("force-refresh", "--config", config).returncode == 0
    escaped_name, escaped_file = "\\x1b[31mRed\\x1b[0m\\u202eevil\\nline", "esc\\x1b[2J.torrent"
    listed = run("list", "--config", config)
    assert (listed.returncode, listed.stderr) == (0, "")
    assert lines(listed.stdout)[1:] == [
        f"{info_hash}      0        0         0       1000 B  {escaped_file}  {escaped_name}",
        "1 torrent: 1 from torrent_dir, 0 added by hand, 0 registered by announces",
    ]
    shown = run("show", info_hash, "--config", config)
    assert (shown.returncode, shown.stderr) == (0, "")
    assert lines(shown.stdout)[0] == f"name          {escaped_name}"
    assert f"torrent file  {escaped_file}" in lines(shown.stdout)
    assert "peers         0 seeds, 0 leechers, 0 partial seeds (announced in the last 2700 s)" in lines(shown.stdout)
    removed = run("remove", info_hash, "--config", config)
    assert "\x1b" not in removed.stdout + removed.stderr and escaped_name in removed.stdout


def test_a_reader_that_stops_early_gets_no_traceback(sqlite_site):
    """`tracker-wsgi list | head`: the command stops quietly when its reader has gone."""
    config = str(sqlite_site.config)
    info_hash = write_torrent(sqlite_site.torrents / "a.torrent", "Alpha")
    assert run("force-refresh", "--config", config).returncode == 0
    environ = {k: v for k, v in os.environ.items() if k not in ("CRON", "TRACKER_WSGI_CONFIG")}
    for command in (["list"], ["show", info_hash], ["stats"]):
        process = subprocess.Popen(["runuser", "-u", WWW, "--", CLI, *command, "--config", config], env=environ,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        process.stdout.close()  # gone before the command writes, as `head` is after its lines
        stderr = process.stderr.read()
        assert (process.wait(60), stderr) == (1, b""), command


# -- refresh: summaries, quiet, root ---------------------------------------------------------

def test_force_refresh_counts_every_skipped_file_still_there_and_reports_it_once(site):
    config = str(site.config)
    write_torrent(site.torrents / "a.torrent", "Alpha")
    (site.torrents / "junk.torrent").write_bytes(b"junk")
    first = run("force-refresh", "--config", config)
    assert first.returncode == 0
    assert SUMMARY.fullmatch(first.stdout.rstrip("\n")).groups() == ("2", "1", "1", "0", "0", "0", "1")
    assert first.stderr == "tracker-wsgi: junk.torrent: skipped: not a valid torrent: not bencoded\n"
    second = run("force-refresh", "--config", config)
    assert (second.returncode, second.stderr) == (0, "")
    assert SUMMARY.fullmatch(second.stdout.rstrip("\n")).groups() == ("2", "1", "0", "0", "0", "0", "1")
    not_due = run("refresh", "--config", config)
    assert (not_due.returncode, not_due.stdout) == (0, "refresh not due yet (use force-refresh to run it now)\n")


def test_quiet_and_cron_print_only_warnings(sqlite_site):
    config = str(sqlite_site.config)
    (sqlite_site.torrents / "junk.torrent").write_bytes(b"junk")
    warning = "tracker-wsgi: junk.torrent: skipped: not a valid torrent: not bencoded\n"
    quiet = run("force-refresh", "--quiet", "--config", config)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", warning)
    (sqlite_site.torrents / "junk.torrent").write_bytes(b"junk again")  # changed: reported again
    cron = run("force-refresh", "--config", config, CRON="1")
    assert (cron.returncode, cron.stdout, cron.stderr) == (0, "", warning)
    write_torrent(sqlite_site.torrents / "a.torrent", "Alpha")
    added = run("--quiet", "add", str(sqlite_site.torrents / "a.torrent"), "--config", config)
    assert (added.returncode, added.stdout, added.stderr) == (0, "", "")


def refusal(site: Site, made: str, *args: str) -> str:
    command = " ".join([CLI, *args])
    return (f"tracker-wsgi: refusing to run as root: {made} would belong to root, and the tracker (www-data) "
            f"could not write it; run: runuser -u www-data -- {command} (or add --allow-root)\n")


def test_as_root_refresh_and_add_refuse_rather_than_leave_files_www_data_cannot_write(sqlite_site):
    site, config = sqlite_site, str(sqlite_site.config)
    database = str(site.root / "tracker.sqlite")
    torrent = site.torrents / "a.torrent"
    write_torrent(torrent, "Alpha")
    for command in ("refresh", "force-refresh"):
        done = run(command, "--config", config, user=None)
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == refusal(site, f"{site.output}/bt_stats.inc", command, "--config", config)
    done = run("add", str(torrent), "--config", config, user=None)
    assert (done.returncode, done.stderr) == (1, refusal(site, database, "add", str(torrent), "--config", config))
    listed = run("list", "--config", config, user=None)
    assert listed.stderr == (
        f"tracker-wsgi: {config}: database = '{site.url}': {database} does not exist yet; the tracker "
        "creates it on its first request, or run: runuser -u www-data -- tracker-wsgi init-db\n")
    assert sorted(p.name for p in site.root.iterdir()) == ["torrents", "tracker.toml"]  # nothing made

    # Once www-data has made the database, root may add to it: SQLite gives the files it
    # makes beside it the database's owner, and our lock file is there already.
    assert run("init-db", "--config", config).stdout == f"{site.url}: schema created at version 5\n"
    done = run("add", str(torrent), "--config", config, user=None)
    assert (done.returncode, done.stderr) == (0, "")
    owners = {p.name: pwd.getpwuid(p.stat().st_uid).pw_name for p in site.root.glob("tracker.sqlite*")}
    assert set(owners.values()) == {"www-data"}, owners
    # Explicitly allowed, it runs (and the files it makes are root's: that is the risk taken).
    done = run("force-refresh", "--allow-root", "--config", config, user=None)
    assert done.returncode == 0 and SUMMARY.fullmatch(done.stdout.rstrip("\n"))
    assert (site.output / "bt_stats.inc").stat().st_uid == 0


def test_as_root_on_mariadb_only_refresh_refuses(mysql_url, shared_dir):
    site = make_site(mysql_url, shared_dir)
    config = str(site.config)
    torrent = site.torrents / "a.torrent"
    alpha = write_torrent(torrent, "Alpha")
    done = run("force-refresh", "--config", config, user=None)
    assert (done.returncode, done.stderr) == (1, refusal(site, f"{site.output}/bt_stats.inc", "force-refresh",
                                                         "--config", config))
    done = run("add", str(torrent), "--config", config, user=None)  # writes rows, no files
    assert (done.returncode, lines(done.stdout)[0]) == (0, f"{torrent}: added {alpha} Alpha")
    assert not site.output.exists()


# -- check-config --------------------------------------------------------------------------

def test_check_config_checks_the_directories_for_www_data_not_for_root(shared_dir):
    """As root, os.access says yes to everything; the check reads owner and mode bits."""
    database_dir = shared_dir / "db"
    database_dir.mkdir(mode=0o755)
    site = make_site(f"sqlite:///{database_dir}/tracker.sqlite", shared_dir)
    config = str(site.config)
    site.torrents.chmod(0o700)
    site.output.mkdir(mode=0o755)
    done = run("check-config", config, user=None)
    assert (done.returncode, done.stdout) == (1, "")
    assert lines(done.stderr) == [
        "tracker-wsgi: running as root: the checks below are made for www-data, but run the tracker's other "
        "commands as that user (runuser -u www-data -- tracker-wsgi ...)",
        f"tracker-wsgi: {config}: torrent_dir = '{site.torrents}': {site.torrents} is not readable by www-data "
        f"(root:root drwx------): chmod o+rx {site.torrents}",
        f"tracker-wsgi: {config}: output_dir = '{site.output}': {site.output} is not writable by www-data "
        f"(root:root drwxr-xr-x): chown www-data: {site.output}",
        f"tracker-wsgi: {config}: database = '{site.url}': {database_dir} is not writable by www-data "
        f"(root:root drwxr-xr-x): chown www-data: {database_dir}",
    ]
    # The fixes the lines name.
    site.torrents.chmod(0o755)
    for directory in (site.output, database_dir):
        os.chown(directory, pwd.getpwnam(WWW).pw_uid, -1)
    done = run("check-config", "--config", config)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        f"{config}: ok: no database file yet at {database_dir}/tracker.sqlite (the tracker creates it on its "
        "first request); torrent_dir readable and output_dir writable by www-data\n")
    assert not (database_dir / "tracker.sqlite").exists()  # checked, not created

    # The trap the issue met: a database file made by root in www-data's directory.
    sqlite3.connect(database_dir / "tracker.sqlite").close()
    done = run("check-config", "--config", config)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"tracker-wsgi: {config}: database = '{site.url}': {database_dir}/tracker.sqlite is not writable by "
        f"www-data (root:root -rw-r--r--): chown www-data: {database_dir}/tracker.sqlite\n")
    give_to_www_data(database_dir)
    done = run("check-config", "--config", config)
    assert (done.returncode, done.stdout) == (0, (
        f"{config}: ok: database reachable, tables not created yet (the tracker creates them on its first "
        "request); torrent_dir readable and output_dir writable by www-data\n"))


def test_check_config_finds_a_directory_www_data_cannot_enter_and_one_missing(shared_dir):
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    site = make_site(f"sqlite:///{shared_dir}/tracker.sqlite", shared_dir)
    missing = shared_dir / "nowhere" / "output"
    site.config.write_text(site.config.read_text().replace(str(site.output), str(missing))
                           .replace(f'torrent_dir = "{site.torrents}"', f'torrent_dir = "{private}/torrents"'))
    (private / "torrents").mkdir(mode=0o755)
    done = run("check-config", "--config", str(site.config), "--apache-user", WWW, user=None)
    assert done.returncode == 1
    assert lines(done.stderr)[1:] == [
        f"tracker-wsgi: {site.config}: torrent_dir = '{private}/torrents': www-data cannot enter {private} "
        f"(root:root drwx------): chmod o+x {private}, or give it to www-data's group",
        f"tracker-wsgi: {site.config}: output_dir = '{missing}': {missing} does not exist: "
        f"install -d -o www-data -g {grp.getgrgid(pwd.getpwnam(WWW).pw_gid).gr_name} {missing}",
    ]


# tracker-wsgi with its /etc/tracker-wsgi/tracker.toml at argv[1], a test's own file.
WITH_SYSTEM_CONFIG = ("import sys\nfrom tracker_wsgi import cli, config\n"
                      "config.SYSTEM_CONFIG = sys.argv[1]\nsys.exit(cli.main(sys.argv[2:]))")


def run_finding(system_config: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """tracker-wsgi ARGS as www-data, its /etc/tracker-wsgi/tracker.toml at system_config."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CRON", "TRACKER_WSGI_CONFIG")}
    environ.update(env)
    command = ["runuser", "-u", WWW, "--", sys.executable, "-c", WITH_SYSTEM_CONFIG, str(system_config), *args]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60)


def test_a_command_finds_the_installs_config_file_after_the_option_and_the_environment(sqlite_site, shared_dir):
    """--config, else $TRACKER_WSGI_CONFIG, else /etc/tracker-wsgi/tracker.toml (README's install)."""
    give_to_www_data(shared_dir)
    others = []
    for name in ("named", "given"):
        root = shared_dir / name
        root.mkdir()
        give_to_www_data(root)
        others.append(make_site(f"sqlite:///{root}/tracker.sqlite", root))
    named, given = others
    done = run_finding(sqlite_site.config, "init-db")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{sqlite_site.url}: schema created at version 5\n", "")
    done = run_finding(sqlite_site.config, "init-db", TRACKER_WSGI_CONFIG=str(named.config))
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{named.url}: schema created at version 5\n", "")
    done = run_finding(sqlite_site.config, "init-db", "--config", str(given.config),
                       TRACKER_WSGI_CONFIG=str(named.config))
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{given.url}: schema created at version 5\n", "")


def test_without_a_config_file_a_command_says_so_and_makes_nothing(shared_dir):
    """The built-in defaults would name a SQLite database of their own beside the admin's."""
    system = shared_dir / "etc" / "tracker.toml"
    refusal = ("tracker-wsgi: no config file: --config FILE and $TRACKER_WSGI_CONFIG name none, and "
               f"{system} is not there; write it (README: Production install) or name one with --config FILE\n")
    for command in (["check-config"], ["init-db"], ["migrate"], ["list"], ["stats"], ["show", "0" * 40],
                    ["remove", "0" * 40], ["add", "x.torrent"], ["refresh"], ["force-refresh"]):
        done = run_finding(system, *command)
        assert (done.returncode, done.stdout, done.stderr) == (1, "", refusal), command
    assert list(shared_dir.iterdir()) == []


def test_a_wrong_database_password_is_one_line_naming_the_file_and_the_key(mysql_url, shared_dir):
    wrong = mysql_url.replace(f":{TEST_PASSWORD}@", ":not-the-password@")
    site = make_site(wrong, shared_dir)
    site.output.mkdir()
    os.chown(site.output, pwd.getpwnam(WWW).pw_uid, -1)
    shown = re.escape(f"database = '{wrong.replace(':not-the-password@', ':***@')}'")
    line = (rf"tracker-wsgi: {re.escape(str(site.config))}: {shown}: cannot connect to the database: 1045 \(28000\): Access denied for user "
            r"'tracker_test'@'[^']+' \(using password: YES\)\n")
    for args in (["check-config", str(site.config)], ["list", "--config", str(site.config)],
                 ["force-refresh", "--config", str(site.config)]):
        done = run(*args)
        assert (done.returncode, done.stdout) == (1, ""), args
        assert re.fullmatch(line, done.stderr), done.stderr
        assert "not-the-password" not in done.stderr
    site.config.write_text(site.config.read_text().replace(wrong, mysql_url))
    done = run("check-config", str(site.config))
    assert (done.returncode, done.stderr) == (0, "")
    assert "ok: database reachable, tables not created yet" in done.stdout


def test_refresh_into_an_output_dir_www_data_cannot_write_is_one_line(sqlite_site):
    sqlite_site.output.mkdir(mode=0o755)  # root's
    done = run("force-refresh", "--config", str(sqlite_site.config))
    assert (done.returncode, done.stdout) == (1, "")
    output = sqlite_site.output
    assert re.fullmatch(
        rf"tracker-wsgi: {re.escape(str(sqlite_site.config))}: output_dir = '{output}': Permission denied: "
        rf"{output}/\.\S+\.tmp; make it a directory www-data can write: install -d -o www-data -g www-data "
        rf"{output}\n", done.stderr), done.stderr
