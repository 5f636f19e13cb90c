"""Provisioning benchmark: EnvRegistry against bare installers, and 4 concurrent requests.

Measures, for one small spec (packages from this machine's pip config / PyPI):
  * cold build via EnvRegistry vs (a) ``uv venv && uv pip install`` and (b) ``python -m venv
    && pip install`` of the same packages;
  * warm ``ensure_env`` (the fast path) vs a cold build;
  * 4 processes asking for the same missing env vs 1 (and how many builds happened).
Prints ratios; no assertions.  ``--json`` prints one object instead, with the issue's figures
``cold_over_uv`` (cold EnvRegistry build over bare uv) and ``concurrent4_over_1``.
``--packages`` swaps the spec (``--packages six`` is the quickest).

    PYTHONPATH=. .venv/bin/python bench/provision.py [--packages six,tabulate,packaging] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
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
ENVS = textwrap.dedent("""\
    version: 1
    backends: {{}}
    keys:
      bench: {{packages: {packages}, probe_imports: {probes}}}
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", default=",".join(PACKAGES),
                        help="comma-separated requirements of the spec")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--skip-pip", action="store_true",
                        help="leave out the (slow) venv + pip baseline")
    args = parser.parse_args()
    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    if not packages:
        parser.error("--packages needs at least one requirement")
    with tempfile.TemporaryDirectory(prefix="owllm-bench-") as tmp:
        base = Path(tmp)
        envs = base / "envs.yaml"
        # The probe imports the packages whose name is their module's (six, tabulate, packaging).
        probes = [p for p in packages if p.isidentifier()]
        envs.write_text(ENVS.format(packages=json.dumps(packages), probes=json.dumps(probes)))

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
                                str(base / "uv" / "bin" / "python"), *sources, *packages],
                               check=True)
            bare_uv = timed(uv_build)

        def pip_build() -> None:
            subprocess.run([sys.executable, "-m", "venv", str(base / "pip")], check=True)
            subprocess.run([str(base / "pip" / "bin" / "python"), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", *packages], check=True)
        bare_pip = float("nan") if args.skip_pip else timed(pip_build)

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

        if args.json:
            figures = {"cold_over_uv": cold / bare_uv, "cold_over_pip": cold / bare_pip,
                       "concurrent4_over_1": four / one, "cold_s": cold, "uv_s": bare_uv,
                       "pip_s": bare_pip, "warm_s": warm, "one_s": one, "four_s": four}
            # NaN (no uv, pip skipped) is not JSON: a figure not measured is null.
            print(json.dumps({**{k: None if math.isnan(v) else v for k, v in figures.items()},
                              "builds": builds, "packages": packages}))
            return
        print(f"packages: {', '.join(packages)}")
        print(f"cold EnvRegistry build        {cold:7.2f}s")
        print(f"bare uv venv + uv pip install {bare_uv:7.2f}s  ratio {cold / bare_uv:5.2f}x")
        print(f"bare venv + pip install       {bare_pip:7.2f}s  ratio {cold / bare_pip:5.2f}x")
        print(f"warm ensure_env (fast path)   {warm * 1000:7.2f}ms ratio {warm / cold:7.4f}x cold")
        print(f"1 process                     {one:7.2f}s")
        print(f"4 concurrent processes        {four:7.2f}s  ratio {four / one:5.2f}x, "
              f"builds: {builds}")


if __name__ == "__main__":
    main()
