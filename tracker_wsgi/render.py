"""The site's generated files: bt_stats.inc (the stats table and chart, an HTML fragment for
the page's body), its stylesheet bt_stats.css, and bt_rss.inc (RSS items).

The stats markup and its look are template files (tracker_wsgi/templates/, string.Template
syntax), which an admin overrides file by file from `template_dir`. Values reach markup in
one place, `_fill`, which escapes every value that is not itself a filled template; the
RSS items use the same `escape`. Everything but `load_templates` is pure: rows in, text out.

The columns are the original's (BitTorrent::TrackerCGI v0.02, reference §9), with its
bugs fixed: transfer counts each byte once, as its downloader reports it (the original added
uploads and downloads, counting every byte twice), and the rate's denominator includes the
peers that left. Downloads, not uploads: a leecher reports what it got when it completes or
stops (BEP 3 `completed`, `stopped`), while a seed reports what it gave only at its next
regular announce, up to `interval` later; so a new swarm showed 0 B transferred after its
first download, until its seed announced again.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from importlib import resources
from string import Template
from urllib.parse import quote

from . import __version__
from .config import ConfigError
from .model import TorrentReport

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
# Characters XML 1.0 forbids; a torrent name may carry any of them.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

# Each template file and the placeholders it may use; an unknown one is an admin's typo.
STATS_TEMPLATES = {
    "page": ("bt_stats.html", {"rows", "seeds", "leechers", "transferred", "completed", "size",
                               "torrents", "refreshed", "refreshed_iso", "chart"}),
    "row": ("bt_stats_row.html", {"rate", "progress", "seeds", "leechers", "transferred", "elapsed",
                                  "completed", "size", "info", "torrent"}),
    "link": ("bt_stats_link.html", {"href", "text"}),
    "chart": ("bt_stats_chart.svg", {"width", "height", "left", "right", "top", "bottom", "plot_width",
                                     "plot_height", "ticks", "seeds", "leechers", "title", "summary"}),
    "tick": ("bt_stats_tick.svg", {"x1", "y1", "x2", "y2", "text_x", "text_y", "anchor", "label"}),
}
STYLESHEET = "bt_stats.css"  # copied as it is: CSS has no placeholders

# The chart, in SVG user units (pixels at 100%): the plot area leaves room on the left for
# the peer counts, above for the legend, below for the times.
CHART_WIDTH, CHART_HEIGHT = 640, 240
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 48, 616, 40, 200
MAX_COUNT_TICKS = 5  # gridlines up the count axis: enough to read a value off, still far apart
MAX_TIME_TICKS = 8  # labels along the time axis: "14 Nov" is about 40 px; 8 leave room between
FIRST_MARK = 12  # half the width of the mark a first, lone sample is drawn as
# Time axis steps, seconds: whole minutes, hours and days, so the labels are round times.
TIME_STEPS = (60, 300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
              2 * 86400, 7 * 86400)


class Html(str):
    """Markup: a filled template. `_fill` inserts it as it is; any other value is escaped."""


@dataclass(frozen=True)
class Templates:
    page: Template
    row: Template
    link: Template
    chart: Template
    tick: Template
    stylesheet: str


def load_templates(directory: str = "") -> Templates:
    """The stats templates: each file from `directory` (the admin's template_dir) when it is
    there, else the packaged one. Raises ConfigError naming the file and what to fix."""
    if directory and not os.path.isdir(directory):
        raise ConfigError(f"template_dir = {directory!r} is not a directory; create it or unset template_dir")

    def read(name: str) -> tuple[str, str]:
        path = os.path.join(directory, name) if directory else ""
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    return path, f.read()
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read the template: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise ConfigError(f"{path}: the template is not UTF-8 text") from None
        return name, resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")

    def template(name: str, allowed: set[str]) -> Template:
        path, text = read(name)
        # Fragments go inside lines of their own; the file's final newline is the editor's.
        parsed = Template(text.removesuffix("\n"))
        if not parsed.is_valid():
            raise ConfigError(f"{path}: a '$' starts no placeholder; write $$ for a dollar sign")
        unknown = sorted(set(parsed.get_identifiers()) - allowed)
        if unknown:
            known = ", ".join("$" + p for p in sorted(allowed))
            raise ConfigError(f"{path}: unknown placeholder ${unknown[0]}; this template knows {known}")
        return parsed

    return Templates(
        **{field: template(name, allowed) for field, (name, allowed) in STATS_TEMPLATES.items()},
        stylesheet=read(STYLESHEET)[1],
    )


def escape(text: str) -> str:
    """Text for HTML or XML content and attribute values."""
    return html.escape(_XML_FORBIDDEN.sub("", text), quote=True)


def _fill(template: Template, **values: object) -> Html:
    """The one place values meet markup: text is escaped, filled templates go in as they are."""
    return Html(template.substitute(
        {key: value if isinstance(value, Html) else escape(str(value)) for key, value in values.items()}
    ))


def human_bytes(n: float) -> str:
    """Three significant figures in binary units: 1000 B, 1.50 KiB, 19.5 MiB, 700 GiB."""
    for unit in UNITS:
        decimals = 0 if unit == "B" or n >= 99.95 else 1 if n >= 9.995 else 2
        text = f"{n:.{decimals}f}"
        if float(text) < 1024 or unit == UNITS[-1]:  # 1023.7 B shows as 1.00 KiB, not 1024 B
            return f"{text} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def elapsed(seconds: int) -> str:
    """A duration as people write it, in its two largest units, rounded down: "6 min",
    "2 h 5 min", "3 d 4 h" (the original's 03d04h05m had to be decoded)."""
    minutes = max(0, seconds) // 60
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min"


def torrent_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + quote(path)


def average_rate(r: TorrentReport, period: int) -> float:
    """Bytes per second per downloader over the last refresh period: the transfer since the
    last snapshot over (peers now + completions since) x seconds. Zero on a first refresh."""
    if period <= 0:
        return 0.0
    downloaders = r.seeds + r.leechers + r.partial_seeds + max(0, r.downloaded - r.last_done)
    return max(0, r.transferred - r.last_transfer) / (max(1, downloaders) * period)


def average_progress(r: TorrentReport) -> float | None:
    """Mean completion of the peers that are not seeds, or None when there are none."""
    incomplete = r.leechers + r.partial_seeds
    if incomplete == 0 or r.size <= 0:
        return None
    return max(0.0, 1 - r.bytes_left / (incomplete * r.size))


def stats_table(
    reports: Sequence[TorrentReport],
    now: int,
    period: int,
    base_url: str,
    info_links: dict[str, str],
    history: Sequence[tuple[int, int, int]],
    templates: Templates,
) -> str:
    """bt_stats.inc: the table, one row per torrent sorted by path, a totals row, the
    refresh time, and a chart of seeds and leechers over time."""
    reports = sorted(reports, key=lambda r: (r.path, r.name))
    rows = []
    for r in reports:
        progress = average_progress(r)
        url = torrent_url(base_url, r.path) if r.path and not r.path.startswith("/") else ""
        name = r.name or r.path.rsplit("/", 1)[-1] or r.info_hash.hex()
        info = info_links.get(r.path)
        rows.append(_fill(
            templates.row,
            rate=human_bytes(average_rate(r, period)) + "/s",
            progress="\u2013" if progress is None else f"{progress * 100:.2f} %",
            seeds=r.seeds,
            leechers=r.leechers + r.partial_seeds,
            transferred=human_bytes(r.transferred),
            elapsed=elapsed(now - r.added),
            completed=r.downloaded,
            size=human_bytes(r.size),
            info=_fill(templates.link, href=torrent_url(base_url, info), text="info") if info else "",
            torrent=_fill(templates.link, href=url, text=name) if url else name,
        ))
    refreshed = datetime.fromtimestamp(now, UTC)
    return _fill(
        templates.page,
        rows=Html("\n".join(rows)),
        seeds=sum(r.seeds for r in reports),
        leechers=sum(r.leechers + r.partial_seeds for r in reports),
        transferred=human_bytes(sum(r.transferred for r in reports)),
        completed=sum(r.downloaded for r in reports),
        size=human_bytes(sum(r.size for r in reports)),
        torrents=plural(len(reports), "torrent"),
        refreshed=f"{refreshed:%Y-%m-%d %H:%M} UTC",
        refreshed_iso=f"{refreshed:%Y-%m-%dT%H:%M:%SZ}",
        chart=history_chart(history, templates),
    ) + "\n"


def count_step(peak: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that reaches `peak` in MAX_COUNT_TICKS steps."""
    power = 1
    while True:
        for step in (power, 2 * power, 5 * power):
            if peak <= step * MAX_COUNT_TICKS:
                return step
        power *= 10


def time_step(span: int) -> int:
    """The shortest of TIME_STEPS that crosses `span` seconds in MAX_TIME_TICKS steps."""
    return next((s for s in TIME_STEPS if span <= s * MAX_TIME_TICKS), TIME_STEPS[-1])


def _utc(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _time_label(timestamp: int, step: int) -> str:
    """A day for daily steps and at midnight, else the time of day."""
    when = _utc(timestamp)
    return f"{when.day} {when:%b}" if step >= 86400 or timestamp % 86400 == 0 else f"{when:%H:%M}"


def _coordinate(value: float) -> str:
    return f"{value:.1f}"


def step_points(samples: Sequence[tuple[float, float]]) -> str:
    """Polyline points for counts sampled once per refresh, each drawn over the time since the
    sample before (as RRDtool draws them): up or down at the earlier sample's time, then across,
    so a step never looks like a ramp and the latest counts span the last interval."""
    points: list[tuple[float, float]] = []
    for x, y in samples:
        if points and points[-1][1] != y:
            points.append((points[-1][0], y))
        points.append((x, y))
    return " ".join(f"{_coordinate(x)},{_coordinate(y)}" for x, y in points)


def history_chart(samples: Sequence[tuple[int, int, int]], templates: Templates) -> Html:
    """An SVG chart of seeds and leechers per history sample (time, seeds, leechers), with
    both axes, gridlines, a legend and a caption saying what it shows. Each count is drawn as
    steps (step_points). The first refresh has one sample: its
    counts are short marks in the middle, and the caption says the history starts there."""
    if not samples:
        return Html("")
    t0, t1 = samples[0][0], samples[-1][0]
    span = t1 - t0
    peak = max(max(seeds, leechers) for _, seeds, leechers in samples)
    step = count_step(peak)
    top = max(step, -(-peak // step) * step)

    def x(timestamp: int) -> float:
        if not span:
            return (PLOT_LEFT + PLOT_RIGHT) / 2
        return PLOT_LEFT + (timestamp - t0) / span * (PLOT_RIGHT - PLOT_LEFT)

    def y(count: int) -> float:
        return PLOT_BOTTOM - count / top * (PLOT_BOTTOM - PLOT_TOP)

    ticks = [
        _fill(templates.tick, x1=PLOT_LEFT, y1=_coordinate(y(count)), x2=PLOT_RIGHT, y2=_coordinate(y(count)),
              text_x=PLOT_LEFT - 6, text_y=_coordinate(y(count) + 4), anchor="end", label=count)
        for count in range(0, top + 1, step)
    ]
    seconds = time_step(max(1, span))
    # One sample: its own time is the axis's only label.
    times = range(-(-t0 // seconds) * seconds, t1 + 1, seconds) if span else [t0]
    ticks += [
        _fill(templates.tick, x1=_coordinate(x(when)), y1=PLOT_TOP, x2=_coordinate(x(when)), y2=PLOT_BOTTOM + 4,
              text_x=_coordinate(x(when)), text_y=PLOT_BOTTOM + 18, anchor="middle",
              label=_time_label(when, seconds))
        for when in times
    ]

    def line(column: int) -> str:
        if not span:  # a point has no length: a mark either side of it
            return step_points([(x(t0) + dx, y(samples[0][column])) for dx in (-FIRST_MARK, FIRST_MARK)])
        return step_points([(x(row[0]), y(row[column])) for row in samples])

    def when(timestamp: int) -> str:
        return f"{_utc(timestamp).day} {_utc(timestamp):%b %Y %H:%M}"

    _, seeds_now, leechers_now = samples[-1]
    now = f"now {plural(seeds_now, 'seed')} and {plural(leechers_now, 'leecher')}"
    if span:
        title = f"Seeds and leechers, {when(t0)} to {when(t1)} UTC"
        summary = (
            f"Seeds and leechers from {when(t0)} to {when(t1)} UTC, one sample per refresh, each "
            f"drawn over the time since the one before: {now}; at most {plural(max(seeds for _, seeds, _ in samples), 'seed')} and "
            f"{plural(max(leechers for _, _, leechers in samples), 'leecher')}."
        )
    else:
        title = f"Seeds and leechers, {when(t0)} UTC"
        summary = (f"Seeds and leechers at {when(t0)} UTC, the first sample: {now}. "
                   "Each refresh adds a sample from here on.")
    return _fill(
        templates.chart,
        width=CHART_WIDTH, height=CHART_HEIGHT,
        left=PLOT_LEFT, right=PLOT_RIGHT, top=PLOT_TOP, bottom=PLOT_BOTTOM,
        plot_width=PLOT_RIGHT - PLOT_LEFT, plot_height=PLOT_BOTTOM - PLOT_TOP,
        ticks=Html("\n".join(ticks)),
        seeds=line(1), leechers=line(2),
        title=title,
        summary=summary,
    )


# BEP 9 URNs: urn:btih: and a v1 SHA-1 in hex; urn:btmh: and a v2 SHA-256 as a multihash,
# hex of <0x12 sha2-256><0x20 bytes long><digest>.
SHA256_MULTIHASH_PREFIX = "1220"
DUBLIN_CORE = "http://purl.org/dc/elements/1.1/"


def info_hash_urns(r: TorrentReport) -> list[str]:
    """The torrent's info hashes as URNs: the v1 one (v1 and hybrid torrents), then the v2."""
    urns = []
    if r.info_sha256 is None or r.info_hash != r.info_sha256[:20]:
        urns.append(f"urn:btih:{r.info_hash.hex()}")
    if r.info_sha256 is not None:
        urns.append(f"urn:btmh:{SHA256_MULTIHASH_PREFIX}{r.info_sha256.hex()}")
    return urns


def rss_items(reports: Sequence[TorrentReport], base_url: str) -> str:
    """bt_rss.inc: the inside of the site's <channel>: its link (the site at base_url, so
    the rss.xml an admin copies names no host), then the items, newest torrent first. Each
    item's guid is its first info hash URN, and a dc:identifier names each (the namespace is
    declared on the element, so a site's rss.xml needs no change)."""
    listed = sorted((r for r in reports if r.path and not r.path.startswith("/")),
                    key=lambda r: (-r.added, r.path))
    out = [f"<link>{escape(base_url.rstrip('/') + '/')}</link>\n",
           f"<generator>tracker_wsgi {__version__}</generator>\n"]
    if listed:
        out.append(f"<lastBuildDate>{_rfc822(listed[0].added)}</lastBuildDate>\n")
    for r in listed:
        url = escape(torrent_url(base_url, r.path))
        urns = info_hash_urns(r)
        identifiers = "".join(f'<dc:identifier xmlns:dc="{DUBLIN_CORE}">{urn}</dc:identifier>' for urn in urns)
        out.append(
            "<item>"
            f"<title>{escape(r.name or r.path)}</title>"
            f"<link>{url}</link>"
            f'<guid isPermaLink="false">{urns[0]}</guid>{identifiers}'
            f"<pubDate>{_rfc822(r.added)}</pubDate>"
            # RSS 2.0: length is the enclosure's own size, the .torrent file (the original
            # gave the content's size).
            f'<enclosure url="{url}" length="{r.file_size}" type="application/x-bittorrent"/>'
            "</item>\n"
        )
    return "".join(out)


def _rfc822(timestamp: int) -> str:
    return format_datetime(datetime.fromtimestamp(timestamp, UTC), usegmt=True)
