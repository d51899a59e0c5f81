"""System checks (publisher/checks.py): every misconfiguration an operator can make has an id and a hint; commands
refuse to run on errors; the web process computes them once (publisher/health.py); docs/operators.md lists every id."""

import logging
import re
import threading
from pathlib import Path

import pytest
from django.core import checks as django_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import OperationalError, connection
from django_q.models import Schedule

from publisher import checks, health
from publisher.sweep import SCHEDULE_NAME

from .conftest import PROJECT_ROOT

HEROKU = {"BACKEND": "publisher.launchers.heroku.HerokuLauncher", "OPTIONS": {"API_KEY": "k", "APP_NAME": "app"}}
LOCAL = {"BACKEND": "publisher.launchers.local.LocalLauncher", "OPTIONS": {}}
S3 = {"BACKEND": "publisher.destinations.s3.S3Destination", "OPTIONS": {"BUCKET": ""}}


@pytest.fixture(autouse=True)
def fresh_health():
    """Each test computes the process's configuration problems afresh."""
    health._messages = None
    yield
    health._messages = None


@pytest.fixture
def configure(settings, tmp_path):
    """Set keys of settings.PUBLISHER (SITE_ROOT in this test's folder unless given)."""
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_ROOT": tmp_path / "site"}

    def configure(**values):
        settings.PUBLISHER = {**settings.PUBLISHER, **values}

    return configure


def ids(messages):
    return sorted(m.id for m in messages if (m.id or "").startswith("publisher."))


def publisher_messages(databases=None):
    return [m for m in django_checks.run_checks(tags=[checks.TAG], databases=databases)]


# --- Launcher and destination -----------------------------------------------------------------------------------------


def test_the_default_test_configuration_passes(configure, settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    assert ids(publisher_messages()) == []


def test_an_unknown_launcher_is_e001_with_a_hint(configure):
    configure(LAUNCHER={"BACKEND": "herokuu", "OPTIONS": {}})
    (error,) = checks.check_launcher()
    assert error.id == checks.E001 and error.level == django_checks.ERROR and "LAUNCHER" in error.hint


def test_an_unknown_destination_is_e030_with_a_hint(configure):
    configure(DESTINATION={"BACKEND": "publisher.destinations.nope.Nope", "OPTIONS": {}})
    (error,) = checks.check_destination()
    assert error.id == checks.E030 and "SITE_DESTINATION" in error.hint


def test_malformed_publisher_settings_are_reported_once_as_e002(configure, settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    configure(NOT_A_KEY=1)
    assert ids(publisher_messages()) == ["publisher.E002"]


def test_heroku_without_key_or_app_is_e010_and_e011(configure):
    configure(LAUNCHER={**HEROKU, "OPTIONS": {}})
    assert {"publisher.E010", "publisher.E011"} <= set(ids(publisher_messages()))


def test_the_local_launcher_on_a_heroku_dyno_is_e040(configure):
    configure(LAUNCHER=LOCAL, DYNO="web.1")
    (error,) = checks.check_launcher_on_heroku()
    assert error.id == checks.E040 and error.level == django_checks.ERROR
    assert "web.1" in error.msg and "LAUNCHER=heroku" in error.hint


@pytest.mark.parametrize("dyno", ["worker.1", "scheduler.2"])
def test_e040_on_every_dyno_that_would_outlive_or_end_a_build(configure, dyno):
    configure(LAUNCHER=LOCAL, DYNO=dyno)
    assert ids(checks.check_launcher_on_heroku()) == ["publisher.E040"]


@pytest.mark.parametrize(("launcher", "dyno"), [(LOCAL, ""), (HEROKU, "web.1"), (LOCAL, "run.4821")])
def test_no_e040_off_heroku_with_the_heroku_launcher_or_in_a_one_off_dyno(configure, launcher, dyno):
    # A one-off dyno (run.N) is where builds run, started by the Heroku launcher or by hand with `heroku run`.
    configure(LAUNCHER=launcher, DYNO=dyno)
    assert checks.check_launcher_on_heroku() == []


def test_the_local_destination_on_a_heroku_dyno_is_w030(configure):
    configure(LAUNCHER=HEROKU, DYNO="web.1")
    assert "publisher.W030" in ids(publisher_messages())


# --- Timeouts that contradict each other ------------------------------------------------------------------------------


def test_the_default_timeouts_agree(configure):
    assert checks.check_build_settings() == []


@pytest.mark.parametrize(
    ("values", "expected", "named"),
    [
        ({"BUILD_HEARTBEAT_INTERVAL": 60, "BUILD_LOST_AFTER": 120}, "publisher.E005", "BUILD_LOST_AFTER"),
        ({"BUILD_HEARTBEAT_INTERVAL": 100, "BUILD_LOST_AFTER": 120}, "publisher.E005", "BUILD_HEARTBEAT_INTERVAL"),
        ({"BUILD_STALL_AFTER": 119}, "publisher.E006", "BUILD_STALL_AFTER"),
        ({"BUILD_LAUNCH_TIMEOUT": 10800}, "publisher.E007", "BUILD_LAUNCH_TIMEOUT"),
        ({"BUILD_START_TIMEOUT": 20000}, "publisher.E007", "BUILD_START_TIMEOUT"),
        ({"BUILD_RETRY_BASE": 2000}, "publisher.E004", "BUILD_RETRY_MAX"),
    ],
)
def test_contradicting_timeouts_are_errors_naming_both(configure, values, expected, named):
    configure(**values)
    (error,) = checks.check_build_settings()
    assert error.id == expected and error.level == django_checks.ERROR
    assert named in error.msg and error.hint


@pytest.mark.parametrize(
    "values",
    [
        {"BUILD_HEARTBEAT_INTERVAL": 59, "BUILD_LOST_AFTER": 119, "BUILD_STALL_AFTER": 119},  # the edges that hold
        {"BUILD_LAUNCH_TIMEOUT": 10799, "BUILD_START_TIMEOUT": 10799},
        {"BUILD_RETRY_BASE": 1800},
    ],
)
def test_timeouts_at_the_edge_pass(configure, values):
    configure(**values)
    assert checks.check_build_settings() == []


def test_a_value_out_of_range_is_e004_and_no_comparison_follows(configure):
    configure(BUILD_HEARTBEAT_INTERVAL=0, BUILD_LOST_AFTER=1)
    assert ids(checks.check_build_settings()) == ["publisher.E004"]


# --- SITE_ROOT --------------------------------------------------------------------------------------------------------


def test_a_site_root_that_does_not_exist_yet_but_can_be_created_passes(configure, tmp_path):
    configure(SITE_ROOT=tmp_path / "new" / "site")
    assert checks.check_site_root() == []


def test_a_site_root_under_a_file_is_e041(configure, tmp_path):
    (tmp_path / "file").write_text("x")
    configure(SITE_ROOT=tmp_path / "file" / "site")
    (error,) = checks.check_site_root()
    assert error.id == checks.E041 and "not a folder" in error.msg and "SITE_ROOT" in error.hint


def test_a_site_root_without_write_permission_is_e041(configure, tmp_path, monkeypatch):
    # The tests run as root, who may write anywhere: ask os.access what an ordinary user would be told.
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.setattr(checks.os, "access", lambda path, mode: Path(path) != root)
    configure(SITE_ROOT=root)
    (error,) = checks.check_site_root()
    assert error.id == checks.E041 and "not writable" in error.msg


def test_what_is_inside_site_root_is_left_to_the_build(configure, tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "releases").write_text("not a folder")  # the build fails on it, with the reason on the build
    configure(SITE_ROOT=root)
    assert checks.check_site_root() == []


def test_site_root_is_not_checked_for_other_destinations(configure, tmp_path):
    (tmp_path / "file").write_text("x")
    configure(SITE_ROOT=tmp_path / "file" / "site", DESTINATION=S3)
    assert checks.check_site_root() == []


# --- The sweep's schedule (a database check) --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_schedule_created_by_migrate_passes():
    assert Schedule.objects.filter(name=SCHEDULE_NAME).exists()
    assert checks.check_sweep_schedule(databases=["default"]) == []


@pytest.mark.django_db
def test_a_missing_schedule_is_a_warning_w040():
    Schedule.objects.filter(name=SCHEDULE_NAME).delete()
    (warning,) = checks.check_sweep_schedule(databases=["default"])
    assert warning.id == checks.W040 and warning.level == django_checks.WARNING
    assert "sweepbuilds" in warning.hint and "migrate" in warning.hint
    assert "publisher.W040" in ids(publisher_messages(databases=["default"]))


@pytest.mark.django_db
def test_without_databases_the_schedule_is_not_looked_at(django_assert_num_queries):
    Schedule.objects.filter(name=SCHEDULE_NAME).delete()
    with django_assert_num_queries(0):
        assert checks.check_sweep_schedule() == []


@pytest.mark.django_db
def test_before_migrations_ran_the_schedule_check_says_nothing(monkeypatch):
    monkeypatch.setattr(connection.introspection, "table_names", lambda *args, **kwargs: ["django_migrations"])
    assert checks.check_sweep_schedule(databases=["default"]) == []


@pytest.mark.django_db
def test_an_unreachable_database_is_not_a_configuration_error(monkeypatch):
    def unreachable(*args, **kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(connection.introspection, "table_names", unreachable)
    assert checks.check_sweep_schedule(databases=["default"]) == []


# --- ADMINS -----------------------------------------------------------------------------------------------------------


def test_empty_admins_in_production_is_w041(settings):
    settings.DEBUG, settings.ADMINS = False, []
    (warning,) = checks.check_admins()
    assert warning.id == checks.W041 and warning.level == django_checks.WARNING and "ADMINS" in warning.hint


@pytest.mark.parametrize(("debug", "admins"), [(True, []), (False, [("Ops", "ops@example.com")])])
def test_no_w041_in_development_or_with_admins(settings, debug, admins):
    settings.DEBUG, settings.ADMINS = debug, admins
    assert checks.check_admins() == []


# --- Commands refuse to run on errors, the doctor does not ------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("command", ["requestbuild", "sweepbuilds", "rollbacksite"])
def test_commands_refuse_to_run_on_errors(configure, command):
    configure(BUILD_STALL_AFTER=1)
    args = ["no-such-release"] if command == "rollbacksite" else []
    with pytest.raises(SystemCheckError, match="publisher.E006"):
        call_command(command, *args, skip_checks=False)


def test_buildstaticsite_maps_check_errors_to_exit_2(configure):
    from django.core.management.base import CommandError

    configure(BUILD_STALL_AFTER=1)
    with pytest.raises(CommandError, match="publisher.E006") as caught:
        call_command("buildstaticsite", skip_checks=False)
    assert caught.value.returncode == 2


def test_only_the_doctor_skips_the_system_checks():
    """Every publisher command runs the checks (Django's default), except the doctor, which reports them itself."""
    from django.core.management import load_command_class

    folder = PROJECT_ROOT / "publisher" / "management" / "commands"
    names = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    skipping = [name for name in names if load_command_class("publisher", name).requires_system_checks != "__all__"]
    assert skipping == ["publisherdoctor"]


# --- The web process: computed once, cached, thread-safe --------------------------------------------------------------


def test_configuration_problems_are_the_errors_only(configure, settings):
    settings.DEBUG, settings.ADMINS = False, []
    configure(LAUNCHER={**HEROKU, "OPTIONS": {}})
    problems = health.configuration_problems()
    assert ids(problems) == ["publisher.E010", "publisher.E011"]
    assert "publisher.W041" in ids(health.configuration_messages())


def test_configuration_problems_are_computed_once_per_process(configure, monkeypatch):
    configure(LAUNCHER={**HEROKU, "OPTIONS": {}})
    assert len(health.configuration_problems()) == 2
    configure(LAUNCHER=HEROKU)  # fixed, but this process computed its problems already
    assert len(health.configuration_problems()) == 2
    assert health.configuration_problems(refresh=True) == []


def test_configuration_problems_run_the_checks_once_across_threads(monkeypatch):
    calls = []
    gate = threading.Event()

    def slow_checks(**kwargs):
        calls.append(kwargs)
        gate.wait(5)
        return [django_checks.Error("broken", id="publisher.E999")]

    monkeypatch.setattr(django_checks, "run_checks", slow_checks)
    results = []
    threads = [threading.Thread(target=lambda: results.append(health.configuration_problems())) for _ in range(8)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1 and calls[0]["tags"] == [checks.TAG]
    assert [ids(r) for r in results] == [["publisher.E999"]] * 8


def test_silenced_checks_are_left_out(configure, settings):
    configure(LAUNCHER={**HEROKU, "OPTIONS": {}})
    settings.SILENCED_SYSTEM_CHECKS = ["publisher.E010"]
    assert ids(health.configuration_problems()) == ["publisher.E011"]


def test_a_crashing_check_is_one_critical_problem_and_a_logged_traceback(monkeypatch, caplog):
    def crash(**kwargs):
        raise RuntimeError("a launcher's check() is broken")

    monkeypatch.setattr(django_checks, "run_checks", crash)
    with caplog.at_level(logging.ERROR, logger="publisher.health"):
        (problem,) = health.configuration_problems()
    assert problem.id == "publisher.E000" and problem.level == django_checks.CRITICAL
    assert "broken" in problem.msg and any(record.exc_info for record in caplog.records)


def test_the_web_start_logs_each_error_with_its_hint_at_error(configure, settings, caplog):
    settings.DEBUG, settings.ADMINS = False, []
    configure(LAUNCHER={**HEROKU, "OPTIONS": {}})
    with caplog.at_level(logging.WARNING, logger="publisher.health"):
        assert health.log_configuration_problems() == 2
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    errors = [text for level, text in lines if level == logging.ERROR]
    assert any("publisher.E010" in text and "Hint: Set HEROKU_API_KEY" in text for text in errors)
    assert any("publisher.E011" in text and "HEROKU_APP_NAME" in text for text in errors)
    assert any(level == logging.WARNING and "publisher.W041" in text for level, text in lines)


# --- The table in docs/operators.md -----------------------------------------------------------------------------------


def test_every_check_id_is_in_the_operators_table_and_every_table_id_exists():
    defined = set()
    for path in (PROJECT_ROOT / "publisher").rglob("*.py"):
        defined |= set(re.findall(r'"(publisher\.[EWC]\d{3})"', path.read_text()))
    docs = (PROJECT_ROOT / "docs" / "operators.md").read_text()
    table = set(re.findall(r"^\| `(publisher\.[EWC]\d{3})` \|", docs, re.M))
    assert defined - table == set(), "ids missing from the table in docs/operators.md"
    assert table - defined == set(), "ids in docs/operators.md that no code defines"
