"""The worker (``manage.py qcluster``): django-q2's cluster, told when it has started and able to stop in a second.

django-q2 1.11 has two ways of outliving honcho's 5 s between SIGTERM and SIGKILL (``make run``, Ctrl-C):

- It stops inside its SIGTERM/SIGINT handler: ``Event.set()`` on the stop event, then it joins the sentinel.
  ``multiprocessing``'s ``Event.set()`` waits until every process sleeping on the event has woken. honcho (and Heroku)
  signal the whole process group, so the sentinel, whose SIGTERM is the default action, dies while it sleeps on that
  event, and the handler waits for it for ever. ``Cluster`` below only notes the signal and stops from the main loop,
  and stops waiting as soon as the sentinel is gone.
- When only the main process is signalled (Ctrl-C in a terminal: the cluster's children ignore SIGINT), the stop is
  orderly, and the sentinel waits for the pusher, which sleeps ``poll`` seconds (``Q_POLL``, 10) inside the ORM
  broker's ``dequeue`` whenever the queue is empty. ``ORMBroker`` below reads the queue as often, but sleeps in short
  steps in between and returns to the pusher after each, so the pusher sees the stop within ``STEP``.
"""

import logging
import signal
import threading
import time

from django.utils import timezone
from django_q import cluster
from django_q.brokers.orm import ORM
from django_q.conf import Conf

logger = logging.getLogger(__name__)

STEP = 0.5  # seconds: the longest the pusher sleeps without looking at its stop event
SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


class ORMBroker(ORM):
    """django-q2's ORM broker (``Q_CLUSTER["broker_class"]``) whose ``dequeue`` never sleeps longer than ``STEP``.

    The queries are those of ``ORM.dequeue`` in django-q2 1.11: select due tasks, claim each with a conditional
    update of its lock. After a look finds nothing due, the next one waits ``poll`` seconds (one query per
    ``Q_POLL`` when idle, as before).
    """

    def __init__(self, list_key=None):
        super().__init__(list_key=list_key)
        self._next_look = 0.0

    def dequeue(self):
        wait = self._next_look - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, STEP))
            return None
        tasks = self.get_connection().filter(key=self.list_key, lock__lt=timezone.now())[: Conf.BULK]
        claimed = [
            (task.pk, task.payload)
            for task in tasks
            if self.get_connection().filter(id=task.id, lock=task.lock).update(lock=self.timeout(task))
        ]
        if not claimed:
            self._next_look = time.monotonic() + Conf.POLL
        return claimed or None


class Cluster(cluster.Cluster):
    """django-q2's cluster, stopped from the main loop (``run``) rather than from inside a signal handler."""

    def __init__(self, *args, **kwargs):
        self.stop_signal = None
        super().__init__(*args, **kwargs)  # installs sig_handler for SIGTERM and SIGINT

    def sig_handler(self, signum, frame):
        self.stop_signal = signum

    def run(self):
        """Start the cluster, log it, wait for SIGTERM or SIGINT (or the sentinel's end), then stop it."""
        try:
            self.start()
        except RuntimeError:
            if self.stop_signal is None:
                raise
            # Stopped while starting: the sentinel took the same signal (default action) and is gone.
        if self.stop_signal is None and self.sentinel.is_alive():
            logger.info(
                "Worker started: django-q2 cluster %r, %s worker process(es), %s, checking for tasks every %s s",
                Conf.CLUSTER_NAME,
                Conf.WORKERS,
                self.broker_info(),
                Conf.POLL,
            )
        while self.stop_signal is None and self.sentinel.is_alive():
            time.sleep(0.1)
        if self.stop_signal is None:
            logger.warning("Worker stopping: its sentinel process exited with code %s", self.sentinel.exitcode)
        else:
            logger.info("Worker stopping (%s)", SIGNAL_NAMES.get(self.stop_signal, self.stop_signal))
        # Cluster.stop sets the stop event and joins the sentinel. If the sentinel died (the whole group was
        # signalled), setting the event never returns: stop in a thread, and stop waiting once the sentinel is gone.
        stopper = threading.Thread(target=self.stop, name="qcluster-stop", daemon=True)
        stopper.start()
        while stopper.is_alive() and self.sentinel.is_alive():
            stopper.join(0.1)
        if self.sentinel.exitcode == 0:  # an orderly stop: let the thread finish its last lines
            stopper.join(1)
        logger.info("Worker stopped")

    @staticmethod
    def broker_info():
        return f"ORM broker on the {Conf.ORM!r} database" if Conf.ORM else "broker " + str(Conf.BROKER_CLASS)
