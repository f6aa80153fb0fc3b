"""Throughput benchmark: tracker_wsgi behind the shipped Apache snippet, beside its peers.

    .venv/bin/python bench/run.py [--seconds 10] [--stores sqlite,mysql] [--topologies daemon,embedded]
                                  [--scale] [--metrics] [--candidates | --candidates-only | --cluster]

Every system gets the same traffic (bench/announce.lua: the same torrents, the same peers,
each peer from its own address by X-Forwarded-For) in the same run, one after the other in
each round (--rounds), keep-alive and one connection per request:
  - the tracker, on each store, in real Apache built by tracker_wsgi.devserver (the same
    httpd.conf the tests use), trusting 127.0.0.1 as its reverse proxy so every per-address
    limit stays as shipped; its torrents and the wrk script's starting peers are in the store
    first, so swarms are in steady state. In each topology (--topologies): daemon mode
    (apache/tracker.conf) and embedded mode (apache/tracker-embedded.conf with
    embedded-server.conf's fixed pool), the shipped files both;
  - the same tracker with Apache pinned to one core (the core-scaling row);
  - bench/hello.wsgi served by the same snippets (a copy of apache/ whose tracker.wsgi is the
    hello app): what mod_wsgi's daemon mode, and its embedded mode, themselves allow;
  - the same Apache answering every announce and scrape with a static file holding the
    tracker's own answers: what anything inside Apache can reach;
  - opentracker (Debian's package; a whitelist of the bench's info hashes);
  - the npm bittorrent-tracker 11 (node, in memory, HTTP only; installed into a cache dir).
opentracker and the npm tracker are sent every starting peer once before the rounds.
Run as root (Apache drops to www-data; apt-get for opentracker; MariaDB at 127.0.0.1:3306,
root without password).

With --metrics, each round also drives the tracker and the same tracker with its metrics
off (a second Apache on a store filled alike, whose tracker.wsgi turns counting into a
no-op call and keeps no prometheus_client values) one right after the other, in an order
swapped every round, and prints the rate on/off and the daemons' CPU per request off/on,
per round and the median.

With --candidates (or --candidates-only, alone), issue 18's candidates for the swarm state a
host's processes share (bench/candidates.wsgi: a per-process dict, LMDB, SQLite WAL on
/dev/shm) are measured in each topology beside hello.wsgi, as ratios to it, with a check of
what a peer announced at one process looks like at another (bench/README.md, "Choosing the
host's shared swarm state").

With --cluster (alone), issue 20's Galera benchmark: three tracker front ends (Apache, each
its own port and swarm_dir, front end i listing node i first in `database`) on a 3-node Galera
cluster (scripts/galera-cluster) and three on one MariaDB server with a node's settings, driven
in turn in every round by one wrk each (peers of their own): req/s summed, p99, the nodes'
conflict counters per 1,000 announces; then, --rounds times, node 1 killed with kill -9 under
load: how long front end 1 refuses completions, and node 1 restarted (bench/README.md,
"Galera cluster").

Only ratios within one run mean anything: absolute figures drift with the machine.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import http.client
import importlib.machinery
import importlib.util
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
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
from tracker_wsgi import metrics
metrics.Counts.add = lambda self, key: None
metrics.Counts.tally = lambda self, key: lambda: None
metrics.start = lambda log: None  # before wsgi, whose Application starts them as it is made
from tracker_wsgi.wsgi import application  # noqa: F401
"""
# display-name=%{GROUP} in apache/tracker.conf: "(wsgi:tracker_wsgi_0)" and "_1", cut to argv[0]'s length.
DAEMON_PREFIX = b"(wsgi:"
# The name each topology's rows carry after the system's: "tracker sqlite", "tracker sqlite embedded".
TOPOLOGY_SUFFIX = {"daemon": "", "embedded": " embedded"}
# Where the tracker (and bench/hello.wsgi, bench/floor.wsgi) answer: the path in wrk's URL.
TRACKER_PATH = "/tracker"
# The systems besides ours, each measured in every round (--peers chooses).
PEERS = ("static", "opentracker", "npm")
# The npm tracker the issue compares with; --ignore-scripts because its optional WebRTC
# module cannot build offline (server.js, HTTP only, never loads it).
NPM_PACKAGE, NPM_MAJOR = "bittorrent-tracker@11", "11."
NPM_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tracker-wsgi-bench" / "npm"
# Connections the prefill of opentracker and the npm tracker uses at once.
PREFILL_CONNECTIONS = 4
# How long a server may take to listen after it is started.
START_SECONDS = 30

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
    """One database for one measurement: made, filled, handed to Apache, dropped. On `servers`
    of the run's own (--cluster), the database goes with them; else on the system MariaDB."""

    def __init__(self, kind: str, root: Path, label: str, servers: DatabaseServers | None = None):
        self.kind = kind
        self.servers = servers
        self.dir = root / f"{kind}-{label}"
        self.dir.mkdir()
        self.dir.chmod(0o777)
        if kind == "sqlite":
            self.url = f"sqlite:///{self.dir}/tracker.sqlite"
        elif servers:
            self.db = f"tracker_bench_{secrets.token_hex(4)}"
            admin = servers.connect(1)
            admin.cursor().execute(f"CREATE DATABASE {self.db}")
            admin.close()
            self.url = servers.url(self.db, 1)
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

        def insert(cur) -> None:
            for start in range(0, n, 5000):
                ids = range(start, min(n, start + 5000))
                cur.executemany(f"INSERT INTO torrents (id, name, size, path, added) VALUES ({m}, {m}, {m}, '', {m})",
                                [(i + 1, f"bench torrent {i}", 1 << 30, now) for i in ids])
                cur.executemany(f"INSERT INTO info_hashes (info_hash, torrent_id) VALUES ({m}, {m})",
                                [(info_hash(i), i + 1) for i in ids])

        self.store._transaction(insert)  # one transaction, on a connection of the store's pool

    def torrent_ids(self) -> dict[bytes, int]:
        return {bytes(h): t for h, t in self.store._fetchall("SELECT info_hash, torrent_id FROM info_hashes")}

    def add_peers(self, rows: list[tuple]) -> None:
        """rows: (torrent_id, peer_id, port, left, key, packed address); bulk, multi-row inserts."""
        now = int(time.time())
        m = ", ".join([self.mark] * 12)
        sql = (f"INSERT INTO peers (torrent_id, peer_id, ip, port, peer_key, state, bytes_left, uploaded, "
               f"downloaded, completed, last_seen, peer_rank) VALUES ({m})")
        rank = random.Random(2)

        def insert(cur) -> None:
            for start in range(0, len(rows), 10000):
                cur.executemany(sql, [(t, pid, ip, port, key, 1 if left == 0 else 0, left, 0, 0, 0, now,
                                       rank.getrandbits(32))
                                      for t, pid, port, left, key, ip in rows[start:start + 10000]])

        self.store._transaction(insert)
        self.store.expire_peers(now)  # expires nothing; recounts the torrents' counters

    def slot_peers(self, torrents: int, threads: int, pool: int, zipf_s: float, first_thread: int = 1) -> None:
        """The starting peers of announce.lua's wrk threads first_thread.. (threads of them)."""
        cdf = zipf_cdf(torrents, zipf_s)
        ids = self.torrent_ids()
        rows = []
        for t in range(first_thread, first_thread + threads):
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
        if self.kind == "mysql" and not self.servers:
            admin = mysql_admin()
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {self.db}")
            admin.close()


# -- the servers -------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {port} in {START_SECONDS}s") from None
            time.sleep(0.1)


def listener_pids(port: int) -> set[int]:
    """Every process listening on 127.0.0.1:port (SO_REUSEPORT lets several share one)."""
    out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def command_pids(name: str) -> dict[int, str]:
    """pid -> command line of every process whose comm is `name`."""
    found = {}
    for pid in _pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return found


def apache_copy(root: Path, name: str, wsgi_text: str) -> Path:
    """A copy of apache/ whose tracker.wsgi is `wsgi_text`: every Apache and mod_wsgi setting as shipped."""
    app_dir = root / f"{name}-apache"
    shutil.copytree(APACHE_DIR, app_dir)
    (app_dir / "tracker.wsgi").write_text(wsgi_text)
    app_dir.chmod(0o755)
    return app_dir


class Apache:
    def __init__(self, run_dir: Path, apache_dir: Path, config_text: str, topology: str = "daemon"):
        run_dir.mkdir()
        devserver.prepare_run_dir(run_dir)
        run_dir.chmod(0o777)
        config = run_dir / "tracker.toml"
        config.write_text(config_text)
        config.chmod(0o644)
        self.run_dir = run_dir
        self.topology = topology
        self.port = free_port()
        self.process = devserver.start(run_dir, devserver.httpd_conf(run_dir, self.port, config, apache_dir,
                                                                     topology=topology))
        try:
            wait_listening(self.port, self.process, "apache", run_dir / "error.log")
        except RuntimeError:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{TRACKER_PATH}"

    def error_log(self) -> str:
        return (self.run_dir / "error.log").read_text(errors="replace")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()

    def processes(self) -> tuple[list[int], list[int]]:
        """(pids running Python, other Apache pids) of this instance: the mod_wsgi daemons, or
        in embedded mode every child of Apache's."""
        daemons, others = [], [self.process.pid]
        for pid in _pids():
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.process.pid:
                python = self.topology == "embedded" or cmdline.startswith(DAEMON_PREFIX)
                (daemons if python else others).append(pid)
        return daemons, others

    def pin(self, cpus: set[int]) -> None:
        """`taskset -a -p` for the whole instance: every thread of the parent first (children it
        forks later inherit that), then of every child and mod_wsgi daemon."""
        for pid in [self.process.pid] + sum(self.processes(), []):
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    os.sched_setaffinity(int(tid), cpus)
            except (FileNotFoundError, ProcessLookupError):
                pass  # a child or thread that ended meanwhile
        unpinned = [pid for pid in sum(self.processes(), []) if affinity(pid) not in (cpus, None)]
        if unpinned:
            raise RuntimeError(f"apache processes {unpinned} not pinned to cores {sorted(cpus)}")

    def stop(self) -> None:
        devserver.stop(self.process)


# Replaces apache/tracker.conf in the static-file Apache: the same request URLs answered from
# files (the tracker's own answers, fetched once), with the tracker's content type and headers.
STATIC_CONF = f"""\
Alias {TRACKER_PATH}/announce ${{TRACKER_WSGI_APACHE}}/static/announce
Alias {TRACKER_PATH}/scrape ${{TRACKER_WSGI_APACHE}}/static/scrape
<Directory ${{TRACKER_WSGI_APACHE}}/static>
    Require all granted
    Options None
    ForceType "text/plain; charset=ISO-8859-1"
    Header always set Cache-Control "no-cache, no-store, max-age=0"
    Header always set Pragma "no-cache"
</Directory>
"""


def static_apache(root: Path) -> tuple[Apache, Path]:
    """Apache, with the same httpd.conf and apache/tracker-host.conf, answering every announce
    and scrape with a file; returns it and the directory the answer files go in."""
    conf_dir = root / "static-apache"
    (conf_dir / "static").mkdir(parents=True)
    shutil.copy(APACHE_DIR / "tracker-host.conf", conf_dir)
    (conf_dir / "tracker.conf").write_text(STATIC_CONF)
    for path in (conf_dir, conf_dir / "static"):
        path.chmod(0o755)
    return Apache(root / "static-run", conf_dir, ""), conf_dir / "static"


class OtherTracker:
    """Another tracker measured beside ours: one process of its own, announcing at its `/`."""

    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def processes(self) -> tuple[list[int], list[int]]:
        return [], [self.process.pid]

    def stop(self) -> None:
        devserver.stop(self.process)


class OpenTracker(OtherTracker):
    """Debian's opentracker: in memory, one event loop; it closes every connection itself, so
    wrk counts one read error per answer in keep-alive runs. It chroots to -d, so -w names
    the whitelist inside it; it binds with SO_REUSEPORT, so a stray instance on our port would
    silently take half the connections: the port must have no other listener."""

    def __init__(self, root: Path, whitelist: Path):
        if shutil.which("opentracker") is None:
            print("installing Debian's opentracker: apt-get install -y opentracker", flush=True)
            done = subprocess.run(["apt-get", "install", "-y", "opentracker"], capture_output=True, text=True,
                                  env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if done.returncode != 0:
                sys.exit(f"bench/run.py: apt-get install -y opentracker failed ({done.stderr.strip()[-200:]}); "
                         "install it or leave it out with --peers static,npm")
        strays = command_pids("opentracker")
        for pid, cmdline in strays.items():
            print(f"note: opentracker pid {pid} is running, not ours ({cmdline}); it takes CPU from this run",
                  flush=True)
        chroot = root / "opentracker"
        chroot.mkdir()
        chroot.chmod(0o755)
        shutil.copy(whitelist, chroot / "whitelist.txt")
        (chroot / "whitelist.txt").chmod(0o644)
        self.port = free_port()
        self.log = root / "opentracker.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(["opentracker", "-i", "127.0.0.1", "-p", str(self.port),
                                             "-d", str(chroot), "-w", "/whitelist.txt"],
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self.port, self.process, "opentracker", self.log)
        listeners = listener_pids(self.port)
        if listeners != {self.process.pid}:
            self.stop()
            raise RuntimeError(f"127.0.0.1:{self.port} has listeners {sorted(listeners)}, "
                               f"ours is {self.process.pid}: stop the strays")

class NpmTracker(OtherTracker):
    """The npm bittorrent-tracker 11 (bench/npm_tracker.mjs): HTTP only, in memory, trusting
    X-Forwarded-For, refusing info hashes not in the whitelist."""

    def __init__(self, root: Path, whitelist: Path, cache: Path):
        missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
        if missing:
            sys.exit(f"bench/run.py needs {' and '.join(missing)} on PATH for the npm tracker: "
                     "apt-get install -y nodejs npm, or leave it out with --peers static,opentracker")
        modules = cache / "node_modules"
        package = modules / "bittorrent-tracker" / "package.json"
        if not (package.exists() and json.loads(package.read_text())["version"].startswith(NPM_MAJOR)):
            cache.mkdir(parents=True, exist_ok=True)
            print(f"installing {NPM_PACKAGE} into {cache}", flush=True)
            done = subprocess.run(["npm", "install", "--prefix", str(cache), NPM_PACKAGE, "--ignore-scripts",
                                   "--no-audit", "--no-fund"], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"bench/run.py: npm install {NPM_PACKAGE} into {cache} failed "
                         f"({done.stderr.strip()[-200:]}); or leave it out with --peers static,opentracker")
        self.version = json.loads(package.read_text())["version"]
        self.port = free_port()
        self.log = root / "npm-tracker.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(["node", str(BENCH / "npm_tracker.mjs"), str(modules), str(self.port),
                                             str(whitelist)], stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self.port, self.process, "npm tracker", self.log)


def affinity(pid: int) -> set[int] | None:
    """The cores a process may run on; None once it has ended."""
    try:
        return os.sched_getaffinity(pid)
    except ProcessLookupError:
        return None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """pid -> CPU seconds used so far, of the processes still there."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            used[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError):
            pass
    return used


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings, of the processes in both (another engineer's tests
    may restart mariadbd meanwhile)."""
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


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
    return list(command_pids("mariadbd")) + list(command_pids("mysqld"))


# -- the peers' swarms: every starting peer announced once -----------------------------------

def announce_path(base: str, torrent: int, peer_id: bytes, port: int, left: int, key: bytes) -> str:
    """The announce announce.lua sends for a peer, under `base` ("/tracker" or ""): every byte
    outside the unreserved set as %XY, as clients send it (opentracker reads `+` as itself)."""
    query = urllib.parse.urlencode({"info_hash": info_hash(torrent), "peer_id": peer_id, "port": port,
                                    "uploaded": 0, "downloaded": 0, "left": left, "key": key,
                                    "compact": 1, "numwant": 50}, quote_via=urllib.parse.quote)
    return f"{base}/announce?{query}"


def compact_peers(body: bytes) -> list[bytes]:
    """The 6-byte compact peers of an announce answer."""
    m = re.search(rb"5:peers(\d+):", body)
    start, n = m.end(), int(m.group(1))
    return [body[i:i + 6] for i in range(start, start + n, 6)]


def prefill(url: str, args) -> None:
    """Announce every one of announce.lua's starting peers once, from its own address, as the
    tracker's store holds them before its runs; each must be a real answer."""
    base = urllib.parse.urlsplit(url)
    prefix = base.path.rstrip("/")
    cdf = zipf_cdf(args.torrents, args.zipf)
    peers = [slot_peer(t, j, cdf) for t in range(1, args.threads + 1) for j in range(1, args.pool + 1)]
    failures: list[str] = []

    def announce_all(chunk: list[tuple]) -> None:
        conn = http.client.HTTPConnection(base.hostname, base.port, timeout=30)
        for torrent, pid, port, left, key, ip in chunk:
            for attempt in (1, 2):  # opentracker closes the connection after each answer
                try:
                    conn.request("GET", announce_path(prefix, torrent, pid, port, left, key),
                                 headers={"X-Forwarded-For": socket.inet_ntoa(ip)})
                    response = conn.getresponse()
                    body = response.read()
                    break
                except (ConnectionError, http.client.HTTPException):
                    conn.close()
                    if attempt == 2:
                        raise
            if response.status != 200 or b"failure reason" in body or b"5:peers" not in body:
                failures.append(f"{response.status} {body[:120]!r}")
        conn.close()

    workers = [threading.Thread(target=announce_all, args=(peers[i::PREFILL_CONNECTIONS],))
               for i in range(PREFILL_CONNECTIONS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise RuntimeError(f"{url}: {len(failures)} of {len(peers)} starting peers refused, e.g. {failures[0]}")


def fetch(url: str, headers: dict[str, str] | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
        return response.read()


def forwarded_address_seen(url: str, args) -> bool:
    """Whether a peer's answer lists the other peers at their X-Forwarded-For addresses (10.x)
    rather than at 127.0.0.1, where wrk connects from."""
    torrent, pid, port, left, key, ip = slot_peer(1, 1, zipf_cdf(args.torrents, args.zipf))
    body = fetch(url.rstrip("/") + announce_path("", torrent, pid, port, left, key),
                 {"X-Forwarded-For": socket.inet_ntoa(ip)})
    return any(peer[0] == 10 for peer in compact_peers(body))


def shared_endpoints(args) -> int:
    """How many starting peers share (torrent, port) with another: one peer to a tracker that
    tells peers apart by address and port and sees every one at 127.0.0.1."""
    cdf = zipf_cdf(args.torrents, args.zipf)
    seen: dict[tuple[int, int], int] = {}
    for t in range(1, args.threads + 1):
        for j in range(1, args.pool + 1):
            torrent, _, port, *_ = slot_peer(t, j, cdf)
            seen[torrent, port] = seen.get((torrent, port), 0) + 1
    return sum(n for n in seen.values() if n > 1)


def check_announce(apache: Apache, torrents: int, zipf_s: float) -> None:
    """One announce of announce.lua's first peer, as the tracker sees it: must be a real answer,
    and the tracker must have taken the address from X-Forwarded-For (BEP 24 `external ip`)."""
    torrent, pid, port, left, key, ip = slot_peer(1, 1, zipf_cdf(torrents, zipf_s))
    status, body = apache.get(announce_path("", torrent, pid, port, left, key),
                              {"X-Forwarded-For": socket.inet_ntoa(ip)})
    if (status != 200 or b"failure reason" in body or b"5:peers" not in body
            or b"11:external ip4:" + ip not in body):
        raise RuntimeError(f"sanity announce failed: {status} {body[:200]!r}\n{apache.error_log()}")


def tracker_answers(apache: Apache, args) -> tuple[bytes, bytes]:
    """The tracker's own answers for the static file: a re-announce of a starting peer of the
    most popular torrent (a full numwant=50 answer, as most announces under Zipf get) and a
    scrape of that torrent."""
    cdf = zipf_cdf(args.torrents, args.zipf)
    ip, path = next((ip, announce_path("", torrent, pid, port, left, key))
                    for torrent, pid, port, left, key, ip in (slot_peer(1, j, cdf) for j in range(1, args.pool + 1))
                    if torrent == 0)
    announce = apache.get(path, {"X-Forwarded-For": socket.inet_ntoa(ip)})[1]
    scrape = apache.get("/scrape?" + urllib.parse.urlencode({"info_hash": info_hash(0)},
                                                           quote_via=urllib.parse.quote))[1]
    if len(compact_peers(announce)) != 50 or b"failure reason" in announce + scrape:
        raise RuntimeError(f"the tracker's answers for the static file: {announce[:100]!r} {scrape[:100]!r}")
    return announce, scrape


def tracker_config(root: Path, url: str, host: str = "") -> str:
    """The tracker's config on the store at `url`. Each store gets a swarm_dir of its own (one
    host's LMDB state): trackers sharing one would share swarms whose torrent ids belong to
    different databases, and one writer lease. `host` names another host on the same store."""
    (root / "torrents").mkdir(exist_ok=True)
    (root / "output").mkdir(exist_ok=True)
    (root / "output").chmod(0o777)
    swarms = root / "swarms" / (hashlib.sha1(url.encode()).hexdigest()[:12] + (f"-{host}" if host else ""))
    swarms.mkdir(parents=True, exist_ok=True)
    for path in (root / "swarms", swarms):
        path.chmod(0o777)
    return (f'database = "{url}"\ntorrent_dir = "{root}/torrents"\noutput_dir = "{root}/output"\n'
            f'swarm_dir = "{swarms}"\n'
            f'base_url = "http://127.0.0.1"\nrefresh_interval = 86400\ntrusted_proxies = ["{BENCH_PROXY}"]\n')


# -- wrk ---------------------------------------------------------------------------------

def parse_duration(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_size(value: str, unit: str) -> float:
    return float(value) * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}[unit]


def run_wrk(args, url: str, close: bool, torrents: int, seconds: int | None = None, first_thread: int = 1,
            connections: int | None = None) -> dict:
    """wrk with announce.lua; its threads send the peers of slots first_thread.. (announce.lua)."""
    cmd = ["wrk", f"-t{args.threads}", f"-c{connections or args.connections}", f"-d{seconds or args.seconds}s",
           "--latency", "-s", str(LUA)]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd += [url, "--", str(torrents), str(args.pool), str(args.zipf), str(first_thread)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.communicate()[0]
    if proc.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed: {' '.join(cmd)}\n{out}")
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "raw": out}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        result[f"p{pct}"] = parse_duration(*m.groups())
    m = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)\s", out, re.M)
    result["max"] = parse_duration(*m.groups())
    m = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(B|KB|MB|GB|TB) read", out)
    result["bytes_per_answer"] = parse_size(*m.groups()[1:]) / max(1, int(m.group(1)))
    m = re.search(r"BENCH errors=(\d+) non200=(\d+) failure_reason=(\d+) announces_sent=(\d+) "
                  r"scrapes_sent=(\d+) started=(\d+) stopped=(\d+)", out)
    result.update(zip(("errors", "non200", "failures", "announces", "scrapes", "started", "stopped"),
                      map(int, m.groups())))
    result["first_errors"] = sorted(set(re.findall(r"^BENCH first_error (.*)$", out, re.M)))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket"] = sum(map(int, m.groups())) if m else 0
    result["socket_detail"] = m.group(0) if m else ""
    return result


class System:
    """One row of the tables: a server, the URL wrk drives (its path is where announce and
    scrape live), and, for the core-scaling row, the cores its Apache is pinned to."""

    def __init__(self, name: str, server, profile: Path | None = None, cpus: set[int] | None = None):
        self.name, self.server, self.profile, self.cpus = name, server, profile, cpus


def measure(args, system: System, close: bool, profile: Path | None = None) -> dict:
    """One wrk run, with the CPU each party used meanwhile (cores busy on average); with
    `profile`, py-spy samples the daemons' Python meanwhile and writes a summary there."""
    if system.cpus:
        system.server.pin(system.cpus)
    daemons, others = system.server.processes()
    db = mariadb_pids()
    spies = [subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(args.seconds), "-r", "200",
                               "-f", "raw", "-o", f"{profile}.{pid}.raw", "--nonblocking"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for pid in (daemons if profile else [])]
    before = (cpu_seconds(daemons), cpu_seconds(others), cpu_seconds(db), os.times())
    start = time.monotonic()
    try:
        result = run_wrk(args, system.server.url, close, args.torrents)
    finally:
        if system.cpus:
            system.server.pin(os.sched_getaffinity(0))
    wall = time.monotonic() - start
    for spy in spies:
        spy.wait()
    if profile:
        summarize_profile(sorted(profile.parent.glob(f"{profile.name}.*.raw")), profile)
    after_t = os.times()
    result["cpu"] = {
        "wsgi": cpu_used(before[0], cpu_seconds(daemons)) / wall,
        "server": cpu_used(before[1], cpu_seconds(others)) / wall,
        "mariadb": cpu_used(before[2], cpu_seconds(db)) / wall,
        "wrk": (after_t.children_user + after_t.children_system
                - before[3].children_user - before[3].children_system) / wall,
    }
    result["rss_kib"] = rss_kib(daemons)
    return result


def cpu_per_request(result: dict) -> float:
    """Microseconds of the mod_wsgi daemons' CPU per answered request."""
    return result["cpu"]["wsgi"] / result["rps"] * 1e6


def measure_metrics(args, on: System, off: System, close: bool, round_: int) -> dict:
    """The tracker with metrics on and the same with them off, one right after the other, the
    order swapped every round so that drift within a pair cancels over the rounds. (Driven at
    once, each with its own wrk on 2 cores, they got a core each and a pair differed by up to
    ±15% on a quiet machine.) Returns both runs, the rate on/off and the daemons' CPU per
    request off/on."""
    if round_ % 2:
        off_run, on_run = measure(args, off, close), measure(args, on, close)
    else:
        on_run, off_run = measure(args, on, close), measure(args, off, close)
    return {"on": on_run, "off": off_run, "rate": on_run["rps"] / off_run["rps"],
            "cpu": cpu_per_request(off_run) / cpu_per_request(on_run)}


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


def print_first_errors(result: dict) -> None:
    """Which rule refused: each wrk thread's first error answer, as its status and body's start."""
    for first in result["first_errors"]:
        print(f"  first error of a wrk thread: {first}", flush=True)


def fmt_ms(v: float) -> str:
    return f"{v:.2f}ms" if v < 100 else f"{v:.0f}ms"


def median_run(runs: list[dict]) -> dict:
    """The run with the median rate (of an even number, the lower of the middle two)."""
    return sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2]


def median_ratio(runs: list[dict], references: list[dict]) -> float:
    """The median of each round's ratio: the machine's speed drifts by tens of percent within
    a minute, so only runs taken side by side, several times over, are compared."""
    return statistics.median(r["rps"] / ref["rps"] for r, ref in zip(runs, references))


def print_table(mode: str, runs: dict[str, list[dict]], references: list[str]) -> None:
    """One row per system: the median round's rate and latency, the median of each round's
    ratio to every reference, and the socket errors and failure answers of all rounds."""
    head = ("system", "req/s", *(f"x {name}" for name in references), "p50", "p99", "socket errors",
            "failure answers", "bytes/answer")
    lines = [head]
    for name, system_runs in runs.items():
        run = median_run(system_runs)
        lines.append((name, f"{run['rps']:.0f}",
                      *(f"{median_ratio(system_runs, runs[ref]):.2f}" for ref in references),
                      fmt_ms(run["p50"]), fmt_ms(run["p99"]), str(sum(r["socket"] for r in system_runs)),
                      str(sum(r["errors"] for r in system_runs)), f"{run['bytes_per_answer']:.0f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(v.ljust(w) for v, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print(f"\n{mode}:")
    print("\n".join(out))


def print_metrics(kinds: list[str], modes: list[str], rounds: dict[tuple[str, str], list[dict]]) -> None:
    """The tracker with metrics on against the same with them off, measured beside each other:
    the rate on/off, and the daemons' CPU per request off/on (both 1.0 when counting is free).
    Of an even number of rounds the median is the lower of the middle two: the target is a floor."""
    print("\nMetrics on vs off (target >= 0.97): rate on/off, and daemon CPU per request off/on")

    def median(values: list[float]) -> float:
        return sorted(values)[(len(values) - 1) // 2]

    for kind in kinds:
        for mode in modes:
            rates = [r["rate"] for r in rounds[kind, mode]]
            cpus = [r["cpu"] for r in rounds[kind, mode]]
            print(f"  {kind:<8} {mode:<10} rate median {median(rates):.3f} (each round "
                  + " ".join(f"{ratio:.3f}" for ratio in rates)
                  + f"); CPU median {median(cpus):.3f} (each round "
                  + " ".join(f"{ratio:.3f}" for ratio in cpus) + ")")


def print_cpu(mode: str, runs: dict[str, list[dict]]) -> None:
    print(f"CPU in the median round ({mode}; cores busy on average, of {os.cpu_count()}): "
          "wsgi (the daemons; embedded: Apache's children) / the server's other processes / mariadbd / wrk")
    for name, system_runs in runs.items():
        run = median_run(system_runs)
        c = run["cpu"]
        rss = f"  (daemon RSS {run['rss_kib'] / 1024:.0f} MiB)" if run["rss_kib"] else ""
        print(f"  {name:<40} wsgi {c['wsgi']:.2f}  server {c['server']:.2f}  mariadb {c['mariadb']:.2f}  "
              f"wrk {c['wrk']:.2f}{rss}")


# -- --candidates: the swarm state the processes of one host share (issue 18) ----------------

# bench/candidates.wsgi's candidates, and their rows' names.
CANDIDATES = {"dict": "(a) per-process dict", "lmdb": "(b) LMDB, key per peer", "sqlite": "(c) SQLite WAL, /dev/shm"}
# The cross-process check: fresh swarms, and the announces it may send to reach a process
# other than a given one (Apache's children take connections as they come).
CROSS_SWARMS, CROSS_TRIES = 10, 200


def candidates_module():
    """bench/candidates.wsgi as a module (mod_wsgi loads it by path, not by import)."""
    loader = importlib.machinery.SourceFileLoader("bench_candidates", str(BENCH / "candidates.wsgi"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def candidate_state(root: Path, candidate: str, topology: str, shm_dirs: list[Path]) -> str:
    """The candidate's config (tracker.toml, read by candidates.wsgi) and its state directory,
    www-data's: LMDB's in the bench's temp dir (the processes make the files), SQLite's in a
    temp dir on /dev/shm holding the tables, in WAL mode (kept by the file)."""
    www = pwd.getpwnam("www-data")
    if candidate == "dict":
        return 'candidate = "dict"\n'
    if candidate == "lmdb":
        state = root / f"lmdb-{topology}"
        state.mkdir()
    else:
        state = Path(tempfile.mkdtemp(prefix="tracker-wsgi-bench-", dir="/dev/shm"))
        shm_dirs.append(state)
        candidates_module().create_sqlite(str(state))
    for path in [state, *state.iterdir()]:
        os.chown(path, www.pw_uid, www.pw_gid)
    return f'candidate = "{candidate}"\nstate_dir = "{state}"\n'


def allow_keepalive(app_dir: Path) -> None:
    """Take the snippets' one answer per connection (`SetEnv nokeepalive 1`) out of a copy of
    apache/, so that keep-alive runs keep their connections and the store's cost is a larger
    part of each answer; close runs are what clients do. Everything else stays as shipped."""
    for snippet in ("tracker.conf", "tracker-embedded.conf"):
        path = app_dir / snippet
        text = path.read_text()
        if "    SetEnv nokeepalive 1\n" not in text:
            raise RuntimeError(f"{path}: no `SetEnv nokeepalive 1` to take out: keep bench/run.py in step")
        path.write_text(text.replace("    SetEnv nokeepalive 1\n", ""))


def candidate_announce(apache: Apache, swarm: bytes, peer_id: bytes, address: str, event: str = "") -> tuple[str, bytes]:
    """One announce on a connection of its own: (the answering process's pid, the answer)."""
    query = urllib.parse.urlencode({"info_hash": swarm, "peer_id": peer_id, "port": 6881, "uploaded": 0,
                                    "downloaded": 0, "left": 0, "compact": 1, "numwant": 50,
                                    **({"event": event} if event else {})}, quote_via=urllib.parse.quote)
    conn = http.client.HTTPConnection("127.0.0.1", apache.port, timeout=30)
    try:
        conn.request("GET", f"{TRACKER_PATH}/announce?{query}",
                     headers={"X-Forwarded-For": address, "Connection": "close"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200 or b"5:peers" not in body:
        raise RuntimeError(f"candidate announce: {response.status} {body[:200]!r}\n{apache.error_log()[-2000:]}")
    return response.getheader("X-Bench-Pid"), body


def announce_elsewhere(apache: Apache, swarm: bytes, peer_id: bytes, address: str, process: str) -> bytes | None:
    """The answer of the first process other than `process` to answer this peer's re-announce,
    of CROSS_TRIES tries; None if none did."""
    for _ in range(CROSS_TRIES):
        pid, body = candidate_announce(apache, swarm, peer_id, address)
        if pid != process:
            return body
    return None


def cross_process_check(apache: Apache) -> dict | None:
    """Per fresh swarm: peer P announces at one process; peer Q announces until another
    process answers: is P in that answer (found)? Then P stops, wherever that lands, and Q
    announces until a process other than the stop's answers: is P still handed out (stale)?
    None when no other process ever answered (daemon mode routes each swarm to one process)."""
    found = stale = 0
    for n in range(CROSS_SWARMS):
        swarm, p_id, q_id = secrets.token_bytes(20), secrets.token_bytes(20), secrets.token_bytes(20)
        p_address, q_address = f"10.250.{n}.1", f"10.250.{n}.2"
        p_compact = socket.inet_aton(p_address) + (6881).to_bytes(2, "big")
        p_process, _ = candidate_announce(apache, swarm, p_id, p_address, "started")
        body = announce_elsewhere(apache, swarm, q_id, q_address, p_process)
        if body is None:
            return None
        found += p_compact in compact_peers(body)
        stop_process, _ = candidate_announce(apache, swarm, p_id, p_address, "stopped")
        body = announce_elsewhere(apache, swarm, q_id, q_address, stop_process)
        if body is None:
            return None
        stale += p_compact in compact_peers(body)
    return {"found": found, "stale": stale, "swarms": CROSS_SWARMS}


def cross_process_text(check: dict | None, topology: str) -> str:
    if check is None:
        return ("one process per swarm (routed by info hash)" if topology == "daemon"
                else f"no other process answered in {CROSS_TRIES} tries")
    return (f"found {check['found']}/{check['swarms']}; stopped at one, still handed out by another "
            f"{check['stale']}/{check['swarms']}")


def run_candidates(args, root: Path, topologies: list[str], modes: list[str]) -> None:
    """Issue 18: bench/candidates.wsgi's candidates for the swarm state of one host, each in
    every topology beside bench/hello.wsgi in the same snippet, in turn in every round; then
    a table of each one's rate as a ratio to that topology's hello, and the cross-process check."""
    servers: list[Apache] = []
    shm_dirs: list[Path] = []
    try:
        hello_dir = apache_copy(root, "candidates-hello", (BENCH / "hello.wsgi").read_text())
        candidates_dir = apache_copy(root, "candidates", (BENCH / "candidates.wsgi").read_text())
        for app_dir in (hello_dir, candidates_dir):
            allow_keepalive(app_dir)
        systems: list[tuple[str, System]] = []  # (topology, system), hello first in each topology
        checks: dict[tuple[str, str], dict | None] = {}
        for topology in topologies:
            hello = Apache(root / f"candidates-hello-{topology}-run", hello_dir, "", topology)
            servers.append(hello)
            systems.append((topology, System("hello", hello)))
            for candidate, name in CANDIDATES.items():
                t0 = time.monotonic()
                apache = Apache(root / f"candidate-{candidate}-{topology}-run", candidates_dir,
                                candidate_state(root, candidate, topology, shm_dirs), topology)
                servers.append(apache)
                checks[topology, name] = cross_process_check(apache)
                prefill(apache.url, args)  # also the warm-up: every process has served and opened its store
                print(f"[candidates {topology}] {name}: {cross_process_text(checks[topology, name], topology)}; "
                      f"{args.threads * args.pool} starting peers announced; {time.monotonic() - t0:.1f}s", flush=True)
                systems.append((topology, System(name, apache)))
        runs: dict[tuple[str, str, str], list[dict]] = {}  # (mode, topology, name) -> each round's run
        for mode in modes:
            for round_ in range(args.rounds):
                for topology, system in systems:
                    r = measure(args, system, mode == "close")
                    runs.setdefault((mode, topology, system.name), []).append(r)
                    print(f"[candidates {mode} {round_ + 1}/{args.rounds}] {topology} {system.name}: "
                          f"{r['rps']:.0f} req/s, p99 {fmt_ms(r['p99'])}, failure answers {r['errors']}, "
                          f"{r['socket_detail'] or 'no socket errors'}", flush=True)
                    print_first_errors(r)
        for (topology, system), server in zip(systems, servers):
            problems = [line for line in server.error_log().splitlines()
                        if "Traceback" in line or (":error]" in line and "AH10159" not in line)]
            if problems:
                print(f"[candidates {topology}] {system.name} error.log: {len(problems)} problem lines, "
                      f"e.g. {problems[:3]}")
        print_candidates(args, modes, systems, runs, checks)
    finally:
        for server in servers:
            server.stop()
        for state in shm_dirs:
            shutil.rmtree(state, ignore_errors=True)


def print_candidates(args, modes: list[str], systems: list[tuple[str, System]],
                     runs: dict[tuple[str, str, str], list[dict]], checks: dict[tuple[str, str], dict | None]) -> None:
    print(f"\nCandidates for the host's shared swarm state (issue 18): wrk -t{args.threads} -c{args.connections} "
          f"-d{args.seconds}s, announce.lua ({args.torrents} torrents, {args.threads * args.pool} starting peers "
          f"announced first), {args.rounds} rounds of every row in turn; req/s and p99 of the median round, x hello "
          "= the median of each round's ratio to hello.wsgi in the same topology; socket errors and failure answers "
          f"of all rounds; bytes/answer (headers included) of the median {modes[0]} round. load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    head = ["topology", "system"]
    for mode in modes:
        head += [f"{mode} req/s", "x hello", "p99", "socket errors"]
    head += ["failure answers", "bytes/answer", "a peer announced at one process, asked at another"]
    lines = [head]
    for topology, system in systems:
        line = [topology, system.name]
        for mode in modes:
            own, hello = runs[mode, topology, system.name], runs[mode, topology, "hello"]
            run = median_run(own)
            line += [f"{run['rps']:.0f}", f"{median_ratio(own, hello):.2f}", fmt_ms(run["p99"]),
                     str(sum(r["socket"] for r in own))]
        line.append(str(sum(r["errors"] for mode in modes for r in runs[mode, topology, system.name])))
        line.append(f"{median_run(runs[modes[0], topology, system.name])['bytes_per_answer']:.0f}")
        line.append("" if system.name == "hello" else cross_process_text(checks[topology, system.name], topology))
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(v.ljust(w) for v, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(out))


# -- --cluster: three front ends on a 3-node Galera cluster vs on one MariaDB server (issue 20) --

GALERA_CLUSTER = REPO / "scripts" / "galera-cluster"
# Tracker front ends (Apache instances, each its own port and swarm_dir) per database; front
# end i prefers server i: its `database` lists the nodes from i on.
FRONT_ENDS = 3
# Galera's counts of a node's own transactions that lost to another node's write of the same
# row: at commit (certification failed) and while running (aborted by a replicated write,
# "brute force"). Each is a transaction the tracker ran again. InnoDB's deadlocks are the
# single server's (and a node's local) kind of lost conflict.
CONFLICT_COUNTERS = ("wsrep_local_cert_failures", "wsrep_local_bf_aborts", "Innodb_deadlocks")
# The failover run: node 1 is killed this many seconds into the load, which goes on at least
# FAILOVER_AFTER seconds more; the probes at front end 1 start FAILOVER_PROBES_BEFORE seconds
# before the kill, one after the other, FAILOVER_PROBE_PAUSE apart.
FAILOVER_KILL_AT, FAILOVER_AFTER, FAILOVER_PROBES_BEFORE, FAILOVER_PROBE_PAUSE = 5, 15, 2, 0.05
# After the load, the probes go on until one is answered, at most this long after the kill.
FAILOVER_GIVE_UP = 60
# The targets.
CLUSTER_RATE_TARGET, CONFLICTS_TARGET, FAILOVER_TARGET = 0.9, 1.0, 5.0


def galera_cluster_module():
    """scripts/galera-cluster as a module (it has no .py name): its node settings and account."""
    loader = importlib.machinery.SourceFileLoader("galera_cluster", str(GALERA_CLUSTER))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


class DatabaseServers:
    """MariaDB servers of the run's own, reached over TCP with one account: the nodes of a
    Galera cluster, or one server."""

    name: str
    ports: list[int]
    user: str
    password: str

    def url(self, db: str, first: int) -> str:
        """The `database` setting of a front end preferring server `first` (1-based), the
        others after it in turn."""
        ports = self.ports[first - 1:] + self.ports[:first - 1]
        return f"mysql://{self.user}:{self.password}@{','.join(f'127.0.0.1:{p}' for p in ports)}/{db}"

    def connect(self, n: int):
        import mysql.connector

        return mysql.connector.connect(user=self.user, password=self.password, host="127.0.0.1",
                                       port=self.ports[n - 1], autocommit=True, connection_timeout=5)

    def counters(self) -> dict[str, int]:
        """CONFLICT_COUNTERS summed over the servers (a counter a server lacks counts 0)."""
        total = dict.fromkeys(CONFLICT_COUNTERS, 0)
        for n in range(1, len(self.ports) + 1):
            conn = self.connect(n)
            try:
                cur = conn.cursor()
                cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN (%s, %s, %s)", CONFLICT_COUNTERS)
                for name, value in cur.fetchall():
                    total[next(c for c in CONFLICT_COUNTERS if c.lower() == name.lower())] += int(value)
            finally:
                conn.close()
        return total

    def pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class GaleraServers(DatabaseServers):
    """scripts/galera-cluster's three nodes, in `base` (a new directory)."""

    def __init__(self, base: Path):
        self.name, self.base = "Galera, 3 nodes", base
        self._script("start")
        cluster = json.loads((base / "cluster.json").read_text())
        self.user, self.password, self.nodes = cluster["user"], cluster["password"], cluster["nodes"]
        self.ports = [node["port"] for node in self.nodes]

    def pid(self, n: int) -> int | None:
        try:
            return int(Path(self.nodes[n - 1]["dir"], "mariadbd.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def pids(self) -> list[int]:
        return [pid for pid in (self.pid(n) for n in range(1, len(self.nodes) + 1)) if pid is not None]

    def kill(self, n: int) -> float:
        """kill -9 node n, as a crash would; returns the time.monotonic() of the signal."""
        pid = self.pid(n)
        if pid is None:
            raise RuntimeError(f"galera node{n} has no pid file")
        os.kill(pid, 9)
        return time.monotonic()

    def restart(self, n: int) -> float:
        """Start node n again (it rejoins by IST) and wait until it is Synced; returns the seconds."""
        started = time.monotonic()
        self._script("restart", str(n))
        return time.monotonic() - started

    def synced_nodes(self) -> int:
        synced = 0
        for n in range(1, len(self.nodes) + 1):
            try:
                conn = self.connect(n)
            except Exception:  # noqa: BLE001 - a node down is not synced
                continue
            cur = conn.cursor()
            cur.execute("SHOW STATUS LIKE 'wsrep_local_state_comment'")
            synced += cur.fetchone()[1] == "Synced"
            conn.close()
        return synced

    def stop(self) -> None:
        self._script("stop")

    def _script(self, command: str, *args: str) -> None:
        done = subprocess.run([str(GALERA_CLUSTER), command, str(self.base), *args], capture_output=True, text=True)
        if done.returncode != 0:
            if command == "start":  # the nodes that did start
                subprocess.run([str(GALERA_CLUSTER), "stop", str(self.base)], capture_output=True)
            raise RuntimeError(f"scripts/galera-cluster {command} {self.base} {' '.join(args)}: {done.stderr.strip()}")


class SingleServer(DatabaseServers):
    """One mariadbd of the run's own with a Galera node's settings (scripts/galera-cluster's
    my.cnf) but no Galera, and the cluster's account: what the cluster is compared with. (The
    system's MariaDB has other settings, and other engineers' tests restart it.)"""

    def __init__(self, base: Path):
        galera = galera_cluster_module()
        self.name, self.user, self.password = "one server", galera.CLUSTER_USER, secrets.token_urlsafe(12)
        mysql_user = pwd.getpwnam("mysql")
        base.mkdir()
        (base / "data").mkdir()
        for path in (base, base / "data"):
            os.chown(path, mysql_user.pw_uid, mysql_user.pw_gid)
        self.socket = base / "mariadbd.sock"
        self.ports = [free_port()]
        settings = "\n".join(line for line in galera.MY_CNF.splitlines() if not line.startswith("wsrep"))
        cnf = base / "my.cnf"
        cnf.write_text(settings.replace("Node {n} of a test cluster", "One server like a test cluster's node")
                       .format(node_dir=base, datadir=base / "data", socket=self.socket, port=self.ports[0]) + "\n")
        subprocess.run(["mariadb-install-db", f"--defaults-file={cnf}", "--user=mysql",
                        "--auth-root-authentication-method=socket", "--skip-test-db"], check=True, capture_output=True)
        self.process = subprocess.Popen(["/usr/sbin/mariadbd", f"--defaults-file={cnf}"], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(base)
            self._sql(f"CREATE USER '{self.user}'@'127.0.0.1' IDENTIFIED BY '{self.password}'; "
                      f"GRANT ALL ON *.* TO '{self.user}'@'127.0.0.1'")
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, base: Path) -> None:
        deadline = time.monotonic() + START_SECONDS
        while self._sql("SELECT 1", check=False) != "1":
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the single mariadbd did not start: see {base}/error.log")
            time.sleep(0.2)

    def _sql(self, statements: str, check: bool = True) -> str:
        done = subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "--batch",
                               "--skip-column-names", "--connect-timeout=2", "-e", statements],
                              capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeError(f"single mariadbd: {statements}: {done.stderr.strip()}")
        return done.stdout.strip()

    def pids(self) -> list[int]:
        return [self.process.pid]

    def stop(self) -> None:
        devserver.stop(self.process, 60)


def front_end_connections(args) -> int:
    """Each front end's wrk connections: --connections shared among the front ends."""
    return max(args.threads, args.connections // FRONT_ENDS)


def drive(args, front_ends: list[Apache], close: bool, seconds: int | None = None) -> list[dict]:
    """One wrk per front end, all at once; front end i's threads send the peers of wrk threads
    i * --threads + 1.. (announce.lua's first_thread), so no peer announces at two front ends."""
    results: list[dict | BaseException | None] = [None] * len(front_ends)

    def one(i: int) -> None:
        try:
            results[i] = run_wrk(args, front_ends[i].url, close, args.torrents, seconds,
                                 first_thread=1 + i * args.threads, connections=front_end_connections(args))
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
            results[i] = exc

    workers = [threading.Thread(target=one, args=(i,)) for i in range(len(front_ends))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def measure_front_ends(args, servers: DatabaseServers, front_ends: list[Apache], close: bool) -> dict:
    """The front ends driven at once: req/s summed, the slowest front end's p50 and p99, the
    failure answers and socket errors summed, CONFLICT_COUNTERS' increase over the servers, and
    the CPU each party used (cores busy)."""
    processes = [apache.processes() for apache in front_ends]
    daemons, others = sum((d for d, _ in processes), []), sum((o for _, o in processes), [])
    db = servers.pids()
    counted = servers.counters()
    before = (cpu_seconds(daemons), cpu_seconds(others), cpu_seconds(db), os.times())
    start = time.monotonic()
    runs = drive(args, front_ends, close)
    wall = time.monotonic() - start
    after_t = os.times()
    counted = {name: value - counted[name] for name, value in servers.counters().items()}
    return {
        "rps": sum(r["rps"] for r in runs), "p50": max(r["p50"] for r in runs), "p99": max(r["p99"] for r in runs),
        "errors": sum(r["errors"] for r in runs), "socket": sum(r["socket"] for r in runs),
        "announces": sum(r["announces"] for r in runs), "each": [r["rps"] for r in runs],
        "first_errors": sorted({e for r in runs for e in r["first_errors"]}), "conflicts": counted,
        "cpu": {"wsgi": cpu_used(before[0], cpu_seconds(daemons)) / wall,
                "server": cpu_used(before[1], cpu_seconds(others)) / wall,
                "mariadb": cpu_used(before[2], cpu_seconds(db)) / wall,
                "wrk": (after_t.children_user + after_t.children_system
                        - before[3].children_user - before[3].children_system) / wall},
    }


def completion_probe(apache: Apache, n: int) -> tuple[bool, str]:
    """A completion (event=completed, left=0) of a new peer on the most popular torrent, on a
    connection of its own: the tracker commits it to the database before it answers, so it
    is answered only by a node that works. (True, "") for a real answer, else (False, what)."""
    peer_id = b"-BNFAIL-" + secrets.token_bytes(12)
    path = announce_path(TRACKER_PATH, 0, peer_id, 6881, 0, b"F00D") + "&event=completed"
    address = f"10.254.{n // 250 % 250}.{n % 250 + 1}"  # one per probe: the per-address limits stay out of it
    conn = http.client.HTTPConnection("127.0.0.1", apache.port, timeout=60)
    try:
        conn.request("GET", path, headers={"X-Forwarded-For": address, "Connection": "close"})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return False, f"no answer: {exc}"
    finally:
        conn.close()
    if response.status == 200 and b"failure reason" not in body and b"5:peers" in body:
        return True, ""
    return False, f"{response.status} {body[:100]!r}"


def measure_failover(args, cluster: GaleraServers, front_ends: list[Apache], close: bool) -> dict:
    """Every front end under load; FAILOVER_KILL_AT seconds in, kill -9 node 1, the node front
    end 1 prefers, while completions are probed at front end 1 one after the other (until one
    is answered after the load, at most FAILOVER_GIVE_UP seconds after the kill) and the other
    nodes' view of the cluster is watched. The failover time is from the kill to the first
    real answer to a probe sent after it; the settling time, to the first real answer to a
    probe sent after the last refused or unanswered one came back. Then node 1 is restarted."""
    probes: list[tuple[float, float, bool, str]] = []  # (sent, answered, real answer, what else)
    views: list[tuple[float, int, str]] = []  # (when, node, its view) at each change of a node's view
    load_done, stop = threading.Event(), threading.Event()
    killed: dict[str, float] = {}

    def probe() -> None:
        n = 0
        while not stop.is_set():
            sent = time.monotonic()
            ok, what = completion_probe(front_ends[0], n)
            probes.append((sent, time.monotonic(), ok, what))
            n += 1
            if ok and load_done.is_set() or "at" in killed and sent > killed["at"] + FAILOVER_GIVE_UP:
                return
            time.sleep(FAILOVER_PROBE_PAUSE)

    def watch(n: int) -> None:
        """Node n's view (wsrep_cluster_status, wsrep_cluster_size, wsrep_ready), at each change."""
        conn, last = None, None
        while not stop.is_set():
            try:
                conn = conn or cluster.connect(n)
                cur = conn.cursor()
                cur.execute("SHOW STATUS WHERE Variable_name IN "
                            "('wsrep_cluster_status', 'wsrep_cluster_size', 'wsrep_ready')")
                status = dict(cur.fetchall())
                view = (f"{status['wsrep_cluster_status']} of {status['wsrep_cluster_size']}"
                        f"{'' if status['wsrep_ready'] == 'ON' else ', not ready'}")
            except Exception as exc:  # noqa: BLE001 - a node that does not answer is a view too
                view, conn = f"no answer ({type(exc).__name__})", None
            if view != last:
                views.append((time.monotonic(), n, view))
                last = view
            time.sleep(0.1)

    def kill() -> None:
        time.sleep(FAILOVER_KILL_AT - FAILOVER_PROBES_BEFORE)
        prober.start()
        time.sleep(FAILOVER_PROBES_BEFORE)
        killed["at"] = cluster.kill(1)

    prober = threading.Thread(target=probe)
    killer = threading.Thread(target=kill)
    watchers = [threading.Thread(target=watch, args=(n,)) for n in (2, 3)]
    for thread in [killer, *watchers]:
        thread.start()
    try:
        runs = drive(args, front_ends, close, seconds=max(args.seconds, FAILOVER_KILL_AT + FAILOVER_AFTER))
        load_done.set()
        killer.join()
        prober.join()
    finally:
        stop.set()
        for thread in [killer, *watchers] + ([prober] if prober.ident is not None else []):
            thread.join()
    if "at" not in killed:
        raise RuntimeError("node 1 was not killed (see above)")
    rejoin = cluster.restart(1)
    synced_at, after_rejoin = time.monotonic(), None  # when front end 1 answers a completion again
    while time.monotonic() < synced_at + FAILOVER_GIVE_UP:
        if completion_probe(front_ends[0], len(probes))[0]:
            after_rejoin = time.monotonic() - synced_at
            break
        time.sleep(FAILOVER_PROBE_PAUSE)
    kill_at = killed["at"]
    after = [p for p in probes if p[1] > kill_at]
    failed = [p for p in after if not p[2]]
    back = next((p for p in after if p[2] and p[0] >= kill_at), None)
    since = max((p[1] for p in failed), default=kill_at)
    settled = next((p for p in after if p[2] and p[0] >= since), None)
    timeline = []  # runs of probes alike: (first sent, last answered, real answers?, how many)
    for sent, answered, ok, _ in after:
        if timeline and timeline[-1][2] == ok:
            timeline[-1] = (timeline[-1][0], answered, ok, timeline[-1][3] + 1)
        else:
            timeline.append((sent, answered, ok, 1))
    return {
        "failover": back and back[1] - kill_at, "settled": settled and settled[1] - kill_at,
        "probes": len(after), "failed": len(failed),
        "failures": sorted({p[3] for p in failed})[:3], "slowest": max((p[1] - p[0] for p in after), default=0.0),
        "timeline": [(a - kill_at, b - kill_at, ok, n) for a, b, ok, n in timeline],
        "views": [(t - kill_at, n, view) for t, n, view in views],
        "rejoin": rejoin, "after_rejoin": after_rejoin, "synced": cluster.synced_nodes(), "runs": runs,
        "quorum_lost": any(view.startswith("non-Primary") for _, _, view in views),
    }


def run_cluster(args, root: Path, modes: list[str]) -> None:
    """Issue 20: FRONT_ENDS trackers on a 3-node Galera cluster (front end i preferring node
    i) and FRONT_ENDS trackers on one server with a node's settings, driven in turn in every
    round, in an order swapped every round; then the failover run on the cluster."""
    front_ends: list[Apache] = []
    servers: list[DatabaseServers] = []
    try:
        t0 = time.monotonic()
        servers.append(GaleraServers(root / "galera"))
        servers.append(SingleServer(root / "single"))
        print(f"[cluster] a 3-node Galera cluster (ports {', '.join(map(str, servers[0].ports))}) and one server "
              f"(port {servers[1].ports[0]}) started in {time.monotonic() - t0:.1f}s", flush=True)
        setups: list[tuple[DatabaseServers, list[Apache]]] = []
        for label, db_servers in zip(("galera", "single"), servers):
            t0 = time.monotonic()
            store = BenchStore("mysql", root, label, db_servers)
            store.register(args.torrents)
            store.slot_peers(args.torrents, FRONT_ENDS * args.threads, args.pool, args.zipf)
            store.hold_refresh()
            peers = store.peer_count()
            store.hand_over()
            own = [Apache(root / f"{label}-front-end-{i}", APACHE_DIR,
                          tracker_config(root, db_servers.url(store.db, i), f"{label}-{i}"))
                   for i in range(1, FRONT_ENDS + 1)]
            front_ends += own
            for apache in own:
                check_announce(apache, args.torrents, args.zipf)
            drive(args, own, False, seconds=2)  # warm up: every front end holds the popular swarms
            setups.append((db_servers, own))
            print(f"[cluster] {db_servers.name}: {args.torrents} torrents, {peers} peers, {FRONT_ENDS} front ends "
                  f"ready in {time.monotonic() - t0:.1f}s", flush=True)
        runs: dict[tuple[str, str], list[dict]] = {}  # (mode, servers' name) -> each round's run
        for mode in modes:
            for round_ in range(args.rounds):
                for db_servers, own in (setups if round_ % 2 == 0 else setups[::-1]):
                    r = measure_front_ends(args, db_servers, own, mode == "close")
                    runs.setdefault((mode, db_servers.name), []).append(r)
                    print(f"[cluster {mode} {round_ + 1}/{args.rounds}] {db_servers.name}: {r['rps']:.0f} req/s "
                          f"({' + '.join(f'{v:.0f}' for v in r['each'])}), p99 {fmt_ms(r['p99'])}, failure answers "
                          f"{r['errors']}, socket errors {r['socket']}, {r['announces']} announces, conflicts "
                          + ", ".join(f"{k} {v}" for k, v in r["conflicts"].items()), flush=True)
                    for first in r["first_errors"]:
                        print(f"  first error of a wrk thread: {first}", flush=True)
        failovers = []
        for round_ in range(args.rounds):
            f = measure_failover(args, setups[0][0], setups[0][1], modes[0] == "close")  # type: ignore[arg-type]
            failovers.append(f)
            print(f"[cluster failover {round_ + 1}/{args.rounds}] kill -9 of node 1 (front end 1's first) "
                  f"{FAILOVER_KILL_AT} s into the load: front end 1 answered completions again "
                  + ("never" if f["failover"] is None else f"{f['failover']:.2f} s") + " after; node 1 Synced "
                  f"again {f['rejoin']:.1f} s after its restart", flush=True)
        for apache in front_ends:
            problems = [line for line in apache.error_log().splitlines()
                        if "Traceback" in line or (":error]" in line and "tracker_wsgi: ready" not in line)]
            if problems:
                print(f"[cluster] {apache.run_dir.name} error.log: {len(problems)} problem lines, e.g. {problems[:3]}")
        print_cluster(args, modes, [s.name for s, _ in setups], runs, failovers)
    finally:
        for apache in front_ends:
            apache.stop()
        for db_servers in servers:
            db_servers.stop()


def print_cluster(args, modes: list[str], names: list[str], runs: dict[tuple[str, str], list[dict]],
                  failovers: list[dict]) -> None:
    cluster, single = names
    print(f"\nGalera cluster (issue 20): {FRONT_ENDS} tracker front ends (Apache, the shipped daemon snippet, "
          f"each its own port and swarm_dir; front end i lists node i first in `database`) on a 3-node Galera "
          f"cluster vs {FRONT_ENDS} front ends on one MariaDB server with a node's settings and no Galera, driven "
          f"in turn in each of {args.rounds} rounds (order swapped every round); per front end wrk -t{args.threads} "
          f"-c{front_end_connections(args)} -d{args.seconds}s, announce.lua with peers of its own ({args.torrents} "
          f"torrents, {FRONT_ENDS * args.threads * args.pool} peers in all, Zipf s={args.zipf}). "
          f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"All of it -- {FRONT_ENDS} Apaches, 3 + 1 mariadbd, {FRONT_ENDS} wrk -- shares this machine's "
          f"{os.cpu_count()} cores (and other engineers' work): the cluster's three nodes each apply every write, "
          "on the same cores as the front ends, which a real cluster's machines would not share.")
    print("req/s = the sum over the front ends (median round); x one server = the median of each round's ratio; "
          "p50/p99 = the slowest front end's, median round; conflicts = transactions that lost to another's write "
          "of the same row, summed over all rounds and nodes: wsrep_local_cert_failures (failed certification) + "
          "wsrep_local_bf_aborts (aborted by a replicated write) + Innodb_deadlocks, read before and after each run; "
          "per 1,000 announces sent. CPU: cores busy, median round.")
    head = ("mode", "database", "req/s", "x one server", "p50", "p99", "failure answers", "socket errors",
            "cert failures", "BF aborts", "deadlocks", "conflicts / 1,000 announces",
            "CPU wsgi / apache / mariadbd / wrk")
    lines = [head]
    rates = {}
    conflict_rates = {}
    for mode in modes:
        for name in names:
            own = runs[mode, name]
            run = median_run(own)
            total = {c: sum(r["conflicts"][c] for r in own) for c in CONFLICT_COUNTERS}
            announces = sum(r["announces"] for r in own)
            conflict_rates[mode, name] = 1000 * sum(total.values()) / max(1, announces)
            rates[mode, name] = median_ratio(own, runs[mode, single])
            c = run["cpu"]
            lines.append((mode, name, f"{run['rps']:.0f}", f"{rates[mode, name]:.2f}", fmt_ms(run["p50"]),
                          fmt_ms(run["p99"]), str(sum(r["errors"] for r in own)), str(sum(r["socket"] for r in own)),
                          *(str(total[c]) for c in CONFLICT_COUNTERS), f"{conflict_rates[mode, name]:.2f}",
                          f"{c['wsgi']:.2f} / {c['server']:.2f} / {c['mariadb']:.2f} / {c['wrk']:.2f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(v.ljust(w) for v, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(out))
    print(f"\nFailover ({modes[0]}), {len(failovers)} runs: node 1 killed (kill -9) {FAILOVER_KILL_AT} s into the load "
          f"of every front end ({max(args.seconds, FAILOVER_KILL_AT + FAILOVER_AFTER)} s); completions of new peers "
          "(each committed before its answer) probed at front end 1 one after the other; failover = from the kill "
          "to front end 1's first real answer to a probe sent after it; settled = to the first real answer to a "
          "probe sent after the last refused one. Then node 1 restarted.")
    for i, f in enumerate(failovers):
        print(f"  run {i + 1}: "
              + (f"failover {f['failover']:.2f} s, settled {f['settled']:.2f} s" if f["settled"] is not None
                 else f"front end 1 answered no completion in the {FAILOVER_GIVE_UP} s after the kill")
              + f"; {f['failed']} of {f['probes']} probes after the kill refused or unanswered"
              + (f" ({'; '.join(f['failures'])})" if f["failures"] else "")
              + f", the slowest took {f['slowest']:.2f} s; the load meanwhile, per front end: "
              + "; ".join(f"{i + 1}: {r['rps']:.0f} req/s, failure answers {r['errors']}, socket errors "
                          f"{r['socket']}, slowest {fmt_ms(r['max'])}" for i, r in enumerate(f["runs"]))
              + f"; node 1 Synced again {f['rejoin']:.1f} s after its restart (IST), nodes Synced: {f['synced']} of 3"
              + ("; front end 1 answered a completion " + (f"{f['after_rejoin']:.2f} s after that" if
                 f["after_rejoin"] is not None else f"not in the {FAILOVER_GIVE_UP} s after that")))
        if f["quorum_lost"]:
            print("    the surviving nodes left the cluster's primary component (non-Primary: no quorum, every "
                  "transaction refused) for a while: their views below say when, and whether they formed one again "
                  "before node 1 came back")
        for first in sorted({e for r in f["runs"] for e in r["first_errors"]}):
            print(f"    first error of a wrk thread: {first}")
        print("    the probes, from the kill (s): " + "; ".join(
            f"{a:.2f}-{b:.2f} {n} {'answered' if ok else 'refused'}" for a, b, ok, n in f["timeline"]))
        print("    the other nodes' view of the cluster, from the kill (s): " + "; ".join(
            f"{t:.2f} node{n} {view}" for t, n, view in f["views"]))
    print("\nTargets (issue 20):")
    for mode in modes:
        rate, conflicts = rates[mode, cluster], conflict_rates[mode, cluster]
        print(f"  {mode}: cluster / one server {rate:.3f} (>= {CLUSTER_RATE_TARGET}) "
              f"{'PASS' if rate >= CLUSTER_RATE_TARGET else 'FAIL'}; conflicts {conflicts:.2f} per 1,000 announces "
              f"(< {CONFLICTS_TARGET:g}) {'PASS' if conflicts < CONFLICTS_TARGET else 'FAIL'}")
    times = [f["failover"] if f["failover"] is not None else float("inf") for f in failovers]
    print(f"  failover median {sorted(times)[(len(times) - 1) // 2]:.2f} s, each run "
          f"{' '.join(f'{t:.2f}' for t in times)} s (< {FAILOVER_TARGET:g} s): "
          f"{sum(t < FAILOVER_TARGET for t in times)} of {len(times)} runs PASS; settled, each run "
          + " ".join("never" if f["settled"] is None else f"{f['settled']:.2f}" for f in failovers) + " s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--stores", default="sqlite,mysql", help="the tracker on each; the first also "
                        "with Apache on one core (the core-scaling row)")
    parser.add_argument("--modes", default="keepalive,close")
    parser.add_argument("--topologies", default=",".join(devserver.TOPOLOGIES),
                        help="where the tracker's Python runs, each its own rows; the first also gets the "
                        "core-scaling row and --metrics")
    parser.add_argument("--peers", default=",".join(PEERS), help="the other systems measured beside the "
                        f"tracker, of {','.join(PEERS)} ('' for none)")
    parser.add_argument("--npm-cache", type=Path, default=NPM_CACHE, help=f"where {NPM_PACKAGE} is installed")
    parser.add_argument("--floor", action="store_true", help="also measure bench/floor.wsgi, the least a "
                        "Python announce handler does")
    parser.add_argument("--candidates", action="store_true", help="also measure the candidates for the "
                        "swarm state a host's processes share (bench/candidates.wsgi) beside hello, per topology")
    parser.add_argument("--candidates-only", action="store_true", help="measure only the candidates")
    parser.add_argument("--cluster", action="store_true", help=f"measure only {FRONT_ENDS} front ends on a 3-node "
                        f"Galera cluster (scripts/galera-cluster) vs {FRONT_ENDS} on one MariaDB server, and a "
                        "node's failover (issue 20)")
    parser.add_argument("--metrics", action="store_true", help="also measure the tracker with its metrics "
                        "off, beside it in every round, and print the on/off ratio")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every system per mode, one after "
                        "the other; the tables show the median")
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
    if args.cluster and args.threads * FRONT_ENDS > MAX_THREADS:
        sys.exit(f"bench/run.py --cluster: --threads {args.threads}: each of the {FRONT_ENDS} front ends' wrk "
                 f"threads sends peers of its own; use --threads 1..{MAX_THREADS // FRONT_ENDS}")
    peers = [p for p in args.peers.split(",") if p]
    if set(peers) - set(PEERS):
        sys.exit(f"bench/run.py: --peers {args.peers}: choose among {','.join(PEERS)}")
    kinds = args.stores.split(",")
    topologies = args.topologies.split(",")
    if not topologies or set(topologies) - set(devserver.TOPOLOGIES):
        sys.exit(f"bench/run.py: --topologies {args.topologies}: choose among {','.join(devserver.TOPOLOGIES)}")
    if (args.candidates or args.candidates_only) and importlib.util.find_spec("lmdb") is None:
        sys.exit(f"bench/run.py --candidates needs the lmdb package: {sys.executable} -m pip install lmdb")
    cores = os.sched_getaffinity(0)
    # A kill (a timeout's, a session's end) cleans up as Ctrl-C does: every server this run started stops.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    root = Path(tempfile.mkdtemp(prefix="tracker-wsgi-bench-"))
    root.chmod(0o755)
    servers: list = []
    stores: list[BenchStore] = []
    trackers: dict[str, Apache] = {}
    try:
        print(f"load average at the start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
        if args.candidates_only:
            run_candidates(args, root, topologies, args.modes.split(","))
            return
        if args.cluster:
            run_cluster(args, root, args.modes.split(","))
            return
        whitelist = root / "whitelist.txt"
        whitelist.write_text("".join(f"{info_hash(i).hex()}\n" for i in range(args.torrents)))
        whitelist.chmod(0o644)

        def started(server):
            servers.append(server)
            return server

        def apache_with(name: str, wsgi_text: str) -> Path:
            return apache_copy(root, name, wsgi_text)

        def serve(app: str, topology: str = "daemon") -> Apache:
            """bench/<app>.wsgi in place of the tracker."""
            name = app + TOPOLOGY_SUFFIX[topology].replace(" ", "-")
            app_dir = apache_with(name, (BENCH / f"{app}.wsgi").read_text())
            return started(Apache(root / f"{name}-run", app_dir, "", topology))

        def tracker_store(kind: str, label: str) -> BenchStore:
            """A store holding the bench's torrents and the wrk script's starting peers."""
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

        systems: list[System] = []
        if "static" in peers:
            static, static_dir = static_apache(root)
            systems.append(System("static", started(static)))
        for name, make in (("opentracker", lambda: OpenTracker(root, whitelist)),
                           ("npm", lambda: NpmTracker(root, whitelist, args.npm_cache))):
            if name in peers:
                server = started(make())
                t0 = time.monotonic()
                prefill(server.url, args)
                own = forwarded_address_seen(server.url, args)
                print(f"[{name}] {args.threads * args.pool} starting peers announced in {time.monotonic() - t0:.1f}s; "
                      + ("peers listed at their X-Forwarded-For addresses" if own else
                         f"X-Forwarded-For ignored: every peer is 127.0.0.1, told apart by port, so "
                         f"{shared_endpoints(args)} starting peers share (torrent, port) with another"), flush=True)
                systems.append(System(name, server))
        for topology in topologies:
            systems.append(System("hello" + TOPOLOGY_SUFFIX[topology], serve("hello", topology)))
        if args.floor:
            systems.append(System("floor", serve("floor")))

        # --metrics: the name of the tracker's system -> its store kind and the same tracker with metrics off.
        metrics_off: dict[str, tuple[str, System]] = {}
        metrics_off_dir = apache_with("metrics-off", METRICS_OFF_WSGI) if args.metrics else None
        for kind in kinds:
            for topology in topologies:
                name = f"tracker {kind}{TOPOLOGY_SUFFIX[topology]}"
                store = tracker_store(kind, f"small-{topology}")
                tracker = started(Apache(root / name.replace(" ", "-"), APACHE_DIR, tracker_config(root, store.url),
                                         topology))
                trackers[name] = tracker
                check_announce(tracker, args.torrents, args.zipf)
                systems.append(System(name, tracker, profile=args.profile and args.profile.with_name(
                    f"{args.profile.name}-{name.removeprefix('tracker ').replace(' ', '-')}")))
            # The core-scaling row and the metrics pair: the first topology's tracker.
            name = f"tracker {kind}{TOPOLOGY_SUFFIX[topologies[0]]}"
            if kind == kinds[0] and len(cores) > 1:
                systems.append(System(f"{name} 1 core", trackers[name], cpus={min(cores)}))
            if metrics_off_dir:
                off_store = tracker_store(kind, "metrics-off")
                off = started(Apache(root / f"tracker-{kind}-metrics-off", metrics_off_dir,
                                     tracker_config(root, off_store.url), topologies[0]))
                check_announce(off, args.torrents, args.zipf)
                metrics_off[name] = kind, System(f"{name} metrics off", off)
        main_tracker = f"tracker {kinds[0]}{TOPOLOGY_SUFFIX[topologies[0]]}"
        if "static" in peers:
            announce, scrape = tracker_answers(trackers[main_tracker], args)
            (static_dir / "announce").write_bytes(announce)
            (static_dir / "scrape").write_bytes(scrape)
            print(f"[static] the tracker's answers: announce {len(announce)} bytes, scrape {len(scrape)} bytes",
                  flush=True)
        for system in systems + [off for _, off in metrics_off.values()]:
            if not system.cpus:
                run_wrk(args, system.server.url, False, args.torrents, seconds=2)  # warm up

        modes = args.modes.split(",")
        tables: dict[str, dict[str, list[dict]]] = {}
        metrics_rounds: dict[tuple[str, str], list[dict]] = {}  # (store kind, mode) -> measure_metrics' rounds
        for mode in modes:
            close = mode == "close"
            runs: dict[str, list[dict]] = {system.name: [] for system in systems}
            for round_ in range(args.rounds):
                for system in systems:
                    profile = system.profile and round_ == 0 and system.profile.with_name(
                        f"{system.profile.name}-{mode}.txt")
                    r = measure(args, system, close, profile or None)
                    runs[system.name].append(r)
                    print(f"[{mode} {round_ + 1}/{args.rounds}] {system.name}: {r['rps']:.0f} req/s, p99 "
                          f"{fmt_ms(r['p99'])}, failure answers {r['errors']}, {r['socket_detail'] or 'no socket errors'}; "
                          f"started {r['started']} stopped {r['stopped']} scrapes {r['scrapes']} of "
                          f"{r['announces'] + r['scrapes']}", flush=True)
                    print_first_errors(r)
                    if system.name in metrics_off:
                        kind, off = metrics_off[system.name]
                        m = measure_metrics(args, system, off, close, round_)
                        metrics_rounds.setdefault((kind, mode), []).append(m)
                        on_run, off_run = m["on"], m["off"]
                        print(f"[{kind} {mode} {round_ + 1}/{args.rounds}] pair: metrics on {on_run['rps']:.0f} "
                              f"req/s {cpu_per_request(on_run):.1f} us CPU/req, off {off_run['rps']:.0f} req/s "
                              f"{cpu_per_request(off_run):.1f} us CPU/req: on/off rate {m['rate']:.3f}, "
                              f"CPU off/on {m['cpu']:.3f}; errors on {on_run['errors']} off "
                              f"{off_run['errors']}", flush=True)
            tables[mode] = runs
        for kind, tracker in trackers.items():
            problems = [line for line in tracker.error_log().splitlines()
                        if "Traceback" in line or (":error]" in line and "tracker_wsgi: ready" not in line)]
            if problems:
                print(f"[{kind}] error.log: {len(problems)} problem lines, e.g. {problems[:3]}")
            tracker.stop()
        for _, off in metrics_off.values():
            off.server.stop()

        scale_rows = []
        for kind in kinds:
            if args.scale and kind in args.scale_stores.split(",") and "keepalive" in tables:
                t0 = time.monotonic()
                big = BenchStore(kind, root, "scale")
                stores.append(big)
                big.bulk_register(args.scale_torrents)
                big.slot_peers(args.scale_torrents, args.threads, args.pool, args.zipf)
                big.random_peers(args.scale_peers - args.threads * args.pool, args.scale_torrents, args.zipf)
                big.hold_refresh()
                peers_stored = big.peer_count()
                size = big.size_bytes()
                print(f"[{kind} scale] {args.scale_torrents} torrents, {peers_stored} peers, peers table/file "
                      f"{size / 2**20:.0f} MiB ({size / peers_stored:.0f} B/peer), filled in "
                      f"{time.monotonic() - t0:.1f}s", flush=True)
                big.hand_over()
                tracker = started(Apache(root / f"tracker-{kind}-scale", APACHE_DIR, tracker_config(root, big.url)))
                check_announce(tracker, args.scale_torrents, args.zipf)
                scale_args = argparse.Namespace(**{**vars(args), "torrents": args.scale_torrents})
                run_wrk(scale_args, tracker.url, False, args.scale_torrents, seconds=2)
                profile = args.profile and args.profile.with_name(f"{args.profile.name}-{kind}-scale.txt")
                t = measure(scale_args, System(f"tracker {kind} scale", tracker), False, profile or None)
                small = median_run(tables["keepalive"][f"tracker {kind}"])
                scale_rows.append({"store": kind, "peers": peers_stored, "bytes": size, "t": t, "small": small})
                print(f"[{kind} scale keepalive] {t['rps']:.0f} req/s (small: {small['rps']:.0f}), "
                      f"errors {t['errors']}", flush=True)
                print_first_errors(t)
                tracker.stop()

        print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.seconds}s --latency, {args.torrents} torrents, "
              f"{args.threads * args.pool} peers, Zipf s={args.zipf}, {args.rounds} rounds of every system in turn; "
              f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        print("static = Apache answering with files of the tracker's own answers (a 50-peer announce, a scrape); "
              "opentracker = Debian's; npm = bittorrent-tracker "
              f"{next((s.server.version for s in systems if s.name == 'npm'), '(not run)')}; hello = bench/hello.wsgi "
              "in the shipped daemon snippet; tracker <store> = the shipped daemon snippet (tracker.conf); "
              "embedded = the shipped embedded snippet and pool (tracker-embedded.conf, embedded-server.conf); "
              "1 core = Apache pinned to one core. x <system> = the median of each round's ratio to it. failure answers = non-200 or "
              "`failure reason`. opentracker closes every connection itself, without `Connection: close`: wrk "
              "counts each close as a read socket error.")
        references = [s.name for s in systems if s.name in PEERS or s.name.startswith("hello")]
        for mode, runs in tables.items():
            print_table(mode, runs, references)
            one_core = next((s for s in systems if s.cpus), None)
            if one_core:
                full = main_tracker
                ratios = [a["rps"] / b["rps"] for a, b in zip(runs[full], runs[one_core.name])]
                print(f"core scaling ({mode}): {full} with Apache on {len(cores)} cores / on 1 core = "
                      f"{statistics.median(ratios):.2f} (each round: {' '.join(f'{r:.2f}' for r in ratios)})")
        if args.metrics:
            print_metrics(kinds, modes, metrics_rounds)
        print()
        for mode, runs in tables.items():
            print_cpu(mode, runs)
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
        if args.candidates:
            run_candidates(args, root, topologies, modes)
    finally:
        for server in servers:
            server.stop()
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
