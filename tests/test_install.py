"""Installing as a Debian admin does: a wheel, a fresh virtualenv, the shipped files for /etc,
and the tracker under the real Apache from the installed files alone, beside another site and
another WSGI application that it must leave as they were.

A temporary directory ROOT stands for the machine's /: the wheel goes into a fresh virtualenv
at ROOT/opt/tracker-wsgi/venv, the files of `tracker-wsgi paths system` are copied to ROOT/etc
with every absolute path in them moved below ROOT (the admin's one edit: the paths), and
`systemd-tmpfiles --root=ROOT` makes the directories they name. Apache's config is a minimal
Debian layout: the server denies the filesystem, another site comes first (as 000-default
does), then the shipped site file, enabled as a2ensite would.
"""

from __future__ import annotations

import grp
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from hashlib import sha1
from importlib import metadata
from pathlib import Path

import pytest
from bencoder import bencode

from conftest import Apache, announce_query, decode, free_port, pid
from test_apache_hostile import raw, request
from tracker_wsgi import devserver

REPO = Path(__file__).resolve().parent.parent
TRACKER_HOST = "tracker.example.org"  # the shipped site file's ServerName
OTHER_HOST = "other.test"
# Installed from the same releases as the project's venv, so pip takes them from its cache
# (mod_wsgi is a source package: a new release would be compiled, for a minute).
PINNED = ("mod_wsgi", "mysql-connector-python", "bencoder.pyx")
HELLO_APP = """\
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from " + (environ["mod_wsgi.process_group"] or "embedded mode").encode()]
"""
APACHE_START_SECONDS = 30
# What a fresh clone has not: the build copies the checkout without them.
CHECKOUT_ONLY = (".git", ".venv", "var", "build", "*.egg-info", "__pycache__", ".pytest_cache")
SITE_NAME = "Installed sample"


@dataclass
class Machine:
    root: Path
    venv: Path
    apache: Apache
    cron_run: subprocess.CompletedProcess
    info_hash: bytes


def run_as_www_data(command: str, environment: dict[str, str]) -> subprocess.CompletedProcess:
    """A command as cron and systemd run it: as www-data, a bare environment, /bin/sh."""
    env = ["PATH=/usr/bin:/bin", *(f"{k}={v}" for k, v in environment.items())]
    return subprocess.run(["runuser", "-u", "www-data", "--", "env", "-i", *env, "/bin/sh", "-c", command],
                          capture_output=True, text=True, timeout=120)


def run(*command: str | Path, timeout: float = 300) -> str:
    """The stdout of a command that must succeed; on failure, an error showing what it printed."""
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def relocate(text: str, root: Path) -> str:
    """The shipped file with each absolute path of the install (/opt, /etc, /var, /srv) below root."""
    return re.sub(r"(?<![\w.-])/(opt|etc|var|srv)/", f"{root}/\\1/", text)


def build_wheel(out: Path) -> Path:
    """The wheel of this checkout, built from a copy: setuptools' build/ directory keeps files
    of earlier builds and would ship them again, and the checkout stays as it was."""
    source = out / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*CHECKOUT_ONLY))
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out, source)
    (wheel,) = out.glob("tracker_wsgi-*.whl")
    return wheel


def install(wheel: Path, venv: Path) -> None:
    """python -m venv, pip install the wheel with its server extra (pip's mod_wsgi)."""
    run(sys.executable, "-m", "venv", venv)
    constraints = venv / "constraints.txt"
    constraints.write_text("".join(f"{name}=={metadata.version(name)}\n" for name in PINNED))
    run(venv / "bin/pip", "install", "--quiet", "--constraint", constraints, f"{wheel}[server]", timeout=600)


def installed_output(venv: Path, *args: str) -> str:
    return run(venv / "bin/tracker-wsgi", *args)


def torrent(name: str) -> tuple[bytes, bytes]:
    """(.torrent bytes, v1 info hash) of a small single-file torrent."""
    info = {b"name": name.encode(), b"length": 1 << 20, b"piece length": 1 << 18, b"pieces": sha1(b"x").digest() * 4}
    return bencode({b"announce": f"http://{TRACKER_HOST}/tracker/announce".encode(), b"info": info}), sha1(bencode(info)).digest()


def cron_job(cron_file: Path) -> tuple[dict[str, str], str, str]:
    """(environment, user, command) of a cron.d file's one job."""
    environment, jobs = {}, []
    for line in cron_file.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if re.match(r"^\w+=", line):
            name, _, value = line.partition("=")
            environment[name] = value
        else:
            jobs.append(line.split(None, 6))
    (job,) = jobs
    return environment, job[5], job[6]


def unit_settings(unit_file: Path) -> dict[str, list[str]]:
    """Each key of a systemd unit file (all sections), with every value it is given."""
    settings: dict[str, list[str]] = {}
    for line in unit_file.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def httpd_conf(root: Path, venv: Path, port: int, run_dir: Path, other_dir: Path) -> str:
    modules = "\n".join(f"LoadModule {m}_module {devserver.MODULES}/mod_{m}.so" for m in devserver.BASE_MODULES)
    # The README's way to load pip's mod_wsgi: the LoadModule (and WSGIPythonHome) it prints.
    wsgi_module = run(venv / "bin/mod_wsgi-express", "module-config")
    return f"""\
ServerName localhost
ServerRoot "{run_dir}"
Listen 127.0.0.1:{port}
PidFile "{run_dir}/httpd.pid"
ErrorLog "{run_dir}/error.log"
LogLevel warn
# Debian's envvars and apache2.conf: where the sites' logs go, and their usual format.
Define APACHE_LOG_DIR "{run_dir}"
LogFormat "%h %l %u %t \\"%r\\" %>s %O \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\"" combined
# Debian's conf-enabled/other-vhosts-access-log.conf: every host without a CustomLog of its own.
LogFormat "%v:%p %h %l %u %t \\"%r\\" %>s %O \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\"" vhost_combined
CustomLog "{run_dir}/other_vhosts_access.log" vhost_combined
User www-data
Group www-data
{modules}
{wsgi_module}
TypesConfig /etc/mime.types
WSGISocketPrefix "{run_dir}/wsgi"
# Debian's apache2.conf: the filesystem is denied; each site grants its own directories.
<Directory />
    Options FollowSymLinks
    AllowOverride None
    Require all denied
</Directory>
<Directory "{other_dir}">
    Require all granted
</Directory>
# Another site, first as Debian's 000-default is: it answers any other Host, and requests
# that name none. Its WSGI application runs in embedded mode.
<VirtualHost *:{port}>
    ServerName {OTHER_HOST}
    DocumentRoot "{other_dir}"
    WSGIScriptAlias /hello "{other_dir}/hello.wsgi"
</VirtualHost>
IncludeOptional "{root}/etc/apache2/sites-enabled/*.conf"
"""


@pytest.fixture(scope="module")
def machine():
    root = Path(tempfile.mkdtemp(prefix="tracker-wsgi-install-"))
    root.chmod(0o755)  # www-data reaches the venv, the config and the site below it
    apache = None
    try:
        venv = root / "opt/tracker-wsgi/venv"
        install(build_wheel(root / "wheels"), venv)

        # The files for /etc, as the admin copies them, and the Apache files' stable path.
        system = Path(installed_output(venv, "paths", "system"))
        (root / "etc").mkdir()
        shutil.copy("/etc/passwd", root / "etc/passwd")  # systemd-tmpfiles --root resolves
        shutil.copy("/etc/group", root / "etc/group")  # users and groups there
        for shipped in system.rglob("*"):
            if shipped.is_file():
                target = root / "etc" / shipped.relative_to(system)
                target.parent.mkdir(parents=True, exist_ok=True)
                text = shipped.read_text()
                target.write_text(text if "tmpfiles.d" in target.parts else relocate(text, root))
        (root / "opt/tracker-wsgi/apache").symlink_to(installed_output(venv, "paths", "apache"))
        run("systemd-tmpfiles", "--create", f"--root={root}", "tracker-wsgi.conf")

        # The admin's config (in the file tmpfiles made), a torrent and the sample site's pages.
        torrents = root / "srv/torrents"
        config = root / "etc/tracker-wsgi/tracker.toml"
        config.write_text(
            f'database = "sqlite://{root}/var/lib/tracker-wsgi/tracker.sqlite"\n'
            f'torrent_dir = "{torrents}"\n'
            f'output_dir = "{root}/var/lib/tracker-wsgi/output"\nswarm_dir = "{root}/var/lib/tracker-wsgi/swarms"\n'
            f'base_url = "http://{TRACKER_HOST}/"\n'
        )
        torrent_bytes, info_hash = torrent(SITE_NAME)
        (torrents / "sample.torrent").write_bytes(torrent_bytes)
        for page in ("index.shtml", "rss.xml", "site.css"):
            shutil.copy(root / "opt/tracker-wsgi/apache/sample-site" / page, torrents / page)

        # The cron.d job registers the torrent and writes the stats page, as www-data.
        environment, user, command = cron_job(root / "etc/cron.d/tracker-wsgi")
        assert user == "www-data"
        cron_run = run_as_www_data(command, environment)

        # Apache: the other site with its WSGI application, then the tracker's site (a2ensite),
        # on this test's port, with the same WSGI application in it beside the tracker.
        run_dir, other_dir = root / "run", root / "other"
        run_dir.mkdir(mode=0o755)
        other_dir.mkdir(mode=0o755)
        (other_dir / "hello.wsgi").write_text(HELLO_APP)
        port = free_port()
        site = root / "etc/apache2/sites-available/tracker-wsgi.conf"
        site.write_text(site.read_text().replace("<VirtualHost *:80>", f"<VirtualHost *:{port}>").replace(
            "</VirtualHost>", f'    WSGIScriptAlias /hello "{other_dir}/hello.wsgi"\n</VirtualHost>'))
        (root / "etc/apache2/sites-enabled").mkdir()
        (root / "etc/apache2/sites-enabled/tracker-wsgi.conf").symlink_to(site)
        apache = Apache(port, run_dir, devserver.start(run_dir, httpd_conf(root, venv, port, run_dir, other_dir)))
        wait_until_listening(apache)
        yield Machine(root, venv, apache, cron_run, info_hash)
    finally:
        if apache is not None:
            apache.stop()
        shutil.rmtree(root, ignore_errors=True)


def wait_until_listening(apache: Apache) -> None:
    deadline = time.monotonic() + APACHE_START_SECONDS
    while True:
        if apache.process.poll() is not None:
            log = apache.run_dir / "error.log"  # absent when the config is refused: see stderr
            raise RuntimeError(f"apache exited: {log.read_text() if log.exists() else 'config refused'}")
        try:
            socket.create_connection(("127.0.0.1", apache.port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def tracker_get(machine: Machine, path: str, query: str | None = None):
    return machine.apache.get(path, query, headers={"Host": TRACKER_HOST})


# -- the package ---------------------------------------------------------------------------

def test_the_wheel_carries_the_apache_files_and_the_files_for_etc(machine):
    site_packages = machine.venv / f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    apache = Path(installed_output(machine.venv, "paths", "apache"))
    assert apache == site_packages / "tracker_wsgi/apache"
    for name in ("tracker.conf", "tracker-embedded.conf", "embedded-server.conf", "tracker-host.conf", "site.conf",
                 "tracker.wsgi", "errors/unavailable", "sample-site/index.shtml", "sample-site/rss.xml",
                 "sample-site/site.css"):
        assert (apache / name).is_file(), name
    system = Path(installed_output(machine.venv, "paths", "system"))
    assert sorted(str(p.relative_to(system)) for p in system.rglob("*") if p.is_file()) == [
        "apache2/sites-available/tracker-wsgi.conf", "cron.d/tracker-wsgi",
        "systemd/system/tracker-wsgi-refresh.service", "systemd/system/tracker-wsgi-refresh.timer",
        "tmpfiles.d/tracker-wsgi.conf",
    ]
    assert Path(installed_output(machine.venv, "paths", "venv")) == machine.venv
    # What Apache loads is the installed package, not this checkout.
    imported = run(machine.venv / "bin/python", "-I", "-c", "import tracker_wsgi; print(tracker_wsgi.__file__)")
    assert imported == str(site_packages / "tracker_wsgi/__init__.py")


# -- the files for /etc --------------------------------------------------------------------

def owner_and_mode(path: Path) -> tuple[str, str, str]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, oct(stat.S_IMODE(st.st_mode))


def test_tmpfiles_gives_the_config_to_root_and_the_state_to_www_data(machine):
    root = machine.root
    assert owner_and_mode(root / "etc/tracker-wsgi") == ("root", "www-data", "0o750")
    assert owner_and_mode(root / "etc/tracker-wsgi/tracker.toml") == ("root", "www-data", "0o640")
    assert owner_and_mode(root / "var/lib/tracker-wsgi") == ("www-data", "www-data", "0o750")
    assert owner_and_mode(root / "var/lib/tracker-wsgi/output") == ("www-data", "www-data", "0o755")
    assert owner_and_mode(root / "srv/torrents") == ("root", "root", "0o755")


def test_the_cron_job_refreshes_quietly_as_www_data(machine):
    done = machine.cron_run
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    output = machine.root / "var/lib/tracker-wsgi/output"
    for name in ("bt_stats.inc", "bt_rss.inc"):
        assert owner_and_mode(output / name)[0] == "www-data"
    assert SITE_NAME in (output / "bt_stats.inc").read_text()
    database = machine.root / "var/lib/tracker-wsgi/tracker.sqlite"
    assert owner_and_mode(database)[:2] == ("www-data", "www-data")


def test_the_config_passes_check_config_as_www_data(machine):
    config = machine.root / "etc/tracker-wsgi/tracker.toml"
    done = run_as_www_data(f"{machine.venv}/bin/tracker-wsgi --config {config} check-config", {})
    assert done.returncode == 0, done.stderr


def test_the_systemd_units_verify_and_the_service_runs_its_refresh(machine):
    units = machine.root / "etc/systemd/system"
    service, timer = units / "tracker-wsgi-refresh.service", units / "tracker-wsgi-refresh.timer"
    verify = subprocess.run(["systemd-analyze", "verify", str(service), str(timer)], capture_output=True, text=True,
                            timeout=60)
    assert (verify.returncode, verify.stderr) == (0, "")
    calendar = run("systemd-analyze", "calendar", *unit_settings(timer)["OnCalendar"])
    assert "Normalized form: *-*-* *:00/15:00" in calendar

    settings = unit_settings(service)
    assert settings["User"] == ["www-data"] and settings["Type"] == ["oneshot"]
    environment = dict(value.partition("=")[::2] for line in settings["Environment"] for value in line.split())
    (command,) = settings["ExecStart"]
    done = run_as_www_data(command, environment)
    assert done.returncode in {0, *map(int, settings["SuccessExitStatus"])}, done.stderr
    assert done.stderr == ""


# -- the tracker under Apache, from the installed files --------------------------------------

def test_the_installed_tracker_answers_an_announce(machine):
    status, _, body = tracker_get(machine, "/tracker/announce", announce_query(machine.info_hash, pid(1)))
    assert status == 200, machine.apache.error_log()
    answer = decode(body)
    assert b"failure reason" not in answer and answer[b"incomplete"] == 1, answer


def test_the_installed_site_serves_the_stats_page(machine):
    status, _, body = tracker_get(machine, "/")
    assert status == 200 and SITE_NAME in body.decode(), body[:500]
    assert b"<!--#include" not in body


def test_the_access_log_keeps_the_pages_and_no_tracker_request(machine):
    """Issue 19, finding 2: the shipped site file logs its pages, and no announce (its URL
    and the client's address say who downloads what)."""
    query = announce_query(machine.info_hash, pid(3))
    assert tracker_get(machine, "/tracker/announce", query)[0] == 200
    assert tracker_get(machine, "/rss.xml")[0] == 200
    log = machine.root / "run/tracker-wsgi-access.log"
    deadline = time.monotonic() + 10  # Apache writes a line after its answer
    while "/rss.xml" not in (lines := log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert '"GET /rss.xml HTTP/1.1" 200' in lines, lines
    # Neither in the site's own log nor in the server's (where a host without one is logged).
    server_log = machine.root / "run/other_vhosts_access.log"
    for text in (lines, server_log.read_text() if server_log.exists() else ""):
        assert "/tracker" not in text and "info_hash" not in text, text


def test_the_tracker_hosts_refusals_are_bencoded(machine):
    # Refused before any URL is known: only tracker-host.conf, in this host, reaches it.
    status, _, body = raw(machine.apache, request("/%zz", f"Host: {TRACKER_HOST}"))
    assert status == 400 and decode(body)[b"failure reason"], body


# -- everything else is left as it was ---------------------------------------------------------

def test_a_wsgi_app_in_embedded_mode_beside_the_tracker_still_runs(machine):
    for host in (TRACKER_HOST, OTHER_HOST):
        status, _, body = machine.apache.get("/hello", headers={"Host": host})
        assert (status, body) == (200, b"hello from embedded mode"), (host, machine.apache.error_log())


def test_another_host_has_no_tracker_and_keeps_apaches_own_error_pages(machine):
    other = {"Host": OTHER_HOST}
    status, headers, body = machine.apache.get("/tracker/announce", announce_query(machine.info_hash, pid(2)),
                                               headers=other)
    assert status == 404 and headers["Content-Type"].startswith("text/html"), body
    status, headers, body = raw(machine.apache, request("/%zz", f"Host: {OTHER_HOST}"))
    assert status == 400 and headers["Content-Type"].startswith("text/html"), body
    # A malformed request line reaches the first site of the address, the other one here.
    status, headers, body = raw(machine.apache, b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400 and headers["Content-Type"].startswith("text/html"), body
