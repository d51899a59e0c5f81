"""``devsetup`` (run by ``make run``) says what publishing the demo pages did instead of asking for a manual build."""

import io

import pytest
from django.core.management import call_command

from publisher.launchers import LaunchError
from publisher.launchers.recording import RecordingLauncher
from publisher.models import Build, BuildRequest, Page

pytestmark = pytest.mark.django_db(transaction=True)  # real commits: the request is dispatched on commit

SITE_URL = "http://127.0.0.1:8001/site/"


@pytest.fixture
def dev(settings):
    settings.DEBUG = True
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_URL": SITE_URL}


def devsetup():
    out = io.StringIO()
    call_command("devsetup", "--port", "8001", stdout=out)
    return out.getvalue()


def test_it_says_which_build_publishing_the_demo_pages_launched(dev, recording_launcher):
    output = devsetup()
    build = Build.objects.get()
    assert Page.objects.count() == 3 and BuildRequest.objects.count() == 1
    assert sorted(Page.objects.in_live_state("live").values_list("live_slug", flat=True)) == [
        "about",
        "contact",
        "welcome",
    ], "the demo pages are live, not drafts: the build shows them"
    assert len(recording_launcher.launches) == 1  # the build is launched already
    assert f"publishing them requested build #{build.pk}." in output
    assert f"Build #{build.pk} has started" in output and "recorded launch" in output  # what the build system said
    assert f"The site appears at {SITE_URL} when it finishes" in output
    assert f"Site:   {SITE_URL}" in output
    assert "buildstaticsite" not in output  # nothing to do by hand


def test_a_launch_that_failed_is_said_as_such(dev, recording_launcher):
    recording_launcher.fail_next(LaunchError("the platform is busy", status=503))
    output = devsetup()
    build = Build.objects.get()
    assert f"publishing them requested build #{build.pk}." in output
    assert "could not start yet" in output and "has started" not in output
    assert "Builds in the admin show how it goes: http://127.0.0.1:8001/admin/publisher/build/" in output


def test_when_the_pages_exist_it_claims_no_build(dev):
    devsetup()
    output = devsetup()
    assert BuildRequest.objects.count() == 1  # the second run published nothing
    assert "requested build" not in output and "appears at" not in output
    assert "Demo pages exist already; nothing was published" in output
    assert "http://127.0.0.1:8001/admin/publisher/build/" in output


def test_the_build_it_requested_puts_the_demo_pages_on_the_site(dev, recording_launcher, site_root):
    from publisher import builds, runner

    devsetup()
    launch = recording_launcher.launches[-1]
    runner.run(builds.claim(launch["build_id"], launch["token"]))
    assert Build.objects.get().state == "succeeded"
    assert "Welcome" in (site_root / "current" / "welcome" / "index.html").read_text()
    index = (site_root / "current" / "index.html").read_text()
    assert all(title in index for title in ("Welcome", "About us", "Contact"))


class LaunchesAfterTheCommit(RecordingLauncher):
    """Like a real launcher: the launch runs in a thread after the commit, not inside the publish."""

    answers_at_once = False


def test_it_waits_for_a_launch_that_runs_after_the_commit(dev, recording_launcher, settings):
    """``make run``: the command used to exit while its launch thread was still running, and the build waited for the
    sweep (half a minute in the worker) instead of starting at once."""
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "LAUNCHER": {"BACKEND": f"{__name__}.LaunchesAfterTheCommit", "OPTIONS": {}},
    }
    output = devsetup()
    build = Build.objects.get()
    assert len(recording_launcher.launches) == 1 and build.state == "launched"
    assert f"Build #{build.pk} has started" in output and "is starting" not in output
