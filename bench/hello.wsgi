# The ceiling: a hello-world WSGI app with a small bencoded answer (an empty compact
# announce), served by bench/run.py through a copy of apache/ whose tracker.wsgi is this
# file, so Apache, mod_wsgi and the daemon process/thread settings are exactly the
# tracker's. Whatever the tracker does beyond this costs throughput.
BODY = b"d8:completei0e10:incompletei0e8:intervali1800e12:min intervali300e5:peers0:e"
HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
