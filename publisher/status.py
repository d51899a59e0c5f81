"""What the build system is doing, for people (DESIGN §8): one ``snapshot()`` that the admin's status banner, its
JSON endpoint and the doctor share.

The active build with its progress and ETA, the queued build and how many requests it holds, the live release, and
the warnings that need a person. A handful of indexed queries, ages judged against the database's clock
(``builds.now()``); the live pointer is cached a few seconds per process, like the site the web app serves.
"""

import datetime
import enum
import logging
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count

from . import builds, health
from .conf import get_config
from .models import OPEN_STATES, Build, BuildState, SweepStatus

logger = logging.getLogger(__name__)
S = BuildState

#: Seconds between two sweep passes: the django-q2 schedule ``publisher.sweep.ensure_schedule`` creates runs every
#: minute. The sweep is "silent" after ``SWEEP_SILENT_AFTER`` of these.
SWEEP_INTERVAL = 60
SWEEP_SILENT_AFTER = 3
#: Successful builds whose speed predicts the ETA (their median).
ETA_FROM_LAST = 5
#: Launch failures statuses that mean the platform refused the key.
KEY_REJECTED_STATUSES = frozenset({401, 403})
#: How long the live pointer is trusted before it is read again (seconds), per process.
LIVE_TTL = 3.0
_live_cache = {"at": float("-inf"), "read_at": None, "key": None, "value": None}
_live_lock = threading.Lock()


class WarningKind(enum.StrEnum):
    """Why the banner asks for a person. The JSON carries these words."""

    KEY_REJECTED = "key_rejected"
    NEEDS_OPERATOR = "needs_operator"
    LAUNCH_RETRYING = "launch_retrying"
    REPEATED_FAILURES = "repeated_failures"
    SWEEP_SILENT = "sweep_silent"
    NOT_HEARD_FROM = "not_heard_from"
    STALLED = "stalled"
    CONFIGURATION = "configuration"
    LIVE_UNREADABLE = "live_unreadable"


@dataclass(frozen=True)
class StatusWarning:
    kind: WarningKind
    message: str
    hint: str = ""
    build_id: int | None = None


@dataclass(frozen=True)
class ActiveBuild:
    id: int
    state: str
    pages_done: int | None
    pages_total: int | None
    percent: int | None
    started_at: datetime.datetime | None
    elapsed: int | None
    eta: int | None
    where: str
    heartbeat_at: datetime.datetime | None
    requests: int

    @property
    def pages_words(self):
        if self.pages_total is None:
            return ""
        return f"{self.pages_done or 0:,} / {self.pages_total:,} pages"

    @property
    def elapsed_words(self):
        return words(self.elapsed) if self.elapsed is not None else ""

    @property
    def eta_words(self):
        if self.eta is None:
            return ""
        return "a few seconds" if self.eta < 5 else words(self.eta)


@dataclass(frozen=True)
class QueuedBuild:
    id: int
    requests: int
    attempt: int
    next_attempt_at: datetime.datetime | None


@dataclass(frozen=True)
class LiveSite:
    release: str
    build: int | None
    switched_at: datetime.datetime | None
    where: str
    url: str


@dataclass(frozen=True)
class Snapshot:
    at: datetime.datetime
    active: ActiveBuild | None = None
    queued: QueuedBuild | None = None
    live: LiveSite | None = None
    warnings: list = field(default_factory=list)

    @property
    def live_ago(self):
        """How long ago the live release went live, in words."""
        if self.live is None or self.live.switched_at is None:
            return ""
        return words(self.at - self.live.switched_at)

    @property
    def is_open(self):
        """A build is queued or active: pages showing this refresh themselves."""
        return self.active is not None or self.queued is not None

    def as_json(self):
        """The endpoint's body: times in ISO 8601 (UTC), durations in whole seconds, warnings with their kind."""
        return _jsonable(
            {
                "at": self.at,
                "open": self.is_open,
                "active": asdict(self.active) if self.active else None,
                "queued": asdict(self.queued) if self.queued else None,
                "live": asdict(self.live) if self.live else None,
                "warnings": [asdict(w) for w in self.warnings],
            }
        )


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime.datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, enum.Enum):
        return value.value
    return value


# --- The snapshot --------------------------------------------------------------------------------------------------


def snapshot():
    """What is happening now. Queries: the clock, the open builds (with their request counts), the last successes
    (for the ETA), the consecutive failures, the sweep's status; plus the live pointer when its cache is stale."""
    config = get_config()
    at = builds.now()
    open_builds = list(
        Build.objects.filter(state__in=OPEN_STATES)
        .annotate(request_count=Count("requests"))
        .only(
            "state",
            "attempt",
            "next_attempt_at",
            "launched_at",
            "started_at",
            "heartbeat_at",
            "progress_at",
            "pages_done",
            "pages_total",
            "launcher",
            "manual",
            "handle",
            "error",
            "error_status",
            "needs_operator",
        )
        .order_by("pk")
    )
    queued = next((b for b in open_builds if b.state == S.QUEUED), None)
    active = next((b for b in open_builds if b.state != S.QUEUED), None)
    warnings = []
    active_view = None
    if active is not None:
        running_warnings = _running_warnings(active, at, config)
        active_view = _active(active, at, predict=not running_warnings)
        warnings.extend(running_warnings)
    queued_view = None
    if queued is not None:
        queued_view = QueuedBuild(queued.pk, queued.request_count, queued.attempt, queued.next_attempt_at)
        warnings.extend(_launch_warnings(queued))
    failures = builds.consecutive_failures()
    if failures >= config.BUILD_MAX_ATTEMPTS:
        warnings.append(
            StatusWarning(
                WarningKind.REPEATED_FAILURES,
                f"The last {failures} builds failed or were lost: automatic retries have stopped.",
                "Look at the last failed build's error and log; the next publish or “Rebuild site now” starts afresh.",
            )
        )
    if active is None and queued is None:
        warnings.extend(_last_build_warnings())
    warnings.extend(_sweep_warnings(at))
    live, problem = live_site()
    if problem:
        warnings.append(problem)
    warnings.extend(_configuration_warnings())
    return Snapshot(at=at, active=active_view, queued=queued_view, live=live, warnings=warnings)


def _active(build, at, *, predict=True):
    """The active build in the snapshot's terms; no ETA (``predict``) for a build that is not heard from or
    stalled: its past speed says nothing about when it ends."""
    since = build.started_at or build.launched_at
    elapsed = _seconds(at - since) if since else None
    done, total = build.pages_done, build.pages_total
    percent = min(100, done * 100 // total) if total and done is not None else None
    return ActiveBuild(
        id=build.pk,
        state=build.state,
        pages_done=done,
        pages_total=total,
        percent=percent,
        started_at=build.started_at,
        elapsed=elapsed,
        eta=eta(build, elapsed) if predict else None,
        where=where(build),
        heartbeat_at=build.heartbeat_at,
        requests=build.request_count,
    )


def _running_warnings(build, at, config):
    """A running build not heard from for ``BUILD_LOST_AFTER``, or whose pages have not moved for
    ``BUILD_STALL_AFTER``."""
    if build.state != S.RUNNING:
        return []
    heard = build.heartbeat_at or build.started_at
    progressed = build.progress_at or build.started_at
    if heard and _seconds(at - heard) >= config.BUILD_LOST_AFTER:
        return [
            StatusWarning(
                WarningKind.NOT_HEARD_FROM,
                f"Build #{build.pk} has not been heard from since {_clock(heard)} ({words(at - heard)} ago).",
                "The sweep asks its launcher whether it still runs and marks it lost if it is gone.",
                build.pk,
            )
        ]
    if progressed and _seconds(at - progressed) >= config.BUILD_STALL_AFTER:
        return [
            StatusWarning(
                WarningKind.STALLED,
                f"Build #{build.pk} is stalled: no page done since {_clock(progressed)} "
                f"({words(at - progressed)} ago).",
                "Look at the build's log; cancel it if it does not move.",
                build.pk,
            )
        ]
    return []


def eta(build, elapsed):
    """Seconds left for ``build`` (a running ``Build``), from the median speed of the last successful builds:
    pages per second when its page count is known, else their duration. ``None`` without history."""
    if build.state != S.RUNNING or elapsed is None:
        return None
    past = list(
        Build.objects.filter(state=S.SUCCEEDED, started_at__isnull=False, finished_at__isnull=False)
        .order_by("-pk")
        .values_list("started_at", "finished_at", "pages_done")[:ETA_FROM_LAST]
    )
    durations = [(finished - started).total_seconds() for started, finished, _ in past]
    rates = [pages / seconds for (_, _, pages), seconds in zip(past, durations, strict=True) if pages and seconds > 0]
    if build.pages_total and rates:
        left = max(0, build.pages_total - (build.pages_done or 0))
        return round(left / statistics.median(rates))
    if durations:
        return max(0, round(statistics.median(durations) - elapsed))
    return None


def where(build):
    """Where a build runs, in words ("run.4821", "pid 1234 on vm"), by the launcher that started it."""
    handle = build.handle
    if not handle:
        return ""
    try:
        return builds.launcher_for({"launcher": build.launcher, "manual": build.manual}).describe(handle)
    except ImproperlyConfigured:
        return handle.get("dyno_name") or builds.describe_process(handle)


def _launch_warnings(build, *, retried=True):
    """A queued build whose last launch failed: the key was rejected, a person must act, or it is being retried."""
    if not build.error or (build.attempt <= 1 and not build.needs_operator):
        return []
    retry = f" It is tried again at {_clock(build.next_attempt_at)}." if retried and build.next_attempt_at else ""
    if build.needs_operator and build.error_status in KEY_REJECTED_STATUSES:
        return [
            StatusWarning(
                WarningKind.KEY_REJECTED,
                f"Build #{build.pk} cannot start: the Heroku key was rejected — set HEROKU_API_KEY.{retry}",
                "Create a key with `heroku authorizations:create` and set HEROKU_API_KEY on the app.",
                build.pk,
            )
        ]
    if build.needs_operator:
        status = f" (HTTP {build.error_status})" if build.error_status else ""
        return [
            StatusWarning(
                WarningKind.NEEDS_OPERATOR,
                f"Build #{build.pk} cannot start until a person acts{status}.{retry}",
                "The build's page says what the platform answered.",
                build.pk,
            )
        ]
    failed = build.attempt - 1
    return [
        StatusWarning(
            WarningKind.LAUNCH_RETRYING,
            f"Build #{build.pk} failed to start {failed} time{'s' if failed != 1 else ''}.{retry}",
            "The build's page says what went wrong.",
            build.pk,
        )
    ]


def _last_build_warnings():
    """Nothing is open: the last build's launch failure still needs a person if it ended that way."""
    last = (
        Build.objects.order_by("-pk")
        .only("state", "attempt", "error", "error_status", "needs_operator", "next_attempt_at")
        .first()
    )
    if last is None or last.state == S.SUCCEEDED or not last.needs_operator:
        return []
    return _launch_warnings(last, retried=False)


def _sweep_warnings(at):
    """Silent for ``SWEEP_SILENT_AFTER`` of its intervals: every minute while a worker runs the django-q2 schedule,
    every 10 minutes when Heroku Scheduler runs ``sweepbuilds`` instead (DESIGN §7; ``doctor.sweep_interval``, so the
    banner and the doctor agree). The schedule is only looked at once the sweep is older than the shortest."""
    from .doctor import sweep_interval

    ran_at = SweepStatus.objects.values_list("ran_at", flat=True).first()
    hint = "Start the worker (manage.py qcluster), or schedule manage.py sweepbuilds."
    if ran_at is None:
        return [StatusWarning(WarningKind.SWEEP_SILENT, "The sweep has never run.", hint)]
    if _seconds(at - ran_at) < SWEEP_INTERVAL * SWEEP_SILENT_AFTER:
        return []
    every, who = sweep_interval(at)
    if _seconds(at - ran_at) < every * SWEEP_SILENT_AFTER:
        return []
    return [
        StatusWarning(
            WarningKind.SWEEP_SILENT,
            f"The sweep has not run since {_clock(ran_at)} ({words(at - ran_at)} ago); {who}.",
            hint,
        )
    ]


def _configuration_warnings():
    return [
        StatusWarning(WarningKind.CONFIGURATION, problem.msg, problem.hint or "")
        for problem in health.configuration_problems()
    ]


# --- The live site -------------------------------------------------------------------------------------------------


def live_site(*, read_after=None):
    """``(LiveSite or None, StatusWarning or None)``; the pointer (or the error reading it) cached ``LIVE_TTL``
    seconds per process, so polling admins do not read S3 on every request. ``read_after`` (an aware datetime): a
    pointer cached before that moment is read again (a build that went live since may have moved it)."""
    from .destinations import DestinationError, get_destination

    try:
        destination = get_destination()
        key = (type(destination).__name__, destination.describe())
    except ImproperlyConfigured as exc:
        return None, _unreadable(exc)
    with _live_lock:
        fresh = read_after is None or _live_cache["read_at"] is None or _live_cache["read_at"] >= read_after
        if _live_cache["key"] == key and time.monotonic() - _live_cache["at"] < LIVE_TTL and fresh:
            return _live_cache["value"]
    read_at = datetime.datetime.now(datetime.UTC)
    try:
        live = destination.live_release()
    except DestinationError as exc:
        logger.warning("The live release cannot be read from %s: %s", key[1], exc)
        value = None, _unreadable(exc)
    else:
        value = (_live_view(live, destination), None) if live else (None, None)
    with _live_lock:
        _live_cache.update(at=time.monotonic(), read_at=read_at, key=key, value=value)
    return value


def forget_live_site():
    """Drop the cached pointer (after a rollback, and between tests)."""
    with _live_lock:
        _live_cache.update(at=float("-inf"), read_at=None, key=None, value=None)


def _live_view(live, destination):
    switched = None
    if live.switched_at:
        try:
            switched = datetime.datetime.fromisoformat(live.switched_at)
        except ValueError:
            switched = None
    return LiveSite(live.release, live.build, switched, destination.describe(), get_config().SITE_URL)


def _unreadable(exc):
    return StatusWarning(
        WarningKind.LIVE_UNREADABLE,
        f"The live site cannot be read right now: {exc}",
        "Check the destination's settings and credentials (manage.py publisherdoctor).",
    )


# --- Words ---------------------------------------------------------------------------------------------------------


def _seconds(delta):
    return max(0, int(delta.total_seconds()))


def _clock(moment):
    return f"{moment:%H:%M:%S} UTC" if moment else "?"


def words(delta):
    """A duration for people: "45 s", "3 min 5 s", "2 h 10 min"."""
    seconds = _seconds(delta) if isinstance(delta, datetime.timedelta) else max(0, int(delta))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
