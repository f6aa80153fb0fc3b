"""tracker_wsgi.refusals: the one table of every refusal's words, `retry in`, status and
metrics labels (issue 19: wsgi.py and metrics.outcome classified errors apart, and the
`reason` label was the whole English sentence)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from bencoder import bdecode

from tracker_wsgi.model import (
    ClientError,
    PeerConflict,
    Shed,
    StoreUnavailable,
    TooManyPeers,
    TrackerFull,
    UnknownTorrent,
)
from tracker_wsgi.protocol import BUSY, SERVER_FAULT, UNKNOWN_TORRENT
from tracker_wsgi.refusals import (
    DATABASE_UNAVAILABLE,
    OTHER,
    OUTCOMES,
    REFUSALS,
    RETRY_IN_MINUTES,
    outage_of,
    refusal_of,
)

PACKAGE = Path(__file__).resolve().parent.parent / "tracker_wsgi"


def assigned_constants(tree: ast.AST, variable: str) -> list[str]:
    """The names a local variable is given from (`failure, why = REFRESH_REFUSED, ...`)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                         and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                names += [value.id if isinstance(value, ast.Name) else ast.unparse(value)
                          for name, value in pairs if getattr(name, "id", None) == variable]
    return names


def raised_texts() -> dict[str, str]:
    """Every text the package raises a ClientError with: {text: where}. Read from the source,
    so a new refusal without a row here fails this test rather than counting as `other`."""
    texts = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__main__.py":
            continue  # importing it runs the command line
        tree = ast.parse(path.read_text())
        module = importlib.import_module("tracker_wsgi." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ClientError" and node.args:
                arg = node.args[0]
                where = f"{path.name}:{node.lineno}"
                if isinstance(arg, ast.Name) and isinstance(getattr(module, arg.id, None), str):
                    texts[getattr(module, arg.id)] = where
                elif isinstance(arg, ast.Name) and (assigned := assigned_constants(tree, arg.id)):
                    texts.update({getattr(module, name, name): where for name in assigned})
                elif isinstance(arg, ast.Call) and getattr(arg.func, "id", None) == "_missing_or_bad":
                    continue  # its names: test_every_counter_has_a_row
                else:
                    texts[ast.unparse(arg)] = where  # a text the table cannot know: fails below
    return texts


def test_every_text_raised_has_a_row():
    table = {refusal.text for refusal in REFUSALS}
    missing = {text: where for text, where in raised_texts().items() if text not in table}
    assert missing == {}, "add a row to refusals.REFUSALS for each"
    assert len(raised_texts()) >= 15


def test_every_counter_has_a_row():
    source = (PACKAGE / "protocol.py").read_text()
    counters = set(re.findall(r'_counter\(fields, b"(\w+)"', source))
    assert counters and {f"bad_{name}" for name in counters} <= {refusal.code for refusal in REFUSALS}


def test_codes_are_short_unique_labels_and_texts_unique():
    codes = [refusal.code for refusal in REFUSALS]
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]{2,30}", code) for code in codes), codes
    texts = [refusal.text for refusal in REFUSALS]
    assert len(set(texts)) == len(texts)
    assert {refusal.outcome for refusal in REFUSALS} <= set(OUTCOMES)


def test_each_body_is_the_bencoded_failure_with_retry_in_where_asking_again_may_work():
    for refusal in REFUSALS:
        expected = {b"failure reason": refusal.text.encode()}
        if refusal.outcome != "refused":
            expected[b"retry in"] = RETRY_IN_MINUTES
        assert bdecode(refusal.body) == expected, refusal.code


@pytest.mark.parametrize("exc, code, outcome", [
    (UnknownTorrent(), "unknown_torrent", "refused"),
    (PeerConflict(), "peer_conflict", "refused"),
    (TooManyPeers(), "too_many_peers", "refused"),
    (TrackerFull(), "tracker_full", "refused"),
    (ClientError(UNKNOWN_TORRENT), "unknown_torrent", "refused"),
    (ClientError("Missing or invalid left: it must be a non-negative whole number."), "bad_left", "refused"),
    (ClientError("A text no row has."), OTHER.code, "refused"),
    (Shed("peers"), "busy", "busy"),
    (StoreUnavailable("down"), "database_unavailable", "unavailable"),
    (ValueError("bug"), "server_fault", "fault"),
])
def test_refusal_of(exc, code, outcome):
    refusal = refusal_of(exc)
    assert (refusal.code, refusal.outcome) == (code, outcome)


def test_a_request_shed_because_the_database_cannot_say_hears_the_database_wording():
    """Issue 19: with the database down, a completion was told "busy" while an unknown swarm
    was told "temporarily unavailable". One cause, one wording."""
    outage = StoreUnavailable("down")
    try:
        try:
            raise outage
        except StoreUnavailable as exc:
            raise Shed("a peer the view does not hold") from exc
    except Shed as shed:
        assert refusal_of(shed).text == refusal_of(outage).text == DATABASE_UNAVAILABLE
        assert outage_of(shed) is outage
    assert refusal_of(Shed("peers")).text == BUSY
    assert outage_of(Shed("peers")) is None
    assert len({DATABASE_UNAVAILABLE, BUSY, SERVER_FAULT}) == 3
