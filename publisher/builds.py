"""The build state machine (DESIGN §3): the one module that writes ``Build.state``.

Every state change is one entry of ``TRANSITIONS`` below (from, to, who takes it, what is retried), taken by
``_move``: a conditional ``UPDATE`` on the build's id, the transition's source states and, where it matters, its
launch token; the row count says who won. New rows are inserted by ``_insert`` with a transition from nowhere. The
partial unique constraints on ``Build`` make two active or two queued builds impossible to store, so a lost race
surfaces as zero rows or an ``IntegrityError``, never as a second build.

Functions here return an ``Outcome`` that the admin, the commands and the logs all describe in words. Whoever wins
a transition to a final state sends ``build_finished`` (once per build); reports to a person are mailed to
``ADMINS`` and sent as ``build_alert`` (``publisher.signals``).
"""

import contextvars
import datetime
import enum
import logging
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured
from django.core.mail import mail_admins
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Case, F, Value, When
from django.db.models.functions import Concat, Substr
from django.utils import timezone

from . import deferred
from .conf import get_config
from .launchers import MANUAL, LaunchError, get_launcher
from .models import ACTIVE_STATES, OPEN_STATES, Build, BuildRequest, BuildState
from .signals import AlertKind, build_alert, build_finished, send_robustly

logger = logging.getLogger(__name__)

S = BuildState

#: States a build never leaves.
FINAL_STATES = (S.SUCCEEDED, S.FAILED, S.CANCELLED, S.LOST)


# --- The transitions -----------------------------------------------------------------------------------------------


class Actor(enum.Enum):
    """Who takes a transition."""

    DISPATCH = "a request's dispatch (after a web commit, its launch in a thread after the response; requestbuild)"
    BUILD = "the build process"
    SWEEP = "the sweep"
    OPERATOR = "an operator (the admin; the second step of a cancel runs in a background thread)"
    SHELL = "a person at a shell (buildstaticsite without --build)"


#: Whoever ends or cancels the active build, or dispatches a request, promotes and launches the queued build.
PROMOTERS = (Actor.DISPATCH, Actor.BUILD, Actor.SWEEP, Actor.OPERATOR)


class Retry(enum.Enum):
    """What becomes of a build's requests after a transition."""

    NOT_NEEDED = "nothing to retry"
    NO = "not retried automatically; a failure is reported (a cancel is not)"
    SAME_ROW = "the same build is queued again: attempt + 1, a new token at its next launch, a backoff"
    NEW_REQUEST = "a request 'retry of #N', unless BUILD_MAX_ATTEMPTS failed or lost builds followed the last success"
    HANDED_OVER = "its requests move to the build queued meanwhile"


@dataclass(frozen=True)
class Transition:
    name: str
    #: The states it leaves; empty for a new row.
    sources: tuple
    target: BuildState
    who: tuple
    retry: Retry

    @property
    def final(self):
        return self.target in FINAL_STATES

    def __str__(self):
        sources = "|".join(self.sources) or "(new)"
        return f"{self.name}: {sources} → {self.target}"


# fmt: off
QUEUE = Transition("queue", (), S.QUEUED, (Actor.DISPATCH, Actor.BUILD, Actor.SWEEP), Retry.NOT_NEEDED)
LAUNCH = Transition("launch", (S.QUEUED,), S.LAUNCHING, PROMOTERS, Retry.NOT_NEEDED)
LAUNCHED = Transition("launched", (S.LAUNCHING,), S.LAUNCHED, PROMOTERS, Retry.NOT_NEEDED)
LAUNCH_FAILED = Transition("launch failed", (S.LAUNCHING,), S.QUEUED, PROMOTERS, Retry.SAME_ROW)
STUCK_LAUNCHING = Transition("stuck launching", (S.LAUNCHING,), S.QUEUED, (Actor.SWEEP,), Retry.SAME_ROW)
NOT_STARTED = Transition("never started", (S.LAUNCHED,), S.QUEUED, (Actor.SWEEP, Actor.BUILD), Retry.SAME_ROW)
HAND_OVER = Transition(
    "handed over", (S.LAUNCHING, S.LAUNCHED), S.FAILED, PROMOTERS, Retry.HANDED_OVER
)  # a re-queue that found another build queued
CLAIM = Transition("claim", (S.LAUNCHING, S.LAUNCHED), S.RUNNING, (Actor.BUILD,), Retry.NOT_NEEDED)
BY_HAND = Transition("build by hand", (), S.RUNNING, (Actor.SHELL,), Retry.NOT_NEEDED)
# A build by hand takes over the queued build (and its requests) rather than overtaking it with a higher id, whose
# release would then outrank the queued build's forever: builds claim in the order of their ids.
TAKE_OVER = Transition("build by hand takes the queue", (S.QUEUED,), S.RUNNING, (Actor.SHELL,), Retry.NOT_NEEDED)
SUCCEED = Transition("succeed", (S.RUNNING,), S.SUCCEEDED, (Actor.BUILD, Actor.SHELL), Retry.NOT_NEEDED)
FAIL = Transition("build error", (S.RUNNING,), S.FAILED, (Actor.BUILD, Actor.SHELL), Retry.NO)
INTERRUPT = Transition("interrupted", (S.RUNNING,), S.FAILED, (Actor.BUILD,), Retry.NEW_REQUEST)
TIME_OUT = Transition("timed out", (S.RUNNING,), S.FAILED, (Actor.BUILD, Actor.SWEEP), Retry.NO)
STOP_AT_SHELL = Transition("stopped at the shell", (S.RUNNING,), S.CANCELLED, (Actor.SHELL,), Retry.NO)
LOSE = Transition("lost", (S.RUNNING,), S.LOST, (Actor.SWEEP,), Retry.NEW_REQUEST)
CANCEL = Transition("cancel", OPEN_STATES, S.CANCELLED, (Actor.OPERATOR,), Retry.NO)
# fmt: on

#: Every state change a build can make (DESIGN §3). ``_move`` and ``_insert`` take only these.
TRANSITIONS = (
    QUEUE,
    LAUNCH,
    LAUNCHED,
    LAUNCH_FAILED,
    STUCK_LAUNCHING,
    NOT_STARTED,
    HAND_OVER,
    CLAIM,
    BY_HAND,
    TAKE_OVER,
    SUCCEED,
    FAIL,
    INTERRUPT,
    TIME_OUT,
    STOP_AT_SHELL,
    LOSE,
    CANCEL,
)


def _move(transition, build_id, *, token=None, only_from=None, **fields):
    """Take ``transition`` on one build: ``UPDATE ... SET state = <target>`` where the id matches, the state is one
    of the transition's sources (or of ``only_from``, some of them) and, when given, the launch token is ``token``.
    Returns the row count: 1 when this call won. The only ``UPDATE`` of ``state`` in the code base."""
    if transition not in TRANSITIONS:
        raise ValueError(f"{transition} is not in the transition table")
    sources = transition.sources if only_from is None else tuple(only_from)
    if not sources or not set(sources) <= set(transition.sources):
        raise ValueError(f"{transition} does not leave {'|'.join(sources) or 'nothing'}")
    rows = Build.objects.filter(pk=build_id, state__in=sources)
    if token is not None:
        rows = rows.filter(launch_token=token)
    return rows.update(state=transition.target, **fields)


def _insert(transition, **fields):
    """A new build in ``transition``'s target state (a transition from nowhere)."""
    if transition not in TRANSITIONS or transition.sources:
        raise ValueError(f"{transition} does not create a build")
    return Build.objects.create(state=transition.target, **fields)


#: A launch that worked clears the structured last launch failure (the prose ``error`` stays, for the history).
_NO_LAUNCH_ERROR = {"error_status": None, "error_id": "", "error_request_id": "", "needs_operator": False}


def _launch_error_fields(exc):
    """The structured fields of a ``LaunchError`` (DESIGN §4, §8), or the cleared ones for a failure with none."""
    if exc is None:
        return dict(_NO_LAUNCH_ERROR)
    status = exc.status if isinstance(exc.status, int) and 0 <= exc.status <= 32767 else None
    return {
        "error_status": status,
        "error_id": str(exc.error_id or "")[:100],
        "error_request_id": str(exc.request_id or "")[:100],
        "needs_operator": bool(exc.needs_operator),
    }


#: One read of the database's clock, per vendor. SQLite runs in this process, so its clock is this machine's; a
#: PostgreSQL server's clock is the one every web dyno, build dyno and worker shares.
_CLOCK_SQL = {
    "postgresql": "SELECT clock_timestamp()",
    "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
}


def now():
    """The database's clock: the time every timestamp is written with and every age is judged against (DESIGN §3).

    Processes on different machines disagree about the time; they all agree with their database. Callers read it
    once per decision. Tests replace it.
    """
    sql = _CLOCK_SQL.get(connection.vendor)
    if sql is None:
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(sql)
        value = cursor.fetchone()[0]
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    return value if timezone.is_aware(value) else value.replace(tzinfo=datetime.UTC)


def new_token():
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Outcome:
    """What a call did: ``kind`` is a stable word, ``message`` one short sentence for editors, ``detail`` what an
    operator needs besides (where it runs, the platform's error); the log and the sweep's summary show both."""

    kind: str
    message: str
    build_id: int | None = None
    ok: bool = True
    detail: str = ""

    def __str__(self):
        return self.message

    @property
    def for_operators(self):
        return f"{self.message} ({self.detail})" if self.detail else self.message


def _at(moment):
    return f"{moment:%H:%M} UTC"


def _announce(build_id, outcome):
    """``build_finished`` for a build that has just reached a final state, sent by the process whose transition won.
    The build is read only when someone listens."""
    if not build_finished.has_listeners(Build):
        return
    build = Build.objects.filter(pk=build_id).first()
    if build is not None:
        send_robustly(build_finished, Build, build=build, outcome=outcome)


# --- Requests ----------------------------------------------------------------------------------------------------


class _Dispatch:
    """The on-commit callback of one request; also marks "this transaction already made a request"."""

    def __init__(self, request_id):
        self.request_id = request_id
        self.__qualname__ = f"dispatch of build request #{request_id}"  # Django logs robust failures by this name

    def __call__(self):
        # Attaching is a few indexed queries, so the editor hears which build has the change; the launcher call
        # (a Heroku API request) runs after the response, unless the launcher answers at once (tests).
        outcome = dispatch(launch_after_response=not _launcher_answers_at_once())
        if outcome.kind == "idle":  # another process dispatched it first: say where it went
            outcome = where_request_went(self.request_id) or outcome
        log = logger.info if outcome.ok else logger.warning
        log("Request #%s: %s", self.request_id, outcome.for_operators)
        collected = _collected.get()
        if collected is not None:
            collected.append(outcome)


_collected = contextvars.ContextVar("publisher_dispatch_outcomes", default=None)


@contextmanager
def collect_outcomes():
    """Collect the outcomes of the dispatches that run inside the block (the admin shows them to the editor)."""
    outcomes = []
    token = _collected.set(outcomes)
    try:
        yield outcomes
    finally:
        _collected.reset(token)


def _pending_request_id():
    """The request already recorded in the current transaction, if any (one user action, one request)."""
    for _sids, func, _robust in reversed(connection.run_on_commit):
        if isinstance(func, _Dispatch):
            return func.request_id
    return None


def record_request(reason, *, by=None, page=None, retry_of_id=None, dispatch_after_commit=True):
    """Insert a build request inside the current transaction; dispatch it once the transaction commits.

    Several calls in one transaction (a bulk action, a save that also publishes) make one request whose reason
    lists them all. ``page`` is the page whose change this is (the first, for a joined request), so the page can
    say where its last publish stands. Returns the request's id.
    """
    user = by if getattr(by, "is_authenticated", False) else None
    reason = str(reason)[:500]
    if connection.in_atomic_block:
        pending = _pending_request_id()
        joined = Substr(Concat(F("reason"), Value("; " + reason)), 1, 500)
        if pending is not None and BuildRequest.objects.filter(pk=pending, build__isnull=True).update(reason=joined):
            return pending
    request = BuildRequest.objects.create(
        reason=reason, requested_by=user, page=page, retry_of_id=retry_of_id, created_at=now()
    )
    if dispatch_after_commit:
        transaction.on_commit(_Dispatch(request.pk), robust=True)
    return request.pk


def request_build(reason, *, by=None):
    """Record a request in its own transaction and dispatch it now (``requestbuild``, tests). Returns an Outcome."""
    with transaction.atomic():
        request_id = record_request(reason, by=by, dispatch_after_commit=False)
    outcome = dispatch()
    if outcome.kind == "idle":
        outcome = where_request_went(request_id) or outcome
    logger.info("Request #%s: %s", request_id, outcome.for_operators)
    return outcome


def where_request_went(request_id):
    """An Outcome describing the build a request is attached to, or ``None`` (for a dispatch that found its request
    already attached by another process)."""
    build = Build.objects.filter(requests__pk=request_id).values("pk", "state").first()
    if build is None:
        return None
    pk, state = build["pk"], build["state"]
    if state in (S.QUEUED, S.LAUNCHING, S.LAUNCHED):
        return Outcome("attached", f"Your change will be in build #{pk}.", pk, detail=f"is {state}")
    if state == S.RUNNING:
        return Outcome("attached", f"Build #{pk} is building your change.", pk)
    return Outcome("attached", f"Your change was covered by build #{pk} ({state}).", pk, ok=state == S.SUCCEEDED)


def dispatch(*, launch_after_response=False):
    """Attach every unattached request to a build, then launch the next build if it is due.

    With ``launch_after_response`` (a web process after its commit) the launch itself runs in a background thread
    (``launch_in_background``) and this returns once the requests are attached: the editor's request never waits
    for the platform. If the process dies before the thread launches, the build stays ``queued`` and due (or
    ``launching``, re-queued after ``BUILD_LAUNCH_TIMEOUT``) and the sweep launches it.
    """
    attached = attach_requests()
    if launch_after_response:
        launched = _launch_later()
    else:
        launched = launch_next()
    if launched is not None and launched.kind in ("launched", "launch_failed", "waiting", "starting"):
        return launched
    return attached or launched or Outcome("idle", "Nothing to do: no request is waiting for a build.")


def _launch_later():
    """Decide, as ``launch_next`` would, whether the queued build is due; if it is, launch it in a background
    thread after the current transaction (``publisher.deferred``) and say it is starting."""
    due, outcome = _next_to_launch()
    if due is None:
        return outcome
    build_id = due[0]
    deferred.defer(launch_in_background)
    return Outcome(
        "starting",
        f"Build #{build_id} is starting; the banner shows when it is live.",
        build_id,
        detail="launched in the background, after the response",
    )


def launch_in_background():
    """The launch after a publish's response, in its own thread: ``launch_next``, its outcome logged (the editor
    reads it in the status banner: the build's state, its launch error, whether an operator was told)."""
    outcome = launch_next()
    if outcome is not None:
        log = logger.info if outcome.ok else logger.warning
        log("Launch after the response: %s", outcome.for_operators)
    return outcome


def attach_requests(request_ids=None):
    """Attach unattached requests (all, or those given) to the build that will cover them.

    The target is the active build while it is ``launching``/``launched`` (it has not read content yet), else the
    ``queued`` build, else a new ``queued`` build. Attaching is a conditional update of the request rows. Returns an
    Outcome, or ``None`` when nothing was waiting.
    """
    waiting = BuildRequest.objects.filter(build__isnull=True)
    if request_ids is not None:
        waiting = waiting.filter(pk__in=request_ids)
    has_new_work = waiting.filter(retry_of__isnull=True).exists()  # a publish: one query on the hot path
    if not has_new_work and not waiting.exists():
        return None
    for _ in range(5):
        at = now()
        target, outcome = _attach_target(at)
        if target is None:
            continue  # lost a race creating the queued build: look again
        if not waiting.update(build_id=target):
            return None  # another process (a concurrent sweep) attached them first, and says so itself
        if has_new_work:
            # A publish does not wait out the backoff of an automatic retry (launch failures keep theirs).
            Build.objects.filter(pk=target, state=S.QUEUED, attempt=1, next_attempt_at__gt=at).update(
                next_attempt_at=at
            )
        return outcome
    raise RuntimeError("Could not find or create a build to attach requests to after 5 attempts")


def _attach_target(at):
    """(build id, Outcome) for new requests, creating the queued build when needed; (None, None) on a lost race."""
    active = Build.objects.filter(state__in=ACTIVE_STATES).values("pk", "state").first()
    if active and active["state"] in (S.LAUNCHING, S.LAUNCHED):
        pk = active["pk"]
        return pk, Outcome(
            "attached",
            f"Your change will be in build #{pk}, which is starting.",
            pk,
            detail=f"is {active['state']} and has not read content yet: the request is attached to it",
        )
    queued = Build.objects.filter(state=S.QUEUED).values_list("pk", flat=True).first()
    if queued is None:
        try:
            with transaction.atomic():
                queued = _insert(QUEUE, created_at=at, next_attempt_at=at).pk
        except IntegrityError:
            return None, None
        logger.info("Build #%s queued", queued)
    if active:
        return queued, Outcome(
            "queued",
            f"Your change will be in build #{queued}, which starts when build #{active['pk']} has finished.",
            queued,
            detail=f"queued behind build #{active['pk']}",
        )
    return queued, Outcome("queued", f"Your change will be in build #{queued}.", queued, detail="queued")


# --- Launch --------------------------------------------------------------------------------------------------------


def backoff(attempt, config=None):
    """Seconds before automatic attempt ``attempt + 1``: doubling from BUILD_RETRY_BASE up to BUILD_RETRY_MAX."""
    config = config or get_config()
    return min(config.BUILD_RETRY_BASE * 2 ** max(0, attempt - 1), config.BUILD_RETRY_MAX)


def launch_next():
    """Promote the queued build and launch it, if no build is active and it is due."""
    due, outcome = _next_to_launch()
    if due is None:
        return outcome
    build_id, at = due
    return launch(build_id, at=at)


def _next_to_launch():
    """``((build id, clock), None)`` when the queued build is due and no build is active, else ``(None, Outcome)``
    saying why not (``None`` for the Outcome when nothing is queued)."""
    active = Build.objects.filter(state__in=ACTIVE_STATES).values_list("pk", flat=True).first()
    queued = Build.objects.filter(state=S.QUEUED).values("pk", "next_attempt_at").first()
    if queued is None:
        return None, None
    pk = queued["pk"]
    if active is not None:
        return None, Outcome(
            "queued", f"Build #{pk} starts when build #{active} has finished.", pk, detail=f"queued behind #{active}"
        )
    at = now()  # one read of the clock decides whether it is due and stamps the launch
    if queued["next_attempt_at"] and queued["next_attempt_at"] > at:
        return None, Outcome(
            "waiting",
            f"Build #{pk} will start at {_at(queued['next_attempt_at'])}.",
            pk,
            detail=f"is queued; its next attempt is at {queued['next_attempt_at']:%H:%M:%S} UTC (backoff)",
        )
    return (pk, at), None


def launch(build_id, *, at=None):
    """``queued`` → ``launching`` → launcher call → ``launched``; on failure back to ``queued`` with backoff."""
    token = new_token()
    launcher = get_launcher()
    try:
        with transaction.atomic():
            won = _move(
                LAUNCH, build_id, launch_token=token, launched_at=at or now(), launcher=launcher.name, handle=None
            )
    except IntegrityError:  # another build became active first
        active = Build.objects.filter(state__in=ACTIVE_STATES).values_list("pk", flat=True).first()
        return Outcome("queued", f"Build #{build_id} starts when build #{active} has finished.", build_id)
    if not won:
        return Outcome(
            "raced", f"Build #{build_id} is starting.", build_id, detail="launched or changed by another process"
        )
    logger.info("Build #%s launching with the %s launcher", build_id, launcher.name)
    try:
        handle = launcher.launch(build_id=build_id, token=token)
    except LaunchError as exc:
        return _launch_failed(build_id, token, exc)
    where = launcher.describe(handle)
    # A launch that worked clears the last launch failure (the banner's "the key was rejected" goes with it).
    recorded = _move(LAUNCHED, build_id, token=token, handle=handle, **_NO_LAUNCH_ERROR)
    if not recorded:
        # A fast child may already have claimed it: keep the handle for the sweep, conditional on the token.
        Build.objects.filter(pk=build_id, launch_token=token, handle__isnull=True).update(handle=handle)
    logger.info("Build #%s launched on %s", build_id, where)
    return Outcome(
        "launched",
        f"Build #{build_id} has started; your change is live when it finishes.",
        build_id,
        detail=f"launched on {where}",
    )


def _launch_failed(build_id, token, exc):
    build = Build.objects.filter(pk=build_id).values("attempt").first() or {"attempt": 1}
    delay = backoff(build["attempt"])
    error = f"Launch failed: {exc}"
    requeued = requeue(build_id, LAUNCH_FAILED, token=token, error=error, delay=delay, hint=exc.hint, failure=exc)
    if exc.needs_operator:
        alert_operator(build_id, error, kind=AlertKind.NEEDS_OPERATOR)
    logger.warning("Build #%s: %s Retrying in %ss.", build_id, error, delay)
    if requeued:
        retry = Build.objects.filter(pk=build_id).values_list("next_attempt_at", flat=True).first()
        message = f"Build #{build_id} could not start yet; it is retried automatically at {_at(retry)}."
        if exc.needs_operator:
            message = f"Build #{build_id} could not start: an administrator has been told; it is retried meanwhile."
        return Outcome("launch_failed", message, build_id, ok=False, detail=f"launch failed: {exc}")
    # The row moved on without us: the launch itself may well have worked and only its answer was lost.
    return _moved_on(build_id, f"moved on although the launcher's answer was lost: {exc}")


def _moved_on(build_id, detail):
    """An Outcome for a build that another process (or the build itself) moved on, from its state now."""
    state = Build.objects.filter(pk=build_id).values_list("state", flat=True).first()
    if state in (S.RUNNING, S.SUCCEEDED, S.LAUNCHED):
        words = "has started; your change is live when it finishes" if state != S.SUCCEEDED else "has finished"
        return Outcome("launched", f"Build #{build_id} {words}.", build_id, detail=detail)
    if state == S.QUEUED:
        return Outcome("queued", f"Build #{build_id} will start shortly.", build_id, detail=detail)
    return Outcome("ended_elsewhere", f"Build #{build_id} is {state}.", build_id, ok=False, detail=detail)


def requeue(build_id, transition, *, token, error, delay=None, hint="", failure=None):
    """A failure before the claim (``LAUNCH_FAILED``, ``STUCK_LAUNCHING``, ``NOT_STARTED``): the same row goes back
    to ``queued`` with ``attempt + 1`` and a backoff, and the failure structured from ``failure`` (a
    ``LaunchError``; other failures need no operator and have no status).

    Its requests stay attached. If another build got queued meanwhile, this one is ended (``HAND_OVER``) and its
    requests move. A build that has failed to start ``BUILD_MAX_ATTEMPTS`` times is reported once (it keeps being
    retried). True when this call moved the build.
    """
    build = Build.objects.filter(pk=build_id).values("attempt").first()
    if build is None:
        return False
    config = get_config()
    delay = backoff(build["attempt"], config) if delay is None else delay
    at = now()
    structured = _launch_error_fields(failure)
    fields = {
        "attempt": F("attempt") + 1,
        "error": error[:2000],
        "next_attempt_at": at + timedelta(seconds=delay),
        "launch_token": "",
        **structured,
    }
    try:
        with transaction.atomic():
            requeued = bool(_move(transition, build_id, token=token, **fields))
    except IntegrityError:
        requeued = None
    if requeued is not None:
        if requeued:
            logger.info("Build #%s queued again (%s): %s", build_id, transition.name, error)
        if requeued and build["attempt"] >= config.BUILD_MAX_ATTEMPTS:
            alert_operator(
                build_id,
                f"Build #{build_id} has failed to start {build['attempt']} times; it keeps being retried, at most "
                f"every {config.BUILD_RETRY_MAX}s.\nLast error: {error}\n\n{hint or 'Look at the error above.'}",
                subject=f"Build #{build_id} keeps failing to start",
                kind=AlertKind.KEEPS_FAILING_TO_START,
            )
        return requeued
    # A queued build appeared meanwhile (a request that raced this build's promotion): hand the requests over.
    error = f"{error} (its requests moved to the queued build)"
    with transaction.atomic():
        ended = _move(
            HAND_OVER,
            build_id,
            token=token,
            only_from=transition.sources,
            finished_at=at,
            error=error[:2000],
            **structured,
        )
        if ended:
            queued = Build.objects.filter(state=S.QUEUED).values_list("pk", flat=True).first()
            BuildRequest.objects.filter(build_id=build_id).update(build_id=queued)
    if ended:
        logger.warning("Build #%s failed: %s", build_id, error)
        _announce(build_id, Outcome("failed", f"Build #{build_id} failed: {error}", build_id, ok=False))
    return bool(ended)


#: A build process that cannot start puts its build back in the queue by the transition for the state it finds.
_CANNOT_START = {S.LAUNCHING: LAUNCH_FAILED, S.LAUNCHED: NOT_STARTED}


def cannot_start(build_id, *, token, error, hint=""):
    """A build process started by a launcher cannot build (its configuration fails the system checks): its build
    goes back to ``queued`` (attempt + 1, a backoff, its requests kept, "needs an operator" for the banner) and an
    operator is told at once, instead of the failure living only in the process's log. True when this call moved
    the build; False when the token or the state did not match (an orphan, or a build that moved on)."""
    failure = LaunchError(error, needs_operator=True, retryable=True, hint=hint)
    for _ in range(2):  # the launching process may record ``launched`` between the read and the update
        state = Build.objects.filter(pk=build_id, launch_token=token).values_list("state", flat=True).first()
        transition = _CANNOT_START.get(state)
        if transition is None:
            return False
        if requeue(build_id, transition, token=token, error=error, hint=hint, failure=failure):
            alert_operator(build_id, f"{error}\n\n{hint}" if hint else error, subject=f"Build #{build_id} cannot start")
            return True
    return False


# --- The build process ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    build_id: int
    token: str
    attempt: int
    launched_at: object
    manual: bool = False


def claim(build_id, token):
    """``launching|launched`` → ``running`` on id and token, committed before any content is read.

    Returns a ``Claim``, or an Outcome saying why not (already claimed, cancelled, re-launched, unknown id).
    """
    at = now()
    won = _move(
        CLAIM, build_id, token=token, started_at=at, heartbeat_at=at, progress_at=at, pages_done=0, **_NO_LAUNCH_ERROR
    )
    build = (
        Build.objects.filter(pk=build_id)
        .values("state", "launch_token", "attempt", "launched_at", "launcher", "handle")
        .first()
    )
    if won:
        logger.info("Build #%s claimed (attempt %s)", build_id, build["attempt"])
        if build["handle"] is None:
            _record_own_handle(build_id, token, build["launcher"])
        return Claim(build_id, token, build["attempt"], build["launched_at"])
    if build is None:
        why = f"Build #{build_id} does not exist"
    elif build["launch_token"] != token:
        why = f"Build #{build_id} was re-launched with another token; this process is an orphan of an earlier attempt"
    elif build["state"] == S.RUNNING:
        why = f"Build #{build_id} is already running (a duplicate start of the same dyno)"
    else:
        why = f"Build #{build_id} is {build['state']}"
    logger.warning("Claim refused: %s. Not building.", why)
    return Outcome("claim_refused", why, build_id, ok=False)


def _record_own_handle(build_id, token, launcher_name):
    """The launching process died before it recorded the handle: record this process's own, in the form of the
    launcher that started it, so the sweep can judge the build like any other."""
    try:
        handle = get_launcher(launcher_name).this_process()
    except ImproperlyConfigured as exc:
        logger.warning("Build #%s: cannot describe this process for the %s launcher: %s", build_id, launcher_name, exc)
        return
    if handle is not None:
        Build.objects.filter(pk=build_id, launch_token=token, handle__isnull=True).update(handle=handle)


def start_manual(*, process, reason="manual build"):
    """A person at a shell takes the active slot directly (``running``). Returns a Claim, or None if one is active.

    A queued build is taken over (``TAKE_OVER``: its requests are covered by this build, which reads content after
    they committed), so builds always claim in the order of their ids and every release outranks the one before.
    """
    token = new_token()
    at = now()
    running = {
        "manual": True,
        "launcher": "manual",
        "handle": process,
        "launch_token": token,
        "launched_at": at,
        "started_at": at,
        "heartbeat_at": at,
        "progress_at": at,
        "pages_done": 0,
    }
    try:
        with transaction.atomic():
            queued = Build.objects.filter(state=S.QUEUED).values("pk", "attempt").first()
            taken = queued is not None and _move(
                TAKE_OVER, queued["pk"], next_attempt_at=None, **_NO_LAUNCH_ERROR, **running
            )
            if taken:
                build_id, attempt = queued["pk"], queued["attempt"]
            else:
                build = _insert(BY_HAND, created_at=at, **running)
                build_id, attempt = build.pk, build.attempt
            BuildRequest.objects.create(reason=reason, build_id=build_id, created_at=at)
    except IntegrityError:
        return None
    took = " (it took over the queued build)" if taken else ""
    logger.info("Build #%s started by hand on %s%s", build_id, describe_process(process), took)
    return Claim(build_id, token, attempt, at, manual=True)


def describe_process(process):
    process = process or {}
    return process.get("dyno") or f"{process.get('host', '?')} pid {process.get('pid', '?')}"


def this_process():
    """The handle a build process by hand records about itself, in the local launcher's form (host, pid, start
    time) so the sweep can judge it, plus the dyno name on Heroku."""
    handle = get_launcher(MANUAL).this_process()
    dyno = get_config().DYNO
    return {**handle, "dyno": dyno} if dyno else handle


def heartbeat(claim, *, done=None, total=None, moved=False):
    """Fenced write of heartbeat and progress. False means the build lost its claim and must stop at once."""
    fields = {"heartbeat_at": now()}
    if done is not None:
        fields["pages_done"] = done
    if total is not None:
        fields["pages_total"] = total
    if moved:
        fields["progress_at"] = fields["heartbeat_at"]
    return bool(_fenced(claim).update(**fields))


def _fenced(claim):
    return Build.objects.filter(pk=claim.build_id, launch_token=claim.token, state=S.RUNNING)


#: What ``finish(state=...)`` means for each final state it may write.
_FINISHES = {S.SUCCEEDED: SUCCEED, S.FAILED: FAIL, S.CANCELLED: STOP_AT_SHELL}


def finish(claim, *, state, error="", release="", pages=None, published=None):
    """End a claimed build (``succeeded``; ``failed`` by a build error; ``cancelled`` at the shell), fenced on token
    and ``running``, and send ``build_finished``. ``published`` says where the release went (destination, files
    uploaded and copied, bytes). True when this call ended the build."""
    ended = _finish(claim, _FINISHES[state], error=error, release=release, pages=pages, published=published)
    if ended:
        words = f": {error}" if error else (f": release {release}" if release else "")
        _announce(claim.build_id, Outcome(str(state), f"Build #{claim.build_id} {state}{words}", claim.build_id))
    return ended


def _finish(claim, transition, *, error="", release="", pages=None, published=None):
    fields = {"finished_at": now()}
    if published is not None:
        fields["published"] = published
    if error:  # a success keeps the error of an earlier attempt, for the history
        fields["error"] = error[:2000]
    if release:
        fields["release"] = release
    if pages is not None:
        fields["pages_done"] = pages
    ended = bool(_move(transition, claim.build_id, token=claim.token, **fields))
    if ended:
        logger.info("Build #%s %s%s", claim.build_id, transition.target, f": {error}" if error else "")
    return ended


def interrupted(claim, *, timeout_seconds):
    """The platform stopped a running build (SIGTERM that is neither a cancel nor a timeout already recorded).

    Past ``BUILD_TIMEOUT`` from launch it ends ``failed`` as a timeout (no retry); otherwise ``failed``
    ("interrupted") with a retry request, leaving the launch to the sweep or the next request.
    """
    build_id = claim.build_id
    if claim.manual:
        outcome = Outcome("cancelled", f"Build #{build_id} was stopped at the shell", build_id, ok=False)
        if _finish(claim, STOP_AT_SHELL, error="Stopped at the shell"):
            _announce(build_id, outcome)
        return outcome
    launched = claim.launched_at
    if launched and (now() - launched).total_seconds() >= timeout_seconds:
        error = timeout_error(timeout_seconds)
        outcome = Outcome("timeout", f"Build #{build_id} timed out", build_id, ok=False, detail=error)
        if _finish(claim, TIME_OUT, error=error):
            report_failure(build_id, f"Build #{build_id} was stopped: {error}. It is not retried.")
            _announce(build_id, outcome)
        return outcome
    if not _finish(claim, INTERRUPT, error="Interrupted by the platform (SIGTERM)"):
        state = Build.objects.filter(pk=build_id).values_list("state", flat=True).first()
        return Outcome("ended_elsewhere", f"Build #{build_id} was already {state}", build_id, ok=False)
    retried = retry_after_failure(build_id)
    outcome = Outcome(
        "interrupted",
        f"Build #{build_id} was interrupted",
        build_id,
        ok=False,
        detail="a retry is requested" if retried else "automatic retries stopped: reported",
    )
    _announce(build_id, outcome)
    return outcome


def timeout_error(seconds):
    return f"Timed out: running longer than BUILD_TIMEOUT ({seconds}s) from launch"


def retry_after_failure(build_id):
    """After an interruption or a loss: a request "retry of #N", unless BUILD_MAX_ATTEMPTS failures in a row."""
    config = get_config()
    failures = consecutive_failures()
    if failures >= config.BUILD_MAX_ATTEMPTS:
        report_failure(
            build_id,
            f"{failures} builds in a row have failed or been lost since the last success; automatic retries stop "
            "here. The next publish starts afresh.",
        )
        return None
    with transaction.atomic():
        request_id = record_request(f"retry of #{build_id}", retry_of_id=build_id, dispatch_after_commit=False)
    attach_requests([request_id])
    # A queued build holding only retries waits out the backoff; one with new work launches as usual.
    Build.objects.filter(state=S.QUEUED).exclude(requests__retry_of__isnull=True).update(
        next_attempt_at=now() + timedelta(seconds=backoff(failures, config))
    )
    return request_id


def consecutive_failures():
    """Failed or lost builds since the last success."""
    last_success = Build.objects.filter(state=S.SUCCEEDED).order_by("-pk").values_list("pk", flat=True).first()
    failed = Build.objects.filter(state__in=(S.FAILED, S.LOST))
    if last_success:
        failed = failed.filter(pk__gt=last_success)
    return failed.count()


# --- Reports -------------------------------------------------------------------------------------------------------


def alert_operator(build_id, message, *, subject=None, kind=AlertKind.NEEDS_OPERATOR):
    """An error a person must fix (a bad key, a missing app, a build that keeps failing to start): reported once
    per build."""
    if Build.objects.filter(pk=build_id, alerted_at__isnull=True).update(alerted_at=now()):
        notify(kind, build_id, subject or f"Build #{build_id} needs attention", message)


def report_failure(build_id, message):
    """A failure that leaves requests uncovered: reported once per build."""
    if not Build.objects.filter(pk=build_id, failure_reported_at__isnull=True).update(failure_reported_at=now()):
        return
    uncovered = BuildRequest.objects.filter(build_id=build_id).order_by("pk")
    reasons = "\n".join(f"- #{r.pk} {r.created_at:%Y-%m-%d %H:%M} {r.reason}" for r in uncovered[:50])
    notify(
        AlertKind.FAILED_UNCOVERED,
        build_id,
        f"Build #{build_id} failed",
        f"{message}\n\nRequests it leaves uncovered:\n{reasons or '- none'}",
    )


def notify(kind, build_id, subject, message):
    """Tell a person: the error log, a mail to ``ADMINS``, and ``build_alert`` for integrations. The caller has
    already decided, by a conditional update, that this process sends it."""
    logger.error("%s: %s", subject, message)
    try:
        mail_admins(subject, message, fail_silently=False)
    except OSError:
        logger.exception("Could not mail the report %r to ADMINS", subject)
    send_robustly(build_alert, Build, build_id=build_id, kind=AlertKind(kind), subject=subject, message=message)


# --- Ending a build from outside: cancel, lost, timeout ---------------------------------------------------------


def cancel(build_id, *, by=None):
    """An operator cancels a build, and this returns at once (the admin's request waits for nothing slow).

    ``cancelled`` is written first, with ``cancelled_by`` and, when the build was active, ``stop_requested_at``.
    Stopping its process and launching the queued build happen after the caller's transaction commits, in a
    background thread (``after_cancel``); the sweep finishes a stop that never happened. A queued build is
    cancelled outright; its requests stay with it (recorded as cancelled). Returns an Outcome.
    """
    who = f" by {by}" if by else ""
    at = now()
    when_active = Case(When(state__in=ACTIVE_STATES, then=Value(at)), default=None, output_field=models.DateTimeField())
    ended = _move(
        CANCEL,
        build_id,
        finished_at=at,
        error=f"Cancelled{who}",
        cancelled_by=str(by or "")[:150],
        stop_requested_at=when_active,  # evaluated on the row as it was: was it active?
    )
    build = Build.objects.filter(pk=build_id).values("state", "stop_requested_at").first()
    if build is None:
        return Outcome("unknown", f"Build #{build_id} does not exist", build_id, ok=False)
    if not ended:
        return Outcome("finished", f"Build #{build_id} had already ended ({build['state']})", build_id, ok=False)
    stopping = build["stop_requested_at"] is not None
    logger.info("Build #%s cancelled%s%s", build_id, who, "; its process is to be stopped" if stopping else "")
    deferred.defer(after_cancel, build_id, inline=_launcher_answers_at_once())
    if stopping:
        return Outcome(
            "cancelled",
            f"Build #{build_id} cancelled; its process is being stopped.",
            build_id,
            detail="stopping its process and launching the queued build in the background",
        )
    return Outcome("cancelled", f"Build #{build_id} cancelled.", build_id)


def _launcher_answers_at_once():
    """Whether the configured launcher answers from memory (the recording double of the tests): then the launch
    after a publish and the second step of a cancel run in the caller, so a test sees them done when it returns."""
    try:
        return bool(get_launcher().answers_at_once)
    except ImproperlyConfigured:
        return False


def after_cancel(build_id):
    """The second step of a cancel, outside the operator's request: stop the process of a build that was active
    (``stop_cancelled``), send ``build_finished`` for one that was queued, then launch the queued build if due.
    Returns the Outcome of the launch, or ``None``."""
    build = Build.objects.filter(pk=build_id, state=S.CANCELLED).values("stop_requested_at", "cancelled_by").first()
    if build is not None and build["stop_requested_at"] is None:
        _announce(build_id, Outcome("cancelled", _cancelled_words(build_id, build), build_id, ok=False))
    elif build is not None:
        stop_cancelled(build_id)
    after = launch_next()
    if after is not None:
        logger.info("After the cancel of build #%s: %s", build_id, after.for_operators)
    return after


def stop_cancelled(build_id):
    """Stop the process of a cancelled build whose stop was requested and has not happened, and record how it went:
    ``stopped_at``, or ``stop_error`` in words. Both the canceller's thread and the sweep may try; the conditional
    update picks the one that records it, and that one sends ``build_finished``. Returns an Outcome, or ``None``
    when there was nothing left to do."""
    pending = Build.objects.filter(
        pk=build_id, state=S.CANCELLED, stop_requested_at__isnull=False, stopped_at__isnull=True, stop_error=""
    )
    build = pending.values("handle", "launcher", "manual", "cancelled_by").first()
    if build is None:
        return None
    if not build["handle"]:
        logger.info("Build #%s: no handle was recorded; a process it started will be refused its claim", build_id)
    why_not = stop_process(build)
    if why_not is None:
        recorded = pending.update(stopped_at=now())
    else:
        recorded = pending.update(stop_error=why_not[:2000])
    said = _cancelled_words(build_id, build)
    outcome = Outcome("cancelled", said, build_id, ok=False, detail=why_not or "its process was stopped")
    if not recorded:
        return None
    _announce(build_id, outcome)
    return outcome


def _cancelled_words(build_id, build):
    return f"Build #{build_id} was cancelled" + (f" by {build['cancelled_by']}" if build["cancelled_by"] else "")


def mark_lost(build_id, *, token, reason):
    """``running`` → ``lost``: the launcher says the process is gone (never on "unknown"). Retried like an
    interruption."""
    ended = _move(LOSE, build_id, token=token, finished_at=now(), error=reason[:2000])
    if not ended:
        return None
    logger.warning("Build #%s lost: %s", build_id, reason)
    retried = retry_after_failure(build_id)
    said = "a retry is requested" if retried else "automatic retries stopped: reported"
    outcome = Outcome("lost", f"Build #{build_id} lost ({reason}); {said}", build_id, ok=False)
    _announce(build_id, outcome)
    return outcome


def time_out(build_id, *, token, timeout_seconds):
    """A build running longer than ``BUILD_TIMEOUT`` from launch: ``failed`` first, then its process is stopped
    (``stopped_at``, or ``stop_error``). Not retried; reported."""
    error = timeout_error(timeout_seconds)
    build = Build.objects.filter(pk=build_id).values("handle", "manual", "launcher").first()
    ended = _move(TIME_OUT, build_id, token=token, finished_at=now(), error=error)
    if not ended:
        return None
    logger.warning("Build #%s %s", build_id, error)
    why_not = stop_process(build)
    if why_not is None:
        Build.objects.filter(pk=build_id).update(stopped_at=now())
    else:
        Build.objects.filter(pk=build_id).update(stop_error=why_not[:2000])
    report_failure(build_id, f"Build #{build_id} was stopped: {error}. It is not retried automatically.")
    said = " and was stopped" if why_not is None else f"; {why_not}"
    outcome = Outcome("timeout", f"Build #{build_id} timed out{said}", build_id, ok=False)
    _announce(build_id, outcome)
    return outcome


def stop_process(build):
    """Ask the launcher that started ``build`` (a dict with ``handle``, ``launcher``, ``manual``) to stop it.

    Returns ``None`` when stopped (or nothing to stop), else why not, in words; never raises.
    """
    if not build or not build.get("handle"):
        return None
    try:
        launcher_for(build).stop(build["handle"])
    except (LaunchError, ImproperlyConfigured) as exc:
        logger.warning("Could not stop %s: %s", build["handle"], exc)
        return f"its process could not be stopped: {exc}"
    return None


def launcher_for(build):
    """The launcher that started ``build`` (a dict with ``launcher`` and ``manual``), which alone can judge, stop and
    describe its handle, whatever ``LAUNCHER`` says now. ``ImproperlyConfigured`` when it is no longer configured."""
    return get_launcher(MANUAL if build.get("manual") else build.get("launcher") or None)
