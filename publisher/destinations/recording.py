"""A destination that keeps releases in memory and records what it was asked, for tests (like Django's locmem email
backend). Everything lives in this module so that every instance shares it::

    from publisher.destinations import recording

    recording.releases        # {name: {path: bytes}} of every release written, sealed or not
    recording.manifests       # {name: Manifest} of the sealed ones
    recording.pointer         # the LiveRelease the site is on, or None
    recording.calls           # ("begin" | "store" | "seal" | "switch" | "rollback" | "prune", name), in order
    recording.fail_next("seal")   # the next seal raises DestinationError (also "store", "switch")
    recording.reset()
"""

import datetime
import threading

from .base import (
    BaseDestination,
    DestinationError,
    LiveRelease,
    PointerMoved,
    Published,
    ReleaseNotFound,
    ReleaseWriter,
    release_order,
)

releases = {}
manifests = {}
calls = []
failures = {"store": 0, "seal": 0, "switch": 0}
pointer = None
_lock = threading.Lock()


def reset():
    global pointer
    with _lock:
        releases.clear()
        manifests.clear()
        calls.clear()
        for step in failures:
            failures[step] = 0
        pointer = None


def fail_next(step, *, times=1):
    if step not in failures:
        raise ValueError(f"fail_next() takes one of {', '.join(failures)}, not {step!r}")
    failures[step] += times


def _maybe_fail(step, name):
    with _lock:
        calls.append((step, name))
        if failures[step]:
            failures[step] -= 1
            raise DestinationError(f"Recorded failure at {step} of {name}", code="Recorded")


class RecordingReleaseWriter(ReleaseWriter):
    def _store(self, entry, data):
        _maybe_fail("store", self.name)
        releases.setdefault(self.name, {})[entry.path] = data

    def abort(self):
        releases.pop(self.name, None)


class RecordingDestination(BaseDestination):
    name = "recording"

    def live_release(self):
        return pointer

    def manifest(self, name):
        try:
            return manifests[name]
        except KeyError:
            raise ReleaseNotFound(f"No sealed release {name!r}") from None

    def begin(self, *, name, build, attempt):
        calls.append(("begin", name))
        releases[name] = {}
        return RecordingReleaseWriter(
            self, name=name, build=build, attempt=attempt, parent=pointer.release if pointer else None
        )

    def publish(self, writer, *, pages, expected_live=None, after_switch=None):
        from ..interrupts import critical_section

        writer.manifest.pages = pages
        _maybe_fail("seal", writer.name)
        manifests[writer.name] = writer.manifest
        _maybe_fail("switch", writer.name)
        with critical_section():
            went_live = self._switch(writer.name, expected=expected_live, allow_older=False)
            published = Published(went_live=went_live, uploaded=len(writer.manifest.files))
            if after_switch is not None:
                after_switch(published)
        return published

    def _switch(self, name, *, expected, allow_older):
        global pointer
        with _lock:
            if expected is not None and pointer != expected:
                raise PointerMoved(f"The live pointer moved from {expected.release} to {pointer and pointer.release}")
            if pointer and not allow_older and release_order(pointer.release) > release_order(name):
                return False
            manifest = manifests[name]
            pointer = LiveRelease(
                release=name,
                build=manifest.build,
                attempt=manifest.attempt,
                switched_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                previous=pointer.release if pointer else None,
            )
            return True

    def rollback(self, name):
        self.manifest(name)
        self._switch(name, expected=None, allow_older=True)
        calls.append(("rollback", name))
        return pointer

    def releases(self):
        return sorted(manifests, key=release_order)

    def prune(self):
        calls.append(("prune", None))
        return []

    def open(self, name, path):
        try:
            return releases[name][path]
        except KeyError:
            raise ReleaseNotFound(f"Release {name} has no file {path!r}") from None

    def check(self):
        return []

    def describe(self):
        return "memory (recording destination)"
