"""System checks (``manage.py check``; run at startup of runserver, migrate and the build command)."""

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

E001 = "publisher.E001"  # the launcher cannot be loaded
E002 = "publisher.E002"  # settings.PUBLISHER is malformed


@checks.register()
def check_launcher(app_configs=None, **kwargs):
    """The configured launcher loads, and reports its own configuration problems."""
    from .conf import get_config
    from .launchers import get_launcher

    try:
        get_config()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint="Fix settings.PUBLISHER (see DESIGN §1).", id=E002)]
    return _backend_checks(
        get_launcher, hint="Set LAUNCHER to 'local', 'heroku', or the dotted path of a launcher class.", id=E001
    )


def _backend_checks(get, *, hint, id):
    """The backend ``get()`` builds reports its own problems; one that cannot be built is an error ``id``."""
    try:
        backend = get()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint=hint, id=id)]
    return list(backend.check())


E003 = "publisher.E003"  # the database cannot hold the coalescing constraints
E004 = "publisher.E004"  # a build setting is out of range


@checks.register(checks.Tags.database)
def check_partial_indexes(app_configs=None, databases=None, **kwargs):
    """At most one active and one queued build are held by partial unique indexes: refuse a database without them."""
    from django.db import connections

    errors = []
    for alias in databases or ():
        connection = connections[alias]
        if not connection.features.supports_partial_indexes:
            errors.append(
                checks.Error(
                    f"The database {alias!r} ({connection.vendor}) does not support partial unique indexes, which "
                    "publisher needs to guarantee at most one running and one queued build.",
                    hint="Use PostgreSQL or SQLite.",
                    id=E003,
                )
            )
    return errors


@checks.register()
def check_build_settings(app_configs=None, **kwargs):
    from .conf import get_config

    try:
        config = get_config()
    except ImproperlyConfigured:
        return []  # reported by check_launcher
    errors = []
    positive = [
        name for name in config.__dataclass_fields__ if name.startswith("BUILD_") or name == "SITE_RELEASES_KEPT"
    ]
    for name in positive:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            errors.append(checks.Error(f"{name} must be a whole number of at least 1; got {value!r}.", id=E004))
    if not errors and config.BUILD_RETRY_MAX < config.BUILD_RETRY_BASE:
        errors.append(checks.Error("BUILD_RETRY_MAX must not be less than BUILD_RETRY_BASE.", id=E004))
    return errors


E030 = "publisher.E030"  # the destination cannot be loaded


@checks.register()
def check_destination(app_configs=None, **kwargs):
    """The configured destination loads, and reports its own configuration problems."""
    from .conf import get_config
    from .destinations import get_destination

    try:
        get_config()
    except ImproperlyConfigured:
        return []  # reported once, by check_launcher (E002)
    return _backend_checks(
        get_destination,
        hint="Set SITE_DESTINATION to 'local', 's3', or the dotted path of a destination class.",
        id=E030,
    )
