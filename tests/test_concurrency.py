"""Many processes publishing at once while a build runs: one queued build covers them all, and nothing fails."""

import time

import pytest

from publisher import builds
from publisher.models import Build, BuildRequest, BuildState

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres, pytest.mark.slow]
PROCESSES, PUBLISHES = 8, 25

PUBLISHER = """
import os, time
from publisher.models import Page
while not os.path.exists({go!r}):
    time.sleep(0.01)
for n in range({count}):
    Page(slug=f"p{worker}-{{n}}", title=f"Page {worker}.{{n}}", body="x").publish()
print("done", {worker})
"""


def test_concurrent_publishes_coalesce_into_one_queued_build(children, child_env, tmp_path):
    running = builds.start_manual(process={"host": "elsewhere", "pid": 1})
    go = tmp_path / "go"
    procs = [
        children.manage("shell", "-c", PUBLISHER.format(go=str(go), count=PUBLISHES, worker=w), env=child_env)
        for w in range(PROCESSES)
    ]
    time.sleep(1.0)  # let every child import Django and wait at the line
    go.touch()
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        outputs.append(out)
        assert proc.returncode == 0, out
    for out in outputs:
        assert "Traceback" not in out and "Error calling" not in out and "ERROR" not in out, out
    assert Build.objects.filter(state__in=(BuildState.LAUNCHING, BuildState.LAUNCHED)).count() == 0
    queued = Build.objects.get(state=BuildState.QUEUED)
    assert Build.objects.get(pk=running.build_id).state == BuildState.RUNNING
    assert Build.objects.count() == 2
    publishes = BuildRequest.objects.exclude(reason="manual build")
    assert publishes.count() == PROCESSES * PUBLISHES
    assert set(publishes.values_list("build_id", flat=True)) == {queued.pk}
