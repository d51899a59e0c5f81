"""The build list and the build page in the admin: columns, details, the log, and the buttons (rebuild, cancel, roll
back), each behind its own permission."""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from publisher import builds, runner, status
from publisher.launchers import recording
from publisher.models import Build, BuildRequest, BuildState, Page
from publisher.release import SiteRoot

pytestmark = pytest.mark.django_db
S = BuildState
CHANGELIST = reverse("admin:publisher_build_changelist")
REBUILD = reverse("admin:publisher_build_rebuild")


@pytest.fixture(autouse=True)
def fresh_live_cache():
    status.forget_live_site()


def change_url(build):
    return reverse("admin:publisher_build_change", args=[build.pk])


def staff(django_user_model, client, *codenames, name="editor"):
    user = django_user_model.objects.create_user(name, password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="publisher", codename__in=["view_build", *codenames])
    )
    client.force_login(user)
    return client


def run_one_build(reason="x"):
    builds.request_build(reason)
    launch = recording.launches[-1]
    runner.run(builds.claim(launch["build_id"], launch["token"]))
    return Build.objects.get(pk=launch["build_id"])


# --- Moved from test_admin.py (issues 8 and 9) ------------------------------------------------------------------


def test_build_history_and_cancel(admin_client):
    builds.request_build("x")
    b = Build.objects.get()
    html = admin_client.get(CHANGELIST).content.decode()
    assert f'<a href="{change_url(b)}">#{b.pk}</a>' in html
    assert '<span class="publisher-state publisher-state--launched">launched</span>' in html
    assert admin_client.get(change_url(b)).status_code == 200
    response = admin_client.post(CHANGELIST, {"action": "cancel_selected", "_selected_action": [b.pk]}, follow=True)
    assert f"Build #{b.pk} cancelled" in response.content.decode()
    assert Build.objects.get().state == "cancelled"


def test_the_build_history_says_where_the_site_went(admin_client, site_root):
    """Issue 9: the live release, its build, where, and per build what was uploaded and copied."""
    Page(slug="alpha", title="Alpha", body="a").publish()
    build = run_one_build()
    assert build.published["destination"] == str(site_root) and build.published["uploaded"] >= 4
    html = admin_client.get(CHANGELIST).content.decode()
    assert f"Live: release <code>{build.release}</code> (build #{build.pk})" in html
    assert f"{build.published['uploaded']:,} written, 0 linked" in html and build.release in html
    page = admin_client.get(change_url(build)).content.decode()
    assert f"{build.published['uploaded']:,} written, 0 linked" in page and f"to {site_root}" in page
    assert build.launch_token not in page and build.launch_token not in html, "the launch token is never shown"


def test_roll_back_to_a_builds_release_needs_its_permission(admin_client, client, django_user_model, site_root):
    """Issue 9: rollback from the admin is the same one pointer write as ``rollbacksite``."""
    Page(slug="alpha", title="Alpha", body="a").publish()
    first, second = run_one_build(), run_one_build()
    assert SiteRoot(site_root).live_name() == second.release
    action = {"action": "roll_back_to_selected", "_selected_action": [first.pk]}

    staff(django_user_model, client)
    assert "roll_back_to_selected" not in client.get(CHANGELIST).content.decode()
    client.post(CHANGELIST, action)
    assert SiteRoot(site_root).live_name() == second.release, "no permission, no rollback"

    response = admin_client.post(CHANGELIST, action, follow=True)
    assert f"The site is back on build #{first.pk}&#x27;s release {first.release}." in response.content.decode()
    assert SiteRoot(site_root).live_name() == first.release
    response = admin_client.post(CHANGELIST, {**action, "_selected_action": [first.pk, second.pk]}, follow=True)
    assert "Select exactly one build" in response.content.decode()


# --- The list ---------------------------------------------------------------------------------------------------


def test_the_list_says_reasons_who_where_when_pages_and_errors(admin_client, django_user_model, clock):
    alice = django_user_model.objects.create_user("alice")
    with builds.collect_outcomes():
        builds.request_build("published “Alpha”", by=alice)
    active = Build.objects.get()
    launch = recording.launches[-1]
    claim = builds.claim(launch["build_id"], launch["token"])
    builds.heartbeat(claim, done=620, total=1000, moved=True)
    for reason in ("published “Beta”", "published “Gamma”"):
        builds.request_build(reason)
    queued = Build.objects.get(state=S.QUEUED)
    clock.advance(125)
    Build.objects.filter(pk=queued.pk).update(attempt=3, error="Launch failed: Heroku said no " + "x" * 200)
    html = admin_client.get(CHANGELIST).content.decode()
    assert "published “Alpha”" in html and "by alice" in html
    assert "published “Beta” (+1 more request)" in html, "the first reason and how many were merged"
    assert f"recorded launch {active.handle['id']}" in html
    assert "620 / 1,000 (62 %)" in html and "2 min 5 s so far" in html
    assert "attempt 3" in html and "Launch failed: Heroku said no" in html
    assert "x" * 69 + "…</span>" in html, "the error is shortened in the list, whole in its title"
    assert "requested " in html and "started " in html


def test_a_finished_build_has_its_duration(admin_client, clock, site_root):
    build = run_one_build()
    Build.objects.filter(pk=build.pk).update(finished_at=build.started_at + status.datetime.timedelta(seconds=3725))
    html = admin_client.get(CHANGELIST).content.decode()
    assert "1 h 2 min" in html and "finished " in html


def test_the_list_costs_the_same_queries_for_many_builds(admin_client, django_assert_max_num_queries, clock):
    def make(n):
        for _ in range(n):
            b = Build.objects.create(state=S.FAILED, error="x", handle={"id": "rec-1"}, launcher="recording")
            BuildRequest.objects.create(reason="r", build=b)
            BuildRequest.objects.create(reason="s", build=b)

    make(3)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        admin_client.get(CHANGELIST)
    make(30)
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert admin_client.get(CHANGELIST).status_code == 200


# --- The page ---------------------------------------------------------------------------------------------------


def test_the_page_shows_the_structured_launch_failure(admin_client):
    build = Build.objects.create(state=S.QUEUED, attempt=2, error="Launch failed: Heroku rejected the API key")
    Build.objects.filter(pk=build.pk).update(
        error_status=401, error_id="unauthorized", error_request_id="req-1234", needs_operator=True
    )
    html = admin_client.get(change_url(build)).content.decode()
    assert "Launch failure" in html
    for value in ("401", "unauthorized", "req-1234", "Launch failed: Heroku rejected the API key"):
        assert value in html
    assert "the Heroku key was rejected — set HEROKU_API_KEY" in html, "and the banner says what to do"


def test_the_page_shows_what_happened_to_the_stop(admin_client, clock):
    build = Build.objects.create(state=S.CANCELLED, cancelled_by="alice", error="Cancelled by alice")
    Build.objects.filter(pk=build.pk).update(stop_requested_at=clock.now, stop_error="Heroku answered 503")
    html = admin_client.get(change_url(build)).content.decode()
    assert 'id="publisher-stop"' in html and "Launch failure" not in html, "no launch failure to show"
    assert "Cancelled by alice, but its process could not be stopped: Heroku answered 503" in html
    Build.objects.filter(pk=build.pk).update(stop_error="", stopped_at=clock.now)
    html = admin_client.get(change_url(build)).content.decode()
    assert "Cancelled by alice; its process was stopped at" in html


def test_the_page_shows_deleted_and_pruned_when_the_destination_says(admin_client):
    build = Build.objects.create(
        state=S.SUCCEEDED,
        release="20260101T000000-b1-a1",
        published={
            "destination": "s3://bucket/site/",
            "went_live": True,
            "uploaded": 12,
            "copied": 3040,
            "deleted": 7,
            "bytes_uploaded": 41_000,
            "pruned": ["20251231T000000-b0-a1"],
        },
    )
    html = admin_client.get(change_url(build)).content.decode()
    assert "12 uploaded, 3,040 copied, 7 deleted, 40.0\xa0KB to s3://bucket/site/" in html
    assert "pruned 1 old release (20251231T000000-b0-a1)" in html
    assert 'href="http://127.0.0.1:8000/site/"' in html


def test_the_page_lists_the_requests(admin_client):
    builds.request_build("first reason")
    builds.request_build("second reason")
    build = Build.objects.get()
    html = admin_client.get(change_url(build)).content.decode()
    assert "first reason" in html and "second reason" in html


# --- The log ----------------------------------------------------------------------------------------------------


@pytest.fixture
def log_dir(tmp_path, settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "LOG_DIR": tmp_path / "log"}
    (tmp_path / "log" / "builds").mkdir(parents=True)
    return tmp_path / "log" / "builds"


def test_a_local_builds_log_tail_escaped_refreshing_without_the_token(admin_client, log_dir):
    builds.request_build("x")
    build = Build.objects.get()
    lines = [f"line {n}" for n in range(1, 301)] + ["<script>alert(1)</script>", f"token={build.launch_token}"]
    (log_dir / f"{build.pk}.log").write_text("\n".join(lines) + "\n")
    html = admin_client.get(change_url(build)).content.decode()
    assert "line 300" in html and "line 103\n" in html and "line 102\n" not in html, "the last 200 lines"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert build.launch_token not in html and "token=********" in html
    assert 'data-open="1"' in html, "refreshed while the build is open"
    body = admin_client.get(reverse("admin:publisher_build_log", args=[build.pk])).json()
    assert body["kind"] == "file" and body["open"] is True and body["state"] == "launched"
    assert body["text"].splitlines()[-1] == "token=********" and len(body["text"].splitlines()) == 200


def test_a_missing_log_file_says_where_it_was_looked_for(admin_client, log_dir):
    builds.request_build("x")
    build = Build.objects.get()
    html = admin_client.get(change_url(build)).content.decode()
    assert f"No log file at <code>{log_dir / f'{build.pk}.log'}</code>" in html


def test_a_heroku_build_shows_its_dyno_and_the_logs_command(admin_client):
    build = Build.objects.create(
        state=S.FAILED,
        launcher="heroku",
        launch_token="tok-secret-123",
        handle={"app": "news-site", "dyno_id": "0b1c", "dyno_name": "run.4821"},
    )
    html = admin_client.get(change_url(build)).content.decode()
    assert '<code id="publisher-dyno">run.4821</code>' in html
    assert "heroku logs --app news-site --dyno run.4821 --tail" in html
    assert "run.4821" in admin_client.get(CHANGELIST).content.decode(), "where it ran, in the list"
    body = admin_client.get(reverse("admin:publisher_build_log", args=[build.pk])).json()
    assert body["command"] == "heroku logs --app news-site --dyno run.4821 --tail"


def test_the_log_needs_the_view_permission(client, django_user_model, log_dir):
    builds.request_build("x")
    build = Build.objects.get()
    user = django_user_model.objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse("admin:publisher_build_log", args=[build.pk])).status_code == 403


def test_the_launch_token_is_in_no_page_and_no_json(admin_client, log_dir):
    builds.request_build("x")
    build = Build.objects.get()
    token = build.launch_token
    urls = [
        CHANGELIST,
        change_url(build),
        reverse("admin:publisher_build_cancel", args=[build.pk]),
        reverse("admin:publisher_build_log", args=[build.pk]),
        reverse("admin:publisher_status"),
        reverse("admin:index"),
    ]
    for url in urls:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert token not in response.content.decode(), url


# --- The buttons ------------------------------------------------------------------------------------------------


def test_rebuild_now_is_a_post_behind_its_permission(client, django_user_model):
    c = staff(django_user_model, client)
    assert 'name="_rebuild"' not in c.get(CHANGELIST).content.decode()
    assert c.post(REBUILD).status_code == 403
    assert not BuildRequest.objects.exists()
    client.logout()
    c = staff(django_user_model, client, "request_build", name="operator")
    assert 'name="_rebuild"' in c.get(CHANGELIST).content.decode()
    assert c.get(REBUILD).status_code == 405, "a GET changes nothing"
    response = c.post(REBUILD, follow=True)
    (request,) = BuildRequest.objects.all()
    assert request.reason == "rebuilt by operator" and request.requested_by.username == "operator"
    assert f"Build #{request.build_id} has started" in response.content.decode()


def test_the_buttons_need_the_csrf_token(django_user_model):
    c = staff(django_user_model, Client(enforce_csrf_checks=True), "request_build", "cancel_build", name="op")
    assert c.post(REBUILD).status_code == 403
    assert not BuildRequest.objects.exists()
    builds.request_build("x")
    build = Build.objects.get()
    assert c.post(reverse("admin:publisher_build_cancel", args=[build.pk])).status_code == 403
    assert Build.objects.get().state == S.LAUNCHED
    page = c.get(reverse("admin:publisher_build_cancel", args=[build.pk]))
    token = page.cookies["csrftoken"].value
    response = c.post(reverse("admin:publisher_build_cancel", args=[build.pk]), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302 and Build.objects.get().state == S.CANCELLED


def test_cancel_asks_first_then_cancels_behind_its_permission(client, django_user_model):
    builds.request_build("x")
    build = Build.objects.get()
    cancel = reverse("admin:publisher_build_cancel", args=[build.pk])
    c = staff(django_user_model, client, "publish_page")
    assert 'id="publisher-cancel"' not in c.get(change_url(build)).content.decode()
    assert "cancel_selected" not in c.get(CHANGELIST).content.decode(), "publish_page no longer cancels"
    assert c.get(cancel).status_code == 403 and c.post(cancel).status_code == 403
    c.post(CHANGELIST, {"action": "cancel_selected", "_selected_action": [build.pk]})
    assert Build.objects.get().state == S.LAUNCHED
    client.logout()

    c = staff(django_user_model, client, "cancel_build", name="operator")
    assert f'href="{cancel}"' in c.get(change_url(build)).content.decode()
    assert "cancel_selected" in c.get(CHANGELIST).content.decode()
    confirmation = c.get(cancel).content.decode()
    assert 'name="_cancel"' in confirmation and f"Yes, cancel build #{build.pk}" in confirmation
    assert Build.objects.get().state == S.LAUNCHED, "the confirmation page changes nothing"
    response = c.post(cancel, follow=True)
    assert Build.objects.get().state == S.CANCELLED
    assert f"Build #{build.pk} cancelled" in response.content.decode()
    assert 'id="publisher-cancel"' not in response.content.decode(), "an ended build has no cancel button"
    assert "nothing to cancel" in c.get(cancel).content.decode()


def test_roll_back_from_the_build_page(client, django_user_model, admin_client, site_root):
    Page(slug="alpha", title="Alpha", body="a").publish()
    first, second = run_one_build(), run_one_build()
    rollback = reverse("admin:publisher_build_rollback", args=[first.pk])
    assert 'id="publisher-rollback"' not in admin_client.get(change_url(second)).content.decode(), "already live"
    assert f'href="{rollback}"' in admin_client.get(change_url(first)).content.decode()

    c = staff(django_user_model, client, "cancel_build", "request_build")
    assert 'id="publisher-rollback"' not in c.get(change_url(first)).content.decode()
    assert c.get(rollback).status_code == 403 and c.post(rollback).status_code == 403
    assert SiteRoot(site_root).live_name() == second.release

    confirmation = admin_client.get(rollback).content.decode()
    assert 'name="_rollback"' in confirmation and first.release in confirmation
    response = admin_client.post(rollback, follow=True)
    assert SiteRoot(site_root).live_name() == first.release
    html = response.content.decode()
    assert f"The site is back on build #{first.pk}&#x27;s release {first.release}." in html
    assert f"Live: release <code>{first.release}</code>" in html, "the banner follows at once"
    assert 'id="publisher-rollback"' not in html


def test_a_build_run_by_hand_in_a_dyno_names_the_configured_app(admin_client, settings):
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "LAUNCHERS": {
            "heroku": {
                "BACKEND": "publisher.launchers.heroku.HerokuLauncher",
                "OPTIONS": {"API_KEY": "key-never-shown", "APP_NAME": "news-site"},
            }
        },
    }
    build = Build.objects.create(
        state=S.RUNNING, manual=True, launcher="manual", handle={"host": "x", "pid": 4, "dyno": "run.77"}
    )
    html = admin_client.get(change_url(build)).content.decode()
    assert "heroku logs --app news-site --dyno run.77 --tail" in html
    assert "key-never-shown" not in html
