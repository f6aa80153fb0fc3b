"""The HTTP tracker protocol without I/O: query bytes in, request values out; results in,
bencoded bytes out.

Rules come from BEP 3 (announce), BEP 7 (IPv6 peers), BEP 21 (partial seeds), BEP 23
(compact peers), BEP 24 (external ip), BEP 31 (retry in) and BEP 48 (scrape).
Nothing here reads the clock, a socket, a file or `random`: the caller passes them in.
This is the edge where a refusal gets its words: the core and the store raise typed
refusals (model.py), and `failure_reason` chooses the `failure reason` for each.
"""

from __future__ import annotations

import codecs
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote_to_bytes

from bencoder import bencode

from .model import (
    STOPPED,
    AnnounceRequest,
    AnnounceResult,
    ClientError,
    Event,
    Peer,
    SwarmStats,
)
from .netaddr import pack_ip, unpack_ip

# Limits, each with the reason it exists.
# A real announce is ~300 bytes; a scrape of MAX_SCRAPE_HASHES fully %-escaped hashes is
# ~4.5 KiB. Apache's own request line limit (8190) comes first anyway.
MAX_QUERY_BYTES = 8192
MAX_SCRAPE_HASHES = 64  # bounds one scrape's database work and answer size
MAX_KEY_BYTES = 64  # BEP 3 leaves `key` opaque; clients send 4-8 bytes (aria2: binary)
MAX_TRACKER_ID_BYTES = 64
MAX_COUNTER = 2**63 - 1  # the largest uploaded/downloaded/left accepted: signed 64-bit, as stored
# ...and the largest kept: 1 PiB, more than any client moves or has left in one torrent. A
# larger count (a bug or a lie) is taken as this, not refused, so the client still works and
# the stores' sums of many peers' counts stay far inside 64 bits.
COUNTER_CAP = 2**50
HASH_BYTES = 20  # BEP 3: info_hash and peer_id are 20 bytes

# Client-facing failure reasons. Fixed strings: no request data is ever echoed back.
UNKNOWN_TORRENT = "Requested torrent not available on this tracker."
BAD_INFO_HASH = "Invalid info_hash: it must be exactly 20 bytes, URL-encoded."
BAD_PEER_ID = "Invalid peer_id: it must be exactly 20 bytes, URL-encoded."
BAD_PORT = "Invalid port: it must be a number from 1 to 65535."
BAD_EVENT = "Invalid event: use started, stopped, completed, paused or leave it out."
BAD_IP = "Invalid ip: it must be an IPv4 or IPv6 address."
BAD_KEY = "Invalid key: it must be at most 64 bytes."
BAD_TRACKER_ID = "Invalid trackerid: it must be at most 64 bytes."
TOO_MANY_HASHES = f"Too many info_hash values: at most {MAX_SCRAPE_HASHES} per scrape."
QUERY_TOO_LONG = "Request query string is too long."
REPEATED_PARAMETER = "Invalid request: each parameter may appear only once (only a scrape repeats info_hash)."
FULL_SCRAPE_DISABLED = "Full scrape is disabled on this tracker: name an info_hash."
PEER_CONFLICT = "Duplicated peer_id or changed IP address without the same key. Please restart BitTorrent."
UNKNOWN_PATH = "Unknown tracker path: announce at /tracker/announce, scrape at /tracker/scrape."
METHOD_NOT_ALLOWED = "Only GET and HEAD are accepted."
SERVER_FAULT = "The tracker is temporarily unavailable; please retry later."
BUSY = "The tracker is busy; please retry later."
TOO_MANY_PEERS = "Too many peers from your address or network in this swarm."
TRACKER_FULL = "This tracker is full: it takes no new torrents now."

def _missing_or_bad(name: str) -> str:
    return f"Missing or invalid {name}: it must be a non-negative whole number."


# Byte values, not one-byte strings: `b"%" in value` first tries the needle as an integer and
# raises and clears a TypeError inside, which costs eight times the search (~0.25 us, four
# times per field of every announce).
_PERCENT, _PLUS = ord("%"), ord("+")


# The parameters the tracker reads (parse_announce, and the web refresh's): each may appear
# once. Apache routes an announce by its first info_hash (apache_conf.FIRST_INFO_HASH); were
# a repeat allowed, the tracker would read another one than the router, so a swarm's peer
# could be taken in a process that does not hold the swarm, past the key rule and with
# every per-process limit doubled (issue 17). No other parameter is read outside the
# tracker today, but which of two `peer_id`s, `key`s, `ip`s or `left`s counts is ambiguous
# for anything that ever does (a proxy, a log reader), and no client sends two: each is
# refused as well, at no cost to a query that repeats nothing. An unknown key may repeat
# (it is never read).
READ_ONCE = frozenset({b"info_hash", b"peer_id", b"port", b"uploaded", b"downloaded", b"left", b"event",
                       b"numwant", b"key", b"trackerid", b"ip", b"compact", b"no_peer_id", b"refresh",
                       b"force-refresh", b"secret"})


def parse_query(query: bytes) -> dict[bytes, bytes]:
    """Split a raw query string into keys and values, all bytes. A key the tracker reads
    (READ_ONCE) may appear once; a scrape's repeated info_hash is parse_scrape's.

    application/x-www-form-urlencoded values: `&`-separated, `+` is a space, `%XX` in either
    case. Keys are taken as sent, never decoded, as Apache's routing reads them: `info%5Fhash`
    is not `info_hash`. Keys and values are never decoded as text: info_hash and peer_id
    are binary. A `%` not followed by two hex digits is kept literally (the value then
    fails validation).
    """
    if len(query) > MAX_QUERY_BYTES:
        raise ClientError(QUERY_TOO_LONG)
    fields: dict[bytes, bytes] = {}
    parts = query.split(b"&")
    for field in parts:
        if field:
            key, _, value = field.partition(b"=")
            # _decode, inlined: this runs for every field of every announce, and most
            # values (numbers, flags) have nothing to decode.
            if _PERCENT in value or _PLUS in value:
                value = _unquote(value.replace(b"+", b" "))
            fields[key] = value
    # Fewer keys than fields: a key repeats, or a field is empty (`a=1&&b=2`). Only then look.
    if len(fields) != len(parts) and _repeats_a_read_key(parts):
        raise ClientError(REPEATED_PARAMETER)
    return fields


def _repeats_a_read_key(parts: list[bytes]) -> bool:
    seen: set[bytes] = set()
    for field in parts:
        key = field.partition(b"=")[0]
        if key in READ_ONCE:
            if key in seen:
                return True
            seen.add(key)
    return False


def _decode(text: bytes) -> bytes:
    """A query key or value as bytes: `+` is a space, `%XY` the byte."""
    return _unquote(text.replace(b"+", b" ")) if _PERCENT in text or _PLUS in text else text


def _unquote(text: bytes) -> bytes:
    """%XY -> the byte. The C string-escape decoder reads `%XY` as `\\xXY` seven times
    faster than urllib's Python loop (info_hash and peer_id are 20 escaped bytes in every
    announce); a `%` not followed by two hex digits is left to urllib, which keeps it."""
    try:
        return codecs.escape_decode(text.replace(b"\\", b"\\\\").replace(b"%", b"\\x"))[0]
    except ValueError:
        return unquote_to_bytes(text)


def _counter(fields: dict[bytes, bytes], key: bytes, default: int | None = None) -> int:
    value = fields.get(key)
    if value is None and default is not None:
        return default
    # isdigit() on bytes accepts ASCII digits only: no sign, no spaces, no Unicode digits.
    if value is not None and value.isdigit() and len(value) <= 19:
        number = int(value)
        if number <= MAX_COUNTER:
            return number if number <= COUNTER_CAP else COUNTER_CAP
    raise ClientError(_missing_or_bad(key.decode()))


_EVENTS = {e.value.encode(): e for e in Event}


@dataclass(frozen=True, slots=True)
class AnnouncePolicy:
    """The announce limits an admin configures, resolved once at start-up."""

    numwant_default: int = 50
    numwant_max: int = 200


def parse_announce(
    fields: dict[bytes, bytes],
    client_ip: bytes,
    policy: AnnouncePolicy,
    ip_param_trusted: bool,
) -> AnnounceRequest:
    """Validate an announce (BEP 3) and resolve its defaults.

    Args:
        fields: from `parse_query`.
        client_ip: packed address the request came from (see netaddr.client_address).
        policy: numwant default and cap.
        ip_param_trusted: whether this client may name another address with `ip=`.
    Raises:
        ClientError: with the reason to send back.
    """
    info_hash = fields.get(b"info_hash")
    if info_hash is None or len(info_hash) != HASH_BYTES:
        raise ClientError(BAD_INFO_HASH)
    peer_id = fields.get(b"peer_id")
    if peer_id is None or len(peer_id) != HASH_BYTES:
        raise ClientError(BAD_PEER_ID)
    port_text = fields.get(b"port")
    # The length first: int() refuses a string of more than 4300 digits with a ValueError.
    port = int(port_text) if port_text is not None and port_text.isdigit() and len(port_text) <= 10 else 0
    if not 0 < port <= 65535:
        raise ClientError(BAD_PORT)
    event = _EVENTS.get(fields.get(b"event") or b"")
    if event is None:
        raise ClientError(BAD_EVENT)
    # Clients must send these three, but some omit `downloaded`/`uploaded` on `stopped`;
    # `left` has no safe default, so it is required.
    uploaded = _counter(fields, b"uploaded", 0)
    downloaded = _counter(fields, b"downloaded", 0)
    left = _counter(fields, b"left")
    numwant = min(_counter(fields, b"numwant", policy.numwant_default), policy.numwant_max)
    key = fields.get(b"key")
    if key is not None and len(key) > MAX_KEY_BYTES:
        raise ClientError(BAD_KEY)
    tracker_id = fields.get(b"trackerid")
    if tracker_id is not None and len(tracker_id) > MAX_TRACKER_ID_BYTES:
        raise ClientError(BAD_TRACKER_ID)

    ip, warning = client_ip, None
    ip_param = fields.get(b"ip")
    if ip_param:
        try:
            named_ip = pack_ip(ip_param.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise ClientError(BAD_IP) from None
        if ip_param_trusted:
            ip = named_ip
        elif named_ip != client_ip:
            warning = "The ip parameter is ignored; peers are given the address you connect from."

    # A stopped peer leaves the swarm and needs no peers (the original did the same).
    if event is STOPPED:
        numwant = 0
    compact = fields.get(b"compact") != b"0"  # BEP 23: compact unless asked otherwise
    no_peer_id = fields.get(b"no_peer_id") not in (None, b"", b"0")
    # Positional: this runs for every announce, and keywords cost twice as much.
    return AnnounceRequest(info_hash, peer_id, ip, port, uploaded, downloaded, left, event, numwant,
                           compact, no_peer_id, key or None, tracker_id or None, client_ip, warning)


def parse_scrape(query: bytes) -> list[bytes]:
    """The info hashes a raw scrape query asks for (BEP 48: `info_hash` repeats), in order,
    each once; empty means a full scrape."""
    if len(query) > MAX_QUERY_BYTES:
        raise ClientError(QUERY_TOO_LONG)
    hashes = [
        _decode(value)
        for key, _, value in (field.partition(b"=") for field in query.split(b"&"))
        if key == b"info_hash"  # as sent, as parse_query and Apache's routing read keys
    ]
    if len(hashes) > MAX_SCRAPE_HASHES:
        raise ClientError(TOO_MANY_HASHES)
    if any(len(h) != HASH_BYTES for h in hashes):
        raise ClientError(BAD_INFO_HASH)
    return list(dict.fromkeys(hashes))


def jittered_interval(interval: int, rng: random.Random) -> int:
    """Spread re-announces so a burst of clients does not come back as a burst
    (opentracker's OT_CLIENT_REQUEST_VARIATION, Ocelot's jitter): up to 10% either way."""
    spread = interval // 10
    return interval - spread + int(rng.random() * (2 * spread + 1))  # randint, a third of the cost


def encode_announce(
    request: AnnounceRequest, result: AnnounceResult, interval: int, min_interval: int
) -> bytes:
    """The answer to an announce; `result.peers` are compact forms when request.compact."""
    stats = result.stats
    if not request.compact:
        response: dict[bytes, object] = {
            b"interval": interval,
            b"min interval": min_interval,
            b"complete": stats.complete,
            b"incomplete": stats.incomplete,
            b"downloaded": stats.downloaded,
            b"external ip": request.client_ip,  # BEP 24
            b"peers": [_peer_dict(p, request.no_peer_id) for p in cast("Sequence[Peer]", result.peers)],
        }
        if request.tracker_id:
            response[b"tracker id"] = request.tracker_id
        if request.warning:
            response[b"warning message"] = request.warning.encode()
        return bencode(response)
    # BEP 23: 4-byte address + 2-byte big-endian port; BEP 7: 16 + 2 in `peers6`.
    compact = cast("Sequence[bytes]", result.peers)
    peers, peers6 = b"".join(compact), b""
    if len(peers) != 6 * len(compact):  # not all IPv4
        peers = b"".join([c for c in compact if len(c) == 6])
        peers6 = b"".join([c for c in compact if len(c) == 18])
    # The compact answer is nearly every answer: its bencoding is written out here, keys in
    # their sorted order, five times faster than building the dict for bencode.
    ip = request.client_ip
    body = b"d8:completei%de10:downloadedi%de11:external ip%d:%b10:incompletei%de8:intervali%de" \
        b"12:min intervali%de5:peers%d:%b" % (stats.complete, stats.downloaded, len(ip), ip, stats.incomplete,
                                            interval, min_interval, len(peers), peers)
    if peers6:
        body += b"6:peers6%d:%b" % (len(peers6), peers6)
    if request.tracker_id:
        body += b"10:tracker id%d:%b" % (len(request.tracker_id), request.tracker_id)
    if request.warning:
        warning = request.warning.encode()
        body += b"15:warning message%d:%b" % (len(warning), warning)
    return body + b"e"


def _peer_dict(peer: Peer, no_peer_id: bool) -> dict[bytes, object]:
    entry: dict[bytes, object] = {b"ip": unpack_ip(peer.ip).encode(), b"port": peer.port}
    if not no_peer_id:
        entry[b"peer id"] = peer.peer_id
    return entry


def encode_scrape(files: dict[bytes, SwarmStats]) -> bytes:
    return bencode({b"files": {h: _scrape_entry(s) for h, s in files.items()}})


def _scrape_entry(stats: SwarmStats) -> dict[bytes, object]:
    entry: dict[bytes, object] = {
        b"complete": stats.complete,
        b"incomplete": stats.incomplete,
        b"downloaded": stats.downloaded,
        b"downloaders": stats.downloaders,  # BEP 21
    }
    if stats.name:
        entry[b"name"] = stats.name.encode()
    return entry


def encode_failure(reason: str, retry_in: int | None = None) -> bytes:
    """A bencoded failure (BEP 3); `retry in` minutes tells the client when to come back
    after a fault of ours rather than theirs (BEP 31)."""
    response: dict[bytes, object] = {b"failure reason": reason.encode()}
    if retry_in is not None:
        response[b"retry in"] = retry_in
    return bencode(response)
