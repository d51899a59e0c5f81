"""Launchers start one build somewhere else and forget about it (DESIGN §4).

The launcher is chosen by ``settings.PUBLISHER["LAUNCHER"]`` (``BACKEND`` dotted path + ``OPTIONS``), loaded
like Django's email backends.
"""

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .base import GONE, RUNNING, STARTING, STATUSES, UNKNOWN, BaseLauncher, LaunchError

__all__ = ["GONE", "RUNNING", "STARTING", "STATUSES", "UNKNOWN", "BaseLauncher", "LaunchError", "get_launcher"]


def get_launcher():
    """A new instance of the configured launcher; ``ImproperlyConfigured`` says what was looked for."""
    from ..conf import get_config

    spec = get_config().LAUNCHER or {}
    backend = spec.get("BACKEND") or "publisher.launchers.local.LocalLauncher"
    try:
        cls = import_string(backend)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"Unknown launcher {backend!r}: expected 'local', 'heroku' or the dotted path of a launcher class ({exc})."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, BaseLauncher)):
        raise ImproperlyConfigured(f"Launcher {backend!r} is not a subclass of publisher.launchers.BaseLauncher.")
    return cls(**(spec.get("OPTIONS") or {}))
