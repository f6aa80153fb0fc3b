"""Where the files installed with the package are, for the admin (`tracker-wsgi paths`), the
development server and the tests: the Apache snippets and the files for /etc."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# Apache includes these from here (TRACKER_WSGI_APACHE); the checkout's apache/ is a link to
# it. The snippets of daemon mode (tracker.conf) and of embedded mode (tracker-embedded.conf in
# the host, embedded-server.conf in the server config), what both add to the host, the public
# site, the WSGI script, the bodies of Apache's own refusals and the site's sample pages.
APACHE_DIR = PACKAGE_DIR / "apache"
APACHE_FILES = ("tracker.conf", "tracker-embedded.conf", "embedded-server.conf", "tracker-host.conf", "site.conf",
                "tracker.wsgi", "errors/", "sample-site/")
# Files for /etc, each at its path below /etc: the Apache site, the cron.d file, the systemd
# service and timer, the tmpfiles.d file.
SYSTEM_DIR = PACKAGE_DIR / "system"
