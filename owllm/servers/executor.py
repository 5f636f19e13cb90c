"""One managed process, in the shape of mirakuru's ``Executor``.

Every process OWLLM supervises (a model's server, the tool server) goes through this class:

1. ``pre_start_check`` — a configuration's own check before anything runs (a port that must
   be free, say); it raises a typed :class:`~owllm.errors.ServerError` to refuse;
2. ``launch`` — start ``argv`` in its own session (so its process group is its own), its
   output appended to its log, with ``OWLLM_SERVER_TOKEN`` set to a token unique to this
   start, which everything it spawns inherits;
3. ``wait`` — poll the readiness ``check`` under a deadline and a stall timer that starts over
   whenever the log grows (:func:`owllm.servers.process.wait_ready`); an early exit raises
   :class:`~owllm.errors.ServerDied` (return code, signal, log path, model id), a deadline or
   a stall :class:`~owllm.errors.ServerStartTimeout`;
4. ``stop`` — SIGTERM then SIGKILL the group and the descendants that left it, then reap
   whatever still carries the token or was recorded as a descendant at readiness.

``start`` is launch + wait, stopping what it launched when the wait fails in any way
(Ctrl-C included).  ``with Executor(...) as ex:`` starts and always stops.

The executor knows nothing of the StateStore: :class:`owllm.servers.supervisor.Supervisor`
records what it launched (its :attr:`identity`, :attr:`token`, :attr:`children`) in rows.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from owllm.errors import ServerError
from owllm.servers.identity import SERVER_TOKEN_VAR, Identity, descendants, identity_of
from owllm.servers.process import kill_group, launch, reap_leftovers, wait_ready

DEFAULT_DEADLINE_S = 60.0


class Executor:
    """A process started in its own session, waited for, stopped as a whole tree.

    ``check`` says whether it is ready (polled while it runs); ``deadline_s`` bounds the
    whole wait and ``stall_timeout_s`` (default: the deadline) the time without output.
    ``what`` names it in errors ("server of model 'm'", "tool server"); ``model_id`` fills
    the errors' field.  ``env`` is its whole environment (default: this process's)."""

    def __init__(self, argv: Sequence[str], log_path: Path, *,
                 check: Callable[[], bool] = lambda: True,
                 env: Mapping[str, str] | None = None,
                 deadline_s: float = DEFAULT_DEADLINE_S,
                 stall_timeout_s: float | None = None,
                 what: str = "server", model_id: str | None = None,
                 token: str | None = None,
                 pre_start: Callable[[], None] | None = None,
                 cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.check = check
        self.env = dict(os.environ if env is None else env)
        self.deadline_s = deadline_s
        self.stall_timeout_s = deadline_s if stall_timeout_s is None else stall_timeout_s
        self.what = what
        self.model_id = model_id
        self.token = token or uuid.uuid4().hex[:16]
        self.cwd = cwd
        self._pre_start = pre_start
        self.proc: subprocess.Popen[bytes] | None = None
        self.identity: Identity | None = None
        # [pid, create_time, start_ticks] of its descendants at readiness: reaped at stop
        # even after they left its group (vLLM's engine core does).
        self.children: list[list[float | None]] = []
        self.startup_s: float | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc is not None else None
        return f"<Executor {self.what} pid={pid} token={self.token}>"

    # -- the template ------------------------------------------------------------------------

    def pre_start_check(self) -> None:
        """The configuration's check before the launch (raises to refuse it)."""
        if self._pre_start is not None:
            self._pre_start()

    def launch(self) -> Identity:
        """Run the pre-start check, then start the process; returns its identity."""
        if self.proc is not None:
            raise ServerError(f"{self.what} was already launched (pid {self.proc.pid})",
                              model_id=self.model_id, log_path=str(self.log_path))
        self.pre_start_check()
        try:
            # Errors quote the first error after this start's own first line of the log.
            self._log_offset = self.log_path.stat().st_size
        except OSError:
            self._log_offset = 0
        self.proc = launch(self.argv, self.log_path,
                           env={**self.env, SERVER_TOKEN_VAR: self.token}, cwd=self.cwd)
        try:
            self.identity = identity_of(self.proc.pid)
        except BaseException:
            self.stop()  # nothing else knows this process: it must not outlive us
            raise
        return self.identity

    def wait(self) -> float:
        """Wait until ``check`` passes; returns the seconds it took.  Raises ServerDied
        or ServerStartTimeout (with ``model_id`` and ``log_path``) and leaves stopping to
        the caller (:meth:`start` stops)."""
        if self.proc is None:
            raise ServerError(f"{self.what} was never launched", model_id=self.model_id)
        self.startup_s = wait_ready(self.proc, self.check, self.log_path,
                                    deadline_s=self.deadline_s,
                                    stall_timeout_s=self.stall_timeout_s, what=self.what,
                                    log_offset=self._log_offset, model_id=self.model_id)
        self.children = descendants(self.proc.pid)
        return self.startup_s

    def start(self) -> Executor:
        """Launch and wait; whatever ends the wait early stops what was launched."""
        self.launch()
        try:
            self.wait()
        except BaseException:
            self.stop()
            raise
        return self

    def running(self) -> bool:
        """True while the launched process itself runs (not a pid reused since)."""
        return self.identity is not None and self.identity.alive()

    def stop(self) -> list[int]:
        """Kill the group and its descendants, reap the process, kill the leftovers that
        carry this start's token or were recorded at readiness; returns those leftovers."""
        if self.proc is None:
            return []
        # Its own session: the group id is its pid.  Until the process is reaped its pid
        # cannot be reused, so its descendants are found from it; once reaped (it exited),
        # only the group is signalled (members that outlived the leader keep the id taken).
        reaped = self.proc.returncode is not None
        kill_group(self.proc.pid, None if reaped else self.proc.pid)
        self.proc.wait()
        return reap_leftovers(self.token, self.children)

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> Executor:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
