"""The launcher contract (DESIGN §4). Subclasses implement ``launch``, ``status``, ``stop`` and ``check``, and may
implement ``diagnose`` (the doctor's look at the platform)."""

from ..backends import Backend

#: The build process reads its launch token from this environment variable. A token is never put on a command line:
#: one starting with ``-`` would be read by argparse as an option, and platforms show commands in logs and listings.
TOKEN_VARIABLE = "PUBLISHER_BUILD_TOKEN"
REDACTED = "********"

STARTING, RUNNING, GONE, UNKNOWN = "starting", "running", "gone", "unknown"
STATUSES = (STARTING, RUNNING, GONE, UNKNOWN)


class LaunchError(Exception):
    """A launch, status or stop call failed.

    ``status`` is the HTTP status (or ``None``), ``error_id`` and ``platform_message`` are the platform's error id
    and message, ``request_id`` its request id, ``retryable`` whether trying again later can help, and
    ``needs_operator`` whether a person must act (a bad key, a missing app) so the failure is reported at once.
    Never carries a secret.
    """

    def __init__(
        self,
        message,
        *,
        status=None,
        error_id=None,
        platform_message=None,
        request_id=None,
        retryable=True,
        needs_operator=False,
        hint="",
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_id = error_id
        self.platform_message = platform_message
        self.request_id = request_id
        self.retryable = retryable
        self.needs_operator = needs_operator
        #: What a person can do about it, for the report sent when the failure keeps coming back.
        self.hint = hint

    def __str__(self):
        return self.message

    def redacted(self, secrets):
        """This error with every secret in ``secrets`` blanked out of its texts, whatever the platform answered."""
        for name in ("message", "error_id", "platform_message", "request_id", "hint"):
            setattr(self, name, redact(getattr(self, name), secrets))
        self.args = (self.message,)
        return self


def redact(text, secrets):
    """``text`` with each non-empty secret replaced by ``********``; ``None`` stays ``None``."""
    if text is None:
        return None
    text = str(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


class BaseLauncher(Backend):
    """Starts ``buildstaticsite --build ID`` (token in ``PUBLISHER_BUILD_TOKEN``) somewhere; returns a handle at once.

    Options come as keyword arguments (``PUBLISHER["LAUNCHER"]["OPTIONS"]``); names not in ``option_defaults``
    are refused. Settings are read here, when the launcher is built, never at import.
    """

    #: Whether every call answers at once, from memory (the recording double of the tests). Then the work that
    #: calls the launcher after a publish or a cancel runs in the caller, so a test sees it done when the call
    #: returns. A launcher that talks to a platform or waits for a process leaves it ``False``: that work then runs
    #: in a background thread after the response (``publisher.deferred``), and an editor never waits for it.
    answers_at_once = False

    def launch(self, *, build_id, token):
        """Start the build detached; return a JSON-able handle. Raise ``LaunchError`` on failure."""
        raise NotImplementedError(f"{type(self).__name__} must implement launch()")

    def status(self, handle):
        """One of ``starting``, ``running``, ``gone``, ``unknown`` for a handle returned by ``launch``."""
        raise NotImplementedError(f"{type(self).__name__} must implement status()")

    def stop(self, handle):
        """Stop the process behind the handle (already gone is fine)."""
        raise NotImplementedError(f"{type(self).__name__} must implement stop()")

    def check(self):
        """A list of ``django.core.checks`` messages about this launcher's configuration."""
        raise NotImplementedError(f"{type(self).__name__} must implement check()")

    def diagnose(self):
        """Whether this launcher can reach its platform, for ``manage.py publisherdoctor``: a list of
        ``publisher.health.Finding``. It may call the platform (with the configured timeouts) but never starts a
        build and never names a secret. The default has nothing to ask beyond ``check()``: an empty list."""
        return []

    def describe(self, handle):
        """A few words naming where the build runs, for messages ("run.4821", "pid 1234")."""
        return str(handle)

    def this_process(self):
        """The handle of the process calling this, in this launcher's form, or ``None`` when it cannot tell.

        A build records it at its claim, so the sweep can judge a build whose launching process died before it
        recorded the handle that ``launch`` returned.
        """
        return None

    def not_started_hint(self, handle):
        """What a person can check when builds launched here keep ending before they claim (DESIGN §3)."""
        return "The build process ended before it started building: look at its output for the error."

    @staticmethod
    def build_arguments(*, build_id):
        """The arguments after ``python`` that run one build; the token goes in ``build_environment``."""
        return ["manage.py", "buildstaticsite", "--build", str(int(build_id))]

    @staticmethod
    def build_environment(*, token):
        """The variables the build process needs besides the app's own configuration."""
        return {TOKEN_VARIABLE: str(token)}
