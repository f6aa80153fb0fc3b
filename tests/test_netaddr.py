"""tracker_wsgi.netaddr: which address a request really comes from.

X-Forwarded-For is a list any client can write to; only the entries appended by proxies we
trust are facts. The rule: believe the header only when the connection comes from a
trusted proxy, then take the rightmost entry that is not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress

import pytest

from tracker_wsgi.netaddr import client_address, is_trusted, pack_ip, parse_networks, unpack_ip

PROXIES = parse_networks(["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"])
NO_PROXIES = parse_networks([])


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


CASES = [
    # (id, REMOTE_ADDR, X-Forwarded-For, trusted networks, the client's address)
    ("no proxy trusted: REMOTE_ADDR", "203.0.113.5", None, NO_PROXIES, "203.0.113.5"),
    ("no proxy trusted: X-Forwarded-For ignored", "203.0.113.5", "198.51.100.1", NO_PROXIES, "203.0.113.5"),
    ("no proxy trusted, even from loopback", "127.0.0.1", "198.51.100.1", NO_PROXIES, "127.0.0.1"),
    ("untrusted peer: its X-Forwarded-For is ignored", "203.0.113.5", "198.51.100.1", PROXIES, "203.0.113.5"),
    ("untrusted peer claiming a trusted address", "203.0.113.5", "10.0.0.9", PROXIES, "203.0.113.5"),
    ("trusted proxy without the header", "10.0.0.1", None, PROXIES, "10.0.0.1"),
    ("trusted proxy with an empty header", "10.0.0.1", "", PROXIES, "10.0.0.1"),
    ("trusted proxy: the address it saw", "10.0.0.1", "198.51.100.1", PROXIES, "198.51.100.1"),
    ("forged left entries are not believed", "10.0.0.1", "1.1.1.1, 8.8.8.8, 198.51.100.1", PROXIES,
     "198.51.100.1"),
    ("chain of trusted proxies: rightmost untrusted entry", "10.0.0.1",
     "1.1.1.1, 198.51.100.1, 10.0.0.3, 127.0.0.1", PROXIES, "198.51.100.1"),
    ("every entry trusted: the leftmost one", "10.0.0.1", "10.0.0.2, 10.0.0.3", PROXIES, "10.0.0.2"),
    ("spaces around entries", "10.0.0.1", "  198.51.100.1  ,10.0.0.2 ", PROXIES, "198.51.100.1"),
    ("garbage left of the client is never reached", "10.0.0.1", "garbage, 198.51.100.1", PROXIES,
     "198.51.100.1"),
    ("garbage rightmost: stop at the proxy we trust", "10.0.0.1", "198.51.100.1, garbage", PROXIES, "10.0.0.1"),
    ("garbage after a trusted hop: stop at that hop", "10.0.0.1", "198.51.100.1, garbage, 10.0.0.2", PROXIES,
     "10.0.0.2"),
    ("entry with a port is garbage", "10.0.0.1", "198.51.100.1:51413", PROXIES, "10.0.0.1"),
    ("bracketed IPv6 is garbage", "10.0.0.1", "[2001:db8::7]", PROXIES, "10.0.0.1"),
    ("host name is garbage, never resolved", "10.0.0.1", "localhost", PROXIES, "10.0.0.1"),
    ("empty entry is garbage", "10.0.0.1", "198.51.100.1,", PROXIES, "10.0.0.1"),
    ("IPv4-mapped REMOTE_ADDR becomes IPv4", "::ffff:203.0.113.5", None, NO_PROXIES, "203.0.113.5"),
    ("IPv4-mapped proxy matches an IPv4 network", "::ffff:10.0.0.1", "198.51.100.1", PROXIES, "198.51.100.1"),
    ("IPv4-mapped forwarded entry becomes IPv4", "10.0.0.1", "::ffff:198.51.100.1", PROXIES, "198.51.100.1"),
    ("IPv4-mapped trusted hop is skipped", "10.0.0.1", "198.51.100.1, ::ffff:10.0.0.2", PROXIES, "198.51.100.1"),
    ("IPv6 client", "2001:db8::5", None, PROXIES, "2001:db8::5"),
    ("IPv6 client behind an IPv6 proxy", "fd00::1", "2001:db8::7", PROXIES, "2001:db8::7"),
    ("IPv6 client behind an IPv4 proxy", "10.0.0.1", "2001:db8::7", PROXIES, "2001:db8::7"),
    ("IPv4 client behind an IPv6 proxy", "fd00::1", "198.51.100.1", PROXIES, "198.51.100.1"),
    ("IPv6 untrusted peer: header ignored", "2001:db8::5", "198.51.100.1", PROXIES, "2001:db8::5"),
]


@pytest.mark.parametrize(("remote", "forwarded", "trusted", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_client_address(remote, forwarded, trusted, expected):
    address = client_address(remote, forwarded, trusted)
    assert address == packed(expected)
    assert len(address) == (4 if "." in expected else 16)


def test_client_address_refuses_a_remote_addr_that_is_not_an_ip():
    with pytest.raises(ValueError):
        client_address("unix:/run/apache.sock", None, PROXIES)


PACK_CASES = [
    ("IPv4", "192.0.2.1", b"\xc0\x00\x02\x01"),
    ("IPv4 with spaces", " 192.0.2.1 ", b"\xc0\x00\x02\x01"),
    ("IPv6", "2001:db8::1", b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01"),
    ("IPv4-mapped IPv6 is IPv4", "::ffff:192.0.2.1", b"\xc0\x00\x02\x01"),
    ("IPv4-compatible (not mapped) stays IPv6", "::192.0.2.1", b"\x00" * 12 + b"\xc0\x00\x02\x01"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in PACK_CASES], ids=[c[0] for c in PACK_CASES])
def test_pack_ip(text, expected):
    assert pack_ip(text) == expected


@pytest.mark.parametrize("text", ["", "localhost", "1.2.3", "1.2.3.4.5", "300.1.1.1", "1.2.3.4:80", "[::1]"])
def test_pack_ip_refuses_what_is_not_an_ip_literal(text):
    with pytest.raises(ValueError):
        pack_ip(text)


@pytest.mark.parametrize(("packed_ip", "text"), [(b"\xc0\x00\x02\x01", "192.0.2.1"),
                                                 (b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01", "2001:db8::1")])
def test_unpack_ip(packed_ip, text):
    assert unpack_ip(packed_ip) == text


TRUST_CASES = [
    ("inside an IPv4 network", "10.200.0.1", True),
    ("outside every network", "11.0.0.1", False),
    ("exact /32", "127.0.0.1", True),
    ("next to the /32", "127.0.0.2", False),
    ("inside an IPv6 network", "fd12::1", True),
    ("outside the IPv6 network", "fe80::1", False),
]


@pytest.mark.parametrize(("address", "expected"), [c[1:] for c in TRUST_CASES], ids=[c[0] for c in TRUST_CASES])
def test_is_trusted(address, expected):
    assert is_trusted(packed(address), PROXIES) is expected


def test_parse_networks_accepts_host_bits_and_bare_addresses():
    """Config values like "10.0.0.1/8" or "::1" are networks, not errors."""
    assert parse_networks(["10.0.0.1/8", "::1"]) == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize("text", ["01.2.3.4", "1.2.3.04", "0.0.0.0", "255.255.255.255", "1.2.3.256", "+1.2.3.4",
                                  "1.2.3.4\n", "1.2.3.4\x00", "\u0661.2.3.4", "1.2.3.4 ", "0x1.2.3.4", "1..3.4"])
def test_pack_ip_fast_path_agrees_with_ipaddress(text):
    """pack_ip's inet_pton fast path accepts and refuses what ipaddress does."""
    import ipaddress

    try:
        expected = ipaddress.ip_address(text.strip()).packed
    except ValueError:
        with pytest.raises(ValueError):
            pack_ip(text)
    else:
        assert pack_ip(text) == expected
