"""What every command of `tracker-wsgi` shares: its options (the config file found once),
its output (one line per warning, names from .torrent files escaped), and the store it
opens, refusing what would leave root's files in the tracker's directories."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from .. import config as config_module
from ..config import Config, ConfigError
from ..permissions import APACHE_USER
from ..refresh import STATS_FILE
from ..store import Catalog, masked, open_current, sqlite_file


class Options:
    """The parsed command line, with the options every command shares resolved once."""

    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args = args
        self.argv = argv
        self.config_path: str | None = getattr(args, "config", None) or config_module.config_path()
        # Quiet under cron: the README's crontab line sets CRON=1.
        self.quiet = getattr(args, "quiet", False) or bool(os.environ.get("CRON"))

    @property
    def source(self) -> str:
        return self.config_path or "(no config file)"

    def load(self) -> Config:
        """The config file's settings. Without a file the built-in defaults would name a
        database of their own beside the admin's: refused."""
        if self.config_path is None:
            raise ConfigError(
                f"no config file: --config FILE and ${config_module.ENV_VAR} name none, and "
                f"{config_module.SYSTEM_CONFIG} is not there; write it (README: Production install) "
                "or name one with --config FILE"
            )
        return config_module.load(self.config_path)

    def summary(self, line: str) -> None:
        if not self.quiet:
            print(line)


def warn(message: str) -> None:
    print(f"tracker-wsgi: {message}", file=sys.stderr)


def shown(text: str) -> str:
    """A name or path from a .torrent file (anyone's), safe to print on a terminal: each
    character that is not printable (ESC and the other controls, bidi overrides, line
    breaks) as its Python escape, so no name can move the cursor, recolour or hide text."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def counted(n: int, thing: str) -> str:
    """ "1 torrent", "2 torrents"."""
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


# -- opening the store ---------------------------------------------------------------------

def open_checked(options: Options, config: Config, creates: bool, writes_output: bool = False) -> Catalog:
    """The configured store, at this release's schema: only migrate (and the tracker's
    start) change it. `creates`: a missing SQLite file, or an empty database, gets its
    tables; else it is refused. Refuses as root what would leave files the tracker's user
    cannot write. Any failure is one line naming the config file and the key."""
    database = sqlite_file(config.database)
    if database and not creates and not os.path.exists(database):
        raise ConfigError(
            f"{options.source}: database = {config.database!r}: {database} does not exist yet; the tracker "
            f"creates it on its first request, or run: runuser -u {APACHE_USER} -- tracker-wsgi init-db"
        )
    refuse_root(options, config, writes_output)
    try:
        return open_current(config, creates)
    except Exception as exc:  # bad URL, password, server down, unwritable file: all the same key's
        raise database_error(options.source, config, exc) from None


def database_error(source: str, config: Config, exc: Exception) -> ConfigError:
    """Failing to reach the database, in one line naming the config file and the key."""
    reason = " ".join(str(exc).removeprefix(f"database = {masked(config.database)!r}: ").split())
    return ConfigError(f"{source}: database = {masked(config.database)!r}: {reason}")


def refuse_root(options: Options, config: Config, writes_output: bool) -> None:
    """A file root makes in the tracker's directories belongs to root, and the daemons
    (www-data) then fail to write it: an include file, a fresh SQLite database, or the
    SQLite store's lock file (store/sqlite.py, made by the first write). SQLite itself gives
    the -wal and -shm files it makes as root the database file's owner."""
    if os.geteuid() != 0 or getattr(options.args, "allow_root", False):
        return
    made = [os.path.join(config.output_dir, STATS_FILE)] if writes_output else []
    database = sqlite_file(config.database)
    if database:
        made += [p for p in (database, database + "-writer") if not os.path.exists(p)]
    if made:
        program = sys.argv[0] if os.path.basename(sys.argv[0]) == "tracker-wsgi" else "tracker-wsgi"
        command = shlex.join([program, *options.argv])
        raise ConfigError(
            f"refusing to run as root: {made[0]} would belong to root, and the tracker ({APACHE_USER}) "
            f"could not write it; run: runuser -u {APACHE_USER} -- {command} (or add --allow-root)"
        )
