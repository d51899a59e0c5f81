"""The rows and the page context every tool in the comparison renders: the live version of each published page
(what ``publisher.render`` reads), ``publisher/site/page.html``, the content-addressed stylesheet path."""

import functools
import hashlib
from pathlib import Path
from typing import NamedTuple

TEMPLATE = "publisher/site/page.html"
FIELDS = ("pk", "live_slug", "live_title", "live_body", "published_at")


class LivePage(NamedTuple):
    pk: int
    slug: str
    title: str
    body: str
    published_at: object


def live_rows():
    """The live versions of the published pages in site order, as ``publisher.render`` selects them."""
    from publisher.models import Page

    return Page.objects.filter(is_published=True, live_slug__isnull=False).order_by("live_slug").values_list(*FIELDS)


def live_page(page):
    """A saved ``Page``'s live version, for a tool that loads model instances."""
    return LivePage(page.pk, page.live_slug, page.live_title, page.live_body, page.published_at)


@functools.cache
def stylesheet():
    """``assets/<sha256[:16]>/site.css``, the path every release links (``publisher.render.add_stylesheet``)."""
    from django.contrib.staticfiles import finders

    data = Path(finders.find("publisher/site.css")).read_bytes()
    return f"assets/{hashlib.sha256(data).hexdigest()[:16]}/site.css"


def context(page):
    return {"page": page, "root": "../", "stylesheet": stylesheet()}
