"""The build's output step (DESIGN §5): render a new release into the configured destination and make it live.

Rendering hands each file to the destination's ``ReleaseWriter``, which records the manifest; the destination seals
the release and moves the live pointer in one write. Where the files go (a folder, a bucket) is the destination's
business (``publisher.destinations``).
"""

import inspect
import logging
from dataclasses import dataclass

from django.utils import timezone

from .destinations import DestinationError, get_destination
from .destinations import release_name as _release_name
from .destinations.local import TMP_PREFIX, TRASH_PREFIX, SiteRoot
from .render import render_site

__all__ = [
    "TMP_PREFIX",
    "TRASH_PREFIX",
    "ReleaseError",
    "Released",
    "SiteRoot",
    "build_release",
    "prune_releases",
    "release_name",
]

logger = logging.getLogger(__name__)


class ReleaseError(Exception):
    """The release could not be written or switched; the live site is unchanged."""


@dataclass(frozen=True)
class Released:
    name: str
    pages: int
    went_live: bool
    uploaded: int = 0
    copied: int = 0
    bytes_uploaded: int = 0
    destination: str = ""
    recycled: str = ""


def release_name(*, build_id, attempt, now=None):
    return _release_name(build_id=build_id, attempt=attempt, now=now or timezone.now())


def build_release(config, *, build_id, attempt, progress, before_switch=None, after_switch=None, full=False):
    """Render the whole site into a new release and make it live. Returns a ``Released``.

    ``BUILD_WORKERS`` processes render the pages. The destination stores only what changed against the live
    release where it can (local hard links, S3 server-side copies); ``full`` writes every file afresh.

    ``progress`` receives ``start(total)`` and ``advance(done)``; it may raise to stop the build.
    ``before_switch()`` runs after rendering and before going live (the build's last fencing check);
    ``after_switch(released)`` right after the switch, with signals still held off.
    On any exception before the switch the partial release is removed and the exception propagates; the live site
    is unchanged. Old releases are not pruned here (``prune_releases``): that comes after the outcome is recorded.
    """
    destination = get_destination()
    name = release_name(build_id=build_id, attempt=attempt)
    try:
        expected_live = destination.live_release()
        writer = destination.begin(name=name, build=build_id, attempt=attempt, **_full_option(destination, full))
    except (OSError, DestinationError) as exc:
        raise ReleaseError(f"Cannot start release {name} in {destination.describe()}: {exc}") from exc
    switched = []
    try:
        pages = render_site(writer, base_url=config.SITE_URL, progress=progress, workers=config.BUILD_WORKERS)
        if before_switch is not None:
            before_switch()

        def on_switch(published):
            switched.append(published)
            if after_switch is not None:
                after_switch(_released(name, pages, published, destination))

        published = destination.publish(writer, pages=pages, expected_live=expected_live, after_switch=on_switch)
    except BaseException:
        if not switched:
            writer.abort()
        raise
    logger.info("Release %s: %d pages, %s", name, pages, "live" if published.went_live else "kept (newer one is live)")
    return _released(name, pages, published, destination)


def _full_option(destination, full):
    """``{"full": True}`` for a destination whose ``begin`` takes it; ``{}`` when not asked for, or (with a
    warning) when the destination always compares with the live release."""
    if not full:
        return {}
    if "full" in inspect.signature(destination.begin).parameters:
        return {"full": True}
    logger.warning(
        "A full build was asked for, but the destination %s cannot write every file afresh: it stores what changed "
        "against the live release, as for any build",
        destination.describe(),
    )
    return {}


def _released(name, pages, published, destination):
    return Released(
        destination=destination.describe(),
        name=name,
        pages=pages,
        went_live=published.went_live,
        uploaded=published.uploaded,
        copied=published.copied,
        bytes_uploaded=published.bytes_uploaded,
        recycled=getattr(published, "recycled", ""),
    )


def prune_releases(config):
    """Remove old releases (``SITE_RELEASES_KEPT``); interruptible at any instant. Returns the names removed."""
    return get_destination().prune()
