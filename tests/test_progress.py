"""owllm._progress with real threads and real streams: heartbeat lines on a file, a live
spinner on a pseudo-terminal, nesting, failure and interrupt lines, and no thread left."""

from __future__ import annotations

import os
import re
import select
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from owllm import _progress as progress

HEARTBEAT = re.compile(r"^owllm: (?P<indent> *)(?P<text>.+): still running, (?P<s>[\d.]+)s")


def progress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "owllm-progress"]


@pytest.fixture
def stderr_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TextIO]:
    """sys.stderr is a real file (not a terminal); heartbeats every 0.3 s."""
    monkeypatch.setenv(progress.ENV_INTERVAL, "0.3")
    monkeypatch.delenv(progress.ENV_PROGRESS, raising=False)
    with (tmp_path / "stderr.txt").open("w+", encoding="utf-8") as stream:
        yield stream


def use(stream: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    # In the test body: pytest's capture sets sys.stderr again when the call phase starts.
    monkeypatch.setattr(sys, "stderr", stream)


def lines_of(stream: TextIO) -> list[str]:
    stream.flush()
    return Path(stream.name).read_text(encoding="utf-8").splitlines()


def test_heartbeats_name_the_step_and_elapsed_time(stderr_file: TextIO,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    use(stderr_file, monkeypatch)
    assert not sys.stderr.isatty()
    with progress.step("compiling something slow", enabled=True) as step:
        step.update("Building llama-cpp-python==0.3.36")
        time.sleep(1.2)
    lines = lines_of(stderr_file)
    assert lines[0] == "owllm: compiling something slow ..."
    beats = [m for m in map(HEARTBEAT.match, lines) if m]
    assert len(beats) >= 3, lines
    assert all(m["text"] == "compiling something slow" for m in beats)
    seconds = [float(m["s"]) for m in beats]
    assert seconds == sorted(seconds) and seconds[0] >= 0.25, lines
    assert all(m.string.endswith("(Building llama-cpp-python==0.3.36)") for m in beats)
    done = re.fullmatch(r"owllm: compiling something slow: ok \((?P<s>\d\.\d)s\)", lines[-1])
    assert done and float(done["s"]) >= max(1.2, seconds[-1]), lines
    assert progress_threads() == []


def test_failure_prints_a_failed_line_and_reraises(stderr_file: TextIO,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    use(stderr_file, monkeypatch)
    with pytest.raises(RuntimeError, match="boom"), progress.step("doomed", enabled=True):
        time.sleep(0.4)
        raise RuntimeError("boom")
    lines = lines_of(stderr_file)
    assert re.fullmatch(r"owllm: doomed: failed after 0\.\d+s \(RuntimeError\)", lines[-1])
    assert progress_threads() == []


def test_keyboard_interrupt_stops_the_heartbeat(stderr_file: TextIO,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    use(stderr_file, monkeypatch)
    with pytest.raises(KeyboardInterrupt), progress.step("waiting", enabled=True):
        raise KeyboardInterrupt
    assert lines_of(stderr_file)[-1].startswith("owllm: waiting: interrupted after ")
    assert progress_threads() == []


def test_nested_steps_indent_and_only_the_innermost_beats(
        stderr_file: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    use(stderr_file, monkeypatch)
    with progress.step("building env x", enabled=True):
        with progress.step("installing 5 packages"):
            progress.update("Resolved 5 packages")
            time.sleep(0.8)
        with progress.step("silent part", enabled=False), progress.step("inherits silence"):
            time.sleep(0.1)
    lines = lines_of(stderr_file)
    assert lines[:2] == ["owllm: building env x ...", "owllm:   installing 5 packages ..."]
    # The parent is quiet while its child runs: the heartbeats then are the child's,
    # indented under the parent, with the detail given to the innermost step.
    child_end = lines.index(next(x for x in lines if "installing 5 packages: ok" in x))
    assert lines[child_end].startswith("owllm:   installing 5 packages: ok (")
    during = [m for m in map(HEARTBEAT.match, lines[2:child_end]) if m]
    assert during and all(m["text"] == "installing 5 packages" and m["indent"] == "  "
                          and m.string.endswith("(Resolved 5 packages)") for m in during), lines
    assert len(during) == child_end - 2, lines  # nothing else in between
    assert not any("silent part" in line or "inherits silence" in line for line in lines)
    assert lines[-1].startswith("owllm: building env x: ok (")
    assert progress_threads() == []


def test_default_is_off_under_pytest_and_the_env_var_decides(
        stderr_file: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    use(stderr_file, monkeypatch)
    with progress.step("under pytest"):
        pass
    monkeypatch.setenv(progress.ENV_PROGRESS, "1")
    with progress.step("forced on"):
        pass
    monkeypatch.setenv(progress.ENV_PROGRESS, "0")
    with progress.step("forced off"):
        pass
    lines = lines_of(stderr_file)
    assert lines[0] == "owllm: forced on ..." and lines[1].startswith("owllm: forced on: ok (")
    assert len(lines) == 2, lines


def test_terminal_gets_a_live_spinner_that_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    master, slave = os.openpty()
    before = set(threading.enumerate())
    out = b""
    with os.fdopen(slave, "w", encoding="utf-8") as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        try:
            with progress.step("converting model to GGUF", enabled=True), \
                    progress.step("quantizing to q4_0"):
                progress.update("tensor 3/9")
                time.sleep(0.6)
            tty.flush()
            while select.select([master], [], [], 0.3)[0]:
                out += os.read(master, 65536)
        finally:
            os.close(master)
    text = out.decode("utf-8", "replace")
    # The live line: the innermost step, its time and detail, then where it runs.
    assert re.search(r"quantizing to q4_0 \(0\.\ds\) \| tensor 3/9  \[in converting model "
                     r"to GGUF\]", text), text
    assert "owllm:   quantizing to q4_0: ok (" in text
    assert "owllm: converting model to GGUF: ok (" in text
    assert "still running" not in text  # heartbeat lines are for files, not terminals
    assert set(threading.enumerate()) <= before  # rich's refresh thread is gone too
