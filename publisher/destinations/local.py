"""The local destination (DESIGN §5): releases in folders under ``SITE_ROOT``, live through a symlink.

A build writes ``SITE_ROOT/releases/.tmp-<name>/`` (with ``manifest.json`` and ``release.json``), renames it to
``releases/<name>/`` once complete (the rename is the seal), then points ``SITE_ROOT/current`` at it by
``os.replace`` of a new relative symlink. Killed at any instant, ``current`` still names the previous complete
release; a partial release is never served, and the next build removes it.

Only what changed is written: a file whose path and SHA-256 are the live release's (its manifest says so) is
hard-linked from the live release instead, so a one-page edit writes a few files and links the rest; a page whose
live release file was rendered from the same input (``FileEntry.input``) is linked without being rendered at all.
Releases stay independent (a link is one more name for the same bytes: deleting the old release leaves the new one
whole), and no file is ever opened for writing once it exists, so a file shared between releases is never changed in
place: a changed file is a new file. Where links are refused (another file system, a file system without them, too
many links) the bytes are written. ``buildstaticsite --full`` writes every file afresh.

Creating a release's folders costs more than its files on a disk (a page is a folder: 100,000 ``mkdir`` take 5-12 s
on ext4, deleting them as long). So once ``SITE_RELEASES_KEPT`` releases exist, a build takes the oldest release that
the prune after it would delete anyway and renames it into its own partial folder: its folders and the files that did
not change stay where they are, the others are replaced (unlinked, then linked or written: never written through),
and what the new release lacks is deleted before it is sealed. Until that rename it is a complete release; after it,
a partial one that is never served, rolled back to or trusted (a killed build's partial folder is removed).
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
    StoredFile,
    release_order,
)
from .manifest import FileEntry

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


#: ``os.link`` errors after which the bytes are written instead: another file system (EXDEV), a file system or
#: policy that refuses hard links (EPERM, e.g. ``fs.protected_hardlinks``; EOPNOTSUPP), too many links to one file
#: (EMLINK). The value says whether every other link would fail too (then this process stops trying).
LINK_REFUSED = {errno.EXDEV: True, errno.EPERM: True, errno.EOPNOTSUPP: True, errno.EMLINK: False}
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class ReleaseFiles:
    """Stores the files of one release folder, linking unchanged ones from the live release.

    Free of Django and picklable: the build process and its render workers (``worker_store``) each hold a copy and
    store into the same folder. ``live_files`` is the live release's manifest (path -> ``FileEntry``).
    ``base_files`` is the manifest of the release this folder was recycled from: those files are in the folder
    already, and one with the same path and bytes is kept as it is (unless ``keep_base`` is false: ``--full``
    replaces every one). A file is only ever created (``O_EXCL``), never opened for writing if it exists: a linked
    file is shared with another release, so writing through it would change that release.
    """

    def __init__(self, root, *, live_root=None, live_files=None, base_files=None, keep_base=True):
        self.root = os.path.abspath(root)
        self.live_root = os.path.abspath(live_root) if live_root and live_files else None
        self.live_files = live_files if self.live_root else {}
        self.base_files = base_files or {}
        self.kept_files = self.base_files if keep_base else {}
        self.linking = self.live_root is not None
        self._prefix = self.root + os.sep

    def __call__(self, path, data, content_type, input=""):
        """``worker_store``: hash and store one file; returns a ``StoredFile``."""
        entry = FileEntry.of(path, data, content_type, input)
        return StoredFile(entry, self.put(entry, data))

    def reusable(self, path, input):
        """Whether ``reuse`` can take ``path`` without its bytes (a lookup, no I/O)."""
        if not input:
            return False
        base = self.kept_files.get(path)
        if base is not None and base.input == input:
            return True
        live = self.live_files.get(path)
        return self.linking and live is not None and live.input == input

    def reuse(self, path, input):
        """Take ``path`` as rendered from ``input`` by an earlier release: kept in this folder when the recycled
        release has it, else linked from the live release. Returns a ``StoredFile`` (``linked``), or ``None`` when
        it must be rendered (no such file, or the link refused)."""
        if not input:
            return None
        base = self.kept_files.get(path)
        if base is not None and base.input == input:
            return StoredFile(base, True)
        live = self.live_files.get(path)
        if not self.linking or live is None or live.input != input:
            return None
        if base is not None and base.sha256 == live.sha256:
            return StoredFile(live, True)  # this folder has those bytes already
        if self._link(path, self._target(path)):
            return StoredFile(live, True)
        return None

    def put(self, entry, data):
        """Store ``data`` as ``entry.path``: kept when this folder has those bytes there already (recycled), a
        hard link when the live release has that path with that SHA-256, else a new file. Returns whether the
        bytes were taken from an earlier release (kept or linked) rather than written."""
        base = self.kept_files.get(entry.path)
        if base is not None and base.sha256 == entry.sha256:
            return True
        target = self._target(entry.path)
        live = self.live_files.get(entry.path)
        if self.linking and live is not None and live.sha256 == entry.sha256 and self._link(entry.path, target):
            return True
        self._create(target, data)
        return False

    def create(self, path, data):
        """Store ``data`` as a new file ``path`` (never linked: ``manifest.json``, ``release.json``); ``data`` is
        bytes, or an iterable of ``str`` parts written one by one as UTF-8."""
        if isinstance(data, bytes | bytearray | memoryview):
            self._create(self._target(path), data)
        else:
            self._create_parts(self._target(path), data)

    def remove_leftovers(self, keep):
        """Delete the recycled release's files whose paths are not in ``keep`` (the new manifest), and the folders
        that leaves empty. Returns how many files were deleted."""
        deleted = 0
        folders = set()
        for path in self.base_files:
            if path in keep:
                continue
            target = self._target_of(path)
            try:
                os.unlink(target)
            except FileNotFoundError:
                continue
            deleted += 1
            folders.add(os.path.dirname(target))
        for folder in sorted(folders, key=len, reverse=True):
            while folder != self.root and folder.startswith(self._prefix):
                try:
                    os.rmdir(folder)
                except OSError:
                    break  # not empty (or gone): its parents are not empty either
                folder = os.path.dirname(folder)
        return deleted

    def _target_of(self, path):
        target = os.path.normpath(os.path.join(self.root, path))
        if not target.startswith(self._prefix) or os.path.isabs(path):
            raise ValueError(f"{path!r} is not a path inside the release")
        return target

    def _target(self, path):
        target = self._target_of(path)
        folder = os.path.dirname(target)
        if folder != self.root:
            try:
                os.mkdir(folder)  # a page's own folder: new, one call
            except FileExistsError:
                pass
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)  # page/N/
        return target

    def _link(self, path, target):
        source = os.path.join(self.live_root, path)
        try:
            try:
                os.link(source, target)
            except FileExistsError:
                os.unlink(target)  # this release's own file at this path: replace it, never write through it
                os.link(source, target)
            return True
        except FileNotFoundError:
            return False  # the live release lacks the file its manifest lists (damaged by hand): write it
        except OSError as exc:
            stop = LINK_REFUSED.get(exc.errno)
            if stop is None:
                raise
            if stop and self.linking:
                self.linking = False
                logger.warning("Hard links refused in %s (%s): writing every file", self.root, exc.strerror)
            return False

    def _create(self, target, data):
        self._create_parts(target, (data,))

    def _create_parts(self, target, parts):
        try:
            fd = os.open(target, _WRITE_FLAGS, 0o666)
        except FileExistsError:
            os.unlink(target)  # replace, never write through: it may be a link to a live release's file
            fd = os.open(target, _WRITE_FLAGS, 0o666)
        try:
            for part in parts:
                view = memoryview(part.encode("utf-8") if isinstance(part, str) else part)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


class LocalReleaseWriter(ReleaseWriter):
    """Writes into ``releases/.tmp-<name>/``; ``path`` is the final folder once published.

    ``live_files`` (path -> SHA-256 of the live release, from its manifest; ``None`` to write everything) decides
    what is linked from the live release ``parent``. ``linked``, ``written`` and ``bytes_written`` count what this
    release took from each, workers' files included once ``record``ed.
    """

    def __init__(self, destination, *, live_files=None, base=None, full=False, **kwargs):
        super().__init__(destination, **kwargs)
        self.site = destination.site
        self.path = self.site.releases / f"{TMP_PREFIX}{self.name}"
        self.final_path = self.site.releases / self.name
        self.site.releases.mkdir(parents=True, exist_ok=True)
        base_files = None
        if base is not None:
            base_name, base_files = base
            # From here on the old release is a partial folder: never served, never rolled back to.
            os.rename(self.site.releases / base_name, self.path)
            for name in (MANIFEST, "release.json"):
                (self.path / name).unlink(missing_ok=True)
            logger.info(
                "Release %s reuses the folders of %s, which the prune after it would delete", self.name, base_name
            )
        else:
            self.path.mkdir()
        self.recycled = base[0] if base is not None else None
        parent = self.manifest.parent
        self.files = ReleaseFiles(
            self.path,
            live_root=self.site.releases / parent if parent else None,
            live_files=live_files,
            base_files=base_files,
            keep_base=not full,
        )
        self.linked = self.written = self.bytes_written = 0

    def _store(self, entry, data):
        self._count(entry, self.files.put(entry, data))

    @property
    def reuses(self):
        return bool(self.files.linking or self.files.kept_files)

    def reusable(self, path, input):
        return self.files.reusable(path, input)

    def reuse(self, path, input):
        stored = self.files.reuse(path, input)
        if stored is None:
            return None
        return self.record(stored)

    def worker_store(self):
        return self.files

    def record(self, stored):
        self._count(stored.entry, stored.linked)
        return super().record(stored)

    def _count(self, entry, linked):
        if linked:
            self.linked += 1
        else:
            self.written += 1
            self.bytes_written += entry.size

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

    def manifest(self, name, *, shared=None):
        from .manifest import Manifest

        try:
            return Manifest.from_json((self.site.releases / name / MANIFEST).read_text(), shared=shared)
        except (OSError, ValueError, KeyError) as exc:
            raise ReleaseNotFound(f"Release {name} has no readable manifest ({type(exc).__name__}).") from None

    def begin(self, *, name, build, attempt, full=False):
        """A writer for ``releases/.tmp-<name>/`` that links unchanged files from the live release (its sealed
        manifest), or writes every file when ``full`` (or when the live release has no readable manifest). The
        folder is the oldest release's when the prune after this build would delete it (``_recyclable``); with
        ``full`` its files are all replaced, only its folders stay."""
        self.site.remove_stale_partials()
        live = self.site.live_name()
        live_files = None
        if live and not full:
            try:
                live_files = self.manifest(live).files
            except ReleaseNotFound as exc:
                logger.warning("Writing every file of %s: %s", name, exc)
        base = self._recyclable(live, shared=live_files)
        return LocalReleaseWriter(
            self, name=name, build=build, attempt=attempt, parent=live, live_files=live_files, base=base, full=full
        )

    def _recyclable(self, live, *, shared=None):
        """``(name, manifest files)`` of the oldest release that the prune after this build would delete (the
        newest ``KEPT`` and the live one stay), or ``None``. Its folder becomes the new release's."""
        names = self.site.complete_releases()
        doomed = [n for n in names[: max(0, len(names) + 1 - self.site.kept)] if n != live]
        for candidate in doomed[:1]:
            try:
                return candidate, self.manifest(candidate, shared=shared).files
            except ReleaseNotFound:
                return None  # pruned as usual
        return None

    def publish(self, writer, *, pages, expected_live=None, after_switch=None):
        """Seal (manifest and ``release.json``, then the rename) and switch ``current``; signals are held off
        until the switch is done and ``after_switch`` has run: after the switch, the outcome is the switch's."""
        manifest = writer.manifest
        manifest.pages = pages
        manifest.created_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        meta = {"build": manifest.build, "attempt": manifest.attempt, "name": writer.name, "time": manifest.created_at}
        if writer.recycled is not None:
            writer.files.remove_leftovers(manifest.files)
        writer.files.create(MANIFEST, manifest.json_parts())
        writer.files.create("release.json", (json.dumps({**meta, "pages": pages}, indent=2) + "\n").encode())
        with critical_section():
            os.rename(writer.path, writer.final_path)
            writer.path = writer.final_path
            fsync_dir(self.site.releases)
            went_live = self.site.switch_to(writer.name)
            # Written / linked: as S3's uploaded / copied, for the build's history.
            published = Published(
                went_live=went_live,
                uploaded=writer.written,
                copied=writer.linked,
                bytes_uploaded=writer.bytes_written,
                recycled=writer.recycled or "",
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
