"""`python -m tracker_wsgi.cli`: the command line, as the installed `tracker-wsgi` runs it."""

import sys

from . import main

sys.exit(main())
