"""The app's view of ``settings.PUBLISHER``, read when asked for, never at import."""

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def usable_cpus():
    """How many CPUs this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Config:
    LAUNCHER: dict = field(default_factory=lambda: {"BACKEND": "publisher.launchers.local.LocalLauncher"})
    #: Every launcher that may have started an open build, by its ``name``: a build is judged and stopped by the
    #: launcher that started it (``Build.launcher``), whatever ``LAUNCHER`` says now. ``LAUNCHER`` is always included.
    LAUNCHERS: dict = field(default_factory=dict)
    #: Where releases go (DESIGN §5): ``{"BACKEND": dotted path, "OPTIONS": {...}}``.
    DESTINATION: dict = field(default_factory=lambda: {"BACKEND": "publisher.destinations.local.LocalDestination"})
    #: The web app serves the live release at ``/site/`` (default: on under DEBUG).
    SITE_SERVE: bool = False
    #: The Heroku dyno this process runs in (``$DYNO``), or empty.
    DYNO: str = ""
    SITE_ROOT: Path = Path("var/site")
    SITE_URL: str = "http://127.0.0.1:8000/site/"
    SITE_RELEASES_KEPT: int = 5
    LOG_DIR: Path = Path("var/log")
    BUILD_TIMEOUT: int = 10800
    BUILD_HEARTBEAT_INTERVAL: int = 10
    BUILD_LAUNCH_TIMEOUT: int = 60
    BUILD_START_TIMEOUT: int = 300
    BUILD_LOST_AFTER: int = 120
    BUILD_STALL_AFTER: int = 900
    BUILD_STALL_REPORT_EVERY: int = 3600
    BUILD_RETRY_BASE: int = 30
    BUILD_RETRY_MAX: int = 1800
    BUILD_MAX_ATTEMPTS: int = 5
    BUILD_HISTORY_DAYS: int = 90
    #: Processes that render and write a build's pages (DESIGN §1); unset or ``None``: one per CPU this process
    #: may use, counted when the setting is read.
    BUILD_WORKERS: int = field(default_factory=usable_cpus)

    @property
    def build_log_dir(self):
        return Path(self.LOG_DIR) / "builds"


NAMES = frozenset(f.name for f in fields(Config))


def get_config():
    """The current ``PUBLISHER`` setting with defaults filled in; unknown keys are refused by name."""
    values = dict(getattr(settings, "PUBLISHER", {}) or {})
    unknown = sorted(set(values) - NAMES)
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown key(s) in settings.PUBLISHER: {', '.join(unknown)}. Known keys: {', '.join(sorted(NAMES))}."
        )
    if values.get("BUILD_WORKERS", 0) is None:
        del values["BUILD_WORKERS"]  # the default: the CPUs this process may use
    for name in ("SITE_ROOT", "LOG_DIR"):
        if name in values:
            values[name] = Path(values[name])
    return Config(**values)
