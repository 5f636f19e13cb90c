"""kill -9 at each step of a build: never a READY row on a broken env; the next call cleans
up and rebuilds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from owllm.envs import EnvRegistry
from owllm.state_store import ENV_READY

BUILD = """
import sys
from owllm.envs import EnvRegistry
from owllm.hardware import HardwareProfile
EnvRegistry(home=sys.argv[1], envs_config_path=sys.argv[2], profile=HardwareProfile(),
            progress=False).ensure_env("tiny")
"""


@pytest.mark.parametrize("point", ["after_venv", "mid_install", "after_install",
                                   "after_probe", "before_publish", "after_publish"])
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "rebuild"])
def test_kill_9_during_build(registry: EnvRegistry, tiny_envs: Path, point: str,
                             existing: bool) -> None:
    if existing:
        registry.ensure_env("tiny")
        # Pretend the published env has an older spec: the build below replaces it.
        registry.store.upsert_env("tiny", status="FAILED", last_error="spec changed")
        (registry.home.envs_dir / "tiny" / "env.json").write_text('{"fingerprint": "old"}')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "OWLLM_ENV_CRASH_AT": point}
    done = subprocess.run([sys.executable, "-c", BUILD, str(registry.home.root), str(tiny_envs)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    row = registry.store.get_env("tiny")
    assert row is not None and row["status"] != ENV_READY
    link = registry.home.envs_dir / "tiny"
    if link.exists():  # whatever is published is complete: it has its marker and python
        assert (link / "env.json").is_file() and (link / ".venv" / "bin" / "python").exists()
    built = registry.ensure_env("tiny")
    assert registry.probe("tiny")["status"] == "PASS"
    assert built.python_executable.exists()
    stores = list((registry.home.envs_dir / ".store").iterdir())
    assert len(stores) == 1 and stores[0] == link.resolve()
    assert not list(registry.home.envs_tmp_dir.iterdir())
