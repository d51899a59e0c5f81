"""The destination contract (DESIGN §5): where a rendered release goes and how it goes live.

A destination is a backend like a launcher: picked by ``SITE_DESTINATION`` (``PUBLISHER["DESTINATION"]``), built
with its options (unknown names refused), settings read when it is built. Rendering never knows where files end
up: it hands each file to the ``ReleaseWriter`` that ``begin`` returns, which records the manifest. ``publish``
seals the release (its manifest is written last) and moves the live pointer in one write, never to a release older
than the live one. Failures raise ``DestinationError`` (or a subclass) with the store's error code and request id.
"""

import datetime
import re
from dataclasses import dataclass
from typing import NamedTuple

from ..backends import Backend
from .manifest import FileEntry, Manifest

NAME_PATTERN = re.compile(r"^(?P<time>\d{8}T\d{6})-b(?P<build>\d+)-a(?P<attempt>\d+)$")


def release_name(*, build_id, attempt, now):
    return f"{now.astimezone(datetime.UTC):%Y%m%dT%H%M%S}-b{int(build_id)}-a{int(attempt)}"


def release_order(name):
    """Sort key of a release name: by build, then attempt (newer builds supersede older ones)."""
    match = NAME_PATTERN.match(name or "")
    return (int(match["build"]), int(match["attempt"]), match["time"]) if match else (-1, -1, "")


class DestinationError(Exception):
    """A destination call failed; the live site is unchanged. ``code`` and ``request_id`` are the store's."""

    def __init__(self, message, *, code=None, request_id=None, retryable=True):
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id
        self.retryable = retryable

    def __str__(self):
        return self.message


class ReleaseNotFound(DestinationError):
    """No sealed release has that name."""


class PointerMoved(DestinationError):
    """The live pointer changed since this build read it: another build or a rollback won the cutover."""


@dataclass(frozen=True)
class LiveRelease:
    """What the live pointer says."""

    release: str
    build: int | None = None
    attempt: int | None = None
    switched_at: str = ""
    previous: str | None = None


@dataclass(frozen=True)
class Published:
    """What ``publish`` did: whether the release went live, and the transfer counts for the build's history."""

    went_live: bool
    uploaded: int = 0
    copied: int = 0
    bytes_uploaded: int = 0
    #: The old release whose folder this one was built in (local: it is gone, as its prune would have done).
    recycled: str = ""


class Pruned(list):
    """What ``prune`` removed: the release names, oldest first (a list, so it compares equal to one), and
    ``deleted``, how many objects or files went with them (leftovers of interrupted builds and prunes included)."""

    def __init__(self, names=(), *, deleted=0):
        super().__init__(names)
        self.deleted = int(deleted)


class StoredFile(NamedTuple):
    """What a render worker stored through ``ReleaseWriter.worker_store()``: the file's manifest entry, and whether
    it was linked from the live release (``True``) or written (``False``)."""

    entry: FileEntry
    linked: bool = False


class ReleaseWriter:
    """One release being written. Subclasses implement ``_store``; ``add`` records the manifest.

    A writer may also let render workers (other processes, ``BUILD_WORKERS``) hash and store files themselves:
    ``worker_store()`` then returns a picklable callable, and the build process enters each result in the manifest
    with ``record``, in site order. Writers that store through the build process (S3's transfers, the recording
    double) return ``None`` and every file goes through ``add``.
    """

    def __init__(self, destination, *, name, build, attempt, parent):
        self.destination = destination
        self.name = name
        self.manifest = Manifest(release=name, build=int(build), attempt=int(attempt), parent=parent)

    def add(self, path, data, content_type, input=""):
        """Store one file of the release (``data`` is bytes or text, written as UTF-8); ``input`` is what it was
        rendered from (``FileEntry.input``)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        entry = FileEntry.of(path, data, content_type, input)
        self._store(entry, data)
        self.manifest.add(entry)
        return entry

    #: Whether ``reusable`` can ever be true for this writer (a live or recycled release to take files from).
    reuses = False

    def reusable(self, path, input):
        """Whether ``reuse(path, input)`` may store this file without its bytes: the live release has ``path``
        rendered from the same ``input``. A lookup, no I/O; ``False`` (the default) means: render it."""
        return False

    def reuse(self, path, input):
        """Store ``path`` as the live release has it, without rendering it, when the live release rendered it from
        the same ``input``; returns its ``FileEntry``, or ``None`` when the file must be rendered and ``add``ed
        (the default: a destination that cannot take a file from the live release without its bytes)."""
        return None

    def _store(self, entry, data):
        raise NotImplementedError(f"{type(self).__name__} must implement _store()")

    def worker_store(self):
        """A picklable callable ``store(path, data: bytes, content_type, input) -> StoredFile`` that stores one file
        of this release from another process (a render worker, never touching the database), or ``None`` when files
        must be handed to ``add`` in the build process (the default). Its ``reuse(path, input)`` is this writer's
        ``reuse`` returning a ``StoredFile`` (or ``None``), for the worker's process."""
        return None

    def record(self, stored):
        """Enter in the manifest a file that a worker stored through ``worker_store()``; returns its entry."""
        self.manifest.add(stored.entry)
        return stored.entry

    def abort(self):
        """Remove what this writer stored; the live site is untouched (a no-op where leftovers are collected)."""
        raise NotImplementedError(f"{type(self).__name__} must implement abort()")


class BaseDestination(Backend):
    """The contract. Subclasses implement every method below that raises ``NotImplementedError``."""

    def live_release(self):
        """The ``LiveRelease`` the pointer names, or ``None`` before the first publish."""
        raise NotImplementedError(f"{type(self).__name__} must implement live_release()")

    def live_manifest(self):
        """The manifest of the live release, or ``None``."""
        live = self.live_release()
        return self.manifest(live.release) if live else None

    def manifest(self, name):
        """The sealed manifest of release ``name``; ``ReleaseNotFound`` when it is not sealed."""
        raise NotImplementedError(f"{type(self).__name__} must implement manifest()")

    def begin(self, *, name, build, attempt):
        """A ``ReleaseWriter`` for a new release; leftovers of dead builds are removed or reused here.

        A destination that reuses the live release's files (S3's server-side copies, local hard links) may also
        accept ``full=True`` (``buildstaticsite --full``): write every file afresh. ``build_release`` passes the
        keyword only when it is true, and only to a ``begin`` that takes it (``accepts_full``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement begin()")

    def publish(self, writer, *, pages, expected_live, after_switch=None):
        """Seal ``writer``'s release and make it live in one write, conditional on the pointer being
        ``expected_live`` (a ``LiveRelease`` or ``None``) and never to a release older than the live one.
        ``after_switch(published)`` runs right after the switch (the build records its success there).
        Returns ``Published``; raises ``PointerMoved`` when another cutover won."""
        raise NotImplementedError(f"{type(self).__name__} must implement publish()")

    def rollback(self, name):
        """Make the sealed release ``name`` live (one pointer write, older releases allowed). Returns LiveRelease."""
        raise NotImplementedError(f"{type(self).__name__} must implement rollback()")

    def releases(self):
        """Names of the sealed releases, oldest first."""
        raise NotImplementedError(f"{type(self).__name__} must implement releases()")

    def prune(self):
        """Remove old releases (keeping the live one and the newest ``SITE_RELEASES_KEPT``); interruptible at any
        instant. Returns a ``Pruned``: the names removed and how many objects or files were deleted."""
        raise NotImplementedError(f"{type(self).__name__} must implement prune()")

    def open(self, name, path):
        """The bytes of file ``path`` of sealed release ``name`` (for serving); ``ReleaseNotFound`` if absent."""
        raise NotImplementedError(f"{type(self).__name__} must implement open()")

    def check(self):
        """A list of ``django.core.checks`` messages about this destination's configuration."""
        raise NotImplementedError(f"{type(self).__name__} must implement check()")

    def check_write(self):
        """Prove this destination accepts a write (the doctor): store and remove a small probe object outside any
        release. Returns a few words saying what was written; raises ``DestinationError`` saying what was refused.

        Not part of ``check()``: system checks run at every management command, and a write there would cost a
        request (and leave a probe when interrupted) each time; ``publisherdoctor`` calls this."""
        raise NotImplementedError(f"{type(self).__name__} must implement check_write()")

    def describe(self):
        """A few words naming where the site goes (``/srv/site``, ``s3://bucket/prefix``)."""
        return self.name

    def reconcile(self):
        """Bring what serves the site in line with the live pointer (the source of truth), e.g. a CDN's key that a
        failed cutover left behind. Returns a sentence when it changed something, else ``None``. Called by the
        sweep; destinations with nothing beside their pointer have nothing to do."""
        return None
