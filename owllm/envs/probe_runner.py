"""Run the env health probe (:mod:`owllm.inenv.probe`) with an env's own interpreter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from owllm.envs.runner import run_in_env
from owllm.envs.spec import BuildSpec
from owllm.errors import InEnvError

PROBE_TIMEOUT_S = float(os.environ.get("OWLLM_PROBE_TIMEOUT", "900"))


def run_probe(python: Path, spec: BuildSpec, constraints: Path | None = None) -> dict[str, Any]:
    """The probe's result dict; a FAIL result (never an exception) when it cannot run."""
    base: dict[str, Any] = {"env_key": spec.key, "status": "FAIL", "python_path": str(python),
                            "torch_version": None, "cuda_available": None, "versions": {},
                            "drift": [], "packages": {}}
    if not python.exists():
        return {**base, "errors": [{"module": "<python>", "error": f"{python} does not exist"}]}
    args = ["--key", spec.key, "--imports", ",".join(spec.probe_imports),
            "--key-packages", ",".join(spec.key_packages)]
    if constraints is not None:
        args += ["--constraints", str(constraints)]
    try:
        return run_in_env(python, "probe", args, timeout=PROBE_TIMEOUT_S, env_key=spec.key,
                          what=f"probing env {spec.key}")
    except InEnvError as exc:  # a broken env is a FAIL to report (and rebuild), not a crash
        tail = " | ".join(exc.stderr.splitlines()[-5:])
        return {**base, "errors": [{"module": "<probe>",
                                    "error": f"{exc.message.splitlines()[0]}"
                                             + (f": {tail}" if tail else "")}]}
