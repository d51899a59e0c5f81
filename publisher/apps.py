from django.apps import AppConfig
from django.db.models.signals import post_migrate


class PublisherConfig(AppConfig):
    name = "publisher"
    verbose_name = "Publisher"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks, receivers  # noqa: F401  (connects signals, registers checks)
        from .sweep import ensure_schedule

        post_migrate.connect(ensure_schedule, sender=self, dispatch_uid="publisher.ensure_schedule")
