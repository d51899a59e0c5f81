import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.urls import reverse

from ...builds import collect_outcomes
from ...conf import get_config
from ...models import Page

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
        build = f"build #{outcome.build_id}" if outcome.build_id else "a build"
        then = (
            f"The site appears at {site_url} when it finishes; no need to build by hand."
            if outcome.ok
            else f"Builds in the admin show how it goes: {builds_url}"
        )
        return f"{created}; publishing them requested {build}.\n  {outcome.for_operators}\n  {then}"
