"""Choosing a launcher: LAUNCHER=local|heroku|dotted path, and an unknown one is loud, never a silent fallback."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from django.conf import settings as django_settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from publisher.checks import check_launcher
from publisher.launchers import get_launcher
from publisher.launchers.heroku import HerokuLauncher
from publisher.launchers.local import LocalLauncher
from publisher.launchers.recording import RecordingLauncher

HEROKU_OPTIONS = {
    "API_KEY": "k",
    "APP_NAME": "example-app",
    "API_URL": "https://api.heroku.com",
    "DYNO_SIZE": "",
    "COMMAND_PREFIX": "",
    "CONNECT_TIMEOUT": 5,
    "READ_TIMEOUT": 15,
    "TOTAL_TIMEOUT": 30,
}


@pytest.fixture
def use_launcher(settings):
    def use(backend, options=None):
        settings.PUBLISHER = {**settings.PUBLISHER, "LAUNCHER": {"BACKEND": backend, "OPTIONS": options or {}}}

    return use


def publisher_ids(messages):
    return sorted(message.id for message in messages if (message.id or "").startswith("publisher."))


@pytest.mark.parametrize(
    ("backend", "options", "cls"),
    [
        ("publisher.launchers.local.LocalLauncher", {}, LocalLauncher),
        ("publisher.launchers.heroku.HerokuLauncher", HEROKU_OPTIONS, HerokuLauncher),
        ("publisher.launchers.recording.RecordingLauncher", {}, RecordingLauncher),
    ],
)
def test_get_launcher_builds_the_configured_class(use_launcher, backend, options, cls):
    use_launcher(backend, options)
    launcher = get_launcher()
    assert type(launcher) is cls
    assert launcher.name == {LocalLauncher: "local", HerokuLauncher: "heroku", RecordingLauncher: "recording"}[cls]


def test_each_call_builds_a_new_launcher_from_current_settings(use_launcher):
    use_launcher("publisher.launchers.heroku.HerokuLauncher", {**HEROKU_OPTIONS, "APP_NAME": "one"})
    first = get_launcher()
    use_launcher("publisher.launchers.heroku.HerokuLauncher", {**HEROKU_OPTIONS, "APP_NAME": "two"})
    assert (first.app_name, get_launcher().app_name) == ("one", "two")


@pytest.mark.parametrize(
    "backend", ["nonsense", "publisher.launchers.nope.Launcher", "publisher.launchers.heroku.Nope"]
)
def test_an_unknown_launcher_is_a_configuration_error(use_launcher, backend):
    use_launcher(backend)
    with pytest.raises(ImproperlyConfigured) as caught:
        get_launcher()
    assert backend in str(caught.value)
    assert "'local', 'heroku'" in str(caught.value)

    (error,) = check_launcher()
    assert error.id == "publisher.E001" and error.level == checks.ERROR
    assert backend in error.msg
    assert "LAUNCHER" in error.hint and "heroku" in error.hint


def test_an_unknown_launcher_fails_the_system_checks(use_launcher):
    use_launcher("nonsense")
    assert "publisher.E001" in publisher_ids(checks.run_checks())
    with pytest.raises(SystemCheckError, match="publisher.E001"):
        call_command("check")


def test_a_class_that_is_not_a_launcher_is_refused(use_launcher):
    use_launcher("publisher.conf.Config")
    with pytest.raises(ImproperlyConfigured, match="not a subclass"):
        get_launcher()
    assert publisher_ids(check_launcher()) == ["publisher.E001"]


@pytest.mark.parametrize(
    ("backend", "option"),
    [
        ("publisher.launchers.heroku.HerokuLauncher", "API_TOKEN"),
        ("publisher.launchers.local.LocalLauncher", "python"),
        ("publisher.launchers.recording.RecordingLauncher", "ANYTHING"),
    ],
)
def test_an_unknown_option_is_refused_by_name(use_launcher, backend, option):
    use_launcher(backend, {option: "x"})
    with pytest.raises(ImproperlyConfigured, match=option):
        get_launcher()
    (error,) = check_launcher()
    assert error.id == "publisher.E001" and option in error.msg


def test_a_launcher_reports_its_own_configuration_in_the_system_checks(use_launcher):
    use_launcher("publisher.launchers.heroku.HerokuLauncher", {**HEROKU_OPTIONS, "API_KEY": "", "APP_NAME": ""})
    assert publisher_ids(check_launcher()) == ["publisher.E010", "publisher.E011"]
    assert {"publisher.E010", "publisher.E011"} <= set(publisher_ids(checks.run_checks()))


def test_a_well_configured_launcher_passes_the_checks(use_launcher):
    use_launcher("publisher.launchers.heroku.HerokuLauncher", HEROKU_OPTIONS)
    assert check_launcher() == []


SHOW_LAUNCHER = textwrap.dedent(
    """
    import json
    import django
    django.setup()
    from django.conf import settings
    from publisher.checks import check_launcher
    print(json.dumps({
        "launcher": settings.PUBLISHER["LAUNCHER"],
        "checks": [message.id for message in check_launcher()],
    }))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("value", "backend", "option_names", "check_ids"),
    [
        ("", "publisher.launchers.local.LocalLauncher", [], []),
        ("local", "publisher.launchers.local.LocalLauncher", [], []),
        ("heroku", "publisher.launchers.heroku.HerokuLauncher", sorted(HEROKU_OPTIONS), []),
        ("publisher.launchers.recording.RecordingLauncher", "publisher.launchers.recording.RecordingLauncher", [], []),
        ("herokuu", "herokuu", [], ["publisher.E001"]),
    ],
    ids=["unset", "local", "heroku", "dotted-path", "typo"],
)
def test_the_launcher_environment_variable(tmp_path, value, backend, option_names, check_ids):
    """settings/settings.py maps LAUNCHER (and the HEROKU_* variables) into PUBLISHER["LAUNCHER"]."""
    env = {key: val for key, val in os.environ.items() if not key.startswith(("HEROKU_", "LAUNCHER", "BUILD_"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "settings.settings",
            "SECRET_KEY": "test",
            "VAR_DIR": str(tmp_path / "var"),
            "LAUNCHER": value,  # empty counts as unset, and an .env file cannot override it
            "HEROKU_API_KEY": "env-key",
            "HEROKU_APP_NAME": "example-app",
        }
    )
    shown = subprocess.run(
        [sys.executable, "-c", SHOW_LAUNCHER],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    result = json.loads(shown.stdout.strip().splitlines()[-1])
    assert result["launcher"]["BACKEND"] == backend
    assert sorted(result["launcher"]["OPTIONS"]) == option_names
    assert result["checks"] == check_ids


# --- The launcher that started a build (issue 8, defect 5) -----------------------------------------------------


def test_a_build_is_judged_by_the_launcher_named_on_it_whatever_launcher_says_now(settings):
    heroku = {"BACKEND": "publisher.launchers.heroku.HerokuLauncher", "OPTIONS": {"API_KEY": "k", "APP_NAME": "a"}}
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "LAUNCHER": {"BACKEND": "publisher.launchers.recording.RecordingLauncher"},
        "LAUNCHERS": {"heroku": heroku},
    }
    assert isinstance(get_launcher(), RecordingLauncher)
    assert isinstance(get_launcher("recording"), RecordingLauncher)
    assert isinstance(get_launcher("local"), LocalLauncher)
    assert isinstance(get_launcher("manual"), LocalLauncher)
    launcher = get_launcher("heroku")
    assert isinstance(launcher, HerokuLauncher) and launcher.app_name == "a"
    with pytest.raises(ImproperlyConfigured, match="No launcher named 'retired'"):
        get_launcher("retired")


def test_the_settings_configure_every_built_in_launcher():
    from settings.settings import PUBLISHER

    assert set(PUBLISHER["LAUNCHERS"]) == {"local", "heroku"}
