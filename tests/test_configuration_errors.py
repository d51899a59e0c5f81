"""A malformed variable stops every process with its message alone (no traceback) and exit code 2 (DESIGN §1, §6)."""

import shlex
import subprocess
import sys
import urllib.request

import pytest
from django.core.exceptions import ImproperlyConfigured

from settings import env

from .conftest import PROJECT_ROOT, free_port, wait_for

BAD = [
    ("BUILD_TIMEOUT", "1h", "whole number"),
    ("DEBUG", "maybe", "1/0, true/false"),
    ("ADMINS", "not-an-email", "email addresses"),
    ("ADMINS", "ops@example.com, not-an-email", "email addresses"),
    ("SERVER_EMAIL", "publisher@", "an email address"),
    ("SITE_URL", "notaurl", "absolute http"),
    ("SITE_URL", "ftp://files.example.org/", "absolute http"),
    ("SITE_URL", "https:///site/", "absolute http"),
]


def run(args, tmp_path, **variables):
    environment = {
        "PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}:/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "settings.settings",
        "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SECRET_KEY": "k",
        "DEBUG": "0",
        **variables,
    }
    return subprocess.run(args, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=60)


def assert_short_message(result, name):
    output = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert 1 <= len(output.splitlines()) <= 2, output
    assert name in output, output


@pytest.mark.slow
@pytest.mark.parametrize(("name", "value", "says"), BAD)
def test_manage_py_prints_the_message_alone_and_exits_2(tmp_path, name, value, says):
    result = run([sys.executable, "manage.py", "check"], tmp_path, **{name: value})
    assert_short_message(result, name)
    bad_item = value.split(",")[-1].strip()
    assert says in result.stderr and repr(bad_item) in result.stderr


@pytest.mark.slow
def test_a_missing_secret_key_is_a_short_message_too(tmp_path):
    result = run([sys.executable, "manage.py", "check"], tmp_path, SECRET_KEY="", DEBUG="0")
    assert_short_message(result, "SECRET_KEY")


@pytest.mark.slow
def test_a_project_command_reports_it_the_same_way(tmp_path):
    # Without settings Django knows only its own commands: the worker's would be "Unknown command" plus a traceback.
    result = run([sys.executable, "manage.py", "qcluster"], tmp_path, BUILD_TIMEOUT="1h")
    assert_short_message(result, "BUILD_TIMEOUT")


def procfile_command(process):
    for line in (PROJECT_ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            return shlex.split(command)
    raise AssertionError(f"no {process!r} process in the Procfile")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "value"), [("BUILD_TIMEOUT", "1h"), ("DEBUG", "maybe"), ("SITE_URL", "notaurl")])
def test_the_web_process_prints_the_message_alone_and_exits_2(tmp_path, name, value):
    result = run(procfile_command("web"), tmp_path, PORT=str(free_port()), **{name: value})
    assert_short_message(result, name)
    assert result.stdout.strip() == ""  # gunicorn did not start, so it logged nothing


def test_configuration_errors_are_still_improperly_configured(monkeypatch):
    monkeypatch.setenv("SITE_URL", "notaurl")
    with pytest.raises(ImproperlyConfigured, match="SITE_URL"):
        env.url("SITE_URL", "http://127.0.0.1:8000/site/")
    assert issubclass(env.ConfigurationError, ImproperlyConfigured)


@pytest.mark.parametrize(
    "value", ["http://127.0.0.1:8001/site/", "https://www.example.org", "http://web:8000/", "https://[::1]/"]
)
def test_site_url_accepts_absolute_http_urls(monkeypatch, value):
    monkeypatch.setenv("SITE_URL", value)
    assert env.url("SITE_URL", "unused") == value


@pytest.mark.parametrize("value", ["notaurl", "/site/", "ftp://example.org/", "http://", "http://host:port/"])
def test_site_url_refuses_anything_else(monkeypatch, value):
    monkeypatch.setenv("SITE_URL", value)
    with pytest.raises(env.ConfigurationError, match="SITE_URL"):
        env.url("SITE_URL", "unused")


def test_admins_are_checked_and_become_pairs(monkeypatch):
    monkeypatch.setenv("ADMINS", "Ops Team <ops@example.com>, dev@example.org")
    assert env.emails("ADMINS") == [("Ops Team", "ops@example.com"), ("dev@example.org", "dev@example.org")]
    monkeypatch.setenv("SERVER_EMAIL", "Publisher <publisher@example.com>")
    assert env.email("SERVER_EMAIL") == "Publisher <publisher@example.com>"
    monkeypatch.setenv("ADMINS", "ops@example.com, Ops")
    with pytest.raises(env.ConfigurationError, match="ADMINS"):
        env.emails("ADMINS")


@pytest.mark.slow
def test_the_web_process_logs_check_errors_with_hints_and_keeps_serving_the_admin(tmp_path, children):
    """A broken Heroku configuration (no key, no app) is logged at ERROR with each hint when gunicorn starts, once,
    in the master (``--preload``), and the admin still answers: editors keep working while the banner says why."""
    port = free_port()
    log = tmp_path / "web.log"
    environment = {
        "PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}:/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "settings.settings",
        "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SECRET_KEY": "k",
        "DEBUG": "1",  # static files without collectstatic
        "PORT": str(port),
        "LAUNCHER": "heroku",
        "WEB_CONCURRENCY": "2",
    }
    with log.open("w") as output:
        web = children.start(procfile_command("web"), env=environment, stdout=output, stderr=subprocess.STDOUT)

    def login_page():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=2) as response:
                return response.status, response.read().decode()
        except OSError:
            assert web.poll() is None, log.read_text()
            return None

    status, page = wait_for(login_page, timeout=30, interval=0.2, message="gunicorn to serve the admin")
    assert status == 200 and 'name="username"' in page
    lines = log.read_text().splitlines()
    errors = [line for line in lines if " ERROR publisher.health: " in line]
    assert any("publisher.E010" in line and "Hint: Set HEROKU_API_KEY." in line for line in errors), lines
    assert any("publisher.E011" in line and "Hint: Set HEROKU_APP_NAME" in line for line in errors), lines
    assert any("2 configuration error(s)" in line for line in errors)
    assert len([line for line in lines if "publisher.E010" in line]) == 1  # once, not once per worker
