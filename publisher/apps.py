from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.db.models.signals import post_migrate


class PublisherAdminConfig(admin_apps.AdminConfig):
    """``django.contrib.admin`` with the publisher's admin site (its "View site" is the live site).

    Named in ``INSTALLED_APPS`` in place of ``django.contrib.admin``; ``default = False`` keeps ``"publisher"``
    resolving to ``PublisherConfig``.
    """

    default = False
    default_site = "publisher.sites.PublisherAdminSite"


class PublisherConfig(AppConfig):
    default = True
    name = "publisher"
    verbose_name = "Publisher"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks, receivers  # noqa: F401  (connects signals, registers checks)
        from .sweep import ensure_schedule

        post_migrate.connect(ensure_schedule, sender=self, dispatch_uid="publisher.ensure_schedule")
