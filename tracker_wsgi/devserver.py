"""A real Apache for development and tests, built around the shipped snippets in apache/.

It writes a minimal httpd.conf into a run directory (modules, one Listen, logs there, a
worker pool sized for slow clients) that `Include`s apache/tracker.conf and
apache/tracker-host.conf exactly as an admin would, with the Defines they need, and
runs Debian's apache2 in the foreground. `tracker-wsgi serve` and the tests both use it,
so the snippets an admin installs are the ones that are tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

APACHE_BIN = "/usr/sbin/apache2"
MODULES = "/usr/lib/apache2/modules"
# Modules the snippets use; mpm_event is Debian's default MPM, reqtimeout is on in Debian too.
BASE_MODULES = ("mpm_event", "authz_core", "authz_host", "mime", "headers", "include", "expires", "filter",
                "deflate", "dir", "alias", "env", "setenvif", "reqtimeout")
MPM_PROCESSES = 16  # ServerLimit: 16 x 128 = 2048 workers, see httpd_conf
MPM_THREADS_PER_PROCESS = 128  # per process fewer threads cost more memory per thread


def wsgi_module() -> str:
    """The Apache module of pip's mod_wsgi, built for this venv's Python."""
    from mod_wsgi.express.platform import MOD_WSGI_SO

    return MOD_WSGI_SO


def httpd_conf(
    run_dir: Path,
    port: int,
    config_path: Path,
    apache_dir: Path,
    venv: str = sys.prefix,
    user: str = "www-data",
    site_conf: str = "",
) -> str:
    modules = "\n".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so" for m in BASE_MODULES)
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
WSGISocketPrefix "{run_dir}/wsgi"
DocumentRoot "{run_dir}"
{site_conf}
Define TRACKER_WSGI_VENV "{venv}"
Define TRACKER_WSGI_APACHE "{apache_dir}"
Define TRACKER_WSGI_CONFIG "{config_path}"
Include "{apache_dir}/tracker.conf"
Include "{apache_dir}/tracker-host.conf"
"""


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
