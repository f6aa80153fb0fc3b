"""Where one announce's time goes, in-process (no Apache): each SQL statement of
SqlStore._announce timed on its own, for the most popular torrent and a median one, on a
small store (1000 torrents, 10k peers) and optionally a scale one (100k torrents, 1M peers).
Also times the whole Tracker.handle() path and a cProfile top list.

    .venv/bin/python bench/profile_announce.py [--scale]     (SQLite; MySQL: --store mysql)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

from tracker_wsgi.config import Config  # noqa: E402
from tracker_wsgi.store.sql import SqlStore  # noqa: E402
from tracker_wsgi.wsgi import Tracker  # noqa: E402


def time_statements(bs: run.BenchStore, torrent_index: int, reps: int = 200) -> dict[str, float]:
    store = bs.store
    conv = (lambda s: s) if bs.kind == "sqlite" else (lambda s: s.replace("?", "%s"))
    tid = bs.torrent_ids()[run.info_hash(torrent_index)]
    now = int(time.time())
    cutoff = now - 2700
    conn = store._connection()
    cur = conn.cursor()
    cur.execute(conv("SELECT COUNT(*) FROM peers WHERE torrent_id = ?"), (tid,))
    swarm = cur.fetchone()[0]
    stmts = {
        "LOOKUP": (SqlStore.LOOKUP, (b"x" * 20, run.info_hash(torrent_index))),
        "SELECT_PEERS@rank_low": (SqlStore.SELECT_PEERS[True, "from"], (tid, cutoff, b"x" * 20, 0, 50)),
        "SELECT_PEERS@rank_mid": (SqlStore.SELECT_PEERS[True, "from"], (tid, cutoff, b"x" * 20, 1 << 31, 50)),
        "SELECT_LEECHERS@rank_mid": (SqlStore.SELECT_PEERS[False, "from"], (tid, cutoff, b"x" * 20, 1 << 31, 50)),
        "SCRAPE(1 hash)": (None, None),
    }
    out = {"swarm": swarm}
    for name, (sql, params) in stmts.items():
        start = time.perf_counter()
        for _ in range(reps):
            if sql is None:
                store.scrape([run.info_hash(torrent_index)], now)
            else:
                cur.execute(conv(sql), params)
                cur.fetchall()
        out[name] = (time.perf_counter() - start) / reps * 1000
    conn.rollback() if bs.kind == "mysql" else None
    return out


def time_handle(bs: run.BenchStore, torrents: int, reps: int = 2000) -> tuple[float, str]:
    config = Config(database=bs.url)
    tracker = Tracker(config, bs.store)
    cdf = run.zipf_cdf(torrents, 1.0)
    environs = []
    for j in range(1, 501):
        t, pid, port, left, key = run.slot_peer(1, j, cdf)
        q = urllib.parse.urlencode({"info_hash": run.info_hash(t), "peer_id": pid, "port": port, "uploaded": 0,
                                    "downloaded": 0, "left": left, "key": key, "compact": 1, "numwant": 50})
        environs.append({"REQUEST_METHOD": "GET", "PATH_INFO": "/announce", "QUERY_STRING": q,
                         "REMOTE_ADDR": "127.0.0.1"})
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    for i in range(reps):
        status, _, body = tracker.handle(environs[i % len(environs)])
        assert b"failure" not in body, body
    prof.disable()
    per = (time.perf_counter() - start) / reps * 1000
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
    return per, s.getvalue()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", default="sqlite")
    p.add_argument("--scale", action="store_true")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tracker-wsgi-prof-"))
    root.chmod(0o755)
    stores = []
    try:
        cases = [("small", 1000, 0)]
        if args.scale:
            cases.append(("scale", 100_000, 1_000_000))
        for label, torrents, extra in cases:
            bs = run.BenchStore(args.store, root, label)
            stores.append(bs)
            if extra:
                bs.bulk_register(torrents)
            else:
                bs.register(torrents)
            bs.slot_peers(torrents, 2, 5000, 1.0)
            if extra:
                bs.random_peers(extra - 10000, torrents, 1.0)
            print(f"== {args.store} {label}: {torrents} torrents, {bs.peer_count()} peers")
            for name, idx in (("hottest torrent", 0), ("median-ish torrent", torrents // 2)):
                r = time_statements(bs, idx)
                print(f"  {name} (swarm {r.pop('swarm')} peers): "
                      + ", ".join(f"{k} {v:.3f}ms" for k, v in r.items()))
            per, prof = time_handle(bs, torrents)
            print(f"  Tracker.handle(announce), one thread, no Apache: {per:.3f} ms/announce "
                  f"(~{1000 / per:.0f}/s per core)")
            print("\n".join(prof.splitlines()[:30]))
    finally:
        for bs in stores:
            bs.drop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
