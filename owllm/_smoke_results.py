"""The results of the guide's checks as dataclasses: :class:`EnvTestResult`,
:class:`ModelSmokeResult`, :class:`ToolsSmokeResult`.

``to_dict()`` is the JSON the guide documents and the CLI prints, key for key.  Fields marked
``optional`` are left out of it while unset (None), as the JSON leaves them out: a smoke
whose server never started has no ``reused_running_server``, a passing one no ``log_tail``.
A result also reads like that dict (``result["status"]``, ``result.get("sample")``), so code
written against the JSON keeps working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from owllm.quality.scoring import runaway_kind

if TYPE_CHECKING:
    from owllm.servers.ladder import Ladder

PASS, FAIL = "PASS", "FAIL"


# The metadata of a field absent from ``to_dict()`` while None.
OPTIONAL = {"optional": True}


def error_entry(stage: str, exc: BaseException) -> dict[str, Any]:
    """One ``errors`` item: the stage, the error's type and message and, for an OWLLM error
    with typed fields (:meth:`owllm.errors.ServerError.fields`: which process died, of which
    signal, where the log is), those fields too."""
    entry: dict[str, Any] = {"stage": stage, "type": type(exc).__name__,
                             "message": str(exc)[:4000]}
    fields = getattr(exc, "fields", None)
    if callable(fields):
        entry.update(fields())
    return entry


def ladder_errors(ladder: Ladder) -> list[dict[str, Any]]:
    """The ``errors`` item of the ladder's failed step (none when every step held)."""
    failed = ladder.failed
    if failed is None:
        return []
    return [{"stage": "ladder", "type": "ReadinessStepFailed", "step": failed.step,
             "message": f"readiness step {failed.step} failed: {failed.detail}"}]


def runaway_of(text: str, finish_reason: str | None, completion_tokens: int | None,
               max_tokens: int) -> dict[str, Any] | None:
    """``{"kind", "completion_tokens", "max_tokens"}`` when ``text`` hit the token limit while
    padding whitespace or repeating itself (:func:`owllm.quality.scoring.runaway_kind`, the
    rule the pass rates use), else None.  Without a finish reason, reaching ``max_tokens``
    counts as hitting the limit."""
    limited = finish_reason == "length" if finish_reason else \
        completion_tokens is not None and completion_tokens >= max_tokens
    kind = runaway_kind(text) if limited else None
    if kind is None:
        return None
    return {"kind": kind, "completion_tokens": completion_tokens, "max_tokens": max_tokens}


def runaway_error(stage: str, runaway: dict[str, Any], what: str) -> dict[str, Any]:
    """The ``errors`` item of a runaway: its own failure type, with the token count."""
    did = "padded whitespace" if runaway["kind"] == "whitespace" else "repeated itself"
    count = runaway["completion_tokens"]
    return {"stage": stage, "type": "runaway", **runaway,
            "message": f"{what} {did} until max_tokens "
                       f"({count if count is not None else '?'} of {runaway['max_tokens']} "
                       "tokens)"}


class _Result:
    """What the three results share: ``to_dict()`` and reading like it."""

    def to_dict(self) -> dict[str, Any]:
        """The guide's JSON (optional fields only when set, ``extra`` merged in)."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if item.name == "extra":
                out.update(value)
            elif value is not None or not item.metadata.get("optional"):
                out[item.name] = value
        return out

    @property
    def passed(self) -> bool:
        return bool(getattr(self, "status") == PASS)  # noqa: B009  (set by each subclass)

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


@dataclass
class EnvTestResult(_Result):
    """``owllm env test KEY``: the env's health probe (or why it could not be built)."""

    env_key: str
    status: str = FAIL
    python_path: str | None = None
    python_version: str | None = field(default=None, metadata=OPTIONAL)
    torch_version: str | None = None
    cuda_available: bool | None = None
    versions: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)
    errors: list[dict[str, Any]] = field(default_factory=list)
    drift: list[dict[str, Any]] | None = field(default=None, metadata=OPTIONAL)
    # Whatever else the probe reports, kept so the JSON stays the probe's own.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_probe(cls, result: dict[str, Any]) -> EnvTestResult:
        """From the probe's dict (its ``packages`` list is left out: the constraints file
        holds it)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in result.items() if k in names}
        extra = {k: v for k, v in result.items() if k not in names and k != "packages"}
        return cls(**known, extra=extra)


@dataclass
class ModelSmokeResult(_Result):
    """``owllm model smoke ID``: the server started (or was reused), climbed the readiness
    ladder and generated; with timings, the kernels chosen and, on failure, the log's tail."""

    model_id: str
    status: str = FAIL
    backend: str | None = None
    server_started: bool = False
    health_ok: bool = False
    generate_ok: bool = False
    errors: list[dict[str, Any]] = field(default_factory=list)
    env_key: str | None = None
    port: int | None = None
    startup_s: float | None = None
    first_token_s: float | None = None
    tokens_per_s: float | None = None
    # Declared by the backend, with the server's probed values written over them
    # (``reasons`` names the probed ones): see owllm/smoke.py's docstring.
    capabilities: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    dtype_reason: str | None = None
    kernels: dict[str, Any] = field(default_factory=dict)
    # The readiness ladder (owllm/servers/ladder.py): process alive → port open → /health →
    # model listed → one-token completion, each {"step", "ok", "seconds", "detail"?}.
    ladder: list[dict[str, Any]] = field(default_factory=list)
    # A generation that padded whitespace or repeated itself until max_tokens:
    # {"kind", "completion_tokens", "max_tokens"} (and a ``runaway`` errors item), else None.
    runaway: dict[str, Any] | None = None
    reused_running_server: bool | None = field(default=None, metadata=OPTIONAL)
    sample: str | None = field(default=None, metadata=OPTIONAL)
    log_tail: str | None = field(default=None, metadata=OPTIONAL)


@dataclass
class ToolsSmokeResult(_Result):
    """``owllm tools smoke ID``: prompt → tool call → strict validation → execution on the tool
    server → the result back → a final answer."""

    model_id: str
    status: str = FAIL
    server_started: bool = False
    tool_server_ok: bool = False
    tool_call_detected: bool = False
    tool_executed: bool = False
    final_answer_ok: bool = False
    errors: list[dict[str, Any]] = field(default_factory=list)
    call: dict[str, Any] | None = None
    result: Any = None
    constrained: bool = False
    capabilities: dict[str, Any] = field(default_factory=dict)
    # The model smoke's ladder plus its last step, tool_round_trip.
    ladder: list[dict[str, Any]] = field(default_factory=list)
    # The constrained (or prompted) call ran away until max_tokens: as ModelSmokeResult's.
    runaway: dict[str, Any] | None = None
    model_output: str | None = field(default=None, metadata=OPTIONAL)
    final_answer: str | None = field(default=None, metadata=OPTIONAL)
