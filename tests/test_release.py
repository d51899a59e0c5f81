import hashlib
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

from publisher import render
from publisher.conf import get_config
from publisher.destinations import get_destination
from publisher.destinations import local as release_module
from publisher.models import Build, Page
from publisher.progress import Progress
from publisher.release import SiteRoot, build_release, prune_releases

pytestmark = pytest.mark.django_db
SITEMAP_NS = "{http://www.sitemaps.org/schemas/sitemap/0.9}"


def publish(slug, title="Title", body="Body"):
    page = Page(slug=slug, title=title, body=body)
    page.publish()
    return page


def bulk_published(count, prefix="p"):
    now = timezone.now()
    Page.objects.bulk_create(
        Page.published_copy(slug=f"{prefix}{i:06d}", title=f"Page {i}", body="x", published_at=now)
        for i in range(count)
    )


def build(build_id=1, attempt=1, progress=None, full=False):
    return build_release(get_config(), build_id=build_id, attempt=attempt, progress=progress or Progress(), full=full)


def live(site_root):
    return site_root / "current"


def test_release_files_and_escaped_content(site_root):
    publish("hello", title="Fish & <Chips>", body='<script>alert("x")</script>\n\nSecond paragraph')
    publish("about", title="About")
    Page.objects.create(slug="draft", title="Draft", body="not published")

    outcome = build(build_id=7, attempt=2)

    current = live(site_root)
    assert current.is_symlink() and not os.path.isabs(os.readlink(current))
    assert os.readlink(current) == f"releases/{outcome.name}"
    assert outcome.name.endswith("-b7-a2") and outcome.pages == 2 and outcome.went_live
    files = sorted(str(p.relative_to(current)) for p in current.rglob("*") if p.is_file())
    (css,) = [path for path in files if path.startswith("assets/")]
    assert css.endswith("/site.css") and len(css.split("/")[1]) == 16, "content-addressed"
    assert files == sorted(
        [
            "404.html",
            "about/index.html",
            "hello/index.html",
            "index.html",
            "manifest.json",
            "release.json",
            "robots.txt",
            "sitemap.xml",
            css,
        ]
    )
    html = (current / "hello" / "index.html").read_text()
    assert "<h1>Fish &amp; &lt;Chips&gt;</h1>" in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html and "<script>" not in html
    assert "<p>Second paragraph</p>" in html
    assert f'href="../{css}"' in html
    index = (current / "index.html").read_text()
    assert 'href="hello/"' in index and 'href="about/"' in index and "Draft" not in index
    assert "Fish &amp; &lt;Chips&gt;" in index
    meta = json.loads((current / "release.json").read_text())
    assert meta["build"] == 7 and meta["attempt"] == 2 and meta["pages"] == 2 and meta["time"]
    manifest = json.loads((current / "manifest.json").read_text())
    assert manifest["release"] == outcome.name and manifest["pages"] == 2
    assert sorted(manifest["files"]) == [f for f in files if f not in ("manifest.json", "release.json")]
    for path, entry in manifest["files"].items():
        data = (current / path).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["files"]["hello/index.html"]["type"] == "text/html; charset=utf-8"
    assert manifest["files"][css]["type"] == "text/css; charset=utf-8"
    urls = [el.text for el in ET.parse(current / "sitemap.xml").getroot().iter(f"{SITEMAP_NS}loc")]
    assert urls == [
        "http://127.0.0.1:8000/site/",
        "http://127.0.0.1:8000/site/about/",
        "http://127.0.0.1:8000/site/hello/",
    ]
    assert "Sitemap: http://127.0.0.1:8000/site/sitemap.xml" in (current / "robots.txt").read_text()


def test_sitemap_uses_site_url(site_root, settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_URL": "https://www.example.org/news"}
    publish("hello")
    build()
    text = (live(site_root) / "sitemap.xml").read_text()
    assert "<loc>https://www.example.org/news/hello/</loc>" in text


def test_empty_site(site_root):
    outcome = build()
    assert outcome.pages == 0
    assert "No pages are published yet" in (live(site_root) / "index.html").read_text()


def test_index_paging(site_root):
    bulk_published(250)
    build()
    current = live(site_root)
    first = (current / "index.html").read_text()
    assert first.count('<li><a href="') == 100
    assert 'href="page/2/"' in first and 'rel="prev"' not in first
    second = (current / "page" / "2" / "index.html").read_text()
    assert second.count("<li>") == 100
    assert 'href="../../p000100/"' in second and 'rel="prev" href="../../"' in second
    assert 'href="../../page/3/"' in second
    third = (current / "page" / "3" / "index.html").read_text()
    assert third.count("<li>") == 50 and 'rel="next"' not in third
    assert not (current / "page" / "4").exists()


def test_exactly_one_full_index_page_has_no_next_link(site_root):
    bulk_published(100)
    build()
    assert 'rel="next"' not in (live(site_root) / "index.html").read_text()
    assert not (live(site_root) / "page").exists()


def test_sitemap_index_above_the_limit(site_root, monkeypatch):
    """The paging logic at a small limit; the real limit is exercised in the slow test below."""
    monkeypatch.setattr(render, "SITEMAP_MAX_URLS", 10)
    monkeypatch.setattr(render, "SITEMAP_RENDER_CHUNK", 3)
    bulk_published(25)  # + the home page = 26 URLs = 3 files
    build()
    current = live(site_root)
    root = ET.parse(current / "sitemap.xml").getroot()
    assert root.tag == f"{SITEMAP_NS}sitemapindex"
    locs = [el.text for el in root.iter(f"{SITEMAP_NS}loc")]
    assert locs == [f"http://127.0.0.1:8000/site/sitemap-{n}.xml" for n in (1, 2, 3)]
    counts = [len(list(ET.parse(current / f"sitemap-{n}.xml").getroot())) for n in (1, 2, 3)]
    assert counts == [10, 10, 6]


@pytest.mark.slow
def test_index_and_sitemap_at_large_counts(site_root):
    bulk_published(50_000)  # + the home page: 50,001 URLs, one more than a sitemap may hold
    outcome = build()
    assert outcome.pages == 50_000
    current = live(site_root)
    root = ET.parse(current / "sitemap.xml").getroot()
    assert root.tag == f"{SITEMAP_NS}sitemapindex"
    assert [len(list(ET.parse(current / f"sitemap-{n}.xml").getroot())) for n in (1, 2)] == [50_000, 1]
    assert len(list((current / "page").iterdir())) == 499  # pages 2..500 of the index
    last = (current / "page" / "500" / "index.html").read_text()
    assert last.count("<li>") == 100 and "p049999" in last and 'rel="next"' not in last


def test_releases_are_pruned_and_the_live_one_kept(site_root, settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 5}
    publish("hello")
    names = [build(build_id=n).name for n in range(1, 5)]
    assert SiteRoot(site_root).complete_releases() == names, "a build does not prune on its way to going live"
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 2}
    assert prune_releases(get_config()) == names[:2]
    assert SiteRoot(site_root).complete_releases() == names[-2:]
    assert SiteRoot(site_root).live_name() == names[-1]


def test_a_build_takes_the_folder_of_the_release_its_prune_would_delete(site_root, settings):
    """Once SITE_RELEASES_KEPT releases exist, a build renames the oldest one (not live) into its partial folder
    instead of creating every folder anew; nothing else is deleted before the switch, and the prune after it has
    nothing left to do. Each release stays whole: its files are what its manifest says."""
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 2}
    publish("hello")
    publish("gone")
    names = [build(build_id=1).name, build(build_id=2).name]
    Page.objects.filter(slug="gone").update(is_published=False)
    publish("new-one", body="New")
    third = build(build_id=3)
    assert third.recycled == names[0]
    assert SiteRoot(site_root).complete_releases() == [names[1], third.name]
    assert prune_releases(get_config()) == []
    release = site_root / "releases" / third.name
    assert not (release / "gone").exists(), "a page the new release lacks is deleted with its folder"
    assert "New" in (release / "new-one" / "index.html").read_text()
    for name in (names[1], third.name):
        folder = site_root / "releases" / name
        files = json.loads((folder / "manifest.json").read_text())["files"]
        on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {
            "manifest.json",
            "release.json",
        }
        assert on_disk == set(files), name
        for path, entry in files.items():
            assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == entry["sha256"], (name, path)


def test_an_interrupted_prune_never_leaves_a_release_that_looks_complete(site_root, settings, monkeypatch):
    """A prune cut short (SIGTERM in the middle of deleting) leaves no folder named like a release that is not whole;
    the next prune finishes the job."""
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 1}
    publish("hello")
    names = [build(build_id=n).name for n in range(1, 4)]
    site = SiteRoot(site_root)
    files = {
        name: sorted(p.relative_to(site.releases / name) for p in (site.releases / name).rglob("*")) for name in names
    }
    real_rmtree = release_module.shutil.rmtree

    def interrupted_rmtree(path, ignore_errors=False):
        victim = sorted(Path(path).rglob("*"))[0]  # delete part of it, then the signal arrives
        victim.unlink() if victim.is_file() else real_rmtree(victim)
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(release_module.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        prune_releases(get_config())
    for name in site.complete_releases():
        now = sorted(p.relative_to(site.releases / name) for p in (site.releases / name).rglob("*"))
        assert now == files[name], f"{name} looks like a release but is not whole"
    assert names[0] not in site.complete_releases()
    monkeypatch.setattr(release_module.shutil, "rmtree", real_rmtree)
    prune_releases(get_config())
    assert sorted(p.name for p in site.releases.iterdir()) == [names[-1]], "the next prune clears what was left"


def test_an_older_release_never_replaces_a_newer_live_one(site_root):
    publish("hello")
    newer = build(build_id=9)
    older = build(build_id=8)
    assert newer.went_live and not older.went_live
    assert SiteRoot(site_root).live_name() == newer.name
    retry = build(build_id=9, attempt=2)
    assert retry.went_live and SiteRoot(site_root).live_name() == retry.name


def test_a_failure_while_rendering_removes_the_partial_release(site_root):
    publish("hello")
    first = build(build_id=1)

    class Boom(Progress):
        def advance(self, done):
            raise RuntimeError("render failed")

    with pytest.raises(RuntimeError):
        build(build_id=2, progress=Boom())
    assert os.listdir(site_root / "releases") == [first.name]
    assert SiteRoot(site_root).live_name() == first.name


def test_stale_partial_releases_are_removed_by_the_next_build(site_root):
    stale = site_root / "releases" / ".tmp-20200101T000000-b1-a1"
    (stale / "hello").mkdir(parents=True)
    publish("hello")
    build(build_id=2)
    assert not stale.exists()


def test_progress_reports_done_and_total(site_root):
    bulk_published(5)
    seen = []

    class Recorder(Progress):
        def start(self, total):
            seen.append(("start", total))

        def advance(self, done):
            seen.append(("advance", done))

    build(progress=Recorder())
    assert seen == [("start", 5)] + [("advance", n) for n in range(1, 6)]


def test_manual_command_builds_and_reports(site_root, capsys):
    publish("hello")
    call_command("buildstaticsite")
    assert (live(site_root) / "hello" / "index.html").exists()
    assert "is live" in capsys.readouterr().out


@pytest.fixture
def serving(settings):
    from publisher import views

    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_SERVE": True}
    views._cache["at"] = 0.0
    yield views
    views._cache["at"] = 0.0


def test_the_web_app_serves_the_live_release_only_with_site_serve(site_root, client, settings, serving):
    publish("hello", title="Hi there")
    first = build()
    response = client.get("/site/hello/")
    assert response.status_code == 200 and b"Hi there" in response.content
    assert response["Content-Type"] == "text/html; charset=utf-8" and response["X-Publisher-Release"] == first.name
    assert client.get("/site/").status_code == 200
    assert client.get("/site/hello")["Location"] == "/site/hello/"
    css = next(path for path in get_destination().manifest(first.name).files if path.startswith("assets/"))
    assert client.get(f"/site/{css}")["Content-Type"] == "text/css; charset=utf-8"
    assert client.get("/site/../../etc/passwd").status_code == 404
    missing = client.get("/site/missing/")
    assert missing.status_code == 404 and b"<html" in missing.content.lower(), "the release's own 404 page"
    assert response["Last-Modified"].endswith(" GMT")
    etag = response["ETag"]
    assert client.get("/site/hello/", headers={"If-None-Match": etag}).status_code == 304
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_SERVE": False}
    assert client.get("/site/").status_code == 404


def test_the_pointer_is_cached_a_few_seconds(site_root, client, serving, monkeypatch):
    publish("hello")
    first = build()
    assert client.get("/site/")["X-Publisher-Release"] == first.name
    second = build(build_id=2)
    assert client.get("/site/")["X-Publisher-Release"] == first.name, "within POINTER_TTL"
    serving._cache["at"] = 0.0
    assert client.get("/site/")["X-Publisher-Release"] == second.name


def test_rollbacksite_switches_to_a_sealed_release_and_lists_them(site_root, capsys):
    publish("hello")
    first = build(build_id=1)
    second = build(build_id=2)
    call_command("rollbacksite")
    listed = capsys.readouterr().out.split()
    assert listed == [first.name, "*", second.name]
    call_command("rollbacksite", first.name)
    assert SiteRoot(site_root).live_name() == first.name
    with pytest.raises(CommandError) as info:
        call_command("rollbacksite", "20200101T000000-b9-a1")
    assert info.value.returncode == 1
    third = build(build_id=3)
    assert third.went_live, "after a rollback, the next build goes live"


def test_site_root_path_resolution():
    assert Path(get_config().SITE_ROOT).is_absolute()


# --- A page is written only inside its own folder of the release (DESIGN §2, §5) -------------------------------

HOSTILE_SLUGS = ["..", "../x", "../../../x", "/abs", "a/b", "", ".", "index", "sitemap", "x" * 101, "a\x00b", "A"]


@pytest.mark.parametrize("slug", HOSTILE_SLUGS)
def test_page_path_refuses_slugs_that_leave_the_page_folder_or_break_the_rules(slug, tmp_path):
    with pytest.raises(render.RenderError) as info:
        render.page_path(tmp_path / "release", slug, page_id=12)
    assert str(info.value).startswith(f"Page #12 has the slug {slug!r}, which ")
    assert "Fix the slug" in str(info.value)


@pytest.mark.parametrize("slug", ["../x", "/abs", "a/b", "..", ""])
def test_page_path_says_where_an_escaping_slug_would_write(slug, tmp_path):
    with pytest.raises(render.RenderError, match="not a folder of its own inside the release"):
        render.page_path(tmp_path / "release", slug, page_id=3)


def test_page_path_of_a_good_slug(tmp_path):
    assert render.page_path(tmp_path / "release", "about-us", page_id=1) == tmp_path / "release/about-us/index.html"
    assert render.page_path(tmp_path / "release", "x" * 100, page_id=1).parent.name == "x" * 100


class StoredPages(list):
    """Rows as ``published_pages()`` hands them over (pk, live slug, title, body, published at), for rows the
    database would no longer accept."""

    def count(self):
        return len(self)

    def iterator(self, chunk_size=None):
        return iter(self)


def test_a_build_that_meets_a_hostile_slug_fails_and_writes_nothing_outside(site_root, tmp_path, monkeypatch):
    publish("hello")
    first = build(build_id=1)
    now = timezone.now()
    stored = Page.objects.get()
    rows = [(stored.pk, stored.live_slug, stored.live_title, stored.live_body, stored.published_at)]
    hostile = [(12, "../../../escaped", "x", "x", now)]
    monkeypatch.setattr(render, "published_pages", lambda: StoredPages([*rows, *hostile]))
    with pytest.raises(render.RenderError, match=r"^Page #12 has the slug '\.\./\.\./\.\./escaped', which "):
        build(build_id=2)
    assert not (tmp_path / "escaped").exists() and not (site_root / "escaped").exists()
    assert os.listdir(site_root / "releases") == [first.name]
    assert SiteRoot(site_root).live_name() == first.name


def test_the_build_records_why_it_refused(site_root, monkeypatch):
    hostile = StoredPages([(12, "/abs", "x", "x", timezone.now())])
    monkeypatch.setattr(render, "published_pages", lambda: hostile)
    with pytest.raises(CommandError, match="RenderError: Page #12 has the slug '/abs', which "):
        call_command("buildstaticsite")
    assert Build.objects.get().error.startswith("RenderError: Page #12 has the slug '/abs', which ")


def test_the_python_api_cannot_publish_a_page_outside_site_root(site_root, tmp_path):
    for slug in ("../../../escaped", str(tmp_path / "absolute"), "index"):
        with pytest.raises(ValidationError):
            Page.objects.create(slug=slug, title="x").publish()
    publish("hello")
    build()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    assert sorted(p.name for p in live(site_root).iterdir() if p.is_dir()) == ["assets", "hello"]
    assert (live(site_root) / "index.html").read_text().count('<li><a href="') == 1


def test_pruning_comes_after_the_success_is_recorded_and_the_next_build_is_launched(site_root, monkeypatch):
    """Issue 11: pruning is never on the path between a finished render and the change being live."""
    from publisher import runner

    publish("hello")
    Build.objects.all().delete()
    order = []
    launch_next = runner.builds.launch_next

    def launching_next():
        order.append(("launch next", Build.objects.get().state))
        return launch_next()

    def pruning(config):
        order.append(("prune", Build.objects.get().state))
        return []

    monkeypatch.setattr(runner.builds, "launch_next", launching_next)
    monkeypatch.setattr(runner, "prune_releases", pruning)
    call_command("buildstaticsite")
    assert order == [("launch next", "succeeded"), ("prune", "succeeded")]
