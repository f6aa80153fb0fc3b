"""The schema: its one source (schema.sql), its SQLite form, its versions and migrations.

schema.sql is written for MySQL / MariaDB and documents every column. SQLite runs the same
statements translated by `sqlite_statements`, which knows the few forms schema.sql and the
migrations use and refuses anything else, so the two stores cannot drift apart.

Versions. A database's version is the highest row of its schema_version table. An empty
database is created from schema.sql at LATEST; a database made by an earlier release is
brought to LATEST by the migrations after its version, in order. The first release (0.1.0,
the tracker's first landing) kept no version: a database found with tables and no
schema_version table is that release's, version 1. The runner is SqlStore.create_tables.

Who changes the schema: `tracker-wsgi migrate` (and `init-db`), and the tracker's daemons
when they start (store.open_configured). The admin's other commands only read the version
(`found_version`): a database of an earlier release is the admin's to back up first, so they
refuse it, naming the command to run (store.open_current).

Rules for a migration (each is why the runner can be as simple as it is):
- It is added here, with schema.sql changed to match, and a test database of every earlier
  version then migrates to exactly what schema.sql creates (tests/test_schema.py).
- Every step can run again and finds its work done: MySQL commits each DDL statement by
  itself, so a migration cut short is finished by the next run.
- It leaves a schema the previous release still runs on (add; never drop or rename in the
  same release): the daemons migrate when they start, and other hosts sharing the database,
  or daemons not restarted yet, go on running the previous release for a while.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

VERSION_TABLE = "schema_version"
FIRST_RELEASE = 1  # the version of a database found with tables and no schema_version table
# What a database of the first release has that no earlier development one had (the
# swarm counters and the peers' random ranks): a database without them is refused.
FIRST_RELEASE_COLUMNS = {"torrents": "seeders", "peers": "peer_rank"}


class SchemaError(ValueError):
    """The database's schema cannot be used or brought to this release's (one line, with the fix)."""


class SchemaChange(NamedTuple):
    before: int | None  # the version found; None: the tables were created
    after: int
    applied: tuple[str, ...]  # "N: description" of each migration run, oldest first


# -- schema.sql and its SQLite form ----------------------------------------------------------

def statements(ddl: str) -> list[str]:
    """The statements of a DDL text. Comments go before splitting: one may hold a semicolon
    (schema.sql's strings hold no `--` and no `;`)."""
    lines = [line.split("--", 1)[0] for line in ddl.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


@cache
def schema_statements() -> tuple[str, ...]:
    """schema.sql's statements, as MySQL runs them."""
    return tuple(statements(resources.files("tracker_wsgi").joinpath("schema.sql").read_text()))


_CREATE_TABLE = re.compile(
    r"CREATE TABLE IF NOT EXISTS (\w+) \((.*)\)\s*(ENGINE=InnoDB(?: DEFAULT CHARSET=utf8mb4)?)?$", re.S)
_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (.*)$", re.S)
_INSERT_IGNORE = re.compile(r"INSERT IGNORE INTO ", re.S)
_COLUMN = re.compile(r"(\w+)\s+([A-Z]+(?:\(\d+\))?(?: UNSIGNED)?)(.*)$", re.S)
_KEY = re.compile(r"KEY (\w+) \(([\w, ]+)\)$")
# MySQL types as SQLite stores them (its type affinities): what SQLite databases were made
# with before schema.sql was their source too.
_SQLITE_TYPES = (
    (re.compile(r"(?:TINY|SMALL|MEDIUM|BIG)?INT(?: UNSIGNED)?"), "INTEGER"),
    (re.compile(r"VARCHAR\(\d+\)"), "TEXT"),
    (re.compile(r"(?:VAR)?BINARY\(\d+\)"), "BLOB"),
)
_AUTO_INCREMENT_KEY = " NOT NULL AUTO_INCREMENT PRIMARY KEY"
_ADD_KEY = re.compile(r"ALTER TABLE (\w+) ADD KEY (\w+) \(([\w, ]+)\)$")
DUPLICATE_KEY_NAME = 1061  # MySQL's error: the index is there already (a migration run again)


def _items(body: str) -> list[str]:
    """A CREATE TABLE's columns and keys: its body split at commas outside parentheses."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(body):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    return [" ".join(item.split()) for item in items if item.strip()]


def _sqlite_column(definition: str) -> str:
    match = _COLUMN.fullmatch(definition)
    if not match:
        raise ValueError(f"schema: no SQLite form for the column {definition!r}")
    name, mysql_type, rest = match.groups()
    if "AUTO_INCREMENT" in rest:
        # SQLite's row id: the only form whose ids, like AUTO_INCREMENT's, are never reused.
        if rest != _AUTO_INCREMENT_KEY:
            raise ValueError(f"schema: AUTO_INCREMENT only as {_AUTO_INCREMENT_KEY.strip()!r}: {definition!r}")
        return f"{name} INTEGER PRIMARY KEY AUTOINCREMENT"
    for pattern, sqlite_type in _SQLITE_TYPES:
        if pattern.fullmatch(mysql_type):
            return f"{name} {sqlite_type}{rest}"
    raise ValueError(f"schema: no SQLite type for {mysql_type!r} in {definition!r}")


def sqlite_statements(statement: str) -> list[str]:
    """A schema.sql or migration statement as SQLite runs it: column types by affinity,
    `AUTO_INCREMENT PRIMARY KEY` as a row id, no table options, `KEY name (...)` lines as
    CREATE INDEX `table_name`, INSERT IGNORE as INSERT OR IGNORE. A table keyed by several
    columns is stored in key order (WITHOUT ROWID), as InnoDB stores every table."""
    if create := _CREATE_TABLE.fullmatch(statement):
        table, body, _ = create.groups()
        columns, indexes, clustered = [], [], False
        for item in _items(body):
            if key := _KEY.fullmatch(item):
                name, indexed = key.groups()
                indexes.append(f"CREATE INDEX IF NOT EXISTS {table}_{name} ON {table} ({indexed})")
            elif item.startswith("PRIMARY KEY ("):
                columns.append(item)
                clustered = True
            else:
                columns.append(_sqlite_column(item))
        options = " WITHOUT ROWID" if clustered else ""
        return [f"CREATE TABLE IF NOT EXISTS {table} (\n    " + ",\n    ".join(columns) + f"\n){options}", *indexes]
    if add_key := _ADD_KEY.fullmatch(statement):
        table, name, indexed = add_key.groups()
        return [f"CREATE INDEX IF NOT EXISTS {table}_{name} ON {table} ({indexed})"]
    if add := _ADD_COLUMN.fullmatch(statement):
        table, definition = add.groups()
        return [f"ALTER TABLE {table} ADD COLUMN {_sqlite_column(' '.join(definition.split()))}"]
    if _INSERT_IGNORE.match(statement):
        return [_INSERT_IGNORE.sub("INSERT OR IGNORE INTO ", statement, count=1)]
    raise ValueError(f"schema: no SQLite form for {statement.split(chr(10))[0]!r}")


@cache
def schema_columns() -> dict[str, tuple[str, ...]]:
    """Every table schema.sql creates, with its columns: what a database at LATEST has."""
    tables = {}
    for statement in schema_statements():
        if create := _CREATE_TABLE.fullmatch(statement):
            table, body, _ = create.groups()
            tables[table] = tuple(item.split()[0] for item in _items(body)
                                  if not item.startswith(("KEY ", "PRIMARY KEY (")))
    return tables


# -- versions ------------------------------------------------------------------------------------

def found_version(store: Any) -> int | None:
    """The version of the database's schema, read without changing anything: None for an
    empty database, or one whose creation has not finished (another process creating it:
    the version table comes first and its row last). Raises SchemaError for a newer
    release's."""

    def read(cur: Any) -> int | None:
        cur.execute(store.dialect.tables)
        tables = {row[0] for row in cur.fetchall()}
        if VERSION_TABLE in tables:
            return store._schema_version(cur)
        return FIRST_RELEASE if "torrents" in tables else None  # tables without versions: the first release's

    return store._read(read)


def not_current(version: int | None) -> str:
    """Why a command other than migrate cannot use a database at `version`, and the command
    that brings it to LATEST (one line)."""
    if version is None:
        return ("it has no tables yet: the tracker creates them on its first request, or run: "
                "runuser -u www-data -- tracker-wsgi init-db")
    return (f"its tables are at schema version {version}, this release's is {LATEST}: back up the database, "
            "then run: runuser -u www-data -- tracker-wsgi migrate (README: Schema versions)")


# -- migrations ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AddColumn:
    """ALTER TABLE table ADD COLUMN definition, unless the column is there already."""

    table: str
    definition: str  # as in schema.sql

    @property
    def column(self) -> str:
        return self.definition.split()[0]

    def apply(self, store: Any, cur: Any) -> None:
        if self.column not in store._columns(cur, self.table):
            for statement in store.dialect.ddl(f"ALTER TABLE {self.table} ADD COLUMN {self.definition}"):
                cur.execute(statement)


@dataclass(frozen=True)
class DropColumn:
    """ALTER TABLE table DROP COLUMN column, if it is there."""

    table: str
    column: str

    def apply(self, store: Any, cur: Any) -> None:
        if self.column in store._columns(cur, self.table):
            cur.execute(f"ALTER TABLE {self.table} DROP COLUMN {self.column}")


@dataclass(frozen=True)
class AddKey:
    """An index schema.sql declares as `KEY name (columns)` in a table, unless it is there."""

    table: str
    name: str
    columns: str

    def apply(self, store: Any, cur: Any) -> None:
        for statement in store.dialect.ddl(f"ALTER TABLE {self.table} ADD KEY {self.name} ({self.columns})"):
            try:
                cur.execute(statement)  # SQLite's form says IF NOT EXISTS
            except Exception as exc:
                if getattr(exc, "errno", None) != DUPLICATE_KEY_NAME:
                    raise


@dataclass(frozen=True)
class CreateTable:
    """A table as schema.sql creates it (IF NOT EXISTS)."""

    table: str

    def apply(self, store: Any, cur: Any) -> None:
        statement = next(s for s in schema_statements() if s.startswith(f"CREATE TABLE IF NOT EXISTS {self.table} ("))
        for ddl in store.dialect.ddl(statement):
            cur.execute(ddl)


@dataclass(frozen=True)
class Migration:
    version: int  # the version it brings a database to
    description: str  # recorded in schema_version, and printed by tracker-wsgi migrate
    steps: tuple[AddColumn | DropColumn | AddKey | CreateTable, ...]


MIGRATIONS = (
    Migration(2, "torrents.version: swarm views kept by version",
              (AddColumn("torrents", "version BIGINT UNSIGNED NOT NULL DEFAULT 0"),)),
    # Torrents registered before keep no SHA-256, and so their feed guid (urn:btih).
    Migration(3, "torrents.info_sha256: the whole SHA-256 of v2 and hybrid torrents, for the feed",
              (AddColumn("torrents", "info_sha256 BINARY(32) NULL"),)),
    # Rows written before carry stamp 0: older than any announce from now on.
    Migration(4, "peers.stamp: writes ordered by their announce, stops kept as tombstones (state 3)",
              (AddColumn("peers", "stamp BIGINT UNSIGNED NOT NULL DEFAULT 0"),)),
    # Swarm counts are counted from the peers; completions move to per-host rows (the old
    # torrents.downloaded stays their base). Rows written before carry changed 0: a host
    # reads a swarm whole when it first holds it, and what changes after, by `changed`.
    Migration(5, "peers.changed and swarm_counts: hosts read each other's changes, no row every writer bumps",
              (AddColumn("peers", "changed BIGINT UNSIGNED NOT NULL DEFAULT 0"),
               AddKey("peers", "by_changed", "changed"),
               CreateTable("swarm_counts"),
               *(DropColumn("torrents", column) for column in ("version", "seeders", "leechers", "partial_seeds")))),
)
LATEST = MIGRATIONS[-1].version  # the version schema.sql creates


def describe(change: SchemaChange) -> str:
    """What create_tables did, for the log and tracker-wsgi migrate."""
    if change.before is None:
        return f"created at version {change.after}"
    if change.before == change.after:
        return f"at version {change.after}: nothing to do"
    return f"migrated from version {change.before} to {change.after} ({'; '.join(change.applied)})"
