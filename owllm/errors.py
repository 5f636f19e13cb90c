"""One exception tree for everything OWLLM raises on purpose.

Subclasses keep their data as attributes, format it in ``__str__`` and, where there is one,
say how to fix the problem (``hint``).  Foreign exceptions are wrapped with ``raise ... from exc``
so the original traceback survives.
"""

from __future__ import annotations


class OwllmError(Exception):
    """Base class of every error OWLLM raises deliberately.

    ``exit_code`` is what the CLI exits with when this error reaches it: 2 for usage and
    configuration errors, 1 for a check that ran and failed.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(OwllmError):
    """A command was called wrongly (unknown id, bad argument)."""

    exit_code = 2


class ConfigError(OwllmError):
    """A configuration file is missing, unreadable or invalid.

    ``problems`` holds every individual problem, each already formatted as
    ``<file>:<line>: <path>: <message>`` so several can be reported at once.
    """

    exit_code = 2

    def __init__(self, path: str, problems: list[str], *, hint: str | None = None) -> None:
        self.path = path
        self.problems = list(problems)
        summary = f"{path}: {len(self.problems)} configuration error(s)"
        super().__init__(summary + "\n" + "\n".join(self.problems), hint=hint)


class StateStoreError(OwllmError):
    """The SQLite state store cannot be opened or is in a state we refuse to touch."""

    exit_code = 2


class EnvError(OwllmError):
    """An environment could not be resolved, built or probed.

    ``env_key`` names the env when one was involved; ``log_path`` the build or probe log."""

    def __init__(self, message: str, *, hint: str | None = None, env_key: str | None = None,
                 log_path: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.env_key = env_key
        self.log_path = log_path


class InEnvError(EnvError):
    """A script run under an env's interpreter (``run_in_env``) failed or printed no JSON.

    ``script`` is the in-env module that ran, ``returncode`` its exit status (negative:
    killed by that signal), ``stderr`` the tail of what it wrote there."""

    def __init__(self, message: str, *, hint: str | None = None, env_key: str | None = None,
                 log_path: str | None = None, script: str = "",
                 returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message, hint=hint, env_key=env_key, log_path=log_path)
        self.script = script
        self.returncode = returncode
        self.stderr = stderr


class ServerError(OwllmError):
    """A server could not be started, reached or stopped.

    ``model_id`` names the model (None for the tool server), ``log_path`` the server's log.
    A process's exit status is ``returncode`` (on ``ServerDied``): ``exit_code`` is the CLI's
    exit status for every ``OwllmError``."""

    def __init__(self, message: str, *, hint: str | None = None, model_id: str | None = None,
                 log_path: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.model_id = model_id
        self.log_path = log_path

    def fields(self) -> dict[str, object]:
        """The typed fields, for JSON output."""
        return {"model_id": self.model_id, "log_path": self.log_path}


class PortInUse(ServerError):
    """The port a server was to bind is taken by a process that is not ours."""

    def __init__(self, message: str, *, hint: str | None = None, model_id: str | None = None,
                 log_path: str | None = None, host: str = "127.0.0.1",
                 port: int | None = None) -> None:
        super().__init__(message, hint=hint, model_id=model_id, log_path=log_path)
        self.host = host
        self.port = port

    def fields(self) -> dict[str, object]:
        return super().fields() | {"host": self.host, "port": self.port}


class ServerStartTimeout(ServerError):
    """A server did not become ready before its deadline (or stalled); its group was killed.

    ``waited_s`` is how long it was waited for, ``stalled`` whether the stall timer (no
    progress in the log) rather than the deadline ended the wait."""

    def __init__(self, message: str, *, hint: str | None = None, model_id: str | None = None,
                 log_path: str | None = None, waited_s: float | None = None,
                 stalled: bool = False) -> None:
        super().__init__(message, hint=hint, model_id=model_id, log_path=log_path)
        self.waited_s = waited_s
        self.stalled = stalled

    def fields(self) -> dict[str, object]:
        return super().fields() | {"waited_s": self.waited_s, "stalled": self.stalled}


class ServerDied(ServerError):
    """A server (or one of its child processes) died before it was ready.

    ``signal`` is the signal's name when a process was killed by one (``SIGILL``,
    ``SIGSEGV``, ``SIGKILL``), ``process`` names the process that died first, ``returncode``
    is the server's own exit status (negative: killed by a signal; None while it still ran),
    ``excerpt`` the log lines around the first error of this start."""

    def __init__(self, message: str, *, hint: str | None = None, returncode: int | None = None,
                 signal: str | None = None, process: str | None = None,
                 log_path: str | None = None, excerpt: str = "",
                 model_id: str | None = None) -> None:
        super().__init__(message, hint=hint, model_id=model_id, log_path=log_path)
        self.returncode = returncode
        self.signal = signal
        self.process = process
        self.excerpt = excerpt

    def fields(self) -> dict[str, object]:
        return super().fields() | {"returncode": self.returncode, "signal": self.signal,
                                   "process": self.process}
