"""Typed readers for environment variables (DESIGN §1).

Durations are integer seconds; booleans accept 1/0, true/false, yes/no, on/off; lists are comma-separated.
A malformed value raises ``ConfigurationError`` (an ``ImproperlyConfigured``) naming the variable, so a typo stops
startup with a clear message instead of silently falling back to a default. ``manage.py`` and ``settings/wsgi.py``
print that message alone and exit 2 (DESIGN §6: usage or configuration).
"""

import os
from email.utils import parseaddr
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import EmailValidator

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
EXIT_CODE = 2


class ConfigurationError(ImproperlyConfigured):
    """A variable (or a combination of them) is unusable; the message names the variable and says what it needs."""


def report(error, stream):
    """Write ``error`` for a person at a terminal or reading a platform's log: one line, no traceback."""
    stream.write(f"Configuration error: {error}\n")
    stream.flush()


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
    raise ConfigurationError(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {value!r}.")


def integer(name, default):
    value = raw(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number of seconds or a count; got {value!r}.") from None


def strings(name, default=()):
    value = raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def email(name, default=""):
    """An address such as ``ops@example.com`` or ``Ops <ops@example.com>``, checked with Django's EmailValidator."""
    value = raw(name)
    if value is None:
        return default
    _check_address(name, value, expected="an email address (ops@example.com or Ops <ops@example.com>)")
    return value


def emails(name):
    """A comma-separated list of addresses, each checked; as Django's ``ADMINS``: ``[(name or address, address)]``."""
    pairs = []
    for item in strings(name):
        address = _check_address(
            name, item, expected="email addresses (ops@example.com or Ops <ops@example.com>), comma-separated"
        )
        pairs.append((parseaddr(item)[0] or address, address))
    return pairs


def _check_address(name, value, *, expected):
    address = parseaddr(value)[1]
    try:
        EmailValidator()(address)
    except ValidationError:
        raise ConfigurationError(f"{name} must be {expected}; got {value!r}.") from None
    return address


def url(name, default):
    """An absolute http(s) URL with a host, such as ``https://www.example.org/``."""
    value = raw(name)
    if value is None:
        return default
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{name} must be an absolute http:// or https:// URL with a host, such as https://www.example.org/; "
            f"got {value!r}."
        )
    return value
