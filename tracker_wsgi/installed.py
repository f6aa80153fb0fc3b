"""Where the files installed with the package are, for the admin (`tracker-wsgi paths`), the
development server and the tests: the Apache snippets and the files for /etc."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# tracker.conf, tracker-host.conf, site.conf, tracker.wsgi, errors/, sample-site/: Apache
# includes them from here (TRACKER_WSGI_APACHE). The checkout's apache/ is a link to it.
APACHE_DIR = PACKAGE_DIR / "apache"
# Files for /etc, each at its path below /etc: the Apache site, the cron.d file, the systemd
# service and timer, the tmpfiles.d file.
SYSTEM_DIR = PACKAGE_DIR / "system"
