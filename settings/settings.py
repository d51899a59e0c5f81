"""Django settings for the publisher project, read from the environment (DESIGN §1).

A ``.env`` file in the project root is loaded first; it never overrides variables that are already set.
The app itself reads only ``settings.PUBLISHER`` (built at the bottom of this file), never the environment.
"""

from pathlib import Path

import dj_database_url
from dotenv import load_dotenv

from . import env

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env", override=False)


def project_path(value):
    """A path from the environment, resolved against the project root when relative."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else BASE_DIR / path


VAR_DIR = project_path(env.string("VAR_DIR", "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.boolean("DEBUG", False)
SECRET_KEY = env.string("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise env.ConfigurationError(
            "SECRET_KEY is not set. Set it in the environment (Heroku: heroku config:set SECRET_KEY=...) "
            "or run 'make run', which writes a development .env with DEBUG=1 and a generated key."
        )
    SECRET_KEY = "django-insecure-development-only"

LOCAL_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
ALLOWED_HOSTS = env.strings("ALLOWED_HOSTS", LOCAL_HOSTS)
CSRF_TRUSTED_ORIGINS = env.strings(
    "CSRF_TRUSTED_ORIGINS", [f"http://{host}" for host in LOCAL_HOSTS] + [f"https://{host}" for host in LOCAL_HOSTS]
)

INSTALLED_APPS = [
    # publisher first: its admin/base_site.html (the status banner) must win over the admin's own, and its qcluster
    # command (publisher.worker.Cluster) over django-q2's.
    "publisher",
    "publisher.apps.PublisherAdminConfig",  # django.contrib.admin with publisher.sites.PublisherAdminSite
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_q",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "settings.urls"
WSGI_APPLICATION = "settings.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------------------
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
_db = dj_database_url.config(default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}", conn_max_age=0 if DEBUG else 600)
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # The web process, the worker and build processes write one SQLite file at once: WAL lets readers run beside
    # the writer, the busy timeout waits for the lock instead of failing, and IMMEDIATE transactions take the write
    # lock at BEGIN so two writers never deadlock on a read-to-write upgrade.
    _db["CONN_MAX_AGE"] = 0
    _db.setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": env.integer("SQLITE_TIMEOUT", 20),
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
elif _db["ENGINE"].startswith("django.db.backends.postgresql"):
    _db["CONN_HEALTH_CHECKS"] = True
    _db.setdefault("OPTIONS", {})["connect_timeout"] = env.integer("DATABASE_CONNECT_TIMEOUT", 10)
    _host = _db.get("HOST") or ""
    _local = not _host or _host.startswith("/") or _host in ("localhost", "127.0.0.1", "::1")
    # Heroku Postgres requires TLS; a database on this machine (development, tests) has none.
    if env.boolean("DATABASE_SSL_REQUIRE", not DEBUG and not _local):
        _db.setdefault("OPTIONS", {})["sslmode"] = "require"
DATABASES = {"default": _db}

# --- Auth, i18n, static ---------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Above any page form post: a 1,000,000-character body percent-encoded takes up to 12 MB (4-byte characters).
DATA_UPLOAD_MAX_MEMORY_SIZE = 16 * 1024 * 1024
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- Production (Heroku terminates TLS at its router) ---------------------------------------------------------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.boolean("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT
    SECURE_CONTENT_TYPE_NOSNIFF = True

# --- Email: failure and stall reports -------------------------------------------------------------------------
ADMINS = env.emails("ADMINS")
SERVER_EMAIL = env.email("SERVER_EMAIL", "publisher@localhost")
DEFAULT_FROM_EMAIL = env.string("DEFAULT_FROM_EMAIL", SERVER_EMAIL)
EMAIL_BACKEND = env.string(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env.string("EMAIL_HOST", "localhost")
EMAIL_PORT = env.integer("EMAIL_PORT", 25)
EMAIL_HOST_USER = env.string("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env.string("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env.boolean("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env.boolean("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env.integer("EMAIL_TIMEOUT", 10)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "publisher": {"handlers": ["console"], "level": env.string("PUBLISHER_LOG_LEVEL", "INFO"), "propagate": False},
        # django-q2 sets up its own INFO handler only when no handler exists up to the root; ours does, so its
        # records fall to the root's WARNING. The worker's start and stop are logged under publisher.worker; set
        # Q_LOG_LEVEL=INFO for django-q2's own lines (three a minute: the schedule, the task, its result).
        "django-q": {"handlers": ["console"], "level": env.string("Q_LOG_LEVEL", "WARNING"), "propagate": False},
    },
}

# --- django-q2: the worker process runs the safety-net sweep every minute ---------------------------------------
Q_CLUSTER = {
    "name": "publisher",
    # The ORM broker on the default database: no Redis to run or pay for.
    "orm": "default",
    # A sweep pass is light work; one worker keeps database connections and memory low.
    "workers": 1,
    # The worst pass: one launch plus status calls and a stop, each at most HEROKU_TOTAL_TIMEOUT (30 s by default):
    # 4 x 30 s = 120 s, plus database time. A pass running longer than this is killed: keep HEROKU_TOTAL_TIMEOUT
    # at or below about 35 s, or raise this with it.
    "timeout": 150,
    # Must exceed timeout, or a pass still running would be handed out a second time.
    "retry": 180,
    # No endless re-delivery of a failed pass: the schedule starts a fresh one next minute anyway.
    "max_attempts": 1,
    "ack_failures": True,
    # After downtime run one pass, not one per missed minute.
    "catch_up": False,
    # The broker checks for queued tasks this often (seconds); the schedule itself is checked every 30 s. Ten
    # seconds keeps an idle database quiet (6 queries a minute instead of 300 at the default 0.2 s).
    "poll": env.integer("Q_POLL", 10),
    # django-q2's ORM broker with the same queries, but no sleep longer than half a second in between: django-q2's
    # own sleeps `poll` seconds at a time, and a stopping worker waited for it (publisher/worker.py).
    "broker_class": "publisher.worker.ORMBroker",
    # Keep a few results for operators; the sweep prunes older task rows.
    "save_limit": 50,
    "label": "Tasks",
}

# --- publisher -------------------------------------------------------------------------------------------------
LAUNCHERS = {
    "local": "publisher.launchers.local.LocalLauncher",
    "heroku": "publisher.launchers.heroku.HerokuLauncher",
}
_launcher = env.string("LAUNCHER", "local")
_launcher_options = {
    "local": {},
    "heroku": {
        "API_KEY": env.string("HEROKU_API_KEY", ""),
        "APP_NAME": env.string("HEROKU_APP_NAME", ""),
        "API_URL": env.string("HEROKU_API_URL", "https://api.heroku.com"),
        "DYNO_SIZE": env.string("HEROKU_DYNO_SIZE", ""),
        "COMMAND_PREFIX": env.string("HEROKU_COMMAND_PREFIX", ""),
        "CONNECT_TIMEOUT": env.integer("HEROKU_CONNECT_TIMEOUT", 5),
        "READ_TIMEOUT": env.integer("HEROKU_READ_TIMEOUT", 15),
        # The whole call, however the API trickles its answer (publisher.E015: at least connect + read).
        "TOTAL_TIMEOUT": env.integer("HEROKU_TOTAL_TIMEOUT", 30),
    },
}

DESTINATIONS = {
    "local": "publisher.destinations.local.LocalDestination",
    "s3": "publisher.destinations.s3.S3Destination",
}
_destination = env.string("SITE_DESTINATION", "local")
_destination_options = {
    "local": {},
    "s3": {
        "BUCKET": env.string("SITE_S3_BUCKET", ""),
        "PREFIX": env.string("SITE_S3_PREFIX", ""),
        "ENDPOINT_URL": env.string("SITE_S3_ENDPOINT_URL", ""),
        "REGION": env.string("SITE_S3_REGION", ""),
        "CLOUDFRONT_KVS_ARN": env.string("SITE_CLOUDFRONT_KVS_ARN", ""),
        "MIRROR_PREFIX": env.string("SITE_S3_MIRROR_PREFIX", ""),
        "CONNECT_TIMEOUT": env.integer("SITE_S3_CONNECT_TIMEOUT", 5),
        "READ_TIMEOUT": env.integer("SITE_S3_READ_TIMEOUT", 30),
    },
}

PUBLISHER = {
    # An unknown name is passed through as a dotted path; the app reports it (publisher.E001) if it cannot load it.
    "LAUNCHER": {"BACKEND": LAUNCHERS.get(_launcher, _launcher), "OPTIONS": _launcher_options.get(_launcher, {})},
    # Builds are judged and stopped by the launcher that started them: switching LAUNCHER leaves the others usable.
    "LAUNCHERS": {name: {"BACKEND": LAUNCHERS[name], "OPTIONS": _launcher_options[name]} for name in LAUNCHERS},
    "DYNO": env.string("DYNO", ""),
    "SITE_SERVE": env.boolean("SITE_SERVE", DEBUG),
    # An unknown name is passed through as a dotted path, like LAUNCHER.
    "DESTINATION": {
        "BACKEND": DESTINATIONS.get(_destination, _destination),
        "OPTIONS": _destination_options.get(_destination, {}),
    },
    "SITE_ROOT": project_path(env.string("SITE_ROOT", "var/site")),
    "SITE_URL": env.url("SITE_URL", "http://127.0.0.1:8000/site/"),
    "SITE_RELEASES_KEPT": env.integer("SITE_RELEASES_KEPT", 5),
    "LOG_DIR": VAR_DIR / "log",
    "BUILD_TIMEOUT": env.integer("BUILD_TIMEOUT", 10800),
    "BUILD_HEARTBEAT_INTERVAL": env.integer("BUILD_HEARTBEAT_INTERVAL", 10),
    "BUILD_LAUNCH_TIMEOUT": env.integer("BUILD_LAUNCH_TIMEOUT", 60),
    "BUILD_START_TIMEOUT": env.integer("BUILD_START_TIMEOUT", 300),
    "BUILD_LOST_AFTER": env.integer("BUILD_LOST_AFTER", 120),
    "BUILD_STALL_AFTER": env.integer("BUILD_STALL_AFTER", 900),
    "BUILD_STALL_REPORT_EVERY": env.integer("BUILD_STALL_REPORT_EVERY", 3600),
    "BUILD_RETRY_BASE": env.integer("BUILD_RETRY_BASE", 30),
    "BUILD_RETRY_MAX": env.integer("BUILD_RETRY_MAX", 1800),
    "BUILD_MAX_ATTEMPTS": env.integer("BUILD_MAX_ATTEMPTS", 5),
    "BUILD_HISTORY_DAYS": env.integer("BUILD_HISTORY_DAYS", 90),
    "BUILD_WORKERS": env.integer("BUILD_WORKERS", None),  # None: one per CPU this process may use
}
