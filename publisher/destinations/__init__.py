"""Destinations: where a release goes and how it goes live (DESIGN §5).

The destination is chosen by ``settings.PUBLISHER["DESTINATION"]`` (``BACKEND`` dotted path + ``OPTIONS``), loaded
like the launchers.
"""

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .base import (
    BaseDestination,
    DestinationError,
    LiveRelease,
    PointerMoved,
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
    backend = spec.get("BACKEND") or LOCAL
    try:
        cls = import_string(backend)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"Unknown destination {backend!r}: expected 'local', 's3' or the dotted path of a destination class "
            f"({exc})."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, BaseDestination)):
        raise ImproperlyConfigured(
            f"Destination {backend!r} is not a subclass of publisher.destinations.BaseDestination."
        )
    return cls(**(spec.get("OPTIONS") or {}))
