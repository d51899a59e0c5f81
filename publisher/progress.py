"""Progress reporting seam: the renderer calls ``start(total)``, ``advance(done)`` per page and ``finish(done)``.

Build processes use ``publisher.runner.HeartbeatProgress``, which writes heartbeats and logs the figures.
A reporter may raise from ``advance`` to stop the build.
"""


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
