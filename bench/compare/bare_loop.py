"""The floor: ``render_to_string`` + write for every live page, no request, no heartbeat, no index or sitemap.

DJANGO_SETTINGS_MODULE=settings.settings python -m bench.compare.bare_loop OUTPUT_DIR
"""

import sys
from pathlib import Path


def main(output):
    import django

    django.setup()
    from django.template.loader import render_to_string

    from . import pages

    output = Path(output)
    written = 0
    for row in pages.live_rows().iterator(chunk_size=2000):
        page = pages.LivePage(*row)
        folder = output / page.slug
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.html").write_text(render_to_string(pages.TEMPLATE, pages.context(page)), encoding="utf-8")
        written += 1
    return written


if __name__ == "__main__":
    main(sys.argv[1])
