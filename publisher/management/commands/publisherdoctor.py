from django.core.management.base import BaseCommand, CommandError

from ...doctor import findings, needs_fixing
from ...health import Level


class Command(BaseCommand):
    help = (
        "Check that publishing works: configuration, database, the launcher's platform (Heroku: key, app, stack, "
        "dyno tier), a test write to the destination, the sweep, and the recent builds. One line per finding with "
        "what to do. Exit 0 when all is well, 1 when something needs fixing."
    )
    # The doctor reports the system checks' errors itself, with everything else; refusing to run on them would hide
    # the rest of the report exactly when it is needed.
    requires_system_checks = []

    def handle(self, *args, **options):
        found = findings()
        styles = {Level.OK: self.style.SUCCESS, Level.WARN: self.style.WARNING, Level.FAIL: self.style.ERROR}
        for finding in found:
            self.stdout.write(str(finding), styles[finding.level])
        counts = {level: sum(1 for f in found if f.level is level) for level in Level}
        summary = ", ".join(f"{counts[level]} {level.value}" for level in Level)
        if needs_fixing(found):
            raise CommandError(f"{summary}: something needs fixing.", returncode=1)
        said = "nothing needs fixing; look at the warnings" if counts[Level.WARN] else "all is well"
        self.stdout.write(f"{summary}: {said}.")
