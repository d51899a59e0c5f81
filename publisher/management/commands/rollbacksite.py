from django.core.management.base import BaseCommand, CommandError

from ...destinations import DestinationError, ReleaseNotFound, get_destination


class Command(BaseCommand):
    help = (
        "Make the sealed release NAME live (one pointer write; older releases allowed). "
        "Exit 0 switched; 1 no such sealed release; 2 usage. Without NAME, list the sealed releases."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", nargs="?", help="a release name, as listed without arguments")

    def handle(self, *args, name, **options):
        destination = get_destination()
        if not name:
            live = destination.live_release()
            for release in destination.releases():
                marker = "* " if live and live.release == release else "  "
                self.stdout.write(f"{marker}{release}")
            return
        try:
            live = destination.rollback(name)
        except ReleaseNotFound as exc:
            raise CommandError(str(exc), returncode=1) from None
        except DestinationError as exc:
            raise CommandError(f"Could not roll back: {exc}", returncode=1) from None
        self.stdout.write(f"Release {live.release} is live on {destination.describe()}.")
