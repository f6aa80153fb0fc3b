"""tracker_wsgi.config: one TOML file, every key optional, every mistake one clear line.

An admin reads a ConfigError in Apache's error log: it must be a single line naming the
file and the key, so `grep tracker.toml error.log` finds the whole story.
"""

from __future__ import annotations

import ipaddress
from dataclasses import fields
from pathlib import Path

import pytest

from tracker_wsgi import config as config_module
from tracker_wsgi.config import ENV_VAR, ENVIRON_KEY, Config, ConfigError, config_path, from_dict, load
from tracker_wsgi.limits import Limits, reference_rows

# These tests compare the built-in defaults (production's paths) and never use a path.
pytestmark = pytest.mark.builtin_defaults

DEFAULTS = Config(
    database="sqlite:///var/lib/tracker-wsgi/tracker.sqlite",
    torrent_dir="/srv/torrents",
    base_url="http://www.example.com",
    interval=1800,
    min_interval=300,
    numwant_default=50,
    numwant_max=200,
    peer_timeout=2700,
    full_scrape=False,
    trusted_proxies=(),
    whitelist="directory",
    output_dir="/var/lib/tracker-wsgi/output",
    refresh_interval=900,
    refresh_secret="",
    announce_url="",
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tracker.toml"
    path.write_text(text)
    return path


def test_no_file_gives_the_defaults():
    assert load(None) == DEFAULTS


def test_an_empty_file_gives_the_defaults(tmp_path):
    assert load(str(write(tmp_path, ""))) == DEFAULTS


def test_a_full_valid_file(tmp_path):
    path = write(tmp_path, """
database = "mysql://tracker:secret@db.example:3306/tracker"
torrent_dir = "/srv/other-torrents"
base_url = "https://torrents.example.org/files"
interval = 900
min_interval = 60
numwant_default = 30
numwant_max = 100
peer_timeout = 1350
full_scrape = true
trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8", "::1", "fd00::/8"]
whitelist = "open"
output_dir = "/srv/www/tracker-output"
refresh_interval = 600
refresh_secret = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
announce_url = "https://torrents.example.org/tracker/announce"
""")
    assert load(str(path)) == Config(
        database="mysql://tracker:secret@db.example:3306/tracker",
        torrent_dir="/srv/other-torrents",
        base_url="https://torrents.example.org/files",
        interval=900,
        min_interval=60,
        numwant_default=30,
        numwant_max=100,
        peer_timeout=1350,
        full_scrape=True,
        trusted_proxies=(
            ipaddress.ip_network("127.0.0.1/32"),
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("::1/128"),
            ipaddress.ip_network("fd00::/8"),
        ),
        whitelist="open",
        output_dir="/srv/www/tracker-output",
        refresh_interval=600,
        refresh_secret="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        announce_url="https://torrents.example.org/tracker/announce",
    )


def test_keys_left_out_keep_their_defaults(tmp_path):
    config = load(str(write(tmp_path, 'database = "sqlite:////tmp/t.sqlite"\nfull_scrape = true\n')))
    assert config == Config(**{**DEFAULTS.__dict__, "database": "sqlite:////tmp/t.sqlite", "full_scrape": True})


BOUNDARY_CASES = [
    # (id, TOML, attribute, value): the edges of each range are allowed
    ("interval minimum", "interval = 60\nmin_interval = 0", "interval", 60),
    ("interval maximum", "interval = 86400", "interval", 86400),
    ("min_interval equal to interval", "interval = 600\nmin_interval = 600", "min_interval", 600),
    ("numwant_default 0", "numwant_default = 0", "numwant_default", 0),
    ("numwant_default equal to numwant_max", "numwant_default = 70\nnumwant_max = 70", "numwant_default", 70),
    ("numwant_max 1000", "numwant_max = 1000", "numwant_max", 1000),
    ("peer_timeout one week", "peer_timeout = 604800", "peer_timeout", 604800),
    ("sqlite URL", 'database = "sqlite:////var/tmp/x.sqlite"', "database", "sqlite:////var/tmp/x.sqlite"),
    ("empty trusted_proxies", "trusted_proxies = []", "trusted_proxies", ()),
    ("refresh_secret of 32 characters, 10 different", f'refresh_secret = "{"0123456789" * 3}ab"', "refresh_secret",
     "0123456789" * 3 + "ab"),
    ("empty refresh_secret turns web refresh off", 'refresh_secret = ""', "refresh_secret", ""),
    ("refresh_interval minimum", "refresh_interval = 60", "refresh_interval", 60),
    ("log_level info", 'log_level = "info"', "log_level", "info"),
    ("log_level error", 'log_level = "error"', "log_level", "error"),
    ("syslog_facility local7", 'syslog_facility = "local7"', "syslog_facility", "local7"),
    ("empty syslog_facility: no syslog", 'syslog_facility = ""', "syslog_facility", ""),
]


@pytest.mark.parametrize(("text", "attribute", "expected"), [c[1:] for c in BOUNDARY_CASES],
                         ids=[c[0] for c in BOUNDARY_CASES])
def test_values_at_the_edges_are_allowed(tmp_path, text, attribute, expected):
    assert getattr(load(str(write(tmp_path, text))), attribute) == expected


BAD_CASES = [
    # (id, TOML, the key the message must name)
    ("unknown key (typo)", "intervall = 1800", "intervall"),
    ("unknown key in a table", "[tracker]\ninterval = 1800", "tracker"),
    ("int key given a string", 'interval = "1800"', "interval"),
    ("int key given a float", "interval = 1800.0", "interval"),
    ("int key given a boolean", "numwant_max = true", "numwant_max"),
    ("bool key given an int", "full_scrape = 1", "full_scrape"),
    ("bool key given a string", 'full_scrape = "yes"', "full_scrape"),
    ("string key given an int", "base_url = 5", "base_url"),
    ("string key given a list", 'database = ["sqlite:///x"]', "database"),
    ("interval below range", "interval = 59", "interval"),
    ("interval above range", "interval = 86401", "interval"),
    ("min_interval negative", "min_interval = -1", "min_interval"),
    ("numwant_max 0", "numwant_max = 0", "numwant_max"),
    ("numwant_max above range", "numwant_max = 1001", "numwant_max"),
    ("numwant_default negative", "numwant_default = -1", "numwant_default"),
    ("peer_timeout below range", "peer_timeout = 59", "peer_timeout"),
    ("peer_timeout above range", "peer_timeout = 604801", "peer_timeout"),
    ("bad whitelist mode", 'whitelist = "closed"', "whitelist"),
    ("whitelist mode is case-sensitive", 'whitelist = "Open"', "whitelist"),
    ("multi-line string value", 'whitelist = """open\nclosed"""', "whitelist"),
    ("bad database scheme", 'database = "postgresql://db/tracker"', "database"),
    ("database with no scheme", 'database = "/var/lib/tracker.sqlite"', "database"),
    ("sqlite URL with two slashes", 'database = "sqlite://tracker.sqlite"', "database"),
    ("network with a bad prefix", 'trusted_proxies = ["10.0.0.0/33"]', "trusted_proxies"),
    ("network that is a host name", 'trusted_proxies = ["proxy.example"]', "trusted_proxies"),
    ("one bad network among good", 'trusted_proxies = ["127.0.0.1/32", "::1/129"]', "trusted_proxies"),
    ("trusted_proxies as a string", 'trusted_proxies = "10.0.0.0/8"', "trusted_proxies"),
    ("trusted_proxies with a number", "trusted_proxies = [10]", "trusted_proxies"),
    ("relative torrent_dir", 'torrent_dir = "srv/torrents"', "torrent_dir"),
    ("torrent_dir with ~", 'torrent_dir = "~/torrents"', "torrent_dir"),
    ("relative output_dir", 'output_dir = "output"', "output_dir"),
    ("refresh_secret too short to be secret", 'refresh_secret = "hunter2"', "refresh_secret"),
    ("refresh_secret of 16 characters (enough before issue 12)", 'refresh_secret = "0123456789abcdef"',
     "refresh_secret"),
    ("refresh_secret of 31 characters", f'refresh_secret = "{("0123456789abcdef" * 2)[:31]}"', "refresh_secret"),
    ("refresh_secret of 32 characters, 9 different", f'refresh_secret = "{"012345678" * 3}01234"', "refresh_secret"),
    ("refresh_secret one letter repeated", f'refresh_secret = "{"a" * 64}"', "refresh_secret"),
    ("refresh_secret a word repeated", f'refresh_secret = "{"password" * 8}"', "refresh_secret"),
    ("refresh_secret not a string", "refresh_secret = 1234567890123456", "refresh_secret"),
    ("refresh_interval below range", "refresh_interval = 59", "refresh_interval"),
    ("refresh_interval above range", "refresh_interval = 86401", "refresh_interval"),
    ("announce_url not a string", "announce_url = true", "announce_url"),
    ("log_level debug: nothing logs at it", 'log_level = "debug"', "log_level"),
    ("log_level is lower case", 'log_level = "WARNING"', "log_level"),
    ("log_level as a number", "log_level = 30", "log_level"),
    ("syslog_facility of the system's", 'syslog_facility = "kern"', "syslog_facility"),
    ("syslog_facility local8", 'syslog_facility = "local8"', "syslog_facility"),
    ("numwant_default above numwant_max", "numwant_default = 300\nnumwant_max = 200", "numwant_default"),
    ("numwant_default above the default numwant_max", "numwant_default = 201", "numwant_default"),
    ("min_interval above interval", "interval = 600\nmin_interval = 601", "min_interval"),
]


@pytest.mark.parametrize(("text", "key"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_each_bad_key_is_one_line_naming_the_file_and_the_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load(str(path))
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message
    assert str(path) in message
    assert key in message


def test_a_weak_refresh_secret_says_how_to_make_a_strong_one_and_keeps_itself_out_of_the_log(tmp_path):
    path = write(tmp_path, 'refresh_secret = "0123456789abcdef"')
    with pytest.raises(ConfigError) as exc:
        load(str(path))
    assert str(exc.value) == (
        f"{path}: refresh_secret is too weak (fewer than 32 characters or 10 different ones); make one "
        "with `openssl rand -hex 32`, or leave it empty to turn web refresh off"
    )


def test_error_names_the_value_and_what_is_allowed(tmp_path):
    path = write(tmp_path, "interval = 5")
    with pytest.raises(ConfigError) as exc:
        load(str(path))
    assert str(exc.value) == f"{path}: interval = 5 is not allowed; interval must be a whole number from 60 to 86400"


def test_unknown_key_lists_the_known_keys(tmp_path):
    path = write(tmp_path, "numwant = 10")
    with pytest.raises(ConfigError) as exc:
        load(str(path))
    message = str(exc.value)
    assert message.startswith(f"{path}: unknown key 'numwant'; known keys: database, torrent_dir, base_url, ")
    listed = message.partition("known keys: ")[2].split(", ")
    assert listed == [f.name for f in fields(Config) if f.name != "limits"] + [f.name for f in fields(Limits)]


UNREADABLE_CASES = [
    ("missing file", lambda tmp: tmp / "nope.toml", "No such file or directory"),
    ("a directory", lambda tmp: tmp, "Is a directory"),
]


@pytest.mark.parametrize(("make_path", "reason"), [c[1:] for c in UNREADABLE_CASES],
                         ids=[c[0] for c in UNREADABLE_CASES])
def test_unreadable_file_is_one_line_naming_the_file(tmp_path, make_path, reason):
    path = make_path(tmp_path)
    with pytest.raises(ConfigError) as exc:
        load(str(path))
    assert str(exc.value) == f"{path}: cannot read the config file: {reason}"


INVALID_TOML_CASES = [
    ("missing value", "interval = \n", 1),
    ("unterminated string", 'base_url = "http://x\n', 1),
    ("duplicate key", "interval = 900\ninterval = 1200\n", 2),
    ("bare words", "full_scrape = yes\n", 1),
    ("error on a later line", 'whitelist = "open"\n\nnumwant_max = 1 2\n', 3),
]


@pytest.mark.parametrize(("text", "line"), [c[1:] for c in INVALID_TOML_CASES], ids=[c[0] for c in INVALID_TOML_CASES])
def test_invalid_toml_is_one_line_naming_the_file_and_the_line(tmp_path, text, line):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load(str(path))
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid TOML: ")
    assert f"line {line}," in message


def test_from_dict_names_its_source():
    with pytest.raises(ConfigError) as exc:
        from_dict({"interval": 1}, "/etc/tracker-wsgi/tracker.toml")
    assert str(exc.value).startswith("/etc/tracker-wsgi/tracker.toml: interval = 1 ")


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        DEFAULTS.interval = 5  # type: ignore[misc]


# --------------------------------------------------------------------------------------
# config_path
# --------------------------------------------------------------------------------------

PATH_CASES = [
    # (id, WSGI environ, process env var value or None, expected)
    ("environ value wins over the env var", {ENVIRON_KEY: "/etc/a.toml"}, "/etc/b.toml", "/etc/a.toml"),
    ("env var when environ has none", {}, "/etc/b.toml", "/etc/b.toml"),
    ("env var when there is no environ", None, "/etc/b.toml", "/etc/b.toml"),
    ("empty environ value falls back to the env var", {ENVIRON_KEY: ""}, "/etc/b.toml", "/etc/b.toml"),
    ("environ value alone", {ENVIRON_KEY: "/etc/a.toml"}, None, "/etc/a.toml"),
    ("neither: None (defaults)", {}, None, None),
    ("empty env var is none", {}, "", None),
    ("other environ keys are ignored", {"TRACKER_WSGI_CONFIG": "/etc/c.toml"}, None, None),
]


@pytest.mark.parametrize(("environ", "env_var", "expected"), [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES])
def test_config_path(monkeypatch, environ, env_var, expected):
    """Apache's SetEnv reaches only the WSGI environ; cron and the CLI use the env var."""
    if env_var is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, env_var)
    assert config_path(environ) == expected


def test_names():
    assert (ENVIRON_KEY, ENV_VAR) == ("tracker_wsgi.config", "TRACKER_WSGI_CONFIG")


def test_without_environ_or_env_var_the_installs_config_file_if_it_is_there(monkeypatch, tmp_path):
    """/etc/tracker-wsgi/tracker.toml, where the README's install puts it (here in tmp_path)."""
    system = tmp_path / "tracker.toml"
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", str(system))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert config_path({}) is None
    system.write_text("")
    assert config_path({}) == config_path() == str(system)
    monkeypatch.setenv(ENV_VAR, "/etc/b.toml")
    assert config_path({}) == "/etc/b.toml"
    assert config_path({ENVIRON_KEY: "/etc/a.toml"}) == "/etc/a.toml"


README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_limit_is_a_key_of_its_own_read_into_config_limits_by_name(tmp_path):
    """Each limit is declared once (limits.Limits): a config key of its own, its range
    checked, its value landing in the field of its name whatever the declarations' order."""
    declared = fields(Limits)
    text = "\n".join(f"{f.name} = {f.metadata['range'][0] + n}" for n, f in enumerate(declared))
    config = load(str(write(tmp_path, text)))
    assert [getattr(config.limits, f.name) for f in declared] == [
        f.metadata["range"][0] + n for n, f in enumerate(declared)]
    for f in declared:
        low, high = f.metadata["range"]
        assert low <= f.default <= high
        for bad in (low - 1, high + 1, "1", True):
            with pytest.raises(ConfigError, match=f"{f.name} = .* must be a whole number from {low} to {high}"):
                from_dict({f.name: bad})
    assert load(None).limits == Limits()


def test_the_readme_lists_every_limit_as_declared():
    """The README's Configuration reference rows of the limits are the declarations'
    (limits.reference_rows): a new limit, or a new default, cannot leave the README behind."""
    readme = README.read_text().splitlines()
    rows = reference_rows()
    assert len(rows) == len(fields(Limits))
    missing = [row for row in rows if row not in readme]
    assert not missing, "paste these rows into README.md's Configuration reference:\n" + "\n".join(missing)
    names = {f.name for f in fields(Limits)}
    stale = [line for line in readme if line.startswith("| `") and line.split("`")[1] in names and line not in rows]
    assert not stale
