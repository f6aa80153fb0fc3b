"""Where the tracker's log lines go: Apache's error log, and syslog if the admin asks.

Every module logs to its own logger under "tracker_wsgi" (`logging.getLogger(__name__)`);
this module decides, once per daemon process, what reaches the admin:

- Levels: ERROR is our own fault (a database outage, a bug; bounded by faultlog.py), WARNING
  needs the admin's eye (a refused web refresh, a skipped .torrent file, a recovery after an
  error), INFO is routine ("ready", "refreshed"). `log_level` in the config file picks the
  lowest shown; the default, "warning", keeps routine lines out of the error log.
- Apache's error log: mod_wsgi 6 offers `mod_wsgi.LogHandler`, which logs each record at its
  own Apache level ([wsgi:error], [wsgi:warn], [wsgi:info]), so Apache's `LogLevel` applies
  on top of ours. mod_wsgi 4 and 5 (Debian's and Ubuntu's packages) have none: what a
  daemon writes to stderr is logged at Apache's level error, so every line reads
  [wsgi:error] and our level is written in the message instead.
- syslog (`syslog_facility`): the same records, also sent to the local syslog socket with
  their level as the syslog priority, for hosts that collect logs centrally.

The command line keeps its own channel: its warnings go to stderr as its other messages do.
"""

from __future__ import annotations

import logging
import logging.handlers
import socket
import sys

PACKAGE = "tracker_wsgi"  # the logger every module's logger is a child of
LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}
DEFAULT_LEVEL = "warning"
# The facilities meant for programs like ours (RFC 5424 §6.2.1); the rest belong to the system.
SYSLOG_FACILITIES = ("user", "daemon", *(f"local{n}" for n in range(8)))
SYSLOG_SOCKET = "/dev/log"  # where syslog (rsyslog, systemd-journald) listens on Debian
SYSLOG_TAG = f"{PACKAGE}[%(process)d]: "  # RFC 3164 TAG[PID]: what journald and rsyslog parse

_package_logger = logging.getLogger(PACKAGE)
_log = logging.getLogger(__name__)


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (mod_wsgi replaces it at start,
    pytest for each test), as logging.lastResort does."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def to_error_log(level: str = DEFAULT_LEVEL, syslog_facility: str = "",
                 syslog_socket: str = SYSLOG_SOCKET) -> None:
    """Send the package's records at `level` and above to Apache's error log, and to syslog
    when a facility is given, in place of what an earlier call set up."""
    handlers = [_error_log_handler()]
    syslog = _syslog_handler(syslog_facility, syslog_socket) if syslog_facility else None
    if syslog is not None:
        handlers.append(syslog)
    _install(handlers, LEVELS[level])
    if syslog_facility and syslog is None:
        # An error, not a warning: with log_level = "error" a warning would not show, and an
        # admin who asked for syslog would never learn that nothing arrives there.
        _log.error("syslog_facility = %r: nothing listens on %s; logging to Apache's error log only "
                   "(start rsyslog or systemd-journald, or leave syslog_facility out)",
                   syslog_facility, syslog_socket)


def to_stderr(prefix: str) -> None:
    """The command line: warnings and errors on stderr, one line each, as its own messages."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
    _install([handler], logging.WARNING)


def _error_log_handler() -> logging.Handler:
    # Inside Apache, mod_wsgi puts its own module in sys.modules; outside, nothing is imported.
    apache_level_handler = getattr(sys.modules.get("mod_wsgi"), "LogHandler", None)
    if apache_level_handler is not None:
        handler = apache_level_handler()
        handler.setFormatter(logging.Formatter(f"{PACKAGE}: %(message)s"))
    else:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(f"{PACKAGE}: %(levelname)s: %(message)s"))
    return handler


def _syslog_handler(facility: str, address: str) -> logging.Handler | None:
    """A handler to the syslog socket, or None when nothing listens there (SysLogHandler
    itself would say nothing, then fail on every record)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(address)
        except OSError:
            return None
    # Datagrams, as /dev/log is on Debian: one record each, with no framing to get wrong.
    handler = logging.handlers.SysLogHandler(address, facility, socket.SOCK_DGRAM)
    handler.setFormatter(logging.Formatter(SYSLOG_TAG + "%(message)s"))
    return handler


def _install(handlers: list[logging.Handler], level: int) -> None:
    for old in list(_package_logger.handlers):
        _package_logger.removeHandler(old)
        old.close()
    for handler in handlers:
        _package_logger.addHandler(handler)
    _package_logger.setLevel(level)
    # Records still propagate to the root logger, which has no handler in the tracker's
    # processes unless an admin's own code adds one; the tests capture them there.
