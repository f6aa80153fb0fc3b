"""`tracker-wsgi serve` (what scripts/serve runs) shows the whole product through the real
Apache: the stats page and the feed at /, a sample torrent that downloads and announces to
this tracker, /tracker leading to the page -- and nothing else of its state directory."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.parse
from pathlib import Path

import feedparser
import pytest
from bencoder import bdecode, bencode

from conftest import Apache, announce_query, free_port
from tracker_wsgi import devserver

# End to end through a real Apache: scripts/test --quick leaves this file out.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TRACKER_WSGI = Path(sys.executable).parent / "tracker-wsgi"
SAMPLE = devserver.SAMPLE_NAME
START_SECONDS = 60  # a fresh state: config, sample, a refresh as www-data, then Apache
STOP_SECONDS = 30  # Apache's children get graceful-timeout (15 s) at most


class Served:
    """One `tracker-wsgi serve` process on a free port, its state in state_dir."""

    def __init__(self, state_dir: Path, log_dir: Path):
        self.state_dir, self.log_dir = state_dir, log_dir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_dir / "serve.out", "ab") as out:
            self.process = subprocess.Popen(
                [TRACKER_WSGI, "serve", "--port", str(self.port), "--state-dir", str(self.state_dir)],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TRACKER_WSGI_CONFIG": ""},
            )
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}: {self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.process.kill()
                    raise
                time.sleep(0.2)

    def output(self) -> str:
        return (self.log_dir / "serve.out").read_text(errors="replace")

    def get(self, path: str, query: str | None = None):
        """(status, headers, body), redirects not followed (conftest.Apache.get)."""
        return Apache(self.port, self.state_dir, self.process).get(path, query)

    def apache_processes(self) -> set[int]:
        """Apache's main process (httpd.pid) and its children: workers and mod_wsgi daemons."""
        main = int((self.state_dir / "httpd.pid").read_text())
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == main:  # the field after the state is the parent's pid
                children.add(int(stat.parent.name))
        return {main, *children}


@pytest.fixture(scope="module")
def served():
    state_dir = Path(tempfile.mkdtemp(prefix="tracker-wsgi-serve-"))
    state_dir.chmod(0o755)  # www-data reaches var/ inside, as a checkout's var/
    log_dir = Path(tempfile.mkdtemp(prefix="tracker-wsgi-serve-log-"))
    server = Served(state_dir / "var", log_dir)
    server.start()
    yield server
    if server.process.poll() is None:
        devserver.stop(server.process)
    shutil.rmtree(state_dir, ignore_errors=True)
    shutil.rmtree(log_dir, ignore_errors=True)


def sample_torrent(served: Served) -> dict:
    status, headers, body = served.get(f"/{SAMPLE}.torrent")
    assert status == 200 and headers["Content-Type"] == "application/x-bittorrent"
    return bdecode(body)


def test_the_stats_page_at_root_includes_the_refreshs_table_with_the_sample(served):
    status, headers, body = served.get("/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html"), page
    assert "<!--#include" not in page
    assert '<table class="bt-stats">' in page and '<td class="name">1 torrent</td>' in page
    assert f'href="{served.base}/{SAMPLE}.torrent">{SAMPLE}.txt</a>' in page
    assert f'<a href="{served.base}/{SAMPLE}.txt">info</a>' in page  # the payload, beside it
    status, headers, css = served.get("/tracker-output/bt_stats.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css") and b".bt-stats" in css


def test_the_feed_lists_the_sample_torrent_at_its_working_url(served):
    status, headers, body = served.get("/rss.xml")
    assert status == 200 and headers["Content-Type"].startswith("application/rss+xml")
    feed = feedparser.parse(body)
    assert feed.bozo == 0, feed.get("bozo_exception")
    assert feed.feed.link == f"{served.base}/"  # the sample site's placeholder, replaced
    (entry,) = feed.entries
    (enclosure,) = entry.enclosures
    assert enclosure.href == f"{served.base}/{SAMPLE}.torrent"
    assert int(enclosure.length) == len(bencode(sample_torrent(served)))


def test_the_sample_torrent_announces_to_this_tracker_which_tracks_it(served):
    torrent = sample_torrent(served)
    announce = torrent[b"announce"].decode()
    assert announce == f"{served.base}/tracker/announce"
    info = torrent[b"info"]
    status, _, payload = served.get(f"/{info[b'name'].decode()}")
    assert status == 200 and hashlib.sha1(payload).digest() == info[b"pieces"]  # one piece
    info_hash = hashlib.sha1(bencode(info)).digest()
    path = urllib.parse.urlsplit(announce).path
    status, _, body = served.get(path, announce_query(info_hash, b"-TW0001-servetest001", left=len(payload)))
    answer = bdecode(body)
    assert status == 200 and b"failure reason" not in answer, answer
    assert (answer[b"complete"], answer[b"incomplete"]) == (0, 1)
    # An info hash the torrent directory does not hold is refused: the whitelist is on.
    status, _, body = served.get(path, announce_query(b"\x01" * 20, b"-TW0001-servetest001"))
    assert bdecode(body)[b"failure reason"] == b"Requested torrent not available on this tracker."


def test_a_bare_tracker_url_leads_to_the_stats_page(served):
    status, headers, _ = served.get("/tracker")
    assert status == 302 and headers["Location"] == f"{served.base}/"
    status, _, body = served.get(urllib.parse.urlsplit(headers["Location"]).path)
    assert status == 200 and b'<table class="bt-stats">' in body


def test_nothing_of_the_state_directory_but_the_site_is_reachable(served):
    state = served.state_dir
    site = state / "torrents"
    private = sorted(p.relative_to(state).as_posix() for p in state.rglob("*") if site not in (p, *p.parents))
    # What a newcomer found served before: the config, Apache's config and log, the database.
    for expected in ("tracker.toml", "httpd.conf", "error.log", "httpd.pid", "db/tracker.sqlite",
                     "db/tracker.sqlite-wal", "output/bt_stats.inc"):
        assert expected in private
    assert any(name.endswith(".sock") for name in private)  # mod_wsgi's daemon sockets
    answers = {}
    for name in [*private, "tracker.sqlite", "var/tracker.toml"]:
        for url in (f"/{name}", f"/tracker-output/{name}"):  # the site, the include files
            answers[url] = served.get(urllib.parse.quote(url))[0]
    assert {url: status for url, status in answers.items() if status not in (403, 404)} == {}


def test_what_the_tracker_writes_is_www_datas_and_the_rest_roots(served):
    www_data = pwd.getpwnam("www-data").pw_uid
    state = served.state_dir
    owners = {p.relative_to(state).as_posix(): p.stat().st_uid for p in state.rglob("*") if not p.is_socket()}
    tracker_writes = {name for name in owners if name.startswith(("db", "output"))}
    assert {"db/tracker.sqlite", "output/bt_stats.inc", "output/bt_rss.inc"} <= tracker_writes
    assert {name: uid for name, uid in owners.items() if name in tracker_writes and uid != www_data} == {}
    assert {name: uid for name, uid in owners.items() if name not in tracker_writes and uid != 0} == {}


def test_refuses_a_config_that_would_publish_the_state():
    state = Path(tempfile.mkdtemp(prefix="tracker-wsgi-serve-"))
    try:
        config = state / "tracker.toml"
        config.write_text(f'database = "sqlite:///{state}/tracker.sqlite"\ntorrent_dir = "{state}"\n'
                          f'output_dir = "{state}/output"\nswarm_dir = "{state}/output-swarms"\n')
        serve = subprocess.Popen(
            [TRACKER_WSGI, "serve", "--config", str(config), "--state-dir", str(state), "--port", str(free_port())],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            stdout, stderr = serve.communicate(timeout=START_SECONDS)
        except subprocess.TimeoutExpired:  # it serves: stop it, and its Apache with it
            serve.send_signal(signal.SIGTERM)
            serve.communicate(timeout=STOP_SECONDS)
            raise
        assert serve.returncode == 1 and stdout == ""
        assert stderr == (f"tracker-wsgi: {config}: torrent_dir = '{state}' would publish {state}: keep the "
                               "state directory, the config and the database outside it\n")
    finally:
        shutil.rmtree(state)


def test_a_second_server_fails_before_serving_and_the_first_goes_on(served):
    """Apache alone, finding its pid file's process alive, says "already running" and exits 0:
    serve says what is wrong, non-zero, before any "serving" line."""
    environ = {**os.environ, "TRACKER_WSGI_CONFIG": ""}
    same_state = subprocess.run(
        [TRACKER_WSGI, "serve", "--port", str(free_port()), "--state-dir", str(served.state_dir)],
        capture_output=True, text=True, env=environ, timeout=START_SECONDS)
    assert (same_state.returncode, same_state.stdout, same_state.stderr) == (1, "", (
        f"tracker-wsgi: --state-dir {served.state_dir}: a server is already running on it (scripts/serve); stop it "
        "first (Ctrl-C where it runs), or give this one another --state-dir\n"))
    other = Path(tempfile.mkdtemp(prefix="tracker-wsgi-serve-"))
    try:
        other.chmod(0o755)
        same_port = subprocess.run(
            [TRACKER_WSGI, "serve", "--port", str(served.port), "--state-dir", str(other / "var")],
            capture_output=True, text=True, env=environ, timeout=START_SECONDS)
    finally:
        shutil.rmtree(other)
    assert (same_port.returncode, same_port.stdout, same_port.stderr) == (1, "", (
        f"tracker-wsgi: --port {served.port}: 127.0.0.1:{served.port} is in use by another program (another "
        "server?): stop it, or choose another --port\n"))
    assert served.get("/")[0] == 200
    assert served.process.poll() is None


def test_sigterm_stops_it_cleanly_and_it_starts_again_on_its_state(served):
    before = served.apache_processes()
    assert len(before) >= 3  # Apache, its worker processes and the two tracker daemons
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(STOP_SECONDS) == 0
    alive = {pid for pid in before if Path(f"/proc/{pid}").exists()}
    assert alive == set()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", served.port), timeout=1).close()

    # A second start keeps the config and the sample (the page lists it once) and refreshes.
    config = (served.state_dir / "tracker.toml").read_text()
    served.start()
    assert (served.state_dir / "tracker.toml").read_text() == config
    _, _, body = served.get("/")
    assert body.count(f"{SAMPLE}.torrent".encode()) == 1 and b'<td class="name">1 torrent</td>' in body
    assert served.output().count("refreshed in ") == 2
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(STOP_SECONDS) == 0


def test_each_start_installs_only_when_pyproject_or_the_extras_changed():
    """scripts/serve and scripts/test run scripts/bootstrap first: once the venv has what
    pyproject.toml asks, bootstrap runs no pip (20 s, and a warning about the editable
    install, at every start)."""
    bootstrap = [str(REPO / "scripts" / "bootstrap"), "--test"]  # the extras this run has
    first = subprocess.run(bootstrap, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    installed = next(Path(sysconfig.get_paths()["purelib"]).glob("tracker_wsgi-*.dist-info")) / "METADATA"
    before = installed.stat().st_mtime_ns
    started = time.monotonic()
    again = subprocess.run(bootstrap, capture_output=True, text=True, timeout=900)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert time.monotonic() - started < 10
    assert installed.stat().st_mtime_ns == before
