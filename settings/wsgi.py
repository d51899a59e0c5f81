"""The WSGI application (gunicorn ``settings.wsgi``).

A malformed variable prints its message alone and exits 2. Gunicorn runs with ``--preload`` (``Procfile``) so that
this happens once, in the master, which then exits 2; loaded in a worker, an exit would only make gunicorn fork a
new worker, again and again.
"""

import os
import sys

from django.core.wsgi import get_wsgi_application

from .env import EXIT_CODE, ConfigurationError, report

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")

try:
    application = get_wsgi_application()
except ConfigurationError as error:
    report(error, sys.stderr)
    sys.exit(EXIT_CODE)
