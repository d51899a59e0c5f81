"""A publish never waits for the launcher (issue #11, goal 4): the admin's request attaches the change to a build and
returns; the launch runs in a thread after the response; if that thread never runs, the sweep launches the build.

No timed assertions: "does not wait" is proved by the launcher still being blocked when the response arrives.
"""

import re
import socket
import sqlite3
import subprocess
import sys
import threading

import pytest
from django.urls import reverse

from publisher import builds, deferred, status, sweep
from publisher.launchers import BaseLauncher, LaunchError
from publisher.models import Build, BuildState, Page

from .conftest import PROJECT_ROOT, free_port, wait_for
from .test_configuration_errors import procfile_command

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


# --- The real thing: gunicorn as the Procfile runs it, one sync worker, a Heroku API that never answers -----------


class SilentAPI:
    """A socket on 127.0.0.1 that accepts connections, reads what is sent, and never answers (a hung Heroku)."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.accepted = []
        self.received = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def _serve(self):
        self.server.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                self.received += conn.recv(65536)
            except OSError:
                pass
            self.accepted.append(conn)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.server.close()


def csrf_of(html):
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


@pytest.mark.slow
def test_under_gunicorn_a_publish_answers_and_the_next_request_is_served_while_heroku_hangs(tmp_path, children):
    import requests

    api = SilentAPI()
    port = free_port()
    database = tmp_path / "db.sqlite3"
    environment = {
        "PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}:/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "settings.settings",
        "VAR_DIR": str(tmp_path / "var"),
        "SITE_ROOT": str(tmp_path / "site"),
        "DATABASE_URL": f"sqlite:///{database}",
        "SECRET_KEY": "k",
        "DEBUG": "1",  # static files without collectstatic
        "BUILD_WORKERS": "1",
        "PORT": str(port),
        "LAUNCHER": "heroku",
        "HEROKU_API_KEY": "test-key-never-shown",
        "HEROKU_APP_NAME": "example-app",
        "HEROKU_API_URL": api.url,
        "WEB_CONCURRENCY": "1",  # one sync worker: a request held by Heroku would hold every other
        "DJANGO_SUPERUSER_PASSWORD": "pw",
    }
    manage = [sys.executable, "manage.py"]
    for command in (
        ["migrate", "--noinput"],
        ["createsuperuser", "--noinput", "--username", "ed", "--email", "ed@example.com"],
    ):
        done = subprocess.run(manage + command, cwd=PROJECT_ROOT, env=environment, capture_output=True, timeout=180)
        assert done.returncode == 0, done.stderr.decode()
    log = tmp_path / "web.log"
    try:
        with log.open("w") as output:
            web = children.start(procfile_command("web"), env=environment, stdout=output, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        client = requests.Session()

        def login_page():
            try:
                return client.get(f"{base}/admin/login/", timeout=5)
            except requests.ConnectionError:
                assert web.poll() is None, log.read_text()
                return None

        page = wait_for(login_page, timeout=60, interval=0.2, message="gunicorn to serve the admin")
        client.post(
            f"{base}/admin/login/",
            {"username": "ed", "password": "pw", "csrfmiddlewaretoken": csrf_of(page.text), "next": "/admin/"},
            timeout=10,
        ).raise_for_status()
        form = client.get(f"{base}/admin/publisher/page/add/", timeout=10)
        published = client.post(
            f"{base}/admin/publisher/page/add/",
            {
                "title": "Alpha",
                "slug": "alpha",
                "body": "text",
                "_saveandpublish": "1",
                "csrfmiddlewaretoken": csrf_of(form.text),
            },
            headers={"Referer": f"{base}/admin/publisher/page/add/"},
            allow_redirects=False,
            timeout=10,  # shorter than HEROKU_READ_TIMEOUT: a publish that waited for Heroku would fail here
        )
        assert published.status_code == 302, published.text[:2000]
        wait_for(lambda: api.received, timeout=10, message="the launch to reach the Heroku stand-in")
        assert b"POST /apps/example-app/dynos" in api.received and not api.stop.is_set()
        after = client.get(f"{base}{published.headers['Location']}", timeout=10)  # the one worker is free
        assert after.status_code == 200 and "is starting; the banner shows when it is live." in after.text
        with sqlite3.connect(database) as db:
            (state,) = db.execute("SELECT state FROM publisher_build").fetchone()
        assert state == "launching", "the launch is still waiting for Heroku, in the thread"
        assert "test-key-never-shown" not in log.read_text() + after.text
    finally:
        api.close()
