"""A SIGTERM on the way out of a build that has switched the site (issue 8, defect 2), delivered as a real signal to
this process while ``buildstaticsite`` (its handler installed) runs: the outcome is the switch's, a success."""

import io
import os
import signal

import pytest
from django.core.management import call_command

from publisher import runner
from publisher.launchers import recording
from publisher.models import Build, BuildRequest, BuildState, Page
from publisher.release import SiteRoot

pytestmark = pytest.mark.django_db


def sigterm_now():
    """A real SIGTERM to this process; its handler has run when this returns (or raised out of it)."""
    os.kill(os.getpid(), signal.SIGTERM)
    signal.sigtimedwait([], 0)


@pytest.fixture
def launched(site_root, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        Page(slug="alpha", title="Alpha", body="body").publish()
    (launch,) = recording.launches
    return launch


def test_a_sigterm_while_the_heartbeat_stops_after_the_switch_is_a_success(launched, site_root, monkeypatch):
    """Found at b57b93e: runner.run stopped the heartbeat thread in a ``finally`` after ``build_release`` returned,
    outside the critical section and outside the ``except BuildInterrupted`` that knows the site switched, so a
    SIGTERM there escaped run() and buildstaticsite exited 143 saying the build was interrupted "before it started"
    (the success recorded, the queued build not launched, nothing pruned)."""
    stop = runner.HeartbeatProgress.stop

    def stop_after_a_sigterm(progress):
        try:
            if SiteRoot(site_root).live_name():  # the site has switched: the signal comes on the way out
                sigterm_now()
        finally:
            stop(progress)  # the heartbeat thread stops either way

    monkeypatch.setattr(runner.HeartbeatProgress, "stop", stop_after_a_sigterm)
    out = io.StringIO()
    build_id, token = launched["build_id"], launched["token"]
    call_command("buildstaticsite", "--build", str(build_id), f"--token={token}", stdout=out)  # exit 0: no CommandError
    build = Build.objects.get(pk=build_id)
    assert build.state == BuildState.SUCCEEDED and build.release == SiteRoot(site_root).live_name()
    assert not BuildRequest.objects.filter(retry_of__isnull=False).exists()
    assert f"release {build.release} with 1 pages is live" in out.getvalue()


def run_a_build(reason="x"):
    """Request a build and run it in this process, as its launched process would."""
    from publisher import builds

    builds.request_build(reason)
    launch = recording.launches[-1]
    result = runner.run(builds.claim(launch["build_id"], launch["token"]))
    assert result.exit_code == 0, result
    return Build.objects.get(pk=launch["build_id"])


def test_what_a_builds_prune_deleted_is_recorded_on_the_build(site_root, settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 1}
    Page(slug="alpha", title="Alpha", body="a").publish()
    first = run_a_build()
    assert first.published["pruned"] == [] and first.published["deleted"] == 0
    files = sum(1 for p in (site_root / "releases" / first.release).rglob("*") if p.is_file())
    second = run_a_build()
    assert second.state == BuildState.SUCCEEDED and second.published["pruned"] == [first.release]
    assert second.published["deleted"] == files
    assert second.published["destination"] == str(site_root) and second.published["went_live"], "added to, not replaced"
    assert {"uploaded", "copied", "bytes_uploaded"} <= set(second.published)
    assert [p.name for p in (site_root / "releases").iterdir()] == [second.release]


def test_a_prune_that_fails_records_nothing_and_the_build_stays_a_success(site_root, monkeypatch):
    def broken_prune(config):
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(runner, "prune_releases", broken_prune)
    Page(slug="alpha", title="Alpha", body="a").publish()
    build = run_a_build()
    assert build.state == BuildState.SUCCEEDED and "pruned" not in build.published and build.published["went_live"]


def test_the_prune_of_a_build_on_the_recording_destination_is_recorded(settings, monkeypatch):
    from publisher.destinations import recording as destination

    destination.reset()
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "SITE_RELEASES_KEPT": 1,
        "DESTINATION": {"BACKEND": "publisher.destinations.recording.RecordingDestination"},
    }
    Page(slug="alpha", title="Alpha", body="a").publish()
    try:
        names = [run_a_build().release for _ in range(3)]
        build = Build.objects.get(release=names[2])
        files = len(destination.releases[names[1]])
        assert build.published["pruned"] == [names[0]] and build.published["deleted"] == files + 1  # + its manifest
    finally:
        destination.reset()
