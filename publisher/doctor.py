"""``manage.py publisherdoctor``: is everything in place for publishing, and if not, what to do (DESIGN §6).

``findings()`` looks at the configuration (the system checks), the database (reachable, migrated), the launcher's
platform (``launcher.diagnose()``: on Heroku the key, the app, its stack and its dyno tier), the destination (a test
write), the sweep (ran within three of its intervals) and the recent builds (failures in a row, a stall, a build that
does not start), and returns one ``Finding`` per thing found, each with what to do. The command prints them; the
status banner can show the same findings. Nothing here changes a build or prints a secret.
"""

import logging
from datetime import timedelta

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from .health import Finding, Level

logger = logging.getLogger(__name__)

#: Heroku Scheduler's shortest interval, the sweep's when no worker runs its every-minute schedule (DESIGN §7).
SCHEDULER_INTERVAL = 600
#: The sweep is silent when it has not run for this many of its intervals.
SILENT_INTERVALS = 3
#: This many failed or lost builds in a row is a failure to fix, not bad luck.
FAILURES_IN_A_ROW = 3
#: Finished builds the doctor looks at.
RECENT_BUILDS = 10
ERROR_CHARS = 200


def findings():
    """Every finding, in this order: configuration, database, launcher, destination, sweep, builds."""
    found = []
    found += _section("configuration", configuration_findings)
    database = _section("database", database_findings)
    found += database
    found += _section("launcher", launcher_findings)
    found += _section("destination", destination_findings)
    if database and database[0].level is Level.FAIL:  # unreachable or not migrated
        found.append(Finding(Level.WARN, "The sweep and the recent builds were not looked at: no database to ask."))
    else:
        found += _section("sweep", sweep_findings)
        found += _section("builds", build_findings)
    return found


def needs_fixing(found):
    """Whether any finding is a failure (the command's exit 1)."""
    return any(finding.level is Level.FAIL for finding in found)


def _section(name, look):
    """One part of the report; a part that crashes is a finding too, and the others still run (the boundary)."""
    try:
        return list(look())
    except Exception as exc:
        logger.exception("The doctor's look at the %s crashed", name)
        return [Finding(Level.FAIL, f"Looking at the {name} crashed: {type(exc).__name__}: {exc}", "See the log.")]


# --- configuration and database ------------------------------------------------------------------------------------


def from_messages(messages):
    """Findings from system-check messages: errors fail, warnings warn (each with its id and hint)."""
    found = []
    for message in messages:
        if message.is_silenced() or message.level < checks.WARNING:
            continue
        level = Level.FAIL if message.level >= checks.ERROR else Level.WARN
        where = f"{message.obj}: " if message.obj is not None else ""
        found.append(Finding(level, f"{where}{message.msg} ({message.id})", message.hint or ""))
    return found


def configuration_findings():
    found = from_messages(checks.run_checks())
    if not found:
        found.append(Finding(Level.OK, "The configuration passes the system checks."))
    return found


def database_findings(alias=DEFAULT_DB_ALIAS):
    from django.db.migrations.executor import MigrationExecutor

    connection = connections[alias]
    try:
        connection.ensure_connection()
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as exc:
        said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [
            Finding(
                Level.FAIL,
                f"The database ({connection.vendor}) cannot be reached: {said}",
                "Check DATABASE_URL and that the database server is up.",
            )
        ]
    if plan:
        names = [f"{migration.app_label}.{migration.name}" for migration, _ in plan]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return [
            Finding(
                Level.FAIL,
                f"{len(names)} migration(s) are not applied: {shown}.",
                "Run `manage.py migrate` (on Heroku the release phase runs it on every deploy).",
            )
        ]
    found = [Finding(Level.OK, f"The database ({connection.vendor}) is reachable and every migration is applied.")]
    return found + from_messages(checks.run_checks(tags=[checks.Tags.database], databases=[alias]))


# --- launcher and destination --------------------------------------------------------------------------------------


def launcher_findings():
    from .launchers import get_launcher

    try:
        launcher = get_launcher()
    except ImproperlyConfigured as exc:
        return [Finding(Level.FAIL, f"The launcher's platform was not asked: {exc}", "See publisher.E001.")]
    found = list(launcher.diagnose())
    if not found:
        found.append(Finding(Level.OK, f"The {launcher.name} launcher has nothing to ask beyond its configuration."))
    return found


def destination_findings():
    from .destinations import DestinationError, get_destination

    try:
        destination = get_destination()
    except ImproperlyConfigured as exc:
        return [Finding(Level.FAIL, f"The destination was not tried: {exc}", "See publisher.E030.")]
    where = destination.describe()
    try:
        destination.check_write()
    except NotImplementedError:
        return [Finding(Level.WARN, f"The {destination.name} destination ({where}) cannot be tried with a test write.")]
    except (DestinationError, OSError) as exc:
        return [
            Finding(
                Level.FAIL,
                f"The destination {where} refused a test write: {exc}",
                "Check its permissions (SITE_ROOT) or the bucket, its policy and the AWS credentials (SITE_S3_*).",
            )
        ]
    return [Finding(Level.OK, f"The destination {where} accepts a write.")]


# --- sweep and builds ----------------------------------------------------------------------------------------------


def sweep_interval(at):
    """``(seconds, who)``: how often the sweep should run. Every minute when a worker runs the django-q2 schedule
    (a running worker keeps the schedule's ``next_run`` at most a minute ahead and never more than one interval
    behind); else every 10 minutes, as Heroku Scheduler runs ``sweepbuilds`` (DESIGN §7)."""
    from django_q.models import Schedule

    from .sweep import SCHEDULE_NAME

    schedule = Schedule.objects.filter(name=SCHEDULE_NAME).values("minutes", "next_run").first()
    if schedule and schedule["next_run"]:
        every = 60 * (schedule["minutes"] or 1)
        if schedule["next_run"] >= at - timedelta(seconds=2 * every):
            return every, f"a worker runs its schedule every {_duration(every)}"
    return SCHEDULER_INTERVAL, "no worker runs its schedule; with Heroku Scheduler it runs every 10 min"


def sweep_findings():
    """The sweep ran within three of its intervals (``SweepStatus.ran_at``)."""
    from . import builds
    from .models import SweepStatus

    at = builds.now()
    every, who = sweep_interval(at)
    status = SweepStatus.objects.filter(pk=1).values("ran_at", "summary").first()
    hint = "Run a worker (`qcluster`, the Procfile's worker), or `manage.py sweepbuilds` from Heroku Scheduler."
    if not status or not status["ran_at"]:
        return [Finding(Level.FAIL, f"The sweep has never run ({who}).", hint)]
    age = (at - status["ran_at"]).total_seconds()
    if age > SILENT_INTERVALS * every:
        return [
            Finding(
                Level.FAIL,
                f"The sweep has not run for {_duration(age)} ({who}): missed launches are not retried and lost "
                "builds are not noticed.",
                hint,
            )
        ]
    return [Finding(Level.OK, f"The sweep ran {_duration(age)} ago ({who}).")]


def build_findings():
    """The open builds (stalled, silent, not starting, queued after failed launches) and the recent outcomes."""
    from . import builds
    from .conf import get_config
    from .models import ACTIVE_STATES, Build, BuildState

    at = builds.now()
    config = get_config()
    found = []
    for build in Build.objects.filter(state__in=(BuildState.QUEUED, *ACTIVE_STATES)).order_by("pk"):
        found.append(_open_build(build, at, config))
    finished = list(
        Build.objects.filter(state__in=(BuildState.SUCCEEDED, BuildState.FAILED, BuildState.LOST))
        .order_by("-pk")
        .only("pk", "state", "error", "finished_at", "release")[:RECENT_BUILDS]
    )
    found.append(_recent_outcomes(finished, at))
    return found


def _open_build(build, at, config):
    from .models import BuildState as S

    name = f"Build #{build.pk}"
    if build.state == S.QUEUED:
        if build.attempt > 1 and build.error:
            level = Level.FAIL if build.needs_operator else Level.WARN
            retry = ""
            if build.next_attempt_at and build.next_attempt_at > at:
                retry = f"; next attempt in {_duration((build.next_attempt_at - at).total_seconds())}"
            hint = "A person must act on the error above." if build.needs_operator else "It is retried automatically."
            return Finding(
                level,
                f"{name} is queued after {build.attempt - 1} failed launch(es): {_short(build.error)}{retry}.",
                hint,
            )
        return Finding(Level.OK, f"{name} is queued.")
    if build.state == S.RUNNING:
        pages = f"{build.pages_done or 0}/{build.pages_total if build.pages_total is not None else '?'} pages"
        moved = build.progress_at or build.started_at
        if moved and (at - moved).total_seconds() > config.BUILD_STALL_AFTER:
            return Finding(
                Level.FAIL,
                f"{name} is stalled: no page done for {_duration((at - moved).total_seconds())} ({pages}).",
                "Open it in the admin for its log; cancel it if it does not move.",
            )
        beat = build.heartbeat_at or build.started_at
        if beat and (at - beat).total_seconds() > config.BUILD_LOST_AFTER:
            return Finding(
                Level.WARN,
                f"{name} has written no heartbeat for {_duration((at - beat).total_seconds())}; the sweep asks its "
                "launcher whether it is still there.",
            )
        since = f", started {_duration((at - build.started_at).total_seconds())} ago" if build.started_at else ""
        return Finding(Level.OK, f"{name} is running: {pages}{since}.")
    launched = build.launched_at or build.created_at
    waited = (at - launched).total_seconds() if launched else 0
    if waited > config.BUILD_START_TIMEOUT:
        return Finding(
            Level.WARN,
            f"{name} is {build.state} since {_duration(waited)} ago and has not started building.",
            "Look at the build's output (its log, or `heroku logs --dyno run` on Heroku).",
        )
    return Finding(Level.OK, f"{name} is {build.state}.")


def _recent_outcomes(finished, at):
    from .models import BuildState as S

    if not finished:
        return Finding(Level.OK, "No build has finished yet.")
    failed = []
    for build in finished:
        if build.state == S.SUCCEEDED:
            break
        failed.append(build)
    if not failed:
        last = finished[0]
        when = f" {_duration((at - last.finished_at).total_seconds())} ago" if last.finished_at else ""
        release = f" (release {last.release})" if last.release else ""
        return Finding(Level.OK, f"The last build, #{last.pk}, succeeded{when}{release}.")
    said = "; ".join(f"#{b.pk} {b.state}: {_short(b.error) or 'no error recorded'}" for b in failed[:FAILURES_IN_A_ROW])
    hint = "Open these builds in the admin for their logs; the findings above may say why."
    if len(failed) >= FAILURES_IN_A_ROW:
        more = "" if len(failed) < len(finished) else " (no success among the recent ones)"
        return Finding(Level.FAIL, f"The last {len(failed)} builds failed{more}: {said}.", hint)
    return Finding(Level.WARN, f"The last build{'s' if len(failed) > 1 else ''} failed: {said}.", hint)


def _short(text):
    text = " ".join((text or "").split())
    return text if len(text) <= ERROR_CHARS else f"{text[: ERROR_CHARS - 1]}…"


def _duration(seconds):
    """``45 s``, ``1 min``, ``12 min``, ``3 h``, ``2 days``."""
    seconds = max(0, int(seconds))
    if seconds < 120 and seconds % 60:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"
