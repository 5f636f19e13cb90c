"""Provisioning benchmark: EnvRegistry against bare installers, and 4 concurrent requests.

Measures, for one small spec (packages from this machine's pip config / PyPI):
  * cold build via EnvRegistry vs (a) ``uv venv && uv pip install`` and (b) ``python -m venv
    && pip install`` of the same packages;
  * warm ``ensure_env`` (the fast path) vs a cold build;
  * 4 processes asking for the same missing env vs 1 (and how many builds happened).
Prints ratios; no assertions.  Run: PYTHONPATH=. .venv/bin/python bench/provision.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from owllm.envs import EnvRegistry  # noqa: E402
from owllm.envs.installer import find_uv  # noqa: E402
from owllm.envs.pipconf import read_pip_settings, uv_source_args  # noqa: E402
from owllm.hardware import HardwareProfile  # noqa: E402

PACKAGES = ["six", "tabulate", "packaging"]
ENVS = textwrap.dedent(f"""\
    version: 1
    backends: {{}}
    keys:
      bench: {{packages: {PACKAGES}, probe_imports: [six, tabulate]}}
    """)
RACE = """
import sys
from owllm.envs import EnvRegistry
from owllm.hardware import HardwareProfile
EnvRegistry(home=sys.argv[1], envs_config_path=sys.argv[2], profile=HardwareProfile(),
            progress=False).ensure_env("bench")
"""


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="owllm-bench-") as tmp:
        base = Path(tmp)
        envs = base / "envs.yaml"
        envs.write_text(ENVS)

        def registry(name: str) -> EnvRegistry:
            return EnvRegistry(home=base / name, envs_config_path=envs,
                               profile=HardwareProfile(), progress=False)

        cold = timed(lambda: registry("cold").ensure_env("bench"))
        warm = min(timed(lambda: registry("cold").ensure_env("bench")) for _ in range(5))

        uv = find_uv()
        sources = uv_source_args(read_pip_settings())
        bare_uv = float("nan")
        if uv:
            def uv_build() -> None:
                subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(base / "uv")],
                               check=True)
                subprocess.run([uv, "pip", "install", "-q", "--python",
                                str(base / "uv" / "bin" / "python"), *sources, *PACKAGES],
                               check=True)
            bare_uv = timed(uv_build)

        def pip_build() -> None:
            subprocess.run([sys.executable, "-m", "venv", str(base / "pip")], check=True)
            subprocess.run([str(base / "pip" / "bin" / "python"), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", *PACKAGES], check=True)
        bare_pip = timed(pip_build)

        env = {**os.environ, "PYTHONPATH": str(ROOT)}

        def race(n: int, name: str) -> float:
            home = base / name
            start = time.perf_counter()
            procs = [subprocess.Popen([sys.executable, "-c", RACE, str(home), str(envs)],
                                      env=env) for _ in range(n)]
            for proc in procs:
                proc.wait()
            return time.perf_counter() - start

        one = race(1, "race1")
        four = race(4, "race4")
        builds = len(registry("race4").store.list_events(kind="env", subject="bench",
                                                         status="BUILD_STARTED"))

        print(f"packages: {', '.join(PACKAGES)}")
        print(f"cold EnvRegistry build        {cold:7.2f}s")
        print(f"bare uv venv + uv pip install {bare_uv:7.2f}s  ratio {cold / bare_uv:5.2f}x")
        print(f"bare venv + pip install       {bare_pip:7.2f}s  ratio {cold / bare_pip:5.2f}x")
        print(f"warm ensure_env (fast path)   {warm * 1000:7.2f}ms ratio {warm / cold:7.4f}x cold")
        print(f"1 process                     {one:7.2f}s")
        print(f"4 concurrent processes        {four:7.2f}s  ratio {four / one:5.2f}x, "
              f"builds: {builds}")


if __name__ == "__main__":
    main()
