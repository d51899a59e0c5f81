from django.core.management.base import BaseCommand, CommandError

from ... import builds


class Command(BaseCommand):
    help = "Record a build request and dispatch it now. Exit 0 once recorded; a failed launch is a warning."

    def add_arguments(self, parser):
        parser.add_argument("--reason", default="requested from the command line", help="why (kept with the request)")

    def handle(self, *args, reason, **options):
        reason = reason.strip()
        if not reason:
            raise CommandError("--reason must not be blank.", returncode=2)
        outcome = builds.request_build(reason)
        if outcome.ok:
            self.stdout.write(outcome.for_operators)
        else:
            self.stderr.write(self.style.WARNING(f"Warning: {outcome.for_operators}"))
