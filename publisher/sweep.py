"""The safety net: one pass finds what events missed and puts it right through ``publisher.builds``.

Runs every minute as a django-q2 schedule in the worker (``qcluster``), or as ``manage.py sweepbuilds`` from Heroku
Scheduler. Two passes at once are harmless: every action is a conditional transition and every report is claimed
by a conditional update. An idle pass costs four queries, all backed by indexes.

It also finishes cancels whose second step never ran (the web process that cancelled died before it stopped the
build's process, ``builds.stop_cancelled``).
"""

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured
from django.db.models import F, Q

from . import builds
from .conf import get_config
from .launchers import GONE, RUNNING, STARTING, UNKNOWN, LaunchError
from .models import ACTIVE_STATES, OPEN_STATES, Build, BuildRequest, BuildState, SweepStatus
from .signals import AlertKind, build_stalled, send_robustly

logger = logging.getLogger(__name__)
S = BuildState

#: Requests younger than this are left to the dispatch that follows their commit.
UNATTACHED_GRACE = 5
#: Pruning old history runs at most this often (seconds).
PRUNE_EVERY = 3600
#: A pass that did nothing is logged at most this often (seconds), so an operator can tell the worker is alive.
IDLE_LOG_EVERY = 300
_last_logged = None  # monotonic time of the last log line of this process's passes
#: What serves the site is reconciled with the live pointer at most this often per process (seconds).
RECONCILE_EVERY = 300
_reconciled = [float("-inf")]
SCHEDULE_NAME = "publisher: sweep builds"
#: A cancel's stop is left this long (seconds) to the canceller's own background thread before the sweep does it:
#: longer than a launcher's slowest stop (Heroku's connect and read timeouts, a local process's grace).
CANCEL_GRACE = 60
#: Cancelled builds whose process was to be stopped and was not (no time, no error recorded).
_UNFINISHED_CANCEL = Q(state=S.CANCELLED, stop_requested_at__isnull=False, stopped_at__isnull=True, stop_error="")


@dataclass
class Pass:
    """What one pass did, in words."""

    actions: list = field(default_factory=list)

    def add(self, outcome):
        """Record an Outcome in operators' words ("Build #3 launched on run.1"), or a sentence."""
        if isinstance(outcome, builds.Outcome) and outcome.detail and outcome.build_id:
            self.actions.append(f"Build #{outcome.build_id} {outcome.detail}")
        elif outcome is not None:
            self.actions.append(str(outcome))

    def __str__(self):
        return "; ".join(self.actions) if self.actions else "Nothing to do."


def sweep():
    """One pass (DESIGN §3, the sweep issue). Returns a ``Pass``."""
    config = get_config()
    started = time.monotonic()
    at = builds.now()
    done = Pass()
    open_builds = list(
        Build.objects.filter(Q(state__in=OPEN_STATES) | _UNFINISHED_CANCEL).values(
            "pk",
            "state",
            "launch_token",
            "handle",
            "manual",
            "launcher",
            "launched_at",
            "heartbeat_at",
            "progress_at",
            "stall_reported_at",
            "pages_done",
            "pages_total",
            "stop_requested_at",
        )
    )
    for build in open_builds:
        if build["state"] in ACTIVE_STATES:
            done.add(_guarded(f"checking build #{build['pk']}", _check_active, build, at, config))
        elif build["state"] == S.CANCELLED and _age(build["stop_requested_at"], at) > CANCEL_GRACE:
            done.add(_guarded(f"stopping cancelled build #{build['pk']}", _finish_cancel, build["pk"]))
    unattached = BuildRequest.objects.filter(
        build__isnull=True, created_at__lte=at - timedelta(seconds=UNATTACHED_GRACE)
    )
    ids = list(unattached.values_list("pk", flat=True)[:10_000])
    if ids:
        outcome = _guarded("attaching requests", builds.attach_requests, ids)
        if outcome:
            said = f"attached to build #{outcome.build_id}" if isinstance(outcome, builds.Outcome) else outcome
            done.add(f"{len(ids)} unattached request(s) {said}")
    if time.monotonic() - _reconciled[0] >= RECONCILE_EVERY:
        _reconciled[0] = time.monotonic()
        done.add(_guarded("reconciling the live site", _reconcile))
    if ids or any(b["state"] == S.QUEUED for b in open_builds) or done.actions:
        launched = _guarded("launching the queued build", builds.launch_next)
        if launched is not None and getattr(launched, "kind", None) != "queued":
            done.add(launched)
    _record(done, at, started, config)
    return done


def _finish_cancel(pk):
    outcome = builds.stop_cancelled(pk)
    if outcome is None:
        return None
    return f"Build #{pk}: the stop its cancel asked for had not happened: {outcome.detail}"


def _reconcile():
    from .destinations import get_destination

    return get_destination().reconcile()


def _guarded(what, step, *args):
    """One step of the pass behind the sweep's boundary: an unexpected error is logged with its traceback and
    reported in the pass's summary, and the pass goes on with the other builds and steps."""
    try:
        return step(*args)
    except Exception as exc:  # the sweep's boundary (one per build and step)
        logger.exception("Sweep: %s failed", what)
        return f"{what[0].upper()}{what[1:]} failed: {type(exc).__name__}: {exc}"


def _status(build):
    """The word of the launcher that started the build on its process; ``unknown`` when it cannot tell (never a
    reason to end a build)."""
    if not build["handle"]:
        return UNKNOWN
    try:
        return builds.launcher_for(build).status(build["handle"])
    except (LaunchError, ImproperlyConfigured) as exc:
        logger.warning("Build #%s: status unknown: %s", build["pk"], exc)
        return UNKNOWN


def _age(moment, at):
    return (at - moment).total_seconds() if moment else float("inf")


def _check_active(build, at, config):
    pk, token, state = build["pk"], build["launch_token"], build["state"]
    since_launch = _age(build["launched_at"], at)
    if state == S.RUNNING and since_launch > config.BUILD_TIMEOUT:
        return builds.time_out(pk, token=token, timeout_seconds=config.BUILD_TIMEOUT)
    if state == S.LAUNCHING:
        if since_launch <= config.BUILD_LAUNCH_TIMEOUT:
            return None
        if builds.requeue(pk, builds.STUCK_LAUNCHING, token=token, error="Stuck in launching"):
            return f"Build #{pk} was stuck launching for {since_launch:.0f}s: queued again"
        return None
    if state == S.LAUNCHED:
        return _check_not_started(build, since_launch, config)
    return _check_running(build, at, config)


def _check_not_started(build, since_launch, config):
    pk, token = build["pk"], build["launch_token"]
    if since_launch <= config.BUILD_START_TIMEOUT:
        return None
    status = _status(build)
    if status == GONE:
        error = "Launched, but its process ended before it started building"
        hint = builds.launcher_for(build).not_started_hint(build["handle"])
        if builds.requeue(pk, builds.NOT_STARTED, token=token, error=error, hint=hint):
            return f"Build #{pk}: {error.lower()}: queued again"
    elif status in (STARTING, RUNNING) and since_launch > 2 * config.BUILD_START_TIMEOUT:
        error = f"Still not started {since_launch:.0f}s after launch"
        if builds.requeue(pk, builds.NOT_STARTED, token=token, error=error):
            builds.stop_process(build)  # its token is void now; stopping it is tidiness, not safety
            return f"Build #{pk}: {error.lower()}: stopped and queued again"
    elif status == UNKNOWN:
        logger.warning("Build #%s launched %.0fs ago has not started; its status is unknown: waiting", pk, since_launch)
    return None


def _check_running(build, at, config):
    pk, token = build["pk"], build["launch_token"]
    silent = _age(build["heartbeat_at"], at)
    if silent > config.BUILD_LOST_AFTER:
        status = _status(build)
        if status == GONE:
            return builds.mark_lost(pk, token=token, reason=f"No heartbeat for {silent:.0f}s and the process is gone")
        if status == UNKNOWN:
            logger.warning("Build #%s: no heartbeat for %.0fs; its status is unknown: waiting", pk, silent)
            return None
        # The process is there but silent: a stall (reported below).
        return _report_stall(build, at, config, reason=f"no heartbeat for {silent:.0f}s, process still running")
    if _age(build["progress_at"], at) > config.BUILD_STALL_AFTER:
        return _report_stall(build, at, config, reason=f"no progress for {_age(build['progress_at'], at):.0f}s")
    return None


def _report_stall(build, at, config, *, reason):
    """Report a stalled build now and then every BUILD_STALL_REPORT_EVERY; the conditional update picks the sender."""
    pk = build["pk"]
    every = timedelta(seconds=config.BUILD_STALL_REPORT_EVERY)
    due = Q(stall_reported_at__isnull=True) | Q(stall_reported_at__lte=at - every)
    if not Build.objects.filter(due, pk=pk, state=S.RUNNING).update(stall_reported_at=at):
        return None
    stalled_for = _age(build["progress_at"], at)
    message = (
        f"Build #{pk} is stalled: {reason}. It has rendered {build['pages_done'] or 0} of "
        f"{build['pages_total'] if build['pages_total'] is not None else '?'} pages. Cancel it in the admin if it "
        "does not recover; the next report comes in "
        f"{config.BUILD_STALL_REPORT_EVERY}s if it stays stalled."
    )
    builds.notify(AlertKind.STALLED, pk, f"Build #{pk} is stalled", message)
    if build_stalled.has_listeners(Build):
        send_robustly(build_stalled, Build, build=Build.objects.get(pk=pk), stalled_for=stalled_for)
    return f"Build #{pk} is stalled ({reason}): reported"


def _record(done, at, started, config):
    took = int((time.monotonic() - started) * 1000)
    summary = str(done)[:5000]
    if not SweepStatus.objects.filter(pk=1).update(ran_at=at, took_ms=took, summary=summary, passes=F("passes") + 1):
        SweepStatus.objects.get_or_create(
            pk=1, defaults={"ran_at": at, "took_ms": took, "summary": summary, "passes": 1}
        )
    prune_due = Q(pruned_at__isnull=True) | Q(pruned_at__lte=at - timedelta(seconds=PRUNE_EVERY))
    if SweepStatus.objects.filter(prune_due, pk=1).update(pruned_at=at):
        prune(at - timedelta(days=config.BUILD_HISTORY_DAYS))
    global _last_logged
    if done.actions:
        logger.info("Sweep: %s", done)
        _last_logged = time.monotonic()
    elif _last_logged is None or time.monotonic() - _last_logged >= IDLE_LOG_EVERY:
        logger.info("Sweep: idle, nothing to do (said again every %ss while idle)", IDLE_LOG_EVERY)
        _last_logged = time.monotonic()


def prune(before, *, limit=1000):
    """Delete up to ``limit`` finished builds older than ``before`` with their requests, and old task records.

    Bounded so that a large backlog is worked off over several passes instead of in one long one.
    """
    from django_q.models import Task

    finished = (S.SUCCEEDED, S.FAILED, S.CANCELLED, S.LOST)
    ids = list(Build.objects.filter(state__in=finished, created_at__lt=before).values_list("pk", flat=True)[:limit])
    requests_deleted = 0
    if ids:
        BuildRequest.objects.filter(retry_of_id__in=ids).update(retry_of=None)
        Build.objects.filter(retry_of_id__in=ids).update(retry_of=None)
        requests_deleted, _ = BuildRequest.objects.filter(build_id__in=ids).delete()
        Build.objects.filter(pk__in=ids).delete()
    tasks_deleted, _ = Task.objects.filter(stopped__lt=before).delete()
    if ids or tasks_deleted:
        logger.info(
            "Pruned %d builds, %d requests and %d task records older than %s",
            len(ids),
            requests_deleted,
            tasks_deleted,
            before,
        )


def run_scheduled_sweep():
    """The django-q2 schedule's entry point: one pass; its summary is the task's result."""
    return str(sweep())


def ensure_schedule(**kwargs):
    """Create or update the every-minute schedule (post_migrate). ``Schedule.name`` is not unique: look it up."""
    from django.utils import timezone
    from django_q.models import Schedule

    wanted = {
        "func": "publisher.sweep.run_scheduled_sweep",
        "schedule_type": Schedule.MINUTES,
        "minutes": 1,
        "repeats": -1,
    }
    existing = list(Schedule.objects.filter(name=SCHEDULE_NAME).order_by("pk"))
    if not existing:
        Schedule.objects.create(name=SCHEDULE_NAME, next_run=timezone.now(), **wanted)
        return
    first, duplicates = existing[0], existing[1:]
    changed = {key: value for key, value in wanted.items() if getattr(first, key) != value}
    if changed:
        Schedule.objects.filter(pk=first.pk).update(**changed)
    if duplicates:
        Schedule.objects.filter(pk__in=[d.pk for d in duplicates]).delete()
