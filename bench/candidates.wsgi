# The candidates for the swarm state one Apache host's processes share (issue 18), each
# the least an announce needs: parse the query (the tracker's own parse_query, so its cost
# is real), upsert or remove the peer, sample up to 50 compact peers of the swarm, bencode.
# `bench/run.py --candidates` serves this file in place of tracker.wsgi (every Apache and
# mod_wsgi setting as shipped) once per candidate; the config file the snippet's SetEnv
# names (tracker_wsgi.config) says which candidate and where its state lives:
#   candidate = "dict" | "lmdb" | "sqlite"
#   state_dir = "/path"   (lmdb and sqlite)
# Every answer names the process that made it (X-Bench-Pid), so the bench can ask a
# process other than the one a peer announced to. No expiry: a run is minutes long.
import os
import random
import socket
import sqlite3
import struct
import threading
import time
import tomllib

from tracker_wsgi.protocol import parse_query

NUMWANT = 50
# More read transactions than this at once raise ReadersFullError (LMDB's default is 126):
# embedded mode's pool is 2 children x 1024 threads, each may hold one.
LMDB_MAX_READERS = 4096
# Fixed per open; sparse, so only what is written takes room. 1 GiB holds millions of peers.
LMDB_MAP_SIZE = 1 << 30
SQLITE_FILE = "swarms.sqlite"
SQLITE_SCHEMA = (
    "CREATE TABLE peers (info_hash BLOB, peer_id BLOB, compact BLOB, seed INTEGER, last_seen INTEGER, "
    "PRIMARY KEY (info_hash, peer_id)) WITHOUT ROWID",
    "CREATE TABLE swarms (info_hash BLOB PRIMARY KEY, seeders INTEGER, leechers INTEGER) WITHOUT ROWID",
)


def create_sqlite(state_dir):
    """(c)'s file, made by bench/run.py before Apache starts: WAL mode is kept by the file."""
    db = sqlite3.connect(os.path.join(state_dir, SQLITE_FILE))
    db.execute("PRAGMA journal_mode=WAL")
    for statement in SQLITE_SCHEMA:
        db.execute(statement)
    db.commit()
    db.close()


class Swarm:
    """One swarm in one process: peers in lists (swap-removal), their positions by peer_id."""

    __slots__ = ("position", "peer_ids", "compacts", "seeds", "last_seen", "seeders")

    def __init__(self):
        self.position, self.peer_ids, self.compacts, self.seeds, self.last_seen = {}, [], [], [], []
        self.seeders = 0


class ProcessDict:
    """(a) Today's per-process views, no sharing: each process knows the peers it was told of."""

    def __init__(self, config):
        self.swarms = {}
        self.lock = threading.Lock()

    def announce(self, info_hash, peer_id, compact, seed, now, numwant):
        with self.lock:
            swarm = self.swarms.get(info_hash) or self.swarms.setdefault(info_hash, Swarm())
            at = swarm.position.get(peer_id)
            if at is None:
                at = swarm.position[peer_id] = len(swarm.peer_ids)
                swarm.peer_ids.append(peer_id)
                swarm.compacts.append(compact)
                swarm.seeds.append(seed)
                swarm.last_seen.append(now)
                swarm.seeders += seed
            else:
                swarm.compacts[at], swarm.last_seen[at] = compact, now
                swarm.seeders += seed - swarm.seeds[at]
                swarm.seeds[at] = seed
            # A random point of the swarm, and on from there (wrapping), leaving out the asker.
            n = len(swarm.compacts)
            start = int(random.random() * n)
            window = swarm.compacts[start:start + numwant + 1]
            if len(window) <= numwant:
                window += swarm.compacts[:min(start, numwant + 1 - len(window))]
            peers = [c for i, c in enumerate(window) if (start + i) % n != at][:numwant]
            return swarm.seeders, n - swarm.seeders, peers

    def stop(self, info_hash, peer_id):
        with self.lock:
            swarm = self.swarms.get(info_hash)
            if swarm is None:
                return 0, 0
            at = swarm.position.pop(peer_id, None)
            if at is not None:
                swarm.seeders -= swarm.seeds[at]
                last = len(swarm.peer_ids) - 1
                if at != last:
                    for column in (swarm.peer_ids, swarm.compacts, swarm.seeds, swarm.last_seen):
                        column[at] = column[last]
                    swarm.position[swarm.peer_ids[at]] = at
                for column in (swarm.peer_ids, swarm.compacts, swarm.seeds, swarm.last_seen):
                    column.pop()
            return swarm.seeders, len(swarm.peer_ids) - swarm.seeders

    def counts(self, info_hash):
        swarm = self.swarms.get(info_hash)
        return (swarm.seeders, len(swarm.peer_ids) - swarm.seeders) if swarm else (0, 0)


# LMDB: a key per peer, info_hash + peer_id -> compact address, seed flag, last seen; and a
# counter key per swarm, the info_hash alone, which sorts before the swarm's peers.
LMDB_PEER = struct.Struct("=6s?I")
LMDB_COUNTS = struct.Struct("=II")
ZERO_COUNTS = LMDB_COUNTS.pack(0, 0)


class SharedLmdb:
    """(b) One LMDB environment shared by every process of the host."""

    def __init__(self, config):
        import lmdb

        # Opened here, in the process that serves (never in Apache's parent before the fork:
        # a second open in the child then fails "already open in this process"). Soft state:
        # no fsync, and writes through the memory map.
        self.env = lmdb.open(config["state_dir"], map_size=LMDB_MAP_SIZE, max_readers=LMDB_MAX_READERS,
                             writemap=True, sync=False, metasync=False, readahead=False)
        # LMDB has one writer at a time per environment (a mutex shared by the processes):
        # this process's threads queue here first, so at most one of them waits on it.
        self.write_lock = threading.Lock()

    def announce(self, info_hash, peer_id, compact, seed, now, numwant):
        key = info_hash + peer_id
        with self.write_lock, self.env.begin(write=True) as txn:
            old = txn.get(key)
            seeders, leechers = LMDB_COUNTS.unpack(txn.get(info_hash, ZERO_COUNTS))
            txn.put(key, LMDB_PEER.pack(compact, seed, now))
            if old is None or old[6] != seed:
                if old is not None:
                    seeders, leechers = (seeders - 1, leechers + 1) if old[6] else (seeders + 1, leechers - 1)
                elif seed:
                    seeders += 1
                else:
                    leechers += 1
                txn.put(info_hash, LMDB_COUNTS.pack(seeders, leechers))
        return seeders, leechers, self.sample(info_hash, key, numwant) if seeders + leechers > 1 else []

    def sample(self, info_hash, own_key, numwant):
        """From a random point of the swarm's key range on, then from its start up to that point."""
        peers = []
        start = info_hash + random.randbytes(20)
        with self.env.begin(buffers=False) as txn:
            cursor = txn.cursor()
            if cursor.set_range(start):
                for key, value in cursor:
                    if key[:20] != info_hash:
                        break
                    if key != own_key:
                        peers.append(value[:6])
                        if len(peers) == numwant:
                            return peers
            if cursor.set_range(info_hash):
                for key, value in cursor:
                    if key >= start or key[:20] != info_hash:
                        break
                    if len(key) == 40 and key != own_key:
                        peers.append(value[:6])
                        if len(peers) == numwant:
                            break
        return peers

    def stop(self, info_hash, peer_id):
        with self.write_lock, self.env.begin(write=True) as txn:
            old = txn.pop(info_hash + peer_id)
            seeders, leechers = LMDB_COUNTS.unpack(txn.get(info_hash, ZERO_COUNTS))
            if old is not None:
                seeders, leechers = (seeders - 1, leechers) if old[6] else (seeders, leechers - 1)
                txn.put(info_hash, LMDB_COUNTS.pack(seeders, leechers))
        return seeders, leechers

    def counts(self, info_hash):
        with self.env.begin() as txn:
            return LMDB_COUNTS.unpack(txn.get(info_hash, ZERO_COUNTS))


class SharedSqlite:
    """(c) One SQLite file in WAL mode on /dev/shm shared by every process, a connection per thread."""

    def __init__(self, config):
        self.path = os.path.join(config["state_dir"], SQLITE_FILE)
        self.local = threading.local()

    def connection(self):
        db = getattr(self.local, "db", None)
        if db is None:
            db = self.local.db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                                 check_same_thread=False)
            db.execute("PRAGMA synchronous=OFF")
        return db

    def announce(self, info_hash, peer_id, compact, seed, now, numwant):
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            old = db.execute("SELECT seed FROM peers WHERE info_hash = ? AND peer_id = ?",
                             (info_hash, peer_id)).fetchone()
            db.execute("INSERT INTO peers VALUES (?, ?, ?, ?, ?) ON CONFLICT (info_hash, peer_id) DO UPDATE "
                       "SET compact = excluded.compact, seed = excluded.seed, last_seen = excluded.last_seen",
                       (info_hash, peer_id, compact, seed, now))
            if old is None or old[0] != seed:
                add_seeders = seed - (old[0] if old else 0)
                add_leechers = (not seed) - ((not old[0]) if old else 0)
                db.execute("INSERT INTO swarms VALUES (?, ?, ?) ON CONFLICT (info_hash) DO UPDATE SET "
                           "seeders = seeders + excluded.seeders, leechers = leechers + excluded.leechers",
                           (info_hash, add_seeders, add_leechers))
            seeders, leechers = db.execute("SELECT seeders, leechers FROM swarms WHERE info_hash = ?",
                                           (info_hash,)).fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if seeders + leechers <= 1:
            return seeders, leechers, []
        start = random.randbytes(20)
        peers = [row[0] for row in db.execute(
            "SELECT compact FROM peers WHERE info_hash = ? AND peer_id >= ? AND peer_id != ? ORDER BY peer_id "
            "LIMIT ?", (info_hash, start, peer_id, numwant))]
        if len(peers) < numwant:
            peers += [row[0] for row in db.execute(
                "SELECT compact FROM peers WHERE info_hash = ? AND peer_id < ? AND peer_id != ? ORDER BY peer_id "
                "LIMIT ?", (info_hash, start, peer_id, numwant - len(peers)))]
        return seeders, leechers, peers

    def stop(self, info_hash, peer_id):
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            old = db.execute("DELETE FROM peers WHERE info_hash = ? AND peer_id = ? RETURNING seed",
                             (info_hash, peer_id)).fetchone()
            if old is not None:
                db.execute("UPDATE swarms SET seeders = seeders - ?, leechers = leechers - ? WHERE info_hash = ?",
                           (old[0], 1 - old[0], info_hash))
            row = db.execute("SELECT seeders, leechers FROM swarms WHERE info_hash = ?", (info_hash,)).fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return row or (0, 0)

    def counts(self, info_hash):
        row = self.connection().execute("SELECT seeders, leechers FROM swarms WHERE info_hash = ?",
                                        (info_hash,)).fetchone()
        return row or (0, 0)


CANDIDATES = {"dict": ProcessDict, "lmdb": SharedLmdb, "sqlite": SharedSqlite}
_store = None
_headers = None
_build_lock = threading.Lock()


def _build(environ):
    """The store of this process, on its first request: after the fork, from the config SetEnv names."""
    global _store, _headers
    with _build_lock:
        if _store is None:
            with open(environ["tracker_wsgi.config"], "rb") as file:
                config = tomllib.load(file)
            _headers = [("Content-Type", "application/octet-stream"), ("X-Bench-Pid", str(os.getpid()))]
            _store = CANDIDATES[config["candidate"]](config)
    return _store


def application(environ, start_response):
    store = _store or _build(environ)
    fields = parse_query(environ["QUERY_STRING"].encode("latin-1"))
    info_hash = fields[b"info_hash"]
    if environ.get("PATH_INFO") == "/scrape":
        seeders, leechers = store.counts(info_hash)
        body = b"d5:filesd20:%bd8:completei%de10:downloadedi0e10:incompletei%deeee" % (info_hash, seeders, leechers)
    else:
        peer_id = fields[b"peer_id"]
        if fields.get(b"event") == b"stopped":
            seeders, leechers = store.stop(info_hash, peer_id)
            peers = b""
        else:
            address = environ.get("HTTP_X_FORWARDED_FOR") or environ["REMOTE_ADDR"]
            compact = socket.inet_aton(address) + int(fields[b"port"]).to_bytes(2, "big")
            seeders, leechers, sample = store.announce(info_hash, peer_id, compact, fields[b"left"] == b"0",
                                                       int(time.time()), NUMWANT)
            peers = b"".join(sample)
        body = b"d8:completei%de10:incompletei%de8:intervali1800e12:min intervali300e5:peers%d:%be" % (
            seeders, leechers, len(peers), peers)
    start_response("200 OK", _headers + [("Content-Length", str(len(body)))])
    return [body]
