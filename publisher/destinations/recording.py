"""A destination that keeps releases in memory and records what it was asked, for tests (like Django's locmem email
backend). Everything lives in this module so that every instance shares it::

    from publisher.destinations import recording

    recording.releases        # {name: {path: bytes}} of every release written, sealed or not
    recording.manifests       # {name: Manifest} of the sealed ones
    recording.pointer         # the LiveRelease the site is on, or None
    recording.served          # the release a CDN serves (S3's CloudFront KeyValueStore key), or None
    recording.calls           # (step, name) in order; step is one of STEPS
    recording.fail_next("seal")               # the next seal raises DestinationError
    recording.fail_next("upload", skip=3)     # the 4th upload from now raises
    recording.fail_next("switch", kill=True)  # the process dies there: ``Killed`` (a BaseException) is raised and
                                              # the dead process cleans nothing up (its writer's abort does nothing)
    recording.reset()

It publishes like the S3 destination, step by step, so that a fault can be put at any of them (``STEPS``): ``begin``
(reading the live release), ``add`` (each file the renderer hands over), ``upload`` or ``copy`` (each file stored: a
copy when the live release has the same content), ``seal`` (the manifest), ``switch`` (the pointer write), ``after
switch`` (the pointer written, the build's success not yet recorded: only ``kill`` makes sense there), ``kvs`` (what
the CDN serves, written after the success is recorded; a failure is logged, as on S3, and ``reconcile`` repairs it),
``prune`` (once as it starts, then once per release removed, after its manifest is deleted), ``check_write``.
"""

import datetime
import logging
import threading
import uuid

from .base import (
    BaseDestination,
    DestinationError,
    LiveRelease,
    PointerMoved,
    Pruned,
    Published,
    ReleaseNotFound,
    ReleaseWriter,
    release_order,
)

logger = logging.getLogger(__name__)

STEPS = ("begin", "add", "upload", "copy", "seal", "switch", "after switch", "kvs", "prune", "check_write", "rollback")

releases = {}
manifests = {}
calls = []
#: Armed faults, in the order they were armed: dicts with ``step``, ``skip`` (calls of that step to let through
#: first) and ``kill``.
faults = []
pointer = None
served = None
#: Names of releases whose writer is open in a live process (``prune`` leaves their files alone).
writing = set()
_lock = threading.RLock()


class Killed(BaseException):
    """The process died at this step (SIGKILL, the dyno vanished): nothing after it runs, not even cleanups."""


def reset():
    global pointer, served
    with _lock:
        releases.clear()
        manifests.clear()
        calls.clear()
        faults.clear()
        writing.clear()
        pointer = None
        served = None


def fail_next(step, *, skip=0, kill=False):
    """Arm one fault at the ``skip + 1``-th call of ``step`` from now: a ``DestinationError``, or ``Killed``."""
    if step not in STEPS:
        raise ValueError(f"fail_next() takes one of {', '.join(STEPS)}, not {step!r}")
    with _lock:
        faults.append({"step": step, "skip": int(skip), "kill": bool(kill)})


def _at(step, name, writer=None):
    """Record one step; raise the fault armed for it, if any."""
    with _lock:
        calls.append((step, name))
        for fault in faults:
            if fault["step"] != step:
                continue
            if fault["skip"]:
                fault["skip"] -= 1
                return
            faults.remove(fault)
            break
        else:
            return
    if fault["kill"]:
        if writer is not None:
            writer.dead = True
        writing.discard(name)
        raise Killed(f"the process died at {step} of {name}")
    raise DestinationError(f"Recorded failure at {step} of {name}", code="Recorded")


def complete(name):
    """Whether release ``name`` is sealed and holds every file its manifest lists, with that content."""
    import hashlib

    manifest = manifests.get(name)
    files = releases.get(name, {})
    if manifest is None:
        return False
    return all(
        path in files and hashlib.sha256(files[path]).hexdigest() == entry.sha256
        for path, entry in manifest.files.items()
    )


class RecordingReleaseWriter(ReleaseWriter):
    def __init__(self, destination, *, parent_manifest, **kwargs):
        super().__init__(destination, **kwargs)
        self.sources = {e.sha256 for e in parent_manifest.files.values()} if parent_manifest else set()
        self.uploaded = self.copied = self.bytes_uploaded = 0
        self.dead = False

    def add(self, path, data, content_type, input=""):
        _at("add", self.name, self)
        return super().add(path, data, content_type, input)

    def _store(self, entry, data):
        if entry.sha256 in self.sources:
            _at("copy", self.name, self)
            self.copied += 1
        else:
            _at("upload", self.name, self)
            self.uploaded += 1
            self.bytes_uploaded += entry.size
        with _lock:
            releases.setdefault(self.name, {})[entry.path] = data

    def abort(self):
        """Remove the files unless the release is sealed (then ``prune`` decides); a dead process removes nothing."""
        if self.dead:
            return
        with _lock:
            writing.discard(self.name)
            if self.name not in manifests:
                releases.pop(self.name, None)


class RecordingDestination(BaseDestination):
    """Options: ``KEPT`` (default ``SITE_RELEASES_KEPT``)."""

    name = "recording"
    option_defaults = {"KEPT": None}

    def __init__(self, **options):
        super().__init__(**options)
        kept = self.options["KEPT"] if self.options["KEPT"] is not None else self.config.SITE_RELEASES_KEPT
        self.kept = max(1, int(kept))

    def live_release(self):
        return pointer

    def manifest(self, name):
        try:
            return manifests[name]
        except KeyError:
            raise ReleaseNotFound(f"No sealed release {name!r}") from None

    def begin(self, *, name, build, attempt, full=False):
        live = pointer
        _at("begin", name)
        with _lock:
            releases[name] = {}
            writing.add(name)
        return RecordingReleaseWriter(
            self,
            name=name,
            build=build,
            attempt=attempt,
            parent=live.release if live else None,
            parent_manifest=manifests.get(live.release) if live and not full else None,
        )

    def publish(self, writer, *, pages, expected_live=None, after_switch=None):
        """As the S3 destination: seal, one conditional pointer write, the success recorded, then the CDN's key."""
        from ..interrupts import critical_section

        manifest = writer.manifest
        manifest.pages = pages
        manifest.created_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        _at("seal", writer.name, writer)
        with _lock:
            manifests[writer.name] = manifest
            writing.discard(writer.name)
        transfers = {"uploaded": writer.uploaded, "copied": writer.copied, "bytes_uploaded": writer.bytes_uploaded}
        with critical_section():
            _at("switch", writer.name, writer)
            went_live = self._switch(writer.name, expected=expected_live, allow_older=False)
            if went_live:
                _at("after switch", writer.name, writer)
            published = Published(went_live=went_live, **transfers)
            if after_switch is not None:
                after_switch(published)
        if went_live:
            self._serve(writer.name)
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

    def _serve(self, name):
        """Write what the CDN serves after the pointer (the source of truth): a failure is logged, not raised."""
        global served
        try:
            _at("kvs", name)
        except DestinationError as exc:
            logger.error("The pointer names %s but what is served was not updated: %s", name, exc)
            return
        served = name

    def reconcile(self):
        live = pointer
        if live is None or served == live.release:
            return None
        was = served
        self._serve(live.release)
        if served != live.release:
            return None
        return f"the CDN served {was or 'nothing'}; set to the live release {live.release}"

    def rollback(self, name):
        self.manifest(name)
        _at("rollback", name)
        self._switch(name, expected=None, allow_older=True)
        self._serve(name)
        return pointer

    def releases(self):
        return sorted(manifests, key=release_order)

    def prune(self):
        """Keep the live release, the one it replaced, what the CDN serves and the newest ``KEPT``; remove the
        others (manifest first, so nothing unsealed looks sealed) and the files of writers that died."""
        _at("prune", None)
        with _lock:
            sealed = sorted(manifests, key=release_order)
            keep = set(sealed[-self.kept :]) | {served}
            if pointer is not None:
                keep |= {pointer.release, pointer.previous}
        removed, deleted = [], 0
        for name in sealed:
            if name in keep:
                continue
            with _lock:
                manifests.pop(name, None)
                deleted += 1
            _at("prune", name)
            with _lock:
                deleted += len(releases.pop(name, {}))
            removed.append(name)
        with _lock:
            leftovers = [name for name in releases if name not in manifests and name not in writing]
        for name in sorted(leftovers, key=release_order):
            with _lock:
                deleted += len(releases.pop(name, {}))
            removed.append(name)
        return Pruned(removed, deleted=deleted)

    def open(self, name, path):
        try:
            return releases[name][path]
        except KeyError:
            raise ReleaseNotFound(f"Release {name} has no file {path!r}") from None

    def check(self):
        return []

    def check_write(self):
        probe = f".publisher-probe/{uuid.uuid4().hex}"
        _at("check_write", probe)
        return f"wrote and removed {probe} in memory"

    def describe(self):
        return "memory (recording destination)"
