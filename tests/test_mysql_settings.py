"""How the tracker reaches MariaDB (tracker_wsgi/store/mysql_settings.py), against the real
server: `localhost` is the unix socket, as for the mysql client (and MariaDB's accounts); an
option file read as the mysql client reads it; TLS verified against a CA, on a private server
of the test's own that has certificates (the shared one has TLS off)."""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
import sys
from pathlib import Path
from unittest import mock

import mysql.connector
import pytest

from conftest import TEST_PASSWORD, TEST_USER, _admin, own_directories
from test_e2e_apache import PrivateMariadb
from tracker_wsgi.config import ConfigError, load
from tracker_wsgi.model import StoreUnavailable
from tracker_wsgi.store import open_store
from tracker_wsgi.store.mysql_settings import (
    DEFAULT_SOCKET,
    connect_args,
    connect_targets,
    parse_url,
    read_option_file,
)

CLI = str(Path(sys.executable).parent / "tracker-wsgi")
TIMEOUT = 2700
# A password an option file must quote: a comment sign, spaces, both quotes, a backslash.
AWKWARD_PASSWORD = "p#ss w'rd\"x\\y"


def whoami(url: str) -> str:
    """The account the server sees this URL's connection as (user@host)."""
    store = open_store(url, TIMEOUT)
    try:
        return store._fetchall("SELECT USER()")[0][0]
    finally:
        store.close()


@pytest.fixture
def account():
    """make(host, password, require='') -> a user name, on the shared server; dropped after."""
    made = []

    def make(host: str, password: str = "pw", require: str = "", admin=None) -> str:
        name = f"tw_{secrets.token_hex(4)}"
        connection = admin or _admin()
        cur = connection.cursor()
        cur.execute(f"CREATE USER '{name}'@'{host}' IDENTIFIED BY %s {require}", (password,))
        cur.execute(f"GRANT ALL ON `tracker_test_%`.* TO '{name}'@'{host}'")
        if admin is None:
            made.append((name, host))
            connection.close()
        return name

    yield make
    connection = _admin()
    for name, host in made:
        connection.cursor().execute(f"DROP USER IF EXISTS '{name}'@'{host}'")
    connection.close()


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


# -- localhost is the socket --------------------------------------------------------------------


def test_localhost_is_the_unix_socket_as_for_the_mysql_client(mysql_url, account):
    """The README's account, 'tracker'@'localhost', is the one a `localhost` URL reaches: the
    server (skip_name_resolve, as Debian's) sees TCP from 127.0.0.1 as another host."""
    db = database_of(mysql_url)
    assert whoami(f"mysql://{TEST_USER}:{TEST_PASSWORD}@localhost/{db}") == f"{TEST_USER}@localhost"
    assert whoami(f"mysql://{TEST_USER}:{TEST_PASSWORD}@127.0.0.1/{db}") == f"{TEST_USER}@127.0.0.1"
    readme = account("localhost")  # CREATE USER 'tracker'@'localhost', as the README says
    assert whoami(f"mysql://{readme}:pw@localhost/{db}") == f"{readme}@localhost"
    assert whoami(f"mysql://{readme}:pw@/{db}") == f"{readme}@localhost"  # no host: localhost
    with pytest.raises(StoreUnavailable, match=rf"Access denied for user '{readme}'@'127.0.0.1'"):
        whoami(f"mysql://{readme}:pw@127.0.0.1/{db}")


def test_localhost_settings():
    assert connect_args("mysql://t@localhost/db") == {"user": "t", "host": "localhost", "database": "db",
                                                      "unix_socket": DEFAULT_SOCKET}
    assert connect_args("mysql://t@localhost/db?unix_socket=/srv/my.sock")["unix_socket"] == "/srv/my.sock"
    assert "unix_socket" not in connect_args("mysql://t@127.0.0.1/db")
    assert connect_args("mysql://t@db.example:3307/db")["port"] == 3307
    with pytest.raises(ValueError) as err:
        connect_args("mysql://t@localhost:3307/db")
    assert str(err.value) == ("host localhost with port 3307: localhost means the unix socket, as for the mysql "
                              "client; write 127.0.0.1:3307 for TCP, or leave the port out")


def test_several_hosts_in_order():
    """The nodes of a Galera cluster, as libpq's and Connector/J's URLs list hosts."""
    assert connect_targets("mysql://t:pw@db1:3307,db2,[::1]:3309/db") == [
        {"user": "t", "password": "pw", "database": "db", "host": "db1", "port": 3307},
        {"user": "t", "password": "pw", "database": "db", "host": "db2"},
        {"user": "t", "password": "pw", "database": "db", "host": "::1", "port": 3309},
    ]
    assert connect_targets("mysql://t@db1:3307/db") == [{"user": "t", "database": "db", "host": "db1", "port": 3307}]


@pytest.mark.parametrize("url, reason", [
    ("mysql://t@db1,localhost/db", "host 'localhost' in a list of several: each is reached over TCP (localhost "
                                   "means the unix socket); write HOST:PORT,HOST:PORT, e.g. 127.0.0.1:3307"),
    ("mysql://t@db1,/db", "host '(none)' in a list of several: each is reached over TCP (localhost means the unix "
                          "socket); write HOST:PORT,HOST:PORT, e.g. 127.0.0.1:3307"),
    ("mysql://t@db1,db2:x/db", "the port (x) is not a number from 1 to 65535"),
    ("mysql://t@db1,db2/db?unix_socket=/run/my.sock",
     "unix_socket with several hosts: a socket is one server's; list the hosts as HOST:PORT"),
])
def test_a_bad_list_of_hosts(url, reason):
    with pytest.raises(ValueError) as err:
        connect_targets(url)
    assert str(err.value) == reason


def test_www_data_by_the_socket_needs_no_password_at_all(mysql_url, shared_dir):
    """One host: MariaDB's unix_socket authentication knows the tracker by its Unix user, so
    no password is kept anywhere (Debian's root account works so)."""
    db = database_of(mysql_url)
    admin = _admin()
    cur = admin.cursor()
    cur.execute("CREATE USER 'www-data'@'localhost' IDENTIFIED VIA unix_socket")
    cur.execute(f"GRANT ALL ON {db}.* TO 'www-data'@'localhost'")
    try:
        config = shared_dir / "tracker.toml"
        config.write_text(f'database = "mysql://www-data@localhost/{db}"\n' + own_directories(shared_dir))
        config.chmod(0o644)
        done = subprocess.run(["runuser", "-u", "www-data", "--", CLI, "migrate", "--config", str(config)],
                              capture_output=True, text=True)
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout == f"mysql://www-data@localhost/{db}: schema created at version 5\n"
        done = subprocess.run([CLI, "migrate", "--config", str(config)], capture_output=True, text=True)  # root
        assert done.returncode == 1 and "Access denied for user 'www-data'@'localhost'" in done.stderr
    finally:
        cur.execute("DROP USER 'www-data'@'localhost'")
        admin.close()


# -- the URL, checked when the config is read --------------------------------------------------


@pytest.mark.parametrize("url, reason", [
    ("mysql://t@h/db?unix_sockets=/x", "unknown option 'unix_sockets' in the URL: the options are option_file, "
                                       "unix_socket, ssl_ca, ssl_cert, ssl_key"),
    ("mysql://t@h/db?ssl_ca=ca.pem", "ssl_ca = 'ca.pem' must be an absolute path"),
    ("mysql://t:secret@h/", "the URL names no database: mysql://USER@HOST/DATABASE"),
    ("mysql://t:secret@h:99999/db", "the port (99999) is not a number from 1 to 65535"),
])
def test_a_bad_url_is_one_line_naming_the_file_and_the_key(tmp_path, url, reason):
    config = tmp_path / "tracker.toml"
    config.write_text(f'database = "{url}"\n')
    with pytest.raises(ConfigError) as err:
        load(str(config))
    shown = url.replace(":secret@", ":***@")
    assert str(err.value) == f"{config}: database = {shown!r}: {reason}"
    assert "secret" not in str(err.value)


def test_a_percent_encoded_password_in_the_url(mysql_url, account):
    name = account("127.0.0.1", password="a@b/c:d%e")
    assert whoami(f"mysql://{name}:a%40b%2Fc%3Ad%25e@127.0.0.1/{database_of(mysql_url)}") == f"{name}@127.0.0.1"
    assert parse_url("mysql://u:a%40b%2Fc%3Ad%25e@h/db")["password"] == "a@b/c:d%e"


# -- the option file ------------------------------------------------------------------------------

TRICKY_FILE = r"""
# the tracker's account
[client]
user = someone   # a comment after a value
password = "p#ss w'rd\"x\\y"
host=localhost
database = 'it''s'
ssl_ca = /etc/ssl/ca.pem  ; not a comment
loose-default-character-set = utf8mb4
ssl-verify-server-cert
[mysql]
prompt = not ours
[TRACKER-WSGI]
user = "tracker"
password = a\sb\tc\qd
"""


def test_an_option_file_is_read_as_the_mysql_client_reads_it(tmp_path):
    """Compared with MariaDB's own reader (my_print_defaults, what the mysql client uses)."""
    path = tmp_path / "tracker.cnf"
    path.write_text(TRICKY_FILE)
    printed = subprocess.run(["my_print_defaults", f"--defaults-file={path}", *("client", "tracker-wsgi")],
                             capture_output=True, text=True, check=True).stdout
    theirs = {}
    for line in printed.splitlines():
        name, _, value = line.removeprefix("--").partition("=")
        theirs[name.replace("_", "-").removeprefix("loose-")] = value
    ours = read_option_file(str(path))
    names = {"user": "user", "password": "password", "host": "host", "database": "database", "ssl_ca": "ssl-ca"}
    assert {names[k]: v for k, v in ours.items()} == {k: v for k, v in theirs.items() if k in names.values()}
    assert ours == {"user": "tracker", "password": "a b\tc\\qd", "host": "localhost", "database": "it''s",
                    "ssl_ca": "/etc/ssl/ca.pem  ; not a comment"}


@pytest.mark.parametrize("text, reason", [
    ("[client]\nssl-cipher = AES\n", r"tracker.cnf:2: \[client\] ssl-cipher is not an option tracker-wsgi reads; "
                                     r"remove it \(it reads user, password, host, port, socket, database, ssl-ca, "
                                     r"ssl-cert, ssl-key, ssl-verify-server-cert\)"),
    ("[client]\nssl-verify-server-cert = 0\n", "tracker.cnf: ssl-verify-server-cert = 0: tracker-wsgi always verifies"),
    ("!include /etc/mysql/debian.cnf\n", r"tracker.cnf:1: !include is not read here: put the options in this file"),
    ("[client]\npassword\n", "tracker.cnf: password has no value: write password = VALUE"),
    ("[client]\nsocket = run/mysqld.sock\n", "tracker.cnf: socket = run/mysqld.sock must be an absolute path"),
])
def test_an_option_file_the_tracker_would_misread_is_refused(tmp_path, text, reason):
    path = tmp_path / "tracker.cnf"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{path.parent}/{reason}"):
        read_option_file(str(path))


def test_connecting_by_an_option_file(mysql_url, account, tmp_path):
    """The same file works for the mysql client: an admin checks it with --defaults-file."""
    name = account("localhost", password=AWKWARD_PASSWORD)
    db = database_of(mysql_url)
    path = tmp_path / "tracker.cnf"
    path.write_text(f'[client]\nuser = {name}\npassword = "p#ss w\'rd\\"x\\\\y"\ndatabase = {db}\n')
    assert read_option_file(str(path))["password"] == AWKWARD_PASSWORD
    assert whoami(f"mysql://localhost/?option_file={path}") == f"{name}@localhost"
    assert whoami(f"mysql:///?option_file={path}") == f"{name}@localhost"
    client = subprocess.run(["mysql", f"--defaults-file={path}", "-N", "-e", "SELECT CURRENT_USER()"],
                            capture_output=True, text=True)
    assert (client.returncode, client.stdout) == (0, f"{name}@localhost\n"), client.stderr
    # The URL's own values win over the file's.
    other = account("127.0.0.1", password=AWKWARD_PASSWORD)
    assert whoami(f"mysql://{other}@127.0.0.1/{db}?option_file={path}") == f"{other}@127.0.0.1"


def test_an_option_file_www_data_cannot_read_is_one_line_with_the_fix(mysql_url, shared_dir):
    path = shared_dir / "tracker.cnf"
    path.write_text(f"[client]\npassword = {TEST_PASSWORD}\n")
    path.chmod(0o600)  # root's, as a file made by root is
    url = f"mysql://{TEST_USER}@127.0.0.1/{database_of(mysql_url)}?option_file={path}"
    config = shared_dir / "tracker.toml"
    config.write_text(f'database = "{url}"\n' + own_directories(shared_dir))
    config.chmod(0o644)
    www = ["runuser", "-u", "www-data", "--"]
    done = subprocess.run([*www, CLI, "migrate", "--config", str(config)], capture_output=True, text=True)
    uid = pwd.getpwnam("www-data").pw_uid
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"tracker-wsgi: {config}: database = '{url}': option_file {path} is not readable by uid {uid}: the tracker's "
        f"user (Apache's www-data) must read it: chgrp www-data {path} && chmod g+r {path}\n")
    os.chown(path, 0, pwd.getpwnam("www-data").pw_gid)
    path.chmod(0o640)
    done = subprocess.run([*www, CLI, "migrate", "--config", str(config)], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"{url}: schema created at version 5\n"


# -- TLS --------------------------------------------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(directory: Path) -> None:
    """A CA, a server certificate it signs for 127.0.0.1 (and one for another name), a client
    certificate it signs, and a CA nobody used."""
    d = str(directory)
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
                "-keyout", f"{d}/{ca}.key", "-out", f"{d}/{ca}.pem")
    for name, alt in (("server", "IP:127.0.0.1"), ("elsewhere", "DNS:db.example"), ("client", "DNS:client")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={alt.split(':')[1]}",
                "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr")
        (directory / f"{name}.ext").write_text(f"subjectAltName={alt}\n")
        openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{d}/{name}.ext", "-out", f"{d}/{name}.pem")
    for path in directory.iterdir():
        path.chmod(0o644)
    (directory / "live.pem").write_bytes((directory / "server.pem").read_bytes())
    (directory / "live.key").write_bytes((directory / "server.key").read_bytes())


@pytest.fixture(scope="module")
def tls_mariadb():
    """A private MariaDB with TLS on (certificates in its directory): (server, certificates)."""
    server = PrivateMariadb()
    certs = server.base / "certs"
    certs.mkdir()
    make_certificates(certs)
    real_popen = subprocess.Popen

    def with_tls(args, **kwargs):
        if args[0] == "/usr/sbin/mariadbd":
            args = [*args, f"--ssl-ca={certs}/ca.pem", f"--ssl-cert={certs}/live.pem", f"--ssl-key={certs}/live.key"]
        return real_popen(args, **kwargs)

    try:
        with mock.patch.object(subprocess, "Popen", with_tls):
            server.start()
        admin = server.admin()
        cur = admin.cursor()
        cur.execute("SHOW VARIABLES LIKE 'have_ssl'")
        assert cur.fetchall() == [("have_ssl", "YES")]
        cur.execute("CREATE DATABASE tracker_test_tls")
        admin.close()
        yield server, certs
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        server.remove()


def tls_account(server, require: str) -> str:
    admin = server.admin()
    name = f"tw_{secrets.token_hex(4)}"
    cur = admin.cursor()
    cur.execute(f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY 'pw' {require}")
    cur.execute(f"GRANT ALL ON tracker_test_tls.* TO '{name}'@'127.0.0.1'")
    admin.close()
    return name


def cipher(url: str) -> str:
    store = open_store(url, TIMEOUT)
    try:
        return store._fetchall("SHOW SESSION STATUS LIKE 'Ssl_cipher'")[0][1]
    finally:
        store.close()


def test_tls_with_a_ca_is_encrypted_and_verified(tls_mariadb, tmp_path):
    server, certs = tls_mariadb
    name = tls_account(server, "REQUIRE SSL")
    base = f"mysql://{name}:pw@127.0.0.1:{server.port}/tracker_test_tls"
    assert cipher(f"{base}?ssl_ca={certs}/ca.pem").startswith("TLS_")
    # From an option file, as the mysql client takes it.
    path = tmp_path / "tls.cnf"
    path.write_text(f"[client]\nuser = {name}\npassword = pw\nssl-ca = {certs}/ca.pem\nssl-verify-server-cert\n")
    assert cipher(f"mysql://127.0.0.1:{server.port}/tracker_test_tls?option_file={path}").startswith("TLS_")
    # A server whose certificate another CA signed is refused.
    with pytest.raises(StoreUnavailable, match=r"2026 \(HY000\): SSL connection error: .*certificate verify failed"):
        cipher(f"{base}?ssl_ca={certs}/other-ca.pem")


def test_tls_verifies_the_servers_name(tls_mariadb):
    """The chain is good, the name is not: a certificate for db.example served at 127.0.0.1."""
    server, certs = tls_mariadb
    name = tls_account(server, "REQUIRE SSL")
    url = f"mysql://{name}:pw@127.0.0.1:{server.port}/tracker_test_tls?ssl_ca={certs}/ca.pem"
    admin = server.admin()
    try:
        for suffix in ("pem", "key"):
            (certs / f"live.{suffix}").write_bytes((certs / f"elsewhere.{suffix}").read_bytes())
        admin.cursor().execute("FLUSH SSL")
        with pytest.raises(StoreUnavailable, match=r"2026 \(HY000\): SSL .*certificate verify failed"):
            cipher(url)
        # The chain alone passes: what failed above is the name.
        chain_only = mysql.connector.connect(user=name, password="pw", host="127.0.0.1", port=server.port,
                                             ssl_ca=f"{certs}/ca.pem", ssl_verify_cert=True, use_pure=False)
        cur = chain_only.cursor()
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        assert cur.fetchall()[0][1].startswith("TLS_")
        chain_only.close()
    finally:
        for suffix in ("pem", "key"):
            (certs / f"live.{suffix}").write_bytes((certs / f"server.{suffix}").read_bytes())
        admin.cursor().execute("FLUSH SSL")
        admin.close()
    assert cipher(url).startswith("TLS_")


def test_tls_with_a_client_certificate(tls_mariadb):
    server, certs = tls_mariadb
    name = tls_account(server, "REQUIRE X509")
    base = f"mysql://{name}:pw@127.0.0.1:{server.port}/tracker_test_tls?ssl_ca={certs}/ca.pem"
    with pytest.raises(StoreUnavailable, match="Access denied"):
        cipher(base)
    assert cipher(f"{base}&ssl_cert={certs}/client.pem&ssl_key={certs}/client.key").startswith("TLS_")


def test_tls_settings_that_would_not_do_what_they_say_are_refused(mysql_url, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not used")
    db = database_of(mysql_url)
    for url, reason in [
        (f"mysql://t@localhost/{db}?ssl_ca={ca}", f"ssl_ca with the unix socket ({DEFAULT_SOCKET}): a socket carries "
                                                  "no TLS; for TLS connect over TCP to the name in the server's "
                                                  "certificate, or leave the ssl options out"),
        (f"mysql://t@h/{db}?ssl_cert={ca}&ssl_key={ca}", "ssl_cert without ssl_ca: TLS here always verifies the "
                                                         "server; give its CA as ssl_ca"),
        (f"mysql://t@h/{db}?ssl_ca={ca}&ssl_cert={ca}", "ssl_cert and ssl_key go together: give both, or neither"),
        (f"mysql://t@h/{db}?ssl_ca={tmp_path}/none.pem", f"ssl_ca {tmp_path}/none.pem does not exist"),
    ]:
        with pytest.raises(ValueError) as err:
            connect_args(url)
        assert str(err.value) == reason


def test_tls_options_reach_the_connector_on_a_server_without_tls(mysql_url, tmp_path):
    """The shared server has TLS off (have_ssl DISABLED): asked for TLS, the tracker refuses
    to go on unencrypted rather than falling back."""
    admin = _admin()
    cur = admin.cursor()
    cur.execute("SHOW VARIABLES LIKE 'have_ssl'")
    assert cur.fetchall()[0][1] != "YES"
    admin.close()
    ca = tmp_path / "ca.pem"
    make_certificates(tmp_path)
    url = f"mysql://{TEST_USER}:{TEST_PASSWORD}@127.0.0.1:3306/{database_of(mysql_url)}?ssl_ca={ca}"
    with pytest.raises(StoreUnavailable, match=r"2026 \(HY000\): SSL connection error: SSL is required but the "
                                               r"server doesn't support it"):
        cipher(url)
    # Why both checks are always asked for: with ssl_verify_cert alone, the connector's C
    # extension (9.7.0) goes on unencrypted when the server has no TLS, and says nothing.
    plain = mysql.connector.connect(user=TEST_USER, password=TEST_PASSWORD, host="127.0.0.1", ssl_ca=str(ca),
                                    ssl_verify_cert=True, use_pure=False)
    cur = plain.cursor()
    cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    assert cur.fetchall() == [("Ssl_cipher", "")]
    plain.close()
