"""The WSGI application: environ in, bencoded bytes out. Thin glue and the error boundary.

Under mod_wsgi the `.wsgi` shim imports `application` when a daemon process starts. The
config path arrives with the first request (SetEnv reaches only the WSGI environ), so the
tracker is built then, once per process, under a lock; every later request reuses it.

Every answer under /tracker is bencoded: a client's mistake is HTTP 200 with a `failure
reason`, our own fault is logged with its traceback to Apache's error log and answered
with a `failure reason` plus `retry in` (BEP 31). Nothing internal reaches the client.
Faults are logged at a bounded rate (faultlog.py): one traceback, then counts. Where log
lines go, and at which level, is set up once the config is read (logs.py).
"""

from __future__ import annotations

import hmac
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from . import config as config_module
from . import logs
from . import metrics as metrics_module
from .config import Config, ConfigError
from .faultlog import FaultLog, _one_line
from .limits import MemoryGuard, Shed, apache_process_group
from .model import ClientError, StoreUnavailable
from .netaddr import client_address, is_trusted, unpack_ip
from .protocol import (
    BUSY,
    METHOD_NOT_ALLOWED,
    SERVER_FAULT,
    UNKNOWN_PATH,
    AnnouncePolicy,
    encode_announce,
    encode_failure,
    encode_scrape,
    failure_reason,
    jittered_interval,
    parse_announce,
    parse_query,
    parse_scrape,
    FULL_SCRAPE_DISABLED,
)
from .live import DB_WAITERS, LiveSwarms
from .metrics import ANNOUNCE, FAILURE, OK, SCRAPE, Counts, Metrics, outcome
from .refresh import BackgroundRefresh, RefreshBusy, refresh
from .store import Store, open_configured

RETRY_IN_MINUTES = 1  # BEP 31: a database restart or a config fix takes about this long
# How long a request waits for the database before it answers `retry in`: announces are
# answered from memory, so only a swarm not held yet, a completion or a peer the view does
# not hold wait for it at all. The flush thread's batches wait as long as they must.
REQUEST_WAIT_SECONDS = 2.0
# Connections of the batch store: one for the flush thread and one for a refresh.
BATCH_POOL_SIZE = 2

REFRESH_OFF = "Refresh over the web is off: set refresh_secret in the tracker's config file."
REFRESH_REFUSED = "Wrong or missing refresh secret."
REFRESH_SECRET_IN_QUERY = (
    "The refresh secret must not be in the URL (access logs keep URLs): "
    "send it in an X-Refresh-Secret header or a POST body secret=..."
)
REFRESH_TOO_MANY = "too many failed refresh attempts; try again in a minute"
REFRESH_BUSY = "Another refresh is running; try again in a minute."
WEB_REFRESH_COMMANDS = {b"refresh": False, b"force-refresh": True}  # command -> force
REFRESH_SECRET_HEADER = "HTTP_X_REFRESH_SECRET"  # X-Refresh-Secret: S
MAX_REFRESH_BODY_BYTES = 1024  # `secret=` and a 64-hex-digit secret, with room to spare; never more is read
# Failed web refreshes a process takes per minute, all clients together; then it refuses every
# attempt unread until the oldest failure is a minute old. An admin mistypes a few times; a
# guesser gets 14,400 tries a day against a 32-character secret.
MAX_REFRESH_FAILURES = 10
REFRESH_FAILURE_WINDOW = 60.0  # seconds

Response = tuple[str, list[tuple[str, str]], bytes]
_log = logging.getLogger(__name__)

# Compact answers are binary; text ones may be compressed by mod_deflate (apache/).
BINARY = "application/octet-stream"
TEXT = "text/plain; charset=ISO-8859-1"
ANNOUNCED, SCRAPED = (ANNOUNCE, OK), (SCRAPE, OK)  # Counts keys of the usual answers
METRICS_OFF = b"Metrics are off in this process; Apache's error log says why.\n"


def _answer(body: bytes, content_type: str = TEXT, status: str = "200 OK") -> Response:
    """An answer with its length. Every body under /tracker is bencoded but a web refresh's report."""
    return status, [("Content-Type", content_type), ("Content-Length", str(len(body)))], body


class Tracker:
    """Everything a request needs, built once per process from the config."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        batch_store: Store | None = None,
        faults: FaultLog | None = None,
    ):
        self.config = config
        self.faults = faults or FaultLog(_log.error)
        self.store = store
        self.batch_store = batch_store or store
        self.clock = clock
        self.rng = rng or random.Random()
        self.swarms = LiveSwarms(store, config.sync_interval, rng=self.rng, clock=clock, limits=config.limits,
                                 batch_store=self.batch_store, faults=self.faults,
                                 memory=MemoryGuard.for_process_group(apache_process_group(), config.limits.memory_limit))
        self.policy = AnnouncePolicy(config.numwant_default, config.numwant_max)
        self.refresh_gate = RefreshGate(config.refresh_secret.encode())
        self.trusted = config.trusted_proxies
        self.redirect_to = config.base_url.rstrip("/") + "/"
        self.counts = Counts()
        self._announced, self._scraped = self.counts.tally(ANNOUNCED), self.counts.tally(SCRAPED)
        self.metrics: Metrics | None = None  # start_metrics, under Apache
        self.routes: dict[str, Callable[[dict[str, Any]], Response]] = {
            "": self.announce_or_redirect,
            "/": self.announce_or_redirect,
            "/announce": self.announce,
            "/scrape": self.scrape,
            # For monitoring, not clients: apache/tracker.conf lets only its hosts reach them.
            "/health": self.health,
            "/metrics": self.metrics_page,
        }
        # BEP 48: a scrape naming no info_hash lists every torrent, if the admin allows it.
        self.full_scrape = self.swarms.scrape_all if config.full_scrape else self._no_full_scrape

    def start_metrics(self) -> None:
        """Keep Prometheus metrics, shared with the other processes of this Apache (metrics.py)."""
        self.metrics = metrics_module.start(self.counts, self.swarms.held, [self.store, self.batch_store],
                                            self.config.sync_interval, _log.warning)
        if self.metrics is not None:
            self.swarms.on_flush = self.metrics.flushed

    def close(self) -> None:
        """Write the pending announces and close the stores' idle connections."""
        self.swarms.close()
        if self.metrics is not None:
            self.metrics.close()
        self.store.close()
        self.batch_store.close()

    def failure(self, reason: str, retry_in: int | None = None, status: str = "200 OK") -> Response:
        """A bencoded failure reason, counted by reason."""
        self.counts.add((FAILURE, reason))
        return _answer(encode_failure(reason, retry_in), status=status)

    def handle(self, environ: dict[str, Any]) -> Response:
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD") and not (method == "POST" and self._is_web_refresh(environ)):
            status, headers, body = self.failure(METHOD_NOT_ALLOWED, status="405 Method Not Allowed")
            return status, headers + [("Allow", "GET, HEAD")], body
        route = self.routes.get(environ.get("PATH_INFO", ""))
        try:
            if route is None:
                raise ClientError(UNKNOWN_PATH)
            return route(environ)
        except ClientError as exc:
            return self.failure(failure_reason(exc))
        except Shed:
            return self.failure(BUSY, RETRY_IN_MINUTES)
        except StoreUnavailable:
            self.faults.fault("database", "the database did not answer a request in time:")
            return self.failure(SERVER_FAULT, RETRY_IN_MINUTES)

    def _client(self, environ: dict[str, Any]) -> bytes:
        return client_address(environ["REMOTE_ADDR"], environ.get("HTTP_X_FORWARDED_FOR"), self.trusted)

    @staticmethod
    def _query(environ: dict[str, Any]) -> bytes:
        # PEP 3333: environ strings are the raw bytes as latin-1; undo that, never UTF-8.
        return environ.get("QUERY_STRING", "").encode("latin-1")

    def announce_or_redirect(self, environ: dict[str, Any]) -> Response:
        # A bare /tracker is the address people type: send them to the torrents, as the
        # original did. `?refresh` / `?force-refresh` is the original's install-by-URL.
        # Any other query is a client announcing at /tracker.
        if not environ.get("QUERY_STRING"):
            return "302 Found", [("Location", self.redirect_to), ("Content-Type", TEXT), ("Content-Length", "0")], b""
        fields = parse_query(self._query(environ))
        command = _web_refresh_command(fields)
        if command is not None:
            return self.web_refresh(environ, fields, force=WEB_REFRESH_COMMANDS[command])
        return self._announce(environ, fields)

    def _is_web_refresh(self, environ: dict[str, Any]) -> bool:
        """Whether a request asks for a web refresh (`/tracker?refresh`), the one thing POST may do."""
        if self.routes.get(environ.get("PATH_INFO", "")) != self.announce_or_redirect:
            return False
        try:
            return _web_refresh_command(parse_query(self._query(environ))) is not None
        except ClientError:
            return False

    def web_refresh(self, environ: dict[str, Any], fields: dict[bytes, bytes], force: bool) -> Response:
        """The original ran `refresh` for anyone who asked; ours needs the configured secret,
        in an X-Refresh-Secret header or a POST body, never the URL (access logs keep URLs)."""
        if not self.config.refresh_secret:
            raise ClientError(REFRESH_OFF)
        given, where = _given_refresh_secret(environ, fields)
        self.refresh_gate.admit(unpack_ip(self._client(environ)), given, where)
        self.swarms.flush()  # the report then counts every announce this process answered
        try:
            report = refresh(self.config, self.batch_store, force=force)  # long statements: no short waits
        except RefreshBusy:
            raise ClientError(REFRESH_BUSY) from None
        if report.ran and self.metrics is not None:
            self.metrics.refreshed(report.seconds)
        text = "\n".join([report.summary(), *report.warnings, ""])
        return _answer(text.encode("utf-8"), "text/plain; charset=utf-8")

    def announce(self, environ: dict[str, Any]) -> Response:
        return self._announce(environ, parse_query(self._query(environ)))

    def _announce(self, environ: dict[str, Any], fields: dict[bytes, bytes]) -> Response:
        try:
            client_ip = self._client(environ)
            request = parse_announce(fields, client_ip, self.policy, is_trusted(client_ip, self.trusted))
            result = self.swarms.announce(request, int(self.clock()))
            interval = jittered_interval(self.config.interval, self.rng)
            body = encode_announce(request, result, interval, self.config.min_interval)
        except Exception as exc:
            self.counts.add((ANNOUNCE, outcome(exc)))
            raise
        self._announced()
        return _answer(body, BINARY if request.compact else TEXT)

    def scrape(self, environ: dict[str, Any]) -> Response:
        try:
            hashes = parse_scrape(self._query(environ))
            now = int(self.clock())
            files = self.swarms.scrape(hashes, now) if hashes else self.full_scrape(now)
        except Exception as exc:
            self.counts.add((SCRAPE, outcome(exc)))
            raise
        self._scraped()
        return _answer(encode_scrape(files))

    def health(self, environ: dict[str, Any]) -> Response:
        """JSON: the database answers (through the requests' gate and short wait, so a hung
        database holds this for seconds at most), the last refresh, the announces waiting to
        be written in every process; 503 when the tracker cannot do its work."""
        try:
            last_refresh, database_error = self.swarms.ask_store(self.store.last_refresh), None
        except Exception as exc:  # whatever stops the database answering is the finding
            last_refresh, database_error = None, _one_line(exc)
        if self.metrics is not None:
            host = self.metrics.host()
        else:
            host = metrics_module.Host.of(self.swarms.held())
        healthy, report = metrics_module.health(database_error, last_refresh, self.clock(),
                                                self.config.refresh_interval, host, self.config.limits.max_unwritten)
        return _answer(metrics_module.health_body(report), "application/json",
                       "200 OK" if healthy else "503 Service Unavailable")

    def metrics_page(self, environ: dict[str, Any]) -> Response:
        """Prometheus's scrape: every process's counts and gauges, summed."""
        if self.metrics is None:
            return _answer(METRICS_OFF, "text/plain; charset=utf-8", "503 Service Unavailable")
        return _answer(self.metrics.exposition(), metrics_module.EXPOSITION_TYPE)

    @staticmethod
    def _no_full_scrape(now: int) -> dict:
        raise ClientError(FULL_SCRAPE_DISABLED)


def _web_refresh_command(fields: dict[bytes, bytes]) -> bytes | None:
    """`refresh` or `force-refresh` when the query asks for one (an announce never does)."""
    if b"info_hash" in fields:
        return None
    return next((c for c in WEB_REFRESH_COMMANDS if c in fields), None)


def _given_refresh_secret(environ: dict[str, Any], fields: dict[bytes, bytes]) -> tuple[bytes, str]:
    """(the secret a web refresh came with, where it was): header, POST body, query or nowhere."""
    if b"secret" in fields:
        return fields[b"secret"], "query"
    header = environ.get(REFRESH_SECRET_HEADER)
    if header is not None:
        return header.encode("latin-1"), "header"  # PEP 3333: raw header bytes as latin-1
    if environ.get("REQUEST_METHOD") == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)  # Apache refuses one that is not a number
        # Read only what CONTENT_LENGTH announces, never past MAX_REFRESH_BODY_BYTES: without
        # a length (none, or a chunked body) nothing is read, so nothing can block on it.
        if length > 0:
            body = environ["wsgi.input"].read(min(length, MAX_REFRESH_BODY_BYTES))
            if b"secret" in (posted := parse_query(body)):
                return posted[b"secret"], "POST body"
    return b"", "nowhere"


class RefreshGate:
    """Who may run a web refresh. The secret is compared in constant time; a secret in the
    URL is refused unread. Failures are limited per process (MAX_REFRESH_FAILURES a
    minute, all clients together), so guessing is hopeless, and each is logged (a warning)
    with the client's address; past the limit every attempt is refused unread and only counted."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.monotonic):
        self._secret = secret
        self._clock = clock
        self._failures: deque[float] = deque(maxlen=MAX_REFRESH_FAILURES)  # when, oldest first
        self._refused_unread = 0  # attempts refused since the limit was reached
        self._lock = threading.Lock()  # check and record as one step, or 15 threads overshoot the limit

    def admit(self, client: str, given: bytes, where: str) -> None:
        """Return if `given` is the secret; else raise ClientError with the reason to answer."""
        with self._lock:
            now = self._clock()
            limited = (len(self._failures) == MAX_REFRESH_FAILURES
                       and now - self._failures[0] < REFRESH_FAILURE_WINDOW)
            if limited:
                if self._refused_unread == 0:
                    _log.warning(f"web refresh: {MAX_REFRESH_FAILURES} failed attempts within "
                                 f"{REFRESH_FAILURE_WINDOW:.0f} s; refusing every attempt for up to a minute")
                self._refused_unread += 1
                raise ClientError(REFRESH_TOO_MANY)
            if self._refused_unread:
                _log.warning(f"web refresh: attempts refused while over the limit: {self._refused_unread}")
                self._refused_unread = 0
            if where == "query":
                failure, why = REFRESH_SECRET_IN_QUERY, (
                    "secret in the URL, refused unread (it is in the access log now: "
                    "if it was the real one, change refresh_secret)")
            elif hmac.compare_digest(given, self._secret):
                return
            else:
                failure, why = REFRESH_REFUSED, f"wrong secret in the {where}" if given else "no secret"
            self._failures.append(now)
            _log.warning(f"web refresh refused from {client}: {why}")
        raise ClientError(failure)


def build_tracker(config: Config, faults: FaultLog | None = None) -> Tracker:
    """Open the store the config names (for the requests, and for the flush thread's
    batches) and make sure its tables exist."""
    # Connections per process: the requests' store needs one per thread StoreGate lets wait
    # for the database; the batch store BATCH_POOL_SIZE.
    return Tracker(config, open_configured(config, wait_seconds=REQUEST_WAIT_SECONDS, pool_size=DB_WAITERS),
                   batch_store=open_configured(config, pool_size=BATCH_POOL_SIZE), faults=faults)


class Application:
    """The WSGI callable. Builds its Tracker on first use, once per process."""

    def __init__(self, tracker: Tracker | None = None, background: BackgroundRefresh | None = None,
                 faults: FaultLog | None = None):
        self._tracker = tracker
        self._background = background
        self.faults = faults or FaultLog(_log.error)
        self._config_error: ConfigError | None = None
        self._logging: tuple[str, str] | None = None  # (log_level, syslog_facility) set up
        self._lock = threading.Lock()

    def _build(self, environ: dict[str, Any]) -> Tracker:
        with self._lock:
            if self._tracker is not None:
                return self._tracker
            if self._config_error is not None:
                raise self._config_error
            path = config_module.config_path(environ)
            config = None
            try:
                config = config_module.load(path)
                self._log_to(config.log_level, config.syslog_facility)
                tracker = build_tracker(config, self.faults)
            except ConfigError as exc:
                # Logged once; a fixed file takes effect when the daemon restarts
                # (touch the .wsgi file). Store errors are not kept: the next request retries.
                self._config_error = exc
                if config is None:
                    self._log_to(logs.DEFAULT_LEVEL, "")  # the file's own log_level is unknown
                _log.error(f"configuration error: {exc}")
                raise
            tracker.start_metrics()
            _log.info(
                f"ready: config {path or '(defaults)'}, store {type(tracker.store).__name__} "
                f"over {tracker.store.connection_type()}"
            )
            observe = tracker.metrics.refreshed if tracker.metrics is not None else None
            self._background = BackgroundRefresh(tracker.config, tracker.batch_store, observe)
            self._tracker = tracker
            return tracker

    def _log_to(self, level: str, syslog_facility: str) -> None:
        # Once: a daemon that cannot reach its database at start reads its config again on
        # every request, and handlers swapped under other threads could lose their lines.
        if self._logging != (level, syslog_facility):
            logs.to_error_log(level, syslog_facility)
            self._logging = (level, syslog_facility)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            tracker = self._tracker or self._build(environ)
            status, headers, body = tracker.handle(environ)
        except ConfigError:
            status, headers, body = _answer(encode_failure(SERVER_FAULT, RETRY_IN_MINUTES))
        except Exception:
            # Not the request's path or query in the kind: kinds must stay a small fixed set.
            self.faults.fault("request", "unexpected fault answering a request:")
            tracker = self._tracker
            status, headers, body = (tracker.failure(SERVER_FAULT, RETRY_IN_MINUTES) if tracker is not None
                                     else _answer(encode_failure(SERVER_FAULT, RETRY_IN_MINUTES)))
        start_response(status, headers)
        if self._background is not None:
            self._background.poke()  # starts an overdue refresh in a thread; never waits
        return [body]


application = Application()
