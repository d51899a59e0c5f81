"""Signals: content that changes what the live site shows (DESIGN §2), and builds, for integrations (DESIGN §8).

The page signals are sent inside the transaction that changed the page, with keyword arguments ``page`` and ``by``
(the user who acted, or ``None``). One user action sends exactly one of them.

The build signals are sent robustly (``send_robust``): a receiver that raises is logged with its traceback and
stops neither the other receivers nor the build, the sweep or the request that sent it. Receivers run in the
process that sent the signal (a build process, the worker, a web process's background thread): keep them short,
and give every network call a timeout of a few seconds. ``docs/notifications.md`` has an example.
"""

import enum
import logging

from django.dispatch import Signal

logger = logging.getLogger(__name__)

page_published = Signal()  # a page went from draft to published
page_unpublished = Signal()  # a published page was taken down
page_changed = Signal()  # a live page's changed draft was published (it goes live with the next build)
page_deleted = Signal()  # a published page was deleted

PAGE_SIGNALS = (page_published, page_unpublished, page_changed, page_deleted)

# A running build has made no progress for BUILD_STALL_AFTER seconds; sent by the sweep with ``build`` and
# ``stalled_for`` (seconds), at most every BUILD_STALL_REPORT_EVERY. For integrations such as Slack or Sentry.
build_stalled = Signal()

# A build reached a final state (succeeded, failed, cancelled, lost); sent once per build by the process whose
# transition won, with ``build`` (the Build, read from the database after the transition) and ``outcome`` (the
# ``publisher.builds.Outcome`` describing it). A cancelled build's signal comes once its process was stopped (or
# its stop failed: ``build.stop_error``).
build_finished = Signal()

# Something a person should hear about (the reports mailed to ADMINS); sent with ``build_id``, ``kind`` (an
# ``AlertKind``), ``subject`` and ``message`` (the mail's), once per report.
build_alert = Signal()


class AlertKind(enum.StrEnum):
    """Why ``build_alert`` was sent. A ``StrEnum``: ``kind == "stalled"`` holds too."""

    #: A build failed and its requests are left uncovered (a build error, a timeout, retries that stopped).
    FAILED_UNCOVERED = "failed_uncovered"
    #: A running build has made no progress for BUILD_STALL_AFTER seconds (repeated every BUILD_STALL_REPORT_EVERY).
    STALLED = "stalled"
    #: A launch failed in a way only a person can fix (the key was rejected, the app is missing); retried meanwhile.
    NEEDS_OPERATOR = "needs_operator"
    #: A build has failed to start BUILD_MAX_ATTEMPTS times; it keeps being retried.
    KEEPS_FAILING_TO_START = "keeps_failing_to_start"


def send_robustly(signal, sender, **kwargs):
    """Send ``signal`` to every receiver; log each receiver's error with its traceback. Returns the errors."""
    errors = []
    for receiver, result in signal.send_robust(sender=sender, **kwargs):
        if isinstance(result, Exception):
            errors.append(result)
            logger.error(
                "A %s receiver (%r) failed",
                _name(signal),
                receiver,
                exc_info=(type(result), result, result.__traceback__),
            )
    return errors


def _name(signal):
    for name, value in globals().items():
        if value is signal:
            return name
    return repr(signal)
