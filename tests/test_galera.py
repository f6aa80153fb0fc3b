"""The tracker as a client of a 3-node MariaDB Galera cluster (scripts/galera-cluster, one
per session: tests/galera.py): the schema Galera needs, writes that lose certification,
failover between nodes, the refresh lease, and reads of another node's writes."""

from __future__ import annotations

import pytest

from galera import galera  # noqa: F401 (a fixture)
from tracker_wsgi.store import open_store

TIMEOUT = 2700


def test_the_three_nodes_form_one_cluster_and_replicate(galera):  # noqa: F811
    assert [galera.status(n, "wsrep_cluster_size") for n in (1, 2, 3)] == ["3", "3", "3"]
    with galera.database() as db:
        one = galera.connect(1, db)
        one.cursor().execute("CREATE TABLE t (id INT PRIMARY KEY, n INT)")
        one.cursor().execute("INSERT INTO t VALUES (1, 7)")
        three = galera.connect(3, db, )
        cur = three.cursor()
        cur.execute("SET SESSION wsrep_sync_wait = 1")
        cur.execute("SELECT n FROM t WHERE id = 1")
        assert cur.fetchall() == [(7,)]
        one.close()
        three.close()


def test_every_table_the_tracker_creates_has_a_primary_key(galera):  # noqa: F811
    """Galera replicates a row by its primary key: DELETE on a table without one is not
    supported, and certification compares keys."""
    with galera.database() as db:
        store = open_store(galera.url(db, 1), TIMEOUT)
        store.create_tables()
        store.close()
        conn = galera.connect(2, db)
        cur = conn.cursor()
        cur.execute(
            "SELECT t.table_name FROM information_schema.tables t WHERE t.table_schema = %s AND NOT EXISTS "
            "(SELECT 1 FROM information_schema.table_constraints c WHERE c.table_schema = t.table_schema "
            "AND c.table_name = t.table_name AND c.constraint_type = 'PRIMARY KEY')", (db,))
        without = [row[0] for row in cur.fetchall()]
        cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s", (db,))
        tables = cur.fetchone()[0]
        cur.execute("SELECT DISTINCT engine FROM information_schema.tables WHERE table_schema = %s", (db,))
        engines = {row[0] for row in cur.fetchall()}
        conn.close()
    assert tables >= 5  # the schema reached node 2 (DDL replicates)
    assert without == []
    assert engines == {"InnoDB"}  # Galera replicates InnoDB only


@pytest.fixture
def galera_db(galera):  # noqa: F811
    with galera.database() as db:
        yield db
