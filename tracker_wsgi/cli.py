"""`tracker-wsgi`: the admin's command line.

  tracker-wsgi check-config [FILE]    validate a config file (exit 1 with one line if bad)
  tracker-wsgi init-db                create the tables (the tracker also does this itself)
  tracker-wsgi add FILE.torrent...    register .torrent files by hand
  tracker-wsgi refresh                if due: expire peers, recount, rescan, write include files
  tracker-wsgi force-refresh          the same, now
  tracker-wsgi serve                  run the tracker in a real Apache, for development

The config file is --config FILE, else $TRACKER_WSGI_CONFIG, else the built-in defaults.
Errors are one line on stderr naming what to fix, and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import shutil
import sys
import time
from pathlib import Path

from . import config as config_module
from .config import ConfigError
from .metainfo import MetainfoError, parse_torrent
from .refresh import RefreshBusy, refresh, terminal_progress
from .store import open_configured

EXIT_BUSY = 75  # EX_TEMPFAIL: another refresh holds the lock; cron will try again


def _load(args: argparse.Namespace) -> config_module.Config:
    return config_module.load(args.config or config_module.config_path())


def _store(args: argparse.Namespace):
    return open_configured(_load(args))


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config or config_module.config_path()
    config_module.load(path)
    print(f"{path or '(defaults)'}: ok")
    return 0


def cmd_init_db(args: argparse.Namespace) -> int:
    _store(args)
    print("tables ready")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    store = _store(args)
    failed = 0
    for name in args.files:
        try:
            data = Path(name).read_bytes()
            # An absolute path: the directory scan manages only the torrents it found itself.
            torrent = parse_torrent(data, os.path.abspath(name)).torrent
        except (OSError, MetainfoError) as exc:
            print(f"{name}: skipped: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            failed += 1
            continue
        added = store.register(torrent, int(time.time()))
        status = "added" if added else "already registered"
        print(f"{name}: {status} {torrent.info_hash.hex()} {torrent.name}")
    return 1 if failed else 0


def cmd_refresh(args: argparse.Namespace) -> int:
    """Quiet under cron (CRON set, or no terminal): only skipped files and errors print."""
    config = _load(args)
    store = open_configured(config)
    interactive = sys.stderr.isatty() and not os.environ.get("CRON")
    try:
        report = refresh(config, store, force=args.force, progress=terminal_progress if interactive else None)
    except RefreshBusy as exc:
        print(f"tracker-wsgi: {exc}", file=sys.stderr)
        return EXIT_BUSY
    for warning in report.warnings:
        print(f"tracker-wsgi: {warning}", file=sys.stderr)
    if interactive:
        print(report.summary())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Development server: the shipped Apache snippet in a real Apache, SQLite by default."""
    from . import devserver

    if shutil.which(devserver.APACHE_BIN) is None:
        raise ConfigError(f"{devserver.APACHE_BIN} not found: install apache2 (scripts/bootstrap does)")
    state = Path(args.state_dir).resolve()
    devserver.prepare_run_dir(state)
    config_path = Path(args.config or config_module.config_path() or state / "tracker.toml")
    if not config_path.exists():
        config_path.write_text(
            f'database = "sqlite:///{state}/tracker.sqlite"\n'
            f'torrent_dir = "{state}/torrents"\n'
            f'output_dir = "{state}/output"\n'
            f'base_url = "http://127.0.0.1:{args.port}"\n'
        )
    config_module.load(str(config_path))
    (state / "torrents").mkdir(exist_ok=True)
    (state / "output").mkdir(exist_ok=True)
    # The daemon runs as www-data and writes the SQLite file and its WAL beside it.
    www = pwd.getpwnam("www-data")
    for path in (state, *state.iterdir()):
        os.chown(path, www.pw_uid, www.pw_gid)
    apache_dir = Path(args.apache_dir).resolve()
    conf = devserver.httpd_conf(state, args.port, config_path, apache_dir)
    print(f"tracker at http://127.0.0.1:{args.port}/tracker/announce (config {config_path}); Ctrl-C stops")
    server = devserver.start(state, conf)
    # A service manager stops us with SIGTERM: stop Apache with us, as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        return server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracker-wsgi", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (default: $TRACKER_WSGI_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file", nargs="?")
    check.set_defaults(run=cmd_check_config)
    commands.add_parser("init-db", help="create the tables").set_defaults(run=cmd_init_db)
    add = commands.add_parser("add", help="register .torrent files")
    add.add_argument("files", nargs="+", metavar="FILE.torrent")
    add.set_defaults(run=cmd_add)
    commands.add_parser("refresh", help="refresh if due").set_defaults(run=cmd_refresh, force=False)
    commands.add_parser("force-refresh", help="refresh now").set_defaults(run=cmd_refresh, force=True)
    serve = commands.add_parser("serve", help="run the tracker in a real Apache (development)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--state-dir", default="var", help="config, SQLite file and logs (default: var)")
    serve.add_argument("--apache-dir", default=str(Path(__file__).resolve().parent.parent / "apache"))
    serve.set_defaults(run=cmd_serve)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"tracker-wsgi: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # database down, permissions: one line, not a traceback
        print(f"tracker-wsgi: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
