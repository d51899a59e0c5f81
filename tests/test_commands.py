"""Commands and their exit codes (DESIGN §6)."""

import subprocess
import sys
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from publisher import builds
from publisher.launchers import LaunchError, recording
from publisher.models import Build, BuildRequest, BuildState

from .conftest import PROJECT_ROOT, wait_for

S = BuildState


@pytest.mark.django_db
def test_requestbuild_records_and_dispatches(capsys):
    call_command("requestbuild", "--reason", "nightly refresh")
    assert "launched" in capsys.readouterr().out
    request = BuildRequest.objects.get()
    assert request.reason == "nightly refresh" and request.build.state == S.LAUNCHED


@pytest.mark.django_db
def test_requestbuild_warns_on_a_failed_launch_and_still_exits_0(capsys):
    recording.fail_next(LaunchError("Heroku rejected the API key (401)", status=401, needs_operator=True))
    call_command("requestbuild")  # no exception: exit 0
    err = capsys.readouterr().err
    assert "Warning: Launch failed: Heroku rejected the API key (401). The build is queued" in err
    assert BuildRequest.objects.get().build.state == S.QUEUED


@pytest.mark.django_db
def test_requestbuild_usage_errors_exit_2():
    with pytest.raises(CommandError) as info:
        call_command("requestbuild", "--reason", "  ")
    assert info.value.returncode == 2


@pytest.mark.django_db
def test_buildstaticsite_build_and_token_go_together():
    with pytest.raises(CommandError) as info:
        call_command("buildstaticsite", "--build", "3")
    assert info.value.returncode == 2


@pytest.mark.django_db
def test_buildstaticsite_exits_0_when_the_claim_is_refused(capsys, site_root):
    call_command("buildstaticsite", "--build", "42", "--token", "nope")
    assert "Not building: Build #42 does not exist" in capsys.readouterr().out
    assert not (site_root / "current").exists()


@pytest.mark.django_db
def test_buildstaticsite_by_hand_exits_3_when_a_build_is_active():
    builds.request_build("x")  # launched by the recording launcher
    with pytest.raises(CommandError) as info:
        call_command("buildstaticsite")
    assert info.value.returncode == 3 and "is launched" in str(info.value) and "--wait" in str(info.value)


@pytest.mark.django_db
def test_buildstaticsite_claims_and_builds(site_root, capsys):
    builds.request_build("x")
    launch = recording.launches[0]
    call_command("buildstaticsite", "--build", str(launch["build_id"]), "--token", launch["token"])
    assert Build.objects.get().state == S.SUCCEEDED and (site_root / "current" / "index.html").exists()
    assert "is live" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_buildstaticsite_wait_builds_after_the_active_build(children, child_env, site_root, tmp_path):
    active = builds.start_manual(process={"host": "elsewhere", "pid": 1})
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        proc = children.manage("buildstaticsite", "--wait", "--poll", "0.1", env=child_env, stdout=out)
    wait_for(lambda: "Waiting: build #" in log.read_text(), timeout=60, message="the build to wait")
    time.sleep(0.5)
    assert proc.poll() is None  # still waiting
    builds.finish(active, state=S.SUCCEEDED)
    assert proc.wait(timeout=60) == 0, log.read_text()
    assert "is live" in log.read_text()
    assert Build.objects.filter(state=S.SUCCEEDED).count() == 2


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_buildstaticsite_configuration_error_exits_2(children, child_env):
    child_env["LAUNCHER"] = "no.such.Launcher"
    proc = children.manage("buildstaticsite", env=child_env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "publisher.E001" in out


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_requestbuild_as_a_process(children, child_env):
    result = subprocess.run(
        [sys.executable, "manage.py", "requestbuild", "--reason", "from cron"],
        env={**child_env, "LAUNCHER": "publisher.launchers.recording.RecordingLauncher"},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "launched on recorded launch" in result.stdout
    assert BuildRequest.objects.get().reason == "from cron"
