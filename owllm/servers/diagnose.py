"""Why a server died before it was ready: which process, which signal, which log lines.

A server is often a tree (vLLM: API server → EngineCore → workers).  When a worker dies of
SIGILL, the API server logs 80 lines of shutdown chatter and exits with code 0, so neither
its exit code nor the log's tail says what happened.  Three sources name the real cause:

* the processes of the tree, watched while the server starts (:class:`TreeWatch`): the
  first one to vanish is the first suspect;
* Python's fault handler, switched on for every OWLLM server (``PYTHONFAULTHANDLER=1`` is
  inherited by each Python child), which writes ``Fatal Python error: Illegal instruction``
  and the Python stack of any process that a fatal signal kills;
* exit statuses that the tree's own parents log (vLLM: ``died unexpectedly (exit code:
  -4)``), and the server's own status when a signal killed it.

The log is read from where this start began (``offset``), and the excerpt is the lines
around the *first* error, not the tail.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# What Python's faulthandler prints for each fatal signal it handles.
FAULT_NAMES = {"Segmentation fault": "SIGSEGV", "Illegal instruction": "SIGILL",
               "Bus error": "SIGBUS", "Floating-point exception": "SIGFPE",
               "Floating point exception": "SIGFPE", "Aborted": "SIGABRT"}
_FAULT = re.compile(r"Fatal Python error: (" + "|".join(map(re.escape, FAULT_NAMES)) + ")")
_EXIT = re.compile(r"[Ee]xit\s*code[:=]?\s*(-\d+)|exitcode[:=]\s*(-\d+)")
# Case-sensitive on purpose: "error" in lower case is everywhere in config dumps.
_FIRST_ERROR = re.compile(
    r"Fatal Python error|Traceback \(most recent call last\)|died unexpectedly|"
    r"\bERROR\b|Error:|[Ee]xit\s*code[:=]?\s*-\d+|core dumped")
SIGNAL_NOTES = {
    "SIGILL": "an instruction this CPU (or VM) does not allow",
    "SIGSEGV": "a crash in native code",
    "SIGBUS": "a bad memory access in native code",
    "SIGKILL": "killed from outside, often by the kernel's out-of-memory killer",
    "SIGABRT": "native code aborted",
}
BEFORE, AFTER = 3, 15


def signal_name(code: int) -> str:
    """``SIGILL`` for exit status -4 (or 4); ``signal N`` when unknown."""
    try:
        return signal.Signals(abs(code)).name
    except ValueError:
        return f"signal {abs(code)}"


def describe_signal(name: str) -> str:
    note = SIGNAL_NOTES.get(name)
    return f"{name} ({note})" if note else name


@dataclass
class TreeWatch:
    """The processes of one server's tree, seen while it starts, and the order they left."""

    root: int
    seen: dict[int, str] = field(default_factory=dict)
    vanished: list[str] = field(default_factory=list)
    _procs: dict[int, psutil.Process] = field(default_factory=dict)

    def poll(self) -> None:
        try:
            current = psutil.Process(self.root).children(recursive=True)
        except psutil.Error:
            current = []
        for proc in current:
            if proc.pid not in self._procs:
                self._procs[proc.pid] = proc
                self.seen[proc.pid] = _label(proc)
        for pid, proc in list(self._procs.items()):
            try:
                gone = not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                gone = True
            if gone:
                self.vanished.append(self.seen[pid])
                del self._procs[pid]


def _label(proc: psutil.Process) -> str:
    try:
        name = proc.name()
        cmd = " ".join(proc.cmdline()[:3])
    except psutil.Error:
        return f"pid {proc.pid}"
    if cmd and name not in cmd:  # a renamed process (vLLM's "VLLM::Worker")
        return f"pid {proc.pid} ({name}: {cmd})"
    return f"pid {proc.pid} ({cmd or name})"


@dataclass(frozen=True)
class Diagnosis:
    signal: str | None  # the fatal signal, by name, when one is known
    process: str | None  # which process died first
    excerpt: str  # log lines around the first error of this start

    def summary(self, exit_code: int | None) -> str:
        parts = []
        if self.process and self.signal:
            parts.append(f"{self.process} died of {describe_signal(self.signal)}")
        elif self.signal:
            parts.append(f"a process of the server died of {describe_signal(self.signal)}")
        elif self.process:
            parts.append(f"{self.process} exited first")
        if exit_code is not None:
            parts.append(f"the server exited with {_status(exit_code)}")
        return "; ".join(parts)


def _status(code: int) -> str:
    return f"code {code}" if code >= 0 else describe_signal(signal_name(code))


def read_section(log_path: Path, offset: int, limit: int = 4 << 20) -> str:
    """The log from ``offset`` (where this start began), at most ``limit`` bytes."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def diagnose(log_path: Path, offset: int, exit_code: int | None,
             watch: TreeWatch | None) -> Diagnosis:
    """Name the fatal signal, the process and the first error of one failed start."""
    lines = read_section(log_path, offset).splitlines()
    fault = None
    for line in lines:
        found = _FAULT.search(line)
        if found:
            fault = FAULT_NAMES[found.group(1)]
            break
        code = _EXIT.search(line)
        if code:
            fault = signal_name(int(code.group(1) or code.group(2)))
            break
    if exit_code is not None and exit_code < 0:
        fault = fault or signal_name(exit_code)
    process = watch.vanished[0] if watch and watch.vanished else None
    if process is None and exit_code is not None and exit_code < 0:
        process = "the server process"
    first = next((i for i, line in enumerate(lines) if _FIRST_ERROR.search(line)), None)
    if first is None:
        excerpt = "\n".join(lines[-AFTER:])
    else:
        excerpt = "\n".join(lines[max(0, first - BEFORE):first + AFTER])
    return Diagnosis(signal=fault, process=process, excerpt=excerpt)
