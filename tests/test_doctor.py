"""manage.py publisherdoctor (publisher/doctor.py): every finding, the Heroku ones against ``responses``; exit 0 when
all is well, 1 when something needs fixing; the key never printed."""

import logging
import subprocess
import sys
from datetime import timedelta

import pytest
import requests
import responses
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError, connections
from django.db.migrations.executor import MigrationExecutor
from django_q.models import Schedule

from publisher import doctor
from publisher.destinations import DestinationError
from publisher.destinations.local import LocalDestination
from publisher.health import Finding, Level
from publisher.launchers.heroku import HerokuLauncher
from publisher.launchers.local import LocalLauncher
from publisher.models import Build, BuildState, SweepStatus
from publisher.sweep import SCHEDULE_NAME

from .conftest import PROJECT_ROOT, free_port

S = BuildState
API = "https://api.heroku.com"
APP = "example-app"
KEY = "doctor-key-5e6f7a8b9c"
APP_URL = f"{API}/apps/{APP}"
FORMATION_URL = f"{APP_URL}/formation"
BASIC = [
    {"type": "web", "quantity": 1, "size": "Basic", "command": "gunicorn settings.wsgi"},
    {"type": "worker", "quantity": 1, "size": "Basic", "command": "python manage.py qcluster"},
]


def app_info(stack="heroku-24", *, build_stack=None, generation="cedar"):
    """``GET /apps/{app}`` as Heroku answers it (the fields the doctor reads, and a few it ignores)."""
    named = lambda name: {"id": "01234567-89ab-cdef-0123-456789abcdef", "name": name}  # noqa: E731
    info = {
        "id": "11111111-2222-3333-4444-555555555555",
        "name": APP,
        "region": named("eu"),
        "owner": {"email": "owner@example.com", "id": "22222222-3333-4444-5555-666666666666"},
        "maintenance": False,
        "web_url": f"https://{APP}.herokuapp.com/",
    }
    if stack:
        info["stack"] = named(stack)
        info["build_stack"] = named(build_stack or stack)
    if generation:
        info["generation"] = named(generation)
    return info


@pytest.fixture
def heroku(settings, tmp_path):
    """Configure the Heroku launcher (a local destination in this test's folder); returns a function that does it
    again with other options."""

    def configure(**options):
        settings.PUBLISHER = {
            **settings.PUBLISHER,
            "LAUNCHER": {
                "BACKEND": "publisher.launchers.heroku.HerokuLauncher",
                "OPTIONS": {"API_KEY": KEY, "APP_NAME": APP, **options},
            },
            "SITE_ROOT": tmp_path / "site",
            "LOG_DIR": tmp_path / "log",
        }
        return HerokuLauncher(**settings.PUBLISHER["LAUNCHER"]["OPTIONS"])

    configure()
    return configure


@pytest.fixture
def all_logs(caplog):
    """Every log record at DEBUG, including the ``publisher`` logger (which does not propagate) and urllib3."""
    publisher = logging.getLogger("publisher")
    publisher.addHandler(caplog.handler)
    levels = {name: logging.getLogger(name).level for name in ("", "publisher", "urllib3", "requests")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.handler.setLevel(logging.DEBUG)
    yield caplog
    publisher.removeHandler(caplog.handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def levels(found):
    return [finding.level for finding in found]


def texts(found):
    return "\n".join(str(finding) for finding in found)


def diagnose_with(launcher, *, info=None, info_status=200, formation=None, formation_status=200, **info_kwargs):
    """``launcher.diagnose()`` against a mocked Platform API; returns ``(findings, calls)``."""
    with responses.RequestsMock() as mock:
        mock.get(APP_URL, json=info if info is not None else app_info(**info_kwargs), status=info_status)
        if info_status == 200:
            mock.get(FORMATION_URL, json=formation if formation is not None else BASIC, status=formation_status)
        found = launcher.diagnose()
        calls = list(mock.calls)
    return found, calls


# --- Heroku: the key, the app -----------------------------------------------------------------------------------------


def test_a_good_heroku_configuration_is_three_oks_from_two_gets(heroku):
    found, calls = diagnose_with(heroku())
    assert levels(found) == [Level.OK, Level.OK, Level.OK], texts(found)
    assert "accepts the API key" in found[0].text and APP in found[0].text and "region eu" in found[0].text
    assert "'heroku-24' (classic buildpacks)" in found[1].text and "empty: that fits" in found[1].text
    assert "does not report the limit" in found[2].text and "web 1× Basic, worker 1× Basic" in found[2].text
    assert "basic tier" in found[2].text and "cannot_run_above_limit" in found[2].hint
    # The same session as every launch: the Platform API's media type, the key as a bearer token, the timeouts.
    assert [(c.request.method, c.request.url) for c in calls] == [("GET", APP_URL), ("GET", FORMATION_URL)]
    for call in calls:
        assert call.request.headers["Accept"] == "application/vnd.heroku+json; version=3"
        assert call.request.headers["Authorization"] == f"Bearer {KEY}"
        assert call.request.req_kwargs["timeout"] == (5, 15)
        assert not call.request.body


def test_the_configured_timeouts_and_api_url_are_used(heroku):
    launcher = heroku(CONNECT_TIMEOUT=2, READ_TIMEOUT=7, API_URL="https://proxy.example.org/heroku/")
    with responses.RequestsMock() as mock:
        mock.get("https://proxy.example.org/heroku/apps/example-app", json=app_info())
        mock.get("https://proxy.example.org/heroku/apps/example-app/formation", json=BASIC)
        launcher.diagnose()
        assert [c.request.req_kwargs["timeout"] for c in mock.calls] == [(2, 7), (2, 7)]


def test_an_app_name_is_quoted_into_the_path(heroku):
    launcher = heroku(APP_NAME="odd/name")
    with responses.RequestsMock() as mock:
        mock.get(f"{API}/apps/odd%2Fname", json={"message": "Couldn't find that app.", "id": "not_found"}, status=404)
        (finding,) = launcher.diagnose()
    assert finding.level is Level.FAIL


@pytest.mark.parametrize(
    ("status", "error_id", "says", "hint"),
    [
        (401, "unauthorized", "Heroku rejected the API key (HTTP 401, unauthorized)", "heroku authorizations:create"),
        (403, "forbidden", "refuses it access to the app 'example-app' (HTTP 403", "member or collaborator"),
        (404, "not_found", "Heroku has no app 'example-app' that this key can see (HTTP 404)", "HEROKU_APP_NAME"),
    ],
)
def test_a_refused_key_or_a_missing_app_is_one_failure_and_no_further_call(heroku, status, error_id, says, hint):
    body = {"id": error_id, "message": "Heroku's words"}
    found, calls = diagnose_with(heroku(), info=body, info_status=status)
    assert len(calls) == 1
    (finding,) = found
    assert finding.level is Level.FAIL and says in finding.text and hint in finding.hint


def test_a_server_error_names_the_request_id(heroku):
    launcher = heroku()
    with responses.RequestsMock() as mock:
        mock.get(APP_URL, json={"id": "internal", "message": "boom"}, status=503, headers={"Request-Id": "req-42"})
        (finding,) = launcher.diagnose()
    assert finding.level is Level.FAIL and "HTTP 503" in finding.text and "req-42" in finding.text
    assert "status.heroku.com" in finding.hint


@pytest.mark.parametrize(
    ("error", "says"),
    [(requests.ReadTimeout("slow"), "did not answer in time"), (requests.ConnectionError("refused"), "reached")],
)
def test_an_unreachable_api_is_a_failure(heroku, error, says):
    launcher = heroku()
    with responses.RequestsMock() as mock:
        mock.get(APP_URL, body=error)
        (finding,) = launcher.diagnose()
    assert finding.level is Level.FAIL and says in finding.text and "api.heroku.com" in finding.text


@pytest.mark.parametrize("missing", ["API_KEY", "APP_NAME"])
def test_without_key_or_app_heroku_is_not_asked(heroku, missing):
    launcher = heroku(**{missing: ""})
    with responses.RequestsMock():  # any request would fail the test
        (finding,) = launcher.diagnose()
    assert finding.level is Level.FAIL and f"HEROKU_{missing} is not set" in finding.text


# --- Heroku: the stack and HEROKU_COMMAND_PREFIX ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stack", "generation", "prefix", "level", "says"),
    [
        ("heroku-24", "cedar", "", Level.OK, "that fits"),
        ("heroku-22", None, "", Level.OK, "that fits"),
        ("cnb", "fir", "launcher", Level.OK, "HEROKU_COMMAND_PREFIX is 'launcher': that fits"),
        ("cnb", None, "", Level.FAIL, "python: command not found"),
        ("heroku-24", "fir", "", Level.FAIL, "python: command not found"),  # Fir apps are built with CNB
        ("heroku-24", "cedar", "launcher", Level.FAIL, "launcher: command not found"),
    ],
)
def test_the_command_prefix_must_fit_the_stack(heroku, stack, generation, prefix, level, says):
    found, _ = diagnose_with(heroku(COMMAND_PREFIX=prefix), stack=stack, generation=generation)
    stack_finding = found[1]
    assert stack_finding.level is level and says in stack_finding.text, texts(found)
    assert f"'{stack}'" in stack_finding.text
    if level is Level.FAIL:
        assert "HEROKU_COMMAND_PREFIX" in stack_finding.hint


def test_a_stack_change_at_the_next_build_that_the_prefix_does_not_fit_is_its_own_failure(heroku):
    found, _ = diagnose_with(heroku(), stack="heroku-24", build_stack="cnb", generation=None)
    assert levels(found) == [Level.OK, Level.OK, Level.FAIL, Level.OK], texts(found)
    assert "After its next build" in found[2].text and "'cnb'" in found[2].text
    assert found[2].hint == "Set HEROKU_COMMAND_PREFIX=launcher."


def test_a_stack_change_that_still_fits_says_nothing_more(heroku):
    found, _ = diagnose_with(heroku(), stack="heroku-22", build_stack="heroku-24")
    assert len(found) == 3 and levels(found) == [Level.OK] * 3


def test_an_answer_without_a_stack_is_a_warning(heroku):
    found, _ = diagnose_with(heroku(), stack=None)
    assert found[1].level is Level.WARN and "names no stack" in found[1].text


# --- Heroku: the one-off dyno limit -----------------------------------------------------------------------------------


def test_the_limit_is_not_guessed_on_eco_it_warns_that_web_and_worker_leave_no_room(heroku):
    eco = [{"type": "web", "quantity": 1, "size": "Eco"}, {"type": "worker", "quantity": 1, "size": "Eco"}]
    found, _ = diagnose_with(heroku(), formation=eco)
    limit = found[-1]
    assert limit.level is Level.WARN and "does not report the limit" in limit.text and "eco tier" in limit.text
    assert "Basic or larger" in limit.hint and "sweepbuilds" in limit.hint


def test_the_tier_is_read_from_the_sizes_of_the_formation(heroku):
    sized = [
        {"type": "web", "quantity": 2, "size": "Standard-2X"},
        {"type": "worker", "quantity": 0, "size": "standard-1x"},
    ]
    found, _ = diagnose_with(heroku(), formation=sized)
    assert found[-1].level is Level.OK and "web 2× Standard-2X (standard tier)" in found[-1].text


def test_a_formation_heroku_will_not_give_is_a_warning_not_a_failure(heroku):
    found, _ = diagnose_with(heroku(), formation={"id": "internal", "message": "boom"}, formation_status=500)
    assert found[-1].level is Level.WARN and "one-off dyno limit is unknown" in found[-1].text


def test_diagnose_starts_nothing_and_sends_no_body(heroku):
    # responses refuses any request not registered: no POST /apps/{app}/dynos can have been sent.
    _, calls = diagnose_with(heroku(DYNO_SIZE="standard-2x", COMMAND_PREFIX=""))
    assert all(c.request.method == "GET" and c.request.body is None for c in calls)


# --- The key is never printed -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_doctor_never_prints_the_key(heroku, all_logs, capsys):
    echoed = {"id": "unauthorized", "message": f"Invalid credentials provided: Bearer {KEY} ({KEY})."}
    with responses.RequestsMock() as mock:
        mock.get(APP_URL, json=echoed, status=401, headers={"Request-Id": f"req-{KEY}"})
        with pytest.raises(CommandError) as caught:
            call_command("publisherdoctor")
    out, err = capsys.readouterr()
    assert caught.value.returncode == 1
    assert "Heroku rejected the API key" in out
    assert KEY not in out + err + str(caught.value)
    assert all(KEY not in record.getMessage() for record in all_logs.records)
    assert any("diagnose" in record.getMessage() for record in all_logs.records)  # the logs were captured


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_doctor_process_never_prints_the_key(child_env):
    """A real process, with a configuration error and Heroku out of reach: it runs, reports both, exits 1, and
    nothing it writes to stdout or stderr (its logs included) holds the key."""
    child_env.update(
        {
            "LAUNCHER": "heroku",
            "HEROKU_API_KEY": KEY,
            "HEROKU_APP_NAME": APP,
            "HEROKU_API_URL": f"http://127.0.0.1:{free_port()}",
            "HEROKU_CONNECT_TIMEOUT": "2",
            "BUILD_STALL_AFTER": "60",  # below BUILD_LOST_AFTER: a check error (E006) that other commands refuse
        }
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "publisherdoctor"],
        cwd=PROJECT_ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL Heroku could not be asked about the app 'example-app'" in result.stdout
    assert "(publisher.E006)" in result.stdout  # reported among the findings, not refused
    assert "Traceback" not in result.stderr
    assert KEY not in result.stdout + result.stderr


# --- The local launcher -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_local_launcher_can_start_the_build_command(settings, tmp_path):
    (finding,) = LocalLauncher().diagnose()
    assert finding.level is Level.OK and "can start builds" in finding.text


def test_a_local_python_that_cannot_run_manage_py_fails(tmp_path):
    (finding,) = LocalLauncher(PYTHON="/bin/false").diagnose()
    assert finding.level is Level.FAIL and "exit 1" in finding.text and "help buildstaticsite" in finding.hint


def test_a_local_python_that_does_not_exist_fails(tmp_path):
    (finding,) = LocalLauncher(PYTHON=str(tmp_path / "nope")).diagnose()
    assert finding.level is Level.FAIL and "cannot run" in finding.text


def test_a_launcher_with_nothing_to_ask_is_one_ok():
    (finding,) = doctor.launcher_findings()  # the test settings' recording launcher
    assert finding.level is Level.OK and "recording launcher has nothing to ask" in finding.text


def test_an_unloadable_launcher_is_not_asked(settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "LAUNCHER": {"BACKEND": "nope.Launcher"}}
    (finding,) = doctor.launcher_findings()
    assert finding.level is Level.FAIL and "publisher.E001" in finding.hint


# --- The destination --------------------------------------------------------------------------------------------------


def test_a_destination_that_accepts_a_write(site_root):
    (finding,) = doctor.destination_findings()
    assert finding.level is Level.OK and str(site_root) in finding.text
    assert not list(site_root.iterdir())  # the probe is gone


def test_a_destination_that_refuses_a_write(site_root, monkeypatch):
    def refuse(self):
        raise DestinationError("AccessDenied writing the probe (request id R1)", code="AccessDenied")

    monkeypatch.setattr(LocalDestination, "check_write", refuse)
    (finding,) = doctor.destination_findings()
    assert finding.level is Level.FAIL and "refused a test write: AccessDenied" in finding.text and finding.hint


def test_a_destination_that_cannot_try_a_write_is_a_warning(site_root, monkeypatch):
    def missing(self):
        raise NotImplementedError("LocalDestination must implement check_write()")

    monkeypatch.setattr(LocalDestination, "check_write", missing)
    (finding,) = doctor.destination_findings()
    assert finding.level is Level.WARN


def test_an_unloadable_destination_is_not_tried(settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "DESTINATION": {"BACKEND": "nope.Destination"}}
    (finding,) = doctor.destination_findings()
    assert finding.level is Level.FAIL and "publisher.E030" in finding.hint


# --- The configuration and the database -------------------------------------------------------------------------------


def test_configuration_errors_and_warnings_are_findings_with_id_and_hint(heroku, settings):
    settings.DEBUG, settings.ADMINS = False, []
    heroku(API_KEY="")
    found = doctor.configuration_findings()
    (key,) = [f for f in found if "publisher.E010" in f.text]
    assert key.level is Level.FAIL and "HEROKU_API_KEY" in key.hint
    (admins,) = [f for f in found if "publisher.W041" in f.text]
    assert admins.level is Level.WARN


def test_a_clean_configuration_is_one_ok(site_root, settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    assert levels(doctor.configuration_findings()) == [Level.OK]


@pytest.mark.django_db
def test_a_migrated_database_is_ok_and_its_checks_run():
    found = doctor.database_findings()
    assert found[0].level is Level.OK and "every migration is applied" in found[0].text
    Schedule.objects.filter(name=SCHEDULE_NAME).delete()
    found = doctor.database_findings()
    assert [f.level for f in found] == [Level.OK, Level.WARN] and "publisher.W040" in found[1].text


@pytest.mark.django_db
def test_unapplied_migrations_fail(monkeypatch):
    class Migration:
        app_label, name = "publisher", "0009_future"

    monkeypatch.setattr(MigrationExecutor, "migration_plan", lambda self, targets: [(Migration, False)])
    (finding,) = doctor.database_findings()
    assert finding.level is Level.FAIL and "publisher.0009_future" in finding.text and "migrate" in finding.hint


@pytest.mark.django_db
def test_an_unreachable_database_fails_and_the_sweep_and_builds_are_not_asked(monkeypatch, site_root):
    def unreachable():
        raise OperationalError('connection to server at "db.example.org" failed: timeout expired\nmore detail')

    monkeypatch.setattr(connections["default"], "ensure_connection", unreachable)
    found = doctor.findings()
    (database,) = [f for f in found if "database" in f.text and f.level is Level.FAIL]
    assert "cannot be reached" in database.text and "more detail" not in database.text
    assert "DATABASE_URL" in database.hint
    assert found[-1].level is Level.WARN and "not looked at" in found[-1].text


def test_a_section_that_crashes_is_a_failure_and_the_others_still_run(monkeypatch, site_root, all_logs):
    def crash():
        raise RuntimeError("bug")

    monkeypatch.setattr(doctor, "database_findings", crash)
    monkeypatch.setattr(doctor, "sweep_findings", crash)
    monkeypatch.setattr(doctor, "build_findings", crash)
    found = doctor.findings()
    assert "Looking at the database crashed: RuntimeError: bug" in texts(found)
    assert any("destination" in f.text for f in found)
    assert any(record.exc_info for record in all_logs.records)


# --- The sweep --------------------------------------------------------------------------------------------------------


@pytest.fixture
def worker(clock):
    """A worker runs the every-minute schedule (its next run is due within the minute)."""
    Schedule.objects.filter(name=SCHEDULE_NAME).update(next_run=clock.now + timedelta(seconds=30))


@pytest.fixture
def no_worker(clock):
    """Nobody runs the schedule: its next run was due an hour ago."""
    Schedule.objects.filter(name=SCHEDULE_NAME).update(next_run=clock.now - timedelta(hours=1))


def swept(clock, seconds_ago):
    SweepStatus.objects.update_or_create(pk=1, defaults={"ran_at": clock.now - timedelta(seconds=seconds_ago)})


@pytest.mark.django_db
def test_a_sweep_that_never_ran_fails(clock, worker):
    (finding,) = doctor.sweep_findings()
    assert finding.level is Level.FAIL and "never run" in finding.text and "qcluster" in finding.hint


@pytest.mark.django_db
@pytest.mark.parametrize(("ago", "level"), [(30, Level.OK), (180, Level.OK), (181, Level.FAIL)])
def test_with_a_worker_the_sweep_is_silent_after_three_minutes(clock, worker, ago, level):
    swept(clock, ago)
    (finding,) = doctor.sweep_findings()
    assert finding.level is level and "every 1 min" in finding.text


@pytest.mark.django_db
@pytest.mark.parametrize(("ago", "level"), [(600, Level.OK), (1800, Level.OK), (1801, Level.FAIL)])
def test_without_a_worker_heroku_schedulers_ten_minutes_count(clock, no_worker, ago, level):
    swept(clock, ago)
    (finding,) = doctor.sweep_findings()
    assert finding.level is level and "Heroku Scheduler" in finding.text
    if level is Level.FAIL:
        assert "has not run for 30 min" in finding.text and "sweepbuilds" in finding.hint


# --- The builds -------------------------------------------------------------------------------------------------------


@pytest.fixture
def limits(settings):
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "BUILD_LOST_AFTER": 120,
        "BUILD_STALL_AFTER": 900,
        "BUILD_START_TIMEOUT": 300,
    }


def finished(clock, state, *, error="", minutes_ago=10, release=""):
    at = clock.now - timedelta(minutes=minutes_ago)
    return Build.objects.create(state=state, error=error, finished_at=at, release=release)


@pytest.mark.django_db
def test_no_builds_yet(clock, limits):
    assert [str(f) for f in doctor.build_findings()] == ["OK   No build has finished yet."]


@pytest.mark.django_db
def test_the_last_build_succeeded(clock, limits):
    finished(clock, S.FAILED, error="old failure", minutes_ago=60)
    build = finished(clock, S.SUCCEEDED, minutes_ago=5, release="20260101T000000-b2-a1")
    (finding,) = doctor.build_findings()
    assert finding.level is Level.OK
    assert finding.text == f"The last build, #{build.pk}, succeeded 5 min ago (release 20260101T000000-b2-a1)."


@pytest.mark.django_db
def test_one_or_two_failures_since_the_last_success_warn(clock, limits):
    finished(clock, S.SUCCEEDED, minutes_ago=60)
    build = finished(clock, S.FAILED, error="Rendering failed: KeyError 'x'")
    (finding,) = doctor.build_findings()
    assert finding.level is Level.WARN and f"#{build.pk} failed: Rendering failed: KeyError 'x'" in finding.text


@pytest.mark.django_db
def test_three_failures_in_a_row_fail_and_name_each(clock, limits):
    finished(clock, S.SUCCEEDED, minutes_ago=60)
    first = finished(clock, S.FAILED, error="interrupted", minutes_ago=30)
    second = finished(clock, S.LOST, error="the dyno is gone", minutes_ago=20)
    cancelled = finished(clock, S.CANCELLED, minutes_ago=15)  # an operator's action is no failure
    third = finished(clock, S.FAILED, error="x" * 500, minutes_ago=10)
    (finding,) = doctor.build_findings()
    assert finding.level is Level.FAIL and finding.text.startswith("The last 3 builds failed: ")
    assert f"#{third.pk} failed: {'x' * 199}…" in finding.text
    assert f"#{second.pk} lost: the dyno is gone" in finding.text and f"#{first.pk} failed: interrupted" in finding.text
    assert f"#{cancelled.pk}" not in finding.text


@pytest.mark.django_db
def test_a_stalled_build_fails(clock, limits):
    build = Build.objects.create(
        state=S.RUNNING,
        started_at=clock.now - timedelta(hours=1),
        heartbeat_at=clock.now,
        progress_at=clock.now - timedelta(seconds=901),
        pages_done=40,
        pages_total=100,
    )
    stalled, recent = doctor.build_findings()
    assert stalled.level is Level.FAIL
    assert stalled.text == f"Build #{build.pk} is stalled: no page done for 15 min (40/100 pages)."
    assert recent.text == "No build has finished yet."


@pytest.mark.django_db
def test_a_silent_build_warns(clock, limits):
    build = Build.objects.create(
        state=S.RUNNING, started_at=clock.now - timedelta(minutes=5), heartbeat_at=clock.now - timedelta(seconds=121)
    )
    finding = doctor.build_findings()[0]
    assert finding.level is Level.WARN and f"Build #{build.pk} has written no heartbeat for 2 min" in finding.text


@pytest.mark.django_db
def test_a_healthy_running_build_is_ok(clock, limits):
    build = Build.objects.create(
        state=S.RUNNING,
        started_at=clock.now - timedelta(minutes=3),
        heartbeat_at=clock.now,
        progress_at=clock.now,
        pages_done=5,
        pages_total=10,
    )
    finding = doctor.build_findings()[0]
    assert finding.level is Level.OK and finding.text == f"Build #{build.pk} is running: 5/10 pages, started 3 min ago."


@pytest.mark.django_db
@pytest.mark.parametrize(("seconds", "level"), [(299, Level.OK), (301, Level.WARN)])
def test_a_build_launched_but_not_started(clock, limits, seconds, level):
    Build.objects.create(state=S.LAUNCHED, launched_at=clock.now - timedelta(seconds=seconds))
    finding = doctor.build_findings()[0]
    assert finding.level is level
    if level is Level.WARN:
        assert "has not started building" in finding.text and "heroku logs" in finding.hint


@pytest.mark.django_db
@pytest.mark.parametrize(("needs_operator", "level"), [(True, Level.FAIL), (False, Level.WARN)])
def test_a_build_queued_after_failed_launches(clock, limits, needs_operator, level):
    build = Build.objects.create(
        state=S.QUEUED,
        attempt=4,
        error="Launch failed: Heroku launch failed with HTTP 401 (unauthorized: Invalid credentials provided.).",
        error_status=401,
        needs_operator=needs_operator,
        next_attempt_at=clock.now + timedelta(minutes=4),
    )
    finding = doctor.build_findings()[0]
    assert finding.level is level
    assert f"Build #{build.pk} is queued after 3 failed launch(es): Launch failed: Heroku" in finding.text
    assert finding.text.endswith("; next attempt in 4 min.")


@pytest.mark.django_db
def test_a_freshly_queued_build_is_ok(clock, limits):
    build = Build.objects.create(state=S.QUEUED)
    assert str(doctor.build_findings()[0]) == f"OK   Build #{build.pk} is queued."


# --- The command ------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_all_well_exits_0_with_one_line_per_finding(clock, worker, site_root, settings, capsys):
    settings.ADMINS = [("Ops", "ops@example.com")]
    swept(clock, 10)
    call_command("publisherdoctor")
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("OK   ") for line in lines[:-1]), lines
    assert lines[-1] == f"{len(lines) - 1} OK, 0 WARN, 0 FAIL: all is well."


@pytest.mark.django_db
def test_warnings_alone_still_exit_0(clock, worker, site_root, settings, capsys):
    settings.DEBUG, settings.ADMINS = False, []
    swept(clock, 10)
    call_command("publisherdoctor")
    out = capsys.readouterr().out
    assert "WARN " in out and "publisher.W041" in out and "nothing needs fixing; look at the warnings." in out


@pytest.mark.django_db
def test_a_configuration_error_is_reported_not_refused_and_exits_1(clock, worker, heroku, capsys):
    heroku(API_KEY="")
    swept(clock, 10)
    with pytest.raises(CommandError, match="1 FAIL|2 FAIL: something needs fixing") as caught:
        call_command("publisherdoctor")
    assert caught.value.returncode == 1
    out = capsys.readouterr().out
    assert "FAIL The Heroku launcher has no API key. (publisher.E010) Set HEROKU_API_KEY." in out
    assert "FAIL Heroku was not asked: HEROKU_API_KEY is not set." in out


def test_finding_lines_read_level_text_hint():
    assert str(Finding(Level.WARN, "Something.", "Do this.")) == "WARN Something. Do this."
    assert str(Finding(Level.OK, "Fine.")) == "OK   Fine."
