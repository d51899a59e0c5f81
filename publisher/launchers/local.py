"""Run each build as a detached process on this machine (DESIGN §4).

The build is ``<python> manage.py buildstaticsite --build ID`` in the project root, its token in the environment
(``PUBLISHER_BUILD_TOKEN``, so no ``ps`` shows it), with ``stdin`` from ``/dev/null`` and its output appended to
``<LOG_DIR>/builds/<ID>.log``, in a session of its own so it outlives the web process and stops as a group.

The launching process (runserver, gunicorn, the worker) may live for days, so it must neither collect children nor
leave zombies behind. It therefore does not start the build itself: a short-lived helper Python starts it, reports
its pid and start time, and exits. The launcher waits for that helper only; the build is re-parented to init (or the
nearest subreaper), which reaps it when it ends.

A handle names the host, the pid and the process's start time, so a pid reused by another process reads as
``gone`` and is never signalled.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core import checks

from .base import GONE, RUNNING, UNKNOWN, BaseLauncher, LaunchError

logger = logging.getLogger(__name__)

PROC = Path("/proc")
HELPER_TIMEOUT = 30  # seconds for the helper to start the build and report
KILL_WAIT = 2  # seconds to wait for a group to vanish after SIGKILL
POLL = 0.05

E020 = "publisher.E020"  # no manage.py in the project directory
E021 = "publisher.E021"  # PYTHON is not an executable file
E022 = "publisher.E022"  # STOP_GRACE is not a non-negative number
E023 = "publisher.E023"  # not a POSIX system
W020 = "publisher.W020"  # the build log directory cannot be written

# Runs in the helper Python (``python -I -c SPAWN SPEC``). Field 22 of /proc/<pid>/stat is the start time in clock
# ticks since boot; the build cannot have been reaped yet (the helper is its parent), so it is always readable.
# Without /proc the launcher asks ``ps`` instead.
SPAWN = """
import json, subprocess, sys
spec = json.loads(sys.argv[1])
try:
    child = subprocess.Popen(
        spec["argv"], cwd=spec["cwd"], stdin=subprocess.DEVNULL, stdout=spec["log_fd"], stderr=spec["log_fd"],
        start_new_session=True,
    )
except OSError as exc:
    sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(1)
started = None
if spec["proc"]:
    try:
        with open(f"{spec['proc']}/{child.pid}/stat", "rb") as stat:
            started = int(stat.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        pass
sys.stdout.write(json.dumps({"pid": child.pid, "started": started}))
"""


def process_state(pid):
    """``(start time, state letter)`` of the process ``pid``, or ``None`` when there is none.

    Linux: ``/proc/<pid>/stat`` (start time in clock ticks). Elsewhere: ``ps`` (start time as text).
    """
    if PROC.is_dir():
        try:
            data = (PROC / str(int(pid)) / "stat").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return None
        fields = data.rsplit(b")", 1)[1].split()
        return int(fields[19]), fields[0].decode()
    result = subprocess.run(
        ["ps", "-o", "stat=", "-o", "lstart=", "-p", str(int(pid))],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    line = result.stdout.strip()
    if result.returncode != 0 or not line:
        return None
    state, _, started = line.partition(" ")
    return " ".join(started.split()), state[:1]


def group_alive(pgid):
    """Whether any process of group ``pgid`` is still running (zombies do not count)."""
    if PROC.is_dir():
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue  # it ended while we looked
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
        return False
    result = subprocess.run(
        ["ps", "-A", "-o", "pgid=", "-o", "stat="],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "LC_ALL": "C"},
        check=True,
    )
    for line in result.stdout.splitlines():
        group, _, state = line.strip().partition(" ")
        if group == str(pgid) and not state.strip().startswith("Z"):
            return True
    return False


class LocalLauncher(BaseLauncher):
    """Starts the build as a detached local process in its own session.

    Options: ``PYTHON`` (default: the Python running Django), ``PROJECT_DIR`` (default: ``settings.BASE_DIR``,
    where ``manage.py`` is), ``STOP_GRACE`` (seconds between SIGTERM and SIGKILL, default 10).
    """

    name = "local"
    option_defaults = {"PYTHON": "", "PROJECT_DIR": "", "STOP_GRACE": 10}

    def python(self):
        return str(self.options["PYTHON"] or sys.executable)

    def project_dir(self):
        return Path(self.options["PROJECT_DIR"] or settings.BASE_DIR)

    def log_dir(self):
        log_dir = Path(self.config.build_log_dir)
        return log_dir if log_dir.is_absolute() else self.project_dir() / log_dir

    # --- the contract ---------------------------------------------------------------------------------------

    def launch(self, *, build_id, token):
        build_id = int(build_id)
        log_path = self.log_dir() / f"{build_id}.log"
        spec = {
            "argv": [self.python(), *self.build_arguments(build_id=build_id)],
            "cwd": str(self.project_dir()),
            "proc": str(PROC) if PROC.is_dir() else None,
        }
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LaunchError(
                f"Cannot open the build log {log_path}: {exc.strerror or exc}.", retryable=False, needs_operator=True
            ) from exc
        try:
            now = datetime.now(UTC).isoformat(timespec="seconds")
            os.write(log_fd, f"=== {now} launching build {build_id}\n".encode())
            helper = subprocess.run(
                [sys.executable, "-I", "-c", SPAWN, json.dumps({**spec, "log_fd": log_fd})],
                # The helper passes its environment on to the build; the token never reaches a command line.
                env={**os.environ, **self.build_environment(token=token)},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                pass_fds=(log_fd,),
                timeout=HELPER_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise LaunchError(f"Could not start build {build_id}: {type(exc).__name__}: {exc}") from exc
        finally:
            os.close(log_fd)
        report = self._helper_report(helper)
        if "pid" not in report:
            problem = report.get("error") or helper.stderr.decode(errors="replace").strip()[-500:] or "no report"
            raise LaunchError(
                f"Could not start build {build_id} with {spec['argv'][0]} in {spec['cwd']}: {problem}",
                retryable=False,
                needs_operator=True,
            )
        pid, started = int(report["pid"]), report.get("started")
        if started is None:  # no /proc: ask ps (the build may already have ended, then it reads as gone)
            try:
                state = process_state(pid)
            except (OSError, subprocess.SubprocessError) as exc:
                logger.warning("Cannot read the start time of pid %s: %s", pid, exc)
                state = None
            started = state[0] if state else None
        handle = {"host": socket.gethostname(), "pid": pid, "started": started, "log": str(log_path)}
        logger.info("Launched build %s as pid %s (log %s)", build_id, pid, log_path)
        return handle

    def status(self, handle):
        self._require_handle(handle)
        if handle.get("host") != socket.gethostname():
            return UNKNOWN
        try:
            state = process_state(handle["pid"])
        except (OSError, subprocess.SubprocessError):
            return UNKNOWN
        if state is None or state[0] != handle.get("started") or state[1] in ("Z", "X"):
            return GONE
        return RUNNING

    def stop(self, handle):
        self._require_handle(handle)
        if handle.get("host") != socket.gethostname():
            raise LaunchError(
                f"Build process {self.describe(handle)} runs on another host; stop it there.",
                retryable=False,
                needs_operator=True,
            )
        pid = int(handle["pid"])
        try:
            state = process_state(pid)
        except (OSError, subprocess.SubprocessError) as exc:
            raise LaunchError(f"Cannot inspect {self.describe(handle)}: {exc}") from exc
        if state is not None and state[0] != handle.get("started"):
            logger.info("Build process %s is gone (pid reused); nothing to stop", self.describe(handle))
            return
        # A group id cannot be reused while the group has members, so even with its leader gone, signalling the
        # group reaches only what the build left behind.
        try:
            self._stop_group(pid, handle)
        except (OSError, subprocess.SubprocessError) as exc:
            raise LaunchError(f"Cannot stop {self.describe(handle)}: {type(exc).__name__}: {exc}") from exc

    def _stop_group(self, pid, handle):
        if not self._signal_group(pid, signal.SIGTERM):
            logger.info("Build process %s is already gone", self.describe(handle))
            return
        grace = float(self.options["STOP_GRACE"])
        if self._wait_for_group(pid, grace):
            logger.info("Stopped build process %s", self.describe(handle))
            return
        logger.warning("Build process %s outlived SIGTERM by %ss; sending SIGKILL", self.describe(handle), grace)
        self._signal_group(pid, signal.SIGKILL)
        self._wait_for_group(pid, KILL_WAIT)

    def check(self):
        messages = []
        if os.name != "posix":
            messages.append(
                checks.Error("The local launcher needs a POSIX system.", hint="Use LAUNCHER=heroku.", id=E023)
            )
        project_dir = self.project_dir()
        if not (project_dir / "manage.py").is_file():
            messages.append(
                checks.Error(
                    f"The local launcher finds no manage.py in {project_dir}.",
                    hint="Set the PROJECT_DIR option to the directory holding manage.py, or leave it unset.",
                    id=E020,
                )
            )
        python = self.python()
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            messages.append(
                checks.Error(
                    f"The local launcher's Python {python!r} is not an executable file.",
                    hint="Set the PYTHON option to a Python interpreter, or leave it unset.",
                    id=E021,
                )
            )
        grace = self.options["STOP_GRACE"]
        if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
            messages.append(
                checks.Error(f"STOP_GRACE is {grace!r}; it must be a number of seconds, 0 or more.", id=E022)
            )
        log_dir = self.log_dir()
        existing = next((path for path in (log_dir, *log_dir.parents) if path.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            messages.append(
                checks.Warning(
                    f"Build logs cannot be written to {log_dir}; local builds will fail to launch.",
                    hint="Make the directory writable, or set VAR_DIR to a writable directory.",
                    id=W020,
                )
            )
        return messages

    def diagnose(self):
        """Whether this machine can start a build: ``<python> manage.py help buildstaticsite`` in the project
        directory, with this process's environment (as ``launch`` passes it on), within ``HELPER_TIMEOUT``."""
        from ..health import Finding, Level

        argv = [self.python(), "manage.py", "help", "buildstaticsite"]
        where = f"{self.python()} in {self.project_dir()} on {socket.gethostname()}"
        try:
            result = subprocess.run(
                argv,
                cwd=self.project_dir(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=HELPER_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return [Finding(Level.FAIL, f"The local launcher cannot run {where}: {type(exc).__name__}: {exc}.")]
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            return [
                Finding(
                    Level.FAIL,
                    f"The local launcher's build command does not start ({where}, exit {result.returncode}): "
                    f"{said[0][:300]}",
                    "Run `python manage.py help buildstaticsite` there to see the whole error.",
                )
            ]
        return [Finding(Level.OK, f"The local launcher can start builds ({where}).")]

    def describe(self, handle):
        return f"pid {handle.get('pid')} on {handle.get('host')}"

    def this_process(self):
        pid = os.getpid()
        state = process_state(pid)
        return {"host": socket.gethostname(), "pid": pid, "started": state[0] if state else None}

    def not_started_hint(self, handle):
        log = (handle or {}).get("log") or str(self.log_dir())
        return (
            f"The build process ended before it started building; its output is in {log}. Check that "
            f"{self.python()} can run manage.py in {self.project_dir()}."
        )

    # --- helpers --------------------------------------------------------------------------------------------

    @staticmethod
    def _require_handle(handle):
        if not isinstance(handle, dict) or not isinstance(handle.get("pid"), int) or "host" not in handle:
            raise LaunchError(f"{handle!r} is not a handle of the local launcher (host and pid).", retryable=False)

    @staticmethod
    def _helper_report(helper):
        try:
            report = json.loads(helper.stdout.decode(errors="replace") or "{}")
        except ValueError:
            return {}
        return report if isinstance(report, dict) else {}

    @staticmethod
    def _signal_group(pgid, signum):
        """Send ``signum`` to the group; ``False`` when the group no longer exists."""
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            raise LaunchError(f"Not allowed to signal build process group {pgid}.", retryable=False) from exc
        return True

    @staticmethod
    def _wait_for_group(pgid, seconds):
        """Whether the group ended within ``seconds``."""
        deadline = time.monotonic() + seconds
        while group_alive(pgid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)
        return True
