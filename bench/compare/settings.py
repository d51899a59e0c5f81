"""The project's settings plus django-distill and django-bakery, for ``bench/build_compare.py`` only.

Both tools render through Django's request machinery, so nothing here may redirect a request: HTTPS redirects are
off (``DEBUG`` is off in the benchmark). Bakery writes into ``BENCH_BUILD_DIR``; distill is given its directory on
the command line.
"""

from settings import env
from settings.settings import *  # noqa: F403
from settings.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_distill", "bakery"]
ROOT_URLCONF = "bench.compare.distill_urls"
BAKERY_VIEWS = ("bench.compare.bakery_views.PageDetailView",)
BUILD_DIR = env.string("BENCH_BUILD_DIR", "")
SECURE_SSL_REDIRECT = False
