"""HerokuLauncher: one schema-valid request per launch, every failure mapped to LaunchError, the key never leaked."""

import json
import logging
import socket
import threading
import time

import pytest
import requests
import responses

from publisher.launchers import GONE, RUNNING, STARTING, UNKNOWN, LaunchError
from publisher.launchers.heroku import HerokuLauncher, Secret
from tests.heroku_schema import assert_valid_dyno_create, create_validator

API = "https://api.heroku.com"
APP = "example-app"
KEY = "test-key-0f1e2d3c"
DYNO_ID = "01234567-89ab-cdef-0123-456789abcdef"
DYNOS = f"{API}/apps/{APP}/dynos"
DYNO = f"{DYNOS}/{DYNO_ID}"
HANDLE = {"app": APP, "dyno_id": DYNO_ID, "dyno_name": "run.4821"}
BASE_KEYS = {"command", "attach", "type", "time_to_live", "env"}


def dyno(state="starting", **fields):
    """A Platform API dyno as Heroku returns it."""
    return {
        "id": DYNO_ID,
        "name": "run.4821",
        "type": "run",
        "state": state,
        "size": "Basic",
        "command": "python manage.py buildstaticsite --build 12",
        "attach_url": None,
        "app": {"id": "11111111-2222-3333-4444-555555555555", "name": APP},
        "release": {"id": "66666666-7777-8888-9999-000000000000", "version": 7},
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        **fields,
    }


@pytest.fixture
def make_launcher(settings, tmp_path):
    def make(**options):
        options = {"API_KEY": KEY, "APP_NAME": APP, **options}
        return HerokuLauncher(**options)

    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_TIMEOUT": 10800, "LOG_DIR": tmp_path / "log"}
    return make


@pytest.fixture
def launcher(make_launcher):
    return make_launcher()


def sent_body(call):
    return json.loads(call.request.body)


# --- launch ---------------------------------------------------------------------------------------------------


def test_launch_sends_exactly_one_schema_valid_request(launcher):
    with responses.RequestsMock() as rsps:
        rsps.post(DYNOS, json=dyno(), status=201, headers={"Request-Id": "req-1"})
        handle = launcher.launch(build_id=12, token="tok")
        assert len(rsps.calls) == 1
        (call,) = rsps.calls
        request = call.request

    body = sent_body(call)
    assert_valid_dyno_create(body, keys=BASE_KEYS)
    assert body == {
        "command": "python manage.py buildstaticsite --build 12",
        "attach": False,
        "type": "run",
        "time_to_live": 10800 + 300,
        "env": {"PUBLISHER_BUILD_ID": "12", "PUBLISHER_BUILD_TOKEN": "tok"},
    }
    assert request.method == "POST"
    assert request.headers["Accept"] == "application/vnd.heroku+json; version=3"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.req_kwargs["timeout"] == (5, 15)
    assert handle == {"app": APP, "dyno_id": DYNO_ID, "dyno_name": "run.4821"}
    assert json.loads(json.dumps(handle)) == handle
    assert launcher.describe(handle) == "run.4821"


def test_launch_with_size_and_command_prefix(make_launcher):
    launcher = make_launcher(DYNO_SIZE="standard-2x", COMMAND_PREFIX="launcher", CONNECT_TIMEOUT=2, READ_TIMEOUT=7)
    with responses.RequestsMock() as rsps:
        rsps.post(DYNOS, json=dyno(), status=201)
        launcher.launch(build_id=3, token="abc-DEF_123")
        assert len(rsps.calls) == 1
        (call,) = rsps.calls

    body = sent_body(call)
    assert_valid_dyno_create(body, keys=BASE_KEYS | {"size"})
    assert body["size"] == "standard-2x"
    assert body["command"] == "launcher python manage.py buildstaticsite --build 3"
    assert body["env"]["PUBLISHER_BUILD_TOKEN"] == "abc-DEF_123"
    assert call.request.req_kwargs["timeout"] == (2, 7)


def test_the_token_is_in_the_dyno_env_never_its_command(launcher):
    body = launcher.dyno_request(build_id=1, token="-a b;c")
    assert body["command"] == "python manage.py buildstaticsite --build 1"
    assert body["env"] == {"PUBLISHER_BUILD_ID": "1", "PUBLISHER_BUILD_TOKEN": "-a b;c"}
    assert_valid_dyno_create(body, keys=BASE_KEYS)


@pytest.mark.parametrize(("build_timeout", "time_to_live"), [(1, 301), (10800, 11100), (86100, 86400), (86400, 86400)])
def test_time_to_live_is_build_timeout_plus_margin_capped_at_a_day(
    settings, make_launcher, build_timeout, time_to_live
):
    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_TIMEOUT": build_timeout}
    launcher = make_launcher()
    with responses.RequestsMock() as rsps:
        rsps.post(DYNOS, json=dyno(), status=201)
        launcher.launch(build_id=1, token="t")
        assert len(rsps.calls) == 1
        (call,) = rsps.calls
    body = sent_body(call)
    assert_valid_dyno_create(body, keys=BASE_KEYS)
    assert body["time_to_live"] == time_to_live


def test_api_url_is_configurable(make_launcher):
    launcher = make_launcher(API_URL="http://proxy.internal:8080/heroku/")
    with responses.RequestsMock() as rsps:
        rsps.post(f"http://proxy.internal:8080/heroku/apps/{APP}/dynos", json=dyno(), status=201)
        launcher.launch(build_id=1, token="t")
        assert len(rsps.calls) == 1
        (call,) = rsps.calls
    assert_valid_dyno_create(sent_body(call), keys=BASE_KEYS)


def test_the_schema_check_rejects_what_heroku_rejects():
    """The validator is live: heroku3's run_command_detached body (size: null) and a mistyped attach fail."""
    validator = create_validator()
    assert not validator.is_valid({"command": "x", "attach": False, "size": None})
    assert not validator.is_valid({"command": "x", "attach": "false"})
    assert not validator.is_valid({"command": "x", "env": {"A": 1}})
    assert not validator.is_valid({"attach": False})
    assert validator.is_valid({"command": "x", "unknown": 1}), "strictProperties is not enforced: keys checked by hand"
    with pytest.raises(AssertionError):
        assert_valid_dyno_create({"command": "x", "time_to_live": 90000}, keys={"command", "time_to_live"})


def test_launch_without_key_or_app_sends_nothing(make_launcher):
    for options in ({"API_KEY": ""}, {"APP_NAME": ""}):
        with responses.RequestsMock() as rsps:
            with pytest.raises(LaunchError) as caught:
                make_launcher(**options).launch(build_id=1, token="t")
            assert len(rsps.calls) == 0
        assert caught.value.needs_operator and not caught.value.retryable
        assert "HEROKU_" in str(caught.value)


def test_launch_answer_without_a_dyno_id_is_an_error(launcher):
    with responses.RequestsMock() as rsps:
        rsps.post(DYNOS, json={"name": "run.1"}, status=201)
        with pytest.raises(LaunchError, match="names no dyno"):
            launcher.launch(build_id=1, token="t")
        assert len(rsps.calls) == 1


def test_launch_answer_that_is_not_json_is_an_error(launcher):
    with responses.RequestsMock() as rsps:
        rsps.post(DYNOS, body="<html>proxy error</html>", status=200, headers={"Request-Id": "req-h"})
        with pytest.raises(LaunchError, match="not JSON") as caught:
            launcher.launch(build_id=1, token="t")
        assert len(rsps.calls) == 1
    assert caught.value.request_id == "req-h"


# --- launch failures ------------------------------------------------------------------------------------------

FAILURES = [
    # status, Heroku error id, message, retryable, needs_operator, words the message must contain
    (401, "unauthorized", "Invalid credentials provided.", False, True, ["heroku authorizations:create", "API_KEY"]),
    (403, "forbidden", "You do not have access to the app example-app.", False, True, ["authorizations:create"]),
    (403, "suspended", "This account has been suspended.", False, True, ["expired", "revoked"]),
    (404, "not_found", "Couldn't find that app.", False, True, ["HEROKU_APP_NAME", APP]),
    (409, "conflict", "A release is in progress.", True, False, ["conflict"]),
    (422, "cannot_run_above_limit", "Cannot run more than 5 Basic size dynos.", True, False, ["dyno limit"]),
    (422, "invalid_params", "Size is not a valid size.", False, True, ["operator"]),
    (422, "verification_needed", "Enter billing information.", False, True, ["operator"]),
    (429, "rate_limit", "Your account reached the API rate limit.", True, False, ["rate limit"]),
    (500, "internal_server_error", "Internal server error.", True, False, ["server error"]),
    (503, "unavailable", "API is temporarily unavailable.", True, False, ["server error"]),
]


@pytest.mark.parametrize(("status", "error_id", "message", "retryable", "needs_operator", "words"), FAILURES)
def test_launch_failure_becomes_launch_error(launcher, status, error_id, message, retryable, needs_operator, words):
    with responses.RequestsMock() as rsps:
        rsps.post(DYNOS, json={"id": error_id, "message": message}, status=status, headers={"Request-Id": "req-42"})
        with pytest.raises(LaunchError) as caught:
            launcher.launch(build_id=12, token="tok")
        assert len(rsps.calls) == 1, "a failed launch is not retried inside the launcher"
        (call,) = rsps.calls
    assert_valid_dyno_create(sent_body(call), keys=BASE_KEYS)
    error = caught.value
    assert (error.status, error.error_id, error.platform_message, error.request_id) == (
        status,
        error_id,
        message,
        "req-42",
    )
    assert (error.retryable, error.needs_operator) == (retryable, needs_operator)
    for word in [str(status), error_id, message, "req-42", *words]:
        assert word in str(error)


def test_rate_limit_without_a_json_body_still_has_status_and_request_id(launcher):
    """heroku3 raises RateLimitExceeded without the response; the launcher still reports what Heroku said."""
    with responses.RequestsMock() as rsps:
        rsps.post(DYNOS, body="slow down", status=429, headers={"Request-Id": "req-429"})
        with pytest.raises(LaunchError) as caught:
            launcher.launch(build_id=1, token="t")
        assert len(rsps.calls) == 1
    assert (caught.value.status, caught.value.request_id, caught.value.error_id) == (429, "req-429", None)
    assert caught.value.retryable and not caught.value.needs_operator


def test_error_without_body_or_request_id(launcher):
    with responses.RequestsMock() as rsps:
        rsps.post(DYNOS, body="", status=502)
        with pytest.raises(LaunchError) as caught:
            launcher.launch(build_id=1, token="t")
        assert len(rsps.calls) == 1
    assert (caught.value.status, caught.value.error_id, caught.value.request_id) == (502, None, None)
    assert caught.value.retryable


@pytest.mark.parametrize(
    "fault",
    [requests.exceptions.ConnectTimeout(), requests.exceptions.ReadTimeout(), requests.exceptions.ConnectionError()],
    ids=["connect-timeout", "read-timeout", "connection-error"],
)
def test_network_faults_are_retryable_launch_errors(launcher, fault):
    with responses.RequestsMock() as rsps:
        rsps.post(DYNOS, body=fault)
        with pytest.raises(LaunchError) as caught:
            launcher.launch(build_id=1, token="t")
        assert len(rsps.calls) == 1
    assert caught.value.status is None
    assert caught.value.retryable and not caught.value.needs_operator
    assert type(fault).__name__ in str(caught.value)


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_refused_connection_is_a_retryable_launch_error(make_launcher):
    launcher = make_launcher(API_URL=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(LaunchError) as caught:
        launcher.launch(build_id=1, token="t")
    assert caught.value.retryable and caught.value.status is None
    assert "could not be reached" in str(caught.value)


@pytest.fixture
def silent_server():
    """A socket that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    server.close()


def test_read_timeout_applies_to_a_hung_api(make_launcher, silent_server):
    launcher = make_launcher(API_URL=silent_server, READ_TIMEOUT=0.3)
    with pytest.raises(LaunchError) as caught:
        launcher.launch(build_id=1, token="t")
    assert caught.value.retryable and "did not answer in time" in str(caught.value)


# --- status -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [("starting", STARTING), ("up", RUNNING), ("crashed", GONE), ("down", GONE), ("idle", UNKNOWN), ("new", UNKNOWN)],
)
def test_status_maps_dyno_state(launcher, state, expected):
    with responses.RequestsMock() as rsps:
        rsps.get(DYNO, json=dyno(state))
        assert launcher.status(HANDLE) == expected
        assert len(rsps.calls) == 1
        request = rsps.calls[0].request
    assert request.headers["Accept"] == "application/vnd.heroku+json; version=3"
    assert request.req_kwargs["timeout"] == (5, 15)


@pytest.mark.parametrize(
    "body",
    [{"id": "not_found", "message": "Couldn't find that process."}, {"id": "not_found", "message": ""}, None],
    ids=["dyno-not-found", "no-message", "no-body"],
)
def test_status_of_a_dyno_heroku_no_longer_knows_is_gone(launcher, body):
    with responses.RequestsMock() as rsps:
        if body is None:
            rsps.get(DYNO, body="", status=404)
        else:
            rsps.get(DYNO, json=body, status=404)
        assert launcher.status(HANDLE) == GONE
        assert len(rsps.calls) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"id": "not_found", "message": "Couldn't find that app.", "resource": "app"},
        {"id": "not_found", "message": f"Couldn't find {APP}."},
    ],
    ids=["couldnt-find-that-app", "names-the-app"],
)
def test_status_404_for_the_app_is_a_configuration_error(launcher, body):
    with responses.RequestsMock() as rsps:
        rsps.get(DYNO, json=body, status=404, headers={"Request-Id": "req-404"})
        with pytest.raises(LaunchError) as caught:
            launcher.status(HANDLE)
        assert len(rsps.calls) == 1
    assert caught.value.needs_operator and caught.value.status == 404 and caught.value.request_id == "req-404"


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [
        ({"status": 401, "json": {"id": "unauthorized", "message": "Invalid credentials provided."}}, False),
        ({"status": 500, "json": {"id": "internal_server_error", "message": "Oops."}}, True),
        ({"status": 429, "json": {"id": "rate_limit", "message": "Slow down."}}, True),
        ({"body": requests.exceptions.ReadTimeout()}, True),
        ({"body": requests.exceptions.ConnectionError()}, True),
    ],
    ids=["401", "500", "429", "timeout", "refused"],
)
def test_status_faults_raise_launch_error(launcher, reply, retryable):
    with responses.RequestsMock() as rsps:
        rsps.get(DYNO, **reply)
        with pytest.raises(LaunchError) as caught:
            launcher.status(HANDLE)
        assert len(rsps.calls) == 1
    assert caught.value.retryable == retryable


# --- stop -------------------------------------------------------------------------------------------------------


def test_stop_posts_the_stop_action(launcher):
    with responses.RequestsMock() as rsps:
        rsps.post(f"{DYNO}/actions/stop", json={}, status=202)
        launcher.stop(HANDLE)
        assert len(rsps.calls) == 1
        request = rsps.calls[0].request
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.req_kwargs["timeout"] == (5, 15)


def test_stop_of_a_gone_dyno_is_fine(launcher):
    with responses.RequestsMock() as rsps:
        rsps.post(f"{DYNO}/actions/stop", json={"id": "not_found", "message": "Couldn't find that dyno."}, status=404)
        launcher.stop(HANDLE)
        assert len(rsps.calls) == 1


@pytest.mark.parametrize(
    ("reply", "needs_operator"),
    [
        ({"status": 404, "json": {"id": "not_found", "message": "Couldn't find that app."}}, True),
        ({"status": 403, "json": {"id": "forbidden", "message": "No access."}}, True),
        ({"status": 503, "json": {"id": "unavailable", "message": "Try later."}}, False),
        ({"body": requests.exceptions.ConnectTimeout()}, False),
    ],
    ids=["app-404", "403", "503", "timeout"],
)
def test_stop_faults_raise_launch_error(launcher, reply, needs_operator):
    with responses.RequestsMock() as rsps:
        rsps.post(f"{DYNO}/actions/stop", **reply)
        with pytest.raises(LaunchError) as caught:
            launcher.stop(HANDLE)
        assert len(rsps.calls) == 1
    assert caught.value.needs_operator == needs_operator


def test_dyno_name_is_used_when_a_handle_has_no_id(launcher):
    with responses.RequestsMock() as rsps:
        rsps.get(f"{DYNOS}/run.4821", json=dyno("up"))
        assert launcher.status({"app": APP, "dyno_name": "run.4821"}) == RUNNING


# --- check ------------------------------------------------------------------------------------------------------


def ids(messages):
    return sorted(message.id for message in messages)


def test_check_passes_when_configured(launcher):
    assert launcher.check() == []


def test_check_reports_missing_key_and_app(make_launcher):
    assert ids(make_launcher(API_KEY="", APP_NAME="").check()) == ["publisher.E010", "publisher.E011"]


@pytest.mark.parametrize("build_timeout", [0, -5, 86401, "3600"])
def test_check_reports_build_timeout_outside_a_day(settings, make_launcher, build_timeout):
    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_TIMEOUT": build_timeout}
    assert ids(make_launcher().check()) == ["publisher.E012"]


@pytest.mark.parametrize("options", [{"CONNECT_TIMEOUT": 0}, {"READ_TIMEOUT": -1}, {"READ_TIMEOUT": "15"}])
def test_check_reports_bad_timeouts(make_launcher, options):
    assert ids(make_launcher(**options).check()) == ["publisher.E013"]


def test_check_reports_a_bad_api_url(make_launcher):
    assert ids(make_launcher(API_URL="api.heroku.com").check()) == ["publisher.E014"]


# --- secrets ----------------------------------------------------------------------------------------------------

LEAK = "LEAKCHECK-0123456789abcdef"


def test_the_key_is_hidden_from_reprs(make_launcher):
    launcher = make_launcher(API_KEY=LEAK)
    for text in (repr(launcher), str(launcher), repr(launcher.options), str(vars(launcher)), f"{Secret(LEAK)}"):
        assert LEAK not in text
    assert launcher.options["API_KEY"].reveal() == LEAK
    assert all(LEAK not in f"{m.msg} {m.hint}" for m in make_launcher(API_KEY=LEAK, APP_NAME="").check())


@pytest.fixture
def all_logs(caplog):
    """Every log record at DEBUG, including the ``publisher`` logger (which does not propagate) and urllib3."""
    publisher = logging.getLogger("publisher")
    publisher.addHandler(caplog.handler)
    levels = {name: logging.getLogger(name).level for name in ("", "publisher", "urllib3", "requests", "responses")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.handler.setLevel(logging.DEBUG)
    yield caplog
    publisher.removeHandler(caplog.handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_the_key_never_leaks_through_any_path(make_launcher, all_logs, capfd, silent_server):
    launcher = make_launcher(API_KEY=LEAK, DYNO_SIZE="standard-1x", COMMAND_PREFIX="launcher")
    texts = {"repr(launcher)": repr(launcher), "launcher.options": str(launcher.options)}
    errors = []

    def attempt(call):
        try:
            return call()
        except LaunchError as exc:
            errors.append(exc)
            return None

    def error_reply(status, error_id):
        return {
            "status": status,
            "json": {"id": error_id, "message": f"{error_id} happened"},
            "headers": {"Request-Id": "r"},
        }

    launch_replies = [
        {"status": 201, "json": dyno()},
        error_reply(401, "unauthorized"),
        error_reply(403, "forbidden"),
        error_reply(404, "not_found"),
        error_reply(409, "conflict"),
        error_reply(422, "cannot_run_above_limit"),
        error_reply(422, "invalid_params"),
        error_reply(429, "rate_limit"),
        {"status": 429, "body": "no json"},
        error_reply(500, "internal_server_error"),
        error_reply(503, "unavailable"),
        {"body": requests.exceptions.ConnectTimeout()},
        {"body": requests.exceptions.ReadTimeout()},
        {"body": requests.exceptions.ConnectionError("refused")},
    ]
    for reply in launch_replies:
        with responses.RequestsMock() as rsps:
            rsps.post(DYNOS, **reply)
            handle = attempt(lambda: launcher.launch(build_id=12, token="tok"))
            (call,) = rsps.calls
        assert call.request.headers["Authorization"] == f"Bearer {LEAK}", "the key is really used"
        body = call.request.body
        texts[f"body sent for {reply}"] = body.decode() if isinstance(body, bytes) else body
        texts[f"url for {reply}"] = call.request.url
        if handle is not None:
            texts["handle"] = f"{json.dumps(handle)} {handle!r} {launcher.describe(handle)}"

    for method, url, call in (
        ("GET", DYNO, lambda: launcher.status(HANDLE)),
        ("POST", f"{DYNO}/actions/stop", lambda: launcher.stop(HANDLE)),
    ):
        for reply in (
            error_reply(401, "unauthorized"),
            error_reply(404, "not_found") | {"json": {"id": "not_found", "message": "Couldn't find that app."}},
            error_reply(429, "rate_limit"),
            error_reply(500, "internal_server_error"),
            {"body": requests.exceptions.ReadTimeout()},
            {"body": requests.exceptions.ConnectionError()},
        ):
            with responses.RequestsMock() as rsps:
                rsps.add(method, url, **reply)
                attempt(call)

    # Real sockets, so urllib3 logs its connection attempts too.
    for api_url in (f"http://127.0.0.1:{closed_port()}", silent_server):
        real = make_launcher(API_KEY=LEAK, API_URL=api_url, READ_TIMEOUT=0.2)
        attempt(lambda real=real: real.launch(build_id=1, token="t"))
        attempt(lambda real=real: real.status(HANDLE))
        attempt(lambda real=real: real.stop(HANDLE))

    assert len(errors) == len(launch_replies) - 1 + 12 + 6
    for number, error in enumerate(errors):
        texts[f"error {number}: {error!r}"] = f"{error} {error!r} {error.args!r} {vars(error)}"
        if error.__cause__ is not None:
            texts[f"cause of error {number}"] = f"{error.__cause__} {error.__cause__!r} {error.__cause__.args!r}"
    captured = capfd.readouterr()
    texts.update({"captured logs": all_logs.text, "stdout": captured.out, "stderr": captured.err})
    assert "Heroku launch failed" in all_logs.text, "the publisher logger's records are captured"
    assert "urllib3" in all_logs.text or "127.0.0.1" in all_logs.text, "urllib3's debug records are captured"
    leaks = [where for where, text in texts.items() if LEAK in text]
    assert not leaks, f"the API key leaked into: {leaks}"  # names where, not the text (which holds the key)


@pytest.mark.parametrize(
    "reply",
    [
        # A proxy (HEROKU_API_URL) that echoes the request's headers in its error, in every field it can.
        {
            "status": 401,
            "json": {"id": f"Bearer {LEAK}", "message": f"Unauthorized; you sent Authorization: Bearer {LEAK}."},
            "headers": {"Request-Id": f"echo-{LEAK}"},
        },
        {"status": 502, "json": {"id": "bad_gateway", "message": f"upstream said {LEAK}", "limit": LEAK}},
        {"body": requests.exceptions.ConnectionError(f"could not connect with headers {{'Authorization': {LEAK}}}")},
    ],
)
def test_the_key_is_redacted_from_whatever_the_platform_answers(make_launcher, all_logs, reply):
    """Issue 8, defect 8: the key reaches neither the error (so not Build.error nor the admin) nor the log."""
    launcher = make_launcher(API_KEY=LEAK)
    with responses.RequestsMock() as rsps:
        rsps.post(DYNOS, **reply)
        with pytest.raises(LaunchError) as info:
            launcher.launch(build_id=1, token="t")
    error = info.value
    texts = [str(error), repr(error), str(error.args), str(vars(error)), all_logs.text]
    assert not [text for text in texts if LEAK in text], "the API key leaked"
    assert "********" in str(error)


@pytest.mark.django_db
def test_a_redacted_failure_is_what_the_build_records(settings, make_launcher):
    from publisher import builds
    from publisher.models import Build

    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "LAUNCHER": {
            "BACKEND": "publisher.launchers.heroku.HerokuLauncher",
            "OPTIONS": {"API_KEY": LEAK, "APP_NAME": APP},
        },
    }
    with responses.RequestsMock() as rsps:
        rsps.post(DYNOS, status=401, json={"id": "unauthorized", "message": f"Bearer {LEAK} is not valid"})
        outcome = builds.request_build("publish")
    build = Build.objects.get()
    assert LEAK not in build.error and LEAK not in outcome.for_operators and "unauthorized" in build.error


def test_a_dyno_limit_refusal_names_the_limit_and_size_and_hints_at_eco(launcher):
    body = {
        "id": "cannot_run_above_limit",
        "message": "Cannot run more than 1 Eco size dynos.",
        "limit": 1,
        "size": "Eco",
    }
    with responses.RequestsMock() as rsps:
        rsps.post(DYNOS, status=422, json=body)
        with pytest.raises(LaunchError) as info:
            launcher.launch(build_id=1, token="t")
    assert "limit 1, size Eco" in str(info.value) and info.value.retryable and not info.value.needs_operator
    assert "Eco" in info.value.hint and "Heroku Scheduler" in info.value.hint


def test_this_process_is_the_dyno_named_by_dyno(settings, make_launcher):
    settings.PUBLISHER = {**settings.PUBLISHER, "DYNO": "run.4821"}
    launcher = make_launcher()
    handle = launcher.this_process()
    assert handle == {"app": APP, "dyno_name": "run.4821"}
    with responses.RequestsMock() as rsps:
        rsps.get(f"{DYNOS}/run.4821", json=dyno("up"))
        assert launcher.status(handle) == RUNNING
    settings.PUBLISHER = {**settings.PUBLISHER, "DYNO": ""}
    assert make_launcher().this_process() is None


@pytest.mark.parametrize("handle", [{"id": "rec-1"}, {"host": "h", "pid": 1}, None, "run.1"])
def test_a_handle_of_another_launcher_is_a_launch_error_not_a_crash(launcher, handle):
    with pytest.raises(LaunchError, match="not a Heroku launcher handle"):
        launcher.status(handle)
    with pytest.raises(LaunchError, match="not a Heroku launcher handle"):
        launcher.stop(handle)


def test_the_hint_for_a_dyno_that_dies_before_its_claim_names_its_logs_and_the_prefix(launcher):
    hint = launcher.not_started_hint(HANDLE)
    assert "heroku logs --app example-app --dyno run.4821" in hint and "HEROKU_COMMAND_PREFIX=launcher" in hint


# --- the schema file --------------------------------------------------------------------------------------------


def test_a_missing_schema_fails_even_outside_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("HEROKU_DYNO_SCHEMA", str(tmp_path / "missing.json"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.fail.Exception, match="HEROKU_DYNO_SCHEMA"):
        create_validator()


# --- The total deadline: a server that trickles its answer -------------------------------------------------------


class TricklingAPI:
    """A real HTTP server on 127.0.0.1 (``http.server`` in a thread) that answers every request with ``answer``
    (status line, headers and body as bytes), writing it ``every`` seconds a byte from byte ``from_byte`` on: each
    socket read gets a byte well within the read timeout, so only a total deadline ends the call. ``finished``
    counts the answers written to the end; ``bodies`` holds what was sent to it."""

    def __init__(self, answer, *, every=0.05, from_byte=0):
        import http.server

        self.answer, self.every, self.from_byte = answer, every, from_byte
        self.finished = 0
        self.bodies = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                api.bodies.append(self.rfile.read(length) if length else b"")
                try:
                    self.wfile.write(api.answer[: api.from_byte])
                    for byte in api.answer[api.from_byte :]:
                        time.sleep(api.every)
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:  # the client gave up: the answer was not finished
                    return
                api.finished += 1

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def http_answer(status, body, headers=()):
    body = json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture
def trickling_api():
    servers = []

    def start(answer, **kwargs):
        servers.append(TricklingAPI(answer, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_total_deadline_ends_a_launch_whose_answer_trickles_in(make_launcher, trickling_api, caplog):
    answer = http_answer("201 Created", {**dyno(), "padding": "x" * 400})
    api = trickling_api(answer, from_byte=answer.index(b"\r\n\r\n") + 4)  # headers at once, the body a byte at a time
    launcher = make_launcher(API_URL=api.url, CONNECT_TIMEOUT=1, READ_TIMEOUT=1, TOTAL_TIMEOUT=1)
    with pytest.raises(LaunchError) as caught:
        launcher.launch(build_id=12, token="tok")
    error = caught.value
    assert api.finished == 0, "the call ended before the server had finished its answer"
    assert error.retryable and not error.needs_operator and error.status is None
    assert "did not answer within HEROKU_TOTAL_TIMEOUT (1s)" in str(error) and KEY not in str(error)
    assert "HEROKU_TOTAL_TIMEOUT" in caplog.text and KEY not in caplog.text
    assert_valid_dyno_create(json.loads(api.bodies[0]), keys=BASE_KEYS)


def test_a_total_deadline_ends_a_call_whose_status_line_and_headers_trickle_in(make_launcher, trickling_api):
    api = trickling_api(http_answer("200 OK", dyno("up"), headers=[f"X-Padding: {'p' * 400}"]))
    launcher = make_launcher(API_URL=api.url, CONNECT_TIMEOUT=1, READ_TIMEOUT=1, TOTAL_TIMEOUT=1)
    with pytest.raises(LaunchError) as caught:
        launcher.status(HANDLE)
    assert api.finished == 0 and "HEROKU_TOTAL_TIMEOUT" in str(caught.value) and caught.value.retryable


def test_an_answer_that_trickles_in_within_the_deadline_is_read_whole(make_launcher, trickling_api):
    answer = http_answer("201 Created", dyno(), headers=["Request-Id: req-7"])
    api = trickling_api(answer, every=0.001, from_byte=len(answer) - 40)  # slow, but done long before the deadline
    launcher = make_launcher(API_URL=api.url, READ_TIMEOUT=5, TOTAL_TIMEOUT=30)
    assert launcher.launch(build_id=12, token="tok") == HANDLE, "the whole answer, its last bytes included"
    assert_valid_dyno_create(json.loads(api.bodies[0]), keys=BASE_KEYS)


def test_an_error_answer_within_the_deadline_keeps_its_status_and_id(make_launcher, trickling_api):
    api = trickling_api(http_answer("401 Unauthorized", {"id": "unauthorized", "message": "Invalid credentials."}))
    api.every = 0
    launcher = make_launcher(API_URL=api.url, TOTAL_TIMEOUT=30)
    with pytest.raises(LaunchError) as caught:
        launcher.launch(build_id=12, token="tok")
    assert caught.value.status == 401 and caught.value.error_id == "unauthorized" and caught.value.needs_operator


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"TOTAL_TIMEOUT": 19}, ["publisher.E015"]),  # below 5 + 15
        ({"TOTAL_TIMEOUT": 20}, []),
        ({"TOTAL_TIMEOUT": 8, "CONNECT_TIMEOUT": 2, "READ_TIMEOUT": 6}, []),
        ({"TOTAL_TIMEOUT": 0}, ["publisher.E013"]),
        ({"TOTAL_TIMEOUT": "30"}, ["publisher.E013"]),
    ],
)
def test_check_refuses_a_total_deadline_below_connect_plus_read(make_launcher, options, expected):
    assert ids(make_launcher(**options).check()) == expected


def test_the_total_deadline_comes_from_heroku_total_timeout_default_30(tmp_path):
    from tests.test_settings import load_settings

    for variables, expected in (({}, 30), ({"HEROKU_TOTAL_TIMEOUT": "45"}, 45)):
        result = load_settings(tmp_path, SECRET_KEY="k", DEBUG="0", LAUNCHER="heroku", **variables)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["launcher"]["OPTIONS"]["TOTAL_TIMEOUT"] == expected
