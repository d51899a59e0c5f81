"""Signals about content that changes what the live site shows (DESIGN §2).

Each is sent inside the transaction that changed the page, with keyword arguments ``page`` and ``by`` (the user
who acted, or ``None``). One user action sends exactly one of the page signals.
"""

from django.dispatch import Signal

page_published = Signal()  # a page went from draft to published
page_unpublished = Signal()  # a published page was taken down
page_changed = Signal()  # a published page was saved with changes (they go live with the next build)
page_deleted = Signal()  # a published page was deleted

PAGE_SIGNALS = (page_published, page_unpublished, page_changed, page_deleted)

# A running build has made no progress for BUILD_STALL_AFTER seconds; sent by the sweep with ``build`` and
# ``stalled_for`` (seconds), at most every BUILD_STALL_REPORT_EVERY. For integrations such as Slack or Sentry.
build_stalled = Signal()
