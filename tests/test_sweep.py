"""The safety-net sweep, every path with a controllable clock (SQLite and PostgreSQL)."""

from datetime import timedelta

import pytest
from django.core import mail
from django.core.management import call_command

from publisher import builds, sweep
from publisher.launchers import GONE, RUNNING, STARTING, UNKNOWN, LaunchError, recording
from publisher.models import Build, BuildRequest, BuildState, SweepStatus
from publisher.signals import build_stalled

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
S = BuildState


@pytest.fixture(autouse=True)
def admins(settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "BUILD_LAUNCH_TIMEOUT": 60,
        "BUILD_START_TIMEOUT": 300,
        "BUILD_LOST_AFTER": 120,
        "BUILD_STALL_AFTER": 900,
        "BUILD_STALL_REPORT_EVERY": 3600,
        "BUILD_TIMEOUT": 10800,
        "BUILD_RETRY_BASE": 30,
        "BUILD_RETRY_MAX": 1800,
        "BUILD_MAX_ATTEMPTS": 3,
    }


def build():
    (b,) = Build.objects.exclude(state__in=(S.SUCCEEDED, S.FAILED, S.LOST, S.CANCELLED))
    return b


def queued_without_launch(clock):
    """A request committed and attached, but whose dispatch never ran (the web dyno died)."""
    request_id = builds.record_request("published", dispatch_after_commit=False)
    builds.attach_requests([request_id])
    return build()


def running(clock):
    builds.request_build("published")
    launch = recording.launches[-1]
    return builds.claim(launch["build_id"], launch["token"])


def status_of(b, status):
    recording.statuses[b.handle["id"]] = status


# --- An idle pass ----------------------------------------------------------------------------------------------


def test_an_idle_pass_costs_at_most_five_queries(clock, django_assert_max_num_queries):
    sweep.sweep()  # creates the status row
    clock.advance(60)
    with django_assert_max_num_queries(5):
        done = sweep.sweep()
    assert str(done) == "Nothing to do."


def test_an_idle_pass_with_a_healthy_running_build_asks_no_launcher(clock, django_assert_max_num_queries):
    running(clock)
    sweep.sweep()
    clock.advance(5)
    with django_assert_max_num_queries(5):
        sweep.sweep()
    assert recording.status_checks == []


def test_the_pass_is_recorded(clock):
    sweep.sweep()
    status = SweepStatus.objects.get()
    assert status.ran_at == clock.now and status.summary == "Nothing to do."


# --- 1, 2: requests never attached, builds never launched ----------------------------------------------------------


def test_unattached_requests_are_attached_and_launched_after_a_grace(clock):
    BuildRequest.objects.create(reason="publish whose process died", created_at=clock.now)
    sweep.sweep()
    assert BuildRequest.objects.get().build is None  # still young: its own dispatch may be running
    clock.advance(sweep.UNATTACHED_GRACE + 1)
    done = sweep.sweep()
    b = build()
    assert BuildRequest.objects.get().build == b and b.state == S.LAUNCHED
    assert "1 unattached request(s)" in str(done) and f"Build #{b.pk} launched" in str(done)


def test_a_due_queued_build_is_launched(clock):
    b = queued_without_launch(clock)
    assert b.state == S.QUEUED
    sweep.sweep()
    assert build().state == S.LAUNCHED and recording.launches[-1]["build_id"] == b.pk


def test_a_queued_build_in_backoff_waits(clock):
    recording.fail_next(LaunchError("down (503)", status=503))
    builds.request_build("x")
    sweep.sweep()
    assert build().state == S.QUEUED and recording.launches == []
    clock.advance(30)
    sweep.sweep()
    assert build().state == S.LAUNCHED


# --- 3: stuck in launching ---------------------------------------------------------------------------------------


def test_a_build_stuck_launching_is_queued_again_and_its_orphan_cannot_claim(clock, monkeypatch):
    b = queued_without_launch(clock)

    def hang_forever(self, **kwargs):  # the launching process died inside the launcher call
        raise SystemExit

    with monkeypatch.context() as patched, pytest.raises(SystemExit):
        patched.setattr(recording.RecordingLauncher, "launch", hang_forever)
        builds.launch(b.pk)
    stuck = build()
    old_token = stuck.launch_token
    assert stuck.state == S.LAUNCHING
    clock.advance(60)
    assert sweep.sweep().actions == []
    clock.advance(1)
    done = sweep.sweep()
    again = build()
    assert again.state == S.QUEUED and again.attempt == 2 and "stuck launching" in str(done)
    clock.advance(30)
    sweep.sweep()
    assert build().state == S.LAUNCHED
    assert builds.claim(b.pk, old_token).kind == "claim_refused"


# --- 4: launched, never started --------------------------------------------------------------------------------------


def test_launched_and_gone_before_starting_is_queued_again(clock):
    builds.request_build("x")
    b = build()
    status_of(b, GONE)
    clock.advance(300)
    sweep.sweep()
    assert build().state == S.LAUNCHED and recording.status_checks == []  # not yet due
    clock.advance(1)
    done = sweep.sweep()
    assert build().state == S.QUEUED and build().attempt == 2 and "queued again" in str(done)


def test_launched_and_still_starting_after_twice_the_timeout_is_stopped_and_queued(clock):
    builds.request_build("x")
    b = build()
    status_of(b, STARTING)
    clock.advance(301)
    sweep.sweep()
    assert build().state == S.LAUNCHED and recording.stops == []
    clock.advance(300)
    sweep.sweep()
    assert build().state == S.QUEUED and recording.stops == [b.handle]


def test_launched_with_unknown_status_waits(clock, caplog):
    builds.request_build("x")
    status_of(build(), UNKNOWN)
    clock.advance(10_000)
    sweep.sweep()
    assert build().state == S.LAUNCHED and "status is unknown: waiting" in caplog.text


def test_a_status_call_that_fails_counts_as_unknown(clock):
    builds.request_build("x")
    recording.fail_next(LaunchError("timeout"), on="status")
    clock.advance(10_000)
    sweep.sweep()
    assert build().state == S.LAUNCHED


# --- 5, 6: running, lost or stalled ----------------------------------------------------------------------------------


def test_a_running_build_gone_silent_is_lost_and_retried(clock):
    c = running(clock)
    b = build()
    status_of(b, GONE)
    clock.advance(121)
    done = sweep.sweep()
    lost = Build.objects.get(pk=c.build_id)
    assert lost.state == S.LOST and "No heartbeat" in lost.error and "lost" in str(done)
    retry = BuildRequest.objects.get(retry_of=lost)
    assert retry.build.state == S.QUEUED and retry.build.next_attempt_at == clock.now + timedelta(seconds=30)
    clock.advance(30)
    sweep.sweep()
    assert retry.build.pk == build().pk and build().state == S.LAUNCHED


def test_a_silent_build_whose_process_runs_is_reported_stalled_not_lost(clock):
    c = running(clock)
    status_of(build(), RUNNING)
    clock.advance(121)
    sweep.sweep()
    assert Build.objects.get(pk=c.build_id).state == S.RUNNING
    assert len(mail.outbox) == 1 and "stalled" in mail.outbox[0].subject


def test_a_silent_build_with_unknown_status_waits(clock):
    c = running(clock)
    status_of(build(), UNKNOWN)
    clock.advance(10_000 - 1)
    sweep.sweep()
    assert Build.objects.get(pk=c.build_id).state == S.RUNNING and mail.outbox == []


def test_stalls_are_reported_once_per_interval_even_with_two_sweeps_racing(clock):
    c = running(clock)
    received = []
    build_stalled.connect(lambda sender, build, stalled_for, **kw: received.append((build.pk, stalled_for)), weak=False)
    try:
        for _ in range(30):  # heartbeats keep coming, progress does not
            clock.advance(60)
            builds.heartbeat(c, done=5, total=10)
            sweep.sweep()
            sweep.sweep()  # a second sweep (worker + Scheduler) in the same minute
        assert len(mail.outbox) == 1  # stalled at 15 min, next report due at 75 min
        assert received[0][0] == c.build_id and received[0][1] >= 900
        for _ in range(60):
            clock.advance(60)
            builds.heartbeat(c, done=5, total=10)
            sweep.sweep()
        assert len(mail.outbox) == 2 and len(received) == 2
        assert "rendered 5 of 10 pages" in mail.outbox[0].body
    finally:
        build_stalled.receivers.clear()


def test_progress_clears_a_stall(clock):
    c = running(clock)
    for n in range(30):
        clock.advance(60)
        builds.heartbeat(c, done=n, total=100, moved=True)
        sweep.sweep()
    assert mail.outbox == []


# --- 7: timeout ------------------------------------------------------------------------------------------------------


def test_a_build_running_past_the_timeout_is_stopped_failed_and_reported(clock):
    c = running(clock)
    b = build()
    for _ in range(181):  # heartbeats and progress all along: only the wall time is exceeded
        clock.advance(60)
        builds.heartbeat(c, done=1, total=2, moved=True)
    done = sweep.sweep()
    ended = Build.objects.get(pk=c.build_id)
    assert ended.state == S.FAILED and "Timed out" in ended.error and "timed out" in str(done)
    assert recording.stops == [b.handle]
    assert len(mail.outbox) == 1 and "not retried" in mail.outbox[0].body
    assert not BuildRequest.objects.filter(retry_of=ended).exists()


def test_a_timed_out_build_whose_process_cannot_be_stopped_says_so(clock):
    c = running(clock)
    clock.advance(10_801)
    recording.fail_next(LaunchError("Heroku did not answer in time (ReadTimeout)"), on="stop")
    done = sweep.sweep()
    ended = Build.objects.get(pk=c.build_id)
    assert ended.state == S.FAILED and ended.stopped_at is None
    assert ended.stop_error == "its process could not be stopped: Heroku did not answer in time (ReadTimeout)"
    assert f"Build #{c.build_id} timed out; its process could not be stopped" in str(done)


def test_a_timed_out_build_records_when_its_process_was_stopped(clock):
    c = running(clock)
    clock.advance(10_801)
    sweep.sweep()
    ended = Build.objects.get(pk=c.build_id)
    assert ended.stopped_at == clock.now and ended.stop_error == "" and recording.stops == [ended.handle]


# --- 8: retries back off and stop ------------------------------------------------------------------------------------


def lose_current_build(clock):
    launch = recording.launches[-1]
    builds.claim(launch["build_id"], launch["token"])
    recording.statuses[launch["handle"]["id"]] = GONE
    clock.advance(121)
    sweep.sweep()
    return Build.objects.get(pk=launch["build_id"])


def test_retries_back_off_and_stop_after_max_attempts(clock):
    builds.request_build("publish")
    delays = []
    for _ in range(3):
        lost = lose_current_build(clock)
        assert lost.state == S.LOST
        retry = Build.objects.filter(state=S.QUEUED).first()
        if retry is None:
            break
        delays.append((retry.next_attempt_at - clock.now).total_seconds())
        clock.advance(delays[-1])
        sweep.sweep()
    assert delays == [30, 60]
    assert not Build.objects.filter(state=S.QUEUED).exists()  # the third loss stops the retries
    assert len(mail.outbox) == 1 and "automatic retries stop" in mail.outbox[0].body
    assert "Requests it leaves uncovered" in mail.outbox[0].body
    sweep.sweep()
    assert len(mail.outbox) == 1  # reported once
    assert builds.request_build("a new publish").kind == "launched"  # starts afresh


# --- Two passes interleaved ------------------------------------------------------------------------------------------


def test_two_passes_interleaved_act_once(clock, monkeypatch):
    c = running(clock)
    status_of(build(), GONE)
    clock.advance(121)
    original = recording.RecordingLauncher.status
    inner = []

    def status_with_a_second_pass(self, handle):
        if not inner:
            inner.append("running")
            inner[0] = str(sweep.sweep())  # another sweep runs the same pass meanwhile
        return original(self, handle)

    monkeypatch.setattr(recording.RecordingLauncher, "status", status_with_a_second_pass)
    outer = sweep.sweep()
    assert Build.objects.get(pk=c.build_id).state == S.LOST
    assert BuildRequest.objects.filter(retry_of_id=c.build_id).count() == 1
    assert ("lost" in inner[0]) != ("lost" in str(outer))  # exactly one of them acted


# --- 9: history ------------------------------------------------------------------------------------------------------


def test_old_history_is_pruned_at_most_hourly(clock, settings):
    from django_q.models import Task

    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_HISTORY_DAYS": 90}
    old = clock.now - timedelta(days=91)
    old_build = Build.objects.create(state=S.SUCCEEDED, created_at=old)
    BuildRequest.objects.create(reason="old", build=old_build, created_at=old)
    recent = Build.objects.create(state=S.SUCCEEDED, created_at=clock.now - timedelta(days=89))
    Task.objects.create(id="t1", name="t1", func="f", started=old, stopped=old, success=True)
    sweep.sweep()
    assert list(Build.objects.all()) == [recent] and not BuildRequest.objects.exists()
    assert not Task.objects.exists()
    Build.objects.create(state=S.SUCCEEDED, created_at=old)
    clock.advance(60)
    sweep.sweep()
    assert Build.objects.count() == 2  # the next prune is an hour later
    clock.advance(3600)
    sweep.sweep()
    assert list(Build.objects.all()) == [recent]


# --- Running it -----------------------------------------------------------------------------------------------------


def test_sweepbuilds_command_prints_what_it_did(clock, capsys):
    queued_without_launch(clock)
    call_command("sweepbuilds")
    assert "launched" in capsys.readouterr().out


def test_sweepbuilds_exits_1_when_the_pass_crashes(monkeypatch):
    from django.core.management.base import CommandError

    def broken():
        raise RuntimeError("database gone")

    monkeypatch.setattr("publisher.management.commands.sweepbuilds.sweep", broken)
    with pytest.raises(CommandError) as info:
        call_command("sweepbuilds")
    assert info.value.returncode == 1


def test_the_schedule_is_created_once_and_repaired(db):
    from django_q.models import Schedule

    Schedule.objects.filter(name=sweep.SCHEDULE_NAME).delete()
    sweep.ensure_schedule()
    sweep.ensure_schedule()
    (s,) = Schedule.objects.filter(name=sweep.SCHEDULE_NAME)
    assert (s.func, s.schedule_type, s.minutes, s.repeats) == (
        "publisher.sweep.run_scheduled_sweep",
        Schedule.MINUTES,
        1,
        -1,
    )
    Schedule.objects.filter(pk=s.pk).update(minutes=5)
    Schedule.objects.create(name=sweep.SCHEDULE_NAME, func="x", schedule_type=Schedule.HOURLY)
    sweep.ensure_schedule()
    (s,) = Schedule.objects.filter(name=sweep.SCHEDULE_NAME)
    assert s.minutes == 1


def test_the_scheduled_function_runs_a_pass(clock):
    queued_without_launch(clock)
    assert "launched" in sweep.run_scheduled_sweep()


def test_pruning_is_bounded_per_pass(clock):
    old = clock.now - timedelta(days=91)
    Build.objects.bulk_create(Build(state=S.FAILED, created_at=old) for _ in range(1200))
    sweep.sweep()
    assert Build.objects.count() == 200
    clock.advance(3601)
    sweep.sweep()
    assert Build.objects.count() == 0


# --- Issue 8: hardening -----------------------------------------------------------------------------------------


@pytest.fixture
def own_handles(monkeypatch):
    """The recording launcher describes the process calling it, as a real launcher does (``this_process``)."""
    monkeypatch.setattr(recording.RecordingLauncher, "this_process", lambda self: {"id": "self-1"})


def test_a_build_whose_handle_was_never_recorded_records_its_own_and_is_judged(clock, own_handles):
    """Defect 4: the launching process died between the launcher call and recording the handle."""
    builds.request_build("published")
    launch = recording.launches[-1]
    Build.objects.filter(pk=launch["build_id"]).update(handle=None)  # the launching process died before it
    builds.claim(launch["build_id"], launch["token"])
    b = build()
    assert b.state == S.RUNNING and b.handle == {"id": "self-1"}
    recording.statuses["self-1"] = GONE  # then the build dies too
    clock.advance(121)
    sweep.sweep()
    lost = Build.objects.get(pk=launch["build_id"])
    assert lost.state == S.LOST, "judged at once, not left 'status unknown' until BUILD_TIMEOUT"
    assert BuildRequest.objects.filter(retry_of=lost).exists()


def test_a_claim_keeps_the_handle_the_launcher_recorded(clock, own_handles):
    c = running(clock)
    assert Build.objects.get(pk=c.build_id).handle == recording.launches[-1]["handle"]


def test_each_build_is_judged_by_the_launcher_that_started_it(clock, settings):
    """Defect 5: LAUNCHER switched to heroku while a local build is open; the local launcher judges it, and Heroku's
    API is never asked about a local handle."""
    dead_pid = {"host": __import__("socket").gethostname(), "pid": 2**22 + 7, "started": 1}
    c = running(clock)
    Build.objects.filter(pk=c.build_id).update(launcher="local", handle=dead_pid)
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "LAUNCHER": {
            "BACKEND": "publisher.launchers.heroku.HerokuLauncher",
            "OPTIONS": {"API_KEY": "key-0123456789", "APP_NAME": "app", "API_URL": "https://heroku.test"},
        },
    }
    queued_request = builds.record_request("a publish whose dispatch never ran", dispatch_after_commit=False)
    clock.advance(121)
    import responses

    with responses.RequestsMock() as rsps:  # any other call to Heroku fails the test
        rsps.post("https://heroku.test/apps/app/dynos", json={"id": "d-1", "name": "run.1"}, status=201)
        done = sweep.sweep()
        assert [call.request.method for call in rsps.calls] == ["POST"], "the retry is launched on Heroku"
    assert Build.objects.get(pk=c.build_id).state == S.LOST, str(done)
    assert BuildRequest.objects.get(pk=queued_request).build is not None, "the pass went on to attach requests"


def test_an_unexpected_error_on_one_build_is_logged_and_the_pass_goes_on(clock, monkeypatch, caplog):
    c = running(clock)
    request_id = builds.record_request("a publish whose dispatch never ran", dispatch_after_commit=False)

    def broken(self, handle):
        raise KeyError("dyno_name")

    monkeypatch.setattr(recording.RecordingLauncher, "status", broken)
    clock.advance(121)
    done = sweep.sweep()
    assert f"Checking build #{c.build_id} failed: KeyError" in str(done)
    assert "Traceback" in caplog.text and "KeyError: 'dyno_name'" in caplog.text
    assert BuildRequest.objects.get(pk=request_id).build is not None
    assert SweepStatus.objects.get().passes == 1, "the pass was recorded"


def test_a_build_started_by_a_launcher_no_longer_configured_waits_as_unknown(clock, caplog):
    c = running(clock)
    Build.objects.filter(pk=c.build_id).update(launcher="retired")
    clock.advance(121)
    sweep.sweep()
    assert Build.objects.get(pk=c.build_id).state == S.RUNNING
    assert "No launcher named 'retired' is configured" in caplog.text


def test_a_failing_build_stalled_receiver_does_not_stop_the_report_or_the_pass(clock, caplog):
    c = running(clock)

    def broken_receiver(sender, **kwargs):
        raise RuntimeError("the integration is down")

    build_stalled.connect(broken_receiver, dispatch_uid="test-broken")
    try:
        clock.advance(100)
        builds.heartbeat(c)  # alive but not progressing
        clock.advance(850)
        done = sweep.sweep()
    finally:
        build_stalled.disconnect(dispatch_uid="test-broken")
    assert "stalled" in str(done) and any("is stalled" in m.subject for m in mail.outbox)
    assert "the integration is down" in caplog.text and "build_stalled receiver" in caplog.text


def launched_and_gone(clock):
    b = build()
    status_of(b, GONE)
    clock.advance(301)
    sweep.sweep()
    return Build.objects.get(pk=b.pk)


def test_a_build_that_dies_before_its_claim_again_and_again_is_reported_once_and_kept(clock):
    """Defect 6: a dyno that dies before claiming (``python: command not found``) is retried forever; after
    BUILD_MAX_ATTEMPTS (3 here) failed attempts it is reported once, with the last error and a hint."""
    builds.request_build("published")
    for attempt in range(1, 7):
        b = launched_and_gone(clock)
        assert b.state == S.QUEUED and b.attempt == attempt + 1
        clock.advance(3600)
        sweep.sweep()  # relaunched
        assert build().state == S.LAUNCHED
        reports = [m for m in mail.outbox if "keeps failing to start" in m.subject]
        assert len(reports) == (1 if attempt >= 3 else 0)
    (report,) = reports
    assert "has failed to start 3 times" in report.body and "ended before it started building" in report.body
    assert "look at its output" in report.body  # the launcher's hint


def test_a_launch_refused_for_the_dyno_limit_again_and_again_is_reported_once(clock):
    limit = LaunchError(
        "Heroku launch failed with HTTP 422 (cannot_run_above_limit: Cannot run more than 1 Eco size dynos.; "
        "limit 1, size Eco).",
        status=422,
        error_id="cannot_run_above_limit",
        hint="An app on Eco dynos may run one one-off dyno at a time",
    )
    recording.fail_next(limit, times=10)
    builds.request_build("published")
    for _ in range(6):
        clock.advance(3600)
        sweep.sweep()
    b = build()
    assert b.state == S.QUEUED and b.attempt == 8, "kept: a publish is never dropped"
    (report,) = mail.outbox
    assert "keeps failing to start" in report.subject
    assert "limit 1, size Eco" in report.body and "An app on Eco dynos" in report.body


def test_a_sweeper_whose_clock_runs_ahead_does_not_time_out_a_healthy_build(monkeypatch, settings):
    """Defect 7 (no clock fixture: the real clocks). Ages are judged against the database's clock."""
    from django.utils import timezone

    running(None)
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(hours=4))  # BUILD_TIMEOUT is 3 h
    sweep.sweep()
    assert build().state == S.RUNNING and build().error == ""


def test_a_request_from_a_process_whose_clock_runs_ahead_is_not_hidden_from_the_sweep(monkeypatch):
    from django.utils import timezone

    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(hours=1))  # the web process's clock
    request_id = builds.record_request("published by a web dyno that died", dispatch_after_commit=False)
    monkeypatch.setattr(timezone, "now", real_now)
    monkeypatch.setattr(sweep, "UNATTACHED_GRACE", 0)
    sweep.sweep()
    assert BuildRequest.objects.get(pk=request_id).build is not None


def test_the_database_clock_is_aware_and_close(db):
    from django.utils import timezone

    at = builds.now()
    assert timezone.is_aware(at) and abs((at - timezone.now()).total_seconds()) < 5


def test_concurrent_sweeps_do_not_each_claim_the_same_attachment(clock, monkeypatch):
    """Two passes both see the request unattached; the one whose update finds it attached says nothing."""
    request_id = builds.record_request("published", dispatch_after_commit=False)
    find_target = builds._attach_target

    def another_sweep_attaches_first(at):
        target, outcome = find_target(at)
        BuildRequest.objects.filter(pk=request_id).update(build_id=target)
        return target, outcome

    monkeypatch.setattr(builds, "_attach_target", another_sweep_attaches_first)
    assert builds.attach_requests([request_id]) is None
    assert BuildRequest.objects.get(pk=request_id).build is not None


def test_an_idle_worker_says_it_is_alive_now_and_then(clock, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="publisher.sweep")
    now = [1000.0]
    monkeypatch.setattr(sweep, "_last_logged", None)
    monkeypatch.setattr(sweep.time, "monotonic", lambda: now[0])
    for at in (1000.0, 1100.0, 1400.0):  # logged, quiet (100 s later), logged (300 s after the first)
        now[0] = at
        sweep.sweep()
    assert caplog.text.count("Sweep: idle") == 2
