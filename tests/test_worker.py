"""The worker (``manage.py qcluster``) says it has started and stops within honcho's 5 s on SIGTERM or SIGINT."""

import os
import signal
import subprocess
import time

import pytest

from .conftest import wait_for

HONCHO_KILL_WAIT = 5  # seconds between honcho's SIGTERM and its SIGKILL


@pytest.fixture
def worker(children, child_env, tmp_path):
    """A running ``qcluster`` on the test database, with the default poll interval; its output in ``.log``."""
    env = {key: value for key, value in child_env.items() if not key.startswith("Q_")}
    log = tmp_path / "qcluster.log"
    with open(log, "w") as output:
        proc = children.manage("qcluster", env=env, stdout=output)
    proc.log = log
    wait_for(lambda: "Worker started" in log.read_text() or proc.poll() is not None, timeout=60, message="its start")
    assert proc.poll() is None, log.read_text()
    return proc


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("signum", "group"),
    [
        (signal.SIGTERM, False),  # kill PID, an operator or a test
        (signal.SIGTERM, True),  # honcho (make run) and Heroku: the whole process group
        (signal.SIGINT, False),
        (signal.SIGINT, True),  # Ctrl-C in a terminal: the foreground process group
    ],
    ids=["SIGTERM", "SIGTERM-group", "SIGINT", "SIGINT-group"],
)
def test_the_worker_logs_its_start_and_stops_within_5_seconds(worker, signum, group):
    time.sleep(1.5)  # the pusher is now between two looks at the queue
    started = time.monotonic()
    (os.killpg if group else os.kill)(worker.pid, signum)
    try:
        returncode = worker.wait(timeout=HONCHO_KILL_WAIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {HONCHO_KILL_WAIT} s after {signum.name}:\n{worker.log.read_text()}")
    took = time.monotonic() - started
    log = worker.log.read_text()
    assert returncode == 0, log
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if "publisher.worker" in line]
    assert "INFO publisher.worker: Worker started: django-q2 cluster 'publisher'" in lines[0], log
    assert "checking for tasks every 10 s" in lines[0]
    assert f"Worker stopping ({signum.name})" in log and lines[-1].endswith("Worker stopped"), log
    assert took < HONCHO_KILL_WAIT
    wait_for(lambda: not group_alive(worker.pid), timeout=2, message="no process of the cluster left")


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.django_db
def test_the_broker_claims_due_tasks_and_never_sleeps_long(django_assert_num_queries):
    from django_q.conf import Conf

    from publisher.worker import STEP, ORMBroker

    broker = ORMBroker(list_key="test-queue")
    task_id = broker.enqueue("payload")
    assert broker.dequeue() == [(task_id, "payload")]  # claimed: its lock moved into the future
    started = time.monotonic()
    assert broker.dequeue() is None  # looked, nothing due: the next look is Conf.POLL away
    for _ in range(3):
        with django_assert_num_queries(0):
            assert broker.dequeue() is None  # back to the pusher after at most STEP, without a query
    assert Conf.POLL > 4 * STEP and time.monotonic() - started < 4 * STEP + 1
