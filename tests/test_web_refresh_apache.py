"""The web refresh through the shipped snippet in a real Apache (issue 12, finding 8): the
secret in an X-Refresh-Secret header (GET or POST) runs the refresh and stays out of
Apache's access log; in the URL it is refused, and the error log names who tried; a request
body is refused by Apache before the tracker (issue 17, finding 1).
tests/test_wsgi.py has the cases in-process (the limit on failures, body reading)."""

from __future__ import annotations

import urllib.error
import urllib.request

from conftest import APACHE_DIR, decode
from tracker_wsgi.protocol import METHOD_NOT_ALLOWED
from tracker_wsgi.wsgi import REFRESH_REFUSED, REFRESH_SECRET_IN_QUERY

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
    config = (f'database = "{sqlite_url}"\ntorrent_dir = "{torrents}"\noutput_dir = "{output}"\n'
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
    assert "web refresh refused from 127.0.0.1: wrong secret in the header" in error_log
    assert SECRET not in error_log
