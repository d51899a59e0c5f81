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
    gate = recording.slow_stops()  # stop() blocks until gate.set(), like a real platform's slow API call
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
#: While set (``slow_stops``): (event, timeout): ``stop()`` waits for the event before it records the stop.
_stop_gate = None

_lock = threading.Lock()
_numbers = itertools.count(1)


def reset():
    """Forget every launch, status, stop and pending failure; stops no longer block (a blocked one is let go)."""
    global _numbers, _stop_gate
    with _lock:
        if _stop_gate is not None:
            _stop_gate[0].set()
        _stop_gate = None
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


def slow_stops(timeout=30):
    """From now on ``stop()`` blocks until the returned ``threading.Event`` is set (at most ``timeout`` seconds), and
    the launcher no longer says it answers at once, so work that calls it is moved off the caller's request as with
    a real launcher (``publisher.deferred``)."""
    global _stop_gate
    gate = threading.Event()
    with _lock:
        _stop_gate = (gate, timeout)
    return gate


def _pending_failure(on):
    with _lock:
        return failures[on].pop(0) if failures[on] else None


class RecordingLauncher(BaseLauncher):
    """Records launches in ``publisher.launchers.recording.launches`` and returns handles like ``{"id": "rec-1"}``."""

    name = "recording"

    @property
    def answers_at_once(self):
        """Its calls answer from memory, so a cancel's second step may run in the caller (tests see it done); not
        while ``slow_stops`` is in force."""
        return _stop_gate is None

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
        blocking = _stop_gate
        if blocking is not None:
            gate, timeout = blocking
            gate.wait(timeout)
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
