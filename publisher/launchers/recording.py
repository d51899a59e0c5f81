"""A launcher that starts nothing and records what it was asked, for tests (like Django's locmem email backend).

The test settings use it, so no test starts a process or opens a socket unless it asks to. Everything lives in
this module so that every instance (``get_launcher()`` builds a new one each time) shares it::

    from publisher.launchers import recording

    recording.launches             # [{"build_id": 1, "token": "...", "handle": {...}}, ...]
    recording.statuses[handle_id]  # what status() answers for that handle ("running" when unset);
                                   # a LaunchError instance is raised instead
    recording.stops                # handles passed to stop(), in order
    recording.status_checks        # handles passed to status(), in order
    recording.fail_next(LaunchError("boom"), times=2)  # the next two launches raise it
    recording.fail_next(LaunchError("boom"), on="stop")
    recording.reset()              # forget everything (an autouse fixture does this around every test)
"""

import itertools
import threading

from .base import GONE, RUNNING, BaseLauncher, LaunchError

launches = []
statuses = {}
stops = []
status_checks = []
failures = {"launch": [], "status": [], "stop": []}

_lock = threading.Lock()
_numbers = itertools.count(1)


def reset():
    """Forget every launch, status, stop and pending failure."""
    global _numbers
    with _lock:
        launches.clear()
        statuses.clear()
        stops.clear()
        status_checks.clear()
        for pending in failures.values():
            pending.clear()
        _numbers = itertools.count(1)


def fail_next(error, *, times=1, on="launch"):
    """Make the next ``times`` calls of ``on`` (``launch``, ``status`` or ``stop``) raise ``error``."""
    if not isinstance(error, LaunchError):
        raise TypeError(f"fail_next() takes a LaunchError, not {type(error).__name__}")
    if on not in failures:
        raise ValueError(f"fail_next(on=...) takes one of {', '.join(failures)}, not {on!r}")
    with _lock:
        failures[on].extend([error] * times)


def _pending_failure(on):
    with _lock:
        return failures[on].pop(0) if failures[on] else None


class RecordingLauncher(BaseLauncher):
    """Records launches in ``publisher.launchers.recording.launches`` and returns handles like ``{"id": "rec-1"}``."""

    name = "recording"

    def launch(self, *, build_id, token):
        error = _pending_failure("launch")
        if error is not None:
            raise error
        with _lock:
            handle = {"id": f"rec-{next(_numbers)}", "build_id": int(build_id)}
            launches.append({"build_id": int(build_id), "token": str(token), "handle": handle})
        return dict(handle)

    def status(self, handle):
        status_checks.append(handle)
        error = _pending_failure("status")
        if error is not None:
            raise error
        status = statuses.get(handle.get("id"), RUNNING)
        if isinstance(status, LaunchError):
            raise status
        return status

    def stop(self, handle):
        error = _pending_failure("stop")
        if error is not None:
            raise error
        with _lock:
            stops.append(handle)
            statuses[handle.get("id")] = GONE

    def check(self):
        return []

    def describe(self, handle):
        return f"recorded launch {handle.get('id')}"
