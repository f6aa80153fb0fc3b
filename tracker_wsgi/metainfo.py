""".torrent files (BEP 3 metainfo, BEP 52 v2): bytes in, a Torrent out. Pure; no files.

The info hash is the hash of the `info` value's bytes exactly as they stand in the file.
The original re-encoded the decoded dict with its own bencoder and could get a different
hash (an all-digit string came back as an integer); re-encoding can never be trusted to
round-trip, so we slice the raw bytes instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bencoder import BTFailure, bdecode

from .model import Torrent

MAX_TORRENT_BYTES = 8 * 1024 * 1024  # the original's 512 KiB cap is too small for v2 piece layers
MAX_NESTING = 64  # real torrents nest 5 deep; bencoder.pyx crashes on very deep input


class MetainfoError(ValueError):
    """The bytes are not a usable .torrent; the message says why, in a few words."""


@dataclass(frozen=True, slots=True)
class Metainfo:
    torrent: Torrent
    announce_urls: tuple[str, ...]  # `announce` and every `announce-list` entry


def _value_end(data: bytes, pos: int) -> int:
    """Index just past the bencoded value at `pos`, checking structure iteratively (so
    nesting depth costs no recursion) before bencoder.pyx ever sees the bytes."""
    depth = 0
    n = len(data)
    while True:
        if pos >= n:
            raise MetainfoError("truncated bencoding")
        c = data[pos]
        if c in b"ld":
            depth += 1
            if depth > MAX_NESTING:
                raise MetainfoError("nested too deeply")
            pos += 1
            continue
        if c == ord("e"):
            if depth == 0:
                raise MetainfoError("unexpected end marker")
            depth -= 1
            pos += 1
        elif c == ord("i"):
            end = data.find(b"e", pos)
            if end < 0:
                raise MetainfoError("truncated integer")
            pos = end + 1
        elif 48 <= c <= 57:
            colon = data.find(b":", pos, pos + 21)
            if colon < 0 or not data[pos:colon].isdigit():
                raise MetainfoError("bad string length")
            pos = colon + 1 + int(data[pos:colon])
            if pos > n:
                raise MetainfoError("truncated string")
        else:
            raise MetainfoError("not bencoded")
        if depth == 0:
            return pos


def _info_span(data: bytes) -> tuple[int, int]:
    """Start and end of the top-level dict's `info` value."""
    if not data.startswith(b"d"):
        raise MetainfoError("not a bencoded dictionary")
    pos = 1
    while pos < len(data) and data[pos] != ord("e"):
        key_end = _value_end(data, pos)
        value_end = _value_end(data, key_end)
        if data[pos:key_end] == b"4:info":
            return key_end, value_end
        pos = value_end
    raise MetainfoError("no info dictionary")


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def _length(value: object) -> int:
    if not isinstance(value, int) or value < 0:
        raise MetainfoError("a file length is not a non-negative integer")
    return value


def _v1_size(info: dict) -> int | None:
    """Content size from BEP 3's `length` or `files`; None when the torrent has neither."""
    if b"length" in info:
        return _length(info[b"length"])
    files = info.get(b"files")
    if files is None:
        return None
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise MetainfoError("files is not a list of dictionaries")
    return sum(_length(f.get(b"length")) for f in files)


def _v2_size(tree: object) -> int:
    """Total length in a BEP 52 file tree: {name: {...} | {"": {"length": n, ...}}}."""
    if not isinstance(tree, dict):
        return 0
    total = 0
    stack = [tree]
    while stack:
        node = stack.pop()
        for name, child in node.items():
            if not isinstance(child, dict):
                continue
            if name == b"":
                total += _length(child.get(b"length"))
            else:
                stack.append(child)
    return total


def parse_torrent(data: bytes, path: str = "") -> Metainfo:
    """Read a .torrent file's bytes.

    Returns the torrent with its v1 info hash (SHA-1) and, for v2 and hybrid torrents
    (`meta version` 2), the SHA-256 truncated to 20 bytes, which clients announce with
    (BEP 52). A v2-only torrent is known by its truncated SHA-256 alone.
    Raises MetainfoError for anything else.
    """
    if len(data) > MAX_TORRENT_BYTES:
        raise MetainfoError(f"larger than {MAX_TORRENT_BYTES} bytes")
    if _value_end(data, 0) != len(data):
        raise MetainfoError("data after the torrent")
    start, end = _info_span(data)
    try:
        meta = bdecode(data)
    except BTFailure as exc:
        raise MetainfoError(f"not bencoded ({exc})") from None
    info = meta.get(b"info")
    if not isinstance(info, dict):
        raise MetainfoError("info is not a dictionary")
    raw_info = data[start:end]

    is_v2 = info.get(b"meta version") == 2 and isinstance(info.get(b"file tree"), dict)
    v1_size = _v1_size(info)
    has_v1 = v1_size is not None
    if has_v1 and not isinstance(info.get(b"pieces"), bytes):
        raise MetainfoError("info has file lengths but no pieces")
    if not has_v1 and not is_v2:
        raise MetainfoError("info has neither v1 pieces and lengths nor a v2 file tree")
    if not isinstance(info.get(b"piece length"), int):
        raise MetainfoError("info has no piece length")
    info_sha256 = hashlib.sha256(raw_info).digest() if is_v2 else None
    v2_hash = info_sha256[:20] if info_sha256 else None
    if has_v1:
        info_hash, info_hash_v2, size = hashlib.sha1(raw_info).digest(), v2_hash, v1_size
    else:
        info_hash, info_hash_v2, size = v2_hash, None, _v2_size(info[b"file tree"])

    urls = [_text(meta.get(b"announce"))]
    tiers = meta.get(b"announce-list")
    if isinstance(tiers, list):
        urls += [_text(url) for tier in tiers if isinstance(tier, list) for url in tier]
    torrent = Torrent(
        info_hash=info_hash,
        info_hash_v2=info_hash_v2,
        name=_text(info.get(b"name")),
        size=size,
        path=path,
        info_sha256=info_sha256,
    )
    return Metainfo(torrent, tuple(u for u in dict.fromkeys(urls) if u))
