"""The sweep against real processes: killed builds are found and relaunched, and the worker runs the schedule."""

import os
import signal
import sqlite3
import subprocess
import sys

import pytest
from django.utils import timezone

from publisher import deferred, sweep
from publisher.launchers.local import LocalLauncher
from publisher.models import ACTIVE_STATES, Build, BuildState, Page
from publisher.release import SiteRoot

from .conftest import PROJECT_ROOT, wait_for

S = BuildState
FAST = {
    "BUILD_HEARTBEAT_INTERVAL": 1,
    "BUILD_LOST_AFTER": 3,
    "BUILD_START_TIMEOUT": 2,
    "BUILD_LAUNCH_TIMEOUT": 5,
    "BUILD_RETRY_BASE": 1,
    "BUILD_RETRY_MAX": 2,
}


@pytest.fixture
def local_builds(settings, child_env, monkeypatch, tmp_path):
    """Real local builds with short timeouts, in this test's database and SITE_ROOT."""
    options = {"STOP_GRACE": 1}
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        **FAST,
        "LAUNCHER": {"BACKEND": "publisher.launchers.local.LocalLauncher", "OPTIONS": options},
        "LOG_DIR": tmp_path / "var" / "log",
    }
    for key, value in {**child_env, **{k: str(v) for k, v in FAST.items()}}.items():
        monkeypatch.setenv(key, value)
    yield options
    for build in Build.objects.exclude(handle=None):
        if "started" in build.handle:
            LocalLauncher(STOP_GRACE=0).stop(build.handle)


def settled():
    return not Build.objects.filter(state__in=(*ACTIVE_STATES, S.QUEUED)).exists()


def bulk_published(count):
    Page.objects.bulk_create(
        Page.published_copy(slug=f"bulk{i:06d}", title=f"Bulk {i}", body="x" * 200, published_at=timezone.now())
        for i in range(count)
    )


def rendering(site_root):
    releases = site_root / "releases"
    return releases.is_dir() and any(
        p.name.startswith(".tmp-") and sum(1 for _ in p.iterdir()) > 50 for p in releases.iterdir()
    )


def sweep_until(predicate, *, timeout, message):
    def step():
        sweep.sweep()
        return predicate()

    return wait_for(step, timeout=timeout, interval=0.5, message=message)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_kill_9_of_a_running_build_is_found_lost_and_relaunched(local_builds, site_root):
    Page(slug="first", title="First", body="first").publish()
    wait_for(settled, timeout=60, interval=0.2, message="the first build")
    previous = SiteRoot(site_root).live_name()
    assert previous

    bulk_published(8000)
    Page(slug="marker", title="Marker", body="the marker page").publish()
    victim = wait_for(lambda: Build.objects.filter(state=S.RUNNING).first(), timeout=60, message="a running build")
    wait_for(lambda: rendering(site_root), timeout=60, message="rendering")
    os.killpg(victim.handle["pid"], signal.SIGKILL)
    wait_for(lambda: LocalLauncher().status(victim.handle) == "gone", timeout=10, message="the build to die")
    assert SiteRoot(site_root).live_name() == previous  # the live site stays on the previous release

    sweep_until(
        lambda: Build.objects.get(pk=victim.pk).state == S.LOST, timeout=30, message="the sweep to mark it lost"
    )
    sweep_until(settled, timeout=120, message="the retry to finish")
    retry = Build.objects.get(retry_of=None, requests__retry_of=victim)
    assert retry.state == S.SUCCEEDED
    assert "the marker page" in (site_root / "current" / "marker" / "index.html").read_text()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_build_killed_before_it_claims_is_relaunched(local_builds, site_root, tmp_path):
    never_claims = tmp_path / "never-claims"
    never_claims.write_text("#!/bin/sh\nexec sleep 600\n")
    never_claims.chmod(0o755)
    local_builds["PYTHON"] = str(never_claims)
    Page(slug="hello", title="Hello", body="hello there").publish()
    assert deferred.wait(timeout=30)  # the local launcher launches after the commit, in a thread
    launched = Build.objects.get()
    assert launched.state == S.LAUNCHED
    os.killpg(launched.handle["pid"], signal.SIGKILL)
    local_builds["PYTHON"] = ""  # the next launch runs the real build

    sweep_until(lambda: Build.objects.get().attempt == 2, timeout=30, message="the sweep to re-queue it")
    sweep_until(settled, timeout=120, message="the relaunched build to finish")
    build = Build.objects.get()
    assert build.state == S.SUCCEEDED and build.attempt == 2 and "ended before it started" in build.error
    assert "hello there" in (site_root / "current" / "hello" / "index.html").read_text()


def manage(env, *args, timeout=120):
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_qcluster_runs_the_migration_created_schedule(tmp_path, child_env, children):
    db = tmp_path / "worker.sqlite3"
    env = {**child_env, "DATABASE_URL": f"sqlite:///{db}", "Q_POLL": "1", **{k: str(v) for k, v in FAST.items()}}
    manage(env, "migrate", "--noinput")
    # A request committed and attached whose dispatch never ran: nobody launched its build.
    manage(
        env,
        "shell",
        "-c",
        "from publisher import builds; "
        "builds.attach_requests([builds.record_request('orphaned publish', dispatch_after_commit=False)])",
    )

    def states():
        with sqlite3.connect(db) as conn:
            return [row[0] for row in conn.execute("select state from publisher_build")]

    def schedules():
        with sqlite3.connect(db) as conn:
            return conn.execute("select func, schedule_type, minutes, repeats from django_q_schedule").fetchall()

    assert states() == ["queued"]
    assert schedules() == [("publisher.sweep.run_scheduled_sweep", "I", 1, -1)]
    worker = children.manage("qcluster", env=env, stdout=open(tmp_path / "qcluster.log", "w"))
    try:
        wait_for(lambda: states() == ["succeeded"], timeout=120, interval=0.5, message="the schedule to launch it")
    finally:
        os.killpg(worker.pid, signal.SIGINT)  # SIGTERM to the whole group hangs qcluster
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
    log = (tmp_path / "qcluster.log").read_text()
    assert "Processed" in log or "run_scheduled_sweep" in log or states() == ["succeeded"], log
