"""A 3-node MariaDB Galera cluster for tests (scripts/galera-cluster), one per test session:
it takes ~11 s to start and ~1.5 s to stop. Import the fixture `galera` into a test file.

A test that kills a node restarts it before it ends (GaleraCluster.killed), so the next test
finds three Synced nodes; each test uses databases of its own (GaleraCluster.database).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mysql.connector
import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "galera-cluster"


class GaleraCluster:
    def __init__(self, base: Path):
        self.base = base
        cluster = json.loads((base / "cluster.json").read_text())
        self.user, self.password = cluster["user"], cluster["password"]
        self.nodes: list[dict] = cluster["nodes"]

    def port(self, n: int) -> int:
        return self.nodes[n - 1]["port"]

    def url(self, database: str, *nodes: int) -> str:
        """The tracker's `database` setting for these nodes, in this order (all three by default)."""
        hosts = ",".join(f"127.0.0.1:{self.port(n)}" for n in nodes or (1, 2, 3))
        return f"mysql://{self.user}:{self.password}@{hosts}/{database}"

    def front_end_urls(self, database: str) -> list[str]:
        """The `database` setting of front ends 1 to 3: front end i prefers node i, then the
        others in turn (the README's advice: hosts spread over the nodes)."""
        return [self.url(database, *(1 + (i + k) % 3 for k in range(3))) for i in range(3)]

    def connect(self, n: int, database: str | None = None, **options):
        """A client connection of the test's own to node n, over TCP, autocommit."""
        conn = mysql.connector.connect(user=self.user, password=self.password, host="127.0.0.1",
                                       port=self.port(n), database=database, autocommit=True,
                                       connection_timeout=5, **options)
        return conn

    def status(self, n: int, name: str) -> str:
        conn = self.connect(n)
        try:
            cur = conn.cursor()
            cur.execute("SHOW STATUS LIKE %s", (name,))
            row = cur.fetchone()
            return row[1] if row else ""
        finally:
            conn.close()

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A new database on the cluster (replicated to every node), dropped afterwards."""
        name = f"tracker_galera_{secrets.token_hex(4)}"
        conn = self.connect(1)
        conn.cursor().execute(f"CREATE DATABASE {name}")
        conn.close()
        try:
            yield name
        finally:
            for n in (1, 2, 3):  # any node that is up
                try:
                    conn = self.connect(n)
                except mysql.connector.Error:
                    continue
                conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
                conn.close()
                break

    def kill(self, n: int) -> None:
        """kill -9 node n, as a crash would."""
        self._script("kill", str(n))

    def restart(self, n: int) -> float:
        """Start node n again and wait until it is Synced (IST from the others' gcache, or SST);
        returns the seconds it took."""
        started = time.monotonic()
        self._script("restart", str(n))
        return time.monotonic() - started

    @contextlib.contextmanager
    def killed(self, n: int) -> Iterator[None]:
        """Node n killed for the block, restarted (and Synced) after it, whatever happened."""
        self.kill(n)
        try:
            yield
        finally:
            self.restart(n)

    def synced(self) -> bool:
        try:
            return all(self.status(n, "wsrep_local_state_comment") == "Synced" for n in (1, 2, 3))
        except mysql.connector.Error:
            return False

    def _script(self, *args: str) -> None:
        result = subprocess.run([str(SCRIPT), args[0], str(self.base), *args[1:]], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"scripts/galera-cluster {' '.join(args)}: {result.stderr.strip()}")


@pytest.fixture(scope="session")
def galera() -> Iterator[GaleraCluster]:
    parent = Path(tempfile.mkdtemp(prefix="tracker-galera-"))
    parent.chmod(0o755)  # the nodes run as mysql
    base = parent / "cluster"
    started = subprocess.run([str(SCRIPT), "start", str(base)], capture_output=True, text=True)
    if started.returncode != 0:  # the nodes' logs stay, for the message's reader
        subprocess.run([str(SCRIPT), "stop", str(base)], capture_output=True)
        raise RuntimeError(f"scripts/galera-cluster start: {started.stderr.strip()}")
    try:
        yield GaleraCluster(base)
    finally:
        subprocess.run([str(SCRIPT), "stop", str(base)], capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def galera_front_ends(galera) -> Iterator[list[str]]:  # noqa: F811
    """A new database on the cluster, as the `database` setting of front ends 1 to 3 (each
    on its own node first: GaleraCluster.front_end_urls)."""
    with galera.database() as db:
        yield galera.front_end_urls(db)
