"""What launchers and destinations share: a backend chosen by a dotted path in a setting and built with options.

Like Django's email and cache backends: the class is loaded with ``import_string`` (a failure becomes a configuration
error that says what was looked for), unknown option names are refused by name, and settings are read when the
backend is built, never at import.
"""

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string


class Backend:
    #: Short name recorded where it matters (``Build.launcher``).
    name = "base"
    #: Accepted option names and their defaults.
    option_defaults = {}

    def __init__(self, **options):
        from .conf import get_config

        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            raise ImproperlyConfigured(
                f"{type(self).__name__} does not accept option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(self.option_defaults)) or 'none'}."
            )
        self.options = {**self.option_defaults, **options}
        self.config = get_config()


def load_backend(backend, base, *, kind, expected):
    """The class at dotted path ``backend``, a subclass of ``base``; ``ImproperlyConfigured`` otherwise.
    ``kind`` ("launcher") and ``expected`` ("'local', 'heroku'") word the message."""
    try:
        cls = import_string(backend)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"Unknown {kind} {backend!r}: expected {expected} or the dotted path of a {kind} class ({exc})."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ImproperlyConfigured(
            f"{kind.capitalize()} {backend!r} is not a subclass of {base.__module__.rsplit('.', 1)[0]}.{base.__name__}."
        )
    return cls
