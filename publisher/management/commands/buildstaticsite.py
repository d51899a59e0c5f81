import logging
import os
import time

from django.core.management.base import BaseCommand, CommandError, SystemCheckError

from ... import builds, interrupts, runner
from ...launchers import TOKEN_VARIABLE
from ...models import ACTIVE_STATES, Build

logger = logging.getLogger("publisher.build")


class Command(BaseCommand):
    help = (
        "Render the whole static site into a new release and switch the live site to it atomically. "
        "With --build (as a launcher starts it, the token in $PUBLISHER_BUILD_TOKEN or as --token=T): claim that "
        "build first. Without: a person at a shell "
        "takes the active slot (exit 3 if a build is active, or wait for it with --wait)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--build", type=int, help="the build to claim (started by a launcher)")
        parser.add_argument(
            "--token", help=f"the launch token of that build, written --token=T (default: ${TOKEN_VARIABLE})"
        )
        parser.add_argument("--wait", action="store_true", help="wait for an active build to end, then build")
        parser.add_argument("--poll", type=float, default=2.0, help="seconds between --wait checks")
        parser.add_argument(
            "--full",
            action="store_true",
            help="write every file of the release afresh instead of linking unchanged ones from the live release",
        )

    def execute(self, *args, **options):
        # The system checks run before handle(): keep which build this process was started for, to record there
        # why it cannot build.
        self._started_for = (options.get("build"), options.get("token") or os.environ.get(TOKEN_VARIABLE) or None)
        return super().execute(*args, **options)

    def check(self, *args, **kwargs):
        try:
            super().check(*args, **kwargs)
        except SystemCheckError as exc:
            self._record_configuration_error(exc)
            # A configuration problem: exit 2 (DESIGN §6), not the 1 of a failed build.
            raise CommandError(str(exc), returncode=2) from None

    def _record_configuration_error(self, exc):
        """Started by a launcher: put the build back in the queue with the error and tell an operator, so the
        failure shows in the admin and the banner, not only in this process's log."""
        build_id, token = getattr(self, "_started_for", (None, None))
        if build_id is None or token is None:
            return
        said = str(exc).replace("SystemCheckError: ", "").strip()
        error = f"Configuration error in the build process: {said}"
        try:
            recorded = builds.cannot_start(
                build_id,
                token=token,
                error=error,
                hint="Fix the configuration of the processes that run builds (the errors above), then the retry "
                "or the next publish builds.",
            )
        except Exception:  # the command's boundary: the database may be what is misconfigured
            logger.exception("Build #%s: could not record its configuration error on the build", build_id)
            return
        if not recorded:
            logger.warning("Build #%s: not re-queued (not launching or launched with this token)", build_id)

    def handle(self, *args, build, token, wait, poll, full=False, **options):
        if build is not None and token is None:
            # The launchers pass the token in the environment: a command line shows it, and argparse would read
            # a token starting with "-" as an option.
            token = os.environ.get(TOKEN_VARIABLE) or None
        if (build is None) != (token is None):
            raise CommandError(
                f"--build needs the build's token: ${TOKEN_VARIABLE} or --token=T.", returncode=runner.EXIT_USAGE
            )
        if build is not None and wait:
            raise CommandError("--wait is for a build started by hand, not with --build.", returncode=2)
        restore = interrupts.install()
        try:
            claim = self._claim(build, token) if build is not None else self._take_slot(wait, poll)
            if claim is None:
                return
            result = runner.run(claim, full=full)
        except interrupts.BuildInterrupted as exc:  # before the claim: nothing was written, nothing to remove
            raise CommandError(f"Build {exc} before it started.", returncode=exc.exit_code) from None
        finally:
            restore()
        if result.exit_code:
            raise CommandError(result.message, returncode=result.exit_code)
        self.stdout.write(result.message)

    def _claim(self, build_id, token):
        claim = builds.claim(build_id, token)
        if isinstance(claim, builds.Outcome):
            # Heroku can run a one-off dyno twice, and an orphan of an earlier attempt must not build: exit 0.
            self.stdout.write(f"Not building: {claim}.")
            return None
        return claim

    def _take_slot(self, wait, poll):
        announced = False
        while True:
            claim = builds.start_manual(process=builds.this_process())
            if claim is not None:
                self.stdout.write(f"Build #{claim.build_id} started by hand.")
                return claim
            active = Build.objects.filter(state__in=ACTIVE_STATES).values("pk", "state").first()
            busy = f"build #{active['pk']} is {active['state']}" if active else "another build took the slot"
            if not wait:
                raise CommandError(f"Not building: {busy}. Use --wait to build after it.", returncode=runner.EXIT_BUSY)
            if not announced:
                self.stdout.write(f"Waiting: {busy}.")
                announced = True
            time.sleep(poll)
