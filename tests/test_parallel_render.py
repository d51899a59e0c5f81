"""BUILD_WORKERS: pages rendered by several processes give the release a serial build gives, and a parallel build
stops like a serial one (a failure in a worker, fencing, SIGTERM), holding a bounded number of pages."""

import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.utils import timezone

from publisher import render
from publisher.conf import get_config
from publisher.destinations import recording
from publisher.models import Page
from publisher.progress import Progress
from publisher.release import SiteRoot, build_release
from publisher.render import RenderError

from .conftest import PROJECT_ROOT, wait_for

pytestmark = pytest.mark.django_db
RECORDING = {"BACKEND": "publisher.destinations.recording.RecordingDestination"}


@pytest.fixture
def small_chunks(monkeypatch):
    """A pool from 10 pages on, 7 pages per chunk: every boundary (chunk, index page, sitemap file) is crossed."""
    monkeypatch.setattr(render, "PARALLEL_MIN_PAGES", 10)
    monkeypatch.setattr(render, "CHUNK_PAGES", 7)


def bulk_published(count, prefix="p"):
    now = timezone.now()
    Page.objects.bulk_create(
        Page.published_copy(
            slug=f"{prefix}{i:05d}",
            title=f"Page {i} & <{i % 7}>",
            body=f"Body {i}\n\nline 'two' of {i}",
            published_at=now - timezone.timedelta(minutes=i),
        )
        for i in range(count)
    )


def build(settings, *, workers, build_id=1, progress=None):
    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_WORKERS": workers}
    return build_release(get_config(), build_id=build_id, attempt=1, progress=progress or Progress())


def tree(path):
    """{relative path: bytes} of a release folder, without ``release.json`` (it names the build and the time)."""
    root = Path(path)
    return {
        str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "release.json"
    }


def manifest_files(path):
    import json

    return json.loads((Path(path) / "manifest.json").read_text())["files"]


def no_workers_left():
    return not multiprocessing.active_children()


@pytest.mark.postgres
@pytest.mark.parametrize("workers", [2, 3])
def test_a_parallel_build_is_byte_identical_to_a_serial_one(site_root, settings, small_chunks, monkeypatch, workers):
    monkeypatch.setattr(render, "SITEMAP_MAX_URLS", 40)  # several sitemap files and a sitemap index
    bulk_published(250)  # three index pages
    serial = build(settings, workers=1, build_id=1)
    serial_tree = tree(site_root / "releases" / serial.name)
    parallel = build(settings, workers=workers, build_id=2)
    parallel_tree = tree(site_root / "releases" / parallel.name)

    assert parallel.pages == serial.pages == 250
    assert "page/3/index.html" in parallel_tree and "sitemap-7.xml" in parallel_tree
    assert manifest_files(site_root / "releases" / parallel.name) == manifest_files(
        site_root / "releases" / serial.name
    )
    parallel_tree.pop("manifest.json"), serial_tree.pop("manifest.json")  # they name their release
    assert parallel_tree == serial_tree
    assert no_workers_left()


def test_the_pool_is_used_and_pages_are_stored_by_the_workers(site_root, settings, small_chunks, monkeypatch, tmp_path):
    """The workers hash and store pages themselves (the local writer's ``worker_store``): no page goes through
    ``add`` in the build process, yet every page is in the manifest, in order."""
    from publisher.destinations.local import LocalReleaseWriter

    bulk_published(100)
    parent = os.getpid()
    added = []
    original_add = LocalReleaseWriter.add

    def add(self, path, data, content_type, input=""):
        added.append(path)
        return original_add(self, path, data, content_type, input)

    monkeypatch.setattr(LocalReleaseWriter, "add", add)
    renderers = tmp_path / "renderers"
    original_render = render.PageJob.render_page

    def render_and_note(self, page):
        with open(renderers, "a") as out:  # the workers' memory is their own: note the process in a file
            out.write(f"{os.getpid()}\n")
        return original_render(self, page)

    monkeypatch.setattr(render.PageJob, "render_page", render_and_note)
    outcome = build(settings, workers=2)

    assert outcome.pages == 100
    assert set(renderers.read_text().split()) - {str(parent)}, "a forked worker rendered pages"
    assert [path for path in added if path.startswith("p0")] == [], "stored where rendered, never through add"
    files = manifest_files(site_root / "current")
    assert [path for path in files if path.startswith("p0")] == [f"p{i:05d}/index.html" for i in range(100)]
    for i in range(100):
        data = (site_root / "current" / f"p{i:05d}" / "index.html").read_bytes()
        assert files[f"p{i:05d}/index.html"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_writer_without_worker_store_gets_the_same_files_through_add(site_root, settings, small_chunks):
    """S3 and the recording double store through the build process: workers send the bytes back, in order."""
    settings.PUBLISHER = {**settings.PUBLISHER, "DESTINATION": RECORDING}
    recording.reset()
    bulk_published(120)
    serial = build(settings, workers=1, build_id=1)
    parallel = build(settings, workers=2, build_id=2)
    try:
        assert recording.releases[parallel.name] == recording.releases[serial.name]
        assert recording.manifests[parallel.name].files == recording.manifests[serial.name].files
        adds = [name for step, name in recording.calls if step == "add"]
        assert adds.count(parallel.name) == adds.count(serial.name) == len(recording.releases[serial.name])
    finally:
        recording.reset()


def test_a_worker_that_raises_fails_the_build_and_removes_the_partial_release(site_root, settings, small_chunks):
    bulk_published(60)
    first = build(settings, workers=1, build_id=1)
    Page.objects.update(live_body="Every page changed")  # else no page is rendered again
    parent = os.getpid()
    original = render.PageJob.render_page

    def fails_in_a_worker(self, page):
        if os.getpid() != parent:
            raise RenderError(f"Page #{page.pk} cannot be rendered (a test)")
        return original(self, page)

    render.PageJob.render_page = fails_in_a_worker
    try:
        with pytest.raises(RenderError, match=r"Page #\d+ cannot be rendered \(a test\)"):
            build(settings, workers=2, build_id=2)
    finally:
        render.PageJob.render_page = original
    assert SiteRoot(site_root).live_name() == first.name
    assert sorted(p.name for p in (site_root / "releases").iterdir()) == [first.name]
    assert wait_for(no_workers_left, timeout=10, message="the workers to be gone")


def test_a_worker_killed_fails_the_build_with_a_clear_error(site_root, settings, small_chunks):
    bulk_published(60)
    parent = os.getpid()
    original = render.PageJob.render_page

    def dies_in_a_worker(self, page):
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, page)

    render.PageJob.render_page = dies_in_a_worker
    try:
        with pytest.raises(RenderError, match="render worker process died.*BUILD_WORKERS"):
            build(settings, workers=2)
    finally:
        render.PageJob.render_page = original
    assert not (site_root / "releases").exists() or not list((site_root / "releases").iterdir())
    assert wait_for(no_workers_left, timeout=10, message="the workers to be gone")


def test_workers_ignore_sigterm_and_sigint_the_build_process_alone_acts_on_them(site_root, settings):
    from publisher.destinations import get_destination

    writer = get_destination().begin(name="20260101T000000-b1-a1", build=1, attempt=1)
    job = render.PageJob(template=None, stylesheet="", base_url="", tz=timezone.get_current_timezone())
    before = signal.getsignal(signal.SIGTERM)
    try:
        with render.ParallelPages(writer, job, workers=3) as pages:
            pages.start()
            handlers = [pages.pool.submit(signal.getsignal, signum).result() for signum in render._SIGNALS]
            assert len(pages.pool._processes) == 2, "BUILD_WORKERS=3: the build process and two forks"
        assert handlers == [signal.SIG_IGN, signal.SIG_IGN]
        assert signal.getsignal(signal.SIGTERM) == before, "this process keeps its own handler"
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set(), "and no signal stays blocked"
    finally:
        writer.abort()
    assert no_workers_left()


class Fenced(Exception):
    pass


class FencedAfter(Progress):
    """Raises from ``advance`` at page ``n``, as ``HeartbeatProgress`` does once the claim is gone."""

    def __init__(self, n):
        self.n = n

    def advance(self, done):
        super().advance(done)
        if done == self.n:
            raise Fenced(f"fenced at {done}")


def test_a_fenced_parallel_build_stops_at_once_and_its_workers_with_it(site_root, settings, small_chunks):
    bulk_published(200)
    with pytest.raises(Fenced, match="fenced at 50"):
        build(settings, workers=2, progress=FencedAfter(50))
    assert SiteRoot(site_root).live_name() is None
    assert not list((site_root / "releases").iterdir())
    assert no_workers_left()


def test_a_parallel_build_holds_a_bounded_number_of_pages(site_root, settings, small_chunks, monkeypatch):
    """Memory stays flat: the rows read from the snapshot but not yet in the release never exceed what the chunks
    in flight hold, however many pages there are (no list of all pages)."""
    bulk_published(700)
    pulled = []
    original = render.published_pages

    class CountingPages:
        def __init__(self):
            self.pages = original()

        def count(self):
            return self.pages.count()

        def iterator(self, chunk_size):
            for row in self.pages.iterator(chunk_size=chunk_size):
                pulled.append(1)
                yield row

    monkeypatch.setattr(render, "published_pages", CountingPages)
    ahead = []

    class Watching(Progress):
        def advance(self, done):
            super().advance(done)
            ahead.append(len(pulled) - done)

    outcome = build(settings, workers=3, progress=Watching())
    assert outcome.pages == 700 and len(ahead) == 700
    forks = 3 - 1
    bound = (forks * render.PENDING_CHUNKS_PER_WORKER + 1) * render.CHUNK_PAGES
    assert max(ahead) <= bound, (max(ahead), bound)
    assert max(ahead) < 700 / 2


def test_build_workers_defaults_to_the_cpus_this_process_may_use(settings):
    settings.PUBLISHER = {key: value for key, value in settings.PUBLISHER.items() if key != "BUILD_WORKERS"}
    assert get_config().BUILD_WORKERS == len(os.sched_getaffinity(0))
    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_WORKERS": None}
    assert get_config().BUILD_WORKERS == len(os.sched_getaffinity(0))
    settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_WORKERS": 3}
    assert get_config().BUILD_WORKERS == 3


PRINT_WORKERS = (
    "import django; django.setup(); from publisher.conf import get_config; print(get_config().BUILD_WORKERS)"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "cpus", "expected"),
    [("3", None, "3"), (None, "0", "1"), (None, None, str(len(os.sched_getaffinity(0))))],
)
def test_build_workers_comes_from_the_environment_or_the_cpus_the_process_may_use(child_env, variable, cpus, expected):
    env = {**child_env, **({"BUILD_WORKERS": variable} if variable else {})}
    command = [sys.executable, "-c", PRINT_WORKERS]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]  # a process allowed one CPU
    result = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected


# --- The build command as a real process, with workers ----------------------------------------------------------

PROCESS_PAGES = 20_000


def partial_with_pages(site_root):
    releases = site_root / "releases"
    if not releases.is_dir():
        return None
    for path in releases.iterdir():
        if path.name.startswith(".tmp-") and sum(1 for _ in path.iterdir()) > 500:
            return path
    return None


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("whole_group", [False, True], ids=["to the build process", "to every process (Heroku)"])
def test_sigterm_during_a_parallel_build_exits_143_and_leaves_no_worker(children, child_env, site_root, whole_group):
    Page.objects.bulk_create([Page.published_copy(slug="first", title="First", body="the first page")])
    env = {**child_env, "BUILD_WORKERS": "2"}
    proc = children.manage("buildstaticsite", env=env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    previous = SiteRoot(site_root).live_name()
    now = timezone.now()
    Page.objects.bulk_create(
        Page.published_copy(slug=f"t{i:06d}", title=f"Page {i}", body="x" * 200, published_at=now)
        for i in range(PROCESS_PAGES)
    )
    proc = children.manage("buildstaticsite", env=env)
    wait_for(lambda: partial_with_pages(site_root), timeout=60, message="a partial release")
    workers = [int(pid) for pid in subprocess.check_output(["pgrep", "-P", str(proc.pid)], text=True).split()]
    assert workers, "the build forked its workers"
    if whole_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, out
    assert "interrupted by SIGTERM" in out
    assert wait_for(lambda: not group_alive(proc.pid), timeout=10, message="the workers to be gone")
    assert [p.name for p in (site_root / "releases").iterdir()] == [previous]
    assert SiteRoot(site_root).live_name() == previous
