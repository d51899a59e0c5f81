"""`make run` brings up web + worker from the existing virtualenv; a second shell builds; the site is served."""

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from .conftest import PROJECT_ROOT, free_port, wait_for

pytestmark = pytest.mark.slow


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, ""


def test_make_run_serves_the_admin_and_the_built_site(tmp_path, children):
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "DATABASE_", "SITE_"))}
    env.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "SITE_ROOT": str(tmp_path / "site"),
            "SITE_URL": f"http://127.0.0.1:{port}/site/",
            "VAR_DIR": str(tmp_path / "var"),
            "LAUNCHER": "local",
            "DEBUG": "1",
            "PORT": str(port),
        }
    )
    # -o: treat the virtualenv as up to date, so the test never reinstalls it.
    log = open(tmp_path / "make-run.log", "w")
    proc = children.start(["make", "-o", ".venv/bin/.installed", "run"], env=env, stdout=log)
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/admin/login/")[0] == 200, timeout=90, message="the admin")
        output = (tmp_path / "make-run.log").read_text()
        assert f"http://127.0.0.1:{port}/admin/" in output and "user 'admin'" in output
        assert "worker" in output  # honcho started the worker next to the web process

        build = subprocess.run(
            [sys.executable, "manage.py", "buildstaticsite"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert build.returncode == 0, build.stdout + build.stderr
        status, html = get(f"http://127.0.0.1:{port}/site/")
        assert status == 200 and "Welcome" in html and "About us" in html
        status, html = get(f"http://127.0.0.1:{port}/site/welcome/")
        assert status == 200 and "built by publisher" in html
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C stops web and worker
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        log.close()
    assert proc.poll() is not None
