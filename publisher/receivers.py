"""Receivers that turn page signals into build requests (connected in ``apps.ready``).

Each inserts the request inside the content transaction; the dispatch runs after commit (``robust``), so a failed
launch is logged and never turns a saved publish into an error.
"""

from django.dispatch import receiver

from . import builds
from .signals import page_changed, page_deleted, page_published, page_unpublished

REASONS = {
    page_published: "published “{title}”",
    page_unpublished: "unpublished “{title}”",
    page_changed: "published changes to “{title}”",
    page_deleted: "deleted “{title}”",
}


@receiver(page_published, dispatch_uid="publisher.request_build.published")
@receiver(page_unpublished, dispatch_uid="publisher.request_build.unpublished")
@receiver(page_changed, dispatch_uid="publisher.request_build.changed")
@receiver(page_deleted, dispatch_uid="publisher.request_build.deleted")
def request_build_for_page(signal, sender, page, by=None, raw=False, **kwargs):
    if raw:  # fixture loading
        return
    builds.record_request(REASONS[signal].format(title=page.title[:200]), by=by, page=page if page.pk else None)
