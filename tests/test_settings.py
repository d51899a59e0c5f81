"""Configuration from the environment (DESIGN §1)."""

import json
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from settings import env

from .conftest import PROJECT_ROOT


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", " On "])
def test_true_values(monkeypatch, value):
    monkeypatch.setenv("FLAG", value)
    assert env.boolean("FLAG") is True


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "OFF"])
def test_false_values(monkeypatch, value):
    monkeypatch.setenv("FLAG", value)
    assert env.boolean("FLAG", True) is False


def test_unset_and_empty_take_the_default(monkeypatch):
    monkeypatch.delenv("FLAG", raising=False)
    assert env.boolean("FLAG", True) is True
    monkeypatch.setenv("FLAG", "  ")
    assert env.boolean("FLAG", True) is True and env.integer("FLAG", 7) == 7 and env.strings("FLAG", ["a"]) == ["a"]


def test_malformed_values_name_the_variable(monkeypatch):
    monkeypatch.setenv("FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="FLAG"):
        env.boolean("FLAG")
    monkeypatch.setenv("BUILD_TIMEOUT", "3h")
    with pytest.raises(ImproperlyConfigured, match="BUILD_TIMEOUT"):
        env.integer("BUILD_TIMEOUT", 1)


def test_lists_are_comma_separated(monkeypatch):
    monkeypatch.setenv("ALLOWED_HOSTS", "example.com, www.example.com,,")
    assert env.strings("ALLOWED_HOSTS") == ["example.com", "www.example.com"]


PRINT_SETTINGS = (
    "import json, django; from django.conf import settings; django.setup(); "
    "p = settings.PUBLISHER; print(json.dumps({'launcher': p['LAUNCHER'], 'site_root': str(p['SITE_ROOT']), "
    "'timeout': p['BUILD_TIMEOUT'], 'debug': settings.DEBUG, 'db': settings.DATABASES['default'], "
    "'hosts': settings.ALLOWED_HOSTS}, default=str))"
)


def load_settings(tmp_path, **variables):
    environment = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "settings.settings",
        "VAR_DIR": str(tmp_path / "var"),
        **variables,
    }
    return subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_secret_key_is_required_without_debug(tmp_path):
    result = load_settings(tmp_path, DEBUG="0", SECRET_KEY="")
    assert result.returncode != 0 and "SECRET_KEY is not set" in result.stderr


@pytest.mark.slow
def test_environment_fills_the_publisher_setting(tmp_path):
    result = load_settings(
        tmp_path,
        SECRET_KEY="k",
        DEBUG="0",
        LAUNCHER="heroku",
        HEROKU_API_KEY="secret-key",
        HEROKU_APP_NAME="my-app",
        HEROKU_DYNO_SIZE="standard-2x",
        BUILD_TIMEOUT="600",
        SITE_ROOT="relative/site",
        ALLOWED_HOSTS="a.example,b.example",
        DATABASE_URL="postgres://u:p@db.example.com:5432/x",
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["launcher"]["BACKEND"] == "publisher.launchers.heroku.HerokuLauncher"
    assert values["launcher"]["OPTIONS"]["APP_NAME"] == "my-app"
    assert values["launcher"]["OPTIONS"]["DYNO_SIZE"] == "standard-2x"
    assert values["timeout"] == 600 and values["debug"] is False
    assert values["site_root"] == str(PROJECT_ROOT / "relative" / "site")
    assert values["hosts"] == ["a.example", "b.example"]
    assert values["db"]["OPTIONS"]["sslmode"] == "require" and values["db"]["CONN_MAX_AGE"] == 600


@pytest.mark.slow
def test_sqlite_is_set_up_for_several_writers(tmp_path):
    result = load_settings(tmp_path, SECRET_KEY="k")
    assert result.returncode == 0, result.stderr
    db = json.loads(result.stdout)["db"]
    assert db["NAME"].endswith("db.sqlite3")
    assert db["OPTIONS"]["transaction_mode"] == "IMMEDIATE" and db["OPTIONS"]["timeout"] == 20
    assert "journal_mode=WAL" in db["OPTIONS"]["init_command"]


@pytest.mark.slow
def test_a_malformed_variable_stops_startup(tmp_path):
    result = load_settings(tmp_path, SECRET_KEY="k", BUILD_TIMEOUT="three hours")
    assert result.returncode != 0 and "BUILD_TIMEOUT must be a whole number" in result.stderr


@pytest.mark.django_db
def test_a_database_without_partial_indexes_is_refused(monkeypatch):
    from django.db import connection

    from publisher import checks

    assert checks.check_partial_indexes(databases=["default"]) == []
    monkeypatch.setattr(connection.features, "supports_partial_indexes", False)
    (error,) = checks.check_partial_indexes(databases=["default"])
    assert error.id == "publisher.E003"


def test_build_settings_out_of_range_are_errors(settings):
    from publisher import checks

    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_HEARTBEAT_INTERVAL": 0}
    assert [e.id for e in checks.check_build_settings()] == ["publisher.E004"]
    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_HEARTBEAT_INTERVAL": 10, "UNKNOWN_KEY": 1}
    assert [e.id for e in checks.check_launcher()] == ["publisher.E002"]
