"""Publish commit → launcher called: median, p99 and max over 1,000 publishes, on SQLite and PostgreSQL side by side.

    .venv/bin/python bench/publish_latency.py [--publishes 1000] [--warmup 20] [--backends sqlite,postgres]

Each publish is ``Page(...).publish()`` of a new page inside an outer ``transaction.atomic()`` whose first
``on_commit`` callback stamps t0 (callbacks run in order, so it runs right after the commit and right before the
build request's dispatch). The recording launcher's ``launch`` is wrapped to stamp t1 when it is entered; a last
``on_commit`` callback, registered after the publish, stamps "dispatch done". Between publishes the launched build is
claimed with its token and finished ``succeeded`` outside the timed window, so every publish finds no active and no
queued build and launches one.

For comparison, the same number of publishes while one build stays ``launched``: each request attaches to it and
no launcher is called (commit → dispatch done).

Each database runs in its own child process configured only through the environment (``settings.settings``,
temporary SQLite file / SITE_ROOT / VAR_DIR, the recording launcher, DEBUG off, publisher logging at WARNING).
PostgreSQL is a throwaway local cluster with fsync=off (see ``benchlib``); without its binaries only SQLite runs.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib

SCRIPT = str(Path(__file__).resolve())
SQL_SAMPLES = 50
LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
ROWS = [
    ("transaction", "publish transaction: begin → commit"),
    ("commit_to_launch", "commit → launcher.launch entered"),
    ("commit_to_done", "commit → dispatch done (launched)"),
    ("attach_commit_to_done", "commit → dispatch done (attached, no launch)"),
]


# --- In the child: one database ------------------------------------------------------------------------------------


def worker(publishes, warmup):
    import django

    django.setup()
    from django.db import connection, transaction

    from publisher import builds
    from publisher.launchers import recording
    from publisher.models import Build, BuildState, Page

    stamps = {}
    original_launch = recording.RecordingLauncher.launch

    def stamped_launch(self, *, build_id, token):
        stamps["launch"] = time.perf_counter()
        return original_launch(self, build_id=build_id, token=token)

    recording.RecordingLauncher.launch = stamped_launch

    def stamp(name):
        return lambda: stamps.__setitem__(name, time.perf_counter())

    def publish(slug):
        page = Page(slug=slug, title=f"Page {slug}", body="Benchmark page.\n\nSecond paragraph.")
        stamps.clear()
        stamps["begin"] = time.perf_counter()
        with transaction.atomic():
            transaction.on_commit(stamp("commit"))  # first: runs right after the commit, before the dispatch
            page.publish()
            transaction.on_commit(stamp("done"))  # last: runs right after the dispatch
        return dict(stamps)

    # 1. Every publish launches: end the launched build between publishes, outside the timed window.
    launch_case = {"transaction": [], "commit_to_launch": [], "commit_to_done": []}
    missed = 0
    for n in range(warmup + publishes):
        before = len(recording.launches)
        s = publish(f"launch-{n}")
        if len(recording.launches) != before + 1 or "launch" not in s:
            missed += 1
            continue
        launched = recording.launches[-1]
        claim = builds.claim(launched["build_id"], launched["token"])
        if not isinstance(claim, builds.Claim) or not builds.finish(claim, state=BuildState.SUCCEEDED):
            raise RuntimeError(f"could not end build #{launched['build_id']}: {claim}")
        if n >= warmup:
            launch_case["transaction"].append(s["commit"] - s["begin"])
            launch_case["commit_to_launch"].append(s["launch"] - s["commit"])
            launch_case["commit_to_done"].append(s["done"] - s["commit"])

    # 2. One build stays launched: every publish attaches to it, no launcher call.
    publish("attach-target")
    target = recording.launches[-1]["build_id"]
    attach_case = {"attach_transaction": [], "attach_commit_to_done": []}
    launches_before = len(recording.launches)
    for n in range(warmup + publishes):
        s = publish(f"attach-{n}")
        if n >= warmup:
            attach_case["attach_transaction"].append(s["commit"] - s["begin"])
            attach_case["attach_commit_to_done"].append(s["done"] - s["commit"])
    attached = Build.objects.get(pk=target).requests.count()
    attach_state = Build.objects.get(pk=target).state
    attach_launches = len(recording.launches) - launches_before

    # 3. Untimed: SQL statements after the commit and the time spent executing them (a wrapper adds overhead, so
    # this pass is kept apart from the timed ones).
    executed = []

    def timing(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            executed.append((started, time.perf_counter() - started))

    sql = {"launch": [], "attach": []}
    with connection.execute_wrapper(timing):
        for n in range(SQL_SAMPLES):
            executed.clear()
            s = publish(f"sql-attach-{n}")  # the target build is still launched: attach
            sql["attach"].append([d for t, d in executed if s["commit"] <= t <= s["done"]])
        launched = recording.launches[-1]
        builds.finish(builds.claim(launched["build_id"], launched["token"]), state=BuildState.SUCCEEDED)
        for n in range(SQL_SAMPLES):
            executed.clear()
            s = publish(f"sql-launch-{n}")
            sql["launch"].append([d for t, d in executed if s["commit"] <= t <= s["done"]])
            launched = recording.launches[-1]
            builds.finish(builds.claim(launched["build_id"], launched["token"]), state=BuildState.SUCCEEDED)
    sql_summary = {
        case: {
            "statements": statistics.median(len(x) for x in samples),
            "db_ms": statistics.median(sum(x) for x in samples) * 1e3,
        }
        for case, samples in sql.items()
    }

    benchlib.emit_result(
        {
            "sql": sql_summary,
            "vendor": connection.vendor,
            "publishes": publishes,
            "launches": publishes + warmup - missed,
            "missed_launches": missed,
            "attach_launches": attach_launches,
            "attached_requests": attached,
            "attach_state": attach_state,
            **{name: benchlib.summary_ms(values) for name, values in {**launch_case, **attach_case}.items()},
        }
    )


# --- In the parent: both databases, side by side -------------------------------------------------------------------


def fmt(value, unit=""):
    return "n/a" if value != value else f"{value:.3f}{unit}"


def report(results, args, info):
    kinds = [k for k in ("sqlite", "postgres") if k in results]
    print()
    print(f"publish commit → launcher called: {args.publishes} publishes (+{args.warmup} warm-up), recording launcher")
    benchlib.print_machine(info)
    width = 54
    header = f"{'':{width}}" + "".join(f"{LABELS[k]:>14}" for k in kinds)
    if len(kinds) == 2:
        header += f"{'PG/SQLite':>12}"
    print(header + "   (ms)")
    for key, label in ROWS:
        for stat in ("median", "p99", "max"):
            line = f"{(label if stat == 'median' else ''):{width - 7}}{stat:>7}"
            values = [results[k][key][stat] for k in kinds]
            line += "".join(f"{fmt(v):>14}" for v in values)
            if len(kinds) == 2:
                line += f"{fmt(benchlib.ratio(values[1], values[0]), '×'):>12}"
            print(line)
    print()
    print("ratios (medians)")
    for label, num, den in (
        ("(commit → launch entered) / (publish transaction)", "commit_to_launch", "transaction"),
        ("(dispatch done, launched) / (dispatch done, attached)", "commit_to_done", "attach_commit_to_done"),
    ):
        line = f"  {label:{width - 2}}"
        line += "".join(
            f"{fmt(benchlib.ratio(results[k][num]['median'], results[k][den]['median']), '×'):>14}" for k in kinds
        )
        print(line)
    print()
    print(f"SQL after the commit (untimed pass of {SQL_SAMPLES} publishes each, medians; the rest is Python/ORM)")
    for case, label in (("launch", "launched"), ("attach", "attached")):
        line = f"  {'statements / ms executing them: ' + label:{width - 2}}"
        line += "".join(
            f"{'{:.0f} / {:.3f}'.format(results[k]['sql'][case]['statements'], results[k]['sql'][case]['db_ms']):>14}"
            for k in kinds
        )
        print(line)
    print()
    for k in kinds:
        r = results[k]
        print(
            f"{LABELS[k]}: {r['launches']} launches for {r['publishes'] + args.warmup} publishes (warm-up included); "
            f"attach case: {r['attached_requests']} requests on the {r['attach_state']} build, "
            f"{r['attach_launches']} launcher calls"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishes", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="100 publishes, 5 warm-up (make bench QUICK=1)")
    args = parser.parse_args()
    if args.quick:  # smaller figures for `make bench QUICK=1`; options given explicitly win
        for name, value in {"publishes": 100, "warmup": 5}.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    benchlib.ensure_project_on_path()
    if args.worker:
        worker(args.publishes, args.warmup)
        return 0

    benchlib.exit_cleanly_on_sigterm()
    backends, pg_bin = benchlib.choose_backends(args.backends)
    worker_args = [SCRIPT, "--worker", "--publishes", str(args.publishes), "--warmup", str(args.warmup)]
    workdir = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    results, pg_version = {}, None
    try:
        if "sqlite" in backends:
            print("SQLite: fresh database file, migrating, measuring ...", flush=True)
            results["sqlite"] = benchlib.run_worker(worker_args, benchlib.fresh_database("sqlite", workdir / "sqlite"))
        if "postgres" in backends:
            print(f"PostgreSQL: throwaway cluster from {pg_bin} (fsync=off), migrating, measuring ...", flush=True)
            with benchlib.PostgresCluster(pg_bin) as pg:
                pg_version = pg.version
                env = benchlib.fresh_database("postgres", workdir / "postgres", cluster=pg)
                results["postgres"] = benchlib.run_worker(worker_args, env)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args, benchlib.machine_info(pg_version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
