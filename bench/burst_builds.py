"""Builds caused by 200 publishes from 8 processes (8 × 25) during one running build, on PostgreSQL and SQLite.

    .venv/bin/python bench/burst_builds.py [--processes 8] [--publishes 25] [--rounds 3] [--backends sqlite,postgres]

Per round, on a cleared database: a manual build takes the active slot (``builds.start_manual``) and stays
``running``; 8 child processes (``manage.py shell -c``, like ``tests/test_concurrency.py``) import Django, connect,
say they are ready, and wait for a go file; then each publishes 25 new pages. Afterwards the parent counts the builds
created beyond the running one (one-build-per-publish would make 200; coalescing should make 1, queued) and the
publish requests attached to them. Wall time runs from the go file to the last child's last publish.

Each database runs in its own coordinator process configured only through the environment (``settings.settings``,
temporary SQLite file / SITE_ROOT / VAR_DIR, the recording launcher, DEBUG off, publisher logging at WARNING).
PostgreSQL is a throwaway local cluster with fsync=off (see ``benchlib``); without its binaries only SQLite runs.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

SCRIPT = str(Path(__file__).resolve())
LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
CHILD_PREFIX = "BENCH-CHILD "
MANUAL_REASON = "manual build (bench: the running build)"

CHILD = """
import json, os, time
from django.db import connection
from publisher.launchers import recording
from publisher.models import Page
connection.ensure_connection()
open({ready!r}, "w").close()
deadline = time.monotonic() + 300
while not os.path.exists({go!r}):
    if time.monotonic() > deadline or not os.path.isdir(os.path.dirname({go!r})):
        raise SystemExit("no go signal: the benchmark was stopped")
    time.sleep(0.001)
started = time.time()
durations = []
for n in range({count}):
    t = time.perf_counter()
    Page(slug=f"r{round}-w{worker}-{{n}}", title=f"Page {worker}.{{n}}", body="Burst page.").publish()
    durations.append(time.perf_counter() - t)
ended = time.time()
print({prefix!r} + json.dumps({{"started": started, "ended": ended, "durations": durations,
                                "launches": len(recording.launches)}}), flush=True)
"""


# --- In the coordinator: one database ------------------------------------------------------------------------------


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def one_round(number, processes, publishes, workdir):
    from django.db import connection

    from publisher import builds
    from publisher.models import Build, BuildRequest, BuildState, Page

    BuildRequest.objects.all().delete()
    Build.objects.all().delete()
    Page.objects.all().delete()
    running = builds.start_manual(process={"host": "bench", "pid": os.getpid()}, reason=MANUAL_REASON)
    if running is None:
        raise RuntimeError("could not start the manual build")

    rounddir = Path(workdir) / f"round-{number}"
    rounddir.mkdir(parents=True)
    go = rounddir / "go"
    children = []
    for worker in range(processes):
        code = CHILD.format(
            ready=str(rounddir / f"ready-{worker}"),
            go=str(go),
            count=publishes,
            round=number,
            worker=worker,
            prefix=CHILD_PREFIX,
        )
        children.append(
            subprocess.Popen(
                [benchlib.PYTHON, "manage.py", "shell", "-c", code],
                cwd=benchlib.ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    try:
        wait_for(lambda: len(list(rounddir.glob("ready-*"))) == processes, 180, "the children to be ready")
        connection.close()  # the coordinator holds no connection (nor SQLite lock) while the children publish
        go_at = time.time()
        go.touch()
        outputs = [child.communicate(timeout=600)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    reports, errors, warnings = [], 0, 0
    for child, out in zip(children, outputs, strict=True):
        for line in out.splitlines():
            if line.startswith(CHILD_PREFIX):
                reports.append(json.loads(line[len(CHILD_PREFIX) :]))
            elif "Traceback" in line or "Error calling" in line or " ERROR " in line:
                errors += 1
            elif " WARNING " in line:
                warnings += 1
        if child.returncode != 0:
            errors += 1
            print(f"  | child exited {child.returncode}:\n{out[-3000:]}")
    durations = [d for r in reports for d in r["durations"]]
    wall = max(r["ended"] for r in reports) - go_at if reports else float("nan")

    caused = Build.objects.exclude(pk=running.build_id)
    publish_requests = BuildRequest.objects.exclude(reason=MANUAL_REASON)
    by_build = {}
    for build_id in publish_requests.values_list("build_id", flat=True):
        by_build[build_id] = by_build.get(build_id, 0) + 1
    return {
        "publishes": len(durations),
        "builds_caused": caused.count(),
        "caused_states": sorted(caused.values_list("state", flat=True)),
        "running_state": Build.objects.get(pk=running.build_id).state,
        "requests": publish_requests.count(),
        "requests_on_queued": publish_requests.filter(build__state=BuildState.QUEUED).count(),
        "requests_unattached": publish_requests.filter(build__isnull=True).count(),
        "requests_by_build": len(by_build),
        "wall_s": wall,
        "publish_ms": benchlib.summary_ms(durations),
        "start_skew_ms": (max(r["started"] for r in reports) - go_at) * 1e3 if reports else float("nan"),
        "launcher_calls": sum(r["launches"] for r in reports),
        "errors": errors,
        "warnings": warnings,
    }


def worker(processes, publishes, rounds, workdir):
    import django

    django.setup()
    from django.db import connection

    results = [one_round(n + 1, processes, publishes, workdir) for n in range(rounds)]
    benchlib.emit_result({"vendor": connection.vendor, "rounds": results})


# --- In the parent: both databases, side by side -------------------------------------------------------------------


def fmt(value, spec=".3f"):
    return "n/a" if value != value else format(value, spec)


def report(results, args, info):
    kinds = [k for k in ("sqlite", "postgres") if k in results]
    total = args.processes * args.publishes
    print()
    print(
        f"builds caused by {total} publishes from {args.processes} processes × {args.publishes} during one running "
        f"build ({args.rounds} rounds per database, recording launcher)"
    )
    benchlib.print_machine(info)
    header = (
        f"{'':12}{'round':>6}{'builds':>8}{'states':>10}{'requests':>10}{'on it':>7}{'wall s':>9}{'publ./s':>9}"
        f"{'builds/publ.':>14}{'publish() ms med/p99':>22}{'errors':>8}"
    )
    print(header)
    for k in kinds:
        for n, r in enumerate(results[k]["rounds"], 1):
            rate = r["publishes"] / r["wall_s"] if r["wall_s"] == r["wall_s"] and r["wall_s"] else float("nan")
            states = ",".join(r["caused_states"]) or "-"
            print(
                f"{(LABELS[k] if n == 1 else ''):12}{n:>6}{r['builds_caused']:>8}{states:>10}{r['requests']:>10}"
                f"{r['requests_on_queued']:>7}{fmt(r['wall_s'], '.2f'):>9}{fmt(rate, '.0f'):>9}"
                f"{fmt(benchlib.ratio(r['builds_caused'], r['publishes']), '.4f'):>14}"
                f"{fmt(r['publish_ms']['median'], '.1f') + ' / ' + fmt(r['publish_ms']['p99'], '.1f'):>22}"
                f"{r['errors']:>8}"
            )
    print()
    columns = "".join(f"{LABELS[k]:>14}" for k in kinds) + ("   PG/SQLite" if len(kinds) == 2 else "")
    print(f"{'medians over rounds':40}{columns}")
    rows = [
        (f"builds caused (one-build-per-publish: {total})", lambda r: r["builds_caused"], ".0f"),
        ("requests attached to the queued build", lambda r: r["requests_on_queued"], ".0f"),
        ("wall time, s", lambda r: r["wall_s"], ".2f"),
        ("publishes/s", lambda r: r["publishes"] / r["wall_s"], ".0f"),
        ("publish() median, ms", lambda r: r["publish_ms"]["median"], ".1f"),
        ("publish() p99, ms", lambda r: r["publish_ms"]["p99"], ".1f"),
        ("builds per publish", lambda r: r["builds_caused"] / r["publishes"], ".4f"),
        ("one-build-per-publish / builds caused", lambda r: benchlib.ratio(total, r["builds_caused"]), ".0f"),
        ("children's start spread after go, ms", lambda r: r["start_skew_ms"], ".1f"),
    ]
    for label, get, spec in rows:
        values = [statistics.median(get(r) for r in results[k]["rounds"]) for k in kinds]
        line = f"  {label:38}" + "".join(f"{fmt(v, spec):>14}" for v in values)
        if len(kinds) == 2:
            line += f"{fmt(benchlib.ratio(values[1], values[0]), '.2f') + '×':>12}"
        print(line)
    print()
    for k in kinds:
        rounds = results[k]["rounds"]
        print(
            f"{LABELS[k]}: running build still {','.join(sorted({r['running_state'] for r in rounds}))}; "
            f"unattached requests {sum(r['requests_unattached'] for r in rounds)}; "
            f"launcher calls {sum(r['launcher_calls'] for r in rounds)}; "
            f"errors {sum(r['errors'] for r in rounds)}, "
            f"warnings {sum(r['warnings'] for r in rounds)} in children's output"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--publishes", type=int, default=25, help="per process")
    parser.add_argument("--rounds", type=int, default=3, help="per database, each on cleared tables")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="4 × 10 publishes, 1 round (make bench QUICK=1)")
    args = parser.parse_args()
    if args.quick:  # smaller figures for `make bench QUICK=1`; options given explicitly win
        for name, value in {"processes": 4, "publishes": 10, "rounds": 1}.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    benchlib.ensure_project_on_path()
    if args.worker:
        worker(args.processes, args.publishes, args.rounds, args.worker)
        return 0

    benchlib.exit_cleanly_on_sigterm()
    backends, pg_bin = benchlib.choose_backends(args.backends)
    workdir = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    results, pg_version = {}, None

    def measure(kind, env):
        rundir = workdir / kind / "rounds"
        rundir.mkdir(parents=True)
        args_ = ["--processes", str(args.processes), "--publishes", str(args.publishes), "--rounds", str(args.rounds)]
        return benchlib.run_worker([SCRIPT, "--worker", str(rundir), *args_], env)

    try:
        if "sqlite" in backends:
            print("SQLite: fresh database file, migrating, measuring ...", flush=True)
            results["sqlite"] = measure("sqlite", benchlib.fresh_database("sqlite", workdir / "sqlite"))
        if "postgres" in backends:
            print(f"PostgreSQL: throwaway cluster from {pg_bin} (fsync=off), migrating, measuring ...", flush=True)
            with benchlib.PostgresCluster(pg_bin) as pg:
                pg_version = pg.version
                results["postgres"] = measure(
                    "postgres", benchlib.fresh_database("postgres", workdir / "postgres", cluster=pg)
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args, benchlib.machine_info(pg_version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
