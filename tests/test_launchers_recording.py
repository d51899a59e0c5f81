"""RecordingLauncher: the test double the test settings use; it records and can be told to fail."""

import json

import pytest
from django.core.exceptions import ImproperlyConfigured

from publisher.launchers import GONE, RUNNING, LaunchError, get_launcher, recording
from publisher.launchers.recording import RecordingLauncher


def test_test_settings_use_the_recording_launcher():
    launcher = get_launcher()
    assert isinstance(launcher, RecordingLauncher)
    assert launcher.name == "recording"
    assert launcher.check() == []


def test_launches_are_recorded_across_instances():
    first = get_launcher().launch(build_id=1, token="a")
    second = get_launcher().launch(build_id="2", token="b")
    assert recording.launches == [
        {"build_id": 1, "token": "a", "handle": first},
        {"build_id": 2, "token": "b", "handle": second},
    ]
    assert first != second
    assert json.loads(json.dumps(first)) == first
    assert get_launcher().describe(first) == f"recorded launch {first['id']}"


def test_status_is_running_until_told_otherwise():
    launcher = get_launcher()
    handle = launcher.launch(build_id=1, token="a")
    assert launcher.status(handle) == RUNNING
    recording.statuses[handle["id"]] = "starting"
    assert launcher.status(handle) == "starting"
    recording.statuses[handle["id"]] = LaunchError("API down")
    with pytest.raises(LaunchError, match="API down"):
        launcher.status(handle)
    assert recording.status_checks == [handle] * 3


def test_stop_is_recorded_and_the_build_reads_as_gone():
    launcher = get_launcher()
    handle = launcher.launch(build_id=1, token="a")
    launcher.stop(handle)
    assert recording.stops == [handle]
    assert launcher.status(handle) == GONE


def test_fail_next_makes_the_next_launches_fail():
    error = LaunchError("no dynos", status=422, error_id="cannot_run_above_limit", retryable=True)
    recording.fail_next(error, times=2)
    launcher = get_launcher()
    for _ in range(2):
        with pytest.raises(LaunchError) as caught:
            launcher.launch(build_id=1, token="a")
        assert caught.value is error
    assert recording.launches == []
    launcher.launch(build_id=1, token="a")
    assert len(recording.launches) == 1


@pytest.mark.parametrize("method", ["status", "stop"])
def test_fail_next_for_status_and_stop(method):
    launcher = get_launcher()
    handle = launcher.launch(build_id=1, token="a")
    recording.fail_next(LaunchError("timeout"), on=method)
    with pytest.raises(LaunchError, match="timeout"):
        getattr(launcher, method)(handle)
    getattr(launcher, method)(handle)


def test_fail_next_takes_only_launch_errors_and_known_methods():
    with pytest.raises(TypeError):
        recording.fail_next(RuntimeError("x"))
    with pytest.raises(ValueError):
        recording.fail_next(LaunchError("x"), on="launchh")


def test_reset_forgets_everything():
    launcher = get_launcher()
    handle = launcher.launch(build_id=1, token="a")
    launcher.stop(handle)
    recording.fail_next(LaunchError("x"))
    recording.reset()
    assert (recording.launches, recording.statuses, recording.stops, recording.status_checks) == ([], {}, [], [])
    assert launcher.launch(build_id=1, token="a") == {"id": "rec-1", "build_id": 1}


@pytest.mark.parametrize("step", [1, 2])
def test_every_test_starts_empty(step):
    """The autouse fixture (tests/launcher_fixtures.py) resets the memory around every test."""
    assert recording.launches == [] and recording.failures["launch"] == []
    get_launcher().launch(build_id=step, token="a")
    recording.fail_next(LaunchError("left behind"))


def test_unknown_options_are_refused():
    with pytest.raises(ImproperlyConfigured, match="NOPE"):
        RecordingLauncher(NOPE=1)
