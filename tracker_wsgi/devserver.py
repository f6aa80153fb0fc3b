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

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from bencoder import bencode

APACHE_BIN = "/usr/sbin/apache2"
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
# The site at /: the .torrent files, index.shtml (the stats page) and rss.xml (the feed).
torrent_dir = "{state_dir}/torrents"
output_dir = "{state_dir}/output"
# The site's URL: the page's links start with it; a bare /tracker redirects here.
base_url = "http://127.0.0.1:{port}/"
"""


# The placeholder link of apache/sample-site/rss.xml, which an admin edits.
SAMPLE_SITE_LINK = "http://www.example.com/torrents/"


def add_site_pages(site_dir: Path, sample_site: Path, base_url: str) -> list[str]:
    """Copy the sample site's pages into site_dir where missing, linked to base_url, as
    README's production section has the admin do. Returns the names copied."""
    copied = []
    for page in sorted(sample_site.iterdir()):
        target = site_dir / page.name
        if not target.exists():
            target.write_text(page.read_text().replace(SAMPLE_SITE_LINK, base_url))
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
