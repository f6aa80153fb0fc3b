"""The Apache snippets that serve /tracker, generated from one place.

Two topologies, each a file an admin includes (the shipped ones are this module's output for
the defaults; `tracker-wsgi apache-conf` prints them for other numbers):
  - daemon mode (apache/tracker.conf): N mod_wsgi daemon processes, each announce sent to the
    process its info hash's first byte names (byte mod N), so each swarm lives in one process;
  - embedded mode (apache/tracker-embedded.conf): the tracker in Apache's own children, with
    the server-wide part (a fixed MPM pool, Python's home) in apache/embedded-server.conf.
Both share every line that is not about where Python runs (ErrorDocuments, limits, headers,
/tracker-errors, health and metrics). Pure: text in, text out.
"""

from __future__ import annotations

import re
from collections import defaultdict

GROUP_PREFIX = "tracker_wsgi_"  # daemon process group names: tracker_wsgi_[<site>_]0 .. <N-1>
# A site's name goes into its daemons' names, which mod_wsgi keeps server-wide (as the `ps`
# name and in the error log): what a second tracker on one server needs (--site).
SITE_NAME = re.compile(r"[a-z][a-z0-9]{0,15}\Z")
MAX_PROCESSES = 16  # routing by one byte; more processes than cores only add memory
DEFAULT_PROCESSES = 2  # the shipped tracker.conf: one per core of the 2-core machines we measure on
DAEMON_THREADS = 15  # per daemon process; see the comment of WSGIDaemonProcess below

# Embedded mode's fixed pool, sized for a 2-core box: one child per core (each child's
# Python runs one thread at a time), 1024 threads each (why: embedded_server_conf's text).
EMBEDDED_PROCESSES = 2
EMBEDDED_THREADS = 1024
MAX_EMBEDDED_THREADS = 4096  # per child: Apache's own ThreadLimit ceiling is far above; memory is not

# Characters a client may leave unescaped in a query value (RFC 3986 3.4: pchar, "/", "?"),
# less "&" (it ends the value) and "%" (it starts an escape); each stands for its own byte,
# except "+", which the tracker decodes as a space (protocol.py, as HTML forms encode one).
UNESCAPED = ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
             "-._~!$'()*,;=:@/?+")
HEX_DIGITS = "0123456789ABCDEF"
# Where an announce's first info_hash value starts: after any parameters that are not an
# info_hash, so a scrape of several hashes goes where its first one does.
FIRST_INFO_HASH = "^(?:(?!info_hash=)[^&]*&)*info_hash="


def unescaped_byte(char: str) -> int:
    """The byte an unescaped query character stands for."""
    return 0x20 if char == "+" else ord(char)


def group_name(group: int, site: str = "") -> str:
    return f"{GROUP_PREFIX}{site}{'_' if site else ''}{group}"


def group_of(first_byte: int, processes: int) -> int:
    """The daemon process group an info hash beginning with this byte is sent to."""
    return first_byte % processes


def char_class(chars: set[str]) -> str:
    """A regex matching one of `chars`: the character itself, or a [class] with runs of three
    or more as ranges ("-" first, so it is literal; the callers' sets hold no ] \\ ^)."""
    assert not chars & set("]\\^"), chars
    if len(chars) == 1 and next(iter(chars)).isalnum():
        return next(iter(chars))
    literal_dash = "-" if "-" in chars else ""
    codes = sorted(ord(c) for c in chars if c != "-")
    parts, start = [], 0
    while start < len(codes):
        end = start
        while end + 1 < len(codes) and codes[end + 1] == codes[end] + 1:
            end += 1
        run = [chr(c) for c in codes[start:end + 1]]
        parts.append(f"{run[0]}-{run[-1]}" if len(run) >= 3 else "".join(run))
        start = end + 1
    return f"[{literal_dash}{''.join(parts)}]"


def hex_class(nibbles: set[int]) -> str:
    """A regex matching one hex digit of these values, in either case."""
    return char_class({case(HEX_DIGITS[n]) for n in nibbles for case in (str.upper, str.lower)})


def routing_pattern(group: int, processes: int) -> str:
    """A regex for a query string whose first info_hash starts with a byte of this group:
    escaped (%XY, either case) or an unescaped character. High nibbles with the same low
    nibbles are merged; for a power of two the low nibble alone decides."""
    lows_by_high: dict[frozenset[int], set[int]] = defaultdict(set)
    for high in range(16):
        lows = frozenset(low for low in range(16) if group_of(high * 16 + low, processes) == group)
        if lows:
            lows_by_high[lows].add(high)
    escaped = [hex_class(highs) + hex_class(set(lows)) for lows, highs in lows_by_high.items()]
    escape = "%" + (escaped[0] if len(escaped) == 1 else f"(?:{'|'.join(escaped)})")
    chars = {c for c in UNESCAPED if group_of(unescaped_byte(c), processes) == group}
    return f"{FIRST_INFO_HASH}(?:{escape}|{char_class(chars)})"


def check_processes(processes: int) -> None:
    if not 1 <= processes <= MAX_PROCESSES:
        raise ValueError(f"--processes {processes}: choose 1 to {MAX_PROCESSES}")


def check_site(site: str) -> None:
    if site and not SITE_NAME.match(site):
        raise ValueError(f"--site {site!r}: a lower-case letter, then up to 15 lower-case letters or digits")


# -- the text both snippets share ------------------------------------------------------------

NEEDS = """\
# Needs mod_wsgi, mod_headers, mod_setenvif, mod_alias and mod_authz_host (Debian: a2enmod wsgi
# headers setenvif alias authz_host; alias and authz_host are on by default).
"""

# Inside <Location /tracker>, after the lines that choose where Python runs.
LOCATION_BODY = """\
    # The config file; mod_wsgi passes this to the tracker in each request's environ.
    SetEnv tracker_wsgi.config ${TRACKER_WSGI_CONFIG}
    # Announces change every second: never let a proxy or the client cache one.
    Header always set Cache-Control "no-cache, no-store, max-age=0"
    Header always set Pragma "no-cache"
    # One answer per connection: a client announces once an interval (30 minutes), so
    # keep-alive saves it nothing, while a connection kept open lets one client pipeline
    # announces and never read the answers, each connection then holding an Apache worker
    # (and in daemon mode a tracker thread) while Apache waits to write (2,100 of them: 97 %
    # of other announces answered, p99 5.6 s, and mod_wsgi's WSGI0116 logged for each).
    # With this, Apache closes the connection after the first answer, unread the rest.
    SetEnv nokeepalive 1
    # Compress text answers (scrapes, compact=0 peer lists); compact ones are binary.
    <IfModule mod_deflate.c>
        AddOutputFilterByType DEFLATE text/plain
    </IfModule>
    # Apache's own refusals get a bencoded `failure reason` as text/plain, never an HTML
    # page: each ErrorDocument serves a file of errors/ (an internal redirect that keeps the
    # status). 500/502/503/504 (the tracker down, overloaded or timed out) carry `retry in`
    # (BEP 31). These reach what Apache refuses once it knows the URL: a path mod_wsgi cannot
    # map (404), the monitoring pages to another address (403, below), a body (413, below),
    # and any 400/405 a module of yours adds. What it refuses before (a bad request line or
    # header, %00 or %2F in the path, TRACE, 414) only tracker-host.conf can reach.
    ErrorDocument 400 /tracker-errors/malformed
    ErrorDocument 403 /tracker-errors/forbidden
    ErrorDocument 404 /tracker-errors/unknown-path
    ErrorDocument 405 /tracker-errors/method-not-allowed
    ErrorDocument 413 /tracker-errors/body-refused
    ErrorDocument 500 /tracker-errors/unavailable
    ErrorDocument 502 /tracker-errors/unavailable
    ErrorDocument 503 /tracker-errors/unavailable
    ErrorDocument 504 /tracker-errors/unavailable
    # No request here has a body: announces and scrapes are GETs, and a web refresh sends
    # its secret in an X-Refresh-Secret header. One with a body (a Content-Length other than
    # 0, or chunked) is answered 413 before the tracker sees it, and unread: after a 413
    # Apache closes the connection without waiting for the body (ap_status_drops_connection).
    # Else mod_wsgi reads the whole body before the answer, holding a tracker thread while it
    # trickles in (a daemon process has 15), and logs each body cut short (WSGI0126) or
    # chunked (WSGI0139). mod_alias's Redirect answers at the fixups phase, after the access
    # checks: `Require all granted` lets the monitoring pages' 413 come before their 403.
    <If "-n req('Transfer-Encoding') || req('Content-Length') !~ /^0*$/">
        Require all granted
        Redirect 413
    </If>
</Location>
"""

SCRIPT_ACCESS = """\
<Directory ${TRACKER_WSGI_APACHE}>
    <Files tracker.wsgi>
        Require all granted
    </Files>
</Directory>
"""

TRAILER = """\
# The bodies of the error documents above, bencoded, served as the tracker's own answers are.
Alias /tracker-errors ${TRACKER_WSGI_APACHE}/errors
<Directory ${TRACKER_WSGI_APACHE}/errors>
    Require all granted
    Options None
    ForceType "text/plain; charset=ISO-8859-1"
    Header always set Cache-Control "no-cache, no-store, max-age=0"
    # One answer per connection here too (an error document is another request, which does
    # not inherit /tracker's setting).
    SetEnv nokeepalive 1
</Directory>

# /tracker/health (JSON, 503 when the tracker cannot do its work) and /tracker/metrics
# (Prometheus, every tracker process summed) are for monitoring, not for BitTorrent clients,
# and answer JSON and text rather than bencoding. They say how busy the tracker is and
# which database it cannot reach: by default only this host may ask. To let a monitoring
# host in too, add its address below `Require local` (several Require lines: any one of
# them lets a client in).
# Anyone else gets the bencoded 403 above, and no line in the error log each (mod_authz_core
# logs every refusal, AH01630: any client could write lines at will).
<LocationMatch "^/tracker/+(health|metrics)">
    Require local
    # Require ip 192.0.2.10
    LogLevel authz_core:crit
</LocationMatch>
"""


def generated_by(command: str) -> str:
    return (f"# Generated by `{command}`\n"
            "# from tracker_wsgi/apache_conf.py: edit that, not this file, or generate one with your\n"
            "# numbers and include it instead.\n")


# -- daemon mode -------------------------------------------------------------------------------

def daemon_conf(processes: int = DEFAULT_PROCESSES, site: str = "") -> str:
    """apache/tracker.conf for `processes` daemon processes, routed by info hash; `site` names
    them apart from another tracker's on the same server."""
    check_processes(processes)
    check_site(site)
    groups = [group_name(g, site) for g in range(processes)]
    command = ("tracker-wsgi apache-conf" + (f" --processes {processes}" if processes != DEFAULT_PROCESSES else "")
               + (f" --site {site}" if site else ""))
    one = processes == 1
    if one:
        processes_text = """\
# One daemon process answers /tracker, started with Apache and kept for its life. It answers
# announces from the host's swarm state (tracker_wsgi/hoststate.py, in swarm_dir), so every
# peer announced to this host is in every answer at once. Python runs one thread at a time
# in a process, so it uses one core: generate this file with --processes N for more.
"""
    else:
        processes_text = f"""\
# {processes} daemon processes answer /tracker, started with Apache and kept for its life. They
# answer announces from one swarm state they share (tracker_wsgi/hoststate.py, in swarm_dir),
# so every peer announced to this host is in every answer at once, whichever process answers.
# Python runs one thread at a time in a process, so {processes} processes use {processes} cores; each
# announce goes to the process its info hash's first byte names (the byte mod {processes}, below),
# which spreads the swarms over them: for the load, not for the answers.
"""
    daemons = "".join(
        f"WSGIDaemonProcess {name} processes=1 threads={DAEMON_THREADS} display-name=%{{GROUP}} \\\n"
        "    python-home=${TRACKER_WSGI_VENV} lang=C.UTF-8 locale=C.UTF-8 \\\n"
        "    memory-limit=536870912 stack-size=1048576 \\\n"
        "    graceful-timeout=15 queue-timeout=30 connect-timeout=5 \\\n"
        "    socket-timeout=60 request-timeout=60\n"
        for name in groups
    )
    imports = "".join(
        f"WSGIImportScript ${{TRACKER_WSGI_APACHE}}/tracker.wsgi process-group={name} application-group=%{{GLOBAL}}\n"
        for name in groups
    )
    if one:
        choose = ("    # The one daemon process answers everything here.\n"
                  f"    WSGIProcessGroup {groups[0]}\n")
    else:
        choose = (
            f"    # The process: the first byte of the (first) info_hash mod {processes}, as %XY (whatever\n"
            "    # the case) or as a character clients leave unescaped; anything else (no info_hash, a\n"
            f"    # page) goes to {groups[0]}. Routing only saves work: any process answers any swarm\n"
            "    # correctly. Generated by tracker_wsgi/apache_conf.py (routing_pattern).\n"
            f"    SetEnvIf Request_URI ^ TRACKER_WSGI_PROCESS={groups[0]}\n"
            + "".join(f"    SetEnvIfExpr \"%{{QUERY_STRING}} =~ m#{routing_pattern(g, processes)}#\" \\\n"
                      f"        TRACKER_WSGI_PROCESS={groups[g]}\n" for g in range(1, processes))
            + "    WSGIProcessGroup %{ENV:TRACKER_WSGI_PROCESS}\n"
            f"    WSGIRestrictProcess {' '.join(groups)}\n"
        )
    connections_note = f"{processes} x 10" if not one else "10"
    return f"""\
# tracker_wsgi: a BitTorrent tracker at /tracker, run by mod_wsgi in daemon processes.
{generated_by(command)}#
# Include this file in the <VirtualHost> that serves the tracker, after defining where things
# are (the shipped site file, sites-available/tracker-wsgi.conf, does exactly this):
#   Define TRACKER_WSGI_VENV   /opt/tracker-wsgi/venv           # virtualenv with tracker_wsgi installed
#   Define TRACKER_WSGI_APACHE /opt/tracker-wsgi/apache         # this directory (holds tracker.wsgi)
#   Define TRACKER_WSGI_CONFIG /etc/tracker-wsgi/tracker.toml   # the tracker's config file
#   Include ${{TRACKER_WSGI_APACHE}}/tracker.conf
#   Include ${{TRACKER_WSGI_APACHE}}/tracker-host.conf            # optional: see that file
{NEEDS}\
# Everything below applies to /tracker and /tracker-errors of the host that includes it, and
# nothing else: other virtual hosts, and other WSGI applications beside it (embedded mode
# included), are left as they were. In the server config (conf-available), every host would
# get /tracker. A second tracker on the same server (another <VirtualHost>, its own config)
# needs daemons of other names: generate its file with `--site NAME` and include that, after
# Defines of its own (a Define holds from where it is read to the next one of its name).
# On a server whose every WSGI application runs in daemon mode, an admin may add
# `WSGIRestrictEmbedded On` to the server config (Debian: mods-available/wsgi.conf) to keep
# Python out of Apache's own worker processes; this file does not, as that is server-wide.
# To run the tracker in Apache's own processes instead, include tracker-embedded.conf (and
# embedded-server.conf) in place of this file.

{processes_text}#   threads              {DAEMON_THREADS} answers at once. A process opens at most 10 database
#                        connections whatever its threads, so MySQL needs max_connections
#                        >= hosts x {connections_note} + a few for cron (README).
#   python-home          the virtualenv; lang/locale make file names UTF-8 (Apache starts in C).
#   memory-limit         hard cap on each process's heap (bytes, RLIMIT_DATA), like the
#                        original's Apache::SizeLimit; stack-size keeps {DAEMON_THREADS} threads' stacks out of it.
#   graceful-timeout     how long a stopping process may finish its requests; it then writes
#                        its last announces to the database.
#   queue-timeout        give up on a request that waited this long for a free thread (Apache
#                        then answers 504, which ErrorDocument below keeps bencoded).
#   connect-timeout      give up connecting to a daemon whose listen queue is full (503).
#   socket-timeout       give up on a daemon that sends nothing for this long (504), instead of
#                        Apache's Timeout (300 s on Debian) holding an Apache worker that long;
#                        above the tracker's slowest answer (a MariaDB read timeout, 30 s).
#   request-timeout      last resort for a thread stuck for good: restart the process (after
#                        graceful-timeout, writing its announces). mod_wsgi 6 fires when one
#                        thread has run request-timeout x (1 + ln threads), ~220 s here; 4.x when
#                        the running requests' average reaches it, i.e. all {DAEMON_THREADS} stuck for 60 s.
# No maximum-requests: recycling a process would cost its start-up (a p99) for nothing.
{daemons}
# /tracker/announce and /tracker/scrape (and a bare /tracker) go to tracker.wsgi, in the
# main interpreter (%{{GLOBAL}}), which C extensions (the MySQL connector, bencoder) need.
# WSGIImportScript loads the tracker when each daemon starts, not on its first request.
WSGIScriptAlias /tracker ${{TRACKER_WSGI_APACHE}}/tracker.wsgi application-group=%{{GLOBAL}}
{imports}
{SCRIPT_ACCESS}
<Location /tracker>
{choose}{LOCATION_BODY}
{TRAILER}"""


# -- embedded mode -----------------------------------------------------------------------------

def embedded_conf() -> str:
    """apache/tracker-embedded.conf: the tracker in Apache's own children."""
    return f"""\
# tracker_wsgi: a BitTorrent tracker at /tracker, run by mod_wsgi inside Apache's own children
# (embedded mode): no hop from Apache to a daemon process, so more answers per core.
{generated_by("tracker-wsgi apache-conf --embedded")}#
# Needs embedded-server.conf in the server config, as its first lines show (Python's home,
# and a fixed pool of Apache children that live as long as Apache: read it, it changes every
# site of the server). Then include this file in the <VirtualHost> that serves the tracker,
# in place of tracker.conf (the shipped site file, sites-available/tracker-wsgi.conf):
#   Define TRACKER_WSGI_VENV   /opt/tracker-wsgi/venv           # virtualenv with tracker_wsgi installed
#   Define TRACKER_WSGI_APACHE /opt/tracker-wsgi/apache         # this directory (holds tracker.wsgi)
#   Define TRACKER_WSGI_CONFIG /etc/tracker-wsgi/tracker.toml   # the tracker's config file
#   Include ${{TRACKER_WSGI_APACHE}}/tracker-embedded.conf
#   Include ${{TRACKER_WSGI_APACHE}}/tracker-host.conf            # optional: see that file
{NEEDS.replace("mod_setenvif, ", "").replace("setenvif ", "")}\
# Not with `WSGIRestrictEmbedded On` anywhere in the server: it refuses exactly this.
#
# Each Apache child loads the tracker when it starts and keeps its own view of the swarms,
# as separate hosts do: a peer announced to one child reaches the others' answers within
# 2 x sync_interval. Embedded mode has none of daemon mode's timeouts, memory-limit or
# restarts: the tracker runs as Apache's user, and a crash takes the child with it.
# One tracker per server: a child builds it once, from the config of the first request it
# answers, so a second tracker <VirtualHost> would be answered with the first one's. Run
# a second tracker in daemon mode (tracker-wsgi apache-conf --site NAME).

# /tracker/announce and /tracker/scrape (and a bare /tracker) go to tracker.wsgi, in Apache's
# own children (process-group %{{GLOBAL}}) and their main interpreter (application-group
# %{{GLOBAL}}), which C extensions (the MySQL connector, bencoder) need. Both given: each child
# loads the tracker when it starts, not on its first request.
WSGIScriptAlias /tracker ${{TRACKER_WSGI_APACHE}}/tracker.wsgi process-group=%{{GLOBAL}} application-group=%{{GLOBAL}}

{SCRIPT_ACCESS}
<Location /tracker>
{LOCATION_BODY}
{TRAILER}"""


def embedded_server_conf(processes: int = EMBEDDED_PROCESSES, threads: int = EMBEDDED_THREADS) -> str:
    """apache/embedded-server.conf: the server-wide settings embedded mode needs."""
    check_processes(processes)
    if not 1 <= threads <= MAX_EMBEDDED_THREADS:
        raise ValueError(f"--threads {threads}: choose 1 to {MAX_EMBEDDED_THREADS}")
    workers = processes * threads
    defaults = (processes, threads) == (EMBEDDED_PROCESSES, EMBEDDED_THREADS)
    command = "tracker-wsgi apache-conf --embedded-server" + (
        "" if defaults else f" --processes {processes} --threads {threads}")
    pool = f"""\
    # {processes} children of {threads} threads each, all started with Apache and never stopped:
    # spare-thread limits equal to the whole pool never reap a child, and
    # MaxConnectionsPerChild 0 never recycles one.
    StartServers            {processes}
    ServerLimit             {processes}
    ThreadLimit             {threads}
    ThreadsPerChild         {threads}
    MaxRequestWorkers       {workers}
    MinSpareThreads         {workers}
    MaxSpareThreads         {workers}
    MaxConnectionsPerChild  0
"""
    return f"""\
# tracker_wsgi: the server-wide settings of embedded mode (tracker-embedded.conf).
{generated_by(command)}#
# Include it once, in the server config, never in a <VirtualHost>; on Debian, as root:
#   cd /etc/apache2/conf-available
#   echo 'Define TRACKER_WSGI_VENV /opt/tracker-wsgi/venv' > tracker-wsgi-embedded.conf
#   echo 'Include /opt/tracker-wsgi/apache/embedded-server.conf' >> tracker-wsgi-embedded.conf
#   a2enconf tracker-wsgi-embedded && systemctl restart apache2
# (conf-enabled is read before the sites, so the venv is defined there). Everything here
# applies to every site this Apache serves.

# Python in Apache's own processes comes from the tracker's virtualenv. One per server: every
# other WSGI application in embedded mode gets this one too (daemon-mode ones keep their own
# python-home). Apache's locale is Python's: Debian's /etc/apache2/envvars starts Apache with
# LANG=C; set `export LANG=C.UTF-8` there so file names are UTF-8, as daemon mode's lang= does.
WSGIPythonHome ${{TRACKER_WSGI_VENV}}

# A fixed pool of Apache children, as mod_wsgi-express --embedded-mode makes: each child loads
# the tracker when it starts, so a child started under load answers late (the start-up costs
# a p99). So every child starts with Apache and lives as long as it.
#
# The numbers suit a 2-core box. One child per core: Python runs one thread at a time in a
# child, so children, not threads, use cores (measured, issue #13: 1 x 64 left a core idle,
# 4 x 16 was no faster than 2 x 32 and had a worse p99). Threads: the event MPM lets a child
# hold ThreadsPerChild connections (plus AsyncRequestWorkerFactor per idle thread) and,
# with every thread busy, closes the keep-alive connections beyond that, which clients see
# as errors: with 2 x 32 and 64 keep-alive clients, a child holding more than half of them
# dropped some (37-211 socket errors in each 3-s run of wrk -c64); with 2 x 64, none in
# four runs of five, 5 in the other. And every connection whose headers are still arriving
# holds a thread (below): 1024 a child, 2048 in all, as many workers as daemon mode's Apache
# is given against slow clients. Threads that wait cost no CPU (only those answering contend
# for Python) and little memory: with 1,000 slow connections open a child was 112 MiB
# resident, and its throughput was that of 2 x 64. (The worker MPM holds a thread for every
# open connection, idle or not: size it for those.) Give a bigger box one child per core:
# `tracker-wsgi apache-conf --embedded-server --processes N`.
#
# Apache logs AH10159 ("within MinSpareThreads of MaxRequestWorkers") when the pool is busy:
# expected with a fixed pool, whose spare-thread limits are the whole pool on purpose.
#
# What it changes for other sites: MaxRequestWorkers ({workers} here; Debian's default is 150)
# is every site's limit on requests at once, and on connections whose headers are still
# arriving, each of which holds a thread until mod_reqtimeout gives up (tracker-host.conf).
# Measured: with 2 x 64, 200 such slow connections held an announce 9.6 s; with 2 x 1024 the
# hostile soak's 1,000 (bench/hostile.py) left every announce answered in 0.01 s. Beyond
# that, raise --threads or limit connections per address in the firewall (README, "Slow
# clients").
# With MariaDB, each child opens at most 10 database connections, whatever its threads:
# max_connections >= hosts x ServerLimit x 10 + a few for cron (README).
<IfModule mpm_event_module>
{pool}</IfModule>
<IfModule mpm_worker_module>
{pool}</IfModule>
# The prefork MPM has one thread per child: {workers} processes each holding its own copy
# of the swarms and of the tracker. Refuse to start rather than run that way.
<IfModule mpm_prefork_module>
    Error "tracker_wsgi: embedded mode needs the event or worker MPM (Debian: a2dismod mpm_prefork; a2enmod mpm_event), or use daemon mode: tracker.conf"
</IfModule>
"""


# The shipped files of apache/ and the command line that prints each (as the test of their
# equality with this module's output tells, to regenerate them).
SHIPPED = {
    "tracker.conf": ("tracker-wsgi apache-conf", daemon_conf),
    "tracker-embedded.conf": ("tracker-wsgi apache-conf --embedded", embedded_conf),
    "embedded-server.conf": ("tracker-wsgi apache-conf --embedded-server", embedded_server_conf),
}
