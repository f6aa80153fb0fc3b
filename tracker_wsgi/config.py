"""The tracker's configuration: one TOML file, read once per process into a frozen Config.

Where the file is (config_path): the WSGI environ value `tracker_wsgi.config` (Apache:
`SetEnv tracker_wsgi.config /etc/tracker-wsgi/tracker.toml`), else the process environment
variable TRACKER_WSGI_CONFIG (cron, tests), else SYSTEM_CONFIG, where the README's install
puts it. With none, the defaults below apply to the tracker; the command line refuses to
run without a file (cli/command.py). Every key is optional; an unknown key is an error,
because a typo would otherwise be silently ignored.

A bad file raises ConfigError with one line naming the file, the key, the bad value and
what is allowed.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from typing import Any

from . import logs
from .limits import Limits, limit_range
from .netaddr import Network, parse_networks

ENVIRON_KEY = "tracker_wsgi.config"
ENV_VAR = "TRACKER_WSGI_CONFIG"
# The config file of the README's production install (tmpfiles.d makes it, empty).
SYSTEM_CONFIG = "/etc/tracker-wsgi/tracker.toml"
WHITELIST_MODES = ("directory", "open")


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Config:
    # Where swarms and peers live: sqlite:///ABSOLUTE/PATH, or mysql://USER@localhost/DATABASE
    # (the unix socket) with options: option_file, unix_socket, ssl_ca, ssl_cert, ssl_key
    # (store/mysql_settings.py).
    database: str = "sqlite:///var/lib/tracker-wsgi/tracker.sqlite"
    # The .torrent files this tracker serves (whitelist mode `directory`).
    torrent_dir: str = "/srv/torrents"
    # Public URL of the torrent directory; a bare /tracker redirects here.
    base_url: str = "http://www.example.com"
    # Seconds a client should wait between announces (sent with +-10% jitter).
    interval: int = 1800
    # Seconds a client must wait at least between announces.
    min_interval: int = 300
    # Peers sent when the client does not say `numwant`, and the most ever sent.
    numwant_default: int = 50
    numwant_max: int = 200
    # Seconds after its last announce that a peer is dropped (1.5 x interval, as the original).
    peer_timeout: int = 2700
    # Seconds between the host's writes of the announces its processes answered, and its
    # reads of what other hosts wrote: a peer announced to one host is handed out by the
    # others within about twice this (live.py).
    sync_interval: int = 5
    # The swarm state every process of this host shares (LMDB; hoststate.py): a directory
    # the tracker's user (www-data) may create and write, one per host and tracker. Soft
    # state: the database holds everything but its last sync_interval of announces.
    swarm_dir: str = "/var/lib/tracker-wsgi/swarms"
    # Answer a scrape that names no info_hash with every torrent.
    full_scrape: bool = False
    # Networks whose X-Forwarded-For is believed and whose clients may set `ip=`.
    trusted_proxies: tuple[Network, ...] = ()
    # `directory`: only torrents registered from .torrent files; `open`: any info hash.
    whitelist: str = "directory"
    # Where refresh writes bt_stats.inc and bt_rss.inc (writable by the tracker's user only).
    output_dir: str = "/var/lib/tracker-wsgi/output"
    # Seconds between refreshes (expiry, recount, rescan, include files).
    refresh_interval: int = 900
    # Secret a web refresh (/tracker?refresh) must send in an X-Refresh-Secret header;
    # empty: refresh over the web is off. Make one with `openssl rand -hex 32`.
    refresh_secret: str = ""
    # When set, a .torrent is registered only if it announces this URL.
    announce_url: str = ""
    # The admin's stats page templates: any of the files in tracker_wsgi/templates/
    # (bt_stats.html, bt_stats.css, ...) found here replace the packaged one. Empty: packaged.
    template_dir: str = ""
    # The lowest level logged to Apache's error log: "error", "warning" (what needs the
    # admin's eye) or "info" (also "ready" and every refresh's summary). logs.py.
    log_level: str = logs.DEFAULT_LEVEL
    # Also send log lines to the local syslog (/dev/log) with this facility: "local0" to
    # "local7", "daemon" or "user". Empty: Apache's error log only.
    syslog_facility: str = ""
    # Every bound on what clients can make a process hold or do, and the process's memory:
    # each is a key of its own in the file (max_swarms = ..., peers_per_address = ...), each
    # declared once, with its default, range and meaning, in limits.Limits.
    limits: Limits = Limits()


# Allowed ranges: (minimum, maximum) for each integer key but the limits (declared in limits.Limits).
_RANGES = {
    "interval": (60, 86400),
    "min_interval": (0, 86400),
    "numwant_default": (0, 1000),
    "numwant_max": (1, 1000),
    "peer_timeout": (60, 7 * 86400),
    "refresh_interval": (60, 86400),
    "sync_interval": (1, 60),
}
# A refresh secret must outlast years of guessing at the web refresh's rate limit: 32
# characters, and not a pattern such as "aaaa..." or "abab...".
MIN_SECRET_LENGTH = 32
MIN_SECRET_DISTINCT_CHARACTERS = 10  # `openssl rand -hex 32` has 16; a repeated word has fewer


_KEYS = [f.name for f in fields(Config) if f.name != "limits"]  # the file's keys besides the limits'


def config_path(environ: dict[str, Any] | None = None) -> str | None:
    """The config file: the one the WSGI environ or the process environment names, else
    SYSTEM_CONFIG if it is there; None if none is."""
    named = (environ or {}).get(ENVIRON_KEY) or os.environ.get(ENV_VAR)
    if named:
        return named
    try:
        os.stat(SYSTEM_CONFIG)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        pass  # there, but this user may not look: load() says so, naming the file
    return SYSTEM_CONFIG


def load(path: str | None) -> Config:
    """Read and validate a config file; None gives the defaults."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data, path)


def from_dict(data: dict[str, Any], path: str = "<config>") -> Config:
    values: dict[str, Any] = {}
    limits: dict[str, int] = {}
    for key, value in data.items():
        if limit_range(key) is not None:
            limits[key] = _check(path, key, value, getattr(Limits(), key))
        elif key in _KEYS:
            values[key] = _check(path, key, value, getattr(Config, key))
        else:
            known = [*_KEYS, *(f.name for f in fields(Limits))]
            raise ConfigError(f"{path}: unknown key {key!r}; known keys: {', '.join(known)}")
    config = Config(**values, limits=Limits(**limits))
    if config.numwant_default > config.numwant_max:
        raise ConfigError(
            f"{path}: numwant_default = {config.numwant_default} is above numwant_max = "
            f"{config.numwant_max}; lower it or raise numwant_max"
        )
    if config.min_interval > config.interval:
        raise ConfigError(
            f"{path}: min_interval = {config.min_interval} is above interval = {config.interval}"
        )
    return config


def _check(path: str, key: str, value: Any, default: Any) -> Any:
    def bad(allowed: str) -> ConfigError:
        return ConfigError(f"{path}: {key} = {value!r} is not allowed; {key} must be {allowed}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        low, high = limit_range(key) or _RANGES[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise bad(f"a whole number from {low} to {high}")
        return value
    if key == "trusted_proxies":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad('a list of networks, like ["127.0.0.1/32", "10.0.0.0/8"]')
        try:
            return parse_networks(value)
        except ValueError as exc:
            raise bad(f'a list of networks, like ["127.0.0.1/32", "10.0.0.0/8"] ({exc})') from None
    if not isinstance(value, str):
        raise bad("a string")
    if key == "whitelist" and value not in WHITELIST_MODES:
        raise bad(" or ".join(repr(m) for m in WHITELIST_MODES))
    if key == "database":
        _check_database(path, value, bad)
    if key in ("torrent_dir", "output_dir", "swarm_dir") and not os.path.isabs(value):
        raise bad("an absolute path")
    if key == "template_dir" and value and not os.path.isabs(value):
        raise bad("empty (the packaged templates) or an absolute path")
    if key == "log_level" and value not in logs.LEVELS:
        raise bad(" or ".join(repr(level) for level in logs.LEVELS))
    if key == "syslog_facility" and value and value not in logs.SYSLOG_FACILITIES:
        raise bad("empty (no syslog) or one of " + ", ".join(repr(f) for f in logs.SYSLOG_FACILITIES))
    if key == "refresh_secret" and value and (
        len(value) < MIN_SECRET_LENGTH or len(set(value)) < MIN_SECRET_DISTINCT_CHARACTERS
    ):
        # The value itself stays out of the message: it would be in the error log.
        raise ConfigError(
            f"{path}: refresh_secret is too weak (fewer than {MIN_SECRET_LENGTH} characters or "
            f"{MIN_SECRET_DISTINCT_CHARACTERS} different ones); make one with `openssl rand -hex 32`, "
            f"or leave it empty to turn web refresh off"
        )
    return value


def _check_database(path: str, value: str, bad) -> None:
    """The URL's form (files it names are read when the store opens)."""
    if not value.startswith(("sqlite:///", "mysql://")):
        raise bad("sqlite:///ABSOLUTE/PATH or mysql://USER@HOST/DATABASE")
    if value.startswith("mysql://"):
        from .store import masked  # the store package imports this module
        from .store.mysql_settings import parse_url

        try:
            parse_url(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: database = {masked(value)!r}: {exc}") from None
