"""Destinations: where a release goes and how it goes live (DESIGN §5).

The destination is chosen by ``settings.PUBLISHER["DESTINATION"]`` (``BACKEND`` dotted path + ``OPTIONS``), loaded
like the launchers.
"""

from ..backends import load_backend
from .base import (
    BaseDestination,
    DestinationError,
    LiveRelease,
    PointerMoved,
    Pruned,
    Published,
    ReleaseNotFound,
    ReleaseWriter,
    release_name,
    release_order,
)
from .manifest import FileEntry, Manifest

__all__ = [
    "BaseDestination",
    "DestinationError",
    "FileEntry",
    "LiveRelease",
    "Manifest",
    "PointerMoved",
    "Pruned",
    "Published",
    "ReleaseNotFound",
    "ReleaseWriter",
    "get_destination",
    "release_name",
    "release_order",
]

LOCAL = "publisher.destinations.local.LocalDestination"


def get_destination():
    """A new instance of the configured destination; ``ImproperlyConfigured`` says what was looked for."""
    from ..conf import get_config

    spec = get_config().DESTINATION or {}
    cls = load_backend(spec.get("BACKEND") or LOCAL, BaseDestination, kind="destination", expected="'local', 's3'")
    return cls(**(spec.get("OPTIONS") or {}))
