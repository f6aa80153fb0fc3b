"""`tracker-wsgi`: the admin's command line.

  tracker-wsgi check-config [FILE]    check the config, the database and the directories
  tracker-wsgi migrate                create the tables, or migrate them to this release's
                                      schema (init-db: the same; the tracker does it at start)
  tracker-wsgi add FILE.torrent...    register .torrent files by hand
  tracker-wsgi list                   every registered torrent, one a line
  tracker-wsgi show HASH|PATH         one torrent: its hashes, file and swarm
  tracker-wsgi remove HASH|PATH...    unregister torrents, with their peers
  tracker-wsgi stats [--json]         totals: torrents, peers, completions, last refresh
  tracker-wsgi refresh                if due: expire peers, recount, rescan, write include files
  tracker-wsgi force-refresh          the same, now
  tracker-wsgi serve                  run the tracker in a real Apache, for development
  tracker-wsgi paths [NAME]           where the installed Apache files and files for /etc are
  tracker-wsgi apache-conf [--processes N] [--site NAME] | --embedded | --embedded-server
                                      print an Apache snippet for /tracker (apache/*.conf)

Options go before or after the command. The config file is --config FILE, else
$TRACKER_WSGI_CONFIG, else the built-in defaults. Every command ends with a one-line
summary on stdout; --quiet (or CRON set in the environment) leaves it out. Warnings and
errors are one line each on stderr naming what to fix; an error exits non-zero.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from . import apache_conf
from . import config as config_module
from . import logs
from .config import Config, ConfigError
from .metainfo import MAX_TORRENT_BYTES, MetainfoError, parse_torrent
from .model import Torrent, TorrentReport
from .refresh import STATS_FILE, RefreshBusy, refresh, terminal_progress
from .render import human_bytes
from .store import Catalog, masked, migrate, open_configured, open_store
from .store.schema import describe

EXIT_BUSY = 75  # EX_TEMPFAIL: another refresh holds the lock; cron will try again
# The user Apache runs the tracker's daemon processes as (Debian's; the snippet sets none).
APACHE_USER = "www-data"
# An info hash on the command line: a v1 SHA-1 or a v2 SHA-256 in hex; a v2 hash is
# announced truncated to 20 bytes (BEP 52), and that is how the store keys it.
HEX_INFO_HASH = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
NO_CONFIG = "no config file (built-in defaults)"


class Options:
    """The parsed command line, with the options every command shares resolved once."""

    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args = args
        self.argv = argv
        self.config_path: str | None = getattr(args, "config", None) or config_module.config_path()
        # Quiet under cron: the README's crontab line sets CRON=1.
        self.quiet = getattr(args, "quiet", False) or bool(os.environ.get("CRON"))

    @property
    def source(self) -> str:
        return self.config_path or NO_CONFIG

    def load(self) -> Config:
        return config_module.load(self.config_path)

    def summary(self, line: str) -> None:
        if not self.quiet:
            print(line)


def warn(message: str) -> None:
    print(f"tracker-wsgi: {message}", file=sys.stderr)


def sqlite_path(config: Config) -> str | None:
    """The SQLite database file, written as messages should show it (one leading slash)."""
    if not config.database.startswith("sqlite:"):
        return None
    return "/" + config.database.removeprefix("sqlite:").lstrip("/")


# -- opening the store ---------------------------------------------------------------------

def open_checked(options: Options, config: Config, creates: bool, writes_output: bool = False) -> Catalog:
    """The configured store, its tables created. Refuses as root what would leave files
    the tracker's user cannot write; `creates` False: never creates a missing SQLite file.
    Any failure to reach the database is one line naming the config file and the key."""
    database = sqlite_path(config)
    if database and not creates and not os.path.exists(database):
        raise ConfigError(
            f"{options.source}: database = {config.database!r}: {database} does not exist yet; the tracker "
            f"creates it on its first request, or run: runuser -u {APACHE_USER} -- tracker-wsgi init-db"
        )
    refuse_root(options, config, writes_output)
    try:
        return open_configured(config)
    except Exception as exc:  # bad URL, password, server down, unwritable file: all the same key's
        raise database_error(options.source, config, exc) from None


def database_error(source: str, config: Config, exc: Exception) -> ConfigError:
    """Failing to reach the database, in one line naming the config file and the key."""
    reason = " ".join(str(exc).removeprefix(f"database = {masked(config.database)!r}: ").split())
    return ConfigError(f"{source}: database = {masked(config.database)!r}: {reason}")


def refuse_root(options: Options, config: Config, writes_output: bool) -> None:
    """A file root makes in the tracker's directories belongs to root, and the daemons
    (www-data) then fail to write it: an include file, a fresh SQLite database, or the
    SQLite store's lock file (store/sqlite.py, made by the first write). SQLite itself gives
    the -wal and -shm files it makes as root the database file's owner."""
    if os.geteuid() != 0 or getattr(options.args, "allow_root", False):
        return
    made = [os.path.join(config.output_dir, STATS_FILE)] if writes_output else []
    database = sqlite_path(config)
    if database:
        made += [p for p in (database, database + "-writer") if not os.path.exists(p)]
    if made:
        program = sys.argv[0] if os.path.basename(sys.argv[0]) == "tracker-wsgi" else "tracker-wsgi"
        command = shlex.join([program, *options.argv])
        raise ConfigError(
            f"refusing to run as root: {made[0]} would belong to root, and the tracker ({APACHE_USER}) "
            f"could not write it; run: runuser -u {APACHE_USER} -- {command} (or add --allow-root)"
        )


# -- check-config ----------------------------------------------------------------------------

def cmd_check_config(options: Options) -> int:
    """Exit 0 with a summary, or 1 with one line per problem: the config file, the
    database (connected to, never created) and every directory the tracker uses, checked
    for the Apache user by ownership and mode bits (os.access answers for whoever runs
    this, which as root is always yes)."""
    path = options.args.file or options.config_path
    options.config_path = path
    config = options.load()
    if path is None:
        warn(
            f"no config file (--config FILE or ${config_module.ENV_VAR}): checking the built-in defaults "
            f"(database {config.database}, torrent_dir {config.torrent_dir}, output_dir {config.output_dir}, "
            f"base_url {config.base_url}, a placeholder the feed would link to); Apache's tracker reads "
            "the file its SetEnv tracker_wsgi.config names: check that one"
        )
    if os.geteuid() == 0:
        warn(
            f"running as root: the checks below are made for {options.args.apache_user}, but run the "
            f"tracker's other commands as that user (runuser -u {options.args.apache_user} -- tracker-wsgi ...)"
        )
    try:
        user = pwd.getpwnam(options.args.apache_user)
    except KeyError:
        raise ConfigError(f"no user {options.args.apache_user!r} here: name Apache's user with --apache-user") from None
    found = check_directories(options.source, config, user)
    problems = [line for _, line in found]
    database_note = ""
    if "database" not in dict(found):  # a file it cannot write would fail the same way again
        database_problems, database_note = check_database(options.source, config)
        problems += database_problems
    for problem in problems:
        warn(problem)
    if problems:
        return 1
    options.summary(
        f"{options.source}: ok: {database_note}; torrent_dir readable and output_dir writable by {user.pw_name}"
    )
    return 0


def check_database(source: str, config: Config) -> tuple[list[str], str]:
    """([problem], what was found): connect and read, creating nothing."""
    database = sqlite_path(config)
    if database and not os.path.exists(database):
        return [], f"no database file yet at {database} (the tracker creates it on its first request)"
    try:
        store = open_store(config.database, config.peer_timeout)
    except ValueError as exc:
        return [str(database_error(source, config, exc))], ""
    try:
        store.last_refresh()
    except Exception as exc:
        if _no_such_table(exc):
            return [], "database reachable, tables not created yet (the tracker creates them on its first request)"
        return [str(database_error(source, config, exc))], ""
    finally:
        store.close()
    return [], "database reachable"


def _no_such_table(exc: Exception) -> bool:
    from mysql.connector import errorcode

    return getattr(exc, "errno", None) == errorcode.ER_NO_SUCH_TABLE or "no such table" in str(exc)


def check_directories(source: str, config: Config, user: pwd.struct_passwd) -> list[tuple[str, str]]:
    """What keeps `user` (the Apache daemons) from reading torrent_dir or writing output_dir
    and the SQLite database's directory and files: [(key, problem)]."""
    needs = [("torrent_dir", config.torrent_dir, config.torrent_dir, "read"),
             ("output_dir", config.output_dir, config.output_dir, "write")]
    database = sqlite_path(config)
    if database:
        needs.append(("database", config.database, os.path.dirname(database), "write"))
        for suffix in ("", "-wal", "-shm", "-writer"):
            if os.path.exists(database + suffix):
                needs.append(("database", config.database, database + suffix, "write"))
    problems = []
    for key, value, path, need in needs:
        reason = access_problem(path, need, user)
        if reason:
            problems.append((key, f"{source}: {key} = {value!r}: {reason}"))
    return problems


def access_problem(path: str, need: str, user: pwd.struct_passwd) -> str | None:
    """Why `user` cannot `need` ("read" a directory, "write" a directory or file) at
    path, from ownership and mode bits (ACLs are not read), or None if it can."""
    name = user.pw_name
    groups = set(os.getgrouplist(name, user.pw_gid))

    def allows(st: os.stat_result, bits: int) -> bool:  # bits: 4 read, 2 write, 1 search
        if user.pw_uid == 0:
            return True
        shift = 6 if st.st_uid == user.pw_uid else 3 if st.st_gid in groups else 0
        return (st.st_mode >> shift) & bits == bits

    def owner(st: os.stat_result) -> str:
        return f"{_user_name(st.st_uid)}:{_group_name(st.st_gid)} {stat.filemode(st.st_mode)}"

    for above in reversed(Path(path).parents):
        try:
            st = os.stat(above)
        except OSError:
            break
        if not allows(st, 1):
            return f"{name} cannot enter {above} ({owner(st)}): chmod o+x {above}, or give it to {name}'s group"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if need == "read":
            return f"{path} does not exist"
        return f"{path} does not exist: install -d -o {name} -g {_group_name(user.pw_gid)} {path}"
    is_dir = stat.S_ISDIR(st.st_mode)
    if need == "read":
        if not is_dir:
            return f"{path} is not a directory"
        if not allows(st, 4 | 1):
            return f"{path} is not readable by {name} ({owner(st)}): chmod o+rx {path}"
        return None
    if not allows(st, 2 | (1 if is_dir else 0)):
        return f"{path} is not writable by {name} ({owner(st)}): chown {name}: {path}"
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"{path} is on a read-only filesystem"
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# -- torrents: add, list, show, remove, stats -------------------------------------------------

def cmd_migrate(options: Options) -> int:
    """init-db and migrate: create the tables, or bring them to this release's schema."""
    config = options.load()
    refuse_root(options, config, writes_output=False)
    try:
        change = migrate(config)
    except Exception as exc:  # bad URL, password, server down, unwritable file: all the same key's
        raise database_error(options.source, config, exc) from None
    options.summary(f"{masked(config.database)}: schema {describe(change)}")
    return 0


def scanned_path(config: Config, name: str) -> str | None:
    """`name` relative to torrent_dir, as the directory scan would record it, or None if
    the scan would not find it there (outside the directory, behind a symlink, no .torrent)."""
    root = os.path.abspath(config.torrent_dir)
    relative = os.path.relpath(os.path.abspath(name), root)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep) or not relative.endswith(".torrent"):
        return None
    walked = root
    for part in relative.split(os.sep):
        walked = os.path.join(walked, part)
        if os.path.islink(walked):
            return None
    return relative.replace(os.sep, "/")


def read_torrent(config: Config, name: str) -> Torrent:
    """The torrent a file holds, recorded as the directory scan records it when the file
    is in torrent_dir (so the scan manages it like any other), else by its absolute path.
    Raises OSError or MetainfoError."""
    with open(name, "rb") as f:
        data = f.read(MAX_TORRENT_BYTES + 1)
        st = os.fstat(f.fileno())
    if len(data) > MAX_TORRENT_BYTES:
        raise MetainfoError(f"larger than {MAX_TORRENT_BYTES} bytes")
    relative = scanned_path(config, name)
    meta = parse_torrent(data, relative or os.path.abspath(name))
    if config.announce_url and config.announce_url not in meta.announce_urls:
        raise MetainfoError(f"does not announce this tracker (announce_url = {config.announce_url!r})")
    if relative is None:
        return meta.torrent
    return replace(meta.torrent, file_size=st.st_size, file_mtime=st.st_mtime_ns)


def cmd_add(options: Options) -> int:
    config = options.load()
    store = open_checked(options, config, creates=True)
    added = known = failed = 0
    for name in options.args.files:
        try:
            torrent = read_torrent(config, name)
        except (OSError, MetainfoError) as exc:
            warn(f"{name}: skipped: {getattr(exc, 'strerror', None) or exc}")
            failed += 1
            continue
        if not store.register(torrent, int(time.time())):
            known += 1
            options.summary(f"{name}: already registered: {torrent.info_hash.hex()} {torrent.name}")
            continue
        added += 1
        options.summary(f"{name}: added {torrent.info_hash.hex()} {torrent.name}")
        if torrent.path.startswith("/"):
            # The stats page links, and the feed lists, only files served under base_url,
            # which serves torrent_dir (render.py).
            warn(
                f"{name} is outside torrent_dir ({config.torrent_dir}): its swarm is tracked, but the "
                "stats page lists it without a link and the feed leaves it out; to publish it, "
                f"`tracker-wsgi remove {torrent.info_hash.hex()}` and put the file in torrent_dir instead"
            )
    after = "; the stats page and the feed show them after the next refresh" if added else ""
    options.summary(f"{added} added, {known} already registered, {failed} failed{after}")
    return 1 if failed else 0


def where(r: TorrentReport) -> str:
    """Where a torrent came from, as list and show say it."""
    if not r.path:
        return "(no file: registered by an announce, whitelist open)"
    if r.path.startswith("/"):
        return f"{r.path} (added by hand)"
    return r.path


def cmd_list(options: Options) -> int:
    config = options.load()
    store = open_checked(options, config, creates=False)
    rows = sorted(store.report(int(time.time())), key=lambda r: (r.path, r.name))
    if not options.quiet:
        print(f"{'info hash':40}  {'seeds':>5} {'leechers':>8} {'completed':>9} {'size':>12}  torrent file  name")
    for r in rows:
        print(f"{r.info_hash.hex():40}  {r.seeds:>5} {r.leechers + r.partial_seeds:>8} {r.downloaded:>9} "
              f"{human_bytes(r.size):>12}  {where(r)}  {r.name}")
    by_hand = sum(r.path.startswith("/") for r in rows)
    announced = sum(not r.path for r in rows)
    options.summary(f"{len(rows)} torrents: {len(rows) - by_hand - announced} from torrent_dir, "
                    f"{by_hand} added by hand, {announced} registered by announces")
    return 0


def torrent_file_of(config: Config, r: TorrentReport) -> str | None:
    if not r.path:
        return None
    return r.path if r.path.startswith("/") else os.path.join(config.torrent_dir, r.path)


def hashes_of_file(path: str | None) -> tuple[bytes, ...]:
    """The info hashes a .torrent file holds; () if it is gone or unreadable."""
    if not path:
        return ()
    try:
        with open(path, "rb") as f:
            return parse_torrent(f.read(MAX_TORRENT_BYTES + 1)).torrent.info_hashes
    except (OSError, MetainfoError):
        return ()


def find_torrent(store: Catalog, config: Config, target: str, now: int) -> tuple[TorrentReport, tuple[bytes, ...]]:
    """The registered torrent an info hash (hex) or a .torrent file names, and every info
    hash known to name it. Raises LookupError."""
    rows = store.report(now)
    if HEX_INFO_HASH.fullmatch(target) and not os.path.exists(target):
        wanted = (bytes.fromhex(target)[:20],)
    elif os.path.isfile(target):
        wanted = hashes_of_file(target)
        if not wanted:
            raise LookupError(f"{target}: not a readable .torrent file")
    else:  # a file gone from the disk: its path as the store records it
        recorded = {target, os.path.abspath(target), scanned_path(config, target)}
        wanted = tuple(r.info_hash for r in rows if r.path in recorded)
    # The report names each torrent by its lowest info hash; a hybrid's other one is
    # known to the store (scrape) and, while the file is there, to its file.
    for r in rows:
        if r.info_hash in wanted:
            return r, tuple(dict.fromkeys((r.info_hash, *wanted, *hashes_of_file(torrent_file_of(config, r)))))
    known = store.scrape(list(wanted), now)
    if known:
        names = {stats.name for stats in known.values()}
        candidates = [r for r in rows if r.name in names]
        for r in candidates:
            hashes = hashes_of_file(torrent_file_of(config, r))
            if set(hashes) & set(wanted):
                return r, tuple(dict.fromkeys((r.info_hash, *hashes)))
        if len(candidates) == 1:
            return candidates[0], tuple(dict.fromkeys((candidates[0].info_hash, *wanted)))
    raise LookupError(f"{target}: not registered")


def utc(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cmd_show(options: Options) -> int:
    config = options.load()
    store = open_checked(options, config, creates=False)
    now = int(time.time())
    r, hashes = find_torrent(store, config, options.args.target, now)
    print(f"name          {r.name}")
    for h in hashes:
        print(f"info hash     {h.hex()}")
    print(f"torrent file  {where(r)}")
    print(f"size          {r.size} bytes ({human_bytes(r.size)})")
    print(f"added         {utc(r.added)}")
    print(f"peers         {r.seeds} seeds, {r.leechers} leechers, {r.partial_seeds} partial seeds "
          f"(announced in the last {config.peer_timeout} s)")
    print(f"completed     {r.downloaded} times")
    print(f"transferred   {human_bytes(r.transferred)} uploaded")
    if r.path.startswith("/"):
        print("published     no: the stats page lists it without a link and the feed leaves it out "
              "(it is outside torrent_dir)")
    return 0


def cmd_remove(options: Options) -> int:
    config = options.load()
    store = open_checked(options, config, creates=False)
    now = int(time.time())
    removed = missing = 0
    for target in options.args.targets:
        try:
            r, hashes = find_torrent(store, config, target, now)
        except LookupError as exc:
            warn(str(exc))
            missing += 1
            continue
        removed += store.unregister(hashes)
        peers = r.seeds + r.leechers + r.partial_seeds
        options.summary(f"{target}: removed {r.info_hash.hex()} {r.name} and its {peers} peers")
        file = torrent_file_of(config, r)
        if r.path and not r.path.startswith("/") and file and os.path.exists(file):
            warn(f"{file} is still in torrent_dir: the next refresh registers it again unless the file is removed")
    options.summary(f"{removed} removed, {missing} not found")
    return 1 if missing else 0


def cmd_stats(options: Options) -> int:
    config = options.load()
    store = open_checked(options, config, creates=False)
    rows = store.report(int(time.time()))
    last_refresh = store.last_refresh()
    totals = {
        "torrents": len(rows),
        "seeds": sum(r.seeds for r in rows),
        "leechers": sum(r.leechers for r in rows),  # still downloading
        "partial_seeds": sum(r.partial_seeds for r in rows),
        "completed": sum(r.downloaded for r in rows),
        "transferred_bytes": sum(r.transferred for r in rows),
        "content_bytes": sum(r.size for r in rows),
        "last_refresh": last_refresh or None,
    }
    if options.args.json:
        print(json.dumps(totals))
        return 0
    refreshed = f"last refresh {utc(last_refresh)}" if last_refresh else "never refreshed"
    print(
        f"{totals['torrents']} torrents ({human_bytes(totals['content_bytes'])}), {totals['seeds']} seeds, "
        f"{totals['leechers']} leechers, {totals['partial_seeds']} partial seeds, "
        f"{totals['completed']} completed, {human_bytes(totals['transferred_bytes'])} uploaded; {refreshed}"
    )
    return 0


# -- refresh -----------------------------------------------------------------------------------

def cmd_refresh(options: Options) -> int:
    """Skipped files and errors always print; the summary unless quiet."""
    config = options.load()
    store = open_checked(options, config, creates=True, writes_output=True)
    progress = terminal_progress if sys.stderr.isatty() and not options.quiet else None
    try:
        report = refresh(config, store, force=options.args.force, progress=progress)
    except RefreshBusy as exc:
        warn(str(exc))
        return EXIT_BUSY
    except OSError as exc:
        if not f"{exc.filename}/".startswith(config.output_dir.rstrip("/") + "/"):
            raise
        raise ConfigError(
            f"{options.source}: output_dir = {config.output_dir!r}: {exc.strerror}: {exc.filename}; make it a "
            f"directory {APACHE_USER} can write: install -d -o {APACHE_USER} -g {APACHE_USER} {config.output_dir}"
        ) from None
    for warning in report.warnings:
        warn(warning)
    options.summary(report.summary())
    return 0


def cmd_serve(options: Options) -> int:
    """Development server: the whole product on one port, as production sets it up -- the
    tracker (apache/tracker.conf) and the public site at / (apache/site.conf: the stats
    page and the feed of torrent_dir), in a real Apache. A fresh state directory gets a
    config, the sample site's pages and a sample torrent; every start refreshes first, as
    www-data, so the page shows what torrent_dir holds."""
    import subprocess

    from . import devserver

    args = options.args
    if shutil.which(devserver.APACHE_BIN) is None:
        raise ConfigError(f"{devserver.APACHE_BIN} not found: install apache2 (scripts/bootstrap does)")
    if os.geteuid() != 0:
        raise ConfigError(f"serve must run as root: Apache starts as root and drops to {APACHE_USER}; "
                          "run: sudo scripts/serve")
    state, apache_dir = Path(args.state_dir).resolve(), Path(args.apache_dir).resolve()
    www = pwd.getpwnam(APACHE_USER)
    devserver.prepare_run_dir(state)
    unreachable = access_problem(str(state), "read", www)  # Apache's daemons and the refresh
    if unreachable:
        raise ConfigError(f"--state-dir {state}: {unreachable}")
    config_path = Path(options.config_path or state / "tracker.toml").resolve()
    server_url = f"http://127.0.0.1:{args.port}/"
    fresh = not config_path.exists()
    if fresh:
        config_path.write_text(devserver.dev_config(state, args.port))
    config = config_module.load(str(config_path))
    site, output = Path(config.torrent_dir).resolve(), Path(config.output_dir).resolve()
    database = sqlite_path(config)
    refuse_serving_state(config_path, state, site, output, database)
    base = urlsplit(config.base_url)
    if base.hostname not in ("127.0.0.1", "localhost") or base.port != args.port:
        warn(f"{config_path}: base_url = {config.base_url!r} is not this server ({server_url}): the page's "
             "links and the /tracker redirect go there")

    for directory in (site, output, Path(database).parent if database else None):
        if directory and not directory.exists():
            directory.mkdir(parents=True)
            directory.chmod(0o755)
    copied = devserver.add_site_pages(site, apache_dir / "sample-site", config.base_url)
    if fresh:
        devserver.add_sample_torrent(site, f"{server_url}tracker/announce")
    give_tracker_its_files(state, output, database, www)
    # The first refresh, as www-data (files it makes stay the tracker's): registers what
    # torrent_dir holds and writes the page's include files.
    first_refresh = [sys.executable, "-m", "tracker_wsgi.cli", "--config", str(config_path), "force-refresh"]
    if subprocess.run(first_refresh, user=www.pw_uid, group=www.pw_gid, extra_groups=[], cwd=state).returncode:
        raise ConfigError(f"the first refresh (run as {APACHE_USER}) failed: see its error above")

    conf = devserver.httpd_conf(
        state, args.port, config_path, apache_dir,
        site_conf=devserver.public_site_conf(apache_dir, str(site), str(output)), document_root=site,
        topology=args.topology,
    )
    added = f" (added {', '.join(copied)})" if copied else ""
    options.summary(
        f"serving {server_url}: the stats page, the feed {server_url}rss.xml and the .torrent files of {site}"
        f"{added}\n  tracker at {server_url}tracker/announce; log {state}/error.log; config {config_path}\n"
        f"  drop .torrent files into {site}: each start registers them (or run, as root: runuser -u "
        f"{APACHE_USER} -- {Path(sys.executable).parent / 'tracker-wsgi'} --config {config_path} force-refresh)\nCtrl-C stops it."
    )
    # A service manager stops us with SIGTERM: stop Apache with us, as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = devserver.start(state, conf)
    try:
        return server.wait()
    except KeyboardInterrupt:
        devserver.stop(server)
        return 0


def give_tracker_its_files(state: Path, output: Path, database: str | None, www: pwd.struct_passwd) -> None:
    """What the tracker writes in the state directory (output_dir, the SQLite database's
    directory and files) belongs to its user; the rest (the config, Apache's config and
    logs, the torrents) stays root's, as in production."""
    writable = [output, *output.iterdir()]
    if database:
        writable += [Path(database).parent, *Path(database).parent.glob(Path(database).name + "*")]
    for path in writable:
        if path == state or state in path.parents:
            os.chown(path, www.pw_uid, www.pw_gid)


def refuse_serving_state(config_path: Path, state: Path, site: Path, output: Path, database: str | None) -> None:
    """serve publishes torrent_dir at / and output_dir at /tracker-output: neither may hold
    the state directory (Apache's config and logs), the config file or the database."""
    for served, key in ((site, "torrent_dir"), (output, "output_dir")):
        for private in (state, config_path, Path(database) if database else None):
            if private and (private == served or served in private.parents):
                raise ConfigError(f"{config_path}: {key} = {str(served)!r} would publish {private}: "
                                  "keep the state directory, the config and the database outside it")


def installed_paths() -> dict[str, tuple[Path, str]]:
    """What `paths` prints: name -> (path, what is there)."""
    from . import installed

    return {
        "apache": (installed.APACHE_DIR, f"{', '.join(installed.APACHE_FILES)}: TRACKER_WSGI_APACHE"),
        "system": (installed.SYSTEM_DIR, "files for /etc, each at its path below /etc: Apache site, cron.d, systemd, tmpfiles.d"),
        "venv": (Path(sys.prefix), "the virtualenv tracker-wsgi runs in: TRACKER_WSGI_VENV"),
    }


def cmd_paths(options: Options) -> int:
    """One path for `paths NAME` (for scripts), else every one with what it holds."""
    paths = installed_paths()
    if options.args.name:
        print(paths[options.args.name][0])
        return 0
    width = max(map(len, paths))
    for name, (path, holds) in paths.items():
        print(f"{name:<{width}}  {path}  ({holds})")
    return 0


def cmd_apache_conf(options: Options) -> int:
    """The snippet on stdout, and nothing else there (no summary line): it is meant to be
    redirected into a file Apache includes."""
    args = options.args
    if args.embedded and (args.processes, args.threads) != (None, None):
        raise ConfigError("apache-conf --embedded: the pool's numbers belong to --embedded-server")
    if args.threads is not None and not args.embedded_server:
        raise ConfigError("apache-conf --threads: only with --embedded-server (daemon threads are fixed)")
    if args.site and (args.embedded or args.embedded_server):
        raise ConfigError("apache-conf --site: daemon mode only (embedded mode runs one tracker per server)")
    try:
        if args.embedded:
            text = apache_conf.embedded_conf()
        elif args.embedded_server:
            text = apache_conf.embedded_server_conf(
                apache_conf.EMBEDDED_PROCESSES if args.processes is None else args.processes,
                apache_conf.EMBEDDED_THREADS if args.threads is None else args.threads)
        else:
            text = apache_conf.daemon_conf(apache_conf.DEFAULT_PROCESSES if args.processes is None else args.processes,
                                           args.site)
    except ValueError as exc:
        raise ConfigError(f"apache-conf {exc}") from None
    sys.stdout.write(text)
    return 0


# -- the parser ------------------------------------------------------------------------------

def package_version() -> str:
    try:
        return metadata.version("tracker_wsgi")
    except metadata.PackageNotFoundError:
        return "(not installed: no package metadata)"


def build_parser() -> argparse.ArgumentParser:
    from .devserver import TOPOLOGIES

    # Shared options, accepted before and after the command. SUPPRESS: a command's parser
    # must not overwrite with its default what was given before the command.
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"the config file (default: ${config_module.ENV_VAR}, else the built-in defaults)")
    shared.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no summary line, for cron (also when CRON is set); warnings and errors still print")
    as_root = argparse.ArgumentParser(add_help=False)
    as_root.add_argument(
        "--allow-root", action="store_true",
        help=f"run as root even where that makes files the tracker's user ({APACHE_USER}) cannot write",
    )

    formatter = argparse.RawDescriptionHelpFormatter  # keep the descriptions' line breaks
    parser = argparse.ArgumentParser(
        prog="tracker-wsgi", parents=[shared], formatter_class=formatter,
        description="The admin's commands for tracker_wsgi, a BitTorrent tracker in Apache.",
        epilog=__doc__.split("\n\n")[2],  # the options paragraph
    )
    parser.add_argument("--version", action="version", version=f"tracker-wsgi {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run, summary: str, description: str, store: bool = True, **defaults):
        sub = commands.add_parser(name, help=summary,
                                  description=f"{summary[0].upper()}{summary[1:]}.\n\n{description}",
                                  parents=[shared, as_root] if store else [shared],
                                  formatter_class=formatter)
        sub.set_defaults(run=run, **defaults)
        return sub

    check = command(
        "check-config", cmd_check_config, "check the config file, the database and the directories",
        "Reads the config file, connects to the database (creating nothing), and checks that\n"
        f"Apache's user ({APACHE_USER} unless --apache-user) can read torrent_dir and write output_dir\n"
        "and the SQLite database's directory, by ownership and mode bits. Exit 1 with one line\n"
        "per problem, naming the file, the key and the fix.", store=False,
    )
    check.add_argument("file", nargs="?", help="the config file (the same as --config)")
    check.add_argument("--apache-user", default=APACHE_USER, metavar="USER",
                       help=f"the user the tracker's daemons run as (default: {APACHE_USER})")
    migrate_text = (
        "Creates the tables in an empty database, or migrates those an earlier release made to\n"
        "this release's schema, and prints what it did. Safe to repeat, and while the tracker\n"
        "runs. The tracker's daemons do the same when they start; run it yourself after an\n"
        "upgrade to see it done, before restarting them."
    )
    command("init-db", cmd_migrate, "create the tables, or migrate them (as migrate)", migrate_text)
    command("migrate", cmd_migrate, "bring the tables to this release's schema", migrate_text)
    add = command(
        "add", cmd_add, "register .torrent files by hand",
        "A file inside torrent_dir is registered as the directory scan would register it (the\n"
        "scan then manages it: it leaves with its file). A file elsewhere is tracked, but not\n"
        "published: the stats page lists it without a link and the feed leaves it out.",
    )
    add.add_argument("files", nargs="+", metavar="FILE.torrent")
    command("list", cmd_list, "list every registered torrent",
            "One line per torrent: its info hash, live seeds and leechers, completions, size, and\n"
            "its .torrent file (relative to torrent_dir, or added by hand) and name.")
    show = command("show", cmd_show, "show one torrent",
                   "Its info hashes, file, size, when it was added, its live peers and completions.")
    show.add_argument("target", metavar="HASH|PATH", help="an info hash in hex (v1 or v2), or its .torrent file")
    remove = command(
        "remove", cmd_remove, "unregister torrents, with all their peers",
        "Clients announcing them are refused from then on. A file still in torrent_dir is\n"
        "registered again by the next refresh: remove the file too.",
    )
    remove.add_argument("targets", nargs="+", metavar="HASH|PATH",
                        help="an info hash in hex (v1 or v2), or its .torrent file")
    stats = command("stats", cmd_stats, "print the totals",
                    "Torrents, live seeds, leechers and partial seeds, completions, bytes uploaded,\n"
                    "and when the last refresh ran.")
    stats.add_argument("--json", action="store_true", help="one JSON object, for scripts and monitoring")
    refresh_text = (
        "Expires silent peers, recounts, rescans torrent_dir (registering new files, removing\n"
        "torrents whose file is gone), and rewrites bt_stats.inc and bt_rss.inc in output_dir.\n"
        f"Run it as {APACHE_USER}; exit {EXIT_BUSY} if another refresh is running."
    )
    command("refresh", cmd_refresh, "refresh if refresh_interval has passed", refresh_text, force=False)
    command("force-refresh", cmd_refresh, "refresh now", refresh_text, force=True)
    serve = command(
        "serve", cmd_serve, "run the tracker, stats page and feed in Apache (development)",
        "Apache with the shipped snippets, as production: the tracker at /tracker, the stats page\n"
        "and the RSS feed of torrent_dir at /. A fresh --state-dir gets a config (SQLite), the\n"
        "sample site and a sample torrent; each start refreshes first, as "
        f"{APACHE_USER}.\nRun as root (Apache drops to {APACHE_USER}). Ctrl-C or SIGTERM stops it.", store=False,
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--state-dir", default="var",
                       help="config, Apache's config and log, SQLite database, torrents (default: var)")
    serve.add_argument("--apache-dir", default=str(installed_paths()["apache"][0]))
    serve.add_argument("--topology", choices=TOPOLOGIES, default="daemon",
                       help="daemon: mod_wsgi daemon processes (apache/tracker.conf); embedded: Apache's own "
                       "children (apache/tracker-embedded.conf, embedded-server.conf). Default: daemon")
    paths = command(
        "paths", cmd_paths, "print where the installed Apache files and the files for /etc are",
        "apache: the snippets Apache includes (link it to a stable place once:\n"
        "  ln -sfn \"$(tracker-wsgi paths apache)\" /opt/tracker-wsgi/apache);\n"
        "system: the Apache site, cron.d file, systemd service and timer and tmpfiles.d file,\n"
        "each at its path below /etc; venv: this installation's virtualenv.", store=False,
    )
    paths.add_argument("name", nargs="?", choices=installed_paths(), help="print only this path")
    conf = command(
        "apache-conf", cmd_apache_conf, "print an Apache snippet that serves /tracker",
        "The shipped apache/*.conf files are its output for the defaults. Redirect it into a file\n"
        "and include that instead, e.g. for 4 daemon processes on a 4-core box:\n"
        "  tracker-wsgi apache-conf --processes 4 > /etc/tracker-wsgi/tracker.conf\n"
        "Default: daemon mode (tracker.conf), --processes daemon processes routed by info hash.\n"
        "--embedded: the tracker in Apache's own children (tracker-embedded.conf); it needs\n"
        "--embedded-server's output (embedded-server.conf) in the server config: a fixed pool of\n"
        "--processes children of --threads threads, for the event and worker MPMs.\n"
        "Prints the snippet alone, with no summary line.", store=False,
    )
    mode = conf.add_mutually_exclusive_group()
    mode.add_argument("--embedded", action="store_true", help="the embedded-mode snippet (tracker-embedded.conf)")
    mode.add_argument("--embedded-server", action="store_true",
                      help="embedded mode's server-wide settings (embedded-server.conf)")
    conf.add_argument("--processes", type=int, metavar="N",
                      help=f"daemon processes (default {apache_conf.DEFAULT_PROCESSES}), or Apache children with "
                      f"--embedded-server (default {apache_conf.EMBEDDED_PROCESSES})")
    conf.add_argument("--threads", type=int, metavar="N",
                      help=f"threads per Apache child, with --embedded-server (default {apache_conf.EMBEDDED_THREADS})")
    conf.add_argument("--site", default="", metavar="NAME",
                      help="daemon mode: name this tracker's daemon processes tracker_wsgi_NAME_0.. apart from "
                      "another tracker's on the same server (default: tracker_wsgi_0..)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = Options(build_parser().parse_args(argv), argv)
    logs.to_stderr("tracker-wsgi")  # what the tracker's modules log reads as the command's own warnings
    try:
        return options.args.run(options)
    except (ConfigError, LookupError) as exc:
        warn(str(exc))
        return 1
    except Exception as exc:  # database down, permissions: one line, not a traceback
        warn(f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
