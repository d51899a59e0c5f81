"""System checks (``manage.py check``; run by every management command and once at the start of the web process).

Every message has a stable id (``publisher.E001``, ``publisher.W040``) and, where a person can act, a hint; the
table of ids is in ``docs/operators.md``. Each ``check_*`` function returns a list, like Django's own
(``django/core/checks/caches.py``); launchers and destinations report their own problems through ``check()``.
All are tagged ``publisher`` (``manage.py check --tag publisher``); those that query the database are also tagged
``database`` and run only when Django asks for them (``migrate``, ``check --database default``, the doctor).
"""

import os
from pathlib import Path

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

TAG = "publisher"

E001 = "publisher.E001"  # the launcher cannot be loaded
E002 = "publisher.E002"  # settings.PUBLISHER is malformed
E003 = "publisher.E003"  # the database cannot hold the coalescing constraints
E004 = "publisher.E004"  # a build setting is out of range, or BUILD_RETRY_MAX < BUILD_RETRY_BASE
E005 = "publisher.E005"  # BUILD_LOST_AFTER leaves no room for a missed heartbeat
E006 = "publisher.E006"  # BUILD_STALL_AFTER is shorter than BUILD_LOST_AFTER
E007 = "publisher.E007"  # BUILD_LAUNCH_TIMEOUT or BUILD_START_TIMEOUT is not shorter than BUILD_TIMEOUT
E030 = "publisher.E030"  # the destination cannot be loaded
E040 = "publisher.E040"  # the local launcher on a Heroku web/worker dyno: builds would run inside it
E041 = "publisher.E041"  # SITE_ROOT cannot be written (local destination)
W040 = "publisher.W040"  # the sweep's schedule is missing
W041 = "publisher.W041"  # ADMINS is empty with DEBUG off: nobody gets failure reports

#: Durations the sweep compares with one another (DESIGN §1, §3), one rule a row:
#: ``(id, shorter, longer, factor, strict, problem, hint)``: ``longer`` must exceed ``factor × shorter`` (or, where
#: ``strict`` is False, at least equal it).
TIMEOUT_RULES = (
    (
        E005,
        "BUILD_HEARTBEAT_INTERVAL",
        "BUILD_LOST_AFTER",
        2,
        True,
        "a build that misses one heartbeat would be judged lost, and builds stop themselves after "
        "BUILD_LOST_AFTER / 2 without a heartbeat written",
        "Keep BUILD_LOST_AFTER above twice BUILD_HEARTBEAT_INTERVAL (defaults: 120 and 10).",
    ),
    (
        E006,
        "BUILD_LOST_AFTER",
        "BUILD_STALL_AFTER",
        1,
        False,
        "a build whose process died would be reported as stalled before it is judged lost",
        "Keep BUILD_STALL_AFTER at least BUILD_LOST_AFTER (defaults: 900 and 120).",
    ),
    (
        E007,
        "BUILD_LAUNCH_TIMEOUT",
        "BUILD_TIMEOUT",
        1,
        True,
        "a build stuck in launching would time out before it is ever re-queued",
        "Keep BUILD_LAUNCH_TIMEOUT well below BUILD_TIMEOUT (defaults: 60 and 10800).",
    ),
    (
        E007,
        "BUILD_START_TIMEOUT",
        "BUILD_TIMEOUT",
        1,
        True,
        "a build that never started would time out before the launcher is asked about it",
        "Keep BUILD_START_TIMEOUT well below BUILD_TIMEOUT (defaults: 300 and 10800).",
    ),
)


def _config():
    """The configuration, or ``None`` when it is malformed (reported once, by ``check_launcher`` as E002)."""
    from .conf import get_config

    try:
        return get_config()
    except ImproperlyConfigured:
        return None


@checks.register(TAG)
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


@checks.register(TAG, checks.Tags.database)
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


@checks.register(TAG)
def check_build_settings(app_configs=None, **kwargs):
    """Every duration and count is a whole number of at least 1, and the durations agree with one another."""
    config = _config()
    if config is None:
        return []
    errors = []
    positive = [
        name for name in config.__dataclass_fields__ if name.startswith("BUILD_") or name == "SITE_RELEASES_KEPT"
    ]
    for name in positive:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            errors.append(checks.Error(f"{name} must be a whole number of at least 1; got {value!r}.", id=E004))
    if errors:
        return errors  # comparing values that are not numbers says nothing more
    if config.BUILD_RETRY_MAX < config.BUILD_RETRY_BASE:
        errors.append(
            checks.Error(
                f"BUILD_RETRY_MAX ({config.BUILD_RETRY_MAX}) must not be less than BUILD_RETRY_BASE "
                f"({config.BUILD_RETRY_BASE}).",
                hint="BUILD_RETRY_BASE is the first wait before a retry, BUILD_RETRY_MAX the longest (30 and 1800).",
                id=E004,
            )
        )
    return errors + check_timeouts(config)


def check_timeouts(config):
    """The sweep's durations, compared by ``TIMEOUT_RULES`` (called by ``check_build_settings``)."""
    errors = []
    for id, shorter, longer, factor, strict, problem, hint in TIMEOUT_RULES:
        short, long = getattr(config, shorter), getattr(config, longer)
        if factor * short < long or (not strict and factor * short == long):
            continue
        times = f"{factor} × {shorter}" if factor != 1 else shorter
        relation = "greater than" if strict else "at least"
        errors.append(
            checks.Error(
                f"{longer} ({long}s) must be {relation} {times} ({factor * short}s): {problem}.", hint=hint, id=id
            )
        )
    return errors


@checks.register(TAG)
def check_destination(app_configs=None, **kwargs):
    """The configured destination loads, and reports its own configuration problems."""
    from .destinations import get_destination

    if _config() is None:
        return []  # reported once, by check_launcher (E002)
    return _backend_checks(
        get_destination,
        hint="Set SITE_DESTINATION to 'local', 's3', or the dotted path of a destination class.",
        id=E030,
    )


#: Heroku's one-off dynos (``heroku run``, and the dynos the Heroku launcher starts: ``run.4821``) are where builds
#: themselves run; a build started by hand there needs no launcher. Every other dyno type is a long-lived process
#: (``web.1``, ``worker.1``) or a short task whose exit would end a build it launched (``scheduler.1``).
ONE_OFF_DYNO_TYPES = frozenset({"run"})


@checks.register(TAG)
def check_launcher_on_heroku(app_configs=None, **kwargs):
    """``LAUNCHER=local`` on a Heroku dyno: each build would run inside the web (or worker) dyno that launched it,
    use its memory, die with it at its daily restart, and could not be judged from another dyno."""
    from .launchers import get_launcher
    from .launchers.local import LocalLauncher

    config = _config()
    if config is None or not config.DYNO or config.DYNO.partition(".")[0] in ONE_OFF_DYNO_TYPES:
        return []
    try:
        launcher = get_launcher()
    except ImproperlyConfigured:
        return []  # E001
    if not isinstance(launcher, LocalLauncher):
        return []
    return [
        checks.Error(
            f"LAUNCHER is 'local' on the Heroku dyno {config.DYNO}: each build would run inside this dyno, share "
            "its memory, and die with it when the dyno restarts or exits.",
            hint="Set LAUNCHER=heroku with HEROKU_API_KEY and HEROKU_APP_NAME, so each build gets a one-off dyno.",
            id=E040,
        )
    ]


@checks.register(TAG)
def check_site_root(app_configs=None, **kwargs):
    """The local destination can create ``SITE_ROOT`` or write in it. (What is inside, such as a damaged
    ``releases`` folder, is the build's to report: it fails with the reason, recorded on the build.)"""
    from .destinations import get_destination
    from .destinations.local import LocalDestination

    if _config() is None:
        return []
    try:
        destination = get_destination()
    except ImproperlyConfigured:
        return []  # E030
    if not isinstance(destination, LocalDestination):
        return []
    root = Path(destination.site.root)
    problem = _not_writable(root)
    if problem is None:
        return []
    return [
        checks.Error(
            f"SITE_ROOT {root} cannot be written ({problem}): builds cannot store their releases.",
            hint="Make the folder writable by the user running the publisher, or set SITE_ROOT to one that is.",
            id=E041,
        )
    ]


def _not_writable(folder):
    """Why ``folder`` cannot be written (or created), or ``None`` when it can."""
    existing = next((path for path in (folder, *folder.parents) if path.exists() or path.is_symlink()), None)
    if existing is None:
        return "no part of the path exists"
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


@checks.register(TAG, checks.Tags.database)
def check_sweep_schedule(app_configs=None, databases=None, **kwargs):
    """The django-q2 schedule that runs the sweep every minute exists (``migrate`` creates it).

    A Warning: Heroku Scheduler running ``sweepbuilds`` is the alternative. Before the migrations ran (``migrate``
    runs this check first) there is nothing to look at.
    """
    from django.db import DatabaseError, connections, router
    from django_q.models import Schedule

    from .sweep import SCHEDULE_NAME

    messages = []
    for alias in databases or ():
        if not router.allow_migrate_model(alias, Schedule):
            continue
        connection = connections[alias]
        try:
            if Schedule._meta.db_table not in connection.introspection.table_names():
                continue  # not migrated yet
            if Schedule.objects.using(alias).filter(name=SCHEDULE_NAME).exists():
                continue
        except DatabaseError:
            continue  # an unreachable database is the doctor's finding, not a configuration error
        messages.append(
            checks.Warning(
                f"The schedule {SCHEDULE_NAME!r} that runs the sweep every minute is missing from the database "
                f"{alias!r}: builds whose launch was missed are not retried, and lost builds are not noticed.",
                hint="Run `manage.py migrate` (it creates the schedule) and a worker (`qcluster`), or run "
                "`manage.py sweepbuilds` from Heroku Scheduler every 10 minutes.",
                id=W040,
            )
        )
    return messages


@checks.register(TAG)
def check_admins(app_configs=None, **kwargs):
    """In production (``DEBUG`` off) failure and stall reports are mailed to ``ADMINS``: someone must be there."""
    if settings.DEBUG or settings.ADMINS:
        return []
    return [
        checks.Warning(
            "ADMINS is empty: nobody is mailed when a build fails, stalls, or needs an operator (a rejected Heroku "
            "key, a missing app).",
            hint="Set ADMINS to one or more addresses, e.g. ADMINS='Ops <ops@example.com>', with SERVER_EMAIL and "
            "the EMAIL_* settings of your mail server.",
            id=W041,
        )
    ]
