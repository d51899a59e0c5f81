import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection

pytest_plugins = ["tests.launcher_fixtures", "tests.browser"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (``item.rep_call``), so fixtures can tell that the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_pending_signal():
    """A SIGTERM one test simulates never reaches the next (the command's ``interrupts.install()`` resets it too)."""
    from publisher import interrupts

    yield
    interrupts._pending = None
    interrupts._deferred = 0


@pytest.fixture
def clock(monkeypatch):
    """A controllable clock for the build state machine and the sweep (``publisher.builds.now``)."""
    from django.utils import timezone

    from publisher import builds

    class Clock:
        def __init__(self):
            self.now = timezone.now()

        def __call__(self):
            return self.now

        def advance(self, seconds):
            self.now += timedelta(seconds=seconds)

    c = Clock()
    monkeypatch.setattr(builds, "now", c)
    return c


@pytest.fixture
def site_root(tmp_path, settings):
    """A fresh SITE_ROOT for one test."""
    root = tmp_path / "site"
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_ROOT": root}
    return root


def database_url():
    """A URL for the database the tests use right now (the test database), for child processes."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@pytest.fixture
def child_env(site_root, tmp_path):
    """Environment for a child process (build, worker, web): the test database, this test's SITE_ROOT."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HEROKU_", "DATABASE_", "SITE_", "BUILD_", "DJANGO_"))
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "settings.settings",
            "DATABASE_URL": database_url(),
            "SITE_ROOT": str(site_root),
            "LAUNCHER": "local",
            "SECRET_KEY": "test-secret-key",
            "DEBUG": "0",
            "VAR_DIR": str(tmp_path / "var"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class Children:
    """Processes a test started, each in its own session; whatever happens, their groups are killed at teardown."""

    def __init__(self):
        self.procs = []

    def start(self, args, *, env, **kwargs):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.STDOUT)
        proc = subprocess.Popen(
            args, env=env, cwd=PROJECT_ROOT, start_new_session=True, stdin=subprocess.DEVNULL, text=True, **kwargs
        )
        self.procs.append(proc)
        return proc

    def manage(self, *args, env, **kwargs):
        return self.start([sys.executable, "manage.py", *args], env=env, **kwargs)

    def kill_all(self):
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()


@pytest.fixture
def children():
    started = Children()
    yield started
    started.kill_all()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, *, timeout=30.0, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"Timed out after {timeout}s waiting for {message}")
