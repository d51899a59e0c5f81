"""Peak memory and time of `buildstaticsite` by hand at 1,000, 10,000 and 100,000 published pages (SQLite).

Each size gets a fresh SQLite database and SITE_ROOT in a temporary directory; the pages are bulk-inserted (no build
requests), then `manage.py buildstaticsite` runs as a child process and its peak resident memory (ru_maxrss) and wall
time are printed side by side with the ratios to the smallest size.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib

ROOT = Path(__file__).resolve().parent.parent
FILL = benchlib.FILL_PAGES  # `manage.py shell -c` code: bulk-insert {count} published pages


def measure(count, workdir):
    env = benchlib.fresh_database("sqlite", workdir / str(count))
    env["SITE_ROOT"] = str(workdir / str(count) / "site")
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", FILL.format(count=count)], cwd=ROOT, env=env, check=True
    )
    # ru_maxrss of RUSAGE_CHILDREN is the largest of all children so far: run each build from its own small parent.
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "subprocess.run([sys.executable, 'manage.py', 'buildstaticsite'], check=True, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    seconds, maxrss_kib = out.stdout.split()
    return float(seconds), int(maxrss_kib) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--quick", action="store_true", help="1,000 and 3,000 pages (make bench QUICK=1)")
    args = parser.parse_args()
    if args.quick:  # smaller figures for `make bench QUICK=1`; options given explicitly win
        for name, value in {"sizes": "1000,3000"}.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    benchlib.ensure_project_on_path()
    benchlib.exit_cleanly_on_sigterm()
    sizes = [int(s) for s in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    rows = []
    try:
        for count in sizes:
            print(f"{count:,} pages: filling, building ...", flush=True)
            rows.append((count, *measure(count, workdir)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nbuildstaticsite by hand, SQLite; Python {sys.version.split()[0]}, nproc={os.cpu_count()}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'pages':>10} {'peak RSS MiB':>13} {'× smallest':>11} {'seconds':>9} {'pages/s':>9}")
    base_rss = rows[0][2]
    for count, seconds, rss in rows:
        print(f"{count:>10,} {rss:>13.1f} {rss / base_rss:>10.2f}× {seconds:>9.1f} {count / seconds:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
