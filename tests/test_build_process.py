"""The build command as a real process: killed at any instant, the live site stays on a complete release."""

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from django.utils import timezone

from publisher import builds
from publisher.launchers import recording
from publisher.models import Build, BuildRequest, BuildState, Page
from publisher.release import SiteRoot

from .conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.postgres]
PAGES = 20_000
# Old releases pruned after a switch: removing one release of this many pages takes a few hundred ms, so the three
# take far longer than the delays at which SIGTERM is sent after the switch.
OLD_RELEASES = 3
OLD_RELEASE_PAGES = 3_000


def bulk_published(count, prefix):
    now = timezone.now()
    Page.objects.bulk_create(
        Page.published_copy(slug=f"{prefix}{i:06d}", title=f"Page {i}", body="x" * 200, published_at=now)
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
    Page.objects.bulk_create([Page.published_copy(slug="first", title="First", body="the first page")])
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


# --- Issue 8, defect 2: a SIGTERM after the switch ---------------------------------------------------------------


def release_files(path):
    """The relative paths of every file in a release folder."""
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file())


def site_with_old_releases(children, child_env, site_root):
    """OLD_RELEASES complete releases of the same OLD_RELEASE_PAGES pages, written by builds by hand. Returns the
    file list they all have (every complete release of these pages has it)."""
    bulk_published(OLD_RELEASE_PAGES, "r")
    env = {**child_env, "SITE_RELEASES_KEPT": str(OLD_RELEASES)}
    for _ in range(OLD_RELEASES):
        proc = children.manage("buildstaticsite", env=env)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    names = SiteRoot(site_root).complete_releases()
    assert len(names) == OLD_RELEASES, names
    files = release_files(site_root / "releases" / names[0])
    assert "release.json" in files and len(files) > OLD_RELEASE_PAGES
    assert all(release_files(site_root / "releases" / name) == files for name in names)
    return files


def launched_build():
    """A build the (recording) launcher launched, waiting for its process: (build id, token)."""
    outcome = builds.request_build("publish")
    assert outcome.kind == "launched", outcome
    launch = recording.launches[-1]
    return launch["build_id"], launch["token"]


def build_with_sigterm_after_the_switch(children, child_env, site_root, log, *, delay):
    """Run the launched build's process (keeping one release, so it prunes every other), poll ``current`` until it
    switches, then send SIGTERM ``delay`` seconds later, unless the process has ended by then.

    Returns (build id, the release ``current`` switched to, whether the signal was sent, exit code, output).
    """
    build_id, token = launched_build()
    env = {**child_env, "SITE_RELEASES_KEPT": "1"}
    current = site_root / "current"
    before = os.readlink(current)
    with open(log, "w") as out:
        # The token as --token=T (a form argparse cannot misread), as the launchers of 7c11d2f passed it too.
        proc = children.manage("buildstaticsite", "--build", str(build_id), f"--token={token}", env=env, stdout=out)
        deadline = time.monotonic() + 120
        while os.readlink(current) == before and proc.poll() is None:
            assert time.monotonic() < deadline, "the build did not switch the site within 120 s"
            time.sleep(0.0005)
        time.sleep(delay)
        signalled = proc.poll() is None
        if signalled:
            proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=60)
    output = Path(log).read_text()
    live = os.readlink(current)
    assert live != before, f"build #{build_id} ended (exit {returncode}) without switching the site:\n{output}"
    return build_id, Path(live).name, signalled, returncode, output


def check_the_build_succeeded(build_id, live, returncode, out, files, site_root, *, when):
    """Defect 2's invariants: once the site has switched, the build succeeded whatever the signal interrupted.
    Every broken one is named in one failure."""
    build = Build.objects.get(pk=build_id)
    broken = []
    if build.state != BuildState.SUCCEEDED or build.release != live:
        broken.append(f"recorded {build.state} ({build.error!r}) with release {build.release!r}, not succeeded")
    retries = list(BuildRequest.objects.filter(retry_of__isnull=False).values_list("reason", flat=True))
    if retries:
        broken.append(f"retried although it went live: {retries}")
    if "partial release was removed" in out:
        broken.append("the log says the partial release was removed (it was live)")
    if SiteRoot(site_root).live_name() != live:
        broken.append(f"the live release moved on to {SiteRoot(site_root).live_name()}")
    # Exit 0; or the signal came after the command had finished (its result printed) and the process, back on the
    # default handler, was ending anyway.
    finished = f"Build #{build_id}: release {live} with {OLD_RELEASE_PAGES} pages is live" in out
    if not (returncode == 0 or (returncode == -signal.SIGTERM and finished)):
        broken.append(f"exit code {returncode}")
    for path in sorted((site_root / "releases").iterdir()):
        if not path.name.startswith("."):  # a folder named like a release is complete
            found = release_files(path)
            if found != files:
                seal = "with" if "release.json" in found else "without"
                broken.append(f"release {path.name} holds {len(found)} of its {len(files)} files, {seal} release.json")
    assert not broken, (
        f"build #{build_id} switched the site to {live}, then: " + "; ".join(broken) + f"\n{when}; output:\n{out}"
    )


def handled_after_the_switch(out):
    return "went live and was interrupted by SIGTERM afterwards" in out


def test_sigterm_20ms_after_the_switch_leaves_a_recorded_success_and_only_complete_releases(
    children, child_env, site_root, tmp_path
):
    """Defect 2 as found (5 of 5 at 7c11d2f): SIGTERM 20 ms after ``current`` switches, while old releases are pruned.
    The build is ``succeeded`` with its release, not retried, exits 0, and no folder named like a release is partial."""
    files = site_with_old_releases(children, child_env, site_root)
    build_id, live, signalled, returncode, out = build_with_sigterm_after_the_switch(
        children, child_env, site_root, tmp_path / "build.log", delay=0.020
    )
    check_the_build_succeeded(build_id, live, returncode, out, files, site_root, when="SIGTERM 20 ms after the switch")
    # The signal reached the build while it pruned (or held off in the switch) and was handled as "after going live".
    assert signalled and handled_after_the_switch(out), out


def test_sigterm_at_random_moments_after_the_switch_changes_no_outcome(children, child_env, site_root, tmp_path):
    """The same invariants with SIGTERM 0 ms, three random moments and 300 ms after the switch, one build each, the
    old releases put back before each (``SIGTERM_DELAY_SEED`` replays the delays)."""
    files = site_with_old_releases(children, child_env, site_root)
    releases = site_root / "releases"
    old = SiteRoot(site_root).complete_releases()
    pristine = tmp_path / "pristine"  # hard-linked copies, to put the old releases back before each trial
    for name in old:
        shutil.copytree(releases / name, pristine / name, copy_function=os.link)
    seed = int(os.environ.get("SIGTERM_DELAY_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    delays = [0.0, *sorted(round(rng.uniform(0, 0.3), 3) for _ in range(3)), 0.3]
    handled = 0
    for trial, delay in enumerate(delays):
        for name in old:
            if not (releases / name).exists():
                shutil.copytree(pristine / name, releases / name, copy_function=os.link)
        build_id, live, signalled, returncode, out = build_with_sigterm_after_the_switch(
            children, child_env, site_root, tmp_path / f"build-{trial}.log", delay=delay
        )
        when = f"SIGTERM {delay * 1000:.0f} ms after the switch (trial {trial} of delays {delays}, seed {seed})"
        check_the_build_succeeded(build_id, live, returncode, out, files, site_root, when=when)
        handled += signalled and handled_after_the_switch(out)
    assert handled, f"no SIGTERM of {delays} reached a build after its switch"


def whole_releases(site_root):
    """Every complete release folder holds exactly the files its manifest lists, with those bytes."""
    import hashlib
    import json

    site = SiteRoot(site_root)
    for name in site.complete_releases():
        folder = site.releases / name
        files = json.loads((folder / "manifest.json").read_text())["files"]
        on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
        assert on_disk - {"manifest.json", "release.json"} == set(files), f"{name} holds other files"
        for path, entry in files.items():
            assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == entry["sha256"], f"{name}/{path}"
    return site.complete_releases()


def test_sigkill_at_random_moments_of_a_build_that_recycles_a_release(children, child_env, site_root):
    """SITE_RELEASES_KEPT=2: a build takes the oldest release's folder. SIGKILL at random moments of such a build
    (before, during and after the rename, while stale files are replaced, while leftovers are deleted) leaves the
    live release as it was and every complete release whole; the next build is the content's, in full
    (``RECYCLE_KILL_SEED`` replays the moments)."""
    env = {**child_env, "SITE_RELEASES_KEPT": "2", "BUILD_WORKERS": "2"}
    bulk_published(6_000, "r")
    for _ in range(2):
        proc = children.manage("buildstaticsite", env=env, stdout=subprocess.DEVNULL)
        assert proc.wait(timeout=300) == 0
    started = time.monotonic()
    Page.objects.filter(live_slug__endswith="7").update(live_body="edited", published_at=timezone.now())
    Page.objects.filter(live_slug__endswith="3").update(is_published=False)
    proc = children.manage("buildstaticsite", env=env, stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=300) == 0
    took = time.monotonic() - started
    seed = int(os.environ.get("RECYCLE_KILL_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    for trial in range(4):
        live = SiteRoot(site_root).live_name()
        Page.objects.filter(live_slug__endswith=str(trial)).update(
            live_body=f"trial {trial}", published_at=timezone.now()
        )
        delay = round(rng.uniform(0.3, max(0.4, took)), 3)
        proc = children.manage("buildstaticsite", env=env, stdout=subprocess.DEVNULL)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        when = f"trial {trial}, SIGKILL after {delay} s (seed {seed})"
        now_live = SiteRoot(site_root).live_name()
        assert now_live in whole_releases(site_root), when
        if now_live == live:
            assert (site_root / "current" / "r000000" / "index.html").exists(), when
        for build in Build.objects.filter(state=BuildState.RUNNING):
            builds.cancel(build.pk)
    proc = children.manage("buildstaticsite", env=env, stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=300) == 0
    whole_releases(site_root)
    current = site_root / "current"
    for slug, body in [
        ("r000010", "trial 0"),
        ("r000021", "trial 1"),
        ("r000017", "edited"),
        ("r000004", "x" * 200),
        ("r000012", "trial 2"),
    ]:
        assert body in (current / slug / "index.html").read_text(), slug
    assert not (current / "r000013").exists()
    assert len(list(current.glob("r*/index.html"))) == 6_000 - 600
