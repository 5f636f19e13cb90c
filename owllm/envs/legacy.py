"""Old per-model envs (``<home>/environments/<model_id>``): detected, listed, never used, and
removed by ``owllm env migrate`` only after the shared env that replaces them is verified."""

from __future__ import annotations

from typing import Any

from owllm.envs import layout
from owllm.envs.installer import venv_python
from owllm.envs.registry import EnvRegistry
from owllm.errors import OwllmError, UsageError


def list_legacy(registry: EnvRegistry) -> list[dict[str, Any]]:
    """One row per legacy env folder (status LEGACY)."""
    folder = registry.home.legacy_envs_dir
    if not folder.is_dir():
        return []
    rows = []
    for entry in sorted(p for p in folder.iterdir() if p.is_dir()):
        python = next((p for p in (venv_python(entry), venv_python(entry / ".venv"))
                       if p.exists()), None)
        rows.append({"env_key": None, "model_id": entry.name, "status": "LEGACY",
                     "path": str(entry), "python_path": str(python) if python else None})
    return rows


def migrate(registry: EnvRegistry, model_id: str | None = None) -> list[dict[str, Any]]:
    """Replace legacy envs by shared ones; remove a legacy env only when the shared env's
    probe passes.  The model smoke test does not exist yet, so ``verified_by`` says
    ``env_probe``."""
    legacy = list_legacy(registry)
    if model_id is not None:
        legacy = [row for row in legacy if row["model_id"] == model_id]
        if not legacy:
            known = ", ".join(r["model_id"] for r in list_legacy(registry)) or "(none)"
            raise UsageError(f"no legacy env for model {model_id!r}",
                             hint=f"legacy envs: {known}")
    results = []
    for row in legacy:
        result: dict[str, Any] = {"model_id": row["model_id"], "legacy_path": row["path"],
                                  "env_key": None, "removed": False, "verified_by": "env_probe"}
        try:
            env = registry.get_env_for_model(row["model_id"])
            result["env_key"] = env.key
            probe = registry.probe(env.key)
        except OwllmError as exc:
            result["reason"] = f"kept: shared env not available: {exc.message}"
            results.append(result)
            continue
        result["probe_status"] = probe["status"]
        if probe["status"] == "PASS":
            layout.remove_path(registry.home.legacy_envs_dir / row["model_id"])
            result["removed"] = True
            result["reason"] = "shared env probe passed (model smoke test not available yet)"
            registry.store.record_event("env", env.key, "MIGRATED",
                                        f"removed legacy env of {row['model_id']}")
        else:
            result["reason"] = "kept: shared env probe failed: " + "; ".join(
                f"{e['module']}: {e['error']}" for e in probe["errors"])
        results.append(result)
    return results
