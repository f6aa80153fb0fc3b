"""The production store: MySQL or MariaDB through mysql-connector-python's C extension.

Several Apache hosts may share one database; every front end is stateless, so a peer
announced to one host is handed out by another. A few connections per store and process
(pool.py), persistent (the Apache::DBI equivalent), replaced when the server has dropped one.

The database may be several servers, the nodes of a Galera cluster, listed in the URL in the
order the store prefers them (mysql_settings.py). A connection is made to the first that
answers and is ready; one that did not is passed over for FAILED_HOST_SECONDS, then tried
first again, and connections on a later server are closed as their transactions end, so the
store comes back to the server it prefers by itself. Writes that lose Galera's certification
come back as deadlocks (1213) and are run again whole (sqlbase.CONFLICT_RETRIES).
"""

from __future__ import annotations

import time
from typing import Any

import mysql.connector
from mysql.connector import errorcode, errors

from ..model import (
    ACCESS_DENIED,
    FAILED,
    LOST,
    TIMEOUT,
    TLS,
    TOO_MANY_CONNECTIONS,
    UNKNOWN_DATABASE,
    UNREACHABLE,
    StoreUnavailable,
)
from .mysql_settings import connect_targets
from .sql import SqlStore
from .sqlbase import OPEN_MAX_TORRENTS, POOL_SIZE
from .statements import MAX_TOTAL_BYTES, Dialect

CONNECT_TIMEOUT_SECONDS = 5  # a dead server costs a client a quick `retry in`, not a hung thread
# A server of several that could not be used is tried again after this long: a down one then
# costs one refused connect (or one connect timeout, if it hangs) per process this often.
FAILED_HOST_SECONDS = 10
# Galera's answer from a node that is not in the cluster's primary component or not synced:
# "WSREP has not yet prepared node for application use". Another node may serve.
ER_WSREP_NOT_PREPARED = errorcode.ER_UNKNOWN_COM_ERROR  # 1047

# The server is gone or cannot be reached: a fresh connection and one more try may succeed.
_CONNECTION_ERRNOS = {
    errorcode.CR_SERVER_GONE_ERROR,  # 2006: the server closed the connection (restart, wait_timeout)
    errorcode.CR_SERVER_LOST,  # 2013: lost during a query, or its read timed out
    errorcode.CR_SERVER_LOST_EXTENDED,  # 2055
    errorcode.CR_CONN_HOST_ERROR,  # 2003: cannot connect (yet)
    errorcode.ER_CON_COUNT_ERROR,  # 1040: too many connections
    ER_WSREP_NOT_PREPARED,  # 1047: a Galera node out of the cluster (another node may serve)
}
# Errors after which a fresh connection and one more try may succeed.
_TRANSIENT_ERRNOS = _CONNECTION_ERRNOS | {
    errorcode.ER_DUP_ENTRY,  # 1062: two first announces of one swarm raced (whitelist `open`)
}
# The transaction lost to another writer and was rolled back: run it again, after a wait.
_CONFLICT_ERRNOS = {
    errorcode.ER_LOCK_DEADLOCK,  # 1213: InnoDB chose it as a deadlock's victim, or Galera's certification
                                 # failed it (another node committed a write to one of its rows first)
}
# Errors that say the database cannot be used now (StoreUnavailable), after the retry if any.
_UNAVAILABLE_ERRNOS = _CONNECTION_ERRNOS | {
    errorcode.ER_LOCK_DEADLOCK,  # CONFLICT_RETRIES times in a row
    errorcode.ER_LOCK_WAIT_TIMEOUT,  # 1205: not retried, it has waited wait_seconds already
}


# What each server or client error number says of why the database cannot be used: the
# cause the admin's log line names (model.OUTAGE_CAUSES). Numbers from MariaDB's errmsg.h
# and mysqld_error.h, as mysql.connector.errorcode names them.
_OUTAGE_CAUSES = {
    errorcode.ER_ACCESS_DENIED_ERROR: ACCESS_DENIED,  # 1045: wrong user or password
    errorcode.ER_ACCESS_DENIED_NO_PASSWORD_ERROR: ACCESS_DENIED,  # 1698: unix_socket login refused
    errorcode.ER_DBACCESS_DENIED_ERROR: ACCESS_DENIED,  # 1044: no privileges on the database
    errorcode.ER_HOST_NOT_PRIVILEGED: ACCESS_DENIED,  # 1130: the user may not connect from this host
    errorcode.ER_TABLEACCESS_DENIED_ERROR: ACCESS_DENIED,  # 1142: a GRANT missing
    errorcode.ER_BAD_DB_ERROR: UNKNOWN_DATABASE,  # 1049
    errorcode.CR_CONNECTION_ERROR: UNREACHABLE,  # 2002: no server at the unix socket
    errorcode.CR_CONN_HOST_ERROR: UNREACHABLE,  # 2003: connection refused, or no route
    errorcode.CR_UNKNOWN_HOST: UNREACHABLE,  # 2005: the host name does not resolve
    errorcode.CR_SERVER_LOST: TIMEOUT,  # 2013: no answer within read_timeout (a hung server), or lost mid-read
    errorcode.ER_LOCK_WAIT_TIMEOUT: TIMEOUT,  # 1205: another client holds the rows
    errorcode.ER_LOCK_DEADLOCK: TIMEOUT,  # 1213, again and again: contention
    ER_WSREP_NOT_PREPARED: UNREACHABLE,  # 1047: no Galera node listed is in the cluster
    errorcode.CR_SERVER_GONE_ERROR: LOST,  # 2006
    errorcode.CR_SERVER_LOST_EXTENDED: LOST,  # 2055
    errorcode.ER_CON_COUNT_ERROR: TOO_MANY_CONNECTIONS,  # 1040
    errorcode.CR_SSL_CONNECTION_ERROR: TLS,  # 2026
}


def outage_cause(exc: BaseException | None) -> str:
    """The cause (model.OUTAGE_CAUSES) a driver error gives the database's outage."""
    return _OUTAGE_CAUSES.get(getattr(exc, "errno", None), FAILED)


def _connection_failed(exc: BaseException) -> bool:
    """The connection, not the statement, failed. The connector raises OperationalError /
    InterfaceError for a connection that is gone, sometimes with no errno at all ("MySQL
    Connection not available."); and any client-library error (2000-2999: lost, timed out,
    out of sync), of whatever type (the C extension lets its own MySQLInterfaceError through
    on a few paths), is the connection's. Never to be taken for a bad row and set aside."""
    errno = getattr(exc, "errno", None)
    return isinstance(exc, (errors.OperationalError, errors.InterfaceError)) or (
        isinstance(errno, int) and 2000 <= errno < 3000
    )


def timeouts(wait_seconds: float) -> dict[str, int]:
    """Connector timeouts (whole seconds, at least 1) so that a call on a hung server gives up
    in about wait_seconds: a read that times out (2013) is retried once on a new connection,
    whose connect then times out too, so read + connect = wait_seconds (2 s at the least).
    libmysqlclient 9 retries a read only when a signal interrupts it (net_should_retry), not
    after a timeout, whatever its manual says of three tries: read_timeout=1 gives up after
    1.00 s (measured on a SIGSTOPped mariadbd), connection_timeout=1 likewise."""
    connect = max(1, min(CONNECT_TIMEOUT_SECONDS, int(wait_seconds / 2)))
    read = max(1, round(wait_seconds - connect))
    return {"connection_timeout": connect, "read_timeout": read, "write_timeout": read}


_PEER_COLUMNS = (
    "torrent_id, peer_id, ip, port, peer_key, state, bytes_left, uploaded, downloaded, last_seen, peer_rank, stamp, "
    "changed"
)
_PEER_ROW = "(" + ", ".join(["%s"] * 13) + ")"
# An older announce never overwrites a newer one (hosts' batches may cross): by the stamp.
# MySQL assigns left to right, so the stamp goes last and the guard reads its old value.
_NEWER = "VALUES(stamp) >= stamp"
_UPDATE_PEER = ", ".join(
    [f"{column} = IF({_NEWER}, VALUES({column}), {column})"
     for column in ("ip", "port", "state", "bytes_left", "uploaded", "downloaded", "last_seen", "changed")]
    + [f"peer_key = IF({_NEWER}, COALESCE(VALUES(peer_key), peer_key), peer_key)",
       "stamp = GREATEST(stamp, VALUES(stamp))"]
)


class MysqlDialect(Dialect):
    placeholder = "%s"  # mysql-connector's paramstyle
    lock_rows = " FOR UPDATE"
    by_primary_key = " FORCE INDEX (PRIMARY)"
    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
    # A named lock (server-wide, so named after the database too; at most 64 characters),
    # held by the connection: one that dies gives it back. It holds on one node of a Galera
    # cluster only: there, run `tracker-wsgi migrate` once before restarting the daemons.
    _SCHEMA_LOCK = "LEFT(CONCAT('tracker_wsgi schema ', DATABASE()), 64)"

    @staticmethod
    def lock_schema(cur: Any, wait_seconds: float) -> None:
        # A second less than a read may take, so the server answers before the read times out.
        wait = max(1, timeouts(wait_seconds)["read_timeout"] - 1)
        cur.execute(f"SELECT GET_LOCK({MysqlDialect._SCHEMA_LOCK}, %s)", (wait,))
        if cur.fetchone()[0] != 1:
            raise StoreUnavailable(
                f"another process has been changing the database's schema for {wait} s (a tracker starting, or "
                "tracker-wsgi migrate); try again when it has finished"
            )

    @staticmethod
    def unlock_schema(cur: Any) -> None:
        cur.execute(f"SELECT RELEASE_LOCK({MysqlDialect._SCHEMA_LOCK})")
        cur.fetchall()

    @staticmethod
    def pairs(n: int) -> str:
        return ", ".join(["(%s, %s)"] * n)

    @staticmethod
    def upsert_peers(n: int) -> str:
        return (
            f"INSERT INTO peers ({_PEER_COLUMNS}) VALUES {', '.join([_PEER_ROW] * n)} "
            f"ON DUPLICATE KEY UPDATE {_UPDATE_PEER}"
        )

    add_counts = (
        "INSERT INTO swarm_counts (torrent_id, host, downloaded, transferred) VALUES (%s, %s, %s, %s) "
        "ON DUPLICATE KEY UPDATE downloaded = downloaded + VALUES(downloaded), "
        f"transferred = LEAST(transferred + VALUES(transferred), {MAX_TOTAL_BYTES})"
    )


class MysqlStore(SqlStore):
    dialect = MysqlDialect

    def __init__(self, url: str, peer_timeout: int, register_unknown: bool = False, wait_seconds: float = 30.0,
                 open_max_torrents: int = OPEN_MAX_TORRENTS, pool_size: int = POOL_SIZE):
        super().__init__(peer_timeout, register_unknown, wait_seconds, open_max_torrents, pool_size)
        self.targets = connect_targets(url)  # the servers, in the order the store prefers them
        self.servers = len(self.targets)
        self.timeouts = timeouts(wait_seconds)
        # When each server last could not be used (time.monotonic()); read and written by
        # every thread of the process without a lock: a lost update only costs a connect.
        self._failed_at = [float("-inf")] * len(self.targets)

    def _connect(self) -> Any:
        """A connection to the first server that is not passed over (FAILED_HOST_SECONDS)
        and answers ready; when all are passed over, to the first of them that does."""
        if len(self.targets) == 1:
            return self._connect_to(self.targets[0])
        now = time.monotonic()
        order = sorted(range(len(self.targets)), key=lambda i: (now - self._failed_at[i] < FAILED_HOST_SECONDS, i))
        first_error: Exception | None = None
        for i in order:
            try:
                conn = self._connect_to(self.targets[i])
            except Exception as exc:
                if not _server_unusable(exc):
                    raise  # the same on every server (a wrong password, an unknown database)
                self._failed_at[i] = time.monotonic()
                first_error = first_error or exc
                continue
            conn.tracker_server = i  # for _keep
            return conn
        assert first_error is not None
        raise first_error

    def _failed_on(self, connection: Any, exc: BaseException) -> None:
        # A Galera node that answers 1047 takes connections but no statements (it left the
        # primary component, or its admin set wsrep_reject_queries): pass it over.
        if getattr(exc, "errno", None) == ER_WSREP_NOT_PREPARED and len(self.targets) > 1:
            self._failed_at[getattr(connection.conn, "tracker_server", 0)] = time.monotonic()

    def _keep(self, connection: Any) -> bool:
        # A connection on a server after one that is no longer passed over is closed: the next
        # transaction connects to the preferred server again, if it is back.
        server = getattr(connection.conn, "tracker_server", 0)
        now = time.monotonic()
        return all(now - self._failed_at[i] < FAILED_HOST_SECONDS for i in range(server))

    def _connect_to(self, args: dict[str, Any]) -> Any:
        conn = mysql.connector.connect(
            **args,
            use_pure=False,  # the C extension; ImportError (not a silent fallback) if it is missing
            # Reads are single statements, each its own transaction: one round trip, no COMMIT.
            autocommit=True,
            charset="utf8mb4",
            **self.timeouts,
        )
        cursor = conn.cursor()
        # READ COMMITTED: no gap locks, so first announces of different peers into one swarm
        # do not block each other. A row lock wait ends in error 1205 from the server a
        # second before the read would time out (and its retry wait again).
        # Set per session, so set again after a reconnect.
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {max(1, self.timeouts['read_timeout'] - 1)}")
        try:
            # wsrep_on: a Galera node (MariaDB has the variable, OFF, without Galera; MySQL has none).
            cursor.execute("SHOW VARIABLES LIKE 'wsrep_on'")
            if cursor.fetchall() == [("wsrep_on", "ON")]:
                cursor.execute("SHOW STATUS LIKE 'wsrep_ready'")
                if cursor.fetchall() != [("wsrep_ready", "ON")]:
                    # Out of the cluster's primary component, or still joining: it takes
                    # connections but no statement of the tracker's.
                    raise errors.OperationalError(
                        msg=f"WSREP has not yet prepared node {conn.server_host}:{conn.server_port} for "
                            "application use", errno=ER_WSREP_NOT_PREPARED)
                # A commit at another node returns once certified, before this node has
                # applied it: a read here may miss it (tests/test_galera.py: 251 of 300 reads
                # right after such a commit, under write load). Reads wait until this node
                # has applied what the cluster committed before they began, as on one server.
                cursor.execute("SET SESSION wsrep_sync_wait = 1")
        except BaseException:
            try:
                conn.close()
            except Exception:  # it is gone either way
                pass
            raise
        cursor.close()
        return conn

    def _begin(self, conn: Any, read_only: bool) -> None:
        if not read_only:  # writers: one transaction, committed by _end
            conn.start_transaction()

    def _transaction(self, work: Any, read_only: bool = False) -> Any:
        # An outage names its cause (the server's error number); free when nothing is raised.
        try:
            return super()._transaction(work, read_only)
        except StoreUnavailable as exc:
            if exc.cause == FAILED:
                exc.cause = outage_cause(exc.__cause__)
            raise

    def _is_transient(self, exc: BaseException) -> bool:
        return _connection_failed(exc) or getattr(exc, "errno", None) in _TRANSIENT_ERRNOS

    def _is_conflict(self, exc: BaseException) -> bool:
        return getattr(exc, "errno", None) in _CONFLICT_ERRNOS

    def _is_unavailable(self, exc: BaseException) -> bool:
        return _connection_failed(exc) or getattr(exc, "errno", None) in _UNAVAILABLE_ERRNOS

    def _is_lost(self, exc: BaseException) -> bool:
        return _connection_failed(exc) or getattr(exc, "errno", None) == ER_WSREP_NOT_PREPARED


def _server_unusable(exc: BaseException) -> bool:
    """A connect's error that another server of the list may not have: this one is down,
    unreachable, full, or a Galera node out of the cluster."""
    return _connection_failed(exc) or getattr(exc, "errno", None) in _CONNECTION_ERRNOS | {
        errorcode.CR_CONNECTION_ERROR, errorcode.CR_UNKNOWN_HOST}
