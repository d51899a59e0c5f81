"""The build command as a real process: killed at any instant, the live site stays on a complete release."""

import os
import signal
import subprocess

import pytest
from django.utils import timezone

from publisher import builds
from publisher.models import Build, BuildState, Page
from publisher.release import SiteRoot

from .conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.postgres]
PAGES = 20_000


def bulk_published(count, prefix):
    now = timezone.now()
    Page.objects.bulk_create(
        Page(slug=f"{prefix}{i:06d}", title=f"Page {i}", body="x" * 200, is_published=True, published_at=now)
        for i in range(count)
    )


def partial_with_pages(site_root):
    """The partial release folder once it holds a few rendered pages (the build is mid-render)."""
    releases = site_root / "releases"
    if not releases.is_dir():
        return None
    for path in releases.iterdir():
        if path.name.startswith(".tmp-") and sum(1 for _ in path.iterdir()) > 50:
            return path
    return None


def first_release(children, child_env, site_root):
    # Without signals: no build request, so the build by hand below finds the slot free.
    Page.objects.bulk_create([Page(slug="first", title="First", body="the first page", is_published=True)])
    proc = children.manage("buildstaticsite", env=child_env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    live = SiteRoot(site_root).live_name()
    assert live and (site_root / "current" / "first" / "index.html").exists()
    return live


def test_sigkill_mid_render_keeps_the_previous_release_live(children, child_env, site_root):
    previous = first_release(children, child_env, site_root)
    bulk_published(PAGES, "k")
    proc = children.manage("buildstaticsite", env=child_env, stdout=subprocess.DEVNULL)
    partial = wait_for(lambda: partial_with_pages(site_root), timeout=60, message="a partial release")
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert SiteRoot(site_root).live_name() == previous
    assert (site_root / "current" / "first" / "index.html").exists()
    assert not (site_root / "current" / "k000000").exists()
    assert partial.exists()  # left behind, never served; the next build removes it
    # The killed build still holds the slot until the sweep (or an operator) ends it.
    busy = children.manage("buildstaticsite", env=child_env)
    out, _ = busy.communicate(timeout=60)
    assert busy.returncode == 3, out
    killed = Build.objects.get(state=BuildState.RUNNING)
    assert builds.cancel(killed.pk).kind == "cancelled"

    proc = children.manage("buildstaticsite", env=child_env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert not partial.exists()
    assert (site_root / "current" / "k000000" / "index.html").exists()


def test_sigterm_exits_143_and_removes_the_partial_release(children, child_env, site_root):
    previous = first_release(children, child_env, site_root)
    bulk_published(PAGES, "t")
    proc = children.manage("buildstaticsite", env=child_env)
    wait_for(lambda: partial_with_pages(site_root), timeout=60, message="a partial release")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, out
    assert "interrupted by SIGTERM" in out
    assert [p.name for p in (site_root / "releases").iterdir()] == [previous]
    assert SiteRoot(site_root).live_name() == previous


def test_build_failure_exits_1_with_a_clear_message(children, child_env, site_root):
    site_root.mkdir(parents=True)
    (site_root / "releases").write_text("not a folder")
    proc = children.manage("buildstaticsite", env=child_env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "failed" in out and "releases" in out
