"""A cancel returns at once (issue 10): ``cancelled`` is written in the operator's request; stopping the process and
launching the queued build happen after the commit in a background thread (``publisher.deferred``), and the sweep
finishes a stop that never happened.

With the recording launcher (it answers from memory) the second step runs inside ``cancel``, so most tests read
its effects at once; ``recording.slow_stops()`` makes ``stop`` block like a platform's API, and the work then goes
to a real thread (those tests use a transactional database, so the thread sees what the test committed).
"""

import threading
import time

import pytest
from django.db import connections, transaction

from publisher import builds, deferred, sweep
from publisher.launchers import LaunchError, recording
from publisher.models import Build, BuildState
from publisher.signals import build_finished

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
S = BuildState


def running():
    builds.request_build("published")
    launch = recording.launches[-1]
    return builds.claim(launch["build_id"], launch["token"])


@pytest.fixture
def finished():
    """The ``build_finished`` signals sent during the test: (build id, state, outcome kind, stopped_at, stop_error)."""
    received = []

    def receiver(sender, build, outcome, **kwargs):
        received.append((build.pk, build.state, outcome.kind, build.stopped_at is not None, build.stop_error))

    build_finished.connect(receiver, dispatch_uid="test-cancel")
    yield received
    build_finished.disconnect(dispatch_uid="test-cancel")


@pytest.fixture
def threads():
    """Deferred work runs in threads in this test; they are waited for before the database is flushed."""
    yield
    recording.reset()  # lets a blocked stop go
    assert deferred.wait(timeout=30), "a deferred thread did not end"


def test_cancelling_a_running_build_says_who_and_stops_its_process_then_launches_the_queued_build(finished):
    claim = running()
    queued = builds.request_build("published during the build").build_id
    outcome = builds.cancel(claim.build_id, by="ops")
    assert outcome.kind == "cancelled" and outcome.ok
    assert str(outcome) == f"Build #{claim.build_id} cancelled; its process is being stopped."
    build = Build.objects.get(pk=claim.build_id)
    assert build.state == S.CANCELLED and build.cancelled_by == "ops" and build.error == "Cancelled by ops"
    assert build.stop_requested_at == build.finished_at and build.stopped_at >= build.stop_requested_at
    assert build.stop_error == "" and recording.stops == [build.handle]
    assert Build.objects.get(pk=queued).state == S.LAUNCHED, "the queued build was launched"
    assert finished == [(claim.build_id, S.CANCELLED, "cancelled", True, "")]


def test_cancelling_a_queued_build_stops_nothing(finished):
    running()
    queued = builds.request_build("published during the build").build_id
    assert str(builds.cancel(queued, by="ops")) == f"Build #{queued} cancelled."
    build = Build.objects.get(pk=queued)
    assert build.state == S.CANCELLED and build.cancelled_by == "ops"
    assert build.stop_requested_at is None and build.stopped_at is None and recording.stops == []
    assert finished == [(queued, S.CANCELLED, "cancelled", False, "")]


def test_a_stop_that_fails_is_recorded_in_words_and_the_sweep_leaves_it(clock, finished):
    claim = running()
    recording.fail_next(LaunchError("Heroku did not answer in time (ReadTimeout)"), on="stop")
    builds.cancel(claim.build_id, by="ops")
    build = Build.objects.get(pk=claim.build_id)
    assert build.stopped_at is None
    assert build.stop_error == "its process could not be stopped: Heroku did not answer in time (ReadTimeout)"
    assert finished == [(claim.build_id, S.CANCELLED, "cancelled", False, build.stop_error)]
    clock.advance(sweep.CANCEL_GRACE + 1)
    sweep.sweep()
    assert recording.stops == [] and Build.objects.get(pk=claim.build_id).stop_error == build.stop_error
    assert len(finished) == 1


def test_a_cancel_whose_second_step_never_ran_is_finished_by_the_sweep(clock, monkeypatch, finished):
    """The web process that cancelled died before its thread stopped the process: the sweep stops it, after a grace
    that leaves the thread time to do it, and launches the queued build."""
    claim = running()
    queued = builds.request_build("published during the build").build_id
    with monkeypatch.context() as patched:
        patched.setattr(deferred, "defer", lambda fn, *args, **kwargs: None)  # the process died: the work is lost
        builds.cancel(claim.build_id, by="ops")
    assert recording.stops == [] and Build.objects.get(pk=queued).state == S.QUEUED
    clock.advance(sweep.CANCEL_GRACE)
    sweep.sweep()
    assert recording.stops == [] and finished == [], "within the grace the canceller's thread may still be at it"
    clock.advance(1)
    done = sweep.sweep()
    build = Build.objects.get(pk=claim.build_id)
    assert recording.stops == [build.handle] and build.stopped_at == clock.now
    assert f"Build #{claim.build_id}: the stop its cancel asked for had not happened: its process was stopped" in (
        str(done)
    )
    assert Build.objects.get(pk=queued).state == S.LAUNCHED
    assert finished == [(claim.build_id, S.CANCELLED, "cancelled", True, "")]
    clock.advance(60)
    sweep.sweep()
    assert len(recording.stops) == 1 and len(finished) == 1, "finished once"


def test_the_canceller_and_the_sweep_record_the_stop_once(monkeypatch, finished):
    claim = running()
    with monkeypatch.context() as patched:
        patched.setattr(deferred, "defer", lambda fn, *args, **kwargs: None)
        builds.cancel(claim.build_id, by="ops")
    original = recording.RecordingLauncher.stop

    def stop_while_the_sweep_stops_too(self, handle):
        original(self, handle)
        if len(recording.stops) == 1:
            assert builds.stop_cancelled(claim.build_id) is not None  # the other one records it first

    monkeypatch.setattr(recording.RecordingLauncher, "stop", stop_while_the_sweep_stops_too)
    assert builds.stop_cancelled(claim.build_id) is None
    assert len(recording.stops) == 2 and len(finished) == 1


def test_cancelling_a_build_that_is_launching_stops_nothing_and_its_process_is_refused(monkeypatch):
    """Cancelled while the launcher call is under way: no handle yet; the process it started cannot claim."""
    builds.record_request("published", dispatch_after_commit=False)
    builds.attach_requests()
    queued = Build.objects.get()
    real_launch = recording.RecordingLauncher.launch

    def cancel_during_the_call(self, **kwargs):
        assert builds.cancel(queued.pk, by="ops").kind == "cancelled"
        return real_launch(self, **kwargs)

    monkeypatch.setattr(recording.RecordingLauncher, "launch", cancel_during_the_call)
    builds.launch(queued.pk)
    build = Build.objects.get(pk=queued.pk)
    assert build.state == S.CANCELLED and build.stop_requested_at and build.stopped_at and recording.stops == []
    launch = recording.launches[-1]
    assert build.handle == launch["handle"], "the launching process kept the handle for the record"
    assert builds.claim(launch["build_id"], launch["token"]).kind == "claim_refused"


def test_cancelling_an_ended_or_unknown_build(finished):
    claim = running()
    builds.finish(claim, state=S.SUCCEEDED)
    finished.clear()
    outcome = builds.cancel(claim.build_id, by="ops")
    assert outcome.kind == "finished" and not outcome.ok and "had already ended (succeeded)" in str(outcome)
    assert builds.cancel(9999).kind == "unknown"
    assert Build.objects.get(pk=claim.build_id).cancelled_by == "" and finished == []


# --- In a real thread -------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_cancel_returns_while_the_launchers_stop_is_slow(threads, finished):
    claim = running()
    queued = builds.request_build("published during the build").build_id
    gate = recording.slow_stops()
    started = time.monotonic()
    outcome = builds.cancel(claim.build_id, by="ops")
    took = time.monotonic() - started
    assert outcome.kind == "cancelled" and took < 1.0, f"the cancel waited {took:.1f}s"
    build = Build.objects.get(pk=claim.build_id)
    assert build.state == S.CANCELLED and build.stop_requested_at and build.stopped_at is None
    assert Build.objects.get(pk=queued).state == S.QUEUED, "the next launch waits for the stop, off the request"
    assert recording.stops == [] and len(recording.launches) == 1
    gate.set()
    assert deferred.wait(timeout=10)
    build.refresh_from_db()
    assert build.stopped_at and recording.stops == [build.handle]
    assert Build.objects.get(pk=queued).state == S.LAUNCHED
    assert finished == [(claim.build_id, S.CANCELLED, "cancelled", True, "")]


@pytest.mark.django_db(transaction=True)
def test_the_second_step_starts_only_after_the_cancel_commits(threads):
    claim = running()
    recording.slow_stops().set()  # stops do not block, but the work goes to a thread as with a real launcher
    with transaction.atomic():
        builds.cancel(claim.build_id, by="ops")
        assert deferred.wait(timeout=0) and recording.stops == [], "nothing starts before the commit"
    assert deferred.wait(timeout=10)
    assert recording.stops == [Build.objects.get(pk=claim.build_id).handle]


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_cancel_starts_nothing(threads):
    claim = running()
    recording.slow_stops().set()
    with pytest.raises(RuntimeError), transaction.atomic():
        builds.cancel(claim.build_id, by="ops")
        raise RuntimeError("the view failed")
    assert deferred.wait(timeout=10) and recording.stops == []
    assert Build.objects.get(pk=claim.build_id).state == S.RUNNING


@pytest.mark.django_db(transaction=True)
def test_a_deferred_thread_closes_its_connection_and_logs_its_error(threads, caplog):
    seen = {}

    def work(value):
        seen["connection"] = connections["default"]
        seen["rows"] = Build.objects.count()
        seen["thread"] = threading.current_thread()
        raise ValueError(value)

    deferred.defer(work, "exploded")  # outside a transaction: started at once
    assert deferred.wait(timeout=10)
    assert seen["rows"] == 0 and seen["thread"] is not threading.current_thread() and seen["thread"].daemon
    assert seen["connection"].connection is None, "the thread's connection was left open"
    assert "Deferred work('exploded',) failed" in caplog.text and "ValueError: exploded" in caplog.text
    assert "Traceback" in caplog.text


def test_inline_work_runs_in_the_caller_even_inside_a_transaction():
    ran = []
    with transaction.atomic():
        deferred.defer(ran.append, threading.current_thread(), inline=True)
        assert ran == [threading.current_thread()]
