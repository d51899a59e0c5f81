"""django-bakery's view of the site: a ``BuildableDetailView`` over the live pages, built at ``<slug>/index.html``."""

from bakery.views import BuildableDetailView

from publisher.models import Page

from . import pages


class PageDetailView(BuildableDetailView):
    queryset = Page.objects.filter(is_published=True, live_slug__isnull=False).order_by("live_slug")
    template_name = pages.TEMPLATE
    slug_field = "live_slug"

    def get_url(self, obj):
        return f"/{obj.live_slug}/"

    def get_context_data(self, **kwargs):
        return pages.context(pages.live_page(self.object))
