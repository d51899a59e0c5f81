"""Publishing with the local launcher and real processes, end to end."""

import pytest

from publisher.launchers.local import LocalLauncher
from publisher.models import ACTIVE_STATES, Build, BuildState, Page
from publisher.release import SiteRoot

from .conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def local_launcher(settings, child_env, monkeypatch):
    """This process launches real builds; they (and the builds they launch) use the test database and site."""
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "LAUNCHER": {"BACKEND": "publisher.launchers.local.LocalLauncher", "OPTIONS": {"STOP_GRACE": 1}},
        "LOG_DIR": child_env["VAR_DIR"] + "/log",
    }
    for key, value in child_env.items():
        monkeypatch.setenv(key, value)
    yield
    for build in Build.objects.exclude(handle=None):
        if "started" in build.handle:
            LocalLauncher(STOP_GRACE=0).stop(build.handle)


def settled():
    return not Build.objects.filter(state__in=(*ACTIVE_STATES, BuildState.QUEUED)).exists()


def test_three_quick_publishes_make_at_most_two_builds_and_all_go_live(local_launcher, site_root):
    for slug in ("one", "two", "three"):
        Page(slug=slug, title=slug.title(), body=f"The {slug} page").publish()
    wait_for(settled, timeout=120, interval=0.2, message="every build to finish")
    runs = list(Build.objects.order_by("pk"))
    assert 1 <= len(runs) <= 2, runs
    assert all(b.state == BuildState.SUCCEEDED for b in runs), [(b.pk, b.state, b.error) for b in runs]
    if len(runs) == 2:
        assert runs[1].started_at >= runs[0].finished_at  # one after the other
    assert SiteRoot(site_root).live_name() == runs[-1].release
    for slug in ("one", "two", "three"):
        assert f"The {slug} page" in (site_root / "current" / slug / "index.html").read_text()
    log = site_root.parent / "var" / "log" / "builds" / f"{runs[0].pk}.log"
    # The process says so last: after recording its success it launches the next build and prunes (issue 11), so
    # its log may still be growing when the database says every build has finished.
    wait_for(lambda: "is live" in log.read_text(), timeout=60, interval=0.2, message=f"the last line of {log}")
