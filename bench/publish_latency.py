"""Publish commit → launcher called: median, p99 and max over 1,000 publishes, on SQLite and PostgreSQL side by side.

    .venv/bin/python bench/publish_latency.py [--publishes 1000] [--warmup 20] [--backends sqlite,postgres]
        [--heroku-publishes 10] [--heroku-inline-samples 3] [--heroku-timeouts 1,2,4]

Each publish is ``Page(...).publish()`` of a new page inside an outer ``transaction.atomic()`` whose first
``on_commit`` callback stamps t0 (callbacks run in order, so it runs right after the commit and right before the
build request's dispatch). The recording launcher's ``launch`` is wrapped to stamp t1 when it is entered; a last
``on_commit`` callback, registered after the publish, stamps "dispatch done". Between publishes the launched build is
claimed with its token and finished ``succeeded`` outside the timed window, so every publish finds no active and no
queued build and launches one.

For comparison, the same number of publishes while one build stays ``launched``: each request attaches to it and
no launcher is called (commit → dispatch done).

Then the four behaviours of the Heroku API (issue #11 goal 4), with the real ``HerokuLauncher`` against a local
stand-in on 127.0.0.1: ``fast`` (answers at once), ``slow`` (200 ms), ``hanging`` (accepts, never answers) and
``trickling`` (the headers, then one byte of the body per second). For each: commit → dispatch done, which is what the
editor's request waits for after its commit, both as the publish runs now (the launch in a thread after the
response) and as it ran before (the launch inline, ``--heroku-inline-samples`` publishes), plus commit → the
launch's outcome in the thread (bounded by the read timeout, or by ``HEROKU_TOTAL_TIMEOUT`` for a trickle). The
timeouts are shortened for the bench (``--heroku-timeouts connect,read,total``, default 1,2,4): what the editor
waits for does not depend on them, what the thread waits for is min(read, total) for a hang and total for a trickle.

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
HEROKU_MODES = ("fast", "slow", "hanging", "trickling")
HEROKU_ROWS = [
    ("now", "commit → dispatch done, launch after the response"),
    ("inline", "commit → dispatch done, launch inline (before)"),
    ("thread", "commit → launch outcome, in the thread"),
]
SLOW_ANSWER = 0.2  # seconds, the "slow" Heroku


# --- In the child: one database ------------------------------------------------------------------------------------


def heroku_stand_in(mode_box):
    """A local stand-in for ``POST /apps/{app}/dynos`` that behaves as ``mode_box[0]`` says; returns its URL."""
    import http.server
    import json
    import threading

    answer = json.dumps({"id": "01234567-89ab-cdef-0123-456789abcdef", "name": "run.1", "state": "starting"}).encode()
    head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(answer)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            mode = mode_box[0]
            try:
                if mode == "hanging":
                    time.sleep(60)  # longer than any timeout the bench sets; the client gives up first
                    return
                if mode == "slow":
                    time.sleep(SLOW_ANSWER)
                if mode == "trickling":
                    self.wfile.write(head)
                    for byte in answer:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(1)
                    return
                self.wfile.write(head + answer)
            except OSError:
                return

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def heroku_cases(publish, n, inline_samples, timeouts):
    """Commit → dispatch done with the Heroku launcher in each mode, the launch after the response and inline."""
    from django.conf import settings

    from publisher import builds, deferred
    from publisher.models import Build

    mode_box = ["fast"]
    url = heroku_stand_in(mode_box)
    connect, read, total = timeouts
    saved = settings.PUBLISHER
    settings.PUBLISHER = {
        **saved,
        "LAUNCHER": {
            "BACKEND": "publisher.launchers.heroku.HerokuLauncher",
            "OPTIONS": {
                "API_KEY": "bench-key",
                "APP_NAME": "bench-app",
                "API_URL": url,
                "CONNECT_TIMEOUT": connect,
                "READ_TIMEOUT": read,
                "TOTAL_TIMEOUT": total,
            },
        },
    }
    thread_done = {}
    original = builds.launch_in_background

    def stamped():
        try:
            return original()
        finally:
            thread_done["at"] = time.perf_counter()

    builds.launch_in_background = stamped
    real_answers_at_once = builds._launcher_answers_at_once

    def settle():
        """End whatever the publish started, so the next one finds no build and launches."""
        assert deferred.wait(timeout=120), "a launch thread did not end"
        for build in Build.objects.exclude(state__in=builds.FINAL_STATES).values("pk", "state"):
            builds.cancel(build["pk"])
        assert deferred.wait(timeout=120)

    results = {}
    try:
        for mode in HEROKU_MODES:
            mode_box[0] = mode
            figures = {"now": [], "inline": [], "thread": [], "outcomes": []}
            for k in range(n + 1):  # the first is a warm-up
                thread_done.clear()
                s = publish(f"heroku-{mode}-{k}")
                assert deferred.wait(timeout=120)
                if k == 0:
                    settle()
                    continue
                figures["now"].append(s["done"] - s["commit"])
                if "at" in thread_done:
                    figures["thread"].append(thread_done["at"] - s["commit"])
                build = Build.objects.order_by("-pk").values("state", "error").first()
                figures["outcomes"].append(build["state"])
                settle()
            builds._launcher_answers_at_once = lambda: True  # as before: the launch inside the editor's request
            try:
                for k in range(inline_samples if mode in ("hanging", "trickling") else n):
                    s = publish(f"heroku-{mode}-inline-{k}")
                    figures["inline"].append(s["done"] - s["commit"])
                    settle()
            finally:
                builds._launcher_answers_at_once = real_answers_at_once
            outcomes = sorted(set(figures.pop("outcomes")))
            results[mode] = {name: benchlib.summary_ms(values) for name, values in figures.items()}
            results[mode]["outcomes"] = outcomes
    finally:
        builds.launch_in_background = original
        settings.PUBLISHER = saved
    results["timeouts"] = list(timeouts)
    return results


def worker(publishes, warmup, heroku_publishes=0, inline_samples=0, timeouts=(1, 2, 4)):
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

    heroku = heroku_cases(publish, heroku_publishes, inline_samples, timeouts) if heroku_publishes else None

    benchlib.emit_result(
        {
            "heroku": heroku,
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
    if all(results[k].get("heroku") for k in kinds):
        report_heroku(results, kinds, width)
    print()
    for k in kinds:
        r = results[k]
        print(
            f"{LABELS[k]}: {r['launches']} launches for {r['publishes'] + args.warmup} publishes (warm-up included); "
            f"attach case: {r['attached_requests']} requests on the {r['attach_state']} build, "
            f"{r['attach_launches']} launcher calls"
        )


def report_heroku(results, kinds, width):
    first = results[kinds[0]]["heroku"]
    connect, read, total = first["timeouts"]
    print()
    print(
        f"Heroku launcher against a local stand-in: fast, slow ({SLOW_ANSWER * 1e3:.0f} ms), hanging, trickling "
        f"(1 byte/s); timeouts connect {connect}s, read {read}s, total {total}s"
    )
    header = f"{'':{width}}" + "".join(f"{LABELS[k]:>22}" for k in kinds)
    print(header + "   (ms, median / max)")
    for mode in HEROKU_MODES:
        print(f"  {mode} (build after the thread: {', '.join(first[mode]['outcomes'])})")
        for key, label in HEROKU_ROWS:
            line = f"    {label:{width - 4}}"
            for k in kinds:
                figure = results[k]["heroku"][mode][key]
                line += f"{fmt(figure['median']) + ' / ' + fmt(figure['max']):>22}"
            line += f"   n={first[mode][key]['n']}"
            print(line)
    print("ratios (medians): launch inline / launch after the response")
    for mode in HEROKU_MODES:
        line = f"  {mode:{width - 2}}"
        for k in kinds:
            figures = results[k]["heroku"][mode]
            line += f"{fmt(benchlib.ratio(figures['inline']['median'], figures['now']['median']), '×'):>22}"
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishes", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--heroku-publishes", type=int, default=10, help="publishes per Heroku behaviour (0: skip)")
    parser.add_argument(
        "--heroku-inline-samples", type=int, default=3, help="inline publishes against a hanging or trickling API"
    )
    parser.add_argument("--heroku-timeouts", default="1,2,4", help="connect,read,total seconds for the stand-in")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="100 publishes, 5 warm-up (make bench QUICK=1)")
    args = parser.parse_args()
    if args.quick:  # smaller figures for `make bench QUICK=1`; options given explicitly win
        for name, value in {"publishes": 100, "warmup": 5, "heroku_publishes": 3, "heroku_inline_samples": 1}.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    benchlib.ensure_project_on_path()
    timeouts = tuple(float(x) for x in args.heroku_timeouts.split(","))
    if args.worker:
        worker(args.publishes, args.warmup, args.heroku_publishes, args.heroku_inline_samples, timeouts)
        return 0

    benchlib.exit_cleanly_on_sigterm()
    backends, pg_bin = benchlib.choose_backends(args.backends)
    worker_args = [SCRIPT, "--worker", "--publishes", str(args.publishes), "--warmup", str(args.warmup)]
    worker_args += ["--heroku-publishes", str(args.heroku_publishes), "--heroku-timeouts", args.heroku_timeouts]
    worker_args += ["--heroku-inline-samples", str(args.heroku_inline_samples)]
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
