"""The build state machine: requests, coalescing, launch, claim, fencing, outcomes (DESIGN §3)."""

from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction

from publisher import builds, deferred, runner
from publisher.interrupts import BuildInterrupted
from publisher.launchers import LaunchError, recording
from publisher.models import ACTIVE_STATES, Build, BuildRequest, BuildState, Page

pytestmark = pytest.mark.django_db
S = BuildState


@pytest.fixture
def publish(django_capture_on_commit_callbacks):
    """Publish a new page the way the admin does: one transaction, dispatch after commit."""

    def publish(slug, **fields):
        with django_capture_on_commit_callbacks(execute=True):
            page = Page(slug=slug, title=fields.pop("title", slug.title()), body="body", **fields)
            page.publish()
        return page

    return publish


def only_build():
    (build,) = Build.objects.all()
    return build


def claim_launched(build_id=None):
    launch = (
        recording.launches[-1] if build_id is None else [x for x in recording.launches if x["build_id"] == build_id][-1]
    )
    return builds.claim(launch["build_id"], launch["token"])


# --- Requests and dispatch ---------------------------------------------------------------------------------------


def test_a_publish_records_one_request_and_launches_a_build_after_commit(publish):
    publish("alpha")
    build = only_build()
    assert build.state == S.LAUNCHED and build.launcher == "recording"
    assert build.handle == recording.launches[0]["handle"]
    assert recording.launches == [{"build_id": build.pk, "token": build.launch_token, "handle": build.handle}]
    (request,) = BuildRequest.objects.all()
    assert request.build_id == build.pk and "published “Alpha”" in request.reason


def test_nothing_is_requested_or_launched_when_the_content_change_rolls_back(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        with transaction.atomic():
            Page(slug="alpha", title="A").publish()
            raise RuntimeError("the view failed after publishing")
    assert not BuildRequest.objects.exists() and not Build.objects.exists() and recording.launches == []


def test_the_request_is_inserted_inside_the_content_transaction(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with transaction.atomic():
            Page(slug="alpha", title="A").publish()
            assert BuildRequest.objects.filter(build__isnull=True).count() == 1  # before commit
    assert len(callbacks) == 1 and recording.launches == []


def test_one_user_action_makes_one_request_whatever_the_mix_of_signals(django_capture_on_commit_callbacks):
    live = Page(slug="live", title="Live")
    live.publish()
    Build.objects.all().delete()
    BuildRequest.objects.all().delete()
    recording.reset()
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            Page(slug="a", title="A").publish()
            Page(slug="b", title="B").publish()
            live.title = "Live, edited"
            live.publish()  # a live page's changed draft goes live
            live.unpublish()
    (request,) = BuildRequest.objects.all()
    assert request.reason.count("; ") == 3
    assert len(recording.launches) == 1


@pytest.mark.django_db(transaction=True)
def test_a_failing_launcher_never_fails_the_publish(publish, monkeypatch, caplog):
    def broken():
        raise ImproperlyConfigured("no launcher")

    monkeypatch.setattr(builds, "get_launcher", broken)
    publish("alpha")  # no exception reaches the editor
    assert deferred.wait(timeout=30), "the launch after the response did not end"
    assert Page.objects.get(slug="alpha").is_published
    assert BuildRequest.objects.get().build.state == S.QUEUED  # the request is kept for the next attempt
    assert "no launcher" in caplog.text, "the launch thread logs why it could not launch"


def test_requests_attach_to_a_launched_build_that_has_not_read_content(publish):
    publish("alpha")
    build = only_build()
    outcome = builds.request_build("again")
    assert outcome.kind == "attached" and outcome.build_id == build.pk
    assert str(outcome) == f"Your change will be in build #{build.pk}, which is starting."
    assert "has not read content yet" in outcome.for_operators
    assert BuildRequest.objects.filter(build=build).count() == 2 and len(recording.launches) == 1


def test_requests_during_a_running_build_coalesce_into_one_queued_build(publish):
    publish("alpha")
    running = only_build()
    assert isinstance(claim_launched(), builds.Claim)
    first = builds.request_build("one")
    said = f"Your change will be in build #{first.build_id}, which starts when build #{running.pk} has finished."
    assert first.kind == "queued" and str(first) == said
    for n in range(5):
        outcome = builds.request_build(f"more {n}")
        assert outcome.build_id == first.build_id
        assert str(outcome) == said
    queued = Build.objects.get(state=S.QUEUED)
    assert queued.requests.count() == 6 and Build.objects.count() == 2 and len(recording.launches) == 1


def test_the_database_refuses_a_second_active_or_queued_build(publish):
    publish("alpha")
    builds.request_build("x")  # attaches; still one build
    with pytest.raises(IntegrityError), transaction.atomic():
        Build.objects.create(state=S.RUNNING)
    Build.objects.create(state=S.QUEUED)
    with pytest.raises(IntegrityError), transaction.atomic():
        Build.objects.create(state=S.QUEUED)


# --- Launch failures -----------------------------------------------------------------------------------------------


def key_error():
    return LaunchError(
        "Heroku rejected the API key (401)", status=401, error_id="unauthorized", retryable=False, needs_operator=True
    )


def test_a_launch_failure_requeues_the_same_build_with_backoff(clock, settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    recording.fail_next(key_error())
    outcome = builds.request_build("publish")
    assert not outcome.ok and outcome.kind == "launch_failed"
    assert str(outcome) == "Build #1 could not start: an administrator has been told; it is retried meanwhile."
    assert outcome.detail == "launch failed: Heroku rejected the API key (401)"
    build = only_build()
    assert build.state == S.QUEUED and build.attempt == 2 and build.launch_token == ""
    assert "401" in build.error and build.next_attempt_at == clock.now + timedelta(seconds=30)
    assert build.requests.count() == 1
    assert len(mail.outbox) == 1 and "needs attention" in mail.outbox[0].subject

    # Not due yet: a new request attaches and waits out the backoff.
    waiting = builds.request_build("another")
    assert waiting.kind == "waiting" and recording.launches == []
    # Due: the next failure backs off twice as long, and is not reported again.
    clock.advance(30)
    recording.fail_next(key_error())
    builds.request_build("third")
    build.refresh_from_db()
    assert build.attempt == 3 and build.next_attempt_at == clock.now + timedelta(seconds=60)
    assert len(mail.outbox) == 1
    clock.advance(60)
    launched = builds.request_build("fourth")
    assert launched.kind == "launched" and only_build().state == S.LAUNCHED
    assert only_build().requests.count() == 4


def launch_error_fields(build):
    build.refresh_from_db()
    return (build.error_status, build.error_id, build.error_request_id, build.needs_operator)


def test_a_launch_failure_is_stored_structured_until_a_launch_works(clock):
    """DESIGN §8: status, platform error id, request id and needs-an-operator, so the banner and the doctor need not
    parse the prose. The last failure stays until a launch works; the prose error stays for the history."""
    recording.fail_next(
        LaunchError(
            "Heroku rejected the API key (401)",
            status=401,
            error_id="unauthorized",
            request_id="req-42",
            retryable=False,
            needs_operator=True,
        )
    )
    builds.request_build("publish")
    build = only_build()
    assert launch_error_fields(build) == (401, "unauthorized", "req-42", True)
    clock.advance(30)
    recording.fail_next(LaunchError("Heroku is unavailable (503)", status=503, error_id="unavailable"))
    builds.launch_next()
    assert launch_error_fields(build) == (503, "unavailable", "", False), "the last failure, not the first"
    clock.advance(60)
    assert builds.launch_next().kind == "launched"
    assert launch_error_fields(build) == (None, "", "", False)
    assert "503" in build.error


def test_a_failure_before_the_claim_that_is_no_launch_error_needs_no_operator(clock, monkeypatch):
    from publisher import sweep

    recording.fail_next(LaunchError("rejected (401)", status=401, error_id="unauthorized", needs_operator=True))
    builds.request_build("publish")
    build = only_build()

    def hang(self, **kwargs):
        raise SystemExit  # the launching process died inside the launcher call

    clock.advance(30)
    with monkeypatch.context() as patched, pytest.raises(SystemExit):
        patched.setattr(recording.RecordingLauncher, "launch", hang)
        builds.launch_next()
    assert launch_error_fields(build) == (401, "unauthorized", "", True), "launching does not clear it yet"
    clock.advance(61)
    sweep.sweep()  # stuck in launching: queued again
    assert launch_error_fields(build) == (None, "", "", False)
    assert build.state == S.QUEUED and "stuck" in build.error.lower()


def test_a_fast_child_that_claims_first_clears_the_last_launch_failure(clock, monkeypatch):
    recording.fail_next(LaunchError("down (503)", status=503, error_id="unavailable"))
    builds.request_build("publish")
    build = only_build()
    original = recording.RecordingLauncher.launch

    def launch_and_claim_at_once(self, *, build_id, token):
        handle = original(self, build_id=build_id, token=token)
        builds.claim(build_id, token)
        return handle

    monkeypatch.setattr(recording.RecordingLauncher, "launch", launch_and_claim_at_once)
    clock.advance(30)
    builds.launch_next()
    assert launch_error_fields(build) == (None, "", "", False) and build.state == S.RUNNING


def test_a_handed_over_build_keeps_the_structured_failure(monkeypatch):
    builds.request_build("first")
    first = only_build()

    def fail_after_a_queued_build_appeared(self, **kwargs):
        Build.objects.create(state=S.QUEUED, next_attempt_at=builds.now())
        raise LaunchError("no such app (404)", status=404, error_id="not_found", request_id="r-9", needs_operator=True)

    Build.objects.filter(pk=first.pk).update(state=S.QUEUED, launch_token="")
    monkeypatch.setattr(recording.RecordingLauncher, "launch", fail_after_a_queued_build_appeared)
    builds.launch(first.pk)
    assert launch_error_fields(first) == (404, "not_found", "r-9", True) and first.state == S.FAILED


def test_backoff_doubles_up_to_the_maximum(settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_RETRY_BASE": 30, "BUILD_RETRY_MAX": 200}
    assert [builds.backoff(n) for n in range(1, 6)] == [30, 60, 120, 200, 200]


def test_retryable_launch_errors_are_not_reported(settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    recording.fail_next(LaunchError("Heroku is unavailable (503)", status=503, retryable=True))
    builds.request_build("publish")
    assert only_build().state == S.QUEUED and mail.outbox == []


# --- Claim -----------------------------------------------------------------------------------------------------------


def test_claim_and_why_a_claim_is_refused(publish):
    publish("alpha")
    launch = recording.launches[0]
    assert builds.claim(launch["build_id"], "an-old-token").kind == "claim_refused"
    c = builds.claim(launch["build_id"], launch["token"])
    assert isinstance(c, builds.Claim)
    build = only_build()
    assert build.state == S.RUNNING and build.started_at and build.heartbeat_at and build.pages_done == 0
    duplicate = builds.claim(launch["build_id"], launch["token"])
    assert "already running" in str(duplicate)
    assert "does not exist" in str(builds.claim(9999, "x"))
    builds.finish(c, state=S.SUCCEEDED)
    assert "is succeeded" in str(builds.claim(launch["build_id"], launch["token"]))


def test_an_orphan_of_an_earlier_attempt_cannot_claim(publish, clock):
    recording.fail_next(LaunchError("boom (503)", status=503))
    publish("alpha")
    # The first attempt's process might still start: its token is the one passed to the failed launch.
    build = only_build()
    assert build.state == S.QUEUED
    clock.advance(30)
    builds.launch_next()
    new = recording.launches[-1]
    orphan = builds.claim(build.pk, "token-of-attempt-1")
    assert "orphan" in str(orphan)
    assert isinstance(builds.claim(build.pk, new["token"]), builds.Claim)


def test_a_fast_child_that_claims_before_the_handle_is_recorded(monkeypatch):
    original = recording.RecordingLauncher.launch

    def launch_and_claim_at_once(self, *, build_id, token):
        handle = original(self, build_id=build_id, token=token)
        assert isinstance(builds.claim(build_id, token), builds.Claim)  # the child won the race
        return handle

    monkeypatch.setattr(recording.RecordingLauncher, "launch", launch_and_claim_at_once)
    outcome = builds.request_build("publish")
    build = only_build()
    assert outcome.kind == "launched"
    assert build.state == S.RUNNING and build.handle == recording.launches[0]["handle"]


def test_a_request_attaching_while_the_build_claims_is_covered(publish, monkeypatch):
    publish("alpha")
    build = only_build()
    launch = recording.launches[0]
    find_target = builds._attach_target

    def target_then_claim(at):
        target = find_target(at)
        builds.claim(launch["build_id"], launch["token"])  # the build claims between our read and our update
        return target

    monkeypatch.setattr(builds, "_attach_target", target_then_claim)
    builds.request_build("racing")
    request = BuildRequest.objects.get(reason="racing")
    build.refresh_from_db()
    # Attached to the build that read its state as launched: it claims, then reads content, after the request committed.
    assert request.build_id == build.pk and build.state == S.RUNNING and build.started_at >= request.created_at


# --- Running a claimed build ------------------------------------------------------------------------------------------


@pytest.fixture
def claimed(publish, site_root):
    publish("alpha")
    return claim_launched()


def test_run_succeeds_then_launches_the_queued_build(claimed, site_root):
    builds.request_build("during the build")
    result = runner.run(claimed)
    assert result.exit_code == 0 and "is live" in result.message
    done = Build.objects.get(pk=claimed.build_id)
    assert done.state == S.SUCCEEDED and done.release and done.pages_done == 1 and done.finished_at
    assert (site_root / "current" / "alpha" / "index.html").exists()
    nxt = Build.objects.exclude(pk=claimed.build_id).get()
    assert nxt.state == S.LAUNCHED and recording.launches[-1]["build_id"] == nxt.pk
    assert f"Build #{nxt.pk} has started" in result.message


def test_a_failing_render_fails_the_build_reports_it_and_launches_the_next(claimed, monkeypatch, settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    builds.request_build("during the build")

    def broken(*args, **kwargs):
        raise ValueError("template exploded")

    monkeypatch.setattr(runner, "build_release", broken)
    result = runner.run(claimed)
    assert result.exit_code == 1 and "template exploded" in result.message
    failed = Build.objects.get(pk=claimed.build_id)
    assert failed.state == S.FAILED and "template exploded" in failed.error
    assert len(mail.outbox) == 1 and "Requests it leaves uncovered" in mail.outbox[0].body
    assert Build.objects.exclude(pk=claimed.build_id).get().state == S.LAUNCHED
    assert not BuildRequest.objects.filter(reason__startswith="retry").exists()  # build errors are not retried


def interrupting(monkeypatch, after_pages=0):
    original = runner.HeartbeatProgress.advance

    def advance(self, done):
        if done > after_pages:
            raise BuildInterrupted(15)
        original(self, done)

    monkeypatch.setattr(runner.HeartbeatProgress, "advance", advance)


def test_sigterm_records_interrupted_and_a_retry_without_launching(claimed, monkeypatch, site_root, clock):
    interrupting(monkeypatch)
    launches = len(recording.launches)
    result = runner.run(claimed)
    assert result.exit_code == 143
    build = Build.objects.get(pk=claimed.build_id)
    assert build.state == S.FAILED and "Interrupted" in build.error
    retry = BuildRequest.objects.get(reason=f"retry of #{build.pk}")
    assert retry.retry_of_id == build.pk and retry.build.state == S.QUEUED
    assert retry.build.next_attempt_at == clock.now + timedelta(seconds=30)
    assert len(recording.launches) == launches  # the launch is left to the sweep or the next request
    assert not (site_root / "current").exists()
    assert [p.name for p in (site_root / "releases").iterdir()] == []


def test_sigterm_past_the_build_timeout_is_a_timeout_without_retry(claimed, monkeypatch, clock, settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_TIMEOUT": 60}
    clock.advance(61)
    interrupting(monkeypatch)
    assert runner.run(claimed).exit_code == 143
    build = Build.objects.get(pk=claimed.build_id)
    assert build.state == S.FAILED and "Timed out" in build.error
    assert not BuildRequest.objects.filter(retry_of=build).exists()


def test_sigterm_after_a_cancel_keeps_the_cancel(claimed, monkeypatch):
    builds.cancel(claimed.build_id, by="ops")
    interrupting(monkeypatch)
    assert runner.run(claimed).exit_code == 143
    build = Build.objects.get(pk=claimed.build_id)
    assert build.state == S.CANCELLED and build.error == "Cancelled by ops"
    assert not BuildRequest.objects.filter(retry_of=build).exists()
    assert recording.stops == [build.handle]


def test_retries_stop_after_max_attempts_and_are_reported_once(settings, claimed, monkeypatch):
    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_MAX_ATTEMPTS": 2}
    settings.ADMINS = [("Ops", "ops@example.com")]
    interrupting(monkeypatch)
    runner.run(claimed)  # failure 1: retried
    first_retry = BuildRequest.objects.get(retry_of_id=claimed.build_id).build
    builds.launch(first_retry.pk)
    second = claim_launched(first_retry.pk)
    runner.run(second)  # failure 2: retries stop
    assert not BuildRequest.objects.filter(retry_of_id=second.build_id).exists()
    assert len(mail.outbox) == 1 and "automatic retries stop" in mail.outbox[0].body
    assert builds.consecutive_failures() == 2


def test_a_fenced_heartbeat_stops_the_build_without_switching(claimed, site_root, monkeypatch):
    original = runner.HeartbeatProgress.advance

    def cancel_midway(self, done):
        if done == 1:
            builds.cancel(claimed.build_id)  # the operator cancels while the build renders
            self.beat()
        original(self, done)

    monkeypatch.setattr(runner.HeartbeatProgress, "advance", cancel_midway)
    result = runner.run(claimed)
    assert result.exit_code == 0 and "stopped" in result.message
    assert Build.objects.get(pk=claimed.build_id).state == S.CANCELLED
    assert not (site_root / "current").exists() and list((site_root / "releases").iterdir()) == []


def test_the_last_fencing_check_happens_before_the_switch(claimed, site_root, monkeypatch):
    original = runner.HeartbeatProgress.beat
    calls = []

    def beat(self):
        calls.append(1)
        if len(calls) == 2:  # the check right before going live
            Build.objects.filter(pk=claimed.build_id).update(launch_token="relaunched")
        return original(self)

    monkeypatch.setattr(runner.HeartbeatProgress, "beat", beat)
    assert runner.run(claimed).exit_code == 0
    assert not (site_root / "current").exists()


def test_heartbeats_write_progress(claimed, settings):
    c = claimed
    assert builds.heartbeat(c, done=3, total=10, moved=True)
    build = Build.objects.get(pk=c.build_id)
    assert (build.pages_done, build.pages_total) == (3, 10) and build.progress_at == build.heartbeat_at
    Build.objects.filter(pk=c.build_id).update(launch_token="other")
    assert not builds.heartbeat(c, done=4)


@pytest.mark.django_db(transaction=True)
def test_heartbeat_thread_writes_at_the_interval(claimed):
    import time

    progress = runner.HeartbeatProgress(claimed, interval=0.05, give_up_after=60)
    progress.start(10)
    progress.advance(4)
    time.sleep(0.3)
    progress.stop()
    build = Build.objects.get(pk=claimed.build_id)
    assert build.pages_done == 4 and build.pages_total == 10


def test_a_build_that_cannot_write_heartbeats_stops_itself(claimed, monkeypatch):
    from django.db import OperationalError

    def broken(*args, **kwargs):
        raise OperationalError("database is locked")

    clock_values = iter([0, 0, 100, 100, 100])
    progress = runner.HeartbeatProgress(claimed, interval=60, give_up_after=60, clock=lambda: next(clock_values))
    monkeypatch.setattr(builds, "heartbeat", broken)
    assert progress.beat() is False and progress.fenced is None  # within the grace
    assert progress.beat() is False and "could not write a heartbeat" in progress.fenced
    with pytest.raises(runner.BuildFenced):
        progress.advance(1)


# --- Manual builds and cancel ---------------------------------------------------------------------------------------


def test_a_manual_build_takes_the_active_slot_and_records_its_process(site_root):
    c = builds.start_manual(process={"host": "laptop", "pid": 42})
    assert isinstance(c, builds.Claim) and c.manual
    build = only_build()
    assert build.state == S.RUNNING and build.manual and build.handle == {"host": "laptop", "pid": 42}
    assert build.requests.get().reason == "manual build"
    assert builds.start_manual(process={}) is None  # the slot is taken
    assert runner.run(c).exit_code == 0
    assert Build.objects.get(pk=c.build_id).state == S.SUCCEEDED


def test_cancel_a_queued_build():
    Build.objects.create(state=S.RUNNING, launch_token="t")
    builds.request_build("x")
    queued = Build.objects.get(state=S.QUEUED)
    assert builds.cancel(queued.pk).kind == "cancelled"
    assert Build.objects.get(pk=queued.pk).state == S.CANCELLED
    assert builds.cancel(queued.pk).kind == "finished"


def test_active_states_are_the_designs():
    assert set(ACTIVE_STATES) == {"launching", "launched", "running"}


def test_a_failed_launch_hands_its_requests_to_a_queued_build_that_appeared_meanwhile(monkeypatch):
    builds.request_build("first")  # launched
    first = only_build()

    def fail_after_a_queued_build_appeared(self, **kwargs):
        # A request raced the promotion and queued a second build while this one was launching.
        Build.objects.create(state=S.QUEUED, next_attempt_at=builds.now())
        raise LaunchError("down (503)", status=503)

    Build.objects.filter(pk=first.pk).update(state=S.QUEUED, launch_token="")
    monkeypatch.setattr(recording.RecordingLauncher, "launch", fail_after_a_queued_build_appeared)
    outcome = builds.launch(first.pk)
    assert outcome.kind == "launch_failed"
    first.refresh_from_db()
    queued = Build.objects.get(state=S.QUEUED)
    assert first.state == S.FAILED and "moved to the queued build" in first.error
    assert list(queued.requests.values_list("reason", flat=True)) == ["first"]


# --- Words for editors (issue 8, defect 10) ----------------------------------------------------------------------


def test_a_launch_whose_answer_was_lost_says_the_build_started(monkeypatch):
    """The dyno was created and claimed the build; only the launcher's answer was lost (a read timeout)."""
    real_launch = recording.RecordingLauncher.launch

    def launch_then_lose_the_answer(self, *, build_id, token):
        real_launch(self, build_id=build_id, token=token)
        builds.claim(build_id, token)  # the dyno starts and claims before the answer arrives
        raise LaunchError("Heroku launch failed: the API at api.heroku.com did not answer in time (ReadTimeout).")

    monkeypatch.setattr(recording.RecordingLauncher, "launch", launch_then_lose_the_answer)
    outcome = builds.request_build("publish")
    assert outcome.ok and str(outcome) == "Build #1 has started; your change is live when it finishes."
    assert "answer was lost" in outcome.for_operators and "did not answer in time" in outcome.for_operators
    assert only_build().state == S.RUNNING


@pytest.mark.parametrize(
    "error",
    [
        LaunchError("Heroku launch failed with HTTP 503 (unavailable: down.). Heroku request id: r-1."),
        LaunchError("The Heroku launcher is not configured: set HEROKU_API_KEY.", needs_operator=True),
    ],
)
def test_what_an_editor_reads_after_a_failed_launch_is_one_short_sentence(error):
    recording.fail_next(error)
    outcome = builds.request_build("publish")
    assert ".." not in str(outcome) and str(outcome).count(".") == 1 and "Heroku" not in str(outcome)
    assert str(error) in outcome.for_operators


def test_an_error_after_the_switch_changes_no_outcome(monkeypatch, site_root):
    """Pruning that fails (an rmtree interrupted by a signal can raise EBADF) leaves the build a success, exit 0."""
    from publisher import runner as runner_module

    def broken_prune(config):
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(runner_module, "prune_releases", broken_prune)
    Page(slug="alpha", title="Alpha", body="a").publish()
    builds.request_build("x")
    launch = recording.launches[-1]
    result = runner.run(builds.claim(launch["build_id"], launch["token"]))
    assert result.exit_code == 0 and "is live" in result.message
    assert Build.objects.get(pk=launch["build_id"]).state == S.SUCCEEDED


# --- A build process that cannot start (its system checks fail) ----------------------------------------------------


def test_a_build_process_that_cannot_start_requeues_its_launched_build_once(settings, mailoutbox):
    settings.ADMINS = [("Ops", "ops@example.com")]
    builds.request_build("x")
    (launch,) = recording.launches
    build_id, token = launch["build_id"], launch["token"]
    assert builds.cannot_start(build_id, token=token, error="Configuration error in the build process: E041")
    build = Build.objects.get(pk=build_id)
    assert build.state == S.QUEUED and build.attempt == 2 and build.needs_operator and build.launch_token == ""
    assert not builds.cannot_start(build_id, token=token, error="again"), "its token is spent: a re-run changes nothing"
    assert len(mailoutbox) == 1 and "cannot start" in mailoutbox[0].subject


def test_a_build_process_that_cannot_start_before_its_launch_was_recorded_requeues_it(monkeypatch):
    seen = {}

    def fast_child(self, *, build_id, token):
        # The dyno booted and failed its checks before the launcher's answer came back: the build is launching.
        seen["state"] = Build.objects.get(pk=build_id).state
        seen["moved"] = builds.cannot_start(build_id, token=token, error="Configuration error in the build process")
        return {"id": "rec-fast"}

    monkeypatch.setattr(recording.RecordingLauncher, "launch", fast_child)
    builds.request_build("x")
    build = only_build()
    assert seen == {"state": S.LAUNCHING, "moved": True}
    assert build.state == S.QUEUED and build.attempt == 2 and build.handle is None, "the late answer lands nowhere"
