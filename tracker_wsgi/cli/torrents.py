"""The torrent admin of `tracker-wsgi`: add, list, show, remove and stats."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import replace
from datetime import UTC, datetime

from ..config import Config
from ..metainfo import MAX_TORRENT_BYTES, MetainfoError, parse_torrent
from ..model import Torrent, TorrentReport
from ..render import human_bytes
from ..store import Catalog
from .command import Options, counted, open_checked, shown, warn

# An info hash on the command line: a v1 SHA-1 or a v2 SHA-256 in hex; a v2 hash is
# announced truncated to 20 bytes (BEP 52), and that is how the store keys it.
HEX_INFO_HASH = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")


def scanned_path(config: Config, name: str) -> str | None:
    """`name` relative to torrent_dir, as the directory scan would record it, or None if
    the scan would not find it there (outside the directory, behind a symlink, no .torrent)."""
    root = os.path.abspath(config.torrent_dir)
    relative = os.path.relpath(os.path.abspath(name), root)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep) or not relative.endswith(".torrent"):
        return None
    walked = root
    for part in relative.split(os.sep):
        walked = os.path.join(walked, part)
        if os.path.islink(walked):
            return None
    return relative.replace(os.sep, "/")


def read_torrent(config: Config, name: str) -> Torrent:
    """The torrent a file holds, recorded as the directory scan records it when the file
    is in torrent_dir (so the scan manages it like any other), else by its absolute path.
    Raises OSError or MetainfoError."""
    with open(name, "rb") as f:
        data = f.read(MAX_TORRENT_BYTES + 1)
        st = os.fstat(f.fileno())
    if len(data) > MAX_TORRENT_BYTES:
        raise MetainfoError(f"larger than {MAX_TORRENT_BYTES} bytes")
    relative = scanned_path(config, name)
    meta = parse_torrent(data, relative or os.path.abspath(name))
    if config.announce_url and config.announce_url not in meta.announce_urls:
        raise MetainfoError(f"does not announce this tracker (announce_url = {config.announce_url!r})")
    if relative is None:
        return meta.torrent
    return replace(meta.torrent, file_size=st.st_size, file_mtime=st.st_mtime_ns)


def cmd_add(options: Options) -> int:
    config = options.load()
    store = open_checked(options, config, creates=True)
    added = known = failed = 0
    for name in options.args.files:
        try:
            torrent = read_torrent(config, name)
        except (OSError, MetainfoError) as exc:
            warn(f"{shown(name)}: skipped: {shown(str(getattr(exc, 'strerror', None) or exc))}")
            failed += 1
            continue
        if not store.register(torrent, int(time.time())):
            known += 1
            options.summary(f"{shown(name)}: already registered: {torrent.info_hash.hex()} {shown(torrent.name)}")
            continue
        added += 1
        options.summary(f"{shown(name)}: added {torrent.info_hash.hex()} {shown(torrent.name)}")
        if torrent.path.startswith("/"):
            # The stats page links, and the feed lists, only files served under base_url,
            # which serves torrent_dir (render.py).
            warn(
                f"{shown(name)} is outside torrent_dir ({config.torrent_dir}): its swarm is tracked, but the "
                "stats page lists it without a link and the feed leaves it out; to publish it, "
                f"`tracker-wsgi remove {torrent.info_hash.hex()}` and put the file in torrent_dir instead"
            )
    after = "; the stats page and the feed show them after the next refresh" if added else ""
    options.summary(f"{added} added, {known} already registered, {failed} failed{after}")
    return 1 if failed else 0


def where(r: TorrentReport) -> str:
    """Where a torrent came from, as list and show say it."""
    if not r.path:
        return "(no file: registered by an announce, whitelist open)"
    if r.path.startswith("/"):
        return f"{shown(r.path)} (added by hand)"
    return shown(r.path)


def cmd_list(options: Options) -> int:
    config = options.load()
    store = open_checked(options, config, creates=False)
    rows = sorted(store.report(int(time.time())), key=lambda r: (r.path, r.name))
    if not options.quiet:
        print(f"{'info hash':40}  {'seeds':>5} {'leechers':>8} {'completed':>9} {'size':>12}  torrent file  name")
    for r in rows:
        print(f"{r.info_hash.hex():40}  {r.seeds:>5} {r.leechers + r.partial_seeds:>8} {r.downloaded:>9} "
              f"{human_bytes(r.size):>12}  {where(r)}  {shown(r.name)}")
    by_hand = sum(r.path.startswith("/") for r in rows)
    announced = sum(not r.path for r in rows)
    options.summary(f"{counted(len(rows), 'torrent')}: {len(rows) - by_hand - announced} from torrent_dir, "
                    f"{by_hand} added by hand, {announced} registered by announces")
    return 0


def torrent_file_of(config: Config, r: TorrentReport) -> str | None:
    if not r.path:
        return None
    return r.path if r.path.startswith("/") else os.path.join(config.torrent_dir, r.path)


def hashes_of_file(path: str | None) -> tuple[bytes, ...]:
    """The info hashes a .torrent file holds; () if it is gone or unreadable."""
    if not path:
        return ()
    try:
        with open(path, "rb") as f:
            return parse_torrent(f.read(MAX_TORRENT_BYTES + 1)).torrent.info_hashes
    except (OSError, MetainfoError):
        return ()


def find_torrent(store: Catalog, config: Config, target: str, now: int) -> tuple[TorrentReport, tuple[bytes, ...]]:
    """The registered torrent an info hash (hex) or a .torrent file names, and every info
    hash known to name it. Raises LookupError."""
    rows = store.report(now)
    if HEX_INFO_HASH.fullmatch(target) and not os.path.exists(target):
        wanted = (bytes.fromhex(target)[:20],)
    elif os.path.isfile(target):
        wanted = hashes_of_file(target)
        if not wanted:
            raise LookupError(f"{target}: not a readable .torrent file")
    else:  # a file gone from the disk: its path as the store records it
        recorded = {target, os.path.abspath(target), scanned_path(config, target)}
        wanted = tuple(r.info_hash for r in rows if r.path in recorded)
    # The report names each torrent by its lowest info hash; a hybrid's other one is
    # known to the store (scrape) and, while the file is there, to its file.
    for r in rows:
        if r.info_hash in wanted:
            return r, tuple(dict.fromkeys((r.info_hash, *wanted, *hashes_of_file(torrent_file_of(config, r)))))
    known = store.scrape(list(wanted), now)
    if known:
        names = {stats.name for stats in known.values()}
        candidates = [r for r in rows if r.name in names]
        for r in candidates:
            hashes = hashes_of_file(torrent_file_of(config, r))
            if set(hashes) & set(wanted):
                return r, tuple(dict.fromkeys((r.info_hash, *hashes)))
        if len(candidates) == 1:
            return candidates[0], tuple(dict.fromkeys((candidates[0].info_hash, *wanted)))
    raise LookupError(f"{target}: not registered")


def utc(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def cmd_show(options: Options) -> int:
    config = options.load()
    store = open_checked(options, config, creates=False)
    now = int(time.time())
    r, hashes = find_torrent(store, config, options.args.target, now)
    print(f"name          {shown(r.name)}")
    for h in hashes:
        print(f"info hash     {h.hex()}")
    print(f"torrent file  {where(r)}")
    print(f"size          {r.size} bytes ({human_bytes(r.size)})")
    print(f"added         {utc(r.added)}")
    print(f"peers         {counted(r.seeds, 'seed')}, {counted(r.leechers, 'leecher')}, "
          f"{counted(r.partial_seeds, 'partial seed')} "
          f"(announced in the last {config.peer_timeout} s)")
    print(f"completed     {counted(r.downloaded, 'time')}")
    print(f"transferred   {human_bytes(r.transferred)} downloaded")
    if r.path.startswith("/"):
        print("published     no: the stats page lists it without a link and the feed leaves it out "
              "(it is outside torrent_dir)")
    return 0


def cmd_remove(options: Options) -> int:
    config = options.load()
    store = open_checked(options, config, creates=False)
    now = int(time.time())
    removed = missing = 0
    for target in options.args.targets:
        try:
            r, hashes = find_torrent(store, config, target, now)
        except LookupError as exc:
            warn(str(exc))
            missing += 1
            continue
        removed += store.unregister(hashes)
        peers = r.seeds + r.leechers + r.partial_seeds
        options.summary(f"{shown(target)}: removed {r.info_hash.hex()} {shown(r.name)} and its {counted(peers, 'peer')}")
        file = torrent_file_of(config, r)
        if r.path and not r.path.startswith("/") and file and os.path.exists(file):
            warn(f"{shown(file)} is still in torrent_dir: the next refresh registers it again unless the file is removed")
    options.summary(f"{removed} removed, {missing} not found")
    return 1 if missing else 0


def cmd_stats(options: Options) -> int:
    config = options.load()
    store = open_checked(options, config, creates=False)
    rows = store.report(int(time.time()))
    last_refresh = store.last_refresh()
    totals = {
        "torrents": len(rows),
        "seeds": sum(r.seeds for r in rows),
        "leechers": sum(r.leechers for r in rows),  # still downloading
        "partial_seeds": sum(r.partial_seeds for r in rows),
        "completed": sum(r.downloaded for r in rows),
        "transferred_bytes": sum(r.transferred for r in rows),
        "content_bytes": sum(r.size for r in rows),
        "last_refresh": last_refresh or None,
    }
    if options.args.json:
        print(json.dumps(totals))
        return 0
    refreshed = f"last refresh {utc(last_refresh)}" if last_refresh else "never refreshed"
    print(
        f"{counted(totals['torrents'], 'torrent')} ({human_bytes(totals['content_bytes'])}), "
        f"{counted(totals['seeds'], 'seed')}, {counted(totals['leechers'], 'leecher')}, "
        f"{counted(totals['partial_seeds'], 'partial seed')}, "
        f"{totals['completed']} completed, {human_bytes(totals['transferred_bytes'])} downloaded; {refreshed}"
    )
    return 0
