"""System checks (``manage.py check``; run at startup of runserver, migrate and the build command)."""

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

E001 = "publisher.E001"  # the launcher cannot be loaded
E002 = "publisher.E002"  # settings.PUBLISHER is malformed


@checks.register()
def check_launcher(app_configs=None, **kwargs):
    """The configured launcher loads, and reports its own configuration problems."""
    from .conf import get_config
    from .launchers import get_launcher

    try:
        get_config()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint="Fix settings.PUBLISHER (see DESIGN §1).", id=E002)]
    try:
        launcher = get_launcher()
    except ImproperlyConfigured as exc:
        return [
            checks.Error(
                str(exc),
                hint="Set LAUNCHER to 'local', 'heroku', or the dotted path of a launcher class.",
                id=E001,
            )
        ]
    return list(launcher.check())
