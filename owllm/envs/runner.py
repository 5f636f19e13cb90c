"""The host's one way to run in-env code (:mod:`owllm.inenv`) under an env's interpreter.

A one-shot module (probe, demo builder, GGUF converter) prints one JSON object on stdout and
exits 0; :func:`run_in_env` runs it and returns that object, or raises
:class:`~owllm.errors.InEnvError` with the module, exit status (negative: the signal) and
stderr tail.  A long-running server is launched by a supervisor with the argv of
:func:`inenv_argv`.  Either way the env's python runs ``owllm/inenv/__main__.py``, whose
bootstrap keeps OWLLM's folders off the env's ``sys.path`` (see ``owllm/inenv/__init__.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from owllm.errors import InEnvError
from owllm.inenv import BOOTSTRAP, SCRIPTS

STDERR_TAIL = 3000  # characters of stderr kept in the error (tracebacks end with the cause)


def inenv_argv(python: Path | str, module: str, *args: str, isolated: bool = False
               ) -> tuple[str, ...]:
    """The command that runs in-env ``module`` with ``python``.  ``isolated`` adds ``-I``
    (no PYTHON* variables, no user site): for one-shot scripts whose output must not depend
    on the caller's environment; servers need PYTHONUNBUFFERED, so they run without it."""
    if module not in SCRIPTS:
        raise ValueError(f"{module!r} is not a runnable in-env module ({', '.join(SCRIPTS)})")
    return (str(python), *(("-I",) if isolated else ()), BOOTSTRAP, module, *args)


def _tail(text: str) -> str:
    return text.strip()[-STDERR_TAIL:]


def run_in_env(python: Path | str, script: str, args: Iterable[str] = (), *,
               timeout: float | None = None, env_key: str | None = None,
               what: str | None = None) -> dict[str, Any]:
    """Run in-env ``script`` (a module of :mod:`owllm.inenv`) with ``python`` and return the
    JSON object it printed last on stdout.

    Raises :class:`InEnvError` on a non-zero exit, a death by signal, a timeout (the process
    is killed), a python that cannot be started, or output that is no JSON object; the error
    names the step (``what``, e.g. "building demo model 'tiny-llama'"), the script and the env
    and carries the stderr tail."""
    argv = inenv_argv(python, script, *args, isolated=True)
    step = f"{what} ({script} " if what else f"{script} ("
    # -I ignores PYTHONPATH already; dropping it (and PYTHONHOME) from the environment too
    # keeps the orchestrator's own packages out of whatever the script starts in turn.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    step += f"in env {env_key})" if env_key else f"with {python})"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) \
            else (exc.stderr or "")
        raise InEnvError(f"{step} did not finish in {timeout:g}s and was killed",
                         env_key=env_key, script=script, returncode=None,
                         stderr=_tail(stderr)) from exc
    except OSError as exc:
        raise InEnvError(f"{step} could not start: {exc}", env_key=env_key,
                         script=script, hint="rebuild the env (owllm env build)") from exc
    stderr = _tail(done.stderr or "")
    if done.returncode != 0:
        how = f"was killed by signal {-done.returncode}" if done.returncode < 0 \
            else f"exited with code {done.returncode}"
        raise InEnvError(f"{step} failed, {how}:\n{stderr or _tail(done.stdout)}",
                         env_key=env_key, script=script, returncode=done.returncode,
                         stderr=stderr)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        result = None
    if not isinstance(result, dict):
        raise InEnvError(f"{step} printed no JSON object on stdout (last line: "
                         f"{(lines or [''])[-1][:200]!r})", env_key=env_key, script=script,
                         returncode=done.returncode, stderr=stderr)
    return result
