"""The include files (tracker_wsgi/render.py) and how they reach the disk (files.py):
bt_stats.inc is an HTML table and chart, bt_rss.inc the items of an RSS 2.0 channel. Names
come from .torrent files, that is from anyone: they must always arrive as text."""

from __future__ import annotations

import collections
import hashlib
import os
import re
import stat
import threading
import time
import xml.etree.ElementTree as ET
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path

import feedparser
import pytest
from bencoder import bencode

from tracker_wsgi import render
from tracker_wsgi.config import Config
from tracker_wsgi.files import write_atomically
from tracker_wsgi.model import TorrentReport
from tracker_wsgi.refresh import refresh
from tracker_wsgi.store import open_store

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RSS = REPO / "apache" / "sample-site" / "rss.xml"
NOW = 1_700_000_000  # Tue, 14 Nov 2023 22:13:20 GMT
BASE = "http://h/torrents"
HOSTILE = "<script>alert(1)</script>"
QUOTES = "\"&'"


def report(n: int = 1, **fields) -> TorrentReport:
    values = dict(
        info_hash=bytes([n]) * 20, name=f"t{n}", path=f"t{n}.torrent", size=1000, file_size=300,
        added=NOW - 3600, seeds=0, leechers=0, partial_seeds=0, downloaded=0, transferred=0,
        bytes_left=0, last_transfer=0, last_done=0,
    )
    values.update(fields)
    return TorrentReport(**values)


def rss_document(items: str) -> str:
    """The items inside the shipped sample channel (as Apache's SSI includes them), or a
    minimal channel when the sample site is not there."""
    if SAMPLE_RSS.exists():
        wrapper = SAMPLE_RSS.read_text()
        assert wrapper.count("<!--#include") == 1
        return re.sub(r"<!--#include[^>]*-->", lambda _: items, wrapper)
    return ('<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><link>http://h/</link>'
            f"<description>d</description>{items}</channel></rss>")


class Page(HTMLParser):
    """Tags, table rows (cell texts) and nesting errors as a browser's parser sees them."""

    VOID = {"br", "img", "meta", "link", "input", "hr", "col"}

    def __init__(self, text: str):
        super().__init__()
        self.open: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self.links: list[tuple[str, str]] = []  # (href, text)
        self._cell: list[str] | None = None
        self._link: tuple[str, list[str]] | None = None
        self.feed(text)
        self.close()
        if self.open:
            self.errors.append(f"unclosed {self.open}")

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self._link = (dict(attrs)["href"], [])

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1:]}")
            return
        self.open.pop()
        if tag in ("td", "th"):
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "a":
            self.links.append((self._link[0], "".join(self._link[1])))
            self._link = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._link is not None:
            self._link[1].append(data)


# -- escaping ----------------------------------------------------------------------------

def test_hostile_names_and_paths_are_text_in_the_stats_table():
    hostile_path = 'x"><img src=x onerror=alert(1)>.torrent'
    rows = [report(1, name=HOSTILE, path="a.torrent"), report(2, name=QUOTES, path=hostile_path)]
    out = render.stats_table(rows, NOW, 900, BASE, {"a.torrent": "a <b>.nfo"}, [])
    assert "<script" not in out and "<img" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&quot;&amp;&#x27;" in out
    page = Page(out)
    assert page.errors == []
    assert {tag for tag, _ in page.tags} == {"style", "table", "tr", "th", "td", "a", "p", "small"}
    assert page.links == [
        (f"{BASE}/a%20%3Cb%3E.nfo", "info"),
        (f"{BASE}/a.torrent", HOSTILE),
        (f"{BASE}/x%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.torrent", QUOTES),
    ]


def test_hostile_names_are_text_in_the_rss():
    rows = [report(1, name=HOSTILE, added=NOW), report(2, name=QUOTES, added=NOW - 1)]
    document = rss_document(render.rss_items(rows, BASE))
    items = ET.fromstring(document.encode()).find("channel").findall("item")
    assert [item.findtext("title") for item in items] == [HOSTILE, QUOTES]
    feed = feedparser.parse(document)
    assert feed.bozo == 0
    assert [e.title for e in feed.entries] == [HOSTILE, QUOTES]


def test_control_characters_are_stripped_so_the_xml_stays_well_formed():
    name = "bad\x00\x01\x08\x0b\x0c\x0e\x1f\ufffe\uffffname\twith tab"
    document = rss_document(render.rss_items([report(1, name=name)], BASE))
    item = ET.fromstring(document.encode()).find("channel/item")
    assert item.findtext("title") == "badname\twith tab"
    assert feedparser.parse(document).bozo == 0
    stats = render.stats_table([report(1, name=name)], NOW, 0, BASE, {}, [])
    assert "badname\twith tab</a>" in stats
    assert render.escape("a\x00b\rc\nd") == "ab\rc\nd"


# -- the numbers -----------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [
    (0, "00d00h00m"),
    (59, "00d00h00m"),
    (60, "00d00h01m"),
    (3599, "00d00h59m"),
    (3600, "00d01h00m"),
    (86399, "00d23h59m"),
    (86400, "01d00h00m"),
    (3 * 86400 + 4 * 3600 + 5 * 60 + 59, "03d04h05m"),
    (123 * 86400, "123d00h00m"),
    (-500, "00d00h00m"),  # a clock step back is not a negative age
])
def test_elapsed_is_days_hours_minutes(seconds, text):
    assert render.elapsed(seconds) == text


@pytest.mark.parametrize(("n", "digits", "text"), [
    (0, 2, "0.00 B"),
    (1023, 2, "1023.00 B"),
    (1024, 2, "1.00 KiB"),
    (1536, 2, "1.50 KiB"),
    (6000, 2, "5.86 KiB"),
    (1024**2, 2, "1.00 MiB"),
    (1_051_648, 3, "1.003 MiB"),
    (5 * 1024**3, 2, "5.00 GiB"),
    (1024**4, 2, "1.00 TiB"),
    (3 * 1024**5, 2, "3.00 PiB"),
    (1024**6, 2, "1024.00 PiB"),  # the largest unit keeps growing
    (12.5, 2, "12.50 B"),  # rates are fractional
])
def test_human_bytes_uses_binary_units(n, digits, text):
    assert render.human_bytes(n, digits) == text


def test_average_rate_is_zero_on_a_first_refresh():
    r = report(seeds=2, leechers=3, transferred=10**9)
    assert render.average_rate(r, 0) == 0.0


def test_average_rate_is_transfer_over_downloaders_times_period():
    # 1 seed + 2 leechers + 1 partial seed + (5 - 3) completions since the last refresh = 6
    r = report(seeds=1, leechers=2, partial_seeds=1, downloaded=5, last_done=3,
               transferred=61_000, last_transfer=1_000)
    assert render.average_rate(r, 100) == 60_000 / (6 * 100) == 100.0


def test_average_rate_counts_departed_completers_and_never_divides_by_zero():
    everyone_left = report(downloaded=4, last_done=2, transferred=2_000, last_transfer=0)
    assert render.average_rate(everyone_left, 10) == 2_000 / (2 * 10)
    nobody = report(transferred=500, last_transfer=0)
    assert render.average_rate(nobody, 10) == 50.0
    shrunk = report(seeds=1, transferred=100, last_transfer=900)
    assert render.average_rate(shrunk, 10) == 0.0


def test_average_progress_is_the_mean_completion_of_non_seeds():
    assert render.average_progress(report(seeds=5, leechers=0, partial_seeds=0)) is None
    assert render.average_progress(report(leechers=1, bytes_left=10, size=0)) is None
    assert render.average_progress(report(leechers=2, bytes_left=500, size=1000)) == 0.75
    assert render.average_progress(report(leechers=1, partial_seeds=1, bytes_left=1000, size=1000)) == 0.5
    assert render.average_progress(report(leechers=1, bytes_left=1500, size=1000)) == 0.0


def test_each_row_and_the_totals_row():
    rows = [
        report(3, name="c", path="z/c.torrent", size=3000, seeds=1, leechers=0, partial_seeds=2,
               downloaded=4, transferred=1024**2, added=NOW - 90061),
        report(1, name="a", path="a.torrent", size=1000, seeds=2, leechers=2, downloaded=1,
               transferred=1024, bytes_left=500, added=NOW - 60),
        report(2, name="b", path="b.torrent", size=2000, seeds=0, leechers=1, downloaded=2,
               transferred=2048, bytes_left=500, added=NOW),
    ]
    page = Page(render.stats_table(rows, NOW, 0, BASE, {"b.torrent": "b.txt"}, []))
    assert page.errors == []
    header, *body, totals = page.rows
    assert header == ["current avg. rate", "average progress", "seeds", "leechers", "total transfer",
                      "time elapsed", "times completed", "size", "\xa0", "torrent"]
    assert body == [
        ["0.00 B/s", "75.00 %", "2", "2", "1.000 KiB", "00d00h01m", "1", "1000.00 B", "", "a"],
        ["0.00 B/s", "75.00 %", "0", "1", "2.000 KiB", "00d00h00m", "2", "1.95 KiB", "info", "b"],
        ["0.00 B/s", "100.00 %", "1", "2", "1.000 MiB", "01d01h01m", "4", "2.93 KiB", "", "c"],
    ]
    assert totals == ["", "", "3", "5", "1.003 MiB", "", "7", "5.86 KiB", "", "3 torrents"]


def test_a_torrent_without_leechers_shows_a_dash_and_one_added_by_hand_has_no_link():
    page = Page(render.stats_table([report(1, name="hand", path="/srv/elsewhere/x.torrent")], NOW, 900, BASE, {}, []))
    assert page.rows[1][1] == "\u2013"
    assert page.rows[1][-1] == "hand" and page.links == []
    assert render.rss_items([report(1, path="/srv/elsewhere/x.torrent")], BASE) == (
        f"<generator>tracker_wsgi {render.__version__}</generator>\n"
    )


def test_the_refresh_time_is_shown_in_utc():
    out = render.stats_table([], NOW, 0, BASE, {}, [])
    assert '<p class="bt-refreshed"><small>refreshed 2023-11-14 22:13 UTC</small></p>' in out
    assert Page(out).rows[-1] == ["", "", "0", "0", "0.000 B", "", "0", "0.00 B", "", "0 torrents"]


def test_history_chart_needs_two_samples():
    assert render.history_chart([]) == ""
    assert render.history_chart([(NOW, 1, 2)]) == ""
    chart = render.history_chart([(NOW, 0, 4), (NOW + 900, 2, 0)])
    page = Page(chart)
    assert page.errors == []
    lines = [attrs["points"] for tag, attrs in page.tags if tag == "polyline"]
    # x from 30 to 570, y from 130 (zero) to 30 (the peak, 4)
    assert lines == ["30.0,130.0 570.0,80.0", "30.0,30.0 570.0,130.0"]


# -- through a real refresh: the files the site includes ------------------------------------

def write_torrent(directory: Path, relative: str, name: str) -> bytes:
    info = {b"name": name.encode(), b"length": 4242, b"piece length": 16384, b"pieces": b"\x03" * 20}
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bencode({b"announce": b"http://h/tracker/announce", b"info": info}))
    return hashlib.sha1(bencode(info)).digest()


@pytest.fixture
def site(sqlite_url, shared_dir):
    torrents, output = shared_dir / "torrents", shared_dir / "output"
    torrents.mkdir()
    config = Config(database=sqlite_url, torrent_dir=str(torrents), output_dir=str(output), base_url=BASE)
    store = open_store(sqlite_url, config.peer_timeout)
    store.create_tables()
    yield config, store, torrents, output
    store.close()


def test_rss_feed_parses_with_titles_links_dates_and_enclosures(site):
    config, store, torrents, output = site
    first = write_torrent(torrents, "alpha.torrent", "Älpha & Ω")
    refresh(config, store, now=NOW)
    second = write_torrent(torrents, "sub dir/beta gamma.torrent", "Beta")
    refresh(config, store, force=True, now=NOW + 100)

    items = (output / "bt_rss.inc").read_text(encoding="utf-8")
    assert "<pubDate>Tue, 14 Nov 2023 22:15:00 GMT</pubDate>" in items
    assert "<pubDate>Tue, 14 Nov 2023 22:13:20 GMT</pubDate>" in items
    assert "<lastBuildDate>Tue, 14 Nov 2023 22:15:00 GMT</lastBuildDate>" in items
    for date in re.findall(r"<pubDate>([^<]*)</pubDate>", items):
        assert re.fullmatch(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct"
                            r"|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT", date)
        assert parsedate_to_datetime(date).timestamp() in (NOW, NOW + 100)

    feed = feedparser.parse(rss_document(items))
    assert feed.bozo == 0, feed.get("bozo_exception")
    beta_url, alpha_url = f"{BASE}/sub%20dir/beta%20gamma.torrent", f"{BASE}/alpha.torrent"
    assert [(e.title, e.link) for e in feed.entries] == [("Beta", beta_url), ("Älpha & Ω", alpha_url)]
    assert [e.published_parsed[:6] for e in feed.entries] == [time.gmtime(NOW + 100)[:6], time.gmtime(NOW)[:6]]
    assert [e.id for e in feed.entries] == [f"urn:btih:{second.hex()}", f"urn:btih:{first.hex()}"]
    assert [e.enclosures for e in feed.entries] == [
        [{"href": beta_url, "type": "application/x-bittorrent",
          "length": str((torrents / "sub dir/beta gamma.torrent").stat().st_size)}],
        [{"href": alpha_url, "type": "application/x-bittorrent",
          "length": str((torrents / "alpha.torrent").stat().st_size)}],
    ]


def test_stats_include_is_a_table_and_gains_a_chart_with_two_samples(site):
    config, store, torrents, output = site
    write_torrent(torrents, "a.torrent", "A")
    (torrents / "a.nfo").write_text("about")
    (torrents / "a.html").write_text("<p>about</p>")
    refresh(config, store, now=NOW)
    first = Page((output / "bt_stats.inc").read_text())
    assert first.errors == []
    assert ("table", {"class": "bt-stats"}) in first.tags
    assert "svg" not in {tag for tag, _ in first.tags}
    assert first.links == [(f"{BASE}/a.html", "info"), (f"{BASE}/a.torrent", "A")]
    assert len(first.rows) == 3 and first.rows[-1][-1] == "1 torrents"

    refresh(config, store, force=True, now=NOW + 900)
    second = Page((output / "bt_stats.inc").read_text())
    assert second.errors == []
    assert [attrs.get("class") for tag, attrs in second.tags if tag == "svg"] == ["bt-history"]
    assert len([tag for tag, _ in second.tags if tag == "polyline"]) == 2


# -- atomic replacement -----------------------------------------------------------------------

def test_readers_see_one_whole_version_while_the_file_is_replaced(tmp_path):
    path = tmp_path / "bt_stats.inc"
    versions = (b"a" * 200_000, b"b" * 200_000)
    write_atomically(str(path), versions[0])
    writes, stop = [0], threading.Event()

    def writer():
        while not stop.is_set():
            writes[0] += 1
            write_atomically(str(path), versions[writes[0] % 2])

    thread = threading.Thread(target=writer)
    thread.start()
    seen: collections.Counter = collections.Counter()
    reads, deadline = 0, time.monotonic() + 30
    try:
        while (reads < 500 or writes[0] < 20) and time.monotonic() < deadline:
            data = path.read_bytes()
            reads += 1
            assert data in versions, f"read {len(data)} bytes: {set(data)}"
            seen[data[:1]] += 1
    finally:
        stop.set()
        thread.join()
    assert reads >= 500 and writes[0] >= 20
    assert set(seen) == {b"a", b"b"}  # the reader really raced the writer
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path) == ["bt_stats.inc"]


def test_a_failed_replacement_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "bt_rss.inc"
    write_atomically(str(path), b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomically(str(path), b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["bt_rss.inc"]


def test_the_mode_is_set_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomically(str(tmp_path / "f"), b"x")
        write_atomically(str(tmp_path / "g"), b"x", mode=0o640)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "g").st_mode) == 0o640
