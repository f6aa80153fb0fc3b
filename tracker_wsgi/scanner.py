"""The torrent directory is the whitelist: walk it, and decide what to register and remove.

The walk never leaves the directory: symbolic links (to files or directories) are not
followed, and os.scandir never yields `.` or `..`. Each link found is a warning at every
refresh (anyone who can drop a .torrent here can drop a link to the config or to `/`; the
site does not serve them either, apache/site.conf), up to LINKS_NAMED, then one line counts
the rest. Each file is remembered by
(path, size, mtime), in the database, so a refresh re-reads only files that changed: an
unchanged tree of 10,000 torrents costs one stat per file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .metainfo import MAX_TORRENT_BYTES, MetainfoError, parse_torrent
from .model import Torrent

DUPLICATE = "duplicate of "  # the reason's prefix for a torrent another file already serves
INFO_SUFFIXES = (".html", ".txt", ".nfo")  # a page about X.torrent, looked for in this order
LINKS_NAMED = 20  # symbolic links a refresh names in a warning each; one more line counts the rest


@dataclass(frozen=True, slots=True)
class TorrentFile:
    path: str  # relative to the torrent directory, `/`-separated
    size: int
    mtime: int  # nanoseconds


@dataclass
class Walk:
    torrents: list[TorrentFile] = field(default_factory=list)
    all_files: set[str] = field(default_factory=set)  # every regular file, for info links
    warnings: list[str] = field(default_factory=list)
    # False when the directory itself could not be read: then nothing may be unregistered,
    # or an unmounted disk would empty the whitelist.
    complete: bool = True


def walk(root: str) -> Walk:
    """Every regular *.torrent file below root (not through symlinks)."""
    result = Walk()
    links = 0
    stack = [""]
    while stack:
        relative_dir = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(root, relative_dir)))
        except OSError as exc:
            result.warnings.append(f"{os.path.join(root, relative_dir)}: cannot read directory: {exc.strerror}")
            result.complete = False
            continue
        for entry in entries:
            relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
            if entry.is_symlink():
                links += 1
                if links <= LINKS_NAMED:
                    result.warnings.append(f"{relative}: a symbolic link, not followed (nor served by the site); "
                                           "remove it")
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(relative)
            elif entry.is_file(follow_symlinks=False):
                result.all_files.add(relative)
                if entry.name.endswith(".torrent"):
                    stat = entry.stat(follow_symlinks=False)
                    result.torrents.append(TorrentFile(relative, stat.st_size, stat.st_mtime_ns))
    if links > LINKS_NAMED:
        result.warnings.append(f"{links - LINKS_NAMED} more symbolic links below {root}, not followed either "
                               f"(`find {root} -type l` lists them all)")
    result.torrents.sort(key=lambda f: f.path)
    return result


@dataclass
class Plan:
    """What a scan changes in the store."""

    register: list[Torrent] = field(default_factory=list)
    update: list[Torrent] = field(default_factory=list)  # known torrent, moved or touched file
    unregister: list[bytes] = field(default_factory=list)  # one hash per torrent whose file is gone
    skipped: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # path -> size, mtime, reason
    warnings: list[str] = field(default_factory=list)


def plan(
    root: str,
    files: list[TorrentFile],
    known: dict[str, tuple[int, int, bytes]],
    skipped_before: dict[str, tuple[int, int, str]],
    announce_url: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> Plan:
    """Compare the directory with what the store has.

    Args:
        files: from `walk`, sorted by path.
        known: store's torrents found in the directory: path -> (size, mtime, info hash).
        skipped_before: files refused by the last scan, already reported.
        announce_url: when set, a torrent must announce it (in announce or announce-list).
    """
    result = Plan()
    known_hashes = {h for _, _, h in known.values()}
    # Hashes served by files that did not change: they win any duplicate contest.
    claimed = {
        known[f.path][2]: f.path for f in files
        if f.path in known and known[f.path][:2] == (f.size, f.mtime)
    }
    changed = [f for f in files if claimed.get(known.get(f.path, (0, 0, b""))[2]) != f.path]
    for done, f in enumerate(changed, 1):
        if progress:
            progress(done, len(changed))
        before = skipped_before.get(f.path)
        if before and before[:2] == (f.size, f.mtime) and not before[2].startswith(DUPLICATE):
            result.skipped[f.path] = before  # unchanged and already reported
            continue
        torrent, reason = _read(root, f, announce_url)
        if torrent is not None:
            duplicate_of = next((claimed[h] for h in torrent.info_hashes if h in claimed), None)
            if duplicate_of is not None:
                torrent, reason = None, DUPLICATE + duplicate_of
        if torrent is None:
            if not (before and before[:2] == (f.size, f.mtime) and before[2] == reason):
                result.warnings.append(f"{f.path}: skipped: {reason}")
            result.skipped[f.path] = (f.size, f.mtime, reason)
            continue
        for h in torrent.info_hashes:
            claimed[h] = f.path
        if any(h in known_hashes for h in torrent.info_hashes):
            result.update.append(torrent)
        else:
            result.register.append(torrent)
    result.unregister = sorted(h for h in known_hashes if h not in claimed)
    return result


def _read(root: str, f: TorrentFile, announce_url: str) -> tuple[Torrent | None, str]:
    if f.size > MAX_TORRENT_BYTES:
        return None, f"larger than {MAX_TORRENT_BYTES} bytes"
    try:
        with open(os.path.join(root, f.path), "rb") as handle:
            data = handle.read(MAX_TORRENT_BYTES + 1)
        meta = parse_torrent(data, f.path)
    except OSError as exc:
        return None, f"cannot read: {exc.strerror}"
    except MetainfoError as exc:
        return None, f"not a valid torrent: {exc}"
    if announce_url and announce_url not in meta.announce_urls:
        return None, f"does not announce this tracker ({announce_url})"
    return replace(meta.torrent, file_size=f.size, file_mtime=f.mtime), ""


def info_link(torrent_path: str, all_files: set[str]) -> str | None:
    """X.html, X.txt or X.nfo beside X.torrent, as the original linked them."""
    stem = torrent_path.removesuffix(".torrent")
    return next((stem + s for s in INFO_SUFFIXES if stem + s in all_files), None)
