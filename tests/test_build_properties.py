"""A stateful property test of the build state machine (DESIGN §3, issue 4).

Hypothesis drives a ``RuleBasedStateMachine`` through publishes, after-commit dispatches, launches that succeed, fail
or die half way, claims (fresh, duplicate, orphan), heartbeats, finishes, the three kinds of SIGTERM, operator
cancels, the sweep's re-queue, a moving clock and processes that crash between any two steps. After every step it
checks the safety invariants of DESIGN §3.

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
import os
import secrets
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import hypothesis
import hypothesis.internal.conjecture.engine
import pytest
from django.db import connection, transaction
from django.db.models import Q
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from publisher import builds
from publisher.conf import get_config
from publisher.launchers import LaunchError, recording
from publisher.models import ACTIVE_STATES, Build, BuildRequest, BuildState, Page

S = BuildState
OPEN_STATES = (S.QUEUED, *ACTIVE_STATES)
ENDED_STATES = (S.FAILED, S.LOST, S.CANCELLED)

# Content changes of one user action; "view fails" raises inside the transaction.
CONTENT_OPS = ["new", "new", "new", "edit", "edit", "unpublish", "republish", "delete", "edit_draft", "view fails"]
# One step of a live build process (weighted by repetition).
PROCESS_STEPS = [
    "heartbeat",
    "heartbeat",
    "succeed",
    "succeed",
    "succeed",
    "render error",
    "sigterm",
    "sigterm after the timeout",
    "sigterm after a cancel",
    "crash",
]

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
    "requestbuild",
    "operator cancels",
    "build by hand",
]

EXAMPLES = int(os.environ.get("BUILD_PROPERTY_EXAMPLES", 50))
STEPS = int(os.environ.get("BUILD_PROPERTY_STEPS", 50))
MIN_STEPS_PER_RUN = 1_000

# Shrinking finds the shortest failing sequence; the explain phase traces every line (slow before Python 3.12).
PHASES = [hypothesis.Phase.generate] + (
    [hypothesis.Phase.shrink] if os.environ.get("BUILD_PROPERTY_SHRINK", "1") != "0" else []
)

BUILD_TIMEOUT = 3_600
MAX_ATTEMPTS = 3
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


class ProcessDied(Exception):
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
        self.pending = []  # (request id, dispatch callback) that a commit handed to this web process
        self.dropped = set()  # request ids whose dispatch a crash lost: the next dispatch must pick them up
        self.requests = set()  # every committed request id
        self.claims = []  # claims held by live build processes
        self.claimed_tokens = set()  # every token that ever got a Claim
        self.claimed = []  # (build id, token) of every Claim, for duplicate deliveries
        self.dead = []  # claims whose process crashed: their builds stay as they are in the database
        self.ran = set()  # tokens whose process rendered (at most once each)
        self.pages = {}  # slug -> [title, live]
        self.next_page = 0

    def teardown(self):
        recording.reset()
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
            if alerted_before or not error.needs_operator:  # reported at once, and only once per build
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
        pool = drafts if op in ("republish", "edit_draft") else live
        if not pool:
            return False
        slug = pool[n % len(pool)]
        page = Page.objects.get(slug=slug)
        if op in ("edit", "edit_draft"):
            page.title = f"{slug} v{n}" if page.title != f"{slug} v{n}" else f"{slug} w{n}"
            page.save()
            self.pages[slug][0] = page.title
            return op == "edit"
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
        process dies right after the launcher call, before it records the handle."""
        index = data.draw(st.integers(0, len(self.pending) - 1), label="pending dispatch")
        dies = data.draw(st.sampled_from([False] * 5 + [True]), label="dies after the launcher call")
        _request_id, callback = self.pending.pop(index)
        before = self._launch_before()
        with self._dying_after_the_launcher_call(dies) as died:
            callback()
        self._check_all_attached()
        self._check_launch(before, died=died)
        if not died:
            self._check_promoted()

    # --- Launch ---------------------------------------------------------------------------------------------------

    def _launch_next(self, *, dies=False):
        """Promote and launch the queued build if it is due. ``dies``: the process dies between the launcher call
        and recording the handle, so the build stays ``launching`` and its child may still claim it."""
        before = self._launch_before()
        with self._dying_after_the_launcher_call(dies) as died:
            builds.launch_next()
        self._check_launch(before, died=died)
        if not died:
            self._check_promoted()

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

    def _stuck(self):
        """Builds the sweep re-queues: ``launching`` past BUILD_LAUNCH_TIMEOUT, ``launched`` past
        BUILD_START_TIMEOUT (the launcher says the process is gone, or it still has not started)."""
        config = get_config()
        at = CLOCK.t
        return list(
            Build.objects.filter(manual=False)
            .filter(
                Q(state=S.LAUNCHING, launched_at__lt=at - timedelta(seconds=config.BUILD_LAUNCH_TIMEOUT))
                | Q(state=S.LAUNCHED, launched_at__lt=at - timedelta(seconds=config.BUILD_START_TIMEOUT))
            )
            .values_list("pk", flat=True)
        )

    def _gone(self):
        """Running builds whose process crashed, silent for BUILD_LOST_AFTER: the launcher says "gone"."""
        silent_since = CLOCK.t - timedelta(seconds=get_config().BUILD_LOST_AFTER)
        return [
            c
            for c in self.dead
            if Build.objects.filter(
                pk=c.build_id, state=S.RUNNING, launch_token=c.token, heartbeat_at__lt=silent_since
            ).exists()
        ]

    def _sweep_has_work(self):
        if self.dropped or self._stuck() or self._gone():
            return True
        if Build.objects.filter(state__in=ACTIVE_STATES).exists():
            return False
        return Build.objects.filter(state=S.QUEUED, next_attempt_at__lte=CLOCK.t).exists()

    @precondition(lambda self: self._sweep_has_work())
    @rule(data=st.data())
    def sweep(self, data):
        """What the sweep does: attach requests whose dispatch a crash lost; re-queue a build stuck in ``launching``
        or ``launched`` and never started (the same row, ``attempt + 1``); end a running build whose process is gone
        (``lost``, retried, where ``builds.mark_lost`` exists; otherwise an operator cancels it); launch a queued
        build that is due."""
        stuck, gone = self._stuck(), self._gone()
        kinds = (["attach lost requests"] if self.dropped else []) + (["re-queue a stuck build"] if stuck else [])
        kinds += ["process gone"] if gone else []
        kind = data.draw(st.sampled_from(kinds), label="sweep") if kinds else None
        if kind == "re-queue a stuck build":
            self._requeue(row(data.draw(st.sampled_from(stuck), label="stuck build")))
        elif kind == "process gone":
            self._lost(data.draw(st.sampled_from(gone), label="gone"))
        elif kind == "attach lost requests":
            ids = sorted(self.dropped)
            builds.attach_requests(ids)
            assert not BuildRequest.objects.filter(pk__in=ids, build__isnull=True).exists()
            self.dropped.clear()
            note("sweep attached lost requests")
        self._launch_next(dies=data.draw(st.sampled_from([False] * 5 + [True]), label="dies after the launcher call"))

    def _lost(self, claim):
        mark_lost = getattr(builds, "mark_lost", None)
        if mark_lost is None or claim.manual:
            assert builds.cancel(claim.build_id, by="ops").kind == "cancelled"
            note("operator cancelled a build whose process died")
            return
        known = set(BuildRequest.objects.values_list("pk", flat=True))
        assert mark_lost(claim.build_id, token=claim.token, reason="No heartbeat and the process is gone")
        self._note_new_requests(known)
        after = row(claim.build_id)
        retried = BuildRequest.objects.filter(retry_of_id=claim.build_id).exists()
        assert after["state"] == S.LOST and after["error"] and (retried or after["failure_reported_at"])
        note("sweep marked a build lost" + ("" if retried else ", retries stopped"))

    def _requeue(self, build):
        requests = set(BuildRequest.objects.filter(build_id=build["pk"]).values_list("pk", flat=True))
        assert builds.requeue(
            build["pk"], token=build["launch_token"], error="Launched, but it never started", expected=(build["state"],)
        )
        after = row(build["pk"])
        if after["state"] == S.QUEUED:
            assert after["attempt"] == build["attempt"] + 1 and after["launch_token"] == "" and after["error"]
            assert set(BuildRequest.objects.filter(build_id=build["pk"]).values_list("pk", flat=True)) == requests
            note(f"sweep re-queued a {build['state']} build")
        else:  # another build was queued meanwhile: this one ended and handed its requests over
            assert after["state"] == S.FAILED and "moved" in after["error"]
            queued = Build.objects.get(state=S.QUEUED)
            assert requests <= set(queued.requests.values_list("pk", flat=True))
            note("sweep re-queue handed requests to the queued build")

    # --- Build processes ------------------------------------------------------------------------------------------

    def _claimable(self):
        """Recorded launches whose build still waits for exactly that process (``launching``/``launched``)."""
        waiting = dict(Build.objects.filter(state__in=(S.LAUNCHING, S.LAUNCHED)).values_list("pk", "launch_token"))
        return [x for x in recording.launches if waiting.get(x["build_id"]) == x["token"]]

    @precondition(lambda self: self._claimable())
    @rule(data=st.data())
    def claim(self, data):
        """The process of a launch that its build still waits for starts and claims with its id and token. Now and
        then an orphan of an earlier attempt (an old token) tries the same build first, or the platform starts the
        same process twice right after: both are refused."""
        launch = data.draw(st.sampled_from(self._claimable()), label="launch")
        race = data.draw(st.sampled_from(["none", "none", "orphan first", "duplicate after"]), label="race")
        if race == "orphan first":
            self._claim(launch["build_id"], "token-of-an-earlier-attempt", must_refuse=True)
            note("stray claim refused: orphan racing the launched process")
        self._claim(launch["build_id"], launch["token"])
        if race == "duplicate after":
            self._claim(launch["build_id"], launch["token"], must_refuse=True)
            note("stray claim refused: duplicate start")

    def _stray_claim(self, data):
        """A process that must not build claims: a duplicate start of a claimed one, an orphan whose build was
        re-queued or cancelled meanwhile, or one with a forged token."""
        claimable = self._claimable()
        stale = [x for x in recording.launches if x["token"] not in self.claimed_tokens and x not in claimable]
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
            self.dead.append(claim)
            note("build process crashed")
            return
        assert claim.token not in self.ran, "a build rendered twice for one claim"
        self.ran.add(claim.token)
        if step == "succeed":
            self._succeed(claim)
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

    def _succeed(self, claim):
        """As ``runner.run`` without the files: the fencing check before the switch, succeeded, then promote."""
        expect = holds(row(claim.build_id), claim.token)
        if not builds.heartbeat(claim, done=len(self.pages), total=len(self.pages), moved=True):
            assert not expect  # fenced: stops without switching the site, and promotes nothing
            note("fenced before the switch")
            return
        assert expect
        assert builds.finish(claim, state=S.SUCCEEDED, release=f"r-b{claim.build_id}-a{claim.attempt}", pages=1)
        assert row(claim.build_id)["state"] == S.SUCCEEDED
        note("manual build succeeded" if claim.manual else "succeeded")
        before = self._launch_before()
        builds.launch_next()
        self._check_launch(before)
        self._check_promoted()

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
        """Time passes; the launcher's next call will fail; a process that must not build claims; a web process
        dies with dispatches pending; ``requestbuild``; an operator cancels a build or builds by hand. (One rule,
        so that these stay rarer than the publish → dispatch → launch → claim → build flow.)"""
        if event == "crash web process" and not self.pending:
            event = "advance clock"
        if event == "launch will fail" and len(recording.failures["launch"]) >= 2:
            event = "advance clock"
        if event == "advance clock":
            CLOCK.advance(data.draw(st.sampled_from([1, 5, 30, 61, 120, 301, 900, 1800]), label="seconds"))
        elif event == "launch will fail":
            kind = data.draw(st.sampled_from(["unavailable", "dyno_limit", "bad_key", "no_app"]), label="error")
            recording.fail_next(launch_error(kind))
        elif event == "crash web process":
            self._crash_web_process(data)
        elif event == "requestbuild":
            self._request_build()
        elif event == "stray claim":
            self._stray_claim(data)
        elif event == "operator cancels":
            self._operator_cancel(data)
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
            if build["manual"]:
                continue
            launch = launches.get(build["launch_token"])
            assert launch and launch["build_id"] == build["pk"], "an active build whose token no launch carried"
            if build["state"] == S.LAUNCHED:
                assert build["handle"] == launch["handle"]

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


@pytest.mark.django_db
@pytest.mark.postgres
def test_the_build_state_machine_keeps_its_invariants(settings, monkeypatch, capsys):
    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_TIMEOUT": BUILD_TIMEOUT, "BUILD_MAX_ATTEMPTS": MAX_ATTEMPTS}
    monkeypatch.setattr(builds, "now", CLOCK)
    seed = int(os.environ.get("HYPOTHESIS_SEED") or secrets.randbelow(2**32))
    with capsys.disabled():
        print(f"\nhypothesis seed: {seed} (replay with HYPOTHESIS_SEED={seed})", file=sys.stderr)

    @hypothesis.seed(seed)
    def machine():
        return BuildMachine()

    # Shrinking a failure must end well inside pytest-timeout's 300 s, so that the minimal sequence gets printed.
    monkeypatch.setattr(hypothesis.internal.conjecture.engine, "MAX_SHRINKING_SECONDS", 120, raising=False)
    Stats.examples = Stats.steps = 0
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
    steps = Stats.steps - Stats.examples  # the invariant also runs once before the first step of each example
    with capsys.disabled():
        print(
            f"build state machine: {Stats.examples} examples, {steps} steps in {time.monotonic() - started:.1f}s "
            f"on {connection.vendor} (seed {seed})",
            file=sys.stderr,
        )
        print("  " + ", ".join(f"{name}: {count}" for name, count in sorted(Stats.events.items())), file=sys.stderr)
    if EXAMPLES * STEPS >= MIN_STEPS_PER_RUN:
        assert steps >= MIN_STEPS_PER_RUN


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
