"""Throughput benchmark: tracker_wsgi behind the shipped Apache snippet vs a hello-world ceiling.

    .venv/bin/python bench/run.py [--seconds 10] [--stores sqlite,mysql] [--scale] [--metrics]

Builds real Apache instances with tracker_wsgi.devserver (the same httpd.conf the tests use,
Including apache/tracker.conf): (a) the tracker on each store, (b) bench/hello.wsgi served from
a copy of apache/ whose tracker.wsgi is the hello app, so mod_wsgi's daemon settings are
identical. Torrents are registered in the store first (info hash i = sha1("bench-torrent-<i>"),
as bench/announce.lua computes them), and so are the wrk script's starting peers, so swarms
are in steady state. Each peer announces from its own address (X-Forwarded-For, the tracker
trusting 127.0.0.1 as its reverse proxy), so every per-address limit stays as shipped. Then, in one run, alternating tracker/ceiling (--rounds pairs, the
median ratio reported), wrk drives each with bench/announce.lua, keep-alive and one
connection per request. Run as root (Apache drops to
www-data; MariaDB at 127.0.0.1:3306, root without password).

With --metrics, each round also drives the tracker and the same tracker with its metrics
off (a second Apache on a store filled alike, whose tracker.wsgi turns counting into a
no-op call and keeps no prometheus_client values) at the same time, each with its own wrk,
and prints the rate on/off and the daemons' CPU per request off/on, per round and the median.

Only ratios within one run mean anything: absolute figures drift with the machine.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import os
import pwd
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
LUA = BENCH / "announce.lua"
APACHE_DIR = REPO / "apache"
sys.path.insert(0, str(REPO))

from tracker_wsgi import devserver  # noqa: E402
from tracker_wsgi.model import Torrent  # noqa: E402
from tracker_wsgi.store import open_store  # noqa: E402

MYSQL_USER, MYSQL_PASSWORD = "tracker_test", "tracker-test-only"  # as tests/conftest.py
# The tracker believes X-Forwarded-For from here: wrk, as a reverse proxy would be.
BENCH_PROXY = "127.0.0.1/32"
# announce.lua's slot addresses, 10.<thread>.<slot div 256>.<slot mod 256>, are one per slot
# only within these.
MAX_THREADS, MAX_POOL = 255, 65535
# --metrics: tracker.wsgi of the tracker with its metrics off. What is left of them on the
# request path is a call to a function that does nothing (the counting call itself).
METRICS_OFF_WSGI = """\
from tracker_wsgi import metrics, wsgi
metrics.Counts.add = lambda self, key: None
metrics.Counts.tally = lambda self, key: lambda: None
wsgi.Tracker.start_metrics = lambda self: None
from tracker_wsgi.wsgi import application  # noqa: F401
"""
# display-name=%{GROUP} in apache/tracker.conf: "(wsgi:tracker_wsgi_0)" and "_1", cut to argv[0]'s length.
DAEMON_PREFIX = b"(wsgi:"


# -- the torrents and peers announce.lua sends (keep in step with it) ----------------------

def info_hash(i: int) -> bytes:
    return hashlib.sha1(f"bench-torrent-{i}".encode()).digest()


def zipf_cdf(n: int, s: float) -> list[float]:
    total, cdf = 0.0, []
    for i in range(1, n + 1):
        total += 1 / (i ** s)
        cdf.append(total)
    return cdf


def slot_peer(t: int, j: int, cdf: list[float]) -> tuple[int, bytes, int, int, bytes, bytes]:
    """(torrent index, peer_id, port, left, key, packed address) of announce.lua's slot_peer(t, j)."""
    h = hashlib.sha1(f"bench-peer-{t}-{j}".encode()).digest()
    u = int.from_bytes(h[15:19], "big") / 4294967296
    torrent = bisect.bisect_left(cdf, u * cdf[-1])
    left = 0 if h[14] % 3 == 0 else (h[19] + 1) * 262144
    return (torrent, b"-BN0001-" + h[:12], 1024 + (h[12] * 256 + h[13]) % 64000, left, h[:4].hex().upper().encode(),
            bytes([10, t, j // 256, j % 256]))


# -- stores ------------------------------------------------------------------------------

def mysql_admin():
    import mysql.connector

    return mysql.connector.connect(user="root", host="127.0.0.1", port=3306)


class BenchStore:
    """One database for one measurement: made, filled, handed to Apache, dropped."""

    def __init__(self, kind: str, root: Path, label: str):
        self.kind = kind
        self.dir = root / f"{kind}-{label}"
        self.dir.mkdir()
        self.dir.chmod(0o777)
        if kind == "sqlite":
            self.url = f"sqlite:///{self.dir}/tracker.sqlite"
        else:
            self.db = f"tracker_test_bench_{secrets.token_hex(4)}"  # tracker_test may use tracker_test_%
            admin = mysql_admin()
            cur = admin.cursor()
            cur.execute(f"CREATE DATABASE {self.db}")
            for host in ("localhost", "127.0.0.1"):
                cur.execute(f"CREATE USER IF NOT EXISTS '{MYSQL_USER}'@'{host}' IDENTIFIED BY '{MYSQL_PASSWORD}'")
                cur.execute(f"GRANT ALL ON `tracker_test_%`.* TO '{MYSQL_USER}'@'{host}'")
            admin.close()
            self.url = f"mysql://{MYSQL_USER}:{MYSQL_PASSWORD}@127.0.0.1:3306/{self.db}"
        self.store = open_store(self.url, peer_timeout=2700)
        self.store.create_tables()

    @property
    def mark(self) -> str:
        return "?" if self.kind == "sqlite" else "%s"

    def register(self, n: int) -> None:
        """The real API, one transaction per torrent (small case)."""
        now = int(time.time())
        for i in range(n):
            assert self.store.register(Torrent(info_hash(i), None, f"bench torrent {i}", 1 << 30), now)

    def bulk_register(self, n: int) -> None:
        """Multi-row inserts (scale case): ids 1..n, same rows register() makes."""
        now = int(time.time())
        m = self.mark
        conn = self.store._connection()
        self.store._begin(conn, read_only=False)
        cur = conn.cursor()
        for start in range(0, n, 5000):
            ids = range(start, min(n, start + 5000))
            cur.executemany(f"INSERT INTO torrents (id, name, size, path, added) VALUES ({m}, {m}, {m}, '', {m})",
                            [(i + 1, f"bench torrent {i}", 1 << 30, now) for i in ids])
            cur.executemany(f"INSERT INTO info_hashes (info_hash, torrent_id) VALUES ({m}, {m})",
                            [(info_hash(i), i + 1) for i in ids])
        conn.commit()
        cur.close()

    def torrent_ids(self) -> dict[bytes, int]:
        return {bytes(h): t for h, t in self.store._fetchall("SELECT info_hash, torrent_id FROM info_hashes")}

    def add_peers(self, rows: list[tuple]) -> None:
        """rows: (torrent_id, peer_id, port, left, key, packed address); bulk, multi-row inserts."""
        now = int(time.time())
        m = ", ".join([self.mark] * 12)
        sql = (f"INSERT INTO peers (torrent_id, peer_id, ip, port, peer_key, state, bytes_left, uploaded, "
               f"downloaded, completed, last_seen, peer_rank) VALUES ({m})")
        rank = random.Random(2)
        conn = self.store._connection()
        self.store._begin(conn, read_only=False)
        cur = conn.cursor()
        for start in range(0, len(rows), 10000):
            cur.executemany(sql, [(t, pid, ip, port, key, 1 if left == 0 else 0, left, 0, 0, 0, now,
                                   rank.getrandbits(32))
                                  for t, pid, port, left, key, ip in rows[start:start + 10000]])
        conn.commit()
        cur.close()
        self.store.expire_peers(now)  # expires nothing; recounts the torrents' counters

    def slot_peers(self, torrents: int, threads: int, pool: int, zipf_s: float) -> None:
        cdf = zipf_cdf(torrents, zipf_s)
        ids = self.torrent_ids()
        rows = []
        for t in range(1, threads + 1):
            for j in range(1, pool + 1):
                torrent, *peer = slot_peer(t, j, cdf)
                rows.append((ids[info_hash(torrent)], *peer))
        self.add_peers(rows)

    def random_peers(self, n: int, torrents: int, zipf_s: float) -> None:
        """n more peers, random ids and addresses in 10.0.0.0/8, spread over the torrents by the
        same popularity."""
        rng = random.Random(1)
        cdf = zipf_cdf(torrents, zipf_s)
        ids = self.torrent_ids()
        tids = [ids[info_hash(i)] for i in range(torrents)]
        for start in range(0, n, 200000):
            k = min(200000, n - start)
            chosen = rng.choices(tids, cum_weights=cdf, k=k)
            self.add_peers([(t, b"-BN0002-" + rng.randbytes(12), rng.randrange(1024, 65536),
                             0 if rng.random() < 1 / 3 else rng.randrange(1, 4000) * 262144, None,
                             b"\x0a" + rng.randbytes(3))
                            for t in chosen])

    def hold_refresh(self) -> None:
        """Mark a refresh as just done, so no traffic-triggered refresh runs during the bench."""
        now = int(time.time())
        assert self.store.take_refresh_lock("bench", now, 600)
        self.store.release_refresh_lock("bench", finished_at=now)

    def peer_count(self) -> int:
        return self.store._fetchall("SELECT COUNT(*) FROM peers")[0][0]

    def size_bytes(self) -> int:
        if self.kind == "sqlite":
            return sum(p.stat().st_size for p in self.dir.glob("tracker.sqlite*"))
        self.store._fetchall("ANALYZE TABLE peers")
        return int(self.store._fetchall(
            "SELECT data_length + index_length FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = 'peers'")[0][0])

    def hand_over(self) -> None:
        """Close our connection; SQLite files go to www-data, as an admin's would."""
        self.store.close()
        if self.kind == "sqlite":
            www = pwd.getpwnam("www-data")
            for path in [self.dir, *self.dir.glob("tracker.sqlite*")]:
                os.chown(path, www.pw_uid, www.pw_gid)

    def drop(self) -> None:
        self.store.close()
        if self.kind == "mysql":
            admin = mysql_admin()
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {self.db}")
            admin.close()


# -- Apache ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Apache:
    def __init__(self, run_dir: Path, apache_dir: Path, config_text: str):
        run_dir.mkdir()
        devserver.prepare_run_dir(run_dir)
        run_dir.chmod(0o777)
        config = run_dir / "tracker.toml"
        config.write_text(config_text)
        config.chmod(0o644)
        self.run_dir = run_dir
        self.port = free_port()
        self.process = devserver.start(run_dir, devserver.httpd_conf(run_dir, self.port, config, apache_dir))
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"apache exited: {self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        return (self.run_dir / "error.log").read_text(errors="replace")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()

    def processes(self) -> tuple[list[int], list[int]]:
        """(mod_wsgi daemon pids, other Apache pids) of this instance."""
        daemons, others = [], [self.process.pid]
        for pid in _pids():
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.process.pid:
                (daemons if cmdline.startswith(DAEMON_PREFIX) else others).append(pid)
        return daemons, others

    def stop(self) -> None:
        devserver.stop(self.process)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total / tick


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def mariadb_pids() -> list[int]:
    found = []
    for pid in _pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() in ("mariadbd", "mysqld"):
                found.append(pid)
        except OSError:
            pass
    return found


# -- wrk ---------------------------------------------------------------------------------

def parse_duration(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(args, url: str, close: bool, torrents: int, seconds: int | None = None) -> dict:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds or args.seconds}s", "--latency",
           "-s", str(LUA)]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd += [url, "--", str(torrents), str(args.pool), str(args.zipf)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.communicate()[0]
    if proc.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed: {' '.join(cmd)}\n{out}")
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "raw": out}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        result[f"p{pct}"] = parse_duration(*m.groups())
    m = re.search(r"BENCH errors=(\d+) non200=(\d+) failure_reason=(\d+) announces_sent=(\d+) "
                  r"scrapes_sent=(\d+) started=(\d+) stopped=(\d+)", out)
    result.update(zip(("errors", "non200", "failures", "announces", "scrapes", "started", "stopped"),
                      map(int, m.groups())))
    result["first_errors"] = sorted(set(re.findall(r"^BENCH first_error (.*)$", out, re.M)))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket"] = sum(map(int, m.groups())) if m else 0
    result["socket_detail"] = m.group(0) if m else ""
    return result


def measure(args, apache: Apache, close: bool, torrents: int, profile: Path | None = None) -> dict:
    """One wrk run, with the CPU each party used meanwhile (cores busy on average); with
    `profile`, py-spy samples the daemons' Python meanwhile and writes a summary there."""
    daemons, others = apache.processes()
    db = mariadb_pids()
    spies = [subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(args.seconds), "-r", "200",
                               "-f", "raw", "-o", f"{profile}.{pid}.raw", "--nonblocking"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for pid in (daemons if profile else [])]
    before = (cpu_seconds(daemons), cpu_seconds(others), cpu_seconds(db), os.times())
    start = time.monotonic()
    result = run_wrk(args, apache.url, close, torrents)
    wall = time.monotonic() - start
    for spy in spies:
        spy.wait()
    if profile:
        summarize_profile(sorted(profile.parent.glob(f"{profile.name}.*.raw")), profile)
    after_t = os.times()
    result["cpu"] = {
        "wsgi": (cpu_seconds(daemons) - before[0]) / wall,
        "apache": (cpu_seconds(others) - before[1]) / wall,
        "mariadb": (cpu_seconds(db) - before[2]) / wall,
        "wrk": (after_t.children_user + after_t.children_system
                - before[3].children_user - before[3].children_system) / wall,
    }
    result["rss_kib"] = rss_kib(daemons)
    return result


def summarize_profile(raws: list[Path], out: Path) -> None:
    """py-spy raw stacks -> the functions most often on the stack (inclusive) and on top (self)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for raw in raws:
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = [f for f in stack.split(";") if f]
            if not frames or "(idle)" in stack:
                continue
            n = int(count)
            total += n
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + n
            own[frames[-1]] = own.get(frames[-1], 0) + n
    lines = [f"{total} busy samples of the daemons' Python threads", "", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(inclusive.items(), key=lambda x: -x[1])[:40]]
    lines += ["", "self:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:30]]
    out.write_text("\n".join(lines) + "\n")
    print(f"profile: {out}", flush=True)


def check_announce(apache: Apache, torrents: int, zipf_s: float) -> None:
    """One announce of announce.lua's first peer, as the tracker sees it: must be a real answer,
    and the tracker must have taken the address from X-Forwarded-For (BEP 24 `external ip`)."""
    torrent, pid, port, left, key, ip = slot_peer(1, 1, zipf_cdf(torrents, zipf_s))
    query = urllib.parse.urlencode({"info_hash": info_hash(torrent), "peer_id": pid, "port": port,
                                    "uploaded": 0, "downloaded": 0, "left": left, "key": key,
                                    "compact": 1, "numwant": 50})
    status, body = apache.get("/tracker/announce?" + query, {"X-Forwarded-For": socket.inet_ntoa(ip)})
    if (status != 200 or b"failure reason" in body or b"5:peers" not in body
            or b"11:external ip4:" + ip not in body):
        raise RuntimeError(f"sanity announce failed: {status} {body[:200]!r}\n{apache.error_log()}")


def tracker_config(root: Path, url: str) -> str:
    (root / "torrents").mkdir(exist_ok=True)
    (root / "output").mkdir(exist_ok=True)
    (root / "output").chmod(0o777)
    return (f'database = "{url}"\ntorrent_dir = "{root}/torrents"\noutput_dir = "{root}/output"\n'
            f'base_url = "http://127.0.0.1"\nrefresh_interval = 86400\ntrusted_proxies = ["{BENCH_PROXY}"]\n')


def print_first_errors(result: dict) -> None:
    """Which rule refused: each wrk thread's first error answer, as its status and body's start."""
    for first in result["first_errors"]:
        print(f"  first error of a wrk thread: {first}", flush=True)


def fmt_ms(v: float) -> str:
    return f"{v:.2f}ms" if v < 100 else f"{v:.0f}ms"


def combine(store: str, mode: str, pairs: list[tuple[dict, dict]]) -> dict:
    """Rounds of (tracker, ceiling) runs -> one row: the round with the median ratio (of an
    even number of rounds, the lower of the middle two), the ratio of every round, and the
    errors of all of them. The machine's speed drifts by tens of percent within a minute;
    a ratio of runs taken side by side, several times over, is what stands."""
    ordered = sorted(pairs, key=lambda pair: pair[0]["rps"] / pair[1]["rps"])
    tracker, ceiling = ordered[(len(ordered) - 1) // 2]
    return {"store": store, "mode": mode, "tracker": tracker, "ceiling": ceiling,
            "ratios": [t["rps"] / c["rps"] for t, c in pairs],
            "floor_ratios": [c["floor_ratio"] for _, c in pairs if "floor_ratio" in c],
            "metrics_ratios": [t["metrics_ratio"] for t, _ in pairs if "metrics_ratio" in t],
            "metrics_cpu_ratios": [t["metrics_cpu_ratio"] for t, _ in pairs if "metrics_cpu_ratio" in t],
            "errors": sum(t["errors"] for t, _ in pairs), "socket": sum(t["socket"] for t, _ in pairs)}


def print_table(rows: list[dict]) -> None:
    head = ("store", "mode", "tracker req/s", "ceiling req/s", "ratio (median)", "each round", "p50", "p99",
            "errors", "ceil p50", "ceil p99")
    lines = [head]
    for r in rows:
        t, c = r["tracker"], r["ceiling"]
        err = f"{r['errors']}" + (f" (+{r['socket']} sock)" if r["socket"] else "")
        lines.append((r["store"], r["mode"], f"{t['rps']:.0f}", f"{c['rps']:.0f}", f"{t['rps'] / c['rps']:.2f}",
                      " ".join(f"{ratio:.2f}" for ratio in r["ratios"]),
                      fmt_ms(t["p50"]), fmt_ms(t["p99"]), err, fmt_ms(c["p50"]), fmt_ms(c["p99"])))
    if any(r["floor_ratios"] for r in rows):
        lines = [line + (cell,) for line, cell in zip(lines, ["floor.wsgi, each round"] + [
            " ".join(f"{ratio:.2f}" for ratio in r["floor_ratios"]) for r in rows])]
        head = lines[0]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(str(v).ljust(w) for v, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(out))


def cpu_per_request(result: dict) -> float:
    """Microseconds of the mod_wsgi daemons' CPU per answered request."""
    return result["cpu"]["wsgi"] / result["rps"] * 1e6


def print_metrics(rows: list[dict]) -> None:
    """The tracker with metrics on against the same with them off, measured beside each other:
    the rate on/off, and the daemons' CPU per request off/on (both 1.0 when counting is free)."""
    print("\nMetrics on vs off (target >= 0.97): rate on/off, and daemon CPU per request off/on")

    def median(values: list[float]) -> float:
        return sorted(values)[(len(values) - 1) // 2]

    for r in rows:
        print(f"  {r['store']:<8} {r['mode']:<10} rate median {median(r['metrics_ratios']):.3f} (each round "
              + " ".join(f"{ratio:.3f}" for ratio in r["metrics_ratios"])
              + f"); CPU median {median(r['metrics_cpu_ratios']):.3f} (each round "
              + " ".join(f"{ratio:.3f}" for ratio in r["metrics_cpu_ratios"]) + ")")


def print_cpu(rows: list[dict]) -> None:
    print("\nCPU during the median round (cores busy on average; the machine has "
          f"{os.cpu_count()}): wsgi daemons / apache workers / mariadbd / wrk")
    for r in rows:
        for side in ("tracker", "ceiling"):
            c = r[side]["cpu"]
            print(f"  {r['store']:<14} {r['mode']:<10} {side:<8} wsgi {c['wsgi']:.2f}  apache {c['apache']:.2f}  "
                  f"mariadb {c['mariadb']:.2f}  wrk {c['wrk']:.2f}  "
                  f"(daemon RSS {r[side]['rss_kib'] / 1024:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--stores", default="sqlite,mysql")
    parser.add_argument("--modes", default="keepalive,close")
    parser.add_argument("--floor", action="store_true", help="also measure bench/floor.wsgi, the least a "
                        "Python announce handler does, and print its ratio to the ceiling")
    parser.add_argument("--metrics", action="store_true", help="also measure the tracker with its metrics "
                        "off, beside it in every round, and print the on/off ratio")
    parser.add_argument("--rounds", type=int, default=3, help="tracker/ceiling pairs per store and mode; "
                        "the table shows the median ratio")
    parser.add_argument("--torrents", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=5000, help="peers per wrk thread")
    parser.add_argument("--zipf", type=float, default=1.0, help="popularity exponent s")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--scale", action="store_true", help="also measure a store pre-filled with many peers")
    parser.add_argument("--scale-stores", default="sqlite")
    parser.add_argument("--scale-torrents", type=int, default=100_000)
    parser.add_argument("--scale-peers", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--profile", type=Path, help="py-spy the tracker's daemons in each run; "
                        "summaries go to PROFILE-<store>-<mode>.txt (pip install py-spy)")
    args = parser.parse_args()
    missing = [(tool, fix) for tool, fix in (("wrk", "apt-get install -y wrk"), ("py-spy", "pip install py-spy"))
               if (tool == "wrk" or args.profile) and shutil.which(tool) is None]
    if missing:
        sys.exit("; ".join(f"bench/run.py needs {tool} on PATH: {fix}" for tool, fix in missing))
    if not (1 <= args.threads <= MAX_THREADS and 1 <= args.pool <= MAX_POOL):
        sys.exit(f"bench/run.py: --threads {args.threads} --pool {args.pool}: each peer needs its own "
                 f"10.<thread>.x.y address; use --threads 1..{MAX_THREADS} and --pool 1..{MAX_POOL}")

    root = Path(tempfile.mkdtemp(prefix="tracker-wsgi-bench-"))
    root.chmod(0o755)
    apaches: list[Apache] = []
    stores: list[BenchStore] = []
    rows: list[dict] = []
    scale_rows: list[dict] = []
    try:
        def serve(app: str) -> Apache:
            """bench/<app>.wsgi from a copy of apache/ whose tracker.wsgi it replaces."""
            app_dir = root / f"{app}-apache"
            shutil.copytree(APACHE_DIR, app_dir)
            shutil.copy(BENCH / f"{app}.wsgi", app_dir / "tracker.wsgi")
            app_dir.chmod(0o755)
            apache = Apache(root / f"{app}-run", app_dir, "")
            apaches.append(apache)
            run_wrk(args, apache.url, False, args.torrents, seconds=2)  # warm up
            return apache

        hello = serve("hello")
        floor = serve("floor") if args.floor else None
        if args.metrics:
            metrics_off_dir = root / "metrics-off-apache"
            shutil.copytree(APACHE_DIR, metrics_off_dir)
            (metrics_off_dir / "tracker.wsgi").write_text(METRICS_OFF_WSGI)
            metrics_off_dir.chmod(0o755)

        def tracker_store(kind: str, label: str) -> BenchStore:
            t0 = time.monotonic()
            store = BenchStore(kind, root, label)
            stores.append(store)
            store.register(args.torrents)
            store.slot_peers(args.torrents, args.threads, args.pool, args.zipf)
            store.hold_refresh()
            print(f"[{kind}] {args.torrents} torrents, {store.peer_count()} peers in "
                  f"{time.monotonic() - t0:.1f}s", flush=True)
            store.hand_over()
            return store

        for kind in args.stores.split(","):
            store = tracker_store(kind, "small")
            tracker = Apache(root / f"tracker-{kind}", APACHE_DIR, tracker_config(root, store.url))
            apaches.append(tracker)
            check_announce(tracker, args.torrents, args.zipf)
            run_wrk(args, tracker.url, False, args.torrents, seconds=2)  # warm up both daemons
            metrics_off = None
            if args.metrics:
                off_store = tracker_store(kind, "metrics-off")
                metrics_off = Apache(root / f"tracker-{kind}-metrics-off", metrics_off_dir,
                                     tracker_config(root, off_store.url))
                apaches.append(metrics_off)
                check_announce(metrics_off, args.torrents, args.zipf)
                run_wrk(args, metrics_off.url, False, args.torrents, seconds=2)
            for mode in args.modes.split(","):
                close = mode == "close"
                profile = args.profile and args.profile.with_name(f"{args.profile.name}-{kind}-{mode}.txt")
                pairs = []
                for round_ in range(args.rounds):
                    t = measure(args, tracker, close, args.torrents, profile if round_ == 0 else None)
                    if metrics_off is not None:
                        # Both at once, each with its own wrk: whatever else the machine runs
                        # meanwhile weighs on both alike, as it would not on two runs in a row.
                        with ThreadPoolExecutor(2) as pool:
                            on, off = pool.map(lambda apache: measure(args, apache, close, args.torrents),
                                               (tracker, metrics_off))
                        t["metrics_ratio"] = on["rps"] / off["rps"]
                        t["metrics_cpu_ratio"] = cpu_per_request(off) / cpu_per_request(on)
                        print(f"[{kind} {mode} {round_ + 1}/{args.rounds}] at once: metrics on {on['rps']:.0f} "
                              f"req/s {cpu_per_request(on):.1f} us CPU/req, off {off['rps']:.0f} req/s "
                              f"{cpu_per_request(off):.1f} us CPU/req: on/off rate {t['metrics_ratio']:.3f}, "
                              f"CPU off/on {t['metrics_cpu_ratio']:.3f}; errors on {on['errors']} off "
                              f"{off['errors']}", flush=True)
                    c = measure(args, hello, close, args.torrents)
                    if floor is not None:
                        c["floor_ratio"] = measure(args, floor, close, args.torrents)["rps"] / c["rps"]
                    pairs.append((t, c))
                    print(f"[{kind} {mode} {round_ + 1}/{args.rounds}] tracker {t['rps']:.0f} req/s, ceiling "
                          f"{c['rps']:.0f} req/s, ratio {t['rps'] / c['rps']:.2f}, errors {t['errors']} "
                          f"{t['socket_detail']}; started {t['started']} stopped {t['stopped']} scrapes "
                          f"{t['scrapes']} of {t['announces'] + t['scrapes']}", flush=True)
                    print_first_errors(t)
                rows.append(combine(kind, mode, pairs))
            problems = [line for line in tracker.error_log().splitlines() 
                        if "Traceback" in line or (":error]" in line and "tracker_wsgi: ready" not in line)]
            if problems:
                print(f"[{kind}] error.log: {len(problems)} problem lines, e.g. {problems[:3]}")
            tracker.stop()
            if metrics_off is not None:
                metrics_off.stop()

            if args.scale and kind in args.scale_stores.split(","):
                t0 = time.monotonic()
                big = BenchStore(kind, root, "scale")
                stores.append(big)
                big.bulk_register(args.scale_torrents)
                big.slot_peers(args.scale_torrents, args.threads, args.pool, args.zipf)
                big.random_peers(args.scale_peers - args.threads * args.pool, args.scale_torrents, args.zipf)
                big.hold_refresh()
                peers = big.peer_count()
                size = big.size_bytes()
                print(f"[{kind} scale] {args.scale_torrents} torrents, {peers} peers, peers table/file "
                      f"{size / 2**20:.0f} MiB ({size / peers:.0f} B/peer), filled in "
                      f"{time.monotonic() - t0:.1f}s", flush=True)
                big.hand_over()
                tracker = Apache(root / f"tracker-{kind}-scale", APACHE_DIR, tracker_config(root, big.url))
                apaches.append(tracker)
                check_announce(tracker, args.scale_torrents, args.zipf)
                run_wrk(args, tracker.url, False, args.scale_torrents, seconds=2)
                profile = args.profile and args.profile.with_name(f"{args.profile.name}-{kind}-scale.txt")
                t = measure(args, tracker, False, args.scale_torrents, profile)
                small = next(r["tracker"] for r in rows if r["store"] == kind and r["mode"] == "keepalive")
                scale_rows.append({"store": kind, "peers": peers, "bytes": size, "t": t, "small": small})
                print(f"[{kind} scale keepalive] {t['rps']:.0f} req/s (small: {small['rps']:.0f}), "
                      f"errors {t['errors']}", flush=True)
                print_first_errors(t)
                tracker.stop()

        print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.seconds}s --latency, {args.torrents} torrents, "
              f"{args.threads * args.pool} peers, Zipf s={args.zipf}, {args.rounds} rounds; ceiling = bench/hello.wsgi, "
              "same snippet\n")
        print_table(rows)
        if args.metrics:
            print_metrics(rows)
        print_cpu(rows)
        if scale_rows:
            print("\nScale (keep-alive): announce rate with the store pre-filled vs the small case")
            print("| store | peers | torrents | req/s | small req/s | ratio | p50 | p99 | errors | "
                  "DB bytes/peer | daemon RSS |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for s in scale_rows:
                t = s["t"]
                print(f"| {s['store']} | {s['peers']} | {args.scale_torrents} | {t['rps']:.0f} | "
                      f"{s['small']['rps']:.0f} | {t['rps'] / s['small']['rps']:.2f} | {fmt_ms(t['p50'])} | "
                      f"{fmt_ms(t['p99'])} | {t['errors']} | {s['bytes'] / s['peers']:.0f} | "
                      f"{t['rss_kib'] / 1024:.0f} MiB (small {s['small']['rss_kib'] / 1024:.0f} MiB) |")
    finally:
        for apache in apaches:
            apache.stop()
        for store in stores:
            try:
                store.drop()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                print(f"could not drop {store.url}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
