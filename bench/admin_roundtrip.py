"""The admin round trip of a publish under gunicorn: POST of the page form with Publish → 302, per Heroku behaviour.

    .venv/bin/python bench/admin_roundtrip.py [--publishes 10] [--backends sqlite,postgres]
        [--heroku-timeouts 1,2,4] [--quick]

An editor's publish as a browser sends it: log in as a superuser, GET the admin's add form of a page, POST it with
its CSRF token and the Publish button (``_saveandpublish``, ``PUBLISH_BUTTON`` in ``publisher/admin/pages.py``).
Timed from sending the POST to its response (the 302 back to the form) received; then, at once, a GET of the admin's
page list (is the next request delayed?); then, once the launch has ended, the same GET again (idle).

The web process is the ``Procfile``'s ``web`` command (``gunicorn settings.wsgi --preload ...``) with one sync worker
(``WEB_CONCURRENCY=1``: a request held by the launch would hold every other), bound to 127.0.0.1 on a free port. Two
of them run side by side on the same database: one with the recording launcher (no network: the baseline) and one
with ``LAUNCHER=heroku`` and ``HEROKU_API_URL`` pointed at a local stand-in (``heroku_requests.HerokuStandIn``, in
this process) that behaves ``fast``, ``slow`` (200 ms), ``hanging`` (never answers) or ``trickling`` (one byte of the
body a second). The cases run round-robin, one publish each per round, after one warm-up publish on each server.

Between publishes, outside the timed window, a controller process (the project's settings, the same database)
waits until the launch has ended (no build ``launching``, no due ``queued`` build), then ends the build as a build
process would (``claim`` with its token, ``finish`` succeeded) or cancels it when the launch failed and it was
queued again; so every publish finds no build and launches one.

Each process is configured through the environment as ``settings/settings.py`` reads it (``benchlib.child_env``:
temporary SQLite file or throwaway PostgreSQL database, SITE_ROOT, VAR_DIR, DEBUG=0, publisher logging at WARNING),
plus ``SECURE_SSL_REDIRECT=0`` (plain HTTP on loopback; Heroku's router terminates TLS) and a settings overlay in the
temporary directory that only swaps the static files storage for Django's plain one: the manifest storage of
production needs ``collectstatic`` into the project's ``staticfiles/``, which a benchmark must not write.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from heroku_requests import SLOW_ANSWER, HerokuStandIn

SCRIPT = str(Path(__file__).resolve())
LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
PUBLISH_BUTTON = "_saveandpublish"  # publisher/admin/pages.py PUBLISH_BUTTON; the form is checked to show it
HEROKU_MODES = ("fast", "slow", "hanging", "trickling")
CASES = ("recording", *HEROKU_MODES)
CASE_LABELS = {
    "recording": "recording launcher (no network)",
    "fast": "Heroku fast",
    "slow": f"Heroku slow ({SLOW_ANSWER * 1e3:.0f} ms)",
    "hanging": "Heroku hanging",
    "trickling": "Heroku trickling (1 byte/s)",
}
USERNAME, PASSWORD = "bench-editor", "bench-editor-password"
APP = "bench-app"
HTTP_TIMEOUT = 30  # seconds, every request to the web process (gunicorn's own --timeout is 30)
SETTLE_TIMEOUT = 60  # seconds the controller waits for a launch to end
BODY = "Lorem ipsum dolor sit amet. " * 40 + "\n\nSecond paragraph."
OVERLAY = '''"""The project's settings with Django's plain static files storage (bench/admin_roundtrip.py)."""

from settings.settings import *  # noqa: F403

STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa
'''


# --- The controller (a child process): ends each build between publishes ---------------------------------------


def controller():
    import django

    django.setup()
    from django.db.models import Q

    from publisher import builds, deferred
    from publisher.models import Build, BuildRequest, BuildState

    for line in sys.stdin:
        if line.strip() != "settle":
            continue
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            at = builds.now()
            due = Q(state=BuildState.QUEUED) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=at))
            busy = Build.objects.filter(due | Q(state=BuildState.LAUNCHING)).exists()
            if not busy and not BuildRequest.objects.filter(build__isnull=True).exists():
                break
            if time.monotonic() > deadline:
                print(json.dumps({"error": f"a launch was still under way after {SETTLE_TIMEOUT}s"}), flush=True)
                return
            time.sleep(0.01)
        outcomes = []
        for build in Build.objects.exclude(state__in=builds.FINAL_STATES).values("pk", "state", "launch_token"):
            if build["state"] == BuildState.LAUNCHED:
                claim = builds.claim(build["pk"], build["launch_token"])
                ended = isinstance(claim, builds.Claim) and builds.finish(claim, state=BuildState.SUCCEEDED)
                outcomes.append("launched" if ended else f"launched, not ended: {claim}")
            else:
                builds.cancel(build["pk"])
                outcomes.append("queued again (launch failed)" if build["state"] == BuildState.QUEUED else "other")
        deferred.wait(timeout=SETTLE_TIMEOUT)
        print(json.dumps({"outcomes": outcomes}), flush=True)


# --- In the parent: web processes, the editor's requests ---------------------------------------------------------


def web_command(port):
    """The Procfile's ``web`` command, run with this Python, bound to 127.0.0.1:``port``."""
    for line in (benchlib.ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == "web":
            argv = shlex.split(command)
            if argv[0] != "gunicorn":
                raise RuntimeError(f"the Procfile's web process is not gunicorn: {command}")
            return [benchlib.PYTHON, "-m", "gunicorn", *argv[1:], "--bind", f"127.0.0.1:{port}"]
    raise RuntimeError("no web process in the Procfile")


class Processes:
    """The child processes of one database's measurement; ``stop()`` ends each by its own pid."""

    def __init__(self):
        self.procs = []

    def start(self, argv, env, log):
        with open(log, "w") as out:
            proc = subprocess.Popen(argv, cwd=benchlib.ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.procs.append(proc)
        return proc

    def controller(self, env, log):
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [benchlib.PYTHON, SCRIPT, "--controller"],
                cwd=benchlib.ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.procs.append(proc)
        return proc

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def csrf_of(html):
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    if found is None:
        raise RuntimeError(f"no CSRF token in the page: {html[:500]}")
    return found.group(1)


def wait_for_web(proc, base, log):
    import requests

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the web process exited {proc.returncode}:\n{Path(log).read_text()[-3000:]}")
        try:
            if requests.get(f"{base}/admin/login/", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the web process did not answer within 90 s:\n{Path(log).read_text()[-3000:]}")


def log_in(base):
    import requests

    session = requests.Session()
    session.trust_env = False
    page = session.get(f"{base}/admin/login/", timeout=HTTP_TIMEOUT)
    data = {"username": USERNAME, "password": PASSWORD, "csrfmiddlewaretoken": csrf_of(page.text), "next": "/admin/"}
    answer = session.post(f"{base}/admin/login/", data=data, allow_redirects=False, timeout=HTTP_TIMEOUT)
    if answer.status_code != 302:
        raise RuntimeError(f"login answered {answer.status_code}: {answer.text[:500]}")
    return session


def publish(session, base, slug):
    """(POST → response, GET of the list right after) in seconds, for one publish of a new page."""
    add = f"{base}/admin/publisher/page/add/"
    form = session.get(add, timeout=HTTP_TIMEOUT)
    if f'name="{PUBLISH_BUTTON}"' not in form.text:
        raise RuntimeError(f"the add form shows no {PUBLISH_BUTTON} button: {form.status_code} {form.text[:500]}")
    data = {
        "title": f"Page {slug}",
        "slug": slug,
        "body": BODY,
        PUBLISH_BUTTON: "Publish",
        "csrfmiddlewaretoken": csrf_of(form.text),
    }
    started = time.perf_counter()
    answer = session.post(add, data=data, headers={"Referer": add}, allow_redirects=False, timeout=HTTP_TIMEOUT)
    answered = time.perf_counter()
    if answer.status_code != 302:
        raise RuntimeError(f"the publish answered {answer.status_code}: {answer.text[:1000]}")
    listed = list_pages(session, base)
    return answered - started, listed


def list_pages(session, base):
    started = time.perf_counter()
    answer = session.get(f"{base}/admin/publisher/page/", timeout=HTTP_TIMEOUT)
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"the page list answered {answer.status_code}: {answer.text[:500]}")
    return elapsed


def settle(controller_proc):
    controller_proc.stdin.write("settle\n")
    controller_proc.stdin.flush()
    line = controller_proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the controller exited ({controller_proc.poll()})")
    answer = json.loads(line)
    if "error" in answer:
        raise RuntimeError(f"controller: {answer['error']}")
    return answer["outcomes"]


def measure(kind, env, args, api, workdir):
    """Start the two web processes and the controller on ``env``'s database; run the rounds; their figures."""
    timeouts = [int(x) for x in args.heroku_timeouts.split(",")]
    (workdir / "bench_admin_settings.py").write_text(OVERLAY)
    env = {
        **env,
        "DJANGO_SETTINGS_MODULE": "bench_admin_settings",
        "PYTHONPATH": f"{benchlib.ROOT}{os.pathsep}{workdir}",
        "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        "WEB_CONCURRENCY": "1",
    }
    made = subprocess.run(
        [benchlib.PYTHON, "manage.py", "createsuperuser", "--noinput", "--username", USERNAME, "--email", "e@x.test"],
        cwd=benchlib.ROOT,
        env={**env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if made.returncode != 0:
        raise RuntimeError(f"createsuperuser failed:\n{made.stdout}{made.stderr}")
    heroku_env = {
        "LAUNCHER": "heroku",
        "HEROKU_API_KEY": "bench-key-web",
        "HEROKU_APP_NAME": APP,
        "HEROKU_API_URL": api.url,
        "HEROKU_CONNECT_TIMEOUT": str(timeouts[0]),
        "HEROKU_READ_TIMEOUT": str(timeouts[1]),
        "HEROKU_TOTAL_TIMEOUT": str(timeouts[2]),
    }
    children = Processes()
    try:
        bases = {}
        for server, extra in (("recording", {}), ("heroku", heroku_env)):
            port = benchlib.free_port()
            log = workdir / f"web-{server}.log"
            proc = children.start(web_command(port), {**env, **extra, "PORT": str(port)}, log)
            bases[server] = (proc, f"http://127.0.0.1:{port}", log)
        control = children.controller(env, workdir / "controller.log")
        for proc, base, log in bases.values():
            wait_for_web(proc, base, log)
        sessions = {server: log_in(base) for server, (_proc, base, _log) in bases.items()}

        def one(case, slug):
            server = "recording" if case == "recording" else "heroku"
            if server == "heroku":
                api.mode = case
            posts = api.count(method="POST", path_end="/dynos")
            post, after = publish(sessions[server], bases[server][1], slug)
            outcomes = settle(control)
            idle = list_pages(sessions[server], bases[server][1])
            return post, after, idle, outcomes, api.count(method="POST", path_end="/dynos") - posts

        for case in ("recording", "fast"):  # warm-up: templates, connections, the first launch thread
            one(case, f"warm-up-{case}")
        figures = {case: {"post": [], "after": [], "idle": [], "outcomes": [], "posts": 0} for case in CASES}
        for n in range(args.publishes):
            for case in CASES:
                post, after, idle, outcomes, posts = one(case, f"{case}-{n}")
                figures[case]["post"].append(post)
                figures[case]["after"].append(after)
                figures[case]["idle"].append(idle)
                figures[case]["outcomes"].extend(outcomes)
                figures[case]["posts"] += posts
        for server, (proc, _base, log) in bases.items():
            if proc.poll() is not None:
                raise RuntimeError(f"the {server} web process exited:\n{Path(log).read_text()[-3000:]}")
        leaked = [line for line in (workdir / "web-heroku.log").read_text().splitlines() if "bench-key-web" in line]
        return {"figures": figures, "key_in_log": len(leaked)}
    finally:
        children.stop()


def summary(seconds):
    values = sorted(seconds)
    p95 = statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]
    return {"median": statistics.median(values) * 1e3, "p95": p95 * 1e3, "max": values[-1] * 1e3}


def report(results, args, info):
    connect, read, total = args.heroku_timeouts.split(",")
    print()
    print(
        f"admin round trip: POST of the page form with Publish → 302, through gunicorn (the Procfile's web command, "
        f"1 sync worker); {args.publishes} publishes per case, round-robin"
    )
    print(
        f"Heroku stand-in: fast, slow ({SLOW_ANSWER * 1e3:.0f} ms), hanging, trickling (1 byte/s); "
        f"HEROKU_CONNECT_TIMEOUT {connect}, HEROKU_READ_TIMEOUT {read}, HEROKU_TOTAL_TIMEOUT {total} (s)"
    )
    benchlib.print_machine(info)
    rows = (
        ("post", "POST Publish → 302 received"),
        ("after", "GET page list, sent right after the 302"),
        ("idle", "GET page list, once the launch has ended"),
    )
    for kind, result in results.items():
        figures = result["figures"]
        stats = {case: {key: summary(figures[case][key]) for key, _ in rows} for case in CASES}
        print()
        print(f"{LABELS[kind]:44}{'median':>10}{'p95':>10}{'max':>10}{'/ fast':>9}{'/ recording':>13}   (ms)")
        for key, label in rows:
            print(f"  {label}")
            for case in CASES:
                s = stats[case][key]
                to_fast = benchlib.ratio(s["median"], stats["fast"][key]["median"])
                to_recording = benchlib.ratio(s["median"], stats["recording"][key]["median"])
                print(
                    f"    {CASE_LABELS[case]:40}{s['median']:>10.2f}{s['p95']:>10.2f}{s['max']:>10.2f}"
                    f"{to_fast:>8.2f}×{to_recording:>12.2f}×"
                )
        print("  ratio of medians: GET right after the 302 / GET once the launch has ended")
        for case in CASES:
            after_idle = benchlib.ratio(stats[case]["after"]["median"], stats[case]["idle"]["median"])
            print(f"    {CASE_LABELS[case]:40}{after_idle:>10.2f}×")
        print("  each publish's build once its launch had ended; POST /apps/bench-app/dynos received by the stand-in")
        for case in CASES:
            counted = {o: figures[case]["outcomes"].count(o) for o in sorted(set(figures[case]["outcomes"]))}
            said = ", ".join(f"{o} ×{n}" for o, n in counted.items())
            print(f"    {CASE_LABELS[case]:40}{said}; {figures[case]['posts']} POST")
        print(f"  lines of the Heroku web process's log naming the API key: {result['key_in_log']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishes", type=int, default=10, help="timed publishes per case (after 1 warm-up)")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument(
        "--heroku-timeouts", default="1,2,4", help="HEROKU_CONNECT/READ/TOTAL_TIMEOUT of the web process, seconds"
    )
    parser.add_argument("--controller", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick", action="store_true", help="SQLite only, 3 publishes per case, timeouts 1,1,2 (make bench QUICK=1)"
    )
    args = parser.parse_args()
    if args.quick:  # options given explicitly win
        for name, value in {"publishes": 3, "backends": "sqlite", "heroku_timeouts": "1,1,2"}.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if args.publishes < 3:
        parser.error("--publishes must be at least 3 (medians of 3 or more)")
    benchlib.ensure_project_on_path()
    if args.controller:
        controller()
        return 0

    benchlib.exit_cleanly_on_sigterm()
    backends, pg_bin = benchlib.choose_backends(args.backends)
    workdir = Path(tempfile.mkdtemp(prefix="bench-admin-"))
    results, pg_version = {}, None
    try:
        with HerokuStandIn() as api:
            if "sqlite" in backends:
                print("SQLite: fresh database file, migrating, two web processes, measuring ...", flush=True)
                env = benchlib.fresh_database("sqlite", workdir / "sqlite")
                results["sqlite"] = measure("sqlite", env, args, api, workdir / "sqlite")
            if "postgres" in backends:
                print(f"PostgreSQL: throwaway cluster from {pg_bin} (fsync=off), migrating, measuring ...", flush=True)
                with benchlib.PostgresCluster(pg_bin) as pg:
                    pg_version = pg.version
                    env = benchlib.fresh_database("postgres", workdir / "postgres", cluster=pg)
                    results["postgres"] = measure("postgres", env, args, api, workdir / "postgres")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args, benchlib.machine_info(pg_version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
