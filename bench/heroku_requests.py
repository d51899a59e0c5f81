"""Heroku API requests per launch: our ``HerokuLauncher.launch`` against heroku3's documented path, on one stand-in.

    .venv/bin/python bench/heroku_requests.py [--launches 50] [--quick]

heroku3's README starts a detached dyno with ``conn = heroku3.from_key(key)``, ``app = conn.app(name)``,
``app.run_command_detached(command)``. Both clients here talk to the same local stand-in for the Heroku Platform API
on 127.0.0.1 (``HerokuStandIn``, in this process), which answers every request at once and counts the requests it
receives by client (told apart by their API key), method and path, and the TCP connections they open. It validates
nothing: a request is counted and answered.

- *ours*: ``HerokuLauncher(...).launch(build_id=..., token=...)`` with the options the settings would give it
  (``API_URL`` pointed at the stand-in).
- *heroku3, documented path*: ``heroku3.from_key`` (``heroku3.api.HEROKU_URL`` pointed at the stand-in, a session
  whose every request has a (5 s, 15 s) timeout, since heroku3 passes none), ``conn.app(name)``,
  ``app.run_command_detached(command, env=...)``, all three for every launch, as the README's example runs them.
- *heroku3, connection kept*: ``from_key`` and ``conn.app`` once, then ``run_command_detached`` per launch: what a
  long-lived process could do (an extra row, not the documented example).

The launches run in a child process configured like every benchmark's (``benchlib.child_env``: the project's
settings, a temporary SITE_ROOT / VAR_DIR; no database is opened), round-robin over the three clients, after one
warm-up launch each. Wall time is from the call to its return, per launch; the counts are the stand-in's.
"""

import argparse
import base64
import http.server
import json
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import benchlib

SCRIPT = str(Path(__file__).resolve())
APP = "bench-app"
CLIENTS = {
    "ours": ("bench-key-ours", "ours: HerokuLauncher.launch"),
    "heroku3": ("bench-key-heroku3", "heroku3 documented path (from_key, app, run_command_detached)"),
    "heroku3_kept": ("bench-key-heroku3-kept", "heroku3, conn and app kept (run_command_detached only)"),
}
KEYS = {key: client for client, (key, _label) in CLIENTS.items()}
CLIENT_TIMEOUT = (5, 15)  # connect, read: the heroku3 session's (our launcher has its own)
SLOW_ANSWER = 0.2  # seconds, the "slow" behaviour
DYNO = {"id": "01234567-89ab-cdef-0123-456789abcdef", "name": "run.1", "state": "starting", "type": "run"}


# --- The stand-in (also used by bench/admin_roundtrip.py) ----------------------------------------------------------


class HerokuStandIn:
    """A local stand-in for the Heroku Platform API on 127.0.0.1: ``with HerokuStandIn() as api: api.url``.

    ``GET /account/rate-limits``, ``GET /apps/{app}`` and ``POST /apps/{app}/dynos`` are answered (anything else
    404); nothing is validated. ``mode`` applies to ``POST .../dynos``: ``fast`` (at once), ``slow`` (after
    ``SLOW_ANSWER``), ``hanging`` (accepts and never answers until closed) and ``trickling`` (the headers, then one
    byte of the body a second). ``requests`` counts ``(client, method, path)``, the client named by its API key
    (``KEYS``, else ``other``); ``connections`` counts TCP connections by the client of their first request;
    ``body_keys`` the key sets of the dyno bodies by client. HTTP/1.1 with keep-alive, as Heroku's API.
    """

    def __init__(self, mode="fast"):
        self.mode = mode
        self.requests = Counter()
        self.connections = Counter()
        self.body_keys = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def count(self, client=None, method=None, path_end=None):
        with self._lock:
            return sum(
                n
                for (c, m, p), n in self.requests.items()
                if (client is None or c == client) and (method is None or m == method)
                if path_end is None or p.endswith(path_end)
            )

    def snapshot(self):
        with self._lock:
            return Counter(self.requests), Counter(self.connections)

    def start(self):
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # No Nagle: the body's segment must not wait for the client's delayed ACK of the headers' (about
                # 40 ms on a connection's later requests), a cost of this stand-in's two writes, not of Heroku.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.first_request = True

            def log_message(self, *args):
                pass

            def client_name(self):
                auth = self.headers.get("Authorization") or ""
                key = ""
                if auth.startswith("Bearer "):
                    key = auth[len("Bearer ") :]
                elif auth.startswith("Basic "):
                    try:
                        key = base64.b64decode(auth[len("Basic ") :]).decode().partition(":")[2]
                    except ValueError:
                        key = ""
                return KEYS.get(key, "other")

            def record(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                client = self.client_name()
                path = self.path.split("?")[0]
                with stand_in._lock:
                    stand_in.requests[(client, self.command, path)] += 1
                    if self.first_request:
                        stand_in.connections[client] += 1
                    if self.command == "POST" and path.endswith("/dynos"):
                        try:
                            stand_in.body_keys.setdefault(client, set()).update(json.loads(body or b"{}"))
                        except ValueError:
                            pass
                self.first_request = False
                return path

            def answer(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", "bench-stand-in")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = self.record()
                if path == "/account/rate-limits":
                    self.answer(200, {"remaining": 4500})
                elif path.startswith("/apps/") and path.count("/") == 2:
                    name = path.split("/")[2]
                    self.answer(200, {"id": "11111111-2222-3333-4444-555555555555", "name": name, "stack": None})
                else:
                    self.answer(404, {"id": "not_found", "message": "Not found (bench stand-in)."})

            def do_POST(self):
                path = self.record()
                if not (path.startswith("/apps/") and path.endswith("/dynos")):
                    self.answer(404, {"id": "not_found", "message": "Not found (bench stand-in)."})
                    return
                mode = stand_in.mode
                try:
                    if mode == "hanging":
                        stand_in._closing.wait(120)  # longer than any client timeout the benches set
                        self.close_connection = True
                        return
                    if mode == "slow":
                        time.sleep(SLOW_ANSWER)
                    if mode == "trickling":
                        data = json.dumps(DYNO).encode()
                        self.send_response(201)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.flush()
                        for byte in data:
                            if stand_in._closing.wait(1):
                                break
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                        self.close_connection = True
                        return
                    self.answer(201, DYNO)
                except OSError:  # the client gave up (its timeout)
                    self.close_connection = True

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="heroku-stand-in", daemon=True).start()
        return self

    def close(self):
        if self._server is None:
            return
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._server = None


# --- In the child: the launches ------------------------------------------------------------------------------------


def worker(url, launches):
    import django

    django.setup()
    import heroku3
    import heroku3.api
    import requests

    from publisher.launchers.heroku import HerokuLauncher

    class TimeoutSession(requests.Session):
        def request(self, method, url, **kwargs):
            kwargs.setdefault("timeout", CLIENT_TIMEOUT)
            return super().request(method, url, **kwargs)

    heroku3.api.HEROKU_URL = url  # from_key authenticates at once, against HerokuCore's default URL
    ours = HerokuLauncher(API_KEY=CLIENTS["ours"][0], APP_NAME=APP, API_URL=url)
    kept_app = []

    def launch_ours(build_id, token):
        return ours.launch(build_id=build_id, token=token)

    def launch_heroku3(build_id, token):
        conn = heroku3.from_key(CLIENTS["heroku3"][0], session=TimeoutSession())
        app = conn.app(APP)
        return app.run_command_detached(command(build_id), env=environment(build_id, token))

    def launch_heroku3_kept(build_id, token):
        if not kept_app:
            conn = heroku3.from_key(CLIENTS["heroku3_kept"][0], session=TimeoutSession())
            kept_app.append(conn.app(APP))
        return kept_app[0].run_command_detached(command(build_id), env=environment(build_id, token))

    def command(build_id):
        return ours.command(build_id=build_id)

    def environment(build_id, token):
        return {"PUBLISHER_BUILD_ID": str(build_id), **ours.build_environment(token=token)}

    clients = {"ours": launch_ours, "heroku3": launch_heroku3, "heroku3_kept": launch_heroku3_kept}
    times = {name: [] for name in clients}
    build_id = 0
    for n in range(launches + 1):  # the first round is a warm-up (imports, the kept connection)
        for name, launch in clients.items():
            build_id += 1
            started = time.perf_counter()
            launch(build_id, f"token-{build_id}")
            elapsed = time.perf_counter() - started
            if n:
                times[name].append(elapsed)
    benchlib.emit_result({"times": times, "heroku3": heroku3.__version__ if hasattr(heroku3, "__version__") else "?"})


# --- In the parent -------------------------------------------------------------------------------------------------


def heroku3_version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("heroku3")
    except PackageNotFoundError:
        return "?"


def report(args, api, times, info):
    requests_by, connections_by = api.snapshot()
    counted = args.launches + 1  # the warm-up launch sends requests too
    print()
    print(
        f"Heroku API requests per launch: {args.launches} timed launches per client (+1 warm-up each), round-robin, "
        f"against one local stand-in; heroku3 {heroku3_version()}"
    )
    benchlib.print_machine(info)
    print()
    print(
        f"requests and TCP connections over the {counted} launches of each client; "
        f"wall time of the {args.launches} timed ones"
    )
    print(f"{'':64}{'requests':>9}{'/launch':>9}{'conns':>7}{'/launch':>9}{'median ms':>11}{'max ms':>9}")
    medians, per_launch = {}, {}
    for client, (_key, label) in CLIENTS.items():
        total = sum(n for (c, _m, _p), n in requests_by.items() if c == client)
        per_launch[client] = total / counted
        medians[client] = statistics.median(times[client]) * 1e3
        print(
            f"  {label:62}{total:>9}{per_launch[client]:>9.2f}{connections_by[client]:>7}"
            f"{connections_by[client] / counted:>9.2f}{medians[client]:>11.3f}{max(times[client]) * 1e3:>9.3f}"
        )
    print()
    print(f"{'ratios to ours':64}{'requests':>9}{'wall (median)':>20}")
    for client, (_key, label) in CLIENTS.items():
        if client != "ours":
            requests_ratio = benchlib.ratio(per_launch[client], per_launch["ours"])
            wall_ratio = benchlib.ratio(medians[client], medians["ours"])
            print(f"  {label:62}{requests_ratio:>8.2f}×{wall_ratio:>19.2f}×")
    print()
    print("requests by method and path (totals)")
    for client in CLIENTS:
        rows = sorted((m, p, n) for (c, m, p), n in requests_by.items() if c == client)
        print(f"  {client:14}{', '.join(f'{m} {p}: {n}' for m, p, n in rows)}")
    others = sum(n for (c, _m, _p), n in requests_by.items() if c not in CLIENTS)
    if others:
        print(f"  requests from no known client: {others}")
    print("keys of the POST /apps/{app}/dynos body (counted, not validated)")
    for client in CLIENTS:
        print(f"  {client:14}{', '.join(sorted(api.body_keys.get(client, ())))}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=50, help="timed launches per client (after 1 warm-up)")
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="10 launches per client (make bench QUICK=1)")
    args = parser.parse_args()
    if args.quick and args.launches == parser.get_default("launches"):
        args.launches = 10
    if args.launches < 3:
        parser.error("--launches must be at least 3 (medians of 3 or more)")
    benchlib.ensure_project_on_path()
    if args.worker:
        worker(args.url, args.launches)
        return 0

    benchlib.exit_cleanly_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="bench-heroku-requests-"))
    try:
        with HerokuStandIn() as api:
            env = benchlib.child_env(workdir, f"sqlite:///{workdir / 'unused.sqlite3'}")
            print("launching against the local Heroku stand-in ...", flush=True)
            result = benchlib.run_worker(
                [SCRIPT, "--worker", "--url", api.url, "--launches", str(args.launches)], env, timeout=600
            )
            report(args, api, result["times"], benchlib.machine_info("not used"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
