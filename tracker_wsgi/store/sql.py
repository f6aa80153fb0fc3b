"""SqlStore: the one class that keeps both store interfaces (store/__init__.py) over SQL,
composed of a mixin per part, each over SqlBase (sqlbase.py: the connection and transaction
machinery):
  announce.py   AnnouncePath    AnnounceStore: swarm reads, announce writes, scrape
  catalog.py    CatalogQueries  Catalog: registration, expiry, the refresh's lock and report
  migration.py  SchemaRunner    create_tables: the schema created or migrated (schema.py)
  statements.py Statements, Dialect: the SQL of all of them, in one place
Mixins rather than separate objects: every part shares one pool, one `self.sql` and one
Dialect, and a store (sqlite.py, mysql.py) is still one class that overrides the
connection hooks once for all of them.
"""

from __future__ import annotations

from .announce import AnnouncePath
from .catalog import CatalogQueries
from .migration import SchemaRunner


class SqlStore(AnnouncePath, CatalogQueries, SchemaRunner):
    """Both interfaces; SqliteStore and MysqlStore add the connection (SqlBase's hooks)."""
