"""The WSGI application (gunicorn ``settings.wsgi``).

A malformed variable prints its message alone and exits 2. Gunicorn runs with ``--preload`` (``Procfile``) so that
this happens once, in the master, which then exits 2; loaded in a worker, an exit would only make gunicorn fork a
new worker, again and again.

Once the application has loaded, the publisher's system checks run once (in the master, with ``--preload``) and
every error is logged with its hint; the web process keeps serving, so editors can work in the admin while the
banner names what is wrong. The workers inherit the result (``publisher.health.configuration_problems``).
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

from publisher.health import log_configuration_problems

log_configuration_problems()
