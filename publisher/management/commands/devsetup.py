import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

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
        if not Page.objects.exists():
            with transaction.atomic():
                for slug, title, body in DEMO_PAGES:
                    Page(slug=slug, title=title, body=body).publish()
            self.stdout.write(f"Created {len(DEMO_PAGES)} demo pages.")
        self.stdout.write(
            f"\n  Admin:  http://127.0.0.1:{port}/admin/   user {username!r}, password {password!r}\n"
            f"  Site:   http://127.0.0.1:{port}/site/    (after a build: "
            f".venv/bin/python manage.py buildstaticsite)\n"
        )
