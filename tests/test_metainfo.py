"""tracker_wsgi.metainfo: .torrent bytes in, a Torrent out, or a MetainfoError - never a crash.

Every torrent here is built by hand in the test, so the expected hash is computed from
bytes the test itself wrote.
"""

from __future__ import annotations

import hashlib

import pytest
from bencoder import bdecode, bencode

from tracker_wsgi.metainfo import MAX_NESTING, MAX_TORRENT_BYTES, MetainfoError, parse_torrent
from tracker_wsgi.model import Torrent

ANNOUNCE = b"http://tracker.example/tracker/announce"
PIECES = bytes(range(20)) * 2  # two SHA-1 piece hashes


def sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


def sha256_20(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:20]


def torrent_bytes(info: dict, top: dict | None = None) -> bytes:
    return bencode({b"announce": ANNOUNCE, b"info": info, **(top or {})})


V1_SINGLE = {b"length": 12345, b"name": b"file.bin", b"piece length": 16384, b"pieces": PIECES}
V1_MULTI = {
    b"files": [
        {b"length": 100, b"path": [b"a.txt"]},
        {b"length": 0, b"path": [b"empty"]},
        {b"length": 2**40, b"path": [b"sub", b"big.iso"]},
    ],
    b"name": b"album",
    b"piece length": 262144,
    b"pieces": PIECES,
}
FILE_TREE = {
    b"a.txt": {b"": {b"length": 10, b"pieces root": b"r" * 32}},
    b"sub": {
        b"b.bin": {b"": {b"length": 20, b"pieces root": b"s" * 32}},
        b"deeper": {b"c.bin": {b"": {b"length": 300, b"pieces root": b"t" * 32}}},
    },
}
V2_ONLY = {b"file tree": FILE_TREE, b"meta version": 2, b"name": b"v2dir", b"piece length": 16384}
HYBRID = {**V1_MULTI, b"file tree": FILE_TREE, b"meta version": 2}


def test_v1_single_file():
    """BEP 3: the info hash is SHA-1 of the bencoded info dictionary; size is `length`."""
    data = torrent_bytes(V1_SINGLE)
    meta = parse_torrent(data, "dir/file.torrent")
    assert meta.torrent == Torrent(
        info_hash=sha1(bencode(V1_SINGLE)), info_hash_v2=None, name="file.bin", size=12345, path="dir/file.torrent"
    )
    assert meta.announce_urls == (ANNOUNCE.decode(),)


def test_v1_multi_file_size_is_the_sum_of_the_files():
    meta = parse_torrent(torrent_bytes(V1_MULTI))
    assert meta.torrent == Torrent(sha1(bencode(V1_MULTI)), None, "album", 100 + 0 + 2**40, "")


def test_v2_only_is_known_by_its_truncated_sha256_alone():
    """BEP 52: a v2 torrent's info hash is SHA-256; trackers see it truncated to 20 bytes.
    A v2-only torrent has no v1 hash, so the truncated SHA-256 is its one info hash."""
    meta = parse_torrent(torrent_bytes(V2_ONLY))
    assert meta.torrent == Torrent(
        info_hash=sha256_20(bencode(V2_ONLY)), info_hash_v2=None, name="v2dir", size=10 + 20 + 300,
        info_sha256=hashlib.sha256(bencode(V2_ONLY)).digest(),
    )
    assert meta.torrent.info_hashes == (sha256_20(bencode(V2_ONLY)),)


def test_hybrid_has_the_v1_hash_and_the_truncated_sha256_alias():
    """BEP 52 hybrid: v1 clients announce the SHA-1, v2 clients the truncated SHA-256;
    both name the same swarm. Size comes from the v1 file list."""
    raw = bencode(HYBRID)
    meta = parse_torrent(torrent_bytes(HYBRID))
    assert meta.torrent == Torrent(sha1(raw), sha256_20(raw), "album", 100 + 2**40,
                                   info_sha256=hashlib.sha256(raw).digest())
    assert meta.torrent.info_hashes == (sha1(raw), sha256_20(raw))


def test_meta_version_2_without_a_file_tree_is_plain_v1():
    info = {**V1_SINGLE, b"meta version": 2}
    assert parse_torrent(torrent_bytes(info)).torrent.info_hash_v2 is None


# Hand-written info dict whose keys are NOT in sorted order (`name` before `length`, and
# `pieces` before `piece length`): bencoding it again would sort them and change the hash.
UNSORTED_INFO = (
    b"d4:name8:file.bin6:pieces20:" + bytes(range(20)) + b"12:piece lengthi16384e6:lengthi5ee"
)


def test_info_hash_is_over_the_raw_info_bytes_not_a_re_encoding():
    """The hash is of the `info` value exactly as it stands in the file: a tracker that
    re-encodes the decoded dict computes another hash and never matches its clients."""
    data = b"d4:info" + UNSORTED_INFO + b"8:announce" + b"%d:" % len(ANNOUNCE) + ANNOUNCE + b"e"
    re_encoded = bencode(bdecode(UNSORTED_INFO))
    assert re_encoded != UNSORTED_INFO  # the premise: re-encoding changes the bytes
    meta = parse_torrent(data)
    assert meta.torrent.info_hash == sha1(UNSORTED_INFO)
    assert meta.torrent.info_hash != sha1(re_encoded)
    assert (meta.torrent.name, meta.torrent.size) == ("file.bin", 5)
    assert meta.announce_urls == (ANNOUNCE.decode(),)


def test_raw_info_bytes_also_decide_the_v2_hash():
    raw = (b"d9:file treed5:a.txtd0:d6:lengthi7e11:pieces root32:" + b"r" * 32 + b"eee"
           b"4:name2:v212:meta versioni2e12:piece lengthi16384ee")  # `name` before `meta version`
    assert bencode(bdecode(raw)) != raw
    meta = parse_torrent(b"d4:info" + raw + b"e")
    assert meta.torrent == Torrent(sha256_20(raw), None, "v2", 7, info_sha256=hashlib.sha256(raw).digest())


def test_announce_urls_collect_announce_and_every_announce_list_entry_once():
    """BEP 12 announce-list tiers are flattened in order; duplicates and blanks dropped,
    non-list tiers and non-string entries ignored."""
    data = torrent_bytes(
        V1_SINGLE,
        {b"announce-list": [[b"http://a/announce", ANNOUNCE], [b"udp://b:80"], b"not-a-tier",
                              [b"", 7, b"http://a/announce"], [b"http://c/\xff"]]},
    )
    assert parse_torrent(data).announce_urls == (
        ANNOUNCE.decode(), "http://a/announce", "udp://b:80", "http://c/\ufffd"
    )


def test_no_announce_at_all_is_fine():
    assert parse_torrent(bencode({b"info": V1_SINGLE})).announce_urls == ()


def test_name_that_is_not_utf8_is_replaced_not_refused():
    info = {**V1_SINGLE, b"name": b"caf\xe9"}
    assert parse_torrent(torrent_bytes(info)).torrent.name == "caf\ufffd"


def test_exactly_max_torrent_bytes_is_accepted():
    def padded(n: int) -> bytes:
        return torrent_bytes(V1_SINGLE, {b"comment": b"x" * n})

    n = MAX_TORRENT_BYTES - len(padded(0))
    n -= len(padded(n)) - MAX_TORRENT_BYTES  # the comment's length prefix grew by a few digits
    data = padded(n)
    assert len(data) == MAX_TORRENT_BYTES
    assert parse_torrent(data).torrent.size == 12345


def test_nesting_up_to_the_limit_is_accepted():
    """Real torrents nest about 5 deep; MAX_NESTING levels are still fine."""
    deep = b"l" * (MAX_NESTING - 2) + b"e" * (MAX_NESTING - 2)  # top dict + this list chain
    data = b"d7:comment" + deep + b"4:info" + bencode(V1_SINGLE) + b"e"
    assert parse_torrent(data).torrent.info_hash == sha1(bencode(V1_SINGLE))


VALID = torrent_bytes(V1_SINGLE)


def info_torrent(info: dict) -> bytes:
    return torrent_bytes(info)


HOSTILE_CASES = [
    # (id, data, exact MetainfoError message)
    ("empty", b"", "truncated bencoding"),
    ("garbage text", b"hello, I am not a torrent", "not bencoded"),
    ("HTML page", b"<html><body>404</body></html>", "not bencoded"),
    ("lone end marker", b"e", "unexpected end marker"),
    ("truncated by one byte", VALID[:-1], "truncated bencoding"),
    ("truncated inside a string", VALID[: VALID.index(PIECES) + 5], "truncated string"),
    ("truncated inside an integer", b"d4:infod6:lengthi12", "truncated integer"),
    ("string length beyond the data", b"d4:info99999999:abc", "truncated string"),
    ("string length not a number", b"d4:info3x:abce", "bad string length"),
    ("string length too long to be real", b"d4:info" + b"9" * 30 + b":x", "bad string length"),
    ("deep nesting under info", b"d4:info" + b"l" * 100000, "nested too deeply"),
    ("deep nesting alone", b"l" * 100000, "nested too deeply"),
    ("deep dict nesting", b"d1:a" * 100000, "nested too deeply"),
    ("one level past the limit", b"d4:info" + b"l" * MAX_NESTING + b"e" * MAX_NESTING + b"e",
     "nested too deeply"),
    ("trailing data", VALID + b"x", "data after the torrent"),
    ("two torrents back to back", VALID + VALID, "data after the torrent"),
    ("top level is a list", b"l4:info" + bencode(V1_SINGLE) + b"e", "not a bencoded dictionary"),
    ("top level is a string", b"4:info", "not a bencoded dictionary"),
    ("no info", bencode({b"announce": ANNOUNCE}), "no info dictionary"),
    ("empty dict", b"de", "no info dictionary"),
    ("info is an integer", b"d4:infoi1ee", "info is not a dictionary"),
    ("info is a string", b"d4:info4:abcde", "info is not a dictionary"),
    ("info is a list", b"d4:infol4:abcdee", "info is not a dictionary"),
    ("no pieces", info_torrent({b"length": 1, b"name": b"x", b"piece length": 16384}),
     "info has file lengths but no pieces"),
    ("pieces not a string", info_torrent({**V1_SINGLE, b"pieces": 5}),
     "info has file lengths but no pieces"),
    ("no length and no files", info_torrent({b"name": b"x", b"piece length": 1, b"pieces": PIECES}),
     "info has neither v1 pieces and lengths nor a v2 file tree"),
    ("length is a string", info_torrent({**V1_SINGLE, b"length": b"12"}),
     "a file length is not a non-negative integer"),
    ("file entry not a dict", info_torrent({**V1_MULTI, b"files": [b"a.txt"]}),
     "files is not a list of dictionaries"),
    ("file without length", info_torrent({**V1_MULTI, b"files": [{b"path": [b"a"]}]}),
     "a file length is not a non-negative integer"),
    ("file with negative length", info_torrent({**V1_MULTI, b"files": [{b"length": -1, b"path": [b"a"]}]}),
     "a file length is not a non-negative integer"),
    ("files not a list", info_torrent({**V1_MULTI, b"files": {b"a": 1}}),
     "files is not a list of dictionaries"),
    ("v2 file tree without meta version", info_torrent({b"file tree": FILE_TREE, b"name": b"x",
                                                        b"piece length": 16384}),
     "info has neither v1 pieces and lengths nor a v2 file tree"),
    ("meta version 2 with a file tree that is not a dict", info_torrent({b"file tree": [1], b"meta version": 2,
                                                                         b"name": b"x", b"piece length": 1}),
     "info has neither v1 pieces and lengths nor a v2 file tree"),
    ("no piece length", info_torrent({b"length": 1, b"name": b"x", b"pieces": PIECES}), "info has no piece length"),
    ("piece length is a string", info_torrent({**V1_SINGLE, b"piece length": b"16384"}), "info has no piece length"),
    ("oversize", b"x" * (MAX_TORRENT_BYTES + 1), f"larger than {MAX_TORRENT_BYTES} bytes"),
    ("oversize valid bencoding", torrent_bytes(V1_SINGLE, {b"comment": b"x" * MAX_TORRENT_BYTES}),
     f"larger than {MAX_TORRENT_BYTES} bytes"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in HOSTILE_CASES], ids=[c[0] for c in HOSTILE_CASES])
def test_hostile_input_is_a_metainfo_error(data, message):
    """Anything that is not a usable .torrent is a MetainfoError with a short reason; the
    structure is checked before bencoder.pyx sees the bytes (it crashes on deep nesting)."""
    with pytest.raises(MetainfoError) as exc:
        parse_torrent(data)
    assert str(exc.value) == message


NEGATIVE_LENGTH_CASES = [
    ("v1 multi-file", info_torrent({**V1_MULTI, b"files": [{b"length": 5, b"path": [b"a"]},
                                                          {b"length": -1, b"path": [b"b"]}]})),
    ("v1 single file", info_torrent({**V1_SINGLE, b"length": -5})),
    ("v2 file tree", info_torrent({**V2_ONLY, b"file tree": {b"a": {b"": {b"length": -10}}}})),
    ("hybrid, negative v1 length", info_torrent({**HYBRID, b"files": [{b"length": -1, b"path": [b"a"]}]})),
]


@pytest.mark.parametrize("data", [c[1] for c in NEGATIVE_LENGTH_CASES], ids=[c[0] for c in NEGATIVE_LENGTH_CASES])
def test_a_negative_file_length_is_refused(data):
    """A file cannot be shorter than nothing. The size is stored unsigned (schema.sql:
    `size BIGINT UNSIGNED`), so a negative one must be refused here, as it already is for
    v1 multi-file torrents, not reach the store."""
    with pytest.raises(MetainfoError):
        parse_torrent(data)


BENCODER_REFUSES = [
    # Well-formed in outline (the structure check passes) but not valid bencoding.
    ("integer with letters", b"d4:infod6:lengthixyze12:piece lengthi1e6:pieces0:ee"),
    ("integer with a leading zero", b"d4:infod6:lengthi03e12:piece lengthi1e6:pieces0:ee"),
    ("negative zero", b"d4:infod6:lengthi-0e12:piece lengthi1e6:pieces0:ee"),
    ("empty integer", b"d4:infod6:lengthie12:piece lengthi1e6:pieces0:ee"),
    ("dict key that is an integer", b"d4:infod6:lengthi1ei1ei2eee"),
]


@pytest.mark.parametrize("data", [c[1] for c in BENCODER_REFUSES], ids=[c[0] for c in BENCODER_REFUSES])
def test_invalid_bencoding_inside_a_sound_outline_is_a_metainfo_error(data):
    with pytest.raises(MetainfoError) as exc:
        parse_torrent(data)
    assert str(exc.value).startswith("not bencoded (")


def test_metainfo_error_is_a_value_error():
    """Callers that catch ValueError (the CLI) catch it too."""
    assert issubclass(MetainfoError, ValueError)
