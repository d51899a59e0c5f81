"""Publishing a site to S3 (a moto server on loopback): the first upload and a one-page edit, side by side.

For each run a fresh SQLite database gets N published pages (bulk-inserted), then ``manage.py buildstaticsite``
runs as a child process with ``SITE_DESTINATION=s3`` against a moto S3 server in this process. A WSGI middleware in
front of the server counts the requests by kind (uploads, server-side copies, reads, lists, deletes) and the bytes
received. Then one page is edited and the build runs again. The request cost uses S3 Standard's list prices
(us-east-1, 2026): PUT, COPY, POST and LIST at $0.005 per 1,000; GET and HEAD at $0.0004 per 1,000.

    .venv/bin/python bench/publish_s3.py [--pages 10000] [--repeat 3]

Each repeat has its own database and its own prefix in the bucket; the times are medians over the repeats (each run
is printed too), the request counts those of every repeat (they are the same each time).
"""

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib

ROOT = Path(__file__).resolve().parent.parent
PRICE_PER_1000 = {"upload": 0.005, "copy": 0.005, "list": 0.005, "delete": 0.005, "read": 0.0004, "head": 0.0004}
FILL = benchlib.FILL_PAGES  # `manage.py shell -c` code: bulk-insert {count} published pages
# An update, not save(): no build request, so no launcher starts a build beside the one measured.
EDIT = """
from django.utils import timezone
from publisher.models import Page
Page.objects.filter(slug="page-0000042").update(live_body="An edited body.", published_at=timezone.now())
"""


class Counter:
    """WSGI middleware: requests by kind and bytes received."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.kinds = collections.Counter()
        self.bytes_in = 0

    def __call__(self, environ, start_response):
        method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
        if method == "PUT":
            kind = "copy" if environ.get("HTTP_X_AMZ_COPY_SOURCE") else "upload"
        elif method == "POST" and "delete" in query:
            kind = "delete"
        elif method == "GET" and (
            "list-type" in query or "prefix=" in query or not environ["PATH_INFO"].strip("/").count("/")
        ):
            kind = "list"
        else:
            kind = {"GET": "read", "HEAD": "head", "DELETE": "delete"}.get(method, method.lower())
        with self.lock:
            self.kinds[kind] += 1
            self.bytes_in += int(environ.get("CONTENT_LENGTH") or 0)
        return self.app(environ, start_response)


def start_server():
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args, **kwargs):
            pass

    counter = Counter(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, counter, True, request_handler=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, counter, f"http://127.0.0.1:{server.server_address[1]}"


def build(env):
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "manage.py", "buildstaticsite"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, their median reported")
    parser.add_argument("--quick", action="store_true", help="500 pages, one run (make bench QUICK=1)")
    args = parser.parse_args()
    if args.quick:  # smaller figures for `make bench QUICK=1`; options given explicitly win
        for name, value in {"pages": 500, "repeat": 1}.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    benchlib.exit_cleanly_on_sigterm()
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    import boto3

    server, counter, url = start_server()
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
    runs = collections.defaultdict(list)  # label -> [(seconds, kinds, bytes in)] per repeat
    for repeat in range(max(1, args.repeat)):
        for label, seconds, kinds, bytes_in in publish_twice(args.pages, url, counter, prefix=f"site-{repeat}/"):
            runs[label].append((seconds, kinds, bytes_in))
            print(f"  run {repeat + 1}: {label:<16}{seconds:>7.1f} s", flush=True)
    server.shutdown()
    rows = []
    for label, results in runs.items():
        seconds = statistics.median(r[0] for r in results)
        rows.append((label, seconds, results[-1][1], results[-1][2]))
    print(f"medians of {max(1, args.repeat)}")
    report(args, rows)


def publish_twice(pages, url, counter, *, prefix):
    """A first publish of ``pages`` pages under ``prefix`` and a one-page edit: [(label, seconds, kinds, bytes)]."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="publisher-bench-s3-") as tmp:
        env = benchlib.fresh_database("sqlite", Path(tmp))
        env.update(
            {
                "SITE_DESTINATION": "s3",
                "SITE_S3_BUCKET": "bench",
                "SITE_S3_PREFIX": prefix,
                "SITE_S3_ENDPOINT_URL": url,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        manage = [sys.executable, "manage.py", "shell", "-c"]
        subprocess.run([*manage, FILL.format(count=pages)], cwd=ROOT, env=env, check=True)
        for label, prepare in (("first publish", None), ("one-page edit", EDIT)):
            if prepare:
                subprocess.run([*manage, prepare], cwd=ROOT, env=env, check=True)
            counter.reset()
            seconds = build(env)
            rows.append((label, seconds, dict(counter.kinds), counter.bytes_in))
    return rows


def report(args, rows):
    kinds = ["upload", "copy", "read", "head", "list", "delete"]
    print(f"{args.pages:,} pages to S3 (moto {__import__('moto').__version__} on loopback), {benchlib.machine_info()}")
    print(f"{'run':<16}{'seconds':>9}" + "".join(f"{k:>9}" for k in kinds) + f"{'MiB in':>9}{'$ requests':>12}")
    for label, seconds, counts, bytes_in in rows:
        cost = sum(counts.get(k, 0) * PRICE_PER_1000.get(k, 0.005) / 1000 for k in counts)
        line = f"{label:<16}{seconds:>9.1f}" + "".join(f"{counts.get(k, 0):>9,}" for k in kinds)
        print(line + f"{bytes_in / 2**20:>9.1f}{cost:>12.4f}")
    first, edit = rows
    print(
        f"edit / first: {edit[1] / first[1]:.2f}x the time, {edit[3] / max(1, first[3]):.4f}x the bytes, "
        f"{edit[2].get('upload', 0)} uploads"
    )


if __name__ == "__main__":
    main()
