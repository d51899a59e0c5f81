"""The local destination (DESIGN §5): releases in folders under ``SITE_ROOT``, live through a symlink.

A build writes ``SITE_ROOT/releases/.tmp-<name>/`` (with ``manifest.json`` and ``release.json``), renames it to
``releases/<name>/`` once complete (the rename is the seal), then points ``SITE_ROOT/current`` at it by
``os.replace`` of a new relative symlink. Killed at any instant, ``current`` still names the previous complete
release; a partial release is never served, and the next build removes it.
"""

import datetime
import errno
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from django.core import checks

from ..interrupts import critical_section
from .base import (
    BaseDestination,
    DestinationError,
    LiveRelease,
    Pruned,
    Published,
    ReleaseNotFound,
    ReleaseWriter,
    release_order,
)

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
#: A release being deleted is first renamed to this prefix: a folder named like a release is complete, or gone.
TRASH_PREFIX = ".trash-"
#: ``check_write`` writes ``SITE_ROOT/<PROBE_PREFIX><random>`` (and a symlink beside it) and removes both.
PROBE_PREFIX = ".publisher-probe-"
MANIFEST = "manifest.json"

W030 = "publisher.W030"  # a local destination on a Heroku dyno: its disk vanishes


class SiteRoot:
    """``SITE_ROOT`` with its ``releases/`` folder and the ``current`` link."""

    def __init__(self, root, *, kept=5):
        self.root = Path(root)
        self.releases = self.root / "releases"
        self.current = self.root / "current"
        self.kept = max(1, int(kept))

    def live_name(self):
        """The name of the release ``current`` points at, or ``None``."""
        try:
            return Path(os.readlink(self.current)).name
        except (FileNotFoundError, OSError):
            return None

    def complete_releases(self):
        if not self.releases.is_dir():
            return []
        return sorted(
            (p.name for p in self.releases.iterdir() if p.is_dir() and not p.name.startswith(".")), key=release_order
        )

    def remove_stale_partials(self):
        """Remove ``.tmp-*`` folders left by builds that were killed (called by a build holding the active slot)."""
        if not self.releases.is_dir():
            return
        for path in self.releases.iterdir():
            if path.name.startswith(TMP_PREFIX):
                logger.info("Removing partial release %s left by an interrupted build", path.name)
                shutil.rmtree(path, ignore_errors=True)

    def switch_to(self, name, *, allow_older=False):
        """Point ``current`` at ``releases/<name>`` atomically, unless a newer release is already live."""
        live = self.live_name()
        if live and not allow_older and release_order(live) > release_order(name):
            logger.warning("Release %s not switched live: the newer release %s is already live", name, live)
            return False
        link = self.root / f".current-{uuid.uuid4().hex}"
        os.symlink(Path("releases") / name, link)
        try:
            os.replace(link, self.current)
        except OSError:
            link.unlink(missing_ok=True)
            raise
        fsync_dir(self.root)
        return True

    def prune(self):
        """Keep the newest ``kept`` complete releases and always the live one; finish deletions left half-done.

        Each release is renamed out of the way before it is deleted, so an interrupted prune never leaves a folder
        that looks complete but is not. Returns a ``Pruned`` (names removed, files deleted).
        """
        if not self.releases.is_dir():
            return Pruned()
        deleted = 0
        for path in self.releases.iterdir():
            if path.name.startswith(TRASH_PREFIX):
                deleted += _remove_tree(path)
        live = self.live_name()
        names = self.complete_releases()
        removed = []
        for name in names[: max(0, len(names) - self.kept)]:
            if name == live:
                continue
            trash = self.releases / f"{TRASH_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.releases / name, trash)
            except FileNotFoundError:
                continue  # another process pruned it
            deleted += _remove_tree(trash)
            removed.append(name)
        return Pruned(removed, deleted=deleted)


class LocalReleaseWriter(ReleaseWriter):
    """Writes into ``releases/.tmp-<name>/``; ``path`` is the final folder once published."""

    def __init__(self, destination, **kwargs):
        super().__init__(destination, **kwargs)
        self.site = destination.site
        self.path = self.site.releases / f"{TMP_PREFIX}{self.name}"
        self.final_path = self.site.releases / self.name
        self.site.releases.mkdir(parents=True, exist_ok=True)
        self.path.mkdir()

    def _store(self, entry, data):
        target = Path(os.path.normpath(self.path / entry.path))
        if self.path not in target.parents:
            raise ValueError(f"{entry.path!r} is not a path inside the release")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def abort(self):
        if self.path != self.final_path:
            shutil.rmtree(self.path, ignore_errors=True)


class LocalDestination(BaseDestination):
    """Options: ``ROOT`` (default ``SITE_ROOT``), ``KEPT`` (default ``SITE_RELEASES_KEPT``)."""

    name = "local"
    option_defaults = {"ROOT": "", "KEPT": None}

    def __init__(self, **options):
        super().__init__(**options)
        kept = self.options["KEPT"] if self.options["KEPT"] is not None else self.config.SITE_RELEASES_KEPT
        self.site = SiteRoot(self.options["ROOT"] or self.config.SITE_ROOT, kept=kept)

    def live_release(self):
        name = self.site.live_name()
        if not name:
            return None
        meta = self._meta(name)
        try:
            switched = datetime.datetime.fromtimestamp(os.lstat(self.site.current).st_mtime, datetime.UTC)
        except OSError:
            switched = None
        return LiveRelease(
            release=name,
            build=meta.get("build"),
            attempt=meta.get("attempt"),
            switched_at=switched.isoformat(timespec="seconds") if switched else "",
        )

    def _meta(self, name):
        try:
            return json.loads((self.site.releases / name / "release.json").read_text())
        except (OSError, ValueError):
            return {}

    def manifest(self, name):
        from .manifest import Manifest

        try:
            return Manifest.from_json((self.site.releases / name / MANIFEST).read_text())
        except (OSError, ValueError, KeyError) as exc:
            raise ReleaseNotFound(f"Release {name} has no readable manifest ({type(exc).__name__}).") from None

    def begin(self, *, name, build, attempt):
        self.site.remove_stale_partials()
        live = self.site.live_name()
        return LocalReleaseWriter(self, name=name, build=build, attempt=attempt, parent=live)

    def publish(self, writer, *, pages, expected_live=None, after_switch=None):
        """Seal (manifest and ``release.json``, then the rename) and switch ``current``; signals are held off
        until the switch is done and ``after_switch`` has run: after the switch, the outcome is the switch's."""
        manifest = writer.manifest
        manifest.pages = pages
        manifest.created_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        meta = {"build": manifest.build, "attempt": manifest.attempt, "name": writer.name, "time": manifest.created_at}
        (writer.path / MANIFEST).write_text(manifest.to_json())
        (writer.path / "release.json").write_text(json.dumps({**meta, "pages": pages}, indent=2) + "\n")
        with critical_section():
            os.rename(writer.path, writer.final_path)
            writer.path = writer.final_path
            fsync_dir(self.site.releases)
            went_live = self.site.switch_to(writer.name)
            published = Published(
                went_live=went_live, uploaded=len(manifest.files), bytes_uploaded=manifest.total_bytes
            )
            if after_switch is not None:
                after_switch(published)
        return published

    def rollback(self, name):
        if name not in self.site.complete_releases():
            raise ReleaseNotFound(f"There is no complete release {name!r} in {self.site.releases}.")
        with critical_section():
            self.site.switch_to(name, allow_older=True)
        return self.live_release()

    def releases(self):
        return self.site.complete_releases()

    def prune(self):
        return self.site.prune()

    def open(self, name, path):
        root = self.site.releases / name
        target = Path(os.path.normpath(root / path))
        if name.startswith(".") or root not in target.parents or not target.is_file():
            raise ReleaseNotFound(f"Release {name} has no file {path!r}.")
        return target.read_bytes()

    def check(self):
        if self.config.DYNO:
            return [
                checks.Warning(
                    "SITE_DESTINATION is 'local' on a Heroku dyno: the built site is written to a disk that is "
                    "thrown away when the dyno exits, so nothing is published.",
                    hint="Set SITE_DESTINATION=s3 with SITE_S3_BUCKET (DESIGN §5).",
                    id=W030,
                )
            ]
        return []

    def check_write(self):
        """Create ``SITE_ROOT`` if missing (as a build would), write a probe file and a symlink to it (the build
        switches ``current`` by a symlink), read the file back, remove both."""
        root = self.site.root
        probe = root / f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        link = probe.with_name(probe.name + "-link")
        data = b"publisher write probe\n"
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(data)
            try:
                os.symlink(probe.name, link)
                if link.read_bytes() != data:
                    raise OSError(f"{probe} reads back other bytes than were written")
            finally:
                link.unlink(missing_ok=True)
                probe.unlink(missing_ok=True)
        except OSError as exc:
            code = errno.errorcode.get(exc.errno, "OSError") if exc.errno else "OSError"
            raise DestinationError(
                f"SITE_ROOT {root} does not accept a write (creating {probe.name} and a symlink to it): "
                f"{exc.strerror or exc}. Builds write releases there and switch its 'current' symlink; give the "
                "user running the publisher write access, or set SITE_ROOT to a writable folder.",
                code=code,
                retryable=False,
            ) from None
        return f"wrote and removed {probe.name} and a symlink in {root}"

    def describe(self):
        return str(self.site.root)


def _remove_tree(path):
    """Delete a folder; returns how many files it held (best effort: an interrupted rmtree is finished later)."""
    files = sum(len(names) for _dirpath, _dirs, names in os.walk(path))
    shutil.rmtree(path, ignore_errors=True)
    return files


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
