"""A publish never waits for the launcher (issue #11, goal 4): the admin's request attaches the change to a build and
returns; the launch runs in a thread after the response; if that thread never runs, the sweep launches the build.

No timed assertions: "does not wait" is proved by the launcher still being blocked when the response arrives.
"""

import threading

import pytest
from django.urls import reverse

from publisher import builds, deferred, status, sweep
from publisher.launchers import BaseLauncher, LaunchError
from publisher.models import Build, BuildState, Page

pytestmark = pytest.mark.django_db(transaction=True)
S = BuildState
ADD = reverse("admin:publisher_page_add")
#: How long a blocked launch waits for its release before it fails (so a test that would hang fails instead).
GIVE_UP_AFTER = 20


class HangingLauncher(BaseLauncher):
    """A launcher whose ``launch`` blocks until ``release`` is set, like a Heroku API that does not answer.

    ``answers_at_once`` stays ``False`` (the base class's), as for every launcher that talks to a platform.
    """

    name = "hanging"
    entered = threading.Event()
    release = threading.Event()
    launches = []

    @classmethod
    def reset(cls):
        cls.entered, cls.release, cls.launches = threading.Event(), threading.Event(), []

    def launch(self, *, build_id, token):
        type(self).entered.set()
        if not type(self).release.wait(GIVE_UP_AFTER):
            raise LaunchError("the hanging launcher was never released")
        type(self).launches.append(build_id)
        return {"id": f"hanging-{build_id}"}

    def status(self, handle):
        return "running"

    def stop(self, handle):
        pass

    def check(self):
        return []


@pytest.fixture
def hanging(settings):
    HangingLauncher.reset()
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "LAUNCHER": {"BACKEND": f"{__name__}.HangingLauncher", "OPTIONS": {}},
    }
    yield HangingLauncher
    HangingLauncher.release.set()  # a launch still blocked ends
    assert deferred.wait(timeout=GIVE_UP_AFTER + 10), "a deferred thread did not end"


@pytest.fixture
def no_thread(monkeypatch):
    """The web process dies before its thread launches: the deferred work is dropped, as it would be."""
    dropped = []
    monkeypatch.setattr(deferred, "_start", lambda fn, args: dropped.append(fn))
    return dropped


def publish_in_the_admin(client, slug="alpha"):
    return client.post(ADD, {"title": slug.title(), "slug": slug, "body": "text", "_saveandpublish": "1"})


def messages_of(client, response):
    return client.get(response.url).content.decode()


def test_an_admin_publish_returns_while_the_launcher_is_still_blocked(admin_client, hanging):
    response = publish_in_the_admin(admin_client)
    assert response.status_code == 302, "the publish answered"
    assert hanging.entered.wait(GIVE_UP_AFTER), "the launch runs after the response"
    assert not hanging.release.is_set() and hanging.launches == [], "the launcher is still blocked"
    build = Build.objects.get()
    assert build.state == S.LAUNCHING and Page.objects.get(slug="alpha").is_published
    html = messages_of(admin_client, response)
    assert f"Build #{build.pk} is starting; the banner shows when it is live." in html
    assert "has started" not in html, "nothing says the launch worked before it did"

    hanging.release.set()
    assert deferred.wait(timeout=GIVE_UP_AFTER)
    build.refresh_from_db()
    assert build.state == S.LAUNCHED and build.handle == {"id": f"hanging-{build.pk}"}
    assert hanging.launches == [build.pk]


def test_a_second_publish_while_the_launch_hangs_joins_the_starting_build(admin_client, hanging):
    publish_in_the_admin(admin_client, "alpha")
    assert hanging.entered.wait(GIVE_UP_AFTER)
    response = publish_in_the_admin(admin_client, "beta")  # answered: the first launch is still blocked
    assert response.status_code == 302 and not hanging.release.is_set()
    build = Build.objects.get()
    assert f"Your change will be in build #{build.pk}, which is starting." in messages_of(admin_client, response)
    assert build.requests.count() == 2
    hanging.release.set()
    assert deferred.wait(timeout=GIVE_UP_AFTER)
    assert Build.objects.get().state == S.LAUNCHED and hanging.launches == [build.pk], "one launch for both"


def test_a_launch_that_fails_after_the_response_reaches_the_banner(admin_client, hanging, monkeypatch):
    def refuse(self, *, build_id, token):
        raise LaunchError("Heroku rejected the API key (401)", status=401, needs_operator=True, retryable=False)

    monkeypatch.setattr(HangingLauncher, "launch", refuse)
    response = publish_in_the_admin(admin_client)
    assert response.status_code == 302
    assert deferred.wait(timeout=GIVE_UP_AFTER)
    build = Build.objects.get()
    assert build.state == S.QUEUED and build.needs_operator and build.error_status == 401
    said = str(status.snapshot())
    assert f"Build #{build.pk} cannot start: the Heroku key was rejected" in said, "the banner says so"


def test_when_the_thread_never_runs_the_sweep_launches_the_build(admin_client, hanging, no_thread):
    hanging.release.set()  # the launcher answers: only the thread is missing
    response = publish_in_the_admin(admin_client)
    assert response.status_code == 302 and no_thread == [builds.launch_in_background]
    build = Build.objects.get()
    assert build.state == S.QUEUED and build.next_attempt_at is not None and hanging.launches == []
    sweep.sweep()
    build.refresh_from_db()
    assert build.state == S.LAUNCHED and hanging.launches == [build.pk]


def test_when_the_process_dies_mid_launch_the_sweep_requeues_and_launches(admin_client, hanging, clock):
    response = publish_in_the_admin(admin_client)
    assert response.status_code == 302 and hanging.entered.wait(GIVE_UP_AFTER)
    build = Build.objects.get()
    assert build.state == S.LAUNCHING  # and its launching thread stays blocked, as if its process had died
    clock.advance(builds.get_config().BUILD_LAUNCH_TIMEOUT + 1)
    sweep.sweep()  # stuck in launching: re-queued with a backoff and without the dead launch's token
    build.refresh_from_db()
    assert build.state == S.QUEUED and build.attempt == 2 and "Stuck in launching" in build.error
    clock.advance(builds.backoff(1) + 1)
    hanging.release.set()  # the platform answers again (the old thread's late answer no longer matches a token)
    sweep.sweep()
    assert deferred.wait(timeout=GIVE_UP_AFTER)
    build.refresh_from_db()
    assert build.state == S.LAUNCHED and build.attempt == 2 and build.handle == {"id": f"hanging-{build.pk}"}
