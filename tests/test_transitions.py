"""The transition table of ``publisher.builds`` (DESIGN §3): it says what the code does, and nothing else writes
``Build.state``.

Every scenario runs the real functions and captures the SQL they send: each write of ``state`` (an ``UPDATE`` or an
``INSERT`` of ``publisher_build``) must be one entry of ``TRANSITIONS`` (its target, and source states among the
entry's), each entry must be taken by its scenario, and what the entry says is retried must be what happened.
"""

import ast
import re
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from publisher import builds, sweep
from publisher.builds import TRANSITIONS, Actor, Retry, Transition
from publisher.launchers import GONE, LaunchError, recording
from publisher.models import Build, BuildRequest, BuildState

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
S = BuildState
PACKAGE = Path(builds.__file__).resolve().parent

UPDATE = re.compile(r'^UPDATE "publisher_build" SET "state" = \'(\w+)\'')
INSERT = re.compile(r'^INSERT INTO "publisher_build" \("state", .*?\) VALUES \(\'(\w+)\'')
WHERE_STATE = '"publisher_build"."state" IN ('


def state_writes(queries):
    """(sources, target) of every write of ``state`` in the captured SQL; sources is () for an insert."""
    writes = []
    for query in queries:
        sql = query["sql"]
        if sql.startswith('INSERT INTO "publisher_build"'):
            match = INSERT.match(sql)
            assert match, f"an insert of a build that does not start with its state: {sql[:200]}"
            writes.append(((), match.group(1)))
        elif sql.startswith('UPDATE "publisher_build"') and re.search(r'[ ,]"state" = ', sql.split(" WHERE ")[0]):
            match = UPDATE.match(sql)
            assert match, f"an update of state that does not go through builds._move: {sql[:300]}"
            where = sql.rindex(WHERE_STATE) + len(WHERE_STATE)
            sources = tuple(re.findall(r"'(\w+)'", sql[where : sql.index(")", where)]))
            writes.append((sources, match.group(1)))
    return writes


def matching(write):
    sources, target = write
    return [
        t
        for t in TRANSITIONS
        if t.target == target and set(sources) <= set(t.sources) and bool(sources) == bool(t.sources)
    ]


# --- Scenarios: set up, then the step under test runs inside ``capture`` -------------------------------------------


def queued_build():
    request_id = builds.record_request("published", dispatch_after_commit=False)
    builds.attach_requests([request_id])
    return Build.objects.get(state=S.QUEUED).pk


def running_claim():
    builds.request_build("published")
    launch = recording.launches[-1]
    return builds.claim(launch["build_id"], launch["token"])


def scenario_queue(capture, clock, monkeypatch):
    with capture:
        builds.record_request("published", dispatch_after_commit=False)
        builds.attach_requests()
    return Build.objects.get().pk


def scenario_launch(capture, clock, monkeypatch):
    pk = queued_build()
    with capture:
        builds.launch_next()
    return pk


def scenario_launch_failed(capture, clock, monkeypatch):
    pk = queued_build()
    recording.fail_next(LaunchError("Heroku is unavailable (503)", status=503))
    with capture:
        builds.launch_next()
    return pk


def scenario_stuck_launching(capture, clock, monkeypatch):
    pk = queued_build()

    def dies_inside_the_launcher(self, **kwargs):
        raise SystemExit

    with monkeypatch.context() as patched, pytest.raises(SystemExit):
        patched.setattr(recording.RecordingLauncher, "launch", dies_inside_the_launcher)
        builds.launch(pk)
    clock.advance(61)
    with capture:
        sweep.sweep()
    return pk


def scenario_not_started(capture, clock, monkeypatch):
    builds.request_build("published")
    launch = recording.launches[-1]
    recording.statuses[launch["handle"]["id"]] = GONE
    clock.advance(301)
    with capture:
        sweep.sweep()
    return launch["build_id"]


def scenario_hand_over(capture, clock, monkeypatch):
    pk = queued_build()

    def fail_after_a_queued_build_appeared(self, **kwargs):
        Build.objects.create(state=S.QUEUED, next_attempt_at=builds.now())  # a request raced the promotion
        raise LaunchError("down (503)", status=503)

    monkeypatch.setattr(recording.RecordingLauncher, "launch", fail_after_a_queued_build_appeared)
    with capture:
        builds.launch(pk)
    return pk


def scenario_claim(capture, clock, monkeypatch):
    builds.request_build("published")
    launch = recording.launches[-1]
    with capture:
        builds.claim(launch["build_id"], launch["token"])
    return launch["build_id"]


def scenario_by_hand(capture, clock, monkeypatch):
    with capture:
        claim = builds.start_manual(process={"host": "laptop", "pid": 1})
    return claim.build_id


def scenario_take_over(capture, clock, monkeypatch):
    recording.fail_next(LaunchError("Heroku is unavailable (503)", status=503))
    builds.request_build("a publish whose launch fails")  # build #1 waits queued, with a backoff
    with capture:
        claim = builds.start_manual(process={"host": "laptop", "pid": 1})
    return claim.build_id


def scenario_succeed(capture, clock, monkeypatch):
    claim = running_claim()
    with capture:
        builds.finish(claim, state=S.SUCCEEDED, release="r")
    return claim.build_id


def scenario_fail(capture, clock, monkeypatch):
    claim = running_claim()
    with capture:
        builds.finish(claim, state=S.FAILED, error="ValueError: template exploded")
    return claim.build_id


def scenario_interrupt(capture, clock, monkeypatch):
    claim = running_claim()
    with capture:
        builds.interrupted(claim, timeout_seconds=10_800)
    return claim.build_id


def scenario_time_out(capture, clock, monkeypatch):
    claim = running_claim()
    clock.advance(10_801)
    with capture:
        sweep.sweep()
    return claim.build_id


def scenario_stop_at_shell(capture, clock, monkeypatch):
    claim = builds.start_manual(process={"host": "laptop", "pid": 1})
    with capture:
        builds.interrupted(claim, timeout_seconds=10_800)
    return claim.build_id


def scenario_lose(capture, clock, monkeypatch):
    claim = running_claim()
    recording.statuses[recording.launches[-1]["handle"]["id"]] = GONE
    clock.advance(121)
    with capture:
        sweep.sweep()
    return claim.build_id


def scenario_cancel(capture, clock, monkeypatch):
    claim = running_claim()
    with capture:
        builds.cancel(claim.build_id, by="ops")
    return claim.build_id


SCENARIOS = {
    builds.QUEUE: scenario_queue,
    builds.LAUNCH: scenario_launch,
    builds.LAUNCHED: scenario_launch,
    builds.LAUNCH_FAILED: scenario_launch_failed,
    builds.STUCK_LAUNCHING: scenario_stuck_launching,
    builds.NOT_STARTED: scenario_not_started,
    builds.HAND_OVER: scenario_hand_over,
    builds.CLAIM: scenario_claim,
    builds.BY_HAND: scenario_by_hand,
    builds.TAKE_OVER: scenario_take_over,
    builds.SUCCEED: scenario_succeed,
    builds.FAIL: scenario_fail,
    builds.INTERRUPT: scenario_interrupt,
    builds.TIME_OUT: scenario_time_out,
    builds.STOP_AT_SHELL: scenario_stop_at_shell,
    builds.LOSE: scenario_lose,
    builds.CANCEL: scenario_cancel,
}


def test_every_transition_has_a_scenario():
    assert set(SCENARIOS) == set(TRANSITIONS)


@pytest.mark.parametrize("transition", TRANSITIONS, ids=lambda t: t.name)
def test_each_write_of_state_is_in_the_table_and_the_entry_is_taken(transition, clock, monkeypatch):
    capture = CaptureQueriesContext(connection)
    pk = SCENARIOS[transition](capture, clock, monkeypatch)
    writes = state_writes(capture.captured_queries)
    assert writes, "the scenario wrote no state"
    for write in writes:
        assert matching(write), f"{write[0] or '(new)'} → {write[1]} is not in the transition table"
    assert any(transition in matching(write) for write in writes), f"{transition} was not taken: {writes}"
    build = Build.objects.get(pk=pk)
    check_retry(transition, build)


def check_retry(transition, build):
    """What the entry says becomes of the build's requests is what happened."""
    retries = BuildRequest.objects.filter(retry_of=build)
    if transition.retry == Retry.SAME_ROW:
        assert build.state == S.QUEUED and build.attempt == 2 and build.launch_token == ""
        assert build.requests.exists(), "its requests stay attached"
    elif transition.retry == Retry.NEW_REQUEST:
        assert build.state == transition.target and retries.count() == 1
        assert retries.get().build.state == S.QUEUED
    elif transition.retry == Retry.HANDED_OVER:
        assert build.state == S.FAILED and not build.requests.exists()
        assert Build.objects.get(state=S.QUEUED).requests.exists()
    elif transition.retry == Retry.NO:
        assert build.state == transition.target and not retries.exists()
        assert not Build.objects.filter(state=S.QUEUED).exists()
    else:
        assert transition.retry == Retry.NOT_NEEDED and not retries.exists()


# --- The table itself ----------------------------------------------------------------------------------------------


def test_the_table_is_the_designs():
    """DESIGN §3 in one table: queued → launching → launched → running → succeeded | failed | cancelled | lost."""
    table = {(t.name, t.sources, t.target, t.retry) for t in TRANSITIONS}
    assert table == {
        ("queue", (), S.QUEUED, Retry.NOT_NEEDED),
        ("launch", (S.QUEUED,), S.LAUNCHING, Retry.NOT_NEEDED),
        ("launched", (S.LAUNCHING,), S.LAUNCHED, Retry.NOT_NEEDED),
        ("launch failed", (S.LAUNCHING,), S.QUEUED, Retry.SAME_ROW),
        ("stuck launching", (S.LAUNCHING,), S.QUEUED, Retry.SAME_ROW),
        ("never started", (S.LAUNCHED,), S.QUEUED, Retry.SAME_ROW),
        ("handed over", (S.LAUNCHING, S.LAUNCHED), S.FAILED, Retry.HANDED_OVER),
        ("claim", (S.LAUNCHING, S.LAUNCHED), S.RUNNING, Retry.NOT_NEEDED),
        ("build by hand", (), S.RUNNING, Retry.NOT_NEEDED),
        ("build by hand takes the queue", (S.QUEUED,), S.RUNNING, Retry.NOT_NEEDED),
        ("succeed", (S.RUNNING,), S.SUCCEEDED, Retry.NOT_NEEDED),
        ("build error", (S.RUNNING,), S.FAILED, Retry.NO),
        ("interrupted", (S.RUNNING,), S.FAILED, Retry.NEW_REQUEST),
        ("timed out", (S.RUNNING,), S.FAILED, Retry.NO),
        ("stopped at the shell", (S.RUNNING,), S.CANCELLED, Retry.NO),
        ("lost", (S.RUNNING,), S.LOST, Retry.NEW_REQUEST),
        ("cancel", (S.QUEUED, S.LAUNCHING, S.LAUNCHED, S.RUNNING), S.CANCELLED, Retry.NO),
    }


def test_final_states_are_never_left_and_every_other_state_is():
    left = {source for t in TRANSITIONS for source in t.sources}
    assert left.isdisjoint(builds.FINAL_STATES)
    assert left | set(builds.FINAL_STATES) == set(S)
    reached = {t.target for t in TRANSITIONS}
    assert reached == set(S)


def test_only_the_operator_cancels_and_only_the_build_process_claims():
    assert builds.CANCEL.who == (Actor.OPERATOR,) and builds.CLAIM.who == (Actor.BUILD,)
    assert {t for t in TRANSITIONS if Actor.SWEEP in t.who} >= {builds.LOSE, builds.TIME_OUT, builds.STUCK_LAUNCHING}
    assert all(t.who for t in TRANSITIONS)


def test_the_helper_refuses_what_the_table_does_not_say():
    bogus = Transition("bogus", (S.SUCCEEDED,), S.RUNNING, (Actor.OPERATOR,), Retry.NO)
    with pytest.raises(ValueError, match="not in the transition table"):
        builds._move(bogus, 1)
    with pytest.raises(ValueError, match="does not leave running"):
        builds._move(builds.LAUNCH, 1, only_from=(S.RUNNING,))
    with pytest.raises(ValueError, match="does not create a build"):
        builds._insert(builds.CANCEL)
    assert not Build.objects.exists()


def test_a_transition_is_conditional_on_its_sources_and_token():
    claim = running_claim()
    assert builds._move(builds.LAUNCH, claim.build_id) == 0, "a running build is not queued"
    assert builds._move(builds.SUCCEED, claim.build_id, token="another") == 0
    assert Build.objects.get(pk=claim.build_id).state == S.RUNNING
    assert builds._move(builds.SUCCEED, claim.build_id, token=claim.token) == 1


# --- Nothing else writes state ------------------------------------------------------------------------------------

WRITERS = {"update", "create", "bulk_create", "bulk_update", "get_or_create", "update_or_create"}


def state_writes_in_source(path):
    """(line, what) for every call in ``path`` that may write ``state``: a queryset write with a ``state`` keyword
    (or ``state`` in a ``bulk_update`` field list), ``Build(state=...)``, an assignment to ``.state``, raw SQL."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            keywords = {k.arg for k in node.keywords}
            if name in WRITERS | {"Build"} and "state" in keywords:
                found.append((node.lineno, f"{name}(state=...)"))
            if name == "bulk_update" and any(
                isinstance(a, (ast.List, ast.Tuple)) and any(getattr(e, "value", None) == "state" for e in a.elts)
                for a in node.args
            ):
                found.append((node.lineno, "bulk_update([..., 'state'])"))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr == "state":
                    found.append((node.lineno, ".state = ..."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.search(r"(?i)\bupdate\b.*publisher_build\b", node.value):
                found.append((node.lineno, "raw SQL"))
    return found


def test_nothing_outside_builds_writes_state():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "builds.py" and path.parent == PACKAGE or "migrations" in path.parts:
            continue
        offenders += [f"{path.relative_to(PACKAGE)}:{line} {what}" for line, what in state_writes_in_source(path)]
    assert offenders == []


def test_inside_builds_only_the_helpers_write_state():
    path = PACKAGE / "builds.py"
    tree = ast.parse(path.read_text())
    helpers = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("_move", "_insert")]
    inside = {line for helper in helpers for line in range(helper.lineno, helper.end_lineno + 1)}
    outside = [(line, what) for line, what in state_writes_in_source(path) if line not in inside]
    assert len(helpers) == 2 and outside == []


def test_the_source_scan_finds_a_write(tmp_path):
    """The scan above is not blind: each kind of write it looks for is found."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "Build.objects.filter(pk=1).update(state='failed')\n"
        "Build(state='queued').save()\n"
        "build.state = 'lost'\n"
        "Build.objects.bulk_update(rows, ['state'])\n"
        "cursor.execute('UPDATE publisher_build SET state = %s')\n"
    )
    assert sorted(line for line, _ in state_writes_in_source(sample)) == [1, 2, 3, 4, 5]


def test_the_sql_parser_sees_a_write_that_skips_the_helper():
    with CaptureQueriesContext(connection) as capture:
        Build.objects.create(state=S.SUCCEEDED)
        Build.objects.filter(state=S.SUCCEEDED).update(error="x", state=S.LOST)
    with pytest.raises(AssertionError, match="does not go through builds._move"):
        state_writes(capture.captured_queries)
    assert state_writes(capture.captured_queries[:1]) == [((), "succeeded")]
