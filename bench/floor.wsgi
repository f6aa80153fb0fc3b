# The floor: the least any Python announce handler does, without the tracker's rules.
# It splits the query, decodes info_hash and peer_id, checks the numbers, records the peer
# in a dict of swarms, slices 50 compact peers from a pool and formats the answer, about
# 5 us in a tight loop. `bench/run.py --floor` serves it like the ceiling (same snippet)
# and prints its ratio beside the tracker's: no handler written in Python does less.
import codecs
import random

POOL = [bytes([127, 0, 0, 1]) + (1024 + i).to_bytes(2, "big") for i in range(3000)]
SCRAPE = b"d5:filesd20:" + bytes(20) + b"d8:completei1e10:downloadedi0e10:incompletei2eeee"
swarms: dict = {}
pending: dict = {}
rng = random.Random()


def _decode(value):
    return codecs.escape_decode(value.replace(b"\\", b"\\\\").replace(b"%", b"\\x"))[0]


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/scrape":
        body = SCRAPE
    else:
        fields = {}
        for field in environ["QUERY_STRING"].encode("latin-1").split(b"&"):
            key, _, value = field.partition(b"=")
            fields[key] = _decode(value) if 37 in value else value
        info_hash, peer_id = fields[b"info_hash"], fields[b"peer_id"]
        left = int(fields[b"left"]) if fields[b"left"].isdigit() else 0
        port = int(fields[b"port"]) if fields[b"port"].isdigit() else 0
        members = swarms.setdefault(info_hash, {})
        members[peer_id] = (port, left, fields.get(b"key"))
        if len(pending) > 100000:
            pending.clear()
        pending[peer_id] = members[peer_id]
        start = int(rng.random() * len(POOL))
        peers = b"".join(POOL[start:start + 50])
        body = b"d8:completei%de10:incompletei%de8:intervali1800e12:min intervali300e5:peers%d:%be" % (
            len(members), left, len(peers), peers)
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
    return [body]
