"""Clock steps: an NTP step or a VM resume must not make live servers look dead.

Process identity compared wall-clock create times with a 0.01 s tolerance.  On Linux,
psutil's create time is ``boot_time + start ticks``, and the boot time it reads
(``/proc/stat`` btime) is *derived from the wall clock*: step the clock and every live
server reads as "pid reused", is marked CRASHED and is then never killed (an orphan).

The step is simulated where it shows: the boot-time reading jumps (``psutil._pslinux.
boot_time``, which ``create_time`` adds), as after ``date -s`` or a resume.  The processes,
the store and the kills are real.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from owllm.servers.identity import descendants, identity_of
from owllm.servers.manager import LLMServerManager
from owllm.servers.process import reap_leftovers
from tests.procs import gone
from tests.servers.conftest import StubBackend, make_config, make_manager

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the clock-tick identity is Linux's /proc")

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


@pytest.fixture
def step_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """``step_clock(seconds)``: from now on the wall clock reads ``seconds`` later (or
    earlier), as psutil's boot time shows it."""
    from psutil import _pslinux

    real = _pslinux.boot_time
    base = real()

    def step(seconds: float) -> None:
        monkeypatch.setattr(_pslinux, "boot_time", lambda: base + seconds)

    return step


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("seconds", [3600.0, -3600.0, 0.5])
def test_identity_survives_a_clock_step(step_clock: Callable[[float], None],
                                        sleepers: list[subprocess.Popen[bytes]],
                                        seconds: float) -> None:
    first = subprocess.Popen(SLEEPER)
    sleepers.append(first)
    ident = identity_of(first.pid)
    time.sleep(0.05)
    later = subprocess.Popen(SLEEPER)  # stands for a program that reused the pid
    sleepers.append(later)
    step_clock(seconds)
    assert ident.alive(), "a clock step made a live process read as dead"
    assert not dataclasses.replace(ident, pid=later.pid).alive(), "a reused pid read as ours"
    first.kill()
    first.wait()
    assert not ident.alive()


def test_server_status_and_stop_survive_a_clock_step(
        tmp_path: Path, tmp_home: Path, stub_backend: StubBackend,
        step_clock: Callable[[float], None]) -> None:
    manager: LLMServerManager = make_manager(make_config(tmp_path))
    row = manager.start_server("ok2")
    child = manager._children["ok2"]
    try:
        step_clock(3600.0)
        status = manager.status("ok2")[0]
        assert status["status"] == "RUNNING" and status["healthy"] is True
        assert manager.start_server("ok2")["pid"] == row["pid"]  # reused, not replaced
        manager.stop_server("ok2")
        assert gone(row["pid"]), "stop after a clock step left the server running"
    finally:
        child.kill()
        child.wait()


def test_leftovers_are_reaped_after_a_clock_step(step_clock: Callable[[float], None],
                                                 sleepers: list[subprocess.Popen[bytes]]
                                                 ) -> None:
    """Descendants recorded at readiness (vLLM's engine core) are found by their identity."""
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', "
                               "'import time; time.sleep(600)']); time.sleep(600)"])
    sleepers.append(parent)
    deadline = time.monotonic() + 20
    while not (known := descendants(parent.pid)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = int(known[0][0] or 0)
    try:
        step_clock(-7200.0)
        assert reap_leftovers("", known, grace_s=2.0) == [pid]
        assert gone(pid)
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
