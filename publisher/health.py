"""What is wrong with this process's configuration, for people: the status banner and the doctor read it.

The web process runs the publisher's system checks once at start (logging every error) and keeps serving the admin,
so editors can work while the banner names what is wrong and what to do. ``Finding`` is one line of the doctor's
report (``publisher.doctor``); launchers' ``diagnose()`` return them too.
"""

import enum
import logging
import threading
from dataclasses import dataclass

logger = logging.getLogger(__name__)


class Level(enum.Enum):
    """How a finding reads: all is well, someone should look, or something needs fixing."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report: its level, a sentence saying what was found, and what to do about it."""

    level: Level
    text: str
    hint: str = ""

    def __str__(self):
        line = f"{self.level.value:<4} {self.text}"
        return f"{line} {self.hint}" if self.hint else line


_lock = threading.Lock()
_messages = None  # every publisher check message of this process, computed once


def configuration_messages(*, refresh=False):
    """Every message of the publisher's system checks (tag ``publisher``) for this process, errors and warnings,
    computed once per process (``refresh`` computes them again). Silenced ids (``SILENCED_SYSTEM_CHECKS``) are left
    out. Database checks are not run here: the web process runs this before it forks its workers, and a connection
    opened there would be shared by all of them."""
    global _messages
    with _lock:
        if _messages is None or refresh:
            _messages = _run_checks()
        return list(_messages)


def configuration_problems(*, refresh=False):
    """The publisher's system-check messages of level ERROR and above for this process, computed once (``refresh``
    computes them again). A list of ``django.core.checks.CheckMessage``."""
    from django.core import checks

    return [message for message in configuration_messages(refresh=refresh) if message.level >= checks.ERROR]


def _run_checks():
    from django.core import checks

    from .checks import TAG

    try:
        return [message for message in checks.run_checks(tags=[TAG]) if not message.is_silenced()]
    except Exception as exc:  # the boundary: a check that crashes must not stop the web process or the banner
        logger.exception("The publisher's system checks crashed")
        return [
            checks.Critical(
                f"The publisher's system checks crashed ({type(exc).__name__}: {exc}).",
                hint="Run `manage.py check` for the traceback.",
                id="publisher.E000",
            )
        ]


def log_configuration_problems():
    """Run the checks (once) and log each message with its hint: errors at ERROR, warnings at WARNING.

    Called by ``settings/wsgi.py`` when the web process starts. Returns the number of errors."""
    from django.core import checks

    messages = configuration_messages()
    for message in messages:
        level = logging.ERROR if message.level >= checks.ERROR else logging.WARNING
        hint = f" Hint: {message.hint}" if message.hint else ""
        logger.log(level, "Configuration %s: %s%s", message.id, message.msg, hint)
    errors = sum(1 for message in messages if message.level >= checks.ERROR)
    if errors:
        logger.error(
            "%d configuration error(s): the admin keeps serving, but builds may not run until they are fixed "
            "(`manage.py publisherdoctor` says more).",
            errors,
        )
    return errors
