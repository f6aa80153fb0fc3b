"""tracker_wsgi.protocol: the HTTP tracker protocol as pure functions, tested table by table.

Each table row is one rule: an input and the exact value (or the exact failure reason) the
protocol must give for it. BEP numbers name the rule's source.
"""

from __future__ import annotations

import ipaddress
import random
from urllib.parse import quote_from_bytes, unquote_to_bytes, urlencode

import pytest

from conftest import ih, pid
from tracker_wsgi.model import (
    AnnounceRequest,
    AnnounceResult,
    ClientError,
    Event,
    SwarmStats,
    make_peer,
)
from tracker_wsgi.protocol import (
    BAD_EVENT,
    BAD_INFO_HASH,
    BAD_IP,
    BAD_KEY,
    BAD_PEER_ID,
    BAD_PORT,
    BAD_TRACKER_ID,
    COUNTER_CAP,
    MAX_QUERY_BYTES,
    MAX_SCRAPE_HASHES,
    QUERY_TOO_LONG,
    READ_ONCE,
    REPEATED_PARAMETER,
    TOO_MANY_HASHES,
    AnnouncePolicy,
    encode_announce,
    encode_failure,
    encode_scrape,
    jittered_interval,
    parse_announce,
    parse_query,
    parse_scrape,
)

POLICY = AnnouncePolicy(numwant_default=50, numwant_max=200)
CLIENT_TEXT = "198.51.100.7"
CLIENT = ipaddress.ip_address(CLIENT_TEXT).packed
IP_IGNORED = "The ip parameter is ignored; peers are given the address you connect from."


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# --------------------------------------------------------------------------------------
# parse_query
# --------------------------------------------------------------------------------------

QUERY_CASES = [
    # (id, raw query, expected fields)
    ("upper-case %XX is binary", b"info_hash=%AB%CD%00%FF", {b"info_hash": b"\xab\xcd\x00\xff"}),
    ("lower-case %xx is binary", b"info_hash=%ab%cd%00%ff", {b"info_hash": b"\xab\xcd\x00\xff"}),
    ("mixed-case %Xx", b"x=%aB%Cd", {b"x": b"\xab\xcd"}),
    ("plus is a space", b"name=a+b+c", {b"name": b"a b c"}),
    ("%2B is a literal plus", b"name=a%2Bb", {b"name": b"a+b"}),
    ("%20 is a space too", b"name=a%20b", {b"name": b"a b"}),
    # Keys as sent, as Apache's routing reads them (apache_conf.FIRST_INFO_HASH).
    ("an encoded key is not decoded", b"info%5Fhash=x", {b"info%5Fhash": b"x"}),
    ("plus in a key stays", b"a+b=1", {b"a+b": b"1"}),
    ("a key the tracker never reads may repeat: the last value", b"x=1&x=2&x=3", {b"x": b"3"}),
    ("% with non-hex kept literally", b"a=%zz", {b"a": b"%zz"}),
    ("% with one hex digit kept literally", b"a=%4", {b"a": b"%4"}),
    ("trailing % kept literally", b"a=100%", {b"a": b"100%"}),
    ("%% kept literally", b"a=%%41", {b"a": b"%A"}),
    ("empty fields are skipped", b"&a=1&&b=2&", {b"a": b"1", b"b": b"2"}),
    ("empty value", b"a=", {b"a": b""}),
    ("key without = has an empty value", b"compact", {b"compact": b""}),
    ("only the first = splits", b"a=1=2", {b"a": b"1=2"}),
    ("empty key", b"=v", {b"": b"v"}),
    ("empty query", b"", {}),
    ("raw high bytes pass through", b"a=\xff\x00", {b"a": b"\xff\x00"}),
    ("encoded & and = stay inside the value", b"a=%26%3D&b=1", {b"a": b"&=", b"b": b"1"}),
]


@pytest.mark.parametrize(("query", "expected"), [c[1:] for c in QUERY_CASES], ids=[c[0] for c in QUERY_CASES])
def test_parse_query(query, expected):
    """application/x-www-form-urlencoded, decoded to bytes, never to text."""
    assert parse_query(query) == expected


def test_parse_query_accepts_exactly_the_maximum_length():
    query = b"a=" + b"x" * (MAX_QUERY_BYTES - 2)
    assert len(query) == MAX_QUERY_BYTES
    assert parse_query(query) == {b"a": b"x" * (MAX_QUERY_BYTES - 2)}


def test_parse_query_refuses_an_oversize_query():
    """A query longer than MAX_QUERY_BYTES is refused before it is split."""
    with pytest.raises(ClientError) as exc:
        parse_query(b"a=" + b"x" * (MAX_QUERY_BYTES - 1))
    assert exc.value.reason == QUERY_TOO_LONG


# --------------------------------------------------------------------------------------
# parse_announce
# --------------------------------------------------------------------------------------

DROP = object()  # a field value meaning "leave this field out of the query"


def announce_params(**fields) -> dict[bytes, bytes]:
    """A valid announce's parsed query, with some fields replaced or dropped."""
    base = {"info_hash": ih(1), "peer_id": pid(1), "port": 6881, "uploaded": 0,
            "downloaded": 0, "left": 100}
    base.update(fields)
    return parse_query(urlencode({k: v for k, v in base.items() if v is not DROP}).encode())


def parse(params, client_ip=CLIENT, policy=POLICY, trusted=False) -> AnnounceRequest:
    return parse_announce(params, client_ip, policy, trusted)


def bad_counter(name: str) -> str:
    return f"Missing or invalid {name}: it must be a non-negative whole number."


BAD_ANNOUNCE_CASES = [
    # (id, fields, exact failure reason)
    ("info_hash missing", {"info_hash": DROP}, BAD_INFO_HASH),
    ("info_hash 19 bytes", {"info_hash": ih(1)[:19]}, BAD_INFO_HASH),
    ("info_hash 21 bytes", {"info_hash": ih(1) + b"x"}, BAD_INFO_HASH),
    ("info_hash empty", {"info_hash": b""}, BAD_INFO_HASH),
    ("info_hash 40 hex chars", {"info_hash": ih(1).hex()}, BAD_INFO_HASH),
    ("peer_id missing", {"peer_id": DROP}, BAD_PEER_ID),
    ("peer_id 19 bytes", {"peer_id": pid(1)[:19]}, BAD_PEER_ID),
    ("peer_id 21 bytes", {"peer_id": pid(1) + b"x"}, BAD_PEER_ID),
    ("port missing", {"port": DROP}, BAD_PORT),
    ("port empty", {"port": ""}, BAD_PORT),
    ("port 0", {"port": 0}, BAD_PORT),
    ("port 65536", {"port": 65536}, BAD_PORT),
    ("port non-digit", {"port": "http"}, BAD_PORT),
    ("port negative", {"port": -1}, BAD_PORT),
    ("port with sign", {"port": "+80"}, BAD_PORT),
    ("port with space", {"port": " 80"}, BAD_PORT),
    ("port huge", {"port": "9" * 30}, BAD_PORT),
    ("port of 5000 digits (int() refuses over 4300)", {"port": "9" * 5000}, BAD_PORT),
    ("uploaded negative", {"uploaded": -1}, bad_counter("uploaded")),
    ("uploaded non-digit", {"uploaded": "lots"}, bad_counter("uploaded")),
    ("uploaded empty", {"uploaded": ""}, bad_counter("uploaded")),
    ("uploaded float", {"uploaded": "1.5"}, bad_counter("uploaded")),
    ("uploaded 2**63", {"uploaded": 2**63}, bad_counter("uploaded")),
    ("uploaded 20 digits", {"uploaded": "1" * 20}, bad_counter("uploaded")),
    ("downloaded negative", {"downloaded": -5}, bad_counter("downloaded")),
    ("downloaded non-digit", {"downloaded": "0x10"}, bad_counter("downloaded")),
    ("downloaded 2**63", {"downloaded": 2**63}, bad_counter("downloaded")),
    ("left missing", {"left": DROP}, bad_counter("left")),
    ("left empty", {"left": ""}, bad_counter("left")),
    ("left negative", {"left": -1}, bad_counter("left")),
    ("left 2**63", {"left": 2**63}, bad_counter("left")),
    ("left non-digit", {"left": "unknown"}, bad_counter("left")),
    ("left huge", {"left": "9" * 40}, bad_counter("left")),
    ("left unicode digit", {"left": "\u0663"}, bad_counter("left")),
    ("numwant negative", {"numwant": -1}, bad_counter("numwant")),
    ("numwant non-digit", {"numwant": "all"}, bad_counter("numwant")),
    ("event unknown", {"event": "finished"}, BAD_EVENT),
    ("event is case-sensitive", {"event": "Started"}, BAD_EVENT),
    ("ip host name", {"ip": "tracker.example.com"}, BAD_IP),
    ("ip out of range", {"ip": "256.1.1.1"}, BAD_IP),
    ("ip with port", {"ip": "203.0.113.9:6881"}, BAD_IP),
    ("ip in brackets", {"ip": "[2001:db8::1]"}, BAD_IP),
    ("ip not ascii", {"ip": b"\xff\xfe"}, BAD_IP),
    ("key 65 bytes", {"key": b"k" * 65}, BAD_KEY),
    ("trackerid 65 bytes", {"trackerid": b"t" * 65}, BAD_TRACKER_ID),
]


@pytest.mark.parametrize(("fields", "reason"), [c[1:] for c in BAD_ANNOUNCE_CASES],
                         ids=[c[0] for c in BAD_ANNOUNCE_CASES])
def test_parse_announce_refuses_bad_input_with_its_fixed_reason(fields, reason):
    """Each bad field gives its own fixed failure reason (BEP 3); nothing is echoed back."""
    with pytest.raises(ClientError) as exc:
        parse(announce_params(**fields))
    assert exc.value.reason == reason


def test_bad_ip_is_refused_even_when_it_would_be_ignored():
    """A malformed `ip=` is a client error whether or not the client may set it."""
    for trusted in (False, True):
        with pytest.raises(ClientError) as exc:
            parse(announce_params(ip="not-an-ip"), trusted=trusted)
        assert exc.value.reason == BAD_IP


def test_parse_announce_valid_request_resolves_every_field():
    request = parse(announce_params(uploaded=1000, downloaded=2000, left=3000, key="abcd",
                                    trackerid="tid", event="started"))
    assert request == AnnounceRequest(
        info_hash=ih(1),
        peer_id=pid(1),
        ip=CLIENT,
        port=6881,
        uploaded=1000,
        downloaded=2000,
        left=3000,
        event=Event.STARTED,
        numwant=50,
        compact=True,
        no_peer_id=False,
        key=b"abcd",
        tracker_id=b"tid",
        client_ip=CLIENT,
        warning=None,
    )


ACCEPTED_BOUNDARY_CASES = [
    # (id, fields, attribute, expected value)
    ("port 1", {"port": 1}, "port", 1),
    ("port 65535", {"port": 65535}, "port", 65535),
    ("port with leading zeros", {"port": "06881"}, "port", 6881),
    ("left 0", {"left": 0}, "left", 0),
    # Counters up to 2**63-1 are accepted, and kept up to COUNTER_CAP (1 PiB): beyond it, clamped.
    ("left at the cap", {"left": COUNTER_CAP}, "left", COUNTER_CAP),
    ("left 2**63-1 is clamped", {"left": 2**63 - 1}, "left", COUNTER_CAP),
    ("uploaded at the cap", {"uploaded": COUNTER_CAP}, "uploaded", COUNTER_CAP),
    ("uploaded above the cap is clamped", {"uploaded": COUNTER_CAP + 1}, "uploaded", COUNTER_CAP),
    ("uploaded 2**63-1 is clamped", {"uploaded": 2**63 - 1}, "uploaded", COUNTER_CAP),
    ("downloaded 2**63-1 is clamped", {"downloaded": 2**63 - 1}, "downloaded", COUNTER_CAP),
    ("numwant 2**63-1 is numwant_max", {"numwant": 2**63 - 1}, "numwant", POLICY.numwant_max),
    ("uploaded omitted defaults to 0", {"uploaded": DROP}, "uploaded", 0),
    ("downloaded omitted defaults to 0", {"downloaded": DROP}, "downloaded", 0),
    ("key of 64 bytes", {"key": b"k" * 64}, "key", b"k" * 64),
    ("empty key is no key", {"key": ""}, "key", None),
    ("trackerid of 64 bytes", {"trackerid": b"t" * 64}, "tracker_id", b"t" * 64),
    ("empty trackerid is none", {"trackerid": ""}, "tracker_id", None),
    ("aria2-style binary key", {"key": b"\xb9\x2f\x00\xff\x80\x01\x26\x3d"}, "key",
     b"\xb9\x2f\x00\xff\x80\x01\x26\x3d"),
]


@pytest.mark.parametrize(("fields", "attribute", "expected"), [c[1:] for c in ACCEPTED_BOUNDARY_CASES],
                         ids=[c[0] for c in ACCEPTED_BOUNDARY_CASES])
def test_parse_announce_accepts_values_at_the_limits(fields, attribute, expected):
    assert getattr(parse(announce_params(**fields)), attribute) == expected


def test_binary_key_arrives_as_exact_bytes_from_the_raw_query():
    """aria2 sends `key` as URL-encoded random bytes; it is stored opaque, not decoded as text."""
    query = announce_params()  # then add a hand-encoded key, mixed-case escapes
    query.update(parse_query(b"key=%B9%2f%00%FF+%e2"))
    assert parse(query).key == b"\xb9\x2f\x00\xff \xe2"


def announce_query(**extra: bytes) -> bytes:
    return b"&".join([b"info_hash=" + b"a" * 20, b"peer_id=" + b"p" * 20, b"port=1", b"left=5",
                      *(k.encode() + b"=" + v for k, v in extra.items())])


@pytest.mark.parametrize("key", sorted(k.decode() for k in READ_ONCE))
def test_an_announce_names_each_parameter_it_is_read_for_once(key):
    """Issue 17: Apache routes an announce by its first info_hash; a second one would let the
    tracker read another, in a process that does not hold the swarm. Every parameter the
    tracker reads is refused twice, wherever the two are."""
    for query in (announce_query() + b"&" + key.encode() + b"=1&" + key.encode() + b"=2",
                  key.encode() + b"=1&" + announce_query() + b"&" + key.encode(),
                  key.encode() + b"&&" + key.encode()):
        with pytest.raises(ClientError) as exc:
            parse_query(query)
        assert exc.value.reason == REPEATED_PARAMETER


def test_the_split_routing_attack_of_issue_17_is_refused():
    other, real = b"%01" * 20, b"%02" * 20  # routed by the first byte: another process than the real one's
    with pytest.raises(ClientError) as exc:
        parse_query(b"info_hash=" + other + b"&info_hash=" + real + b"&peer_id=" + b"p" * 20 + b"&port=1&left=1")
    assert exc.value.reason == REPEATED_PARAMETER
    # An encoded key is not an info_hash, so it cannot stand in for the first one either.
    fields = parse_query(b"info%5Fhash=" + other + b"&info_hash=" + real + b"&peer_id=" + b"p" * 20 + b"&port=1&left=1")
    assert parse(fields).info_hash == b"\x02" * 20
    with pytest.raises(ClientError) as exc:
        parse(parse_query(b"info%5Fhash=" + real + b"&peer_id=" + b"p" * 20 + b"&port=1&left=1"))
    assert exc.value.reason == BAD_INFO_HASH


def test_empty_fields_and_unread_keys_may_repeat():
    fields = parse_query(b"&&" + announce_query(ipv6=b"1", x=b"2") + b"&ipv6=3&x=4&&")
    assert (fields[b"ipv6"], fields[b"x"], parse(fields).port) == (b"3", b"4", 1)


EVENT_CASES = [
    ("started", "started", Event.STARTED),
    ("stopped", "stopped", Event.STOPPED),
    ("completed", "completed", Event.COMPLETED),
    ("paused (BEP 21)", "paused", Event.PAUSED),
    ("empty is a regular announce", "", Event.NONE),
    ("absent is a regular announce", DROP, Event.NONE),
]


@pytest.mark.parametrize(("event", "expected"), [c[1:] for c in EVENT_CASES], ids=[c[0] for c in EVENT_CASES])
def test_parse_announce_events(event, expected):
    assert parse(announce_params(event=event)).event is expected


NUMWANT_CASES = [
    # (id, fields, numwant after policy)
    ("default when absent", {}, 50),
    ("as asked", {"numwant": 10}, 10),
    ("zero is honoured", {"numwant": 0}, 0),
    ("at the cap", {"numwant": 200}, 200),
    ("capped at policy max", {"numwant": 201}, 200),
    ("huge is capped", {"numwant": 10**12}, 200),
    ("stopped forces 0", {"event": "stopped", "numwant": 30}, 0),
    ("stopped forces 0 over the default", {"event": "stopped"}, 0),
    ("completed keeps numwant", {"event": "completed", "numwant": 30}, 30),
]


@pytest.mark.parametrize(("fields", "expected"), [c[1:] for c in NUMWANT_CASES], ids=[c[0] for c in NUMWANT_CASES])
def test_parse_announce_numwant(fields, expected):
    assert parse(announce_params(**fields)).numwant == expected


def test_numwant_default_and_cap_come_from_the_policy():
    policy = AnnouncePolicy(numwant_default=7, numwant_max=9)
    assert parse(announce_params(), policy=policy).numwant == 7
    assert parse(announce_params(numwant=100), policy=policy).numwant == 9


FLAG_CASES = [
    # (id, fields, (compact, no_peer_id))
    ("compact by default (BEP 23)", {}, (True, False)),
    ("compact=1", {"compact": 1}, (True, False)),
    ("compact=0 asks for the dictionary model", {"compact": 0}, (False, False)),
    ("empty compact keeps the default", {"compact": ""}, (True, False)),
    ("no_peer_id=1", {"no_peer_id": 1}, (True, True)),
    ("no_peer_id=0", {"no_peer_id": 0}, (True, False)),
    ("compact=0 and no_peer_id=1", {"compact": 0, "no_peer_id": 1}, (False, True)),
]


@pytest.mark.parametrize(("fields", "expected"), [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES])
def test_parse_announce_flags(fields, expected):
    request = parse(announce_params(**fields))
    assert (request.compact, request.no_peer_id) == expected


IP_CASES = [
    # (id, ip= value, trusted, expected ip, expected warning)
    ("trusted client names another IPv4", "203.0.113.9", True, packed("203.0.113.9"), None),
    ("trusted client names an IPv6 literal", "2001:db8::1", True, packed("2001:db8::1"), None),
    ("trusted client, IPv4-mapped IPv6 becomes IPv4", "::ffff:203.0.113.9", True, packed("203.0.113.9"), None),
    ("untrusted client: ip= ignored with a warning", "203.0.113.9", False, CLIENT, IP_IGNORED),
    ("untrusted client, IPv6 ip= ignored with a warning", "2001:db8::1", False, CLIENT, IP_IGNORED),
    ("untrusted client naming its own address: no warning", CLIENT_TEXT, False, CLIENT, None),
    ("empty ip= is no ip", "", False, CLIENT, None),
    ("absent ip=", DROP, False, CLIENT, None),
]


@pytest.mark.parametrize(("ip", "trusted", "expected_ip", "warning"), [c[1:] for c in IP_CASES],
                         ids=[c[0] for c in IP_CASES])
def test_parse_announce_ip_parameter(ip, trusted, expected_ip, warning):
    """`ip=` is honoured only for clients allowed to name another address (BEP 3);
    `client_ip` always stays the address the request came from (BEP 24)."""
    request = parse(announce_params(ip=ip), trusted=trusted)
    assert (request.ip, request.client_ip, request.warning) == (expected_ip, CLIENT, warning)


def test_ipv6_client_is_its_own_peer_address():
    client = packed("2001:db8::7")
    request = parse(announce_params(), client_ip=client)
    assert (request.ip, request.client_ip) == (client, client)
    assert len(request.ip) == 16


# --------------------------------------------------------------------------------------
# encode_announce
# --------------------------------------------------------------------------------------

def make_request(**fields) -> AnnounceRequest:
    base = dict(info_hash=ih(1), peer_id=pid(1), ip=CLIENT, port=6881, uploaded=0, downloaded=0,
                left=100, event=Event.NONE, numwant=50, compact=True, no_peer_id=False, key=None,
                tracker_id=None, client_ip=CLIENT, warning=None)
    base.update(fields)
    return AnnounceRequest(**base)


STATS = SwarmStats(complete=3, incomplete=2, downloaded=7, downloaders=1)
V4_A = make_peer(packed("10.0.0.1"), 6881, pid(2))  # port 6881 = 0x1AE1
V4_B = make_peer(packed("192.168.1.2"), 51413, pid(3))  # port 51413 = 0xC8D5
V6_A = make_peer(packed("2001:db8::1"), 6882, pid(4))  # port 6882 = 0x1AE2

# The keys every announce answer has, in sorted order (BEP 3 bencoding sorts dict keys).
HEAD = (b"d8:completei3e10:downloadedi7e11:external ip4:\xc6\x33\x64\x07"
        b"10:incompletei2e8:intervali1800e12:min intervali300e")

ENCODE_ANNOUNCE_CASES = [
    # (id, request fields, peers, exact bytes)
    ("compact, no peers", {}, (), HEAD + b"5:peers0:e"),
    ("compact IPv4: 4-byte address + 2-byte big-endian port (BEP 23)", {}, (V4_A, V4_B),
     HEAD + b"5:peers12:\x0a\x00\x00\x01\x1a\xe1\xc0\xa8\x01\x02\xc8\xd5e"),
    ("compact IPv6 goes to peers6, 18 bytes each (BEP 7)", {}, (V4_A, V6_A),
     HEAD + b"5:peers6:\x0a\x00\x00\x01\x1a\xe1"
     b"6:peers618:\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01\x1a\xe2e"),
    ("compact IPv6 only: peers is empty, peers6 holds them", {}, (V6_A,),
     HEAD + b"5:peers0:6:peers618:\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01\x1a\xe2e"),
    ("dictionary model with peer id", {"compact": False}, (V4_A, V6_A),
     HEAD + b"5:peersl"
     b"d2:ip8:10.0.0.17:peer id20:" + pid(2) + b"4:porti6881ee"
     b"d2:ip11:2001:db8::17:peer id20:" + pid(4) + b"4:porti6882ee"
     b"ee"),
    ("dictionary model without peer id (no_peer_id)", {"compact": False, "no_peer_id": True}, (V4_A,),
     HEAD + b"5:peersld2:ip8:10.0.0.14:porti6881eeee"),
    ("dictionary model, no peers", {"compact": False}, (), HEAD + b"5:peerslee"),
    ("tracker id when given", {"tracker_id": b"T1"}, (), HEAD + b"5:peers0:10:tracker id2:T1e"),
    ("warning message when set", {"warning": "careful"}, (),
     HEAD + b"5:peers0:15:warning message7:carefule"),
    ("tracker id and warning, sorted after peers6", {"tracker_id": b"x", "warning": "w"}, (V6_A,),
     HEAD + b"5:peers0:6:peers618:\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01\x1a\xe2"
     b"10:tracker id1:x15:warning message1:we"),
]


@pytest.mark.parametrize(("fields", "peers", "expected"), [c[1:] for c in ENCODE_ANNOUNCE_CASES],
                         ids=[c[0] for c in ENCODE_ANNOUNCE_CASES])
def test_encode_announce_exact_bytes(fields, peers, expected):
    """Byte-exact answers: sorted keys (BEP 3), compact peers (BEP 23), peers6 (BEP 7),
    `external ip` packed (BEP 24)."""
    request = make_request(**fields)
    handed_out = [p.compact for p in peers] if request.compact else peers  # as the view gives them
    body = encode_announce(request, AnnounceResult(STATS, handed_out), 1800, 300)
    assert body == expected


def test_encode_announce_external_ip_is_the_packed_client_address_not_the_peer_ip():
    """BEP 24: `external ip` is where the request came from, even when `ip=` moved the peer."""
    client6 = packed("2001:db8::42")
    request = make_request(ip=packed("203.0.113.9"), client_ip=client6)
    body = encode_announce(request, AnnounceResult(STATS, ()), 1800, 300)
    assert b"11:external ip16:" + client6 + b"10:incomplete" in body
    assert packed("203.0.113.9") not in body


# --------------------------------------------------------------------------------------
# encode_scrape, encode_failure
# --------------------------------------------------------------------------------------

SCRAPE_CASES = [
    # (id, files, exact bytes)
    ("no files", {}, b"d5:filesdee"),
    ("one file with its name", {ih(1): SwarmStats(1, 2, 3, 1, "ubuntu.iso")},
     b"d5:filesd20:" + ih(1) + b"d8:completei1e10:downloadedi3e11:downloadersi1e"
     b"10:incompletei2e4:name10:ubuntu.isoeee"),
    ("empty name is left out", {ih(1): SwarmStats(0, 0, 0, 0, "")},
     b"d5:filesd20:" + ih(1) + b"d8:completei0e10:downloadedi0e11:downloadersi0e10:incompletei0eeee"),
    ("name is UTF-8", {ih(1): SwarmStats(0, 1, 0, 0, "caf\u00e9")},
     b"d5:filesd20:" + ih(1) + b"d8:completei0e10:downloadedi0e11:downloadersi0e"
     b"10:incompletei1e4:name5:caf\xc3\xa9eee"),
    ("hashes sorted as bytes", {ih(2): SwarmStats(0, 0, 5, 0), ih(1): SwarmStats(1, 0, 0, 0)},
     b"d5:filesd"
     b"20:" + ih(1) + b"d8:completei1e10:downloadedi0e11:downloadersi0e10:incompletei0ee"
     b"20:" + ih(2) + b"d8:completei0e10:downloadedi5e11:downloadersi0e10:incompletei0ee"
     b"ee"),
]


@pytest.mark.parametrize(("files", "expected"), [c[1:] for c in SCRAPE_CASES], ids=[c[0] for c in SCRAPE_CASES])
def test_encode_scrape_exact_bytes(files, expected):
    """BEP 48 scrape: complete, incomplete, downloaded; BEP 21 downloaders; name if known."""
    assert encode_scrape(files) == expected


FAILURE_CASES = [
    ("without retry in", ("Nope.", None), b"d14:failure reason5:Nope.e"),
    ("with retry in minutes (BEP 31)", ("Later.", 1), b"d14:failure reason6:Later.8:retry ini1ee"),
    ("retry in 0 is still sent", ("x", 0), b"d14:failure reason1:x8:retry ini0ee"),
]


@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in FAILURE_CASES], ids=[c[0] for c in FAILURE_CASES])
def test_encode_failure_exact_bytes(args, expected):
    assert encode_failure(*args) == expected


# --------------------------------------------------------------------------------------
# parse_scrape
# --------------------------------------------------------------------------------------

def scrape_query(*hashes: bytes) -> bytes:
    return urlencode([("info_hash", h) for h in hashes]).encode()


def plain(n: int) -> bytes:
    """A 20-byte hash of ASCII digits: needs no %-escapes, so the query stays short."""
    return f"{n:020d}".encode()


SCRAPE_PARSE_CASES = [
    # (id, hashes sent, hashes returned)
    ("none is a full scrape", (), []),
    ("one", (ih(1),), [ih(1)]),
    ("several, in order", (ih(3), ih(1), ih(2)), [ih(3), ih(1), ih(2)]),
    ("duplicates collapsed, first position kept", (ih(1), ih(2), ih(1), ih(2)), [ih(1), ih(2)]),
    ("exactly the maximum", tuple(plain(n) for n in range(MAX_SCRAPE_HASHES)),
     [plain(n) for n in range(MAX_SCRAPE_HASHES)]),
]


@pytest.mark.parametrize(("hashes", "expected"), [c[1:] for c in SCRAPE_PARSE_CASES],
                         ids=[c[0] for c in SCRAPE_PARSE_CASES])
def test_parse_scrape(hashes, expected):
    """BEP 48: `info_hash` may repeat; no info_hash asks for every torrent."""
    assert parse_scrape(scrape_query(*hashes)) == expected


def test_parse_scrape_ignores_other_keys_and_reads_keys_as_parse_query_does():
    escaped = b"%" + b"%".join(f"{b:02x}".encode() for b in ih(1))
    query = b"peer_id=" + pid(1) + b"&info%5Fhash=" + plain(3) + b"&info_hash=" + escaped
    assert parse_scrape(query + b"&info_hash=" + plain(7)) == [ih(1), plain(7)]


def test_parse_scrape_refuses_an_oversize_query():
    with pytest.raises(ClientError) as exc:
        parse_scrape(b"info_hash=" + b"x" * MAX_QUERY_BYTES)
    assert exc.value.reason == QUERY_TOO_LONG


BAD_SCRAPE_CASES = [
    ("one too many", tuple(plain(n) for n in range(MAX_SCRAPE_HASHES + 1)), TOO_MANY_HASHES),
    ("19 bytes", (ih(1)[:19],), BAD_INFO_HASH),
    ("21 bytes", (ih(1) + b"x",), BAD_INFO_HASH),
    ("one bad among good ones", (ih(1), b"short", ih(2)), BAD_INFO_HASH),
    ("empty value", (b"",), BAD_INFO_HASH),
]


@pytest.mark.parametrize(("hashes", "reason"), [c[1:] for c in BAD_SCRAPE_CASES], ids=[c[0] for c in BAD_SCRAPE_CASES])
def test_parse_scrape_refuses(hashes, reason):
    with pytest.raises(ClientError) as exc:
        parse_scrape(scrape_query(*hashes))
    assert exc.value.reason == reason


def test_a_scrape_of_the_maximum_number_of_hashes_fits_in_the_query_limit():
    """MAX_SCRAPE_HASHES promises 64 hashes per scrape (BEP 48 lets `info_hash` repeat).
    Clients %-escape every byte outside [A-Za-z0-9._~-], so a hash can take 60 characters;
    64 such hashes must still be accepted, not refused as an over-long query."""
    hashes = [bytes([0xFF] * 19 + [0x80 + n]) for n in range(MAX_SCRAPE_HASHES)]
    query = scrape_query(*hashes)
    assert len(query) == MAX_SCRAPE_HASHES * len("info_hash=" + "%FF" * 20) + MAX_SCRAPE_HASHES - 1
    assert parse_scrape(query) == hashes


def test_too_many_hashes_reason_names_the_limit():
    assert TOO_MANY_HASHES == "Too many info_hash values: at most 64 per scrape."


# --------------------------------------------------------------------------------------
# jittered_interval
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("interval", "low", "high"), [(1800, 1620, 1980), (60, 54, 66), (3600, 3240, 3960)])
def test_jittered_interval_stays_within_ten_percent_and_varies(interval, low, high):
    """Re-announces are spread by up to 10% either way, so a burst does not come back as one."""
    rng = random.Random(20240601)
    draws = [jittered_interval(interval, rng) for _ in range(20000)]
    assert all(low <= d <= high for d in draws)
    assert (min(draws), max(draws)) == (low, high)  # the whole range is used
    assert len(set(draws)) == high - low + 1


def test_jittered_interval_is_deterministic_for_a_seeded_rng():
    """The function reads no global randomness: the same seed gives the same draws."""
    first = [jittered_interval(1800, random.Random(7)) for _ in range(5)]
    assert len(set(first)) == 1
    a, b = random.Random(99), random.Random(99)
    assert [jittered_interval(1800, a) for _ in range(50)] == [jittered_interval(1800, b) for _ in range(50)]


def test_parse_query_decodes_exactly_as_urllib_does():
    """Escapes are decoded by a faster route than urllib's; on any input, including
    backslashes and broken escapes, it must give urllib's bytes."""
    rng = random.Random(7)
    alphabet = b"%\\+abcxyzABCDEF0123456789=-_.~!"
    for _ in range(5000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(25)))
        for value in (
            quote_from_bytes(raw).encode(),
            "".join(f"%{b:02x}" for b in raw).encode(),
            bytes(rng.choice(alphabet) for _ in range(rng.randrange(25))).replace(b"=", b""),
        ):
            expected = unquote_to_bytes(value.replace(b"+", b" "))
            assert parse_query(b"k=" + value) == {b"k": expected}, value


def test_compact_answers_are_exactly_bencode_of_their_dictionary():
    """The compact answer's bencoding is written out by hand for speed; on random answers
    (IPv4 and IPv6 peers, tracker id, warning, large counts) it must equal bencode's."""
    from bencoder import bencode

    rng = random.Random(11)
    for _ in range(2000):
        peers = tuple(
            make_peer(bytes(rng.randrange(256) for _ in range(rng.choice([4, 4, 16]))), rng.randrange(1, 65536),
                      bytes(rng.randrange(256) for _ in range(20)))
            for _ in range(rng.randrange(60))
        )
        client_ip = bytes(rng.randrange(256) for _ in range(rng.choice([4, 16])))
        request = AnnounceRequest(
            info_hash=ih(1), peer_id=pid(1), ip=client_ip, port=1, uploaded=0, downloaded=0, left=0,
            event=Event.NONE, numwant=50, compact=True, no_peer_id=False, key=None,
            tracker_id=rng.choice([None, b"", b"id\x00\xff"]), client_ip=client_ip,
            warning=rng.choice([None, "The ip parameter is ignored."]),
        )
        stats = SwarmStats(rng.randrange(10**12), rng.randrange(10**6), rng.randrange(10**9), 0, "")
        interval, min_interval = rng.randrange(60, 86400), rng.randrange(0, 600)
        expected = {
            b"interval": interval, b"min interval": min_interval, b"complete": stats.complete,
            b"incomplete": stats.incomplete, b"downloaded": stats.downloaded, b"external ip": client_ip,
            b"peers": b"".join(p.compact for p in peers if len(p.ip) == 4),
        }
        if any(len(p.ip) == 16 for p in peers):
            expected[b"peers6"] = b"".join(p.compact for p in peers if len(p.ip) == 16)
        if request.tracker_id:
            expected[b"tracker id"] = request.tracker_id
        if request.warning:
            expected[b"warning message"] = request.warning.encode()
        result = AnnounceResult(stats, [p.compact for p in peers])
        assert encode_announce(request, result, interval, min_interval) == bencode(expected)


def test_the_info_hash_apache_routes_by_is_the_one_the_tracker_reads():
    """apache_conf.FIRST_INFO_HASH finds the value Apache routes an announce by; for every
    announce the tracker accepts, it is the info_hash the tracker reads (issue 17)."""
    import re

    from tracker_wsgi.apache_conf import FIRST_INFO_HASH

    rng = random.Random(17)
    first_value = re.compile(FIRST_INFO_HASH + "([^&]*)")
    decoys = ["xinfo_hash=" + "%01" * 20, "info%5Fhash=" + "%02" * 20, "info_hash", "info_hashx=1", "Info_hash=3",
              "a=info_hash=4", ""]
    accepted = 0
    for _ in range(3000):
        fields = [f"info_hash={quote_from_bytes(bytes(rng.randrange(256) for _ in range(20)), safe='')}",
                  f"peer_id={'p' * 20}", "port=1", "left=1"]
        fields += rng.sample(decoys, rng.randrange(3)) + (["info_hash=" + "%03" * 20] if rng.random() < 0.2 else [])
        rng.shuffle(fields)
        query = "&".join(fields)
        try:
            request = parse(parse_query(query.encode()))
        except ClientError:
            continue
        accepted += 1
        routed = first_value.match(query)
        assert routed is not None and unquote_to_bytes(routed.group(1).replace("+", " ")) == request.info_hash, query
    assert accepted > 1000
