"""Every benchmark in ``bench/``, one after another: what ``make bench`` runs (``QUICK=1`` passes ``--quick``).

    .venv/bin/python bench/run_all.py [--quick] [--only NAME,...]

Each script prints its own figures beside their anchors (the ratios it was written to show); this prints a banner
before each and, at the end, how long each took and whether it ran to the end. A benchmark is every ``bench/*.py``
except this file and ``benchlib.py``; one that has no ``--quick`` option runs with its defaults (and says so).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"benchlib.py", Path(__file__).name}


def benchmarks():
    return sorted(path for path in HERE.glob("*.py") if path.name not in NOT_BENCHMARKS)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and fewer repeats (under 5 minutes)")
    parser.add_argument("--only", default="", help="comma-separated script names (without .py) to run")
    args = parser.parse_args()
    only = {name.strip().removesuffix(".py") for name in args.only.split(",") if name.strip()}
    scripts = [path for path in benchmarks() if not only or path.stem in only]
    if only - {path.stem for path in scripts}:
        parser.error(f"no benchmark named {', '.join(sorted(only - {path.stem for path in scripts}))}")
    done = []
    started = time.monotonic()
    for path in scripts:
        argv = [sys.executable, str(path)]
        note = ""
        if args.quick:
            if '"--quick"' in path.read_text():
                argv.append("--quick")
            else:
                note = " (it has no --quick option: its defaults)"
        print(f"\n===== bench/{path.name}{' --quick' if '--quick' in argv else ''}{note}", flush=True)
        began = time.monotonic()
        code = subprocess.run(argv, cwd=HERE.parent, stdin=subprocess.DEVNULL).returncode
        done.append((path.name, time.monotonic() - began, code))
    print(f"\n===== {len(done)} benchmarks in {time.monotonic() - started:.0f} s{' (quick)' if args.quick else ''}")
    for name, seconds, code in done:
        print(f"  {name:24}{seconds:8.1f} s   {'ran to the end' if code == 0 else f'FAILED (exit {code})'}")
    return 1 if any(code for _, _, code in done) else 0


if __name__ == "__main__":
    sys.exit(main())
