import logging

from django.core.management.base import BaseCommand, CommandError, SystemCheckError

from ... import interrupts
from ...conf import get_config
from ...progress import LogProgress
from ...release import ReleaseError, build_release

logger = logging.getLogger("publisher.build")


class Command(BaseCommand):
    help = "Render the whole static site into a new release and switch the live site to it atomically."

    def check(self, *args, **kwargs):
        try:
            super().check(*args, **kwargs)
        except SystemCheckError as exc:
            # A configuration problem: exit 2 (DESIGN §6), not the generic 1 of a failed build.
            raise CommandError(str(exc), returncode=2) from None

    def handle(self, *args, **options):
        config = get_config()
        restore = interrupts.install()
        try:
            outcome = build_release(config, build_id=0, attempt=1, progress=LogProgress())
        except interrupts.BuildInterrupted as exc:
            raise CommandError(f"Build {exc}; the partial release was removed.", returncode=exc.exit_code) from None
        except ReleaseError as exc:
            raise CommandError(f"Build failed: {exc}", returncode=1) from None
        except Exception as exc:  # the build's boundary: anything else is a failed build, logged with its traceback
            logger.exception("Build failed")
            raise CommandError(f"Build failed: {type(exc).__name__}: {exc}", returncode=1) from None
        finally:
            restore()
        self.stdout.write(f"Release {outcome.name} with {outcome.pages} pages is live at {config.SITE_ROOT}/current")
