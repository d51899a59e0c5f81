"""Is my change live? ``publisher.pagestatus`` words where a page's last publish stands (DESIGN §2): live once a
build that started at or after it has succeeded and went live. Builds are created here directly, in the states
each case needs; the clock is ``builds.now``, the one publishes and claims are written with."""

import zoneinfo
from datetime import timedelta

import pytest
from django.utils import timezone

from publisher.models import Build, BuildState, Page
from publisher.pagestatus import StatusKind, publish_status, publish_statuses

from .test_admin_builds import run_one_build

pytestmark = pytest.mark.django_db
S = BuildState


def hm(moment):
    return f"{timezone.localtime(moment):%H:%M}"


@pytest.fixture
def published(clock):
    """A page published at ``clock.now``; the clock then moves on a minute."""
    page = Page(slug="hello", title="Hello", body="b")
    page.publish()
    clock.advance(60)
    return page


def build(state, *, started=None, finished=None, went_live=True, **fields):
    if state == S.SUCCEEDED:
        fields.setdefault("release", f"20261201T140200-b{Build.objects.count() + 1}-a1")
        fields.setdefault("published", {"went_live": went_live, "destination": "/srv/site"})
    return Build.objects.create(state=state, started_at=started, finished_at=finished, **fields)


def status(page):
    return publish_status(Page.objects.get(pk=page.pk))


def test_a_page_never_published_is_a_draft():
    page = Page(slug="draft", title="Draft")
    page.save()
    assert (status(page).kind, str(status(page))) == (StatusKind.DRAFT, "not published yet")


def test_waiting_for_the_queued_build(published, clock):
    queued = build(S.QUEUED, next_attempt_at=clock.now)
    assert status(published).kind == StatusKind.WAITING
    assert str(status(published)) == f"waiting for build #{queued.pk}"
    assert status(published).build_id == queued.pk


def test_waiting_for_the_build_that_is_starting(published, clock):
    """A launched build has not read content yet: it is the one that will carry the change."""
    starting = build(S.LAUNCHED, launched_at=clock.now)
    build(S.QUEUED)
    assert str(status(published)) == f"waiting for build #{starting.pk}"


def test_a_running_build_that_started_before_the_publish_does_not_carry_it(published, clock):
    early = published.published_at - timedelta(seconds=1)
    build(S.RUNNING, started=early, pages_done=10, pages_total=100)
    queued = build(S.QUEUED)
    assert str(status(published)) == f"waiting for build #{queued.pk}"


def test_waiting_with_no_build_yet(published):
    assert (status(published).kind, str(status(published))) == (StatusKind.WAITING, "waiting for the next build")


def test_building_with_its_percentage(published, clock):
    running = build(S.RUNNING, started=clock.now, pages_done=62, pages_total=100)
    got = status(published)
    assert (got.kind, str(got)) == (StatusKind.BUILDING, f"building in #{running.pk} (62 %)")
    Build.objects.filter(pk=running.pk).update(pages_done=0, pages_total=None)
    assert str(status(published)) == f"building in #{running.pk}"


def test_a_build_that_started_at_the_publish_carries_it(published):
    """At or after: the claim is committed before the build reads content."""
    running = build(S.RUNNING, started=published.published_at, pages_done=1, pages_total=3)
    assert str(status(published)) == f"building in #{running.pk} (33 %)"


def test_live_since_the_first_build_that_went_live_after_it(published, clock):
    build(S.SUCCEEDED, started=published.published_at - timedelta(minutes=5), finished=clock.now)  # too early
    first = build(S.SUCCEEDED, started=clock.now, finished=clock.now + timedelta(minutes=2))
    build(S.SUCCEEDED, started=clock.now + timedelta(minutes=10), finished=clock.now + timedelta(minutes=12))
    got = status(published)
    assert got.kind == StatusKind.LIVE and got.build_id == first.pk
    assert str(got) == f"live since {hm(first.finished_at)} (release {first.release})"


@pytest.mark.postgres
def test_a_success_that_did_not_go_live_does_not_count(published, clock):
    build(S.SUCCEEDED, started=clock.now, finished=clock.now, went_live=False)
    assert status(published).kind == StatusKind.WAITING


@pytest.mark.postgres
def test_a_build_recorded_before_destinations_said_where_counts_by_its_release(published, clock):
    old = Build.objects.create(state=S.SUCCEEDED, started_at=clock.now, finished_at=clock.now, release="r1")
    assert status(published).build_id == old.pk and status(published).kind == StatusKind.LIVE


def test_a_new_publish_waits_again(published, clock):
    build(S.SUCCEEDED, started=clock.now, finished=clock.now)
    assert status(published).kind == StatusKind.LIVE
    clock.advance(60)
    published.body = "second version"
    published.publish()
    queued = build(S.QUEUED)
    assert str(status(published)) == f"waiting for build #{queued.pk}"


def test_failed_and_retried_at_a_time(published, clock):
    failed = build(S.FAILED, started=clock.now, finished=clock.now, error="Interrupted by the platform (SIGTERM)")
    retry_at = timezone.now() + timedelta(minutes=10)
    build(S.QUEUED, next_attempt_at=retry_at)
    got = status(published)
    assert got.kind == StatusKind.FAILED and got.build_id == failed.pk
    assert str(got) == f"build #{failed.pk} failed — will be retried at {hm(retry_at)}"


def test_failed_and_retrying_now(published, clock):
    failed = build(S.LOST, started=clock.now, finished=clock.now)
    retry = build(S.LAUNCHING)
    assert str(status(published)) == f"build #{failed.pk} was lost — retrying in build #{retry.pk}"


def test_failed_and_not_retried(published, clock):
    failed = build(S.FAILED, started=clock.now, finished=clock.now, error="RenderError: ...")
    assert str(status(published)) == (
        f"build #{failed.pk} failed and is not retried automatically — publish again, or ask an operator"
    )


def test_cancelled(published, clock):
    cancelled = build(S.CANCELLED, started=clock.now, finished=clock.now)
    queued = build(S.QUEUED, next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert str(status(published)) == f"build #{cancelled.pk} was cancelled — retrying in build #{queued.pk}"


def test_a_later_running_build_reads_it_again_after_a_failure(published, clock):
    build(S.FAILED, started=clock.now, finished=clock.now)
    running = build(S.RUNNING, started=clock.now + timedelta(seconds=5), pages_done=1, pages_total=2)
    assert str(status(published)) == f"building in #{running.pk} (50 %)"


def test_a_build_whose_launch_failed_says_when_it_is_retried(published, clock):
    retry_at = timezone.now() + timedelta(minutes=3)
    queued = build(S.QUEUED, attempt=2, error="Heroku rejected the API key (401)", next_attempt_at=retry_at)
    got = status(published)
    assert got.kind == StatusKind.FAILED
    assert str(got) == f"build #{queued.pk} could not start — will be retried at {hm(retry_at)}"
    assert "API key" not in str(got), "the platform's error is for operators"


def test_taken_down_waiting_building_and_done(published, clock):
    build(S.SUCCEEDED, started=clock.now, finished=clock.now)
    clock.advance(60)
    published.unpublish()
    queued = build(S.QUEUED)
    assert (status(published).kind, str(status(published))) == (
        StatusKind.WAITING,
        f"taken down; off the site once build #{queued.pk} finishes",
    )
    Build.objects.filter(pk=queued.pk).delete()
    running = build(S.RUNNING, started=clock.now, pages_done=3, pages_total=4)
    assert str(status(published)) == f"taken down; off the site once build #{running.pk} finishes (75 %)"
    Build.objects.filter(pk=running.pk).delete()
    done = build(S.SUCCEEDED, started=clock.now, finished=clock.now + timedelta(minutes=1))
    assert (status(published).kind, str(status(published))) == (
        StatusKind.TAKEN_DOWN,
        f"taken down; off the site since {hm(done.finished_at)}",
    )


def test_taken_down_and_failed(published, clock):
    published.unpublish()
    failed = build(S.FAILED, started=clock.now, finished=clock.now)
    assert str(status(published)) == (
        f"taken down; build #{failed.pk} failed and is not retried automatically — publish again, or ask an operator"
    )


def test_times_are_in_the_admins_time_zone_and_say_the_day_when_not_today(published, clock, settings):
    yesterday = timezone.now() - timedelta(days=1)
    Page.objects.filter(pk=published.pk).update(published_at=yesterday - timedelta(minutes=5))
    done = build(S.SUCCEEDED, started=yesterday - timedelta(minutes=1), finished=yesterday)
    with timezone.override(zoneinfo.ZoneInfo("Asia/Kolkata")):  # UTC+05:30: the minutes differ from UTC's
        local = timezone.localtime(yesterday)
        assert str(status(published)) == f"live since {local.day} {local:%b} {local:%H:%M} (release {done.release})"
        Build.objects.filter(pk=done.pk).update(finished_at=timezone.now())
        assert str(status(published)) == f"live since {hm(timezone.now())} (release {done.release})"
        assert hm(timezone.now()) != f"{timezone.now():%H:%M}"


@pytest.mark.postgres
def test_statuses_for_many_pages_in_two_queries(clock, django_assert_num_queries):
    pages = []
    for i in range(40):
        page = Page(slug=f"p{i}", title=f"P{i}")
        page.publish() if i % 4 else page.save()
        pages.append(page)
        clock.advance(10)
        if i == 20:
            build(S.SUCCEEDED, started=clock.now, finished=clock.now)
            clock.advance(10)
    build(S.FAILED, started=clock.now, finished=clock.now)
    build(S.QUEUED, next_attempt_at=timezone.now() + timedelta(minutes=5))
    with django_assert_num_queries(2):
        statuses = publish_statuses(pages)
    kinds = {kind: sum(1 for s in statuses.values() if s.kind == kind) for kind in StatusKind}
    assert kinds[StatusKind.DRAFT] == 10 and kinds[StatusKind.LIVE] == 15 and kinds[StatusKind.FAILED] == 15
    assert statuses == {page.pk: publish_status(page) for page in pages}


def test_no_query_when_nothing_was_ever_published(django_assert_num_queries):
    page = Page(slug="d", title="D")
    page.save()
    with django_assert_num_queries(0):
        assert publish_statuses([page, Page(slug="unsaved", title="U")]) == {page.pk: publish_status(page)}


def test_only_statuses_that_change_by_themselves_are_moving(published, clock):
    """The form polls while ``moving``: a build waiting, running or about to be retried; not once settled."""
    assert status(published).moving  # waiting for the next build
    queued = build(S.QUEUED)
    assert status(published).moving
    Build.objects.filter(pk=queued.pk).delete()
    failed = build(S.FAILED, started=clock.now, finished=clock.now)
    assert not status(published).moving, "failed and not retried: nothing will change by itself"
    build(S.QUEUED, next_attempt_at=timezone.now() + timedelta(minutes=1))
    assert status(published).moving
    Build.objects.filter(pk=failed.pk).update(state=S.SUCCEEDED, release="r", published={"went_live": True})
    assert status(published).kind == StatusKind.LIVE and not status(published).moving
    drafted = Page(slug="d", title="D")
    drafted.save()
    assert not status(drafted).moving


# --- In a real browser: the form's status line follows the build without a reload -----------------------------


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_status_line_follows_the_build_in_a_browser(web, editor, browser_page, tmp_path):
    from .browser import log_in, shot

    page = browser_page
    log_in(page, web)
    page.goto(f"{web}/admin/publisher/page/add/")
    page.fill("#id_title", "Followed")
    page.fill("#id_slug", "followed")
    page.fill("#id_body", "Watch me go live.")
    page.click("#save-draft-button")
    assert page.locator("#page-status-words").inner_text() == "not published yet"
    assert Page.objects.get(slug="followed").live_slug is None, "a saved draft is not live"
    page.click("#publish-button")
    first = page.locator("#page-status-words").inner_text()
    assert first.startswith(("waiting for build #", "building in #", "live since")), first
    page.fill("#id_body", "Typing while it builds.")  # the status line changes; the field keeps what was typed
    page.wait_for_function(
        "document.getElementById('page-status-words').textContent.startsWith('live since')", timeout=60_000
    )
    build = Build.objects.get(state=S.SUCCEEDED)
    assert page.locator("#page-status-words").inner_text().endswith(f"(release {build.release})")
    assert page.locator("#id_body").input_value() == "Typing while it builds."
    shot(page, tmp_path, "status-followed-the-build")


# --- After a rollback: what the live release carries -------------------------------------------------------------


def roll_back_to(build):
    from publisher import status as site_status
    from publisher.destinations import get_destination

    get_destination().rollback(build.release)
    site_status.forget_live_site()


@pytest.fixture
def live_site(site_root):
    from publisher import status as site_status

    site_status.forget_live_site()
    yield site_root
    site_status.forget_live_site()


def edit(page, body):
    page = Page.objects.get(pk=page.pk)
    page.body = body
    page.save()
    page.publish()
    return page


def test_a_rollback_to_a_release_from_before_the_change_takes_it_off_the_site(live_site):
    """Rolling back makes the older release's reading of the content live: the edit a later build carried is off the
    site until the next build goes live, and the status says so, naming the release and the build."""
    page = Page(slug="hello", title="Hello", body="first")
    page.publish()
    first = run_one_build()
    page = edit(page, "second")
    second = run_one_build()
    assert (status(page).kind, status(page).build_id) == (StatusKind.LIVE, second.pk)
    assert str(status(page)).endswith(f"(release {second.release})")

    roll_back_to(first)
    got = status(page)
    assert (got.kind, got.build_id, got.moving) == (StatusKind.ROLLED_BACK, first.pk, False)
    assert str(got) == (
        f"off the site again: the site was rolled back to release {first.release} (build #{first.pk}), from before "
        "this change — the next build puts it back (publish again, or ask an operator to rebuild)"
    )
    assert b"second" not in (live_site / "current" / "hello" / "index.html").read_bytes(), "and indeed it is not"

    third = run_one_build()
    assert (status(page).kind, status(page).build_id) == (StatusKind.LIVE, third.pk)


def test_a_page_older_than_the_release_rolled_back_to_stays_live_and_names_that_release(live_site):
    older = Page(slug="older", title="Older", body="o")
    older.publish()
    first = run_one_build()
    newer = Page(slug="newer", title="Newer", body="n")
    newer.publish()
    run_one_build()
    roll_back_to(first)
    statuses = publish_statuses([Page.objects.get(pk=older.pk), Page.objects.get(pk=newer.pk)])
    assert (statuses[older.pk].kind, statuses[older.pk].build_id) == (StatusKind.LIVE, first.pk)
    assert str(statuses[older.pk]).endswith(f"(release {first.release})")
    assert statuses[newer.pk].kind == StatusKind.ROLLED_BACK


def test_a_page_taken_down_is_back_on_the_site_after_a_rollback_to_before(live_site):
    page = Page(slug="gone", title="Gone", body="g")
    page.publish()
    first = run_one_build()
    page = Page.objects.get(pk=page.pk)
    page.unpublish()
    run_one_build()
    assert status(page).kind == StatusKind.TAKEN_DOWN
    roll_back_to(first)
    got = status(page)
    assert got.kind == StatusKind.ROLLED_BACK
    assert str(got) == (
        f"taken down, but the site was rolled back to release {first.release} (build #{first.pk}), from before it "
        "was taken down: the page may be back on the site until the next build"
    )
    assert (live_site / "current" / "gone" / "index.html").exists(), "and indeed it is"


def test_a_pointer_to_a_release_no_build_here_recorded_leaves_the_builds_to_decide(live_site):
    """A live pointer whose build id names another release here (a copied site root, a reused database) is not
    trusted: the statuses are the builds' alone, as before any rollback."""
    page = Page(slug="hello", title="Hello", body="first")
    page.publish()
    first = run_one_build()
    page = edit(page, "second")
    second = run_one_build()
    roll_back_to(first)
    Build.objects.filter(pk=first.pk).update(release="20261201T000000-b999-a1")
    assert (status(page).kind, status(page).build_id) == (StatusKind.LIVE, second.pk)


def test_after_a_rollback_to_a_build_older_than_every_publish_one_more_query(live_site, django_assert_num_queries):
    """The live build is looked up among the builds that went live since the oldest publish; one query more only
    when it is older than all of them (every page here is covered: the open builds are not asked for)."""
    first = run_one_build()  # before any publish: it is not among the builds that went live since
    pages = [Page(slug=f"p{i}", title=f"P{i}") for i in range(5)]
    for page in pages:
        page.publish()
    run_one_build()
    with django_assert_num_queries(1):
        assert {s.kind for s in publish_statuses(pages).values()} == {StatusKind.LIVE}
    roll_back_to(first)
    with django_assert_num_queries(2):
        statuses = publish_statuses(pages)
    assert {(s.kind, s.build_id) for s in statuses.values()} == {(StatusKind.ROLLED_BACK, first.pk)}


def test_a_pointer_cached_before_the_newest_build_went_live_is_read_again(live_site):
    """The pointer is cached a few seconds; one read before the build that carried a change went live names the
    build before it, which must not read as a rollback."""
    page = Page(slug="hello", title="Hello", body="first")
    page.publish()
    run_one_build()
    page = edit(page, "second")
    from publisher import status as site_status

    first_live, _problem = site_status.live_site()  # as the banner of any admin page does: now cached
    second = run_one_build()
    assert site_status.live_site()[0] == first_live, "still cached"
    assert (status(page).kind, status(page).build_id) == (StatusKind.LIVE, second.pk)


def test_the_builds_that_went_live_since_a_publish_are_an_index_range_whatever_the_history():
    """With months of builds the page list asks for the few since its oldest publish, not every success (SQLite's
    plan names the index; 46 ms -> 5 ms for 100 pages against 100,000 past builds)."""
    from django.db import connection

    from publisher.pagestatus import went_live_since

    if connection.vendor != "sqlite":
        pytest.skip("the plan checked is SQLite's (PostgreSQL picks by its statistics)")
    plan = went_live_since(timezone.now()).explain()
    assert "publisher_build_state_started" in plan and "TEMP B-TREE" not in plan, plan


def test_the_models_and_the_migrations_agree():
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("makemigrations", "publisher", "--check", "--dry-run", stdout=out, stderr=out)
