"""The admin: pages (``pages``), builds and the live site (``builds``). Importing registers both."""

from . import builds, pages  # noqa: F401
