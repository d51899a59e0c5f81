"""Render the static site into a folder (DESIGN §5) through Django templates (autoescaped).

Pages stream from one query (``.iterator()``), ordered by slug, so memory stays flat however many pages there
are: the index and the sitemap are written as the pages go by, from the same rows, and therefore agree with them.
Each page goes only into its own folder of the release (``page_path``); a slug that would lead elsewhere fails the
build with a ``RenderError`` that names the page.
"""

import os
from pathlib import Path

from django.contrib.staticfiles import finders
from django.core.exceptions import ValidationError
from django.template.loader import get_template

from .models import Page

INDEX_PAGE_SIZE = 100
SITEMAP_MAX_URLS = 50_000
SITEMAP_RENDER_CHUNK = 1_000
STYLESHEET = "publisher/site.css"


class RenderError(Exception):
    """The site cannot be rendered as stored; the build fails with this message and the live site is unchanged."""


def page_path(directory, slug, *, page_id):
    """The file page ``page_id`` is written to: ``<directory>/<slug>/index.html``.

    Raises ``RenderError`` unless the slug keeps the slug rules (the model's validators) and names one folder
    directly inside ``directory``. The database refuses such slugs too; this is the last line before a write.
    """
    root = Path(os.path.abspath(directory))
    folder = Path(os.path.normpath(root / slug))  # lexical: ".." and absolute slugs resolved without the disk
    if folder.parent != root:
        problem = f"would write {folder / 'index.html'}, not a folder of its own inside the release {root}."
    else:
        try:
            Page._meta.get_field("slug").clean(slug, None)
        except ValidationError as exc:
            problem = "breaks the slug rules: " + " ".join(exc.messages)
        else:
            return folder / "index.html"
    raise RenderError(f"Page #{page_id} has the slug {slug!r}, which {problem} Fix the slug and publish again.")


def page_url(base_url, slug=""):
    return f"{base_url.rstrip('/')}/{slug}/" if slug else f"{base_url.rstrip('/')}/"


def published_pages():
    """The published pages a release contains, in site order."""
    return Page.objects.filter(is_published=True).order_by("slug").only("slug", "title", "body", "updated_at")


class IndexWriter:
    """Writes ``index.html``, ``page/2/index.html``, ... with ``INDEX_PAGE_SIZE`` entries each.

    Holds at most one index page of entries plus one look-ahead, so it never needs the total in advance.
    """

    def __init__(self, directory):
        self.directory = directory
        self.template = get_template("publisher/site/index.html")
        self.entries = []
        self.number = 1

    def add(self, slug, title):
        if len(self.entries) == INDEX_PAGE_SIZE:
            self._flush(has_next=True)
        self.entries.append({"slug": slug, "title": title})

    def close(self):
        self._flush(has_next=False)

    def _flush(self, *, has_next):
        n = self.number
        root = "" if n == 1 else "../../"
        path = self.directory / "index.html" if n == 1 else self.directory / "page" / str(n) / "index.html"
        previous = None if n == 1 else (f"{root}" if n == 2 else f"{root}page/{n - 1}/")
        context = {
            "entries": self.entries,
            "number": n,
            "root": root,
            "previous_url": previous,
            "next_url": f"{root}page/{n + 1}/" if has_next else None,
        }
        _write(path, self.template.render(context))
        self.entries = []
        self.number += 1


class SitemapWriter:
    """Writes ``sitemap.xml``; above ``SITEMAP_MAX_URLS`` URLs, ``sitemap-N.xml`` files and a sitemap index."""

    def __init__(self, directory, base_url):
        self.directory = directory
        self.base_url = base_url
        self.urlset_head, self.urlset_tail = get_template("publisher/site/urlset.xml").render({}).split("<!--urls-->")
        self.urls_template = get_template("publisher/site/urls.xml")
        self.index_template = get_template("publisher/site/sitemapindex.xml")
        self.files = 0
        self.count = 0
        self.buffer = []
        self.handle = None

    def add(self, loc, lastmod=None):
        if self.handle is None or self.count == SITEMAP_MAX_URLS:
            self._next_file()
        self.buffer.append({"loc": loc, "lastmod": lastmod})
        self.count += 1
        if len(self.buffer) == SITEMAP_RENDER_CHUNK:
            self._drain()

    def _drain(self):
        if self.buffer:
            self.handle.write(self.urls_template.render({"urls": self.buffer}))
            self.buffer = []

    def _next_file(self):
        self._close_file()
        self.files += 1
        self.count = 0
        self.handle = open(self.directory / f"sitemap-{self.files}.xml", "w", encoding="utf-8")
        self.handle.write(self.urlset_head)

    def _close_file(self):
        if self.handle is not None:
            self._drain()
            self.handle.write(self.urlset_tail)
            self.handle.close()
            self.handle = None

    def close(self):
        self._close_file()
        if self.files == 1:
            (self.directory / "sitemap-1.xml").rename(self.directory / "sitemap.xml")
            return
        sitemaps = [page_url(self.base_url) + f"sitemap-{n}.xml" for n in range(1, self.files + 1)]
        _write(self.directory / "sitemap.xml", self.index_template.render({"sitemaps": sitemaps}))


def render_site(directory, *, base_url, progress):
    """Write every file of a release into ``directory``; returns the number of pages written."""
    directory = Path(directory)
    pages = published_pages()
    progress.start(pages.count())
    page_template = get_template("publisher/site/page.html")
    index = IndexWriter(directory)
    sitemap = SitemapWriter(directory, base_url)
    sitemap.add(page_url(base_url))
    done = 0
    for page in pages.iterator(chunk_size=2000):
        _write(page_path(directory, page.slug, page_id=page.pk), page_template.render({"page": page, "root": "../"}))
        index.add(page.slug, page.title)
        sitemap.add(page_url(base_url, page.slug), page.updated_at)
        done += 1
        progress.advance(done)
    index.close()
    sitemap.close()
    _write(directory / "404.html", get_template("publisher/site/404.html").render({"root": page_url(base_url)}))
    _write(directory / "robots.txt", f"User-agent: *\nAllow: /\nSitemap: {page_url(base_url)}sitemap.xml\n")
    stylesheet = finders.find(STYLESHEET)
    _write(directory / "static" / "site.css", Path(stylesheet).read_text(encoding="utf-8"))
    progress.finish(done)
    return done


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
