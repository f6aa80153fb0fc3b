"""The seed's whole workflow through a real Apache: .torrent files dropped into the torrent
directory, a refresh, and the sample site's index.shtml and rss.xml showing them through
server-side includes, with the original's MIME type, expiry times and compression."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import time
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from urllib.parse import urljoin

import feedparser
import pytest
from bencoder import bencode

from conftest import APACHE_DIR, announce_query, decode, give_to_www_data
from test_render import nu_check
from tracker_wsgi import config as config_module
from tracker_wsgi import render
from tracker_wsgi.refresh import refresh
from tracker_wsgi.store import open_configured, open_store

# End to end through a real Apache: scripts/test --quick leaves this file out.
pytestmark = pytest.mark.slow


def torrent_bytes(name: str, length: int) -> bytes:
    info = {b"name": name.encode(), b"length": length, b"piece length": 16384,
            b"pieces": hashlib.sha1(name.encode()).digest()}
    return bencode({b"announce": b"http://127.0.0.1/tracker/announce", b"info": info})


@pytest.fixture
def site(shared_dir, apache_factory, sqlite_url):
    torrents, output = shared_dir / "torrents", shared_dir / "output"
    (torrents / "music").mkdir(parents=True)
    output.mkdir()
    for page in (APACHE_DIR / "sample-site").iterdir():  # index.shtml, rss.xml, site.css
        shutil.copy(page, torrents / page.name)
    (torrents / "music" / "album.torrent").write_bytes(torrent_bytes("Album <b>& friends</b>", 5 << 20))
    (torrents / "music" / "album.nfo").write_text("liner notes")
    (torrents / "film.torrent").write_bytes(torrent_bytes("Film", 700 << 20))
    for path in shared_dir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    site_conf = (
        f'Define TRACKER_WSGI_SITE "{torrents}"\n'
        f'Define TRACKER_WSGI_OUTPUT "{output}"\n'
        f'Alias /torrents "{torrents}"\n'
        f'Include "{APACHE_DIR}/site.conf"\n'
    )
    apache = apache_factory(f'database = "{sqlite_url}"\n', site_conf=site_conf)
    # Now that the port is known, give the tracker its real base URL, then refresh.
    config_text = (
        f'database = "{sqlite_url}"\ntorrent_dir = "{torrents}"\noutput_dir = "{output}"\nswarm_dir = "{output}-swarms"\n'
        f'base_url = "{apache.base}/torrents"\n'
    )
    (apache.run_dir / "tracker.toml").write_text(config_text)
    config = config_module.load(str(apache.run_dir / "tracker.toml"))
    store = open_configured(config)
    # Two refreshes a quarter of an hour apart: two history samples, so the chart has a line.
    report = refresh(config, store, force=True, now=int(time.time()) - 900)
    assert (report.registered, report.warnings) == (2, [])
    refresh(config, store, force=True)
    give_to_www_data(shared_dir)
    return apache


def test_index_shows_the_included_stats_table(site):
    status, headers, body = site.get("/torrents/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<table class="bt-stats">' in page and '<td class="name">2 torrents</td>' in page
    # Names are escaped text, links point at the .torrent and the info file beside it.
    assert "Album &lt;b&gt;&amp; friends&lt;/b&gt;" in page and "<b>&" not in page
    assert f'href="{site.base}/torrents/music/album.torrent"' in page
    assert f'href="{site.base}/torrents/music/album.nfo"' in page
    assert "<!--#include" not in page


def test_the_page_as_served_is_valid_html_and_its_stylesheet_is_served(site, tmp_path):
    _, _, body = site.get("/torrents/")
    head, _, page_body = body.decode().partition("<body>")
    # The include lands in the body, so its look comes from a stylesheet linked in the head.
    assert '<link rel="stylesheet" href="/tracker-output/bt_stats.css">' in head
    assert "<style" not in page_body
    assert '<figure class="bt-history">' in page_body and "<title id=" in page_body
    (tmp_path / "index.html").write_bytes(body)
    status, headers, css = site.get("/tracker-output/bt_stats.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    assert css.decode() == render.load_templates().stylesheet
    (tmp_path / "bt_stats.css").write_bytes(css)
    assert nu_check(tmp_path / "index.html", tmp_path / "bt_stats.css") == []


class HeadLinks(HTMLParser):
    """The <link> elements of a page: (rel, href)."""

    def __init__(self, text: str):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "link":
            self.links.append((dict(attrs)["rel"], dict(attrs)["href"]))


def test_everything_the_page_links_is_served_and_its_icon_needs_no_request(site, tmp_path):
    _, _, body = site.get("/torrents/")
    links = dict(HeadLinks(body.decode()).links)
    # An icon in the page: browsers do not ask for /favicon.ico, which is not there.
    assert links["icon"].startswith("data:image/svg+xml,")
    assert site.get("/favicon.ico")[0] == 404
    types = {}
    for rel, href in HeadLinks(body.decode()).links:
        if rel != "icon":
            status, headers, _ = site.get(urljoin("/torrents/", href))
            assert status == 200, href
            types[href] = headers["Content-Type"]
    assert types == {"rss.xml": "application/rss+xml", "/tracker-output/bt_stats.css": "text/css",
                     "site.css": "text/css"}
    # The page's own look, after the table's: the admin's rules win.
    assert [href for rel, href in HeadLinks(body.decode()).links if rel == "stylesheet"] == [
        "/tracker-output/bt_stats.css", "site.css"]
    status, _, css = site.get("/torrents/site.css")
    (tmp_path / "site.css").write_bytes(css)
    assert nu_check(tmp_path / "site.css") == []


def test_the_include_files_have_a_content_type(site):
    """mime.types has no .inc: without site.conf's AddType, Apache sends no Content-Type."""
    for name in ("bt_stats.inc", "bt_rss.inc"):
        status, headers, body = site.get(f"/tracker-output/{name}")
        assert status == 200 and body
        assert headers.get("Content-Type") == "text/html; charset=utf-8", name


def test_rss_is_a_valid_feed_with_enclosures(site):
    status, headers, body = site.get("/torrents/rss.xml")
    assert status == 200 and headers["Content-Type"].startswith("application/rss+xml")
    feed = feedparser.parse(body)
    assert feed.bozo == 0, feed.get("bozo_exception")
    assert feed.feed.link == f"{site.base}/torrents/"  # base_url, the site being served
    titles = sorted(e.title for e in feed.entries)
    assert titles == ["Album <b>& friends</b>", "Film"]
    album = next(e for e in feed.entries if e.title.startswith("Album"))
    (enclosure,) = album.enclosures
    assert enclosure.type == "application/x-bittorrent"
    assert enclosure.href == f"{site.base}/torrents/music/album.torrent"
    status, _, torrent = site.get("/torrents/music/album.torrent")
    assert int(enclosure.length) == len(torrent)


def test_torrent_files_have_their_type_and_an_hour_of_expiry(site):
    status, headers, body = site.get("/torrents/film.torrent")
    assert status == 200 and headers["Content-Type"] == "application/x-bittorrent"
    expires = parsedate_to_datetime(headers["Expires"]).timestamp()
    assert abs(expires - (time.time() + 3600)) < 60
    _, page_headers, _ = site.get("/torrents/")
    page_expires = parsedate_to_datetime(page_headers["Expires"]).timestamp()
    assert abs(page_expires - (time.time() + 900)) < 60


def test_pages_and_text_tracker_answers_are_compressed(site, shared_dir):
    status, headers, body = site.get("/torrents/", headers={"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip"
    assert b"bt-stats" in gzip.decompress(body)
    _, headers, body = site.get("/torrents/rss.xml", headers={"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip"
    # Tracker answers: a scrape (text) is compressed; no cache headers survive on it.
    store = open_store(f"sqlite:///{shared_dir}/tracker.sqlite", 2700)
    info_hash = next(iter(store.scrape_all(int(time.time()))))
    status, headers, body = site.get(
        "/tracker/scrape", {"info_hash": info_hash}, headers={"Accept-Encoding": "gzip"}
    )
    assert headers.get("Content-Encoding") == "gzip"
    assert headers["Cache-Control"].startswith("no-cache") and "Expires" not in headers
    assert decode(gzip.decompress(body))[b"files"][info_hash][b"complete"] == 0
    # A compact announce is binary and left alone.
    status, headers, body = site.get(
        "/tracker/announce", announce_query(info_hash, b"-TW0001-abcdefghijkl"),
        headers={"Accept-Encoding": "gzip"},
    )
    assert "Content-Encoding" not in headers
    assert decode(body)[b"incomplete"] == 1


def test_links_in_the_torrent_directory_publish_nothing_and_log_nothing_each(site, shared_dir):
    """Issue 17: anyone who can drop a .torrent in the torrent directory can drop a link: to
    the config, the state directory, or `/`. The site serves none of them (site.conf's
    Options has no FollowSymLinks), and asking again and again adds no log line each."""
    torrents = shared_dir / "torrents"
    outside = shared_dir / "private"
    outside.mkdir()
    (outside / "secret.txt").write_text("the tracker's secret\n")
    for path in (outside, outside / "secret.txt"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (torrents / "conf.txt").symlink_to(outside / "secret.txt")
    (torrents / "dbdir").symlink_to(outside)
    (torrents / "music" / "rootfs").symlink_to("/")
    (torrents / "self.torrent").symlink_to(torrents / "film.torrent")  # even one inside
    assert site.get("/torrents/film.torrent")[0] == 200
    log_before = len(site.error_log())
    for _ in range(50):
        for path in ("conf.txt", "dbdir/secret.txt", "music/rootfs/etc/passwd", "self.torrent", "dbdir/"):
            status, _, body = site.get("/torrents/" + path)
            assert status in (403, 404), (path, status)
            assert b"secret" not in body and b"root:" not in body and not body.startswith(b"d8:announce")
    grown = site.error_log()[log_before:]
    assert len(grown.splitlines()) < 10, grown[:2000]
