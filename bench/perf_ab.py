"""Variants of tracker_wsgi side by side in one run (issue 18: the A/B of a change to the core,
and two hosts on one MariaDB against one host, which bench/run.py has no option for).

    .venv/bin/python bench/perf_ab.py --variants base=/tmp/v/base,fast=/tmp/v/fast [--topology embedded]
    .venv/bin/python bench/perf_ab.py --two-hosts          # one host vs two hosts on one MariaDB
    .venv/bin/python bench/perf_ab.py --hold --variants base=/tmp/v/base   # serve, print pids, wait

Each variant is a directory holding a `tracker_wsgi` package; its Apache's tracker.wsgi puts
that directory first on sys.path (the venv's editable finder comes after sys.path). Every
variant gets its own store and swarm_dir, filled as bench/run.py fills them, and the same
wrk traffic (bench/announce.lua), in an order rotated every round; hello.wsgi beside them.
Only ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("bench_run", HERE / "run.py")
run = importlib.util.module_from_spec(spec)
sys.modules["bench_run"] = run
spec.loader.exec_module(run)


def variant_wsgi(path: str) -> str:
    return f"import sys\nsys.path.insert(0, {path!r})\nfrom tracker_wsgi.wsgi import application  # noqa\n"


def filled_store(kind: str, root: Path, label: str, args) -> run.BenchStore:
    store = run.BenchStore(kind, root, label)
    store.register(args.torrents)
    store.slot_peers(args.torrents, args.threads, args.pool, args.zipf)
    store.hold_refresh()
    store.hand_over()
    return store


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", default="")
    p.add_argument("--topology", default="embedded")
    p.add_argument("--store", default="sqlite")
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default="keepalive")
    p.add_argument("--torrents", type=int, default=1000)
    p.add_argument("--pool", type=int, default=5000)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--hold", action="store_true")
    p.add_argument("--two-hosts", action="store_true")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # `kill` stops the servers too (finally)
    root = Path(tempfile.mkdtemp(prefix="tracker-wsgi-perf-"))
    root.chmod(0o755)
    servers, stores = [], []
    try:
        if args.two_hosts:
            two_hosts(args, root, servers, stores)
            return
        systems = []
        if not args.hold:
            hello_dir = run.apache_copy(root, "hello", (run.BENCH / "hello.wsgi").read_text())
            hello = run.Apache(root / "hello-run", hello_dir, "", args.topology)
            servers.append(hello)
            systems.append(run.System("hello", hello))
        for spec_ in args.variants.split(","):
            name, path = spec_.split("=")
            store = filled_store(args.store, root, name, args)
            stores.append(store)
            app_dir = run.apache_copy(root, name, variant_wsgi(path))
            apache = run.Apache(root / f"{name}-run", app_dir, run.tracker_config(root, store.url), args.topology)
            servers.append(apache)
            run.check_announce(apache, args.torrents, args.zipf)
            systems.append(run.System(name, apache))
        if args.hold:
            for s in systems:
                print(f"{s.name}: {s.server.url} pids {s.server.processes()} run dir {s.server.run_dir}", flush=True)
            print("holding; kill this process to stop", flush=True)
            while True:
                time.sleep(60)
        for s in systems:
            run.run_wrk(args, s.server.url, False, args.torrents, seconds=2)
        for mode in args.modes.split(","):
            close = mode == "close"
            runs = {s.name: [] for s in systems}
            for r in range(args.rounds):
                order = systems[r % len(systems):] + systems[:r % len(systems)]
                for s in order:
                    res = run.measure(args, s, close)
                    runs[s.name].append(res)
                    print(f"[{mode} {r + 1}/{args.rounds}] {s.name}: {res['rps']:.0f} req/s p99 "
                          f"{run.fmt_ms(res['p99'])} errors {res['errors']} socket {res['socket']} "
                          f"cpu/req {run.cpu_per_request(res):.0f} us", flush=True)
            base = systems[1].name
            print(f"\n{mode}: | system | req/s (median) | x hello | x {base} | p99 | CPU us/req (median) |")
            for s in systems:
                rs = runs[s.name]
                med = run.median_run(rs)
                xh = run.median_ratio(rs, runs["hello"])
                xb = run.median_ratio(rs, runs[base])
                cpu = statistics.median(run.cpu_per_request(x) for x in rs)
                print(f"| {s.name} | {med['rps']:.0f} | {xh:.2f} | {xb:.3f} | {run.fmt_ms(med['p99'])} | {cpu:.0f} |")
            for s in systems[2:]:
                print(f"{s.name}/{base} each round: "
                      + " ".join(f"{a['rps'] / b['rps']:.3f}" for a, b in zip(runs[s.name], runs[base])))
    finally:
        for s in servers:
            s.stop()
        for st in stores:
            try:
                st.drop()
            except Exception as exc:  # noqa: BLE001
                print(f"drop {st.url}: {exc}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)


def two_hosts(args, root: Path, servers: list, stores: list) -> None:
    """Host A alone (wrk -c N), then hosts A and B on the same MariaDB database at once (each
    wrk -c N/2, so as many connections in all): the sum of both over A alone."""
    store = filled_store("mysql", root, "shared", args)
    stores.append(store)
    hosts = []
    for name in ("a", "b"):
        apache = run.Apache(root / f"host-{name}", run.APACHE_DIR, run.tracker_config(root, store.url, host=name),
                            args.topology)
        servers.append(apache)
        run.check_announce(apache, args.torrents, args.zipf)
        hosts.append(apache)
    half = argparse.Namespace(**{**vars(args), "connections": args.connections // 2})
    for h in hosts:
        run.run_wrk(args, h.url, False, args.torrents, seconds=2)
    for mode in args.modes.split(","):
        close = mode == "close"
        ratios = []
        for r in range(args.rounds):
            one = run.run_wrk(args, hosts[0].url, close, args.torrents)
            results: list = [None, None]

            def drive(i: int, results: list = results, close: bool = close) -> None:
                results[i] = run.run_wrk(half, hosts[i].url, close, args.torrents)

            threads = [threading.Thread(target=drive, args=(i,)) for i in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            both = results[0]["rps"] + results[1]["rps"]
            ratios.append(both / one["rps"])
            print(f"[{mode} {r + 1}/{args.rounds}] one host {one['rps']:.0f} req/s p99 {run.fmt_ms(one['p99'])}; "
                  f"two hosts {results[0]['rps']:.0f} + {results[1]['rps']:.0f} = {both:.0f} req/s, p99 "
                  f"{run.fmt_ms(results[0]['p99'])} / {run.fmt_ms(results[1]['p99'])}; errors "
                  f"{one['errors']} / {results[0]['errors']} + {results[1]['errors']}; socket {one['socket']} / "
                  f"{results[0]['socket']} + {results[1]['socket']}; ratio {ratios[-1]:.2f}", flush=True)
        print(f"two hosts / one host ({args.topology}, {mode}): median {statistics.median(ratios):.2f}")
    for h in hosts:
        problems = [line for line in h.error_log().splitlines() if "Traceback" in line or ":error]" in line]
        if problems:
            print(f"{h.run_dir.name} error.log: {len(problems)} problem lines, e.g. {problems[:3]}")


if __name__ == "__main__":
    main()
