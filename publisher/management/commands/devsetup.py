import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.urls import reverse

from ... import deferred
from ...builds import Outcome, collect_outcomes, launcher_for
from ...conf import get_config
from ...models import Build, BuildState, Page

DEMO_PAGES = [
    ("welcome", "Welcome", "This site is built by publisher.\n\nEdit pages in the admin and press Publish."),
    ("about", "About us", "We write pages in Django admin; a build turns them into a static site."),
    ("contact", "Contact", "Write to us at hello@example.com."),
]


class Command(BaseCommand):
    help = "Development only: create demo pages and an admin user if missing, and print how to log in."

    def add_arguments(self, parser):
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))
        parser.add_argument("--username", default="admin")

    def handle(self, *args, port, username, **options):
        if not settings.DEBUG:
            raise CommandError("devsetup creates a known admin login and runs only with DEBUG on.", returncode=2)
        password = os.environ.get("DEV_ADMIN_PASSWORD") or "admin"
        users = get_user_model()
        if not users.objects.filter(username=username).exists():
            users.objects.create_superuser(username, f"{username}@example.com", password)
            self.stdout.write(f"Created the development admin {username!r}.")
        site_url = get_config().SITE_URL
        builds_url = f"http://127.0.0.1:{port}{reverse('admin:publisher_build_changelist')}"
        if Page.objects.exists():
            self.stdout.write(
                f"Demo pages exist already; nothing was published.\n"
                f"  The site at {site_url} shows the last build that went live; Builds in the admin: {builds_url}"
            )
        else:
            self.stdout.write(self.publish_demo_pages(site_url=site_url, builds_url=builds_url))
        self.stdout.write(
            f"\n  Admin:  http://127.0.0.1:{port}/admin/   user {username!r}, password {password!r}\n"
            f"  Site:   {site_url}\n"
        )

    def publish_demo_pages(self, *, site_url, builds_url):
        """Publish the demo pages (one build request); say what the build system did with it."""
        with collect_outcomes() as outcomes:
            with transaction.atomic():
                for slug, title, body in DEMO_PAGES:
                    Page(slug=slug, title=title, body=body).publish()
            # The request is dispatched when the transaction commits, here, inside collect_outcomes.
        created = f"Created {len(DEMO_PAGES)} demo pages"
        if not outcomes:
            return f"{created}; the build they requested is launched by the worker within a minute: {builds_url}"
        outcome = outcomes[-1]
        if outcome.kind == "starting" and deferred.wait(timeout=deferred.EXIT_WAIT):
            # The launch ran after the commit, in a thread: say where it went, as a publish in the admin would.
            outcome = where_request_went_for(outcome.build_id) or outcome
        build = f"build #{outcome.build_id}" if outcome.build_id else "a build"
        then = (
            f"The site appears at {site_url} when it finishes; no need to build by hand."
            if outcome.ok
            else f"Builds in the admin show how it goes: {builds_url}"
        )
        return f"{created}; publishing them requested {build}.\n  {outcome.for_operators}\n  {then}"


def where_request_went_for(build_id):
    """The launched build in words ("Build #1 has started ... (launched on pid 42 on laptop)"), or None."""
    build = Build.objects.filter(pk=build_id).values("state", "handle", "launcher", "manual", "error").first()
    if build is None:
        return None
    if build["state"] in (BuildState.LAUNCHED, BuildState.RUNNING, BuildState.SUCCEEDED):
        where = launcher_for(build).describe(build["handle"]) if build["handle"] else "its launcher"
        message = f"Build #{build_id} has started; your change is live when it finishes."
        return Outcome("launched", message, build_id, detail=f"launched on {where}")
    if build["state"] == BuildState.QUEUED and build["error"]:
        return Outcome(
            "launch_failed", f"Build #{build_id} could not start yet.", build_id, ok=False, detail=build["error"]
        )
    return None
