"""The status snapshot (``publisher.status``): the active build with progress and ETA, the queued build, the live
release, the warnings that need a person; and its JSON endpoint and banner in the admin."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core import checks
from django.urls import reverse

from publisher import builds, health, runner, status
from publisher.destinations import DestinationError
from publisher.launchers import recording
from publisher.models import Build, BuildRequest, BuildState, Page, SweepStatus

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
S = BuildState
STATUS_URL = "/admin/publisher/status.json"


@pytest.fixture(autouse=True)
def fresh_live_cache():
    status.forget_live_site()
    yield
    status.forget_live_site()


@pytest.fixture
def limits(settings):
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "BUILD_LOST_AFTER": 120,
        "BUILD_STALL_AFTER": 900,
        "BUILD_MAX_ATTEMPTS": 3,
    }


@pytest.fixture
def swept(clock):
    """The sweep ran just now (no "sweep silent" warning unless a test moves the clock)."""
    SweepStatus.objects.create(ran_at=clock.now, passes=1)


def kinds(snap):
    return [w.kind for w in snap.warnings]


def running_build(clock, *, done=0, total=None):
    builds.request_build("published")
    launch = recording.launches[-1]
    claim = builds.claim(launch["build_id"], launch["token"])
    builds.heartbeat(claim, done=done, total=total, moved=True)
    return Build.objects.get(pk=claim.build_id)


def past_success(clock, *, seconds, pages):
    """A finished successful build that took ``seconds`` for ``pages`` pages (its row only)."""
    start = clock.now - timedelta(hours=1)
    return Build.objects.create(
        state=S.SUCCEEDED, started_at=start, finished_at=start + timedelta(seconds=seconds), pages_done=pages
    )


# --- The active build, its progress and ETA ---------------------------------------------------------------------


def test_nothing_happening(clock, swept, site_root):
    snap = status.snapshot()
    assert snap.active is None and snap.queued is None and snap.live is None
    assert snap.warnings == [] and not snap.is_open


def test_a_running_build_with_progress_percentage_elapsed_and_where(clock, swept, site_root):
    build = running_build(clock, done=400, total=1000)
    clock.advance(75)
    active = status.snapshot().active
    assert (active.id, active.state, active.pages_done, active.pages_total) == (build.pk, "running", 400, 1000)
    assert active.percent == 40 and active.pages_words == "400 / 1,000 pages"
    assert active.elapsed == 75 and active.elapsed_words == "1 min 15 s"
    assert active.where == f"recorded launch {build.handle['id']}"
    assert active.eta is None, "no past build to learn from"


def test_eta_from_the_median_pages_per_second_of_recent_successes(clock, swept, site_root):
    for seconds, pages in [(100, 1000), (100, 2000), (100, 3000), (10, 0)]:  # 10, 20, 30 pages/s; one empty
        past_success(clock, seconds=seconds, pages=pages)
    running_build(clock, done=400, total=1000)
    active = status.snapshot().active
    assert active.eta == 30, "600 pages left at the median 20 pages a second"
    assert active.eta_words == "30 s"


def test_an_eta_under_five_seconds_reads_a_few_seconds(clock, swept, site_root):
    past_success(clock, seconds=100, pages=1000)  # 10 pages/s
    running_build(clock, done=970, total=1000)
    active = status.snapshot().active
    assert (active.eta, active.eta_words) == (3, "a few seconds")


def test_eta_from_the_median_duration_when_the_page_count_is_not_known_yet(clock, swept, site_root):
    for seconds in (100, 200, 300):
        past_success(clock, seconds=seconds, pages=10)
    running_build(clock)
    clock.advance(50)
    assert status.snapshot().active.eta == 150, "median duration 200 s, 50 s elapsed"


def test_only_the_last_few_successes_count_for_the_eta(clock, swept, site_root):
    for _ in range(status.ETA_FROM_LAST):
        past_success(clock, seconds=100, pages=100)  # 1 page/s, the recent ones
    Build.objects.filter(pk=Build.objects.order_by("pk").first().pk).update(pages_done=100_000)  # the oldest
    past_success(clock, seconds=100, pages=100)
    running_build(clock, done=0, total=60)
    assert status.snapshot().active.eta == 60


def test_a_queued_build_and_how_many_requests_it_holds(clock, swept, site_root):
    active = running_build(clock, done=1, total=10)
    for reason in ("a", "b", "c"):
        builds.request_build(reason)
    snap = status.snapshot()
    assert snap.active.id == active.pk
    queued = Build.objects.get(state=S.QUEUED)
    assert (snap.queued.id, snap.queued.requests) == (queued.pk, 3)
    assert snap.is_open


# --- Warnings ---------------------------------------------------------------------------------------------------


def queued_after_a_failed_launch(*, attempt=2, status_code=None, needs_operator=False, error="Launch failed: boom"):
    build = Build.objects.create(state=S.QUEUED, attempt=attempt, error=error, next_attempt_at=builds.now())
    Build.objects.filter(pk=build.pk).update(error_status=status_code, needs_operator=needs_operator)
    BuildRequest.objects.create(reason="published", build=build)
    return build


@pytest.mark.parametrize("code", [401, 403])
def test_a_rejected_key_says_what_to_set(clock, swept, site_root, code):
    build = queued_after_a_failed_launch(status_code=code, needs_operator=True)
    (warning,) = status.snapshot().warnings
    assert warning.kind == status.WarningKind.KEY_REJECTED and warning.build_id == build.pk
    assert "the Heroku key was rejected — set HEROKU_API_KEY" in warning.message


def test_another_launch_error_that_needs_a_person(clock, swept, site_root):
    queued_after_a_failed_launch(status_code=404, needs_operator=True)
    (warning,) = status.snapshot().warnings
    assert warning.kind == status.WarningKind.NEEDS_OPERATOR and "(HTTP 404)" in warning.message


def test_a_queued_build_retrying_its_launch(clock, swept, site_root):
    queued_after_a_failed_launch(attempt=3)
    (warning,) = status.snapshot().warnings
    assert warning.kind == status.WarningKind.LAUNCH_RETRYING
    assert "failed to start 2 times" in warning.message and "tried again at" in warning.message


def test_a_first_attempt_without_error_is_no_warning(clock, swept, site_root):
    queued_after_a_failed_launch(attempt=1, error="")
    assert status.snapshot().warnings == []


def test_the_last_build_that_needed_a_person_is_still_said_when_nothing_is_open(clock, swept, site_root):
    build = Build.objects.create(state=S.CANCELLED, attempt=4, error="Launch failed: 401")
    Build.objects.filter(pk=build.pk).update(error_status=401, needs_operator=True)
    assert kinds(status.snapshot()) == [status.WarningKind.KEY_REJECTED]
    Build.objects.create(state=S.SUCCEEDED)
    assert status.snapshot().warnings == [], "a later success means the key works again"


def test_repeated_failures_stop_retries(clock, swept, site_root, limits):
    Build.objects.create(state=S.SUCCEEDED)
    for state in (S.FAILED, S.LOST):
        Build.objects.create(state=state, error="x")
    assert status.snapshot().warnings == [], "two failures: below BUILD_MAX_ATTEMPTS (3)"
    Build.objects.create(state=S.FAILED, error="x")
    (warning,) = status.snapshot().warnings
    assert warning.kind == status.WarningKind.REPEATED_FAILURES and "last 3 builds failed" in warning.message


def worker_schedule(clock, *, running):
    """The sweep's django-q2 schedule as a running worker keeps it (``next_run`` within the minute ahead), or as
    it stays when no worker runs it (Heroku Scheduler runs ``sweepbuilds`` instead)."""
    from django_q.models import Schedule

    from publisher import sweep

    sweep.ensure_schedule()
    next_run = clock.now + timedelta(seconds=30) if running else clock.now - timedelta(hours=1)
    Schedule.objects.filter(name=sweep.SCHEDULE_NAME).update(next_run=next_run)


def test_the_sweep_silent_for_three_intervals(clock, site_root):
    assert kinds(status.snapshot()) == [status.WarningKind.SWEEP_SILENT], "never ran"
    SweepStatus.objects.create(ran_at=clock.now, passes=1)
    clock.advance(3 * status.SWEEP_INTERVAL - 1)
    worker_schedule(clock, running=True)
    assert status.snapshot().warnings == []
    clock.advance(1)
    worker_schedule(clock, running=True)
    (warning,) = status.snapshot().warnings
    assert warning.kind == status.WarningKind.SWEEP_SILENT and "has not run since" in warning.message
    assert warning.message.endswith("ago); a worker runs its schedule every 1 min.")


def test_with_heroku_scheduler_instead_of_a_worker_the_sweep_is_silent_after_three_of_its_intervals(clock, site_root):
    """No worker runs the schedule (the Procfile's worker is off; Heroku Scheduler runs ``sweepbuilds`` every 10
    minutes, DESIGN §7): a sweep 10 minutes old is on time, as the doctor says, and silent only after 30."""
    from publisher import doctor

    SweepStatus.objects.create(pk=1, ran_at=clock.now, passes=1)  # the one row the sweep writes (the doctor reads pk 1)
    clock.advance(29 * 60)
    worker_schedule(clock, running=False)
    assert status.snapshot().warnings == []
    assert [f.level for f in doctor.sweep_findings()] == [doctor.Level.OK]
    clock.advance(60 + 1)
    (warning,) = status.snapshot().warnings
    assert warning.kind == status.WarningKind.SWEEP_SILENT
    assert "no worker runs its schedule; with Heroku Scheduler it runs every 10 min" in warning.message
    assert [f.level for f in doctor.sweep_findings()] == [doctor.Level.FAIL]


def test_the_silent_sweep_interval_is_the_schedules(db):
    from django_q.models import Schedule

    from publisher import sweep

    sweep.ensure_schedule()
    schedule = Schedule.objects.get(name=sweep.SCHEDULE_NAME)
    assert (schedule.schedule_type, schedule.minutes * 60) == (Schedule.MINUTES, status.SWEEP_INTERVAL)


def test_a_stalled_build(clock, swept, site_root, limits):
    build = running_build(clock, done=5, total=100)
    for _ in range(9):  # heartbeats keep coming, pages do not move
        clock.advance(100)
        builds.heartbeat(builds.Claim(build.pk, build.launch_token, 1, None), done=5)
    SweepStatus.objects.update(ran_at=clock.now)
    (warning,) = status.snapshot().warnings
    assert warning.kind == status.WarningKind.STALLED and warning.build_id == build.pk
    assert "no page done since" in warning.message and "15 min ago" in warning.message


def test_a_build_not_heard_from_says_so_rather_than_a_frozen_count(clock, swept, site_root, limits):
    build = running_build(clock, done=0, total=100_004)
    clock.advance(119)
    SweepStatus.objects.update(ran_at=clock.now)
    assert status.snapshot().warnings == []
    clock.advance(1)
    SweepStatus.objects.update(ran_at=clock.now)
    (warning,) = status.snapshot().warnings
    assert warning.kind == status.WarningKind.NOT_HEARD_FROM and warning.build_id == build.pk
    assert f"Build #{build.pk} has not been heard from since" in warning.message and "2 min ago" in warning.message
    past_success(clock, seconds=10, pages=10)
    assert status.snapshot().active.eta is None, "no ETA for a build that may be gone"


def test_configuration_problems_with_their_hints(clock, swept, site_root, monkeypatch):
    problem = checks.Error("HEROKU_APP_NAME is not set.", hint="Set HEROKU_APP_NAME.", id="publisher.E999")
    monkeypatch.setattr(health, "configuration_problems", lambda **kwargs: [problem])
    (warning,) = status.snapshot().warnings
    assert warning.kind == status.WarningKind.CONFIGURATION
    assert (warning.message, warning.hint) == ("HEROKU_APP_NAME is not set.", "Set HEROKU_APP_NAME.")


# --- The live site ----------------------------------------------------------------------------------------------


def publish_once():
    Page(slug="alpha", title="Alpha", body="a").publish()
    builds.request_build("x")
    launch = recording.launches[-1]
    runner.run(builds.claim(launch["build_id"], launch["token"]))
    return Build.objects.get(pk=launch["build_id"])


def test_the_live_release_where_and_since_when(swept, site_root, settings):
    build = publish_once()
    live = status.snapshot().live
    assert (live.release, live.build, live.where) == (build.release, build.pk, str(site_root))
    assert live.switched_at is not None and live.url == settings.PUBLISHER.get(
        "SITE_URL", "http://127.0.0.1:8000/site/"
    )


class Unreadable:
    name = "unreadable"
    calls = 0

    def describe(self):
        return "s3://bucket/"

    def live_release(self):
        type(self).calls += 1
        raise DestinationError("AccessDenied reading live.json", code="AccessDenied")


def test_an_unreadable_destination_is_a_warning_read_again_only_after_a_few_seconds(clock, swept, monkeypatch):
    from publisher import destinations

    monkeypatch.setattr(destinations, "get_destination", Unreadable)
    snap = status.snapshot()
    (warning,) = snap.warnings
    assert snap.live is None and warning.kind == status.WarningKind.LIVE_UNREADABLE
    assert "AccessDenied reading live.json" in warning.message
    status.snapshot()
    assert Unreadable.calls == 1, "the pointer (and its error) is cached per process"
    status.forget_live_site()
    status.snapshot()
    assert Unreadable.calls == 2


# --- Queries and JSON -------------------------------------------------------------------------------------------


def test_a_handful_of_queries_whatever_the_history(swept, site_root, django_assert_num_queries, clock):
    for _ in range(30):
        past_success(clock, seconds=10, pages=10)
        Build.objects.create(state=S.FAILED, error="x")
    running_build(clock, done=1, total=10)
    builds.request_build("queued")
    clock.advance(1)
    # the open builds with their request counts, the last successes, two for the failures since the last success,
    # the sweep's status (the clock is the test's: in production one more, the database's clock)
    with django_assert_num_queries(5):
        snap = status.snapshot()
    assert snap.active and snap.queued and snap.active.eta is not None


def test_with_the_database_clock_and_nothing_open(site_root, django_assert_num_queries):
    SweepStatus.objects.create(ran_at=builds.now())
    with django_assert_num_queries(6):  # the clock, the open builds, the last build, two for failures, the sweep
        status.snapshot()
    builds.request_build("x")
    with django_assert_num_queries(5):  # launched, not running: no ETA, no last build to look at
        status.snapshot()


def test_the_json_keys(clock, swept, site_root):
    running_build(clock, done=3, total=4)
    builds.request_build("queued")
    queued_after = Build.objects.get(state=S.QUEUED)
    Build.objects.filter(pk=queued_after.pk).update(attempt=2, error="Launch failed")
    body = status.snapshot().as_json()
    assert set(body) == {"at", "open", "active", "queued", "live", "warnings"}
    assert set(body["active"]) == {
        "id",
        "state",
        "pages_done",
        "pages_total",
        "percent",
        "started_at",
        "elapsed",
        "eta",
        "where",
        "heartbeat_at",
        "requests",
    }
    assert set(body["queued"]) == {"id", "requests", "attempt", "next_attempt_at"}
    assert body["warnings"][0] == {
        "kind": "launch_retrying",
        "message": body["warnings"][0]["message"],
        "hint": "The build's page says what went wrong.",
        "build_id": queued_after.pk,
    }
    assert body["active"]["percent"] == 75 and body["at"].endswith("+00:00")


# --- The endpoint -----------------------------------------------------------------------------------------------


def staff(django_user_model, client, *codenames, name="staff"):
    user = django_user_model.objects.create_user(name, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


def test_the_endpoint_is_for_staff_who_may_view_builds(client, django_user_model, site_root):
    assert reverse("admin:publisher_status") == STATUS_URL
    anonymous = client.get(STATUS_URL)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")
    user = django_user_model.objects.create_user("visitor", password="pw")
    client.force_login(user)
    assert client.get(STATUS_URL).status_code == 403, "not staff"
    client.logout()
    assert staff(django_user_model, client, "view_page").get(STATUS_URL).status_code == 403, "cannot view builds"
    client.logout()
    response = staff(django_user_model, client, "view_build", name="viewer").get(STATUS_URL)
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    assert response.json()["live"] is None and "banner_html" in response.json()


def test_the_endpoint_answers_only_get(admin_client, site_root):
    assert admin_client.post(STATUS_URL).status_code == 405


def test_the_endpoint_renders_the_banner_inside(admin_client, clock, swept, site_root):
    build = running_build(clock, done=62, total=100)
    body = admin_client.get(STATUS_URL).json()
    assert body["active"]["id"] == build.pk and body["open"] is True
    html = body["banner_html"]
    assert '<progress class="publisher-progress" max="100" value="62">' in html and "(62 %)" in html
    assert 'id="publisher-live"' in html and "No release is live yet." in html
    assert "recorded launch" not in html, "where a build runs is for the build's page"
