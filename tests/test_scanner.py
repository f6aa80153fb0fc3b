"""The torrent directory is the whitelist (tracker_wsgi/scanner.py): `walk` finds the
.torrent files without leaving the directory, `plan` decides what to register, update,
unregister and skip, re-reading only files that changed and reporting each refusal once."""

from __future__ import annotations

import hashlib
import os

import pytest
from bencoder import bencode

from tracker_wsgi import scanner
from tracker_wsgi.model import Torrent
from tracker_wsgi.store import open_store

NOW = 1_700_000_000
ANNOUNCE = "http://tracker.example/tracker/announce"


# -- building .torrent files ---------------------------------------------------------------

def v1_info(name: str, length: int = 1000, pieces: int = 1) -> dict:
    return {b"name": name.encode(), b"length": length, b"piece length": 16384,
            b"pieces": bytes(range(20)) * pieces}


def multi_info(name: str, files: dict[str, int]) -> dict:
    return {
        b"name": name.encode(), b"piece length": 16384, b"pieces": b"\x01" * 20,
        b"files": [{b"length": n, b"path": [p.encode() for p in path.split("/")]}
                   for path, n in files.items()],
    }


def hybrid_info(name: str, length: int = 5000) -> dict:
    """BEP 52 hybrid: v1 `length`/`pieces` and a v2 `file tree` in one info dict."""
    info = v1_info(name, length)
    info[b"meta version"] = 2
    info[b"file tree"] = {name.encode(): {b"": {b"length": length, b"pieces root": b"\x07" * 32}}}
    return info


def v2_only_info(name: str, length: int = 5000) -> dict:
    return {b"name": name.encode(), b"piece length": 16384, b"meta version": 2,
            b"file tree": {name.encode(): {b"": {b"length": length, b"pieces root": b"\x09" * 32}}}}


def metainfo(info: dict, announce: str = ANNOUNCE, announce_list: list[list[str]] | None = None) -> bytes:
    meta: dict = {b"info": info}
    if announce:
        meta[b"announce"] = announce.encode()
    if announce_list is not None:
        meta[b"announce-list"] = [[u.encode() for u in tier] for tier in announce_list]
    return bencode(meta)


def v1_hash(info: dict) -> bytes:
    return hashlib.sha1(bencode(info)).digest()


def v2_hash(info: dict) -> bytes:
    return hashlib.sha256(bencode(info)).digest()[:20]


def put(root, relative: str, data: bytes) -> str:
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def scan(root, known=None, skipped_before=None, announce_url: str = "") -> scanner.Plan:
    found = scanner.walk(str(root))
    return scanner.plan(str(root), found.torrents, known or {}, skipped_before or {}, announce_url)


@pytest.fixture
def store(sqlite_url):
    store = open_store(sqlite_url, 2700)
    store.create_tables()
    yield store
    store.close()


def apply(store, plan: scanner.Plan) -> None:
    """What refresh does with a plan (tracker_wsgi/refresh.py)."""
    store.unregister(plan.unregister)
    for torrent in plan.update:
        store.update_torrent_file(torrent)
    for torrent in plan.register:
        assert store.register(torrent, NOW)
    store.replace_skipped_files(plan.skipped)


def scan_store(root, store, announce_url: str = "") -> scanner.Plan:
    plan = scan(root, store.torrent_files(), store.skipped_files(), announce_url)
    apply(store, plan)
    return plan


@pytest.fixture
def parses(monkeypatch):
    """Counts the .torrent files plan() actually parses."""
    calls: list[str] = []
    real = scanner.parse_torrent

    def counting(data: bytes, path: str = ""):
        calls.append(path)
        return real(data, path)

    monkeypatch.setattr(scanner, "parse_torrent", counting)
    return calls


# -- walk ------------------------------------------------------------------------------

def test_walk_finds_torrents_in_nested_directories_sorted_with_size_and_mtime(tmp_path):
    for relative in ("b.torrent", "a/x.torrent", "a/deeper/still/y.torrent"):
        put(tmp_path, relative, metainfo(v1_info(relative)))
    found = scanner.walk(str(tmp_path))
    assert [f.path for f in found.torrents] == ["a/deeper/still/y.torrent", "a/x.torrent", "b.torrent"]
    for f in found.torrents:
        st = os.stat(tmp_path / f.path)
        assert (f.size, f.mtime) == (st.st_size, st.st_mtime_ns)
    assert found.complete is True
    assert found.warnings == []


def test_walk_does_not_follow_symlinks_to_files_or_directories_outside(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    put(root, "real.torrent", metainfo(v1_info("real")))
    put(outside, "secret.torrent", metainfo(v1_info("secret")))
    put(outside, "dir/deep.torrent", metainfo(v1_info("deep")))
    put(outside, "dir/notes.html", b"<p>")
    os.symlink(outside / "secret.torrent", root / "link.torrent")
    os.symlink(outside / "dir", root / "linkdir")
    found = scanner.walk(str(root))
    assert [f.path for f in found.torrents] == ["real.torrent"]
    assert found.all_files == {"real.torrent"}
    assert found.complete is True
    # Each one named: an admin must see what someone dropped here (issue 17).
    assert sorted(found.warnings) == [
        f"{name}: a symbolic link, not followed (nor served by the site); remove it"
        for name in ("link.torrent", "linkdir")]
    assert scanner.walk(str(root)).warnings == found.warnings  # and again at every refresh


def test_a_directory_of_many_links_is_a_bounded_number_of_warnings(tmp_path):
    root = tmp_path / "root"
    put(root, "real.torrent", metainfo(v1_info("real")))
    (root / "sub").mkdir()
    for n in range(3000):
        os.symlink("/", root / "sub" / f"link-{n}")
    found = scanner.walk(str(root))
    assert len(found.warnings) == scanner.LINKS_NAMED + 1
    assert found.warnings[-1] == (f"{3000 - scanner.LINKS_NAMED} more symbolic links below {root}, not followed "
                                  f"either (`find {root} -type l` lists them all)")
    assert [f.path for f in found.torrents] == ["real.torrent"]


def test_walk_lists_other_files_for_info_links_but_only_torrents_as_torrents(tmp_path):
    put(tmp_path, "a.torrent", metainfo(v1_info("a")))
    put(tmp_path, "a.html", b"<p>about a</p>")
    put(tmp_path, "sub/b.torrent.part", b"partial download")
    put(tmp_path, "sub/readme.txt", b"hello")
    os.mkdir(tmp_path / "empty.torrent")  # a directory named like a torrent is a directory
    found = scanner.walk(str(tmp_path))
    assert [f.path for f in found.torrents] == ["a.torrent"]
    assert found.all_files == {"a.torrent", "a.html", "sub/b.torrent.part", "sub/readme.txt"}


def test_walk_of_a_missing_root_is_incomplete_with_one_warning(tmp_path):
    missing = tmp_path / "not-mounted"
    found = scanner.walk(str(missing))
    assert found.complete is False
    assert found.torrents == [] and found.all_files == set()
    assert found.warnings == [f"{missing}/: cannot read directory: No such file or directory"]


# -- plan: what gets registered ---------------------------------------------------------

def test_new_torrents_are_registered_with_their_file_size_and_mtime(tmp_path):
    single, multi = v1_info("single.iso", 123_456), multi_info("album", {"cd1/a.flac": 10, "b.flac": 32})
    put(tmp_path, "single.torrent", metainfo(single))
    put(tmp_path, "music/album.torrent", metainfo(multi))
    plan = scan(tmp_path)
    st_single, st_multi = os.stat(tmp_path / "single.torrent"), os.stat(tmp_path / "music/album.torrent")
    assert plan.register == [
        Torrent(v1_hash(multi), None, "album", 42, "music/album.torrent", st_multi.st_size, st_multi.st_mtime_ns),
        Torrent(v1_hash(single), None, "single.iso", 123_456, "single.torrent",
                st_single.st_size, st_single.st_mtime_ns),
    ]
    assert (plan.update, plan.unregister, plan.skipped, plan.warnings) == ([], [], {}, [])


def test_hybrid_torrent_is_one_torrent_with_both_hashes(tmp_path):
    info = hybrid_info("hybrid.bin", 5000)
    put(tmp_path, "hybrid.torrent", metainfo(info))
    plan = scan(tmp_path)
    assert len(plan.register) == 1
    torrent = plan.register[0]
    assert torrent.info_hash == v1_hash(info)
    assert torrent.info_hash_v2 == v2_hash(info)
    assert torrent.info_hashes == (v1_hash(info), v2_hash(info))
    assert (torrent.name, torrent.size, torrent.path) == ("hybrid.bin", 5000, "hybrid.torrent")


def test_v2_only_torrent_is_known_by_its_truncated_sha256(tmp_path):
    info = v2_only_info("v2.bin", 7000)
    put(tmp_path, "v2.torrent", metainfo(info))
    [torrent] = scan(tmp_path).register
    assert (torrent.info_hash, torrent.info_hash_v2, torrent.size) == (v2_hash(info), None, 7000)


def test_hybrid_registered_in_the_store_answers_to_both_hashes(tmp_path, store):
    info = hybrid_info("hybrid.bin")
    put(tmp_path, "hybrid.torrent", metainfo(info))
    scan_store(tmp_path, store)
    stats = store.scrape([v1_hash(info), v2_hash(info)], NOW)
    assert set(stats) == {v1_hash(info), v2_hash(info)}
    assert len(store.torrent_files()) == 1


# -- plan: what gets skipped, and reported once ---------------------------------------------

def test_oversize_file_is_skipped_unread_with_one_warning(tmp_path, monkeypatch, parses):
    monkeypatch.setattr(scanner, "MAX_TORRENT_BYTES", 1000)
    put(tmp_path, "big.torrent", metainfo(v1_info("big", pieces=100)))
    put(tmp_path, "small.torrent", metainfo(v1_info("small")))
    size = os.path.getsize(tmp_path / "big.torrent")
    assert size > 1000
    plan = scan(tmp_path)
    assert plan.warnings == ["big.torrent: skipped: larger than 1000 bytes"]
    assert plan.skipped == {
        "big.torrent": (size, os.stat(tmp_path / "big.torrent").st_mtime_ns, "larger than 1000 bytes")
    }
    assert [t.name for t in plan.register] == ["small"]
    assert parses == ["small.torrent"]


def test_garbage_is_skipped_with_one_warning_and_the_scan_goes_on(tmp_path):
    put(tmp_path, "a.torrent", metainfo(v1_info("a")))
    put(tmp_path, "b-garbage.torrent", b"<html>404 not found</html>")
    put(tmp_path, "c.torrent", metainfo(v1_info("c")))
    plan = scan(tmp_path)
    assert plan.warnings == ["b-garbage.torrent: skipped: not a valid torrent: not bencoded"]
    assert [t.path for t in plan.register] == ["a.torrent", "c.torrent"]
    assert set(plan.skipped) == {"b-garbage.torrent"}


def test_a_skipped_file_is_reported_once_then_again_when_it_changes(tmp_path, store, parses):
    put(tmp_path, "bad.torrent", b"garbage")
    assert scan_store(tmp_path, store).warnings == ["bad.torrent: skipped: not a valid torrent: not bencoded"]
    parses.clear()
    second = scan_store(tmp_path, store)
    assert second.warnings == []
    assert parses == []  # unchanged and already refused: not even read
    put(tmp_path, "bad.torrent", b"still garbage")
    assert scan_store(tmp_path, store).warnings == ["bad.torrent: skipped: not a valid torrent: not bencoded"]


def test_torrent_for_another_tracker_is_skipped_when_announce_url_is_set(tmp_path):
    put(tmp_path, "ours.torrent", metainfo(v1_info("ours")))
    put(tmp_path, "tiered.torrent", metainfo(v1_info("tiered"), announce="http://other.example/announce",
                                             announce_list=[["http://other.example/announce"], [ANNOUNCE]]))
    put(tmp_path, "theirs.torrent", metainfo(v1_info("theirs"), announce="http://other.example/announce"))
    plan = scan(tmp_path, announce_url=ANNOUNCE)
    assert [t.name for t in plan.register] == ["ours", "tiered"]
    assert plan.warnings == [f"theirs.torrent: skipped: does not announce this tracker ({ANNOUNCE})"]
    # Without announce_url, any tracker's torrent is served.
    assert [t.name for t in scan(tmp_path).register] == ["ours", "theirs", "tiered"]


def test_duplicate_is_reported_once_and_takes_over_when_the_original_goes(tmp_path, store):
    info = v1_info("same")
    put(tmp_path, "a.torrent", metainfo(info))
    put(tmp_path, "b-copy.torrent", metainfo(info))
    first = scan_store(tmp_path, store)
    assert [t.path for t in first.register] == ["a.torrent"]
    assert first.warnings == ["b-copy.torrent: skipped: duplicate of a.torrent"]

    second = scan_store(tmp_path, store)
    assert second.warnings == []
    assert (second.register, second.update, second.unregister) == ([], [], [])
    assert set(second.skipped) == {"b-copy.torrent"}

    os.unlink(tmp_path / "a.torrent")
    third = scan_store(tmp_path, store)
    assert third.warnings == [] and third.register == [] and third.unregister == []
    assert [t.path for t in third.update] == ["b-copy.torrent"]
    assert third.skipped == {}
    assert store.torrent_files() == {
        "b-copy.torrent": (os.path.getsize(tmp_path / "b-copy.torrent"),
                           os.stat(tmp_path / "b-copy.torrent").st_mtime_ns, v1_hash(info)),
    }
    assert store.skipped_files() == {}


# -- plan: incremental rescans -----------------------------------------------------------

def test_unchanged_files_are_not_read_again(tmp_path, store, parses):
    for n in range(5):
        put(tmp_path, f"dir{n % 2}/t{n}.torrent", metainfo(v1_info(f"t{n}")))
    first = scan_store(tmp_path, store)
    assert len(first.register) == 5 and len(parses) == 5
    parses.clear()
    second = scan_store(tmp_path, store)
    assert parses == []
    assert (second.register, second.update, second.unregister, second.warnings) == ([], [], [], [])


def test_a_touched_file_is_read_again_and_updated_not_registered(tmp_path, store, parses):
    info = v1_info("t")
    put(tmp_path, "t.torrent", metainfo(info))
    put(tmp_path, "other.torrent", metainfo(v1_info("other")))
    scan_store(tmp_path, store)
    parses.clear()
    os.utime(tmp_path / "t.torrent", ns=(NOW * 10**9, NOW * 10**9))
    plan = scan_store(tmp_path, store)
    assert parses == ["t.torrent"]
    assert [(t.path, t.file_mtime) for t in plan.update] == [("t.torrent", NOW * 10**9)]
    assert plan.register == [] and plan.unregister == []
    assert store.torrent_files()["t.torrent"] == (os.path.getsize(tmp_path / "t.torrent"), NOW * 10**9, v1_hash(info))


def test_a_removed_file_unregisters_its_torrent(tmp_path, store):
    keep, gone = v1_info("keep"), hybrid_info("gone")
    put(tmp_path, "keep.torrent", metainfo(keep))
    put(tmp_path, "sub/gone.torrent", metainfo(gone))
    scan_store(tmp_path, store)
    os.unlink(tmp_path / "sub/gone.torrent")
    plan = scan(tmp_path, store.torrent_files(), store.skipped_files())
    # One hash per torrent (either of a hybrid's two names it; unregister removes both).
    assert len(plan.unregister) == 1 and plan.unregister[0] in (v1_hash(gone), v2_hash(gone))
    assert (plan.register, plan.update) == ([], [])
    apply(store, plan)
    assert store.scrape([v1_hash(gone), v2_hash(gone), v1_hash(keep)], NOW).keys() == {v1_hash(keep)}


def test_a_moved_file_is_an_update_not_a_new_torrent(tmp_path, store, parses):
    info = v1_info("mover")
    put(tmp_path, "old/place.torrent", metainfo(info))
    scan_store(tmp_path, store)
    os.makedirs(tmp_path / "new")
    os.rename(tmp_path / "old/place.torrent", tmp_path / "new/place.torrent")
    parses.clear()
    plan = scan_store(tmp_path, store)
    assert parses == ["new/place.torrent"]
    assert [t.path for t in plan.update] == ["new/place.torrent"]
    assert (plan.register, plan.unregister, plan.warnings) == ([], [], [])
    assert list(store.torrent_files()) == ["new/place.torrent"]


# -- info links ------------------------------------------------------------------------------

@pytest.mark.parametrize(("present", "expected"), [
    ({"x.html", "x.txt", "x.nfo"}, "x.html"),
    ({"x.txt", "x.nfo"}, "x.txt"),
    ({"x.nfo"}, "x.nfo"),
    ({"x.htm", "x.torrent.html", "y.html"}, None),
])
def test_info_link_prefers_html_then_txt_then_nfo(present, expected):
    all_files = {"x.torrent", *present}
    assert scanner.info_link("x.torrent", all_files) == expected


def test_info_link_looks_beside_the_torrent_in_its_own_directory():
    all_files = {"sub/x.torrent", "sub/x.nfo", "x.html"}
    assert scanner.info_link("sub/x.torrent", all_files) == "sub/x.nfo"
