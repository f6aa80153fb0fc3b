"""Who may run a refresh over the web (`/tracker?refresh`): the configured secret, where a
request may carry it, and how guessing is held back.

The original ran `refresh` for anyone who asked; ours needs `refresh_secret`, in an
X-Refresh-Secret header, never the URL (access logs keep URLs) and never a body (Apache
refuses every request body under /tracker unread: apache_conf.LOCATION_BODY).
It is compared in constant time (hmac.compare_digest).

Guessing. The secret has at least 128 bits (config.MIN_SECRET_LENGTH hex digits), so no
rate of guessing finds it; the limits below keep a guesser from costing the host anything
and from locking the admin out (issue 17: one limit for all clients let one guessing
address keep the right secret from every other address refused):
- Per address (limits.address_key: an IPv4 address or an IPv6 /64), FAILURES_PER_ADDRESS
  wrong secrets a minute are checked; then that address's attempts are refused unread until
  the minute turns. Every other address is still checked.
- All addresses together, FAILURES_PER_MINUTE wrong secrets a minute are checked; past that
  (a flood from many addresses) only addresses that gave the right secret before are still
  checked, the rest refused unread until the minute turns. So checks stay bounded however
  many addresses guess, and the admin's usual address, and the command line's
  `tracker-wsgi refresh` (no web at all), still work.
Only wrong secrets count, so the address table holds at most FAILURES_PER_MINUTE addresses.
Each process keeps its own counts (the shipped snippet runs two). A refusal is logged as one
warning, then counted (faultlog.FaultLog.notice): a flood writes two lines a minute.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .faultlog import FaultLog
from .limits import address_key
from .model import ClientError
from .netaddr import unpack_ip

REFRESH_OFF = "Refresh over the web is off: set refresh_secret in the tracker's config file."
REFRESH_REFUSED = "Wrong or missing refresh secret."
REFRESH_SECRET_IN_QUERY = (
    "The refresh secret must not be in the URL (access logs keep URLs): "
    "send it in an X-Refresh-Secret header"
)
REFRESH_LOCKED_OUT = "Too many wrong refresh secrets; try again in a minute."
REFRESH_BUSY = "Another refresh is running; try again in a minute."
WEB_REFRESH_COMMANDS = {b"refresh": False, b"force-refresh": True}  # command -> force
REFRESH_SECRET_HEADER = "HTTP_X_REFRESH_SECRET"  # X-Refresh-Secret: S
# An admin mistypes a few times a minute; a guesser from one address gets this many checks.
FAILURES_PER_ADDRESS = 10
# Wrong secrets checked a minute, all addresses together (a flood from many addresses).
FAILURES_PER_MINUTE = 100
WINDOW_SECONDS = 60.0
# Addresses that gave the right secret, still checked past FAILURES_PER_MINUTE: the newest kept.
REMEMBERED_ADDRESSES = 16
REFUSALS = "refused web refreshes"  # the FaultLog kind of every refusal: one line, then counts


def web_refresh_command(fields: dict[bytes, bytes]) -> bytes | None:
    """`refresh` or `force-refresh` when the query asks for one (an announce never does)."""
    if b"info_hash" in fields:
        return None
    return next((c for c in WEB_REFRESH_COMMANDS if c in fields), None)


def given_secret(environ: dict[str, Any], fields: dict[bytes, bytes]) -> tuple[bytes, str]:
    """(the secret a web refresh came with, where it was): header, query or nowhere."""
    if b"secret" in fields:
        return fields[b"secret"], "query"
    header = environ.get(REFRESH_SECRET_HEADER)
    if header is not None:
        return header.encode("latin-1"), "header"  # PEP 3333: raw header bytes as latin-1
    return b"", "nowhere"


class RefreshGate:
    """Admits a web refresh with the secret (see the module). Thread-safe: check and count
    are one step, or 15 threads would overshoot the limits."""

    def __init__(self, secret: bytes, faults: FaultLog, clock: Callable[[], float] = time.monotonic):
        self._secret = secret
        self._faults = faults
        self._clock = clock
        self._lock = threading.Lock()
        self._window_ends = 0.0
        self._failures: dict[bytes, int] = {}  # address_key -> wrong secrets this minute
        self._failed = 0  # wrong secrets this minute, all addresses
        self._known: OrderedDict[bytes, None] = OrderedDict()  # address_keys that gave the secret, newest last

    def admit(self, client: bytes, given: bytes, where: str) -> None:
        """Return if `given` is the secret; else raise ClientError with the reason to answer.
        `client` is the packed address the request came from."""
        key = address_key(client)
        with self._lock:
            now = self._clock()
            if now >= self._window_ends:
                self._failures.clear()
                self._failed = 0
                self._window_ends = now + WINDOW_SECONDS
            failures = self._failures.get(key, 0)
            if failures >= FAILURES_PER_ADDRESS:
                failure, why = REFRESH_LOCKED_OUT, (f"refused unread: {FAILURES_PER_ADDRESS} wrong secrets from "
                                                    f"its address within a minute")
            elif self._failed >= FAILURES_PER_MINUTE and key not in self._known:
                failure, why = REFRESH_LOCKED_OUT, (f"refused unread: {FAILURES_PER_MINUTE} wrong secrets from "
                                                    f"all addresses within a minute")
            else:
                if where == "query":
                    failure, why = REFRESH_SECRET_IN_QUERY, (
                        "secret in the URL, refused unread (it is in the access log now: "
                        "if it was the real one, change refresh_secret)")
                elif hmac.compare_digest(given, self._secret):
                    self._known[key] = None
                    self._known.move_to_end(key)
                    if len(self._known) > REMEMBERED_ADDRESSES:
                        self._known.popitem(last=False)
                    return
                else:
                    failure, why = REFRESH_REFUSED, f"wrong secret in the {where}" if given else "no secret"
                self._failures[key] = failures + 1
                self._failed += 1
        self._faults.notice(REFUSALS, f"web refresh refused from {unpack_ip(client)}: {why}")
        raise ClientError(failure)
