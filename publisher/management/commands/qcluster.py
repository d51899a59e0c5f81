"""``qcluster``: django-q2's command with ``publisher.worker.Cluster``, which logs its start and stops within seconds.

It takes the place of django-q2's own ``qcluster`` because ``publisher`` comes before ``django_q`` in
``INSTALLED_APPS`` (as ``whitenoise.runserver_nostatic`` does for ``runserver``).
"""

import os

from django.conf import settings
from django_q.management.commands import qcluster

from ...worker import Cluster


class Command(qcluster.Command):
    help = "Starts the worker (a django-q2 cluster that runs the sweep every minute); SIGTERM or SIGINT stops it."

    def handle(self, *args, cluster_name=None, run_once=False, **options):
        settings.SECRET_KEY  # noqa: B018  (django-q2 signs tasks with it: fail before starting anything)
        if cluster_name:
            os.environ["Q_CLUSTER_NAME"] = cluster_name
        worker = Cluster()
        if run_once:
            worker.start()
            worker.stop()
        else:
            worker.run()
