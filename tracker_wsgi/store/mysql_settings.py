"""How the tracker reaches MySQL / MariaDB: the `database` URL, an option file, TLS, and
what `localhost` means. What the mysql client does with the same settings, it does too.

  mysql://[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]...]/DATABASE[?OPTION=VALUE&...]

OPTIONs: option_file, unix_socket, ssl_ca, ssl_cert, ssl_key (absolute paths). A password
in the URL is percent-encoded (`@` as %40, `/` as %2F, `%` as %25); an option file needs
none of that, keeps the password out of the tracker's config, and is the file an admin
checks with `mysql --defaults-file=FILE`.

- An option file (my.cnf style) gives, in its [client] and then [tracker-wsgi] groups,
  any of user, password, host, port, socket, database, ssl-ca, ssl-cert, ssl-key and
  ssl-verify-server-cert; the URL's own values win. It is read as the mysql client reads
  it (MariaDB's mysys/my_default.c: quotes, escapes, `#` comments), not by the connector's
  `option_files`: that one keeps a quoted password's quotes and `# comments`, and silently
  ignores options it does not know, ssl-verify-server-cert among them. Any other option is
  refused here, so none is silently ignored (`loose-` options are, as by the client).
- Host `localhost`, or none, means the server's unix socket, as for the mysql client (and
  as MariaDB's accounts see it: 'tracker'@'localhost' is the socket's, TCP from 127.0.0.1
  is 'tracker'@'127.0.0.1'): DEFAULT_SOCKET unless unix_socket/socket names another. A port
  with it would mean nothing there, and is refused; write 127.0.0.1:PORT for TCP.
- Several hosts, comma-separated (the nodes of a Galera cluster), in the order the store
  prefers them (store/mysql.py), as libpq's and Connector/J's URLs list them: the same user,
  database and TLS settings for each; a host without a port has the option file's, else
  3306. Each is reached over TCP: `localhost` and unix_socket are refused in a list.
- TLS: with ssl_ca the connection is encrypted and the server's certificate verified,
  both its chain (against ssl_ca) and its name (against HOST); ssl_cert and ssl_key add a
  client certificate. A unix socket carries no TLS, so TLS options with it are refused.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

# The mysql client's socket on Debian and Ubuntu (libmariadb's default; MySQL's
# /var/run/mysqld/mysqld.sock is the same file).
DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
OPTION_GROUPS = ("client", "tracker-wsgi")  # read in this order; a later value wins
# Options the URL's query may set, and the connector argument each becomes.
URL_OPTIONS = {"option_file": "option_file", "unix_socket": "unix_socket", "ssl_ca": "ssl_ca",
               "ssl_cert": "ssl_cert", "ssl_key": "ssl_key"}
# Options an option file may set, by the mysql client's names, and the connector argument
# each becomes. ssl-verify-server-cert is what ssl-ca does here anyway: it is accepted so
# that one file serves the mysql client (MariaDB before 11.4 verifies only with it) too.
FILE_OPTIONS = {"user": "user", "password": "password", "host": "host", "port": "port",
                "socket": "unix_socket", "database": "database", "ssl-ca": "ssl_ca",
                "ssl-cert": "ssl_cert", "ssl-key": "ssl_key", "ssl-verify-server-cert": None}
_TRUE = {None, "1", "on", "true"}  # how an option file may write a switch as on
_PATHS = ("option_file", "unix_socket", "ssl_ca", "ssl_cert", "ssl_key")
_LOCAL_HOSTS = ("", "localhost")


def parse_url(url: str) -> dict[str, Any]:
    """The connector arguments a mysql:// URL gives by itself, checked without reading any
    file; with several hosts, these as "hosts" [(host, port or None), ...] in the URL's order
    (connect_targets). Raises ValueError with a one-line reason and fix."""
    parts = urlsplit(url)
    hosts = [_host(item) for item in parts.netloc.rpartition("@")[2].split(",")]
    args: dict[str, Any] = {}
    for name, value in (("user", parts.username), ("password", parts.password)):
        if value is not None:
            args[name] = unquote(value)
    if len(hosts) > 1:
        if local := [host for host, _ in hosts if host in _LOCAL_HOSTS]:
            raise ValueError(
                f"host {local[0] or '(none)'!r} in a list of several: each is reached over TCP (localhost means "
                "the unix socket); write HOST:PORT,HOST:PORT, e.g. 127.0.0.1:3307")
        args["hosts"] = hosts
    else:
        host, port = hosts[0]
        if host:
            args["host"] = host
        if port is not None:
            args["port"] = port
    if database := unquote(parts.path.lstrip("/")):
        args["database"] = database
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in URL_OPTIONS:
            raise ValueError(f"unknown option {name!r} in the URL: the options are {', '.join(URL_OPTIONS)}")
        args[URL_OPTIONS[name]] = value
    for name in _PATHS:
        if name in args and not os.path.isabs(args[name]):
            raise ValueError(f"{name} = {args[name]!r} must be an absolute path")
    if "database" not in args and "option_file" not in args:
        raise ValueError("the URL names no database: mysql://USER@HOST/DATABASE")
    if "hosts" in args and "unix_socket" in args:
        raise ValueError("unix_socket with several hosts: a socket is one server's; list the hosts as HOST:PORT")
    return args


def _host(item: str) -> tuple[str, int | None]:
    """One HOST[:PORT] of the URL (an IPv6 address in brackets)."""
    parts = urlsplit(f"mysql://{item}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the port ({item.rpartition(':')[2]}) is not a number from 1 to 65535") from None
    return unquote(parts.hostname or ""), port


def connect_targets(url: str) -> list[dict[str, Any]]:
    """The connector arguments for each host of a mysql:// URL, in its order, with the
    option file it names. Raises ValueError with a one-line reason and fix."""
    args = connect_args(url)
    hosts = args.pop("hosts", None)
    if hosts is None:
        return [args]
    # A host without a port of its own has the option file's, as the only host would.
    file_port = args.pop("port", None)
    return [{**args, "host": host, **({"port": port or file_port} if port or file_port else {})}
            for host, port in hosts]


def connect_args(url: str) -> dict[str, Any]:
    """Connector arguments from a mysql:// URL and the option file it names (several hosts
    stay a list, "hosts": connect_targets gives each its own arguments). Raises ValueError
    with a one-line reason and fix."""
    given = parse_url(url)
    option_file = given.pop("option_file", None)
    args = {**(read_option_file(option_file) if option_file else {}), **given}
    if "database" not in args:
        raise ValueError(f"neither the URL nor {option_file} names a database")
    if "hosts" in args:
        args.pop("host", None)  # the URL's list wins over the option file's host
        if "unix_socket" in args:
            raise ValueError(f"socket {args['unix_socket']} (in {option_file}) with the URL's several hosts: a "
                             "socket is one server's; remove it from the file")
    elif args.get("host", "") in _LOCAL_HOSTS and "unix_socket" not in args:
        if "port" in args:
            raise ValueError(
                f"host localhost with port {args['port']}: localhost means the unix socket, as for the mysql "
                f"client; write 127.0.0.1:{args['port']} for TCP, or leave the port out"
            )
        args["unix_socket"] = DEFAULT_SOCKET
    tls = [name for name in ("ssl_ca", "ssl_cert", "ssl_key") if name in args]
    if tls and "unix_socket" in args:
        raise ValueError(
            f"{tls[0]} with the unix socket ({args['unix_socket']}): a socket carries no TLS; for TLS connect "
            "over TCP to the name in the server's certificate, or leave the ssl options out"
        )
    if tls and "ssl_ca" not in args:
        raise ValueError(f"{tls[0]} without ssl_ca: TLS here always verifies the server; give its CA as ssl_ca")
    if ("ssl_cert" in args) != ("ssl_key" in args):
        raise ValueError("ssl_cert and ssl_key go together: give both, or neither")
    for name in tls:
        _check_readable(args[name], name)
    if tls:
        # Both, always: with ssl_verify_cert alone the connector's C extension (9.7.0) goes on
        # unencrypted, saying nothing, when the server has no TLS (tests/test_mysql_settings.py).
        args.update(ssl_verify_cert=True, ssl_verify_identity=True)
    if "port" in args:
        args["port"] = _port(args["port"])
    return args


def read_option_file(path: str) -> dict[str, Any]:
    """The connector arguments OPTION_GROUPS of a my.cnf-style file give, read as the mysql
    client reads them. Raises ValueError naming the file, the option and the fix."""
    _check_readable(path, "option_file")
    options: dict[str, str | None] = {}
    group = None
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("!"):
                raise ValueError(f"{path}:{number}: {line.split()[0]} is not read here: put the options in this file")
            if line.startswith("["):
                if "]" not in line:
                    raise ValueError(f"{path}:{number}: a group name without its closing ']'")
                group = line[1:line.index("]")].strip().lower()
                continue
            if group not in OPTION_GROUPS:
                continue
            name, equals, value = _remove_end_comment(line).partition("=")
            name = name.strip().replace("_", "-")
            loose = name.startswith("loose-")
            name = name.removeprefix("loose-")
            if name not in FILE_OPTIONS:
                if loose:
                    continue
                raise ValueError(
                    f"{path}:{number}: [{group}] {name} is not an option tracker-wsgi reads; remove it (it reads "
                    f"{', '.join(FILE_OPTIONS)})"
                )
            options[name] = _option_value(value) if equals else None
    verify = options.pop("ssl-verify-server-cert", None)
    if verify is not None and verify.lower() not in _TRUE:
        raise ValueError(f"{path}: ssl-verify-server-cert = {verify}: tracker-wsgi always verifies a server it "
                         "has ssl-ca for; remove the line")
    for name, value in options.items():
        if value is None:
            raise ValueError(f"{path}: {name} has no value: write {name} = VALUE")
        if FILE_OPTIONS[name] in _PATHS and not os.path.isabs(value):
            raise ValueError(f"{path}: {name} = {value} must be an absolute path")
    return {FILE_OPTIONS[name]: value for name, value in options.items()}


def _remove_end_comment(line: str) -> str:
    """The line up to a `#` outside quotes (my_default.c's remove_end_comment)."""
    quote, escape = "", False
    for i, char in enumerate(line):
        if char in "'\"" and not escape:
            quote = "" if quote == char else quote or char
        if not quote and char == "#":
            return line[:i]
        escape = bool(quote) and char == "\\" and not escape
    return line


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "s": " ", '"': '"', "'": "'", "\\": "\\"}


def _option_value(value: str) -> str:
    """An option's value as the client takes it: trimmed, one pair of matching quotes
    removed, backslash escapes replaced (an unknown one keeps its backslash)."""
    value = value.strip()
    if len(value) > 1 and value[0] in "'\"" and value[-1] == value[0]:
        value = value[1:-1]
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            out.append(_ESCAPES.get(value[i + 1], value[i:i + 2]))
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _check_readable(path: str, name: str) -> None:
    if not os.path.exists(path):
        raise ValueError(f"{name} {path} does not exist")
    if not os.access(path, os.R_OK):
        raise ValueError(
            f"{name} {path} is not readable by uid {os.geteuid()}: the tracker's user (Apache's www-data) must read "
            f"it: chgrp www-data {path} && chmod g+r {path}"
        )


def _port(value: Any) -> int:
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ValueError(f"port {value!r} is not a number from 1 to 65535")
    return port
