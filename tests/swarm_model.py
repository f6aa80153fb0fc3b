"""One swarm as a single-process tracker keeps it: the truth every topology must agree with
(issue #18, tests/test_one_truth.py). Pure and small on purpose: a dict of peers and a
completion count, each rule written out once, so that a reader can check it against
tracker_wsgi/swarm.py and the store's completion mark (store/announce.py) line by line.

Rules (swarm.py, store/announce.py):
- The key rule: an announce for a known peer_id from another address is refused unless it
  carries the key the peer registered (a peer that registered none cannot move).
- The key kept: the announce's, else the one the peer registered.
- A completion: `completed` with left=0, or a peer known as a leecher (left > 0) reporting
  left=0 on any event, `stopped` included. It is counted once while the peer is in the
  swarm (the mark is on its row); a peer that stopped and came back is a new peer.
- `stopped` takes the peer out (after counting its completion); a `stopped` of an unknown
  peer changes nothing.
- States: `paused` (BEP 21) is a partial seed, left=0 a seed, else a leecher. complete =
  seeds, incomplete = leechers and partial seeds.
- An answer hands out every other peer a small swarm has (numwant is far above the swarm's
  size), only leechers to a seed or a partial seed, nobody to a `stopped`.
"""

from __future__ import annotations

from typing import NamedTuple

LEECHER, SEED, PARTIAL = "leecher", "seed", "partial seed"


class ModelPeer(NamedTuple):
    ip: bytes  # packed IPv4
    port: int
    key: bytes | None
    left: int
    state: str
    completed: bool  # its completion is counted

    @property
    def compact(self) -> bytes:
        return self.ip + self.port.to_bytes(2, "big")


class ModelAnswer(NamedTuple):
    refused: bool  # the key rule refused it: nothing changed
    complete: int
    incomplete: int
    downloaded: int
    peers: frozenset[bytes]  # compact forms


def state_of(event: str, left: int) -> str:
    if event == "paused":
        return PARTIAL
    return SEED if left == 0 else LEECHER


class SwarmModel:
    def __init__(self) -> None:
        self.peers: dict[bytes, ModelPeer] = {}
        self.downloaded = 0

    def announce(self, peer_id: bytes, ip: bytes, port: int, left: int, event: str, key: bytes | None) -> ModelAnswer:
        """Apply one announce (event: "", started, completed, stopped or paused); its answer."""
        known = self.peers.get(peer_id)
        if known is not None and known.ip != ip and (known.key is None or known.key != key):
            return ModelAnswer(True, 0, 0, 0, frozenset())
        if event == "stopped" and known is None:
            return self.answer(None, "stopped")
        finished = left == 0 and (event == "completed" or (known is not None and known.left > 0))
        if finished and not (known is not None and known.completed):
            self.downloaded += 1
        if event == "stopped":
            del self.peers[peer_id]
            return self.answer(None, "stopped")
        self.peers[peer_id] = ModelPeer(
            ip, port, key if key is not None else (known.key if known is not None else None), left,
            state_of(event, left), finished or (known is not None and known.completed))
        return self.answer(peer_id, event)

    def answer(self, asker: bytes | None, event: str) -> ModelAnswer:
        seeds = sum(p.state == SEED for p in self.peers.values())
        return ModelAnswer(False, seeds, len(self.peers) - seeds, self.downloaded,
                           frozenset() if event == "stopped" else self.handed_to(asker))

    def handed_to(self, asker: bytes | None) -> frozenset[bytes]:
        """What an answer to `asker` (a member) holds: the other peers, only leechers to a
        seed or partial seed."""
        wants_seeds = asker is None or self.peers[asker].state == LEECHER
        return frozenset(p.compact for peer_id, p in self.peers.items()
                         if peer_id != asker and (wants_seeds or p.state == LEECHER))

    def stats(self) -> tuple[int, int, int]:
        """(complete, incomplete, downloaded), as a scrape says them."""
        answer = self.answer(None, "")
        return answer.complete, answer.incomplete, answer.downloaded
