"""Run :mod:`owllm.envs.probe` with an env's own interpreter and parse its JSON."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from owllm.envs.spec import BuildSpec

PROBE_SCRIPT = Path(__file__).with_name("probe.py")
PROBE_TIMEOUT_S = float(os.environ.get("OWLLM_PROBE_TIMEOUT", "900"))


def run_probe(python: Path, spec: BuildSpec, constraints: Path | None = None) -> dict[str, Any]:
    """The probe's result dict; a FAIL result (never an exception) when it cannot run."""
    base: dict[str, Any] = {"env_key": spec.key, "status": "FAIL", "python_path": str(python),
                            "torch_version": None, "cuda_available": None, "versions": {},
                            "drift": [], "packages": {}}
    if not python.exists():
        return {**base, "errors": [{"module": "<python>", "error": f"{python} does not exist"}]}
    # -I: ignore PYTHONPATH/user site so the orchestrator's own packages never leak in.
    cmd = [str(python), "-I", str(PROBE_SCRIPT), "--key", spec.key,
           "--imports", ",".join(spec.probe_imports),
           "--key-packages", ",".join(spec.key_packages)]
    if constraints is not None:
        cmd += ["--constraints", str(constraints)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                              env=env, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {**base, "errors": [{"module": "<probe>", "error": repr(exc)}]}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {**base, "errors": [{"module": "<probe>",
                                    "error": f"probe exited {done.returncode}: "
                                             + " | ".join(tail)}]}
    return result
