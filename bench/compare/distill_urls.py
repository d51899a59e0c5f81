"""django-distill's view of the site: one distilled path per live page, ``<slug>/`` → ``<slug>/index.html``.

As a distill user writes it: the generator lists the slugs, and distill requests each URL through Django's WSGI
handler, where the view looks the page up and renders ``publisher/site/page.html``.
"""

from django.http import Http404
from django.shortcuts import render
from django.urls import path  # distill's app patches ``path`` to accept the distill_* arguments

from . import pages


def page(request, slug):
    row = pages.live_rows().filter(live_slug=slug).first()
    if row is None:
        raise Http404(slug)
    return render(request, pages.TEMPLATE, pages.context(pages.LivePage(*row)))


def slugs():
    return ({"slug": slug} for slug in pages.live_rows().values_list("live_slug", flat=True).iterator())


urlpatterns = [path("<slug:slug>/", page, name="page", distill_path=True, distill_func=slugs)]
