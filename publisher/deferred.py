"""Work that must not hold up the caller's request: run in a daemon thread once the caller's transaction commits.

A publish in the admin returns once its request is attached to a build; the launch (a Heroku API call) happens
here. A cancel returns at once; stopping the build's process (a Heroku API call, or waiting for a local process
group to exit) and launching the queued build happen here. If the process dies first (a web worker recycled), the
work is lost: whatever it was for must be safe to finish elsewhere, as the sweep launches queued builds, re-queues
builds stuck in ``launching`` and finishes cancels.

``defer(fn, *args, inline=True)`` runs ``fn`` at once in the caller instead, for work that answers at once anyway
(the recording launcher of the tests: a test then sees the work done when the call returns, even inside the
transaction a test runs in, whose on-commit callbacks never run).
"""

import atexit
import logging
import threading

from django.db import connections, transaction

logger = logging.getLogger(__name__)

_threads = set()
_lock = threading.Lock()


def defer(fn, *args, inline=False):
    """Run ``fn(*args)`` in a daemon thread started after the current transaction commits (at once outside one).

    The thread closes its database connections when done; an error in ``fn`` is logged with its traceback.
    """
    if inline:
        fn(*args)
        return
    transaction.on_commit(lambda: _start(fn, args), robust=True)


def _start(fn, args):
    name = getattr(fn, "__name__", "work")
    thread = threading.Thread(target=_run, args=(fn, args), name=f"publisher-deferred-{name}", daemon=True)
    with _lock:
        _threads.add(thread)
    thread.start()


def _run(fn, args):
    try:
        fn(*args)
    except Exception:  # the thread's boundary: nothing above it would log the error
        logger.exception("Deferred %s%r failed", getattr(fn, "__name__", fn), args)
    finally:
        connections.close_all()  # this thread's connections only: they are thread-local
        with _lock:
            _threads.discard(threading.current_thread())


def wait(timeout=None):
    """Wait for every deferred thread started so far (tests; a process that is about to exit). True when all ended."""
    with _lock:
        running = list(_threads)
    for thread in running:
        thread.join(timeout)
    return not any(thread.is_alive() for thread in running)


#: How long a process that is exiting waits for its deferred work (a launch is bounded by HEROKU_TOTAL_TIMEOUT).
EXIT_WAIT = 40


@atexit.register
def _finish_before_exit():
    """A command that published (``devsetup``, a script in ``manage.py shell``) must not exit with its launch half
    done: daemon threads are dropped at exit, and the build would wait for the sweep. Wait for them, bounded."""
    with _lock:
        running = len(_threads)
    if running:
        logger.info("Waiting up to %ss for %s deferred task(s) (a launch) before exiting", EXIT_WAIT, running)
        wait(timeout=EXIT_WAIT)
