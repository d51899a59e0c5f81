"""The floor: ``render_to_string`` + write for every live page, no request, no heartbeat, no index or sitemap.

DJANGO_SETTINGS_MODULE=settings.settings python -m bench.compare.bare_loop OUTPUT_DIR [--processes N]

With ``--processes N`` the rows are cut into N slices in site order and N forked processes render one slice each, side
by side, with nothing shared but the output folder: what this machine gives N independent renderers, the ceiling for
any N-way build of the same pages.
"""

import argparse
import multiprocessing
from pathlib import Path


def render(output, part=0, parts=1):
    from django.template.loader import render_to_string

    from . import pages

    rows = pages.live_rows()
    if parts > 1:
        total = rows.count()
        rows = rows[total * part // parts : total * (part + 1) // parts]
    output = Path(output)
    written = 0
    for row in rows.iterator(chunk_size=2000):
        page = pages.LivePage(*row)
        folder = output / page.slug
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.html").write_text(render_to_string(pages.TEMPLATE, pages.context(page)), encoding="utf-8")
        written += 1
    return written


def _render_part(output, part, parts):
    from django.db import connections

    connections.close_all()  # a forked process opens its own connection (an error exits it with 1)
    render(output, part, parts)


def main(output, processes=1):
    import django

    django.setup()
    if processes == 1:
        return render(output)
    from django.db import connections

    connections.close_all()
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_render_part, args=(output, n, processes)) for n in range(processes)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    failed = [child.exitcode for child in children if child.exitcode != 0]
    if failed:
        raise SystemExit(f"a render process exited {failed[0]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    main(args.output, args.processes)
