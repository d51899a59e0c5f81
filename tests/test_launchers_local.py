"""LocalLauncher with real processes: detached in its own session, logged, stopped as a group, no zombies.

The build command is a stub ``manage.py`` written into the test's own project directory (option ``PROJECT_DIR``);
its token (``PUBLISHER_BUILD_TOKEN``) picks what it does. Every process a test starts is killed at teardown.
"""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from publisher.launchers import GONE, RUNNING, UNKNOWN, LaunchError
from publisher.launchers import local as local_module
from publisher.launchers.local import LocalLauncher, group_alive, process_state
from tests.launcher_fixtures import ProcessReaper

STUB = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time

    args = sys.argv[1:]
    build, mode = args[args.index("--build") + 1], os.environ["PUBLISHER_BUILD_TOKEN"]
    print(f"stub build {build} pid {os.getpid()} mode {mode} cwd {os.getcwd()}", flush=True)
    print(f"stdin {sys.stdin.read()!r}", flush=True)
    print("on stderr", file=sys.stderr, flush=True)

    def terminated(signum, frame):
        print("terminated", flush=True)
        sys.exit(143)

    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore-term" else terminated)
    if mode == "exit":
        print("done", flush=True)
        sys.exit(0)
    if mode == "grandchild":
        code = (
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('grandchild ignores SIGTERM', flush=True); time.sleep(120)"
        )
        print(f"grandchild {subprocess.Popen([sys.executable, '-c', code]).pid}", flush=True)
    for tick in range(1200):
        print(f"tick {tick}", flush=True)
        time.sleep(0.1)
    """
)

GRANDCHILD = re.compile(r"^grandchild \d+$")


def wait_for(predicate, *, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def log_text(handle):
    path = Path(handle["log"])
    return path.read_text() if path.exists() else ""


def parent_of(pid):
    return int((Path("/proc") / str(pid) / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])


def zombie_children():
    """This process's children that are zombies (nobody has collected them)."""
    zombies = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] == b"Z":
                zombies.append(int(entry.name))
    return zombies


@pytest.fixture
def project(tmp_path):
    """A project directory whose manage.py is the stub."""
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "manage.py").write_text(STUB)
    return directory


@pytest.fixture
def log_dir(settings, tmp_path):
    settings.PUBLISHER = {**settings.PUBLISHER, "LOG_DIR": tmp_path / "var" / "log"}
    return tmp_path / "var" / "log" / "builds"


@pytest.fixture
def launcher(project, log_dir, process_reaper):
    return LocalLauncher(PROJECT_DIR=str(project), STOP_GRACE=5)


@pytest.mark.slow
def test_launch_runs_the_build_command_detached_and_logged(launcher, project, log_dir):
    started = time.monotonic()
    handle = launcher.launch(build_id=7, token="tick")
    assert time.monotonic() - started < 5, "launch does not wait for the build"

    assert json.loads(json.dumps(handle)) == handle
    assert set(handle) == {"host", "pid", "started", "log"}
    assert handle["host"] == socket.gethostname()
    assert handle["log"] == str(log_dir / "7.log")
    pid = handle["pid"]
    assert launcher.status(handle) == RUNNING
    assert launcher.describe(handle) == f"pid {pid} on {socket.gethostname()}"

    text = wait_for(lambda: "tick 1" in log_text(handle) and log_text(handle), what="log output")
    assert f"stub build 7 pid {pid} mode tick cwd {project}" in text
    assert "stdin ''" in text, "stdin is /dev/null"
    assert "on stderr" in text, "stderr goes to the log too"
    assert "launching build 7" in text.splitlines()[0]

    assert os.getsid(pid) == pid != os.getsid(0), "the build leads a session of its own"
    assert os.getpgid(pid) == pid
    assert parent_of(pid) != os.getpid(), "the build is not this process's child"
    assert zombie_children() == []


@pytest.mark.slow
def test_the_command_is_the_projects_python_and_manage_py(launcher, project):
    handle = launcher.launch(build_id=8, token="tick")
    cmdline = (Path("/proc") / str(handle["pid"]) / "cmdline").read_bytes().split(b"\0")[:-1]
    assert [part.decode() for part in cmdline] == [
        sys.executable,
        "manage.py",
        "buildstaticsite",
        "--build",
        "8",
    ]
    environ = (Path("/proc") / str(handle["pid"]) / "environ").read_bytes().split(b"\0")
    assert b"PUBLISHER_BUILD_TOKEN=tick" in environ, "the token is passed in the environment"
    assert Path(f"/proc/{handle['pid']}/cwd").resolve() == project.resolve()


def test_project_dir_defaults_to_base_dir_read_at_call_time(settings, project, log_dir):
    launcher = LocalLauncher()
    settings.BASE_DIR = project
    assert launcher.project_dir() == project
    assert launcher.python() == sys.executable


@pytest.mark.slow
def test_log_is_appended_not_truncated(launcher, log_dir):
    log_dir.mkdir(parents=True)
    (log_dir / "9.log").write_text("an earlier attempt\n")
    handle = launcher.launch(build_id=9, token="exit")
    wait_for(lambda: "done" in log_text(handle), what="the first build to finish")
    handle = launcher.launch(build_id=9, token="exit")
    text = wait_for(lambda: log_text(handle).count("done") == 2 and log_text(handle), what="the second build")
    assert text.startswith("an earlier attempt\n")
    assert text.count("launching build 9") == 2


@pytest.mark.slow
def test_finished_build_is_gone_and_no_zombie_is_left(launcher):
    handles = [launcher.launch(build_id=n, token="exit") for n in range(1, 4)]
    for handle in handles:
        wait_for(lambda handle=handle: launcher.status(handle) == GONE, what="the build to end")
    assert zombie_children() == []


@pytest.mark.slow
def test_a_reused_or_unknown_pid_is_gone(launcher):
    handle = launcher.launch(build_id=1, token="tick")
    assert launcher.status({**handle, "started": handle["started"] + 1}) == GONE
    assert launcher.status({**handle, "pid": 2**22 + 1}) == GONE  # above any pid_max
    assert launcher.status({**handle, "host": "elsewhere.example"}) == UNKNOWN
    assert launcher.status(handle) == RUNNING


@pytest.mark.slow
def test_stop_never_signals_a_reused_pid(launcher):
    handle = launcher.launch(build_id=1, token="tick")
    launcher.stop({**handle, "started": handle["started"] + 1})
    time.sleep(0.2)
    assert launcher.status(handle) == RUNNING


@pytest.mark.slow
def test_stop_ends_a_build_with_sigterm(launcher):
    handle = launcher.launch(build_id=2, token="tick")
    wait_for(lambda: "tick 0" in log_text(handle), what="the build to start")
    started = time.monotonic()
    launcher.stop(handle)
    assert time.monotonic() - started < 4, "SIGTERM was enough; no wait for the grace period"
    assert launcher.status(handle) == GONE
    assert "terminated" in log_text(handle)


@pytest.mark.slow
def test_stop_kills_a_build_that_ignores_sigterm(project, log_dir, process_reaper):
    launcher = LocalLauncher(PROJECT_DIR=str(project), STOP_GRACE=0.5)
    handle = launcher.launch(build_id=3, token="ignore-term")
    wait_for(lambda: "tick 0" in log_text(handle), what="the build to start")
    started = time.monotonic()
    launcher.stop(handle)
    assert 0.5 <= time.monotonic() - started < 4
    assert launcher.status(handle) == GONE
    assert not group_alive(handle["pid"])


@pytest.mark.slow
def test_stop_ends_the_whole_group(project, log_dir, process_reaper):
    launcher = LocalLauncher(PROJECT_DIR=str(project), STOP_GRACE=0.5)
    handle = launcher.launch(build_id=4, token="grandchild")
    grandchild = wait_for(
        lambda: next((int(line.split()[1]) for line in log_text(handle).splitlines() if GRANDCHILD.match(line)), 0),
        what="the grandchild",
    )
    wait_for(lambda: "grandchild ignores SIGTERM" in log_text(handle), what="the grandchild to ignore SIGTERM")
    assert os.getpgid(grandchild) == handle["pid"]
    started = time.monotonic()
    launcher.stop(handle)
    assert time.monotonic() - started >= 0.5, "the grandchild outlived SIGTERM, so SIGKILL came after the grace"
    state = process_state(grandchild)
    assert state is None or state[1] == "Z", "the grandchild (which ignores SIGTERM) was killed"
    assert not group_alive(handle["pid"])


@pytest.mark.slow
def test_stop_of_a_finished_build_is_fine(launcher):
    handle = launcher.launch(build_id=5, token="exit")
    wait_for(lambda: launcher.status(handle) == GONE, what="the build to end")
    launcher.stop(handle)


def test_stop_of_a_build_on_another_host_is_refused(launcher):
    with pytest.raises(LaunchError, match="another host"):
        launcher.stop({"host": "elsewhere.example", "pid": 1, "started": 1, "log": "x"})


@pytest.mark.slow
def test_the_build_outlives_the_process_that_launched_it(project, tmp_path, process_reaper):
    """A short-lived Python launches the build and exits; the build keeps running and logging."""
    code = textwrap.dedent(
        """
        import json, sys
        import django
        django.setup()
        from publisher.launchers.local import LocalLauncher
        print(json.dumps(LocalLauncher(PROJECT_DIR=sys.argv[1]).launch(build_id=11, token="tick")))
        """
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings.test", "VAR_DIR": str(tmp_path / "var")}
    env.pop("LAUNCHER", None)
    launched = subprocess.run(
        [sys.executable, "-c", code, str(project)],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert launched.returncode == 0, launched.stderr
    handle = process_reaper.track(json.loads(launched.stdout.strip().splitlines()[-1]))
    assert handle["log"] == str(tmp_path / "var" / "log" / "builds" / "11.log")

    ticks = len(wait_for(lambda: "tick 2" in log_text(handle) and log_text(handle), what="ticks").splitlines())
    wait_for(lambda: len(log_text(handle).splitlines()) > ticks + 3, what="more ticks after the launcher exited")
    launcher = LocalLauncher(PROJECT_DIR=str(project))
    assert launcher.status(handle) == RUNNING
    assert os.getsid(handle["pid"]) == handle["pid"]
    assert zombie_children() == []


@pytest.mark.slow
def test_the_reaper_kills_what_a_test_started(project, log_dir, process_reaper):
    """What makes a failing test still clean up: the fixture's teardown kills every tracked group."""
    reaper = ProcessReaper()
    handle = reaper.track(LocalLauncher(PROJECT_DIR=str(project)).launch(build_id=6, token="ignore-term"))
    assert process_reaper.handles == [handle], "in-process launches are tracked automatically"
    reaper.kill_all()
    wait_for(lambda: not group_alive(handle["pid"]), what="the group to die")


@pytest.mark.slow
def test_status_and_stop_work_through_ps_where_there_is_no_proc(launcher, monkeypatch, tmp_path):
    monkeypatch.setattr(local_module, "PROC", tmp_path / "no-proc")
    handle = launcher.launch(build_id=10, token="tick")
    assert isinstance(handle["started"], str), "start time as ps prints it"
    assert process_state(os.getpid())[1] in ("R", "S")
    assert launcher.status(handle) == RUNNING
    assert launcher.status({**handle, "started": "Mon Jan  1 00:00:00 2001"}) == GONE
    assert group_alive(handle["pid"])
    launcher.stop(handle)
    assert launcher.status(handle) == GONE
    assert not group_alive(handle["pid"])


# --- failures and checks ----------------------------------------------------------------------------------------


def test_a_missing_python_is_a_launch_error(project, log_dir):
    launcher = LocalLauncher(PROJECT_DIR=str(project), PYTHON="/nonexistent/python3")
    with pytest.raises(LaunchError, match="/nonexistent/python3") as caught:
        launcher.launch(build_id=1, token="t")
    assert caught.value.needs_operator and not caught.value.retryable
    assert zombie_children() == []


def test_a_missing_project_dir_is_a_launch_error(tmp_path, log_dir):
    with pytest.raises(LaunchError, match="no-such-dir"):
        LocalLauncher(PROJECT_DIR=str(tmp_path / "no-such-dir")).launch(build_id=1, token="t")


def test_an_unwritable_log_dir_is_a_launch_error(settings, project, tmp_path):
    (tmp_path / "a-file").write_text("")
    settings.PUBLISHER = {**settings.PUBLISHER, "LOG_DIR": tmp_path / "a-file" / "log"}
    with pytest.raises(LaunchError, match="build log") as caught:
        LocalLauncher(PROJECT_DIR=str(project)).launch(build_id=1, token="t")
    assert caught.value.needs_operator


def ids(messages):
    return sorted(message.id for message in messages)


def test_check_passes_for_the_project(log_dir):
    assert LocalLauncher().check() == []


def test_check_reports_problems(settings, tmp_path):
    assert ids(LocalLauncher(STOP_GRACE="soon").check()) == ["publisher.E022"]
    (tmp_path / "a-file").write_text("")
    settings.PUBLISHER = {**settings.PUBLISHER, "LOG_DIR": tmp_path / "a-file" / "log"}
    launcher = LocalLauncher(PROJECT_DIR=str(tmp_path), PYTHON=str(tmp_path / "a-file"), STOP_GRACE=-1)
    assert ids(launcher.check()) == ["publisher.E020", "publisher.E021", "publisher.E022", "publisher.W020"]


def test_this_process_is_a_handle_the_launcher_judges_running(log_dir):
    launcher = LocalLauncher()
    handle = launcher.this_process()
    assert handle["pid"] == os.getpid() and handle["host"] == socket.gethostname()
    assert launcher.status(handle) == RUNNING


@pytest.mark.parametrize("handle", [{"id": "rec-1"}, {"app": "a", "dyno_name": "run.1"}, None])
def test_a_handle_of_another_launcher_is_a_launch_error_not_a_crash(handle):
    with pytest.raises(LaunchError, match="not a handle of the local launcher"):
        LocalLauncher().status(handle)
    with pytest.raises(LaunchError, match="not a handle of the local launcher"):
        LocalLauncher().stop(handle)
