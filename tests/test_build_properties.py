"""A stateful property test of the build state machine (DESIGN §3, issues 4 and 5).

Hypothesis drives a ``RuleBasedStateMachine`` through publishes, after-commit dispatches, launches that succeed, fail
or die half way, claims (fresh, duplicate, orphan), launched processes that die or hang before their claim,
heartbeats, finishes, the three kinds of SIGTERM, operator cancels, passes of the real sweep (``publisher.sweep``,
sometimes two back to back, sometimes with a failing status call), a moving clock and processes that crash between
any two steps. A crashed process reads "gone" to the recording launcher, a live one "running". After every step it
checks the safety invariants of DESIGN §3, and after every sweep pass that the pass did what the sweep's rules say.

Issue 8: a build process also runs the real ``runner.run`` (render into SITE_ROOT, switch, record, launch the queued
build, prune) with a real SIGTERM to this process never, as it switches or as pruning starts: it ends ``succeeded``
with its release, never retried (defect 2). A web process, worker or build that dies right after the launcher call
leaves a build with no handle; when its process claims (at once, or later), the claim records the process's own
handle (the recording launcher's ``this_process`` is patched to answer ``{"id": "self-N"}``), a running build always
has a handle, and a claimed process that dies is judged by it: lost, not left to BUILD_TIMEOUT (defect 4). ``CLOCK``
is the database's clock, read through the real ``builds.now()`` (its SQL answers CLOCK's time);
``django.utils.timezone.now``, the clock of the process taking a step, runs up to six hours ahead or behind it from
an outside event on, and no decision may change (defect 7).

Issue 9: every example publishes to a destination drawn at its start, the recording one (in memory, like S3: seal,
one conditional pointer write, the success recorded, then the CDN's key) or the local folder. A real run on the
recording destination may meet a fault at any step of its publish: the renderer failing, a file handed over, an
upload or a server-side copy, the seal, the pointer write, right after the pointer write, the CDN key's write or the
prune; as an error, or as the process killed there (``recording.Killed``: nothing after it runs, not even its
cleanup; the model then treats the process as gone). After every step: the pointer names a sealed, whole release;
so does what the CDN serves; every sealed release is whole; and the site never moves back to an older release.
At the end of every example, once faults stop, one more publish must go live through the real runner and show
exactly the live pages.

Liveness (issue 5): at the end of every example the faults stop, and the model drives the system to quiescence (live
processes claim and succeed; the clock moves to the next deadline and a sweep pass runs), within a bound. Then every
request must be attached to a build that succeeded and started after it, or whose failure was reported, or that an
operator cancelled, or that was retried (``retry_of``) by a request that itself ended so.

The test runs inside the usual transaction of ``@pytest.mark.django_db``, so on-commit callbacks never run by
themselves: a publish takes its dispatch callback out of ``connection.run_on_commit`` (as a commit would) and the
model keeps it as a pending dispatch that a later step runs, or a crash drops. Every example runs in a savepoint
rolled back at its end, with the tables cleared at its start.

The seed is printed; replay a run with ``HYPOTHESIS_SEED=<seed>``. ``BUILD_PROPERTY_EXAMPLES`` and
``BUILD_PROPERTY_STEPS`` change its size (default 50 examples × up to 50 steps; at least 1,000 steps must run).
``BUILD_PROPERTY_SHRINK=0`` skips shrinking (to see the first failure fast).
"""

import contextlib
import copy
import hashlib
import itertools
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import hypothesis
import hypothesis.internal.conjecture.engine
import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.db.models import Q
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from publisher import builds, interrupts, runner
from publisher import sweep as the_sweep
from publisher.conf import get_config
from publisher.destinations import get_destination, release_order
from publisher.destinations import recording as destination
from publisher.destinations.recording import RecordingDestination
from publisher.launchers import GONE, RUNNING, STARTING, UNKNOWN, LaunchError, recording
from publisher.models import ACTIVE_STATES, Build, BuildRequest, BuildState, Page
from publisher.release import SiteRoot
from publisher.render import RenderError

S = BuildState
OPEN_STATES = (S.QUEUED, *ACTIVE_STATES)
ENDED_STATES = (S.FAILED, S.LOST, S.CANCELLED)
# What a sweep pass reads of the active build to decide.
SWEPT_FIELDS = ("pk", "state", "launch_token", "attempt", "manual", "handle", "launched_at", "heartbeat_at")

# Content changes of one user action; "view fails" raises inside the transaction.
CONTENT_OPS = ["new", "new", "new", "edit", "edit", "unpublish", "republish", "delete", "edit_draft", "view fails"]
# One step of a live build process (weighted by repetition).
PROCESS_STEPS = [
    "heartbeat",
    "heartbeat",
    "runs for real",
    "runs for real",
    "runs for real",
    "runs for real",
    "succeed",
    "succeed",
    "succeed",
    "render error",
    "sigterm",
    "sigterm after the timeout",
    "sigterm after a cancel",
    "crash",
    "crash",
]

# How the process of a launch starts (weighted by repetition).
CLAIM_RACES = ["none"] * 4 + [
    "builds at once",
    "builds at once",
    "builds at once",
    "orphan first",
    "duplicate after",
    "dies before its claim",
    "hangs starting",
    "dies after its claim",
]

# Whether the process that calls the launcher (a web process, a worker, a build launching the next build) dies right
# after the call, before it records the handle (weighted by repetition).
DIES = [False] * 5 + [True]

# Outside events (weighted by repetition).
OUTSIDE_EVENTS = [
    "advance clock",
    "advance clock",
    "advance clock",
    "launch will fail",
    "launch will fail",
    "stray claim",
    "stray claim",
    "crash web process",
    "launcher status fails",
    "requestbuild",
    "operator cancels",
    "build by hand",
    "process clock skewed",
]
# When the SIGTERM of a build process running ``runner.run`` for real comes (weighted by repetition): never, right after
# the switch (inside the critical section), or as pruning starts (after the outcome is recorded).
SIGTERM_MOMENTS = ["never", "as it switches", "as pruning starts", "as pruning starts"]
# Where an example's builds publish (issue 9): the recording destination (where faults can be put) or the local one.
DESTINATIONS = {
    "recording": "publisher.destinations.recording.RecordingDestination",
    "local": "publisher.destinations.local.LocalDestination",
}
# A fault at one step of a publish on the recording destination (weighted by repetition; None: no fault). "render"
# is the renderer raising between two pages; the others are the recording destination's steps.
PUBLISH_FAULTS = [None] * 2 + [
    "begin",
    "render",
    "add",
    "add",
    "upload",
    "copy",
    "seal",
    "switch",
    "after switch",
    "kvs",
    "prune",
]
# Faults before the pointer write: the site stays where it was.
BEFORE_SWITCH = ("begin", "render", "add", "upload", "copy", "seal", "switch")
# Steps called once per page, file or release (prune: once as it starts, then once per release removed): which call
# of it fails is drawn, up to this many let through first.
REPEATED = {"render": 3, "add": 12, "upload": 3, "copy": 8, "prune": 2}
# Running build processes, so that the heartbeat thread of one killed mid-build can be stopped as its death would.
HEARTBEATS = []
# How far the clock of the process taking a step is from the database's (issue 8, defect 7).
SKEWS = [timedelta(hours=h) for h in (-6, -1, 0, 1, 6)]

EXAMPLES = int(os.environ.get("BUILD_PROPERTY_EXAMPLES", 50))
STEPS = int(os.environ.get("BUILD_PROPERTY_STEPS", 50))
MIN_STEPS_PER_RUN = 1_000

# Shrinking finds the shortest failing sequence; the explain phase traces every line (slow before Python 3.12).
PHASES = [hypothesis.Phase.generate] + (
    [hypothesis.Phase.shrink] if os.environ.get("BUILD_PROPERTY_SHRINK", "1") != "0" else []
)

BUILD_TIMEOUT = 3_600
MAX_ATTEMPTS = 2  # low, so that runs of failures often reach it and retries stop (then the failure is reported)
# Liveness: once faults stop, this many steps (a process claims or succeeds, or the clock moves to the next deadline
# and a pass runs) must leave nothing open.
QUIESCENCE_STEPS = 200
# A manual build's handle that no launcher can act on (the local launcher refuses another host).
MANUAL_PROCESS = {"host": "simulated-shell.invalid", "pid": 999_999_999, "started": None}


class Clock:
    """The state machine's clock: starts at a fixed time and ticks 1 ms per reading, so every event is ordered."""

    START = datetime(2030, 1, 1, tzinfo=UTC)
    TICK = timedelta(milliseconds=1)

    def __init__(self):
        self.reset()

    def reset(self):
        self.t = self.START

    def __call__(self):
        self.t += self.TICK
        return self.t

    def advance(self, seconds):
        self.t += timedelta(seconds=seconds)

    def advance_to(self, moment):
        self.t = max(self.t, moment)


CLOCK = Clock()


class DatabaseClock(dict):
    """Stands in for ``builds._CLOCK_SQL``: the statement the real ``builds.now()`` runs to read the database's clock,
    here one that answers CLOCK's time (a tick per reading), so every decision reads the time as production does."""

    def __getitem__(self, vendor):
        moment = CLOCK().isoformat()
        return f"SELECT CAST('{moment}' AS timestamptz)" if vendor == "postgresql" else f"SELECT '{moment}'"

    def get(self, vendor, default=None):
        return self[vendor]


class ProcessClock:
    """``django.utils.timezone.now`` during the test: the clock of the process taking a step, ``skew`` away from the
    database's (a dyno whose clock runs ahead or behind). A reading ticks CLOCK too, so events stay ordered."""

    skew = timedelta(0)

    def __call__(self):
        return CLOCK() + self.skew


PROCESS_CLOCK = ProcessClock()
_own_handles = itertools.count(1)


def this_process(launcher):
    """``RecordingLauncher.this_process`` for the test: the handle a claiming build process records about itself."""
    return {"id": f"self-{next(_own_handles)}"}


def sigterm_now():
    """A real SIGTERM to this process; its handler has run when this returns (or raised out of it)."""
    os.kill(os.getpid(), signal.SIGTERM)
    signal.sigtimedwait([], 0)


class ProcessDied(BaseException):
    """The web process dies right after the launcher call, before it records the handle."""


class Flag:
    def __init__(self):
        self.value = False

    def set(self):
        self.value = True

    def __bool__(self):
        return self.value


class RollBack(Exception):
    """The view fails after publishing: the content transaction rolls back."""


def launch_error(kind):
    return {
        "unavailable": LaunchError("Heroku is unavailable (503)", status=503, retryable=True),
        "dyno_limit": LaunchError("Dyno limit reached (429)", status=429, error_id="rate_limit", retryable=True),
        "bad_key": LaunchError(
            "Heroku rejected the API key (401)",
            status=401,
            error_id="unauthorized",
            retryable=False,
            needs_operator=True,
        ),
        "no_app": LaunchError(
            "Heroku has no such app (404)", status=404, error_id="not_found", retryable=False, needs_operator=True
        ),
    }[kind]


def row(build_id):
    return (
        Build.objects.filter(pk=build_id)
        .values(
            "pk",
            "state",
            "launch_token",
            "attempt",
            "error",
            "manual",
            "handle",
            "launched_at",
            "started_at",
            "next_attempt_at",
            "alerted_at",
            "failure_reported_at",
        )
        .first()
    )


def holds(build, token):
    """Whether a process holding ``token`` still owns ``build`` (a row dict): running under that token."""
    return build is not None and build["state"] == S.RUNNING and build["launch_token"] == token


class Stats:
    """What a run did: examples, steps, and how often each interesting outcome happened (printed at the end)."""

    examples = 0
    steps = 0
    quiescent = 0  # examples whose liveness check ran (every one that ended without an error)
    faults = 0  # publishes that met a fault (issue 9)
    most_quiescence_steps = 0
    events = Counter()


def note(event):
    Stats.events[event] += 1


class BuildMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        Stats.examples += 1
        self._savepoint = transaction.atomic()
        self._savepoint.__enter__()
        BuildRequest.objects.all().delete()
        Build.objects.all().delete()
        Page.objects.all().delete()
        recording.reset()
        del connection.run_on_commit[:]
        CLOCK.reset()
        PROCESS_CLOCK.skew = timedelta(0)
        shutil.rmtree(get_config().SITE_ROOT, ignore_errors=True)  # build ids and CLOCK start again: so do releases
        self.pending = []  # (request id, dispatch callback) that a commit handed to this web process
        self.dropped = set()  # request ids whose dispatch a crash lost: the next dispatch must pick them up
        self.requests = set()  # every committed request id
        self.claims = []  # claims held by live build processes
        self.claimed_tokens = set()  # every token that ever got a Claim
        self.claimed = []  # (build id, token) of every Claim, for duplicate deliveries
        self.never_claim = set()  # launch tokens whose process died or hangs: it never claims (again)
        self.ran = set()  # tokens whose process rendered (at most once each)
        self.own_handles = {}  # launch token -> the handle its process recorded at its claim (defect 4)
        self.pages = {}  # slug -> [title, live]
        self.next_page = 0
        destination.reset()
        self.destination = None  # drawn by choose_destination, the first rule
        self._destination_settings = None
        self.live_seen = None  # the newest release the site was ever on (it never moves back)
        self.faulted = False  # a publish met a fault in this example

    @initialize(name=st.sampled_from(["recording", "recording", "local"]))
    def choose_destination(self, name):
        """Where this example's builds publish."""
        self.destination = name
        config = get_config()
        self._destination_settings = override_settings(
            PUBLISHER={**django_settings.PUBLISHER, "DESTINATION": {"BACKEND": DESTINATIONS[name]}}
        )
        self._destination_settings.enable()
        assert get_config().SITE_ROOT == config.SITE_ROOT and type(get_destination()).__name__.lower().startswith(name)
        note(f"destination {name}")

    def teardown(self):
        try:
            if sys.exc_info()[0] is None:  # the example ended without an error: now check liveness
                self._liveness()
        finally:
            recording.reset()
            destination.reset()
            self._stop_heartbeats()
            if self._destination_settings is not None:
                self._destination_settings.disable()
            del connection.run_on_commit[:]
            transaction.set_rollback(True)
            self._savepoint.__exit__(None, None, None)

    # --- Helpers ------------------------------------------------------------------------------------------------

    def _launch_before(self):
        return {
            "launches": len(recording.launches),
            "armed": list(recording.failures["launch"]),
            "queued": Build.objects.filter(state=S.QUEUED).values("pk", "attempt", "alerted_at").first(),
        }

    def _check_launch(self, before, *, died=False):
        """What one promote-and-launch did matches the launcher's story (at most one attempt)."""
        armed = len(recording.failures["launch"])
        launches = len(recording.launches)
        if armed < len(before["armed"]):  # the launcher raised: the same row is queued again with a backoff
            assert armed == len(before["armed"]) - 1 and launches == before["launches"]
            error = before["armed"][0]
            queued = Build.objects.get(state=S.QUEUED)
            build = row(queued.pk)
            was = before["queued"]
            assert build["attempt"] == (was["attempt"] + 1 if was and was["pk"] == build["pk"] else 2)
            assert build["launch_token"] == "" and build["error"] == f"Launch failed: {error.message}"
            assert build["next_attempt_at"] > CLOCK.t
            alerted_before = was["alerted_at"] if was and was["pk"] == build["pk"] else None
            # Reported at once when an operator must act, or once it has failed to start BUILD_MAX_ATTEMPTS times
            # (issue 8, defect 6); only once per build.
            failed_attempts = build["attempt"] - 1
            if alerted_before or not (error.needs_operator or failed_attempts >= get_config().BUILD_MAX_ATTEMPTS):
                assert build["alerted_at"] == alerted_before
            else:
                assert build["alerted_at"]
            note("launch failed, operator alerted" if error.needs_operator else "launch failed, retryable")
            assert not Build.objects.filter(state__in=ACTIVE_STATES).exists()
        elif launches > before["launches"]:
            assert launches == before["launches"] + 1
            launch = recording.launches[-1]
            build = row(launch["build_id"])
            assert build["launch_token"] == launch["token"]
            assert build["state"] == (S.LAUNCHING if died else S.LAUNCHED)
            assert build["handle"] == (None if died else launch["handle"])
            if before["queued"]:
                assert build["pk"] == before["queued"]["pk"] and build["attempt"] == before["queued"]["attempt"]
            note("launch died after the launcher call" if died else f"launched (attempt {min(build['attempt'], 3)})")
        else:
            assert not died

    def _check_promoted(self):
        """After whoever promotes (dispatch, launch_next, an ended build): no due queued build waits on an idle slot."""
        if Build.objects.filter(state__in=ACTIVE_STATES).exists():
            return
        due = Build.objects.filter(state=S.QUEUED).filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=CLOCK.t)
        )
        assert not due.exists(), "a due queued build was left waiting with no active build"

    def _check_all_attached(self):
        assert not BuildRequest.objects.filter(build__isnull=True).exists(), "a dispatch left a request unattached"
        self.dropped.clear()

    def _note_new_requests(self, before):
        new = set(BuildRequest.objects.values_list("pk", flat=True)) - before
        self.requests |= new
        return new

    def _claim(self, build_id, token, *, must_refuse=False):
        before = row(build_id)
        expect = before is not None and before["state"] in (S.LAUNCHING, S.LAUNCHED) and before["launch_token"] == token
        result = builds.claim(build_id, token)
        if isinstance(result, builds.Claim):
            assert expect and not must_refuse, f"claim of build #{build_id} won against {before}"
            assert token not in self.claimed_tokens, "a second Claim for one launch token"
            self.claimed_tokens.add(token)
            self.claimed.append((build_id, token))
            self.claims.append(result)
            after = row(build_id)
            assert after["state"] == S.RUNNING and after["started_at"] and after["launch_token"] == token
            if before["handle"] is None:  # the launching process died before it recorded the launcher's handle
                assert after["handle"], f"build #{build_id} claimed with no handle recorded: the sweep cannot judge it"
                self.own_handles[token] = after["handle"]
                note("claim recorded its own handle")
            else:
                assert after["handle"] == before["handle"], "a claim replaced the launcher's handle"
            note(f"claim won from {before['state']}")
        else:
            assert not expect, f"claim of build #{build_id} refused although it was {before}"
            assert result.kind == "claim_refused" and not result.ok
            assert row(build_id) == before, "a refused claim changed the build"

    def _apply(self, op, n):
        """One content change inside the current transaction; True when it changes the live site (a signal)."""
        live = sorted(slug for slug, (_title, is_live) in self.pages.items() if is_live)
        drafts = sorted(slug for slug, (_title, is_live) in self.pages.items() if not is_live)
        if op == "new":
            self.next_page += 1
            slug, title = f"page-{self.next_page}", f"Page {self.next_page}"
            Page(slug=slug, title=title, body="body").publish()
            self.pages[slug] = [title, True]
            return True
        pool = {"republish": drafts, "edit_draft": live + drafts}.get(op, live)
        if not pool:
            return False
        slug = pool[n % len(pool)]
        page = Page.objects.get(slug=slug)
        if op in ("edit", "edit_draft"):  # a saved draft changes nothing live; publishing it does (DESIGN §2)
            page.title = f"{slug} v{n}" if page.title != f"{slug} v{n}" else f"{slug} w{n}"
            page.save()
            self.pages[slug][0] = page.title
            if op == "edit_draft":
                return False
            return page.publish()  # False when the draft is back to what is live
        if op == "unpublish":
            assert page.unpublish()
            self.pages[slug][1] = False
            return True
        if op == "republish":
            assert page.publish()
            self.pages[slug][1] = True
            return True
        assert op == "delete"
        page.delete()
        del self.pages[slug]
        return True

    # --- Content and requests -------------------------------------------------------------------------------------

    @rule(ops=st.lists(st.tuples(st.sampled_from(CONTENT_OPS), st.integers(0, 9)), min_size=1, max_size=3))
    def publish(self, ops):
        """One user action in one transaction; its commit hands one dispatch callback to this web process.

        A "view fails" op raises inside the transaction: everything before it rolls back, request included.
        """
        known = set(BuildRequest.objects.values_list("pk", flat=True))
        start = len(connection.run_on_commit)
        saved = copy.deepcopy(self.pages), self.next_page
        signalled = []
        try:
            with transaction.atomic():
                for op, n in ops:
                    if op == "view fails":
                        raise RollBack
                    signalled.append(self._apply(op, n))
        except RollBack:
            self.pages, self.next_page = saved
            assert len(connection.run_on_commit) == start, "a rolled-back change left a dispatch behind"
            assert not self._note_new_requests(known), "a rolled-back change left a build request"
            note("content change rolled back")
            return
        callbacks = [func for _sids, func, _robust in connection.run_on_commit[start:]]
        del connection.run_on_commit[start:]  # committed: the callbacks are this process's to run (or lose)
        new = self._note_new_requests(known)
        if not any(signalled):
            assert not new and not callbacks, "a change that is not live made a build request"
            note("content change not live: no request")
            return
        note("publish")
        assert len(new) == 1 and len(callbacks) == 1, "one user action must make exactly one request and dispatch"
        (request_id,) = new
        assert getattr(callbacks[0], "request_id", None) == request_id
        assert BuildRequest.objects.get(pk=request_id).build_id is None  # attached only after commit
        self.pending.append((request_id, callbacks[0]))

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def dispatch(self, data):
        """One after-commit callback runs (in any order: there are several web processes). Now and then the web
        process dies right after the launcher call, before it records the handle; then the build process it launched
        may claim at once, with no handle recorded for it (issue 8, defect 4)."""
        index = data.draw(st.integers(0, len(self.pending) - 1), label="pending dispatch")
        dies = data.draw(st.sampled_from(DIES), label="dies after the launcher call")
        _request_id, callback = self.pending.pop(index)
        before = self._launch_before()
        with self._dying_after_the_launcher_call(dies) as died:
            callback()
        self._check_all_attached()
        self._check_launch(before, died=died)
        if not died:
            self._check_promoted()
        else:
            self._claims_at_once(data)

    # --- Launch ---------------------------------------------------------------------------------------------------

    def _claims_at_once(self, data):
        """After a launch whose caller died before recording the handle: now and then the build process it started
        claims before anything else happens, with no handle recorded for its build (issue 8, defect 4)."""
        if data.draw(st.booleans(), label="its build process claims at once"):
            launch = recording.launches[-1]
            self._claim(launch["build_id"], launch["token"])

    @contextlib.contextmanager
    def _dying_after_the_launcher_call(self, dies):
        """Yields a flag that is true (after the block) when the process "died" right after the launcher call."""
        died = Flag()
        original = recording.RecordingLauncher.launch

        def launch_then_die(launcher, *, build_id, token):
            handle = original(launcher, build_id=build_id, token=token)
            raise ProcessDied(handle)

        if dies:
            recording.RecordingLauncher.launch = launch_then_die
        try:
            yield died
        except ProcessDied:
            died.set()
        finally:
            recording.RecordingLauncher.launch = original

    # --- The sweep ------------------------------------------------------------------------------------------------

    @rule(data=st.data())
    def sweep(self, data):
        """Passes of the real sweep (``publisher.sweep.sweep``) at the current clock: one, or two back to back (two
        workers, or a worker and a Scheduler job). Now and then the worker dies right after the launcher call."""
        for _ in range(data.draw(st.sampled_from([1, 1, 1, 2]), label="passes")):
            self._sweep_pass(dies=data.draw(st.sampled_from(DIES), label="dies after the launcher call"))

    def _sweep_pass(self, *, dies=False):
        """One pass; checks that it did to the active build what the sweep's rules say (issue 5), left ended builds
        alone, attached every request past the grace, and launched at most once, as ``launch_next`` does."""
        config = get_config()
        at = CLOCK.t + Clock.TICK  # the pass reads the clock once, first
        ended = dict(Build.objects.exclude(state__in=OPEN_STATES).values_list("pk", "state"))
        active = Build.objects.filter(state__in=ACTIVE_STATES).values(*SWEPT_FIELDS).first()
        expect = self._sweep_expectation(active, at, config) if active else None
        grace = at - timedelta(seconds=the_sweep.UNATTACHED_GRACE)
        old = set(BuildRequest.objects.filter(build__isnull=True, created_at__lte=grace).values_list("pk", flat=True))
        stops = len(recording.stops)
        known = set(BuildRequest.objects.values_list("pk", flat=True))
        launch = self._launch_before()
        with self._dying_after_the_launcher_call(dies) as died:
            the_sweep.sweep()
        self._note_new_requests(known)
        assert dict(Build.objects.filter(pk__in=ended).values_list("pk", "state")) == ended, (
            "a pass changed an ended build"
        )
        assert not BuildRequest.objects.filter(pk__in=old, build__isnull=True).exists(), "a pass left an old request"
        if old:
            self.dropped -= old
            note("sweep attached lost requests")
        if active:
            self._check_swept(active, expect, at, recording.stops[stops:], launch["queued"])
        self._check_launch(launch, died=died)
        if not died:
            self._check_promoted()

    def _status_seen(self, build):
        """What the pass will hear about ``build``'s process: the recording launcher's word ("running" unless the
        model made it "gone"); "unknown" without a handle, for a build by hand on another host, or when the status
        call is armed to fail."""
        if not build["handle"] or build["manual"] or recording.failures["status"]:
            return UNKNOWN
        return recording.statuses.get(build["handle"]["id"], RUNNING)

    def _sweep_expectation(self, build, at, config):
        """What a pass at ``at`` must do to the active ``build`` (the sweep's rules 3, 4, 5 and 7 of issue 5)."""
        since_launch = (at - build["launched_at"]).total_seconds()
        if build["state"] == S.LAUNCHING:
            return "requeue" if since_launch > config.BUILD_LAUNCH_TIMEOUT else "leave"
        if build["state"] == S.LAUNCHED:
            if since_launch <= config.BUILD_START_TIMEOUT:
                return "leave"
            status = self._status_seen(build)
            if status == GONE:
                return "requeue"
            if status in (STARTING, RUNNING) and since_launch > 2 * config.BUILD_START_TIMEOUT:
                return "requeue and stop"
            return "leave"
        if since_launch > config.BUILD_TIMEOUT:
            return "time out"
        silent = (at - build["heartbeat_at"]).total_seconds()
        if silent > config.BUILD_LOST_AFTER and self._status_seen(build) == GONE:
            return "lost"
        return "leave"  # healthy, a stall (reported), or its process unknown (logged)

    def _check_swept(self, before, expect, at, stopped, queued):
        pk = before["pk"]
        after = row(pk)
        requests = set(BuildRequest.objects.filter(build_id=pk).values_list("pk", flat=True))
        if expect == "leave":
            assert after["state"] == before["state"] and after["launch_token"] == before["launch_token"], (
                f"a pass ended build #{pk} ({before['state']}) that its rules leave alone: {after}"
            )
            return
        if expect == "time out":
            assert after["state"] == S.FAILED and after["error"].startswith("Timed out"), after
            assert after["failure_reported_at"], "a build timed out by the sweep was not reported"
            assert before["manual"] or not before["handle"] or before["handle"] in stopped, "a timed out build runs on"
            note("sweep timed out a build")
            return
        if expect == "lost":
            assert after["state"] == S.LOST and "gone" in after["error"], after
            retried = BuildRequest.objects.filter(retry_of_id=pk).exists()
            assert retried or after["failure_reported_at"], "a lost build was neither retried nor reported"
            note("sweep marked a build lost" + ("" if retried else ", retries stopped"))
            if before["handle"].get("id", "").startswith("self-"):
                note("sweep marked a build lost by the handle its claim recorded")
            return
        assert expect in ("requeue", "requeue and stop")
        if expect == "requeue and stop":
            assert before["handle"] in stopped, "a launched process that never started was not stopped"
        if after["state"] == S.QUEUED:
            assert after["attempt"] == before["attempt"] + 1 and after["launch_token"] == "" and after["error"]
            assert after["next_attempt_at"] > at, "a re-queued build is due at once, with no backoff"
            note(f"sweep re-queued a {before['state']} build" + (", stopped" if expect == "requeue and stop" else ""))
        else:  # another build was queued meanwhile: this one ended and handed its requests over
            assert after["state"] == S.FAILED and "moved" in after["error"] and not requests, after
            note("sweep re-queue handed requests to the queued build")
        assert queued is None or after["state"] == S.FAILED, "a re-queue made a second queued build"

    # --- Build processes ------------------------------------------------------------------------------------------

    def _claimable(self):
        """Recorded launches whose build still waits for exactly that process (``launching``/``launched``)."""
        waiting = dict(Build.objects.filter(state__in=(S.LAUNCHING, S.LAUNCHED)).values_list("pk", "launch_token"))
        return [
            x
            for x in recording.launches
            if waiting.get(x["build_id"]) == x["token"] and x["token"] not in self.never_claim
        ]

    def _process_ends(self, token, status=GONE):
        """The process of a launch dies (the launcher says "gone" for its handle from now on), or hangs before its
        claim ("starting"). A build by hand runs on another host: the sweep hears "unknown" for it and waits for
        BUILD_TIMEOUT."""
        self.never_claim.add(token)
        for launch in recording.launches:
            if launch["token"] == token:
                recording.statuses[launch["handle"]["id"]] = status
        if token in self.own_handles:  # the handle its claim recorded names the same process
            recording.statuses[self.own_handles[token]["id"]] = status

    @precondition(lambda self: self._claimable())
    @rule(data=st.data())
    def claim(self, data):
        """The process of a launch that its build still waits for starts and claims with its id and token. Now and
        then an orphan of an earlier attempt (an old token) tries the same build first, or the platform starts the
        same process twice right after: both are refused. Or it dies right after its claim (the sweep judges it by
        its handle). Or the process never claims: it dies before (the launcher says "gone"), or hangs starting (the
        launcher says "starting" until the sweep stops it)."""
        launch = data.draw(st.sampled_from(self._claimable()), label="launch")
        race = data.draw(st.sampled_from(CLAIM_RACES), label="race")
        if race in ("dies before its claim", "hangs starting"):
            self._process_ends(launch["token"], GONE if race == "dies before its claim" else STARTING)
            note(f"launched process {race}")
            return
        if race == "orphan first":
            self._claim(launch["build_id"], "token-of-an-earlier-attempt", must_refuse=True)
            note("stray claim refused: orphan racing the launched process")
        self._claim(launch["build_id"], launch["token"])
        if race == "duplicate after":
            self._claim(launch["build_id"], launch["token"], must_refuse=True)
            note("stray claim refused: duplicate start")
        if race == "dies after its claim":  # the sweep judges it by its handle (its own, if the launcher's was lost)
            self.claims = [c for c in self.claims if c.token != launch["token"]]
            self._process_ends(launch["token"])
            note("claimed process died")
        if race == "builds at once":  # and runs to its end, perhaps meeting a fault as it publishes (issue 9)
            (claim,) = [c for c in self.claims if c.token == launch["token"]]
            self.claims.remove(claim)
            self.ran.add(claim.token)
            self._run_for_real(claim, "never", self._draw_fault(data))

    def _stray_claim(self, data):
        """A process that must not build claims: a duplicate start of a claimed one, an orphan whose build was
        re-queued or cancelled meanwhile, or one with a forged token."""
        claimable = self._claimable()
        stale = [
            x
            for x in recording.launches
            if x["token"] not in self.claimed_tokens | self.never_claim and x not in claimable
        ]
        kinds = (["duplicate"] if self.claimed else []) + (["stale"] if stale else []) + ["forged"]
        kind = data.draw(st.sampled_from(kinds), label="stray claim")
        if kind == "duplicate":
            build_id, token = data.draw(st.sampled_from(self.claimed), label="claimed")
        elif kind == "stale":
            launch = data.draw(st.sampled_from(stale), label="orphan")
            build_id, token = launch["build_id"], launch["token"]
        else:
            build_ids = sorted(set(Build.objects.values_list("pk", flat=True)) | {0})
            build_id, token = data.draw(st.sampled_from(build_ids), label="forged for"), "token-of-an-earlier-attempt"
        self._claim(build_id, token, must_refuse=True)
        note(f"stray claim refused: {kind}")

    @precondition(lambda self: self.claims)
    @rule(data=st.data(), step=st.sampled_from(PROCESS_STEPS))
    def build_process(self, data, step):
        """One step of a live build process: a heartbeat, or its end (success, render error, three kinds of
        SIGTERM, or a crash that leaves the row as it is)."""
        claim = data.draw(st.sampled_from(self.claims), label="claim")
        if step == "heartbeat":
            self._heartbeat(claim, data.draw(st.integers(0, 20), label="pages done"))
            return
        self.claims.remove(claim)  # the process ends with this step
        if step == "crash":
            self._process_ends(claim.token)
            note("build process crashed")
            return
        assert claim.token not in self.ran, "a build rendered twice for one claim"
        self.ran.add(claim.token)
        if step == "runs for real":  # to its end, perhaps meeting a fault as it publishes (issue 9)
            self._run_for_real(claim, "never", self._draw_fault(data))
        elif step == "succeed":
            if self._succeed(claim, dies=data.draw(st.sampled_from(DIES), label="dies after the launcher call")):
                self._claims_at_once(data)
        elif step == "render error":
            self._render_error(claim)
        elif step == "sigterm":
            self._sigterm(claim)
        elif step == "sigterm after the timeout":
            CLOCK.advance_to(claim.launched_at + timedelta(seconds=BUILD_TIMEOUT + 5))
            self._sigterm(claim)
        else:
            assert step == "sigterm after a cancel"
            self._cancel_then_sigterm(claim)

    @precondition(lambda self: self.claims)
    @rule(data=st.data(), moment=st.sampled_from(SIGTERM_MOMENTS))
    def build_runs_for_real(self, data, moment):
        """A live build process runs the real ``runner.run`` to its end, and SIGTERM comes never, as it switches or as
        pruning starts (issue 8, defect 2). On the recording destination, a run that gets no SIGTERM may meet a
        fault at any step of its publish, as an error or as the process killed there (issue 9)."""
        claim = data.draw(st.sampled_from(self.claims), label="claim")
        self.claims.remove(claim)
        assert claim.token not in self.ran, "a build rendered twice for one claim"
        self.ran.add(claim.token)
        self._run_for_real(claim, moment, self._draw_fault(data) if moment == "never" else None)

    def _draw_fault(self, data):
        """A fault for a publish to the recording destination: (step, kill, skip), or None."""
        if self.destination != "recording":
            return None
        step = data.draw(st.sampled_from(PUBLISH_FAULTS), label="fault at")
        if step is None:
            return None
        kill = step == "after switch" or (step != "render" and data.draw(st.booleans(), label="killed there"))
        skip = data.draw(st.integers(0, REPEATED[step]), label="calls let through first") if step in REPEATED else 0
        return (step, kill, skip)

    def _heartbeat(self, claim, done):
        """Fenced: False once the claim is lost, and then the process stops at once without switching."""
        expect = holds(row(claim.build_id), claim.token)
        ok = builds.heartbeat(claim, done=done, total=20, moved=True)
        assert ok == expect
        if ok:
            assert Build.objects.get(pk=claim.build_id).pages_done == done
        else:
            self.claims.remove(claim)
            note("heartbeat fenced")

    def _succeed(self, claim, *, dies=False):
        """As ``runner.run`` without the files: the fencing check before the switch, succeeded, then promote. With
        ``dies`` the build process dies right after the launcher call that promotes the queued build; returns whether
        it did."""
        expect = holds(row(claim.build_id), claim.token)
        if not builds.heartbeat(claim, done=len(self.pages), total=len(self.pages), moved=True):
            assert not expect  # fenced: stops without switching the site, and promotes nothing
            note("fenced before the switch")
            return False
        assert expect
        assert builds.finish(claim, state=S.SUCCEEDED, release=f"r-b{claim.build_id}-a{claim.attempt}", pages=1)
        assert row(claim.build_id)["state"] == S.SUCCEEDED
        note("manual build succeeded" if claim.manual else "succeeded")
        before = self._launch_before()
        with self._dying_after_the_launcher_call(dies) as died:
            builds.launch_next()
        self._check_launch(before, died=died)
        if not died:
            self._check_promoted()
        return bool(died)

    def _live(self):
        """The name of the release the site is on, or None."""
        if self.destination == "recording":
            return destination.pointer.release if destination.pointer else None
        return SiteRoot(get_config().SITE_ROOT).live_name()

    def _run_for_real(self, claim, moment, fault=None):
        """The real ``runner.run`` (render, publish to the example's destination, record, launch the queued build,
        prune) under the build command's signal handler, with a real SIGTERM to this process ``moment`` (issue 8,
        defect 2): once the site has switched the build ends ``succeeded``, with its release, and is not retried.
        ``fault`` = (step, kill, skip) puts a fault at a step of the publish (issue 9)."""
        before = row(claim.build_id)
        expect = holds(before, claim.token)
        live_before, served_before = self._live(), destination.served
        launch = self._launch_before()
        retries = BuildRequest.objects.filter(retry_of__isnull=False).count()
        killed = None
        with self._sigterm_at(moment), self._fault_at(fault) as fired:
            restore = interrupts.install()
            try:
                result = runner.run(claim)
            except destination.Killed as exc:
                killed, result = exc, None
            finally:
                restore()
        if killed:
            self._stop_heartbeats()  # the process is dead: its heartbeat thread dies with it
        HEARTBEATS.clear()
        step = fault[0] if fault and fired else None
        if step:
            self.faulted = True
            Stats.faults += 1
            note(f"fault at {step}")
        after = Build.objects.filter(pk=claim.build_id).values("state", "error", "release", "failure_reported_at")[0]
        mine = {name for name in destination.releases if name.endswith(f"-b{claim.build_id}-a{claim.attempt}")}
        if not expect:  # fenced at its first heartbeat or before the switch: stops, switches nothing, promotes nothing
            assert after["state"] == before["state"] and after["error"] == before["error"]
            assert self._live() == live_before, "a fenced build moved the site"
            if killed:
                self._process_ends(claim.token)
            elif not step:
                assert result.exit_code == runner.EXIT_OK and "stopped" in result.message, result
            note("fenced before the switch" + (f", with a fault at {step}" if step else ""))
            if not killed:
                self._check_launch(launch)
            return
        if killed and step != "kvs" and step != "prune":  # dead before its success was recorded: the sweep judges it
            assert after["state"] == S.RUNNING, f"build #{claim.build_id} killed at {step} ended {after}"
            self._process_ends(claim.token)
            if step == "after switch":
                (name,) = mine
                assert self._live() == name and destination.served == served_before, "the pointer is written first"
            else:
                assert self._live() == live_before, f"a build killed at {step} moved the site"
            note(f"publish killed at {step}")
            self._check_launch(launch)
            return
        if step in BEFORE_SWITCH:  # an error before the pointer write: failed, reported, the site where it was
            assert result.exit_code == runner.EXIT_FAILED and after["state"] == S.FAILED, (result, after)
            assert ("Recorded failure" in after["error"] or "RenderError" in after["error"]) and after[
                "failure_reported_at"
            ], after
            assert self._live() == live_before, f"a build that failed at {step} moved the site"
            sealed = {name for name in mine if name in destination.manifests}
            assert mine == sealed and bool(sealed) == (step == "switch"), (
                f"a publish that failed at {step} left {mine}: only a sealed release outlives its writer's abort"
            )
            note(f"publish failed at {step}")
            self._check_launch(launch)
            self._check_promoted()
            return
        assert after["state"] == S.SUCCEEDED, (
            f"build #{claim.build_id} went live and got SIGTERM {moment} / a fault at {step}, then ended "
            f"{after['state']} ({after['error']}): {result and result.message}"
        )
        assert after["release"].endswith(f"-b{claim.build_id}-a{claim.attempt}"), after
        if self._live() != after["release"]:  # a build by hand with a higher id went live before this one claimed
            assert release_order(self._live()) > release_order(after["release"]), "a success that is not live"
            assert "was kept (a newer release is live)" in (result.message if result else ""), result
            note("kept: a newer release (a build by hand) is live")
        assert killed or result.exit_code == runner.EXIT_OK, result
        assert BuildRequest.objects.filter(retry_of__isnull=False).count() == retries, (
            "a build that went live was retried"
        )
        if step == "kvs":
            assert destination.served == served_before, "the CDN's key is written after the pointer"
        elif self.destination == "recording":
            assert destination.served == self._live()
        note(
            f"ran for real, SIGTERM {moment}: succeeded"
            + (f", {'killed' if killed else 'failed'} at {step}" * bool(step))
        )
        self._check_launch(launch)
        # A signal held off by the switch, or a process killed at the CDN's write, leaves the next launch to others.
        if moment != "as it switches" and not (killed and step == "kvs"):
            self._check_promoted()
        if killed:
            self._process_ends(claim.token)

    @contextlib.contextmanager
    def _fault_at(self, fault):
        """While the block runs, ``fault`` = (step, kill, skip) is armed; yields a flag that says (after the block)
        whether it fired. An armed fault that was not reached is disarmed."""
        fired = Flag()
        if fault is None:
            yield fired
            return
        step, kill, skip = fault
        if step == "render":  # the renderer raises after page ``skip`` (its progress is advanced after each page)
            original = runner.HeartbeatProgress.advance
            pages = itertools.count()

            def advance(progress, done):
                if next(pages) == skip:
                    fired.set()
                    raise RenderError(f"the template exploded at page {done}")
                return original(progress, done)

            runner.HeartbeatProgress.advance = advance
            try:
                yield fired
            finally:
                runner.HeartbeatProgress.advance = original
            return
        destination.fail_next(step, skip=skip, kill=kill)
        try:
            yield fired
        finally:
            if destination.faults:
                destination.faults.clear()
            else:
                fired.set()

    def _stop_heartbeats(self):
        for progress in HEARTBEATS:
            progress.stop()
        HEARTBEATS.clear()

    @contextlib.contextmanager
    def _sigterm_at(self, moment):
        """While the block runs, SIGTERM comes right after the switch of the live pointer (``current``, or the
        recording destination's pointer) or as pruning starts."""
        if moment == "never":
            yield
            return
        name = {"as it switches": "switch_to", "as pruning starts": "prune"}[moment]
        owner = SiteRoot
        if self.destination == "recording":
            owner, name = RecordingDestination, {"switch_to": "_switch"}.get(name, name)
        original = getattr(owner, name)

        def with_sigterm(site, *args, **kwargs):
            if moment == "as pruning starts":
                sigterm_now()
            done = original(site, *args, **kwargs)
            if moment == "as it switches":
                sigterm_now()
            return done

        setattr(owner, name, with_sigterm)
        try:
            yield
        finally:
            setattr(owner, name, original)

    def _render_error(self, claim):
        """As ``runner.run`` when rendering raises: failed (fenced), reported, then promote the queued build."""
        before_row = row(claim.build_id)
        error = "ValueError: template exploded"
        ended = builds.finish(claim, state=S.FAILED, error=error)
        assert ended == holds(before_row, claim.token)
        if ended:
            builds.report_failure(claim.build_id, f"Build #{claim.build_id} failed: {error}")
            after = row(claim.build_id)
            assert after["state"] == S.FAILED and after["error"] == error and after["failure_reported_at"]
            note("render error")
        else:
            assert row(claim.build_id)["state"] == before_row["state"]
        before = self._launch_before()
        builds.launch_next()
        self._check_launch(before)
        self._check_promoted()

    def _sigterm(self, claim):
        """``runner.run`` on SIGTERM: record the outcome with ``builds.interrupted``; any launch is left to others."""
        before = row(claim.build_id)
        retries_before = BuildRequest.objects.filter(retry_of_id=claim.build_id).count()
        elapsed = (CLOCK.t - claim.launched_at).total_seconds()
        known = set(BuildRequest.objects.values_list("pk", flat=True))
        outcome = builds.interrupted(claim, timeout_seconds=BUILD_TIMEOUT)
        self._note_new_requests(known)
        after = row(claim.build_id)
        retries = BuildRequest.objects.filter(retry_of_id=claim.build_id).count() - retries_before
        if not holds(before, claim.token):  # ended elsewhere (cancelled, re-launched): nothing changes
            assert after["state"] == before["state"] and after["error"] == before["error"] and retries == 0
            note(f"sigterm after the build was {before['state']}")
            return
        if claim.manual:
            assert after["state"] == S.CANCELLED and outcome.kind == "cancelled" and retries == 0
            note("sigterm of a manual build: cancelled")
            return
        assert after["state"] == S.FAILED and after["error"]
        if abs(elapsed - BUILD_TIMEOUT) > 1:
            assert (outcome.kind == "timeout") == (elapsed > BUILD_TIMEOUT)
        if outcome.kind == "timeout":
            assert after["error"].startswith("Timed out") and retries == 0
        else:
            assert outcome.kind == "interrupted" and "Interrupted" in after["error"]
            # retried through the request path, unless BUILD_MAX_ATTEMPTS failures in a row: then reported
            assert retries == 1 or (retries == 0 and after["failure_reported_at"])
        note(
            f"sigterm: {outcome.kind}" + (", retries stopped" if outcome.kind == "interrupted" and not retries else "")
        )

    def _cancel_then_sigterm(self, claim):
        """An operator cancels (``cancelled`` written first, then the process is stopped): the cancel stays."""
        before = row(claim.build_id)
        launch = self._launch_before()
        outcome = builds.cancel(claim.build_id, by="ops")
        if before["state"] in OPEN_STATES:
            assert outcome.kind == "cancelled" and row(claim.build_id)["state"] == S.CANCELLED
            self._check_launch(launch)
            self._check_promoted()
        else:
            assert outcome.kind == "finished"
        self._sigterm(claim)
        assert row(claim.build_id)["state"] == (S.CANCELLED if before["state"] in OPEN_STATES else before["state"])

    # --- Everything else that happens: time, operators, the launcher, crashes -------------------------------------

    @rule(event=st.sampled_from(OUTSIDE_EVENTS), data=st.data())
    def outside_event(self, event, data):
        """Time passes; the launcher's next launch or status call will fail; a process that must not build claims;
        a web process dies with dispatches pending; ``requestbuild``; an
        operator cancels a build or builds by hand. (One rule, so that these stay rarer than the publish → dispatch
        → launch → claim → build flow.)"""
        if event == "crash web process" and not self.pending:
            event = "advance clock"
        if event == "launch will fail" and len(recording.failures["launch"]) >= 2:
            event = "advance clock"
        if event == "launcher status fails" and len(recording.failures["status"]) >= 2:
            event = "advance clock"
        if event == "advance clock":
            CLOCK.advance(data.draw(st.sampled_from([1, 5, 30, 61, 120, 301, 900, 1800]), label="seconds"))
        elif event == "launch will fail":
            kind = data.draw(st.sampled_from(["unavailable", "dyno_limit", "bad_key", "no_app"]), label="error")
            recording.fail_next(launch_error(kind))
        elif event == "launcher status fails":
            recording.fail_next(LaunchError("Heroku API timed out", retryable=True), on="status")
            note("launcher status will fail")
        elif event == "crash web process":
            self._crash_web_process(data)
        elif event == "requestbuild":
            self._request_build()
        elif event == "stray claim":
            self._stray_claim(data)
        elif event == "operator cancels":
            self._operator_cancel(data)
        elif event == "process clock skewed":
            PROCESS_CLOCK.skew = data.draw(st.sampled_from(SKEWS), label="process clock skew")
            note(f"process clock {PROCESS_CLOCK.skew.total_seconds() / 3600:+.0f} h")
        else:
            assert event == "build by hand"
            self._build_by_hand()

    def _crash_web_process(self, data):
        """A web process dies after commit, before its dispatch callbacks ran: the requests stay unattached."""
        lost = data.draw(
            st.lists(st.integers(0, len(self.pending) - 1), min_size=1, unique=True), label="dispatches lost"
        )
        for index in sorted(lost, reverse=True):
            request_id, _callback = self.pending.pop(index)
            self.dropped.add(request_id)
        note("web process crashed")

    def _request_build(self):
        """``requestbuild``: record a request in its own transaction and dispatch it at once."""
        known = set(BuildRequest.objects.values_list("pk", flat=True))
        before = self._launch_before()
        outcome = builds.request_build("requestbuild")
        assert len(self._note_new_requests(known)) == 1
        assert outcome.kind in ("launched", "launch_failed", "waiting", "attached", "queued"), outcome
        note("requestbuild")
        self._check_all_attached()
        self._check_launch(before)
        self._check_promoted()

    def _operator_cancel(self, data):
        """An operator cancels an open build (a stuck one, one whose process died, a queued one)."""
        open_builds = list(Build.objects.filter(state__in=OPEN_STATES).values_list("pk", flat=True))
        if not open_builds:
            return
        build_id = data.draw(st.sampled_from(open_builds), label="cancel build")
        before = self._launch_before()
        outcome = builds.cancel(build_id, by="ops")
        assert outcome.kind == "cancelled"
        after = row(build_id)
        assert after["state"] == S.CANCELLED and after["error"] == "Cancelled by ops"
        note("operator cancelled")
        self._check_launch(before)
        self._check_promoted()

    def _build_by_hand(self):
        """``buildstaticsite`` at a shell takes the active slot, or is told a build is active."""
        known = set(BuildRequest.objects.values_list("pk", flat=True))
        active = Build.objects.filter(state__in=ACTIVE_STATES).exists()
        claim = builds.start_manual(process=dict(MANUAL_PROCESS))
        new = self._note_new_requests(known)
        if active:
            assert claim is None and not new
            note("build by hand refused: a build is active")
            return
        assert isinstance(claim, builds.Claim) and claim.manual and len(new) == 1
        assert claim.token not in self.claimed_tokens
        self.claimed_tokens.add(claim.token)
        self.claimed.append((claim.build_id, claim.token))
        self.claims.append(claim)
        note("build by hand started")

    # --- Invariants -----------------------------------------------------------------------------------------------

    @invariant()
    def safety(self):
        Stats.steps += 1
        self._check_safety()

    def _check_safety(self):
        all_builds = {
            b["pk"]: b
            for b in Build.objects.values(
                "pk", "state", "launch_token", "manual", "handle", "started_at", "error", "failure_reported_at"
            )
        }
        active = [b for b in all_builds.values() if b["state"] in ACTIVE_STATES]
        queued = [b for b in all_builds.values() if b["state"] == S.QUEUED]
        assert len(active) <= 1, f"two active builds: {active}"
        assert len(queued) <= 1, f"two queued builds: {queued}"
        assert all(b["launch_token"] == "" for b in queued), "a queued build still carries a launch token"
        launches = {x["token"]: x for x in recording.launches}
        for build in active:
            assert build["launch_token"], "an active build without a launch token"
            if build["state"] == S.RUNNING:
                assert build["handle"], f"build #{build['pk']} is running with no handle: the sweep cannot judge it"
            if build["manual"]:
                continue
            launch = launches.get(build["launch_token"])
            assert launch and launch["build_id"] == build["pk"], "an active build whose token no launch carried"
            if build["state"] == S.LAUNCHED:
                assert build["handle"] == launch["handle"]
            if build["state"] == S.RUNNING:
                assert build["handle"] in (launch["handle"], self.own_handles.get(build["launch_token"]))

        requests = list(BuildRequest.objects.values("pk", "created_at", "build_id"))
        assert self.requests <= {r["pk"] for r in requests}, "a committed request vanished"
        retried = set(BuildRequest.objects.filter(retry_of__isnull=False).values_list("retry_of_id", flat=True))
        may_wait = {request_id for request_id, _callback in self.pending} | self.dropped
        for request in requests:
            if request["build_id"] is None:
                assert request["pk"] in may_wait, f"request #{request['pk']} is unattached with no dispatch coming"
                continue
            build = all_builds[request["build_id"]]
            if build["state"] in (S.RUNNING, S.SUCCEEDED):
                assert build["started_at"] >= request["created_at"], (
                    f"request #{request['pk']} ({request['created_at']}) is attached to build #{build['pk']} "
                    f"({build['state']}) that started reading content before it, at {build['started_at']}"
                )
            elif build["state"] in ENDED_STATES:
                assert build["error"], f"build #{build['pk']} ended {build['state']} with no error recorded"
                if build["state"] != S.CANCELLED:  # an operator's cancel needs no report
                    assert build["failure_reported_at"] or build["pk"] in retried, (
                        f"build #{build['pk']} ended {build['state']} ({build['error']}), leaving request "
                        f"#{request['pk']} uncovered, with neither a report nor a retry"
                    )

        pages = {
            p["slug"]: [p["title"], p["is_published"]] for p in Page.objects.values("slug", "title", "is_published")
        }
        assert pages == self.pages, "a content change was rolled back or altered"
        self._check_site()

    def _check_site(self):
        """The destination's invariants (issue 9): the pointer names a sealed, whole release, never an older one
        than it ever named; what the CDN serves is sealed and whole, and not newer than the pointer; every sealed
        release is whole (a prune removes the manifest first)."""
        live = self._live()
        if self.destination == "recording":
            if live is not None:
                assert destination.complete(live), f"the pointer names {live}, which is not sealed and whole"
            unwhole = [name for name in destination.manifests if not destination.complete(name)]
            assert not unwhole, f"sealed but not whole: {unwhole}"
            served = destination.served
            if served is not None:
                assert destination.complete(served), f"the CDN serves {served}, which is not sealed and whole"
                assert release_order(served) <= release_order(live), "the CDN serves a release newer than the pointer"
        else:
            site = SiteRoot(get_config().SITE_ROOT)
            if live is not None:
                assert (site.releases / live / "manifest.json").is_file(), f"current names {live}, not complete"
            for name in site.complete_releases():  # a build recycles the oldest: every other one stays whole
                folder = site.releases / name
                files = json.loads((folder / "manifest.json").read_text())["files"]
                on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
                assert on_disk - {"manifest.json", "release.json"} == set(files), f"{name} has other files"
                for path, entry in files.items():
                    data = (folder / path).read_bytes()
                    assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{name}/{path} was changed"
        if self.live_seen is not None:
            assert live is not None and release_order(live) >= release_order(self.live_seen), (
                f"the site moved back from {self.live_seen} to {live}"
            )
        self.live_seen = live if live is not None else self.live_seen

    # --- Liveness (issue 5) ---------------------------------------------------------------------------------------

    def _liveness(self):
        """Faults stop (no launch or status call fails, no process crashes, no web process dies): the web processes
        run the dispatches they hold, every live build process claims and succeeds, and otherwise the clock moves to
        the next deadline (grace, backoff, launch, start, heartbeat or build timeout) and a sweep pass runs. Within
        QUIESCENCE_STEPS steps nothing may be left open, and every request must have ended well. Then one more
        publish goes live through the real runner, showing exactly the live pages (issue 9)."""
        for armed in recording.failures.values():
            armed.clear()
        destination.faults.clear()
        while self.pending:
            _request_id, callback = self.pending.pop(0)
            before = self._launch_before()
            callback()
            self._check_all_attached()
            self._check_launch(before)
            self._check_promoted()
            self._check_safety()
        steps = self._drive_to_quiescence()
        Stats.quiescent += 1
        Stats.most_quiescence_steps = max(Stats.most_quiescence_steps, steps)
        self._a_later_build_completes()
        self._check_every_request_ended_well()

    def _drive_to_quiescence(self):
        """Live processes claim and run for real; otherwise the clock moves to the next deadline and a pass runs.
        Returns how many steps it took."""
        for steps in range(1, QUIESCENCE_STEPS + 1):  # noqa: B007 (how many it took is returned)
            claimable = self._claimable()
            if self.claims:
                claim = self.claims.pop(0)
                assert claim.token not in self.ran, "a build rendered twice for one claim"
                self.ran.add(claim.token)
                self._run_for_real(claim, "never")
            elif claimable:
                self._claim(claimable[0]["build_id"], claimable[0]["token"])
            elif self._quiescent():
                break
            else:
                self._advance_to_next_deadline()
                self._sweep_pass()
            self._check_safety()
        else:
            still_open = [row(pk) for pk in Build.objects.filter(state__in=OPEN_STATES).values_list("pk", flat=True)]
            unattached = list(BuildRequest.objects.filter(build__isnull=True).values("pk", "created_at"))
            raise AssertionError(
                f"not quiescent {QUIESCENCE_STEPS} steps after the faults stopped (clock {CLOCK.t:%Y-%m-%d %H:%M:%S}): "
                f"open builds {still_open}, unattached requests {unattached}"
            )
        return steps

    def _a_later_build_completes(self):
        """After whatever faults the example put into publishes: one more request builds for real, goes live, and
        the live release shows exactly the live pages."""
        known = set(BuildRequest.objects.values_list("pk", flat=True))
        builds.request_build("after the faults")
        (request_id,) = self._note_new_requests(known)
        self._check_safety()
        self._drive_to_quiescence()
        build = Build.objects.get(requests__pk=request_id)
        assert build.state == S.SUCCEEDED, f"the publish after the faults ended {build.state}: {build.error}"
        live = self._live()
        assert live == build.release, f"the publish after the faults is not live: {live}, not {build.release}"
        manifest = get_destination().manifest(live)
        slugs = {path.split("/")[0] for path in manifest.files if path.count("/") == 1 and path.endswith("/index.html")}
        assert slugs == {slug for slug, (_title, is_live) in self.pages.items() if is_live}, (
            "the site is not what is live"
        )
        if self.destination == "recording":
            assert destination.served == live and destination.complete(live)
        note("a later build went live" + (" after a faulty publish" if self.faulted else ""))

    def _quiescent(self):
        return (
            not Build.objects.filter(state__in=OPEN_STATES).exists()
            and not BuildRequest.objects.filter(build__isnull=True).exists()
        )

    def _advance_to_next_deadline(self):
        """Move the clock 1 s past the next moment at which a pass has something to do (or a minute, the schedule's
        interval, when no deadline lies ahead)."""
        config = get_config()
        deadlines = [
            created + timedelta(seconds=the_sweep.UNATTACHED_GRACE)
            for created in BuildRequest.objects.filter(build__isnull=True).values_list("created_at", flat=True)
        ]
        for build in Build.objects.filter(state__in=OPEN_STATES).values(
            "state", "launched_at", "heartbeat_at", "next_attempt_at"
        ):
            launched, state = build["launched_at"], build["state"]
            if state == S.QUEUED:
                deadlines.append(build["next_attempt_at"])
            elif state == S.LAUNCHING:
                deadlines.append(launched + timedelta(seconds=config.BUILD_LAUNCH_TIMEOUT))
            elif state == S.LAUNCHED:
                deadlines += [launched + timedelta(seconds=n * config.BUILD_START_TIMEOUT) for n in (1, 2)]
            else:
                deadlines.append(build["heartbeat_at"] + timedelta(seconds=config.BUILD_LOST_AFTER))
                deadlines.append(launched + timedelta(seconds=config.BUILD_TIMEOUT))
        ahead = [d for d in deadlines if d is not None and d >= CLOCK.t]
        if ahead:
            CLOCK.advance_to(min(ahead) + timedelta(seconds=1))
        else:
            CLOCK.advance(60)

    def _check_every_request_ended_well(self):
        """Every request is attached to a build that succeeded after it committed, or whose failure was reported, or
        that an operator cancelled (or a person stopped at the shell), or that was retried by a request which itself
        ended well (``BuildRequest.retry_of``)."""
        all_builds = {
            b["pk"]: b for b in Build.objects.values("pk", "state", "started_at", "error", "failure_reported_at")
        }
        requests = {r["pk"]: r for r in BuildRequest.objects.values("pk", "created_at", "build_id")}
        retries = {}
        for pk, retry_of in BuildRequest.objects.filter(retry_of__isnull=False).values_list("pk", "retry_of_id"):
            retries.setdefault(retry_of, []).append(pk)

        def story(request_id, seen):
            """(ended well, how) for one request, following retries."""
            request = requests[request_id]
            build = all_builds[request["build_id"]]
            how = f"request #{request_id} → build #{build['pk']} {build['state']}"
            if build["state"] == S.SUCCEEDED:
                return build["started_at"] >= request["created_at"], how
            if build["state"] == S.CANCELLED:
                return build["error"] in ("Cancelled by ops", "Stopped at the shell"), f"{how} ({build['error']})"
            assert build["state"] in (S.FAILED, S.LOST), f"{how}: still open after quiescence"
            if build["failure_reported_at"]:
                return True, f"{how}, reported"
            told = [f"{how} ({build['error']}), not reported"]
            for retry in retries.get(build["pk"], []):
                if retry in seen:
                    continue
                ok, then = story(retry, seen | {retry})
                told.append(f"retried by {then}")
                if ok:
                    return True, ", ".join(told)
            if len(told) == 1:
                told.append("never retried")
            return False, ", ".join(told)

        for request_id in sorted(requests):
            ok, how = story(request_id, {request_id})
            assert ok, f"once faults stopped, a request did not end well: {how}"


@pytest.fixture
def machine_world(settings, monkeypatch, tmp_path):
    """The settings, clocks and patches every BuildMachine runs under."""
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "BUILD_TIMEOUT": BUILD_TIMEOUT,
        "BUILD_MAX_ATTEMPTS": MAX_ATTEMPTS,
        "SITE_ROOT": tmp_path / "site",  # where the builds that run for real write
        # Two: from the third local build on, a build takes the folder of the release its prune would delete.
        "SITE_RELEASES_KEPT": 2,
    }
    # The database's clock is CLOCK, read by the real builds.now(); each process's own clock is skewed from it.
    monkeypatch.setattr(builds, "_CLOCK_SQL", DatabaseClock())
    monkeypatch.setattr(timezone, "now", PROCESS_CLOCK)
    # The recording launcher describes a claiming process like the real launchers do (issue 8, defect 4).
    monkeypatch.setattr(recording.RecordingLauncher, "this_process", this_process)
    # Every heartbeat started, so that a build process killed mid-build can have its thread stopped (issue 9).
    start = runner.HeartbeatProgress.start

    def start_and_keep(progress, total):
        HEARTBEATS.append(progress)
        return start(progress, total)

    monkeypatch.setattr(runner.HeartbeatProgress, "start", start_and_keep)
    # Every sweep pass reconciles what the CDN serves with the pointer (not once per 5 minutes of this process).
    monkeypatch.setattr(the_sweep, "RECONCILE_EVERY", 0)


@pytest.mark.django_db
@pytest.mark.postgres
def test_the_build_state_machine_keeps_its_invariants(machine_world, capsys, monkeypatch):
    seed = int(os.environ.get("HYPOTHESIS_SEED") or secrets.randbelow(2**32))
    with capsys.disabled():
        print(f"\nhypothesis seed: {seed} (replay with HYPOTHESIS_SEED={seed})", file=sys.stderr)

    @hypothesis.seed(seed)
    def machine():
        return BuildMachine()

    # Shrinking a failure must end well inside pytest-timeout's 300 s, so that the minimal sequence gets printed.
    monkeypatch.setattr(hypothesis.internal.conjecture.engine, "MAX_SHRINKING_SECONDS", 120, raising=False)
    Stats.examples = Stats.steps = Stats.quiescent = Stats.most_quiescence_steps = Stats.faults = 0
    Stats.events.clear()
    started = time.monotonic()
    run_state_machine_as_test(
        machine,
        settings=hypothesis.settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            print_blob=False,
            phases=PHASES,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        ),
    )
    # The invariant also runs once before the first step of each example, and after its initialize rule.
    steps = Stats.steps - 2 * Stats.examples
    with capsys.disabled():
        print(
            f"build state machine: {Stats.examples} examples, {steps} steps in {time.monotonic() - started:.1f}s "
            f"on {connection.vendor} (seed {seed}); liveness checked in {Stats.quiescent} examples, quiescent "
            f"within {Stats.most_quiescence_steps} steps",
            file=sys.stderr,
        )
        print("  " + ", ".join(f"{name}: {count}" for name, count in sorted(Stats.events.items())), file=sys.stderr)
    if EXAMPLES * STEPS >= MIN_STEPS_PER_RUN:
        assert steps >= MIN_STEPS_PER_RUN
    assert Stats.quiescent >= Stats.examples // 2, "the liveness check ran in too few examples"


# Every fault the recording destination can meet, as an error and as the process killed there ("render" is an error
# only; right after the pointer write, only a death can come between the write and the recorded success).
FAULT_CASES = [
    (step, kill)
    for step in dict.fromkeys(f for f in PUBLISH_FAULTS if f)
    for kill in (False, True)
    if not (step == "render" and kill) and not (step == "after switch" and not kill)
]


@pytest.mark.django_db
@pytest.mark.parametrize(("step", "kill"), FAULT_CASES, ids=[f"{s}-{'kill' if k else 'error'}" for s, k in FAULT_CASES])
def test_a_fault_at_each_step_of_a_publish(machine_world, step, kill):
    """The machine's own steps, in a fixed order, once per fault: a first release goes live; then an edit (so that
    the next release uploads one page and copies the rest) is built for real and meets the fault; the invariants
    hold after every step; then the faults stop, the clock and the sweep judge a killed build, and a later build
    goes live showing exactly the live pages (the machine's liveness check at its teardown)."""
    Stats.events.clear()
    machine = BuildMachine()
    try:
        machine.choose_destination("recording")
        for ops in ([("new", 0), ("new", 1)], [("new", 2)]):  # two releases: the next prune removes the first
            machine.publish(ops)
            _dispatch_claim_and_run(machine, fault=None)
            machine._check_safety()
        assert len(destination.manifests) == 2, "two releases went live"
        machine.publish([("edit", 0)])
        skip = {"add": 3, "upload": 0, "copy": 1, "render": 1, "prune": 1}.get(step, 0)
        _dispatch_claim_and_run(machine, fault=(step, kill, skip))
        machine._check_safety()
        assert Stats.events[f"fault at {step}"] == 1, f"the fault at {step} did not fire: {dict(Stats.events)}"
    except BaseException:
        machine._liveness = lambda: None  # the failure above is the one to see
        raise
    finally:
        machine.teardown()
    assert Stats.events["a later build went live after a faulty publish"] == 1


def _dispatch_claim_and_run(machine, *, fault):
    _request_id, callback = machine.pending.pop()
    callback()
    launch = recording.launches[-1]
    machine._claim(launch["build_id"], launch["token"])
    claim = machine.claims.pop()
    machine.ran.add(claim.token)
    machine._run_for_real(claim, "never", fault)


@pytest.mark.django_db
def test_a_build_that_times_out_on_sigterm_is_reported(settings, monkeypatch, django_capture_on_commit_callbacks):
    """The minimal sequence the state machine found: publish → dispatch → claim → SIGTERM past BUILD_TIMEOUT."""
    from django.core import mail

    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_TIMEOUT": BUILD_TIMEOUT}
    CLOCK.reset()
    monkeypatch.setattr(builds, "now", CLOCK)
    with django_capture_on_commit_callbacks(execute=True):
        Page(slug="alpha", title="Alpha").publish()
    (launch,) = recording.launches
    claim = builds.claim(launch["build_id"], launch["token"])
    assert isinstance(claim, builds.Claim)
    CLOCK.advance(BUILD_TIMEOUT + 5)
    assert builds.interrupted(claim, timeout_seconds=BUILD_TIMEOUT).kind == "timeout"
    build = Build.objects.get(pk=claim.build_id)
    assert build.state == S.FAILED and build.error.startswith("Timed out")
    assert not BuildRequest.objects.filter(retry_of=build).exists()  # a timeout is not retried: so it must be reported
    assert build.failure_reported_at is not None
    assert any("Requests it leaves uncovered" in m.body for m in mail.outbox)


@pytest.mark.django_db
def test_a_build_by_hand_takes_over_the_queued_build_so_every_later_publish_goes_live(
    site_root, clock, django_capture_on_commit_callbacks
):
    """Found by the property test (issue 9): a build by hand used to insert a new row with a higher id while an older
    build waited queued; that one claimed later, read newer content, and could never go live ("kept: a newer release
    is live"). Now the build by hand takes over the queued build, so builds claim in the order of their ids."""
    recording.fail_next(launch_error("unavailable"))
    with django_capture_on_commit_callbacks(execute=True):
        Page(slug="alpha", title="Alpha").publish()  # its launch fails: build #1 waits queued, with a backoff
    queued = Build.objects.get(state=S.QUEUED)
    by_hand = builds.start_manual(process=dict(MANUAL_PROCESS))
    assert by_hand.build_id == queued.pk and not Build.objects.filter(state=S.QUEUED).exists()
    assert runner.run(by_hand).exit_code == 0  # alpha's request is covered by the build by hand
    assert Build.objects.get(pk=queued.pk).state == S.SUCCEEDED
    with django_capture_on_commit_callbacks(execute=True):
        Page(slug="beta", title="Beta").publish()  # after the build by hand read content: a new build
    clock.advance(3600)
    builds.launch_next()
    launch = recording.launches[-1]
    assert launch["build_id"] > queued.pk
    result = runner.run(builds.claim(launch["build_id"], launch["token"]))
    later = Build.objects.get(pk=launch["build_id"])
    assert later.state == S.SUCCEEDED, result
    assert SiteRoot(site_root).live_name() == later.release, f"beta is not on the site: {result.message}"
