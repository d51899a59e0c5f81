"""Shared by the benchmarks in ``bench/``: a throwaway PostgreSQL cluster, fresh databases, child environments.

Every benchmark runs its measurements in child processes, one per database, each configured only through the
environment the way ``settings/settings.py`` reads it (``DATABASE_URL``, ``SITE_ROOT``, ``VAR_DIR``, ``LAUNCHER``,
``SECRET_KEY``, ``DEBUG``). Nothing touches the developer's ``var/``: every file lives in a temporary directory that
is removed at the end.

The PostgreSQL cluster is started the way ``tests/run`` starts it: ``initdb``/``pg_ctl`` from ``PATH`` or
``/usr/lib/postgresql/*/bin``, as the ``postgres`` user when run as root, data and socket in a ``mktemp`` directory,
listening on a free port of 127.0.0.1 only. It runs with ``fsync=off`` (nothing it holds is worth a flush), so a
PostgreSQL commit here costs no disk flush; SQLite in WAL mode with ``synchronous=NORMAL`` (as the settings configure
it) does not flush on commit either, which keeps the two comparable.
"""

import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RECORDING_LAUNCHER = "publisher.launchers.recording.RecordingLauncher"
PG_SETTINGS = {"fsync": "off", "max_connections": "200"}
RESULT_PREFIX = "BENCH-RESULT "
#: ``manage.py shell -c`` code that bulk-inserts ``{count}`` published pages of about 2.4 KB (no build requests).
FILL_PAGES = """
from django.utils import timezone
from publisher.models import Page
now = timezone.now()
body = "Lorem ipsum dolor sit amet. " * 40
for start in range(0, {count}, 5000):
    Page.objects.bulk_create(
        Page.published_copy(slug=f"page-{{i:07d}}", title=f"Page {{i}}", body=body, published_at=now)
        for i in range(start, min(start + 5000, {count}))
    )
"""


def ensure_project_on_path():
    """Let a script run as ``python bench/x.py`` import the project (``settings``, ``publisher``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def exit_cleanly_on_sigterm():
    """SIGTERM unwinds like Ctrl-C, so ``finally`` blocks stop the cluster and remove temporary files."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


# --- PostgreSQL ----------------------------------------------------------------------------------------------------


def find_pg_bin():
    """The directory holding ``initdb`` and ``pg_ctl``, or None (same search as ``tests/run``)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).parent

    def version_key(path):
        return [int(part) for part in re.findall(r"\d+", path.parent.name)]

    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True):
        if os.access(candidate / "initdb", os.X_OK) and os.access(candidate / "pg_ctl", os.X_OK):
            return candidate
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """A throwaway cluster: ``with PostgresCluster(bin_dir) as pg: url = pg.create_database("x")``."""

    def __init__(self, bin_dir):
        self.bin_dir = Path(bin_dir)
        self.dir = None
        self.port = None
        self.version = None
        self._as_pg = []

    def _run(self, *args, log):
        with open(log, "w") as out:
            result = subprocess.run([*self._as_pg, *args], stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        if result.returncode != 0:
            server_log = self.dir / "server.log"
            details = Path(log).read_text() + (server_log.read_text() if server_log.exists() else "")
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{details}")

    def start(self):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        if os.geteuid() == 0:
            # initdb refuses to run as root: the cluster belongs to the postgres user.
            shutil.chown(self.dir, user="postgres")
            self._as_pg = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        data = self.dir / "data"
        initdb = str(self.bin_dir / "initdb")
        self._run(initdb, "-A", "trust", "-U", "postgres", "-D", str(data), log=self.log("initdb"))
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} " + " ".join(
            f"-c {name}={value}" for name, value in PG_SETTINGS.items()
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            *("-D", str(data), "-l", str(self.dir / "server.log"), "-w", "-t", "60", "-o", options, "start"),
            log=self.log("pg_ctl"),
        )
        self.version = self._query("SHOW server_version")
        return self

    def log(self, name):
        return self.dir / f"{name}.log"

    def stop(self):
        if self.dir is None:
            return
        subprocess.run(
            [*self._as_pg, str(self.bin_dir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    def url(self, name="postgres"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def _query(self, sql):
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            cursor = conn.execute(sql)
            row = cursor.fetchone() if cursor.description else None
            return row[0] if row else None

    def create_database(self, name):
        """An empty database; returns its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}")
        self._query(f"DROP DATABASE IF EXISTS {name}")
        self._query(f"CREATE DATABASE {name}")
        return self.url(name)


# --- Databases and child environments ------------------------------------------------------------------------------


def child_env(workdir, database_url, **extra):
    """The environment of a process that runs the project's settings against ``database_url`` under ``workdir``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HEROKU_", "DATABASE_", "SITE_", "BUILD_", "DJANGO_", "PUBLISHER_", "SQLITE_"))
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "settings.settings",
            "DATABASE_URL": database_url,
            "SITE_ROOT": str(Path(workdir) / "site"),
            "VAR_DIR": str(Path(workdir) / "var"),
            "LAUNCHER": RECORDING_LAUNCHER,
            "SECRET_KEY": "bench-secret-key",
            "DEBUG": "0",  # DEBUG on would keep every query in memory and time it
            # The figures are the state machine's, not the cost of writing INFO lines to a terminal.
            "PUBLISHER_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update({key: str(value) for key, value in extra.items()})
    return env


def fresh_database(kind, workdir, *, cluster=None, name="bench"):
    """Create an empty database of ``kind`` ("sqlite" or "postgres"), migrate it, and return a child environment.

    SQLite: a new file in ``workdir`` (WAL and IMMEDIATE transactions as ``settings/settings.py`` configures them).
    PostgreSQL: a new database ``name`` in ``cluster``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "sqlite":
        url = f"sqlite:///{workdir / (name + '.sqlite3')}"
    elif kind == "postgres":
        url = cluster.create_database(name)
    else:
        raise ValueError(kind)
    env = child_env(workdir, url)
    result = subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"migrate on {kind} failed:\n{result.stdout}{result.stderr}")
    return env


def run_worker(args, env, *, timeout=1800):
    """Run ``python <args>`` in ``env``; return the JSON it printed after RESULT_PREFIX (its other output is shown)."""
    proc = subprocess.run(
        [PYTHON, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
        elif line.strip():
            print(f"  | {line}")
    if proc.stderr.strip():
        for line in proc.stderr.strip().splitlines()[-40:]:
            print(f"  ! {line}")
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"worker {args} exited {proc.returncode} without a result")
    return result


def emit_result(data):
    print(RESULT_PREFIX + json.dumps(data), flush=True)


# --- Figures -------------------------------------------------------------------------------------------------------


def summary_ms(seconds):
    """median, p99, max of a list of durations in seconds, in milliseconds."""
    values = sorted(seconds)
    if not values:
        return {"n": 0, "median": float("nan"), "p99": float("nan"), "max": float("nan")}
    p99 = statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]
    return {"n": len(values), "median": statistics.median(values) * 1e3, "p99": p99 * 1e3, "max": values[-1] * 1e3}


def ratio(a, b):
    if not b or a != a or b != b:  # zero or NaN
        return float("nan")
    return a / b


def machine_info(pg_version=None):
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgresql": pg_version or "not found",
        "sqlite": _sqlite_version(),
        "load": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
    }


def _sqlite_version():
    import sqlite3

    return sqlite3.sqlite_version


def print_machine(info):
    print(
        f"machine: nproc={info['nproc']}  Python {info['python']}  PostgreSQL {info['postgresql']}  "
        f"SQLite {info['sqlite']}  ({info['platform']})"
    )
    print(f"load average (1, 5, 15 min) at the end: {info['load']}")


def choose_backends(spec):
    """The backends asked for (``sqlite,postgres``), without PostgreSQL when its binaries are missing; and its bin."""
    backends = [b.strip() for b in spec.split(",") if b.strip()]
    pg_bin = find_pg_bin() if "postgres" in backends else None
    if "postgres" in backends and pg_bin is None:
        print("PostgreSQL binaries not found (initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin): SQLite only.")
        backends.remove("postgres")
    return backends, pg_bin
