"""`tracker-wsgi`: the admin's command line.

  tracker-wsgi check-config [FILE]    check the config, the database and the directories
  tracker-wsgi migrate                create the tables, or migrate them to this release's
                                      schema (init-db: the same; the tracker does it at start)
  tracker-wsgi add FILE.torrent...    register .torrent files by hand
  tracker-wsgi list                   every registered torrent, one a line
  tracker-wsgi show HASH|PATH         one torrent: its hashes, file and swarm
  tracker-wsgi remove HASH|PATH...    unregister torrents, with their peers
  tracker-wsgi stats [--json]         totals: torrents, peers, completions, last refresh
  tracker-wsgi refresh                if due: expire peers, recount, rescan, write include files
  tracker-wsgi force-refresh          the same, now
  tracker-wsgi serve                  run the tracker in a real Apache, for development
  tracker-wsgi paths [NAME]           where the installed Apache files and files for /etc are
  tracker-wsgi apache-conf [--processes N] [--site NAME] | --embedded | --embedded-server
                                      print an Apache snippet for /tracker (apache/*.conf)

Options go before or after the command. The config file is --config FILE, else
$TRACKER_WSGI_CONFIG, else /etc/tracker-wsgi/tracker.toml; a command that reads the
config and finds none says so. Every command ends with a one-line summary on stdout;
--quiet (or CRON set in the environment) leaves it out. Warnings and errors are one line
each on stderr naming what to fix; an error exits non-zero.

Here: the parser, migrate, refresh, paths and apache-conf; checks.py: check-config;
torrents.py: add, list, show, remove and stats; command.py: what every command shares;
serve is devserver.py's.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from pathlib import Path

from .. import apache_conf, logs
from .. import config as config_module
from ..config import ConfigError
from ..permissions import APACHE_USER
from ..refresh import RefreshBusy, refresh, terminal_progress
from ..store import masked, migrate, schema
from .checks import cmd_check_config
from .command import Options, database_error, open_checked, refuse_root, shown, warn
from .torrents import cmd_add, cmd_list, cmd_remove, cmd_show, cmd_stats

EXIT_BUSY = 75  # EX_TEMPFAIL: another refresh holds the lock; cron will try again


# -- the schema ------------------------------------------------------------------------------

def cmd_migrate(options: Options) -> int:
    """init-db and migrate: create the tables, or bring them to this release's schema."""
    config = options.load()
    refuse_root(options, config, writes_output=False)
    try:
        change = migrate(config)
    except Exception as exc:  # bad URL, password, server down, unwritable file: all the same key's
        raise database_error(options.source, config, exc) from None
    options.summary(f"{masked(config.database)}: schema {schema.describe(change)}")
    return 0


# -- refresh -----------------------------------------------------------------------------------

def cmd_refresh(options: Options) -> int:
    """Skipped files and errors always print; the summary unless quiet."""
    config = options.load()
    store = open_checked(options, config, creates=True, writes_output=True)
    progress = terminal_progress if sys.stderr.isatty() and not options.quiet else None
    try:
        report = refresh(config, store, force=options.args.force, progress=progress)
    except RefreshBusy as exc:
        warn(str(exc))
        return EXIT_BUSY
    except OSError as exc:
        if not f"{exc.filename}/".startswith(config.output_dir.rstrip("/") + "/"):
            raise
        raise ConfigError(
            f"{options.source}: output_dir = {config.output_dir!r}: {exc.strerror}: {exc.filename}; make it a "
            f"directory {APACHE_USER} can write: install -d -o {APACHE_USER} -g {APACHE_USER} {config.output_dir}"
        ) from None
    for warning in report.warnings:
        warn(shown(warning))  # they name the files found in torrent_dir
    options.summary(report.summary())
    return 0


def cmd_serve(options: Options) -> int:
    """Development server (devserver.serve). Its own config only, --config or the state
    directory's, never $TRACKER_WSGI_CONFIG's or /etc's: a development server beside a
    production install must not serve, or write into, production's paths."""
    from .. import devserver

    args = options.args
    return devserver.serve(Path(args.state_dir), args.port, getattr(args, "config", None), Path(args.apache_dir),
                           args.topology, options.summary)


def installed_paths() -> dict[str, tuple[Path, str]]:
    """What `paths` prints: name -> (path, what is there)."""
    from .. import installed

    return {
        "apache": (installed.APACHE_DIR, f"{', '.join(installed.APACHE_FILES)}: TRACKER_WSGI_APACHE"),
        "system": (installed.SYSTEM_DIR, "files for /etc, each at its path below /etc: Apache site, cron.d, systemd, tmpfiles.d"),
        "venv": (Path(sys.prefix), "the virtualenv tracker-wsgi runs in: TRACKER_WSGI_VENV"),
    }


def cmd_paths(options: Options) -> int:
    """One path for `paths NAME` (for scripts), else every one with what it holds."""
    paths = installed_paths()
    if options.args.name:
        print(paths[options.args.name][0])
        return 0
    width = max(map(len, paths))
    for name, (path, holds) in paths.items():
        print(f"{name:<{width}}  {path}  ({holds})")
    return 0


def cmd_apache_conf(options: Options) -> int:
    """The snippet on stdout, and nothing else there (no summary line): it is meant to be
    redirected into a file Apache includes."""
    args = options.args
    if args.embedded and (args.processes, args.threads) != (None, None):
        raise ConfigError("apache-conf --embedded: the pool's numbers belong to --embedded-server")
    if args.threads is not None and not args.embedded_server:
        raise ConfigError("apache-conf --threads: only with --embedded-server (daemon threads are fixed)")
    if args.site and (args.embedded or args.embedded_server):
        raise ConfigError("apache-conf --site: daemon mode only (embedded mode runs one tracker per server)")
    try:
        if args.embedded:
            text = apache_conf.embedded_conf()
        elif args.embedded_server:
            text = apache_conf.embedded_server_conf(
                apache_conf.EMBEDDED_PROCESSES if args.processes is None else args.processes,
                apache_conf.EMBEDDED_THREADS if args.threads is None else args.threads)
        else:
            text = apache_conf.daemon_conf(apache_conf.DEFAULT_PROCESSES if args.processes is None else args.processes,
                                           args.site)
    except ValueError as exc:
        raise ConfigError(f"apache-conf {exc}") from None
    sys.stdout.write(text)
    return 0


# -- the parser ------------------------------------------------------------------------------

def package_version() -> str:
    try:
        return metadata.version("tracker_wsgi")
    except metadata.PackageNotFoundError:
        return "(not installed: no package metadata)"


def build_parser() -> argparse.ArgumentParser:
    from ..devserver import TOPOLOGIES

    # Shared options, accepted before and after the command. SUPPRESS: a command's parser
    # must not overwrite with its default what was given before the command.
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"the config file (default: ${config_module.ENV_VAR}, else {config_module.SYSTEM_CONFIG})")
    shared.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no summary line, for cron (also when CRON is set); warnings and errors still print")
    as_root = argparse.ArgumentParser(add_help=False)
    as_root.add_argument(
        "--allow-root", action="store_true",
        help=f"run as root even where that makes files the tracker's user ({APACHE_USER}) cannot write",
    )

    formatter = argparse.RawDescriptionHelpFormatter  # keep the descriptions' line breaks
    parser = argparse.ArgumentParser(
        prog="tracker-wsgi", parents=[shared], formatter_class=formatter,
        description="The admin's commands for tracker_wsgi, a BitTorrent tracker in Apache.",
        epilog=__doc__.split("\n\n")[2],  # the options paragraph
    )
    parser.add_argument("--version", action="version", version=f"tracker-wsgi {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run, summary: str, description: str, store: bool = True, **defaults):
        sub = commands.add_parser(name, help=summary,
                                  description=f"{summary[0].upper()}{summary[1:]}.\n\n{description}",
                                  parents=[shared, as_root] if store else [shared],
                                  formatter_class=formatter)
        sub.set_defaults(run=run, **defaults)
        return sub

    check = command(
        "check-config", cmd_check_config, "check the config file, the database and the directories",
        "Reads the config file, connects to the database (creating nothing), and checks that\n"
        f"Apache's user ({APACHE_USER} unless --apache-user) can read torrent_dir and write output_dir\n"
        "and the SQLite database's directory, by ownership and mode bits. Exit 1 with one line\n"
        "per problem, naming the file, the key and the fix.", store=False,
    )
    check.add_argument("file", nargs="?", help="the config file (the same as --config)")
    check.add_argument("--apache-user", default=APACHE_USER, metavar="USER",
                       help=f"the user the tracker's daemons run as (default: {APACHE_USER})")
    migrate_text = (
        "Creates the tables in an empty database, or migrates those an earlier release made to\n"
        "this release's schema, and prints what it did. Safe to repeat, and while the tracker\n"
        "runs. The tracker's daemons do the same when they start; run it yourself after an\n"
        "upgrade to see it done, before restarting them."
    )
    command("init-db", cmd_migrate, "create the tables, or migrate them (as migrate)", migrate_text)
    command("migrate", cmd_migrate, "bring the tables to this release's schema", migrate_text)
    add = command(
        "add", cmd_add, "register .torrent files by hand",
        "A file inside torrent_dir is registered as the directory scan would register it (the\n"
        "scan then manages it: it leaves with its file). A file elsewhere is tracked, but not\n"
        "published: the stats page lists it without a link and the feed leaves it out.",
    )
    add.add_argument("files", nargs="+", metavar="FILE.torrent")
    command("list", cmd_list, "list every registered torrent",
            "One line per torrent: its info hash, live seeds and leechers, completions, size, and\n"
            "its .torrent file (relative to torrent_dir, or added by hand) and name.")
    show = command("show", cmd_show, "show one torrent",
                   "Its info hashes, file, size, when it was added, its live peers and completions.")
    show.add_argument("target", metavar="HASH|PATH", help="an info hash in hex (v1 or v2), or its .torrent file")
    remove = command(
        "remove", cmd_remove, "unregister torrents, with all their peers",
        "Clients announcing them are refused from then on. A file still in torrent_dir is\n"
        "registered again by the next refresh: remove the file too.",
    )
    remove.add_argument("targets", nargs="+", metavar="HASH|PATH",
                        help="an info hash in hex (v1 or v2), or its .torrent file")
    stats = command("stats", cmd_stats, "print the totals",
                    "Torrents, live seeds, leechers and partial seeds, completions, bytes downloaded,\n"
                    "and when the last refresh ran.")
    stats.add_argument("--json", action="store_true", help="one JSON object, for scripts and monitoring")
    refresh_text = (
        "Expires silent peers, recounts, rescans torrent_dir (registering new files, removing\n"
        "torrents whose file is gone), and rewrites bt_stats.inc and bt_rss.inc in output_dir.\n"
        f"Run it as {APACHE_USER}; exit {EXIT_BUSY} if another refresh is running."
    )
    command("refresh", cmd_refresh, "refresh if refresh_interval has passed", refresh_text, force=False)
    command("force-refresh", cmd_refresh, "refresh now", refresh_text, force=True)
    serve = command(
        "serve", cmd_serve, "run the tracker, stats page and feed in Apache (development)",
        "Apache with the shipped snippets, as production: the tracker at /tracker, the stats page\n"
        "and the RSS feed of torrent_dir at /. A fresh --state-dir gets a config (SQLite), the\n"
        "sample site and a sample torrent; each start refreshes first, as "
        f"{APACHE_USER}.\nRun as root (Apache drops to {APACHE_USER}). Ctrl-C or SIGTERM stops it. Its config is\n"
        "--config FILE, else STATE_DIR/tracker.toml (never $TRACKER_WSGI_CONFIG's or /etc's).", store=False,
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--state-dir", default="var",
                       help="config, Apache's config and log, SQLite database, torrents (default: var)")
    serve.add_argument("--apache-dir", default=str(installed_paths()["apache"][0]))
    serve.add_argument("--topology", choices=TOPOLOGIES, default="daemon",
                       help="daemon: mod_wsgi daemon processes (apache/tracker.conf); embedded: Apache's own "
                       "children (apache/tracker-embedded.conf, embedded-server.conf). Default: daemon")
    paths = command(
        "paths", cmd_paths, "print where the installed Apache files and the files for /etc are",
        "apache: the snippets Apache includes (link it to a stable place once:\n"
        "  ln -sfn \"$(tracker-wsgi paths apache)\" /opt/tracker-wsgi/apache);\n"
        "system: the Apache site, cron.d file, systemd service and timer and tmpfiles.d file,\n"
        "each at its path below /etc; venv: this installation's virtualenv.", store=False,
    )
    paths.add_argument("name", nargs="?", choices=installed_paths(), help="print only this path")
    conf = command(
        "apache-conf", cmd_apache_conf, "print an Apache snippet that serves /tracker",
        "The shipped apache/*.conf files are its output for the defaults. Redirect it into a file\n"
        "and include that instead, e.g. for 4 daemon processes on a 4-core box:\n"
        "  tracker-wsgi apache-conf --processes 4 > /etc/tracker-wsgi/tracker.conf\n"
        "Default: daemon mode (tracker.conf), --processes daemon processes routed by info hash.\n"
        "--embedded: the tracker in Apache's own children (tracker-embedded.conf); it needs\n"
        "--embedded-server's output (embedded-server.conf) in the server config: a fixed pool of\n"
        "--processes children of --threads threads, for the event and worker MPMs.\n"
        "Prints the snippet alone, with no summary line.", store=False,
    )
    mode = conf.add_mutually_exclusive_group()
    mode.add_argument("--embedded", action="store_true", help="the embedded-mode snippet (tracker-embedded.conf)")
    mode.add_argument("--embedded-server", action="store_true",
                      help="embedded mode's server-wide settings (embedded-server.conf)")
    conf.add_argument("--processes", type=int, metavar="N",
                      help=f"daemon processes (default {apache_conf.DEFAULT_PROCESSES}), or Apache children with "
                      f"--embedded-server (default {apache_conf.EMBEDDED_PROCESSES})")
    conf.add_argument("--threads", type=int, metavar="N",
                      help=f"threads per Apache child, with --embedded-server (default {apache_conf.EMBEDDED_THREADS})")
    conf.add_argument("--site", default="", metavar="NAME",
                      help="daemon mode: name this tracker's daemon processes tracker_wsgi_NAME_0.. apart from "
                      "another tracker's on the same server (default: tracker_wsgi_0..)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = Options(build_parser().parse_args(argv), argv)
    logs.to_stderr("tracker-wsgi")  # what the tracker's modules log reads as the command's own warnings
    try:
        status = options.args.run(options)
        sys.stdout.flush()  # here, not at exit: a reader gone is met inside this try
        return status
    except BrokenPipeError:
        # `tracker-wsgi list | head`: the reader has all it wanted. Python would still flush
        # stdout into the closed pipe at exit and print a traceback: point it at /dev/null
        # (the Python docs' recipe, signal module: "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ConfigError, LookupError) as exc:
        warn(str(exc))
        return 1
    except Exception as exc:  # database down, permissions: one line, not a traceback
        warn(f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
