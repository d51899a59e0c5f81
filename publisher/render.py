"""Render the static site into a folder (DESIGN §5) through Django templates (autoescaped).

Pages stream from one query (``.iterator()``), ordered by slug, so memory stays flat however many pages there
are: the index and the sitemap are written as the pages go by, from the same rows, and therefore agree with them.
Each page goes only into its own folder of the release (``page_path``); a slug that would lead elsewhere fails the
build with a ``RenderError`` that names the page.
"""

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from django.contrib.staticfiles import finders
from django.core.exceptions import ValidationError
from django.template.loader import get_template
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import mark_safe

from .models import RESERVED_SLUGS, SLUG_MAX_LENGTH, SLUG_PATTERN, Page

INDEX_PAGE_SIZE = 100
SITEMAP_MAX_URLS = 50_000
SITEMAP_RENDER_CHUNK = 1_000
STYLESHEET = "publisher/site.css"
#: Where ``page_path`` checks a page's file against: the release's own root, whatever the destination.
RELEASE_ROOT = Path("/release")
HTML = "text/html; charset=utf-8"
XML = "application/xml; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
CSS = "text/css; charset=utf-8"
#: Content-addressed files shared by every release (a destination may store them once, outside the releases).
ASSETS = "assets/"


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


_slug_keeps_the_rules = re.compile(SLUG_PATTERN).match


def page_file(slug, *, page_id):
    """``<slug>/index.html``: the page's file inside a release, for a slug that keeps the slug rules.

    The same rules as ``page_path`` (the model's validators), checked without building paths: this runs once per
    page. Any other slug goes through ``page_path``, which raises the ``RenderError`` naming the page.
    """
    if len(slug) <= SLUG_MAX_LENGTH and slug not in RESERVED_SLUGS and _slug_keeps_the_rules(slug):
        return f"{slug}/index.html"
    return PurePosixPath(page_path(RELEASE_ROOT, slug, page_id=page_id).relative_to(RELEASE_ROOT)).as_posix()


def page_url(base_url, slug=""):
    return f"{base_url.rstrip('/')}/{slug}/" if slug else f"{base_url.rstrip('/')}/"


@dataclass(frozen=True, slots=True)
class LivePage:
    """The live version of a page (DESIGN §2): what a release shows, never the draft."""

    pk: int
    slug: str
    title: str
    body: str
    published_at: object


def published_pages():
    """The live versions of the published pages a release contains, in site order (a queryset of ``LivePage``
    tuples: ``count()`` and ``iterator()`` work)."""
    fields = ("pk", "live_slug", "live_title", "live_body", "published_at")
    return Page.objects.filter(is_published=True, live_slug__isnull=False).order_by("live_slug").values_list(*fields)


class IndexWriter:
    """Writes ``index.html``, ``page/2/index.html``, ... with ``INDEX_PAGE_SIZE`` entries each.

    Holds at most one index page of entries plus one look-ahead, so it never needs the total in advance.
    """

    def __init__(self, release, *, stylesheet):
        self.release = release
        self.stylesheet = stylesheet
        self.template = get_template("publisher/site/index.html")
        self.entries = []
        self.number = 1

    def add(self, slug, title):
        if len(self.entries) == INDEX_PAGE_SIZE:
            self._flush(has_next=True)
        self.entries.append((slug, title))

    def close(self):
        self._flush(has_next=False)

    def _flush(self, *, has_next):
        n = self.number
        root = "" if n == 1 else "../../"
        path = "index.html" if n == 1 else f"page/{n}/index.html"
        previous = None if n == 1 else (f"{root}" if n == 2 else f"{root}page/{n - 1}/")
        # The list items are escaped here, in one pass, rather than by a template loop: a tenth of a build's time.
        items = "".join(
            f'<li><a href="{root}{escape(slug)}/">{escape(title)}</a></li>\n' for slug, title in self.entries
        )
        context = {
            "entries": mark_safe(items),  # every part is escaped above
            "number": n,
            "root": root,
            "stylesheet": self.stylesheet,
            "previous_url": previous,
            "next_url": f"{root}page/{n + 1}/" if has_next else None,
        }
        self.release.add(path, self.template.render(context), HTML)
        self.entries = []
        self.number += 1


class SitemapWriter:
    """Writes ``sitemap.xml``; above ``SITEMAP_MAX_URLS`` URLs, ``sitemap-N.xml`` files and a sitemap index.

    One sitemap file (at most 50,000 URLs) is held in memory until it is complete.
    """

    def __init__(self, release, base_url):
        self.release = release
        self.base_url = base_url
        self.urlset_head, self.urlset_tail = get_template("publisher/site/urlset.xml").render({}).split("<!--urls-->")
        self.index_template = get_template("publisher/site/sitemapindex.xml")
        self.files = 0
        self.count = 0
        self.buffer = []
        self.parts = None  # the text of the sitemap file being written
        self.first = None  # sitemap-1's text, until we know whether it is the only file

    def add(self, loc, lastmod=None):
        if self.parts is None or self.count == SITEMAP_MAX_URLS:
            self._next_file()
        # As the template language would write them (escaped; ``|date:"c"`` in the current time zone), without its
        # cost per URL: the sitemap was an eighth of a build's time.
        entry = f"<url><loc>{escape(loc)}</loc>"
        if lastmod:
            entry += f"<lastmod>{timezone.localtime(lastmod).isoformat()}</lastmod>"
        self.buffer.append(entry + "</url>\n")
        self.count += 1
        if len(self.buffer) == SITEMAP_RENDER_CHUNK:
            self._drain()

    def _drain(self):
        if self.buffer:
            self.parts.append("".join(self.buffer))
            self.buffer = []

    def _next_file(self):
        self._close_file()
        self.files += 1
        self.count = 0
        self.parts = [self.urlset_head]

    def _close_file(self):
        if self.parts is None:
            return
        self._drain()
        self.parts.append(self.urlset_tail)
        text = "".join(self.parts)
        self.parts = None
        if self.files == 1:
            self.first = text
            return
        if self.first is not None:
            self.release.add("sitemap-1.xml", self.first, XML)
            self.first = None
        self.release.add(f"sitemap-{self.files}.xml", text, XML)

    def close(self):
        self._close_file()
        if self.files == 1:
            self.release.add("sitemap.xml", self.first, XML)
            return
        sitemaps = [page_url(self.base_url) + f"sitemap-{n}.xml" for n in range(1, self.files + 1)]
        self.release.add("sitemap.xml", self.index_template.render({"sitemaps": sitemaps}), XML)


def render_site(release, *, base_url, progress):
    """Hand every file of a release to ``release`` (a ``ReleaseWriter``: ``add(path, data, content_type)``);
    returns the number of pages rendered."""
    pages = published_pages()
    progress.start(pages.count())
    stylesheet = add_stylesheet(release)
    page_template = get_template("publisher/site/page.html")
    index = IndexWriter(release, stylesheet=stylesheet)
    sitemap = SitemapWriter(release, base_url)
    sitemap.add(page_url(base_url))
    done = 0
    for row in pages.iterator(chunk_size=2000):
        page = LivePage(*row)
        path = page_file(page.slug, page_id=page.pk)
        context = {"page": page, "root": "../", "stylesheet": stylesheet}
        release.add(path, page_template.render(context), HTML)
        index.add(page.slug, page.title)
        sitemap.add(page_url(base_url, page.slug), page.published_at)
        done += 1
        progress.advance(done)
    index.close()
    sitemap.close()
    not_found = {"root": page_url(base_url), "stylesheet": stylesheet}
    release.add("404.html", get_template("publisher/site/404.html").render(not_found), HTML)
    release.add("robots.txt", f"User-agent: *\nAllow: /\nSitemap: {page_url(base_url)}sitemap.xml\n", TEXT)
    progress.finish(done)
    return done


def add_stylesheet(release):
    """Add the site's CSS at a content-addressed path, ``assets/<sha256[:16]>/site.css``, and return that path.

    A changed stylesheet gets a new path, so HTML from any release finds its own CSS forever and the file can be
    cached as immutable."""
    data = Path(finders.find(STYLESHEET)).read_bytes()
    path = f"{ASSETS}{hashlib.sha256(data).hexdigest()[:16]}/site.css"
    release.add(path, data, CSS)
    return path
