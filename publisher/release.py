"""Releases on disk and the atomic switch of the live site (DESIGN §5).

A build writes ``SITE_ROOT/releases/.tmp-<name>/``, renames it to ``releases/<name>/`` once complete (with
``release.json`` inside), then points ``SITE_ROOT/current`` at it by ``os.replace`` of a new relative symlink.
Killed at any instant, ``current`` still names the previous complete release; a partial release is never served.

This module is the build's output step: publishing to durable storage plugs in after ``Release.go_live``.
"""

import datetime
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.utils import timezone

from .interrupts import critical_section
from .render import render_site

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
#: A release being deleted is first renamed to this prefix: a folder named like a release is complete, or gone.
TRASH_PREFIX = ".trash-"
NAME_PATTERN = re.compile(r"^(?P<time>\d{8}T\d{6})-b(?P<build>\d+)-a(?P<attempt>\d+)$")


class ReleaseError(Exception):
    """The release could not be written or switched; the live site is unchanged."""


@dataclass(frozen=True)
class Released:
    name: str
    pages: int
    went_live: bool


def release_name(*, build_id, attempt, now=None):
    now = now or timezone.now()
    return f"{now.astimezone(datetime.UTC):%Y%m%dT%H%M%S}-b{int(build_id)}-a{int(attempt)}"


def _order(name):
    """Sort key of a release name: by build, then attempt (newer builds supersede older ones)."""
    match = NAME_PATTERN.match(name or "")
    return (int(match["build"]), int(match["attempt"]), match["time"]) if match else (-1, -1, "")


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
            (p.name for p in self.releases.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_order
        )

    def remove_stale_partials(self):
        """Remove ``.tmp-*`` folders left by builds that were killed (called by a build holding the active slot)."""
        if not self.releases.is_dir():
            return
        for path in self.releases.iterdir():
            if path.name.startswith(TMP_PREFIX):
                logger.info("Removing partial release %s left by an interrupted build", path.name)
                shutil.rmtree(path, ignore_errors=True)

    def switch_to(self, name):
        """Point ``current`` at ``releases/<name>`` atomically, unless a newer release is already live."""
        live = self.live_name()
        if live and _order(live) > _order(name):
            logger.warning("Release %s not switched live: the newer release %s is already live", name, live)
            return False
        link = self.root / f".current-{uuid.uuid4().hex}"
        os.symlink(Path("releases") / name, link)
        try:
            os.replace(link, self.current)
        except OSError:
            link.unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)
        return True

    def prune(self):
        """Keep the newest ``kept`` complete releases and always the live one; finish deletions left half-done.

        Each release is renamed out of the way before it is deleted, so an interrupted prune never leaves a folder
        that looks complete but is not. Returns the names removed.
        """
        if not self.releases.is_dir():
            return []
        for path in self.releases.iterdir():
            if path.name.startswith(TRASH_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
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
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(name)
        return removed


class Release:
    """One release being written. ``path`` is the temporary folder until ``go_live``."""

    def __init__(self, site_root, *, build_id, attempt):
        self.site = site_root
        self.build_id = int(build_id)
        self.attempt = int(attempt)
        self.name = release_name(build_id=build_id, attempt=attempt)
        self.path = self.site.releases / f"{TMP_PREFIX}{self.name}"
        self.final_path = self.site.releases / self.name

    def begin(self):
        self.site.releases.mkdir(parents=True, exist_ok=True)
        self.path.mkdir()
        return self.path

    def abort(self):
        """Remove the partial release (the live site is untouched)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def go_live(self, *, pages, after_switch=None):
        """Seal the release and switch ``current`` to it. Signals are held off until the switch is done and
        ``after_switch(went_live)`` (the build recording its success) has run: after the switch, the outcome is the
        switch's, whatever comes."""
        meta = {
            "build": self.build_id,
            "attempt": self.attempt,
            "name": self.name,
            "time": timezone.now().isoformat(),
            "pages": pages,
        }
        (self.path / "release.json").write_text(json.dumps(meta, indent=2) + "\n")
        with critical_section():
            os.rename(self.path, self.final_path)
            self.path = self.final_path
            _fsync_dir(self.site.releases)
            went_live = self.site.switch_to(self.name)
            if after_switch is not None:
                after_switch(went_live)
        return went_live


def build_release(config, *, build_id, attempt, progress, before_switch=None, after_switch=None):
    """Render the whole site into a new release and make it live. Returns a ``Released``.

    ``progress`` receives ``start(total)`` and ``advance(done)``; it may raise to stop the build.
    ``before_switch()`` runs after rendering and before going live (the build's last fencing check);
    ``after_switch(released)`` right after the switch, with signals still held off.
    On any exception before the switch the partial release is removed and the exception propagates; the live site
    is unchanged. Old releases are not pruned here (``prune_releases``): that comes after the outcome is recorded.
    """
    site = SiteRoot(config.SITE_ROOT, kept=config.SITE_RELEASES_KEPT)
    site.remove_stale_partials()
    release = Release(site, build_id=build_id, attempt=attempt)
    try:
        release.begin()
    except OSError as exc:
        raise ReleaseError(f"Cannot create the release folder {release.path}: {exc}") from exc
    try:
        pages = render_site(release.path, base_url=config.SITE_URL, progress=progress)
        if before_switch is not None:
            before_switch()

        def switched(went_live):
            if after_switch is not None:
                after_switch(Released(name=release.name, pages=pages, went_live=went_live))

        went_live = release.go_live(pages=pages, after_switch=switched)
    except BaseException:
        if release.path != release.final_path:
            release.abort()
        raise
    logger.info("Release %s: %d pages, %s", release.name, pages, "live" if went_live else "kept (newer one is live)")
    return Released(name=release.name, pages=pages, went_live=went_live)


def prune_releases(config):
    """Remove old releases (``SITE_RELEASES_KEPT``); interruptible at any instant. Returns the names removed."""
    return SiteRoot(config.SITE_ROOT, kept=config.SITE_RELEASES_KEPT).prune()


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
