"""SIGTERM/SIGINT handling for a build process.

Heroku sends SIGTERM and, 30 seconds later, SIGKILL. A build turns SIGTERM into ``BuildInterrupted`` raised in
the main thread at once, so the partial release is removed and the outcome recorded well within the grace period.
Inside ``critical_section()`` (the rename and the switch of ``current``) the signal is only noted: a release that
is going live finishes going live.
"""

import signal
from contextlib import contextmanager


class BuildInterrupted(BaseException):
    """The process was asked to stop. A ``BaseException`` so that no ``except Exception`` swallows it."""

    def __init__(self, signum):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self):
        return 128 + self.signum


_deferred = 0
_pending = None


def _handler(signum, frame):
    global _pending
    _pending = signum
    if not _deferred:
        raise BuildInterrupted(signum)


def install():
    """Route SIGTERM and SIGINT to ``BuildInterrupted`` (main thread only). Returns a function that undoes it."""
    global _pending
    _pending = None
    previous = {signum: signal.signal(signum, _handler) for signum in (signal.SIGTERM, signal.SIGINT)}

    def restore():
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def pending():
    """The signal received during a critical section (and not acted on), or ``None``."""
    return _pending


@contextmanager
def critical_section():
    """Hold off ``BuildInterrupted`` while the block runs: a release that is going live finishes going live."""
    global _deferred
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1
