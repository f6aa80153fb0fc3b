"""A real Apache for development and tests, built around the shipped snippets in apache/.

It writes a minimal httpd.conf into a run directory (modules, one Listen, logs there, every
directory closed unless a snippet opens it, as Debian's apache2.conf does) that `Include`s
the snippets of one topology exactly as an admin would, with the Defines they need, and
runs Debian's apache2 in the foreground: daemon mode (apache/tracker.conf, with a worker
pool sized for slow clients) or embedded mode (apache/embedded-server.conf's fixed pool and
apache/tracker-embedded.conf), each with apache/tracker-host.conf. `tracker-wsgi serve` and the tests both use it,
so the snippets an admin installs are the ones that are tested. `tracker-wsgi serve` adds
the public site (apache/site.conf) at / and a sample torrent to show on it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from bencoder import bencode

from . import config as config_module
from .config import ConfigError
from .permissions import APACHE_USER, access_problem
from .store import sqlite_file

APACHE_BIN = "/usr/sbin/apache2"
START_SECONDS = 30  # Apache listening, or it has failed
LOCK_FILE = "serve.lock"  # in the state directory: held while a server runs on it
MODULES = "/usr/lib/apache2/modules"
# Modules the snippets use; mpm_event is Debian's default MPM (httpd_conf's mpm= replaces it),
# reqtimeout is on in Debian too.
BASE_MODULES = ("mpm_event", "authz_core", "authz_host", "mime", "headers", "include", "expires", "filter",
                "deflate", "dir", "alias", "env", "setenvif", "reqtimeout")
MPM_PROCESSES = 16  # ServerLimit: 16 x 128 = 2048 workers, see httpd_conf
MPM_THREADS_PER_PROCESS = 128  # per process fewer threads cost more memory per thread
MPMS = ("event", "worker", "prefork")  # event: Debian's default
# What runs the tracker: mod_wsgi daemon processes (tracker.conf) or Apache's own children
# (tracker-embedded.conf, with embedded-server.conf's pool).
TOPOLOGIES = ("daemon", "embedded")


def wsgi_module() -> str:
    """The Apache module of pip's mod_wsgi, built for this venv's Python."""
    from mod_wsgi.express.platform import MOD_WSGI_SO

    return MOD_WSGI_SO


# Daemon mode's server-wide settings (in production, the admin's own).
DAEMON_SERVER = f"""\
# The event MPM holds a worker thread for each connection whose headers are still arriving,
# so MaxRequestWorkers is how many slow clients it takes to stall every announce (Debian's
# default is 150): 2048 outlast 1,000 slowloris connections. A process of 128 threads takes
# about 13 MB; Apache starts processes as they are needed.
ServerLimit {MPM_PROCESSES}
ThreadLimit {MPM_THREADS_PER_PROCESS}
ThreadsPerChild {MPM_THREADS_PER_PROCESS}
MaxRequestWorkers {MPM_PROCESSES * MPM_THREADS_PER_PROCESS}
StartServers 2
MinSpareThreads {MPM_THREADS_PER_PROCESS}
MaxSpareThreads {4 * MPM_THREADS_PER_PROCESS}
# This Apache serves only the tracker, whose Python runs in daemon processes: keep Python out
# of Apache's own workers (server-wide, so production leaves it to the admin: README).
WSGIRestrictEmbedded On
"""


def httpd_conf(
    run_dir: Path,
    port: int,
    config_path: Path,
    apache_dir: Path,
    venv: str = sys.prefix,
    user: str = "www-data",
    site_conf: str = "",
    document_root: Path | None = None,
    topology: str = "daemon",
    mpm: str = "event",
) -> str:
    """httpd.conf for one Apache. document_root None: the run directory itself, open to
    all, where tests put the pages they fetch (and which then serves the run directory's
    config and logs); `tracker-wsgi serve` passes the site's directory instead."""
    if topology not in TOPOLOGIES or mpm not in MPMS:
        raise ValueError(f"topology {topology!r}, mpm {mpm!r}: choose from {TOPOLOGIES} and {MPMS}")
    if document_root is None:
        document_root = run_dir
        site_conf = f'<Directory "{run_dir}">\n    Require all granted\n</Directory>\n{site_conf}'
    modules = "\n".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so" for m in (f"mpm_{mpm}", *BASE_MODULES[1:]))
    defines = (f'Define TRACKER_WSGI_VENV "{venv}"\n'
               f'Define TRACKER_WSGI_APACHE "{apache_dir}"\n'
               f'Define TRACKER_WSGI_CONFIG "{config_path}"\n')
    if topology == "daemon":
        server_wide, tracker = DAEMON_SERVER, f'Include "{apache_dir}/tracker.conf"\n'
    else:
        # The admin's server config: embedded-server.conf, before any host's snippet.
        server_wide = f'{defines}Include "{apache_dir}/embedded-server.conf"\n'
        defines, tracker = "", f'Include "{apache_dir}/tracker-embedded.conf"\n'
    return f"""\
ServerName localhost
ServerRoot "{run_dir}"
Listen 127.0.0.1:{port}
PidFile "{run_dir}/httpd.pid"
ErrorLog "{run_dir}/error.log"
LogLevel warn
User {user}
Group {user}
{modules}
LoadModule wsgi_module "{wsgi_module()}"
TypesConfig /etc/mime.types
WSGISocketPrefix "{run_dir}/wsgi"
{server_wide}# As Debian's apache2.conf: no directory is served unless a snippet opens it.
<Directory />
    Require all denied
    AllowOverride None
</Directory>
DocumentRoot "{document_root}"
{site_conf}
{defines}{tracker}Include "{apache_dir}/tracker-host.conf"
"""


def public_site_conf(apache_dir: Path, site_dir: str, output_dir: str) -> str:
    """The public site of README's production section (stats page, feed, .torrent files:
    apache/site.conf), here as the DocumentRoot, so at /."""
    return (
        f'Define TRACKER_WSGI_SITE "{site_dir}"\n'
        f'Define TRACKER_WSGI_OUTPUT "{output_dir}"\n'
        f'Include "{apache_dir}/site.conf"\n'
    )


# The sample torrent `tracker-wsgi serve` puts on a fresh site: one small text file, which
# is also its info page (scanner.info_link: X.txt beside X.torrent).
SAMPLE_NAME = "tracker-wsgi-sample"
SAMPLE_PIECE_LENGTH = 16384  # BEP 3's customary smallest piece: the payload is one piece
SAMPLE_PAYLOAD = b"""\
This is the sample torrent of tracker-wsgi's development server (tracker-wsgi serve).

The tracker tracks tracker-wsgi-sample.torrent, which holds this file. To try a client,
open the .torrent with this file in the client's download directory (it then seeds), or
on another machine that reaches this server (it then downloads from the seed).

Drop .torrent files beside it; the next start of the server (or a force-refresh run as
www-data) registers them, and the stats page and the RSS feed show them. Delete these two
files to make the sample go away.
"""


def sample_torrent(announce_url: str) -> bytes:
    """A v1 .torrent of SAMPLE_PAYLOAD named SAMPLE_NAME.txt. No creation date: the same
    bytes, so the same info hash, every time."""
    pieces = b"".join(
        hashlib.sha1(SAMPLE_PAYLOAD[i : i + SAMPLE_PIECE_LENGTH]).digest()
        for i in range(0, len(SAMPLE_PAYLOAD), SAMPLE_PIECE_LENGTH)
    )
    info = {b"name": f"{SAMPLE_NAME}.txt".encode(), b"length": len(SAMPLE_PAYLOAD),
            b"piece length": SAMPLE_PIECE_LENGTH, b"pieces": pieces}
    return bencode({b"announce": announce_url.encode(), b"created by": b"tracker-wsgi serve", b"info": info})


def dev_config(state_dir: Path, port: int) -> str:
    """The config `tracker-wsgi serve` writes on its first start: everything in state_dir."""
    return f"""\
# tracker-wsgi serve's config, written on its first start: edit freely, then restart.
# The SQLite database has a directory of its own: the tracker (www-data) writes there.
database = "sqlite:///{state_dir}/db/tracker.sqlite"
# The swarm state the tracker's processes share (soft: the database keeps what matters).
swarm_dir = "{state_dir}/db/swarms"
# The site at /: the .torrent files, index.shtml (the stats page) and rss.xml (the feed).
torrent_dir = "{state_dir}/torrents"
output_dir = "{state_dir}/output"
# The site's URL: the page's links start with it; a bare /tracker redirects here.
base_url = "http://127.0.0.1:{port}/"
"""


def add_site_pages(site_dir: Path, sample_site: Path) -> list[str]:
    """Copy the sample site's pages into site_dir where missing, as README's production
    section has the admin do (the feed's links come from base_url, through bt_rss.inc).
    Returns the names copied."""
    copied = []
    for page in sorted(sample_site.iterdir()):
        target = site_dir / page.name
        if not target.exists():
            target.write_bytes(page.read_bytes())
            target.chmod(0o644)
            copied.append(page.name)
    return copied


def add_sample_torrent(site_dir: Path, announce_url: str) -> None:
    """The sample torrent and its payload (the file a client seeds it from), in site_dir."""
    for name, data in ((f"{SAMPLE_NAME}.txt", SAMPLE_PAYLOAD),
                       (f"{SAMPLE_NAME}.torrent", sample_torrent(announce_url))):
        (site_dir / name).write_bytes(data)
        (site_dir / name).chmod(0o644)


def prepare_run_dir(run_dir: Path) -> None:
    """Apache's daemon user must reach the run directory (logs, sockets, config)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o755)


def start(run_dir: Path, conf: str) -> subprocess.Popen:
    """Run Apache in the foreground with this config; the caller stops it."""
    path = run_dir / "httpd.conf"
    path.write_text(conf)
    return subprocess.Popen([APACHE_BIN, "-f", str(path), "-DFOREGROUND"], env={**os.environ, "LANG": "C.UTF-8"})


def stop(process: subprocess.Popen, seconds: float = 20) -> None:
    """Stop a server started in the foreground: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- tracker-wsgi serve ------------------------------------------------------------------------

def serve(state_dir: Path, port: int, config_file: str | None, apache_dir: Path, topology: str,
          say: Callable[[str], None]) -> int:
    """The whole product on one port, as production sets it up -- the tracker
    (apache/tracker.conf) and the public site at / (apache/site.conf: the stats page and the
    feed of torrent_dir), in a real Apache, until Ctrl-C or SIGTERM. A fresh state directory
    gets a config, the sample site's pages and a sample torrent; every start refreshes first,
    as www-data, so the page shows what torrent_dir holds. `say` prints the banner once
    Apache listens. Raises ConfigError (one line) when it cannot serve, before the banner."""
    if shutil.which(APACHE_BIN) is None:
        raise ConfigError(f"{APACHE_BIN} not found: install apache2 (scripts/bootstrap does)")
    if os.geteuid() != 0:
        raise ConfigError(f"serve must run as root: Apache starts as root and drops to {APACHE_USER}; "
                          "run: sudo scripts/serve")
    state, apache_dir = state_dir.resolve(), apache_dir.resolve()
    www = pwd.getpwnam(APACHE_USER)
    prepare_run_dir(state)
    _lock = hold_state(state)  # open, so held, while this function runs: the server's life
    refuse_taken_port(port)
    unreachable = access_problem(str(state), "read", www)  # Apache's daemons and the refresh
    if unreachable:
        raise ConfigError(f"--state-dir {state}: {unreachable}")
    config_path = Path(config_file or state / "tracker.toml").resolve()
    server_url = f"http://127.0.0.1:{port}/"
    fresh = not config_path.exists()
    if fresh:
        config_path.write_text(dev_config(state, port))
    config = config_module.load(str(config_path))
    site, output = Path(config.torrent_dir).resolve(), Path(config.output_dir).resolve()
    database = sqlite_file(config.database)
    refuse_serving_state(config_path, state, site, output, database)
    base = urlsplit(config.base_url)
    if base.hostname not in ("127.0.0.1", "localhost") or base.port != port:
        print(f"tracker-wsgi: {config_path}: base_url = {config.base_url!r} is not this server ({server_url}): "
              "the page's links and the /tracker redirect go there", file=sys.stderr)

    for directory in (site, output, Path(database).parent if database else None):
        if directory and not directory.exists():
            directory.mkdir(parents=True)
            directory.chmod(0o755)
    copied = add_site_pages(site, apache_dir / "sample-site")
    if fresh:
        add_sample_torrent(site, f"{server_url}tracker/announce")
    give_tracker_its_files(state, output, database, www)
    # The first refresh, as www-data (files it makes stay the tracker's): registers what
    # torrent_dir holds and writes the page's include files.
    first_refresh = [sys.executable, "-m", "tracker_wsgi.cli", "--config", str(config_path), "force-refresh"]
    if subprocess.run(first_refresh, user=www.pw_uid, group=www.pw_gid, extra_groups=[], cwd=state).returncode:
        raise ConfigError(f"the first refresh (run as {APACHE_USER}) failed: see its error above")

    conf = httpd_conf(state, port, config_path, apache_dir, document_root=site, topology=topology,
                      site_conf=public_site_conf(apache_dir, str(site), str(output)))
    # A service manager stops us with SIGTERM: stop Apache with us, as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = start(state, conf)
    try:
        wait_until_listening(server, port, state)
        added = f" (added {', '.join(copied)})" if copied else ""
        say(f"serving {server_url}: the stats page, the feed {server_url}rss.xml and the .torrent files of {site}"
            f"{added}\n  tracker at {server_url}tracker/announce; log {state}/error.log; config {config_path}\n"
            f"  drop .torrent files into {site}: each start registers them (or run, as root: runuser -u "
            f"{APACHE_USER} -- {Path(sys.executable).parent / 'tracker-wsgi'} --config {config_path} force-refresh)"
            "\nCtrl-C stops it.")
        status = server.wait()
    except KeyboardInterrupt:
        stop(server)
        return 0
    except BaseException:
        stop(server)
        raise
    raise ConfigError(f"Apache stopped by itself (exit status {status}): see {state}/error.log")


def hold_state(state: Path) -> IO[bytes]:
    """Lock the state directory for this server's life (the lock goes with the process, however
    it ends): a second server on it would share its Apache's pid file and sockets. Apache
    itself, finding its pid file's process alive, only says "already running" and exits 0."""
    lock = open(state / LOCK_FILE, "wb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigError(f"--state-dir {state}: a server is already running on it (scripts/serve); stop it "
                          "first (Ctrl-C where it runs), or give this one another --state-dir") from None
    return lock


def refuse_taken_port(port: int) -> None:
    """Refuse a port another program listens on, before anything is started."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Apache binds it
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigError(f"--port {port}: 127.0.0.1:{port} is in use by another program (another server?): "
                              "stop it, or choose another --port") from None


def wait_until_listening(server: subprocess.Popen, port: int, state: Path) -> None:
    """Until Apache accepts connections on the port; ConfigError if it exits first."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        if server.poll() is not None:
            raise ConfigError(f"Apache exited (status {server.returncode}) before serving: see {state}/error.log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise ConfigError(f"Apache did not listen on 127.0.0.1:{port} within {START_SECONDS} s: "
                                  f"see {state}/error.log") from None
            time.sleep(0.1)  # a refused connect returns at once: no spinning while Apache starts
            time.sleep(0.1)


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
