"""End to end with a real BitTorrent client: two libtorrent sessions on 127.0.0.1 that know
each other only through our tracker under Apache/mod_wsgi. The seeder announces, the
leecher learns the seeder from our announce answer, downloads the file, announces its
completion, and our scrape counts it.

libtorrent settings that matter here:
- `ssrf_mitigation` off: otherwise libtorrent refuses a loopback tracker whose path does
  not start with /announce (ours is /tracker/announce).
- `allow_multiple_connections_per_ip`: both peers are 127.0.0.1.
- DHT, LSD, UPnP and NAT-PMP off, so the tracker is the only way the peers meet.
- libtorrent 2 makes v1+v2 hybrid torrents and announces each of the two info hashes
  separately (same peer_id); our tracker keeps both in one swarm, so the counts below are
  per peer, not per hash.
- SQLite: the database file must belong to www-data (Apache's daemon user), as
  `tracker-wsgi serve` arranges; a root-owned file makes every announce "attempt to write
  a readonly database".
"""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import libtorrent as lt
import pytest

from conftest import decode, free_port
from tracker_wsgi.metainfo import parse_torrent
from tracker_wsgi.store import open_store

# End to end through a real Apache and libtorrent: scripts/test --quick leaves this file out.
pytestmark = pytest.mark.slow

FILE_SIZE = 3 * 1024 * 1024 + 12345  # not a whole number of pieces
DOWNLOAD_TIMEOUT = 90
ANNOUNCE_TIMEOUT = 30


# Session settings of a libtorrent peer on 127.0.0.1 that finds others only through the
# tracker (no DHT, LSD, UPnP, NAT-PMP or uTP); libtorrent's SSRF guard would refuse a
# loopback tracker whose path does not start with /announce.
LOOPBACK_SESSION = {
    "outgoing_interfaces": "127.0.0.1",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "ssrf_mitigation": False,
    "allow_multiple_connections_per_ip": True,
    "enable_incoming_utp": False,
    "enable_outgoing_utp": False,
}


class Peer:
    """One libtorrent session with one torrent, and every alert it raised (for failures)."""

    def __init__(self, name: str, torrent_bytes: bytes, save_path: Path):
        self.name = name
        self.port = free_port()
        self.alerts: list[str] = []
        self.session = lt.session({
            "listen_interfaces": f"127.0.0.1:{self.port}",
            **LOOPBACK_SESSION,
            "enable_incoming_tcp": True,
            "enable_outgoing_tcp": True,
            "announce_to_all_trackers": True,
            "announce_to_all_tiers": True,
            "user_agent": f"tracker_wsgi-test-{name}",
            "stop_tracker_timeout": 2,  # bounds the `stopped` announces at session exit
            # What explains a failure: tracker traffic, connections, errors, state changes.
            "alert_mask": (lt.alert_category.error | lt.alert_category.status
                           | lt.alert_category.tracker | lt.alert_category.connect
                           | lt.alert_category.peer | lt.alert_category.storage),
        })
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(lt.bdecode(torrent_bytes))
        params.save_path = str(save_path)
        self.handle = self.session.add_torrent(params)

    def pump(self) -> list:
        alerts = self.session.pop_alerts()
        for a in alerts:
            self.alerts.append(f"{time.strftime('%H:%M:%S')} {type(a).__name__}: {a.message()}")
        return alerts

    def status(self) -> str:
        s = self.handle.status()
        return (f"{self.name}: state={s.state} progress={s.progress:.3f} is_seeding={s.is_seeding} "
                f"is_finished={s.is_finished} peers={s.num_peers} seeds={s.num_seeds} "
                f"errc={s.errc.message() if s.errc.value() else 'none'} "
                f"trackers={[(t['url'], t.get('message', '')) for t in self.handle.trackers()]}")

    def report(self) -> str:
        return f"{self.status()}\n  alerts:\n    " + "\n    ".join(self.alerts[-300:])

    def close(self) -> None:
        try:
            self.session.pause()
            self.session.remove_torrent(self.handle)
        finally:
            del self.session


def make_torrent(content: Path, announce: str) -> bytes:
    creator = lt.create_torrent(lt.list_files(str(content)))  # v1 + v2 hybrid by default
    creator.add_tracker(announce)
    creator.set_creator("tracker_wsgi test")
    lt.set_piece_hashes(creator, str(content.parent))
    return lt.bencode(creator.generate())


@pytest.mark.parametrize("db", ["mysql", "sqlite"])
def test_libtorrent_leecher_downloads_from_seeder_found_through_our_tracker(
    db, request, apache_factory, shared_dir, tmp_path
):
    url = request.getfixturevalue(f"{db}_url")
    store = open_store(url, 2700)
    store.create_tables()
    apache = apache_factory(f'database = "{url}"\nbase_url = "http://127.0.0.1"\n')
    announce = f"{apache.base}/tracker/announce"

    seed_dir, leech_dir = tmp_path / "seed", tmp_path / "leech"
    seed_dir.mkdir()
    leech_dir.mkdir()
    original = os.urandom(FILE_SIZE)
    content = seed_dir / "payload.bin"
    content.write_bytes(original)
    torrent_bytes = make_torrent(content, announce)

    meta = parse_torrent(torrent_bytes)
    assert meta.announce_urls == (announce,)
    assert store.register(meta.torrent, int(time.time()))
    store.close()
    if db == "sqlite":
        # As in production (and `tracker-wsgi serve`): the database file belongs to the
        # daemon's user, www-data, which writes it and its WAL.
        www = pwd.getpwnam("www-data")
        for path in shared_dir.glob("tracker.sqlite*"):
            os.chown(path, www.pw_uid, www.pw_gid)
    v1_hash = meta.torrent.info_hash

    peers: list[Peer] = []

    def diagnostics(what: str) -> str:
        status, _, body = apache.get("/tracker/scrape", {"info_hash": v1_hash})
        return (f"{what}\n" + "\n".join(p.report() for p in peers)
                + f"\nscrape: {status} {body!r}\napache error log:\n{apache.error_log()}")

    def tracker_errors() -> list[str]:
        return [a for p in peers for a in p.alerts if "tracker_error_alert" in a]

    def wait_for(what: str, done, timeout: float) -> None:
        """Poll `done` (which pumps alerts); fail at once on a tracker error, else at timeout."""
        deadline = time.monotonic() + timeout
        while not done():
            if tracker_errors():
                pytest.fail(diagnostics(f"our tracker answered with an error while waiting for {what}"))
            if time.monotonic() > deadline:
                pytest.fail(diagnostics(f"timed out after {timeout} s waiting for {what}"))
            time.sleep(0.1)

    def announces_answered(peer: Peer, since: int):
        """True once `peer` sent an announce after alert number `since` and every announce
        it sent from then on was answered (one per info hash of a hybrid torrent)."""
        def check() -> bool:
            for p in peers:
                p.pump()
            recent = peer.alerts[since:]
            sent = [i for i, a in enumerate(recent) if "tracker_announce_alert" in a]
            if not sent:
                return False
            replies = sum("tracker_reply_alert" in a for a in recent[sent[0]:])
            return replies >= len(sent)
        return check

    def pump_all() -> None:
        for p in peers:
            p.pump()

    try:
        seeder = Peer("seeder", torrent_bytes, seed_dir)
        peers.append(seeder)
        wait_for("the seeder to check its file and seed",
                 lambda: pump_all() or seeder.handle.status().is_seeding, 30)
        # The seeder is in the swarm before the leecher asks, so the leecher's first
        # announce answer names it (a seed is only ever sent leechers).
        wait_for("the seeder's announce to be answered", announces_answered(seeder, 0), ANNOUNCE_TIMEOUT)

        leecher = Peer("leecher", torrent_bytes, leech_dir)
        peers.append(leecher)

        wait_for("the leecher to download the file",
                 lambda: pump_all() or leecher.handle.status().is_seeding, DOWNLOAD_TIMEOUT)
        assert (leech_dir / "payload.bin").read_bytes() == original

        # libtorrent announces `completed` when it finishes; make sure that announce (and a
        # plain one after it, which must not count twice) reached us before scraping.
        def completed_counted() -> bool:
            pump_all()
            status, _, body = apache.get("/tracker/scrape", {"info_hash": v1_hash})
            return status == 200 and decode(body)[b"files"].get(v1_hash, {}).get(b"downloaded") == 1

        wait_for("the leecher's completion to reach the tracker", completed_counted, ANNOUNCE_TIMEOUT)
        mark = len(leecher.alerts)
        leecher.handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
        wait_for("the leecher's re-announce as a seed", announces_answered(leecher, mark), ANNOUNCE_TIMEOUT)

        status, _, body = apache.get("/tracker/scrape", {"info_hash": v1_hash})
        assert status == 200, diagnostics(f"scrape answered {status}")
        files = decode(body)[b"files"]
        assert set(files) == {v1_hash}, diagnostics(f"scrape files {files!r}")
        stats = files[v1_hash]
        assert (stats[b"complete"], stats[b"incomplete"], stats[b"downloaded"]) == (2, 0, 1), \
            diagnostics(f"scrape after the download: {stats!r}")

        # The stats page's "total transfer": what the leecher reported downloading, once
        # (the seeder, which gave it, reports its upload only at its next announce, 30
        # minutes away), as soon as the daemon has written its batch.
        reader = open_store(url, 2700)
        try:
            wait_for("the leecher's download to be written",
                     lambda: pump_all() or reader.report(int(time.time()))[0].transferred > 0, ANNOUNCE_TIMEOUT)
            transferred = reader.report(int(time.time()))[0].transferred
        finally:
            reader.close()
        assert FILE_SIZE <= transferred < 1.1 * FILE_SIZE, diagnostics(f"transferred {transferred}")

        # A hybrid torrent's v2 hash names the same swarm.
        if meta.torrent.info_hash_v2:
            v2_hash = meta.torrent.info_hash_v2
            status, _, body = apache.get("/tracker/scrape", {"info_hash": v2_hash})
            v2 = decode(body)[b"files"][v2_hash]
            assert (v2[b"complete"], v2[b"incomplete"], v2[b"downloaded"]) == (2, 0, 1), \
                diagnostics(f"v2 scrape: {v2!r}")

        error_log = apache.error_log()
        assert "Traceback" not in error_log, error_log
        pump_all()
        assert not tracker_errors(), diagnostics("tracker errors")
        if os.environ.get("TRACKER_TEST_VERBOSE"):
            print(diagnostics("passed"))
    finally:
        for p in peers:
            p.close()
