#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")
    from django.core.management import execute_from_command_line

    from settings.env import EXIT_CODE, ConfigurationError, report

    try:
        execute_from_command_line(sys.argv)
    except ConfigurationError as error:  # a malformed variable: its message, not a traceback
        report(error, sys.stderr)
        sys.exit(EXIT_CODE)


if __name__ == "__main__":
    main()
