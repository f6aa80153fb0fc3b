"""The runner of the schema's versions (store/schema.py holds the migrations and schema.sql):
SchemaRunner.create_tables creates the tables in an empty database, or migrates those of an
earlier release, under the database's schema lock.

A mixin over SqlBase, apart from the queries (announce.py, catalog.py): it runs once, when a
tracker starts or an admin migrates, and schema.py's steps call back into it (_columns,
dialect.ddl).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import __version__
from . import schema
from .schema import SchemaChange, SchemaError, describe
from .sqlbase import SqlBase

log = logging.getLogger(__name__)


class SchemaRunner(SqlBase):
    """Catalog.create_tables, and what schema.py's migration steps use."""

    def create_tables(self) -> SchemaChange:
        """Bring the database to this release's schema: create it in an empty database, or
        run the migrations a database of an earlier release lacks. Safe to repeat, and to run
        from many processes and hosts at once (one migrates, the others wait for it and find
        it done). Costs two reads when the schema is current. Raises SchemaError for a
        database this release cannot use: a newer release's, or one not made by a release."""
        version = self._read(self._schema_version)
        if version == schema.LATEST:
            return SchemaChange(version, version, ())
        change = self._transaction(self._migrate)
        if change.before != change.after:
            log.info("database schema %s", describe(change))
        return change

    def _schema_version(self, cur: Any) -> int | None:
        """The schema's version; None if no version is recorded (yet)."""
        cur.execute(self.dialect.tables)
        if schema.VERSION_TABLE not in {row[0] for row in cur.fetchall()}:
            return None
        cur.execute(f"SELECT MAX(version) FROM {schema.VERSION_TABLE}")
        version = cur.fetchone()[0]
        if version is not None and version > schema.LATEST:
            raise SchemaError(
                f"the database's schema is at version {version}, newer than this tracker-wsgi "
                f"({__version__}, schema version {schema.LATEST}) knows: a newer release migrated it; "
                "install that release here too"
            )
        return version

    def _migrate(self, cur: Any) -> SchemaChange:
        """Under the schema lock, look again and do what is left. Versions are recorded last,
        after the check, so a run cut short (a MySQL DDL statement commits by itself) is
        finished by the next: an unversioned database is migrated again (every step finds its
        work done), an empty version table means a creation to finish."""
        self.dialect.lock_schema(cur, self.wait_seconds)
        cur.execute(self.dialect.tables)
        tables = {row[0] for row in cur.fetchall()}
        before = self._schema_version(cur)
        if before == schema.LATEST:  # another process did it while this one waited
            self.dialect.unlock_schema(cur)
            return SchemaChange(before, before, ())
        records: list[tuple[int, str]] = []
        if before is None and schema.VERSION_TABLE not in tables and "torrents" in tables:
            for table, column in schema.FIRST_RELEASE_COLUMNS.items():
                if table not in tables or column not in self._columns(cur, table):
                    raise SchemaError(
                        f"these tables were made by a development version older than the first release "
                        f"({table} has no {column}); drop them (or the database) and let the tracker create "
                        "its own"
                    )
            before = schema.FIRST_RELEASE
            records.append((before, "found the first release's tables, which kept no version"))
        if before is None:  # empty, or a creation cut short: every statement is IF NOT EXISTS
            self._execute_ddl(cur, self._version_table_ddl())
            for statement in schema.schema_statements():
                self._execute_ddl(cur, statement)
            records.append((schema.LATEST, f"created at version {schema.LATEST}"))
        else:
            for migration in schema.MIGRATIONS:
                if migration.version > before:
                    for step in migration.steps:
                        step.apply(self, cur)
                    records.append((migration.version, migration.description))
            self._execute_ddl(cur, self._version_table_ddl())
        self._check_columns(cur)
        for version, description in records:
            cur.execute(self.sql.RECORD_VERSION, (version, int(time.time()), description[:255]))
        self.dialect.unlock_schema(cur)
        applied = tuple(f"{v}: {d}" for v, d in records if before is not None and v > before)
        return SchemaChange(before, schema.LATEST, applied)

    def _version_table_ddl(self) -> str:
        return next(s for s in schema.schema_statements() if f" {schema.VERSION_TABLE} (" in s)

    def _execute_ddl(self, cur: Any, statement: str) -> None:
        for translated in self.dialect.ddl(statement):
            cur.execute(translated)

    def _columns(self, cur: Any, table: str) -> list[str]:
        cur.execute(f"SELECT * FROM {table} LIMIT 0")
        cur.fetchall()
        return [d[0] for d in cur.description]

    def _check_columns(self, cur: Any) -> None:
        """Every table and column schema.sql creates is there: a migrated database must be
        what a new one is, whatever was done to it by hand."""
        cur.execute(self.dialect.tables)
        tables = {row[0] for row in cur.fetchall()}
        for table, columns in schema.schema_columns().items():
            found = self._columns(cur, table) if table in tables else []
            missing = [c for c in columns if c not in found] if found else ["(the table)"]
            if missing:
                raise SchemaError(
                    f"table {table} lacks {', '.join(missing)} at schema version {schema.LATEST}: it was changed "
                    "by hand; add what is missing as schema.sql has it"
                )
