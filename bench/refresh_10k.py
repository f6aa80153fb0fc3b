"""Refresh at scale: a torrent directory of N .torrent files (default 10,000) in nested
folders, on each store. Prints the time of the first refresh (parse and register all),
of a refresh of the unchanged tree (expire + recount + rescan + both include files), and
of the rescan alone (walk + plan against the store's cache).

    .venv/bin/python bench/refresh_10k.py [--torrents 10000] [--stores sqlite,mysql]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import mysql.connector
from bencoder import bencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tracker_wsgi import scanner  # noqa: E402
from tracker_wsgi.config import Config  # noqa: E402
from tracker_wsgi.refresh import refresh  # noqa: E402
from tracker_wsgi.store import open_configured  # noqa: E402


def make_tree(root: Path, n: int) -> None:
    for i in range(n):
        folder = root / f"group{i % 50:02d}" / f"sub{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        info = {b"name": f"torrent {i}".encode(), b"length": (i + 1) << 20, b"piece length": 262144,
                b"pieces": hashlib.sha1(str(i).encode()).digest() * ((i % 40) + 1)}
        (folder / f"t{i}.torrent").write_bytes(
            bencode({b"announce": b"http://127.0.0.1/tracker/announce", b"info": info}))


def database(kind: str, root: Path) -> tuple[str, callable]:
    if kind == "sqlite":
        return f"sqlite:///{root}/tracker.sqlite", lambda: None
    name = f"tracker_bench_refresh_{int(time.time())}"
    admin = mysql.connector.connect(user="root", host="127.0.0.1")
    admin.cursor().execute(f"CREATE DATABASE {name}")
    admin.close()

    def drop() -> None:
        conn = mysql.connector.connect(user="root", host="127.0.0.1")
        conn.cursor().execute(f"DROP DATABASE {name}")
        conn.close()

    return f"mysql://root:@127.0.0.1:3306/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torrents", type=int, default=10_000)
    parser.add_argument("--stores", default="sqlite,mysql")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tracker-bench-refresh-"))
    try:
        started = time.perf_counter()
        make_tree(root / "torrents", args.torrents)
        print(f"{args.torrents} .torrent files written in {time.perf_counter() - started:.1f} s")
        rows = []
        for kind in args.stores.split(","):
            url, drop = database(kind, root)
            try:
                config = Config(database=url, torrent_dir=str(root / "torrents"),
                                output_dir=str(root / f"output-{kind}"))
                store = open_configured(config)
                t0 = time.perf_counter()
                first = refresh(config, store, force=True)
                t1 = time.perf_counter()
                again = refresh(config, store, force=True)
                t2 = time.perf_counter()
                walk = scanner.walk(config.torrent_dir)
                plan = scanner.plan(config.torrent_dir, walk.torrents, store.torrent_files(),
                                    store.skipped_files())
                t3 = time.perf_counter()
                assert first.registered == args.torrents and again.registered == 0, (first, again)
                assert not plan.register and not plan.update and not plan.unregister
                rows.append((kind, t1 - t0, t2 - t1, t3 - t2))
                store.close()
            finally:
                drop()
        print(f"\n| store | first refresh ({args.torrents} new) | refresh, unchanged tree | rescan alone |")
        print("|---|---|---|---|")
        for kind, first_s, again_s, rescan_s in rows:
            print(f"| {kind} | {first_s:.2f} s | {again_s:.2f} s | {rescan_s:.2f} s |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
