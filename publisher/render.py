"""Render the static site into a folder (DESIGN §5) through Django templates (autoescaped).

Pages stream from one query (``.iterator()``), ordered by slug, so memory stays flat however many pages there
are: the index and the sitemap are written as the pages go by, from the same rows, and therefore agree with them.
Each page goes only into its own folder of the release (``page_path``); a slug that would lead elsewhere fails the
build with a ``RenderError`` that names the page.

With ``BUILD_WORKERS`` above 1 (and enough pages), page templates are rendered by that many forked worker processes
(``ParallelPages``): this process still reads the one snapshot, keeps site order, writes the index and the sitemap,
and keeps the heartbeat, fencing and signals. Where the release writer allows it (``worker_store``: a local
folder), workers also hash and store each page, and this process only enters the entries in the manifest.

A page is not rendered again when it need not be: each page file records its input (``PageJob.input_key``: a keyed
hash of the page's live row, keyed by ``render_fingerprint``: the page templates' sources, the stylesheet, the site
URL, Django's version and this module), and a writer that can take the live release's file without its bytes
(``ReleaseWriter.reuse``: local hard links) does so for every page whose input is unchanged. A template, the CSS or
a setting that changes the fingerprint re-renders every page.
"""

import gc
import hashlib
import html
import logging
import multiprocessing
import os
import re
import signal
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import django
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.exceptions import ValidationError
from django.template.loader import get_template
from django.template.loader_tags import ExtendsNode, IncludeNode
from django.utils import timezone
from django.utils.safestring import mark_safe

from .destinations.base import StoredFile
from .destinations.manifest import FileEntry
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
PAGE_TEMPLATE = "publisher/site/page.html"
#: Changed when what a page's bytes depend on changes in a way the fingerprint's other parts do not show.
RENDER_FORMAT = b"publisher page render 1"

logger = logging.getLogger(__name__)


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
        self.add_escaped(html.escape(slug), html.escape(title))

    def add_escaped(self, slug, title):
        """``add`` for a slug and a title already HTML-escaped (where the page was rendered)."""
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
        # The list items are written here, in one pass, rather than by a template loop: a tenth of a build's time.
        items = "".join(f'<li><a href="{root}{slug}/">{title}</a></li>\n' for slug, title in self.entries)
        context = {
            "entries": mark_safe(items),  # every part was escaped by add()
            "number": n,
            "root": root,
            "stylesheet": self.stylesheet,
            "previous_url": previous,
            "next_url": f"{root}page/{n + 1}/" if has_next else None,
        }
        self.release.add(path, self.template.render(context), HTML)
        self.entries = []
        self.number += 1


def sitemap_entry(loc, lastmod, tz):
    """One ``<url>`` of a sitemap, as the template language would write it (escaped; ``|date:"c"`` in the time
    zone ``tz``), without its cost per URL: the sitemap was an eighth of a build's time. (``html.escape`` is what
    Django's ``escape`` does to a string, without its lazy-text wrapper.)"""
    entry = f"<url><loc>{html.escape(loc)}</loc>"
    if lastmod:
        entry += f"<lastmod>{lastmod.astimezone(tz).isoformat()}</lastmod>"
    return entry + "</url>\n"


class SitemapWriter:
    """Writes ``sitemap.xml``; above ``SITEMAP_MAX_URLS`` URLs, ``sitemap-N.xml`` files and a sitemap index.

    One sitemap file (at most 50,000 URLs) is held in memory until it is complete.
    """

    def __init__(self, release, base_url, *, tz=None):
        self.release = release
        self.base_url = base_url
        self.timezone = tz or timezone.get_current_timezone()
        self.urlset_head, self.urlset_tail = get_template("publisher/site/urlset.xml").render({}).split("<!--urls-->")
        self.index_template = get_template("publisher/site/sitemapindex.xml")
        self.files = 0
        self.count = 0
        self.buffer = []
        self.parts = None  # the text of the sitemap file being written
        self.first = None  # sitemap-1's text, until we know whether it is the only file

    def add(self, loc, lastmod=None):
        self.add_entry(sitemap_entry(loc, lastmod, self.timezone))

    def add_entry(self, entry):
        """``add`` for a ``sitemap_entry`` written where the page was rendered."""
        if self.parts is None or self.count == SITEMAP_MAX_URLS:
            self._next_file()
        self.buffer.append(entry)
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


def render_site(release, *, base_url, progress, workers=1):
    """Hand every file of a release to ``release`` (a ``ReleaseWriter``: ``add(path, data, content_type)``);
    returns the number of pages rendered. ``workers`` (``BUILD_WORKERS``) processes render the pages."""
    pages = published_pages()
    total = pages.count()
    stylesheet, css = stylesheet_file()
    template = get_template(PAGE_TEMPLATE)
    tz = timezone.get_current_timezone()
    job = PageJob(
        template=template,
        stylesheet=stylesheet,
        base_url=base_url,
        tz=tz,
        fingerprint=render_fingerprint(template, stylesheet=stylesheet, base_url=base_url, tz=tz),
    )
    parallel = workers > 1 and total >= PARALLEL_MIN_PAGES and can_fork()
    renderer = ParallelPages(release, job, workers=workers) if parallel else SerialPages(release, job)
    # What exists now (the live release's manifest and the recycled one's: hundreds of thousands of objects) lives
    # until the end: the collector need not walk it at every full collection, nor a forked worker touch (and so
    # copy) the memory it shares with this process.
    gc.freeze()
    try:
        done = _render_into(release, renderer, pages, total, job, (stylesheet, css), progress)
    finally:
        gc.unfreeze()
    return done


def _render_into(release, renderer, pages, total, job, stylesheet_file, progress):
    base_url = job.base_url
    stylesheet, css = stylesheet_file
    with renderer:
        # Workers are forked before the heartbeat thread starts (a fork copies only the thread that calls it), and
        # inside the ``with``: however this ends, even by a signal during the fork, they are stopped.
        render_pages = renderer.start()
        progress.start(total)
        release.add(stylesheet, css, CSS)
        index = IndexWriter(release, stylesheet=stylesheet)
        sitemap = SitemapWriter(release, base_url, tz=job.tz)
        sitemap.add(page_url(base_url))
        done = 0
        rows = pages.iterator(chunk_size=2000)
        listings = render_pages(rows)
        try:
            for slug, title, url in listings:
                index.add_escaped(slug, title)
                sitemap.add_entry(url)
                done += 1
                progress.advance(done)
        finally:
            # However rendering ends, the query's cursor is closed here and now. Left to the garbage collector (when
            # a reference cycle keeps the generators alive), a PostgreSQL server-side cursor would be closed at any
            # later moment, possibly inside another query on the same connection, which holds the lock its close
            # takes: the process would hang there for good.
            for started in (listings, rows):
                close = getattr(started, "close", None)  # generators; a plain iterator has nothing to close
                if close is not None:
                    close()
    index.close()
    sitemap.close()
    not_found = {"root": page_url(base_url), "stylesheet": stylesheet}
    release.add("404.html", get_template("publisher/site/404.html").render(not_found), HTML)
    release.add("robots.txt", f"User-agent: *\nAllow: /\nSitemap: {page_url(base_url)}sitemap.xml\n", TEXT)
    progress.finish(done)
    return done


@dataclass(frozen=True)
class PageJob:
    """What rendering one page takes, the same in this process and in a render worker."""

    template: object
    stylesheet: str
    base_url: str
    tz: object
    #: ``render_fingerprint``; ``None`` when it cannot be known (then no page records an input, none is reused)
    fingerprint: bytes | None = None

    def render(self, row):
        """A ``published_pages()`` row -> ``(path, UTF-8 bytes, listing)``; the listing is what the index and the
        sitemap need of the page: its slug and title HTML-escaped, and its sitemap entry."""
        page = LivePage(*row)
        return page_file(page.slug, page_id=page.pk), self.render_page(page), self.listing(page)

    def render_page(self, page):
        return self.template.render({"page": page, "root": "../", "stylesheet": self.stylesheet}).encode("utf-8")

    def listing(self, page):
        url = sitemap_entry(page_url(self.base_url, page.slug), page.published_at, self.tz)
        return html.escape(page.slug), html.escape(page.title), url

    def input_key(self, row):
        """What page ``row`` renders from, as 32 hex digits: its live row hashed with the fingerprint as the key.
        Two equal keys mean equal bytes; ``""`` when there is no fingerprint."""
        if self.fingerprint is None:
            return ""
        pk, slug, title, body, published_at = row
        when = published_at.isoformat() if published_at else ""
        text = f"{pk}\x1f{slug}\x1f{title}\x1f{when}\x1f{body}".encode("utf-8", "surrogatepass")
        return hashlib.blake2b(text, digest_size=16, key=self.fingerprint).hexdigest()


def render_fingerprint(template, *, stylesheet, base_url, tz):
    """32 bytes that change whenever a page with the same row could render to other bytes: the sources of the
    page template and of every template it extends or includes (as loaded: an override in a project's templates
    counts), the stylesheet's content-addressed path, the site URL, the time zone, the language, the
    ``TEMPLATES`` setting, Django's version and this module's code. ``None`` when a template extends or includes
    a name only known while rendering: then every page is rendered. (A custom template tag's code is not in it:
    after changing one, run ``buildstaticsite --full``.)"""
    digest = hashlib.sha256(RENDER_FORMAT)
    parts = [django.get_version(), stylesheet, base_url, str(tz), settings.LANGUAGE_CODE, repr(settings.TEMPLATES)]
    for part in parts:
        digest.update(b"\x1e" + part.encode("utf-8", "surrogatepass"))
    digest.update(b"\x1e" + Path(__file__).read_bytes())
    try:
        sources = _template_sources(template, seen=set())
    except _UnknownTemplate as exc:
        logger.info("Every page is rendered: %s", exc)
        return None
    for name, source in sources:
        digest.update(b"\x1e" + name.encode() + b"\x1f" + source.encode("utf-8", "surrogatepass"))
    return digest.digest()


class _UnknownTemplate(Exception):
    pass


def _template_sources(template, *, seen):
    """``(origin, source)`` of ``template`` (a backend template or its ``template``) and of what it extends or
    includes, recursively, in a fixed order."""
    compiled = getattr(template, "template", template)
    origin = getattr(compiled.origin, "name", None) or compiled.origin.template_name or "?"
    sources = [(str(origin), compiled.source)]
    seen.add(str(origin))
    for node in compiled.nodelist.get_nodes_by_type((ExtendsNode, IncludeNode)):
        expression = node.parent_name if isinstance(node, ExtendsNode) else node.template
        name = expression.var
        if expression.filters or not isinstance(name, str):
            raise _UnknownTemplate(f"{compiled.origin.template_name} names a template by {expression.token!r}")
        loaded = get_template(name)
        key = str(getattr(loaded.template.origin, "name", name))
        if key not in seen:
            sources.extend(_template_sources(loaded, seen=seen))
    return sources


class SerialPages:
    """Renders each page and hands it to the writer in this process: ``with pages: for listing in
    pages.start()(rows): ...``, each listing yielded once its page is in the release."""

    def __init__(self, release, job):
        self.release = release
        self.job = job

    def __enter__(self):
        return self

    def start(self):
        return self.render

    def __exit__(self, *exc):
        return False

    def render(self, rows):
        job, add, reuse = self.job, self.release.add, self.release.reuse
        for row in rows:
            key = job.input_key(row)
            page = LivePage(*row)
            path = page_file(page.slug, page_id=page.pk)
            if not key or reuse(path, key) is None:
                add(path, job.render_page(page), HTML, key)
            yield job.listing(page)


#: Below this many pages, forking workers costs more than it saves.
PARALLEL_MIN_PAGES = 1_000
#: Pages per chunk; chunks under way in each worker; chunks held per worker (under way, or rendered and waiting
#: for an earlier chunk to be handed over): bounded, so memory stays flat.
CHUNK_PAGES = 200
IN_FLIGHT_PER_WORKER = 3
PENDING_CHUNKS_PER_WORKER = 6
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def can_fork():
    """Workers are forked: they inherit the loaded templates and the writer's store, nothing is pickled but rows."""
    return "fork" in multiprocessing.get_all_start_methods()


class ParallelPages(SerialPages):
    """Renders pages in ``workers`` processes: this one and ``workers - 1`` forked workers. Yields each page's
    listing in site order once the page is in the release.

    Pages go in chunks of ``CHUNK_PAGES``: to a worker while it has fewer than ``IN_FLIGHT_PER_WORKER`` chunks
    under way, else this process renders the chunk itself instead of waiting. A worker renders and encodes each
    page and, when the writer has a ``worker_store``, hashes and stores it too, returning only what the manifest
    needs; otherwise it returns the bytes and this process hands them to ``add``. A worker ignores SIGTERM and
    SIGINT (Heroku signals every process of the dyno; the build process alone acts on them), never touches the
    database, and is killed when the build stops in any other way than by finishing, so that none writes into a
    release being removed. Memory stays flat: at most ``PENDING_CHUNKS_PER_WORKER`` chunks per worker are held.
    """

    def __init__(self, release, job, *, workers):
        super().__init__(release, job)
        self.forks = workers - 1
        self.store = release.worker_store()
        self.pool = None
        #: Whether this process looks at every chunk first: one whose pages can all be reused (a lookup each) is
        #: handled here, with no render and nothing to pickle; one with a page to render goes to a worker. (A
        #: writer without a worker store renders every page in the workers and reuses by its bytes, as S3 does.)
        self.sort_chunks = job.fingerprint is not None and self.store is not None and release.reuses

    def start(self):
        """Fork the workers (``__exit__`` stops them); returns the function that renders rows."""
        # SIGTERM and SIGINT stay blocked from the fork until each worker ignores them; one that arrives meanwhile
        # is delivered to this process once they are unblocked here (and ``__exit__`` kills the workers).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        # What exists now is never collected in a worker: its garbage collector would touch (and so copy) every
        # page of memory it shares with this process. (``render_site`` unfreezes at its end.)
        gc.freeze()
        try:
            self.pool = ProcessPoolExecutor(
                max_workers=self.forks,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_start_worker,
                initargs=(self.job, self.store),
            )
            self.pool.submit(int).result()  # forks every worker now (with "fork", all start at the first task)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return self.render

    def __exit__(self, exc_type, exc, tb):
        self._stop(kill=exc_type is not None)
        return False

    def _stop(self, *, kill):
        pool, self.pool = self.pool, None
        if pool is None:
            return
        if kill:
            for process in list((pool._processes or {}).values()):
                process.kill()
        pool.shutdown(wait=True, cancel_futures=True)

    def render(self, rows):
        pending = deque()  # in site order: a worker's future, or the results of a chunk rendered here
        in_workers = 0
        in_workers_limit = self.forks * IN_FLIGHT_PER_WORKER
        pending_limit = self.forks * PENDING_CHUNKS_PER_WORKER
        reusable, key = self.release.reusable, self.job.input_key
        for chunk in _chunks(rows, CHUNK_PAGES):
            keys = None
            if self.sort_chunks:
                keys = [key(row) for row in chunk]
                if all(reusable(page_file(row[1], page_id=row[0]), k) for row, k in zip(chunk, keys, strict=True)):
                    pending.append(_render_rows(self.job, self.store, chunk, keys))
                    continue
            if in_workers < in_workers_limit:
                pending.append(self.pool.submit(_render_chunk, chunk, keys))
                in_workers += 1
            else:
                pending.append(_render_rows(self.job, self.store, chunk, keys))
            while pending and (len(pending) >= pending_limit or _ready(pending[0])):
                done = pending.popleft()
                if isinstance(done, Future):
                    in_workers -= 1
                yield from self._collect(done)
        while pending:
            yield from self._collect(pending.popleft())

    def _collect(self, done):
        if isinstance(done, Future):
            try:
                results = done.result()
            except BrokenProcessPool as exc:
                raise RenderError(
                    f"A render worker process died ({exc}). If the system ran out of memory, set BUILD_WORKERS lower."
                ) from None
        else:
            results = done
        if self.store is None:
            add = self.release.add
            for path, data, key, slug, title, url in results:
                add(path, data, HTML, key)
                yield slug, title, url
        else:
            record = self.release.record
            for path, sha256, size, key, linked, slug, title, url in results:
                record(StoredFile(FileEntry(path, sha256, size, HTML, key), linked))
                yield slug, title, url


def _ready(pending):
    return not isinstance(pending, Future) or pending.done()


def _chunks(rows, size):
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


#: In a render worker process: ``(job, store)``, set by ``_start_worker``.
_worker = None


def _start_worker(job, store):
    global _worker
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    _worker = (job, store)


def _render_chunk(rows, keys=None):
    """In a worker: ``_render_rows`` with what ``_start_worker`` was given."""
    return _render_rows(*_worker, rows, keys)


def _render_rows(job, store, rows, keys=None):
    """Render ``rows`` in order (``keys``: their ``input_key``s, computed here when not given). Plain tuples (a
    dataclass costs ten times as much to pickle): ``(path, bytes, key, *listing)``, or, having stored the file
    through ``store`` (reused when its input is unchanged, else rendered), ``(path, sha256, size, key, linked,
    *listing)``."""
    if keys is None:
        keys = [job.input_key(row) for row in rows]
    results = []
    for row, key in zip(rows, keys, strict=True):
        page = LivePage(*row)
        path = page_file(page.slug, page_id=page.pk)
        if store is None:
            results.append((path, job.render_page(page), key, *job.listing(page)))
            continue
        stored = store.reuse(path, key) if key else None
        if stored is None:
            stored = store(path, job.render_page(page), HTML, key)
        entry = stored.entry
        results.append((path, entry.sha256, entry.size, key, stored.linked, *job.listing(page)))
    return results


def stylesheet_file():
    """The site's CSS: its content-addressed path, ``assets/<sha256[:16]>/site.css``, and its bytes.

    A changed stylesheet gets a new path, so HTML from any release finds its own CSS forever and the file can be
    cached as immutable."""
    data = Path(finders.find(STYLESHEET)).read_bytes()
    return f"{ASSETS}{hashlib.sha256(data).hexdigest()[:16]}/site.css", data


def add_stylesheet(release):
    """Add the site's CSS (``stylesheet_file``) to ``release`` and return its path."""
    path, data = stylesheet_file()
    release.add(path, data, CSS)
    return path
