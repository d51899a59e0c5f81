"""Progress reporting seam: the renderer calls ``start(total)``, ``advance(done)`` per page and ``finish(done)``.

``LogProgress`` logs now and then. Build processes use a reporter that also writes heartbeats (``publisher.builds``).
A reporter may raise from ``advance`` to stop the build.
"""

import logging
import time

logger = logging.getLogger(__name__)


class Progress:
    """Does nothing; the base of every reporter."""

    total = None
    done = 0

    def start(self, total):
        self.total = total
        self.done = 0

    def advance(self, done):
        self.done = done

    def finish(self, done):
        self.done = done
        self.total = done


class LogProgress(Progress):
    """Logs ``done / total`` at most every ``every`` seconds."""

    def __init__(self, *, every=5.0, clock=time.monotonic):
        self.every = every
        self.clock = clock
        self.last = None

    def start(self, total):
        super().start(total)
        self.last = self.clock()
        logger.info("Rendering %d pages", total)

    def advance(self, done):
        super().advance(done)
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            logger.info("Rendered %d / %d pages", done, self.total)

    def finish(self, done):
        super().finish(done)
        logger.info("Rendered %d pages", done)
