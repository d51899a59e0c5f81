"""Settings for the test suite: the project's settings with the recording launcher and a file SQLite database.

A file (not ``:memory:``) so that build processes, workers and other children started by tests share the database;
each child gets ``DATABASE_URL``, ``SITE_ROOT`` and ``LAUNCHER`` explicitly.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key")

from .settings import *  # noqa: F403
from .settings import DATABASES, PUBLISHER, VAR_DIR

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}

PUBLISHER["LAUNCHER"] = {"BACKEND": "publisher.launchers.recording.RecordingLauncher", "OPTIONS": {}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"  # noqa: F405
SECURE_SSL_REDIRECT = SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False
