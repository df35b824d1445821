"""A benchmark borrows the local stack: what it started is stopped when it ends, also when it is
terminated, and what ran before keeps running (the DC and `up` replaced by stand-in processes)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from devstack import localstack

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def alive(state: Path, name: str) -> int | None:
    """The pid of `name` if it still runs (reaped if it was our child and ended)."""
    pid = int((state / "pids" / f"{name}.pid").read_text())
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return None
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`up` starts a relay stand-in (a sleeping process) unless one runs; no DC is touched."""

    def up(state: Path) -> tuple[None, dict[str, str]]:
        localstack._spawn(state, "relay", SLEEPER)
        return None, {}

    monkeypatch.setattr(localstack, "up", up)
    monkeypatch.setattr(localstack.stack, "down", lambda state: None)
    return tmp_path


class TestBorrowed:
    def test_what_the_run_started_is_stopped(self, state: Path) -> None:
        """A process the run started is gone when the run ends."""
        with localstack.borrowed(state):
            pid = alive(state, "relay")
            assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    def test_what_ran_before_keeps_running(self, state: Path) -> None:
        """A process that ran before the run is left running."""
        localstack._spawn(state, "relay", SLEEPER)
        before = alive(state, "relay")
        try:
            with localstack.borrowed(state):
                pass
            assert alive(state, "relay") == before
        finally:
            localstack._stop(state, "relay")

    def test_a_terminated_run_still_stops_what_it_started(self, state: Path) -> None:
        """SIGTERM in the middle of the run (a killed `make bench`) ends it by an exception, so
        the processes it started are stopped all the same, and the handler is put back."""
        handler = signal.getsignal(signal.SIGTERM)
        pid = None
        with pytest.raises(SystemExit), localstack.borrowed(state):  # noqa: PT012 - the run
            pid = alive(state, "relay")
            os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(ProcessLookupError):
            os.kill(pid or 0, 0)
        assert signal.getsignal(signal.SIGTERM) == handler
