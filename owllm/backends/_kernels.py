"""CPU kernel choices that depend on the host: decided by a probe, remembered per env.

A backend that has a fast CPU path which some hosts cannot run (vLLM-cpu's bf16 kernels use
AMX tiles; llama.cpp's extra buffer types use AMX int8 or repacked layouts) makes a
:class:`KernelChoice`:

1. a decision recorded for this env on this host wins (the StateStore env row, see
   :meth:`~owllm.state_store.StateStore.env_decision`);
2. else the instruction probe (:mod:`owllm._cpu_probe`) decides: the fast value when every
   feature it needs executes here, the safe value otherwise;
3. when a server started with the fast value dies of a CPU fault (SIGILL, SIGSEGV, SIGBUS)
   before it is ready, the manager records the safe value with the reason and starts it
   once more (:func:`record_fallback`), so the next start goes straight to the safe one.

An explicit setting in the model's config is honoured as given and never replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from owllm import _cpu_probe as cpu_probe

if TYPE_CHECKING:
    from owllm.backends import BackendContext
    from owllm.state_store import StateStore

# Signals that mean "this instruction or memory access is not allowed here".
CPU_FAULT_SIGNALS = frozenset({"SIGILL", "SIGSEGV", "SIGBUS"})


@dataclass(frozen=True)
class KernelChoice:
    """One host-dependent setting of a server launch, with why it has this value."""

    setting: str  # "dtype", "extra_buffers"
    value: str
    reason: str
    fallback: str | None = None  # the safe value to retry with after a CPU fault

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason}


@lru_cache(maxsize=8)
def _probe(cache_dir: str) -> cpu_probe.IsaReport:
    return cpu_probe.probe_host(Path(cache_dir))


def host_isa(ctx: BackendContext) -> cpu_probe.IsaReport:
    """This host's instruction probe (run once per host, cached under the home)."""
    return _probe(str(ctx.home.cache_dir))


def choose(ctx: BackendContext, setting: str, *, fast: str, safe: str,
           needs: tuple[str, ...], fast_reason: str) -> KernelChoice:
    """The value of ``setting`` for this env on this host (see the module docstring).

    ``needs`` are the :data:`cpu_probe.FEATURES` the fast value uses *when the CPU lists
    them* (an absent feature is not used by the fast path either)."""
    override = ctx.kernel_overrides.get(setting)
    if override is not None:  # this start already fell back once
        return override
    recorded = _recorded(ctx, setting)
    if recorded is not None:
        return KernelChoice(setting, str(recorded["value"]), str(recorded["reason"]))
    isa = host_isa(ctx)
    broken = {f: why for f, why in isa.failing().items() if f in needs}
    if broken:
        listed = ", ".join(f"{f} ({why})" for f, why in sorted(broken.items()))
        return KernelChoice(setting, safe, f"the CPU lists {listed} but cannot run it: "
                                           f"probed at first use")
    return KernelChoice(setting, fast, fast_reason, fallback=safe if safe != fast else None)


def _recorded(ctx: BackendContext, setting: str) -> dict[str, Any] | None:
    store = _store(ctx)
    found = store.env_decision(ctx.env.key, setting) if store is not None else None
    if not found or found.get("host") != host_isa(ctx).host:
        return None  # decided on another host (a home on shared storage): decide again
    if found.get("env_fingerprint") != ctx.env.fingerprint:
        return None  # the env was rebuilt since: its kernels may differ
    return found


def record_fallback(ctx: BackendContext, choice: KernelChoice, fault: str,
                    process: str) -> KernelChoice:
    """Remember that ``choice`` crashed here and return the safe choice to retry with."""
    assert choice.fallback is not None
    reason = (f"{choice.setting}={choice.value} crashed on this host ({process} died of "
              f"{fault}); using {choice.fallback}")
    store = _store(ctx)
    if store is not None:
        store.record_env_decision(ctx.env.key, choice.setting, {
            "value": choice.fallback, "reason": reason, "host": host_isa(ctx).host,
            "env_fingerprint": ctx.env.fingerprint})
    return KernelChoice(choice.setting, choice.fallback, reason)


def _store(ctx: BackendContext) -> StateStore | None:
    from owllm.state_store import StateStore

    db = ctx.home.state_db
    return StateStore(db) if db.exists() else None
