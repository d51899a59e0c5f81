"""Launchers start one build somewhere else and forget about it (DESIGN §4).

The launcher is chosen by ``settings.PUBLISHER["LAUNCHER"]`` (``BACKEND`` dotted path + ``OPTIONS``), loaded
like Django's email backends.
"""

from django.core.exceptions import ImproperlyConfigured

from ..backends import load_backend
from .base import GONE, RUNNING, STARTING, STATUSES, TOKEN_VARIABLE, UNKNOWN, BaseLauncher, LaunchError

__all__ = [
    "GONE",
    "RUNNING",
    "STARTING",
    "STATUSES",
    "TOKEN_VARIABLE",
    "UNKNOWN",
    "BaseLauncher",
    "MANUAL",
    "LaunchError",
    "get_launcher",
]

LOCAL = "publisher.launchers.local.LocalLauncher"
#: Builds started by a person at a shell (``Build.launcher == "manual"``) are local processes.
MANUAL = "manual"


def get_launcher(name=None):
    """A new instance of the configured launcher, or with ``name`` (a build's ``Build.launcher``) of the launcher
    that started that build. ``ImproperlyConfigured`` says what was looked for.
    """
    from ..conf import get_config

    config = get_config()
    spec = config.LAUNCHER or {}
    if name:
        spec = _spec_named(name, spec, config.LAUNCHERS or {})
    return _build(spec)


def _spec_named(name, configured, others):
    if _load(configured.get("BACKEND") or LOCAL).name == name:
        return configured
    if name in others:
        return others[name]
    if name in (MANUAL, "local"):  # needs no configuration
        return {"BACKEND": LOCAL}
    raise ImproperlyConfigured(
        f"No launcher named {name!r} is configured, so the builds it started cannot be judged or stopped here. "
        "Configure it again (its environment variables) until those builds have ended."
    )


def _build(spec):
    cls = _load(spec.get("BACKEND") or LOCAL)
    return cls(**(spec.get("OPTIONS") or {}))


def _load(backend):
    return load_backend(backend, BaseLauncher, kind="launcher", expected="'local', 'heroku'")
