"""Helpers of the hostile-input tests: run the real CLI as a process (tmp cwd, tmp home, a
memory cap and a clock), and snapshot a folder tree to prove nothing was written."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TINY_ENVS = """\
version: 1
cuda_tags: [cu118, cu121, cu124]
backends:
  transformers:
    framework: torch
    packages: [six]
    probe_imports: [six]
keys:
  tiny:
    packages: [six]
    probe_imports: [six]
"""


@dataclass(frozen=True)
class Run:
    """A finished CLI run: exit code, outputs and wall time."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


def _limit_memory(limit: int) -> Callable[[], None]:
    def apply() -> None:  # pragma: no cover - runs in the child
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def cli_env(home: Path | None, tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: ``$OWLLM_HOME`` = ``home`` (left out when None), the
    fallback data folder under ``tmp`` (never the user's), no hardware probing."""
    env = {k: v for k, v in os.environ.items() if k != "OWLLM_HOME"}
    env["XDG_DATA_HOME"] = str(tmp / "xdg-data")
    if home is not None:
        env["OWLLM_HOME"] = str(home)
    env.setdefault("OWLLM_HARDWARE", "{}")
    env.update(extra)
    return env


def owllm(*args: str, cwd: Path, env: dict[str, str], stdin: str = "",
          memory: int = 1 << 30, timeout: float = 120) -> Run:
    """Run ``python -m owllm ARGS`` in ``cwd`` under an address-space cap of ``memory``."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "owllm", *args], input=stdin,
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
                          preexec_fn=_limit_memory(memory))
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def tree(folder: Path) -> dict[str, tuple[str, int]]:
    """Every path under ``folder`` (links not followed) with its kind and size."""
    out: dict[str, tuple[str, int]] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            kind = "link" if path.is_symlink() else ("dir" if path.is_dir() else "file")
            size = path.lstat().st_size if kind == "file" else 0
            out[str(path.relative_to(folder))] = (kind, size)
    return out


def assert_clean_error(run: Run, *fragments: str) -> None:
    """Exit 2, a message holding every fragment, and never a traceback."""
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    for fragment in fragments:
        assert fragment in run.stderr, (fragment, run.stderr[-2000:])
