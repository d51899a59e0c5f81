"""The admin site: "View site" leads to the live static site (``SITE_URL``), not to ``/``, which serves nothing; every
admin page carries the status banner (``publisher.status``) for staff who may view builds, refreshed from
``status.json``."""

import logging

from django.contrib.admin import AdminSite
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.template.loader import render_to_string
from django.urls import path, reverse
from django.utils.functional import SimpleLazyObject
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .conf import get_config

logger = logging.getLogger(__name__)

#: The template of the banner's inside, rendered with the page and again for every refresh.
BANNER_TEMPLATE = "admin/publisher/status_body.html"


def can_see_status(user):
    """Staff who may view builds see the banner and may read the endpoint."""
    return bool(user.is_active and user.is_staff and user.has_perm("publisher.view_build"))


def banner_snapshot():
    """The snapshot for a page's banner, or ``None`` when it cannot be read: a broken status never breaks the admin
    (this is a boundary)."""
    from .status import snapshot

    try:
        return snapshot()
    except Exception:
        logger.exception("The status banner could not be computed")
        return None


class PublisherAdminSite(AdminSite):
    site_header = "Publisher"
    site_title = "Publisher"

    @property
    def site_url(self):
        """``SITE_URL``, read on every request (never at import), so a changed setting shows at once."""
        return get_config().SITE_URL

    def each_context(self, request):
        """Django's context plus ``publisher_status``: the snapshot, computed only when a page shows it."""
        context = super().each_context(request)
        user = getattr(request, "user", None)
        context["publisher_status"] = SimpleLazyObject(banner_snapshot) if user and can_see_status(user) else None
        return context

    def get_urls(self):
        return [
            path("publisher/status.json", self.status_view, name="publisher_status"),
            *super().get_urls(),
        ]

    @property
    def status_view(self):
        return never_cache(require_GET(self._status_view))

    def _status_view(self, request):
        """The snapshot as JSON, with the banner's inside as ``banner_html``: staff who may view builds only."""
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("admin:login", current_app=self.name))
        if not can_see_status(request.user):
            raise PermissionDenied("Only staff who may view builds can read the build status.")
        current = banner_snapshot()
        if current is None:
            return JsonResponse({"error": "The status cannot be read right now."}, status=503)
        body = current.as_json()
        body["banner_html"] = render_to_string(BANNER_TEMPLATE, {"publisher_status": current}, request=request)
        response = JsonResponse(body)
        response["Cache-Control"] = "no-store"
        return response
