"""One sweep pass over 100,000 past builds: queries, time and query plans, on SQLite and PostgreSQL side by side.

    .venv/bin/python bench/sweep_pass.py [--builds 100000] [--repeat 21] [--prune-repeat 5] [--backends sqlite,postgres]

Three databases per backend, each filled in its own child process with ``bulk_create``:

- *empty*: migrated, no build at all (the reference for "100k vs empty");
- *100k*: ``--builds`` finished builds (succeeded 90 %, failed 5 %, lost 3 %, cancelled 2 %; the newest succeeded)
  spread evenly over the last 60 days, so nothing is old enough to prune, each with 1 or 2 requests (a request
  after a failed or lost build is its retry), with realistic launch/start/finish/heartbeat times and handles;
- *100k, 10 % old*: the same number of builds, of which 10 % are 91–121 days old (older than
  ``BUILD_HISTORY_DAYS`` = 90), to show the hourly prune separately.

On PostgreSQL each database is ``VACUUM ANALYZE``d and checkpointed after filling (what autovacuum and the
checkpointer do after a bulk load); SQLite is left as production leaves it, without planner statistics
(``--sqlite-analyze`` runs ``ANALYZE``, which is what ``PRAGMA optimize`` does on a connection that has been busy).
The measurements use a new connection, not the one that filled the database. Then one pass,
``publisher.sweep.sweep()``, is measured per scenario:

- idle: nothing to do, the ``SweepStatus`` row exists and pruning is not due;
- two busy states where nothing is due (a healthy running build; the same with a queued build behind it);
- with work: unattached requests older than the grace (attach + launch), a due queued build (launch), a launched
  build whose process is gone past ``BUILD_START_TIMEOUT`` (queued again), a running build with no heartbeat whose
  process is gone (``lost`` + retry request), a stalled running build (report mailed to locmem), a build running
  past ``BUILD_TIMEOUT`` (failed, stopped, reported), and one mixed pass (lost + retry, 3 unattached requests,
  launch);
- a pass that prunes: due, with nothing old (the hourly cost on the 100k database), and deleting the 10 % old
  builds and their requests (on the 10 %-old database).

Per scenario and database: one untimed warm-up pass, one pass inside ``CaptureQueriesContext`` (the statements and their
SQL; an ``execute_wrapper`` times each one, as Django rounds its own times to the millisecond), then ``--repeat`` timed
passes without capture (``--prune-repeat`` for the pass that deletes); the wall time of ``sweep()`` is reported as
median, min and max. Each scenario's rows are created before and deleted after every pass, outside the timed window (the
deleted old builds are inserted again), so every pass sees the same database. The captured queries of the idle pass are
run again under ``EXPLAIN (ANALYZE, BUFFERS)`` on PostgreSQL (UPDATEs in a transaction that is rolled back) and
``EXPLAIN QUERY PLAN`` on SQLite; every statement of every captured pass is planned with ``EXPLAIN``, and those that
read a whole build or request table (or a whole index of one) or took at least 5 ms are listed with their plans.

Each database runs in its own child process configured only through the environment (``settings.settings``,
temporary SQLite file / SITE_ROOT / VAR_DIR, the recording launcher, locmem e-mail, DEBUG off, publisher logging at
WARNING, written to /dev/null). PostgreSQL is a throwaway local cluster with fsync=off (see ``benchlib``); without its
binaries only SQLite runs.
"""

import argparse
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import benchlib

SCRIPT = str(Path(__file__).resolve())
LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
DATASETS = ("empty", "history", "old")
DATASET_LABELS = {"empty": "empty", "history": "100k", "old": "100k, 10% old"}  # relabelled by --builds
RECENT_DAYS = 60
OLD_FRACTION = 0.10
STATE_WEIGHTS = (("succeeded", 90), ("failed", 5), ("lost", 3), ("cancelled", 2))
BIG_TABLES = ("publisher_build", "publisher_buildrequest")
#: Statements slower than this (ms, in the captured pass) are listed with their plans.
SLOW_MS = 5.0
SCENARIOS = [
    ("idle", "idle: nothing to do"),
    ("running", "busy, nothing due: healthy running build"),
    ("queued_behind", "busy, nothing due: + queued behind it"),
    ("unattached", "3 unattached requests → attach, launch"),
    ("queued_due", "due queued build → launch"),
    ("launched_gone", "launched, never started, gone → requeue"),
    ("running_lost", "running, no heartbeat, gone → lost+retry"),
    ("stalled", "running, no progress → stall report"),
    ("timeout", "running past BUILD_TIMEOUT → failed"),
    ("mixed", "mixed: lost+retry, 3 unattached, launch"),
    ("prune_nothing", "prune due, nothing old enough"),
    ("prune_old", "prune due, deletes the 10% old builds"),
]
PER_DATASET = {
    "empty": [name for name, _ in SCENARIOS if name != "prune_old"],
    "history": [name for name, _ in SCENARIOS if name != "prune_old"],
    "old": ["idle", "prune_old"],
}


# --- In the child: one database ------------------------------------------------------------------------------------


def worker(dataset, n_builds, repeat, prune_repeat, sqlite_analyze):
    import logging
    import os

    import django

    django.setup()
    # The passes with work log warnings and errors (lost, stalled, timed out): they are formatted and written as in
    # production, but to /dev/null rather than into this benchmark's output.
    devnull = open(os.devnull, "w")  # open for the life of the process
    for handler in logging.getLogger("publisher").handlers + logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)
    from django.core import mail
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from publisher import builds, sweep
    from publisher.conf import get_config
    from publisher.launchers import GONE, RUNNING, recording
    from publisher.models import Build, BuildRequest, BuildState, SweepStatus

    S = BuildState
    config = get_config()
    history = timedelta(days=config.BUILD_HISTORY_DAYS)
    rng = random.Random(20260101)

    # --- Filling -------------------------------------------------------------------------------------------------

    def past_build(t, state):
        """A finished build created at ``t`` and its 1–2 requests (not saved; ``retry_of`` set later)."""
        fields = {"state": state, "created_at": t, "next_attempt_at": t, "launcher": "heroku", "pages_total": 800}
        if state == S.CANCELLED and rng.random() < 0.5:  # cancelled while still queued
            fields.update(finished_at=t + timedelta(seconds=rng.uniform(5, 60)), error="Cancelled by editor")
        else:
            launched = t + timedelta(seconds=rng.uniform(0.5, 3))
            started = launched + timedelta(seconds=rng.uniform(8, 40))
            took = timedelta(seconds=rng.uniform(60, 600))
            finished = started + took
            done = 800
            heartbeat = finished
            error, release = "", ""
            if state == S.SUCCEEDED:
                release = f"{finished:%Y%m%dT%H%M%S}"
            elif state == S.FAILED:
                done = rng.randrange(0, 800)
                error = "Render failed: template error in page.html"
            elif state == S.LOST:
                done = rng.randrange(0, 800)
                heartbeat = finished
                finished = heartbeat + timedelta(seconds=rng.uniform(125, 180))
                error = f"No heartbeat for {(finished - heartbeat).total_seconds():.0f}s and the process is gone"
            else:
                done = rng.randrange(0, 800)
                error = "Cancelled by editor"
            fields.update(
                launched_at=launched,
                started_at=started,
                finished_at=finished,
                heartbeat_at=heartbeat,
                progress_at=heartbeat,
                pages_done=done,
                handle={
                    "app": "publisher-site",
                    "dyno": f"run.{rng.randrange(1000, 9999)}",
                    "id": f"d-{rng.getrandbits(128):032x}",
                },
                launch_token=f"{rng.getrandbits(192):048x}",
                release=release,
                error=error,
            )
        build = Build(**fields)
        requests = [
            BuildRequest(reason=f"published “Page {rng.randrange(1, 5000)}”", created_at=t - timedelta(seconds=0.2))
        ]
        if rng.random() < 0.5:
            requests.append(
                BuildRequest(
                    reason=f"changed “Page {rng.randrange(1, 5000)}”",
                    created_at=t + timedelta(seconds=rng.uniform(0.3, 3)),
                )
            )
        return build, requests

    def insert(times, *, newest_succeeded=False):
        """Insert builds created at ``times`` (sorted) with their requests; returns (builds, requests)."""
        states = [s for s, _ in STATE_WEIGHTS]
        weights = [w for _, w in STATE_WEIGHTS]
        n_builds = n_requests = 0
        previous = None  # (pk, state) of the build before, for retry requests
        with transaction.atomic():
            for start in range(0, len(times), 5000):
                chunk = times[start : start + 5000]
                pairs = []
                for i, t in enumerate(chunk):
                    last = newest_succeeded and start + i == len(times) - 1
                    pairs.append(past_build(t, S.SUCCEEDED if last else rng.choices(states, weights)[0]))
                created = Build.objects.bulk_create([b for b, _ in pairs])
                requests = []
                for build, (_, reqs) in zip(created, pairs, strict=True):
                    if build.pk is None:
                        raise RuntimeError("bulk_create returned no primary keys")
                    for r in reqs:
                        r.build_id = build.pk
                    if previous and previous[1] in (S.FAILED, S.LOST):
                        reqs[0].reason = f"retry of #{previous[0]}"
                        reqs[0].retry_of_id = previous[0]
                    previous = (build.pk, build.state)
                    requests.extend(reqs)
                BuildRequest.objects.bulk_create(requests)
                n_builds += len(created)
                n_requests += len(requests)
        return n_builds, n_requests

    def spread(n, oldest, newest):
        step = (newest - oldest) / max(n, 1)
        return [oldest + step * i + step * rng.uniform(0, 0.8) for i in range(n)]

    def old_times(n, at):
        return spread(n, at - history - timedelta(days=31), at - history - timedelta(days=1))

    def vacuum_analyze():
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("VACUUM ANALYZE publisher_build, publisher_buildrequest, publisher_sweepstatus")
                # Write out the bulk load's dirty buffers now, not in the background during the measurements.
                cursor.execute("CHECKPOINT")
            elif sqlite_analyze:
                cursor.execute("ANALYZE")

    at = timezone.now()
    fill_started = time.perf_counter()
    n_old = 0
    if dataset != "empty":
        n_old = int(n_builds * OLD_FRACTION) if dataset == "old" else 0
        insert(old_times(n_old, at))
        recent = spread(n_builds - n_old, at - timedelta(days=RECENT_DAYS), at - timedelta(hours=1))
        insert(recent, newest_succeeded=True)
    vacuum_analyze()
    fill_s = time.perf_counter() - fill_started
    contents = {
        "builds": Build.objects.count(),
        "requests": BuildRequest.objects.count(),
        "old_builds": Build.objects.filter(created_at__lt=at - history).count(),
        "old_requests": BuildRequest.objects.filter(created_at__lt=at - history).count(),
        "fill_s": fill_s,
    }
    # The measurements use a new connection, like the worker's, not the one that did the bulk load.
    connection.close()
    sweep.sweep()  # the first pass ever: creates the status row (and prunes); not measured

    # --- Scenarios: rows created before each pass, deleted after it ------------------------------------------------

    def active(state, now, *, launched_ago, heartbeat_ago=5, progress_ago=5, status=RUNNING):
        launched = now - timedelta(seconds=launched_ago)
        build = Build.objects.create(
            state=state,
            created_at=launched - timedelta(seconds=1),
            next_attempt_at=launched - timedelta(seconds=1),
            launched_at=launched,
            launcher="recording",
            launch_token=builds.new_token(),
            attempt=1,
        )
        build.handle = {"id": f"rec-bench-{build.pk}", "build_id": build.pk}
        fields = ["handle"]
        if state == S.RUNNING:
            build.started_at = launched + timedelta(seconds=20)
            build.heartbeat_at = now - timedelta(seconds=heartbeat_ago)
            build.progress_at = now - timedelta(seconds=progress_ago)
            build.pages_done, build.pages_total = 120, 800
            fields += ["started_at", "heartbeat_at", "progress_at", "pages_done", "pages_total"]
        build.save(update_fields=fields)
        BuildRequest.objects.create(reason="published “Bench”", build=build, created_at=build.created_at)
        recording.statuses[build.handle["id"]] = status
        return build

    def unattached(now, n=3):
        for i in range(n):
            BuildRequest.objects.create(reason=f"published “Unattached {i}”", created_at=now - timedelta(seconds=30))

    def queued(now, *, due=True):
        moment = now - timedelta(seconds=60)
        build = Build.objects.create(
            state=S.QUEUED, created_at=moment, next_attempt_at=moment if due else now + timedelta(seconds=600)
        )
        BuildRequest.objects.create(reason="published “Queued”", build=build, created_at=moment)

    def prune_due(flag):
        moment = timezone.now() - timedelta(hours=2) if flag else timezone.now()
        SweepStatus.objects.filter(pk=1).update(pruned_at=moment)

    def restore_old(now):
        missing = n_old - Build.objects.filter(created_at__lt=now - history).count()
        if missing > 0:
            insert(old_times(missing, now))
        vacuum_analyze()

    def setup(name, now):
        prune_due(name.startswith("prune"))
        if name == "running":
            active(S.RUNNING, now, launched_ago=600)
        elif name == "queued_behind":
            active(S.RUNNING, now, launched_ago=600)
            queued(now)
        elif name == "unattached":
            unattached(now)
        elif name == "queued_due":
            queued(now)
        elif name == "launched_gone":
            active(S.LAUNCHED, now, launched_ago=config.BUILD_START_TIMEOUT + 60, status=GONE)
        elif name == "running_lost":
            active(S.RUNNING, now, launched_ago=900, heartbeat_ago=config.BUILD_LOST_AFTER + 60, status=GONE)
        elif name == "stalled":
            active(
                S.RUNNING, now, launched_ago=config.BUILD_STALL_AFTER + 600, progress_ago=config.BUILD_STALL_AFTER + 60
            )
        elif name == "timeout":
            active(S.RUNNING, now, launched_ago=config.BUILD_TIMEOUT + 60)
        elif name == "mixed":
            active(S.RUNNING, now, launched_ago=900, heartbeat_ago=config.BUILD_LOST_AFTER + 60, status=GONE)
            unattached(now)
        elif name == "prune_old":
            restore_old(now)
            old_before[0] = Build.objects.filter(created_at__lt=now - history).count()

    old_before = [0]

    def check(name, outcome, now):
        text = str(outcome)
        expected = {
            "idle": text == "Nothing to do.",
            "running": text == "Nothing to do.",
            "queued_behind": text == "Nothing to do.",
            "prune_nothing": text == "Nothing to do.",
            "unattached": "3 unattached request(s)" in text and "launched on" in text,
            "queued_due": "launched on" in text,
            "launched_gone": "queued again" in text,
            "running_lost": " lost " in text and "retry is requested" in text,
            "stalled": "is stalled" in text and len(mail.outbox) == 1,
            "timeout": "timed out" in text and len(mail.outbox) == 1,
            "mixed": " lost " in text and "3 unattached request(s)" in text and "launched on" in text,
            # One pass prunes at most sweep.prune's limit (1,000 builds); the rest goes in later passes.
            "prune_old": text == "Nothing to do."
            and Build.objects.filter(created_at__lt=now - history).count() == max(0, old_before[0] - 1000),
        }[name]
        if not expected:
            raise RuntimeError(f"{name}: unexpected pass: {text!r} (mails: {len(mail.outbox)})")

    def reset(base):
        BuildRequest.objects.filter(pk__gt=base[1]).delete()
        Build.objects.filter(pk__gt=base[0]).delete()
        recording.reset()
        mail.outbox = []

    def base_ids():
        return (
            Build.objects.order_by("-pk").values_list("pk", flat=True).first() or 0,
            BuildRequest.objects.order_by("-pk").values_list("pk", flat=True).first() or 0,
        )

    def one_pass(name, *, capture=False):
        base = base_ids()
        now = timezone.now()
        setup(name, now)
        before = (Build.objects.count(), BuildRequest.objects.count())
        captured = None
        if capture:
            executed = []

            def timing(execute, sql, params, many, context):
                began = time.perf_counter()
                try:
                    return execute(sql, params, many, context)
                finally:
                    ms = (time.perf_counter() - began) * 1e3
                    if not many:
                        sql = connection.ops.last_executed_query(context["cursor"], sql, params)
                    executed.append({"sql": sql, "ms": ms})

            # Django's captured times are rounded to the millisecond: the wrapper times each statement exactly.
            with CaptureQueriesContext(connection) as ctx, connection.execute_wrapper(timing):
                started = time.perf_counter()
                outcome = sweep.sweep()
                took = time.perf_counter() - started
            captured = {"statements": [q["sql"] for q in ctx.captured_queries], "executed": executed}
        else:
            started = time.perf_counter()
            outcome = sweep.sweep()
            took = time.perf_counter() - started
        check(name, outcome, now)
        after = (Build.objects.count(), BuildRequest.objects.count())
        reset(base)
        return took, str(outcome), captured, (before[0] - after[0], before[1] - after[1])

    # Round-robin over the scenarios, so that a burst of load from elsewhere on the machine falls on all of them.
    names = PER_DATASET[dataset]
    for name in names:
        one_pass(name)  # warm-up
    captures = {name: one_pass(name, capture=True) for name in names}
    times = {name: [] for name in names}
    for round_ in range(max(repeat, prune_repeat)):
        for name in names:
            if round_ < (prune_repeat if name == "prune_old" else repeat):
                times[name].append(one_pass(name)[0])
    results = {}
    for name in names:
        _, summary, captured, deleted = captures[name]
        statements = [{"sql": sql} for sql in captured["statements"]]
        data = [q for q in statements if is_data_statement(q["sql"])]
        results[name] = {
            "summary": normalise(summary)[:300],
            "statements": len(statements),
            "data_statements": len(data),
            "sql_ms": sum(q["ms"] for q in captured["executed"]),
            "executed": captured["executed"],
            "kinds": statement_kinds(data),
            "deleted": {"builds": deleted[0], "requests": deleted[1]},
            "wall": {
                "n": len(times[name]),
                "median": statistics.median(times[name]) * 1e3,
                "min": min(times[name]) * 1e3,
                "max": max(times[name]) * 1e3,
            },
            "captured": statements,
        }

    # --- Query plans -----------------------------------------------------------------------------------------------

    def plan(sql, *, analyze):
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                options = "(ANALYZE, BUFFERS)" if analyze else ""
                with transaction.atomic():
                    cursor.execute(f"EXPLAIN {options} {sql}")
                    lines = [row[0] for row in cursor.fetchall()]
                    transaction.set_rollback(True)
                return lines
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
            depth, lines = {0: -1}, []
            for node, parent, _, detail in cursor.fetchall():
                depth[node] = depth.get(parent, -1) + 1
                lines.append("  " * depth[node] + detail)
            return lines

    idle_plans = []
    if dataset != "empty":
        sweep.sweep()  # the status row and pruned_at as in the idle pass
        for query in results["idle"]["captured"]:
            if is_data_statement(query["sql"]):
                idle_plans.append({"sql": query["sql"], "plan": plan(query["sql"], analyze=True)})
    flagged = {}
    for name, result in results.items():
        flagged[name] = []
        for query in result["executed"]:
            if not is_data_statement(query["sql"]):
                continue
            lines = plan(query["sql"], analyze=False)
            scans = [line.strip() for line in lines if is_full_scan(line, query["sql"])]
            if scans or query["ms"] >= SLOW_MS:
                flagged[name].append({"sql": query["sql"][:2000], "ms": query["ms"], "scans": scans, "plan": lines})

    benchlib.emit_result(
        {
            "dataset": dataset,
            "vendor": connection.vendor,
            "contents": contents,
            "scenarios": results,
            "idle_plans": idle_plans,
            "flagged": flagged,
        }
    )


def normalise(summary):
    """A pass's summary without what differs between runs (ids, handles, clock times)."""
    summary = re.sub(r"rec-\d+", "rec-N", summary)
    summary = re.sub(r"#\d+", "#N", summary)
    return re.sub(r"\b\d\d:\d\d:\d\d\b", "hh:mm:ss", summary)


def is_data_statement(sql):
    return sql.lstrip().split(None, 1)[0].upper() in ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")


def statement_kinds(statements):
    kinds = {}
    for q in statements:
        kind = q["sql"].lstrip().split(None, 1)[0].upper()
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def is_full_scan(line, sql):
    """A plan line that reads a whole build or request table or one of its indexes: PostgreSQL ``Seq Scan on t``,
    SQLite ``SCAN t`` (also ``SCAN t USING [COVERING] INDEX i``, which reads every entry of the index). SQLite names
    a table by its alias in the query (``U0``), so aliases are resolved from the SQL."""
    text = line.strip().removeprefix("->").strip()
    match = re.search(r"Seq Scan on (\w+)", text) or re.match(r"SCAN (\w+)", text)
    if not match:
        return False
    aliases = dict((alias, table) for table, alias in re.findall(r'"(\w+)" ([A-Z]\d+)\b', sql))
    return aliases.get(match.group(1), match.group(1)) in BIG_TABLES


# --- In the parent: both databases, side by side -------------------------------------------------------------------


def fmt(value, digits=2, unit=""):
    return "—" if value is None or value != value else f"{value:.{digits}f}{unit}"


def report(results, args, info):
    kinds = [k for k in ("sqlite", "postgres") if k in results]
    big = DATASET_LABELS["history"]
    first = results[kinds[0]]
    contents = first["history"]["contents"]
    old = first["old"]["contents"]
    print()
    print(
        f"one sweep pass: empty database vs {contents['builds']:,} past builds ({contents['requests']:,} requests, "
        f"last {RECENT_DAYS} days); {args.repeat} timed passes per scenario ({args.prune_repeat} for the deleting "
        "prune), recording launcher"
    )
    print(
        f"prune variant: {old['builds']:,} builds / {old['requests']:,} requests, of which {old['old_builds']:,} / "
        f"{old['old_requests']:,} older than BUILD_HISTORY_DAYS"
    )
    benchlib.print_machine(info)
    for k in kinds:
        fills = ", ".join(f"{DATASET_LABELS[d]} {results[k][d]['contents']['fill_s']:.1f} s" for d in DATASETS)
        print(f"filling: {LABELS[k]}: {fills}")
    print(
        "planner statistics: PostgreSQL VACUUM ANALYZE after filling; SQLite "
        + ("ANALYZE after filling" if args.sqlite_analyze else "none (as in production: Django never runs ANALYZE)")
    )

    def cell(kind, dataset, name):
        return results[kind][dataset]["scenarios"].get(name)

    # 1. Statements.
    print()
    print(
        "SQL statements per pass: data statements (+ transaction control: BEGIN, COMMIT, SAVEPOINT…) / ms in "
        "cursor.execute (COMMIT excluded; SQLite returns from execute at the first row and reads the rest on fetch)"
    )
    width = 44
    cols = [(k, d) for k in kinds for d in ("empty", "history")]
    print(f"{'':{width}}" + "".join(f"{LABELS[k] + ' ' + DATASET_LABELS[d]:>22}" for k, d in cols))
    for name, label in SCENARIOS:
        line = f"{label:{width}}"
        for k, d in cols:
            r = cell(k, "old" if name == "prune_old" else d, name)
            if r is None or (name == "prune_old" and d == "empty"):
                line += f"{'':>22}"
                continue
            extra = r["statements"] - r["data_statements"]
            text = f"{r['data_statements']}" + (f"+{extra}" if extra else "") + f" / {r['sql_ms']:.2f}"
            line += f"{text:>22}"
        print(line)
    print(f"  (prune_old runs on the 10%-old database; its figures are in the {big} columns)")

    # 2. Wall time.
    for stat in ("median", "min"):
        print()
        print(f"wall time of sweep(), {stat} of {args.repeat} passes, ms")
        header = f"{'':{width}}"
        for k in kinds:
            header += f"{LABELS[k] + ' empty':>17}{big:>9}{big + '/empty':>11}"
        if len(kinds) == 2:
            header += f"{'PG/SQLite ' + big:>16}"
        print(header)
        for name, label in SCENARIOS:
            line = f"{label:{width}}"
            values = []
            for k in kinds:
                e = cell(k, "empty", name)
                h = cell(k, "old" if name == "prune_old" else "history", name)
                ev = e["wall"][stat] if e else None
                hv = h["wall"][stat]
                values.append(hv)
                line += f"{fmt(ev, 3):>17}{fmt(hv, 3):>9}{fmt(benchlib.ratio(hv, ev) if ev else None, 2, '×'):>11}"
            if len(kinds) == 2:
                line += f"{fmt(benchlib.ratio(values[1], values[0]), 2, '×'):>16}"
            print(line)

    print()
    print(f"at {big}: each pass's median / the idle pass's median, and the slowest pass (ms)")
    print(f"{'':{width}}" + "".join(f"{LABELS[k] + ' / idle':>20}{'max':>10}" for k in kinds))
    for name, label in SCENARIOS:
        line = f"{label:{width}}"
        for k in kinds:
            dataset = "old" if name == "prune_old" else "history"
            r = cell(k, dataset, name)
            idle = cell(k, dataset, "idle")
            line += f"{fmt(benchlib.ratio(r['wall']['median'], idle['wall']['median']), 2, '×'):>20}"
            line += f"{fmt(r['wall']['max'], 3):>10}"
        print(line)
    print()
    for k in kinds:
        r = cell(k, "old", "idle")
        p = cell(k, "old", "prune_old")
        print(
            f"{LABELS[k]}: 10%-old database: idle {r['data_statements']} statements, median "
            f"{r['wall']['median']:.3f} ms; the pruning pass deleted {p['deleted']['builds']:,} builds and "
            f"{p['deleted']['requests']:,} requests with {p['data_statements']} statements {p['kinds']}"
        )
    print()
    print(f"what each pass did ({big} database; where PostgreSQL's words differ, both are shown)")
    for name, label in SCENARIOS:
        dataset = "old" if name == "prune_old" else "history"
        print(f"  {label:{width}} {cell(kinds[0], dataset, name)['summary']}")
        for k in kinds[1:]:
            if cell(k, dataset, name)["summary"] != cell(kinds[0], dataset, name)["summary"]:
                print(f"  {'':{width}} {LABELS[k]}: {cell(k, dataset, name)['summary']}")

    # 3. Plans.
    for k in kinds:
        print()
        how = "EXPLAIN (ANALYZE, BUFFERS)" if k == "postgres" else "EXPLAIN QUERY PLAN"
        r = results[k]["history"]
        print(f"{LABELS[k]}, {big} database: the idle pass's {len(r['idle_plans'])} data statements under {how}")
        for n, item in enumerate(r["idle_plans"], 1):
            print(f"  [{n}] {shorten(item['sql'])}")
            for line in item["plan"]:
                print(f"        {line}")
    print()
    print(
        f"statements of the captured passes ({big} databases) that read all of publisher_build or "
        f"publisher_buildrequest (or all of one of their indexes), or took ≥ {SLOW_MS:.0f} ms; plans from EXPLAIN"
    )
    for k in kinds:
        # One entry per statement shape (literals left out), with the scenarios that ran it and its slowest time.
        shapes = {}
        for dataset in ("history", "old"):
            for name, items in results[k][dataset]["flagged"].items():
                for item in items:
                    key = (dataset, statement_shape(item["sql"]))
                    entry = shapes.setdefault(key, {"item": item, "names": [], "ms": []})
                    entry["names"].append(name)
                    entry["ms"].append(item["ms"])
        for (dataset, _), entry in shapes.items():
            item = entry["item"]
            scans = "FULL SCAN" if item["scans"] else "no full scan of a build/request table"
            ms = ", ".join(f"{v:.2f}" for v in entry["ms"])
            print(f"  {LABELS[k]} {DATASET_LABELS[dataset]}: {scans}; ms: {ms} in {', '.join(entry['names'])}")
            print(f"      {shorten(item['sql'], 400)}")
            for line in item["plan"][:12]:
                print(f"        {shorten(line, 160)}")
        if not shapes:
            print(f"  {LABELS[k]}: none")
    if args.show_sql:
        dataset = "old" if args.show_sql == "prune_old" else "history"
        for k in kinds:
            r = results[k][dataset]["scenarios"].get(args.show_sql)
            if r is None:
                continue
            print()
            print(
                f"{LABELS[k]} {DATASET_LABELS[dataset]}, {args.show_sql}: the {len(r['executed'])} statements run "
                f"through a cursor ({r['sql_ms']:.2f} ms)"
            )
            for n, query in enumerate(r["executed"], 1):
                print(f"  {n:3} {query['ms']:8.2f} ms  {shorten(query['sql'], 200)}")


def statement_shape(sql):
    """``sql`` with its literals (strings, numbers, IN lists) replaced, to group the same statement across passes."""
    sql = re.sub(r"'[^']*'(::\w+)?", "?", sql)
    sql = re.sub(r"\b\d+(\.\d+)?\b", "?", sql)
    return re.sub(r"\(\?(, \?)*\)", "(…)", sql)


def shorten(sql, limit=300):
    sql = re.sub(r"\s+", " ", sql)
    sql = re.sub(r"IN \(([^()]{80,}?)\)", lambda m: f"IN (… {m.group(1).count(',') + 1} values …)", sql)
    return sql if len(sql) <= limit else sql[: limit - 1] + "…"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--prune-repeat", type=int, default=5)
    parser.add_argument(
        "--sqlite-analyze",
        action="store_true",
        help="give SQLite planner statistics (ANALYZE) after filling, as PRAGMA optimize does on a busy connection",
    )
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--worker", choices=DATASETS, help=argparse.SUPPRESS)
    parser.add_argument("--show-sql", metavar="SCENARIO", help="also print every statement one scenario ran")
    parser.add_argument("--quick", action="store_true", help="2,000 builds, 3 timed passes (make bench QUICK=1)")
    args = parser.parse_args()
    if args.quick:  # smaller figures for `make bench QUICK=1`; options given explicitly win
        for name, value in {"builds": 2000, "repeat": 3, "prune_repeat": 1}.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    size = f"{args.builds // 1000}k" if args.builds >= 1000 else str(args.builds)
    DATASET_LABELS.update(history=size, old=f"{size}, 10% old")
    benchlib.ensure_project_on_path()
    if args.worker:
        worker(args.worker, args.builds, args.repeat, args.prune_repeat, args.sqlite_analyze)
        return 0

    benchlib.exit_cleanly_on_sigterm()
    backends, pg_bin = benchlib.choose_backends(args.backends)
    common = ["--builds", str(args.builds), "--repeat", str(args.repeat), "--prune-repeat", str(args.prune_repeat)]
    if args.sqlite_analyze:
        common.append("--sqlite-analyze")
    mail_env = {"EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend", "ADMINS": "Ops <ops@example.com>"}
    workdir = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    results, pg_version = {}, None
    started = time.monotonic()

    def run(kind, dataset, cluster=None):
        print(f"{LABELS[kind]}: {DATASET_LABELS[dataset]} database: migrating, filling, measuring ...", flush=True)
        env = benchlib.fresh_database(kind, workdir / kind / dataset, cluster=cluster, name=f"bench_{dataset}")
        env.update(mail_env)
        return benchlib.run_worker([SCRIPT, "--worker", dataset, *common], env, timeout=3600)

    try:
        if "sqlite" in backends:
            results["sqlite"] = {d: run("sqlite", d) for d in DATASETS}
        if "postgres" in backends:
            print(f"PostgreSQL: throwaway cluster from {pg_bin} (fsync=off)", flush=True)
            with benchlib.PostgresCluster(pg_bin) as pg:
                pg_version = pg.version
                results["postgres"] = {d: run("postgres", d, pg) for d in DATASETS}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args, benchlib.machine_info(pg_version))
    print(f"\n({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
