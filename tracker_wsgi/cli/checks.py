"""`tracker-wsgi check-config`: the config file, the database and the directories, checked
for the user Apache runs the tracker as, creating nothing."""

from __future__ import annotations

import os
import pwd

from ..config import Config, ConfigError
from ..permissions import access_problem
from ..store import open_store, schema, sqlite_file
from .command import Options, database_error, warn


def cmd_check_config(options: Options) -> int:
    """Exit 0 with a summary, or 1 with one line per problem: the config file, the
    database (connected to, never created) and every directory the tracker uses, checked
    for the Apache user by ownership and mode bits (os.access answers for whoever runs
    this, which as root is always yes)."""
    options.config_path = options.args.file or options.config_path
    config = options.load()
    if os.geteuid() == 0:
        warn(
            f"running as root: the checks below are made for {options.args.apache_user}, but run the "
            f"tracker's other commands as that user (runuser -u {options.args.apache_user} -- tracker-wsgi ...)"
        )
    try:
        user = pwd.getpwnam(options.args.apache_user)
    except KeyError:
        raise ConfigError(f"no user {options.args.apache_user!r} here: name Apache's user with --apache-user") from None
    found = check_directories(options.source, config, user)
    problems = [line for _, line in found]
    database_note = ""
    if "database" not in dict(found):  # a file it cannot write would fail the same way again
        database_problems, database_note = check_database(options.source, config)
        problems += database_problems
    for problem in problems:
        warn(problem)
    if problems:
        return 1
    options.summary(
        f"{options.source}: ok: {database_note}; torrent_dir readable and output_dir writable by {user.pw_name}"
    )
    return 0


def check_database(source: str, config: Config) -> tuple[list[str], str]:
    """([problem], what was found): connect and read the schema's version, changing nothing."""
    database = sqlite_file(config.database)
    if database and not os.path.exists(database):
        return [], f"no database file yet at {database} (the tracker creates it on its first request)"
    try:
        store = open_store(config.database, config.peer_timeout)
    except ValueError as exc:
        return [str(database_error(source, config, exc))], ""
    try:
        version = schema.found_version(store)
    except Exception as exc:  # unreachable, refused, a newer release's schema
        return [str(database_error(source, config, exc))], ""
    finally:
        store.close()
    if version is None:
        return [], "database reachable, tables not created yet (the tracker creates them on its first request)"
    if version != schema.LATEST:
        # Not a problem: the daemons migrate when they start. But the admin backs up first.
        return [], f"database reachable, {schema.not_current(version)}"
    return [], "database reachable"


def check_directories(source: str, config: Config, user: pwd.struct_passwd) -> list[tuple[str, str]]:
    """What keeps `user` (the Apache daemons) from reading torrent_dir or writing output_dir
    and the SQLite database's directory and files: [(key, problem)]."""
    needs = [("torrent_dir", config.torrent_dir, config.torrent_dir, "read"),
             ("output_dir", config.output_dir, config.output_dir, "write")]
    database = sqlite_file(config.database)
    if database:
        needs.append(("database", config.database, os.path.dirname(database), "write"))
        for suffix in ("", "-wal", "-shm", "-writer"):
            if os.path.exists(database + suffix):
                needs.append(("database", config.database, database + suffix, "write"))
    problems = []
    for key, value, path, need in needs:
        reason = access_problem(path, need, user)
        if reason:
            problems.append((key, f"{source}: {key} = {value!r}: {reason}"))
    return problems
