"""A month of publishes through the real state machine, against Heroku Scheduler and one build per publish.

    .venv/bin/python bench/scheduler_trace.py [--seed 11] [--days 30] [--build-minutes 20] [--boot-seconds 30]
                                              [--sweep-every 60] [--quick]

The trace (fixed seed): weekdays have bursts of edits in working hours (09:00-18:00 UTC; a burst is several
publishes a minute or two apart) and a few scattered ones, nights a rare one, weekends a handful.

*publisher* replays it through the real ``publisher.builds`` in a child process, on a fresh SQLite database in a
temporary directory (``benchlib.fresh_database``), with ``publisher.builds.now`` replaced by a simulated clock (as the
``clock`` fixture of ``tests/conftest.py`` does) and the recording launcher: each publish is
``builds.record_request`` in a transaction whose commit dispatches it (attach, launch); a launched build claims
``--boot-seconds`` later (``builds.claim``), renders for ``--build-minutes`` while its heartbeat moves, and ends with
``builds.finish`` and ``builds.launch_next`` as the runner does; the sweep (``publisher.sweep.sweep``) runs every
``--sweep-every`` simulated seconds. A publish is live when the build its request is attached to succeeds (that build
claimed after the request committed; checked).

The others are modelled on the same trace, with the same boot and build times:

- Heroku Scheduler every 10 minutes and every hour: a dyno boots at every tick whatever happened; it reads the content
  when it has booted and builds; a dyno still running after its interval is terminated (Heroku's rule for scheduled
  jobs), so a build longer than the interval never goes live. Also "only if changed": the job exits right after the
  boot when nothing was published since the last build that went live read the content.
- One build per publish: a detached dyno per publish (as a naive ``post_save`` hook does), all running at once; and
  the same one at a time (a FIFO queue, one dyno after another).

Dyno-hours count each dyno from its boot to its end. Latency is publish -> live; a publish that never goes live before
the simulation ends (the trace plus a day) counts as "never".
"""

import argparse
import datetime
import enum
import heapq
import itertools
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import benchlib

SCRIPT = str(Path(__file__).resolve())
START = datetime.datetime(2026, 11, 2, tzinfo=datetime.UTC)  # a Monday
WORK_START, WORK_END = 9, 18
#: The trace's shape: per weekday, bursts of edits in working hours and scattered ones; nights and weekends quiet.
SHAPE = {
    "bursts_per_weekday": 5.0,
    "edits_per_burst": 5.0,  # mean; at least 1
    "seconds_between_burst_edits": 90.0,  # mean of an exponential gap
    "scattered_per_weekday": 4.0,
    "per_night": 0.3,
    "per_weekend_day": 1.5,
}
#: After an "only if changed" job finds nothing to do, its dyno stops this long after booting.
CHECK_SECONDS = 5
DRAIN_SECONDS = 86_400
PAGES = 10_000  # what the simulated builds report as pages_total (their progress moves with time)


# --- The trace ------------------------------------------------------------------------------------------------------


def poisson(rng, mean):
    """Knuth's method: fine for the small means used here."""
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def generate_trace(seed, days):
    """Publish times, in seconds from START, sorted."""
    rng = random.Random(seed)
    times = []
    for day in range(days):
        base = day * 86_400
        weekday = (START + datetime.timedelta(days=day)).weekday() < 5
        if weekday:
            for _ in range(poisson(rng, SHAPE["bursts_per_weekday"])):
                t = base + rng.uniform(WORK_START * 3600, WORK_END * 3600)
                edits = 1 + int(rng.expovariate(1 / (SHAPE["edits_per_burst"] - 1)))
                for _ in range(edits):
                    times.append(t)
                    t += rng.expovariate(1 / SHAPE["seconds_between_burst_edits"])
            for _ in range(poisson(rng, SHAPE["scattered_per_weekday"])):
                times.append(base + rng.uniform(WORK_START * 3600, WORK_END * 3600))
            for _ in range(poisson(rng, SHAPE["per_night"])):  # the night after this day
                times.append(base + rng.uniform(WORK_END * 3600, (24 + WORK_START) * 3600))
        else:
            for _ in range(poisson(rng, SHAPE["per_weekend_day"])):
                times.append(base + rng.uniform(8 * 3600, 22 * 3600))
    return sorted(t for t in times if t < days * 86_400)


def describe_trace(times, days):
    by_kind = {"weekdays in working hours": 0, "weekday nights": 0, "weekends": 0}
    for t in times:
        moment = START + datetime.timedelta(seconds=t)
        if moment.weekday() >= 5:
            by_kind["weekends"] += 1
        elif WORK_START <= moment.hour < WORK_END:
            by_kind["weekdays in working hours"] += 1
        else:
            by_kind["weekday nights"] += 1
    busiest = max(
        (sum(1 for t in times if h * 3600 <= t < (h + 1) * 3600), h) for h in range(days * 24)
    )  # (publishes, hour index)
    return by_kind, busiest


# --- publisher: the real state machine, in the child -----------------------------------------------------------------


class Event(enum.IntEnum):
    """What happens at a simulated moment; at equal times, in this order."""

    CLAIM = 1
    FINISH = 2
    PUBLISH = 3
    SWEEP = 4


class SimClock:
    """``publisher.builds.now`` for the replay: the simulated moment, advanced by the event loop only."""

    def __init__(self, start):
        self.now = start

    def __call__(self):
        return self.now


def replay(times, *, build_seconds, boot_seconds, sweep_every, days):
    import django

    django.setup()
    from django.core import mail
    from django.db import transaction

    from publisher import builds, sweep
    from publisher.launchers import recording
    from publisher.models import Build, BuildRequest, BuildState

    clock = SimClock(START)
    builds.now = clock  # as tests/conftest.py's clock fixture does (this process only)
    mail.outbox = []
    horizon = days * 86_400 + DRAIN_SECONDS
    sequence = itertools.count()
    events = [(t, Event.PUBLISH, next(sequence), i) for i, t in enumerate(times)]
    events.append((0.0, Event.SWEEP, next(sequence), None))
    heapq.heapify(events)
    seen_launches, running, claims_refused, finishes_refused, sweeps = 0, {}, 0, 0, 0
    started = time.perf_counter()

    def schedule(t, kind, data):
        heapq.heappush(events, (t, kind, next(sequence), data))

    def new_launches(t):
        nonlocal seen_launches
        for launched in recording.launches[seen_launches:]:
            schedule(t + boot_seconds, Event.CLAIM, launched)
        seen_launches = len(recording.launches)

    while events:
        t, kind, _, data = heapq.heappop(events)
        if t > horizon:
            break
        clock.now = START + datetime.timedelta(seconds=t)
        if kind == Event.PUBLISH:
            with transaction.atomic():  # the commit dispatches the request (attach, launch), as a publish does
                builds.record_request(f"publish #{data}")
        elif kind == Event.CLAIM:
            claim = builds.claim(data["build_id"], data["token"])
            if isinstance(claim, builds.Claim):
                builds.heartbeat(claim, done=0, total=PAGES, moved=True)
                running[claim.build_id] = (claim, t)
                schedule(t + build_seconds, Event.FINISH, claim.build_id)
            else:
                claims_refused += 1
        elif kind == Event.FINISH:
            claim, _ = running.pop(data)
            if builds.finish(claim, state=BuildState.SUCCEEDED, release=f"sim-b{data}", pages=PAGES):
                builds.launch_next()  # what the runner does after a success
            else:
                finishes_refused += 1
        elif kind == Event.SWEEP:
            for claim, began in running.values():  # the heartbeat thread's latest write, then one pass
                done = min(PAGES, int(PAGES * (t - began) / build_seconds))
                builds.heartbeat(claim, done=done, total=PAGES, moved=True)
            sweep.sweep()
            sweeps += 1
            schedule(t + sweep_every, Event.SWEEP, None)
        new_launches(t)
    replay_seconds = time.perf_counter() - started

    latencies, never, out_of_order = [], 0, 0
    for request in BuildRequest.objects.select_related("build").order_by("pk"):
        build = request.build
        if build is None or build.state != BuildState.SUCCEEDED:
            never += 1
            continue
        if build.started_at < request.created_at:
            out_of_order += 1  # would mean the build read content before the publish: must never happen
        latencies.append((build.finished_at - request.created_at).total_seconds())
    launched = Build.objects.filter(launched_at__isnull=False)
    dyno_seconds = sum(
        ((b.finished_at or clock.now) - b.launched_at).total_seconds()
        for b in launched.only("launched_at", "finished_at")
    )
    benchlib.emit_result(
        {
            "publishes": len(times),
            "requests": BuildRequest.objects.count(),
            "builds_started": Build.objects.filter(started_at__isnull=False).count(),
            "boots": len(recording.launches),
            "dyno_hours": dyno_seconds / 3600,
            "states": dict(sorted(_count(Build.objects.values_list("state", flat=True)).items())),
            "latencies": latencies,
            "never": never,
            "out_of_order": out_of_order,
            "claims_refused": claims_refused,
            "finishes_refused": finishes_refused,
            "sweeps": sweeps,
            "mails": len(mail.outbox),
            "replay_seconds": replay_seconds,
        }
    )


def _count(values):
    counts = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


# --- The others, modelled in the parent ------------------------------------------------------------------------------


@dataclass
class Strategy:
    label: str
    builds_started: int
    boots: int
    dyno_hours: float
    latencies: list
    never: int
    note: str = ""


def scheduler(times, *, interval, only_if_changed, build_seconds, boot_seconds, days):
    """Heroku Scheduler every ``interval`` seconds: a dyno at every tick, terminated after ``interval``.

    Ticks after the month (the drain) are counted only when they build something published in it.
    """
    month, horizon = days * 86_400, days * 86_400 + DRAIN_SECONDS
    pending = list(times)  # publishes not yet read by a build that went live, in order
    latencies, boots, started, dyno_seconds = [], 0, 0, 0.0
    tick = 0.0
    while tick <= horizon:
        reads = tick + boot_seconds
        changed = bool(pending) and pending[0] <= reads
        if only_if_changed or tick >= month:
            if not changed:
                if tick < month:
                    boots += 1
                    dyno_seconds += boot_seconds + CHECK_SECONDS
                tick += interval
                continue
        boots += 1
        started += 1
        if boot_seconds + build_seconds > interval:  # terminated at the next tick: nothing goes live
            dyno_seconds += interval
        else:
            live = reads + build_seconds
            dyno_seconds += boot_seconds + build_seconds
            while pending and pending[0] <= reads:
                latencies.append(live - pending.pop(0))
        tick += interval
    return latencies, len(pending), boots, started, dyno_seconds / 3600


def per_publish(times, *, build_seconds, boot_seconds, one_at_a_time):
    """A dyno per publish: all at once (latency = boot + build), or one after another in publish order."""
    latencies, free_at = [], 0.0
    for t in times:
        begin = max(t, free_at) if one_at_a_time else t
        live = begin + boot_seconds + build_seconds
        latencies.append(live - t)
        free_at = live
    return latencies


def max_overlap(times, seconds):
    """The most dynos running at once when each publish starts one for ``seconds``."""
    ends, most = [], 0
    for t in times:
        while ends and ends[0] <= t:
            heapq.heappop(ends)
        heapq.heappush(ends, t + seconds)
        most = max(most, len(ends))
    return most


def strategies(times, ours, args):
    build, boot = args.build_minutes * 60, args.boot_seconds
    rows = [
        Strategy(
            "publisher (coalescing state machine)",
            ours["builds_started"],
            ours["boots"],
            ours["dyno_hours"],
            ours["latencies"],
            ours["never"],
        )
    ]
    for interval, name in ((600, "10 minutes"), (3600, "hourly")):
        for only in (False, True):
            latencies, never, boots, started, hours = scheduler(
                times, interval=interval, only_if_changed=only, build_seconds=build, boot_seconds=boot, days=args.days
            )
            label = f"Heroku Scheduler {name}" + (", only if changed" if only else "")
            note = "every build terminated at the interval" if boot + build > interval else ""
            rows.append(Strategy(label, started, boots, hours, latencies, never, note))
    parallel = per_publish(times, build_seconds=build, boot_seconds=boot, one_at_a_time=False)
    rows.append(
        Strategy(
            "one build per publish, all at once",
            len(times),
            len(times),
            len(times) * (boot + build) / 3600,
            parallel,
            0,
            f"up to {max_overlap(times, boot + build)} dynos at once",
        )
    )
    serial = per_publish(times, build_seconds=build, boot_seconds=boot, one_at_a_time=True)
    rows.append(
        Strategy(
            "one build per publish, one at a time",
            len(times),
            len(times),
            len(times) * (boot + build) / 3600,
            serial,
            0,
        )
    )
    return rows


# --- Report -------------------------------------------------------------------------------------------------------


def minutes(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    if q == "median":
        return statistics.median(values) / 60
    if q == "max":
        return values[-1] / 60
    return statistics.quantiles(values, n=100, method="inclusive")[94] / 60 if len(values) > 1 else values[0] / 60


def fmt(value, spec, nan="never"):
    return nan if value != value else format(value, spec)


def ratio_text(value):
    return "n/a" if value != value else f"{value:.2f}×"


def report(times, ours, rows, args, info):
    by_kind, (busiest, hour) = describe_trace(times, args.days)
    print()
    print(
        f"a month of publishes (seed {args.seed}, {args.days} days from {START:%Y-%m-%d}, a Monday): {len(times)}: "
        + ", ".join(f"{n} on {kind}" for kind, n in by_kind.items())
        + f"; busiest hour {busiest} publishes ({START + datetime.timedelta(hours=hour):%a %d %H:00})"
    )
    print(
        f"build {args.build_minutes} min after the content is read; dyno boot {args.boot_seconds} s; "
        f"publisher's sweep every {args.sweep_every} s ({ours['sweeps']:,} passes); the simulation ends a day after "
        "the trace"
    )
    benchlib.print_machine(info)
    print()
    anchor = rows[0]
    print(
        f"{'':44}{'builds':>8}{'boots':>8}{'dyno-h':>9}{'×':>8}"
        f"{'median':>9}{'p95':>9}{'max':>9}{'never':>7}   publish → live, minutes"
    )
    for row in rows:
        print(
            f"  {row.label:42}{row.builds_started:>8,}{row.boots:>8,}{row.dyno_hours:>9.1f}"
            f"{ratio_text(benchlib.ratio(row.dyno_hours, anchor.dyno_hours)):>8}"
            f"{fmt(minutes(row.latencies, 'median'), '.1f'):>9}{fmt(minutes(row.latencies, 'p95'), '.1f'):>9}"
            f"{fmt(minutes(row.latencies, 'max'), '.1f'):>9}{row.never:>7}" + (f"   {row.note}" if row.note else "")
        )
    print()
    print("ratios to publisher (median latency, p95 latency, dyno-hours, boots)")
    for row in rows[1:]:
        parts = [
            ratio_text(benchlib.ratio(minutes(row.latencies, q), minutes(anchor.latencies, q)))
            for q in ("median", "p95")
        ]
        parts.append(ratio_text(benchlib.ratio(row.dyno_hours, anchor.dyno_hours)))
        parts.append(ratio_text(benchlib.ratio(row.boots, anchor.boots)))
        print(f"  {row.label:42}" + "".join(f"{p:>10}" for p in parts))
    print()
    hours = args.days * 24
    passes = hours * 6
    print(
        "publisher's safety net is not in its dyno-hours above: a worker dyno running the sweep every minute is "
        f"{hours:,} dyno-hours a month; without one, Heroku Scheduler running sweepbuilds every 10 minutes is "
        f"{passes:,} boots, {passes * (args.boot_seconds + CHECK_SECONDS) / 3600:.0f} dyno-hours at "
        f"{args.boot_seconds + CHECK_SECONDS} s each."
    )
    print(
        f"publisher: {ours['requests']} requests; builds by state {ours['states']}; claims refused "
        f"{ours['claims_refused']}, finishes refused {ours['finishes_refused']}, publishes read before they "
        f"committed {ours['out_of_order']}, mails {ours['mails']}; replayed in {ours['replay_seconds']:.1f} s"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--build-minutes", type=float, default=20)
    parser.add_argument("--boot-seconds", type=float, default=30)
    parser.add_argument("--sweep-every", type=int, default=60, help="simulated seconds between sweep passes")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument(
        "--quick", action="store_true", help="the sweep every 30 minutes (make bench QUICK=1; explicit options win)"
    )
    parser.add_argument("--worker", metavar="TRACE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        for name, value in {"sweep_every": 1800}.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    benchlib.ensure_project_on_path()
    if args.worker:
        times = json.loads(Path(args.worker).read_text())
        replay(
            times,
            build_seconds=args.build_minutes * 60,
            boot_seconds=args.boot_seconds,
            sweep_every=args.sweep_every,
            days=args.days,
        )
        return 0

    benchlib.exit_cleanly_on_sigterm()
    times = generate_trace(args.seed, args.days)
    workdir = Path(tempfile.mkdtemp(prefix="bench-trace-"))
    try:
        trace = workdir / "trace.json"
        trace.write_text(json.dumps(times))
        env = benchlib.fresh_database("sqlite", workdir / "sqlite")
        env["EMAIL_BACKEND"] = "django.core.mail.backends.locmem.EmailBackend"
        print(f"replaying {len(times)} publishes through publisher.builds (SQLite, simulated clock) ...", flush=True)
        worker_args = [SCRIPT, "--worker", str(trace), "--days", str(args.days)]
        worker_args += ["--build-minutes", str(args.build_minutes), "--boot-seconds", str(args.boot_seconds)]
        worker_args += ["--sweep-every", str(args.sweep_every)]
        ours = benchlib.run_worker(worker_args, env, timeout=3600)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = strategies(times, ours, args)
    report(times, ours, rows, args, benchlib.machine_info())
    if args.json:
        Path(args.json).write_text(json.dumps({"trace": times, "publisher": ours}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
