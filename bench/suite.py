"""Wall time of the model suites for three tiny models, serial (-n 0) against -n 2 and
-n auto, with the number of server starts each run made (from the StateStore's events).

Run: python bench/suite.py [--json]   (builds the env and the demo model once, in a temp home)

``--json`` prints one object with ``n2_over_n0`` (-n 2 wall over -n 0 wall),
``nauto_over_n0``, each run's wall time, starts and exit code, the cores, and the thread
budget each server got (``OWLLM_CPU_SERVERS`` is set by the plugin: 3 CPU models).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from owllm.servers.tool_server import KIND, NAME
from owllm.state_store import StateStore, server_subject

TOOL_SERVER_ROW = server_subject(KIND, NAME)  # its events' subject

REPO = Path(__file__).resolve().parents[1]
CONFIG = "models:\n" + "".join(
    f"  tiny_{n}:\n    base_model: demo://tiny-llama\n    device: cpu\n"
    f"    generation: {{max_tokens: 8}}\n" for n in ("a", "b", "c"))


def starts(home: Path) -> int:
    """Model-server starts (the tool server, also a 'server' event, is left out)."""
    store = StateStore(home / ".owllm" / "state.db")
    return sum(e["status"] == "STARTING" and e["subject"] != TOOL_SERVER_ROW
               for e in store.list_events(kind="server", limit=10_000))


def run(project: Path, home: Path, workers: int | str) -> tuple[float, int, int]:
    before = starts(home)
    env = {**os.environ, "OWLLM_HOME": str(home)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-n", str(workers), "-m", "not gpu", "model_suites"],
                          cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], file=sys.stderr)
    return wall, starts(home) - before, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()
    # Progress goes to stderr under --json so stdout holds only the object.
    out = sys.stderr if args.json else sys.stdout
    with tempfile.TemporaryDirectory() as tmp:
        project, home = Path(tmp) / "project", Path(tmp) / "home"
        (project / "configs").mkdir(parents=True)
        (project / "configs" / "llm_backends.yaml").write_text(CONFIG)
        shutil.copytree(REPO / "model_suites", project / "model_suites")
        home.mkdir()
        warm = run(project, home, 0)  # builds the env and the demo model once
        print(f"warm-up (env + demo model build): {warm[0]:.1f}s, exit {warm[2]}", file=out)
        serial = run(project, home, 0)
        parallel = run(project, home, 2)
        auto = run(project, home, "auto")
        if args.json:
            print(json.dumps({"n2_over_n0": parallel[0] / serial[0], "n0_s": serial[0],
                              "n2_s": parallel[0], "n0_starts": serial[1],
                              "n2_starts": parallel[1], "n0_exit": serial[2],
                              "n2_exit": parallel[2], "nauto_over_n0": auto[0] / serial[0],
                              "nauto_s": auto[0], "nauto_starts": auto[1],
                              "nauto_exit": auto[2], "cores": os.cpu_count(),
                              "warmup_s": warm[0]}))
            return
        for name, (wall, started, code) in (("-n 0", serial), ("-n 2", parallel),
                                             ("-n auto", auto)):
            print(f"{name:8}: {wall:6.1f}s  server starts {started}  exit {code}")
        print(f"ratio -n 2 / -n 0 wall time: {parallel[0] / serial[0]:.2f}")
        print(f"ratio -n auto / -n 0 wall time: {auto[0] / serial[0]:.2f}")


if __name__ == "__main__":
    main()
