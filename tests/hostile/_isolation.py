"""Real hostile file systems for the hostile tests, without touching the machine.

A read-only folder or a full disk has to be real: SQLite, the kernel and filelock must
answer as they do for a user.  Running as root, ``chmod`` stops nothing, so these tests use
mounts instead, each in a *private mount namespace* (``unshare -m``; ``unshare -rm`` adds a
user namespace where an unprivileged user may mount).  A mount made there is seen only by
the command run inside it and disappears with it, even when the test is killed: nothing is
mounted on the machine itself.

* read-only: a bind mount of a folder (or one file) onto itself, remounted ``ro``: writes
  fail with ``EROFS`` as on a read-only disk.
* full: a small ``tmpfs`` (``size=``), filled with a file until ``ENOSPC``.

Where no namespace can be made (no ``unshare``, user namespaces disabled) the tests skip.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def unshare_prefix() -> tuple[str, ...] | None:
    """The command prefix that runs a command in a private mount namespace where it may
    mount (a tmpfs is tried), or None when this machine allows none."""
    tool = shutil.which("unshare")
    if tool is None:
        return None
    candidates: list[tuple[str, ...]] = [(tool, "-m")] if os.geteuid() == 0 else []
    candidates.append((tool, "-r", "-m"))
    with tempfile.TemporaryDirectory() as probe:
        for prefix in candidates:
            try:
                result = subprocess.run(
                    [*prefix, "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$1"', "sh", probe],
                    capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                continue
            if result.returncode == 0:
                return prefix
    return None


def run_isolated(setup: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``setup`` (shell: the mounts), then ``argv``, in a private mount namespace.

    Skips the test when no namespace can be made here."""
    prefix = unshare_prefix()
    if prefix is None:
        pytest.skip("needs a private mount namespace (unshare -m, or -rm with user "
                    "namespaces) to make a real read-only folder or full disk")
    return subprocess.run([*prefix, "sh", "-ec", setup + '\nexec "$@"', "sh", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def python(code: str) -> list[str]:
    """argv that runs ``code`` with this interpreter and the repository importable."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{code}"]


def owllm(home: Path, *args: str) -> list[str]:
    """argv of one ``owllm`` CLI command on ``home`` (JSON output)."""
    return [sys.executable, "-m", "owllm", "--home", str(home), *args, "--json"]


def read_only(path: Path) -> str:
    """Shell lines that make ``path`` (a folder or a file) read-only in the namespace."""
    return f'mount --bind "{path}" "{path}"\nmount -o remount,bind,ro "{path}"\n'


def tmpfs(path: Path, size: str) -> str:
    """Shell lines that mount a tmpfs of ``size`` on the folder ``path`` in the namespace."""
    return f'mount -t tmpfs -o size={size},mode=0755 tmpfs "{path}"\n'


def shell(argv: Sequence[str]) -> str:
    """One shell line that runs ``argv`` (for ``setup``)."""
    return shlex.join(argv) + "\n"
