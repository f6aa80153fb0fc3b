"""The two include files for the site: bt_stats.inc (HTML table and chart) and bt_rss.inc
(RSS items). Pure: rows in, text out. All HTML and XML escaping happens here and only here.

The columns are the original's (BitTorrent::TrackerCGI v0.02, reference §9), with its
bugs fixed: transfer counts uploaded bytes only (the original added uploads and downloads,
counting every byte twice), and the rate's denominator includes the peers that left.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from email.utils import format_datetime
from urllib.parse import quote

from . import __version__
from .model import TorrentReport

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
# Characters XML 1.0 forbids; a torrent name may carry any of them.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
CHART_WIDTH, CHART_HEIGHT = 600, 160


def escape(text: str) -> str:
    """Text for HTML or XML content and attribute values."""
    return html.escape(_XML_FORBIDDEN.sub("", text), quote=True)


def human_bytes(n: float, digits: int = 2) -> str:
    unit = 0
    while n >= 1024 and unit < len(UNITS) - 1:
        n /= 1024
        unit += 1
    return f"{n:.{digits}f} {UNITS[unit]}"


def elapsed(seconds: int) -> str:
    """The original's DDdHHhMMm."""
    minutes = max(0, seconds) // 60
    return f"{minutes // 1440:02d}d{minutes // 60 % 24:02d}h{minutes % 60:02d}m"


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


HEADERS = ("current avg. rate", "average progress", "seeds", "leechers", "total transfer",
           "time elapsed", "times completed", "size", "", "torrent")


def stats_table(
    reports: Sequence[TorrentReport],
    now: int,
    period: int,
    base_url: str,
    info_links: dict[str, str],
    history: Sequence[tuple[int, int, int]],
) -> str:
    """bt_stats.inc: the table, one row per torrent sorted by path, a totals row, the
    refresh time, and a chart of seeds and leechers over time."""
    rows = sorted(reports, key=lambda r: (r.path, r.name))
    out = [
        '<style>\n'
        'table.bt-stats { border-collapse: collapse; }\n'
        'table.bt-stats td, table.bt-stats th { padding: 2px 6px; white-space: nowrap; text-align: right; }\n'
        'table.bt-stats tr:nth-child(odd) td { background: #e6e6e6; }\n'
        'table.bt-stats tr:nth-child(even) td { background: #f2f2f2; }\n'
        'table.bt-stats td.name, table.bt-stats th.name { text-align: left; }\n'
        '</style>\n',
        '<table class="bt-stats">\n<tr>'
        + "".join(f"<th>{escape(h) or '&nbsp;'}</th>" for h in HEADERS[:-1])
        + f'<th class="name">{HEADERS[-1]}</th></tr>\n',
    ]
    for r in rows:
        progress = average_progress(r)
        url = torrent_url(base_url, r.path) if r.path and not r.path.startswith("/") else ""
        name = escape(r.name or r.path.rsplit("/", 1)[-1] or r.info_hash.hex())
        info = info_links.get(r.path)
        cells = [
            human_bytes(average_rate(r, period)) + "/s",
            "&ndash;" if progress is None else f"{progress * 100:.2f} %",
            str(r.seeds),
            str(r.leechers + r.partial_seeds),
            human_bytes(r.transferred, 3),
            elapsed(now - r.added),
            str(r.downloaded),
            human_bytes(r.size),
            f'<a href="{escape(torrent_url(base_url, info))}">info</a>' if info else "",
        ]
        link = f'<a href="{escape(url)}">{name}</a>' if url else name
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + f'<td class="name">{link}</td></tr>\n')
    totals = [
        "", "",
        str(sum(r.seeds for r in rows)),
        str(sum(r.leechers + r.partial_seeds for r in rows)),
        human_bytes(sum(r.transferred for r in rows), 3),
        "",
        str(sum(r.downloaded for r in rows)),
        human_bytes(sum(r.size for r in rows)),
        "",
    ]
    out.append("<tr>" + "".join(f"<td>{c}</td>" for c in totals) + f'<td class="name">{len(rows)} torrents</td></tr>\n')
    out.append("</table>\n")
    refreshed = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out.append(f'<p class="bt-refreshed"><small>refreshed {refreshed}</small></p>\n')
    out.append(history_chart(history))
    return "".join(out)


def history_chart(samples: Sequence[tuple[int, int, int]]) -> str:
    """An inline SVG line chart of seeds and leechers per history sample."""
    if len(samples) < 2:
        return ""
    t0, t1 = samples[0][0], samples[-1][0]
    top = max(1, max(max(s, l) for _, s, l in samples))
    pad = 30

    def points(column: int) -> str:
        return " ".join(
            f"{pad + (t - t0) / max(1, t1 - t0) * (CHART_WIDTH - 2 * pad):.1f},"
            f"{CHART_HEIGHT - pad - row[column] / top * (CHART_HEIGHT - 2 * pad):.1f}"
            for row in samples for t in (row[0],)
        )

    start = datetime.fromtimestamp(t0, timezone.utc).strftime("%Y-%m-%d %H:%M")
    end = datetime.fromtimestamp(t1, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<svg class="bt-history" xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" '
        f'height="{CHART_HEIGHT}" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
        f'aria-label="seeds and leechers from {start} to {end}">\n'
        f'<rect x="0" y="0" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" fill="#fafafa" stroke="#ccc"/>\n'
        f'<text x="{pad}" y="16" font-size="12" fill="#333">peak {top} &#8212; '
        f'<tspan fill="#2a7">seeds</tspan> / <tspan fill="#c52">leechers</tspan></text>\n'
        f'<polyline fill="none" stroke="#2a7" stroke-width="2" points="{points(1)}"/>\n'
        f'<polyline fill="none" stroke="#c52" stroke-width="2" points="{points(2)}"/>\n'
        f'<text x="{pad}" y="{CHART_HEIGHT - 8}" font-size="11" fill="#666">{start}</text>\n'
        f'<text x="{CHART_WIDTH - pad}" y="{CHART_HEIGHT - 8}" font-size="11" fill="#666" '
        f'text-anchor="end">{end}</text>\n'
        "</svg>\n"
    )


def rss_items(reports: Sequence[TorrentReport], base_url: str) -> str:
    """bt_rss.inc: the inside of the site's <channel>, newest torrent first."""
    listed = sorted((r for r in reports if r.path and not r.path.startswith("/")),
                    key=lambda r: (-r.added, r.path))
    out = [f"<generator>tracker_wsgi {__version__}</generator>\n"]
    if listed:
        out.append(f"<lastBuildDate>{_rfc822(listed[0].added)}</lastBuildDate>\n")
    for r in listed:
        url = escape(torrent_url(base_url, r.path))
        out.append(
            "<item>"
            f"<title>{escape(r.name or r.path)}</title>"
            f"<link>{url}</link>"
            f'<guid isPermaLink="false">urn:btih:{r.info_hash.hex()}</guid>'
            f"<pubDate>{_rfc822(r.added)}</pubDate>"
            # RSS 2.0: length is the enclosure's own size, the .torrent file (the original
            # gave the content's size).
            f'<enclosure url="{url}" length="{r.file_size}" type="application/x-bittorrent"/>'
            "</item>\n"
        )
    return "".join(out)


def _rfc822(timestamp: int) -> str:
    return format_datetime(datetime.fromtimestamp(timestamp, timezone.utc), usegmt=True)
