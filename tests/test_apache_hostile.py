"""Hostile requests through the real Apache with the shipped snippets (apache/tracker.conf and
apache/tracker-host.conf, as tracker_wsgi.devserver includes them): every refusal under
/tracker is a bencoded `failure reason` served as text/plain, pages outside /tracker keep
Apache's own answers, and slow clients from one address cannot starve the announces of others.

Requests go over raw sockets, since most of these are what urllib refuses to send."""

from __future__ import annotations

import asyncio
import http.client
import os
import resource
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from bencoder import bdecode

from conftest import APACHE_DIR, announce_query, ih, pid
from test_e2e_apache import _daemon_pids, config_text, register
from tracker_wsgi import devserver

# End to end through a real Apache: scripts/test --quick leaves this file out.
pytestmark = pytest.mark.slow

ERRORS = APACHE_DIR / "errors"
HOST_CONF_INCLUDE = f'Include "{APACHE_DIR}/tracker-host.conf"\n'
LEGIT_ADDRESS = "127.0.0.2"  # legitimate clients; the attackers come from 127.0.0.1


def raw(apache, sent: bytes, half_close: bool = False, source: str = "127.0.0.1", timeout: float = 30):
    """(status, headers, body) of one request sent as these exact bytes."""
    with socket.create_connection(("127.0.0.1", apache.port), timeout=timeout, source_address=(source, 0)) as sock:
        sock.sendall(sent)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock, method=sent.split(b" ", 1)[0].decode())
        response.begin()
        return response.status, response.headers, response.read()


def request(target: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    """The bytes of an HTTP/1.1 request, exactly as given."""
    lines = [f"{method} {target} HTTP/1.1", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def form_post(body: bytes, *headers: str) -> bytes:
    return request("/tracker", "Host: tracker.example.org", f"Content-Length: {len(body)}",
               "Content-Type: application/x-www-form-urlencoded", *headers, method="POST", body=body)


HOST = "Host: tracker.example.org"
# id, request, half-close after sending, status, file of apache/errors/ that answers it,
# and whether tracker.conf alone reaches it (else Apache refuses it before it knows the URL,
# and only tracker-host.conf can).
REFUSALS = [
    ("nul-in-path", request("/tracker/%00", HOST), False, 404, "unknown-path", False),
    ("encoded-slashes", request("/tracker/%2F..%2F", HOST), False, 404, "unknown-path", False),
    ("nul-after-announce", request("/tracker/announce%00", HOST), False, 404, "unknown-path", False),
    ("path-over-path-max", request("/tracker/" + "a" * 5000, HOST), False, 404, "unknown-path", True),
    ("request-line-over-8k", request("/tracker/announce?x=" + "a" * 9000, HOST), False, 414, "too-long", False),
    ("bad-escape", request("/tracker/announce%zz", HOST), False, 400, "malformed", False),
    ("no-host", request("/tracker/announce"), False, 400, "malformed", False),
    ("header-without-colon", request("/tracker/announce", HOST, "Bad Header"), False, 400, "malformed", False),
    ("header-over-8k", request("/tracker/announce", HOST, "X-A: " + "a" * 9000), False, 400, "malformed", False),
    ("expect-unknown", request("/tracker/announce", HOST, "Expect: bogus"), False, 417, "malformed", False),
    ("trace", request("/tracker/announce", HOST, method="TRACE"), False, 405, "method-not-allowed", False),
    ("huge-content-length", request("/tracker", HOST, "Content-Length: 99999999999", method="POST"), False,
     413, "too-large", True),
    ("body-over-4k", form_post(b"secret=" + b"a" * 5000), False, 413, "too-large", True),
    ("chunked-body", request("/tracker", HOST, "Transfer-Encoding: chunked", method="POST", body=b"5\r\nhello\r\n0\r\n\r\n"),
     False, 411, "length-required", True),
    ("body-cut-short", request("/tracker", HOST, "Content-Length: 100", method="POST", body=b"secret=abc"), True,
     500, "unavailable", True),
]


def check_refusals(apache, cases) -> list[str]:
    problems = []
    for name, sent, half_close, status, error_file, _ in cases:
        got_status, headers, body = raw(apache, sent, half_close)
        expected = bdecode((ERRORS / error_file).read_bytes())
        if got_status != status:
            problems.append(f"{name}: status {got_status}, want {status}")
        if not headers.get("Content-Type", "").startswith("text/plain"):
            problems.append(f"{name}: Content-Type {headers.get('Content-Type')!r}")
        try:
            answer = bdecode(body)
        except Exception:
            problems.append(f"{name}: not bencoded: {body[:80]!r}")
            continue
        if answer != expected or not answer.get(b"failure reason"):
            problems.append(f"{name}: {answer!r}, want {expected!r}")
    return problems


@pytest.fixture
def tracker(sqlite_url, apache_factory):
    register(sqlite_url, 1)
    apache = apache_factory(config_text(sqlite_url))
    (apache.run_dir / "page.html").write_text("<html>a page</html>\n")
    (apache.run_dir / "page.html").chmod(0o644)
    return apache


@pytest.fixture
def without_host_conf(monkeypatch):
    """Apache with tracker.conf alone, as in a host that serves other sites too."""
    full = devserver.httpd_conf
    monkeypatch.setattr(devserver, "httpd_conf", lambda *a, **k: full(*a, **k).replace(HOST_CONF_INCLUDE, ""))


def test_every_refusal_under_tracker_is_bencoded(tracker):
    assert HOST_CONF_INCLUDE in (tracker.run_dir / "httpd.conf").read_text()
    assert check_refusals(tracker, REFUSALS) == []
    # A HEAD gets the headers of the bencoded answer.
    status, headers, body = raw(tracker, request("/tracker/%00", HOST, method="HEAD"))
    assert (status, headers["Content-Type"].startswith("text/plain"), body) == (404, True, b"")


def test_tracker_conf_alone_bencodes_what_apache_refuses_after_mapping_the_url(without_host_conf, tracker):
    assert HOST_CONF_INCLUDE not in (tracker.run_dir / "httpd.conf").read_text()
    assert check_refusals(tracker, [case for case in REFUSALS if case[-1]]) == []


def html_page(status: int, headers, body: bytes) -> tuple[int, str, bool]:
    return status, headers["Content-Type"], body.startswith(b"<!DOCTYPE HTML")


def test_pages_outside_tracker_keep_apaches_answers(tracker):
    """Even with tracker-host.conf, a page's own errors are Apache's HTML pages."""
    status, headers, body = raw(tracker, request("/page.html", HOST))
    assert (status, headers["Content-Type"], body) == (200, "text/html", b"<html>a page</html>\n")
    for target in ("/nothere", "/trackers", "/tracker-errors/nothere", "/page.html/x"):
        assert html_page(*raw(tracker, request(target, HOST))) == (404, "text/html; charset=iso-8859-1", True), target


def test_tracker_conf_alone_leaves_other_pages_alone(without_host_conf, tracker):
    status, headers, body = raw(tracker, request("/page.html", HOST))
    assert (status, body) == (200, b"<html>a page</html>\n")
    for sent, status in [
        (request("/nothere", HOST), 404),
        (request("/nothere%00", HOST), 404),
        (request("/nothere%zz", HOST), 400),
        (request("/nothere?x=" + "a" * 9000, HOST), 414),
        (request("/nothere"), 400),
    ]:
        assert html_page(*raw(tracker, sent)) == (status, "text/html; charset=iso-8859-1", True), sent[:40]


def error_bodies() -> set[bytes]:
    return {path.read_bytes() for path in ERRORS.iterdir()}


def test_a_small_post_reaches_the_tracker(tracker):
    """A web refresh posts its secret in a small form; up to 4 KiB reaches the application
    (whatever it answers, it is not one of Apache's refusals), beyond that Apache refuses."""
    for body in (b"refresh&secret=0123456789abcdef", b"secret=" + b"a" * (4096 - 7)):
        status, headers, answer = raw(tracker, form_post(body))
        assert status != 413 and answer not in error_bodies(), (len(body), status, answer)
        assert bdecode(answer)[b"failure reason"]
    status, _, answer = raw(tracker, form_post(b"secret=" + b"a" * (4096 - 6)))
    assert (status, answer) == (413, (ERRORS / "too-large").read_bytes())


DAEMON_LISTEN_BACKLOG = 100  # mod_wsgi's default listen-backlog
CONNECT_TIMEOUT = 5  # tracker.conf: connect-timeout


def test_a_stopped_daemon_is_a_quick_bencoded_503(tracker):
    """With both daemon processes frozen, the requests their sockets cannot queue get a
    bencoded 503 with `retry in` after connect-timeout; the queued ones are answered once
    the daemons run again."""
    deadline = time.monotonic() + 10  # Apache listens before mod_wsgi has forked its daemons
    while len(daemons := _daemon_pids(tracker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(daemons) == 2
    requests = 2 * DAEMON_LISTEN_BACKLOG

    def announce(n: int):
        started = time.monotonic()
        status, headers, body = raw(tracker, request("/tracker/announce?" + announce_query(ih(1), pid(n), 7000), HOST))
        return status, headers.get("Content-Type"), body, time.monotonic() - started

    def resume() -> None:
        for daemon in daemons:
            os.kill(daemon, signal.SIGCONT)

    for daemon in daemons:
        os.kill(daemon, signal.SIGSTOP)
    thaw = threading.Timer(CONNECT_TIMEOUT + 3, resume)  # after the 503s, before the queue times out
    thaw.start()
    try:
        with ThreadPoolExecutor(requests) as pool:
            answers = list(pool.map(announce, range(requests)))
    finally:
        thaw.join()
    unavailable = (ERRORS / "unavailable").read_bytes()
    refused = [(content_type, body, seconds) for status, content_type, body, seconds in answers if status == 503]
    answered = [body for status, _, body, _ in answers if status == 200]
    assert len(refused) >= requests // 4 and len(refused) + len(answered) == requests, [a[:2] for a in answers]
    for content_type, body, seconds in refused:
        assert content_type.startswith("text/plain") and body == unavailable
        assert bdecode(body)[b"retry in"] >= 1
        assert CONNECT_TIMEOUT - 1 < seconds < CONNECT_TIMEOUT + 5, seconds
    assert all(b"failure reason" not in bdecode(body) for body in answered)


# -- slow clients ------------------------------------------------------------------------------

SLOW_CONNECTIONS = 500  # more than the 400 workers of Apache's default pool (the 420 starved it)
SLOW_HEADER_EVERY = 10  # seconds between the header lines a slow client sends
ATTACK_SECONDS = 25
RAMP_SECONDS = 5  # the slow connections are all open before the legitimate announces start
HEADER_TIMEOUT = 10  # tracker-host.conf: RequestReadTimeout header=10-20,MinRate=500


class Slowloris:
    """SLOW_CONNECTIONS connections from 127.0.0.1, each sending a request line and then one
    header line every SLOW_HEADER_EVERY seconds, never finishing; each reconnects at once
    when Apache closes it. Records Apache's answers to them and the most open at once."""

    def __init__(self, apache, until: float):
        self.apache, self.until = apache, until
        self.open = self.most_open = self.connections = 0
        self.answers: list[tuple[float, bytes]] = []  # (seconds since connect, what Apache sent)

    async def one(self, n: int) -> None:
        request_line = f"GET /tracker/announce?{announce_query(ih(1), pid(10_000 + n), 7000)} HTTP/1.1\r\n"
        while time.monotonic() < self.until:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.apache.port, local_addr=("127.0.0.1", 0))
            except OSError:
                await asyncio.sleep(0.5)
                continue
            opened = time.monotonic()
            self.connections += 1
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            received = b""
            try:
                writer.write(request_line.encode() + b"Host: tracker.example.org\r\n")
                while time.monotonic() < self.until:
                    try:
                        chunk = await asyncio.wait_for(reader.read(65536), SLOW_HEADER_EVERY)
                    except asyncio.TimeoutError:
                        writer.write(b"X-Slow: 1\r\n")
                        await writer.drain()
                        continue
                    if not chunk:
                        break
                    received += chunk
            except OSError:
                pass
            finally:
                self.open -= 1
                writer.close()
                if received:
                    self.answers.append((time.monotonic() - opened, received))

    def run(self) -> None:
        async def all_of_them():
            await asyncio.gather(*(self.one(n) for n in range(SLOW_CONNECTIONS)))

        asyncio.run(all_of_them())


def legit_announces(apache, until: float, client: int, results: list) -> None:
    n = 0
    while time.monotonic() < until:
        n += 1
        started = time.monotonic()
        ok = False
        try:
            status, _, body = raw(apache, request("/tracker/announce?" + announce_query(ih(1), pid(client * 1000 + n % 20), 6000 + client), HOST),
                                  source=LEGIT_ADDRESS, timeout=5)
            ok = status == 200 and b"failure reason" not in bdecode(body)
        except (OSError, http.client.HTTPException):
            pass
        results.append((ok, time.monotonic() - started))
        time.sleep(0.02)


def test_slow_clients_from_one_address_do_not_starve_announces(sqlite_url, apache_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * SLOW_CONNECTIONS)), hard))
    register(sqlite_url, 1)
    apache = apache_factory(config_text(sqlite_url))
    start = time.monotonic()
    slowloris = Slowloris(apache, start + ATTACK_SECONDS)
    attack = threading.Thread(target=slowloris.run)
    attack.start()
    time.sleep(RAMP_SECONDS)
    results: list[tuple[bool, float]] = []
    clients = [threading.Thread(target=legit_announces, args=(apache, start + ATTACK_SECONDS, c, results))
               for c in range(2)]
    for client in clients:
        client.start()
    for thread in [*clients, attack]:
        thread.join()

    assert slowloris.most_open >= 0.9 * SLOW_CONNECTIONS, slowloris.most_open
    latencies = sorted(seconds for _, seconds in results)
    successes = sum(ok for ok, _ in results)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    assert len(results) >= 100, len(results)
    assert successes >= 0.99 * len(results) and p99 < 1, (successes, len(results), p99)
    # The slow clients were cut off by the header read timeout, with a bencoded 408.
    assert slowloris.connections > SLOW_CONNECTIONS
    for seconds, answer in slowloris.answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and b"Content-Type: text/plain" in head, answer[:200]
        assert bdecode(body) == bdecode((ERRORS / "timeout").read_bytes())
        assert HEADER_TIMEOUT - 1 < seconds < 2 * HEADER_TIMEOUT + 3, seconds
    assert len(slowloris.answers) >= SLOW_CONNECTIONS
