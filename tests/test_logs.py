"""Where the tracker's log lines go (tracker_wsgi/logs.py): Apache's error log at the level
the admin chose, syslog when asked, the command line's stderr.

In a real Apache (pip's mod_wsgi 6, with its LogHandler): at the default level a clean
start, announces and a refresh write nothing but warnings; "ready" and "refreshed" appear
as [wsgi:info] when asked for; a database outage is one error line naming its cause, then
nothing more however many requests fail. In-process: the syslog datagrams as a syslog
daemon receives them, on a socket of the test's own; the stderr format of mod_wsgi 4 and 5
(Debian's package), which has no LogHandler; the command line's channel.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import announce_query, decode, give_to_www_data, ih, pid
from test_e2e_apache import (  # noqa: F401 (private_mariadb: a fixture)
    APACHE_LOG_INFO,
    LOG_INFO,
    config_text,
    private_mariadb,
    register,
    wait_for_log,
    wait_until,
)
from test_refresh import torrent_file
from tracker_wsgi import cli, logs
from tracker_wsgi.store import open_store

APACHE_LINE = re.compile(r"^\[[^]]+\] \[(\w+):(\w+)\] \[pid (\d+)")  # [time] [module:level] [pid N...
# Facility local0 is 16 (RFC 5424 §6.2.1); priority = facility * 8 + severity.
LOCAL0 = 16 * 8
SEVERITY = {"ERROR": 3, "WARNING": 4, "INFO": 6}


@pytest.fixture(autouse=True)
def restore_logging():
    """Each test sets up the package's logger afresh; put back what was there."""
    package = logging.getLogger(logs.PACKAGE)
    handlers, level = list(package.handlers), package.level
    yield
    for handler in list(package.handlers):
        package.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        package.addHandler(handler)
    package.setLevel(level)


def tracker_lines(error_log: str) -> list[tuple[str, str]]:
    """(Apache level, message) of each line the tracker wrote to Apache's error log."""
    found = []
    for line in error_log.splitlines():
        if "tracker_wsgi: " in line:
            match = APACHE_LINE.match(line)
            assert match and match.group(1) == "wsgi", line
            found.append((match.group(2), line.split("tracker_wsgi: ", 1)[1]))
    return found


# -- syslog -------------------------------------------------------------------------------------


@pytest.fixture
def syslog_socket():
    """A unix datagram socket standing in for /dev/log, and a way to read what arrives."""
    directory = tempfile.mkdtemp(prefix="tw-syslog-")  # short: a socket path has ~100 bytes
    path = os.path.join(directory, "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2)
        yield path, server
    shutil.rmtree(directory)


def test_syslog_gets_each_record_with_its_level_as_the_priority(syslog_socket, capsys):
    path, server = syslog_socket
    logs.to_error_log("info", "local0", path)
    logger = logging.getLogger("tracker_wsgi.wsgi")
    logger.info("ready: config /etc/tracker-wsgi/tracker.toml")
    logger.warning("web refresh refused from 192.0.2.1: no secret")
    logger.error("writing announces to the database failed:\nTraceback (most recent call last):\n  ...")
    logger.debug("below every level: never sent")
    received = [server.recv(4096) for _ in range(3)]
    tag = f"tracker_wsgi[{os.getpid()}]: ".encode()
    assert received == [
        f"<{LOCAL0 + SEVERITY['INFO']}>".encode() + tag + b"ready: config /etc/tracker-wsgi/tracker.toml\0",
        f"<{LOCAL0 + SEVERITY['WARNING']}>".encode() + tag + b"web refresh refused from 192.0.2.1: no secret\0",
        f"<{LOCAL0 + SEVERITY['ERROR']}>".encode() + tag
        + b"writing announces to the database failed:\nTraceback (most recent call last):\n  ...\0",
    ]
    server.settimeout(0.2)
    with pytest.raises(TimeoutError):
        server.recv(4096)
    # Apache's error log (stderr, outside Apache) keeps every line too.
    assert capsys.readouterr().err.splitlines()[:2] == [
        "tracker_wsgi: INFO: ready: config /etc/tracker-wsgi/tracker.toml",
        "tracker_wsgi: WARNING: web refresh refused from 192.0.2.1: no secret",
    ]


def test_the_level_applies_to_syslog_too(syslog_socket):
    path, server = syslog_socket
    logs.to_error_log("warning", "daemon", path)
    logging.getLogger("tracker_wsgi.refresh").info("refreshed in 0.01 s: ...")
    logging.getLogger("tracker_wsgi.refresh").warning("junk.torrent: skipped: not bencoded")
    assert server.recv(4096) == f"<{3 * 8 + 4}>tracker_wsgi[{os.getpid()}]: junk.torrent: skipped: not bencoded\0".encode()


@pytest.mark.parametrize("level", ["warning", "error"])
def test_a_syslog_socket_nobody_listens_on_is_one_error_in_the_error_log(tmp_path, capsys, level):
    missing = str(tmp_path / "no-syslog-here")
    logs.to_error_log(level, "local0", missing)
    assert capsys.readouterr().err == (
        f"tracker_wsgi: ERROR: syslog_facility = 'local0': nothing listens on {missing}; logging to Apache's "
        "error log only (start rsyslog or systemd-journald, or leave syslog_facility out)\n")
    logging.getLogger("tracker_wsgi.wsgi").error("still logged")
    assert capsys.readouterr().err == "tracker_wsgi: ERROR: still logged\n"  # and no "Logging error" traceback


# -- stderr: mod_wsgi 4 and 5, and the command line ----------------------------------------------


def test_without_mod_wsgi_6_the_level_is_in_the_message_and_info_is_left_out_by_default(capsys):
    """mod_wsgi 4 and 5 log whatever a daemon writes to stderr as [wsgi:error]: the line itself
    must say its level, and routine lines stay out unless asked for."""
    logs.to_error_log()
    logger = logging.getLogger("tracker_wsgi.live")
    logger.info("ready: ...")
    logger.warning("writing announces to the database works again")
    logger.error("unexpected fault answering a request:")
    assert capsys.readouterr().err == ("tracker_wsgi: WARNING: writing announces to the database works again\n"
                                       "tracker_wsgi: ERROR: unexpected fault answering a request:\n")
    logs.to_error_log("info")
    logger.info("ready: ...")
    assert capsys.readouterr().err == "tracker_wsgi: INFO: ready: ...\n"
    logs.to_error_log("error")
    logger.warning("web refresh refused from 192.0.2.1: no secret")
    assert capsys.readouterr().err == ""


def test_the_command_line_prints_the_trackers_warnings_as_its_own(shared_dir, capsys):
    config = shared_dir / "tracker.toml"
    config.write_text(f'database = "sqlite:///{shared_dir}/tracker.sqlite"\nlog_level = "info"\n'
                      f'torrent_dir = "{shared_dir}"\noutput_dir = "{shared_dir}/out"\nswarm_dir = "{shared_dir}/out-swarms"\n')
    assert cli.main(["init-db", "--config", str(config), "--allow-root"]) == 0
    capsys.readouterr()
    logging.getLogger("tracker_wsgi.store").info("routine")  # log_level is the tracker's, in Apache
    logging.getLogger("tracker_wsgi.store").warning("look at this")
    assert capsys.readouterr() == ("", "tracker-wsgi: look at this\n")


# -- in a real Apache ----------------------------------------------------------------------------


def directories(shared_dir: Path) -> tuple[Path, Path, dict[str, str]]:
    """(torrent_dir, output_dir writable by www-data, their config lines), as an admin sets them up."""
    torrents, output = shared_dir / "torrents", shared_dir / "output"
    torrents.mkdir()
    output.mkdir()
    www = pwd.getpwnam("www-data")
    os.chown(output, www.pw_uid, www.pw_gid)
    return torrents, output, {"torrent_dir": f'"{torrents}"', "output_dir": f'"{output}"', "refresh_interval": "3600"}


@pytest.fixture
def site(sqlite_url, shared_dir):
    """A SQLite tracker with one good and one junk .torrent file."""
    torrents, output, extra = directories(shared_dir)
    good = torrent_file(torrents, "good.torrent", "good")
    (torrents / "junk.torrent").write_bytes(b"not bencoded")
    register(sqlite_url)  # the tables, owned by www-data
    give_to_www_data(shared_dir)
    return sqlite_url, extra, good, output


def exercise(apache, good: bytes, output: Path) -> None:
    """Requests to both daemon processes; the first starts the background refresh, which
    registers the good file; then announces and a scrape of it."""
    assert apache.get("/tracker")[0] == 302  # no info_hash: daemon tracker_wsgi_0
    odd = announce_query(b"\x01" * 20, pid(9), 6889)  # an odd first byte: tracker_wsgi_1
    assert b"failure reason" in decode(apache.get("/tracker/announce", odd)[2])  # unknown: the client's mistake
    deadline = time.monotonic() + 20
    while not (output / "bt_stats.inc").exists():
        assert time.monotonic() < deadline, apache.error_log()
        time.sleep(0.1)
    for n in range(1, 5):
        status, _, body = apache.get("/tracker/announce", announce_query(good, pid(n), 6880 + n, event="started"))
        assert status == 200 and decode(body)[b"incomplete"] == n, decode(body)
    assert apache.get("/tracker/scrape", urlencode({"info_hash": good}))[0] == 200
    # The refresh's last line: its warning about the junk file, after its summary.
    wait_for_log(apache, "junk.torrent: skipped", 10)


def failed_flushes(apache) -> float:
    """Batch writes that failed, summed over the daemon processes (/tracker/metrics)."""
    _, _, body = apache.get("/tracker/metrics")
    return sum(sample.value for family in text_string_to_metric_families(body.decode())
               for sample in family.samples if sample.name == "tracker_wsgi_flush_failures_total")


def wsgi_lines(error_log: str) -> list[str]:
    """The lines mod_wsgi wrote (ours among them); every line must be Apache's."""
    lines = error_log.splitlines()
    assert all(APACHE_LINE.match(line) for line in lines), error_log
    return [line for line in lines if APACHE_LINE.match(line).group(1) == "wsgi"]


@pytest.mark.parametrize("apache_log_level", ["LogLevel warn", APACHE_LOG_INFO], ids=["Debian's", "wsgi:info"])
def test_a_clean_start_announces_and_a_refresh_log_only_warnings(site, apache_factory, apache_log_level):
    """At the default level the error log is worth reading: the one file to look at, at
    Apache's warning level, and nothing routine, whether Apache's LogLevel is Debian's
    (warn) or lets mod_wsgi's info lines through (then only log_level keeps ours out)."""
    url, extra, good, output = site
    apache = apache_factory(config_text(url, **extra), site_conf=apache_log_level)
    exercise(apache, good, output)
    log = apache.error_log()
    assert tracker_lines(log) == [("warn", "junk.torrent: skipped: not a valid torrent: not bencoded")], log
    # Nothing else from mod_wsgi but its own lifecycle lines at info (no traceback, no error).
    others = [line for line in wsgi_lines(log) if "tracker_wsgi: " not in line]
    assert {APACHE_LINE.match(line).group(2) for line in others} <= {"info"}, others


def test_info_lines_come_at_apaches_info_level_when_asked_for(site, apache_factory):
    url, extra, good, output = site
    apache = apache_factory(config_text(url, **extra, **LOG_INFO), site_conf=APACHE_LOG_INFO)
    exercise(apache, good, output)
    found = tracker_lines(apache.error_log())  # one "ready" per daemon process, one refresh
    assert sorted((level, message.split()[0]) for level, message in found) == [
        ("info", "ready:"), ("info", "ready:"), ("info", "refreshed"), ("warn", "junk.torrent:")], found


def test_a_database_outage_is_one_error_per_fault_then_nothing_more(private_mariadb, apache_factory, shared_dir):
    """The database stops under load. Each daemon logs each kind of fault once, as one error
    line naming the cause, and then nothing more however many requests fail (a count comes
    a minute later); its recovery is a warning, so it shows wherever the error did."""
    server = private_mariadb
    url = server.tracker_database(password="pw")
    register(url, 1)
    apache = apache_factory(config_text(url, sync_interval="1", **directories(shared_dir)[2]))
    for n in range(1, 5):
        apache.get("/tracker/announce", announce_query(ih(1), pid(n), 7000 + n, event="started"))
    store = open_store(url, 2700)
    try:
        assert wait_until(lambda: store._fetchall("SELECT COUNT(*) FROM peers") == [(4,)], 10)  # written
    finally:
        store.close()
    assert wsgi_lines(apache.error_log()) == []

    server.stop()
    # (query, answered `retry in`): a completion must be written at once, a swarm never
    # read must be read; announces to the swarm the host holds (new peers too: it holds it
    # whole) are answered and wait to be written.
    requests = [(announce_query(ih(1), pid(n), 7000 + n, event="completed", left=0), True) for n in range(1, 5)]
    requests += [(announce_query(ih(2), pid(n), 7000 + n), True) for n in range(1, 5)]
    requests += [(announce_query(ih(1), pid(n), 7000 + n), False) for n in range(10, 12)]
    requests += [(announce_query(ih(1), pid(n), 7000 + n), False) for n in range(1, 5)]

    def outage(rounds: int) -> None:
        with ThreadPoolExecutor(8) as pool:
            answers = pool.map(lambda r: (apache.get("/tracker/announce", r[0]), r[1]), requests * rounds)
            for (status, _, body), fault in answers:
                # `retry in`: unavailable, or busy once the completions per minute are spent
                assert status == 200 and (b"retry in" in decode(body)) == fault, decode(body)

    outage(5)
    # The flush thread's batches fail too (each failure is logged, then counted).
    assert wait_until(lambda: failed_flushes(apache) >= 1, 15)
    first, failed_before = apache.error_log(), failed_flushes(apache)
    outage(25)  # five times as many failures
    assert wait_until(lambda: failed_flushes(apache) >= failed_before + 2, 15)  # and two more batches
    assert apache.error_log() == first  # not one line more

    lines = wsgi_lines(first)
    assert {APACHE_LINE.match(line).group(2) for line in lines} == {"error"}, lines
    headlines = [message for _, message in tracker_lines(first)]
    assert len(headlines) == len(lines), lines  # one line each: an outage has no traceback (issue 19)
    kinds = ("requests that need the database are answered `retry in`: ",
             "writing announces to the database failed; they are kept and retried: ")
    assert {kind for kind in kinds for line in headlines if line.startswith(kind)} == set(kinds), headlines
    assert all(line.startswith(kinds) for line in headlines), headlines
    assert len(headlines) <= 2 * len(kinds)  # at most once per daemon process
    # The cause, named: a stopped server refuses connections.
    assert any("the database server cannot be reached: is it running" in line for line in headlines), headlines
    assert len(first.encode()) < 64 * 1024

    server.start()
    deadline = time.monotonic() + 15
    while ("warn", "writing announces to the database works again") not in tracker_lines(apache.error_log()):
        assert time.monotonic() < deadline, apache.error_log()
        time.sleep(0.2)


# -- the access log: the README's recipes ----------------------------------------------------------

# As the README gives them for the tracker's <VirtualHost>; `combined` as Debian's apache2.conf
# defines it. Announces name who (address, peer_id) downloads what (info_hash).
DEBIAN_COMBINED = r'LogFormat "%h %l %u %t \"%r\" %>s %O \"%{Referer}i\" \"%{User-Agent}i\"" combined'
TRACKER_REQUESTS = "SetEnvIf Request_URI ^/tracker(/|$) tracker_request"
KEEP_OUT = "CustomLog LOG_DIR/access.log combined env=!tracker_request"
TRIMMED = r'CustomLog LOG_DIR/tracker-access.log "%h %l %u %t \"%m %U %H\" %>s %O" env=tracker_request'


def test_the_access_log_recipes_keep_announces_out_or_trimmed(sqlite_url, shared_dir, apache_factory):
    register(sqlite_url, 1)
    log_dir = shared_dir / "apache"  # apache_factory's run directory, where Apache writes its logs
    recipe = "\n".join([DEBIAN_COMBINED, TRACKER_REQUESTS, KEEP_OUT, TRIMMED]).replace("LOG_DIR", str(log_dir))
    apache = apache_factory(config_text(sqlite_url), site_conf=recipe)
    requests = [
        ("/tracker/announce", announce_query(ih(1), pid(1), 6881, event="started")),
        ("/tracker", announce_query(ih(1), pid(2), 6882)),  # the original's announce URL
        ("/tracker/scrape", urlencode({"info_hash": ih(1)})),
        ("/tracker", ""),  # the redirect to the torrents
        ("/elsewhere", "q=kept"),  # the rest of the site
    ]
    for path, query in requests:
        apache.get(path, query)

    def logged() -> int:  # Apache writes each request's line after its answer
        return sum(len(p.read_text().splitlines()) for p in (log_dir / "access.log", log_dir / "tracker-access.log")
                   if p.exists())

    assert wait_until(lambda: logged() >= len(requests), 5)
    kept = (log_dir / "access.log").read_text().splitlines()
    trimmed = (log_dir / "tracker-access.log").read_text().splitlines()
    assert len(kept) == 1 and '"GET /elsewhere?q=kept HTTP/1.1" 404' in kept[0], kept
    assert [re.search(r'"(GET \S+ HTTP/1.1)" (\d+)', line).groups() for line in trimmed] == [
        ("GET /tracker/announce HTTP/1.1", "200"), ("GET /tracker HTTP/1.1", "200"),
        ("GET /tracker/scrape HTTP/1.1", "200"), ("GET /tracker HTTP/1.1", "302")]
    everything = "\n".join(kept + trimmed)
    for secret in ("info_hash", "peer_id", quote(pid(1)), "event=started"):
        assert secret not in everything


@pytest.mark.parametrize("log_level", ["warning", "error"])
def test_syslog_facility_without_a_syslog_socket_is_one_error_at_start_in_apache(site, apache_factory, log_level):
    """Issue 19: with syslog_facility set and no /dev/log, nothing said so. One error per
    daemon process as it builds the tracker, naming the key and the fix, at every log_level."""
    assert not os.path.exists(logs.SYSLOG_SOCKET), "this test needs a host without a syslog socket"
    url, extra, good, output = site
    apache = apache_factory(config_text(url, **extra, syslog_facility='"local0"', log_level=f'"{log_level}"'))
    exercise(apache, good, output)
    found = [(level, message) for level, message in tracker_lines(apache.error_log()) if "syslog_facility" in message]
    assert found == [("error", f"syslog_facility = 'local0': nothing listens on {logs.SYSLOG_SOCKET}; logging to Apache's "
                     "error log only (start rsyslog or systemd-journald, or leave syslog_facility out)")] * 2, \
        apache.error_log()
