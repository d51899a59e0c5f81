"""Commands and their exit codes (DESIGN §6)."""

import json
import secrets
import shlex
import subprocess
import sys
import time

import pytest
import responses
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
    assert "has started" in capsys.readouterr().out
    request = BuildRequest.objects.get()
    assert request.reason == "nightly refresh" and request.build.state == S.LAUNCHED


@pytest.mark.django_db
def test_requestbuild_warns_on_a_failed_launch_and_still_exits_0(capsys):
    recording.fail_next(LaunchError("Heroku rejected the API key (401)", status=401, needs_operator=True))
    call_command("requestbuild")  # no exception: exit 0
    err = capsys.readouterr().err
    assert "Warning: Build #1 could not start: an administrator has been told" in err
    assert "(launch failed: Heroku rejected the API key (401))" in err and ".." not in err
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
    assert "has started" in result.stdout
    assert BuildRequest.objects.get().reason == "from cron"


# --- Tokens argparse could misread (1 launch in 64 starts with "-") ---------------------------------------------


def dash_tokens(monkeypatch):
    monkeypatch.setattr(builds, "new_token", lambda: "-" + secrets.token_urlsafe(24))


@pytest.mark.django_db
def test_the_token_is_read_from_the_environment_or_as_token_equals(site_root, monkeypatch, capsys):
    dash_tokens(monkeypatch)
    builds.request_build("x")
    launch = recording.launches[-1]
    assert launch["token"].startswith("-")
    monkeypatch.setenv("PUBLISHER_BUILD_TOKEN", launch["token"])
    call_command("buildstaticsite", "--build", str(launch["build_id"]))
    assert Build.objects.get().state == S.SUCCEEDED

    builds.request_build("y")
    launch = recording.launches[-1]
    monkeypatch.delenv("PUBLISHER_BUILD_TOKEN")
    call_command("buildstaticsite", "--build", str(launch["build_id"]), f"--token={launch['token']}")
    assert Build.objects.get(pk=launch["build_id"]).state == S.SUCCEEDED


@pytest.mark.django_db
def test_build_without_any_token_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("PUBLISHER_BUILD_TOKEN", raising=False)
    with pytest.raises(CommandError) as info:
        call_command("buildstaticsite", "--build", "3")
    assert info.value.returncode == 2 and "PUBLISHER_BUILD_TOKEN" in str(info.value)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_dash_token_builds_through_the_local_launcher(settings, child_env, monkeypatch, tmp_path, process_reaper):
    dash_tokens(monkeypatch)
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "LAUNCHER": {"BACKEND": "publisher.launchers.local.LocalLauncher", "OPTIONS": {}},
        "LOG_DIR": tmp_path / "var" / "log",
    }
    for key, value in child_env.items():
        monkeypatch.setenv(key, value)
    outcome = builds.request_build("dash")
    build = Build.objects.get(pk=outcome.build_id)
    assert build.launch_token.startswith("-") and build.state == S.LAUNCHED
    wait_for(lambda: Build.objects.get(pk=build.pk).state == S.SUCCEEDED, timeout=60, message="the build")
    cmdline = (tmp_path / "var" / "log" / "builds" / f"{build.pk}.log").read_text()
    assert build.launch_token not in cmdline


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_dash_token_builds_from_the_dyno_request_of_the_heroku_launcher(settings, child_env, monkeypatch):
    """The body Heroku would get is run as the dyno would: its command through a shell, its env added."""
    dash_tokens(monkeypatch)
    api = "https://heroku.test"
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "LAUNCHER": {
            "BACKEND": "publisher.launchers.heroku.HerokuLauncher",
            "OPTIONS": {"API_KEY": "k", "APP_NAME": "app", "API_URL": api},
        },
    }
    with responses.RequestsMock() as rsps:
        rsps.post(f"{api}/apps/app/dynos", json={"id": "d-1", "name": "run.1"}, status=201)
        outcome = builds.request_build("dash")
        body = json.loads(rsps.calls[0].request.body)
    build = Build.objects.get(pk=outcome.build_id)
    assert build.launch_token.startswith("-") and build.launch_token not in body["command"]
    assert body["env"]["PUBLISHER_BUILD_TOKEN"] == build.launch_token
    result = subprocess.run(
        ["/bin/sh", "-c", body["command"].replace("python", shlex.quote(sys.executable), 1)],
        env={**child_env, **body["env"], "DYNO": "run.1"},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert Build.objects.get(pk=build.pk).state == S.SUCCEEDED


@pytest.fixture
def failing_check():
    """A system check that fails, as a misconfigured build process's would."""
    from django.core import checks

    def broken(**kwargs):
        return [checks.Error("SITE_ROOT cannot be written in this dyno.", id="publisher.E041")]

    checks.register(broken)
    yield
    checks.registry.registry.registered_checks.discard(broken)


@pytest.mark.django_db
def test_buildstaticsite_records_failed_checks_on_its_build_and_exits_2(failing_check, site_root, mailoutbox, settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    builds.request_build("x")
    launch = recording.launches[0]
    build_id = launch["build_id"]
    with pytest.raises(CommandError) as info:
        call_command("buildstaticsite", "--build", str(build_id), "--token", launch["token"], skip_checks=False)
    assert info.value.returncode == 2 and "SITE_ROOT cannot be written" in str(info.value)
    build = Build.objects.get(pk=build_id)
    assert build.state == S.QUEUED and build.attempt == 2, "back in the queue, retried with a backoff"
    assert build.error.startswith("Configuration error in the build process:") and "publisher.E041" in build.error
    assert build.needs_operator and build.launch_token == "", "the banner says a person must act; the token is spent"
    assert build.next_attempt_at is not None and BuildRequest.objects.get().build_id == build_id
    (report,) = mailoutbox
    assert f"Build #{build_id} cannot start" in report.subject and "SITE_ROOT cannot be written" in report.body
    assert not (site_root / "current").exists()


@pytest.mark.django_db
def test_buildstaticsite_with_a_wrong_token_and_failed_checks_changes_nothing(failing_check, mailoutbox, settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    builds.request_build("x")
    build_id = recording.launches[0]["build_id"]
    with pytest.raises(CommandError) as info:
        call_command("buildstaticsite", "--build", str(build_id), "--token", "an-orphan", skip_checks=False)
    assert info.value.returncode == 2
    assert Build.objects.get(pk=build_id).state == S.LAUNCHED and mailoutbox == []


@pytest.mark.django_db
def test_buildstaticsite_by_hand_with_failed_checks_exits_2_and_records_nothing(failing_check):
    with pytest.raises(CommandError) as info:
        call_command("buildstaticsite", skip_checks=False)
    assert info.value.returncode == 2 and not Build.objects.exists()
