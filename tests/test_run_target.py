"""`make run` brings up web + worker from the existing virtualenv; a second shell builds; the site is served."""

import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest
from dotenv import dotenv_values

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


def make_run_env(tmp_path, port, **variables):
    """The environment of a person's shell: no SITE_URL unless given, this test's database and SITE_ROOT."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "DATABASE_", "SITE_"))}
    env.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "SITE_ROOT": str(tmp_path / "site"),
            "VAR_DIR": str(tmp_path / "var"),
            "LAUNCHER": "local",
            "DEBUG": "1",
            "PORT": str(port),
            **variables,
        }
    )
    return env


def start_make_run(children, tmp_path, env):
    # -o: treat the virtualenv as up to date, so the test never reinstalls it.
    log = open(tmp_path / "make-run.log", "w")
    proc = children.start(["make", "-o", ".venv/bin/.installed", "run"], env=env, stdout=log)
    proc.log = log
    return proc


def stop_make_run(proc):
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C stops web and worker
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    proc.log.close()


def admin_opener(base, output):
    """An opener logged in to the admin as the development admin whose password `make run` printed."""
    password = re.search(r"user 'admin', password '([^']*)'", output).group(1)
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(f"{base}/admin/login/", timeout=5) as response:
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.read().decode()).group(1)
    form = {"username": "admin", "password": password, "csrfmiddlewaretoken": token, "next": "/admin/"}
    with opener.open(f"{base}/admin/login/", data=urllib.parse.urlencode(form).encode(), timeout=5) as response:
        assert response.url.endswith("/admin/"), "logged in"
    return opener


def view_site_link(opener, base):
    with opener.open(f"{base}/admin/", timeout=5) as response:
        return re.search(r'<a href="([^"]*)">View site</a>', response.read().decode()).group(1)


def process_environments(output):
    """The environment of each process honcho started (``web.1 started (pid=N)``), read from /proc."""
    environments = {}
    for name, pid in re.findall(r"(\w+)\.1 started \(pid=(\d+)\)", output):
        with open(f"/proc/{pid}/environ", "rb") as file:
            items = file.read().decode().split("\0")
        environments[name] = dict(item.split("=", 1) for item in items if "=" in item)
    return environments


def test_make_run_serves_the_admin_and_the_built_site(tmp_path, children):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # SITE_URL follows PORT, unless the developer's .env sets it.
    expected_site_url = dotenv_values(PROJECT_ROOT / ".env").get("SITE_URL") or f"{base}/site/"
    env = make_run_env(tmp_path, port)
    proc = start_make_run(children, tmp_path, env)
    try:
        wait_for(lambda: get(f"{base}/admin/login/")[0] == 200, timeout=90, message="the admin")
        output = (tmp_path / "make-run.log").read_text()
        assert f"http://127.0.0.1:{port}/admin/" in output and "user 'admin'" in output
        assert "worker" in output  # honcho started the worker next to the web process
        assert expected_site_url in output  # devsetup says where the site appears

        # Every process sees the one SITE_URL, though honcho gave each its own PORT: the web process (the admin's
        # "View site"), the worker, and the build that publishing the demo pages launched (its sitemap).
        environments = process_environments(output)
        assert {name: e.get("SITE_URL") for name, e in environments.items()} == {
            "web": expected_site_url,
            "worker": expected_site_url,
        }
        assert environments["web"]["PORT"] == str(port) != environments["worker"]["PORT"]
        assert view_site_link(admin_opener(base, output), base) == expected_site_url
        sitemap = wait_for(lambda: get(f"{base}/site/sitemap.xml")[1], timeout=60, message="the demo pages' build")
        assert f"<loc>{expected_site_url}welcome/</loc>" in sitemap

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
        stop_make_run(proc)
    assert proc.poll() is not None


def test_make_run_keeps_a_site_url_from_the_environment(tmp_path, children):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_make_run(children, tmp_path, make_run_env(tmp_path, port, SITE_URL="https://www.example.org/news/"))
    try:
        wait_for(lambda: get(f"{base}/admin/login/")[0] == 200, timeout=90, message="the admin")
        output = (tmp_path / "make-run.log").read_text()
        assert view_site_link(admin_opener(base, output), base) == "https://www.example.org/news/"
    finally:
        stop_make_run(proc)
