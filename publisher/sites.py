"""The admin site: "View site" leads to the live static site (``SITE_URL``), not to ``/``, which serves nothing."""

from django.contrib.admin import AdminSite

from .conf import get_config


class PublisherAdminSite(AdminSite):
    site_header = "Publisher"
    site_title = "Publisher"

    @property
    def site_url(self):
        """``SITE_URL``, read on every request (never at import), so a changed setting shows at once."""
        return get_config().SITE_URL
