"""The transformers backend: our own OpenAI-compatible server (``transformers_server.py``),
run with the model's env python.  The server script imports only the env's packages."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from filelock import FileLock

from owllm.backends import Capabilities, LaunchSpec
from owllm.config import DEMO_SCHEME, ModelConfig
from owllm.envs import EnvSpec
from owllm.errors import ServerError, UsageError
from owllm.paths import Home

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "transformers_server.py"
DEMO_BUILDER = HERE.parent / "demo_model.py"
DEMO_MODELS = {"tiny-llama": 0}  # name -> seed


def materialize_demo(name: str, home: Home, python: Path) -> Path:
    """Build the named demo model once per home (under a lock) with the env's python."""
    if name not in DEMO_MODELS:
        raise UsageError(f"unknown demo model {DEMO_SCHEME}{name}",
                         hint=f"known: {', '.join(DEMO_SCHEME + n for n in DEMO_MODELS)}")
    seed = DEMO_MODELS[name]
    out = home.cache_dir / "models" / f"{name}-seed{seed}"
    home.locks_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home.locks_dir / f"demo-{name}.lock")):
        result = subprocess.run(
            [str(python), str(DEMO_BUILDER), "--out", str(out), "--seed", str(seed)],
            capture_output=True, text=True, check=False,
        )
    if result.returncode != 0:
        raise ServerError(f"building demo model {name!r} failed (exit {result.returncode}):\n"
                          f"{(result.stderr or result.stdout)[-3000:]}")
    return out


class TransformersBackend:
    name = "transformers"
    capabilities = Capabilities()

    def model_path(self, model: ModelConfig, home: Home, env: EnvSpec,
                   base_dir: Path) -> Path | str:
        if model.is_demo:
            return materialize_demo(model.base_model[len(DEMO_SCHEME):], home,
                                    env.python_executable)
        candidate = Path(model.base_model).expanduser()
        if not candidate.is_absolute():
            local = base_dir / candidate
            if local.exists():
                return local.resolve()
        if candidate.exists():
            return candidate.resolve()
        return model.base_model  # a hub id: transformers resolves it (cache or download)

    def launch(self, model: ModelConfig, model_path: Path | str, env: EnvSpec, home: Home,
               host: str, port: int) -> LaunchSpec:
        run_dir = home.state_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        config_file = run_dir / f"{model.model_id}.json"
        adapter = model.adapter_dir
        payload = {
            "model_id": model.model_id,
            "model_path": str(model_path),
            "model_type": model.model_type,
            "system_prompt": model.system_prompt,
            "adapter_dir": adapter,
            "use_4bit": model.use_4bit,
            "device": model.device,
            "dtype": model.dtype,
            "generation": {
                "max_tokens": model.generation.max_tokens,
                "temperature": model.generation.temperature,
                "top_p": model.generation.top_p,
            },
            "max_model_len": model.max_model_len,
        }
        tmp = config_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        os.replace(tmp, config_file)
        argv = (str(env.python_executable), str(SERVER_SCRIPT), "--config-json",
                str(config_file), "--host", host, "--port", str(port), *model.server_args)
        return LaunchSpec(argv=argv, env={"PYTHONUNBUFFERED": "1"})
