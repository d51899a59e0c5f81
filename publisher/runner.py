"""Running one claimed build in this process: heartbeats with fencing, render, switch, record the outcome."""

import logging
import threading
import time
from dataclasses import dataclass

from django.db import DatabaseError, connections

from . import builds, interrupts
from .conf import get_config
from .models import Build, BuildState
from .progress import Progress
from .release import build_release, prune_releases

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3


class BuildFenced(Exception):
    """This process no longer holds the build (cancelled, marked lost, re-launched): stop without switching."""


class HeartbeatProgress(Progress):
    """Progress that a background thread writes with the heartbeat every ``interval`` seconds, fenced.

    The renderer's ``advance`` only counts; it raises ``BuildFenced`` once the thread finds the claim gone, or once
    the heartbeat could not be written for ``give_up_after`` seconds (the sweep would judge the build lost anyway).
    """

    def __init__(self, claim, *, interval, give_up_after, clock=time.monotonic):
        self.claim = claim
        self.interval = max(0.05, float(interval))
        self.give_up_after = give_up_after
        self.clock = clock
        self.fenced = None
        self.written_done = None
        self.last_ok = clock()
        self._stop = threading.Event()
        self._thread = None

    def start(self, total):
        super().start(total)
        self.beat()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.claim.build_id}", daemon=True)
        self._thread.start()

    def advance(self, done):
        self.done = done
        if self.fenced:
            raise BuildFenced(self.fenced)

    def _run(self):
        try:
            while not self._stop.wait(self.interval):
                self.beat()
        finally:
            connections.close_all()

    def beat(self):
        """Write heartbeat and progress once; note a lost claim for the main thread."""
        done = self.done
        try:
            ok = builds.heartbeat(
                self.claim, done=done, total=self.total, moved=done != self.written_done and done is not None
            )
        except DatabaseError as exc:
            if self.clock() - self.last_ok >= self.give_up_after:
                self.fenced = f"could not write a heartbeat for {self.give_up_after:.0f}s ({exc})"
            logger.warning("Build #%s: heartbeat not written: %s", self.claim.build_id, exc)
            return False
        if not ok:
            self.fenced = "the build is no longer running under this token (cancelled, lost or re-launched)"
            return False
        if done != self.written_done:
            logger.info("Build #%s: rendered %s / %s pages", self.claim.build_id, done or 0, self.total)
        self.written_done = done
        self.last_ok = self.clock()
        return True

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


@dataclass(frozen=True)
class Result:
    exit_code: int
    message: str


def run(claim, *, full=False):
    """Render and go live under ``claim``; record the outcome; promote the next build. Returns a ``Result``.

    ``full`` (``buildstaticsite --full``) writes every file of the release afresh instead of reusing the live
    release's unchanged ones.

    SIGTERM (installed by the caller with ``interrupts.install``) records the interruption, removes the partial
    release and returns exit code 143, leaving any launch to the sweep.
    """
    config = get_config()
    progress = HeartbeatProgress(
        claim, interval=config.BUILD_HEARTBEAT_INTERVAL, give_up_after=config.BUILD_LOST_AFTER / 2
    )

    def before_switch():
        if progress.fenced or not progress.beat():
            raise BuildFenced(progress.fenced)

    switched = []

    def record_success(released):
        # Runs right after the switch, with SIGTERM held off: once the site has switched, the outcome is a success.
        switched.append(released)
        try:
            recorded = builds.finish(
                claim,
                state=BuildState.SUCCEEDED,
                release=released.name,
                pages=released.pages,
                published={
                    "destination": released.destination,
                    "went_live": released.went_live,
                    "uploaded": released.uploaded,
                    "copied": released.copied,
                    "bytes_uploaded": released.bytes_uploaded,
                    **({"recycled": released.recycled} if released.recycled else {}),
                },
            )
        except DatabaseError:
            logger.exception("Build #%s went live but its success could not be recorded", claim.build_id)
            return
        if not recorded:
            logger.warning("Build #%s went live but its outcome was already recorded elsewhere", claim.build_id)

    try:
        outcome = build_release(
            config,
            build_id=claim.build_id,
            attempt=claim.attempt,
            progress=progress,
            before_switch=before_switch,
            after_switch=record_success,
            full=full,
        )
        # Still inside the try: a SIGTERM on the way out is caught below, and the switch decides the outcome.
        return _succeeded(config, claim, outcome, progress)
    except BuildFenced as exc:
        progress.stop()
        logger.warning("Build #%s stopped without switching the site: %s", claim.build_id, exc)
        return Result(EXIT_OK, f"Build #{claim.build_id} stopped: {exc}")
    except interrupts.BuildInterrupted as exc:
        progress.stop()
        if switched:  # the signal came after the switch, on the way out: the build succeeded
            return _succeeded(config, claim, switched[0], progress)
        if not connections["default"].in_atomic_block:
            connections["default"].close()  # the signal may have cut a query short: record on a fresh connection
        recorded = builds.interrupted(claim, timeout_seconds=config.BUILD_TIMEOUT)
        logger.warning("Build #%s %s; partial release removed: %s", claim.build_id, exc, recorded)
        return Result(exc.exit_code, f"Build #{claim.build_id} {exc}; the partial release was removed.")
    except Exception as exc:  # the build's boundary: any other error fails this build, with its traceback
        progress.stop()
        logger.exception("Build #%s failed", claim.build_id)
        error = f"{type(exc).__name__}: {exc}"
        if builds.finish(claim, state=BuildState.FAILED, error=error):
            builds.report_failure(claim.build_id, f"Build #{claim.build_id} failed: {error}")
        after = builds.launch_next()
        return Result(EXIT_FAILED, f"Build #{claim.build_id} failed: {error}" + (f". {after}" if after else ""))


def _succeeded(config, claim, outcome, progress):
    live = "is live" if outcome.went_live else "was kept (a newer release is live)"
    message = f"Build #{claim.build_id}: release {outcome.name} with {outcome.pages} pages {live}"
    return Result(EXIT_OK, message + _after_success(config, claim, progress))


def _after_success(config, claim, progress):
    """Stop the heartbeat, launch the queued build, then prune old releases: off the path between the switch and
    the recorded success. A SIGTERM here changes nothing about the outcome; what is left undone is left to the
    sweep and the next build.
    """
    said = ""
    try:
        progress.stop()
        if interrupts.pending():
            raise interrupts.BuildInterrupted(interrupts.pending())
        after = builds.launch_next()
        said = f". {after.for_operators}" if after else ""
        removed = prune_releases(config)
        record_pruned(claim.build_id, removed)
        if removed:
            logger.info(
                "Build #%s: removed %d old release(s), %d file(s)",
                claim.build_id,
                len(removed),
                getattr(removed, "deleted", 0),
            )
    except interrupts.BuildInterrupted as exc:
        logger.warning(
            "Build #%s went live and was %s afterwards; the next launch and pruning are left to the sweep and the "
            "next build",
            claim.build_id,
            exc,
        )
    except Exception:  # a boundary: nothing after the switch changes the outcome (an interrupted rmtree can EBADF)
        logger.exception(
            "Build #%s went live; what came after failed and is left to the sweep and the next build", claim.build_id
        )
    return said


def record_pruned(build_id, pruned):
    """Add what this build's prune removed to its history: ``published["pruned"]`` (release names) and
    ``["deleted"]`` (objects or files). The build has ended by now, so this writes by ``pk`` and ``published`` only,
    never ``state`` (``publisher.builds`` owns every transition); a prune cut short records nothing."""
    published = Build.objects.filter(pk=build_id).values_list("published", flat=True).first() or {}
    published = {**published, "pruned": list(pruned), "deleted": int(getattr(pruned, "deleted", 0))}
    Build.objects.filter(pk=build_id).update(published=published)
