"""What ``bench/build_compare.py`` runs besides ``buildstaticsite``: django-distill's URLconf, django-bakery's view,
a bare render-and-write loop, and the settings that install the two tools (bench-only, never runtime code)."""
