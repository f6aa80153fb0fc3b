"""The web refresh through the shipped snippet in a real Apache (issue 12, finding 8): the
secret in an X-Refresh-Secret header (GET or POST) runs the refresh and stays out of
Apache's access log; in the URL it is refused, and the error log names who tried; a request
body is refused by Apache before the tracker (issue 17, finding 1). A guessing address is
locked out while the right secret from another address works (issue 17, finding 7), from
two loopback addresses. tests/test_wsgi.py has the cases in-process (the limits on
failures)."""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request

import pytest

from conftest import APACHE_DIR, decode
from tracker_wsgi.protocol import METHOD_NOT_ALLOWED
from tracker_wsgi.refresh_auth import (
    FAILURES_PER_ADDRESS,
    REFRESH_LOCKED_OUT,
    REFRESH_REFUSED,
    REFRESH_SECRET_IN_QUERY,
)

# End to end through a real Apache: scripts/test --quick leaves this file out.
pytestmark = pytest.mark.slow

SECRET = "7c3e9a1f5b2d8c4e6a0f9b3d1e7c5a2f"
# Apache's standard "combined" format: what an admin's access log keeps of each request.
ACCESS_LOG = """\
LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\"" combined
CustomLog "{path}" combined
"""


def request(apache, query: str, method: str = "GET", headers: dict | None = None,
            body: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of a request to /tracker?query."""
    req = urllib.request.Request(f"{apache.base}/tracker?{query}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_web_refresh_takes_the_secret_in_a_header_or_a_post_body_never_the_url(sqlite_url, shared_dir,
                                                                                 apache_factory):
    torrents, output = shared_dir / "torrents", shared_dir / "output"
    torrents.mkdir()
    output.mkdir()
    output.chmod(0o777)
    config = (f'database = "{sqlite_url}"\ntorrent_dir = "{torrents}"\noutput_dir = "{output}"\nswarm_dir = "{output}-swarms"\n'
              f'refresh_secret = "{SECRET}"\n')
    access_log = shared_dir / "apache" / "access.log"  # apache_factory's run directory
    apache = apache_factory(config, site_conf=ACCESS_LOG.format(path=access_log))

    status, content_type, body = request(apache, "force-refresh", headers={"X-Refresh-Secret": SECRET})
    assert (status, content_type) == (200, "text/plain; charset=utf-8"), body
    assert body.startswith(b"refreshed in "), body
    stats = output / "bt_stats.inc"
    assert stats.exists()
    stats.unlink()

    status, content_type, body = request(apache, "force-refresh", "POST", headers={"X-Refresh-Secret": SECRET})
    assert (status, content_type) == (200, "text/plain; charset=utf-8"), body
    assert body.startswith(b"refreshed in "), body
    assert stats.exists()
    stats.unlink()
    # A body is refused unread, before the tracker (issue 17: a slow one held a daemon thread).
    status, _, body = request(apache, "force-refresh", "POST", body=f"secret={SECRET}".encode(),
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, body) == (413, (APACHE_DIR / "errors" / "body-refused").read_bytes())

    # The URL form of before: refused without being compared, and the answer says what to do.
    status, _, body = request(apache, f"force-refresh&secret={SECRET}")
    assert (status, decode(body)) == (200, {b"failure reason": REFRESH_SECRET_IN_QUERY.encode()})
    status, _, body = request(apache, "force-refresh", headers={"X-Refresh-Secret": "guess"})
    assert (status, decode(body)) == (200, {b"failure reason": REFRESH_REFUSED.encode()})
    assert not stats.exists()
    # POST is for the refresh only.
    status, _, body = request(apache, "info_hash=x", "POST", headers={"X-Refresh-Secret": SECRET})
    assert (status, decode(body)) == (405, {b"failure reason": METHOD_NOT_ALLOWED.encode()})

    apache.stop()  # flushes the logs
    requests = access_log.read_text().splitlines()
    assert len(requests) == 6, requests
    # Only the refused URL form put the secret in the access log.
    assert [SECRET in line for line in requests] == [False, False, False, True, False, False]
    error_log = apache.error_log()
    assert "web refresh refused from 127.0.0.1: secret in the URL, refused unread" in error_log
    # The next refusal within the minute is counted, not a line of its own (refresh_auth.py).
    assert "wrong secret in the header" not in error_log
    assert SECRET not in error_log


def site(shared_dir, apache_factory, topology: str = "daemon"):
    torrents, output = shared_dir / "torrents", shared_dir / "output"
    torrents.mkdir()
    output.mkdir()
    output.chmod(0o777)
    return apache_factory(f'database = "sqlite:///{shared_dir}/tracker.sqlite"\ntorrent_dir = "{torrents}"\n'
                          f'output_dir = "{output}"\nswarm_dir = "{output}-swarms"\nrefresh_secret = "{SECRET}"\n', topology=topology), output


def refresh_from(apache, source: str, secret: str) -> tuple[int, bytes]:
    """GET /tracker?force-refresh with the secret in the header, from a loopback address."""
    connection = http.client.HTTPConnection("127.0.0.1", apache.port, timeout=60, source_address=(source, 0))
    try:
        connection.request("GET", "/tracker?force-refresh", headers={"X-Refresh-Secret": secret})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_guessing_address_is_locked_out_and_the_admin_elsewhere_is_not(shared_dir, apache_factory):
    """Issue 17: 600 wrong guesses from one address: 10 checked, the rest refused unread;
    the correct secret right after from another address was refused as long as guessing
    went on. Now only the guessing address is; and the flood is not a line each."""
    apache, output = site(shared_dir, apache_factory)
    answers = [refresh_from(apache, "127.0.0.2", f"guess-{n}") for n in range(600)]
    assert [decode(body) for _, body in answers] == \
        [{b"failure reason": REFRESH_REFUSED.encode()}] * FAILURES_PER_ADDRESS + \
        [{b"failure reason": REFRESH_LOCKED_OUT.encode()}] * (600 - FAILURES_PER_ADDRESS)
    status, body = refresh_from(apache, "127.0.0.1", SECRET)  # the admin, while guessing goes on
    assert status == 200 and body.startswith(b"refreshed in "), body
    assert (output / "bt_stats.inc").exists()
    assert decode(refresh_from(apache, "127.0.0.2", SECRET)[1]) == {b"failure reason": REFRESH_LOCKED_OUT.encode()}
    assert decode(refresh_from(apache, "127.0.0.2", "guess")[1]) == {b"failure reason": REFRESH_LOCKED_OUT.encode()}
    apache.stop()
    refusals = [line for line in apache.error_log().splitlines() if "web refresh" in line]
    assert len(refusals) == 1 and "web refresh refused from 127.0.0.2: wrong secret in the header" in refusals[0], \
        refusals


@pytest.mark.parametrize("topology", ["daemon", "embedded"])
def test_a_post_body_cut_short_is_no_fault_of_ours(shared_dir, apache_factory, topology):
    """Issue 17: a POST /tracker?force-refresh whose body is cut short was counted and
    logged as a fault of the tracker's, and answered as one. Apache now refuses every body
    under /tracker before the tracker, bencoded, without reading it: nothing reaches mod_wsgi
    to be cut short (its WSGI0126 line), nothing is the tracker's fault."""
    apache, _ = site(shared_dir, apache_factory, topology)
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", apache.port), timeout=30) as client:
            client.sendall(b"POST /tracker?force-refresh HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n"
                           b"Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\nsecret=12")
            client.shutdown(socket.SHUT_WR)  # the body ends 91 bytes early
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 "), answer
        assert body == (APACHE_DIR / "errors" / "body-refused").read_bytes()
    apache.stop()
    log = apache.error_log()
    assert "tracker_wsgi:" not in log, log  # no fault, no traceback, nothing of the tracker's
