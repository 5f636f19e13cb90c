"""The tests' own process helpers: a fixture's server dies with the test process that started
it, even when that process is killed before its teardown (a CI timeout, ``kill -9``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.procs import gone

ROOT = Path(__file__).resolve().parents[1]


def test_a_server_started_with_die_with_parent_goes_when_its_starter_is_killed() -> None:
    starter = (
        f"import subprocess, sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.procs import die_with_parent\n"
        "p = subprocess.Popen(['sleep', '60'], start_new_session=True,"
        " preexec_fn=die_with_parent)\n"
        "print(p.pid, flush=True); time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert not gone(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)
