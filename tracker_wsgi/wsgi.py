"""The WSGI application: environ in, bencoded bytes out. Thin glue and the error boundary.

Under mod_wsgi the `.wsgi` shim imports `application` when a daemon process starts. The
config path arrives with the first request (SetEnv reaches only the WSGI environ), so the
tracker is built then, once per process, under a lock; every later request reuses it.

Every answer under /tracker is bencoded: a client's mistake is HTTP 200 with a `failure
reason` (an unknown path 404, a method other than GET or HEAD 405), our own fault is
logged with its traceback to Apache's error log and answered with a `failure reason` plus
`retry in` (BEP 31); a database outage is logged as one line naming its cause. refusals.py
holds every refusal's words, `retry in`, status and metrics labels. Nothing internal reaches
the client. Faults are logged at a bounded rate (faultlog.py): one line or traceback, then
counts. Where log lines go, and at which level, is set up once the config is read (logs.py).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import config as config_module
from . import logs
from . import metrics as metrics_module
from .config import Config, ConfigError
from .faultlog import FaultLog, _one_line
from .gate import DB_QUEUE_SECONDS, DB_WAITERS
from .limits import MemoryGuard, apache_process_group
from .live import HostSwarms
from .metrics import ANNOUNCE, FAILURE, OK, SCRAPE, Counts, Metrics
from .model import ClientError, Shed, StoreUnavailable
from .netaddr import client_address, is_trusted
from .protocol import (
    FULL_SCRAPE_DISABLED,
    AnnouncePolicy,
    encode_announce,
    encode_scrape,
    jittered_interval,
    parse_announce,
    parse_query,
    parse_scrape,
)
from .refresh import BackgroundRefresh, RefreshBusy, refresh
from .refresh_auth import (
    REFRESH_BUSY,
    REFRESH_OFF,
    WEB_REFRESH_COMMANDS,
    RefreshGate,
    given_secret,
    web_refresh_command,
)
from .refusals import (
    DATABASE,
    METHOD_REFUSAL,
    SERVER_FAULT_REFUSAL,
    SHED,
    UNKNOWN_PATH_REFUSAL,
    Refusal,
    outage_of,
    refusal_of,
)
from .store import Store, open_configured

# How long a request waits for the database before it answers `retry in`: announces are
# answered from memory, so only a swarm not held yet, a completion or a peer the view does
# not hold wait for it at all. The flush thread's batches wait as long as they must.
REQUEST_WAIT_SECONDS = 2.0
# Connections of the batch store: one for the flush thread and one for a refresh.
BATCH_POOL_SIZE = 2

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
        self.faults = faults or _fault_log()
        self.store = store
        self.batch_store = batch_store or store
        self.clock = clock
        self.rng = rng or random.Random()
        self.swarms = HostSwarms(store, config.sync_interval, config.swarm_dir, rng=self.rng, clock=clock, limits=config.limits,
                                 batch_store=self.batch_store, faults=self.faults,
                                 memory=MemoryGuard.for_process_group(apache_process_group(), config.limits.memory_limit))
        self.policy = AnnouncePolicy(config.numwant_default, config.numwant_max)
        self.refresh_gate = RefreshGate(config.refresh_secret.encode(), self.faults)
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

    def serve_metrics(self, metrics: Metrics) -> None:
        """Keep Prometheus metrics, shared with the other processes of this Apache (metrics.py)."""
        self.metrics = metrics
        metrics.serve(self.counts, self.swarms.held, [self.store, self.batch_store], self.config.sync_interval)
        self.swarms.on_flush = metrics.flushed

    def close(self) -> None:
        """Write the pending announces and close the stores' idle connections."""
        self.swarms.close()
        if self.metrics is not None:
            self.metrics.close()
        self.store.close()
        self.batch_store.close()

    def refuse(self, refusal: Refusal) -> Response:
        """The refusal's bencoded answer, counted by its code."""
        self.counts.add((FAILURE, refusal.code))
        return _answer(refusal.body, status=refusal.status)

    def handle(self, environ: dict[str, Any]) -> Response:
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD") and not (method == "POST" and self._is_web_refresh(environ)):
            status, headers, body = self.refuse(METHOD_REFUSAL)
            return status, headers + [("Allow", "GET, HEAD")], body
        route = self.routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            return self.refuse(UNKNOWN_PATH_REFUSAL)
        try:
            return route(environ)
        except (ClientError, Shed, StoreUnavailable) as exc:
            if outage_of(exc) is not None:
                self.faults.fault("database", "requests that need the database are answered `retry in`:")
            return self.refuse(refusal_of(exc))

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
        command = web_refresh_command(fields)
        if command is not None:
            return self.web_refresh(environ, fields, force=WEB_REFRESH_COMMANDS[command])
        return self._announce(environ, fields)

    def _is_web_refresh(self, environ: dict[str, Any]) -> bool:
        """Whether a request asks for a web refresh (`/tracker?refresh`), the one thing POST may do."""
        if self.routes.get(environ.get("PATH_INFO", "")) != self.announce_or_redirect:
            return False
        try:
            return web_refresh_command(parse_query(self._query(environ))) is not None
        except ClientError:
            return False

    def web_refresh(self, environ: dict[str, Any], fields: dict[bytes, bytes], force: bool) -> Response:
        """A refresh for whoever has the configured secret (refresh_auth.py)."""
        if not self.config.refresh_secret:
            raise ClientError(REFRESH_OFF)
        given, where = given_secret(environ, fields)
        self.refresh_gate.admit(self._client(environ), given, where)
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
            self.counts.add((ANNOUNCE, refusal_of(exc).outcome))
            raise
        self._announced()
        return _answer(body, BINARY if request.compact else TEXT)

    def scrape(self, environ: dict[str, Any]) -> Response:
        try:
            hashes = parse_scrape(self._query(environ))
            now = int(self.clock())
            files = self.swarms.scrape(hashes, now) if hashes else self.full_scrape(now)
        except Exception as exc:
            self.counts.add((SCRAPE, refusal_of(exc).outcome))
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
            last_refresh = None
            database_error = exc.explain() if isinstance(exc, StoreUnavailable) else _one_line(exc)
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


def _fault_log() -> FaultLog:
    """Faults as errors, notices (a refused web refresh) as warnings; each bounded."""
    return FaultLog(_log.error, warn=_log.warning)


def build_tracker(config: Config, faults: FaultLog | None = None) -> Tracker:
    """Open the store the config names (for the requests, and for the flush thread's
    batches) and make sure its tables exist."""
    # Connections per process: the requests' store needs one per thread StoreGate lets wait
    # for the database; the batch store BATCH_POOL_SIZE.
    return Tracker(config, open_configured(config, wait_seconds=REQUEST_WAIT_SECONDS, pool_size=DB_WAITERS),
                   batch_store=open_configured(config, pool_size=BATCH_POOL_SIZE), faults=faults)


class StillStarting(Exception):
    """Another thread of this process is building the tracker (its config read, its store
    opened and its tables checked, which a slow database can stretch to minutes)."""


class Application:
    """The WSGI callable. Builds its Tracker on first use, once per process. Under Apache it
    is made as the process starts (mod_wsgi preloads tracker.wsgi: WSGIImportScript, or a
    WSGIScriptAlias with both process-group and application-group), and so are the metrics,
    which count the process among those serving from then on."""

    def __init__(self, tracker: Tracker | None = None, background: BackgroundRefresh | None = None,
                 faults: FaultLog | None = None):
        self._metrics = metrics_module.start(_log.warning) if apache_process_group() is not None else None
        self._tracker = tracker
        self._background = background
        self.faults = faults or _fault_log()
        self._config_error: ConfigError | None = None
        self._logging: tuple[str, str] | None = None  # (log_level, syslog_facility) set up
        self._lock = threading.Lock()

    def _build(self, environ: dict[str, Any]) -> Tracker:
        # Requests that come while another thread builds wait as long as a request waits for
        # a database slot, then get `retry in`: never every thread of the process held for
        # the database's minutes (issue 18).
        if not self._lock.acquire(timeout=DB_QUEUE_SECONDS):
            raise StillStarting()
        try:
            return self._build_locked(environ)
        finally:
            self._lock.release()

    def _build_locked(self, environ: dict[str, Any]) -> Tracker:
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
        if self._metrics is not None:
            tracker.serve_metrics(self._metrics)
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
            status, headers, body = _answer(SERVER_FAULT_REFUSAL.body)
        except StillStarting:
            status, headers, body = _answer(SHED.body)  # not logged: the building thread logs
        except StoreUnavailable:
            # The tracker could not be built (its tables checked): one line naming the cause.
            # The next request tries again.
            path = config_module.config_path(environ)
            self.faults.fault("database", f"the tracker cannot start (config {path or '(defaults)'}):")
            status, headers, body = _answer(DATABASE.body)
        except Exception:
            # Not the request's path or query in the kind: kinds must stay a small fixed set.
            self.faults.fault("request", "unexpected fault answering a request:")
            tracker = self._tracker
            status, headers, body = (tracker.refuse(SERVER_FAULT_REFUSAL) if tracker is not None
                                     else _answer(SERVER_FAULT_REFUSAL.body))
        start_response(status, headers)
        if self._background is not None:
            self._background.poke()  # starts an overdue refresh in a thread; never waits
        return [body]


application = Application()
