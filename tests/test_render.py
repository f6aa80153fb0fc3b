"""The include files (tracker_wsgi/render.py) and how they reach the disk (files.py):
bt_stats.inc is an HTML table and chart, bt_rss.inc the items of an RSS 2.0 channel. Names
come from .torrent files, that is from anyone: they must always arrive as text."""

from __future__ import annotations

import collections
import hashlib
import os
import random
import re
import stat
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path

import feedparser
import libtorrent as lt
import pytest
from bencoder import bencode

from tracker_wsgi import render
from tracker_wsgi.config import Config, ConfigError, from_dict
from tracker_wsgi.files import write_atomically
from tracker_wsgi.model import TorrentReport
from tracker_wsgi.refresh import refresh
from tracker_wsgi.store import open_store

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RSS = REPO / "apache" / "sample-site" / "rss.xml"
SAMPLE_INDEX = REPO / "apache" / "sample-site" / "index.shtml"
SAMPLE_SITE_CSS = REPO / "apache" / "sample-site" / "site.css"
NOW = 1_700_000_000  # Tue, 14 Nov 2023 22:13:20 GMT
BASE = "http://h/torrents"
HOSTILE = "<script>alert(1)</script>"
QUOTES = "\"&'"
PACKAGED = render.load_templates()  # the templates shipped in tracker_wsgi/templates/


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
    return ('<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
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
    out = render.stats_table(rows, NOW, 900, BASE, {"a.torrent": "a <b>.nfo"}, [], PACKAGED)
    assert "<script" not in out and "<img" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&quot;&amp;&#x27;" in out
    page = Page(out)
    assert page.errors == []
    # No <style>: the include lands in the page's body; its look is bt_stats.css.
    assert {tag for tag, _ in page.tags} == {"table", "thead", "tbody", "tfoot", "tr", "th", "td", "span",
                                             "a", "p", "time"}
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
    stats = render.stats_table([report(1, name=name)], NOW, 0, BASE, {}, [], PACKAGED)
    assert "badname\twith tab</a>" in stats
    assert render.escape("a\x00b\rc\nd") == "ab\rc\nd"


# -- the numbers -----------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 min"),
    (59, "0 min"),
    (60, "1 min"),
    (6 * 60 + 30, "6 min"),
    (3599, "59 min"),
    (3600, "1 h"),
    (2 * 3600 + 5 * 60 + 59, "2 h 5 min"),
    (86399, "23 h 59 min"),
    (86400, "1 d"),
    (86400 + 59 * 60, "1 d"),  # two units, rounded down: the minutes of a day-old torrent are noise
    (3 * 86400 + 4 * 3600 + 5 * 60 + 59, "3 d 4 h"),
    (123 * 86400, "123 d"),
    (-500, "0 min"),  # a clock step back is not a negative age
])
def test_elapsed_is_readable_in_its_two_largest_units(seconds, text):
    assert render.elapsed(seconds) == text


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"),
    (1000, "1000 B"),  # whole bytes, never "1000.000 B"
    (1023, "1023 B"),
    (1023.7, "1.00 KiB"),  # would round to 1024 B: the next unit
    (1024, "1.00 KiB"),
    (1536, "1.50 KiB"),
    (6000, "5.86 KiB"),
    (10 * 1024 - 3, "10.0 KiB"),  # three significant figures
    (19.5 * 1024, "19.5 KiB"),
    (99.96 * 1024, "100 KiB"),
    (1023 * 1024, "1023 KiB"),
    (1024**2 - 1, "1.00 MiB"),
    (1_051_648, "1.00 MiB"),
    (700 * 1024**2, "700 MiB"),
    (5 * 1024**3, "5.00 GiB"),
    (1024**4, "1.00 TiB"),
    (3 * 1024**5, "3.00 PiB"),
    (1024**6, "1024 PiB"),  # the largest unit keeps growing
    (12.4, "12 B"),  # rates are fractional
])
def test_human_bytes_uses_binary_units_and_three_figures(n, text):
    assert render.human_bytes(n) == text


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
    page = Page(render.stats_table(rows, NOW, 0, BASE, {"b.torrent": "b.txt"}, [], PACKAGED))
    assert page.errors == []
    header, *body, totals = page.rows
    # The original's columns; its blank header over the info links is read out, not shown.
    assert header == ["current avg. rate", "average progress", "seeds", "leechers", "total transfer",
                      "time elapsed", "times completed", "size", "info", "torrent"]
    assert ("span", {"class": "bt-hidden"}) in page.tags
    assert body == [
        ["0 B/s", "75.00 %", "2", "2", "1.00 KiB", "1 min", "1", "1000 B", "", "a"],
        ["0 B/s", "75.00 %", "0", "1", "2.00 KiB", "0 min", "2", "1.95 KiB", "info", "b"],
        ["0 B/s", "100.00 %", "1", "2", "1.00 MiB", "1 d 1 h", "4", "2.93 KiB", "", "c"],
    ]
    assert totals == ["", "", "3", "5", "1.00 MiB", "", "7", "5.86 KiB", "", "3 torrents"]


def test_the_totals_count_one_torrent_or_several():
    for n, text in ((0, "0 torrents"), (1, "1 torrent"), (2, "2 torrents")):
        rows = [report(i) for i in range(1, n + 1)]
        assert Page(render.stats_table(rows, NOW, 0, BASE, {}, [], PACKAGED)).rows[-1][-1] == text


def test_the_rate_is_per_second_and_readable():
    r = report(seeds=1, leechers=1, transferred=2 * 900 * 1536, last_transfer=0)
    assert Page(render.stats_table([r], NOW, 900, BASE, {}, [], PACKAGED)).rows[1][0] == "1.50 KiB/s"


def test_a_torrent_without_leechers_shows_a_dash_and_one_added_by_hand_has_no_link():
    hand = report(1, name="hand", path="/srv/elsewhere/x.torrent")
    page = Page(render.stats_table([hand], NOW, 900, BASE, {}, [], PACKAGED))
    assert page.rows[1][1] == "\u2013"
    assert page.rows[1][-1] == "hand" and page.links == []
    assert render.rss_items([report(1, path="/srv/elsewhere/x.torrent")], BASE) == (
        f"<link>{BASE}/</link>\n<generator>tracker_wsgi {render.__version__}</generator>\n"
    )


def test_the_refresh_time_is_shown_in_utc():
    out = render.stats_table([], NOW, 0, BASE, {}, [], PACKAGED)
    assert ('<p class="bt-refreshed">refreshed <time datetime="2023-11-14T22:13:20Z">2023-11-14 22:13 UTC'
            '</time></p>') in out
    assert Page(out).rows[-1] == ["", "", "0", "0", "0 B", "", "0", "0 B", "", "0 torrents"]


# -- the chart --------------------------------------------------------------------------------

SVG = "{http://www.w3.org/2000/svg}"


class Chart:
    """The chart as a reader sees it: the plot area, the labelled gridlines, the two lines."""

    def __init__(self, samples):
        self.markup = render.history_chart(samples, PACKAGED)
        self.figure = ET.fromstring(self.markup)  # the SVG, and so the whole figure, is XML
        self.svg = self.figure.find(f"{SVG}svg")
        axes = next(p.get("d") for p in self.svg.iter(f"{SVG}path"))
        self.left, self.top, self.bottom, self.right = map(
            float, re.fullmatch(r"M([\d.]+),([\d.]+) V([\d.]+) H([\d.]+)", axes).groups())
        self.counts: dict[str, float] = {}  # label -> y of its gridline
        self.times: dict[str, float] = {}  # label -> x of its gridline
        children = list(self.svg)
        for line, label in zip(children, children[1:]):
            if line.tag == f"{SVG}line" and label.tag == f"{SVG}text" and line.get("stroke") == "#ddd":
                x1, y1, x2, y2 = (float(line.get(a)) for a in ("x1", "y1", "x2", "y2"))
                if y1 == y2:
                    self.counts[label.text] = y1
                else:
                    assert x1 == x2
                    self.times[label.text] = x1
        self.seeds, self.leechers = self.svg.findall(f"{SVG}polyline")

    @staticmethod
    def points(polyline) -> list[tuple[float, float]]:
        return [tuple(map(float, p.split(","))) for p in polyline.get("points").split()]


def test_no_samples_no_chart():
    assert render.history_chart([], PACKAGED) == ""


def test_the_first_sample_is_drawn_and_the_caption_says_it_is_the_first():
    """The first refresh records one sample: the page shows it, not an empty space."""
    chart = Chart([(NOW, 1, 2)])
    middle = (chart.left + chart.right) / 2
    assert list(chart.times) == ["22:13"] and chart.times["22:13"] == middle
    for polyline, count in ((chart.seeds, "1"), (chart.leechers, "2")):
        (x1, y1), (x2, y2) = Chart.points(polyline)
        assert y1 == y2 == chart.counts[count] and x1 < middle < x2 and x2 - x1 >= 10
    assert chart.figure.find("figcaption").text == (
        "Seeds and leechers at 14 Nov 2023 22:13 UTC, the first sample: now 1 seed and 2 leechers. "
        "Each refresh adds a sample from here on.")
    assert Page(chart.markup).errors == []


def test_each_count_is_drawn_as_steps_over_the_time_since_the_sample_before():
    chart = Chart([(NOW, 0, 4), (NOW + 900, 2, 0), (NOW + 1800, 4, 4)])
    assert list(chart.counts) == ["0", "1", "2", "3", "4"]
    assert chart.counts["0"] == chart.bottom and chart.counts["4"] == chart.top
    middle = (chart.left + chart.right) / 2
    y = chart.counts
    # Straight up or down at the earlier sample's time, then across to the sample: the
    # latest counts span the last interval, up to the right edge.
    assert Chart.points(chart.seeds) == [(chart.left, y["0"]), (chart.left, y["2"]), (middle, y["2"]),
                                         (middle, y["4"]), (chart.right, y["4"])]
    assert Chart.points(chart.leechers) == [(chart.left, y["4"]), (chart.left, y["0"]), (middle, y["0"]),
                                            (middle, y["4"]), (chart.right, y["4"])]
    # NOW is 22:13:20 UTC: round five minutes, each where its time falls on the axis.
    assert list(chart.times) == ["22:15", "22:20", "22:25", "22:30", "22:35", "22:40"]
    for label, x in chart.times.items():
        hour, minute = map(int, label.split(":"))
        offset = (hour * 3600 + minute * 60) - NOW % 86400
        assert x == pytest.approx(chart.left + offset / 1800 * (chart.right - chart.left), abs=0.05)


def test_no_segment_of_a_line_is_a_ramp():
    """A week of samples, counts changing at random: every segment is level or upright."""
    rng = random.Random(19)
    chart = Chart([(NOW + i * 900, rng.randrange(50), rng.randrange(50)) for i in range(7 * 96)])
    for polyline in (chart.seeds, chart.leechers):
        points = Chart.points(polyline)
        assert len(points) > 7 * 96
        assert all(a[0] == b[0] or a[1] == b[1] for a, b in zip(points, points[1:]))


@pytest.mark.parametrize(("peak", "labels"), [
    (0, ["0", "1"]),
    (1, ["0", "1"]),
    (4, ["0", "1", "2", "3", "4"]),
    (5, ["0", "1", "2", "3", "4", "5"]),
    (7, ["0", "2", "4", "6", "8"]),
    (12, ["0", "5", "10", "15"]),
    (1234, ["0", "500", "1000", "1500"]),
])
def test_the_count_axis_has_a_round_scale(peak, labels):
    assert list(Chart([(NOW, peak, 0), (NOW + 900, 0, 0)]).counts) == labels


def test_the_time_axis_shows_days_for_a_week_and_hours_for_a_day():
    week = [(NOW - 7 * 86400 + i * 900, i % 5, i % 3) for i in range(7 * 96 + 1)]
    assert list(Chart(week).times) == ["8 Nov", "9 Nov", "10 Nov", "11 Nov", "12 Nov", "13 Nov", "14 Nov"]
    day = [(NOW - 86400 + i * 900, 1, 1) for i in range(97)]
    assert list(Chart(day).times) == ["14 Nov", "03:00", "06:00", "09:00", "12:00", "15:00", "18:00", "21:00"]


def test_equal_seeds_and_leechers_stay_distinguishable_and_the_legend_says_which_is_which():
    chart = Chart([(NOW, 3, 3), (NOW + 900, 5, 5)])
    assert chart.seeds.get("points") == chart.leechers.get("points")

    def style(element):
        return tuple(element.get(a) for a in ("stroke", "stroke-width", "stroke-dasharray"))

    # Leechers are drawn over seeds, narrower and dashed: the seeds' wider line shows through.
    assert style(chart.seeds)[0] != style(chart.leechers)[0]
    assert float(chart.leechers.get("stroke-width")) < float(chart.seeds.get("stroke-width"))
    assert chart.leechers.get("stroke-dasharray") and not chart.seeds.get("stroke-dasharray")
    legend = {}
    for group in chart.svg.iter(f"{SVG}g"):
        children = list(group)
        legend.update({label.text: style(line) for line, label in zip(children, children[1:])
                       if line.tag == f"{SVG}line" and label.tag == f"{SVG}text"})
    assert legend == {"seeds": style(chart.seeds), "leechers": style(chart.leechers)}


def test_the_chart_has_a_title_and_a_caption_that_says_what_it_shows():
    chart = Chart([(NOW, 1, 0), (NOW + 900, 3, 1), (NOW + 1800, 2, 1)])
    assert chart.svg.get("role") == "img"
    title = next(e for e in chart.svg.iter(f"{SVG}title") if e.get("id") == chart.svg.get("aria-labelledby"))
    assert title.text == "Seeds and leechers, 14 Nov 2023 22:13 to 14 Nov 2023 22:43 UTC"
    caption = chart.figure.find("figcaption")
    assert caption.get("id") == chart.svg.get("aria-describedby")
    assert caption.text == ("Seeds and leechers from 14 Nov 2023 22:13 to 14 Nov 2023 22:43 UTC, one sample "
                            "per refresh, each drawn over the time since the one before: now 2 seeds and 1 "
                            "leecher; at most 3 seeds and 1 leecher.")


# -- the admin's templates --------------------------------------------------------------------

def test_an_admins_template_replaces_the_packaged_one_file_by_file(tmp_path):
    row = '<tr class="mine"><td>$seeds</td><td class="name">$torrent</td></tr>\n'
    (tmp_path / "bt_stats_row.html").write_text(row)
    (tmp_path / "bt_stats.css").write_text("table.bt-stats { color: navy; }\n")
    templates = render.load_templates(str(tmp_path))
    out = render.stats_table([report(1, name=HOSTILE, seeds=7)], NOW, 0, BASE, {}, [], templates)
    page = Page(out)
    assert page.errors == []
    assert ("tr", {"class": "mine"}) in page.tags  # the admin's row
    assert ("table", {"class": "bt-stats"}) in page.tags  # the packaged page around it
    assert page.rows[1] == ["7", HOSTILE]  # values are escaped whatever the template
    assert "<script" not in out
    assert templates.stylesheet == "table.bt-stats { color: navy; }\n"
    assert render.load_templates().stylesheet != templates.stylesheet


@pytest.mark.parametrize(("file", "text", "message"), [
    ("bt_stats_row.html", "<tr><td>$sede</td></tr>",
     "bt_stats_row.html: unknown placeholder $sede; this template knows"),
    ("bt_stats.html", "<p>costs $5</p>", "bt_stats.html: a '$' starts no placeholder; write $$ for a dollar sign"),
])
def test_a_template_mistake_is_one_line_naming_the_file(tmp_path, file, text, message):
    (tmp_path / file).write_text(text)
    with pytest.raises(ConfigError) as caught:
        render.load_templates(str(tmp_path))
    assert str(caught.value).startswith(f"{tmp_path}/{message}") and "\n" not in str(caught.value)


def test_template_dir_is_an_absolute_directory(tmp_path):
    assert from_dict({"template_dir": str(tmp_path)}).template_dir == str(tmp_path)
    assert from_dict({}).template_dir == ""
    with pytest.raises(ConfigError, match="template_dir = 'templates' is not allowed; .* absolute path"):
        from_dict({"template_dir": "templates"})
    with pytest.raises(ConfigError, match="template_dir = '/nowhere/x' is not a directory"):
        render.load_templates("/nowhere/x")


# -- valid HTML: the Nu Html Checker (the W3C's validator) -------------------------------------

# Installed by scripts/bootstrap --test (npm's vnu-jar, run by Java).
VNU_JAR = Path(sys.prefix) / "vnu" / "node_modules" / "vnu-jar" / "build" / "dist" / "vnu.jar"


def nu_check(*paths: Path) -> list[str]:
    """Every error and warning the Nu Html Checker finds in these HTML and CSS files."""
    assert VNU_JAR.exists(), f"{VNU_JAR} is missing: run scripts/bootstrap --test"
    result = subprocess.run(
        ["java", "-jar", str(VNU_JAR), "--also-check-css", "--format", "gnu", *map(str, paths)],
        capture_output=True, text=True, timeout=120,
    )
    return result.stderr.splitlines() + ([f"exit {result.returncode}"] if result.returncode else [])


def sample_page(include: str) -> str:
    """The shipped index.shtml with the include in place, as Apache's SSI serves it."""
    return re.sub(r"<!--#include[^>]*-->", lambda _: include, SAMPLE_INDEX.read_text())


def test_the_sample_page_with_its_include_and_the_stylesheets_are_valid(tmp_path):
    rows = [
        report(1, name=HOSTILE, path="a b/c.torrent", seeds=3, leechers=2, bytes_left=10, transferred=5 << 20),
        report(2, name=QUOTES, path='x"><img src=x>.torrent'),
        report(3, name="hand", path="/srv/elsewhere/x.torrent", leechers=1, bytes_left=1000),
    ]
    history = [(NOW - 7 * 86400 + i * 900, i % 7, i % 4) for i in range(7 * 96 + 1)]
    full = tmp_path / "full.html"
    info_links = {"a b/c.torrent": "a b/c.nfo"}
    full.write_text(sample_page(render.stats_table(rows, NOW, 900, BASE, info_links, history, PACKAGED)))
    empty = tmp_path / "empty.html"
    # A first refresh: no torrents yet, one history sample.
    empty.write_text(sample_page(render.stats_table([], NOW, 0, BASE, {}, [(NOW, 0, 0)], PACKAGED)))
    stylesheet = tmp_path / "bt_stats.css"
    stylesheet.write_text(render.load_templates().stylesheet)
    assert nu_check(full, empty, stylesheet, SAMPLE_SITE_CSS) == []


def test_the_checker_finds_what_the_old_include_did_wrong(tmp_path):
    """The check can fail: a <style> in the body (as the include once had) is an error."""
    page = tmp_path / "old.html"
    page.write_text(sample_page("<p>x</p>\n<style>td { color: red; }</style>\n<table><tr><td>1</td></tr></table>"))
    assert any("style" in message for message in nu_check(page))


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
    # The channel links the site the config names, not the sample's placeholder host.
    channel = ET.fromstring(rss_document(items).encode()).find("channel")
    assert [link.text for link in channel.findall("link")] == [f"{BASE}/"]
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


def libtorrent_torrent(directory: Path, name: str, flags: int) -> tuple[bytes, lt.info_hash_t]:
    """A .torrent as a real client makes it: libtorrent's hybrid (flags 0), v1-only or v2-only."""
    content = directory / name
    content.write_bytes(name.encode() * 5000)
    creator = lt.create_torrent(lt.list_files(str(content)), 0, flags)
    creator.add_tracker("http://h/tracker/announce")
    lt.set_piece_hashes(creator, str(directory))
    data = lt.bencode(creator.generate())
    return data, lt.torrent_info(lt.bdecode(data)).info_hashes()


@pytest.mark.parametrize("db", ["sqlite", "mysql"])
def test_rss_guids_name_the_v1_hash_as_btih_and_the_v2_hash_as_btmh(db, request, shared_dir, tmp_path):
    """BEP 9: urn:btih: and the SHA-1 of a v1 or hybrid torrent; urn:btmh: and the whole
    SHA-256 as a multihash (1220 + 64 hex digits), never the 20 bytes trackers see."""
    url = request.getfixturevalue(f"{db}_url")
    torrents = shared_dir / "torrents"
    torrents.mkdir()
    config = Config(database=url, torrent_dir=str(torrents), output_dir=str(shared_dir / "output"), base_url=BASE)
    store = open_store(url, config.peer_timeout)
    store.create_tables()
    made = {}
    for added, (name, flags) in enumerate([("hybrid", 0), ("v1", lt.create_torrent.v1_only),
                                           ("v2", lt.create_torrent.v2_only)]):
        data, hashes = libtorrent_torrent(tmp_path, name, flags)
        (torrents / f"{name}.torrent").write_bytes(data)
        made[name] = hashes
        refresh(config, store, force=True, now=NOW + added)
    store.close()
    document = rss_document((shared_dir / "output" / "bt_rss.inc").read_text())
    dc = "{http://purl.org/dc/elements/1.1/}"
    items = {item.findtext("title"): item for item in ET.fromstring(document.encode()).iter("item")}
    btih, btmh = {}, {}
    for name, hashes in made.items():
        btih[name] = f"urn:btih:{hashes.v1.to_bytes().hex()}"
        btmh[name] = f"urn:btmh:1220{hashes.v2.to_bytes().hex()}"
        assert len(btmh[name]) == len("urn:btmh:") + 4 + 64
    assert made["v1"].has_v2() is False and made["v2"].has_v1() is False and made["hybrid"].has_v1()
    assert {name: (item.findtext("guid"), [e.text for e in item.iter(f"{dc}identifier")])
            for name, item in items.items()} == {
        "hybrid": (btih["hybrid"], [btih["hybrid"], btmh["hybrid"]]),
        "v1": (btih["v1"], [btih["v1"]]),
        "v2": (btmh["v2"], [btmh["v2"]]),
    }
    feed = feedparser.parse(document)
    assert feed.bozo == 0 and sorted(e.id for e in feed.entries) == sorted([btih["hybrid"], btih["v1"], btmh["v2"]])


def test_stats_include_is_a_table_and_a_chart_from_the_first_refresh_on(site):
    config, store, torrents, output = site
    write_torrent(torrents, "a.torrent", "A")
    (torrents / "a.nfo").write_text("about")
    (torrents / "a.html").write_text("<p>about</p>")
    refresh(config, store, now=NOW)
    first = Page((output / "bt_stats.inc").read_text())
    assert first.errors == []
    assert ("table", {"class": "bt-stats"}) in first.tags
    assert first.links == [(f"{BASE}/a.html", "info"), (f"{BASE}/a.torrent", "A")]
    assert len(first.rows) == 3 and first.rows[-1][-1] == "1 torrent"
    # One sample so far: drawn, and captioned as the first.
    assert [attrs.get("class") for tag, attrs in first.tags if tag == "figure"] == ["bt-history"]
    assert "the first sample" in (output / "bt_stats.inc").read_text()

    refresh(config, store, force=True, now=NOW + 900)
    second = Page((output / "bt_stats.inc").read_text())
    assert second.errors == []
    assert [attrs.get("class") for tag, attrs in second.tags if tag == "figure"] == ["bt-history"]
    assert len([tag for tag, _ in second.tags if tag == "polyline"]) == 2
    assert "the first sample" not in (output / "bt_stats.inc").read_text()
    # The page's stylesheet, beside the include: the packaged one.
    assert (output / "bt_stats.css").read_text() == render.load_templates().stylesheet


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
