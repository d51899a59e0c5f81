"""Launcher fixtures for the whole suite; registered in ``tests/conftest.py`` with ``pytest_plugins``."""

import os
import signal

import pytest

from publisher.launchers import recording
from publisher.launchers.local import LocalLauncher, process_state


@pytest.fixture(autouse=True)
def recording_launcher():
    """The recording launcher's memory, empty at the start and the end of every test."""
    recording.reset()
    yield recording
    recording.reset()


class ProcessReaper:
    """Remembers local build processes and kills their groups when the test ends, passed or failed."""

    def __init__(self):
        self.handles = []

    def track(self, handle):
        self.handles.append(handle)
        return handle

    def kill_all(self):
        for handle in self.handles:
            pid = int(handle["pid"])
            state = process_state(pid)
            if state is not None and state[0] != handle.get("started"):
                continue  # the pid belongs to someone else now
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def process_reaper(monkeypatch):
    """Every ``LocalLauncher.launch`` in the test is tracked, and its process group killed at teardown.

    Processes launched elsewhere (another Python) can be added with ``process_reaper.track(handle)``.
    """
    reaper = ProcessReaper()
    launch = LocalLauncher.launch

    def tracked_launch(self, **kwargs):
        return reaper.track(launch(self, **kwargs))

    monkeypatch.setattr(LocalLauncher, "launch", tracked_launch)
    yield reaper
    reaper.kill_all()
