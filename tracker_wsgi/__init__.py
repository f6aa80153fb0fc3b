"""tracker_wsgi: a BitTorrent tracker for Apache/mod_wsgi on MySQL/MariaDB or SQLite."""

__version__ = "0.1.0"
