"""Typed readers for environment variables (DESIGN §1).

Durations are integer seconds; booleans accept 1/0, true/false, yes/no, on/off; lists are comma-separated.
A malformed value raises ``ImproperlyConfigured`` naming the variable, so a typo stops startup with a clear
message instead of silently falling back to a default.
"""

import os

from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def raw(name, default=None):
    """The variable's value stripped of surrounding blanks, or ``default`` when unset or empty."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip()


def string(name, default=""):
    return raw(name, default)


def boolean(name, default=False):
    value = raw(name)
    if value is None:
        return default
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {value!r}.")


def integer(name, default):
    value = raw(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number of seconds or a count; got {value!r}.") from None


def strings(name, default=()):
    value = raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]
