import logging

from django.core.management.base import BaseCommand, CommandError

from ...sweep import sweep

logger = logging.getLogger("publisher.sweep")


class Command(BaseCommand):
    help = (
        "One pass of the safety-net sweep: attach forgotten requests, launch due builds, re-queue builds that never "
        "started, mark lost builds, report stalls and time-outs. For Heroku Scheduler (every 10 minutes) when there "
        "is no worker dyno."
    )

    def handle(self, *args, **options):
        try:
            done = sweep()
        except Exception as exc:  # the command's boundary: the pass itself crashed (exit 1)
            logger.exception("The sweep pass crashed")
            raise CommandError(f"The sweep pass crashed: {type(exc).__name__}: {exc}") from None
        self.stdout.write(f"Sweep: {done}")
