"""Signals for integrations (DESIGN §8, issue 10): ``build_finished`` once per build that ends, ``build_alert``
beside every report mailed to ADMINS, and the Slack receiver of ``docs/notifications.md`` run as written."""

import http.server
import json
import re
import threading
import time
import types
from pathlib import Path

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from publisher import builds, runner, sweep
from publisher.launchers import GONE, LaunchError, recording
from publisher.models import Build, BuildState
from publisher.signals import AlertKind, build_alert, build_finished, build_stalled
from tests import test_transitions as transitions

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
S = BuildState
DOCS = Path(__file__).resolve().parent.parent / "docs" / "notifications.md"


@pytest.fixture(autouse=True)
def admins(settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_MAX_ATTEMPTS": 3}


@pytest.fixture
def finished():
    received = []

    def receiver(sender, build, outcome, **kwargs):
        assert sender is Build
        received.append((build.pk, build.state, outcome.kind, build.finished_at is not None))

    build_finished.connect(receiver, dispatch_uid="test-finished")
    yield received
    build_finished.disconnect(dispatch_uid="test-finished")


@pytest.fixture
def alerts():
    received = []

    def receiver(sender, build_id, kind, subject, message, **kwargs):
        received.append((build_id, kind, subject, message))

    build_alert.connect(receiver, dispatch_uid="test-alerts")
    yield received
    build_alert.disconnect(dispatch_uid="test-alerts")


def running():
    return transitions.running_claim()


# --- build_finished -----------------------------------------------------------------------------------------------

OUTCOME_KINDS = {
    builds.HAND_OVER: "failed",
    builds.SUCCEED: "succeeded",
    builds.FAIL: "failed",
    builds.INTERRUPT: "interrupted",
    builds.TIME_OUT: "timeout",
    builds.STOP_AT_SHELL: "cancelled",
    builds.LOSE: "lost",
    builds.CANCEL: "cancelled",
}


def test_every_final_transition_has_its_outcome_kind():
    assert set(OUTCOME_KINDS) == {t for t in builds.TRANSITIONS if t.final}


@pytest.mark.parametrize("transition", OUTCOME_KINDS, ids=lambda t: t.name)
def test_build_finished_is_sent_once_by_each_final_transition(transition, finished, clock, monkeypatch):
    pk = transitions.SCENARIOS[transition](CaptureQueriesContext(connection), clock, monkeypatch)
    assert finished == [(pk, transition.target, OUTCOME_KINDS[transition], True)], "once, the build read afresh"


@pytest.mark.parametrize("transition", [t for t in builds.TRANSITIONS if not t.final], ids=lambda t: t.name)
def test_no_transition_that_is_not_final_sends_it(transition, finished, clock, monkeypatch):
    transitions.SCENARIOS[transition](CaptureQueriesContext(connection), clock, monkeypatch)
    assert finished == []


def test_a_real_run_sends_it_with_the_release(finished, site_root):
    from publisher.models import Page

    Page.objects.bulk_create([Page.published_copy(slug="alpha", title="Alpha")])
    claim = running()
    outcomes = []

    def receiver(sender, build, outcome, **kwargs):
        outcomes.append(str(outcome))

    build_finished.connect(receiver, dispatch_uid="test-outcome")
    try:
        assert runner.run(claim).exit_code == 0
    finally:
        build_finished.disconnect(dispatch_uid="test-outcome")
    assert finished == [(claim.build_id, S.SUCCEEDED, "succeeded", True)]
    release = Build.objects.get(pk=claim.build_id).release
    assert release and outcomes == [f"Build #{claim.build_id} succeeded: release {release}"]


def test_a_finish_that_lost_its_claim_sends_nothing(finished):
    claim = running()
    assert builds.finish(claim, state=S.SUCCEEDED)
    assert not builds.finish(claim, state=S.FAILED, error="late")
    builds.cancel(claim.build_id)
    assert builds.interrupted(claim, timeout_seconds=10_800).kind == "ended_elsewhere"
    assert finished == [(claim.build_id, S.SUCCEEDED, "succeeded", True)]


def test_a_cancel_then_the_builds_sigterm_sends_one(finished):
    claim = running()
    builds.cancel(claim.build_id, by="ops")
    builds.interrupted(claim, timeout_seconds=10_800)
    assert finished == [(claim.build_id, S.CANCELLED, "cancelled", True)]


def test_two_sweeps_interleaved_send_one_for_a_lost_build(finished, clock, monkeypatch):
    claim = running()
    recording.statuses[recording.launches[-1]["handle"]["id"]] = GONE
    clock.advance(121)
    original = recording.RecordingLauncher.status
    inner = []

    def status_with_a_second_pass(self, handle):
        if not inner:
            inner.append("another pass runs meanwhile")
            sweep.sweep()
        return original(self, handle)

    monkeypatch.setattr(recording.RecordingLauncher, "status", status_with_a_second_pass)
    sweep.sweep()
    assert finished == [(claim.build_id, S.LOST, "lost", True)]


def test_a_failing_receiver_is_logged_and_changes_nothing(finished, caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("the integration is down")

    build_finished.connect(broken, dispatch_uid="test-broken")
    try:
        claim = running()
        assert builds.finish(claim, state=S.SUCCEEDED)
    finally:
        build_finished.disconnect(dispatch_uid="test-broken")
    assert Build.objects.get(pk=claim.build_id).state == S.SUCCEEDED and len(finished) == 1
    assert "A build_finished receiver" in caplog.text and "RuntimeError: the integration is down" in caplog.text
    assert "Traceback" in caplog.text


def test_without_receivers_the_build_is_not_read_again(django_assert_num_queries):
    claim = running()
    with django_assert_num_queries(2):  # the clock is read, the build is ended
        builds.finish(claim, state=S.SUCCEEDED)


# --- build_alert ----------------------------------------------------------------------------------------------------


def test_a_failure_that_leaves_requests_uncovered_is_mailed_and_alerted_once(alerts):
    claim = running()
    builds.finish(claim, state=S.FAILED, error="ValueError: template exploded")
    builds.report_failure(claim.build_id, "Build failed: ValueError: template exploded")
    builds.report_failure(claim.build_id, "again")
    (alert,) = alerts
    (sent,) = mail.outbox
    assert alert == (claim.build_id, AlertKind.FAILED_UNCOVERED, sent.subject.removeprefix("[Django] "), sent.body)
    assert "Requests it leaves uncovered" in alert[3] and alert[1] == "failed_uncovered"


def test_a_launch_error_only_a_person_can_fix_is_alerted_once(alerts, clock):
    key = LaunchError("Heroku rejected the API key (401)", status=401, retryable=False, needs_operator=True)
    recording.fail_next(key)
    builds.request_build("publish")
    clock.advance(30)
    recording.fail_next(key)
    builds.launch_next()
    pk = Build.objects.get().pk
    assert [(a[0], a[1], a[2]) for a in alerts] == [(pk, AlertKind.NEEDS_OPERATOR, f"Build #{pk} needs attention")]
    assert "rejected the API key" in alerts[0][3] and len(mail.outbox) == 1


def test_a_build_that_keeps_failing_to_start_is_alerted_once(alerts, clock):
    limit = LaunchError("dyno limit (422)", status=422, error_id="cannot_run_above_limit", hint="One at a time.")
    recording.fail_next(limit, times=6)
    builds.request_build("publish")
    for _ in range(5):
        clock.advance(3600)
        sweep.sweep()
    ((build_id, kind, subject, message),) = alerts
    assert kind == AlertKind.KEEPS_FAILING_TO_START and subject == f"Build #{build_id} keeps failing to start"
    assert "has failed to start 3 times" in message and "One at a time." in message


def test_a_stall_is_alerted_before_build_stalled_and_a_failing_receiver_stops_nothing(alerts, clock, caplog):
    claim = running()
    order = []

    def broken(sender, **kwargs):
        order.append("alert")
        raise RuntimeError("slack is down")

    build_alert.connect(broken, dispatch_uid="test-broken-alert")
    build_stalled.connect(lambda sender, **kw: order.append("stalled"), dispatch_uid="test-stalled", weak=False)
    try:
        clock.advance(100)
        builds.heartbeat(claim)
        clock.advance(850)
        done = sweep.sweep()
    finally:
        build_alert.disconnect(dispatch_uid="test-broken-alert")
        build_stalled.disconnect(dispatch_uid="test-stalled")
    ((build_id, kind, subject, message),) = alerts
    assert (build_id, kind, subject) == (claim.build_id, AlertKind.STALLED, f"Build #{claim.build_id} is stalled")
    assert "rendered 0 of" in message and "stalled" in str(done)
    stalls = [m for m in mail.outbox if m.subject.endswith(subject)]
    assert len(stalls) == 1 and stalls[0].body == message
    assert order == ["alert", "stalled"] and "slack is down" in caplog.text


# --- The Slack receiver of docs/notifications.md ---------------------------------------------------------------------


def slack_example():
    """The Python block of the docs, as a module (its receivers connect as it is executed)."""
    (code,) = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    lines = [line for line in code.strip().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 20, "the example stays short"
    module = types.ModuleType("slack_example")
    exec(compile(code, str(DOCS), "exec"), module.__dict__)
    return module


class Webhook(http.server.BaseHTTPRequestHandler):
    received = []
    delay = 0.0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.delay)
        type(self).received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the slow test's client gave up before the answer: a broken pipe, expected


@pytest.fixture
def webhook(settings):
    Webhook.received, Webhook.delay = [], 0.0
    server = QuietServer(("127.0.0.1", 0), Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.SLACK_WEBHOOK_URL = f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/x"
    module = slack_example()
    yield Webhook, module
    build_alert.disconnect(dispatch_uid="slack-build-alert")
    build_finished.disconnect(dispatch_uid="slack-build-finished")
    server.shutdown()
    server.server_close()


def test_the_slack_example_posts_failures_and_alerts(webhook):
    hook, _ = webhook
    claim = running()
    builds.finish(claim, state=S.FAILED, error="ValueError: template exploded")
    builds.report_failure(claim.build_id, f"Build #{claim.build_id} failed: ValueError: template exploded")
    texts = [body["text"] for content_type, body in hook.received]
    assert all(content_type == "application/json" for content_type, _ in hook.received)
    assert texts[0] == f":x: Build #{claim.build_id} failed: ValueError: template exploded"
    assert texts[1].startswith(f":rotating_light: Build #{claim.build_id} failed\n")
    assert len(texts) == 2
    other = running()
    builds.finish(other, state=S.SUCCEEDED)
    assert len(hook.received) == 2, "a success is not posted"


def test_a_slow_slack_holds_the_build_a_few_seconds_at_most(webhook, caplog):
    hook, _ = webhook
    hook.delay = 6
    claim = running()
    started = time.monotonic()
    assert builds.finish(claim, state=S.FAILED, error="boom")
    took = time.monotonic() - started
    assert 2.5 < took < 5, f"the receiver held the build {took:.1f}s"
    assert Build.objects.get(pk=claim.build_id).state == S.FAILED
    assert "A build_finished receiver" in caplog.text and "timed out" in caplog.text
