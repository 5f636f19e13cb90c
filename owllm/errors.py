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
    """An environment could not be resolved, built or probed."""


class ServerError(OwllmError):
    """A server could not be started, reached or stopped."""


class ServerStartTimeout(ServerError):
    """A server did not become ready before its deadline (or stalled); its group was killed."""
