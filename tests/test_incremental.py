"""A local build writes only what changed: unchanged files are hard links of the live release's, releases stay
independent, no live file is ever changed in place, and ``--full`` writes everything afresh."""

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from publisher import render
from publisher.conf import get_config
from publisher.destinations import local, recording
from publisher.destinations.recording import RecordingDestination
from publisher.models import Build, Page
from publisher.progress import Progress
from publisher.release import build_release, prune_releases

pytestmark = pytest.mark.django_db


def bulk_published(count):
    now = timezone.now()
    Page.objects.bulk_create(
        Page.published_copy(slug=f"p{i:04d}", title=f"Page {i}", body=f"Body {i}", published_at=now)
        for i in range(count)
    )


def edit(slug, body):
    """Change what is live of one page (as a publish does), without a build request."""
    assert Page.objects.filter(live_slug=slug).update(live_body=body, published_at=timezone.now()) == 1


def build(build_id, *, full=False, workers=1, settings=None):
    if settings is not None:
        settings.PUBLISHER = {**settings.PUBLISHER, "BUILD_WORKERS": workers}
    return build_release(get_config(), build_id=build_id, attempt=1, progress=Progress(), full=full)


def release(site_root, outcome):
    return site_root / "releases" / outcome.name


def files(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file())


def manifest(path):
    return json.loads((Path(path) / "manifest.json").read_text())["files"]


def inode(path):
    return os.stat(path).st_ino


def assert_whole(path):
    """Every file the manifest lists is there with that content (the release agrees with its seal)."""
    for name, entry in manifest(path).items():
        data = (Path(path) / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"], name


@pytest.mark.parametrize("workers", [1, 2])
def test_a_one_page_edit_writes_what_changed_and_links_the_rest(site_root, settings, monkeypatch, workers):
    monkeypatch.setattr(render, "PARALLEL_MIN_PAGES", 10)
    monkeypatch.setattr(render, "CHUNK_PAGES", 7)
    bulk_published(30)
    first = build(1, workers=workers, settings=settings)
    edit("p0005", "A new body")
    second = build(2, workers=workers, settings=settings)
    old, new = release(site_root, first), release(site_root, second)

    changed = {
        path for path, entry in manifest(new).items() if manifest(old).get(path, {}).get("sha256") != entry["sha256"]
    }
    assert changed == {"p0005/index.html", "sitemap.xml"}  # the body, and the page's lastmod
    for path in manifest(new):
        same_inode = inode(old / path) == inode(new / path)
        assert same_inode == (path not in changed), path
    assert os.stat(new / "p0005" / "index.html").st_nlink == 1
    assert os.stat(new / "p0004" / "index.html").st_nlink == 2
    assert "A new body" in (new / "p0005" / "index.html").read_text()
    assert "Body 5" in (old / "p0005" / "index.html").read_text(), "the old release keeps its own file"
    assert (second.uploaded, second.copied) == (2, len(manifest(new)) - 2)
    assert second.bytes_uploaded == sum(manifest(new)[path]["size"] for path in changed)
    assert_whole(new)
    assert_whole(old)


def test_the_manifest_is_the_same_whether_files_are_linked_or_written(site_root, settings):
    bulk_published(12)
    build(1)
    linked = build(2)
    written = build(3, full=True)
    assert linked.copied > 0 and written.copied == 0
    assert manifest(release(site_root, linked)) == manifest(release(site_root, written))
    assert files(release(site_root, linked)) == files(release(site_root, written))


def test_deleting_or_pruning_the_old_release_leaves_the_new_one_whole(site_root, settings):
    bulk_published(12)
    first = build(1)
    edit("p0003", "changed")
    second = build(2)
    new = release(site_root, second)
    before = {path: (new / path).read_bytes() for path in files(new)}
    shutil.rmtree(release(site_root, first))
    assert {path: (new / path).read_bytes() for path in files(new)} == before
    assert_whole(new)

    edit("p0004", "changed too")
    third = build(3)
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 1}
    assert prune_releases(get_config()) == [second.name]
    assert [p.name for p in (site_root / "releases").iterdir()] == [third.name]
    assert_whole(release(site_root, third))
    assert "changed" in (site_root / "current" / "p0003" / "index.html").read_text()


def test_a_later_change_writes_a_new_file_never_through_the_shared_one(site_root, settings, monkeypatch):
    """A linked file is shared with the live release: it is never opened for writing. A build that changes it
    creates a new inode (``O_EXCL``), and the releases that shared the old one keep its bytes."""
    bulk_published(5)
    first = build(1)
    second = build(2)
    shared = inode(release(site_root, first) / "p0002" / "index.html")
    assert inode(release(site_root, second) / "p0002" / "index.html") == shared
    opened_for_writing = []
    real_open = os.open

    def watching_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR):
            opened_for_writing.append((str(path), bool(flags & os.O_EXCL)))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(local.os, "open", watching_open)
    edit("p0002", "third version")
    third = build(3)

    page = release(site_root, third) / "p0002" / "index.html"
    assert inode(page) != shared and os.stat(page).st_nlink == 1
    assert "third version" in page.read_text()
    for earlier in (first, second):
        assert "Body 2" in (release(site_root, earlier) / "p0002" / "index.html").read_text()
    assert opened_for_writing and all(exclusive for _path, exclusive in opened_for_writing)
    assert all(str(release(site_root, third).parent / f".tmp-{third.name}") in path for path, _ in opened_for_writing)


def test_the_same_path_added_twice_replaces_the_file_without_writing_through_a_link(site_root, settings):
    bulk_published(3)
    first = build(1)
    destination = local.LocalDestination()
    writer = destination.begin(name="20990101T000000-b9-a1", build=9, attempt=1)
    live_index = release(site_root, first) / "index.html"
    live_bytes = live_index.read_bytes()
    writer.add("index.html", live_bytes, render.HTML)  # linked from the live release
    assert inode(writer.path / "index.html") == inode(live_index)
    writer.add("index.html", b"<p>other</p>", render.HTML)
    assert (writer.path / "index.html").read_bytes() == b"<p>other</p>"
    assert live_index.read_bytes() == live_bytes, "the live file is untouched"
    writer.abort()


def test_full_writes_every_file_afresh(site_root, settings):
    bulk_published(8)
    first = build(1)
    full = build(2, full=True)
    old, new = release(site_root, first), release(site_root, full)
    assert full.copied == 0 and full.uploaded == len(manifest(new))
    assert all(inode(old / path) != inode(new / path) for path in manifest(new))
    assert all(os.stat(new / path).st_nlink == 1 for path in files(new))


@pytest.mark.parametrize(("code", "stops"), [(errno.EXDEV, True), (errno.EPERM, True), (errno.EMLINK, False)])
def test_refused_links_fall_back_to_writing_the_bytes(site_root, settings, monkeypatch, caplog, code, stops):
    bulk_published(6)
    build(1)
    attempts = []

    def refuse(source, target):
        attempts.append(target)
        raise OSError(code, os.strerror(code), source, None, target)

    monkeypatch.setattr(local.os, "link", refuse)
    second = build(2)
    new = release(site_root, second)
    assert second.copied == 0 and second.uploaded == len(manifest(new))
    assert_whole(new)
    assert all(os.stat(new / path).st_nlink == 1 for path in files(new))
    # Another file system or a refusal of links in general: stop trying; too many links to one file: that file.
    assert (len(attempts) == 1) == stops
    assert ("Hard links refused" in caplog.text) == stops


def test_a_file_missing_from_the_live_release_is_written(site_root, settings):
    bulk_published(4)
    first = build(1)
    (release(site_root, first) / "p0001" / "index.html").unlink()  # damaged by hand
    second = build(2)
    assert_whole(release(site_root, second))
    assert second.uploaded == 1


def test_a_live_release_without_a_readable_manifest_means_writing_everything(site_root, settings, caplog):
    bulk_published(4)
    first = build(1)
    (release(site_root, first) / "manifest.json").write_text("not json")
    second = build(2)
    assert second.copied == 0
    assert "Writing every file" in caplog.text


def test_the_build_history_says_what_was_written_and_what_was_linked(site_root, settings, capsys):
    bulk_published(10)
    call_command("buildstaticsite")
    edit("p0007", "new")
    call_command("buildstaticsite")
    call_command("buildstaticsite", "--full")
    first, edited, full = Build.objects.order_by("pk")
    count = len(manifest(site_root / "current"))
    assert (first.published["uploaded"], first.published["copied"]) == (count, 0)
    assert (edited.published["uploaded"], edited.published["copied"]) == (2, count - 2)
    assert (full.published["uploaded"], full.published["copied"]) == (count, 0)
    assert not any(os.stat(site_root / "current" / path).st_nlink > 1 for path in manifest(site_root / "current"))


class DestinationWithoutFull(RecordingDestination):
    """A third-party destination written before ``begin`` took ``full``."""

    def begin(self, *, name, build, attempt):
        return super().begin(name=name, build=build, attempt=attempt)


def test_a_destination_without_full_builds_as_usual_and_says_so(site_root, settings, caplog):
    """A third-party destination whose ``begin`` predates ``full`` still builds; the log says ``--full`` could not
    be honoured."""
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "DESTINATION": {"BACKEND": f"{__name__}.DestinationWithoutFull"},
    }

    recording.reset()
    try:
        bulk_published(3)
        outcome = build(1, full=True)
        assert outcome.went_live and recording.pointer.release == outcome.name
        assert "cannot write every file afresh" in caplog.text
    finally:
        recording.reset()


# --- Pages whose input did not change are not rendered again (issue 11, goal 3) ---------------------------------


@pytest.fixture
def rendered(monkeypatch, tmp_path):
    """The slugs rendered by ``PageJob.render_page``, in this process or a forked worker (noted in a file)."""
    notes = tmp_path / "rendered"
    notes.touch()
    real = render.PageJob.render_page

    def noting(self, page):
        with open(notes, "a") as out:
            out.write(page.slug + "\n")
        return real(self, page)

    monkeypatch.setattr(render.PageJob, "render_page", noting)

    def taken():
        slugs = notes.read_text().split()
        notes.write_text("")
        return slugs

    return taken


def without_release_name(path):
    """The files of a release with what names the release taken out (``release.json``; the manifest's header)."""
    tree = {
        name: (Path(path) / name).read_bytes() for name in files(path) if name not in ("release.json", "manifest.json")
    }
    return tree, manifest(path)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_one_page_edit_renders_that_page_only_and_equals_a_full_build(
    site_root, settings, monkeypatch, rendered, workers
):
    monkeypatch.setattr(render, "PARALLEL_MIN_PAGES", 10)
    monkeypatch.setattr(render, "CHUNK_PAGES", 7)
    bulk_published(30)
    build(1, workers=workers, settings=settings)
    assert sorted(rendered()) == [f"p{i:04d}" for i in range(30)]
    edit("p0005", "A new body")
    edited = build(2, workers=workers, settings=settings)
    assert rendered() == ["p0005"], "only the page whose live content changed is rendered"
    full = build(3, full=True, workers=workers, settings=settings)
    assert len(rendered()) == 30, "--full renders every page"
    assert without_release_name(release(site_root, edited)) == without_release_name(release(site_root, full))
    inputs = {path: entry.get("input") for path, entry in manifest(release(site_root, full)).items()}
    assert all(inputs[f"p{i:04d}/index.html"] for i in range(30)), "each page records what it was rendered from"
    assert inputs["index.html"] is None and inputs["sitemap.xml"] is None, "only pages are reused unrendered"
    assert_whole(release(site_root, edited))


def test_a_title_a_slug_or_a_take_down_renders_what_it_changes(site_root, settings, rendered):
    bulk_published(6)
    build(1)
    rendered()
    Page.objects.filter(live_slug="p0001").update(live_title="Renamed")
    Page.objects.filter(live_slug="p0002").update(live_slug="moved")
    Page.objects.filter(live_slug="p0003").update(is_published=False)
    second = build(2)
    assert sorted(rendered()) == ["moved", "p0001"]
    new = release(site_root, second)
    assert "Renamed" in (new / "p0001" / "index.html").read_text() and "Renamed" in (new / "index.html").read_text()
    assert not (new / "p0002").exists() and not (new / "p0003").exists()
    assert_whole(new)


def test_a_changed_template_renders_every_page_again(site_root, settings, rendered, tmp_path):
    bulk_published(5)
    build(1)
    rendered()
    override = tmp_path / "templates" / "publisher" / "site"
    override.mkdir(parents=True)
    base = Path(render.__file__).parent / "templates" / "publisher" / "site" / "base.html"
    (override / "base.html").write_text(base.read_text().replace("<main>", '<main class="new">'))
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [str(tmp_path / "templates")]}]
    second = build(2)
    assert len(rendered()) == 5, "a template the page template extends changed: every page is rendered"
    assert '<main class="new">' in (release(site_root, second) / "p0004" / "index.html").read_text()
    assert second.uploaded >= 5
    build(3)
    assert rendered() == [], "and the next build reuses them again"


def test_a_template_named_only_while_rendering_means_every_page_is_rendered(site_root, settings, rendered, tmp_path):
    override = tmp_path / "templates" / "publisher" / "site"
    override.mkdir(parents=True)
    (override / "page.html").write_text(
        '{% extends "publisher/site/base.html"|add:"" %}{% block content %}x{% endblock %}'
    )
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [str(tmp_path / "templates")]}]
    bulk_published(4)
    build(1)
    second = build(2)
    assert len(rendered()) == 8, "the fingerprint cannot be known: nothing is reused unrendered"
    assert not any(entry.get("input") for entry in manifest(release(site_root, second)).values())
    assert second.copied > 0, "the unchanged bytes are still linked"


def test_a_recycled_folder_gives_the_release_a_full_build_gives(site_root, settings, monkeypatch, rendered):
    """KEPT=2: from the third build on, each build takes the oldest release's folder, with its stale files; the
    result is byte for byte a fresh full build's, with 2 workers too, and every kept release stays whole."""
    monkeypatch.setattr(render, "PARALLEL_MIN_PAGES", 10)
    monkeypatch.setattr(render, "CHUNK_PAGES", 7)
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 2}
    bulk_published(25)
    outcomes = [build(1, workers=2, settings=settings)]
    for n, slug in enumerate(["p0003", "p0010", "p0003", "p0020"], start=2):
        edit(slug, f"Edit {n}")
        if n == 4:
            Page.objects.filter(live_slug="p0011").update(is_published=False)
        outcomes.append(build(n, workers=2 if n % 2 else 1, settings=settings))
    assert [o.recycled for o in outcomes] == ["", "", outcomes[0].name, outcomes[1].name, outcomes[2].name]
    last = release(site_root, outcomes[-1])
    assert_whole(last)
    assert_whole(release(site_root, outcomes[-2]))
    rendered()
    full = build(9, full=True)
    assert without_release_name(last) == without_release_name(release(site_root, full))
    assert not (last / "p0011").exists()
    assert os.stat(last / "p0020" / "index.html").st_nlink == 1, "a changed page is a new file"


def test_full_in_a_recycled_folder_replaces_every_file(site_root, settings, rendered):
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 2}
    bulk_published(8)
    first, second = build(1), build(2)
    old_inodes = {path: inode(release(site_root, first) / path) for path in manifest(release(site_root, first))}
    rendered()
    full = build(3, full=True)
    assert full.recycled == first.name and len(rendered()) == 8
    new = release(site_root, full)
    assert full.copied == 0 and full.uploaded == len(manifest(new))
    assert all(os.stat(new / path).st_nlink == 1 for path in files(new))
    assert not set(old_inodes.values()) & {inode(new / path) for path in manifest(new)}
    assert_whole(new)
    assert_whole(release(site_root, second))
