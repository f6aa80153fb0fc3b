"""Shared fixtures: a real MariaDB database per test, real Apache instances, helpers to
build announces. Everything the Apache daemon (www-data) reads lives in world-readable
temporary directories, because pytest's own tmp_path is private to root."""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

import mysql.connector
import pytest
from bencoder import bdecode

from tracker_wsgi import config as config_module
from tracker_wsgi import devserver, logs
from tracker_wsgi.config import Config
from tracker_wsgi.live import HostSwarms

REPO = Path(__file__).resolve().parent.parent
APACHE_DIR = REPO / "apache"

# A dedicated account, as in production: the Apache daemon runs as www-data, and MariaDB's
# root@localhost is often bound to the unix user root.
TEST_USER, TEST_PASSWORD = "tracker_test", "tracker-test-only"


def _admin():
    return mysql.connector.connect(user="root", host="127.0.0.1", port=3306)


def wait_for_mariadb(seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            _admin().close()
            return
        except mysql.connector.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# -- no test touches production's paths --------------------------------------------------------
# The built-in defaults are production's paths (the database in /var/lib/tracker-wsgi,
# torrent_dir /srv/torrents, output_dir /var/lib/tracker-wsgi/output, the config
# /etc/tracker-wsgi/tracker.toml): a test run once rewrote a live stats page and registered
# live torrents in its databases (issue 19). Every test keeps every path in its own
# temporary directory, and these guards make one that does not fail loudly.
PATH_KEYS = ("database", "torrent_dir", "output_dir", "swarm_dir")
# Below a file: nothing can be read, made or opened there, not even by root (ENOTDIR).
UNUSABLE = "/dev/null/tracker-wsgi-test-built-in-default"
UNUSABLE_DEFAULTS = {"database": f"sqlite://{UNUSABLE}/tracker.sqlite", "torrent_dir": f"{UNUSABLE}/torrents",
                     "output_dir": f"{UNUSABLE}/output", "swarm_dir": f"{UNUSABLE}/swarms"}


@pytest.fixture(autouse=True)
def builtin_default_paths_unusable(request, monkeypatch):
    """In this process the built-in default paths, and the config file the command line
    looks for, point at UNUSABLE: a tracker, refresh or command a test builds without its
    own paths fails at once instead of reading or writing production's. Tests of the
    defaults themselves (they read the values, never the paths) are marked
    `builtin_defaults` and keep the values."""
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", f"{UNUSABLE}/tracker.toml")
    if request.node.get_closest_marker("builtin_defaults"):
        return
    init = Config.__init__  # the dataclass's: its defaults are its parameters' defaults
    if init.__defaults__:
        names = [f.name for f in fields(Config) if f.init and not f.kw_only]
        positional = names[len(names) - len(init.__defaults__):]  # __defaults__ are the last parameters'
        monkeypatch.setattr(init, "__defaults__", tuple(
            UNUSABLE_DEFAULTS.get(name, default) for name, default in zip(positional, init.__defaults__)))
    if init.__kwdefaults__:
        monkeypatch.setattr(init, "__kwdefaults__", {
            name: UNUSABLE_DEFAULTS.get(name, default) for name, default in init.__kwdefaults__.items()})
    defaults = Config()
    assert {key: getattr(defaults, key) for key in PATH_KEYS} == UNUSABLE_DEFAULTS, "the guard missed a default"


def paths_not_own(config_file: Path) -> list[str]:
    """What in a tracker config a test wrote is not in the test's temporary directory: a path
    key left to its built-in default, or set elsewhere, or syslog (the host's). [] for a file
    that is not TOML (a test of a broken config)."""
    try:
        data = tomllib.loads(config_file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return []
    problems = []
    for key in PATH_KEYS:
        value = data.get(key)
        if value is None:
            problems.append(f"{config_file}: {key} left to its default (production's path)")
            continue
        if key == "database" and not str(value).startswith("sqlite:"):
            continue  # a server database: the test's own (mysql_url, a private mariadbd)
        path = "/" + str(value).removeprefix("sqlite:").lstrip("/") if key == "database" else str(value)
        if not Path(path).is_relative_to(tempfile.gettempdir()):
            problems.append(f"{config_file}: {key} = {value!r} is outside the temporary directory")
    if data.get("template_dir") and not Path(data["template_dir"]).is_relative_to(tempfile.gettempdir()):
        problems.append(f"{config_file}: template_dir = {data['template_dir']!r} is outside the temporary directory")
    # A tracker outside this process can only send to the host's /dev/log: where there is
    # one, a test must not write to it (test_logs's Apache test needs a host without it).
    if data.get("syslog_facility") and os.path.exists(logs.SYSLOG_SOCKET):
        problems.append(f"{config_file}: syslog_facility = {data['syslog_facility']!r} logs to the host's syslog")
    return problems


@pytest.fixture(autouse=True)
def stop_flush_threads(monkeypatch):
    """A HostSwarms starts a sync thread (and an atexit flush) at its first announce. A
    test's must end with the test, or they go on writing to, and logging about, a database
    the test dropped, into later tests' logs."""
    started = []
    start = HostSwarms._start_syncer

    def start_and_remember(self):
        started.append(self)
        start(self)

    monkeypatch.setattr(HostSwarms, "_start_syncer", start_and_remember)
    yield
    for swarms in started:
        swarms._closed.set()  # the thread ends at its next wait; no last flush into a dropped database
        atexit.unregister(swarms.close)


_SWARM_DIRS = Path(tempfile.mkdtemp(prefix="tracker-wsgi-test-swarms-"))
atexit.register(shutil.rmtree, _SWARM_DIRS, True)


def new_swarm_dir() -> str:
    """A host state directory of its own (a new host), in this test run's temporary directory."""
    return tempfile.mkdtemp(dir=_SWARM_DIRS)


@pytest.fixture
def mysql_url():
    """A fresh database on the real MariaDB, dropped afterwards."""
    name = f"tracker_test_{secrets.token_hex(4)}"
    admin = _admin()
    cur = admin.cursor()
    cur.execute(f"CREATE DATABASE {name}")
    for host in ("localhost", "127.0.0.1"):
        cur.execute(f"CREATE USER IF NOT EXISTS '{TEST_USER}'@'{host}' IDENTIFIED BY '{TEST_PASSWORD}'")
        cur.execute(f"GRANT ALL ON `tracker_test_%`.* TO '{TEST_USER}'@'{host}'")
    admin.close()
    yield f"mysql://{TEST_USER}:{TEST_PASSWORD}@127.0.0.1:3306/{name}"
    wait_for_mariadb()
    admin = _admin()
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
    admin.close()


@pytest.fixture
def shared_dir():
    """A temporary directory Apache's www-data can read and write."""
    path = Path(tempfile.mkdtemp(prefix="tracker-wsgi-test-"))
    path.chmod(0o777)
    yield path
    # The trackers outside this process (Apache's, the command line's) read their config
    # from here: every one the test wrote keeps every path in the test's directory.
    problems = [problem for config_file in path.rglob("*.toml") for problem in paths_not_own(config_file)]
    shutil.rmtree(path, ignore_errors=True)
    assert not problems, "a test's tracker config uses production's paths:\n" + "\n".join(problems)


def give_to_www_data(directory: Path) -> None:
    """Hand SQLite files made by the test (root) to Apache's daemon user, as an admin does
    by running tracker-wsgi as www-data."""
    www = pwd.getpwnam("www-data")
    for path in [directory, *directory.glob("tracker.sqlite*")]:
        os.chown(path, www.pw_uid, www.pw_gid)


@pytest.fixture
def sqlite_url(shared_dir):
    return f"sqlite:///{shared_dir}/tracker.sqlite"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Apache:
    port: int
    run_dir: Path
    process: subprocess.Popen

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        return (self.run_dir / "error.log").read_text(errors="replace")

    def get(self, path: str, query: dict | str | None = None, method: str = "GET", headers=None):
        """(status, headers, body) of one request; HTTP errors are answers, not exceptions."""
        url = self.base + path
        if query:
            url += "?" + (query if isinstance(query, str) else urllib.parse.urlencode(query))
        request = urllib.request.Request(url, method=method, headers=headers or {})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=30) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def stop(self) -> None:
        devserver.stop(self.process)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def start_apache(run_dir: Path, config_path: Path, site_conf: str = "", topology: str = "daemon",
                 mpm: str = "event", apache_dir: Path = APACHE_DIR) -> Apache:
    devserver.prepare_run_dir(run_dir)
    port = free_port()
    conf = devserver.httpd_conf(run_dir, port, config_path, apache_dir, site_conf=site_conf, topology=topology,
                                mpm=mpm)
    apache = Apache(port, run_dir, devserver.start(run_dir, conf))
    deadline = time.monotonic() + 30
    while True:
        if apache.process.poll() is not None:
            raise RuntimeError(f"apache exited: {(run_dir / 'error.log').read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return apache
        except OSError:
            if time.monotonic() > deadline:
                apache.stop()
                raise
            time.sleep(0.1)


def wait_until(holds, seconds: float, interval: float = 0.1) -> bool:
    """Whether holds() comes true within `seconds`. Tests poll for what they wait for: a
    fixed sleep is too long on a quiet machine and too short on a loaded one."""
    deadline = time.monotonic() + seconds
    while not holds():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def warm(apache: Apache, seconds: float = 30) -> None:
    """Build the tracker in every daemon process (routed by the first byte of the info hash,
    up to 4 processes) before a test's clients come: a process builds it on its first
    request, and a request that meets the build gets `retry in` after DB_QUEUE_SECONDS,
    which a loaded machine can outlast. For tests of what clients see once it runs."""
    deadline = time.monotonic() + seconds
    for byte in range(4):
        query = "info_hash=" + urllib.parse.quote_from_bytes(bytes([byte]) * 20)
        while b"retry in" in apache.get("/tracker/scrape", query)[2]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the tracker at {apache.base} still answers `retry in` after {seconds} s")
            time.sleep(0.2)


def own_directories(directory: Path, keys: tuple[str, ...] = ("torrent_dir", "output_dir", "swarm_dir")) -> str:
    """Config lines giving a tracker its torrent_dir (empty), output_dir and swarm_dir (the
    tracker's, www-data's) in `directory`, a test's own, made here; `keys`: only those."""
    www = pwd.getpwnam("www-data")
    lines = []
    for key in keys:
        path = directory / {"torrent_dir": "torrents", "output_dir": "output", "swarm_dir": "swarms"}[key]
        path.mkdir(exist_ok=True)
        if key in ("output_dir", "swarm_dir"):
            os.chown(path, www.pw_uid, www.pw_gid)
        lines.append(f'{key} = "{path}"\n')
    return "".join(lines)


def make_run_dir(shared_dir: Path, name: str, config_text: str) -> tuple[Path, Path]:
    """An Apache's run directory (open to www-data) holding its tracker.toml; returns both.
    A database, torrent_dir or output_dir the config does not name is made in the run
    directory (the tracker makes its SQLite file; it refreshes on its own when traffic finds
    the refresh overdue)."""
    run_dir = shared_dir / name
    run_dir.mkdir()
    run_dir.chmod(0o777)
    try:
        named = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError:
        named = dict.fromkeys(PATH_KEYS)  # a test of a broken file: as written
    config_path = run_dir / "tracker.toml"
    database = "" if "database" in named else f'database = "sqlite:///{run_dir}/tracker.sqlite"\n'
    config_path.write_text(config_text.rstrip("\n") + "\n" + database + own_directories(
        run_dir, tuple(key for key in ("torrent_dir", "output_dir", "swarm_dir") if key not in named)))
    config_path.chmod(0o644)
    return run_dir, config_path


@pytest.fixture
def apache_factory(shared_dir):
    """start(config_text, name="a", topology="daemon") -> Apache running the snippet of that
    topology (devserver.TOPOLOGIES) with that config file."""
    started: list[Apache] = []

    def start(config_text: str, name: str = "apache", site_conf: str = "", topology: str = "daemon") -> Apache:
        apache = start_apache(*make_run_dir(shared_dir, name, config_text), site_conf, topology)
        started.append(apache)
        return apache

    yield start
    for apache in started:
        apache.stop()


def decode(body: bytes) -> dict:
    return bdecode(body)


def ih(n: int) -> bytes:
    """A 20-byte info hash with awkward bytes in it (NUL, %, &, +, space, 0xff)."""
    return bytes([0, 0x25, 0x26, 0x2B, 0x20, 0xFF]) + n.to_bytes(14, "big")


def pid(n: int) -> bytes:
    return b"-TW0001-" + n.to_bytes(12, "big")


def announce_query(info_hash: bytes, peer_id: bytes, port: int = 6881, **extra) -> str:
    fields = {"info_hash": info_hash, "peer_id": peer_id, "port": port, "uploaded": 0,
              "downloaded": 0, "left": 100}
    fields.update(extra)
    return urllib.parse.urlencode(fields)


os.environ.setdefault("LANG", "C.UTF-8")
