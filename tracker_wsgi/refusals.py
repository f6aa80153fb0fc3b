"""Every way the tracker says no, in one table: for each refusal the `failure reason` a client
reads, whether it carries `retry in` (BEP 31), its HTTP status, and the short codes the
metrics count it by (`reason` of tracker_wsgi_failure_reasons_total; `outcome` of the
announces and scrapes). wsgi.py answers with it and metrics.py labels with it.

The core and the store raise typed refusals (model.py); the edge modules raise a
ClientError with a fixed text (protocol.py's parsing, wsgi.py's routes, refresh_auth.py).
`refusal_of` finds the row of either. It runs only when a request is refused: an answered
announce never comes here. Each row's bencoded answer is made once, here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import ClientError, PeerConflict, Shed, StoreUnavailable, TooManyPeers, TrackerFull, UnknownTorrent
from .protocol import (
    BAD_EVENT,
    BAD_INFO_HASH,
    BAD_IP,
    BAD_KEY,
    BAD_PEER_ID,
    BAD_PORT,
    BAD_TRACKER_ID,
    BUSY,
    FULL_SCRAPE_DISABLED,
    METHOD_NOT_ALLOWED,
    PEER_CONFLICT,
    QUERY_TOO_LONG,
    REPEATED_PARAMETER,
    SERVER_FAULT,
    TOO_MANY_HASHES,
    TOO_MANY_PEERS,
    TRACKER_FULL,
    UNKNOWN_PATH,
    UNKNOWN_TORRENT,
    _missing_or_bad,
    encode_failure,
)
from .refresh_auth import (
    REFRESH_BUSY,
    REFRESH_LOCKED_OUT,
    REFRESH_OFF,
    REFRESH_REFUSED,
    REFRESH_SECRET_IN_QUERY,
)

RETRY_IN_MINUTES = 1  # BEP 31: a database restart or a config fix takes about this long
# One wording for every way the database fails a request (its cause is the admin's: the log).
DATABASE_UNAVAILABLE = "The tracker's database is unavailable; please retry later."

# The `outcome` label of the announces and scrapes a refusal ends.
REFUSED = "refused"  # the client's mistake: a failure reason, no retry
BUSY_OUTCOME = "busy"  # a limit of the process: `retry in`
UNAVAILABLE = "unavailable"  # the database cannot be used now: `retry in`
FAULT = "fault"  # a fault of ours, logged: `retry in`
OUTCOMES = (REFUSED, BUSY_OUTCOME, UNAVAILABLE, FAULT)


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str  # the `reason` label: short, fixed, never request data
    text: str  # the failure reason
    outcome: str = REFUSED
    retry_in: int | None = None  # minutes
    status: str = "200 OK"  # a client's mistake is HTTP 200 with a failure reason (BEP 3)
    body: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "body", encode_failure(self.text, self.retry_in))


def _retry(code: str, text: str, outcome: str) -> Refusal:
    return Refusal(code, text, outcome, RETRY_IN_MINUTES)


UNKNOWN_PATH_REFUSAL = Refusal("unknown_path", UNKNOWN_PATH, status="404 Not Found")
METHOD_REFUSAL = Refusal("method_not_allowed", METHOD_NOT_ALLOWED, status="405 Method Not Allowed")
SHED = _retry("busy", BUSY, BUSY_OUTCOME)
DATABASE = _retry("database_unavailable", DATABASE_UNAVAILABLE, UNAVAILABLE)
SERVER_FAULT_REFUSAL = _retry("server_fault", SERVER_FAULT, FAULT)

REFUSALS: tuple[Refusal, ...] = (
    Refusal("unknown_torrent", UNKNOWN_TORRENT),
    Refusal("peer_conflict", PEER_CONFLICT),
    Refusal("too_many_peers", TOO_MANY_PEERS),
    Refusal("tracker_full", TRACKER_FULL),
    Refusal("bad_info_hash", BAD_INFO_HASH),
    Refusal("bad_peer_id", BAD_PEER_ID),
    Refusal("bad_port", BAD_PORT),
    Refusal("bad_event", BAD_EVENT),
    Refusal("bad_ip", BAD_IP),
    Refusal("bad_key", BAD_KEY),
    Refusal("bad_tracker_id", BAD_TRACKER_ID),
    *(Refusal(f"bad_{name}", _missing_or_bad(name)) for name in ("uploaded", "downloaded", "left", "numwant")),
    Refusal("too_many_hashes", TOO_MANY_HASHES),
    Refusal("query_too_long", QUERY_TOO_LONG),
    Refusal("repeated_parameter", REPEATED_PARAMETER),
    Refusal("full_scrape_disabled", FULL_SCRAPE_DISABLED),
    UNKNOWN_PATH_REFUSAL,
    METHOD_REFUSAL,
    Refusal("refresh_off", REFRESH_OFF),
    Refusal("refresh_refused", REFRESH_REFUSED),
    Refusal("refresh_secret_in_query", REFRESH_SECRET_IN_QUERY),
    Refusal("refresh_locked_out", REFRESH_LOCKED_OUT),
    Refusal("refresh_busy", REFRESH_BUSY),
    SHED,
    DATABASE,
    SERVER_FAULT_REFUSAL,
)
# A ClientError raised with a text no row has (a new one, not added here yet): still a
# fixed label, so the metrics stay a small set; tests/test_refusals.py finds such texts.
OTHER = Refusal("other", "")

_BY_TYPE: dict[type[BaseException], Refusal] = {
    UnknownTorrent: REFUSALS[0],
    PeerConflict: REFUSALS[1],
    TooManyPeers: REFUSALS[2],
    TrackerFull: REFUSALS[3],
    StoreUnavailable: DATABASE,
}
_BY_TEXT: dict[str, Refusal] = {refusal.text: refusal for refusal in REFUSALS}


def refusal_of(exc: BaseException) -> Refusal:
    """The row that answers a request which raised `exc`; SERVER_FAULT_REFUSAL for anything
    that is not a refusal (a fault of ours)."""
    refusal = _BY_TYPE.get(type(exc))
    if refusal is not None:
        return refusal
    if isinstance(exc, Shed):
        # Shed because the database cannot say (live.py: a peer the view does not hold):
        # the client hears the cause, as every other request that met the outage does.
        return DATABASE if isinstance(exc.__cause__, StoreUnavailable) else SHED
    if isinstance(exc, ClientError):
        return _BY_TEXT.get(exc.reason) or Refusal(OTHER.code, exc.reason)
    if isinstance(exc, StoreUnavailable):
        return DATABASE
    return SERVER_FAULT_REFUSAL


def outage_of(exc: BaseException) -> StoreUnavailable | None:
    """The database outage behind a refusal, if that is what it was (for the log)."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, Shed) and isinstance(exc.__cause__, StoreUnavailable):
        return exc.__cause__
    return None
