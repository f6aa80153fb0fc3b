# mod_wsgi entry point for tracker_wsgi. Keep it a shim: mod_wsgi loads this file under a
# name of its own and reloads it when touched, so it must hold no state.
# `touch` this file to restart the tracker's daemon processes after a config change.
from tracker_wsgi.wsgi import application  # noqa: F401
